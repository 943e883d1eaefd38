defmodule PersistBench.Baseline do
  @moduledoc false
  # The algorithm of property_table 0.2.3's persistence, written from its description for
  # the benchmark (no compatibility intended beyond the file layout):
  #
  #   persist: one :ets.foldl into a [{property, value}] list, term_to_binary(compressed: 6),
  #            MD5, write "PTABLE" <<1, 0, size::64-big>> payload md5 to the tmp file with
  #            File.write!(tmp, data, [:sync]), rename stable -> backup, tmp -> stable.
  #   restore: read the whole file, check the MD5, binary_to_term, then :ets.insert each
  #            row on its own with a fresh System.monotonic_time().

  @stable "prop_table.db"
  @backup "prop_table.db.backup"
  @tmp "prop_table.db.tmp"

  def stable_path(dir), do: Path.join(dir, @stable)

  def persist(table, dir) do
    File.mkdir_p!(dir)
    pairs = :ets.foldl(fn {property, value, _ts}, acc -> [{property, value} | acc] end, [], table)
    payload = :erlang.term_to_binary(pairs, compressed: 6)
    md5 = :erlang.md5(payload)
    header = <<"PTABLE", 1, 0, byte_size(payload)::64-big>>

    stable = Path.join(dir, @stable)
    tmp = Path.join(dir, @tmp)
    File.write!(tmp, [header, payload, md5], [:sync])
    if File.exists?(stable), do: File.rename!(stable, Path.join(dir, @backup))
    File.rename!(tmp, stable)
    :ok
  end

  # Restores into `table` (an existing table).
  def restore(table, dir) do
    content = File.read!(Path.join(dir, @stable))

    with <<"PTABLE", 1, 0, len::64-big, payload::binary-size(len), md5::binary-size(16)>> <-
           content,
         true <- :erlang.md5(payload) == md5 do
      payload
      |> :erlang.binary_to_term()
      |> Enum.each(fn {property, value} ->
        :ets.insert(table, {property, value, System.monotonic_time()})
      end)
    else
      _ -> {:error, :bad_file}
    end
  end
end
