defmodule PropertyTable.PersistTermsTest do
  @moduledoc """
  Terms of every kind survive a persist/restore round trip, at every chunk size boundary
  and every compression level.
  """
  use ExUnit.Case, async: true

  import PropertyTable.Persist.TestHelpers

  alias PropertyTable.Persist

  @moduletag :tmp_dir

  defp opts(dir, extra), do: [data_directory: dir, table_name: "t"] ++ extra

  defp round_trip(dir, pairs, extra \\ []) do
    table = new_table(pairs)
    assert :ok = Persist.persist_to_disk(table, opts(dir, extra))
    target = :ets.new(:terms_target, [:set, :public])
    assert :ok = Persist.restore_from_disk(target, opts(dir, extra))
    restored = for {p, v, _ts} <- :ets.tab2list(target), do: {p, v}
    :ets.delete(target)
    :ets.delete(table)
    restored
  end

  defp assert_round_trip(dir, pairs, extra \\ []) do
    restored = Enum.sort(round_trip(dir, pairs, extra))
    expected = Enum.sort(pairs)

    # === (not ==), so that 1 and 1.0 or -0.0 and 0.0 would differ.
    unless restored === expected do
      assert length(restored) == length(expected)

      for {{p1, v1}, {p2, v2}} <- Enum.zip(expected, restored), not (p1 === p2 and v1 === v2) do
        flunk("#{inspect(p1)} => #{inspect(v1)} came back as #{inspect(p2)} => #{inspect(v2)}")
      end
    end
  end

  defp every_kind do
    big_map = Map.new(1..100, &{&1, "v#{&1}"})
    deep = Enum.reduce(1..1000, :bottom, fn i, acc -> [i, acc] end)
    local_fun = fn x -> x * 2 end
    port = Port.open({:spawn, "true"}, [])

    [
      {[:atom], :an_atom},
      {[:atom_unicode], :"héllo wörld ✓"},
      {[:empty_atom], :""},
      {[:booleans], {true, false, nil}},
      {[:small_int], 42},
      {[:negative], -42},
      {[:int_edges], [0, 255, 256, -1, 2_147_483_647, -2_147_483_648, 2 ** 31, -(2 ** 31) - 1]},
      {[:big_int], 2 ** 200},
      {[:big_negative], -(2 ** 1000) + 7},
      {[:huge_int], 2 ** 20_000},
      {[:float], 3.141592653589793},
      {[:float_edges], [0.0, 1.0e308, -1.0e308, 5.0e-324, 1.0e-10, -2.5]},
      {[:binary], <<0, 1, 2, 255>>},
      {[:empty_binary], ""},
      {[:bitstring], <<1::3>>},
      {[:bitstring_long], <<0xFFFF::16, 5::5>>},
      {[:unicode_string], "Ünïcødé ✓ 日本語 🎉"},
      {[:charlist], ~c"charlist"},
      {[:small_map], %{a: 1, b: "two"}},
      {[:empty_map], %{}},
      {[:big_map], big_map},
      {[:nested_map], %{outer: %{inner: %{deepest: [1, 2, 3]}}}},
      {[:list], [1, [2, [3, [4]]], []]},
      {[:deep_list], deep},
      {[:improper], [1, 2 | 3]},
      {[:improper_nested], [[:a | :b] | "tail"]},
      {[:tuple], {1, {2, {3}}, {}}},
      {[:big_tuple], List.to_tuple(Enum.to_list(1..300))},
      {[:ref], make_ref()},
      {[:pid], self()},
      {[:port], port},
      {[:fun], local_fun},
      {[:external_fun], &Enum.map/2},
      {[:keyword], [a: 1, b: [c: 2]]},
      {[:struct], %URI{host: "example.com", port: 443, scheme: "https"}},
      {[:range], 1..10//3},
      {[:mixed], {[1 | 2], %{{:k} => [<<1::1>>]}, -0.5, :atom, "s"}},
      # Properties of other shapes than lists of strings.
      {"string property", 1},
      {:atom_property, 2},
      {{:tuple, "property"}, 3},
      {%{map: :property}, 4},
      {123, 5},
      {[], :empty_list_property},
      {["nil", "value"], nil}
    ]
  end

  test "terms of every kind survive a round trip", %{tmp_dir: dir} do
    pairs = every_kind()
    assert_round_trip(dir, pairs)
    assert_round_trip(dir, pairs, chunk_size: 1, compression: 0)
    assert_round_trip(dir, pairs, chunk_size: 3, compression: 9, safe: true)

    # Funs still work after the round trip.
    restored = Map.new(round_trip(dir, pairs))
    assert restored[[:fun]].(21) == 42
    assert restored[[:external_fun]].([1], &(&1 + 1)) == [2]
  end

  test "1 MB values", %{tmp_dir: dir} do
    random = :crypto.strong_rand_bytes(1_048_576)
    zeros = :binary.copy(<<0>>, 1_048_576)
    list = Enum.to_list(1..100_000)

    pairs = [
      {["random"], random},
      {["zeros"], zeros},
      {["list"], list},
      {["sub binary"], binary_part(random, 3, 500_000)},
      {["small"], 1}
    ]

    assert_round_trip(dir, pairs)
    assert_round_trip(dir, pairs, chunk_size: 1)
    assert_round_trip(dir, pairs, chunk_size: 2, compression: 0)
  end

  test "an empty table", %{tmp_dir: dir} do
    assert round_trip(dir, []) == []
    assert round_trip(dir, [], chunk_size: 1, compression: 0) == []
    # An empty table after a full one replaces it.
    assert_round_trip(dir, realistic_pairs(10))
    assert round_trip(dir, []) == []
  end

  test "chunk boundaries", %{tmp_dir: dir} do
    for n <- [1, 2, 6, 7, 8, 13, 14, 15, 49, 100],
        chunk_size <- [1, 7, n - 1, n, n + 1],
        chunk_size > 0 do
      assert_round_trip(dir, realistic_pairs(n, n), chunk_size: chunk_size)
    end
  end

  test "a larger table with the default options", %{tmp_dir: dir} do
    assert_round_trip(dir, realistic_pairs(20_000))
  end

  test "every compression level round trips", %{tmp_dir: dir} do
    pairs = every_kind() ++ realistic_pairs(500)

    for level <- 0..9 do
      assert_round_trip(dir, pairs, compression: level, chunk_size: 100)
    end
  end

  test "higher compression levels give files no larger than level 1 on realistic data",
       %{tmp_dir: dir} do
    table = new_table(realistic_pairs(5000))

    sizes =
      for level <- 0..9, into: %{} do
        o = [data_directory: dir, table_name: "level#{level}", compression: level]
        :ok = Persist.persist_to_disk(table, o)
        {level, File.stat!(stable_path(dir, "level#{level}")).size}
      end

    IO.puts("\n[compression] file size by level for 5000 realistic rows: #{inspect(sizes)}")
    assert sizes[0] > sizes[1], "level 1 should compress: #{inspect(sizes)}"

    for level <- 2..9 do
      assert sizes[level] <= sizes[1], "level #{level} larger than level 1: #{inspect(sizes)}"
    end

    assert sizes[9] <= sizes[6]
  end
end
