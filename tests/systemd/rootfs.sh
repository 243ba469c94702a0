#!/bin/sh
# Prints the path of a Debian 12 rootfs with systemd for the systemd tests,
# making it first if needed (debootstrap minbase, about 40 s and 255 MB).
# It is cached under /var/cache/cohost-test, keyed by everything that goes
# into it (this script, suite, package list, mirror), so a rerun on the same
# machine reuses it and a change of any input makes a new one. Concurrent
# callers wait on a lock; a half-made tree is never used (made in .partial,
# then renamed).
#
#   tests/systemd/rootfs.sh        -> /var/cache/cohost-test/rootfs-<key>
set -eu
SUITE=bookworm
INCLUDE=systemd,dbus,procps
# The mirror apt already uses (deb822 sources, else sources.list).
MIRROR=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2; exit}')
[ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
command -v debootstrap >/dev/null || {
	echo "debootstrap is missing: apt-get install debootstrap (tests/setup-host.sh does)" >&2
	exit 2
}
CACHE=${COHOST_TEST_CACHE:-/var/cache/cohost-test}
KEY=$( (cat "$0"; echo "$SUITE $INCLUDE $MIRROR") | sha256sum | cut -c1-12)
ROOT=$CACHE/rootfs-$KEY
mkdir -p "$CACHE"
exec 9>"$CACHE/rootfs.lock"
flock 9
if [ ! -x "$ROOT/lib/systemd/systemd" ]; then
	rm -rf "$ROOT.partial"
	echo "rootfs.sh: debootstrap $SUITE ($INCLUDE) into $ROOT (first run on this machine, ~40 s)" >&2
	if ! debootstrap --variant=minbase --include=$INCLUDE "$SUITE" "$ROOT.partial" "$MIRROR" \
		>"$CACHE/debootstrap-$KEY.log" 2>&1; then
		echo "rootfs.sh: debootstrap failed; see $CACHE/debootstrap-$KEY.log:" >&2
		tail -5 "$CACHE/debootstrap-$KEY.log" >&2
		exit 1
	fi
	R=$ROOT.partial
	# A quiet, deterministic boot: no timers running apt/fstrim/e2scrub, no getty.
	for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
		fstrim.timer e2scrub_reap.service console-getty.service getty@tty1.service \
		systemd-timesyncd.service; do
		ln -sfn /dev/null "$R/etc/systemd/system/$u"
	done
	echo cohost-test >"$R/etc/hostname"
	# Other rootfs versions of this cache are stale now.
	for old in "$CACHE"/rootfs-*; do
		[ "$old" = "$ROOT.partial" ] || [ ! -d "$old" ] || rm -rf "$old"
	done
	mv "$ROOT.partial" "$ROOT"
fi
echo "$ROOT"
