#!/usr/bin/env bash
# Usage: host-tools.sh [rust]
# Host tools for a matrix job in a debian:bookworm container: a C toolchain,
# Rust (all that `rust` installs: the build job needs no more), and what
# vmrepro itself needs (QEMU, qemu-img, mke2fs, mmdebstrap,
# installed by `vmrepro setup`, the routine `cargo test` and the CLI use).
# Also points VMREPRO_CACHE at the workspace, where actions/cache looks: in
# a container job `${{ github.workspace }}` is the host's path, not the
# container's (actions/runner#2058), so it is taken from $GITHUB_WORKSPACE
# here instead. A cache already named (a developer's machine) is kept.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

mode=${1:-all}
case "$mode" in
  all | rust) ;;
  *) die "usage: host-tools.sh [rust]" ;;
esac

apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt-get -o Acquire::Retries=3 update
  DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=3 install -y --no-install-recommends "${missing[@]}"
}

apt_install ca-certificates curl git zstd build-essential

if ! command -v cargo >/dev/null; then
  # rustup's own installer, from where https://sh.rustup.rs serves it
  # (static.rust-lang.org, which also serves the toolchains it fetches: a
  # machine that reaches only the package registries reaches it too). The
  # toolchain is pinned, so a new stable release cannot turn clippy or the
  # build red without a commit.
  curl --proto '=https' --tlsv1.2 -sSf https://static.rust-lang.org/rustup/rustup-init.sh |
    sh -s -- -y --profile minimal --default-toolchain "$RUST_TOOLCHAIN"
  export PATH="$HOME/.cargo/bin:$PATH"
  [ -n "${GITHUB_PATH:-}" ] && echo "$HOME/.cargo/bin" >> "$GITHUB_PATH"
fi
[ "$mode" = rust ] && exit 0

if [ -z "${VMREPRO_CACHE:-}" ]; then
  [ -n "${GITHUB_WORKSPACE:-}" ] || die "neither VMREPRO_CACHE nor GITHUB_WORKSPACE is set"
  export VMREPRO_CACHE="$GITHUB_WORKSPACE/.vmrepro-cache"
fi
case "$VMREPRO_CACHE" in
  /*) ;;
  # `cargo test` runs the test binary in harness/, `cargo run` here.
  *) die "VMREPRO_CACHE must be absolute, not $VMREPRO_CACHE" ;;
esac
[ -n "${GITHUB_ENV:-}" ] && github_set "$GITHUB_ENV" VMREPRO_CACHE "$VMREPRO_CACHE"

vmrepro setup
