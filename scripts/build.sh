#!/usr/bin/env bash
# Builds the release binary, target/release/elect, on a fresh Debian machine with a Rust toolchain,
# installing the one build tool it needs (protoc, for the etcd client) when it is missing.
#
# On glibc Linux the binary is linked statically and at a fixed address (no PIE), as Go's static
# binaries are: it then starts without the dynamic loader and without relocating itself, which is
# most of what elect costs over flock(1) per run (BENCHMARKS.md). `cargo build --release` still
# gives the ordinary dynamic, position-independent binary; both behave the same.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "protoc is missing: install the protobuf-compiler package (apt-get install protobuf-compiler)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler >/dev/null
fi
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
  *-linux-gnu*)
    # With --target, RUSTFLAGS reach only the binary, not the build scripts and proc macros.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
      cargo build --release --locked --target "$host"
    mkdir -p target/release
    ln -f "target/$host/release/elect" target/release/elect
    ;;
  *)
    cargo build --release --locked
    ;;
esac
echo "built $PWD/target/release/elect" >&2
