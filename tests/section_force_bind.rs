//! force_bind, force_source, `verify` and `exec --join` end to end (issue
//! 14), with the real `cohost` binary, real cgroups and BPF programs, real
//! sockets, as root. The product is `examples/binder.rs`, which binds the
//! wildcard like software that knows nothing of logical addresses. IPv6
//! and the force_source peer run the daemon in network namespaces of the
//! test's own. Everything is removed on drop (Harness, Netns, KillOnDrop).

mod common;

use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cohost::isolation::bpf::{self, Hook};
use common::*;

fn require() {
    require_root_cgroups();
    if let Err(e) = bpf::open_cgroup(Path::new("/sys/fs/cgroup/unified"))
        .or_else(|_| bpf::open_cgroup(Path::new("/sys/fs/cgroup")))
    {
        panic!("force_bind needs cgroup v2 (at /sys/fs/cgroup/unified or /sys/fs/cgroup): {e}");
    }
    require_tools(&[("ip", "iproute2"), ("nsenter", "util-linux")]);
}

fn free_port() -> u16 {
    // Both protocols free on the wildcard: the copies without force_bind
    // must fail because of each other, not because of another test.
    loop {
        let t = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let p = t.local_addr().unwrap().port();
        if UdpSocket::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
}

fn binder() -> String {
    example("binder").display().to_string()
}

/// A service binding `bind` (e.g. "0.0.0.0:94"), ready once it printed
/// "bound" in its log.
fn service(h: &Harness, name: &str, proto: &str, bind: &str, extra: &str) -> String {
    format!(
        "[service.{name}]\ncommand = [\"{b}\", \"listen\", \"{proto}\", \"{bind}\", \"${{id}}\"]\n\
         ready = {{ command = [\"grep\", \"-q\", \"^bound\", \"{logs}/${{id}}/{name}.log\"], interval = \"50ms\", timeout = \"10s\" }}\n\
         stop = {{ timeout = \"5s\" }}\n{extra}\n",
        b = binder(),
        logs = h.runtime.join("logs").display()
    )
}

fn instance(id: &str, service: &str, addr: &str, port: u16, extra: &str) -> String {
    format!(
        "\n[instance.{id}]\nservice = \"{service}\"\naddress = \"{addr}\"\nport = {port}\n{extra}\n"
    )
}

/// What a UDP service at `to` answers (its "NAME PEER" line).
fn ask_udp(to: &str) -> String {
    let to: std::net::SocketAddr = to.parse().unwrap();
    let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(b"?", to).unwrap();
    let mut buf = [0u8; 512];
    let n = s
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no answer from {to}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn ask_tcp(to: &str) -> String {
    ask(to).unwrap_or_else(|e| panic!("no answer from {to}: {e}"))
}

/// `cohost ARGS` in network namespace `ns` (only the network: /sys and the
/// cgroups stay the host's), so the daemon it starts lives there.
fn in_ns(h: &Harness, ns: &Netns, args: &[&str]) -> Out {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", ns.0))
        .arg(cohost_bin())
        .arg("--config")
        .arg(&h.config)
        .arg("--runtime-dir")
        .arg(&h.runtime)
        .args(args)
        .env_remove("COHOST_CONFIG")
        .env_remove("COHOST_RUNTIME_DIR");
    run_cmd(c)
}

/// A binder run in `ns`: its stdout.
fn binder_in(ns: &Netns, args: &[&str]) -> Out {
    let mut c = ns.cmd(&example("binder"));
    c.args(args);
    run_cmd(c)
}

fn log_of(h: &Harness, id: &str, process: &str) -> String {
    std::fs::read_to_string(
        h.runtime
            .join("logs")
            .join(id)
            .join(format!("{process}.log")),
    )
    .unwrap_or_default()
}

/// Copies a1/a2 without force_bind, b1/b2 with it, every one binding the
/// wildcard on one port.
fn side_by_side(proto: &str) {
    require();
    let h = Harness::new();
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    let mut cfg = service(&h, "plain", proto, &any, "");
    cfg += &service(&h, "forced", proto, &any, "force_bind = true");
    let (a1, a2) = (h.addr(1), h.addr(2));
    // (a1 and a2 on addresses of their own: validate refuses two
    // instances on one address:port.)
    cfg += &instance("a1", "plain", &h.addr(3), port, "");
    cfg += &instance("a2", "plain", &h.addr(4), port, "");
    cfg += &instance("b1", "forced", &a1, port, "");
    cfg += &instance("b2", "forced", &a2, port, "");
    h.write_config("a.toml", &cfg);
    // Without force_bind the second copy cannot start: proves the test.
    h.run(&["start", "a1"]).ok();
    let out = h.run(&["start", "a2"]).code(1);
    assert!(
        log_of(&h, "a2", "plain").contains("Address already in use"),
        "{out}\n{}",
        log_of(&h, "a2", "plain")
    );
    h.run(&["stop", "a1"]).ok();
    h.run(&["stop", "a2"]).ok();
    h.run(&["start", "b1"]).ok();
    h.run(&["start", "b2"]).ok();
    for (id, a) in [("b1", &a1), ("b2", &a2)] {
        assert!(
            log_of(&h, id, "forced").contains(&format!("bound {a}:{port}")),
            "{id}: {}",
            log_of(&h, id, "forced")
        );
        let to = format!("{a}:{port}");
        let answer = if proto == "tcp" {
            ask_tcp(&to)
        } else {
            ask_udp(&to)
        };
        assert!(answer.starts_with(&format!("{id} ")), "{to}: {answer}");
    }
}

#[test]
fn tcp_two_wildcard_copies_run_side_by_side_only_with_force_bind() {
    side_by_side("tcp");
}

#[test]
fn udp_two_wildcard_copies_run_side_by_side_only_with_force_bind() {
    side_by_side("udp");
}

#[test]
fn ipv6_two_wildcard_copies_run_side_by_side_in_a_namespace_of_our_own() {
    require();
    let h = Harness::new();
    let ns = Netns::new(&format!("cohost-fb6-{}", std::process::id()));
    let n = std::process::id() % 250;
    let (a, b) = (format!("fd00:14:{n:x}::2"), format!("fd00:14:{n:x}::3"));

    let (port, uport) = (9414, 9415);
    let any = format!("[::]:{port}");
    let mut cfg = service(&h, "plain", "tcp", &any, "");
    cfg += &service(&h, "forced", "tcp", &any, "force_bind = true");
    cfg += &service(
        &h,
        "forcedu",
        "udp",
        &format!("[::]:{uport}"),
        "force_bind = true",
    );
    let (c, d) = (format!("fd00:14:{n:x}::4"), format!("fd00:14:{n:x}::5"));
    for x in [&a, &b, &c, &d] {
        ns.ip(&["addr", "add", &format!("{x}/128"), "dev", "lo", "nodad"]);
    }
    cfg += &instance("a1", "plain", &c, port, "");
    cfg += &instance("a2", "plain", &d, port, "");
    cfg += &instance("b1", "forced", &a, port, "");
    cfg += &instance("b2", "forced", &b, port, "");
    cfg += &instance("u1", "forcedu", &a, uport, "");
    cfg += &instance("u2", "forcedu", &b, uport, "");
    h.write_config("a.toml", &cfg);
    in_ns(&h, &ns, &["start", "a1"]).ok();
    let out = in_ns(&h, &ns, &["start", "a2"]).code(1);
    assert!(
        log_of(&h, "a2", "plain").contains("Address already in use"),
        "{out}"
    );
    in_ns(&h, &ns, &["stop", "a1"]).ok();
    for id in ["b1", "b2", "u1", "u2"] {
        in_ns(&h, &ns, &["start", id]).ok();
    }
    for (id, proto, x, p) in [
        ("b1", "tcp", &a, port),
        ("b2", "tcp", &b, port),
        ("u1", "udp", &a, uport),
        ("u2", "udp", &b, uport),
    ] {
        let to = format!("[{x}]:{p}");
        let out = binder_in(&ns, &["connect", proto, &to]).ok();
        assert!(out.stdout.starts_with(&format!("{id} ")), "{to}: {out}");
    }
    in_ns(&h, &ns, &["shutdown"]).ok();
}

#[test]
fn a_copy_binding_the_other_copys_address_fails_and_the_other_is_unaffected() {
    require();
    let h = Harness::new();
    let port = free_port();
    let (a1, a2) = (h.addr(1), h.addr(2));
    let mut cfg = service(
        &h,
        "forced",
        "tcp",
        &format!("0.0.0.0:{port}"),
        "force_bind = true",
    );
    // A copy that asks for its neighbour's logical address by name.
    cfg += &service(
        &h,
        "intruder",
        "tcp",
        &format!("{a1}:{}", port + 1),
        "force_bind = true",
    );
    cfg += &instance("good", "forced", &a1, port, "");
    cfg += &instance("bad", "intruder", &a2, port + 1, "");
    h.write_config("a.toml", &cfg);
    h.run(&["start", "good"]).ok();
    let out = h.run(&["start", "bad"]).code(1);
    let log = log_of(&h, "bad", "intruder");
    assert!(
        log.contains("Cannot assign requested address"),
        "{out}\n{log}"
    );
    assert_eq!(h.state("good"), "running");
    assert!(ask_tcp(&format!("{a1}:{port}")).starts_with("good "));
    let out = h.run(&["verify", "good"]).ok();
    assert!(out.stdout.contains("ok   force_bind"), "{out}");
}

#[test]
fn force_source_makes_the_peer_see_the_logical_address() {
    require();
    let h = Harness::new();
    let pid = std::process::id();
    let (client, server) = (
        Netns::new(&format!("cohost-fsc-{pid}")),
        Netns::new(&format!("cohost-fss-{pid}")),
    );
    client.ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &server.0,
    ]);
    let n = pid % 250;
    let (primary, logical, peer) = (
        format!("10.232.{n}.1"),
        format!("10.232.{n}.10"),
        format!("10.232.{n}.2"),
    );
    client.ip(&["addr", "add", &format!("{primary}/24"), "dev", "va"]);
    client.ip(&["addr", "add", &format!("{logical}/24"), "dev", "va"]);
    client.ip(&["link", "set", "va", "up"]);
    server.ip(&["addr", "add", &format!("{peer}/24"), "dev", "vb"]);
    server.ip(&["link", "set", "vb", "up"]);
    // The peer: a listener in the other namespace answering "S PEER".
    let mut listener = server.cmd(&example("binder"));
    listener
        .args(["listen", "tcp", &format!("{peer}:9415"), "S"])
        .stdout(std::process::Stdio::piped());
    let mut listener = listener.spawn().unwrap();
    let _guard = KillOnDrop::new(listener.id() as i32);
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(listener.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("bound"), "{first}");
    let to = format!("{peer}:9415");
    // An instance that sleeps; its connection is made inside it by
    // `exec --join` (born in its cgroup, so its programs apply).
    let mut cfg = "[service.idle]\ncommand = [\"sleep\", \"1000\"]\nstop = { timeout = \"5s\" }\n"
        .to_string();
    cfg += &instance("plain", "idle", &logical, 1, "");
    cfg += &instance("src", "idle", &logical, 2, "force_source = true");
    h.write_config("a.toml", &cfg);
    let seen = |id: &str| -> String {
        in_ns(&h, &client, &["start", id]).ok();
        let out = in_ns(
            &h,
            &client,
            &["exec", id, "--join", "--", &binder(), "connect", "tcp", &to],
        )
        .ok();
        in_ns(&h, &client, &["stop", id]).ok();
        let addr = out
            .stdout
            .trim()
            .strip_prefix("S ")
            .unwrap_or_else(|| panic!("{out}"))
            .to_string();
        addr.rsplit_once(':').unwrap().0.to_string()
    };
    assert_eq!(seen("plain"), primary, "without force_source: the primary");
    assert_eq!(
        seen("src"),
        logical,
        "with force_source: the logical address"
    );
    in_ns(&h, &client, &["shutdown"]).ok();
    let _ = listener.kill();
    let _ = listener.wait();
}

