//! Raw items -> validated [`Config`]: services applied to instances, `${}`
//! substituted, every value checked, cross-instance rules enforced. Pure: no
//! host lookups (users, interfaces, files) happen here; see `preflight`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::checks;
use crate::config::parse::{RawCommon, RawDir, RawInstance, RawService};
use crate::config::reader::{At, Diags, did_you_mean};
use crate::config::subst::{SubstError, Vars};
use crate::model::*;

mod names;
mod policy;
mod run;

use names::{clean_absolute, valid_hostname};
pub use names::{paths_overlap, valid_id};

pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
const BUILTIN_VARS: &[&str] = &["id", "service", "address", "port", "hostname"];

pub fn resolve(raw: RawDir, dir: &Path, diags: &Diags) -> Config {
    let supervisor = resolve_supervisor(&raw, diags);
    let services = index_services(&raw.services, diags);
    let mut instances: BTreeMap<String, Arc<InstanceSpec>> = BTreeMap::new();
    let mut first_seen: BTreeMap<String, At<String>> = BTreeMap::new();
    for ri in &raw.instances {
        if !valid_id(&ri.id.v) {
            diags.push(
                &ri.id.at,
                format!(
                    "instance ID {:?} is not allowed: use letters, digits, `_`, `.`, `-` (at most 64, not starting with `.` or `-`, no `..`)",
                    ri.id.v
                ),
            );
            continue;
        }
        if let Some(first) = first_seen.get(&ri.id.v) {
            diags.push(
                &ri.id.at,
                format!(
                    "duplicate instance ID `{}`: already defined at {}; IDs are unique across the directory",
                    ri.id.v, first.at
                ),
            );
            continue;
        }
        first_seen.insert(ri.id.v.clone(), ri.id.clone());
        let Some(svc_name) = &ri.service else {
            diags.push(
                &ri.id.at,
                format!("[instance.{}] needs `service = \"NAME\"`", ri.id.v),
            );
            continue;
        };
        let Some(svc) = services.get(svc_name.v.as_str()) else {
            let names: Vec<&str> = services.keys().copied().collect();
            let hint = match did_you_mean(&svc_name.v, &names) {
                Some(s) => format!("; did you mean `{s}`?"),
                None if names.is_empty() => "; no [service.NAME] is defined".to_string(),
                None => format!("; defined: {}", names.join(", ")),
            };
            diags.push(
                &svc_name.at,
                format!(
                    "[instance.{}]: unknown service `{}`{hint}",
                    ri.id.v, svc_name.v
                ),
            );
            continue;
        };
        // Kept even when it had errors: the cross-instance checks below then
        // report everything in one pass (the Config is discarded anyway).
        let spec = Resolver::new(ri, svc, diags).resolve();
        instances.insert(ri.id.v.clone(), Arc::new(spec));
    }
    checks::check_addresses(&instances, diags);
    checks::check_paths(&instances, diags);
    checks::check_after(&raw.instances, &instances, &first_seen, diags);
    Config {
        dir: dir.to_path_buf(),
        supervisor,
        instances,
    }
}

fn resolve_supervisor(raw: &RawDir, diags: &Diags) -> SupervisorSpec {
    let mut spec = SupervisorSpec {
        hook_timeout: DEFAULT_HOOK_TIMEOUT,
        ..Default::default()
    };
    for extra in raw.supervisors.iter().skip(1) {
        diags.push(
            &extra.at,
            format!(
                "a second [supervisor] section (the first is at {}); keep one",
                raw.supervisors[0].at
            ),
        );
    }
    let Some(s) = raw.supervisors.first() else {
        return spec;
    };
    if let Some(n) = &s.node {
        if valid_hostname(&n.v) {
            spec.node = Some(n.v.clone());
        } else {
            diags.push(
                &n.at,
                format!("[supervisor] node {:?} is not a valid host name", n.v),
            );
        }
    }
    if let Some(h) = &s.on_event {
        spec.on_event = hooks(h, "[supervisor]", diags);
    }
    if let Some(t) = &s.hook_timeout {
        spec.hook_timeout = t.v;
    }
    spec.status_group = s.status_group.as_ref().map(|g| g.v.clone());
    if let Some(c) = &s.cgroup {
        spec.cgroup = match c.v.as_str() {
            "auto" => CgroupSetting::Auto,
            "off" => CgroupSetting::Off,
            p => match clean_absolute(p) {
                Some(p) => CgroupSetting::Under(p),
                None => {
                    diags.push(
                        &c.at,
                        format!("[supervisor] cgroup is \"auto\", \"off\" or an absolute path, not {p:?}"),
                    );
                    CgroupSetting::Auto
                }
            },
        };
    }
    spec
}

