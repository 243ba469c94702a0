//! TOML files -> raw items that keep their templates and their lines.
//!
//! Only shapes and types are checked here; what needs the other items
//! (services, paths, `${}` variables, `after`) is `resolve`'s job.

use std::time::Duration;

use crate::config::reader::{At, Diags, Known, Source, Table};
use crate::model::{Origin, Rlimit, ServiceKind};

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

#[derive(Debug, Clone)]
pub enum RawCheckKind {
    Tcp(At<String>),
    Command(At<Vec<String>>),
    File(At<String>),
    Process(At<String>, u32),
    FileFresh(At<String>, Duration),
}

#[derive(Debug, Clone)]
pub struct RawCheck {
    pub kind: Option<RawCheckKind>,
    pub send: Option<At<String>>,
    pub expect: Option<At<String>>,
    pub timeout: Option<At<Duration>>,
    pub interval: Option<At<Duration>>,
    pub at: Origin,
}

#[derive(Debug, Clone)]
pub struct RawStop {
    pub command: Option<At<Vec<String>>>,
    pub timeout: Option<At<Duration>>,
    pub signal: Option<At<i32>>,
}

#[derive(Debug, Clone)]
pub struct RawRestart {
    pub policy: Option<At<String>>,
    pub max: Option<At<i64>>,
    pub window: Option<At<Duration>>,
    pub backoff: Option<At<Duration>>,
    pub max_backoff: Option<At<Duration>>,
    pub at: Origin,
}

#[derive(Debug, Clone, Default)]
pub struct RawIsolate {
    pub uts: Option<At<bool>>,
    pub mount: Option<At<bool>>,
    pub private_tmp: Option<At<bool>>,
}

pub type StrMap = Vec<(At<String>, At<String>)>;

/// The fields a service and an instance share.
#[derive(Debug, Clone, Default)]
pub struct RawCommon {
    pub env: Option<StrMap>,
    pub pass_env: Option<At<Vec<String>>>,
    pub ready: Option<RawCheck>,
    pub stop: Option<RawStop>,
    pub restart: Option<RawRestart>,
    pub health: Option<Vec<RawCheck>>,
    pub user: Option<At<String>>,
    pub group: Option<At<String>>,
    pub umask: Option<At<u32>>,
    pub rlimits: Option<At<Vec<Rlimit>>>,
    pub cwd: Option<At<String>>,
    pub shell: Option<At<bool>>,
    pub isolate: Option<RawIsolate>,
    pub bind: Option<StrMap>,
    pub hostname_env: Option<At<String>>,
    pub strict_bind: Option<At<bool>>,
    pub force_bind: Option<At<bool>>,
    pub force_source: Option<At<bool>>,
    pub on_event: Option<At<Vec<String>>>,
    pub memory_max: Option<At<Option<u64>>>,
    pub pids_max: Option<At<Option<u64>>>,
    pub cpu_weight: Option<At<i64>>,
    pub cpu_max: Option<At<Option<(u64, u64)>>>,
}

