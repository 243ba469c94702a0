#!/bin/sh
# in-node.sh N CMD...   run CMD in cluster node N (its cgroup and namespaces)
# in-node.sh client CMD...   run CMD in the client namespace
set -eu
. "$(dirname "$0")/common.sh"
n=${1:?usage: in-node.sh N|client CMD...}
shift
if [ "$n" = client ]; then
	# shellcheck disable=SC2016
	exec sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec nsenter --net=/run/netns/'"$P"'-cl -- "$@"' sh "$CGROOT/$P-cl" "$@"
fi
in_node "$n" "$@"
