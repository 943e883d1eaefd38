defmodule PropertyTable.Persist.TestSupport.Package do
  @moduledoc """
  The package as Hex would publish it, and fresh Mix projects that depend on a copy of it.
  """

  import ExUnit.Assertions

  @doc "The project root (where mix.exs is)."
  @spec root() :: Path.t()
  def root, do: Path.dirname(Mix.Project.project_file())

  @doc """
  Every file the package lists (`package()[:files]` of mix.exs), directories expanded,
  relative to the root. A listed path that does not exist fails the test.
  """
  @spec files() :: [Path.t()]
  def files do
    Mix.Project.config()[:package][:files]
    |> Enum.flat_map(fn entry ->
      path = Path.join(root(), entry)
      assert File.exists?(path), "the package lists #{entry}, which does not exist"

      if File.dir?(path),
        do: Path.wildcard(Path.join(entry, "**"), match_dot: true, cwd: root()),
        else: [entry]
    end)
    |> Enum.filter(&File.regular?(Path.join(root(), &1)))
    |> Enum.sort()
  end

  @doc "Copies exactly the package's files into `dest` (new files, new modification times)."
  @spec copy(Path.t()) :: Path.t()
  def copy(dest) do
    for file <- files() do
      to = Path.join(dest, file)
      File.mkdir_p!(Path.dirname(to))
      File.cp!(Path.join(root(), file), to)
    end

    dest
  end

  @doc """
  Writes a Mix project in `dir` that depends on the package at `package` (a path
  dependency), with `config` as its config/config.exs, and `script` (an .exs file run with
  `mix run`).
  """
  @spec consumer(Path.t(), Path.t(), String.t(), String.t()) :: Path.t()
  def consumer(dir, package, config, script) do
    File.mkdir_p!(Path.join(dir, "config"))

    File.write!(Path.join(dir, "mix.exs"), """
    defmodule Consumer.MixProject do
      use Mix.Project

      def project do
        [app: :consumer, version: "0.0.1", deps: [{:property_table_persist, path: #{inspect(package)}}]]
      end
    end
    """)

    File.write!(Path.join([dir, "config", "config.exs"]), "import Config\n" <> config)
    File.write!(Path.join(dir, "check.exs"), script)
    dir
  end

  @doc """
  A script for `consumer/4`: persists a table through the dependency, restores it into
  another table and prints the restored rows on a `RESTORED` line.
  """
  @spec round_trip_script(Path.t()) :: String.t()
  def round_trip_script(data_dir) do
    """
    alias PropertyTable.Persist
    opts = [data_directory: #{inspect(data_dir)}, table_name: "device"]
    table = :ets.new(:device, [:set, :public])
    ts = System.monotonic_time()
    :ets.insert(table, [{["net", "wlan0", "state"], :up, ts}, {["firmware", "version"], "1.4.2", ts}])
    :ok = Persist.persist_to_disk(table, opts)
    restored = :ets.new(:restored, [:set, :public])
    :ok = Persist.restore_from_disk(restored, opts)
    rows = restored |> :ets.tab2list() |> Enum.map(fn {p, v, _ts} -> {p, v} end) |> Enum.sort()
    IO.puts("RESTORED " <> inspect(rows))
    """
  end

  @doc "The line `round_trip_script/1` prints when it restores what it persisted."
  @spec round_trip_line() :: String.t()
  def round_trip_line,
    do: ~s(RESTORED [{["firmware", "version"], "1.4.2"}, {["net", "wlan0", "state"], :up}])

  @doc """
  Runs `mix args` in `dir` (MIX_ENV=dev) with `env` on top of a clean Mix environment;
  returns the output and exit status.
  """
  @spec mix(Path.t(), [String.t()], [{String.t(), String.t() | nil}]) :: {String.t(), integer()}
  def mix(dir, args, env) do
    base = [
      {"MIX_ENV", "dev"},
      {"MIX_TARGET", nil},
      {"MIX_BUILD_PATH", nil},
      {"MIX_EXS", nil},
      {"PROPERTY_TABLE_NIF_BUILD", nil},
      {"PROPERTY_TABLE_NIF_BASE_URL", nil},
      {"PROPERTY_TABLE_NIF_CACHE_DIR", nil}
    ]

    System.cmd(System.find_executable("mix"), args,
      cd: dir,
      env: Enum.uniq_by(env ++ base, &elem(&1, 0)),
      stderr_to_stdout: true
    )
  end
end
