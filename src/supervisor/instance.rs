//! What the daemon knows about one instance at run time.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::isolation::cgroup::InstanceCgroup;
use crate::isolation::lock::Lock;
use crate::model::{Check, InstanceSpec};
use crate::process::pidfd::Pidfd;
use crate::supervisor::fsm::{Fsm, Policy, State};

/// How a tracked process came to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcRole {
    /// A process of a simple service: its exit is the instance failing.
    Main,
    /// The start script of a forking service.
    StartScript,
    /// A process of the instance cohost did not start (a daemon left by a
    /// start script, found again after adoption). Its exit alone fails
    /// nothing; the instance ends when none of its processes is left.
    Member,
}

#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub pid: i32,
    pub start_time: u64,
    pub role: ProcRole,
    /// Our child: `waitpid` gives its status. Adopted processes are not.
    pub child: bool,
    /// Adopted processes: watched through their pidfd in the epoll set.
    pub pidfd: Option<Pidfd>,
    /// "exited with status 1" once it is gone.
    pub exit: Option<String>,
}

impl Proc {
    pub fn alive(&self) -> bool {
        self.exit.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeRole {
    Ready,
    Health,
}

impl ProbeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeRole::Ready => "ready",
            ProbeRole::Health => "health",
        }
    }
}

/// A probe run in flight.
#[derive(Debug)]
pub enum Running {
    Tcp {
        sock: OwnedFd,
        stage: TcpStage,
        deadline: Instant,
    },
    Command {
        pid: i32,
        deadline: Instant,
    },
    /// A file check out on the worker (the file may be on hung storage).
    File,
}

#[derive(Debug)]
pub enum TcpStage {
    Connecting,
    Reading(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub at: Instant,
    pub ok: bool,
    pub message: String,
}

/// A readiness or health check of the instance and its last result.
#[derive(Debug)]
pub struct Probe {
    pub role: ProbeRole,
    pub check: Check,
    pub timeout: Duration,
    /// Health: time between runs. Ready: unused (retries back off).
    pub interval: Duration,
    /// Bumped to invalidate timers and in-flight results.
    pub epoch: u64,
    pub running: Option<Running>,
    pub last: Option<ProbeResult>,
    pub attempts: u32,
    /// Connections waiting for this probe's next result (monitor).
    pub waiters: Vec<u64>,
    /// A file check sent to the worker that has not come back (it may hang
    /// for as long as the storage does): no second one is sent meanwhile.
    pub file_job: Option<(super::worker::JobId, Instant)>,
}

impl Probe {
    pub fn new(role: ProbeRole, check: Check, timeout: Duration, interval: Duration) -> Probe {
        Probe {
            role,
            check,
            timeout,
            interval,
            epoch: 0,
            running: None,
            last: None,
            attempts: 0,
            waiters: Vec::new(),
            file_job: None,
        }
    }

    /// The last result is recent enough to answer a monitor with.
    pub fn fresh(&self, now: Instant) -> bool {
        self.last
            .as_ref()
            .is_some_and(|r| now.duration_since(r.at) <= self.interval)
    }
}

/// What a connection waits for on this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// `running` (ok) or a start failure.
    Start,
    /// `stopped`.
    Stop,
    /// A monitor verdict once the probes in flight finish.
    Monitor,
}

