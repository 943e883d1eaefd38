defmodule PropertyTable.Persist.NativeHelpers do
  @moduledoc """
  Shortcuts for tests that drive `PropertyTable.Persist.Native` (the NIF) directly: the
  library's defaults filled in where the library itself passes its options.
  """

  alias PropertyTable.Persist.{Native, Options}

  @doc "Starts a persist with no row count hint, the default `:max_quarantined` and no change log."
  @spec persist_begin(String.t(), 0..9, pos_integer()) :: Native.answer(Native.session())
  def persist_begin(dir, level, chunk_rows) do
    Native.persist_begin(dir, %{
      level: level,
      chunk_rows: chunk_rows,
      expected_rows: 0,
      max_quarantined: Options.defaults()[:max_quarantined],
      log_compaction: 0.0,
      full: false
    })
  end

  @doc "Commits without ending the session."
  @spec persist_commit(Native.session()) :: Native.status()
  def persist_commit(session), do: Native.persist_commit(session, false)

  @doc "Opens the newest valid file with the default `:max_quarantined`."
  @spec restore_open(String.t()) :: Native.RestoreOpen.t()
  def restore_open(dir), do: Native.restore_open(dir, Options.defaults()[:max_quarantined])
end
