#!/bin/bash
# `list --json` and the daemon's responsiveness while lists are made, at
# N running instances (the bench's file), for each daemon binary given, in
# turn: each cold-started by `up`, then 20 `list --json`, 200 `cohost
# monitor` and 1,000 monitor round trips on the socket (2 ms apart) alone,
# then again beside two `list --json` loops; the daemon's RSS at the end.
# Give the binaries alternated (OLD NEW OLD NEW): the host's drift falls on
# both. Used for BENCHMARKS.md "Scale, sixth pass".
#
#   benches/list_ab.sh BIN...        N=10000 PORT=9023 by default
set -euo pipefail
cd "$(dirname "$0")"
N=${N:-10000}
PORT=${PORT:-9023}
[ "$#" -ge 1 ] || { echo "usage: $0 COHOST_BIN..." >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root: cohost uses cgroups" >&2; exit 2; }
(cd .. && cargo build -q --release --example listener)
W=/dev/shm/bench-cohost-listab-$N
trap '[ -S "$W/run/cohost.sock" ] && "${BIN:-}" --config "$W/instances.d" --runtime-dir "$W/run" shutdown >/dev/null; rm -rf "$W"' EXIT
for BIN in "$@"; do
    BENCH_WORK=$W BENCH_N=$N BENCH_PORT=$PORT BENCH_LISTENER="$(cd .. && pwd)/target/release/examples/listener" \
        COHOST_BIN=$BIN adapters/cohost.sh setup >/dev/null
    C=("$BIN" --config "$W/instances.d" --runtime-dir "$W/run")
    t0=$(date +%s.%N)
    "${C[@]}" up >/dev/null
    echo "$BIN: up of $N in $(echo "$(date +%s.%N) - $t0" | bc) s"
    python3 - "$BIN" "$W" <<'PY'
import socket, statistics, subprocess, sys, threading, time
binp, w = sys.argv[1:3]
base = [binp, "--config", w + "/instances.d", "--runtime-dir", w + "/run"]
def cli(*args):
    t0 = time.perf_counter()
    subprocess.run(base + list(args), stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t0) * 1000
def rtt():
    t0 = time.perf_counter()
    s = socket.socket(socket.AF_UNIX)
    s.connect(w + "/run/cohost.sock")
    s.sendall(b'{"op":"monitor","id":"inst5"}\n')
    got = b""
    while not got.endswith(b"\n"):
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    d = (time.perf_counter() - t0) * 1000
    time.sleep(0.002)  # spread the samples over many lists
    return d
def show(what, m):
    m = sorted(m)
    print("  %s: median %.2f ms, p90 %.2f, p99 %.2f, max %.1f" % (
        what, statistics.median(m), m[len(m) * 9 // 10], m[len(m) * 99 // 100], m[-1]))
cli("list", "--json")
show("list --json", [cli("list", "--json") for _ in range(20)])
show("cohost monitor alone", [cli("monitor", "inst5") for _ in range(200)])
show("monitor round trip alone", [rtt() for _ in range(1000)])
stop = False
def loop():
    while not stop:
        cli("list", "--json")
th = [threading.Thread(target=loop) for _ in range(2)]
for x in th:
    x.start()
time.sleep(0.5)
show("cohost monitor beside 2 list loops", [cli("monitor", "inst5") for _ in range(200)])
show("monitor round trip beside 2 list loops", [rtt() for _ in range(1000)])
stop = True
for x in th:
    x.join()
pid = open(w + "/run/daemon.pid").read().strip()
rss = [l for l in open("/proc/%s/status" % pid) if l.startswith("VmRSS")][0].split()[1]
print("  daemon RSS %.1f MiB" % (int(rss) / 1024))
PY
    "${C[@]}" shutdown >/dev/null
done
