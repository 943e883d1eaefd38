# Benchmark of PropertyTable.Persist against property_table 0.2.3's algorithm, :ets.tab2file
# and a floor (one term_to_binary, one write, one fsync).
#
#     MIX_ENV=prod mix run bench/persist_bench.exs [options]
#
# Options:
#
#   --sizes 1000,100000   table sizes (rows) to measure (default 1000,100000)
#   --large               also measure 1,000,000 rows
#   --runs N              measured rounds per size (default 5), after one warm-up round
#   --seed S              data generator seed (default 1)
#   --only a,b,...        contenders to run (ours,ours_c0,baseline,tab2file,floor; ours
#                         brings the unchanged persist, ours_unchanged, and the persist
#                         after one changed row, ours_one_row, along)
#   --profile             break down where our persist and restore spend their time
#                         (at the largest size)
#   --sweep               compression levels 0..9 and chunk sizes 500..16000 through the
#                         public API, and raw zstd levels -5..19 on the same chunks (needs
#                         cargo: builds bench/zstd_levels); at --sweep-size rows
#   --sweep-size N        rows for --sweep (default 100000)
#   --dir PATH            where files are written (default: a fresh directory under the
#                         system temporary directory, removed afterwards)
#   --out PATH            also write the Markdown report there (it is always printed;
#                         bench/results.md keeps the history and is edited by hand)
#   --sample-ms N         memory sampling period (default 1): a longer one disturbs the
#                         VM less (the sampler wakes a second scheduler) but may miss
#                         short peaks
#
# Every round runs the contenders one after the other (A B C D E A B C D E ...) on the same
# table; before each round after the first, 0.1% of the rows get new values, as on a device
# persisting periodically. Each operation runs in a fresh process, while a high-priority
# sampler polls :erlang.memory(:total), the OS resident set size and the worker's own
# memory every millisecond (--sample-ms), and :erlang.system_monitor counts long_schedule (>= 10 ms) and
# long_gc (>= 50 ms) events. Bytes written are the growth of `write_bytes` in
# /proc/self/io (page-cache pages the VM dirtied, the NIF's writes included). Restores
# create a new table; its memory is reported separately and subtracted for "restore extra
# beyond table". Nothing is left behind: files go to a fresh temporary directory, removed
# at the end (even on failure).

Code.require_file("support/data.ex", __DIR__)
Code.require_file("baseline_persist.ex", __DIR__)

defmodule PersistBench.Monitor do
  @moduledoc false
  # Receives :erlang.system_monitor messages and counts them between reset/0 and take/0.

  def start do
    pid = spawn(fn -> loop([]) end)
    :erlang.system_monitor(pid, [{:long_schedule, 10}, {:long_gc, 50}])
    Process.register(pid, __MODULE__)
    pid
  end

  def reset, do: call(:reset)

  @doc """
  Events since the last reset: %{long_schedule: n, long_gc: n, max_ms: ms, details: [text]};
  `labels` names the processes of interest (pid => label), others are "another process".
  """
  def take(labels \\ %{}), do: call({:take, labels})

  defp call(msg) do
    ref = make_ref()
    {msg, arg} = if is_tuple(msg), do: msg, else: {msg, nil}
    send(__MODULE__, {msg, self(), ref, arg})

    receive do
      {^ref, reply} -> reply
    end
  end

  defp loop(events) do
    receive do
      {:monitor, who, kind, info} when kind in [:long_schedule, :long_gc] ->
        loop([{kind, who, info} | events])

      {:reset, from, ref, _} ->
        send(from, {ref, :ok})
        loop([])

      {:take, from, ref, labels} ->
        send(from, {ref, summarize(Enum.reverse(events), labels)})
        loop([])
    end
  end

  defp summarize(events, labels) do
    count = fn kind -> Enum.count(events, &(elem(&1, 0) == kind)) end

    max_ms =
      events
      |> Enum.map(fn {_, _, info} -> Keyword.get(info, :timeout, 0) end)
      |> Enum.max(fn -> 0 end)

    %{
      long_schedule: count.(:long_schedule),
      long_gc: count.(:long_gc),
      max_ms: max_ms,
      details: Enum.map(events, &describe(&1, labels))
    }
  end

  # "22 ms long_schedule of the caller (in at Mod.fun/2, out at ?)"
  defp describe({kind, who, info}, labels) do
    whose = Map.get(labels, who, "another process (#{inspect(who)})")
    where = for key <- [:in, :out], Keyword.has_key?(info, key), do: "#{key} at #{mfa(info[key])}"
    where = if where == [], do: "", else: " (#{Enum.join(where, ", ")})"
    "#{Keyword.get(info, :timeout, "?")} ms #{kind} of #{whose}#{where}"
  end

  defp mfa({m, f, a}), do: "#{inspect(m)}.#{f}/#{a}"
  defp mfa(_unknown), do: "?"
end

defmodule PersistBench.Sampler do
  @moduledoc false
  # Polls memory every `period/0` ms until stopped and reports the peaks.

  def start(worker) do
    parent = self()

    Process.spawn(
      fn ->
        {:ok, statm} = :file.open(~c"/proc/self/statm", [:read, :raw, :binary])
        state = %{total: 0, rss: 0, proc: 0, statm: statm}
        send(parent, {:sampler_ready, self()})
        loop(worker, state)
      end,
      priority: :high
    )
    |> tap(fn pid ->
      receive do
        {:sampler_ready, ^pid} -> :ok
      end
    end)
  end

  def period, do: :persistent_term.get({__MODULE__, :period_ms}, 1)

  def stop(pid) do
    ref = make_ref()
    send(pid, {:stop, self(), ref})

    receive do
      {^ref, state} -> state
    end
  end

  defp loop(worker, state) do
    state = sample(worker, state)

    receive do
      {:stop, from, ref} ->
        state = sample(worker, state)
        :file.close(state.statm)
        send(from, {ref, state})
    after
      period() -> loop(worker, state)
    end
  end

  defp sample(worker, state) do
    proc =
      case Process.info(worker, :memory) do
        {:memory, bytes} -> bytes
        nil -> 0
      end

    %{
      state
      | total: max(state.total, :erlang.memory(:total)),
        rss: max(state.rss, PersistBench.rss(state.statm)),
        proc: max(state.proc, proc)
    }
  end