impl RawCommon {
    /// `self` (an instance) over `base` (its service); `env` is merged.
    pub fn over(&self, base: &RawCommon) -> RawCommon {
        let env = match (&base.env, &self.env) {
            (None, None) => None,
            (b, s) => {
                let mut v = b.clone().unwrap_or_default();
                for (k, val) in s.iter().flatten() {
                    v.retain(|(bk, _)| bk.v != k.v);
                    v.push((k.clone(), val.clone()));
                }
                Some(v)
            }
        };
        macro_rules! pick {
            ($f:ident) => {
                self.$f.clone().or_else(|| base.$f.clone())
            };
        }
        RawCommon {
            env,
            pass_env: pick!(pass_env),
            ready: pick!(ready),
            stop: pick!(stop),
            restart: pick!(restart),
            health: pick!(health),
            user: pick!(user),
            group: pick!(group),
            umask: pick!(umask),
            rlimits: pick!(rlimits),
            cwd: pick!(cwd),
            shell: pick!(shell),
            isolate: pick!(isolate),
            bind: pick!(bind),
            hostname_env: pick!(hostname_env),
            strict_bind: pick!(strict_bind),
            force_bind: pick!(force_bind),
            force_source: pick!(force_source),
            on_event: pick!(on_event),
            memory_max: pick!(memory_max),
            pids_max: pick!(pids_max),
            cpu_weight: pick!(cpu_weight),
            cpu_max: pick!(cpu_max),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RawProcess {
    pub name: At<String>,
    pub command: At<Vec<String>>,
    pub count: u32,
}

#[derive(Debug, Clone)]
pub struct RawService {
    pub name: At<String>,
    pub kind: ServiceKind,
    pub command: Option<At<Vec<String>>>,
    pub processes: Vec<RawProcess>,
    pub common: RawCommon,
}

#[derive(Debug, Clone)]
pub struct RawInstance {
    pub id: At<String>,
    pub service: Option<At<String>>,
    pub address: Option<At<String>>,
    pub hostname: Option<At<String>>,
    pub port: Option<At<i64>>,
    pub paths: StrMap,
    pub after: Option<At<Vec<String>>>,
    pub address_mode: Option<At<String>>,
    pub interface: Option<At<String>>,
    pub prefix: Option<At<i64>>,
    pub lock: Option<At<bool>>,
    pub autostart: Option<At<bool>>,
    pub enabled: Option<At<bool>>,
    pub common: RawCommon,
}

#[derive(Debug, Clone)]
pub struct RawSupervisor {
    pub at: Origin,
    pub node: Option<At<String>>,
    pub on_event: Option<At<Vec<String>>>,
    pub hook_timeout: Option<At<Duration>>,
    pub status_group: Option<At<String>>,
    pub cgroup: Option<At<String>>,
}

/// Everything read from one directory.
#[derive(Debug, Default)]
pub struct RawDir {
    pub supervisors: Vec<RawSupervisor>,
    pub services: Vec<RawService>,
    pub instances: Vec<RawInstance>,
}

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

fn parse_check(t: &Table) -> RawCheck {
    t.check_unknown();
    let mut kinds = Vec::new();
    if let Some(s) = t.string("tcp") {
        kinds.push(RawCheckKind::Tcp(s));
    }
    if let Some(c) = t.string_or_strings("command") {
        kinds.push(RawCheckKind::Command(c));
    }
    if let Some(f) = t.string("file") {
        kinds.push(RawCheckKind::File(f));
    }
    if let Some(p) = t.string("process") {
        let count = t
            .int_in("count", 1, 100_000)
            .map(|c| c.v as u32)
            .unwrap_or(1);
        kinds.push(RawCheckKind::Process(p, count));
    } else if t.has("count") {
        t.error(
            &t.origin_of("count"),
            format!("`count` in {} goes with `process`", t.what),
        );
    }
    if let Some(f) = t.string("file_fresh") {
        match t.duration("max_age") {
            Some(age) => kinds.push(RawCheckKind::FileFresh(f, age.v)),
            None => t.error(
                &f.at,
                format!(
                    "{}: `file_fresh` needs `max_age`, e.g. max_age = \"5m\"",
                    t.what
                ),
            ),
        }
    } else if t.has("max_age") {
        t.error(
            &t.origin_of("max_age"),
            format!("`max_age` in {} goes with `file_fresh`", t.what),
        );
    }
    if kinds.len() > 1 {
        t.error(
            &t.at,
            format!(
                "{} has more than one check (tcp, command, file, process, file_fresh): one per entry",
                t.what
            ),
        );
    }
    let send = t.string("send");
    let expect = t.string("expect");
    if (send.is_some() || expect.is_some()) && !matches!(kinds.first(), Some(RawCheckKind::Tcp(_)))
    {
        t.error(
            &t.at,
            format!("`send`/`expect` in {} go with `tcp`", t.what),
        );
    }
    RawCheck {
        kind: kinds.into_iter().next(),
        send,
        expect,
        timeout: t.duration("timeout"),
        interval: t.duration("interval"),
        at: t.at.clone(),
    }
}

fn parse_stop(t: &Table) -> RawStop {
    t.check_unknown();
    let signal = t.string("signal").and_then(|s| match signal_number(&s.v) {
        Some(n) => Some(At { v: n, at: s.at }),
        None => {
            t.error(
                &s.at,
                format!(
                    "{}: unknown signal {:?}; write e.g. \"TERM\", \"INT\", \"QUIT\"",
                    t.what, s.v
                ),
            );
            None
        }
    });
    RawStop {
        command: t.string_or_strings("command"),
        timeout: t.duration("timeout"),
        signal,
    }
}

pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    Some(match n {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "ABRT" => libc::SIGABRT,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

fn parse_restart(t: &Table) -> RawRestart {
    t.check_unknown();
    RawRestart {
        policy: t.string("policy"),
        max: t.int_in("max", 0, 1_000_000),
        window: t.duration("window"),
        backoff: t.duration("backoff"),
        max_backoff: t.duration("max_backoff"),
        at: t.at.clone(),
    }
}

fn parse_umask(t: &Table) -> Option<At<u32>> {
    let s = t.string("umask")?;
    match u32::from_str_radix(&s.v, 8) {
        Ok(m) if m <= 0o777 => Some(At { v: m, at: s.at }),
        _ => {
            t.error(
                &s.at,
                format!(
                    "`umask` in {} is an octal string like \"022\", not {:?}",
                    t.what, s.v
                ),
            );
            None
        }
    }
}

const RLIMITS: &[(&str, i32)] = &[
    ("as", libc::RLIMIT_AS as i32),
    ("core", libc::RLIMIT_CORE as i32),
    ("cpu", libc::RLIMIT_CPU as i32),
    ("data", libc::RLIMIT_DATA as i32),
    ("fsize", libc::RLIMIT_FSIZE as i32),
    ("locks", libc::RLIMIT_LOCKS as i32),
    ("memlock", libc::RLIMIT_MEMLOCK as i32),
    ("msgqueue", libc::RLIMIT_MSGQUEUE as i32),
    ("nice", libc::RLIMIT_NICE as i32),
    ("nofile", libc::RLIMIT_NOFILE as i32),
    ("nproc", libc::RLIMIT_NPROC as i32),
    ("rss", libc::RLIMIT_RSS as i32),
    ("rtprio", libc::RLIMIT_RTPRIO as i32),
    ("sigpending", libc::RLIMIT_SIGPENDING as i32),
    ("stack", libc::RLIMIT_STACK as i32),
];

fn parse_rlimits(t: &Table) -> Option<At<Vec<Rlimit>>> {
    let entries = t.scalar_map("rlimits")?;
    let names: Vec<&str> = RLIMITS.iter().map(|(n, _)| *n).collect();
    let mut out = Vec::new();
    for (k, v) in entries {
        let Some((_, res)) = RLIMITS.iter().find(|(n, _)| *n == k.v) else {
            let hint = crate::config::reader::did_you_mean(&k.v, &names)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_else(|| format!("; known: {}", names.join(", ")));
            t.error(
                &k.at,
                format!("unknown rlimit `{}` in {}{hint}", k.v, t.what),
            );
            continue;
        };
        // "SOFT:HARD", or one value for both.
        let (soft, hard) = match v.v.split_once(':') {
            Some((s, h)) => (s, h),
            None => (v.v.as_str(), v.v.as_str()),
        };
        match (
            crate::config::reader::parse_size(soft),
            crate::config::reader::parse_size(hard),
        ) {
            (Some(s), Some(h)) => out.push(Rlimit {
                resource: *res,
                name: k.v.clone(),
                soft: s,
                hard: h,
            }),
            _ => t.error(
                &v.at,
                format!(
                    "rlimit `{}` in {}: write a number, \"unlimited\" or \"SOFT:HARD\", not {:?}",
                    k.v, t.what, v.v
                ),
            ),
        }
    }
    Some(At {
        v: out,
        at: t.origin_of("rlimits"),
    })
}

/// "50%" of one CPU, "QUOTA PERIOD" in microseconds, or "max".
fn parse_cpu_max(t: &Table) -> Option<At<Option<(u64, u64)>>> {
    let s = t.string("cpu_max")?;
    let v = s.v.trim();
    let parsed = if v == "max" {
        Some(None)
    } else if let Some(p) = v.strip_suffix('%') {
        p.trim()
            .parse::<u64>()
            .ok()
            .filter(|p| *p > 0)
            .map(|p| Some((p * 1000, 100_000)))
    } else {
        let mut it = v.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(q), Some(p), None) => match (q.parse(), p.parse()) {
                (Ok(q), Ok(p)) if q > 0 && p > 0 => Some(Some((q, p))),
                _ => None,
            },
            _ => None,
        }
    };
    match parsed {
        Some(x) => Some(At { v: x, at: s.at }),
        None => {
            t.error(
                &s.at,
                format!(
                    "`cpu_max` in {}: write \"50%\" (of one CPU), \"QUOTA PERIOD\" in µs, or \"max\", not {v:?}",
                    t.what
                ),
            );
            None
        }
    }
}
