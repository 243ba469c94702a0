//! The life cycle of one instance: a pure state × event table.
//!
//! `step` never reads the clock or touches the host: it gets `now` and the
//! event, changes the state and returns [`Action`]s, which the event loop
//! (the one executor) performs; their outcomes come back as events. Pairs
//! that mean nothing (a `Ready` while stopping) are no-ops, as in s6.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::{RestartPolicy, RestartSpec, ServiceKind};

/// After SIGKILL, how long to wait for the kernel to finish the job before
/// reporting processes that will not die (uninterruptible sleep).
pub const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Stopped,
    /// Waiting for the logical address to be configured on this node.
    WaitingAddress,
    /// Processes launched (or start script running); waiting for readiness.
    Starting,
    Running,
    Stopping,
    /// Waiting out the backoff before an automatic restart.
    Restarting,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::WaitingAddress => "waiting-address",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Restarting => "restarting",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "stopped" => State::Stopped,
            "waiting-address" => State::WaitingAddress,
            "starting" => State::Starting,
            "running" => State::Running,
            "stopping" => State::Stopping,
            "restarting" => State::Restarting,
            "failed" => State::Failed,
            _ => return None,
        })
    }

    /// States in which processes of the instance may exist.
    pub fn may_have_processes(self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Stopping | State::Failed
        )
    }
}

/// What to do once the instance is empty while stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// A requested stop: end `stopped`.
    Stop,
    /// Failed start or unrecoverable failure: end `failed` with the reason.
    Fail(String),
    /// An automatic restart: wait out the backoff, then start again.
    Restart(Duration),
}

/// The parts of the instance definition the table depends on.
#[derive(Debug, Clone)]
pub struct Policy {
    pub kind: ServiceKind,
    pub restart: RestartSpec,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub stop_signal: i32,
    pub has_stop_command: bool,
    pub has_ready_check: bool,
    pub gate_address: bool,
    /// The logical address, for messages.
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `timeout`: overrides the service's start timeout.
    Start {
        timeout: Option<Duration>,
    },
    Stop {
        timeout: Option<Duration>,
    },
    Kill,
    /// Clear a failed state (and stop what is left).
    Reset,
    AddressReady,
    /// All processes were forked (their exec results may still fail).
    Launched,
    /// Something failed before or at exec; nothing useful runs.
    LaunchFailed(String),
    /// Forking services: the start script exited with this status.
    ScriptExited {
        ok: bool,
        status: String,
    },
    Ready,
    /// A readiness check gave up for good (not a retryable miss).
    ReadyFailed(String),
    /// A process the instance needs exited (simple services).
    ProcessExited {
        name: String,
        status: String,
        clean: bool,
    },
    /// No process of the instance remains.
    Empty,
    /// The stop command finished.
    StopCommandExited {
        ok: bool,
    },
    /// The instance's deadline passed; `stalled`: the step of the start's
    /// storage check that had not answered by then (observed by the loop).
    Timeout {
        stalled: Option<String>,
    },
    /// A rule the running instance breaks (strict_bind): fail like a start.
    Violation(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Begin waiting for the address (the loop reports `AddressReady`).
    WaitAddress,
    /// Lock, cgroup, logs, fork/exec every process.
    Launch,
    /// Begin the readiness check (reports `Ready` / `ReadyFailed`).
    CheckReady,
    /// Stop any readiness probe in flight.
    CancelChecks,
    RunStopCommand,
    /// Send this signal to every process of the instance.
    Signal(i32),
    KillAll,
    /// The one timer of the instance (None: cancel it).
    Deadline(Option<Instant>),
    /// State changed: log, persist, run hooks, answer waiters.
    Transition {
        from: State,
        to: State,
        reason: String,
    },
    /// Nothing runs any more: release lock, cgroup, owned address.
    Cleanup,
}

/// One instance's life-cycle state.
#[derive(Debug, Clone)]
pub struct Fsm {
    pub state: State,
    pub since: Instant,
    pub deadline: Option<Instant>,
    /// What ends the current `Stopping`.
    pub then: Then,
    pub killed: bool,
    /// Automatic restarts within the window, oldest first.
    pub restarts: VecDeque<Instant>,
    /// Total automatic restarts since the last manual start.
    pub restart_count: u32,
    /// Why the last failure happened.
    pub last_failure: Option<String>,
    /// The current start was made by the restart policy (not a request).
    auto_start: bool,
    /// A start request arrived while stopping: start once empty.
    start_queued: Option<Option<Duration>>,
    /// For forking services: the start script has exited successfully.
    script_done: bool,
    /// The time limit of the current start (the request's or the service's).
    limit: Duration,
}

impl Fsm {
    pub fn new(now: Instant) -> Fsm {
        Fsm {
            state: State::Stopped,
            since: now,
            deadline: None,
            then: Then::Stop,
            killed: false,
            restarts: VecDeque::new(),
            restart_count: 0,
            last_failure: None,
            auto_start: false,
            start_queued: None,
            script_done: false,
            limit: Duration::ZERO,
        }
    }

