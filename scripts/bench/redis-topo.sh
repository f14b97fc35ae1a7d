# Redis under Sentinel and as a Cluster, next to standalone Redis. Sourced by scripts/bench.sh,
# which provides: elect, measure, hyper, out, emit, BENCH_WORK, net_runs, hand_rounds, free_port,
# wait_until, have_redis, redis_url.
#   - wall time per run and handover on each topology;
#   - the cost of replica acknowledgement (?wait=1) per acquire (a whole run) and per renew (one
#     PEXPIRE alone vs PEXPIRE + WAIT 1, on one connection);
#   - takeover after kill -9 of the primary (Sentinel) and of the slot owner (Cluster), with the
#     failover time seen from outside beside it.
# Sentinel: 1 primary + 2 replicas + 3 sentinels; Cluster: 3 primaries + 1 replica each. Loopback,
# free ports, no persistence; every process started here is stopped by topo_stop (EXIT trap).

topo_pids=()
declare -A topo_pid_of
topo_master=bench-main

topo_stop() {
  local pid
  for pid in "${topo_pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  topo_pids=()
}

# topo_node NAME PORT EXTRA-ARGS...: one redis-server in the foreground, in the background.
topo_node() {
  local name=$1 port=$2
  shift 2
  mkdir -p "$BENCH_WORK/topo"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$BENCH_WORK/topo" --dbfilename "$name.rdb" \
    --save '' --appendonly no --daemonize no --logfile "$BENCH_WORK/topo/$name.log" "$@" \
    </dev/null >/dev/null 2>&1 &
  topo_pids+=($!)
  topo_pid_of[$port]=$!
  wait_until 10 sh -c "redis-cli -p $port ping | grep -q PONG" \
    || { echo "redis-server $name did not start: $BENCH_WORK/topo/$name.log" >&2; return 1; }
}

topo_sentinel_start() {
  sen_primary=$(free_port)
  topo_node s-primary "$sen_primary"
  sen_nodes=("$sen_primary")
  local i port
  for i in 1 2; do
    port=$(free_port)
    topo_node "s-replica$i" "$port" --replicaof 127.0.0.1 "$sen_primary"
    sen_nodes+=("$port")
  done
  wait_until 30 sh -c "[ \$(redis-cli -p $sen_primary info replication | grep -c state=online) = 2 ]"
  sen_ports=()
  for i in 1 2 3; do
    port=$(free_port)
    printf 'bind 127.0.0.1\nport %s\ndir %s\nlogfile %s\nsentinel monitor %s 127.0.0.1 %s 2\nsentinel down-after-milliseconds %s 1000\nsentinel failover-timeout %s 4000\n' \
      "$port" "$BENCH_WORK/topo" "$BENCH_WORK/topo/sentinel$i.log" "$topo_master" "$sen_primary" \
      "$topo_master" "$topo_master" >"$BENCH_WORK/topo/sentinel$i.conf"
    redis-server "$BENCH_WORK/topo/sentinel$i.conf" --sentinel </dev/null >/dev/null 2>&1 &
    topo_pids+=($!)
    sen_ports+=("$port")
  done
  for port in "${sen_ports[@]}"; do
    wait_until 30 sh -c "redis-cli -p $port sentinel master $topo_master | grep -A1 -x num-other-sentinels | tail -1 | grep -qx 2"
  done
  sen_url="redis+sentinel://127.0.0.1:${sen_ports[0]},127.0.0.1:${sen_ports[1]},127.0.0.1:${sen_ports[2]}/$topo_master"
}

# The port the sentinels name as primary.
topo_sentinel_primary() {
  redis-cli -p "${sen_ports[0]}" sentinel get-master-addr-by-name "$topo_master" | sed -n 2p
}

