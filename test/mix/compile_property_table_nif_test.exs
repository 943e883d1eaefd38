defmodule Mix.Tasks.Compile.PropertyTableNifTest do
  @moduledoc """
  The NIF compiler: the Rust triple of every Nerves system, the environment it gives cargo,
  and, through `mix compile` of a copy of the project with a stand-in `cargo`, what a cross
  build and a failed build print.
  """
  use ExUnit.Case, async: true

  alias Mix.Tasks.Compile.PropertyTableNif, as: Compiler

  # Nerves systems' variables (their mix.exs / nerves_env) and the Rust target each needs.
  @nerves_systems [
    # 64-bit ARM
    {"rpi3", "aarch64", "gnu", "cortex_a53", "aarch64-unknown-linux-gnu"},
    {"rpi4", "aarch64", "gnu", "cortex_a72", "aarch64-unknown-linux-gnu"},
    {"rpi5", "aarch64", "gnu", "cortex_a76", "aarch64-unknown-linux-gnu"},
    # 32-bit ARMv7: Nerves says "arm", Rust's arm-* would be ARMv6
    {"bbb", "arm", "gnueabihf", "cortex_a8", "armv7-unknown-linux-gnueabihf"},
    {"rpi2", "arm", "gnueabihf", "cortex_a7", "armv7-unknown-linux-gnueabihf"},
    {"rpi3a", "arm", "gnueabihf", "cortex_a53", "armv7-unknown-linux-gnueabihf"},
    {"osd32mp1", "arm", "gnueabihf", "cortex_a7", "armv7-unknown-linux-gnueabihf"},
    # ARMv6 (ARM11): Raspberry Pi Zero and 1
    {"rpi0", "arm", "gnueabihf", "arm1176jzf_s", "arm-unknown-linux-gnueabihf"},
    {"rpi", "arm", "gnueabihf", "arm1176jzf_s", "arm-unknown-linux-gnueabihf"},
    # x86_64 uses musl
    {"x86_64", "x86_64", "musl", "x86_64", "x86_64-unknown-linux-musl"},
    # RISC-V: Rust only has the RV64GC Linux target
    {"mangopi_mq_pro", "riscv64", "gnu", "rv64gc", "riscv64gc-unknown-linux-gnu"}
  ]

  defp nerves_env(target, arch, abi, cpu) do
    %{
      "MIX_TARGET" => target,
      "TARGET_ARCH" => arch,
      "TARGET_OS" => "linux",
      "TARGET_ABI" => abi,
      "TARGET_CPU" => cpu
    }
  end

  describe "target_triple/1" do
    test "the Rust triple of every Nerves system" do
      for {target, arch, abi, cpu, triple} <- @nerves_systems do
        assert Compiler.target_triple(nerves_env(target, arch, abi, cpu)) == triple,
               "MIX_TARGET=#{target}"
      end
    end

    test "a host build has no triple" do
      env = nerves_env("rpi4", "aarch64", "gnu", "cortex_a72")

      assert Compiler.target_triple(%{}) == nil
      assert Compiler.target_triple(%{env | "MIX_TARGET" => "host"}) == nil
      # `MIX_TARGET= mix compile` switches the target off.
      assert Compiler.target_triple(%{env | "MIX_TARGET" => ""}) == nil
      # Not a Nerves environment: the system's variables are missing.
      assert Compiler.target_triple(Map.delete(env, "TARGET_ABI")) == nil
    end

    test "CARGO_BUILD_TARGET wins over the Nerves variables" do
      env = nerves_env("rpi4", "aarch64", "gnu", "cortex_a72")

      assert Compiler.target_triple(Map.put(env, "CARGO_BUILD_TARGET", "aarch64-linux-android")) ==
               "aarch64-linux-android"

      assert Compiler.target_triple(Map.put(env, "CARGO_BUILD_TARGET", "")) ==
               "aarch64-unknown-linux-gnu"
    end
  end

  describe "cargo_env/2" do
    test "a Nerves build links with its CC unless the triple's linker is set" do
      env = Map.put(nerves_env("bbb", "arm", "gnueabihf", "cortex_a8"), "CC", "arm-gcc")
      var = "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER"

      assert Compiler.cargo_env("armv7-unknown-linux-gnueabihf", env) == [{var, "arm-gcc"}]
      assert Compiler.cargo_env("armv7-unknown-linux-gnueabihf", Map.put(env, var, "mine")) == []
    end

    test "a plain CARGO_BUILD_TARGET build keeps cargo's linker" do
      env = %{"CARGO_BUILD_TARGET" => "aarch64-unknown-linux-gnu", "CC" => "gcc"}
      assert Compiler.cargo_env("aarch64-unknown-linux-gnu", env) == []
      assert Compiler.cargo_env(nil, env) == []
    end

    test "a musl build gets a dynamic C runtime, after the user's flags" do
      triple = "x86_64-unknown-linux-musl"
      var = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS"

      assert Compiler.cargo_env(triple, %{}) == [{var, "-C target-feature=-crt-static"}]

      assert Compiler.cargo_env(triple, %{var => "-C opt-level=s"}) ==
               [{var, "-C opt-level=s -C target-feature=-crt-static"}]

      # cargo ignores the per-target flags when RUSTFLAGS or CARGO_ENCODED_RUSTFLAGS is set.
      assert Compiler.cargo_env(triple, %{"RUSTFLAGS" => "-g", var => "-C opt-level=s"}) ==
               [{"RUSTFLAGS", "-g -C target-feature=-crt-static"}]

      assert Compiler.cargo_env(triple, %{"CARGO_ENCODED_RUSTFLAGS" => "-C\x1fdebuginfo=1"}) ==
               [
                 {"CARGO_ENCODED_RUSTFLAGS",
                  "-C\x1fdebuginfo=1\x1f-C\x1ftarget-feature=-crt-static"}
               ]
    end

    test "glibc targets keep their default C runtime" do
      for {target, arch, abi, cpu, triple} <- @nerves_systems, abi != "musl" do
        env = nerves_env(target, arch, abi, cpu)
        refute Enum.any?(Compiler.cargo_env(triple, env), fn {var, _} -> var =~ "RUSTFLAGS" end)
      end
    end
  end

  describe "mix compile with a stand-in cargo" do
    @describetag :tmp_dir
    @describetag :mix_compile

    test "a Nerves x86_64 (musl) cross build: flags reach cargo, no load failure is printed",
         %{tmp_dir: dir} do
      project = copy_project(dir)
      rustflags = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS"

      {out, status} =
        mix_compile(project, dir, "build", [
          {"MIX_TARGET", "x86_64"},
          {"TARGET_ARCH", "x86_64"},
          {"TARGET_OS", "linux"},
          {"TARGET_ABI", "musl"},
          {"TARGET_CPU", "x86_64"},
          {"CC", "x86_64-nerves-linux-musl-gcc"},
          {rustflags, "-C opt-level=s"}
        ])

      assert status == 0, out
      seen = File.read!(Path.join(dir, "cargo.env"))

      assert seen =~
               "args=build --locked -p ptable_nif --release --target x86_64-unknown-linux-musl"

      assert seen =~ "#{rustflags}=-C opt-level=s -C target-feature=-crt-static\n"

      assert seen =~
               "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=x86_64-nerves-linux-musl-gcc\n"

      installed = Path.join(project, "_build/x86_64_dev/lib/property_table_persist/priv/native")

      assert File.read!(Path.join(installed, "libptable_nif.so")) == "not a library for this VM"
      # The host VM cannot load the target's library; it must not try and say it failed.
      refute out =~ "on_load", out
      refute out =~ "load_failed", out
      refute out =~ "warning", out
    end

    test "a failed cross build names every way to get the target's standard library",
         %{tmp_dir: dir} do
      project = copy_project(dir)

      {out, status} =
        mix_compile(project, dir, "fail", [{"CARGO_BUILD_TARGET", "aarch64-unknown-linux-gnu"}])

      assert status != 0, out
      assert out =~ "cargo build of ptable_nif failed with exit status 101"
      assert out =~ "rustup target add aarch64-unknown-linux-gnu"
      assert out =~ "libstd-rust-web-dev:<arch>"
      assert out =~ "RUSTC=/usr/bin/rustc"
      assert out =~ "a precompiled NIF (see README, Nerves)"
    end

    # Not loading at compile time must not hide a library that cannot load where it runs.
    test "a host library that cannot load is reported when the module is loaded",
         %{tmp_dir: dir} do
      project = copy_project(dir)
      load = "IO.inspect(Code.ensure_loaded(PropertyTable.Persist.Native), label: :loaded)"

      {out, status} = mix(project, dir, "build", ["run", "-e", load], [])

      assert status == 0, out
      assert out =~ "The on_load function for module Elixir.PropertyTable.Persist.Native"
      assert out =~ "Failed to load NIF library"
      assert out =~ "loaded: {:error, :on_load_failure}"
    end
  end

  # What the compiler needs of the project; the stand-in cargo makes native/ unnecessary.
  defp copy_project(dir) do
    project = Path.join(dir, "project")
    root = Path.expand("../..", __DIR__)
    File.mkdir_p!(project)

    for path <- ["mix.exs", "mix", "lib"] do
      File.cp_r!(Path.join(root, path), Path.join(project, path))
    end

    project
  end

  defp mix_compile(project, dir, mode, env), do: mix(project, dir, mode, ["compile"], env)

  # Runs `mix args` in `project` with a `cargo` that records its arguments and environment in
  # dir/cargo.env, then either "builds" a file that is no library (`build`) or fails like a
  # missing standard library (`fail`).
  defp mix(project, dir, mode, args, env) do
    cargo = Path.join(dir, "cargo")

    File.write!(cargo, """
    #!/bin/sh
    { echo "args=$*"; env; } > "#{dir}/cargo.env"
    if [ "#{mode}" = fail ]; then echo "error[E0463]: can't find crate for std" >&2; exit 101; fi
    case "$*" in
      *--target*) out="$CARGO_TARGET_DIR/${*##*--target }/release" ;;
      *) out="$CARGO_TARGET_DIR/release" ;;
    esac
    mkdir -p "$out" && printf 'not a library for this VM' > "$out/libptable_nif.so"
    """)

    File.chmod!(cargo, 0o755)

    # The surrounding run's own target (the ARM CI sets these) must not leak in.
    cleared =
      for var <-
            ~w(MIX_TARGET MIX_ENV MIX_BUILD_PATH MIX_BUILD_ROOT TARGET_ARCH TARGET_OS TARGET_ABI
               TARGET_CPU CC CFLAGS RUSTC RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET),
          do: {var, nil}

    env =
      Map.new(cleared)
      |> Map.merge(%{"CARGO" => cargo, "CARGO_TARGET_DIR" => Path.join(dir, "target")})
      |> Map.merge(Map.new(env))

    System.cmd(System.find_executable("mix"), args,
      cd: project,
      env: Map.to_list(env),
      stderr_to_stdout: true
    )
  end
end
