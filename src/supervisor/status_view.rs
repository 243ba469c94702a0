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
use std::path::Path;
use std::time::UNIX_EPOCH;

#[cfg(test)]
use serde::Serialize;

use super::Daemon;
use super::fsm::State;
use super::instance::{Inst, Proc};
use crate::control::json_out::{self, Obj};
use crate::control::observe::{Timing, Usage};
use crate::control::proto::CheckStatus;
use crate::isolation::cgroup::{CgroupRoot, DiscoverError};

/// Its `Serialize` (tests only) is the reference [`StatusView::write_json`]
/// is held to.
#[cfg_attr(test, derive(Serialize))]
pub struct StatusView<'a> {
    id: &'a str,
    service: &'a str,
    kind: &'static str,
    state: &'static str,
    healthy: Option<bool>,
    #[cfg_attr(test, serde(serialize_with = "procs"))]
    processes: &'a [Proc],
    members: Vec<i32>,
    address: Option<IpAddr>,
    port: Option<u16>,
    hostname: Option<&'a str>,
    since: u64,
    uptime_s: Option<u64>,
    restarts: u32,
    last_failure: Option<&'a str>,
    #[cfg_attr(test, serde(serialize_with = "display"))]
    tracking: Tracking<'a>,
    checks: Vec<CheckStatus>,
    definition_changed: bool,
    removed: bool,
    warnings: Vec<&'a str>,
    #[cfg_attr(test, serde(serialize_with = "display"))]
    log_dir: LogDir<'a>,
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
                let (base, name) = cg.dir_parts();
                joined(f, base, name)
            }
            (None, Ok(root)) => {
                f.write_str("cgroup ")?;
                joined(f, &root.base, self.inst.id())?;
                f.write_str(" (when running)")
            }
            (None, Err(why)) => write!(f, "process-group and session (cgroups unavailable: {why})"),
        }
    }
}

/// Where the instance's logs go: its own `log_dir`, or `logs/ID` in the
/// runtime dir (`Daemon::log_dir`, written without building the path).
pub struct LogDir<'a> {
    own: Option<&'a Path>,
    runtime: &'a Path,
    id: &'a str,
}

impl fmt::Display for LogDir<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.own {
            Some(p) => path(f, p),
            None => {
                joined(f, self.runtime, "logs")?;
                f.write_str("/")?;
                f.write_str(self.id)
            }
        }
    }
}

/// `base.join(name)` as `display()` writes it, for a `name` without a
/// slash, without building it (Path::join allocated twice per instance
/// of a list: most of a list's allocations).
fn joined(f: &mut fmt::Formatter<'_>, base: &Path, name: &str) -> fmt::Result {
    use std::os::unix::ffi::OsStrExt;
    path(f, base)?;
    let b = base.as_os_str().as_bytes();
    if !b.is_empty() && !b.ends_with(b"/") {
        f.write_str("/")?;
    }
    f.write_str(name)
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
#[cfg(test)]
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

#[cfg(test)]
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

impl StatusView<'_> {
    /// The same bytes as `serde_json::to_writer(buf, self)`, written by
    /// hand (`control::json_out`): half the time of a 10,000-instance
    /// list. The executor tests hold the two equal.
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        let mut o = Obj::begin(buf);
        o.str("id", self.id)
            .str("service", self.service)
            .str("kind", self.kind)
            .str("state", self.state)
            .value("healthy", &self.healthy);
        let b = o.field("processes");
        b.push(b'[');
        for (i, p) in self.processes.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            let mut po = Obj::begin(b);
            po.str("name", &p.name)
                .value("pid", &p.pid)
                .bool("alive", p.alive());
            po.end();
        }
        b.push(b']');
        o.value("members", &self.members)
            .value("address", &self.address)
            .value("port", &self.port)
            .opt_str("hostname", self.hostname)
            .value("since", &self.since)
            .value("uptime_s", &self.uptime_s)
            .value("restarts", &self.restarts)
            .opt_str("last_failure", self.last_failure);
        display_json(o.field("tracking"), &self.tracking);
        o.value("checks", &self.checks)
            .bool("definition_changed", self.definition_changed)
            .bool("removed", self.removed)
            .value("warnings", &self.warnings);
        display_json(o.field("log_dir"), &self.log_dir);
        o.value("timing", &self.timing).value("usage", &self.usage);
        o.end();
    }
}

/// What `v` displays, as a JSON string (written into a scratch string
/// first, as [`display`] does).
fn display_json(buf: &mut Vec<u8>, v: &impl fmt::Display) {
    use std::fmt::Write;
    thread_local!(static SCRATCH: std::cell::RefCell<String> = const {
        std::cell::RefCell::new(String::new())
    });
    SCRATCH.with_borrow_mut(|text| {
        text.clear();
        match write!(text, "{v}") {
            Ok(()) => json_out::string(buf, text),
            // Never for ours: a String takes any text.
            Err(_) => buf.extend_from_slice(b"\"\""),
        }
    })
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
            log_dir: LogDir {
                own: inst.spec.log_dir.as_deref(),
                runtime: &self.opts.runtime_dir,
                id: inst.id(),
            },
            timing: inst.obs.last.as_ref(),
            usage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct J<'a>(&'a Path, &'a str);
    impl fmt::Display for J<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            joined(f, self.0, self.1)
        }
    }

    #[test]
    fn joined_writes_what_path_join_displays() {
        for base in [
            "/sys/fs/cgroup/cohost",
            "/run/x/",
            "/",
            "",
            "rel/dir",
            "/a//b",
        ] {
            let b = Path::new(base);
            assert_eq!(
                J(b, "db01").to_string(),
                b.join("db01").display().to_string(),
                "{base:?}"
            );
        }
        let own = Path::new("/srv/logs/db");
        let runtime = Path::new("/run/cohost");
        let shown = |own| {
            LogDir {
                own,
                runtime,
                id: "db01",
            }
            .to_string()
        };
        assert_eq!(shown(Some(own)), "/srv/logs/db");
        assert_eq!(
            shown(None),
            runtime.join("logs").join("db01").display().to_string()
        );
    }
}
