#!/usr/bin/env bash
# Builds tokengate's Debian package with cargo-deb (installed, at a pinned version, into
# <target>/tools when missing), checks what it holds (files, modes, conffiles, the maintainer
# script), unpacks it with dpkg into a throwaway root and checks the files land there and the
# installed binary accepts the installed configuration. Prints the .deb's path, then a
# "packaging: N passed, 0 failed" line.
#
# The throwaway install runs `dpkg --unpack` without root privileges' effects on the host
# (`--root`, `--force-not-root`, `--force-script-chrootless`): the package has no preinst, so
# unpacking runs no maintainer script, and postinst (`dpkg --configure`: the tokengate user,
# /var/lib/tokengate, /var/backups/tokengate, enabling the unit) is deliberately not run
# there, since it would act on this machine's users rather than on the throwaway root (its
# syntax is checked with `sh -n` instead). So the configuration is checked where an unpacked,
# unconfigured conffile waits: /etc/tokengate/tokengate.toml.dpkg-new.
#
# Usage: packaging/build-deb.sh   (CARGO_TARGET_DIR is honoured; two release builds and a
# training run for the profile-guided build, about a quarter of an hour from scratch on two
# cores; PGO=0: one plain release build)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
target=${CARGO_TARGET_DIR:-$PWD/target}
tools=$target/tools
if ! "$tools/bin/cargo-deb" --version 2>/dev/null | grep -qF " $CARGO_DEB_VERSION"; then
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --root "$tools"
fi
export PATH=$tools/bin:$PATH

out=$target/debian
mkdir -p "$out"
# The packaged binary is built with profile-guided optimisation (packaging/pgo.sh), the build
# BENCHMARKS.md measures. PGO=0 packages a plain release build (one build, no training run).
if [ "${PGO:-1}" != 0 ]; then
  profile=$(PROFILE_ONLY=1 packaging/pgo.sh)
  export RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile"
fi
deb=$(cargo deb --output "$out" | tail -n 1)
[ -f "$deb" ] || { echo "packaging: cargo deb did not report a package ($deb)" >&2; exit 1; }

passed=0
failed=0
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "packaging: FAILED: $what" >&2
  fi
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# What the archive holds: `dpkg-deb -c` lines are "MODE OWNER/GROUP SIZE DATE TIME ./PATH".
dpkg-deb -c "$deb" >"$work/contents"
dpkg-deb -I "$deb" >"$work/info"
has_file() { # has_file MODE PATH
  awk -v m="$1" -v p="./$2" '$1 == m && ($2 == "root/root" || $2 == "0/0") && $6 == p { found = 1 } END { exit !found }' "$work/contents"
}
check "the binary, 0755" has_file -rwxr-xr-x usr/bin/tokengate
check "the configuration, 0640" has_file -rw-r----- etc/tokengate/tokengate.toml
check "the systemd unit" grep -qE '^-rw-r--r-- (root/root|0/0) .* \./(usr/)?lib/systemd/system/tokengate\.service$' "$work/contents"
check "the README" has_file -rw-r--r-- usr/share/doc/tokengate/README.md
check "the copyright file" has_file -rw-r--r-- usr/share/doc/tokengate/copyright
check "nothing from the build tree" bash -c '! grep -qE "/(target|tests|src)/" "$1"' _ "$work/contents"

dpkg-deb -e "$deb" "$work/control"
check "the configuration is a conffile" grep -qx /etc/tokengate/tokengate.toml "$work/control/conffiles"
check "Depends names adduser" grep -qE '^ Depends:.*\badduser\b' "$work/info"
check "postinst makes the tokengate user" grep -q 'adduser --system' "$work/control/postinst"
check "postinst is valid sh" sh -n "$work/control/postinst"
check "postinst carries the unit's steps" grep -q 'deb-systemd-helper' "$work/control/postinst"
check "postinst's own steps come before the unit's" bash -c 'grep -n "adduser --system\|deb-systemd-helper" "$1" | head -n1 | grep -q adduser' _ "$work/control/postinst"
check "the unit runs as the tokengate user" bash -c 'dpkg-deb --fsys-tarfile "$1" | tar -xO --wildcards "*/systemd/system/tokengate.service" | grep -qx "User=tokengate"' _ "$deb"

# Install into a throwaway root: dpkg's database there, the files there, nothing on the host.
root=$work/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
dpkg --root="$root" --force-not-root --force-script-chrootless --log=/dev/null --unpack "$deb" >"$work/dpkg.log" 2>&1 \
  || { cat "$work/dpkg.log" >&2; exit 1; }
check "dpkg records the package" bash -c 'dpkg --root="$1" -s tokengate | grep -q "^Status: install ok unpacked"' _ "$root"
check "the binary lands, executable" test -x "$root/usr/bin/tokengate"
# Until `dpkg --configure`, a conffile waits beside its place as NAME.dpkg-new.
conf=$root/etc/tokengate/tokengate.toml.dpkg-new
check "the configuration lands" test -f "$conf"
check "the unit lands" bash -c 'ls "$1"/lib/systemd/system/tokengate.service "$1"/usr/lib/systemd/system/tokengate.service 2>/dev/null | grep -q .' _ "$root"
check "the installed binary runs" "$root/usr/bin/tokengate" --version
check "the installed configuration passes check-config" \
  env -u TOKENGATE_CONFIG "$root/usr/bin/tokengate" --config "$conf" check-config

echo "$deb"
echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
