//! Opening a directory the way sshd's StrictModes judges it: every
//! directory from `/` down must be owned by root or by us and not writable
//! by anyone else (a parent may be world-writable with the sticky bit, like
//! /var/tmp: others can add entries there but not replace ours), and the
//! directory itself may not be a symbolic link.
//!
//! The walk opens each component relative to its parent's descriptor with
//! `O_NOFOLLOW` and checks the *opened* descriptor (fstat), so what is
//! checked is what is used: nobody can swap a component between the check
//! and the use (openat(2), "Rationale for openat()"). A symbolic link in a
//! parent is followed only when it sits in a directory already found
//! trustworthy and belongs to root or us, which is exactly when nobody else
//! could have made or changed it (/var/run -> /run on Debian).

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// More links than this in one walk is a loop (the kernel's own limit,
/// path_resolution(7)).
const MAX_LINKS: u32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path} must be an absolute path")]
    Relative { path: PathBuf },
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is a symbolic link, which is never followed (another user could point it elsewhere); use the directory it points to, or replace the link by a directory"
    )]
    Symlink { path: PathBuf },
    #[error(
        "{path} is a symbolic link owned by uid {uid} (not root or uid {me}): it is not followed; replace it by the directory it points to"
    )]
    SymlinkOwner { path: PathBuf, uid: u32, me: u32 },
    #[error("{path}: more than {MAX_LINKS} symbolic links (a loop?)")]
    Loop { path: PathBuf },
    #[error("{path} is not a directory")]
    NotDir { path: PathBuf },
    #[error(
        "{path} is owned by uid {uid}, not by root or uid {me}: that user could change what cohost does as uid {me}; run `chown {me} {path}` (or choose another directory)"
    )]
    Owner { path: PathBuf, uid: u32, me: u32 },
    #[error(
        "{path} is writable by {who} (mode {mode:04o}): another user could change what cohost does as uid {me}; run `chmod go-w {path}` (or choose another directory)"
    )]
    Writable {
        path: PathBuf,
        who: &'static str,
        mode: u32,
        me: u32,
    },
}

impl TrustError {
    /// The OS error behind an open, if that was the failure.
    pub fn open_errno(&self) -> Option<i32> {
        match self {
            TrustError::Open { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// What the last component must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// Not writable by group or others at all (sticky or not): the runtime
    /// dir, the instances directory.
    Private,
    /// As a parent: group/other-writable only with the sticky bit.
    Parent,
}

/// A checked, open directory and the path it was found at (symbolic links
/// of trusted parents resolved).
pub struct CheckedDir {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// fstat(2) of an open descriptor.
pub fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills the zeroed struct; fd is valid.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// fstatat(2) without following a final symbolic link.
fn lstat_at(dir: &OwnedFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: as fstat; name is NUL-terminated.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// openat(2) of a directory, never through a symbolic link. A directory we
/// may search but not read (the runtime dir is 0710 for a status group) is
/// opened O_PATH: enough for fstat and as the base of further *at calls
/// (open(2), "O_PATH").
pub fn open_dir_at(dir: &OwnedFd, name: &CString) -> io::Result<OwnedFd> {
    let flags = libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: openat with a valid dir fd and NUL-terminated name.
    let mut fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_RDONLY) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EACCES) {
        // SAFETY: as above.
        fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_PATH) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn readlink_at(dir: &OwnedFd, name: &CString) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the buffer is as long as we say.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(
        <OsString as std::os::unix::ffi::OsStringExt>::from_vec(buf),
    ))
}

fn is_type(st: &libc::stat, t: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == t
}

/// Judges one opened directory (or file: `leaf` Private) by its owner and
/// mode.
pub fn judge(path: &Path, st: &libc::stat, leaf: Leaf, me: u32) -> Result<(), TrustError> {
    if st.st_uid != 0 && st.st_uid != me {
        return Err(TrustError::Owner {
            path: path.to_path_buf(),
            uid: st.st_uid,
            me,
        });
    }
    let mode = st.st_mode & 0o7777;
    let sticky_ok = leaf == Leaf::Parent && mode & libc::S_ISVTX != 0;
    if mode & 0o022 != 0 && !sticky_ok {
        return Err(TrustError::Writable {
            path: path.to_path_buf(),
            who: if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode,
            me,
        });
    }
    Ok(())
}

/// Opens `path` as a trusted directory for the user `me` (see the module
/// comment). With `create`, missing components are made (mode 0700, ours).
pub fn open_dir(path: &Path, leaf: Leaf, me: u32, create: bool) -> Result<CheckedDir, TrustError> {
    if !path.is_absolute() {
        return Err(TrustError::Relative {
            path: path.to_path_buf(),
        });
    }
    let root = Path::new("/");
    let root_fd = open_root()?;
    let mut todo: VecDeque<OsString> = components(path);
    let st = fstat(&root_fd).map_err(|e| open_err(root, e))?;
    judge(
        root,
        &st,
        if todo.is_empty() { leaf } else { Leaf::Parent },
        me,
    )?;
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root_fd, root.to_path_buf())];
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let (dir, dir_path) = stack.last().expect("root stays");
        let here = dir_path.join(&name);
        let step = Step {
            dir,
            here: &here,
            name: &name,
            last: todo.is_empty(),
        };
        match step.take(leaf, me, create)? {
            Next::Dir(fd) => stack.push((fd, here)),
            Next::Link(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(TrustError::Loop { path: here });
                }
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for comp in components(&target).into_iter().rev() {
                    todo.push_front(comp);
                }
            }
        }
    }
    let (fd, path) = stack.pop().expect("root stays");
    Ok(CheckedDir { fd, path })
}

