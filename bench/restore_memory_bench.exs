# Peak memory of a restore with the change log at its threshold, in a VM that did nothing
# before: the growth of the OS process's peak resident set (VmHWM after
# `5 > /proc/self/clear_refs`, native allocations included) beyond the restored table's ETS
# memory. The restore builds the directory's change index (kept for the next persist), so
# the figure counts it. Then the peak of a one-row persist after that restore (the index
# is there already: the growth is what the persist adds).
#
#     MIX_ENV=prod mix run bench/restore_memory_bench.exs build DIR [--size 1000000]
#     MIX_ENV=prod mix run bench/restore_memory_bench.exs restore DIR logged|fresh
#
# `build` writes DIR/logged (a full file, then 1% persists while the next stays under the
# default :log_compaction's bounds, as incremental_bench.exs grows its log) and DIR/fresh
# (the same table, one full file); each `restore` must run in a VM of its own, and works on
# a copy of the directory, which it deletes.

Code.require_file("support/data.ex", __DIR__)

defmodule RestoreMemoryBench do
  alias PropertyTable.Persist
  alias PersistBench.Data

  @log_compaction 0.25

  def main(["build", dir | rest]) do
    {o, _, _} = OptionParser.parse(rest, strict: [size: :integer])
    n = o[:size] || 1_000_000
    table = Data.new_table(:mem, n, 1)
    File.rm_rf!(dir)
    opts = [data_directory: dir, table_name: "logged", log_compaction: @log_compaction]
    Persist.persist_to_disk!(table, opts)
    base = File.stat!(Path.join([dir, "logged", "data.ptable"])).size
    log = Path.join([dir, "logged", "data.ptable.log"])
    limits = {@log_compaction * base, @log_compaction * n}
    persists = grow(table, opts, log, limits, {0, 0}, 0)
    Persist.persist_to_disk!(table, data_directory: dir, table_name: "fresh", log_compaction: 0)

    IO.puts(
      "#{n} rows: base #{kib(base)}, log #{kib(File.stat!(log).size)} after #{persists} 1% persists"
    )
  end

  def main(["restore", dir, name]) do
    # The one-row persist at the end changes the directory: it all runs on a copy, so DIR
    # stays as `build` left it and every run measures the same files.
    copy = Path.join(dir, "#{name}.run")
    File.rm_rf!(copy)
    File.cp_r!(Path.join(dir, name), copy)

    try do
      measure(name, data_directory: dir, table_name: "#{name}.run")
    after
      File.rm_rf!(copy)
    end
  end

  defp measure(name, opts) do
    :erlang.garbage_collect()
    rss0 = status("VmRSS")
    File.write!("/proc/self/clear_refs", "5")
    t0 = System.monotonic_time(:millisecond)
    Persist.restore_from_disk!(:restored, opts)
    ms = System.monotonic_time(:millisecond) - t0
    table = :ets.info(:restored, :memory) * :erlang.system_info(:wordsize)
    peak = status("VmHWM") - rss0

    IO.puts(
      "restore #{name}: #{ms} ms, peak RSS growth #{kib(peak)}, table #{kib(table)}, beyond the table #{kib(peak - table)}"
    )

    Data.mutate(:restored, 0.0, 1)
    :erlang.garbage_collect()
    rss1 = status("VmRSS")
    File.write!("/proc/self/clear_refs", "5")
    Persist.persist_to_disk!(:restored, opts ++ [log_compaction: @log_compaction])
    IO.puts("one-row persist after it: peak RSS growth #{kib(status("VmHWM") - rss1)}")
  end

  defp grow(table, opts, log, {max_bytes, max_ops} = limits, {last, ops}, i) do
    changed = Data.mutate(table, 0.01, 90_000 + i)
    Persist.persist_to_disk!(table, opts)
    size = if File.exists?(log), do: File.stat!(log).size, else: 0
    ops = ops + changed

    if size + 1.5 * (size - last) < max_bytes and ops + 1.5 * changed < max_ops,
      do: grow(table, opts, log, limits, {size, ops}, i + 1),
      else: i + 1
  end

  defp status(key) do
    [_, kb] = Regex.run(~r/^#{key}:\s+(\d+) kB$/m, File.read!("/proc/self/status"))
    String.to_integer(kb) * 1024
  end

  defp kib(b), do: "#{Float.round(b / 1024 / 1024, 1)} MiB"
end

RestoreMemoryBench.main(System.argv())
