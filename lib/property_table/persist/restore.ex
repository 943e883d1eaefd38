defmodule PropertyTable.Persist.Restore do
  @moduledoc false
  # `PropertyTable.Persist.restore_from_disk/2`: opens the newest file that verifies, and
  # loads its rows into the table, all or nothing (see `Rollback`).

  require Logger

  alias PropertyTable.Persist.{Error, Native, Options, Rollback}
  alias PropertyTable.Persist.Native.{RestoreOpen, Source}

  @operation :restore_from_disk

  @doc """
  Loads the newest valid file of the table directory into `table`, or leaves the table as
  it was (and creates none) on failure.
  """
  @spec run(:ets.table(), Options.t()) :: :ok | {:error, Error.t()}
  def run(table, opts) do
    with :ok <- check_target(table) do
      with_source(opts, &load_verified(table, &1, &2, opts))
    end
  end

  # An atom names a table the restore may create; a reference must name a live table.
  defp check_target(table) when is_atom(table), do: :ok

  defp check_target(table) do
    if :ets.info(table, :size) == :undefined, do: {:error, no_table()}, else: :ok
  rescue
    ArgumentError -> {:error, no_table()}
  end

  # The one owner of the reader: opens the file, runs `fun` with it and the tag of the
  # reader thread's messages, and closes it whatever happens. Closing stops the thread for
  # good, so no message can come after the flush.
  defp with_source(opts, fun) do
    keep = if opts.quarantine, do: opts.max_quarantined
    %RestoreOpen{file: file} = opened = Native.restore_open(opts.table_dir, keep)
    log_skipped(opened)

    case file do
      {:ok, source} ->
        if source.kind != :stable do
          Logger.warning(
            "PropertyTable.Persist: restoring from #{source.kind} file #{source.path}"
          )
        end

        tag = make_ref()

        try do
          fun.(source, tag)
        after
          Native.restore_close(source.reader)
          flush_streamed(tag)
        end

      {:error, failure} ->
        {:error, Native.error(failure, @operation)}
    end
  end

  defp log_skipped(%RestoreOpen{skipped: skipped, quarantined: quarantined}) do
    Enum.each(skipped, fn %{reason: reason, path: path} = skip ->
      Logger.warning(
        "PropertyTable.Persist: skipping #{path}#{log_stop(skip)}: #{Error.describe(reason)}"
      )
    end)

    Enum.each(
      quarantined,
      &Logger.error("PropertyTable.Persist: moved corrupt file aside to #{&1}")
    )
  end

  defp log_stop(%{offset: offset, fault: fault}) when is_integer(offset),
    do: " from byte #{offset} (#{fault})"

  defp log_stop(_skipped), do: ""

  # The file verified completely (every checksum and content hash) before this runs, yet a
  # chunk can still fail on the way in: a read error, a file replaced on disk meanwhile, a
  # checksummed payload from another writer that does not decode, or (with `safe: true`) an
  # unknown atom. So the table's previous rows are kept aside until the last chunk is in and put
  # back on failure, or when this process dies before (see `Rollback`): the table ends up
  # holding the whole file or what it held before.
  defp load_verified(table, source, tag, opts) do
    case Rollback.set_aside(table) do
      {:ok, target, previous} ->
        try do
          insert_chunks(target, source, tag, System.monotonic_time(), opts.safe)
        catch
          kind, reason ->
            Rollback.undo(previous)
            :erlang.raise(kind, reason, __STACKTRACE__)
        else
          :ok ->
            Rollback.commit(previous)

          {:error, _} = error ->
            Rollback.undo(previous)
            error
        end

      :no_table ->
        {:error, no_table()}
    end
  end

  # A file of several chunks is streamed: a thread of the NIF reads, decompresses and
  # decodes the next chunks while this process inserts the current one, and sends each
  # chunk's rows as a message built outside this process's heap (received without a copy).
  # Each insert gives the thread a credit for one more chunk, which bounds the rows in
  # flight. A file of one chunk is decoded by a plain NIF call.
  defp insert_chunks(table, %Source{chunks: chunks} = source, tag, timestamp, safe?)
       when chunks > 1 do
    answer = Native.restore_stream(source.reader, tag, timestamp, safe?)

    with :ok <- Native.check(answer, @operation),
         do: insert_streamed(table, source, tag)
  end

  defp insert_chunks(table, source, _tag, timestamp, safe?),
    do: insert_read(table, source, timestamp, safe?)

  defp insert_streamed(table, source, tag) do
    receive do
      {^tag, answer} ->
        insert_answer(table, answer, source, fn ->
          Native.restore_ack(source.reader)
          insert_streamed(table, source, tag)
        end)
    end
  end

  defp flush_streamed(tag) do
    receive do
      {^tag, _} -> flush_streamed(tag)
    after
      0 -> :ok
    end
  end

  defp insert_read(table, source, timestamp, safe?) do
    answer = Native.restore_rows(source.reader, timestamp, safe?)

    insert_answer(table, answer, source, fn ->
      insert_read(table, source, timestamp, safe?)
    end)
  end

  # Inserts the rows of one answer of the NIF (a call's or the thread's), then runs `more`
  # unless they were the file's last (`{:last, rows}`: the NIF has checked the whole file).
  defp insert_answer(table, {:ok, rows}, _source, more) do
    with :ok <- insert_rows(table, rows), do: more.()
  end

  defp insert_answer(table, {:last, rows}, _source, _more), do: insert_rows(table, rows)
  defp insert_answer(_table, :done, _source, _more), do: :ok

  # A failure of the file as a whole (a closed reader, a panic) names no path: the source's.
  defp insert_answer(_table, {:error, failure}, source, _more),
    do: {:error, Native.error(%{failure | path: failure.path || source.path}, @operation)}

  # The table can be deleted by its owner while rows are going in. `:ets.insert/2` charges
  # a list of rows far fewer reductions than its time is worth; with chunks waiting in the
  # mailbox, the restoring process would keep its scheduler for 10 ms and more. Four
  # reductions per row (inserting one into a large table takes about a microsecond) make it
  # yield about every millisecond, like other work on the scheduler.
  defp insert_rows(table, rows) do
    :ets.insert(table, rows)
    :erlang.bump_reductions(4 * length(rows))
    :ok
  rescue
    ArgumentError -> {:error, no_table()}
  end

  defp no_table, do: %Error{reason: :no_table, operation: @operation}
end
