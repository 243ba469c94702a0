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
mod exec;
mod forcebind;
pub mod hooks;
mod launch;
mod persist;
mod prepare;
mod probe;
mod requests;
mod setup;
mod statefile;
mod timers;
mod timing;
pub mod worker;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::inotify::{InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::config::{self, Diag, Trust};
use crate::isolation::cgroup::{self, CgroupRoot};
use crate::model::Config;
use fsm::Event;
use instance::Inst;
use setup::{bind_sockets, prepare_runtime, raise_nofile, sd_notify, weigh_session};

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
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) => 2,
            _ => 1,
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
    /// Something was dropped (closed) there.
    Released,
}

/// A child whose exec result is not known yet.
pub(crate) struct ErrPipe {
    pub idx: usize,
    pub child: crate::process::spawn::Child,
    pub buf: Vec<u8>,
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
    pub cg_watches: HashMap<nix::sys::inotify::WatchDescriptor, usize>,
    netlink: Option<OwnedFd>,
    /// Instances waiting for their address.
    pub waiting_address: BTreeSet<usize>,
    pub cgroot: Result<CgroupRoot, String>,
    pub conns: HashMap<u64, conn::Conn>,
    /// Per-user caps on connections and busy requests (guarantee 5).
    pub fair: conn::Fairness,
    next_conn: u64,
    pub children: HashMap<i32, children::Role>,
    pub timers: timers::Timers,
    queue: VecDeque<(usize, Event)>,
    pub batches: Vec<batch::Batch>,
    pub dirty: BTreeSet<usize>,
    pub shutting_down: bool,
    /// Exec-error pipes of children not yet known to have exec'd.
    pub errpipes: HashMap<RawFd, ErrPipe>,
    /// Probe sockets in flight: fd -> (instance, probe slot).
    pub probe_fds: HashMap<RawFd, (usize, usize)>,
    /// pidfds of adopted processes: fd -> (instance, pid).
    pub pidfds: HashMap<RawFd, (usize, i32)>,
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
    /// Threads for the calls that may block (storage, name service).
    pub worker: worker::Worker<Outcome>,
    /// Files (on instances' storage) to be closed on the worker.
    pub to_release: Vec<Box<dyn std::any::Any + Send>>,
    /// Instances whose `old_lock` waits to be closed.
    pub old_locks: Vec<usize>,
    /// force_bind / force_source programs and address set (forcebind.rs).
    pub(crate) kernel: forcebind::Kernel,
}

pub fn run(opts: Options) -> i32 {
    let mut d = match Daemon::new(opts) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("cohost daemon: {e}");
            return e.exit_code();
        }
    };
    match d.main_loop() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("event loop failed: {e}");
            1
        }
    }
}

impl Daemon {
    fn new(opts: Options) -> Result<Daemon, DaemonError> {
        let rt = opts.runtime_dir.clone();
        let rt_err = |source| DaemonError::RuntimeDir {
            path: rt.clone(),
            source,
        };
        let rundir = prepare_runtime(&rt)?;

        let config = config::load(&opts.config_dir, Trust::for_current_user())
            .map_err(DaemonError::Config)?;
        let node = match &config.supervisor.node {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into()),
        };

