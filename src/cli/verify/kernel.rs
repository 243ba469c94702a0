//! The checks read from cgroups and the kernel's tables: the cgroup holds
//! every member and nothing else, user and group, the limits, and the
//! force_bind / force_source programs attached to the cgroup.

use super::*;

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

pub(super) fn cgroup_procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

pub(super) fn check_cgroup(r: &Running) -> Vec<Check> {
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

pub(super) fn check_user(r: &Running) -> Vec<Check> {
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

pub(super) fn check_limits(r: &Running) -> Vec<Check> {
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
pub(super) fn check_programs(r: &Running) -> Vec<Check> {
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
