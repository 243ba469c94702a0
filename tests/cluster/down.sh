#!/bin/sh
# Removes everything up.sh (and node-up.sh) created, pass or fail: every
# process in the cgroups it made (the nodes' daemons, cohost, the services,
# agents, hangfs), the namespaces (with them the veths, the bridge and every
# mount of the nodes' private mount namespaces), the cgroups and the fence
# agent. Never kills by name: by cgroup (cgroup.kill). Exit 0 only if nothing is left.
#   down.sh            (logs stay in $ROOT/nodeN until the next up.sh)
# shellcheck disable=SC2013 # the names in $STATE/created have no spaces
set -u
. "$(dirname "$0")/common.sh"
[ -e "$STATE/created" ] || { echo "down: nothing to do (no $STATE/created)"; exit 0; }

populated() { grep -q '^populated 1' "$1/cgroup.events" 2>/dev/null; }
# 1. everything in our cgroups (cgroup.kill covers the whole subtree)
for cg in $(awk '$1 == "cgroup" { print $2 }' "$STATE/created"); do
	[ -d "$cg" ] && populated "$cg" && echo 1 > "$cg/cgroup.kill"
done
for cg in $(awk '$1 == "cgroup" { print $2 }' "$STATE/created"); do
	i=0
	while populated "$cg"; do
		i=$((i + 1)); [ $i -le 300 ] || { echo "down: WARNING: $cg still populated"; break; }
		sleep 0.1
	done
done
# 2. (No scan of /proc for processes in our netns: everything we start is
#    born in our cgroups, and reading another process's /proc/PID/ns/net
#    blocks, uninterruptibly, while that process is stuck in exec on a hung
#    disk, e.g. in another test's fault injection.)
# 3. cgroups, deepest first (cohost made cohost/<tag>/<id> below ours)
for cg in $(awk '$1 == "cgroup" { print $2 }' "$STATE/created"); do
	i=0
	while [ -d "$cg" ] && ! find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null; do
		i=$((i + 1)); [ $i -le 100 ] || break
		sleep 0.1
	done
	[ -d "$cg" ] && echo "down: WARNING: could not remove $cg"
done
# 4. namespaces: the veths and the bridge go with them
for ns in $(awk '$1 == "netns" { print $2 }' "$STATE/created"); do
	ip netns del "$ns" 2>/dev/null
done
# 5. the fence agent we installed
for f in $(awk '$1 == "file" { print $2 }' "$STATE/created"); do rm -f "$f"; done
rm -f "$STATE/created" "$STATE"/node*.holder "$STATE"/node*.corosync "$STATE"/node*.pacemakerd
# What is left, if anything
left_ns=$(ip netns list 2>/dev/null | grep -c "^$P-")
left_cg=$(find "$CGROOT" -maxdepth 1 -name "$P-*" | wc -l)
left_mnt=$(grep -c "$ROOT" /proc/self/mountinfo)
left_fence=0; [ -e "$FENCE_AGENT" ] && left_fence=1
echo "down: left: $left_ns netns, $left_cg cgroups, $left_mnt mounts under $ROOT, $left_fence fence agent"
[ "$left_ns$left_cg$left_mnt$left_fence" = 0000 ]
