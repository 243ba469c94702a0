//! Test harness: a temp dir with an instances dir, a runtime dir and data
//! dirs; the real `cohost` binary; the example services; cleanup on Drop
//! (daemon, every process in the test's cgroup subtree, the subtree, the
//! files), pass or fail.
#![allow(dead_code)]

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(90);

static NEXT: AtomicU32 = AtomicU32::new(1);

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub cmd: String,
}

impl Out {
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "expected success\n{self}");
        self
    }
    pub fn code(self, want: i32) -> Out {
        assert_eq!(self.code, want, "expected exit {want}\n{self}");
        self
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nexit: {}\n--- stdout\n{}--- stderr\n{}---",
            self.cmd, self.code, self.stdout, self.stderr
        )
    }
}

pub fn cohost_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cohost"))
}

/// An example binary (`cargo test` builds examples next to the binary).
pub fn example(name: &str) -> PathBuf {
    let p = cohost_bin().parent().unwrap().join("examples").join(name);
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.rs"));
    let mtime = |f: &Path| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    assert!(
        p.exists() && mtime(&p) >= mtime(&src),
        "{} is missing or older than its source: run plain `cargo test` (it builds the examples; `cargo test --test X` does not) or `cargo build --examples`",
        p.display()
    );
    p
}

/// Runs a command with a generous timeout (only to never hang the suite).
pub fn run_cmd(mut cmd: Command) -> Out {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {shown}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        cmd: shown,
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub runtime: PathBuf,
    /// Second and third octets of this test's 127.x.y.z addresses.
    block: (u8, u8),
    extra_env: Vec<(String, String)>,
    /// Other runtime dirs the test used (a second supervisor): cleaned too.
    extra_runtimes: std::sync::Mutex<Vec<PathBuf>>,
}

impl Harness {
    pub fn new() -> Harness {
        // Under /var/tmp, not /tmp: an instance with a private /tmp must
        // still see its own paths.
        let dir = tempfile::Builder::new()
            .prefix("cohost-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let config = dir.path().join("instances.d");
        let runtime = dir.path().join("run");
        std::fs::create_dir(&config).unwrap();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Distinct per test binary (pid) and per test (n): tests run in parallel.
        let block = (10 + (pid % 200) as u8, (n % 250) as u8 + 1);
        Harness {
            dir,
            config,
            runtime,
            block,
            extra_env: Vec::new(),
            extra_runtimes: Default::default(),
        }
    }

    /// A second runtime dir (another supervisor on this node), cleaned up
    /// with the harness.
    pub fn other_runtime(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        self.extra_runtimes.lock().unwrap().push(p.clone());
        p
    }

    /// This test's own loopback address number `i`.
    pub fn addr(&self, i: u8) -> String {
        format!("127.{}.{}.{}", self.block.0, self.block.1, i)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Creates directories (shared storage) under the temp dir.
    pub fn mkdirs(&self, rels: &[&str]) {
        for r in rels {
            std::fs::create_dir_all(self.path(r)).unwrap();
        }
    }

    pub fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let p = self.config.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn env(&mut self, k: &str, v: &str) {
        self.extra_env.push((k.into(), v.into()));
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(cohost_bin());
        c.arg("--config")
            .arg(&self.config)
            .arg("--runtime-dir")
            .arg(&self.runtime)
            .args(args);
        c.env_remove("COHOST_CONFIG")
            .env_remove("COHOST_RUNTIME_DIR");
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// `BIN ARGS…` against this harness's config and runtime dir, as
    /// `user` (BIN a cohost binary that user may run).
    pub fn run_as(&self, user: &str, bin: &Path, args: &[&str]) -> Out {
        let mut c = setpriv(user);
        c.arg(bin)
            .arg("--config")
            .arg(&self.config)
            .arg("--runtime-dir")
            .arg(&self.runtime)
            .args(args);
        run_cmd(c)
    }

    pub fn run(&self, args: &[&str]) -> Out {
        run_cmd(self.command(args))
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.runtime.join("daemon.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.runtime.join("daemon.log")).unwrap_or_default()
    }

    /// The instance's status as JSON.
    pub fn status_json(&self, id: &str) -> serde_json::Value {
        first_status(self.run(&["status", id, "--json"]))
    }

    pub fn state(&self, id: &str) -> String {
        self.status_json(id)["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Every pid of the instance (its cgroup members or tracked group).
    pub fn members(&self, id: &str) -> Vec<i32> {
        let v = self.status_json(id);
        let mut m: Vec<i32> = v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_i64())
                    .map(|x| x as i32)
                    .collect()
            })
            .unwrap_or_default();
        m.sort();
        m
    }

    /// This test's cgroup subtree, found the way the daemon finds it.
    pub fn cgroup_dir(&self) -> PathBuf {
        let tag = cohost::isolation::cgroup::tag_for(&self.runtime);
        cohost::isolation::cgroup::CgroupRoot::base_for(&Default::default(), &tag)
            .unwrap_or_default()
    }

    /// Waits (bounded) until `f` holds; panics with `what` otherwise.
    pub fn wait_for(&self, what: &str, f: impl FnMut() -> bool) {
        wait_for(what, f)
    }
}

/// The one instance of a `status ID --json` answer.
pub fn first_status(out: Out) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    v[0].clone()
}

pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < TIMEOUT {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for: {what}");
}

/// One line from a TCP service (connect, read to EOF).
pub fn ask(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

pub fn alive(pid: i32) -> bool {
    // A zombie is not alive for our purposes. But a killed multi-threaded
    // process (the daemon has a state-writer thread) shows its leader as a
    // zombie while its other threads still exit, holding its descriptors
    // (the control socket) open: it is gone once every thread is.
    let zombie = |stat: &str| {
        stat.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) if !zombie(&s) => true,
        Ok(_) => std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|rd| {
                rd.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| !zombie(&s))
                })
            })
            .unwrap_or(false),
        Err(_) => false,
    }
}

