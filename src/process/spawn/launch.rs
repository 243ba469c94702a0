//! Making the child: clone on a stack of its own (waiting for its exec, or
//! not), born in its cgroup where the kernel can (`clone3.rs`), and the
//! pipe it reports an exec failure on.

use super::child::Step;
use super::clone3::{clone_into_cgroup, clone3_allowed};
use super::*;

/// The plan and stack an asynchronous child runs on before exec.
pub(super) struct InFlight {
    plan: ExecPlan,
    /// Points at `plan` (the box does not move).
    arg: ChildArg,
    _stack: crate::process::stack::Stack,
    /// The exec pipe's write end, when the child had not taken its copy
    /// within the bound (`ChildArg::wait_taken`), and the rest of what it
    /// takes (its log, its lock: closed where a close may block, see
    /// `Child::parent_fds`), until it says it has them.
    late_pipe: Option<OwnedFd>,
    late_fds: Vec<OwnedFd>,
}

impl ExecPlan {
    /// fork + exec, suspended until the child has exec'd or died
    /// (`CLONE_VFORK`); the exec result arrives on `Child::errpipe` (see
    /// [`decode_failure`]). Never on the supervisor's loop: a child that
    /// hangs before its exec (a chdir into a hung mount) suspends the
    /// caller with it. For the CLI; the supervisor uses [`Self::spawn`].
    pub fn spawn_blocking(mut self) -> Result<Child, SpawnError> {
        self.join_by_write()?;
        let (r, w) = exec_pipe()?;
        // The one allocator of child stacks (guard page below), reused:
        // this child is done with it when clone returns.
        let stack =
            crate::process::stack::Stack::take().map_err(os("allocating the child's stack"))?;
        let owned = std::mem::take(&mut self.owned);
        let arg = ChildArg::new(&self, w.as_raw_fd(), false);
        // clone(CLONE_VM | CLONE_VFORK) on a stack of its own, like glibc's
        // posix_spawn: no page tables are copied and no copy-on-write
        // faults follow (a fork of the supervisor costs more than the
        // rest of a start). The parent is suspended until the child has
        // exec'd or died; the child only reads the prepared plan and makes
        // raw syscalls (setup_and_exec), so sharing the memory is safe.
        // SAFETY: as described; `stack` is a private mapping no other
        // child uses (the parent waits for this one to exec), and
        // `arg` outlives the child's use of it (we are suspended).
        let pid = unsafe {
            libc::clone(
                trampoline,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&arg as *const ChildArg).cast_mut().cast(),
            )
        };
        finish_clone(pid, r, w, self.binds.clone(), None, owned)
    }

    /// fork + exec without waiting for the exec: the supervisor goes on
    /// while the child sets itself up and execs (on a busy node, 500
    /// instances start in about half the time: the supervisor is not idle
    /// while each child waits for a CPU). The child runs on a stack of its
    /// own and reads this plan, both kept in the returned `Child`, which
    /// must live until its errpipe reports EOF (exec done: the child has
    /// left our memory) or the child is reaped.
    pub fn spawn(mut self) -> Result<Child, SpawnError> {
        sweep();
        let fetch = FETCH.load(std::sync::atomic::Ordering::Relaxed);
        let (r, w) = exec_pipe()?;
        let stack =
            crate::process::stack::Stack::take().map_err(os("allocating the child's stack"))?;
        let (low, size) = stack.region();
        let top = stack.top();
        let owned = std::mem::take(&mut self.owned);
        let binds = self.binds.clone();
        let mut in_flight = Box::new(InFlight {
            plan: self,
            arg: ChildArg::new(std::ptr::null(), w.as_raw_fd(), fetch),
            _stack: stack,
            late_pipe: None,
            late_fds: Vec::new(),
        });
        in_flight.arg.plan = &in_flight.plan;
        let arg_ptr = (&in_flight.arg as *const ChildArg).cast_mut().cast();
        let ctid = in_flight.arg.state.as_ptr();
        let share = if fetch {
            libc::CLONE_FILES | libc::CLONE_CHILD_CLEARTID
        } else {
            0
        };
        // Born in its cgroup where the kernel can (5.7+): no move, and so
        // no wait for an RCU grace period on the first move of a burst
        // (the cgroup_threadgroup_rwsem writer), ~15 ms on this kind of VM.
        if let Some(dir) = in_flight.plan.cgroup_dir {
            if clone3_allowed() {
                // SAFETY: as for clone below; the child is created in `dir`.
                let pid = unsafe { clone_into_cgroup(dir, low, size, arg_ptr, share, ctid) };
                if pid > 0 {
                    return finish_clone(pid as i32, r, w, binds, Some(in_flight), owned);
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
        let pid = unsafe {
            libc::clone(
                trampoline,
                top,
                libc::CLONE_VM | share | libc::SIGCHLD,
                arg_ptr,
                std::ptr::null_mut::<libc::pid_t>(),
                std::ptr::null_mut::<libc::c_void>(),
                ctid.cast::<libc::pid_t>(),
            )
        };
        // The child's copies are made (its fd table is its own); ours go
        // back to the caller to close (Child::parent_fds).
        finish_clone(pid, r, w, binds, Some(in_flight), owned)
    }

    /// Adds the `cgroup.procs` of `cgroup_dir` to the files the child
    /// writes itself into (when it is not born in the cgroup).
    pub(super) fn join_by_write(&mut self) -> Result<(), SpawnError> {
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
}

impl InFlight {
    /// A child that took its files late has them: our copy of the exec
    /// pipe's write end is closed; the other files are handed back, for
    /// the caller to close where a close may block.
    pub(super) fn take_late_pipe(&mut self) -> Vec<OwnedFd> {
        self.late_pipe = None;
        std::mem::take(&mut self.late_fds)
    }
}

// SAFETY: `arg.plan` points at `plan` inside the same box, which does not
// move; the stack is a mapping owned by `_stack`. Nothing is thread-bound.
unsafe impl Send for InFlight {}

/// What the child's entry point gets: the plan and the report pipe, and
/// in `FETCH` mode the word it reports taking its files on.
pub(super) struct ChildArg {
    plan: *const ExecPlan,
    pub(super) errfd: RawFd,
    /// Share the supervisor's table at birth and take only our files.
    pub(super) fetch: bool,
    /// `TAKING` until the child has its files (then `TAKEN`), or the
    /// kernel's 0 (CLONE_CHILD_CLEARTID) when it has exec'd or died, or
    /// `GAVE_UP` when the parent stopped waiting first; a futex the parent
    /// waits on.
    state: std::sync::atomic::AtomicU32,
    /// The errno when taking them failed.
    errno: std::sync::atomic::AtomicI32,
}

const TAKING: u32 = 2;
const TAKEN: u32 = 1;
const GAVE_UP: u32 = 3;

/// How long the parent waits for a child to take its files. They are a
/// few system calls that never touch storage (tens of microseconds); a
/// child that cannot run (born in a frozen cgroup, or one over its
/// cpu.max) is not waited for: it says when it has them (`TAKEN_BYTE`).
const TAKE_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// Written on the exec pipe by a child that took its files after its
/// parent stopped waiting (`GAVE_UP`): the parent may then close its copy
/// of the pipe's write end. Never the first byte of a failure report
/// (whose first byte is a `Step`, 1..=15).
pub(super) const TAKEN_BYTE: u8 = b'T';

impl ChildArg {
    fn new(plan: *const ExecPlan, errfd: RawFd, fetch: bool) -> ChildArg {
        ChildArg {
            plan,
            errfd,
            fetch,
            state: std::sync::atomic::AtomicU32::new(TAKING),
            errno: std::sync::atomic::AtomicI32::new(0),
        }
    }

    /// In the child: its files are taken (or not: `Err(errno)`); wakes
    /// the parent, or, if it has stopped waiting, tells it on the pipe.
    /// Raw syscalls only.
    pub(super) fn fetched(&self, r: Result<(), i32>) {
        use std::sync::atomic::Ordering::SeqCst;
        if let Err(e) = r {
            self.errno.store(e, SeqCst);
        }
        if self
            .state
            .compare_exchange(TAKING, TAKEN, SeqCst, SeqCst)
            .is_err()
        {
            // GAVE_UP: the parent holds its write end until told.
            if r.is_ok() {
                let b = [TAKEN_BYTE];
                // SAFETY: write(2) of one byte of our stack to our pipe.
                unsafe {
                    rawsys::call3(libc::SYS_write, self.errfd as usize, b.as_ptr() as usize, 1)
                };
            }
            return;
        }
        // SAFETY: FUTEX_WAKE on a word of our (shared) memory; shared, not
        // private, like the kernel's wake at CLONE_CHILD_CLEARTID.
        unsafe {
            rawsys::call(
                libc::SYS_futex,
                [
                    self.state.as_ptr() as usize,
                    libc::FUTEX_WAKE as usize,
                    1,
                    0,
                    0,
                    0,
                ],
            )
        };
    }

    /// Sleeps while the word holds `expected`, at most `left` (a change, a
    /// wake, a signal or the timeout end it: callers loop on the word).
    fn futex_wait(&self, expected: u32, left: std::time::Duration) {
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: FUTEX_WAIT (shared, like the kernel's CLONE_CHILD_CLEARTID
        // wake) on our word with a relative timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.state.as_ptr(),
                libc::FUTEX_WAIT,
                expected,
                &ts as *const libc::timespec,
            )
        };
    }

    /// In the parent: waits (5 s at most) until a child that failed to take
    /// its files has left our memory (exited: the kernel zeroes the word).
    fn wait_gone(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let now = self.state.load(SeqCst);
            if now == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.futex_wait(now, left);
        }
    }

    /// In the parent: waits, at most `TAKE_WAIT`, until the child has taken
    /// its files, exec'd or died. Err(errno) if it could not take them;
    /// Ok(false) if the wait was given up (the child will say so on the
    /// pipe; until then the pipe's write end must stay open: its number
    /// may not be reused while the child may still take it).
    fn wait_taken(&self) -> Result<bool, i32> {
        use std::sync::atomic::Ordering::SeqCst;
        let deadline = std::time::Instant::now() + TAKE_WAIT;
        while self.state.load(SeqCst) == TAKING {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                if self
                    .state
                    .compare_exchange(TAKING, GAVE_UP, SeqCst, SeqCst)
                    .is_ok()
                {
                    return Ok(false);
                }
                break;
            }
            self.futex_wait(TAKING, left);
        }
        match self.errno.load(SeqCst) {
            0 => Ok(true),
            e => Err(e),
        }
    }
}

