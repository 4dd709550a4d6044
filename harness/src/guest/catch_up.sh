# shellcheck shell=bash
# The jobs a forward jump of the clock queued, run to their end before the
# flow, waiting at most @LIMIT@ seconds. Prints `ran UNIT` for each unit seen
# queued and `still UNIT` for each still queued when the limit ran out.
#
# A resumed guest's clock moves from the time its state was saved to now.
# systemd then recomputes every calendar timer from its last trigger (or
# its activation) and lets each whose time fell in between elapse at once
# (timer.c: timer_time_change, timer_enter_waiting). A machine booted at
# this time with those timers' stamps (Persistent=) does the same at boot,
# and a boot is what a resumed state stands for: waiting here keeps a
# trial from depending on how long its state sat in the cache. The clock
# was set by an earlier command, a round trip through the console ago;
# PID 1 is woken by the clock change itself (a timerfd with
# TFD_TIMER_CANCEL_ON_SET) and has queued the jobs by now.
#
# `list-jobs` lines start with the job's number and name its unit; what
# else it prints ("No jobs running.", which systemd 215 prints even with
# --no-legend) does not start with a digit.
queued() {
  systemctl list-jobs --no-legend --no-pager 2>/dev/null \
    | awk '$1 ~ /^[0-9]+$/ { print $2 }'
}
limit=@LIMIT@
start=$SECONDS
seen=" "
while jobs=$(queued) && [ -n "$jobs" ]; do
  for unit in $jobs; do
    case "$seen" in
      *" $unit "*) ;;
      *) seen="$seen$unit " ;;
    esac
  done
  if [ $((SECONDS - start)) -ge "$limit" ]; then
    for unit in $jobs; do echo "still $unit"; done
    break
  fi
  sleep 0.1
done
for unit in $seen; do echo "ran $unit"; done
