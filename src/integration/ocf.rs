//! `cohost ocf ACTION`: the OCF resource agent (Pacemaker's `ocf:` class).
//!
//! Parameters come as OCF_RESKEY_instance (required), OCF_RESKEY_config,
//! OCF_RESKEY_runtime_dir. Exit codes per the OCF resource agent API:
//! the distinction that matters most to a cluster is 7 (not running here:
//! retry, relocate) versus 6 (misconfigured: do not run it anywhere). A
//! missing shared disk on this node is 7 for monitor and 1 for start, never
//! 6; `stop` never answers 7; `meta-data` needs no access to anything.

use std::time::Duration;

use crate::config::{self, Trust};
use crate::ops::Ctx;
use crate::ops::exit::{Exit, Outcome};

/// OCF exit codes (OCF resource agent API, "Return codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ocf {
    Success,
    ErrGeneric,
    ErrArgs,
    ErrUnimplemented,
    ErrPerm,
    ErrInstalled,
    ErrConfigured,
    NotRunning,
}

impl Ocf {
    pub fn code(self) -> i32 {
        match self {
            Ocf::Success => 0,
            Ocf::ErrGeneric => 1,
            Ocf::ErrArgs => 2,
            Ocf::ErrUnimplemented => 3,
            Ocf::ErrPerm => 4,
            Ocf::ErrInstalled => 5,
            Ocf::ErrConfigured => 6,
            Ocf::NotRunning => 7,
        }
    }
}

/// The actions whose answer comes from a cohost command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Monitor,
    Reload,
}

/// The one table from a cohost command's exit to the OCF code of an
/// action. `stop` never reaches `Invalid` for an instance nothing of which
/// runs (the CLI answers `Ok` then, whatever the configuration says:
/// guarantee 9), and nothing but `monitor` ever answers 7.
pub fn map(action: Action, exit: Exit) -> Ocf {
    match (action, exit) {
        (_, Exit::Ok) => Ocf::Success,
        // Unknown instance or invalid instances file: misconfigured.
        (_, Exit::Invalid) => Ocf::ErrConfigured,
        (_, Exit::Denied) => Ocf::ErrPerm,
        (Action::Monitor, Exit::Stopped) => Ocf::NotRunning,
        (_, Exit::Failed | Exit::NotRunning | Exit::Stopped) => Ocf::ErrGeneric,
    }
}

/// The agent's meta-data (ra-api-1.dtd, OCF 1.1).
pub fn meta_data() -> String {
    format!(
        r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="instance" version="{version}">
<version>1.1</version>
<longdesc lang="en">
Runs one instance of a service under the cohost supervisor: a named copy
bound to its own logical address, host name and shared storage, as declared
in the cohost instances file. Several instances of one service may run on a
node at once (mutual takeover); stopping one never touches another.
start waits until the instance's readiness check passes; monitor reports
process state (OCF_CHECK_LEVEL 0) or runs the health checks now (10).
</longdesc>
<shortdesc lang="en">cohost instance (multi-instance services for takeover)</shortdesc>
<parameters>
<parameter name="instance" unique="1" required="1">
<longdesc lang="en">The instance ID, as in [instance.ID] of the instances file.</longdesc>
<shortdesc lang="en">Instance ID</shortdesc>
<content type="string"/>
</parameter>
<parameter name="config" unique="0" required="0">
<longdesc lang="en">The instances directory (*.toml files).</longdesc>
<shortdesc lang="en">Instances directory</shortdesc>
<content type="string" default="{config}"/>
</parameter>
<parameter name="runtime_dir" unique="0" required="0">
<longdesc lang="en">The runtime dir of the cohost supervisor to use (control socket, state).</longdesc>
<shortdesc lang="en">Runtime directory</shortdesc>
<content type="string" default="{runtime}"/>
</parameter>
</parameters>
<actions>
<action name="start" timeout="90s"/>
<action name="stop" timeout="60s"/>
<action name="monitor" timeout="30s" interval="10s" depth="0"/>
<action name="monitor" timeout="30s" interval="60s" depth="10"/>
<action name="reload" timeout="30s"/>
<action name="validate-all" timeout="30s"/>
<action name="meta-data" timeout="5s"/>
</actions>
</resource-agent>
"#,
        version = env!("CARGO_PKG_VERSION"),
        config = config::DEFAULT_DIR,
        runtime = crate::ops::DEFAULT_RUNTIME_DIR,
    )
}

const USAGE: &str = "usage: cohost ocf {start|stop|monitor|reload|validate-all|meta-data} (parameters: OCF_RESKEY_instance, OCF_RESKEY_config, OCF_RESKEY_runtime_dir)";

