//! The core supervisor, end to end with the real binary and real
//! processes: stories 1 and 5, forking services, readiness failures,
//! concurrent clients, the instance environment, logs.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn counter_config(h: &Harness, ids: &[(&str, u8)]) -> String {
    let mut s = format!(
        "[service.counter]\ncommand = [\"{}\"]\nready = {{ tcp = \"${{address}}:${{port}}\", timeout = \"20s\" }}\nstop = {{ timeout = \"5s\" }}\n",
        example("counter").display()
    );
    for (id, a) in ids {
        h.mkdirs(&[&format!("{id}/data"), &format!("{id}/log")]);
        s.push_str(&format!(
            "\n[instance.{id}]\nservice = \"counter\"\naddress = \"{}\"\nport = 9003\nhostname = \"{id}.example\"\npaths = {{ data = \"{}\", log = \"{}\" }}\n",
            h.addr(*a),
            h.path(&format!("{id}/data")).display(),
            h.path(&format!("{id}/log")).display()
        ));
    }
    s
}

/// The listening socket inodes of a process.
fn socket_inodes(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .filter(|l| l.starts_with("socket:"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn counter_of(line: &str) -> u64 {
    line.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {line:?}"))
}

#[test]
fn story1_two_copies_one_port_stop_one_leaves_the_other() {
    require_root_cgroups();
    let h = Harness::new();
    h.write_config(
        "demo.toml",
        &counter_config(&h, &[("essrv01", 2), ("essrv02", 3)]),
    );
    h.run(&["start", "essrv01"]).ok();
    h.run(&["start", "essrv02"]).ok();
    let (a1, a2) = (format!("{}:9003", h.addr(2)), format!("{}:9003", h.addr(3)));
    let r1 = ask(&a1).unwrap();
    let r2 = ask(&a2).unwrap();
    assert!(
        r1.contains(" counter ") && r2.contains(" counter "),
        "{r1} {r2}"
    );

    let m1 = h.members("essrv01");
    let m2 = h.members("essrv02");
    assert!(!m1.is_empty() && !m2.is_empty());
    assert!(
        m1.iter().all(|p| !m2.contains(p)),
        "separate processes: {m1:?} {m2:?}"
    );
    let starts2: Vec<Option<u64>> = m2.iter().map(|p| start_time(*p)).collect();
    let sockets2: Vec<Vec<String>> = m2.iter().map(|p| socket_inodes(*p)).collect();

    let stop = h.run(&["stop", "essrv01"]).ok();
    assert!(stop.stdout.contains("essrv01 is stopped"), "{stop}");
    for p in &m1 {
        assert!(!alive(*p), "essrv01 process {p} survived its stop");
    }
    assert!(ask(&a1).is_err(), "essrv01 still answers after stop");
    // essrv02: same pids (same start times, not reused), same sockets, still answering.
    assert_eq!(h.members("essrv02"), m2);
    assert_eq!(
        m2.iter().map(|p| start_time(*p)).collect::<Vec<_>>(),
        starts2
    );
    assert_eq!(
        m2.iter().map(|p| socket_inodes(*p)).collect::<Vec<_>>(),
        sockets2
    );
    let r2b = ask(&a2).unwrap();
    assert!(counter_of(&r2b) > counter_of(&r2), "{r2} then {r2b}");
    h.run(&["monitor", "essrv02"]).code(0);
    h.run(&["monitor", "essrv01"]).code(7);
}

#[test]
fn story5_hostile_service_is_stopped_completely_and_nothing_else() {
    require_root_cgroups();
    let h = Harness::new();
    let addr = format!("{}:7005", h.addr(5));
    write_hostile(&h, "hostile.toml", "h1", &addr, Some("20s"), "2s");
    let bystander = Bystander::sleep();
    h.run(&["start", "h1"]).ok();
    let members = h.members("h1");
    assert!(
        members.len() >= 2,
        "main process and the setsid'd grandchild: {members:?}"
    );
    // The grandchild left the session of the process cohost started.
    let sessions: std::collections::BTreeSet<i32> = members
        .iter()
        .filter_map(|p| cohost::process::procfs::stat(*p))
        .map(|s| s.session)
        .collect();
    assert!(
        sessions.len() >= 2,
        "the hostile service escaped into its own session: {sessions:?}"
    );

    let t = Instant::now();
    let out = h.run(&["stop", "h1"]).ok();
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "stop took {took:?}, more than the 2 s timeout + 1 s\n{out}"
    );
    for p in &members {
        assert!(!alive(*p), "process {p} of h1 survived stop");
    }
    // The port is free again: nothing of h1 holds it.
    std::net::TcpListener::bind(&addr).expect("the grandchild still holds the port");
    assert!(
        alive(bystander.pid()),
        "a bystander outside the instance was hit"
    );
    assert!(
        h.daemon_log().contains("SIGKILL sent"),
        "{}",
        h.daemon_log()
    );
}

#[test]
fn forking_service_lives_while_its_daemon_lives() {
    require_root_cgroups();
    let h = Harness::new();
    let addr = format!("{}:7006", h.addr(6));
    h.write_config(
        "fork.toml",
        &format!(
            "[service.oserv]\ntype = \"forking\"\ncommand = [\"{}\", \"forking\", \"{addr}\"]\nready = {{ tcp = \"{addr}\", timeout = \"20s\" }}\n\n[instance.f1]\nservice = \"oserv\"\n",
            example("testsvc").display()
        ),
    );
    h.run(&["start", "f1"]).ok();
    assert_eq!(h.state("f1"), "running");
    let st = h.status_json("f1");
    let script = st["processes"][0]["pid"].as_i64().unwrap() as i32;
    assert!(!alive(script), "the start script has exited");
    let daemons = h.members("f1");
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    assert!(ask(&addr).unwrap().starts_with("forked"));
    h.run(&["monitor", "f1"]).code(0);

    // SAFETY: kill(2) of the daemon we just looked up.
    unsafe { libc::kill(daemons[0], libc::SIGKILL) };
    h.wait_for("f1 failed after its daemon died", || {
        h.state("f1") == "failed"
    });
    let out = h.run(&["monitor", "f1"]).code(1);
    assert!(
        out.stderr.contains("every process of the instance exited"),
        "{out}"
    );

    h.run(&["start", "f1"]).ok();
    let daemons = h.members("f1");
    h.run(&["stop", "f1"]).ok();
    assert!(
        daemons.iter().all(|p| !alive(*p)),
        "stop stopped the daemon"
    );
    h.run(&["monitor", "f1"]).code(7);
}

#[test]
fn failed_readiness_returns_1_names_the_check_and_leaves_nothing() {
    require_root_cgroups();
    let h = Harness::new();
    h.mkdirs(&["nr/log"]);
    let addr = format!("{}:7007", h.addr(7));
    h.write_config(
        "nr.toml",
        &format!(
            "[service.mute]\ncommand = [\"{}\", \"sleep\"]\nready = {{ tcp = \"{addr}\", timeout = \"2s\" }}\n\n[instance.nr]\nservice = \"mute\"\npaths = {{ log = \"{}\" }}\n",
            example("testsvc").display(),
            h.path("nr/log").display()
        ),
    );
    let t = Instant::now();
    let out = h.run(&["start", "nr"]).code(1);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "bounded by the timeout: {:?}",
        t.elapsed()
    );
    let err = out.stderr.clone();
    assert!(
        err.contains("nr failed to start: not ready after 2s"),
        "{out}"
    );
    assert!(
        err.contains(&format!("last readiness check: tcp {addr}")) && err.contains("refused"),
        "{out}"
    );
    assert!(
        err.contains("last lines of") && err.contains("sleeping (pid"),
        "shows the process log\n{out}"
    );
    let st = h.status_json("nr");
    assert_eq!(st["state"], "failed");
    let pid = st["processes"][0]["pid"].as_i64().unwrap() as i32;
    assert!(!alive(pid), "no process left behind");
    // The empty cgroup is kept for the next start, and removed with the daemon.
    let cg = h.cgroup_dir().join("nr");
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    assert!(procs.trim().is_empty(), "cgroup empty: {procs}");
    h.run(&["monitor", "nr"]).code(1);
    h.run(&["shutdown"]).code(0);
    assert!(!cg.exists(), "cgroup removed when the daemon exits");
}

#[test]
fn unexpected_exit_is_failed_with_its_status() {
    let h = Harness::new();
    h.write_config(
        "crash.toml",
        &format!(
            "[service.crashy]\ncommand = [\"{}\", \"crash\", \"300\", \"3\"]\n\n[instance.c1]\nservice = \"crashy\"\n",
            example("testsvc").display()
        ),
    );
    h.run(&["start", "c1"]).ok();
    h.wait_for("c1 failed", || h.state("c1") == "failed");
    let st = h.status_json("c1");
    assert_eq!(st["last_failure"], "crashy exited with status 3");
    let out = h.run(&["monitor", "c1"]).code(1);
    assert!(out.stderr.contains("exited with status 3"), "{out}");
    // stop clears a failed instance to stopped (what a cluster does).
    h.run(&["stop", "c1"]).ok();
    h.run(&["monitor", "c1"]).code(7);
}

#[test]
fn concurrent_clients_do_not_interfere() {
    require_root_cgroups();
    let h = Harness::new();
    let ids: Vec<(String, u8)> = (1..=8)
        .map(|i| (format!("c{i:02}"), 10 + i as u8))
        .collect();
    let refs: Vec<(&str, u8)> = ids.iter().map(|(s, a)| (s.as_str(), *a)).collect();
    h.write_config("many.toml", &counter_config(&h, &refs));
    // Autostart races too: all clients start at once with no daemon running.
    std::thread::scope(|s| {
        for (id, _) in &ids {
            let h = &h;
            s.spawn(move || {
                h.run(&["start", id]).ok();
                h.run(&["stop", id]).ok();
                h.run(&["start", id]).ok();
            });
        }
    });
    let mut all = Vec::new();
    for (id, a) in &ids {
        assert_eq!(h.state(id), "running", "{id}");
        assert!(ask(&format!("{}:9003", h.addr(*a))).is_ok());
        let m = h.members(id);
        assert_eq!(m.len(), 1, "{id}: {m:?}");
        all.extend(m);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), ids.len(), "one process each");
    let daemons = std::fs::read_to_string(h.runtime.join("daemon.log")).unwrap();
    assert_eq!(
        daemons.matches("daemon ready").count(),
        1,
        "one daemon was started\n{daemons}"
    );
}

