defmodule Mix.Tasks.Compile.PropertyTableNif do
  @shortdoc "Builds the ptable_nif Rust NIF with cargo"

  @moduledoc """
  Builds the `ptable_nif` crate with `cargo` and copies the resulting shared
  library to `priv/native/libptable_nif.so` in the application's build
  directory (`Mix.Project.app_path/0`), never into the source tree.

  The compiler always runs `cargo build --locked -p ptable_nif` and lets cargo
  decide whether anything is stale; it returns `:noop` when the library it
  produced is byte-identical to the one already installed, so repeated
  `mix test` runs do not touch the build directory.

  Rust is required: install it with <https://rustup.rs>.

  ## Environment variables

    * `CARGO` - the `cargo` executable to use. Defaults to `cargo` on the
      `PATH`, then `~/.cargo/bin/cargo`.

    * `PROPERTY_TABLE_NIF_PROFILE` - `release` (default) builds with
      `--release`; `debug` (or `dev`) builds cargo's unoptimised dev profile.

    * `CARGO_TARGET_DIR` - where cargo puts its build output. Defaults to
      `target/` in the project root.

    * `CARGO_BUILD_TARGET` - a Rust target triple to cross-compile for. Passed
      to cargo as `--target`.

    * `MIX_TARGET`, `TARGET_ARCH`, `TARGET_OS`, `TARGET_ABI`, `TARGET_CPU`, `CC` -
      set by Nerves. When `MIX_TARGET` is set to something other than `host`
      and `CARGO_BUILD_TARGET` is not set, the Rust triple is derived as
      `<arch>-unknown-<os>-<abi>` (for example
      `armv7-unknown-linux-gnueabihf`; see `target_triple/1`), and `CC`
      becomes the linker for that triple (`CARGO_TARGET_<TRIPLE>_LINKER`)
      unless that variable is already set.

    * `RUSTC` - the `rustc` cargo runs (cargo's own variable). A cross build
      needs a `rustc` that has the triple's standard library: rustup's
      (`rustup target add <triple>`), or a distribution's, such as Debian's
      `rustc-web` with `libstd-rust-web-dev:<arch>` and `RUSTC=/usr/bin/rustc`.

  Rust's musl targets link the C runtime statically by default, and a static
  runtime cannot go into a shared library: rustc silently skips the NIF. For a
  musl triple (Nerves' x86_64 systems) the compiler therefore adds
  `-C target-feature=-crt-static` to the flags cargo uses for that triple
  (see `cargo_env/2`), after any the user set.
  """

  use Mix.Task.Compiler

  @crate "ptable_nif"
  @installed_name "libptable_nif.so"
  # PROPERTY_TABLE_NIF_PROFILE value => cargo profile directory under target/
  @profiles %{"release" => :release, "debug" => :debug, "dev" => :debug}

  @impl Mix.Task.Compiler
  def run(args) do
    # Precompiled NIFs (PropertyTable.Persist.Precompiled): a verified download or cached
    # artifact for the target replaces the cargo build, unless a source build is asked for
    # or no artifact is listed.
    case PropertyTable.Persist.Precompiled.library(
           target_triple(System.get_env()),
           project_root()
         ) do
      {:ok, library} -> install(library)
      :build -> build_from_source(args)
    end
  end

  defp build_from_source(_args) do
    root = project_root()
    cargo = find_cargo!()
    profile = profile!()
    triple = target_triple(System.get_env())
    args = cargo_args(profile, triple)

    # cargo announces its own work; echoing the command on every (usually
    # no-op) run would only add noise to `mix test` output.
    if Mix.debug?(), do: Mix.shell().info("Running #{Enum.join([cargo | args], " ")} in #{root}")

    case System.cmd(cargo, args,
           cd: root,
           env: cargo_env(triple, System.get_env()),
           into: IO.stream(:stdio, :line),
           stderr_to_stdout: true
         ) do
      {_, 0} ->
        root
        |> built_library(profile, triple)
        |> install()

      {_, status} ->
        build_failed(root, status, triple)
    end
  end

  @impl Mix.Task.Compiler
  def manifests, do: [installed_path()]

  @impl Mix.Task.Compiler
  def clean do
    _ = File.rm(installed_path())
    :ok
  end

  # The directory holding mix.exs, Cargo.toml and Cargo.lock. When this
  # project is a dependency Mix runs its compilers with the dependency's
  # mix.exs as the current project, so this also points at the dependency.
  defp project_root do
    case Mix.Project.project_file() do
      nil -> File.cwd!()
      file -> Path.dirname(file)
    end
  end

  defp installed_path do
    Path.join([Mix.Project.app_path(), "priv", "native", @installed_name])
  end

  defp find_cargo! do
    candidates =
      case env("CARGO") do
        # An explicit choice is not second-guessed with fallbacks.
        nil -> ["cargo", Path.expand("~/.cargo/bin/cargo")]
        cargo -> [cargo]
      end

    Enum.find_value(candidates, &System.find_executable/1) ||
      Mix.raise("""
      Could not find cargo (tried #{Enum.join(candidates, ", ")}).

      PropertyTable.Persist compiles its NIF from Rust source, so it needs a
      Rust toolchain. Install one with rustup (https://rustup.rs):

          curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh

      then make sure `cargo` is on your PATH, or point the CARGO environment
      variable at the cargo executable.
      """)
  end

  defp profile! do
    name = env("PROPERTY_TABLE_NIF_PROFILE") || "release"

    Map.get(@profiles, name) ||
      Mix.raise("PROPERTY_TABLE_NIF_PROFILE must be release, debug or dev, got: #{name}")
  end

  @doc """
  The Rust target triple to build for, from environment variables (`name => value`; an
  empty value counts as unset), or `nil` for a host build.

  `CARGO_BUILD_TARGET` wins. Otherwise a Nerves build (`MIX_TARGET` set and not `host`)
  gives `<arch>-unknown-<os>-<abi>` from `TARGET_ARCH`, `TARGET_OS` and `TARGET_ABI`, with
  Nerves' architecture names mapped to Rust's: `arm` is `armv7` (`arm` only for the ARMv6
  `TARGET_CPU=arm1176*`), `riscv64` is `riscv64gc`. So `rpi4` gives
  `aarch64-unknown-linux-gnu`, `bbb` `armv7-unknown-linux-gnueabihf`, `rpi0`
  `arm-unknown-linux-gnueabihf` and `x86_64` `x86_64-unknown-linux-musl`.
  """
  @spec target_triple(%{optional(String.t()) => String.t()}) :: String.t() | nil
  def target_triple(env) do
    get(env, "CARGO_BUILD_TARGET") || nerves_triple(env)
  end

  defp nerves_triple(env) do
    with target when target not in [nil, "host"] <- get(env, "MIX_TARGET"),
         arch when arch != nil <- get(env, "TARGET_ARCH"),
         os when os != nil <- get(env, "TARGET_OS"),
         abi when abi != nil <- get(env, "TARGET_ABI") do
      "#{rust_arch(arch, get(env, "TARGET_CPU"))}-unknown-#{os}-#{abi}"
    else
      _ -> nil
    end
  end

  # Nerves says "arm" for every 32-bit ARM system. Rust's plain arm-* targets are ARMv6;
  # the ARMv7 boards (the common case) need armv7-*. The ARM11 cores (Raspberry Pi
  # Zero/1) really are ARMv6, so they keep "arm".
  defp rust_arch("arm", "arm1176" <> _), do: "arm"
  defp rust_arch("arm", _cpu), do: "armv7"
  # Rust has no plain riscv64 Linux target, only the RV64GC one.
  defp rust_arch("riscv64", _cpu), do: "riscv64gc"
  defp rust_arch(arch, _cpu), do: arch

  defp cargo_args(profile, triple) do
    ["build", "--locked", "-p", @crate] ++
      if(profile == :release, do: ["--release"], else: []) ++
      if(triple, do: ["--target", triple], else: [])
  end

  @doc """
  The variables the compiler adds to cargo's environment for `triple`, given the current
  environment `env` (`name => value`; an empty value counts as unset).

    * A Nerves build's `CC` becomes the triple's linker, `CARGO_TARGET_<TRIPLE>_LINKER`,
      unless that is set already.
    * A musl triple gets `-C target-feature=-crt-static`, appended to the flags the user
      gave: to `CARGO_ENCODED_RUSTFLAGS` or `RUSTFLAGS` when set (cargo then ignores the
      per-target flags), else to `CARGO_TARGET_<TRIPLE>_RUSTFLAGS`.
  """
  @spec cargo_env(String.t() | nil, %{optional(String.t()) => String.t()}) ::
          [{String.t(), String.t()}]
  def cargo_env(nil, _env), do: []

  def cargo_env(triple, env) do
    linker_env(triple, env) ++ rustflags_env(triple, env)
  end

  defp linker_env(triple, env) do
    linker_var = target_var(triple, "LINKER")

    # Only a Nerves build hands us a cross CC meant for this triple; a plain
    # CARGO_BUILD_TARGET build keeps whatever linker cargo is configured with.
    case {nerves_triple(env), get(env, "CC"), get(env, linker_var)} do
      {nerves, cc, nil} when nerves != nil and cc != nil -> [{linker_var, cc}]
      _ -> []
    end
  end

  # musl targets default to crt-static, with which rustc drops the cdylib ("dropping
  # unsupported crate type") and cargo still succeeds.
  defp rustflags_env(triple, env) do
    if String.contains?(triple, "musl") do
      flags = ["-C", "target-feature=-crt-static"]

      cond do
        encoded = get(env, "CARGO_ENCODED_RUSTFLAGS") ->
          [{"CARGO_ENCODED_RUSTFLAGS", Enum.join([encoded | flags], "\x1f")}]

        plain = get(env, "RUSTFLAGS") ->
          [{"RUSTFLAGS", Enum.join([plain | flags], " ")}]

        true ->
          var = target_var(triple, "RUSTFLAGS")
          [{var, Enum.join(List.wrap(get(env, var)) ++ flags, " ")}]
      end
    else
      []
    end
  end

  # cargo's per-target configuration variable, CARGO_TARGET_<TRIPLE>_<KEY>.
  defp target_var(triple, key) do
    "CARGO_TARGET_#{triple |> String.upcase() |> String.replace(~r/[^A-Z0-9]/, "_")}_#{key}"
  end

  defp built_library(root, profile, triple) do
    target_dir = Path.expand(env("CARGO_TARGET_DIR") || "target", root)
    profile_dir = Atom.to_string(profile)
    # With an explicit target cargo nests its output under the triple.
    dir =
      if triple,
        do: Path.join([target_dir, triple, profile_dir]),
        else: Path.join(target_dir, profile_dir)

    Path.join(dir, library_file_name(triple))
  end

  # Erlang looks for a .so on every Unix, macOS included, so a .dylib is
  # installed under the .so name.
  defp library_file_name(triple) do
    cond do
      triple && String.contains?(triple, "apple") -> "lib#{@crate}.dylib"
      triple -> "lib#{@crate}.so"
      :os.type() == {:unix, :darwin} -> "lib#{@crate}.dylib"
      true -> "lib#{@crate}.so"
    end
  end

  defp install(built) do
    installed = installed_path()

    unless File.regular?(built) do
      Mix.raise("cargo reported success but #{built} does not exist")
    end

    if identical?(built, installed) do
      {:noop, []}
    else
      File.mkdir_p!(Path.dirname(installed))
      # A running VM may have the old library mmapped; writing over it in
      # place can crash that VM. Unlinking first gives the copy a new inode
      # and leaves the mapped one intact.
      _ = File.rm(installed)
      File.cp!(built, installed)
      {:ok, []}
    end
  end

  defp identical?(a, b) do
    with {:ok, %File.Stat{size: size}} <- File.stat(a),
         {:ok, %File.Stat{size: ^size}} <- File.stat(b) do
      File.read!(a) == File.read!(b)
    else
      _ -> false
    end
  end

  defp build_failed(root, status, triple) do
    message = "cargo build of #{@crate} failed with exit status #{status}#{cross_hint(triple)}"
    Mix.shell().error(message)

    {:error,
     [
       %Mix.Task.Compiler.Diagnostic{
         compiler_name: "property_table_nif",
         file: Path.join([root, "native", @crate, "Cargo.toml"]),
         message: message,
         position: nil,
         severity: :error
       }
     ]}
  end

  defp cross_hint(nil), do: ""

  defp cross_hint(triple) do
    """
    .
    If cargo could not find the Rust standard library for #{triple}
    (error E0463), get it one of these ways:
      * rustup: `rustup target add #{triple}`;
      * a distribution's Rust with the target's std, e.g. on Debian
        `apt-get install rustc-web cargo-web libstd-rust-web-dev:<arch>` and
        RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo;
      * or no Rust at all: a precompiled NIF (see README, Nerves).\
    """
  end

  # Treats an empty variable like an unset one: `FOO= mix compile` is a common
  # way to switch a setting off.
  defp env(name), do: get(System.get_env(), name)

  defp get(env, name) do
    case Map.get(env, name) do
      "" -> nil
      value -> value
    end
  end
end
