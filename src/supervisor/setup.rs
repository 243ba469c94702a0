//! What the daemon does once, at start: its runtime dir, the lock that
//! makes it the only daemon of that dir, the control socket, the fd limit,
//! the signals, the epoll set, the cgroup root, and telling systemd
//! (Type=notify) that it is ready.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::inotify::{InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::statefile::{Outcome as StateOutcome, StateWriter};
use super::{CGROUP_RECORD, DaemonError, Outcome, os, tok, worker};
use crate::isolation::cgroup::{self, CgroupRoot, DiscoverError};
use crate::model::Config;
use crate::rundir::{Guard, RunDirError, RuntimeDir};

/// Tells systemd (Type=notify) about readiness and shutdown, if it asked:
/// sd_notify(3), a datagram to $NOTIFY_SOCKET ("@" = abstract namespace).
pub(super) fn sd_notify(msg: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    if let (Ok(sock), Ok(addr)) = (UnixDatagram::unbound(), addr) {
        let _ = sock.send_to_addr(msg.as_bytes(), &addr);
    }
}

/// The runtime dir as the daemon holds it: the checked directory, its
/// state/ subdirectory, and what makes this the only daemon of it.
pub(crate) struct Runtime {
    pub dir: RuntimeDir,
    pub state: RuntimeDir,
    /// flock(2) on daemon.lock, and the abstract-socket guard that survives
    /// a deletion of the directory (see `crate::rundir`).
    _lock: File,
    _guard: Guard,
    /// Writes state/ off the loop; started on first use (after the daemon
    /// blocked its signals: the thread inherits the mask).
    writer: Option<StateWriter>,
}

impl Runtime {
    /// Queues a state file; gives it back if no writer thread can take it
    /// (then the caller writes it itself).
    pub fn queue_state(&mut self, name: String, bytes: Vec<u8>) -> Option<(String, Vec<u8>)> {
        if self.writer.is_none() {
            match self.state.try_clone().and_then(StateWriter::start) {
                Ok(w) => self.writer = Some(w),
                Err(e) => {
                    tracing::warn!("no state writer thread ({e}): writing state in the loop");
                    return Some((name, bytes));
                }
            }
        }
        let w = self.writer.as_ref().expect("just made");
        if w.write(name.clone(), bytes.clone()) {
            None
        } else {
            Some((name, bytes))
        }
    }

    /// Outcomes of queued writes since the last call.
    pub fn state_outcomes(&self) -> Vec<StateOutcome> {
        self.writer
            .as_ref()
            .map(|w| w.outcomes())
            .unwrap_or_default()
    }

    /// Waits for every queued write (at exit).
    pub fn finish_state_writes(&mut self) -> Vec<StateOutcome> {
        self.writer
            .take()
            .map(|mut w| w.finish())
            .unwrap_or_default()
    }
}

/// Creates (0700) or checks the runtime dir, makes state/ and logs/, and
/// takes both locks. Refused when another user could write the directory
/// or any above it (guarantee 8).
pub(super) fn prepare_runtime(rt: &Path) -> Result<Runtime, DaemonError> {
    let dir = RuntimeDir::create(rt)?;
    // The guard first: it holds even when daemon.lock was deleted with the
    // directory, and it names the holder.
    let guard = Guard::take(dir.path()).map_err(|e| match e {
        RunDirError::AlreadyRunning { path, pid, .. } => {
            // Its socket gone from the directory: no client can reach it.
            let orphaned = !reachable(&dir);
            RunDirError::AlreadyRunning {
                path,
                pid,
                orphaned,
            }
        }
        e => e,
    })?;
    let lock = take_runtime_lock(&dir)?;
    // Writable? Probe with a file of our own rather than trusting modes.
    let file_err = |name: &str| {
        let path = dir.path().to_path_buf();
        let name = name.to_string();
        move |source| RunDirError::File { path, name, source }
    };
    dir.append(".write-test").map_err(file_err(".write-test"))?;
    dir.remove(".write-test").map_err(file_err(".write-test"))?;
    let state = dir.subdir("state")?;
    dir.subdir("logs")?;
    Ok(Runtime {
        dir,
        state,
        _lock: lock,
        _guard: guard,
        writer: None,
    })
}

fn reachable(dir: &RuntimeDir) -> bool {
    std::os::unix::net::UnixStream::connect(dir.fd_path(crate::control::client::SOCKET_NAME))
        .is_ok()
}

fn take_runtime_lock(dir: &RuntimeDir) -> Result<File, DaemonError> {
    let f = dir
        .open("daemon.lock", libc::O_RDWR | libc::O_CREAT)
        .map_err(|source| RunDirError::File {
            path: dir.path().to_path_buf(),
            name: "daemon.lock".into(),
            source,
        })?;
    // SAFETY: flock on a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
        let pid = dir
            .read("daemon.pid")
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.trim().parse().ok());
        return Err(RunDirError::AlreadyRunning {
            path: dir.path().to_path_buf(),
            pid,
            orphaned: false,
        }
        .into());
    }
    Ok(f)
}

/// The control sockets: `cohost.sock` (0600) for root and the daemon's
/// user, and with a status group `cohost.ro.sock` (0660, the group's) for
/// its readers. Two listening sockets, two accept queues: however fast a
/// reader connects, root's connection never waits behind its backlog
/// (guarantee 5). Every request is still checked against the peer's
/// credentials.
pub(super) struct Listeners {
    pub main: OwnedFd,
    pub readers: Option<OwnedFd>,
    /// The status group's gid, looked up once here: a request never waits
    /// on the name service (guarantee 6).
    pub status_gid: Option<u32>,
}

