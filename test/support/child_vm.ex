defmodule PropertyTable.Persist.TestSupport.ChildVM do
  @moduledoc """
  Runs `PropertyTable.Persist.TestSupport.Child.main/0` in a separate OS-level BEAM, started
  with `erl` through a port (so its OS pid is known and it can be killed with `kill -9`).

  The child loads this project's compiled modules (`-pa` on the application's ebin, so
  `:code.priv_dir/1` finds the NIF) plus Elixir's and Logger's. It prints `READY` when
  loaded, then waits for a `GO ...` line (see `Child`). Closing the port (or the test process
  exiting) closes its stdin, which makes it halt, so no child outlives its test.
  """

  import ExUnit.Assertions

  defstruct [:port, :os_pid, :started_at, lines: []]

  @type t :: %__MODULE__{port: port(), os_pid: non_neg_integer(), lines: [String.t()]}

  @doc "Starts a child VM (it boots in the background; see `await_ready/2`)."
  @spec start() :: t()
  def start do
    erl = System.find_executable("erl") || flunk("erl not found on PATH")

    args =
      Enum.flat_map(code_paths(), &["-pa", &1]) ++
        [
          "-noshell",
          # One scheduler is plenty and boots faster; dirty I/O schedulers run the NIF.
          "+S",
          "1:1",
          "+SDcpu",
          "1:1",
          "+SDio",
          "2",
          "+A",
          "1",
          "-eval",
          "'Elixir.PropertyTable.Persist.TestSupport.Child':main()."
        ]

    port =
      Port.open({:spawn_executable, erl}, [
        :binary,
        :exit_status,
        :use_stdio,
        :stderr_to_stdout,
        :hide,
        {:line, 16_384},
        args: args
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    %__MODULE__{port: port, os_pid: os_pid, started_at: System.monotonic_time(:millisecond)}
  end

  @doc "Code paths the child needs: this application's ebin, Elixir's and Logger's."
  def code_paths do
    Enum.map([:property_table_persist, :elixir, :logger], fn app ->
      app |> :code.lib_dir() |> Path.join("ebin")
    end)
  end

  @doc "Waits for the child's READY line."
  def await_ready(vm, timeout \\ 30_000) do
    case next_line(vm, timeout) do
      {:line, "READY", vm} -> vm
      {:line, other, vm} -> flunk("child VM said #{inspect(other)} before READY\n#{output(vm)}")
      {:exit, status, vm} -> flunk("child VM exited with #{status} before READY\n#{output(vm)}")
      {:timeout, vm} -> flunk("child VM not ready after #{timeout} ms\n#{output(vm)}")
    end
  end

  @doc "A path as one word of a GO line (paths may contain spaces)."
  def path_arg(path), do: Base.url_encode64(path, padding: false)

  @doc "Sends one line to the child's stdin."
  def send_line(%__MODULE__{port: port}, line) do
    true = Port.command(port, [line, ?\n])
    :ok
  end

  @doc "The next line from the child, `{:exit, status, vm}` when it ended, or `{:timeout, vm}`."
  def next_line(%__MODULE__{port: port} = vm, timeout) do
    receive do
      {^port, {:data, {:eol, line}}} -> {:line, line, %{vm | lines: [line | vm.lines]}}
      {^port, {:data, {:noeol, part}}} -> next_line(%{vm | lines: [part | vm.lines]}, timeout)
      {^port, {:exit_status, status}} -> {:exit, status, vm}
    after
      timeout -> {:timeout, vm}
    end
  end

  @doc "Waits for the child to exit; returns `{status, vm}` with every line it printed."
  def await_exit(vm, timeout \\ 30_000) do
    case next_line(vm, timeout) do
      {:line, _line, vm} -> await_exit(vm, timeout)
      {:exit, status, vm} -> {status, vm}
      {:timeout, vm} -> flunk("child VM #{vm.os_pid} did not exit\n#{output(vm)}")
    end
  end

  @doc "Every line printed so far, oldest first."
  def output(vm), do: vm.lines |> Enum.reverse() |> Enum.join("\n")

  @doc "Closes the port if still open (the child then halts on stdin EOF)."
  def stop(%__MODULE__{port: port}) do
    if Port.info(port), do: Port.close(port)
    :ok
  catch
    _, _ -> :ok
  end

  ## kill -9

  @doc """
  A long-lived `/bin/sh` whose builtin `kill` sends SIGKILL without forking a process per
  kill, so the signal goes out within microseconds of the decision.
  """
  def start_killer do
    sh = System.find_executable("sh") || flunk("sh not found")
    Port.open({:spawn_executable, sh}, [:binary, :exit_status, :use_stdio, args: ["-s"]])
  end

  @doc "Sends SIGKILL to `vm` now."
  def kill9(killer, %__MODULE__{os_pid: os_pid}) do
    true = Port.command(killer, "kill -9 #{os_pid} 2>/dev/null\n")
    :ok
  end

  def stop_killer(killer) do
    Port.close(killer)
  catch
    _, _ -> :ok
  end
end

defmodule PropertyTable.Persist.TestSupport.Child do
  @moduledoc """
  The program run by `ChildVM`. Prints `READY`, waits for one line:

    * `GO persist <data_dir> <rows> <first_gen>` (`<data_dir>` encoded with `ChildVM.path_arg/1`) - forever: write generation g into every
      row of a table of `rows` rows, `persist_to_disk!/2`, print `ACK g`; g = first_gen, ...
    * `GO snapshot <data_dir> <rows> <first_gen> <max_snapshots>` - the same with
      `save_snapshot!/2`.
    * `GO restore_snapshot <data_dir> <first_index> <id1,id2,...>` - forever: for
      i = first_index, ...: `restore_snapshot!/2` of id number `rem(i, count)`, print `ACK i`.
    * `GO persist_n <data_dir> <rows> <first_gen> <count>` - persists `count` generations,
      printing `ACK g` for each, then `DONE` and halts.
    * `GO log <data_dir> <rows> <seed> <first_gen> <restore|load> <model_file> <log_compaction>` -
      the change-log loop: gets the table of generation `first_gen - 1` (`restore_from_disk!/2`,
      between `RESTORE` and `RESTORED`, checked against `<model_file>`, or loaded from that
      file: a term `{property, value}` list, path encoded like `<data_dir>`), then forever
      makes generation g's step of `ChangeModel` (`RESTORE`..`RESTORED` around a restore,
      `SNAP g` before a snapshot), persists and prints `ACK g <ChangeModel.fingerprint/1>`.
      A restore that gives other rows prints `MISMATCH ...` and halts with status 3.

  Each prints `START` just before its first write. Table name `"t"` throughout. Any error crashes the child (non-zero exit, reported by the
  parent). The child halts when its stdin closes.
  """

  alias PropertyTable.Persist
  alias PropertyTable.Persist.TestSupport.ChangeModel

  @doc "The rows of generation `gen`: properties `[\"row\", i]`, values carrying `gen`."
  def rows(gen, count) do
    ts = 0
    for i <- 1..count, do: {["row", i], {gen, i, "value of row #{i} in generation #{gen}"}, ts}
  end

  @doc """
  The single generation a list of `{property, value}` pairs holds, checking that it is
  exactly `rows(gen, count)`; `{:error, why}` otherwise.
  """
  def generation_of(pairs, count) do
    gens = pairs |> Enum.map(fn {_p, {g, _i, _s}} -> g end) |> Enum.uniq()

    case gens do
      [gen] ->
        expected = for {p, v, _} <- rows(gen, count), do: {p, v}

        if Enum.sort(pairs) == Enum.sort(expected),
          do: {:ok, gen},
          else: {:error, {:rows_differ, gen, length(pairs)}}

      [] ->
        {:error, :empty}

      many ->
        {:error, {:mixed_generations, Enum.sort(many)}}
    end
  end

  def main do
    :ok = :io.setopts(:standard_io, binary: true, encoding: :unicode)
    {:ok, stdout} = :file.open("/dev/stdout", [:write, :raw, :binary])
    Process.put(:stdout, stdout)
    parent = self()
    # Every line from stdin goes to the main process; EOF (the parent closed the port or
    # died) halts the VM at once.
    spawn_link(fn -> read_stdin(parent) end)
    warm_up()
    say("READY")

    receive do
      {:line, line} -> run(String.split(line, " "))
    end
  catch
    kind, reason ->
      say("CHILD FAILED: " <> Exception.format(kind, reason, __STACKTRACE__))
      System.halt(2)
  end

  # Lines go to fd 1 with a plain write(2) before the child goes on. IO.puts only hands the
  # line to the VM's stdout port, which writes it a little later: a kill -9 in between lost
  # ACKs of writes that had completed (seen as "restored 172, last ACK 169" under load).
  defp say(line), do: :ok = :file.write(Process.get(:stdout), [line, ?\n])

  # Loads every module a run uses (the VM loads modules lazily, which would make the first
  # write much slower than the next ones), without touching any file.
  defp warm_up do
    for mod <- [
          Persist,
          PropertyTable.Persist.Native,
          PropertyTable.Persist.Options,
          PropertyTable.Persist.Restore,
          PropertyTable.Persist.Write,
          PropertyTable.Persist.Rollback,
          ChangeModel,
          File,
          File.Stat,
          Base,
          Map,
          Path,
          Stream,
          Enum,
          String.Chars,
          List.Chars,
          Keyword,
          :ets
        ] do
      {:module, _} = Code.ensure_loaded(mod)
    end

    _ = rows(0, 10)
    _ = "#{1} #{"x"}"
    _ = Stream.iterate(1, &(&1 + 1)) |> Stream.take_while(&(&1 < 3)) |> Enum.to_list()

    _ =
      PropertyTable.Persist.Options.validate!(nil, data_directory: "/nonexistent", table_name: "t")

    :ok
  end

  defp read_stdin(parent) do
    case IO.gets("") do
      :eof ->
        System.halt(0)

      {:error, _} ->
        System.halt(0)

      line ->
        send(parent, {:line, String.trim_trailing(line, "\n")})
        read_stdin(parent)
    end
  end

  defp run(["GO", mode, dir | args]) when mode != "decoded" do
    run(["GO", "decoded", mode, Base.url_decode64!(dir, padding: false) | args])
  end

  defp run(["GO", "decoded", "persist", dir, rows, first]) do
    loop_writes(dir, String.to_integer(rows), String.to_integer(first), :infinity, fn t, o ->
      Persist.persist_to_disk!(t, o)
    end)
  end

  defp run(["GO", "decoded", "snapshot", dir, rows, first, max]) do
    max = String.to_integer(max)

    loop_writes(dir, String.to_integer(rows), String.to_integer(first), :infinity, fn t, o ->
      Persist.save_snapshot!(t, [max_snapshots: max] ++ o)
    end)
  end

  defp run(["GO", "decoded", "persist_n", dir, rows, first, count]) do
    first = String.to_integer(first)
    last = first + String.to_integer(count) - 1

    loop_writes(dir, String.to_integer(rows), first, last, fn t, o ->
      Persist.persist_to_disk!(t, [chunk_size: 100] ++ o)
    end)

    say("DONE")
    System.halt(0)
  end

  defp run(["GO", "decoded", "restore_snapshot", dir, first, ids]) do
    ids = ids |> String.split(",") |> List.to_tuple()
    opts = [data_directory: dir, table_name: "t"]

    say("START")

    Stream.iterate(String.to_integer(first), &(&1 + 1))
    |> Enum.each(fn i ->
      :ok = Persist.restore_snapshot!(opts, elem(ids, rem(i, tuple_size(ids))))
      say("ACK #{i}")
    end)
  end

  defp run(["GO", "decoded", "log", dir, rows, seed, first, start, model, compaction]) do
    [rows, seed, first] = Enum.map([rows, seed, first], &String.to_integer/1)
    opts = [data_directory: dir, table_name: "t", log_compaction: String.to_float(compaction)]

    model =
      model |> Base.url_decode64!(padding: false) |> File.read!() |> :erlang.binary_to_term()

    table = :ets.new(:child_table, [:set, :public])
    say("START")

    case start do
      "restore" -> restore_checked(table, opts, Enum.sort(model))
      "load" -> :ets.insert(table, for({p, v} <- model, do: {p, v, 0}))
    end

    log_loop(table, opts, seed, first, rows)
  end

  defp loop_writes(dir, rows, first, last, write) do
    table = :ets.new(:child_table, [:set, :public])
    opts = [data_directory: dir, table_name: "t"]

    say("START")

    Stream.iterate(first, &(&1 + 1))
    |> Stream.take_while(&(last == :infinity or &1 <= last))
    |> Enum.each(fn gen ->
      :ets.insert(table, rows(gen, rows))
      write.(table, opts)
      say("ACK #{gen}")
    end)
  end

  defp log_loop(table, opts, seed, gen, rows) do
    {op, changes} = ChangeModel.step(seed, gen, rows)
    if op == :restore_first, do: restore_checked(table, opts, sorted_pairs(table))
    ChangeModel.apply_changes_ets(table, changes)

    if op == :snapshot do
      say("SNAP #{gen}")
      _id = Persist.save_snapshot!(table, [max_snapshots: 3] ++ opts)
    else
      :ok = Persist.persist_to_disk!(table, opts)
    end

    fingerprint = ChangeModel.fingerprint(Path.join(opts[:data_directory], "t"))
    say("ACK #{gen} #{fingerprint}")
    log_loop(table, opts, seed, gen + 1, rows)
  end

  # A restore into the child's table must give back exactly the table it had persisted.
  defp restore_checked(table, opts, expected) do
    say("RESTORE")
    :ok = Persist.restore_from_disk!(table, opts)
    restored = sorted_pairs(table)

    if restored != expected do
      say(
        "MISMATCH restored #{length(restored)} rows, expected #{length(expected)}: " <>
          inspect(List.myers_difference(restored, expected), limit: 20)
      )

      System.halt(3)
    end

    say("RESTORED")
  end

  defp sorted_pairs(table),
    do: table |> :ets.tab2list() |> Enum.map(fn {p, v, _} -> {p, v} end) |> Enum.sort()
end
