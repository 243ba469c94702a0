//! What of an instance runs on this node when no daemon answers, decided
//! from the kernel's view (its cgroup) and the runtime state, never from
//! the instances file, which may be missing, invalid or not know the ID
//! (guarantee 9: a stop must not fail, and so fence the node, because of
//! the configuration). And stopping what remains without a daemon.
//!
//! The instance's cgroup is `<base>/<ID>`, where the daemon recorded
//! `<base>` in the runtime dir when it started (it depends on the cgroup the
//! daemon ran in and on `[supervisor] cgroup`). With no record (a new or
//! deleted runtime dir) it is where a daemon this command launches would
//! put it. The hierarchy is never searched: another supervisor with the
//! same runtime dir path (a node in a container beside us, sharing the
//! cgroup file system) has cgroups of the same names, and its processes
//! are not ours. cgroupfs lives in memory and answers at once.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::isolation::cgroup::{self, Mount};
use crate::process::pidfd::Pidfd;
use crate::rundir::RuntimeDir;

/// After cgroup.kill: how long the kernel may take to reap.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// What still runs of an instance.
#[derive(Debug, PartialEq, Eq)]
pub enum Remains {
    Nothing,
    /// Populated cgroups of the instance (normally one) and their pids.
    Cgroups {
        dirs: Vec<PathBuf>,
        pids: Vec<i32>,
    },
    /// No cgroup tracking: processes the state file records, verified by
    /// pid and start time.
    Recorded {
        pids: Vec<(i32, u64)>,
    },
}

impl Remains {
    pub fn pids(&self) -> Vec<i32> {
        match self {
            Remains::Nothing => Vec::new(),
            Remains::Cgroups { pids, .. } => pids.clone(),
            Remains::Recorded { pids } => pids.iter().map(|p| p.0).collect(),
        }
    }
}

/// Could `id` name a cgroup of ours at all? (IDs are file names.)
fn plausible_id(id: &str) -> bool {
    !id.is_empty() && !id.contains('/') && id != "." && id != ".." && !id.contains('\0')
}

fn v2_mount() -> Option<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup::parse_mountinfo(&text).into_iter().find(|m| m.v2)
}

/// What of `id` runs on this node, for the runtime dir `rt`.
pub fn remains(rt: &Path, id: &str) -> Remains {
    if !plausible_id(id) {
        return Remains::Nothing;
    }
    if let Some(mount) = v2_mount() {
        let tag = cgroup::tag_for(rt);
        // The daemon's own record of its cgroup base, when there is one:
        // only there. A search of the whole hierarchy would also find the
        // cgroups of another supervisor with the same runtime dir path (a
        // node in a container beside us) and claim its processes.
        // With no record (a new or deleted runtime dir): where a daemon this
        // command would launch keeps them, never a search of the whole
        // hierarchy.
        let candidates = match recorded_base(rt) {
            Some(base) if base.starts_with(&mount.point) => vec![base.join(id)],
            _ => cgroup::CgroupRoot::base_for(&Default::default(), &tag)
                .map(|b| vec![b.join(id)])
                .unwrap_or_default(),
        };
        let dirs: Vec<PathBuf> = candidates.into_iter().filter(|d| populated(d)).collect();
        if !dirs.is_empty() {
            let pids = dirs.iter().flat_map(|d| pids_below(d)).collect();
            return Remains::Cgroups { dirs, pids };
        }
    }
    // Without a cgroup (tracking by session, or the hierarchy not ours):
    // the state file's record, each pid checked against its start time.
    let pids = recorded(rt, id);
    if pids.is_empty() {
        Remains::Nothing
    } else {
        Remains::Recorded { pids }
    }
}

/// The cgroup base the last daemon of `rt` recorded (see
/// `supervisor::CGROUP_RECORD`), read through the checked runtime dir.
fn recorded_base(rt: &Path) -> Option<PathBuf> {
    let dir = RuntimeDir::open_existing(rt).ok()??;
    let text = dir.read(crate::supervisor::CGROUP_RECORD).ok()?;
    let line = String::from_utf8(text).ok()?;
    let p = PathBuf::from(line.trim());
    p.is_absolute().then_some(p)
}

fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "populated 1"))
}

/// Member pids of a cgroup and of every cgroup below it.
fn pids_below(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(pids_below(&e.path()));
            }
        }
    }
    out
}

/// Live processes the state file of `id` records (pid and start time).
fn recorded(rt: &Path, id: &str) -> Vec<(i32, u64)> {
    let Ok(Some(dir)) = RuntimeDir::open_existing(rt) else {
        return Vec::new();
    };
    let Some(v) = dir
        .subdir_existing("state")
        .ok()
        .and_then(|s| s.read(&format!("{id}.json")).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return Vec::new();
    };
    let mut pids: Vec<(i32, u64)> = Vec::new();
    for p in v["procs"].as_array().into_iter().flatten() {
        if let (Some(pid), Some(t)) = (p["pid"].as_i64(), p["start_time"].as_u64()) {
            pids.push((pid as i32, t));
        }
    }
    for m in v["members"].as_array().into_iter().flatten() {
        if let (Some(pid), Some(t)) = (m[0].as_i64(), m[1].as_u64()) {
            pids.push((pid as i32, t));
        }
    }
    pids.sort();
    pids.dedup();
    pids.retain(|(p, t)| crate::process::procfs::start_time(*p) == Some(*t));
    pids
}

