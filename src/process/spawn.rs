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

use super::rawsys;
use crate::model::RunContext;

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
/// `dup2` onto 0..3 can never overwrite one that is still needed.
const HIGH_FD: RawFd = 16;

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
    #[error(
        "bind target {0} does not exist on this node: create it (an empty directory or file) so it can be mapped"
    )]
    BindTarget(PathBuf),
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

/// Signals whose disposition is not SIG_DFL in this process: an ignored one
/// survives exec(2) (SIGPIPE, ignored by the supervisor; whatever the
/// caller of `cohost start` ignored, like SIGHUP under nohup). A service
/// must start with all of them at the default, and only these need a
/// sigaction in the child. Dispositions are looked up once: the supervisor
/// never changes them afterwards.
fn non_default_signals() -> &'static [libc::c_int] {
    static SET: std::sync::OnceLock<Vec<libc::c_int>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        (1..=64)
            .filter(|&sig| sig != libc::SIGKILL && sig != libc::SIGSTOP)
            .filter(|&sig| {
                let mut old = KernelSigaction::default();
                // SAFETY: rt_sigaction(2) query with a valid out pointer.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        std::ptr::null::<KernelSigaction>(),
                        &mut old,
                        8,
                    )
                };
                r == 0 && old.handler != libc::SIG_DFL
            })
            .collect()
    })
}

/// The kernel's struct sigaction (x86-64 and aarch64 layout). The raw
/// syscall is used because glibc refuses its two internal real-time
/// signals (32, 33), which a launcher may still have ignored.
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// The stack a spawned child runs on until it execs: one mapping for the
/// whole process, reused (CLONE_VFORK: one child at a time uses it).
fn child_stack() -> io::Result<*mut libc::c_void> {
    const SIZE: usize = 512 * 1024;
    static STACK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(top) = STACK.get() {
        return Ok(*top as *mut libc::c_void);
    }
    // SAFETY: an anonymous private mapping; never unmapped.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // Stacks grow down: hand out the (16-byte aligned) top.
    let top = (base as usize + SIZE) & !15;
    Ok(*STACK.get_or_init(|| top) as *mut libc::c_void)
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
    /// `spawn_async` (clone3 `CLONE_INTO_CGROUP`), else it writes its
    /// `cgroup.procs` like the files of `cgroups`.
    pub into_cgroup: Option<OwnedFd>,
    /// Inherited as fd 3 (the instance lock: it lives while any process does).
    pub inherit: Option<RawFd>,
    /// Start a new session (always, for instance processes).
    pub setsid: bool,
}

#[derive(Clone, Copy)]
#[repr(u8)]
enum Step {
    SigMask = 1,
    Setsid,
    Cgroup,
    Unshare,
    MountPrivate,
    Bind,
    Tmpfs,
    Hostname,
    Rlimit,
    Dup,
    Groups,
    Gid,
    Uid,
    Chdir,
    Exec,
}

impl Step {
    const ALL: [Step; 15] = [
        Step::SigMask,
        Step::Setsid,
        Step::Cgroup,
        Step::Unshare,
        Step::MountPrivate,
        Step::Bind,
        Step::Tmpfs,
        Step::Hostname,
        Step::Rlimit,
        Step::Dup,
        Step::Groups,
        Step::Gid,
        Step::Uid,
        Step::Chdir,
        Step::Exec,
    ];

