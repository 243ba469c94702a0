//! A fault stays in its instance (guarantees 6 and 7): each test injects
//! the fault for real — SIGKILL, a start timeout, a shared file system that
//! hangs (FUSE), lost or corrupt runtime state — and checks that the
//! instance recovers at once and that no other instance notices.

mod common;
use common::*;
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
