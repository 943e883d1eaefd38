# The NIF compiler must exist before lib/ is compiled, so it lives outside lib/
# and is loaded here. __DIR__ keeps this working when the project is a
# dependency and mix.exs is evaluated from another directory.
Code.require_file("mix/property_table_nif/precompiled.ex", __DIR__)
Code.require_file("mix/tasks/compile.property_table_nif.ex", __DIR__)
Code.require_file("mix/tasks/property_table.nif.package.ex", __DIR__)

defmodule PropertyTable.Persist.MixProject do
  use Mix.Project

  @version "0.1.0"
  # Placeholder: the repository's public address is not decided yet.
  @source_url "https://github.com/property-table-persist/property_table_persist"

  def project do
    [
      app: :property_table_persist,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:property_table_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      # No Hex packages at all: the project must build where hex.pm is unreachable.
      deps: [],
      description: description(),
      package: package(),
      source_url: @source_url,
      docs: docs()
    ]
  end

  def application do
    [extra_applications: [:logger | test_applications(Mix.env())]]
  end

  # The precompiled NIF tests serve artifacts with OTP's :httpd. The NIF compiler starts
  # :inets and :ssl itself when it downloads, so the library never needs them.
  defp test_applications(:test), do: [:inets]
  defp test_applications(_env), do: []

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_env), do: ["lib"]

  defp description do
    "Crash-safe persistence of ETS property tables (PropertyTable.Persist's API) " <>
      "through a Rust NIF: chunked, checksummed files that survive power loss."
  end

  # Everything a build from the package needs: the Mix compiler (mix/), the crates' manifests
  # and sources (their tests/ are not built by `cargo build`), the workspace manifest and
  # lock file, and the precompiled NIFs' checksums. Not target/, bench/, test/ or examples/.
  defp package do
    [
      licenses: ["Apache-2.0"],
      links: %{
        "Source" => @source_url,
        "Changelog" => "#{@source_url}/blob/v#{@version}/CHANGELOG.md",
        "File format" => "#{@source_url}/blob/v#{@version}/FORMAT.md"
      },
      files: [
        "lib",
        "mix",
        "native/ptable_core/Cargo.toml",
        "native/ptable_core/src",
        "native/ptable_nif/Cargo.toml",
        "native/ptable_nif/src",
        "Cargo.toml",
        "Cargo.lock",
        "nif_checksums.exs",
        "mix.exs",
        ".formatter.exs",
        "README.md",
        "FORMAT.md",
        "LICENSE",
        "CHANGELOG.md"
      ]
    ]
  end

  # Settings for ex_doc, which is not a dependency (no Hex here): `mix docs` works where it
  # is installed as an archive or added by whoever builds the docs.
  defp docs do
    [
      main: "readme",
      source_ref: "v#{@version}",
      source_url: @source_url,
      extras: ["README.md", "FORMAT.md", "CHANGELOG.md", "LICENSE"]
    ]
  end
end