    fn from_code(code: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u8 == code)
    }

    /// What failed, for the operator ("bind-mounting /u01/etc on /etc/x").
    fn describe(code: u8, binds: &[(CString, CString)], index: u16) -> String {
        let Some(step) = Step::from_code(code) else {
            return format!("unknown step {code}");
        };
        match step {
            Step::SigMask => "resetting the signal mask".into(),
            Step::Setsid => "setsid".into(),
            Step::Cgroup => "joining the instance's cgroup".into(),
            Step::Unshare => "creating namespaces (unshare)".into(),
            Step::MountPrivate => "making mounts private".into(),
            Step::Bind => match binds.get(index as usize) {
                Some((src, dst)) => format!(
                    "bind-mounting {} on {}",
                    src.to_string_lossy(),
                    dst.to_string_lossy()
                ),
                None => "bind-mounting".into(),
            },
            Step::Tmpfs => "mounting a private /tmp".into(),
            Step::Hostname => "setting the logical host name".into(),
            Step::Rlimit => "setting rlimits".into(),
            Step::Dup => "redirecting stdio".into(),
            Step::Groups => "setgroups".into(),
            Step::Gid => "setgid".into(),
            Step::Uid => "setuid".into(),
            Step::Chdir => "changing to the working directory".into(),
            Step::Exec => "exec".into(),
        }
    }
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
    /// What a child of [`ExecPlan::spawn_async`] reads until it execs or
    /// dies: keep the `Child` until its errpipe reports EOF or it is reaped.
    _in_flight: Option<Box<InFlight>>,
}

/// The plan and stack an asynchronous child runs on before exec.
struct InFlight {
    plan: ExecPlan,
    /// Points at `plan` (the box does not move).
    arg: ChildArg,
    _stack: super::stack::Stack,
}

impl ExecPlan {
    pub fn new(s: Spawn<'_>) -> Result<ExecPlan, SpawnError> {
        let run = s.run;
        let creds = resolve_creds(run.user.as_deref(), run.group.as_deref())?;
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
        let program = find_program(argv0, path_var)?;
        for (inside, shown) in &run.isolate.bind {
            if !shown.exists() {
                return Err(SpawnError::BindSource(shown.clone()));
            }
            if !inside.exists() {
                return Err(SpawnError::BindTarget(inside.clone()));
            }
        }
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

    /// fork + exec, suspended until the child has exec'd or died
    /// (`CLONE_VFORK`); the exec result arrives on `Child::errpipe` (see
    /// [`decode_failure`]). For the occasional command (hooks, probes,
    /// stop commands): the `Child` may be dropped at once.
    pub fn spawn(mut self) -> Result<Child, SpawnError> {
        self.join_by_write()?;
        let (r, w) = exec_pipe()?;
        let stack = child_stack().map_err(os("allocating the child's stack"))?;
        let owned = std::mem::take(&mut self.owned);
        let arg = ChildArg {
            plan: &self,
            errfd: w.as_raw_fd(),
        };
        // clone(CLONE_VM | CLONE_VFORK) on a stack of its own, like glibc's
        // posix_spawn: no page tables are copied and no copy-on-write
        // faults follow (a fork of the supervisor costs more than the
        // rest of a start). The parent is suspended until the child has
        // exec'd or died; the child only reads the prepared plan and makes
        // raw syscalls (setup_and_exec), so sharing the memory is safe.
        // SAFETY: as described; `stack` is the top of a private mapping no
        // other child uses (the parent waits for this one to exec), and
        // `arg` outlives the child's use of it (we are suspended).
        let pid = unsafe {
            libc::clone(
                trampoline,
                stack,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&arg as *const ChildArg).cast_mut().cast(),
            )
        };
        drop(owned);
        finish_clone(pid, r, w, self.binds.clone(), None)
    }

