#!/usr/bin/env bash
# Runs the fault-injection suite (tests/faults.rs, and the Redis Sentinel and Cluster failover
# rounds of tests/redis_sentinel.rs and tests/redis_cluster.rs) and prints one table: scenario x backend,
# runs, handovers, overlaps, max and median takeover time, tokens monotonic, violations.
#
#   scripts/faults.sh                 the short form (what CI runs, a few minutes)
#   scripts/faults.sh --soak 10m      about that long in all (s, m or h), every test longer
#   scripts/faults.sh -- FILTER       only the tests whose name contains FILTER
#
# ELECT_FAULTS_SEED replays the order of random faults printed by a test. The exit status is
# cargo's: non-zero when any test found a violation (each is listed in the test's output).
set -euo pipefail
cd "$(dirname "$0")/.."

soak=""
threads="${ELECT_FAULTS_THREADS:-4}"
filter=()
while (($#)); do
  case "$1" in
    --soak) soak="$2"; shift 2 ;;
    --soak=*) soak="${1#--soak=}"; shift ;;
    --threads) threads="$2"; shift 2 ;;
    --) shift; filter=("$@"); break ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

seconds() {
  local v="$1"
  case "$v" in
    *h) echo $(( ${v%h} * 3600 )) ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
  esac
}

suites=(--test faults --test redis_sentinel --test redis_cluster)
cargo test "${suites[@]}" --no-run >/dev/null 2>&1 || cargo test "${suites[@]}" --no-run
if [ -n "$soak" ]; then
  total=$(seconds "$soak")
  n=$(cargo test --test faults -- --list "${filter[@]}" 2>/dev/null | grep -c ': test$' || true)
  [ "$n" -gt 0 ] || { echo "no tests match" >&2; exit 2; }
  # Tests run $threads at a time; each gets an equal share of the time asked for, less the
  # ~10 s of start-up and drain every test has anyway.
  per=$(( total * threads / n - 10 ))
  ((per >= 10)) || per=10
  export ELECT_FAULTS_SECS=$per
  echo "soak: $n tests, $threads at a time, ${per}s of faults each"
fi

log=$(mktemp /tmp/elect-faults.XXXXXX)
status=0
cargo test "${suites[@]}" -- --nocapture --test-threads="$threads" "${filter[@]}" >"$log" 2>&1 || status=$?
grep -E '^(test |FAULTS\||test result)' "$log" | grep -v '^FAULTS|' || true
echo
grep '^FAULTS|' "$log" | python3 -c '
import sys, collections
rows = collections.OrderedDict()
for line in sys.stdin:
    f = line.rstrip("\n").split("|")
    key = (f[1], f[2])
    r = rows.setdefault(key, dict(runs=0, hand=0, over=0, mono=True, viol=0, take=[]))
    r["runs"] += int(f[3]); r["hand"] += int(f[4]); r["over"] += int(f[5])
    r["mono"] &= f[6] == "yes"; r["viol"] += int(f[7])
    r["take"] += [int(x) for x in f[8].split(",") if x]
fmt = "{:<22} {:<9} {:>6} {:>9} {:>8} {:>13} {:>16} {:>9} {:>10}"
print(fmt.format("scenario", "backend", "runs", "handovers", "overlaps", "max takeover", "median takeover", "monotonic", "violations"))
for (s, b), r in sorted(rows.items()):
    t = sorted(r["take"])
    mx = "%d ms" % t[-1] if t else "-"
    md = "%d ms" % t[len(t) // 2] if t else "-"
    print(fmt.format(s, b, r["runs"], r["hand"], r["over"], mx, md, "yes" if r["mono"] else "no", r["viol"]))
'
echo
echo "full output: $log"
exit $status