#[test]
fn a_bad_request_disturbs_nothing() {
    require_root_cgroups();
    let h = Harness::new();
    h.write_config("demo.toml", &counter_config(&h, &[("ok1", 2)]));
    h.run(&["start", "ok1"]).ok();
    let before = h.members("ok1");
    let out = h.run(&["start", "nosuch"]).code(2);
    assert!(out.stderr.contains("unknown instance `nosuch`"), "{out}");
    // A stop of an unknown instance of which nothing runs succeeds
    // (guarantee 9: a failed stop fences the node), naming the typo.
    for args in [&["stop", "nosuch"][..], &["kill", "ok2"]] {
        let out = h.run(args).ok();
        assert!(
            out.stdout.contains("nothing of it runs on this node")
                && out.stdout.contains("unknown instance"),
            "{out}"
        );
    }
    // A malformed and an oversized request on the socket.
    use std::io::{Read, Write};
    let sock = h.runtime.join("cohost.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"{\"op\":\"explode\"}\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("malformed request"), "{reply}");
    assert_eq!(h.members("ok1"), before);
    assert_eq!(h.state("ok1"), "running");
}

#[test]
fn environment_is_the_contracts_and_nothing_else() {
    let mut h = Harness::new();
    h.mkdirs(&["e1/data", "e1/etc"]);
    let report = h.path("e1/data/report");
    h.write_config(
        "env.toml",
        &format!(
            "[service.rep]\ncommand = [\"{}\", \"report\", \"${{data}}/report\"]\nenv = {{ MODE = \"strict\", HOME_OF = \"${{id}}\" }}\nhostname_env = \"WLOCALHOST\"\n\n[instance.e1]\nservice = \"rep\"\naddress = \"127.0.0.1\"\nport = 7010\nhostname = \"e1.example\"\npaths = {{ data = \"{}\", etc = \"{}\" }}\n",
            example("testsvc").display(),
            h.path("e1/data").display(),
            h.path("e1/etc").display()
        ),
    );
    h.env("SUPERVISOR_SECRET", "do-not-leak");
    h.env("TZ", "UTC");
    h.run(&["start", "e1"]).ok();
    h.wait_for("report written", || report.exists());
    let text = std::fs::read_to_string(&report).unwrap();
    let env: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("env "))
        .collect();
    let names: Vec<&str> = env.iter().map(|kv| kv.split('=').next().unwrap()).collect();
    let mut want = vec![
        "COHOST_ADDRESS",
        "COHOST_HOSTNAME",
        "COHOST_INSTANCE",
        "COHOST_PATH_DATA",
        "COHOST_PATH_ETC",
        "COHOST_PORT",
        "HOME_OF",
        "MODE",
        "PATH",
        "TZ",
        "WLOCALHOST",
    ];
    if std::env::var("LANG").is_ok() {
        want.push("LANG");
        want.sort();
    }
    assert_eq!(names, want, "{text}");
    assert!(
        env.contains(&"COHOST_INSTANCE=e1")
            && env.contains(&"HOME_OF=e1")
            && env.contains(&"WLOCALHOST=e1.example")
    );
    assert!(
        text.contains(&format!("cwd {}", h.path("e1/data").display())),
        "cwd is paths.data\n{text}"
    );
    // fds: stdio, and the instance lock (paths.data is set) as fd 3.
    let fds = text.lines().find_map(|l| l.strip_prefix("fds ")).unwrap();
    assert_eq!(
        fds, "0 1 2 3",
        "stdio plus the inherited instance lock (fd 3), nothing of the supervisor\n{text}"
    );

    let out = h.run(&["env", "e1"]).ok();
    assert!(
        out.stdout.contains("export COHOST_INSTANCE='e1'")
            && out.stdout.contains("export MODE='strict'"),
        "{out}"
    );
    let out = h
        .run(&[
            "exec",
            "e1",
            "--",
            "sh",
            "-c",
            "echo $COHOST_INSTANCE $MODE $(pwd); exit 7",
        ])
        .code(7);
    assert_eq!(
        out.stdout.trim(),
        format!("e1 strict {}", h.path("e1/data").display())
    );
}

#[test]
fn logs_are_kept_with_one_previous_and_shown() {
    let h = Harness::new();
    h.mkdirs(&["l1/log"]);
    h.write_config(
        "l.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.l1]\nservice = \"s\"\npaths = {{ log = \"{}\" }}\n",
            example("testsvc").display(),
            h.path("l1/log").display()
        ),
    );
    h.run(&["start", "l1"]).ok();
    let first = h.status_json("l1")["processes"][0]["pid"].as_i64().unwrap();
    let log = h.path("l1/log/s.log");
    h.wait_for("first log line", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("sleeping")
    });
    h.run(&["restart", "l1"]).ok();
    let second = h.status_json("l1")["processes"][0]["pid"].as_i64().unwrap();
    assert_ne!(first, second);
    h.wait_for("second log line", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!("pid {second}"))
    });
    let old = std::fs::read_to_string(h.path("l1/log/s.log.1")).unwrap();
    assert!(
        old.contains(&format!("pid {first}")),
        "previous log kept as .log.1: {old}"
    );
    let out = h.run(&["logs", "l1", "-n", "5"]).ok();
    assert!(
        out.stdout.contains(&format!("sleeping (pid {second})")),
        "{out}"
    );
}