/// The cgroup path as /proc/PID/cgroup shows it, for membership checks.
fn rel_of(dir: &Path, mount: &Mount) -> String {
    let below = dir.strip_prefix(&mount.point).unwrap_or(dir);
    let root = mount.root.trim_end_matches('/');
    format!("{root}/{}", below.display())
}

/// Opens a pidfd for every remaining process that is still verifiably
/// the instance's (a member of its cgroup, or the recorded start time):
/// a pid reused meanwhile is never signalled (guarantee 1).
fn verified(rem: &Remains) -> Vec<Pidfd> {
    match rem {
        Remains::Nothing => Vec::new(),
        Remains::Cgroups { dirs, .. } => {
            let Some(mount) = v2_mount() else {
                return Vec::new();
            };
            let mut fds = Vec::new();
            for d in dirs {
                for (sub, pid) in members_with_dirs(d) {
                    let rel = rel_of(&sub, &mount);
                    if let Ok(Some(fd)) = Pidfd::open_in_cgroup(pid, &rel) {
                        fds.push(fd);
                    }
                }
            }
            fds
        }
        Remains::Recorded { pids } => pids
            .iter()
            .filter_map(|(p, t)| Pidfd::open_verified(*p, *t).ok().flatten())
            .collect(),
    }
}

fn members_with_dirs(dir: &Path) -> Vec<(PathBuf, i32)> {
    let mut out: Vec<(PathBuf, i32)> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .map(|p| (dir.to_path_buf(), p))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(members_with_dirs(&e.path()));
            }
        }
    }
    out
}

/// Stops what remains without a daemon: SIGTERM (and SIGCONT, for a
/// process that stopped itself) to each verified process, up to `grace`
/// for them to go, then SIGKILL (`cgroup.kill` where there is a cgroup).
/// `Err` names the pids still there after the kill grace (uninterruptible
/// sleep, typically on hung storage).
pub fn stop(rem: &Remains, grace: Duration) -> Result<(), Vec<i32>> {
    if *rem == Remains::Nothing {
        return Ok(());
    }
    let fds = verified(rem);
    if !grace.is_zero() {
        for fd in &fds {
            let _ = fd.signal(libc::SIGTERM);
            let _ = fd.signal(libc::SIGCONT);
        }
        if wait_gone(&fds, grace) && cgroups_empty(rem) {
            return Ok(());
        }
    }
    if let Remains::Cgroups { dirs, .. } = rem {
        for d in dirs {
            // cgroup.kill: atomic against forks (cgroups(7)); where the
            // kernel lacks it, the verified pidfds below still reach each.
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
        }
    }
    for fd in verified(rem).iter().chain(&fds) {
        let _ = fd.signal(libc::SIGKILL);
    }
    let fds = verified(rem);
    if wait_gone(&fds, KILL_GRACE) && cgroups_empty(rem) {
        return Ok(());
    }
    let mut left: Vec<i32> = fds
        .iter()
        .filter(|f| !f.exited())
        .map(|f| f.pid())
        .collect();
    if let Remains::Cgroups { dirs, .. } = rem {
        left.extend(dirs.iter().flat_map(|d| pids_below(d)));
    }
    left.sort();
    left.dedup();
    if left.is_empty() { Ok(()) } else { Err(left) }
}

fn cgroups_empty(rem: &Remains) -> bool {
    match rem {
        Remains::Cgroups { dirs, .. } => dirs.iter().all(|d| !populated(d)),
        _ => true,
    }
}

/// Waits until every pidfd is readable (its process exited: pidfd_open(2))
/// or `limit` passes: one poll(2) over all of them, no sleeping.
fn wait_gone(fds: &[Pidfd], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let open: Vec<&Pidfd> = fds.iter().filter(|f| !f.exited()).collect();
        if open.is_empty() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut polls: Vec<nix::poll::PollFd> = open
            .iter()
            .map(|f| nix::poll::PollFd::new(f.as_fd(), nix::poll::PollFlags::POLLIN))
            .collect();
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let timeout = nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX);
        if nix::poll::poll(&mut polls, timeout).is_err() {
            return false;
        }
    }
}

pub fn join_pids(p: &[i32]) -> String {
    p.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_cannot_be_cgroups_have_nothing() {
        for id in ["", "a/b", "..", "."] {
            assert_eq!(remains(Path::new("/run/x"), id), Remains::Nothing);
        }
    }
}
