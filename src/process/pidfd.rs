//! pidfds: a file descriptor that names one process for its whole life, so
//! a signal sent through it can never reach a process that reused the pid.
//! pidfd_open(2), pidfd_send_signal(2); Linux 5.3+.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::process::procfs;

#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: i32,
}

impl Pidfd {
    /// Opens a pidfd for `pid`. The caller must then check that it is the
    /// process it meant ([`Pidfd::open_verified`]): between reading a pid
    /// and opening it, the process may have died and the pid been reused.
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        // SAFETY: plain syscall; the returned fd (close-on-exec) is owned here.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pidfd {
            // SAFETY: fd is a fresh descriptor from the kernel.
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            pid,
        })
    }

    /// Opens `pid` only if it is still the process that started at
    /// `start_time`. The start time is read *after* the pidfd is open: if it
    /// still matches, the pidfd holds that very process (a reused pid would
    /// have a later start time), so later signals are safe.
    pub fn open_verified(pid: i32, start_time: u64) -> io::Result<Option<Pidfd>> {
        Pidfd::open_if(pid, |p| procfs::start_time(p) == Some(start_time))
    }

    /// Opens `pid` only if it is (still) in the cgroup at `cgroup` (a v2
    /// path like "/cohost/x/demo01"). Membership is checked after opening,
    /// so the pidfd names a member: ownership is membership.
    pub fn open_in_cgroup(pid: i32, cgroup: &str) -> io::Result<Option<Pidfd>> {
        Pidfd::open_if(pid, |p| {
            procfs::cgroup_v2_path(p).as_deref() == Some(cgroup)
        })
    }

    /// Opens `pid`, then keeps the pidfd only if `still_ours` holds: checked
    /// after opening, so a pid reused in between fails the check instead
    /// of being signalled. `None` also when the process is gone.
    fn open_if(pid: i32, still_ours: impl FnOnce(i32) -> bool) -> io::Result<Option<Pidfd>> {
        let fd = match Pidfd::open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(still_ours(pid).then_some(fd))
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig`; `Ok(false)` if the process has already exited.
    pub fn signal(&self, sig: i32) -> io::Result<bool> {
        // SAFETY: plain syscall on an fd we own; null siginfo = like kill(2).
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(false)
        } else {
            Err(e)
        }
    }

    /// Has the process exited? (A pidfd polls readable on exit.)
    pub fn exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r > 0 && p.revents & libc::POLLIN != 0
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_open_refuses_wrong_start_time() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let st = procfs::start_time(pid).unwrap();
        assert!(Pidfd::open_verified(pid, st + 1).unwrap().is_none());
        let fd = Pidfd::open_verified(pid, st).unwrap().unwrap();
        assert!(!fd.exited());
        assert!(fd.signal(libc::SIGKILL).unwrap());
        child.wait().unwrap();
        assert!(fd.exited());
        assert!(
            !fd.signal(libc::SIGKILL).unwrap(),
            "signal to a reaped process reports gone"
        );
    }
}
