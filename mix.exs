# The NIF compiler must exist before lib/ is compiled, so it lives outside lib/
# and is loaded here. __DIR__ keeps this working when the project is a
# dependency and mix.exs is evaluated from another directory.
Code.require_file("mix/tasks/compile.property_table_nif.ex", __DIR__)

defmodule PropertyTable.Persist.MixProject do
  use Mix.Project

  def project do
    [
      app: :property_table_persist,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:property_table_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      # No Hex packages at all: the project must build where hex.pm is unreachable.
      deps: []
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_env), do: ["lib"]
end
