//! fork/exec of one process of an instance, with its clean state.
//!
//! Everything the child needs (argv, envp, paths, uid/gid, mount plan) is
//! built into an [`ExecPlan`] *before* `fork()`: between fork and exec the
//! child makes only async-signal-safe calls (signal-safety(7)), allocates
//! nothing, and reports a failed step through a close-on-exec pipe (the
//! s6/runit pattern: EOF on the pipe means exec succeeded).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

mod child;
mod launch;

pub use launch::{decode_failure, probe_clone3, probe_clone3_failed};

use super::rawsys;
use crate::model::RunContext;
use child::non_default_signals;
use launch::InFlight;

/// The soft RLIMIT_NOFILE the process started with. The daemon raises its
/// own to the hard limit (many instances, many fds); a service gets the
/// usual one back unless it sets `rlimits.nofile` (a daemon that closes
/// every possible fd at start-up would otherwise loop a million times).
static ORIGINAL_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Records the current RLIMIT_NOFILE for children; call before raising it.
pub fn remember_nofile() {
    // SAFETY: getrlimit with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            let _ = ORIGINAL_NOFILE.set(r);
        }
    }
}

/// Source fds used in the child are moved at or above this number, so the
/// `dup2` onto 0..3 can never overwrite one that is still needed (and the
/// files a child takes from the supervisor land below it, see `FETCH`).
const HIGH_FD: RawFd = 32;

/// In the supervisor, a pidfd of the supervisor itself, through which its
/// children take their own files (see [`FETCH`]).
pub const DAEMON_PIDFD: RawFd = 3;

/// Whether children of [`ExecPlan::spawn`] share the supervisor's table at
/// birth (CLONE_FILES) and make one of their own holding nothing of it,
/// taking only their own files with pidfd_getfd(2). Without it a child
/// gets a copy of every descriptor of the supervisor's (clone without
/// CLONE_FILES) and closes them: among them the locks and logs of other
/// instances on shared storage, and a close there waits for the file
/// system (FUSE flushes on every close; NFS writes back), so one
/// instance's hung storage would stall the start of every other.
/// Set by [`enable_fetch`] in the supervisor (Linux 5.9+, and a pidfd of
/// the supervisor at [`DAEMON_PIDFD`]).
static FETCH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The numbers a table made by close_range(CLOSE_RANGE_UNSHARE) copies
/// whatever the range: NR_OPEN_DEFAULT (BITS_PER_LONG) in fs/file.c.
const COPIED_ANYWAY: RawFd = 64;

/// A close-on-exec duplicate of `fd` at COPIED_ANYWAY or above.
fn move_up(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a number; the result is checked.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, COPIED_ANYWAY) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

