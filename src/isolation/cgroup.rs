//! One cgroup per instance: the tracking that nothing escapes.
//!
//! A process cannot leave its cgroup by forking, double-forking or calling
//! setsid(2), so "the processes of instance X" is exactly the content of X's
//! cgroup (Documentation/admin-guide/cgroup-v2.rst). The child joins before
//! exec ([`crate::process::spawn`]); stop reads `cgroup.procs`; kill writes
//! `cgroup.kill` (Linux 5.14+); "all gone" is `populated 0` in
//! `cgroup.events`, which inotify reports.
//!
//! Mounts are found in /proc/self/mountinfo, never assumed at
//! /sys/fs/cgroup: hybrid hosts mount v2 at /sys/fs/cgroup/unified and keep
//! memory/pids/cpu in v1 hierarchies, which the limits then use.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::model::{CgroupSetting, Limits};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("creating cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cgroup {path} still holds processes {}: a copy of the instance runs outside the supervisor's knowledge; stop it (cohost stop or kill) before starting",
        pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
    )]
    Populated { path: PathBuf, pids: Vec<i32> },
    #[error("removing the old cgroup {path} before a new start: {source}")]
    Renew {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not inside a cgroup v2 mount")]
    NotCgroup2(PathBuf),
    #[error(
        "the {controller} controller (for {setting}) is available neither in cgroup v2 nor in a v1 hierarchy on this node; remove {setting} or enable the controller"
    )]
    NoController { controller: String, setting: String },
}

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    /// The cgroup path shown at the mount point (usually "/").
    pub root: String,
    /// v2: empty; v1: its controllers ("memory", "pids", "cpu", …).
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// Parses /proc/self/mountinfo (proc(5)) for cgroup and cgroup2 mounts.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let point = PathBuf::from(unescape(l[4]));
        let root = unescape(l[3]);
        match r[0] {
            "cgroup2" => out.push(Mount {
                point,
                root,
                controllers: Vec::new(),
                v2: true,
            }),
            "cgroup" => {
                let known = [
                    "memory", "pids", "cpu", "cpuacct", "freezer", "cpuset", "blkio", "devices",
                    "hugetlb",
                ];
                let controllers = r[2]
                    .split(',')
                    .filter(|o| known.contains(o))
                    .map(str::to_string)
                    .collect::<Vec<_>>();
                if !controllers.is_empty() {
                    out.push(Mount {
                        point,
                        root,
                        controllers,
                        v2: false,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// /proc/self/cgroup: "0::/path" for v2, "N:ctrl,ctrl:/path" for v1.
pub fn own_paths(text: &str) -> (Option<String>, Vec<(Vec<String>, String)>) {
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            v2 = Some(path.to_string());
        } else {
            v1.push((
                ctrls.split(',').map(str::to_string).collect(),
                path.to_string(),
            ));
        }
    }
    (v2, v1)
}

/// Turns a runtime dir into a cgroup directory name: "/run/cohost" ->
/// "run-cohost". Two supervisors on one host have two runtime dirs, hence
/// two subtrees.
pub fn tag_for(runtime_dir: &Path) -> String {
    let s: String = runtime_dir
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-').to_string();
    let s = if s.is_empty() || s.starts_with('.') {
        format!("x{s}")
    } else {
        s
    };
    if s.len() <= 120 {
        return s;
    }
    // Long paths: keep the tail (most distinctive) and a hash of the whole.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{}-{h:016x}", &s[s.len() - 100..])
}

/// The parent of every instance cgroup of this supervisor.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    mount: Mount,
    /// Directory of this supervisor's subtree (…/cohost/<tag>).
    pub base: PathBuf,
    /// v1 hierarchies usable for limits: (controllers, our subtree dir).
    v1: Vec<(Vec<String>, PathBuf)>,
    pub has_kill: bool,
}

/// A cgroup of one instance.
#[derive(Debug, Clone)]
pub struct InstanceCgroup {
    pub dir: PathBuf,
    /// The path as /proc/PID/cgroup shows it ("/cohost/run-cohost/demo01").
    pub rel: String,
    /// Per-v1-hierarchy directories for limits.
    pub v1_dirs: Vec<PathBuf>,
    has_kill: bool,
    /// `cgroup.kill` was written here. Such a cgroup is never reused: on
    /// Linux 6.18 a child later created in it with clone3
    /// `CLONE_INTO_CGROUP` is killed at birth (the kill sequence number
    /// recorded at fork is the parent's cgroup's, compared with this
    /// one's in cgroup_post_fork), so the next start gets a new directory.
    pub killed: bool,
}

impl CgroupRoot {
    /// Finds a writable cgroup v2 hierarchy and creates our subtree in it.
    /// `Ok(None)` with a reason when cgroups cannot be used here.
    pub fn discover(setting: &CgroupSetting, tag: &str) -> Result<CgroupRoot, String> {
        if *setting == CgroupSetting::Off {
            return Err("disabled by [supervisor] cgroup = \"off\"".into());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        Self::discover_in(setting, tag, &parse_mountinfo(&mountinfo), &own)
    }

    /// Where a supervisor with this setting and tag keeps its instances'
    /// cgroups (nothing is created). For tools and tests.
    pub fn base_for(setting: &CgroupSetting, tag: &str) -> Result<PathBuf, String> {
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let (own_v2, _) = own_paths(&own);
        let mounts = parse_mountinfo(&mountinfo);
        let mount = mounts.iter().find(|m| m.v2).ok_or("no cgroup2 mount")?;
        Self::base_in(setting, tag, mount, own_v2)
    }

    fn base_in(
        setting: &CgroupSetting,
        tag: &str,
        mount: &Mount,
        own_v2: Option<String>,
    ) -> Result<PathBuf, String> {
        Ok(match setting {
            CgroupSetting::Under(p) => {
                if !p.starts_with(&mount.point) {
                    return Err(format!(
                        "[supervisor] cgroup = {:?} is not inside the cgroup2 mount {}",
                        p,
                        mount.point.display()
                    ));
                }
                p.join(tag)
            }
            _ => {
                let own = own_v2.unwrap_or_else(|| "/".into());
                within(mount, &own).join("cohost").join(tag)
            }
        })
    }

    fn discover_in(
        setting: &CgroupSetting,
        tag: &str,
        mounts: &[Mount],
        own: &str,
    ) -> Result<CgroupRoot, String> {
        let (own_v2, own_v1) = own_paths(own);
        let mount = mounts.iter().find(|m| m.v2).cloned().ok_or_else(|| {
            "no cgroup2 file system is mounted here (see /proc/self/mountinfo)".to_string()
        })?;
        let base = Self::base_in(setting, tag, &mount, own_v2)?;
        std::fs::create_dir_all(&base)
            .map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        // Probe that we may move processes here: cgroup.procs must be writable.
        let procs = base.join("cgroup.procs");
        if let Err(e) = std::fs::OpenOptions::new().write(true).open(&procs) {
            return Err(format!("{} is not writable: {e}", procs.display()));
        }
        let has_kill = base.join("cgroup.kill").exists();
        let mut v1 = Vec::new();
        for m in mounts.iter().filter(|m| !m.v2) {
            let path = own_v1
                .iter()
                .find(|(c, _)| c.iter().any(|x| m.controllers.contains(x)))
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| "/".into());
            v1.push((
                m.controllers.clone(),
                within(m, &path).join("cohost").join(tag),
            ));
        }
        Ok(CgroupRoot {
            mount,
            base,
            v1,
            has_kill,
        })
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount.point
    }

    /// A root at `base` below a cgroup2 mount at `mount`, taken as it is:
    /// nothing is created or checked (the executor's tests, whose fake host
    /// makes and kills its cgroups itself).
    pub fn unchecked(mount: PathBuf, base: PathBuf) -> CgroupRoot {
        CgroupRoot {
            mount: Mount {
                point: mount,
                root: "/".into(),
                controllers: Vec::new(),
                v2: true,
            },
            base,
            v1: Vec::new(),
            has_kill: true,
        }
    }

    /// The cgroup of `id` (not created), with no v1 directories.
    fn instance_v2(&self, id: &str) -> InstanceCgroup {
        let dir = self.base.join(id);
        let rel = rel_path(&self.mount, &dir);
        InstanceCgroup {
            dir,
            rel,
            v1_dirs: Vec::new(),
            has_kill: self.has_kill,
            killed: false,
        }
    }

    /// The cgroup of `id` as it exists now, with the v1 limit directories
    /// it has (an adopted instance's, say).
    pub fn instance(&self, id: &str) -> InstanceCgroup {
        let mut cg = self.instance_v2(id);
        cg.v1_dirs = self
            .v1
            .iter()
            .map(|(_, b)| b.join(id))
            // Only hierarchies we may join: a read-only one (a container's)
            // would fail every start that tried.
            .filter(|d| d.is_dir() && open_procs(d).is_ok())
            .collect();
        cg
    }

    /// Creates the cgroup of `id` and applies `limits` through whichever
    /// hierarchy has the controller.
    ///
    /// An existing cgroup of `id` must be empty (the cgroup is the truth:
    /// processes there are a copy of the instance, whatever any state file
    /// says); it is removed and made anew, so a start never reuses a cgroup
    /// that was killed (see [`InstanceCgroup::killed`]).
    pub fn create(&self, id: &str, limits: &Limits) -> Result<InstanceCgroup, CgroupError> {
        let old = self.instance(id);
        if old.exists() {
            if old.populated() {
                return Err(CgroupError::Populated {
                    path: old.dir.clone(),
                    pids: old.pids(),
                });
            }
            old.try_remove().map_err(|source| CgroupError::Renew {
                path: old.dir.clone(),
                source,
            })?;
        }
        let mut cg = self.instance_v2(id);
        std::fs::create_dir_all(&cg.dir).map_err(|source| CgroupError::Create {
            path: cg.dir.clone(),
            source,
        })?;
        self.add_accounting(&mut cg, id);
        if limits.is_empty() {
            return Ok(cg);
        }
        let v2_ctrls = std::fs::read_to_string(self.mount.point.join("cgroup.controllers"))
            .unwrap_or_default();
        let v2_has = |c: &str| v2_ctrls.split_whitespace().any(|x| x == c);
        let mut wanted: Vec<(&str, &str, String, String)> = Vec::new();
        // (controller, setting, v2 file+value, v1 file+value) per limit.
        if let Some(m) = limits.memory_max {
            wanted.push((
                "memory",
                "memory_max",
                format!("memory.max={m}"),
                format!("memory.limit_in_bytes={m}"),
            ));
        }
        if let Some(p) = limits.pids_max {
            wanted.push((
                "pids",
                "pids_max",
                format!("pids.max={p}"),
                format!("pids.max={p}"),
            ));
        }
        if let Some(w) = limits.cpu_weight {
            // cgroup v1 cpu.shares (2..262144, default 1024) from v2 weight (1..10000, default 100).
            let shares = (w * 1024 / 100).clamp(2, 262_144);
            wanted.push((
                "cpu",
                "cpu_weight",
                format!("cpu.weight={w}"),
                format!("cpu.shares={shares}"),
            ));
        }
        if let Some((q, p)) = limits.cpu_max {
            wanted.push((
                "cpu",
                "cpu_max",
                format!("cpu.max={q} {p}"),
                format!("cpu.cfs_period_us={p};cpu.cfs_quota_us={q}"),
            ));
        }
        for (ctrl, setting, v2, v1) in wanted {
            if v2_has(ctrl) {
                self.enable_v2(ctrl)?;
                write_settings(&cg.dir, &v2)?;
                continue;
            }
            let Some((_, base)) = self.v1.iter().find(|(c, _)| c.iter().any(|x| x == ctrl)) else {
                return Err(CgroupError::NoController {
                    controller: ctrl.into(),
                    setting: setting.into(),
                });
            };
            let dir = base.join(id);
            std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
                path: dir.clone(),
                source,
            })?;
            write_settings(&dir, &v1)?;
            if !cg.v1_dirs.contains(&dir) {
                cg.v1_dirs.push(dir);
            }
        }
        Ok(cg)
    }

    /// Puts the instance where its usage can be read (issue 15): the v2
    /// controllers that exist are turned on for our subtree; for those
    /// that live in a v1 hierarchy, the instance gets a directory there
    /// too, joined before exec like the limit ones. CPU time needs nothing:
    /// v2's cpu.stat exists in every cgroup. Best effort: a figure that
    /// cannot be had is shown as unknown, never a failed start.
    fn add_accounting(&self, cg: &mut InstanceCgroup, id: &str) {
        const ACCOUNTING: [(&str, &str); 3] =
            [("memory", "memory"), ("pids", "pids"), ("io", "blkio")];
        let v2_ctrls = std::fs::read_to_string(self.mount.point.join("cgroup.controllers"))
            .unwrap_or_default();
        for (v2, v1) in ACCOUNTING {
            if v2_ctrls.split_whitespace().any(|x| x == v2) {
                let _ = self.enable_v2(v2);
                continue;
            }
            let Some((_, base)) = self.v1.iter().find(|(c, _)| c.iter().any(|x| x == v1)) else {
                continue;
            };
            let dir = base.join(id);
            // Accounting is best effort: a v1 hierarchy we may not join
            // (read-only in a container, as systemd-nspawn mounts them) is
            // left out rather than failing the start.
            let joinable = std::fs::create_dir_all(&dir).is_ok() && open_procs(&dir).is_ok();
            if joinable && !cg.v1_dirs.contains(&dir) {
                if v1 == "blkio" {
                    count_v1_io(&dir);
                }
                cg.v1_dirs.push(dir);
            }
        }
    }

    /// Turns `ctrl` on in every subtree_control from the mount down to base.
    fn enable_v2(&self, ctrl: &str) -> Result<(), CgroupError> {
        let mut dir = self.mount.point.clone();
        let rel = self
            .base
            .strip_prefix(&self.mount.point)
            .unwrap_or(Path::new(""));
        let mut chain = vec![dir.clone()];
        for c in rel.components() {
            dir.push(c);
            chain.push(dir.clone());
        }
        for d in chain {
            let f = d.join("cgroup.subtree_control");
            let cur = std::fs::read_to_string(&f).unwrap_or_default();
            if cur.split_whitespace().any(|x| x == ctrl) {
                continue;
            }
            std::fs::write(&f, format!("+{ctrl}"))
                .map_err(|source| CgroupError::Write { path: f, source })?;
        }
        Ok(())
    }

    /// Removes the (empty) subtree at daemon exit.
    pub fn remove_base(&self) {
        let _ = std::fs::remove_dir(&self.base);
        if let Some(parent) = self.base.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        for (_, b) in &self.v1 {
            let _ = std::fs::remove_dir(b);
            if let Some(parent) = b.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// v1 blkio counts a group's bytes (blkio.throttle.io_service_bytes) only
/// for devices on which the group has a throttle rule (seen on Linux 6.18:
/// without a rule the file stays at "Total 0" however much is written).
/// A rule of U64_MAX - 1 bytes/s counts without ever delaying a bio
/// (U64_MAX itself means "no rule"). Every block device with a size gets
/// one; best effort, like all accounting.
fn count_v1_io(dir: &Path) {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for dev in rd.flatten() {
        let p = dev.path();
        let size = std::fs::read_to_string(p.join("size")).unwrap_or_default();
        let Ok(majmin) = std::fs::read_to_string(p.join("dev")) else {
            continue;
        };
        if size.trim().parse::<u64>().unwrap_or(0) == 0 {
            continue;
        }
        for f in [
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_bps_device",
        ] {
            let _ = std::fs::write(dir.join(f), format!("{} {}", majmin.trim(), u64::MAX - 1));
        }
    }
}

/// `file=value;file=value` into `dir`.
fn write_settings(dir: &Path, settings: &str) -> Result<(), CgroupError> {
    for kv in settings.split(';') {
        let (file, value) = kv.split_once('=').expect("file=value");
        let path = dir.join(file);
        std::fs::write(&path, value).map_err(|source| CgroupError::Write { path, source })?;
    }
    Ok(())
}

/// The directory of cgroup path `cg` within mount `m`.
fn within(m: &Mount, cg: &str) -> PathBuf {
    let root = m.root.trim_end_matches('/');
    let rel = cg.strip_prefix(root).unwrap_or(cg).trim_start_matches('/');
    if rel.is_empty() {
        m.point.clone()
    } else {
        m.point.join(rel)
    }
}

/// The cgroup path (as in /proc/PID/cgroup) of directory `dir` in mount `m`.
fn rel_path(m: &Mount, dir: &Path) -> String {
    let rel = dir.strip_prefix(&m.point).unwrap_or(dir);
    let root = m.root.trim_end_matches('/');
    format!("{root}/{}", rel.display())
}

impl InstanceCgroup {
    /// The v2 directory, for a child to be created in (clone3
    /// `CLONE_INTO_CGROUP`), and the `cgroup.procs` of the v1 limit groups,
    /// which it joins by writing.
    pub fn join_dir_and_v1_files(&self) -> io::Result<(OwnedFd, Vec<OwnedFd>)> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&self.dir)?;
        let v1 = self
            .v1_dirs
            .iter()
            .map(|d| open_procs(d))
            .collect::<io::Result<_>>()?;
        Ok((OwnedFd::from(dir), v1))
    }

    /// Opens the `cgroup.procs` files a child writes "0" into.
    pub fn join_files(&self) -> io::Result<Vec<OwnedFd>> {
        std::iter::once(&self.dir)
            .chain(self.v1_dirs.iter())
            .map(|d| open_procs(d))
            .collect()
    }

    /// Where [`crate::isolation::usage`] reads this cgroup's figures.
    pub fn usage_dirs(&self) -> crate::isolation::usage::Dirs<'_> {
        crate::isolation::usage::Dirs {
            v2: &self.dir,
            v1: &self.v1_dirs,
        }
    }

    /// Member pids (thread-group leaders) now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// `populated 1` in cgroup.events: some process (or descendant cgroup) lives.
    pub fn populated(&self) -> bool {
        match std::fs::read_to_string(self.dir.join("cgroup.events")) {
            Ok(t) => t.lines().any(|l| l.trim() == "populated 1"),
            // Gone or unreadable: nothing we could still kill through it.
            Err(_) => false,
        }
    }

    pub fn events_file(&self) -> PathBuf {
        self.dir.join("cgroup.events")
    }

    pub fn exists(&self) -> bool {
        self.dir.exists()
    }

    /// SIGKILL to every member, atomically against forks where the kernel
    /// has cgroup.kill; else freeze, kill each, thaw.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.has_kill {
            // Marked before the write: a failed write may still have begun.
            self.killed = true;
            return std::fs::write(self.dir.join("cgroup.kill"), "1");
        }
        let freeze = self.dir.join("cgroup.freeze");
        let frozen = std::fs::write(&freeze, "1").is_ok();
        for pid in self.pids() {
            if let Ok(Some(fd)) = crate::process::pidfd::Pidfd::open_in_cgroup(pid, &self.rel) {
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
        for d in &self.v1_dirs {
            let _ = std::fs::remove_dir(d);
        }
        match std::fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `dir/cgroup.procs`, open for writing.
fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    Ok(OwnedFd::from(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 30 0:28 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
33 30 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
36 24 0:32 / /mnt/with\\040space rw - ext4 /dev/x rw";

    #[test]
    fn finds_hybrid_mounts() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 4, "{m:?}");
        let v2 = m.iter().find(|m| m.v2).unwrap();
        assert_eq!(v2.point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert!(
            m.iter()
                .any(|m| m.controllers == vec!["memory".to_string()])
        );
        assert!(
            !m.iter().any(|m| m.controllers.is_empty() && !m.v2),
            "name=systemd is skipped"
        );
    }

    #[test]
    fn own_paths_split() {
        let (v2, v1) = own_paths("9:pids:/a\n4:cpu,cpuacct:/b\n0::/x/y\n");
        assert_eq!(v2.as_deref(), Some("/x/y"));
        assert_eq!(v1.len(), 2);
        assert_eq!(v1[1].0, vec!["cpu".to_string(), "cpuacct".to_string()]);
    }

    #[test]
    fn paths_within_mounts() {
        let m = Mount {
            point: "/sys/fs/cgroup/unified".into(),
            root: "/".into(),
            controllers: vec![],
            v2: true,
        };
        assert_eq!(within(&m, "/"), PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(
            within(&m, "/a/b"),
            PathBuf::from("/sys/fs/cgroup/unified/a/b")
        );
        assert_eq!(
            rel_path(&m, Path::new("/sys/fs/cgroup/unified/cohost/t/x")),
            "/cohost/t/x"
        );
        let nested = Mount {
            root: "/ns".into(),
            ..m
        };
        assert_eq!(
            within(&nested, "/ns/a"),
            PathBuf::from("/sys/fs/cgroup/unified/a")
        );
        assert_eq!(
            rel_path(&nested, Path::new("/sys/fs/cgroup/unified/a")),
            "/ns/a"
        );
    }

    #[test]
    fn tags() {
        assert_eq!(tag_for(Path::new("/run/cohost")), "run-cohost");
        assert_eq!(tag_for(Path::new("/tmp/a b/run")), "tmp-a-b-run");
        let long = format!("/{}", "x".repeat(300));
        assert!(tag_for(Path::new(&long)).len() <= 120);
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
