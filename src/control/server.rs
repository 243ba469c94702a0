//! The control socket's server side: client connections (non-blocking,
//! one request line each, answered by reply lines), their framing, and
//! the per-user fairness caps. The supervisor's event loop owns the
//! connections and feeds them readiness (`supervisor/conn.rs`).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::proto::{MAX_REQUEST, Reply};

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
pub const MAX_ACCEPTS_PER_WAKE: usize = 64;

/// Per-user accounting of connections and busy requests.
#[derive(Debug, Default)]
pub struct Fairness {
    conns: HashMap<u32, usize>,
    busy: HashMap<u32, usize>,
    unprivileged: usize,
}

/// Root and the daemon's own user are always served.
pub fn privileged(uid: u32) -> bool {
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
    pub fn admit(&mut self, uid: u32) -> Result<(), Refused> {
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

    pub fn release(&mut self, uid: u32, was_busy: bool) {
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
    pub fn start(&mut self, uid: u32) -> Result<(), Refused> {
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

    pub fn done(&mut self, uid: u32) {
        if let Some(n) = self.busy.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.busy.remove(&uid);
            }
        }
    }
}

/// The size of the parts a long line is made and queued in (see
/// [`Conn::queue_part`]), one per loop turn: some 45 statuses, 10,000 in
/// about 240 parts; the most an unread list holds in the daemon, with
/// what the socket did not take of the part before. A connection keeps a
/// buffer of about this size once written out, for the next part.
pub const LINE_PART: usize = 32 * 1024;

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
    /// Its answer is being written in parts, as the client takes them (a
    /// list): no longer in flight for the caps, since it costs the daemon
    /// a part and no work while the client does not read.
    Answering,
    /// `done` was queued: close once it is written.
    Done,
}

