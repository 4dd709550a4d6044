#!/usr/bin/env bash
# Usage: cold.sh RELEASE KERNEL
# The founding scenario once more on one cell, booted from power-on instead
# of resumed from the saved state, against the same snapshot: warm and cold
# must keep agreeing. Its artifacts go to target/vmrepro-cold (VMREPRO_COLD_ARTIFACTS), beside (not
# over) the warm run's.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

release=${1:?usage: cold.sh RELEASE KERNEL}
kernel=${2:?usage: cold.sh RELEASE KERNEL}

VMREPRO_FIRST_BOOT=cold VMREPRO_ARTIFACTS=${VMREPRO_COLD_ARTIFACTS:-target/vmrepro-cold} VMREPRO_REQUIRE_TRIALS=1 \
  cargo test --locked --test scenarios -- "netfilter-persistent-reboot::$release::$kernel" --exact
