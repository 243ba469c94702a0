//! Readiness and health probes, run inside the event loop.
//!
//! tcp: a non-blocking connect in the epoll set (then `send`, then read
//! until `expect`); command: a child in the instance's context, its own
//! session; file / process / file_fresh: evaluated at once. Every run has
//! a timeout: a hung daemon that accepts but never answers fails.
//!
//! Slot 0 is the readiness probe, slot i+1 health check i.

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::epoll::EpollFlags;

use super::fsm::{Event, State};
use super::instance::{Probe, ProbeResult, ProbeRole, Running, TcpStage};
use super::registry::{Role, Source};
use super::{Daemon, Outcome, timers, tok};
use crate::model::Check;
use crate::process::procfs;
use crate::process::spawn::{ExecPlan, Output, Spawn};

mod checks;
mod monitor;

use checks::{file_check, read_until, socket_error, tcp_connect, write_all};

/// Readiness retries: quick at first (most services bind within
/// milliseconds), then at most every 250 ms.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis((2u64 << attempt.min(7)).min(250))
}

impl Daemon {
    fn probe_mut(&mut self, idx: usize, slot: usize) -> Option<&mut Probe> {
        let inst = &mut self.insts[idx];
        if slot == 0 {
            inst.ready_probe.as_deref_mut()
        } else {
            inst.health.get_mut(slot - 1)
        }
    }

    fn probe_ref(&self, idx: usize, slot: usize) -> Option<&Probe> {
        let inst = &self.insts[idx];
        if slot == 0 {
            inst.ready_probe.as_deref()
        } else {
            inst.health.get(slot - 1)
        }
    }

    pub(super) fn start_ready_probe(&mut self, idx: usize, now: Instant) {
        if let Some(p) = self.probe_mut(idx, 0) {
            p.attempts = 0;
            p.last = None;
        }
        self.run_probe(idx, 0, now);
    }

    /// Health checks run every `interval` while the instance is running.
    pub(super) fn schedule_health(&mut self, idx: usize, now: Instant) {
        for slot in 1..=self.insts[idx].health.len() {
            let p = &mut self.insts[idx].health[slot - 1];
            p.epoch += 1;
            p.last = None;
            let at = now + p.interval;
            let epoch = p.epoch;
            self.timers.add(at, timers::Key::Probe { idx, slot, epoch });
        }
    }

    pub(super) fn cancel_probes(&mut self, idx: usize) {
        let n = 1 + self.insts[idx].health.len();
        for slot in 0..n {
            self.abort_probe(idx, slot);
            if let Some(p) = self.probe_mut(idx, slot) {
                p.epoch += 1;
            }
        }
    }

    fn abort_probe(&mut self, idx: usize, slot: usize) {
        let Some(p) = self.probe_mut(idx, slot) else {
            return;
        };
        match p.running.take() {
            Some(Running::Tcp { sock, .. }) => {
                self.reg.forget_fd(sock.as_raw_fd());
                self.deregister(&sock);
            }
            Some(Running::Command { pid, .. }) => {
                self.kill_group_if_child(pid);
                // Reaped later; its result is then ignored.
                self.reg.child(pid, Role::Discard);
            }
            // Its result, when it comes, carries an old epoch: ignored.
            Some(Running::File) | None => {}
        }
    }

