//! force_bind and force_source against the real kernel (as root): real
//! cgroups under /sys/fs/cgroup/unified, real sockets, network namespaces
//! for IPv6 and for a peer behind a veth pair. A test child
//! (`examples/binder.rs`) binds the wildcard like a product that knows
//! nothing of logical addresses. Every process, cgroup and namespace a test
//! makes is removed on Drop, pass or fail.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use cohost::isolation::bpf::{self, AddressSet, ForceBind, ForceSource, Hook, HookState, Refusal};
use cohost::isolation::sockets::{self, Proto};
use common::Netns;

/// Only to never hang the suite: every wait below ends on an event.
const TIMEOUT: Duration = Duration::from_secs(30);
const UNIFIED: &str = "/sys/fs/cgroup/unified";

static NEXT: AtomicU32 = AtomicU32::new(1);

fn next() -> u32 {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// Root, a cgroup v2 at /sys/fs/cgroup/unified, bpf(): fail with what is
/// missing, never skip.
fn require() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (CAP_BPF, CAP_NET_ADMIN, cgroups, namespaces): run the suite as root"
    );
    if let Err(e) = bpf::open_cgroup(Path::new(UNIFIED)) {
        panic!("this test needs cgroup v2 at {UNIFIED}: {e}");
    }
    common::require_tools(&[("ip", "iproute2"), ("nsenter", "util-linux")]);
}

/// This test's own loopback addresses 127.B.N.x (B apart from the 127.x
/// blocks of tests/common's Harness, N per test).
fn lo_addr(n: u32, x: u8) -> IpAddr {
    let b = 251 + (std::process::id() % 4) as u8;
    format!("127.{b}.{}.{x}", n % 250).parse().unwrap()
}

fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// A cgroup v2 directory of the test, removed on drop (its processes
/// killed first, the removal detaches the programs).
struct TestCgroup {
    path: PathBuf,
    fd: OwnedFd,
}

impl TestCgroup {
    fn new(parent: &Path, tag: &str) -> TestCgroup {
        let path = parent.join(format!(
            "cohost-test-bpf-{}-{}-{tag}",
            std::process::id(),
            next()
        ));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let fd = bpf::open_cgroup(&path).unwrap_or_else(|e| panic!("{e}"));
        TestCgroup { path, fd }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        // The Lab reaps its children before dropping the cgroups, so the
        // cgroup is empty here; rmdir fails (EBUSY) only if it is not.
        if let Err(e) = std::fs::remove_dir(&self.path)
            && !std::thread::panicking()
        {
            panic!("rmdir {}: {e}", self.path.display());
        }
    }
}

/// A test child: its stdout lines, its stderr, its exit.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    shown: String,
}

