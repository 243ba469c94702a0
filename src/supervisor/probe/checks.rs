//! The OS side of one check: a non-blocking TCP connect, the `send`
//! string written, the reply read until `expect`; the file checks.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime};

use crate::model::Check;

const MAX_READ: usize = 64 * 1024;

fn round_s(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// A non-blocking connect in progress.
pub(super) fn tcp_connect(addr: std::net::SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2): a new fd we own.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sa: nix::sys::socket::SockaddrStorage = addr.into();
    match nix::sys::socket::connect(fd.as_raw_fd(), &sa) {
        Ok(()) | Err(nix::Error::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn socket_error(fd: &OwnedFd) -> Option<io::Error> {
    match nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::SocketError) {
        Ok(0) => None,
        Ok(e) => Some(io::Error::from_raw_os_error(e)),
        Err(e) => Some(e.into()),
    }
}

pub(super) fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there; a verdict once `expect` arrived, the peer closed,
/// or too much came without it.
pub(super) fn read_until(fd: &OwnedFd, buf: &mut Vec<u8>, expect: &str) -> Option<(bool, String)> {
    let mut chunk = [0u8; 4096];
    loop {
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => {
                return Some((
                    false,
                    format!("connection closed before {expect:?} arrived"),
                ));
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if String::from_utf8_lossy(buf).contains(expect) {
                    return Some((true, format!("answered {expect:?}")));
                }
                if buf.len() > MAX_READ {
                    return Some((false, format!("{MAX_READ} bytes without {expect:?}")));
                }
            }
            Err(nix::Error::EAGAIN) => return None,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Some((false, format!("read: {e}"))),
        }
    }
}

/// The file checks (`file = …`, `file_fresh = …`), on a worker thread.
pub(super) fn file_check(check: &Check, now: SystemTime) -> (bool, String) {
    match check {
        Check::File(path) => {
            if path.exists() {
                (true, "exists".into())
            } else {
                (false, format!("{} does not exist", path.display()))
            }
        }
        Check::FileFresh { path, max_age } => {
            match std::fs::metadata(path).and_then(|m| m.modified()) {
                Ok(t) => {
                    let age = now.duration_since(t).unwrap_or_default();
                    if age <= *max_age {
                        (
                            true,
                            format!("modified {} ago", humantime::format_duration(round_s(age))),
                        )
                    } else {
                        (
                            false,
                            format!(
                                "{} not modified for {}",
                                path.display(),
                                humantime::format_duration(round_s(age))
                            ),
                        )
                    }
                }
                Err(e) => (false, format!("{}: {e}", path.display())),
            }
        }
        _ => (false, "not a file check".into()),
    }
}
