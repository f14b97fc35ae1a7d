#!/usr/bin/env bash
# Checks the Debian package as an operator meets it, after scripts/build.sh: builds it
# (scripts/deb.sh), runs lintian on it (no errors allowed; warnings are printed), then, as root,
# installs it with dpkg -i, runs elect from it, finds its man page and loads its bash completion,
# and checks that dpkg -r leaves only the conffile and dpkg --purge removes that too.
#
# It does not touch a machine's own elect: when the package is already installed, or something
# else put a file at /usr/bin/elect, it stops after lintian and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "deb: $*" >&2
  exit 1
}

deb=$(scripts/deb.sh --no-build)
echo "deb: built $deb ($(du -k "$deb" | cut -f1) kB)"

# --fail-on error: an error fails the check; warnings are printed. Overridden tags
# (packaging/deb/lintian-overrides, each with its reason) are neither. As root, lintian says that
# it should not run as root: that line is left out.
lintian_out=$(lintian --fail-on error --tag-display-limit 0 "$deb" 2>&1) ||
  fail "lintian found errors:
$lintian_out"
lintian_out=$(grep -v '^running with root privileges is not recommended!$' <<<"$lintian_out" || true)
echo "deb: lintian: no errors${lintian_out:+; it says:}"
[ -z "$lintian_out" ] || sed 's/^/  /' <<<"$lintian_out"

if [ "$(id -u)" -ne 0 ]; then
  echo "deb: not root, so not installing the package (dpkg -i needs root)"
  exit 0
fi
if dpkg-query -W -f='${db:Status-Abbrev}' elect 2>/dev/null | grep -q '^.i'; then
  echo "deb: the elect package is installed on this machine; not replacing it to test ours"
  exit 0
fi
if [ -e /usr/bin/elect ]; then
  echo "deb: /usr/bin/elect exists and no package owns it; not overwriting it to test the package"
  exit 0
fi

had_lock_dir=
[ ! -e /run/lock/elect ] || had_lock_dir=1
trap 'dpkg --purge elect >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb" >/dev/null
cmp -s /usr/bin/elect target/release/elect || fail "/usr/bin/elect is not the binary scripts/build.sh made"

# The tmpfiles.d entry made the default lock directory (postinst runs systemd-tmpfiles).
if command -v systemd-tmpfiles >/dev/null 2>&1; then
  perms=$(stat -c '%a %U %G' /run/lock/elect 2>/dev/null) || fail "postinst did not create /run/lock/elect"
  [ "$perms" = "755 root root" ] || fail "/run/lock/elect is $perms, expected 755 root root"
fi

# A run as planned, on the default backend and with the shipped /etc/elect.conf: prints nothing.
out=$(cd / && env -u ELECT_LOCK_DIR -u ELECT_BACKEND -u ELECT_CONFIG \
  elect run --lock deb-check -- sh -c 'test -n "$ELECT_FENCING_TOKEN" && echo ran' 2>&1) ||
  fail "elect run from the package failed: $out"
[ "$out" = ran ] || fail "elect run printed more than its job's output: $out"
elect config >/dev/null || fail "elect config rejects the shipped /etc/elect.conf"

man=$(man -w elect) || fail "man -w elect finds no man page"
[ "$man" = /usr/share/man/man1/elect.1.gz ] || fail "man -w elect gives $man"

# bash-completion's own loader finds the completion in the vendor directory, and it completes.
completes=$(bash -c '
  . /usr/share/bash-completion/bash_completion
  __load_completion elect || exit 1
  f=$(complete -p elect | sed -n "s/.* -F \([^ ]*\) .*/\1/p")
  COMP_WORDS=(elect ru); COMP_CWORD=1; COMP_LINE="elect ru"; COMP_POINT=${#COMP_LINE}
  "$f" elect ru elect
  printf "%s\n" "${COMPREPLY[@]}"') || fail "bash-completion does not load the elect completion"
grep -qx run <<<"$completes" || fail "bash completion of 'elect ru' gives: $completes"
for file in /usr/share/zsh/vendor-completions/_elect /usr/share/fish/vendor_completions.d/elect.fish \
  /usr/share/doc/elect/examples/crontab /usr/share/doc/elect/copyright \
  /usr/share/doc/elect/changelog.gz /usr/lib/tmpfiles.d/elect.conf; do
  [ -f "$file" ] || fail "$file is not installed"
done
[ "$(stat -c %a /etc/elect.conf)" = 644 ] || fail "/etc/elect.conf is not mode 0644"

# Everything the package put there whose name is elect's own (not a shared directory such as
# /usr/bin), for the checks after removal.
mapfile -t ours < <(dpkg -L elect | grep -e '/elect' -e '/_elect' | grep -vx /etc/elect.conf)

dpkg -r elect >/dev/null
for path in "${ours[@]}"; do
  [ ! -e "$path" ] || fail "dpkg -r left $path behind"
done
[ -f /etc/elect.conf ] || fail "dpkg -r removed the conffile /etc/elect.conf"

# The purge removes the lock directory only when it is empty (postrm): remove this check's lock.
rm -f /run/lock/elect/deb-check.lock
dpkg --purge elect >/dev/null
[ ! -e /etc/elect.conf ] || fail "dpkg --purge left /etc/elect.conf"
# (Unless it was there before, or a job elsewhere on the machine has put a lock file in it since.)
if [ -z "$had_lock_dir" ] && [ -d /run/lock/elect ] && [ -z "$(ls -A /run/lock/elect)" ]; then
  fail "dpkg --purge left the empty /run/lock/elect"
fi
trap - EXIT
echo "deb: installed, ran, found its man page and bash completion, removed and purged cleanly"