impl Proc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next stdout line, or a panic naming the command and its stderr
    /// if it exits first.
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                let st = self.child.wait().unwrap();
                let err = self.stderr.take().unwrap().join().unwrap();
                panic!("{} gave no line ({e}, {st}); stderr:\n{err}", self.shown);
            }
        }
    }

    /// Waits for the exit; (exit code, stderr).
    fn exit(mut self) -> (i32, String) {
        let st = self.child.wait().unwrap();
        let err = self.stderr.take().unwrap().join().unwrap();
        (st.code().unwrap_or(-1), err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Owns what a test makes, and drops it in the right order: processes
/// (killed and reaped), then cgroups, then network namespaces.
#[derive(Default)]
struct Lab {
    procs: Vec<Proc>,
    cgroups: Vec<TestCgroup>,
    netns: Vec<Netns>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.procs.clear();
        while self.cgroups.pop().is_some() {} // children before parents
        self.netns.clear();
    }
}

impl Lab {
    fn cgroup(&mut self, tag: &str) -> usize {
        self.cgroups.push(TestCgroup::new(Path::new(UNIFIED), tag));
        self.cgroups.len() - 1
    }

    /// A cgroup inside cgroup `parent`, as a product could make itself.
    fn subcgroup(&mut self, parent: usize, tag: &str) -> usize {
        let p = self.cgroups[parent].path.clone();
        self.cgroups.push(TestCgroup::new(&p, tag));
        self.cgroups.len() - 1
    }

    fn netns(&mut self) -> usize {
        let name = format!("cohost-tb-{}-{}", std::process::id(), next());
        self.netns.push(Netns::new(&name));
        self.netns.len() - 1
    }

    /// Runs `binder ARGS` as a member of cgroup `cg` (it joins before exec:
    /// `sh` writes itself to cgroup.procs, then execs), in netns `ns`.
    fn spawn(&mut self, cg: Option<usize>, ns: Option<usize>, args: &[&str]) -> &mut Proc {
        let binder = common::example("binder");
        let cgdir = cg.map_or(String::new(), |i| {
            self.cgroups[i].path.display().to_string()
        });
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"if [ -n "$1" ]; then echo $$ > "$1/cgroup.procs" || exit 97; fi; shift; exec "$@""#)
            .arg("sh")
            .arg(&cgdir);
        if let Some(n) = ns {
            c.arg("nsenter")
                .arg(format!("--net=/run/netns/{}", self.netns[n].0));
        }
        c.arg(&binder).args(args);
        let shown = format!("binder {} (cgroup {cgdir:?}, netns {ns:?})", args.join(" "));
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {shown}: {e}"));
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        self.procs.push(Proc {
            child,
            lines,
            stderr: Some(stderr),
            shown,
        });
        self.procs.last_mut().unwrap()
    }

    /// A listener: waits for its "bound ADDR" line and returns ADDR.
    fn listen(&mut self, cg: Option<usize>, ns: Option<usize>, args: &[&str]) -> (SocketAddr, i32) {
        let p = self.spawn(cg, ns, args);
        let l = p.line();
        let addr = l
            .strip_prefix("bound ")
            .unwrap_or_else(|| panic!("{}: {l}", p.shown))
            .parse()
            .unwrap();
        (addr, p.pid())
    }

    /// A child expected to fail: its stderr.
    fn fails(&mut self, cg: Option<usize>, ns: Option<usize>, args: &[&str]) -> String {
        self.spawn(cg, ns, args);
        let p = self.procs.pop().unwrap();
        let shown = p.shown.clone();
        let (code, err) = p.exit();
        assert_eq!(code, 2, "{shown} should have failed; stderr:\n{err}");
        err
    }

    /// A one-shot client in `ns`: the answer line.
    fn ask(&mut self, cg: Option<usize>, ns: Option<usize>, args: &[&str]) -> String {
        let p = self.spawn(cg, ns, args);
        let l = p.line();
        let p = self.procs.pop().unwrap();
        let shown = p.shown.clone();
        let (code, err) = p.exit();
        assert_eq!(code, 0, "{shown}; stderr:\n{err}");
        l
    }
}

/// The first line a TCP server at `to` sends (from this process).
fn ask_tcp(to: SocketAddr) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&to, TIMEOUT)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

fn ask_udp(to: SocketAddr) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.send_to(b"hi", to).unwrap();
    let mut buf = [0u8; 512];
    let n = s
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no answer from {to}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A supervisor's force_bind, its set holding `addrs`.
fn force_bind(addrs: &[IpAddr]) -> ForceBind {
    let set = AddressSet::create(64).unwrap_or_else(|e| panic!("{e}"));
    for a in addrs {
        set.insert(*a).unwrap();
    }
    ForceBind::load(set).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn tcp4_two_wildcard_binders_share_a_port_each_on_its_own_address() {
    require();
    let n = next();
    let (a, b) = (lo_addr(n, 2), lo_addr(n, 3));
    let port = free_port(false);
    let any = format!("0.0.0.0:{port}");
    let mut lab = Lab::default();
    let (ca, cb) = (lab.cgroup("a"), lab.cgroup("b"));

    // Without the programs the second copy cannot bind: that is the test.
    let (got, pid0) = lab.listen(Some(ca), None, &["listen", "tcp", &any, "A"]);
    assert_eq!(got.to_string(), any);
    // What `cohost verify` says of it.
    let v = sockets::violations(&sockets::of_pids(&[pid0]).unwrap(), a, false);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].to_string()
            .contains(&format!("tcp listening on {any}: every address")),
        "{}",
        v[0]
    );
    let err = lab.fails(Some(cb), None, &["listen", "tcp", &any, "B"]);
    assert!(err.contains("Address already in use"), "{err}");
    lab.procs.clear();

    let fb = force_bind(&[a, b]);
    assert_eq!(fb.refusal(), Refusal::AddrNotAvail);
    fb.attach(lab.cgroups[ca].fd(), a)
        .unwrap_or_else(|e| panic!("{e}"));
    fb.attach(lab.cgroups[cb].fd(), b)
        .unwrap_or_else(|e| panic!("{e}"));
    // The fds close, the programs (and the maps they use) stay.
    drop(fb);
    let (got_a, pid_a) = lab.listen(Some(ca), None, &["listen", "tcp", &any, "A"]);
    let (got_b, _) = lab.listen(Some(cb), None, &["listen", "tcp", &any, "B"]);
    assert_eq!((got_a, got_b), (sa(a, port), sa(b, port)));
    // Each answers at its own address only; nobody at the wildcard.
    assert!(ask_tcp(sa(a, port)).unwrap().starts_with("A "));
    assert!(ask_tcp(sa(b, port)).unwrap().starts_with("B "));
    let e = ask_tcp(sa("127.0.0.1".parse().unwrap(), port)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // What `cohost verify` sees: the member's listener on the logical address.
    let socks = sockets::of_pids(&[pid_a]).unwrap();
    assert!(
        socks
            .iter()
            .any(|s| s.proto == Proto::Tcp && s.listening && s.bound_to(a)),
        "{socks:#?}"
    );
    assert_eq!(sockets::violations(&socks, a, true), vec![]);
}

