#!/usr/bin/env bash
# The stand-in for actions/upload-artifact under act: one path (a file, a
# folder or a pattern), stored as a tar stream of what it names, relative
# to the folder it names (as the real action roots an upload at the least
# common ancestor of its files).
set -euo pipefail

store=${VMREPRO_ACT_STORE:?VMREPRO_ACT_STORE is not set: this stand-in runs only under .github/scripts/act.sh}
command -v curl >/dev/null || { echo "::error::the upload-artifact stand-in needs curl in the job's image"; exit 1; }
name=${INPUT_NAME:-artifact}
# The characters the real action refuses (@actions/artifact path-and-artifact-name-validation.ts).
if [ -z "$name" ] || [[ $name == *[\":\<\>\|\*\?\\/$'\r'$'\n']* ]]; then
  echo "::error::Artifact name is not valid: $name"
  exit 1
fi
path=${INPUT_PATH:?Input required and not supplied: path}
path=${path%$'\n'}
case "$path" in
  *$'\n'*) echo "::error::this stand-in uploads one path; the step lists several"; exit 1 ;;
esac
case "$path" in
  /*) ;;
  *) path="$GITHUB_WORKSPACE/$path" ;;
esac
while [ "${path%/}" != "$path" ] && [ "$path" != / ]; do path=${path%/}; done

files=()
if [ -d "$path" ]; then
  root=$path
  while IFS= read -r -d '' file; do files+=("${file#"$root"/}"); done < <(find "$path" -type f -print0 | sort -z)
else
  root=$(dirname "$path")
  shopt -s nullglob
  for file in $path; do
    [ -f "$file" ] && files+=("$(basename "$file")")
  done
fi
if [ "${INPUT_INCLUDE_HIDDEN_FILES:-false}" != true ]; then
  kept=()
  for file in "${files[@]}"; do
    case "/$file" in */.*) ;; *) kept+=("$file") ;; esac
  done
  files=("${kept[@]}")
fi

if [ ${#files[@]} -eq 0 ]; then
  message="No files were found with the provided path: ${INPUT_PATH}. No artifacts will be uploaded."
  case "${INPUT_IF_NO_FILES_FOUND:-warn}" in
    error) echo "::error::$message"; exit 1 ;;
    ignore) echo "$message"; exit 0 ;;
    *) echo "::warning::$message"; exit 0 ;;
  esac
fi

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
tar -c -f "$tmp" -C "$root" -- "${files[@]}"
query=""
[ "${INPUT_OVERWRITE:-false}" = true ] && query="?overwrite=true"
code=$(curl -sS -o /dev/null -w '%{http_code}' -T "$tmp" "$store/artifact/$name$query")
case "$code" in
  201) ;;
  409) echo "::error::Failed to CreateArtifact: Received non-retryable error: Failed request: (409) Conflict: an artifact with this name already exists on the workflow run"; exit 1 ;;
  *) echo "::error::the artifact store answered $code"; exit 1 ;;
esac
digest=$(sha256sum "$tmp" | cut -d' ' -f1)
echo "Uploaded $name: ${#files[@]} file(s), $(du -h "$tmp" | cut -f1)"
{
  echo "artifact-id=$name"
  echo "artifact-url=$store/artifact/$name"
  echo "artifact-digest=$digest"
} >> "$GITHUB_OUTPUT"
