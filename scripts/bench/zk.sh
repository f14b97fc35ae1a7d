#!/usr/bin/env bash
# ZooKeeper's part of the benchmarks, each figure next to its peer in the same run:
#   1. wall time of one `elect run --backend zk://… --lock x -- true` vs a one-shot kazoo script
#      (KazooClient start, Lock acquire, release, stop) and vs `zkCli.sh` create/delete
#   2. handover: the holder's job exits -> a --wait'ing contender's job starts
#   3. crash takeover: kill -9 of the holding elect -> a --wait'ing contender's job starts
#   4. idle cost per waiter: N contenders --wait on one held lock (packets to the server, CPU)
# The server is Debian's zookeeper, started here on 127.0.0.1 with tickTime=1000 (session
# timeouts 2 s to 20 s), data under the work directory, stopped on exit.
#
# Sourced by scripts/bench.sh (it uses its helpers and round counts), or run alone:
#   scripts/bench/zk.sh [--quick]    (measures target/release/elect; build it first)
set -euo pipefail

zk_standalone=0
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  zk_standalone=1
  cd "$(dirname "$0")/../.."
  root=$PWD
  if [ "${1:-}" = --quick ]; then
    rounds=2 net_runs=15 hand_rounds=5 take_rounds=2 herd_n=50 herd_window=2
  else
    rounds=5 net_runs=40 hand_rounds=20 take_rounds=10 herd_n=200 herd_window=5
  fi
  elect=${ELECT:-$root/target/release/elect}
  [ -x "$elect" ] || { echo "no $elect: run scripts/build.sh first" >&2; exit 1; }
  measure=(python3 "$root/scripts/bench/measure.py")
  BENCH_WORK=$(mktemp -d /tmp/elect-bench-zk.XXXXXX)
  out() { printf '%s\n' "$*"; }
  emit() { cat; }
  hyper() {
    local name=$1 runs=$2 r
    shift 2
    for (( r = 1; r <= rounds; r++ )); do
      hyperfine -N --style none --warmup 5 --runs "$runs" --export-json "$BENCH_WORK/$name-$r.json" "$@" \
        >/dev/null 2>"$BENCH_WORK/$name-$r.err" || { cat "$BENCH_WORK/$name-$r.err" >&2; return 1; }
    done
  }
fi

zk_jar=/usr/share/java/zookeeper.jar
if [ ! -f "$zk_jar" ] || ! command -v java >/dev/null || ! /usr/bin/python3 -c 'import kazoo' 2>/dev/null; then
  out "## ZooKeeper"
  out ""
  out "Skipped: install zookeeper and python3-kazoo (apt-get install zookeeper python3-kazoo)."
  out ""
else
  zk_dir=$BENCH_WORK/zk
  mkdir -p "$zk_dir/data"
  ZK_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$zk_dir/zoo.cfg" <<CFG
tickTime=1000
dataDir=$zk_dir/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=*
maxClientCnxns=0
CFG
  java -Xmx256m -XX:+UseSerialGC -Dzookeeper.log.dir="$zk_dir" -cp "$zk_jar" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$zk_dir/zoo.cfg" </dev/null >"$zk_dir/server.log" 2>&1 &
  ZK_PID=$!
  zk_stop() { kill "$ZK_PID" 2>/dev/null || true; wait "$ZK_PID" 2>/dev/null || true; }
  if [ $zk_standalone = 1 ]; then
    trap 'zk_stop; rm -rf "$BENCH_WORK"' EXIT
  elif declare -F cleanup >/dev/null; then
    trap 'zk_stop; cleanup' EXIT
  fi
  zk_serving() { exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf srvr >&3 && grep -q Mode: <&3; }
  for _ in $(seq 1 300); do zk_serving 2>/dev/null && break; sleep 0.1; done
  zk_serving 2>/dev/null || { echo "ZooKeeper did not start: $zk_dir/server.log" >&2; exit 1; }
  zk_url=zk://127.0.0.1:$ZK_PORT
  cat >"$zk_dir/kazoo_once.py" <<PY
from kazoo.client import KazooClient
zk = KazooClient(hosts="127.0.0.1:$ZK_PORT")
zk.start()
lock = zk.Lock("/elect/x")
if lock.acquire(blocking=False):
    lock.release()
zk.stop()
PY

  out "## ZooKeeper"
  out ""
  out "ZooKeeper $(java -cp "$zk_jar" org.apache.zookeeper.Version 2>/dev/null | head -1 | cut -d- -f1 || echo 3.8), one server on loopback, \`tickTime=1000\`; kazoo $(/usr/bin/python3 -c 'import kazoo.version as v; print(v.__version__)' 2>/dev/null || echo '?')."
  out ""
  out "### Wall time of one run"
  out ""
  hyper wall-zk "$net_runs" \
    -n "elect run --backend zk://… --lock x -- true" "$elect run --backend $zk_url --lock x -- true" \
    -n "kazoo: start, Lock acquire, release, stop (python3)" "/usr/bin/python3 $zk_dir/kazoo_once.py"
  "${measure[@]}" wall "$BENCH_WORK"/wall-zk-*.json \
    --target "kazoo: start, Lock acquire, release, stop (python3)=0.5" 2>/dev/null | emit
  out ""
  out "### Handover, crash takeover (--ttl 2s), idle cost per waiter"
  out ""
  out "| backend | rounds | min ms | median ms | max ms | target (median) |"
  out "|---|---:|---:|---:|---:|---|"
  "${measure[@]}" handover --elect "$elect" --label zookeeper --backend "$zk_url" --rounds "$hand_rounds" | emit
  out ""
  out "| backend | ttl / grace | rounds | min ms | median ms | max ms | holder's job gone after (median) | target (median) |"
  out "|---|---|---:|---:|---:|---:|---|---|"
  "${measure[@]}" takeover --elect "$elect" --label zookeeper --backend "$zk_url" --rounds "$take_rounds" \
    --ttl 2s --grace 500ms --target 3500 | emit
  out ""
  out "| backend | N | server packets/s while waiting | server CPU ms/s | waiters' CPU ms/s | jobs started in 1 s after one release | packets for that release | first job after |"
  out "|---|---|---|---|---|---|---|---|"
  "${measure[@]}" contention --elect "$elect" --label zookeeper --backend "$zk_url" --kind zk \
    --n "$herd_n" --window "$herd_window" --port "$ZK_PORT" --server-pid "$ZK_PID" | emit
  out ""
  out "Waiters hold a session each: the client pings after 3/20 of the session timeout (the default --ttl 15s: every 2.25 s) without a request, so the idle cost is about 0.45 packets/s per waiter, and a release wakes only the waiter just behind."
  out ""
  zk_stop
fi
