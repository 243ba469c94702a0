//! Client connections: non-blocking, one request line each, answered by
//! reply lines. A request larger than `MAX_REQUEST` or not complete within
//! `REQUEST_TIMEOUT` is answered with an error and closed; it never holds
//! up the loop or another client.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::epoll::EpollFlags;

use super::{Daemon, timers, tok};
use crate::control::proto::{MAX_REQUEST, Reply};

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Open connections one user other than root and the daemon's own may
/// hold (guarantee 5: a reader of the status group hammering the socket
/// never starves root). Cluster software runs a handful of monitors at a
/// time; 16 is plenty for a person.
pub const MAX_CONNS_PER_USER: usize = 16;
/// Requests such a user may have in flight at once (a `monitor` running
/// health checks holds its connection busy).
pub const MAX_BUSY_PER_USER: usize = 4;
/// Connections of all such users together, at most: the rest of the fds
/// stay for root, the daemon's user and supervision (pidfds, probes, logs).
pub const MAX_CONNS_UNPRIVILEGED: usize = 256;
/// Connections accepted per wake-up: the loop gets back to the other
/// events (root's pending answers, children, timers) however fast
/// someone connects; epoll is level-triggered, the rest waits its turn.
const MAX_ACCEPTS_PER_WAKE: usize = 64;

/// Per-user accounting of connections and busy requests.
#[derive(Debug, Default)]
pub struct Fairness {
    conns: HashMap<u32, usize>,
    busy: HashMap<u32, usize>,
    unprivileged: usize,
}

/// Root and the daemon's own user are always served.
fn privileged(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Why a user's connection or request is not served now.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "too many connections from uid {uid} ({open} open, at most {MAX_CONNS_PER_USER} per user): close some and retry"
    )]
    UserConnections { uid: u32, open: usize },
    #[error(
        "too many connections from users other than root ({MAX_CONNS_UNPRIVILEGED}): retry later"
    )]
    Unprivileged,
    #[error(
        "too many requests in flight from uid {uid} (at most {MAX_BUSY_PER_USER}): wait for their answers"
    )]
    Busy { uid: u32 },
}

impl Fairness {
    /// Why a new connection of `uid` is refused, if it is.
    fn admit(&mut self, uid: u32) -> Result<(), Refused> {
        if privileged(uid) {
            return Ok(());
        }
        let n = self.conns.get(&uid).copied().unwrap_or(0);
        if n >= MAX_CONNS_PER_USER {
            return Err(Refused::UserConnections { uid, open: n });
        }
        if self.unprivileged >= MAX_CONNS_UNPRIVILEGED {
            return Err(Refused::Unprivileged);
        }
        *self.conns.entry(uid).or_default() += 1;
        self.unprivileged += 1;
        Ok(())
    }

    fn release(&mut self, uid: u32, was_busy: bool) {
        if privileged(uid) {
            return;
        }
        if let Some(n) = self.conns.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.conns.remove(&uid);
            }
            self.unprivileged -= 1;
        }
        if was_busy {
            self.done(uid);
        }
    }

    /// A request of `uid` begins; `Err` if that user has too many going.
    fn start(&mut self, uid: u32) -> Result<(), Refused> {
        if privileged(uid) {
            return Ok(());
        }
        let n = self.busy.entry(uid).or_default();
        if *n >= MAX_BUSY_PER_USER {
            return Err(Refused::Busy { uid });
        }
        *n += 1;
        Ok(())
    }

    fn done(&mut self, uid: u32) {
        if let Some(n) = self.busy.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.busy.remove(&uid);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Reading,
    /// The request is being worked on (a start waiting for readiness…).
    Busy,
    /// `done` was queued: close once it is written.
    Done,
}

pub struct Conn {
    stream: UnixStream,
    pub peer: Peer,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    pub phase: Phase,
    writing: bool,
}

impl Conn {
    pub fn idle_or_done(&self) -> bool {
        self.phase != Phase::Busy
    }

