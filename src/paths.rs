//! Checks of an instance's paths on this node, before a start: a shared
//! path must be a directory, and a bind target must not lead through a
//! symbolic link (mount(2) follows one: a target linked to `/` would put
//! the instance's directory over the whole root of its view).

use std::io;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SharedPathError {
    #[error("does not exist on this node")]
    Missing,
    #[error("is a {0}, not a directory")]
    NotADirectory(&'static str),
    #[error("cannot be examined: {0}")]
    Stat(#[source] io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum BindTargetError {
    #[error(
        "bind target {target}: {link} is a symbolic link (to {to}), which a bind mount would follow: bind onto the real path instead"
    )]
    Symlink {
        target: PathBuf,
        link: PathBuf,
        to: PathBuf,
    },
    #[error(
        "bind target {0} does not exist on this node: create it (an empty directory or file) so it can be mapped"
    )]
    Missing(PathBuf),
    #[error("bind target {target}: examining {at}: {source}")]
    Stat {
        target: PathBuf,
        at: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() {
        "regular file"
    } else if ft.is_symlink() {
        "symbolic link to something that is not a directory"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "FIFO"
    } else {
        "device"
    }
}

/// A shared path (`paths.KEY`) must be a directory (links to one are
/// fine: the storage is wherever the operator mounted it).
pub fn check_shared(p: &Path) -> Result<(), SharedPathError> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) => Err(SharedPathError::NotADirectory(kind(m.file_type()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling link says the same as a missing path.
            Err(SharedPathError::Missing)
        }
        Err(e) => Err(SharedPathError::Stat(e)),
    }
}

/// No component of a bind target may be a symbolic link: refused rather
/// than resolved, so that what the operator wrote is what is covered.
pub fn check_bind_target(target: &Path) -> Result<(), BindTargetError> {
    let mut at = PathBuf::from("/");
    for c in target.components() {
        let Component::Normal(n) = c else {
            continue;
        };
        at.push(n);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(BindTargetError::Symlink {
                    target: target.to_path_buf(),
                    to: std::fs::read_link(&at).unwrap_or_default(),
                    link: at,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BindTargetError::Missing(target.to_path_buf()));
            }
            Err(source) => {
                return Err(BindTargetError::Stat {
                    target: target.to_path_buf(),
                    at,
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_not_storage_and_a_link_is_no_bind_target() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, "").unwrap();
        assert!(matches!(
            check_shared(&f),
            Err(SharedPathError::NotADirectory("regular file"))
        ));
        assert!(matches!(
            check_shared(&t.path().join("none")),
            Err(SharedPathError::Missing)
        ));
        check_shared(t.path()).unwrap();
        let l = t.path().join("root");
        std::os::unix::fs::symlink("/", &l).unwrap();
        let e = check_bind_target(&l).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link (to /)"), "{e}");
        assert!(check_bind_target(&l.join("etc")).is_err());
        check_bind_target(t.path()).unwrap();
    }
}