    /// An instance found running by a restarted supervisor.
    pub fn adopted(now: Instant, state: State) -> Fsm {
        let mut f = Fsm::new(now);
        f.state = state;
        f.script_done = true;
        f
    }

    fn go(&mut self, to: State, reason: impl Into<String>, now: Instant, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        self.since = now;
        out.push(Action::Transition {
            from,
            to,
            reason: reason.into(),
        });
    }

    fn set_deadline(&mut self, at: Option<Instant>, out: &mut Vec<Action>) {
        self.deadline = at;
        out.push(Action::Deadline(at));
    }

    pub fn step(&mut self, ev: Event, now: Instant, p: &Policy) -> Vec<Action> {
        let mut out = Vec::new();
        use Event as E;
        use State as S;
        match (self.state, ev) {
            // ---- start
            // Failed may still have processes (a partial instance): stop
            // what is left first, then start.
            (S::Failed, E::Start { timeout }) => {
                self.begin_stop(
                    Then::Stop,
                    None,
                    "start requested: stopping what is left of the failed instance first",
                    now,
                    p,
                    &mut out,
                );
                self.start_queued = Some(timeout);
            }
            (S::Stopped | S::Restarting, E::Start { timeout }) => {
                self.auto_start = false;
                self.restart_count = 0;
                self.begin_start(timeout, "start requested", now, p, &mut out);
            }
            (S::Stopping, E::Start { timeout }) => self.start_queued = Some(timeout),
            (S::WaitingAddress | S::Starting | S::Running, E::Start { .. }) => {}
            (S::WaitingAddress, E::AddressReady) => {
                self.go(S::Starting, "address configured", now, &mut out);
                out.push(Action::Launch);
            }
            (S::Starting, E::Launched) if p.kind == ServiceKind::Simple => {
                self.after_launch(now, p, &mut out)
            }
            (S::Starting, E::ScriptExited { ok: true, .. }) => {
                self.script_done = true;
                self.after_launch(now, p, &mut out);
            }
            (S::Starting, E::ScriptExited { ok: false, status }) => {
                self.fail_start(format!("start script {status}"), now, p, &mut out);
            }
            (S::Starting, E::LaunchFailed(why)) => self.fail_start(why, now, p, &mut out),
            (S::Starting, E::Ready) => {
                self.set_deadline(None, &mut out);
                self.go(S::Running, "ready", now, &mut out);
            }
            (S::Starting, E::ReadyFailed(why)) => self.fail_start(why, now, p, &mut out),
            (S::Starting, E::ProcessExited { name, status, .. }) => {
                self.fail_start(
                    format!("{name} {status} before it was ready"),
                    now,
                    p,
                    &mut out,
                );
            }
            (S::Starting, E::Empty) if p.kind == ServiceKind::Forking && self.script_done => {
                self.fail_start(
                    "the start script exited 0 but no process of the instance is left".into(),
                    now,
                    p,
                    &mut out,
                );
            }
            (
                S::Starting,
                E::Timeout {
                    stalled: Some(step),
                },
            ) => {
                let why = format!(
                    "{step} did not answer within {}",
                    humantime::format_duration(self.limit)
                );
                self.fail_start(why, now, p, &mut out);
            }
            (S::WaitingAddress | S::Starting, E::Timeout { .. }) => {
                let why = if self.state == S::WaitingAddress {
                    format!(
                        "{} is not configured on this node",
                        p.address.as_deref().unwrap_or("the address")
                    )
                } else {
                    "not ready".to_string()
                };
                self.fail_start(
                    format!("{why} after {}", humantime::format_duration(self.limit)),
                    now,
                    p,
                    &mut out,
                );
            }

            // ---- running
            (
                S::Running,
                E::ProcessExited {
                    name,
                    status,
                    clean,
                },
            ) => {
                let why = format!("{name} {status}");
                self.on_failure(why, clean, now, p, &mut out);
            }
            (S::Running, E::Violation(why)) => self.fail_start(why, now, p, &mut out),
            (S::Running, E::Empty) => {
                let why = "every process of the instance exited".to_string();
                self.on_failure(why, false, now, p, &mut out);
            }

            // ---- stop, kill, reset
            (S::Stopped, E::Stop { .. } | E::Kill | E::Reset) => {
                self.start_queued = None;
            }
            (S::Restarting | S::WaitingAddress, E::Stop { .. } | E::Kill | E::Reset) => {
                self.set_deadline(None, &mut out);
                self.go(S::Stopped, "stop requested", now, &mut out);
                out.push(Action::Cleanup);
            }
            (S::Starting | S::Running | S::Failed, E::Stop { timeout }) => {
                self.begin_stop(Then::Stop, timeout, "stop requested", now, p, &mut out);
            }
            (S::Failed, E::Reset) => {
                self.restarts.clear();
                self.restart_count = 0;
                self.last_failure = None;
                self.begin_stop(
                    Then::Stop,
                    None,
                    "failed state cleared (reset)",
                    now,
                    p,
                    &mut out,
                );
            }
            (S::Stopping, E::Stop { .. }) => self.start_queued = None,
            (S::Starting | S::Running | S::Failed | S::Stopping, E::Kill) => {
                self.start_queued = None;
                if self.state != S::Stopping {
                    out.push(Action::CancelChecks);
                    self.then = Then::Stop;
                    self.go(S::Stopping, "kill requested", now, &mut out);
                } else if matches!(self.then, Then::Restart(_)) {
                    self.then = Then::Stop;
                }
                self.killed = true;
                out.push(Action::KillAll);
                self.set_deadline(Some(now + KILL_GRACE), &mut out);
            }
            (S::Stopping, E::StopCommandExited { ok: false }) if !self.killed => {
                // The orderly stop failed: fall back to the signal now, the
                // SIGKILL deadline stays.
                out.push(Action::Signal(p.stop_signal));
            }
            (S::Stopping, E::Timeout { .. }) => {
                if !self.killed {
                    self.killed = true;
                    out.push(Action::KillAll);
                    self.set_deadline(Some(now + KILL_GRACE), &mut out);
                } else {
                    // SIGKILL did not empty the instance (D state, or a
                    // process that left the cgroup). Keep waiting, say so.
                    self.last_failure = Some("processes did not exit after SIGKILL".into());
                    self.set_deadline(None, &mut out);
                    out.push(Action::Transition {
                        from: S::Stopping,
                        to: S::Stopping,
                        reason: "processes did not exit after SIGKILL".into(),
                    });
                }
            }
            (S::Stopping, E::Empty) => self.finish_stop(now, p, &mut out),

            // ---- restart backoff
            (S::Restarting, E::Timeout { .. }) => {
                self.auto_start = true;
                self.begin_start(None, "restarting after failure", now, p, &mut out);
            }

            // Everything else means nothing in that state.
            _ => {}
        }
        out
    }

