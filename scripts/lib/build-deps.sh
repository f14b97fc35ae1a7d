# Sourced by build.sh, test.sh and install.sh: makes sure the etcd client's build script can run.
#
# etcd-client's build script runs protoc on .proto files that import Google's well-known types
# (google/protobuf/descriptor.proto, struct.proto). Debian ships the compiler in
# protobuf-compiler and the well-known types in libprotobuf-dev, which --no-install-recommends
# leaves out. So the check compiles a file that imports them, with the same PROTOC and
# PROTOC_INCLUDE that the build script will use, rather than looking for the protoc binary alone.

# Prints nothing and succeeds when protoc can compile a file that imports the well-known types.
protoc_works() {
  local protoc=${PROTOC:-protoc} dir rc=0
  command -v "$protoc" >/dev/null 2>&1 || return 1
  dir=$(mktemp -d)
  printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nimport "google/protobuf/struct.proto";\n' >"$dir/probe.proto"
  local includes=(-I "$dir")
  [ -z "${PROTOC_INCLUDE:-}" ] || includes+=(-I "$PROTOC_INCLUDE")
  "$protoc" "${includes[@]}" --descriptor_set_out="$dir/out" "$dir/probe.proto" >/dev/null 2>&1 || rc=1
  rm -rf "$dir"
  return "$rc"
}

# The Debian packages the build needs, for the messages below and the README.
BUILD_PACKAGES=(protobuf-compiler libprotobuf-dev)

# Installs the build packages when protoc cannot compile the probe; fails with one line naming
# them when it cannot install (not root, no apt-get) or when they do not help (PROTOC or
# PROTOC_INCLUDE pointing elsewhere).
ensure_build_deps() {
  protoc_works && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot build elect: protoc with Google's well-known .proto files is missing; install ${BUILD_PACKAGES[*]} (apt-get install ${BUILD_PACKAGES[*]})" >&2
    return 1
  fi
  echo "installing ${BUILD_PACKAGES[*]} (protoc and the well-known .proto files, for the etcd client)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${BUILD_PACKAGES[@]}" >/dev/null
  if ! protoc_works; then
    echo "cannot build elect: protoc still cannot find google/protobuf/descriptor.proto after installing ${BUILD_PACKAGES[*]} (check PROTOC=${PROTOC:-} and PROTOC_INCLUDE=${PROTOC_INCLUDE:-})" >&2
    return 1
  fi
}
