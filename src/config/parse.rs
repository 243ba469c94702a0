//! TOML files -> raw items that keep their templates and their lines.
//!
//! Only shapes and types are checked here; what needs the other items
//! (services, paths, `${}` variables, `after`) is `resolve`'s job.

use crate::config::reader::{At, Diags, Known, Source, Table};
use crate::model::{Origin, ServiceKind};

mod limits;
mod policy;
mod raw;

use limits::{parse_cpu_max, parse_rlimits, parse_umask};
pub use policy::signal_number;
use policy::{parse_check, parse_restart, parse_stop};
pub use raw::*;

pub const TOP: Known = &["supervisor", "service", "instance"];
pub const SUPERVISOR: Known = &["node", "on_event", "hook_timeout", "status_group", "cgroup"];

/// Keys a service and an instance share; an instance value overrides.
macro_rules! common_keys {
    ($($extra:literal),*) => {
        &[$($extra,)* "env", "pass_env", "ready", "stop", "restart", "health", "user", "group",
          "umask", "rlimits", "cwd", "shell", "isolate", "bind", "hostname_env", "strict_bind",
          "force_bind", "force_source", "on_event", "memory_max", "pids_max", "cpu_weight", "cpu_max"]
    };
}
pub const SERVICE: Known = common_keys!("type", "command", "process");
pub const INSTANCE: Known = common_keys!(
    "service",
    "address",
    "hostname",
    "port",
    "paths",
    "after",
    "address_mode",
    "interface",
    "prefix",
    "lock",
    "autostart",
    "enabled"
);
const PROCESS: Known = &["name", "command", "count"];
const CHECK: Known = &[
    "tcp",
    "command",
    "file",
    "process",
    "count",
    "file_fresh",
    "max_age",
    "send",
    "expect",
    "timeout",
    "interval",
];
const STOP: Known = &["command", "timeout", "signal"];
const RESTART: Known = &["policy", "max", "window", "backoff", "max_backoff"];
const ISOLATE: Known = &["uts", "mount", "private_tmp"];

/// Reads one file into `out`; problems go to `diags`.
pub fn parse_file(src: &Source, diags: &Diags, out: &mut RawDir) {
    let (doc, errors) = toml::de::DeTable::parse_recoverable(&src.text);
    if !errors.is_empty() {
        for e in errors {
            let line = e.span().map(|s| src.line_of(s.start)).unwrap_or(0);
            let msg = e.message().trim().replace('\n', " ");
            diags.push(
                &Origin {
                    file: src.path.clone(),
                    line,
                },
                format!("TOML syntax: {msg}"),
            );
        }
        // A file that does not parse is not read further: its half-parsed
        // items would only produce confusing follow-on errors.
        return;
    }
    let span = doc.span();
    let top = Table::new(src, diags, doc.get_ref(), "the file".into(), span, TOP);
    top.check_unknown();
    if let Some(t) = top.table("supervisor", "[supervisor]".into(), SUPERVISOR) {
        out.supervisors.push(parse_supervisor(&t));
    }
    if let Some(services) = top.table("service", "[service]".into(), &[]) {
        for (name, t) in named_tables(&services, "service", SERVICE) {
            if let Some(s) = parse_service(name, &t) {
                out.services.push(s);
            }
        }
    }
    if let Some(instances) = top.table("instance", "[instance]".into(), &[]) {
        for (id, t) in named_tables(&instances, "instance", INSTANCE) {
            out.instances.push(parse_instance(id, &t));
        }
    }
}

/// `[service.NAME]` / `[instance.ID]`: the children of a keyed table.
fn named_tables<'a, 'i>(
    parent: &Table<'a, 'i>,
    kind: &str,
    known: Known,
) -> Vec<(At<String>, Table<'a, 'i>)> {
    let mut out = Vec::new();
    let names: Vec<(String, Origin)> = parent.keys().map(|(k, o)| (k.to_string(), o)).collect();
    for (name, at) in names {
        let what = format!("[{kind}.{name}]");
        // `Table::table` asserts known keys; the children of [service] are free.
        match parent.child_table(&name, what, known) {
            Some(t) => out.push((At { v: name, at }, t)),
            None => parent.error(
                &at,
                format!(
                    "`{kind}.{name}` must be a table: write [{kind}.{name}] and its fields below it"
                ),
            ),
        }
    }
    out
}

