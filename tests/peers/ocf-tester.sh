#!/bin/sh
# Runs ClusterLabs' ocf-tester (Debian: resource-agents + libxml2-utils)
# against both shipped OCF agents, for two instances of a throw-away
# instances file: demo01 (the counter demo service) and pm01 (a service of
# three processes). The agents: the cohost binary itself, run through a
# symlink RESOURCE.D/cohost/instance (the packaged way: argv[0] under
# resource.d/ makes it answer as `cohost ocf ACTION`), and the sh agent
# examples/ocf/cohost (which execs `cohost ocf ACTION`). 4 runs, each must
# print "passed all tests".
#
#   tests/peers/ocf-tester.sh COHOST_BIN EXAMPLES_BIN_DIR [--lying-monitor]
#
# --lying-monitor runs it against a copy of the sh agent whose monitor
# always answers 0, to prove that ocf-tester catches a broken agent (it
# must fail).
# --installed runs the installed agent (/usr/lib/ocf/resource.d/cohost/
# instance, from the .deb: a symlink to /usr/sbin/cohost) and the sh agent
# the package keeps as an example (/usr/share/doc/cohost/examples/
# ocf-agent.sh) with the cohost it finds itself (COHOST_BIN is then the
# empty string: pass "" as COHOST_BIN).
# Everything lives in a temp dir readable by `nobody` (ocf-tester runs
# meta-data as nobody); nothing outside it is touched; all is removed.
set -eu
BIN=$1
EX=$2
MODE=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
command -v ocf-tester >/dev/null || { echo "ocf-tester is missing: apt-get install resource-agents libxml2-utils" >&2; exit 2; }
command -v xmllint >/dev/null || { echo "xmllint is missing: apt-get install libxml2-utils" >&2; exit 2; }

W=$(mktemp -d /tmp/cohost-ocft.XXXXXX)
chmod 755 "$W"
# shellcheck disable=SC2317 # called by the trap
cleanup() {
	"$W/cohost" --runtime-dir "$W/run" shutdown >/dev/null 2>&1 || true
	rm -rf "$W"
}
trap cleanup EXIT INT TERM
if [ -n "$BIN" ]; then
	install -m 755 "$BIN" "$W/cohost"
else
	# The installed agent finds the installed binary by itself.
	ln -s "$(command -v cohost)" "$W/cohost"
fi
install -m 755 "$EX/counter" "$EX/testsvc" "$W/"
# Each agent is a path ocf-tester runs as it is (argv[0] is what the
# binary looks at, so the symlink is run under its own name).
if [ "$MODE" = --installed ]; then
	LINK=/usr/lib/ocf/resource.d/cohost/instance
	[ -L "$LINK" ] || { echo "$LINK is not installed as a symlink (dpkg -i the .deb first)" >&2; exit 2; }
	SHIPPED=/usr/share/doc/cohost/examples/ocf-agent.sh
	[ -f "$SHIPPED" ] || { echo "$SHIPPED is not installed" >&2; exit 2; }
	install -m 755 "$SHIPPED" "$W/agent.sh"
	AGENTS="$LINK $W/agent.sh"
elif [ "$MODE" = --lying-monitor ]; then
	# The sh agent, except that monitor always says "running".
	{
		echo '#!/bin/sh'
		# shellcheck disable=SC2016 # the agent, not this script, expands it
		echo '[ "${1:-}" = monitor ] && exit 0'
		sed 1d "$ROOT/examples/ocf/cohost"
	} > "$W/agent.sh"
	chmod 755 "$W/agent.sh"
	AGENTS="$W/agent.sh"
else
	mkdir -p "$W/resource.d/cohost"
	ln -s "$W/cohost" "$W/resource.d/cohost/instance"
	install -m 755 "$ROOT/examples/ocf/cohost" "$W/agent.sh"
	AGENTS="$W/resource.d/cohost/instance $W/agent.sh"
fi
mkdir -p "$W/instances.d" "$W/demo01/data" "$W/demo01/log" "$W/pm01"
cat > "$W/instances.d/ocf.toml" <<TOML
[service.counter]
command = ["$W/counter"]
ready   = { tcp = "\${address}:\${port}", timeout = "15s" }

[service.multi]
[[service.multi.process]]
name    = "worker"
command = ["$W/testsvc", "sleep"]
count   = 3

[instance.demo01]
service = "counter"
address = "127.0.77.2"
port    = 9003
paths   = { data = "$W/demo01/data", log = "$W/demo01/log" }

[instance.pm01]
service = "multi"
paths   = { data = "$W/pm01" }
TOML
if [ -n "$BIN" ]; then
	export COHOST_BIN="$W/cohost"
fi
rc=0
for agent in $AGENTS; do
	for id in demo01 pm01; do
		echo "== ocf-tester: instance $id, agent $agent"
		ocf-tester -n "$id" -o instance="$id" -o config="$W/instances.d" -o runtime_dir="$W/run" "$agent" || rc=1
	done
done
exit $rc
