//! Observing (issue 15), end to end with the real binary: usage figures
//! against what the kernel was made to do, `cohost top` in a real terminal
//! (tmux), `cohost metrics` through promtool, an idle daemon that never
//! wakes, and a takeover's start timing.

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// A service running `testsvc ARGS…`, ready once it created `${data}/done`.
fn work_service(name: &str, args: &str) -> String {
    format!(
        "[service.{name}]\ncommand = [\"{}\", {args}, \"${{data}}/done\"]\nready = {{ file = \"${{data}}/done\", timeout = \"60s\" }}\nstop = {{ timeout = \"5s\" }}\n",
        example("testsvc").display()
    )
}

fn instance(h: &Harness, id: &str, service: &str, extra: &str) -> String {
    h.mkdirs(&[&format!("{id}/data")]);
    format!(
        "\n[instance.{id}]\nservice = \"{service}\"\npaths = {{ data = \"{}\" }}\n{extra}\n",
        h.path(&format!("{id}/data")).display()
    )
}

/// A daemon running `ids`, each an instance of a service that holds 4 MiB
/// (`testsvc alloc 4`).
fn running_allocs(ids: &[&str]) -> Harness {
    require_root_cgroups();
    let h = Harness::new();
    let mut cfg = work_service("alloc", "\"alloc\", \"4\"");
    for id in ids {
        cfg += &instance(&h, id, "alloc", "");
    }
    h.write_config("a.toml", &cfg);
    for id in ids {
        h.run(&["start", id]).ok();
    }
    h
}

fn usage(h: &Harness, id: &str) -> serde_json::Value {
    let v = h.status_json(id);
    assert!(v["usage"].is_object(), "no usage for {id}: {v}");
    v["usage"].clone()
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

/// Is the IO controller there for our cgroups: v2 `io`, or a v1 blkio mount?
fn io_controller() -> Option<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts = cohost::isolation::cgroup::parse_mountinfo(&mi);
    let v2 = mounts.iter().find(|m| m.v2)?;
    let ctrls = std::fs::read_to_string(v2.point.join("cgroup.controllers")).unwrap_or_default();
    if ctrls.split_whitespace().any(|c| c == "io") {
        return Some(format!("cgroup v2 io at {}", v2.point.display()));
    }
    mounts
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == "blkio"))
        .map(|m| format!("cgroup v1 blkio at {}", m.point.display()))
}

#[test]
fn usage_is_what_the_kernel_counted() {
    require_root_cgroups();
    let h = Harness::new();
    let data = h.path("writer/data");
    let mut cfg = String::new();
    cfg += &work_service("alloc", "\"alloc\", \"64\"");
    cfg += &work_service("burn", "\"burn\", \"1000\"");
    cfg += &work_service(
        "writer",
        &format!("\"write\", \"10\", \"{}/blob\"", data.display()),
    );
    cfg += &instance(&h, "mem", "alloc", "");
    cfg += &instance(&h, "cpu", "burn", "");
    cfg += &instance(&h, "disk", "writer", "");
    h.mkdirs(&["writer/data"]);
    h.write_config("a.toml", &cfg);
    for id in ["mem", "cpu", "disk"] {
        h.run(&["start", id]).ok();
    }
    let mem = usage(&h, "mem");
    eprintln!("mem: {mem}");
    assert!(num(&mem, "memory_bytes") >= 64 << 20, "{mem}");
    assert!(
        num(&mem, "memory_peak_bytes") >= num(&mem, "memory_bytes"),
        "{mem}"
    );
    assert_eq!(num(&mem, "pids"), 1, "{mem}");
    let cpu = usage(&h, "cpu");
    eprintln!("cpu: {cpu}");
    assert!(num(&cpu, "cpu_usec") >= 900_000, "{cpu}");
    let disk = usage(&h, "disk");
    eprintln!("disk: {disk}");
    match io_controller() {
        Some(where_) => {
            eprintln!("IO controller: {where_}");
            assert!(
                num(&disk, "io_write_bytes") >= 10 << 20,
                "{disk} ({where_})"
            );
        }
        None => {
            eprintln!("no IO controller on this node: io figures must be unknown");
            assert!(disk["io_write_bytes"].is_null(), "{disk}");
        }
    }
    // The human forms carry it too.
    let st = h.run(&["status", "mem"]).code(0);
    assert!(st.stdout.contains("usage      memory 64."), "{st}");
    assert!(st.stdout.contains("last start address"), "{st}");
    let list = h.run(&["list"]).ok();
    assert!(
        list.stdout.lines().next().unwrap().ends_with("USAGE"),
        "{list}"
    );
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with("mem") && l.contains("64.")),
        "{list}"
    );
    // Stopped: no usage (nothing of it runs).
    h.run(&["stop", "cpu"]).ok();
    assert!(h.status_json("cpu")["usage"].is_null());
    // Started again, in the cgroup kept from the first run (its counters
    // go on from there): the figure is this run's second, not both runs'.
    let first = num(&cpu, "cpu_usec");
    std::fs::remove_file(h.path("cpu/data/done")).unwrap();
    h.run(&["start", "cpu"]).ok();
    let again = usage(&h, "cpu");
    eprintln!("cpu, second run: {again}");
    let second = num(&again, "cpu_usec");
    assert!(second >= 900_000, "{again}");
    assert!(
        second < first + 800_000,
        "the second run's {second} us counts the first run's {first} us too"
    );
}

