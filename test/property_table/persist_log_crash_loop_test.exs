defmodule PropertyTable.PersistLogCrashLoopTest do
  @moduledoc """
  Process crash loop over the change log: a separate OS-level BEAM makes small changes to a
  3000-row table between persists (`ChangeModel`: 1 to 5 rows upserted or deleted, sometimes
  none, now and then 50 to 600), so most persists append a record to `data.ptable.log`, and
  with `log_compaction` 0.05 or 0.1 a compaction (a full file) comes every few persists.
  Each child first gets the table of the last generation on disk, by `restore_from_disk/2`
  (the NIF's baseline then comes from the restore) or from a file (its first persist is then
  a full write); one step in 30 restores from disk first, one in 30 is a `save_snapshot/2`.

  The test kills it with `kill -9` at a random moment within its first 16 writes, then
  restores into a fresh table: the rows must be exactly those of the last generation the
  child acknowledged or of the one it was writing (the test replays the child's history
  from the seed), never a mix, never older. Every snapshot must hold exactly a generation
  the child snapshotted, and no file may be quarantined as corrupt.

  Each kill is classified by what the in-flight write had done to the files when it died
  (inode and size of the stable, backup and tmp files and the logs, against those the child
  reported with its last ACK): a log append, a compaction, the first (full) write of a child
  without baseline, a snapshot, a restore, or nothing yet (reading and comparing the table,
  or between persists). The summary line gives the counts.

  200 kills by default; `PTP_LOG_KILLS=n` changes the count (separate from the other crash
  loop's `CRASH_KILLS`), `PTP_SEED` the seed.
  """
  use ExUnit.Case, async: true

  import PropertyTable.Persist.TestHelpers
  import PropertyTable.Persist.TestSupport.CrashLoop, only: [assert_no_corrupt_files: 1]

  alias PropertyTable.Persist
  alias PropertyTable.Persist.TestSupport.{ChangeModel, ChildVM, CrashLoop}

  @moduletag :tmp_dir
  @moduletag :crash_loop
  @moduletag timeout: :infinity

  @rows 3000
  @writes 16
  @full_files ~w(data.ptable data.ptable.backup data.ptable.tmp data.ptable.backup.log)

  defp total_kills do
    case System.get_env("PTP_LOG_KILLS") do
      nil -> 200
      n -> String.to_integer(n)
    end
  end

  defp opts(dir), do: [data_directory: dir, table_name: "t"]

  setup do
    seed = seed_rand!("log crash loop")
    killer = ChildVM.start_killer()
    on_exit(fn -> ChildVM.stop_killer(killer) end)
    %{killer: killer, seed: seed}
  end

  test "kill -9 during small-change persists, log appends and compactions",
       %{tmp_dir: dir, killer: killer, seed: seed} do
    n = total_kills()
    table = ChangeModel.initial(@rows)
    ets = new_table(Enum.to_list(table))
    :ok = Persist.persist_to_disk(ets, opts(dir))
    :ets.delete(ets)

    state = %{
      dir: dir,
      seed: seed,
      kill: 0,
      gen: 0,
      table: table,
      fingerprint: ChangeModel.fingerprint(table_dir(dir)),
      snapshots: %{},
      checked: MapSet.new()
    }

    started = System.monotonic_time(:millisecond)

    stats =
      CrashLoop.run(n, killer, state, &go/1, &check/2,
        writes: @writes,
        parse: &parse/1
      )

    ms = System.monotonic_time(:millisecond) - started
    report(n, stats, ms)
    assert_no_corrupt_files(dir)

    # The loop's point: with enough kills, some land in each kind of write.
    if n >= 100 do
      for kind <- [:append, :compaction, :in_flight],
          do: assert(Map.get(stats, kind, 0) > 0, "no kill counted as #{kind}: #{inspect(stats)}")
    end
  end

  # Each child's start (restore or load) and log_compaction, a function of the kill number
  # so that `check/2` knows them too.
  defp child_setup(state) do
    st = :rand.seed_s(:exsss, {state.seed, state.kill, 31})
    {start, st} = :rand.uniform_s(2, st)
    {compaction, _} = :rand.uniform_s(2, st)
    {if(start == 1, do: "restore", else: "load"), Enum.at([0.05, 0.1], compaction - 1)}
  end

  defp model_path(state), do: Path.join(state.dir, "model.etf")

  defp go(state) do
    File.write!(model_path(state), :erlang.term_to_binary(Map.to_list(state.table)))
    {start, compaction} = child_setup(state)

    Enum.join(
      [
        "GO log",
        ChildVM.path_arg(state.dir),
        @rows,
        state.seed,
        state.gen + 1,
        start,
        ChildVM.path_arg(model_path(state)),
        compaction
      ],
      " "
    )
  end

  defp parse(lines) do
    Enum.map(lines, fn
      "ACK " <> rest ->
        [gen, fingerprint] = String.split(rest, " ")
        {:ack, String.to_integer(gen), fingerprint}

      "SNAP " <> gen ->
        {:snap, String.to_integer(gen)}

      marker when marker in ["RESTORE", "RESTORED"] ->
        marker

      other ->
        flunk("unexpected child output #{inspect(other)}")
    end)
  end

  defp check(state, lines) do
    acks = for {:ack, gen, fingerprint} <- lines, do: {gen, fingerprint}
    {last, last_fingerprint} = List.last(acks, {state.gen, state.fingerprint})
    pending = lines |> Enum.reverse() |> Enum.take_while(&(not match?({:ack, _, _}, &1)))
    fingerprint = ChangeModel.fingerprint(table_dir(state.dir))
    torn = torn_log_tail?(state.dir)

    # The tables of every generation the child may have left on disk, and of those it
    # snapshotted (by digest).
    snapped = for {:snap, gen} <- lines, into: MapSet.new(), do: gen

    {tables, snapshots} =
      Enum.reduce((state.gen + 1)..(last + 1)//1, {[state.table], state.snapshots}, fn
        gen, {[previous | _] = tables, snapshots} ->
          {_op, changes} = ChangeModel.step(state.seed, gen, @rows)
          table = ChangeModel.apply_changes(previous, changes)

          snapshots =
            if gen in snapped, do: Map.put(snapshots, digest(table), gen), else: snapshots

          {[table | tables], snapshots}
      end)

    [next, acked | _] = tables
    assert {:ok, pairs} = restore_fresh(opts(state.dir))
    restored = Map.new(pairs)

    # A child killed while restoring had not yet changed its table for the next persist.
    restoring = "RESTORE" in pending and "RESTORED" not in pending

    {gen, table} =
      cond do
        restored == acked -> {last, acked}
        restored == next and not restoring -> {last + 1, next}
        true -> flunk(mismatch(state, restored, {acked, next, last}, lines, last_fingerprint))
      end

    checked = check_snapshots(state.dir, snapshots, state.checked)
    kind = kind(state, lines, pending, restoring, {last_fingerprint, fingerprint}, acks)
    landed = if gen == last, do: :last_acked, else: :in_flight

    state = %{
      state
      | kill: state.kill + 1,
        gen: gen,
        table: table,
        fingerprint: ChangeModel.fingerprint(table_dir(state.dir)),
        snapshots: snapshots,
        checked: checked
    }

    # Evidence of kills between the renames of a compaction: no stable file, so the restore
    # above came from the backup and its log.
    evidence =
      [torn_log_tail: torn, no_stable_file: String.starts_with?(fingerprint, "-,")]
      |> Enum.flat_map(fn {label, seen} -> if seen, do: [label], else: [] end)

    {state, [kind, landed | evidence]}
  end

  # What the in-flight call had done when the kill came, from the child's last markers and
  # the files it changed since its last ACK.
  defp kind(state, lines, pending, restoring, {last_fingerprint, fingerprint}, acks) do
    {start, _} = child_setup(state)
    changed = ChangeModel.changed_files(last_fingerprint, fingerprint)

    cond do
      restoring -> :restore
      Enum.any?(pending, &match?({:snap, _}, &1)) -> :snapshot
      changed == [] -> :nothing_written
      Enum.any?(changed, &(&1 in @full_files)) -> full_kind(start, lines, acks)
      true -> :append
    end
  end

  # A child that loaded its table has no baseline until its first full write or restore.
  defp full_kind("load", lines, []),
    do: if("RESTORED" in lines, do: :compaction, else: :full_write)

  defp full_kind(_start, _lines, _acks), do: :compaction

  defp torn_log_tail?(dir) do
    Persist.inspect_files(opts(dir))
    |> Enum.any?(&(&1.kind == :log and &1.status == :log_tail))
  end

  # Each new snapshot must restore to exactly a table the child snapshotted.
  defp check_snapshots(dir, snapshots, checked) do
    Enum.reduce(Persist.get_snapshot_list(opts(dir)), checked, fn {id, _}, checked ->
      if id in checked do
        checked
      else
        scratch = Path.join(dir, "scratch")
        File.mkdir_p!(table_dir(scratch))
        File.cp!(snapshot_path(dir, id), stable_path(scratch))
        assert {:ok, pairs} = restore_fresh(opts(scratch))
        File.rm_rf!(scratch)

        assert Map.has_key?(snapshots, digest(Map.new(pairs))),
               "snapshot #{id} holds no table the child snapshotted"

        MapSet.put(checked, id)
      end
    end)
  end

  defp digest(table), do: table |> Enum.sort() |> :erlang.term_to_binary() |> :erlang.md5()

  defp mismatch(state, restored, {acked, next, last}, lines, last_fingerprint) do
    diff = fn table ->
      missing = for {p, v} <- table, Map.get(restored, p) != v, do: p
      extra = for {p, _} <- restored, not Map.has_key?(table, p), do: p

      "#{length(missing)} rows missing or different, #{length(extra)} extra " <>
        inspect(Enum.take(missing ++ extra, 5))
    end

    """
    restored table (#{map_size(restored)} rows) is neither generation #{last} (last ACK) \
    nor #{last + 1} (in flight); seed #{state.seed}, kill #{state.kill}, #{inspect(child_setup(state))}
    against #{last}: #{diff.(acked)}
    against #{last + 1}: #{diff.(next)}
    files at the last ACK #{last_fingerprint} -> now #{ChangeModel.fingerprint(table_dir(state.dir))}
    child lines: #{inspect(lines, limit: :infinity)}
    """
  end

  defp report(n, stats, ms) do
    {window, stats} = Map.pop(stats, :window_us)
    count = &Map.get(stats, &1, 0)

    IO.puts(
      "[log crash loop] #{n} kills: #{count.(:append)} during log appends, " <>
        "#{count.(:compaction)} during compactions, " <>
        "#{count.(:full_write)} during the first full write of a child without baseline, " <>
        "#{count.(:snapshot)} during snapshots, #{count.(:restore)} during restores, " <>
        "#{count.(:nothing_written)} before a write changed a file; restored " <>
        "#{count.(:last_acked)} last ACKed, #{count.(:in_flight)} in flight; " <>
        "#{count.(:torn_log_tail)} torn log tails, #{count.(:no_stable_file)} without a stable " <>
        "file (restored from the backup); failures=0; " <>
        "window #{window} us (#{@writes} writes); #{ms} ms"
    )
  end
end
