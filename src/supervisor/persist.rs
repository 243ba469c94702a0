//! Runtime state on disk, and adoption after a supervisor crash.
//!
//! One JSON file per instance in `RUNTIME/state/`, replaced atomically
//! and durably after every loop iteration that changed it (write, fsync,
//! rename, fsync of the directory), by a writer thread so that the disk
//! never holds up the loop (`supervisor::statefile`), always through the
//! checked descriptor of state/, never through a link. A write that fails
//! is kept (`Daemon::state_errors`) and shown in `status`.
//!
//! A daemon started after a SIGKILL of the previous one reads these files
//! and adopts what still runs: each recorded process is verified by pid
//! *and* start time, or by membership of the instance's cgroup. It never
//! starts a second copy and never kills a live one.

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::epoll::EpollFlags;
use serde::{Deserialize, Serialize};

use super::fsm::{Event, Observed, State};
use super::instance::{Proc, ProcRole};
use super::registry::Source;
use super::{Daemon, tok};
use crate::isolation::lock::Lock;
use crate::model::ServiceKind;
use crate::process::pidfd::Pidfd;
use crate::process::procfs;

#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub state: String,
    /// UNIX seconds when the state began.
    pub since: u64,
    pub procs: Vec<SavedProc>,
    /// Without cgroups: every member seen, to find them again.
    #[serde(default)]
    pub members: Vec<(i32, u64)>,
    pub cgroup: Option<String>,
    pub restarts: u32,
    pub last_failure: Option<String>,
    pub owned_address: bool,
    pub supervisor_pid: u32,
    pub fingerprint: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedProc {
    pub name: String,
    pub pid: i32,
    pub start_time: u64,
    pub script: bool,
    pub exit: Option<String>,
    /// Found in the cgroup, not started by us: its exit alone fails nothing.
    #[serde(default)]
    pub member: bool,
}

pub use super::table::DIED_WHILE_DOWN;

impl Daemon {
    /// Hands the state of every changed instance to the writer thread
    /// (write, fsync, rename, fsync of state/: `supervisor::statefile`),
    /// and takes in what it reported.
    pub(super) fn flush_state(&mut self) {
        self.collect_state_outcomes();
        let dirty = std::mem::take(&mut self.dirty);
        for idx in dirty {
            let saved = self.saved(idx);
            // One write(2): serde_json on an unbuffered File would issue
            // one per token.
            let mut bytes = serde_json::to_vec(&saved).unwrap_or_default();
            bytes.push(b'\n');
            let name = format!("{}.json", saved.id);
            if let Some((name, bytes)) = self.rundir.queue_state(name, bytes) {
                let r = self.rundir.state.write_atomic(&name, &bytes);
                self.note_state_outcome((name, r.map_err(std::sync::Arc::new)));
            }
        }
    }

    /// Takes in the writer's reports: a failure is logged and kept for
    /// `status` until a later write of that instance succeeds.
    pub(super) fn collect_state_outcomes(&mut self) {
        for o in self.rundir.state_outcomes() {
            self.note_state_outcome(o);
        }
    }

    /// At exit: every pending state written before the daemon ends.
    pub(super) fn finish_state(&mut self) {
        for o in self.rundir.finish_state_writes() {
            self.note_state_outcome(o);
        }
    }

    fn note_state_outcome(&mut self, (name, r): crate::supervisor::statefile::Outcome) {
        let Some(id) = name.strip_suffix(".json") else {
            return;
        };
        let Some(idx) = self.idx_of(id) else {
            return;
        };
        match r {
            Ok(()) => {
                if self.state_errors.remove(&idx).is_some() {
                    tracing::info!(instance = %id, "state file written again");
                }
            }
            Err(e) => {
                let msg = format!(
                    "state file {}/{name} not written ({e}): a restarted daemon would not know this instance's state",
                    self.rundir.state.path().display(),
                );
                tracing::error!(instance = %id, "{msg}");
                self.state_errors.insert(idx, msg);
            }
        }
    }

