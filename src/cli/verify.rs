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
        Some(dir) => cgroup_procs(dir),
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
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", render(&checks));
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
    out.extend(check_cgroup(r));
    out.extend(check_user(r));
    out.extend(check_limits(r));
    out.extend(check_programs(r));
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
fn cgroup_of(pid: i32) -> Option<String> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

fn environ_has(pid: i32, vars: &[String]) -> Option<bool> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let have: BTreeSet<&[u8]> = env.split(|&b| b == 0).collect();
    Some(vars.iter().all(|v| have.contains(v.as_bytes())))
}

fn cgroup_procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn check_cgroup(r: &Running) -> Vec<Check> {
    let Some(dir) = &r.cgroup else {
        return vec![fail(
            "cgroup",
            "the instance is not tracked by a cgroup (see `cohost status`)",
        )];
    };
    let Some(rel) = r.members.iter().find_map(|&p| cgroup_of(p)) else {
        return vec![fail("cgroup", format!("{} has no member", dir.display()))];
    };
    let mut vars = vec![format!("COHOST_INSTANCE={}", r.spec.id)];
    if let Some(a) = r.spec.address {
        vars.push(format!("COHOST_ADDRESS={a}"));
    }
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    // Processes with the instance's environment outside its cgroup (moved
    // out, or started beside it). One in the same-named cgroup of another
    // supervisor is that supervisor's.
    let other_supervisor =
        |cg: &str| cg.ends_with(&format!("/{}", r.spec.id)) && cg.contains("/cohost/") && cg != rel;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || r.members.contains(&pid) || environ_has(pid, &vars) != Some(true) {
            continue;
        }
        match cgroup_of(pid) {
            Some(cg) if cg == rel || cg.starts_with(&format!("{rel}/")) => {}
            Some(cg) if other_supervisor(&cg) => {}
            Some(cg) => out.push(fail(
                "cgroup",
                format!(
                    "pid {pid} ({}) has the instance's environment but is in cgroup {cg}, not {rel}",
                    comm(pid)
                ),
            )),
            None => {}
        }
    }
    for &pid in &r.members {
        if environ_has(pid, &vars) == Some(false) {
            out.push(fail(
                "cgroup",
                format!(
                    "pid {pid} ({}) is in the instance's cgroup but has not its environment",
                    comm(pid)
                ),
            ));
        }
    }
    if out.is_empty() {
        out.push(pass(
            "cgroup",
            format!(
                "{} member(s) in {}, none of the instance outside it",
                r.members.len(),
                dir.display()
            ),
        ));
    }
    out
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Real and effective ids from the `Uid:`/`Gid:` line of /proc/PID/status.
fn ids(pid: i32, key: &str) -> Option<(u32, u32)> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = t.lines().find_map(|l| l.strip_prefix(key))?;
    let mut it = l.split_whitespace().filter_map(|x| x.parse().ok());
    Some((it.next()?, it.next()?))
}

fn check_user(r: &Running) -> Vec<Check> {
    let run = &r.spec.run;
    if run.user.is_none() && run.group.is_none() {
        return vec![];
    }
    let user = run
        .user
        .as_deref()
        .and_then(|u| nix::unistd::User::from_name(u).ok().flatten());
    let uid = user.as_ref().map(|u| u.uid.as_raw());
    let gid = match run.group.as_deref() {
        Some(g) => nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw()),
        None => user.as_ref().map(|u| u.gid.as_raw()),
    };
    let mut out = Vec::new();
    for &pid in &r.members {
        for (key, want, what) in [("Uid:", uid, "user"), ("Gid:", gid, "group")] {
            let (Some(want), Some((real, eff))) = (want, ids(pid, key)) else {
                continue;
            };
            if real != want || eff != want {
                out.push(fail(
                    "user",
                    format!("pid {pid} runs with {what} id {real}/{eff}, not {want}"),
                ));
            }
        }
    }
    if out.is_empty() {
        out.push(pass(
            "user",
            format!(
                "every member runs as {}{}",
                run.user.as_deref().unwrap_or("(the supervisor's user)"),
                run.group
                    .as_deref()
                    .map(|g| format!(":{g}"))
                    .unwrap_or_default()
            ),
        ));
    }
    out
}

fn check_limits(r: &Running) -> Vec<Check> {
    let (Some(dir), l) = (&r.cgroup, &r.spec.limits) else {
        return vec![];
    };
    let mut out = Vec::new();
    let mut want = Vec::new();
    if let Some(m) = l.memory_max {
        want.push(("memory.max", m.to_string()));
    }
    if let Some(p) = l.pids_max {
        want.push(("pids.max", p.to_string()));
    }
    for (file, v) in want {
        match std::fs::read_to_string(dir.join(file)) {
            Ok(t) if t.trim() == v => out.push(pass("limits", format!("{file} = {v}"))),
            Ok(t) => out.push(fail("limits", format!("{file} is {}, not {v}", t.trim()))),
            // The controller is on a v1 hierarchy here (cgroup.rs applies
            // it there): not read back by verify.
            Err(_) => out.push(pass(
                "limits",
                format!("{file} = {v} is applied through cgroup v1 here: not read back"),
            )),
        }
    }
    out
}

/// The programs on the instance's cgroup, compared with what this cohost
/// loads for the address set they use (by id, or by instruction hash and
/// maps: [`bpf::ForceBind::status`]), and the cgroup's registration.
fn check_programs(r: &Running) -> Vec<Check> {
    let wanted: Vec<&str> = [
        ("force_bind", r.spec.force_bind),
        ("force_source", r.spec.force_source),
    ]
    .into_iter()
    .filter_map(|(n, on)| on.then_some(n))
    .collect();
    let Some(&first) = wanted.first() else {
        return vec![];
    };
    let (Some(dir), Some(addr)) = (&r.cgroup, r.spec.address) else {
        return vec![fail(first, "the instance has no cgroup or no address")];
    };
    let fd = match bpf::open_cgroup(dir) {
        Ok(fd) => fd,
        Err(e) => return vec![fail(first, e.to_string())],
    };
    let fd = fd.as_fd();
    let set = match AddressSet::adopt(fd) {
        Ok(Some(set)) => set,
        Ok(None) => {
            return wanted
                .iter()
                .map(|n| {
                    fail(
                        n,
                        format!("none of cohost's programs is attached to {}", dir.display()),
                    )
                })
                .collect();
        }
        Err(e) => return vec![fail(first, e.to_string())],
    };
    let mut out = Vec::new();
    for name in wanted {
        let status = if name == "force_bind" {
            set.try_clone()
                .and_then(ForceBind::load)
                .and_then(|fb| fb.status(fd, addr))
        } else {
            ForceSource::load(&set).and_then(|fs| fs.status(fd, addr))
        };
        match status {
            Ok(st) if st.ok() => out.push(pass(
                name,
                format!("attached to {}, registered for {addr}", dir.display()),
            )),
            Ok(st) => out.extend(st.problems().into_iter().map(|p| fail(name, p))),
            Err(e) => out.push(fail(name, e.to_string())),
        }
    }
    out
}

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
