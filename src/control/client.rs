//! Talking to the daemon: one connection per request, blocking.

use std::io::{self, BufRead, BufReader, Write};
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
    let mut line = serde_json::to_vec(env).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
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

/// The `done` line of [`call_raw`], with its `data` kept as the daemon's
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

/// [`call`], with the final `data` as the daemon's JSON text, read into
/// one buffer and not copied again. Progress lines are not expected here
/// (status and list have none) and are skipped.
pub fn call_raw(stream: UnixStream, env: &Envelope) -> Result<RawDone, ClientError> {
    let mut line = serde_json::to_vec(env).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reader = BufReader::with_capacity(1 << 20, stream);
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
