//! Reading `/proc/PID/stat`: identity (pid + start time) and tree links.
//!
//! A pid alone does not name a process (pids are reused); pid plus start
//! time (field 22 of proc(5), clock ticks since boot) does.

use std::path::Path;

/// The fields of `/proc/PID/stat` cohost uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub start_time: u64,
}

/// Parses the text of `/proc/PID/stat`. `comm` may contain spaces and
/// parentheses, so the fields are split after the *last* `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(Stat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        session: rest.get(3)?.parse().ok()?,
        start_time: rest.get(19)?.parse().ok()?,
    })
}

pub fn stat_at(proc_root: &Path, pid: i32) -> Option<Stat> {
    let text = read_small(&proc_root.join(format!("{pid}/stat")))?;
    parse_stat(&text)
}

/// Reads a small /proc file in one read(2) where it fits in 1 KiB
/// (`read_to_string` asks for its size, which /proc does not know, then
/// reads 32 bytes, 32, 64, ...: nine syscalls for a stat line).
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

pub fn stat(pid: i32) -> Option<Stat> {
    stat_at(Path::new("/proc"), pid)
}

/// The start time of a live process, `None` if it is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// Every pid in `/proc` (processes, not threads).
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The cgroup v2 path of a process ("/cohost/x/demo01"), from the `0::` line.
pub fn cgroup_v2_path(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// argv[0]'s file name, for process-count checks of forking services
/// whose daemons rename themselves less often than they get truncated comms.
pub fn exe_name(pid: i32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    let s = String::from_utf8_lossy(argv0);
    Some(s.rsplit('/').next().unwrap_or(&s).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_awkward_comm() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.session, 4242);
        assert_eq!(s.start_time, 98765);
    }

    #[test]
    fn reads_self() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.start_time > 0);
        assert!(stat(-5).is_none());
    }
}
