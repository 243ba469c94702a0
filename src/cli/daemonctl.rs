//! Commands answered by the daemon, and starting the daemon when needed.

use std::os::unix::net::UnixStream;

use super::exit::Exit;
use super::{Ctx, offline, output};
use crate::control::client::{self, ClientError, Done};
use crate::control::proto::{Envelope, InstanceStatus, Request};

/// When a command may launch the daemon.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Launch {
    /// It needs one (start, up).
    Always,
    /// Only if the runtime state says something may still run (a crashed
    /// daemon's instances must be adopted before anyone answers for them).
    IfState,
}

fn envelope(ctx: &Ctx, req: Request) -> Envelope {
    Envelope {
        config: ctx
            .config_explicit
            .then(|| ctx.config.display().to_string()),
        req,
    }
}

pub(super) fn ms(s: Option<f64>) -> Option<u64> {
    s.map(|s| (s.max(0.0) * 1000.0) as u64)
}

/// Connects, launching the daemon if `launch` allows. `Ok(None)`: no
/// daemon, and none was needed.
fn connect(
    ctx: &Ctx,
    launch: Launch,
    id: Option<&str>,
) -> Result<Option<UnixStream>, (i32, String)> {
    match client::connect(&ctx.runtime_dir) {
        Ok(s) => return Ok(Some(s)),
        Err(ClientError::NoDaemon(_)) => {}
        Err(e) => return Err(client_failure(e)),
    }
    if launch == Launch::IfState && !super::launch::state_says_live(&ctx.runtime_dir, id) {
        return Ok(None);
    }
    super::launch::launch_daemon(ctx)?;
    client::connect(&ctx.runtime_dir)
        .map(Some)
        .map_err(|e| (1, e.to_string()))
}

/// Sends a request; prints progress; returns the daemon's answer.
pub(super) fn call(ctx: &Ctx, stream: UnixStream, req: Request) -> Result<Done, (i32, String)> {
    client::call(stream, &envelope(ctx, req), |id, _state, msg| {
        let _ = id;
        println!("{msg}");
    })
    .map_err(|e| (1, e.to_string()))
}

/// Prints a final answer the usual way and returns its code.
pub(super) fn finish(res: Result<Done, (i32, String)>) -> i32 {
    match res {
        Ok(d) => {
            if !d.message.is_empty() {
                if d.code == 0 {
                    println!("{}", d.message);
                } else {
                    eprintln!("cohost: {}", d.message);
                }
            }
            d.code
        }
        Err((code, msg)) => {
            eprintln!("cohost: {msg}");
            code
        }
    }
}

pub fn daemon(ctx: &Ctx, foreground: bool, format: &str, level: &str) -> i32 {
    if !foreground {
        if client::connect(&ctx.runtime_dir).is_ok() {
            eprintln!(
                "cohost: a daemon already runs for {}",
                ctx.runtime_dir.display()
            );
            return 1;
        }
        return match super::launch::launch_daemon_with(
            ctx,
            &["--log-format", format, "--log-level", level],
        ) {
            Ok(pid) => {
                println!(
                    "cohost daemon started (pid {pid}) for {}",
                    ctx.runtime_dir.display()
                );
                0
            }
            Err((c, m)) => {
                eprintln!("cohost: {m}");
                c
            }
        };
    }
    let log_format = if format == "json" {
        crate::supervisor::LogFormat::Json
    } else {
        crate::supervisor::LogFormat::Text
    };
    let log_level = level.parse().unwrap_or(tracing::Level::INFO);
    crate::init_daemon_logging(log_format, log_level);
    let notify_fd = std::env::var("COHOST_NOTIFY_FD")
        .ok()
        .and_then(|v| v.parse().ok());
    // SAFETY: single-threaded at this point; the variable is only for us.
    unsafe { std::env::remove_var("COHOST_NOTIFY_FD") };
    let config_dir = std::fs::canonicalize(&ctx.config).unwrap_or_else(|_| ctx.config.clone());
    crate::supervisor::run(crate::supervisor::Options {
        runtime_dir: ctx.runtime_dir.clone(),
        config_dir,
        log_format,
        log_level,
        notify_fd,
    })
}

