//! Commands that read the instances file themselves: validate, env, exec,
//! logs, import, and answers when no daemon runs.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Ctx;
use crate::config::{self, Trust};
use crate::control::client::Done;
use crate::control::proto::InstanceStatus;
use crate::model::InstanceSpec;
use crate::process::spawn::{self, ExecPlan, Output, Spawn};

pub use crate::ops::lookup::instance_ids;
use crate::ops::lookup::{instance, load};

/// The instance's definition in the instances file.
pub fn spec(ctx: &Ctx, id: &str) -> Result<std::sync::Arc<InstanceSpec>, (i32, String)> {
    instance(ctx, id)
}

/// For commands that look inside a running instance (verify, exec --join):
/// its definition and its status; on error the message is printed and the
/// exit code returned.
pub fn spec_and_status(
    ctx: &Ctx,
    id: &str,
) -> Result<(std::sync::Arc<InstanceSpec>, Option<InstanceStatus>), i32> {
    let fail = |(code, msg): (i32, String)| {
        eprintln!("cohost: {msg}");
        code
    };
    let spec = spec(ctx, id).map_err(fail)?;
    let (st, _) = crate::ops::status_code(ctx, id).map_err(fail)?;
    Ok((spec, st))
}

fn fail((code, msg): (i32, String)) -> i32 {
    eprintln!("cohost: {msg}");
    code
}

/// How long `validate` waits for the host to answer about paths (a hung
/// shared disk must not hang it).
const HOST_CHECK_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

pub fn validate(ctx: &Ctx) -> i32 {
    let loaded = config::load(&ctx.config, Trust::for_current_user()).and_then(|cfg| {
        let (diags, notes) = config::hostcheck::check(&cfg, HOST_CHECK_LIMIT);
        for n in notes {
            eprintln!("note: {n}");
        }
        if diags.is_empty() {
            Ok(cfg)
        } else {
            Err(diags)
        }
    });
    match loaded {
        Ok(cfg) => {
            let services: std::collections::BTreeSet<&str> =
                cfg.instances.values().map(|i| i.service.as_str()).collect();
            outln!(
                "{}: valid ({} instance{}, {} service{} used)",
                ctx.config.display(),
                cfg.instances.len(),
                if cfg.instances.len() == 1 { "" } else { "s" },
                services.len(),
                if services.len() == 1 { "" } else { "s" }
            );
            0
        }
        Err(diags) => {
            let mut err = std::io::stderr().lock();
            for d in &diags {
                let _ = writeln!(err, "{d}");
            }
            let _ = writeln!(
                err,
                "{} problem{} found",
                diags.len(),
                if diags.len() == 1 { "" } else { "s" }
            );
            2
        }
    }
}

/// The instance's environment as its processes see it (the `setup_env.sh`
/// of that instance): `. <(cohost env essrv01)`.
pub fn env(ctx: &Ctx, id: &str) -> i32 {
    let spec = match instance(ctx, id) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let creds = spawn::resolve_creds(spec.run.user.as_deref(), spec.run.group.as_deref())
        .ok()
        .flatten();
    let mut out = std::io::stdout().lock();
    for (k, v) in spawn::environment(&spec.run, creds.as_ref(), &spec.run.pass_env) {
        let _ = writeln!(out, "export {k}={}", shell_quote(&v));
    }
    0
}

fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// Runs CMD in the instance's context: its environment, user, working
/// directory, logical host name and bind paths. The exit status is CMD's.
pub fn exec(ctx: &Ctx, id: &str, cmd: &[String]) -> i32 {
    let spec = match instance(ctx, id) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let plan = ExecPlan::new(Spawn {
        argv: cmd,
        run: &spec.run,
        output: Output::Inherit,
        cgroups: Vec::new(),
        into_cgroup: None,
        inherit: None,
        setsid: false,
    });
    let err = match plan {
        Ok(p) => p.exec_here(),
        Err(e) => e,
    };
    eprintln!("cohost: exec in {id}: {err}");
    if err.is_not_installed() { 127 } else { 126 }
}

/// The log directory and the process log files of an instance.
fn log_files(ctx: &Ctx, spec: &InstanceSpec) -> (PathBuf, Vec<PathBuf>) {
    let dir = spec
        .log_dir
        .clone()
        .unwrap_or_else(|| ctx.runtime_dir.join("logs").join(&spec.id));
    let mut files = Vec::new();
    for p in &spec.processes {
        if p.count == 1 {
            files.push(dir.join(format!("{}.log", p.name)));
        } else {
            for k in 1..=p.count {
                files.push(dir.join(format!("{}.{k}.log", p.name)));
            }
        }
    }
    (dir, files)
}

