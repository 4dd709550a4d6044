#!/usr/bin/env bash
# The stand-in for actions/checkout of another repository under act.
set -euo pipefail

store=${VMREPRO_ACT_STORE:?VMREPRO_ACT_STORE is not set: this stand-in runs only under .github/scripts/act.sh}
command -v git >/dev/null || { echo "::error::the checkout stand-in needs git in the job's image"; exit 1; }
repository=${INPUT_REPOSITORY:?Input required and not supplied: repository}
case "$repository" in
  */*) ;;
  *) echo "::error::Invalid repository '$repository'. Expected format {owner}/{repo}."; exit 1 ;;
esac
dest="$GITHUB_WORKSPACE/${INPUT_PATH:-.}"
bundle=$(mktemp --suffix=.bundle)
trap 'rm -f "$bundle"' EXIT
code=$(curl -sS -o "$bundle" -w '%{http_code}' "$store/repo/${repository%%/*}/${repository#*/}.bundle")
[ "$code" = 200 ] || { echo "::error::act.sh serves no repository $repository (answered $code)"; exit 1; }
rm -rf "$dest"
git clone --quiet --no-checkout "$bundle" "$dest"
git -C "$dest" -c advice.detachedHead=false checkout --quiet "${INPUT_REF:-HEAD}"
echo "Checked out $repository at $(git -C "$dest" rev-parse HEAD) into $dest"
