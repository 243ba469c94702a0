//! The control socket's wire format: one JSON request line, then reply
//! lines (`progress` …, then exactly one `done`). Pure serde types.
//!
//! A request names the instance; the daemon owns the parsed config, so a
//! client never parses the instances file when the daemon runs.

use serde::{Deserialize, Serialize};

/// Largest request the daemon reads; larger ones are refused.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// The instances directory the client means; the daemon refuses a
    /// request whose config differs from its own (two configs, one runtime
    /// dir is an operator error worth naming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(flatten)]
    pub req: Request,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
// Operations without arguments are empty struct variants, not unit ones:
// serde ignores extra fields on a unit variant even with
// deny_unknown_fields, and {"op":"down","id":"x"} must be refused, not
// taken for "stop everything" (found by tests/fuzz_inputs.rs).
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Ping {},
    Start {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        #[serde(default)]
        with_deps: bool,
    },
    Stop {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    Restart {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    Kill {
        id: String,
    },
    Reset {
        id: String,
    },
    Status {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    List {},
    /// depth 0: state and cached check results; 10: run stale probes now.
    Monitor {
        id: String,
        #[serde(default)]
        depth: u8,
    },
    Up {},
    Down {},
    Reload {},
    Shutdown {},
}

impl Request {
    /// Requests that change nothing (allowed to the status group).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Ping {} | Request::Status { .. } | Request::List {} | Request::Monitor { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum Reply {
    /// A step of a long operation (`up`, `down`, `start --with-deps`).
    Progress {
        id: String,
        state: String,
        message: String,
    },
    /// The end: `code` is the CLI's exit status.
    Done {
        code: i32,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<serde_json::Value>,
    },
}

/// One process of an instance, as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcStatus {
    pub name: String,
    pub pid: i32,
    /// Still alive.
    pub alive: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckStatus {
    /// "ready" or "health".
    pub role: String,
    pub check: String,
    pub ok: Option<bool>,
    pub message: String,
    /// Seconds since the result, if there is one.
    pub age_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceStatus {
    pub id: String,
    pub service: String,
    pub kind: String,
    pub state: String,
    /// Healthy by the latest checks (None: no check configured or not running).
    pub healthy: Option<bool>,
    pub processes: Vec<ProcStatus>,
    /// Every pid in the instance (cgroup members or tracked group), for
    /// tools that want to see double-forked daemons too.
    pub members: Vec<i32>,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub hostname: Option<String>,
    /// Seconds since the UNIX epoch when the state was entered.
    pub since: u64,
    pub uptime_s: Option<u64>,
    pub restarts: u32,
    pub last_failure: Option<String>,
    /// "cgroup /sys/fs/cgroup/…" or "process-group (…reason…)".
    pub tracking: String,
    pub checks: Vec<CheckStatus>,
    /// The instances file changed this instance since it was started.
    pub definition_changed: bool,
    /// Removed from the instances file by a reload; still running.
    pub removed: bool,
    pub warnings: Vec<String>,
    pub log_dir: String,
    /// The last start's timing (issue 15), if it started under this daemon.
    #[serde(default)]
    pub timing: Option<super::observe::Timing>,
    /// Usage read from its cgroup when asked (issue 15).
    #[serde(default)]
    pub usage: Option<super::observe::Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Envelope {
            config: Some("/etc/cohost/instances.d".into()),
            req: Request::Start {
                id: "demo01".into(),
                timeout_ms: Some(5000),
                with_deps: false,
            },
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"config":"/etc/cohost/instances.d","op":"start","id":"demo01","timeout_ms":5000,"with_deps":false}"#
        );
        assert_eq!(serde_json::from_str::<Envelope>(&s).unwrap(), e);
        let m: Envelope = serde_json::from_str(r#"{"op":"monitor","id":"x"}"#).unwrap();
        assert_eq!(
            m.req,
            Request::Monitor {
                id: "x".into(),
                depth: 0
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            r#"{"op":"explode"}"#,
            r#"{"op":"start"}"#,
            "not json",
            r#"{"op":"stop","id":1}"#,
        ] {
            assert!(serde_json::from_str::<Envelope>(bad).is_err(), "{bad}");
        }
    }
}