pub fn logs(ctx: &Ctx, id: &str, follow: bool, lines: usize) -> i32 {
    let spec = match instance(ctx, id) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let (dir, files) = log_files(ctx, &spec);
    let existing: Vec<&PathBuf> = files.iter().filter(|f| f.exists()).collect();
    if existing.is_empty() {
        eprintln!("cohost: no log of {id} in {} yet", dir.display());
        return if follow { follow_logs(&files, true) } else { 1 };
    }
    let many = files.len() > 1;
    for f in &existing {
        if many {
            outln!("==> {} <==", f.display());
        }
        let text = crate::util::tail(f, lines);
        for l in text {
            outln!("{l}");
        }
    }
    if follow { follow_logs(&files, many) } else { 0 }
}

/// `logs -f`: print what is appended, woken by inotify (no polling).
fn follow_logs(files: &[PathBuf], label: bool) -> i32 {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::io::{Read, Seek, SeekFrom};
    let Ok(ino) = Inotify::init(InitFlags::IN_CLOEXEC) else {
        return 1;
    };
    let mut pos: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .collect();
    // Watch the directories: files may be created or rotated (.log -> .log.1).
    let dirs: std::collections::BTreeSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    for d in dirs {
        let _ = ino.add_watch(
            d,
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
        );
    }
    loop {
        if ino.read_events().is_err() {
            return 1;
        }
        for (i, f) in files.iter().enumerate() {
            let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            if len < pos[i] {
                pos[i] = 0; // rotated at a restart: read the new file from the start
            }
            if len == pos[i] {
                continue;
            }
            let Ok(mut fh) = std::fs::File::open(f) else {
                continue;
            };
            let _ = fh.seek(SeekFrom::Start(pos[i]));
            let mut buf = Vec::new();
            let _ = fh.read_to_end(&mut buf);
            pos[i] += buf.len() as u64;
            let text = String::from_utf8_lossy(&buf);
            let mut out = std::io::stdout().lock();
            for l in text.lines() {
                let _ = if label {
                    writeln!(
                        out,
                        "{}: {l}",
                        f.file_stem().unwrap_or_default().to_string_lossy()
                    )
                } else {
                    writeln!(out, "{l}")
                };
            }
            let _ = out.flush();
        }
    }
}

pub fn import(file: &Path, service: &str) -> i32 {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cohost: {}: {e}", file.display());
            return 2;
        }
    };
    match config::import::import(&text, service) {
        Ok(toml) => {
            out!(
                "# imported from {} by cohost import\n\n{toml}",
                file.display()
            );
            0
        }
        Err(errs) => {
            for e in errs {
                eprintln!("{}:{}: {}", file.display(), e.line, e.message);
            }
            2
        }
    }
}

/// `status`/`list` with no daemon: every instance is stopped (or failed, as
/// its state file says).
pub fn offline_status(ctx: &Ctx, id: Option<&str>) -> Result<Done, (i32, String)> {
    let cfg = load(ctx)?;
    if let Some(id) = id {
        instance(ctx, id)?;
    }
    let list: Vec<InstanceStatus> = cfg
        .instances
        .values()
        .filter(|s| id.is_none_or(|i| i == s.id))
        .map(|s| InstanceStatus {
            id: s.id.clone(),
            service: s.service.clone(),
            kind: s.kind.as_str().into(),
            state: "stopped".into(),
            healthy: None,
            processes: Vec::new(),
            members: Vec::new(),
            address: s.address.map(|a| a.to_string()),
            port: s.port,
            hostname: s.hostname.clone(),
            since: 0,
            uptime_s: None,
            restarts: 0,
            last_failure: None,
            tracking: format!("no cohost daemon runs for {}", ctx.runtime_dir.display()),
            checks: Vec::new(),
            definition_changed: false,
            removed: false,
            warnings: Vec::new(),
            log_dir: log_files(ctx, s).0.display().to_string(),
            timing: None,
            usage: None,
        })
        .collect();
    Ok(Done {
        code: if id.is_some() { 3 } else { 0 },
        message: String::new(),
        data: serde_json::to_value(list).ok(),
    })
}
