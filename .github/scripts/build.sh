#!/usr/bin/env bash
# Usage: build.sh RELEASE|kernel
# Builds one image (without the kernel) or the Linode-style kernel into the
# cache. A failed build's logs are copied to target/vmrepro-build-logs for
# the artifact upload.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

what=${1:?usage: build.sh RELEASE|kernel}
status=0
if [ "$what" = kernel ]; then
  vmrepro -v images build --kernel-only || status=$?
else
  vmrepro -v images build --no-kernel "$what" || status=$?
fi
if [ "$status" -ne 0 ]; then
  mkdir -p target/vmrepro-build-logs
  if [ -d "$VMREPRO_CACHE/.failed-builds" ]; then
    cp -r "$VMREPRO_CACHE/.failed-builds/." target/vmrepro-build-logs/
  fi
  echo "build of $what failed ($status); logs in target/vmrepro-build-logs" >&2
fi
exit "$status"
