#!/bin/sh
# First process of a cluster node, already inside the node's network
# namespace and a fresh mount + UTS namespace. It gives the node private
# copies of every directory corosync, Pacemaker and libqb use at compiled-in
# paths, its own OCF agent directory, the shared "SAN", its host name, and
# then holds those namespaces (sleep).
#   node-init.sh NAME NODEDIR SHAREDDIR
set -eu
NAME=$1 D=$2 SHARED=$3

hostname "$NAME"
mount --make-rprivate /     # nothing below leaks to the host or other nodes
mount --bind "$D/run" /run  # crm/, resource-agents/, corosync.pid, cohost/
mount --bind "$D/lib/pacemaker" /var/lib/pacemaker
mount --bind "$D/lib/corosync" /var/lib/corosync
mount --bind "$D/log" /var/log
mount --bind "$D/etc/corosync" /etc/corosync
mount --bind "$D/sbin" /usr/local/sbin # this node's cohost binary
# libqb IPC: abstract sockets (per netns) + ring buffers in /dev/shm.
mount -t tmpfs -o mode=1777,size=256m "shm-$NAME" /dev/shm
# The node's OCF agents: the host's providers, plus cohost's agent from the
# checkout (so the host's /usr/lib/ocf is never touched).
for p in /usr/lib/ocf/resource.d/*; do
	[ "$p" = /usr/lib/ocf/resource.d/cohost ] && continue
	mkdir -p "$D/ocf/${p##*/}"
	mount --bind "$p" "$D/ocf/${p##*/}"
done
mount --rbind "$D/ocf" /usr/lib/ocf/resource.d
# Storage: /srv is the node's own (Filesystem mounts /srv/demoNN there);
# /srv/san is the shared "SAN", the same directory on every node.
mount --bind "$D/srv" /srv
mount --bind "$SHARED" /srv/san

touch "$D/ready"
exec sleep infinity
