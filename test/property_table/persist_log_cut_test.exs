defmodule PropertyTable.PersistLogCutTest do
  @moduledoc """
  A compaction cut between its renames (the log renamed to the backup log's name, the
  stable file not yet moved to the backup, as a failed rename or a power cut leaves it):
  restore applies that log to the stable file, so a persist that compares the table with
  the stable file alone must not find a table equal to it unchanged.
  """
  use ExUnit.Case, async: true

  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist

  @moduletag :tmp_dir

  defp opts(dir, extra \\ []), do: [data_directory: dir, table_name: "t"] ++ extra

  # The stable file holds `base`, the log under the backup log's name one more row.
  defp cut_compaction(dir) do
    table = new_table(realistic_pairs(200, 3))
    :ok = Persist.persist_to_disk(table, opts(dir))
    insert_pairs(table, [{["changed"], 1}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    assert File.regular?(log_path(dir))
    File.rename!(log_path(dir), backup_log_path(dir))
    assert {:ok, pairs(table)} == restore_fresh(opts(dir))
    :ets.delete(table, ["changed"])
    table
  end

  test "a snapshot of the stable file's table is written, not found unchanged", %{tmp_dir: dir} do
    table = cut_compaction(dir)
    {:ok, _id} = Persist.save_snapshot(table, opts(dir))
    assert {:ok, pairs(table)} == restore_fresh(opts(dir))
  end

  test "so is a persist without the log", %{tmp_dir: dir} do
    table = cut_compaction(dir)
    :ok = Persist.persist_to_disk(table, opts(dir, log_compaction: 0))
    assert {:ok, pairs(table)} == restore_fresh(opts(dir))
  end
end
