//! `cohost verify ID [--json]`: proof of isolation, one line per check,
//! read from the kernel (not from what the daemon believes): every socket
//! of every member against the logical address (sock_diag), the UTS name
//! each member sees, each bind path's view, the private /tmp, the lock held
//! on this node, the cgroup complete, user and group, the limits, and the
//! force_bind / force_source programs on the cgroup.
//!
//! Runs in the CLI (as root): nothing here is asked of the daemon beyond
//! the instance's state and cgroup, so a slow check never holds its loop.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

mod kernel;

use super::Ctx;
use crate::isolation::bpf::{self, AddressSet, ForceBind, ForceSource};
use crate::isolation::sockets;
use crate::model::InstanceSpec;
use crate::ops::exit::Exit;

/// One line of the proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

fn pass(check: &str, detail: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        ok: true,
        detail: detail.into(),
    }
}

fn fail(check: &str, detail: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        ok: false,
        detail: detail.into(),
    }
}

/// The text form (pure): `ok   NAME: detail` / `FAIL NAME: detail`.
pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        s += &format!("{mark} {}: {}\n", c.check, c.detail);
    }
    s
}

/// What `verify` is given about the running instance.
pub struct Running<'a> {
    pub spec: &'a InstanceSpec,
    /// The instance's cgroup v2 directory, when it is tracked by one.
    pub cgroup: Option<PathBuf>,
    /// Its members (the cgroup's, else the daemon's list).
    pub members: Vec<i32>,
    pub daemon_pid: Option<i32>,
}

pub fn run(ctx: &Ctx, id: &str, json: bool) -> i32 {
    let (spec, st) = match super::local::spec_and_status(ctx, id) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let running = st
        .as_ref()
        .is_some_and(|s| !s.members.is_empty() && s.state != "stopped");
    let Some(st) = st.filter(|_| running) else {
        eprintln!("cohost: {id} is not running: nothing to verify");
        return Exit::Stopped.code();
    };
    let cgroup = st
        .tracking
        .strip_prefix("cgroup ")
        .filter(|p| !p.ends_with(')'))
        .map(PathBuf::from);
    let members = match &cgroup {
        Some(dir) => kernel::cgroup_procs(dir),
        None => st.members.clone(),
    };
    let daemon_pid = std::fs::read_to_string(ctx.runtime_dir.join("daemon.pid"))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let checks = checks(&Running {
        spec: &spec,
        cgroup,
        members,
        daemon_pid,
    });
    let bad: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    if json {
        let v = serde_json::json!({ "id": id, "ok": bad.is_empty(), "checks": checks });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        out!("{}", render(&checks));
    }
    if bad.is_empty() {
        return Exit::Ok.code();
    }
    for c in &bad {
        eprintln!("cohost: {id}: {}: {}", c.check, c.detail);
    }
    Exit::Failed.code()
}

/// Every check, in a fixed order.
pub fn checks(r: &Running) -> Vec<Check> {
    let mut out = Vec::new();
    out.extend(check_sockets(r));
    out.extend(check_uts(r));
    out.extend(check_binds(r));
    out.extend(check_tmp(r));
    out.extend(check_lock(r));
    out.extend(kernel::check_cgroup(r));
    out.extend(kernel::check_user(r));
    out.extend(kernel::check_limits(r));
    out.extend(kernel::check_programs(r));
    out
}

fn check_sockets(r: &Running) -> Vec<Check> {
    let Some(addr) = r.spec.address else {
        return vec![pass(
            "sockets",
            "no logical address configured: not checked",
        )];
    };
    let socks = match sockets::of_pids(&r.members) {
        Ok(s) => s,
        Err(e) => return vec![fail("sockets", format!("reading sockets (sock_diag): {e}"))],
    };
    let bad = sockets::violations(&socks, addr, r.spec.force_source);
    if bad.is_empty() {
        return vec![pass(
            "sockets",
            format!(
                "{} socket(s) of {} member(s), all on {addr} (or loopback)",
                socks.len(),
                r.members.len()
            ),
        )];
    }
    bad.iter().map(|v| fail("sockets", v.to_string())).collect()
}

/// The host name a process sees: uname(2) in a thread that joined its UTS
/// namespace (setns(2) of CLONE_NEWUTS changes the calling thread only).
fn uts_name_of(pid: i32) -> std::io::Result<String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/uts"))?;
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWUTS)?;
        let u = nix::sys::utsname::uname()?;
        Ok(u.nodename().to_string_lossy().into_owned())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("thread panicked")))
}

