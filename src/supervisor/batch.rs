//! `up`, `down`, `start --with-deps` and shutdown: many instances in
//! `after` order, every independent branch at once, progress per instance.
//!
//! Up: an instance starts once everything it is `after` runs; if one of
//! those fails, it fails too, untried. Down is the mirror: an instance
//! stops once nothing that runs after it is still running.

use std::collections::BTreeSet;
use std::time::Instant;

use super::Daemon;
use super::fsm::{Event, State};
use crate::control::exit::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Up,
    Down,
}

#[derive(Debug)]
pub struct Batch {
    pub conn: Option<u64>,
    pub op: Op,
    pub members: BTreeSet<usize>,
    pub pending: BTreeSet<usize>,
    pub active: BTreeSet<usize>,
    pub ok: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub started: Instant,
    /// When each member's start or stop was asked for (a map: a batch of
    /// 10,000 looked each result up in a list).
    pub begun: std::collections::HashMap<usize, Instant>,
    /// For down: who is `after` whom, reversed (computed once: O(edges)).
    dependents: std::collections::HashMap<usize, Vec<usize>>,
}

/// What became of one instance of a batch.
enum Ended {
    /// It reached the state the batch asked for ("running", "stopped").
    Reached(&'static str),
    /// It did not, and why.
    Failed(String),
}

impl Daemon {
    pub(super) fn start_batch(&mut self, conn: Option<u64>, op: Op, ids: Vec<String>) {
        let members: BTreeSet<usize> = ids.iter().filter_map(|id| self.idx_of(id)).collect();
        let mut dependents: std::collections::HashMap<usize, Vec<usize>> =
            std::collections::HashMap::new();
        if op == Op::Down {
            for &i in &members {
                for dep in &self.insts[i].spec.after {
                    if let Some(d) = self.idx_of(dep) {
                        dependents.entry(d).or_default().push(i);
                    }
                }
            }
        }
        let b = Batch {
            dependents,
            conn,
            op,
            pending: members.clone(),
            members,
            active: BTreeSet::new(),
            ok: Vec::new(),
            failed: Vec::new(),
            started: self.host.now(),
            begun: std::collections::HashMap::new(),
        };
        self.batches.push(b);
        let n = self.batches.len() - 1;
        self.advance_batch(n);
    }

    /// `id` and, transitively, everything it is `after`.
    pub(super) fn dependency_chain(&self, id: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![id.to_string()];
        while let Some(x) = todo.pop() {
            if !out.insert(x.clone()) {
                continue;
            }
            if let Some(i) = self.idx_of(&x) {
                todo.extend(self.insts[i].spec.after.iter().cloned());
            }
        }
        out.into_iter().collect()
    }

    /// An instance of some batch changed state: record results, go on.
    pub(super) fn batch_transition(&mut self, idx: usize) {
        for n in (0..self.batches.len()).rev() {
            if !self.batches[n].active.contains(&idx) {
                continue;
            }
            let inst = &self.insts[idx];
            let state = inst.state();
            let id = inst.id().to_string();
            let outcome = match (self.batches[n].op, state) {
                (Op::Up, State::Running) => Some(Ended::Reached("running")),
                (Op::Up, State::Failed | State::Stopped) => Some(Ended::Failed(
                    inst.fsm
                        .last_failure
                        .clone()
                        .unwrap_or_else(|| state.as_str().into()),
                )),
                (Op::Down, State::Stopped) => Some(Ended::Reached("stopped")),
                (Op::Down, State::Failed) if !inst.procs.iter().any(|p| p.alive()) => {
                    Some(Ended::Reached("stopped"))
                }
                _ => None,
            };
            if let Some(res) = outcome {
                self.batch_result(n, idx, &id, res);
                self.advance_batch(n);
            }
        }
    }

    fn batch_result(&mut self, n: usize, idx: usize, id: &str, res: Ended) {
        let since = self.batches[n].begun.get(&idx).copied();
        let took = since
            .map(|t| format!(" in {:.1}s", t.elapsed().as_secs_f64()))
            .unwrap_or_default();
        let b = &mut self.batches[n];
        b.active.remove(&idx);
        let conn = b.conn;
        match res {
            Ended::Reached(state) => {
                b.ok.push(id.to_string());
                if let Some(c) = conn {
                    self.progress(c, id, state, format!("{id} {state}{took}"));
                }
            }
            Ended::Failed(why) => {
                b.failed.push((id.to_string(), why.clone()));
                if let Some(c) = conn {
                    self.progress(c, id, "failed", format!("{id} failed{took}: {why}"));
                }
            }
        }
    }

