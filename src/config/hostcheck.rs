//! What `cohost validate` asks the host after the instances file passed
//! the pure checks: a `paths` entry that is a file, not a directory; one
//! storage reached under two names (a symbolic link, or the same directory
//! mounted twice), which the lexical overlap check cannot see; a `bind`
//! target that leads through a symbolic link. Kept apart from parsing and
//! resolving (which never touch the host), run only by `validate`, and
//! bounded: the paths are looked at in a child process (a thread each),
//! and what does not answer within the limit (hung storage) is reported as
//! unchecked, never waited for. A process, not threads: a thread stuck in a
//! stat(2) on hung storage sleeps uninterruptibly and would keep
//! `validate` from exiting (exit_group(2) waits for every thread); the
//! child is simply left behind, holding none of our output. A path that
//! does not exist is node state (storage not mounted here), not an error.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Diag;
use crate::config::resolve::paths_overlap;
use crate::model::{Config, InstanceSpec, Origin};
use crate::paths::{BindTargetError, check_bind_target};

/// More probes than this share threads (a thread each up to here).
const MAX_THREADS: usize = 256;

/// One path of one instance to look at.
struct Probe {
    inst: Arc<InstanceSpec>,
    /// "paths.data" or "bind \"/etc/x\"".
    what: String,
    path: PathBuf,
    bind: bool,
}

/// What the host said about one probe.
#[derive(Debug, Serialize, Deserialize)]
enum Seen {
    Missing,
    /// A directory: where it really is, and its identity.
    Dir {
        real: PathBuf,
        dev: u64,
        ino: u64,
    },
    NotADirectory(String),
    BadBind(String),
    Fine,
    Error(String),
}

fn look(p: &Probe) -> Seen {
    if p.bind {
        return match check_bind_target(&p.path) {
            Ok(()) | Err(BindTargetError::Missing(_)) => Seen::Fine,
            Err(e) => Seen::BadBind(e.to_string()),
        };
    }
    match std::fs::metadata(&p.path) {
        Ok(m) if m.is_dir() => match std::fs::canonicalize(&p.path) {
            Ok(real) => Seen::Dir {
                real,
                dev: m.dev(),
                ino: m.ino(),
            },
            Err(e) => Seen::Error(e.to_string()),
        },
        Ok(m) => Seen::NotADirectory(
            if m.is_file() {
                "a regular file"
            } else {
                "not a directory"
            }
            .into(),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Seen::Missing,
        Err(e) => Seen::Error(e.to_string()),
    }
}

/// Looks at every probe for at most `limit`, in a child process: `None`
/// for the ones that did not answer.
fn look_all(probes: &Arc<Vec<Probe>>, limit: Duration) -> Vec<Option<Seen>> {
    let mut seen: Vec<Option<Seen>> = (0..probes.len()).map(|_| None).collect();
    if probes.is_empty() {
        return seen;
    }
    let Ok((r, w)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return seen;
    };
    // SAFETY: `validate` is single-threaded here (the probe threads are
    // made in the child), so the child may allocate and spawn threads.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            probe_child(probes, w)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(w);
            let done = read_results(r, &mut seen, limit);
            if done {
                // Every answer came: it has exited or is about to.
                let _ = nix::sys::wait::waitpid(child, None);
            }
            seen
        }
        Err(_) => seen,
    }
}

/// The child: one line of JSON per answer on `w`, as they come.
fn probe_child(probes: &Arc<Vec<Probe>>, w: std::os::fd::OwnedFd) -> ! {
    // Our stdio is the caller's (a pipe a test or script waits on): a
    // child stuck on storage must not hold it open.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
        }
    }
    let (tx, rx) = mpsc::channel();
    let threads = probes.len().clamp(1, MAX_THREADS);
    for t in 0..threads {
        let tx = tx.clone();
        let probes = probes.clone();
        let _ = std::thread::Builder::new()
            .name("validate-probe".into())
            .spawn(move || {
                for i in (t..probes.len()).step_by(threads) {
                    if tx.send((i, look(&probes[i]))).is_err() {
                        return;
                    }
                }
            });
    }
    drop(tx);
    let mut out = std::fs::File::from(w);
    for (i, s) in rx {
        if let Ok(mut line) = serde_json::to_vec(&(i, s)) {
            line.push(b'\n');
            if std::io::Write::write_all(&mut out, &line).is_err() {
                break;
            }
        }
    }
    // SAFETY: _exit: no atexit handlers or buffers of the parent's to run.
    unsafe { libc::_exit(0) }
}