fn hooks(list: &At<Vec<String>>, what: &str, diags: &Diags) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for h in &list.v {
        if clean_absolute(h).is_some() {
            out.push(vec![h.clone()]);
        } else {
            diags.push(
                &list.at,
                format!("{what} on_event: hook {h:?} must be an absolute path to a program"),
            );
        }
    }
    out
}

fn index_services<'a>(list: &'a [RawService], diags: &Diags) -> BTreeMap<&'a str, &'a RawService> {
    let mut map: BTreeMap<&str, &RawService> = BTreeMap::new();
    for s in list {
        if !valid_id(&s.name.v) {
            diags.push(
                &s.name.at,
                format!(
                    "service name {:?}: use letters, digits, `_`, `.`, `-`",
                    s.name.v
                ),
            );
            continue;
        }
        if let Some(first) = map.get(s.name.v.as_str()) {
            diags.push(
                &s.name.at,
                format!(
                    "duplicate service `{}`: already defined at {}",
                    s.name.v, first.name.at
                ),
            );
            continue;
        }
        map.insert(&s.name.v, s);
    }
    map
}

/// Resolves one instance against its service.
struct Resolver<'a> {
    ri: &'a RawInstance,
    svc: &'a RawService,
    c: RawCommon,
    vars: Vars,
    diags: &'a Diags,
    id: &'a str,
}

impl<'a> Resolver<'a> {
    fn new(ri: &'a RawInstance, svc: &'a RawService, diags: &'a Diags) -> Self {
        Resolver {
            c: ri.common.over(&svc.common),
            ri,
            svc,
            vars: Vars::new(),
            diags,
            id: &ri.id.v,
        }
    }

    fn err(&self, at: &Origin, msg: impl std::fmt::Display) {
        self.diags
            .push(at, format!("[instance.{}]: {msg}", self.id));
    }

