//! The verdicts drawn from the probes: health (logged and announced when
//! it changes) and the answer to `monitor`, now from memory or once the
//! stale probes have run.

use crate::control::exit::Exit;
use crate::model::Check;
use crate::supervisor::Daemon;
use crate::supervisor::fsm::State;
use crate::supervisor::instance::WaitFor;

/// What `monitor` answers, in the OCF monitor action's terms (see
/// `integration::ocf`): the daemon replies with [`Verdict::exit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Running, every process there and healthy.
    Running,
    /// Cleanly stopped: nothing of it runs.
    Stopped,
    /// Failed, partial, unhealthy or between states.
    NotFine,
}

impl Verdict {
    /// The answer (the CLI's exit status).
    pub fn exit(self) -> Exit {
        match self {
            Verdict::Running => Exit::Ok,
            Verdict::Stopped => Exit::Stopped,
            Verdict::NotFine => Exit::Failed,
        }
    }
}

impl Daemon {
    /// Logs and announces (hooks) a change of the health verdict.
    pub(super) fn health_verdict_changed(&mut self, idx: usize) {
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
    pub(in crate::supervisor) fn monitor(&mut self, conn: u64, idx: usize, depth: u8) {
        let now = self.host.now();
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

    pub(super) fn maybe_answer_monitor(&mut self, idx: usize, conn: u64) {
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
    pub(in crate::supervisor) fn answer_monitors(&mut self, idx: usize) {
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
        let (verdict, msg) = self.monitor_verdict(idx);
        self.reply_done(conn, verdict.exit(), msg, None);
    }

    /// The `monitor` verdict and what to say with it.
    pub fn monitor_verdict(&self, idx: usize) -> (Verdict, String) {
        let inst = &self.insts[idx];
        let id = inst.id();
        match inst.state() {
            State::Stopped => (Verdict::Stopped, format!("{id} is stopped")),
            State::Failed => {
                let why = inst.fsm.last_failure.as_deref().unwrap_or("unknown reason");
                match self.partial(idx) {
                    Some(p) if inst.procs.iter().any(|x| x.alive()) => (
                        Verdict::NotFine,
                        format!("{id} failed: {why} (partial: {p})"),
                    ),
                    _ => (Verdict::NotFine, format!("{id} failed: {why}")),
                }
            }
            State::Running => {
                if let Some(partial) = self.partial(idx) {
                    return (Verdict::NotFine, format!("{id} is partial: {partial}"));
                }
                let (healthy, why) = self.health_verdict(idx);
                if !healthy {
                    return (Verdict::NotFine, format!("{id} is unhealthy: {why}"));
                }
                if let Some(p) = &inst.ready_probe
                    && inst.health.is_empty()
                    && let Some(r) = &p.last
                    && !r.ok
                    && r.at > inst.fsm.since
                {
                    return (
                        Verdict::NotFine,
                        format!("{id} is unhealthy: {}: {}", p.check.describe(), r.message),
                    );
                }
                (Verdict::Running, format!("{id} is running"))
            }
            s => (Verdict::NotFine, format!("{id} is {}", s.as_str())),
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

#[cfg(test)]
mod tests {
    use super::Verdict;

    /// The OCF monitor action's numbers, which the agent passes through.
    #[test]
    fn verdicts_are_the_ocf_monitor_codes() {
        assert_eq!(Verdict::Running.exit().code(), 0);
        assert_eq!(Verdict::Stopped.exit().code(), 7);
        assert_eq!(Verdict::NotFine.exit().code(), 1);
    }
}
