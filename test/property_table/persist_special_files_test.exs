defmodule PropertyTable.PersistSpecialFilesTest do
  @moduledoc """
  FIFOs and symlinks in place of the table's files, through the public API: no call may
  block on them (each call runs under a watchdog, so a regression fails instead of hanging
  the suite), they are bad files with the reason `:not_a_regular_file`, and nothing is ever
  written through a symlink.
  """
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist

  @moduletag :tmp_dir

  # Generous: every call here takes milliseconds; one that blocks in open(2) never returns.
  @watchdog_ms 10_000

  defp opts(dir, extra \\ []), do: [data_directory: dir, table_name: "t"] ++ extra

  # Runs `fun` in a task; fails the test when it has not returned within @watchdog_ms.
  defp within_watchdog(fun) do
    task = Task.async(fun)

    case Task.yield(task, @watchdog_ms) || Task.shutdown(task, :brutal_kill) do
      {:ok, result} -> result
      _ -> flunk("still running after #{@watchdog_ms} ms: blocked on a special file")
    end
  end

  defp mkfifo!(path) do
    File.rm_rf!(path)
    {_, 0} = System.cmd("mkfifo", [path])
    path
  end

  defp table_with(n), do: new_table(realistic_pairs(50, n))

  # Stable file: table 2, backup: table 1. Returns the pairs of both.
  defp two_versions(dir) do
    first = table_with(1)
    second = table_with(2)
    :ok = Persist.persist_to_disk(first, opts(dir))
    :ok = Persist.persist_to_disk(second, opts(dir))
    {pairs(first), pairs(second)}
  end

  test "restore_from_disk with a FIFO as the stable file restores the backup", %{tmp_dir: dir} do
    {backup_pairs, _} = two_versions(dir)
    mkfifo!(stable_path(dir))

    log =
      capture_log(fn ->
        assert {:ok, ^backup_pairs} = within_watchdog(fn -> restore_fresh(opts(dir)) end)
      end)

    assert log =~ "not a regular file"
    # Moved aside like a corrupt file.
    refute File.exists?(stable_path(dir))
    assert [quarantined] = Path.wildcard(stable_path(dir) <> ".corrupt-*")
    assert {:ok, %File.Stat{type: :other}} = File.lstat(quarantined)
  end

  test "restore_from_disk with only a FIFO fails clearly", %{tmp_dir: dir} do
    File.mkdir_p!(table_dir(dir))
    mkfifo!(stable_path(dir))

    capture_log(fn ->
      assert {{:error, :not_a_regular_file}, nil} =
               within_watchdog(fn -> restore_fresh(opts(dir)) end)
    end)
  end

  test "persist with a FIFO as the tmp file or the backup succeeds", %{tmp_dir: dir} do
    for path <- [tmp_path(dir), backup_path(dir)] do
      two_versions(dir)
      mkfifo!(path)
      table = table_with(3)
      assert :ok = within_watchdog(fn -> Persist.persist_to_disk(table, opts(dir)) end)
      assert {:ok, pairs(table)} == restore_fresh(opts(dir))
      assert {:ok, %File.Stat{type: :regular}} = File.lstat(backup_path(dir))
      refute File.exists?(tmp_path(dir))
    end
  end

  test "a FIFO as the lock file fails writers clearly, readers still work", %{tmp_dir: dir} do
    {_, stable_pairs} = two_versions(dir)
    lock = mkfifo!(Path.join(table_dir(dir), "data.ptable.lock"))

    log =
      capture_log(fn ->
        assert :error =
                 within_watchdog(fn -> Persist.persist_to_disk(table_with(3), opts(dir)) end)
      end)

    assert log =~ "not a regular file"
    assert log =~ lock
    assert {:ok, ^stable_pairs} = within_watchdog(fn -> restore_fresh(opts(dir)) end)
  end

  test "get_snapshot_list and save_snapshot skip a FIFO named like a snapshot", %{tmp_dir: dir} do
    table = table_with(1)
    {:ok, id} = Persist.save_snapshot(table, opts(dir))
    fifo_id = "0123456789ABCDEF"
    mkfifo!(snapshot_path(dir, fifo_id))

    assert [{^id, _}] = within_watchdog(fn -> Persist.get_snapshot_list(opts(dir)) end)

    assert {:ok, new_id} =
             within_watchdog(fn -> Persist.save_snapshot(table, opts(dir, max_snapshots: 1)) end)

    assert [{^new_id, _}] = Persist.get_snapshot_list(opts(dir))
    # Retention deletes only snapshots; the FIFO is not one.
    assert {:ok, %File.Stat{type: :other}} = File.lstat(snapshot_path(dir, fifo_id))

    capture_log(fn ->
      assert {:error, :not_a_regular_file} =
               within_watchdog(fn -> Persist.restore_snapshot(opts(dir), fifo_id) end)
    end)
  end

  test "inspect_files reports a FIFO without opening it", %{tmp_dir: dir} do
    two_versions(dir)
    mkfifo!(stable_path(dir))
    files = within_watchdog(fn -> Persist.inspect_files(opts(dir)) end)
    assert %{status: :not_a_regular_file} = Enum.find(files, &(&1.kind == :stable))
    assert %{status: :ok} = Enum.find(files, &(&1.kind == :backup))
  end

  test "a symlink named data.ptable.tmp: persist and restore_snapshot leave its target alone",
       %{tmp_dir: dir} do
    outside = Path.join(dir, "outside")
    File.write!(outside, "not the library's")
    table = table_with(1)
    {:ok, id} = Persist.save_snapshot(table, opts(dir))

    File.ln_s!(outside, tmp_path(dir))
    newer = table_with(2)
    assert :ok = within_watchdog(fn -> Persist.persist_to_disk(newer, opts(dir)) end)
    assert File.read!(outside) == "not the library's"
    assert {:ok, pairs(newer)} == restore_fresh(opts(dir))

    File.ln_s!(outside, tmp_path(dir))
    assert :ok = within_watchdog(fn -> Persist.restore_snapshot(opts(dir), id) end)
    assert File.read!(outside) == "not the library's"
    assert {:ok, pairs(table)} == restore_fresh(opts(dir))
    assert {:ok, %File.Stat{type: :regular}} = File.lstat(stable_path(dir))
  end
end
