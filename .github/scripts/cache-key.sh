#!/usr/bin/env bash
# Usage: cache-key.sh RELEASE|kernel
# Writes `key` and `path` for actions/cache to $GITHUB_OUTPUT.
#
# The key is the harness's own (the recipe's hash: `vmrepro images key`),
# plus a hash of the code that builds images and kernels (a change to the
# build must not restore an entry built the old way), plus, for releases
# that still move (not in the archive of retired releases), the ISO week:
# their point releases must reach CI, and the weekly schedule refreshes them.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

what=${1:?usage: cache-key.sh RELEASE|kernel}

# The code whose content decides what a build produces: the media layer,
# the recipes it reads, the host layer it runs commands with.
BUILD_CODE=(
  harness/src/media
  harness/src/project/recipe.rs
  harness/src/host
  harness/src/text.rs
)
for path in "${BUILD_CODE[@]}"; do
  [ -e "$path" ] || die "build code $path is gone: update BUILD_CODE in $0"
done
mapfile -t files < <(find "${BUILD_CODE[@]}" -name '*.rs' -type f | LC_ALL=C sort)
code=$(cat "${files[@]}" | sha256sum | cut -c1-12)

[ -n "${VMREPRO_CACHE:-}" ] || die "VMREPRO_CACHE is not set (host-tools.sh sets it)"
if [ "$what" = kernel ]; then
  harness_key=$(vmrepro images key --kernel)
  kind=kernels
  moving=""
else
  [ -f "images/$what.toml" ] || die "no image recipe images/$what.toml"
  harness_key=$(vmrepro images key "$what")
  kind=images
  if grep -Eq '^archived *= *true' "images/$what.toml"; then
    moving=""
  else
    moving="-$(date -u +%G-W%V)"
  fi
fi
[ -n "$harness_key" ] || die "vmrepro printed no key for $what"

github_set "$GITHUB_OUTPUT" key "vmrepro-$kind-$harness_key-$code$moving"
github_set "$GITHUB_OUTPUT" path "$VMREPRO_CACHE/$kind/$harness_key"
