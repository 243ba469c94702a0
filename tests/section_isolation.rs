//! Takeover isolation, for real (root): logical host name (UTS namespace),
//! bind paths (mount namespace), address gating and owned addresses
//! (in a network namespace of the test's own), cgroup limits, user and
//! limits, the one-holder lock, the bind audit.

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn testsvc() -> String {
    example("testsvc").display().to_string()
}

#[test]
fn logical_hostname_in_its_own_uts_namespace() {
    require_root_cgroups();
    let h = Harness::new();
    h.mkdirs(&["u1/data"]);
    let physical = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    h.write_config(
        "u.toml",
        &format!(
            "[service.rep]\ncommand = [\"{}\", \"report\", \"${{data}}/report\"]\nisolate = {{ uts = true }}\nhostname_env = \"WLOCALHOST\"\n\n[instance.u1]\nservice = \"rep\"\nhostname = \"essrv01.example\"\npaths = {{ data = \"{}\" }}\n",
            testsvc(),
            h.path("u1/data").display()
        ),
    );
    h.run(&["start", "u1"]).ok();
    let report = h.path("u1/data/report");
    h.wait_for("report", || report.exists());
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.contains("hostname essrv01.example\n"),
        "gethostname() inside the instance\n{text}"
    );
    assert!(
        text.contains("env WLOCALHOST=essrv01.example\n")
            && text.contains("env COHOST_HOSTNAME=essrv01.example\n")
    );
    // `hostname` and `uname -n` through cohost exec say the same.
    let out = h
        .run(&["exec", "u1", "--", "sh", "-c", "hostname; uname -n"])
        .ok();
    assert_eq!(out.stdout, "essrv01.example\nessrv01.example\n");
    // The node's own name is untouched.
    assert_eq!(
        nix::unistd::gethostname().unwrap().to_string_lossy(),
        physical
    );
}

#[test]
fn bind_paths_show_each_instance_its_own_directory() {
    require_root_cgroups();
    let h = Harness::new();
    // The "hard-coded" product directory, as a product expects it on the host.
    let hard = h.path("etc-product");
    std::fs::create_dir_all(&hard).unwrap();
    let mut cfg = format!(
        "[service.prod]\ncommand = [\"sh\", \"-c\", \"cat {hard}/product.conf > ${{data}}/seen; echo private > /tmp/cohost-private-$COHOST_INSTANCE; exec {t} sleep\"]\nbind = {{ \"{hard}\" = \"${{etc}}\" }}\nisolate = {{ private_tmp = true }}\n",
        hard = hard.display(),
        t = testsvc()
    );
    for id in ["b1", "b2"] {
        h.mkdirs(&[&format!("{id}/data"), &format!("{id}/etc")]);
        write(
            &h.path(&format!("{id}/etc/product.conf")),
            &format!("config of {id}\n"),
        );
        cfg.push_str(&format!(
            "\n[instance.{id}]\nservice = \"prod\"\npaths = {{ data = \"{}\", etc = \"{}\" }}\n",
            h.path(&format!("{id}/data")).display(),
            h.path(&format!("{id}/etc")).display()
        ));
    }
    h.write_config("b.toml", &cfg);
    h.run(&["start", "b1"]).ok();
    h.run(&["start", "b2"]).ok();
    for id in ["b1", "b2"] {
        let seen = h.path(&format!("{id}/data/seen"));
        h.wait_for("seen", || {
            std::fs::read_to_string(&seen).is_ok_and(|s| !s.is_empty())
        });
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap(),
            format!("config of {id}\n"),
            "each sees its own file at the hard-coded path"
        );
        let out = h
            .run(&[
                "exec",
                id,
                "--",
                "cat",
                &format!("{}/product.conf", hard.display()),
            ])
            .ok();
        assert_eq!(out.stdout, format!("config of {id}\n"));
        assert!(
            !Path::new(&format!("/tmp/cohost-private-{id}")).exists(),
            "its /tmp is private"
        );
    }
    // The host's view is unchanged: nothing is mounted on the path here.
    assert!(!hard.join("product.conf").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(hard.to_str().unwrap()),
        "no mount leaked to the host"
    );
}

