defmodule PropertyTable.PersistRestoreStreamTest do
  @moduledoc """
  The reader thread of a streamed restore (files of several chunks), driven through the
  NIF: it is paced by acknowledgements and stops when closed or when its process dies.
  Not async: the thread count it checks is the whole VM's.
  """
  use ExUnit.Case, async: false

  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist
  alias PropertyTable.Persist.{Native, NativeHelpers}
  alias PropertyTable.Persist.Native.{RestoreOpen, Source}

  @moduletag :tmp_dir

  defp opts(dir, extra), do: [data_directory: dir, table_name: "t"] ++ extra
  defp open(dir), do: NativeHelpers.restore_open(table_dir(dir))

  test "the reader thread sends at most two chunks beyond those acknowledged",
       %{tmp_dir: dir} do
    pairs = for i <- 1..50, do: {["k", i], i}
    :ok = Persist.persist_to_disk(new_table(pairs), opts(dir, chunk_size: 10))
    %RestoreOpen{file: {:ok, source}, skipped: [], quarantined: []} = open(dir)
    %Source{reader: reader, kind: :stable, chunks: 5} = source
    tag = make_ref()
    :ok = Native.restore_stream(reader, tag, 7, false)

    # Unacknowledged, the thread stops after two chunks; each ack lets one more through.
    assert [{:ok, first}, {:ok, second}] = stream_messages(tag, 2)
    assert [] = stream_messages(tag, 0)
    Native.restore_ack(reader)
    assert [{:ok, third}] = stream_messages(tag, 1)
    Native.restore_ack(reader)
    Native.restore_ack(reader)
    Native.restore_ack(reader)
    # The last chunk comes as :last, the file's end already checked: nothing follows.
    assert [{:ok, fourth}, {:last, fifth}] = stream_messages(tag, 2)

    rows = first ++ second ++ third ++ fourth ++ fifth
    assert Enum.all?(rows, &match?({_, _, 7}, &1))
    assert sort(for {p, v, 7} <- rows, do: {p, v}) == sort(pairs)
    assert :ok = Native.restore_close(reader)
    assert_mailbox_empty()
  end

  test "a file's last chunk comes as {:last, rows}, after its end was checked",
       %{tmp_dir: dir} do
    pairs = for i <- 1..5, do: {["k", i], i}
    :ok = Persist.persist_to_disk(new_table(pairs), opts(dir, []))
    %RestoreOpen{file: {:ok, source}, skipped: [], quarantined: []} = open(dir)
    %Source{reader: reader, kind: :stable, path: path, chunks: 1} = source
    # A reader with an open file is closed on a dirty scheduler.
    assert Native.restore_close_nowait(reader) == :busy
    assert {:last, rows} = Native.restore_rows(reader, 3, false)
    assert sort(for {p, v, 3} <- rows, do: {p, v}) == sort(pairs)
    assert Native.restore_rows(reader, 3, false) == :done
    assert Native.restore_close_nowait(reader) == :ok
    assert Native.restore_rows(reader, 3, false) == {:error, %{reason: :closed, path: nil}}

    # The whole-content digest (header bytes 60..75) changed and the header's CRC
    # recomputed: every CRC still matches, but the file does not verify, so no reader is
    # opened for it (and, with nothing else to restore, it is moved aside).
    {"wrong content digest", forged} = hd(forgeries(File.read!(path)))
    File.write!(path, forged)

    failure = %{reason: :bad_checksum, path: path}
    skipped = Map.merge(failure, %{offset: nil, fault: nil})

    assert %RestoreOpen{file: {:error, ^failure}, skipped: [^skipped], quarantined: [quarantined]} =
             open(dir)

    assert File.read!(quarantined) == forged
    File.write!(path, forged)
    target = new_table([{:kept, 1}])

    assert ExUnit.CaptureLog.capture_log(fn ->
             assert {:error, :bad_checksum} = Persist.restore_from_disk(target, opts(dir, []))
           end) =~ "checksum mismatch"

    assert pairs(target) == [{:kept, 1}]
  end

  test "closing the reader, or the death of its process, stops the thread",
       %{tmp_dir: dir} do
    pairs = for i <- 1..50, do: {["k", i], i}
    :ok = Persist.persist_to_disk(new_table(pairs), opts(dir, chunk_size: 10))

    %RestoreOpen{file: {:ok, %Source{reader: reader, chunks: 5}}} = open(dir)
    tag = make_ref()
    :ok = Native.restore_stream(reader, tag, 0, false)
    assert [{:ok, _}, {:ok, _}] = stream_messages(tag, 2)
    # Closed while waiting for a credit: nothing comes after, even with acks.
    assert :ok = Native.restore_close(reader)
    assert Native.restore_ack(reader) == :ok
    assert [] = stream_messages(tag, 0, 50)
    assert Native.restore_rows(reader, 0, false) == {:error, %{reason: :closed, path: nil}}

    # A process that dies mid-restore leaves no thread behind. (No other test runs now:
    # every reader thread of the VM is this one.)
    test_process = self()

    {pid, monitor} =
      spawn_monitor(fn ->
        %RestoreOpen{file: {:ok, %Source{reader: reader}}} = open(dir)
        :ok = Native.restore_stream(reader, make_ref(), 0, false)
        send(test_process, :streaming)
        Process.sleep(:infinity)
      end)

    assert_receive :streaming, 5000
    # The thread names itself once it runs, which may be after restore_stream returned.
    wait_until(fn -> reader_threads() >= 1 end)
    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^monitor, :process, ^pid, :killed}
    wait_until(fn -> reader_threads() == 0 end)
  end

  test "a restore is charged reductions for its inserts, so that it yields its scheduler",
       %{tmp_dir: dir} do
    # Without the charge, ETS inserts of 1,000-row lists cost about 600 reductions each and
    # a restore kept its scheduler for 10 ms and more at a time.
    rows = 20_000
    :ok = Persist.persist_to_disk(new_table(for i <- 1..rows, do: {["k", i], i}), opts(dir, []))
    target = :ets.new(:ptp_reductions, [:set, :public])
    {:reductions, before} = Process.info(self(), :reductions)
    :ok = Persist.restore_from_disk(target, opts(dir, []))
    {:reductions, later} = Process.info(self(), :reductions)
    assert :ets.info(target, :size) == rows
    assert later - before >= 4 * rows
  end

  # The next `count` messages of a restore stream, then checks that no other one arrives
  # within `quiet_ms`.
  defp stream_messages(tag, count, quiet_ms \\ 100) do
    messages =
      for _ <- 1..count//1 do
        receive do
          {^tag, message} -> message
        after
          5000 -> flunk("no message from the reader thread")
        end
      end

    receive do
      {^tag, extra} -> flunk("an unexpected message from the reader thread: #{inspect(extra)}")
    after
      quiet_ms -> messages
    end
  end

  # Reader threads of the whole VM (Linux names threads in /proc).
  defp reader_threads do
    "/proc/self/task"
    |> File.ls!()
    |> Enum.count(fn task ->
      File.read("/proc/self/task/#{task}/comm") == {:ok, "ptable_reader\n"}
    end)
  end

  defp wait_until(condition, tries \\ 1000) do
    cond do
      condition.() -> :ok
      tries == 0 -> flunk("condition not met within 10 s")
      true -> wait_and_retry(condition, tries)
    end
  end

  defp wait_and_retry(condition, tries) do
    Process.sleep(10)
    wait_until(condition, tries - 1)
  end
end
