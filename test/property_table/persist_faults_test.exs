defmodule PropertyTable.PersistFaultsTest do
  @moduledoc """
  Faults around the files and the table: a data directory that is a regular file, a table
  deleted by another process in the middle of a persist or a restore, tables that are not
  readable, and other kinds of ETS tables.
  """
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist
  alias PropertyTable.Persist.Error

  @moduletag :tmp_dir

  defp opts(dir, extra \\ []), do: [data_directory: dir, table_name: "t"] ++ extra

  test "a data directory that is a regular file", %{tmp_dir: tmp} do
    file = Path.join(tmp, "regular")
    File.write!(file, "contents")
    o = [data_directory: file, table_name: "t"]
    table = new_table(realistic_pairs(10))
    name = :"ptp_faults_#{System.unique_integer([:positive])}"

    log =
      capture_log(fn ->
        assert :error = Persist.persist_to_disk(table, o)
        assert :error = Persist.save_snapshot(table, o)
        assert {:error, :enotdir} = Persist.restore_from_disk(name, o)
        assert {:error, reason} = Persist.restore_snapshot(o, "0123456789ABCDEF")
        assert reason in [:enotdir, :enoent]
      end)

    assert log =~ "enotdir"
    assert :ets.whereis(name) == :undefined

    assert %Error{reason: :enotdir} =
             assert_raise(Error, fn -> Persist.persist_to_disk!(table, o) end)

    assert %Error{reason: :enotdir} =
             assert_raise(Error, fn -> Persist.save_snapshot!(table, o) end)

    assert %Error{reason: :enotdir} =
             assert_raise(Error, fn -> Persist.restore_from_disk!(name, o) end)

    assert %Error{reason: :enotdir} = assert_raise(Error, fn -> Persist.get_snapshot_list(o) end)
    assert File.read!(file) == "contents"
    assert File.ls!(tmp) == ["regular"]
  end

  # A table owned by another process, which deletes it as soon as a persist (or restore) is
  # traversing it.
  defp table_deleted_mid_way(pairs, trigger) do
    parent = self()

    owner =
      spawn_link(fn ->
        table = new_table(pairs)
        send(parent, {:table, table})
        wait_until(fn -> trigger.(table) end)
        :ets.delete(table)
        send(parent, :deleted)
        receive do: (:stop -> :ok)
      end)

    receive do
      {:table, table} -> {table, owner}
    end
  end

  defp wait_until(fun) do
    unless fun.(), do: wait_until(fun)
  end

  defp being_traversed?(table), do: :ets.info(table, :safe_fixed) not in [false, :undefined]

  test "a read-only data directory: writes fail clearly, reads still work, no byte changes",
       %{tmp_dir: tmp} do
    rw = Path.join(tmp, "rw")
    old = realistic_pairs(300, 1)
    new = realistic_pairs(300, 2)
    table = new_table(old)
    :ok = Persist.persist_to_disk(table, opts(rw))
    {:ok, id} = Persist.save_snapshot(table, opts(rw))
    :ets.delete_all_objects(table)
    insert_pairs(table, new)
    :ok = Persist.persist_to_disk(table, opts(rw))
    # A rotten stable file: restore must fall back to the backup without moving it aside.
    stable = File.read!(stable_path(rw))
    File.write!(stable_path(rw), flip_bit(stable, div(byte_size(stable), 2), 3))

    case read_only_view(rw, Path.join(tmp, "ro")) do
      {:ok, dir, how} ->
        IO.puts("\n[faults] read-only data directory made with #{how}")
        check_read_only_dir(dir, table, id, old)

      {:error, why} ->
        # Root without CAP_SYS_ADMIN can make no read-only directory of its own; /proc/self
        # is one for everybody (its files are not table files, so only writes are checked).
        IO.puts("\n[faults] read-only data directory: #{why}; checking /proc/self instead")
        o = [data_directory: "/proc", table_name: "self"]
        capture_log(fn -> assert :error = Persist.persist_to_disk(table, o) end)
        capture_log(fn -> assert :error = Persist.save_snapshot(table, o) end)
    end
  end

  defp check_read_only_dir(dir, table, id, old) do
    before = tree(dir)
    o = opts(dir)

    log = capture_log(fn -> assert :error = Persist.persist_to_disk(table, o) end)
    assert log =~ "read-only" or log =~ "permission denied"
    e = assert_raise Error, fn -> Persist.persist_to_disk!(table, o) end
    assert e.reason in [:erofs, :eacces]
    capture_log(fn -> assert :error = Persist.save_snapshot(table, o) end)
    assert {:error, reason} = Persist.restore_snapshot(o, id)
    assert reason in [:erofs, :eacces]

    capture_log(fn -> assert {:ok, sort(old)} == restore_fresh(o) end)
    assert [{^id, _}] = Persist.get_snapshot_list(o)
    assert [_ | _] = Persist.inspect_files(o)
    assert tree(dir) == before
  end

  # A read-only copy of `dir`: a read-only bind mount when this runs as root (permission
  # bits do not stop root), else the permission bits.
  defp read_only_view(dir, mount_point) do
    File.mkdir_p!(mount_point)

    with {_, 0} <- System.cmd("mount", ["--bind", dir, mount_point], stderr_to_stdout: true),
         {_, 0} <-
           System.cmd("mount", ["-o", "remount,ro,bind", mount_point], stderr_to_stdout: true) do
      on_exit(fn -> System.cmd("umount", [mount_point]) end)
      {:ok, mount_point, "a read-only bind mount"}
    else
      {output, _} ->
        if own_uid() == 0 do
          {:error, "mount failed (#{String.trim(output)})"}
        else
          for path <- Path.wildcard(Path.join(dir, "**"), match_dot: true) ++ [dir],
              do: File.chmod!(path, if(File.dir?(path), do: 0o555, else: 0o444))

          on_exit(fn -> System.cmd("chmod", ["-R", "u+w", dir]) end)
          {:ok, dir, "permission bits"}
        end
    end
  end

  defp own_uid do
    {uid, 0} = System.cmd("id", ["-u"])
    uid |> String.trim() |> String.to_integer()
  end

  test "a table deleted by another process in the middle of persist_to_disk", %{tmp_dir: dir} do
    previous = realistic_pairs(100, 1)
    :ok = Persist.persist_to_disk(new_table(previous), opts(dir))
    :ok = Persist.persist_to_disk(new_table(realistic_pairs(100, 2)), opts(dir))
    before = tree(dir)

    for {call, expect} <- [
          {&Persist.persist_to_disk/2, :error},
          {&Persist.save_snapshot/2, :error}
        ] do
      {table, owner} = table_deleted_mid_way(realistic_pairs(30_000, 3), &being_traversed?/1)

      log = capture_log(fn -> assert call.(table, opts(dir, chunk_size: 1)) == expect end)
      assert_receive :deleted, 5_000
      send(owner, :stop)
      assert log =~ Error.describe(:no_table)
      # The files are as they were: no tmp file, no snapshot, the same stable and backup.
      assert tree(dir) == before
    end

    {table, owner} = table_deleted_mid_way(realistic_pairs(30_000, 3), &being_traversed?/1)

    assert %Error{reason: :no_table} =
             assert_raise(Error, fn ->
               Persist.persist_to_disk!(table, opts(dir, chunk_size: 1))
             end)

    send(owner, :stop)
    assert tree(dir) == before
    assert {:ok, sort(realistic_pairs(100, 2))} == restore_fresh(opts(dir))
  end

  test "a table deleted by another process in the middle of restore_from_disk",
       %{tmp_dir: dir} do
    data = realistic_pairs(50_000)
    :ok = Persist.persist_to_disk(new_table(data), opts(dir, chunk_size: 1))
    {table, owner} = table_deleted_mid_way([], &(:ets.info(&1, :size) not in [0, :undefined]))

    log =
      capture_log(fn ->
        assert {:error, :no_table} = Persist.restore_from_disk(table, opts(dir))
      end)

    send(owner, :stop)
    assert log =~ Error.describe(:no_table)
    # The files are fine.
    assert {:ok, sort(data)} == restore_fresh(opts(dir))
  end

  test "a private table of another process cannot be persisted", %{tmp_dir: dir} do
    parent = self()

    owner =
      spawn_link(fn ->
        table = :ets.new(:private, [:set, :private])
        :ets.insert(table, {["a"], 1, 0})
        send(parent, {:table, table})
        receive do: (:stop -> :ok)
      end)

    table = receive do: ({:table, t} -> t)

    capture_log(fn ->
      result = Persist.persist_to_disk(table, opts(dir))
      assert result == :error
    end)

    send(owner, :stop)
    refute File.exists?(stable_path(dir))
  end

  test "a protected table of another process can be persisted", %{tmp_dir: dir} do
    parent = self()

    spawn_link(fn ->
      table = :ets.new(:protected, [:set, :protected])
      :ets.insert(table, {["a"], 1, 0})
      send(parent, {:table, table})
      receive do: (:stop -> :ok)
    end)

    table = receive do: ({:table, t} -> t)
    assert :ok = Persist.persist_to_disk(table, opts(dir))
    assert {:ok, [{["a"], 1}]} == restore_fresh(opts(dir))

    # ... but not restored into: this process may not write it.
    capture_log(fn ->
      assert {:error, :no_table} = Persist.restore_from_disk(table, opts(dir))
    end)

    assert :ets.tab2list(table) == [{["a"], 1, 0}]
  end

  test "ordered_set, bag and duplicate_bag tables", %{tmp_dir: dir} do
    for type <- [:ordered_set, :bag, :duplicate_bag] do
      table = :ets.new(type, [type, :public])
      :ets.insert(table, [{["a"], 1, 0}, {["b"], 2, 0}, {["c"], 3, 0}])
      assert :ok = Persist.persist_to_disk(table, opts(dir, table_name: "#{type}"))
      target = :ets.new(:target, [type, :public])
      assert :ok = Persist.restore_from_disk(target, opts(dir, table_name: "#{type}"))
      assert pairs(target) == [{["a"], 1}, {["b"], 2}, {["c"], 3}]
    end
  end

  test "rows that are not 3-tuples anywhere in a large table", %{tmp_dir: dir} do
    data = realistic_pairs(5_000)
    :ok = Persist.persist_to_disk(new_table(data), opts(dir))
    before = tree(dir)

    for position <- [1, 2_500, 5_000] do
      table = new_table(data)
      {property, _} = Enum.at(data, position - 1)
      :ets.insert(table, {property, :two})

      for chunk_size <- [1, 999, 1000, 10_000] do
        capture_log(fn ->
          assert :error = Persist.persist_to_disk(table, opts(dir, chunk_size: chunk_size))
        end)

        assert tree(dir) == before
      end
    end
  end
end
