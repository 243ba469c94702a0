//! What each command does, for every surface that asks for it: the plain
//! command line (`cli`), and the cluster and init-system surfaces
//! (`integration`: OCF, LSB), which word the same outcomes in their own
//! exit codes. Each operation returns an [`Outcome`] (a typed exit and the
//! message); printing is the caller's. Nothing here depends on `cli` or
//! `integration`: `cli` → `ops` ← `integration`.

use std::path::PathBuf;

use crate::config;

pub mod daemon;
pub mod exit;
pub mod launch;
pub mod lookup;
pub mod offline;
pub mod stop;
pub mod systemd;

pub use exit::{Exit, Outcome};

pub const DEFAULT_RUNTIME_DIR: &str = "/run/cohost";

/// Global options, resolved.
pub struct Ctx {
    pub config: PathBuf,
    /// Given explicitly (flag or environment): then sent to the daemon,
    /// which refuses a request meant for another instances file.
    pub config_explicit: bool,
    pub runtime_dir: PathBuf,
}

impl Ctx {
    pub fn new(config: Option<PathBuf>, runtime_dir: Option<PathBuf>) -> Ctx {
        let config_explicit = config.is_some();
        let config = config.unwrap_or_else(|| PathBuf::from(config::DEFAULT_DIR));
        let runtime_dir = runtime_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));
        Ctx {
            config: absolute(config),
            config_explicit,
            runtime_dir: absolute(runtime_dir),
        }
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

/// `start` (launching the daemon if none runs).
pub fn start(ctx: &Ctx, id: &str, timeout: Option<f64>) -> Outcome {
    daemon::start_quiet(ctx, id, timeout).into()
}

/// `stop`: nothing of the instance left on this node (never fails for
/// an instance that does not run, whatever the daemon's state).
pub fn stop(ctx: &Ctx, id: &str, timeout: Option<f64>) -> Outcome {
    stop::stop_quiet(ctx, id, timeout)
}

/// `kill`.
pub fn kill(ctx: &Ctx, id: &str) -> Outcome {
    stop::kill_quiet(ctx, id)
}

/// `monitor`: running and healthy, stopped (7), or failed.
pub fn monitor(ctx: &Ctx, id: &str, depth: u8) -> Outcome {
    daemon::monitor_quiet(ctx, id, depth).into()
}

/// `reload`.
pub fn reload(ctx: &Ctx) -> Outcome {
    daemon::reload_quiet(ctx).into()
}

pub use daemon::status_code;