    fn saved(&self, idx: usize) -> Saved {
        let inst = &self.insts[idx];
        let members = if inst.cgroup.is_none() && inst.state().may_have_processes() {
            self.members(idx)
                .into_iter()
                .filter_map(|(p, t)| t.map(|t| (p, t)))
                .collect()
        } else {
            Vec::new()
        };
        Saved {
            id: inst.id().to_string(),
            state: inst.state().as_str().to_string(),
            since: inst
                .since_wall
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            procs: inst
                .procs
                .iter()
                .map(|p| SavedProc {
                    name: p.name.clone(),
                    pid: p.pid,
                    start_time: p.start_time,
                    script: p.role == ProcRole::StartScript,
                    exit: p.exit.clone(),
                    member: p.role == ProcRole::Member,
                })
                .collect(),
            members,
            cgroup: inst.cgroup.as_ref().map(|c| c.dir().display().to_string()),
            restarts: inst.fsm.restart_count,
            last_failure: inst.fsm.last_failure.clone(),
            owned_address: inst.owned_address,
            supervisor_pid: std::process::id(),
            fingerprint: inst.spec.fingerprint(),
        }
    }

    /// Reads every state file and takes over what still runs.
    pub(super) fn adopt_all(&mut self) {
        let state = &self.rundir.state;
        let mut adopted = 0;
        let mut seen = std::collections::BTreeSet::new();
        let mut found = Vec::new();
        for name in state.names().unwrap_or_default() {
            let Some(name) = name.to_str().filter(|n| n.ends_with(".json")) else {
                continue;
            };
            // Opened through the checked dir, never through a link.
            match state
                .read(name)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Saved>(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => found.push(s),
                Err(err) => tracing::error!(
                    "state file {}/{name} unreadable ({err}); its instance is treated as stopped",
                    state.path().display()
                ),
            }
        }
        for saved in found {
            seen.insert(saved.id.clone());
            if self.adopt(saved) {
                adopted += 1;
            }
        }
        // The cgroup is the truth: an instance whose state file is missing
        // or unreadable, but whose cgroup holds processes, runs. Adopt it
        // (exactly those processes), never start a second copy beside it.
        for idx in 0..self.insts.len() {
            if !seen.contains(self.insts[idx].id()) && self.adopt_from_cgroup(idx) {
                adopted += 1;
            }
        }
        if adopted > 0 {
            tracing::info!(adopted, "instances adopted from the previous supervisor");
        }
    }

    /// Adopts what the instance's cgroup holds, with no state to go by
    /// (lost, deleted or corrupt): every member, each verified by pidfd to
    /// be in the cgroup, as a `Member` (which of them is the main process
    /// is not known; the instance ends when its cgroup is empty). True if
    /// something was adopted. Also used when a request finds a stopped
    /// instance's cgroup populated.
    pub(super) fn adopt_from_cgroup(&mut self, idx: usize) -> bool {
        let Ok(root) = &self.cgroot else {
            return false;
        };
        let id = self.insts[idx].id().to_string();
        let cg = root.instance(&id);
        if !cg.exists() || !cg.populated() {
            return false;
        }
        let procs: Vec<SavedProc> = cg
            .pids()
            .into_iter()
            .filter_map(|pid| {
                let st = procfs::stat(pid)?;
                Some(SavedProc {
                    name: st.comm,
                    pid,
                    start_time: st.start_time,
                    script: false,
                    exit: None,
                    member: true,
                })
            })
            .collect();
        tracing::warn!(
            instance = %id,
            pids = %procs.iter().map(|p| p.pid.to_string()).collect::<Vec<_>>().join(" "),
            "no state for it but its cgroup {} holds processes: adopting them (the cgroup is the truth)",
            cg.dir().display()
        );
        self.insts[idx].spare_cgroup = None;
        self.unwatch_cgroup(idx);
        self.insts[idx].cgroup = None;
        let saved = Saved {
            id,
            state: State::Running.as_str().into(),
            since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            procs,
            members: Vec::new(),
            cgroup: Some(cg.dir().display().to_string()),
            restarts: 0,
            last_failure: None,
            owned_address: false,
            supervisor_pid: 0,
            fingerprint: 0,
        };
        self.adopt(saved)
    }

