//! The instances file: a directory of `*.toml` files read in name order.
//!
//! `load` is the only entry point: read (the only I/O), parse, resolve.
//! It returns every problem at once as `FILE:LINE: message`.

pub mod checks;
pub mod hostcheck;
pub mod import;
pub mod parse;
pub mod reader;
pub mod resolve;
pub mod subst;
mod trusted_read;

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
    let texts = match trust {
        Trust::Strict => trusted_read::read_checked(dir)?,
        Trust::Relaxed => read_plain(dir)?,
    };
    let diags = reader::Diags::default();
    let mut good = Vec::with_capacity(texts.len());
    for (f, text) in texts {
        match text {
            Ok(t) => good.push((f, t)),
            Err(e) => diags.push(
                &Origin {
                    file: Arc::from(f.as_path()),
                    line: 0,
                },
                format!("cannot read: {e}"),
            ),
        }
    }
    parse_files(dir, good, diags)
}

/// One file of the directory and its text (or why it could not be read).
type FileText = (PathBuf, std::io::Result<String>);

fn whole(dir: &Path, message: String) -> Diag {
    Diag {
        file: Arc::from(dir),
        line: 0,
        message,
    }
}

fn no_dir(dir: &Path, e: impl std::fmt::Display) -> Vec<Diag> {
    vec![whole(
        dir,
        format!("cannot read the instances directory: {e}; create it or pass --config DIR"),
    )]
}

fn no_files(dir: &Path) -> Vec<Diag> {
    vec![whole(
        dir,
        "no *.toml file in the instances directory; see instances.d/ in the cohost sources for a commented example".into(),
    )]
}

/// Not root: read by path (the commands run as the caller anyway).
fn read_plain(dir: &Path) -> Result<Vec<FileText>, Vec<Diag>> {
    let files = list_files(dir).map_err(|e| no_dir(dir, e))?;
    if files.is_empty() {
        return Err(no_files(dir));
    }
    Ok(files
        .into_iter()
        .map(|f| {
            let t = std::fs::read_to_string(&f);
            (f, t)
        })
        .collect())
}

/// Is this directory entry an instances file (not an editor's leftover:
/// `.#x.toml`, `x.toml~`)?
fn is_toml_name(name: &str) -> bool {
    name.ends_with(".toml") && !name.starts_with('.')
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
        if is_toml_name(&entry.file_name().to_string_lossy()) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