#[test]
fn stop_and_kill_of_stopped_instances_are_fine_without_a_daemon() {
    let h = Harness::new();
    h.write_config(
        "s.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.s1]\nservice = \"s\"\n",
            example("testsvc").display()
        ),
    );
    h.run(&["stop", "s1"]).ok();
    h.run(&["kill", "s1"]).ok();
    h.run(&["monitor", "s1"]).code(7);
    h.run(&["status", "s1"]).code(3);
    assert!(h.daemon_pid().is_none(), "no daemon was started for these");
    h.run(&["monitor", "nope"]).code(2);
}

#[test]
fn readiness_by_command_and_by_file() {
    let h = Harness::new();
    h.mkdirs(&["r/data"]);
    let flag = h.path("r/data/ready");
    h.write_config(
        "r.toml",
        &format!(
            "[service.bycmd]\ncommand = [\"{t}\", \"sleep\"]\nready = {{ command = [\"test\", \"-e\", \"{flag}\"], timeout = \"20s\" }}\n\n\
             [service.byfile]\ncommand = [\"sh\", \"-c\", \"sleep 0.3; touch ${{data}}/file-ready; exec {t} sleep\"]\nready = {{ file = \"${{data}}/file-ready\", timeout = \"20s\" }}\n\n\
             [instance.rc]\nservice = \"bycmd\"\n\n[instance.rf]\nservice = \"byfile\"\npaths = {{ data = \"{data}\" }}\n",
            t = example("testsvc").display(),
            flag = flag.display(),
            data = h.path("r/data").display()
        ),
    );
    // rc becomes ready only once the flag exists: its start waits while the
    // check fails, and finishes once the flag is made.
    let starter = std::thread::spawn({
        let c = h.command(&["start", "rc"]);
        move || run_cmd(c)
    });
    h.wait_for("rc's readiness check failed once", || {
        let st = h.status_json("rc");
        st["state"] == "starting"
            && st["checks"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c["ok"] == false))
    });
    assert!(!starter.is_finished(), "start waits for the check to pass");
    std::fs::write(&flag, "").unwrap();
    starter.join().unwrap().ok();
    assert_eq!(h.state("rc"), "running");
    let out = h.run(&["start", "rf"]).ok();
    assert!(out.stdout.contains("ready: file"), "{out}");
    assert!(h.path("r/data/file-ready").exists());
}