/// Prints a reason Pacemaker shows in `crm_mon` (OCF_EXIT_REASON_PREFIX).
fn reason(msg: &str) {
    let prefix =
        std::env::var("OCF_EXIT_REASON_PREFIX").unwrap_or_else(|_| "ocf-exit-reason:".into());
    let first = msg.lines().next().unwrap_or(msg);
    eprintln!("{prefix}{first}");
    if msg.lines().count() > 1 {
        eprintln!("{msg}");
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn run(action: &str) -> i32 {
    run_action(action).code()
}

/// Says why (when it failed) and maps the outcome.
fn answer(action: Action, o: Outcome) -> Ocf {
    let code = map(action, o.exit);
    if code != Ocf::Success && code != Ocf::NotRunning {
        reason(&o.message);
    }
    code
}

fn run_action(action: &str) -> Ocf {
    match action {
        "meta-data" => {
            out!("{}", meta_data());
            return Ocf::Success;
        }
        "usage" | "help" => {
            outln!("{USAGE}");
            return Ocf::Success;
        }
        "start" | "stop" | "monitor" | "status" | "reload" | "validate-all" => {}
        _ => {
            eprintln!("{USAGE}");
            return Ocf::ErrUnimplemented;
        }
    }
    let Some(id) = env("OCF_RESKEY_instance") else {
        reason("the parameter `instance` (OCF_RESKEY_instance) is required");
        // A stop of nothing named cannot fail (guarantee 9).
        return if action == "stop" {
            Ocf::Success
        } else {
            Ocf::ErrConfigured
        };
    };
    let ctx = Ctx::new(
        env("OCF_RESKEY_config")
            .map(Into::into)
            .or_else(|| env("COHOST_CONFIG").map(Into::into)),
        env("OCF_RESKEY_runtime_dir")
            .map(Into::into)
            .or_else(|| env("COHOST_RUNTIME_DIR").map(Into::into)),
    );
    match action {
        "validate-all" => validate(&ctx, &id),
        "start" => {
            // A running daemon knows the instances file it runs and answers
            // for the ID itself: reading the whole file here as well cost
            // every agent call O(N), a node taking N resources over O(N^2)
            // (benches/README.md). The file is read here when no daemon
            // runs yet (none is launched for a file that cannot run), and
            // after a failed start, to say 6 or 5 rather than 1.
            let daemon_runs = ctx
                .runtime_dir
                .join(crate::control::client::SOCKET_NAME)
                .exists();
            if !daemon_runs {
                let v = validate(&ctx, &id);
                if v != Ocf::Success {
                    return v;
                }
            }
            let o = crate::ops::start(&ctx, &id, start_timeout());
            if daemon_runs && o.exit != Exit::Ok {
                let v = validate(&ctx, &id);
                if v != Ocf::Success {
                    return v;
                }
            }
            answer(Action::Start, o)
        }
        "stop" => answer(Action::Stop, crate::ops::stop(&ctx, &id, None)),
        "monitor" | "status" => {
            let depth = env("OCF_CHECK_LEVEL")
                .and_then(|l| l.parse::<u8>().ok())
                .unwrap_or(0);
            answer(Action::Monitor, crate::ops::monitor(&ctx, &id, depth))
        }
        "reload" => answer(Action::Reload, crate::ops::reload(&ctx)),
        _ => Ocf::ErrUnimplemented,
    }
}

/// The start must answer before Pacemaker's own timeout kills us, so that
/// the reason reaches the cluster: use most of OCF_RESKEY_CRM_meta_timeout.
fn start_timeout() -> Option<f64> {
    let ms: u64 = env("OCF_RESKEY_CRM_meta_timeout")?.parse().ok()?;
    let t = Duration::from_millis(ms).saturating_sub(Duration::from_secs(5));
    (t > Duration::from_secs(1)).then_some(t.as_secs_f64())
}

/// validate-all: the instances file parses, the instance exists (else 6);
/// its programs and user exist on this node (else 5). Node state (a shared
/// disk not mounted here) is not a configuration error: 0.
fn validate(ctx: &Ctx, id: &str) -> Ocf {
    let cfg = match config::load(&ctx.config, Trust::for_current_user()) {
        Ok(c) => c,
        Err(diags) => {
            let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            reason(&format!(
                "the instances file {} is invalid: {}",
                ctx.config.display(),
                text.join("; ")
            ));
            return Ocf::ErrConfigured;
        }
    };
    let Some(spec) = cfg.get(id) else {
        reason(&format!("no instance `{id}` in {}", ctx.config.display()));
        return Ocf::ErrConfigured;
    };
    if let Err(e) =
        crate::process::spawn::resolve_creds(spec.run.user.as_deref(), spec.run.group.as_deref())
    {
        reason(&format!("{id}: {e}"));
        return Ocf::ErrInstalled;
    }
    let path = spec
        .run
        .env
        .get("PATH")
        .map(str::to_string)
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| crate::process::spawn::DEFAULT_PATH.into());
    for p in &spec.processes {
        if let Some(prog) = p.argv.first()
            && let Err(e) = crate::process::spawn::find_program(prog, &path)
        {
            // A program on the (not yet mounted) shared disk is node state.
            let on_shared = spec
                .paths
                .values()
                .any(|sp| std::path::Path::new(prog).starts_with(sp));
            if on_shared {
                continue;
            }
            reason(&format!("{id}: {e}"));
            return Ocf::ErrInstalled;
        }
    }
    Ocf::Success
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_table() {
        use Action::*;
        // (action, cohost exit, OCF code)
        let table = [
            (Start, Exit::Ok, 0),
            (Start, Exit::Failed, 1),
            (Start, Exit::Invalid, 6),
            (Stop, Exit::Ok, 0),
            (Stop, Exit::Failed, 1),
            (Stop, Exit::Stopped, 1),
            (Stop, Exit::Denied, 4),
            (Monitor, Exit::Ok, 0),
            (Monitor, Exit::Stopped, 7),
            (Monitor, Exit::Failed, 1),
            (Monitor, Exit::Invalid, 6),
            (Monitor, Exit::Denied, 4),
            (Reload, Exit::Invalid, 6),
        ];
        for (action, exit, want) in table {
            assert_eq!(map(action, exit).code(), want, "{action:?} {exit:?}");
        }
    }

    #[test]
    fn meta_data_names_parameters_and_actions() {
        let m = meta_data();
        for needle in [
            r#"<parameter name="instance" unique="1" required="1">"#,
            r#"<parameter name="config""#,
            r#"<parameter name="runtime_dir""#,
            r#"<action name="monitor" timeout="30s" interval="10s" depth="0"/>"#,
            r#"<action name="validate-all""#,
        ] {
            assert!(m.contains(needle), "{needle}");
        }
    }
}
