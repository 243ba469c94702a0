//! Control requests: authorize, dispatch, answer.
//!
//! A bad request is answered with an error and touches nothing else: no
//! other instance is stopped, restarted or signalled because of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::conn::Peer;
use super::fsm::{Event, State};
use super::instance::{Inst, WaitFor};
use super::{Daemon, batch};
use crate::config::{self, Trust};
use crate::control::proto::{CheckStatus, Envelope, InstanceStatus, ProcStatus, Request};

/// Exit codes the daemon answers with (the CLI exits with them).
pub mod code {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    /// Bad arguments: unknown instance, malformed request.
    pub const INVALID: i32 = 2;
    pub const NOT_RUNNING: i32 = 3;
    pub const DENIED: i32 = 4;
}

/// A request its caller may not make.
#[derive(Debug, thiserror::Error)]
#[error("permission denied: uid {uid} may not {op} (only root and uid {me}{readers})")]
pub struct Denied {
    uid: u32,
    op: &'static str,
    me: u32,
    /// "; group G may read status", where a status group is set.
    readers: String,
}

impl Daemon {
    pub(super) fn handle_request(&mut self, conn: u64, line: &[u8]) {
        // What the state writer reported: a failed write shows at once.
        self.collect_state_outcomes();
        let env: Envelope = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(e) => {
                self.reply_done(conn, code::INVALID, format!("malformed request: {e}"), None);
                return;
            }
        };
        let peer = self.conns[&conn].peer;
        if let Err(why) = self.authorize(peer, &env.req) {
            tracing::warn!(
                uid = peer.uid,
                pid = peer.pid,
                "refused {:?}: {why}",
                op_name(&env.req)
            );
            self.reply_done(conn, code::DENIED, why.to_string(), None);
            return;
        }
        if let Some(cfg) = &env.config
            && !same_dir(cfg, &self.opts.config_dir.display().to_string())
        {
            let msg = format!(
                "the cohost daemon for runtime dir {} runs the instances file {}, not {cfg}; give each instances file its own --runtime-dir",
                self.opts.runtime_dir.display(),
                self.opts.config_dir.display()
            );
            self.reply_done(conn, code::INVALID, msg, None);
            return;
        }
        if self.shutting_down && !env.req.is_read_only() && !matches!(env.req, Request::Shutdown {})
        {
            self.reply_done(
                conn,
                code::FAILED,
                "the daemon is shutting down (stopping every instance)",
                None,
            );
            return;
        }
        match env.req {
            Request::Ping {} => {
                let data = serde_json::json!({
                    "pid": std::process::id(),
                    "config": self.opts.config_dir.display().to_string(),
                    "runtime_dir": self.opts.runtime_dir.display().to_string(),
                    "node": self.node,
                });
                self.reply_done(conn, code::OK, "pong", Some(data));
            }
            Request::Start {
                id,
                timeout_ms,
                with_deps,
            } => {
                if with_deps {
                    if self.lookup(conn, &id).is_some() {
                        let chain = self.dependency_chain(&id);
                        self.start_batch(Some(conn), batch::Op::Up, chain);
                    }
                } else {
                    self.start_one(conn, &id, timeout_ms.map(Duration::from_millis), false);
                }
            }
            Request::Restart { id, timeout_ms } => {
                self.start_one(conn, &id, timeout_ms.map(Duration::from_millis), true)
            }
            Request::Stop { id, timeout_ms } => {
                if let Some(idx) = self.lookup(conn, &id) {
                    self.stop_one(
                        conn,
                        idx,
                        Event::Stop {
                            timeout: timeout_ms.map(Duration::from_millis),
                        },
                    );
                }
            }
            Request::Kill { id } => {
                if let Some(idx) = self.lookup(conn, &id) {
                    self.stop_one(conn, idx, Event::Kill);
                }
            }
            Request::Reset { id } => {
                if let Some(idx) = self.lookup(conn, &id) {
                    self.stop_one(conn, idx, Event::Reset);
                }
            }
            Request::Status { id: Some(id) } => {
                if let Some(idx) = self.lookup(conn, &id) {
                    self.refresh_log_space(idx);
                    let st = self.status_of(idx, true);
                    let code = if self.insts[idx].state() == State::Running {
                        code::OK
                    } else {
                        code::NOT_RUNNING
                    };
                    self.reply_done(
                        conn,
                        code,
                        String::new(),
                        Some(serde_json::to_value(vec![st]).unwrap_or_default()),
                    );
                }
            }
            Request::Status { id: None } | Request::List {} => {
                let all: Vec<InstanceStatus> = (0..self.insts.len())
                    .map(|i| self.status_of(i, false))
                    .collect();
                self.reply_done(
                    conn,
                    code::OK,
                    String::new(),
                    Some(serde_json::to_value(all).unwrap_or_default()),
                );
            }
            Request::Monitor { id, depth } => {
                if let Some(idx) = self.lookup(conn, &id) {
                    self.monitor(conn, idx, depth);
                }
            }
            Request::Up {} => {
                let all: Vec<String> = self
                    .insts
                    .iter()
                    .filter(|i| i.spec.enabled && !i.removed)
                    .map(|i| i.id().to_string())
                    .collect();
                self.start_batch(Some(conn), batch::Op::Up, all);
            }
            Request::Down {} => {
                let all: Vec<String> = self.insts.iter().map(|i| i.id().to_string()).collect();
                self.start_batch(Some(conn), batch::Op::Down, all);
            }
            Request::Reload {} => {
                let (c, msg) = self.reload();
                self.reply_done(conn, c, msg, None);
            }
            Request::Shutdown {} => self.begin_shutdown(Some(conn)),
        }
    }

    /// Root and the daemon's own user may do anything; members of the
    /// configured status group may read.
    fn authorize(&self, peer: Peer, req: &Request) -> Result<(), Denied> {
        let me = nix::unistd::geteuid().as_raw();
        if peer.uid == 0 || peer.uid == me {
            return Ok(());
        }
        if req.is_read_only()
            && let Some(gid) = self.status_gid
            && in_group(peer, gid)
        {
            return Ok(());
        }
        Err(Denied {
            uid: peer.uid,
            op: op_name(req),
            me,
            readers: self
                .config
                .supervisor
                .status_group
                .as_ref()
                .map(|g| format!("; group {g} may read status"))
                .unwrap_or_default(),
        })
    }

    /// The instance's index, or an error answer naming the known ones.
    pub(super) fn lookup(&mut self, conn: u64, id: &str) -> Option<usize> {
        if let Some(idx) = self.idx_of(id) {
            return Some(idx);
        }
        let names: Vec<&str> = self.insts.iter().map(|i| i.id()).collect();
        let hint = match config::reader::did_you_mean(id, &names) {
            Some(s) => format!("; did you mean `{s}`?"),
            None if names.len() <= 12 => format!("; known: {}", names.join(", ")),
            None => String::new(),
        };
        let msg = format!(
            "unknown instance `{id}` in {}{hint}",
            self.opts.config_dir.display()
        );
        // Marked, so that a stop of an instance this daemon does not know
        // can still answer from the node's cgroups (guarantee 9).
        let data = serde_json::json!({ "unknown_instance": id });
        self.reply_done(conn, code::INVALID, msg, Some(data));
        None
    }

    fn start_one(&mut self, conn: u64, id: &str, timeout: Option<Duration>, restart: bool) {
        let Some(idx) = self.lookup(conn, id) else {
            return;
        };
        let inst = &self.insts[idx];
        if inst.removed {
            let msg = format!(
                "{id} was removed from the instances file by a reload: it cannot be started (stop it, or put it back and reload)"
            );
            self.reply_done(conn, code::FAILED, msg, None);
            return;
        }
        // Guarantee 7: a populated cgroup is a running copy, whatever the
        // state says; it is adopted, never joined by a second copy.
        if inst.state() == State::Stopped && self.adopt_from_cgroup(idx) {
            let msg = format!(
                "{id} is already running (processes found in its cgroup were adopted: {})",
                self.members(idx)
                    .iter()
                    .map(|(p, _)| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            if !restart {
                self.reply_done(conn, code::OK, msg, None);
                return;
            }
        }
        let inst = &self.insts[idx];
        if !restart && inst.state() == State::Running {
            let msg = format!("{id} is already running");
            self.reply_done(conn, code::OK, msg, None);
            return;
        }
        if let Some(missing) = self.missing_dependency(idx) {
            self.reply_done(conn, code::FAILED, missing, None);
            return;
        }
        self.insts[idx].waiters.push((conn, WaitFor::Start));
        if restart && self.insts[idx].state().may_have_processes() {
            self.post(idx, Event::Stop { timeout: None });
        }
        self.post(idx, Event::Start { timeout });
    }

    /// `after` dependencies that are not running, as an error message.
    pub(super) fn missing_dependency(&self, idx: usize) -> Option<String> {
        let spec = &self.insts[idx].spec;
        let down: Vec<&str> = spec
            .after
            .iter()
            .filter(|d| {
                self.idx_of(d)
                    .is_none_or(|i| self.insts[i].state() != State::Running)
            })
            .map(String::as_str)
            .collect();
        if down.is_empty() {
            return None;
        }
        Some(format!(
            "{} starts after {} (after = {:?}), which {} not running: start {} first, or use `cohost start {} --with-deps`",
            spec.id,
            down.join(", "),
            spec.after,
            if down.len() == 1 { "is" } else { "are" },
            if down.len() == 1 { "it" } else { "them" },
            spec.id
        ))
    }

    fn stop_one(&mut self, conn: u64, idx: usize, ev: Event) {
        // Guarantee 7: whatever our state says, a stop or kill reaches
        // every process in the instance's cgroup.
        if self.insts[idx].state() == State::Stopped {
            self.adopt_from_cgroup(idx);
        }
        let inst = &self.insts[idx];
        if inst.state() == State::Stopped && !inst.procs.iter().any(|p| p.alive()) {
            let msg = format!("{} is stopped", inst.id());
            self.reply_done(conn, code::OK, msg, None);
            return;
        }
        self.insts[idx].waiters.push((conn, WaitFor::Stop));
        self.post(idx, ev);
    }

    pub fn status_of(&self, idx: usize, detail: bool) -> InstanceStatus {
        let inst: &Inst = &self.insts[idx];
        let now = Instant::now();
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
            usage: self.usage_of(idx),
        }
    }

    /// Rereads the instances file. Running instances are not touched: a
    /// changed definition waits for their next start; an invalid file
    /// changes nothing.
    pub fn reload(&mut self) -> (i32, String) {
        let cfg = match config::load(&self.opts.config_dir, Trust::for_current_user()) {
            Ok(c) => c,
            Err(diags) => {
                let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
                return (
                    code::INVALID,
                    format!(
                        "the instances file is invalid; nothing changed:\n{}",
                        text.join("\n")
                    ),
                );
            }
        };
        let now = Instant::now();
        let mut added = Vec::new();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let new_ids: BTreeMap<&String, &Arc<crate::model::InstanceSpec>> =
            cfg.instances.iter().collect();
        let mut release = Vec::new();
        for (idx, inst) in self.insts.iter_mut().enumerate() {
            match new_ids.get(&inst.spec.id) {
                None => {
                    if !inst.removed {
                        inst.removed = true;
                        removed.push(inst.spec.id.clone());
                    }
                    release.push(idx);
                }
                Some(spec) => {
                    inst.removed = false;
                    let current = inst.next_spec.as_ref().unwrap_or(&inst.spec);
                    if current.fingerprint() != spec.fingerprint() {
                        changed.push(inst.spec.id.clone());
                        inst.next_spec = Some((*spec).clone());
                        if inst.state() == State::Stopped || inst.state() == State::Failed {
                            inst.apply_next_spec();
                        }
                    }
                }
            }
        }
        for idx in release {
            self.release_spare_cgroup(idx);
        }
        for (id, spec) in &cfg.instances {
            if !self.index.contains_key(id) {
                self.index.insert(id.clone(), self.insts.len());
                self.insts.push(Inst::new(spec.clone(), now));
                added.push(id.clone());
            }
        }
        self.config = Arc::new(cfg);
        self.sync_addresses();
        let msg = format!(
            "reloaded: {} added, {} changed (applied at their next start), {} removed (refused new starts)",
            list(&added),
            list(&changed),
            list(&removed)
        );
        tracing::info!("{msg}");
        (code::OK, msg)
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
    }
}

