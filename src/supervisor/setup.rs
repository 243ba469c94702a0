//! What the daemon does once, at start: its runtime dir, the lock that
//! makes it the only daemon of that dir, the control socket, the fd limit,
//! and telling systemd (Type=notify) that it is ready.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::DaemonError;

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

/// Creates the runtime dir (0700: it holds the control socket) if missing.
pub(super) fn prepare_runtime_dir(rt: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !rt.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(rt)?;
    }
    let md = std::fs::metadata(rt)?;
    if !md.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    // Writable? Probe with a file of our own rather than trusting modes.
    let probe = rt.join(".write-test");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)?;
    for sub in ["state", "logs"] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(rt.join(sub))?;
    }
    Ok(())
}

pub(super) fn take_runtime_lock(rt: &Path) -> Result<OwnedFd, DaemonError> {
    let path = rt.join("daemon.lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| DaemonError::RuntimeDir {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
        let pid = std::fs::read_to_string(rt.join("daemon.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        return Err(DaemonError::AlreadyRunning {
            runtime_dir: rt.to_path_buf(),
            pid,
        });
    }
    Ok(OwnedFd::from(f))
}

pub(super) fn bind_socket(rt: &Path, status_group: Option<&str>) -> Result<OwnedFd, DaemonError> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    let path = crate::control::client::socket_path(rt);
    let sock_err = |source: io::Error| DaemonError::Socket {
        path: path.clone(),
        source,
    };
    // We hold daemon.lock, so a socket file left here is stale.
    let _ = std::fs::remove_file(&path);
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| sock_err(e.into()))?;
    let addr = UnixAddr::new(&path).map_err(|e| sock_err(e.into()))?;
    // Created 0600 atomically: no window where others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = bind(fd.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    bound.map_err(|e| sock_err(e.into()))?;
    if let Some(g) = status_group {
        // The read-only group: socket 0660 and group-owned; every request
        // is still checked against the peer's credentials.
        match nix::unistd::Group::from_name(g) {
            Ok(Some(gr)) => {
                let _ = nix::unistd::chown(&path, None, Some(gr.gid));
                let _ = std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o660),
                );
                let _ = nix::unistd::chown(rt, None, Some(gr.gid));
                let _ = std::fs::set_permissions(
                    rt,
                    std::os::unix::fs::PermissionsExt::from_mode(0o710),
                );
            }
            _ => tracing::warn!(
                "status_group {g:?} does not exist; only root and the daemon's user may connect"
            ),
        }
    }
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
