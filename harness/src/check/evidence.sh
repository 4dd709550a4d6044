# shellcheck shell=bash
# What a reboot can change, read from the guest without changing it. Each
# function prints a line "@@vmrepro-evidence NAME", then what it read; the
# harness appends the calls of the sources a scenario keeps. Nothing here
# loads a module or starts a unit.

evidence_section() { printf '@@vmrepro-evidence %s\n' "$1"; }

evidence_units() {
  evidence_section units
  systemctl list-units --all --no-legend --no-pager 2>/dev/null
}

evidence_journal() {
  evidence_section journal
  journalctl -b -p warning -o json --no-pager 2>/dev/null
}

# After the reboot: the entries of priority warning or worse of the boot
# before it, among them those logged on its way down. Where the journal is
# not kept across boots (systemd-journald(8), 215 on: in /run/log/journal
# unless /var/log/journal exists), there is no boot before to show; the harness keeps only entries of the boot read
# by evidence_boot before the reboot, whatever journalctl prints.
evidence_journal_before() {
  evidence_section journal-before
  journalctl -b -1 -p warning -o json --no-pager 2>/dev/null
}

# This boot's id and how long it has run (/proc/uptime, in hundredths of a
# second), read with the shell's own read, last: whatever the boot logs
# after this, on its way down to the reboot, the harness finds in the
# journal after the reboot.
evidence_boot() {
  local id up rest
  evidence_section boot
  read -r id </proc/sys/kernel/random/boot_id && read -r up rest </proc/uptime && printf '%s %s\n' "$id" "$up"
}

evidence_sysctl() {
  evidence_section sysctl
  (cd /proc/sys && grep -rs '' . 2>/dev/null)
}

evidence_mounts() {
  evidence_section mounts
  cat /proc/self/mountinfo 2>/dev/null
}

evidence_network() {
  evidence_section addresses
  ip -o addr show 2>/dev/null
  evidence_section routes
  ip route show table all 2>/dev/null
  ip -6 route show table all 2>/dev/null
}

evidence_modules() {
  evidence_section modules
  cat /proc/modules 2>/dev/null
}

# Listing an nf_tables ruleset makes the kernel load nf_tables where it is
# a module, and the legacy tables are loaded by being listed: each is
# listed only where the kernel already has it, or where it cannot load
# anything (no /proc/modules: a kernel without modules, whose netfilter is
# built in or absent).
evidence_firewall() {
  local nft="" tool
  evidence_section firewall
  if [ -e /sys/module/nf_tables ] || [ ! -e /proc/modules ]; then
    nft=1
  fi
  for tool in iptables ip6tables; do
    command -v "$tool-save" >/dev/null 2>&1 || continue
    # Which backend, from the file the command resolves to (Debian's
    # alternatives: xtables-nft-multi or xtables-legacy-multi from 1.8,
    # xtables-multi before), not by running it: an old iptables-save's
    # option loop has no case for an option it does not know, and it goes
    # on to dump the tables.
    case "$(readlink -f "$(command -v "$tool-save")")" in
      *nft*) [ -n "$nft" ] || continue ;;
      *)
        if [ "$tool" = iptables ]; then
          [ -e /proc/net/ip_tables_names ] || continue
        else
          [ -e /proc/net/ip6_tables_names ] || continue
        fi
        ;;
    esac
    evidence_section "$tool"
    "$tool-save" 2>/dev/null
  done
  if [ -n "$nft" ] && command -v nft >/dev/null 2>&1; then
    evidence_section nft
    nft list ruleset 2>/dev/null
  fi
}
