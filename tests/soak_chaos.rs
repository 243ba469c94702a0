//! Chaos soak: 50 instances under a restart policy; for a bounded time a
//! driver SIGKILLs random instance processes and the supervisor itself,
//! starts the supervisor again, while clients query every instance. At the
//! end every instance runs exactly once, no bystander was touched and no
//! state file is corrupt. The numbers are printed.
//!
//! COHOST_SOAK_SECS sets the duration (default 60; the issue allows 300).

mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const N: usize = 50;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Processes whose environment says they belong to `id`.
fn processes_of(id: &str) -> Vec<i32> {
    let want = format!("COHOST_INSTANCE={id}");
    // Only this build's service binary: another checkout's test suite may
    // run its own soak01… on the node at the same time.
    let ours = std::fs::canonicalize(example("testsvc")).unwrap();
    cohost::process::procfs::all_pids()
        .into_iter()
        .filter(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == ours))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .map(|e| e.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|p| alive(*p))
        .collect()
}

#[test]
fn chaos_soak_every_instance_runs_exactly_once_at_the_end() {
    require_root_cgroups();
    let secs: u64 = std::env::var("COHOST_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let h = Arc::new(Harness::new());
    let mut cfg = format!(
        "[service.s]\ncommand = [\"{}\", \"sleep\"]\nrestart = {{ policy = \"always\", max = 100000, window = \"1m\", backoff = \"50ms\", max_backoff = \"200ms\" }}\nstop = {{ timeout = \"5s\" }}\n",
        example("testsvc").display()
    );
    let ids: Vec<String> = (1..=N).map(|i| format!("soak{i:02}")).collect();
    for id in &ids {
        cfg.push_str(&format!("\n[instance.{id}]\nservice = \"s\"\n"));
    }
    h.write_config("soak.toml", &cfg);
    let bystanders: Vec<Bystander> = (0..5).map(|_| Bystander::sleep()).collect();
    let by_starts: Vec<Option<u64>> = bystanders.iter().map(|b| start_time(b.pid())).collect();
    h.run(&["up"]).ok();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("soak: {N} instances, {secs} s, seed {seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (h, stop, queries, ids) = (h.clone(), stop.clone(), queries.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    let id = &ids[i % ids.len()];
                    let _ = if i % 3 == 0 {
                        h.run(&["status", id])
                    } else {
                        h.run(&["monitor", id, "--depth", "0"])
                    };
                    queries.fetch_add(1, Ordering::SeqCst);
                    i += 7;
                }
            })
        })
        .collect();

    let mut rng = Rng(seed);
    let (mut proc_kills, mut daemon_kills, mut daemon_starts) = (0u64, 0u64, 0u64);
    let cg = h.cgroup_dir();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        match rng.below(20) {
            0 => {
                // The supervisor dies...
                if let Some(pid) = h.daemon_pid().filter(|p| alive(*p)) {
                    // SAFETY: kill(2) of the test's daemon.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    daemon_kills += 1;
                    wait_for("daemon gone", || !alive(pid));
                }
            }
            1 | 2 => {
                // ... and is started again (clients may have done it already).
                if h.daemon_pid().is_none_or(|p| !alive(p)) {
                    let _ = h.run(&["daemon"]);
                    daemon_starts += 1;
                }
            }
            _ => {
                // A random instance process dies: found in its own cgroup
                // only, never by name.
                let id = &ids[rng.below(N)];
                let pids: Vec<i32> = std::fs::read_to_string(cg.join(id).join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .collect();
                if let Some(p) = pids.first() {
                    // SAFETY: kill(2) of a member of the test's cgroup.
                    unsafe { libc::kill(*p, libc::SIGKILL) };
                    proc_kills += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20 + rng.below(80) as u64));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }

    // Settle: a supervisor runs, every instance runs, exactly once.
    if h.daemon_pid().is_none_or(|p| !alive(p)) {
        h.run(&["daemon"]).ok();
        daemon_starts += 1;
    }
    h.wait_for("every instance running with one process", || {
        ids.iter().all(|id| {
            std::fs::read_to_string(cg.join(id).join("cgroup.procs"))
                .map(|t| t.lines().count() == 1)
                .unwrap_or(false)
        }) && h
            .run(&["list", "--json"])
            .stdout
            .matches("\"running\"")
            .count()
            == N
    });
    for id in &ids {
        let p = processes_of(id);
        assert_eq!(p.len(), 1, "{id} runs exactly once on the node: {p:?}");
        assert_eq!(h.members(id), p, "{id}: tracked = what runs");
    }
    for (b, st) in bystanders.iter().zip(&by_starts) {
        assert!(
            alive(b.pid()) && start_time(b.pid()) == *st,
            "bystander {} was touched",
            b.pid()
        );
    }
    for e in std::fs::read_dir(h.runtime.join("state"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|err| panic!("corrupt {}: {err}\n{text}", e.path().display()));
    }
    let restarts: u64 = ids
        .iter()
        .map(|id| h.status_json(id)["restarts"].as_u64().unwrap_or(0))
        .sum();
    let log = h.daemon_log();
    let adoptions: u64 = log
        .lines()
        .filter_map(|l| l.split("adopted=").nth(1))
        .filter_map(|n| n.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    println!(
        "soak: {proc_kills} process kills, {daemon_kills} supervisor kills, {daemon_starts} supervisor starts by the driver, \
         {} client queries, {restarts} automatic restarts, {adoptions} adoptions; every instance runs exactly once",
        queries.load(Ordering::SeqCst)
    );
    assert!(
        proc_kills > 0 && daemon_kills > 0 && adoptions > 0,
        "the soak injected faults"
    );
}
