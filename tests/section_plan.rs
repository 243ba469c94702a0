//! `cohost plan --absorb DIR` with the real binary: each kind of blocker
//! is found (one test each), named in the table with its fix, and the
//! shipped two-node example passes.

mod common;
use common::*;

/// This node: one instance a1 on .1:9003 with its own storage.
fn local(h: &Harness) -> String {
    format!(
        "[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.a1]\nservice = \"s\"\naddress = \"{}\"\nport = 9003\npaths = {{ data = \"{}\" }}\n",
        example("testsvc").display(),
        h.addr(1),
        h.path("a1").display()
    )
}

/// The peer's file: a service like ours and `instances` as given.
fn peer(h: &Harness, service_extra: &str, instances: &str) -> std::path::PathBuf {
    let dir = h.path("peer.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("peer.toml"),
        format!(
            "[service.p]\ncommand = [\"{}\", \"sleep\"]\n{service_extra}\n{instances}",
            example("testsvc").display()
        ),
    )
    .unwrap();
    dir
}

fn b(h: &Harness, id: &str, addr: u8, data: &str, extra: &str) -> String {
    format!(
        "\n[instance.{id}]\nservice = \"p\"\naddress = \"{}\"\nport = 9003\npaths = {{ data = \"{}\" }}\n{extra}\n",
        h.addr(addr),
        h.path(data).display()
    )
}

/// Runs the plan; asserts exit 1 and exactly `kind` (n times) in the JSON
/// and in the table; returns the table.
fn blocked(h: &Harness, dir: &std::path::Path, kind: &str, n: usize) -> String {
    let d = dir.to_str().unwrap();
    let json = h.run(&["plan", "--absorb", d, "--json"]).code(1);
    let v: serde_json::Value =
        serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}\n{json}"));
    let kinds: Vec<&str> = v["blockers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec![kind; n], "{json}");
    for b in v["blockers"].as_array().unwrap() {
        assert!(
            !b["fix"].as_str().unwrap().is_empty(),
            "a blocker without a fix: {b}"
        );
    }
    let table = h.run(&["plan", "--absorb", d]).code(1);
    assert!(table.stdout.starts_with("KIND"), "{table}");
    assert!(table.stdout.lines().any(|l| l.starts_with(kind)), "{table}");
    assert!(
        table.stdout.contains("this node cannot run both"),
        "{table}"
    );
    table.stdout
}

fn setup(h: &Harness) {
    h.write_config("a.toml", &local(h));
}

#[test]
fn the_shipped_two_node_example_passes_both_ways() {
    let h = Harness::new();
    let ex = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/absorb");
    // As examples/demo.sh does: the demo `counter` on PATH.
    let counter_dir = example("counter").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        counter_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (me, other) in [("node-a", "node-b"), ("node-b", "node-a")] {
        let mut c = std::process::Command::new(cohost_bin());
        c.arg("--config")
            .arg(ex.join(me))
            .arg("--runtime-dir")
            .arg(h.path("run"))
            .args(["plan", "--absorb"])
            .arg(ex.join(other))
            .env("PATH", &path);
        let out = run_cmd(c).ok();
        assert!(out.stdout.starts_with("this node can run both"), "{out}");
    }
    // Without the program on PATH, the same plan says what to install.
    let mut c = std::process::Command::new(cohost_bin());
    c.arg("--config")
        .arg(ex.join("node-a"))
        .arg("--runtime-dir")
        .arg(h.path("run"))
        .args(["plan", "--absorb"])
        .arg(ex.join("node-b"))
        .env("PATH", "/usr/bin:/bin");
    let out = run_cmd(c).code(1);
    assert!(out.stdout.contains("install counter on this node"), "{out}");
}

#[test]
fn an_id_in_both() {
    let h = Harness::new();
    setup(&h);
    let d = peer(&h, "", &b(&h, "a1", 2, "b1", ""));
    let t = blocked(&h, &d, "id", 1);
    assert!(t.contains("rename one of them"), "{t}");
}

#[test]
fn an_address_and_port_in_both() {
    let h = Harness::new();
    setup(&h);
    let d = peer(&h, "", &b(&h, "b1", 1, "b1", ""));
    blocked(&h, &d, "address", 1);
}