fn parse_supervisor(t: &Table) -> RawSupervisor {
    t.check_unknown();
    RawSupervisor {
        at: t.at.clone(),
        node: t.string("node"),
        on_event: t.strings("on_event"),
        hook_timeout: t.duration("hook_timeout"),
        status_group: t.string("status_group"),
        cgroup: t.string("cgroup"),
    }
}

fn parse_kind(t: &Table) -> ServiceKind {
    match t.string("type") {
        None => ServiceKind::Simple,
        Some(s) => match s.v.as_str() {
            "simple" => ServiceKind::Simple,
            "forking" => ServiceKind::Forking,
            other => {
                t.error(
                    &s.at,
                    format!(
                        "`type` in {} is \"simple\" or \"forking\", not {other:?}",
                        t.what
                    ),
                );
                ServiceKind::Simple
            }
        },
    }
}

fn parse_service(name: At<String>, t: &Table) -> Option<RawService> {
    t.check_unknown();
    let kind = parse_kind(t);
    let command = t.string_or_strings("command");
    let mut processes = Vec::new();
    if let Some(list) = t.tables("process", &format!("{} process", t.what), PROCESS) {
        for p in list {
            p.check_unknown();
            let pname = p.string("name");
            let pcmd = p.string_or_strings("command");
            let count = p
                .int_in("count", 1, 10_000)
                .map(|c| c.v as u32)
                .unwrap_or(1);
            match (pname, pcmd) {
                (Some(n), Some(c)) => processes.push(RawProcess {
                    name: n,
                    command: c,
                    count,
                }),
                (None, _) => p.error(&p.at, format!("{} needs a `name`", p.what)),
                (_, None) => p.error(&p.at, format!("{} needs a `command`", p.what)),
            }
        }
    }
    let common = parse_common(t);
    Some(RawService {
        name,
        kind,
        command,
        processes,
        common,
    })
}

fn parse_instance(id: At<String>, t: &Table) -> RawInstance {
    t.check_unknown();
    RawInstance {
        service: t.string("service"),
        address: t.string("address"),
        hostname: t.string("hostname"),
        port: t.int_in("port", 1, 65535),
        paths: t.string_map("paths").unwrap_or_default(),
        after: t.strings("after"),
        address_mode: t.string("address_mode"),
        interface: t.string("interface"),
        prefix: t.int_in("prefix", 0, 128),
        lock: t.boolean("lock"),
        autostart: t.boolean("autostart"),
        enabled: t.boolean("enabled"),
        common: parse_common(t),
        id,
    }
}

fn parse_common(t: &Table) -> RawCommon {
    RawCommon {
        env: t.string_map("env"),
        pass_env: t.strings("pass_env"),
        ready: t
            .table("ready", format!("{} ready", t.what), CHECK)
            .map(|r| parse_check(&r)),
        stop: t
            .table("stop", format!("{} stop", t.what), STOP)
            .map(|s| parse_stop(&s)),
        restart: t
            .table("restart", format!("{} restart", t.what), RESTART)
            .map(|r| parse_restart(&r)),
        health: t
            .tables("health", &format!("{} health", t.what), CHECK)
            .map(|v| v.iter().map(parse_check).collect()),
        user: t.string("user"),
        group: t.string("group"),
        umask: parse_umask(t),
        rlimits: parse_rlimits(t),
        cwd: t.string("cwd"),
        shell: t.boolean("shell"),
        isolate: t
            .table("isolate", format!("{} isolate", t.what), ISOLATE)
            .map(|i| {
                i.check_unknown();
                RawIsolate {
                    uts: i.boolean("uts"),
                    mount: i.boolean("mount"),
                    private_tmp: i.boolean("private_tmp"),
                }
            }),
        bind: t.string_map("bind"),
        hostname_env: t.string("hostname_env"),
        strict_bind: t.boolean("strict_bind"),
        force_bind: t.boolean("force_bind"),
        force_source: t.boolean("force_source"),
        on_event: t.strings("on_event"),
        memory_max: t.size("memory_max"),
        pids_max: t.size("pids_max"),
        cpu_weight: t.int_in("cpu_weight", 1, 10_000),
        cpu_max: parse_cpu_max(t),
    }
}
