//! Launching the daemon when the CLI itself runs inside a systemd service.
//!
//! A child inherits its parent's cgroup (cgroups(7)). A daemon that
//! `cohost start|stop` forks from `cohost@ID.service`'s ExecStart/ExecStop
//! is therefore born in that oneshot unit's cgroup: systemd counts it as
//! the unit's leftover process, SIGTERMs it at the unit's stop and holds
//! the unit in `stop-sigterm` until it is gone, and the instance cgroups it
//! makes land below a unit that never delegated them (issue 16). So under
//! systemd a daemon is started as a unit of its own, never as our child:
//! `cohost.service` for the default runtime dir (the one it serves; a
//! pending auto-restart is simply waited for), a transient unit for any
//! other. Outside a service unit (a login shell's scope, no systemd at
//! all) nothing changes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Ctx, DEFAULT_RUNTIME_DIR};

/// The systemd service unit whose cgroup we are in, if systemd manages
/// this system (sd_booted(3): /run/systemd/system exists).
pub fn own_service_unit() -> Option<String> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    service_of(&text)
}

/// The first `*.service` component of our cgroup path: the unified
/// hierarchy's `0::` line, else systemd's own `name=systemd` (v1) line.
fn service_of(proc_self_cgroup: &str) -> Option<String> {
    let path_of = |prefix: &str| {
        proc_self_cgroup
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
    };
    let path = path_of("0::").filter(|p| p != "/").or_else(|| {
        proc_self_cgroup.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            rest.strip_prefix("name=systemd:").map(str::to_string)
        })
    })?;
    path.split('/')
        .find(|c| c.ends_with(".service"))
        .map(str::to_string)
}

/// Starts the daemon for `ctx` as a systemd unit; returns once `listening`
/// says so. Both units are Type=notify (READY=1 once the socket listens), so
/// one successful start normally suffices. It is tried up to three times
/// (within `deadline`): systemd may still call a just-crashed cohost.service
/// "active" (its SIGCHLD not yet handled), or cancel our start job in favour
/// of its own restart job. Not more: every failed start counts towards the
/// unit's start limit.
pub fn launch_as_unit(
    ctx: &Ctx,
    extra: &[&str],
    caller: &str,
    deadline: Duration,
    listening: impl Fn() -> bool,
) -> Result<(), (i32, String)> {
    let start = Instant::now();
    for attempt in 1.. {
        let res = start_unit(ctx, extra, caller);
        if listening() {
            return Ok(());
        }
        if attempt == 3 || start.elapsed() >= deadline {
            return Err(res.err().unwrap_or_else(|| {
                (
                    1,
                    format!(
                        "systemd started the cohost daemon for {}, but it does not listen \
                         (journalctl -u cohost.service)",
                        ctx.runtime_dir.display()
                    ),
                )
            }));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!("the loop returns")
}

fn start_unit(ctx: &Ctx, extra: &[&str], caller: &str) -> Result<(), (i32, String)> {
    let mut cmd;
    let what;
    if ctx.runtime_dir == Path::new(DEFAULT_RUNTIME_DIR) {
        // --job-mode=fail: never cancel a stop of cohost.service that is
        // under way (e.g. `systemctl stop cohost` stopping this very unit).
        what = "systemctl start cohost.service".to_string();
        cmd = Command::new("systemctl");
        cmd.args(["--job-mode=fail", "start", "cohost.service"]);
    } else {
        let unit = transient_unit_name(&ctx.runtime_dir);
        what = format!("systemd-run --unit {unit}");
        let exe =
            std::env::current_exe().map_err(|e| (1, format!("finding the cohost binary: {e}")))?;
        cmd = Command::new("systemd-run");
        cmd.args(["--quiet", "--collect", "--unit", &unit])
            .args(["-p", "Type=notify", "-p", "NotifyAccess=main"])
            .args(["-p", "Delegate=yes", "-p", "KillMode=process"])
            .arg("--")
            .arg(exe)
            .arg("--config")
            .arg(&ctx.config)
            .arg("--runtime-dir")
            .arg(&ctx.runtime_dir)
            .args(["daemon", "--foreground"])
            .args(extra);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| (1, format!("{what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err((
        1,
        format!(
            "no cohost daemon runs for {}, and this command runs inside {caller}, where a \
             daemon of its own would be killed with the unit; `{what}` failed: {}",
            ctx.runtime_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    ))
}

/// `cohost-daemon-<runtime dir, escaped>.service`, one per runtime dir, so
/// that concurrent launches for one dir meet in one unit.
fn transient_unit_name(rt: &Path) -> String {
    let mut s = String::from("cohost-daemon-");
    for b in rt.to_string_lossy().trim_matches('/').bytes() {
        match b {
            b'/' => s.push('-'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push_str(".service");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_unit_is_found_in_either_hierarchy() {
        let hybrid = "12:name=systemd:/system.slice/cohost@demo02.service\n\
                      4:memory:/system.slice/cohost@demo02.service\n\
                      0::/system.slice/cohost@demo02.service\n";
        assert_eq!(service_of(hybrid).as_deref(), Some("cohost@demo02.service"));
        let v2 = "0::/system.slice/pacemaker.service\n";
        assert_eq!(service_of(v2).as_deref(), Some("pacemaker.service"));
        // Legacy v1 only: the unified line is "/".
        let v1 = "1:name=systemd:/system.slice/x.service\n0::/\n";
        assert_eq!(service_of(v1).as_deref(), Some("x.service"));
        // A delegated subtree below a service still belongs to that service.
        let nested = "0::/system.slice/cohost.service/cohost/run-cohost/demo01\n";
        assert_eq!(service_of(nested).as_deref(), Some("cohost.service"));
        for none in [
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/\n",
            "9:name=systemd:/\n0::/\n",
            "",
        ] {
            assert_eq!(service_of(none), None, "{none:?}");
        }
    }

    #[test]
    fn transient_unit_names_are_escaped() {
        assert_eq!(
            transient_unit_name(Path::new("/srv/rt")),
            "cohost-daemon-srv-rt.service"
        );
        assert_eq!(
            transient_unit_name(Path::new("/tmp/a b")),
            "cohost-daemon-tmp-a\\x20b.service"
        );
    }
}
