defmodule PropertyTable.Persist.Precompiled do
  @moduledoc """
  Precompiled NIFs: lets a project depend on PropertyTable.Persist without a Rust
  toolchain, with OTP alone (`:httpc`, `:crypto`, `:erl_tar`).

  The package ships `nif_checksums.exs`, a map from artifact name to the SHA-256 of that
  artifact. An artifact is a gzipped tar holding one file, `libptable_nif.so`, named

      libptable_nif-<version>-nif-<NIF version>-<Rust target triple>.so.tar.gz

  for example `libptable_nif-0.1.0-nif-2.15-aarch64-unknown-linux-gnu.so.tar.gz`. The NIF
  version is the one the `ptable_nif` crate is built for (rustler's `nif_version_X_Y`
  feature in `native/ptable_nif/Cargo.toml`); any later Erlang/OTP loads it.

  The NIF compiler asks `library/3` for the target it builds for. The answer is `:build`
  (build from source with cargo) when:

    * `PROPERTY_TABLE_NIF_BUILD` is `1` or `true`;
    * the checksum file has no entry for the target (or the target is not known);
    * no base URL is configured: a checkout of this repository builds its own sources.

  Otherwise it is a library verified against its checksum, taken from the cache when a
  cached copy verifies, else downloaded from
  `<base URL>/<artifact name>` and verified before it is unpacked or cached. A download
  that fails or does not match is a compile error that names the URL, the expected and the
  actual checksum; nothing is installed or cached then.

  ## Configuration

    * `config :property_table_persist, nif_base_url: "https://..."`, or the environment
      variable `PROPERTY_TABLE_NIF_BASE_URL` (which wins) - where the artifacts are
      published.
    * `PROPERTY_TABLE_NIF_CACHE_DIR` - the download cache. Defaults to
      `:filename.basedir(:user_cache, "property_table_persist")`
      (`~/.cache/property_table_persist` on Linux).
    * `PROPERTY_TABLE_NIF_BUILD=1` - always build from source.

  Maintainers write the artifacts and the checksum file with
  `mix property_table.nif.package`.
  """

  @library "libptable_nif.so"
  @checksum_file "nif_checksums.exs"
  @nif_cargo_toml "native/ptable_nif/Cargo.toml"
  @force_build_hint "To build the NIF from source instead (needs Rust), set PROPERTY_TABLE_NIF_BUILD=1."

  @typedoc "An artifact's checksum as the checksum file holds it: `\"sha256:<64 hex digits>\"`."
  @type checksum :: String.t()

  @typedoc """
  Settings of `library/3`, each read from the environment, the application config or the
  project when absent (tests pass them explicitly).
  """
  @type option ::
          {:force_build, boolean()}
          | {:checksums, %{optional(String.t()) => checksum()}}
          | {:base_url, String.t() | nil}
          | {:cache_dir, Path.t()}
          | {:version, String.t()}

  @doc """
  Decides how the NIF for `triple` (`nil`: the host) is obtained for the project in `root`.

  Returns `:build` for a source build, or `{:ok, path}` where `path` is a library that
  matched its checksum. Raises `Mix.Error` when the artifact cannot be fetched or does not
  match.
  """
  @spec library(String.t() | nil, Path.t(), [option()]) :: {:ok, Path.t()} | :build
  def library(triple, root, opts \\ []) do
    with false <- Keyword.get_lazy(opts, :force_build, &force_build?/0),
         triple when is_binary(triple) <- triple || host_triple(),
         # Without a base URL nothing can be fetched: decided before any project file is read.
         base_url when is_binary(base_url) <- Keyword.get_lazy(opts, :base_url, &base_url/0),
         name = artifact_name(opts[:version] || project_version(), nif_version(root), triple),
         checksums = Keyword.get_lazy(opts, :checksums, fn -> read_checksums(root) end),
         {:ok, checksum} <- Map.fetch(checksums, name) do
      cache_dir = Keyword.get_lazy(opts, :cache_dir, &cache_dir/0)
      {:ok, cached(cache_dir, name, checksum) || download(base_url, cache_dir, name, checksum)}
    else
      _ -> :build
    end
  end

  @doc "The artifact name of the NIF for one version, NIF version and Rust target triple."
  @spec artifact_name(String.t(), String.t(), String.t()) :: String.t()
  def artifact_name(version, nif_version, triple),
    do: artifact_prefix(version, nif_version) <> "#{triple}.so.tar.gz"

  @doc "What the artifact names of one version and NIF version start with."
  @spec artifact_prefix(String.t(), String.t()) :: String.t()
  def artifact_prefix(version, nif_version), do: "libptable_nif-#{version}-nif-#{nif_version}-"

  @doc """
  The Rust target triple of the running BEAM, from its `:system_architecture`
  (`x86_64-pc-linux-gnu` is `x86_64-unknown-linux-gnu`), or `nil` for a system that
  this mapping does not know (which then builds from source).
  """
  @spec host_triple(charlist() | String.t()) :: String.t() | nil
  def host_triple(architecture \\ :erlang.system_info(:system_architecture)) do
    case architecture |> to_string() |> String.split("-") do
      [arch, _vendor, "linux", abi] -> linux_triple(arch, abi)
      [arch, "linux", abi] -> linux_triple(arch, abi)
      [arch, "apple", "darwin" <> _] -> darwin_triple(arch)
      _ -> nil
    end
  end

  # Distribution BEAMs for 32-bit ARM hard-float are built for ARMv7 (Debian's armhf).
  defp linux_triple(arch, abi) do
    rust_arch =
      case arch do
        "arm" <> _ when abi in ["gnueabihf", "musleabihf"] -> "armv7"
        "riscv64" -> "riscv64gc"
        arch -> arch
      end

    "#{rust_arch}-unknown-linux-#{abi}"
  end

  defp darwin_triple(arch) when arch in ["aarch64", "arm64"], do: "aarch64-apple-darwin"
  defp darwin_triple("x86_64"), do: "x86_64-apple-darwin"
  defp darwin_triple(_arch), do: nil

  @doc """
  The NIF version the `ptable_nif` crate is built for, from rustler's `nif_version_X_Y`
  feature in its `Cargo.toml` (the one place it is set).
  """
  @spec nif_version(Path.t()) :: String.t()
  def nif_version(root) do
    path = Path.join(root, @nif_cargo_toml)

    case Regex.run(~r/"nif_version_(\d+)_(\d+)"/, File.read!(path)) do
      [_, major, minor] -> "#{major}.#{minor}"
      nil -> Mix.raise("#{path} does not select a rustler nif_version_X_Y feature")
    end
  end

  @doc "The path of the checksum file in the project at `root`."
  @spec checksum_file(Path.t()) :: Path.t()
  def checksum_file(root), do: Path.join(root, @checksum_file)

  @doc """
  Reads the checksum file of the project at `root` (an empty map when there is none). The
  file is parsed, not evaluated: it must be a literal map of names to `"sha256:..."`.
  """
  @spec read_checksums(Path.t()) :: %{optional(String.t()) => checksum()}
  def read_checksums(root) do
    path = checksum_file(root)

    case File.read(path) do
      {:ok, text} -> parse_checksums(text, path)
      {:error, :enoent} -> %{}
      {:error, reason} -> Mix.raise("Cannot read #{path}: #{:file.format_error(reason)}")
    end
  end

  defp parse_checksums(text, path) do
    with {:ok, {:%{}, _meta, pairs}} <- Code.string_to_quoted(text),
         true <- Enum.all?(pairs, &checksum_entry?/1) do
      Map.new(pairs)
    else
      _ -> Mix.raise("#{path} must be a map of artifact names to \"sha256:<hex>\" strings")
    end
  end

  defp checksum_entry?({name, "sha256:" <> hex}) when is_binary(name),
    do: hex =~ ~r/\A[0-9a-f]{64}\z/

  defp checksum_entry?(_pair), do: false

  @doc """
  Writes `checksums` as the checksum file of the project at `root`, sorted by name, through
  a temporary file and a rename.
  """
  @spec write_checksums(Path.t(), %{optional(String.t()) => checksum()}) :: :ok
  def write_checksums(root, checksums) do
    entries =
      Enum.map_join(Enum.sort(checksums), ",\n", fn {k, v} ->
        "  #{inspect(k)} => #{inspect(v)}"
      end)

    text = """
    # SHA-256 of each precompiled NIF artifact, by file name. Written by
    # `mix property_table.nif.package`; the NIF compiler downloads the artifact of its
    # target from the configured base URL when it is listed here, and builds from source
    # otherwise.
    %{
    #{entries}
    }
    """

    write_atomically(checksum_file(root), IO.iodata_to_binary(Code.format_string!(text)) <> "\n")
  end

  @doc "The checksum of `data` as the checksum file writes it."
  @spec checksum(binary()) :: checksum()
  def checksum(data), do: "sha256:" <> Base.encode16(:crypto.hash(:sha256, data), case: :lower)

  @doc """
  Packs the library at `library` into the artifact `dir/name` (the artifact holds it as
  `libptable_nif.so`) and returns the artifact's checksum.
  """
  @spec pack(Path.t(), Path.t(), String.t()) :: checksum()
  def pack(library, dir, name) do
    path = Path.join(dir, name)
    File.mkdir_p!(dir)
    _ = File.rm(path)

    case :erl_tar.create(
           String.to_charlist(path),
           [{String.to_charlist(@library), File.read!(library)}],
           [:compressed]
         ) do
      :ok -> path |> File.read!() |> checksum()
      {:error, reason} -> Mix.raise("Cannot write #{path}: #{inspect(reason)}")
    end
  end

  ## Cache and download

  # A cached artifact is used only when it still matches; one that does not is removed (a
  # fresh download replaces it).
  defp cached(cache_dir, name, checksum) do
    path = Path.join(cache_dir, name)

    with {:ok, data} <- File.read(path) do
      if checksum(data) == checksum do
        install_library(data, cache_dir, name)
      else
        Mix.shell().error("Removing #{path}: it does not match its checksum #{checksum}")
        File.rm!(path)
        nil
      end
    else
      _ -> nil
    end
  end

  # The artifact is cached only once it matches and holds the library.
  defp download(base_url, cache_dir, name, checksum) do
    url = String.trim_trailing(base_url, "/") <> "/" <> name
    Mix.shell().info("Downloading the precompiled NIF #{url}")

    case fetch(url) do
      {:ok, data} ->
        verified!(data, url, checksum)
        path = install_library(data, cache_dir, name)
        write_atomically(Path.join(cache_dir, name), data)
        path

      {:error, reason} ->
        download_failed!(url, checksum, "none: the download failed (#{reason})")
    end
  end

  defp verified!(data, url, checksum) do
    case checksum(data) do
      ^checksum -> :ok
      actual -> download_failed!(url, checksum, "#{actual} (#{byte_size(data)} bytes)")
    end
  end

  @spec download_failed!(String.t(), checksum(), String.t()) :: no_return()
  defp download_failed!(url, expected, actual) do
    Mix.raise("""
    The precompiled PropertyTable.Persist NIF could not be used; nothing was installed.
      URL:      #{url}
      expected: #{expected}
      actual:   #{actual}
    #{@force_build_hint}
    """)
  end

  defp fetch(url) do
    for app <- [:inets, :ssl] do
      {:ok, _} = Application.ensure_all_started(app)
    end

    # One download per compile: a pooled connection would only outlive its server and turn
    # a refused connection into a misleading closed one.
    request = {String.to_charlist(url), [{~c"connection", ~c"close"}]}
    # A truncated body (the connection closes early) comes back as an error, not a
    # short body, so every failure is reported as such before any checksum is taken.
    http_options = [connect_timeout: 15_000, timeout: 300_000, ssl: ssl_options(url)]

    case :httpc.request(:get, request, http_options, body_format: :binary) do
      {:ok, {{_version, 200, _phrase}, _headers, body}} -> {:ok, body}
      {:ok, {{_version, status, phrase}, _headers, _body}} -> {:error, "HTTP #{status} #{phrase}"}
      {:error, reason} -> {:error, describe(reason)}
    end
  end

  defp ssl_options("https:" <> _) do
    [
      verify: :verify_peer,
      cacerts: :public_key.cacerts_get(),
      depth: 4,
      customize_hostname_check: [match_fun: :public_key.pkix_verify_hostname_match_fun(:https)]
    ]
  end

  defp ssl_options(_url), do: []

  defp describe({:failed_connect, details}) do
    reason =
      Enum.find_value(details, :unknown, fn
        {:inet, _opts, reason} -> reason
        _ -> nil
      end)

    "cannot connect: #{inspect(reason)}"
  end

  defp describe(reason), do: inspect(reason)

  # Unpacks a verified artifact (in memory) and writes its library beside it in the cache,
  # for the compiler to install; returns the library's path.
  defp install_library(tarball, cache_dir, name) do
    library =
      case :erl_tar.extract({:binary, tarball}, [:compressed, :memory]) do
        {:ok, [{~c"libptable_nif.so", library}]} -> library
        other -> Mix.raise("#{name} does not hold just #{@library}: #{inspect(other, limit: 5)}")
      end

    File.mkdir_p!(cache_dir)
    path = Path.join(cache_dir, String.replace_suffix(name, ".tar.gz", ""))
    write_atomically(path, library)
    path
  end

  # Through a temporary file and a rename, so an interrupted compile never leaves a partial
  # file under a final name.
  defp write_atomically(path, data) do
    tmp = "#{path}.tmp-#{System.pid()}-#{System.unique_integer([:positive])}"

    try do
      File.write!(tmp, data)
      File.rename!(tmp, path)
    after
      _ = File.rm(tmp)
    end

    :ok
  end

  ## Settings

  defp force_build?, do: String.downcase(env("PROPERTY_TABLE_NIF_BUILD") || "") in ["1", "true"]

  defp base_url,
    do:
      env("PROPERTY_TABLE_NIF_BASE_URL") ||
        Application.get_env(:property_table_persist, :nif_base_url)

  defp cache_dir,
    do:
      env("PROPERTY_TABLE_NIF_CACHE_DIR") ||
        :filename.basedir(:user_cache, "property_table_persist")

  defp project_version, do: Mix.Project.config()[:version]

  defp env(name) do
    case System.get_env(name) do
      "" -> nil
      value -> value
    end
  end
end
