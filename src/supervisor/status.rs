//! What `status` and `list` answer: one instance's status, built from
//! memory (the free space of its log file system is asked for on a worker
//! and shown from the last answer).

use std::time::UNIX_EPOCH;

use super::Daemon;
use super::fsm::State;
use super::instance::Inst;
use crate::control::exit::Exit;
use crate::control::observe::Usage;
use crate::control::proto::{CheckStatus, InstanceStatus, ProcStatus};

impl Daemon {
    /// `status ID`: exits 0 while running, 3 otherwise.
    pub(super) fn reply_status(&mut self, conn: u64, idx: usize) {
        self.refresh_log_space(idx);
        let usage = self.usage_of(idx, std::time::Duration::ZERO);
        let st = self.status_of(idx, true, usage);
        let exit = if self.insts[idx].state() == State::Running {
            Exit::Ok
        } else {
            Exit::NotRunning
        };
        // Written as the status's own order of fields (a Value would sort them).
        let data = serde_json::to_vec(&[st]).unwrap_or_else(|_| b"[]".to_vec());
        self.reply_done_raw(conn, exit, &data);
    }

    /// `status` and `list`: every instance, without its members. Each
    /// status is written as JSON as it is made, into the one buffer that
    /// becomes the reply (no `serde_json::Value` of 10,000 statuses).
    /// Usage figures read less than `max_age` ago are reused.
    pub(super) fn reply_list(&mut self, conn: u64, max_age: std::time::Duration) {
        let mut data = Vec::with_capacity(self.insts.len() * 1024);
        data.push(b'[');
        for i in 0..self.insts.len() {
            if i > 0 {
                data.push(b',');
            }
            let usage = self.usage_of(i, max_age);
            if let Err(e) = serde_json::to_writer(&mut data, &self.status_of(i, false, usage)) {
                tracing::error!("encoding the status of {}: {e}", self.insts[i].id());
            }
        }
        data.push(b']');
        self.reply_done_raw(conn, Exit::Ok, &data);
    }

    /// The status of one instance, with `usage` as read by the caller.
    pub fn status_of(&self, idx: usize, detail: bool, usage: Option<Usage>) -> InstanceStatus {
        let inst: &Inst = &self.insts[idx];
        let now = self.host.now();
        let state = inst.state();
        let since = inst
            .since_wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let members = if detail && state.may_have_processes() {
            self.members(idx).into_iter().map(|(p, _)| p).collect()
        } else {
            Vec::new()
        };
        let mut checks = Vec::new();
        let probes = inst.ready_probe.iter().chain(inst.health.iter());
        for p in probes {
            checks.push(CheckStatus {
                role: p.role.as_str().into(),
                check: p.check.describe(),
                ok: p.last.as_ref().map(|r| r.ok),
                message: p
                    .last
                    .as_ref()
                    .map(|r| r.message.clone())
                    .unwrap_or_default(),
                age_s: p
                    .last
                    .as_ref()
                    .map(|r| now.duration_since(r.at).as_secs_f64()),
            });
        }
        let mut warnings = inst.warnings.clone();
        warnings.extend(self.state_errors.get(&idx).cloned());
        if state == State::Running
            && let Some(w) = &inst.log_space.warning
        {
            warnings.push(w.clone());
        }
        InstanceStatus {
            id: inst.id().to_string(),
            service: inst.spec.service.clone(),
            kind: inst.spec.kind.as_str().into(),
            state: state.as_str().into(),
            healthy: (state == State::Running && !inst.health.is_empty())
                .then(|| self.health_verdict(idx).0),
            processes: inst
                .procs
                .iter()
                .map(|p| ProcStatus {
                    name: p.name.clone(),
                    pid: p.pid,
                    alive: p.alive(),
                })
                .collect(),
            members,
            address: inst.spec.address.map(|a| a.to_string()),
            port: inst.spec.port,
            hostname: inst.spec.hostname.clone(),
            since,
            uptime_s: (state == State::Running).then(|| super::secs_since(inst.fsm.since, now)),
            restarts: inst.fsm.restart_count,
            last_failure: inst.fsm.last_failure.clone(),
            tracking: self.tracking_desc(idx),
            checks,
            definition_changed: inst.next_spec.is_some(),
            removed: inst.removed,
            warnings,
            log_dir: self.log_dir(idx).display().to_string(),
            timing: inst.obs.last.clone(),
            usage,
        }
    }

    /// The log file system's free space, asked for on the worker (the log
    /// directory is often on the instance's storage: a statfs there hangs
    /// with it). A status shows the last answer; it asks again when that
    /// is over a second old and no question is out. Nothing asks unless a
    /// status is requested.
    fn refresh_log_space(&mut self, idx: usize) {
        let ls = &self.insts[idx].log_space;
        let fresh = ls.asked.is_some_and(|t| {
            self.host.now().saturating_duration_since(t) < std::time::Duration::from_secs(1)
        });
        if ls.job.is_some() || fresh || self.insts[idx].state() != State::Running {
            return;
        }
        let dir = self.log_dir(idx);
        let (job, _) = self.worker.submit(move |p| {
            p.set(format!("free space in {}", dir.display()));
            super::Outcome::LogSpace {
                idx,
                warning: log_space_warning(&dir),
            }
        });
        let ls = &mut self.insts[idx].log_space;
        ls.job = Some(job);
        ls.asked = Some(self.host.now());
    }

    pub(super) fn on_log_space(&mut self, idx: usize, job: u64, warning: Option<String>) {
        let ls = &mut self.insts[idx].log_space;
        if ls.job == Some(job) {
            ls.job = None;
            ls.warning = warning;
        }
    }
}

/// "log filesystem full" when the log directory has no space left.
fn log_space_warning(dir: &std::path::Path) -> Option<String> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    if st.blocks_available() == 0 {
        Some(format!(
            "no space left for logs in {}: output is being lost until space returns",
            dir.display()
        ))
    } else {
        None
    }
}
