//! The moves the table's cells share: start, stop, kill, fail, restart.
//! Each enters its state through [`Fsm::go`], the one writer of the state.

use std::time::{Duration, Instant};

use super::fsm::{Action, AfterStop, Answer, Fsm, KILL_GRACE, Phase, Policy};
use crate::model::{RestartPolicy, RestartSpec};

impl Fsm {
    pub(super) fn begin_start(
        &mut self,
        timeout: Option<Duration>,
        reason: &str,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        let t = timeout.unwrap_or(p.start_timeout);
        self.limit = t;
        out.push(Action::Deadline(Some(now + t)));
        if p.gate_address {
            self.enter(Phase::WaitingAddress, reason, now, out);
            out.push(Action::WaitAddress);
        } else {
            self.enter(Phase::Starting { script_done: false }, reason, now, out);
            out.push(Action::Launch);
        }
    }

    /// A request to start: a manual start resets the restart budget.
    pub(super) fn requested_start(
        &mut self,
        timeout: Option<Duration>,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        self.auto_start = false;
        self.restart_count = 0;
        self.begin_start(timeout, "start requested", now, p, out);
    }

    /// Launched, or a forking service's script done: ready check or running.
    pub(super) fn after_launch(&mut self, now: Instant, p: &Policy, out: &mut Vec<Action>) {
        if p.has_ready_check {
            out.push(Action::CheckReady);
        } else {
            out.push(Action::Deadline(None));
            self.become_running("started (no readiness check)", now, p, out);
        }
    }

    pub(super) fn become_running(
        &mut self,
        reason: &str,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        self.enter(Phase::Running, reason, now, out);
        if p.owns_address {
            out.push(Action::Announce);
        }
        if p.audit {
            out.push(Action::Audit);
        } else {
            out.push(Action::StartHealth);
            out.push(Action::Answer(Answer::Started));
        }
    }

    /// A start that did not reach `running`: remove every trace of it, fast.
    pub(super) fn fail_start(
        &mut self,
        why: String,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::CancelChecks);
        self.last_failure = Some(why.clone());
        let after = if self.auto_start {
            match self.next_restart(now, &p.restart, false) {
                Some(delay) => AfterStop::Restart(delay),
                None => AfterStop::Fail(limit_reached(&why, &p.restart)),
            }
        } else {
            AfterStop::Fail(why.clone())
        };
        self.enter(
            Phase::Stopping {
                after,
                killed: true,
                start_queued: None,
            },
            format!("start failed: {why}"),
            now,
            out,
        );
        out.push(Action::KillAll);
        out.push(Action::Deadline(Some(now + KILL_GRACE)));
    }

    /// A running instance failed: restart per policy, or stay `failed`.
    pub(super) fn on_failure(
        &mut self,
        why: String,
        clean: bool,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::CancelChecks);
        self.last_failure = Some(why.clone());
        match self.next_restart(now, &p.restart, clean) {
            Some(delay) => {
                // Stop what is left (gracefully), then back off and start.
                self.begin_stop(
                    AfterStop::Restart(delay),
                    None,
                    &format!("failed: {why}; restarting"),
                    now,
                    p,
                    out,
                );
            }
            None => {
                let reason = if p.restart.policy != RestartPolicy::No
                    && !(clean && p.restart.policy == RestartPolicy::OnFailure)
                {
                    limit_reached(&why, &p.restart)
                } else {
                    why
                };
                self.last_failure = Some(reason.clone());
                // Left as it is: the cluster (or operator) sees `failed`
                // and decides; `stop` removes what is left.
                out.push(Action::Deadline(None));
                self.enter(Phase::Failed, reason.clone(), now, out);
                out.push(Action::Answer(Answer::StartFailed(reason)));
            }
        }
    }

    /// The delay before the next automatic restart, or None when the
    /// policy says no or the budget within the window is spent.
    fn next_restart(&mut self, now: Instant, r: &RestartSpec, clean: bool) -> Option<Duration> {
        let wanted = match r.policy {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::Always => true,
        };
        if !wanted {
            return None;
        }
        while let Some(t) = self.restarts.front() {
            if now.duration_since(*t) > r.window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        if self.restarts.len() as u32 >= r.max {
            return None;
        }
        let exp = self.restarts.len().min(16) as u32;
        let delay = r.backoff.saturating_mul(1 << exp).min(r.max_backoff);
        self.restarts.push_back(now);
        self.restart_count += 1;
        Some(delay)
    }

    pub(super) fn begin_stop(
        &mut self,
        after: AfterStop,
        timeout: Option<Duration>,
        reason: &str,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::CancelChecks);
        self.enter(
            Phase::Stopping {
                after,
                killed: false,
                start_queued: None,
            },
            reason,
            now,
            out,
        );
        if p.has_stop_command {
            out.push(Action::RunStopCommand);
        } else {
            out.push(Action::Signal(p.stop_signal));
        }
        out.push(Action::Deadline(Some(
            now + timeout.unwrap_or(p.stop_timeout),
        )));
    }

    /// The stop timed out: SIGKILL, and the kill grace is the deadline.
    pub(super) fn escalate(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Phase::Stopping { killed, .. } = &mut self.phase {
            *killed = true;
        }
        out.push(Action::KillAll);
        out.push(Action::Deadline(Some(now + KILL_GRACE)));
    }

    /// A kill request: SIGKILL now, a queued start or restart is off, and
    /// the kill grace is the deadline.
    pub(super) fn kill(&mut self, reason: &str, now: Instant, out: &mut Vec<Action>) {
        match &mut self.phase {
            Phase::Stopping {
                after,
                killed,
                start_queued,
            } => {
                *start_queued = None;
                if matches!(after, AfterStop::Restart(_)) {
                    *after = AfterStop::Stop;
                }
                *killed = true;
            }
            _ => {
                out.push(Action::CancelChecks);
                self.enter(
                    Phase::Stopping {
                        after: AfterStop::Stop,
                        killed: true,
                        start_queued: None,
                    },
                    reason,
                    now,
                    out,
                );
            }
        }
        out.push(Action::KillAll);
        out.push(Action::Deadline(Some(now + KILL_GRACE)));
    }

    /// Empty while stopping: end as the stop was meant to.
    pub(super) fn finish_stop(
        &mut self,
        after: AfterStop,
        start_queued: Option<Option<Duration>>,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Deadline(None));
        out.push(Action::Cleanup);
        match after {
            AfterStop::Stop => {
                self.enter(Phase::Stopped, "stopped", now, out);
                out.push(Action::Answer(Answer::Stopped));
                match start_queued {
                    Some(timeout) => self.requested_start(timeout, now, p, out),
                    None => out.push(Action::Answer(Answer::StartCancelled("stopped".into()))),
                }
            }
            AfterStop::Fail(why) => {
                self.last_failure = Some(why.clone());
                self.enter(Phase::Failed, why.clone(), now, out);
                out.push(Action::Answer(Answer::StartFailed(why.clone())));
                out.push(Action::Answer(Answer::StoppedFailed(why)));
            }
            AfterStop::Restart(delay) => {
                out.push(Action::Deadline(Some(now + delay)));
                self.enter(
                    Phase::Restarting { until: now + delay },
                    format!(
                        "restart {} in {}",
                        self.restart_count,
                        humantime::format_duration(delay)
                    ),
                    now,
                    out,
                );
            }
        }
    }
}

fn limit_reached(why: &str, r: &RestartSpec) -> String {
    format!(
        "{why}; restart limit reached ({} in {})",
        r.max,
        humantime::format_duration(r.window)
    )
}
