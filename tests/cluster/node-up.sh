#!/bin/sh
# A dead node comes back, as after a reboot: a fresh network stack (its old
# netns, which may still hold a floating address, is deleted and plugged
# again), fresh cgroups, an empty /run, fresh namespaces, corosync and
# pacemakerd; returns when every
# node's crm_mon shows all nodes online.
#   node-up.sh N        (after up.sh; node N's cgroup must be empty)
set -eu
. "$(dirname "$0")/common.sh"
N=${1:?usage: node-up.sh N}
[ -e "$STATE/created" ] || die "not up: run up.sh first"
NODES=$(cat "$STATE/nodes")
! grep -q '^populated 1' "$(node_cg "$N")/cgroup.events" || die "node$N still has processes"
# A boot starts with fresh cgroups too: the dead node's cgroup goes, and
# start_node makes it again. (It was cgroup.kill'ed: on this kernel a
# process that clone3()s a child into a new cgroup below a killed one sees
# the child SIGKILLed at birth; cohost's starts all failed that way.)
find "$(node_cg "$N")" -depth -type d -exec rmdir {} \; 2>/dev/null
[ ! -e "$(node_cg "$N")" ] || die "node$N's old cgroup cannot be removed"
ip netns del "$(node_ns "$N")" 2>/dev/null || true
plug "$(node_ns "$N")" "$NET.$N"
run_dirs "$N"   # a reboot empties /run (a tmpfs): see README "Use with Pacemaker"
start_node "$N"
all=$(seq 1 "$NODES" | tr '\n' ' ')
# shellcheck disable=SC2086
wait_online $all
log "node$N is back: $(in_node "$N" crm_mon -1 | grep 'Online:')"
