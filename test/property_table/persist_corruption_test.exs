defmodule PropertyTable.PersistCorruptionTest do
  @moduledoc """
  Corruption sweep: one flipped bit at every byte offset, and truncation to every length, of
  a stable file (with and without a good backup beside it), of a legacy file and of
  snapshots. A restore must load exactly the backup's rows or return a clear error; it must
  never load wrong rows, raise, or crash. And one flipped bit at every offset of a stable
  file with every CRC recomputed afterwards (so that only the content hashes, digest,
  lengths and totals can refuse it): restore, rotation and the unchanged-table check must
  all treat it as valid exactly when it verifies in full.
  """
  use ExUnit.Case, async: true

  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist

  @moduletag :tmp_dir
  # Each sweep restores and persists a thousand or more files: well under a minute alone,
  # but more on a loaded 2-core machine, where the default 60 s timeout was hit.
  @moduletag timeout: 300_000

  @corrupt_reasons [:bad_checksum, :bad_file]

  setup do
    # Thousands of restores of corrupt files each log warnings; keep them out of the way.
    Logger.disable(self())
    seed = seed_rand!("corruption sweep")
    %{seed: seed}
  end

  defp opts(dir), do: [data_directory: dir, table_name: "t", max_quarantined: 1]

  # {label, corrupted binary} for every `step`th byte offset (one random bit each) and every
  # `step`th shorter length. The first 100 bytes (headers) are always swept in full.
  defp corruptions(good, step \\ 1) do
    picked = for i <- 0..(byte_size(good) - 1), i < 100 or rem(i, step) == 0, do: i
    flips = for i <- picked, do: {"bit #{i}", flip_bit(good, i, :rand.uniform(8) - 1)}
    cuts = for len <- picked, do: {"truncated to #{len}", binary_part(good, 0, len)}
    flips ++ cuts
  end

  # {label, corrupted binary} for every `step`th byte offset: one random bit flipped, then
  # every CRC recomputed. The first 100 bytes are always swept in full.
  defp forged_corruptions(good, step) do
    for i <- 0..(byte_size(good) - 1), i < 100 or rem(i, step) == 0 do
      bit = :rand.uniform(8) - 1
      {"bit #{i}.#{bit}, CRCs recomputed", good |> flip_bit(i, bit) |> recompute_crcs()}
    end
  end

  # Runs `fun` for each case, collecting failures instead of stopping at the first one.
  defp sweep(name, cases, fun) do
    failures =
      for {label, bin} <- cases,
          result = safely(fn -> fun.(bin) end),
          result != :ok,
          do: "#{label}: #{inspect(result, limit: 5)}"

    IO.puts("[corruption sweep] #{name}: #{length(cases)} cases")

    assert failures == [],
           "#{length(failures)} of #{length(cases)} cases failed:\n" <>
             Enum.join(Enum.take(failures, 20), "\n")

    length(cases)
  end

  defp safely(fun) do
    fun.()
  catch
    kind, reason -> {:raised, kind, reason}
  end

  defp restore_into_sentinel(dir) do
    target = :ets.new(:sweep_target, [:set, :public])
    :ets.insert(target, {["sentinel"], :untouched, 0})

    try do
      case Persist.restore_from_disk(target, opts(dir)) do
        :ok ->
          {:ok, pairs(target)}

        {:error, _} = error ->
          # A failed restore must leave the table as it was.
          if :ets.tab2list(target) == [{["sentinel"], :untouched, 0}],
            do: error,
            else: {:table_changed, error, :ets.tab2list(target)}
      end
    after
      :ets.delete(target)
    end
  end

  # Restores move a corrupt stable file aside (quarantine, at most one kept with these
  # options), so each case only has to write its stable file again.
  defp put_stable(dir, bin) do
    File.write!(stable_path(dir), bin)
    refute File.exists?(tmp_path(dir))
  end

  # A stable file of 20 rows in 4 chunks, and the previous file (other rows) as the backup.
  defp two_generations(dir, compression) do
    backup_rows = realistic_pairs(20, 1)
    stable_rows = realistic_pairs(20, 2)
    o = opts(dir) ++ [chunk_size: 5, compression: compression]
    :ok = Persist.persist_to_disk(new_table(backup_rows), o)
    :ok = Persist.persist_to_disk(new_table(stable_rows), o)
    good = File.read!(stable_path(dir))
    backup = File.read!(backup_path(dir))
    {good, backup, sort(backup_rows)}
  end

  test "a damaged stable file with a good backup: always exactly the backup's rows",
       %{tmp_dir: dir} do
    # Every offset of a compressed file; every 4th of an uncompressed one (larger, and its
    # chunks are checked by the same CRCs).
    for {compression, step} <- [{6, 1}, {0, 4}] do
      {good, backup, backup_rows} = two_generations(dir, compression)

      sweep(
        "stable (compression #{compression}) + good backup",
        corruptions(good, step),
        fn bin ->
          put_stable(dir, bin)

          case restore_into_sentinel(dir) do
            {:ok, ^backup_rows} -> :ok
            other -> other
          end
        end
      )

      # Restores never touch a good backup.
      assert File.read!(backup_path(dir)) == backup
      File.rm_rf!(table_dir(dir))
    end
  end

  test "a damaged stable file alone: always a clear error, never wrong rows", %{tmp_dir: dir} do
    for {compression, step} <- [{6, 1}, {0, 4}] do
      {good, _backup, _} = two_generations(dir, compression)
      File.rm!(backup_path(dir))

      sweep("stable (compression #{compression}) alone", corruptions(good, step), fn bin ->
        put_stable(dir, bin)

        case restore_into_sentinel(dir) do
          {:error, reason} when reason in @corrupt_reasons -> :ok
          other -> other
        end
      end)

      File.rm_rf!(table_dir(dir))
    end
  end

  test "a stable file with a flipped bit and its CRCs recomputed counts only if it verifies",
       %{tmp_dir: dir} do
    for {compression, step} <- [{6, 1}, {0, 4}] do
      {good, backup, backup_rows} = two_generations(dir, compression)
      # The full-write protocol (rotation) is under test: with the change log, the persist
      # of `newer` would append to a log instead.
      o = opts(dir) ++ [chunk_size: 5, compression: compression, log_compaction: 0]
      stable_rows = sort(realistic_pairs(20, 2))
      {same_table, newer} = {new_table(realistic_pairs(20, 2)), new_table(realistic_pairs(7, 9))}

      put_both = fn bin ->
        File.rm_rf!(table_dir(dir))
        File.mkdir_p!(table_dir(dir))
        File.write!(stable_path(dir), bin)
        File.write!(backup_path(dir), backup)
      end

      sweep(
        "stable (compression #{compression}) with CRCs recomputed + good backup: " <>
          "restore, persist, unchanged persist",
        forged_corruptions(good, step),
        fn bin ->
          # Valid files may differ from the good one only where nothing is hashed.
          put_both.(bin)
          restored = restore_into_sentinel(dir)
          valid? = restored == {:ok, stable_rows}

          put_both.(bin)
          :ok = Persist.persist_to_disk(newer, o)
          rotated = File.read!(backup_path(dir))

          put_both.(bin)
          :ok = Persist.persist_to_disk(same_table, o)
          [%{kind: :stable, status: unchanged_status} | _] = Persist.inspect_files(opts(dir))
          unchanged_restored = restore_into_sentinel(dir)

          cond do
            not valid? and restored != {:ok, backup_rows} -> {:restore, restored}
            valid? and rotated != bin -> :valid_stable_file_not_kept_as_backup
            not valid? and rotated != backup -> :good_backup_replaced
            unchanged_status != :ok -> {:unchanged_persist_left, unchanged_status}
            unchanged_restored != {:ok, stable_rows} -> {:after_unchanged, unchanged_restored}
            true -> :ok
          end
        end
      )

      File.rm_rf!(table_dir(dir))
    end
  end

  test "a damaged legacy file: the backup's rows with one, a clear error without",
       %{tmp_dir: dir} do
    legacy = legacy_file(realistic_pairs(20, 3))
    backup_rows = realistic_pairs(20, 4)
    :ok = Persist.persist_to_disk(new_table(backup_rows), opts(dir))
    backup = File.read!(stable_path(dir))
    backup_rows = sort(backup_rows)
    cases = corruptions(legacy)

    File.rename!(stable_path(dir), backup_path(dir))

    sweep("legacy stable + good backup", cases, fn bin ->
      put_stable(dir, bin)

      case restore_into_sentinel(dir) do
        {:ok, ^backup_rows} -> :ok
        other -> other
      end
    end)

    assert File.read!(backup_path(dir)) == backup
    File.rm!(backup_path(dir))

    sweep("legacy stable alone", cases, fn bin ->
      put_stable(dir, bin)

      case restore_into_sentinel(dir) do
        {:error, reason} when reason in @corrupt_reasons -> :ok
        other -> other
      end
    end)
  end

  test "a damaged backup never matters while the stable file is good", %{tmp_dir: dir} do
    {good, backup, _} = two_generations(dir, 6)
    {:ok, stable_rows} = restore_into_sentinel(dir)
    # Every 8th offset is enough here: the backup is not even read.
    cases = corruptions(backup, 8)

    sweep("good stable + damaged backup", cases, fn bin ->
      File.write!(backup_path(dir), bin)

      case restore_into_sentinel(dir) do
        {:ok, ^stable_rows} -> :ok
        other -> other
      end
    end)

    assert File.read!(stable_path(dir)) == good
  end

  test "a damaged snapshot: restore_snapshot errors and the other files stay byte-identical",
       %{tmp_dir: dir} do
    {_good, _backup, _} = two_generations(dir, 6)
    table = new_table(realistic_pairs(20, 5))
    id = Persist.save_snapshot!(table, opts(dir) ++ [chunk_size: 5])
    # One more persist so that stable and backup differ from the snapshot.
    insert_pairs(table, [{["after"], :snapshot}])
    :ok = Persist.persist_to_disk(table, opts(dir))
    snapshot = File.read!(snapshot_path(dir, id))
    legacy_id = "0000000000000001"
    legacy = legacy_file(realistic_pairs(20, 6))
    File.rm!(snapshot_path(dir, id))
    others = tree(dir)
    {stable, backup} = {File.read!(stable_path(dir)), File.read!(backup_path(dir))}

    check = fn snapshot_id, bin ->
      File.write!(snapshot_path(dir, snapshot_id), bin)

      result =
        case Persist.restore_snapshot(opts(dir), snapshot_id) do
          {:error, reason} when reason in @corrupt_reasons -> :ok
          other -> other
        end

      File.rm!(snapshot_path(dir, snapshot_id))

      unchanged =
        File.read!(stable_path(dir)) == stable and File.read!(backup_path(dir)) == backup and
          not File.exists?(tmp_path(dir))

      if unchanged, do: result, else: {:files_changed, result}
    end

    sweep("snapshot", corruptions(snapshot), &check.(id, &1))
    sweep("legacy snapshot", corruptions(legacy, 2), &check.(legacy_id, &1))
    # Nothing else appeared or changed either (no tmp files left in snapshots/).
    assert tree(dir) == others

    # The undamaged snapshot still restores.
    File.write!(snapshot_path(dir, id), snapshot)
    assert :ok = Persist.restore_snapshot(opts(dir), id)
    assert {:ok, sort(realistic_pairs(20, 5))} == restore_fresh(opts(dir))
  end
end