#[test]
fn kill_is_immediate_even_for_a_hostile_service() {
    require_root_cgroups();
    let h = Harness::new();
    let addr = format!("{}:7008", h.addr(8));
    write_hostile(&h, "k.toml", "k1", &addr, None, "60s");
    h.run(&["start", "k1"]).ok();
    let members = h.members("k1");
    assert!(members.len() >= 2);
    let t = Instant::now();
    h.run(&["kill", "k1"]).ok();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "kill does not wait for the 60 s stop timeout: {:?}",
        t.elapsed()
    );
    assert!(members.iter().all(|p| !alive(*p)), "{members:?}");
    assert_eq!(h.state("k1"), "stopped");
}

#[test]
fn one_daemon_per_runtime_dir_and_two_runtime_dirs_coexist() {
    let h = Harness::new();
    h.write_config(
        "s.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.s1]\nservice = \"s\"\n",
            example("testsvc").display()
        ),
    );
    h.run(&["daemon"]).ok();
    let out = h.run(&["daemon", "--foreground"]).code(1);
    assert!(out.stderr.contains("already runs for"), "{out}");
    // A second supervisor with its own runtime dir, same node.
    let other = h.other_runtime("run2");
    let mut c = h.command(&["start", "s1"]);
    c.args(["--runtime-dir", other.to_str().unwrap()]);
    run_cmd(c).ok();
    let mut c = h.command(&["status", "s1"]);
    c.args(["--runtime-dir", other.to_str().unwrap()]);
    run_cmd(c).ok();
    h.run(&["status", "s1"]).code(3);
    let mut c = h.command(&["shutdown"]);
    c.args(["--runtime-dir", other.to_str().unwrap()]);
    run_cmd(c).ok();
}

