#!/usr/bin/env python3
"""A/B of the two OCF agents (issue 17), alternated so that both see the
same machine:

    ./ocf_agent_ab.py [--n 100] [--reps 6] [--monitor-runs 300] [--port 9023]

- `ocf monitor` through the binary as agent (a resource.d/cohost/instance
  symlink), through the sh agent (examples/ocf/cohost), `cohost monitor`
  and /bin/true: one of each in turn, the order rotated every round,
  --monitor-runs rounds, N instances running. Medians, and each minus
  /bin/true's.
- N concurrent agent starts (`probe up -f`, as in bench.py's
  ocf-start-each) through the symlink and through the sh agent, against
  the sh-floor of the same rep (N concurrent `sh -c 'exec listener'`);
  which agent goes first alternates from rep to rep.

The binary is $COHOST_BIN (run.sh's static build, or e.g.
target/release/cohost for the default build). Uses bench.py's harness and
adapters/cohost.sh; raw rows in results/ocfab-STAMP.jsonl.
"""
import argparse
import ctypes
import json
import os
import statistics
import subprocess
import time

import bench
from bench import Bench, HERE, PR_SET_CHILD_SUBREAPER, kill_tree, reap_any, split_env


def spawn_times(variants, rounds):
    """Wall time (ms) to the reap of each variant, one of each per round,
    the order rotated every round; the first 3 rounds are warm-up."""
    null = os.open(os.devnull, os.O_RDWR)
    acts = [(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)]
    times = {name: [] for name, _, _ in variants}
    try:
        for k in range(rounds + 3):
            for j in range(len(variants)):
                name, argv, env = variants[(j + k) % len(variants)]
                t0 = time.perf_counter_ns()
                pid = os.posix_spawnp(argv[0], argv, env, file_actions=acts)
                os.waitpid(pid, 0)
                if k >= 3:
                    times[name].append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        os.close(null)
    return {name: statistics.median(v) for name, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--monitor-runs", type=int, default=300)
    ap.add_argument("--port", type=int, default=9023)
    ap.add_argument("--workroot", default="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
    args = ap.parse_args()

    bench.build()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    adapter = os.path.join(HERE, "adapters", "cohost.sh")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    base = os.path.join(HERE, "results", "ocfab-" + time.strftime("%Y%m%d-%H%M%S"))
    work = os.path.join(args.workroot, f"bench-ocfab-{args.n}")
    with open(base + ".jsonl", "w") as out:
        b = Bench(adapter, args.n, args.port, work, out)
        if b.n_listeners():
            raise SystemExit("listener processes already running; clean up first")
        b.ad("setup")
        time.sleep(1.5)  # as bench.py: let the fresh config age
        try:
            b.cold_start(0)
            i = min(42, args.n)
            variants = []
            for name, action in (("link", "ocf-monitor"), ("sh", "ocf-sh-monitor"),
                                 ("monitor", "monitor")):
                env, argv = split_env(b.argv(action, i))
                rc = subprocess.run(argv, env=dict(b.env, **env),
                                    stdout=subprocess.DEVNULL).returncode
                assert rc == 0, f"{action} inst{i}: rc {rc}"
                variants.append((name, argv, dict(b.env, **env)))
            variants.append(("true", ["/bin/true"], dict(b.env)))
            load = os.getloadavg()
            m = spawn_times(variants, args.monitor_runs)
            b.record("monitor_ab", runs=args.monitor_runs, load=load, **m)
            print(f"monitor, {args.monitor_runs} rounds alternated, load {load[0]:.2f}: " +
                  ", ".join(f"{k} {v:.3f} ms ({v - m['true']:+.3f})" for k, v in m.items()))
            for rep in range(1, args.reps + 1):
                b.stop_all(rep)  # everything runs: after the cold start, after each rep
                time.sleep(0.3)
                fl = b.floor(rep)
                time.sleep(0.3)
                b.start_all(rep)
                time.sleep(0.5)
                order = ("ocf-", "ocf-sh-") if rep % 2 else ("ocf-sh-", "ocf-")
                res = {}
                for kind in order:
                    b.stop_each(rep, kind + "stop-each")
                    time.sleep(0.3)
                    r = b.start_each(rep, kind + "start-each")
                    assert r["cmd_rc"] == 0 and not r.get("err"), r
                    res[kind] = r["ms"]
                    time.sleep(0.5)
                load = os.getloadavg()
                b.record("agent_ab", rep=rep, load=load, sh_floor_ms=fl["sh_up_ms"],
                         floor_ms=fl["up_ms"], link_ms=res["ocf-"], sh_ms=res["ocf-sh-"])
                print(f"rep {rep} (load {load[0]:.2f}): sh-floor {fl['sh_up_ms']:.1f} ms; "
                      f"link {res['ocf-']:.1f} ms = {res['ocf-'] / fl['sh_up_ms']:.2f}x; "
                      f"sh {res['ocf-sh-']:.1f} ms = {res['ocf-sh-'] / fl['sh_up_ms']:.2f}x")
            b.shutdown(0)
        except BaseException:
            if b.daemon:
                kill_tree(b.daemon)
            raise
        finally:
            b.ad("cleanup")
            reap_any()
    rows = [json.loads(line) for line in open(base + ".jsonl")]
    ab = [r for r in rows if r["kind"] == "agent_ab"]
    med = lambda k: statistics.median(r[k] / r["sh_floor_ms"] for r in ab)
    print(f"N={args.n}, {len(ab)} reps: link {med('link_ms'):.2f}x, sh {med('sh_ms'):.2f}x "
          f"the sh-floor (medians of per-rep ratios); raw: {base}.jsonl")


if __name__ == "__main__":
    main()
