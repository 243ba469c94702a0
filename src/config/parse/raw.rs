//! The raw items: what one file said, with templates (`${}`) unexpanded
//! and every value's file and line kept for `resolve`'s messages.

use std::time::Duration;

use crate::config::reader::At;
use crate::model::{Origin, Rlimit, ServiceKind};

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
