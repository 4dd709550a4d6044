#!/usr/bin/env bash
# The stand-in for actions/download-artifact under act: one artifact by
# name into the path itself, or every artifact whose name matches the
# pattern (all of them without one) into path/NAME, or into path itself
# with merge-multiple.
set -euo pipefail

store=${VMREPRO_ACT_STORE:?VMREPRO_ACT_STORE is not set: this stand-in runs only under .github/scripts/act.sh}
command -v curl >/dev/null || { echo "::error::the download-artifact stand-in needs curl in the job's image"; exit 1; }
[ -z "${INPUT_ARTIFACT_IDS:-}" ] || { echo "::error::this stand-in does not take artifact-ids"; exit 1; }
dest=${INPUT_PATH:-$GITHUB_WORKSPACE}
case "$dest" in
  '~'/*) dest="$HOME/${dest#'~/'}" ;;
  /*) ;;
  *) dest="$GITHUB_WORKSPACE/$dest" ;;
esac

fetch() {
  # Unpacks artifact NAME into FOLDER.
  local tmp code
  tmp=$(mktemp)
  code=$(curl -sS -o "$tmp" -w '%{http_code}' "$store/artifact/$1")
  if [ "$code" != 200 ]; then
    rm -f "$tmp"
    return 1
  fi
  mkdir -p "$2"
  tar -x -f "$tmp" -C "$2"
  rm -f "$tmp"
}

if [ -n "${INPUT_NAME:-}" ]; then
  fetch "$INPUT_NAME" "$dest" || { echo "::error::Unable to download artifact(s): Artifact '$INPUT_NAME' not found"; exit 1; }
  echo "Downloaded $INPUT_NAME into $dest"
  matched=1
else
  names=$(curl -sSf "$store/artifacts")
  matched=0
  while IFS= read -r name; do
    [ -n "$name" ] || continue
    # shellcheck disable=SC2053 # the pattern is a glob on purpose
    if [ -n "${INPUT_PATTERN:-}" ] && [[ $name != $INPUT_PATTERN ]]; then
      continue
    fi
    if [ "${INPUT_MERGE_MULTIPLE:-false}" = true ]; then
      fetch "$name" "$dest"
    else
      fetch "$name" "$dest/$name"
    fi
    matched=$((matched + 1))
    echo "Downloaded $name"
  done <<< "$names"
  echo "$matched artifact(s) matched ${INPUT_PATTERN:-every name} into $dest"
fi
# As the real action (src/download-artifact.ts): the output is set once an
# artifact was downloaded; none matching is no failure.
if [ "$matched" -gt 0 ]; then
  echo "download-path=$dest" >> "$GITHUB_OUTPUT"
fi
