defmodule PropertyTable.PersistConcurrencyTest do
  @moduledoc """
  Many writers at once: Erlang processes calling every function on one directory, and two
  OS-level BEAMs persisting to one directory.

  Every file written holds a single "version" (every row carries `{writer, generation}`), so
  a torn or mixed file would show up as rows of more than one version.
  """
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist
  alias PropertyTable.Persist.TestSupport.{Child, ChildVM}

  @moduletag :tmp_dir

  @workers 16
  @duration_ms 2_500
  @rows 200
  @max_snapshots 4

  defp opts(dir, extra \\ []), do: [data_directory: dir, table_name: "t"] ++ extra

  defp version_rows(version), do: for(i <- 1..@rows, do: {["row", i], {version, i}})

  # The single version a restored table holds, or flunks.
  defp version_of({:ok, pairs}) do
    assert length(pairs) == @rows
    assert [version] = pairs |> Enum.map(fn {_, {v, _}} -> v end) |> Enum.uniq()
    assert pairs == sort(version_rows(version))
    version
  end

  test "#{@workers} processes persisting, snapshotting, listing and restoring at once",
       %{tmp_dir: dir} do
    seed = seed_rand!("concurrency")
    deadline = System.monotonic_time(:millisecond) + @duration_ms

    {results, _log} =
      with_log(fn ->
        1..@workers
        |> Enum.map(fn w ->
          Task.async(fn -> worker(dir, w, rand_state(seed, w), deadline) end)
        end)
        |> Task.await_many(60_000)
      end)

    counts = results |> Enum.flat_map(& &1) |> Enum.frequencies()
    IO.puts("[concurrency] #{@workers} processes for #{@duration_ms} ms: #{inspect(counts)}")

    # Only documented outcomes (anything else flunked inside the worker).
    assert counts[:persist_ok] > 0 and counts[:snapshot_ok] > 0

    # The final files: the stable file, the backup and every snapshot hold one version each.
    version_of(restore_fresh(opts(dir)))
    File.rm!(stable_path(dir))
    capture_log(fn -> version_of(restore_fresh(opts(dir))) end)

    list = Persist.get_snapshot_list(opts(dir))
    assert length(list) <= @max_snapshots

    for {id, _} <- list do
      assert :ok = Persist.restore_snapshot(opts(dir), id)
      version_of(restore_fresh(opts(dir)))
    end

    # Nothing left over.
    assert Path.wildcard(Path.join(table_dir(dir), "*.tmp")) == []
    assert Path.wildcard(Path.join(snapshots_path(dir), "*.tmp")) == []
    assert Path.wildcard(Path.join(table_dir(dir), "*.corrupt-*")) == []
  end

  # Runs random operations until the deadline; returns the list of outcomes. Flunks on any
  # result the documentation does not allow.
  defp worker(dir, w, rand, deadline) do
    table = :ets.new(:worker, [:set, :public])
    target = :ets.new(:worker_target, [:set, :public])
    loop(dir, w, table, target, rand, deadline, 0, [])
  end

  defp loop(dir, w, table, target, rand, deadline, gen, acc) do
    if System.monotonic_time(:millisecond) >= deadline do
      acc
    else
      {dice, rand} = :rand.uniform_s(100, rand)
      {pick, rand} = :rand.uniform_s(1_000_000, rand)
      gen = gen + 1
      outcome = operation(dice, pick, dir, w, gen, table, target)
      loop(dir, w, table, target, rand, deadline, gen, [outcome | acc])
    end
  end

  defp operation(dice, _pick, dir, w, gen, table, _target) when dice <= 40 do
    insert_pairs(table, version_rows({w, gen}))
    assert :ok = Persist.persist_to_disk(table, opts(dir, chunk_size: 64))
    :persist_ok
  end

  defp operation(dice, _pick, dir, w, gen, table, _target) when dice <= 65 do
    insert_pairs(table, version_rows({w, gen}))
    assert {:ok, id} = Persist.save_snapshot(table, opts(dir, max_snapshots: @max_snapshots))

    # After save_snapshot returns, at most max_snapshots snapshots are as old as ours or
    # older. (Another writer may be between creating its snapshot and deleting the oldest,
    # so the whole list may briefly hold one more.)
    list = Persist.get_snapshot_list(opts(dir))
    assert length(list) <= @max_snapshots + 1

    case Enum.find_index(list, fn {i, _} -> i == id end) do
      nil -> :ok
      index -> assert index + 1 <= @max_snapshots
    end

    :snapshot_ok
  end

  defp operation(dice, _pick, dir, _w, _gen, _table, _target) when dice <= 80 do
    list = Persist.get_snapshot_list(opts(dir))
    assert length(list) <= @max_snapshots + 1
    assert Enum.all?(list, fn {id, {{_, _, _}, {_, _, _}}} -> id =~ ~r/\A[0-9A-F]{16}\z/ end)
    :list_ok
  end

  defp operation(dice, pick, dir, _w, _gen, _table, _target) when dice <= 95 do
    case Persist.get_snapshot_list(opts(dir)) do
      [] ->
        :restore_snapshot_none

      list ->
        {id, _} = Enum.at(list, rem(pick, length(list)))

        case Persist.restore_snapshot(opts(dir), id) do
          :ok -> :restore_snapshot_ok
          # Deleted by another writer's retention since it was listed.
          {:error, :enoent} -> :restore_snapshot_enoent
          other -> flunk("restore_snapshot returned #{inspect(other)}")
        end
    end
  end

  defp operation(_dice, _pick, dir, _w, _gen, _table, target) do
    case Persist.restore_from_disk(target, opts(dir)) do
      :ok ->
        version_of({:ok, pairs(target)})
        :restore_ok

      # Nothing persisted yet.
      {:error, :enoent} ->
        :restore_enoent

      other ->
        flunk("restore_from_disk returned #{inspect(other)}")
    end
  end

  test "two OS processes persisting to one directory at once", %{tmp_dir: dir} do
    count = 40
    rows = 3000
    # Both boot first, then start together.
    a = ChildVM.start()
    b = ChildVM.start()
    a = ChildVM.await_ready(a)
    b = ChildVM.await_ready(b)
    ChildVM.send_line(a, "GO persist_n #{ChildVM.path_arg(dir)} #{rows} 1 #{count}")
    ChildVM.send_line(b, "GO persist_n #{ChildVM.path_arg(dir)} #{rows} 100001 #{count}")

    # Collect both ACK streams in arrival order, until both have exited.
    {order, statuses, a, b} = collect_two(a, b, [], %{})

    assert statuses == %{a: 0, b: 0},
           "#{inspect(statuses)}\n#{ChildVM.output(a)}\n#{ChildVM.output(b)}"

    acks_a = for {:a, g} when is_integer(g) <- order, do: g
    acks_b = for {:b, g} when is_integer(g) <- order, do: g
    assert acks_a == Enum.to_list(1..count)
    assert acks_b == Enum.to_list(100_001..(100_000 + count))

    # They ran at the same time: both had started writing before either had finished. (How
    # often the lock changed hands is up to the scheduler; it is printed, not asserted.)
    first_done = Enum.find_index(order, &match?({_, :done}, &1))
    assert Enum.find_index(order, &(&1 == {:a, :start})) < first_done
    assert Enum.find_index(order, &(&1 == {:b, :start})) < first_done
    switches = order |> Enum.filter(&is_integer(elem(&1, 1))) |> Enum.chunk_by(&elem(&1, 0))

    IO.puts(
      "[concurrency] two OS processes, #{count} persists each: #{length(switches) - 1} switches"
    )

    # The stable file holds the last write of one of them, the backup a whole earlier one.
    assert {:ok, pairs} = restore_fresh(opts(dir))
    assert {:ok, gen} = Child.generation_of(pairs, rows)
    assert gen in [count, 100_000 + count]
    File.rm!(stable_path(dir))
    {result, _log} = with_log(fn -> restore_fresh(opts(dir)) end)
    assert {:ok, pairs} = result
    assert {:ok, _} = Child.generation_of(pairs, rows)
    assert Path.wildcard(Path.join(table_dir(dir), "*.tmp")) == []
  end

  defp collect_two(a, b, order, %{a: _, b: _} = statuses),
    do: {Enum.reverse(order), statuses, a, b}

  defp collect_two(a, b, order, statuses) do
    {pa, pb} = {a.port, b.port}

    receive do
      {^pa, {:data, {:eol, line}}} ->
        collect_two(%{a | lines: [line | a.lines]}, b, ack(order, :a, line), statuses)

      {^pb, {:data, {:eol, line}}} ->
        collect_two(a, %{b | lines: [line | b.lines]}, ack(order, :b, line), statuses)

      {^pa, {:exit_status, status}} ->
        collect_two(a, b, order, Map.put(statuses, :a, status))

      {^pb, {:exit_status, status}} ->
        collect_two(a, b, order, Map.put(statuses, :b, status))
    after
      60_000 -> flunk("children stalled:\n#{ChildVM.output(a)}\n#{ChildVM.output(b)}")
    end
  end

  defp ack(order, who, "ACK " <> g), do: [{who, String.to_integer(g)} | order]
  defp ack(order, who, "START"), do: [{who, :start} | order]
  defp ack(order, who, "DONE"), do: [{who, :done} | order]
  defp ack(order, _who, _line), do: order
end
