//! One instance's status as the daemon writes it: a view borrowing from
//! the instance, serialised straight into the reply. Its fields are
//! [`InstanceStatus`]'s, in its order (the client reads it as one; the
//! round trip is tested): building an owned status for each of 10,000
//! instances, every string copied once to be written once, was half of a
//! `list`'s time on the loop.
//!
//! [`InstanceStatus`]: crate::control::proto::InstanceStatus

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::Serialize;

use super::Daemon;
use super::fsm::State;
use super::instance::{Inst, Proc};
use crate::control::observe::{Timing, Usage};
use crate::control::proto::CheckStatus;
use crate::isolation::cgroup::{CgroupRoot, DiscoverError};

#[derive(Serialize)]
pub struct StatusView<'a> {
    id: &'a str,
    service: &'a str,
    kind: &'static str,
    state: &'static str,
    healthy: Option<bool>,
    #[serde(serialize_with = "procs")]
    processes: &'a [Proc],
    members: Vec<i32>,
    address: Option<IpAddr>,
    port: Option<u16>,
    hostname: Option<&'a str>,
    since: u64,
    uptime_s: Option<u64>,
    restarts: u32,
    last_failure: Option<&'a str>,
    #[serde(serialize_with = "display")]
    tracking: Tracking<'a>,
    checks: Vec<CheckStatus>,
    definition_changed: bool,
    removed: bool,
    warnings: Vec<&'a str>,
    #[serde(serialize_with = "path_text")]
    log_dir: PathBuf,
    timing: Option<&'a Timing>,
    usage: Option<Usage>,
}

/// How the instance's processes are found: "cgroup /sys/fs/cgroup/…" or
/// "process-group and session (…why…)".
pub struct Tracking<'a> {
    inst: &'a Inst,
    root: &'a Result<CgroupRoot, DiscoverError>,
}

impl fmt::Display for Tracking<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.inst.cgroup, self.root) {
            (Some(cg), _) => {
                f.write_str("cgroup ")?;
                path(f, &cg.dir())
            }
            (None, Ok(root)) => {
                f.write_str("cgroup ")?;
                path(f, &root.dir_of(self.inst.id()))?;
                f.write_str(" (when running)")
            }
            (None, Err(why)) => write!(f, "process-group and session (cgroups unavailable: {why})"),
        }
    }
}

/// A path as `display()` writes it, without its lossy decoding when it is
/// UTF-8 (most of the time of a list's paths).
fn path(f: &mut fmt::Formatter<'_>, p: &Path) -> fmt::Result {
    match p.to_str() {
        Some(s) => f.write_str(s),
        None => write!(f, "{}", p.display()),
    }
}

/// Written whole into a scratch string first, then serialised as one
/// string (serde's `collect_str` escapes each piece of it on its own).
fn display<S: serde::Serializer>(v: &impl fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    use std::fmt::Write;
    thread_local!(static SCRATCH: std::cell::RefCell<String> = const {
        std::cell::RefCell::new(String::new())
    });
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        write!(buf, "{v}").map_err(serde::ser::Error::custom)?;
        s.serialize_str(buf)
    })
}

/// A path as `display()` writes it, as one string.
fn path_text<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    match p.to_str() {
        Some(t) => s.serialize_str(t),
        None => s.collect_str(&p.display()),
    }
}

fn procs<S: serde::Serializer>(procs: &&[Proc], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct P<'a> {
        name: &'a str,
        pid: i32,
        alive: bool,
    }
    s.collect_seq(procs.iter().map(|p| P {
        name: &p.name,
        pid: p.pid,
        alive: p.alive(),
    }))
}

impl Daemon {
    pub fn tracking(&self, idx: usize) -> Tracking<'_> {
        Tracking {
            inst: &self.insts[idx],
            root: &self.cgroot,
        }
    }

    /// The status of one instance, with `usage` as read by the caller
    /// (`detail`: its members too).
    pub fn status_view(&self, idx: usize, detail: bool, usage: Option<Usage>) -> StatusView<'_> {
        let inst: &Inst = &self.insts[idx];
        let now = self.host.now();
        let state = inst.state();
        let members = if detail && state.may_have_processes() {
            self.members(idx).into_iter().map(|(p, _)| p).collect()
        } else {
            Vec::new()
        };
        let probes = inst.ready_probe.as_deref().into_iter();
        let checks = probes
            .chain(inst.health.iter())
            .map(|p| CheckStatus {
                role: p.role.as_str().into(),
                check: p.check.describe(),
                ok: p.last.as_ref().map(|r| r.ok),
                message: p
                    .last
                    .as_ref()
                    .map(|r| r.message.clone())
                    .unwrap_or_default(),
                age_s: p
                    .last
                    .as_ref()
                    .map(|r| now.duration_since(r.at).as_secs_f64()),
            })
            .collect();
        let mut warnings: Vec<&str> = inst.warnings.iter().map(String::as_str).collect();
        warnings.extend(self.state_errors.get(&idx).map(String::as_str));
        if state == State::Running {
            warnings.extend(inst.log_space.warning.as_deref());
        }
        StatusView {
            id: inst.id(),
            service: &inst.spec.service,
            kind: inst.spec.kind.as_str(),
            state: state.as_str(),
            healthy: (state == State::Running && !inst.health.is_empty())
                .then(|| self.health_verdict(idx).0),
            processes: &inst.procs,
            members,
            address: inst.spec.address,
            port: inst.spec.port,
            hostname: inst.spec.hostname.as_deref(),
            since: (inst.since_wall.duration_since(UNIX_EPOCH)).map_or(0, |d| d.as_secs()),
            uptime_s: (state == State::Running).then(|| super::secs_since(inst.fsm.since, now)),
            restarts: inst.fsm.restart_count,
            last_failure: inst.fsm.last_failure.as_deref(),
            tracking: self.tracking(idx),
            checks,
            definition_changed: inst.next_spec.is_some(),
            removed: inst.removed,
            warnings,
            log_dir: self.log_dir(idx),
            timing: inst.obs.last.as_ref(),
            usage,
        }
    }
}
