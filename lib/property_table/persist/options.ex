defmodule PropertyTable.Persist.Options do
  @moduledoc false
  # Validates the keyword list every public function takes. Unknown keys are ignored
  # (callers pass their own keys in the same list); a known key with a bad value raises
  # ArgumentError naming the option and the value, before anything on disk is touched.

  @defaults [
    data_directory: "/tmp/property_table",
    max_snapshots: 25,
    compression: 6,
    chunk_size: 1000,
    lock_timeout: 60_000,
    safe: false,
    max_quarantined: 5,
    quarantine: true,
    log_compaction: 0.25
  ]

  defstruct [:table_dir | Keyword.keys(@defaults) ++ [:table_name]]

  # The NIF decodes `:chunk_size` as a u32 (it is also stored in the file's header as one)
  # and the retention counts as u64s.
  @max_chunk_size 0xFFFF_FFFF
  @max_count 0xFFFF_FFFF_FFFF_FFFF

  @type t :: %__MODULE__{
          data_directory: String.t(),
          table_name: String.t(),
          table_dir: String.t(),
          max_snapshots: 1..0xFFFF_FFFF_FFFF_FFFF,
          compression: 0..9,
          chunk_size: 1..0xFFFF_FFFF,
          lock_timeout: non_neg_integer() | :infinity,
          safe: boolean(),
          max_quarantined: 1..0xFFFF_FFFF_FFFF_FFFF,
          quarantine: boolean(),
          log_compaction: float()
        }

  @doc false
  def defaults, do: @defaults

  @doc """
  Validates `options` for `table` (an ETS table name or reference, or `nil` when the
  function takes no table) and fills in defaults.
  """
  @spec validate!(atom() | reference() | nil, keyword()) :: t()
  def validate!(table, options) do
    unless is_list(options) and Enum.all?(options, &match?({key, _} when is_atom(key), &1)) do
      raise ArgumentError, "expected options to be a keyword list, got: #{inspect(options)}"
    end

    unless is_nil(table) or is_atom(table) or is_reference(table) do
      raise ArgumentError,
            "expected the table to be an ETS table name (atom) or reference, got: #{inspect(table)}"
    end

    values = Keyword.merge(@defaults, options)

    opts = %__MODULE__{
      data_directory: data_directory!(values[:data_directory]),
      table_name: table_name!(Keyword.get(options, :table_name), table),
      max_snapshots: count!(:max_snapshots, values[:max_snapshots]),
      compression: compression!(values[:compression]),
      chunk_size: chunk_size!(values[:chunk_size]),
      lock_timeout: lock_timeout!(values[:lock_timeout]),
      safe: boolean!(:safe, values[:safe]),
      max_quarantined: count!(:max_quarantined, values[:max_quarantined]),
      quarantine: boolean!(:quarantine, values[:quarantine]),
      log_compaction: log_compaction!(values[:log_compaction])
    }

    %{opts | table_dir: Path.join(opts.data_directory, opts.table_name)}
  end

  defp data_directory!(dir) when is_binary(dir) and dir != "" do
    if String.contains?(dir, <<0>>), do: bad!(:data_directory, dir, "must not contain NUL")
    dir
  end

  defp data_directory!(dir), do: bad!(:data_directory, dir, "must be a non-empty string")

  defp table_name!(nil, table) when is_atom(table) and not is_nil(table),
    do: table_name!(Atom.to_string(table), table)

  defp table_name!(nil, _table) do
    raise ArgumentError,
          "option :table_name is required when the table is a reference or not given"
  end

  defp table_name!(name, table) when is_atom(name), do: table_name!(Atom.to_string(name), table)

  defp table_name!(name, _table) when is_binary(name) do
    cond do
      not String.valid?(name) ->
        bad!(:table_name, name, "must be valid UTF-8")

      name in ["", ".", ".."] ->
        bad!(:table_name, name, "must not be empty, \".\" or \"..\"")

      String.contains?(name, ["/", "\\", <<0>>]) ->
        bad!(:table_name, name, "must not contain /, \\ or NUL")

      true ->
        name
    end
  end

  defp table_name!(name, _table), do: bad!(:table_name, name, "must be a string or an atom")

  # A number of files to keep: a count beyond what a directory can hold keeps them all, so
  # larger values than the NIF can take mean the same as its largest.
  defp count!(_key, value) when is_integer(value) and value > 0, do: min(value, @max_count)
  defp count!(key, value), do: bad!(key, value, "must be a positive integer")

  defp chunk_size!(rows) when is_integer(rows) and rows in 1..@max_chunk_size, do: rows

  defp chunk_size!(rows),
    do: bad!(:chunk_size, rows, "must be an integer from 1 to #{@max_chunk_size}")

  defp compression!(level) when level in 0..9, do: level
  defp compression!(level), do: bad!(:compression, level, "must be an integer from 0 to 9")

  defp lock_timeout!(:infinity), do: :infinity
  defp lock_timeout!(ms) when is_integer(ms) and ms >= 0, do: ms

  defp lock_timeout!(ms),
    do: bad!(:lock_timeout, ms, "must be a non-negative integer (milliseconds) or :infinity")

  # A fraction of the base file's size; 0 turns the change log off. Beyond 100 the log
  # would be replayed at every restore for little gain in bytes written.
  @max_log_compaction 100

  defp log_compaction!(ratio)
       when is_number(ratio) and ratio >= 0 and ratio <= @max_log_compaction,
       do: ratio / 1

  defp log_compaction!(ratio),
    do: bad!(:log_compaction, ratio, "must be a number from 0 to #{@max_log_compaction}")

  defp boolean!(_key, value) when is_boolean(value), do: value
  defp boolean!(key, value), do: bad!(key, value, "must be true or false")

  @spec bad!(atom(), term(), String.t()) :: no_return()
  defp bad!(key, value, why) do
    raise ArgumentError, "invalid value for option #{inspect(key)}: #{inspect(value)} (#{why})"
  end
end
