//! Performing the table's actions: launch, signal, kill, clean up, and
//! what a transition means to the outside (log, state file, hooks,
//! waiting clients).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Instant, SystemTime};

use super::Daemon;
use super::fsm::{Action, Event, State};
use super::host::Member;
use crate::model::AddressMode;

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
                // A stopped (SIGSTOP) process acts on the signal only once
                // continued (as systemd's SendSIGCONT does); SIGCONT is
                // harmless to a running one.
                self.signal_all(idx, libc::SIGCONT);
                tracing::info!(instance = %self.insts[idx].id(), signal = sig, processes = n, "signalled");
                self.check_empty(idx);
            }
            Action::KillAll => {
                self.kill_all(idx);
                self.check_empty(idx);
            }
            Action::Deadline(at) => self.deadline(idx, at),
            Action::Transition { from, to, reason } => self.on_transition(idx, from, to, &reason),
            Action::Hook {
                event,
                from,
                to,
                reason,
            } => self.run_hooks(idx, event, from, to, &reason),
            Action::Answer(a) => self.answer(idx, a, now),
            Action::Audit => self.ready_queue.push(idx),
            Action::Announce => self.announce_address(idx),
            Action::StartHealth => {
                self.insts[idx].healthy = None;
                self.schedule_health(idx, now);
            }
            Action::Cleanup => self.cleanup(idx),
            Action::ApplyNextSpec => {
                if self.insts[idx].next_spec.is_some() {
                    self.insts[idx].apply_next_spec();
                    tracing::info!(instance = %self.insts[idx].id(), "new definition from the last reload now in use");
                }
            }
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
            match self.host.add_address(addr, *prefix, interface) {
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
        match self.host.is_local(addr) {
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
        let spec = self.insts[idx].spec.clone();
        let (Some(addr), AddressMode::Own { interface, .. }) = (spec.address, &spec.address_mode)
        else {
            return;
        };
        match self.host.announce(addr, interface) {
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
        match self.host.is_local(addr) {
            Ok(true) => {
                self.waiting_address.remove(&idx);
                self.post(idx, Event::AddressReady);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(instance = %self.insts[idx].id(), "checking {addr}: {e}"),
        }
    }

    // ------------------------------------------------------------ processes

    /// Every process of the instance now, with the start time where known.
    pub fn members(&self, idx: usize) -> Vec<(i32, Option<u64>)> {
        let inst = &self.insts[idx];
        if let Some(cg) = &inst.cgroup {
            let mut m: Vec<(i32, Option<u64>)> = self
                .host
                .cgroup_pids(cg)
                .into_iter()
                .map(|p| (p, None))
                .collect();
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
            && let Some(t) = self.host.start_time(pid)
        {
            seeds.push((pid, t));
        }
        if seeds.is_empty() {
            return Vec::new();
        }
        self.host
            .session_members(&seeds)
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
    fn signal_member(&mut self, idx: usize, pid: i32, start: Option<u64>, sig: i32) -> bool {
        if self.reg.is_child(pid) {
            return self.host.signal_child(pid, sig);
        }
        let rel = self.insts[idx].cgroup.as_ref().map(|cg| cg.rel());
        let member = match (&rel, start) {
            (Some(rel), _) => Member::InCgroup(rel),
            (None, Some(t)) => Member::Started(t),
            (None, None) => return false,
        };
        self.host.signal_member(pid, member, sig)
    }

    pub fn kill_all(&mut self, idx: usize) {
        let id = self.insts[idx].id().to_string();
        if let Some(cg) = &mut self.insts[idx].cgroup
            && let Err(e) = self.host.cgroup_kill(cg)
        {
            tracing::error!(instance = %id, "cgroup.kill: {e}");
        }
        // Also by tracking: covers the fallback and any process that is
        // our child but left the cgroup (a root service can move itself).
        let members = self.members(idx);
        let mut n = 0;
        for &(pid, start) in &members {
            if self.signal_member(idx, pid, start, libc::SIGKILL) {
                n += 1;
            }
        }
        let children: Vec<i32> = self.insts[idx]
            .procs
            .iter()
            .filter(|p| p.alive() && p.child)
            .map(|p| p.pid)
            .chain(self.insts[idx].stop_cmd)
            .filter(|pid| !members.iter().any(|(m, _)| m == pid))
            .collect();
        for pid in children {
            // Our unreaped child (a process or the stop command).
            self.host.signal_child(pid, libc::SIGKILL);
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
            Some(cg) => !self.host.cgroup_populated(cg),
            None => self.members(idx).is_empty(),
        };
        if empty {
            self.post(idx, Event::Empty);
        }
    }

    fn cleanup(&mut self, idx: usize) {
        self.waiting_address.remove(&idx);
        if let Some(cg) = self.insts[idx].cgroup.take() {
            if self.insts[idx].removed || self.shutting_down || cg.killed {
                // A killed cgroup is never reused (InstanceCgroup::killed);
                // should the rmdir fail, the next start's create retries.
                self.unwatch_cgroup(idx);
                self.remove_cgroup(cg);
            } else {
                // Kept (empty, watched) for the next start.
                let limits = self.insts[idx].spec.limits.clone();
                self.insts[idx].spare_cgroup = Some(Box::new((cg, limits)));
            }
        } else {
            self.unwatch_cgroup(idx);
        }
        // Closing our fd releases the lock: every other holder (the
        // instance's processes) is gone. On the worker: the close of a
        // file on the instance's storage waits for it.
        // Kept apart from the other releases: a start that follows in the
        // same iteration (a restart) closes it first, in its own job, so
        // its new lock is never refused by our old one.
        if let Some(lock) = self.insts[idx].lock.take() {
            self.insts[idx].old_lock = Some(lock);
            self.old_locks.push(idx);
        }
        let inst = &mut self.insts[idx];
        for p in inst.procs.iter_mut().filter(|p| p.pidfd.is_some()) {
            if let Some(fd) = p.pidfd.take() {
                self.reg.forget_fd(fd.as_raw_fd());
                let _ = self.epoll.delete(&fd);
            }
        }
        // The instance is empty: whatever its records say, none of its
        // processes lives (an adopted one whose pidfd event had not been
        // read yet would otherwise count as alive for ever, and a daemon
        // waiting for quiet before it exits would never exit).
        for p in inst.procs.iter_mut().filter(|p| p.exit.is_none()) {
            p.exit = Some("gone (no process of the instance is left)".into());
        }
        if inst.owned_address {
            inst.owned_address = false;
            let spec = inst.spec.clone();
            if let (Some(addr), AddressMode::Own { interface, prefix }) =
                (spec.address, &spec.address_mode)
            {
                match self.host.remove_address(addr, *prefix, interface) {
                    Ok(()) => {
                        tracing::info!(instance = %spec.id, "removed {addr}/{prefix} from {interface}")
                    }
                    Err(e) => tracing::error!(instance = %spec.id, "{e}"),
                }
            }
        }
        self.dirty.insert(idx);
    }
    // ------------------------------------------------------------ transitions

    /// Log, persist, and tell whoever watches states (monitor, up/down).
    fn on_transition(&mut self, idx: usize, from: State, to: State, reason: &str) {
        let id = self.insts[idx].id().to_string();
        // The wall clock's time of the state's entry, as the table dated it
        // (an adopted running instance's is its record's, not now).
        let ago = self
            .host
            .now()
            .saturating_duration_since(self.insts[idx].fsm.since);
        let now = SystemTime::now();
        self.insts[idx].since_wall = now.checked_sub(ago).unwrap_or(now);
        if let Some(t) = self.timing_transition(idx, from, to) {
            super::timing::log_ready(&id, from, reason, &t);
        } else if to == State::Failed {
            tracing::error!(instance = %id, from = from.as_str(), to = to.as_str(), "{reason}");
        } else {
            tracing::info!(instance = %id, from = from.as_str(), to = to.as_str(), "{reason}");
        }
        self.dirty.insert(idx);
        if !matches!(to, State::Running) {
            self.answer_monitors(idx);
        }
        self.batch_transition(idx);
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
        let now = self.host.now();
        let t0 = Instant::now();
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
        self.audit_gap = (t0.elapsed() * 10).clamp(AUDIT_GAP_MIN, AUDIT_GAP_MAX);
        for idx in queue {
            if self.insts[idx].state() != State::Running {
                continue;
            }
            match self.bind_audit(idx, &wildcards) {
                Some(violation) => self.post(idx, Event::Violation(violation)),
                None => self.post(idx, Event::Audited),
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
