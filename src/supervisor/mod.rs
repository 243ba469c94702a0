//! The daemon: one thread, one blocking `epoll_wait` over the signalfd,
//! the control socket, client connections, inotify (cgroup.events),
//! rtnetlink (addresses), probe sockets and pidfds, with the nearest timer
//! deadline as its timeout. It never sleeps to poll: with nothing to do it
//! does not wake up (s6-supervise's rule).
//!
//! Each instance's life cycle is the pure table in [`fsm`]; this module and
//! its siblings are the one executor of the actions that table returns.

pub mod fsm;
pub mod instance;
mod table;
mod transitions;

mod batch;
mod children;
mod conn;
mod event_loop;
mod exec;
#[cfg(test)]
mod executor_tests;
mod forcebind;
pub mod hooks;
pub mod host;
mod launch;
mod persist;
mod prepare;
mod probe;
mod registry;
mod reload;
mod replies;
mod requests;
mod setup;
mod statefile;
mod status;
mod status_view;
mod timers;
mod timing;
pub mod worker;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::Epoll;
use nix::sys::inotify::Inotify;
use nix::sys::signalfd::SignalFd;

use crate::config::{self, Diag, Trust};
use crate::control::exit::Exit;
use crate::isolation::cgroup::{CgroupRoot, DiscoverError};
use crate::model::Config;
use fsm::Event;
use instance::Inst;
use setup::{
    bind_sockets, discover_cgroups, event_set, node_name, prepare_runtime, raise_nofile, record,
    sd_notify, take_signals, weigh_session,
};

