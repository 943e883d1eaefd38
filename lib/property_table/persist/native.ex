defmodule PropertyTable.Persist.Native do
  @moduledoc false
  # NIF stubs, replaced by native/ptable_nif when the library loads. Every function that
  # touches files runs on a dirty I/O scheduler. Errors come back as
  # `{:error, reason_atom, path | nil}`.

  # The compiler would load the module as soon as it is compiled, running load_nif in the
  # compiling VM; for a cross build (a Nerves target) that is the host VM, which cannot load
  # the target's library and would log a load failure. The first call loads it instead.
  @compile {:autoload, false}
  @on_load :load_nif

  @doc false
  def load_nif do
    case :code.priv_dir(:property_table_persist) do
      {:error, reason} ->
        {:error, {:no_priv_dir, reason}}

      priv ->
        priv
        |> Path.join("native/libptable_nif")
        |> String.to_charlist()
        |> :erlang.load_nif(0)
    end
  end

  # `expected_rows` (the table's size, 0 if unknown) only sizes the compressor.
  def persist_begin(dir, level, chunk_rows), do: persist_begin(dir, level, chunk_rows, 0)

  def persist_begin(_dir, _level, _chunk_rows, _expected_rows),
    do: :erlang.nif_error(:nif_not_loaded)

  # Queues a chunk for the writer thread. The usual case (room in the queue) stays on the
  # normal scheduler; only a full queue waits, on a dirty scheduler.
  def persist_append(session, chunk, rows) do
    session
    |> persist_append_nowait(chunk, rows)
    |> or_dirty(:full, fn -> persist_append_wait(session, chunk, rows) end)
  end

  def persist_append_nowait(_session, _chunk, _rows), do: :erlang.nif_error(:nif_not_loaded)
  def persist_append_wait(_session, _chunk, _rows), do: :erlang.nif_error(:nif_not_loaded)

  # With `release`, the commit also ends the session (as `persist_close` would).
  def persist_commit(session), do: persist_commit(session, false)
  def persist_commit(_session, _release), do: :erlang.nif_error(:nif_not_loaded)
  def persist_snapshot(_session, _max_snapshots), do: :erlang.nif_error(:nif_not_loaded)

  # Closes a session on the normal scheduler when it is over already (a releasing commit),
  # else on a dirty one (waiting for the writer thread, removing the tmp file).
  def persist_close(session) do
    session |> persist_close_nowait() |> or_dirty(:busy, fn -> persist_close_wait(session) end)
  end

  def persist_close_nowait(_session), do: :erlang.nif_error(:nif_not_loaded)
  def persist_close_wait(_session), do: :erlang.nif_error(:nif_not_loaded)
  def restore_open(_dir, _max_quarantined), do: :erlang.nif_error(:nif_not_loaded)
  def restore_rows(_reader, _timestamp, _safe), do: :erlang.nif_error(:nif_not_loaded)
  def restore_stream(_reader, _tag, _timestamp, _safe), do: :erlang.nif_error(:nif_not_loaded)
  def restore_ack(_reader), do: :erlang.nif_error(:nif_not_loaded)

  # Closes a reader on the normal scheduler when it holds nothing any more (the last chunk
  # was handed out), else on a dirty one (closing its file, stopping its thread).
  def restore_close(reader) do
    reader |> restore_close_nowait() |> or_dirty(:busy, fn -> restore_close_wait(reader) end)
  end

  def restore_close_nowait(_reader), do: :erlang.nif_error(:nif_not_loaded)
  def restore_close_wait(_reader), do: :erlang.nif_error(:nif_not_loaded)
  def snapshot_list(_dir), do: :erlang.nif_error(:nif_not_loaded)
  def snapshot_restore(_dir, _id), do: :erlang.nif_error(:nif_not_loaded)
  def inspect(_dir, _verify), do: :erlang.nif_error(:nif_not_loaded)

  # The answer of a normal-scheduler attempt, or, when it was `not_now`, the dirty call's.
  defp or_dirty(not_now, not_now, dirty_call), do: dirty_call.()
  defp or_dirty(result, _not_now, _dirty_call), do: result
end