end

defmodule PersistBench do
  @moduledoc false

  alias PersistBench.{Baseline, Data, Monitor, Sampler}
  alias PropertyTable.Persist
  alias PropertyTable.Persist.Options

  @contenders [
    {:ours, "PropertyTable.Persist (defaults)"},
    {:ours_unchanged, "PropertyTable.Persist, unchanged table (2nd persist)"},
    {:ours_one_row, "PropertyTable.Persist, one random row changed (3rd persist)"},
    {:ours_c0, "PropertyTable.Persist (compression: 0)"},
    {:baseline, "property_table 0.2.3 algorithm (zlib 6)"},
    {:tab2file, ":ets.tab2file/file2tab (sync: true)"},
    {:floor, "floor: term_to_binary + write + fsync"}
  ]

  # The contenders that run this library.
  @ours [:ours, :ours_c0, :ours_unchanged, :ours_one_row]

  @page_size 4096

  # Resident set size, from /proc/self/statm (an open raw file: no file server round trip).
  def rss(statm) do
    {:ok, text} = :file.pread(statm, 0, 200)
    [_size, resident | _] = String.split(text, " ")
    String.to_integer(resident) * @page_size
  end

  # Bytes the whole VM has sent to storage so far (pages dirtied in the page cache by
  # write(2); the VM's wake-up pipes, which `wchar` counts, are left out).
  def written_bytes do
    {:ok, io} = File.read("/proc/self/io")
    [_, n] = Regex.run(~r/^write_bytes: (\d+)$/m, io)
    String.to_integer(n)
  end

  ## Entry point

  def main(argv) do
    {opts, rest, invalid} =
      OptionParser.parse(argv,
        strict: [
          sizes: :string,
          large: :boolean,
          runs: :integer,
          seed: :integer,
          only: :string,
          profile: :boolean,
          sweep: :boolean,
          sweep_size: :integer,
          dir: :string,
          out: :string,
          no_out: :boolean,
          sample_ms: :integer
        ]
      )

    if rest != [] or invalid != [] do
      IO.puts(:stderr, "unexpected arguments: #{inspect(rest ++ invalid)}")
      System.halt(2)
    end

    sizes =
      (opts[:sizes] || "1000,100000")
      |> String.split(",", trim: true)
      |> Enum.map(&(&1 |> String.replace("_", "") |> String.to_integer()))
      |> then(&if(opts[:large], do: &1 ++ [1_000_000], else: &1))
      |> Enum.uniq()

    only =
      case opts[:only] do
        nil -> Enum.map(@contenders, &elem(&1, 0))
        list -> list |> String.split(",", trim: true) |> Enum.map(&String.to_atom/1)
      end

    # The unchanged persist follows the default persist.
    only = if :ours in only, do: Enum.uniq(only ++ [:ours_unchanged, :ours_one_row]), else: only

    config = %{
      sizes: sizes,
      runs: opts[:runs] || 5,
      seed: opts[:seed] || 1,
      contenders: Enum.filter(@contenders, fn {id, _} -> id in only end),
      dir: opts[:dir] || Path.join(System.tmp_dir!(), "persist_bench_#{System.os_time()}"),
      remove_dir?: opts[:dir] == nil,
      # --no-out is accepted (the former way not to overwrite bench/results.md).
      out: if(opts[:no_out], do: nil, else: opts[:out]),
      command: Enum.join(["MIX_ENV=prod mix run bench/persist_bench.exs" | argv], " "),
      load_start: loadavg()
    }

    Logger.configure(level: :warning)
    :persistent_term.put({Sampler, :period_ms}, max(opts[:sample_ms] || 1, 1))
    Monitor.start()
    File.mkdir_p!(config.dir)

    try do
      started = System.monotonic_time(:millisecond)
      results = Enum.map(sizes, &bench_size(&1, config))

      profile = if opts[:profile], do: [profile_section(Enum.max(sizes), config)], else: []
      sweep = if opts[:sweep], do: sweep_sections(opts[:sweep_size] || 100_000, config), else: []

      sections =
        [environment(config), results_section(results), ratios_section(results)] ++
          [targets_section(results), long_events_section(results)] ++
          profile ++ sweep ++ [notes_section()]

      elapsed = div(System.monotonic_time(:millisecond) - started, 1000)
      report = Enum.join(sections, "\n") <> "\nTotal benchmark time: #{elapsed} s.\n"
      IO.puts("\n" <> report)

      if config.out do
        File.write!(config.out, report)
        IO.puts("Report written to #{Path.relative_to_cwd(config.out)}")
      end
    after
      if config.remove_dir?, do: File.rm_rf!(config.dir)
    end
  end

  ## One size

  defp bench_size(n, config) do
    log("== #{n} rows: generating")
    source = Data.new_table(:persist_bench_source, n, config.seed)
    table_bytes = :ets.info(source, :memory) * :erlang.system_info(:wordsize)
    dir = Path.join(config.dir, "n#{n}")

    rounds =
      for round <- 0..config.runs do
        if round > 0, do: Data.mutate(source, 0.001, config.seed * 1000 + round)
        log("   round #{round}#{if round == 0, do: " (warm-up)", else: ""}")

        for {id, _name} <- config.contenders, into: %{} do
          {id, run_contender(id, source, contender_dir(dir, id), round == 1)}
        end
      end
      |> tl()

    :ets.delete(source)
    File.rm_rf!(dir)

    per_contender =
      for {id, name} <- config.contenders do
        ops = Enum.map(rounds, & &1[id])
        {id, %{name: name, ops: ops}}
      end

    %{n: n, table_bytes: table_bytes, contenders: per_contender}
  end

  # The unchanged persist persists again into the directory :ours has just written.
  defp contender_dir(dir, id) when id in [:ours_unchanged, :ours_one_row],
    do: contender_dir(dir, :ours)

  defp contender_dir(dir, id), do: Path.join(dir, Atom.to_string(id))

  # Persists then restores; returns %{persist: m, restore: m | nil, size: bytes}.
  defp run_contender(id, source, dir, verify?) do
    # The row changes before the clock starts; later contenders of the round persist the
    # table with it.
    if id == :ours_one_row, do: change_one_row(source)
    before = dir_state(dir)
    persist = measure(fn -> persist(id, source, dir) end)
    stat = File.stat!(file_of(id, dir))

    # The unchanged persist must leave every file of the directory as it was (`written`
    # counts the whole VM, so it is reported, not asserted).
    if id == :ours_unchanged and dir_state(dir) != before do
      raise "the unchanged persist changed files in #{dir}"
    end

    restore =
      if id != :ours_unchanged do
        measure(fn -> restore(id, dir) end, fn table -> after_restore(table, source, verify?) end)
      end

    %{persist: persist, restore: restore, size: stat.size}
  end

  # Gives a random row (the round's seeded :rand state) a new value, so the persist after it
  # matches the stable file's chunks up to a random one.
  defp change_one_row(table) do
    key = :ets.slot(table, :rand.uniform(:ets.info(table, :size)) - 1)

    case key do
      [{property, _value, ts} | _] ->
        :ets.insert(table, {property, {:changed, :rand.uniform()}, ts})

      _ ->
        change_one_row(table)
    end
  end

  # Every file under `dir` with its inode, size and modification time.
  defp dir_state(dir) do
    for path <- Path.wildcard(Path.join(dir, "**"), match_dot: true), into: %{} do
      {:ok, s} = File.stat(path, time: :posix)
      {path, {s.inode, s.size, s.mtime}}
    end
  end

  defp ours_opts(:ours_c0, dir), do: [data_directory: dir, table_name: "t", compression: 0]
  defp ours_opts(_, dir), do: [data_directory: dir, table_name: "t"]

  defp file_of(id, dir) when id in @ours,
    do: Path.join([dir, "t", "data.ptable"])

  defp file_of(:baseline, dir), do: Baseline.stable_path(dir)
  defp file_of(id, dir) when id in [:tab2file, :floor], do: Path.join(dir, "table.bin")

  defp persist(id, table, dir) when id in @ours do
    Persist.persist_to_disk!(table, ours_opts(id, dir))
  end

  defp persist(:baseline, table, dir), do: Baseline.persist(table, dir)

  defp persist(:tab2file, table, dir) do
    File.mkdir_p!(dir)
    :ok = :ets.tab2file(table, String.to_charlist(file_of(:tab2file, dir)), sync: true)
  end

  defp persist(:floor, table, dir) do
    File.mkdir_p!(dir)
    pairs = for {property, value, _ts} <- :ets.tab2list(table), do: {property, value}
    bin = :erlang.term_to_binary(pairs)
    {:ok, fd} = :file.open(file_of(:floor, dir), [:write, :raw, :binary])
    :ok = :file.write(fd, bin)
    :ok = :file.sync(fd)
    :ok = :file.close(fd)
  end

  # Each returns the restored table (owned by the calling worker process).
  defp restore(id, dir) when id in [:ours, :ours_c0, :ours_one_row] do
    Persist.restore_from_disk!(:persist_bench_restored, ours_opts(id, dir))
    :persist_bench_restored
  end

  defp restore(:baseline, dir) do
    table = :ets.new(:persist_bench_restored, [:set, :public])
    Baseline.restore(table, dir)
    table
  end

  defp restore(:tab2file, dir) do
    {:ok, table} = :ets.file2tab(String.to_charlist(file_of(:tab2file, dir)))
    table
  end

  defp restore(:floor, dir) do
    pairs = :floor |> file_of(dir) |> File.read!() |> :erlang.binary_to_term()
    ts = System.monotonic_time()
    table = :ets.new(:persist_bench_restored, [:set, :public])
    :ets.insert(table, for({property, value} <- pairs, do: {property, value, ts}))
    table
  end

  # Runs in the worker after the measurement: the restored table's size, and on the first
  # measured round a full comparison with the source.
  defp after_restore(table, source, verify?) do
    size = :ets.info(table, :size)

    if size != :ets.info(source, :size) do
      raise "restored #{size} rows, expected #{:ets.info(source, :size)}"
    end

    if verify? do
      pairs = fn t ->
        t |> :ets.tab2list() |> Enum.map(fn {p, v, _} -> {p, v} end) |> Enum.sort()
      end

      unless pairs.(table) == pairs.(source) do
        raise "restored table differs from the source"
      end
    end

    :ets.info(table, :memory) * :erlang.system_info(:wordsize)
  end

  ## Measurement

  @doc false
  # Runs `fun` in a fresh process with the sampler and the system monitor watching, then
  # `post` (untimed, unsampled) on its result in the same process, which then exits.
  def measure(fun, post \\ fn _ -> nil end) do
    :erlang.garbage_collect()
    parent = self()

    {worker, ref} =
      spawn_monitor(fn ->
        receive do
          :go -> :ok
        end

        t0 = System.monotonic_time(:microsecond)
        result = fun.()
        t1 = System.monotonic_time(:microsecond)
        send(parent, {:done, self(), t1 - t0})

        receive do
          :post -> send(parent, {:posted, self(), post.(result)})
        end
      end)

    base_total = :erlang.memory(:total)
    {:ok, statm} = :file.open(~c"/proc/self/statm", [:read, :raw, :binary])
    base_rss = rss(statm)
    :file.close(statm)
    Monitor.reset()
    base_written = written_bytes()
    sampler = Sampler.start(worker)
    send(worker, :go)

    us =
      receive do
        {:done, ^worker, us} ->
          us

        {:DOWN, ^ref, :process, ^worker, reason} ->
          Sampler.stop(sampler)
          raise "benchmark operation failed: #{inspect(reason)}"
      end

    written = written_bytes() - base_written
    peaks = Sampler.stop(sampler)
    # A long_schedule event is sent when the worker is scheduled out: wait for that.
    wait_until_waiting(worker)
    events = Monitor.take(%{worker => "the timed process", sampler => "the memory sampler"})
    send(worker, :post)

    posted =
      receive do
        {:posted, ^worker, value} -> value
        {:DOWN, ^ref, :process, ^worker, reason} -> raise "check failed: #{inspect(reason)}"
      end

    receive do
      {:DOWN, ^ref, :process, ^worker, _} -> :ok
    end

    %{
      ms: us / 1000,
      mem: max(peaks.total - base_total, 0),
      rss: max(peaks.rss - base_rss, 0),
      proc: peaks.proc,
      long_schedule: events.long_schedule,
      long_gc: events.long_gc,
      long_max_ms: events.max_ms,
      long_events: events.details,
      written: written,
      table_bytes: posted
    }
  end

  defp wait_until_waiting(pid) do
    case Process.info(pid, :status) do
      {:status, :waiting} ->
        :ok

      _ ->
        Process.sleep(1)
        wait_until_waiting(pid)
    end
  end

  ## Report

  defp environment(config) do
    {mem_kb, _} =
      case File.read("/proc/meminfo") do
        {:ok, info} ->
          Regex.run(~r/MemTotal:\s+(\d+)/, info, capture: :all_but_first)
          |> hd()
          |> Integer.parse()

        _ ->
          {0, ""}
      end

    cpu =
      case File.read("/proc/cpuinfo") do
        {:ok, info} ->
          case Regex.run(~r/model name\s*:\s*(.+)/, info, capture: :all_but_first) do
            [name] -> name
            _ -> "unknown CPU"
          end

        _ ->
          "unknown CPU"
      end

    {rev, 0} = System.cmd("git", ["rev-parse", "--short", "HEAD"], stderr_to_stdout: true)
    {dirty, 0} = System.cmd("git", ["status", "--porcelain", "--", "lib", "native"])

    """
    # PropertyTable.Persist benchmark

    * Date: #{DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()}
    * Machine: `nproc` #{cmd("nproc", [])}, Linux #{cmd("uname", ["-r"])}, #{cpu}, #{Float.round(mem_kb / 1024 / 1024, 1)} GiB RAM, #{System.schedulers_online()} schedulers online, data on #{fs_of(config.dir)}
    * Erlang/OTP #{:erlang.system_info(:otp_release)} (ERTS #{:erlang.system_info(:version)}), Elixir #{System.version()}
    * Code: commit #{String.trim(rev)}#{if String.trim(dirty) != "", do: " with uncommitted changes in lib/ or native/", else: ""}
    * Command: `#{config.command}`
    * #{config.runs} measured rounds per size after one warm-up round; seed #{config.seed}; memory sampled every #{Sampler.period()} ms
    * Load average (1, 5, 15 min) at the start: #{config.load_start}; at the end: #{loadavg()}.
      Other work on the machine makes single timings noisy: compare contenders within a
      size (they ran interleaved) rather than across reports.
    """
  end

  defp cmd(name, args) do
    case System.find_executable(name) && System.cmd(name, args, stderr_to_stdout: true) do
      {out, 0} -> String.trim(out)
      _ -> "unknown"
    end
  end

  def loadavg do
    case File.read("/proc/loadavg") do
      {:ok, text} -> text |> String.split() |> Enum.take(3) |> Enum.join(" ")
      _ -> "unknown"
    end
  end

  defp fs_of(dir) do
    case System.cmd("df", ["-T", dir], stderr_to_stdout: true) do
      {out, 0} ->
        case out |> String.split("\n", trim: true) |> List.last() |> String.split() do
          [dev, type | _] -> "#{type} (#{dev})"
          _ -> "unknown filesystem"
        end

      _ ->
        "unknown filesystem"
    end
  end

  defp results_section(results) do
    results
    |> Enum.map(fn %{n: n, table_bytes: tb, contenders: cs} ->
      header = """
      ## #{fmt_int(n)} rows (table: #{fmt_bytes(tb)} in ETS)

      Times: median (min–max) in ms. Written: median bytes sent to storage per persist
      (`write_bytes` of /proc/self/io: whole pages).
      Memory: largest peak over the rounds of `:erlang.memory(:total)` above its value before
      the operation ("erl") and of the OS resident set ("RSS": includes what the NIF
      allocates with malloc, but not memory the allocators reuse); restores subtract the
      restored table itself (#{fmt_bytes(tb)}). Long events: long_schedule (>= 10 ms) /
      long_gc (>= 50 ms) over all rounds.

      | contender | persist ms | written | restore ms | file size | persist peak erl / RSS | restore peak beyond table erl / RSS | long sched/gc persist, restore |
      |---|---:|---:|---:|---:|---:|---:|---|
      """

      rows =
        Enum.map(cs, fn {_id, %{name: name, ops: ops} = c} ->
          persists = ops(c, :persist)
          restores = ops(c, :restore)

          restore_cells =
            if restores == [],
              do: ["—", "—"],
              else: [
                timing(restores),
                "#{fmt_bytes(beyond_table(c, :mem))} / #{fmt_bytes(beyond_table(c, :rss))}"
              ]

          [
            name,
            timing(persists),
            fmt_bytes(persists |> Enum.map(& &1.written) |> median() |> round()),
            Enum.at(restore_cells, 0),
            fmt_bytes(List.last(ops).size),
            "#{fmt_bytes(max_of(persists, :mem))} / #{fmt_bytes(max_of(persists, :rss))}",
            Enum.at(restore_cells, 1),
            "#{sum_of(persists, :long_schedule)}/#{sum_of(persists, :long_gc)}, " <>
              "#{sum_of(restores, :long_schedule)}/#{sum_of(restores, :long_gc)}" <>
              long_max(persists ++ restores)
          ]
          |> then(&("| " <> Enum.join(&1, " | ") <> " |"))
        end)

      header <> Enum.join(rows, "\n") <> "\n"
    end)
    |> Enum.join("\n")
  end

  defp long_max(ops) do
    case Enum.max_by(ops, & &1.long_max_ms, fn -> nil end) do
      %{long_max_ms: ms} when ms > 0 -> " (max #{ms} ms)"
      _ -> ""
    end
  end

  # Every long_schedule / long_gc event seen while one of our contenders ran, with the
  # process it concerned and where that process was scheduled in and out.
  defp long_events_section(results) do
    lines =
      for %{n: n, contenders: cs} <- results,
          {id, %{name: name} = c} <- cs,
          id in @ours,
          kind <- [:persist, :restore],
          {op, round} <- Enum.with_index(ops(c, kind), 1),
          event <- Map.get(op, :long_events, []) do
        "* #{fmt_int(n)} rows, #{name}, #{kind} of round #{round}: #{event}"
      end

    body = if lines == [], do: "None.", else: Enum.join(lines, "\n")
    "## Long events during PropertyTable.Persist operations\n\n#{body}\n"
  end

  defp ratios_section(results) do
    rows =
      for %{n: n, contenders: cs} <- results,
          Keyword.has_key?(cs, :ours) and Keyword.has_key?(cs, :baseline) do
        ours = cs[:ours]
        base = cs[:baseline]
        t2f = cs[:tab2file]
        c0 = cs[:ours_c0]

        [
          fmt_int(n),
          ratio(median(base, :persist), median(ours, :persist)),
          ratio(median(base, :restore), median(ours, :restore)),
          "#{Float.round(size(ours) / size(base), 2)}",
          if(t2f, do: ratio(median(t2f, :restore), median(ours, :restore)), else: "—"),
          if(t2f, do: ratio(median(t2f, :persist), median(ours, :persist)), else: "—"),
          if(c0, do: ratio(median(base, :persist), median(c0, :persist)), else: "—"),
          ratio(median(base, :persist), median(cs[:ours_unchanged], :persist))
        ]
        |> then(&("| " <> Enum.join(&1, " | ") <> " |"))
      end

    """
    ## Ratios (medians; > 1 means PropertyTable.Persist is faster)

    | rows | persist speedup vs 0.2.3 | restore speedup vs 0.2.3 | file size / 0.2.3's | restore speedup vs file2tab | persist speedup vs tab2file | persist speedup, compression 0, vs 0.2.3 | unchanged persist speedup vs 0.2.3 |
    |---:|---:|---:|---:|---:|---:|---:|---:|
    #{Enum.join(rows, "\n")}
    """
  end

  defp targets_section(results) do
    checks =
      Enum.flat_map(results, fn %{n: n, contenders: cs} ->
        ours = cs[:ours]
        base = cs[:baseline]
        t2f = cs[:tab2file]
        big? = n >= 100_000

        [
          base &&
            check(
              "#{fmt_int(n)}: persist >= #{if big?, do: 6, else: 2}x faster than 0.2.3",
              median(base, :persist) / median(ours, :persist),
              if(big?, do: 6, else: 2),
              &"#{Float.round(&1, 2)}x"
            ),
          base &&
            check(
              "#{fmt_int(n)}: file size <= 0.2.3's",
              size(base) / size(ours),
              1,
              fn _ -> "#{fmt_bytes(size(ours))} vs #{fmt_bytes(size(base))}" end
            ),
          base && big? &&
            check(
              "#{fmt_int(n)}: restore >= 2.5x faster than 0.2.3",
              median(base, :restore) / median(ours, :restore),
              2.5,
              &"#{Float.round(&1, 2)}x"
            ),
          t2f &&
            check(
              "#{fmt_int(n)}: restore >= 1.2x faster than file2tab",
              median(t2f, :restore) / median(ours, :restore),
              1.2,
              &"#{Float.round(&1, 2)}x"
            ),
          n >= 1_000_000 &&
            check(
              "#{fmt_int(n)}: persist peak extra memory <= 16 MiB (the larger of erl and RSS)",
              16 * 1024 * 1024 / max(1, persist_peak(ours)),
              1,
              fn _ ->
                "erl #{fmt_bytes(max_of(ops(ours, :persist), :mem))}, RSS #{fmt_bytes(max_of(ops(ours, :persist), :rss))}"
              end
            ),
          n >= 1_000_000 &&
            check(
              "#{fmt_int(n)}: restore peak extra memory beyond the table <= 32 MiB (the larger of erl and RSS)",
              32 * 1024 * 1024 / max(1, max(beyond_table(ours, :mem), beyond_table(ours, :rss))),
              1,
              fn _ ->
                "erl #{fmt_bytes(beyond_table(ours, :mem))}, RSS #{fmt_bytes(beyond_table(ours, :rss))}"
              end
            ),
          cs[:ours_unchanged] &&
            check(
              "#{fmt_int(n)}: unchanged persist writes 0 bytes (files untouched, checked every round)",
              if(max_of(ops(cs[:ours_unchanged], :persist), :written) == 0, do: 1, else: 0),
              1,
              fn _ ->
                "VM-wide write_bytes at most #{max_of(ops(cs[:ours_unchanged], :persist), :written)} B; #{fmt_ms(median(cs[:ours_unchanged], :persist))} ms"
              end
            ),
          check(
            "#{fmt_int(n)}: no long_schedule >= 10 ms, no long_gc >= 50 ms (ours, persist and restore)",
            if(long_events(ours) == 0, do: 1, else: 0),
            1,
            fn _ -> "#{long_events(ours)} events" end
          )
        ]
        |> Enum.filter(& &1)
      end)

    """
    ## Targets

    | target | result | met? |
    |---|---|---|
    #{Enum.join(checks, "\n")}
    """
  end

  defp check(label, value, threshold, describe) do
    "| #{label} | #{describe.(value)} | #{if value >= threshold, do: "yes", else: "**NO**"} |"
  end

  defp ops(%{ops: ops}, kind), do: ops |> Enum.map(&Map.get(&1, kind)) |> Enum.reject(&is_nil/1)

  defp persist_peak(c), do: max(max_of(ops(c, :persist), :mem), max_of(ops(c, :persist), :rss))

  # Largest restore peak of `key` (:mem or :rss) minus the restored table.
  defp beyond_table(c, key) do
    c |> ops(:restore) |> Enum.map(&max(Map.fetch!(&1, key) - &1.table_bytes, 0)) |> Enum.max()
  end

  defp long_events(c) do
    ops = ops(c, :persist) ++ ops(c, :restore)
    sum_of(ops, :long_schedule) + sum_of(ops, :long_gc)
  end

  defp median(c, kind), do: c |> ops(kind) |> Enum.map(& &1.ms) |> median()
  defp size(%{ops: ops}), do: List.last(ops).size

  defp timing(ops) do
    times = Enum.map(ops, & &1.ms)
    "#{fmt_ms(median(times))} (#{fmt_ms(Enum.min(times))}–#{fmt_ms(Enum.max(times))})"
  end

  defp max_of(ops, key), do: ops |> Enum.map(&Map.fetch!(&1, key)) |> Enum.max(fn -> 0 end)
  defp sum_of(ops, key), do: ops |> Enum.map(&Map.fetch!(&1, key)) |> Enum.sum()

  def median(list) do
    sorted = Enum.sort(list)
    len = length(sorted)

    if rem(len, 2) == 1,
      do: Enum.at(sorted, div(len, 2)),
      else: (Enum.at(sorted, div(len, 2) - 1) + Enum.at(sorted, div(len, 2))) / 2
  end

  defp ratio(a, b), do: "#{Float.round(a / b, 2)}x"

  def fmt_ms(ms) when ms >= 100, do: "#{round(ms)}"
  def fmt_ms(ms) when ms >= 10, do: :erlang.float_to_binary(ms / 1, decimals: 1)
  def fmt_ms(ms), do: :erlang.float_to_binary(ms / 1, decimals: 2)

  def fmt_bytes(b) when b >= 1024 * 1024, do: "#{Float.round(b / 1024 / 1024, 1)} MiB"
  def fmt_bytes(b) when b >= 1024, do: "#{Float.round(b / 1024, 1)} KiB"
  def fmt_bytes(b), do: "#{b} B"

  def fmt_int(n) do
    n
    |> Integer.to_string()
    |> String.reverse()
    |> String.replace(~r/(\d{3})(?=\d)/, "\\1,")
    |> String.reverse()
  end

  def log(msg), do: IO.puts(:stderr, msg)

  ## Profile: where our persist and restore spend their time

  defp profile_section(n, config) do
    log("== profile at #{n} rows")
    source = Data.new_table(:persist_bench_source, n, config.seed)
    dir = Path.join(config.dir, "profile")
    opts = [data_directory: dir, table_name: "t"]
    Persist.persist_to_disk!(source, opts)

    persist =
      PersistBench.Profile.persist_phases(source, Path.join(dir, "t"), config.runs, config.seed)

    restore = PersistBench.Profile.restore_phases(Path.join(dir, "t"), config.runs)
    eprof = PersistBench.Profile.eprof(source, opts)
    :ets.delete(source)
    File.rm_rf!(dir)

    """
    ## Where the time goes (#{fmt_int(n)} rows, default options)

    The library's steps replayed with `PropertyTable.Persist.Native` (the NIF) and timed one
    by one; each figure is the median over #{config.runs} runs of the summed time of that
    step. NIF calls run on dirty I/O schedulers.

    #{PersistBench.Profile.phases_table("persist", persist)}
    #{PersistBench.Profile.phases_table("restore", restore)}
    `:eprof` over one real `persist_to_disk/2` and one real `restore_from_disk/2`
    (functions with >= 2% of the time; tracing inflates per-call costs of small functions):

    #{eprof}
    """
  end

  ## Sweeps

  defp sweep_sections(n, config) do
    log("== sweeps at #{n} rows")
    source = Data.new_table(:persist_bench_source, n, config.seed)
    dir = Path.join(config.dir, "sweep")
    base_dir = Path.join(dir, "baseline")
    Baseline.persist(source, base_dir)
    base_size = File.stat!(Baseline.stable_path(base_dir)).size

    levels =
      for level <- 0..9 do
        log("   compression #{level}")
        sweep_point(source, dir, config.runs, [compression: level], base_dir)
      end

    chunks =
      for chunk <- [500, 1000, 2000, 4000, 8000, 16000] do
        log("   chunk_size #{chunk}")
        sweep_point(source, dir, config.runs, [chunk_size: chunk], base_dir)
      end

    dump = Path.join(dir, "chunks.bin")
    dump_chunks(source, dump, Options.defaults()[:chunk_size])
    zstd = PersistBench.ZstdLevels.run(dump, base_size)
    :ets.delete(source)
    File.rm_rf!(dir)

    level_rows =
      Enum.map(levels, fn p ->
        "| #{p.opts[:compression]} | #{fmt_bytes(p.size)} | #{Float.round(p.size / base_size, 3)} | #{fmt_ms(p.persist)} | #{fmt_ms(p.baseline)} | #{Float.round(p.baseline / p.persist, 2)}x | #{fmt_ms(p.restore)} |"
      end)

    chunk_rows =
      Enum.map(chunks, fn p ->
        "| #{p.opts[:chunk_size]} | #{fmt_ms(p.persist)} | #{fmt_ms(p.restore)} | #{fmt_bytes(p.size)} | #{fmt_bytes(p.persist_mem)} / #{fmt_bytes(p.persist_rss)} | #{fmt_bytes(p.restore_mem)} / #{fmt_bytes(p.restore_rss)} |"
      end)

    [
      """
      ## Compression levels (#{fmt_int(n)} rows, default chunk_size #{Options.defaults()[:chunk_size]}, through the public API)

      0.2.3's algorithm on the same table writes #{fmt_bytes(base_size)}; it was run before
      each measured persist (medians of #{config.runs} runs; every persist writes a new file).

      | compression | file size | size / 0.2.3's | persist ms | 0.2.3 persist ms | persist speedup vs 0.2.3 | restore ms |
      |---:|---:|---:|---:|---:|---:|---:|
      #{Enum.join(level_rows, "\n")}
      """,
      """
      ## Chunk size (#{fmt_int(n)} rows, default compression #{Options.defaults()[:compression]}, through the public API)

      Medians of #{config.runs} runs; memory: largest peak, erl / RSS (restore: including the
      restored table).

      | chunk_size | persist ms | restore ms | file size | persist peak | restore peak |
      |---:|---:|---:|---:|---:|---:|
      #{Enum.join(chunk_rows, "\n")}
      """,
      zstd
    ]
  end

  defp sweep_point(source, dir, runs, extra, base_dir) do
    opts = [data_directory: dir, table_name: "sweep"] ++ extra
    File.rm_rf!(Path.join(dir, "sweep"))
    Persist.persist_to_disk!(source, opts)

    results =
      for _ <- 1..runs do
        # Changed rows (a seed never used before), so that every persist writes a new file.
        Data.mutate(source, 0.001, System.unique_integer([:positive]) + 1_000_000)
        b = measure(fn -> Baseline.persist(source, base_dir) end)
        p = measure(fn -> Persist.persist_to_disk!(source, opts) end)

        r =
          measure(
            fn ->
              Persist.restore_from_disk!(:persist_bench_restored, opts)
              :persist_bench_restored
            end,
            fn t -> :ets.info(t, :memory) * :erlang.system_info(:wordsize) end
          )

        {b, p, r}
      end

    bs = Enum.map(results, &elem(&1, 0))
    ps = Enum.map(results, &elem(&1, 1))
    rs = Enum.map(results, &elem(&1, 2))

    %{
      opts: extra,
      size: File.stat!(Path.join([dir, "sweep", "data.ptable"])).size,
      persist: median(Enum.map(ps, & &1.ms)),
      baseline: median(Enum.map(bs, & &1.ms)),
      restore: median(Enum.map(rs, & &1.ms)),
      persist_mem: max_of(ps, :mem),
      persist_rss: max_of(ps, :rss),
      restore_mem: max_of(rs, :mem),
      restore_rss: max_of(rs, :rss)
    }
  end

  # The raw chunks the library would compress: <<raw_len::32-little, rows::32-little, raw>>...
  defp dump_chunks(table, path, chunk_size) do
    spec = [{{:"$1", :"$2", :_}, [], [{{:"$1", :"$2"}}]}]

    chunks =
      Stream.unfold(:ets.select(table, spec, chunk_size), fn
        :"$end_of_table" -> nil
        {pairs, cont} -> {pairs, :ets.select(cont)}
      end)
      |> Enum.map(fn pairs ->
        raw = :erlang.term_to_binary(pairs)
        [<<byte_size(raw)::32-little, length(pairs)::32-little>>, raw]
      end)

    File.write!(path, chunks)
  end

  defp notes_section do
    """
    ## Notes

    * The 0.2.3 baseline (`bench/baseline_persist.ex`) follows the algorithm described in the
      issue: `:ets.foldl` to a list, `term_to_binary(compressed: 6)`, MD5, one
      `File.write!(tmp, data, [:sync])`, renames; restore inserts rows one by one with a
      fresh timestamp each. It fsyncs the file but not the directory.
    * `:ets.tab2file` is called with `sync: true` and writes its file in place (no
      tmp + rename); `:ets.file2tab` runs with default options (no `verify: true`).
    * The floor writes in place too and does no checksumming: nothing crash-safe can beat it.
    * PropertyTable.Persist compresses, hashes and writes on a writer thread of the NIF while
      the calling process reads and encodes the next chunk, so its persist uses two cores
      when it can get them; the others use one. A table of one chunk (1,000 rows here) is
      written by the commit call itself, with no thread. On restore, a reader thread of the
      NIF reads, decompresses and decodes the next chunks into rows and sends them to the
      calling process, which only inserts; a file of one chunk is decoded by a NIF call.
    * Each PropertyTable.Persist long event above is listed with its process; the memory
      sampler wakes a second scheduler every millisecond (`--sample-ms` changes that).
    * PropertyTable.Persist additionally verifies the previous stable file completely (every
      chunk decompressed and checked against its hash, the digest) before keeping it as the
      backup, fsyncs the directory, and on restore verifies the whole file the same way
      before touching the table, then decompresses it again while streaming the rows.
    * RSS peaks are growth of the OS resident set; allocators keep freed memory, so after the
      warm-up round they undercount memory that is reused rather than newly touched.
    """
  end
