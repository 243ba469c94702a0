//! `cohost plan --absorb DIR`: could this node also run its peer's
//! instances (the what-if of HPE Serviceguard's `cmeval`, with Pacemaker's
//! utilization idea for capacity)? The peer's instances file against this
//! node's own and against this host: every blocker, each with its fix.
//!
//! The checks are pure over the two configs and a [`Host`] (what this
//! node has: users, programs, mount points, capacity), so they are tested
//! with a fake host; [`host::Real`] asks the real one.

pub mod host;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::config::resolve::paths_overlap;
use crate::model::{Check, Config, InstanceSpec};

/// What can keep this node from running both sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Id,
    Address,
    Paths,
    User,
    Group,
    Binary,
    Bind,
    After,
    Memory,
    Cpu,
    Pids,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Id => "id",
            Kind::Address => "address",
            Kind::Paths => "paths",
            Kind::User => "user",
            Kind::Group => "group",
            Kind::Binary => "binary",
            Kind::Bind => "bind",
            Kind::After => "after",
            Kind::Memory => "memory",
            Kind::Cpu => "cpu",
            Kind::Pids => "pids",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub kind: Kind,
    /// The peer's instance concerned (or "-" for the node as a whole).
    pub instance: String,
    pub problem: String,
    pub fix: String,
}

/// This node's capacity and what its running instances use now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Capacity {
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pid_max: u64,
    /// Running local instances: memory and pids now, by ID.
    #[serde(skip)]
    pub running: BTreeMap<String, (u64, u64)>,
}

/// Why a command's program cannot be executed on this host.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// A path (`/opt/x/bin/y`) that is not there.
    #[error("does not exist")]
    Missing,
    /// Not found along `PATH`, or not executable.
    #[error(transparent)]
    Lookup(#[from] crate::process::spawn::SpawnError),
}

/// What the plan needs to know about this host.
pub trait Host {
    fn user_exists(&self, name: &str) -> bool;
    fn group_exists(&self, name: &str) -> bool;
    /// `Err(why)` when the program cannot be executed here.
    fn program(&self, argv0: &str, path_var: &str) -> Result<(), ProgramError>;
    fn exists(&self, path: &Path) -> bool;
    fn capacity(&self) -> Capacity;
}

/// The sums the capacity check compared, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Load {
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u64,
    pub capacity: Capacity,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub ok: bool,
    pub local: usize,
    pub peer: usize,
    pub blockers: Vec<Blocker>,
    pub load: Load,
}

/// Every blocker of running `peer`'s instances beside `local`'s here.
pub fn plan(local: &Config, peer: &Config, host: &dyn Host) -> Plan {
    let mut b = Vec::new();
    let mine: Vec<&Arc<InstanceSpec>> = local.instances.values().collect();
    let theirs: Vec<&Arc<InstanceSpec>> = peer.instances.values().collect();
    for p in &theirs {
        clashes(p, &mine, &mut b);
        on_this_host(p, host, &mut b);
    }
    after(peer, local, &mut b);
    let load = capacity(&mine, &theirs, host.capacity(), &mut b);
    b.sort_by(|x, y| (x.kind, &x.instance).cmp(&(y.kind, &y.instance)));
    Plan {
        ok: b.is_empty(),
        local: mine.len(),
        peer: theirs.len(),
        blockers: b,
        load,
    }
}

fn blocker(kind: Kind, id: &str, problem: String, fix: String) -> Blocker {
    Blocker {
        kind,
        instance: id.to_string(),
        problem,
        fix,
    }
}

fn endpoint(i: &InstanceSpec) -> String {
    match (i.address, i.port) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (None, Some(p)) => format!("every address, port {p}"),
        _ => "-".into(),
    }
}

/// IDs, address:port and paths of one peer instance against ours.
fn clashes(p: &InstanceSpec, mine: &[&Arc<InstanceSpec>], b: &mut Vec<Blocker>) {
    for m in mine {
        if m.id == p.id {
            b.push(blocker(
                Kind::Id,
                &p.id,
                format!("{} is an instance here too ({})", p.id, m.origin),
                format!(
                    "rename one of them (IDs name cgroups, state and locks); the peer's is at {}",
                    p.origin
                ),
            ));
        }
        let same_port = p.port.is_some() && p.port == m.port;
        let same_addr = match (p.address, m.address) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        };
        if same_port && same_addr {
            b.push(blocker(
                Kind::Address,
                &p.id,
                format!(
                    "{} would listen where {} does ({})",
                    endpoint(p),
                    m.id,
                    endpoint(m)
                ),
                format!("give {} its own logical address (address = …)", p.id),
            ));
        }
        for (kp, pp) in &p.paths {
            for (km, pm) in &m.paths {
                if paths_overlap(pp, pm) {
                    b.push(blocker(
                        Kind::Paths,
                        &p.id,
                        format!(
                            "paths.{kp} {} overlaps paths.{km} {} of {}",
                            pp.display(),
                            pm.display(),
                            m.id
                        ),
                        "each instance needs storage of its own: move one to its own directory or disk".into(),
                    ));
                }
            }
        }
    }
}