    /// Adopts one instance; true if something of it still runs. This
    /// gathers the facts (which recorded processes still live, the cgroup,
    /// the lock) and hands them to the table as `Adopted`; the table
    /// decides the state.
    fn adopt(&mut self, saved: Saved) -> bool {
        let Some(idx) = self.idx_of(&saved.id) else {
            report_unconfigured(&saved);
            return false;
        };
        let was = State::parse(&saved.state).unwrap_or(State::Stopped);
        self.insts[idx].since_wall = UNIX_EPOCH + Duration::from_secs(saved.since);
        self.insts[idx].owned_address = saved.owned_address;
        if was == State::Stopped {
            return false;
        }
        // The cgroup, if the instance had one.
        if let Ok(root) = &self.cgroot {
            let cg = root.instance(&saved.id);
            if cg.exists() {
                self.insts[idx].cgroup = Some(cg);
                self.watch_cgroup(idx);
            }
        }
        let cg_live = self.insts[idx]
            .cgroup
            .as_ref()
            .is_some_and(|c| c.populated());
        let mut procs = adopted_procs(&saved);
        let alive = cg_live || procs.iter().any(|p| p.alive());
        if !alive {
            if let Some(cg) = self.insts[idx].cgroup.take() {
                self.remove_cgroup(cg);
            }
            self.unwatch_cgroup(idx);
        } else {
            // Watch the adopted processes through their pidfds.
            for p in &procs {
                if let Some(fd) = &p.pidfd {
                    let raw = fd.as_raw_fd();
                    self.register(fd.as_fd(), tok::PIDFD | raw as u64, EpollFlags::EPOLLIN);
                    self.reg.fd(raw, Source::Adopted { idx, pid: p.pid });
                }
            }
            if was != State::Failed {
                self.take_lock_back(idx, &procs);
            }
        }
        let dead_main = self.dead_main(idx, &procs, alive, &saved.id);
        let pids: Vec<String> = procs
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.pid.to_string())
            .collect();
        if alive {
            tracing::info!(instance = %saved.id, was = was.as_str(), pids = %pids.join(" "), tracking = %self.tracking_desc(idx), "found running");
        }
        let inst = &mut self.insts[idx];
        std::mem::swap(&mut inst.procs, &mut procs);
        inst.adopted = alive;
        self.dirty.insert(idx);
        self.post(
            idx,
            Event::Adopted(Observed {
                was,
                alive,
                dead_main,
                restarts: saved.restarts,
                last_failure: saved.last_failure,
                ran_for: SystemTime::now()
                    .duration_since(self.insts[idx].since_wall)
                    .ok(),
            }),
        );
        if alive {
            self.check_empty(idx);
        }
        alive
    }

    /// The main process that died while the supervisor was down (a simple
    /// service whose recorded main is gone), or the first process when
    /// nothing of the instance is left: what the table reports as the exit.
    fn dead_main(
        &self,
        idx: usize,
        procs: &[Proc],
        alive: bool,
        id: &str,
    ) -> Option<(String, String)> {
        (self.insts[idx].spec.kind == ServiceKind::Simple)
            .then(|| {
                procs
                    .iter()
                    .find(|p| p.role == ProcRole::Main && !p.alive())
                    .map(|p| (p.name.clone(), p.exit.clone().unwrap_or_default()))
            })
            .flatten()
            .or_else(|| {
                (!alive).then(|| {
                    let name = self.insts[idx]
                        .spec
                        .processes
                        .first()
                        .map(|p| p.name.clone())
                        .unwrap_or_else(|| id.to_string());
                    (name, DIED_WHILE_DOWN.to_string())
                })
            })
    }

    /// Holds the lock again: the same open file description as the
    /// instance's processes (their fd 3), or a fresh lock if none holds it.
    /// The descriptors are duplicated here; comparing them with the lock
    /// file, or taking it anew, asks the instance's storage, which may not
    /// answer: that is done on the worker.
    fn take_lock_back(&mut self, idx: usize, procs: &[Proc]) {
        let spec = self.insts[idx].spec.clone();
        let Some(lp) = spec.lock.clone() else {
            return;
        };
        let dups: Vec<std::fs::File> = procs
            .iter()
            .filter_map(|p| p.pidfd.as_ref())
            .filter_map(Lock::dup_from)
            .collect();
        let me = crate::isolation::lock::Holder {
            node: self.node.clone(),
            pid: std::process::id(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            runtime_dir: self.opts.runtime_dir.display().to_string(),
            instance: spec.id.clone(),
        };
        self.worker.submit(move |p| {
            p.set(format!("the lock {}", lp.display()));
            let lock = dups
                .into_iter()
                .find_map(|f| Lock::from_dup(&lp, f))
                .or_else(|| Lock::acquire(&lp, &me).ok());
            if lock.is_none() {
                tracing::warn!(instance = %me.instance, "could not take its lock back ({}): another holder?", lp.display());
            }
            super::Outcome::LockBack {
                idx,
                lock: lock.map(Box::new),
            }
        });
    }

    /// The lock of an adopted instance came back from the worker.
    pub(super) fn on_lock_back(&mut self, idx: usize, lock: Option<Box<Lock>>) {
        let Some(lock) = lock else {
            return;
        };
        let inst = &mut self.insts[idx];
        if inst.lock.is_none() && inst.state().may_have_processes() {
            inst.lock = Some(lock);
        } else {
            self.release_later(lock);
        }
    }
}

