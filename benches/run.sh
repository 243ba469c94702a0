#!/bin/bash
# The whole benchmark from a fresh clone, as root: cohost and the peers a
# user would pick instead (supervisord, s6, runit, from Debian packages) on
# the same workload, the fork/exec floor measured inside every run, and one
# comparison table (results/comparison-STAMP.md).
#
#   benches/run.sh            about 16 minutes on a 2-core VM (N <= 500: 14)
#   benches/run.sh --quick    about 4 minutes (fewer reps, shorter idle)
#
# Nothing else may listen on port 9003 meanwhile; state lives on /dev/shm.
set -euo pipefail
cd "$(dirname "$0")"
QUICK=0
[ "${1:-}" = --quick ] && QUICK=1

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: the listeners bind 127.10.x.y and cohost uses cgroups" >&2
    exit 2
fi
need=""
for p in supervisor s6 runit hyperfine gcc python3; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
    echo "== installing:$need"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi

echo "== building the listener and cohost (static: see BENCHMARKS.md)"
(cd .. && cargo build -q --release --example listener \
    && cargo rustc -q --release --bin cohost -- -C target-feature=+crt-static)
export COHOST_BIN="$PWD/../target/release/cohost"
LISTENER="$PWD/../target/release/examples/listener"
STAMP=$(date +%Y%m%d-%H%M%S)

if [ "$QUICK" = 1 ]; then
    C=(--n "10,100,500,1000" --reps 2 --idle 10)
    P=(--n "10,100,500" --reps 1 --idle 5)
else
    C=(--n "10,100,500,1000" --reps 5 --idle 60)
    P=(--n "10,100,500" --reps 3 --idle 10)
fi
./bench.py adapters/cohost.sh "${C[@]}" --listener "$LISTENER" --name cohost
./bench.py adapters/supervisord.sh "${P[@]}" --listener "$LISTENER" --name supervisord
./bench.py adapters/s6.sh "${P[@]}" --listener "$LISTENER" --name s6
S6_CTL=fifo ./bench.py adapters/s6.sh "${P[@]}" --listener "$LISTENER" --name s6-fifo
./bench.py adapters/runit.sh "${P[@]}" --listener "$LISTENER" --name runit
python3 compare.py --since "$STAMP" --out "results/comparison-$STAMP.md"