/// Epoll tokens: the kind in the top byte, a value below.
mod tok {
    pub const SIGNAL: u64 = 1 << 56;
    pub const LISTEN: u64 = 2 << 56;
    pub const INOTIFY: u64 = 3 << 56;
    pub const NETLINK: u64 = 4 << 56;
    pub const CONN: u64 = 5 << 56;
    pub const ERRPIPE: u64 = 6 << 56;
    pub const PROBE: u64 = 7 << 56;
    pub const PIDFD: u64 = 8 << 56;
    pub const WORKER: u64 = 9 << 56;
    pub const KIND: u64 = 0xff << 56;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

pub struct Options {
    pub runtime_dir: PathBuf,
    pub config_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_level: tracing::Level,
    /// Write "ready" here once the socket listens (set by `cohost start`
    /// when it launches the daemon), then close it.
    pub notify_fd: Option<RawFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "runtime dir {path}: {source}; it must be a directory this user can write (see --runtime-dir)"
    )]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    RunDir(#[from] crate::rundir::RunDirError),
    #[error("the instances file is invalid:\n{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Config(Vec<Diag>),
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{step}: {source}")]
    Os {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

impl DaemonError {
    /// The daemon's exit status: an invalid instances file is the
    /// caller's to fix, like `validate`'s.
    pub fn exit(&self) -> Exit {
        match self {
            DaemonError::Config(_) => Exit::Invalid,
            _ => Exit::Failed,
        }
    }
}

fn os(step: &'static str) -> impl FnOnce(nix::Error) -> DaemonError {
    move |e| DaemonError::Os {
        step,
        source: e.into(),
    }
}

/// What a worker job hands back to the loop.
pub(crate) enum Outcome {
    /// The storage and name-service part of a start.
    Prepared {
        idx: usize,
        /// The run's usage baseline (read here when the cgroup is kept).
        base: crate::isolation::usage::Baseline,
        result: Box<Result<prepare::Prepared, prepare::PrepareError>>,
    },
    /// A file readiness or health check.
    FileChecked {
        idx: usize,
        slot: usize,
        epoch: u64,
        ok: bool,
        message: String,
    },
    /// The last lines of a failed start's process logs.
    Tails { idx: usize, text: String },
    /// The log file system's free space (a warning when full).
    LogSpace { idx: usize, warning: Option<String> },
    /// The lock of an adopted instance, taken back.
    LockBack {
        idx: usize,
        lock: Option<Box<crate::isolation::lock::Lock>>,
    },
    /// Every running instance's usage.
    Usage { read: Vec<status::UsageRead> },
    /// Something was dropped (closed) there.
    Released,
}

pub(crate) struct Daemon {
    pub opts: Options,
    pub config: Arc<Config>,
    pub node: String,
    pub insts: Vec<Inst>,
    pub index: HashMap<String, usize>,
    epoll: Epoll,
    sigfd: SignalFd,
    listener: OwnedFd,
    /// The status group's socket, if one is configured (see setup.rs).
    readers_listener: Option<OwnedFd>,
    /// `[supervisor] status_group`, resolved at start (see setup.rs).
    pub status_gid: Option<u32>,
    inotify: Inotify,
    netlink: Option<OwnedFd>,
    /// Instances waiting for their address.
    pub waiting_address: BTreeSet<usize>,
    pub cgroot: Result<CgroupRoot, DiscoverError>,
    pub conns: HashMap<u64, conn::Conn>,
    /// Per-user caps on connections and busy requests (guarantee 5).
    pub fair: conn::Fairness,
    next_conn: u64,
    /// Whose each child, descriptor and watch is (registry.rs).
    pub reg: registry::Registry,
    pub timers: timers::Timers,
    queue: VecDeque<(usize, Event)>,
    pub batches: Vec<batch::Batch>,
    pub dirty: BTreeSet<usize>,
    pub shutting_down: bool,
    /// The checked runtime dir, held while we run: a second daemon for it
    /// is refused (also after it was deleted).
    pub(crate) rundir: setup::Runtime,
    /// Instances whose last state write failed, and why (shown in status).
    pub state_errors: HashMap<usize, String>,
    /// An fd kept in reserve to answer a client when all others are used.
    pub reserve_fd: Option<OwnedFd>,
    /// Instances that became ready and wait for their bind audit.
    pub ready_queue: Vec<usize>,
    pub last_audit: Option<Instant>,
    /// The least time between two audits (ten times the last one's cost).
    pub audit_gap: std::time::Duration,
    pub audit_scheduled: bool,
    /// Connections with replies queued, written at the end of the iteration.
    pub unflushed: BTreeSet<u64>,
    /// When our cgroup subtree's statistics were last flushed in one read
    /// ([`crate::isolation::usage::flush_subtree`]).
    pub stats_flushed: Option<Instant>,
    /// The read of every instance's usage in flight on a worker (its job
    /// and when it was asked for), and the `status`/`list` requests that
    /// wait for it, with when each arrived and how old its figures may be.
    pub usage_read: Option<(worker::JobId, Instant)>,
    pub list_waiters: Vec<(u64, Instant, Duration)>,
    /// The lists being written, by connection, each where it is.
    pub listings: HashMap<u64, status::Listing>,
    /// Lists whose sockets took their last part: each makes its next at
    /// the end of the turn.
    pub list_turn: BTreeSet<u64>,
    /// The next read of every instance's usage starts no sooner (daemon
    /// clock): after a gap as long as the last read took.
    pub usage_rest_until: Option<Instant>,
    /// A timer is set for that next read.
    pub usage_scheduled: bool,
    /// Threads for the calls that may block (storage, name service).
    pub worker: worker::Worker<Outcome>,
    /// Where the executor's effects go (the real system, or a test's fake).
    pub host: Box<dyn host::Host>,
    /// Files (on instances' storage) to be closed on the worker.
    pub to_release: Vec<Box<dyn std::any::Any + Send>>,
    /// Instances whose `old_lock` waits to be closed.
    pub old_locks: Vec<usize>,
    /// force_bind / force_source programs and address set (forcebind.rs).
    pub(crate) kernel: forcebind::Kernel,
}

pub fn run(mut opts: Options) -> Exit {
    crate::util::big_buffers_from_mmap();
    // First, before anything is opened that stays: children take their
    // own files from us and get nothing else of ours (process::spawn).
    // `COHOST_NO_FETCH=1`: the older way (a copy of the table, closed in
    // the child), for a kernel that misbehaves and for its tests.
    if std::env::var_os("COHOST_NO_FETCH").is_some_and(|v| v == "1") {
        tracing::info!(
            "COHOST_NO_FETCH=1: children get a copy of the supervisor's files and close them"
        );
    } else {
        match crate::process::spawn::enable_fetch(&mut opts.notify_fd) {
            Ok(()) => tracing::debug!("children take their files through a pidfd (no copies)"),
            Err(e) => tracing::warn!(
                "children get a copy of each of the supervisor's files ({e}): a shared path \
                 that hangs can then stall the start of another instance"
            ),
        }
    }
    let mut d = match Daemon::new(opts) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("cohost daemon: {e}");
            return e.exit();
        }
    };
    match d.main_loop() {
        Ok(()) => Exit::Ok,
        Err(e) => {
            tracing::error!("event loop failed: {e}");
            Exit::Failed
        }
    }
}

