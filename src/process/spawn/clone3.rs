//! Children born in their cgroup: clone3(CLONE_INTO_CGROUP) by hand (the
//! child starts on its own stack in the trampoline), whether the kernel
//! lets them live (the probe at daemon start), and the switch to the older
//! way (join by writing `cgroup.procs`).

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::*;

/// `COHOST_NO_CLONE3=1` in the daemon's environment: children join their
/// cgroup by writing `cgroup.procs` (what kernels before 5.7 and other
/// architectures do anyway), for a kernel whose clone3 misbehaves, and for
/// the tests of that path.
pub(super) fn clone3_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !CLONE3_KILLS.load(std::sync::atomic::Ordering::Relaxed)
        && *ALLOWED.get_or_init(|| std::env::var_os("COHOST_NO_CLONE3").is_none_or(|v| v != "1"))
}

/// Children join their cgroup by writing from now on (the probe could not
/// be run).
pub fn probe_clone3_failed() {
    CLONE3_KILLS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Set by [`probe_clone3`] when children born in a cgroup die at birth.
static CLONE3_KILLS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a child created with clone3(CLONE_INTO_CGROUP) in the fresh,
/// empty cgroup directory `dir` survives its birth; if not, every later
/// child joins its cgroup by writing instead. On Linux 6.18 such a child
/// is SIGKILLed at birth when the kill sequence of the creating process's
/// own cgroup differs from the new one's: after a `cgroup.kill` of the
/// supervisor's cgroup (a cluster's fence agent, a test harness, a
/// restarted node in a container). Run once, at the supervisor's start:
/// `/bin/true` lives for a millisecond. Returns false when it died so.
pub fn probe_clone3(dir: &Path) -> Result<bool, SpawnError> {
    let fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(os("opening the probe cgroup"))?;
    let run = crate::model::RunContext::bare(Vec::new());
    let argv = ["/bin/true".to_string()];
    let plan = ExecPlan::with_creds(
        Spawn {
            argv: &argv,
            run: &run,
            output: Output::Null,
            cgroups: Vec::new(),
            into_cgroup: Some(OwnedFd::from(fd)),
            inherit: None,
            setsid: true,
        },
        None,
    )?;
    let mut child = plan.spawn()?;
    let ws = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child.pid), None);
    drop(child.release());
    let killed = matches!(
        ws,
        Ok(nix::sys::wait::WaitStatus::Signaled(
            _,
            nix::sys::signal::Signal::SIGKILL,
            _
        ))
    );
    if killed {
        CLONE3_KILLS.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(!killed)
}

/// `struct clone_args` of clone3(2), up to `cgroup` (Linux 5.7).
#[repr(C)]
#[derive(Debug, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// clone3(CLONE_VM | CLONE_INTO_CGROUP) with the child starting in
/// `entry(arg)` on the stack `[low, low + size)`: the pid, or `-errno`
/// (then no child exists). x86-64 only; elsewhere `-ENOSYS`.
///
/// # Safety
/// As for `clone(CLONE_VM)`: `arg` and what it points to stay valid and
/// unchanged while the child uses them; the stack is the child's alone.
pub(super) unsafe fn clone_into_cgroup(
    cgroup: RawFd,
    low: usize,
    size: usize,
    arg: *mut libc::c_void,
    share: libc::c_int,
    ctid: *mut u32,
) -> isize {
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: libc::CLONE_VM as u64 | share as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: ctid as u64,
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
                in("r13") super::launch::trampoline as extern "C" fn(*mut libc::c_void) -> libc::c_int,
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
