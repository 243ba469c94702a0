//! The state × command exit-code table of the README ("Exit codes by
//! state"), walked against the real binary: each row sets the state up for
//! real, each column is the command a cluster or init script runs.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

/// The columns, in README order.
const COLUMNS: [&str; 7] = [
    "monitor",
    "monitor --depth 0",
    "status",
    "ocf monitor",
    "ocf stop",
    "lsb status",
    "lsb stop",
];

/// The README's table: state, then the exit of each column.
const TABLE: [(&str, [i32; 7]); 10] = [
    ("stopped", [7, 7, 3, 7, 0, 3, 0]),
    ("starting", [1, 1, 3, 1, 0, 4, 0]),
    ("running", [0, 0, 0, 0, 0, 0, 0]),
    ("failed", [1, 1, 3, 1, 0, 1, 0]),
    ("partial", [1, 1, 3, 1, 0, 1, 0]),
    ("unknown ID", [2, 2, 2, 6, 0, 4, 0]),
    ("invalid config", [2, 2, 2, 6, 0, 4, 0]),
    ("daemon down", [7, 7, 3, 7, 0, 3, 0]),
    ("shared path missing", [7, 7, 3, 7, 0, 3, 0]),
    ("denied user", [4, 4, 4, 4, 4, 4, 4]),
];

fn config(h: &Harness) {
    let t = example("testsvc").display().to_string();
    h.write_config(
        "e.toml",
        &format!(
            r#"
[service.s]
command = ["{t}", "sleep"]

[service.slow]
command = ["{t}", "sleep"]
ready = {{ file = "{never}", timeout = "120s" }}

[service.dies]
command = ["{t}", "crash", "0", "3"]

[service.multi]
[[service.multi.process]]
name = "a"
command = ["{t}", "sleep"]
[[service.multi.process]]
name = "b"
command = ["{t}", "sleep"]
count = 2

[instance.e1]
service = "s"

[instance.e2]
service = "slow"

[instance.e3]
service = "dies"

[instance.e4]
service = "multi"

[instance.e5]
service = "s"
paths = {{ data = "{missing}" }}
"#,
            never = h.path("never-there").display(),
            missing = h.path("not-mounted/data").display(),
        ),
    );
}

/// A column as cohost arguments.
fn args_of<'a>(col: &str, id: &'a str) -> Vec<&'a str> {
    match col {
        "ocf monitor" => vec!["ocf", "monitor"],
        "ocf stop" => vec!["ocf", "stop"],
        "lsb status" => vec!["lsb", id, "status"],
        "lsb stop" => vec!["lsb", id, "stop"],
        "monitor --depth 0" => vec!["monitor", id, "--depth", "0"],
        "monitor" => vec!["monitor", id],
        "status" => vec!["status", id],
        other => panic!("unknown column {other}"),
    }
}

/// One column for `id`, as root or as `user` (running `bin`).
fn run_col(h: &Harness, col: &str, id: &str, user: Option<(&TestUser, &Path)>) -> i32 {
    let args = args_of(col, id);
    let mut c = match user {
        None => h.command(&args),
        Some((u, bin)) => {
            let mut c = setpriv(&u.name);
            c.arg(bin)
                .arg("--config")
                .arg(&h.config)
                .arg("--runtime-dir")
                .arg(&h.runtime)
                .args(&args);
            c.env_remove("COHOST_CONFIG")
                .env_remove("COHOST_RUNTIME_DIR");
            c
        }
    };
    c.env("OCF_RESKEY_instance", id)
        .env("OCF_RESKEY_config", &h.config)
        .env("OCF_RESKEY_runtime_dir", &h.runtime);
    run_cmd(c).code
}

/// Every column for `id`: the reading ones first, then the stops (which
/// change the state: the first stops the instance, the second must find
/// it stopped and still answer success).
fn walk(h: &Harness, id: &str, user: Option<(&TestUser, &Path)>) -> [i32; 7] {
    let mut got = [0; 7];
    let order = COLUMNS
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.ends_with("stop"))
        .chain(
            COLUMNS
                .iter()
                .enumerate()
                .filter(|(_, c)| c.ends_with("stop")),
        );
    for (i, col) in order {
        got[i] = run_col(h, col, id, user);
    }
    got
}

fn check(state: &str, got: [i32; 7]) {
    let want = TABLE.iter().find(|(s, _)| *s == state).unwrap().1;
    let diff: Vec<String> = COLUMNS
        .iter()
        .zip(want.iter().zip(got.iter()))
        .filter(|(_, (w, g))| w != g)
        .map(|(c, (w, g))| format!("{c}: README says {w}, got {g}"))
        .collect();
    assert!(diff.is_empty(), "state {state}: {}", diff.join("; "));
}

fn walk_and_check(h: &Harness, state: &str, id: &str) {
    check(state, walk(h, id, None));
}