#[test]
fn udp4_two_wildcard_binders_share_a_port_each_on_its_own_address() {
    require();
    let n = next();
    let (a, b) = (lo_addr(n, 2), lo_addr(n, 3));
    let port = free_port(true);
    let any = format!("0.0.0.0:{port}");
    let mut lab = Lab::default();
    let (ca, cb) = (lab.cgroup("a"), lab.cgroup("b"));

    lab.listen(Some(ca), None, &["listen", "udp", &any, "A"]);
    let err = lab.fails(Some(cb), None, &["listen", "udp", &any, "B"]);
    assert!(err.contains("Address already in use"), "{err}");
    lab.procs.clear();

    let fb = force_bind(&[a, b]);
    fb.attach(lab.cgroups[ca].fd(), a)
        .unwrap_or_else(|e| panic!("{e}"));
    fb.attach(lab.cgroups[cb].fd(), b)
        .unwrap_or_else(|e| panic!("{e}"));
    let (got_a, pid_a) = lab.listen(Some(ca), None, &["listen", "udp", &any, "A"]);
    let (got_b, _) = lab.listen(Some(cb), None, &["listen", "udp", &any, "B"]);
    assert_eq!((got_a, got_b), (sa(a, port), sa(b, port)));
    assert!(ask_udp(sa(a, port)).starts_with("A "));
    assert!(ask_udp(sa(b, port)).starts_with("B "));
    let socks = sockets::of_pids(&[pid_a]).unwrap();
    assert!(
        socks.iter().any(|s| s.proto == Proto::Udp && s.bound_to(a)),
        "{socks:#?}"
    );
}

#[test]
fn ipv6_two_wildcard_binders_share_a_port_in_a_namespace_of_our_own() {
    require();
    let mut lab = Lab::default();
    let ns = lab.netns();
    let a: IpAddr = "fd00:c0::2".parse().unwrap();
    let b: IpAddr = "fd00:c0::3".parse().unwrap();
    for x in [a, b] {
        lab.netns[ns].ip(&["addr", "add", &format!("{x}/128"), "dev", "lo", "nodad"]);
    }
    let (ca, cb) = (lab.cgroup("a"), lab.cgroup("b"));
    let port = 9094;
    let any = format!("[::]:{port}");
    for proto in ["tcp", "udp"] {
        lab.listen(Some(ca), Some(ns), &["listen", proto, &any, "A"]);
        let err = lab.fails(Some(cb), Some(ns), &["listen", proto, &any, "B"]);
        assert!(err.contains("Address already in use"), "{proto}: {err}");
        lab.procs.clear();
    }
    let fb = force_bind(&[a, b]);
    fb.attach(lab.cgroups[ca].fd(), a)
        .unwrap_or_else(|e| panic!("{e}"));
    fb.attach(lab.cgroups[cb].fd(), b)
        .unwrap_or_else(|e| panic!("{e}"));
    for proto in ["tcp", "udp"] {
        let (got_a, _) = lab.listen(Some(ca), Some(ns), &["listen", proto, &any, "A"]);
        let (got_b, _) = lab.listen(Some(cb), Some(ns), &["listen", proto, &any, "B"]);
        assert_eq!((got_a, got_b), (sa(a, port), sa(b, port)), "{proto}");
        let to_a = sa(a, port).to_string();
        let to_b = sa(b, port).to_string();
        assert!(
            lab.ask(None, Some(ns), &["connect", proto, &to_a])
                .starts_with("A ")
        );
        assert!(
            lab.ask(None, Some(ns), &["connect", proto, &to_b])
                .starts_with("B ")
        );
    }
}

