# How the cost grows with the number of locks:
#   - many held locks: 1, 100, 1,000 elects at once, each holding its own lock over `sleep`;
#   - many waiters: 1,000 elects --wait'ing on one held lock, then one release.
# Quick mode: 1 and 100 held locks, 100 waiters.
#
# Sourced by scripts/bench.sh (section 8), which has set $elect, $mode, the backends array and the
# out/emit helpers, and started the servers. Run on its own, it starts its own servers and prints
# the section's tables only:
#   scripts/bench/scale.sh [--quick] [--waiters N] [--held COUNTS|none] [--backends redis,etcd,postgres]
# (ELECT: the binary to measure, target/release/elect by default.)

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  root=$(cd "$(dirname "$0")/../.." && pwd)
  mode=full scale_only_waiters= scale_only_held= scale_backends=redis,etcd,postgres
  while [ $# -gt 0 ]; do
    case "$1" in
      --quick) mode=quick ;;
      --waiters) scale_only_waiters=$2; shift ;;
      --held) scale_only_held=$2; shift ;;
      --backends) scale_backends=$2; shift ;;
      *) echo "usage: scripts/bench/scale.sh [--quick] [--waiters N] [--held COUNTS|none] [--backends redis,etcd,postgres]" >&2; exit 2 ;;
    esac
    shift
  done
  elect=${ELECT:-$root/target/release/elect}
  [ -x "$elect" ] || { echo "no elect binary at $elect (cargo build --release, or set ELECT)" >&2; exit 1; }
  measure=(python3 "$root/scripts/bench/measure.py")
  BENCH_WORK=$(mktemp -d /tmp/elect-bench.XXXXXX)
  # shellcheck source=servers.sh
  source "$root/scripts/bench/servers.sh"
  trap 'bench_stop_servers; rm -rf "$BENCH_WORK"' EXIT
  trap 'exit 130' INT TERM
  export ELECT_LOCK_DIR=$BENCH_WORK/locks
  out() { printf '%s\n' "$*"; }
  emit() { cat; }
  backends=()
  for k in ${scale_backends//,/ }; do
    case "$k" in
      redis) start_redis; backends+=("redis|redis://127.0.0.1:$REDIS_PORT|redis|$REDIS_PORT|$REDIS_PID") ;;
      etcd) start_etcd; backends+=("etcd|etcd://127.0.0.1:$ETCD_PORT|etcd|$ETCD_PORT|$ETCD_PID") ;;
      postgres)
        start_postgres
        backends+=("postgres|postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB|postgres|$PG_PORT|$(head -1 "$PG_DATA/postmaster.pid")") ;;
      *) echo "unknown backend $k (redis, etcd, postgres)" >&2; exit 2 ;;
    esac
  done
  out "Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores."
  out ""
fi

if [ "$mode" = quick ]; then
  scale_counts=1,100 scale_waiters=100 scale_window=3
else
  scale_counts=1,100,1000 scale_waiters=1000 scale_window=5
fi
scale_counts=${scale_only_held:-$scale_counts}
scale_waiters=${scale_only_waiters:-$scale_waiters}

out "## 8. Scaling"
out ""
if [ "$scale_counts" != none ]; then
  out "### Many held locks"
  out ""
  out "| backend | held locks | server requests/s | server CPU ms/s | elect PSS per job, MiB | \`elect status\` (all locks), ms |"
  out "|---|---:|---:|---:|---:|---:|"
  for b in "${backends[@]}"; do
    IFS='|' read -r label url kind port pid <<<"$b"
    [ "$kind" = file ] && continue
    # A row that fails (a limit reached) is reported as such, and the run goes on.
    python3 "$root/scripts/bench/scale.py" held --elect "$elect" --label "$label" --backend "$url" \
      --kind "$kind" --counts "$scale_counts" --window "$scale_window" \
      ${port:+--port "$port"} ${pid:+--server-pid "$pid"} 2>"$BENCH_WORK/scale-$label.err" | emit \
      || out "| $label | **failed** | $(tail -1 "$BENCH_WORK/scale-$label.err") | | | |"
  done
  out ""
  out "N elects at once, each holding its own lock (default ttl 15 s, so one renew every 5 s each) and supervising \`sleep\`. Over ${scale_window} s once every job runs: the server's requests (counted as in section 6) and CPU time; the proportional set size (PSS: shared pages divided among their sharers) of elect and its watchdog, summed and divided by N; the wall time of one \`elect status\` listing every lock (median of 3)."
  out ""
fi
out "### Many waiters"
out ""
out "| backend | N waiting | server requests/s while waiting | server CPU ms/s | waiters' CPU ms/s | jobs started ≤ 1 s after a release (target 1) | server requests in that second, above the waiting rate | first job start after release, ms |"
out "|---|---:|---:|---:|---:|---|---:|---:|"
for b in "${backends[@]}"; do
  IFS='|' read -r label url kind port pid <<<"$b"
  [ "$kind" = file ] && continue
  # A Redis waiter behind a renewed lease re-checks once per longest block (10 s), and waiters
  # that started together re-check together: a shorter window sees all their re-checks or none.
  # So its window is one such period, and the second after the release is compared with the
  # window's first second (the same second of the period) rather than with the mean.
  cycle=()
  [ "$kind" = redis ] && cycle=(--window 10 --period 10)
  "${measure[@]}" contention --elect "$elect" --label "$label" --backend "$url" --kind "$kind" \
    --n "$scale_waiters" --window "$scale_window" "${cycle[@]}" ${port:+--port "$port"} ${pid:+--server-pid "$pid"} \
    2>"$BENCH_WORK/waiters-$label.err" | emit \
    || out "| $label | $scale_waiters | **failed**: $(tail -1 "$BENCH_WORK/waiters-$label.err") | | | | | |"
done
out ""
out "As section 6, with ${scale_waiters} waiters, once every waiter is blocked (Redis: the server's \`blocked_clients\`). Redis counts the commands inside elect's scripts too; its window is one 10 s re-check period, and its release figure is the second after the release less the same second of the period before."
out ""
