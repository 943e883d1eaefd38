defmodule PropertyTable.Persist.TestSupport.CrashLoop do
  @moduledoc """
  The kill -9 loop shared by the crash loop tests: start a child VM (`ChildVM`), send it a
  GO line, kill it at a random moment of its writes, check the directory, repeat.

  A kill lands at a uniformly random moment within the first `:writes` writes after the
  child printed START (so in every phase of a write, and between writes); one kill in ten
  lands right after GO instead, before the child has started writing. The window is measured
  once per loop on a child that is not killed until it has written `:calibration_writes`
  times. Each kill needs a fresh VM; the next one boots while the current kill is checked.
  """

  import ExUnit.Assertions
  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist.TestSupport.ChildVM

  @doc """
  Runs `n` kill cycles. `go` makes the GO line from the state; `check` verifies the directory
  after a kill given what `:parse` made of the child's lines (default `acks/1`: the ACKed
  numbers), returning the new state and an outcome label or a list of labels.
  Returns `%{label => count}` plus `:window_us`.

  Options: `:writes` (2) the writes a kill window spans, `:calibration_writes` (12), `:parse`.
  """
  def run(n, killer, state, go, check, opts \\ []) do
    writes = Keyword.get(opts, :writes, 2)
    calibration_writes = Keyword.get(opts, :calibration_writes, 12)
    parse = Keyword.get(opts, :parse, &acks/1)
    after_kill = &after_kill(&1, &2, check, parse)
    {window_us, state} = calibrate(killer, state, go, after_kill, writes, calibration_writes)
    next = ChildVM.start()

    {_state, stats, next} =
      Enum.reduce(1..n//1, {state, %{}, next}, fn _k, {state, stats, vm} ->
        vm = ChildVM.await_ready(vm)
        ChildVM.send_line(vm, go.(state))

        vm =
          if :rand.uniform(10) == 1 do
            vm
          else
            vm = await_start(vm)
            spin_sleep_us(:rand.uniform(window_us))
            vm
          end

        ChildVM.kill9(killer, vm)
        # The next child boots while this kill is checked, not while a child writes (that
        # would slow the writes down and skew the kill moments).
        next = ChildVM.start()
        {state, outcomes} = after_kill.(vm, state)
        stats = Enum.reduce(List.wrap(outcomes), stats, &Map.update(&2, &1, 1, fn c -> c + 1 end))
        {state, stats, next}
      end)

    ChildVM.stop(next)
    Map.put(stats, :window_us, window_us)
  end

  @doc "The ACKed numbers of `ACK n` lines; any other line fails the test."
  def acks(lines) do
    Enum.map(lines, fn
      "ACK " <> n -> String.to_integer(n)
      other -> flunk("unexpected child output #{inspect(other)}")
    end)
  end

  # How long a fresh child takes from START to the end of its first write (slower than the
  # next ones: caches are cold), plus the mean time of `writes - 1` more writes.
  defp calibrate(killer, state, go, after_kill, writes, calibration_writes) do
    vm = ChildVM.start() |> ChildVM.await_ready()
    ChildVM.send_line(vm, go.(state))
    vm = await_start(vm)
    started = System.monotonic_time(:microsecond)
    {[first | _] = stamps, vm} = ack_times(vm, calibration_writes, [])
    ChildVM.kill9(killer, vm)
    {state, _} = after_kill.(vm, state)
    interval = div(List.last(stamps) - first, length(stamps) - 1)
    {first - started + interval * (writes - 1), state}
  end

  defp await_start(vm) do
    case ChildVM.next_line(vm, 30_000) do
      {:line, "START", vm} -> vm
      other -> flunk("expected START from the child, got #{inspect(other)}")
    end
  end

  # Lines other than ACKs (progress markers) are skipped; a failure is not.
  defp ack_times(vm, 0, acc), do: {Enum.reverse(acc), vm}

  defp ack_times(vm, n, acc) do
    case ChildVM.next_line(vm, 30_000) do
      {:line, "ACK " <> _, vm} ->
        ack_times(vm, n - 1, [System.monotonic_time(:microsecond) | acc])

      {:line, "CHILD FAILED" <> _, vm} ->
        flunk("child failed during calibration:\n#{ChildVM.output(vm)}")

      {:line, _progress, vm} ->
        ack_times(vm, n, acc)

      other ->
        flunk("child failed during calibration: #{inspect(other)}")
    end
  end

  defp after_kill(vm, state, check, parse) do
    {status, vm} = ChildVM.await_exit(vm)
    # 137 = killed by signal 9. Anything else means the child failed on its own.
    assert status == 137, "child exited with #{status}:\n#{ChildVM.output(vm)}"

    lines =
      vm.lines
      |> Enum.reverse()
      |> Enum.reject(&(&1 in ["READY", "START"]))

    parsed =
      try do
        parse.(lines)
      rescue
        e in ExUnit.AssertionError ->
          reraise %{e | message: e.message <> "\n" <> ChildVM.output(vm)}, __STACKTRACE__
      end

    check.(state, parsed)
  end

  @doc "Sleeps `us` microseconds, spinning for the last millisecond for precision."
  def spin_sleep_us(us) do
    deadline = System.monotonic_time(:microsecond) + us
    if us > 2_000, do: Process.sleep(div(us, 1000) - 1)
    spin_until(deadline)
  end

  defp spin_until(deadline) do
    if System.monotonic_time(:microsecond) < deadline, do: spin_until(deadline)
  end

  @doc "No file of table `t` under `dir` was quarantined as corrupt."
  def assert_no_corrupt_files(dir) do
    assert Path.wildcard(Path.join(table_dir(dir), "*.corrupt-*")) == []
  end
end
