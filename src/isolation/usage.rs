//! What an instance uses, read from its cgroup when someone asks (status,
//! list, top, metrics): never on a timer, so an idle daemon stays asleep.
//!
//! Each figure comes from cgroup v2 where the controller is enabled for
//! the instance's cgroup, else from the v1 hierarchy that has it (hybrid
//! hosts: memory, pids and blkio in v1). Which hierarchy answers is told
//! by which file exists, so the reader needs no knowledge of the mounts:
//! [`super::cgroup::CgroupRoot::create`] put the instance in the v1
//! hierarchies it needs. Files and units:
//! Documentation/admin-guide/cgroup-v2.rst ("memory.current",
//! "memory.peak", "cpu.stat", "io.stat", "pids.current") and
//! Documentation/admin-guide/cgroup-v1/{memory,cpuacct,blkio-controller}.rst.
//! cgroupfs is local kernel state: reading it never waits on storage.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

pub use crate::control::observe::Usage;

/// Counters at the start of a run: a reused cgroup (see
/// `Inst::spare_cgroup`) keeps counting from the runs before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Baseline {
    pub cpu_usec: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// The directories of one instance's cgroup: the v2 one, then v1 ones.
#[derive(Debug, Clone)]
pub struct Dirs<'a> {
    pub v2: &'a Path,
    pub v1: &'a [PathBuf],
}

impl Dirs<'_> {
    /// Opens the directories once: each file is then one name looked up
    /// in its directory, not a whole path walked (a read of 10,000
    /// instances' figures: 592-640 ms CPU before, 536-570 after; the rest
    /// is kernfs's own cost per file).
    fn open(&self) -> Open {
        let dir = |d: &Path| std::fs::File::open(d).ok().map(OwnedFd::from);
        Open {
            v2: dir(self.v2),
            v1: self.v1.iter().filter_map(|d| dir(d)).collect(),
        }
    }

    /// Reads every figure now, less `base` for the counters.
    pub fn usage(&self, base: &Baseline) -> Usage {
        let o = self.open();
        let cpu = o.cpu_usec();
        let io = o.io();
        Usage {
            memory_bytes: num(o.read(c"memory.current", c"memory.usage_in_bytes")),
            memory_peak_bytes: num(o.read(c"memory.peak", c"memory.max_usage_in_bytes")),
            cpu_usec: cpu.map(|c| c.saturating_sub(base.cpu_usec)),
            io_read_bytes: io.map(|(r, _)| r.saturating_sub(base.io_read_bytes)),
            io_write_bytes: io.map(|(_, w)| w.saturating_sub(base.io_write_bytes)),
            pids: num(o.read(c"pids.current", c"pids.current")),
        }
    }

    /// The counters now, for the next run's [`Baseline`]; the v1 memory
    /// peak is reset (writing 0 to memory.max_usage_in_bytes), so the
    /// peak shown is this run's. (v2's memory.peak resets only per open
    /// file: there it is the cgroup's, since it was made.)
    pub fn begin_run(&self) -> Baseline {
        for d in self.v1 {
            let f = d.join("memory.max_usage_in_bytes");
            if f.exists() {
                let _ = std::fs::write(f, "0");
            }
        }
        let o = self.open();
        let (io_read_bytes, io_write_bytes) = o.io().unwrap_or((0, 0));
        Baseline {
            cpu_usec: o.cpu_usec().unwrap_or(0),
            io_read_bytes,
            io_write_bytes,
        }
    }
}

/// An instance's cgroup directories, open (those that exist).
struct Open {
    v2: Option<OwnedFd>,
    v1: Vec<OwnedFd>,
}

/// `name` in the directory `dir`, read.
fn read_at(dir: &OwnedFd, name: &CStr) -> Option<String> {
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let fd = nix::fcntl::openat(dir, name, flags, Mode::empty()).ok()?;
    std::io::read_to_string(std::fs::File::from(fd)).ok()
}

impl Open {
    /// The first of the instance's directories holding the file, read.
    fn read(&self, v2_file: &CStr, v1_file: &CStr) -> Option<String> {
        self.read_v2(v2_file).or_else(|| self.read_v1(v1_file))
    }

    fn read_v2(&self, file: &CStr) -> Option<String> {
        read_at(self.v2.as_ref()?, file)
    }

    fn read_v1(&self, file: &CStr) -> Option<String> {
        self.v1.iter().find_map(|d| read_at(d, file))
    }

    /// CPU time used, in microseconds.
    fn cpu_usec(&self) -> Option<u64> {
        self.read_v2(c"cpu.stat")
            .and_then(|t| flat_key(&t, "usage_usec"))
            .or_else(|| num(self.read_v1(c"cpuacct.usage")).map(|ns| ns / 1000))
    }

