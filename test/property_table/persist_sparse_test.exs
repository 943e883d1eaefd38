defmodule PropertyTable.PersistSparseTest do
  @moduledoc """
  Sparse files whose headers claim far more than the disk holds: a version 2 stable file
  whose header and frame header carry valid CRCs and whose frame claims 2^43 (or 2^30)
  stored bytes, extended with `truncate` to exactly that length (a hole: 4 KiB on disk), and
  a legacy file claiming such a payload. Restore and persist must treat them like any corrupt
  file (backup's rows, quarantine; a clear error without a backup) and never allocate what
  they claim: before the fix, the NIF asked for 8 TiB and the VM aborted.
  """
  use ExUnit.Case, async: true

  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist

  @moduletag :tmp_dir

  # Bytes before the frame's stored bytes: the 80-byte header and the 36-byte frame header.
  @headers 116

  defp opts(dir), do: [data_directory: dir, table_name: "t"]

  # A version 2 file as persist writes with the default options (level 6, zstd stream,
  # chunk_size 1000), of one frame claiming `stored_len` stored and raw bytes: header CRC
  # valid, frame CRC valid over the frame's index and header fields (the hole's zeros do not
  # match it), length exactly what the header announces. `false` when the filesystem
  # refuses the size.
  defp write_sparse_v2(path, stored_len) do
    body =
      <<2, 6, 0::little-16, 1000::little-32, 1_700_000_000_000_000::little-signed-64,
        1000::little-64, 10::little-64, 1::little-64, 36 + stored_len::little-64, 0::128>>

    head = <<"PTABLE", 2, 0, byte_size(body)::little-32, body::binary>>
    fields = <<stored_len::little-64, stored_len::little-64, 10::little-64, 0::little-64>>
    frame_crc = :erlang.crc32(<<0::little-64, fields::binary>>)
    bytes = <<head::binary, :erlang.crc32(head)::little-32, fields::binary, frame_crc::little-32>>
    true = byte_size(bytes) == @headers
    extend_sparse(path, bytes, @headers + stored_len)
  end

  # A legacy file claiming a `payload_len`-byte payload: its 16-byte header, then a hole.
  defp write_sparse_legacy(path, payload_len),
    do: extend_sparse(path, <<"PTABLE", 1, 0, payload_len::big-64>>, 16 + payload_len + 16)

  defp extend_sparse(path, bytes, size) do
    File.mkdir_p!(Path.dirname(path))
    File.write!(path, bytes)
    {:ok, fd} = :file.open(path, [:read, :write, :raw, :binary])

    try do
      with {:ok, ^size} <- :file.position(fd, size), :ok <- :file.truncate(fd) do
        true
      else
        error ->
          IO.puts("SKIPPED a #{size}-byte sparse file: #{inspect(error)}")
          false
      end
    after
      :file.close(fd)
    end
  end

  defp crafted do
    for claim <- [2 ** 43, 2 ** 30],
        {kind, write} <- [v2: &write_sparse_v2/2, legacy: &write_sparse_legacy/2],
        do: {"#{kind} claiming #{claim} bytes", &write.(&1, claim)}
  end

  defp quarantined(dir),
    do: dir |> table_dir() |> File.ls!() |> Enum.filter(&String.contains?(&1, ".corrupt-"))

  test "restore falls back to the backup's rows and persist replaces the sparse stable file",
       %{tmp_dir: root} do
    for {{label, write}, i} <- Enum.with_index(crafted()) do
      dir = Path.join(root, "case#{i}")
      backup_rows = realistic_pairs(30, 1)
      :ok = Persist.persist_to_disk(new_table(backup_rows), opts(dir))
      :ok = Persist.persist_to_disk(new_table(realistic_pairs(30, 2)), opts(dir))
      backup = File.read!(backup_path(dir))

      if write.(stable_path(dir)) do
        assert restore_fresh(opts(dir)) == {:ok, sort(backup_rows)}, label
        assert length(quarantined(dir)) == 1, label
        refute File.exists?(stable_path(dir)), label

        # A persist meeting the same file as its stable file (compared chunk by chunk, then
        # checked before rotation) replaces it and keeps the good backup.
        true = write.(stable_path(dir))
        new_rows = realistic_pairs(40, 3)
        assert Persist.persist_to_disk(new_table(new_rows), opts(dir)) == :ok, label
        assert restore_fresh(opts(dir)) == {:ok, sort(new_rows)}, label
        assert File.read!(backup_path(dir)) == backup, label
        assert length(quarantined(dir)) == 2, label
      end
    end
  end

  test "alone, a sparse stable file is a clear error, and persist still works",
       %{tmp_dir: root} do
    for {{label, write}, i} <- Enum.with_index(crafted()) do
      dir = Path.join(root, "case#{i}")

      if write.(stable_path(dir)) do
        assert {{:error, reason}, nil} = restore_fresh(opts(dir)), label
        assert reason in [:bad_file, :bad_checksum], label

        true = write.(stable_path(dir))
        rows = realistic_pairs(25, 4)
        assert Persist.persist_to_disk(new_table(rows), opts(dir)) == :ok, label
        assert restore_fresh(opts(dir)) == {:ok, sort(rows)}, label
      end
    end
  end

  test "a sparse backup is rotated away by the next persist", %{tmp_dir: root} do
    for {{label, write}, i} <- Enum.with_index(crafted()) do
      dir = Path.join(root, "case#{i}")
      rows = realistic_pairs(30, 5)
      :ok = Persist.persist_to_disk(new_table(rows), opts(dir))

      if write.(backup_path(dir)) do
        new_rows = realistic_pairs(30, 6)
        assert Persist.persist_to_disk(new_table(new_rows), opts(dir)) == :ok, label
        assert restore_fresh(opts(dir)) == {:ok, sort(new_rows)}, label
        File.rm!(stable_path(dir))
        assert restore_fresh(opts(dir)) == {:ok, sort(rows)}, label
      end
    end
  end

  test "inspect_files reports a sparse stable file as corrupt", %{tmp_dir: root} do
    for {{label, write}, i} <- Enum.with_index(crafted()) do
      dir = Path.join(root, "case#{i}")
      :ok = Persist.persist_to_disk(new_table(realistic_pairs(10, 7)), opts(dir))
      File.rename!(stable_path(dir), backup_path(dir))

      if write.(stable_path(dir)) do
        files = Persist.inspect_files(opts(dir))

        assert Enum.find(files, &(&1.kind == :stable)).status in [:bad_file, :bad_checksum],
               label

        assert Enum.find(files, &(&1.kind == :backup)).status == :ok, label
      end
    end
  end
end
