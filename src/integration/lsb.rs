//! `cohost lsb ID ACTION`: LSB init-script actions and exit codes
//! (LSB core, "Init Script Actions"). An init script is three lines that
//! call this; Pacemaker's `lsb:` class reads the same codes.

use crate::cli::Ctx;

/// LSB `status` codes.
pub mod status {
    pub const RUNNING: i32 = 0;
    /// Dead, with state left behind (the instance failed).
    pub const DEAD_STATE_LEFT: i32 = 1;
    pub const NOT_RUNNING: i32 = 3;
    pub const UNKNOWN: i32 = 4;
}

/// LSB codes for the other actions.
pub mod action {
    pub const SUCCESS: i32 = 0;
    pub const GENERIC: i32 = 1;
    pub const INVALID_ARGS: i32 = 2;
    pub const UNIMPLEMENTED: i32 = 3;
    pub const PRIVILEGE: i32 = 4;
    pub const NOT_CONFIGURED: i32 = 6;
}

/// `status` from the instance's state ("running", "failed", …).
pub fn status_code(state: Option<&str>) -> i32 {
    match state {
        Some("running") => status::RUNNING,
        Some("failed") | Some("restarting") => status::DEAD_STATE_LEFT,
        Some("stopped") | None => status::NOT_RUNNING,
        Some(_) => status::UNKNOWN,
    }
}

/// A cohost exit code for start/stop as an LSB action code.
pub fn action_code(code: i32) -> i32 {
    match code {
        0 => action::SUCCESS,
        2 => action::NOT_CONFIGURED,
        4 => action::PRIVILEGE,
        _ => action::GENERIC,
    }
}

const USAGE: &str = "usage: cohost lsb ID {start|stop|restart|force-reload|try-restart|status}";

fn say(code: i32, msg: &str) -> i32 {
    if code == 0 {
        println!("{msg}");
    } else {
        eprintln!("cohost: {msg}");
    }
    code
}

pub fn run(ctx: &Ctx, id: &str, act: &str) -> i32 {
    match act {
        "start" => {
            let (c, m) = crate::cli::start_quiet(ctx, id, None);
            say(action_code(c), &m)
        }
        "stop" => {
            let (c, m) = crate::cli::stop_quiet(ctx, id, None);
            say(action_code(c), &m)
        }
        "restart" | "force-reload" => restart(ctx, id),
        "try-restart" | "condrestart" => match crate::cli::status_code(ctx, id) {
            Ok((Some(s), _)) if s.state == "running" => restart(ctx, id),
            Ok(_) => say(
                action::SUCCESS,
                &format!("{id} is not running: nothing to restart"),
            ),
            Err((c, m)) => say(action_code(c), &m),
        },
        "status" => match crate::cli::status_code(ctx, id) {
            Ok((st, _)) => {
                let state = st.as_ref().map(|s| s.state.as_str());
                let code = status_code(state);
                let mut msg = format!("{id} is {}", state.unwrap_or("stopped"));
                if let Some(f) = st
                    .as_ref()
                    .and_then(|s| s.last_failure.as_ref())
                    .filter(|_| code == status::DEAD_STATE_LEFT)
                {
                    msg.push_str(&format!(": {f}"));
                }
                println!("{msg}");
                code
            }
            Err((_, m)) => {
                eprintln!("cohost: {m}");
                status::UNKNOWN
            }
        },
        "reload" => {
            eprintln!(
                "cohost: reload is not supported by an instance; use restart or force-reload"
            );
            action::UNIMPLEMENTED
        }
        _ => {
            eprintln!("{USAGE}");
            action::INVALID_ARGS
        }
    }
}

fn restart(ctx: &Ctx, id: &str) -> i32 {
    let (c, m) = crate::cli::stop_quiet(ctx, id, None);
    if c != 0 {
        return say(action_code(c), &m);
    }
    let (c, m) = crate::cli::start_quiet(ctx, id, None);
    say(action_code(c), &m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        for (state, want) in [
            (Some("running"), 0),
            (Some("failed"), 1),
            (Some("restarting"), 1),
            (Some("stopped"), 3),
            (None, 3),
            (Some("starting"), 4),
        ] {
            assert_eq!(status_code(state), want, "{state:?}");
        }
        assert_eq!(action_code(2), action::NOT_CONFIGURED);
        assert_eq!(action_code(1), action::GENERIC);
    }
}
