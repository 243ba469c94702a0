//! Client connections: non-blocking, one request line each, answered by
//! reply lines. A request larger than `MAX_REQUEST` or not complete within
//! `REQUEST_TIMEOUT` is answered with an error and closed; it never holds
//! up the loop or another client.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::epoll::EpollFlags;

use super::{Daemon, timers, tok};
use crate::control::proto::{MAX_REQUEST, Reply};

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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

impl Daemon {
    pub(super) fn accept_all(&mut self) {
        loop {
            // SAFETY: accept4 on our listening socket; a new fd we own.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
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
                        self.refuse_one_for_lack_of_fds();
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
            let peer = match nix::sys::socket::getsockopt(
                &stream,
                nix::sys::socket::sockopt::PeerCredentials,
            ) {
                Ok(c) => Peer {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                },
                Err(_) => continue,
            };
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
    }

    fn refuse_one_for_lack_of_fds(&mut self) {
        self.reserve_fd = None;
        // SAFETY: accept4 on our listening socket; a new fd we own.
        let fd = unsafe {
            libc::accept4(
                self.listener.as_raw_fd(),
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
            self.deregister(c.stream.as_fd());
        }
    }
}