pub(super) extern "C" fn trampoline(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at a ChildArg, and it at a plan, that the parent
    // keeps alive and unchanged while this child uses them (see callers).
    let a = unsafe { &*(arg as *const ChildArg) };
    // SAFETY: as above; in the child; never returns.
    unsafe { (*a.plan).child_main(a) }
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
    mut parent_fds: Vec<OwnedFd>,
) -> Result<Child, SpawnError> {
    if pid < 0 {
        return Err(SpawnError::Os {
            step: "clone",
            source: io::Error::last_os_error(),
        });
    }
    let mut in_flight = in_flight;
    if let Some(f) = in_flight.as_mut().filter(|f| f.arg.fetch) {
        match f.arg.wait_taken() {
            Ok(true) => drop(w),
            // Still taking them: the write end stays open, with the plan,
            // until the child says it has them (`Child::note_report`) or is
            // known to have exec'd or died.
            Ok(false) => {
                f.late_pipe = Some(w);
                f.late_fds = std::mem::take(&mut parent_fds);
            }
            Err(errno) => {
                // It exits at once (the reaper sees it). What it ran on is
                // freed once it has left our memory: not at its pipe's EOF,
                // which may come first when it never took the pipe (and its
                // exit still writes its word).
                drop(w);
                if let Some(f) = in_flight.take() {
                    if f.arg.wait_gone() {
                        drop(f);
                    } else {
                        // Stuck in the kernel on its way out: never free
                        // what it may still touch.
                        Box::leak(f);
                    }
                }
                return Err(SpawnError::Child {
                    step: "taking its files from the supervisor (pidfd_getfd)".into(),
                    source: io::Error::from_raw_os_error(errno),
                });
            }
        }
        return Ok(Child {
            pid,
            errpipe: r,
            binds,
            in_flight,
            parent_fds,
        });
    }
    drop(w);
    Ok(Child {
        pid,
        errpipe: r,
        binds,
        in_flight,
        parent_fds,
    })
}

