#!/bin/sh
# Installs every Debian package the tests need, as root on Debian 12.
# The README's test command is `tests/setup-host.sh && cargo test`; CI
# (.ci/run) runs exactly that. Packages already present are not fetched
# again, so a second run costs a dpkg query and nothing else.
set -eu

# Each line: package(s) and what needs them.
PACKAGES="
iproute2 iputils-ping iputils-arping util-linux passwd strace
resource-agents libxml2-utils kmod psmisc
pacemaker pacemaker-cli-utils corosync crmsh fence-agents
insserv shellcheck
systemd
systemd-container debootstrap
lintian man-db zsh fish
fuse3 python3-fusepy
tmux
prometheus
"
# iproute2, iputils-*: network namespaces, veth, floating addresses, ARP
# util-linux (nsenter, setpriv), passwd (useradd): isolation and trust tests
# resource-agents, libxml2-utils: ocf-tester, IPaddr2; kmod (modprobe), psmisc
#   (fuser): the Filesystem agent refuses to run without them
# pacemaker*, corosync, crmsh, fence-agents: single- and multi-node clusters
# insserv, shellcheck: the LSB init script
# systemd: systemd-analyze verify of the shipped units
# systemd-container, debootstrap: a real systemd as PID 1 in systemd-nspawn
#   (tests/section_systemd.rs; the first run debootstraps a Debian 12 rootfs
#   into /var/cache/cohost-test, ~40 s; systemd-container may upgrade the
#   host's systemd packages within Debian 12 and adds "mymachines" to
#   /etc/nsswitch.conf)
# lintian, man-db: checks of the Debian package (tests/check-installed.sh)
# zsh, fish: the shipped completions parse (and fish's offer instance IDs)
# fuse3, python3-fusepy: a shared file system that hangs on demand
# tmux: `cohost top` driven in a real terminal
# prometheus: promtool check metrics on `cohost metrics`

if [ "$(id -u)" != 0 ]; then
	echo "tests/setup-host.sh: run as root (the tests use cgroups, namespaces and addresses)" >&2
	exit 1
fi
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
	echo "tests/setup-host.sh: needs Debian's dpkg and apt-get; install the packages listed in this file by hand" >&2
	exit 1
fi

missing=""
for p in $PACKAGES; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$st" in
	*" installed") ;;
	*) missing="$missing $p" ;;
	esac
done
if [ -n "$missing" ]; then
	echo "tests/setup-host.sh: installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# The FUSE tests need the device node; a container may lack it.
if [ ! -e /dev/fuse ]; then
	mknod -m 666 /dev/fuse c 10 229 || {
		echo "tests/setup-host.sh: /dev/fuse is missing and cannot be made" >&2
		exit 1
	}
fi
modprobe fuse 2>/dev/null || true
# cargo-deb builds the .deb (the systemd test and CI install it); pinned, so
# a new release cannot change what a test run builds. From crates.io, with
# the toolchain's cargo (~5 min to compile, once per machine).
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
	echo "tests/setup-host.sh: cargo install cargo-deb $CARGO_DEB_VERSION"
	cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi
echo "tests/setup-host.sh: every package the tests need is installed"
