#!/usr/bin/env bash
# Usage: cell.sh RELEASE KERNEL
# Runs every scenario's trial on one matrix cell. Fails if the selection is
# empty (a renamed release or a dropped matrix entry must not turn a cell
# green having tested nothing); a scenario file that does not load fails the
# test binary itself, before any filter.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

release=${1:?usage: cell.sh RELEASE KERNEL}
kernel=${2:?usage: cell.sh RELEASE KERNEL}
filter="::$release::$kernel"

# Listing loads every scenario file: a broken one fails here, loudly.
trials=$(cargo test --locked --test scenarios -- --list "$filter")
listed=$(printf '%s\n' "$trials" | grep -c ': test$' || true)
[ "$listed" -ge 1 ] || die "no trial matches $filter"
echo "$listed trial(s) on $release × $kernel"

VMREPRO_REQUIRE_TRIALS=1 cargo test --locked --test scenarios -- "$filter"
