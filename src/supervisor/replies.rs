//! What waiting clients are told: the table's `Answer`s worded (with the
//! readiness and timing of a start, or its failure with the last lines of
//! the process logs, read on a worker), and progress for `start`/`up`.

use std::path::PathBuf;
use std::time::Instant;

use super::fsm::Answer;
use super::instance::WaitFor;
use super::worker::JobId;
use super::{Daemon, Outcome};
use crate::control::exit::Exit;

impl Daemon {
    /// Words what the table decided to tell the waiting clients.
    pub(super) fn answer(&mut self, idx: usize, a: Answer, now: Instant) {
        let id = self.insts[idx].id().to_string();
        match a {
            Answer::Started => {
                let msg = self.ready_message(idx);
                self.answer_waiters(idx, WaitFor::Start, Exit::Ok, msg);
            }
            Answer::StartFailed(reason) => self.answer_start_failure(idx, &reason, now),
            Answer::StartCancelled(reason) => self.answer_waiters(
                idx,
                WaitFor::Start,
                Exit::Failed,
                format!("start of {id} cancelled: {reason}"),
            ),
            Answer::Stopped => {
                self.answer_waiters(idx, WaitFor::Stop, Exit::Ok, format!("{id} is stopped"))
            }
            Answer::StoppedFailed(reason) => self.answer_waiters(
                idx,
                WaitFor::Stop,
                Exit::Ok,
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
                    Exit::Failed,
                    format!(
                        "{id}: processes {} did not exit after SIGKILL (uninterruptible I/O?)",
                        left.join(" ")
                    ),
                );
            }
        }
    }

    pub(super) fn answer_waiters(&mut self, idx: usize, what: WaitFor, exit: Exit, msg: String) {
        let waiting: Vec<u64> = self.insts[idx]
            .waiters
            .iter()
            .filter(|(_, w)| *w == what)
            .map(|(c, _)| *c)
            .collect();
        self.insts[idx].waiters.retain(|(_, w)| *w != what);
        for c in waiting {
            self.reply_done(c, exit, msg.clone(), None);
        }
    }

    pub(super) fn progress_waiters(&mut self, idx: usize, msg: &str) {
        let id = self.insts[idx].id().to_string();
        let state = self.insts[idx].state().as_str();
        let waiting: Vec<u64> = self.insts[idx].waiters.iter().map(|(c, _)| *c).collect();
        for c in waiting {
            self.progress(c, &id, state, msg);
        }
    }

    pub(super) fn ready_message(&self, idx: usize) -> String {
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
    pub(super) fn answer_start_failure(&mut self, idx: usize, reason: &str, now: Instant) {
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
                self.reply_done(c, Exit::Failed, base.clone(), None);
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
                self.reply_done(c, Exit::Failed, format!("{}{text}", r.message), None);
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
                self.reply_done(c, Exit::Failed, msg.clone(), None);
            }
        }
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
