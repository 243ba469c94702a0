//! The `Launch` action: the instance's cgroup (on the loop: cgroupfs is
//! local), then the storage and name-service part on a worker
//! ([`super::prepare`]), then the forks (on the loop again, without
//! waiting for any exec). The start deadline bounds the whole; a prepare
//! that does not come back in time names its step in the failure.

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use nix::sys::epoll::EpollFlags;

use super::fsm::{Event, State};
use super::instance::{Preparing, Proc, ProcRole};
use super::prepare::{self, PrepareError, Prepared, Slot};
use super::registry::{ExecPipe, Role, Source};
use super::{Daemon, Outcome, tok};
use crate::isolation::lock::Holder;
use crate::isolation::usage::{Baseline, Dirs};
use crate::model::ServiceKind;
use crate::process::spawn::{ExecPlan, Output, Spawn};

/// A step of a start on the loop that failed (the storage steps are
/// `PrepareError`s, on the worker).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{step} still does not answer (checked {secs}s ago, no answer yet)")]
    StillHung { step: String, secs: u64 },
    #[error(
        "memory_max/pids_max/cpu_weight/cpu_max need cgroups, which cannot be used here: {why}"
    )]
    LimitsNeedCgroups { why: String },
    #[error("{0}")]
    NoCgroups(String),
    #[error(transparent)]
    Cgroup(#[from] crate::isolation::cgroup::CgroupError),
    #[error("opening {dir}: {source}")]
    CgroupFiles {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    ForceBind(#[from] super::forcebind::ForceBindError),
    #[error("{name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: crate::process::spawn::SpawnError,
    },
}

impl Daemon {
    pub(super) fn launch(&mut self, idx: usize) {
        self.waiting_address.remove(&idx);
        self.timing_launch(idx);
        if let Err(e) = self.begin_prepare(idx) {
            self.post(idx, Event::LaunchFailed(e.to_string()));
        }
    }

    fn begin_prepare(&mut self, idx: usize) -> Result<(), LaunchError> {
        if let Some(p) = &self.insts[idx].preparing {
            // A check of the last start is still stuck on the storage: a
            // second one would hang beside it. Fail now, say what hangs.
            return Err(LaunchError::StillHung {
                step: p.progress.get(),
                secs: p.since.elapsed().as_secs(),
            });
        }
        let spec = self.insts[idx].spec.clone();
        // A cgroup kept from the last run may hold programs that the spec
        // no longer wants; a new one holds none.
        let kept = self.insts[idx].cgroup.is_some() || self.insts[idx].spare_cgroup.is_some();
        self.reuse_or_make_cgroup(idx)?;
        // Before the first fork: children are born in the cgroup (clone3).
        self.apply_force_bind(idx, kept)?;
        let mut slots = Vec::new();
        for p in &spec.processes {
            for k in 1..=p.count {
                let name = if p.count == 1 {
                    p.name.clone()
                } else {
                    format!("{}.{k}", p.name)
                };
                let (into_cgroup, v1) = self.cgroup_fds(idx)?;
                slots.push(Slot {
                    name,
                    argv: p.argv.clone(),
                    into_cgroup,
                    v1,
                });
            }
        }
        let lock_as = (spec.lock.is_some() && self.insts[idx].lock.is_none()).then(|| Holder {
            node: self.node.clone(),
            pid: std::process::id(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            runtime_dir: self.opts.runtime_dir.display().to_string(),
            instance: spec.id.clone(),
        });
        let req = prepare::Request {
            spec: spec.clone(),
            slots,
            log_dir: self.log_dir(idx),
            own_log_dir: spec.log_dir.is_none(),
            lock_as,
        };
        // The last run's lock, if not closed yet: closed before the new one
        // is taken (an OFD lock of ours would refuse it).
        let old_lock = self.insts[idx].old_lock.take();
        // The run's usage baseline: zero in a new cgroup; a kept one's
        // counters are read on the worker (a cpu.stat read flushes the
        // kernel's statistics, up to milliseconds with 10,000 cgroups busy
        // starting), before any process of this run can add to them.
        let kept_dirs = match self.insts[idx].cgroup.as_mut() {
            Some(cg) if cg.fresh => {
                cg.fresh = false;
                None
            }
            Some(cg) => Some((cg.dir(), cg.v1_dirs())),
            None => None,
        };
        if kept_dirs.is_some() {
            self.flush_stats();
        }
        let prepare = self.host.preparer();
        let (job, progress) = self.worker.submit(move |p| {
            drop(old_lock);
            let base = kept_dirs
                .map(|(v2, v1)| Dirs { v2: &v2, v1: &v1 }.begin_run())
                .unwrap_or_default();
            Outcome::Prepared {
                idx,
                base,
                result: Box::new(prepare(req, p)),
            }
        });
        let inst = &mut self.insts[idx];
        inst.preparing = Some(Preparing {
            job,
            progress,
            since: Instant::now(),
        });
        inst.procs.clear();
        inst.warnings.clear();
        inst.execs_pending = 0;
        Ok(())
    }

    /// The empty cgroup of the last run if it was never killed and its
    /// limits are still the ones wanted; else a new one.
    fn reuse_or_make_cgroup(&mut self, idx: usize) -> Result<(), LaunchError> {
        let spec = self.insts[idx].spec.clone();
        match self.insts[idx].spare_cgroup.take().map(|b| *b) {
            Some((cg, limits))
                if limits == spec.limits && !cg.killed && !self.host.cgroup_populated(&cg) =>
            {
                self.insts[idx].cgroup = Some(cg);
            }
            Some((cg, _)) => {
                self.unwatch_cgroup(idx);
                self.remove_cgroup(cg);
            }
            None => {}
        }
        match &self.cgroot {
            Ok(_) if self.insts[idx].cgroup.is_some() => Ok(()),
            Ok(_) => self.make_cgroup(idx),
            Err(why) if !spec.limits.is_empty() => Err(LaunchError::LimitsNeedCgroups {
                why: why.to_string(),
            }),
            Err(_) => Ok(()),
        }
    }

    /// Descriptors for one child to enter the instance's cgroup with.
    #[allow(clippy::type_complexity)]
    fn cgroup_fds(
        &mut self,
        idx: usize,
    ) -> Result<(Option<std::os::fd::OwnedFd>, Vec<std::os::fd::OwnedFd>), LaunchError> {
        let Some(cg) = &self.insts[idx].cgroup else {
            return Ok((None, Vec::new()));
        };
        match self.host.cgroup_join_files(cg) {
            Ok((dir, v1)) => Ok((Some(dir), v1)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The kept cgroup was removed since the last run.
                self.unwatch_cgroup(idx);
                self.insts[idx].cgroup = None;
                self.make_cgroup(idx)?;
                let cg = self.insts[idx].cgroup.as_ref().expect("just made");
                let (dir, v1) =
                    self.host
                        .cgroup_join_files(cg)
                        .map_err(|source| LaunchError::CgroupFiles {
                            dir: cg.dir(),
                            source,
                        })?;
                Ok((Some(dir), v1))
            }
            Err(source) => Err(LaunchError::CgroupFiles {
                dir: cg.dir(),
                source,
            }),
        }
    }

    /// A prepare job came back: fork, or fail, or (a start given up on
    /// meanwhile) let it go, closing what it opened on the worker.
    pub(super) fn on_prepared(
        &mut self,
        idx: usize,
        job: u64,
        base: Baseline,
        result: Result<Prepared, PrepareError>,
    ) {
        let inst = &mut self.insts[idx];
        let current = inst.preparing.as_ref().is_some_and(|p| p.job == job);
        if current {
            inst.preparing = None;
        }
        if !current || inst.state() != State::Starting {
            if current || inst.preparing.is_none() {
                tracing::info!(instance = %inst.id(), "the storage answered again; a start may proceed");
            }
            self.release_later(result);
            return;
        }
        match result {
            Err(e) => self.post(idx, Event::LaunchFailed(e.to_string())),
            Ok(prep) => {
                if let Err(e) = self.fork_prepared(idx, base, prep) {
                    self.post(idx, Event::LaunchFailed(e.to_string()));
                }
            }
        }
    }

    fn fork_prepared(
        &mut self,
        idx: usize,
        base: Baseline,
        prep: Prepared,
    ) -> Result<(), LaunchError> {
        let id = self.insts[idx].id().to_string();
        self.timing_prepared(idx, base, prep.lock_time, prep.lock.as_ref());
        if let Some(lock) = prep.lock {
            if let Some(prev) = &lock.previous
                && prev.node != self.node
            {
                let reason = format!("taken over from {}", prev.describe());
                tracing::warn!(instance = %id, "{reason}");
                self.run_hooks(idx, "taken-over", State::Starting, State::Starting, &reason);
            }
            self.insts[idx].lock = Some(Box::new(lock));
        }
        self.insts[idx].creds = prep.creds.map(Box::new);
        let role = match self.insts[idx].spec.kind {
            ServiceKind::Simple => ProcRole::Main,
            ServiceKind::Forking => ProcRole::StartScript,
        };
        let mut plans = prep.plans.into_iter();
        while let Some((name, plan)) = plans.next() {
            if let Err(e) = self.spawn_plan(idx, &name, plan, role) {
                // The plans not used hold logs on the storage: closed there.
                self.release_later(plans.collect::<Vec<_>>());
                return Err(e);
            }
        }
        if self.insts[idx].execs_pending == 0 {
            // Every exec was confirmed at once (see spawn_plan).
            self.post_launched(idx);
        }
        self.dirty.insert(idx);
        Ok(())
    }

    /// Forks one process of the instance (into its cgroup, with its lock).
    fn spawn_plan(
        &mut self,
        idx: usize,
        name: &str,
        plan: ExecPlan,
        role: ProcRole,
    ) -> Result<i32, LaunchError> {
        // Not waiting for the exec: the loop goes on to the next instance
        // while this child execs; the registry keeps what it reads.
        let mut child = self.host.spawn(plan).map_err(|source| LaunchError::Spawn {
            name: name.to_string(),
            source,
        })?;
        self.release_later(std::mem::take(&mut child.parent_fds));
        let pid = child.pid;
        let start_time = self.host.start_time(pid).unwrap_or(0);
        tracing::info!(instance = %self.insts[idx].id(), process = name, pid, "started");
        // A child that has exec'd already (an idle node) is confirmed now,
        // without a trip through epoll; otherwise (a report, or not yet)
        // the loop reads the pipe.
        let mut first = [0u8; 16];
        let confirmed = match nix::unistd::read(&child.errpipe, &mut first) {
            Ok(0) => {
                let late = child.release();
                self.release_fds_later(late);
                Ok(())
            }
            Ok(n) => {
                let mut report = first[..n].to_vec();
                let late = child.note_report(&mut report);
                self.release_fds_later(late);
                Err(report)
            }
            Err(_) => Err(Vec::new()),
        };
        self.reg.child(pid, Role::Proc { idx });
        if let Err(buf) = confirmed {
            let fd = child.errpipe.as_raw_fd();
            self.register(
                child.errpipe.as_fd(),
                tok::ERRPIPE | fd as u64,
                EpollFlags::EPOLLIN,
            );
            self.reg.fd(fd, Source::Exec(ExecPipe { idx, child, buf }));
            self.insts[idx].execs_pending += 1;
        }
        self.insts[idx].procs.push(Proc {
            name: name.to_string(),
            pid,
            start_time,
            role,
            child: true,
            pidfd: None,
            exit: None,
        });
        Ok(pid)
    }

    /// Drops `x` on a worker thread: closing a file on the instance's
    /// storage waits for its flush, which a hung mount never finishes.
    /// Collected, and handed to the worker once per loop iteration
    /// ([`Self::flush_releases`]): a burst of 500 starts costs one job.
    pub(super) fn release_later<T: Send + 'static>(&mut self, x: T) {
        self.to_release.push(Box::new(x));
    }

    /// [`Self::release_later`] for files, none of which is the usual case.
    pub(super) fn release_fds_later(&mut self, fds: Vec<std::os::fd::OwnedFd>) {
        if !fds.is_empty() {
            self.release_later(fds);
        }
    }

    /// Drops what [`Self::release_later`] collected, on the worker.
    pub(super) fn flush_releases(&mut self) {
        for idx in std::mem::take(&mut self.old_locks) {
            if let Some(lock) = self.insts[idx].old_lock.take() {
                self.to_release.push(Box::new(lock));
            }
        }
        if self.to_release.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.to_release);
        self.worker.submit(move |_| {
            drop(batch);
            Outcome::Released
        });
    }

    pub fn log_dir(&self, idx: usize) -> PathBuf {
        let spec = &self.insts[idx].spec;
        spec.log_dir
            .clone()
            .unwrap_or_else(|| self.runtime_path("logs").join(&spec.id))
    }

    /// The stop command runs inside the instance: the SIGKILL at the
    /// deadline covers it too, and nothing it starts outlives the stop. Its
    /// output goes to the runtime dir's log of the instance (never a file
    /// on the storage, which may be what hangs); the user comes from the
    /// start's look-up.
    pub(super) fn run_stop_command(&mut self, idx: usize) {
        let spec = self.insts[idx].spec.clone();
        let Some(argv) = &spec.stop.command else {
            return;
        };
        let output = match super::exec::open_log(&self.runtime_path("logs"), &spec.id, false) {
            Ok(f) => Output::File(f),
            Err(_) => Output::Null,
        };
        let cgroups = self.insts[idx]
            .cgroup
            .as_ref()
            .and_then(|cg| cg.join_files().ok())
            .unwrap_or_default();
        let plan = ExecPlan::with_creds(
            Spawn {
                argv,
                run: &spec.run,
                output,
                cgroups,
                into_cgroup: None,
                inherit: None,
                setsid: true,
            },
            self.insts[idx].creds.as_deref().cloned(),
        );
        match plan.and_then(|p| self.host.spawn(p)) {
            Ok(child) => {
                tracing::info!(instance = %spec.id, pid = child.pid, "running the stop command");
                self.reg.child(child.pid, Role::StopCmd { idx });
                self.insts[idx].stop_cmd = Some(child.pid);
            }
            Err(e) => {
                tracing::warn!(instance = %spec.id, "stop command: {e}; sending the stop signal instead");
                self.post(idx, Event::StopCommandExited { ok: false });
            }
        }
    }

    /// Creates the instance's cgroup with its limits, and watches it.
    fn make_cgroup(&mut self, idx: usize) -> Result<(), LaunchError> {
        let root = self
            .cgroot
            .as_ref()
            .map_err(|why| LaunchError::NoCgroups(why.to_string()))?;
        let spec = &self.insts[idx].spec;
        let cg = self.host.cgroup_create(root, &spec.id, &spec.limits)?;
        self.insts[idx].cgroup = Some(cg);
        self.watch_cgroup(idx);
        Ok(())
    }

    /// Removes the empty cgroup kept from the instance's last run.
    pub(super) fn release_spare_cgroup(&mut self, idx: usize) {
        if let Some((cg, _)) = self.insts[idx].spare_cgroup.take().map(|b| *b) {
            self.unwatch_cgroup(idx);
            self.remove_cgroup(cg);
        }
    }
}
