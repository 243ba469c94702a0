//! Readiness and health probes, run inside the event loop.
//!
//! tcp: a non-blocking connect in the epoll set (then `send`, then read
//! until `expect`); command: a child in the instance's context, its own
//! session; file / process / file_fresh: evaluated at once. Every run has
//! a timeout: a hung daemon that accepts but never answers fails.
//!
//! Slot 0 is the readiness probe, slot i+1 health check i.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::epoll::EpollFlags;

use super::children::Role;
use super::fsm::{Event, State};
use super::instance::{Probe, ProbeResult, ProbeRole, Running, TcpStage, WaitFor};
use super::{Daemon, Outcome, timers, tok};
use crate::model::Check;
use crate::process::procfs;
use crate::process::spawn::{ExecPlan, Output, Spawn};

/// Readiness retries: quick at first (most services bind within
/// milliseconds), then at most every 250 ms.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis((2u64 << attempt.min(7)).min(250))
}

const MAX_READ: usize = 64 * 1024;

impl Daemon {
    fn probe_mut(&mut self, idx: usize, slot: usize) -> Option<&mut Probe> {
        let inst = &mut self.insts[idx];
        if slot == 0 {
            inst.ready_probe.as_mut()
        } else {
            inst.health.get_mut(slot - 1)
        }
    }

