//! Control requests: authorize, dispatch, answer.
//!
//! A bad request is answered with an error and touches nothing else: no
//! other instance is stopped, restarted or signalled because of it.

use std::time::Duration;

use super::conn::Peer;
use super::fsm::{Event, State};
use super::instance::WaitFor;
use super::{Daemon, batch};
use crate::config;
use crate::control::exit::Exit;
use crate::control::proto::{Envelope, Request};

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
        match self.admit_request(conn, line) {
            Ok(req) => self.serve(conn, req),
            Err((exit, why)) => self.reply_done(conn, exit, why, None),
        }
    }

    /// The request, if it is well formed, its caller may make it, it names
    /// this daemon's instances file and the daemon is not going away.
    fn admit_request(&self, conn: u64, line: &[u8]) -> Result<Request, (Exit, String)> {
        let env: Envelope = serde_json::from_slice(line)
            .map_err(|e| (Exit::Invalid, format!("malformed request: {e}")))?;
        let peer = self.conns[&conn].peer;
        if let Err(why) = self.authorize(peer, &env.req) {
            tracing::warn!(
                uid = peer.uid,
                pid = peer.pid,
                "refused {:?}: {why}",
                op_name(&env.req)
            );
            return Err((Exit::Denied, why.to_string()));
        }
        if let Some(cfg) = &env.config
            && !same_dir(cfg, &self.opts.config_dir.display().to_string())
        {
            return Err((
                Exit::Invalid,
                format!(
                    "the cohost daemon for runtime dir {} runs the instances file {}, not {cfg}; give each instances file its own --runtime-dir",
                    self.opts.runtime_dir.display(),
                    self.opts.config_dir.display()
                ),
            ));
        }
        if self.shutting_down && !env.req.is_read_only() && !matches!(env.req, Request::Shutdown {})
        {
            return Err((
                Exit::Failed,
                "the daemon is shutting down (stopping every instance)".into(),
            ));
        }
        Ok(env.req)
    }

    /// One admitted request: answered now, or queued on its instance (the
    /// table's answer replies later).
    fn serve(&mut self, conn: u64, req: Request) {
        let ms = |t: Option<u64>| t.map(Duration::from_millis);
        match req {
            Request::Ping {} => self.pong(conn),
            Request::Start {
                id,
                with_deps: true,
                ..
            } => {
                if self.lookup(conn, &id).is_some() {
                    let chain = self.dependency_chain(&id);
                    self.start_batch(Some(conn), batch::Op::Up, chain);
                }
            }
            Request::Start { id, timeout_ms, .. } => {
                self.start_one(conn, &id, ms(timeout_ms), false)
            }
            Request::Restart { id, timeout_ms } => self.start_one(conn, &id, ms(timeout_ms), true),
            Request::Stop { id, timeout_ms } => {
                let ev = Event::Stop {
                    timeout: ms(timeout_ms),
                };
                self.stop_id(conn, &id, ev)
            }
            Request::Kill { id } => self.stop_id(conn, &id, Event::Kill),
            Request::Reset { id } => self.stop_id(conn, &id, Event::Reset),
            Request::Status { id: Some(id) } => {
                if let Some(idx) = self.lookup(conn, &id) {
                    self.reply_status(conn, idx);
                }
            }
            // `top`, `metrics` and `status` compute rates from the usage:
            // read now. `list` is the overview: usage up to a second old.
            Request::Status { id: None } => self.reply_list(conn, Duration::ZERO),
            Request::List {} => self.reply_list(conn, super::timing::USAGE_MAX_AGE),
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
            Request::Reload {} => match self.reload() {
                Ok(msg) => self.reply_done(conn, Exit::Ok, msg, None),
                Err(e) => self.reply_done(conn, Exit::Invalid, e.to_string(), None),
            },
            Request::Shutdown {} => self.begin_shutdown(Some(conn)),
        }
    }

    fn pong(&mut self, conn: u64) {
        let data = serde_json::json!({
            "pid": std::process::id(),
            "config": self.opts.config_dir.display().to_string(),
            "runtime_dir": self.opts.runtime_dir.display().to_string(),
            "node": self.node,
        });
        self.reply_done(conn, Exit::Ok, "pong", Some(data));
    }

    fn stop_id(&mut self, conn: u64, id: &str, ev: Event) {
        if let Some(idx) = self.lookup(conn, id) {
            self.stop_one(conn, idx, ev);
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
        self.reply_done(conn, Exit::Invalid, msg, Some(data));
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
            self.reply_done(conn, Exit::Failed, msg, None);
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
                self.reply_done(conn, Exit::Ok, msg, None);
                return;
            }
        }
        let inst = &self.insts[idx];
        if !restart && inst.state() == State::Running {
            let msg = format!("{id} is already running");
            self.reply_done(conn, Exit::Ok, msg, None);
            return;
        }
        if let Some(missing) = self.missing_dependency(idx) {
            self.reply_done(conn, Exit::Failed, missing, None);
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
            self.reply_done(conn, Exit::Ok, msg, None);
            return;
        }
        self.insts[idx].waiters.push((conn, WaitFor::Stop));
        self.post(idx, ev);
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
