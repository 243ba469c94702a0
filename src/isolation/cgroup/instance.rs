//! One instance's cgroup once it exists: what a child joins before exec,
//! its processes and `populated` flag, `cgroup.kill`, removal.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::InstanceCgroup;

impl InstanceCgroup {
    /// The v2 directory.
    pub fn dir(&self) -> PathBuf {
        self.bases.v2.join(&*self.name)
    }

    /// [`Self::dir`] as the directory it is in and its name (a status
    /// writes it without building it).
    pub fn dir_parts(&self) -> (&Path, &str) {
        (&self.bases.v2, &self.name)
    }

    /// The path as /proc/PID/cgroup shows it ("/cohost/run-cohost/demo01").
    pub fn rel(&self) -> String {
        let base = self.bases.rel.trim_end_matches('/');
        format!("{base}/{}", self.name)
    }

    /// The directories in v1 hierarchies (for limits and accounting).
    pub fn v1_dirs(&self) -> Vec<PathBuf> {
        let mask = self.v1_mask;
        let has = |i: &usize| *i < 32 && mask & (1 << i) != 0;
        let dirs = self.bases.v1.iter().enumerate().filter(|(i, _)| has(i));
        dirs.map(|(_, b)| b.join(&*self.name)).collect()
    }

    /// The directory's name (the instance ID).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The v2 directory, for a child to be created in (clone3
    /// `CLONE_INTO_CGROUP`), and the `cgroup.procs` of the v1 limit groups,
    /// which it joins by writing.
    pub fn join_dir_and_v1_files(&self) -> io::Result<(OwnedFd, Vec<OwnedFd>)> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(self.dir())?;
        let v1 = self
            .v1_dirs()
            .iter()
            .map(|d| open_procs(d))
            .collect::<io::Result<_>>()?;
        Ok((OwnedFd::from(dir), v1))
    }

    /// Opens the `cgroup.procs` files a child writes "0" into.
    pub fn join_files(&self) -> io::Result<Vec<OwnedFd>> {
        std::iter::once(self.dir())
            .chain(self.v1_dirs())
            .map(|d| open_procs(&d))
            .collect()
    }

    /// Member pids (thread-group leaders) now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir().join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// `populated 1` in cgroup.events: some process (or descendant cgroup) lives.
    pub fn populated(&self) -> bool {
        match std::fs::read_to_string(self.dir().join("cgroup.events")) {
            Ok(t) => t.lines().any(|l| l.trim() == "populated 1"),
            // Gone or unreadable: nothing we could still kill through it.
            Err(_) => false,
        }
    }

    pub fn events_file(&self) -> PathBuf {
        self.dir().join("cgroup.events")
    }

    pub fn exists(&self) -> bool {
        self.dir().exists()
    }

    /// SIGKILL to every member, atomically against forks where the kernel
    /// has cgroup.kill; else freeze, kill each, thaw.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.has_kill {
            // Marked before the write: a failed write may still have begun.
            self.killed = true;
            return std::fs::write(self.dir().join("cgroup.kill"), "1");
        }
        let freeze = self.dir().join("cgroup.freeze");
        let frozen = std::fs::write(&freeze, "1").is_ok();
        let rel = self.rel();
        for pid in self.pids() {
            if let Ok(Some(fd)) = crate::process::pidfd::Pidfd::open_in_cgroup(pid, &rel) {
                let _ = fd.signal(libc::SIGKILL);
            }
        }
        if frozen {
            let _ = std::fs::write(&freeze, "0");
        }
        Ok(())
    }

    /// Removes the (empty) cgroup directories.
    pub fn remove(&self) {
        let _ = self.try_remove();
    }

    /// Removes the (empty) cgroup directories; the v2 one's error is
    /// returned (EBUSY while a member lives). A missing one is removed.
    pub fn try_remove(&self) -> io::Result<()> {
        for d in self.v1_dirs() {
            let _ = std::fs::remove_dir(d);
        }
        match std::fs::remove_dir(self.dir()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `dir/cgroup.procs`, open for writing.
pub(super) fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    Ok(OwnedFd::from(f))
}