pub(super) fn bind_sockets(
    rt: &RuntimeDir,
    status_group: Option<&str>,
) -> Result<Listeners, DaemonError> {
    use crate::control::client::{READERS_SOCKET_NAME, SOCKET_NAME};
    let group = status_group.and_then(|g| match nix::unistd::Group::from_name(g) {
        Ok(Some(gr)) => Some(gr.gid.as_raw()),
        _ => {
            tracing::warn!(
                "status_group {g:?} does not exist; only root and the daemon's user may connect"
            );
            None
        }
    });
    let main = bind_socket(rt, SOCKET_NAME, 0o177)?;
    // A readers' socket left from a run with a status group: gone.
    let _ = rt.remove(READERS_SOCKET_NAME);
    let readers = match group {
        Some(gid) => {
            let fd = bind_socket(rt, READERS_SOCKET_NAME, 0o117)?;
            let sock_err = |source| DaemonError::Socket {
                path: rt.path().join(READERS_SOCKET_NAME),
                source,
            };
            // Members may reach the sockets and list nothing.
            rt.chgrp(READERS_SOCKET_NAME, gid).map_err(sock_err)?;
            rt.set_group_mode(gid, 0o710).map_err(sock_err)?;
            Some(fd)
        }
        None => None,
    };
    Ok(Listeners {
        main,
        readers,
        status_gid: group,
    })
}

/// One listening socket, bound through the directory's descriptor (bind(2)
/// has no bindat: /proc/self/fd/N/NAME reaches the same inode), so a
/// renamed or replaced runtime dir cannot redirect it; created with the
/// mode `umask` leaves, atomically (no window where others could connect).
fn bind_socket(rt: &RuntimeDir, name: &str, umask: u32) -> Result<OwnedFd, DaemonError> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    let path = rt.path().join(name);
    let sock_err = |source: io::Error| DaemonError::Socket {
        path: path.clone(),
        source,
    };
    // We hold daemon.lock, so a socket file left here is stale.
    rt.remove(name).map_err(sock_err)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| sock_err(e.into()))?;
    let addr = UnixAddr::new(&rt.fd_path(name)).map_err(|e| sock_err(e.into()))?;
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    let bound = bind(fd.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    bound.map_err(|e| sock_err(e.into()))?;
    listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN)).map_err(|e| sock_err(e.into()))?;
    Ok(fd)
}

/// Many instances mean many fds (probe sockets, pidfds, logs while
/// launching): use the hard limit.
pub(super) fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The scheduler weight of the daemon's session (its autogroup, see
/// sched(7)): nice -5, about three times a service's share. Every service
/// process is in a session, and so an autogroup, of its own: while 500 of
/// them start or exit at once, a daemon at the default weight gets one
/// five-hundredth of the CPU for the spawning, reaping and answering it
/// has to do. Only when the daemon leads its own session (as `cohost start`
/// and systemd start it), so that no one else's session is changed; where
/// autogroups do not apply (disabled, or tasks in cpu cgroups) it is inert.
pub(super) fn weigh_session() {
    // SAFETY: getsid/getpid take no pointers.
    let leader = unsafe { libc::getsid(0) == libc::getpid() };
    if leader && let Err(e) = std::fs::write("/proc/self/autogroup", "-5") {
        tracing::debug!("raising the session's scheduler weight: {e}");
    }
}

/// The node's name in locks, hooks and records: configured, or the host's.
pub(super) fn node_name(config: &Config) -> String {
    match &config.supervisor.node {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into()),
    }
}

/// Signals arrive on the signalfd only (blocked in every thread; children
/// get a clean mask back before exec); orphans are re-parented to us.
pub(super) fn take_signals() -> Result<SignalFd, DaemonError> {
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
    Ok(sigfd)
}

/// Instance cgroups under the daemon's own (or the configured parent),
/// with the clone3 probe; the reason where they cannot be used.
pub(super) fn discover_cgroups(config: &Config, rt: &Path) -> Result<CgroupRoot, DiscoverError> {
    let cgroot = CgroupRoot::discover(&config.supervisor.cgroup, &cgroup::tag_for(rt));
    match &cgroot {
        Ok(c) => {
            tracing::info!(cgroup = %c.base.display(), "tracking instances with cgroups");
            probe_clone3(&c.base);
        }
        Err(why) => {
            tracing::warn!("cgroups unavailable ({why}): tracking by process group and session")
        }
    }

    cgroot
}

/// The epoll set over what the loop waits on, and the inotify instance
/// (cgroup.events watches are added later).
pub(super) fn event_set(
    sigfd: &SignalFd,
    listener: &OwnedFd,
    readers: Option<&OwnedFd>,
    worker: &worker::Worker<Outcome>,
) -> Result<(Epoll, Inotify), DaemonError> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(os("epoll_create"))?;
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(os("inotify_init"))?;
    let mut sources = vec![
        (worker.fd(), tok::WORKER),
        (sigfd.as_fd(), tok::SIGNAL),
        (listener.as_fd(), tok::LISTEN),
        (inotify.as_fd(), tok::INOTIFY),
    ];
    if let Some(r) = readers {
        sources.push((r.as_fd(), tok::LISTEN | 1));
    }
    for (fd, token) in sources {
        epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .map_err(os("epoll_ctl"))?;
    }
    Ok((epoll, inotify))
}

/// daemon.pid, and where this supervisor's instance cgroups are.
pub(super) fn record(
    rundir: &Runtime,
    cgroot: &Result<CgroupRoot, DiscoverError>,
) -> io::Result<()> {
    rundir
        .dir
        .write_atomic("daemon.pid", format!("{}\n", std::process::id()).as_bytes())
        .map_err(io::Error::other)?;
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
    Ok(())
}

/// Children are born in their cgroup (clone3) unless the kernel kills
/// them there: see [`crate::process::spawn::probe_clone3`].
pub(super) fn probe_clone3(base: &Path) {
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
