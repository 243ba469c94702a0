//! The cells of the life-cycle table ([`super::fsm`]): one function per
//! state, each matching every event. `nop` marks a pair that means nothing
//! in that state (s6-supervise writes them the same way).

use std::time::Instant;

use super::fsm::{Action, AfterStop, Answer, Event, Fsm, Observed, Phase, Policy, State};
use crate::model::ServiceKind;

/// Exits "while the supervisor was down": a failure like any other.
pub const DIED_WHILE_DOWN: &str = "exited while the supervisor was down";

pub(super) fn step(f: &mut Fsm, ev: Event, now: Instant, p: &Policy, out: &mut Vec<Action>) {
    match f.phase.clone() {
        Phase::Stopped => stopped(f, ev, now, p, out),
        Phase::WaitingAddress => waiting_address(f, ev, now, p, out),
        Phase::Starting { script_done } => starting(f, script_done, ev, now, p, out),
        Phase::Running => running(f, ev, now, p, out),
        Phase::Stopping {
            after,
            killed,
            start_queued,
        } => stopping(f, (after, killed, start_queued), ev, now, p, out),
        Phase::Restarting { .. } => restarting(f, ev, now, p, out),
        Phase::Failed => failed(f, ev, now, p, out),
    }
}

/// The pair means nothing in this state.
fn nop() {}

fn stopped(f: &mut Fsm, ev: Event, now: Instant, p: &Policy, out: &mut Vec<Action>) {
    match ev {
        Event::Start { timeout } => f.requested_start(timeout, now, p, out),
        // Already stopped: the executor answers stop waiters at once.
        Event::Stop { .. } | Event::Kill | Event::Reset => nop(),
        Event::Adopted(o) => adopted(f, o, now, p, out),
        Event::AddressReady
        | Event::Launched
        | Event::LaunchFailed(_)
        | Event::ScriptExited { .. }
        | Event::Ready
        | Event::ReadyFailed(_)
        | Event::ProcessExited { .. }
        | Event::Empty
        | Event::StopCommandExited { .. }
        | Event::Timeout { .. }
        | Event::Audited
        | Event::Violation(_) => nop(),
    }
}

/// What a restarted supervisor found: the pure decision of adoption.
fn adopted(f: &mut Fsm, o: Observed, now: Instant, p: &Policy, out: &mut Vec<Action>) {
    f.restart_count = o.restarts;
    f.last_failure = o.last_failure.clone();
    match (o.was, o.alive) {
        // Failed stays failed (monitor 1) until stopped or reset, across
        // supervisor restarts too; remnants are tracked.
        (State::Failed, _) => f.enter_as(Phase::Failed, "failed (adopted)", "adopted", now, out),
        (State::Stopped, false) => nop(),
        // The stop it was doing has finished by itself.
        (State::Stopping, false) => {
            out.push(Action::Cleanup);
            f.enter(
                Phase::Stopped,
                "stopped while the supervisor was down",
                now,
                out,
            );
        }
        (_, false) => {
            // It should be running and nothing is: a failure, which the
            // restart policy handles as any other (restart or failed).
            f.enter_as(Phase::Running, "adopted", "adopted", now, out);
            let name = o
                .dead_main
                .map(|(n, _)| n)
                .unwrap_or_else(|| "the instance".into());
            f.on_failure(format!("{name} {DIED_WHILE_DOWN}"), false, now, p, out);
        }
        (was, true) => {
            let reason = format!("adopted (was {})", was.as_str());
            f.enter_as(Phase::Running, reason, "adopted", now, out);
            if let (State::Running, Some(d)) = (was, o.ran_for) {
                f.since = now.checked_sub(d).unwrap_or(now);
            }
            out.push(Action::StartHealth);
            if let (ServiceKind::Simple, Some((name, status))) = (p.kind, o.dead_main) {
                f.on_failure(format!("{name} {status}"), false, now, p, out);
            } else if was == State::Stopping {
                // The previous supervisor was stopping it: finish the job.
                f.begin_stop(
                    AfterStop::Stop,
                    None,
                    "stop resumed after adoption",
                    now,
                    p,
                    out,
                );
            }
        }
    }
}

