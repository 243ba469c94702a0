//! `stop` and `kill` (guarantee 9: a stop answers success whenever
//! nothing of the instance runs on this node, whatever the instances file
//! says). The daemon answers when it runs and knows the instance;
//! otherwise the node's cgroups (and the state file) decide, see
//! [`offline_stop`].

use std::time::Duration;

use super::Ctx;
use super::daemon::{call, client_failure, ms, quiet};
use super::exit::Outcome;
use super::offline::{self, join_pids};
use crate::control::client::{self, ClientError, Done};
use crate::control::proto::Request;

/// Did the daemon answer "unknown instance" (not some other refusal)?
fn unknown_instance(d: &Done) -> bool {
    d.code == 2
        && d.data
            .as_ref()
            .is_some_and(|v| v.get("unknown_instance").is_some())
}

/// stop or kill `id`, sending `req` where a daemon answers.
fn stop_or_kill(ctx: &Ctx, id: &str, req: Request, grace: Duration) -> (i32, String) {
    match client::connect(&ctx.runtime_dir) {
        Ok(s) => match call(ctx, s, req.clone()) {
            Ok(d) if unknown_instance(&d) => offline_stop(ctx, id, req, grace, Some(d.message)),
            res => quiet(res),
        },
        Err(ClientError::NoDaemon(_)) => offline_stop(ctx, id, req, grace, None),
        Err(ClientError::Untrusted(e)) => {
            // Its state cannot be believed; the cgroups still can.
            eprintln!("cohost: {e}: its state is ignored");
            offline_stop(ctx, id, req, grace, Some(e.to_string()))
        }
        Err(e) => client_failure(e),
    }
}

/// No daemon answers for `id` (none runs, or it does not know the ID).
/// Nothing of it runs: success. Processes remain: a daemon that can know
/// the instance (the instances file loads and has the ID) is started to
/// adopt and stop them the configured way (stop command, timeout); when
/// none can (file missing or invalid, ID unknown), they are stopped from
/// here, SIGTERM then SIGKILL through the cgroup: the cluster asked for
/// the instance to be stopped, and answering "stopped" while it runs, or
/// failing the stop and having the node fenced, are both worse.
fn offline_stop(
    ctx: &Ctx,
    id: &str,
    req: Request,
    grace: Duration,
    why_no_daemon: Option<String>,
) -> (i32, String) {
    let rem = offline::remains(&ctx.runtime_dir, id);
    if rem == offline::Remains::Nothing {
        // Still say why no daemon knew it: a typo should be visible.
        let note = why_no_daemon
            .map(|w| format!("; {}", w.lines().next().unwrap_or("")))
            .unwrap_or_default();
        return (
            0,
            format!("{id} is stopped (nothing of it runs on this node{note})"),
        );
    }
    let pids = join_pids(&rem.pids());
    if let Some(holder) = crate::rundir::holder(&ctx.runtime_dir) {
        // A daemon holds the dir but cannot be reached: it would restart
        // what we stop. Only its own exit helps.
        let e = crate::rundir::RunDirError::AlreadyRunning {
            path: ctx.runtime_dir.clone(),
            pid: holder,
            orphaned: true,
        };
        return (1, format!("{id} still runs (pids {pids}): {e}"));
    }
    if why_no_daemon.is_none()
        && let Some(answer) = stop_by_new_daemon(ctx, id, req)
    {
        return answer;
    }
    let why = why_no_daemon.unwrap_or_else(|| {
        super::lookup::known_instance(ctx, id)
            .err()
            .map(|(_, m)| m)
            .unwrap_or_else(|| "no daemon adopted them".into())
    });
    match offline::stop(&rem, grace) {
        Ok(()) => (
            0,
            format!(
                "{id} is stopped: its processes {pids} were stopped without a daemon ({})",
                why.lines().next().unwrap_or("")
            ),
        ),
        Err(left) => (
            1,
            format!(
                "{id}: processes {} would not die (uninterruptible sleep, e.g. on hung storage?)",
                join_pids(&left)
            ),
        ),
    }
}

/// A daemon started to adopt what remains of `id` and stop it the
/// configured way, if the instances file lets one run and knows the ID.
/// `None`: it could not, or it did not adopt them (no state file): the
/// caller stops them itself.
fn stop_by_new_daemon(ctx: &Ctx, id: &str, req: Request) -> Option<(i32, String)> {
    super::lookup::known_instance(ctx, id).ok()?;
    let stream = super::launch::launch_daemon(ctx)
        .and_then(|_| client::connect(&ctx.runtime_dir).map_err(|e| (1, e.to_string())));
    match stream {
        Ok(s) => {
            let (code, msg) = quiet(call(ctx, s, req));
            let gone = offline::remains(&ctx.runtime_dir, id) == offline::Remains::Nothing;
            (code != 0 || gone).then_some((code, msg))
        }
        Err((_, m)) => {
            eprintln!("cohost: {m}");
            None
        }
    }
}

/// The grace of a stop from the CLI: `--timeout`, else 10 s.
fn grace_of(timeout: Option<f64>) -> Duration {
    Duration::from_secs_f64(timeout.unwrap_or(10.0).clamp(0.0, 86_400.0))
}

pub fn stop_quiet(ctx: &Ctx, id: &str, timeout: Option<f64>) -> Outcome {
    stop_or_kill(
        ctx,
        id,
        Request::Stop {
            id: id.into(),
            timeout_ms: ms(timeout),
        },
        grace_of(timeout),
    )
    .into()
}

/// `kill`: SIGKILL to every process of the instance, now.
pub fn kill_quiet(ctx: &Ctx, id: &str) -> Outcome {
    stop_or_kill(ctx, id, Request::Kill { id: id.into() }, Duration::ZERO).into()
}