fn check_uts(r: &Running) -> Vec<Check> {
    let (true, Some(want)) = (r.spec.run.isolate.uts, r.spec.hostname.as_deref()) else {
        return vec![];
    };
    let bad: Vec<String> = r
        .members
        .iter()
        .filter_map(|&pid| match uts_name_of(pid) {
            Ok(n) if n == want => None,
            Ok(n) => Some(format!("pid {pid} sees host name {n:?}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("pid {pid}: {e}")),
        })
        .collect();
    if bad.is_empty() {
        vec![pass("uts", format!("every member sees host name {want:?}"))]
    } else {
        bad.into_iter()
            .map(|b| fail("uts", format!("{b}, not {want:?}")))
            .collect()
    }
}

fn dev_ino(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// `/proc/PID/root` + an absolute path: the path in the process's mount
/// namespace (proc(5)).
fn inside(pid: i32, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

fn check_binds(r: &Running) -> Vec<Check> {
    let mut out = Vec::new();
    for (at, src) in &r.spec.run.isolate.bind {
        let name = format!("bind {}", at.display());
        let Some(want) = dev_ino(src) else {
            out.push(fail(&name, format!("{} cannot be read", src.display())));
            continue;
        };
        let wrong: Vec<i32> = r
            .members
            .iter()
            .copied()
            .filter(|&pid| dev_ino(&inside(pid, at)) != Some(want))
            .filter(|&pid| Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        let host_sees = dev_ino(at) == Some(want);
        if !wrong.is_empty() {
            out.push(fail(
                &name,
                format!(
                    "pid {} does not see {} there (not bind-mounted in its mount namespace)",
                    wrong
                        .iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    src.display()
                ),
            ));
        } else if host_sees {
            out.push(fail(
                &name,
                format!(
                    "the host's {} shows {} too: the bind leaked out of the instance",
                    at.display(),
                    src.display()
                ),
            ));
        } else {
            out.push(pass(
                &name,
                format!(
                    "every member sees {}; the host's is untouched",
                    src.display()
                ),
            ));
        }
    }
    out
}

fn check_tmp(r: &Running) -> Vec<Check> {
    if !r.spec.run.isolate.private_tmp {
        return vec![];
    }
    let host = dev_ino(Path::new("/tmp"));
    let bad: Vec<String> = r
        .members
        .iter()
        .filter_map(|&pid| {
            let p = inside(pid, Path::new("/tmp"));
            let tmpfs = nix::sys::statfs::statfs(&p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
            let own = dev_ino(&p).is_some_and(|d| Some(d) != host);
            (!(tmpfs && own) && Path::new(&format!("/proc/{pid}")).exists())
                .then(|| format!("pid {pid} sees the host's /tmp"))
        })
        .collect();
    if bad.is_empty() {
        vec![pass(
            "private /tmp",
            "every member has its own tmpfs on /tmp",
        )]
    } else {
        bad.into_iter().map(|b| fail("private /tmp", b)).collect()
    }
}

/// Whether `pid` has an fd open on `file` that holds a lock (the `lock:`
/// lines of /proc/PID/fdinfo/FD, proc(5)).
fn holds_lock(pid: i32, file: (u64, u64)) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten().any(|e| {
        dev_ino(&e.path()) == Some(file)
            && std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .is_ok_and(|t| t.lines().any(|l| l.starts_with("lock:")))
    })
}

fn check_lock(r: &Running) -> Vec<Check> {
    let Some(lock) = &r.spec.lock else {
        return vec![];
    };
    let Some(file) = dev_ino(lock) else {
        return vec![fail(
            "lock",
            format!(
                "{} is gone: another node could start the instance on this storage",
                lock.display()
            ),
        )];
    };
    let holder = r
        .daemon_pid
        .filter(|&d| holds_lock(d, file))
        .map(|d| format!("this node's daemon (pid {d})"))
        .or_else(|| {
            r.members
                .iter()
                .find(|&&p| holds_lock(p, file))
                .map(|p| format!("member pid {p}"))
        });
    match holder {
        Some(h) => vec![pass("lock", format!("{} held by {h}", lock.display()))],
        None => vec![fail(
            "lock",
            format!(
                "{} is not locked by this node (another node could start the instance on this storage)",
                lock.display()
            ),
        )],
    }
}

/// The v2 cgroup path of a process ("0::PATH" in /proc/PID/cgroup).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_marks_each_line() {
        let c = [pass("uts", "fine"), fail("lock", "gone")];
        assert_eq!(render(&c), "ok   uts: fine\nFAIL lock: gone\n");
    }

    #[test]
    fn inside_is_under_the_process_root() {
        assert_eq!(
            inside(42, Path::new("/etc/counter")),
            PathBuf::from("/proc/42/root/etc/counter")
        );
    }
}
