//! Mutual takeover under a real multi-node Pacemaker cluster (issue 13,
//! story 9): corosync 3 + Pacemaker 2.1 nodes on this one host, each node
//! its own network, mount and UTS namespace and cgroup (tests/cluster/),
//! configured with the shipped examples/pacemaker/ files verbatim, driving
//! the real `cohost` binary through the shipped OCF agent.
//!
//! Every scenario checks: the client sees demo01's counter continue (no
//! reset), demo02's pids never change and every probe to it is answered,
//! nothing of a dead node is left, and `crm_mon` agrees. Takeovers print
//! their time broken down from the nodes' own logs (corosync, Pacemaker,
//! cohost). Timing goals are printed, never asserted; the deadlines only
//! keep a broken cluster from hanging the suite.
//!
//! The tests share system paths (/tmp/chn-cluster, netns and cgroups named
//! chn-*, /usr/sbin/fence_chn): they run one at a time (SUITE lock), and
//! tests/cluster/down.sh removes everything, pass or fail (Drop).

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

static SUITE: Mutex<()> = Mutex::new(());

/// Prints a figure to the real stderr, past the test harness's capture:
/// the measured times belong in every `cargo test` log (CI's included),
/// not only in those of failing tests.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }};
}

const ROOT: &str = "/tmp/chn-cluster";
const CGROOT: &str = "/sys/fs/cgroup/unified";
const VIP1: &str = "10.213.0.101:9003";
const VIP2: &str = "10.213.0.102:9003";
/// Only so that a broken cluster cannot hang the suite.
const DEADLINE: Duration = Duration::from_secs(240);

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn harness(script: &str) -> PathBuf {
    project().join("tests/cluster").join(script)
}

fn suite_lock() -> std::sync::MutexGuard<'static, ()> {
    SUITE.lock().unwrap_or_else(|e| e.into_inner())
}

fn cgroot() -> PathBuf {
    if Path::new(CGROOT).join("cgroup.procs").exists() {
        PathBuf::from(CGROOT)
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// Seconds since the Unix epoch, now.
fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {deadline:?} waiting for: {what}");
}

#[derive(Clone)]
struct Opts {
    nodes: u8,
    instances: u8,
    fencing: bool,
    cib: &'static str,
    hang: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            nodes: 2,
            instances: 2,
            fencing: false,
            cib: "xml",
            hang: false,
        }
    }
}

/// One answer of the counter: `DATE TIME counter HOST COUNT`.
#[derive(Clone, Debug)]
struct Answer {
    host: String,
    count: u64,
}

fn parse_answer(line: &str) -> Option<Answer> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 5 || f[2] != "counter" {
        return None;
    }
    Some(Answer {
        host: f[3].to_string(),
        count: f[4].parse().ok()?,
    })
}

/// One request to ADDR from the client namespace (a thread that enters
/// only the client's network namespace; setns(2) of a netns is per thread).
fn ask_client(addr: &str, timeout: Duration) -> Result<Answer, String> {
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let ns = std::fs::File::open("/run/netns/chn-cl").map_err(|e| format!("netns: {e}"))?;
        // SAFETY: setns(2) with a valid namespace fd, for this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), timeout)
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read: {e}"))?;
        parse_answer(&out).ok_or_else(|| format!("unexpected answer {out:?}"))
    })
    .join()
    .unwrap()
}

/// A probe: when (epoch seconds) and what the client got.
type Probe = (f64, Result<Answer, String>);
/// A sample of the split-brain watch: when, the nodes running the
/// instance, the locks on its lock file.
type Sample = (f64, Vec<u8>, usize);

/// A client that asks ADDR every `period`, recording each result.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Probe>>>,
}

impl Prober {
    fn start(addr: &str, period: Duration) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let addr = addr.to_string();
        let thread = std::thread::spawn(move || {
            let mut log = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let t = epoch();
                log.push((t, ask_client(&addr, Duration::from_secs(1))));
                std::thread::sleep(period);
            }
            log
        });
        Prober {
            stop,
            thread: Some(thread),
        }
    }
    fn finish(mut self) -> Vec<Probe> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Samples, on every node, which nodes run demo01 (processes in its
/// cgroup) and how many locks its lock file has, until stopped.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Watch {
    fn start(nodes: u8, id: &'static str) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let lock = PathBuf::from(format!("{ROOT}/shared/{id}/data/.cohost.lock"));
            let mut log = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let running: Vec<u8> = (1..=nodes)
                    .filter(|n| !instance_pids(*n, id).is_empty())
                    .collect();
                log.push((epoch(), running, locks_on(&lock)));
                std::thread::sleep(Duration::from_millis(20));
            }
            log
        });
        Watch {
            stop,
            thread: Some(thread),
        }
    }
    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How many entries /proc/locks has for FILE's inode.
fn locks_on(file: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(file) else {
        return 0;
    };
    let suffix = format!(":{} ", m.ino());
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&suffix))
        .count()
}

fn node_cg(n: u8) -> PathBuf {
    cgroot().join(format!("chn-n{n}"))
}

/// Every pid in a cgroup subtree.
fn cg_pids(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(cg_pids(&e.path()));
            }
        }
    }
    out.sort();
    out
}

