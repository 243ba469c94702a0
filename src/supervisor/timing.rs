//! Where a start spends its time (issue 15), and the usage figures of an
//! instance, read when asked.
//!
//! The executor records a mark at each step of a start: the transition
//! into waiting-address or starting (the start's beginning), the address
//! found, the `Launch` action (setup begins: cgroup, then the worker's
//! storage and name-service part), the prepared plans back on the loop
//! (with the worker's measure of the lock), every exec confirmed
//! (`Launched`), and the transition into running. Each part is its own
//! interval; nothing is derived by subtraction from the total, so a test
//! can hold their sum against the total.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Daemon;
use super::fsm::State;
use crate::control::observe::{Timing, Usage};
use crate::isolation::usage::Baseline;

impl Obs {
    /// How old the usage figures kept are, if any.
    pub fn usage_age(&self, now: Instant) -> Option<Duration> {
        self.usage
            .as_ref()
            .map(|(at, _)| now.saturating_duration_since(*at))
    }

    /// Keeps figures read at `at` (by a worker's read of every instance).
    pub fn keep_usage(&mut self, at: Instant, u: Usage) {
        self.usage = Some((at, u));
    }
}

/// The marks of the start in progress and what the last one cost.
#[derive(Debug, Default)]
pub struct Obs {
    start: Option<Box<Marks>>,
    /// The last start that reached running under this daemon.
    pub last: Option<Timing>,
    /// The cgroup's counters when the current run began.
    pub base: Baseline,
    /// The usage last read and when: a `list` reuses figures read less
    /// than [`USAGE_MAX_AGE`] ago (see [`Daemon::usage_of`]).
    usage: Option<(Instant, Usage)>,
}

/// How old the usage figures of one instance in a `list` may be. Reading
/// them costs five cgroup files per instance (0.05-0.1 ms: most of a list
/// of 10,000): lists within a second read each instance once. `status`,
/// `top` and `metrics` (rates are computed from their figures) read now.
pub const USAGE_MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Marks {
    begin: Instant,
    began_wall: SystemTime,
    address: Option<Instant>,
    setup: Option<Instant>,
    prepared: Option<Instant>,
    lock: Duration,
    lock_record_age: Option<Duration>,
    taken_over_from: Option<String>,
    launched: Option<Instant>,
}

fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// `b - a`, zero when either is missing or out of order.
fn span(a: Option<Instant>, b: Option<Instant>) -> Duration {
    match (a, b) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    }
}

impl Marks {
    fn new(now: Instant) -> Marks {
        Marks {
            begin: now,
            began_wall: SystemTime::now(),
            address: None,
            setup: None,
            prepared: None,
            lock: Duration::ZERO,
            lock_record_age: None,
            taken_over_from: None,
            launched: None,
        }
    }

