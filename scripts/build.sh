#!/usr/bin/env bash
# Builds the release binary on a fresh Debian machine with a Rust toolchain, installing the one
# build tool it needs (protoc, for the etcd client) when it is missing.
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
cargo build --release --locked
echo "built $PWD/target/release/elect" >&2