    /// Substitutes one template; errors name the variable and what is known.
    fn sub(&self, s: &At<String>, field: &str) -> Option<String> {
        match self.vars.subst(&s.v) {
            Ok(v) => Some(v),
            Err(SubstError::Unknown(name)) => {
                let known: Vec<&str> = self.vars.names().collect();
                let hint = did_you_mean(&name, &known)
                    .map(|k| format!("did you mean ${{{k}}}? "))
                    .unwrap_or_default();
                self.err(
                    &s.at,
                    format!(
                        "unknown variable ${{{name}}} in `{field}`; {hint}known: {}",
                        known
                            .iter()
                            .map(|k| format!("${{{k}}}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                );
                None
            }
            Err(SubstError::Unset(name)) => {
                self.err(
                    &s.at,
                    format!("`{field}` uses ${{{name}}} but the instance sets no `{name}`"),
                );
                None
            }
            Err(SubstError::Unterminated) => {
                self.err(
                    &s.at,
                    format!("`{field}`: `${{` without a closing `}}` (write $${{ for a literal)"),
                );
                None
            }
        }
    }

    fn sub_argv(&self, argv: &At<Vec<String>>, field: &str) -> Option<Vec<String>> {
        if argv.v.is_empty() {
            self.err(&argv.at, format!("`{field}` is empty"));
            return None;
        }
        let mut out = Vec::with_capacity(argv.v.len());
        let mut ok = true;
        for a in &argv.v {
            let at = At {
                v: a.clone(),
                at: argv.at.clone(),
            };
            match self.sub(&at, field) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        if self.c.shell.as_ref().is_some_and(|s| s.v) {
            if out.len() != 1 {
                self.err(
                    &argv.at,
                    format!("`{field}` with shell = true is one string: the shell splits it"),
                );
                return None;
            }
            return Some(vec!["/bin/sh".into(), "-c".into(), out.remove(0)]);
        }
        if argv.v.len() == 1 && argv.v[0].contains(' ') {
            // A program path with a space and no arguments is rare; a
            // command written as one string is common, and would fail to
            // exec with a confusing "not found".
            self.err(
                &argv.at,
                format!(
                    "`{field}` is one word {:?}: commands are argv lists, write [\"prog\", \"arg\", …], or set shell = true",
                    out[0]
                ),
            );
            return None;
        }
        Some(out)
    }

    fn sub_path(&self, s: &At<String>, field: &str) -> Option<PathBuf> {
        let v = self.sub(s, field)?;
        match clean_absolute(&v) {
            Some(p) => Some(p),
            None => {
                self.err(
                    &s.at,
                    format!("`{field}` must be an absolute path without `.` or `..`, not {v:?}"),
                );
                None
            }
        }
    }

    fn resolve(mut self) -> InstanceSpec {
        let ri = self.ri;
        let address = self.resolve_address();
        let hostname = self.resolve_hostname();
        let port = ri.port.as_ref().map(|p| p.v as u16);

        self.vars.set("id", Some(ri.id.v.clone()));
        self.vars.set("service", Some(self.svc.name.v.clone()));
        self.vars.set("address", address.map(|a| a.to_string()));
        self.vars.set("port", port.map(|p| p.to_string()));
        self.vars.set("hostname", hostname.clone());

        let paths = self.resolve_paths();
        for (k, p) in &paths {
            self.vars.set(k, Some(p.display().to_string()));
        }

        let processes = self.resolve_processes();
        let run = self.resolve_run(address, port, &hostname, &paths);
        let ready = self.resolve_ready();
        let stop = self.resolve_stop();
        let restart = self.resolve_restart();
        let health = self.resolve_health();
        let address_mode = self.resolve_address_mode(address);
        let lock = self.resolve_lock(&paths);
        let on_event = self
            .c
            .on_event
            .as_ref()
            .map(|h| hooks(h, &format!("[instance.{}]", self.id), self.diags))
            .unwrap_or_default();
        let strict_bind = self.c.strict_bind.as_ref().is_some_and(|b| b.v);
        if strict_bind && (address.is_none() || port.is_none()) {
            self.err(
                &ri.id.at,
                "strict_bind needs the instance's `address` and `port`",
            );
        }
        let force_bind = self.c.force_bind.as_ref().is_some_and(|b| b.v);
        let force_source = self.c.force_source.as_ref().is_some_and(|b| b.v);
        for (on, what) in [(force_bind, "force_bind"), (force_source, "force_source")] {
            if on && address.is_none() {
                self.err(
                    &ri.id.at,
                    format!(
                        "{what} needs the instance's `address` (the address the kernel keeps it on)"
                    ),
                );
            }
        }
        let after = ri.after.as_ref().map(|a| a.v.clone()).unwrap_or_default();
        let limits = self.resolve_limits();
        InstanceSpec {
            id: ri.id.v.clone(),
            service: self.svc.name.v.clone(),
            kind: self.svc.kind,
            origin: ri.id.at.clone(),
            address,
            port,
            hostname,
            log_dir: paths.get("log").cloned(),
            paths,
            after,
            processes,
            run,
            ready,
            stop,
            restart,
            health,
            address_mode,
            lock,
            strict_bind,
            force_bind,
            force_source,
            on_event,
            autostart: ri.autostart.as_ref().is_some_and(|a| a.v),
            enabled: ri.enabled.as_ref().is_none_or(|e| e.v),
            limits,
        }
    }

    /// `address`, which must be an IP address.
    fn resolve_address(&self) -> Option<IpAddr> {
        self.ri
            .address
            .as_ref()
            .and_then(|a| match a.v.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.err(&a.at, format!("address {:?} is not an IP address", a.v));
                    None
                }
            })
    }

    /// `hostname`, which must be a valid host name.
    fn resolve_hostname(&self) -> Option<String> {
        self.ri.hostname.as_ref().and_then(|h| {
            if valid_hostname(&h.v) {
                Some(h.v.clone())
            } else {
                self.err(
                    &h.at,
                    format!(
                        "hostname {:?} is not a valid host name (RFC 1123, at most 64 bytes)",
                        h.v
                    ),
                );
                None
            }
        })
    }

    /// The cgroup limits.
    fn resolve_limits(&self) -> Limits {
        Limits {
            memory_max: self.c.memory_max.as_ref().and_then(|m| m.v),
            pids_max: self.c.pids_max.as_ref().and_then(|m| m.v),
            cpu_weight: self.c.cpu_weight.as_ref().map(|w| w.v as u64),
            cpu_max: self.c.cpu_max.as_ref().and_then(|m| m.v),
        }
    }

    fn resolve_paths(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.ri.paths {
            if BUILTIN_VARS.contains(&k.v.as_str()) {
                self.err(
                    &k.at,
                    format!(
                        "paths key `{}` would hide the built-in ${{{}}}; rename it",
                        k.v, k.v
                    ),
                );
                continue;
            }
            if !k
                .v
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                self.err(
                    &k.at,
                    format!(
                        "paths key `{}`: use lower-case letters, digits and `_`",
                        k.v
                    ),
                );
                continue;
            }
            // Paths may use the built-ins (${id}) but not each other.
            if let Some(p) = self.sub_path(v, &format!("paths.{}", k.v)) {
                out.insert(k.v.clone(), p);
            }
        }
        out
    }
}
