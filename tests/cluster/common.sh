# shellcheck shell=sh disable=SC2034 # the variables are used by the scripts that source this
# Settings and helpers of the cluster harness (sourced by up.sh, node-up.sh,
# in-node.sh, down.sh). Adapted from the project's verified recipe
# (shared/peers/pacemaker-cluster): every node is a network namespace
# chn-nN, a mount + UTS namespace held by a "holder" process, and a cgroup
# v2 directory chn-nN that every process of the node is born in, so "the
# node dies" is one write to its cgroup.kill.
HERE=$(cd "$(dirname "$0")" && pwd)
PROJECT=${PROJECT:-$(cd "$HERE/../.." && pwd)}
ROOT=${CHN_ROOT:-/tmp/chn-cluster}     # all state of the cluster lives here
P=chn                                  # prefix of namespaces, links, cgroups
NET=10.213.0                           # private subnet, exists only in our netns
NODES=${NODES:-2}                      # 2 (two_node: 1) or 3 (real quorum)
INSTANCES=${INSTANCES:-2}              # demo01..demoNN (examples/pacemaker/generate.sh)
PORT=9003
CLIENT_IP=$NET.10
TOKEN=${TOKEN:-3000}                   # corosync totem token (ms); corosync 3's default
FENCING=${FENCING:-0}                  # 1: stonith-enabled=true with fence_chn
CIB_FORMAT=${CIB_FORMAT:-xml}          # which shipped form to load: xml (cibadmin) or crm (crmsh)
HANG=${HANG:-0}                        # 1: demo01's SAN directory is a hangfs mount on node1
CGROOT=${CGROOT:-/sys/fs/cgroup/unified} # the cgroup2 mount (hybrid layout here)
[ -e "$CGROOT/cgroup.procs" ] || CGROOT=/sys/fs/cgroup
STATE=$ROOT/state                      # pids and what up.sh created
SHARED=$ROOT/shared                    # the "SAN", mounted at /srv/san in every node
COHOST_SRC=${COHOST_SRC:-$PROJECT/target/debug/cohost}
COUNTER_SRC=${COUNTER_SRC:-$PROJECT/target/debug/examples/counter}
EXAMPLES=$PROJECT/examples/pacemaker
FENCE_AGENT=/usr/sbin/fence_chn        # pacemaker-fenced looks for fence_* only in /usr/sbin
PYTHON=/usr/bin/python3                # Debian's, which has python3-fusepy

export TZ=UTC                          # every log in one time zone (the tests compare them)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
log() { echo "[$(date +%T.%3N)] $*"; }
die() { echo "ERROR: $*" >&2; exit 1; }

node_name() { echo "node$1"; }
node_dir() { echo "$ROOT/node$1"; }
node_ns() { echo "$P-n$1"; }
node_cg() { echo "$CGROOT/$P-n$1"; }
holder_pid() { cat "$STATE/node$1.holder" 2>/dev/null; }

# in_node N CMD...: CMD in node N: its cgroup, netns, mount ns, UTS ns.
# The sh writes itself into the node's cgroup, then nsenter execs CMD in
# place (no fork without --pid).
in_node() {
	_n=$1; shift
	_h=$(holder_pid "$_n")
	if [ -z "$_h" ] || [ ! -d "/proc/$_h" ]; then echo "node$_n is not running (no holder)" >&2; return 1; fi
	sh -c 'h=$1 cg=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec nsenter -t "$h" -m -u -n -- "$@"' \
		sh "$_h" "$(node_cg "$_n")" "$@"
}

# in_node_bg N PIDFILE OUTFILE CMD...: in_node in the background; PIDFILE
# gets CMD's pid.
in_node_bg() {
	_n=$1 _pf=$2 _of=$3; shift 3
	_h=$(holder_pid "$_n")
	if [ -z "$_h" ] || [ ! -d "/proc/$_h" ]; then echo "node$_n is not running (no holder)" >&2; return 1; fi
	sh -c 'h=$1 cg=$2 pf=$3; shift 3; echo $$ > "$pf"; echo $$ > "$cg/cgroup.procs" && exec nsenter -t "$h" -m -u -n -- "$@"' \
		sh "$_h" "$(node_cg "$_n")" "$_pf" "$@" > "$_of" 2>&1 < /dev/null &
}

