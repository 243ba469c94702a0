//! Talking to the daemon: one connection per request, blocking.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::control::proto::{Envelope, Reply};
use crate::rundir::{RunDirError, RuntimeDir};
use crate::trusted::TrustError;

pub const SOCKET_NAME: &str = "cohost.sock";
/// The status group's socket (a queue of its own: see supervisor/setup.rs).
pub const READERS_SOCKET_NAME: &str = "cohost.ro.sock";

pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(SOCKET_NAME)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no cohost daemon runs for {0}")]
    NoDaemon(PathBuf),
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "connecting to {path}: Permission denied: only root, the daemon's user and members of its status_group may talk to it"
    )]
    Denied { path: PathBuf },
    #[error(transparent)]
    Untrusted(RunDirError),
    #[error("talking to the daemon: {0}")]
    Io(#[from] io::Error),
    #[error(
        "the daemon closed the connection without an answer (did it crash? see its log in the runtime dir)"
    )]
    NoAnswer,
    #[error("the daemon sent an answer this client does not understand: {0}")]
    BadReply(String),
}

/// Connects; `NoDaemon` when nothing listens (no socket, or a stale one).
/// The runtime dir is checked first (guarantee 8: a socket in a directory
/// another user could write may be anyone's) and the socket reached
/// through the checked descriptor.
pub fn connect(runtime_dir: &Path) -> Result<UnixStream, ClientError> {
    let path = socket_path(runtime_dir);
    let dir = match RuntimeDir::open_existing(runtime_dir) {
        Ok(Some(d)) => d,
        Ok(None) => return Err(ClientError::NoDaemon(runtime_dir.to_path_buf())),
        Err(RunDirError::Untrusted { source }) if is_denied(&source) => {
            return Err(ClientError::Denied { path });
        }
        Err(e) => return Err(ClientError::Untrusted(e)),
    };
    match UnixStream::connect(dir.fd_path(SOCKET_NAME)) {
        Ok(s) => Ok(s),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ) =>
        {
            Err(ClientError::NoDaemon(runtime_dir.to_path_buf()))
        }
        // Not root or the daemon's user: the status group's socket.
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            UnixStream::connect(dir.fd_path(READERS_SOCKET_NAME))
                .map_err(|_| ClientError::Denied { path })
        }
        Err(source) => Err(ClientError::Connect { path, source }),
    }
}

fn is_denied(e: &TrustError) -> bool {
    e.open_errno() == Some(libc::EACCES)
}

/// The final answer of a request.
#[derive(Debug, Clone)]
pub struct Done {
    pub code: i32,
    pub message: String,
    pub data: Option<serde_json::Value>,
}

/// Sends one request and reads replies until `done`; `progress` replies go
/// to `on_progress` as they arrive.
pub fn call(
    stream: UnixStream,
    env: &Envelope,
    mut on_progress: impl FnMut(&str, &str, &str),
) -> Result<Done, ClientError> {
    send(&stream, env)?;
    let mut reader = BufReader::new(stream);
    let mut buf = String::new();
    loop {
        buf.clear();
        if reader.read_line(&mut buf)? == 0 {
            return Err(ClientError::NoAnswer);
        }
        match serde_json::from_str::<Reply>(&buf) {
            Ok(Reply::Progress { id, state, message }) => on_progress(&id, &state, &message),
            Ok(Reply::Done {
                code,
                message,
                data,
            }) => {
                return Ok(Done {
                    code,
                    message,
                    data,
                });
            }
            Err(e) => return Err(ClientError::BadReply(format!("{e}: {}", buf.trim()))),
        }
    }
}

/// A reply line read without building its `data`: the daemon's JSON text
/// of it is kept as it came (`list --json` of 10,000 instances prints it
/// without parsing it into values first).
#[derive(serde::Deserialize)]
struct RawLine<'a> {
    t: std::borrow::Cow<'a, str>,
    #[serde(default)]
    code: i32,
    #[serde(default)]
    message: String,
    #[serde(borrow, default)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// The `done` line of [`call_streamed`], with its `data` kept as the daemon's
