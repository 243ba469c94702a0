//! `cohost exec ID --join -- CMD…`: CMD inside the running instance, seeing
//! what its processes see. A member is named by a pidfd (checked to be in
//! the instance's cgroup after opening, so a reused pid is never joined);
//! setns(2) through it enters its mount and UTS namespaces (Linux 5.8+,
//! several namespaces in one call), the command joins every cgroup the
//! member is in (v2 and the v1 limit groups) by writing `cgroup.procs`, and
//! the exec plan gives it the instance's user, environment and cwd, as for
//! any process of the instance (but no new namespace of its own).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use super::Ctx;
use crate::control::proto::InstanceStatus;
use crate::isolation::cgroup::parse_mountinfo;
use crate::model::Isolation;
use crate::process::pidfd::Pidfd;
use crate::process::procfs;
use crate::process::spawn::{ExecPlan, Output, Spawn};

fn fail(id: &str, msg: impl std::fmt::Display) -> i32 {
    eprintln!("cohost: exec --join {id}: {msg}");
    126
}

/// The `cgroup.procs` of every hierarchy `pid` is in (/proc/PID/cgroup
/// against our mountinfo): v2 first.
fn cgroup_files(pid: i32) -> std::io::Result<Vec<OwnedFd>> {
    let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?);
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let mut out = Vec::new();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_by_key(|l| !l.starts_with("0::"));
    for l in lines {
        let mut f = l.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let m = if ctrl.is_empty() {
            mounts.iter().find(|m| m.v2)
        } else {
            let ctrls: Vec<&str> = ctrl.split(',').collect();
            mounts
                .iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|c| ctrls.contains(&c.as_str())))
        };
        let Some(m) = m else { continue };
        let rel = path
            .strip_prefix(m.root.trim_end_matches('/'))
            .unwrap_or(path)
            .trim_start_matches('/');
        let file = m.point.join(rel).join("cgroup.procs");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
        out.push(OwnedFd::from(f));
    }
    Ok(out)
}

fn ns_ino(pid: &str, ns: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .ok()
        .map(|m| m.ino())
}

/// A member that is (still) in the instance's cgroup, by pidfd.
fn open_member(st: &InstanceStatus) -> Option<Pidfd> {
    let cgroup = st.tracking.strip_prefix("cgroup ").map(|d| d.to_string());
    st.members.iter().find_map(|&pid| {
        let want = match &cgroup {
            Some(dir) => {
                let rel = procfs::cgroup_v2_path(pid)?;
                dir.ends_with(rel.as_str()).then_some(rel)?
            }
            None => procfs::cgroup_v2_path(pid)?,
        };
        Pidfd::open_in_cgroup(pid, &want).ok().flatten()
    })
}

/// The member's mount and UTS namespaces, where they are not ours.
fn enter_namespaces(member: &Pidfd) -> nix::Result<()> {
    let mut flags = nix::sched::CloneFlags::empty();
    let p = member.pid().to_string();
    for (ns, flag) in [
        ("mnt", nix::sched::CloneFlags::CLONE_NEWNS),
        ("uts", nix::sched::CloneFlags::CLONE_NEWUTS),
    ] {
        if ns_ino(&p, ns) != ns_ino("self", ns) {
            flags |= flag;
        }
    }
    if flags.is_empty() {
        return Ok(());
    }
    nix::sched::setns(member.as_fd(), flags)
}

pub fn exec_join(ctx: &Ctx, id: &str, cmd: &[String]) -> i32 {
    let (spec, st) = match super::local::spec_and_status(ctx, id) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let Some(st) = st.filter(|s| !s.members.is_empty()) else {
        eprintln!(
            "cohost: exec --join {id}: {id} is not running: nothing to join (`cohost exec {id} -- CMD` runs CMD in a fresh context)"
        );
        return crate::ops::exit::Exit::Stopped.code();
    };
    let Some(member) = open_member(&st) else {
        return fail(
            id,
            "no member of the instance could be opened (it just stopped?)",
        );
    };
    let pid = member.pid();
    let cgroups = match cgroup_files(pid) {
        Ok(c) => c,
        Err(e) => return fail(id, format!("joining the cgroups of pid {pid}: {e}")),
    };
    // The instance's context without namespaces of its own: we enter the
    // member's instead.
    let mut run = spec.run.clone();
    run.isolate = Isolation::default();
    run.hostname = None;
    let plan = ExecPlan::new(Spawn {
        argv: cmd,
        run: &run,
        output: Output::Inherit,
        cgroups,
        into_cgroup: None,
        inherit: None,
        setsid: false,
    });
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            let code = if e.is_not_installed() { 127 } else { 126 };
            eprintln!("cohost: exec --join {id}: {e}");
            return code;
        }
    };
    if let Err(e) = enter_namespaces(&member) {
        return fail(
            id,
            format!(
                "entering the namespaces of pid {pid} (setns through its pidfd, Linux 5.8+): {e}"
            ),
        );
    }
    drop(member);
    let err = plan.exec_here();
    eprintln!("cohost: exec --join {id}: {err}");
    if err.is_not_installed() { 127 } else { 126 }
}
