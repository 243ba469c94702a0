//! The event loop: one blocking `epoll_wait` (with the nearest timer as
//! its timeout), the dispatch of what arrived by its token, the timers,
//! and the watches (cgroup.events, rtnetlink) that feed the table events.
//! [`Daemon::turn`] is one iteration; `main_loop` repeats it.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::epoll::{EpollEvent, EpollFlags, EpollTimeout};

use super::fsm::Event;
use super::setup::sd_notify;
use super::{Daemon, Outcome, batch, conn, fsm, timers, tok};

impl Daemon {
    pub fn register(&self, fd: impl AsFd, token: u64, flags: EpollFlags) {
        if let Err(e) = self.epoll.add(fd, EpollEvent::new(flags, token)) {
            tracing::error!("epoll_ctl add: {e}");
        }
    }

    pub fn reregister(&self, fd: impl AsFd, token: u64, flags: EpollFlags) {
        let mut ev = EpollEvent::new(flags, token);
        if let Err(e) = self.epoll.modify(fd, &mut ev) {
            tracing::error!("epoll_ctl mod: {e}");
        }
    }

    pub fn deregister(&self, fd: impl AsFd) {
        let _ = self.epoll.delete(fd);
    }

    /// Queues an event for an instance; `drain` feeds it to the table.
    pub fn post(&mut self, idx: usize, ev: Event) {
        self.queue.push_back((idx, ev));
    }

    /// Queues `ev` ahead of everything else: the instance's next step is
    /// taken before other instances' queued events (in `up`, each instance
    /// is launched right after its address check, not after all 500 checks).
    pub fn post_next(&mut self, idx: usize, ev: Event) {
        self.queue.push_front((idx, ev));
    }

    pub(super) fn main_loop(&mut self) -> io::Result<()> {
        let mut events = vec![EpollEvent::empty(); 256];
        while !self.turn(&mut events, None)? {}
        Ok(())
    }

