#!/bin/bash
# The whole benchmark from a fresh clone, as root: cohost and the peers a
# user would pick instead (supervisord, s6, runit, from Debian packages) on
# the same workload, the fork/exec floor measured inside every run, and one
# comparison table (results/comparison-STAMP.md).
#
#   benches/run.sh            about 14 minutes on a 2-core VM
#   benches/run.sh --quick    about 4 minutes (fewer reps, shorter idle)
#   benches/run.sh --scale    cohost alone at N = 2000, 5000, 10000 (~10 min)
#
# Nothing else may listen on the port meanwhile (9003; BENCH_PORT=N to
# choose another, e.g. when another bench runs beside); state lives on
# /dev/shm.
set -euo pipefail
cd "$(dirname "$0")"
MODE=full
case "${1:-}" in
--quick) MODE=quick ;;
--scale) MODE=scale ;;
"") ;;
*) echo "usage: $0 [--quick | --scale]" >&2; exit 2 ;;
esac

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

echo "== building the listener and cohost: the default build, then the static one"
# The default build (what `cargo build --release` and `cargo install` make)
# is kept beside the static one: its `monitor` is measured too.
(cd .. && cargo build -q --release --example listener --bin cohost \
    && cp target/release/cohost target/release/cohost-default \
    && cargo rustc -q --release --bin cohost -- -C target-feature=+crt-static)
export COHOST_BIN="$PWD/../target/release/cohost"
export COHOST_DEFAULT_BIN="$PWD/../target/release/cohost-default"
LISTENER="$PWD/../target/release/examples/listener"
STAMP=$(date +%Y%m%d-%H%M%S)
PORT=(--port "${BENCH_PORT:-9003}")

case "$MODE" in
quick)
    C=(--n "10,100,500,1000" --reps 2 --idle 10 --timings)
    P=(--n "10,100,500" --reps 1 --idle 5) ;;
full)
    C=(--n "10,100,500,1000" --reps 5 --idle 20 --timings)
    P=(--n "10,100,500" --reps 3 --idle 10) ;;
scale)
    # Every listener is a process with its own socket: 10,000 of them need
    # the fd and process limits raised, and a cgroup each.
    # (A container may cap the hard limit: then as high as it allows.)
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    C=(--n "${SCALE_N:-2000,5000,10000}" --reps 2 --idle 20 --timings --status-runs 30)
    ./bench.py adapters/cohost.sh "${C[@]}" "${PORT[@]}" --listener "$LISTENER" --name cohost-scale
    python3 compare.py --since "$STAMP" --out "results/scale-$STAMP.md"
    exit 0 ;;
esac
./bench.py adapters/cohost.sh "${C[@]}" "${PORT[@]}" --listener "$LISTENER" --name cohost
./bench.py adapters/supervisord.sh "${P[@]}" "${PORT[@]}" --listener "$LISTENER" --name supervisord
./bench.py adapters/s6.sh "${P[@]}" "${PORT[@]}" --listener "$LISTENER" --name s6
S6_CTL=fifo ./bench.py adapters/s6.sh "${P[@]}" "${PORT[@]}" --listener "$LISTENER" --name s6-fifo
./bench.py adapters/runit.sh "${P[@]}" "${PORT[@]}" --listener "$LISTENER" --name runit
python3 compare.py --since "$STAMP" --out "results/comparison-$STAMP.md"
