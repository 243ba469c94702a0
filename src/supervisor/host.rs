//! The operating system as the executor sees it (the Syscall trait of
//! youki): every effect of a table action on processes and addresses, the
//! work a start does on the instance's storage, and the clock the table's
//! deadlines run on, go through [`Host`]. [`LinuxHost`] makes the real
//! calls; the unit tests of the executor (`executor_tests/`) run the daemon
//! against a recording fake instead (`executor_tests/fake.rs`), without
//! root: a service that ignores SIGTERM, one that crashes, a shared disk
//! that never answers, a timeout an hour away.
//!
//! What stays outside: the event loop's own descriptors (epoll, signalfd,
//! sockets), the cgroup.events watches (inotify), and adoption, which
//! verifies what it finds through real pidfds and /proc (tested for real
//! in `tests/`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use super::prepare::{self, PrepareError, Prepared, Request};
use super::worker::Progress;
use crate::isolation::address::{self, AddrError};
use crate::isolation::cgroup::{CgroupError, CgroupRoot, InstanceCgroup};
use crate::model::Limits;
use crate::process::pidfd::Pidfd;
use crate::process::spawn::{Child, ExecPlan, SpawnError};
use crate::process::{procfs, track};

/// How a process that is not our child is known to be the instance's.
#[derive(Debug, Clone, Copy)]
pub enum Member<'a> {
    /// It is in this cgroup (relative path in the hierarchy).
    InCgroup(&'a str),
    /// It has this start time (clock ticks after boot), seen when found.
    Started(u64),
}

/// A start's storage work, run on a worker thread (it may block).
pub type PrepareFn =
    Arc<dyn Fn(Request, &Progress) -> Result<Prepared, PrepareError> + Send + Sync>;

pub trait Host {
    /// The clock the table's deadlines are on (stop and start timeouts,
    /// restart delays, probe intervals). What is measured for the operator
    /// (a start's timing, a query's cost) is on the real clock.
    fn now(&self) -> Instant {
        Instant::now()
    }
    /// Makes the child of a finished plan (not waiting for its exec).
    fn spawn(&mut self, plan: ExecPlan) -> Result<Child, SpawnError>;
    /// One exited child, if any (never blocks).
    fn reap_one(&mut self) -> Option<WaitStatus>;
    /// A signal to our own unreaped child (or, with a negative pid, to the
    /// process group it leads): its pid cannot have been reused.
    fn signal_child(&mut self, pid: i32, sig: i32) -> bool;
    /// A signal to a process that is not our child, only if it is still
    /// the member it was (PID reuse safe: through a verified pidfd).
    fn signal_member(&mut self, pid: i32, member: Member<'_>, sig: i32) -> bool;
    /// Without cgroups: the live processes of the sessions of `seeds`
    /// (pid, start time), with their start times.
    fn session_members(&self, seeds: &[(i32, u64)]) -> Vec<(i32, u64)>;
    /// A process's start time, if it lives.
    fn start_time(&self, pid: i32) -> Option<u64>;
    fn add_address(&mut self, addr: IpAddr, prefix: u8, interface: &str) -> Result<(), AddrError>;
    fn remove_address(
        &mut self,
        addr: IpAddr,
        prefix: u8,
        interface: &str,
    ) -> Result<(), AddrError>;
    fn is_local(&self, addr: IpAddr) -> std::io::Result<bool>;
    /// A gratuitous ARP; false where there is nothing to announce (IPv6).
    fn announce(&mut self, addr: IpAddr, interface: &str) -> std::io::Result<bool>;
    /// What a start does on the instance's storage (a worker runs it).
    fn preparer(&self) -> PrepareFn;

    /// The instance's cgroup, new (an old one of that name that is empty
    /// is removed first), with its limits.
    fn cgroup_create(
        &mut self,
        root: &CgroupRoot,
        id: &str,
        limits: &Limits,
    ) -> Result<InstanceCgroup, CgroupError>;
    /// The processes in it now.
    fn cgroup_pids(&self, cg: &InstanceCgroup) -> Vec<i32>;
    /// Whether anything is in it (`cgroup.events`: populated).
    fn cgroup_populated(&self, cg: &InstanceCgroup) -> bool;
    /// SIGKILL to everything in it (`cgroup.kill`); it is never reused.
    fn cgroup_kill(&mut self, cg: &mut InstanceCgroup) -> std::io::Result<()>;
    /// Removes it (empty).
    fn cgroup_remove(&mut self, cg: &InstanceCgroup);
    /// What a child needs to be born in it (the v2 directory) and to join
    /// the v1 hierarchies that carry its limits.
    fn cgroup_join_files(
        &self,
        cg: &InstanceCgroup,
    ) -> std::io::Result<(std::os::fd::OwnedFd, Vec<std::os::fd::OwnedFd>)>;
}

/// The real system.
pub struct LinuxHost {
    prepare: PrepareFn,
}

impl Default for LinuxHost {
    fn default() -> Self {
        LinuxHost {
            prepare: Arc::new(prepare::prepare),
        }
    }
}

impl Host for LinuxHost {
    fn spawn(&mut self, plan: ExecPlan) -> Result<Child, SpawnError> {
        plan.spawn()
    }

