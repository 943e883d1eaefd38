defmodule PropertyTable.Persist.PackageTest do
  # Mix.shell/1 is global, and the package task builds in a shared directory.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO

  alias PropertyTable.Persist.Precompiled
  alias PropertyTable.Persist.TestSupport.{HttpServer, Package}

  # Builds with the host's cargo: `.ci/arm` leaves these out (`--exclude package`), since
  # its Nerves variables would retarget the builds; the host run proves the package.
  @moduletag :package
  @moduletag :tmp_dir
  @moduletag timeout: 900_000

  defp installed_library,
    do: Path.join(:code.priv_dir(:property_table_persist), "native/libptable_nif.so")

  defp host_artifact(version \\ "0.1.0") do
    Precompiled.artifact_name(
      version,
      Precompiled.nif_version(Package.root()),
      Precompiled.host_triple()
    )
  end

  test "the package task packs the host library and keeps this version's other entries",
       %{tmp_dir: dir} do
    other_target = Precompiled.artifact_name("0.1.0", "2.15", "aarch64-unknown-linux-gnu")
    old_version = host_artifact("0.0.9")

    Precompiled.write_checksums(dir, %{
      other_target => Precompiled.checksum("aarch64"),
      old_version => Precompiled.checksum("old"),
      host_artifact() => Precompiled.checksum("stale")
    })

    output = Path.join(dir, "out")

    log =
      capture_io(fn ->
        Mix.Task.rerun("property_table.nif.package", ["--output", output, "--checksums-root", dir])
      end)

    assert log =~ "Building the NIF for #{Precompiled.host_triple()}"
    artifact = File.read!(Path.join(output, host_artifact()))

    assert Precompiled.read_checksums(dir) == %{
             other_target => Precompiled.checksum("aarch64"),
             host_artifact() => Precompiled.checksum(artifact)
           }

    assert {:ok, [{~c"libptable_nif.so", library}]} =
             :erl_tar.extract({:binary, artifact}, [:compressed, :memory])

    # The same cargo build as this test run's.
    assert library == File.read!(installed_library())
  end

  test "the package's files build from source as a path dependency of a fresh project",
       %{tmp_dir: dir} do
    package = Package.copy(Path.join(dir, "package"))
    refute File.exists?(Path.join(package, "test"))
    refute File.exists?(Path.join(package, "native/ptable_core/tests"))

    app =
      Package.consumer(
        Path.join(dir, "app"),
        package,
        "",
        Package.round_trip_script(Path.join(dir, "data"))
      )

    {output, status} =
      Package.mix(app, ["run", "check.exs"], [
        {"PROPERTY_TABLE_NIF_BUILD", "1"},
        # The files a build needs are the same for every profile; the unoptimized one
        # compiles the copy's crates in about a quarter of the release build's time.
        {"PROPERTY_TABLE_NIF_PROFILE", "debug"},
        # The project's target directory: cargo reuses the registry crates (zstd's C code
        # above all) and compiles the copy's own crates, whose files are all new.
        {"CARGO_TARGET_DIR", Path.join(Package.root(), "target")}
      ])

    assert status == 0, output
    assert output =~ "Compiling ptable_core"
    assert output =~ "Compiling ptable_nif"
    assert output =~ Package.round_trip_line()
  end

  test "a project without Rust installs the precompiled NIF from the base URL",
       %{tmp_dir: dir} do
    package = Package.copy(Path.join(dir, "package"))
    docs = Path.join(dir, "docs")
    checksum = Precompiled.pack(installed_library(), docs, host_artifact())
    Precompiled.write_checksums(package, %{host_artifact() => checksum})
    {server, url} = HttpServer.serve(docs)
    on_exit(fn -> HttpServer.stop(server) end)

    config = "config :property_table_persist, nif_base_url: #{inspect(url)}\n"

    app =
      Package.consumer(
        Path.join(dir, "app"),
        package,
        config,
        Package.round_trip_script(Path.join(dir, "data"))
      )

    {output, status} =
      Package.mix(app, ["run", "check.exs"], [
        {"PROPERTY_TABLE_NIF_CACHE_DIR", Path.join(dir, "cache")},
        # No cargo to be found: a source build would fail.
        {"CARGO", Path.join(dir, "no-cargo")}
      ])

    assert status == 0, output
    assert output =~ "Downloading the precompiled NIF #{url}/#{host_artifact()}"
    assert output =~ Package.round_trip_line()

    installed =
      Path.join(app, "_build/dev/lib/property_table_persist/priv/native/libptable_nif.so")

    assert File.read!(installed) == File.read!(installed_library())
  end

  test "a Nerves build installs the artifact of the triple derived from its target",
       %{tmp_dir: dir} do
    triple = "aarch64-unknown-linux-gnu"
    name = Precompiled.artifact_name("0.1.0", Precompiled.nif_version(Package.root()), triple)
    package = Package.copy(Path.join(dir, "package"))
    docs = Path.join(dir, "docs")
    # Whatever the artifact holds is installed as it is: the host's library under the
    # aarch64 name shows which artifact the build asks for, without an ARM toolchain.
    checksum = Precompiled.pack(installed_library(), docs, name)
    Precompiled.write_checksums(package, %{name => checksum})
    {server, url} = HttpServer.serve(docs)
    on_exit(fn -> HttpServer.stop(server) end)

    config = "config :property_table_persist, nif_base_url: #{inspect(url)}\n"
    app = Package.consumer(Path.join(dir, "app"), package, config, "")

    {output, status} =
      Package.mix(app, ["compile"], [
        {"PROPERTY_TABLE_NIF_CACHE_DIR", Path.join(dir, "cache")},
        {"CARGO", Path.join(dir, "no-cargo")},
        {"MIX_TARGET", "rpi4"},
        {"TARGET_ARCH", "aarch64"},
        {"TARGET_OS", "linux"},
        {"TARGET_ABI", "gnu"},
        {"TARGET_CPU", "cortex_a72"},
        {"CC", "aarch64-linux-gnu-gcc"}
      ])

    assert status == 0, output
    assert output =~ "Downloading the precompiled NIF #{url}/#{name}"

    installed =
      Path.join(app, "_build/rpi4_dev/lib/property_table_persist/priv/native/libptable_nif.so")

    assert File.read!(installed) == File.read!(installed_library())
  end
end