#[test]
fn overlapping_paths() {
    let h = Harness::new();
    setup(&h);
    let d = peer(&h, "", &b(&h, "b1", 2, "a1/inner", ""));
    blocked(&h, &d, "paths", 1);
}

#[test]
fn a_user_missing_here() {
    let h = Harness::new();
    setup(&h);
    let d = peer(
        &h,
        "",
        &b(&h, "b1", 2, "b1", "user = \"cohost-no-such-user\""),
    );
    let t = blocked(&h, &d, "user", 1);
    assert!(t.contains("useradd"), "{t}");
}

#[test]
fn a_group_missing_here() {
    let h = Harness::new();
    setup(&h);
    let d = peer(
        &h,
        "",
        &b(&h, "b1", 2, "b1", "group = \"cohost-no-such-group\""),
    );
    blocked(&h, &d, "group", 1);
}

#[test]
fn a_program_missing_or_not_executable() {
    let h = Harness::new();
    setup(&h);
    let not_exec = h.path("not-exec");
    write(&not_exec, "#!/bin/sh\n");
    let d = peer(
        &h,
        &format!("stop = {{ command = [\"{}\"] }}", not_exec.display()),
        &format!(
            "{}[service.q]\ncommand = [\"/opt/cohost-nowhere/bin/server\"]\n\n[instance.b2]\nservice = \"q\"\naddress = \"{}\"\nport = 9003\npaths = {{ data = \"{}\" }}\n",
            b(&h, "b1", 2, "b1", ""),
            h.addr(3),
            h.path("b2").display()
        ),
    );
    let t = blocked(&h, &d, "binary", 2);
    assert!(t.contains("/opt/cohost-nowhere/bin/server"), "{t}");
    assert!(t.contains("not-exec is not executable"), "{t}");
}

#[test]
fn a_bind_mount_point_missing_here() {
    let h = Harness::new();
    setup(&h);
    let d = peer(
        &h,
        "",
        &b(
            &h,
            "b1",
            2,
            "b1",
            "bind = { \"/etc/cohost-no-such-product\" = \"${data}\" }",
        ),
    );
    let t = blocked(&h, &d, "bind", 1);
    assert!(t.contains("mkdir -p /etc/cohost-no-such-product"), "{t}");
}

#[test]
fn an_after_that_cannot_be_met_here() {
    let h = Harness::new();
    setup(&h);
    let d = peer(
        &h,
        "",
        &format!(
            "{}{}",
            b(&h, "b1", 2, "b1", "enabled = false"),
            b(&h, "b2", 3, "b2", "after = [\"b1\"]")
        ),
    );
    let t = blocked(&h, &d, "after", 1);
    assert!(t.contains("b1 is disabled"), "{t}");
}

#[test]
fn memory_beyond_this_node() {
    let h = Harness::new();
    setup(&h);
    let d = peer(&h, "memory_max = \"100000G\"", &b(&h, "b1", 2, "b1", ""));
    blocked(&h, &d, "memory", 1);
}

#[test]
fn cpus_beyond_this_node() {
    let h = Harness::new();
    setup(&h);
    let cpus = std::thread::available_parallelism().unwrap().get();
    let d = peer(
        &h,
        &format!("cpu_max = \"{}%\"", (cpus + 1) * 100),
        &b(&h, "b1", 2, "b1", ""),
    );
    blocked(&h, &d, "cpu", 1);
}

#[test]
fn pids_beyond_this_node() {
    let h = Harness::new();
    setup(&h);
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let d = peer(
        &h,
        &format!("pids_max = {}", pid_max + 1),
        &b(&h, "b1", 2, "b1", ""),
    );
    blocked(&h, &d, "pids", 1);
}

#[test]
fn an_invalid_peer_file_is_exit_2_with_file_and_line() {
    let h = Harness::new();
    setup(&h);
    let d = peer(&h, "no_such_field = 1", &b(&h, "b1", 2, "b1", ""));
    let out = h.run(&["plan", "--absorb", d.to_str().unwrap()]).code(2);
    assert!(out.stderr.contains("peer.toml:"), "{out}");
}
