//! `cohost ocf ACTION`: the OCF resource agent (Pacemaker's `ocf:` class).
//!
//! Parameters come as OCF_RESKEY_instance (required), OCF_RESKEY_config,
//! OCF_RESKEY_runtime_dir. Exit codes per the OCF resource agent API:
//! the distinction that matters most to a cluster is 7 (not running here:
//! retry, relocate) versus 6 (misconfigured: do not run it anywhere). A
//! missing shared disk on this node is 7 for monitor and 1 for start, never
//! 6; `stop` never answers 7; `meta-data` needs no access to anything.

use std::time::Duration;

use crate::cli::Ctx;
use crate::config::{self, Trust};

pub const SUCCESS: i32 = 0;
pub const ERR_GENERIC: i32 = 1;
pub const ERR_ARGS: i32 = 2;
pub const ERR_UNIMPLEMENTED: i32 = 3;
pub const ERR_PERM: i32 = 4;
pub const ERR_INSTALLED: i32 = 5;
pub const ERR_CONFIGURED: i32 = 6;
pub const NOT_RUNNING: i32 = 7;

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
        runtime = crate::cli::DEFAULT_RUNTIME_DIR,
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

/// Maps the answer of a cohost command (CLI exit code) for an action.
pub fn map_code(action: &str, code: i32) -> i32 {
    match (action, code) {
        (_, 0) => SUCCESS,
        // Unknown instance or invalid instances file: misconfigured.
        (_, 2) => ERR_CONFIGURED,
        (_, 4) => ERR_PERM,
        ("monitor", 7) => NOT_RUNNING,
        // Never 7 from anything but monitor.
        _ => ERR_GENERIC,
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn run(action: &str) -> i32 {
    match action {
        "meta-data" => {
            print!("{}", meta_data());
            return SUCCESS;
        }
        "usage" | "help" => {
            println!("{USAGE}");
            return SUCCESS;
        }
        "start" | "stop" | "monitor" | "status" | "reload" | "validate-all" => {}
        _ => {
            eprintln!("{USAGE}");
            return ERR_UNIMPLEMENTED;
        }
    }
    let Some(id) = env("OCF_RESKEY_instance") else {
        reason("the parameter `instance` (OCF_RESKEY_instance) is required");
        return ERR_CONFIGURED;
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
            let v = validate(&ctx, &id);
            if v != SUCCESS {
                return v;
            }
            let (code, msg) = crate::cli::start_quiet(&ctx, &id, start_timeout());
            if code != 0 {
                reason(&msg);
            }
            map_code("start", code)
        }
        "stop" => {
            let (code, msg) = crate::cli::stop_quiet(&ctx, &id, None);
            if code != 0 {
                reason(&msg);
            }
            map_code("stop", code)
        }
        "monitor" | "status" => {
            let depth = env("OCF_CHECK_LEVEL")
                .and_then(|l| l.parse::<u8>().ok())
                .unwrap_or(0);
            let (code, msg) = crate::cli::monitor_quiet(&ctx, &id, depth);
            if code != 0 && code != 7 {
                reason(&msg);
            }
            map_code("monitor", code)
        }
        "reload" => {
            let (code, msg) = crate::cli::reload_quiet(&ctx);
            if code != 0 {
                reason(&msg);
            }
            map_code("reload", code)
        }
        _ => ERR_UNIMPLEMENTED,
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
fn validate(ctx: &Ctx, id: &str) -> i32 {
    let cfg = match config::load(&ctx.config, Trust::for_current_user()) {
        Ok(c) => c,
        Err(diags) => {
            let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            reason(&format!(
                "the instances file {} is invalid: {}",
                ctx.config.display(),
                text.join("; ")
            ));
            return ERR_CONFIGURED;
        }
    };
    let Some(spec) = cfg.get(id) else {
        reason(&format!("no instance `{id}` in {}", ctx.config.display()));
        return ERR_CONFIGURED;
    };
    if let Err(e) =
        crate::process::spawn::resolve_creds(spec.run.user.as_deref(), spec.run.group.as_deref())
    {
        reason(&format!("{id}: {e}"));
        return ERR_INSTALLED;
    }
    let path = spec
        .run
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
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
            return ERR_INSTALLED;
        }
    }
    SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_table() {
        // (action, cohost exit code, OCF code)
        let table = [
            ("start", 0, SUCCESS),
            ("start", 1, ERR_GENERIC),
            ("start", 2, ERR_CONFIGURED),
            ("stop", 0, SUCCESS),
            ("stop", 1, ERR_GENERIC),
            ("stop", 7, ERR_GENERIC),
            ("monitor", 0, SUCCESS),
            ("monitor", 7, NOT_RUNNING),
            ("monitor", 1, ERR_GENERIC),
            ("monitor", 2, ERR_CONFIGURED),
            ("monitor", 4, ERR_PERM),
        ];
        for (action, code, want) in table {
            assert_eq!(map_code(action, code), want, "{action} {code}");
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
