#!/bin/bash
# Does force_bind cost anything at start? cohost's start-all (and cold
# start) at N instances, without and with `force_bind = true`, interleaved
# in one run (off, on, off, on, ...: the machine's drift falls on both),
# each round a full bench.py pass at one N with one rep. Figures: medians
# per variant, and the on/off ratio; raw results in results/fb-*.
#
#   benches/force_bind_ab.sh [ROUNDS] [N] [PORT]   default 6 rounds, N = 500, port 9013
set -euo pipefail
cd "$(dirname "$0")"
ROUNDS=${1:-6}
N=${2:-500}
# Not run.sh's 9003: another benchmark may be running on this machine.
PORT=${3:-9013}
if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: cohost loads BPF programs and uses cgroups" >&2
    exit 2
fi
echo "== building the listener and cohost (static, as run.sh)"
(cd .. && cargo build -q --release --example listener \
    && cargo rustc -q --release --bin cohost -- -C target-feature=+crt-static)
export COHOST_BIN="$PWD/../target/release/cohost"
LISTENER="$PWD/../target/release/examples/listener"
STAMP=$(date +%Y%m%d-%H%M%S)
# The "on" variant really is force_bind: two instances, verified.
W=$(mktemp -d /dev/shm/fb-check.XXXX)
BENCH_N=2 BENCH_PORT=$PORT BENCH_LISTENER=$LISTENER BENCH_WORK=$W COHOST_BENCH_FORCE_BIND=1 \
    adapters/cohost.sh setup
ch() { "$COHOST_BIN" --config "$W/instances.d" --runtime-dir "$W/run" "$@"; }
trap 'ch shutdown >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
ch up >/dev/null
ch verify inst1 | grep '^ok   force_bind' \
    || { echo "force_bind is not in effect: the A/B would compare nothing" >&2; exit 1; }
ch shutdown >/dev/null
rm -rf "$W"
trap - EXIT
for r in $(seq 1 "$ROUNDS"); do
    for v in off on; do
        echo "== round $r: force_bind $v (load: $(cut -d' ' -f1-3 /proc/loadavg))"
        COHOST_BENCH_FORCE_BIND=$([ $v = on ] && echo 1 || echo 0) \
            ./bench.py adapters/cohost.sh --n "$N" --reps 1 --status-runs 5 --settle 1 \
            --port "$PORT" --listener "$LISTENER" --name "fb-$v"
    done
done
python3 - "$STAMP" "$N" <<'PY'
import glob, json, os, statistics, sys
since, n = sys.argv[1], sys.argv[2]
rows = {"off": [], "on": []}
for v in rows:
    for f in sorted(glob.glob(f"results/fb-{v}-*.jsonl")):
        if os.path.basename(f)[len(f"fb-{v}-"):] < since:
            continue
        rows[v] += [json.loads(l) for l in open(f)]
def med(v, kind, key):
    xs = [r[key] for r in rows[v] if r.get("kind") == kind and r.get(key) is not None]
    return statistics.median(xs), xs
print(f"| N={n} | force_bind off (ms) | force_bind on (ms) | on/off |")
print("|---|---|---|---|")
for kind, key in [("start_all", "ms"), ("cold_start", "ms"), ("floor", "up_ms")]:
    (a, xa), (b, xb) = med("off", kind, key), med("on", kind, key)
    print(f"| {kind} median | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    print(f"| {kind} all | {' '.join(f'{x:.0f}' for x in xa)} | {' '.join(f'{x:.0f}' for x in xb)} | |")
PY
