#!/bin/bash
# A real systemd (Debian 12's systemd 252) as PID 1 in a systemd-nspawn
# container, on a host whose PID 1 need not be systemd. After the verified
# recipe in shared/peers/systemd-pid1 (its README explains each choice).
#
#   tests/systemd/nspawn.sh up NAME hybrid|unified PAYLOAD_DIR
#   tests/systemd/nspawn.sh in NAME CMD...     # CMD inside, clean environment
#   tests/systemd/nspawn.sh down NAME          # poweroff; remove what up made
#
# The rootfs (tests/systemd/rootfs.sh, cached) is shared read-only:
# --volatile=overlay puts a tmpfs over it, so containers run side by side
# and leave it untouched. PAYLOAD_DIR is bound read-only at /payload.
# Everything of NAME lives in /tmp/cohost-nspawn/NAME (pids, console log)
# and in host cgroups named NAME; `down` removes both, also after a failed
# `up`, and kills only the processes of those cgroups.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cmd=${1:?up|in|down}
NAME=${2:?container name}
STATE=/tmp/cohost-nspawn/$NAME
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
	CG_V2=/sys/fs/cgroup/$NAME
	CG_V1=
else
	CG_V2=/sys/fs/cgroup/unified/$NAME
	CG_V1=/sys/fs/cgroup/systemd/$NAME
	[ -d /sys/fs/cgroup/systemd ] || CG_V1=
fi

leader() { cat "$STATE/leader" 2>/dev/null; }
ns_in() {
	nsenter -t "$(leader)" -a \
		env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 LANG=C.UTF-8 "$@"
}
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
# A recorded pid counts only while it is still the program we started.
is() { alive "$1" && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }

up() {
	local mode=${1:?hybrid|unified} payload=${2:?payload dir}
	[ "$(id -u)" = 0 ] || { echo "nspawn.sh: needs root" >&2; exit 1; }
	command -v systemd-nspawn >/dev/null || {
		echo "systemd-nspawn is missing: apt-get install systemd-container (tests/setup-host.sh does)" >&2
		exit 2
	}
	local root
	root=$("$HERE/rootfs.sh") || exit 1
	if alive "$(leader)"; then echo "nspawn.sh: $NAME is already up" >&2; exit 1; fi
	mkdir -p "$STATE"
	rm -f "$STATE"/{nspawn.pid,leader}
	# A host cgroup of our own (cgroup2 and name=systemd), so that nspawn
	# --keep-unit puts payload/ and supervisor/ there, not in the root.
	mkdir -p "$CG_V2" ${CG_V1:+"$CG_V1"}
	case $mode in
	unified) export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 ;;
	hybrid)
		[ -n "$CG_V1" ] || { echo "nspawn.sh: hybrid mode needs a hybrid host (this one is pure cgroup2)" >&2; exit 1; }
		# nspawn's default on a hybrid host (=0 would be legacy, v1 only)
		unset SYSTEMD_NSPAWN_UNIFIED_HIERARCHY
		;;
	*) echo "nspawn.sh: mode hybrid or unified, not $mode" >&2; exit 1 ;;
	esac
	(
		echo $BASHPID >"$CG_V2/cgroup.procs"
		[ -z "$CG_V1" ] || echo $BASHPID >"$CG_V1/cgroup.procs"
		exec setsid systemd-nspawn -D "$root" --volatile=overlay --bind-ro="$payload:/payload" \
			--boot --register=no --keep-unit --machine="$NAME" --private-network \
			--console=read-only >"$STATE/console.log" 2>&1 </dev/null
	) &
	echo $! >"$STATE/nspawn.pid"
	local l="" state=""
	for _ in $(seq 600); do
		l=$(head -1 "$CG_V2/payload/init.scope/cgroup.procs" 2>/dev/null || true)
		[ -n "$l" ] && break
		alive "$(cat "$STATE/nspawn.pid")" || { echo "nspawn exited:" >&2; cat "$STATE/console.log" >&2; exit 1; }
		sleep 0.1
	done
	[ -n "$l" ] || { echo "no container leader after 60s" >&2; exit 1; }
	echo "$l" >"$STATE/leader"
	for _ in $(seq 1200); do
		state=$(ns_in systemctl is-system-running 2>/dev/null || true)
		case $state in running | degraded) break ;; esac
		alive "$l" || { echo "container died:" >&2; tail -30 "$STATE/console.log" >&2; exit 1; }
		sleep 0.1
	done
	echo "$NAME: systemd $(ns_in systemctl --version | head -1 | cut -d' ' -f2) is PID 1 ($mode), state $state"
	[ "$state" = running ] || { ns_in systemctl --failed --no-pager; exit 1; }
}

down() {
	local ns l
	ns=$(cat "$STATE/nspawn.pid" 2>/dev/null || true)
	l=$(leader)
	if is "$ns" systemd-nspawn; then
		if is "$l" systemd && ns_in systemctl poweroff --no-block >/dev/null 2>&1; then
			for _ in $(seq 300); do alive "$ns" || break; sleep 0.1; done
		fi
		if alive "$ns"; then echo "nspawn.sh: no poweroff after 30s: SIGKILL to nspawn $ns"; kill -KILL "$ns"; fi
	fi
	# Anything left in our cgroups (nothing, normally): cgroup.kill, ours only.
	if [ -d "$CG_V2" ]; then
		echo 1 >"$CG_V2/cgroup.kill" 2>/dev/null || true
		for _ in $(seq 100); do grep -q '^populated 0' "$CG_V2/cgroup.events" 2>/dev/null && break; sleep 0.1; done
	fi
	for cg in "$CG_V2" $CG_V1; do
		[ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
		[ -d "$cg" ] && echo "nspawn.sh: could not remove $cg" >&2
	done
	rmdir "/run/systemd/nspawn/propagate/$NAME" 2>/dev/null || true
	rm -rf "$STATE"
	return 0
}

case $cmd in
up) up "${3:-}" "${4:-}" ;;
in) shift 2; alive "$(leader)" || { echo "nspawn.sh: $NAME is not up" >&2; exit 2; }; ns_in "$@" ;;
down) down ;;
*) echo "nspawn.sh: up, in or down, not $cmd" >&2; exit 2 ;;
esac