fn waiting_address(f: &mut Fsm, ev: Event, now: Instant, p: &Policy, out: &mut Vec<Action>) {
    match ev {
        Event::AddressReady => {
            f.enter(
                Phase::Starting { script_done: false },
                "address configured",
                now,
                out,
            );
            out.push(Action::Launch);
        }
        Event::Timeout { .. } => {
            let why = format!(
                "{} is not configured on this node after {}",
                p.address.as_deref().unwrap_or("the address"),
                humantime::format_duration(f.limit)
            );
            f.fail_start(why, now, p, out);
        }
        Event::LaunchFailed(why) => f.fail_start(why, now, p, out),
        Event::Stop { .. } | Event::Kill | Event::Reset => {
            out.push(Action::Deadline(None));
            out.push(Action::Cleanup);
            f.enter(Phase::Stopped, "stop requested", now, out);
            out.push(Action::Answer(Answer::StartCancelled(
                "stop requested".into(),
            )));
            out.push(Action::Answer(Answer::Stopped));
        }
        Event::Start { .. } => nop(),
        Event::Launched
        | Event::ScriptExited { .. }
        | Event::Ready
        | Event::ReadyFailed(_)
        | Event::ProcessExited { .. }
        | Event::Empty
        | Event::StopCommandExited { .. }
        | Event::Audited
        | Event::Violation(_)
        | Event::Adopted(_) => nop(),
    }
}

fn starting(
    f: &mut Fsm,
    script_done: bool,
    ev: Event,
    now: Instant,
    p: &Policy,
    out: &mut Vec<Action>,
) {
    match ev {
        Event::Launched if p.kind == ServiceKind::Simple => f.after_launch(now, p, out),
        // Forking: the script's exit, not its exec, is what counts.
        Event::Launched => nop(),
        Event::ScriptExited { ok: true, .. } => {
            f.phase = Phase::Starting { script_done: true };
            f.after_launch(now, p, out);
        }
        Event::ScriptExited { ok: false, status } => {
            f.fail_start(format!("start script {status}"), now, p, out)
        }
        Event::LaunchFailed(why) | Event::ReadyFailed(why) => f.fail_start(why, now, p, out),
        Event::Ready => {
            out.push(Action::Deadline(None));
            f.become_running("ready", now, p, out);
        }
        Event::ProcessExited { name, status, .. } => {
            f.fail_start(format!("{name} {status} before it was ready"), now, p, out)
        }
        Event::Empty if p.kind == ServiceKind::Forking && script_done => f.fail_start(
            "the start script exited 0 but no process of the instance is left".into(),
            now,
            p,
            out,
        ),
        // Simple: a process exit says more (ProcessExited); forking before
        // the script is done: the script is still there.
        Event::Empty => nop(),
        Event::Timeout {
            stalled: Some(step),
        } => {
            let why = format!(
                "{step} did not answer within {}",
                humantime::format_duration(f.limit)
            );
            f.fail_start(why, now, p, out);
        }
        Event::Timeout { stalled: None } => {
            let why = format!("not ready after {}", humantime::format_duration(f.limit));
            f.fail_start(why, now, p, out);
        }
        Event::Stop { timeout } => {
            f.begin_stop(AfterStop::Stop, timeout, "stop requested", now, p, out)
        }
        Event::Kill => f.kill("kill requested", now, out),
        Event::Start { .. } | Event::Reset => nop(),
        Event::AddressReady
        | Event::StopCommandExited { .. }
        | Event::Audited
        | Event::Violation(_)
        | Event::Adopted(_) => nop(),
    }
}

fn running(f: &mut Fsm, ev: Event, now: Instant, p: &Policy, out: &mut Vec<Action>) {
    match ev {
        Event::ProcessExited {
            name,
            status,
            clean,
        } => f.on_failure(format!("{name} {status}"), clean, now, p, out),
        Event::Empty => f.on_failure(
            "every process of the instance exited".into(),
            false,
            now,
            p,
            out,
        ),
        Event::Audited => {
            out.push(Action::StartHealth);
            out.push(Action::Answer(Answer::Started));
        }
        Event::Violation(why) => f.fail_start(why, now, p, out),
        Event::Stop { timeout } => {
            f.begin_stop(AfterStop::Stop, timeout, "stop requested", now, p, out)
        }
        Event::Kill => f.kill("kill requested", now, out),
        Event::Start { .. } | Event::Reset => nop(),
        Event::AddressReady
        | Event::Launched
        | Event::LaunchFailed(_)
        | Event::ScriptExited { .. }
        | Event::Ready
        | Event::ReadyFailed(_)
        | Event::StopCommandExited { .. }
        | Event::Timeout { .. }
        | Event::Adopted(_) => nop(),
    }
}