/// Why children cannot take their files from the supervisor: they are
/// given copies of its whole table instead, as before.
#[derive(Debug, thiserror::Error)]
pub enum FetchUnavailable {
    #[error("{step}: {source}")]
    Os {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("a test child could not take its files from the supervisor: {0}")]
    Probe(#[source] Box<SpawnError>),
}

/// Stdio open, a pidfd of ours at [`DAEMON_PIDFD`], 4..64 filled (see
/// [`enable_fetch`]); `keep` moved out of the way where it sits there.
fn reserve_low_fds(keep: &mut Option<RawFd>) -> Result<(), FetchUnavailable> {
    let err = |step| move |source| FetchUnavailable::Os { step, source };
    // 0..=2 open (a child's table starts with exactly 0..=3).
    for fd in 0..=2 {
        // SAFETY: F_GETFD on any number; no pointer.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            let null = dev_null().map_err(err("opening /dev/null"))?;
            // SAFETY: dup2 of our /dev/null onto a free standard number.
            if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
                return Err(err("opening stdio on /dev/null")(io::Error::last_os_error()));
            }
        }
    }
    // SAFETY: pidfd_open(2) of ourselves; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as RawFd;
    if pidfd < 0 {
        return Err(err("pidfd_open")(io::Error::last_os_error()));
    }
    if pidfd != DAEMON_PIDFD {
        // Something holds 3 (a pipe of whoever started us): move it up.
        let moved = move_up(DAEMON_PIDFD).map_err(err("moving fd 3"));
        // SAFETY: dup3 onto 3 (whose file lives on at `moved`), then the
        // pidfd's first number is closed.
        let r = unsafe { libc::dup3(pidfd, DAEMON_PIDFD, libc::O_CLOEXEC) };
        // SAFETY: closing the number pidfd_open gave.
        unsafe { libc::close(pidfd) };
        let moved = moved?;
        if r < 0 {
            return Err(err("putting the pidfd at 3")(io::Error::last_os_error()));
        }
        if *keep == Some(DAEMON_PIDFD) {
            *keep = Some(moved);
        } else {
            // Not ours to keep: an fd inherited by mistake.
            // SAFETY: closing our duplicate.
            unsafe { libc::close(moved) };
        }
    }
    // The kernel copies at least the first NR_OPEN_DEFAULT (64) numbers
    // into a table made by close_range(CLOSE_RANGE_UNSHARE), and then
    // closes those in the range: 4..64 must never hold a file whose close
    // can wait. They are filled with /dev/null for good (and whatever the
    // caller keeps there moves above), so every later file gets 64 or up.
    let null = dev_null().map_err(err("opening /dev/null"))?;
    if let Some(k) = *keep
        && (DAEMON_PIDFD + 1..COPIED_ANYWAY).contains(&k)
    {
        *keep = Some(move_up(k).map_err(err("moving the notify fd"))?);
        // SAFETY: the old number is ours (moved); closed so it is refilled.
        unsafe { libc::close(k) };
    }
    for fd in DAEMON_PIDFD + 1..COPIED_ANYWAY {
        // SAFETY: F_GETFD probes a number; dup3 of /dev/null onto a free
        // one (never onto one in use).
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) < 0
                && libc::dup3(null.as_raw_fd(), fd, libc::O_CLOEXEC) < 0
            {
                return Err(err("reserving fds 4..64")(io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

/// In the supervisor, at its start (single-threaded, before it opens
/// anything it keeps): puts a pidfd of this process at [`DAEMON_PIDFD`]
/// and checks, with a child that execs `/bin/true`, that children can take
/// their files through it; from then on [`ExecPlan::spawn`] works so.
/// `keep` is a descriptor the caller owns that may sit at 3; it is moved,
/// and its new number returned in place.
pub fn enable_fetch(keep: &mut Option<RawFd>) -> Result<(), FetchUnavailable> {
    reserve_low_fds(keep)?;
    FETCH.store(true, std::sync::atomic::Ordering::Relaxed);
    let run = RunContext::bare(Vec::new());
    let argv = ["/bin/true".to_string()];
    let probe = ExecPlan::with_creds(
        Spawn {
            argv: &argv,
            run: &run,
            output: Output::Null,
            cgroups: Vec::new(),
            into_cgroup: None,
            inherit: None,
            setsid: true,
        },
        None,
    )
    .and_then(ExecPlan::spawn);
    match probe {
        Ok(mut child) => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child.pid), None);
            drop(child.release());
            Ok(())
        }
        Err(e) => {
            FETCH.store(false, std::sync::atomic::Ordering::Relaxed);
            Err(FetchUnavailable::Probe(Box::new(e)))
        }
    }
}

/// The environment a cohost child inherits from the supervisor: only these,
/// plus the names a service lists in `pass_env` (contract).
pub const INHERITED_ENV: &[&str] = &["PATH", "LANG", "TZ"];
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command not found: {cmd} (searched PATH={path})")]
    NotFound { cmd: String, path: String },
    #[error("{cmd} is not executable")]
    NotExecutable { cmd: String },
    #[error("user {0:?} does not exist on this node")]
    NoUser(String),
    #[error("group {0:?} does not exist on this node")]
    NoGroup(String),
    #[error("looking up user {name:?}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    #[error(transparent)]
    BindTarget(#[from] crate::isolation::paths::BindTargetError),
    #[error("bind source {0} does not exist: is the instance's storage mounted here?")]
    BindSource(PathBuf),
    #[error("{step}: {source}")]
    Os {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("in the child, {step}: {source}")]
    Child {
        step: String,
        #[source]
        source: io::Error,
    },
}