/// Every command an instance runs: processes, stop command, check commands.
fn commands(i: &InstanceSpec) -> Vec<(&'static str, &Vec<String>)> {
    let mut v: Vec<(&'static str, &Vec<String>)> =
        i.processes.iter().map(|p| ("command", &p.argv)).collect();
    if let Some(c) = &i.stop.command {
        v.push(("stop command", c));
    }
    let checks = i
        .ready
        .check
        .iter()
        .chain(i.health.iter().map(|h| &h.check));
    for c in checks {
        if let Check::Command(argv) = c {
            v.push(("check command", argv));
        }
    }
    v
}

/// Users, groups, programs and bind mount points of a peer instance here.
fn on_this_host(p: &InstanceSpec, host: &dyn Host, b: &mut Vec<Blocker>) {
    if let Some(u) = &p.run.user
        && u.parse::<u32>().is_err()
        && !host.user_exists(u)
    {
        b.push(blocker(
            Kind::User,
            &p.id,
            format!("user {u} does not exist on this node"),
            format!("create {u} here with the same uid as on the peer (useradd)"),
        ));
    }
    if let Some(g) = &p.run.group
        && g.parse::<u32>().is_err()
        && !host.group_exists(g)
    {
        b.push(blocker(
            Kind::Group,
            &p.id,
            format!("group {g} does not exist on this node"),
            format!("create {g} here with the same gid as on the peer (groupadd)"),
        ));
    }
    let env = crate::process::spawn::environment(&p.run, None, &p.run.pass_env);
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    for (what, argv) in commands(p) {
        let Some(argv0) = argv.first() else { continue };
        if !seen.insert(argv0.clone()) {
            continue;
        }
        if let Err(why) = host.program(argv0, &path_var) {
            b.push(blocker(
                Kind::Binary,
                &p.id,
                format!("{what} {argv0}: {why}"),
                format!("install {argv0} on this node (executable), or fix the {what}"),
            ));
        }
    }
    for (inside, _) in &p.run.isolate.bind {
        if !host.exists(inside) {
            b.push(blocker(
                Kind::Bind,
                &p.id,
                format!(
                    "bind mount point {} does not exist on this node",
                    inside.display()
                ),
                format!(
                    "mkdir -p {} here (the mount point of the bind)",
                    inside.display()
                ),
            ));
        }
    }
}

/// Each peer instance's `after` must be met here: the instance it waits
/// for exists (in either set), is enabled, and can itself run here.
fn after(peer: &Config, local: &Config, b: &mut Vec<Blocker>) {
    let blocked: BTreeSet<String> = b
        .iter()
        .filter(|x| matches!(x.kind, Kind::User | Kind::Group | Kind::Binary | Kind::Bind))
        .map(|x| x.instance.clone())
        .collect();
    for p in peer.instances.values() {
        for dep in &p.after {
            let found = peer.get(dep).or_else(|| local.get(dep));
            let problem = match found {
                None => Some(format!(
                    "after = [\"{dep}\"], and {dep} is defined on neither node"
                )),
                Some(d) if !d.enabled => Some(format!(
                    "after = [\"{dep}\"], and {dep} is disabled (enabled = false)"
                )),
                Some(_) if blocked.contains(dep) => Some(format!(
                    "after = [\"{dep}\"], and {dep} cannot run here (see its blockers)"
                )),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                b.push(blocker(
                    Kind::After,
                    &p.id,
                    problem,
                    format!(
                        "make {dep} runnable on this node, or drop it from {}'s after",
                        p.id
                    ),
                ));
            }
        }
    }
}

fn cpus_of(i: &InstanceSpec) -> f64 {
    i.limits
        .cpu_max
        .map(|(q, p)| q as f64 / p.max(1) as f64)
        .unwrap_or(0.0)
}

/// memory_max, cpu_max and pids_max of both sets (a running local
/// instance without a limit counts what it uses now) against the node.
fn capacity(
    mine: &[&Arc<InstanceSpec>],
    theirs: &[&Arc<InstanceSpec>],
    cap: Capacity,
    b: &mut Vec<Blocker>,
) -> Load {
    let now = |i: &InstanceSpec| cap.running.get(&i.id).copied();
    let mem = |i: &InstanceSpec| {
        let used = now(i).map(|(m, _)| m).unwrap_or(0);
        i.limits.memory_max.unwrap_or(0).max(used)
    };
    let pids = |i: &InstanceSpec| {
        let used = now(i).map(|(_, p)| p).unwrap_or(0);
        i.limits.pids_max.unwrap_or(0).max(used)
    };
    let all = || mine.iter().chain(theirs.iter());
    let load = Load {
        memory_bytes: all().map(|i| mem(i)).sum(),
        cpus: all().map(|i| cpus_of(i)).sum(),
        pids: all().map(|i| pids(i)).sum(),
        capacity: cap.clone(),
    };
    let gib = |x: u64| format!("{:.1} GiB", x as f64 / (1u64 << 30) as f64);
    if load.memory_bytes > cap.memory_bytes {
        b.push(blocker(
            Kind::Memory,
            "-",
            format!(
                "memory_max of both nodes' instances (and what running ones use) is {}, this node has {}",
                gib(load.memory_bytes),
                gib(cap.memory_bytes)
            ),
            "lower memory_max of some instances, or add memory to this node".into(),
        ));
    }
    if load.cpus > cap.cpus + 1e-9 {
        b.push(blocker(
            Kind::Cpu,
            "-",
            format!(
                "cpu_max of both nodes' instances is {:.2} CPUs, this node has {}",
                load.cpus, cap.cpus
            ),
            "lower cpu_max of some instances (degraded mode after a takeover), or add CPUs".into(),
        ));
    }
    if load.pids > cap.pid_max {
        b.push(blocker(
            Kind::Pids,
            "-",
            format!(
                "pids_max of both nodes' instances is {}, this node's pid limit is {}",
                load.pids, cap.pid_max
            ),
            "lower pids_max, or raise kernel.pid_max (sysctl)".into(),
        ));
    }
    load
}

#[cfg(test)]
mod tests;
