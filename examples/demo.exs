# The main job, end to end:  mix run examples/demo.exs
#
# Builds a table of device properties, persists it, takes snapshots, corrupts the stable
# file, restores from the backup, and restores a snapshot, saying what happens at each step.

alias PropertyTable.Persist

Logger.configure(level: :error)

dir = Path.join(System.tmp_dir!(), "property_table_demo")
File.rm_rf!(dir)
opts = [data_directory: dir, table_name: "device"]
say = fn text -> IO.puts("  " <> text) end

table = :ets.new(:device_properties, [:set, :public])

put = fn rows ->
  ts = System.monotonic_time()
  :ets.insert(table, for({property, value} <- rows, do: {property, value, ts}))
end

show = fn t ->
  t
  |> :ets.tab2list()
  |> Enum.sort()
  |> Enum.map_join(", ", fn {p, v, _ts} -> "#{Enum.join(p, ".")}=#{inspect(v)}" end)
end

IO.puts("PropertyTable.Persist demo (files in #{dir}/device)")

put.([
  {["net", "wlan0", "state"], :up},
  {["net", "wlan0", "ipv4"], {192, 168, 1, 42}},
  {["firmware", "version"], "1.4.2"},
  {["sensor", "temp"], 21.5}
])

:ok = Persist.persist_to_disk(table, opts)
say.("1. persisted 4 properties: #{show.(table)}")

{:ok, first} = Persist.save_snapshot(table, opts)
say.("2. snapshot #{first} taken")

put.([{["firmware", "version"], "1.5.0"}, {["sensor", "temp"], 23.0}])
{:ok, second} = Persist.save_snapshot(table, opts)
say.("3. firmware upgraded, temperature rose; snapshot #{second} taken")

list = Persist.get_snapshot_list(opts)

say.(
  "4. snapshots, oldest first: " <>
    Enum.map_join(list, ", ", fn {id, datetime} ->
      "#{id} (#{datetime |> NaiveDateTime.from_erl!() |> NaiveDateTime.to_string()} UTC)"
    end)
)

put.([{["sensor", "temp"], 24.5}])
:ok = Persist.persist_to_disk(table, opts)
stable = Path.join([dir, "device", "data.ptable"])
File.write!(stable, :rand.bytes(200))
say.("5. persisted temp=24.5, then overwrote the stable file with 200 random bytes")

restored = :demo_restored

case Persist.restore_from_disk(restored, opts) do
  :ok -> say.("6. restore skipped the corrupt file and loaded the backup: #{show.(restored)}")
  other -> say.("6. restore failed: #{inspect(other)}")
end

:ok = Persist.restore_snapshot(opts, first)
:ok = Persist.restore_from_disk(restored, opts)
say.("7. restored snapshot #{first}: #{show.(restored)}")

IO.puts("Done. Nothing was lost at any step.")