impl SpawnError {
    /// True when the failure means "not installed on this node" (OCF 5).
    pub fn is_not_installed(&self) -> bool {
        matches!(
            self,
            SpawnError::NotFound { .. }
                | SpawnError::NotExecutable { .. }
                | SpawnError::NoUser(_)
                | SpawnError::NoGroup(_)
        )
    }
}

fn os(step: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
    move |source| SpawnError::Os { step, source }
}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, SpawnError> {
    CString::new(s.as_ref())
        .map_err(|_| SpawnError::Nul(String::from_utf8_lossy(s.as_ref()).into_owned()))
}

/// Moves `fd` to a close-on-exec descriptor >= HIGH_FD.
fn high(fd: RawFd) -> Result<OwnedFd, SpawnError> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a valid fd returns a new owned fd.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, HIGH_FD) };
    if n < 0 {
        return Err(SpawnError::Os {
            step: "dup",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: n is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// /dev/null, opened once per process (every spawn needs it for stdin).
fn dev_null() -> io::Result<&'static std::fs::File> {
    static NULL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(f) = NULL.get() {
        return Ok(f);
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(NULL.get_or_init(|| f))
}

/// Resolved credentials.
#[derive(Debug, Clone)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub name: String,
}

/// Looks up `user`/`group` on this node (NSS): done in the parent.
pub fn resolve_creds(user: Option<&str>, group: Option<&str>) -> Result<Option<Creds>, SpawnError> {
    use nix::unistd::{Group, User};
    let Some(user) = user else {
        if let Some(g) = group {
            let gr = lookup_group(g)?;
            return Ok(Some(Creds {
                uid: nix::unistd::geteuid().as_raw(),
                gid: gr,
                groups: vec![gr],
                home: PathBuf::from("/"),
                name: String::new(),
            }));
        }
        return Ok(None);
    };
    let pw = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    }
    .map_err(|source| SpawnError::Lookup {
        name: user.to_string(),
        source,
    })?
    .ok_or_else(|| SpawnError::NoUser(user.to_string()))?;
    let gid = match group {
        Some(g) => lookup_group(g)?,
        None => pw.gid.as_raw(),
    };
    let cname = cstr(pw.name.as_bytes())?;
    let groups = nix::unistd::getgrouplist(&cname, nix::unistd::Gid::from_raw(gid))
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![gid]);
    let _ = Group::from_gid(nix::unistd::Gid::from_raw(gid));
    Ok(Some(Creds {
        uid: pw.uid.as_raw(),
        gid,
        groups,
        home: pw.dir,
        name: pw.name,
    }))
}

fn lookup_group(g: &str) -> Result<u32, SpawnError> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(n);
    }
    nix::unistd::Group::from_name(g)
        .map_err(|source| SpawnError::Lookup {
            name: g.to_string(),
            source,
        })?
        .map(|gr| gr.gid.as_raw())
        .ok_or_else(|| SpawnError::NoGroup(g.to_string()))
}