type StopData = (AfterStop, bool, Option<Option<std::time::Duration>>);

fn stopping(
    f: &mut Fsm,
    (after, killed, queued): StopData,
    ev: Event,
    now: Instant,
    p: &Policy,
    out: &mut Vec<Action>,
) {
    match ev {
        Event::Empty => f.finish_stop(after, queued, now, p, out),
        Event::Start { timeout } => {
            f.phase = Phase::Stopping {
                after,
                killed,
                start_queued: Some(timeout),
            }
        }
        Event::Stop { .. } => {
            // A stop after a start request: the start is off.
            f.phase = Phase::Stopping {
                after,
                killed,
                start_queued: None,
            }
        }
        Event::Kill => f.kill("kill requested", now, out),
        // The orderly stop failed: fall back to the signal now, the
        // SIGKILL deadline stays.
        Event::StopCommandExited { ok: false } if !killed => {
            out.push(Action::Signal(p.stop_signal))
        }
        Event::StopCommandExited { .. } => nop(),
        Event::Timeout { .. } if !killed => f.escalate(now, out),
        Event::Timeout { .. } => {
            // SIGKILL did not empty the instance (D state, or a process
            // that left the cgroup). Keep waiting; say so to whoever waits.
            f.last_failure = Some("processes did not exit after SIGKILL".into());
            out.push(Action::Deadline(None));
            out.push(Action::Answer(Answer::StopStuck));
        }
        Event::Reset
        | Event::AddressReady
        | Event::Launched
        | Event::LaunchFailed(_)
        | Event::ScriptExited { .. }
        | Event::Ready
        | Event::ReadyFailed(_)
        | Event::ProcessExited { .. }
        | Event::Audited
        | Event::Violation(_)
        | Event::Adopted(_) => nop(),
    }
}

fn restarting(f: &mut Fsm, ev: Event, now: Instant, p: &Policy, out: &mut Vec<Action>) {
    match ev {
        Event::Timeout { .. } => {
            f.auto_start = true;
            f.begin_start(None, "restarting after failure", now, p, out);
        }
        Event::Start { timeout } => f.requested_start(timeout, now, p, out),
        Event::Stop { .. } | Event::Kill | Event::Reset => {
            out.push(Action::Deadline(None));
            out.push(Action::Cleanup);
            f.enter(Phase::Stopped, "stop requested", now, out);
            out.push(Action::Answer(Answer::Stopped));
        }
        Event::AddressReady
        | Event::Launched
        | Event::LaunchFailed(_)
        | Event::ScriptExited { .. }
        | Event::Ready
        | Event::ReadyFailed(_)
        | Event::ProcessExited { .. }
        | Event::Empty
        | Event::StopCommandExited { .. }
        | Event::Audited
        | Event::Violation(_)
        | Event::Adopted(_) => nop(),
    }
}

fn failed(f: &mut Fsm, ev: Event, now: Instant, p: &Policy, out: &mut Vec<Action>) {
    match ev {
        // Failed may still have processes (a partial instance): stop what
        // is left first, then start.
        Event::Start { timeout } => {
            f.begin_stop(
                AfterStop::Stop,
                None,
                "start requested: stopping what is left of the failed instance first",
                now,
                p,
                out,
            );
            if let Phase::Stopping { start_queued, .. } = &mut f.phase {
                *start_queued = Some(timeout);
            }
        }
        Event::Stop { timeout } => {
            f.begin_stop(AfterStop::Stop, timeout, "stop requested", now, p, out)
        }
        Event::Reset => {
            f.restarts.clear();
            f.restart_count = 0;
            f.last_failure = None;
            f.begin_stop(
                AfterStop::Stop,
                None,
                "failed state cleared (reset)",
                now,
                p,
                out,
            );
        }
        Event::Kill => f.kill("kill requested", now, out),
        Event::AddressReady
        | Event::Launched
        | Event::LaunchFailed(_)
        | Event::ScriptExited { .. }
        | Event::Ready
        | Event::ReadyFailed(_)
        | Event::ProcessExited { .. }
        | Event::Empty
        | Event::StopCommandExited { .. }
        | Event::Timeout { .. }
        | Event::Audited
        | Event::Violation(_)
        | Event::Adopted(_) => nop(),
    }
}