#[test]
fn address_gating_waits_fails_naming_the_address_and_owned_addresses_come_and_go() {
    require_root_cgroups();
    require_tools(&[("ip", "iproute2"), ("nsenter", "util-linux")]);
    let h = Harness::new();
    let ns = Netns::new(&format!("cohost-ag-{}", std::process::id()));
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ns.ip(&["link", "set", "d1", "up"]);
    ns.ip(&["link", "set", "d0", "up"]);
    let (a1, a2) = ("10.77.0.5", "10.77.0.6");
    h.write_config(
        "a.toml",
        &format!(
            "[service.srv]\ncommand = [\"{t}\", \"serve\", \"${{address}}:${{port}}\"]\nready = {{ tcp = \"${{address}}:${{port}}\", timeout = \"3s\" }}\n\n\
             [instance.g1]\nservice = \"srv\"\naddress = \"{a1}\"\nport = 7030\n\n\
             [instance.g2]\nservice = \"srv\"\naddress = \"{a2}\"\nport = 7030\naddress_mode = \"own\"\ninterface = \"d0\"\nprefix = 24\n",
            t = testsvc()
        ),
    );
    let cohost = |args: &[&str]| {
        let mut c = ns.cmd(&cohost_bin());
        c.arg("--config")
            .arg(&h.config)
            .arg("--runtime-dir")
            .arg(&h.runtime)
            .args(args);
        run_cmd(c)
    };
    // Not configured here: start waits, says so, and fails naming it.
    let t = Instant::now();
    let out = cohost(&["start", "g1"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(
        out.stdout
            .contains(&format!("waiting for {a1} to be configured on this node")),
        "{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("{a1} is not configured on this node after 3s")),
        "{out}"
    );
    // Configured while start waits: start goes on at once (rtnetlink event).
    let waiter = std::thread::spawn({
        let mut c = ns.cmd(&cohost_bin());
        c.arg("--config")
            .arg(&h.config)
            .arg("--runtime-dir")
            .arg(&h.runtime)
            .args(["start", "g1", "--timeout", "30"]);
        move || run_cmd(c)
    });
    // Synchronize on the state, not a delay: g1 is waiting for its
    // address, so its start can only finish through the rtnetlink event.
    h.wait_for("g1 waits for its address", || {
        h.state("g1") == "waiting-address"
    });
    ns.ip(&["addr", "add", &format!("{a1}/24"), "dev", "d0"]);
    let out = waiter.join().unwrap();
    assert_eq!(out.code, 0, "{out}");
    // address_mode = "own": added at start, announced with a gratuitous
    // ARP (seen from the other end of the link), removed after stop.
    let d0_mac = ns.ip(&["-o", "link", "show", "dev", "d0"]).stdout;
    let d0_mac: Vec<u8> = d0_mac
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("d0's MAC")
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    let arp = capture_arp(&ns.0, "d1");
    cohost(&["start", "g2"]).ok();
    assert!(
        ns.ip(&["-o", "addr", "show", "dev", "d0"])
            .stdout
            .contains(&format!("{a2}/24"))
    );
    let frames = arp.join().unwrap();
    let ip: Vec<u8> = a2.split('.').map(|x| x.parse().unwrap()).collect();
    let announced = frames.iter().any(|f| {
        f.len() >= 28
            && f[6..8] == [0, 1]
            && f[8..14] == d0_mac[..]
            && f[14..18] == ip[..]
            && f[24..28] == ip[..]
    });
    assert!(
        announced,
        "a gratuitous ARP for {a2} from d0 ({d0_mac:02x?}); seen on d1: {frames:02x?}"
    );
    cohost(&["monitor", "g2"]).ok();
    cohost(&["stop", "g2"]).ok();
    assert!(
        !ns.ip(&["-o", "addr", "show", "dev", "d0"])
            .stdout
            .contains(a2),
        "owned address removed"
    );
    cohost(&["shutdown"]).ok();
}

/// Collects the ARP frames arriving on `iface` in network namespace `ns`
/// for a few seconds (a thread that joins the namespace; the socket is
/// open when this returns).
fn capture_arp(ns: &str, iface: &str) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (ns, iface) = (ns.to_string(), iface.to_string());
    let t = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        // SAFETY: setns(2) of this thread only; the fd is valid.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let proto = (libc::ETH_P_ARP as u16).to_be() as i32;
        // SAFETY: a packet socket; checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: zeroed sockaddr_ll, fields set; bind to one interface.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            assert_eq!(
                libc::bind(
                    fd,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32
                ),
                0
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        ready_tx.send(()).unwrap();
        let mut frames = Vec::new();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            let mut buf = [0u8; 256];
            // SAFETY: recv into a local buffer.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        frames
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("capture socket open");
    t
}

/// The file of a cgroup controller setting for a process, found through
/// /proc/PID/cgroup and the mounts (v2 if the controller is there, else v1).
fn controller_file(pid: i32, controller: &str, file: &str) -> std::path::PathBuf {
    let mounts = cohost::isolation::cgroup::parse_mountinfo(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
    );
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let (v2, v1) = cohost::isolation::cgroup::own_paths(&own);
    let v2m = mounts.iter().find(|m| m.v2).unwrap();
    let v2_has = std::fs::read_to_string(v2m.point.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller);
    if v2_has {
        return v2m
            .point
            .join(v2.unwrap().trim_start_matches('/'))
            .join(file);
    }
    let m = mounts
        .iter()
        .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))
        .expect("a v1 hierarchy with the controller");
    let path = v1
        .iter()
        .find(|(c, _)| c.iter().any(|x| x == controller))
        .map(|(_, p)| p.clone())
        .unwrap();
    m.point.join(path.trim_start_matches('/')).join(file)
}

