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
use std::path::PathBuf;

mod child;
mod clone3;
mod fds;
mod launch;
mod lookup;
mod plan;

pub use clone3::{CloneArgs, probe_clone3, probe_clone3_failed};
pub use fds::{DAEMON_PIDFD, FetchUnavailable, enable_fetch, remember_nofile};
use fds::{FETCH, HIGH_FD, ORIGINAL_NOFILE};
pub use launch::decode_failure;
pub use lookup::{Creds, DEFAULT_PATH, INHERITED_ENV, environment, find_program, resolve_creds};

use super::rawsys;
use crate::model::RunContext;
use launch::InFlight;

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
    BindTarget(#[from] crate::paths::BindTargetError),
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