# plug NS ADDR: a namespace with eth0 at ADDR/24 on the switch's bridge.
plug() {
	ip netns add "$1"
	grep -qx "netns $1" "$STATE/created" || echo "netns $1" >> "$STATE/created"
	ip link add "$1-eth0" type veth peer name "$1-port"
	ip link set "$1-eth0" netns "$1"
	ip link set "$1-port" netns "$P-sw"
	ip -n "$1" link set "$1-eth0" name eth0
	ip -n "$P-sw" link set "$1-port" master br0 up
	ip -n "$1" link set lo up
	ip -n "$1" link set eth0 up
	ip -n "$1" addr add "$2/24" dev eth0
}

# run_dirs N: node N's /run, empty as after a boot (on a real node /run is
# a tmpfs: Pacemaker's sockets, IPaddr2's pid files, cohost's runtime dir
# all start from nothing).
run_dirs() {
	_d=$(node_dir "$1")
	rm -rf "$_d/run"
	mkdir -p "$_d/run/crm" "$_d/run/resource-agents" "$_d/run/lock"
	ln -s /dev/shm "$_d/run/shm"
	chmod 1755 "$_d/run/resource-agents"; chmod 1777 "$_d/run/lock"
	chown hacluster:haclient "$_d/run/crm"; chmod 750 "$_d/run/crm"
}

# start_node N: the node's namespaces (node-init.sh), corosync, pacemakerd.
start_node() {
	_n=$1 _d=$(node_dir "$1")
	[ -d "$(node_cg "$_n")" ] || mkdir "$(node_cg "$_n")"
	grep -qx "cgroup $(node_cg "$_n")" "$STATE/created" || echo "cgroup $(node_cg "$_n")" >> "$STATE/created"
	rm -f "$_d/ready"
	# shellcheck disable=SC2016
	setsid sh -c 'echo $$ > "$7"; echo $$ > "$1/cgroup.procs" && exec nsenter --net=/run/netns/"$2" -- \
		unshare --mount --uts --propagation private -- "$3/node-init.sh" "$4" "$5" "$6"' \
		sh "$(node_cg "$_n")" "$(node_ns "$_n")" "$HERE" "$(node_name "$_n")" "$_d" "$SHARED" "$STATE/node$_n.holder" \
		> "$_d/init.out" 2>&1 < /dev/null &
	_i=0
	until [ -e "$_d/ready" ]; do
		_i=$((_i + 1)); [ $_i -le 100 ] || die "node$_n namespace setup failed: $(cat "$_d/init.out")"
		sleep 0.05
	done
	in_node_bg "$_n" "$STATE/node$_n.corosync" "$_d/corosync.out" setsid corosync -f
	in_node_bg "$_n" "$STATE/node$_n.pacemakerd" "$_d/pacemakerd.out" setsid pacemakerd
}

# wait_online NODES...: until crm_mon on each of them shows all of them
# online, one DC, quorum (polled: the condition, with a deadline).
wait_online() {
	_want=$(for _n in "$@"; do printf ' node%s' "$_n"; done)
	for _n in "$@"; do
		_i=0
		until _out=$(in_node "$_n" crm_mon -1 2>/dev/null) &&
			echo "$_out" | grep -q "Current DC: node[0-9] .*partition with quorum" &&
			echo "$_out" | grep -q "Online: \[$_want \]"; do
			_i=$((_i + 1)); [ $_i -le 1200 ] || die "node$_n: no DC or not all of$_want online; see $(node_dir "$_n")/log/pacemaker/pacemaker.log"
			sleep 0.1
		done
	done
}
