//! Event hooks (`on_event`): a program run for each state change, with
//! the instance, old and new state, reason and node in its environment, so
//! administrators learn that a failover or restart happened. A hook runs
//! as our child in its own session; one that overruns `hook_timeout` is
//! killed (its whole process group); none ever blocks the loop.

use std::time::{Instant, SystemTime};

use super::children::Role;
use super::fsm::State;
use super::{Daemon, timers};
use crate::model::{Isolation, RunContext};
use crate::process::spawn::{ExecPlan, Output, Spawn};

impl Daemon {
    pub(super) fn run_hooks(
        &mut self,
        idx: usize,
        event: &str,
        from: State,
        to: State,
        reason: &str,
    ) {
        let spec = self.insts[idx].spec.clone();
        let hooks: Vec<Vec<String>> = spec
            .on_event
            .iter()
            .chain(self.config.supervisor.on_event.iter())
            .cloned()
            .collect();
        if hooks.is_empty() {
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
            (
                "COHOST_TIME".to_string(),
                humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            ),
            (
                "COHOST_ADDRESS".to_string(),
                spec.address.map(|a| a.to_string()).unwrap_or_default(),
            ),
        ];
        let run = RunContext {
            env,
            pass_env: Vec::new(),
            cwd: "/".into(),
            user: None,
            group: None,
            umask: None,
            rlimits: Vec::new(),
            isolate: Isolation::default(),
            hostname: None,
            shell: false,
        };
        let log = super::exec::open_log(&self.runtime_path("logs"), "hooks", false);
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
                inherit: None,
                setsid: true,
            });
            match plan.and_then(|p| p.spawn()) {
                Ok(child) => {
                    self.children.insert(child.pid, Role::Hook);
                    let at = Instant::now() + self.config.supervisor.hook_timeout;
                    self.timers.add(at, timers::Key::Hook { pid: child.pid });
                }
                Err(e) => tracing::warn!(instance = %spec.id, "event hook {}: {e}", argv.join(" ")),
            }
        }
    }
}