    fn probe_ref(&self, idx: usize, slot: usize) -> Option<&Probe> {
        let inst = &self.insts[idx];
        if slot == 0 {
            inst.ready_probe.as_ref()
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
                self.probe_fds.remove(&sock.as_raw_fd());
                self.deregister(&sock);
            }
            Some(Running::Command { pid, .. }) => {
                self.kill_group_if_child(pid);
                // Reaped later; its result is then ignored.
                self.children.insert(pid, Role::Discard);
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
                    self.probe_fds.insert(fd, (idx, slot));
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
                    self.insts[idx].creds.clone(),
                );
                match plan.and_then(|p| self.host.spawn(p)) {
                    Ok(child) => {
                        self.children.insert(child.pid, Role::Probe { idx, slot });
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
            self.probe_done(idx, slot, ok, message, Instant::now());
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
        let Some(&(idx, slot)) = self.probe_fds.get(&fd) else {
            return;
        };
        let now = Instant::now();
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
        self.probe_done(idx, slot, clean, msg, Instant::now());
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

    /// Logs and announces (hooks) a change of the health verdict.
    fn health_verdict_changed(&mut self, idx: usize) {
        let (healthy, why) = self.health_verdict(idx);
        let inst = &mut self.insts[idx];
        if inst.healthy == Some(healthy) {
            return;
        }
        let first = inst.healthy.is_none();
        inst.healthy = Some(healthy);
        if first && healthy {
            return;
        }
        let id = inst.id().to_string();
        let (event, reason) = if healthy {
            ("healthy", "health checks pass again".to_string())
        } else {
            ("unhealthy", why)
        };
        if healthy {
            tracing::info!(instance = %id, "{reason}");
        } else {
            tracing::warn!(instance = %id, "unhealthy: {reason}");
        }
        self.run_hooks(idx, event, State::Running, State::Running, &reason);
        self.dirty.insert(idx);
    }

    /// (healthy, why not) from the latest results of the health checks.
    pub fn health_verdict(&self, idx: usize) -> (bool, String) {
        for p in &self.insts[idx].health {
            if let Some(r) = &p.last
                && !r.ok
            {
                return (false, format!("{}: {}", p.check.describe(), r.message));
            }
        }
        (true, String::new())
    }

    // ------------------------------------------------------------ monitor

    /// `monitor`: answer now from memory, or run the stale probes and answer
    /// when they are done.
    pub(super) fn monitor(&mut self, conn: u64, idx: usize, depth: u8) {
        let now = Instant::now();
        if self.insts[idx].state() == State::Running {
            // Process counts are process state, cheap and exact: evaluated
            // at every monitor, at any depth, never from a cache.
            for slot in 1..=self.insts[idx].health.len() {
                if matches!(
                    self.insts[idx].health[slot - 1].check,
                    Check::Process { .. }
                ) {
                    self.run_probe(idx, slot, now);
                }
            }
        }
        if self.insts[idx].state() != State::Running || depth == 0 {
            self.answer_monitor(idx, conn);
            return;
        }
        // Which probes to (re)run: stale health checks; with no health check,
        // the readiness check (a service that stopped answering is not fine).
        let slots: Vec<usize> = if self.insts[idx].health.is_empty() {
            if self.insts[idx].ready_probe.is_some() {
                vec![0]
            } else {
                vec![]
            }
        } else {
            (1..=self.insts[idx].health.len())
                .filter(|s| {
                    !self
                        .probe_ref(idx, *s)
                        .is_some_and(|p| p.fresh(now) || p.running.is_some())
                })
                .collect()
        };
        for &s in &slots {
            self.run_probe(idx, s, now);
        }
        let running: Vec<usize> = (0..=self.insts[idx].health.len())
            .filter(|s| self.probe_ref(idx, *s).is_some_and(|p| p.running.is_some()))
            .filter(|s| *s != 0 || slots.contains(&0))
            .collect();
        if running.is_empty() {
            self.answer_monitor(idx, conn);
            return;
        }
        for s in running {
            if let Some(p) = self.probe_mut(idx, s) {
                p.waiters.push(conn);
            }
        }
        self.insts[idx].waiters.push((conn, WaitFor::Monitor));
    }

    fn maybe_answer_monitor(&mut self, idx: usize, conn: u64) {
        let busy = (0..=self.insts[idx].health.len()).any(|s| {
            self.probe_ref(idx, s)
                .is_some_and(|p| p.waiters.contains(&conn))
        });
        if !busy {
            self.insts[idx]
                .waiters
                .retain(|(c, w)| !(*c == conn && *w == WaitFor::Monitor));
            self.answer_monitor(idx, conn);
        }
    }

    /// Every monitor waiting on this instance gets its answer (the state
    /// changed under it).
    pub(super) fn answer_monitors(&mut self, idx: usize) {
        let waiting: Vec<u64> = self.insts[idx]
            .waiters
            .iter()
            .filter(|(_, w)| *w == WaitFor::Monitor)
            .map(|(c, _)| *c)
            .collect();
        self.insts[idx]
            .waiters
            .retain(|(_, w)| *w != WaitFor::Monitor);
        for slot in 0..=self.insts[idx].health.len() {
            if let Some(p) = self.probe_mut(idx, slot) {
                p.waiters.retain(|c| !waiting.contains(c));
            }
        }
        for c in waiting {
            self.answer_monitor(idx, c);
        }
    }

    fn answer_monitor(&mut self, idx: usize, conn: u64) {
        let (code, msg) = self.monitor_verdict(idx);
        self.reply_done(conn, code, msg, None);
    }

    /// OCF-style verdict: 0 running and healthy, 7 cleanly stopped, 1 otherwise.
    pub fn monitor_verdict(&self, idx: usize) -> (i32, String) {
        let inst = &self.insts[idx];
        let id = inst.id();
        match inst.state() {
            State::Stopped => (7, format!("{id} is stopped")),
            State::Failed => {
                let why = inst.fsm.last_failure.as_deref().unwrap_or("unknown reason");
                match self.partial(idx) {
                    Some(p) if inst.procs.iter().any(|x| x.alive()) => {
                        (1, format!("{id} failed: {why} (partial: {p})"))
                    }
                    _ => (1, format!("{id} failed: {why}")),
                }
            }
            State::Running => {
                if let Some(partial) = self.partial(idx) {
                    return (1, format!("{id} is partial: {partial}"));
                }
                let (healthy, why) = self.health_verdict(idx);
                if !healthy {
                    return (1, format!("{id} is unhealthy: {why}"));
                }
                if let Some(p) = &inst.ready_probe
                    && inst.health.is_empty()
                    && let Some(r) = &p.last
                    && !r.ok
                    && r.at > inst.fsm.since
                {
                    return (
                        1,
                        format!("{id} is unhealthy: {}: {}", p.check.describe(), r.message),
                    );
                }
                (0, format!("{id} is running"))
            }
            s => (1, format!("{id} is {}", s.as_str())),
        }
    }

    /// "xmofts 2/3" when a simple service's process is missing.
    fn partial(&self, idx: usize) -> Option<String> {
        let inst = &self.insts[idx];
        if inst.spec.kind != crate::model::ServiceKind::Simple
            || inst.adopted && inst.procs.is_empty()
        {
            return None;
        }
        let mut missing = Vec::new();
        for p in &inst.spec.processes {
            let alive = inst
                .procs
                .iter()
                .filter(|x| {
                    x.alive() && (x.name == p.name || x.name.starts_with(&format!("{}.", p.name)))
                })
                .count() as u32;
            if alive < p.count {
                missing.push(format!("{} {alive}/{}", p.name, p.count));
            }
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

fn round_s(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// A non-blocking connect in progress.
fn tcp_connect(addr: std::net::SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2): a new fd we own.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sa: nix::sys::socket::SockaddrStorage = addr.into();
    match nix::sys::socket::connect(fd.as_raw_fd(), &sa) {
        Ok(()) | Err(nix::Error::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e.into()),
    }
}

fn socket_error(fd: &OwnedFd) -> Option<io::Error> {
    match nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::SocketError) {
        Ok(0) => None,
        Ok(e) => Some(io::Error::from_raw_os_error(e)),
        Err(e) => Some(e.into()),
    }
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there; a verdict once `expect` arrived, the peer closed,
/// or too much came without it.
fn read_until(fd: &OwnedFd, buf: &mut Vec<u8>, expect: &str) -> Option<(bool, String)> {
    let mut chunk = [0u8; 4096];
    loop {
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => {
                return Some((
                    false,
                    format!("connection closed before {expect:?} arrived"),
                ));
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if String::from_utf8_lossy(buf).contains(expect) {
                    return Some((true, format!("answered {expect:?}")));
                }
                if buf.len() > MAX_READ {
                    return Some((false, format!("{MAX_READ} bytes without {expect:?}")));
                }
            }
            Err(nix::Error::EAGAIN) => return None,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Some((false, format!("read: {e}"))),
        }
    }
}

/// The file checks (`file = …`, `file_fresh = …`), on a worker thread.
fn file_check(check: &Check, now: SystemTime) -> (bool, String) {
    match check {
        Check::File(path) => {
            if path.exists() {
                (true, "exists".into())
            } else {
                (false, format!("{} does not exist", path.display()))
            }
        }
        Check::FileFresh { path, max_age } => {
            match std::fs::metadata(path).and_then(|m| m.modified()) {
                Ok(t) => {
                    let age = now.duration_since(t).unwrap_or_default();
                    if age <= *max_age {
                        (
                            true,
                            format!("modified {} ago", humantime::format_duration(round_s(age))),
                        )
                    } else {
                        (
                            false,
                            format!(
                                "{} not modified for {}",
                                path.display(),
                                humantime::format_duration(round_s(age))
                            ),
                        )
                    }
                }
                Err(e) => (false, format!("{}: {e}", path.display())),
            }
        }
        _ => (false, "not a file check".into()),
    }
}