    /// Starts one run of a probe (unless one is already in flight).
    pub(super) fn run_probe(&mut self, idx: usize, slot: usize, now: Instant) {
        let spec = self.insts[idx].spec.clone();
        let Some(p) = self.probe_ref(idx, slot) else {
            return;
        };
        if p.running.is_some() {
            return;
        }
        let (check, timeout, epoch) = (p.check.clone(), p.timeout, p.epoch);
        let deadline = now + timeout;
        match check {
            Check::Tcp { addr, .. } => match tcp_connect(addr) {
                Ok(sock) => {
                    let fd = sock.as_raw_fd();
                    self.register(sock.as_fd(), tok::PROBE | fd as u64, EpollFlags::EPOLLOUT);
                    self.reg.fd(fd, Source::Probe { idx, slot });
                    if let Some(p) = self.probe_mut(idx, slot) {
                        p.running = Some(Running::Tcp {
                            sock,
                            stage: TcpStage::Connecting,
                            deadline,
                        });
                    }
                    self.timers
                        .add(deadline, timers::Key::Probe { idx, slot, epoch });
                }
                Err(e) => self.probe_done(idx, slot, false, format!("connect {addr}: {e}"), now),
            },
            Check::Command(argv) => {
                // No NSS on the loop: the user as the start looked it up.
                let plan = ExecPlan::with_creds(
                    Spawn {
                        argv: &argv,
                        run: &spec.run,
                        output: Output::Null,
                        cgroups: Vec::new(),
                        into_cgroup: None,
                        inherit: None,
                        setsid: true,
                    },
                    self.insts[idx].creds.as_deref().cloned(),
                );
                match plan.and_then(|p| self.host.spawn(p)) {
                    Ok(child) => {
                        self.reg.child(child.pid, Role::Probe { idx, slot });
                        if let Some(p) = self.probe_mut(idx, slot) {
                            p.running = Some(Running::Command {
                                pid: child.pid,
                                deadline,
                            });
                        }
                        self.timers
                            .add(deadline, timers::Key::Probe { idx, slot, epoch });
                    }
                    Err(e) => self.probe_done(idx, slot, false, e.to_string(), now),
                }
            }
            check @ (Check::File(_) | Check::FileFresh { .. }) => {
                self.check_file_off_loop(idx, slot, epoch, check, deadline, now)
            }
            Check::Process { name, count } => {
                let n = self.count_named(idx, &name);
                let ok = n >= count;
                let msg = if ok {
                    format!("{name} {n}/{count}")
                } else {
                    format!("partial: {name} {n}/{count}")
                };
                self.probe_done(idx, slot, ok, msg, now);
            }
        }
    }

    /// A file check runs on the worker: the file is often on the
    /// instance's storage, which may not answer. The probe's own timeout
    /// bounds the wait as for any probe.
    fn check_file_off_loop(
        &mut self,
        idx: usize,
        slot: usize,
        epoch: u64,
        check: Check,
        deadline: Instant,
        now: Instant,
    ) {
        let what = match &check {
            Check::File(p) | Check::FileFresh { path: p, .. } => p.display().to_string(),
            _ => return,
        };
        if let Some((_, since)) = self.probe_ref(idx, slot).and_then(|p| p.file_job) {
            let msg = format!(
                "{what} still does not answer (a check {}s ago has not returned)",
                now.duration_since(since).as_secs()
            );
            self.probe_done(idx, slot, false, msg, now);
            return;
        }
        let (job, _) = self.worker.submit(move |p| {
            p.set(what);
            let (ok, message) = file_check(&check, SystemTime::now());
            Outcome::FileChecked {
                idx,
                slot,
                epoch,
                ok,
                message,
            }
        });
        if let Some(p) = self.probe_mut(idx, slot) {
            p.running = Some(Running::File);
            p.file_job = Some((job, now));
        }
        self.timers
            .add(deadline, timers::Key::Probe { idx, slot, epoch });
    }

    pub(super) fn on_file_checked(
        &mut self,
        idx: usize,
        slot: usize,
        epoch: u64,
        ok: bool,
        message: String,
    ) {
        let Some(p) = self.probe_mut(idx, slot) else {
            return;
        };
        p.file_job = None;
        if p.epoch == epoch && matches!(p.running, Some(Running::File)) {
            self.probe_done(idx, slot, ok, message, self.host.now());
        }
    }

    /// Members whose name (comm, or argv[0]'s file name) is `name`.
    pub fn count_named(&self, idx: usize, name: &str) -> u32 {
        self.members(idx)
            .into_iter()
            .filter(|(pid, _)| {
                procfs::stat(*pid).is_some_and(|s| {
                    s.state != 'Z'
                        && (s.comm == name || name.starts_with(&s.comm) && s.comm.len() == 15)
                }) || procfs::exe_name(*pid).as_deref() == Some(name)
            })
            .count() as u32
    }

