#!/usr/bin/env bash
# Usage: cache.sh restore|save
# The stand-in for actions/cache/restore and actions/cache/save under act
# (act.sh serves it; see .github/act/store.py). Inputs arrive as INPUT_*
# variables, as the real actions read them; outputs go to GITHUB_OUTPUT
# under the real actions' names. Entries are tar streams of the listed
# paths, keyed like GitHub's: a key plus a version made of the path list,
# so the same key saved for other paths is another entry.
set -euo pipefail

mode=${1:?usage: cache.sh restore|save}
store=${VMREPRO_ACT_STORE:?VMREPRO_ACT_STORE is not set: this stand-in runs only under .github/scripts/act.sh}
command -v curl >/dev/null || { echo "::error::the cache stand-in needs curl in the job's image"; exit 1; }

key=${INPUT_KEY:-}
# The real action's own checks (actions/cache src/utils/actionUtils.ts,
# @actions/cache cache.ts checkKey): a key is required, at most 512
# characters, and has no comma.
[ -n "$key" ] || { echo "::error::Input required and not supplied: key"; exit 1; }
[ ${#key} -le 512 ] || { echo "::error::Key Validation Error: $key cannot be larger than 512 characters."; exit 1; }
case "$key" in *,*) echo "::error::Key Validation Error: $key cannot contain commas."; exit 1 ;; esac

# The paths, one a line, `~` expanded, relative ones against the workspace.
paths=()
while IFS= read -r line; do
  line=${line#"${line%%[![:space:]]*}"}
  line=${line%"${line##*[![:space:]]}"}
  [ -n "$line" ] || continue
  case "$line" in
    '~'/*) line="$HOME/${line#'~/'}" ;;
    /*) ;;
    *) line="$GITHUB_WORKSPACE/$line" ;;
  esac
  paths+=("$line")
done <<< "${INPUT_PATH:-}"
[ ${#paths[@]} -gt 0 ] || { echo "::error::Input required and not supplied: path"; exit 1; }
version=$(printf '%s\n' "${paths[@]}" | sha256sum | cut -c1-16)

quote() {
  # Percent-encodes one path segment (bytes outside [A-Za-z0-9._~-]).
  local s=$1 out="" c i
  LC_ALL=C
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case "$c" in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) out+=$(printf '%%%02X' "'$c") ;;
    esac
  done
  printf '%s' "$out"
}

fetch() {
  # Writes the entry for KEY to FILE; fails (1) on a miss.
  local code
  code=$(curl -sS -o "$2" -w '%{http_code}' "$store/cache/$version/$(quote "$1")") || return 2
  [ "$code" = 200 ]
}

if [ "$mode" = restore ]; then
  echo "cache-primary-key=$key" >> "$GITHUB_OUTPUT"
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  matched=""
  if fetch "$key" "$tmp"; then
    matched=$key
  else
    while IFS= read -r prefix; do
      prefix=${prefix#"${prefix%%[![:space:]]*}"}
      prefix=${prefix%"${prefix##*[![:space:]]}"}
      [ -n "$prefix" ] || continue
      if candidate=$(curl -sSf "$store/cache-match/$version/$(quote "$prefix")" 2>/dev/null); then
        fetch "$candidate" "$tmp" && matched=$candidate && break
      fi
    done <<< "${INPUT_RESTORE_KEYS:-}"
  fi
  if [ -z "$matched" ]; then
    if [ "${INPUT_FAIL_ON_CACHE_MISS:-false}" = true ]; then
      echo "::error::Failed to restore cache entry. Exiting as fail-on-cache-miss is set. Input key: $key"
      exit 1
    fi
    echo "Cache not found for input keys: $key"
    echo "cache-hit=false" >> "$GITHUB_OUTPUT"
    exit 0
  fi
  if [ "${INPUT_LOOKUP_ONLY:-false}" != true ]; then
    tar -x -P -f "$tmp"
  fi
  echo "cache-matched-key=$matched" >> "$GITHUB_OUTPUT"
  [ "$matched" = "$key" ] && hit=true || hit=false
  echo "cache-hit=$hit" >> "$GITHUB_OUTPUT"
  echo "Cache restored from key: $matched"
  exit 0
fi

[ "$mode" = save ] || { echo "usage: cache.sh restore|save" >&2; exit 2; }
present=()
for path in "${paths[@]}"; do
  [ -e "$path" ] && present+=("$path")
done
if [ ${#present[@]} -eq 0 ]; then
  # What the real action does: a warning, and nothing saved.
  echo "::warning::Path Validation Error: Path(s) specified in the action for caching do(es) not exist, hence no cache is being saved."
  exit 0
fi
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
tar -c -P -f "$tmp" "${present[@]}"
code=$(curl -sS -o /dev/null -w '%{http_code}' -T "$tmp" "$store/cache/$version/$(quote "$key")")
case "$code" in
  201) echo "Cache saved with key: $key ($(du -h "$tmp" | cut -f1))" ;;
  409) echo "::warning::Failed to save: Unable to reserve cache with key $key, another job may be creating this cache." ;;
  *) echo "::error::the cache store answered $code"; exit 1 ;;
esac