#[test]
fn a_v4_instances_colon_colon_bind_becomes_its_v4_mapped_address() {
    require();
    let n = next();
    let (a, b) = (lo_addr(n, 2), lo_addr(n, 3));
    let port = free_port(false);
    let mut lab = Lab::default();
    let ca = lab.cgroup("a");
    let fb = force_bind(&[a, b]);
    fb.attach(lab.cgroups[ca].fd(), a)
        .unwrap_or_else(|e| panic!("{e}"));
    let (got, _) = lab.listen(
        Some(ca),
        None,
        &["listen", "tcp", &format!("[::]:{port}"), "A"],
    );
    let IpAddr::V4(a4) = a else { unreachable!() };
    assert_eq!(got, sa(IpAddr::V6(a4.to_ipv6_mapped()), port));
    assert!(
        ask_tcp(sa(a, port)).unwrap().starts_with("A "),
        "IPv4 clients reach it"
    );
    let e = ask_tcp(sa("127.0.0.1".parse().unwrap(), port)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn a_bind_to_the_other_instances_address_is_refused_and_the_other_is_unaffected() {
    require();
    let n = next();
    let (a, b) = (lo_addr(n, 2), lo_addr(n, 3));
    let port = free_port(false);
    let mut lab = Lab::default();
    let (ca, cb) = (lab.cgroup("a"), lab.cgroup("b"));
    let fb = force_bind(&[a, b]);
    fb.attach(lab.cgroups[ca].fd(), a)
        .unwrap_or_else(|e| panic!("{e}"));
    fb.attach(lab.cgroups[cb].fd(), b)
        .unwrap_or_else(|e| panic!("{e}"));
    lab.listen(
        Some(ca),
        None,
        &["listen", "tcp", &format!("0.0.0.0:{port}"), "A"],
    );
    let other_port = free_port(false);
    for (proto, at) in [
        ("tcp", sa(a, port)),
        ("tcp", sa(a, other_port)), // the address is refused, whatever the port
        ("udp", sa(a, other_port)),
    ] {
        let err = lab.fails(Some(cb), None, &["listen", proto, &at.to_string(), "B"]);
        assert!(
            err.contains("Cannot assign requested address (os error 99)"),
            "{proto} {at}: {err}"
        );
    }
    assert!(
        ask_tcp(sa(a, port)).unwrap().starts_with("A "),
        "A still answers"
    );
    // B may still bind its own address explicitly.
    let (got, _) = lab.listen(
        Some(cb),
        None,
        &["listen", "tcp", &sa(b, port).to_string(), "B"],
    );
    assert_eq!(got, sa(b, port));

    // A takeover brings instance C's address to the node: one insert into
    // the set, and B's next bind to it is refused (no re-attach). C's
    // address here is a loopback one nobody uses.
    let c = lo_addr(n, 4);
    let c_at = sa(c, free_port(false)).to_string();
    let IpAddr::V4(c4) = c else { unreachable!() };
    let c_mapped = sa(IpAddr::V6(c4.to_ipv6_mapped()), free_port(false)).to_string();
    let (got, _) = lab.listen(Some(cb), None, &["listen", "tcp", &c_at, "B"]);
    assert_eq!(got.to_string(), c_at, "not in the set yet: allowed");
    lab.procs.pop();
    fb.set().insert(c).unwrap();
    for at in [&c_at, &c_mapped] {
        let err = lab.fails(Some(cb), None, &["listen", "tcp", at, "B"]);
        assert!(err.contains("os error 99"), "{at}: {err}");
    }
    assert!(fb.set().remove(c).unwrap());
    lab.listen(Some(cb), None, &["listen", "tcp", &c_at, "B"]);

    // A cgroup the product makes inside its own inherits the programs but
    // is not registered: no wildcard, no logical address of the node
    // (bpf_get_current_cgroup_id names the innermost cgroup).
    let sub = lab.subcgroup(cb, "sub");
    let any = format!("0.0.0.0:{}", free_port(false));
    let err = lab.fails(Some(sub), None, &["listen", "tcp", &any, "B"]);
    assert!(err.contains("os error 99"), "{err}");
    let err = lab.fails(
        Some(sub),
        None,
        &["listen", "tcp", &sa(a, port).to_string(), "B"],
    );
    assert!(err.contains("os error 99"), "{err}");
}

/// A client namespace and a server namespace joined by a veth pair; the
/// client side has its primary 10.231.N.1 and the logical 10.231.N.10.
#[test]
fn force_source_makes_the_peer_see_the_logical_address() {
    require();
    let n = next() % 250;
    let mut lab = Lab::default();
    let (client, server) = (lab.netns(), lab.netns());
    let sname = lab.netns[server].0.clone();
    lab.netns[client].ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &sname,
    ]);
    let (primary, logical, peer) = (
        format!("10.231.{n}.1"),
        format!("10.231.{n}.10"),
        format!("10.231.{n}.2"),
    );
    lab.netns[client].ip(&["addr", "add", &format!("{primary}/24"), "dev", "va"]);
    lab.netns[client].ip(&["addr", "add", &format!("{logical}/24"), "dev", "va"]);
    lab.netns[client].ip(&["link", "set", "va", "up"]);
    lab.netns[server].ip(&["addr", "add", &format!("{peer}/24"), "dev", "vb"]);
    lab.netns[server].ip(&["link", "set", "vb", "up"]);
    let to_tcp = format!("{peer}:9095");
    let to_udp = format!("{peer}:9096");
    lab.listen(None, Some(server), &["listen", "tcp", &to_tcp, "S"]);
    lab.listen(None, Some(server), &["listen", "udp", &to_udp, "S"]);
    let cg = lab.cgroup("src");
    let seen = |lab: &mut Lab, args: &[&str]| -> IpAddr {
        let l = lab.ask(Some(cg), Some(client), args);
        let peer: SocketAddr = l
            .strip_prefix("S ")
            .unwrap_or_else(|| panic!("{l}"))
            .parse()
            .unwrap();
        peer.ip()
    };
    // IPv4 over dual-stack (AF_INET6) sockets too, as Java clients do.
    let to_tcp_mapped = format!("[::ffff:{peer}]:9095");
    let to_udp_mapped = format!("[::ffff:{peer}]:9096");
    let cases: [&[&str]; 6] = [
        &["connect", "tcp", &to_tcp],
        &["connect", "udp", &to_udp],
        &["sendto", "udp", &to_udp],
        &["connect", "tcp", &to_tcp_mapped],
        &["connect", "udp", &to_udp_mapped],
        &["sendto", "udp", &to_udp_mapped],
    ];
    // Without the programs the kernel picks the primary address.
    for args in cases {
        assert_eq!(seen(&mut lab, args).to_string(), primary, "{args:?}");
    }
    let logical_ip: IpAddr = logical.parse().unwrap();
    let set = AddressSet::create(64).unwrap_or_else(|e| panic!("{e}"));
    let fs = ForceSource::load(&set).unwrap_or_else(|e| panic!("{e}"));
    fs.attach(lab.cgroups[cg].fd(), logical_ip)
        .unwrap_or_else(|e| panic!("{e}"));
    for args in cases {
        assert_eq!(seen(&mut lab, args), logical_ip, "{args:?}");
    }
}

