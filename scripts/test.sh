#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine with a Rust toolchain: installs the servers
# the integration tests start (redis-server, etcd, PostgreSQL, PgBouncer, ZooKeeper and kazoo),
# the build tools (protoc and libprotobuf-dev) and the package checkers (lintian, man-db,
# bash-completion) when they are missing, then checks formatting and lints, runs every test, builds
# the release binary and the Debian package and checks both.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/build-deps.sh

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have redis-server || missing+=(redis-server)
have redis-cli || missing+=(redis-tools)
have etcd || missing+=(etcd-server)
have etcdctl || missing+=(etcd-client)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ -x /usr/sbin/pgbouncer ] || have pgbouncer || missing+=(pgbouncer)
have openssl || missing+=(openssl)
have tmux || missing+=(tmux)
have faketime || missing+=(faketime)
# ZooKeeper's server jar (it brings a Java runtime) and kazoo, whose Lock the interop tests use.
[ -f /usr/share/java/zookeeper.jar ] && have java || missing+=(zookeeper)
/usr/bin/python3 -c 'import kazoo' 2>/dev/null || missing+=(python3-kazoo)
have flock || missing+=(util-linux)
# The fault suite's hosts (network namespaces, veth, nftables) and the btrfs lock-file test.
have ip || [ -x /sbin/ip ] || [ -x /bin/ip ] || missing+=(iproute2)
have nft || [ -x /usr/sbin/nft ] || missing+=(nftables)
have mkfs.btrfs || [ -x /usr/sbin/mkfs.btrfs ] || [ -x /sbin/mkfs.btrfs ] || missing+=(btrfs-progs)
# For the Debian package's checks (scripts/test-deb.sh).
have lintian || missing+=(lintian)
have man || missing+=(man-db)
[ -f /usr/share/bash-completion/bash_completion ] || missing+=(bash-completion)
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages from starting their own servers: the tests start theirs.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
fi

ensure_build_deps

. scripts/lib/test-lanes.sh
logs=$(mktemp -d)
trap 'stop_background; rm -rf "$logs"' EXIT

# One clean build: incremental compilation only pays on the builds after it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
step fmt cargo fmt --all -- --check
# The test build, whose list of test executables is what the lanes below run
# (scripts/lib/test-lanes.sh), then clippy's check of every target.
step "test build" build_tests "$logs/executables"
cargo test --locked --doc
step clippy cargo clippy --all-targets --locked -- -D warnings
# Test targets one at a time, longest first (ELECT_TEST_LANES=2 runs two at a time, the fault
# suite always alone), each one's output printed whole when it ends. Nothing else runs beside
# them: several of them time ttls and takeovers, and builds beside them (even at the lowest CPU
# priority) or a second target made them miss their bounds on 2 cores.
run_lanes "$logs/executables" "$logs" "${ELECT_TEST_LANES:-1}"
# The release build (the README's build command; the package checks below use the binary it
# makes).
((test_failures)) || step "dist build" scripts/build.sh
printf 'time per step:\n'
printf '  %s\n' "${step_times[@]}"
printf 'test time per target:\n'
printf '  %s\n' "${test_times[@]}" | sort -rn
((!test_failures)) || { echo "test targets failed: ${failed_targets[*]}" >&2; exit 1; }

# The binary scripts/build.sh made (static on glibc Linux): a job on the file backend, and a host
# name that the static binary must still resolve (a refused connection, not a failed lookup).
smoke=$(mktemp -d "$logs/smoke.XXXXXX")
ELECT_LOCK_DIR=$smoke target/release/elect run --lock smoke -- sh -c 'test -n "$ELECT_FENCING_TOKEN"'
rc=0
err=$(target/release/elect status --lock smoke --backend redis://localhost:1 2>&1) || rc=$?
if [ "$rc" -ne 69 ] || ! grep -q "refused" <<<"$err"; then
  echo "static binary: expected a refused connection to localhost:1 (exit 69), got $rc: $err" >&2
  exit 1
fi
echo "static binary: ok"

# What the build needs, on a machine without it (scripts/lib/build-deps.sh).
scripts/test-build-deps.sh

# The crate holds the program, not the tests, scripts or packaging.
extra=$(cargo package --list --locked --allow-dirty | grep -E '^(tests|scripts|packaging|\.ci|target)/' || true)
[ -z "$extra" ] || { echo "cargo package would ship files the crate does not need: $extra" >&2; exit 1; }

# The Debian package, from the binary built above: lintian, dpkg -i, -r, --purge.
scripts/test-deb.sh
