//! The life cycle of one instance: a pure state × event table.
//!
//! `step` never reads the clock or touches the host: it gets `now` and the
//! event, changes the state and returns [`Action`]s, which the executor
//! performs; their outcomes come back as events. It is the only writer of
//! life-cycle state, and it decides what the outside hears: which waiting
//! clients are answered and how ([`Answer`]), which event hooks run.
//!
//! As in s6-supervise, every pair is written out: one function per state,
//! each matching every event, with the pairs that mean nothing in that
//! state spelled `nop` (a `Ready` while stopping, a second `Start` while
//! starting). The compiler checks that no pair is forgotten; the test
//! `every_pair_is_handled` walks all of them. The cells themselves live in
//! [`super::table`]; this module holds the types and the helpers the cells
//! share.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::{RestartPolicy, RestartSpec, ServiceKind};

/// After SIGKILL, how long to wait for the kernel to finish the job before
/// reporting processes that will not die (uninterruptible sleep).
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// The state's name, as status, state files and the exit-code tables see
/// it; the data a state carries is in [`Phase`].
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

    /// The hook event a transition into this state is announced as.
    pub fn hook(self) -> &'static str {
        match self {
            State::WaitingAddress | State::Starting => "starting",
            State::Running => "ready",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Restarting => "restarting",
            State::Failed => "failed",
        }
    }
}

/// A state with the data only it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    WaitingAddress,
    Starting {
        /// Forking services: the start script has exited successfully.
        script_done: bool,
    },
    Running,
    Stopping {
        /// What ends this stop once the instance is empty.
        then: Then,
        /// SIGKILL was sent: the deadline now is the kill grace.
        killed: bool,
        /// A start request arrived meanwhile: start once empty.
        start_queued: Option<Option<Duration>>,
    },
    Restarting {
        until: Instant,
    },
    Failed,
}

impl Phase {
    pub fn state(&self) -> State {
        match self {
            Phase::Stopped => State::Stopped,
            Phase::WaitingAddress => State::WaitingAddress,
            Phase::Starting { .. } => State::Starting,
            Phase::Running => State::Running,
            Phase::Stopping { .. } => State::Stopping,
            Phase::Restarting { .. } => State::Restarting,
            Phase::Failed => State::Failed,
        }
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
    /// cohost adds the address itself (address_mode = "own"): announce it
    /// again once the service answers on it.
    pub owns_address: bool,
    /// The instance has an address and a port: a bind audit confirms
    /// readiness (a wildcard listener would block a co-resident copy).
    pub audit: bool,
    /// The logical address, for messages.
    pub address: Option<String>,
}

/// What the supervisor saw of an instance left by a previous supervisor:
/// the facts adoption is decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The state its record says (or `Running` for a populated cgroup
    /// with no record).
    pub was: State,
    /// Some process of it still lives.
    pub alive: bool,
    /// A main process of a simple service that died meanwhile.
    pub dead_main: Option<(String, String)>,
    pub restarts: u32,
    pub last_failure: Option<String>,
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
    /// The bind audit found nothing wrong.
    Audited,
    /// A rule the running instance breaks (strict_bind): fail like a start.
    Violation(String),
    /// Found running (or failed) by a restarted supervisor.
    Adopted(Observed),
}

/// What waiting clients are told; the executor words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Start waiters: running (and audited).
    Started,
    /// Start waiters: the start failed, with the reason.
    StartFailed(String),
    /// Start waiters: a stop came first.
    StartCancelled(String),
    /// Stop waiters: nothing of the instance is left.
    Stopped,
    /// Stop waiters: nothing is left, it ended failed.
    StoppedFailed(String),
    /// Stop waiters: SIGKILL did not empty the instance.
    StopStuck,
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
    /// State changed: log, persist, answer monitors, tell `up`/`down`.
    Transition {
        from: State,
        to: State,
        reason: String,
    },
    /// Run the instance's event hooks for this event.
    Hook {
        event: &'static str,
        from: State,
        to: State,
        reason: String,
    },
    /// Tell the clients waiting on the instance.
    Answer(Answer),
    /// Check the instance's listeners (reports `Audited` / `Violation`).
    Audit,
    /// Announce the owned address again (gratuitous ARP).
    Announce,
    /// Begin the periodic health checks.
    StartHealth,
    /// Nothing runs any more: release lock, cgroup, owned address.
    Cleanup,
    /// Take a definition changed by a reload into use (nothing runs).
    ApplyNextSpec,
}

