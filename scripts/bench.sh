#!/usr/bin/env bash
# elect's benchmark suite: every figure is measured next to its peer in the same run.
#   1. wall time of one `elect run --lock x -- true` (file backend) vs `flock -n FILE true` and `true`
#   2. the same on each network backend vs its usual shell one-liner (etcdctl lock, redis-cli
#      SET NX + DEL, psql advisory lock)
#   3. handover: the holder's job exits -> a --wait'ing contender's job starts
#   4. crash takeover: kill -9 of the holding elect (or of the whole holder, as a lost host) -> a
#      --wait'ing contender's job starts
#   5. peak RSS of elect and its watchdog; binary size
#   6. contention: N --wait'ing contenders on one lock: server requests while they wait, and how
#      many of them start a job per release
#   8. scaling: 1, 100, 1,000 held locks; 1,000 waiters on one lock (scripts/bench/scale.sh)
#   9. Redis under Sentinel and as a Cluster next to standalone (scripts/bench/redis-topo.sh)
# Servers (redis-server, etcd, PostgreSQL) are started here on 127.0.0.1, free ports, data in a
# temporary directory, and stopped on exit. A backend that this elect was built without is skipped
# with a note. Writes the tables to stdout and to BENCHMARKS.md.
#
# Usage: scripts/bench.sh [--quick]     (--quick: about 2 minutes; full: about 5)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=full
case "${1:-}" in
  --quick) mode=quick ;;
  "") ;;
  *) echo "usage: scripts/bench.sh [--quick]" >&2; exit 2 ;;
esac
if [ "$mode" = quick ]; then
  rounds=2 file_rounds=10 file_runs=30 net_runs=15 hand_rounds=5 take_rounds=2 lost_rounds=1 herd_n=50 herd_n_etcd=50 herd_window=2
else
  rounds=5 file_rounds=25 file_runs=40 net_runs=40 hand_rounds=20 take_rounds=10 lost_rounds=3 herd_n=200 herd_n_etcd=200 herd_window=5
fi

for tool in hyperfine flock python3 strace; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install $tool)" >&2; exit 1; }
done

# The binary the README's build command makes (static on glibc Linux, see scripts/build.sh).
mkdir -p target
if ! scripts/build.sh 2>"$root/target/bench-build.log"; then
  [ -x target/release/elect ] || { cat "$root/target/bench-build.log" >&2; echo "scripts/build.sh failed and there is no binary" >&2; exit 1; }
  echo "warning: scripts/build.sh failed; measuring the existing target/release/elect" >&2
