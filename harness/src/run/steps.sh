# shellcheck shell=bash
# The guest side of the steps that wait. Each function polls until what it
# waits for comes, and prints each change it sees, so that a wait that runs
# out of time shows where it stood. The harness appends one call.

# Waits until unit $1 is in state $2 (`systemctl is-active`). Waiting for
# anything but `failed` ends at once, as a failure, when the unit fails.
wait_for_unit() {
  local unit=$1 want=$2 last="" now
  while :; do
    now=$(systemctl is-active "$unit" 2>/dev/null)
    if [ "$now" != "$last" ]; then
      echo "$unit: ${now:-unknown}"
      last=$now
    fi
    [ "$now" = "$want" ] && return 0
    if [ "$want" != failed ] && [ "$now" = failed ]; then
      echo "$unit failed while waiting for $want" >&2
      return 1
    fi
    sleep 0.2
  done
}

# Runs the command $1 every half second until it succeeds; prints the last
# attempt's output, and each change of its exit status. The output is held
# in the shell, not in a temporary file on a disk the scenario may have
# filled.
wait_until() {
  local cmd=$1 last="" out now
  while :; do
    out=$(bash -c "$cmd" 2>&1)
    now=$?
    if [ "$now" = 0 ]; then
      [ -z "$out" ] || printf '%s\n' "$out"
      return 0
    fi
    if [ "$now" != "$last" ]; then
      echo "not yet: exit $now"
      printf '%s\n' "$out" | tail -n 3
      last=$now
    fi
    sleep 0.5
  done
}

# The kernel name of the disk whose serial is $1, if the guest has one: from
# the SCSI serial in sysfs, not udev's `by-id` links, which need udev to
# have run (a rescue shell may have none).
disk_with_serial() {
  local dev
  for dev in /sys/class/block/*; do
    [ -e "$dev/device/vpd_pg80" ] || continue
    case "$(tr -d '\000' < "$dev/device/vpd_pg80" 2>/dev/null)" in
      *"$1") echo "${dev##*/}"; return 0 ;;
    esac
  done
  return 1
}

# Waits until the guest's kernel no longer has the disk with serial $1.
wait_detached() {
  local serial=$1 name said=""
  while name=$(disk_with_serial "$serial"); do
    if [ "$name" != "$said" ]; then
      echo "the guest still has disk $serial as /dev/$name"
      said=$name
    fi
    sleep 0.2
  done
  echo "the guest no longer has disk $serial"
}
