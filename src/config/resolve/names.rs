//! What the names and paths in the instances file must look like: IDs,
//! environment names, host names, absolute paths, and the kernel trees a
//! bind may not cover.

use std::path::{Component, Path, PathBuf};

/// `[A-Za-z0-9_.-]+`, not starting with `.` or `-`, no `..` (IDs become
/// file and cgroup names; `..` or `-x` there would be trouble).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && !id.contains("..")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

pub(super) fn valid_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

pub(super) fn valid_hostname(s: &str) -> bool {
    // sethostname(2): at most HOST_NAME_MAX (64) bytes; RFC 1123 labels.
    s.len() <= 64
        && !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// Absolute and without `.`/`..`: what a path in the instances file must be.
pub(super) fn clean_absolute(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if !path.is_absolute() || p.contains('\0') {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The kernel's own trees a bind may not cover: /proc and /sys and
/// anything in them, and /dev itself (a device node below it, like
/// /dev/shm, may be an instance's own).
pub(super) fn kernel_tree(inside: &Path) -> Option<&'static str> {
    ["/proc", "/sys"]
        .into_iter()
        .find(|k| inside.starts_with(k))
        .or_else(|| (inside == Path::new("/dev")).then_some("/dev"))
}

/// One path lies inside the other (or they are the same).
pub fn paths_overlap(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}