end

defmodule PersistBench.Profile do
  @moduledoc false
  alias PropertyTable.Persist.Native

  @row_spec [{{:"$1", :"$2", :_}, [], [{{:"$1", :"$2"}}]}]

  # Replays persist_to_disk/2's steps with timers around each.
  def persist_phases(table, table_dir, runs, seed) do
    runs =
      for run <- 1..runs do
        # A changed table: an unchanged one would take the compare-only path.
        PersistBench.Data.mutate(table, 0.001, seed * 7919 + run)
        :erlang.garbage_collect()

        t = fn fun ->
          t0 = System.monotonic_time(:microsecond)
          r = fun.()
          {System.monotonic_time(:microsecond) - t0, r}
        end

        defaults = PropertyTable.Persist.Options.defaults()
        {level, chunk} = {defaults[:compression], defaults[:chunk_size]}
        rows = :ets.info(table, :size)

        {begin_us, {:ok, session}} =
          t.(fn ->
            Native.persist_begin(table_dir, %{
              level: level,
              chunk_rows: chunk,
              expected_rows: rows,
              max_quarantined: defaults[:max_quarantined],
              log_compaction: defaults[:log_compaction],
              # A full write: the profile times the whole pipeline, not a log append.
              full: true
            })
          end)

        :ets.safe_fixtable(table, true)
        {sel0, first} = t.(fn -> :ets.select(table, @row_spec, chunk) end)

        {acc, _} =
          loop(
            first,
            %{select: sel0, encode: 0, append: 0, chunks: 0},
            fn pairs, acc ->
              {enc, bin} = t.(fn -> :erlang.term_to_binary(pairs) end)
              {app, :ok} = t.(fn -> Native.persist_append(session, bin, length(pairs)) end)
              %{acc | encode: acc.encode + enc, append: acc.append + app, chunks: acc.chunks + 1}
            end,
            t
          )

        :ets.safe_fixtable(table, false)
        {commit, :ok} = t.(fn -> Native.persist_commit(session, false) end)
        Native.persist_close(session)

        [
          {"persist_begin (NIF: lock, read old headers, create tmp)", begin_us},
          {":ets.select, #{acc.chunks} chunks", acc.select},
          {":erlang.term_to_binary per chunk", acc.encode},
          {"persist_append (NIF: copy to the writer thread's queue, started at the 2nd chunk; waits when full)",
           acc.append},
          {"persist_commit (NIF: wait for the writer thread, or write a lone chunk (zstd, xxh3, crc32, write); header, fsync, verify old stable, renames, dir fsync)",
           commit}
        ]
      end

    summarize(runs)
  end

  defp loop(:"$end_of_table", acc, _fun, _t), do: {acc, nil}

  defp loop({pairs, cont}, acc, fun, t) do
    acc = fun.(pairs, acc)
    {sel, next} = t.(fn -> :ets.select(cont) end)
    loop(next, %{acc | select: acc.select + sel}, fun, t)
  end

  def restore_phases(table_dir, runs) do
    runs =
      for _ <- 1..runs do
        t = fn fun ->
          t0 = System.monotonic_time(:microsecond)
          r = fun.()
          {System.monotonic_time(:microsecond) - t0, r}
        end

        {open_us, reader} = t.(fn -> restore_open(table_dir) end)

        target = :ets.new(:profile_restored, [:set, :public])
        ts = System.monotonic_time()

        acc =
          Enum.reduce_while(
            Stream.repeatedly(fn -> nil end),
            %{rows: 0, insert: 0},
            fn _, acc ->
              {rows_us, result} = t.(fn -> Native.restore_rows(reader, ts, false) end)
              acc = %{acc | rows: acc.rows + rows_us}

              case result do
                :done ->
                  {:halt, acc}

                {more, rows} when more in [:ok, :last] ->
                  {ins, true} = t.(fn -> :ets.insert(target, rows) end)
                  acc = %{acc | insert: acc.insert + ins}
                  if more == :ok, do: {:cont, acc}, else: {:halt, acc}
              end
            end
          )

        Native.restore_close(reader)
        :ets.delete(target)

        [
          {"restore_open (NIF: open and verify: read, CRC-check, zstd decompress and xxh3 every frame, digest)",
           open_us},
          {"restore_rows per chunk (NIF: read, zstd decompress, xxh3, decode into rows; " <>
             "a thread does this during a real restore of several chunks)", acc.rows},
          {":ets.insert per chunk", acc.insert}
        ]
      end

    summarize(runs)
  end

  defp restore_open(table_dir) do
    max = PropertyTable.Persist.Options.defaults()[:max_quarantined]

    %Native.RestoreOpen{file: {:ok, %Native.Source{reader: reader}}} =
      Native.restore_open(table_dir, max)

    reader
  end

  # {label, median ms, min ms} per step.
  defp summarize(runs) do
    [first | _] = runs

    for {{label, _}, i} <- Enum.with_index(first) do
      us = Enum.map(runs, fn run -> elem(Enum.at(run, i), 1) end)
      {label, PersistBench.median(us) / 1000, Enum.min(us) / 1000}
    end
  end

  def phases_table(what, phases) do
    total = phases |> Enum.map(&elem(&1, 1)) |> Enum.sum()
    total_min = phases |> Enum.map(&elem(&1, 2)) |> Enum.sum()

    rows =
      Enum.map(phases, fn {label, ms, min} ->
        "| #{label} | #{PersistBench.fmt_ms(ms)} | #{PersistBench.fmt_ms(min)} | #{round(100 * ms / total)}% |"
      end)

    """
    | #{what} step | median ms | min ms | share of median |
    |---|---:|---:|---:|
    #{Enum.join(rows, "\n")}
    | sum | #{PersistBench.fmt_ms(total)} | #{PersistBench.fmt_ms(total_min)} | |
    """
  end

  def eprof(table, opts) do
    {:ok, _} = :eprof.start()

    out =
      for {label, fun} <- [
            {"persist_to_disk/2 (changed table)",
             fn -> PropertyTable.Persist.persist_to_disk!(table, opts) end},
            {"restore_from_disk/2",
             fn ->
               PropertyTable.Persist.restore_from_disk!(:persist_bench_eprof, opts)
               :ets.delete(:persist_bench_eprof)
             end}
          ] do
        PersistBench.Data.mutate(table, 0.001, 4242)
        {:ok, _} = :eprof.profile([], fun)
        # eprof prints; capture it via a group leader swap.
        text = capture(fn -> :eprof.analyze(:total, sort: :time) end)
        "#{label}:\n\n```\n#{top(text)}\n```\n"
      end

    :eprof.stop()
    Enum.join(out, "\n")
  end

  defp capture(fun) do
    # eprof's server does the printing.
    {:ok, io} = StringIO.open("")
    server = Process.whereis(:eprof)
    {:group_leader, old} = Process.info(server, :group_leader)
    Process.group_leader(server, io)

    try do
      fun.()
    after
      Process.group_leader(server, old)
    end

    {:ok, {_, text}} = StringIO.close(io)
    text
  end

  # Header, the lines with >= 2% of the time, and the total.
  defp top(text) do
    lines = String.split(text, "\n", trim: true)

    rows =
      Enum.filter(lines, fn line ->
        case Regex.run(~r/^\S.*?\s+\d+\s+([\d.]+)\s+\d+\s+\[/, line) do
          [_, pct] -> String.to_float(pct) >= 2.0
          _ -> false
        end
      end)

    head = Enum.find(lines, "", &String.starts_with?(&1, "FUNCTION"))
    total = Enum.find(lines, "", &String.starts_with?(&1, "Total"))
    Enum.join([head | rows] ++ [total], "\n")
  end
end

defmodule PersistBench.ZstdLevels do
  @moduledoc false
  # Builds and runs bench/zstd_levels (a small Rust program using the same zstd crate as the
  # library) on dumped chunks.

  def run(dump, baseline_size) do
    manifest = Path.join([__DIR__, "zstd_levels", "Cargo.toml"])
    target = Path.join([__DIR__, "..", "target", "bench_zstd_levels"]) |> Path.expand()
    cargo = System.find_executable("cargo") || Path.expand("~/.cargo/bin/cargo")

    if File.exists?(cargo) do
      PersistBench.log("   raw zstd levels (cargo run bench/zstd_levels)")

      case System.cmd(
             cargo,
             [
               "run",
               "--quiet",
               "--release",
               "--manifest-path",
               manifest,
               "--",
               dump,
               "#{baseline_size}"
             ],
             env: [{"CARGO_TARGET_DIR", target}],
             stderr_to_stdout: true
           ) do
        {out, 0} ->
          out

        {out, status} ->
          "## Raw zstd levels\n\nbench/zstd_levels failed (#{status}):\n\n```\n#{out}\n```\n"
      end
    else
      "## Raw zstd levels\n\nSkipped: cargo not found.\n"
    end
  end
end

PersistBench.main(System.argv())
