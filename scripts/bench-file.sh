#!/usr/bin/env bash
# Figures for the file backend, measured side by side in one run:
#   1. wall time of `elect run --lock x -- true` against `flock -n FILE true` and bare `true`;
#   2. peak RSS of elect (and its watchdog) while supervising `sleep`;
#   3. handover: from a holder's job exiting to a --wait'ing contender's job starting.
# Usage: scripts/bench-file.sh [RUNS]   (needs hyperfine; builds the release binary with scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-500}
command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)" >&2; exit 1; }
scripts/build.sh 2>/dev/null
elect=$PWD/target/release/elect
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ELECT_LOCK_DIR=$work/locks

echo "== wall time per run ($runs runs each)"
hyperfine -N --warmup 50 --runs "$runs" --export-markdown "$work/wall.md" \
  "$elect run --lock bench -- true" \
  "flock -n $work/flock.lock true" \
  "true" >/dev/null
cat "$work/wall.md"

echo
echo "== memory while supervising sleep 3"
"$elect" run --lock mem -- sleep 3 &
pid=$!
sleep 1.5
watchdog=$(cat /proc/$pid/task/$pid/children | awk '{print $1}')
rss() { awk '/VmHWM/ {print $2 " kB"}' "/proc/$1/status"; }
echo "elect    peak RSS: $(rss $pid)"
echo "watchdog peak RSS: $(rss "$watchdog")"
wait $pid
echo "binary size: $(stat -c %s "$elect") bytes"

echo
echo "== handover: holder's job exits -> waiting contender's job starts (20 rounds)"
now() { date +%s%N; }
for i in $(seq 1 20); do
  "$elect" run --lock hand -- sh -c "sleep 0.2; date +%s%N > $work/end" &
  holder=$!
  sleep 0.05
  "$elect" run -q --lock hand --wait -- sh -c "date +%s%N > $work/start"
  wait $holder
  echo $(( ($(cat "$work/start") - $(cat "$work/end")) / 1000 ))
done | sort -n | awk '{a[NR]=$1} END {printf "min %.2f ms  median %.2f ms  max %.2f ms\n", a[1]/1000, a[int((NR+1)/2)]/1000, a[NR]/1000}'