    /// One turn of the event loop: queued events through the table, then
    /// wait (for the next timer at most, and `max_wait` if given), dispatch
    /// what arrived, fire due timers, send replies and state. True when the
    /// daemon is done (shutting down and every instance quiet).
    pub(super) fn turn(
        &mut self,
        events: &mut [EpollEvent],
        max_wait: Option<std::time::Duration>,
    ) -> io::Result<bool> {
        self.drain();
        if self.shutting_down && self.all_quiet() {
            self.shutdown_cleanup();
            tracing::info!("every instance stopped; daemon exits");
            return Ok(true);
        }
        self.purge_stale_timers();
        let now = self.host.now();
        let wait = match (self.timers.next_deadline(), max_wait) {
            (None, None) => None,
            (Some(at), m) => Some(
                at.saturating_duration_since(now)
                    .min(m.unwrap_or(std::time::Duration::MAX)),
            ),
            (None, Some(m)) => Some(m),
        };
        let timeout = match wait {
            None => EpollTimeout::NONE,
            // Round up: waking a millisecond early would spin.
            Some(d) => {
                EpollTimeout::try_from(d.as_micros().div_ceil(1000).min(i32::MAX as u128) as u64)
                    .unwrap_or(EpollTimeout::MAX)
            }
        };
        let n = match self.epoll.wait(events, timeout) {
            Ok(n) => n,
            Err(nix::Error::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            self.dispatch(ev.data(), ev.events());
            self.drain();
        }
        self.fire_timers(self.host.now());
        // Before the replies go out: `cohost shutdown` returns once the
        // daemon has cleaned up (cgroups, socket), not before.
        if self.shutting_down && self.all_quiet() {
            self.shutdown_cleanup();
            tracing::info!("every instance stopped; daemon exits");
            return Ok(true);
        }
        self.flush_replies();
        // Last: a list's part waits for every other answer of the turn.
        for id in std::mem::take(&mut self.list_turn) {
            self.go_on_listing(id);
        }
        self.flush_releases();
        self.flush_state();
        Ok(false)
    }

    pub(super) fn dispatch(&mut self, token: u64, flags: EpollFlags) {
        match token & tok::KIND {
            tok::SIGNAL => self.on_signals(),
            tok::LISTEN => self.accept_all(token & !tok::KIND == 1),
            tok::INOTIFY => self.on_inotify(),
            tok::NETLINK => self.on_address_change(),
            tok::CONN => self.on_conn(token & !tok::KIND, flags),
            tok::ERRPIPE => self.on_errpipe((token & !tok::KIND) as RawFd),
            tok::PROBE => self.on_probe_fd((token & !tok::KIND) as RawFd),
            tok::PIDFD => self.on_pidfd((token & !tok::KIND) as RawFd),
            tok::WORKER => self.on_worker(),
            _ => {}
        }
    }

    pub(super) fn on_signals(&mut self) {
        loop {
            match self.sigfd.read_signal() {
                Ok(Some(si)) => match si.ssi_signo as i32 {
                    libc::SIGCHLD => self.reap(),
                    libc::SIGHUP => {
                        tracing::info!("SIGHUP: rereading the instances file");
                        if let Err(e) = self.reload() {
                            tracing::error!("reload refused: {e}");
                        }
                    }
                    s @ (libc::SIGTERM | libc::SIGINT) => {
                        if self.shutting_down {
                            tracing::warn!(
                                signal = s,
                                "second stop signal: killing every instance now"
                            );
                            for idx in 0..self.insts.len() {
                                self.post(idx, Event::Kill);
                            }
                        } else {
                            tracing::info!(signal = s, "stopping every instance, then exiting");
                            self.begin_shutdown(None);
                        }
                    }
                    _ => {}
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("reading signalfd: {e}");
                    break;
                }
            }
        }
    }

    pub fn begin_shutdown(&mut self, conn: Option<u64>) {
        self.shutting_down = true;
        sd_notify("STOPPING=1\nSTATUS=stopping every instance");
        let all: Vec<String> = self
            .insts
            .iter()
            .filter(|i| i.state().may_have_processes() || i.state() != fsm::State::Stopped)
            .map(|i| i.id().to_string())
            .collect();
        self.start_batch(conn, batch::Op::Down, all);
    }

    pub(super) fn all_quiet(&self) -> bool {
        self.insts.iter().all(|i| {
            matches!(i.state(), fsm::State::Stopped | fsm::State::Failed)
                && i.procs.iter().all(|p| !p.alive())
        }) && self.batches.is_empty()
            && self.conns.values().all(|c| c.idle_or_done())
    }

    pub(super) fn shutdown_cleanup(&mut self) {
        // Nothing on storage is closed by the exiting thread itself.
        self.flush_releases();
        self.flush_state();
        self.finish_state();
        for idx in 0..self.insts.len() {
            self.release_spare_cgroup(idx);
        }
        if let Ok(root) = &self.cgroot {
            root.remove_base();
        }
        let _ = self.rundir.dir.remove(crate::control::client::SOCKET_NAME);
        let _ = self
            .rundir
            .dir
            .remove(crate::control::client::READERS_SOCKET_NAME);
        let _ = self.rundir.dir.remove("daemon.pid");
        // Last: a waiting `cohost shutdown` learns that all of the above is done.
        self.flush_conns_at_exit();
    }

    /// Runs queued events through the table, and the resulting actions.
    pub(super) fn drain(&mut self) {
        loop {
            self.drain_events();
            let waiting = self.ready_queue.len();
            self.audit_ready();
            // Done when nothing was audited (none waiting, or deferred).
            if waiting == 0 || self.ready_queue.len() == waiting {
                break;
            }
        }
    }

    pub(super) fn drain_events(&mut self) {
        while let Some((idx, ev)) = self.queue.pop_front() {
            let policy = self.insts[idx].policy();
            let now = self.host.now();
            tracing::debug!(instance = %self.insts[idx].id(), state = self.insts[idx].state().as_str(), event = ?ev, "event");
            let actions = self.insts[idx].fsm.step(ev, now, &policy);
            for a in actions {
                self.execute(idx, a, now);
            }
        }
    }

    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(key) = self.timers.pop_due(now) {
            self.on_timer(key, now);
            self.drain();
        }
    }

    /// Whether a timer still means something (cancellation is lazy: a key
    /// carries the epoch it was set for).
    pub(super) fn timer_live(&self, key: &timers::Key) -> bool {
        match *key {
            timers::Key::Deadline { idx, epoch } => self.insts[idx].deadline_epoch == epoch,
            timers::Key::Probe { idx, slot, epoch } => {
                let inst = &self.insts[idx];
                let p = if slot == 0 {
                    inst.ready_probe.as_deref()
                } else {
                    inst.health.get(slot - 1)
                };
                p.is_some_and(|p| p.epoch == epoch)
            }
            timers::Key::Conn { id } => self
                .conns
                .get(&id)
                .is_some_and(|c| c.phase == conn::Phase::Reading),
            timers::Key::Hook { pid } => self.reg.is_child(pid),
            timers::Key::Audit => self.audit_scheduled,
            timers::Key::UsageRead => self.usage_scheduled,
            timers::Key::Tails { idx, job } => {
                self.insts[idx].failure_replies.iter().any(|r| r.job == job)
            }
        }
    }

    /// Zero wake-ups when idle: a cancelled timer must not wake the loop.
    pub(super) fn purge_stale_timers(&mut self) {
        let mut timers = std::mem::take(&mut self.timers);
        timers.purge_head(|k| self.timer_live(k));
        self.timers = timers;
    }