#[test]
fn services_start_with_default_signal_dispositions_and_an_empty_mask() {
    // The supervisor ignores SIGPIPE, and whoever starts it may ignore more
    // (nohup ignores SIGHUP): none of that may reach a service.
    let h = Harness::new();
    h.mkdirs(&["sig/data"]);
    h.write_config(
        "s.toml",
        &format!(
            "[service.s]\ncommand = [\"sh\", \"-c\", \"grep -E '^Sig(Ign|Blk)' /proc/self/status > ${{data}}/sig; exec {} sleep\"]\n\n[instance.sig1]\nservice = \"s\"\npaths = {{ data = \"{}\" }}\n",
            example("testsvc").display(),
            h.path("sig/data").display()
        ),
    );
    let mut c = std::process::Command::new("nohup");
    c.arg(cohost_bin())
        .arg("--config")
        .arg(&h.config)
        .arg("--runtime-dir")
        .arg(&h.runtime)
        .args(["start", "sig1"]);
    run_cmd(c).ok();
    let f = h.path("sig/data/sig");
    h.wait_for("signal report", || {
        std::fs::read_to_string(&f).is_ok_and(|s| s.lines().count() == 2)
    });
    let text = std::fs::read_to_string(&f).unwrap();
    // sh itself ignores nothing at start; both masks must be empty.
    assert!(
        text.contains("SigIgn:\t0000000000000000") && text.contains("SigBlk:\t0000000000000000"),
        "{text}"
    );
}

