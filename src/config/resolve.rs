//! Raw items -> validated [`Config`]: services applied to instances, `${}`
//! substituted, every value checked, cross-instance rules enforced. Pure: no
//! host lookups (users, interfaces, files) happen here; see `preflight`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::checks;
use crate::config::parse::{RawCheck, RawCheckKind, RawCommon, RawDir, RawInstance, RawService};
use crate::config::reader::{At, Diags, did_you_mean};
use crate::config::subst::{SubstError, Vars};
use crate::model::*;

pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
const BUILTIN_VARS: &[&str] = &["id", "service", "address", "port", "hostname"];

/// `[A-Za-z0-9_.-]+`, not starting with `.` or `-`, no `..` (IDs become
/// file and cgroup names; `..` or `-x` there would be trouble).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && !id.contains("..")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn valid_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn valid_hostname(s: &str) -> bool {
    // sethostname(2): at most HOST_NAME_MAX (64) bytes; RFC 1123 labels.
    s.len() <= 64
        && !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// Absolute and without `.`/`..`: what a path in the instances file must be.
fn clean_absolute(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if !path.is_absolute() || p.contains('\0') {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The kernel's own trees a bind may not cover: /proc and /sys and
/// anything in them, and /dev itself (a device node below it, like
/// /dev/shm, may be an instance's own).
fn kernel_tree(inside: &Path) -> Option<&'static str> {
    ["/proc", "/sys"]
        .into_iter()
        .find(|k| inside.starts_with(k))
        .or_else(|| (inside == Path::new("/dev")).then_some("/dev"))
}

/// One path lies inside the other (or they are the same).
pub fn paths_overlap(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

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
        let address = ri
            .address
            .as_ref()
            .and_then(|a| match a.v.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.err(&a.at, format!("address {:?} is not an IP address", a.v));
                    None
                }
            });
        let hostname = ri.hostname.as_ref().and_then(|h| {
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
        });
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
        let limits = Limits {
            memory_max: self.c.memory_max.as_ref().and_then(|m| m.v),
            pids_max: self.c.pids_max.as_ref().and_then(|m| m.v),
            cpu_weight: self.c.cpu_weight.as_ref().map(|w| w.v as u64),
            cpu_max: self.c.cpu_max.as_ref().and_then(|m| m.v),
        };
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

    fn resolve_processes(&self) -> Vec<ProcessSpec> {
        let svc = self.svc;
        let mut out = Vec::new();
        match (&svc.command, svc.processes.is_empty()) {
            (Some(cmd), true) => {
                if let Some(argv) = self.sub_argv(cmd, "command") {
                    out.push(ProcessSpec {
                        name: svc.name.v.clone(),
                        argv,
                        count: 1,
                    });
                }
            }
            (None, false) => {
                if svc.kind == ServiceKind::Forking {
                    self.err(
                        &svc.name.at,
                        format!(
                            "[service.{}] is forking: it has one start `command`; count its daemons with a health check {{ process = \"NAME\", count = N }}",
                            svc.name.v
                        ),
                    );
                }
                let mut seen = BTreeSet::new();
                for p in &svc.processes {
                    if !valid_id(&p.name.v) {
                        self.err(
                            &p.name.at,
                            format!(
                                "process name {:?}: use letters, digits, `_`, `.`, `-`",
                                p.name.v
                            ),
                        );
                    } else if !seen.insert(p.name.v.clone()) {
                        self.err(
                            &p.name.at,
                            format!("process name `{}` is used twice", p.name.v),
                        );
                    }
                    if let Some(argv) =
                        self.sub_argv(&p.command, &format!("process {} command", p.name.v))
                    {
                        out.push(ProcessSpec {
                            name: p.name.v.clone(),
                            argv,
                            count: p.count,
                        });
                    }
                }
            }
            (Some(cmd), false) => self.err(
                &cmd.at,
                format!(
                    "[service.{}] has both `command` and [[service.{}.process]]: keep one",
                    svc.name.v, svc.name.v
                ),
            ),
            (None, true) => self.err(
                &svc.name.at,
                format!(
                    "[service.{}] needs `command = [...]` or [[service.{}.process]] entries",
                    svc.name.v, svc.name.v
                ),
            ),
        }
        out
    }

    fn resolve_run(
        &self,
        address: Option<IpAddr>,
        port: Option<u16>,
        hostname: &Option<String>,
        paths: &BTreeMap<String, PathBuf>,
    ) -> RunContext {
        let c = &self.c;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in c.env.iter().flatten() {
            if !valid_env_name(&k.v) {
                self.err(
                    &k.at,
                    format!("env name {:?} is not a valid variable name", k.v),
                );
                continue;
            }
            if k.v.starts_with("COHOST_") {
                self.err(
                    &k.at,
                    format!("env name {} is reserved (COHOST_* are set by cohost)", k.v),
                );
                continue;
            }
            if let Some(val) = self.sub(v, &format!("env.{}", k.v)) {
                env.insert(k.v.clone(), val);
            }
        }
        // Contract: the instance's own identity, nothing of another instance.
        env.insert("COHOST_INSTANCE".into(), self.id.to_string());
        if let Some(a) = address {
            env.insert("COHOST_ADDRESS".into(), a.to_string());
        }
        if let Some(p) = port {
            env.insert("COHOST_PORT".into(), p.to_string());
        }
        if let Some(h) = hostname {
            env.insert("COHOST_HOSTNAME".into(), h.clone());
        }
        for (k, p) in paths {
            env.insert(
                format!("COHOST_PATH_{}", k.to_ascii_uppercase()),
                p.display().to_string(),
            );
        }
        if let Some(h) = &c.hostname_env {
            if !valid_env_name(&h.v) {
                self.err(
                    &h.at,
                    format!("hostname_env {:?} is not a valid variable name", h.v),
                );
            } else if let Some(name) = hostname {
                env.insert(h.v.clone(), name.clone());
            } else {
                self.err(
                    &h.at,
                    "hostname_env is set but the instance has no `hostname`",
                );
            }
        }
        if let Some(pass) = &c.pass_env {
            for name in &pass.v {
                if !valid_env_name(name) {
                    self.err(
                        &pass.at,
                        format!("pass_env: {name:?} is not a valid variable name"),
                    );
                }
            }
        }
        let cwd = match &c.cwd {
            Some(s) => self
                .sub_path(s, "cwd")
                .unwrap_or_else(|| PathBuf::from("/")),
            None => paths
                .get("data")
                .cloned()
                .unwrap_or_else(|| PathBuf::from("/")),
        };
        let isolate = self.resolve_isolate(hostname);
        RunContext {
            env: env.into_iter().collect(),
            pass_env: c.pass_env.as_ref().map(|p| p.v.clone()).unwrap_or_default(),
            cwd,
            user: c.user.as_ref().map(|u| u.v.clone()),
            group: c.group.as_ref().map(|g| g.v.clone()),
            umask: c.umask.as_ref().map(|u| u.v),
            rlimits: c.rlimits.as_ref().map(|r| r.v.clone()).unwrap_or_default(),
            isolate,
            hostname: hostname.clone(),
            shell: c.shell.as_ref().is_some_and(|s| s.v),
        }
    }

    fn resolve_isolate(&self, hostname: &Option<String>) -> Isolation {
        let c = &self.c;
        let raw = c.isolate.clone().unwrap_or_default();
        let mut iso = Isolation {
            uts: raw.uts.as_ref().is_some_and(|b| b.v),
            mount: raw.mount.as_ref().is_some_and(|b| b.v),
            private_tmp: raw.private_tmp.as_ref().is_some_and(|b| b.v),
            bind: Vec::new(),
        };
        if iso.uts && hostname.is_none() {
            let at = raw
                .uts
                .as_ref()
                .map(|b| b.at.clone())
                .unwrap_or_else(|| self.ri.id.at.clone());
            self.err(&at, "isolate.uts needs the instance's `hostname`");
        }
        for (dst, src) in c.bind.iter().flatten() {
            let Some(inside) = clean_absolute(&dst.v) else {
                self.err(
                    &dst.at,
                    format!("bind: {:?} must be an absolute path", dst.v),
                );
                continue;
            };
            if inside == Path::new("/") {
                self.err(&dst.at, "bind: cannot bind over /");
                continue;
            }
            if let Some(k) = kernel_tree(&inside) {
                self.err(
                    &dst.at,
                    format!(
                        "bind: cannot bind over {} ({k} belongs to the kernel: the instance's processes and cohost's own checks need the real one); bind somewhere else",
                        inside.display()
                    ),
                );
                continue;
            }
            if let Some(shown) = self.sub_path(src, &format!("bind.\"{}\"", dst.v)) {
                iso.bind.push((inside, shown));
            }
        }
        if iso.private_tmp {
            // A private /tmp is an empty tmpfs over /tmp: anything of the
            // instance's own below /tmp would vanish from its view.
            let tmp = Path::new("/tmp");
            let hidden: Vec<String> = self
                .ri
                .paths
                .iter()
                .filter_map(|(k, v)| {
                    clean_absolute(&v.v)
                        .filter(|p| p.starts_with(tmp))
                        .map(|_| format!("paths.{}", k.v))
                })
                .chain(
                    iso.bind
                        .iter()
                        .filter(|(i, s)| i.starts_with(tmp) || s.starts_with(tmp))
                        .map(|(i, _)| format!("bind \"{}\"", i.display())),
                )
                .collect();
            if !hidden.is_empty() {
                let at = raw
                    .private_tmp
                    .as_ref()
                    .map(|b| b.at.clone())
                    .unwrap_or_else(|| self.ri.id.at.clone());
                self.err(
                    &at,
                    format!("isolate.private_tmp hides /tmp, where {} live(s); move them out of /tmp or drop private_tmp", hidden.join(", ")),
                );
            }
        }
        iso
    }

    fn check(&self, rc: &RawCheck, what: &str) -> Option<Check> {
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

    fn resolve_ready(&self) -> ReadySpec {
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

    fn resolve_stop(&self) -> StopSpec {
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

    fn resolve_restart(&self) -> RestartSpec {
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

    fn resolve_health(&self) -> Vec<HealthCheck> {
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

    fn resolve_address_mode(&self, address: Option<IpAddr>) -> AddressMode {
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

    fn resolve_lock(&self, paths: &BTreeMap<String, PathBuf>) -> Option<PathBuf> {
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
