//! The instances file: a directory of `*.toml` files read in name order.
//!
//! `load` is the only entry point: read (the only I/O), parse, resolve.
//! It returns every problem at once as `FILE:LINE: message`.

pub mod checks;
pub mod import;
pub mod parse;
pub mod reader;
pub mod resolve;
pub mod subst;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use reader::Diag;

use crate::model::{Config, Origin};

/// Where the instances file is when neither `--config` nor `COHOST_CONFIG` say.
pub const DEFAULT_DIR: &str = "/etc/cohost/instances.d";

/// How strictly file ownership and modes are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Running as root: like sshd's StrictModes, refuse files that another
    /// user could have written (they become commands run as root).
    Strict,
    /// Not root: the commands run as the caller anyway.
    Relaxed,
}

impl Trust {
    pub fn for_current_user() -> Trust {
        if nix::unistd::geteuid().is_root() {
            Trust::Strict
        } else {
            Trust::Relaxed
        }
    }
}

/// Reads, parses and validates the directory.
pub fn load(dir: &Path, trust: Trust) -> Result<Config, Vec<Diag>> {
    let diags = reader::Diags::default();
    let whole = |msg: String| Diag {
        file: Arc::from(dir),
        line: 0,
        message: msg,
    };
    let files = match list_files(dir) {
        Ok(f) => f,
        Err(e) => {
            return Err(vec![whole(format!(
                "cannot read the instances directory: {e}; create it or pass --config DIR"
            ))]);
        }
    };
    if files.is_empty() {
        return Err(vec![whole(
            "no *.toml file in the instances directory; see instances.d/ in the cohost sources for a commented example".into(),
        )]);
    }
    if trust == Trust::Strict {
        let mut bad = Vec::new();
        check_trust(dir, &mut bad);
        for f in &files {
            check_trust(f, &mut bad);
        }
        if !bad.is_empty() {
            return Err(bad);
        }
    }
    let mut texts = Vec::with_capacity(files.len());
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => texts.push((f.clone(), text)),
            Err(e) => diags.push(
                &Origin {
                    file: Arc::from(f.as_path()),
                    line: 0,
                },
                format!("cannot read: {e}"),
            ),
        }
    }
    parse_files(dir, texts, diags)
}

/// Parses and validates instances-file texts (name, content), in order:
/// the pure part of [`load`] (and what the fuzz tests drive).
pub fn parse_text(dir: &Path, files: Vec<(PathBuf, String)>) -> Result<Config, Vec<Diag>> {
    parse_files(dir, files, reader::Diags::default())
}

fn parse_files(
    dir: &Path,
    files: Vec<(PathBuf, String)>,
    diags: reader::Diags,
) -> Result<Config, Vec<Diag>> {
    let mut raw = parse::RawDir::default();
    for (f, text) in files {
        let src = reader::Source::new(&f, text);
        parse::parse_file(&src, &diags, &mut raw);
    }
    let config = resolve::resolve(raw, dir, &diags);
    if diags.is_empty() {
        Ok(config)
    } else {
        Err(diags.into_sorted())
    }
}

fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Editors leave `.#x.toml` and `x.toml~`; only real *.toml count.
        if name.ends_with(".toml") && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Refuses what a user other than root (or us) could have written.
fn check_trust(path: &Path, out: &mut Vec<Diag>) {
    let Ok(md) = std::fs::metadata(path) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    let at = |message: String| Diag {
        file: Arc::from(path),
        line: 0,
        message,
    };
    if md.uid() != 0 && md.uid() != me {
        out.push(at(format!(
            "owned by uid {}, not root: its commands would run as root; run `chown root {}`",
            md.uid(),
            path.display()
        )));
    }
    let mode = md.mode() & 0o7777;
    // A sticky world-writable directory (like /tmp) still lets others add files.
    if mode & 0o022 != 0 {
        out.push(at(format!(
            "writable by {} (mode {:04o}): its commands would run as root; run `chmod go-w {}`",
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode,
            path.display()
        )));
    }
}
