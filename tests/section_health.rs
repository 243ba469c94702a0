//! Health checks, restart policy, start order, event hooks, reload and
//! logs: what the cluster and the operator need to trust `monitor` and to
//! leave routine failures to cohost.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn t() -> String {
    example("testsvc").display().to_string()
}

fn hook(h: &Harness, log: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let hook = h.path("hook.sh");
    write(
        &hook,
        &format!(
            "#!/bin/sh\necho \"$COHOST_TIME|$COHOST_INSTANCE|$COHOST_EVENT|$COHOST_OLD_STATE|$COHOST_NEW_STATE|$COHOST_NODE|$COHOST_REASON\" >> {}\n",
            log.display()
        ),
    );
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    hook
}

/// (time, instance, event, old, new, node, reason) per hook line.
fn events(log: &std::path::Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.splitn(7, '|').map(String::from).collect())
        .collect()
}

#[test]
fn a_hung_service_turns_monitor_to_1_within_interval_plus_timeout() {
    let h = Harness::new();
    let (a, b) = (
        format!("{}:7050", h.addr(50)),
        format!("{}:7051", h.addr(51)),
    );
    h.write_config(
        "h.toml",
        &format!(
            "[service.hung]\ncommand = [\"{t}\", \"hang\", \"{a}\"]\nready = {{ tcp = \"{a}\" }}\nhealth = [{{ tcp = \"{a}\", expect = \"ok\", interval = \"1s\", timeout = \"1s\" }}]\n\n\
             [service.slowcheck]\ncommand = [\"{t}\", \"sleep\"]\nhealth = [{{ command = [\"sleep\", \"30\"], interval = \"1s\", timeout = \"1s\" }}]\n\n\
             [service.fine]\ncommand = [\"{t}\", \"serve\", \"{b}\"]\nready = {{ tcp = \"{b}\" }}\nhealth = [{{ tcp = \"{b}\", expect = \"ok\", interval = \"1s\", timeout = \"1s\" }}]\n\n\
             [instance.hung1]\nservice = \"hung\"\n\n[instance.slow1]\nservice = \"slowcheck\"\n\n[instance.fine1]\nservice = \"fine\"\n",
            t = t()
        ),
    );
    for id in ["hung1", "slow1", "fine1"] {
        h.run(&["start", id]).ok();
    }
    let started = Instant::now();
    // The background checks alone (depth 0 answers from them) catch it.
    h.wait_for("hung1 unhealthy", || {
        h.run(&["monitor", "hung1", "--depth", "0"]).code == 1
    });
    h.wait_for("slow1 unhealthy", || {
        h.run(&["monitor", "slow1", "--depth", "0"]).code == 1
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2 + 1 + 2),
        "interval 1s + timeout 1s (+ slack): {took:?}"
    );
    let out = h.run(&["monitor", "hung1", "--depth", "0"]).code(1);
    assert!(
        out.stderr.contains("unhealthy: tcp") && out.stderr.contains("no answer within 1s"),
        "{out}"
    );
    let out = h.run(&["monitor", "slow1", "--depth", "0"]).code(1);
    assert!(
        out.stderr.contains("command sleep 30: no answer within 1s"),
        "{out}"
    );
    // A healthy one stays 0, and status shows each check's result and age.
    h.run(&["monitor", "fine1"]).code(0);
    let st = h.status_json("hung1");
    let check = &st["checks"][1];
    assert_eq!(check["role"], "health");
    assert_eq!(check["ok"], false);
    assert!(check["age_s"].as_f64().unwrap() < 5.0, "{st}");
    assert_eq!(st["healthy"], false);
    // The hung check's command child was killed, not left to pile up.
    let out = h.run(&["status", "slow1"]).ok();
    assert!(
        out.stdout
            .contains("health     command sleep 30 FAILED: no answer within 1s"),
        "{out}"
    );
}

