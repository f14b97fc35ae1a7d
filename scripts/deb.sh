#!/usr/bin/env bash
# Builds the Debian package, target/debian/elect_VERSION_ARCH.deb, from the binary that
# scripts/build.sh makes (run first; a no-op when the binary is up to date) and the files under
# packaging/deb/, with dpkg-deb alone (no debhelper, no cargo-deb). File owners are set by
# dpkg-deb --root-owner-group, so it runs as any user.
#
#   scripts/deb.sh            build, then package; prints the .deb's path on stdout
#   scripts/deb.sh --no-build package the binary already in target/release/elect
#
# Contents: /usr/bin/elect, the man page, the bash, zsh and fish completions in Debian's vendor
# directories, /etc/elect.conf (a conffile: every key commented out with its default),
# /usr/lib/tmpfiles.d/elect.conf (creates /run/lock/elect at boot), the examples, and the
# copyright and changelog in /usr/share/doc/elect. scripts/test-deb.sh installs and checks it.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
case "${1:-}" in
  --no-build) build= ;;
  "") ;;
  *) echo "deb.sh: unknown argument $1 (try --no-build)" >&2; exit 2 ;;
esac
[ -z "$build" ] || scripts/build.sh >&2
bin=target/release/elect
[ -x "$bin" ] || { echo "deb.sh: no $bin; run scripts/build.sh first" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
changelog_version=$(sed -n '1s/^elect (\([^)]*\)).*/\1/p' packaging/deb/changelog)
if [ "$version" != "$changelog_version" ]; then
  echo "deb.sh: Cargo.toml says version $version but packaging/deb/changelog's top entry is $changelog_version; add an entry for $version" >&2
  exit 1
fi
arch=$(dpkg --print-architecture)
maintainer=$(sed -n 's/^ -- \(.*>\)  .*/\1/p' packaging/deb/changelog | head -n1)

root=target/debian/root
rm -rf "$root"
put() { # mode source destination (relative to the package root)
  install -D -m "$1" "$2" "$root/$3"
}
put 755 "$bin" usr/bin/elect
put 644 completions/elect.bash usr/share/bash-completion/completions/elect
put 644 completions/_elect usr/share/zsh/vendor-completions/_elect
put 644 completions/elect.fish usr/share/fish/vendor_completions.d/elect.fish
put 644 packaging/deb/elect.conf etc/elect.conf
put 644 packaging/deb/tmpfiles.conf usr/lib/tmpfiles.d/elect.conf
put 644 packaging/deb/lintian-overrides usr/share/lintian/overrides/elect
doc=usr/share/doc/elect
for example in examples/*; do
  # Examples are documents here, not programs to run from /usr/share/doc.
  put 644 "$example" "$doc/examples/${example#examples/}"
done
# gzip -n: no name or time stamp inside, so that the same input gives the same package.
mkdir -p "$root/usr/share/man/man1"
gzip -9nc man/elect.1 >"$root/usr/share/man/man1/elect.1.gz"
gzip -9nc packaging/deb/changelog >"$root/$doc/changelog.gz"
chmod 644 "$root/usr/share/man/man1/elect.1.gz" "$root/$doc/changelog.gz"

# The copyright file lists the crates linked into the binary (build-time crates and proc macros
# are not in it), with their licenses.
crates=$(cargo tree --locked --offline -e normal --prefix none --format '{p}: {l}' \
  | grep -v -e '(proc-macro)' -e '^elect v' | sed 's/ (\*)$//' | sort -u | sed 's/^/ /')
awk -v crates="$crates" '$0 == "@CRATES@" { print crates; next } { print }' \
  packaging/deb/copyright >"$root/$doc/copyright"
chmod 644 "$root/$doc/copyright"

mkdir -p "$root/DEBIAN"
echo /etc/elect.conf >"$root/DEBIAN/conffiles"
install -m 755 packaging/deb/postinst packaging/deb/postrm "$root/DEBIAN/"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  >"$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: elect
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Section: utils
Priority: optional
Description: run a command under a named lease, one holder at a time
 elect runs a command under a named lease, so that one holder at a time runs
 it: on one machine with a lock file, or across machines with Redis, etcd or
 PostgreSQL. Put it in front of a crontab line, a systemd ExecStart or a CI
 step; nothing in the job changes.
 .
 The lease is renewed while the job runs; when it cannot be renewed in time a
 watchdog stops the job before another holder can take the lease, and every
 holder gets a fencing token that grows with each acquisition.
EOF
# Directories 0755 and files as installed above, whatever the umask of the checkout.
find "$root" -type d -exec chmod 755 {} +

deb=target/debian/elect_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
