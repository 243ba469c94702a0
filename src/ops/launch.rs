//! Starting the daemon when a command needs one: detached, in its own
//! session, logging to the runtime dir's `daemon.log` (opened through the
//! checked directory, never through a link), serialized by `launch.lock`.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Ctx;
use crate::control::client;
use crate::rundir::RuntimeDir;

/// How long `cohost start` waits for a daemon it launched to listen.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a daemon that holds the runtime dir but does not answer yet
/// is taken to be starting (its socket listens a moment after it takes
/// the dir), before it is called unreachable.
const HOLDER_GRACE: Duration = Duration::from_secs(5);

/// Does a state file (of `id`, or of any instance) say something may run?
/// Read through the checked runtime dir (never through a link); a dir
/// that cannot be trusted says nothing.
pub fn state_says_live(rt: &Path, id: Option<&str>) -> bool {
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
pub fn launch_daemon_with(ctx: &Ctx, extra: &[&str]) -> Result<u32, (i32, String)> {
    let rt = &ctx.runtime_dir;
    let dir = RuntimeDir::create(rt).map_err(|e| (1, format!("{e}; or pass --runtime-dir DIR")))?;
    let lock = dir
        .open("launch.lock", libc::O_WRONLY | libc::O_CREAT)
        .map_err(|e| file_err(&dir, "launch.lock", e))?;
    // SAFETY: flock on a valid fd; blocks while another client launches.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if client::connect(rt).is_ok() {
        return Ok(0);
    }
    // A daemon that holds this dir but cannot be reached (its socket was
    // deleted with the dir): starting a second one would give every
    // instance a second supervisor. Say what to do instead.
    if let Some(pid) = crate::rundir::holder(dir.path()) {
        return wait_for_holder(rt, &dir, pid);
    }
    // Inside a systemd service, a child of ours would live and die in that
    // unit's cgroup: let systemd start the daemon as a unit (super::systemd).
    if let Some(unit) = super::systemd::own_service_unit() {
        super::systemd::launch_as_unit(ctx, extra, &unit, DAEMON_START_TIMEOUT, || {
            client::connect(rt).is_ok()
        })?;
        return Ok(0);
    }
    // O_NOFOLLOW: a daemon.log planted as a link is never written through.
    let log = dir
        .append("daemon.log")
        .map_err(|e| file_err(&dir, "daemon.log", e))?;
    let (mut child, r) = spawn(ctx, log, extra)?;
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

/// A daemon holds the runtime dir (`pid`, when known) but did not answer:
/// `Ok(0)` if it comes up within `HOLDER_GRACE`, else why no second one
/// is started.
fn wait_for_holder(rt: &Path, dir: &RuntimeDir, pid: Option<u32>) -> Result<u32, (i32, String)> {
    // A daemon that is still starting holds the dir before its socket
    // listens (systemd may have just started it for another unit):
    // give it the time a start takes before calling it unreachable.
    let until = std::time::Instant::now() + HOLDER_GRACE;
    // (The guard is asked once: each question takes a place in its
    // small backlog. Whether the holder lives is kill(pid, 0).)
    // SAFETY: kill(2) with signal 0 sends nothing.
    while std::time::Instant::now() < until
        && pid.is_none_or(|p| unsafe { libc::kill(p as i32, 0) } == 0)
    {
        if client::connect(rt).is_ok() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if client::connect(rt).is_ok() {
        return Ok(0);
    }
    let e = crate::rundir::RunDirError::AlreadyRunning {
        path: dir.path().to_path_buf(),
        pid,
        orphaned: true,
    };
    Err((1, e.to_string()))
}

fn file_err(dir: &RuntimeDir, name: &str, e: std::io::Error) -> (i32, String) {
    (
        1,
        format!(
            "runtime dir {}: {name}: {}",
            dir.path().display(),
            crate::rundir::explain(&e)
        ),
    )
}

/// `cohost daemon --foreground`, detached, logging to `log`; the read end
/// of the pipe it writes "ready" on.
fn spawn(
    ctx: &Ctx,
    log: std::fs::File,
    extra: &[&str],
) -> Result<(std::process::Child, OwnedFd), (i32, String)> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| (1, format!("pipe: {e}")))?;
    let wfd = w.as_raw_fd();
    let exe =
        std::env::current_exe().map_err(|e| (1, format!("finding the cohost binary: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--config")
        .arg(&ctx.config)
        .arg("--runtime-dir")
        .arg(&ctx.runtime_dir)
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
    let child = cmd
        .spawn()
        .map_err(|e| (1, format!("starting the daemon: {e}")))?;
    drop(w);
    Ok((child, r))
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
