//! Reading the instances file as root, like sshd's StrictModes: the
//! directory and every directory above it are checked (`crate::trusted`),
//! each file is opened relative to the checked directory's descriptor with
//! `O_NOFOLLOW`, judged by fstat of that descriptor, and read from it. What
//! is checked is what is read: no rename or link between the two can swap
//! in a file another user wrote (its commands would run as root).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Diag, FileText, is_toml_name, no_dir, no_files};
use crate::trusted::{self, Leaf, TrustError};

/// The checked directory's files, in name order, each with its text.
pub(super) fn read_checked(dir: &Path) -> Result<Vec<FileText>, Vec<Diag>> {
    let me = trusted::me();
    let checked = match trusted::open_dir(dir, Leaf::Private, me, false) {
        Ok(d) => d,
        Err(TrustError::Open { path, source }) => {
            return Err(no_dir(dir, format!("{}: {source}", path.display())));
        }
        Err(e) => return Err(vec![diag_of(e)]),
    };
    // The listing through the descriptor (/proc/self/fd/N, proc(5)).
    let listing = format!("/proc/self/fd/{}", checked.fd.as_raw_fd());
    let mut names: Vec<String> = std::fs::read_dir(&listing)
        .map_err(|e| no_dir(dir, e))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_toml_name(n))
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    let mut bad = Vec::new();
    for name in names {
        let path = dir.join(&name);
        match open_file(&checked.fd, &name, &path, me) {
            Ok(Some(mut f)) => {
                let mut text = String::new();
                let r = f.read_to_string(&mut text).map(|_| text);
                out.push((path, r));
            }
            // Not a regular file (a directory named x.toml): not ours.
            Ok(None) => {}
            Err(e) => bad.push(e),
        }
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    if out.is_empty() {
        return Err(no_files(dir));
    }
    Ok(out)
}

/// Opens one file: `None` if it is not a regular file.
fn open_file(dir: &OwnedFd, name: &str, path: &Path, me: u32) -> Result<Option<File>, Diag> {
    let at = |message: String| Diag {
        file: Arc::from(path),
        line: 0,
        message,
    };
    let c = CString::new(name).map_err(|_| at("a NUL in the file name".into()))?;
    // O_NONBLOCK: a FIFO named x.toml must not hang `validate`.
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: openat with a valid dir fd and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(at(if e.raw_os_error() == Some(libc::ELOOP) {
            "a symbolic link, which is never followed as root (another user could point it elsewhere); copy the file it points to in its place".into()
        } else {
            format!("cannot read: {e}")
        }));
    }
    // SAFETY: a fresh descriptor we own.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let md = f.metadata().map_err(|e| at(format!("cannot read: {e}")))?;
    if !md.is_file() {
        return Ok(None);
    }
    if md.uid() != 0 && md.uid() != me {
        return Err(at(format!(
            "owned by uid {}, not root: its commands would run as root; run `chown root {}`",
            md.uid(),
            path.display()
        )));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(at(writable(mode, path)));
    }
    Ok(Some(f))
}

fn writable(mode: u32, path: &Path) -> String {
    format!(
        "writable by {} (mode {:04o}): its commands would run as root; run `chmod go-w {}`",
        if mode & 0o002 != 0 {
            "everyone"
        } else {
            "its group"
        },
        mode,
        path.display()
    )
}

/// A refused directory as `DIR: message` (the directory named is the one
/// at fault: the instances directory or one above it).
fn diag_of(e: TrustError) -> Diag {
    let (path, message): (PathBuf, String) = match &e {
        TrustError::Owner { path, uid, .. } => (
            path.clone(),
            format!(
                "owned by uid {uid}, not root: that user could change the commands cohost runs as root; run `chown root {}`",
                path.display()
            ),
        ),
        TrustError::Writable { path, mode, .. } => (path.clone(), writable(*mode, path)),
        TrustError::Symlink { path } => (
            path.clone(),
            "a symbolic link, which is never followed as root (another user could point it elsewhere); pass the directory it points to".into(),
        ),
        TrustError::SymlinkOwner { path, .. }
        | TrustError::Loop { path }
        | TrustError::NotDir { path }
        | TrustError::Relative { path }
        | TrustError::Open { path, .. }
        | TrustError::Create { path, .. } => (path.clone(), e.to_string()),
    };
    Diag {
        file: Arc::from(path.as_path()),
        line: 0,
        message,
    }
}
