# Incremental persistence (change log) against today's full rewrite (`log_compaction: 0`).
#
#     MIX_ENV=prod mix run bench/incremental_bench.exs [--sizes 100000,1000000] [--runs 5]
#                                                      [--seeds 1,2] [--log-compaction 0.25]
#                                                      [--restore-only]
#
# With `ELIXIR_ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none"` the CPU times (the
# VM's, all threads: `:erlang.statistics(:runtime)`) leave out schedulers spinning while
# idle; they are what to compare on a machine shared with other work, where wall times
# depend on what else runs.
#
# Per size and data set ("realistic": bench/support/data.ex's mix with the seed; "binary":
# the same keys with every value a random 100-byte binary), interleaved per round: full
# vs incremental for a one-row change, 0.1% of the rows changed, one row deleted + one
# inserted, and an unchanged persist. Bytes: growth of `wchar` (bytes handed to write(2),
# VM wake-up pipes included) and `write_bytes` (pages) of /proc/self/io. Restore: a log
# built by 1% persists until the next would pass the threshold (`:log_compaction`, its
# bytes or its operations) vs a freshly compacted file. Peak memory: VmHWM of
# /proc/self/status after `5 > /proc/self/clear_refs` minus VmRSS before (the OS process:
# native allocations included), restores minus the restored table's ETS memory. The first
# persist of a directory builds its change index, which the VM keeps: its peak counts the
# index, as does a restore's (the restored index is built while the old one is held).

Code.require_file("support/data.ex", __DIR__)