    fn begin_start(
        &mut self,
        timeout: Option<Duration>,
        reason: &str,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        self.killed = false;
        self.script_done = false;
        self.start_queued = None;
        self.then = Then::Stop;
        let t = timeout.unwrap_or(p.start_timeout);
        self.limit = t;
        self.set_deadline(Some(now + t), out);
        if p.gate_address {
            self.go(State::WaitingAddress, reason, now, out);
            out.push(Action::WaitAddress);
        } else {
            self.go(State::Starting, reason, now, out);
            out.push(Action::Launch);
        }
    }

    fn after_launch(&mut self, now: Instant, p: &Policy, out: &mut Vec<Action>) {
        if p.has_ready_check {
            out.push(Action::CheckReady);
        } else {
            self.set_deadline(None, out);
            self.go(State::Running, "started (no readiness check)", now, out);
        }
    }

    /// A start that did not reach `running`: remove every trace of it.
    fn fail_start(&mut self, why: String, now: Instant, p: &Policy, out: &mut Vec<Action>) {
        out.push(Action::CancelChecks);
        self.last_failure = Some(why.clone());
        let then = if self.auto_start {
            match self.next_restart(now, &p.restart, false) {
                Some(delay) => Then::Restart(delay),
                None => Then::Fail(format!(
                    "{why}; restart limit reached ({} in {})",
                    p.restart.max,
                    humantime::format_duration(p.restart.window)
                )),
            }
        } else {
            Then::Fail(why.clone())
        };
        // A start that failed leaves nothing behind, and fast: SIGKILL.
        self.then = then;
        self.killed = true;
        self.go(State::Stopping, format!("start failed: {why}"), now, out);
        out.push(Action::KillAll);
        self.set_deadline(Some(now + KILL_GRACE), out);
    }

