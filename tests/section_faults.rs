//! A fault stays in its instance (guarantees 6 and 7): each test injects
//! the fault for real — SIGKILL, a start timeout, a shared file system that
//! hangs (FUSE), lost or corrupt runtime state — and checks that the
//! instance recovers at once and that no other instance notices.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn t() -> String {
    example("testsvc").display().to_string()
}

/// One service `s` serving on its instance's address, and `ids` of it.
fn serving_config(h: &Harness, ids: &[&str], extra_service: &str) {
    let mut cfg = format!(
        r#"
[service.s]
command = ["{t}", "serve", "${{address}}:${{port}}"]
ready   = {{ tcp = "${{address}}:${{port}}", timeout = "20s" }}
stop    = {{ timeout = "5s" }}
{extra_service}
"#,
        t = t()
    );
    for (i, id) in ids.iter().enumerate() {
        cfg.push_str(&format!(
            r#"
[instance.{id}]
service = "s"
address = "{addr}"
port    = 9003
"#,
            addr = h.addr(i as u8 + 2)
        ));
    }
    h.write_config("faults.toml", &cfg);
}

/// Start, check it answers, and return its members.
fn start_and_answer(h: &Harness, id: &str, addr: &str) -> Vec<i32> {
    h.run(&["start", id]).ok();
    let got = ask(&format!("{addr}:9003")).unwrap_or_else(|e| panic!("{id} at {addr}: {e}"));
    assert!(got.starts_with("ok"), "{id} answered {got:?}");
    let m = h.members(id);
    assert!(!m.is_empty(), "{id} has members");
    assert!(m.iter().all(|p| alive(*p)), "{id}: {m:?} alive");
    m
}

fn kill_then_start(clone3: bool) {
    require_root_cgroups();
    let mut h = Harness::new();
    if !clone3 {
        h.env("COHOST_NO_CLONE3", "1");
    }
    serving_config(&h, &["k1", "k2"], "");
    let a1 = h.addr(2);
    let other = start_and_answer(&h, "k2", &h.addr(3));
    for round in 0..3 {
        let before = start_and_answer(&h, "k1", &a1);
        h.run(&["kill", "k1"]).ok();
        h.wait_for("k1 empty after kill", || before.iter().all(|p| !alive(*p)));
        let st = h.status_json("k1");
        assert!(
            st["state"] == "stopped" || st["state"] == "failed",
            "round {round}: {st}"
        );
        let again = start_and_answer(&h, "k1", &a1);
        assert_ne!(again, before, "round {round}: a new process");
        h.run(&["stop", "k1"]).ok();
    }
    assert_eq!(h.members("k2"), other, "k2 never blinked");
}

#[test]
fn killed_instance_starts_again_clone3() {
    kill_then_start(true);
}

#[test]
fn killed_instance_starts_again_without_clone3() {
    kill_then_start(false);
}

#[test]
fn stop_escalated_to_sigkill_then_start() {
    require_root_cgroups();
    let h = Harness::new();
    let cfg = format!(
        r#"
[service.deaf]
command = ["{t}", "deaf"]
stop    = {{ timeout = "1s" }}

[instance.d1]
service = "deaf"
"#,
        t = t()
    );
    h.write_config("deaf.toml", &cfg);
    for round in 0..2 {
        h.run(&["start", "d1"]).ok();
        let before = h.members("d1");
        assert_eq!(before.len(), 1, "round {round}");
        let out = h.run(&["stop", "d1"]).ok();
        assert!(before.iter().all(|p| !alive(*p)), "round {round}: {out}");
        assert!(
            h.daemon_log().contains("SIGKILL sent"),
            "the stop escalated: {}",
            h.daemon_log()
        );
        h.run(&["start", "d1"]).ok();
        let again = h.members("d1");
        assert_eq!(again.len(), 1, "round {round}: started again");
        assert!(alive(again[0]) && again != before, "round {round}");
        assert_eq!(h.state("d1"), "running");
        h.run(&["stop", "d1"]).ok();
    }
}