fn op_name(r: &Request) -> &'static str {
    match r {
        Request::Ping {} => "ping",
        Request::Start { .. } => "start",
        Request::Stop { .. } => "stop",
        Request::Restart { .. } => "restart",
        Request::Kill { .. } => "kill",
        Request::Reset { .. } => "reset",
        Request::Status { .. } => "status",
        Request::List {} => "list",
        Request::Monitor { .. } => "monitor",
        Request::Up {} => "up",
        Request::Down {} => "down",
        Request::Reload {} => "reload",
        Request::Shutdown {} => "shutdown",
    }
}

/// The client's instances dir is the daemon's (canonical since start-up).
/// The same string needs no syscall; otherwise the client's path is
/// resolved (symlinks, `..`) once.
fn same_dir(client: &str, ours: &str) -> bool {
    client == ours || std::fs::canonicalize(client).is_ok_and(|c| c == std::path::Path::new(ours))
}

/// Is the peer in group `gid`? Its primary gid, or its supplementary
/// groups as /proc/PID/status lists them (no name service on the loop).
fn in_group(peer: Peer, gid: u32) -> bool {
    if peer.gid == gid {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{}/status", peer.pid))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|gs| gs.split_whitespace().any(|x| x.parse() == Ok(gid)))
        })
        .unwrap_or(false)
}

impl Daemon {
    /// The log file system's free space, asked for on the worker (the log
    /// directory is often on the instance's storage: a statfs there hangs
    /// with it). A status shows the last answer; it asks again when that
    /// is over a second old and no question is out. Nothing asks unless a
    /// status is requested.
    fn refresh_log_space(&mut self, idx: usize) {
        let ls = &self.insts[idx].log_space;
        let fresh = ls
            .asked
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
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
        ls.asked = Some(Instant::now());
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
