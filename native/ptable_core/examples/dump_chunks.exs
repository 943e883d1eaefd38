# Writes the benchmark's realistic table (bench/support/data.ex) as the persist encodes it,
# for examples/change_index_bench.rs: each chunk is `:erlang.term_to_binary(pairs)` of up
# to 1,000 `{property, value}` pairs, stored as a 4-byte little-endian length and the chunk.
#
#   elixir native/ptable_core/examples/dump_chunks.exs ROWS DIR
#
# (from the repository's root) writes DIR/base.chunks, then the same table after changes:
# one.chunks (one row's value changed), delins.chunks (then one row deleted and one
# inserted), tenth.chunks (then 0.1% of the rows changed).
Code.require_file("bench/support/data.ex")

[rows, dir] = System.argv()
rows = String.to_integer(rows)
File.mkdir_p!(dir)
spec = [{{:"$1", :"$2", :_}, [], [{{:"$1", :"$2"}}]}]

dump = fn table, name ->
  path = Path.join(dir, name <> ".chunks")

  chunks =
    Stream.unfold(:ets.select(table, spec, 1000), fn
      :"$end_of_table" -> nil
      {pairs, cont} -> {:erlang.term_to_binary(pairs), :ets.select(cont)}
    end)
    |> Enum.map(fn chunk -> [<<byte_size(chunk)::little-32>>, chunk] end)

  File.write!(path, chunks)
  IO.puts("#{path}: #{:ets.info(table, :size)} rows, #{File.stat!(path).size} bytes")
end

table = PersistBench.Data.new_table(:bench, rows, 42)
dump.(table, "base")
PersistBench.Data.mutate(table, 1 / rows, 1)
dump.(table, "one")
victim = :ets.first(table)
:ets.delete(table, victim)
:ets.insert(table, {["bench", "inserted", "row"], 123, System.monotonic_time()})
dump.(table, "delins")
PersistBench.Data.mutate(table, 0.001, 2)
dump.(table, "tenth")
