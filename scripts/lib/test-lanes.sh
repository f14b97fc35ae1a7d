# shellcheck shell=bash
# Sourced by test.sh: the steps of a test run, timed, and the test targets run a few at a time.
#
# The test targets mostly wait (ttls, takeovers, servers starting), not compute, so test.sh runs
# several at once, in lanes, the longest first, and the CPU-bound builds (clippy, the release
# build) beside them at the lowest CPU priority. Each target's output goes to its own log, printed
# whole when the target ends, so that a failure reads as it would alone. Test servers pick ports
# that processes running at the same time do not share (tests/support/net.rs).

# "Ns what" for each step and each test target, printed at the end.
step_times=()
test_times=()
test_failures=0
failed_targets=()
# Process groups of the background builds, and their names and logs, by pid.
declare -A background_name=() background_log=()

# Runs a step in the foreground and records its time.
step() { # name command...
  local name=$1 started=$SECONDS
  shift
  "$@"
  step_times+=("$((SECONDS - started))s $name")
}

# Builds every test target and writes one line per test executable to $1: its name (the test
# target's, or lib and bin-NAME for the unit tests), a tab and its path.
build_tests() { # list
  local json
  json=$(mktemp)
  cargo test --locked --no-run --message-format=json-render-diagnostics >"$json"
  python3 - "$json" >"$1" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    message = json.loads(line)
    path = message.get("executable")
    if message.get("reason") != "compiler-artifact" or not path or not message["profile"]["test"]:
        continue
    target = message["target"]
    kind = target["kind"][0]
    name = target["name"] if kind == "test" else "lib" if kind == "lib" else f"{kind}-{target['name']}"
    print(f"{name}\t{path}")
EOF
  rm -f "$json"
  [ -s "$1" ] || { echo "the test build listed no test executables" >&2; return 1; }
}

# Starts a command in the background, in a process group of its own, at the lowest CPU (and I/O)
# priority, its output into a log.
background() { # name log command...
  local name=$1 log=$2 low=(nice -n 19)
  shift 2
  ! command -v ionice >/dev/null 2>&1 || low+=(ionice -c 3)
  set -m
  {
    local started rc=0
    started=$(date +%s)
    "${low[@]}" "$@" </dev/null >"$log" 2>&1 || rc=$?
    echo "$(($(date +%s) - started))" >"$log.secs"
    exit "$rc"
  } &
  set +m
  background_name[$!]=$name
  background_log[$!]=$log
}

# Waits for every background command; prints the log of each that failed, and fails then.
wait_background() {
  local pid rc failed=0
  for pid in "${!background_name[@]}"; do
    rc=0
    wait "$pid" || rc=$?
    step_times+=("$(cat "${background_log[$pid]}.secs" 2>/dev/null || echo ?)s ${background_name[$pid]} (in the background)")
    if [ "$rc" -ne 0 ]; then
      echo "${background_name[$pid]} failed (exit $rc):" >&2
      cat "${background_log[$pid]}" >&2
      failed=1
    fi
    unset "background_name[$pid]"
  done
  return "$failed"
}

# Once the tests are over, nothing is left to protect: the builds still running get the usual
# priority back (where this user may raise it: root may), so that other work on the machine does
# not starve them.
raise_background() {
  local pid
  for pid in "${!background_name[@]}"; do
    renice -n 0 -g "$pid" >/dev/null 2>&1 || true
    ! command -v ionice >/dev/null 2>&1 || ionice -c 2 -n 4 -P "$pid" >/dev/null 2>&1 || true
  done
}

# Ends what is still running in the background (on an early exit).
stop_background() {
  local pid
  for pid in "${!background_name[@]}" "${!lane_name[@]}"; do
    kill -- "-$pid" 2>/dev/null || true
  done
}

# The test targets that take longest, longest first (from the per-target times of a full run on
# 2 cores); the others follow in the order of the list. A new slow target belongs here.
SLOW_TARGETS=(faults postgres_backend etcd_cli etcd_backend postgres_battery redis_sentinel
  redis_backend zk_cli redis_cluster crash_takeover zk_waiter_recovery redis_battery file_backend
  file_edges redis_ack postgres_cli)

# Targets that run with no other target beside them: the fault suite runs four scenarios at a time
# already, and its bounds are the ttls themselves.
ALONE_TARGETS=(faults)

declare -A lane_name=() lane_started=()

is_alone() { [[ " ${ALONE_TARGETS[*]} " == *" $1 "* ]]; }

# Whether a target of ALONE_TARGETS is running.
alone_running() {
  local pid
  for pid in "${!lane_name[@]}"; do
    ! is_alone "${lane_name[$pid]}" || return 0
  done
  return 1
}

# Runs the executables listed in $1 (by build_tests), $3 at a time (those of ALONE_TARGETS alone),
# each with its output in a log under $2; records each one's time and failure.
run_lanes() { # list logs lanes
  local list=$1 logs=$2 lanes=$3 name path pid rc
  local -A paths=()
  local order=()
  while IFS=$'\t' read -r name path; do
    paths[$name]=$path
  done <"$list"
  for name in "${SLOW_TARGETS[@]}"; do
    [ -z "${paths[$name]:-}" ] || order+=("$name")
  done
  while IFS=$'\t' read -r name path; do
    [[ " ${SLOW_TARGETS[*]} " == *" $name "* ]] || order+=("$name")
  done <"$list"
  local next=0
  while ((next < ${#order[@]} || ${#lane_name[@]})); do
    while ((next < ${#order[@]} && ${#lane_name[@]} < lanes)); do
      name=${order[next]}
      ! alone_running || break
      ! is_alone "$name" || ((${#lane_name[@]} == 0)) || break
      start_target "$name" "${paths[$name]}" "$logs"
      next=$((next + 1))
    done
    rc=0
    wait -n -p pid "${!lane_name[@]}" || rc=$?
    name=${lane_name[$pid]}
    test_times+=("$((SECONDS - lane_started[$pid]))s $name")
    unset "lane_name[$pid]"
    echo "     Ran $name: $([ "$rc" -eq 0 ] && echo ok || echo "FAILED (exit $rc)")"
    cat "$logs/$name.log"
    if [ "$rc" -ne 0 ]; then
      test_failures=$((test_failures + 1))
      failed_targets+=("$name")
    fi
  done
}

# Starts one test executable in a process group of its own, from the package's directory as
# cargo test would; the fault suite runs four scenarios at a time, as scripts/faults.sh does.
start_target() { # name path logs
  local name=$1 path=$2 logs=$3 args=()
  [ "$name" != faults ] || args=(--test-threads="${ELECT_FAULTS_THREADS:-4}")
  set -m
  "$path" "${args[@]}" </dev/null >"$logs/$name.log" 2>&1 &
  set +m
  lane_name[$!]=$name
  lane_started[$!]=$SECONDS
}
