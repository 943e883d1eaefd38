defmodule PersistBench.Data do
  @moduledoc false
  # Seeded generator of realistic property-table contents: `{property, value, timestamp}`
  # rows in a `:set` table, where a property is a list of 2 to 5 short strings (like
  # `["net", "wlan0", "ipv4", "address"]`) and values are a mix of what devices keep in a
  # property table. The same seed and size always give the same {property, value} pairs
  # (timestamps come from `System.monotonic_time/0`).
  #
  # Value mix (by row): integers 22%, floats 5%, strings of 20..60 bytes 30%, atoms 15%,
  # small maps 12%, IP address tuples 11% (one in five IPv6), random 200-byte binaries 5%.

  @categories ~w(net wifi cell gps sensor power app config fw update ui audio storage
                 time ntp dns vpn modem led usb ble serial disk proc mqtt)

  @instances ~w(eth wlan usb can dev sta ap port bus slot node unit)

  @fields ~w(state address netmask gateway mtu rx_bytes tx_bytes rx_errors signal ssid
             bssid channel band frequency quality level mode enabled name label version
             uptime temperature voltage current capacity percent status error last_seen
             config value threshold interval timeout retries priority owner type model
             serial vendor speed duplex carrier lease expires server port protocol)

  @words ~w(alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima
            mike november oscar papa quebec romeo sierra tango uniform victor whiskey
            xray yankee zulu device network interface wireless ethernet connected
            configured default primary secondary backup local remote upstream gateway
            nerves firmware release build stable testing production staging sensor
            reading offline online pending running stopped ready error warning ok)

  @atoms ~w(up down connected disconnected lan internet none ok error true false nil dhcp
            static ipv4 ipv6 idle busy charging discharging full wpa2_psk wpa3_sae open
            managed host)a

  # Tuples: picking an element is O(1).
  @categories List.to_tuple(@categories)
  @instances List.to_tuple(@instances)
  @fields List.to_tuple(@fields)
  @words List.to_tuple(@words)
  @atoms List.to_tuple(@atoms)

  @doc "Creates a `:set` table named `name` (not a named table) holding `n` rows."
  def new_table(name, n, seed) do
    table = :ets.new(name, [:set, :public])
    fill(table, n, seed)
    table
  end

  @doc "Inserts rows into `table` until it holds `n` rows."
  def fill(table, n, seed) do
    :rand.seed(:exsss, {seed, 7, 13})
    # Instances per category/kind: enough distinct properties for the requested size.
    span = max(div(n, 40), 8)
    fill_loop(table, n, span)
  end

  defp fill_loop(table, n, span) do
    missing = n - :ets.info(table, :size)

    if missing > 0 do
      # One row at a time: which of several rows with the same key a bulk insert keeps is
      # undefined, and the table must not depend on it.
      for _ <- 1..missing do
        :ets.insert(table, {property(span), value(), System.monotonic_time()})
      end

      fill_loop(table, n, span)
    else
      table
    end
  end

  @doc """
  Gives new values to about `fraction` of the rows (at least one), picked at random over
  the whole table, as a running device would between two persists. Returns the number of
  rows changed.
  """
  def mutate(table, fraction, seed) do
    :rand.seed(:exsss, {seed, 11, 17})
    keys = table |> :ets.select([{{:"$1", :_, :_}, [], [:"$1"]}]) |> List.to_tuple()
    count = max(1, round(tuple_size(keys) * fraction))
    ts = System.monotonic_time()

    for _ <- 1..count do
      :ets.insert(table, {elem(keys, :rand.uniform(tuple_size(keys)) - 1), value(), ts})
    end

    count
  end

  ## Properties

  defp property(span) do
    category = pick(@categories)
    instance = pick(@instances) <> Integer.to_string(:rand.uniform(span) - 1)

    case :rand.uniform(4) do
      # 2 segments: ["time", "ntp12"]
      1 ->
        [category, instance]

      n ->
        # 3 to 5 segments
        [category, instance | for(_ <- 1..(n - 1), do: pick(@fields))]
    end
  end

  ## Values

  defp value do
    case :rand.uniform(100) do
      n when n <= 22 -> integer()
      n when n <= 27 -> Float.round(:rand.uniform() * 200 - 50, 2)
      n when n <= 57 -> string(20 + :rand.uniform(41) - 1)
      n when n <= 72 -> pick(@atoms)
      n when n <= 84 -> small_map()
      n when n <= 95 -> ip()
      _ -> :rand.bytes(200)
    end
  end

  defp integer do
    case :rand.uniform(4) do
      1 -> :rand.uniform(100) - 1
      2 -> :rand.uniform(1_000_000)
      3 -> -:rand.uniform(120)
      4 -> :rand.uniform(1_099_511_627_776)
    end
  end

  # Words joined by " ", "-" or "_" up to a length in 20..60, or a hex id.
  defp string(len) do
    if :rand.uniform(5) == 1 do
      :rand.bytes(div(len + 1, 2)) |> Base.encode16(case: :lower) |> binary_part(0, len)
    else
      sep = pick([" ", "-", "_", "/"])
      words(len, sep, "")
    end
  end

  defp words(len, sep, acc) do
    acc = if acc == "", do: pick(@words), else: acc <> sep <> pick(@words)

    cond do
      byte_size(acc) >= len -> binary_part(acc, 0, len)
      true -> words(len, sep, acc)
    end
  end

  defp small_map do
    case :rand.uniform(4) do
      1 ->
        %{
          ssid: string(8 + :rand.uniform(12)),
          signal_dbm: -30 - :rand.uniform(60),
          channel: :rand.uniform(165),
          band: pick([:"2.4GHz", :"5GHz", :"6GHz"])
        }

      2 ->
        %{address: ip(), prefix_length: pick([8, 16, 24, 64]), gateway: ip()}

      3 ->
        %{"name" => string(12), "enabled" => pick([true, false]), "count" => integer()}

      4 ->
        %{min: :rand.uniform(10), max: 10 + :rand.uniform(90), unit: pick([:c, :v, :ma, :pct])}
    end
  end

  defp ip do
    if :rand.uniform(5) == 1 do
      {0xFE80, 0, 0, 0, :rand.uniform(0xFFFF), :rand.uniform(0xFFFF), :rand.uniform(0xFFFF),
       :rand.uniform(0xFFFF)}
    else
      {pick([10, 172, 192]), :rand.uniform(255), :rand.uniform(255), :rand.uniform(254)}
    end
  end

  defp pick(tuple) when is_tuple(tuple), do: elem(tuple, :rand.uniform(tuple_size(tuple)) - 1)
  defp pick(list), do: Enum.at(list, :rand.uniform(length(list)) - 1)
end