defmodule IncrementalBench do
  alias PropertyTable.Persist
  alias PersistBench.Data

  # The library's default `:log_compaction`.
  @log_compaction 0.25

  def main(argv) do
    strict = [
      sizes: :string,
      runs: :integer,
      seeds: :string,
      log_compaction: :float,
      restore_only: :boolean
    ]

    {o, _, _} = OptionParser.parse(argv, strict: strict)

    sizes = parse(o[:sizes] || "100000")
    seeds = parse(o[:seeds] || "1")
    runs = o[:runs] || 5
    threshold = o[:log_compaction] || @log_compaction
    IO.puts("load at start: #{File.read!("/proc/loadavg") |> String.trim()}")
    IO.puts("log_compaction: #{threshold}")

    for n <- sizes, seed <- seeds, mix <- [:realistic, :binary] do
      run(n, seed, mix, runs, threshold, o[:restore_only] || false)
    end

    IO.puts("load at end: #{File.read!("/proc/loadavg") |> String.trim()}")
  end

  defp parse(s), do: s |> String.split(",") |> Enum.map(&String.to_integer/1)

  # `--restore-only`: the table as generated, its restores alone (no persist cases).
  defp run(n, seed, mix, runs, threshold, restore_only?) do
    table = Data.new_table(:inc, n, seed)
    if mix == :binary, do: binarize(table, seed)
    dir = Path.join(System.tmp_dir!(), "inc_bench_#{System.unique_integer([:positive])}")
    full = [data_directory: dir, table_name: "full", log_compaction: 0]
    Persist.persist_to_disk!(table, full)
    base = File.stat!(Path.join([dir, "full", "data.ptable"])).size

    if restore_only? do
      IO.puts(
        "\n### #{n} rows, #{mix}, seed #{seed} (full file #{kib(base)}; medians of #{runs})"
      )
    else
      persists(table, {n, seed, mix}, dir, full, base, runs, threshold)
    end

    restore(table, dir, base, runs, threshold)
    File.rm_rf!(dir)
    :ets.delete(table)
  end

  defp persists(table, {n, seed, mix}, dir, full, base, runs, threshold) do
    inc = [data_directory: dir, table_name: "inc", log_compaction: threshold]
    first = measure(fn -> Persist.persist_to_disk!(table, inc) end)

    cases = [
      {"one row changed", fn r -> Data.mutate(table, 0.0, seed * 1000 + r) end},
      {"0.1% changed", fn r -> Data.mutate(table, 0.001, seed * 1000 + r) end},
      {"1 deleted + 1 inserted", fn r -> del_ins(table, r) end},
      {"unchanged", fn _ -> :ok end}
    ]

    results =
      for r <- 1..runs, {label, change} <- cases, {who, opts} <- [full: full, inc: inc] do
        # Both contenders see the same change: apply once per case, persist both.
        if who == :full, do: change.(r)
        {label, who, measure(fn -> Persist.persist_to_disk!(table, opts) end)}
      end

    IO.puts(
      "\n### #{n} rows, #{mix}, seed #{seed} (full file #{kib(base)}; medians of #{runs})\n"
    )

    IO.puts(
      "| case | full ms (CPU ms) | full wchar / write_bytes | incr ms (CPU ms) | incr wchar / write_bytes | incr peak RSS growth |"
    )

    IO.puts("|---|---:|---:|---:|---:|---:|")

    for {label, _} <- cases do
      [f, i] = for w <- [:full, :inc], do: med(results, label, w)

      IO.puts(
        "| #{label} | #{ms(f.us)} (#{f.cpu}) | #{kib(f.wchar)} / #{kib(f.wb)} | #{ms(i.us)} (#{i.cpu}) | #{kib(i.wchar)} / #{kib(i.wb)} | #{kib(i.hwm)} |"
      )
    end

    IO.puts("""

    First persist of the directory (a full write that builds the change index): \
    #{ms(first.us)} ms, peak RSS growth #{kib(first.hwm)}.\
    """)
  end

  defp restore(table, dir, base, runs, threshold) do
    opts = [data_directory: dir, table_name: "logged", log_compaction: threshold]
    Persist.persist_to_disk!(table, opts ++ [log_compaction: 0])
    log = Path.join([dir, "logged", "data.ptable.log"])
    fresh = [data_directory: dir, table_name: "fresh", log_compaction: 0]
    limits = {threshold * base, threshold * :ets.info(table, :size)}
    {persists, ops} = grow(table, opts, log, limits, {0, 0}, 0)
    Persist.persist_to_disk!(table, fresh)
    log_size = File.stat!(log).size
    peak = measure(fn -> Persist.persist_to_disk!(table, opts) end)

    rs =
      for _ <- 1..runs, o <- [opts, fresh] do
        measure(fn ->
          Persist.restore_from_disk!(:inc_restored, o)
          mem = :ets.info(:inc_restored, :memory) * :erlang.system_info(:wordsize)
          :ets.delete(:inc_restored)
          mem
        end)
      end

    {logged, fr} = rs |> Enum.with_index() |> Enum.split_with(fn {_, i} -> rem(i, 2) == 0 end)
    l = medm(Enum.map(logged, &elem(&1, 0)))
    f = medm(Enum.map(fr, &elem(&1, 0)))

    IO.puts("""

    Restore, log of #{persists} 1% persists, #{kib(log_size)} \
    (#{Float.round(log_size / base, 2)} of the base's bytes, \
    #{Float.round(ops / :ets.info(table, :size), 2)} of its rows): \
    #{ms(l.us)} ms vs fresh #{ms(f.us)} ms: ratio #{Float.round(l.us / f.us, 2)}x; \
    CPU #{l.cpu} vs #{f.cpu} ms: ratio #{Float.round(l.cpu / max(f.cpu, 1), 2)}x. \
    Peak RSS growth: unchanged persist with that log #{kib(peak.hwm)}, \
    restore with log #{kib(l.hwm_beyond)} beyond the table (fresh #{kib(f.hwm_beyond)}).
    """)
  end

  # 1% persists while the next one would stay under the threshold: the log's bytes (a
  # fraction of the base's) and its operations (of the base's rows; each persist's are at
  # most the rows it changed). Returns the persists and the rows they changed.
  defp grow(table, opts, log, {max_bytes, max_ops} = limits, {last, ops}, i) do
    changed = Data.mutate(table, 0.01, 90_000 + i)
    Persist.persist_to_disk!(table, opts)
    size = if File.exists?(log), do: File.stat!(log).size, else: 0
    ops = ops + changed

    if size + 1.5 * (size - last) < max_bytes and ops + 1.5 * changed < max_ops,
      do: grow(table, opts, log, limits, {size, ops}, i + 1),
      else: {i + 1, ops}
  end

  defp del_ins(table, r) do
    key = :ets.first(table)
    :ets.delete(table, key)
    :ets.insert(table, {["bench", "inserted#{r}"], r, System.monotonic_time()})
  end

  defp binarize(table, seed) do
    :rand.seed(:exsss, {seed, 3, 5})

    :ets.foldl(fn {k, _, t}, _ -> :ets.insert(table, {k, :rand.bytes(100), t}) end, :ok, table)
  end

  defp measure(fun) do
    :erlang.garbage_collect()
    {w0, b0} = io()
    rss0 = status("VmRSS")
    File.write("/proc/self/clear_refs", "5")
    {cpu0, _} = :erlang.statistics(:runtime)
    t0 = System.monotonic_time(:microsecond)
    res = fun.()
    us = System.monotonic_time(:microsecond) - t0
    {cpu1, _} = :erlang.statistics(:runtime)
    hwm = max(status("VmHWM") - rss0, 0)
    {w1, b1} = io()
    extra = if is_integer(res), do: res, else: 0

    %{
      us: us,
      cpu: cpu1 - cpu0,
      wchar: w1 - w0,
      wb: b1 - b0,
      hwm: hwm,
      hwm_beyond: max(hwm - extra, 0)
    }
  end

  defp io do
    t = File.read!("/proc/self/io")
    [_, w] = Regex.run(~r/^wchar: (\d+)$/m, t)
    [_, b] = Regex.run(~r/^write_bytes: (\d+)$/m, t)
    {String.to_integer(w), String.to_integer(b)}
  end

  defp status(key) do
    [_, kb] = Regex.run(~r/^#{key}:\s+(\d+) kB$/m, File.read!("/proc/self/status"))
    String.to_integer(kb) * 1024
  end

  defp med(results, label, who),
    do: medm(for {^label, ^who, m} <- results, do: m)

  defp medm(ms),
    do:
      Map.new(
        [:us, :cpu, :wchar, :wb, :hwm, :hwm_beyond],
        &{&1, median(Enum.map(ms, fn m -> m[&1] end))}
      )

  defp median(l), do: Enum.at(Enum.sort(l), div(length(l), 2))
  defp ms(us), do: Float.round(us / 1000, 2)
  defp kib(b), do: "#{Float.round(b / 1024, 1)} KiB"
end

IncrementalBench.main(System.argv())
