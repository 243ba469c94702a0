//! How each process runs: its argv (from `command` or `[[processes]]`), its
//! environment, user and working directory, and the isolation (namespaces,
//! bind paths) it runs in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::Resolver;
use super::names::{clean_absolute, kernel_tree, valid_env_name, valid_id};
use crate::model::*;

impl Resolver<'_> {
    pub(super) fn resolve_processes(&self) -> Vec<ProcessSpec> {
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

    pub(super) fn resolve_run(
        &self,
        address: Option<IpAddr>,
        port: Option<u16>,
        hostname: &Option<String>,
        paths: &BTreeMap<String, PathBuf>,
    ) -> RunContext {
        let c = &self.c;
        let env = self.resolve_env(address, port, hostname, paths);
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

    /// The environment the instance's processes get: its `env` (names
    /// checked, `${}` substituted), then the `COHOST_*` identity and the
    /// `hostname_env` name.
    fn resolve_env(
        &self,
        address: Option<IpAddr>,
        port: Option<u16>,
        hostname: &Option<String>,
        paths: &BTreeMap<String, PathBuf>,
    ) -> BTreeMap<String, String> {
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
        env
    }

    pub(super) fn resolve_isolate(&self, hostname: &Option<String>) -> Isolation {
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
}