#[test]
fn start_timeout_then_start() {
    require_root_cgroups();
    let h = Harness::new();
    // The readiness file appears only when the test creates it.
    let flag = h.path("ready-flag");
    let cfg = format!(
        r#"
[service.slow]
command = ["{t}", "sleep"]
ready   = {{ file = "{flag}", timeout = "1s" }}

[instance.t1]
service = "slow"
"#,
        t = t(),
        flag = flag.display()
    );
    h.write_config("slow.toml", &cfg);
    let out = h.run(&["start", "t1"]).code(1);
    assert!(out.all().contains("not ready after 1s"), "{out}");
    assert!(h.members("t1").is_empty(), "a failed start leaves nothing");
    std::fs::write(&flag, "").unwrap();
    h.run(&["start", "t1"]).ok();
    let m = h.members("t1");
    assert_eq!(m.len(), 1);
    assert!(alive(m[0]));
    // --timeout overrides the service's and the message says which.
    h.run(&["stop", "t1"]).ok();
    std::fs::remove_file(&flag).unwrap();
    let out = h.run(&["start", "t1", "--timeout", "2"]).code(1);
    assert!(out.all().contains("not ready after 2s"), "{out}");
    let out = h.run(&["start", "t1", "--timeout", "0"]).code(2);
    assert!(out.all().contains("--timeout"), "{out}");
    assert_eq!(h.state("t1"), "failed", "a refused request changes nothing");
}

#[test]
fn sigkill_under_a_restart_policy_restarts_and_answers() {
    require_root_cgroups();
    let h = Harness::new();
    serving_config(
        &h,
        &["r1"],
        r#"restart = { policy = "on-failure", max = 5, window = "1m", backoff = "100ms" }"#,
    );
    let a = h.addr(2);
    let mut before = start_and_answer(&h, "r1", &a);
    for round in 0..3 {
        // SAFETY: kill(2) of the instance's own process.
        unsafe { libc::kill(before[0], libc::SIGKILL) };
        h.wait_for("r1 restarted", || {
            let st = h.status_json("r1");
            st["state"] == "running" && st["restarts"].as_u64() == Some(round + 1)
        });
        let now = h.members("r1");
        assert_ne!(now, before, "round {round}: a new process");
        assert!(ask(&format!("{a}:9003")).unwrap().starts_with("ok"));
        before = now;
    }
}

#[test]
fn start_without_readiness_check_reports_only_a_live_process() {
    require_root_cgroups();
    let h = Harness::new();
    let cfg = format!(
        r#"
[service.nocheck]
command = ["{t}", "sleep"]

[instance.n1]
service = "nocheck"
"#,
        t = t()
    );
    h.write_config("n.toml", &cfg);
    for _ in 0..3 {
        let out = h.run(&["start", "n1"]).ok();
        let m = h.members("n1");
        assert_eq!(m.len(), 1, "{out}");
        assert!(alive(m[0]), "start said running: {out}");
        h.run(&["kill", "n1"]).ok();
        h.wait_for("n1 empty", || !alive(m[0]));
    }
}

