defmodule Mix.Tasks.PropertyTable.Inspect do
  @shortdoc "Shows and verifies the files of a PropertyTable.Persist data directory"

  @moduledoc """
  Shows every file of one table directory (or of every table directory) under a data
  directory, for example one copied off a device:

      mix property_table.inspect DATA_DIRECTORY [TABLE_NAME] [--no-verify] [--dump N]

  For each table file: kind (stable, backup, tmp, quarantined, snapshot), format version,
  verification status, rows, size, sequence number and creation time. Then one line per
  change log (`data.ptable.log`, `data.ptable.backup.log`, `data.ptable.log.tmp`): kind,
  status (`ok`, `log_tail` when its records stop verifying before its end, or why its
  header fails), file, the base it continues (`stable`, `backup` or `tmp`, with the base's
  sequence number; `stale` when no file here is its base, so no restore applies it), the
  records and bytes that verify, and for a `log_tail` the fault (`truncated`,
  `bad_checksum`, ...) and the byte offset where the verified records end. See
  `PropertyTable.Persist.inspect_files/2` for every field.

    * `--verify` (default) verifies every file as restore does: every checksum, every chunk
      decompressed and checked against its hash, the whole-content digest. `--no-verify`
      reads headers only; a file whose header is sound is then `unverified`, never `ok`.
    * `--dump N` prints the first N `{property, value}` rows a restore gives (the newest
      valid file and its change log); corrupt files are skipped, not moved aside.

  Exits with status 1 when a table has no valid file to restore from (with `--no-verify`:
  when none of its stable, backup and tmp files even has a sound header). Does not start
  any application.
  """

  use Mix.Task

  alias PropertyTable.Persist

  @switches [verify: :boolean, dump: :integer]
  @restorable [:stable, :backup, :tmp]
  @logs [:log, :backup_log, :log_tmp]

  @impl Mix.Task
  def run(args) do
    {switches, positional} =
      case OptionParser.parse(args, strict: @switches) do
        {switches, positional, []} -> {switches, positional}
        {_, _, invalid} -> Mix.raise("Unknown or invalid options: #{inspect(invalid)}")
      end

    {data_dir, tables} =
      case positional do
        [data_dir] ->
          {data_dir, table_dirs(data_dir)}

        [data_dir, table] ->
          {data_dir, [table]}

        _ ->
          Mix.raise(
            "Usage: mix property_table.inspect DATA_DIRECTORY [TABLE_NAME] [--no-verify] [--dump N]"
          )
      end

    Mix.Task.run("compile", [])
    verify? = Keyword.get(switches, :verify, true)
    dump = Keyword.get(switches, :dump, 0)

    if tables == [], do: Mix.raise("No table directories found in #{data_dir}")

    results = Enum.map(tables, &inspect_table(data_dir, &1, verify?, dump))

    unless Enum.all?(results) do
      Mix.shell().error("At least one table has no valid file to restore from.")
      exit({:shutdown, 1})
    end
  end

  defp table_dirs(data_dir) do
    case File.ls(data_dir) do
      {:ok, names} -> names |> Enum.filter(&File.dir?(Path.join(data_dir, &1))) |> Enum.sort()
      {:error, reason} -> Mix.raise("Cannot read #{data_dir}: #{:file.format_error(reason)}")
    end
  end

  # Prints the table's files; returns whether it has a restorable file.
  defp inspect_table(data_dir, table, verify?, dump) do
    opts = [data_directory: data_dir, table_name: table]
    table_dir = Path.join(data_dir, table)

    {logs, files} =
      opts |> Persist.inspect_files(verify: verify?) |> Enum.split_with(&(&1.kind in @logs))

    # Without verification no file is known to be valid, only known not to be.
    usable = if verify?, do: [:ok], else: [:ok, :unverified]
    Mix.shell().info("\n#{table_dir}")

    rows =
      for f <- files do
        [
          Atom.to_string(f.kind),
          if(f.format_version, do: "v#{f.format_version}", else: "?"),
          Atom.to_string(f.status),
          if(f.rows, do: Integer.to_string(f.rows), else: "-"),
          Integer.to_string(f.size),
          if(f.sequence, do: Integer.to_string(f.sequence), else: "-"),
          format_datetime(f.created || f.modified),
          Path.relative_to(f.path, table_dir)
        ]
      end

    print_columns([~w(kind format status rows bytes seq created file) | rows])
    print_logs(logs, table_dir)
    restorable? = Enum.any?(files, &(&1.kind in @restorable and &1.status in usable))
    if restorable? and dump > 0, do: dump_rows(opts, dump)
    restorable?
  rescue
    e in Persist.Error ->
      Mix.shell().error("#{Path.join(data_dir, table)}: #{Exception.message(e)}")
      false
  end

  defp print_logs([], _table_dir), do: :ok

  defp print_logs(logs, table_dir) do
    Mix.shell().info("Change logs:")

    logs
    |> Enum.map(fn log ->
      [
        Atom.to_string(log.kind),
        Atom.to_string(log.status),
        Path.relative_to(log.path, table_dir),
        log_base(log),
        log_records(log)
      ]
    end)
    |> print_columns()
  end

  defp log_base(%{continues: nil}), do: "no usable header"

  defp log_base(%{continues: :none} = log),
    do: "stale: no file here has base sequence #{log.base_sequence}"

  defp log_base(log), do: "continues #{log.continues} (sequence #{log.base_sequence})"

  defp log_records(%{continues: nil}), do: ""
  defp log_records(%{records: nil}), do: "records not read (--no-verify)"

  defp log_records(log) do
    verified =
      "#{log.records} #{if log.records == 1, do: "record", else: "records"}, " <>
        "#{log.valid_bytes} of #{log.size} bytes verified"

    case log.stop_reason do
      nil -> verified
      fault -> "#{verified}; the record at byte #{log.stop_offset} fails: #{fault}"
    end
  end

  defp dump_rows(opts, count) do
    table = :ets.new(:property_table_inspect, [:set, :private])

    # An inspected copy stays as it was: corrupt files are skipped, not moved aside.
    case Persist.restore_from_disk(table, [quarantine: false] ++ opts) do
      :ok ->
        Mix.shell().info("First #{count} rows (of #{:ets.info(table, :size)}):")

        table
        |> :ets.tab2list()
        |> Enum.sort()
        |> Enum.take(count)
        |> Enum.each(fn {property, value, _ts} ->
          Mix.shell().info("  #{inspect({property, value})}")
        end)

      {:error, reason} ->
        Mix.shell().error("Could not read rows: #{reason}")
    end

    :ets.delete(table)
  end

  defp format_datetime({{y, m, d}, {h, mi, s}}) do
    :io_lib.format("~4..0B-~2..0B-~2..0B ~2..0B:~2..0B:~2..0BZ", [y, m, d, h, mi, s])
    |> IO.iodata_to_binary()
  end

  defp print_columns(rows) do
    widths =
      rows
      |> Enum.zip()
      |> Enum.map(fn column ->
        column |> Tuple.to_list() |> Enum.map(&String.length/1) |> Enum.max()
      end)

    Enum.each(rows, fn row ->
      row
      |> Enum.zip(widths)
      |> Enum.map_join("  ", fn {cell, width} -> String.pad_trailing(cell, width) end)
      |> String.trim_trailing()
      |> Mix.shell().info()
    end)
  end
end
