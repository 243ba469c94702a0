#!/bin/sh
# A real multi-node Pacemaker cluster on one Linux host, configured with the
# shipped examples/pacemaker/ files, verbatim: every node is a network +
# mount + UTS namespace and a cgroup with its own corosync, pacemakerd and
# cohost; a client namespace and a switch namespace (bridge) join them;
# $ROOT/shared is the "SAN", at /srv/san on every node.
#
#   NODES=2|3 INSTANCES=N TOKEN=3000 FENCING=0|1 CIB_FORMAT=xml|crm HANG=0|1 up.sh
#
# Root only; down.sh undoes everything, also after a half-finished up.sh.
# Prints "t_online=S" and "t_up=S" (seconds since start) for the callers.
set -eu
. "$(dirname "$0")/common.sh"
T0=$(now)

[ "$(id -u)" = 0 ] || die "run as root"
for b in corosync:corosync pacemakerd:pacemaker crm_mon:pacemaker-cli-utils cibadmin:pacemaker-cli-utils \
	nsenter:util-linux unshare:util-linux ip:iproute2; do
	command -v "${b%%:*}" >/dev/null ||
		die "${b%%:*} is missing: apt-get install ${b#*:} (tests/setup-host.sh installs every package the tests need)"
done
[ -e /usr/lib/ocf/resource.d/heartbeat/IPaddr2 ] || die "IPaddr2 is missing: apt-get install resource-agents"
[ "$CIB_FORMAT" != crm ] || command -v crm >/dev/null || die "crm is missing: apt-get install crmsh"
[ "$HANG" = 0 ] || "$PYTHON" -c 'import fusepy' 2>/dev/null || die "fusepy is missing: apt-get install python3-fusepy fuse3"
[ -x "$COHOST_SRC" ] || die "no cohost binary at $COHOST_SRC (cargo build)"
[ -x "$COUNTER_SRC" ] || die "no counter binary at $COUNTER_SRC (cargo build --examples)"
[ -w "$CGROOT/cgroup.procs" ] || die "$CGROOT is not a writable cgroup2 mount"
[ ! -e "$STATE/created" ] || die "already up (or not cleaned): run down.sh first"
case $NODES in 2 | 3) ;; *) die "NODES must be 2 or 3" ;; esac
if [ "$INSTANCES" -lt 2 ] || [ "$INSTANCES" -gt "$NODES" ]; then die "INSTANCES must be 2..NODES"; fi

# ---------------------------------------------------------------- files
rm -rf "$STATE" "$ROOT"/node[0-9] "$SHARED"
mkdir -p "$STATE" "$ROOT/bin"
: > "$STATE/created"                  # what down.sh must remove, one item a line
echo "$NODES" > "$STATE/nodes"
install -m 755 "$COHOST_SRC" "$ROOT/bin/cohost"
install -m 755 "$COUNTER_SRC" "$ROOT/bin/counter"
# The shipped configuration: the committed two-instance files, or the
# generator's output for more.
if [ "$INSTANCES" = 2 ]; then
	cp "$EXAMPLES/two-instances.xml" "$STATE/config.xml"
	cp "$EXAMPLES/two-instances.crm" "$STATE/config.crm"
	cp "$EXAMPLES/two-instances.toml" "$STATE/demo.toml"
else
	for f in xml crm toml; do "$EXAMPLES/generate.sh" "$INSTANCES" $f > "$STATE/config.$f"; done
	mv "$STATE/config.toml" "$STATE/demo.toml"
fi
# The shared disk: instances file, the service's binary, each instance's data.
mkdir -p "$SHARED/conf" "$SHARED/bin"
install -m 755 "$COUNTER_SRC" "$SHARED/bin/counter"
cp "$STATE/demo.toml" "$SHARED/conf/demo.toml"
i=1
while [ $i -le "$INSTANCES" ]; do
	d=$(printf 'demo%02d' $i)
	mkdir -p "$SHARED/$d/data" "$SHARED/$d/log"
	i=$((i + 1))
