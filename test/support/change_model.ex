defmodule PropertyTable.Persist.TestSupport.ChangeModel do
  @moduledoc """
  The table history of the change-log crash loop, shared by the child that writes it and the
  test that checks it. Generation `g`'s step (what happens before persist `g`, and the rows
  it changes) is a function of the seed and `g` only, so the test can replay the child's
  history from any generation it knows the table of, without being told the rows.

  A step changes 1 to 5 rows most of the time (upserts of `["row", k]`, a quarter of them
  deletes; keys range over 4/3 of the table's size, so upserts also add rows), nothing one
  time in ten, and 50 rows to a fifth of the table one time in 33 (which the log cannot take:
  a compaction). One step in 30 restores from disk first, one in 30 is a `save_snapshot/2`.
  """

  @doc "The rows of generation 0: `count` rows."
  def initial(count), do: Map.new(1..count, &{["row", &1], value(0, &1)})

  @doc "`{op, changes}` of generation `gen`: op is `:persist`, `:restore_first` or `:snapshot`."
  def step(seed, gen, count) do
    st = :rand.seed_s(:exsss, {seed, gen, 15})
    {op, st} = :rand.uniform_s(30, st)
    {size, st} = :rand.uniform_s(100, st)

    {n, st} =
      cond do
        size <= 10 -> {0, st}
        size <= 97 -> :rand.uniform_s(5, st)
        true -> big_change(count, st)
      end

    {changes, _} =
      Enum.map_reduce(1..n//1, st, fn _, st ->
        {k, st} = :rand.uniform_s(div(count * 4, 3), st)
        {kind, st} = :rand.uniform_s(4, st)
        change = if kind == 4, do: {:delete, ["row", k]}, else: {:put, ["row", k], value(gen, k)}
        {change, st}
      end)

    op =
      case op do
        1 -> :restore_first
        2 -> :snapshot
        _ -> :persist
      end

    {op, changes}
  end

  defp big_change(count, st) do
    {n, st} = :rand.uniform_s(max(div(count, 5) - 49, 1), st)
    {n + 49, st}
  end

  @doc "The table of generation `last`, from the table (a map) of generation `first`."
  def replay(table, _seed, first, last, _count) when first >= last, do: table

  def replay(table, seed, first, last, count) do
    {_op, changes} = step(seed, first + 1, count)
    table |> apply_changes(changes) |> replay(seed, first + 1, last, count)
  end

  @doc "Applies changes to a map of property => value."
  def apply_changes(table, changes) do
    Enum.reduce(changes, table, fn
      {:put, p, v}, acc -> Map.put(acc, p, v)
      {:delete, p}, acc -> Map.delete(acc, p)
    end)
  end

  @doc "Applies changes to an ETS table of `{property, value, timestamp}` rows."
  def apply_changes_ets(table, changes) do
    Enum.each(changes, fn
      {:put, p, v} -> :ets.insert(table, {p, v, 0})
      {:delete, p} -> :ets.delete(table, p)
    end)
  end

  defp value(gen, k), do: {gen, k, "value of row #{k} in generation #{gen}"}

  @files ~w(data.ptable data.ptable.backup data.ptable.tmp data.ptable.log
            data.ptable.backup.log data.ptable.log.tmp)

  @doc """
  The identity (inode and size) of each file a persist may touch in `table_dir`, as one word:
  two fingerprints differ when any of them was created, renamed over, removed or grew.
  """
  def fingerprint(table_dir) do
    Enum.map_join(@files, ",", fn name ->
      case File.stat(Path.join(table_dir, name)) do
        {:ok, %File.Stat{inode: inode, size: size}} -> "#{inode}.#{size}"
        {:error, _} -> "-"
      end
    end)
  end

  @doc "The files whose identity differs between two fingerprints."
  def changed_files(fp1, fp2) do
    Enum.zip([@files, String.split(fp1, ","), String.split(fp2, ",")])
    |> Enum.flat_map(fn {name, a, b} -> if a == b, do: [], else: [name] end)
  end
end
