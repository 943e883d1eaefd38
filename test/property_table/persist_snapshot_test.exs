defmodule PropertyTable.PersistSnapshotTest do
  @moduledoc "save_snapshot/2, get_snapshot_list/1 and restore_snapshot/2."
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist
  alias PropertyTable.Persist.Error

  @moduletag :tmp_dir

  defp opts(dir, extra \\ []), do: [data_directory: dir, table_name: "t"] ++ extra
  defp ids(dir), do: for({id, _} <- Persist.get_snapshot_list(opts(dir)), do: id)

  test "several snapshots within one second are listed in creation order", %{tmp_dir: dir} do
    table = new_table([{["n"], 0}])

    made =
      for i <- 1..8 do
        insert_pairs(table, [{["n"], i}])
        Persist.save_snapshot!(table, opts(dir))
      end

    list = Persist.get_snapshot_list(opts(dir))
    assert for({id, _} <- list, do: id) == made
    # Ids are random, so creation order is not their sort order in general; the list must not
    # depend on it. (Asserted above; the ids are also distinct.)
    assert length(Enum.uniq(made)) == 8
    assert Enum.all?(made, &(&1 =~ ~r/\A[0-9A-F]{16}\z/))
  end

  test "creation dates are {{y, m, d}, {h, mi, s}} in UTC, close to now", %{tmp_dir: dir} do
    table = new_table([{["a"], 1}])
    before = :calendar.universal_time() |> :calendar.datetime_to_gregorian_seconds()
    id = Persist.save_snapshot!(table, opts(dir))
    later = :calendar.universal_time() |> :calendar.datetime_to_gregorian_seconds()

    assert [{^id, {{y, m, d}, {h, mi, s}} = dt}] = Persist.get_snapshot_list(opts(dir))
    assert Enum.all?([y, m, d, h, mi, s], &is_integer/1)
    assert :calendar.valid_date(y, m, d)
    assert h in 0..23 and mi in 0..59 and s in 0..59
    secs = :calendar.datetime_to_gregorian_seconds(dt)
    assert secs >= before - 1 and secs <= later + 1
  end

  test "retention: max_snapshots: 2 after 5 snapshots keeps the last 2", %{tmp_dir: dir} do
    table = new_table([{["n"], 0}])

    made =
      for i <- 1..5 do
        insert_pairs(table, [{["n"], i}])
        {:ok, id} = Persist.save_snapshot(table, opts(dir, max_snapshots: 2))
        assert length(ids(dir)) <= 2
        id
      end

    assert ids(dir) == Enum.take(made, -2)
    assert Enum.sort(File.ls!(snapshots_path(dir))) == Enum.sort(Enum.take(made, -2))

    # Lowering the limit later deletes the oldest beyond it on the next snapshot.
    last = Persist.save_snapshot!(table, opts(dir, max_snapshots: 1))
    assert ids(dir) == [last]
  end

  test "the default max_snapshots is 25", %{tmp_dir: dir} do
    table = new_table([{["a"], 1}])
    made = for _ <- 1..27, do: Persist.save_snapshot!(table, opts(dir))
    assert ids(dir) == Enum.take(made, -25)
  end

  test "get_snapshot_list ignores junk and .tmp names", %{tmp_dir: dir} do
    table = new_table([{["a"], 1}])
    id = Persist.save_snapshot!(table, opts(dir))
    snaps = snapshots_path(dir)

    for junk <- [
          "junk",
          "0123456789ABCDEF.tmp",
          "#{id}.tmp",
          "0123456789abcdef",
          "0123456789ABCDE",
          "0123456789ABCDEF0",
          "0123456789ABCDEG",
          ".0123456789ABCDE",
          "README"
        ] do
      File.write!(Path.join(snaps, junk), "x")
    end

    # A directory with a snapshot's name is not a snapshot either.
    File.mkdir_p!(Path.join(snaps, "FEDCBA9876543210"))

    assert ids(dir) == [id]
    # restore_snapshot refuses all of those names without looking at them.
    assert {:error, :invalid_snapshot_id} = Persist.restore_snapshot(opts(dir), "junk")
    capture_log(fn -> Persist.restore_snapshot(opts(dir), "FEDCBA9876543210") end)
  end

  test "get_snapshot_list returns [] without a snapshots directory", %{tmp_dir: dir} do
    assert Persist.get_snapshot_list(opts(dir)) == []
    :ok = Persist.persist_to_disk(new_table([{["a"], 1}]), opts(dir))
    assert Persist.get_snapshot_list(opts(dir)) == []

    assert Persist.get_snapshot_list(data_directory: Path.join(dir, "nope"), table_name: "x") ==
             []
  end

  test "get_snapshot_list raises Error when the data directory is a regular file",
       %{tmp_dir: dir} do
    file = Path.join(dir, "regular")
    File.write!(file, "x")

    error =
      assert_raise Error, fn ->
        Persist.get_snapshot_list(data_directory: file, table_name: "t")
      end

    assert error.reason == :enotdir
    assert is_binary(error.path)

    # ... and when the snapshots directory itself is a file.
    File.mkdir_p!(table_dir(dir))
    File.write!(snapshots_path(dir), "x")

    assert %Error{reason: :enotdir} =
             assert_raise(Error, fn -> Persist.get_snapshot_list(opts(dir)) end)
  end

  test "restore_snapshot brings back old values after restore_from_disk", %{tmp_dir: dir} do
    old = realistic_pairs(200, 1)
    new = realistic_pairs(150, 2)
    table = new_table(old)
    id = Persist.save_snapshot!(table, opts(dir))
    :ets.delete_all_objects(table)
    insert_pairs(table, new)
    :ok = Persist.persist_to_disk(table, opts(dir))
    assert {:ok, sort(new)} == restore_fresh(opts(dir))

    assert :ok = Persist.restore_snapshot(opts(dir), id)
    # Only the files changed: the table still holds the new values until restore_from_disk.
    assert pairs(table) == sort(new)
    assert :ok = Persist.restore_from_disk(table, opts(dir))
    assert pairs(table) == sort(old)
    # The stable file before restore_snapshot became the backup; the snapshot is still there.
    File.rm!(stable_path(dir))
    capture_log(fn -> assert {:ok, sort(new)} == restore_fresh(opts(dir)) end)
    assert ids(dir) == [id]
  end

  test "restore_snapshot works in a directory without a stable file", %{tmp_dir: dir} do
    data = realistic_pairs(10)
    id = Persist.save_snapshot!(new_table(data), opts(dir))
    File.rm!(stable_path(dir))
    assert :ok = Persist.restore_snapshot(opts(dir), id)
    assert {:ok, sort(data)} == restore_fresh(opts(dir))
  end

  test "invalid ids give {:error, :invalid_snapshot_id} without touching the filesystem",
       %{tmp_dir: tmp} do
    dir = Path.join(tmp, "data")

    for id <- [
          "../../etc/passwd",
          "..",
          "/etc/passwd",
          "0123456789abcdef",
          "0123456789ABCDEf",
          "0123456789ABCDE",
          "0123456789ABCDEF0",
          "0123456789ABCD/F",
          "0123456789ABCDEF\0",
          "0123456789ABCD\0F",
          "",
          <<0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0xFA, 0xF9, 0xF8, 0xF7, 0xF6, 0xF5, 0xF4, 0xF3, 0xF2,
            0xF1, 0xF0>>,
          "ÀBCDEF0123456789",
          nil,
          :"0123456789ABCDEF",
          ~c"0123456789ABCDEF",
          0x0123456789ABCDEF
        ] do
      capture_log(fn ->
        assert {:error, :invalid_snapshot_id} = Persist.restore_snapshot(opts(dir), id)
      end)

      assert %Error{reason: :invalid_snapshot_id, path: nil} =
               assert_raise(Error, fn -> Persist.restore_snapshot!(opts(dir), id) end)
    end

    assert File.ls!(tmp) == []
  end

  test "an unknown id gives {:error, :enoent}", %{tmp_dir: dir} do
    capture_log(fn ->
      assert {:error, :enoent} = Persist.restore_snapshot(opts(dir), "0123456789ABCDEF")
    end)

    table = new_table([{["a"], 1}])
    Persist.save_snapshot!(table, opts(dir))
    before = tree(dir)

    log =
      capture_log(fn ->
        assert {:error, :enoent} = Persist.restore_snapshot(opts(dir), "0123456789ABCDEF")
      end)

    assert log =~ "0123456789ABCDEF"
    assert tree(dir) == before
  end

  test "a corrupt snapshot gives an error and leaves the stable file byte-identical",
       %{tmp_dir: dir} do
    table = new_table(realistic_pairs(100))
    id = Persist.save_snapshot!(table, opts(dir))
    :ok = Persist.persist_to_disk(table, opts(dir))
    path = snapshot_path(dir, id)
    good = File.read!(path)

    for {label, bad} <- [
          bit_flip: flip_bit(good, div(byte_size(good), 2), 3),
          header_flip: flip_bit(good, 20, 0),
          truncated: binary_part(good, 0, byte_size(good) - 10),
          extended: good <> "more",
          empty: "",
          garbage: :crypto.strong_rand_bytes(500)
        ] do
      File.write!(path, bad)
      before = tree(dir)

      log =
        capture_log(fn ->
          assert {:error, reason} = Persist.restore_snapshot(opts(dir), id)
          assert reason in [:bad_checksum, :bad_file], "#{label}: #{inspect(reason)}"
        end)

      assert log =~ "restore_snapshot failed"
      assert tree(dir) == before, "#{label} changed files"

      assert %Error{reason: r} =
               assert_raise(Error, fn -> Persist.restore_snapshot!(opts(dir), id) end)

      assert r in [:bad_checksum, :bad_file]
    end
  end

  test "a legacy snapshot in snapshots/<16 HEX> is listed and restorable", %{tmp_dir: dir} do
    table = new_table([{["current"], 1}])
    v2_id = Persist.save_snapshot!(table, opts(dir))
    legacy_data = realistic_pairs(40, 7)
    legacy_id = "00000000DEADBEEF"
    legacy_bin = write_legacy!(snapshot_path(dir, legacy_id), legacy_data)

    list = Persist.get_snapshot_list(opts(dir))
    assert Enum.sort(for {id, _} <- list, do: id) == Enum.sort([v2_id, legacy_id])
    assert {_, {{_, _, _}, {_, _, _}}} = List.keyfind(list, legacy_id, 0)

    assert :ok = Persist.restore_snapshot(opts(dir), legacy_id)
    assert {:ok, sort(legacy_data)} == restore_fresh(opts(dir))
    assert File.read!(snapshot_path(dir, legacy_id)) == legacy_bin

    # A snapshot of a directory whose stable file is legacy.
    id = Persist.save_snapshot!(new_table(legacy_data), opts(dir))
    assert :ok = Persist.restore_snapshot(opts(dir), id)
    assert {:ok, sort(legacy_data)} == restore_fresh(opts(dir))
  end

  test "save_snapshot persists the table first and the snapshot holds the same rows",
       %{tmp_dir: dir} do
    data = realistic_pairs(300)
    table = new_table(data)
    {:ok, id} = Persist.save_snapshot(table, opts(dir, chunk_size: 13))
    assert {:ok, sort(data)} == restore_fresh(opts(dir))

    # Read the snapshot on its own, as the stable file of another directory.
    other = Path.join(dir, "copy")
    File.mkdir_p!(table_dir(other))
    File.cp!(snapshot_path(dir, id), stable_path(other))
    assert {:ok, sort(data)} == restore_fresh(opts(other))
  end

  test "snapshots of an empty table", %{tmp_dir: dir} do
    id = Persist.save_snapshot!(new_table([]), opts(dir))
    :ok = Persist.persist_to_disk(new_table([{["x"], 1}]), opts(dir))
    assert :ok = Persist.restore_snapshot!(opts(dir), id)
    target = new_table([{["stale"], 1}])
    assert :ok = Persist.restore_from_disk(target, opts(dir))
    assert :ets.tab2list(target) == []
  end

  test "a snapshots path that is a file makes save_snapshot fail after the persist",
       %{tmp_dir: dir} do
    data = realistic_pairs(10)
    table = new_table(data)
    File.mkdir_p!(table_dir(dir))
    File.write!(snapshots_path(dir), "not a directory")

    log = capture_log(fn -> assert :error = Persist.save_snapshot(table, opts(dir)) end)
    assert log =~ "enotdir"

    assert %Error{reason: :enotdir} =
             assert_raise(Error, fn -> Persist.save_snapshot!(table, opts(dir)) end)

    # The persist half is done and consistent.
    assert {:ok, sort(data)} == restore_fresh(opts(dir))
    refute File.exists?(tmp_path(dir))
  end
end