pub struct Conn {
    stream: UnixStream,
    pub peer: Peer,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// How much of `outbuf` is written: the buffer is dropped once all
    /// of it is (draining each write's share moved the rest of a
    /// multi-megabyte list every time: quadratic in the reply's size).
    sent: usize,
    pub phase: Phase,
    /// The client may still send (its end of file not seen): the loop
    /// watches for input.
    pub reading: bool,
    /// What the loop is told of, as registered: (input, writable).
    interest: (bool, bool),
    /// A write failed: the peer is gone (whatever the phase, which stays
    /// as it was for the accounting of busy requests).
    gone: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, peer: Peer) -> Conn {
        Conn {
            stream,
            peer,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            sent: 0,
            phase: Phase::Reading,
            reading: true,
            interest: (true, false),
            gone: false,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Reads what has arrived: the request line once complete (the
    /// connection is then busy), whether it grew past `MAX_REQUEST`, and
    /// whether the client closed its end. After the request, anything more
    /// is read and dropped.
    pub fn fill(&mut self) -> Filled {
        let mut out = Filled::default();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    out.eof = true;
                    break;
                }
                Ok(n) => {
                    if self.phase == Phase::Reading {
                        self.inbuf.extend_from_slice(&buf[..n]);
                        if self.inbuf.len() > MAX_REQUEST {
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    out.eof = true;
                    break;
                }
            }
        }
        if self.phase == Phase::Reading {
            if let Some(nl) = self.inbuf.iter().position(|b| *b == b'\n') {
                out.line = Some(self.inbuf.drain(..=nl).collect());
            } else {
                out.too_large = self.inbuf.len() > MAX_REQUEST;
            }
        }
        out
    }

    /// Queues a reply line; true if it ended a busy request (the user's
    /// in-flight count goes down). Nothing is queued after the `done`.
    pub fn queue(&mut self, r: &Reply) -> bool {
        if self.phase == Phase::Done {
            return false;
        }
        match serde_json::to_writer(&mut self.outbuf, r) {
            Ok(()) => self.outbuf.push(b'\n'),
            Err(e) => tracing::error!("encoding a reply: {e}"),
        }
        let mut ended_busy = false;
        if matches!(r, Reply::Done { .. }) {
            ended_busy = self.phase == Phase::Busy;
            self.phase = Phase::Done;
        }
        ended_busy
    }

    /// The start of the `done` line of `code` whose `data` the caller
    /// writes after it as JSON, then hands to [`Self::queue_done_line`]
    /// (a list of 10,000 statuses is written once, into the buffer that
    /// is sent, not built as a `serde_json::Value` first nor copied).
    pub fn done_line(code: i32, capacity: usize) -> Vec<u8> {
        let mut line = Vec::with_capacity(capacity + 32);
        line.extend_from_slice(format!("{{\"t\":\"done\",\"code\":{code},\"data\":").as_bytes());
        line
    }

    /// Queues a line begun by [`Self::done_line`]: the same bytes
    /// [`Self::queue`] writes for a `Reply::Done` without a message. True
    /// as for `queue`.
    pub fn queue_done_line(&mut self, mut line: Vec<u8>) -> bool {
        if self.phase == Phase::Done {
            return false;
        }
        line.extend_from_slice(b"}\n");
        self.queue_part(&mut line);
        let ended_busy = self.phase == Phase::Busy;
        self.phase = Phase::Done;
        ended_busy
    }

    /// Queues the beginning of a long line (a list of 10,000 statuses,
    /// begun by [`Self::done_line`]), to be written while the rest is
    /// made: the client works on it meanwhile. The line's end goes to
    /// [`Self::queue_done_line`].
    /// `part` is left empty, with a buffer to make the next in: when all
    /// before it is written, the two buffers are swapped, not copied.
    pub fn queue_part(&mut self, part: &mut Vec<u8>) {
        if self.phase == Phase::Done || self.gone {
            part.clear();
            return;
        }
        if self.sent >= self.outbuf.len() {
            std::mem::swap(&mut self.outbuf, part);
            self.sent = 0;
        } else {
            // A reader behind: what it has read is dropped once that is
            // half of the buffer (each byte is moved once at most).
            if self.sent > self.outbuf.len() / 2 {
                self.outbuf.drain(..self.sent);
                self.sent = 0;
            }
            self.outbuf.extend_from_slice(part);
        }
        part.clear();
    }

    /// Writes what is queued, as far as the socket takes it. `done`:
    /// everything is written after the final reply (or the peer is gone),
    /// close it.
    pub fn write_out(&mut self) -> Written {
        while self.sent < self.outbuf.len() {
            match self.stream.write(&self.outbuf[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Peer gone.
                    self.outbuf.clear();
                    self.gone = true;
                    break;
                }
            }
        }
        if self.sent >= self.outbuf.len() {
            // A buffer of a list's part is kept for the next part to be
            // made in (see queue_part); a larger one is given back.
            if self.outbuf.capacity() > 2 * LINE_PART {
                self.outbuf = Vec::new();
            }
            self.outbuf.clear();
            self.sent = 0;
        }
        Written {
            done: self.gone || (self.phase == Phase::Done && self.outbuf.is_empty()),
        }
    }

    /// What the loop should be told of: input while [`Self::reading`],
    /// writability if `writable` (what is queued waits for it, or a list
    /// is being made). `Some` if that changed: the caller registers it.
    pub fn interest(&mut self, writable: bool) -> Option<(bool, bool)> {
        let want = (self.reading, writable);
        (want != self.interest).then(|| {
            self.interest = want;
            want
        })
    }

    /// The bytes queued that the socket has not taken yet.
    pub fn queued(&self) -> usize {
        self.outbuf.len() - self.sent
    }

    /// Output is queued that the socket has not taken yet.
    pub fn waits_to_write(&self) -> bool {
        self.queued() > 0
    }

    pub fn idle_or_done(&self) -> bool {
        self.phase != Phase::Busy
    }
}

/// Waits until one of `conns` can take more, or `until`: false if that
/// came first (or the wait failed).
pub fn any_writable<'a>(conns: impl Iterator<Item = &'a Conn>, until: std::time::Instant) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds: Vec<PollFd> = conns
        .map(|c| PollFd::new(c.fd(), PollFlags::POLLOUT))
        .collect();
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if ms == 0 || fds.is_empty() {
            return false;
        }
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => return n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Answers a connection that will not be served with the reason, without
/// waiting for it (a full socket buffer loses the answer, not our time).
pub fn refuse(mut s: UnixStream, why: &str) {
    let reply = Reply::Done {
        code: 1,
        message: why.to_string(),
        data: None,
    };
    if let Ok(mut line) = serde_json::to_vec(&reply) {
        line.push(b'\n');
        let _ = s.write(&line);
    }
}

