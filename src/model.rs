//! Validated, fully substituted types: what the supervisor acts on.
//!
//! Everything here was produced by `config::resolve` from the instances file;
//! no `${}` is left, every path is absolute, every duration parsed. Nothing in
//! this module touches the host.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod env;
pub use env::Env;

/// Where an item was declared: shown in errors as `FILE:LINE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<std::path::Path>,
    pub line: u32,
}

/// The file only: the line an item was declared on is not part of what
/// it is (a reload compares fingerprints; a comment added above an
/// instance changes nothing). Consistent with `Eq`: equal origins hash
/// the same.
impl std::hash::Hash for Origin {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.file.hash(h);
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The whole instances directory after validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub supervisor: SupervisorSpec,
    pub instances: BTreeMap<String, Arc<InstanceSpec>>,
}

impl Config {
    pub fn get(&self, id: &str) -> Option<&Arc<InstanceSpec>> {
        self.instances.get(id)
    }
}

/// `[supervisor]`: settings of the daemon itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SupervisorSpec {
    /// Node name written into locks and passed to hooks; default: the host name.
    pub node: Option<String>,
    /// Hooks run on every state change of every instance.
    pub on_event: Vec<Vec<String>>,
    pub hook_timeout: Duration,
    /// Group whose members may run the read-only requests (status, list, monitor).
    pub status_group: Option<String>,
    pub cgroup: CgroupSetting,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum CgroupSetting {
    /// Use a writable cgroup v2 hierarchy when one is mounted, else fall back.
    #[default]
    Auto,
    /// Never use cgroups: process-group tracking only.
    Off,
    /// Use this directory (inside a cgroup v2 mount) as the parent of the instances.
    Under(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// The command is the service; its exit is the instance failing.
    Simple,
    /// The command is a start script that exits 0 after launching daemons; the
    /// instance lives as long as any process it launched lives.
    Forking,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Simple => "simple",
            ServiceKind::Forking => "forking",
        }
    }
}

/// One process of a service, started `count` times.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub count: u32,
}

/// A probe of the instance: readiness at start, health afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Check {
    /// Connect; with `send`, write it; with `expect`, read until it appears.
    Tcp {
        addr: SocketAddr,
        send: Option<String>,
        expect: Option<String>,
    },
    /// Run in the instance's context; exit 0 is success.
    Command(Vec<String>),
    /// The file exists.
    File(PathBuf),
    /// At least `count` processes of the instance have this name.
    Process { name: String, count: u32 },
    /// The file was modified less than `max_age` ago.
    FileFresh { path: PathBuf, max_age: Duration },
}

