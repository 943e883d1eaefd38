defmodule PropertyTable.PersistLogCorruptionTest do
  @moduledoc """
  Corruption sweep over the change log through the public API: a table persisted, then
  changed a little and persisted several times (one log record each). For one flipped bit
  (chosen at random) in each byte of the log, and for every length it can be cut to,
  `restore_from_disk/2` must give a prefix of the history (the base plus exactly the records
  before the damage), never wrong rows or an error, and must log the damaged log as skipped.
  The exhaustive sweep (every bit, every length, CRCs recomputed) is the core's
  `log_corruption` test.
  """
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist

  @moduletag :tmp_dir
  @moduletag timeout: 120_000

  @records 6
  # FORMAT.md, "Change log": a 56-byte header; each record a 48-byte header (stored_len at
  # 16) and its stored payload.
  @log_header_len 56
  @record_header_len 48

  defp opts(dir), do: [data_directory: dir, table_name: "t"]

  setup %{tmp_dir: dir} do
    seed_rand!("log corruption")
    table = new_table(realistic_pairs(200, 12))
    :ok = Persist.persist_to_disk(table, opts(dir))
    history = [pairs(table)]

    history =
      Enum.reduce(1..@records, history, fn round, history ->
        before = File.exists?(log_path(dir)) && File.read!(log_path(dir))
        change(table, round)
        :ok = Persist.persist_to_disk(table, opts(dir))
        log = File.read!(log_path(dir))
        # Appended: the log grew by one record, its bytes before kept.
        assert before == false or binary_part(log, 0, byte_size(before)) == before
        history ++ [pairs(table)]
      end)

    log = File.read!(log_path(dir))
    bounds = record_bounds(log, @log_header_len)
    assert length(bounds) == @records + 1
    assert List.last(bounds) == byte_size(log)
    assert Enum.uniq(history) == history
    %{history: history, log: log, bounds: bounds}
  end

  # One row inserted, changed or deleted, or several at once.
  defp change(table, round) do
    [{p, _, _} = row | _] = table |> :ets.tab2list() |> Enum.take_random(1)

    case rem(round, 3) do
      0 -> insert_pairs(table, [{["new", "#{round}"], {round, :rand.uniform()}}])
      1 -> insert_pairs(table, [{p, {:changed, round}}])
      2 -> :ets.delete_object(table, row)
    end
  end

  # Where each record starts, then the log's end.
  defp record_bounds(log, at) when byte_size(log) >= at + @record_header_len do
    <<_::binary-size(at), _::binary-size(16), stored_len::little-32, _::binary>> = log
    [at | record_bounds(log, at + @record_header_len + stored_len)]
  end

  defp record_bounds(log, at) when byte_size(log) == at, do: [at]

  # Complete records in the first `len` bytes.
  defp complete_records(bounds, len), do: bounds |> tl() |> Enum.count(&(&1 <= len))

  # The record (from 1) holding byte `at`, 0 for the header.
  defp record_of(bounds, at), do: Enum.count(bounds, &(&1 <= at))

  defp install(dir, bytes) do
    File.rm!(log_path(dir))
    File.write!(log_path(dir), bytes)
  end

  # Restores `bytes` as the log; the records restored (which state of the history) and
  # what was logged about the log.
  defp restore_with_log(dir, bytes, history) do
    install(dir, bytes)
    {result, log} = with_log(fn -> restore_fresh(opts(dir)) end)
    assert {:ok, rows} = result
    {Enum.find_index(history, &(&1 == rows)), log}
  end

  # Only the lines about this test's log: `with_log` also catches other tests' logs.
  defp skipped_log?(log, dir) do
    lines_mentioning(log, log_path(dir)) =~ "skipping"
  end

  test "a flipped bit restores the records before it and logs the log as skipped",
       %{tmp_dir: dir, history: history, log: good, bounds: bounds} do
    offsets = 0..(byte_size(good) - 1)

    failures =
      for at <- offsets,
          bit = :rand.uniform(8) - 1,
          want = max(record_of(bounds, at) - 1, 0),
          {got, log} = restore_with_log(dir, flip_bit(good, at, bit), history),
          got != want or not skipped_log?(log, dir),
          do: "bit #{bit} of byte #{at}: state #{inspect(got)}, want #{want}"

    install(dir, good)
    IO.puts("[log corruption] #{Enum.count(offsets)} bit flips of a #{byte_size(good)}-byte log")
    assert failures == [], Enum.join(Enum.take(failures, 20), "\n")
  end

  test "a cut log restores its complete records and logs a cut record as skipped",
       %{tmp_dir: dir, history: history, log: good, bounds: bounds} do
    # A cut at a record boundary leaves a clean log, which nothing reports.
    lengths = 0..byte_size(good)

    failures =
      for len <- lengths,
          want = complete_records(bounds, len),
          {got, log} = restore_with_log(dir, binary_part(good, 0, len), history),
          got != want or skipped_log?(log, dir) == len in bounds,
          do: "cut at #{len}: state #{inspect(got)}, want #{want}, logged: #{log}"

    install(dir, good)

    IO.puts(
      "[log corruption] #{Enum.count(lengths)} truncations of a #{byte_size(good)}-byte log"
    )

    assert failures == [], Enum.join(Enum.take(failures, 20), "\n")
    # The intact log restores the last state, and is not reported.
    assert {@records, log} = restore_with_log(dir, good, history)
    refute skipped_log?(log, dir)
  end
end
