defmodule Mix.Tasks.PropertyTable.Nif.Package do
  @shortdoc "Builds the precompiled NIF artifacts and writes nif_checksums.exs"

  @moduledoc """
  Builds the NIF for the host and for each `--target`, packs each library as a
  precompiled artifact (see `PropertyTable.Persist.Precompiled`) and records the
  artifacts' SHA-256 in `nif_checksums.exs`.

      mix property_table.nif.package --target aarch64-unknown-linux-gnu \\
        --target armv7-unknown-linux-gnueabihf

  Each build is the NIF compiler's own source build (`mix compile.property_table_nif`
  with `PROPERTY_TABLE_NIF_BUILD=1` and `CARGO_BUILD_TARGET=<triple>`), in a separate
  build directory, so it honours the compiler's environment variables (`CARGO`,
  `CARGO_TARGET_DIR`, `PROPERTY_TABLE_NIF_PROFILE`). A cross target needs its Rust standard
  library and a linker, as for any cargo cross build: set
  `CARGO_TARGET_<TRIPLE>_LINKER` (for example
  `CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc`). The host
  artifact is named after the running BEAM's architecture, the name a host compile looks
  for.

  The checksum file keeps the entries of other targets of the same version (so targets
  may be built on several machines) and drops those of other versions.

  Publish: upload every file of the output directory to the release URL that users set as
  `nif_base_url`, and commit `nif_checksums.exs` with the version it lists.

  ## Options

    * `--target TRIPLE` - a Rust target triple to build besides the host (repeatable).
    * `--output DIR` - where the artifacts go. Default `_build/precompiled_nifs`.
    * `--checksums-root DIR` - the directory whose `nif_checksums.exs` is written. Default:
      the project root.
  """

  use Mix.Task

  alias PropertyTable.Persist.Precompiled

  @switches [target: :keep, output: :string, checksums_root: :string]

  @impl Mix.Task
  def run(args) do
    {opts, _rest} = OptionParser.parse!(args, strict: @switches)
    root = Path.dirname(Mix.Project.project_file())
    output = Path.expand(opts[:output] || "_build/precompiled_nifs", root)
    checksums_root = Path.expand(opts[:checksums_root] || root, root)

    host =
      Precompiled.host_triple() ||
        Mix.raise("No Rust target is known for #{:erlang.system_info(:system_architecture)}")

    version = Mix.Project.config()[:version]
    nif_version = Precompiled.nif_version(root)
    targets = Enum.uniq([host | Keyword.get_values(opts, :target)])

    built =
      Map.new(targets, fn triple ->
        name = Precompiled.artifact_name(version, nif_version, triple)
        library = build(root, triple, triple != host)
        checksum = Precompiled.pack(library, output, name)
        Mix.shell().info("#{Path.join(output, name)} #{checksum}")
        {name, checksum}
      end)

    prefix = Precompiled.artifact_prefix(version, nif_version)

    checksums_root
    |> Precompiled.read_checksums()
    |> Map.filter(fn {name, _checksum} -> String.starts_with?(name, prefix) end)
    |> Map.merge(built)
    |> then(&Precompiled.write_checksums(checksums_root, &1))

    Mix.shell().info("""
    Wrote #{Precompiled.checksum_file(checksums_root)}.
    Upload the files of #{output} to the release URL (nif_base_url) and commit the checksum file.
    """)
  end

  # Runs the NIF compiler's source build in a build directory of its own and returns the
  # library it installed there. The compiler reports a failed build without a failing
  # exit status, so the library's presence is what tells.
  defp build(root, triple, cross?) do
    build_path = Path.join([Mix.Project.build_path(), "nif_package", triple])
    _ = File.rm_rf!(build_path)
    mix = System.find_executable("mix") || Mix.raise("mix is not on the PATH")

    env = [
      {"PROPERTY_TABLE_NIF_BUILD", "1"},
      {"MIX_BUILD_PATH", build_path},
      {"CARGO_BUILD_TARGET", if(cross?, do: triple)},
      # A Nerves target in the caller's environment would make the compiler derive its
      # own triple and linker from it.
      {"MIX_TARGET", nil}
    ]

    Mix.shell().info("Building the NIF for #{triple}")

    {_, status} =
      System.cmd(mix, ["compile.property_table_nif"],
        cd: root,
        env: env,
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    library =
      Path.join([
        build_path,
        "lib",
        "property_table_persist",
        "priv",
        "native",
        "libptable_nif.so"
      ])

    if status != 0 or not File.regular?(library) do
      Mix.raise("Building the NIF for #{triple} failed (see the output above)")
    end

    library
  end
end
