//! Performing the table's actions: launch, signal, kill, clean up, and
//! what a transition means to the outside (log, state file, hooks,
//! waiting clients).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::fsm::{Action, Answer, Event, State};
use super::instance::WaitFor;
use super::worker::JobId;
use super::{Daemon, Outcome};
use crate::isolation::address;
use crate::model::AddressMode;
use crate::process::pidfd::Pidfd;
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
        if let Some(cg) = &mut self.insts[idx].cgroup
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
            if self.insts[idx].removed || self.shutting_down || cg.killed {
                // A killed cgroup is never reused (InstanceCgroup::killed);
                // should the rmdir fail, the next start's create retries.
                self.unwatch_cgroup(idx);
                self.remove_cgroup(cg);
            } else {
                // Kept (empty, watched) for the next start.
                let limits = self.insts[idx].spec.limits.clone();
                self.insts[idx].spare_cgroup = Some((cg, limits));
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
                self.pidfds.remove(&fd.as_raw_fd());
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
    // ------------------------------------------------------------ transitions

    /// Log, persist, and tell whoever watches states (monitor, up/down).
    fn on_transition(&mut self, idx: usize, from: State, to: State, reason: &str) {
        let id = self.insts[idx].id().to_string();
        self.insts[idx].since_wall = SystemTime::now();
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

    /// Words what the table decided to tell the waiting clients.
    fn answer(&mut self, idx: usize, a: Answer, now: Instant) {
        let id = self.insts[idx].id().to_string();
        match a {
            Answer::Started => {
                let msg = self.ready_message(idx);
                self.answer_waiters(idx, WaitFor::Start, 0, msg);
            }
            Answer::StartFailed(reason) => self.answer_start_failure(idx, &reason, now),
            Answer::StartCancelled(reason) => self.answer_waiters(
                idx,
                WaitFor::Start,
                1,
                format!("start of {id} cancelled: {reason}"),
            ),
            Answer::Stopped => {
                self.answer_waiters(idx, WaitFor::Stop, 0, format!("{id} is stopped"))
            }
            Answer::StoppedFailed(reason) => self.answer_waiters(
                idx,
                WaitFor::Stop,
                0,
                format!("{id} is stopped (failed: {reason})"),
            ),
            Answer::StopStuck => {
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
        }
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
    /// probe result, and the end of each process log. The logs are often on
    /// the instance's storage, which may be what failed: they are read on
    /// the worker and the answer waits for them at most [`TAIL_WAIT`].
    fn answer_start_failure(&mut self, idx: usize, reason: &str, now: Instant) {
        let inst = &mut self.insts[idx];
        let conns: Vec<u64> = inst
            .waiters
            .iter()
            .filter(|(_, w)| *w == WaitFor::Start)
            .map(|(c, _)| *c)
            .collect();
        inst.waiters.retain(|(_, w)| *w != WaitFor::Start);
        if conns.is_empty() {
            return;
        }
        let mut base = format!("{} failed to start: {reason}", inst.id());
        if let Some(p) = &inst.ready_probe
            && let Some(last) = &p.last
            && !last.ok
        {
            base.push_str(&format!(
                "\nlast readiness check: {}: {}",
                p.check.describe(),
                last.message
            ));
        }
        // A check still stuck on the storage, or an earlier read of these
        // logs: another read would only hang beside it.
        if inst.preparing.is_some() || inst.tail_job.is_some() {
            for c in conns {
                self.reply_done(c, 1, base.clone(), None);
            }
            return;
        }
        let dir = self.log_dir(idx);
        let logs: Vec<PathBuf> = self.insts[idx]
            .spec
            .processes
            .iter()
            .map(|p| {
                let name = if p.count == 1 {
                    p.name.clone()
                } else {
                    format!("{}.1", p.name)
                };
                dir.join(format!("{name}.log"))
            })
            .collect();
        let (job, _) = self.worker.submit(move |p| {
            p.set("the process logs");
            Outcome::Tails {
                idx,
                text: log_tails(&logs),
            }
        });
        let inst = &mut self.insts[idx];
        inst.tail_job = Some(job);
        inst.failure_replies.push(FailureReply {
            job,
            message: base,
            conns,
            dir,
        });
        self.timers
            .add(now + TAIL_WAIT, super::timers::Key::Tails { idx, job });
    }

    /// The tails of a start failure's logs came back from the worker.
    pub(super) fn on_tails(&mut self, idx: usize, job: JobId, text: String) {
        let inst = &mut self.insts[idx];
        if inst.tail_job == Some(job) {
            inst.tail_job = None;
        }
        if let Some(pos) = inst.failure_replies.iter().position(|r| r.job == job) {
            let r = inst.failure_replies.remove(pos);
            for c in r.conns {
                self.reply_done(c, 1, format!("{}{text}", r.message), None);
            }
        }
    }

    /// The logs did not answer in time: the failure goes out without them.
    pub(super) fn tails_overdue(&mut self, idx: usize, job: JobId) {
        let inst = &mut self.insts[idx];
        if let Some(pos) = inst.failure_replies.iter().position(|r| r.job == job) {
            let r = inst.failure_replies.remove(pos);
            let msg = format!(
                "{}\n(the process logs in {} did not answer within {})",
                r.message,
                r.dir.display(),
                humantime::format_duration(TAIL_WAIT)
            );
            for c in r.conns {
                self.reply_done(c, 1, msg.clone(), None);
            }
        }
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

/// How long a start failure's answer waits for the process logs' tails.
const TAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A start failure waiting for its log tails (see `answer_start_failure`).
#[derive(Debug)]
pub struct FailureReply {
    pub job: JobId,
    message: String,
    conns: Vec<u64>,
    dir: PathBuf,
}

/// "\nlast lines of LOG:\n  …" for each log that has any; on a worker.
fn log_tails(logs: &[PathBuf]) -> String {
    let mut out = String::new();
    for path in logs {
        let tail: Vec<String> = crate::util::tail(path, 8)
            .into_iter()
            .map(|l| format!("  {l}"))
            .collect();
        if !tail.is_empty() {
            out.push_str(&format!(
                "\nlast lines of {}:\n{}",
                path.display(),
                tail.join("\n")
            ));
        }
    }
    out
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