/// The recorded processes, each verified (pid + start time, through a
/// pidfd) or marked dead; without cgroups also the recorded members.
fn adopted_procs(saved: &Saved) -> Vec<Proc> {
    let mut procs = Vec::new();
    for sp in &saved.procs {
        // A zombie (dead, not yet reaped by its new parent) is dead: its
        // pidfd is already readable.
        let fd = Pidfd::open_verified(sp.pid, sp.start_time)
            .ok()
            .flatten()
            .filter(|f| !f.exited());
        let alive = sp.exit.is_none() && fd.is_some();
        procs.push(Proc {
            name: sp.name.clone(),
            pid: sp.pid,
            start_time: sp.start_time,
            role: if sp.member {
                ProcRole::Member
            } else if sp.script {
                ProcRole::StartScript
            } else {
                ProcRole::Main
            },
            child: false,
            pidfd: if alive { fd } else { None },
            exit: if alive {
                None
            } else {
                Some(sp.exit.clone().unwrap_or_else(|| DIED_WHILE_DOWN.into()))
            },
        });
    }
    for (pid, t) in &saved.members {
        if procfs::start_time(*pid) != Some(*t) || procs.iter().any(|x| x.pid == *pid) {
            continue;
        }
        procs.push(Proc {
            name: format!("member-{pid}"),
            pid: *pid,
            start_time: *t,
            role: ProcRole::Member,
            child: false,
            pidfd: Pidfd::open_verified(*pid, *t).ok().flatten(),
            exit: None,
        });
    }
    procs
}

/// A saved instance that the instances file no longer has: its processes
/// that still run are left alone, and the operator is told.
fn report_unconfigured(saved: &Saved) {
    let live: Vec<String> = saved
        .procs
        .iter()
        .filter(|p| procfs::start_time(p.pid) == Some(p.start_time))
        .map(|p| p.pid.to_string())
        .collect();
    if !live.is_empty() {
        tracing::error!(
            instance = %saved.id,
            "is no longer in the instances file but its processes {} still run: left untouched; put it back and reload to manage it",
            live.join(" ")
        );
    }
}