#[test]
fn the_readme_exit_code_table_holds() {
    require_root_cgroups();
    let h = Harness::new();
    config(&h);

    // daemon down: a valid file, no daemon, nothing runs.
    walk_and_check(&h, "daemon down", "e1");
    assert!(h.daemon_pid().is_none(), "no command started a daemon");

    // invalid config, no daemon.
    let broken = h.write_config("zz-broken.toml", "[instance.x\n");
    walk_and_check(&h, "invalid config", "e1");
    std::fs::remove_file(broken).unwrap();

    h.run(&["daemon"]).ok();
    walk_and_check(&h, "unknown ID", "nope");

    h.run(&["start", "e1"]).ok();
    h.run(&["stop", "e1"]).ok();
    walk_and_check(&h, "stopped", "e1");

    h.run(&["start", "e1"]).ok();
    walk_and_check(&h, "running", "e1");

    // starting: a start in flight whose readiness never comes.
    let mut start = h.command(&["start", "e2"]);
    start.stdout(Stdio::null()).stderr(Stdio::null());
    let mut start = start.spawn().unwrap();
    h.wait_for("e2 starting", || h.state("e2") == "starting");
    walk_and_check(&h, "starting", "e2");
    let _ = start.kill();
    let _ = start.wait();

    // failed: the service exits 3 and the policy is "no".
    let _ = h.run(&["start", "e3"]);
    h.wait_for("e3 failed", || h.state("e3") == "failed");
    walk_and_check(&h, "failed", "e3");

    // partial: one of three processes killed.
    h.run(&["start", "e4"]).ok();
    let st = h.status_json("e4");
    let victim = st["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "b.2")
        .unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    // SAFETY: kill(2) of one of e4's processes.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    h.wait_for("e4 partial", || h.state("e4") == "failed");
    walk_and_check(&h, "partial", "e4");

    // shared path missing on this node (never started here; a start
    // refused for it leaves the instance failed: the "failed" row).
    walk_and_check(&h, "shared path missing", "e5");

    // denied: a user who is neither root nor in a status group.
    let user = TestUser::new("cohex");
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = h.path("cohost");
    std::fs::copy(cohost_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.run(&["start", "e1"]).ok();
    check("denied user", walk(&h, "e1", Some((&user, &bin))));
    assert_eq!(h.state("e1"), "running", "the denied stops did nothing");
}

fn ocf(h: &Harness, action: &str, id: &str, config: &Path) -> Out {
    let mut c = h.command(&["ocf", action]);
    c.env("OCF_RESKEY_instance", id)
        .env("OCF_RESKEY_config", config)
        .env("OCF_RESKEY_runtime_dir", &h.runtime);
    run_cmd(c)
}

fn sigkill_daemon(h: &Harness) {
    let pid = h.daemon_pid().expect("a daemon runs");
    // SAFETY: kill(2) of the test's own daemon.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("daemon gone", || !alive(pid));
}

#[test]
fn stop_with_the_daemon_down_answers_from_the_cgroup_not_the_config() {
    require_root_cgroups();
    let h = Harness::new();
    config(&h);
    // Nothing runs: whatever the configuration is, stop succeeds.
    let nowhere = h.path("no-such-instances.d");
    for (id, cfg) in [("e1", nowhere.as_path()), ("nope", h.config.as_path())] {
        ocf(&h, "stop", id, cfg).ok();
        let mut c = h.command(&["lsb", id, "stop"]);
        c.arg("--config").arg(cfg);
        run_cmd(c).ok();
        let mut c = h.command(&["stop", id]);
        c.arg("--config").arg(cfg);
        run_cmd(c).ok();
    }
    let broken = h.write_config("zz-broken.toml", "[instance.x\n");
    ocf(&h, "stop", "e1", &h.config).ok();
    std::fs::remove_file(&broken).unwrap();

    // Processes left while no daemon runs, no state, and a config that
    // cannot say how to stop them: stop does not pretend (monitor says
    // they run), and stops them through the cgroup.
    h.run(&["start", "e4"]).ok();
    let pids = h.members("e4");
    assert_eq!(pids.len(), 3);
    sigkill_daemon(&h);
    std::fs::remove_dir_all(h.runtime.join("state")).unwrap();
    let broken = h.write_config("zz-broken.toml", "[instance.x\n");
    let out = h.run(&["monitor", "e4"]).code(1);
    assert!(
        out.stderr.contains("no cohost daemon supervises them"),
        "{out}"
    );
    let out = ocf(&h, "stop", "e4", &h.config).ok();
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "every process stopped\n{out}"
    );
    ocf(&h, "monitor", "e4", &h.config).code(6);
    std::fs::remove_file(&broken).unwrap();
    ocf(&h, "monitor", "e4", &h.config).code(7);

    // With a good config, a daemon adopts them and stops them its way.
    h.run(&["start", "e1"]).ok();
    let pid = h.members("e1");
    sigkill_daemon(&h);
    let out = h.run(&["stop", "e1"]).ok();
    assert!(pid.iter().all(|p| !alive(*p)), "{out}");
    assert!(
        h.daemon_pid().is_some_and(alive),
        "a daemon was started to adopt"
    );
}
