#!/bin/sh
# Vendored from the project's verified peer recipes (shared/peers/), so that
# CI on a clean clone has it.
# Stop the cluster started by pacemaker-up.sh: pacemakerd first (on SIGTERM it
# stops every resource, then its children), then corosync.  Only the PIDs that
# pacemaker-up.sh recorded are signalled.
# Usage: pacemaker-down.sh [WORKDIR]     (default /tmp/pcmk-peers)
DIR=${1:-/tmp/pcmk-peers}

stop_pid() { # name pidfile timeout
	[ -s "$2" ] || return 0
	p=$(cat "$2")
	if kill -0 "$p" 2>/dev/null; then
		kill -TERM "$p"
		i=0
		while kill -0 "$p" 2>/dev/null; do
			i=$((i + 1))
			if [ $i -gt "$3" ]; then
				echo "$1 ($p) ignored SIGTERM for $3s, sending SIGKILL" >&2
				kill -KILL "$p"; break
			fi
			sleep 1
		done
		echo "$1 ($p) stopped"
	fi
	rm -f "$2"
}

stop_pid pacemakerd "$DIR/pacemakerd.pid" 120
stop_pid corosync "$DIR/corosync.pid" 30
