defmodule PropertyTable.PersistOptionsTest do
  @moduledoc """
  Every option of every function: bad values raise ArgumentError naming the option and touch
  nothing on disk; good values work; unknown keys are ignored.
  """
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist

  @moduletag :tmp_dir

  # Every public function, called on a table reference (or none) with the given options.
  defp calls(table) do
    [
      persist_to_disk: &Persist.persist_to_disk(table, &1),
      persist_to_disk!: &Persist.persist_to_disk!(table, &1),
      restore_from_disk: &Persist.restore_from_disk(table, &1),
      restore_from_disk!: &Persist.restore_from_disk!(table, &1),
      save_snapshot: &Persist.save_snapshot(table, &1),
      save_snapshot!: &Persist.save_snapshot!(table, &1),
      get_snapshot_list: &Persist.get_snapshot_list(&1),
      restore_snapshot: &Persist.restore_snapshot(&1, "0123456789ABCDEF"),
      restore_snapshot!: &Persist.restore_snapshot!(&1, "0123456789ABCDEF")
    ]
  end

  @bad_values [
    data_directory: ["", 123, nil, :atom, ~c"charlist", "a\0b", {"a"}],
    table_name: [
      "",
      ".",
      "..",
      "a/b",
      "/abs",
      "../up",
      "a\\b",
      "a\0b",
      <<0xFF, 0xFE>>,
      123,
      1.5,
      ["x"],
      {:a},
      :..,
      :"a/b",
      :.
    ],
    max_snapshots: [0, -1, -(2 ** 64), 1.5, "3", nil, :infinity],
    compression: [-1, 10, 100, 2 ** 32, 2 ** 64, 5.0, "6", nil, :best],
    chunk_size: [0, -5, -(2 ** 64), 2 ** 32, 2 ** 32 + 1, 2 ** 64, 1.0, "10", nil],
    lock_timeout: [-1, -(2 ** 64), 1.5, "1000", nil, :forever],
    safe: ["true", 1, nil, :yes],
    max_quarantined: [0, -1, -(2 ** 64), 1.5, nil],
    quarantine: ["false", 0, nil, :no],
    log_compaction: [-1, -0.01, 100.5, 101, 2 ** 64, "0.5", nil, :off, true]
  ]

  # What each integer option's message says about the values it takes.
  @allowed %{
    max_snapshots: "must be a positive integer",
    compression: "must be an integer from 0 to 9",
    chunk_size: "must be an integer from 1 to 4294967295",
    lock_timeout: "must be a non-negative integer (milliseconds) or :infinity",
    max_quarantined: "must be a positive integer",
    log_compaction: "must be a number from 0 to 100"
  }

  for {key, values} <- @bad_values do
    test "a bad #{inspect(key)} raises ArgumentError naming it, for every function, touching nothing",
         %{tmp_dir: tmp} do
      data_dir = Path.join(tmp, "data")
      table = new_table([{["a"], 1}])
      key = unquote(key)

      for value <- unquote(Macro.escape(values)), {fun, call} <- calls(table) do
        opts = Keyword.put([data_directory: data_dir, table_name: "t"], key, value)

        error =
          assert_raise ArgumentError,
                       fn -> call.(opts) end

        assert error.message =~ inspect(key),
               "#{fun} with #{inspect(key)}: #{inspect(value)} raised #{inspect(error.message)}"

        if allowed = @allowed[key], do: assert(error.message =~ allowed)
      end

      assert File.ls!(tmp) == [], "a call with a bad option touched the disk"
    end
  end

  test "a bad option on an atom table creates no table", %{tmp_dir: tmp} do
    name = :"ptp_opts_#{System.unique_integer([:positive])}"

    assert_raise ArgumentError, fn ->
      Persist.restore_from_disk(name, data_directory: tmp, compression: 11)
    end

    assert_raise ArgumentError, fn -> Persist.restore_from_disk!(name, table_name: "..") end
    assert :ets.whereis(name) == :undefined
    assert File.ls!(tmp) == []
  end

  test "good values of every option are accepted", %{tmp_dir: tmp} do
    data = realistic_pairs(50)
    table = new_table(data)

    for name <- ["a..b", "...", ".hidden", "with space", "täble", "UPPER_lower-1", :atom_name],
        opts = [
          data_directory: tmp,
          table_name: name,
          max_snapshots: 1,
          compression: 0,
          chunk_size: 1,
          lock_timeout: 0,
          safe: true,
          max_quarantined: 1,
          quarantine: false,
          log_compaction: 100
        ] do
      assert :ok = Persist.persist_to_disk(table, opts)
      assert File.regular?(Path.join([tmp, to_string(name), "data.ptable"]))
      assert {:ok, _} = Persist.save_snapshot(table, opts)
      assert {:ok, sort(data)} == restore_fresh(opts)
      assert [{id, _}] = Persist.get_snapshot_list(opts)
      assert :ok = Persist.restore_snapshot(opts, id)
    end

    opts = [data_directory: tmp, table_name: "inf", lock_timeout: :infinity, safe: false]

    for level <- 0..9 do
      assert :ok = Persist.persist_to_disk(table, [compression: level] ++ opts)
    end

    for ratio <- [0, 0.0, 0.25, 1, 99.9] do
      insert_pairs(table, [{["ratio"], ratio}])
      assert :ok = Persist.persist_to_disk(table, [log_compaction: ratio] ++ opts)
      assert {:ok, pairs(table)} == restore_fresh(opts)
    end

    data = pairs(table)

    assert {:ok, sort(data)} == restore_fresh(opts)
  end

  test "the largest chunk_size works, and one more is refused", %{tmp_dir: tmp} do
    data = realistic_pairs(50)
    table = new_table(data)
    opts = [data_directory: tmp, table_name: "t", chunk_size: 2 ** 32 - 1]

    assert :ok = Persist.persist_to_disk(table, opts)
    assert {:ok, _} = Persist.save_snapshot(table, opts)
    assert {:ok, sort(data)} == restore_fresh(opts)

    error =
      assert_raise ArgumentError, fn ->
        Persist.persist_to_disk(table, Keyword.put(opts, :chunk_size, 2 ** 32))
      end

    assert error.message ==
             "invalid value for option :chunk_size: 4294967296 (must be an integer from 1 to 4294967295)"
  end

  test "retention counts and lock_timeout beyond 64 bits mean no limit", %{tmp_dir: tmp} do
    table = new_table([{["a"], 1}])

    for {huge, n} <- Enum.with_index([2 ** 64 - 1, 2 ** 64, 2 ** 200]) do
      opts = [data_directory: tmp, table_name: "t#{n}", lock_timeout: huge]

      for _ <- 1..3 do
        assert {:ok, _} = Persist.save_snapshot(table, [max_snapshots: huge] ++ opts)
      end

      assert length(Persist.get_snapshot_list(opts)) == 3

      # Each round corrupts a new stable file for the restore to quarantine (restoring the
      # backup).
      for value <- [10, 11] do
        :ets.insert(table, {["a"], value, 0})
        assert :ok = Persist.persist_to_disk(table, opts)
        File.write!(stable_path(tmp, "t#{n}"), "garbage")

        capture_log(fn ->
          assert {:ok, [{["a"], _}]} = restore_fresh([max_quarantined: huge] ++ opts)
        end)
      end

      assert [_, _] = Path.wildcard(Path.join(table_dir(tmp, "t#{n}"), "*.corrupt-*"))
    end
  end

  test "quarantine: false restores past a corrupt file and changes nothing on disk",
       %{tmp_dir: tmp} do
    opts = [data_directory: tmp, table_name: "t"]
    :ok = Persist.persist_to_disk(new_table([{["a"], 1}]), opts)
    :ok = Persist.persist_to_disk(new_table([{["a"], 2}]), opts)
    File.write!(stable_path(tmp, "t"), "garbage")
    before = {Path.wildcard(Path.join(tmp, "**"), match_dot: true), tree(tmp)}

    log =
      capture_log(fn ->
        assert {:ok, [{["a"], 1}]} = restore_fresh([quarantine: false] ++ opts)
      end)

    assert log =~ "skipping #{stable_path(tmp, "t")}"
    refute log =~ "moved corrupt file aside"
    assert before == {Path.wildcard(Path.join(tmp, "**"), match_dot: true), tree(tmp)}

    # By default the same restore moves the corrupt file aside.
    capture_log(fn -> assert {:ok, [{["a"], 1}]} = restore_fresh(opts) end)
    assert [_] = Path.wildcard(Path.join(table_dir(tmp, "t"), "*.corrupt-*"))
    refute File.exists?(stable_path(tmp, "t"))
  end

  test "a refused call leaves an existing table directory exactly as it was",
       %{tmp_dir: tmp} do
    table = new_table([{["a"], 1}])
    opts = [data_directory: tmp, table_name: "t"]
    assert {:ok, _} = Persist.save_snapshot(table, opts)
    :ets.insert(table, {["b"], 2, 0})
    assert :ok = Persist.persist_to_disk(table, opts)
    before = {Path.wildcard(Path.join(tmp, "**"), match_dot: true), tree(tmp)}

    for {key, values} <- @bad_values,
        key not in [:data_directory, :table_name],
        value <- values,
        {_fun, call} <- calls(table) do
      assert_raise ArgumentError, fn -> call.(Keyword.put(opts, key, value)) end
    end

    assert before == {Path.wildcard(Path.join(tmp, "**"), match_dot: true), tree(tmp)}
  end

  test "unknown keys are ignored", %{tmp_dir: tmp} do
    table = new_table([{["a"], 1}])

    opts = [
      data_directory: tmp,
      table_name: "t",
      unknown: :value,
      name: MyTable,
      compression_level: "ignored"
    ]

    assert :ok = Persist.persist_to_disk(table, opts)
    assert {:ok, [{["a"], 1}]} == restore_fresh(opts)
    assert {:ok, id} = Persist.save_snapshot(table, opts)
    assert [{^id, _}] = Persist.get_snapshot_list(opts)
    assert :ok = Persist.restore_snapshot(opts, id)
  end

  test "a reference table without :table_name raises ArgumentError", %{tmp_dir: tmp} do
    table = new_table([{["a"], 1}])

    for {fun, call} <- calls(table) do
      error = assert_raise ArgumentError, fn -> call.(data_directory: tmp) end
      assert error.message =~ ":table_name", "#{fun}: #{error.message}"
    end

    assert File.ls!(tmp) == []
  end

  test "options that are not a keyword list, and a table that is not a table, raise",
       %{tmp_dir: tmp} do
    table = new_table([{["a"], 1}])

    for bad <- [%{data_directory: tmp}, [{"data_directory", tmp}], :opts, [1, 2]] do
      assert_raise ArgumentError, fn -> Persist.persist_to_disk(table, bad) end
      assert_raise ArgumentError, fn -> Persist.get_snapshot_list(bad) end
    end

    for bad <- ["table", 123, {:table}] do
      assert_raise ArgumentError, fn ->
        Persist.persist_to_disk(bad, data_directory: tmp, table_name: "t")
      end

      assert_raise ArgumentError, fn ->
        Persist.restore_from_disk(bad, data_directory: tmp, table_name: "t")
      end
    end

    assert File.ls!(tmp) == []
  end

  test "the default data directory is /tmp/property_table" do
    assert PropertyTable.Persist.Options.defaults()[:data_directory] == "/tmp/property_table"
  end
end