/// The same for an IPv6 instance: client fd00:231:N::1 and the logical
/// ::10, peer ::2.
#[test]
fn force_source_makes_the_peer_see_the_logical_v6_address() {
    require();
    let n = next() % 250;
    let mut lab = Lab::default();
    let (client, server) = (lab.netns(), lab.netns());
    let sname = lab.netns[server].0.clone();
    lab.netns[client].ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &sname,
    ]);
    let net = format!("fd00:231:{n:x}:");
    let (primary, logical, peer) = (format!("{net}:1"), format!("{net}:10"), format!("{net}:2"));
    lab.netns[client].ip(&[
        "addr",
        "add",
        &format!("{primary}/64"),
        "dev",
        "va",
        "nodad",
    ]);
    // Deprecated (preferred_lft 0): never picked as a source by the kernel
    // (RFC 6724 rule 3), still bindable; so the control below is
    // deterministic.
    lab.netns[client].ip(&[
        "addr",
        "add",
        &format!("{logical}/64"),
        "dev",
        "va",
        "nodad",
        "preferred_lft",
        "0",
    ]);
    lab.netns[client].ip(&["link", "set", "va", "up"]);
    lab.netns[server].ip(&["addr", "add", &format!("{peer}/64"), "dev", "vb", "nodad"]);
    lab.netns[server].ip(&["link", "set", "vb", "up"]);
    let to_tcp = format!("[{peer}]:9095");
    let to_udp = format!("[{peer}]:9096");
    lab.listen(None, Some(server), &["listen", "tcp", &to_tcp, "S"]);
    lab.listen(None, Some(server), &["listen", "udp", &to_udp, "S"]);
    let cg = lab.cgroup("src6");
    let seen = |lab: &mut Lab, args: &[&str]| -> IpAddr {
        let l = lab.ask(Some(cg), Some(client), args);
        let peer: SocketAddr = l
            .strip_prefix("S ")
            .unwrap_or_else(|| panic!("{l}"))
            .parse()
            .unwrap();
        peer.ip()
    };
    let cases: [&[&str]; 3] = [
        &["connect", "tcp", &to_tcp],
        &["connect", "udp", &to_udp],
        &["sendto", "udp", &to_udp],
    ];
    let (primary, logical): (IpAddr, IpAddr) = (primary.parse().unwrap(), logical.parse().unwrap());
    for args in cases {
        assert_eq!(seen(&mut lab, args), primary, "{args:?}");
    }
    let set = AddressSet::create(64).unwrap_or_else(|e| panic!("{e}"));
    let fs = ForceSource::load(&set).unwrap_or_else(|e| panic!("{e}"));
    fs.attach(lab.cgroups[cg].fd(), logical)
        .unwrap_or_else(|e| panic!("{e}"));
    for args in cases {
        assert_eq!(seen(&mut lab, args), logical, "{args:?}");
    }
}