    fn on_failure(
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
                    Then::Restart(delay),
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
                    format!(
                        "{why}; restart limit reached ({} in {})",
                        p.restart.max,
                        humantime::format_duration(p.restart.window)
                    )
                } else {
                    why
                };
                self.last_failure = Some(reason.clone());
                // Left as it is: the cluster (or operator) sees `failed`
                // and decides; `stop` removes what is left.
                self.set_deadline(None, out);
                self.go(State::Failed, reason, now, out);
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

    fn begin_stop(
        &mut self,
        then: Then,
        timeout: Option<Duration>,
        reason: &str,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::CancelChecks);
        self.then = then;
        self.killed = false;
        self.go(State::Stopping, reason, now, out);
        if p.has_stop_command {
            out.push(Action::RunStopCommand);
        } else {
            out.push(Action::Signal(p.stop_signal));
        }
        self.set_deadline(Some(now + timeout.unwrap_or(p.stop_timeout)), out);
    }

    fn finish_stop(&mut self, now: Instant, p: &Policy, out: &mut Vec<Action>) {
        self.set_deadline(None, out);
        out.push(Action::Cleanup);
        match std::mem::replace(&mut self.then, Then::Stop) {
            Then::Stop => {
                self.go(State::Stopped, "stopped", now, out);
                if let Some(timeout) = self.start_queued.take() {
                    self.auto_start = false;
                    self.restart_count = 0;
                    self.begin_start(timeout, "start requested", now, p, out);
                }
            }
            Then::Fail(why) => {
                self.last_failure = Some(why.clone());
                self.go(State::Failed, why, now, out);
            }
            Then::Restart(delay) => {
                self.set_deadline(Some(now + delay), out);
                self.go(
                    State::Restarting,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            kind: ServiceKind::Simple,
            restart: RestartSpec {
                policy: RestartPolicy::No,
                max: 2,
                window: Duration::from_secs(60),
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(3),
            },
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            stop_signal: libc::SIGTERM,
            has_stop_command: false,
            has_ready_check: true,
            gate_address: false,
            address: None,
        }
    }

    /// Runs `events` from Stopped; returns the state after each.
    fn run(p: &Policy, events: Vec<Event>) -> (Fsm, Vec<State>) {
        let t0 = Instant::now();
        let mut f = Fsm::new(t0);
        let mut seen = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            f.step(e, t0 + Duration::from_secs(i as u64), p);
            seen.push(f.state);
        }
        (f, seen)
    }

    #[test]
    fn start_ready_stop() {
        let (_, s) = run(
            &policy(),
            vec![
                Event::Start { timeout: None },
                Event::Launched,
                Event::Ready,
                Event::Stop { timeout: None },
                Event::Empty,
            ],
        );
        use State::*;
        assert_eq!(s, vec![Starting, Starting, Running, Stopping, Stopped]);
    }

    #[test]
    fn table_of_meaningless_pairs_is_noop() {
        let p = policy();
        let t0 = Instant::now();
        for ev in [
            Event::Ready,
            Event::Empty,
            Event::Launched,
            Event::Timeout { stalled: None },
            Event::AddressReady,
        ] {
            let mut f = Fsm::new(t0);
            assert!(f.step(ev.clone(), t0, &p).is_empty(), "{ev:?} in stopped");
            assert_eq!(f.state, State::Stopped);
        }
    }

    #[test]
    fn address_gate_then_timeout_fails_and_kills() {
        let mut p = policy();
        p.gate_address = true;
        let t0 = Instant::now();
        let mut f = Fsm::new(t0);
        let a = f.step(Event::Start { timeout: None }, t0, &p);
        assert!(a.contains(&Action::WaitAddress));
        assert_eq!(f.state, State::WaitingAddress);
        let a = f.step(
            Event::Timeout { stalled: None },
            t0 + Duration::from_secs(10),
            &p,
        );
        assert!(
            a.contains(&Action::KillAll),
            "failed start leaves nothing behind"
        );
        assert_eq!(f.state, State::Stopping);
        f.step(Event::Empty, t0 + Duration::from_secs(10), &p);
        assert_eq!(f.state, State::Failed);
        assert!(
            f.last_failure
                .as_deref()
                .unwrap()
                .contains("address is not configured")
        );
    }

    #[test]
    fn crash_without_policy_is_failed_and_kept() {
        let (f, s) = run(
            &policy(),
            vec![
                Event::Start { timeout: None },
                Event::Launched,
                Event::Ready,
                Event::ProcessExited {
                    name: "counter".into(),
                    status: "exited with status 3".into(),
                    clean: false,
                },
            ],
        );
        assert_eq!(*s.last().unwrap(), State::Failed);
        assert_eq!(
            f.last_failure.as_deref(),
            Some("counter exited with status 3")
        );
    }

    #[test]
    fn restarts_back_off_then_fail_at_max() {
        let mut p = policy();
        p.restart.policy = RestartPolicy::OnFailure;
        let t0 = Instant::now();
        let mut f = Fsm::new(t0);
        let crash = || Event::ProcessExited {
            name: "c".into(),
            status: "killed by signal 9".into(),
            clean: false,
        };
        f.step(Event::Start { timeout: None }, t0, &p);
        f.step(Event::Launched, t0, &p);
        f.step(Event::Ready, t0, &p);
        let mut delays = Vec::new();
        for round in 0..2 {
            let now = t0 + Duration::from_secs(round * 10 + 1);
            f.step(crash(), now, &p);
            assert_eq!(f.state, State::Stopping);
            let a = f.step(Event::Empty, now, &p);
            assert_eq!(f.state, State::Restarting);
            let d = a.iter().find_map(|x| match x {
                Action::Deadline(Some(at)) => Some(*at - now),
                _ => None,
            });
            delays.push(d.unwrap());
            f.step(Event::Timeout { stalled: None }, now, &p);
            assert_eq!(f.state, State::Starting);
            f.step(Event::Launched, now, &p);
            f.step(Event::Ready, now, &p);
        }
        assert_eq!(delays, vec![Duration::from_secs(1), Duration::from_secs(2)]);
        f.step(crash(), t0 + Duration::from_secs(30), &p);
        assert_eq!(
            f.state,
            State::Failed,
            "third crash within the window exceeds max=2"
        );
        assert!(
            f.last_failure
                .as_deref()
                .unwrap()
                .contains("restart limit reached")
        );
        // reset clears the failed state
        f.step(Event::Reset, t0 + Duration::from_secs(31), &p);
        f.step(Event::Empty, t0 + Duration::from_secs(31), &p);
        assert_eq!(f.state, State::Stopped);
        assert!(f.restarts.is_empty());
    }

    #[test]
    fn on_failure_does_not_restart_clean_exit() {
        let mut p = policy();
        p.restart.policy = RestartPolicy::OnFailure;
        let (_, s) = run(
            &p,
            vec![
                Event::Start { timeout: None },
                Event::Launched,
                Event::Ready,
                Event::ProcessExited {
                    name: "c".into(),
                    status: "exited with status 0".into(),
                    clean: true,
                },
            ],
        );
        assert_eq!(*s.last().unwrap(), State::Failed);
    }

    #[test]
    fn stop_escalates_to_kill_at_deadline() {
        let p = policy();
        let t0 = Instant::now();
        let mut f = Fsm::new(t0);
        f.step(Event::Start { timeout: None }, t0, &p);
        f.step(Event::Launched, t0, &p);
        f.step(Event::Ready, t0, &p);
        let a = f.step(Event::Stop { timeout: None }, t0, &p);
        assert!(a.contains(&Action::Signal(libc::SIGTERM)));
        assert!(a.contains(&Action::Deadline(Some(t0 + Duration::from_secs(5)))));
        let a = f.step(
            Event::Timeout { stalled: None },
            t0 + Duration::from_secs(5),
            &p,
        );
        assert!(a.contains(&Action::KillAll));
        f.step(Event::Empty, t0 + Duration::from_secs(6), &p);
        assert_eq!(f.state, State::Stopped);
    }

    #[test]
    fn failed_stop_command_falls_back_to_signal() {
        let mut p = policy();
        p.has_stop_command = true;
        let t0 = Instant::now();
        let mut f = Fsm::new(t0);
        for e in [
            Event::Start { timeout: None },
            Event::Launched,
            Event::Ready,
        ] {
            f.step(e, t0, &p);
        }
        let a = f.step(Event::Stop { timeout: None }, t0, &p);
        assert!(a.contains(&Action::RunStopCommand));
        let a = f.step(Event::StopCommandExited { ok: false }, t0, &p);
        assert_eq!(a, vec![Action::Signal(libc::SIGTERM)]);
    }

    #[test]
    fn forking_lives_after_script_and_fails_when_empty() {
        let mut p = policy();
        p.kind = ServiceKind::Forking;
        p.has_ready_check = false;
        let (_, s) = run(
            &p,
            vec![
                Event::Start { timeout: None },
                Event::Launched,
                Event::ScriptExited {
                    ok: true,
                    status: "exited with status 0".into(),
                },
                Event::Empty,
            ],
        );
        use State::*;
        assert_eq!(s, vec![Starting, Starting, Running, Failed]);
    }

    #[test]
    fn start_while_stopping_is_queued() {
        let p = policy();
        let (_, s) = run(
            &p,
            vec![
                Event::Start { timeout: None },
                Event::Launched,
                Event::Ready,
                Event::Stop { timeout: None },
                Event::Start { timeout: None },
                Event::Empty,
            ],
        );
        assert_eq!(*s.last().unwrap(), State::Starting);
    }

    #[test]
    fn failed_start_ready_failure_kills() {
        let p = policy();
        let t0 = Instant::now();
        let mut f = Fsm::new(t0);
        f.step(Event::Start { timeout: None }, t0, &p);
        f.step(Event::Launched, t0, &p);
        let a = f.step(
            Event::ReadyFailed("tcp 127.0.0.2:9003: connection refused".into()),
            t0,
            &p,
        );
        assert!(a.contains(&Action::KillAll));
        assert!(a.contains(&Action::CancelChecks));
        f.step(Event::Empty, t0, &p);
        assert_eq!(f.state, State::Failed);
    }
}