#[test]
fn crashes_restart_with_backoff_then_stay_failed_until_reset() {
    let h = Harness::new();
    let log = h.path("events.log");
    let hk = hook(&h, &log);
    h.write_config(
        "c.toml",
        &format!(
            "[service.crashy]\ncommand = [\"{t}\", \"crash\", \"100\", \"1\"]\nrestart = {{ policy = \"on-failure\", max = 3, window = \"1m\", backoff = \"200ms\" }}\non_event = [\"{}\"]\n\n[instance.cr1]\nservice = \"crashy\"\n",
            hk.display(),
            t = t()
        ),
    );
    h.run(&["start", "cr1"]).ok();
    h.wait_for("cr1 failed for good", || h.state("cr1") == "failed");
    let st = h.status_json("cr1");
    assert_eq!(st["restarts"], 3, "{st}");
    assert!(
        st["last_failure"]
            .as_str()
            .unwrap()
            .contains("restart limit reached (3 in 1m)"),
        "{st}"
    );
    let out = h.run(&["monitor", "cr1"]).code(1);
    assert!(out.stderr.contains("restart limit reached"), "{out}");
    // Backoff doubles: 200ms, 400ms, 800ms between a failure and the next start.
    let ev = events(&log);
    let restarting: Vec<&Vec<String>> = ev.iter().filter(|e| e[2] == "restarting").collect();
    assert_eq!(restarting.len(), 3, "{ev:?}");
    for (n, want) in ["200ms", "400ms", "800ms"].iter().enumerate() {
        assert!(
            restarting[n][6].contains(&format!("in {want}")),
            "{:?}",
            restarting[n]
        );
    }
    // It stays down: no more starts after the limit.
    let starts = ev.iter().filter(|e| e[2] == "starting").count();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        events(&log).iter().filter(|e| e[2] == "starting").count(),
        starts
    );
    // reset clears it.
    h.run(&["reset", "cr1"]).ok();
    assert_eq!(h.state("cr1"), "stopped");
    h.run(&["monitor", "cr1"]).code(7);
    assert!(h.status_json("cr1")["last_failure"].is_null());
}

#[test]
fn up_follows_after_in_order_and_runs_independent_ones_in_parallel_down_reverses() {
    let h = Harness::new();
    let log = h.path("events.log");
    let hk = hook(&h, &log);
    // Each takes ~0.6 s to become ready: order and parallelism are visible.
    let mut cfg = format!(
        "[supervisor]\non_event = [\"{}\"]\n\n[service.slow]\ncommand = [\"sh\", \"-c\", \"sleep 0.6; exec {} serve ${{address}}:${{port}}\"]\nready = {{ tcp = \"${{address}}:${{port}}\", timeout = \"20s\" }}\n",
        hk.display(),
        t()
    );
    let chain = [
        ("base", None),
        ("mid", Some("base")),
        ("top", Some("mid")),
        ("solo1", None),
        ("solo2", None),
    ];
    for (n, (id, after)) in chain.iter().enumerate() {
        cfg.push_str(&format!(
            "\n[instance.{id}]\nservice = \"slow\"\naddress = \"{}\"\nport = 7060\n",
            h.addr(60 + n as u8)
        ));
        if let Some(a) = after {
            cfg.push_str(&format!("after = [\"{a}\"]\n"));
        }
    }
    h.write_config("o.toml", &cfg);
    // start with a dependency down: refused, clearly; --with-deps starts the chain.
    let out = h.run(&["start", "top"]).code(1);
    assert!(
        out.stderr.contains("top starts after mid") && out.stderr.contains("--with-deps"),
        "{out}"
    );
    let out = h.run(&["up"]).ok();
    for id in ["base", "mid", "top", "solo1", "solo2"] {
        assert!(
            out.stdout.contains(&format!("{id} running")),
            "progress per instance\n{out}"
        );
        assert_eq!(h.state(id), "running");
    }
    h.wait_for("every ready hook ran", || {
        let ev = events(&log);
        ["base", "mid", "top", "solo1", "solo2"]
            .iter()
            .all(|id| ev.iter().any(|e| e[1] == *id && e[2] == "ready"))
    });
    let ev = events(&log);
    let at = |id: &str, what: &str| -> String {
        ev.iter()
            .find(|e| e[1] == id && e[2] == what)
            .map(|e| e[0].clone())
            .unwrap_or_else(|| panic!("no {what} of {id}: {ev:?}"))
    };
    // RFC 3339 with fixed width: string order is time order.
    assert!(
        at("base", "ready") <= at("mid", "starting"),
        "mid after base is ready"
    );
    assert!(
        at("mid", "ready") <= at("top", "starting"),
        "top after mid is ready"
    );
    assert!(
        at("solo1", "starting") < at("base", "ready")
            && at("solo2", "starting") < at("base", "ready"),
        "independent ones start at once"
    );
    assert!(
        at("solo1", "starting") < at("solo2", "ready")
            && at("solo2", "starting") < at("solo1", "ready"),
        "solo1 and solo2 in parallel"
    );

    let out = h.run(&["down"]).ok();
    assert!(out.stdout.contains("5 instance(s) stopped"), "{out}");
    // Hooks run beside supervision, never holding it up: their lines may
    // follow `down`'s answer. Wait for every "stopped" one.
    h.wait_for("every stopped hook ran", || {
        let ev = events(&log);
        ["base", "mid", "top", "solo1", "solo2"]
            .iter()
            .all(|id| ev.iter().any(|e| e[1] == *id && e[2] == "stopped"))
    });
    let ev = events(&log);
    let stopped = |id: &str| {
        ev.iter()
            .rev()
            .find(|e| e[1] == id && e[2] == "stopped")
            .map(|e| e[0].clone())
            .unwrap()
    };
    let stopping = |id: &str| {
        ev.iter()
            .rev()
            .find(|e| e[1] == id && e[2] == "stopping")
            .map(|e| e[0].clone())
            .unwrap()
    };
    assert!(
        stopped("top") <= stopping("mid") && stopped("mid") <= stopping("base"),
        "down in reverse order: {ev:?}"
    );

    let out = h.run(&["start", "top", "--with-deps"]).ok();
    assert!(
        out.stdout.contains("base running")
            && out.stdout.contains("mid running")
            && out.stdout.contains("top running"),
        "{out}"
    );
}

