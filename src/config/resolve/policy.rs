//! The instance's policies once its processes are known: health and
//! readiness checks, how it stops, when it restarts, how its address is
//! held and where its lock lives.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{
    DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT, DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT,
    Resolver,
};
use crate::config::parse::{RawCheck, RawCheckKind};
use crate::model::*;

impl Resolver<'_> {
    pub(super) fn check(&self, rc: &RawCheck, what: &str) -> Option<Check> {
        Some(match rc.kind.as_ref()? {
            RawCheckKind::Tcp(s) => {
                let v = self.sub(s, &format!("{what}.tcp"))?;
                let addr = match v.parse::<SocketAddr>() {
                    Ok(a) => a,
                    Err(_) => {
                        self.err(&s.at, format!("{what}.tcp {v:?} is not ADDRESS:PORT"));
                        return None;
                    }
                };
                Check::Tcp {
                    addr,
                    send: match &rc.send {
                        Some(s) => Some(self.sub(s, &format!("{what}.send"))?),
                        None => None,
                    },
                    expect: match &rc.expect {
                        Some(s) => Some(self.sub(s, &format!("{what}.expect"))?),
                        None => None,
                    },
                }
            }
            RawCheckKind::Command(argv) => {
                Check::Command(self.sub_argv(argv, &format!("{what}.command"))?)
            }
            RawCheckKind::File(f) => Check::File(self.sub_path(f, &format!("{what}.file"))?),
            RawCheckKind::Process(name, count) => Check::Process {
                name: name.v.clone(),
                count: *count,
            },
            RawCheckKind::FileFresh(f, age) => Check::FileFresh {
                path: self.sub_path(f, &format!("{what}.file_fresh"))?,
                max_age: *age,
            },
        })
    }

    pub(super) fn resolve_ready(&self) -> ReadySpec {
        match &self.c.ready {
            None => ReadySpec {
                check: None,
                timeout: DEFAULT_START_TIMEOUT,
            },
            Some(r) => ReadySpec {
                check: self.check(r, "ready"),
                timeout: r.timeout.as_ref().map_or(DEFAULT_START_TIMEOUT, |t| t.v),
            },
        }
    }

    pub(super) fn resolve_stop(&self) -> StopSpec {
        let s = self.c.stop.as_ref();
        StopSpec {
            command: s
                .and_then(|s| s.command.as_ref())
                .and_then(|c| self.sub_argv(c, "stop.command")),
            timeout: s
                .and_then(|s| s.timeout.as_ref())
                .map_or(DEFAULT_STOP_TIMEOUT, |t| t.v),
            signal: s
                .and_then(|s| s.signal.as_ref())
                .map_or(libc::SIGTERM, |s| s.v),
        }
    }

    pub(super) fn resolve_restart(&self) -> RestartSpec {
        let mut spec = RestartSpec {
            policy: RestartPolicy::No,
            max: 3,
            window: Duration::from_secs(300),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        };
        let Some(r) = &self.c.restart else {
            return spec;
        };
        if let Some(p) = &r.policy {
            spec.policy = match p.v.as_str() {
                "no" => RestartPolicy::No,
                "on-failure" => RestartPolicy::OnFailure,
                "always" => RestartPolicy::Always,
                other => {
                    self.err(
                        &p.at,
                        format!(
                            "restart.policy is \"no\", \"on-failure\" or \"always\", not {other:?}"
                        ),
                    );
                    RestartPolicy::No
                }
            };
        }
        if let Some(m) = &r.max {
            spec.max = m.v as u32;
        }
        if let Some(w) = &r.window {
            spec.window = w.v;
        }
        if let Some(b) = &r.backoff {
            spec.backoff = b.v;
        }
        if let Some(b) = &r.max_backoff {
            spec.max_backoff = b.v;
        }
        if spec.max_backoff < spec.backoff {
            self.err(&r.at, "restart.max_backoff is shorter than restart.backoff");
        }
        spec
    }

    pub(super) fn resolve_health(&self) -> Vec<HealthCheck> {
        let mut out = Vec::new();
        for (i, rc) in self.c.health.iter().flatten().enumerate() {
            if rc.kind.is_none() {
                self.err(
                    &rc.at,
                    format!(
                        "health[{}] names no check: add tcp, command, file, process or file_fresh",
                        i + 1
                    ),
                );
                continue;
            }
            if let Some(check) = self.check(rc, &format!("health[{}]", i + 1)) {
                out.push(HealthCheck {
                    check,
                    interval: rc
                        .interval
                        .as_ref()
                        .map_or(DEFAULT_HEALTH_INTERVAL, |d| d.v),
                    timeout: rc.timeout.as_ref().map_or(DEFAULT_HEALTH_TIMEOUT, |d| d.v),
                });
            }
        }
        for h in &out {
            if h.interval.is_zero() || h.timeout.is_zero() {
                self.err(
                    &self.ri.id.at,
                    "health check interval and timeout must be above zero",
                );
            }
        }
        out
    }

    pub(super) fn resolve_address_mode(&self, address: Option<IpAddr>) -> AddressMode {
        let ri = self.ri;
        let mode = ri.address_mode.as_ref().map(|m| m.v.as_str());
        match (mode, address) {
            (None, Some(_)) | (Some("check"), Some(_)) => AddressMode::Check,
            (None, None) | (Some("none"), _) => AddressMode::None,
            (Some("own"), Some(a)) => {
                let Some(iface) = &ri.interface else {
                    self.err(
                        &ri.address_mode.as_ref().unwrap().at,
                        "address_mode = \"own\" needs `interface = \"eth0\"` (where to add the address)",
                    );
                    return AddressMode::None;
                };
                let max: i64 = if a.is_ipv4() { 32 } else { 128 };
                let prefix = ri.prefix.as_ref().map_or(max, |p| p.v);
                if prefix > max {
                    self.err(
                        &ri.prefix.as_ref().unwrap().at,
                        format!("prefix {prefix} is too long for {a}"),
                    );
                }
                AddressMode::Own {
                    interface: iface.v.clone(),
                    prefix: prefix as u8,
                }
            }
            (Some("check" | "own"), None) => {
                self.err(
                    &ri.address_mode.as_ref().unwrap().at,
                    "address_mode needs `address`",
                );
                AddressMode::None
            }
            (Some(other), _) => {
                self.err(
                    &ri.address_mode.as_ref().unwrap().at,
                    format!("address_mode is \"check\", \"own\" or \"none\", not {other:?}"),
                );
                AddressMode::None
            }
        }
    }

    pub(super) fn resolve_lock(&self, paths: &BTreeMap<String, PathBuf>) -> Option<PathBuf> {
        let wanted = self.ri.lock.as_ref().is_none_or(|l| l.v);
        if !wanted {
            return None;
        }
        // The instance's first shared path: `data` by convention, else the
        // first key. The lock travels with the disk.
        let dir = paths.get("data").or_else(|| paths.values().next())?;
        Some(dir.join(".cohost.lock"))
    }
}
