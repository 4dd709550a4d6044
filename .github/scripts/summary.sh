#!/usr/bin/env bash
# Usage: summary.sh ROWS_DIR CELLS_RESULT
# The one required check: renders every cell's rows (the rows.md files the
# cells uploaded) as one Markdown outcome table in the job summary and in
# the job's log, and fails unless every cell job succeeded (CELLS_RESULT is
# needs.cell.result) and left rows: cells that succeeded without any rows
# reaching here mean the artifacts are wired wrong.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

rows=${1:?usage: summary.sh ROWS_DIR CELLS_RESULT}
result=${2:?usage: summary.sh ROWS_DIR CELLS_RESULT}
summary=${GITHUB_STEP_SUMMARY:-/dev/null}
# No cell may have uploaded anything (all died before their rows).
mkdir -p "$rows"

{
  echo "## vmrepro outcome table (release × kernel × scenario)"
  echo
  header=""
  for file in $(find "$rows" -name '*.md' | sort); do
    if [ -z "$header" ] && head -n 1 "$file" | grep -q '^| scenario'; then
      head -n 2 "$file"
      header=yes
    fi
  done
  [ -n "$header" ] || echo "No cell produced rows."
  for file in $(find "$rows" -name '*.md' | sort); do
    case "$file" in
      *-cold.md) mode=" (cold)" ;;
      *) mode="" ;;
    esac
    if head -n 1 "$file" | grep -q '^| scenario'; then
      tail -n +3 "$file" | sed "s/^| \([^|]*\) |/| \1$mode |/"
    else
      echo
      echo "$(basename "$file" .md): $(cat "$file")"
    fi
  done
  echo
  echo "Cell jobs: **$result**."
} | tee -a "$summary"

[ "$result" = success ] || die "the cell jobs did not all succeed ($result)"
[ -n "$(find "$rows" -name '*.md' -print -quit)" ] ||
  die "the cell jobs succeeded, but no rows reached $rows: the rows artifacts and this job's download do not match"
