defmodule PropertyTable.PersistKilledCallerTest do
  @moduledoc """
  A restore into a public table owned by another process, whose caller is killed: the table
  must end up holding exactly its old rows or exactly the file's, never a mix, wherever the
  kill lands (moving the old rows aside, inserting, rolling back, committing).

  Kills are synchronised on what the table holds (polled, no sleeps), and the table is
  checked once the killed caller and every process it started are gone. Not async: the
  kill points depend on the restore getting CPU while the test polls.
  """
  use ExUnit.Case, async: false

  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist
  alias PropertyTable.Persist.{Native, NativeHelpers}

  @moduletag :tmp_dir

  @file_rows 20_000
  @chunk_size 50
  @iterations 50

  defp opts(dir), do: [data_directory: dir, table_name: "t"]

  test "a caller killed mid-restore leaves another process's table all old or all new",
       %{tmp_dir: dir} do
    seed = seed_rand!("killed caller")
    file_pairs = for i <- 1..@file_rows, do: {["k", i], {:file, i}}
    write_chunks(dir, Enum.chunk_every(file_pairs, @chunk_size))

    outcomes =
      for n <- 1..@iterations do
        type = Enum.random([:set, :ordered_set, :duplicate_bag])
        # Old keys overlap the file's, so a mix shows as both kinds of value.
        old = for i <- 1..Enum.random([0, 1, 2_000, 30_000])//1, do: {["k", i], {:old, i}, 0}
        table = owned_table(type, old)
        # Kill once k file rows are in, or (k = 0) after a few yields, while the old rows
        # may still be moving aside.
        k = if :rand.uniform(4) == 1, do: 0, else: :rand.uniform(@file_rows - 1)
        {restorer, ref} = spawn_restore(table, opts(dir))

        seen =
          if k > 0,
            do: wait_for_file_rows(table, restorer, k),
            else: yield_times(:rand.uniform(200))

        returned = kill_and_settle(restorer, ref)
        assert returned in [:killed, {:returned, :ok}]
        outcome = outcome(table, old, file_pairs)

        unless outcome in [:old, :file] do
          flunk(
            "iteration #{n} (seed #{seed}, #{type}, #{length(old)} old rows, kill after " <>
              "#{seen} file rows): the table holds #{inspect(outcome)}"
          )
        end

        {outcome, returned != :killed, seen}
      end

    counts = Enum.frequencies(for {o, c?, seen} <- outcomes, do: {o, c?, seen > 0})

    IO.puts(
      "[killed caller] {outcome, completed before the kill, file rows seen}: #{inspect(counts)}"
    )

    # Not vacuous: kills landed while file rows were going in, and were rolled back.
    assert counts[{:old, false, true}] > 0
    assert leftover_copies() == []
  end

  test "a caller killed while it rolls back leaves the old rows", %{tmp_dir: dir} do
    seed = seed_rand!("killed during rollback")
    write_failing_file(dir)
    old = for i <- 1..20_000, do: {["old", i], i, 0}
    table = owned_table(:set, old)

    mid_rollback =
      for n <- 1..10 do
        {restorer, ref} = spawn_restore(table, opts(dir))
        mid? = wait_for_rollback(table, restorer, length(old))
        returned = kill_and_settle(restorer, ref)
        assert returned in [:killed, {:returned, {:error, :bad_file}}]
        outcome = outcome(table, old, [])

        assert outcome == :old,
               "iteration #{n} (seed #{seed}, mid-rollback: #{mid?}): #{inspect(outcome)}"

        mid? and returned == :killed
      end

    IO.puts(
      "[killed during rollback] kills that landed mid-rollback: #{Enum.count(mid_rollback, & &1)}/10"
    )

    assert Enum.any?(mid_rollback)
    assert leftover_copies() == []
  end

  test "a killed caller's own public table passes to its heir all old or all new",
       %{tmp_dir: dir} do
    seed = seed_rand!("killed owner with heir")
    file_pairs = for i <- 1..@file_rows, do: {["k", i], {:file, i}}
    write_chunks(dir, Enum.chunk_every(file_pairs, @chunk_size))
    old = for i <- 1..2_000, do: {["k", i], {:old, i}, 0}
    heir = spawn(fn -> Process.sleep(:infinity) end)
    on_exit(fn -> Process.exit(heir, :kill) end)
    test = self()

    outcomes =
      for n <- 1..10 do
        k = :rand.uniform(@file_rows - 1)

        {restorer, ref} =
          spawn_monitor(fn ->
            table = :ets.new(:ptp_heir, [:set, :public, {:heir, heir, n}])
            :ets.insert(table, old)
            send(test, {:table, self(), table})
            send(test, {:restored, self(), Persist.restore_from_disk(table, opts(dir))})
          end)

        table =
          receive do
            {:table, ^restorer, table} -> table
          end

        wait_for_file_rows(table, restorer, k)
        assert kill_and_settle(restorer, ref) in [:killed, {:returned, :ok}]
        assert :ets.info(table, :owner) == heir
        outcome = outcome(table, old, file_pairs)
        assert outcome in [:old, :file], "iteration #{n} (seed #{seed}): #{inspect(outcome)}"
        :ets.delete(table)
        outcome
      end

    IO.puts("[killed owner with heir] outcomes: #{inspect(Enum.frequencies(outcomes))}")
    assert :old in outcomes
  end

  test "restores into another process's table leave no process or copy behind",
       %{tmp_dir: dir} do
    pairs = for i <- 1..2_000, do: {["k", i], {:file, i}}
    write_chunks(dir, Enum.chunk_every(pairs, @chunk_size))

    for old <- [[], [{["old"], 1, 0}]] do
      table = owned_table(:set, old)
      {restorer, ref} = spawn_restore(table, opts(dir))
      assert await_result(restorer) == :ok
      kill_and_settle(restorer, ref)
      assert pairs(table) == sort(pairs)
    end

    # The table's owner deletes it while rows go in.
    {owner, table} = start_owner(:set, [{["old"], 1, 0}])
    {restorer, ref} = spawn_restore(table, opts(dir))
    wait_for_file_rows(table, restorer, 1)
    send(owner, :delete)
    assert await_result(restorer) in [:ok, {:error, :no_table}]
    kill_and_settle(restorer, ref)

    write_failing_file(dir)
    table = owned_table(:set, [{["old"], 1, 0}])
    {restorer, ref} = spawn_restore(table, opts(dir))
    assert await_result(restorer) == {:error, :bad_file}
    kill_and_settle(restorer, ref)
    assert :ets.tab2list(table) == [{["old"], 1, 0}]
    assert leftover_copies() == []
  end

  ## Helpers

  # A public table of `type` holding `rows`, owned by a process that outlives the test's
  # restores.
  defp owned_table(type, rows) do
    {_owner, table} = start_owner(type, rows)
    table
  end

  defp start_owner(type, rows) do
    test = self()

    owner =
      spawn(fn ->
        table = :ets.new(:ptp_owned, [type, :public])
        :ets.insert(table, rows)
        send(test, {:table, self(), table})

        receive do
          :delete -> :ets.delete(table)
        end
      end)

    on_exit(fn -> Process.exit(owner, :kill) end)

    receive do
      {:table, ^owner, table} -> {owner, table}
    end
  end

  defp spawn_restore(table, opts) do
    test = self()

    spawn_monitor(fn ->
      send(test, {:restored, self(), Persist.restore_from_disk(table, opts)})
    end)
  end

  defp await_result(restorer) do
    receive do
      {:restored, ^restorer, result} -> result
    end
  end

  # Polls until `k` of the file's rows are in the table or the restore has ended; returns
  # how many were seen. The old rows are all gone before the first chunk, which holds the
  # file's first row, goes in: from then on the table's size counts the file's rows.
  defp wait_for_file_rows(table, restorer, k) do
    seen = if holds?(table, ["k", 1], {:file, 1}), do: size(table), else: 0

    cond do
      seen >= k -> seen
      not Process.alive?(restorer) -> seen
      true -> wait_for_file_rows(table, restorer, k)
    end
  end

  # Polls until the old rows are going back in (the file's first row was in, and now some
  # but not all old rows are); false when the restore ended first.
  defp wait_for_rollback(table, restorer, total, file_seen? \\ false) do
    file? = holds?(table, ["file", 1], 0)
    size = size(table)

    cond do
      file_seen? and not file? and size > 0 and size < total -> true
      not Process.alive?(restorer) -> false
      true -> wait_for_rollback(table, restorer, total, file_seen? or file?)
    end
  end

  defp holds?(table, key, value) do
    Enum.any?(:ets.lookup(table, key), &match?({_, ^value, _}, &1))
  rescue
    ArgumentError -> false
  end

  defp size(table) do
    case :ets.info(table, :size) do
      :undefined -> 0
      size -> size
    end
  end

  defp yield_times(0), do: 0

  defp yield_times(n) do
    :erlang.yield()
    yield_times(n - 1)
  end

  # Kills the restoring process and waits until it and every process it started are gone.
  # Returns `{:returned, result}` when the restore had returned before the kill, else
  # `:killed`.
  defp kill_and_settle(restorer, ref) do
    Process.exit(restorer, :kill)

    receive do
      {:DOWN, ^ref, :process, ^restorer, _} -> :ok
    end

    # Dead, it starts nothing more.
    for pid <- Process.list(), Process.info(pid, :parent) == {:parent, restorer} do
      monitor = Process.monitor(pid)

      receive do
        {:DOWN, ^monitor, :process, ^pid, _} -> :ok
      end
    end

    receive do
      {:restored, ^restorer, result} -> {:returned, result}
    after
      0 -> :killed
    end
  end

  # :old (exactly the old rows), :file (exactly the file's pairs), or a description.
  defp outcome(table, old, file_pairs) do
    rows = :ets.tab2list(table)

    cond do
      Enum.sort(rows) == Enum.sort(old) ->
        :old

      file_pairs != [] and pairs(table) == sort(file_pairs) ->
        :file

      true ->
        values = Enum.frequencies_by(rows, fn {_, v, _} -> if is_tuple(v), do: elem(v, 0) end)
        {:mixed, values}
    end
  end

  # Writes the file chunk by chunk, the first chunk first (a restore inserts them in this
  # order).
  defp write_chunks(dir, chunks) do
    File.mkdir_p!(table_dir(dir))
    {:ok, session} = NativeHelpers.persist_begin(table_dir(dir), 1, @chunk_size)

    for chunk <- chunks do
      :ok = Native.persist_append(session, :erlang.term_to_binary(chunk), length(chunk))
    end

    :ok = NativeHelpers.persist_commit(session)
    Native.persist_close(session)
  end

  # 400 good chunks, then a last one that verifies but does not decode to rows: its restore
  # fails after every good row went in, and rolls back.
  defp write_failing_file(dir) do
    pairs = for i <- 1..(400 * @chunk_size), do: {["file", i], 0}
    write_chunks(dir, Enum.chunk_every(pairs, @chunk_size) ++ [[:bad]])
  end

  # Copies of old rows kept aside by restores, still alive.
  defp leftover_copies do
    for table <- :ets.all(), :ets.info(table, :name) == PropertyTable.Persist, do: table
  end
end
