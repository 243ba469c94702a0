//! Event hooks (`on_event`): a program run for each state change, with
//! the instance, old and new state, reason and node in its environment, so
//! administrators learn that a failover or restart happened.
//!
//! Per instance, events are delivered in order: the hooks of one event
//! (the instance's and the supervisor's, together) finish, or are killed at
//! `hook_timeout`, before those of the next one start. A hook runs as our
//! child in its own session; none ever blocks the loop.

use std::collections::VecDeque;
use std::time::SystemTime;

use super::fsm::State;
use super::registry::Role;
use super::{Daemon, timers};
use crate::model::RunContext;
use crate::process::spawn::{ExecPlan, Output, Spawn};

/// One event waiting for its hooks to run.
#[derive(Debug, Clone)]
pub struct Pending {
    env: Vec<(String, String)>,
}

/// The hook queue of one instance.
#[derive(Debug, Default)]
pub struct HookQueue {
    pending: VecDeque<Pending>,
    /// Hook processes of the event being delivered.
    running: usize,
}

impl Daemon {
    /// Queues the event for the instance's and the supervisor's hooks.
    pub(super) fn run_hooks(
        &mut self,
        idx: usize,
        event: &str,
        from: State,
        to: State,
        reason: &str,
    ) {
        let spec = &self.insts[idx].spec;
        if spec.on_event.is_empty() && self.config.supervisor.on_event.is_empty() {
            return;
        }
        let env = vec![
            ("COHOST_EVENT".to_string(), event.to_string()),
            ("COHOST_INSTANCE".to_string(), spec.id.clone()),
            ("COHOST_SERVICE".to_string(), spec.service.clone()),
            ("COHOST_OLD_STATE".to_string(), from.as_str().to_string()),
            ("COHOST_NEW_STATE".to_string(), to.as_str().to_string()),
            ("COHOST_REASON".to_string(), reason.to_string()),
            ("COHOST_NODE".to_string(), self.node.clone()),
            // The time of the event, not of the hook's run.
            (
                "COHOST_TIME".to_string(),
                humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            ),
            (
                "COHOST_ADDRESS".to_string(),
                spec.address.map(|a| a.to_string()).unwrap_or_default(),
            ),
        ];
        let mut env = env;
        if event == "ready"
            && let Some(t) = &self.insts[idx].obs.last
        {
            env.extend(super::timing::hook_env(t));
        }
        self.insts[idx].hooks.pending.push_back(Pending { env });
        self.next_hooks(idx);
    }

    /// A hook process of instance `idx` ended.
    pub(super) fn hook_exited(&mut self, idx: usize) {
        let q = &mut self.insts[idx].hooks;
        q.running = q.running.saturating_sub(1);
        self.next_hooks(idx);
    }

    /// Starts the hooks of the next queued event, if none are running.
    fn next_hooks(&mut self, idx: usize) {
        while self.insts[idx].hooks.running == 0 {
            let Some(ev) = self.insts[idx].hooks.pending.pop_front() else {
                return;
            };
            let n = self.spawn_hooks(idx, ev);
            self.insts[idx].hooks.running = n;
        }
    }

    /// Spawns every hook for one event; returns how many run.
    fn spawn_hooks(&mut self, idx: usize, ev: Pending) -> usize {
        let spec = self.insts[idx].spec.clone();
        let hooks: Vec<Vec<String>> = spec
            .on_event
            .iter()
            .chain(self.config.supervisor.on_event.iter())
            .cloned()
            .collect();
        let run = RunContext::bare(ev.env);
        let log = super::exec::open_log(&self.runtime_path("logs"), "hooks", false);
        let mut n = 0;
        for argv in hooks {
            let output = match &log {
                Ok(f) => f.try_clone().map(Output::File).unwrap_or(Output::Null),
                Err(_) => Output::Null,
            };
            let plan = ExecPlan::new(Spawn {
                argv: &argv,
                run: &run,
                output,
                cgroups: Vec::new(),
                into_cgroup: None,
                inherit: None,
                setsid: true,
            });
            match plan.and_then(|p| self.host.spawn(p)) {
                Ok(child) => {
                    self.reg.child(child.pid, Role::Hook { idx });
                    let at = self.host.now() + self.config.supervisor.hook_timeout;
                    self.timers.add(at, timers::Key::Hook { pid: child.pid });
                    n += 1;
                }
                Err(e) => tracing::warn!(instance = %spec.id, "event hook {}: {e}", argv.join(" ")),
            }
        }
        n
    }
}