fi
elect=$root/target/release/elect
measure=(python3 "$root/scripts/bench/measure.py")

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
BENCH_WORK=$(mktemp -d /tmp/elect-bench.XXXXXX)
# shellcheck source=bench/servers.sh
source "$root/scripts/bench/servers.sh"
cleanup() {
  bench_stop_servers
  rm -rf "$BENCH_WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export ELECT_LOCK_DIR=$BENCH_WORK/locks
report=$BENCH_WORK/report.md
: >"$report"

# out TEXT...: one line to stdout and to the report; `... | emit`: the same for a command's output.
out() { printf '%s\n' "$*" | tee -a "$report"; }
emit() { tee -a "$report"; }

# hyper NAME RUNS HYPERFINE-ARGS...: ROUNDS rounds of hyperfine over the same commands, one after
# the other, exported to NAME-1.json ... (measure.py wall merges them). HYPER_ROUNDS overrides
# ROUNDS.
hyper() {
  local name=$1 runs=$2 r n=${HYPER_ROUNDS:-$rounds}
  shift 2
  for (( r = 1; r <= n; r++ )); do
    hyperfine -N --style none --warmup 5 --runs "$runs" --export-json "$BENCH_WORK/$name-$r.json" "$@" \
      >/dev/null 2>"$BENCH_WORK/$name-$r.err" || { cat "$BENCH_WORK/$name-$r.err" >&2; return 1; }
  done
}

# supports SCHEME: this elect was built with that backend (an unbuilt one exits 2 and says so).
supports() {
  local err rc=0
  err=$("$elect" run --backend "$1://127.0.0.1:1" --lock x -- true 2>&1) || rc=$?
  ! { [ "$rc" -eq 2 ] && grep -q "not built into this elect" <<<"$err"; }
}

skipped=()
have_redis=0 have_etcd=0 have_pg=0
if supports redis; then have_redis=1; start_redis; else skipped+=("redis: the redis backend is not built into this elect"); fi
if supports etcd; then have_etcd=1; start_etcd; else skipped+=("etcd: the etcd backend is not built into this elect"); fi
if supports postgres; then have_pg=1; start_postgres; else skipped+=("postgres: the postgres backend is not built into this elect"); fi
redis_url=${REDIS_PORT:+redis://127.0.0.1:$REDIS_PORT}
etcd_url=${ETCD_PORT:+etcd://127.0.0.1:$ETCD_PORT}
pg_url=${PG_PORT:+postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB}

for s in "${skipped[@]}"; do echo "skipped: $s" >&2; done

# ---------------------------------------------------------------------------------- 1. wall time
out "## 1. Wall time per run, file backend"
out ""
HYPER_ROUNDS=$file_rounds hyper wall-file "$file_runs" \
  -n "elect run --lock x -- true" "$elect run --lock x -- true" \
  -n "flock -n FILE true" "flock -n $BENCH_WORK/flock.lock true" \
  -n "true" "true"
"${measure[@]}" wall "$BENCH_WORK"/wall-file-*.json --target "flock -n FILE true=1.3" 2>/dev/null | emit
out ""
out "One process start each, no shell (hyperfine -N), in $file_rounds short rounds of all commands one after the other (a virtual machine can drift by a third in speed within minutes; short rounds let a drift hit every command alike); times in ms. Target: elect ≤ 1.3× flock(1)."
out ""

# ------------------------------------------------------------------- 2. wall time, network backends
out "## 2. Wall time per run, network backends"
out ""
if [ $have_etcd = 1 ]; then
  out "### etcd"
  out ""
  hyper wall-etcd "$net_runs" \
    -n "elect run --backend etcd://… --lock x -- true" "$elect run --backend $etcd_url --lock x -- true" \
    -n "etcdctl lock x true" "etcdctl --endpoints http://127.0.0.1:$ETCD_PORT lock x true"
  "${measure[@]}" wall "$BENCH_WORK"/wall-etcd-*.json --target "etcdctl lock x true=0.5" 2>/dev/null | emit
  out ""
fi
if [ $have_redis = 1 ]; then
  out "### Redis"
  out ""
  hyper wall-redis "$net_runs" \
    -n "elect run --backend redis://… --lock x -- true" "$elect run --backend $redis_url --lock x -- true" \
    -n "sh: redis-cli SET NX PX, true, DEL" \
    "sh -c 'redis-cli -p $REDIS_PORT SET lock:x \$\$ NX PX 15000 | grep -q OK && { true; redis-cli -p $REDIS_PORT DEL lock:x >/dev/null; }'"
  "${measure[@]}" wall "$BENCH_WORK"/wall-redis-*.json --target "sh: redis-cli SET NX PX, true, DEL=0.5" 2>/dev/null | emit
  out ""
fi
if [ $have_pg = 1 ]; then
  out "### PostgreSQL"
  out ""
  psql_args="-h 127.0.0.1 -p $PG_PORT -U $PG_USER -d $PG_DB -qAt"
  hyper wall-pg "$net_runs" \
    -n "elect run --backend postgres://… --lock x -- true" "$elect run --backend $pg_url --lock x -- true" \
    -n "psql: pg_advisory_lock, \\! true, pg_advisory_unlock" \
    "psql $psql_args -c 'select pg_advisory_lock(42)' -c '\\! true' -c 'select pg_advisory_unlock(42)'" \
    -n "psql: pg_try_advisory_lock only" "psql $psql_args -c 'select pg_try_advisory_lock(42)'"
  "${measure[@]}" wall "$BENCH_WORK"/wall-pg-*.json \
    --target "psql: pg_advisory_lock, \\! true, pg_advisory_unlock=0.5" 2>/dev/null | emit
  out ""
fi
if [ $have_etcd = 0 ] && [ $have_redis = 0 ] && [ $have_pg = 0 ]; then
  out "No network backend is built into this elect."
else
  out "Same method as section 1; the peer is what a shell script would do without elect. Target: elect ≤ 0.5× the peer."
fi
out ""

# The backends to run the remaining sections on: label, URL (empty: the default file backend),
# kind, server port, server pid.
backends=("file||file||")
[ $have_redis = 1 ] && backends+=("redis|$redis_url|redis|$REDIS_PORT|$REDIS_PID")
[ $have_etcd = 1 ] && backends+=("etcd|$etcd_url|etcd|$ETCD_PORT|$ETCD_PID")
if [ $have_pg = 1 ]; then
  pg_pid=$(head -1 "$PG_DATA/postmaster.pid")
  backends+=("postgres|$pg_url|postgres|$PG_PORT|$pg_pid")
fi

# ------------------------------------------------------------------------------------- 3. handover
out "## 3. Handover"
out ""
out "| backend | rounds | min ms | median ms | max ms | target (median) |"
out "|---|---:|---:|---:|---:|---|"
for b in "${backends[@]}"; do
  IFS='|' read -r label url kind port pid <<<"$b"
  "${measure[@]}" handover --elect "$elect" --label "$label" --backend "$url" --rounds "$hand_rounds" | emit
done
out ""
out "From the holder's job writing \`date +%s%N\` just before it exits to the --wait'ing contender's job writing it first thing (both stamps include one fork+exec of date). Target: ≤ 50 ms."
out ""

# ----------------------------------------------------------------------------- 4. crash takeover
out "## 4. Crash takeover"
out ""
out "| backend | what died | ttl / grace | rounds | min ms | median ms | max ms | holder's job gone after (median) | target (median) |"
out "|---|---|---|---:|---:|---:|---:|---|---|"
for b in "${backends[@]}"; do
  IFS='|' read -r label url kind port pid <<<"$b"
  "${measure[@]}" takeover --elect "$elect" --label "$label" --backend "$url" --rounds "$take_rounds" \
    --ttl 5s --grace 1s --what elect --target 2000 | emit
  [ "$kind" = file ] && continue
  "${measure[@]}" takeover --elect "$elect" --label "$label" --backend "$url" --rounds "$lost_rounds" \
    --ttl 5s --grace 1s --what host --target 5500 | emit
done
out ""
out "From the loss of the holder (its job: \`sleep 100\`) to the --wait'ing contender's job starting. *elect killed, host alive*: \`kill -9\` of elect alone; its watchdog stops the job (the last column) and, on a network backend, has the lease released at once (src/handoff.rs). Target: ≤ grace + 1 s = 2000 ms. *host lost*: elect, its watchdog and the job frozen and killed together, so that nothing can release the lease: it expires by its ttl. Target: ≤ ttl + 0.5 s = 5500 ms. (The file backend has no host-lost row: its lock lives on that host.)"
out ""

# ---------------------------------------------------------------------------------------- 5. memory
out "## 5. Memory"
out ""
out "| backend | elect VmHWM MiB | watchdog VmHWM MiB | together MiB |"
out "|---|---:|---:|---:|"
specs=()
for b in "${backends[@]}"; do
  IFS='|' read -r label url kind port pid <<<"$b"
  specs+=("$label=${url:--}")
done
"${measure[@]}" memory --elect "$elect" --sleep 5 "${specs[@]}" | emit
out ""
out "Peak resident set (VmHWM in /proc) of elect and of its watchdog child while supervising \`sleep 5\`, read after 4 s. Binary: $(stat -c %s "$elect") bytes (scripts/build.sh: the dist profile of Cargo.toml, symbols stripped)."
out ""

# ------------------------------------------------------------------------------------ 6. contention
out "## 6. Contention"
out ""
out "| backend | N waiting | server requests/s while waiting | server CPU ms/s | waiters' CPU ms/s | jobs started ≤ 1 s after a release (target 1) | server requests in that second, above the waiting rate | first job start after release, ms |"
out "|---|---:|---:|---:|---:|---|---:|---:|"
for b in "${backends[@]}"; do
  IFS='|' read -r label url kind port pid <<<"$b"
  n=$herd_n
  [ "$kind" = etcd ] && n=$herd_n_etcd
  # Redis waiters re-check once per 10 s block, together if they started together: the window
  # is one such period (see scripts/bench/scale.sh).
  cycle=(--window "$herd_window")
  [ "$kind" = redis ] && cycle=(--window 10 --period 10)
  "${measure[@]}" contention --elect "$elect" --label "$label" --backend "$url" --kind "$kind" \
    --n "$n" "${cycle[@]}" ${port:+--port "$port"} ${pid:+--server-pid "$pid"} | emit
done
out ""
out "N contenders --wait on one held lock; over ${herd_window} s of waiting (Redis: 10 s, one re-check period, from the moment every waiter is blocked): server requests (Redis: total_commands_processed, the commands inside elect's scripts included; etcd: grpc_server_msg_received_total from /metrics, stream messages included; PostgreSQL: calls in pg_stat_statements) and CPU time (schedstat) of the server and of the waiting elect processes. Then the holder's job exits: how many contenders' jobs start within 1 s (each job then holds the lock for 3 s), the server requests that one release caused, and the delay to the first job."
out ""

# ZooKeeper, in a file of its own (its server, wall time against kazoo, handover, takeover, waiters).
source "$root/scripts/bench/zk.sh"

# --------------------------------------------------------------------------------- 7. diagnostics
out "## 7. Where the time of one run goes"
out ""
out "\`strace -c -w -f\` (wall time in each call) of one \`elect run --lock x -- true\` on the file backend (elect, its watchdog, and the job's process, which becomes \`true\`):"
out ""
out '```'
strace -c -w -f -o "$BENCH_WORK/strace-c.txt" "$elect" run --lock x -- true
head -n 18 "$BENCH_WORK/strace-c.txt" | emit
tail -n 2 "$BENCH_WORK/strace-c.txt" | emit
out '```'
out ""
out "Process timeline of the same run (\`strace -f -ttt\`, ms since elect's execve; process-level calls only):"
out ""
out '```'
strace -f -ttt -o "$BENCH_WORK/strace-t.txt" \
  -e trace=execve,clone,clone3,vfork,wait4,waitid,flock,pipe2,exit_group "$elect" run --lock x -- true
awk 'NR == 1 { t0 = $2 } { $2 = sprintf("%8.3f", ($2 - t0) * 1000); print }' "$BENCH_WORK/strace-t.txt" \
  | grep -v -e 'resumed>' -e '+++ exited' | cut -c1-150 | emit
out '```'
out ""

source "$root/scripts/bench/scale.sh"  # 8. scaling: many held locks, many waiters
source "$root/scripts/bench/redis-topo.sh"  # 9. Redis topologies: Sentinel and Cluster

# ------------------------------------------------------------------------------------ BENCHMARKS.md
missed=$(grep -c -F '**missed**' "$report" || true)
{
  echo "# Benchmarks"
  echo ""
  echo "Produced by \`scripts/bench.sh$([ "$mode" = quick ] && echo " --quick")\` on $(date -u +%Y-%m-%d) (elect $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $mode run). Every ratio compares two commands measured in the same run on the same machine; re-run the script rather than comparing figures across machines."
  echo ""
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -g | awk '/^Mem/ {print $2}') GiB RAM, Linux $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")."
  echo "Load average (1, 5, 15 min) at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg). Other work on the machine widens the spreads; the ratios hold up better than the absolute times."
  echo "Versions: $(hyperfine --version), $(flock --version | head -1), redis-server $(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/'), etcd $(etcd --version | sed -n 's/etcd Version: //p'), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), $(rustc --version | cut -d' ' -f1-2)."
  echo ""
  if [ ${#skipped[@]} -gt 0 ]; then
    echo "Skipped: $(IFS=';'; echo "${skipped[*]}" | sed 's/;/; /g')."
    echo ""
  fi
  echo "Targets missed in this run: $missed (marked **missed** in the tables)."
  echo ""
  cat "$report"
  if [ -f "$root/scripts/bench/notes.md" ]; then
    cat "$root/scripts/bench/notes.md"
  fi
} >"$root/BENCHMARKS.md"
echo "wrote $root/BENCHMARKS.md ($missed targets missed)" >&2