topo_cluster_start() {
  local i port addrs=()
  clu_ports=()
  for i in 1 2 3 4 5 6; do
    port=$(free_port)
    topo_node "c$i" "$port" --cluster-enabled yes --cluster-config-file "c$i-nodes.conf" \
      --cluster-node-timeout 1000 --cluster-port "$(free_port)"
    clu_ports+=("$port")
    addrs+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  wait_until 30 sh -c "redis-cli -p ${clu_ports[0]} cluster info | grep -q cluster_state:ok"
  # Every primary's replica in sync, or ?wait=1 cannot be acknowledged yet.
  wait_until 60 sh -c "[ \$(for p in ${clu_ports[*]}; do redis-cli -p \$p info replication; done | grep -c state=online) = 3 ]"
  clu_url="redis+cluster://127.0.0.1:${clu_ports[0]},127.0.0.1:${clu_ports[1]}"
}

# The port of the healthy primary that owns KEY's slot, asked of a live node PORT.
topo_cluster_owner() {
  local key=$1 port=$2 slot
  slot=$(redis-cli -p "$port" cluster keyslot "$key")
  redis-cli -p "$port" cluster nodes | awk -v s="$slot" '
    $3 ~ /master/ && $3 !~ /fail/ {
      for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = (n == 2 ? r[2] : r[1]);
        if (s + 0 >= lo + 0 && s + 0 <= hi + 0) { split($2, a, "@"); sub(/.*:/, "", a[1]); print a[1]; exit } } }'
}