#[derive(Debug)]
/// The fields that many instances lack (a ready probe, present only with
/// a readiness check; a lock and the last run's, with shared paths; a
/// spare cgroup; the looked-up user) are boxed: with 10,000 instances
/// they were ~0.8 KiB of each one without them.
pub struct Inst {
    pub spec: Arc<InstanceSpec>,
    /// A reload changed the definition; applied at the next start.
    pub next_spec: Option<Arc<InstanceSpec>>,
    /// A reload removed the instance: refused new starts.
    pub removed: bool,
    pub fsm: Fsm,
    /// Wall-clock time the current state began (for status).
    pub since_wall: SystemTime,
    pub procs: Vec<Proc>,
    pub cgroup: Option<InstanceCgroup>,
    /// The empty cgroup of the last run, with the limits it was made with:
    /// the next start reuses it (one mkdir and one rmdir less per restart).
    /// Removed when the instance is removed or the daemon exits.
    pub spare_cgroup: Option<Box<(InstanceCgroup, crate::model::Limits)>>,
    pub cg_watch: Option<nix::sys::inotify::WatchDescriptor>,
    pub lock: Option<Box<Lock>>,
    /// cohost added the address (address_mode = "own") and removes it.
    pub owned_address: bool,
    pub ready_probe: Option<Box<Probe>>,
    pub health: Vec<Probe>,
    pub waiters: Vec<(u64, WaitFor)>,
    /// Generation of the FSM deadline timer.
    pub deadline_epoch: u64,
    /// Pid of the running stop command.
    pub stop_cmd: Option<i32>,
    /// Conditions worth a look (bind audit, log space).
    pub warnings: Vec<String>,
    /// Last health verdict reported (for "unhealthy"/"healthy" events).
    pub healthy: Option<bool>,
    /// The instance was adopted from a previous supervisor.
    pub adopted: bool,
    /// Processes forked by the current launch whose exec is not confirmed.
    pub execs_pending: u32,
    /// Event hooks waiting to run, in order.
    pub hooks: super::hooks::HookQueue,
    /// The lock of the run that just ended, until the worker closes it.
    pub old_lock: Option<Box<crate::isolation::lock::Lock>>,
    /// The storage part of a start, out on a worker (it may hang there).
    pub preparing: Option<Preparing>,
    /// User and group as the last start looked them up: for the stop
    /// command and probe commands, which must not ask NSS on the loop.
    pub creds: Option<Box<crate::process::spawn::Creds>>,
    /// A read of the process logs' tails out on the worker.
    pub tail_job: Option<super::worker::JobId>,
    /// Start failures waiting for those tails before they are answered.
    pub failure_replies: Vec<super::replies::FailureReply>,
    /// The log file system's space, as last asked (see refresh_log_space).
    pub log_space: LogSpace,
    /// Start timing and the usage baseline (issue 15).
    pub obs: super::timing::Obs,
}

#[derive(Debug, Default)]
pub struct LogSpace {
    pub warning: Option<String>,
    pub job: Option<super::worker::JobId>,
    pub asked: Option<Instant>,
}

/// A prepare job out on the worker.
#[derive(Debug)]
pub struct Preparing {
    pub job: super::worker::JobId,
    pub progress: std::sync::Arc<super::worker::Progress>,
    pub since: Instant,
}

impl Inst {
    pub fn new(spec: Arc<InstanceSpec>, now: Instant) -> Inst {
        let (ready_probe, health) = probes_of(&spec);
        Inst {
            spec,
            next_spec: None,
            removed: false,
            fsm: Fsm::new(now),
            since_wall: SystemTime::now(),
            procs: Vec::new(),
            cgroup: None,
            spare_cgroup: None,
            cg_watch: None,
            lock: None,
            owned_address: false,
            ready_probe: ready_probe.map(Box::new),
            health,
            waiters: Vec::new(),
            deadline_epoch: 0,
            stop_cmd: None,
            warnings: Vec::new(),
            healthy: None,
            adopted: false,
            execs_pending: 0,
            hooks: Default::default(),
            old_lock: None,
            preparing: None,
            creds: None,
            tail_job: None,
            failure_replies: Vec::new(),
            log_space: LogSpace::default(),
            obs: Default::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn state(&self) -> State {
        self.fsm.state()
    }

    pub fn policy(&self) -> Policy {
        let s = &self.spec;
        Policy {
            kind: s.kind,
            restart: s.restart.clone(),
            start_timeout: s.ready.timeout,
            stop_timeout: s.stop.timeout,
            stop_signal: s.stop.signal,
            has_stop_command: s.stop.command.is_some(),
            has_ready_check: s.ready.check.is_some(),
            gate_address: s.address_mode != crate::model::AddressMode::None,
            owns_address: matches!(s.address_mode, crate::model::AddressMode::Own { .. }),
            audit: s.address.is_some() && s.port.is_some(),
            address: s.address.map(|a| a.to_string()),
        }
    }

    /// Takes a reloaded definition into use (only when nothing runs).
    pub fn apply_next_spec(&mut self) {
        if let Some(next) = self.next_spec.take() {
            let (r, h) = probes_of(&next);
            self.ready_probe = r.map(Box::new);
            self.health = h;
            self.spec = next;
        }
    }

    pub fn live_children(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.alive() && p.child)
    }
}

fn probes_of(spec: &InstanceSpec) -> (Option<Probe>, Vec<Probe>) {
    let ready = spec.ready.check.clone().map(|c| {
        // A readiness probe attempt never waits longer than this; the start
        // deadline bounds the whole.
        Probe::new(
            ProbeRole::Ready,
            c,
            Duration::from_secs(5).min(spec.ready.timeout),
            Duration::ZERO,
        )
    });
    let health = spec
        .health
        .iter()
        .map(|h| Probe::new(ProbeRole::Health, h.check.clone(), h.timeout, h.interval))
        .collect();
    (ready, health)
}
