defmodule PropertyTable.Persist.Write do
  @moduledoc false
  # The writers of `PropertyTable.Persist`: a persist streams the table into a new file
  # under the table directory's lock (and may snapshot the result); a snapshot restore
  # installs a snapshot under the same lock. Both retry while another writer holds it.

  alias PropertyTable.Persist.{Error, Native, Options, Rollback}

  # Rows that are not {property, value, timestamp} select to this atom, which no
  # {property, value} pair can equal.
  @bad_row :__property_table_persist_bad_row__
  @row_spec [{{:"$1", :"$2", :_}, [], [{{:"$1", :"$2"}}]}, {:_, [], [@bad_row]}]

  @doc "Writes the whole table to disk (`persist_to_disk/2`)."
  @spec persist(:ets.table(), Options.t()) :: :ok | {:error, Error.t()}
  def persist(table, opts), do: write_table(table, opts, :persist_to_disk, nil, false)

  @doc "Persists the table, then snapshots the stable file (`save_snapshot/2`)."
  @spec snapshot(:ets.table(), Options.t()) :: {:ok, String.t()} | {:error, Error.t()}
  def snapshot(table, opts),
    do: write_table(table, opts, :save_snapshot, &take_snapshot(&1, opts), true)

  @doc "Installs snapshot `id` as the stable file (`restore_snapshot/2`)."
  @spec install_snapshot(Options.t(), term()) :: :ok | {:error, Error.t()}
  def install_snapshot(opts, id) when is_binary(id) do
    locked(opts, :restore_snapshot, &Native.snapshot_restore(&1, id, opts.max_quarantined))
  end

  def install_snapshot(_opts, _id),
    do: {:error, %Error{reason: :invalid_snapshot_id, operation: :restore_snapshot}}

  # Streams the table under the directory lock (into a new file, or into the change log
  # when only a small part changed), commits it, then runs `after_commit` (a snapshot)
  # while still holding the lock. Without `after_commit`, the commit itself ends the session
  # (releasing the lock), so closing it takes no dirty call. A snapshot copies the stable
  # file, so a persist that snapshots writes a `full` one. A persist whose changes do not
  # belong in the log answers `:restart`, and the table is streamed again into a full file.
  defp write_table(table, opts, operation, after_commit, full) do
    with {:ok, rows} <- table_size(table, operation),
         {:ok, session} <-
           locked(opts, operation, &begin_persist(&1, opts, rows, full)) do
      result =
        try do
          with :ok <- stream_table(table, session, opts, operation),
               :ok <-
                 Native.check(Native.persist_commit(session, after_commit == nil), operation) do
            if after_commit, do: after_commit.(session), else: :ok
          end
        after
          Native.persist_close(session)
        end

      case result do
        {:error, %Error{reason: :restart}} when not full ->
          write_table(table, opts, operation, after_commit, true)

        other ->
          other
      end
    end
  end

  defp begin_persist(dir, opts, rows, full) do
    Native.persist_begin(dir, %{
      level: opts.compression,
      chunk_rows: opts.chunk_size,
      expected_rows: rows,
      max_quarantined: opts.max_quarantined,
      log_compaction: opts.log_compaction,
      full: full
    })
  end

  defp take_snapshot(session, opts) do
    Native.check(Native.persist_snapshot(session, opts.max_snapshots), :save_snapshot)
  end

  # The row count (a hint for the compressor), or `:no_table`.
  defp table_size(table, operation) do
    case :ets.info(table, :size) do
      size when is_integer(size) -> {:ok, size}
      :undefined -> {:error, %Error{reason: :no_table, operation: operation}}
    end
  rescue
    ArgumentError -> {:error, %Error{reason: :no_table, operation: operation}}
  end

  # :ets.select/3 refuses a limit beyond the VM's small integers (2^27 - 1 on a 32-bit BEAM,
  # such as an armv7 board's). No chunk holds that many rows anyway: a pair encodes to at
  # least 4 bytes and a chunk to at most 256 MiB, so the cap changes no file.
  @max_select_limit 0x7FF_FFFF

  # Reads the table a chunk at a time (a safe-fixed traversal sees each row once even while
  # other processes write), encodes each chunk and hands it to the writer.
  defp stream_table(table, session, opts, operation) do
    fixed = Rollback.fix_table(table, true)

    try do
      table
      |> :ets.select(@row_spec, min(opts.chunk_size, @max_select_limit))
      |> stream_chunks(session, operation)
    rescue
      ArgumentError -> {:error, %Error{reason: :no_table, operation: operation}}
    after
      if fixed, do: Rollback.fix_table(table, false)
    end
  end

  defp stream_chunks(:"$end_of_table", _session, _operation), do: :ok

  defp stream_chunks({pairs, continuation}, session, operation) do
    if :lists.member(@bad_row, pairs) do
      {:error, %Error{reason: :bad_row, operation: operation}}
    else
      chunk = :erlang.term_to_binary(pairs)

      case Native.check(Native.persist_append(session, chunk, length(pairs)), operation) do
        :ok -> continuation |> :ets.select() |> stream_chunks(session, operation)
        error -> error
      end
    end
  end

  # Runs a NIF call that takes the directory lock, retrying with jittered backoff while
  # another writer (process or OS process) holds it.
  defp locked(opts, operation, call) do
    deadline =
      case opts.lock_timeout do
        :infinity -> :infinity
        ms -> System.monotonic_time(:millisecond) + ms
      end

    retry_locked(opts.table_dir, operation, call, deadline, 1)
  end

  defp retry_locked(dir, operation, call, deadline, backoff) do
    case call.(dir) do
      {:error, %{reason: :busy} = failure} ->
        if deadline != :infinity and System.monotonic_time(:millisecond) >= deadline do
          {:error, Native.error(failure, operation)}
        else
          Process.sleep(backoff + :rand.uniform(backoff))
          retry_locked(dir, operation, call, deadline, min(backoff * 2, 32))
        end

      other ->
        Native.check(other, operation)
    end
  end
end