/// JSON text.
pub struct RawDone {
    pub done: Done,
    line: Vec<u8>,
    data: std::ops::Range<usize>,
}

impl RawDone {
    /// The JSON of `data`, as it came (empty when there was none).
    pub fn data(&self) -> &[u8] {
        &self.line[self.data.clone()]
    }
}

fn send(stream: &UnixStream, env: &Envelope) -> Result<(), ClientError> {
    let mut line = serde_json::to_vec(env).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push(b'\n');
    match (&*stream).write_all(&line) {
        // A connection over a cap is answered with the reason and closed
        // at once, maybe before the request is written: the reason is
        // there to read (and if nothing is, the read says so).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        r => Ok(r?),
    }
}

/// The replies up to the `done` line, with its `data` kept as the daemon's
/// JSON text, in one buffer not copied again. Progress lines are not
/// expected here (status and list have none) and are skipped.
fn read_raw(mut reader: impl BufRead) -> Result<RawDone, ClientError> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Err(ClientError::NoAnswer);
        }
        let r: RawLine = serde_json::from_slice(&buf).map_err(|e| {
            let text = String::from_utf8_lossy(&buf);
            ClientError::BadReply(format!("{e}: {}", text.trim()))
        })?;
        if r.t == "done" {
            // Where the data lies in the line (it borrows from it).
            let data = r.data.map_or(0..0, |d| {
                let at = d.get().as_ptr() as usize - buf.as_ptr() as usize;
                at..at + d.get().len()
            });
            let done = Done {
                code: r.code,
                message: r.message,
                data: None,
            };
            return Ok(RawDone {
                done,
                line: buf,
                data,
            });
        }
    }
}

/// What [`call_streamed`] got.
pub enum Streamed {
    /// The `done` line's `data` went to the sink as it came.
    Data { code: i32 },
    /// Any other answer (an error's message, progress lines first), whole.
    Whole(RawDone),
}

/// How a `done` line with a code and data and no message begins (the
/// daemon's `Conn::done_line`): `{"t":"done","code":N,"data":`.
fn data_start(head: &[u8]) -> Option<(i32, usize)> {
    let rest = head.strip_prefix(b"{\"t\":\"done\",\"code\":")?;
    let digits = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'-'))?;
    let code = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let data = rest[digits..].strip_prefix(b",\"data\":")?;
    Some((code, head.len() - data.len()))
}

