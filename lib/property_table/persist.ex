defmodule PropertyTable.Persist do
  @moduledoc """
  Crash-safe persistence of a property table: an ETS table of
  `{property, value, timestamp}` rows.

  The API mirrors `PropertyTable.Persist` of property_table 0.2.3. All file work is done in
  Rust (a NIF running on dirty schedulers); the Elixir side extracts rows from ETS in chunks,
  validates options, and inserts restored rows.

  ## Files

  Under `<data_directory>/<table_name>/`:

    * `data.ptable` - the stable file
    * `data.ptable.backup` - the previous stable file
    * `data.ptable.tmp` - a file being written
    * `data.ptable.log` - the change log: what changed since `data.ptable`
      (`data.ptable.log.tmp` while a new log is written)
    * `data.ptable.backup.log` - the change log of the backup file
    * `data.ptable.lock` - the writers' lock
    * `snapshots/<ID>` - snapshots (ID: 16 uppercase hexadecimal characters)

  The format is documented byte by byte in `FORMAT.md`. Files written by property_table
  itself (format version 1) are read too.

  Anything but a regular file under one of these names (a FIFO, a socket, a device, a
  directory) is a bad file with the reason `:not_a_regular_file`, and no call ever blocks
  opening it: a stable or backup file is moved aside like a corrupt one, a snapshot is left
  out of listings and retention, a tmp file is replaced, and a lock file makes writers fail
  until it is removed. Files are read through symlinks (to regular files only) but never
  written, truncated or deleted through one: files are written under new names
  (`O_CREAT | O_EXCL | O_NOFOLLOW` after removing whatever entry was there), renames and
  deletions act on the link itself, and the lock file must not be a symlink. The library
  assumes that only the user running the VM (and root) can write the data directory.

  ## Guarantees

  A persist writes the new file completely, fsyncs it, keeps the previous stable file as the
  backup, renames the new file into place and fsyncs the directory. A power cut at any
  moment leaves a complete file holding the old or the new contents, and
  `restore_from_disk/2` loads the newest file that verifies. A file verifies only when every
  check passes (header and frame CRCs, every chunk's length and content hash, the
  whole-content digest; the MD5 of a property_table file), and that one definition decides
  everywhere: which file a restore loads, whether the stable file may become the backup,
  whether an unchanged table needs no write, what a snapshot copies, and what
  `inspect_files/2` calls `:ok`.
  A restore leaves the table holding the whole file or what it held before, also when the
  calling process is killed mid-restore (see `restore_from_disk/2` for the details).

  A persist that finds only a small part of the table changed appends one record (the
  changed and deleted rows, with its own CRC and content hash) to the change log and fsyncs
  it, instead of rewriting the table: a one-row change writes a few hundred bytes. It finds
  the changes by comparing the table with an index of the persisted state (built by the
  last full persist or restore of that directory in this VM, 24.5 bytes per row of native
  memory), and appends only to a stable file and a log that still verify completely. When
  the log would grow beyond `:log_compaction` of the stable file's size, or hold more
  changed and deleted rows than that fraction of the file's rows, the persist writes a full
  file instead (a compaction) and the log goes with the old file to the backup.
  A restore applies the records that verify, in order, after the file they belong to; a
  record torn by a power cut (never acknowledged) and anything after it is left out and
  logged as a warning that names the log, the byte offset of that record and the check it
  fails (`truncated` for a torn last append).

  ## Options

    * `:data_directory` - where table directories live. Default `"/tmp/property_table"`.
    * `:table_name` - the table's sub-directory (a string or atom). Defaults to the table's
      name when the table is an atom; required when it is a reference.
    * `:max_snapshots` - snapshots kept by `save_snapshot/2`: a positive integer (any size;
      a number beyond 2^64 - 1 counts as 2^64 - 1, that is, no limit). Default `25`.
    * `:compression` - `0` (none) to `9` (smallest files). Default `6`.
    * `:chunk_size` - rows encoded, compressed and written at a time: an integer from `1` to
      `4_294_967_295` (it is stored in the file's header as 32 bits). Default `1000`.
    * `:lock_timeout` - milliseconds to wait for another writer of the same directory
      (another process or OS process): a non-negative integer (any size), or `:infinity`.
      Default `60_000`.
    * `:safe` - decode restored terms with `:erlang.binary_to_term(bin, [:safe])`, refusing
      files that would create atoms (`{:error, :unsafe_term}`). Default `false`.
    * `:max_quarantined` - corrupt files kept aside as `<name>.corrupt-<UTC time>` when a
      restore, a persist or a snapshot restore finds that the stable or backup file does
      not verify; the oldest beyond this number are deleted. A positive integer (any size; beyond 2^64 - 1
      it means no limit). Default `5`.
    * `:quarantine` - whether `restore_from_disk/2` moves corrupt stable and backup files
      aside. `false` skips them where they are and changes nothing in the directory (a
      copy taken off a device, a read-only mount); the next persist still moves them.
      Default `true`.
    * `:log_compaction` - how large the change log may grow, as a fraction of the stable
      file's size and of its rows (the log's changed and deleted rows), before a persist
      writes a full file instead: a number from `0` to `100`. `0` turns the log off (every
      changed persist writes a full file). Default `0.25`: a restore replays every row of
      the log, and at 0.25 one with the log at its limit took up to 1.16 times the time of
      one of a freshly written file at 100,000 rows, 1.28 times at 1,000,000
      (bench/results.md).

  Unknown keys are ignored. A known key with a bad value (of the wrong type or out of its
  range) raises `ArgumentError` naming the option and the values it takes, before anything
  on disk is touched.

  ## Errors

  The non-bang functions log the reason (Logger, error level) and return `:error` or
  `{:error, reason}`; the bang functions raise `PropertyTable.Persist.Error`. Reasons:
  `:enoent` (nothing to restore), `:bad_checksum` and `:bad_file` (corrupt files),
  `:not_a_regular_file` (a FIFO, socket, device or directory in place of a file),
  `:invalid_snapshot_id`, `:no_table`, `:bad_row`, `:unsafe_term`, `:busy`,
  `:chunk_too_large` (the rows of one chunk encode to more than the format's 256 MiB: lower
  `:chunk_size`), POSIX errors such as `:eacces`, `:enospc` or `:enotdir`, and
  `:internal_error` (a bug: a writer or reader thread of the NIF panicked; the persist or
  restore failed as it would on an I/O error, with the files on disk and the table as they
  were).
  """

  require Logger

  alias PropertyTable.Persist.{Error, Native, Options, Restore, Write}
  alias PropertyTable.Persist.Native.FileInfo

  @typedoc "An ETS table: its name or its reference."
  @type table :: :ets.table()

  @typedoc "A snapshot's creation time in UTC, as `File.stat/1` reports times."
  @type datetime :: {{pos_integer(), 1..12, 1..31}, {0..23, 0..59, 0..59}}

  @doc """
  Writes the whole table to disk.

  The previous stable file becomes the backup. Returns `:error` (after logging the reason)
  when the table does not exist, holds a row that is not a 3-tuple, or the file cannot be
  written; the files on disk are then as they were.

  ## Examples

      iex> dir = Path.join(System.tmp_dir!(), "ptp_doc_persist")
      iex> table = :ets.new(:doc_persist, [:set, :public])
      iex> :ets.insert(table, {["net", "wlan0", "state"], :up, System.monotonic_time()})
      true
      iex> PropertyTable.Persist.persist_to_disk(table, data_directory: dir, table_name: "doc")
      :ok
      iex> File.exists?(Path.join([dir, "doc", "data.ptable"]))
      true
  """
  @spec persist_to_disk(table(), keyword()) :: :ok | :error
  def persist_to_disk(table, options \\ []) do
    opts = Options.validate!(table, options)

    case Write.persist(table, opts) do
      :ok -> :ok
      {:error, error} -> log_and_return(error, :error)
    end
  end

  @doc """
  Like `persist_to_disk/2`, but raises `PropertyTable.Persist.Error` on failure.

  ## Examples

      iex> dir = Path.join(System.tmp_dir!(), "ptp_doc_persist_bang")
      iex> table = :ets.new(:doc_persist_bang, [:set, :public])
      iex> PropertyTable.Persist.persist_to_disk!(table, data_directory: dir, table_name: "doc")
      :ok
  """
  @spec persist_to_disk!(table(), keyword()) :: :ok
  def persist_to_disk!(table, options \\ []) do
    opts = Options.validate!(table, options)
    table |> Write.persist(opts) |> unwrap!()
  end

  @doc """
  Loads the newest valid file into the table.

  Tries the stable file, then the backup (and a complete temporary file left by a persist
  that was cut off), logging a warning for each file that does not verify. When `table` is
  an atom and no such table exists, a named public `:set` table is created. An existing
  table's contents are replaced. Every row gets the same `System.monotonic_time/0`
  timestamp. On failure the table is left as it was (and none is created): its previous
  rows are kept aside until the last chunk is in, and put back if a chunk fails.

  The same holds when the calling process is killed mid-restore. A public table that
  outlives the caller (owned by another process, or given an heir) has its previous rows
  kept by a helper process, which puts them back unless the restore completed: once the
  caller is gone and the helper has ended, such a table holds exactly its old rows or
  exactly the file's (meanwhile readers may see a part of either, as during any restore).
  A table the caller owns otherwise dies with it; a private or protected table of the
  caller that has an heir passes to the heir as the caller left it (possibly a part of the
  file's rows).

  Returns `{:error, :enoent}` when there is nothing to restore, `{:error, :bad_checksum}`,
  `{:error, :bad_file}` or `{:error, :not_a_regular_file}` when files exist but none verifies
  (logged as data loss), or a POSIX reason for I/O errors.

  ## Examples

      iex> dir = Path.join(System.tmp_dir!(), "ptp_doc_restore")
      iex> table = :ets.new(:doc_restore_source, [:set, :public])
      iex> :ets.insert(table, {["sensor", "temp"], 21.5, System.monotonic_time()})
      true
      iex> :ok = PropertyTable.Persist.persist_to_disk(table, data_directory: dir, table_name: "doc")
      iex> :ok = PropertyTable.Persist.restore_from_disk(:doc_restored, data_directory: dir, table_name: "doc")
      iex> [{["sensor", "temp"], 21.5, _timestamp}] = :ets.tab2list(:doc_restored)
  """
  @spec restore_from_disk(table(), keyword()) :: :ok | {:error, atom()}
  def restore_from_disk(table, options \\ []) do
    opts = Options.validate!(table, options)

    case Restore.run(table, opts) do
      :ok -> :ok
      {:error, error} -> log_and_return(error, {:error, error.reason})
    end
  end

  @doc """
  Like `restore_from_disk/2`, but raises `PropertyTable.Persist.Error` on failure.

  ## Examples

      iex> PropertyTable.Persist.restore_from_disk!(:doc_nothing_there, data_directory: "/nonexistent")
      ** (PropertyTable.Persist.Error) restore_from_disk failed: no such file (nothing persisted yet?) (/nonexistent/doc_nothing_there/data.ptable)
  """
  @spec restore_from_disk!(table(), keyword()) :: :ok
  def restore_from_disk!(table, options \\ []) do
    opts = Options.validate!(table, options)
    table |> Restore.run(opts) |> unwrap!()
  end

  @doc """
  Persists the table, then copies the stable file to a new snapshot and deletes the oldest
  snapshots beyond `:max_snapshots`. Returns `{:ok, id}`.

  ## Examples

      iex> dir = Path.join(System.tmp_dir!(), "ptp_doc_snapshot")
      iex> table = :ets.new(:doc_snapshot, [:set, :public])
      iex> {:ok, id} = PropertyTable.Persist.save_snapshot(table, data_directory: dir, table_name: "doc")
      iex> String.match?(id, ~r/\\A[0-9A-F]{16}\\z/)
      true
  """
  @spec save_snapshot(table(), keyword()) :: {:ok, String.t()} | :error
  def save_snapshot(table, options \\ []) do
    opts = Options.validate!(table, options)

    case Write.snapshot(table, opts) do
      {:ok, id} -> {:ok, id}
      {:error, error} -> log_and_return(error, :error)
    end
  end

  @doc """
  Like `save_snapshot/2`, but returns the id itself and raises
  `PropertyTable.Persist.Error` on failure.

  ## Examples

      iex> dir = Path.join(System.tmp_dir!(), "ptp_doc_snapshot_bang")
      iex> table = :ets.new(:doc_snapshot_bang, [:set, :public])
      iex> id = PropertyTable.Persist.save_snapshot!(table, data_directory: dir, table_name: "doc")
      iex> byte_size(id)
      16
  """
  @spec save_snapshot!(table(), keyword()) :: String.t()
  def save_snapshot!(table, options \\ []) do
    opts = Options.validate!(table, options)
    table |> Write.snapshot(opts) |> unwrap!()
  end

  @doc """
  Lists the table's snapshots, oldest first, with their creation time (UTC).

  Needs `:table_name`. Snapshots made in the same second come back in the order they were
  made. Returns `[]` when there are none; raises `PropertyTable.Persist.Error` when the
  snapshots directory cannot be read.

  ## Examples

      iex> dir = Path.join(System.tmp_dir!(), "ptp_doc_list")
      iex> _ = File.rm_rf!(dir)
      iex> PropertyTable.Persist.get_snapshot_list(data_directory: dir, table_name: "doc")
      []
      iex> table = :ets.new(:doc_list, [:set, :public])
      iex> first = PropertyTable.Persist.save_snapshot!(table, data_directory: dir, table_name: "doc")
      iex> second = PropertyTable.Persist.save_snapshot!(table, data_directory: dir, table_name: "doc")
      iex> [{^first, {{_, _, _}, {_, _, _}}}, {^second, _}] =
      ...>   PropertyTable.Persist.get_snapshot_list(data_directory: dir, table_name: "doc")
  """
  @spec get_snapshot_list(keyword()) :: [{String.t(), datetime()}]
  def get_snapshot_list(options \\ []) do
    opts = Options.validate!(nil, options)

    case Native.snapshot_list(opts.table_dir) |> Native.check(:get_snapshot_list) do
      {:ok, entries} -> for %{id: id, created_us: us} <- entries, do: {id, utc_datetime(us)}
      {:error, error} -> raise error
    end
  end

  @doc """
  Installs snapshot `id` as the stable file (the current stable file becomes the backup).

  Needs `:table_name`. It does not touch any ETS table: call `restore_from_disk/2` next to
  load it. Returns `{:error, :invalid_snapshot_id}` for an id that is not 16 uppercase
  hexadecimal characters (without touching the filesystem), `{:error, :enoent}` for an
  unknown id, `{:error, :bad_checksum}` or `{:error, :bad_file}` for a corrupt snapshot, and
  `{:error, :not_a_regular_file}` when the id names a FIFO, socket, device or directory,
  leaving the stable file as it was.

  ## Examples

      iex> dir = Path.join(System.tmp_dir!(), "ptp_doc_restore_snapshot")
      iex> PropertyTable.Persist.restore_snapshot([data_directory: dir, table_name: "doc"], "../../etc/passwd")
      {:error, :invalid_snapshot_id}
  """
  @spec restore_snapshot(keyword(), String.t()) :: :ok | {:error, atom()}
  def restore_snapshot(options, id) do
    opts = Options.validate!(nil, options)

    case Write.install_snapshot(opts, id) do
      :ok -> :ok
      {:error, error} -> log_and_return(error, {:error, error.reason})
    end
  end

  @doc """
  Like `restore_snapshot/2`, but raises `PropertyTable.Persist.Error` on failure.

  ## Examples

      iex> dir = Path.join(System.tmp_dir!(), "ptp_doc_restore_snapshot_bang")
      iex> table = :ets.new(:doc_restore_snapshot_bang, [:set, :public])
      iex> id = PropertyTable.Persist.save_snapshot!(table, data_directory: dir, table_name: "doc")
      iex> PropertyTable.Persist.restore_snapshot!([data_directory: dir, table_name: "doc"], id)
      :ok
  """
  @spec restore_snapshot!(keyword(), String.t()) :: :ok
  def restore_snapshot!(options, id) do
    opts = Options.validate!(nil, options)
    opts |> Write.install_snapshot(id) |> unwrap!()
  end

  @doc """
  Describes every file of the table directory: stable, backup and tmp files, the change
  logs, quarantined files and snapshots (oldest first), in that order.

  Verifies every file as a restore does (every checksum, every chunk decompressed and
  checked against its hash, the whole-content digest; for format version 1 files, written
  by property_table, the MD5) without loading rows into a table. Needs `:table_name`. With
  `verify: false` only headers are read. Raises `PropertyTable.Persist.Error` when the
  directory cannot be read (`:enoent` when it does not exist).

  Each entry is a map with `:path`, `:kind` (`:stable`, `:backup`, `:tmp`, `:log`,
  `:backup_log`, `:log_tmp`, `:quarantined` or `:snapshot`), `:format_version` (`1`, `2`
  or `nil` when unreadable, and for logs), `:created` (UTC datetime from the header, `nil`
  when unknown), `:sequence`, `:rows`, `:size` (bytes on disk), `:modified` (UTC datetime
  of the file), `:compression` (the level it was written with) and `:status`: `:ok` (it
  verifies: a restore would accept it), the reason it fails (`:bad_checksum`, `:bad_file`,
  `:not_a_regular_file`, a POSIX reason), or, with `verify: false`, `:unverified` for a
  file whose header is sound (no file is called `:ok` without verification).

  The change logs are `data.ptable.log` (`:log`), `data.ptable.backup.log` (`:backup_log`)
  and `data.ptable.log.tmp` (`:log_tmp`, a log being started, left by an interrupted
  persist). They are read with the checks and the bounded memory of a restore, and never
  modified. A log's `:status` is `:ok` when every byte verifies, `:log_tail` when its
  records stop verifying before the end of the file (the records before still apply: a
  torn last append, or damage), or the reason its header fails (the whole log is then
  unusable). Their entries also have, `nil` for table files:

    * `:base_sequence` - the `:sequence` of the table file the log's header names (`nil`
      when the header fails)
    * `:continues` - which of `:stable`, `:backup`, `:tmp` has that sequence and content
      digest (whether or not that file verifies: see its own entry), or `:none` for a stale
      log that no restore applies; `nil` when the header fails
    * `:records` - records that verify, from the first (`nil` with `verify: false` or a
      failing header)
    * `:valid_bytes` - bytes of the header and those records: where the verified prefix
      ends, and what a restore uses
    * `:stop_reason` - for `:log_tail`, the check the next record fails: `:truncated` (the
      file ends inside it), `:bad_checksum`, `:bad_hash`, `:bad_length`, `:bad_encoding`,
      `:bad_payload`, `:wrong_sequence`, `:wrong_base` or `:duplicate_property`; else `nil`
    * `:stop_offset` - for `:log_tail`, the offset of that record (equal to
      `:valid_bytes`); else `nil`

  ## Examples

      iex> dir = Path.join(System.tmp_dir!(), "ptp_doc_inspect")
      iex> table = :ets.new(:doc_inspect, [:set, :public])
      iex> :ets.insert(table, {["a"], 1, 0})
      true
      iex> :ok = PropertyTable.Persist.persist_to_disk(table, data_directory: dir, table_name: "doc")
      iex> [stable] = PropertyTable.Persist.inspect_files(data_directory: dir, table_name: "doc")
      iex> {stable.kind, stable.format_version, stable.rows, stable.status}
      {:stable, 2, 1, :ok}
  """
  @spec inspect_files(keyword(), keyword()) :: [map()]
  def inspect_files(options, inspect_options \\ []) do
    opts = Options.validate!(nil, options)
    verify? = Keyword.get(inspect_options, :verify, true)

    unless is_boolean(verify?) do
      raise ArgumentError,
            "invalid value for option :verify: #{inspect(verify?)} (must be true or false)"
    end

    case Native.inspect(opts.table_dir, verify?) |> Native.check(:inspect_files) do
      {:ok, files} -> Enum.map(files, &file_report/1)
      {:error, error} -> raise error
    end
  end

  defp file_report(%FileInfo{} = file) do
    %{
      path: file.path,
      kind: file.kind,
      format_version: file.format_version,
      created: file.created_us && utc_datetime(file.created_us),
      sequence: file.sequence,
      rows: file.rows,
      size: file.size,
      modified: utc_datetime(file.modified_us),
      compression: file.compression,
      status: file.status,
      base_sequence: file.base_sequence,
      continues: file.continues,
      records: file.records,
      valid_bytes: file.valid_bytes,
      stop_reason: file.stop_reason,
      stop_offset: file.stop_offset
    }
  end

  defp utc_datetime(unix_us) do
    :calendar.system_time_to_universal_time(max(unix_us, 0), :microsecond)
  end

  ## Shared

  defp unwrap!(:ok), do: :ok
  defp unwrap!({:ok, value}), do: value
  defp unwrap!({:error, %Error{} = error}), do: raise(error)

  defp log_and_return(%Error{reason: :enoent} = error, result)
       when error.operation == :restore_from_disk do
    Logger.warning("PropertyTable.Persist: nothing to restore: #{Exception.message(error)}")
    result
  end

  defp log_and_return(%Error{reason: reason} = error, result)
       when reason in [:bad_checksum, :bad_file, :not_a_regular_file] and
              error.operation == :restore_from_disk do
    Logger.error(
      "PropertyTable.Persist: data loss, no file could be restored: #{Exception.message(error)}"
    )

    result
  end

  defp log_and_return(error, result) do
    Logger.error("PropertyTable.Persist: #{Exception.message(error)}")
    result
  end
end
