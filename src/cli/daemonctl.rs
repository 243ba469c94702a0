//! Commands answered by the daemon, and starting the daemon when needed.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::exit::{Exit, Outcome};
use super::{Ctx, offline, output};
use crate::control::client::{self, ClientError, Done};
use crate::control::proto::{Envelope, InstanceStatus, Request};
use crate::rundir::RuntimeDir;

/// How long `cohost start` waits for a daemon it launched to listen.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

/// When a command may launch the daemon.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Launch {
    /// It needs one (start, up).
    Always,
    /// Only if the runtime state says something may still run (a crashed
    /// daemon's instances must be adopted before anyone answers for them).
    IfState,
}

fn envelope(ctx: &Ctx, req: Request) -> Envelope {
    Envelope {
        config: ctx
            .config_explicit
            .then(|| ctx.config.display().to_string()),
        req,
    }
}

fn ms(s: Option<f64>) -> Option<u64> {
    s.map(|s| (s.max(0.0) * 1000.0) as u64)
}

/// Connects, launching the daemon if `launch` allows. `Ok(None)`: no
/// daemon, and none was needed.
fn connect(
    ctx: &Ctx,
    launch: Launch,
    id: Option<&str>,
) -> Result<Option<UnixStream>, (i32, String)> {
    match client::connect(&ctx.runtime_dir) {
        Ok(s) => return Ok(Some(s)),
        Err(ClientError::NoDaemon(_)) => {}
        Err(e) => return Err(client_failure(e)),
    }
    if launch == Launch::IfState && !state_says_live(&ctx.runtime_dir, id) {
        return Ok(None);
    }
    launch_daemon(ctx)?;
    client::connect(&ctx.runtime_dir)
        .map(Some)
        .map_err(|e| (1, e.to_string()))
}

/// Does a state file (of `id`, or of any instance) say something may run?
/// Read through the checked runtime dir (never through a link); a dir
/// that cannot be trusted says nothing.
fn state_says_live(rt: &Path, id: Option<&str>) -> bool {
    let Ok(Some(dir)) = RuntimeDir::open_existing(rt) else {
        return false;
    };
    let Ok(state) = dir.subdir_existing("state") else {
        return false;
    };
    let names: Vec<String> = match id {
        Some(id) => vec![format!("{id}.json")],
        None => state
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .collect(),
    };
    names.iter().any(|f| {
        state
            .read(f)
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v.get("state")
                    .and_then(|s| s.as_str())
                    .map(|s| s != "stopped")
            })
            .unwrap_or(false)
    })
}

/// Starts `cohost daemon --foreground` detached (own session, log in the
/// runtime dir) and waits until it listens. Launches are serialized with a
/// lock file, so concurrent `cohost start`s start one daemon.
pub fn launch_daemon(ctx: &Ctx) -> Result<u32, (i32, String)> {
    launch_daemon_with(ctx, &[])
}