# topo_takeover LABEL URL KILL-PORT FAILED-CMD: two loops of short `elect run --wait` jobs on one
# lock; kill -9 of the node on KILL-PORT; prints the time to the first job that starts after the
# kill and the time until FAILED-CMD (a failover check) first succeeds.
topo_takeover() {
  local label=$1 url=$2 port=$3 check=$4 dir pid loops=() t0 t1 first
  dir=$(mktemp -d "$BENCH_WORK/take.XXXXXX")

  for pid in 1 2; do
    ( while [ ! -e "$dir/stop" ]; do
        "$elect" run --backend "$url" --lock take --ttl 3s --grace 500ms --wait=30s -- \
          sh -c "date +%s%N >> $dir/starts; sleep 0.1" 2>>"$dir/err" || sleep 0.1
      done ) &
    loops+=($!)
  done
  sleep 2
  t0=$(date +%s%N)
  kill -9 "${topo_pid_of[$port]}"
  wait_until 60 bash -c "$check" || true
  t1=$(date +%s%N)
  sleep 4
  touch "$dir/stop"
  wait "${loops[@]}" 2>/dev/null || true
  # The longest pause between two job starts from the kill on (jobs start every ~0.15 s
  # otherwise): the time the lock could not be taken.
  first=$(sort -n "$dir/starts" 2>/dev/null | awk -v t="$t0" '
    { if (prev != "" && $1 > t && $1 - prev > gap) gap = $1 - prev; prev = $1 }
    END { if (gap != "") printf "%d", gap / 1000000 }' || true)
  out "| $label | ${first:-no job after the kill} | $(( (t1 - t0) / 1000000 )) |"
}

# PEXPIRE alone vs PEXPIRE + WAIT 1 500 on one connection to PORT: the cost of acknowledgement
# per renew, without process start-up.
topo_renew_cost() {
  python3 - "$1" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rb")
def call(*args):
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    line = f.readline()
    if line[:1] == b"$" and int(line[1:]) >= 0:
        f.read(int(line[1:]) + 2)
    return line
call(b"SET", b"bench:{renew}", b"x", b"PX", b"60000")
def run(ack, n=300):
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        call(b"PEXPIRE", b"bench:{renew}", b"60000")
        if ack:
            assert call(b"WAIT", b"1", b"500").startswith(b":")
        times.append(time.perf_counter_ns() - t)
    times.sort()
    return times[len(times) // 2] / 1e6
plain, acked = run(False), run(True)
print(f"| renew (PEXPIRE) | {plain:.3f} | {acked:.3f} | {acked - plain:+.3f} |")
PY
}

if [ "${have_redis:-0}" = 1 ] && command -v redis-cli >/dev/null; then
  trap 'topo_stop; cleanup' EXIT
  topo_sentinel_start
  topo_cluster_start
  primary_url="redis://127.0.0.1:$(topo_sentinel_primary)"

  out "## 9. Redis topologies: Sentinel and Cluster"
  out ""
  out "Sentinel: 1 primary, 2 replicas, 3 sentinels; Cluster: 3 primaries with 1 replica each; all on loopback, no persistence."
  out ""
  out "### Wall time per run"
  out ""
  hyper wall-topo "$net_runs" \
    -n "standalone redis://" "$elect run --backend $redis_url --lock x -- true" \
    -n "redis+sentinel://" "$elect run --backend $sen_url --lock x -- true" \
    -n "redis+cluster://" "$elect run --backend $clu_url --lock x -- true" \
    -n "primary of the Sentinel set, redis://" "$elect run --backend $primary_url --lock x -- true" \
    -n "the same primary, redis://...?wait=1" "$elect run --backend $primary_url?wait=1 --lock x -- true" \
    -n "redis+sentinel://...?wait=1" "$elect run --backend $sen_url?wait=1 --lock x -- true" \
    -n "redis+cluster://...?wait=1" "$elect run --backend $clu_url?wait=1 --lock x -- true"
  "${measure[@]}" wall "$BENCH_WORK"/wall-topo-*.json 2>/dev/null | emit
  out ""
  out "One whole run (connect, acquire, job \`true\`, release). Under Sentinel a run first asks the sentinels for the primary and checks its role; in a Cluster it first reads the slot map. The cost of acknowledgement per acquire is the difference between the two rows of the same primary (one WAIT round trip to the replicas)."
  out ""
  out "### Acknowledgement per renew"
  out ""
  out "| call | median ms alone | median ms with WAIT 1 | difference ms |"
  out "|---|---:|---:|---:|"
  topo_renew_cost "$(topo_sentinel_primary)"
  out ""
  out "### Handover"
  out ""
  out "| backend | rounds | min ms | median ms | max ms | target (median) |"
  out "|---|---:|---:|---:|---:|---|"
  for spec in "standalone|$redis_url" "sentinel|$sen_url" "cluster|$clu_url" "sentinel ?wait=1|$sen_url?wait=1"; do
    "${measure[@]}" handover --elect "$elect" --label "${spec%%|*}" --backend "${spec#*|}" --rounds "$hand_rounds" | emit
  done
  out ""
  out "### Takeover after kill -9 of the primary"
  out ""
  out "| topology | longest pause in job starts, ms | failover seen from outside, ms |"
  out "|---|---:|---:|"
  old=$(topo_sentinel_primary)
  topo_takeover "Sentinel (kill -9 of the primary)" "$sen_url" "$old" \
    "p=\$(redis-cli -p ${sen_ports[0]} sentinel get-master-addr-by-name $topo_master | sed -n 2p); [ \"\$p\" != $old ] && redis-cli -p \$p role | head -1 | grep -qx master"
  export -f topo_cluster_owner
  owner=$(topo_cluster_owner "elect:{take}" "${clu_ports[0]}")
  live=${clu_ports[0]}
  [ "$live" = "$owner" ] && live=${clu_ports[1]}
  topo_takeover "Cluster (kill -9 of the slot owner)" "$clu_url" "$owner" \
    "o=\$(topo_cluster_owner 'elect:{take}' $live); [ -n \"\$o\" ] && [ \"\$o\" != $owner ]"
  out ""
  out "Two loops of \`elect run --wait=30s --lock take -- (a 100 ms job)\`; kill -9 of the node at 0. The first column is the longest time between two job starts from the kill on (about 150 ms apart otherwise): how long the lock could not be taken; the second, when the sentinels name a new primary that answers ROLE as one (Sentinel) or when the slot map shows a healthy new owner of the lock's slot (Cluster). Sentinel: down-after-milliseconds 1000; Cluster: cluster-node-timeout 1000."
  out ""
  topo_stop
  trap cleanup EXIT
fi