/// [`call`] for status and list, except that a `done` line with data and no message hands
/// its data to `sink` a piece at a time as it arrives: the daemon writes
/// a list of 10,000 statuses as it makes it, and the client's work on one
/// piece overlaps the daemon's on the next. That data is not parsed here
/// (the daemon's serializer made it; `sink` sees it byte for byte); the
/// line must end as the daemon ends it, `}` and a newline.
pub fn call_streamed(
    mut stream: UnixStream,
    env: &Envelope,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<Streamed, ClientError> {
    send(&stream, env)?;
    // Enough of the first line to tell which it is.
    let mut head = Vec::with_capacity(1 << 16);
    let mut buf = vec![0u8; 1 << 16];
    while head.len() < 64 && !head.contains(&b'\n') {
        match stream.read(&mut buf)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let Some((code, at)) = data_start(&head) else {
        let reader = BufReader::with_capacity(1 << 20, io::Cursor::new(head).chain(stream));
        return read_raw(reader).map(Streamed::Whole);
    };
    // Each piece is passed on but for its last byte, held back until the
    // next shows it was not the line's own closing brace.
    let mut held = None;
    let mut piece: &[u8] = &head[at..];
    loop {
        let end = memchr::memchr(b'\n', piece);
        let data = end.map_or(piece, |n| &piece[..n]);
        if let Some((last, rest)) = data.split_last() {
            if let Some(h) = held.replace(*last) {
                sink(&[h]);
            }
            sink(rest);
        }
        if end.is_some() {
            break;
        }
        match stream.read(&mut buf)? {
            0 => return Err(ClientError::NoAnswer),
            n => piece = &buf[..n],
        }
    }
    if held != Some(b'}') {
        return Err(ClientError::BadReply(
            "the list's line did not end as the daemon ends it".into(),
        ));
    }
    Ok(Streamed::Data { code })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::Request;

    /// A daemon that reads the request and answers `answer`, a few bytes
    /// at a time (as a socket may deliver it), then closes.
    fn daemon(answer: &'static [u8], step: usize) -> UnixStream {
        let (client, server) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut r = BufReader::new(&server);
            let mut req = String::new();
            r.read_line(&mut req).unwrap();
            for piece in answer.chunks(step) {
                if (&server).write_all(piece).is_err() {
                    return;
                }
            }
        });
        client
    }

    fn list(answer: &'static [u8], step: usize) -> (Result<Streamed, ClientError>, Vec<u8>) {
        let env = Envelope {
            config: None,
            req: Request::Status { id: None },
        };
        let mut got = Vec::new();
        let r = call_streamed(daemon(answer, step), &env, &mut |p| {
            got.extend_from_slice(p)
        });
        (r, got)
    }

    /// The daemon's refusal of a connection over a cap: answered and
    /// closed before the request is read, or written.
    #[test]
    fn a_refusal_sent_before_the_request_was_written_is_read() {
        let (client, server) = UnixStream::pair().unwrap();
        (&server)
            .write_all(
                b"{\"t\":\"done\",\"code\":1,\"message\":\"too many connections from uid 7\"}\n",
            )
            .unwrap();
        drop(server);
        let env = Envelope {
            config: None,
            req: Request::Status { id: None },
        };
        let d = call(client, &env, |_, _, _| {}).expect("the refusal, not a broken pipe");
        assert_eq!(
            (d.code, d.message.as_str()),
            (1, "too many connections from uid 7")
        );
    }

    #[test]
    fn a_lists_data_reaches_the_sink_byte_for_byte_however_it_is_cut() {
        let line = b"{\"t\":\"done\",\"code\":3,\"data\":[{\"id\":\"a}\\n\"},{}]}\n";
        for step in [1, 2, 7, 64, 4096] {
            let (r, got) = list(line, step);
            assert!(matches!(r, Ok(Streamed::Data { code: 3 })), "step {step}");
            assert_eq!(got, b"[{\"id\":\"a}\\n\"},{}]", "step {step}");
        }
    }

    #[test]
    fn an_answer_with_a_message_or_progress_first_comes_whole() {
        let line = b"{\"t\":\"done\",\"code\":2,\"message\":\"no such instance: x\"}\n";
        let (r, got) = list(line, 5);
        let Ok(Streamed::Whole(w)) = r else {
            panic!("not whole")
        };
        assert_eq!(
            (w.done.code, w.done.message.as_str()),
            (2, "no such instance: x")
        );
        assert!(got.is_empty());
        let lines = b"{\"t\":\"progress\",\"id\":\"a\",\"state\":\"s\",\"message\":\"m\"}\n{\"t\":\"done\",\"code\":0,\"data\":[1]}\n";
        let (r, _) = list(lines, 3);
        let Ok(Streamed::Whole(w)) = r else {
            panic!("not whole")
        };
        assert_eq!((w.done.code, w.data()), (0, &b"[1]"[..]));
    }

    #[test]
    fn an_answer_cut_short_is_an_error_not_a_list() {
        let (r, _) = list(b"{\"t\":\"done\",\"code\":0,\"data\":[{\"id\":\"a\"},", 3);
        assert!(
            matches!(r, Err(ClientError::NoAnswer)),
            "cut before its newline"
        );
        let (r, _) = list(b"{\"t\":\"done\",\"code\":0,\"data\":[1]]\n", 3);
        assert!(
            matches!(r, Err(ClientError::BadReply(_))),
            "not ended by }}"
        );
        let (r, _) = list(b"", 3);
        assert!(matches!(r, Err(ClientError::NoAnswer)), "nothing at all");
    }
}
