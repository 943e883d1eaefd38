defmodule PropertyTable.PersistLogTest do
  @moduledoc """
  The change log through the public API: small changes append a record, restore applies
  the records in order, compaction writes a full file, snapshots stay self-contained, and a
  log cut short restores the records before the cut.
  """
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist

  @moduletag :tmp_dir

  defp opts(dir, extra \\ []), do: [data_directory: dir, table_name: "t"] ++ extra

  defp size(path), do: File.stat!(path).size
  defp mtime(dir, path), do: File.stat!(Path.join(dir, path), time: :posix).mtime

  test "a history of random changes restores after every persist", %{tmp_dir: dir} do
    seed_rand!("log history")
    table = new_table(realistic_pairs(400, 7))
    o = opts(dir, chunk_size: 64)
    :ok = Persist.persist_to_disk(table, o)

    outcomes =
      for round <- 1..60, reduce: %{appended: 0, compacted: 0, unchanged: 0} do
        acc ->
          before =
            {File.exists?(log_path(dir)) and size(log_path(dir)), File.read!(stable_path(dir))}

          change_randomly(table, round)
          :ok = Persist.persist_to_disk(table, o)
          assert {:ok, pairs(table)} == restore_fresh(o), "round #{round}"

          after_persist =
            {File.exists?(log_path(dir)) and size(log_path(dir)), File.read!(stable_path(dir))}

          kind =
            cond do
              after_persist == before -> :unchanged
              elem(after_persist, 1) == elem(before, 1) -> :appended
              true -> :compacted
            end

          Map.update!(acc, kind, &(&1 + 1))
      end

    # The mix of changes exercises every path.
    assert outcomes.appended > 20, inspect(outcomes)
    assert outcomes.compacted >= 2, inspect(outcomes)
    assert outcomes.unchanged >= 1, inspect(outcomes)
  end

  # Mostly a few rows changed, inserted or deleted; now and then none, or a third of the
  # table replaced by new rows (which compacts). The table keeps its size: a table that
  # shrank by a third now and then compacted on almost every small change (seed 643625:
  # 15 appends in 60 rounds).
  defp change_randomly(table, round) do
    rows = :ets.tab2list(table)

    # Every 20th round replaces a third and every 15th changes nothing, whatever the seed.
    choice =
      cond do
        rem(round, 20) == 0 -> 2
        rem(round, 15) == 0 -> 1
        true -> :rand.uniform(10)
      end

    case choice do
      1 ->
        :ok

      2 ->
        replaced = Enum.take_random(rows, div(length(rows), 3))
        Enum.each(replaced, &:ets.delete_object(table, &1))

        insert_pairs(
          table,
          for(n <- 1..length(replaced)//1, do: {["bulk", "#{round}", "#{n}"], round})
        )

      _ ->
        for _ <- 1..:rand.uniform(4) do
          case :rand.uniform(3) do
            1 ->
              insert_pairs(table, [{["new", "#{round}", "#{:rand.uniform(1000)}"], round}])

            2 ->
              with [{p, _, _} | _] <- Enum.take_random(rows, 1),
                   do: insert_pairs(table, [{p, {round, :rand.uniform()}}])

            3 ->
              with [row | _] <- Enum.take_random(rows, 1), do: :ets.delete_object(table, row)
          end
        end
    end
  end

  test "a one-row change appends a small record and leaves the stable file", %{tmp_dir: dir} do
    table = new_table(realistic_pairs(5_000, 3))
    :ok = Persist.persist_to_disk(table, opts(dir))
    stable = File.read!(stable_path(dir))
    [{p, _, _} | _] = :ets.tab2list(table)
    insert_pairs(table, [{p, :changed}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    assert File.read!(stable_path(dir)) == stable
    assert size(log_path(dir)) < 1024
    # One row deleted and one inserted: as small.
    :ets.delete(table, p)
    insert_pairs(table, [{["brand", "new"], 1}])
    before = size(log_path(dir))
    :ok = Persist.persist_to_disk(table, opts(dir))
    assert size(log_path(dir)) - before < 1024
    assert {:ok, pairs(table)} == restore_fresh(opts(dir))
  end

  test "an unchanged persist after appends writes nothing", %{tmp_dir: dir} do
    table = new_table(realistic_pairs(500, 4))
    :ok = Persist.persist_to_disk(table, opts(dir))
    insert_pairs(table, [{["x"], 1}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    files = tree(dir)
    mtimes = fn -> for path <- Map.keys(files), into: %{}, do: {path, mtime(dir, path)} end
    stats = mtimes.()
    # New timestamps, same contents.
    insert_pairs(table, pairs(table))
    :ok = Persist.persist_to_disk(table, opts(dir))
    assert tree(dir) == files
    assert stats == mtimes.()
  end

  test "emptying the table is logged as deletes", %{tmp_dir: dir} do
    table = new_table(realistic_pairs(300, 5))
    :ok = Persist.persist_to_disk(table, opts(dir, log_compaction: 10))
    :ets.delete_all_objects(table)
    :ok = Persist.persist_to_disk(table, opts(dir, log_compaction: 10))
    assert File.regular?(log_path(dir))
    assert {:ok, []} == restore_fresh(opts(dir))
  end

  test "after a restore, the next persist appends to the log it restored", %{tmp_dir: dir} do
    data = realistic_pairs(2_000, 6)
    table = new_table(data)
    :ok = Persist.persist_to_disk(table, opts(dir))
    insert_pairs(table, [{["a"], 1}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    stable = File.read!(stable_path(dir))
    log = File.read!(log_path(dir))

    restored = :ets.new(:restored, [:set, :public])
    :ok = Persist.restore_from_disk(restored, opts(dir))
    insert_pairs(restored, [{["b"], 2}])
    :ok = Persist.persist_to_disk(restored, opts(dir))
    assert File.read!(stable_path(dir)) == stable
    # The record went after the one that was there.
    assert binary_part(File.read!(log_path(dir)), 0, byte_size(log)) == log
    assert {:ok, pairs(restored)} == restore_fresh(opts(dir))
  end

  test "a snapshot is a full file: it restores without the log", %{tmp_dir: dir} do
    table = new_table(realistic_pairs(300, 8))
    :ok = Persist.persist_to_disk(table, opts(dir))
    insert_pairs(table, [{["in", "log"], true}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    assert File.regular?(log_path(dir))
    {:ok, id} = Persist.save_snapshot(table, opts(dir))
    expected = pairs(table)
    insert_pairs(table, [{["after"], 1}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    :ok = Persist.restore_snapshot(opts(dir), id)
    assert {:ok, expected} == restore_fresh(opts(dir))
    # And the next small change is logged against the snapshot's contents.
    restored = :ets.new(:restored, [:set, :public])
    :ok = Persist.restore_from_disk(restored, opts(dir))
    insert_pairs(restored, [{["again"], 2}])
    :ok = Persist.persist_to_disk(restored, opts(dir))
    assert {:ok, pairs(restored)} == restore_fresh(opts(dir))
  end

  test "a log cut inside its last record restores the records before it", %{tmp_dir: dir} do
    table = new_table(realistic_pairs(300, 9))
    :ok = Persist.persist_to_disk(table, opts(dir))
    insert_pairs(table, [{["first"], 1}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    first = pairs(table)
    first_len = size(log_path(dir))
    insert_pairs(table, [{["second"], 2}])
    :ok = Persist.persist_to_disk(table, opts(dir))

    {:ok, file} = :file.open(log_path(dir), [:read, :write, :raw])
    {:ok, _} = :file.position(file, first_len + 10)
    :ok = :file.truncate(file)
    :ok = :file.close(file)

    log =
      capture_log(fn ->
        assert {:ok, first} == restore_fresh(opts(dir))
      end)

    # The warning names the record the log stops at: the second, cut short.
    assert log =~ "data.ptable.log from byte #{first_len} (truncated)"
    assert log =~ "were not applied"

    # The next persist (from this VM, whose baseline the truncation made stale, and from a
    # restored one) writes a log that restores completely.
    restored = :ets.new(:restored, [:set, :public])
    capture_log(fn -> :ok = Persist.restore_from_disk(restored, opts(dir)) end)
    insert_pairs(restored, [{["third"], 3}])
    :ok = Persist.persist_to_disk(restored, opts(dir))
    assert {:ok, pairs(restored)} == restore_fresh(opts(dir))
  end

  test "a corrupt stable file falls back to the backup and its log", %{tmp_dir: dir} do
    table = new_table(realistic_pairs(300, 10))
    :ok = Persist.persist_to_disk(table, opts(dir))
    insert_pairs(table, [{["logged"], 1}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    at_compaction = pairs(table)
    # A compaction: the stable file and its log become the backup and the backup log.
    insert_pairs(table, [{["compacted"], 2}])
    :ok = Persist.persist_to_disk(table, opts(dir, log_compaction: 0))
    assert File.regular?(backup_log_path(dir))

    stable = File.read!(stable_path(dir))
    File.write!(stable_path(dir), binary_part(stable, 0, byte_size(stable) - 3))

    capture_log(fn ->
      assert {:ok, at_compaction} == restore_fresh(opts(dir))
    end)
  end

  describe "a persist never appends to files it cannot trust" do
    setup %{tmp_dir: dir} do
      table = new_table(realistic_pairs(400, 11))
      :ok = Persist.persist_to_disk(table, opts(dir, chunk_size: 50))
      insert_pairs(table, [{["one"], 1}])
      :ok = Persist.persist_to_disk(table, opts(dir, chunk_size: 50))
      insert_pairs(table, [{["two"], 2}])
      :ok = Persist.persist_to_disk(table, opts(dir, chunk_size: 50))
      %{table: table, o: opts(dir, chunk_size: 50)}
    end

    # Bit rot: one byte changes, the length and modification time stay.
    defp flip_byte(path, at) do
      {mtime, 0} = System.cmd("stat", ["-c", "%.9Y", path])
      bin = File.read!(path)
      <<head::binary-size(at), byte, rest::binary>> = bin
      File.write!(path, <<head::binary, Bitwise.bxor(byte, 0x10), rest::binary>>)
      {_, 0} = System.cmd("touch", ["-d", "@" <> String.trim(mtime), path])
    end

    defp persist_change_and_restore(table, o, dir) do
      insert_pairs(table, [{["three"], 3}])

      capture_log(fn ->
        assert :ok = Persist.persist_to_disk(table, o)
        assert {:ok, pairs(table)} == restore_fresh(o)
      end)

      # What the persist left verifies completely.
      for %{kind: kind, status: status} <- Persist.inspect_files(opts(dir)),
          kind in [:stable] do
        assert status == :ok
      end
    end

    test "bytes appended to the log by someone else", %{tmp_dir: dir, table: table, o: o} do
      File.write!(log_path(dir), "garbage", [:append])
      persist_change_and_restore(table, o, dir)
    end

    test "a damaged record in the middle of the log", %{tmp_dir: dir, table: table, o: o} do
      # Inside the first record's payload (the header is 56 bytes, a record's 48).
      flip_byte(log_path(dir), 56 + 48 + 2)
      persist_change_and_restore(table, o, dir)
    end

    test "a damaged chunk of the stable file", %{tmp_dir: dir, table: table, o: o} do
      flip_byte(stable_path(dir), div(File.stat!(stable_path(dir)).size, 2))
      persist_change_and_restore(table, o, dir)
      assert [_] = Path.wildcard(Path.join(table_dir(dir), "data.ptable.corrupt-*"))
    end

    test "a stable file replaced by an older one", %{tmp_dir: dir, table: table, o: o} do
      File.cp!(stable_path(dir), Path.join(dir, "saved"))
      insert_pairs(table, [{["big"], :binary.copy("x", 200_000)}])
      :ok = Persist.persist_to_disk(table, o)
      File.cp!(Path.join(dir, "saved"), stable_path(dir))
      persist_change_and_restore(table, o, dir)
    end
  end
end
