#!/usr/bin/env bash
# Runs the fault-injection suite (tests/faults.rs, and the Redis Sentinel and Cluster failover
# rounds of tests/redis_sentinel.rs and tests/redis_cluster.rs) and prints one table: scenario x
# backend, mechanism, runs, handovers, overlaps, max and median takeover time, tokens monotonic,
# writes the fenced register refused, violations; then the totals and the frozen-host figures.
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
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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
  list=$(cargo test --test faults -- --list "${filter[@]}" 2>/dev/null | grep ': test$' || true)
  n=$(grep -c . <<<"$list" || true)
  [ -n "$list" ] && [ "$n" -gt 0 ] || { echo "no tests match" >&2; exit 2; }
  # Tests run $threads at a time; each gets a share of the time asked for, less the ~10 s of
  # start-up and drain every test has anyway. The churn tests (Setup::soak_shares) get 6 shares:
  # they make most of the handovers.
  churn=$(grep -c '^churn::' <<<"$list" || true)
  shares=$(( n + 5 * churn ))
  per=$(( (total * threads - 10 * n) / shares ))
  ((per >= 10)) || per=10
  export ELECT_FAULTS_SECS=$per
  echo "soak: $n tests, $threads at a time, ${per}s of faults each (churn: $(( 6 * per ))s)"
fi

log=$(mktemp /tmp/elect-faults.XXXXXX)
status=0
cargo test "${suites[@]}" -- --nocapture --test-threads="$threads" "${filter[@]}" >"$log" 2>&1 || status=$?
grep -E '^(test |FAULTS\||test result)' "$log" | grep -v '^FAULTS|' || true
echo
grep -E '^(FAULTS|FROZEN)\|' "$log" | python3 -c '
import sys, collections
rows = collections.OrderedDict()
frozen = []
for line in sys.stdin:
    f = line.rstrip("\n").split("|")
    if f[0] == "FROZEN":
        frozen.append(f)
        continue
    f += [""] * (14 - len(f))
    key = (f[1], f[2])
    r = rows.setdefault(key, dict(mech=f[11] or "-", runs=0, hand=0, over=0, mono=True, viol=0,
                                  take=[], refused=0, stale=0, fover=0, fwin=0))
    r["runs"] += int(f[3]); r["hand"] += int(f[4]); r["over"] += int(f[5])
    r["mono"] &= f[6] == "yes"; r["viol"] += int(f[7])
    r["take"] += [int(x) for x in f[8].split(",") if x]
    r["refused"] += int(f[9] or 0); r["stale"] += int(f[10] or 0)
    r["fover"] += int(f[12] or 0); r["fwin"] = max(r["fwin"], int(f[13] or 0))
fmt = "{:<22} {:<9} {:<14} {:>6} {:>9} {:>8} {:>13} {:>16} {:>9} {:>15} {:>10}"
print(fmt.format("scenario", "backend", "mechanism", "runs", "handovers", "overlaps", "max takeover",
                 "median takeover", "monotonic", "fenced refused", "violations"))
total = dict(runs=0, hand=0, over=0, stale=0, refused=0, fover=0, viol=0)
for (s, b), r in sorted(rows.items()):
    t = sorted(r["take"])
    mx = "%d ms" % t[-1] if t else "-"
    md = "%d ms" % t[len(t) // 2] if t else "-"
    over = str(r["over"]) + (" (+%d)" % r["fover"] if r["fover"] else "")
    print(fmt.format(s, b, r["mech"], r["runs"], r["hand"], over, mx, md,
                     "yes" if r["mono"] else "no", r["refused"], r["viol"]))
    for k in ("runs", "hand", "over", "stale", "refused", "fover", "viol"):
        total[k] += r[k]
print()
print("total: %d runs, %d handovers, %d overlaps, %d stale writes accepted, %d fenced writes refused, "
      "%d violations" % (total["runs"], total["hand"], total["over"], total["stale"], total["refused"],
                         total["viol"]))
if total["fover"]:
    win = max(r["fwin"] for r in rows.values())
    print("(+N): %d job(s) started beside a job frozen with its host, outside the promise (only the "
          "fencing token protects there); the longest such overlap lasted %d ms" % (total["fover"], win))
if frozen:
    ran = max(int(f[4]) for f in frozen)
    writes = sum(int(f[5]) for f in frozen)
    accepted = sum(int(f[6]) for f in frozen)
    codes = sorted(set(f[7] for f in frozen))
    print("frozen host: %d thaw(s); the stale job ran at most %d ms after the thaw and wrote %d time(s), "
          "%d accepted; elect exited %s, e.g.:" % (len(frozen), ran, writes, accepted, ", ".join(codes)))
    print("  " + frozen[0][8])
'
echo
echo "full output: $log"
exit $status
