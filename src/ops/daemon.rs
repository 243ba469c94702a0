//! Asking the daemon: connecting (launching it when the command needs
//! one), sending a request, and the answers of the operations integration
//! code and the CLI share.

use std::os::unix::net::UnixStream;

use super::exit::Exit;
use super::{Ctx, offline};
use crate::control::client::{self, ClientError, Done};
use crate::control::proto::{Envelope, InstanceStatus, Request};

/// When a command may launch the daemon.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// It needs one (start, up).
    Always,
    /// Only if the runtime state says something may still run (a crashed
    /// daemon's instances must be adopted before anyone answers for them).
    IfState,
}

pub fn envelope(ctx: &Ctx, req: Request) -> Envelope {
    Envelope {
        config: ctx
            .config_explicit
            .then(|| ctx.config.display().to_string()),
        req,
    }
}

pub fn ms(s: Option<f64>) -> Option<u64> {
    s.map(|s| (s.max(0.0) * 1000.0) as u64)
}

/// Connects, launching the daemon if `launch` allows. `Ok(None)`: no
/// daemon, and none was needed.
pub fn connect(
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
pub fn call(ctx: &Ctx, stream: UnixStream, req: Request) -> Result<Done, (i32, String)> {
    client::call(stream, &envelope(ctx, req), |id, _state, msg| {
        let _ = id;
        outln!("{msg}");
    })
    .map_err(|e| (1, e.to_string()))
}

/// Turns a result into (exit code, message).
pub fn quiet(res: Result<Done, (i32, String)>) -> (i32, String) {
    match res {
        Ok(d) => (d.code, d.message),
        Err(e) => e,
    }
}

pub fn start_request(
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

/// reset: with no daemon and nothing recorded as running, the instance
/// is stopped already (exit 0), provided it exists.
pub fn reset_request(ctx: &Ctx, id: &str, req: Request) -> (i32, String) {
    match connect(ctx, Launch::IfState, Some(id)) {
        Ok(Some(s)) => quiet(call(ctx, s, req)),
        Ok(None) => match super::lookup::known_instance(ctx, id) {
            Ok(()) => (0, format!("{id} is stopped")),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// The exit and message of a client error: a permission problem is
/// `Denied` (4), never "failed".
pub fn client_failure(e: ClientError) -> (i32, String) {
    let exit = match e {
        ClientError::Denied { .. } => Exit::Denied,
        _ => Exit::Failed,
    };
    (exit.code(), e.to_string())
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
        Ok(None) => match super::lookup::known_instance(ctx, id) {
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
            super::lookup::known_instance(ctx, id)?;
            Ok((None, 3))
        }
    }
}

pub fn reload_quiet(ctx: &Ctx) -> (i32, String) {
    match connect(ctx, Launch::IfState, None) {
        Ok(Some(s)) => quiet(call(ctx, s, Request::Reload {})),
        // No daemon: nothing to reload; say whether the file is good.
        Ok(None) => match super::lookup::load_check(ctx) {
            Ok(()) => (
                0,
                "no daemon runs; the instances file is valid and will be read at its start".into(),
            ),
            Err(e) => e,
        },
        Err(e) => e,
    }
}