#[test]
fn the_query_tells_attached_stale_and_detached_apart() {
    require();
    let n = next();
    let (a, b) = (lo_addr(n, 2), lo_addr(n, 3));
    let mut lab = Lab::default();
    let (cg, cg2) = (lab.cgroup("q"), lab.cgroup("q2"));
    let (fd, fd2) = (lab.cgroups[cg].fd(), lab.cgroups[cg2].fd());
    let fb = force_bind(&[a, b]);
    let st = fb.status(fd, a).unwrap();
    assert!(!st.ok());
    assert_eq!(
        st.hooks,
        vec![
            (Hook::Bind4, HookState::Missing),
            (Hook::Bind6, HookState::Missing)
        ]
    );
    let p = st.problems();
    assert!(
        p[0].contains("is not attached") && p[2].contains("not registered"),
        "{p:?}"
    );
    assert!(bpf::query(fd).unwrap().is_empty());
    assert!(ForceBind::adopt(fd).unwrap().is_none());

    fb.attach(fd, a).unwrap();
    fb.attach(fd, a).unwrap(); // idempotent
    fb.attach(fd2, b).unwrap();
    assert!(fb.status(fd, a).unwrap().ok());
    let q = bpf::query(fd).unwrap();
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(q.iter().all(|p| p.is_ours()), "{q:?}");
    assert_eq!(
        q.iter().map(|p| p.id).collect::<Vec<_>>(),
        fb.program_ids(),
        "one pair of programs for every instance"
    );
    assert_eq!(bpf::query(fd2).unwrap(), q);
    // Registered for another address: named.
    let st = fb.status(fd, b).unwrap();
    assert!(!st.ok());
    assert_eq!(
        st.problems(),
        vec![format!("the cgroup is registered for {a}, not {b}")]
    );
    // Another supervisor's (or a lost daemon's) programs: stale.
    let other = force_bind(&[a, b]);
    let stale = vec![
        (Hook::Bind4, HookState::Stale),
        (Hook::Bind6, HookState::Stale),
    ];
    assert_eq!(other.status(fd, a).unwrap().hooks, stale);
    // A restarted daemon adopts the maps and programs, contents and all.
    let ids = (fb.set().ids(), fb.program_ids());
    drop(fb);
    let fb = ForceBind::adopt(fd2).unwrap().expect("ours are attached");
    assert_eq!((fb.set().ids(), fb.program_ids()), ids);
    assert!(fb.status(fd, a).unwrap().ok() && fb.status(fd2, b).unwrap().ok());
    assert!(fb.set().contains(b).unwrap() && !fb.set().contains(lo_addr(n, 9)).unwrap());
    // Attaching other programs replaces ours in place: never two at a hook.
    other.attach(fd, a).unwrap();
    assert!(other.status(fd, a).unwrap().ok());
    assert_eq!(bpf::query(fd).unwrap().len(), 2, "replaced, not added");

    // force_source shares the set (one registration serves both).
    let fs = ForceSource::load(other.set()).unwrap();
    assert!(!fs.status(fd, a).unwrap().ok());
    fs.attach(fd, a).unwrap();
    assert!(fs.status(fd, a).unwrap().ok());
    assert_eq!(bpf::query(fd).unwrap().len(), 6);
    assert!(
        !ForceSource::load(fb.set())
            .unwrap()
            .status(fd, a)
            .unwrap()
            .ok(),
        "another set's programs"
    );
    other.detach(fd).unwrap();
    let st = other.status(fd, a).unwrap();
    assert_eq!(st.hooks[0].1, HookState::Missing);
    assert_eq!(st.address, Some((a, None)), "unregistered");
    assert_eq!(bpf::query(fd).unwrap().len(), 4, "force_source stays");
    fs.attach(fd, a).unwrap(); // registers again
    assert!(fs.status(fd, a).unwrap().ok());

    // A restarted daemon finds the owners map through force_source alone.
    let owners = other.set().ids().1;
    drop((fs, other));
    let set = AddressSet::adopt(fd).unwrap().expect("force_source's map");
    assert_eq!(set.ids().1, owners);
    assert_eq!(set.owner(bpf::cgroup_id(fd).unwrap()).unwrap(), Some(a));
    let fs = ForceSource::load(&set).unwrap();
    assert!(fs.status(fd, a).unwrap().ok(), "same code, same map");
}