    /// At daemon exit: write what is left, blocking briefly.
    pub fn flush_blocking(&mut self) {
        let _ = self.stream.set_nonblocking(false);
        let _ = self.stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = self.stream.write_all(&self.outbuf);
        self.outbuf.clear();
    }
}

/// Answers a connection that will not be served with the reason, without
/// waiting for it (a full socket buffer loses the answer, not our time).
fn refuse(mut s: UnixStream, why: &str) {
    let reply = Reply::Done {
        code: super::requests::code::FAILED,
        message: why.to_string(),
        data: None,
    };
    if let Ok(mut line) = serde_json::to_vec(&reply) {
        line.push(b'\n');
        let _ = s.write(&line);
    }
}

impl Daemon {
    /// Accepts on the main socket, or on the status group's (`readers`).
    pub(super) fn accept_all(&mut self, readers: bool) {
        let listener = match (&self.readers_listener, readers) {
            (Some(r), true) => r.as_raw_fd(),
            _ => self.listener.as_raw_fd(),
        };
        for _ in 0..MAX_ACCEPTS_PER_WAKE {
            // SAFETY: accept4 on our listening socket; a new fd we own.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => return,
                    Some(libc::EMFILE) | Some(libc::ENFILE) => {
                        // Out of fds. The pending connection keeps the
                        // listening socket readable (level-triggered epoll
                        // would spin), so give the reserve fd up, accept,
                        // answer with the error, close, take the reserve back
                        // (the nginx/libev way). Supervision goes on.
                        self.refuse_one_for_lack_of_fds(listener);
                        return;
                    }
                    _ => {
                        tracing::warn!("accept: {e}");
                        return;
                    }
                }
            }
            // SAFETY: fd is a fresh connected socket.
            let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
            self.admit(stream);
        }
    }

    /// A new connection: served, or refused if its user is over a cap.
    fn admit(&mut self, stream: UnixStream) {
        let peer =
            match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            {
                Ok(c) => Peer {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                },
                Err(_) => return,
            };
        if let Err(why) = self.fair.admit(peer.uid) {
            // The newest connection of a user over its cap goes: its older
            // ones, and everyone else's, are served on.
            refuse(stream, &why.to_string());
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.register(
            stream.as_fd(),
            tok::CONN | id,
            EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP,
        );
        self.timers
            .add(Instant::now() + REQUEST_TIMEOUT, timers::Key::Conn { id });
        self.conns.insert(
            id,
            Conn {
                stream,
                peer,
                inbuf: Vec::new(),
                outbuf: Vec::new(),
                phase: Phase::Reading,
                writing: false,
            },
        );
    }

    fn refuse_one_for_lack_of_fds(&mut self, listener: std::os::fd::RawFd) {
        self.reserve_fd = None;
        // SAFETY: accept4 on our listening socket; a new fd we own.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: fd is a fresh connected socket.
            let mut s = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
            let reply = crate::control::proto::Reply::Done {
                code: 1,
                message: "the cohost daemon is out of file descriptors: request refused (supervision goes on); raise its RLIMIT_NOFILE".into(),
                data: None,
            };
            if let Ok(mut line) = serde_json::to_vec(&reply) {
                line.push(b'\n');
                let _ = s.write_all(&line);
            }
        }
        tracing::error!("out of file descriptors: a request was refused");
        self.reserve_fd = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
    }

    pub(super) fn on_conn(&mut self, id: u64, flags: EpollFlags) {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush_conn(id);
        }
        if !self.conns.contains_key(&id) {
            return;
        }
        if flags.intersects(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLHUP
                | EpollFlags::EPOLLERR,
        ) {
            self.read_conn(id);
        }
    }

    fn read_conn(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut eof = false;
        let mut buf = [0u8; 4096];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if c.phase == Phase::Reading {
                        c.inbuf.extend_from_slice(&buf[..n]);
                        if c.inbuf.len() > MAX_REQUEST {
                            break;
                        }
                    }
                    // After the request, anything more is ignored.
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if c.phase == Phase::Reading {
            if let Some(nl) = c.inbuf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = c.inbuf.drain(..=nl).collect();
                let uid = c.peer.uid;
                if let Err(why) = self.fair.start(uid) {
                    self.reply_done(id, super::requests::code::FAILED, why.to_string(), None);
                    return;
                }
                c.phase = Phase::Busy;
                self.handle_request(id, &line);
                return;
            }
            if c.inbuf.len() > MAX_REQUEST {
                self.reply_done(
                    id,
                    2,
                    format!("request larger than {MAX_REQUEST} bytes refused"),
                    None,
                );
                return;
            }
        }
        if eof {
            // The client went away. What it asked for goes on (a stop is
            // not undone because its caller was killed); only the answer
            // is dropped.
            self.close_conn(id);
        }
    }

    pub(super) fn on_conn_timeout(&mut self, id: u64) {
        if self
            .conns
            .get(&id)
            .is_some_and(|c| c.phase == Phase::Reading)
        {
            self.reply_done(
                id,
                2,
                format!("no complete request within {}s", REQUEST_TIMEOUT.as_secs()),
                None,
            );
        }
    }

    pub fn reply(&mut self, id: u64, r: &Reply) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.phase == Phase::Done {
            return;
        }
        match serde_json::to_writer(&mut c.outbuf, r) {
            Ok(()) => c.outbuf.push(b'\n'),
            Err(e) => tracing::error!("encoding a reply: {e}"),
        }
        if matches!(r, Reply::Done { .. }) {
            if c.phase == Phase::Busy {
                self.fair.done(c.peer.uid);
            }
            c.phase = Phase::Done;
        }
        // Written at the end of the loop iteration: the progress lines of
        // 500 instances starting at once go out in a few writes, not 1000.
        self.unflushed.insert(id);
    }

    /// Writes what every connection has queued.
    pub(super) fn flush_replies(&mut self) {
        for id in std::mem::take(&mut self.unflushed) {
            self.flush_conn(id);
        }
    }

    pub fn reply_done(
        &mut self,
        id: u64,
        code: i32,
        message: impl Into<String>,
        data: Option<serde_json::Value>,
    ) {
        self.reply(
            id,
            &Reply::Done {
                code,
                message: message.into(),
                data,
            },
        );
    }

    pub fn progress(&mut self, id: u64, inst: &str, state: &str, message: impl Into<String>) {
        self.reply(
            id,
            &Reply::Progress {
                id: inst.to_string(),
                state: state.to_string(),
                message: message.into(),
            },
        );
    }

    pub(super) fn flush_conn(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while !c.outbuf.is_empty() {
            match c.stream.write(&c.outbuf) {
                Ok(n) => {
                    c.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Peer gone.
                    c.outbuf.clear();
                    c.phase = Phase::Done;
                    break;
                }
            }
        }
        let pending = !c.outbuf.is_empty();
        let done = c.phase == Phase::Done && !pending;
        if pending != c.writing {
            c.writing = pending;
            let mut flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if pending {
                flags |= EpollFlags::EPOLLOUT;
            }
            let raw = c.stream.as_raw_fd();
            // SAFETY: the stream (and so the fd) lives in self.conns.
            self.reregister(
                unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
                tok::CONN | id,
                flags,
            );
        }
        if done {
            self.close_conn(id);
        }
    }

    pub fn close_conn(&mut self, id: u64) {
        // Waiter entries naming this connection are dropped when their
        // instance next answers (a reply to a closed connection is a no-op):
        // closing stays O(1) whatever the number of instances.
        if let Some(c) = self.conns.remove(&id) {
            self.fair.release(c.peer.uid, c.phase == Phase::Busy);
            self.deregister(c.stream.as_fd());
        }
    }
}