        // Signals arrive on the signalfd only; children get a clean mask
        // back before exec (process::spawn).
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        mask.thread_block().map_err(os("blocking signals"))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(os("signalfd"))?;
        // Orphans of instance processes (double forks) are re-parented to
        // us and reaped here: no zombie accumulates on the node.
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
            return Err(DaemonError::Os {
                step: "becoming child subreaper",
                source: io::Error::last_os_error(),
            });
        }
        crate::process::spawn::remember_nofile();
        raise_nofile();
        weigh_session();

        let cgroot = CgroupRoot::discover(&config.supervisor.cgroup, &cgroup::tag_for(&rt));
        match &cgroot {
            Ok(c) => {
                tracing::info!(cgroup = %c.base.display(), "tracking instances with cgroups");
                probe_clone3(&c.base);
            }
            Err(why) => {
                tracing::warn!("cgroups unavailable ({why}): tracking by process group and session")
            }
        }

        let setup::Listeners {
            main: listener,
            readers: readers_listener,
            status_gid,
        } = bind_sockets(&rundir.dir, config.supervisor.status_group.as_deref())?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(os("epoll_create"))?;
        // After the signal mask: its threads inherit it (signals stay ours).
        let worker = worker::Worker::new().map_err(|source| DaemonError::Os {
            step: "eventfd for the worker",
            source,
        })?;
        epoll
            .add(
                worker.fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, tok::WORKER),
            )
            .map_err(os("epoll_ctl"))?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(os("inotify_init"))?;
        epoll
            .add(
                sigfd.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, tok::SIGNAL),
            )
            .map_err(os("epoll_ctl"))?;
        epoll
            .add(
                listener.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, tok::LISTEN),
            )
            .map_err(os("epoll_ctl"))?;
        if let Some(r) = &readers_listener {
            epoll
                .add(
                    r.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, tok::LISTEN | 1),
                )
                .map_err(os("epoll_ctl"))?;
        }
        epoll
            .add(
                inotify.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, tok::INOTIFY),
            )
            .map_err(os("epoll_ctl"))?;

        let now = Instant::now();
        let mut insts = Vec::with_capacity(config.instances.len());
        let mut index = HashMap::with_capacity(config.instances.len());
        for (id, spec) in &config.instances {
            index.insert(id.clone(), insts.len());
            insts.push(Inst::new(spec.clone(), now));
        }
        rundir
            .dir
            .write_atomic("daemon.pid", format!("{}\n", std::process::id()).as_bytes())
            .map_err(|e| rt_err(io::Error::other(e)))?;
        // Where this supervisor's instance cgroups are: a CLI that finds no
        // daemon looks there (and only there) for what still runs
        // (cli/offline.rs). Without it, it would have to search the whole
        // hierarchy, where another supervisor with the same runtime dir
        // path (a node in a container beside us) has cgroups of the same
        // names.
        if let Ok(root) = &cgroot {
            let text = format!("{}\n", root.base.display());
            if let Err(e) = rundir.dir.write_atomic(CGROUP_RECORD, text.as_bytes()) {
                tracing::warn!("recording the cgroup base in {CGROUP_RECORD}: {e}");
            }
        }
        let mut d = Daemon {
            opts,
            config: Arc::new(config),
            node,
            insts,
            index,
            epoll,
            sigfd,
            listener,
            readers_listener,
            status_gid,
            inotify,
            cg_watches: HashMap::new(),
            netlink: None,
            waiting_address: BTreeSet::new(),
            cgroot,
            conns: HashMap::new(),
            fair: conn::Fairness::default(),
            next_conn: 1,
            children: HashMap::new(),
            timers: timers::Timers::default(),
            queue: VecDeque::new(),
            batches: Vec::new(),
            dirty: BTreeSet::new(),
            shutting_down: false,
            errpipes: HashMap::new(),
            probe_fds: HashMap::new(),
            pidfds: HashMap::new(),
            rundir,
            state_errors: HashMap::new(),
            reserve_fd: std::fs::File::open("/dev/null").ok().map(OwnedFd::from),
            ready_queue: Vec::new(),
            last_audit: None,
            audit_gap: std::time::Duration::ZERO,
            audit_scheduled: false,
            unflushed: BTreeSet::new(),
            worker,
            to_release: Vec::new(),
            old_locks: Vec::new(),
            kernel: forcebind::Kernel::default(),
        };
        d.adopt_all();
        d.init_force_bind();
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
        Ok(d)
    }

    pub fn register(&self, fd: impl AsFd, token: u64, flags: EpollFlags) {
        if let Err(e) = self.epoll.add(fd, EpollEvent::new(flags, token)) {
            tracing::error!("epoll_ctl add: {e}");
        }
    }

    pub fn reregister(&self, fd: impl AsFd, token: u64, flags: EpollFlags) {
        let mut ev = EpollEvent::new(flags, token);
        if let Err(e) = self.epoll.modify(fd, &mut ev) {
            tracing::error!("epoll_ctl mod: {e}");
        }
    }

    pub fn deregister(&self, fd: impl AsFd) {
        let _ = self.epoll.delete(fd);
    }

    /// Queues an event for an instance; `drain` feeds it to the table.
    pub fn post(&mut self, idx: usize, ev: Event) {
        self.queue.push_back((idx, ev));
    }

    /// Queues `ev` ahead of everything else: the instance's next step is
    /// taken before other instances' queued events (in `up`, each instance
    /// is launched right after its address check, not after all 500 checks).
    pub fn post_next(&mut self, idx: usize, ev: Event) {
        self.queue.push_front((idx, ev));
    }

    fn main_loop(&mut self) -> io::Result<()> {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            self.drain();
            if self.shutting_down && self.all_quiet() {
                self.shutdown_cleanup();
                tracing::info!("every instance stopped; daemon exits");
                return Ok(());
            }
            self.purge_stale_timers();
            let timeout = match self.timers.next_deadline() {
                None => EpollTimeout::NONE,
                Some(at) => {
                    let now = Instant::now();
                    // Round up: waking a millisecond early would spin.
                    let ms = at.saturating_duration_since(now).as_micros().div_ceil(1000);
                    EpollTimeout::try_from(ms.min(i32::MAX as u128) as u64)
                        .unwrap_or(EpollTimeout::MAX)
                }
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => 0,
                Err(e) => return Err(e.into()),
            };
            for ev in &events[..n] {
                self.dispatch(ev.data(), ev.events());
                self.drain();
            }
            self.fire_timers(Instant::now());
            // Before the replies go out: `cohost shutdown` returns once the
            // daemon has cleaned up (cgroups, socket), not before.
            if self.shutting_down && self.all_quiet() {
                self.shutdown_cleanup();
                tracing::info!("every instance stopped; daemon exits");
                return Ok(());
            }
            self.flush_replies();
            self.flush_releases();
            self.flush_state();
        }
    }

    fn dispatch(&mut self, token: u64, flags: EpollFlags) {
        match token & tok::KIND {
            tok::SIGNAL => self.on_signals(),
            tok::LISTEN => self.accept_all(token & !tok::KIND == 1),
            tok::INOTIFY => self.on_inotify(),
            tok::NETLINK => self.on_address_change(),
            tok::CONN => self.on_conn(token & !tok::KIND, flags),
            tok::ERRPIPE => self.on_errpipe((token & !tok::KIND) as RawFd),
            tok::PROBE => self.on_probe_fd((token & !tok::KIND) as RawFd),
            tok::PIDFD => self.on_pidfd((token & !tok::KIND) as RawFd),
            tok::WORKER => self.on_worker(),
            _ => {}
        }
    }

    fn on_signals(&mut self) {
        loop {
            match self.sigfd.read_signal() {
                Ok(Some(si)) => match si.ssi_signo as i32 {
                    libc::SIGCHLD => self.reap(),
                    libc::SIGHUP => {
                        tracing::info!("SIGHUP: rereading the instances file");
                        let (code, msg) = self.reload();
                        if code != 0 {
                            tracing::error!("reload refused: {msg}");
                        }
                    }
                    s @ (libc::SIGTERM | libc::SIGINT) => {
                        if self.shutting_down {
                            tracing::warn!(
                                signal = s,
                                "second stop signal: killing every instance now"
                            );
                            for idx in 0..self.insts.len() {
                                self.post(idx, Event::Kill);
                            }
                        } else {
                            tracing::info!(signal = s, "stopping every instance, then exiting");
                            self.begin_shutdown(None);
                        }
                    }
                    _ => {}
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("reading signalfd: {e}");
                    break;
                }
            }
        }
    }

    pub fn begin_shutdown(&mut self, conn: Option<u64>) {
        self.shutting_down = true;
        sd_notify("STOPPING=1\nSTATUS=stopping every instance");
        let all: Vec<String> = self
            .insts
            .iter()
            .filter(|i| i.state().may_have_processes() || i.state() != fsm::State::Stopped)
            .map(|i| i.id().to_string())
            .collect();
        self.start_batch(conn, batch::Op::Down, all);
    }

    fn all_quiet(&self) -> bool {
        self.insts.iter().all(|i| {
            matches!(i.state(), fsm::State::Stopped | fsm::State::Failed)
                && i.procs.iter().all(|p| !p.alive())
        }) && self.batches.is_empty()
            && self.conns.values().all(|c| c.idle_or_done())
    }

    fn shutdown_cleanup(&mut self) {
        // Nothing on storage is closed by the exiting thread itself.
        self.flush_releases();
        self.flush_state();
        self.finish_state();
        for idx in 0..self.insts.len() {
            self.release_spare_cgroup(idx);
        }
        if let Ok(root) = &self.cgroot {
            root.remove_base();
        }
        let _ = self.rundir.dir.remove(crate::control::client::SOCKET_NAME);
        let _ = self
            .rundir
            .dir
            .remove(crate::control::client::READERS_SOCKET_NAME);
        let _ = self.rundir.dir.remove("daemon.pid");
        // Last: a waiting `cohost shutdown` learns that all of the above is done.
        for c in self.conns.values_mut() {
            c.flush_blocking();
        }
    }

    /// Runs queued events through the table, and the resulting actions.
    fn drain(&mut self) {
        loop {
            self.drain_events();
            let waiting = self.ready_queue.len();
            self.audit_ready();
            // Done when nothing was audited (none waiting, or deferred).
            if waiting == 0 || self.ready_queue.len() == waiting {
                break;
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some((idx, ev)) = self.queue.pop_front() {
            let policy = self.insts[idx].policy();
            let now = Instant::now();
            tracing::debug!(instance = %self.insts[idx].id(), state = self.insts[idx].state().as_str(), event = ?ev, "event");
            let actions = self.insts[idx].fsm.step(ev, now, &policy);
            for a in actions {
                self.execute(idx, a, now);
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(key) = self.timers.pop_due(now) {
            self.on_timer(key, now);
            self.drain();
        }
    }

    /// Whether a timer still means something (cancellation is lazy: a key
    /// carries the epoch it was set for).
    fn timer_live(&self, key: &timers::Key) -> bool {
        match *key {
            timers::Key::Deadline { idx, epoch } => self.insts[idx].deadline_epoch == epoch,
            timers::Key::Probe { idx, slot, epoch } => {
                let inst = &self.insts[idx];
                let p = if slot == 0 {
                    inst.ready_probe.as_ref()
                } else {
                    inst.health.get(slot - 1)
                };
                p.is_some_and(|p| p.epoch == epoch)
            }
            timers::Key::Conn { id } => self
                .conns
                .get(&id)
                .is_some_and(|c| c.phase == conn::Phase::Reading),
            timers::Key::Hook { pid } => self.children.contains_key(&pid),
            timers::Key::Audit => self.audit_scheduled,
            timers::Key::Tails { idx, job } => {
                self.insts[idx].failure_replies.iter().any(|r| r.job == job)
            }
        }
    }

    /// Zero wake-ups when idle: a cancelled timer must not wake the loop.
    fn purge_stale_timers(&mut self) {
        let mut timers = std::mem::take(&mut self.timers);
        timers.purge_head(|k| self.timer_live(k));
        self.timers = timers;
    }

    fn on_timer(&mut self, key: timers::Key, now: Instant) {
        match key {
            timers::Key::Deadline { idx, epoch } => {
                if self.insts[idx].deadline_epoch == epoch {
                    // A prepare still out: what it is stuck on.
                    let stalled = self.insts[idx].preparing.as_ref().map(|p| p.progress.get());
                    self.post(idx, Event::Timeout { stalled });
                }
            }
            timers::Key::Probe { idx, slot, epoch } => self.on_probe_timer(idx, slot, epoch, now),
            timers::Key::Conn { id } => self.on_conn_timeout(id),
            timers::Key::Hook { pid } => self.kill_group_if_child(pid),
            timers::Key::Tails { idx, job } => self.tails_overdue(idx, job),
            timers::Key::Audit => {
                self.audit_scheduled = false;
                self.last_audit = None;
                self.audit_ready();
            }
        }
    }

    /// SIGKILL to the process group of our own unreaped child `pid` (a
    /// hook or probe command that overran). The group id cannot have been
    /// reused: its leader is our unreaped child.
    pub fn kill_group_if_child(&mut self, pid: i32) {
        if self.children.contains_key(&pid) {
            // SAFETY: kill(2) on a group whose leader we have not reaped.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }

    fn on_worker(&mut self) {
        for (job, out) in self.worker.take() {
            match out {
                Outcome::Prepared { idx, result } => self.on_prepared(idx, job, *result),
                Outcome::FileChecked {
                    idx,
                    slot,
                    epoch,
                    ok,
                    message,
                } => self.on_file_checked(idx, slot, epoch, ok, message),
                Outcome::Tails { idx, text } => self.on_tails(idx, job, text),
                Outcome::LogSpace { idx, warning } => self.on_log_space(idx, job, warning),
                Outcome::LockBack { idx, lock } => self.on_lock_back(idx, lock),
                Outcome::Released => {}
            }
        }
    }

    fn on_inotify(&mut self) {
        let events = match self.inotify.read_events() {
            Ok(e) => e,
            Err(_) => return,
        };
        let mut touched = BTreeSet::new();
        for ev in events {
            if let Some(idx) = self.cg_watches.get(&ev.wd) {
                touched.insert(*idx);
            }
        }
        for idx in touched {
            // A kept (spare) cgroup of a stopped instance says nothing.
            if self.insts[idx].cgroup.is_some() {
                self.check_empty(idx);
            }
        }
    }

    pub fn watch_cgroup(&mut self, idx: usize) {
        let Some(cg) = &self.insts[idx].cgroup else {
            return;
        };
        match self.inotify.add_watch(
            &cg.events_file(),
            nix::sys::inotify::AddWatchFlags::IN_MODIFY,
        ) {
            Ok(wd) => {
                self.cg_watches.insert(wd, idx);
                self.insts[idx].cg_watch = Some(wd);
            }
            Err(e) => {
                tracing::warn!(instance = %self.insts[idx].id(), "inotify on {}: {e}", cg.events_file().display())
            }
        }
    }

    pub fn unwatch_cgroup(&mut self, idx: usize) {
        if let Some(wd) = self.insts[idx].cg_watch.take() {
            let _ = self.inotify.rm_watch(wd);
            self.cg_watches.remove(&wd);
        }
    }

    /// Opens the rtnetlink watch on first need.
    pub fn ensure_address_watch(&mut self) {
        if self.netlink.is_some() {
            return;
        }
        match crate::isolation::address::watch_socket() {
            Ok(fd) => {
                self.register(&fd, tok::NETLINK, EpollFlags::EPOLLIN);
                self.netlink = Some(fd);
            }
            Err(e) => tracing::error!(
                "cannot watch address changes (rtnetlink): {e}; waiting instances time out"
            ),
        }
    }

    fn on_address_change(&mut self) {
        if let Some(fd) = &self.netlink {
            crate::isolation::address::drain(fd);
        }
        let waiting: Vec<usize> = self.waiting_address.iter().copied().collect();
        for idx in waiting {
            self.check_address(idx);
        }
        if self.waiting_address.is_empty()
            && let Some(fd) = self.netlink.take()
        {
            self.deregister(&fd);
        }
    }

    pub fn idx_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn runtime_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.opts.runtime_dir.join(rel)
    }

    pub fn tracking_desc(&self, idx: usize) -> String {
        match (&self.insts[idx].cgroup, &self.cgroot) {
            (Some(cg), _) => format!("cgroup {}", cg.dir.display()),
            (None, Ok(root)) => format!(
                "cgroup {} (when running)",
                root.instance(self.insts[idx].id()).dir.display()
            ),
            (None, Err(why)) => format!("process-group and session (cgroups unavailable: {why})"),
        }
    }

    pub fn deadline(&mut self, idx: usize, at: Option<Instant>) {
        let inst = &mut self.insts[idx];
        inst.deadline_epoch += 1;
        if let Some(at) = at {
            self.timers.add(
                at,
                timers::Key::Deadline {
                    idx,
                    epoch: inst.deadline_epoch,
                },
            );
        }
    }
}

/// The runtime dir's record of where this supervisor's cgroups are.
pub const CGROUP_RECORD: &str = "cgroup";

/// Children are born in their cgroup (clone3) unless the kernel kills
/// them there: see [`crate::process::spawn::probe_clone3`].
fn probe_clone3(base: &Path) {
    let dir = base.join(".clone3-probe");
    let _ = std::fs::remove_dir(&dir);
    if let Err(e) = std::fs::create_dir(&dir) {
        tracing::warn!(
            "creating {}: {e}; children join their cgroup by writing",
            dir.display()
        );
        crate::process::spawn::probe_clone3_failed();
        return;
    }
    match crate::process::spawn::probe_clone3(&dir) {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "a child born in a cgroup (clone3) was killed at birth: this supervisor's own cgroup was once killed (cgroup.kill); children join their cgroup by writing instead"
        ),
        Err(e) => tracing::warn!("probing clone3 into a cgroup: {e}"),
    }
    let _ = std::fs::remove_dir(&dir);
}

/// Duration since `t` in whole seconds, for status.
pub fn secs_since(t: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(t).as_secs()
}

pub const SIGKILL_WAIT: Duration = fsm::KILL_GRACE;
