#!/usr/bin/env bash
# Usage: build-key.sh
# Writes `key`, `prefix` and `path` to $GITHUB_OUTPUT: the cache entry of
# vmrepro's compiled build (its target folder and cargo's registry), which
# the build job saves once and every later job of the run restores instead
# of compiling vmrepro again. The key is the toolchain plus a hash of every
# input of the build (manifests, lock file, the harness, and images/, which
# harness/build.rs compiles in); `prefix` lets a changed build start from
# an older entry's dependencies.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

INPUTS=(Cargo.toml Cargo.lock harness images)
for path in "${INPUTS[@]}"; do
  [ -e "$path" ] || die "build input $path is gone: update INPUTS in $0"
done
mapfile -t files < <(find "${INPUTS[@]}" -type f | LC_ALL=C sort)
hash=$( (printf '%s\n' "${files[@]}"; cat "${files[@]}") | sha256sum | cut -c1-16)

prefix="vmrepro-build-$RUST_TOOLCHAIN-"
github_set "$GITHUB_OUTPUT" key "$prefix$hash"
github_set "$GITHUB_OUTPUT" prefix "$prefix"
# Absolute: the restoring job may run from another folder (the reusable
# workflow's checkout of vmrepro is not the workspace's root).
{
  echo "path<<VMREPRO_PATHS"
  echo "$ROOT/target"
  echo "${CARGO_HOME:-$HOME/.cargo}/registry"
  echo "VMREPRO_PATHS"
} >> "$GITHUB_OUTPUT"