/// An isolated instance: own host name, a bind of its etc dir, private
/// /tmp, a lock on its data dir, force_bind; two processes (one can be
/// moved out and the cgroup still has a member).
fn isolated(h: &Harness, id: &str, a: &str, port: u16, extra: &str) -> (String, PathBuf) {
    let view = h.path("view");
    std::fs::create_dir_all(&view).unwrap();
    h.mkdirs(&[&format!("{id}/etc"), &format!("{id}/data")]);
    // The instance has a private /tmp: a checkout under /tmp (CI's clone)
    // would hide the test binary from it. A copy beside the harness's files.
    let bin = h.path("binder-copy");
    if !bin.exists() {
        std::fs::copy(example("binder"), &bin).unwrap();
    }
    write(
        &h.path(&format!("{id}/etc/file")),
        &format!("{id}'s file\n"),
    );
    let cfg = format!(
        "[service.iso]\nready = {{ tcp = \"${{address}}:${{port}}\", timeout = \"10s\" }}\n\
         stop = {{ timeout = \"5s\" }}\nisolate = {{ uts = true, private_tmp = true }}\n\
         bind = {{ \"{view}\" = \"${{etc}}\" }}\n{extra}\n\
         [[service.iso.process]]\nname = \"main\"\ncommand = [\"{b}\", \"listen\", \"tcp\", \"0.0.0.0:${{port}}\", \"${{id}}\"]\n\
         [[service.iso.process]]\nname = \"side\"\ncommand = [\"sleep\", \"1000\"]\n\n\
         [instance.{id}]\nservice = \"iso\"\naddress = \"{a}\"\nport = {port}\nhostname = \"{id}.example\"\n\
         paths = {{ etc = \"{etc}\", data = \"{data}\" }}\n",
        view = view.display(),
        b = bin.display(),
        etc = h.path(&format!("{id}/etc")).display(),
        data = h.path(&format!("{id}/data")).display(),
    );
    (cfg, view)
}