done
"$ROOT/bin/cohost" --config "$SHARED/conf" validate >/dev/null || die "instances file invalid"
install -m 755 "$HERE/fence_chn" "$FENCE_AGENT"
echo "file $FENCE_AGENT" >> "$STATE/created"

# ---------------------------------------------------------------- network
ip netns add "$P-sw"; echo "netns $P-sw" >> "$STATE/created"
ip -n "$P-sw" link add br0 type bridge
ip -n "$P-sw" link set br0 up
ip -n "$P-sw" link set lo up
n=1
while [ $n -le "$NODES" ]; do plug "$(node_ns $n)" "$NET.$n"; n=$((n + 1)); done
plug "$P-cl" "$CLIENT_IP"
mkdir "$CGROOT/$P-cl"; echo "cgroup $CGROOT/$P-cl" >> "$STATE/created"

# ---------------------------------------------------------------- nodes
nodelist=
n=1
while [ $n -le "$NODES" ]; do
	nodelist="$nodelist
	node {
		name: $(node_name $n)
		nodeid: $n
		ring0_addr: $NET.$n
	}"
	n=$((n + 1))
done
if [ "$NODES" = 2 ]; then quorum_extra="two_node: 1"; else quorum_extra=""; fi
# Seed CIB, identical on every node: the cluster properties the harness
# owns (fencing on or off, a quick DC election, a recheck that expires
# failure-timeout). The resources come from examples/pacemaker below.
CIBSEED=$STATE/cib-seed.xml
cibadmin --empty > "$CIBSEED"
if [ "$FENCING" = 1 ]; then stonith=true; else stonith=false; fi
for kv in stonith-enabled=$stonith dc-deadtime=2s cluster-recheck-interval=1min cluster-name=$P; do
	CIB_file=$CIBSEED crm_attribute --type crm_config --name "${kv%%=*}" --update "${kv#*=}" >/dev/null
done

