//! The runtime dir (control socket, state, logs), held by a checked
//! descriptor: every file in it is opened relative to that descriptor with
//! `O_NOFOLLOW` (openat/renameat/unlinkat), so neither a symbolic link
//! planted in it nor a rename of the directory can redirect what root
//! writes or reads (guarantee 8). The directory is trusted as
//! [`crate::trusted`] says; one that another user could write is refused.
//!
//! One runtime dir never has two daemons, even after it was deleted under a
//! running one: [`Guard`] is an abstract unix socket named after the
//! directory's path, which lives exactly as long as the daemon process
//! (unix(7), "Abstract sockets"), and cannot be removed with the files.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::trusted::{self, CheckedDir, Leaf, TrustError};

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("runtime dir refused: {source}")]
    Untrusted {
        #[source]
        source: TrustError,
    },
    #[error("cannot create runtime dir {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("runtime dir {path}: {name}: {}", explain(source))]
    File {
        path: PathBuf,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "another cohost daemon{} already runs for {path}{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        if *.orphaned { format!(", but the runtime dir was deleted under it, so no command can reach it: stop it with `kill -TERM {}` (it stops its instances, then exits), then run the command again", pid.map(|p| p.to_string()).unwrap_or_else(|| "PID".into())) } else { String::new() }
    )]
    AlreadyRunning {
        path: PathBuf,
        pid: Option<u32>,
        /// Its socket is gone (the dir was deleted or replaced).
        orphaned: bool,
    },
    #[error("runtime dir {path}: the guard socket: {source}")]
    Guard {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What an atomic replace failed at (one variant per step).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("creating {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("writing {name}: {source}")]
    Write {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("fsync of {name}: {source}")]
    Sync {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("renaming {name} into place: {source}")]
    Rename {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("fsync of the directory {name}: {source}")]
    SyncDir {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// A trusted directory, open.
pub struct RuntimeDir {
    dir: CheckedDir,
}

/// An open error of a file in the runtime dir, as an operator reads it.
pub fn explain(e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ELOOP) {
        "a symbolic link, which is never followed (whoever planted it could redirect what cohost writes as root): remove it".into()
    } else {
        e.to_string()
    }
}

fn name_c(name: &str) -> io::Result<CString> {
    // One component only: a name is never a path.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl RuntimeDir {
    /// The daemon's: created 0700 (with missing parents) if absent, then
    /// checked.
    pub fn create(path: &Path) -> Result<RuntimeDir, RunDirError> {
        Self::open_as(path, true)
    }

    /// A client's: `Ok(None)` when the directory does not exist.
    pub fn open_existing(path: &Path) -> Result<Option<RuntimeDir>, RunDirError> {
        match Self::open_as(path, false) {
            Ok(d) => Ok(Some(d)),
            Err(RunDirError::Untrusted { source }) if source.open_errno() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn open_as(path: &Path, create: bool) -> Result<RuntimeDir, RunDirError> {
        let dir =
            trusted::open_dir(path, Leaf::Private, trusted::me(), create).map_err(|source| {
                match source {
                    TrustError::Create { source, .. } => RunDirError::Create {
                        path: path.to_path_buf(),
                        source,
                    },
                    source => RunDirError::Untrusted { source },
                }
            })?;
        Ok(RuntimeDir { dir })
    }

    /// The path it was found at (trusted parents' links resolved).
    pub fn path(&self) -> &Path {
        &self.dir.path
    }

    fn file_err(&self, name: &str) -> impl FnOnce(io::Error) -> RunDirError {
        let path = self.dir.path.clone();
        let name = name.to_string();
        move |source| RunDirError::File { path, name, source }
    }

    /// A subdirectory (state/, logs/), made 0700 if missing, held the same
    /// way.
    pub fn subdir(&self, name: &str) -> Result<RuntimeDir, RunDirError> {
        let c = name_c(name).map_err(self.file_err(name))?;
        trusted::make_dir_at(&self.dir.fd, &c).map_err(self.file_err(name))?;
        let path = self.dir.path.join(name);
        let fd = trusted::open_dir_at(&self.dir.fd, &c).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
                RunDirError::Untrusted {
                    source: TrustError::Symlink { path: path.clone() },
                }
            } else {
                (self.file_err(name))(e)
            }
        })?;
        let st = trusted::fstat(&fd).map_err(self.file_err(name))?;
        trusted::judge(&path, &st, Leaf::Private, trusted::me())
            .map_err(|source| RunDirError::Untrusted { source })?;
        Ok(RuntimeDir {
            dir: CheckedDir { fd, path },
        })
    }

    /// An existing subdirectory, checked, never made (for clients).
    pub fn subdir_existing(&self, name: &str) -> Result<RuntimeDir, RunDirError> {
        let c = name_c(name).map_err(self.file_err(name))?;
        let path = self.dir.path.join(name);
        let fd = trusted::open_dir_at(&self.dir.fd, &c).map_err(self.file_err(name))?;
        let st = trusted::fstat(&fd).map_err(self.file_err(name))?;
        trusted::judge(&path, &st, Leaf::Private, trusted::me())
            .map_err(|source| RunDirError::Untrusted { source })?;
        Ok(RuntimeDir {
            dir: CheckedDir { fd, path },
        })
    }

    /// openat(2) of `name` with `flags` | O_NOFOLLOW | O_CLOEXEC; a file
    /// created is 0600. A symbolic link gives ELOOP and is never followed.
    pub fn open(&self, name: &str, flags: libc::c_int) -> io::Result<File> {
        let c = name_c(name)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY;
        // SAFETY: openat with our dir fd and a NUL-terminated name.
        let fd = check(unsafe { libc::openat(self.dir.fd.as_raw_fd(), c.as_ptr(), flags, 0o600) })?;
        // SAFETY: a fresh descriptor we own.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // A FIFO or device planted here would block or surprise a reader.
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is not a regular file"),
            ));
        }
        Ok(f)
    }

    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(name, libc::O_RDONLY | libc::O_NONBLOCK)?
            .read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// For logs: append, created if missing.
    pub fn append(&self, name: &str) -> io::Result<File> {
        self.open(name, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT)
    }

    /// Replaces `name` atomically and durably: a temporary file written,
    /// fsynced, renamed over, and the directory fsynced (so the rename
    /// itself survives a crash: fsync(2), "Calling fsync() does not
    /// necessarily ensure that the entry in the directory ... has also
    /// reached disk").
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
        self.replace_file(name, bytes)?;
        self.sync()
    }

    /// The first half of [`write_atomic`](Self::write_atomic): written,
    /// fsynced and renamed over, the directory not yet fsynced (for
    /// batches: one [`sync`](Self::sync) after many).
    pub fn replace_file(&self, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
        let tmp = format!(".{name}.tmp");
        let n = || name.to_string();
        let mut f = self
            .open(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)
            .map_err(|source| WriteError::Create { name: n(), source })?;
        f.write_all(bytes)
            .map_err(|source| WriteError::Write { name: n(), source })?;
        f.sync_data()
            .map_err(|source| WriteError::Sync { name: n(), source })?;
        drop(f);
        let (t, c) = (
            name_c(&tmp).expect("checked by open"),
            name_c(name).map_err(|source| WriteError::Rename { name: n(), source })?,
        );
        let fd = self.dir.fd.as_raw_fd();
        // SAFETY: renameat within our dir fd, NUL-terminated names.
        check(unsafe { libc::renameat(fd, t.as_ptr(), fd, c.as_ptr()) })
            .map_err(|source| WriteError::Rename { name: n(), source })?;
        Ok(())
    }

    /// fsync(2) of the directory: its renames reach the disk.
    pub fn sync(&self) -> Result<(), WriteError> {
        // SAFETY: fsync of our dir fd.
        check(unsafe { libc::fsync(self.dir.fd.as_raw_fd()) }).map_err(|source| {
            WriteError::SyncDir {
                name: self.dir.path.display().to_string(),
                source,
            }
        })?;
        Ok(())
    }

    /// A second handle on the same directory (for another thread).
    pub fn try_clone(&self) -> io::Result<RuntimeDir> {
        Ok(RuntimeDir {
            dir: CheckedDir {
                fd: self.dir.fd.try_clone()?,
                path: self.dir.path.clone(),
            },
        })
    }

    /// unlinkat(2); a missing file is fine.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let c = name_c(name)?;
        // SAFETY: unlinkat within our dir fd.
        match check(unsafe { libc::unlinkat(self.dir.fd.as_raw_fd(), c.as_ptr(), 0) }) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    /// The names in the directory (not `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        // Through /proc/self/fd/N: the directory we hold, whatever is at
        // its path now (fdopendir would take the descriptor over).
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.fd_path(""))? {
            out.push(e?.file_name());
        }
        Ok(out)
    }

    /// A path that reaches `name` through our descriptor
    /// (/proc/self/fd/N/name, proc(5)): for calls that take no dir fd,
    /// bind(2) and connect(2) of the control socket. Valid while `self`
    /// lives.
    pub fn fd_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.dir.fd.as_raw_fd()))
    }

    /// fchown/fchmod of the directory itself (the status group).
    pub fn set_group_mode(&self, gid: u32, mode: u32) -> io::Result<()> {
        let fd = self.dir.fd.as_raw_fd();
        // SAFETY: fchown/fchmod of our own dir fd.
        check(unsafe { libc::fchown(fd, u32::MAX, gid) })?;
        check(unsafe { libc::fchmod(fd, mode) })?;
        Ok(())
    }

    /// fchownat(2) of an entry, not following a link.
    pub fn chgrp(&self, name: &str, gid: u32) -> io::Result<()> {
        let c = name_c(name)?;
        // SAFETY: fchownat within our dir fd.
        check(unsafe {
            libc::fchownat(
                self.dir.fd.as_raw_fd(),
                c.as_ptr(),
                u32::MAX,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(())
    }
}

/// Held by the daemon for its whole life: see the module comment.
pub struct Guard {
    _sock: OwnedFd,
}

/// The guard's abstract name for a runtime dir: the path itself when short
/// enough, else its tail and a hash (abstract names are at most 107 bytes).
fn guard_name(rt: &Path) -> Vec<u8> {
    let p = rt.as_os_str().as_bytes();
    let mut name = b"cohost-daemon:".to_vec();
    if p.len() <= 90 {
        name.extend_from_slice(p);
    } else {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in p {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        name.extend_from_slice(&p[p.len() - 70..]);
        name.extend_from_slice(format!(":{h:016x}").as_bytes());
    }
    name
}

fn unix_stream() -> io::Result<OwnedFd> {
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: socket(2) with constant arguments.
    let fd = check(unsafe { libc::socket(libc::AF_UNIX, ty, 0) })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn abstract_addr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; zero is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // sun_path[0] = 0 marks the abstract namespace; the name follows.
    for (i, b) in name.iter().take(a.sun_path.len() - 1).enumerate() {
        a.sun_path[i + 1] = *b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len().min(a.sun_path.len() - 1);
    (a, len as libc::socklen_t)
}

impl Guard {
    /// Takes the guard of `rt` (a resolved runtime-dir path), or names the
    /// daemon that holds it.
    pub fn take(rt: &Path) -> Result<Guard, RunDirError> {
        let err = |source| RunDirError::Guard {
            path: rt.to_path_buf(),
            source,
        };
        let sock = unix_stream().map_err(err)?;
        let (addr, len) = abstract_addr(&guard_name(rt));
        // SAFETY: bind with a valid sockaddr_un of `len` bytes.
        let bound = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if bound < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                return Err(RunDirError::AlreadyRunning {
                    path: rt.to_path_buf(),
                    pid: holder(rt).flatten(),
                    orphaned: false,
                });
            }
            return Err(err(e));
        }
        // Listening only so that a second daemon can learn our pid from
        // SO_PEERCRED on connect (unix(7)); nobody is ever accepted, and
        // once the small backlog is full a probe just learns no pid.
        // SAFETY: listen on our socket.
        check(unsafe { libc::listen(sock.as_raw_fd(), 16) }).map_err(err)?;
        Ok(Guard { _sock: sock })
    }
}

/// Who holds the guard of `rt`: `None` nobody; `Some(None)` a daemon
/// whose pid could not be learnt.
pub fn holder(rt: &Path) -> Option<Option<u32>> {
    let sock = unix_stream().ok()?;
    let (addr, len) = abstract_addr(&guard_name(rt));
    // SAFETY: connect with a valid sockaddr_un.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => None,
            // Backlog full: someone holds it.
            _ => Some(None),
        };
    }
    let cred = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials);
    Some(cred.ok().map(|c| c.pid() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_never_opened_through_a_link_and_replaced_atomically() {
        let t = tempfile::tempdir().unwrap();
        let rt = RuntimeDir::create(&t.path().join("rt")).unwrap();
        let target = t.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, t.path().join("rt/daemon.log")).unwrap();
        let e = rt.append("daemon.log").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let state = rt.subdir("state").unwrap();
        state.write_atomic("a.json", b"{}\n").unwrap();
        assert_eq!(state.read("a.json").unwrap(), b"{}\n");
        assert_eq!(state.names().unwrap(), vec![OsString::from("a.json")]);
        state.remove("a.json").unwrap();
        assert!(rt.open("../x", libc::O_RDONLY).is_err());
    }

    #[test]
    fn a_second_guard_names_the_first_holder() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("rt");
        assert_eq!(holder(&p), None);
        let g = Guard::take(&p).unwrap();
        match Guard::take(&p) {
            Err(RunDirError::AlreadyRunning { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()))
            }
            other => panic!("{:?}", other.err()),
        }
        drop(g);
        assert_eq!(holder(&p), None);
        Guard::take(&p).unwrap();
    }
}