/// Reads answers until all came (true) or the deadline passed (false).
fn read_results(r: std::os::fd::OwnedFd, seen: &mut [Option<Seen>], limit: Duration) -> bool {
    use std::io::Read;
    use std::os::fd::AsFd;
    let deadline = Instant::now() + limit;
    let mut f = std::fs::File::from(r);
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [nix::poll::PollFd::new(
            f.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let timeout = nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::ZERO);
        if left.is_zero() || !matches!(nix::poll::poll(&mut fds, timeout), Ok(n) if n > 0) {
            return false;
        }
        let mut chunk = [0u8; 8192];
        match f.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if let Ok((i, s)) = serde_json::from_slice::<(usize, Seen)>(&line)
                && i < seen.len()
            {
                seen[i] = Some(s);
            }
        }
    }
}

fn probes_of(cfg: &Config) -> Vec<Probe> {
    let mut out = Vec::new();
    for inst in cfg.instances.values() {
        for (k, p) in &inst.paths {
            out.push(Probe {
                inst: inst.clone(),
                what: format!("paths.{k}"),
                path: p.clone(),
                bind: false,
            });
        }
        for (inside, _) in &inst.run.isolate.bind {
            out.push(Probe {
                inst: inst.clone(),
                what: format!("bind \"{}\"", inside.display()),
                path: inside.clone(),
                bind: true,
            });
        }
    }
    out
}

fn at(o: &Origin, message: String) -> Diag {
    Diag {
        file: o.file.clone(),
        line: o.line,
        message,
    }
}

/// The host checks: problems (exit 2) and notes (paths not checked).
pub fn check(cfg: &Config, limit: Duration) -> (Vec<Diag>, Vec<String>) {
    let probes = Arc::new(probes_of(cfg));
    let seen = look_all(&probes, limit);
    let mut diags = Vec::new();
    let mut notes = Vec::new();
    let mut dirs: Vec<(&Probe, &Path, (u64, u64))> = Vec::new();
    for (p, s) in probes.iter().zip(&seen) {
        let id = &p.inst.id;
        match s {
            None => notes.push(format!(
                "{} of `{id}` ({}) did not answer within {}s: not checked (hung storage?)",
                p.what,
                p.path.display(),
                limit.as_secs()
            )),
            Some(Seen::NotADirectory(k)) => diags.push(at(
                &p.inst.origin,
                format!(
                    "{} of `{id}` ({}) is {k}, not a directory: it must name the instance's storage directory",
                    p.what,
                    p.path.display()
                ),
            )),
            Some(Seen::BadBind(e)) => diags.push(at(&p.inst.origin, format!("`{id}`: {e}"))),
            Some(Seen::Error(e)) => notes.push(format!(
                "{} of `{id}` ({}): {e}: not checked",
                p.what,
                p.path.display()
            )),
            Some(Seen::Dir { real, dev, ino }) => dirs.push((p, real, (*dev, *ino))),
            Some(Seen::Missing) | Some(Seen::Fine) => {}
        }
    }
    diags.extend(aliases(&dirs));
    (diags, notes)
}

/// Storage of two instances that is one under two names.
fn aliases(dirs: &[(&Probe, &Path, (u64, u64))]) -> Vec<Diag> {
    let mut out = Vec::new();
    for (n, (a, ra, ida)) in dirs.iter().enumerate() {
        for (b, rb, idb) in &dirs[..n] {
            if a.inst.id == b.inst.id || paths_overlap(&a.path, &b.path) {
                // The same instance, or already reported by the lexical check.
                continue;
            }
            if ida == idb || paths_overlap(ra, rb) {
                out.push(at(
                    &a.inst.origin,
                    format!(
                        "{} of `{}` ({}, really {}) overlaps {} of `{}` ({}, really {}; {}): the same storage under two names; each instance needs its own",
                        a.what,
                        a.inst.id,
                        a.path.display(),
                        ra.display(),
                        b.what,
                        b.inst.id,
                        b.path.display(),
                        rb.display(),
                        b.inst.origin
                    ),
                ));
            }
        }
    }
    out
}