#[test]
fn cgroup_limits_are_applied_where_the_controller_is() {
    require_root_cgroups();
    let h = Harness::new();
    h.write_config(
        "l.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"sleep\"]\npids_max = 20\nmemory_max = \"64M\"\n\n[instance.lim1]\nservice = \"s\"\n",
            testsvc()
        ),
    );
    h.run(&["start", "lim1"]).ok();
    let st = h.status_json("lim1");
    assert!(
        st["tracking"].as_str().unwrap().starts_with("cgroup "),
        "{st}"
    );
    let pid = h.members("lim1")[0];
    let pids_max = controller_file(pid, "pids", "pids.max");
    assert_eq!(
        std::fs::read_to_string(&pids_max).unwrap().trim(),
        "20",
        "{}",
        pids_max.display()
    );
    let mem = controller_file(pid, "memory", "memory.max");
    let mem = if mem.exists() {
        mem
    } else {
        controller_file(pid, "memory", "memory.limit_in_bytes")
    };
    assert_eq!(
        std::fs::read_to_string(&mem).unwrap().trim(),
        (64u64 << 20).to_string(),
        "{}",
        mem.display()
    );
    let dir = pids_max.parent().unwrap().to_path_buf();
    h.run(&["stop", "lim1"]).ok();
    // Kept empty for the next start (same limits)...
    let left = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    assert!(left.trim().is_empty(), "empty after stop: {left}");
    // ...a changed limit applies at the next start...
    h.write_config(
        "l.toml",
        &format!(
            "[service.s]\ncommand = [\"{}\", \"sleep\"]\npids_max = 30\n\n[instance.lim1]\nservice = \"s\"\n",
            testsvc()
        ),
    );
    h.run(&["reload"]).ok();
    h.run(&["start", "lim1"]).ok();
    let pid = h.members("lim1")[0];
    let pids_max = controller_file(pid, "pids", "pids.max");
    assert_eq!(std::fs::read_to_string(&pids_max).unwrap().trim(), "30");
    // The instance may sit in a memory cgroup of its own for its usage
    // figures (issue 15), but without the old limit.
    let mem = controller_file(pid, "memory", "memory.max");
    let mem = if mem.exists() {
        mem
    } else {
        controller_file(pid, "memory", "memory.limit_in_bytes")
    };
    let limit = std::fs::read_to_string(&mem).unwrap_or_default();
    assert!(
        limit.trim() == "max" || limit.trim().parse::<u64>().unwrap_or(0) > 1 << 40,
        "no memory limit once memory_max is gone: {} says {limit}",
        mem.display()
    );
    // ...and the daemon removes its cgroups when it exits.
    h.run(&["shutdown"]).ok();
    assert!(
        !dir.exists(),
        "limit cgroup removed at exit: {}",
        dir.display()
    );
}

