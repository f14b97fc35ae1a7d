#!/usr/bin/env bash
# Builds the release binary, target/release/elect, on a fresh Debian machine with a Rust toolchain,
# installing what the build needs (protoc and the well-known .proto files, for the etcd client)
# when it is missing: scripts/lib/build-deps.sh.
#
# It uses the `dist` profile of Cargo.toml (the release profile optimised for size, with
# whole-program LTO), and on glibc Linux links the binary statically and at a fixed address (no
# PIE), as Go's static binaries are: it then starts without the dynamic loader and without
# relocating itself. Both make a run cheaper (BENCHMARKS.md). `cargo build --release` still gives
# the ordinary dynamic, position-independent binary; both behave the same.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/build-deps.sh
ensure_build_deps
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
  *-linux-gnu*)
    # With --target, RUSTFLAGS reach only the binary, not the build scripts and proc macros.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
      cargo build --profile dist --locked --target "$host"
    built="target/$host/dist/elect"
    ;;
  *)
    cargo build --profile dist --locked
    built=target/dist/elect
    ;;
esac
# A copy, not a link: the file the linker wrote costs more to map at every exec than a copy
# written with write(2), as `install` writes one (BENCHMARKS.md, section 7).
mkdir -p target/release
cp "$built" target/release/elect.tmp
mv -f target/release/elect.tmp target/release/elect
echo "built $PWD/target/release/elect" >&2