/// Turns a result into (exit code, message).
pub(super) fn quiet(res: Result<Done, (i32, String)>) -> (i32, String) {
    match res {
        Ok(d) => (d.code, d.message),
        Err(e) => e,
    }
}

fn start_request(
    ctx: &Ctx,
    id: &str,
    timeout: Option<f64>,
    with_deps: bool,
) -> Result<Done, (i32, String)> {
    let stream = connect(ctx, Launch::Always, Some(id))?.expect("launched");
    call(
        ctx,
        stream,
        Request::Start {
            id: id.into(),
            timeout_ms: ms(timeout),
            with_deps,
        },
    )
}

pub fn start_quiet(ctx: &Ctx, id: &str, timeout: Option<f64>) -> (i32, String) {
    quiet(start_request(ctx, id, timeout, false))
}

pub fn start(ctx: &Ctx, id: &str, timeout: Option<f64>, with_deps: bool) -> i32 {
    finish(start_request(ctx, id, timeout, with_deps))
}

pub fn restart(ctx: &Ctx, id: &str, timeout: Option<f64>) -> i32 {
    let res = connect(ctx, Launch::Always, Some(id)).and_then(|s| {
        call(
            ctx,
            s.expect("launched"),
            Request::Restart {
                id: id.into(),
                timeout_ms: ms(timeout),
            },
        )
    });
    finish(res)
}