/// A tmux server of its own (socket under the test's dir), killed on drop.
struct Tmux {
    sock: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Out {
        let mut c = std::process::Command::new("tmux");
        c.arg("-S").arg(&self.sock).args(args);
        run_cmd(c)
    }
    fn pane(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "top"]).ok().stdout
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn top_in_a_real_terminal_shows_every_instance_and_quits_on_q() {
    require_root_cgroups();
    require_tools(&[("tmux", "tmux")]);
    let h = Harness::new();
    let mut cfg = work_service("alloc", "\"alloc\", \"8\"");
    cfg += &work_service("burn", "\"burn\", \"300\"");
    for (id, svc) in [("alpha", "alloc"), ("beta", "burn"), ("gamma", "alloc")] {
        cfg += &instance(&h, id, svc, "");
    }
    h.write_config("a.toml", &cfg);
    h.run(&["start", "alpha"]).ok();
    h.run(&["start", "beta"]).ok();
    // gamma stays stopped: top shows it as such.
    let t = Tmux {
        sock: h.path("tmux.sock"),
    };
    let top = format!(
        "{} --config {} --runtime-dir {} top; echo top-exited-$?; sleep 600",
        cohost_bin().display(),
        h.config.display(),
        h.runtime.display()
    );
    t.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "30",
        &top,
    ])
    .ok();
    wait_for("top shows every instance with rates", || {
        let p = t.pane();
        p.contains("cohost top: 3 instances, 2 running")
            && ["alpha", "beta", "gamma"].iter().all(|i| p.contains(i))
            // A second refresh: CPU % is a figure now.
            && p.lines().any(|l| l.starts_with("alpha") && l.contains("running") && !l.contains(" - "))
    });
    let p = t.pane();
    eprintln!("--- cohost top in tmux\n{p}");
    assert!(
        p.lines()
            .any(|l| l.starts_with("gamma") && l.contains("stopped")),
        "{p}"
    );
    t.cmd(&["send-keys", "-t", "top", "m"]).ok();
    wait_for("top sorts by memory", || {
        t.pane().contains("sorted by memory")
    });
    let p = t.pane();
    let order: Vec<&str> = p
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| ["alpha", "beta", "gamma"].contains(w))
        .collect();
    assert_eq!(order[0], "alpha", "alpha uses the most memory:\n{p}");
    t.cmd(&["send-keys", "-t", "top", "q"]).ok();
    wait_for("top quits on q", || t.pane().contains("top-exited-0"));
    // Off a terminal: one snapshot.
    let snap = h.run(&["top"]).ok();
    assert_eq!(
        snap.stdout.lines().count(),
        5,
        "header, columns, three instances:\n{snap}"
    );
}

