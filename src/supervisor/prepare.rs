//! The part of a start that touches the instance's storage and the name
//! service: run on a worker thread ([`super::worker`]), never on the loop.
//!
//! In order: every shared path is a directory here (a missing disk must
//! not be papered over by creating directories on the local disk), the
//! one-holder lock, each process's log (the previous one kept as `.log.1`),
//! then a complete exec plan per process (user and group looked up, the
//! program found, bind paths checked). What comes back is everything the
//! loop needs to fork, which it does at once.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use crate::isolation::lock::{Holder, Lock, LockError};
use crate::model::InstanceSpec;
use crate::process::spawn::{Creds, ExecPlan, Output, Spawn, SpawnError};

use super::worker::Progress;

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(
        "shared path {path} (paths.{key}) does not exist on this node: is {id}'s storage mounted here?"
    )]
    PathMissing {
        id: String,
        key: String,
        path: PathBuf,
    },
    #[error(
        "shared path {path} (paths.{key}) is a {what}, not a directory: paths must name directories"
    )]
    PathNotDir {
        key: String,
        path: PathBuf,
        what: &'static str,
    },
    #[error("shared path {path} (paths.{key}): {source}")]
    Path {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("creating the log directory {path}: {source}")]
    LogDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log of {name} in {dir}: {source}")]
    Log {
        name: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: {source}")]
    Plan {
        name: String,
        #[source]
        source: SpawnError,
    },
}

/// One process to start, with the cgroup descriptors the loop opened for
/// it (cgroupfs is local and answers; the instance's storage may not).
pub struct Slot {
    pub name: String,
    pub argv: Vec<String>,
    /// The v2 directory to be born in (clone3), and v1 `cgroup.procs`.
    pub into_cgroup: Option<OwnedFd>,
    pub v1: Vec<OwnedFd>,
}

/// What a start needs from the host, asked for by the loop.
pub struct Request {
    pub spec: Arc<InstanceSpec>,
    pub slots: Vec<Slot>,
    pub log_dir: PathBuf,
    /// `log_dir` is the runtime dir's own (created on first need).
    pub own_log_dir: bool,
    /// The lock is wanted (not held from an earlier stage).
    pub lock_as: Option<Holder>,
}

/// Everything for the fork, from the worker.
pub struct Prepared {
    pub lock: Option<Lock>,
    pub creds: Option<Creds>,
    pub plans: Vec<(String, ExecPlan)>,
    /// How long taking the lock took (start timing, issue 15).
    pub lock_time: std::time::Duration,
}

/// Runs on a worker thread; `p` names each step, for a timeout message.
pub fn prepare(req: Request, p: &Progress) -> Result<Prepared, PrepareError> {
    let spec = &req.spec;
    for (key, path) in &spec.paths {
        p.set(format!("paths.{key} {}", path.display()));
        use crate::paths::{SharedPathError, check_shared};
        match check_shared(path) {
            Ok(()) => {}
            Err(SharedPathError::Missing) => {
                return Err(PrepareError::PathMissing {
                    id: spec.id.clone(),
                    key: key.clone(),
                    path: path.clone(),
                });
            }
            Err(SharedPathError::NotADirectory(what)) => {
                return Err(PrepareError::PathNotDir {
                    key: key.clone(),
                    path: path.clone(),
                    what,
                });
            }
            Err(SharedPathError::Stat(source)) => {
                return Err(PrepareError::Path {
                    key: key.clone(),
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    let mut lock_time = std::time::Duration::ZERO;
    let lock = match (&spec.lock, &req.lock_as) {
        (Some(path), Some(me)) => {
            p.set(format!("the lock {}", path.display()));
            let t = std::time::Instant::now();
            let lock = Lock::acquire(path, me)?;
            lock_time = t.elapsed();
            Some(lock)
        }
        _ => None,
    };
    p.set(format!("the user and group of {}", spec.id));
    let creds =
        crate::process::spawn::resolve_creds(spec.run.user.as_deref(), spec.run.group.as_deref())
            .map_err(|source| PrepareError::Plan {
            name: spec.id.clone(),
            source,
        })?;
    let mut plans = Vec::with_capacity(req.slots.len());
    for slot in req.slots {
        p.set(format!(
            "the log {}/{}.log",
            req.log_dir.display(),
            slot.name
        ));
        let log = open_process_log(&req.log_dir, &slot.name, req.own_log_dir)?;
        p.set(format!("the command of {} ({})", slot.name, slot.argv[0]));
        let plan = ExecPlan::new(Spawn {
            argv: &slot.argv,
            run: &spec.run,
            output: Output::File(log),
            cgroups: slot.v1,
            into_cgroup: slot.into_cgroup,
            inherit: lock.as_ref().map(Lock::raw_fd),
            setsid: true,
        })
        .map_err(|source| PrepareError::Plan {
            name: slot.name.clone(),
            source,
        })?;
        plans.push((slot.name, plan));
    }
    p.set("done");
    Ok(Prepared {
        lock,
        creds,
        plans,
        lock_time,
    })
}

fn open_process_log(dir: &std::path::Path, name: &str, own: bool) -> Result<OwnedFd, PrepareError> {
    let log_err = |source| PrepareError::Log {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        source,
    };
    match super::exec::open_log(dir, name, true) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && own => {
            // Our own log dir, not made yet (or removed since).
            std::fs::create_dir_all(dir).map_err(|source| PrepareError::LogDir {
                path: dir.to_path_buf(),
                source,
            })?;
            super::exec::open_log(dir, name, true).map_err(log_err)
        }
        r => r.map_err(log_err),
    }
}