/// Plans and stacks of children dropped before their exec was known, with
/// a duplicate of each one's exec pipe (see `Drop for Child`).
static BURIED: std::sync::Mutex<Vec<(OwnedFd, Box<InFlight>)>> = std::sync::Mutex::new(Vec::new());

pub(super) fn bury(pipe: OwnedFd, f: Box<InFlight>) {
    let mut b = BURIED.lock().unwrap_or_else(|e| e.into_inner());
    b.push((pipe, f));
}

/// Frees the buried plans whose child has exec'd or died (EOF on its
/// non-blocking pipe; a report before the EOF is read and dropped).
fn sweep() {
    let mut b = BURIED.lock().unwrap_or_else(|e| e.into_inner());
    b.retain_mut(|(pipe, f)| {
        // CLONE_CHILD_CLEARTID: the kernel zeroes the word at exec or exit.
        if f.arg.fetch && f.arg.state.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            return false;
        }
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(&*pipe, &mut buf) {
                Ok(0) => return false,
                // The child is past taking its files (a late one says so
                // first): our copy of the write end may go, for EOF (the
                // buried are hooks' and probes': their files are local).
                Ok(_) => drop(f.take_late_pipe()),
                Err(nix::Error::EINTR) => continue,
                Err(_) => return true,
            }
        }
    });
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