fn verify(h: &Harness, id: &str) -> Out {
    h.run(&["verify", id])
}

fn pid_of_process(h: &Harness, id: &str, name: &str) -> i32 {
    let st = h.status_json(id);
    st["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["pid"].as_i64())
        .unwrap_or_else(|| panic!("no {name} in {st}")) as i32
}

#[test]
fn verify_passes_on_a_clean_instance_and_says_7_when_stopped() {
    require();
    let h = Harness::new();
    let (cfg, _) = isolated(&h, "clean", &h.addr(1), free_port(), "force_bind = true");
    h.write_config("a.toml", &cfg);
    h.run(&["start", "clean"]).ok();
    let out = verify(&h, "clean").ok();
    for check in [
        "sockets",
        "uts",
        "bind ",
        "private /tmp",
        "lock",
        "cgroup",
        "force_bind",
    ] {
        assert!(
            out.stdout.contains(&format!("ok   {check}")),
            "{check}: {out}"
        );
    }
    assert!(!out.stdout.contains("FAIL"), "{out}");
    let out = h.run(&["verify", "clean", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    h.run(&["stop", "clean"]).ok();
    let out = verify(&h, "clean").code(7);
    assert!(out.stderr.contains("not running"), "{out}");
}

#[test]
fn verify_names_a_wildcard_listener_without_force_bind() {
    require();
    let h = Harness::new();
    let port = free_port();
    let (cfg, _) = isolated(&h, "wild", &h.addr(1), port, "");
    h.write_config("a.toml", &cfg);
    h.run(&["start", "wild"]).ok();
    let out = verify(&h, "wild").code(1);
    assert!(
        out.stdout.contains(&format!(
            "FAIL sockets: pid {}: tcp listening on 0.0.0.0:{port}",
            pid_of_process(&h, "wild", "main")
        )),
        "{out}"
    );
    assert!(out.stderr.contains("wild: sockets:"), "{out}");
}

#[test]
fn verify_names_a_process_moved_out_of_its_cgroup() {
    require();
    let h = Harness::new();
    let (cfg, _) = isolated(&h, "mv", &h.addr(1), free_port(), "force_bind = true");
    h.write_config("a.toml", &cfg);
    h.run(&["start", "mv"]).ok();
    verify(&h, "mv").ok();
    let side = pid_of_process(&h, "mv", "side");
    // Out of the instance's cgroup, and so out of reach of its stop.
    let _guard = KillOnDrop::new(side);
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts = cohost::isolation::cgroup::parse_mountinfo(&mi);
    let mount = mounts.iter().find(|m| m.v2).unwrap().point.clone();
    write(&mount.join("cgroup.procs"), &side.to_string());
    let out = verify(&h, "mv").code(1);
    assert!(
        out.stdout.contains(&format!(
            "FAIL cgroup: pid {side} (sleep) has the instance's environment but is in cgroup /"
        )),
        "{out}"
    );
}

#[test]
fn verify_names_a_missing_bind_mount() {
    require();
    let h = Harness::new();
    let (cfg, view) = isolated(&h, "nomnt", &h.addr(1), free_port(), "force_bind = true");
    h.write_config("a.toml", &cfg);
    h.run(&["start", "nomnt"]).ok();
    let main = pid_of_process(&h, "nomnt", "main");
    let mut c = Command::new("nsenter");
    c.arg("-t")
        .arg(main.to_string())
        .arg("-m")
        .arg("umount")
        .arg(&view);
    run_cmd(c).ok();
    let out = verify(&h, "nomnt").code(1);
    assert!(
        out.stdout
            .contains(&format!("FAIL bind {}: pid", view.display()))
            && out.stdout.contains("not bind-mounted"),
        "{out}"
    );
}

#[test]
fn verify_names_a_lock_not_held() {
    require();
    let h = Harness::new();
    let (cfg, _) = isolated(&h, "nolock", &h.addr(1), free_port(), "force_bind = true");
    h.write_config("a.toml", &cfg);
    h.run(&["start", "nolock"]).ok();
    verify(&h, "nolock").ok();
    // Another file where the lock was: nobody holds that one.
    let lock = h.path("nolock/data/.cohost.lock");
    assert!(lock.exists(), "the lock file is where reference.toml says");
    std::fs::rename(&lock, h.path("nolock/data/old.lock")).unwrap();
    write(&lock, "");
    let out = verify(&h, "nolock").code(1);
    assert!(
        out.stdout.contains(&format!(
            "FAIL lock: {} is not locked by this node",
            lock.display()
        )),
        "{out}"
    );
}

#[test]
fn exec_join_runs_inside_the_instance() {
    require();
    let h = Harness::new();
    let (mut cfg, view) = isolated(&h, "j1", &h.addr(1), free_port(), "force_bind = true");
    // A second copy with its own file at the same view path.
    cfg += &format!(
        "\n[instance.j2]\nservice = \"iso\"\naddress = \"{}\"\nport = {}\nhostname = \"j2.example\"\npaths = {{ etc = \"{}\", data = \"{}\" }}\n",
        h.addr(2),
        free_port(),
        h.path("j2/etc").display(),
        h.path("j2/data").display()
    );
    h.mkdirs(&["j2/etc", "j2/data"]);
    write(&h.path("j2/etc/file"), "j2's file\n");
    h.write_config("a.toml", &cfg);
    h.run(&["start", "j1"]).ok();
    h.run(&["start", "j2"]).ok();
    let out = h.run(&["exec", "j1", "--join", "--", "hostname"]).ok();
    assert_eq!(out.stdout.trim(), "j1.example", "{out}");
    let file = view.join("file").display().to_string();
    for id in ["j1", "j2"] {
        let out = h.run(&["exec", id, "--join", "--", "cat", &file]).ok();
        assert_eq!(out.stdout, format!("{id}'s file\n"), "{out}");
    }
    // The command is in the instance's cgroup while it runs.
    let out = h
        .run(&["exec", "j1", "--join", "--", "cat", "/proc/self/cgroup"])
        .ok();
    let cg = h.status_json("j1")["tracking"]
        .as_str()
        .unwrap()
        .trim_start_matches("cgroup ")
        .to_string();
    let line = out.stdout.lines().find(|l| l.starts_with("0::")).unwrap();
    assert!(cg.ends_with(&line[3..]), "{line} not {cg}");
    // Its environment too; without --join, a fresh context outside the cgroup.
    let out = h
        .run(&[
            "exec",
            "j1",
            "--join",
            "--",
            "sh",
            "-c",
            "echo $COHOST_INSTANCE",
        ])
        .ok();
    assert_eq!(out.stdout.trim(), "j1");
    let fresh = h
        .run(&["exec", "j1", "--", "cat", "/proc/self/cgroup"])
        .ok();
    assert!(!fresh.stdout.contains(&line[3..]), "{fresh}");
    h.run(&["stop", "j1"]).ok();
    h.run(&["exec", "j1", "--join", "--", "true"]).code(7);
}

#[test]
fn a_sigkilled_daemon_comes_back_and_force_bind_instances_keep_their_programs() {
    require();
    let h = Harness::new();
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    let mut cfg = service(&h, "forced", "tcp", &any, "force_bind = true");
    let (a1, a2) = (h.addr(1), h.addr(2));
    cfg += &instance("k1", "forced", &a1, port, "");
    cfg += &instance("k2", "forced", &a2, port, "");
    h.write_config("a.toml", &cfg);
    h.run(&["start", "k1"]).ok();
    let members = h.members("k1");
    let dpid = h.daemon_pid().unwrap();
    // SAFETY: kill(2) of this test's daemon.
    unsafe { libc::kill(dpid, libc::SIGKILL) };
    h.wait_for("daemon gone", || !alive(dpid));
    // A new start brings a new daemon, which adopts k1 and the programs.
    h.run(&["start", "k2"]).ok();
    assert_ne!(h.daemon_pid(), Some(dpid));
    assert_eq!(h.members("k1"), members, "k1 adopted, not restarted");
    assert!(ask_tcp(&format!("{a1}:{port}")).starts_with("k1 "));
    assert!(ask_tcp(&format!("{a2}:{port}")).starts_with("k2 "));
    for id in ["k1", "k2"] {
        let out = verify(&h, id).ok();
        assert!(out.stdout.contains("ok   force_bind"), "{out}");
    }
    // One program per hook on k1's cgroup: adopted, not added beside.
    let dir = h.status_json("k1")["tracking"]
        .as_str()
        .unwrap()
        .trim_start_matches("cgroup ")
        .to_string();
    let fd = bpf::open_cgroup(Path::new(&dir)).unwrap();
    let q = bpf::query(fd.as_fd()).unwrap();
    for hook in [Hook::Bind4, Hook::Bind6] {
        assert_eq!(q.iter().filter(|p| p.hook == hook).count(), 1, "{q:?}");
    }
    // The new daemon adopted the address set the programs on k1 use: k2,
    // attached by it, uses the very same maps (a fresh set would give k2
    // other map ids, and k1's neighbours would be unknown to it).
    let dir2 = h.status_json("k2")["tracking"]
        .as_str()
        .unwrap()
        .trim_start_matches("cgroup ")
        .to_string();
    let fd2 = bpf::open_cgroup(Path::new(&dir2)).unwrap();
    let set_of = |fd: std::os::fd::BorrowedFd| {
        bpf::AddressSet::adopt(fd)
            .unwrap()
            .expect("our programs are attached")
            .ids()
    };
    assert_eq!(set_of(fd.as_fd()), set_of(fd2.as_fd()), "one set, adopted");
    assert!(
        h.daemon_log().contains("adopted the programs"),
        "{}",
        h.daemon_log()
    );
    // Restarting k1 under the new daemon still works (programs in place).
    h.run(&["restart", "k1"]).ok();
    assert!(ask_tcp(&format!("{a1}:{port}")).starts_with("k1 "));
}

#[test]
fn a_bad_force_bind_names_file_line_and_instance() {
    let h = Harness::new();
    let f = h.write_config(
        "bad.toml",
        "[service.s]\ncommand = [\"true\"]\n\n[instance.x]\nservice = \"s\"\nforce_bind = \"yes\"\n\n[instance.y]\nservice = \"s\"\nforce_source = true\n",
    );
    let out = h.run(&["validate"]).code(2);
    let file = f.display().to_string();
    assert!(out.stderr.contains(&format!("{file}:6:")), "{out}");
    assert!(out.stderr.contains("force_bind"), "{out}");
    assert!(
        out.stderr.contains(&format!("{file}:8:"))
            && out
                .stderr
                .contains("force_source needs the instance's `address`"),
        "{out}"
    );
}

#[test]
fn without_cgroup_v2_validate_passes_and_start_names_what_is_missing() {
    require();
    let h = Harness::new();
    let port = free_port();
    let mut cfg = "[supervisor]\ncgroup = \"off\"\n\n".to_string();
    cfg += &service(
        &h,
        "forced",
        "tcp",
        &format!("0.0.0.0:{port}"),
        "force_bind = true",
    );
    cfg += &instance("nocg", "forced", &h.addr(1), port, "");
    h.write_config("a.toml", &cfg);
    h.run(&["validate"]).ok();
    let out = h.run(&["start", "nocg"]).code(1);
    assert!(
        out.stderr.contains("force_bind needs cgroup v2")
            && out.stderr.contains("cgroup = \"off\""),
        "{out}"
    );
    assert!(h.members("nocg").is_empty(), "nothing was started");
}

#[test]
fn verify_names_force_bind_programs_taken_off_the_cgroup() {
    require();
    let h = Harness::new();
    let (cfg, _) = isolated(&h, "off", &h.addr(1), free_port(), "force_bind = true");
    h.write_config("a.toml", &cfg);
    h.run(&["start", "off"]).ok();
    verify(&h, "off").ok();
    let dir = h.status_json("off")["tracking"]
        .as_str()
        .unwrap()
        .trim_start_matches("cgroup ")
        .to_string();
    let fd = bpf::open_cgroup(Path::new(&dir)).unwrap();
    // Another tool takes the IPv6 one off: the IPv4 one still leads
    // verify to the address set.
    assert_eq!(bpf::detach(fd.as_fd(), &[Hook::Bind6]).unwrap(), 1);
    let out = verify(&h, "off").code(1);
    assert!(
        out.stdout
            .contains("FAIL force_bind: cgroup/bind6: cohost_bind6 is not attached"),
        "{out}"
    );
}

#[test]
fn reload_turning_force_bind_off_takes_the_programs_off_at_the_next_start() {
    require();
    let h = Harness::new();
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    let a = h.addr(1);
    let write = |on: bool| {
        let mut cfg = service(&h, "s", "tcp", &any, &format!("force_bind = {on}"));
        cfg += &instance("r1", "s", &a, port, "");
        h.write_config("a.toml", &cfg);
    };
    write(true);
    h.run(&["start", "r1"]).ok();
    assert!(log_of(&h, "r1", "s").contains(&format!("bound {a}:{port}")));
    let cgroup_ino = |h: &Harness| {
        let dir = h.status_json("r1")["tracking"]
            .as_str()
            .unwrap()
            .trim_start_matches("cgroup ")
            .to_string();
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir).unwrap())
    };
    let before = cgroup_ino(&h);
    h.run(&["stop", "r1"]).ok();
    write(false);
    h.run(&["reload"]).ok();
    // The cgroup of the last run is kept for this start (same limits):
    // its programs must go.
    h.run(&["start", "r1"]).ok();
    let log = log_of(&h, "r1", "s");
    assert!(log.contains(&format!("bound 0.0.0.0:{port}")), "{log}");
    assert_eq!(cgroup_ino(&h), before, "the kept cgroup was reused");
    let dir = h.status_json("r1")["tracking"]
        .as_str()
        .unwrap()
        .trim_start_matches("cgroup ")
        .to_string();
    let fd = bpf::open_cgroup(Path::new(&dir)).unwrap();
    assert!(bpf::query(fd.as_fd()).unwrap().is_empty());
}
