//! The supervisor's descriptor layout for its children: the soft
//! RLIMIT_NOFILE a child gets back, the numbers its source fds are moved
//! to, and "fetch" (a child builds its own table and takes only its own
//! files from the supervisor with pidfd_getfd(2)).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::{ExecPlan, Output, Spawn, SpawnError, dev_null};
use crate::model::RunContext;

/// The soft RLIMIT_NOFILE the process started with. The daemon raises its
/// own to the hard limit (many instances, many fds); a service gets the
/// usual one back unless it sets `rlimits.nofile` (a daemon that closes
/// every possible fd at start-up would otherwise loop a million times).
pub(super) static ORIGINAL_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

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
pub(super) const HIGH_FD: RawFd = 32;

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
pub(super) static FETCH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set once the start-up probe has taken its files the pidfd way: a child
/// the kernel refuses that way later (EPERM) then takes the older way
/// instead of failing (`ExecPlan::take_ours_from_supervisor`). Never
/// during the probe, which must see the refusal.
pub(super) static COPY_FALLBACK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

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
    /// Its death before taking them looks like success to the parent's
    /// wait (the kernel clears the word at any exit): a seccomp filter
    /// that kills on pidfd_getfd (systemd's `SystemCallFilter=~@debug`).
    #[error("a test child taking its files from the supervisor died: {0}")]
    ProbeDied(String),
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
    // Whatever else sits there was inherited from whoever started us (a
    // shell's `exec 9>/u01/lock`): not ours, and it would reach every
    // child; closed (daemon(7)), as a daemon closes what it inherits.
    for fd in DAEMON_PIDFD + 1..COPIED_ANYWAY {
        if fd == null.as_raw_fd() {
            continue;
        }
        // SAFETY: dup3 of our /dev/null onto a number that is free or holds
        // an inherited file nobody here owns.
        if unsafe { libc::dup3(null.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
            return Err(err("reserving fds 4..64")(io::Error::last_os_error()));
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
            let ws = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child.pid), None);
            drop(child.release());
            match ws {
                // Exec'd /bin/true, or (no /bin/true) exited 127: either way
                // it took its files.
                Ok(nix::sys::wait::WaitStatus::Exited(..)) => {
                    COPY_FALLBACK.store(true, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
                other => {
                    FETCH.store(false, std::sync::atomic::Ordering::Relaxed);
                    Err(FetchUnavailable::ProbeDied(match other {
                        Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                            format!("killed by {sig}")
                        }
                        Ok(ws) => format!("{ws:?}"),
                        Err(e) => e.to_string(),
                    }))
                }
            }
        }
        Err(e) => {
            FETCH.store(false, std::sync::atomic::Ordering::Relaxed);
            Err(FetchUnavailable::Probe(Box::new(e)))
        }
    }
}