#[test]
fn a_request_for_another_instances_file_is_refused_a_symlink_to_ours_is_not() {
    let h = Harness::new();
    h.write_config(
        "s.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.s1]\nservice = \"s\"\n",
            example("testsvc").display()
        ),
    );
    h.run(&["start", "s1"]).ok();
    // Another directory, same runtime dir: an operator error worth naming.
    let other = h.path("other.d");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(h.config.join("s.toml"), other.join("s.toml")).unwrap();
    let mut c = h.command(&["status", "s1"]);
    c.arg("--config").arg(&other);
    let out = run_cmd(c);
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr.contains("runs the instances file")
            && out.stderr.contains("its own --runtime-dir"),
        "{out}"
    );
    // The same directory through a symlink is the same instances file.
    let link = h.path("link.d");
    std::os::unix::fs::symlink(&h.config, &link).unwrap();
    let mut c = h.command(&["monitor", "s1"]);
    c.arg("--config").arg(&link);
    run_cmd(c).ok();
}

#[test]
fn processes_start_inside_their_cgroup_born_there_or_moved_in() {
    // Born in the cgroup (clone3 CLONE_INTO_CGROUP, the default where the
    // kernel has it), and the fallback that kernels without it use (the
    // child writes itself into cgroup.procs), forced here.
    require_root_cgroups();
    for no_clone3 in [false, true] {
        let mut h = Harness::new();
        if no_clone3 {
            h.env("COHOST_NO_CLONE3", "1");
        }
        let addr = format!("{}:7011", h.addr(11));
        write_hostile(&h, "c.toml", "cg1", &addr, Some("20s"), "2s");
        h.run(&["start", "cg1"]).ok();
        let st = h.status_json("cg1");
        let main = st["processes"][0]["pid"].as_i64().unwrap() as i32;
        let rel = st["tracking"]
            .as_str()
            .unwrap()
            .strip_prefix("cgroup ")
            .expect("tracked by cgroup")
            .to_string();
        let members = h.members("cg1");
        assert!(
            members.contains(&main) && members.len() >= 2,
            "no_clone3={no_clone3}: the main process and its escaped grandchild are members: {members:?}"
        );
        for p in &members {
            let own = cohost::process::procfs::cgroup_v2_path(*p).unwrap_or_default();
            assert!(
                rel.ends_with(&own) && own.ends_with("/cg1"),
                "no_clone3={no_clone3}: pid {p} is in {own}, not {rel}"
            );
        }
        let daemon = h.daemon_pid().unwrap();
        let theirs = cohost::process::procfs::cgroup_v2_path(daemon).unwrap_or_default();
        assert!(
            !theirs.ends_with("/cg1"),
            "the daemon stays outside: {theirs}"
        );
        h.run(&["stop", "cg1"]).ok();
        for p in &members {
            assert!(!alive(*p), "no_clone3={no_clone3}: {p} survived stop");
        }
    }
}

