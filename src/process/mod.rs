//! Processes: spawning with a clean state, identity (/proc), pidfds, and
//! tracking without cgroups.

pub mod pidfd;
pub mod procfs;
pub mod rawsys;
pub mod spawn;
mod stack;
pub mod track;

/// Whether our child `pid` has exited and waits to be reaped; it stays
/// unreaped (waitid(2) with `WNOWAIT`), so the reaper still sees it.
pub fn has_exited_child(pid: i32) -> bool {
    // SAFETY: zeroed siginfo_t is valid; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on one pid with a valid siginfo pointer.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is set by waitid when a child was found; 0 otherwise.
    r == 0 && unsafe { info.si_pid() } == pid
}
