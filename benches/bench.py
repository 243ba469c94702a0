#!/usr/bin/env python3
"""Harness: measure one multi-instance supervisor through an adapter script.

    ./bench.py adapters/s6.sh [--n 10,100,500] [--reps 5] [--status-runs 50]
                              [--listener PATH] [--idle SECONDS]

See README.md for the adapter protocol and what every number means.
Results: results/<adapter>-<stamp>.jsonl (raw samples) and .md (summary).

Vendored from the project's peer benchmark (shared/bench-peers) with three
additions for cohost: --listener (every supervisor runs the same shipped
listener binary), an optional `argv monitor I` action measured like
status, and --idle: CPU time and context switches (wake-ups) of the
supervisor processes over an idle window with N instances running.
"""
import argparse
import ctypes
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "probe")
LISTENER = os.path.join(HERE, "listener")
PR_SET_CHILD_SUBREAPER = 36


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def build():
    for name in ("listener", "probe"):
        src, out = os.path.join(HERE, name + ".c"), os.path.join(HERE, name)
        if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
            subprocess.run(["gcc", "-O2", "-Wall", "-o", out, src], check=True)


# ---------------------------------------------------------------- processes
def ps_table():
    """pid -> (ppid, exe) for every process."""
    t = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            try:
                exe = os.readlink(f"/proc/{d}/exe")
            except OSError:
                exe = ""
            t[int(d)] = (ppid, exe)
        except (OSError, ValueError):
            pass
    return t


def descendants(root, table=None):
    table = table or ps_table()
    kids = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def supervisor_pids(daemon_pid):
    """The daemon and every descendant that is not a service (listener) or
    below one: for s6 that is s6-svscan + all s6-supervise, for runit
    runsvdir + all runsv, for supervisord just supervisord."""
    table = ps_table()
    if daemon_pid not in table:
        return []
    kids = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [daemon_pid]
    while todo:
        p = todo.pop()
        if table.get(p, (0, ""))[1] == LISTENER:
            continue
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_and_switches(pids):
    """(CPU ticks, context switches) summed over pids."""
    ticks = switches = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        except OSError:
            pass
    return ticks, switches


def memory(pids):
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def reap_any():
    """Reap adopted orphans (we are a child subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_pid_exit(pid, timeout):
    """Wait for an adopted child to exit and reap it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            r, _ = os.waitpid(pid, os.WNOHANG)
            if r == pid:
                return True
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                return True
        time.sleep(0.01)
    return False


def kill_tree(root):
    """Emergency cleanup, by pid only: SIGKILL the daemon's tree."""
    pids = [root] + descendants(root)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.2)
    reap_any()


# ---------------------------------------------------------------- harness
def split_env(argv):
    """Leading NAME=VALUE words of an adapter's argv: that command's environment."""
    env = {}
    while argv and "=" in argv[0] and not argv[0].startswith("/"):
        k, v = argv[0].split("=", 1)
        env[k] = v
        argv = argv[1:]
    return env, argv


def interleaved(argv, env, runs):
    """Medians (ms) of `argv` and of /bin/true as whole processes, run
    alternately (cmd, true, cmd, true, ...) so that both see the same
    machine: hyperfine measures one after the other, and /bin/true alone
    drifts by 0.2 ms over a minute here. Same spawn path for both
    (posix_spawn, output to /dev/null, wall time to the reap)."""
    null = os.open(os.devnull, os.O_RDWR)
    acts = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
            (os.POSIX_SPAWN_DUP2, null, 2)]
    true = "/bin/true"
    env = dict(env if env is not None else os.environ)
    times = {0: [], 1: []}
    try:
        for k in range(2 * runs + 6):
            which = k % 2
            prog, args = (argv[0], argv) if which == 0 else (true, [true])
            t0 = time.perf_counter_ns()
            pid = os.posix_spawnp(prog, args, env, file_actions=acts)
            os.waitpid(pid, 0)
            if k >= 6:  # warm-up
                times[which].append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        os.close(null)
    return statistics.median(times[0]), statistics.median(times[1])