    pub(super) fn on_timer(&mut self, key: timers::Key, now: Instant) {
        match key {
            timers::Key::Deadline { idx, epoch } => {
                if self.insts[idx].deadline_epoch == epoch {
                    // A prepare still out: what it is stuck on.
                    let stalled = self.insts[idx].preparing.as_ref().map(|p| p.progress.get());
                    self.post(idx, Event::Timeout { stalled });
                }
            }
            timers::Key::Probe { idx, slot, epoch } => self.on_probe_timer(idx, slot, epoch, now),
            timers::Key::Conn { id } => self.on_conn_timeout(id),
            timers::Key::Hook { pid } => self.kill_group_if_child(pid),
            timers::Key::Tails { idx, job } => self.tails_overdue(idx, job),
            timers::Key::UsageRead => {
                self.usage_scheduled = false;
                if !self.list_waiters.is_empty() {
                    self.want_usage_read();
                }
            }
            timers::Key::Audit => {
                self.audit_scheduled = false;
                self.last_audit = None;
                self.audit_ready();
            }
        }
    }

    /// SIGKILL to the process group of our own unreaped child `pid` (a
    /// hook or probe command that overran). The group id cannot have been
    /// reused: its leader is our unreaped child.
    pub fn kill_group_if_child(&mut self, pid: i32) {
        if self.reg.is_child(pid) {
            // A group whose leader we have not reaped.
            self.host.signal_child(-pid, libc::SIGKILL);
        }
    }

    pub(super) fn on_worker(&mut self) {
        for (job, out) in self.worker.take() {
            match out {
                Outcome::Prepared { idx, base, result } => {
                    self.on_prepared(idx, job, base, *result)
                }
                Outcome::FileChecked {
                    idx,
                    slot,
                    epoch,
                    ok,
                    message,
                } => self.on_file_checked(idx, slot, epoch, ok, message),
                Outcome::Tails { idx, text } => self.on_tails(idx, job, text),
                Outcome::LogSpace { idx, warning } => self.on_log_space(idx, job, warning),
                Outcome::LockBack { idx, lock } => self.on_lock_back(idx, lock),
                Outcome::Usage { read } => self.on_usage_read(job, read),
                Outcome::Released => {}
            }
        }
    }

    pub(super) fn on_inotify(&mut self) {
        let events = match self.inotify.read_events() {
            Ok(e) => e,
            Err(_) => return,
        };
        let mut touched = BTreeSet::new();
        for ev in events {
            if let Some(idx) = self.reg.watched(ev.wd) {
                touched.insert(idx);
            }
        }
        for idx in touched {
            // A kept (spare) cgroup of a stopped instance says nothing.
            if self.insts[idx].cgroup.is_some() {
                self.check_empty(idx);
            }
        }
    }

    pub fn watch_cgroup(&mut self, idx: usize) {
        let Some(cg) = &self.insts[idx].cgroup else {
            return;
        };
        match self.inotify.add_watch(
            &cg.events_file(),
            nix::sys::inotify::AddWatchFlags::IN_MODIFY,
        ) {
            Ok(wd) => {
                self.reg.watch(wd, idx);
                self.insts[idx].cg_watch = Some(wd);
            }
            Err(e) => {
                tracing::warn!(instance = %self.insts[idx].id(), "inotify on {}: {e}", cg.events_file().display())
            }
        }
    }

    pub fn unwatch_cgroup(&mut self, idx: usize) {
        if let Some(wd) = self.insts[idx].cg_watch.take() {
            let _ = self.inotify.rm_watch(wd);
            self.reg.unwatch(wd);
        }
    }

    /// Opens the rtnetlink watch on first need.
    pub fn ensure_address_watch(&mut self) {
        if self.netlink.is_some() {
            return;
        }
        match crate::isolation::address::watch_socket() {
            Ok(fd) => {
                self.register(&fd, tok::NETLINK, EpollFlags::EPOLLIN);
                self.netlink = Some(fd);
            }
            Err(e) => tracing::error!(
                "cannot watch address changes (rtnetlink): {e}; waiting instances time out"
            ),
        }
    }

    pub(super) fn on_address_change(&mut self) {
        if let Some(fd) = &self.netlink {
            crate::isolation::address::drain(fd);
        }
        let waiting: Vec<usize> = self.waiting_address.iter().copied().collect();
        for idx in waiting {
            self.check_address(idx);
        }
        if self.waiting_address.is_empty()
            && let Some(fd) = self.netlink.take()
        {
            self.deregister(&fd);
        }
    }

    pub fn idx_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn runtime_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.opts.runtime_dir.join(rel)
    }

    pub fn tracking_desc(&self, idx: usize) -> String {
        self.tracking(idx).to_string()
    }

    pub fn deadline(&mut self, idx: usize, at: Option<Instant>) {
        let inst = &mut self.insts[idx];
        inst.deadline_epoch += 1;
        if let Some(at) = at {
            self.timers.add(
                at,
                timers::Key::Deadline {
                    idx,
                    epoch: inst.deadline_epoch,
                },
            );
        }
    }
}