/// The final environment of a process of the instance.
pub fn environment(
    run: &RunContext,
    creds: Option<&Creds>,
    pass_env: &[String],
) -> Vec<(String, String)> {
    let mut env: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for name in INHERITED_ENV
        .iter()
        .copied()
        .chain(pass_env.iter().map(String::as_str))
    {
        if let Ok(v) = std::env::var(name) {
            env.insert(name.to_string(), v);
        }
    }
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    if let Some(c) = creds.filter(|c| !c.name.is_empty()) {
        env.insert("HOME".into(), c.home.display().to_string());
        env.insert("USER".into(), c.name.clone());
        env.insert("LOGNAME".into(), c.name.clone());
    }
    for (k, v) in &run.env {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// Finds `cmd` the way execvp(3) would, but in the parent, so that "not
/// found" is a clear error and not an exit status 127 of a child.
pub fn find_program(cmd: &str, path_var: &str) -> Result<PathBuf, SpawnError> {
    use std::os::unix::fs::PermissionsExt;
    let exec_bits = |m: &std::fs::Metadata| m.is_file() && m.permissions().mode() & 0o111 != 0;
    let is_exec = |p: &Path| std::fs::metadata(p).is_ok_and(|m| exec_bits(&m));
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return match std::fs::metadata(&p) {
            Err(_) => Err(SpawnError::NotFound {
                cmd: cmd.into(),
                path: "(absolute path)".into(),
            }),
            Ok(m) if !exec_bits(&m) => Err(SpawnError::NotExecutable { cmd: cmd.into() }),
            Ok(_) => Ok(p),
        };
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(cmd);
        if is_exec(&p) {
            return Ok(p);
        }
    }
    Err(SpawnError::NotFound {
        cmd: cmd.into(),
        path: path_var.into(),
    })
}

/// Where stdout/stderr go.
pub enum Output {
    /// Inherit the supervisor's (used by `cohost exec`).
    Inherit,
    /// This file (a process log, opened O_APPEND by the caller).
    File(OwnedFd),
    /// /dev/null
    Null,
}

/// What to start, and how; built with [`ExecPlan::new`].
pub struct Spawn<'a> {
    pub argv: &'a [String],
    pub run: &'a RunContext,
    pub output: Output,
    /// `cgroup.procs` files the child writes "0" into before exec.
    pub cgroups: Vec<OwnedFd>,
    /// A cgroup v2 directory the child goes into: created there by
    /// `spawn` (clone3 `CLONE_INTO_CGROUP`), else it writes its
    /// `cgroup.procs` like the files of `cgroups`.
    pub into_cgroup: Option<OwnedFd>,
    /// Inherited as fd 3 (the instance lock: it lives while any process does).
    pub inherit: Option<RawFd>,
    /// Start a new session (always, for instance processes).
    pub setsid: bool,
}

/// Everything for one fork/exec, allocated up front.
pub struct ExecPlan {
    program: CString,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    /// Descriptor numbers the child uses (dup'd at or above HIGH_FD); the
    /// descriptors themselves are in `owned`, closed in the parent as soon
    /// as the child has its copies (after clone).
    stdin: Option<RawFd>,
    stdout: Option<RawFd>,
    stderr: Option<RawFd>,
    cgroups: Vec<RawFd>,
    /// The v2 cgroup directory of `Spawn::into_cgroup`.
    cgroup_dir: Option<RawFd>,
    inherit: Option<RawFd>,
    owned: Vec<OwnedFd>,
    setsid: bool,
    unshare_flags: libc::c_int,
    mount_private: bool,
    binds: Vec<(CString, CString)>,
    private_tmp: bool,
    hostname: Option<CString>,
    rlimits: Vec<(libc::c_int, libc::rlimit)>,
    umask: Option<libc::mode_t>,
    creds: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    /// Signals to set back to SIG_DFL before exec (see `non_default_signals`).
    reset_signals: &'static [libc::c_int],
    /// Human description for messages: "/opt/counter/bin/counter --listen …".
    pub display: String,
}

/// A started child: its pid and the read end of its exec-error pipe.
pub struct Child {
    pub pid: i32,
    /// Readable with a failure report, or EOF once exec succeeded.
    pub errpipe: OwnedFd,
    /// Kept to explain a failure report.
    binds: Vec<(CString, CString)>,
    /// What the child reads until it execs or dies. Dropping the `Child`
    /// before then does not free it: see `Drop for Child`.
    in_flight: Option<Box<InFlight>>,
    /// The parent's copies of the descriptors handed to the child (its
    /// log, the lock): the caller closes them where a close may block (a
    /// close on a hung FUSE or NFS mount waits for the flush), not on the
    /// event loop. Closed on drop otherwise.
    pub parent_fds: Vec<OwnedFd>,
}