#[test]
fn hooks_see_every_transition_and_a_hanging_hook_is_killed() {
    let h = Harness::new();
    let log = h.path("events.log");
    let hk = hook(&h, &log);
    let hang = h.path("hang.sh");
    write(
        &hang,
        &format!(
            "#!/bin/sh\necho $$ >> {}\nexec sleep 600\n",
            h.path("hang.pids").display()
        ),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let addr = format!("{}:7070", h.addr(70));
    h.write_config(
        "e.toml",
        &format!(
            "[supervisor]\nnode = \"node7\"\non_event = [\"{hang}\"]\nhook_timeout = \"1s\"\n\n\
             [service.s]\ncommand = [\"{t}\", \"serve\", \"{addr}\"]\nready = {{ tcp = \"{addr}\" }}\nrestart = {{ policy = \"always\", backoff = \"100ms\" }}\non_event = [\"{hk}\"]\n\n[instance.ev1]\nservice = \"s\"\n",
            hang = hang.display(),
            hk = hk.display(),
            t = t()
        ),
    );
    h.run(&["start", "ev1"]).ok();
    let pid = h.status_json("ev1")["processes"][0]["pid"]
        .as_i64()
        .unwrap() as i32;
    // SAFETY: kill(2) of the instance's process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    h.wait_for("restarted", || {
        h.state("ev1") == "running"
            && h.status_json("ev1")["processes"][0]["pid"].as_i64() != Some(pid as i64)
    });
    h.run(&["stop", "ev1"]).ok();
    h.wait_for("stopped event", || {
        events(&log).iter().any(|e| e[2] == "stopped")
    });
    let seq: Vec<(String, String, String)> = events(&log)
        .iter()
        .map(|e| (e[2].clone(), e[3].clone(), e[4].clone()))
        .collect();
    let want = [
        ("starting", "stopped", "starting"),
        ("ready", "starting", "running"),
        ("stopping", "running", "stopping"),
        ("restarting", "stopping", "restarting"),
        ("starting", "restarting", "starting"),
        ("ready", "starting", "running"),
        ("stopping", "running", "stopping"),
        ("stopped", "stopping", "stopped"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(seq, want);
    let ev = events(&log);
    assert!(ev.iter().all(|e| e[1] == "ev1" && e[5] == "node7"));
    assert!(
        ev[2][6].contains("killed by signal 9"),
        "the reason of the failure: {:?}",
        ev[2]
    );
    // The hanging hooks were killed at their 1 s timeout: none is left.
    // They run one after another, so the last starts some 7 s after its
    // event: wait for one per event.
    let hang_pids = || -> Vec<i32> {
        std::fs::read_to_string(h.path("hang.pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    h.wait_for("a hanging hook per event", || hang_pids().len() >= 8);
    let pids = hang_pids();
    h.wait_for("hanging hooks killed", || pids.iter().all(|p| !alive(*p)));
}

#[test]
fn reload_adds_flags_removes_and_an_invalid_file_changes_nothing() {
    let h = Harness::new();
    let svc = format!("[service.s]\ncommand = [\"{}\", \"sleep\"]\n", t());
    let f = h.write_config(
        "r.toml",
        &format!("{svc}\n[instance.keep]\nservice = \"s\"\n\n[instance.gone]\nservice = \"s\"\n"),
    );
    h.run(&["start", "keep"]).ok();
    h.run(&["start", "gone"]).ok();
    let keep = h.members("keep");

    // Invalid: reported as FILE:LINE, nothing changes.
    std::fs::write(
        &f,
        format!("{svc}\n[instance.keep]\nservice = \"s\"\nbogus = 1\n"),
    )
    .unwrap();
    let out = h.run(&["reload"]).code(2);
    assert!(
        out.stderr
            .contains(&format!("{}:6: unknown field `bogus`", f.display()))
            && out.stderr.contains("nothing changed"),
        "{out}"
    );
    assert_eq!(h.members("keep"), keep);

    // Valid: one changed, one removed, one new.
    std::fs::write(
        &f,
        format!("{svc}\n[instance.keep]\nservice = \"s\"\nenv = {{ X = \"1\" }}\n\n[instance.fresh]\nservice = \"s\"\n"),
    )
    .unwrap();
    let out = h.run(&["reload"]).ok();
    assert!(
        out.stdout.contains("fresh added")
            && out.stdout.contains("keep changed")
            && out.stdout.contains("gone removed"),
        "{out}"
    );
    assert_eq!(h.members("keep"), keep, "running instances untouched");
    let st = h.status_json("keep");
    assert_eq!(st["definition_changed"], true);
    assert!(
        h.run(&["list"])
            .ok()
            .stdout
            .contains("definition changed by a reload")
    );
    assert_eq!(h.state("gone"), "running", "removed but left running");
    let out = h.run(&["start", "gone"]).code(1);
    let _ = out;
    h.run(&["stop", "gone"]).ok();
    let out = h.run(&["start", "gone"]).code(1);
    assert!(
        out.stderr.contains("removed from the instances file"),
        "{out}"
    );
    h.run(&["start", "fresh"]).ok();
    // The new definition applies at the next start.
    h.run(&["restart", "keep"]).ok();
    assert_eq!(h.status_json("keep")["definition_changed"], false);
    let pid = h.members("keep")[0];
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        String::from_utf8_lossy(&env)
            .split('\0')
            .any(|v| v == "X=1")
    );
    // SIGHUP rereads too.
    std::fs::write(&f, format!("{svc}\n[instance.keep]\nservice = \"s\"\nenv = {{ X = \"1\" }}\n\n[instance.fresh]\nservice = \"s\"\n\n[instance.third]\nservice = \"s\"\n")).unwrap();
    // SAFETY: kill(2) of our daemon.
    unsafe { libc::kill(h.daemon_pid().unwrap(), libc::SIGHUP) };
    h.wait_for("third known after SIGHUP", || {
        h.run(&["status", "third"]).code == 3
    });
}

#[test]
fn daemon_logs_carry_the_instance_and_can_be_json() {
    let h = Harness::new();
    h.write_config(
        "j.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.j1]\nservice = \"s\"\n",
            t()
        ),
    );
    h.run(&["daemon", "--log-format", "json"]).ok();
    h.run(&["start", "j1"]).ok();
    h.run(&["stop", "j1"]).ok();
    let log = h.daemon_log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let about_j1: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["instance"] == "j1").collect();
    assert!(about_j1.len() >= 4, "{log}");
    assert!(
        about_j1
            .iter()
            .any(|v| v["message"] == "ready" || v["message"] == "started (no readiness check)"),
        "{log}"
    );
    let out = h.run(&["logs", "j1", "-n", "1"]).ok();
    assert!(out.stdout.contains("sleeping (pid"), "{out}");
}

/// Context switches of a process so far (each wake-up is one).
fn switches(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches")
        })
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn an_idle_daemon_never_wakes_up() {
    // No health check: nothing to do, so no wake-up at all; not even for
    // the start deadline (1 s here), which became moot when it was ready.
    let h = Harness::new();
    let addr = format!("{}:7080", h.addr(80));
    h.write_config(
        "i.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"serve\", \"{addr}\"]\nready = {{ tcp = \"{addr}\", timeout = \"1s\" }}\n\n[instance.i1]\nservice = \"s\"\n",
            t()
        ),
    );
    h.run(&["start", "i1"]).ok();
    let pid = h.daemon_pid().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = switches(pid);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(switches(pid) - before, 0, "the idle daemon woke up");
}

#[test]
fn logs_follow_prints_new_lines_across_a_restart() {
    use std::io::{BufRead, BufReader};
    let h = Harness::new();
    h.mkdirs(&["f1/log"]);
    h.write_config(
        "f.toml",
        &format!(
            "[service.chat]\ncommand = [\"{}\", \"chatter\"]\n\n[instance.f1]\nservice = \"chat\"\npaths = {{ log = \"{}\" }}\n",
            t(),
            h.path("f1/log").display()
        ),
    );
    h.run(&["start", "f1"]).ok();
    let mut c = h.command(&["logs", "f1", "-f", "-n", "1"]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("chatter line "), "{first}");
    // The log is rotated at a restart (.log -> .log.1): -f reads the new one.
    h.run(&["restart", "f1"]).ok();
    let mut saw_restart = false;
    for _ in 0..2000 {
        let l = lines.next().unwrap().unwrap();
        if l == "chatter line 1" {
            saw_restart = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        saw_restart,
        "logs -f followed the new log after the restart"
    );
}