    /// Bytes read and written.
    fn io(&self) -> Option<(u64, u64)> {
        self.read_v2(c"io.stat")
            .map(|t| io_stat_v2(&t))
            .or_else(|| {
                self.read_v1(c"blkio.throttle.io_service_bytes_recursive")
                    .map(|t| blkio_v1(&t))
            })
    }
}

/// Flushes the kernel's statistics of every cgroup below `base` in one
/// read of its `cpu.stat` (and `io.stat`). The kernel keeps the cgroups
/// with new figures on a singly linked list per parent, and a read of one
/// child's `cpu.stat` first unlinks that child, walking the list: with
/// 10,000 instances that had all run, 311 us per child (3 s for a list or
/// an `up`), against 13 ms for the parent's once and then 15 us per child
/// (Linux 6.18, `css_rstat_updated_list`). Best effort.
pub fn flush_subtree(base: &Path) {
    for f in ["cpu.stat", "io.stat"] {
        let _ = std::fs::read(base.join(f));
    }
}

/// A file holding one number.
fn num(t: Option<String>) -> Option<u64> {
    t.and_then(|t| t.trim().parse::<u64>().ok())
}

/// `key value` lines (cpu.stat).
fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N …` per device, summed.
fn io_stat_v2(text: &str) -> (u64, u64) {
    let mut r = 0u64;
    let mut w = 0u64;
    for kv in text.split_whitespace() {
        if let Some(v) = kv.strip_prefix("rbytes=") {
            r = r.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = kv.strip_prefix("wbytes=") {
            w = w.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (r, w)
}

/// blkio.throttle.io_service_bytes_recursive: `MAJ:MIN Read N` and
/// `MAJ:MIN Write N` per device (and `Total N`), summed over devices.
fn blkio_v1(text: &str) -> (u64, u64) {
    let mut r = 0u64;
    let mut w = 0u64;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [_, op, n] = f[..] {
            let n: u64 = n.parse().unwrap_or(0);
            match op {
                "Read" => r = r.saturating_add(n),
                "Write" => w = w.saturating_add(n),
                _ => {}
            }
        }
    }
    (r, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn v2_files_win_and_v1_fills_in() {
        let t = tempfile::tempdir().unwrap();
        let v2 = t.path().join("v2");
        let mem = t.path().join("memory");
        let blk = t.path().join("blkio");
        for d in [&v2, &mem, &blk] {
            std::fs::create_dir(d).unwrap();
        }
        write(&v2, "cpu.stat", "usage_usec 1500000\nuser_usec 1\n");
        write(&v2, "pids.current", "3\n");
        write(&mem, "memory.usage_in_bytes", "67108864\n");
        write(&mem, "memory.max_usage_in_bytes", "70000000\n");
        write(&mem, "pids.current", "99\n");
        write(
            &blk,
            "blkio.throttle.io_service_bytes_recursive",
            "254:0 Read 4096\n254:0 Write 10485760\n254:0 Total 10489856\n8:0 Write 1\nTotal 10489857\n",
        );
        let v1 = vec![mem.clone(), blk.clone()];
        let d = Dirs { v2: &v2, v1: &v1 };
        let u = d.usage(&Baseline::default());
        assert_eq!(u.cpu_usec, Some(1_500_000));
        assert_eq!(u.pids, Some(3), "v2 pids.current comes first");
        assert_eq!(u.memory_bytes, Some(64 << 20));
        assert_eq!(u.memory_peak_bytes, Some(70_000_000));
        assert_eq!(u.io_read_bytes, Some(4096));
        assert_eq!(u.io_write_bytes, Some(10_485_761));
        let base = d.begin_run();
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.max_usage_in_bytes")).unwrap(),
            "0",
            "the v1 peak is reset at a run's start"
        );
        write(&v2, "cpu.stat", "usage_usec 1600000\n");
        assert_eq!(d.usage(&base).cpu_usec, Some(100_000));
    }

    #[test]
    fn v2_io_and_cpuacct_and_nothing() {
        let t = tempfile::tempdir().unwrap();
        let v2 = t.path().join("v2");
        let acct = t.path().join("cpuacct");
        std::fs::create_dir(&v2).unwrap();
        std::fs::create_dir(&acct).unwrap();
        write(
            &v2,
            "io.stat",
            "254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n8:0 rbytes=1 wbytes=2\n",
        );
        write(&acct, "cpuacct.usage", "2500000000\n");
        let v1 = vec![acct];
        let u = Dirs { v2: &v2, v1: &v1 }.usage(&Baseline::default());
        assert_eq!((u.io_read_bytes, u.io_write_bytes), (Some(11), Some(22)));
        assert_eq!(u.cpu_usec, Some(2_500_000));
        assert_eq!(u.memory_bytes, None, "no controller: no figure, not 0");
        let none = Dirs {
            v2: Path::new("/nonexistent"),
            v1: &[],
        }
        .usage(&Baseline::default());
        assert_eq!(none, Usage::default());
    }
}