/// What a read of a connection brought.
#[derive(Debug, Default)]
pub struct Filled {
    /// The complete request line.
    pub line: Option<Vec<u8>>,
    /// No line, and more than `MAX_REQUEST` bytes: refuse it.
    pub too_large: bool,
    /// The client closed its end (or the socket failed).
    pub eof: bool,
}

/// What a write of a connection did (see [`Conn::write_out`]).
#[derive(Debug)]
pub struct Written {
    pub done: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let peer = Peer {
            uid: 1000,
            gid: 1000,
            pid: 1,
        };
        (Conn::new(a, peer), b)
    }

    #[test]
    fn a_request_is_one_line_however_it_arrives() {
        let (mut c, mut client) = pair();
        client.write_all(b"{\"req\":").unwrap();
        let got = c.fill();
        assert!(got.line.is_none() && !got.eof && !got.too_large);
        client.write_all(b"1}\nignored").unwrap();
        let got = c.fill();
        assert_eq!(got.line.as_deref(), Some(&b"{\"req\":1}\n"[..]));
        drop(client);
        assert!(c.fill().eof, "the client's close is seen");
    }

    #[test]
    fn a_request_without_end_past_the_limit_is_refused() {
        let (mut c, mut client) = pair();
        let chunk = vec![b'x'; 8192];
        let mut sent = 0;
        while sent <= MAX_REQUEST {
            client.write_all(&chunk).unwrap();
            sent += chunk.len();
            let got = c.fill();
            assert!(got.line.is_none());
            if got.too_large {
                return;
            }
        }
        panic!("{sent} bytes without a newline were accepted");
    }

    #[test]
    fn the_final_reply_ends_a_busy_request_and_nothing_follows_it() {
        let (mut c, mut client) = pair();
        c.phase = Phase::Busy;
        let progress = Reply::Progress {
            id: "a".into(),
            state: "starting".into(),
            message: "a starting".into(),
        };
        assert!(!c.queue(&progress), "progress does not end it");
        let done = Reply::Done {
            code: 0,
            message: "a is running".into(),
            data: None,
        };
        assert!(c.queue(&done), "the done ends the busy request");
        assert!(!c.queue(&progress), "nothing after the done");
        let w = c.write_out();
        assert!(w.done, "written and finished: {w:?}");
        drop(c);
        let mut text = String::new();
        client.read_to_string(&mut text).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().last().unwrap().contains("a is running"));
    }

    #[test]
    fn a_line_queued_in_parts_arrives_whole_and_after_it_nothing() {
        let (mut c, mut client) = pair();
        c.phase = Phase::Busy;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            client.read_to_string(&mut text).unwrap();
            text
        });
        let mut line = Conn::done_line(0, 0);
        line.push(b'[');
        c.queue_part(&mut line);
        assert!(line.is_empty(), "the part was taken");
        for i in 0..2000 {
            let part = format!(
                "{}{{\"n\":{i},\"pad\":\"{}\"}}",
                if i > 0 { "," } else { "" },
                "x".repeat(500)
            );
            c.queue_part(&mut part.into_bytes());
            assert!(!c.write_out().done, "not done before its end");
        }
        assert!(
            c.queue_done_line(b"]".to_vec()),
            "the end ends the busy request"
        );
        c.queue_part(&mut b"late".to_vec());
        while !c.write_out().done {
            std::thread::yield_now();
        }
        drop(c);
        let text = reader.join().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2000);
        assert!(text.ends_with("]}\n"), "nothing after the line");
    }

    #[test]
    fn a_peer_gone_mid_line_is_done_and_the_request_still_busy() {
        let (mut c, client) = pair();
        c.phase = Phase::Busy;
        drop(client);
        c.queue_part(&mut Conn::done_line(0, 0));
        let w = c.write_out();
        assert!(w.done, "close it: {w:?}");
        assert_eq!(
            c.phase,
            Phase::Busy,
            "its busy count is given back on close"
        );
    }

    #[test]
    fn a_user_over_its_connection_cap_is_refused_and_root_never() {
        let mut f = Fairness::default();
        for _ in 0..MAX_CONNS_PER_USER {
            f.admit(1000).unwrap();
        }
        assert!(matches!(
            f.admit(1000),
            Err(Refused::UserConnections { uid: 1000, .. })
        ));
        for _ in 0..1000 {
            f.admit(0).unwrap();
        }
        f.release(1000, false);
        f.admit(1000).unwrap();
    }
}