    fn advance_batch(&mut self, n: usize) {
        loop {
            let mut progressed = false;
            // A cursor, not a copy: each member's end calls this, and a
            // copy of 10,000 pending ones per call was quadratic.
            let mut from = 0;
            while let Some(&idx) = self.batches[n].pending.range(from..).next() {
                from = idx + 1;
                match self.readiness_in_batch(n, idx) {
                    Gate::Wait => continue,
                    Gate::Blocked(why) => {
                        self.batches[n].pending.remove(&idx);
                        let id = self.insts[idx].id().to_string();
                        self.batch_result(n, idx, &id, Ended::Failed(why));
                        progressed = true;
                    }
                    // Nothing more can start until one of the window ends.
                    Gate::Go if self.window_full(n) => break,
                    Gate::Go => {
                        self.batches[n].pending.remove(&idx);
                        self.trigger(n, idx);
                        progressed = true;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        let b = &self.batches[n];
        if b.pending.is_empty() && b.active.is_empty() {
            let b = self.batches.remove(n);
            let verb = if b.op == Op::Up { "started" } else { "stopped" };
            let took = b.started.elapsed().as_secs_f64();
            if let Some(c) = b.conn {
                if b.failed.is_empty() {
                    self.reply_done(
                        c,
                        Exit::Ok,
                        format!("{} instance(s) {verb} in {took:.1}s", b.ok.len()),
                        None,
                    );
                } else {
                    let names: Vec<String> =
                        b.failed.iter().map(|(i, w)| format!("{i}: {w}")).collect();
                    self.reply_done(
                        c,
                        Exit::Failed,
                        format!(
                            "{} of {} failed:\n{}",
                            b.failed.len(),
                            b.members.len(),
                            names.join("\n")
                        ),
                        None,
                    );
                }
            }
            drop(b);
            if self.batches.is_empty() {
                crate::util::give_back_memory();
            }
        }
    }

    fn trigger(&mut self, n: usize, idx: usize) {
        let op = self.batches[n].op;
        let state = self.insts[idx].state();
        let id = self.insts[idx].id().to_string();
        let now = self.host.now();
        match op {
            Op::Up if state == State::Running => {
                self.batch_result(n, idx, &id, Ended::Reached("running"));
            }
            Op::Up if self.insts[idx].removed => {
                self.batch_result(
                    n,
                    idx,
                    &id,
                    Ended::Failed("removed from the instances file".into()),
                );
            }
            Op::Up => {
                self.batches[n].active.insert(idx);
                self.batches[n].begun.insert(idx, now);
                if let Some(c) = self.batches[n].conn {
                    self.progress(c, &id, "starting", format!("{id} starting"));
                }
                self.post(idx, Event::Start { timeout: None });
            }
            Op::Down
                if state == State::Stopped && !self.insts[idx].procs.iter().any(|p| p.alive()) =>
            {
                self.batch_result(n, idx, &id, Ended::Reached("stopped"));
            }
            Op::Down => {
                self.batches[n].active.insert(idx);
                self.batches[n].begun.insert(idx, now);
                if let Some(c) = self.batches[n].conn {
                    self.progress(c, &id, "stopping", format!("{id} stopping"));
                }
                self.post(idx, Event::Stop { timeout: None });
            }
        }
    }

    /// An `up` has as many starts in flight as [`launch_window`] allows.
    fn window_full(&self, n: usize) -> bool {
        let b = &self.batches[n];
        b.op == Op::Up && b.active.len() >= launch_window()
    }

    fn readiness_in_batch(&self, n: usize, idx: usize) -> Gate {
        let b = &self.batches[n];
        match b.op {
            Op::Up => {
                for dep in &self.insts[idx].spec.after {
                    let Some(d) = self.idx_of(dep) else {
                        return Gate::Blocked(format!(
                            "needs {dep}, which is not in the instances file"
                        ));
                    };
                    if b.failed.iter().any(|(f, _)| f == dep) {
                        return Gate::Blocked(format!("not started: {dep} (after) failed"));
                    }
                    if self.insts[d].state() == State::Running {
                        continue;
                    }
                    if b.members.contains(&d) {
                        return Gate::Wait;
                    }
                    return Gate::Blocked(format!("needs {dep} (after), which is not running"));
                }
                Gate::Go
            }
            Op::Down => {
                // Wait while something that runs after this one is still
                // to be stopped by this batch.
                let waiting = b.dependents.get(&idx).is_some_and(|ds| {
                    ds.iter()
                        .any(|i| b.pending.contains(i) || b.active.contains(i))
                });
                if waiting { Gate::Wait } else { Gate::Go }
            }
        }
    }
}

enum Gate {
    Wait,
    Go,
    Blocked(String),
}

/// How many starts of one batch may be in flight at once: a start holds
/// descriptors until its exec is confirmed and its files are closed (the
/// cgroup's directories, the exec pipe, its log: 6 or more each, measured
/// with a limit of 400), a running instance none. With RLIMIT_NOFILE at
/// 20,000 (a container's hard limit), 5,000 starts at once failed with
/// EMFILE. So: 64 descriptors kept for the daemon itself, 16 for each
/// start, at least 8 starts. Read once, after the daemon raised its limit
/// (`setup::raise_nofile`).
fn launch_window() -> usize {
    static WINDOW: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WINDOW.get_or_init(|| {
        // SAFETY: getrlimit with a valid struct.
        let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
        let cur = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
            r.rlim_cur
        } else {
            1024
        };
        let per_start = cur.saturating_sub(64) / 16;
        usize::try_from(per_start).unwrap_or(usize::MAX).max(8)
    })
}