/// As [`launch_daemon`], with extra `daemon` options (log format, level).
fn launch_daemon_with(ctx: &Ctx, extra: &[&str]) -> Result<u32, (i32, String)> {
    let rt = &ctx.runtime_dir;
    let dir = RuntimeDir::create(rt).map_err(|e| (1, format!("{e}; or pass --runtime-dir DIR")))?;
    let file_err = |name: &str, e: std::io::Error| {
        (
            1,
            format!(
                "runtime dir {}: {name}: {}",
                dir.path().display(),
                crate::rundir::explain(&e)
            ),
        )
    };
    let lock = dir
        .open("launch.lock", libc::O_WRONLY | libc::O_CREAT)
        .map_err(|e| file_err("launch.lock", e))?;
    // SAFETY: flock on a valid fd; blocks while another client launches.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if client::connect(rt).is_ok() {
        return Ok(0);
    }
    // A daemon that holds this dir but cannot be reached (its socket was
    // deleted with the dir): starting a second one would give every
    // instance a second supervisor. Say what to do instead.
    if let Some(pid) = crate::rundir::holder(dir.path()) {
        let e = crate::rundir::RunDirError::AlreadyRunning {
            path: dir.path().to_path_buf(),
            pid,
            orphaned: true,
        };
        return Err((1, e.to_string()));
    }
    // O_NOFOLLOW: a daemon.log planted as a link is never written through.
    let log = dir
        .append("daemon.log")
        .map_err(|e| file_err("daemon.log", e))?;
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| (1, format!("pipe: {e}")))?;
    let wfd = w.as_raw_fd();
    let exe =
        std::env::current_exe().map_err(|e| (1, format!("finding the cohost binary: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--config")
        .arg(&ctx.config)
        .arg("--runtime-dir")
        .arg(rt)
        .args(["daemon", "--foreground"])
        .args(extra)
        .env("COHOST_NOTIFY_FD", wfd.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| (1, e.to_string()))?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls (setsid, fcntl) in the child.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: not killed with the caller's process group
            // (a cluster agent timing out, an init script's shell).
            libc::setsid();
            libc::fcntl(wfd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| (1, format!("starting the daemon: {e}")))?;
    drop(w);
    let got = read_with_timeout(r, DAEMON_START_TIMEOUT);
    if got.as_deref().is_some_and(|g| g.starts_with("ready")) {
        return Ok(child.id());
    }
    // It did not come up: say why (its log), and do not leave it behind.
    let status = match got {
        // EOF without "ready": it is exiting (its fds close before it can
        // be reaped): wait for its status.
        Some(_) => child.wait().ok().and_then(|s| s.code()),
        // Silent for the whole timeout: stop it.
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let tail = dir
        .open("daemon.log", libc::O_RDONLY)
        .map(|f| crate::indent_lines(crate::util::tail_of(f, 15)))
        .unwrap_or_default();
    let code = if status == Some(2) { 2 } else { 1 };
    Err((
        code,
        format!(
            "the cohost daemon did not start (log {}):\n{tail}",
            rt.join("daemon.log").display()
        ),
    ))
}

/// What the daemon wrote on the notify pipe before closing it (`Some`),
/// or `None` if it stayed silent for `timeout`.
fn read_with_timeout(r: OwnedFd, timeout: Duration) -> Option<String> {
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&r),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    match nix::poll::poll(
        &mut fds,
        nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
    ) {
        Ok(n) if n > 0 => {
            let mut s = String::new();
            let _ = std::fs::File::from(r).take(64).read_to_string(&mut s);
            Some(s)
        }
        _ => None,
    }
}

/// Sends a request; prints progress; returns the daemon's answer.
fn call(ctx: &Ctx, stream: UnixStream, req: Request) -> Result<Done, (i32, String)> {
    client::call(stream, &envelope(ctx, req), |id, _state, msg| {
        let _ = id;
        println!("{msg}");
    })
    .map_err(|e| (1, e.to_string()))
}

/// Prints a final answer the usual way and returns its code.
fn finish(res: Result<Done, (i32, String)>) -> i32 {
    match res {
        Ok(d) => {
            if !d.message.is_empty() {
                if d.code == 0 {
                    println!("{}", d.message);
                } else {
                    eprintln!("cohost: {}", d.message);
                }
            }
            d.code
        }
        Err((code, msg)) => {
            eprintln!("cohost: {msg}");
            code
        }
    }
}

pub fn daemon(ctx: &Ctx, foreground: bool, format: &str, level: &str) -> i32 {
    if !foreground {
        if client::connect(&ctx.runtime_dir).is_ok() {
            eprintln!(
                "cohost: a daemon already runs for {}",
                ctx.runtime_dir.display()
            );
            return 1;
        }
        return match launch_daemon_with(ctx, &["--log-format", format, "--log-level", level]) {
            Ok(pid) => {
                println!(
                    "cohost daemon started (pid {pid}) for {}",
                    ctx.runtime_dir.display()
                );
                0
            }
            Err((c, m)) => {
                eprintln!("cohost: {m}");
                c
            }
        };
    }
    let log_format = if format == "json" {
        crate::supervisor::LogFormat::Json
    } else {
        crate::supervisor::LogFormat::Text
    };
    let log_level = level.parse().unwrap_or(tracing::Level::INFO);
    crate::init_daemon_logging(log_format, log_level);
    let notify_fd = std::env::var("COHOST_NOTIFY_FD")
        .ok()
        .and_then(|v| v.parse().ok());
    // SAFETY: single-threaded at this point; the variable is only for us.
    unsafe { std::env::remove_var("COHOST_NOTIFY_FD") };
    let config_dir = std::fs::canonicalize(&ctx.config).unwrap_or_else(|_| ctx.config.clone());
    crate::supervisor::run(crate::supervisor::Options {
        runtime_dir: ctx.runtime_dir.clone(),
        config_dir,
        log_format,
        log_level,
        notify_fd,
    })
}

/// Turns a result into (exit code, message).
fn quiet(res: Result<Done, (i32, String)>) -> (i32, String) {
    match res {
        Ok(d) => (d.code, d.message),
        Err(e) => e,
    }
}

fn start_request(
    ctx: &Ctx,
    id: &str,
    timeout: Option<f64>,
    with_deps: bool,
) -> Result<Done, (i32, String)> {
    let stream = connect(ctx, Launch::Always, Some(id))?.expect("launched");
    call(
        ctx,
        stream,
        Request::Start {
            id: id.into(),
            timeout_ms: ms(timeout),
            with_deps,
        },
    )
}

pub fn start_quiet(ctx: &Ctx, id: &str, timeout: Option<f64>) -> (i32, String) {
    quiet(start_request(ctx, id, timeout, false))
}

pub fn start(ctx: &Ctx, id: &str, timeout: Option<f64>, with_deps: bool) -> i32 {
    finish(start_request(ctx, id, timeout, with_deps))
}

pub fn restart(ctx: &Ctx, id: &str, timeout: Option<f64>) -> i32 {
    let res = connect(ctx, Launch::Always, Some(id)).and_then(|s| {
        call(
            ctx,
            s.expect("launched"),
            Request::Restart {
                id: id.into(),
                timeout_ms: ms(timeout),
            },
        )
    });
    finish(res)
}

/// reset: with no daemon and nothing recorded as running, the instance
/// is stopped already (exit 0), provided it exists.
fn reset_request(ctx: &Ctx, id: &str, req: Request) -> (i32, String) {
    match connect(ctx, Launch::IfState, Some(id)) {
        Ok(Some(s)) => quiet(call(ctx, s, req)),
        Ok(None) => match super::local::known_instance(ctx, id) {
            Ok(()) => (0, format!("{id} is stopped")),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// Did the daemon answer "unknown instance" (not some other refusal)?
fn unknown_instance(d: &Done) -> bool {
    d.code == 2
        && d.data
            .as_ref()
            .is_some_and(|v| v.get("unknown_instance").is_some())
}

/// The exit and message of a client error: a permission problem is
/// `Denied` (4), never "failed".
fn client_failure(e: ClientError) -> (i32, String) {
    let exit = match e {
        ClientError::Denied { .. } => Exit::Denied,
        _ => Exit::Failed,
    };
    (exit.code(), e.to_string())
}

/// stop and kill (guarantee 9: a stop answers success whenever nothing of
/// the instance runs on this node, whatever the instances file says).
/// The daemon answers when it runs and knows the instance; otherwise the
/// node's cgroups (and the state file) decide, see [`offline_stop`].
fn stop_or_kill(ctx: &Ctx, id: &str, req: Request, grace: Duration) -> (i32, String) {
    match client::connect(&ctx.runtime_dir) {
        Ok(s) => match call(ctx, s, req.clone()) {
            Ok(d) if unknown_instance(&d) => offline_stop(ctx, id, req, grace, Some(d.message)),
            res => quiet(res),
        },
        Err(ClientError::NoDaemon(_)) => offline_stop(ctx, id, req, grace, None),
        Err(ClientError::Untrusted(e)) => {
            // Its state cannot be believed; the cgroups still can.
            eprintln!("cohost: {e}: its state is ignored");
            offline_stop(ctx, id, req, grace, Some(e.to_string()))
        }
        Err(e) => client_failure(e),
    }
}

/// No daemon answers for `id` (none runs, or it does not know the ID).
/// Nothing of it runs: success. Processes remain: a daemon that can know
/// the instance (the instances file loads and has the ID) is started to
/// adopt and stop them the configured way (stop command, timeout); when
/// none can (file missing or invalid, ID unknown), they are stopped from
/// here, SIGTERM then SIGKILL through the cgroup: the cluster asked for
/// the instance to be stopped, and answering "stopped" while it runs, or
/// failing the stop and having the node fenced, are both worse.
fn offline_stop(
    ctx: &Ctx,
    id: &str,
    req: Request,
    grace: Duration,
    why_no_daemon: Option<String>,
) -> (i32, String) {
    let rem = offline::remains(&ctx.runtime_dir, id);
    if rem == offline::Remains::Nothing {
        return (
            0,
            format!("{id} is stopped (nothing of it runs on this node)"),
        );
    }
    let pids = join_pids(&rem.pids());
    if let Some(holder) = crate::rundir::holder(&ctx.runtime_dir) {
        // A daemon holds the dir but cannot be reached: it would restart
        // what we stop. Only its own exit helps.
        let e = crate::rundir::RunDirError::AlreadyRunning {
            path: ctx.runtime_dir.clone(),
            pid: holder,
            orphaned: true,
        };
        return (1, format!("{id} still runs (pids {pids}): {e}"));
    }
    if why_no_daemon.is_none() && super::local::known_instance(ctx, id).is_ok() {
        match launch_daemon(ctx)
            .and_then(|_| client::connect(&ctx.runtime_dir).map_err(|e| (1, e.to_string())))
        {
            Ok(s) => {
                let (code, msg) = quiet(call(ctx, s, req.clone()));
                // The daemon may not have adopted them (no state file):
                // then they are still there, and stopped below.
                if code != 0 || offline::remains(&ctx.runtime_dir, id) == offline::Remains::Nothing
                {
                    return (code, msg);
                }
            }
            Err((_, m)) => eprintln!("cohost: {m}"),
        }
    }
    let why = why_no_daemon.unwrap_or_else(|| {
        super::local::known_instance(ctx, id)
            .err()
            .map(|(_, m)| m)
            .unwrap_or_else(|| "no daemon adopted them".into())
    });
    match offline::stop(&rem, grace) {
        Ok(()) => (
            0,
            format!(
                "{id} is stopped: its processes {pids} were stopped without a daemon ({})",
                why.lines().next().unwrap_or("")
            ),
        ),
        Err(left) => (
            1,
            format!(
                "{id}: processes {} would not die (uninterruptible sleep, e.g. on hung storage?)",
                join_pids(&left)
            ),
        ),
    }
}

fn join_pids(p: &[i32]) -> String {
    p.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The grace of a stop from the CLI: `--timeout`, else 10 s.
fn grace_of(timeout: Option<f64>) -> Duration {
    Duration::from_secs_f64(timeout.unwrap_or(10.0).clamp(0.0, 86_400.0))
}

fn print_quiet((code, msg): (i32, String)) -> i32 {
    if !msg.is_empty() {
        if code == 0 {
            println!("{msg}");
        } else {
            eprintln!("cohost: {msg}");
        }
    }
    code
}

pub fn stop_quiet(ctx: &Ctx, id: &str, timeout: Option<f64>) -> Outcome {
    stop_or_kill(
        ctx,
        id,
        Request::Stop {
            id: id.into(),
            timeout_ms: ms(timeout),
        },
        grace_of(timeout),
    )
    .into()
}

pub fn stop(ctx: &Ctx, id: &str, timeout: Option<f64>) -> i32 {
    let o = stop_quiet(ctx, id, timeout);
    print_quiet((o.exit.code(), o.message))
}

pub fn kill(ctx: &Ctx, id: &str) -> i32 {
    print_quiet(stop_or_kill(
        ctx,
        id,
        Request::Kill { id: id.into() },
        Duration::ZERO,
    ))
}

pub fn reset(ctx: &Ctx, id: &str) -> i32 {
    print_quiet(reset_request(ctx, id, Request::Reset { id: id.into() }))
}

/// `monitor`: (exit code, message). With no daemon and no live state, the
/// answer is "stopped" (7) without launching anything: a probe of a node
/// where the instance never ran must be fast and must not start things.
pub fn monitor(ctx: &Ctx, id: &str, depth: u8) -> (i32, String) {
    let (code, msg) = monitor_quiet(ctx, id, depth);
    if code == 0 || code == 7 {
        println!("{msg}");
    } else {
        eprintln!("cohost: {msg}");
    }
    (code, msg)
}

pub fn monitor_quiet(ctx: &Ctx, id: &str, depth: u8) -> (i32, String) {
    match connect(ctx, Launch::IfState, Some(id)) {
        Ok(Some(s)) => match call(
            ctx,
            s,
            Request::Monitor {
                id: id.into(),
                depth,
            },
        ) {
            Ok(d) => (d.code, d.message),
            Err((c, m)) => (c, m),
        },
        Ok(None) if offline::remains(&ctx.runtime_dir, id) != offline::Remains::Nothing => (
            Exit::Failed.code(),
            format!(
                "{id}: processes {} run but no cohost daemon supervises them (none runs for {}): run `cohost stop {id}`, or `cohost start {id}` to adopt them",
                join_pids(&offline::remains(&ctx.runtime_dir, id).pids()),
                ctx.runtime_dir.display()
            ),
        ),
        Ok(None) => match super::local::known_instance(ctx, id) {
            Ok(()) => (
                Exit::Stopped.code(),
                format!(
                    "{id} is stopped (no cohost daemon runs for {})",
                    ctx.runtime_dir.display()
                ),
            ),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// The status of one instance for integration code: (state, exit code).
pub fn status_code(ctx: &Ctx, id: &str) -> Result<(Option<InstanceStatus>, i32), (i32, String)> {
    match connect(ctx, Launch::IfState, Some(id))? {
        Some(s) => {
            let d = call(
                ctx,
                s,
                Request::Status {
                    id: Some(id.into()),
                },
            )?;
            if d.code == 2 {
                return Err((2, d.message));
            }
            let st = d
                .data
                .and_then(|v| serde_json::from_value::<Vec<InstanceStatus>>(v).ok())
                .and_then(|mut v| v.pop());
            Ok((st, d.code))
        }
        None => {
            super::local::known_instance(ctx, id)?;
            Ok((None, 3))
        }
    }
}

pub fn status(ctx: &Ctx, id: Option<&str>, json: bool) -> i32 {
    let res = match connect(ctx, Launch::IfState, id) {
        Ok(Some(s)) => call(
            ctx,
            s,
            Request::Status {
                id: id.map(String::from),
            },
        ),
        Ok(None) => super::local::offline_status(ctx, id),
        Err(e) => Err(e),
    };
    match res {
        Ok(d) if d.code == 2 => finish(Ok(d)),
        Ok(d) => {
            let list: Vec<InstanceStatus> = d
                .data
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else if id.is_some() {
                for s in &list {
                    print!("{}", output::detail(s));
                }
            } else {
                print!("{}", output::table(&list));
            }
            d.code
        }
        Err(e) => finish(Err(e)),
    }
}

pub fn up_down(ctx: &Ctx, up: bool) -> i32 {
    let launch = if up { Launch::Always } else { Launch::IfState };
    match connect(ctx, launch, None) {
        Ok(Some(s)) => finish(call(
            ctx,
            s,
            if up { Request::Up {} } else { Request::Down {} },
        )),
        Ok(None) => {
            println!("nothing runs");
            0
        }
        Err(e) => finish(Err(e)),
    }
}

pub fn reload_quiet(ctx: &Ctx) -> (i32, String) {
    match connect(ctx, Launch::IfState, None) {
        Ok(Some(s)) => quiet(call(ctx, s, Request::Reload {})),
        // No daemon: nothing to reload; say whether the file is good.
        Ok(None) => match super::local::load_check(ctx) {
            Ok(()) => (
                0,
                "no daemon runs; the instances file is valid and will be read at its start".into(),
            ),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

pub fn reload(ctx: &Ctx) -> i32 {
    print_quiet(reload_quiet(ctx))
}

pub fn shutdown(ctx: &Ctx) -> i32 {
    match client::connect(&ctx.runtime_dir) {
        Ok(s) => finish(call(ctx, s, Request::Shutdown {})),
        Err(ClientError::NoDaemon(_)) => {
            println!("no cohost daemon runs for {}", ctx.runtime_dir.display());
            0
        }
        Err(e) => finish(Err((1, e.to_string()))),
    }
}
