#!/bin/sh
# Installs the .deb on this machine and checks it the way an operator meets
# it; then purges it and checks that nothing of it is left. For CI (.ci/run),
# as root; every step's output goes to the log.
#
#   tests/check-installed.sh DEB EXAMPLES_BIN_DIR
#
# EXAMPLES_BIN_DIR holds the demo `counter` (target/debug/examples). The
# package must not be installed before; on any failure it is purged too.
set -eu
DEB=$(realpath "$1")
EX=$(cd "$2" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
for t in dpkg ocf-tester crm_resource man lintian; do
	command -v $t >/dev/null || { echo "$t is missing: tests/setup-host.sh installs it" >&2; exit 2; }
done
if dpkg-query -W -f='${Status}' cohost 2>/dev/null | grep -q installed; then
	echo "check-installed.sh: a cohost package is installed already; dpkg --purge cohost first" >&2
	exit 1
fi
# The commands an operator types, with the PATH a root shell has.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
W=$(mktemp -d /tmp/cohost-debcheck.XXXXXX)
chmod 755 "$W"
# shellcheck disable=SC2317 # called by the trap
cleanup() {
	cohost --config "$W/instances.d" --runtime-dir "$W/run" shutdown >/dev/null 2>&1 || true
	if dpkg-query -W -f='${Status}' cohost 2>/dev/null | grep -q installed; then
		dpkg --purge cohost >/dev/null 2>&1 || true
	fi
	rm -rf "$W"
}
trap cleanup EXIT INT TERM
step() { echo "== $*"; }

step "lintian $(basename "$DEB") (overrides shown with O:, each explained by the N: lines above it)"
lintian -I --show-overrides "$DEB"

step "dpkg -i $(basename "$DEB") ($(du -k "$DEB" | cut -f1) KiB)"
dpkg -i "$DEB"
dpkg -L cohost | sort >"$W/files"
sed 's/^/  /' "$W/files"
[ "$(command -v cohost)" = /usr/sbin/cohost ] || { echo "cohost on PATH is $(command -v cohost), not /usr/sbin/cohost" >&2; exit 1; }
step "the installed binary is static (no dynamic loader before main: build.rs)"
case "$(ldd /usr/sbin/cohost 2>&1)" in
*"statically linked"* | *"not a dynamic executable"*) ;;
*)
	echo "/usr/sbin/cohost is linked dynamically: $(ldd /usr/sbin/cohost 2>&1)" >&2
	exit 1
	;;
esac
cohost --version
[ "$(stat -c %a:%U /run/cohost)" = 700:root ] || { echo "/run/cohost is not 0700 root (tmpfiles.d)" >&2; exit 1; }
# The shipped reference file is there and loads nothing.
test -f /etc/cohost/instances.d/reference.toml
cohost validate | tee "$W/validate"
grep -q "valid (0 instances" "$W/validate"

step "the installed agent /usr/lib/ocf/resource.d/cohost/instance is the binary"
AGENT=/usr/lib/ocf/resource.d/cohost/instance
if ! [ -L "$AGENT" ] || [ "$(readlink -f "$AGENT")" != /usr/sbin/cohost ]; then
	echo "$AGENT is not a symlink to /usr/sbin/cohost: $(ls -l "$AGENT")" >&2
	exit 1
fi
ls -l "$AGENT"
"$AGENT" meta-data >"$W/md.agent"
cohost ocf meta-data >"$W/md.cli"
cmp "$W/md.agent" "$W/md.cli" || { echo "the agent's meta-data differs from cohost ocf meta-data" >&2; exit 1; }
echo "meta-data: the same as cohost ocf meta-data ($(wc -c <"$W/md.agent") bytes)"

step "ocf-tester against the installed agents (the symlink, and the sh agent from /usr/share/doc/cohost/examples)"
"$ROOT/tests/peers/ocf-tester.sh" "" "$EX" --installed

step "crm_resource --validate against the installed agent"
mkdir -p "$W/instances.d" "$W/d1"
cat >"$W/instances.d/v.toml" <<TOML
[service.counter]
command = ["$EX/counter"]
ready   = { tcp = "\${address}:\${port}", timeout = "15s" }

