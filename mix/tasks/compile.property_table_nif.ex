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
      `armv7-unknown-linux-gnueabihf`), and `CC` becomes the linker for that
      triple (`CARGO_TARGET_<TRIPLE>_LINKER`) unless that variable is already
      set. The triple's standard library must be installed
      (`rustup target add <triple>`).
  """

  use Mix.Task.Compiler

  @crate "ptable_nif"
  @installed_name "libptable_nif.so"
  # PROPERTY_TABLE_NIF_PROFILE value => cargo profile directory under target/
  @profiles %{"release" => :release, "debug" => :debug, "dev" => :debug}

  @impl Mix.Task.Compiler
  def run(_args) do
    root = project_root()
    cargo = find_cargo!()
    profile = profile!()
    triple = target_triple()
    args = cargo_args(profile, triple)

    # cargo announces its own work; echoing the command on every (usually
    # no-op) run would only add noise to `mix test` output.
    if Mix.debug?(), do: Mix.shell().info("Running #{Enum.join([cargo | args], " ")} in #{root}")

    case System.cmd(cargo, args,
           cd: root,
           env: cargo_env(triple),
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

  defp target_triple do
    env("CARGO_BUILD_TARGET") || nerves_triple()
  end

  defp nerves_triple do
    with target when target not in [nil, "host"] <- env("MIX_TARGET"),
         arch when arch != nil <- env("TARGET_ARCH"),
         os when os != nil <- env("TARGET_OS"),
         abi when abi != nil <- env("TARGET_ABI") do
      "#{rust_arch(arch, abi, env("TARGET_CPU"))}-unknown-#{os}-#{abi}"
    else
      _ -> nil
    end
  end

  # Nerves says "arm" for every 32-bit ARM system. Rust's arm-*-gnueabihf
  # targets are ARMv6; the ARMv7 boards (the common case) need armv7-*. The
  # ARM11 cores (Raspberry Pi Zero/1) really are ARMv6, so they keep "arm".
  defp rust_arch("arm", "gnueabihf", "arm1176" <> _), do: "arm"
  defp rust_arch("arm", "gnueabihf", _cpu), do: "armv7"
  # Rust has no plain riscv64 Linux target, only the RV64GC one.
  defp rust_arch("riscv64", _abi, _cpu), do: "riscv64gc"
  defp rust_arch(arch, _abi, _cpu), do: arch

  defp cargo_args(profile, triple) do
    ["build", "--locked", "-p", @crate] ++
      if(profile == :release, do: ["--release"], else: []) ++
      if(triple, do: ["--target", triple], else: [])
  end

  defp cargo_env(nil), do: []

  defp cargo_env(triple) do
    linker_var =
      "CARGO_TARGET_#{triple |> String.upcase() |> String.replace(~r/[^A-Z0-9]/, "_")}_LINKER"

    # Only a Nerves build hands us a cross CC meant for this triple; a plain
    # CARGO_BUILD_TARGET build keeps whatever linker cargo is configured with.
    case {nerves_triple(), env("CC"), env(linker_var)} do
      {nerves, cc, nil} when nerves != nil and cc != nil -> [{linker_var, cc}]
      _ -> []
    end
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
    hint =
      if triple,
        do: " (is the #{triple} standard library installed? `rustup target add #{triple}`)",
        else: ""

    message = "cargo build of #{@crate} failed with exit status #{status}#{hint}"
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

  # Treats an empty variable like an unset one: `FOO= mix compile` is a common
  # way to switch a setting off.
  defp env(name) do
    case System.get_env(name) do
      "" -> nil
      value -> value
    end
  end
end