#[test]
fn metrics_pass_promtool_with_three_states() {
    require_root_cgroups();
    require_tools(&[("promtool", "prometheus")]);
    let h = Harness::new();
    let mut cfg = work_service("alloc", "\"alloc\", \"4\"");
    cfg += &format!(
        "[service.crash]\ncommand = [\"{}\", \"crash\", \"0\", \"3\"]\n",
        example("testsvc").display()
    );
    cfg += &instance(&h, "up1", "alloc", "");
    cfg += &instance(&h, "down1", "alloc", "");
    cfg += &instance(&h, "bad1", "crash", "");
    h.write_config("a.toml", &cfg);
    h.run(&["start", "up1"]).ok();
    h.run(&["start", "bad1"]);
    wait_for("bad1 failed", || h.state("bad1") == "failed");
    let file = h.path("cohost.prom");
    h.run(&["metrics", "--output", file.to_str().unwrap()]).ok();
    let text = std::fs::read_to_string(&file).unwrap();
    eprintln!("--- cohost metrics\n{text}");
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()));
    let out = run_cmd(c);
    assert_eq!(out.code, 0, "promtool check metrics:\n{out}\n{text}");
    assert!(out.all().trim().is_empty(), "promtool complained:\n{out}");
    for (id, up) in [("up1", 1), ("down1", 0), ("bad1", 0)] {
        let l = format!("cohost_instance_up{{instance=\"{id}\",service=");
        let line = text
            .lines()
            .find(|x| x.starts_with(&l))
            .unwrap_or_else(|| panic!("{l}\n{text}"));
        assert!(line.ends_with(&format!(" {up}")), "{line}");
    }
    assert!(
        text.contains("instance=\"bad1\",service=\"crash\",state=\"failed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("cohost_instance_memory_bytes{instance=\"up1\""),
        "{text}"
    );
    assert!(text.contains("phase=\"total\""), "{text}");
    // The same on stdout.
    let out = h.run(&["metrics"]).ok();
    assert!(
        out.stdout.contains("# TYPE cohost_instance_up gauge"),
        "{out}"
    );
}

/// Voluntary and involuntary context switches of every thread of `pid`.
fn switches(pid: i32) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in s.lines() {
            if l.starts_with("voluntary_ctxt_switches")
                || l.starts_with("nonvoluntary_ctxt_switches")
            {
                n += l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    n
}

#[test]
fn an_idle_daemon_never_wakes_usage_is_read_on_request_only() {
    let h = running_allocs(&["i1", "i2"]);
    // Usage asked for (the daemon reads the cgroups now), then nothing.
    assert!(usage(&h, "i1")["memory_bytes"].is_u64());
    h.run(&["metrics"]).ok();
    let pid = h.daemon_pid().expect("daemon pid");
    let before = switches(pid);
    // The window measured, not a synchronization: 3 s of nobody asking.
    let window = Duration::from_secs(3);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let woke = switches(pid) - before;
    eprintln!("daemon wake-ups in {:?} idle: {woke}", t0.elapsed());
    assert_eq!(woke, 0, "the idle daemon woke {woke} times");
}

fn takeover_config(node: &str, h: &Harness, hook: &Path) -> String {
    format!(
        "[supervisor]\nnode = \"{node}\"\non_event = [\"{}\"]\n\n[service.serve]\ncommand = [\"{}\", \"serve\", \"${{address}}:${{port}}\"]\nready = {{ tcp = \"${{address}}:${{port}}\", timeout = \"20s\" }}\n\n[instance.db01]\nservice = \"serve\"\naddress = \"{}\"\nport = 9003\npaths = {{ data = \"{}\" }}\n",
        hook.display(),
        example("testsvc").display(),
        h.addr(1),
        h.path("shared/db01").display()
    )
}

#[test]
fn a_takeover_reports_its_timing_parts_that_add_up_and_the_lock_record_age() {
    require_root_cgroups();
    let h = Harness::new();
    h.mkdirs(&["shared/db01", "b-config"]);
    let hook = h.path("hook.sh");
    let events = h.path("events");
    write(
        &hook,
        &format!(
            "#!/bin/sh\n[ \"$COHOST_EVENT\" = ready ] && env | grep ^COHOST_TIMING_ | sort > {}.$COHOST_NODE\nexit 0\n",
            events.display()
        ),
    );
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    h.write_config("a.toml", &takeover_config("nodeA", &h, &hook));
    let b_cfg = h.path("b-config");
    std::fs::write(b_cfg.join("b.toml"), takeover_config("nodeB", &h, &hook)).unwrap();
    let b_rt = h.other_runtime("run-b");
    let on_b = |args: &[&str]| {
        let mut c = std::process::Command::new(cohost_bin());
        c.arg("--config")
            .arg(&b_cfg)
            .arg("--runtime-dir")
            .arg(&b_rt)
            .args(args);
        run_cmd(c)
    };
    // A's lock record is written while this start runs: after
    // `a_requested`, before `a_started`.
    let a_requested = Instant::now();
    h.run(&["start", "db01"]).ok();
    let a_started = Instant::now();
    // Node A dies: its supervisor and every process of it, at once.
    let a_pid = h.daemon_pid().unwrap();
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(a_pid, libc::SIGKILL) };
    kill_cgroup_tree(&h.cgroup_dir());
    wait_for("node A's supervisor gone", || !alive(a_pid));
    // B reads the record's age during its start: after this floor, before
    // the ceiling taken when that start has returned.
    let record_age_floor = a_started.elapsed();
    let out = on_b(&["start", "db01"]).ok();
    let record_age_ceiling = a_requested.elapsed();
    let v = first_status(on_b(&["status", "db01", "--json"]));
    let t = &v["timing"];
    eprintln!("takeover timing: {t}\n{}", out.stdout);
    let part = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k} in {t}"));
    let sum: f64 = ["address", "lock", "setup", "exec", "ready"]
        .iter()
        .map(|k| part(k))
        .sum();
    let total = part("total");
    assert!(
        total > 0.0 && sum <= total + 0.001,
        "parts {sum} ms > total {total} ms: {t}"
    );
    assert!(
        total - sum < 5.0,
        "parts {sum} ms and total {total} ms differ by 5 ms or more: {t}"
    );
    assert_eq!(t["taken_over_from"], "nodeA", "{t}");
    let age = part("lock_record_age");
    assert!(
        age >= record_age_floor.as_secs_f64() * 1000.0 - 5.0,
        "the record A wrote is at least {record_age_floor:?} old, reported {age} ms"
    );
    assert!(
        age <= record_age_ceiling.as_secs_f64() * 1000.0 + 5.0,
        "the record A wrote is at most {record_age_ceiling:?} old, reported {age} ms"
    );
    // The hook and the log carry it too.
    let env_file = format!("{}.nodeB", events.display());
    wait_for("the ready hook ran on B", || {
        std::fs::read_to_string(&env_file).is_ok_and(|t| t.contains("COHOST_TIMING_TOTAL_MS="))
    });
    let env_b = std::fs::read_to_string(&env_file).unwrap();
    for k in [
        "ADDRESS",
        "LOCK",
        "SETUP",
        "EXEC",
        "READY",
        "TOTAL",
        "LOCK_RECORD_AGE",
    ] {
        assert!(
            env_b.contains(&format!("COHOST_TIMING_{k}_MS=")),
            "{k}: {env_b}"
        );
    }
    let log = std::fs::read_to_string(b_rt.join("daemon.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("instance=db01")
            && l.contains("total_ms=")
            && l.contains("lock_record_age_ms=")),
        "{log}"
    );
    on_b(&["stop", "db01"]).ok();
    on_b(&["shutdown"]);
}

