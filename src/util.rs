//! Small helpers shared by the daemon and the CLI.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The last `n` lines of a file (at most the last 64 KiB are read).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    match std::fs::File::open(path) {
        Ok(f) => tail_of(f, n),
        Err(_) => Vec::new(),
    }
}

/// The last `n` lines of an open file (at most the last 64 KiB are read).
pub fn tail_of(mut f: std::fs::File, n: usize) -> Vec<String> {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].iter().map(|l| l.to_string()).collect()
}

/// Gives the heap's free memory back to the kernel (glibc keeps what a
/// burst freed: after ten reloads of 10,000 instances the daemon held 145
/// MB, 99 MB once trimmed). After the bursts only (a reload, the end of an
/// `up` or `down`): it walks the free lists.
pub fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Buffers of a megabyte or more get pages of their own, returned when
/// freed. glibc otherwise raises its threshold for that after the first
/// such free, and a `list --json` of 10,000 instances (7.5 MB, freed once
/// sent) then stays in the heap: 4.7 MB more after three lists, measured.
pub fn big_buffers_from_mmap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: a malloc setting, before the threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tails() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.log");
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(super::tail(&p, 2), vec!["c", "d"]);
        assert_eq!(super::tail(&p, 10).len(), 4);
        assert!(super::tail(&d.path().join("none"), 3).is_empty());
    }
}