impl Child {
    /// A child made by someone else (a test's fake host, see
    /// `supervisor::host`): nothing of ours runs in it.
    pub fn made_elsewhere(pid: i32, errpipe: OwnedFd) -> Child {
        Child {
            pid,
            errpipe,
            binds: Vec::new(),
            in_flight: None,
            parent_fds: Vec::new(),
        }
    }

    /// Bytes read from the exec pipe: a child that took its files after we
    /// stopped waiting says so first (`TAKEN_BYTE`); that byte is taken
    /// out of `buf` and our copy of the write end closed, so that EOF can
    /// follow at its exec. What is left is a failure report, if anything.
    /// Returns our copies of the files it took, to be closed where a close
    /// may block (like `parent_fds`).
    #[must_use]
    pub fn note_report(&mut self, buf: &mut Vec<u8>) -> Vec<OwnedFd> {
        if buf.first() != Some(&launch::TAKEN_BYTE) {
            return Vec::new();
        }
        buf.remove(0);
        self.in_flight
            .as_mut()
            .map(|f| f.take_late_pipe())
            .unwrap_or_default()
    }

    /// Exec confirmed (EOF on the pipe with no report) or the child reaped:
    /// its plan and stack are no longer in use. Returns what is left of the
    /// files a late child was to take, to be closed where a close may block.
    #[must_use]
    pub fn release(&mut self) -> Vec<OwnedFd> {
        self.in_flight
            .take()
            .map(|mut f| f.take_late_pipe())
            .unwrap_or_default()
    }
}

impl Drop for Child {
    /// Sound by construction: the child shares our memory (CLONE_VM) and
    /// runs on the plan and stack in `in_flight` until it execs or dies.
    /// If that is not known yet they go to a list that each later spawn
    /// sweeps, freeing those whose pipe has reached EOF (the write end
    /// closes at exec or exit).
    fn drop(&mut self) {
        if let Some(f) = self.in_flight.take()
            && let Ok(fd) = self.errpipe.try_clone()
        {
            launch::bury(fd, f);
        }
    }
}

// SAFETY: the raw pointers in `argv_ptrs`/`envp_ptrs` point into the heap
// buffers of the `CString`s owned by the same plan, which do not move when
// the plan does; nothing else in it is tied to a thread. A plan is built on
// a worker thread (its look-ups may block) and spawned on the event loop.
unsafe impl Send for ExecPlan {}

impl ExecPlan {
    /// A plan with every look-up on the host: the user and group (NSS),
    /// the program (stat along PATH) and the bind paths. These can block
    /// (a hung shared disk, a slow directory service): call it where a
    /// hang stalls nothing else (the supervisor's worker, the CLI).
    pub fn new(s: Spawn<'_>) -> Result<ExecPlan, SpawnError> {
        let run = s.run;
        let creds = resolve_creds(run.user.as_deref(), run.group.as_deref())?;
        for (inside, shown) in &run.isolate.bind {
            if !shown.exists() {
                return Err(SpawnError::BindSource(shown.clone()));
            }
            // Never through a symbolic link: mount(2) would follow it.
            crate::isolation::paths::check_bind_target(inside)?;
        }
        Self::build(s, creds, true)
    }

    /// A plan from credentials resolved before (by [`ExecPlan::new`] at the
    /// instance's start), for the supervisor's own loop: no NSS, no stat
    /// of the instance's paths. An absolute program is taken as it is (a
    /// missing one fails the exec, reported through the pipe), a bare name
    /// is looked up along PATH.
    pub fn with_creds(s: Spawn<'_>, creds: Option<Creds>) -> Result<ExecPlan, SpawnError> {
        Self::build(s, creds, false)
    }

