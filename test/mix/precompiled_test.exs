defmodule PropertyTable.Persist.PrecompiledTest do
  # Mix.shell/1 and the environment are global.
  use ExUnit.Case, async: false

  alias PropertyTable.Persist.Precompiled
  alias PropertyTable.Persist.TestSupport.{HttpServer, Package}

  @moduletag :tmp_dir
  @triple "x86_64-unknown-linux-gnu"

  setup %{tmp_dir: dir} do
    Mix.shell(Mix.Shell.Process)
    on_exit(fn -> Mix.shell(Mix.Shell.IO) end)

    # The real library of this build, packed as the package task packs it.
    library = Path.join(:code.priv_dir(:property_table_persist), "native/libptable_nif.so")
    docs = Path.join(dir, "docs")
    name = Precompiled.artifact_name("0.1.0", "2.15", @triple)
    checksum = Precompiled.pack(library, docs, name)
    cache = Path.join(dir, "cache")

    opts = [
      force_build: false,
      version: "0.1.0",
      checksums: %{name => checksum},
      cache_dir: cache
    ]

    %{library: library, docs: docs, name: name, checksum: checksum, cache: cache, opts: opts}
  end

  defp library(opts, base_url),
    do: Precompiled.library(@triple, Package.root(), [{:base_url, base_url} | opts])

  defp cache_files(cache), do: if(File.dir?(cache), do: File.ls!(cache), else: [])

  defp downloads do
    receive do
      {:mix_shell, :info, ["Downloading the precompiled NIF " <> url]} -> [url | downloads()]
    after
      0 -> []
    end
  end

  test "a good artifact is downloaded, verified, cached and its library handed out", ctx do
    {server, url} = HttpServer.serve(ctx.docs)
    on_exit(fn -> HttpServer.stop(server) end)

    assert {:ok, path} = library(ctx.opts, url)
    assert File.read!(path) == File.read!(ctx.library)
    assert downloads() == ["#{url}/#{ctx.name}"]
    cached = Path.join(ctx.cache, ctx.name)
    assert Precompiled.checksum(File.read!(cached)) == ctx.checksum
  end

  test "the cache serves a verified artifact when the server is gone", ctx do
    {server, url} = HttpServer.serve(ctx.docs)
    assert {:ok, _path} = library(ctx.opts, url)
    assert [_] = downloads()
    :ok = HttpServer.stop(server)

    assert {:ok, path} = library(ctx.opts, url)
    assert File.read!(path) == File.read!(ctx.library)
    assert downloads() == []
  end

  test "a cached artifact that no longer matches is removed and downloaded again", ctx do
    {server, url} = HttpServer.serve(ctx.docs)
    assert {:ok, _path} = library(ctx.opts, url)
    cached = Path.join(ctx.cache, ctx.name)
    File.write!(cached, "tampered")

    assert {:ok, path} = library(ctx.opts, url)
    assert File.read!(path) == File.read!(ctx.library)
    assert Precompiled.checksum(File.read!(cached)) == ctx.checksum
    assert_received {:mix_shell, :error, ["Removing " <> _]}

    # With the server gone, the bad copy is removed and nothing replaces it.
    File.write!(cached, "tampered")
    :ok = HttpServer.stop(server)
    assert_raise Mix.Error, ~r/cannot connect: :econnrefused/, fn -> library(ctx.opts, url) end
    refute File.exists?(cached)
  end

  test "a checksum mismatch is an error naming the URL and both checksums", ctx do
    {server, url} = HttpServer.serve(ctx.docs)
    on_exit(fn -> HttpServer.stop(server) end)
    expected = Precompiled.checksum("another artifact")
    opts = Keyword.put(ctx.opts, :checksums, %{ctx.name => expected})

    error = assert_raise Mix.Error, fn -> library(opts, url) end
    assert error.message =~ "#{url}/#{ctx.name}"
    assert error.message =~ "expected: #{expected}"
    assert error.message =~ "actual:   #{ctx.checksum}"
    assert error.message =~ "PROPERTY_TABLE_NIF_BUILD=1"
    assert cache_files(ctx.cache) == []
  end

  test "a truncated file is refused by its checksum", ctx do
    artifact = Path.join(ctx.docs, ctx.name)
    data = File.read!(artifact)
    half = binary_part(data, 0, div(byte_size(data), 2))
    File.write!(artifact, half)
    {server, url} = HttpServer.serve(ctx.docs)
    on_exit(fn -> HttpServer.stop(server) end)

    error = assert_raise Mix.Error, fn -> library(ctx.opts, url) end
    assert error.message =~ "expected: #{ctx.checksum}"
    assert error.message =~ "actual:   #{Precompiled.checksum(half)} (#{byte_size(half)} bytes)"
    assert cache_files(ctx.cache) == []
  end

  test "a transfer cut short is an error", ctx do
    data = File.read!(Path.join(ctx.docs, ctx.name))
    url = HttpServer.truncating(binary_part(data, 0, 1000), byte_size(data))

    error = assert_raise Mix.Error, fn -> library(ctx.opts, url) end
    assert error.message =~ "#{url}/#{ctx.name}"
    assert error.message =~ "expected: #{ctx.checksum}"
    assert error.message =~ "actual:   none: the download failed"
    assert cache_files(ctx.cache) == []
  end

  test "an HTTP error is an error naming the status", ctx do
    {server, url} = HttpServer.serve(Path.join(ctx.tmp_dir, "empty"))
    on_exit(fn -> HttpServer.stop(server) end)

    error = assert_raise Mix.Error, fn -> library(ctx.opts, url) end
    assert error.message =~ "#{url}/#{ctx.name}"
    assert error.message =~ "HTTP 404"
    assert error.message =~ "expected: #{ctx.checksum}"
    assert cache_files(ctx.cache) == []
  end

  test "an unreachable server is an error", ctx do
    {server, url} = HttpServer.serve(ctx.docs)
    :ok = HttpServer.stop(server)

    error = assert_raise Mix.Error, fn -> library(ctx.opts, url) end
    assert error.message =~ "#{url}/#{ctx.name}"
    assert error.message =~ "cannot connect: :econnrefused"
    assert error.message =~ "PROPERTY_TABLE_NIF_BUILD=1"
    assert cache_files(ctx.cache) == []
  end

  test "a source build when forced, unlisted or without a base URL", ctx do
    url = "http://127.0.0.1:9/never-asked"
    assert library(Keyword.put(ctx.opts, :force_build, true), url) == :build
    assert library(Keyword.put(ctx.opts, :checksums, %{}), url) == :build
    assert library(Keyword.put(ctx.opts, :version, "0.2.0"), url) == :build
    assert library(ctx.opts, nil) == :build
    assert downloads() == []
  end

  test "PROPERTY_TABLE_NIF_BUILD=1 or true forces a source build", ctx do
    opts = Keyword.delete(ctx.opts, :force_build)
    previous = System.get_env("PROPERTY_TABLE_NIF_BUILD")

    on_exit(fn ->
      if previous,
        do: System.put_env("PROPERTY_TABLE_NIF_BUILD", previous),
        else: System.delete_env("PROPERTY_TABLE_NIF_BUILD")
    end)

    for value <- ["1", "true", "TRUE"] do
      System.put_env("PROPERTY_TABLE_NIF_BUILD", value)
      assert library(opts, "http://127.0.0.1:9/never-asked") == :build
    end
  end

  test "the base URL comes from the environment, else the application config", ctx do
    {server, url} = HttpServer.serve(ctx.docs)
    on_exit(fn -> HttpServer.stop(server) end)
    opts = Keyword.delete(ctx.opts, :base_url)

    Application.put_env(:property_table_persist, :nif_base_url, url)
    on_exit(fn -> Application.delete_env(:property_table_persist, :nif_base_url) end)
    assert {:ok, _path} = Precompiled.library(@triple, Package.root(), opts)
    assert downloads() == ["#{url}/#{ctx.name}"]

    System.put_env("PROPERTY_TABLE_NIF_BASE_URL", url <> "/elsewhere")
    on_exit(fn -> System.delete_env("PROPERTY_TABLE_NIF_BASE_URL") end)
    File.rm_rf!(ctx.cache)

    assert_raise Mix.Error, ~r/HTTP 404/, fn ->
      Precompiled.library(@triple, Package.root(), opts)
    end
  end

  test "host triples from the BEAM's system architecture" do
    assert Precompiled.host_triple(~c"x86_64-pc-linux-gnu") == "x86_64-unknown-linux-gnu"
    assert Precompiled.host_triple("aarch64-unknown-linux-gnu") == "aarch64-unknown-linux-gnu"

    assert Precompiled.host_triple("arm-unknown-linux-gnueabihf") ==
             "armv7-unknown-linux-gnueabihf"

    assert Precompiled.host_triple("x86_64-alpine-linux-musl") == "x86_64-unknown-linux-musl"
    assert Precompiled.host_triple("riscv64-unknown-linux-gnu") == "riscv64gc-unknown-linux-gnu"
    assert Precompiled.host_triple("aarch64-apple-darwin23.4.0") == "aarch64-apple-darwin"
    assert Precompiled.host_triple("x86_64-apple-darwin21.6.0") == "x86_64-apple-darwin"
    assert Precompiled.host_triple("win32") == nil
  end

  test "the NIF version is rustler's feature in native/ptable_nif/Cargo.toml" do
    cargo_toml = File.read!(Path.join(Package.root(), "native/ptable_nif/Cargo.toml"))
    assert cargo_toml =~ ~s("nif_version_2_15")
    assert Precompiled.nif_version(Package.root()) == "2.15"
  end

  test "checksum files round trip, and the committed one parses", %{tmp_dir: dir} do
    assert is_map(Precompiled.read_checksums(Package.root()))
    assert Precompiled.read_checksums(dir) == %{}

    Precompiled.write_checksums(dir, %{})
    assert Precompiled.read_checksums(dir) == %{}

    checksums = %{
      "b.so.tar.gz" => Precompiled.checksum("b"),
      "a.so.tar.gz" => Precompiled.checksum("a")
    }

    Precompiled.write_checksums(dir, checksums)
    assert Precompiled.read_checksums(dir) == checksums
  end

  test "a checksum file that is not a literal map of checksums is refused", %{tmp_dir: dir} do
    texts = [
      ~s|%{"a" => "md5:00"}|,
      ~s|%{"a" => "sha256:00"}|,
      ~s|File.rm_rf!("/")|,
      ~s|[{"a", "sha256:#{String.duplicate("0", 64)}"}]|,
      "%{"
    ]

    for text <- texts do
      File.write!(Precompiled.checksum_file(dir), text)
      assert_raise Mix.Error, ~r/must be a map/, fn -> Precompiled.read_checksums(dir) end
    end
  end
end
