//! `cohost lsb ID ACTION`: LSB init-script actions and exit codes
//! (LSB core, "Init Script Actions"). An init script is three lines that
//! call this; Pacemaker's `lsb:` class reads the same codes.

use crate::ops::Ctx;
use crate::ops::exit::{Exit, Outcome};

/// LSB `status` codes (LSB core, "Init Script Actions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    /// Dead, with state left behind (the instance failed).
    DeadStateLeft,
    NotRunning,
    Unknown,
}

/// LSB codes for the other actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Success,
    Generic,
    InvalidArgs,
    Unimplemented,
    Privilege,
    NotConfigured,
}

impl Status {
    pub fn code(self) -> i32 {
        match self {
            Status::Running => 0,
            Status::DeadStateLeft => 1,
            Status::NotRunning => 3,
            Status::Unknown => 4,
        }
    }
}

impl Action {
    pub fn code(self) -> i32 {
        match self {
            Action::Success => 0,
            Action::Generic => 1,
            Action::InvalidArgs => 2,
            Action::Unimplemented => 3,
            Action::Privilege => 4,
            Action::NotConfigured => 6,
        }
    }
}

/// The one table for `status`, from the instance's state.
pub fn status_of(state: Option<&str>) -> Status {
    match state {
        Some("running") => Status::Running,
        Some("failed") | Some("restarting") => Status::DeadStateLeft,
        Some("stopped") | None => Status::NotRunning,
        Some(_) => Status::Unknown,
    }
}

/// The one table for start/stop/restart, from a cohost command's exit.
pub fn action_of(exit: Exit) -> Action {
    match exit {
        Exit::Ok => Action::Success,
        Exit::Invalid => Action::NotConfigured,
        Exit::Denied => Action::Privilege,
        Exit::Failed | Exit::NotRunning | Exit::Stopped => Action::Generic,
    }
}

const USAGE: &str = "usage: cohost lsb ID {start|stop|restart|force-reload|try-restart|status}";

fn say(code: Action, msg: &str) -> i32 {
    if code == Action::Success {
        outln!("{msg}");
    } else {
        eprintln!("cohost: {msg}");
    }
    code.code()
}

fn said(o: Outcome) -> i32 {
    say(action_of(o.exit), &o.message)
}

pub fn run(ctx: &Ctx, id: &str, act: &str) -> i32 {
    match act {
        "start" => said(crate::ops::start(ctx, id, None)),
        "stop" => said(crate::ops::stop(ctx, id, None)),
        "restart" | "force-reload" => restart(ctx, id),
        "try-restart" | "condrestart" => match crate::ops::status_code(ctx, id) {
            Ok((Some(s), _)) if s.state == "running" => restart(ctx, id),
            Ok(_) => say(
                Action::Success,
                &format!("{id} is not running: nothing to restart"),
            ),
            Err(e) => said(e.into()),
        },
        "status" => status(ctx, id),
        "reload" => {
            eprintln!(
                "cohost: reload is not supported by an instance; use restart or force-reload"
            );
            Action::Unimplemented.code()
        }
        _ => {
            eprintln!("{USAGE}");
            Action::InvalidArgs.code()
        }
    }
}

fn status(ctx: &Ctx, id: &str) -> i32 {
    match crate::ops::status_code(ctx, id) {
        Ok((st, _)) => {
            let state = st.as_ref().map(|s| s.state.as_str());
            let code = status_of(state);
            let mut msg = format!("{id} is {}", state.unwrap_or("stopped"));
            if let Some(f) = st
                .as_ref()
                .and_then(|s| s.last_failure.as_ref())
                .filter(|_| code == Status::DeadStateLeft)
            {
                msg.push_str(&format!(": {f}"));
            }
            outln!("{msg}");
            code.code()
        }
        Err((_, m)) => {
            eprintln!("cohost: {m}");
            Status::Unknown.code()
        }
    }
}

fn restart(ctx: &Ctx, id: &str) -> i32 {
    let o = crate::ops::stop(ctx, id, None);
    if o.exit != Exit::Ok {
        return said(o);
    }
    said(crate::ops::start(ctx, id, None))
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
            assert_eq!(status_of(state).code(), want, "{state:?}");
        }
        assert_eq!(action_of(Exit::Invalid).code(), 6);
        assert_eq!(action_of(Exit::Failed).code(), 1);
        assert_eq!(action_of(Exit::Denied).code(), 4);
    }
}
