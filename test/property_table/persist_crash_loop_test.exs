defmodule PropertyTable.PersistCrashLoopTest do
  @moduledoc """
  Process crash loop: a separate OS-level BEAM writes generation after generation (every row
  of a 3000-row table carries the generation number) and prints `ACK g` after each completed
  write. The test kills it with `kill -9` at random moments spread over the write's
  duration, then restores into a fresh table: the result must be exactly one generation,
  the last acknowledged one or the one being written. The same for `save_snapshot/2` and
  `restore_snapshot/2`.

  200 kills in all by default (60% during persist, 20% during save_snapshot, 20% during
  restore_snapshot); `CRASH_KILLS=n` changes the total, `PTP_SEED` the random seed.
  Each kill needs a fresh VM; the next one boots while the current one works, so a kill costs
  about one VM boot (~0.3 s).
  """
  use ExUnit.Case, async: true

  import PropertyTable.Persist.TestHelpers
  import PropertyTable.Persist.TestSupport.CrashLoop, only: [assert_no_corrupt_files: 1]

  alias PropertyTable.Persist
  alias PropertyTable.Persist.TestSupport.{Child, ChildVM, CrashLoop}

  @moduletag :tmp_dir
  @moduletag :crash_loop
  @moduletag timeout: :infinity

  @rows 3000
  @max_snapshots 3

  defp total_kills do
    case System.get_env("CRASH_KILLS") do
      nil -> 200
      n -> String.to_integer(n)
    end
  end

  defp kills(:persist), do: round(total_kills() * 0.6)
  defp kills(:snapshot), do: round(total_kills() * 0.2)
  defp kills(:restore_snapshot), do: total_kills() - kills(:persist) - kills(:snapshot)

  defp opts(dir), do: [data_directory: dir, table_name: "t"]

  setup do
    seed = seed_rand!("crash loop")
    killer = ChildVM.start_killer()
    on_exit(fn -> ChildVM.stop_killer(killer) end)
    %{killer: killer, seed: seed}
  end

  test "kill -9 during persist_to_disk", %{tmp_dir: dir, killer: killer} do
    n = kills(:persist)

    stats =
      crash_loop(
        n,
        killer,
        %{disk: 0, mode: :persist, dir: dir},
        fn state ->
          "GO persist #{ChildVM.path_arg(dir)} #{@rows} #{state.disk + 1}"
        end,
        fn state, acks ->
          last = List.last(acks, state.disk)
          gen = restored_generation(dir)
          assert gen in [last, last + 1], "restored #{gen}, last ACK #{last}"
          {%{state | disk: gen}, outcome(gen, last, acks)}
        end
      )

    report("persist_to_disk", n, stats)
    assert_no_corrupt_files(dir)
  end

  test "kill -9 during save_snapshot", %{tmp_dir: dir, killer: killer} do
    n = kills(:snapshot)

    stats =
      crash_loop(
        n,
        killer,
        %{disk: 0, mode: :snapshot, dir: dir, snapshots: 0},
        fn state ->
          "GO snapshot #{ChildVM.path_arg(dir)} #{@rows} #{state.disk + 1} #{@max_snapshots}"
        end,
        fn state, acks ->
          last = List.last(acks, state.disk)
          gen = restored_generation(dir)
          assert gen in [last, last + 1], "restored #{gen}, last ACK #{last}"

          # Retention may be cut off after the new snapshot was renamed into place: one
          # snapshot over the limit after an acknowledged call, and one more for each kill in
          # a row that left no acknowledged call (its retention never ran).
          list = Persist.get_snapshot_list(opts(dir))
          base = if acks != [], do: @max_snapshots, else: max(state.snapshots, @max_snapshots)
          assert length(list) <= base + 1, "#{length(list)} snapshots"

          # Every listed snapshot is complete and holds one generation; newer ones hold
          # newer generations; the newest is not ahead of the stable file, and not behind
          # the last acknowledged save_snapshot.
          gens = for {id, _} <- list, do: snapshot_generation(dir, id)
          assert gens == Enum.sort(Enum.uniq(gens)), "snapshot generations #{inspect(gens)}"

          if gens != [] do
            assert List.last(gens) <= gen
            if acks != [], do: assert(List.last(gens) >= last)
          end

          {%{state | disk: gen, snapshots: length(list)}, outcome(gen, last, acks)}
        end
      )

    report("save_snapshot", n, stats)
    assert_no_corrupt_files(dir)
  end

  test "kill -9 during restore_snapshot", %{tmp_dir: dir, killer: killer} do
    n = kills(:restore_snapshot)
    # Three snapshots of generations 1001..1003, the last one also the stable file.
    table = :ets.new(:crash_setup, [:set, :public])

    ids =
      for gen <- 1001..1003 do
        :ets.insert(table, Child.rows(gen, @rows))
        Persist.save_snapshot!(table, opts(dir) ++ [max_snapshots: 10])
      end

    snapshots = Map.new(ids, &{&1, File.read!(snapshot_path(dir, &1))})
    gen_of_index = fn i -> 1001 + rem(i, 3) end

    stats =
      crash_loop(
        n,
        killer,
        %{disk: 1003, mode: :restore_snapshot, dir: dir},
        fn state ->
          # Start with the snapshot after the one on disk, so every step changes the files.
          "GO restore_snapshot #{ChildVM.path_arg(dir)} #{state.disk - 1001 + 1} #{Enum.join(ids, ",")}"
        end,
        fn state, acks ->
          {last, next} =
            case acks do
              [] -> {state.disk, gen_of_index.(state.disk - 1001 + 1)}
              _ -> {gen_of_index.(List.last(acks)), gen_of_index.(List.last(acks) + 1)}
            end

          gen = restored_generation(dir)
          assert gen in [last, next], "restored #{gen}, last ACK'd #{last}, in flight #{next}"

          for {id, bin} <- snapshots do
            assert File.read!(snapshot_path(dir, id)) == bin, "snapshot #{id} changed"
          end

          outcome = if gen == last, do: :last_acked, else: :in_flight
          outcome = if acks == [], do: {:no_ack, outcome}, else: outcome
          {%{state | disk: gen}, outcome}
        end
      )

    report("restore_snapshot", n, stats)
    assert_no_corrupt_files(dir)
  end

  defp outcome(gen, last, acks) do
    o = if gen == last, do: :last_acked, else: :in_flight
    if acks == [], do: {:no_ack, o}, else: o
  end

  # Runs `n` kill cycles (see `CrashLoop.run/6`), counting the kills that left a
  # half-written file behind: evidence that kills land mid-write.
  defp crash_loop(n, killer, state, go, check) do
    CrashLoop.run(n, killer, state, go, fn state, acks ->
      {state, outcome} = check.(state, acks)
      if half_written?(state.dir), do: {state, [outcome, :left_tmp_file]}, else: {state, outcome}
    end)
  end

  defp half_written?(dir) do
    File.exists?(tmp_path(dir)) or Path.wildcard(Path.join(snapshots_path(dir), "*.tmp")) != []
  end

  defp restored_generation(dir) do
    assert {:ok, pairs} = restore_fresh(opts(dir))
    assert {:ok, gen} = Child.generation_of(pairs, @rows)
    gen
  end

  defp snapshot_generation(dir, id) do
    scratch = Path.join(dir, "scratch")
    File.mkdir_p!(table_dir(scratch))
    File.cp!(snapshot_path(dir, id), stable_path(scratch))
    gen = restored_generation(scratch)
    File.rm_rf!(scratch)
    gen
  end

  defp report(what, n, stats) do
    {window, stats} = Map.pop(stats, :window_us)

    IO.puts(
      "[crash loop] #{what}: #{n} kills within #{window} us of START (two writes); " <>
        "outcomes #{inspect(stats)}"
    )
  end
end