/// The pids of instance ID on node N (its cohost cgroup on that node).
fn instance_pids(n: u8, id: &str) -> Vec<i32> {
    cg_pids(&node_cg(n).join("cohost/run-cohost").join(id))
}

fn populated(cg: &Path) -> bool {
    std::fs::read_to_string(cg.join("cgroup.events"))
        .map(|s| s.contains("populated 1"))
        .unwrap_or(false)
}

/// The TCP and UDP sockets bound or listening in network namespace NS
/// (`ss -N`, which asks the kernel through sock_diag: no scan of /proc,
/// whose ns links block while any process on the host is stuck in exec).
fn listeners_in_netns(ns: &str) -> Vec<String> {
    let mut c = Command::new("ss");
    c.args(["-N", ns, "-H", "-n", "-l", "-t", "-u"]);
    let out = run_cmd(c).ok();
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

struct Cluster {
    opts: Opts,
    t_online: f64,
    t_up: f64,
    down: bool,
}

impl Cluster {
    fn up(opts: Opts) -> Cluster {
        require_root_cgroups();
        require_tools(&[
            ("corosync", "corosync"),
            ("pacemakerd", "pacemaker"),
            ("crm_mon", "pacemaker-cli-utils"),
            ("crm", "crmsh"),
            ("nsenter", "util-linux"),
            ("ip", "iproute2"),
            ("modprobe", "kmod"),
            ("fuser", "psmisc"),
        ]);
        assert!(
            Path::new("/usr/lib/ocf/resource.d/heartbeat/IPaddr2").exists()
                && Path::new("/usr/lib/ocf/resource.d/heartbeat/Filesystem").exists(),
            "IPaddr2 / Filesystem are missing: apt-get install resource-agents (tests/setup-host.sh)"
        );
        // A previous run killed hard (no Drop) must not make this one fail
        // in an unclear way: down.sh cleans only what up.sh recorded.
        let _ = run_cmd(Command::new(harness("down.sh")));
        let mut c = Command::new(harness("up.sh"));
        c.env("COHOST_SRC", cohost_bin())
            .env("COUNTER_SRC", example("counter"))
            .env("NODES", opts.nodes.to_string())
            .env("INSTANCES", opts.instances.to_string())
            .env("FENCING", if opts.fencing { "1" } else { "0" })
            .env("CIB_FORMAT", opts.cib)
            .env("HANG", if opts.hang { "1" } else { "0" });
        let mut cluster = Cluster {
            opts,
            t_online: 0.0,
            t_up: 0.0,
            down: false,
        };
        let out = run_cmd(c);
        assert_eq!(out.code, 0, "the cluster did not come up\n{out}");
        let field = |k: &str| -> f64 {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {k} in\n{out}"))
        };
        cluster.t_online = field("t_online=");
        cluster.t_up = field("t_up=");
        say!(
            "cluster up: {} nodes online with one DC after {:.2} s; resources started, client reaches every VIP after {:.2} s (fencing {}, configuration examples/pacemaker/ as {})",
            cluster.opts.nodes,
            cluster.t_online,
            cluster.t_up,
            if cluster.opts.fencing { "on" } else { "off" },
            cluster.opts.cib
        );
        cluster
    }

    fn in_node(&self, n: u8, args: &[&str]) -> Out {
        let mut c = Command::new(harness("in-node.sh"));
        c.arg(n.to_string()).args(args);
        run_cmd(c)
    }

    fn crm_mon(&self, n: u8) -> String {
        self.in_node(n, &["crm_mon", "-1", "-r"]).ok().stdout
    }

    /// Where Pacemaker says GROUP runs (asked on node N).
    fn locate(&self, n: u8, group: &str) -> String {
        let out = self.in_node(n, &["crm_resource", "--locate", "-r", group]);
        out.stdout
            .lines()
            .find_map(|l| l.split("is running on: ").nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// `crm_resource --wait` on node N: until the cluster has nothing to do.
    fn settle(&self, n: u8) {
        self.in_node(n, &["crm_resource", "--wait", "--timeout", "180s"])
            .ok();
    }

    fn daemon_pid(&self, n: u8) -> String {
        std::fs::read_to_string(format!("{ROOT}/node{n}/run/cohost/daemon.pid"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// crm_mon on node N shows every member of demoNN-grp Started on ON.
    fn crm_mon_shows(&self, n: u8, id: &str, on: &str) -> bool {
        let m = self.crm_mon(n);
        ["fs", "ip"]
            .iter()
            .map(|s| format!("{id}-{s}"))
            .chain(std::iter::once(id.to_string()))
            .all(|r| {
                m.lines().any(|l| {
                    l.contains(&format!("* {r}\t"))
                        && l.trim_end().ends_with(&format!("Started {on}"))
                })
            })
    }

    fn pacemaker_log(&self, n: u8) -> String {
        std::fs::read_to_string(format!("{ROOT}/node{n}/log/pacemaker/pacemaker.log"))
            .unwrap_or_default()
    }

    fn fence_log(&self) -> String {
        std::fs::read_to_string(format!("{ROOT}/state/fence.log")).unwrap_or_default()
    }

    /// Tears everything down and checks that nothing is left.
    fn down(mut self) {
        self.down = true;
        let out = run_cmd(Command::new(harness("down.sh")));
        assert_eq!(out.code, 0, "something of the cluster is left\n{out}");
        assert!(
            out.stdout.contains(
                "left: 0 netns, 0 cgroups, 0 mounts under /tmp/chn-cluster, 0 fence agent"
            ),
            "{out}"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in 1..=self.opts.nodes {
                eprintln!(
                    "--- node{n}: logs in {ROOT}/node{n}/log (pacemaker/pacemaker.log, corosync/corosync.log), cohost: {ROOT}/node{n}/run/cohost/daemon.log"
                );
            }
            if let Ok(m) = std::fs::read_to_string(format!("{ROOT}/state/fence.log")) {
                eprintln!("--- fence.log\n{m}");
            }
        }
        if !self.down {
            let out = run_cmd(Command::new(harness("down.sh")));
            eprintln!("cleanup: {}", out.stdout.trim());
        }
        if std::thread::panicking() {
            // The next test's up.sh wipes the logs: keep this one's.
            let keep = format!("{ROOT}-failed-{}", epoch() as u64);
            let mut c = Command::new("cp");
            c.args(["-a", ROOT, &keep]);
            let _ = run_cmd(c);
            eprintln!("--- the failed cluster's logs are kept in {keep}");
        }
    }
}

/// What a test knows before it breaks something.
struct Before {
    c1: u64,
    demo02_pids: Vec<i32>,
    node2_daemon: String,
    probe2: Prober,
}

fn before(cl: &Cluster) -> Before {
    assert_eq!(cl.locate(2, "demo01-grp"), "node1", "{}", cl.crm_mon(2));
    assert_eq!(cl.locate(2, "demo02-grp"), "node2", "{}", cl.crm_mon(2));
    let a1 = ask_client(VIP1, Duration::from_secs(2)).expect("demo01 answers");
    assert_eq!(a1.host, "node1");
    let a2 = ask_client(VIP2, Duration::from_secs(2)).expect("demo02 answers");
    assert_eq!(a2.host, "node2");
    let demo02_pids = instance_pids(2, "demo02");
    assert!(!demo02_pids.is_empty(), "demo02 has processes on node2");
    let b = Before {
        c1: a1.count,
        demo02_pids,
        node2_daemon: cl.daemon_pid(2),
        // Every 100 ms all along: demo02 must never miss one.
        probe2: Prober::start(VIP2, Duration::from_millis(100)),
    };
    // The prober runs before anything breaks.
    wait_until("the first probe of demo02", DEADLINE, || {
        ask_client(VIP2, Duration::from_secs(1)).is_ok()
    });
    b
}

/// Waits until the client gets demo01's answer from HOST; returns it and
/// when (epoch seconds).
fn wait_answer_from(addr: &str, host: &str, deadline: Duration) -> (Answer, f64) {
    let start = Instant::now();
    loop {
        if let Ok(a) = ask_client(addr, Duration::from_millis(300))
            && a.host == host
        {
            return (a, epoch());
        }
        assert!(
            start.elapsed() < deadline,
            "{addr} did not answer from {host} within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The checks every scenario ends with, demo01 now on node ON.
fn after(cl: &Cluster, b: Before, on: &str, answer: &Answer) {
    let probes = b.probe2.finish();
    let failed: Vec<_> = probes.iter().filter(|(_, r)| r.is_err()).collect();
    let counts: Vec<u64> = probes
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|a| a.count))
        .collect();
    say!(
        "demo02 during the scenario: {} probes, {} answered, {} failed",
        probes.len(),
        counts.len(),
        failed.len()
    );
    assert!(
        failed.is_empty() && !counts.is_empty(),
        "every probe to demo02 is answered: {failed:?}"
    );
    assert!(
        counts.windows(2).all(|w| w[1] > w[0]),
        "demo02's counter only grows: {counts:?}"
    );
    assert!(
        probes
            .iter()
            .all(|(_, r)| r.as_ref().is_ok_and(|a| a.host == "node2")),
        "demo02 always answered from node2"
    );
    assert_eq!(
        instance_pids(2, "demo02"),
        b.demo02_pids,
        "demo02's processes are the same"
    );
    assert_eq!(
        cl.daemon_pid(2),
        b.node2_daemon,
        "node2's cohost daemon is the same"
    );
    assert_eq!(answer.host, on);
    assert!(
        answer.count > b.c1,
        "demo01's counter continued: {} before, {} after",
        b.c1,
        answer.count
    );
    let on_n: u8 = on.trim_start_matches("node").parse().unwrap();
    for n in 1..=cl.opts.nodes {
        if n != on_n && node_cg(n).exists() {
            assert!(
                instance_pids(n, "demo01").is_empty(),
                "nothing of demo01 left on node{n}"
            );
        }
        if n != on_n && populated(&node_cg(n)) {
            // A live node it left keeps neither its address nor its mount.
            let addrs = cl
                .in_node(n, &["ip", "-o", "addr", "show", "dev", "eth0"])
                .ok();
            assert!(
                !addrs.stdout.contains("10.213.0.101/"),
                "no VIP of demo01 left on node{n}\n{addrs}"
            );
            let mounts = cl.in_node(n, &["cat", "/proc/self/mountinfo"]).ok();
            assert!(
                !mounts.stdout.contains(" /srv/demo01 "),
                "no mount of demo01 left on node{n}"
            );
        }
    }
    assert!(
        cl.crm_mon_shows(2, "demo01", on),
        "crm_mon agrees\n{}",
        cl.crm_mon(2)
    );
    assert!(cl.crm_mon_shows(2, "demo02", "node2"), "{}", cl.crm_mon(2));
    let lock = std::fs::read_to_string(format!("{ROOT}/shared/demo01/data/.cohost.lock"))
        .unwrap_or_default();
    assert!(
        lock.contains(&format!("node={on}\n")),
        "demo01's lock names {on}: {lock}"
    );
}

/// node1 is gone: its cgroup is empty, no process is in its netns, and
/// crm_mon on node2 says so.
fn node1_gone(cl: &Cluster) {
    assert!(!populated(&node_cg(1)), "node1's cgroup is empty");
    let left = listeners_in_netns("chn-n1");
    assert!(
        left.is_empty(),
        "no socket of a process left in node1's netns: {left:?}"
    );
    // The same look-up finds node2's sockets: the check above can fail.
    assert!(
        !listeners_in_netns("chn-n2").is_empty(),
        "node2's sockets are found"
    );
    let m = cl.crm_mon(2);
    assert!(m.contains("OFFLINE: [ node1 ]"), "{m}");
}

// ------------------------------------------------------------ timeline

/// Seconds of the day (UTC; the harness runs the nodes with TZ=UTC) of a
/// log line that starts with `Mon DD HH:MM:SS.mmm` (corosync hires,
/// Pacemaker) or `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (cohost).
fn line_time(line: &str) -> Option<f64> {
    let t = if line.len() > 27 && line.as_bytes()[10] == b'T' {
        &line[11..26]
    } else {
        line.split_whitespace().nth(2)?
    };
    let mut it = t.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.trim_end_matches('Z').parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn day_secs(epoch: f64) -> f64 {
    epoch.rem_euclid(86400.0)
}

/// The first line of TEXT at or after T0 (epoch) containing every needle.
fn first_after(text: &str, t0: f64, needles: &[&str]) -> Option<f64> {
    let d0 = day_secs(t0) - 0.001;
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(line_time)
        .find(|t| *t >= d0)
}

/// Prints where the time of a takeover of demo01 to node ON went, from
/// the failure at T0 (epoch) until the client's answer at T_BACK.
fn print_breakdown(cl: &Cluster, what: &str, on: u8, t0: f64, t_back: f64) {
    let d0 = day_secs(t0);
    let coro = std::fs::read_to_string(format!("{ROOT}/node{on}/log/corosync/corosync.log"))
        .unwrap_or_default();
    let membership = first_after(&coro, t0, &["A new membership"]);
    // The DC logs the decision; with three nodes it may be another survivor.
    let earliest = |needles: &[&str]| {
        (1..=cl.opts.nodes)
            .filter_map(|n| first_after(&cl.pacemaker_log(n), t0, needles))
            .reduce(f64::min)
    };
    let fenced = earliest(&["Operation 'reboot' targeting node1", "OK"]);
    let first_start = earliest(&["Initiating start operation demo01-fs_start_0"]);
    say!(
        "takeover of demo01 to node{on} ({what}): {:.2} s from the failure to the client's first answer from node{on}",
        t_back - t0
    );
    print_rows(&[
        (
            "failure -> corosync's new membership (detection)",
            Some(d0),
            membership,
        ),
        (
            "membership -> first start op of demo01-grp (Pacemaker's decision)",
            membership.or(Some(d0)),
            first_start,
        ),
        (
            "  of which: fencing of node1 done at (after membership)",
            membership,
            fenced,
        ),
    ]);
    print_start(cl, on, t0, t_back);
}

fn ms(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:8.1} ms", (b - a) * 1000.0),
        _ => "       ? (no log line)".to_string(),
    }
}

fn print_rows(rows: &[(&str, Option<f64>, Option<f64>)]) {
    for (label, a, b) in rows {
        say!("  {label:<68} {}", ms(*a, *b));
    }
}

/// The start of demo01 on node ON after T0, part by part, from
/// Pacemaker's and cohost's logs there, until the client's answer.
fn print_start(cl: &Cluster, on: u8, t0: f64, t_back: f64) {
    let pcmk = cl.pacemaker_log(on);
    let cohost = std::fs::read_to_string(format!("{ROOT}/node{on}/run/cohost/daemon.log"))
        .unwrap_or_default();
    let after = |text: &str, what: &str| first_after(text, t0, &[what]);
    let fs_start = after(
        &pcmk,
        "Requesting local execution of start operation for demo01-fs ",
    );
    let fs_done = after(&pcmk, "Result of start operation for demo01-fs ");
    let ip_start = after(
        &pcmk,
        "Requesting local execution of start operation for demo01-ip ",
    );
    let ip_done = after(&pcmk, "Result of start operation for demo01-ip ");
    let agent_exec = after(&pcmk, "executing - rsc:demo01 action:start");
    let agent_done = after(&pcmk, "Result of start operation for demo01 ");
    let requested = after(&cohost, "start requested instance=demo01");
    let address = after(&cohost, "address configured instance=demo01");
    let exec = after(&cohost, "started instance=demo01");
    let ready = after(&cohost, "ready instance=demo01");
    print_rows(&[
        ("Filesystem start (request -> result)", fs_start, fs_done),
        ("IPaddr2 start (request -> result)", ip_start, ip_done),
        (
            "cohost: agent exec -> start request in the daemon",
            agent_exec,
            requested,
        ),
        ("cohost: address wait", requested, address),
        ("cohost: lock + setup + exec of the service", address, exec),
        (
            "service's own start (exec -> readiness check passes)",
            exec,
            ready,
        ),
        (
            "cohost: ready -> start result in Pacemaker (agent exit)",
            ready,
            agent_done,
        ),
        (
            "start result -> the client's first answer",
            agent_done,
            Some(day_secs(t_back)),
        ),
    ]);
    if let (Some(ae), Some(rq), Some(ad), Some(ex), Some(rd), Some(dn)) =
        (agent_exec, requested, address, exec, ready, agent_done)
    {
        // Pacemaker's log has ms resolution and cohost's "ready" line may
        // be written just after its answer: a negative last part counts 0.
        let own = (rq - ae) + (ex - ad) + (dn - rd).max(0.0);
        say!(
            "  cohost's own share (agent exec -> service exec, minus the address wait, plus ready -> agent exit): {:.1} ms (goal: under 20 ms; this is the debug build)",
            own * 1000.0
        );
    }
}

// ------------------------------------------------------------ scenarios

/// Every process of node1 dies at once (its cgroup's cgroup.kill) and its
/// link goes dark; returns the time of the kill.
fn kill_node1() -> f64 {
    let n = cg_pids(&node_cg(1)).len();
    let t0 = epoch();
    std::fs::write(node_cg(1).join("cgroup.kill"), "1").unwrap();
    ip(&["-n", "chn-sw", "link", "set", "chn-n1-port", "down"]);
    wait_until("node1's processes to be gone", DEADLINE, || {
        !populated(&node_cg(1))
    });
    say!(
        "node1 killed: {n} processes SIGKILLed through its cgroup.kill, its switch port down; all gone {:.0} ms later",
        (epoch() - t0) * 1000.0
    );
    t0
}

fn takeover_after_node1_is_killed(fencing: bool) {
    let _g = suite_lock();
    let cl = Cluster::up(Opts {
        fencing,
        ..Default::default()
    });
    let b = before(&cl);
    let t0 = kill_node1();
    let (a, t_back) = wait_answer_from(VIP1, "node2", DEADLINE);
    cl.settle(2);
    let what = if fencing {
        "node1 killed, fencing on"
    } else {
        "node1 killed, fencing off"
    };
    print_breakdown(&cl, what, 2, t0, t_back);
    after(&cl, b, "node2", &a);
    node1_gone(&cl);
    if fencing {
        assert!(
            cl.fence_log().contains("port=node1: done: node is off"),
            "node2 fenced node1 before it took over\n{}",
            cl.fence_log()
        );
    } else {
        assert!(cl.fence_log().is_empty(), "no fencing: {}", cl.fence_log());
    }
    cl.down();
}

#[test]
fn node1_killed_without_fencing_node2_takes_demo01_over() {
    takeover_after_node1_is_killed(false);
}

#[test]
fn node1_killed_with_fencing_node2_fences_it_and_takes_demo01_over() {
    takeover_after_node1_is_killed(true);
}

#[test]
fn node1_partitioned_but_alive_is_fenced_and_demo01_never_runs_twice() {
    let _g = suite_lock();
    let cl = Cluster::up(Opts {
        fencing: true,
        ..Default::default()
    });
    let b = before(&cl);
    let watch = Watch::start(2, "demo01");
    let n1 = cg_pids(&node_cg(1)).len();
    let t0 = epoch();
    // node1 stays alive, its link goes down: a split brain, unless fenced.
    ip(&["-n", "chn-sw", "link", "set", "chn-n1-port", "down"]);
    say!("node1 partitioned: switch port down, its {n1} processes keep running");
    let (a, t_back) = wait_answer_from(VIP1, "node2", DEADLINE);
    cl.settle(2);
    let samples = watch.finish();
    print_breakdown(&cl, "node1 partitioned, fenced by node2", 2, t0, t_back);
    let twice: Vec<_> = samples.iter().filter(|(_, on, _)| on.len() > 1).collect();
    let two_locks: Vec<_> = samples.iter().filter(|(_, _, l)| *l > 1).collect();
    let nodes_seen: BTreeSet<u8> = samples.iter().flat_map(|(_, on, _)| on.clone()).collect();
    say!(
        "split-brain watch: {} samples of both nodes' demo01 cgroups and its lock every 20 ms; demo01 ran on nodes {nodes_seen:?}, on two at once in {} samples, two locks in {}",
        samples.len(),
        twice.len(),
        two_locks.len()
    );
    assert!(
        twice.is_empty(),
        "demo01 ran on two nodes at once: {twice:?}"
    );
    assert!(two_locks.is_empty(), "two locks on demo01's lock file");
    assert!(
        samples.iter().all(|(_, _, l)| *l <= 1),
        "at most one lock at every sample"
    );
    assert!(
        samples.first().is_some_and(|(_, on, _)| on == &[1])
            && samples.last().is_some_and(|(_, on, _)| on == &[2]),
        "the watch saw demo01 on node1 first and on node2 last"
    );
    assert!(
        cl.fence_log().contains("port=node1: done: node is off"),
        "node2 fenced node1\n{}",
        cl.fence_log()
    );
    assert!(
        !cl.fence_log().contains("port=node2: done"),
        "node2 was not fenced (the fence race delay)\n{}",
        cl.fence_log()
    );
    after(&cl, b, "node2", &a);
    node1_gone(&cl);
    cl.down();
}

#[test]
fn planned_switchover_with_crm_resource_move_and_clear() {
    let _g = suite_lock();
    // This one loads the shipped crm shell text instead of the CIB XML.
    let cl = Cluster::up(Opts {
        cib: "crm",
        ..Default::default()
    });
    let b = before(&cl);
    let t0 = epoch();
    cl.in_node(
        2,
        &[
            "crm_resource",
            "--move",
            "-r",
            "demo01-grp",
            "--node",
            "node2",
        ],
    )
    .ok();
    let (a, t_back) = wait_answer_from(VIP1, "node2", DEADLINE);
    say!(
        "switchover demo01 node1 -> node2: the client's first answer from node2 {:.2} s after crm_resource --move",
        t_back - t0
    );
    cl.settle(2);
    assert!(
        a.count > b.c1,
        "the counter continued: {} -> {}",
        b.c1,
        a.count
    );
    assert!(cl.crm_mon_shows(2, "demo01", "node2"), "{}", cl.crm_mon(2));
    assert!(
        instance_pids(1, "demo01").is_empty(),
        "nothing of demo01 on node1"
    );
    // --clear removes the move's constraint; resource-stickiness keeps
    // demo01 where it runs (node2: 50 + 3 x 100 > node1: 100).
    cl.in_node(2, &["crm_resource", "--clear", "-r", "demo01-grp"])
        .ok();
    cl.settle(2);
    assert_eq!(
        cl.locate(2, "demo01-grp"),
        "node2",
        "stickiness: no failback on --clear"
    );
    // Back home: move to node1, then clear.
    let t1 = epoch();
    cl.in_node(
        2,
        &[
            "crm_resource",
            "--move",
            "-r",
            "demo01-grp",
            "--node",
            "node1",
        ],
    )
    .ok();
    let (back, t_home) = wait_answer_from(VIP1, "node1", DEADLINE);
    say!(
        "switchover demo01 node2 -> node1: the client's first answer from node1 {:.2} s after crm_resource --move",
        t_home - t1
    );
    cl.in_node(2, &["crm_resource", "--clear", "-r", "demo01-grp"])
        .ok();
    cl.settle(2);
    assert!(back.count > a.count, "{} -> {}", a.count, back.count);
    let cons = cl
        .in_node(2, &["cibadmin", "--query", "--scope", "constraints"])
        .ok();
    assert!(
        !cons.stdout.contains("cli-"),
        "no move constraint left\n{cons}"
    );
    let last = ask_client(VIP1, Duration::from_secs(2)).expect("demo01 answers");
    after(&cl, b, "node1", &last);
    assert!(instance_pids(2, "demo01").is_empty());
    cl.down();
}

/// The fail count of RSC on NODE (0 when none).
fn failcount(cl: &Cluster, rsc: &str, node: &str) -> u32 {
    let out = cl.in_node(2, &["crm_failcount", "-r", rsc, "-G", "-N", node]);
    out.stdout
        .split("value=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn killed_service_is_recovered_in_place_then_moved_beyond_migration_threshold() {
    let _g = suite_lock();
    let cl = Cluster::up(Opts::default());
    let b = before(&cl);
    let mut last = b.c1;
    // migration-threshold=3 (examples/pacemaker): two failures are
    // recovered on node1, the third moves the group to node2.
    for round in 1..=3u32 {
        let pids = instance_pids(1, "demo01");
        assert_eq!(pids.len(), 1, "one counter process: {pids:?}");
        let t0 = epoch();
        // SAFETY: kill(2) of demo01's counter, read from its cgroup.
        unsafe { libc::kill(pids[0], libc::SIGKILL) };
        wait_until("Pacemaker to count the failure", DEADLINE, || {
            failcount(&cl, "demo01", "node1") >= round
        });
        let t_seen = epoch();
        let on = if round < 3 { "node1" } else { "node2" };
        let (a, t_back) = wait_answer_from(VIP1, on, DEADLINE);
        say!(
            "kill {round} of demo01's counter behind Pacemaker's back: fail-count {round} after {:.2} s (the 10 s monitor), answering again from {on} after {:.2} s",
            t_seen - t0,
            t_back - t0
        );
        assert!(
            a.count > last,
            "the counter continued: {last} -> {}",
            a.count
        );
        last = a.count;
        cl.settle(2);
        if round < 3 {
            assert_eq!(cl.locate(2, "demo01-grp"), "node1", "recovered in place");
            assert_ne!(instance_pids(1, "demo01"), pids, "a new process");
        }
    }
    assert_eq!(failcount(&cl, "demo01", "node1"), 3);
    let a = ask_client(VIP1, Duration::from_secs(2)).unwrap();
    after(&cl, b, "node2", &a);
    let m = cl
        .in_node(2, &["crm_mon", "-1", "--failcounts"])
        .ok()
        .stdout;
    assert!(m.contains("migration-threshold=3"), "{m}");
    // The operator's cleanup resets it; stickiness keeps demo01 on node2.
    cl.in_node(2, &["crm_resource", "--cleanup", "-r", "demo01"])
        .ok();
    cl.settle(2);
    assert_eq!(failcount(&cl, "demo01", "node1"), 0);
    assert_eq!(cl.locate(2, "demo01-grp"), "node2");
    cl.down();
}

/// Sends one command to hangfs's control socket; returns its answer.
fn hangfs(cmd: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(format!("{ROOT}/state/hang.sock"))
        .expect("hangfs control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
    let mut out = [0u8; 64];
    let n = s.read(&mut out).unwrap_or(0);
    String::from_utf8_lossy(&out[..n]).trim().to_string()
}

#[test]
fn hung_storage_of_demo01_on_node1_moves_it_and_demo02_never_blinks() {
    let _g = suite_lock();
    let cl = Cluster::up(Opts {
        fencing: true,
        hang: true,
        ..Default::default()
    });
    let b = before(&cl);
    assert_eq!(hangfs("count"), "ok 0");
    let t0 = epoch();
    assert_eq!(hangfs("hang"), "ok");
    say!("node1: demo01's SAN path hangs (hangfs: every operation blocks)");
    // The client keeps asking demo01 (a request makes the counter touch
    // its data file, and block in it) until node2 answers.
    let (a, t_back) = wait_answer_from(VIP1, "node2", Duration::from_secs(400));
    cl.settle(2);
    let n1 = cl.pacemaker_log(1);
    let n2 = cl.pacemaker_log(2);
    let d1 =
        std::fs::read_to_string(format!("{ROOT}/node1/run/cohost/daemon.log")).unwrap_or_default();
    let unhealthy = first_after(&d1, t0, &["unhealthy", "instance=demo01"]);
    let monitor_failed = first_after(
        &n1,
        t0,
        &["Result of monitor operation for demo01 on node1: error"],
    );
    let stop_failed = first_after(
        &n1,
        t0,
        &["Result of stop operation for demo01 on node1: error"],
    );
    let fenced = first_after(&n2, t0, &["Operation 'reboot' targeting node1", "OK"]);
    say!(
        "takeover of demo01 to node2 (its storage hung on node1): {:.2} s from the hang to the client's first answer from node2",
        t_back - t0
    );
    print_rows(&[
        (
            "hang -> cohost's health check of demo01 fails on node1",
            Some(day_secs(t0)),
            unhealthy,
        ),
        (
            "health check -> Pacemaker's monitor of demo01 fails (10 s interval)",
            unhealthy,
            monitor_failed,
        ),
        (
            "monitor failed -> stop of demo01 on node1 fails (SIGTERM, SIGKILL)",
            monitor_failed,
            stop_failed,
        ),
        ("stop failed -> node2 has fenced node1", stop_failed, fenced),
    ]);
    print_start(&cl, 2, t0, t_back);
    let interesting: Vec<&str> = n1
        .lines()
        .chain(n2.lines())
        .filter(|l| line_time(l).is_some_and(|t| t >= day_secs(t0)))
        .filter(|l| {
            (l.contains("demo01") && l.contains("Result of") && !l.contains(": ok"))
                || l.contains("will be fenced")
                || (l.contains("targeting node1") && l.contains("OK"))
        })
        .collect();
    say!(
        "the nodes' Pacemaker logs about it:\n  {}",
        interesting.join("\n  ")
    );
    assert!(
        monitor_failed.is_some(),
        "node1's monitor of demo01 failed\n{}",
        interesting.join("\n")
    );
    if cl.fence_log().contains("port=node1: done: node is off") {
        // Fencing is right only when the stop could not finish: cohost's
        // stop of demo01 on node1 failed first, naming processes that a
        // SIGKILL cannot end (uninterruptible sleep on the hung path).
        let why = n1
            .lines()
            .find(|l| l.contains("Result of stop operation for demo01 on node1: error"))
            .unwrap_or("");
        say!("node1 was fenced after its stop of demo01 could not finish: {why}");
        assert!(
            stop_failed.is_some() && fenced.is_some_and(|f| f > stop_failed.unwrap()),
            "node1 was fenced only after a failed stop\n{}",
            interesting.join("\n")
        );
        assert!(why.contains("did not exit after SIGKILL"), "{why}");
        node1_gone(&cl);
    } else {
        say!("node1 was not fenced: its stop of demo01 succeeded");
        assert!(stop_failed.is_none(), "a failed stop is fenced");
        assert!(cl.crm_mon(2).contains("Online: [ node1 node2 ]"));
        hangfs("go");
    }
    after(&cl, b, "node2", &a);
    cl.down();
}

#[test]
fn failback_after_node1_returns_waits_for_the_operator() {
    let _g = suite_lock();
    let cl = Cluster::up(Opts {
        fencing: true,
        ..Default::default()
    });
    let b = before(&cl);
    let t0 = kill_node1();
    let (a, t_back) = wait_answer_from(VIP1, "node2", DEADLINE);
    say!("takeover after the kill: {:.2} s", t_back - t0);
    cl.settle(2);
    let demo01_on_2 = instance_pids(2, "demo01");
    // node1 comes back (a fresh network stack, as after a reboot).
    let t1 = epoch();
    let mut c = Command::new(harness("node-up.sh"));
    c.arg("1");
    let out = run_cmd(c);
    assert_eq!(out.code, 0, "node1 rejoins\n{out}");
    cl.settle(2);
    say!(
        "node1 rejoined, all online and the cluster idle after {:.2} s",
        epoch() - t1
    );
    assert!(cl.crm_mon(1).contains("Online: [ node1 node2 ]"));
    // resource-stickiness: demo01 stays on node2, untouched.
    assert_eq!(cl.locate(2, "demo01-grp"), "node2", "{}", cl.crm_mon(2));
    assert_eq!(
        instance_pids(2, "demo01"),
        demo01_on_2,
        "demo01 did not move"
    );
    assert!(instance_pids(1, "demo01").is_empty());
    let still = ask_client(VIP1, Duration::from_secs(2)).unwrap();
    assert_eq!(still.host, "node2");
    assert!(still.count > a.count);
    // The operator fails it back: move to node1, then clear the constraint.
    let t2 = epoch();
    cl.in_node(
        2,
        &[
            "crm_resource",
            "--move",
            "-r",
            "demo01-grp",
            "--node",
            "node1",
        ],
    )
    .ok();
    let (home, t_home) = wait_answer_from(VIP1, "node1", DEADLINE);
    say!(
        "failback by the operator: demo01 answers from node1 {:.2} s after crm_resource --move",
        t_home - t2
    );
    cl.in_node(2, &["crm_resource", "--clear", "-r", "demo01-grp"])
        .ok();
    cl.settle(2);
    assert!(home.count > still.count);
    let last = ask_client(VIP1, Duration::from_secs(2)).unwrap();
    after(&cl, b, "node1", &last);
    assert!(
        instance_pids(2, "demo01").is_empty(),
        "nothing of demo01 left on node2"
    );
    cl.down();
}

#[test]
fn three_nodes_with_real_quorum_node1_killed_and_fenced() {
    let _g = suite_lock();
    // Three instances on three nodes: examples/pacemaker/generate.sh 3.
    let cl = Cluster::up(Opts {
        nodes: 3,
        instances: 3,
        fencing: true,
        ..Default::default()
    });
    let q = cl.in_node(2, &["corosync-quorumtool", "-s"]).ok();
    assert!(q.stdout.contains("Expected votes:   3"), "{q}");
    let b = before(&cl);
    let demo03 = instance_pids(3, "demo03");
    assert!(!demo03.is_empty());
    let t0 = kill_node1();
    let (a, t_back) = wait_answer_from(VIP1, "node2", DEADLINE);
    cl.settle(2);
    print_breakdown(&cl, "3 nodes, node1 killed, fencing on", 2, t0, t_back);
    let q = cl.in_node(2, &["corosync-quorumtool", "-s"]).ok();
    assert!(
        q.stdout.contains("Quorate:          Yes") && q.stdout.contains("Total votes:      2"),
        "two of three votes: still quorate\n{q}"
    );
    assert_eq!(
        instance_pids(3, "demo03"),
        demo03,
        "demo03 on node3 untouched"
    );
    assert!(cl.crm_mon_shows(3, "demo03", "node3"));
    after(&cl, b, "node2", &a);
    node1_gone(&cl);
    cl.down();
}

#[test]
fn shipped_pacemaker_files_are_the_generators_output_and_valid() {
    let dir = project().join("examples/pacemaker");
    for fmt in ["xml", "crm", "pcs", "toml"] {
        let mut c = Command::new(dir.join("generate.sh"));
        c.args(["2", fmt]);
        let out = run_cmd(c).ok();
        let shipped = std::fs::read_to_string(dir.join(format!("two-instances.{fmt}"))).unwrap();
        assert_eq!(
            out.stdout, shipped,
            "examples/pacemaker/two-instances.{fmt} is not `generate.sh 2 {fmt}`: regenerate it"
        );
    }
    require_tools(&[
        ("cibadmin", "pacemaker-cli-utils"),
        ("crm_verify", "pacemaker-cli-utils"),
    ]);
    let h = Harness::new();
    let cib = h.path("cib.xml");
    let empty = run_cmd({
        let mut c = Command::new("cibadmin");
        c.arg("--empty");
        c
    })
    .ok();
    std::fs::write(&cib, empty.stdout).unwrap();
    for n in ["2", "3"] {
        let xml = h.path(&format!("config-{n}.xml"));
        let mut c = Command::new(dir.join("generate.sh"));
        c.args([n, "xml"]);
        std::fs::write(&xml, run_cmd(c).ok().stdout).unwrap();
        let mut c = Command::new("cibadmin");
        c.env("CIB_file", &cib).args([
            "--modify",
            "--allow-create",
            "--scope",
            "configuration",
            "--xml-file",
        ]);
        c.arg(&xml);
        run_cmd(c).ok();
    }
    let mut c = Command::new("crm_attribute");
    c.env("CIB_file", &cib).args([
        "--type",
        "crm_config",
        "--name",
        "stonith-enabled",
        "--update",
        "false",
    ]);
    run_cmd(c).ok();
    let mut c = Command::new("crm_verify");
    c.env("CIB_file", &cib).args(["-L", "-V"]);
    let out = run_cmd(c);
    assert_eq!(out.code, 0, "crm_verify accepts the configuration\n{out}");
    h.write_config(
        "demo.toml",
        &std::fs::read_to_string(dir.join("two-instances.toml")).unwrap(),
    );
    h.run(&["validate"]).ok();
}
