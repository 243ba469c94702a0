#!/bin/sh
# The shipped example, end to end: two copies of the demo `counter` service
# on 127.0.0.2:9003 and 127.0.0.3:9003 (examples/instances.d), started,
# queried, one stopped while the other keeps answering, then all stopped.
#
#   examples/demo.sh          (root gives cgroup tracking; any user works)
#
# Shared storage and the runtime dir live under /tmp/cohost-demo.
set -eu
cd "$(dirname "$0")/.."
echo "== building cohost and the demo service (release)"
cargo build --release --quiet --bin cohost --example counter
BIN="$PWD/target/release"
export PATH="$BIN/examples:$PATH"          # the instances file runs `counter`
DEMO=/tmp/cohost-demo
for id in demo01 demo02; do mkdir -p "$DEMO/$id/data" "$DEMO/$id/log"; done

run() { echo "\$ cohost $*"; "$BIN/cohost" --config examples/instances.d --runtime-dir "$DEMO/run" "$@"; }
ask() { echo "\$ counter --ask $1"; counter --ask "$1"; }
# Interrupted or failed half-way (Ctrl-C, a closed pipe): stop what runs.
cleanup() {
    "$BIN/cohost" --config examples/instances.d --runtime-dir "$DEMO/run" shutdown \
        >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

run validate
run up
run list
ask 127.0.0.2:9003
ask 127.0.0.3:9003
run monitor demo01
run stop demo01
run monitor demo01 || echo "(exit $? = stopped)"
ask 127.0.0.2:9003 || echo "(demo01 no longer answers)"
ask 127.0.0.3:9003
run status demo02
run start demo01
ask 127.0.0.2:9003
run shutdown
echo "== done: counters and logs are under $DEMO (rm -rf $DEMO to reset)"
