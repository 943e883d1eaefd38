defmodule PropertyTable.Persist.Native do
  @moduledoc false
  # NIF stubs, replaced by native/ptable_nif when the library loads, and the one place that
  # turns the NIF's failures into `PropertyTable.Persist.Error`s. Every function that
  # touches files runs on a dirty I/O scheduler.
  #
  # The terms are derived from Rust types in native/ptable_nif/src (maps, the structs of
  # `PropertyTable.Persist.Native.*`, tagged tuples), never positional tuples. Paths are
  # binaries of their bytes (a path need not be UTF-8).

  alias PropertyTable.Persist.Error
  alias PropertyTable.Persist.Native.{FileInfo, RestoreOpen}

  # The compiler would load the module as soon as it is compiled, running load_nif in the
  # compiling VM; for a cross build (a Nerves target) that is the host VM, which cannot load
  # the target's library and would log a load failure. The first call loads it instead.
  @compile {:autoload, false}
  @on_load :load_nif

  @typedoc "Why a NIF call failed, and the file concerned."
  @type failure :: %{reason: atom(), path: binary() | nil}
  @type status :: :ok | {:error, failure()}
  @type answer(value) :: {:ok, value} | {:error, failure()}
  @typedoc "A chunk's rows, `:done` when none is left, or why the file failed."
  @type rows :: {:ok, [tuple()]} | {:last, [tuple()]} | :done | {:error, failure()}
  @typedoc "A snapshot as listed: `sequence` is `nil` for legacy and unreadable files."
  @type snapshot :: %{id: String.t(), sequence: non_neg_integer() | nil, created_us: integer()}
  @typedoc "How to persist (see `persist_begin/2`)."
  @type persist_args :: %{
          level: 0..9,
          chunk_rows: pos_integer(),
          expected_rows: non_neg_integer(),
          max_quarantined: pos_integer(),
          log_compaction: float(),
          full: boolean()
        }
  @typedoc "A persist in progress (a NIF resource)."
  @type session :: reference()
  @typedoc "A verified file being restored (a NIF resource)."
  @type reader :: reference()

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

  @doc """
  Turns a NIF answer into the library's: a failure becomes a `PropertyTable.Persist.Error`
  of `operation`.
  """
  @spec check(status() | answer(value), atom()) :: :ok | {:ok, value} | {:error, Error.t()}
        when value: term()
  def check(:ok, _operation), do: :ok
  def check({:ok, value}, _operation), do: {:ok, value}
  def check({:error, failure}, operation), do: {:error, error(failure, operation)}

  @doc "The error of `operation` for a NIF failure."
  @spec error(failure(), atom()) :: Error.t()
  def error(%{reason: reason, path: path}, operation),
    do: %Error{reason: reason, path: path, operation: operation}

  @doc """
  Starts a persist of table directory `dir`: takes its lock (`:busy` when another writer
  has it). Of `args`: `level` and `chunk_rows` are the file's compression level and rows
  per chunk; `expected_rows` (the table's size, 0 if unknown) only sizes the compressor;
  `max_quarantined` bounds the corrupt files kept when the commit moves one aside;
  `log_compaction` (a float; 0.0 turns the change log off) is how large the log may grow,
  as a fraction of the base file's bytes and of its rows (the log's upserts and deletes);
  `full` writes a full file whatever changed. Appends and
  the commit answer `:restart` (an error reason) when the change belongs in a full file:
  the caller then persists again with `full`.
  """
  @spec persist_begin(binary(), persist_args()) :: answer(session())
  def persist_begin(_dir, _args), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Queues a chunk for the writer thread. The usual case (room in the queue) stays on the
  normal scheduler; only a full queue waits, on a dirty scheduler.
  """
  @spec persist_append(session(), binary(), non_neg_integer()) :: status()
  def persist_append(session, chunk, rows) do
    session
    |> persist_append_nowait(chunk, rows)
    |> or_dirty(:full, fn -> persist_append_wait(session, chunk, rows) end)
  end

  @doc "Queues a chunk if there is room right away (normal scheduler), else `:full`."
  @spec persist_append_nowait(session(), binary(), non_neg_integer()) :: status() | :full
  def persist_append_nowait(_session, _chunk, _rows), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Queues a chunk, waiting while the queue is full (dirty scheduler)."
  @spec persist_append_wait(session(), binary(), non_neg_integer()) :: status()
  def persist_append_wait(_session, _chunk, _rows), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Installs the file. With `release`, it also ends the session (as `persist_close/1`)."
  @spec persist_commit(session(), boolean()) :: status()
  def persist_commit(_session, _release), do: :erlang.nif_error(:nif_not_loaded)

  @doc "After a commit: copies the stable file to a new snapshot, applies retention."
  @spec persist_snapshot(session(), pos_integer()) :: answer(String.t())
  def persist_snapshot(_session, _max_snapshots), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Closes a session on the normal scheduler when it is over already (a releasing commit),
  else on a dirty one (waiting for the writer thread, removing the tmp file).
  """
  @spec persist_close(session()) :: :ok
  def persist_close(session) do
    session |> persist_close_nowait() |> or_dirty(:busy, fn -> persist_close_wait(session) end)
  end

  @doc "`:ok` for a session over already, else `:busy`: `persist_close_wait/1` must end it."
  @spec persist_close_nowait(session()) :: :ok | :busy
  def persist_close_nowait(_session), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Ends a session: waits for the writer thread, removes an uncommitted tmp file."
  @spec persist_close_wait(session()) :: :ok
  def persist_close_wait(_session), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Opens the newest file that verifies, moving corrupt stable and backup files aside
  (keeping `max_quarantined` of them), or leaving them in place when it is `nil`.
  """
  @spec restore_open(binary(), pos_integer() | nil) :: RestoreOpen.t()
  def restore_open(_dir, _max_quarantined), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Decodes the next chunk into rows stamped with `timestamp`."
  @spec restore_rows(reader(), integer(), boolean()) :: rows()
  def restore_rows(_reader, _timestamp, _safe), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Starts the reader thread: it sends `{tag, rows()}` messages, at most two chunks beyond
  those acknowledged with `restore_ack/1`, until `{:last, rows}` or an error.
  """
  @spec restore_stream(reader(), term(), integer(), boolean()) :: status()
  def restore_stream(_reader, _tag, _timestamp, _safe), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Gives the reader thread a credit for one more chunk."
  @spec restore_ack(reader()) :: :ok
  def restore_ack(_reader), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Closes a reader on the normal scheduler when it holds nothing any more (the last chunk
  was handed out), else on a dirty one (closing its file, stopping its thread: it sends
  nothing after this returns).
  """
  @spec restore_close(reader()) :: :ok
  def restore_close(reader) do
    reader |> restore_close_nowait() |> or_dirty(:busy, fn -> restore_close_wait(reader) end)
  end

  @doc "`:ok` for a reader that holds nothing any more, else `:busy`."
  @spec restore_close_nowait(reader()) :: :ok | :busy
  def restore_close_nowait(_reader), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Closes a reader's file and stops its thread (dirty scheduler)."
  @spec restore_close_wait(reader()) :: :ok
  def restore_close_wait(_reader), do: :erlang.nif_error(:nif_not_loaded)

  @doc "The table directory's snapshots, oldest first."
  @spec snapshot_list(binary()) :: answer([snapshot()])
  def snapshot_list(_dir), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Installs snapshot `id` as the stable file, quarantining a corrupt one."
  @spec snapshot_restore(binary(), binary(), pos_integer()) :: status()
  def snapshot_restore(_dir, _id, _max_quarantined), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Describes every file of the table directory."
  @spec inspect(binary(), boolean()) :: answer([FileInfo.t()])
  def inspect(_dir, _verify), do: :erlang.nif_error(:nif_not_loaded)

  # The answer of a normal-scheduler attempt, or, when it was `not_now`, the dirty call's.
  defp or_dirty(not_now, not_now, dirty_call), do: dirty_call.()
  defp or_dirty(result, _not_now, _dirty_call), do: result
end
