//! The real host for [`super::plan`]: NSS for users and groups, the file
//! system for programs and mount points, /proc for capacity.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Capacity, Host, ProgramError};

pub struct Real {
    /// Running local instances: (memory, pids) now, from the daemon.
    pub running: BTreeMap<String, (u64, u64)>,
}

/// MemTotal of /proc/meminfo (proc(5)), in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Host for Real {
    fn user_exists(&self, name: &str) -> bool {
        matches!(nix::unistd::User::from_name(name), Ok(Some(_)))
    }

    fn group_exists(&self, name: &str) -> bool {
        matches!(nix::unistd::Group::from_name(name), Ok(Some(_)))
    }

    fn program(&self, argv0: &str, path_var: &str) -> Result<(), ProgramError> {
        if argv0.contains('/') && !Path::new(argv0).exists() {
            return Err(ProgramError::Missing);
        }
        crate::process::spawn::find_program(argv0, path_var)?;
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn capacity(&self) -> Capacity {
        let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
        Capacity {
            memory_bytes: mem_total(&read("/proc/meminfo")).unwrap_or(0),
            // Honours the CPU affinity mask and a cgroup CPU quota.
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            pid_max: read("/proc/sys/kernel/pid_max")
                .trim()
                .parse()
                .unwrap_or(32_768),
            running: self.running.clone(),
        }
    }
}
