#!/usr/bin/env bash
# The pinned Rust toolchain with rustfmt and clippy, on a runner that has
# rustup (GitHub's hosted images do).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

rustup toolchain install "$RUST_TOOLCHAIN" --profile minimal --component rustfmt,clippy
rustup default "$RUST_TOOLCHAIN"
