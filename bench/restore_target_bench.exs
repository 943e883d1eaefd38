# Restore time by target table: a new named table (what persist_bench.exs measures), a
# public table the calling process owns, and a public table owned by another process (its
# previous rows are then kept by a helper process, so that a killed caller leaves them
# whole). Each target holds the file's rows before every restore but the new one's.
#
#     MIX_ENV=prod mix run bench/restore_target_bench.exs [--sizes 1000,100000] [--runs 5]
#
# Prints the median (min-max) wall time in ms per size and target, after one warm-up run.
# Files go to a fresh temporary directory, removed afterwards.

Code.require_file("support/data.ex", __DIR__)

defmodule PersistBench.RestoreTarget do
  @moduledoc false

  alias PropertyTable.Persist

  def main(args) do
    {opts, _, _} = OptionParser.parse(args, strict: [sizes: :string, runs: :integer])
    sizes = opts |> Keyword.get(:sizes, "1000,100000") |> String.split(",")
    runs = Keyword.get(opts, :runs, 5)

    dir =
      Path.join(System.tmp_dir!(), "restore_target_bench_#{System.unique_integer([:positive])}")

    try do
      for size <- Enum.map(sizes, &String.to_integer/1), do: measure_size(size, runs, dir)
    after
      File.rm_rf!(dir)
    end
  end

  defp measure_size(size, runs, dir) do
    persist_opts = [data_directory: dir, table_name: "t#{size}"]
    source = PersistBench.Data.new_table(:restore_target_source, size, 1)
    Persist.persist_to_disk!(source, persist_opts)
    :ets.delete(source)

    for target <- [:new_table, :own_table, :other_owner] do
      times = for _ <- 0..runs, do: run(target, persist_opts)
      [_warm_up | measured] = times
      sorted = Enum.sort(measured)
      median = Enum.at(sorted, div(length(sorted), 2))

      IO.puts(
        "#{size} rows, #{target}: #{fmt(median)} ms (#{fmt(hd(sorted))}-#{fmt(List.last(sorted))})"
      )
    end
  end

  # Each run in a fresh process, like persist_bench.exs's workers.
  defp run(target, opts) do
    task = Task.async(fn -> timed_restore(target, opts) end)
    Task.await(task, :infinity)
  end

  defp timed_restore(:new_table, opts) do
    {us, :ok} = :timer.tc(fn -> Persist.restore_from_disk!(:restore_target_new, opts) end)
    us
  end

  defp timed_restore(:own_table, opts) do
    table = :ets.new(:restore_target_own, [:set, :public])
    :ok = Persist.restore_from_disk!(table, opts)
    {us, :ok} = :timer.tc(fn -> Persist.restore_from_disk!(table, opts) end)
    us
  end

  defp timed_restore(:other_owner, opts) do
    caller = self()

    owner =
      spawn_link(fn ->
        table = :ets.new(:restore_target_other, [:set, :public])
        send(caller, {:table, table})
        receive do: (:stop -> :ok)
      end)

    table = receive do: ({:table, table} -> table)
    :ok = Persist.restore_from_disk!(table, opts)
    {us, :ok} = :timer.tc(fn -> Persist.restore_from_disk!(table, opts) end)
    send(owner, :stop)
    us
  end

  defp fmt(us), do: :erlang.float_to_binary(us / 1000, decimals: 2)
end

PersistBench.RestoreTarget.main(System.argv())