n=1
while [ $n -le "$NODES" ]; do
	D=$(node_dir $n)
	run_dirs $n
	mkdir -p "$D/lib/pacemaker/cib" "$D/lib/pacemaker/pengine" "$D/lib/pacemaker/blackbox" \
		"$D/lib/pacemaker/cores" "$D/lib/corosync" "$D/log/pacemaker/bundles" "$D/log/corosync" \
		"$D/log/crmsh" "$D/etc/corosync" "$D/sbin" "$D/srv/san" "$D/ocf/cohost"
	chown -R hacluster:haclient "$D/lib/pacemaker" "$D/log/pacemaker"
	chmod 750 "$D/lib/pacemaker"/*; chmod 770 "$D/log/pacemaker"
	install -m 755 "$ROOT/bin/cohost" "$D/sbin/cohost"
	# The agent as packaged: a symlink to the node's cohost (the path is
	# resolved inside the node, where /usr/local/sbin is its own sbin).
	ln -s /usr/local/sbin/cohost "$D/ocf/cohost/instance"
	install -m 600 -o hacluster -g haclient "$CIBSEED" "$D/lib/pacemaker/cib/cib.xml"
	cat > "$D/etc/corosync/corosync.conf" <<CONF
totem {
	version: 2
	cluster_name: $P
	transport: knet
	crypto_cipher: none
	crypto_hash: none
	token: $TOKEN
}
logging {
	to_stderr: no
	to_logfile: yes
	logfile: /var/log/corosync/corosync.log
	to_syslog: no
	timestamp: hires
}
quorum {
	provider: corosync_votequorum
	$quorum_extra
}
nodelist {$nodelist
}
CONF
	n=$((n + 1))
done
n=1
while [ $n -le "$NODES" ]; do start_node $n; n=$((n + 1)); done
all=$(seq 1 "$NODES" | tr '\n' ' ')
# shellcheck disable=SC2086
wait_online $all
T_ONLINE=$(since "$T0")
echo "t_online=$T_ONLINE"
log "all $NODES nodes online: $(in_node 1 crm_mon -1 | grep 'Current DC')"

# ---------------------------------------------------------------- storage fault
if [ "$HANG" = 1 ]; then
	# In node1's view only, demo01's SAN directory goes through hangfs,
	# which blocks every operation on demand (tests/tools/hangfs.py).
	# FUSE wants an empty mount point: hangfs goes on node1's own
	# /srv/hang-demo01, which is then bound over /srv/san/demo01.
	mkdir -p "$(node_dir 1)/srv/hang-demo01"
	in_node_bg 1 "$STATE/hangfs.pid" "$STATE/hangfs.out" \
		"$PYTHON" "$PROJECT/tests/tools/hangfs.py" "$SHARED/demo01" /srv/hang-demo01 "$STATE/hang.sock"
	i=0
	until grep -q ready "$STATE/hangfs.out" 2>/dev/null; do
		i=$((i + 1)); [ $i -le 200 ] || die "hangfs did not mount: $(cat "$STATE/hangfs.out")"
		sleep 0.05
	done
	in_node 1 mount --bind /srv/hang-demo01 /srv/san/demo01
	in_node 1 ls /srv/san/demo01/data >/dev/null || die "node1 does not see demo01's data through hangfs"
	log "node1: /srv/san/demo01 is a hangfs mount (control $STATE/hang.sock)"
fi

# ---------------------------------------------------------------- resources
T1=$(now)
if [ "$FENCING" = 1 ]; then
	hosts=$(seq 1 "$NODES" | sed 's/^/node/' | tr '\n' ' ' | sed 's/ $//')
	# node2 survives a two-node fence race: fencing node2 waits 5 s.
	in_node 1 cibadmin --create --scope resources --xml-text "<primitive id=\"fence-chn\" class=\"stonith\" type=\"fence_chn\">
  <instance_attributes id=\"fence-chn-ia\">
    <nvpair id=\"fence-chn-hosts\" name=\"pcmk_host_list\" value=\"$hosts\"/>
    <nvpair id=\"fence-chn-check\" name=\"pcmk_host_check\" value=\"static-list\"/>
    <nvpair id=\"fence-chn-delay\" name=\"pcmk_delay_base\" value=\"node2:5s\"/>
  </instance_attributes>
  <operations><op id=\"fence-chn-mon\" name=\"monitor\" interval=\"60s\"/></operations>
</primitive>"
fi
if [ "$CIB_FORMAT" = crm ]; then
	in_node 1 crm configure load update "$STATE/config.crm"
else
	in_node 1 cibadmin --modify --allow-create --scope configuration --xml-file "$STATE/config.xml"
fi
in_node 1 crm_resource --wait --timeout 120s || die "resources did not settle; crm_mon -1 says: $(in_node 1 crm_mon -1)"
# --wait returns once nothing is pending, also when nothing could start.
started=$(in_node 1 crm_mon -1 -r | grep "(ocf:" | grep -c "	 Started node" || true)
[ "$started" = $((3 * INSTANCES)) ] || die "only $started of $((3 * INSTANCES)) resources started; crm_mon -1 says: $(in_node 1 crm_mon -1 -r)"
i=1
while [ $i -le "$INSTANCES" ]; do
	j=0
	until "$HERE/in-node.sh" client "$ROOT/bin/counter" --ask "$NET.$((100 + i)):$PORT" >/dev/null 2>&1; do
		j=$((j + 1)); [ $j -le 100 ] || die "the client does not reach $NET.$((100 + i)):$PORT"
		sleep 0.1
	done
	i=$((i + 1))
done
log "resources started ($(since "$T1")s after loading the $CIB_FORMAT configuration)"
echo "t_up=$(since "$T0")"
