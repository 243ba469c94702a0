#!/bin/sh
# The mutual-takeover lab, in one command: on a Debian 12 machine, as root,
#
#     examples/lab/run.sh
#
# installs the cluster packages, builds cohost and the demo service, brings
# up a real two-node corosync + Pacemaker cluster on this one machine (each
# node its own network, mount and UTS namespace and cgroup; fencing on),
# configured with examples/pacemaker/two-instances.xml, shows both copies
# of the demo service answering, kills node1, shows node2 taking demo01
# over (with the time it took, part by part) while demo02 keeps answering,
# and removes everything again. Exit 0 when the takeover worked and nothing
# is left (namespaces, mounts, cgroups, addresses).
#
# Nothing outside its namespaces is touched: the subnet 10.213.0.0/24 exists
# only inside them, the nodes' /run, /var/lib/pacemaker, /etc/corosync … are
# private directories under /tmp/chn-cluster, and the only file installed on
# the host is /usr/sbin/fence_chn (removed at the end).
# KEEP=1 keeps the logs in /tmp/chn-cluster; SKIP_INSTALL=1 skips apt-get;
# TOKEN=1000 sets corosync's token (ms; default 3000, corosync's own).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
H=$PROJECT/tests/cluster
ROOT=/tmp/chn-cluster
VIP1=10.213.0.101:9003
VIP2=10.213.0.102:9003

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ask() { "$H/in-node.sh" client timeout 1 "$ROOT/bin/counter" --ask "$1" 2>/dev/null; }

[ "$(id -u)" = 0 ] || { echo "run.sh: run as root (it makes namespaces, cgroups and a cluster)" >&2; exit 1; }
[ -r /etc/debian_version ] || echo "run.sh: not Debian: install corosync, pacemaker, resource-agents, crmsh yourself" >&2

say "1. packages"
if [ "${SKIP_INSTALL:-0}" != 1 ] && command -v apt-get >/dev/null; then
	PKGS="corosync pacemaker pacemaker-cli-utils resource-agents crmsh iproute2 util-linux kmod psmisc procps"
	missing=
	for p in $PKGS; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q " installed$" || missing="$missing $p"
	done
	if [ -n "$missing" ]; then
		echo "installing:$missing"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $missing >/dev/null
	fi
	echo "corosync $(corosync -v | sed -n 's/.*version .\([0-9.]*\).*/\1/p'), pacemaker $(pacemakerd --version | sed -n '1s/Pacemaker //p')"
fi

say "2. build cohost and the demo service"
command -v cargo >/dev/null || {
	echo "run.sh: cargo is missing; install Rust with https://rustup.rs (Debian's cargo is too old), then run this again" >&2
	exit 1
}
(cd "$PROJECT" && cargo build --release --quiet --bin cohost --example counter)
export COHOST_SRC="$PROJECT/target/release/cohost" COUNTER_SRC="$PROJECT/target/release/examples/counter"

cleanup() {
	rc=$?
	say "6. clean up"
	"$H/down.sh" || rc=1
	if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $ROOT"; else rm -rf "$ROOT"; fi
	if [ $rc = 0 ]; then say "lab done: takeover worked, nothing left"; else say "lab FAILED (rc $rc)"; fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "3. a two-node cluster (fencing on) with examples/pacemaker/two-instances.xml"
"$H/down.sh" >/dev/null 2>&1 || true
FENCING=1 "$H/up.sh"
"$H/in-node.sh" 2 crm_mon -1 -r | sed -n '/Node List/,$p'
echo "the client (10.213.0.10) asks both copies of the demo service, same port, two addresses:"
echo "  $VIP1 -> $(ask $VIP1)"
echo "  $VIP2 -> $(ask $VIP2)"

say "4. node1 dies: every process of it SIGKILLed at once (its cgroup), its link down"
before1=$(ask $VIP1 | awk '{ print $NF }')
pids2=$(cat /sys/fs/cgroup/unified/chn-n2/cohost/run-cohost/demo02/cgroup.procs 2>/dev/null ||
	cat /sys/fs/cgroup/chn-n2/cohost/run-cohost/demo02/cgroup.procs)
rm -f "$ROOT/probe.stop"
# demo02 is asked every 0.1 s all along: it must never miss an answer.
# shellcheck disable=SC2016 # expanded by the inner sh
"$H/in-node.sh" client sh -c 'until [ -e "$3" ]; do
	timeout 1 "$1" --ask "$2" >/dev/null 2>&1 && echo ok || echo FAIL; sleep 0.1; done' \
	sh "$ROOT/bin/counter" "$VIP2" "$ROOT/probe.stop" > "$ROOT/demo02.probes" &
probe=$!
CG=/sys/fs/cgroup/unified/chn-n1; [ -e "$CG" ] || CG=/sys/fs/cgroup/chn-n1
T0=$(now)
echo 1 > "$CG/cgroup.kill"
ip -n chn-sw link set chn-n1-port down
echo "killed at $(date -d "@${T0%.*}" +%T).${T0#*.}" | cut -c1-22
until r=$(ask $VIP1) && [ "$(echo "$r" | awk '{ print $(NF-1) }')" = node2 ]; do sleep 0.05; done
T1=$(now)
touch "$ROOT/probe.stop"; wait $probe || true

say "5. node2 took demo01 over: $(secs "$T0" "$T1") s from the kill to the client's first answer"
echo "  $VIP1 -> $r   (the counter continued: $before1 before)"
echo "  $VIP2 -> $(ask $VIP2)"
echo "demo02 during the takeover: $(grep -c ok "$ROOT/demo02.probes") answers, $(grep -c FAIL "$ROOT/demo02.probes" || true) failures"
pids2_after=$(cat "$(dirname "$CG")/chn-n2/cohost/run-cohost/demo02/cgroup.procs")
echo "demo02's pids: $pids2 before, $pids2_after after"
echo "where the time went (node2's own logs):"
t0s=$(date -d "@${T0%.*}" +%T)
{
	grep -hE 'A processor failed|A new membership' "$ROOT/node2/log/corosync/corosync.log"
	grep -hE "Node node1 state is now lost|Operation 'reboot' targeting node1 .*OK|Result of start operation for demo01(-fs|-ip)? on node2" \
		"$ROOT/node2/log/pacemaker/pacemaker.log"
} | awk -v t="$t0s" '$3 >= t' | sort -k3 | cut -c1-160 | sed 's/^/  /'
grep -E "instance=demo01" "$ROOT/node2/run/cohost/daemon.log" | sed 's/^/  cohost: /'
"$H/in-node.sh" 2 crm_mon -1 -r | sed -n '/Node List/,$p'
fails=$(grep -c FAIL "$ROOT/demo02.probes" || true)
[ "$(echo "$r" | awk '{ print $NF }')" -gt "$before1" ] || { echo "the counter did not continue" >&2; exit 1; }
[ "$fails" = 0 ] || { echo "demo02 missed $fails probes" >&2; exit 1; }
[ "$pids2" = "$pids2_after" ] || { echo "demo02's processes changed" >&2; exit 1; }