    /// fork + exec without waiting for the exec: the supervisor goes on
    /// while the child sets itself up and execs (on a busy node, 500
    /// instances start in about half the time: the supervisor is not idle
    /// while each child waits for a CPU). The child runs on a stack of its
    /// own and reads this plan, both kept in the returned `Child`, which
    /// must live until its errpipe reports EOF (exec done: the child has
    /// left our memory) or the child is reaped.
    pub fn spawn_async(mut self) -> Result<Child, SpawnError> {
        let (r, w) = exec_pipe()?;
        let stack = super::stack::Stack::take().map_err(os("allocating the child's stack"))?;
        let (low, size) = stack.region();
        let top = stack.top();
        let owned = std::mem::take(&mut self.owned);
        let binds = self.binds.clone();
        let mut in_flight = Box::new(InFlight {
            plan: self,
            arg: ChildArg {
                plan: std::ptr::null(),
                errfd: w.as_raw_fd(),
            },
            _stack: stack,
        });
        in_flight.arg.plan = &in_flight.plan;
        let arg_ptr = (&in_flight.arg as *const ChildArg).cast_mut().cast();
        // Born in its cgroup where the kernel can (5.7+): no move, and so
        // no wait for an RCU grace period on the first move of a burst
        // (the cgroup_threadgroup_rwsem writer), ~15 ms on this kind of VM.
        if let Some(dir) = in_flight.plan.cgroup_dir {
            if clone3_allowed() {
                // SAFETY: as for clone below; the child is created in `dir`.
                let pid = unsafe { clone_into_cgroup(dir, low, size, arg_ptr) };
                if pid > 0 {
                    drop(owned);
                    return finish_clone(pid as i32, r, w, binds, Some(in_flight));
                }
            }
            // No child was made: the plan is ours to change. Join by write.
            in_flight.plan.join_by_write()?;
        }
        // SAFETY: CLONE_VM without CLONE_VFORK: the child shares our memory
        // and runs alongside us. It uses only its own stack (in_flight's)
        // and reads only the plan and its `arg`, which are not touched until
        // the caller drops the Child (after EOF on the pipe or the reap,
        // when the child no longer uses our memory); it makes raw
        // syscalls only (no errno, no locks, no allocation).
        let pid = unsafe { libc::clone(trampoline, top, libc::CLONE_VM | libc::SIGCHLD, arg_ptr) };
        // The child's copies are made (its fd table is its own).
        drop(owned);
        finish_clone(pid, r, w, binds, Some(in_flight))
    }