    pub(super) fn on_probe_fd(&mut self, fd: i32) {
        let Some((idx, slot)) = self.reg.probe(fd) else {
            return;
        };
        let now = self.host.now();
        let (send, expect) = match self.probe_ref(idx, slot).map(|p| &p.check) {
            Some(Check::Tcp { send, expect, .. }) => (send.clone(), expect.clone()),
            _ => return,
        };
        let Some(p) = self.probe_mut(idx, slot) else {
            return;
        };
        let Some(Running::Tcp { sock, stage, .. }) = p.running.as_mut() else {
            return;
        };
        let outcome: Option<(bool, String)> = match stage {
            TcpStage::Connecting => match socket_error(sock) {
                Some(e) => Some((false, format!("connect: {e}"))),
                None => match (&send, &expect) {
                    // A request of a few bytes fits an empty socket buffer.
                    (Some(s), _) if write_all(sock, s.as_bytes()).is_err() => {
                        Some((false, "send failed".into()))
                    }
                    (_, None) => Some((true, "connected".into())),
                    (_, Some(_)) => {
                        *stage = TcpStage::Reading(Vec::new());
                        None
                    }
                },
            },
            TcpStage::Reading(buf) => read_until(sock, buf, expect.as_deref().unwrap_or("")),
        };
        match outcome {
            Some((ok, msg)) => {
                self.abort_probe(idx, slot);
                self.probe_done(idx, slot, ok, msg, now);
            }
            None => {
                // Now waiting to read.
                let raw = fd;
                // SAFETY: the socket lives in the probe until aborted.
                self.reregister(
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
                    tok::PROBE | fd as u64,
                    EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP,
                );
            }
        }
    }

    pub(super) fn probe_command_exited(
        &mut self,
        idx: usize,
        slot: usize,
        pid: i32,
        clean: bool,
        status: &str,
    ) {
        let ours = matches!(self.probe_ref(idx, slot).and_then(|p| p.running.as_ref()), Some(Running::Command { pid: p, .. }) if *p == pid);
        if !ours {
            return;
        }
        if let Some(p) = self.probe_mut(idx, slot) {
            p.running = None;
        }
        let msg = if clean {
            "exit 0".to_string()
        } else {
            status.to_string()
        };
        self.probe_done(idx, slot, clean, msg, self.host.now());
    }

    pub(super) fn on_probe_timer(&mut self, idx: usize, slot: usize, epoch: u64, now: Instant) {
        let Some(p) = self.probe_ref(idx, slot) else {
            return;
        };
        if p.epoch != epoch {
            return;
        }
        if p.running.is_some() {
            let t = p.timeout;
            self.abort_probe(idx, slot);
            self.probe_done(
                idx,
                slot,
                false,
                format!("no answer within {}", humantime::format_duration(t)),
                now,
            );
        } else {
            self.run_probe(idx, slot, now);
        }
    }

    fn probe_done(&mut self, idx: usize, slot: usize, ok: bool, message: String, now: Instant) {
        let state = self.insts[idx].state();
        let Some(p) = self.probe_mut(idx, slot) else {
            return;
        };
        p.epoch += 1;
        p.running = None;
        p.last = Some(ProbeResult {
            at: now,
            ok,
            message,
        });
        p.attempts += 1;
        let (role, epoch, interval, attempts) = (p.role, p.epoch, p.interval, p.attempts);
        let waiters = std::mem::take(&mut p.waiters);
        match role {
            ProbeRole::Ready if state == State::Starting => {
                if ok {
                    self.post(idx, Event::Ready);
                } else {
                    self.timers.add(
                        now + retry_delay(attempts),
                        timers::Key::Probe { idx, slot, epoch },
                    );
                }
            }
            ProbeRole::Health if state == State::Running => {
                self.timers
                    .add(now + interval, timers::Key::Probe { idx, slot, epoch });
                self.health_verdict_changed(idx);
            }
            _ => {}
        }
        for c in waiters {
            self.maybe_answer_monitor(idx, c);
        }
    }
}