class Bench:
    def __init__(self, adapter, n, port, work, out):
        self.adapter = adapter
        self.n = n
        self.port = port
        self.env = dict(os.environ, BENCH_N=str(n), BENCH_PORT=str(port),
                        BENCH_LISTENER=LISTENER, BENCH_WORK=work, BENCH_PROBE=PROBE)
        self.work = work
        self.out = out
        self.daemon = None

    def ad(self, *args, capture=False):
        r = subprocess.run([self.adapter, *map(str, args)], env=self.env, check=True,
                           stdout=subprocess.PIPE if capture else subprocess.DEVNULL)
        return r.stdout.decode() if capture else None

    def argv(self, action, *extra):
        return [w for w in self.ad("argv", action, *extra, capture=True).split("\n") if w]

    def probe(self, *args):
        r = subprocess.run([PROBE, *map(str, args)], env=self.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            res = json.loads(r.stdout.decode().strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RuntimeError(f"probe {args[:3]} failed rc={r.returncode}: {r.stderr.decode()}")
        if r.returncode != 0:
            res["error"] = res.get("error", f"rc={r.returncode}")
        return res

    def record(self, kind, **kv):
        row = dict(kind=kind, n=self.n, **kv)
        self.out.write(json.dumps(row) + "\n")
        self.out.flush()
        return row

    def n_listeners(self):
        return len(subprocess.run([PROBE, "pids", LISTENER], stdout=subprocess.PIPE,
                                  check=True).stdout.split())

    def cold_start(self, rep):
        os.makedirs(self.work, exist_ok=True)
        res = self.probe("up", "-d", "-t", 120, "-l", os.path.join(self.work, "daemon.out"),
                         self.n, self.port, "--", *self.argv("daemon"))
        self.daemon = res["pid"]
        return self.record("cold_start", rep=rep, ms=res["up_ms"], err=res.get("error"))

    def stop_all(self, rep):
        res = self.probe("down", "-t", 120, LISTENER, "--", *self.argv("stop-all"))
        return self.record("stop_all", rep=rep, ms=res["gone_ms"], exit_ms=res["exit_ms"],
                           cmd_ms=res["cmd_ms"], cmd_rc=res["cmd_rc"], procs=res["n"],
                           err=res.get("error"))

    def start_all(self, rep):
        res = self.probe("up", "-t", 120, self.n, self.port, "--", *self.argv("start-all"))
        return self.record("start_all", rep=rep, ms=res["up_ms"], cmd_ms=res["cmd_ms"],
                           cmd_rc=res["cmd_rc"], err=res.get("error"))

    def start_each(self, rep, action="start-each"):
        """N concurrent start commands, one per instance (as cluster software
        starts resources): until every address accepts; cmd = all returned."""
        env, argv = split_env(self.argv(action))
        e = [w for k, v in env.items() for w in ("-E", f"{k}={v}")]
        res = self.probe("up", "-f", *e, "-t", 120, self.n, self.port, "--", *argv)
        return self.record(action.replace("-", "_"), rep=rep, ms=res["up_ms"],
                           cmd_ms=res["cmd_ms"], cmd_rc=res["cmd_rc"], err=res.get("error"))

    def stop_each(self, rep, action="stop-each"):
        env, argv = split_env(self.argv(action))
        e = [w for k, v in env.items() for w in ("-E", f"{k}={v}")]
        res = self.probe("down", "-f", "-c", self.n, *e, "-t", 120, LISTENER, "--", *argv)
        return self.record(action.replace("-", "_"), rep=rep, ms=res["gone_ms"],
                           cmd_ms=res["cmd_ms"], cmd_rc=res["cmd_rc"], err=res.get("error"))

    def timings(self, runs=10):
        """validate, reload, list --json with N running: hyperfine medians."""
        out = {}
        for action in ("validate", "reload", "list-json"):
            if not self.has_action(action):
                continue
            argv = self.argv(action)
            js = os.path.join(self.work, "timing.json")
            subprocess.run(["hyperfine", "-N", "-i", "--style", "none", "--warmup", "1",
                            "--runs", str(runs), "--export-json", js, shlex.join(argv)],
                           env=self.env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            with open(js) as f:
                h = json.load(f)["results"][0]
            rc = subprocess.run(argv, env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL).returncode
            out[action.replace("-", "_") + "_ms"] = h["median"] * 1e3
            out[action.replace("-", "_") + "_rc"] = rc
        return self.record("timings", **out)

    def floor(self, rep):
        res = self.probe("floor", "-t", 120, self.n, self.port, LISTENER)
        time.sleep(0.2)
        sh = self.probe("floor", "-s", "-t", 120, self.n, self.port, LISTENER)
        return self.record("floor", rep=rep, up_ms=res["up_ms"], down_ms=res["down_ms"],
                           spawn_ms=res["spawn_ms"], sh_up_ms=sh["up_ms"],
                           sh_down_ms=sh["down_ms"], err=res.get("error") or sh.get("error"))

    def mem(self, rep):
        pids = supervisor_pids(self.daemon)
        rss, pss = memory(pids)
        return self.record("memory", rep=rep, procs=len(pids), rss_kib=rss, pss_kib=pss,
                           listeners=self.n_listeners())

    def idle(self, secs):
        pids = supervisor_pids(self.daemon)
        t0, s0 = cpu_and_switches(pids)
        time.sleep(secs)
        t1, s1 = cpu_and_switches(pids)
        hz = os.sysconf("SC_CLK_TCK")
        return self.record("idle", secs=secs, procs=len(pids), cpu_ms=(t1 - t0) * 1000.0 / hz,
                           wakeups_per_s=(s1 - s0) / secs)

    def has_action(self, action):
        r = subprocess.run([self.adapter, "argv", action, "1"], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def status(self, runs, action="status"):
        i = 42 if self.n >= 84 else max(1, self.n // 2)
        extra, argv = split_env(self.argv(action, i))
        env = dict(self.env, **extra)
        sample = subprocess.run(argv, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        js = os.path.join(self.work, "hyperfine.json")
        # /bin/true is measured in the same hyperfine run, right after: the
        # machine drifts over minutes (0.6-0.9 ms for /bin/true between
        # runs), and the difference is what the target is about.
        subprocess.run(["hyperfine", "-N", "-i", "--style", "none", "--warmup", "3",
                        "--runs", str(runs), "--export-json", js, shlex.join(argv),
                        "/bin/true"],
                       env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=open(os.path.join(self.work, "hyperfine.err"), "w"))
        with open(js) as f:
            h, t = json.load(f)["results"][:2]
        inter, inter_true = interleaved(argv, env, 4 * runs)
        return self.record(action, inst=i, median_ms=h["median"] * 1e3,
                           mean_ms=h["mean"] * 1e3, min_ms=h["min"] * 1e3,
                           true_ms=t["median"] * 1e3,
                           inter_ms=inter, inter_true_ms=inter_true,
                           runs=len(h["times"]), rc=sample.returncode,
                           output=sample.stdout.decode().strip()[:200])

    def shutdown(self, rep):
        res = self.probe("down", "-t", 120, LISTENER, "--", self.adapter, "shutdown", self.daemon)
        ok = wait_pid_exit(self.daemon, 60)
        # every supervisor process must be gone too (runsv/s6-supervise get adopted by us)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            reap_any()
            left = [p for p in descendants(os.getpid()) if ps_table().get(p, (0, ""))[1] != PROBE]
            if not left:
                break
            time.sleep(0.05)
        else:
            log(f"  leftover processes after shutdown: {left}; killing them")
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
            reap_any()
        d, self.daemon = self.daemon, None
        return self.record("shutdown", rep=rep, ms=res["gone_ms"], daemon_exited=ok,
                           err=res.get("error"), daemon=d)


def med(rows, key):
    v = [r[key] for r in rows if r.get(key) is not None and r[key] >= 0]
    return statistics.median(v) if v else float("nan")


def summarize(name, rows, out_md):
    lines = [f"# {name}", "",
             "Medians over reps (ms unless noted). Ratios are against the floor measured "
             "in the same run (fork/exec loop, same probe). sh-floor: the same loop with "
             "each listener exec'd through /bin/sh, like a run script.", "",
             "| N | cold start | start-all | (cmd returns) | floor up | start/floor | "
             "sh-floor up | stop-all | (cmd returns) | floor down | stop/floor | status median | "
             "monitor median | sup. procs | RSS MiB | PSS MiB | idle CPU ms/min | wake-ups/s | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in rows}):
        rs = [r for r in rows if r["n"] == n]
        by = lambda k: [r for r in rs if r["kind"] == k]
        cold, start, stop, fl, mem, st = (by("cold_start"), by("start_all"), by("stop_all"),
                                          by("floor"), by("memory"), by("status"))
        mon, idle = by("monitor"), by("idle")
        errs = sum(1 for r in rs if r.get("err"))
        fu, fd = med(fl, "up_ms"), med(fl, "down_ms")
        su, sd = med(start, "ms"), med(stop, "ms")
        lines.append(
            f"| {n} | {med(cold, 'ms'):.1f} | {su:.1f} | {med(start, 'cmd_ms'):.1f} | {fu:.1f} | "
            f"{su / fu:.2f}x | {med(fl, 'sh_up_ms'):.1f} | {sd:.1f} | {med(stop, 'cmd_ms'):.1f} | {fd:.1f} | {sd / fd:.2f}x | "
            f"{(st[0]['median_ms'] if st else float('nan')):.2f} | "
            f"{(mon[0]['median_ms'] if mon else float('nan')):.2f} | "
            f"{int(med(mem, 'procs')) if mem else 0} | {med(mem, 'rss_kib') / 1024:.1f} | "
            f"{med(mem, 'pss_kib') / 1024:.1f} | "
            f"{(idle[0]['cpu_ms'] * 60 / idle[0]['secs'] if idle else float('nan')):.1f} | "
            f"{(idle[0]['wakeups_per_s'] if idle else float('nan')):.2f} | {errs} |")
    text = "\n".join(lines) + "\n"
    with open(out_md, "w") as f:
        f.write(text)
    print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter")
    ap.add_argument("--n", default="10,100,500")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--status-runs", type=int, default=50)
    ap.add_argument("--port", type=int, default=9003)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="idle seconds after a cold start before memory/status")
    ap.add_argument("--after-setup", type=float, default=1.5,
                    help="seconds to wait after writing the config, before the first start")
    ap.add_argument("--workroot", default="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp",
                    help="where adapters keep configs and state (tmpfs, like /run on a real host)")
    ap.add_argument("--name", default=None, help="label for result files")
    ap.add_argument("--listener", default=None,
                    help="the workload binary (default: listener.c, compiled here)")
    ap.add_argument("--timings", action="store_true",
                    help="also time validate, reload and list --json once per N")
    ap.add_argument("--idle", type=float, default=0,
                    help="seconds of idle measurement (CPU, wake-ups) once per N")
    args = ap.parse_args()

    build()
    global LISTENER
    if args.listener:
        LISTENER = os.path.abspath(args.listener)
    adapter = os.path.abspath(args.adapter)
    name = args.name or os.path.splitext(os.path.basename(adapter))[0]
    # orphans (daemons left by probe -d, runsv after runsvdir exits) come to us
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(HERE, "results", f"{name}-{stamp}")
    rows = []
    h = subprocess.run(["hyperfine", "-N", "--style", "none", "--warmup", "3", "--runs", "50",
                        "--export-json", base + ".true.json", "/bin/true"],
                       stdout=subprocess.DEVNULL, check=True)
    with open(base + ".jsonl", "w") as out:
        with open(base + ".true.json") as f:
            t = json.load(f)["results"][0]["median"] * 1e3
        out.write(json.dumps(dict(kind="exec_floor", cmd="/bin/true", median_ms=t)) + "\n")
        log(f"exec floor (/bin/true via hyperfine): {t:.3f} ms")
        for n in [int(x) for x in args.n.split(",")]:
            work = os.path.join(args.workroot, f"bench-{name}-{n}")
            b = Bench(adapter, n, args.port, work, out)
            if b.n_listeners():
                sys.exit("listener processes already running; clean up first")
            b.ad("setup")
            # runsvdir ignores a service directory modified during the current
            # second for one more second; let every freshly written config age.
            time.sleep(args.after_setup)
            try:
                for rep in range(1, args.reps + 1):
                    r = b.cold_start(rep)
                    rows.append(r)
                    time.sleep(args.settle)
                    rows.append(b.mem(rep))
                    if rep == 1:
                        if args.idle > 0:
                            rows.append(b.idle(args.idle))
                        rows.append(b.status(args.status_runs))
                        for extra in ("monitor", "monitor-default", "ocf-monitor", "ocf-sh-monitor"):
                            if b.has_action(extra):
                                rows.append(b.status(args.status_runs, extra))
                        if args.timings:
                            rows.append(b.timings())
                    rows.append(b.stop_all(rep))
                    time.sleep(0.3)
                    rows.append(b.floor(rep))
                    time.sleep(0.3)
                    rows.append(b.start_all(rep))
                    time.sleep(0.5)
                    # Per instance, N at once: directly, then through the
                    # OCF agent (the binary as agent, then the sh agent;
                    # stop first: everything runs after start-all).
                    for kind in ("", "ocf-", "ocf-sh-"):
                        if b.has_action(kind + "start-each"):
                            rows.append(b.stop_each(rep, kind + "stop-each"))
                            time.sleep(0.3)
                            rows.append(b.start_each(rep, kind + "start-each"))
                            time.sleep(0.5)
                    rows.append(b.shutdown(rep))
                    time.sleep(0.3)
                    last = {r["kind"]: r for r in rows if r.get("rep") == rep and r["n"] == n}
                    log(f"{name} N={n} rep {rep}: cold {last['cold_start']['ms']:.1f} "
                        f"start {last['start_all']['ms']:.1f} stop {last['stop_all']['ms']:.1f} "
                        f"floor {last['floor']['up_ms']:.1f}/{last['floor']['down_ms']:.1f} "
                        f"rss {last['memory']['rss_kib']} KiB")
            except BaseException:
                if b.daemon:
                    log(f"error: killing daemon tree {b.daemon}")
                    kill_tree(b.daemon)
                raise
            finally:
                b.ad("cleanup")
                reap_any()
    summarize(name, rows, base + ".md")
    log(f"raw: {base}.jsonl  summary: {base}.md")


if __name__ == "__main__":
    main()