    fn reap_one(&mut self) -> Option<WaitStatus> {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => None,
            Ok(ws) => Some(ws),
        }
    }

    fn signal_child(&mut self, pid: i32, sig: i32) -> bool {
        // SAFETY: kill(2) to our unreaped child (or the group it leads).
        unsafe { libc::kill(pid, sig) == 0 }
    }

    fn signal_member(&mut self, pid: i32, member: Member<'_>, sig: i32) -> bool {
        let fd = match member {
            Member::InCgroup(rel) => Pidfd::open_in_cgroup(pid, rel),
            Member::Started(t) => Pidfd::open_verified(pid, t),
        };
        match fd {
            Ok(Some(fd)) => fd.signal(sig).unwrap_or(false),
            _ => false,
        }
    }

    fn session_members(&self, seeds: &[(i32, u64)]) -> Vec<(i32, u64)> {
        track::session_members(seeds)
    }

    fn start_time(&self, pid: i32) -> Option<u64> {
        procfs::start_time(pid)
    }

    fn add_address(&mut self, addr: IpAddr, prefix: u8, interface: &str) -> Result<(), AddrError> {
        address::add(addr, prefix, interface)
    }

    fn remove_address(
        &mut self,
        addr: IpAddr,
        prefix: u8,
        interface: &str,
    ) -> Result<(), AddrError> {
        address::remove(addr, prefix, interface)
    }

    fn is_local(&self, addr: IpAddr) -> std::io::Result<bool> {
        address::is_local(addr)
    }

    fn announce(&mut self, addr: IpAddr, interface: &str) -> std::io::Result<bool> {
        address::announce(addr, interface)
    }

    fn preparer(&self) -> PrepareFn {
        self.prepare.clone()
    }

    fn cgroup_create(
        &mut self,
        root: &CgroupRoot,
        id: &str,
        limits: &Limits,
    ) -> Result<InstanceCgroup, CgroupError> {
        root.create(id, limits)
    }

    fn cgroup_pids(&self, cg: &InstanceCgroup) -> Vec<i32> {
        cg.pids()
    }

    fn cgroup_populated(&self, cg: &InstanceCgroup) -> bool {
        cg.populated()
    }

    fn cgroup_kill(&mut self, cg: &mut InstanceCgroup) -> std::io::Result<()> {
        cg.kill()
    }

    fn cgroup_remove(&mut self, cg: &InstanceCgroup) {
        cg.remove()
    }

    fn cgroup_join_files(
        &self,
        cg: &InstanceCgroup,
    ) -> std::io::Result<(std::os::fd::OwnedFd, Vec<std::os::fd::OwnedFd>)> {
        cg.join_dir_and_v1_files()
    }
}
