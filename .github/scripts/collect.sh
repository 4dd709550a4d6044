#!/usr/bin/env bash
# Usage: collect.sh RELEASE KERNEL OUT
# Gathers what a cell left into OUT: its outcome rows (rows.json and
# rows.md, always uploaded for the summary job), and for the logs artifact
# the console logs, captures and reports of every trial, pending snapshots
# and the logs of failed builds. Appends the cell's table to the job summary.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

release=${1:?usage: collect.sh RELEASE KERNEL OUT}
kernel=${2:?usage: collect.sh RELEASE KERNEL OUT}
out=${3:?usage: collect.sh RELEASE KERNEL OUT}
mkdir -p "$out/rows" "$out/logs"

for run in warm cold; do
  dir=${VMREPRO_ARTIFACTS:-target/vmrepro}
  [ "$run" = cold ] && dir=${VMREPRO_COLD_ARTIFACTS:-target/vmrepro-cold}
  [ -d "$dir" ] || continue
  VMREPRO_ARTIFACTS=$dir vmrepro matrix --format json > "$out/rows/$release-$kernel-$run.json"
  VMREPRO_ARTIFACTS=$dir vmrepro matrix --format markdown > "$out/rows/$release-$kernel-$run.md"
  cp -r "$dir" "$out/logs/$run"
  if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    {
      echo "### $release × $kernel ($run first boot)"
      echo
      cat "$out/rows/$release-$kernel-$run.md"
      echo
    } >> "$GITHUB_STEP_SUMMARY"
  fi
done
if compgen -G "snapshots/*.snap.new" >/dev/null; then
  mkdir -p "$out/logs/pending-snapshots"
  cp snapshots/*.snap.new "$out/logs/pending-snapshots/"
fi
[ -d target/vmrepro-build-logs ] && cp -r target/vmrepro-build-logs "$out/logs/build-logs"
if ! compgen -G "$out/rows/*" >/dev/null; then
  echo "no rows: the cell's trials did not run" > "$out/rows/$release-$kernel-none.md"
fi
exit 0
