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
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::model::Limits;

mod discover;
mod instance;

use discover::rel_path;
pub use discover::{DiscoverError, Mount, own_paths, parse_mountinfo, tag_for};
use instance::open_procs;

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

/// The parent of every instance cgroup of this supervisor.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    mount: Mount,
    /// Directory of this supervisor's subtree (…/cohost/<tag>).
    pub base: PathBuf,
    /// v1 hierarchies usable for limits: (controllers, our subtree dir).
    v1: Vec<(Vec<String>, PathBuf)>,
    pub has_kill: bool,
    /// What every instance's paths are made of, shared by all of them.
    bases: Arc<Bases>,
}

/// The supervisor's part of each instance's cgroup paths. An instance
/// keeps only its name and which v1 hierarchies it joined: its paths,
/// made on use, cost one allocation each; kept, they were ~500 bytes per
/// running instance on a hybrid host (five paths of 60-110 bytes).
#[derive(Debug)]
struct Bases {
    /// Our subtree in the v2 mount.
    v2: PathBuf,
    /// The same as /proc/PID/cgroup shows it ("/cohost/run-cohost").
    rel: String,
    /// Our subtree in each v1 hierarchy, in the order of `CgroupRoot::v1`.
    v1: Vec<PathBuf>,
}

/// A cgroup of one instance.
#[derive(Debug, Clone)]
pub struct InstanceCgroup {
    bases: Arc<Bases>,
    /// The directory's name in each hierarchy (the instance ID).
    name: Box<str>,
    /// Bit i: the instance has a directory in `bases.v1[i]` (for limits or
    /// accounting).
    v1_mask: u32,
    has_kill: bool,
    /// `cgroup.kill` was written here. Such a cgroup is never reused: on
    /// Linux 6.18 a child later created in it with clone3
    /// `CLONE_INTO_CGROUP` is killed at birth (the kill sequence number
    /// recorded at fork is the parent's cgroup's, compared with this
    /// one's in cgroup_post_fork), so the next start gets a new directory.
    pub killed: bool,
    /// Made by [`CgroupRoot::create`] and no run begun in it yet: every
    /// counter is zero, so the run's usage baseline needs no read (reading
    /// `cpu.stat` flushes the kernel's per-CPU statistics: 10-235 us each
    /// with 10,000 cgroups, most of an `up`'s time before this).
    pub fresh: bool,
}

impl CgroupRoot {
    fn new(mount: Mount, base: PathBuf, v1: Vec<(Vec<String>, PathBuf)>, has_kill: bool) -> Self {
        let bases = Arc::new(Bases {
            v2: base.clone(),
            rel: rel_path(&mount, &base),
            v1: v1.iter().map(|(_, b)| b.clone()).collect(),
        });
        CgroupRoot {
            mount,
            base,
            v1,
            has_kill,
            bases,
        }
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount.point
    }

    /// A root at `base` below a cgroup2 mount at `mount`, taken as it is:
    /// nothing is created or checked (the executor's tests, whose fake host
    /// makes and kills its cgroups itself).
    pub fn unchecked(mount: PathBuf, base: PathBuf) -> CgroupRoot {
        let mount = Mount {
            point: mount,
            root: "/".into(),
            controllers: Vec::new(),
            v2: true,
        };
        CgroupRoot::new(mount, base, Vec::new(), true)
    }

    /// Where the v2 cgroup of `id` is (or would be).
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.base.join(id)
    }

    /// The cgroup of `id` (not created), with no v1 directories.
    fn instance_v2(&self, id: &str) -> InstanceCgroup {
        InstanceCgroup {
            bases: self.bases.clone(),
            name: id.into(),
            v1_mask: 0,
            has_kill: self.has_kill,
            killed: false,
            fresh: false,
        }
    }

    /// The cgroup of `id` as it exists now, with the v1 limit directories
    /// it has (an adopted instance's, say).
    pub fn instance(&self, id: &str) -> InstanceCgroup {
        let mut cg = self.instance_v2(id);
        for (i, (_, b)) in self.v1.iter().enumerate().take(32) {
            let d = b.join(id);
            // Only hierarchies we may join: a read-only one (a container's)
            // would fail every start that tried.
            if d.is_dir() && open_procs(&d).is_ok() {
                cg.v1_mask |= 1 << i;
            }
        }
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
                    path: old.dir(),
                    pids: old.pids(),
                });
            }
            old.try_remove().map_err(|source| CgroupError::Renew {
                path: old.dir(),
                source,
            })?;
        }
        let mut cg = self.instance_v2(id);
        cg.fresh = true;
        let dir = cg.dir();
        std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        self.add_accounting(&mut cg, id);
        if limits.is_empty() {
            return Ok(cg);
        }
        let v2_ctrls = std::fs::read_to_string(self.mount.point.join("cgroup.controllers"))
            .unwrap_or_default();
        let v2_has = |c: &str| v2_ctrls.split_whitespace().any(|x| x == c);
        let wanted = wanted_limits(limits);
        for (ctrl, setting, v2, v1) in wanted {
            if v2_has(ctrl) {
                self.enable_v2(ctrl)?;
                write_settings(&dir, &v2)?;
                continue;
            }
            let mut hierarchy = self.v1.iter().enumerate().take(32);
            let Some((i, (_, base))) = hierarchy.find(|(_, (c, _))| c.iter().any(|x| x == ctrl))
            else {
                return Err(CgroupError::NoController {
                    controller: ctrl.into(),
                    setting: setting.into(),
                });
            };
            let dir = base.join(id);
            // One left from before (its removal is best effort) counts on.
            cg.fresh &= !dir.exists();
            std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
                path: dir.clone(),
                source,
            })?;
            write_settings(&dir, &v1)?;
            cg.v1_mask |= 1 << i;
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
            let mut hierarchy = self.v1.iter().enumerate().take(32);
            let Some((i, (_, base))) = hierarchy.find(|(_, (c, _))| c.iter().any(|x| x == v1))
            else {
                continue;
            };
            let dir = base.join(id);
            cg.fresh &= !dir.exists();
            // Accounting is best effort: a v1 hierarchy we may not join
            // (read-only in a container, as systemd-nspawn mounts them) is
            // left out rather than failing the start.
            let joinable = std::fs::create_dir_all(&dir).is_ok() && open_procs(&dir).is_ok();
            if joinable && cg.v1_mask & (1 << i) == 0 {
                if v1 == "blkio" {
                    count_v1_io(&dir);
                }
                cg.v1_mask |= 1 << i;
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

/// (controller, setting, v2 file=value, v1 file=value) for each limit set;
/// `write_settings` takes `;`-separated pairs.
fn wanted_limits(limits: &Limits) -> Vec<(&'static str, &'static str, String, String)> {
    let mut wanted = Vec::new();
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
    wanted
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
