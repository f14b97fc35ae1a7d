#!/usr/bin/env bash
# Builds elect and installs it with its man page and shell completions.
#
#   ./install.sh [--prefix DIR]        build and install (default prefix: /usr/local)
#   ./install.sh --uninstall [--prefix DIR]
#
# It installs what the build needs (protoc, libprotobuf-dev) with apt-get when it can, and otherwise says
# exactly what is missing. Installed files are listed in PREFIX/share/elect/installed, which
# --uninstall reads, so that it removes exactly what was installed. Running it twice is safe.
set -euo pipefail
cd "$(dirname "$0")"

prefix=/usr/local
action=install
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --uninstall) action=uninstall; shift ;;
    -h|--help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
manifest=$prefix/share/elect/installed

if [ "$action" = uninstall ]; then
  if [ ! -f "$manifest" ]; then
    echo "install.sh: nothing to uninstall under $prefix (no $manifest)" >&2
    exit 1
  fi
  while IFS= read -r file; do
    rm -f -- "$file" && echo "removed $file"
  done < "$manifest"
  rm -f -- "$manifest"
  rmdir -- "$prefix/share/elect" 2>/dev/null || true
  exit 0
fi

missing=()
command -v cargo >/dev/null 2>&1 || missing+=("cargo (a Rust toolchain: https://rustup.rs)")
command -v cc >/dev/null 2>&1 || missing+=("cc (apt-get install gcc)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: cannot build elect; missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
if ! mkdir -p "$prefix/bin" 2>/dev/null || [ ! -w "$prefix/bin" ]; then
  echo "install.sh: cannot write to $prefix/bin; run as root or choose --prefix \$HOME/.local" >&2
  exit 1
fi

scripts/build.sh  # installs protoc and libprotobuf-dev when missing; static on glibc Linux: see the comment there
install_file() { # mode source destination
  install -D -m "$1" "$2" "$3"
  echo "$3" >> "$manifest.new"
  echo "installed $3"
}
mkdir -p "$prefix/share/elect"
: > "$manifest.new"
install_file 755 target/release/elect "$prefix/bin/elect"
install_file 644 man/elect.1 "$prefix/share/man/man1/elect.1"
install_file 644 completions/elect.bash "$prefix/share/bash-completion/completions/elect"
install_file 644 completions/_elect "$prefix/share/zsh/site-functions/_elect"
install_file 644 completions/elect.fish "$prefix/share/fish/vendor_completions.d/elect.fish"
mv "$manifest.new" "$manifest"
