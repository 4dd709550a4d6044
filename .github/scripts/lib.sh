# shellcheck shell=bash
# Sourced by the other scripts: strict mode, the vmrepro binary, and the
# files GitHub Actions reads back (GITHUB_OUTPUT, GITHUB_ENV, GITHUB_PATH,
# GITHUB_STEP_SUMMARY). Each script runs as well on a developer's machine
# with those variables pointed at ordinary files, which is how the test
# suite runs them (harness/tests/workflows.rs).
set -euo pipefail

# The repository root, whatever the working directory.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

# The Rust release the workflows build with; raise it on purpose (ci.yml
# sets the same in its env).
RUST_TOOLCHAIN=${RUST_TOOLCHAIN:-1.95.0}

# Every cargo command runs with the committed lock file.
vmrepro() {
  cargo run --locked --quiet --bin vmrepro -- "$@"
}

# Appends KEY=VALUE to a GitHub file variable (output, env), refusing
# empty values: an empty cache key would make actions/cache use a key
# shared by every job.
github_set() {
  local file=$1 key=$2 value=$3
  if [ -z "$value" ]; then
    echo "error: $key came out empty" >&2
    exit 1
  fi
  printf '%s=%s\n' "$key" "$value" >> "$file"
}

die() {
  echo "error: $*" >&2
  exit 1
}