#[test]
fn user_group_umask_and_rlimits_and_a_missing_user_named() {
    require_root_cgroups();
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new();
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out_dir = h.path("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    h.write_config(
        "u.toml",
        &format!(
            "[service.rep]\ncommand = [\"{t}\", \"report\", \"{o}/report\"]\nuser = \"nobody\"\numask = \"027\"\nrlimits = {{ nofile = 1234, core = 0 }}\ncwd = \"/\"\n\n\
             [service.ghost]\ncommand = [\"{t}\", \"sleep\"]\nuser = \"no-such-user-cohost\"\n\n\
             [instance.n1]\nservice = \"rep\"\n\n[instance.n2]\nservice = \"ghost\"\n",
            t = testsvc(),
            o = out_dir.display()
        ),
    );
    h.run(&["start", "n1"]).ok();
    let report = out_dir.join("report");
    h.wait_for("report", || report.exists());
    let text = std::fs::read_to_string(&report).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert!(
        text.contains(&format!("uid {}\n", nobody.uid))
            && text.contains(&format!("gid {}\n", nobody.gid)),
        "{text}"
    );
    assert!(text.contains("umask 027\n"), "{text}");
    assert!(text.contains("env USER=nobody\n"), "{text}");
    let pid = h.members("n1")[0];
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        nofile.split_whitespace().filter(|w| *w == "1234").count() == 2,
        "{nofile}"
    );
    let out = h.run(&["start", "n2"]).code(1);
    assert!(
        out.stderr.contains("n2")
            && out
                .stderr
                .contains("user \"no-such-user-cohost\" does not exist on this node"),
        "{out}"
    );
}

#[test]
fn one_holder_lock_refuses_a_second_start_and_dies_with_the_holder() {
    require_root_cgroups();
    let h = Harness::new();
    h.mkdirs(&["lk/data"]);
    h.write_config(
        "k.toml",
        &format!(
            "[supervisor]\nnode = \"node1\"\n\n[service.s]\ncommand = [\"{}\", \"sleep\"]\n\n[instance.lk1]\nservice = \"s\"\npaths = {{ data = \"{}\" }}\n",
            testsvc(),
            h.path("lk/data").display()
        ),
    );
    h.run(&["start", "lk1"]).ok();
    let holder_pid = h.daemon_pid().unwrap();
    // A second supervisor (another runtime dir: like another node sharing the disk).
    let other = h.other_runtime("run2");
    let second = || {
        let mut c = h.command(&["start", "lk1"]);
        c.arg("--runtime-dir").arg(&other);
        run_cmd(c)
    };
    let out = second();
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("lk1 is already running on node node1")
            && out.stderr.contains(&format!("supervisor pid {holder_pid}"))
            && out.stderr.contains(&h.runtime.display().to_string()),
        "names the holder\n{out}"
    );
    // The supervisor alone dies: its instance still runs and still holds
    // the lock (inherited fd 3): still refused.
    let members = h.members("lk1");
    // SAFETY: kill(2) of the daemon.
    unsafe { libc::kill(holder_pid, libc::SIGKILL) };
    h.wait_for("holder daemon gone", || !alive(holder_pid));
    assert_eq!(second().code, 1, "the instance's processes still hold it");
    // The instance dies too (the node is gone): the lock dies with it.
    for p in &members {
        // SAFETY: kill(2) of the instance's processes.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    h.wait_for("instance gone", || members.iter().all(|p| !alive(*p)));
    let out = second();
    assert_eq!(out.code, 0, "takeover after the holder died\n{out}");
}

#[test]
fn bind_audit_reports_a_wildcard_listener_and_strict_bind_fails_it() {
    require_root_cgroups();
    let h = Harness::new();
    let port = 20000 + (std::process::id() % 20000) as u16;
    h.write_config(
        "w.toml",
        &format!(
            "[service.wild]\ncommand = [\"{t}\", \"wildcard\", \"{port}\"]\nready = {{ tcp = \"${{address}}:${{port}}\", timeout = \"10s\" }}\n\n\
             [instance.w1]\nservice = \"wild\"\naddress = \"{a}\"\nport = {port}\n\n\
             [instance.w2]\nservice = \"wild\"\naddress = \"{b}\"\nport = {port}\nstrict_bind = true\n",
            t = testsvc(),
            a = h.addr(40),
            b = h.addr(41)
        ),
    );
    h.run(&["start", "w1"]).ok();
    let st = h.status_json("w1");
    let warnings = st["warnings"].to_string();
    assert!(
        warnings.contains(&format!("0.0.0.0:{port}")) && warnings.contains("testsvc"),
        "{st}"
    );
    let out = h.run(&["status", "w1"]).ok();
    assert!(
        out.stdout.contains("warning: listens on every address"),
        "{out}"
    );
    h.run(&["stop", "w1"]).ok();
    let out = h.run(&["start", "w2"]).code(1);
    assert!(
        out.stderr.contains("strict_bind") && out.stderr.contains(&format!("0.0.0.0:{port}")),
        "{out}"
    );
    assert_eq!(h.state("w2"), "failed");
    assert!(h.members("w2").is_empty(), "nothing left running");
}