/// One instance's life-cycle state.
#[derive(Debug, Clone)]
pub struct Fsm {
    pub phase: Phase,
    pub since: Instant,
    /// Automatic restarts within the window, oldest first.
    pub restarts: VecDeque<Instant>,
    /// Total automatic restarts since the last manual start.
    pub restart_count: u32,
    /// Why the last failure happened.
    pub last_failure: Option<String>,
    /// The current start was made by the restart policy (not a request).
    pub(super) auto_start: bool,
    /// The time limit of the current start (the request's or the service's).
    pub(super) limit: Duration,
}

impl Fsm {
    pub fn new(now: Instant) -> Fsm {
        Fsm {
            phase: Phase::Stopped,
            since: now,
            restarts: VecDeque::new(),
            restart_count: 0,
            last_failure: None,
            auto_start: false,
            limit: Duration::ZERO,
        }
    }

    pub fn state(&self) -> State {
        self.phase.state()
    }

    /// Feeds one event through the table.
    pub fn step(&mut self, ev: Event, now: Instant, p: &Policy) -> Vec<Action> {
        let mut out = Vec::new();
        super::table::step(self, ev, now, p, &mut out);
        out
    }

    /// Enters `to`: the one place the state changes.
    pub(super) fn go(
        &mut self,
        to: Phase,
        reason: impl Into<String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let hook = to.state().hook();
        self.go_as(to, reason, hook, now, out);
    }