    /// The finished timing, `running` being the moment it became ready.
    fn finish(&self, running: Instant) -> Timing {
        let address_end = self.address.or(self.setup);
        let setup = span(self.setup, self.prepared).saturating_sub(self.lock);
        Timing {
            address: ms(span(Some(self.begin), address_end)),
            lock: ms(self.lock),
            setup: ms(setup),
            exec: ms(span(self.prepared, self.launched)),
            ready: ms(span(self.launched, Some(running))),
            total: ms(running.saturating_duration_since(self.begin)),
            lock_record_age: self.lock_record_age.map(ms),
            taken_over_from: self.taken_over_from.clone(),
            started_at: self
                .began_wall
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

impl Daemon {
    /// A transition: a start begins, finds its address, or is ready (then
    /// the finished timing is returned, for the "ready" log line).
    pub(super) fn timing_transition(
        &mut self,
        idx: usize,
        from: State,
        to: State,
    ) -> Option<Timing> {
        let now = Instant::now();
        let obs = &mut self.insts[idx].obs;
        match (from, to) {
            (State::WaitingAddress, State::Starting) => {
                if let Some(m) = &mut obs.start {
                    m.address = Some(now);
                }
            }
            (_, State::WaitingAddress) | (_, State::Starting) => {
                obs.start = Some(Box::new(Marks::new(now)))
            }
            (State::Starting, State::Running) => {
                let t = obs.start.take()?.finish(now);
                obs.last = Some(t.clone());
                return Some(t);
            }
            _ => obs.start = None,
        }
        None
    }

    /// The `Launch` action: setup begins.
    pub(super) fn timing_launch(&mut self, idx: usize) {
        if let Some(m) = &mut self.insts[idx].obs.start {
            m.setup = Some(Instant::now());
        }
    }

    /// The prepared plans are back; the forks follow. The lock's cost as
    /// the worker measured it, and the record it replaced. `base`: the
    /// cgroup's counters before this run, its zero.
    pub(super) fn timing_prepared(
        &mut self,
        idx: usize,
        base: Baseline,
        lock_time: Duration,
        lock: Option<&crate::isolation::lock::Lock>,
    ) {
        let obs = &mut self.insts[idx].obs;
        obs.base = base;
        obs.usage = None;
        if let Some(m) = &mut obs.start {
            m.prepared = Some(Instant::now());
            m.lock = lock_time;
            if let Some(l) = lock {
                m.lock_record_age = l
                    .previous_written
                    .and_then(|w| SystemTime::now().duration_since(w).ok());
                m.taken_over_from = l
                    .previous
                    .as_ref()
                    .filter(|p| p.node != self.node)
                    .map(|p| p.node.clone());
            }
        }
    }

    /// Every exec of the start is confirmed.
    pub(super) fn timing_launched(&mut self, idx: usize) {
        if let Some(m) = &mut self.insts[idx].obs.start {
            m.launched = Some(Instant::now());
        }
    }

    /// Before reading the figures of one or many instances: flushes our
    /// whole subtree at once, unless done less than 100 ms ago (see
    /// [`crate::isolation::usage::flush_subtree`]).
    pub(super) fn flush_stats(&mut self) {
        let now = Instant::now();
        if self
            .stats_flushed
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        if let Ok(root) = &self.cgroot {
            crate::isolation::usage::flush_subtree(&root.base);
            self.stats_flushed = Some(now);
        }
    }

    /// The instance's usage, from its cgroup (none without one, or when
    /// nothing of it can run): the figures read less than `max_age` ago,
    /// else read now and kept. Cgroup files are kernel state: reading
    /// them never waits on storage.
    pub(super) fn usage_of(&mut self, idx: usize, max_age: Duration) -> Option<Usage> {
        let inst = &self.insts[idx];
        if !inst.state().may_have_processes() || inst.cgroup.is_none() {
            return None;
        }
        let now = Instant::now();
        match &inst.obs.usage {
            Some((at, u)) if now.saturating_duration_since(*at) < max_age => Some(u.clone()),
            _ => {
                self.flush_stats();
                let inst = &mut self.insts[idx];
                let cg = inst.cgroup.as_ref()?;
                let (v2, v1) = (cg.dir(), cg.v1_dirs());
                let dirs = crate::isolation::usage::Dirs { v2: &v2, v1: &v1 };
                let u = dirs.usage(&inst.obs.base);
                inst.obs.usage = Some((now, u.clone()));
                Some(u)
            }
        }
    }
}

/// The hook environment of a "ready" event: `COHOST_TIMING_<PART>_MS`.
pub fn hook_env(t: &Timing) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = t
        .parts()
        .iter()
        .map(|(k, v)| {
            (
                format!("COHOST_TIMING_{}_MS", k.to_ascii_uppercase()),
                format!("{v:.3}"),
            )
        })
        .collect();
    if let Some(age) = t.lock_record_age {
        env.push((
            "COHOST_TIMING_LOCK_RECORD_AGE_MS".into(),
            format!("{age:.3}"),
        ));
    }
    env
}

/// The daemon's log line for a start that became ready, with its timing
/// as fields (text and json log formats both carry them).
pub fn log_ready(id: &str, from: State, reason: &str, t: &Timing) {
    tracing::info!(
        instance = %id,
        from = from.as_str(),
        to = "running",
        address_ms = t.address,
        lock_ms = t.lock,
        setup_ms = t.setup,
        exec_ms = t.exec,
        ready_ms = t.ready,
        total_ms = t.total,
        lock_record_age_ms = t.lock_record_age,
        "{reason}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_their_own_intervals() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = Marks::new(t0);
        m.address = Some(at(100));
        m.setup = Some(at(100));
        m.prepared = Some(at(130));
        m.lock = Duration::from_millis(10);
        m.launched = Some(at(135));
        let t = m.finish(at(200));
        assert_eq!(
            (t.address, t.lock, t.setup, t.exec, t.ready, t.total),
            (100.0, 10.0, 20.0, 5.0, 65.0, 200.0)
        );
        let sum: f64 = t.parts()[..5].iter().map(|(_, v)| v).sum();
        assert_eq!(sum, t.total);
        // No address gate: the address part ends where setup begins.
        let mut m = Marks::new(t0);
        m.setup = Some(at(1));
        assert_eq!(m.finish(at(2)).address, 1.0);
    }

    #[test]
    fn hook_env_names() {
        let t = Timing {
            total: 12.5,
            lock_record_age: Some(3000.0),
            ..Default::default()
        };
        let env = hook_env(&t);
        assert!(env.contains(&("COHOST_TIMING_TOTAL_MS".into(), "12.500".into())));
        assert!(env.contains(&("COHOST_TIMING_LOCK_RECORD_AGE_MS".into(), "3000.000".into())));
        assert_eq!(env.len(), 7);
    }
}
