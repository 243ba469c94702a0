//! Performing the table's actions: launch, signal, kill, clean up, and
//! what a transition means to the outside (log, state file, hooks,
//! waiting clients).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use nix::sys::epoll::EpollFlags;

use super::children::Role;
use super::fsm::{Action, Event, State};
use super::instance::{Proc, ProcRole, WaitFor};
use super::{Daemon, tok};
use crate::isolation::address;
use crate::isolation::lock::{Holder, Lock};
use crate::model::{AddressMode, ServiceKind};
use crate::process::pidfd::Pidfd;
use crate::process::spawn::{ExecPlan, Output, Spawn};
use crate::process::{procfs, track};

/// Bind-audit queries are spaced by ten times what the last one cost (the
/// kernel walks every listener of the node), within these bounds: in a
/// burst of starts the audit takes at most a tenth of the daemon's time,
/// and a single `cohost start` (or a script's sequence of them) waits for
/// nothing.
const AUDIT_GAP_MIN: std::time::Duration = std::time::Duration::from_micros(100);
const AUDIT_GAP_MAX: std::time::Duration = std::time::Duration::from_millis(50);

impl Daemon {
    pub(super) fn execute(&mut self, idx: usize, a: Action, now: Instant) {
        match a {
            Action::WaitAddress => self.wait_address(idx),
            Action::Launch => self.launch(idx),
            Action::CheckReady => self.start_ready_probe(idx, now),
            Action::CancelChecks => self.cancel_probes(idx),
            Action::RunStopCommand => self.run_stop_command(idx),
            Action::Signal(sig) => {
                let n = self.signal_all(idx, sig);
                tracing::info!(instance = %self.insts[idx].id(), signal = sig, processes = n, "signalled");
                self.check_empty(idx);
            }
            Action::KillAll => {
                self.kill_all(idx);
                self.check_empty(idx);
            }
            Action::Deadline(at) => self.deadline(idx, at),
            Action::Transition { from, to, reason } => {
                self.on_transition(idx, from, to, reason, now)
            }
            Action::Cleanup => self.cleanup(idx),
        }
    }

    // ------------------------------------------------------------ address

