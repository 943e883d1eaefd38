defmodule PropertyTable.Persist.Rollback do
  @moduledoc false
  # Keeps what a table held while a restore replaces its rows, so that a failed restore can
  # put it back: the table ends up holding the whole file or what it held before.
  #
  # A table the restoring process owns (and that has no heir) dies with that process, so
  # its previous rows are kept in a private table of that process. A public table owned by
  # another process (or with an heir) outlives the restoring process, which may be killed
  # mid-restore: its previous rows are kept by a guardian process instead. The guardian
  # moves them aside, and puts them back when told to or when the restoring process dies
  # without having committed; it ends at the commit or after putting them back. It is
  # monitored, not linked: a kill of the restoring process does not reach it.

  # Rows per :ets.select/3 batch when copying a table's rows.
  @copy_chunk_rows 1000

  # Name of the tables that hold the previous rows (tests look for leftovers by it).
  @copy_name PropertyTable.Persist

  @typedoc "What a restore into a table has to put back if it fails."
  @opaque t ::
            {:created, :ets.table()}
            | {:local, :ets.table(), :ets.table() | :empty}
            | {:guarded, pid(), reference(), reference()}

  @doc """
  Empties `table` for a restore, keeping its rows; an atom naming no table is created
  (public `:set`). Returns `{:ok, target, kept}`, or `:no_table` when the table does not
  exist or this process may not write it.
  """
  @spec set_aside(:ets.table()) :: {:ok, :ets.table(), t()} | :no_table
  def set_aside(table) do
    cond do
      is_atom(table) and :ets.whereis(table) == :undefined ->
        {:ok, :ets.new(table, [:named_table, :public, :set]), {:created, table}}

      outlives_caller?(table) ->
        guard(table)

      true ->
        {:ok, table, {:local, table, move_rows_aside(table)}}
    end
  rescue
    ArgumentError -> :no_table
  end

  @doc "The restore succeeded: drops the previous rows."
  @spec commit(t()) :: :ok
  def commit({:created, _table}), do: :ok
  def commit({:local, _table, saved}), do: drop(saved)

  def commit({:guarded, guardian, tag, monitor}) do
    send(guardian, {tag, :commit})
    Process.demonitor(monitor, [:flush])
    :ok
  end

  @doc "The restore failed: puts the previous rows back (or deletes a created table)."
  @spec undo(t()) :: :ok
  def undo({:created, table}) do
    :ets.delete(table)
    :ok
  rescue
    ArgumentError -> :ok
  end

  def undo({:local, table, saved}) do
    put_back(table, saved)
  after
    drop(saved)
  end

  def undo({:guarded, guardian, tag, monitor}) do
    send(guardian, {tag, :undo})

    # The guardian ends once the rows are back.
    receive do
      {:DOWN, ^monitor, :process, ^guardian, _reason} -> :ok
    end
  end

  @doc """
  Fixes (or releases) a table for a traversal that sees each row once while others write;
  returns false when the table is gone.
  """
  @spec fix_table(:ets.table(), boolean()) :: boolean()
  def fix_table(table, fix?) do
    :ets.safe_fixtable(table, fix?)
  rescue
    ArgumentError -> false
  end

  # A table that lives on when this process dies, and that another process can write.
  defp outlives_caller?(table) do
    :ets.info(table, :protection) == :public and
      (:ets.info(table, :owner) != self() or :ets.info(table, :heir) != :none)
  end

  defp move_rows_aside(table) do
    if :ets.info(table, :size) == 0 do
      :ets.delete_all_objects(table)
      :empty
    else
      saved = :ets.new(@copy_name, [:duplicate_bag, :private, keypos: :ets.info(table, :keypos)])

      try do
        copy_rows(table, saved)
        :ets.delete_all_objects(table)
        saved
      rescue
        error ->
          :ets.delete(saved)
          reraise error, __STACKTRACE__
      end
    end
  end

  defp put_back(table, saved) do
    :ets.delete_all_objects(table)
    if saved != :empty, do: copy_rows(saved, table)
    :ok
  rescue
    # Deleted by its owner meanwhile: nothing left to put back.
    ArgumentError -> :ok
  end

  defp drop(:empty), do: :ok

  defp drop(saved) do
    :ets.delete(saved)
    :ok
  end

  defp copy_rows(from, to) do
    fixed? = fix_table(from, true)

    try do
      from
      |> :ets.select([{:_, [], [:"$_"]}], @copy_chunk_rows)
      |> copy_selected(to)
    after
      if fixed?, do: fix_table(from, false)
    end
  end

  defp copy_selected(:"$end_of_table", _to), do: :ok

  defp copy_selected({rows, continuation}, to) do
    :ets.insert(to, rows)
    continuation |> :ets.select() |> copy_selected(to)
  end

  ## Guardian

  # Starts the guardian and waits until it has moved the rows aside.
  defp guard(table) do
    caller = self()
    tag = make_ref()
    {guardian, monitor} = spawn_monitor(fn -> guardian(caller, tag, table) end)

    receive do
      {^tag, :ready} ->
        {:ok, table, {:guarded, guardian, tag, monitor}}

      {:DOWN, ^monitor, :process, ^guardian, _reason} ->
        :no_table
    end
  end

  defp guardian(caller, tag, table) do
    watch = Process.monitor(caller)

    case move_aside_or_fail(table) do
      {:ok, saved} ->
        send(caller, {tag, :ready})
        await_outcome(watch, tag, table, saved)

      :no_table ->
        :ok
    end
  end

  defp move_aside_or_fail(table) do
    {:ok, move_rows_aside(table)}
  rescue
    ArgumentError -> :no_table
  end

  # Ends at the caller's commit; puts the rows back when told to or when the caller dies
  # first. Messages from the caller arrive before its death's `:DOWN`, so a commit sent
  # just before dying is seen. The copy dies with this process.
  defp await_outcome(watch, tag, table, saved) do
    receive do
      {^tag, :commit} -> :ok
      {^tag, :undo} -> put_back(table, saved)
      {:DOWN, ^watch, :process, _caller, _reason} -> put_back(table, saved)
    end
  end
end