[instance.v01]
service = "counter"
address = "127.0.78.2"
port    = 9003
paths   = { data = "$W/d1" }
TOML
crm_resource --validate --class ocf --provider cohost --agent instance \
	--option instance=v01 --option config="$W/instances.d" --option runtime_dir="$W/run"
if crm_resource --validate --class ocf --provider cohost --agent instance \
	--option instance=nosuch --option config="$W/instances.d" --option runtime_dir="$W/run"; then
	echo "crm_resource --validate accepted an unknown instance" >&2
	exit 1
fi
echo "(an unknown instance is refused, as it must be)"

step "man pages"
for page in cohost cohost-instances.d; do
	# --warnings: groff reports any markup problem on stderr.
	man --warnings "$page" 2>"$W/man.err" >"$W/man.out"
	[ ! -s "$W/man.err" ] || { cat "$W/man.err" >&2; exit 1; }
	echo "man $page: $(wc -l <"$W/man.out") lines, no warning"
done
MANWIDTH=80 man -l /usr/share/man/man8/cohost.8.gz | head -20
for sub in validate daemon start stop restart kill status monitor list env exec ocf lsb up down reset reload shutdown logs import; do
	MANWIDTH=200 man -l /usr/share/man/man8/cohost.8.gz | grep -q "^   $sub\$" || { echo "cohost(8) lacks the $sub command" >&2; exit 1; }
done
echo "cohost(8) documents every subcommand"
man -l /usr/share/man/man5/cohost-instances.d.5.gz | grep -q "address_mode" || { echo "cohost-instances.d(5) lacks the reference" >&2; exit 1; }

step "shell completion (bash; instance IDs from the instances file)"
# shellcheck disable=SC2016 # expanded by the inner bash
COHOST_CONFIG="$W/instances.d" bash -c '
	. /usr/share/bash-completion/completions/cohost
	complete -p cohost
	COMP_WORDS=(cohost stop ""); COMP_CWORD=2
	_cohost_ids cohost "" stop
	echo "cohost stop <TAB>: ${COMPREPLY[*]}"
	[ "${COMPREPLY[*]}" = v01 ]
'
test -s /usr/share/zsh/vendor-completions/_cohost
test -s /usr/share/fish/vendor_completions.d/cohost.fish

step "upgrade (dpkg -i again) stops nothing"
cohost --config "$W/instances.d" --runtime-dir "$W/run" start v01
before=$(cohost --config "$W/instances.d" --runtime-dir "$W/run" status v01 --json | grep -A1 '"members"' | tail -1)
dpkg -i "$DEB"
after=$(cohost --config "$W/instances.d" --runtime-dir "$W/run" status v01 --json | grep -A1 '"members"' | tail -1)
echo "members before: $before after: $after"
if [ -z "$before" ] || [ "$before" != "$after" ]; then
	echo "the upgrade touched v01" >&2
	exit 1
fi
cohost --config "$W/instances.d" --runtime-dir "$W/run" shutdown

step "dpkg --purge cohost leaves nothing"
dpkg --purge cohost
left=0
while read -r f; do
	[ "$f" != /. ] || continue
	if ! [ -e "$f" ] && ! [ -L "$f" ]; then
		echo "gone: $f"
	elif [ -d "$f" ] && [ -L "$f" ]; then
		echo "kept: $f (the system's symlink)"
	elif [ -d "$f" ] && owner=$(dpkg -S "$f" 2>/dev/null); then
		echo "kept: $f (a directory of ${owner%%[,:]*} and maybe others)"
	else
		echo "LEFT: $f"
		left=1
	fi
done <"$W/files"
for p in /etc/cohost /run/cohost /usr/lib/ocf/resource.d/cohost /usr/share/doc/cohost /var/lib/dpkg/info/cohost.list; do
	if [ -e "$p" ]; then echo "LEFT: $p"; left=1; else echo "gone: $p"; fi
done
if dpkg-query -W -f='${Status}' cohost 2>/dev/null | grep -q installed; then echo "LEFT: the package"; left=1; fi
if getent passwd cohost >/dev/null || getent group cohost >/dev/null; then echo "LEFT: a cohost user or group"; left=1; fi
echo "$(wc -l <"$W/files") paths of the package checked"
[ "$left" = 0 ]
echo "== the installed package passed every check"
