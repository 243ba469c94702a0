//! Chaos soak: 50 instances under a restart policy, one of them on a shared
//! disk that hangs now and then (FUSE); for a bounded time a driver
//! SIGKILLs random instance processes and the supervisor itself (also in
//! the middle of a stop), corrupts or deletes state files while no
//! supervisor runs, starts the supervisor again, while clients query every
//! instance. At the end every instance runs exactly once, no bystander was
//! touched and no state file is corrupt. The numbers are printed.
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

/// Processes whose environment says they belong to `id` of this run (the
/// `SOAK_RUN` mark: another test suite on the node may run its own soak).
fn processes_of(id: &str, run: &str) -> Vec<i32> {
    let want = format!("COHOST_INSTANCE={id}");
    let mark = format!("SOAK_RUN={run}");
    cohost::process::procfs::all_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .map(|e| {
                    let mut kvs = e.split(|b| *b == 0);
                    let e2 = kvs.clone();
                    kvs.any(|kv| kv == want.as_bytes()) && { e2 }.any(|kv| kv == mark.as_bytes())
                })
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
    let run = h.dir.path().display().to_string();
    let mut cfg = format!(
        "[service.s]\ncommand = [\"{}\", \"sleep\"]\nenv = {{ SOAK_RUN = \"{run}\" }}\nrestart = {{ policy = \"always\", max = 100000, window = \"1m\", backoff = \"50ms\", max_backoff = \"200ms\" }}\nstop = {{ timeout = \"5s\" }}\n",
        example("testsvc").display()
    );
    let mut ids: Vec<String> = (1..N).map(|i| format!("soak{i:02}")).collect();
    for id in &ids {
        cfg.push_str(&format!("\n[instance.{id}]\nservice = \"s\"\n"));
    }
    // The last instance lives on a disk that hangs now and then.
    let fs = HangFs::mount(&h.path("san-backing"), &h.path("san"));
    std::fs::create_dir_all(h.path("san/hung/data")).unwrap();
    cfg.push_str(&format!(
        "\n[instance.soakhung]\nservice = \"s\"\npaths = {{ data = \"{}\" }}\nready = {{ timeout = \"3s\" }}\n",
        h.path("san/hung/data").display()
    ));
    ids.push("soakhung".into());
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
    let (mut hangs, mut mid_stop_kills, mut state_faults) = (0u64, 0u64, 0u64);
    let mut hung = false;
    let cg = h.cgroup_dir();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        match rng.below(24) {
            // A supervisor is killed only while the disk answers: one
            // killed while a worker thread of it is stuck on the hung
            // disk cannot finish dying (the thread holds its descriptor
            // table, hence its socket and runtime lock, until the disk
            // answers). That is a known limit, to be removed by doing
            // storage work in a descriptor table of its own.
            0 if !hung => {
                // The supervisor dies...
                if let Some(pid) = h.daemon_pid().filter(|p| alive(*p)) {
                    // SAFETY: kill(2) of the test's daemon.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    daemon_kills += 1;
                    wait_for("daemon gone", || !alive(pid));
                    // ... and, at times, its state is lost or corrupt.
                    let victim = h.runtime.join(format!("state/{}.json", ids[rng.below(N)]));
                    match rng.below(4) {
                        0 => {
                            let _ = std::fs::remove_file(&victim);
                            state_faults += 1;
                        }
                        1 => {
                            let _ = std::fs::write(&victim, b"{\"id\": garbage");
                            state_faults += 1;
                        }
                        _ => {}
                    }
                }
            }
            3 if !hung => {
                // The supervisor dies in the middle of a stop.
                let id = ids[rng.below(N)].clone();
                if let Some(pid) = h.daemon_pid().filter(|p| alive(*p)) {
                    let mut stopper = h.command(&["stop", &id]);
                    stopper
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null());
                    if let Ok(mut child) = stopper.spawn() {
                        std::thread::sleep(Duration::from_millis(rng.below(30) as u64));
                        // SAFETY: kill(2) of the test's daemon.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        let _ = child.wait();
                        mid_stop_kills += 1;
                        daemon_kills += 1;
                        wait_for("daemon gone", || !alive(pid));
                    }
                }
            }
            4 => {
                // The shared disk of soakhung hangs, or comes back.
                if hung {
                    fs.go();
                } else {
                    fs.hang();
                    hangs += 1;
                }
                hung = !hung;
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

    // Settle: the disk answers, a supervisor runs, every instance runs
    // (those stopped mid-way are started again), exactly once.
    fs.go();
    if h.daemon_pid().is_none_or(|p| !alive(p)) {
        h.run(&["daemon"]).ok();
        daemon_starts += 1;
    }
    h.wait_for("every instance started again", || h.run(&["up"]).code == 0);
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
        let p = processes_of(id, &run);
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
        "soak: {proc_kills} process kills, {daemon_kills} supervisor kills ({mid_stop_kills} mid-stop), \
         {daemon_starts} supervisor starts by the driver, {hangs} disk hangs, {state_faults} state files lost or corrupted, \
         {} client queries, {restarts} automatic restarts, {adoptions} adoptions; every instance runs exactly once",
        queries.load(Ordering::SeqCst)
    );
    assert!(
        proc_kills > 0 && daemon_kills > 0 && adoptions > 0,
        "the soak injected faults"
    );
}
