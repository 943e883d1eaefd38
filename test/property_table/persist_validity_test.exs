defmodule PropertyTable.PersistValidityTest do
  @moduledoc """
  One definition of a valid file, through the public API: a stable file whose CRCs all
  pass but whose contents fail their hashes (a wrong content digest, a wrong chunk
  XXH3-64, chunk contents changed under their hash) is corrupt for restore, persist,
  snapshots and inspect alike.
  """
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist

  @moduletag :tmp_dir

  defp opts(dir, compression),
    do: [data_directory: dir, table_name: "t", chunk_size: 5, compression: compression]

  @backup_rows realistic_pairs(20, 1)
  @stable_rows realistic_pairs(20, 2)

  # A backup holding @backup_rows and a stable file holding @stable_rows (4 chunks).
  defp two_generations(dir, compression) do
    File.rm_rf!(table_dir(dir))
    :ok = Persist.persist_to_disk(new_table(@backup_rows), opts(dir, compression))
    :ok = Persist.persist_to_disk(new_table(@stable_rows), opts(dir, compression))
    {File.read!(stable_path(dir)), File.read!(backup_path(dir))}
  end

  # Runs `check` with each forgery of the stable file in place, at compression 0 and 6.
  defp each_forged_stable(dir, check) do
    for compression <- [0, 6] do
      {good, _backup} = two_generations(dir, compression)

      for {label, forged} <- forgeries(good) do
        {_good, backup} = two_generations(dir, compression)
        File.write!(stable_path(dir), forged)
        check.(forged, backup, opts(dir, compression), "#{label}, compression #{compression}")
      end
    end
  end

  defp quarantined(dir) do
    table_dir(dir)
    |> Path.join("data.ptable.corrupt-*")
    |> Path.wildcard()
    |> Enum.map(&File.read!/1)
  end

  defp status(dir, kind, inspect_opts \\ []) do
    [data_directory: dir, table_name: "t"]
    |> Persist.inspect_files(inspect_opts)
    |> Enum.find_value(&(&1.kind == kind && &1.status))
  end

  test "restore loads the backup, quarantines the stable file and reports no data loss",
       %{tmp_dir: dir} do
    each_forged_stable(dir, fn forged, backup, opts, label ->
      log =
        capture_log(fn ->
          assert :ok = Persist.restore_from_disk(:ptp_validity_restored, opts), label
        end)

      assert pairs(:ptp_validity_restored) == sort(@backup_rows), label
      :ets.delete(:ptp_validity_restored)
      assert log =~ "moved corrupt file aside", label
      assert log =~ "restoring from backup file", label
      refute lines_mentioning(log, dir) =~ "data loss", label
      assert quarantined(dir) == [forged], label
      refute File.exists?(stable_path(dir)), label
      assert File.read!(backup_path(dir)) == backup, label
    end)
  end

  test "a persist keeps the good backup and quarantines the stable file", %{tmp_dir: dir} do
    newer = realistic_pairs(7, 3)

    each_forged_stable(dir, fn forged, backup, opts, label ->
      assert :ok = Persist.persist_to_disk(new_table(newer), opts), label
      assert File.read!(backup_path(dir)) == backup, label
      assert quarantined(dir) == [forged], label
      assert restore_fresh(opts) == {:ok, sort(newer)}, label
    end)
  end

  test "a persist of the same table writes a valid stable file instead of keeping it",
       %{tmp_dir: dir} do
    each_forged_stable(dir, fn forged, backup, opts, label ->
      assert :ok = Persist.persist_to_disk(new_table(@stable_rows), opts), label
      assert status(dir, :stable) == :ok, label
      assert File.read!(stable_path(dir)) != forged, label
      assert File.read!(backup_path(dir)) == backup, label
      assert quarantined(dir) == [forged], label

      log = capture_log(fn -> assert restore_fresh(opts) == {:ok, sort(@stable_rows)} end)
      refute lines_mentioning(log, dir) =~ "skipping", label
    end)
  end

  test "inspect_files reports the stable file corrupt, and nothing :ok without verification",
       %{tmp_dir: dir} do
    each_forged_stable(dir, fn _forged, _backup, _opts, label ->
      assert status(dir, :stable) in [:bad_checksum, :bad_file], label
      assert status(dir, :backup) == :ok, label
      assert status(dir, :stable, verify: false) == :unverified, label
      assert status(dir, :backup, verify: false) == :unverified, label
    end)
  end

  test "save_snapshot of the same table snapshots a fresh valid file", %{tmp_dir: dir} do
    each_forged_stable(dir, fn _forged, _backup, opts, label ->
      assert {:ok, id} = Persist.save_snapshot(new_table(@stable_rows), opts), label
      assert status(dir, :snapshot) == :ok, label
      File.rm!(stable_path(dir))
      File.rm!(backup_path(dir))
      assert :ok = Persist.restore_snapshot(opts, id), label
      assert restore_fresh(opts) == {:ok, sort(@stable_rows)}, label
    end)
  end

  test "restore_snapshot refuses a forged snapshot and changes nothing", %{tmp_dir: dir} do
    {_stable, _backup} = two_generations(dir, 6)
    id = Persist.save_snapshot!(new_table(realistic_pairs(9, 4)), opts(dir, 6))
    snapshot = File.read!(snapshot_path(dir, id))
    before = {File.read!(stable_path(dir)), File.read!(backup_path(dir))}

    for {label, forged} <- forgeries(snapshot) do
      File.write!(snapshot_path(dir, id), forged)

      capture_log(fn ->
        assert {:error, reason} = Persist.restore_snapshot(opts(dir, 6), id), label
        assert reason in [:bad_checksum, :bad_file], label
      end)

      assert {File.read!(stable_path(dir)), File.read!(backup_path(dir))} == before, label
      refute File.exists?(tmp_path(dir)), label
    end
  end

  test "mix property_table.inspect exits non-zero when the only file is forged",
       %{tmp_dir: dir} do
    {good, _backup} = two_generations(dir, 6)
    File.rm!(backup_path(dir))
    {_label, forged} = hd(forgeries(good))
    File.write!(stable_path(dir), forged)

    out =
      ExUnit.CaptureIO.capture_io(fn ->
        assert catch_exit(Mix.Tasks.PropertyTable.Inspect.run([dir, "t"])) == {:shutdown, 1}
      end)

    assert out =~ ~r/stable\s+v2\s+bad_checksum/

    # Without verification the file is neither valid nor known to be corrupt.
    out =
      ExUnit.CaptureIO.capture_io(fn ->
        Mix.Tasks.PropertyTable.Inspect.run([dir, "t", "--no-verify"])
      end)

    assert out =~ ~r/stable\s+v2\s+unverified/
  end
end