/// `list --json` and `status ID --json` print the daemon's JSON as it came,
/// indented: the same text as parsing it into statuses and pretty-printing
/// them again (what the client did before), keys in the status's order; a list right after
/// `status ID` shows that read's usage (younger than a second), a status
/// always reads now.
#[test]
fn list_json_is_the_daemons_json_indented_with_usage_at_most_a_second_old() {
    let h = running_allocs(&["j1", "j2"]);
    let status = h.run(&["status", "j1", "--json"]).ok();
    let list = h.run(&["list", "--json"]).ok();
    for out in [&status, &list] {
        let v: Vec<cohost::control::proto::InstanceStatus> =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let again = serde_json::to_string_pretty(&v).unwrap() + "\n";
        assert_eq!(out.stdout, again, "{out}");
        assert!(out.stdout.starts_with("[\n  {\n    \"id\": "), "{out}");
    }
    let st: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let ls: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let j1 = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "j1")
        .expect("j1 listed");
    assert_eq!(ls.as_array().unwrap().len(), 2, "{list}");
    assert!(j1["usage"]["memory_bytes"].is_u64(), "{list}");
    // `cpu_usec` only grows: equal when the list reused the status's read
    // (it ran within the second), never smaller.
    let cpu = |v: &serde_json::Value| v["usage"]["cpu_usec"].as_u64().unwrap_or(0);
    assert!(cpu(j1) >= cpu(&st[0]), "{status}\n{list}");
}

#[test]
fn a_list_into_a_closed_pipe_ends_as_by_sigpipe_and_into_a_full_disk_says_so() {
    use std::os::unix::process::ExitStatusExt;
    let h = running_allocs(&["p1"]);
    for args in [&["list"][..], &["list", "--json"], &["status", "p1"]] {
        // `cohost list | head -0`: the reader is gone before the first
        // write. It ends as `ls` would, not with a panic and a backtrace.
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let mut cmd = h.command(args);
        cmd.stdout(std::process::Stdio::from(w));
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: nothing said: {err}");

        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut cmd = h.command(args);
        cmd.stdout(full);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("writing the output") && err.contains("No space left"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(h.state("p1"), "running", "the daemon did not mind");
}
