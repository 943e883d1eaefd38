defmodule PropertyTable.PersistSmokeTest do
  use ExUnit.Case, async: true

  alias PropertyTable.Persist

  @moduletag :tmp_dir

  defp new_table(rows) do
    table = :ets.new(:smoke, [:set, :public])
    ts = System.monotonic_time()
    :ets.insert(table, for({p, v} <- rows, do: {p, v, ts}))
    table
  end

  test "persist then restore round trips", %{tmp_dir: dir} do
    rows = for i <- 1..5000, do: {["a", "b", Integer.to_string(i)], %{i: i, s: "value #{i}"}}
    table = new_table(rows)
    opts = [data_directory: dir, table_name: "t"]
    assert :ok = Persist.persist_to_disk(table, opts)

    target = :ets.new(:target, [:set, :public])
    :ets.insert(target, {:stale, 1, 0})
    assert :ok = Persist.restore_from_disk(target, opts)
    restored = :ets.tab2list(target)
    assert length(restored) == 5000
    assert Enum.sort(for {p, v, _} <- restored, do: {p, v}) == Enum.sort(rows)
    assert [_] = Enum.uniq(for {_, _, ts} <- restored, do: ts)
  end
end
