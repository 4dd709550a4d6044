#!/usr/bin/env bash
# Usage: project-cell.sh PROJECT RELEASE KERNEL OUT
# The reusable workflow's cell: runs another repository's scenarios (the
# folder PROJECT, relative to the workspace, holding scenarios/ and maybe
# images/ and snapshots/) on one release × kernel flavour, with the vmrepro
# checkout this script is part of. Writes the cell's rows (rows.json,
# rows.md) and logs into OUT and its table into the job summary; exits as
# `vmrepro run` does (0 pass, 1 fail or new, 3 environment, 4 skipped).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

project=${1:?usage: project-cell.sh PROJECT RELEASE KERNEL OUT}
release=${2:?usage: project-cell.sh PROJECT RELEASE KERNEL OUT}
kernel=${3:?usage: project-cell.sh PROJECT RELEASE KERNEL OUT}
out=${4:?usage: project-cell.sh PROJECT RELEASE KERNEL OUT}
workspace=${GITHUB_WORKSPACE:-$PWD}
case "$project" in
  /*) ;;
  *) project="$workspace/$project" ;;
esac
case "$out" in
  /*) ;;
  *) out="$workspace/$out" ;;
esac
[ -d "$project/scenarios" ] || die "$project has no scenarios/ folder"
mkdir -p "$out/rows" "$out/logs"

# Artifacts of this cell only, inside the caller's workspace.
export VMREPRO_ARTIFACTS="$out/artifacts"
status=0
vmrepro --project "$project" -v run --release "$release" --kernel "$kernel" \
  --format markdown > "$out/rows/$release-$kernel.md" || status=$?
vmrepro --project "$project" matrix --format json > "$out/rows/$release-$kernel.json"
[ -d "$VMREPRO_ARTIFACTS" ] && cp -r "$VMREPRO_ARTIFACTS" "$out/logs/artifacts"
# First runs leave pending snapshots beside the project's scenarios.
if [ -d "$project/snapshots" ]; then
  find "$project/snapshots" -name '*.snap.new' -exec cp {} "$out/logs/" \;
fi
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  {
    echo "### $release × $kernel"
    echo
    cat "$out/rows/$release-$kernel.md"
    echo
  } >> "$GITHUB_STEP_SUMMARY"
fi
exit "$status"
