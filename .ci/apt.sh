# Sourced by the CI scripts: apt-get that survives a mirror out of step with itself.
#
# Two failures seen on CI machines: a mirror mid-sync fails an index for a few minutes (a
# retry helps), and a mirror whose bookworm-security armhf index did not match its signed
# Release for days (exit 100). apt then drops that whole suite for every architecture, so
# one foreign architecture's broken index hid the arm64 and host packages too. apt_update
# fetches only the architectures it is given, so a broken one costs only itself.

export DEBIAN_FRONTEND=noninteractive

# apt_update [FOREIGN_ARCH...]: the host's package lists plus those of the foreign
# architectures named (none: the host's only), retried. Lists of architectures not named
# are dropped until the next apt_update names them.
apt_update() {
  local opts=(-o "APT::Architectures::=$(dpkg --print-architecture)") arch attempt
  for arch in "$@"; do
    opts+=(-o "APT::Architectures::=$arch")
  done
  for attempt in 1 2 3; do
    if apt-get update "${opts[@]}"; then
      return 0
    fi
    if [ "$attempt" -lt 3 ]; then
      echo "apt-get update failed (attempt $attempt of 3); retrying in $((attempt * 20)) s" >&2
      sleep $((attempt * 20))
    fi
  done
  echo "apt-get update failed 3 times (architectures: host ${*:-only})" >&2
  return 1
}

# apt_install PACKAGE...: the host's lists refreshed, then the packages installed.
apt_install() {
  apt_update && apt-get install -y "$@"
}