/// reset: with no daemon and nothing recorded as running, the instance
/// is stopped already (exit 0), provided it exists.
fn reset_request(ctx: &Ctx, id: &str, req: Request) -> (i32, String) {
    match connect(ctx, Launch::IfState, Some(id)) {
        Ok(Some(s)) => quiet(call(ctx, s, req)),
        Ok(None) => match super::local::known_instance(ctx, id) {
            Ok(()) => (0, format!("{id} is stopped")),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// The exit and message of a client error: a permission problem is
/// `Denied` (4), never "failed".
pub(super) fn client_failure(e: ClientError) -> (i32, String) {
    let exit = match e {
        ClientError::Denied { .. } => Exit::Denied,
        _ => Exit::Failed,
    };
    (exit.code(), e.to_string())
}

pub(super) fn print_quiet((code, msg): (i32, String)) -> i32 {
    if !msg.is_empty() {
        if code == 0 {
            println!("{msg}");
        } else {
            eprintln!("cohost: {msg}");
        }
    }
    code
}

pub fn reset(ctx: &Ctx, id: &str) -> i32 {
    print_quiet(reset_request(ctx, id, Request::Reset { id: id.into() }))
}

/// `monitor`: (exit code, message). With no daemon and no live state, the
/// answer is "stopped" (7) without launching anything: a probe of a node
/// where the instance never ran must be fast and must not start things.
pub fn monitor(ctx: &Ctx, id: &str, depth: u8) -> (i32, String) {
    let (code, msg) = monitor_quiet(ctx, id, depth);
    if code == 0 || code == 7 {
        println!("{msg}");
    } else {
        eprintln!("cohost: {msg}");
    }
    (code, msg)
}

pub fn monitor_quiet(ctx: &Ctx, id: &str, depth: u8) -> (i32, String) {
    match connect(ctx, Launch::IfState, Some(id)) {
        Ok(Some(s)) => match call(
            ctx,
            s,
            Request::Monitor {
                id: id.into(),
                depth,
            },
        ) {
            Ok(d) => (d.code, d.message),
            Err((c, m)) => (c, m),
        },
        Ok(None) if offline::remains(&ctx.runtime_dir, id) != offline::Remains::Nothing => (
            Exit::Failed.code(),
            format!(
                "{id}: processes {} run but no cohost daemon supervises them (none runs for {}): run `cohost stop {id}`, or `cohost start {id}` to adopt them",
                offline::join_pids(&offline::remains(&ctx.runtime_dir, id).pids()),
                ctx.runtime_dir.display()
            ),
        ),
        Ok(None) => match super::local::known_instance(ctx, id) {
            Ok(()) => (
                Exit::Stopped.code(),
                format!(
                    "{id} is stopped (no cohost daemon runs for {})",
                    ctx.runtime_dir.display()
                ),
            ),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// The status of one instance for integration code: (state, exit code).
pub fn status_code(ctx: &Ctx, id: &str) -> Result<(Option<InstanceStatus>, i32), (i32, String)> {
    match connect(ctx, Launch::IfState, Some(id))? {
        Some(s) => {
            let d = call(
                ctx,
                s,
                Request::Status {
                    id: Some(id.into()),
                },
            )?;
            if d.code == 2 {
                return Err((2, d.message));
            }
            let st = d
                .data
                .and_then(|v| serde_json::from_value::<Vec<InstanceStatus>>(v).ok())
                .and_then(|mut v| v.pop());
            Ok((st, d.code))
        }
        None => {
            super::local::known_instance(ctx, id)?;
            Ok((None, 3))
        }
    }
}

pub fn status(ctx: &Ctx, id: Option<&str>, json: bool) -> i32 {
    let res = match connect(ctx, Launch::IfState, id) {
        Ok(Some(s)) => call(
            ctx,
            s,
            Request::Status {
                id: id.map(String::from),
            },
        ),
        Ok(None) => super::local::offline_status(ctx, id),
        Err(e) => Err(e),
    };
    match res {
        Ok(d) if d.code == 2 => finish(Ok(d)),
        Ok(d) => {
            let list: Vec<InstanceStatus> = d
                .data
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else if id.is_some() {
                for s in &list {
                    print!("{}", output::detail(s));
                }
            } else {
                print!("{}", output::table(&list));
            }
            d.code
        }
        Err(e) => finish(Err(e)),
    }
}

pub fn up_down(ctx: &Ctx, up: bool) -> i32 {
    let launch = if up { Launch::Always } else { Launch::IfState };
    match connect(ctx, launch, None) {
        Ok(Some(s)) => finish(call(
            ctx,
            s,
            if up { Request::Up {} } else { Request::Down {} },
        )),
        Ok(None) => {
            println!("nothing runs");
            0
        }
        Err(e) => finish(Err(e)),
    }
}

pub fn reload_quiet(ctx: &Ctx) -> (i32, String) {
    match connect(ctx, Launch::IfState, None) {
        Ok(Some(s)) => quiet(call(ctx, s, Request::Reload {})),
        // No daemon: nothing to reload; say whether the file is good.
        Ok(None) => match super::local::load_check(ctx) {
            Ok(()) => (
                0,
                "no daemon runs; the instances file is valid and will be read at its start".into(),
            ),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

pub fn reload(ctx: &Ctx) -> i32 {
    print_quiet(reload_quiet(ctx))
}

pub fn shutdown(ctx: &Ctx) -> i32 {
    match client::connect(&ctx.runtime_dir) {
        Ok(s) => finish(call(ctx, s, Request::Shutdown {})),
        Err(ClientError::NoDaemon(_)) => {
            println!("no cohost daemon runs for {}", ctx.runtime_dir.display());
            0
        }
        Err(e) => finish(Err((1, e.to_string()))),
    }
}

/// `__ids` (shell completion): the daemon's instances if one answers, else
/// the instances file's. A TAB must never start anything, so this never
/// launches a daemon; on any error it prints nothing.
pub fn ids(ctx: &Ctx) -> i32 {
    let from_daemon = client::connect(&ctx.runtime_dir).ok().and_then(|s| {
        let d = client::call(
            s,
            &envelope(ctx, Request::Status { id: None }),
            |_, _, _| {},
        )
        .ok()?;
        serde_json::from_value::<Vec<InstanceStatus>>(d.data?).ok()
    });
    let ids = match from_daemon {
        Some(list) => list.into_iter().map(|s| s.id).collect(),
        None => super::local::instance_ids(ctx),
    };
    for id in ids {
        println!("{id}");
    }
    0
}