pub fn start_time(pid: i32) -> Option<u64> {
    cohost::process::procfs::start_time(pid)
}

/// A process outside every instance, killed on drop.
pub struct Bystander(pub std::process::Child);

impl Bystander {
    pub fn sleep() -> Bystander {
        let mut c = Command::new(example("testsvc"));
        c.arg("sleep").stdout(Stdio::null());
        Bystander(c.spawn().unwrap())
    }
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

/// `testsvc sleep` with the pid `pid` (clone3's `set_tid`, as root): a
/// reused pid made for sure, not raced for through `ns_last_pid` against
/// every other test's forks. EEXIST if the pid is taken.
pub struct PidBystander(pub i32);

impl PidBystander {
    pub fn sleep(pid: i32) -> std::io::Result<PidBystander> {
        use std::ffi::CString;
        let prog = CString::new(example("testsvc").into_os_string().into_encoded_bytes()).unwrap();
        let arg = CString::new("sleep").unwrap();
        let argv = [prog.as_ptr(), arg.as_ptr(), std::ptr::null()];
        let tid = [pid as libc::pid_t];
        let args = cohost::process::spawn::CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: tid.as_ptr() as u64,
            set_tid_size: 1,
            ..Default::default()
        };
        // SAFETY: clone3 as a fork (no stack given: the child runs on a
        // copy of ours); the child calls only execv and _exit, which are
        // async-signal-safe, on memory prepared before.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const cohost::process::spawn::CloneArgs,
                std::mem::size_of_val(&args),
            )
        };
        match r {
            0 => unsafe {
                libc::execv(prog.as_ptr(), argv.as_ptr());
                libc::_exit(127)
            },
            r if r > 0 => Ok(PidBystander(r as i32)),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

impl Drop for PidBystander {
    fn drop(&mut self) {
        // SAFETY: kill(2) and waitpid(2) of our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let extra: Vec<PathBuf> = self
            .extra_runtimes
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        for rt in extra.iter().chain(std::iter::once(&self.runtime.clone())) {
            shutdown_daemon(self, rt);
        }
        // Whatever is still in this test's cgroups (a test that killed the
        // daemon on purpose): kill it, remove the subtree.
        for rt in extra.iter().chain(std::iter::once(&self.runtime.clone())) {
            let tag = cohost::isolation::cgroup::tag_for(rt);
            if let Ok(dir) =
                cohost::isolation::cgroup::CgroupRoot::base_for(&Default::default(), &tag)
            {
                kill_cgroup_tree(&dir);
            }
            remove_v1_trees(rt);
        }
        if std::thread::panicking() {
            let log = self.daemon_log();
            if !log.is_empty() {
                eprintln!(
                    "--- daemon log ({})\n{log}",
                    self.runtime.join("daemon.log").display()
                );
            }
        }
    }
}

/// `cohost shutdown` for the daemon of `rt`, then SIGKILL if it lingers.
fn shutdown_daemon(h: &Harness, rt: &Path) {
    let pid_of = || -> Option<i32> {
        std::fs::read_to_string(rt.join("daemon.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if pid_of().is_none() {
        return;
    }
    let mut c = h.command(&["shutdown"]);
    c.arg("--runtime-dir").arg(rt);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Ok(mut child) = c.spawn() {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(pid) = pid_of()
        && alive(pid)
    {
        // SAFETY: kill(2); the pid was just checked alive.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

pub fn kill_cgroup_tree(dir: &Path) {
    if dir.as_os_str().is_empty() {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.path().is_dir() {
            kill_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(parent) = dir.parent()
        && parent.ends_with("cohost")
    {
        let _ = std::fs::remove_dir(parent);
    }
}

/// Removes what a supervisor of runtime dir `rt` left in the cgroup v1
/// hierarchies (limit and usage-accounting groups of instances whose
/// processes are gone: a killed daemon cannot remove them itself).
pub fn remove_v1_trees(rt: &Path) {
    use cohost::isolation::cgroup::{own_paths, parse_mountinfo, tag_for};
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let (_, own_v1) = own_paths(&read("/proc/self/cgroup"));
    for m in parse_mountinfo(&read("/proc/self/mountinfo"))
        .iter()
        .filter(|m| !m.v2)
    {
        let own = own_v1
            .iter()
            .find(|(c, _)| c.iter().any(|x| m.controllers.contains(x)))
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| "/".into());
        let root = m.root.trim_end_matches('/');
        let rel = own
            .strip_prefix(root)
            .unwrap_or(&own)
            .trim_start_matches('/');
        let cohost = m.point.join(rel).join("cohost");
        let base = cohost.join(tag_for(rt));
        if let Ok(rd) = std::fs::read_dir(&base) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&base);
        let _ = std::fs::remove_dir(&cohost);
    }
}

/// Requires root and a writable cgroup v2: fail loudly, never skip.
pub fn require_root_cgroups() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (CI runs as root): namespaces, cgroups and addresses are used for real"
    );
    let base = cohost::isolation::cgroup::CgroupRoot::base_for(&Default::default(), "probe");
    assert!(
        base.is_ok(),
        "this test needs a mounted cgroup v2 hierarchy: {base:?}"
    );
}

pub fn write(file: &Path, text: &str) {
    let mut f = std::fs::File::create(file).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `ip ARGS…`, asserting success.
pub fn ip(args: &[&str]) -> Out {
    let mut c = std::process::Command::new("ip");
    c.args(args);
    run_cmd(c).ok()
}

pub fn require_tools(tools: &[(&str, &str)]) {
    for (tool, package) in tools {
        let ok = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{tool} is not installed: apt-get install {package} (tests/setup-host.sh installs every tool the tests need)"
        );
    }
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: &str) -> Netns {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .output();
        ip(&["netns", "add", name]);
        let ns = Netns(name.to_string());
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
    pub fn ip(&self, args: &[&str]) -> Out {
        let mut full = vec!["-n", self.0.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }
    /// A command run in this network namespace only (the mount namespace,
    /// and so /sys/fs/cgroup, stays the host's: unlike `ip netns exec`).
    pub fn cmd(&self, program: &Path) -> std::process::Command {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.0)).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

/// What follows run as `user` (group `nogroup`, and the user's own groups).
pub fn setpriv(user: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", user, "--regid", "nogroup", "--init-groups", "--"]);
    c
}

/// A throw-away user (no home, no login), removed on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
}

impl TestUser {
    /// `prefix` plus this test binary's pid: unique across parallel tests
    /// when each test uses its own prefix.
    pub fn new(prefix: &str) -> TestUser {
        require_tools(&[("useradd", "passwd"), ("setpriv", "util-linux")]);
        let name = format!("{prefix}{}", std::process::id() % 100_000);
        let _ = Command::new("userdel").arg(&name).output();
        let mut c = Command::new("useradd");
        c.args(["-M", "-N", "-g", "nogroup", "-s", "/usr/sbin/nologin"])
            .arg(&name);
        run_cmd(c).ok();
        let mut c = Command::new("id");
        c.args(["-u", &name]);
        let uid = run_cmd(c).ok().stdout.trim().parse().unwrap();
        TestUser { name, uid }
    }

    /// `cohost ARGS…` as this user (binary and dirs must be reachable).
    pub fn cohost(&self, bin: &Path, args: &[&std::ffi::OsStr]) -> Out {
        let mut c = setpriv(&self.name);
        c.arg(bin).args(args);
        c.env_remove("COHOST_CONFIG")
            .env_remove("COHOST_RUNTIME_DIR");
        run_cmd(c)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        remove_account("userdel", &self.name);
    }
}

/// `userdel NAME` / `groupdel NAME`, retried while another test holds the
/// lock on /etc/passwd or /etc/group (tests add and remove accounts in
/// parallel; a lost race must not leave the account behind).
pub fn remove_account(tool: &str, name: &str) {
    let db = if tool == "groupdel" {
        "group"
    } else {
        "passwd"
    };
    for _ in 0..100 {
        let _ = Command::new(tool).arg(name).output();
        let gone = Command::new("getent")
            .args([db, name])
            .output()
            .is_ok_and(|o| !o.status.success());
        if gone {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("warning: could not remove the test account {name}");
}

/// A process the test must not leave behind (a daemon it cut off from
/// its runtime dir): SIGKILLed on drop if it is still that very process.
pub struct KillOnDrop {
    pub pid: i32,
    start: Option<u64>,
}

impl KillOnDrop {
    pub fn new(pid: i32) -> KillOnDrop {
        KillOnDrop {
            pid,
            start: start_time(pid),
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.start.is_some() && start_time(self.pid) == self.start {
            // SAFETY: kill(2) of the process recorded at construction.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// A shared disk that hangs on demand (tests/tools/hangfs.py, FUSE):
/// unmounted, released and its process ended on drop, pass or fail.
pub struct HangFs {
    child: std::process::Child,
    mnt: PathBuf,
    ctl: PathBuf,
}

impl HangFs {
    pub fn mount(backing: &Path, mnt: &Path) -> HangFs {
        require_tools(&[("fusermount3", "fuse3")]);
        assert!(
            Path::new("/usr/lib/python3/dist-packages/fusepy.py").exists(),
            "python3-fusepy is not installed: apt-get install python3-fusepy (tests/setup-host.sh installs every tool the tests need)"
        );
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(mnt).unwrap();
        let ctl = backing.with_extension("ctl");
        let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/hangfs.py");
        let mut child = Command::new(tool)
            .arg(backing)
            .arg(mnt)
            .arg(&ctl)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hangfs.py runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "hangfs mounted");
        HangFs {
            child,
            mnt: mnt.to_path_buf(),
            ctl,
        }
    }

    pub fn say(&self, what: &str) -> String {
        let mut s = UnixStream::connect(&self.ctl).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("{what}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("ok"), "hangfs {what}: {out}");
        out.trim().to_string()
    }

    pub fn hang(&self) {
        self.say("hang");
    }

    pub fn go(&self) {
        self.say("go");
    }

    /// Operations blocked in the file system right now.
    pub fn blocked(&self) -> usize {
        self.say("count")
            .trim_start_matches("ok")
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for HangFs {
    fn drop(&mut self) {
        let _ = UnixStream::connect(&self.ctl).and_then(|mut s| s.write_all(b"go\n"));
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
