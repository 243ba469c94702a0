//! cohost: a multi-instance service supervisor for HA mutual takeover.
//!
//! Layout: `config` (instances file -> `model`), `supervisor` (pure state
//! machine + the one event loop that executes its actions), `process`
//! (spawn, track, signal), `isolation` (cgroups, addresses, locks, bind
//! audit), `control` (the daemon's socket protocol, client and server
//! connections), `ops` (what each command does, as typed outcomes),
//! `integration` (OCF and LSB: exit-code tables and meta-data, over `ops`),
//! `cli` (arguments and printing, over `ops`), `paths` (the checks of an
//! instance's shared paths and bind targets, which config, the start and
//! the child's plan share). No module cycle: `process` is below
//! `isolation`, `cli` and `integration` are over `ops`.

#[macro_use]
pub mod out;
pub mod cli;
pub mod config;
pub mod control;
pub mod integration;
pub mod isolation;
pub mod model;
pub mod ops;
pub mod paths;
pub mod plan;
pub mod process;
pub mod rundir;
pub mod supervisor;
pub mod trusted;
pub mod util;

/// The last lines of the daemon's log, indented, for error messages.
pub fn supervisor_log_tail(path: &std::path::Path) -> String {
    indent_lines(util::tail(path, 15))
}

/// Lines indented for an error message.
pub fn indent_lines(lines: Vec<String>) -> String {
    lines
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Daemon logs: one line per event, each carrying its instance ID.
pub fn init_daemon_logging(format: supervisor::LogFormat, level: tracing::Level) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        supervisor::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        supervisor::LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