fn open_err(p: &Path, source: io::Error) -> TrustError {
    TrustError::Open {
        path: p.to_path_buf(),
        source,
    }
}

/// One component of the walk, below an already trusted directory.
struct Step<'a> {
    dir: &'a OwnedFd,
    here: &'a Path,
    name: &'a OsStr,
    /// The directory asked for (not a parent of it).
    last: bool,
}

/// Where a step leads: a checked directory, or a link to follow.
enum Next {
    Dir(OwnedFd),
    Link(PathBuf),
}

impl Step<'_> {
    fn take(&self, leaf: Leaf, me: u32, create: bool) -> Result<Next, TrustError> {
        let here = self.here;
        let c = cstr(self.name).map_err(|e| open_err(here, e))?;
        let st = match lstat_at(self.dir, &c) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                make_dir_at(self.dir, &c).map_err(|source| TrustError::Create {
                    path: here.to_path_buf(),
                    source,
                })?;
                lstat_at(self.dir, &c).map_err(|e| open_err(here, e))?
            }
            Err(e) => return Err(open_err(here, e)),
        };
        if is_type(&st, libc::S_IFLNK) {
            return self.link(&c, &st, me).map(Next::Link);
        }
        if !is_type(&st, libc::S_IFDIR) {
            return Err(TrustError::NotDir {
                path: here.to_path_buf(),
            });
        }
        let fd = match open_dir_at(self.dir, &c) {
            Ok(fd) => fd,
            // Replaced by a link between the lstat and the open.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(TrustError::Symlink {
                    path: here.to_path_buf(),
                });
            }
            Err(e) => return Err(open_err(here, e)),
        };
        let st = fstat(&fd).map_err(|e| open_err(here, e))?;
        judge(here, &st, if self.last { leaf } else { Leaf::Parent }, me)?;
        Ok(Next::Dir(fd))
    }

    /// A link is followed only above the directory asked for, and only if
    /// root or we made it (it sits in a directory already found trusted).
    fn link(&self, c: &CString, st: &libc::stat, me: u32) -> Result<PathBuf, TrustError> {
        let path = self.here.to_path_buf();
        if self.last {
            return Err(TrustError::Symlink { path });
        }
        if st.st_uid != 0 && st.st_uid != me {
            return Err(TrustError::SymlinkOwner {
                path,
                uid: st.st_uid,
                me,
            });
        }
        readlink_at(self.dir, c).map_err(|e| open_err(&path, e))
    }
}

fn open_root() -> Result<OwnedFd, TrustError> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: open with a NUL-terminated literal.
    let fd = unsafe { libc::open(c"/".as_ptr(), flags) };
    if fd < 0 {
        return Err(TrustError::Open {
            path: "/".into(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// mkdirat(2), 0700; one made meanwhile by someone else is judged as any.
pub fn make_dir_at(dir: &OwnedFd, name: &CString) -> io::Result<()> {
    // SAFETY: mkdirat with a valid dir fd and NUL-terminated name.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// The effective uid, whose files we trust besides root's.
pub fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        t
    }

    #[test]
    fn a_private_dir_passes_and_a_group_writable_one_does_not() {
        let t = tmp();
        let d = t.path().join("rt");
        let ok = open_dir(&d, Leaf::Private, me(), true).unwrap();
        assert_eq!(ok.path, d);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = open_dir(&d, Leaf::Private, me(), false).err().unwrap();
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        // As a parent, sticky world-writable is fine (like /tmp).
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        open_dir(&d.join("x"), Leaf::Private, me(), true).unwrap();
        let e = open_dir(&d, Leaf::Private, me(), false).err().unwrap();
        assert!(matches!(e, TrustError::Writable { .. }), "{e}");
    }

    #[test]
    fn a_final_symlink_is_refused_and_a_parent_one_of_ours_followed() {
        let t = tmp();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::create_dir(real.join("rt")).unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        let e = open_dir(&t.path().join("link"), Leaf::Private, me(), false)
            .err()
            .unwrap();
        assert!(matches!(e, TrustError::Symlink { .. }), "{e}");
        let ok = open_dir(&t.path().join("link/rt"), Leaf::Private, me(), false).unwrap();
        assert_eq!(ok.path, real.join("rt"));
        // A link loop ends.
        std::os::unix::fs::symlink(t.path().join("loop"), t.path().join("loop")).unwrap();
        let e = open_dir(&t.path().join("loop/x"), Leaf::Private, me(), false)
            .err()
            .unwrap();
        assert!(matches!(e, TrustError::Loop { .. }), "{e}");
    }
}
