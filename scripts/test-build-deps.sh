#!/usr/bin/env bash
# Checks what build.sh, test.sh and install.sh do on a machine where protoc cannot find Google's
# well-known .proto files (libprotobuf-dev absent), without removing anything from this machine:
# PROTOC points at a copy of protoc beside an empty include directory, where protoc finds no
# google/protobuf/descriptor.proto, as on a machine without libprotobuf-dev.
#
#   - as a user who cannot install packages (nobody), each script fails at once with one line on
#     stderr that names protobuf-compiler and libprotobuf-dev;
#   - as root, the check installs those packages with apt-get (a stand-in on PATH here, which
#     records its arguments and puts the .proto files where the copy looks), and then passes;
#   - as root, when installing does not help, it fails with one line naming them.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "build deps: $*" >&2
  exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
mkdir -p "$tmp/bin" "$tmp/include" "$tmp/apt"
cp "$(readlink -f "$(command -v protoc)")" "$tmp/bin/protoc"
export PROTOC=$tmp/bin/protoc
unset PROTOC_INCLUDE
. scripts/lib/build-deps.sh
! protoc_works || fail "the copy of protoc still finds the well-known types; the check proves nothing"

# One line on stderr, naming both packages, and a failing exit.
expect_one_line() { # what rc stderr
  local lines
  lines=$(grep -c '' <<<"$3" || true)
  [ "$2" -ne 0 ] || fail "$1 succeeded without the well-known types"
  [ "$lines" -eq 1 ] || fail "$1 printed $lines lines, expected one: $3"
  grep -q 'protobuf-compiler' <<<"$3" && grep -q 'libprotobuf-dev' <<<"$3" ||
    fail "$1 does not name protobuf-compiler and libprotobuf-dev: $3"
}

if [ "$(id -u)" -eq 0 ] && id nobody >/dev/null 2>&1; then
  # nobody cannot see root's Rust toolchain; install.sh looks for cargo and cc before the build
  # tools, so stand-ins answer `command -v` (and fail if run: nothing may get that far).
  mkdir -p "$tmp/stub"
  for tool in cargo cc rustc; do
    printf '#!/bin/sh\necho "%s must not run before the build tools are there" >&2\nexit 1\n' "$tool" >"$tmp/stub/$tool"
    chmod 755 "$tmp/stub/$tool"
  done
  mkdir -p "$tmp/prefix" && chown nobody "$tmp/prefix"
  repo=$PWD
  for script in scripts/build.sh scripts/test.sh "install.sh --prefix $tmp/prefix"; do
    rc=0
    # timeout: should the check ever pass, the script must not go on for long.
    # shellcheck disable=SC2086 # the install.sh entry carries its argument
    err=$(cd "$tmp" && timeout 120 runuser -u nobody -- env PATH="$tmp/stub:$PATH" PROTOC="$PROTOC" \
      HOME="$tmp" bash "$repo"/$script 2>&1 >/dev/null) || rc=$?
    expect_one_line "$script as nobody" "$rc" "$err"
  done
  echo "build deps: build.sh, test.sh and install.sh, unable to install, each fail with one line naming the packages"
else
  echo "build deps: not root (or no user nobody): not checking the scripts as another user"
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "build deps: not root: not checking the installation"
  exit 0
fi
# An apt-get that records what it is asked, and on install does what the packages would do for
# this copy of protoc (unless told that installing does not help).
cat >"$tmp/apt/apt-get" <<EOF
#!/bin/sh
echo "\$*" >>"$tmp/apt.log"
case " \$* " in
  *" install "*)
    [ -e "$tmp/useless" ] && exit 0
    mkdir -p "$tmp/include/google/protobuf"
    cp /usr/include/google/protobuf/descriptor.proto /usr/include/google/protobuf/struct.proto \
      "$tmp/include/google/protobuf/" ;;
esac
EOF
chmod 755 "$tmp/apt/apt-get"

touch "$tmp/useless"
rc=0
err=$(PATH="$tmp/apt:$PATH" ensure_build_deps 2>&1) || rc=$?
# The line that says what it installs comes first; the failure is one more line.
err=$(grep -v '^installing ' <<<"$err" || true)
expect_one_line "ensure_build_deps, when installing does not help" "$rc" "$err"

rm -f "$tmp/useless" "$tmp/apt.log"
err=$(PATH="$tmp/apt:$PATH" ensure_build_deps 2>&1) || fail "ensure_build_deps failed after installing: $err"
grep -q 'install .*protobuf-compiler libprotobuf-dev' "$tmp/apt.log" ||
  fail "ensure_build_deps did not install protobuf-compiler and libprotobuf-dev: $(cat "$tmp/apt.log")"
protoc_works || fail "protoc still fails after the installation"
echo "build deps: as root, the check installs protobuf-compiler and libprotobuf-dev"