    /// Adds the `cgroup.procs` of `cgroup_dir` to the files the child
    /// writes itself into (when it is not born in the cgroup).
    fn join_by_write(&mut self) -> Result<(), SpawnError> {
        let Some(dir) = self.cgroup_dir.take() else {
            return Ok(());
        };
        // SAFETY: openat on our directory fd; the result is checked.
        let fd = unsafe {
            libc::openat(
                dir,
                c"cgroup.procs".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(SpawnError::Os {
                step: "opening the cgroup's cgroup.procs",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: a new fd we own.
        let procs = unsafe { OwnedFd::from_raw_fd(fd) };
        let h = high(procs.as_raw_fd())?;
        // The v2 cgroup first (limits' v1 groups after), as before.
        self.cgroups.insert(0, h.as_raw_fd());
        self.owned.push(h);
        Ok(())
    }

    /// `cohost exec`: the same setup in this very process, then exec, so
    /// the command's exit status is ours. Returns only on failure.
    pub fn exec_here(mut self) -> SpawnError {
        if let Err(e) = self.join_by_write() {
            return e;
        }
        // SAFETY: the CLI is single-threaded here; setup_and_exec only
        // returns on failure, with the step and errno. `owned` stays open
        // (it is part of self) until the exec.
        let (step, index, errno) = unsafe { self.setup_and_exec() };
        SpawnError::Child {
            step: Step::describe(step as u8, &self.binds, index),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    /// The child side of `spawn`.
    unsafe fn child_main(&self, errfd: RawFd) -> ! {
        // SAFETY: only raw syscalls happen in setup_and_exec.
        let (step, index, errno) = unsafe { self.setup_and_exec() };
        let mut buf = [0u8; 8];
        buf[0] = step as u8;
        buf[1..3].copy_from_slice(&index.to_ne_bytes());
        buf[4..8].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: write(2) of a local buffer.
        unsafe {
            rawsys::call3(
                libc::SYS_write,
                errfd as usize,
                buf.as_ptr() as usize,
                buf.len(),
            )
        };
        rawsys::exit(127)
    }

    /// Sets the process up and execs; returns (step, index, errno) only if
    /// a step failed. Raw syscalls only from here on: see `rawsys`.
    unsafe fn setup_and_exec(&self) -> (Step, u16, i32) {
        use libc::c_long;
        macro_rules! sys {
            ($step:expr, $idx:expr, $n:expr, $($a:expr),*) => {{
                let a: &[usize] = &[$($a as usize),*];
                let mut all = [0usize; 6];
                all[..a.len()].copy_from_slice(&a);
                // SAFETY: each call below passes valid arguments for $n.
                let r = unsafe { rawsys::call($n as c_long, all) };
                if r < 0 {
                    return ($step, $idx, (-r) as i32);
                }
                r
            }};
        }
        let null = std::ptr::null::<u8>() as usize;
        // The supervisor ignores SIGPIPE (and whoever started it may have
        // ignored more); ignored dispositions survive exec. Reset them
        // first, then unblock: no signal is handled in between.
        let dfl = KernelSigaction::default();
        for &sig in self.reset_signals {
            // SAFETY: rt_sigaction with a valid struct; failures ignored
            // (a signal that cannot be changed keeps its disposition).
            unsafe {
                rawsys::call(
                    libc::SYS_rt_sigaction,
                    [sig as usize, &dfl as *const _ as usize, null, 8, 0, 0],
                )
            };
        }
        let empty: u64 = 0;
        sys!(
            Step::SigMask,
            0,
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            null,
            8
        );
        if self.setsid {
            sys!(Step::Setsid, 0, libc::SYS_setsid,);
        }
        // Join the instance's cgroup(s) before anything can fork, so every
        // descendant is born inside (moving a parent later would not
        // move its children).
        for &fd in &self.cgroups {
            sys!(Step::Cgroup, 0, libc::SYS_write, fd, b"0".as_ptr(), 1);
        }
        if self.unshare_flags != 0 {
            sys!(Step::Unshare, 0, libc::SYS_unshare, self.unshare_flags);
        }
        if self.mount_private {
            // Our mounts must not propagate back to the host (and the
            // host's later mounts need not reach us): mount_namespaces(7).
            sys!(
                Step::MountPrivate,
                0,
                libc::SYS_mount,
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                null
            );
        }
        for (i, (src, dst)) in self.binds.iter().enumerate() {
            sys!(
                Step::Bind,
                i as u16,
                libc::SYS_mount,
                src.as_ptr(),
                dst.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                null
            );
        }
        if self.private_tmp {
            sys!(
                Step::Tmpfs,
                0,
                libc::SYS_mount,
                c"tmpfs".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=1777".as_ptr()
            );
        }
        if let Some(h) = &self.hostname {
            sys!(
                Step::Hostname,
                0,
                libc::SYS_sethostname,
                h.as_ptr(),
                h.as_bytes().len()
            );
        }
        for (res, lim) in &self.rlimits {
            sys!(
                Step::Rlimit,
                0,
                libc::SYS_prlimit64,
                0,
                *res,
                lim as *const libc::rlimit,
                null
            );
        }
        if let Some(m) = self.umask {
            sys!(Step::Rlimit, 0, libc::SYS_umask, m);
        }
        // dup3, not dup2 (arm64 has no dup2); sources are >= HIGH_FD, so
        // never equal to the target.
        for (src, dst) in [(self.stdin, 0), (self.stdout, 1), (self.stderr, 2)] {
            if let Some(fd) = src {
                sys!(Step::Dup, 0, libc::SYS_dup3, fd, dst, 0);
            }
        }
        let mut first_free = 3u32;
        if let Some(l) = self.inherit {
            sys!(Step::Dup, 0, libc::SYS_dup3, l, 3, 0);
            first_free = 4;
        }
        // Everything else is close-on-exec already (std and nix open that
        // way); this also covers fds a library opened without it. Older
        // kernels lack close_range: not an error.
        // SAFETY: close_range with flags; no memory.
        unsafe {
            rawsys::call3(
                libc::SYS_close_range,
                first_free as usize,
                u32::MAX as usize,
                libc::CLOSE_RANGE_CLOEXEC as usize,
            )
        };
        if let Some((uid, gid, groups)) = &self.creds {
            // Raw syscalls: they apply to this process only (glibc's
            // wrappers would signal every thread of the shared parent).
            sys!(
                Step::Groups,
                0,
                libc::SYS_setgroups,
                groups.len(),
                groups.as_ptr()
            );
            sys!(Step::Gid, 0, libc::SYS_setresgid, *gid, *gid, *gid);
            sys!(Step::Uid, 0, libc::SYS_setresuid, *uid, *uid, *uid);
        }
        sys!(Step::Chdir, 0, libc::SYS_chdir, self.cwd.as_ptr());
        sys!(
            Step::Exec,
            0,
            libc::SYS_execve,
            self.program.as_ptr(),
            self.argv_ptrs.as_ptr(),
            self.envp_ptrs.as_ptr()
        );
        // execve returns only on failure (handled by sys!).
        (Step::Exec, 0, libc::ENOEXEC)
    }
}

/// What the child's entry point gets: the plan and the report pipe.
struct ChildArg {
    plan: *const ExecPlan,
    errfd: RawFd,
}

extern "C" fn trampoline(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at a ChildArg, and it at a plan, that the parent
    // keeps alive and unchanged while this child uses them (see callers).
    let a = unsafe { &*(arg as *const ChildArg) };
    // SAFETY: as above; in the child; never returns.
    unsafe { (*a.plan).child_main(a.errfd) }
}

/// `COHOST_NO_CLONE3=1` in the daemon's environment: children join their
/// cgroup by writing `cgroup.procs` (what kernels before 5.7 and other
/// architectures do anyway), for a kernel whose clone3 misbehaves, and for
/// the tests of that path.
fn clone3_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var_os("COHOST_NO_CLONE3").is_none_or(|v| v != "1"))
}

/// clone3(CLONE_VM | CLONE_INTO_CGROUP) with the child starting in
/// `entry(arg)` on the stack `[low, low + size)`: the pid, or `-errno`
/// (then no child exists). x86-64 only; elsewhere `-ENOSYS`.
///
/// # Safety
/// As for `clone(CLONE_VM)`: `arg` and what it points to stay valid and
/// unchanged while the child uses them; the stack is the child's alone.
unsafe fn clone_into_cgroup(
    cgroup: RawFd,
    low: usize,
    size: usize,
    arg: *mut libc::c_void,
) -> isize {
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: libc::CLONE_VM as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: low as u64,
        stack_size: size as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup as u64,
    };
    #[cfg(target_arch = "x86_64")]
    let ret = {
        let ret: isize;
        // The child returns from the syscall with rax = 0 on the new stack
        // (the kernel sets rsp = stack + stack_size) and the parent's other
        // registers: it calls entry(arg) from r12/r13, which never returns.
        // SAFETY: see the function's contract; rcx/r11 are clobbered by
        // syscall, and the child never comes back into this frame.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 as isize => ret,
                in("rdi") &args as *const CloneArgs,
                in("rsi") size_of_val(&args),
                in("r12") arg,
                in("r13") trampoline as extern "C" fn(*mut libc::c_void) -> libc::c_int,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
        ret
    };
    #[cfg(not(target_arch = "x86_64"))]
    let ret = {
        let _ = (args, arg);
        -(libc::ENOSYS as isize)
    };
    ret
}

/// The exec-report pipe: the read end non-blocking for the event loop,
/// the write end moved high (it must survive the dup3s onto 0..3).
fn exec_pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| SpawnError::Os {
        step: "pipe",
        source: e.into(),
    })?;
    // The write end must block (the child's one write) and be high.
    let w = high(w.as_raw_fd())?;
    // SAFETY: fcntl(F_SETFL) on our fd.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) };
    Ok((r, w))
}

fn finish_clone(
    pid: i32,
    r: OwnedFd,
    w: OwnedFd,
    binds: Vec<(CString, CString)>,
    in_flight: Option<Box<InFlight>>,
) -> Result<Child, SpawnError> {
    if pid < 0 {
        return Err(SpawnError::Os {
            step: "clone",
            source: io::Error::last_os_error(),
        });
    }
    drop(w);
    Ok(Child {
        pid,
        errpipe: r,
        binds,
        _in_flight: in_flight,
    })
}

/// Decodes a failure report, if `buf` holds one.
pub fn decode_failure(child: &Child, buf: &[u8]) -> Option<SpawnError> {
    if buf.len() < 8 {
        return None;
    }
    let code = buf[0];
    let index = u16::from_ne_bytes([buf[1], buf[2]]);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Some(SpawnError::Child {
        step: Step::describe(code, &child.binds, index),
        source: io::Error::from_raw_os_error(errno),
    })
}
