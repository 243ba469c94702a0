//! One holder per instance: an exclusive lock in the instance's shared storage.
//!
//! An open-file-description lock (fcntl(2) F_OFD_SETLK) on
//! `<data>/.cohost.lock`. The supervisor holds it, and every process of the
//! instance inherits the same open file description as fd 3. So the lock
//! lives exactly as long as something of the instance lives: a killed
//! supervisor does not free it while its processes still run, and a dead
//! node (every process gone) does not block the takeover. The file's text
//! names the holder, for the refusal message and the takeover event.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The fd number the lock has in every process of the instance.
pub const INHERITED_FD: RawFd = 3;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holder {
    pub node: String,
    pub pid: u32,
    pub since: String,
    pub runtime_dir: String,
    pub instance: String,
}

impl Holder {
    pub fn render(&self) -> String {
        format!(
            "node={}\npid={}\nsince={}\nruntime_dir={}\ninstance={}\n",
            self.node, self.pid, self.since, self.runtime_dir, self.instance
        )
    }

    pub fn parse(text: &str) -> Option<Holder> {
        let mut h = Holder::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "node" => h.node = v.to_string(),
                "pid" => h.pid = v.parse().unwrap_or(0),
                "since" => h.since = v.to_string(),
                "runtime_dir" => h.runtime_dir = v.to_string(),
                "instance" => h.instance = v.to_string(),
                _ => {}
            }
        }
        (!h.node.is_empty()).then_some(h)
    }

    pub fn describe(&self) -> String {
        format!(
            "node {} (supervisor pid {}, runtime dir {}, since {})",
            self.node, self.pid, self.runtime_dir, self.since
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{id} is already running on {}; lock {path}", holder.as_ref().map(|h| h.describe()).unwrap_or_else(|| "another holder".into()))]
    Held {
        id: String,
        path: PathBuf,
        holder: Option<Box<Holder>>,
    },
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug)]
pub struct Lock {
    file: File,
    pub path: PathBuf,
    /// What the file said before we took it: a different node there means
    /// this start is a takeover.
    pub previous: Option<Holder>,
    /// When the previous holder wrote its record (the file's mtime before
    /// we took it): its age is reported with a takeover's timing.
    pub previous_written: Option<std::time::SystemTime>,
}

fn ofd_lock(fd: RawFd, kind: libc::c_short) -> io::Result<()> {
    // SAFETY: zeroed flock is valid; l_len 0 = the whole file.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl with a valid fd and flock pointer.
    let r = unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Lock {
    /// Takes the lock or names who holds it.
    pub fn acquire(path: &Path, me: &Holder) -> Result<Lock, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err)?;
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let previous = Holder::parse(&text);
        let previous_written = previous
            .as_ref()
            .and_then(|_| file.metadata().and_then(|m| m.modified()).ok());
        match ofd_lock(file.as_raw_fd(), libc::F_WRLCK as libc::c_short) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                return Err(LockError::Held {
                    id: me.instance.clone(),
                    path: path.to_path_buf(),
                    holder: previous.map(Box::new),
                });
            }
            Err(e) => return Err(io_err(e)),
        }
        let mut lock = Lock {
            file,
            path: path.to_path_buf(),
            previous,
            previous_written,
        };
        lock.write_holder(me).map_err(io_err)?;
        Ok(lock)
    }

    /// The open file description an adopted instance's process holds as
    /// fd 3, duplicated (pidfd_getfd(2), Linux 5.6): the same open file
    /// description, hence the same lock, if it is our lock file (see
    /// [`Lock::from_dup`]). Touches no file system.
    pub fn dup_from(pidfd: &crate::process::pidfd::Pidfd) -> Option<File> {
        // SAFETY: plain syscall; returns a new fd we own (close-on-exec).
        let fd =
            unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), INHERITED_FD, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is new and ours.
        Some(File::from(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// The lock again from a duplicate of a process's fd 3, if that is the
    /// lock file at `path` (same device and inode). Asks the file system
    /// (a stat of `path`): call it off the event loop.
    pub fn from_dup(path: &Path, file: File) -> Option<Lock> {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (file.metadata().ok()?, std::fs::metadata(path).ok()?);
        if a.dev() != b.dev() || a.ino() != b.ino() {
            return None;
        }
        Some(Lock {
            file,
            path: path.to_path_buf(),
            previous: None,
            previous_written: None,
        })
    }

    fn write_holder(&mut self, me: &Holder) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(me.render().as_bytes())?;
        // The holder text is read by another node after ours died: it
        // must be on the shared disk, not in our page cache.
        self.file.sync_data()
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(node: &str) -> Holder {
        Holder {
            node: node.into(),
            pid: std::process::id(),
            since: "now".into(),
            runtime_dir: "/run/x".into(),
            instance: "demo01".into(),
        }
    }

    #[test]
    fn second_holder_is_refused_with_the_first_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".cohost.lock");
        let a = Lock::acquire(&p, &me("nodeA")).unwrap();
        assert!(a.previous.is_none());
        match Lock::acquire(&p, &me("nodeB")) {
            Err(LockError::Held {
                holder: Some(h), ..
            }) => assert_eq!(h.node, "nodeA"),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(a);
        // Other tests of this binary fork on other threads: a forked child
        // holds a copy of every fd (ours too) until its exec closes it, so
        // the lock may outlive our drop by that moment. (The daemon is one
        // thread and vfork-waits for each child's exec: no such window.)
        let start = std::time::Instant::now();
        let b = loop {
            match Lock::acquire(&p, &me("nodeB")) {
                Ok(b) => break b,
                Err(e) if start.elapsed() < std::time::Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("the lock outlived its holder: {e}"),
            }
        };
        assert_eq!(
            b.previous.unwrap().node,
            "nodeA",
            "takeover sees the previous holder"
        );
    }
}
