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

use crate::model::{RestartSpec, ServiceKind};

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
        after: AfterStop,
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
pub enum AfterStop {
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
    /// The wall-clock time since its record's `since`: an instance found
    /// running as its record says goes on with that uptime, it does not
    /// start again at the adoption (the table uses it for that case only).
    pub ran_for: Option<Duration>,
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
    pub(super) fn enter(
        &mut self,
        to: Phase,
        reason: impl Into<String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let hook = to.state().hook();
        self.enter_as(to, reason, hook, now, out);
    }

    /// Enters `to`, announced to hooks as `hook`.
    pub(super) fn enter_as(
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
}

#[cfg(test)]
#[path = "fsm_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fsm_pairs_tests.rs"]
mod pairs_tests;
