#!/usr/bin/env bash
# The guest side of the control channel: runs one round trip's commands and
# prints their results in lines a guest cannot forge or confuse.
#
# The harness installs this file at every boot in a directory of its own on
# a memory file system (/run/vmrepro, else /dev/shm/vmrepro, else
# /tmp/vmrepro), so a scenario that fills or breaks the guest's disk cannot
# take the harness's own files with it, and runs it with bash (4.3 or later:
# jessie's). Beside it, cmd-TAG-I holds command I of the round trip (TAG
# names one control channel's files).
#
# Standard input:
#   line 1:          ID LIMIT KILL TAG
#   a line per cmd:  STORED HEAD TAIL
# ID is a per-round-trip secret that arrives only here, through a pipe from
# the shell's built-in printf: no command line, environment or file the
# commands can read holds it, so they cannot print the markers below.
# LIMIT and KILL are timeout(1)'s limit and grace in seconds. STORED is the
# exit status of writing the command's file (non-zero: it never arrived).
# HEAD and TAIL are how many bytes of the start and of the end of each
# output stream are kept: the middle of a flood is counted, not kept, so it
# never crosses the serial port.
#
# Standard output (the control port), besides whatever else the guest
# writes there:
#   VMRB-ID
#   VMRO-ID-I STATUS SECONDS OUT ERR OUT_HEAD OUT_TAIL ERR_HEAD ERR_TAIL
#   ...
#   VMRE-ID
# STATUS is the command's exit status, or "unsent" when its file could not
# be written. OUT and ERR are each stream's size in bytes, "open" when a
# process the command left running still held the stream open a moment
# after the command ended (only its head is shown), or "lost" when the
# guest could not record it. The four parts are base64, "-" when empty.
set -u

dir=${0%/*}
# How long (in 0.05 s ticks) the output streams may stay open after the
# command has ended before the result is printed without waiting for them.
grace_ticks=40

# keep FILE HEAD TAIL: reads standard input to its end (a writer never
# blocks or sees an error), counting it with dd (FILE.size), keeping its
# first HEAD bytes in FILE.head and its last TAIL bytes in FILE.tail.
# head -c reads no byte past HEAD (coreutils head.c, head_bytes), so tail
# sees the rest; stdbuf makes it write each piece as it reads it, so a
# stream that a background process holds open still shows its start.
# FILE.done says whether every write succeeded.
keep() {
  dd bs=65536 2>"$1.size" | {
    stdbuf -o0 head -c "$2" >"$1.head"
    h=$?
    tail -c "$3" >"$1.tail"
    t=$?
    [ "$h" = 0 ] && [ "$t" = 0 ]
  }
  printf '%s\n' "${PIPESTATUS[0]}${PIPESTATUS[1]}" >"$1.done"
}

# size FILE PID: sets $size to what to report of a stream. FILE.done
# counts once it is not empty: the shell creates it before printf writes
# to it.
size() {
  local ok=x bytes=
  size=lost
  if [ -s "$1.done" ]; then
    read -r ok <"$1.done"
  elif kill -0 "$2" 2>/dev/null; then
    size=open
    return
  fi
  if [ "$ok" = 00 ] && [ -e "$1.size" ]; then
    # dd's last line: "N bytes (...) copied, ...".
    while read -r word _; do bytes=$word; done <"$1.size"
  fi
  case $bytes in
    '' | *[!0-9]*) ;;
    *) size=$bytes ;;
  esac
}

# part FILE: writes a kept part, base64-encoded, or "-" when empty.
part() {
  if [ -s "$1" ]; then base64 -w0 <"$1"; else printf '%s' -; fi
}

read -r id limit kill tag || exit 2
# Every command's line is read first, so that the fifos and the clean-up
# are one program each for the whole round trip: under emulation every
# program started costs about 12 ms.
stored=() heads=() tails=() fifos=()
while read -r s h t; do
  fifos+=("$dir/out-$tag-${#stored[@]}.o" "$dir/out-$tag-${#stored[@]}.e")
  stored+=("$s") heads+=("$h") tails+=("$t")
done
rm -f "$dir/out-$tag-"*
made=no
if [ "${#fifos[@]}" -gt 0 ] && mkfifo "${fifos[@]}"; then made=yes; fi
printf 'VMRB-%s\n' "$id"
for ((i = 0; i < ${#stored[@]}; i++)); do
  cmd=$dir/cmd-$tag-$i
  f=$dir/out-$tag-$i
  if [ "${stored[$i]}" != 0 ] || [ "$made" != yes ]; then
    printf 'VMRO-%s-%s unsent 0 lost lost - - - -\n' "$id" "$i"
    continue
  fi
  keep "$f.out" "${heads[$i]}" "${tails[$i]}" <"$f.o" 2>/dev/null &
  out=$!
  keep "$f.err" "${heads[$i]}" "${tails[$i]}" <"$f.e" 2>/dev/null &
  err=$!
  started=$SECONDS
  # In the background only to learn its process id, which is the id of
  # the process group timeout(1) makes for the command.
  timeout -k "$kill" "$limit" bash "$cmd" </dev/null >"$f.o" 2>"$f.e" &
  group=$!
  wait "$group"
  status=$?
  seconds=$((SECONDS - started))
  if kill -0 -- "-$group" 2>/dev/null; then
    # Something the command started still runs and may hold its output
    # open: wait for the streams' ends a moment, then report without them.
    n=0
    while [ "$n" -lt "$grace_ticks" ] && ! { [ -s "$f.out.done" ] && [ -s "$f.err.done" ]; }; do
      { kill -0 "$out" || kill -0 "$err"; } 2>/dev/null || break
      # Not `read -t` on a quiet descriptor: with bullseye's bash 5.1.4
      # such a timed read sometimes never returned while children exited,
      # under load; bookworm's and trixie's 5.2 never did.
      sleep 0.05
      n=$((n + 1))
    done
  else
    # Nothing of the command is left, so nothing holds its outputs open
    # (unless a process it started left the group with setsid and kept
    # them, which this wait would then sit out): the keepers end at once.
    wait "$out" "$err"
  fi
  size "$f.out" "$out"
  out_size=$size
  size "$f.err" "$err"
  # One line, written in pieces: base64 runs only for parts that hold
  # something.
  printf 'VMRO-%s-%s %s %s %s %s ' "$id" "$i" "$status" "$seconds" "$out_size" "$size"
  part "$f.out.head"
  printf ' '
  part "$f.out.tail"
  printf ' '
  part "$f.err.head"
  printf ' '
  part "$f.err.tail"
  printf '\n'
done
rm -f "$dir/cmd-$tag-"* "$dir/out-$tag-"*
printf 'VMRE-%s\n' "$id"
