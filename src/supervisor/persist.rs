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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::epoll::EpollFlags;
use serde::{Deserialize, Serialize};

use super::fsm::{Event, Fsm, State};
use super::instance::{Proc, ProcRole};
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
}

pub const DIED_WHILE_DOWN: &str = "exited while the supervisor was down";

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
                self.note_state_outcome((name, r.map_err(|e| e.to_string())));
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
                })
                .collect(),
            members,
            cgroup: inst.cgroup.as_ref().map(|c| c.dir.display().to_string()),
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
        let Ok(names) = state.names() else {
            return;
        };
        let mut adopted = 0;
        let mut found = Vec::new();
        for name in names {
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
            if self.adopt(saved) {
                adopted += 1;
            }
        }
        if adopted > 0 {
            tracing::info!(adopted, "instances adopted from the previous supervisor");
        }
    }

    /// Adopts one instance; true if something of it still runs.
    fn adopt(&mut self, saved: Saved) -> bool {
        let Some(idx) = self.idx_of(&saved.id) else {
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
            return false;
        };
        let now = Instant::now();
        let was = State::parse(&saved.state).unwrap_or(State::Stopped);
        let since = UNIX_EPOCH + Duration::from_secs(saved.since);
        {
            let inst = &mut self.insts[idx];
            inst.fsm.last_failure = saved.last_failure.clone();
            inst.fsm.restart_count = saved.restarts;
            inst.since_wall = since;
            inst.owned_address = saved.owned_address;
        }
        match was {
            State::Stopped => return false,
            State::Failed => {
                // Failed stays failed (monitor 1) until stopped or reset,
                // across supervisor restarts too. (Any remnants are found
                // through the cgroup below.)
                self.insts[idx].fsm = Fsm::adopted(now, State::Failed);
                self.insts[idx].fsm.last_failure = saved.last_failure.clone();
            }
            _ => {}
        }
        // The cgroup, if the instance had one and it still has members.
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
        let mut procs = Vec::new();
        let mut any_alive = cg_live;
        for sp in saved.procs {
            // A zombie (dead, not yet reaped by its new parent) is dead:
            // its pidfd is already readable.
            let fd = Pidfd::open_verified(sp.pid, sp.start_time)
                .ok()
                .flatten()
                .filter(|f| !f.exited());
            let alive = sp.exit.is_none() && fd.is_some();
            any_alive |= alive;
            procs.push(Proc {
                name: sp.name,
                pid: sp.pid,
                start_time: sp.start_time,
                role: if sp.script {
                    ProcRole::StartScript
                } else {
                    ProcRole::Main
                },
                child: false,
                pidfd: if alive { fd } else { None },
                exit: if alive {
                    None
                } else {
                    Some(sp.exit.unwrap_or_else(|| DIED_WHILE_DOWN.into()))
                },
            });
        }
        // Without cgroups: the members recorded last time, if still them.
        let extra: Vec<(i32, u64)> = saved
            .members
            .into_iter()
            .filter(|(p, t)| {
                procfs::start_time(*p) == Some(*t) && !procs.iter().any(|x| x.pid == *p)
            })
            .collect();
        any_alive |= !extra.is_empty();
        for (pid, t) in extra {
            procs.push(Proc {
                name: format!("member-{pid}"),
                pid,
                start_time: t,
                role: ProcRole::Member,
                child: false,
                pidfd: Pidfd::open_verified(pid, t).ok().flatten(),
                exit: None,
            });
        }
        let id = saved.id.clone();
        if !any_alive {
            self.insts[idx].procs = procs;
            if let Some(cg) = self.insts[idx].cgroup.take() {
                cg.remove();
            }
            self.unwatch_cgroup(idx);
            self.dirty.insert(idx);
            match was {
                State::Failed => {}
                // The stop it was doing has finished by itself.
                State::Stopping => self.insts[idx].fsm = Fsm::adopted(now, State::Stopped),
                // It should be running and nothing is: a failure, which the
                // restart policy handles as any other (restart or failed).
                _ => {
                    tracing::warn!(instance = %id, "was {} but nothing of it runs: {DIED_WHILE_DOWN}", was.as_str());
                    self.insts[idx].fsm = Fsm::adopted(now, State::Running);
                    self.insts[idx].fsm.last_failure = saved.last_failure;
                    self.insts[idx].fsm.restart_count = saved.restarts;
                    let name = self.insts[idx]
                        .spec
                        .processes
                        .first()
                        .map(|p| p.name.clone())
                        .unwrap_or_else(|| id.clone());
                    self.post(
                        idx,
                        Event::ProcessExited {
                            name,
                            status: DIED_WHILE_DOWN.into(),
                            clean: false,
                        },
                    );
                }
            }
            return false;
        }
        if was == State::Failed {
            // Remnants of a failed instance: keep it failed, track them.
            self.insts[idx].procs = procs;
            return true;
        }
        // Watch the adopted processes through their pidfds.
        for p in &procs {
            if let Some(fd) = &p.pidfd {
                let raw = fd.as_raw_fd();
                self.register(fd.as_fd(), tok::PIDFD | raw as u64, EpollFlags::EPOLLIN);
                self.pidfds.insert(raw, (idx, p.pid));
            }
        }
        // Hold the lock again: the same open file description as the
        // instance's processes (their fd 3), or a fresh lock if none holds it.
        let spec = self.insts[idx].spec.clone();
        if let Some(lp) = &spec.lock {
            let from_proc = procs
                .iter()
                .filter_map(|p| p.pidfd.as_ref())
                .find_map(|fd| Lock::adopt(lp, fd));
            let lock = from_proc.or_else(|| {
                let me = crate::isolation::lock::Holder {
                    node: self.node.clone(),
                    pid: std::process::id(),
                    since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    runtime_dir: self.opts.runtime_dir.display().to_string(),
                    instance: id.clone(),
                };
                Lock::acquire(lp, &me).ok()
            });
            if lock.is_none() {
                tracing::warn!(instance = %id, "could not take its lock back ({}): another holder?", lp.display());
            }
            self.insts[idx].lock = lock;
        }
        let dead_main: Vec<(String, String)> = procs
            .iter()
            .filter(|p| p.role == ProcRole::Main && !p.alive())
            .map(|p| (p.name.clone(), p.exit.clone().unwrap_or_default()))
            .collect();
        let pids: Vec<String> = procs
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.pid.to_string())
            .collect();
        let inst = &mut self.insts[idx];
        inst.procs = procs;
        inst.adopted = true;
        inst.fsm = Fsm::adopted(now, State::Running);
        inst.fsm.last_failure = saved.last_failure;
        inst.fsm.restart_count = saved.restarts;
        tracing::info!(instance = %id, was = was.as_str(), pids = %pids.join(" "), tracking = %self.tracking_desc(idx), "adopted");
        self.schedule_health(idx, now);
        self.dirty.insert(idx);
        if spec.kind == ServiceKind::Simple
            && let Some((name, status)) = dead_main.into_iter().next()
        {
            self.post(
                idx,
                Event::ProcessExited {
                    name,
                    status,
                    clean: false,
                },
            );
        } else if was == State::Stopping {
            // The previous supervisor was stopping it: finish the job.
            self.post(idx, Event::Stop { timeout: None });
        }
        self.check_empty(idx);
        true
    }
}
