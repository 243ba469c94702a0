#!/usr/bin/env python3
"""One table from the runs of bench.py: cohost, the floor and the peers.

    ./compare.py [--since STAMP] [--out FILE]

For every supervisor the newest results/<name>-<stamp>.jsonl (newer than
STAMP if given) is read. Every time is a median over reps; every ratio to
the floor uses the floor measured inside the same run (the machine is
noisy: ratios taken under the same noise are steadier than milliseconds),
and "x cohost" compares the supervisor's own ratio to cohost's.
"""
import argparse
import glob
import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["cohost", "runit", "s6-fifo", "s6", "supervisord"]


def med(v):
    v = [x for x in v if x is not None and x == x and x >= 0]
    return statistics.median(v) if v else float("nan")


def rng(v):
    v = [x for x in v if x is not None and x == x and x >= 0]
    return (min(v), max(v)) if v else (float("nan"), float("nan"))


def load(since):
    runs = {}
    for f in glob.glob(os.path.join(HERE, "results", "*.jsonl")):
        name, stamp = os.path.basename(f)[:-6].rsplit("-", 2)[0], "-".join(os.path.basename(f)[:-6].rsplit("-", 2)[1:])
        if since and stamp < since:
            continue
        if name not in runs or stamp > runs[name][0]:
            runs[name] = (stamp, f)
    out = {}
    for name, (stamp, f) in runs.items():
        with open(f) as fh:
            out[name] = [json.loads(line) for line in fh]
    return out


def per_instance(rs, fl):
    """Per-instance starts and stops (N at once), the OCF agent, the default
    build's monitor and the timings: medians, ratios per rep."""
    k = lambda kind: [r for r in rs if r["kind"] == kind]
    def x(measure, ref):
        out = []
        for r in measure:
            f = next((y for y in ref if y.get("rep") == r.get("rep")), None)
            base = f.get("sh_up_ms", f.get("ms", -1)) if f else -1
            if base > 0 and r.get("ms", -1) > 0:
                out.append(r["ms"] / base)
        return out
    sa, so = k("start_all"), k("stop_all")
    d = {}
    for kind in ("start_each", "stop_each", "ocf_start_each", "ocf_stop_each",
                 "ocf_sh_start_each", "ocf_sh_stop_each"):
        m = k(kind)
        d[kind] = med([r["ms"] for r in m])
        # starts against the sh-floor (a caller's process per instance);
        # stops against stop-all of the same rep
        d[kind + "_x"] = med(x(m, fl if "start" in kind else so))
        d[kind + "_rc"] = max([r.get("cmd_rc", 0) for r in m], default=0)
    d["sh_floor_up"] = med([r.get("sh_up_ms", -1) for r in fl])
    d["start_all_sh_x"] = med(x(sa, fl))
    for q in ("monitor_default", "ocf_monitor", "ocf_sh_monitor"):
        m = k(q.replace("_", "-")) or k(q)
        d[q + "_inter"] = (m[0]["inter_ms"] - m[0]["inter_true_ms"]) if m and "inter_ms" in m[0] else float("nan")
    t = k("timings")
    for key in ("validate_ms", "reload_ms", "list_json_ms"):
        d[key] = t[0].get(key, float("nan")) if t else float("nan")
    return d