#[test]
fn the_daemon_weighs_its_own_session_more_and_the_services_stay_at_the_default() {
    // Each service is in a session (a scheduler autogroup) of its own; the
    // daemon started by `cohost start` leads its own session and gives it
    // nice -5, so hundreds of services starting at once do not starve it.
    let autogroup = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/autogroup"));
    assert!(
        autogroup(std::process::id() as i32).is_ok(),
        "this kernel has no scheduler autogroups (CONFIG_SCHED_AUTOGROUP): /proc/self/autogroup is missing"
    );
    let h = Harness::new();
    h.write_config(
        "s.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.ag1]\nservice = \"s\"\n",
            example("testsvc").display()
        ),
    );
    h.run(&["start", "ag1"]).ok();
    let daemon = autogroup(h.daemon_pid().unwrap()).unwrap();
    assert!(daemon.trim_end().ends_with("nice -5"), "daemon: {daemon}");
    let pid = h.status_json("ag1")["processes"][0]["pid"]
        .as_i64()
        .unwrap() as i32;
    let service = autogroup(pid).unwrap();
    assert!(service.trim_end().ends_with("nice 0"), "service: {service}");
    assert_ne!(
        daemon.split_whitespace().next(),
        service.split_whitespace().next()
    );
}

/// The hostile test service (double fork, setsid, ignores SIGTERM, a
/// grandchild holding the port) as instance `id`, listening on `addr`.
fn write_hostile(h: &Harness, file: &str, id: &str, addr: &str, ready: Option<&str>, stop: &str) {
    let ready = ready
        .map(|t| format!(", timeout = \"{t}\""))
        .unwrap_or_default();
    h.write_config(
        file,
        &format!(
            "[service.hostile]\ncommand = [\"{}\", \"hostile\", \"{addr}\"]\nready = {{ tcp = \"{addr}\"{ready} }}\nstop = {{ timeout = \"{stop}\" }}\n\n[instance.{id}]\nservice = \"hostile\"\n",
            example("testsvc").display()
        ),
    );
}

/// The demo `counter` run under strace, killed (SIGKILL) at the entry of
/// the first `syscall` on its counter files while it serves a request.
fn counter_killed_at(syscall: &str, data: &std::path::Path) -> std::process::ExitStatus {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("inject={syscall}:signal=KILL:when=1"))
        .arg("-P")
        .arg(data.join("counter"))
        .arg("-P")
        .arg(data.join("counter.new"))
        .arg(example("counter"))
        .args(["--listen", &listen, "--data"])
        .arg(data)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("strace runs");
    let mut asked = false;
    wait_for(&format!("the counter on {listen} served a request"), || {
        asked = asked
            || std::net::TcpStream::connect(&listen)
                .map(|mut s| {
                    let mut b = String::new();
                    let _ = std::io::Read::read_to_string(&mut s, &mut b);
                })
                .is_ok();
        asked
    });
    child.wait().unwrap()
}

#[test]
fn the_demo_counter_killed_at_any_step_of_its_update_keeps_its_count() {
    require_tools(&[("strace", "strace")]);
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let file = data.join("counter");
    for syscall in ["write", "fsync", "rename,renameat,renameat2"] {
        std::fs::write(&file, "41\n").unwrap();
        let st = counter_killed_at(syscall, &data);
        assert!(!st.success(), "killed at {syscall}: {st:?}");
        let left = std::fs::read_to_string(&file).unwrap();
        assert!(
            left == "41\n" || left == "42\n",
            "killed at {syscall}: the counter file holds {left:?}: the count is lost"
        );
    }
}
