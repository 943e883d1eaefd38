defmodule PropertyTable.PersistDoctestTest do
  use ExUnit.Case, async: false

  setup_all do
    for name <-
          ~w(ptp_doc_persist ptp_doc_persist_bang ptp_doc_restore ptp_doc_snapshot
                   ptp_doc_snapshot_bang ptp_doc_restore_snapshot ptp_doc_restore_snapshot_bang ptp_doc_inspect) do
      File.rm_rf!(Path.join(System.tmp_dir!(), name))
    end

    :ok
  end

  doctest PropertyTable.Persist
end
