//! The loop's side of the control socket: accepting (within the caps of
//! `control::server`), reading a request into `handle_request`, queuing
//! replies and writing them at the end of the loop iteration, timeouts.
//! A request larger than `MAX_REQUEST` or not complete within
//! `REQUEST_TIMEOUT` is answered with an error and closed; it never holds
//! up the loop or another client.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::epoll::EpollFlags;

use super::{Daemon, timers, tok};
use crate::control::exit::Exit;
use crate::control::proto::{MAX_REQUEST, Reply};
pub use crate::control::server::{Conn, Fairness, Peer, Phase};
use crate::control::server::{
    MAX_ACCEPTS_PER_WAKE, REQUEST_TIMEOUT, any_writable, privileged, refuse,
};

/// How long the exit waits for a connection to take its answer (see
/// [`Daemon::flush_conns_at_exit`]).
pub(super) const EXIT_FLUSH: Duration = Duration::from_secs(1);

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
            .add(self.host.now() + REQUEST_TIMEOUT, timers::Key::Conn { id });
        self.conns.insert(id, Conn::new(stream, peer));
        // A client writes its request as soon as it is connected: it is
        // often here already, and answered in this turn, not the next.
        self.read_conn(id, false);
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
            // What was queued is out: the next part of a list is made, at
            // the end of the turn (after the other requests' answers).
            if self.listings.contains_key(&id)
                && self.conns.get(&id).is_some_and(|c| !c.waits_to_write())
            {
                self.list_turn.insert(id);
            }
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
            let gone = flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
            self.read_conn(id, gone);
        }
    }

    fn read_conn(&mut self, id: u64, gone: bool) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let got = c.fill();
        if let Some(line) = got.line {
            if let Err(why) = self.fair.start(c.peer.uid) {
                self.reply_done(id, Exit::Failed, why.to_string(), None);
                return;
            }
            c.phase = Phase::Busy;
            self.handle_request(id, &line);
            return;
        }
        if got.too_large {
            self.reply_done(
                id,
                Exit::Invalid,
                format!("request larger than {MAX_REQUEST} bytes refused"),
                None,
            );
            return;
        }
        if got.eof && (gone || c.phase == Phase::Reading) {
            // The client went away. What it asked for goes on (a stop is
            // not undone because its caller was killed); only the answer
            // is dropped.
            self.close_conn(id);
        } else if got.eof {
            // Half closed: the client shut its sending side after its
            // request (`socat`, `nc -N` do) and reads on: it gets its
            // answer. Its input is no longer watched (its end of file
            // would wake the loop at every turn); a full close shows as
            // EPOLLHUP, or as a failed write.
            c.reading = false;
            self.flush_conn(id);
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
                Exit::Invalid,
                format!("no complete request within {}s", REQUEST_TIMEOUT.as_secs()),
                None,
            );
        }
    }

    pub fn reply(&mut self, id: u64, r: &Reply) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.queue(r) {
            self.fair.done(c.peer.uid);
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
        exit: Exit,
        message: impl Into<String>,
        data: Option<serde_json::Value>,
    ) {
        self.reply(
            id,
            &Reply::Done {
                code: exit.code(),
                message: message.into(),
                data,
            },
        );
    }

    /// [`Self::reply_done`] without a message, as a line begun by
    /// [`Conn::done_line`] with its `data` written after it.
    pub fn reply_done_line(&mut self, id: u64, line: Vec<u8>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.queue_done_line(line) {
            self.fair.done(c.peer.uid);
        }
        self.unflushed.insert(id);
    }

    /// The beginning of a long `done` line, written now (see
    /// [`Conn::queue_part`]); its end goes to [`Self::reply_done_line`].
    pub fn reply_part(&mut self, id: u64, part: &mut Vec<u8>) {
        let Some(c) = self.conns.get_mut(&id) else {
            part.clear();
            return;
        };
        c.queue_part(part);
        self.flush_conn(id);
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
        let w = c.write_out();
        let writable = c.waits_to_write() || self.listings.contains_key(&id);
        if let Some((input, out)) = c.interest(writable) {
            // EPOLLHUP and EPOLLERR are reported whatever is asked.
            let mut flags = EpollFlags::empty();
            if input {
                flags |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            }
            if out {
                flags |= EpollFlags::EPOLLOUT;
            }
            let raw = c.fd().as_raw_fd();
            // SAFETY: the stream (and so the fd) lives in self.conns.
            self.reregister(
                unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
                tok::CONN | id,
                flags,
            );
        }
        if w.done {
            self.close_conn(id);
        }
    }

    /// At exit: what each connection has queued is written, and the lists
    /// being written are finished: root's (and the daemon user's) first,
    /// within one second for all of them together, then everyone else's
    /// within one more. The connections of a group are written as each
    /// can take more, not one after another: a reader holding its lists
    /// unread (root's, or the status group's 256 connections) neither
    /// holds the exit for a second each nor takes the time of the others
    /// (the `cohost shutdown` waiting for its answer, a slow reader).
    pub(super) fn flush_conns_at_exit(&mut self) {
        let mut ids: Vec<(bool, bool, u64)> = self
            .conns
            .iter()
            .map(|(id, c)| (!privileged(c.peer.uid), self.listings.contains_key(id), *id))
            .collect();
        // Root's first, and the answers (the shutdown's) before the lists.
        ids.sort_unstable();
        for unprivileged in [false, true] {
            let until = Instant::now() + EXIT_FLUSH;
            let mut left: Vec<u64> = ids
                .iter()
                .filter(|(u, _, _)| *u == unprivileged)
                .map(|(_, _, id)| *id)
                .collect();
            loop {
                let mut i = 0;
                while i < left.len() {
                    if self.write_what_it_takes(left[i]) {
                        i += 1;
                    } else {
                        left.remove(i);
                    }
                }
                let conns = left.iter().filter_map(|id| self.conns.get(id));
                if left.is_empty() || !any_writable(conns, until) {
                    break;
                }
            }
        }
    }

    /// Writes (and makes, for a list) what the connection's socket takes
    /// now; true while something is left to write.
    fn write_what_it_takes(&mut self, id: u64) -> bool {
        loop {
            self.flush_conn(id);
            let Some(c) = self.conns.get(&id) else {
                return false;
            };
            if c.waits_to_write() {
                return true;
            }
            if !self.listings.contains_key(&id) {
                return false;
            }
            self.go_on_listing(id);
        }
    }

    pub fn close_conn(&mut self, id: u64) {
        // Waiter entries naming this connection are dropped when their
        // instance next answers (a reply to a closed connection is a no-op):
        // closing stays O(1) whatever the number of instances.
        self.listings.remove(&id);
        if let Some(c) = self.conns.remove(&id) {
            self.fair.release(c.peer.uid, c.phase == Phase::Busy);
            self.deregister(c.fd());
        }
    }
}