    fn wait_address(&mut self, idx: usize) {
        let spec = self.insts[idx].spec.clone();
        let Some(addr) = spec.address else {
            self.post_next(idx, Event::AddressReady);
            return;
        };
        if let AddressMode::Own { interface, prefix } = &spec.address_mode {
            match address::add(addr, *prefix, interface) {
                Ok(()) => {
                    self.insts[idx].owned_address = true;
                    tracing::info!(instance = %spec.id, "added {addr}/{prefix} to {interface}");
                    self.announce_address(idx);
                }
                Err(e) => {
                    self.post(idx, Event::LaunchFailed(e.to_string()));
                    return;
                }
            }
        }
        // Usually configured already: no watch, one check.
        match address::is_local(addr) {
            Ok(true) => {
                self.post_next(idx, Event::AddressReady);
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(instance = %spec.id, "checking {addr}: {e}"),
        }
        self.waiting_address.insert(idx);
        self.ensure_address_watch();
        // It may have appeared between the check and the watch.
        self.check_address(idx);
        if self.waiting_address.contains(&idx) {
            let msg = format!("waiting for {addr} to be configured on this node");
            tracing::info!(instance = %spec.id, "{msg}");
            self.progress_waiters(idx, &msg);
        }
    }

    /// A gratuitous ARP for an address we own: after a takeover, the
    /// neighbours' caches point at the failed node until told otherwise.
    /// Best effort: a failure is a warning in the log and in `status`.
    fn announce_address(&mut self, idx: usize) {
        let spec = &self.insts[idx].spec;
        let (Some(addr), AddressMode::Own { interface, .. }) = (spec.address, &spec.address_mode)
        else {
            return;
        };
        match address::announce(addr, interface) {
            Ok(true) => {
                tracing::debug!(instance = %spec.id, "gratuitous ARP for {addr} on {interface}")
            }
            Ok(false) => {}
            Err(e) => {
                let w = format!(
                    "announcing {addr} on {interface} (gratuitous ARP): {e}; neighbours may keep the old node's MAC until their ARP cache expires"
                );
                tracing::warn!(instance = %spec.id, "{w}");
                self.insts[idx].warnings.push(w);
            }
        }
    }

    pub(super) fn check_address(&mut self, idx: usize) {
        if self.insts[idx].state() != State::WaitingAddress {
            self.waiting_address.remove(&idx);
            return;
        }
        let Some(addr) = self.insts[idx].spec.address else {
            return;
        };
        match address::is_local(addr) {
            Ok(true) => {
                self.waiting_address.remove(&idx);
                self.post(idx, Event::AddressReady);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(instance = %self.insts[idx].id(), "checking {addr}: {e}"),
        }
    }

    // ------------------------------------------------------------ launch

    fn launch(&mut self, idx: usize) {
        self.waiting_address.remove(&idx);
        match self.try_launch(idx) {
            // `Launched` follows once every process has exec'd (exec_done).
            Ok(()) => {}
            Err(msg) => self.post(idx, Event::LaunchFailed(msg)),
        }
    }

    fn try_launch(&mut self, idx: usize) -> Result<(), String> {
        let spec = self.insts[idx].spec.clone();
        let id = spec.id.clone();
        // Shared storage first: a missing disk must not be papered over by
        // creating its directories on the local disk.
        for (k, p) in &spec.paths {
            use crate::isolation::paths::{SharedPathError, check_shared};
            match check_shared(p) {
                Ok(()) => {}
                Err(SharedPathError::Missing) => {
                    return Err(format!(
                        "shared path {} (paths.{k}) does not exist on this node: is {id}'s storage mounted here?",
                        p.display()
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "shared path {} (paths.{k}) {e}: it must be {id}'s storage directory",
                        p.display()
                    ));
                }
            }
        }
        if let Some(lp) = &spec.lock
            && self.insts[idx].lock.is_none()
        {
            let me = Holder {
                node: self.node.clone(),
                pid: std::process::id(),
                since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                runtime_dir: self.opts.runtime_dir.display().to_string(),
                instance: id.clone(),
            };
            let lock = Lock::acquire(lp, &me).map_err(|e| e.to_string())?;
            if let Some(prev) = &lock.previous
                && prev.node != self.node
            {
                let reason = format!("taken over from {}", prev.describe());
                tracing::warn!(instance = %id, "{reason}");
                self.run_hooks(idx, "taken-over", State::Starting, State::Starting, &reason);
            }
            self.insts[idx].lock = Some(lock);
        }
        // The empty cgroup of the last run, still watched, if its limits
        // are still the ones wanted; else it goes and a new one is made.
        match self.insts[idx].spare_cgroup.take() {
            // (Removed behind our back? spawn_tracked makes it again.)
            Some((cg, limits)) if limits == spec.limits => {
                self.insts[idx].cgroup = Some(cg);
            }
            Some((cg, _)) => {
                self.unwatch_cgroup(idx);
                cg.remove();
            }
            None => {}
        }
        match &self.cgroot {
            Ok(_) if self.insts[idx].cgroup.is_some() => {}
            Ok(_) => self.make_cgroup(idx)?,
            Err(why) if !spec.limits.is_empty() => {
                return Err(format!(
                    "memory_max/pids_max/cpu_weight/cpu_max need cgroups, which cannot be used here: {why}"
                ));
            }
            Err(_) => {}
        }
        let log_dir = self.log_dir(idx);
        let role = match spec.kind {
            ServiceKind::Simple => ProcRole::Main,
            ServiceKind::Forking => ProcRole::StartScript,
        };
        self.insts[idx].procs.clear();
        self.insts[idx].warnings.clear();
        self.insts[idx].execs_pending = 0;
        for p in &spec.processes {
            for k in 1..=p.count {
                let name = if p.count == 1 {
                    p.name.clone()
                } else {
                    format!("{}.{k}", p.name)
                };
                let mut log = open_log(&log_dir, &name, true);
                if matches!(&log, Err(e) if e.kind() == std::io::ErrorKind::NotFound)
                    && spec.log_dir.is_none()
                {
                    // Our own log dir, not made yet (or removed since).
                    std::fs::create_dir_all(&log_dir)
                        .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
                    log = open_log(&log_dir, &name, true);
                }
                let log = log.map_err(|e| format!("log of {name}: {e}"))?;
                self.spawn_tracked(idx, &name, &p.argv, Output::File(log), role)?;
            }
        }
        if self.insts[idx].execs_pending == 0 {
            // Every exec was confirmed at once (see spawn_tracked).
            self.post(idx, Event::Launched);
        }
        self.dirty.insert(idx);
        Ok(())
    }

    /// Forks one process into the instance (its cgroup, its lock).
    fn spawn_tracked(
        &mut self,
        idx: usize,
        name: &str,
        argv: &[String],
        output: Output,
        role: ProcRole,
    ) -> Result<i32, String> {
        let spec = self.insts[idx].spec.clone();
        let (into_cgroup, cgroups) = match &self.insts[idx].cgroup {
            Some(cg) => match cg.join_dir_and_v1_files() {
                Ok((dir, v1)) => (Some(dir), v1),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // The kept cgroup was removed since the last run.
                    self.unwatch_cgroup(idx);
                    self.make_cgroup(idx)?;
                    let cg = self.insts[idx].cgroup.as_ref().expect("just made");
                    let (dir, v1) = cg
                        .join_dir_and_v1_files()
                        .map_err(|e| format!("opening {}: {e}", cg.dir.display()))?;
                    (Some(dir), v1)
                }
                Err(e) => return Err(format!("opening {}: {e}", cg.dir.display())),
            },
            None => (None, Vec::new()),
        };
        let plan = ExecPlan::new(Spawn {
            argv,
            run: &spec.run,
            output,
            cgroups,
            into_cgroup,
            inherit: self.insts[idx].lock.as_ref().map(Lock::raw_fd),
            setsid: true,
        })
        .map_err(|e| format!("{name}: {e}"))?;
        // Not waiting for the exec: the loop goes on to the next instance
        // while this child execs; `self.errpipes` keeps what it reads.
        let child = plan.spawn_async().map_err(|e| format!("{name}: {e}"))?;
        let pid = child.pid;
        let start_time = procfs::start_time(pid).unwrap_or(0);
        tracing::info!(instance = %spec.id, process = name, pid, "started");
        // A child that has exec'd already (an idle node) is confirmed now,
        // without a trip through epoll; otherwise (a report, or not yet)
        // the loop reads the pipe. Until then the Child is kept: the
        // child runs on its plan and stack.
        let mut first = [0u8; 16];
        let confirmed = match nix::unistd::read(&child.errpipe, &mut first) {
            Ok(0) => Ok(()),
            Ok(n) => Err(first[..n].to_vec()),
            Err(_) => Err(Vec::new()),
        };
        self.children.insert(pid, Role::Proc { idx });
        if let Err(buf) = confirmed {
            let fd = child.errpipe.as_raw_fd();
            self.register(
                child.errpipe.as_fd(),
                tok::ERRPIPE | fd as u64,
                EpollFlags::EPOLLIN,
            );
            self.errpipes.insert(fd, super::ErrPipe { idx, child, buf });
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

    pub fn log_dir(&self, idx: usize) -> PathBuf {
        let spec = &self.insts[idx].spec;
        spec.log_dir
            .clone()
            .unwrap_or_else(|| self.runtime_path("logs").join(&spec.id))
    }

    fn run_stop_command(&mut self, idx: usize) {
        let spec = self.insts[idx].spec.clone();
        let Some(argv) = &spec.stop.command else {
            return;
        };
        let log_dir = self.log_dir(idx);
        let first = spec
            .processes
            .first()
            .map(|p| p.name.as_str())
            .unwrap_or("stop");
        let output = match open_log(&log_dir, first, false) {
            Ok(f) => Output::File(f),
            Err(_) => Output::Null,
        };
        let cgroups = self.insts[idx]
            .cgroup
            .as_ref()
            .and_then(|cg| cg.join_files().ok())
            .unwrap_or_default();
        // The stop command runs inside the instance: the SIGKILL at the
        // deadline covers it too, and nothing it starts outlives the stop.
        let plan = ExecPlan::new(Spawn {
            argv,
            run: &spec.run,
            output,
            cgroups,
            into_cgroup: None,
            inherit: None,
            setsid: true,
        });
        match plan.and_then(|p| p.spawn()) {
            Ok(child) => {
                tracing::info!(instance = %spec.id, pid = child.pid, "running the stop command");
                self.children.insert(child.pid, Role::StopCmd { idx });
                self.insts[idx].stop_cmd = Some(child.pid);
            }
            Err(e) => {
                tracing::warn!(instance = %spec.id, "stop command: {e}; sending the stop signal instead");
                self.post(idx, Event::StopCommandExited { ok: false });
            }
        }
    }

    // ------------------------------------------------------------ processes

    /// Every process of the instance now, with the start time where known.
    pub fn members(&self, idx: usize) -> Vec<(i32, Option<u64>)> {
        let inst = &self.insts[idx];
        if let Some(cg) = &inst.cgroup {
            let mut m: Vec<(i32, Option<u64>)> = cg.pids().into_iter().map(|p| (p, None)).collect();
            // A child joins its cgroup itself, right after fork: until it has,
            // only our own record knows it (and it cannot have forked yet).
            for p in inst.procs.iter().filter(|p| p.child && p.alive()) {
                if !m.iter().any(|(x, _)| *x == p.pid) {
                    m.push((p.pid, Some(p.start_time)));
                }
            }
            if let Some(pid) = inst.stop_cmd
                && !m.iter().any(|(x, _)| *x == pid)
            {
                m.push((pid, None));
            }
            return m;
        }
        let mut seeds: Vec<(i32, u64)> = inst
            .procs
            .iter()
            .filter(|p| p.alive())
            .map(|p| (p.pid, p.start_time))
            .collect();
        if let Some(pid) = inst.stop_cmd
            && let Some(t) = procfs::start_time(pid)
        {
            seeds.push((pid, t));
        }
        if seeds.is_empty() {
            return Vec::new();
        }
        track::session_members(&seeds)
            .into_iter()
            .map(|(p, t)| (p, Some(t)))
            .collect()
    }

    /// Sends `sig` to every member; never to a process that is not one
    /// (see `signal_member`). Returns how many were signalled.
    pub fn signal_all(&mut self, idx: usize, sig: i32) -> usize {
        let members = self.members(idx);
        let mut n = 0;
        for (pid, start) in members {
            if self.signal_member(idx, pid, start, sig) {
                n += 1;
            }
        }
        n
    }

    /// One signal, PID-reuse safe: our own unreaped child cannot have been
    /// replaced (its pid is not free until we reap it); anyone else is
    /// signalled through a pidfd opened and then verified to be a member
    /// (cgroup membership, or the start time seen when it was found).
    fn signal_member(&self, idx: usize, pid: i32, start: Option<u64>, sig: i32) -> bool {
        if self.children.contains_key(&pid) {
            // SAFETY: kill(2) to our unreaped child.
            return unsafe { libc::kill(pid, sig) } == 0;
        }
        let fd = match (&self.insts[idx].cgroup, start) {
            (Some(cg), _) => Pidfd::open_in_cgroup(pid, &cg.rel),
            (None, Some(t)) => Pidfd::open_verified(pid, t),
            (None, None) => return false,
        };
        match fd {
            Ok(Some(fd)) => fd.signal(sig).unwrap_or(false),
            _ => false,
        }
    }

    pub fn kill_all(&mut self, idx: usize) {
        let id = self.insts[idx].id().to_string();
        if let Some(cg) = &self.insts[idx].cgroup
            && let Err(e) = cg.kill()
        {
            tracing::error!(instance = %id, "cgroup.kill: {e}");
        }
        // Also by tracking: covers the fallback and any process that is
        // our child but left the cgroup (a root service can move itself).
        let n = self.signal_all(idx, libc::SIGKILL);
        for p in self.insts[idx]
            .procs
            .iter()
            .filter(|p| p.alive() && p.child)
        {
            // SAFETY: our unreaped child.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        if let Some(pid) = self.insts[idx].stop_cmd {
            // SAFETY: our unreaped child (the stop command).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        tracing::info!(instance = %id, processes = n, "SIGKILL sent");
    }

    /// Posts `Empty` when no process of the instance is left.
    pub fn check_empty(&mut self, idx: usize) {
        let inst = &self.insts[idx];
        // Our children must be reaped first, so their exit status is known
        // before "empty" is (the cgroup may empty before SIGCHLD is read).
        if inst.procs.iter().any(|p| p.child && p.alive()) || inst.stop_cmd.is_some() {
            return;
        }
        if inst
            .procs
            .iter()
            .any(|p| !p.child && p.alive() && !p.pidfd.as_ref().is_none_or(|f| f.exited()))
        {
            return;
        }
        let empty = match &inst.cgroup {
            Some(cg) => !cg.populated(),
            None => self.members(idx).is_empty(),
        };
        if empty {
            self.post(idx, Event::Empty);
        }
    }

    fn cleanup(&mut self, idx: usize) {
        self.waiting_address.remove(&idx);
        if let Some(cg) = self.insts[idx].cgroup.take() {
            if self.insts[idx].removed || self.shutting_down {
                self.unwatch_cgroup(idx);
                cg.remove();
            } else {
                // Kept (empty, watched) for the next start.
                let limits = self.insts[idx].spec.limits.clone();
                self.insts[idx].spare_cgroup = Some((cg, limits));
            }
        } else {
            self.unwatch_cgroup(idx);
        }
        let inst = &mut self.insts[idx];
        // Closing our fd releases the lock: every other holder (the
        // instance's processes) is gone.
        inst.lock = None;
        for p in inst.procs.iter_mut().filter(|p| p.pidfd.is_some()) {
            if let Some(fd) = p.pidfd.take() {
                self.pidfds.remove(&fd.as_raw_fd());
                let _ = self.epoll.delete(&fd);
            }
        }
        if inst.owned_address {
            inst.owned_address = false;
            if let (Some(addr), AddressMode::Own { interface, prefix }) =
                (inst.spec.address, &inst.spec.address_mode)
            {
                match address::remove(addr, *prefix, interface) {
                    Ok(()) => {
                        tracing::info!(instance = %inst.spec.id, "removed {addr}/{prefix} from {interface}")
                    }
                    Err(e) => tracing::error!(instance = %inst.spec.id, "{e}"),
                }
            }
        }
        self.dirty.insert(idx);
    }

    /// Creates the instance's cgroup with its limits, and watches it.
    fn make_cgroup(&mut self, idx: usize) -> Result<(), String> {
        let root = self.cgroot.as_ref().map_err(Clone::clone)?;
        let spec = &self.insts[idx].spec;
        let cg = root
            .create(&spec.id, &spec.limits)
            .map_err(|e| format!("{e}"))?;
        self.insts[idx].cgroup = Some(cg);
        self.watch_cgroup(idx);
        Ok(())
    }

    /// Removes the empty cgroup kept from the instance's last run.
    pub(super) fn release_spare_cgroup(&mut self, idx: usize) {
        if let Some((cg, _)) = self.insts[idx].spare_cgroup.take() {
            self.unwatch_cgroup(idx);
            cg.remove();
        }
    }

    // ------------------------------------------------------------ transitions

    fn on_transition(&mut self, idx: usize, from: State, to: State, reason: String, now: Instant) {
        let id = self.insts[idx].id().to_string();
        self.insts[idx].since_wall = SystemTime::now();
        if to == State::Failed {
            tracing::error!(instance = %id, from = from.as_str(), to = to.as_str(), "{reason}");
        } else {
            tracing::info!(instance = %id, from = from.as_str(), to = to.as_str(), "{reason}");
        }
        self.dirty.insert(idx);
        match to {
            State::Running => {
                self.insts[idx].healthy = None;
                if self.insts[idx].owned_address {
                    // Again now that the service answers on it.
                    self.announce_address(idx);
                }
                let spec = &self.insts[idx].spec;
                if spec.address.is_some() && spec.port.is_some() {
                    // Audited (bind audit) with everything else that became
                    // ready in this loop iteration, then answered.
                    self.ready_queue.push(idx);
                } else {
                    self.ready_confirmed(idx, now);
                }
            }
            State::Failed => {
                let msg = self.failure_message(idx, &reason);
                self.answer_waiters(idx, WaitFor::Start, 1, msg);
                if !self.insts[idx].procs.iter().any(|p| p.alive()) {
                    self.answer_waiters(
                        idx,
                        WaitFor::Stop,
                        0,
                        format!("{id} is stopped (failed: {reason})"),
                    );
                }
            }
            State::Stopped => {
                // Within one step the table may stop and go on to a queued
                // start (restart): then the start waiters keep waiting.
                if self.insts[idx].state() == State::Stopped {
                    self.answer_waiters(
                        idx,
                        WaitFor::Start,
                        1,
                        format!("start of {id} cancelled: {reason}"),
                    );
                }
                self.answer_waiters(idx, WaitFor::Stop, 0, format!("{id} is stopped"));
            }
            State::Stopping if from == State::Stopping => {
                // SIGKILL did not finish the job: tell whoever waits.
                let left: Vec<String> = self
                    .members(idx)
                    .iter()
                    .map(|(p, _)| p.to_string())
                    .collect();
                self.answer_waiters(
                    idx,
                    WaitFor::Stop,
                    1,
                    format!(
                        "{id}: processes {} did not exit after SIGKILL (uninterruptible I/O?)",
                        left.join(" ")
                    ),
                );
            }
            _ => {}
        }
        if !matches!(to, State::Running) {
            self.answer_monitors(idx);
        }
        if matches!(to, State::Stopped | State::Failed) && self.insts[idx].next_spec.is_some() {
            self.insts[idx].apply_next_spec();
            tracing::info!(instance = %id, "new definition from the last reload now in use");
        }
        if from != to {
            let event = match to {
                State::WaitingAddress | State::Starting => "starting",
                State::Running => "ready",
                State::Stopping => "stopping",
                State::Stopped => "stopped",
                State::Restarting => "restarting",
                State::Failed => "failed",
            };
            self.run_hooks(idx, event, from, to, &reason);
        }
        self.batch_transition(idx);
    }

    fn answer_waiters(&mut self, idx: usize, what: WaitFor, code: i32, msg: String) {
        let waiting: Vec<u64> = self.insts[idx]
            .waiters
            .iter()
            .filter(|(_, w)| *w == what)
            .map(|(c, _)| *c)
            .collect();
        self.insts[idx].waiters.retain(|(_, w)| *w != what);
        for c in waiting {
            self.reply_done(c, code, msg.clone(), None);
        }
    }

    fn progress_waiters(&mut self, idx: usize, msg: &str) {
        let id = self.insts[idx].id().to_string();
        let state = self.insts[idx].state().as_str();
        let waiting: Vec<u64> = self.insts[idx].waiters.iter().map(|(c, _)| *c).collect();
        for c in waiting {
            self.progress(c, &id, state, msg);
        }
    }

    fn ready_message(&self, idx: usize) -> String {
        let inst = &self.insts[idx];
        let pids: Vec<String> = inst
            .procs
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.pid.to_string())
            .collect();
        let how = match &inst.spec.ready.check {
            Some(c) => format!("ready: {}", c.describe()),
            None => "no readiness check".into(),
        };
        let pids = if pids.is_empty() {
            let m = self.members(idx);
            m.iter()
                .map(|(p, _)| p.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            pids.join(" ")
        };
        format!("{} is running (pid {pids}; {how})", inst.id())
    }

    /// A start failure as the operator needs it: the reason, the last
    /// probe result, and the end of each process log.
    pub fn failure_message(&self, idx: usize, reason: &str) -> String {
        let inst = &self.insts[idx];
        let mut msg = format!("{} failed to start: {reason}", inst.id());
        if let Some(p) = &inst.ready_probe
            && let Some(last) = &p.last
            && !last.ok
        {
            msg.push_str(&format!(
                "\nlast readiness check: {}: {}",
                p.check.describe(),
                last.message
            ));
        }
        let dir = self.log_dir(idx);
        for p in &inst.spec.processes {
            let name = if p.count == 1 {
                p.name.clone()
            } else {
                format!("{}.1", p.name)
            };
            let path = dir.join(format!("{name}.log"));
            let tail: Vec<String> = crate::util::tail(&path, 8)
                .into_iter()
                .map(|l| format!("  {l}"))
                .collect();
            let tail = tail.join("\n");
            if !tail.is_empty() {
                msg.push_str(&format!("\nlast lines of {}:\n{}", path.display(), tail));
            }
        }
        msg
    }

    /// Running, audited: health checks begin, the start is answered.
    fn ready_confirmed(&mut self, idx: usize, now: Instant) {
        self.schedule_health(idx, now);
        let msg = self.ready_message(idx);
        self.answer_waiters(idx, WaitFor::Start, 0, msg);
    }

    /// The bind audit of every instance that became ready in this loop
    /// iteration, with one kernel query: a process listening on the
    /// wildcard address for its instance's port would block a co-resident
    /// copy ("port 94: In use"). A warning; with `strict_bind`, a failure.
    pub(super) fn audit_ready(&mut self) {
        if self.ready_queue.is_empty() {
            return;
        }
        // The kernel walks every listener of the node for one query: in a
        // burst (500 instances starting) the ones that become ready while
        // the gap runs share the next query (see AUDIT_GAP_MIN).
        let now = Instant::now();
        if let Some(last) = self.last_audit
            && now < last + self.audit_gap
        {
            if !self.audit_scheduled {
                self.audit_scheduled = true;
                self.timers
                    .add(last + self.audit_gap, super::timers::Key::Audit);
            }
            return;
        }
        self.last_audit = Some(now);
        let queue = std::mem::take(&mut self.ready_queue);
        let wildcards = crate::isolation::audit::wildcard_listeners_by_port();
        self.audit_gap = (now.elapsed() * 10).clamp(AUDIT_GAP_MIN, AUDIT_GAP_MAX);
        for idx in queue {
            if self.insts[idx].state() != State::Running {
                continue;
            }
            match self.bind_audit(idx, &wildcards) {
                Some(violation) => self.post(idx, Event::Violation(violation)),
                None => self.ready_confirmed(idx, now),
            }
        }
    }

    fn bind_audit(
        &mut self,
        idx: usize,
        wildcards: &std::collections::BTreeMap<u16, Vec<(u64, String)>>,
    ) -> Option<String> {
        let spec = self.insts[idx].spec.clone();
        let port = spec.port?;
        let suspects = wildcards.get(&port)?;
        let members: Vec<i32> = self.members(idx).into_iter().map(|(p, _)| p).collect();
        let found = crate::isolation::audit::owners(&members, suspects);
        if found.is_empty() {
            return None;
        }
        let what: Vec<String> = found
            .iter()
            .map(|(pid, comm, a)| format!("{comm} (pid {pid}) on {a}"))
            .collect();
        let warning = format!(
            "listens on every address for port {port}: {} — a second copy on this node would fail with \"address in use\"; make the service bind {}",
            what.join(", "),
            spec.address.map(|a| a.to_string()).unwrap_or_default()
        );
        tracing::warn!(instance = %spec.id, "{warning}");
        self.insts[idx].warnings.push(warning.clone());
        spec.strict_bind
            .then(|| format!("strict_bind: a process {warning}"))
    }
}

/// Opens `<dir>/<name>.log` for appending; `rotate` keeps the previous one
/// as `<name>.log.1` first (contract: one old log per start).
pub fn open_log(dir: &Path, name: &str, rotate: bool) -> std::io::Result<OwnedFd> {
    let path = dir.join(format!("{name}.log"));
    if rotate {
        match std::fs::rename(&path, dir.join(format!("{name}.log.1"))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)?;
    Ok(OwnedFd::from(f))
}