/// Runs `cohost ARGS` and returns how long it took and its output.
fn timed(h: &Harness, args: &[&str]) -> (Duration, Out) {
    let t = Instant::now();
    let out = h.run(args);
    (t.elapsed(), out)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn a_hung_shared_disk_stays_in_its_instance() {
    require_root_cgroups();
    let h = Harness::new();
    let fs = HangFs::mount(&h.path("san-backing"), &h.path("san"));
    std::fs::create_dir_all(h.path("san/h1/data")).unwrap();
    std::fs::create_dir_all(h.path("san/h1/log")).unwrap();
    h.mkdirs(&["o1/data"]);
    let cfg = format!(
        r#"
[service.s]
command = ["{t}", "serve", "${{address}}:${{port}}"]
ready   = {{ tcp = "${{address}}:${{port}}", timeout = "20s" }}

[instance.h1]
service = "s"
address = "{a1}"
port    = 9003
paths   = {{ data = "{san}/h1/data", log = "{san}/h1/log" }}

[instance.o1]
service = "s"
address = "{a2}"
port    = 9003
paths   = {{ data = "{o1}" }}
"#,
        t = t(),
        a1 = h.addr(2),
        a2 = h.addr(3),
        san = h.path("san").display(),
        o1 = h.path("o1/data").display(),
    );
    h.write_config("hung.toml", &cfg);
    // Both work while the disk answers.
    start_and_answer(&h, "h1", &h.addr(2));
    h.run(&["stop", "h1"]).ok();
    let o1 = start_and_answer(&h, "o1", &h.addr(3));

    fs.hang();
    let starter = {
        let mut c = h.command(&["start", "h1", "--timeout", "4"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    h.wait_for("h1's start is stuck on the disk", || fs.blocked() > 0);
    assert_eq!(h.state("h1"), "starting");
    // Everything about o1 answers as fast as without the fault.
    let mut times = Vec::new();
    for _ in 0..10 {
        for args in [
            &["monitor", "o1"][..],
            &["status", "o1", "--json"],
            &["list"],
            &["monitor", "h1", "--depth", "0"],
        ] {
            let (d, out) = timed(&h, args);
            assert!(
                out.code == 0 || args[1] == "h1",
                "{args:?} during the hang: {out}"
            );
            assert!(d < Duration::from_secs(2), "{args:?} took {d:?}");
            times.push(d);
        }
    }
    let m = median(times);
    assert!(m < Duration::from_millis(50), "median {m:?} while h1 hangs");
    h.run(&["stop", "o1"]).ok();
    assert!(o1.iter().all(|p| !alive(*p)));
    let o1 = start_and_answer(&h, "o1", &h.addr(3));

    // h1's start fails at its timeout, naming what does not answer.
    let out = starter.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // Which path blocks first depends on the kernel's attribute cache:
    // any of h1's, named with its key.
    let san = h.path("san").display().to_string();
    assert!(
        text.contains("paths.") && text.contains(&san) && text.contains("did not answer within 4s"),
        "{text}"
    );
    // Nothing of h1 runs: stop succeeds at once (no fencing), kill too.
    let (d, out) = timed(&h, &["stop", "h1"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(d < Duration::from_secs(2), "stop took {d:?}");
    h.run(&["kill", "h1"]).ok();
    let (_, out) = timed(&h, &["monitor", "h1"]);
    assert_eq!(out.code, 7, "nothing runs: {out}");
    // A second start while the first check is still stuck fails at once.
    let (d, out) = timed(&h, &["start", "h1", "--timeout", "4"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.all().contains("still does not answer"), "{out}");
    assert!(d < Duration::from_secs(2), "refused at once, took {d:?}");

    // The disk returns: h1 starts without a daemon restart.
    fs.go();
    h.wait_for("the stuck check returned", || {
        h.daemon_log().contains("the storage answered again")
    });
    start_and_answer(&h, "h1", &h.addr(2));
    assert_eq!(h.members("o1"), o1, "o1 never blinked");
}

fn sigkill_daemon(h: &Harness) {
    let pid = h.daemon_pid().expect("a daemon runs");
    // SAFETY: kill(2) of the test's own daemon.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    h.wait_for("daemon gone", || !alive(pid));
}

#[test]
fn a_daemon_that_adopted_always_exits_on_sigterm() {
    require_root_cgroups();
    let h = Harness::new();
    let mut cfg = format!("[service.s]\ncommand = [\"{}\", \"sleep\"]\n", t());
    let ids: Vec<String> = (1..=10).map(|i| format!("q{i:02}")).collect();
    for id in &ids {
        cfg.push_str(&format!("\n[instance.{id}]\nservice = \"s\"\n"));
    }
    h.write_config("q.toml", &cfg);
    for round in 0..8 {
        h.run(&["up"]).ok();
        let victim = h.members(&ids[round % ids.len()]);
        sigkill_daemon(&h);
        // One dies while no supervisor runs.
        // SAFETY: kill(2) of that instance's process.
        unsafe { libc::kill(victim[0], libc::SIGKILL) };
        h.wait_for("victim gone", || !alive(victim[0]));
        h.run(&["daemon"]).ok();
        let pid = h.daemon_pid().unwrap();
        for id in &ids {
            h.run(&["stop", id]).ok();
            let st = h.status_json(id);
            let live: Vec<_> = st["processes"]
                .as_array()
                .map(|a| a.iter().filter(|p| p["alive"] == true).collect())
                .unwrap_or_default();
            assert!(live.is_empty(), "round {round}: {id} stopped, yet {st}");
        }
        // SAFETY: kill(2) of the test's own daemon.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        h.wait_for(
            &format!("round {round}: the daemon exits on SIGTERM"),
            || !alive(pid),
        );
        let list = h.run(&["list", "--json"]);
        // No daemon: `list` reads the config; nothing is left in any cgroup.
        assert!(
            kill_free(&h.cgroup_dir()),
            "round {round}: no process left: {list}"
        );
    }
}

/// True when no process is left in the subtree `dir`.
fn kill_free(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return true;
    };
    rd.flatten().filter(|e| e.path().is_dir()).all(|e| {
        std::fs::read_to_string(e.path().join("cgroup.procs")).is_ok_and(|t| t.trim().is_empty())
    })
}

fn lost_state_never_gives_a_second_copy(mutate: fn(&Path)) {
    require_root_cgroups();
    let h = Harness::new();
    serving_config(&h, &["c1", "c2"], "");
    let a = h.addr(2);
    let first = start_and_answer(&h, "c1", &a);
    let other = start_and_answer(&h, "c2", &h.addr(3));
    sigkill_daemon(&h);
    mutate(&h.runtime.join("state/c1.json"));
    // `start` launches a daemon, which finds c1's cgroup populated.
    let out = h.run(&["start", "c1"]).ok();
    assert!(out.all().contains("already running"), "{out}");
    assert_eq!(h.members("c1"), first, "the same process, no second copy");
    assert_eq!(h.state("c1"), "running");
    assert!(h.daemon_log().contains("the cgroup is the truth"));
    assert_eq!(h.members("c2"), other, "c2 adopted from its state file");
    // Kill reaches every process of the cgroup.
    h.run(&["kill", "c1"]).ok();
    h.wait_for("c1 killed", || first.iter().all(|p| !alive(*p)));
    assert_eq!(h.state("c1"), "stopped");
    start_and_answer(&h, "c1", &a);
    assert_eq!(h.members("c2"), other, "c2 never blinked");
}

#[test]
fn deleted_state_file_never_gives_a_second_copy() {
    lost_state_never_gives_a_second_copy(|p| std::fs::remove_file(p).unwrap());
}

#[test]
fn corrupt_state_file_never_gives_a_second_copy() {
    lost_state_never_gives_a_second_copy(|p| {
        std::fs::write(p, b"{\"id\": \"c1\", garbage").unwrap()
    });
}

/// A shell session of three processes outside cohost, killed on drop.
struct Session {
    shell: Child,
    kids: Vec<i32>,
}

impl Session {
    fn new() -> Session {
        let cmd = format!("{t} sleep & {t} sleep & wait", t = t());
        let shell = Command::new("setsid")
            .args(["sh", "-c", &cmd])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = shell.id() as i32;
        let children = format!("/proc/{pid}/task/{pid}/children");
        let mut kids = Vec::new();
        wait_for("the session's two children", || {
            kids = std::fs::read_to_string(&children)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            kids.len() == 2
        });
        Session { shell, kids }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for k in &self.kids {
            // SAFETY: kill(2) of the test's own grandchildren, checked alive
            // by start time when they were found (still our shell's).
            unsafe { libc::kill(*k, libc::SIGKILL) };
        }
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

#[test]
fn adoption_takes_the_recorded_pid_never_its_session() {
    require_root_cgroups();
    let h = Harness::new();
    let cfg = format!(
        "[supervisor]\ncgroup = \"off\"\n\n[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.w1]\nservice = \"s\"\n",
        t()
    );
    h.write_config("w.toml", &cfg);
    let sess = Session::new();
    let (named, sibling) = (sess.kids[0], sess.kids[1]);
    let shell = sess.shell.id() as i32;
    // A state record naming one process of that session.
    std::fs::create_dir_all(h.runtime.join("state")).unwrap();
    let saved = serde_json::json!({
        "id": "w1", "state": "running", "since": 0,
        "procs": [{"name": "s", "pid": named, "start_time": start_time(named).unwrap(),
                   "script": false, "exit": null}],
        "members": [], "cgroup": null, "restarts": 0, "last_failure": null,
        "owned_address": false, "supervisor_pid": 1, "fingerprint": 0
    });
    std::fs::write(h.runtime.join("state/w1.json"), saved.to_string()).unwrap();
    h.run(&["daemon"]).ok();
    assert_eq!(h.members("w1"), vec![named], "exactly the recorded pid");
    h.run(&["stop", "w1"]).ok();
    assert!(!alive(named));
    assert!(
        alive(sibling) && alive(shell),
        "the rest of the session untouched"
    );
}

/// A cgroup of the test's own, killed once before use; every process in
/// it (and its subtree) is killed and the tree removed on drop.
struct KilledCgroup(PathBuf);

impl KilledCgroup {
    fn new() -> KilledCgroup {
        let root = cohost::isolation::cgroup::CgroupRoot::base_for(&Default::default(), "x")
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let dir = root.join(format!("cohost-test-killseq-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        // Killed while empty: what a fence agent or a node's restart does.
        std::fs::write(dir.join("cgroup.kill"), "1").unwrap();
        KilledCgroup(dir)
    }
}

impl Drop for KilledCgroup {
    fn drop(&mut self) {
        kill_cgroup_tree(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_supervisor_in_a_once_killed_cgroup_still_starts_its_instances() {
    require_root_cgroups();
    let h = Harness::new();
    serving_config(&h, &["z1"], "");
    let cg = KilledCgroup::new();
    // The daemon is born in that cgroup, as on a node whose cgroup a fence
    // agent once killed.
    let mut daemon = Command::new("sh");
    daemon
        .args([
            "-c",
            "echo $$ > \"$1\"/cgroup.procs && exec \"$2\" --config \"$3\" --runtime-dir \"$4\" daemon",
            "sh",
        ])
        .arg(&cg.0)
        .arg(cohost_bin())
        .arg(&h.config)
        .arg(&h.runtime);
    let out = run_cmd(daemon).ok();
    let dpid = h.daemon_pid().unwrap_or_else(|| panic!("a daemon: {out}"));
    let own = std::fs::read_to_string(format!("/proc/{dpid}/cgroup")).unwrap();
    assert!(own.contains("cohost-test-killseq-"), "{own}");
    for _ in 0..2 {
        start_and_answer(&h, "z1", &h.addr(2));
        h.run(&["stop", "z1"]).ok();
    }
    assert!(
        h.daemon_log().contains("killed at birth"),
        "the probe said why children join by writing: {}",
        h.daemon_log()
    );
    h.run(&["shutdown"]).ok();
    h.wait_for("daemon gone", || !alive(dpid));
}

/// The supervisor holds h1's lock (and for a moment each of its logs) on
/// h1's shared disk. When that disk hangs, a child of another instance
/// must not hold up on those files: closing a copy of a file on FUSE (or
/// NFS with data to write) waits for the file system, so a child that
/// inherited copies of them would hang before its exec.
#[test]
fn a_hung_disk_holding_a_lock_never_stalls_another_start() {
    require_root_cgroups();
    let h = Harness::new();
    hung_lock_config(&h);
    let fs = HangFs::mount(&h.path("san-backing"), &h.path("san"));
    std::fs::create_dir_all(h.path("san/h1/data")).unwrap();
    let h1 = start_and_answer(&h, "h1", &h.addr(2));
    assert!(
        h.path("san/h1/data/.cohost.lock").exists(),
        "h1's lock is on the disk that will hang"
    );
    fs.hang();
    // o1 starts, stops and starts again while h1's disk hangs, each in the
    // time it takes without the fault (the start timeout is 20 s: a child
    // stuck on h1's lock would miss the 10 s below).
    for round in 0..3 {
        let (d, out) = timed(&h, &["start", "o1", "--timeout", "10"]);
        assert_eq!(
            out.code, 0,
            "round {round}: o1 start during the hang: {out}"
        );
        assert!(
            d < Duration::from_secs(5),
            "round {round}: start took {d:?}"
        );
        let got = ask(&format!("{}:9003", h.addr(3))).unwrap();
        assert!(got.starts_with("ok"), "o1 answered {got:?}");
        // It holds its own files and nothing of the supervisor's.
        holds_only_its_own_files(&h, "o1");
        let (d, out) = timed(&h, &["stop", "o1"]);
        assert_eq!(out.code, 0, "round {round}: o1 stop: {out}");
        assert!(d < Duration::from_secs(5), "round {round}: stop took {d:?}");
    }
    let (_, out) = timed(&h, &["monitor", "h1", "--depth", "0"]);
    assert_eq!(out.code, 0, "h1 still runs: {out}");
    assert_eq!(h.members("h1"), h1, "h1 never blinked");
    assert_eq!(fs.blocked(), 0, "nothing waited on the hung disk");
    fs.go();
    h.run(&["stop", "h1"]).ok();
}

/// h1 on the shared disk (`san/`), o1 on local storage, both locked.
fn hung_lock_config(h: &Harness) {
    h.mkdirs(&["o1/data"]);
    let cfg = format!(
        r#"
[service.s]
command = ["{t}", "serve", "${{address}}:${{port}}"]
ready   = {{ tcp = "${{address}}:${{port}}", timeout = "20s" }}

[instance.h1]
service = "s"
address = "{a1}"
port    = 9003
paths   = {{ data = "{san}/h1/data" }}
lock    = true

[instance.o1]
service = "s"
address = "{a2}"
port    = 9003
paths   = {{ data = "{o1}" }}
"#,
        t = t(),
        a1 = h.addr(2),
        a2 = h.addr(3),
        san = h.path("san").display(),
        o1 = h.path("o1/data").display(),
    );
    h.write_config("hung-lock.toml", &cfg);
}

/// The files a process of `id` holds are its own: /dev/null, its log, its
/// lock and sockets; nothing of the supervisor's or of other instances'.
fn holds_only_its_own_files(h: &Harness, id: &str) {
    for p in h.members(id) {
        let mut fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{p}/fd"))
            .unwrap()
            .flatten()
            .map(|e| {
                let l = std::fs::read_link(e.path()).unwrap_or_default();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    l.display().to_string(),
                )
            })
            .collect();
        fds.sort();
        let lock = h.path(&format!("{id}/data/.cohost.lock"));
        // fd 3 is the lock where the instance has one (data in its paths).
        let locked = lock.exists();
        let lock = lock.display().to_string();
        for (n, target) in &fds {
            let expected = match n.as_str() {
                "0" => target == "/dev/null",
                "1" | "2" => target.ends_with(&format!("/logs/{id}/s.log")),
                "3" if locked => *target == lock,
                // the service's own listening socket
                _ => target.starts_with("socket:"),
            };
            assert!(
                expected,
                "{id}'s process {p} holds fd {n} -> {target}: {fds:?}"
            );
        }
    }
}

/// The older way (COHOST_NO_FETCH=1: children get a copy of the
/// supervisor's table and close it) also leaves a child only its own.
#[test]
fn without_fetching_a_child_still_holds_only_its_own_files() {
    require_root_cgroups();
    let mut h = Harness::new();
    h.env("COHOST_NO_FETCH", "1");
    hung_lock_config(&h);
    std::fs::create_dir_all(h.path("san/h1/data")).unwrap();
    start_and_answer(&h, "h1", &h.addr(2));
    start_and_answer(&h, "o1", &h.addr(3));
    holds_only_its_own_files(&h, "o1");
    assert!(
        h.daemon_log().contains("COHOST_NO_FETCH=1"),
        "the daemon took the older way"
    );
}

/// fz (locked, on local storage) and o2, both serving.
fn frozen_config(h: &Harness) {
    h.mkdirs(&["fz/data"]);
    let cfg = format!(
        r#"
[service.s]
command = ["{t}", "serve", "${{address}}:${{port}}"]
ready   = {{ tcp = "${{address}}:${{port}}", timeout = "30s" }}

[instance.fz]
service = "s"
address = "{a1}"
port    = 9003
paths   = {{ data = "{fz}" }}
lock    = true

[instance.o2]
service = "s"
address = "{a2}"
port    = 9003
"#,
        t = t(),
        a1 = h.addr(2),
        a2 = h.addr(3),
        fz = h.path("fz/data").display(),
    );
    h.write_config("frozen.toml", &cfg);
}

/// A cgroup frozen by the test (`cgroup.freeze`), thawed on drop, pass or
/// fail (before the harness kills what is left).
struct Frozen(PathBuf);

impl Frozen {
    fn freeze(cg: &Path) -> Frozen {
        write(&cg.join("cgroup.freeze"), "1");
        let events = cg.join("cgroup.events");
        wait_for("the cgroup frozen", || {
            std::fs::read_to_string(&events).is_ok_and(|e| e.contains("frozen 1"))
        });
        Frozen(cg.to_path_buf())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
    }
}

/// An operator froze fz's cgroup (`cgroup.freeze`, as `systemctl freeze`
/// or a backup tool does) and it stays frozen when fz is started again.
/// fz's child is born in that cgroup (clone3 CLONE_INTO_CGROUP), frozen
/// before it has taken its files from the supervisor: the supervisor must
/// not wait for it (it had waited 5 s per process, answering no one, and
/// then closed the files the child had still to take, so that once
/// thawed it exited 127). Guarantee 6: o2's commands answer at once, and
/// fz starts as soon as it is thawed, with its own files.
#[test]
fn a_frozen_cgroup_never_stalls_the_daemon() {
    require_root_cgroups();
    let h = Harness::new();
    frozen_config(&h);
    start_and_answer(&h, "fz", &h.addr(2));
    h.run(&["stop", "fz"]).ok();
    let cg = h.cgroup_dir().join("fz");
    assert!(cg.join("cgroup.freeze").exists(), "fz's cgroup is kept");
    start_and_answer(&h, "o2", &h.addr(3));
    let frozen = Frozen::freeze(&cg);
    let start = h
        .command(&["start", "fz", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _start_guard = KillOnDrop::new(start.id() as i32);
    let procs = cg.join("cgroup.procs");
    wait_for("fz's child in its frozen cgroup", || {
        std::fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty())
    });
    for round in 0..3 {
        let (d, out) = timed(&h, &["status", "o2"]);
        assert_eq!(out.code, 0, "round {round}: o2 status: {out}");
        assert!(
            d < Duration::from_secs(2),
            "round {round}: o2 status took {d:?} while fz is frozen"
        );
    }
    drop(frozen);
    let out = start.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fz start once thawed: {out:?}\n{}",
        h.daemon_log()
    );
    let got = ask(&format!("{}:9003", h.addr(2))).unwrap();
    assert!(got.starts_with("ok"), "fz answered {got:?}");
    holds_only_its_own_files(&h, "fz");
    h.run(&["stop", "fz"]).ok();
    h.run(&["stop", "o2"]).ok();
}

/// Installs, in the calling process (a `pre_exec` of the daemon), a
/// seccomp filter that kills any process making pidfd_getfd(2): what a
/// systemd unit with `SystemCallFilter=~@debug` does (its default action
/// kills; @debug lists pidfd_getfd with ptrace). Inherited by every child.
fn kill_on_pidfd_getfd() -> std::io::Result<()> {
    deny_pidfd_getfd(0x8000_0000)
}

/// The same filter failing the call with EPERM (Docker's default profile).
fn eperm_on_pidfd_getfd() -> std::io::Result<()> {
    deny_pidfd_getfd(0x0005_0000 | libc::EPERM as u32)
}

fn deny_pidfd_getfd(action: u32) -> std::io::Result<()> {
    const LD_ABS_W: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const ALLOW: u32 = 0x7fff_0000;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let prog = [
        f(LD_ABS_W, 0, 0, 4),
        f(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        f(LD_ABS_W, 0, 0, 0),
        f(JEQ_K, 0, 1, libc::SYS_pidfd_getfd as u32),
        f(RET_K, 0, 0, action),
        f(RET_K, 0, 0, ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl(2) with a filter that lives through the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A daemon that may not use pidfd_getfd (seccomp kills the caller, as a
/// hardened unit does) finds it out at its start and gives its children
/// copies of its files instead: every instance starts. (Its probe child
/// had died of SIGSYS, which the daemon took for "has taken its files":
/// then every child of every instance died at birth.)
#[test]
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "the seccomp filter is written for x86-64 (audit arch, syscall number)"
)]
fn a_daemon_denied_pidfd_getfd_by_seccomp_still_starts_its_instances() {
    denied_pidfd_getfd(kill_on_pidfd_getfd, "killed by SIGSYS");
}

#[test]
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "the seccomp filter is written for x86-64 (audit arch, syscall number)"
)]
fn a_daemon_refused_pidfd_getfd_by_seccomp_still_starts_its_instances() {
    denied_pidfd_getfd(eperm_on_pidfd_getfd, "Operation not permitted");
}

fn denied_pidfd_getfd(filter: fn() -> std::io::Result<()>, why: &str) {
    use std::os::unix::process::CommandExt;

    require_root_cgroups();
    let h = Harness::new();
    serving_config(&h, &["sc1"], "");
    let mut daemon = h.command(&["daemon"]);
    // SAFETY: pre_exec runs two prctl(2) calls, async-signal-safe.
    unsafe { daemon.pre_exec(filter) };
    let out = run_cmd(daemon).ok();
    let dpid = h.daemon_pid().unwrap_or_else(|| panic!("a daemon: {out}"));
    let _daemon = KillOnDrop::new(dpid);
    let seccomp = std::fs::read_to_string(format!("/proc/{dpid}/status")).unwrap();
    assert!(seccomp.contains("Seccomp:\t2"), "filtered: {seccomp}");
    let out = h.run(&["start", "sc1", "--timeout", "20"]);
    assert_eq!(out.code, 0, "sc1 start: {out}\n{}", h.daemon_log());
    let got = ask(&format!("{}:9003", h.addr(2))).unwrap();
    assert!(got.starts_with("ok"), "sc1 answered {got:?}");
    assert!(
        h.daemon_log().contains(why),
        "the daemon said why it gives copies: {}",
        h.daemon_log()
    );
    h.run(&["stop", "sc1"]).ok();
    h.run(&["shutdown"]).ok();
    h.wait_for("daemon gone", || !alive(dpid));
}

/// Whoever runs `cohost start` may hold files without close-on-exec (a
/// shell's `exec 9>/u01/lock; flock 9`): the daemon it launches inherits
/// them. Not the daemon's: closed at its start, so that no child ever
/// holds (and closes: a close on a hung disk waits) a copy of one.
#[test]
fn a_file_inherited_from_whoever_starts_the_daemon_reaches_no_child() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    require_root_cgroups();
    let h = Harness::new();
    serving_config(&h, &["in1"], "");
    let caller = h.path("caller.lock");
    let f = std::fs::File::create(&caller).unwrap();
    let raw = f.as_raw_fd();
    let mut c = h.command(&["start", "in1"]);
    // SAFETY: dup2(2) in the child before exec; no allocation.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(raw, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = run_cmd(c);
    assert_eq!(out.code, 0, "{out}");
    drop(f);
    let holds = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .any(|l| l == caller)
    };
    let daemon = h.daemon_pid().unwrap();
    assert!(!holds(daemon), "the daemon kept the caller's file");
    for p in h.members("in1") {
        assert!(!holds(p), "in1's process {p} holds the caller's file");
    }
    holds_only_its_own_files(&h, "in1");
    h.run(&["stop", "in1"]).ok();
}
