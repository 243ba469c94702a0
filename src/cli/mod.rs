//! The command line (contract: ../CONTRACT.md "Commands").
//!
//! Commands that need the daemon send one request over its socket; the
//! daemon holds the parsed instances file, so these never parse it
//! themselves while a daemon runs (fast `monitor`/`status` for cluster
//! software). `validate`, `env`, `exec`, `logs`, `import` work on the
//! instances file directly.

pub mod agent;
mod daemonctl;
pub mod fast;
mod join;
mod local;
mod metrics;
mod observe;
mod output;
mod plan;
mod pretty;
mod top;
mod verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cohost",
    version,
    about = "Multi-instance service supervisor for HA mutual takeover",
    long_about = "cohost runs named instances of services, each on its own logical address, host name \
                  and shared storage, side by side on one node; it is driven by cluster software \
                  (Pacemaker OCF, LSB init scripts, systemd) and by operators."
)]
pub struct Cli {
    /// Instances directory (*.toml read in name order).
    #[arg(long, global = true, env = "COHOST_CONFIG", value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// Runtime dir of the supervisor (control socket, state, logs).
    #[arg(long, global = true, env = "COHOST_RUNTIME_DIR", value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Check the instances file; every problem as FILE:LINE (exit 2 if any).
    Validate,
    /// Run the supervisor (in the background unless --foreground).
    Daemon {
        #[arg(long)]
        foreground: bool,
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        log_format: String,
        #[arg(long, value_parser = ["error", "warn", "info", "debug", "trace"], default_value = "info")]
        log_level: String,
    },
    /// Start an instance and wait until it is ready.
    Start {
        id: String,
        /// Seconds to wait for readiness (default: the service's ready.timeout).
        #[arg(long, value_name = "S", value_parser = positive_secs)]
        timeout: Option<f64>,
        /// Start the instances it is `after` first, in order.
        #[arg(long)]
        with_deps: bool,
    },
    /// Stop an instance: stop command or signal, SIGKILL at the timeout.
    Stop {
        id: String,
        #[arg(long, value_name = "S", value_parser = positive_secs)]
        timeout: Option<f64>,
    },
    /// Stop, then start.
    Restart {
        id: String,
        #[arg(long, value_name = "S", value_parser = positive_secs)]
        timeout: Option<f64>,
    },
    /// SIGKILL every process of the instance now.
    Kill { id: String },
    /// State, pids, address, uptime, restarts, last failure (exit 3: not running).
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One health check now: 0 running and healthy, 7 stopped, 1 otherwise.
    Monitor {
        id: String,
        /// 0: state and the latest check results only; 10: run stale checks now.
        #[arg(long, default_value_t = 10)]
        depth: u8,
    },
    /// Every instance of the config with its state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print the instance's environment as `export K='V'` lines.
    Env { id: String },
    /// Run a command in the instance's context (environment, user, host name, bind paths).
    Exec {
        id: String,
        /// Inside the running instance: its mount and UTS namespaces, cgroup, user,
        /// environment and cwd (without: a fresh context of its own).
        #[arg(long)]
        join: bool,
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Proof of isolation: sockets, host name, bind paths, /tmp, lock, cgroup, user, force_bind
    /// (exit 0 all pass, 1 naming each violation, 7 not running).
    Verify {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// OCF resource agent (OCF_RESKEY_instance, OCF_RESKEY_config, OCF_RESKEY_runtime_dir).
    Ocf { action: String },
    /// LSB init-script action: start stop restart force-reload try-restart status.
    Lsb { id: String, action: String },
    /// Start every instance in `after` order.
    Up,
    /// Stop every instance in reverse `after` order.
    Down,
    /// Clear a `failed` state left by the restart policy.
    Reset { id: String },
    /// Reread the instances file (running instances are not touched).
    Reload,
    /// Stop every instance and the daemon.
    Shutdown,
    /// Show an instance's process logs.
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
    /// Live per-instance state and usage (one snapshot when not on a terminal).
    Top {
        /// Sort by cpu, memory, io, pids, restarts or name (keys c m i p r n).
        #[arg(long, default_value = "cpu")]
        sort: top::Sort,
        /// Refreshes before exiting (default: until `q` on a terminal, else 1).
        #[arg(short = 'n', long)]
        iterations: Option<u64>,
        /// Seconds between refreshes.
        #[arg(short, long, default_value_t = 1.0, value_parser = positive_secs)]
        delay: f64,
    },
    /// Can this node also run the instances of the instances file in DIR?
    Plan {
        /// The peer's instances directory.
        #[arg(long, value_name = "DIR")]
        absorb: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// State, restarts, start timing and usage in the Prometheus text format.
    Metrics {
        /// Write to FILE atomically (node_exporter's textfile collector).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Convert a legacy ID:DBDIR:ETCDIR:PORT:HOSTNAME file to TOML.
    Import {
        file: PathBuf,
        #[arg(long)]
        service: String,
    },
    /// Instance IDs, one a line, for the shell completions.
    #[command(name = "__ids", hide = true)]
    Ids,
}

pub use crate::ops::{Ctx, DEFAULT_RUNTIME_DIR};

/// Runs the parsed command; returns the exit status.
pub fn run(cli: Cli) -> i32 {
    let ctx = Ctx::new(cli.config, cli.runtime_dir);
    match cli.cmd {
        Cmd::Validate => local::validate(&ctx),
        Cmd::Daemon {
            foreground,
            log_format,
            log_level,
        } => daemonctl::daemon(&ctx, foreground, &log_format, &log_level),
        Cmd::Start {
            id,
            timeout,
            with_deps,
        } => daemonctl::start(&ctx, &id, timeout, with_deps),
        Cmd::Stop { id, timeout } => daemonctl::stop(&ctx, &id, timeout),
        Cmd::Restart { id, timeout } => daemonctl::restart(&ctx, &id, timeout),
        Cmd::Kill { id } => daemonctl::kill(&ctx, &id),
        Cmd::Status { id, json } => daemonctl::status(&ctx, id.as_deref(), json),
        Cmd::Monitor { id, depth } => daemonctl::monitor(&ctx, &id, depth).0,
        Cmd::List { json } => daemonctl::list(&ctx, json),
        Cmd::Env { id } => local::env(&ctx, &id),
        Cmd::Exec {
            id,
            join: false,
            cmd,
        } => local::exec(&ctx, &id, &cmd),
        Cmd::Exec {
            id,
            join: true,
            cmd,
        } => join::exec_join(&ctx, &id, &cmd),
        Cmd::Verify { id, json } => verify::run(&ctx, &id, json),
        Cmd::Ocf { action } => crate::integration::ocf::run(&action),
        Cmd::Lsb { id, action } => crate::integration::lsb::run(&ctx, &id, &action),
        Cmd::Up => daemonctl::up_down(&ctx, true),
        Cmd::Down => daemonctl::up_down(&ctx, false),
        Cmd::Reset { id } => daemonctl::reset(&ctx, &id),
        Cmd::Reload => daemonctl::reload(&ctx),
        Cmd::Shutdown => daemonctl::shutdown(&ctx),
        Cmd::Logs { id, follow, lines } => local::logs(&ctx, &id, follow, lines),
        Cmd::Import { file, service } => local::import(&file, &service),
        Cmd::Top {
            sort,
            iterations,
            delay,
        } => top::run(
            &ctx,
            top::Opts {
                sort,
                iterations,
                delay: std::time::Duration::from_secs_f64(delay),
            },
        ),
        Cmd::Plan { absorb, json } => plan::run(&ctx, &absorb, json),
        Cmd::Metrics { output } => metrics::run(&ctx, output.as_deref()),
        Cmd::Ids => daemonctl::ids(&ctx),
    }
}

/// `--timeout S`: a number of seconds above zero. Zero would fail every
/// start at once (and "no limit" is not offered: cluster software always
/// has one of its own, and a start that never ends blocks its recovery).
pub(crate) fn positive_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 && v <= 31_536_000.0 {
        Ok(v)
    } else {
        Err(format!(
            "{s} is not a time limit: give a number of seconds above 0 (default: the service's own)"
        ))
    }
}
