//! The sub-tables that say how an instance is checked, stopped and
//! restarted: `ready`/`[[health]]` checks, `[stop]`, `[restart]`.

use crate::config::reader::{At, Table};

use super::raw::{RawCheck, RawCheckKind, RawRestart, RawStop};

pub(super) fn parse_check(t: &Table) -> RawCheck {
    t.check_unknown();
    let mut kinds = Vec::new();
    if let Some(s) = t.string("tcp") {
        kinds.push(RawCheckKind::Tcp(s));
    }
    if let Some(c) = t.string_or_strings("command") {
        kinds.push(RawCheckKind::Command(c));
    }
    if let Some(f) = t.string("file") {
        kinds.push(RawCheckKind::File(f));
    }
    if let Some(p) = t.string("process") {
        let count = t
            .int_in("count", 1, 100_000)
            .map(|c| c.v as u32)
            .unwrap_or(1);
        kinds.push(RawCheckKind::Process(p, count));
    } else if t.has("count") {
        t.error(
            &t.origin_of("count"),
            format!("`count` in {} goes with `process`", t.what),
        );
    }
    if let Some(f) = t.string("file_fresh") {
        match t.duration("max_age") {
            Some(age) => kinds.push(RawCheckKind::FileFresh(f, age.v)),
            None => t.error(
                &f.at,
                format!(
                    "{}: `file_fresh` needs `max_age`, e.g. max_age = \"5m\"",
                    t.what
                ),
            ),
        }
    } else if t.has("max_age") {
        t.error(
            &t.origin_of("max_age"),
            format!("`max_age` in {} goes with `file_fresh`", t.what),
        );
    }
    if kinds.len() > 1 {
        t.error(
            &t.at,
            format!(
                "{} has more than one check (tcp, command, file, process, file_fresh): one per entry",
                t.what
            ),
        );
    }
    let send = t.string("send");
    let expect = t.string("expect");
    if (send.is_some() || expect.is_some()) && !matches!(kinds.first(), Some(RawCheckKind::Tcp(_)))
    {
        t.error(
            &t.at,
            format!("`send`/`expect` in {} go with `tcp`", t.what),
        );
    }
    RawCheck {
        kind: kinds.into_iter().next(),
        send,
        expect,
        timeout: t.duration("timeout"),
        interval: t.duration("interval"),
        at: t.at.clone(),
    }
}

pub(super) fn parse_stop(t: &Table) -> RawStop {
    t.check_unknown();
    let signal = t.string("signal").and_then(|s| match signal_number(&s.v) {
        Some(n) => Some(At { v: n, at: s.at }),
        None => {
            t.error(
                &s.at,
                format!(
                    "{}: unknown signal {:?}; write e.g. \"TERM\", \"INT\", \"QUIT\"",
                    t.what, s.v
                ),
            );
            None
        }
    });
    RawStop {
        command: t.string_or_strings("command"),
        timeout: t.duration("timeout"),
        signal,
    }
}

pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    Some(match n {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "ABRT" => libc::SIGABRT,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

pub(super) fn parse_restart(t: &Table) -> RawRestart {
    t.check_unknown();
    RawRestart {
        policy: t.string("policy"),
        max: t.int_in("max", 0, 1_000_000),
        window: t.duration("window"),
        backoff: t.duration("backoff"),
        max_backoff: t.duration("max_backoff"),
        at: t.at.clone(),
    }
}