/// bpf(2): the verifier gives up with EAGAIN when a signal is pending
/// (kernel commit c3494801cd17). A load must not fail because a signal came
/// in meanwhile: a child's SIGCHLD, an operator's SIGHUP, a test harness's.
#[test]
fn a_load_under_a_storm_of_signals_still_succeeds() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    use std::sync::atomic::AtomicBool;
    require();
    extern "C" fn nothing(_: libc::c_int) {}
    let act = SigAction::new(
        SigHandler::Handler(nothing),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe; no
    // other test of this binary uses SIGUSR2.
    unsafe { sigaction(Signal::SIGUSR2, &act) }.unwrap();
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (sent, storm) = {
        let stop = stop.clone();
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `me` is this test's thread, alive until the
                // storm is joined below.
                let r = unsafe { libc::pthread_kill(me, libc::SIGUSR2) };
                assert_eq!(r, 0, "pthread_kill");
                n += 1;
            }
            tx.send(n).unwrap();
        });
        (rx, t)
    };
    let a = lo_addr(next(), 2);
    let loads = (0..100).map(|_| {
        let set = AddressSet::create(4).unwrap_or_else(|e| panic!("{e}"));
        set.insert(a).unwrap();
        ForceBind::load(set).map(drop)
    });
    let failed: Vec<String> = loads
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();
    let n = sent.recv().unwrap();
    assert!(
        n > 1000,
        "the storm sent only {n} signals: it tested nothing"
    );
    assert!(
        failed.is_empty(),
        "{} of 100 loads failed under {n} signals: {:?}",
        failed.len(),
        failed.first()
    );
}
