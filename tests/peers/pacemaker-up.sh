#!/bin/sh
# Vendored from the project's verified peer recipes (shared/peers/), so that
# CI on a clean clone has it.
# Start a real single-node Pacemaker cluster (corosync + pacemakerd) by hand,
# without systemd, on the loopback address.  Debian 12 packages:
#   apt-get install -y corosync pacemaker pacemaker-cli-utils resource-agents
#
# Usage: pacemaker-up.sh [WORKDIR]     (default /tmp/pcmk-peers)
# Stop it with pacemaker-down.sh [WORKDIR].
#
# WARNING: wipes /var/lib/pacemaker/cib (the CIB location is compiled into
# pacemaker-based), so run it only on a throw-away machine/container.
set -eu

DIR=${1:-/tmp/pcmk-peers}
NODE=${PCMK_TEST_NODE:-node1}
mkdir -p "$DIR"
rm -f "$DIR"/*.log "$DIR"/*.out

for b in corosync pacemakerd crm_mon cibadmin; do
	command -v "$b" >/dev/null 2>&1 || {
		echo "missing $b: apt-get install -y corosync pacemaker pacemaker-cli-utils" >&2
		exit 1
	}
done
if [ -s "$DIR/pacemakerd.pid" ] && kill -0 "$(cat "$DIR/pacemakerd.pid")" 2>/dev/null; then
	echo "already running (pid $(cat "$DIR/pacemakerd.pid"))" >&2
	exit 1
fi

cat > "$DIR/corosync.conf" <<EOF
totem {
	version: 2
	cluster_name: peers
	transport: knet
	crypto_cipher: none
	crypto_hash: none
}
logging {
	to_stderr: no
	to_logfile: yes
	logfile: $DIR/corosync.log
	to_syslog: no
	timestamp: on
}
quorum {
	provider: corosync_votequorum
}
nodelist {
	node {
		name: $NODE
		nodeid: 1
		ring0_addr: 127.0.0.1
	}
}
EOF

# Fresh CIB, pre-seeded so that resources may run without fencing and the
# DC is elected quickly (the default dc-deadtime is 20s).  No .sig file:
# pacemaker-based accepts a cib.xml without one.
CIBDIR=/var/lib/pacemaker/cib
rm -f "$CIBDIR"/cib*
# Start from `cibadmin --empty` (right crm_feature_set/schema for this build)
# and set properties offline with CIB_file.
cibadmin --empty > "$CIBDIR/cib.xml"
for kv in stonith-enabled=false no-quorum-policy=ignore dc-deadtime=2s cluster-recheck-interval=1min; do
	CIB_file="$CIBDIR/cib.xml" crm_attribute --type crm_config --name "${kv%%=*}" --update "${kv#*=}" >/dev/null
done
rm -f "$CIBDIR"/cib.xml.sig "$CIBDIR"/cib-*
chown hacluster:haclient "$CIBDIR/cib.xml"
chmod 600 "$CIBDIR/cib.xml"

# corosync: -f keeps it in the foreground; setsid detaches it from our tty.
setsid corosync -f -c "$DIR/corosync.conf" > "$DIR/corosync.out" 2>&1 < /dev/null &
echo $! > "$DIR/corosync.pid"
i=0
until corosync-quorumtool -s 2>/dev/null | grep -q 'Quorate:[[:space:]]*Yes'; do
	i=$((i + 1)); [ $i -le 30 ] || { echo "corosync did not become quorate; see $DIR/corosync.*" >&2; exit 1; }
	sleep 1
done

# pacemakerd stays in the foreground (2.1 has no daemon mode); it forks
# pacemaker-based/-fenced/-execd/-attrd/-schedulerd/-controld.
PCMK_logfile="$DIR/pacemaker.log" setsid pacemakerd > "$DIR/pacemakerd.out" 2>&1 < /dev/null &
echo $! > "$DIR/pacemakerd.pid"
i=0
until crm_mon -1 2>/dev/null | grep -q "Current DC: $NODE"; do
	i=$((i + 1)); [ $i -le 60 ] || { echo "no DC elected; see $DIR/pacemaker.log" >&2; exit 1; }
	sleep 1
done
echo "pacemaker up after ~${i}s: corosync pid $(cat "$DIR/corosync.pid"), pacemakerd pid $(cat "$DIR/pacemakerd.pid"), logs in $DIR"