    fn build(s: Spawn<'_>, creds: Option<Creds>, check: bool) -> Result<ExecPlan, SpawnError> {
        let run = s.run;
        let env = environment(run, creds.as_ref(), &run.pass_env);
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_PATH);
        let argv0 = s.argv.first().ok_or(SpawnError::NotFound {
            cmd: String::new(),
            path: String::new(),
        })?;
        let program = if !check && argv0.contains('/') {
            PathBuf::from(argv0)
        } else {
            find_program(argv0, path_var)?
        };
        let argv: Vec<CString> = s.argv.iter().map(cstr).collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());

        let devnull = dev_null().map_err(os("opening /dev/null"))?;
        let mut owned = Vec::new();
        let mut keep = |fd: RawFd| -> Result<RawFd, SpawnError> {
            let h = high(fd)?;
            let n = h.as_raw_fd();
            owned.push(h);
            Ok(n)
        };
        let (stdin, stdout, stderr) = match &s.output {
            Output::Inherit => (None, None, None),
            Output::Null => (
                Some(keep(devnull.as_raw_fd())?),
                Some(keep(devnull.as_raw_fd())?),
                Some(keep(devnull.as_raw_fd())?),
            ),
            Output::File(f) => {
                let out = keep(f.as_raw_fd())?;
                (Some(keep(devnull.as_raw_fd())?), Some(out), Some(out))
            }
        };
        let cgroups = s
            .cgroups
            .iter()
            .map(|f| keep(f.as_raw_fd()))
            .collect::<Result<Vec<_>, _>>()?;
        let inherit = s.inherit.map(&mut keep).transpose()?;
        let cgroup_dir = match s.into_cgroup {
            Some(d) => {
                let n = d.as_raw_fd();
                owned.push(d);
                Some(n)
            }
            None => None,
        };

        let iso = &run.isolate;
        let mut unshare_flags = 0;
        if iso.uts {
            unshare_flags |= libc::CLONE_NEWUTS;
        }
        if iso.needs_mount_ns() {
            unshare_flags |= libc::CLONE_NEWNS;
        }
        let binds = iso
            .bind
            .iter()
            .map(|(inside, shown)| {
                Ok((
                    cstr(shown.as_os_str().as_bytes())?,
                    cstr(inside.as_os_str().as_bytes())?,
                ))
            })
            .collect::<Result<Vec<_>, SpawnError>>()?;
        let hostname = match (&run.hostname, iso.uts) {
            (Some(h), true) => Some(cstr(h)?),
            _ => None,
        };
        let mut rlimits: Vec<(libc::c_int, libc::rlimit)> = run
            .rlimits
            .iter()
            .map(|r| {
                let v = |x: Option<u64>| x.unwrap_or(libc::RLIM_INFINITY);
                (
                    r.resource as libc::c_int,
                    libc::rlimit {
                        rlim_cur: v(r.soft),
                        rlim_max: v(r.hard),
                    },
                )
            })
            .collect();
        if let Some(orig) = ORIGINAL_NOFILE.get()
            && !rlimits
                .iter()
                .any(|(r, _)| *r == libc::RLIMIT_NOFILE as libc::c_int)
        {
            rlimits.push((libc::RLIMIT_NOFILE as libc::c_int, *orig));
        }
        let display = s.argv.join(" ");
        Ok(ExecPlan {
            program: cstr(program.as_os_str().as_bytes())?,
            argv,
            argv_ptrs,
            envp,
            envp_ptrs,
            cwd: cstr(run.cwd.as_os_str().as_bytes())?,
            stdin,
            stdout,
            stderr,
            cgroups,
            cgroup_dir,
            inherit,
            owned,
            setsid: s.setsid,
            unshare_flags,
            mount_private: iso.needs_mount_ns(),
            binds,
            private_tmp: iso.private_tmp,
            hostname,
            rlimits,
            umask: run.umask.map(|m| m as libc::mode_t),
            creds: creds.map(|c| (c.uid, c.gid, c.groups)),
            reset_signals: non_default_signals(),
            display,
        })
    }

    pub fn argv(&self) -> &[CString] {
        &self.argv
    }

    pub fn env(&self) -> &[CString] {
        &self.envp
    }
}