def summarize(rows):
    true_ms = next((r["median_ms"] for r in rows if r["kind"] == "exec_floor"), float("nan"))
    by_n = {}
    for n in sorted({r["n"] for r in rows if "n" in r}):
        rs = [r for r in rows if r.get("n") == n]
        k = lambda kind: [r for r in rs if r["kind"] == kind]
        start, stop, fl = k("start_all"), k("stop_all"), k("floor")
        st, mon, mem, idle = k("status"), k("monitor"), k("memory"), k("idle")
        # per-rep ratios, then their median
        def ratios(measure, floor_key):
            out = []
            for r in measure:
                f = next((x for x in fl if x.get("rep") == r.get("rep")), None)
                if f and f.get(floor_key, 0) > 0 and r.get("ms", -1) > 0:
                    out.append(r["ms"] / f[floor_key])
            return out
        by_n[n] = dict(
            start=med([r["ms"] for r in start]), start_rng=rng([r["ms"] for r in start]),
            start_x=med(ratios(start, "up_ms")),
            stop=med([r["ms"] for r in stop]), stop_rng=rng([r["ms"] for r in stop]),
            stop_x=med(ratios(stop, "down_ms")),
            floor_up=med([r["up_ms"] for r in fl]), floor_down=med([r["down_ms"] for r in fl]),
            status=st[0]["median_ms"] if st else float("nan"),
            monitor=mon[0]["median_ms"] if mon else float("nan"),
            # /bin/true measured right after each (older results: once per run)
            status_true=st[0].get("true_ms", true_ms) if st else float("nan"),
            monitor_true=mon[0].get("true_ms", true_ms) if mon else float("nan"),
            true=st[0].get("true_ms", true_ms) if st else true_ms,
            # alternated with /bin/true (newer results): difference only
            status_inter=(st[0]["inter_ms"] - st[0]["inter_true_ms"]) if st and "inter_ms" in st[0] else float("nan"),
            monitor_inter=(mon[0]["inter_ms"] - mon[0]["inter_true_ms"]) if mon and "inter_ms" in mon[0] else float("nan"),
            rss=med([r["rss_kib"] for r in mem]) / 1024, pss=med([r["pss_kib"] for r in mem]) / 1024,
            procs=int(med([r["procs"] for r in mem])) if mem else 0,
            idle_cpu=(idle[0]["cpu_ms"] * 60 / idle[0]["secs"]) if idle else float("nan"),
            idle_secs=idle[0]["secs"] if idle else 0,
            wakeups=idle[0]["wakeups_per_s"] if idle else float("nan"),
            errors=sum(1 for r in rs if r.get("err")),
            **per_instance(rs, fl),
        )
    return by_n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--since", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runs = {name: summarize(rows) for name, rows in load(args.since).items()}
    names = [n for n in ORDER if n in runs] + sorted(n for n in runs if n not in ORDER)
    co = runs.get("cohost", {})
    lines = ["| N | supervisor | start-all ms (min-max) | x floor | x cohost | stop-all ms (min-max) | x floor | x cohost "
             "| status ms (vs true) | monitor ms (vs true) | /bin/true ms | status, monitor vs true, alternated | sup. procs | RSS MiB | PSS MiB | idle CPU ms/min | wake-ups/s | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f2 = lambda x: "-" if x != x else f"{x:.2f}"
    f1 = lambda x: "-" if x != x else f"{x:.1f}"
    # a query's median, and its difference to /bin/true measured with it
    fq = lambda x, t: "-" if x != x else f"{x:.2f} ({x - t:+.2f})" if t == t else f"{x:.2f}"
    fd = lambda x: "-" if x != x else f"{x:+.2f}"
    for n in sorted({n for r in runs.values() for n in r}):
        fl = co.get(n) or next((r[n] for r in runs.values() if n in r), None)
        lines.append(f"| {n} | fork/exec floor | {f1(fl['floor_up'])} | 1 | | {f1(fl['floor_down'])} | 1 | | | | | | | | | | | |")
        for name in names:
            d = runs[name].get(n)
            if not d:
                continue
            c = co.get(n)
            xs = lambda key: f"{d[key] / c[key]:.2f}" if c and c[key] == c[key] and c[key] > 0 else "-"
            lines.append(
                f"| {n} | {name} | {f1(d['start'])} ({f1(d['start_rng'][0])}-{f1(d['start_rng'][1])}) | {f2(d['start_x'])}x | {xs('start_x')} "
                f"| {f1(d['stop'])} ({f1(d['stop_rng'][0])}-{f1(d['stop_rng'][1])}) | {f2(d['stop_x'])}x | {xs('stop_x')} "
                f"| {fq(d['status'], d['status_true'])} | {fq(d['monitor'], d['monitor_true'])} | {f2(d['true'])} | {fd(d['status_inter'])}, {fd(d['monitor_inter'])} | {d['procs']} | {f1(d['rss'])} | {f1(d['pss'])} "
                f"| {f1(d['idle_cpu'])} | {f2(d['wakeups'])} | {d['errors']} |")
    # cohost alone: the per-instance path, the agent, the builds, timings
    lines += ["", "cohost per instance (N commands at once; starts x the sh-floor, stops x stop-all of the same rep), "
              "the OCF agent (ocf: the binary through its symlink; ocf-sh: the sh agent), `monitor` vs `/bin/true` alternated (static, default build, through the agent), "
              "and validate/reload/list --json (hyperfine medians, ms) with N running:", "",
              "| N | run | start-all x sh-floor | start-each ms | x sh-floor | stop-each ms | x stop-all | ocf start-each ms | x sh-floor "
              "| ocf stop-each ms | x stop-all | ocf-sh start-each ms | x sh-floor | ocf-sh stop-each ms | x stop-all "
              "| monitor static | monitor default build | ocf monitor | ocf-sh monitor | status ms | validate ms | reload ms | list --json ms | RSS MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        if not name.startswith("cohost"):
            continue
        for n, d in sorted(runs[name].items()):
            rc = lambda kd: "" if not d[kd + "_rc"] else f" (rc {d[kd + '_rc']})"
            lines.append(
                f"| {n} | {name} | {f2(d['start_all_sh_x'])}x | {f1(d['start_each'])}{rc('start_each')} | {f2(d['start_each_x'])}x "
                f"| {f1(d['stop_each'])}{rc('stop_each')} | {f2(d['stop_each_x'])}x | {f1(d['ocf_start_each'])}{rc('ocf_start_each')} | {f2(d['ocf_start_each_x'])}x "
                f"| {f1(d['ocf_stop_each'])}{rc('ocf_stop_each')} | {f2(d['ocf_stop_each_x'])}x "
                f"| {f1(d['ocf_sh_start_each'])}{rc('ocf_sh_start_each')} | {f2(d['ocf_sh_start_each_x'])}x "
                f"| {f1(d['ocf_sh_stop_each'])}{rc('ocf_sh_stop_each')} | {f2(d['ocf_sh_stop_each_x'])}x | {fd(d['monitor_inter'])} | {fd(d['monitor_default_inter'])} "
                f"| {fd(d['ocf_monitor_inter'])} | {fd(d['ocf_sh_monitor_inter'])} | {f2(d['status'])} | {f1(d['validate_ms'])} | {f1(d['reload_ms'])} | {f1(d['list_json_ms'])} | {f1(d['rss'])} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table)


if __name__ == "__main__":
    main()