    /// Enters `to`, announced to hooks as `hook`.
    pub(super) fn go_as(
        &mut self,
        to: Phase,
        reason: impl Into<String>,
        hook: &'static str,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let from = self.state();
        let reason = reason.into();
        self.phase = to;
        self.since = now;
        let to = self.state();
        out.push(Action::Transition {
            from,
            to,
            reason: reason.clone(),
        });
        if from != to {
            out.push(Action::Hook {
                event: hook,
                from,
                to,
                reason,
            });
        }
        if matches!(to, State::Stopped | State::Failed) {
            out.push(Action::ApplyNextSpec);
        }
    }

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
            self.go(Phase::WaitingAddress, reason, now, out);
            out.push(Action::WaitAddress);
        } else {
            self.go(Phase::Starting { script_done: false }, reason, now, out);
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
        self.go(Phase::Running, reason, now, out);
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
        let then = if self.auto_start {
            match self.next_restart(now, &p.restart, false) {
                Some(delay) => Then::Restart(delay),
                None => Then::Fail(limit_reached(&why, &p.restart)),
            }
        } else {
            Then::Fail(why.clone())
        };
        self.go(
            Phase::Stopping {
                then,
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
                    limit_reached(&why, &p.restart)
                } else {
                    why
                };
                self.last_failure = Some(reason.clone());
                // Left as it is: the cluster (or operator) sees `failed`
                // and decides; `stop` removes what is left.
                out.push(Action::Deadline(None));
                self.go(Phase::Failed, reason.clone(), now, out);
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
        then: Then,
        timeout: Option<Duration>,
        reason: &str,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::CancelChecks);
        self.go(
            Phase::Stopping {
                then,
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
                then,
                killed,
                start_queued,
            } => {
                *start_queued = None;
                if matches!(then, Then::Restart(_)) {
                    *then = Then::Stop;
                }
                *killed = true;
            }
            _ => {
                out.push(Action::CancelChecks);
                self.go(
                    Phase::Stopping {
                        then: Then::Stop,
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
        then: Then,
        start_queued: Option<Option<Duration>>,
        now: Instant,
        p: &Policy,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Deadline(None));
        out.push(Action::Cleanup);
        match then {
            Then::Stop => {
                self.go(Phase::Stopped, "stopped", now, out);
                out.push(Action::Answer(Answer::Stopped));
                match start_queued {
                    Some(timeout) => self.requested_start(timeout, now, p, out),
                    None => out.push(Action::Answer(Answer::StartCancelled("stopped".into()))),
                }
            }
            Then::Fail(why) => {
                self.last_failure = Some(why.clone());
                self.go(Phase::Failed, why.clone(), now, out);
                out.push(Action::Answer(Answer::StartFailed(why.clone())));
                out.push(Action::Answer(Answer::StoppedFailed(why)));
            }
            Then::Restart(delay) => {
                out.push(Action::Deadline(Some(now + delay)));
                self.go(
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
            owns_address: false,
            audit: false,
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
            seen.push(f.state());
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
            assert_eq!(f.state(), State::Stopped);
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
        assert_eq!(f.state(), State::WaitingAddress);
        let a = f.step(
            Event::Timeout { stalled: None },
            t0 + Duration::from_secs(10),
            &p,
        );
        assert!(
            a.contains(&Action::KillAll),
            "failed start leaves nothing behind"
        );
        assert_eq!(f.state(), State::Stopping);
        f.step(Event::Empty, t0 + Duration::from_secs(10), &p);
        assert_eq!(f.state(), State::Failed);
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
            assert_eq!(f.state(), State::Stopping);
            let a = f.step(Event::Empty, now, &p);
            assert_eq!(f.state(), State::Restarting);
            let d = a.iter().find_map(|x| match x {
                Action::Deadline(Some(at)) => Some(*at - now),
                _ => None,
            });
            delays.push(d.unwrap());
            f.step(Event::Timeout { stalled: None }, now, &p);
            assert_eq!(f.state(), State::Starting);
            f.step(Event::Launched, now, &p);
            f.step(Event::Ready, now, &p);
        }
        assert_eq!(delays, vec![Duration::from_secs(1), Duration::from_secs(2)]);
        f.step(crash(), t0 + Duration::from_secs(30), &p);
        assert_eq!(
            f.state(),
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
        assert_eq!(f.state(), State::Stopped);
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
        assert_eq!(f.state(), State::Stopped);
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
        assert_eq!(f.state(), State::Failed);
    }

    fn every_event() -> Vec<Event> {
        vec![
            Event::Start { timeout: None },
            Event::Stop { timeout: None },
            Event::Kill,
            Event::Reset,
            Event::AddressReady,
            Event::Launched,
            Event::LaunchFailed("x".into()),
            Event::ScriptExited {
                ok: true,
                status: "exited with status 0".into(),
            },
            Event::ScriptExited {
                ok: false,
                status: "exited with status 1".into(),
            },
            Event::Ready,
            Event::ReadyFailed("x".into()),
            Event::ProcessExited {
                name: "p".into(),
                status: "exited with status 1".into(),
                clean: false,
            },
            Event::Empty,
            Event::StopCommandExited { ok: true },
            Event::StopCommandExited { ok: false },
            Event::Timeout { stalled: None },
            Event::Timeout {
                stalled: Some("paths.data /x".into()),
            },
            Event::Audited,
            Event::Violation("x".into()),
            Event::Adopted(Observed {
                was: State::Running,
                alive: true,
                dead_main: None,
                restarts: 0,
                last_failure: None,
            }),
        ]
    }

    /// Drives a fresh table into each state (with each kind of stop).
    fn in_every_state(p: &Policy, t0: Instant) -> Vec<Fsm> {
        let mut v = Vec::new();
        let mut f = Fsm::new(t0);
        v.push(f.clone()); // stopped
        let mut gated = p.clone();
        gated.gate_address = true;
        let mut g = Fsm::new(t0);
        g.step(Event::Start { timeout: None }, t0, &gated);
        v.push(g); // waiting-address
        f.step(Event::Start { timeout: None }, t0, p);
        v.push(f.clone()); // starting
        f.step(Event::Launched, t0, p);
        f.step(Event::Ready, t0, p);
        v.push(f.clone()); // running
        let mut s = f.clone();
        s.step(Event::Stop { timeout: None }, t0, p);
        v.push(s.clone()); // stopping, not killed
        s.step(Event::Timeout { stalled: None }, t0, p);
        v.push(s); // stopping, killed
        let mut r = f.clone();
        let mut rp = p.clone();
        rp.restart.policy = RestartPolicy::Always;
        r.step(
            Event::ProcessExited {
                name: "p".into(),
                status: "killed".into(),
                clean: false,
            },
            t0,
            &rp,
        );
        r.step(Event::Empty, t0, &rp);
        v.push(r); // restarting
        let mut x = f.clone();
        x.step(
            Event::ProcessExited {
                name: "p".into(),
                status: "killed".into(),
                clean: false,
            },
            t0,
            p,
        );
        v.push(x); // failed
        v
    }

    #[test]
    fn every_pair_is_handled() {
        let t0 = Instant::now();
        for kind in [ServiceKind::Simple, ServiceKind::Forking] {
            let mut p = policy();
            p.kind = kind;
            let states = in_every_state(&p, t0);
            let names: Vec<State> = states.iter().map(|f| f.state()).collect();
            use State::*;
            assert_eq!(
                names,
                vec![
                    Stopped,
                    WaitingAddress,
                    Starting,
                    Running,
                    Stopping,
                    Stopping,
                    Restarting,
                    Failed
                ]
            );
            for f in &states {
                for ev in every_event() {
                    let mut g = f.clone();
                    let from = g.state();
                    let actions = g.step(ev.clone(), t0 + Duration::from_secs(1), &p);
                    // A transition is announced exactly when the state
                    // changes; the table never leaves it silently.
                    let announced = actions
                        .iter()
                        .filter(|a| matches!(a, Action::Transition { .. }))
                        .count();
                    if g.state() != from {
                        assert!(announced >= 1, "{from:?} x {ev:?}: {actions:?}");
                    }
                    // Killing is always followed by a deadline: a kill that
                    // does not empty the instance is reported, not waited on
                    // for ever.
                    if actions.contains(&Action::KillAll) {
                        assert!(
                            actions
                                .iter()
                                .any(|a| matches!(a, Action::Deadline(Some(_)))),
                            "{from:?} x {ev:?}: {actions:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn meaningless_pairs_change_nothing() {
        let t0 = Instant::now();
        let p = policy();
        let states = in_every_state(&p, t0);
        let running = &states[3];
        for ev in [
            Event::Start { timeout: None },
            Event::Reset,
            Event::AddressReady,
            Event::Launched,
            Event::Ready,
            Event::StopCommandExited { ok: true },
            Event::Timeout { stalled: None },
        ] {
            let mut g = running.clone();
            assert!(g.step(ev.clone(), t0, &p).is_empty(), "running x {ev:?}");
            assert_eq!(g.state(), State::Running);
        }
        let stopping = &states[4];
        for ev in [
            Event::Ready,
            Event::Launched,
            Event::ProcessExited {
                name: "p".into(),
                status: "x".into(),
                clean: false,
            },
            Event::Audited,
        ] {
            let mut g = stopping.clone();
            assert!(g.step(ev.clone(), t0, &p).is_empty(), "stopping x {ev:?}");
        }
    }

    #[test]
    fn sigkill_that_does_not_empty_is_reported_not_a_fake_transition() {
        let t0 = Instant::now();
        let p = policy();
        let states = in_every_state(&p, t0);
        let mut f = states[5].clone(); // stopping, killed
        let a = f.step(Event::Timeout { stalled: None }, t0, &p);
        assert!(a.contains(&Action::Answer(Answer::StopStuck)), "{a:?}");
        assert!(!a.iter().any(|x| matches!(x, Action::Transition { .. })));
        assert_eq!(f.state(), State::Stopping);
    }

    #[test]
    fn adoption_is_decided_by_the_table() {
        let t0 = Instant::now();
        let p = policy();
        let o = |was, alive, dead: bool| Observed {
            was,
            alive,
            dead_main: dead.then(|| {
                (
                    "s".to_string(),
                    "exited while the supervisor was down".to_string(),
                )
            }),
            restarts: 2,
            last_failure: None,
        };
        let mut f = Fsm::new(t0);
        let a = f.step(Event::Adopted(o(State::Running, true, false)), t0, &p);
        assert_eq!(f.state(), State::Running);
        assert_eq!(f.restart_count, 2);
        assert!(a.contains(&Action::StartHealth));
        assert!(a.iter().any(|x| matches!(
            x,
            Action::Hook {
                event: "adopted",
                ..
            }
        )));
        let mut f = Fsm::new(t0);
        f.step(Event::Adopted(o(State::Running, false, true)), t0, &p);
        assert_eq!(f.state(), State::Failed, "died while down, policy no");
        assert!(
            f.last_failure
                .as_deref()
                .unwrap()
                .contains("exited while the supervisor was down")
        );
        let mut f = Fsm::new(t0);
        f.step(Event::Adopted(o(State::Stopping, false, false)), t0, &p);
        assert_eq!(f.state(), State::Stopped);
        let mut f = Fsm::new(t0);
        let a = f.step(Event::Adopted(o(State::Stopping, true, false)), t0, &p);
        assert_eq!(f.state(), State::Stopping, "the stop is finished: {a:?}");
        let mut f = Fsm::new(t0);
        f.step(Event::Adopted(o(State::Failed, true, false)), t0, &p);
        assert_eq!(f.state(), State::Failed);
    }

    #[test]
    fn start_of_a_failed_instance_stops_what_is_left_first() {
        let t0 = Instant::now();
        let p = policy();
        let mut f = in_every_state(&p, t0)[7].clone();
        let a = f.step(Event::Start { timeout: None }, t0, &p);
        assert_eq!(f.state(), State::Stopping);
        assert!(a.contains(&Action::Signal(libc::SIGTERM)));
        f.step(Event::Empty, t0, &p);
        assert_eq!(f.state(), State::Starting, "then it starts");
    }
}
