# Start and stop the benchmark's own servers: loopback only, free ports, data under $BENCH_WORK.
# Sourced by scripts/bench.sh. Every wait loop is bounded; a server that does not come up is an
# error that names it. bench_stop_servers is safe to call more than once (the EXIT trap calls it).
#
# After a start, these are set:
#   redis:    REDIS_PORT REDIS_PID
#   etcd:     ETCD_PORT ETCD_PEER_PORT ETCD_PID
#   postgres: PG_PORT PG_DATA PG_USER PG_DB  (the server runs as the postgres OS user)

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_until SECONDS CMD...: run CMD every 0.1 s until it succeeds, at most SECONDS.
wait_until() {
  local tries=$(( $1 * 10 )); shift
  local i
  for (( i = 0; i < tries; i++ )); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

start_redis() {
  command -v redis-server >/dev/null || { echo "redis-server missing (apt-get install redis-server)" >&2; return 1; }
  REDIS_PORT=$(free_port)
  mkdir -p "$BENCH_WORK/redis"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$BENCH_WORK/redis" --save '' \
    --appendonly no --daemonize no --maxclients 4000 --logfile "$BENCH_WORK/redis/redis.log" \
    </dev/null >/dev/null 2>&1 &
  REDIS_PID=$!
  wait_until 10 sh -c "redis-cli -p $REDIS_PORT ping | grep -q PONG" \
    || { echo "redis-server did not start: $BENCH_WORK/redis/redis.log" >&2; return 1; }
}

start_etcd() {
  command -v etcd >/dev/null || { echo "etcd missing (apt-get install etcd-server etcd-client)" >&2; return 1; }
  ETCD_PORT=$(free_port)
  ETCD_PEER_PORT=$(free_port)
  mkdir -p "$BENCH_WORK/etcd"
  etcd --name bench --data-dir "$BENCH_WORK/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" \
    --logger zap --log-outputs stderr </dev/null >/dev/null 2>"$BENCH_WORK/etcd/etcd.log" &
  ETCD_PID=$!
  wait_until 15 etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT" endpoint health \
    || { echo "etcd did not start: $BENCH_WORK/etcd/etcd.log" >&2; return 1; }
}

start_postgres() {
  [ -x "$PG_BIN/postgres" ] || { echo "PostgreSQL missing in $PG_BIN (apt-get install postgresql)" >&2; return 1; }
  PG_PORT=$(free_port)
  PG_USER=bench
  PG_DB=bench
  # The postgres OS user must reach the data directory and the socket directory.
  PG_HOME=$(mktemp -d /tmp/elect-bench-pg.XXXXXX)
  chmod 755 "$PG_HOME"
  chown postgres: "$PG_HOME"
  PG_DATA=$PG_HOME/data
  runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_USER" -A trust --no-sync -E UTF8 \
    >"$PG_HOME/initdb.log" 2>&1 || { echo "initdb failed: $PG_HOME/initdb.log" >&2; return 1; }
  # max_connections: every waiting contender holds a connection (or two) during the contention run,
  # and the scaling run holds 1,000 locks, or has 1,000 waiters, at once.
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_HOME/server.log" -w -t 30 \
    -o "-p $PG_PORT -k $PG_HOME -c listen_addresses=127.0.0.1 -c max_connections=2200 -c shared_preload_libraries=pg_stat_statements" \
    start >/dev/null || { echo "PostgreSQL did not start: $PG_HOME/server.log" >&2; return 1; }
  psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -qAtc "create database $PG_DB" >/dev/null
  psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -qAtc "create extension pg_stat_statements" >/dev/null
}

# stop_pid PID SECONDS: SIGTERM, wait at most SECONDS, then SIGKILL.
stop_pid() {
  local pid=$1 tries=$(( $2 * 10 )) i
  kill -TERM "$pid" 2>/dev/null || return 0
  for (( i = 0; i < tries; i++ )); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

bench_stop_servers() {
  if [ -n "${REDIS_PID:-}" ]; then stop_pid "$REDIS_PID" 5; REDIS_PID=; fi
  if [ -n "${ETCD_PID:-}" ]; then stop_pid "$ETCD_PID" 5; ETCD_PID=; fi
  if [ -n "${PG_DATA:-}" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
    rm -rf "$PG_HOME"
    PG_DATA=
  fi
}
