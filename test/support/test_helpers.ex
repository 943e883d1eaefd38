defmodule PropertyTable.Persist.TestHelpers do
  @moduledoc """
  Shared helpers for the PropertyTable.Persist test suite: table builders, a byte-by-byte
  legacy (format version 1) file builder, a realistic row generator, file-tree snapshots for
  "nothing changed on disk" assertions, and seeded randomness.
  """

  import ExUnit.Assertions

  alias PropertyTable.Persist

  @stable "data.ptable"
  @backup "data.ptable.backup"
  @tmp "data.ptable.tmp"

  ## Paths

  def table_dir(dir, name \\ "t"), do: Path.join(dir, name)
  def stable_path(dir, name \\ "t"), do: Path.join(table_dir(dir, name), @stable)
  def backup_path(dir, name \\ "t"), do: Path.join(table_dir(dir, name), @backup)
  def tmp_path(dir, name \\ "t"), do: Path.join(table_dir(dir, name), @tmp)
  def log_path(dir, name \\ "t"), do: Path.join(table_dir(dir, name), "data.ptable.log")

  def backup_log_path(dir, name \\ "t"),
    do: Path.join(table_dir(dir, name), "data.ptable.backup.log")

  def snapshots_path(dir, name \\ "t"), do: Path.join(table_dir(dir, name), "snapshots")
  def snapshot_path(dir, id, name \\ "t"), do: Path.join(snapshots_path(dir, name), id)

  ## Tables

  @doc "A new public :set table (a reference) holding `pairs` with one timestamp."
  def new_table(pairs, opts \\ []) do
    table = :ets.new(Keyword.get(opts, :name, :ptp_test), [:set, :public])
    insert_pairs(table, pairs)
    table
  end

  def insert_pairs(table, pairs) do
    ts = System.monotonic_time()
    :ets.insert(table, for({p, v} <- pairs, do: {p, v, ts}))
    table
  end

  @doc "The table's `{property, value}` pairs, sorted."
  def pairs(table), do: table |> :ets.tab2list() |> Enum.map(fn {p, v, _} -> {p, v} end) |> sort()

  def sort(pairs), do: Enum.sort(pairs)

  @doc "Fails when the calling process has messages waiting (left by a helper process)."
  def assert_mailbox_empty do
    {:messages, messages} = Process.info(self(), :messages)
    ExUnit.Assertions.assert(messages == [], "left in the mailbox: #{inspect(messages)}")
  end

  @doc "Restores into a fresh reference table; returns `{result, sorted_pairs_or_nil}`."
  def restore_fresh(opts) do
    table = :ets.new(:ptp_restore_target, [:set, :public])

    try do
      case Persist.restore_from_disk(table, opts) do
        :ok -> {:ok, pairs(table)}
        other -> {other, nil}
      end
    after
      :ets.delete(table)
    end
  end

  ## Realistic data

  @ifaces ~w(eth0 eth1 wlan0 wlan1 usb0 lo)
  @keys ~w(state type address netmask gateway mtu rx_bytes tx_bytes ssid signal connection)

  @doc """
  `n` `{property, value}` pairs shaped like a property table of a device: string paths of
  2 to 5 segments and values that are atoms, integers, strings, floats, maps, lists.
  Deterministic for a given `seed`.
  """
  def realistic_pairs(n, seed \\ 1) do
    state = :rand.seed_s(:exsss, {seed, 17, 4242})

    {pairs, _} =
      Enum.map_reduce(1..n//1, state, fn i, st ->
        {a, st} = :rand.uniform_s(length(@ifaces), st)
        {b, st} = :rand.uniform_s(length(@keys), st)
        {kind, st} = :rand.uniform_s(7, st)
        {x, st} = :rand.uniform_s(1_000_000, st)
        iface = Enum.at(@ifaces, a - 1)
        key = Enum.at(@keys, b - 1)
        property = ["net", iface, key, Integer.to_string(i)]

        value =
          case kind do
            1 -> Enum.at([:up, :down, :lower_up, :disabled, :configured], rem(x, 5))
            2 -> x
            3 -> "#{rem(x, 256)}.#{rem(div(x, 256), 256)}.#{rem(div(x, 65536), 256)}.1"
            4 -> x / 7
            5 -> %{ifname: iface, index: rem(x, 16), flags: [:up, :broadcast, :running]}
            6 -> "SSID-#{rem(x, 97)}-home network"
            7 -> [rem(x, 10), rem(x, 100), rem(x, 1000)]
          end

        {{property, value}, st}
      end)

    pairs
  end

  ## Legacy (version 1) files

  @doc """
  A legacy (property_table, format version 1) file, byte by byte: "PTABLE", version 1,
  reserved 0, payload length (u64 big-endian), payload, MD5 of the payload.
  """
  def legacy_file(pairs) when is_list(pairs),
    do: legacy_file_from_payload(:erlang.term_to_binary(pairs, compressed: 6))

  def legacy_file_from_payload(payload) when is_binary(payload) do
    <<"PTABLE", 1, 0, byte_size(payload)::unsigned-big-64, payload::binary,
      :erlang.md5(payload)::binary>>
  end

  def write_legacy!(path, pairs_or_payload) do
    File.mkdir_p!(Path.dirname(path))

    bin =
      if is_binary(pairs_or_payload),
        do: legacy_file_from_payload(pairs_or_payload),
        else: legacy_file(pairs_or_payload)

    File.write!(path, bin)
    bin
  end

  @doc """
  The external term format of `[{atom_named_name, 1}]`, built by hand so that decoding it
  would have to create the atom (ATOM_UTF8_EXT, tag 118). Building it creates nothing.
  """
  def etf_with_atom(name) when is_binary(name) do
    <<131, 108, 1::32, 104, 2, 118, byte_size(name)::16, name::binary, 97, 1, 106>>
  end

  @doc "A fresh atom name that does not exist in this VM."
  def unused_atom_name(prefix \\ "ptp_never_created_") do
    name =
      prefix <>
        Integer.to_string(System.unique_integer([:positive])) <>
        "_" <> Integer.to_string(:rand.uniform(1_000_000_000))

    refute atom_exists?(name)
    name
  end

  def atom_exists?(name) do
    _ = String.to_existing_atom(name)
    true
  rescue
    ArgumentError -> false
  end

  ## Files

  @doc "Every regular file under `dir` with its contents (a map); `%{}` when `dir` is absent."
  def tree(dir) do
    if File.exists?(dir) do
      for path <- Path.wildcard(Path.join(dir, "**"), match_dot: true),
          File.regular?(path),
          into: %{},
          do: {Path.relative_to(path, dir), File.read!(path)}
    else
      %{}
    end
  end

  @doc "Flips bit `bit` (0..7) of byte `offset`."
  def flip_bit(bin, offset, bit) do
    <<pre::binary-size(offset), byte, post::binary>> = bin
    <<pre::binary, Bitwise.bxor(byte, Bitwise.bsl(1, bit)), post::binary>>
  end

  ## Forged version 2 files: contents or hashes changed, every CRC recomputed

  # FORMAT.md: an 80-byte header (content digest at 60..75, CRC at 76..79), then frames of
  # a 36-byte header (raw_len, stored_len, row_count, raw_hash, crc) and stored bytes.
  @digest_at 60
  @header_crc_at 76
  @frame_header_len 36
  @raw_hash_at 24

  @doc """
  Recomputes the header CRC and every frame CRC of a version 2 file, so that only its
  content checks (chunk hashes, digest, lengths, totals) can tell what changed. Frames are
  walked by their `stored_len`; whatever follows a frame that does not fit is left as is.
  """
  def recompute_crcs(<<head::binary-size(@header_crc_at), _crc::32, frames::binary>>),
    do: head <> <<:erlang.crc32(head)::little-32>> <> recompute_frame_crcs(frames, 0)

  def recompute_crcs(bin), do: bin

  defp recompute_frame_crcs(
         <<fields::binary-size(32), _crc::32, rest::binary>> = frames,
         index
       ) do
    <<_raw_len::64, stored_len::little-64, _::binary>> = fields

    case rest do
      <<stored::binary-size(stored_len), more::binary>> ->
        crc = :erlang.crc32([<<index::little-64>>, fields, stored])
        fields <> <<crc::little-32>> <> stored <> recompute_frame_crcs(more, index + 1)

      _ ->
        frames
    end
  end

  defp recompute_frame_crcs(rest, _index), do: rest

  @doc "Offsets of the frames of a version 2 file."
  def frame_offsets(bin), do: frame_offsets(bin, 80)

  defp frame_offsets(bin, at) when byte_size(bin) >= at + @frame_header_len do
    <<_::binary-size(at), _raw_len::64, stored_len::little-64, _::binary>> = bin
    [at | frame_offsets(bin, at + @frame_header_len + stored_len)]
  end

  defp frame_offsets(_bin, _at), do: []

  @doc """
  The forgeries of a valid version 2 file, `{label, bytes}`, each with every CRC
  recomputed: a wrong content digest, a wrong XXH3-64 of the second chunk (the first of a
  one-chunk file), and that chunk's last stored byte changed under its unchanged hash.
  """
  def forgeries(bin) do
    offsets = frame_offsets(bin)
    frame = Enum.at(offsets, 1, hd(offsets))
    frame_end = Enum.at(offsets, 2, byte_size(bin))

    [
      {"wrong content digest", @digest_at},
      {"wrong chunk XXH3-64", frame + @raw_hash_at},
      {"changed chunk contents", frame_end - 1}
    ]
    |> Enum.map(fn {label, at} -> {label, bin |> flip_bit(at, 0) |> recompute_crcs()} end)
  end

  ## Randomness

  @doc """
  Seeds `:rand` for the calling process from `PTP_SEED` (or ExUnit's seed) and prints it,
  so a failing property-style run can be repeated. Returns the seed.
  """
  def seed_rand!(label) do
    seed =
      case System.get_env("PTP_SEED") do
        nil -> ExUnit.configuration()[:seed]
        s -> String.to_integer(s)
      end

    :rand.seed(:exsss, {seed, 1, 2})
    IO.puts("\n[#{label}] seed #{seed} (repeat with PTP_SEED=#{seed})")
    seed
  end

  @doc "A `:rand` state seeded like `seed_rand!/1`, for processes other than the caller."
  def rand_state(seed, n), do: :rand.seed_s(:exsss, {seed, n, 3})

  @doc """
  The captured lines mentioning `fragment`, joined. `capture_log` sees every process's
  logs, so a test running beside others must look only at the lines about its own files.
  """
  def lines_mentioning(log, fragment) do
    log
    |> String.split("\n")
    |> Enum.filter(&String.contains?(&1, fragment))
    |> Enum.join("\n")
  end

  @doc "Log levels of the captured lines mentioning `fragment`."
  def levels_mentioning(log, fragment) do
    log
    |> lines_mentioning(fragment)
    |> String.split("\n")
    |> Enum.flat_map(fn line ->
      case Regex.run(
             ~r/\[(debug|info|notice|warning|warn|error|critical|alert|emergency)\]/,
             line
           ) do
        [_, level] -> [level]
        _ -> []
      end
    end)
  end
end