impl Daemon {
    fn new(opts: Options) -> Result<Daemon, DaemonError> {
        Self::with_host(opts, Box::new(host::LinuxHost::default()))
    }

    fn with_host(opts: Options, host: Box<dyn host::Host>) -> Result<Daemon, DaemonError> {
        let rt = opts.runtime_dir.clone();
        let rundir = prepare_runtime(&rt)?;
        let config = config::load(&opts.config_dir, Trust::for_current_user())
            .map_err(DaemonError::Config)?;
        let node = node_name(&config);

        let sigfd = take_signals()?;
        crate::process::spawn::remember_nofile();
        raise_nofile();
        weigh_session();

        let cgroot = discover_cgroups(&config, &rt);

        let sockets = bind_sockets(&rundir.dir, config.supervisor.status_group.as_deref())?;
        // After the signal mask: its threads inherit it (signals stay ours).
        let worker = worker::Worker::new().map_err(|source| DaemonError::Os {
            step: "eventfd for the worker",
            source,
        })?;
        let (epoll, inotify) = event_set(&sigfd, &sockets.main, sockets.readers.as_ref(), &worker)?;

        let now = host.now();
        let mut insts = Vec::with_capacity(config.instances.len());
        let mut index = HashMap::with_capacity(config.instances.len());
        for (id, spec) in &config.instances {
            index.insert(id.clone(), insts.len());
            insts.push(Inst::new(spec.clone(), now));
        }
        record(&rundir, &cgroot).map_err(|source| DaemonError::RuntimeDir {
            path: rt.clone(),
            source,
        })?;
        let mut d = Daemon {
            opts,
            config: Arc::new(config),
            node,
            insts,
            index,
            epoll,
            sigfd,
            listener: sockets.main,
            readers_listener: sockets.readers,
            status_gid: sockets.status_gid,
            inotify,
            netlink: None,
            waiting_address: BTreeSet::new(),
            cgroot,
            conns: HashMap::new(),
            fair: conn::Fairness::default(),
            next_conn: 1,
            reg: registry::Registry::default(),
            timers: timers::Timers::default(),
            queue: VecDeque::new(),
            batches: Vec::new(),
            dirty: BTreeSet::new(),
            shutting_down: false,
            rundir,
            state_errors: HashMap::new(),
            reserve_fd: std::fs::File::open("/dev/null").ok().map(OwnedFd::from),
            ready_queue: Vec::new(),
            last_audit: None,
            audit_gap: std::time::Duration::ZERO,
            audit_scheduled: false,
            unflushed: BTreeSet::new(),
            stats_flushed: None,
            usage_read: None,
            list_waiters: Vec::new(),
            listings: HashMap::new(),
            list_turn: BTreeSet::new(),
            usage_rest_until: None,
            usage_scheduled: false,
            worker,
            host,
            to_release: Vec::new(),
            old_locks: Vec::new(),
            kernel: forcebind::Kernel::default(),
        };
        d.adopt_all();
        d.init_force_bind();
        // What parsing the file took and freed (a 10,000-instance file's
        // parse peaks at 46 MB) goes back before anything runs.
        crate::util::give_back_memory();
        d.announce_ready();
        Ok(d)
    }

    /// Says "ready" (log, systemd, the launching client) and starts the
    /// instances marked `autostart`.
    fn announce_ready(&mut self) {
        let d = self;
        tracing::info!(
            pid = std::process::id(),
            config = %d.opts.config_dir.display(),
            runtime_dir = %d.opts.runtime_dir.display(),
            node = %d.node,
            instances = d.insts.len(),
            "daemon ready"
        );
        sd_notify(&format!(
            "READY=1\nMAINPID={}\nSTATUS=supervising {} instances",
            std::process::id(),
            d.insts.len()
        ));
        if let Some(fd) = d.opts.notify_fd.take() {
            // SAFETY: the fd was handed to us by the launching client.
            let f = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = nix::unistd::write(&f, b"ready\n");
        }
        let auto: Vec<String> = d
            .insts
            .iter()
            .filter(|i| i.spec.autostart)
            .map(|i| i.id().to_string())
            .collect();
        if !auto.is_empty() {
            d.start_batch(None, batch::Op::Up, auto);
        }
    }
}

/// The runtime dir's record of where this supervisor's cgroups are.
pub const CGROUP_RECORD: &str = "cgroup";

/// Duration since `t` in whole seconds, for status.
pub fn secs_since(t: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(t).as_secs()
}

pub const SIGKILL_WAIT: Duration = fsm::KILL_GRACE;
