//! Finding the hierarchy: the mounts in /proc/self/mountinfo (v2 and the
//! v1 ones of a hybrid host), the supervisor's own cgroup in
//! /proc/self/cgroup, and from them the base of this supervisor's subtree.

use std::io;
use std::path::{Path, PathBuf};

use super::CgroupRoot;
use crate::model::CgroupSetting;

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
pub(super) fn unescape(s: &str) -> String {
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

/// Why this supervisor cannot track its instances with cgroups (it then
/// tracks them by process group and session): one variant per step of
/// [`CgroupRoot::discover`].
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("disabled by [supervisor] cgroup = \"off\"")]
    Off,
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup2 file system is mounted here (see /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("[supervisor] cgroup = {setting:?} is not inside the cgroup2 mount {}", mount.display())]
    NotInMount { setting: PathBuf, mount: PathBuf },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not writable: {source}", path.display())]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// /proc/self/mountinfo and /proc/self/cgroup.
fn read_proc() -> Result<(String, String), DiscoverError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| DiscoverError::Read { path, source })
    };
    Ok((read("/proc/self/mountinfo")?, read("/proc/self/cgroup")?))
}

impl CgroupRoot {
    /// Finds a writable cgroup v2 hierarchy and creates our subtree in it;
    /// the reason when cgroups cannot be used here.
    pub fn discover(setting: &CgroupSetting, tag: &str) -> Result<CgroupRoot, DiscoverError> {
        if *setting == CgroupSetting::Off {
            return Err(DiscoverError::Off);
        }
        let (mountinfo, own) = read_proc()?;
        Self::discover_in(setting, tag, &parse_mountinfo(&mountinfo), &own)
    }

    /// Where a supervisor with this setting and tag keeps its instances'
    /// cgroups (nothing is created). For tools and tests.
    pub fn base_for(setting: &CgroupSetting, tag: &str) -> Result<PathBuf, DiscoverError> {
        let (mountinfo, own) = read_proc()?;
        let (own_v2, _) = own_paths(&own);
        let mounts = parse_mountinfo(&mountinfo);
        let mount = mounts
            .iter()
            .find(|m| m.v2)
            .ok_or(DiscoverError::NoCgroup2)?;
        Self::base_in(setting, tag, mount, own_v2)
    }

    fn base_in(
        setting: &CgroupSetting,
        tag: &str,
        mount: &Mount,
        own_v2: Option<String>,
    ) -> Result<PathBuf, DiscoverError> {
        Ok(match setting {
            CgroupSetting::Under(p) => {
                if !p.starts_with(&mount.point) {
                    return Err(DiscoverError::NotInMount {
                        setting: p.clone(),
                        mount: mount.point.clone(),
                    });
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
    ) -> Result<CgroupRoot, DiscoverError> {
        let (own_v2, own_v1) = own_paths(own);
        let mount = mounts
            .iter()
            .find(|m| m.v2)
            .cloned()
            .ok_or(DiscoverError::NoCgroup2)?;
        let base = Self::base_in(setting, tag, &mount, own_v2)?;
        std::fs::create_dir_all(&base).map_err(|source| DiscoverError::Create {
            path: base.clone(),
            source,
        })?;
        // Probe that we may move processes here: cgroup.procs must be writable.
        let procs = base.join("cgroup.procs");
        if let Err(source) = std::fs::OpenOptions::new().write(true).open(&procs) {
            return Err(DiscoverError::NotWritable {
                path: procs,
                source,
            });
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
        Ok(CgroupRoot::new(mount, base, v1, has_kill))
    }
}

/// The directory of cgroup path `cg` within mount `m`.
pub(super) fn within(m: &Mount, cg: &str) -> PathBuf {
    let root = m.root.trim_end_matches('/');
    let rel = cg.strip_prefix(root).unwrap_or(cg).trim_start_matches('/');
    if rel.is_empty() {
        m.point.clone()
    } else {
        m.point.join(rel)
    }
}

/// The cgroup path (as in /proc/PID/cgroup) of directory `dir` in mount `m`.
pub(super) fn rel_path(m: &Mount, dir: &Path) -> String {
    let rel = dir.strip_prefix(&m.point).unwrap_or(dir);
    let root = m.root.trim_end_matches('/');
    format!("{root}/{}", rel.display())
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

    #[test]
    fn the_base_is_under_our_own_cgroup_or_the_configured_parent() {
        let m = Mount {
            point: "/sys/fs/cgroup".into(),
            root: "/".into(),
            controllers: vec![],
            v2: true,
        };
        let own = Some("/system.slice/x.service".to_string());
        assert_eq!(
            CgroupRoot::base_in(&CgroupSetting::Auto, "t", &m, own).unwrap(),
            PathBuf::from("/sys/fs/cgroup/system.slice/x.service/cohost/t")
        );
        let under = CgroupSetting::Under("/sys/fs/cgroup/ha".into());
        assert_eq!(
            CgroupRoot::base_in(&under, "t", &m, None).unwrap(),
            PathBuf::from("/sys/fs/cgroup/ha/t")
        );
        let outside = CgroupSetting::Under("/tmp/x".into());
        let e = CgroupRoot::base_in(&outside, "t", &m, None).unwrap_err();
        assert!(matches!(e, DiscoverError::NotInMount { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "[supervisor] cgroup = \"/tmp/x\" is not inside the cgroup2 mount /sys/fs/cgroup"
        );
        assert!(matches!(
            CgroupRoot::discover(&CgroupSetting::Off, "t"),
            Err(DiscoverError::Off)
        ));
    }

    #[test]
    fn an_instance_s_paths_made_on_use_are_those_the_old_fields_kept() {
        let m = Mount {
            point: "/sys/fs/cgroup/unified".into(),
            root: "/ns".into(),
            controllers: vec![],
            v2: true,
        };
        let v1 = |c: &str| {
            (
                vec![c.to_string()],
                PathBuf::from(format!("/v1/{c}/cohost/t")),
            )
        };
        let hierarchies = vec![v1("memory"), v1("pids"), v1("blkio")];
        for base in ["/sys/fs/cgroup/unified/cohost/t", "/sys/fs/cgroup/unified"] {
            let root = CgroupRoot::new(m.clone(), base.into(), hierarchies.clone(), true);
            let mut cg = root.instance_v2("db1");
            cg.v1_mask = 0b101;
            let dir = Path::new(base).join("db1");
            assert_eq!(cg.dir(), dir);
            assert_eq!(root.dir_of("db1"), dir);
            assert_eq!(cg.rel(), rel_path(&m, &dir), "base {base}");
            let want: Vec<PathBuf> = ["/v1/memory/cohost/t/db1", "/v1/blkio/cohost/t/db1"]
                .map(PathBuf::from)
                .into();
            assert_eq!(cg.v1_dirs(), want);
            assert_eq!(cg.name(), "db1");
        }
    }
}
