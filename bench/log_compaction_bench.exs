# What `:log_compaction` costs on each side: bytes written by persists over a whole cycle
# (log appends up to the threshold, then the compaction's full file) against a restore with
# the log at its threshold.
#
#     ELIXIR_ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none" \
#       MIX_ENV=prod mix run bench/log_compaction_bench.exs [--size 100000] [--seeds 1,2] \
#       [--thresholds 0.5,0.3,0.25,0.2] [--runs 7]
#
# Per data set (incremental_bench.exs's "realistic" and "binary"), seed and threshold: from
# a full file, 1% persists (bench/support/data.ex's `mutate/3`) until one compacts; the
# log as it was before that persist is the log at its threshold. Written: `wchar` growth
# of /proc/self/io over the cycle, per persist, as a fraction of a full file. Restore: that
# log and its base vs a fresh file of the table, interleaved, medians of wall and CPU time
# (`:erlang.statistics(:runtime)`, every VM thread: what to compare on a shared machine;
# the ERL options keep idle schedulers from spinning into it).

Code.require_file("support/data.ex", __DIR__)

defmodule LogCompactionBench do
  alias PropertyTable.Persist
  alias PersistBench.Data

  def main(argv) do
    strict = [size: :integer, seeds: :string, thresholds: :string, runs: :integer]
    {o, _, _} = OptionParser.parse(argv, strict: strict)
    n = o[:size] || 100_000
    seeds = (o[:seeds] || "1") |> String.split(",") |> Enum.map(&String.to_integer/1)
    ts = (o[:thresholds] || "0.5,0.3,0.25,0.2") |> String.split(",") |> Enum.map(&num/1)
    runs = o[:runs] || 7
    IO.puts("load at start: #{File.read!("/proc/loadavg") |> String.trim()}\n")

    IO.puts(
      "| rows, data, seed | log_compaction | cycle (1% persists) | log at threshold (of base bytes) | written per persist (of a full file) | restore ms, log vs fresh | ratio | CPU ms, log vs fresh | CPU ratio |"
    )

    IO.puts("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    for mix <- [:realistic, :binary], seed <- seeds, t <- ts, do: run(n, mix, seed, t, runs)
    IO.puts("\nload at end: #{File.read!("/proc/loadavg") |> String.trim()}")
  end

  defp num(s), do: elem(Float.parse(s), 0)

  defp run(n, mix, seed, t, runs) do
    table = Data.new_table(:inc, n, seed)
    if mix == :binary, do: binarize(table, seed)
    root = Path.join(System.tmp_dir!(), "compaction_bench_#{System.unique_integer([:positive])}")
    dir = Path.join(root, "logged")
    saved_log = Path.join(root, "saved.log")
    opts = [data_directory: root, table_name: "logged", log_compaction: t]
    Persist.persist_to_disk!(table, opts)
    base = File.stat!(Path.join(dir, "data.ptable")).size
    {persists, written} = cycle(table, opts, dir, saved_log, 0, 0)

    # The log at its threshold, over its base (rotated to the backup by the compaction).
    at = Path.join(root, "at_threshold")
    File.mkdir_p!(at)
    File.cp!(Path.join(dir, "data.ptable.backup"), Path.join(at, "data.ptable"))
    File.cp!(saved_log, Path.join(at, "data.ptable.log"))
    log = File.stat!(saved_log).size
    fresh = [data_directory: root, table_name: "fresh", log_compaction: 0]
    Persist.persist_to_disk!(table, fresh)
    logged = [data_directory: root, table_name: "at_threshold"]
    rs = for _ <- 1..runs, do: {restore(logged), restore(fresh)}
    [lw, lc] = for i <- 0..1, do: median(Enum.map(rs, &elem(elem(&1, 0), i)))
    [fw, fc] = for i <- 0..1, do: median(Enum.map(rs, &elem(elem(&1, 1), i)))

    IO.puts(
      "| #{n} #{mix} #{seed} | #{t} | #{persists} | #{kib(log)} (#{r(log / base)}) | #{kib(div(written, persists))} (#{r(written / persists / base, 3)}) | #{ms(lw)} vs #{ms(fw)} | #{r(lw / fw)}x | #{lc} vs #{fc} | #{r(lc / max(fc, 1))}x |"
    )

    File.rm_rf!(root)
    :ets.delete(table)
  end

  # 1% persists until one compacts (the log is gone: renamed to the backup log); the log
  # before each persist is kept. Returns the persists and the bytes they wrote.
  defp cycle(table, opts, dir, saved_log, i, written) do
    log = Path.join(dir, "data.ptable.log")
    if File.exists?(log), do: File.cp!(log, saved_log)
    Data.mutate(table, 0.01, 90_000 + i)
    w0 = wchar()
    Persist.persist_to_disk!(table, opts)
    written = written + wchar() - w0

    if File.exists?(log),
      do: cycle(table, opts, dir, saved_log, i + 1, written),
      else: {i + 1, written}
  end

  defp restore(opts) do
    :erlang.garbage_collect()
    {c0, _} = :erlang.statistics(:runtime)
    t0 = System.monotonic_time(:microsecond)
    Persist.restore_from_disk!(:restored, opts)
    us = System.monotonic_time(:microsecond) - t0
    {c1, _} = :erlang.statistics(:runtime)
    :ets.delete(:restored)
    {us, c1 - c0}
  end

  defp binarize(table, seed) do
    :rand.seed(:exsss, {seed, 3, 5})
    :ets.foldl(fn {k, _, t}, _ -> :ets.insert(table, {k, :rand.bytes(100), t}) end, :ok, table)
  end

  defp wchar do
    [_, w] = Regex.run(~r/^wchar: (\d+)$/m, File.read!("/proc/self/io"))
    String.to_integer(w)
  end

  defp median(l), do: Enum.at(Enum.sort(l), div(length(l), 2))
  defp ms(us), do: Float.round(us / 1000, 1)
  defp r(x, d \\ 2), do: Float.round(x / 1, d)
  defp kib(b), do: "#{Float.round(b / 1024, 1)} KiB"
end

LogCompactionBench.main(System.argv())