impl Check {
    /// Short human description used in messages: "tcp 10.0.0.1:9003".
    pub fn describe(&self) -> String {
        match self {
            Check::Tcp { addr, expect, .. } => match expect {
                Some(e) => format!("tcp {addr} expecting {e:?}"),
                None => format!("tcp {addr}"),
            },
            Check::Command(argv) => format!("command {}", argv.join(" ")),
            Check::File(p) => format!("file {}", p.display()),
            Check::Process { name, count } => format!("process {name} x{count}"),
            Check::FileFresh { path, max_age } => format!(
                "file_fresh {} (younger than {})",
                path.display(),
                humantime::format_duration(*max_age)
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadySpec {
    pub check: Option<Check>,
    /// Start timeout: address wait + spawn + readiness.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StopSpec {
    pub command: Option<Vec<String>>,
    /// After this, SIGKILL to whatever of the instance is left.
    pub timeout: Duration,
    /// Sent to every process when there is no stop command (default TERM).
    pub signal: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    No,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// At most this many restarts within `window`, then `failed`.
    pub max: u32,
    pub window: Duration,
    /// First delay; doubled per consecutive restart up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Isolation {
    /// Own UTS namespace whose host name is the logical host name.
    pub uts: bool,
    /// Own mount namespace (implied by `bind` and `private_tmp`).
    pub mount: bool,
    pub private_tmp: bool,
    /// (path seen inside, instance directory shown there)
    pub bind: Vec<(PathBuf, PathBuf)>,
}

impl Isolation {
    pub fn needs_mount_ns(&self) -> bool {
        self.mount || self.private_tmp || !self.bind.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rlimit {
    pub resource: i32,
    pub name: String,
    /// `None` is unlimited.
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Everything a process of the instance is started with, beyond argv.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunContext {
    pub env: Env,
    /// Variables of the supervisor's environment passed on (beyond PATH,
    /// LANG, TZ).
    pub pass_env: Vec<String>,
    pub cwd: PathBuf,
    pub user: Option<String>,
    pub group: Option<String>,
    pub umask: Option<u32>,
    pub rlimits: Vec<Rlimit>,
    pub isolate: Isolation,
    pub hostname: Option<String>,
    /// Run commands through `/bin/sh -c` (the service said `shell = true`).
    pub shell: bool,
}

impl RunContext {
    /// The supervisor's own commands (event hooks, its start-up probe): in
    /// `/`, as the supervisor's user, with `env` and nothing of any
    /// instance's context.
    pub fn bare(env: Vec<(String, String)>) -> RunContext {
        RunContext {
            env: env.into_iter().collect(),
            pass_env: Vec::new(),
            cwd: "/".into(),
            user: None,
            group: None,
            umask: None,
            rlimits: Vec::new(),
            isolate: Isolation::default(),
            hostname: None,
            shell: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AddressMode {
    /// No address gating.
    None,
    /// Wait until the address is configured on this node before starting.
    Check,
    /// Add the address to `interface` at start, remove it after stop.
    Own { interface: String, prefix: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
    pub cpu_weight: Option<u64>,
    /// (quota, period) in microseconds.
    pub cpu_max: Option<(u64, u64)>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// One instance, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceSpec {
    pub id: String,
    pub service: String,
    pub kind: ServiceKind,
    pub origin: Origin,
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    pub hostname: Option<String>,
    pub paths: BTreeMap<String, PathBuf>,
    pub after: Vec<String>,
    pub processes: Vec<ProcessSpec>,
    pub run: RunContext,
    pub ready: ReadySpec,
    pub stop: StopSpec,
    pub restart: RestartSpec,
    pub health: Vec<HealthCheck>,
    pub address_mode: AddressMode,
    /// Path of the one-holder lock file, when the instance has shared paths.
    pub lock: Option<PathBuf>,
    /// Directory receiving `<process>.log`; `None`: the runtime dir's `logs/ID`.
    pub log_dir: Option<PathBuf>,
    pub strict_bind: bool,
    /// Wildcard binds become binds to `address`; binds to another
    /// instance's address are refused (cgroup BPF, isolation::bpf).
    pub force_bind: bool,
    /// Outgoing connections and datagrams leave from `address`.
    pub force_source: bool,
    pub on_event: Vec<Vec<String>>,
    pub autostart: bool,
    pub enabled: bool,
    pub limits: Limits,
}

impl InstanceSpec {
    /// Number of processes the instance starts (simple) or expects.
    pub fn process_total(&self) -> u32 {
        self.processes.iter().map(|p| p.count).sum()
    }

    /// The shared paths that must exist on this node before a start.
    pub fn required_paths(&self) -> impl Iterator<Item = (&String, &PathBuf)> {
        self.paths.iter()
    }

    /// A stable digest of the definition; a reload compares it to flag
    /// "definition changed, restart to apply".
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        // FNV-1a over the derived Hash: stable within one build, which is all
        // a reload comparison (same daemon binary) needs.
        struct Fnv(u64);
        impl Hasher for Fnv {
            fn finish(&self) -> u64 {
                self.0
            }
            fn write(&mut self, bytes: &[u8]) {
                for b in bytes {
                    self.0 ^= u64::from(*b);
                    self.0 = self.0.wrapping_mul(0x100000001b3);
                }
            }
        }
        // Without a copy (the origin's hash leaves its line out): it was a
        // clone of the whole spec per call, 10% of a reload of 10,000.
        let mut h = Fnv(0xcbf29ce484222325);
        self.hash(&mut h);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Trust, load};

    /// Both instances' fingerprints, with `text` written to `dir`'s one
    /// file (an origin is its file too: every call uses the same one).
    fn fingerprints(dir: &std::path::Path, text: &str) -> (u64, u64) {
        std::fs::write(dir.join("a.toml"), text).unwrap();
        let cfg = load(dir, Trust::Relaxed).unwrap_or_else(|d| panic!("{d:?}"));
        let fp = |id: &str| cfg.instances[id].fingerprint();
        (fp("a"), fp("b"))
    }

    #[test]
    fn a_fingerprint_is_what_an_instance_is_not_where_it_was_written() {
        let t = tempfile::tempdir().unwrap();
        let fingerprints = |text: &str| fingerprints(t.path(), text);
        let svc = "[service.s]\ncommand = [\"/bin/sleep\", \"1\"]\n";
        let (a, b) = fingerprints(&format!(
            "{svc}[instance.a]\nservice = \"s\"\n[instance.b]\nservice = \"s\"\n"
        ));
        // Comments and blank lines above both: every line moved.
        let (a2, b2) = fingerprints(&format!(
            "# moved\n\n{svc}\n# here\n[instance.a]\nservice = \"s\"\n\n[instance.b]\nservice = \"s\"\n"
        ));
        assert_eq!((a, b), (a2, b2), "lines moved: nothing changed");
        assert_ne!(a, b, "two instances are two things");
        let other = "[service.s]\ncommand = [\"/bin/sleep\", \"2\"]\n";
        let (a3, _) = fingerprints(&format!(
            "{other}[instance.a]\nservice = \"s\"\n[instance.b]\nservice = \"s\"\n"
        ));
        assert_ne!(a, a3, "its service's command changed");
    }
}
