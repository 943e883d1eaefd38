defmodule PropertyTable.OperatorToolsTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO
  import ExUnit.CaptureLog

  alias PropertyTable.Persist
  alias PropertyTable.Persist.TestHelpers

  @moduletag :tmp_dir

  defp table_with(rows) do
    table = :ets.new(:ops, [:set, :public])
    :ets.insert(table, for({p, v} <- rows, do: {p, v, 0}))
    table
  end

  defp opts(dir), do: [data_directory: dir, table_name: "t"]

  defp legacy_file(pairs) do
    payload = :erlang.term_to_binary(pairs, compressed: 6)
    <<"PTABLE", 1, 0, byte_size(payload)::64-big, payload::binary, :erlang.md5(payload)::binary>>
  end

  test "inspect_files describes stable, backup, snapshots and legacy files", %{tmp_dir: dir} do
    table = table_with([{["a"], 1}, {["b"], 2}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    :ets.insert(table, {["c"], 3, 0})
    {:ok, id} = Persist.save_snapshot(table, opts(dir))
    File.write!(Path.join([dir, "t", "snapshots", "00000000000000AA"]), legacy_file([{["x"], 1}]))

    files = Persist.inspect_files(opts(dir))
    assert [stable, backup, legacy, snapshot] = files
    assert %{kind: :stable, format_version: 2, rows: 3, status: :ok, compression: 6} = stable
    assert %{kind: :backup, format_version: 2, rows: 2, status: :ok} = backup
    assert %{kind: :snapshot, format_version: 1, rows: nil, status: :ok, created: nil} = legacy
    assert %{kind: :snapshot, status: :ok, rows: 3} = snapshot
    assert Path.basename(snapshot.path) == id
    assert stable.sequence > backup.sequence
    assert stable.size == File.stat!(stable.path).size
    assert {{_, _, _}, {_, _, _}} = stable.created
  end

  # A table large enough that small changes go to the change log, then two of them.
  defp table_with_log(dir) do
    table = table_with(for i <- 1..200, do: {["sensor", "s#{i}"], i})
    :ok = Persist.persist_to_disk(table, opts(dir))

    for value <- [:changed, :again] do
      :ets.insert(table, {["sensor", "s1"], value, 0})
      :ok = Persist.persist_to_disk(table, opts(dir))
    end

    table
  end

  test "inspect_files lists the change log with its records", %{tmp_dir: dir} do
    table_with_log(dir)

    assert [stable, log] = Persist.inspect_files(opts(dir))

    assert %{kind: :stable, status: :ok, continues: nil, records: nil, base_sequence: nil} =
             stable

    assert %{kind: :log, status: :ok, records: 2, continues: :stable, format_version: nil} = log
    assert log.path == Path.join([dir, "t", "data.ptable.log"])
    assert log.base_sequence == stable.sequence
    assert log.valid_bytes == log.size and log.size == File.stat!(log.path).size
    assert %{stop_reason: nil, stop_offset: nil, rows: nil, sequence: nil} = log
    assert {{_, _, _}, {_, _, _}} = log.created

    assert [_, %{kind: :log, status: :unverified, continues: :stable, records: nil}] =
             Persist.inspect_files(opts(dir), verify: false)

    # A torn append: the records before it are listed, and the file is left as it is.
    torn = File.read!(log.path) <> "torn"
    File.write!(log.path, torn)

    assert [_, %{kind: :log, status: :log_tail, records: 2} = tail] =
             Persist.inspect_files(opts(dir))

    assert %{stop_reason: :truncated, stop_offset: offset, valid_bytes: offset} = tail
    assert offset == log.size
    assert File.read!(log.path) == torn
  end

  test "after a compaction the backup log continues the backup", %{tmp_dir: dir} do
    table = table_with_log(dir)
    # A change of most rows is written as a full file.
    :ets.insert(table, for(i <- 1..200, do: {["sensor", "s#{i}"], -i, 0}))
    :ok = Persist.persist_to_disk(table, opts(dir))

    assert [%{kind: :stable}, backup, backup_log] = Persist.inspect_files(opts(dir))
    assert %{kind: :backup_log, status: :ok, records: 2, continues: :backup} = backup_log
    assert backup_log.base_sequence == backup.sequence
  end

  test "a corrupt stable file is reported, quarantined by restore, and left alone by the next persist",
       %{tmp_dir: dir} do
    table = table_with([{["a"], 1}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    :ets.insert(table, {["a"], 2, 0})
    :ok = Persist.persist_to_disk(table, opts(dir))

    stable = Path.join([dir, "t", "data.ptable"])
    corrupt = File.read!(stable) |> flip_byte(100)
    File.write!(stable, corrupt)

    assert [%{kind: :stable, status: :bad_checksum}, %{kind: :backup, status: :ok}] =
             Persist.inspect_files(opts(dir))

    log =
      capture_log(fn ->
        assert :ok = Persist.restore_from_disk(:ops_quarantine_restored, opts(dir))
      end)

    assert [{["a"], 1, _}] = :ets.tab2list(:ops_quarantine_restored)
    assert log =~ "moved corrupt file aside"

    [quarantined] = Path.wildcard(Path.join([dir, "t", "data.ptable.corrupt-*"]))
    assert File.read!(quarantined) == corrupt
    assert log =~ quarantined
    refute File.exists?(stable)

    :ok = Persist.persist_to_disk(table, opts(dir))
    assert File.read!(quarantined) == corrupt

    assert [
             %{kind: :stable, status: :ok},
             %{kind: :backup},
             %{kind: :quarantined, status: :bad_checksum}
           ] = Persist.inspect_files(opts(dir))
  end

  test "at most max_quarantined corrupt files are kept", %{tmp_dir: dir} do
    table = table_with([{["a"], 1}])
    stable = Path.join([dir, "t", "data.ptable"])

    for _ <- 1..4 do
      :ok = Persist.persist_to_disk(table, opts(dir))
      File.write!(stable, "garbage")

      capture_log(fn ->
        Persist.restore_from_disk(:ops_max_q, opts(dir) ++ [max_quarantined: 2])
      end)
    end

    assert length(Path.wildcard(Path.join([dir, "t", "*.corrupt-*"]))) == 2
  end

  test "a persist that meets a corrupt stable file keeps max_quarantined of them",
       %{tmp_dir: dir} do
    table = table_with([{["a"], 1}])

    assert_quarantine_keeps(dir, fn opts ->
      :ok = Persist.persist_to_disk(table, opts)
      fn -> :ok = Persist.persist_to_disk(table, opts) end
    end)
  end

  test "a snapshot restore that meets a corrupt stable file keeps max_quarantined of them",
       %{tmp_dir: dir} do
    table = table_with([{["a"], 1}])

    assert_quarantine_keeps(dir, fn opts ->
      {:ok, id} = Persist.save_snapshot(table, opts)
      fn -> :ok = Persist.restore_snapshot(opts, id) end
    end)
  end

  # `start.(opts)` prepares a table directory and returns the call that meets its corrupt
  # stable file; after seven such calls, max_quarantined: 7 keeps all seven bad files and
  # the default keeps the newest five.
  defp assert_quarantine_keeps(dir, start) do
    for {name, extra, kept} <- [{"seven", [max_quarantined: 7], 7}, {"default", [], 5}] do
      opts = [data_directory: dir, table_name: name] ++ extra
      stable = Path.join([dir, name, "data.ptable"])
      meet_corrupt_stable = start.(opts)

      for i <- 1..7 do
        File.write!(stable, "garbage #{i}")
        meet_corrupt_stable.()
      end

      contents =
        Path.join([dir, name, "data.ptable.corrupt-*"])
        |> Path.wildcard()
        |> Enum.map(&File.read!/1)

      assert Enum.sort(contents) == for(i <- (8 - kept)..7, do: "garbage #{i}"), name
    end
  end

  test "safe: true refuses files that need unknown atoms and leaves the table untouched", %{
    tmp_dir: dir
  } do
    name = "ptp_never_created_atom_#{System.unique_integer([:positive])}"
    # ETF of [{["k"], :<name>}] written by hand, so the atom never exists in this VM.
    atom_etf = <<118, byte_size(name)::16, name::binary>>
    pair = <<104, 2, 108, 0, 0, 0, 1, 109, 0, 0, 0, 1, "k", 106>> <> atom_etf
    payload = <<131, 108, 0, 0, 0, 1>> <> pair <> <<106>>
    File.mkdir_p!(Path.join(dir, "t"))

    File.write!(
      Path.join([dir, "t", "data.ptable"]),
      <<"PTABLE", 1, 0, byte_size(payload)::64-big, payload::binary,
        :erlang.md5(payload)::binary>>
    )

    target = table_with([{["keep"], :me}])

    capture_log(fn ->
      assert {:error, :unsafe_term} = Persist.restore_from_disk(target, opts(dir) ++ [safe: true])
    end)

    assert [{["keep"], :me, 0}] = :ets.tab2list(target)

    assert :ok = Persist.restore_from_disk(target, opts(dir))
    assert [{["k"], atom, _}] = :ets.tab2list(target)
    assert Atom.to_string(atom) == name
  end

  test "safe: true restores ordinary files", %{tmp_dir: dir} do
    table = table_with([{["a"], :ok}, {["b"], "text"}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    assert :ok = Persist.restore_from_disk(:ops_safe_ok, opts(dir) ++ [safe: true])
    assert :ets.info(:ops_safe_ok, :size) == 2
  end

  test "restoring into a table this process may not write is :no_table, not a crash", %{
    tmp_dir: dir
  } do
    :ok = Persist.persist_to_disk(table_with([{["a"], 1}]), opts(dir))
    parent = self()

    owner =
      spawn(fn ->
        send(parent, {:table, :ets.new(:ops_protected, [:set, :protected])})
        Process.sleep(:infinity)
      end)

    protected =
      receive do
        {:table, t} -> t
      end

    capture_log(fn ->
      assert {:error, :no_table} = Persist.restore_from_disk(protected, opts(dir))
    end)

    assert :ets.info(protected, :size) == 0
    Process.exit(owner, :kill)
  end

  describe "mix property_table.inspect" do
    test "prints the files and dumps rows", %{tmp_dir: dir} do
      table = table_with([{["net", "eth0"], :up}, {["z"], 26}])
      :ok = Persist.persist_to_disk(table, opts(dir))

      out = capture_io(fn -> Mix.Tasks.PropertyTable.Inspect.run([dir, "t", "--dump", "1"]) end)
      assert out =~ "stable"
      assert out =~ "data.ptable"
      assert out =~ ~s({["net", "eth0"], :up})
      refute out =~ ~s({["z"], 26})
    end

    test "--dump leaves the inspected directory as it was", %{tmp_dir: dir} do
      :ok = Persist.persist_to_disk(table_with([{["old"], 1}]), opts(dir))
      :ok = Persist.persist_to_disk(table_with([{["new"], 2}]), opts(dir))
      stable = Path.join([dir, "t", "data.ptable"])
      File.write!(stable, flip_byte(File.read!(stable), 40))
      before = TestHelpers.tree(dir)

      capture_log(fn ->
        out = capture_io(fn -> Mix.Tasks.PropertyTable.Inspect.run([dir, "t", "--dump", "5"]) end)
        assert out =~ ~s({["old"], 1})
      end)

      assert TestHelpers.tree(dir) == before
    end

    test "prints one line per change log", %{tmp_dir: dir} do
      table_with_log(dir)
      log = Path.join([dir, "t", "data.ptable.log"])
      %{size: size} = File.stat!(log)

      out = capture_io(fn -> Mix.Tasks.PropertyTable.Inspect.run([dir, "t"]) end)
      assert out =~ "Change logs:"
      assert [line] = out |> String.split("\n") |> Enum.filter(&(&1 =~ "data.ptable.log"))
      assert line =~ ~r/^log\s+ok\s+data.ptable.log\s+continues stable \(sequence \d+\)/
      assert line =~ "2 records, #{size} of #{size} bytes verified"

      File.write!(log, "torn", [:append])
      out = capture_io(fn -> Mix.Tasks.PropertyTable.Inspect.run([dir, "t"]) end)
      assert out =~ ~r/^log\s+log_tail\s+data.ptable.log\s+continues stable/m
      assert out =~ "the record at byte #{size} fails: truncated"
    end

    test "exits non-zero when a table has no valid file", %{tmp_dir: dir} do
      File.mkdir_p!(Path.join(dir, "t"))
      File.write!(Path.join([dir, "t", "data.ptable"]), "not a table file")

      capture_io(fn ->
        capture_io(:stderr, fn ->
          assert catch_exit(Mix.Tasks.PropertyTable.Inspect.run([dir])) == {:shutdown, 1}
        end)
      end)
    end
  end

  defp flip_byte(bin, offset) do
    <<head::binary-size(offset), byte, rest::binary>> = bin
    <<head::binary, Bitwise.bxor(byte, 0xFF), rest::binary>>
  end
end
