//! What runs in the child between clone and exec: the setup steps, each
//! a raw system call, and the report of the one that failed.

use super::*;

/// How a child came by its own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Through the supervisor's pidfd, in a table that copies nothing.
    Fetched,
    /// In a copy of the supervisor's table, the rest closed (where the
    /// kernel refused this child the pidfd way).
    Copied,
}

/// A child that could not reach its exec exits so, as a shell does for a
/// command it cannot run; why is on the exec pipe.
const EXEC_FAILED: i32 = 127;

/// Signals whose disposition is not SIG_DFL in this process: an ignored one
/// survives exec(2) (SIGPIPE, ignored by the supervisor; whatever the
/// caller of `cohost start` ignored, like SIGHUP under nohup). A service
/// must start with all of them at the default, and only these need a
/// sigaction in the child. Dispositions are looked up once: the supervisor
/// never changes them afterwards.
pub(super) fn non_default_signals() -> &'static [libc::c_int] {
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

#[derive(Clone, Copy)]
#[repr(u8)]
pub(super) enum Step {
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
    pub(super) fn describe(code: u8, binds: &[(CString, CString)], index: u16) -> String {
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

impl ExecPlan {
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
    pub(super) unsafe fn child_main(&self, arg: &super::launch::ChildArg) -> ! {
        let errfd = arg.errfd;
        // First, before anything that can block: let go of every
        // descriptor of the supervisor's (its control socket, its runtime
        // lock, client connections, other instances' files). A child that
        // then hangs (a chdir into a hung mount) holds nothing that keeps
        // a dead supervisor's socket or lock alive, or a client waiting.
        if arg.fetch {
            // Never a copy of another instance's files at all (see
            // `super::FETCH`): closing one would wait on its storage.
            let fetched = self.take_ours_from_supervisor(errfd);
            if fetched == Ok(Taken::Fetched) {
                // At their numbers before the parent hears of it: a late
                // child says so on the pipe, at the plan's number.
                self.renumber(errfd);
            }
            let fetched = fetched.map(|_| ());
            arg.fetched(fetched);
            if fetched.is_err() {
                rawsys::exit(EXEC_FAILED);
            }
        } else {
            self.close_all_but_ours(errfd);
        }
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
        rawsys::exit(EXEC_FAILED)
    }

    /// The descriptor numbers this child uses, each once: its report pipe,
    /// stdio, the cgroup files it writes, the lock.
    fn ours(&self, errfd: RawFd, keep: &mut [RawFd; 24]) -> usize {
        self.collect_fds(errfd, keep, false)
    }

    /// `ours`, and with `kept` also what the older way keeps: inherited
    /// stdio (0..2 where the plan has none) and the cgroup directory.
    fn collect_fds(&self, errfd: RawFd, keep: &mut [RawFd; 24], kept: bool) -> usize {
        let mut n = 0;
        let mut add = |fd: RawFd| {
            if fd >= 0 && n < keep.len() && !keep[..n].contains(&fd) {
                keep[n] = fd;
                n += 1;
            }
        };
        add(errfd);
        for (fd, std) in [(self.stdin, 0), (self.stdout, 1), (self.stderr, 2)] {
            add(fd.unwrap_or(if kept { std } else { -1 }));
        }
        for &fd in &self.cgroups {
            add(fd);
        }
        if kept && let Some(fd) = self.cgroup_dir {
            add(fd);
        }
        if let Some(fd) = self.inherit {
            add(fd);
        }
        n
    }

    /// With a descriptor table of its own that holds only 0..=3 (3 is the
    /// supervisor's pidfd, `DAEMON_PIDFD`), made by close_range(2) with
    /// CLOSE_RANGE_UNSHARE from the table shared with the supervisor
    /// (CLONE_FILES): the kernel copies only what is below the range, so
    /// nothing of the supervisor's is copied, and so nothing is closed
    /// (a close of a file on a hung FUSE or NFS mount waits for its
    /// flush). Then the child's own files are taken from the supervisor's
    /// table with pidfd_getfd(2), at the lowest free numbers (4 up);
    /// `renumber` moves them to the numbers in the plan. The supervisor
    /// waits for this (the numbers must not be reused before), and only
    /// for this: no step here touches storage. Errno on failure.
    fn take_ours_from_supervisor(&self, errfd: RawFd) -> Result<Taken, i32> {
        let first = (DAEMON_PIDFD + 1) as usize;
        // May we? The kernel's answer for this child (EPERM: a ptrace
        // check, which the probe at start passed but a supervisor whose
        // memory became non-dumpable fails without CAP_SYS_PTRACE, as in
        // a container), asked with the pidfd itself: the copy lands in the
        // shared table for a moment, and a pidfd's close never blocks.
        match sys(
            Step::Dup,
            0,
            libc::SYS_pidfd_getfd,
            &[DAEMON_PIDFD as usize, DAEMON_PIDFD as usize, 0],
        ) {
            Ok(fd) => {
                let _ = sys(Step::Dup, 0, libc::SYS_close, &[fd as usize]);
            }
            Err((_, _, libc::EPERM))
                if super::fds::COPY_FALLBACK.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                // The older way for this child: a copy of the table, the
                // rest closed (a close may then wait on another instance's
                // storage; the start still happens).
                sys(
                    Step::Dup,
                    0,
                    libc::SYS_unshare,
                    &[libc::CLONE_FILES as usize],
                )
                .map_err(|f| f.2)?;
                self.close_all_but_ours(errfd);
                return Ok(Taken::Copied);
            }
            Err(f) => return Err(f.2),
        }
        let unshare = libc::CLOSE_RANGE_UNSHARE as usize;
        sys(
            Step::Dup,
            0,
            libc::SYS_close_range,
            &[first, u32::MAX as usize, unshare],
        )
        .map_err(|f| f.2)?;
        let mut keep = [-1 as RawFd; 24];
        let n = self.ours(errfd, &mut keep);
        for (i, &fd) in keep[..n].iter().enumerate() {
            let got = sys(
                Step::Dup,
                0,
                libc::SYS_pidfd_getfd,
                &[DAEMON_PIDFD as usize, fd as usize, 0],
            )
            .map_err(|f| f.2)?;
            // Table 0..=3 plus the ones taken before: 4 + i, below
            // HIGH_FD (where every plan number is), as `renumber` needs.
            if got != (first + i) as isize {
                return Err(libc::EBADF);
            }
        }
        Ok(Taken::Fetched)
    }

    /// The files taken at 4.. go to their numbers in the plan (all at or
    /// above HIGH_FD, so never onto one still to be moved), close-on-exec
    /// like the originals. The copies at 4.. are close-on-exec too and are
    /// left to the exec: a close here of the child's own log or lock could
    /// wait on its storage before the parent has heard from it.
    fn renumber(&self, errfd: RawFd) {
        let mut keep = [-1 as RawFd; 24];
        let n = self.ours(errfd, &mut keep);
        let first = (DAEMON_PIDFD + 1) as usize;
        for (i, &fd) in keep[..n].iter().enumerate() {
            let from = first + i;
            let cloexec = libc::O_CLOEXEC as usize;
            let _ = sys(Step::Dup, 0, libc::SYS_dup3, &[from, fd as usize, cloexec]);
        }
    }

    /// close_range(2) over every gap between the descriptors this child
    /// uses (its plan's and its report pipe; 0..2 where stdio is
    /// inherited), lowest first: the supervisor's long-lived descriptors
    /// are its lowest. No allocation: a fixed array on this stack.
    fn close_all_but_ours(&self, errfd: RawFd) {
        let mut keep = [-1 as RawFd; 24];
        let n = self.collect_fds(errfd, &mut keep, true);
        let keep = &mut keep[..n];
        keep.sort_unstable();
        let mut lo: usize = 0;
        for &k in keep.iter() {
            let k = k as usize;
            if k > lo {
                let _ = sys(Step::Dup, 0, libc::SYS_close_range, &[lo, k - 1, 0]);
            }
            lo = k + 1;
        }
        let _ = sys(
            Step::Dup,
            0,
            libc::SYS_close_range,
            &[lo, u32::MAX as usize, 0],
        );
    }

    /// Sets the process up and execs; returns (step, index, errno) only if
    /// a step failed. Raw syscalls only from here on: see `rawsys`.
    pub(super) unsafe fn setup_and_exec(&self) -> Fail {
        let steps = [
            Self::clean_signals,
            Self::join_and_isolate,
            Self::limits_and_stdio,
            Self::user,
            Self::exec,
        ];
        for step in steps {
            if let Err(f) = step(self) {
                return f;
            }
        }
        // exec returns only on failure.
        (Step::Exec, 0, libc::ENOEXEC)
    }

    /// Ignored dispositions survive exec (the supervisor ignores SIGPIPE,
    /// whoever started it may have ignored more): reset them first, then
    /// unblock, so no signal is handled in between. New session.
    fn clean_signals(&self) -> Result<(), Fail> {
        let dfl = KernelSigaction::default();
        for &sig in self.reset_signals {
            // Failures ignored: a signal that cannot be changed keeps its
            // disposition.
            let _ = sys(
                Step::SigMask,
                0,
                libc::SYS_rt_sigaction,
                &[sig as usize, &dfl as *const _ as usize, NULL, 8],
            );
        }
        let empty: u64 = 0;
        sys(
            Step::SigMask,
            0,
            libc::SYS_rt_sigprocmask,
            &[
                libc::SIG_SETMASK as usize,
                &empty as *const u64 as usize,
                NULL,
                8,
            ],
        )?;
        if self.setsid {
            sys(Step::Setsid, 0, libc::SYS_setsid, &[])?;
        }
        Ok(())
    }

    /// The cgroups still to join by writing (before anything can fork, so
    /// every descendant is born inside), then namespaces, mounts, host name.
    fn join_and_isolate(&self) -> Result<(), Fail> {
        for &fd in &self.cgroups {
            let one = b"0".as_ptr() as usize;
            sys(Step::Cgroup, 0, libc::SYS_write, &[fd as usize, one, 1])?;
        }
        if self.unshare_flags != 0 {
            let flags = self.unshare_flags as usize;
            sys(Step::Unshare, 0, libc::SYS_unshare, &[flags])?;
        }
        if self.mount_private {
            // Our mounts must not propagate back to the host (and the
            // host's later mounts need not reach us): mount_namespaces(7).
            let root = c"/".as_ptr() as usize;
            let flags = (libc::MS_REC | libc::MS_PRIVATE) as usize;
            sys(
                Step::MountPrivate,
                0,
                libc::SYS_mount,
                &[NULL, root, NULL, flags, NULL],
            )?;
        }
        for (i, (src, dst)) in self.binds.iter().enumerate() {
            let (src, dst) = (src.as_ptr() as usize, dst.as_ptr() as usize);
            let flags = (libc::MS_BIND | libc::MS_REC) as usize;
            sys(
                Step::Bind,
                i as u16,
                libc::SYS_mount,
                &[src, dst, NULL, flags, NULL],
            )?;
        }
        if self.private_tmp {
            let tmpfs = c"tmpfs".as_ptr() as usize;
            let tmp = c"/tmp".as_ptr() as usize;
            let flags = (libc::MS_NOSUID | libc::MS_NODEV) as usize;
            let opts = c"mode=1777".as_ptr() as usize;
            sys(
                Step::Tmpfs,
                0,
                libc::SYS_mount,
                &[tmpfs, tmp, tmpfs, flags, opts],
            )?;
        }
        if let Some(h) = &self.hostname {
            let (name, len) = (h.as_ptr() as usize, h.as_bytes().len());
            sys(Step::Hostname, 0, libc::SYS_sethostname, &[name, len])?;
        }
        Ok(())
    }

    /// rlimits, umask, stdio on 0..2 and the lock on 3; every other fd
    /// closes at exec.
    fn limits_and_stdio(&self) -> Result<(), Fail> {
        for (res, lim) in &self.rlimits {
            let lim = lim as *const libc::rlimit as usize;
            sys(
                Step::Rlimit,
                0,
                libc::SYS_prlimit64,
                &[0, *res as usize, lim, NULL],
            )?;
        }
        if let Some(m) = self.umask {
            sys(Step::Rlimit, 0, libc::SYS_umask, &[m as usize])?;
        }
        // dup3, not dup2 (arm64 has no dup2); sources are >= HIGH_FD, so
        // never equal to the target.
        let mut first_free = 3;
        let inherit = self.inherit.map(|l| (l, 3));
        let moves = [(self.stdin, 0), (self.stdout, 1), (self.stderr, 2)];
        for (fd, target) in moves
            .into_iter()
            .filter_map(|(fd, t)| fd.map(|fd| (fd, t)))
            .chain(inherit)
        {
            sys(Step::Dup, 0, libc::SYS_dup3, &[fd as usize, target, 0])?;
            first_free = first_free.max(target + 1);
        }
        // Everything else is close-on-exec already (std and nix open that
        // way); this also covers fds a library opened without it. Older
        // kernels lack close_range: not an error.
        let flags = libc::CLOSE_RANGE_CLOEXEC as usize;
        let _ = sys(
            Step::Dup,
            0,
            libc::SYS_close_range,
            &[first_free, u32::MAX as usize, flags],
        );
        Ok(())
    }

    /// The product's user, last (this process only: raw syscalls, where
    /// glibc's wrappers would signal every thread of the shared parent).
    fn user(&self) -> Result<(), Fail> {
        if let Some((uid, gid, groups)) = &self.creds {
            let list = (groups.len(), groups.as_ptr() as usize);
            sys(Step::Groups, 0, libc::SYS_setgroups, &[list.0, list.1])?;
            let (g, u) = (*gid as usize, *uid as usize);
            sys(Step::Gid, 0, libc::SYS_setresgid, &[g, g, g])?;
            sys(Step::Uid, 0, libc::SYS_setresuid, &[u, u, u])?;
        }
        Ok(())
    }

    fn exec(&self) -> Result<(), Fail> {
        sys(
            Step::Chdir,
            0,
            libc::SYS_chdir,
            &[self.cwd.as_ptr() as usize],
        )?;
        let args = [
            self.program.as_ptr() as usize,
            self.argv_ptrs.as_ptr() as usize,
            self.envp_ptrs.as_ptr() as usize,
        ];
        sys(Step::Exec, 0, libc::SYS_execve, &args)?;
        Ok(())
    }
}

/// A failed step: which, its index (bind number), errno.
pub(super) type Fail = (Step, u16, i32);

const NULL: usize = 0;

/// One raw system call of the setup; a failure names the step.
fn sys(step: Step, index: u16, n: libc::c_long, args: &[usize]) -> Result<isize, Fail> {
    let mut all = [0usize; 6];
    for (d, a) in all.iter_mut().zip(args) {
        *d = *a;
    }
    // SAFETY: every caller passes valid arguments for `n` (pointers to
    // live, prepared memory of the plan or of its own frame).
    let r = unsafe { rawsys::call(n, all) };
    if r < 0 {
        return Err((step, index, (-r) as i32));
    }
    Ok(r)
}
