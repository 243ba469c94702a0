//! Human output: an aligned table for `list`/`status`, a detail view for
//! `status ID`. Colour only on a terminal (and never with NO_COLOR).

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use crate::control::observe::human_bytes;
use crate::control::proto::InstanceStatus;

fn colour() -> bool {
    // SAFETY: isatty on fd 1.
    std::env::var_os("NO_COLOR").is_none() && unsafe { libc::isatty(1) } == 1
}

fn paint(state: &str, text: &str) -> String {
    if !colour() {
        return text.to_string();
    }
    let code = match state {
        "running" => "32",
        "failed" => "31",
        "stopped" => "2",
        _ => "33",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn addr(s: &InstanceStatus) -> String {
    match (&s.address, s.port) {
        (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.clone(),
        (None, Some(p)) => format!("*:{p}"),
        (None, None) => "-".into(),
    }
}

fn state_text(s: &InstanceStatus) -> String {
    let mut t = s.state.clone();
    if s.healthy == Some(false) {
        t.push_str(" (unhealthy)");
    }
    if s.definition_changed {
        t.push_str(" *");
    }
    t
}

pub fn table(list: &[InstanceStatus]) -> String {
    let header = [
        "ID", "SERVICE", "STATE", "PID", "ADDRESS", "UPTIME", "RESTARTS", "USAGE",
    ];
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|s| {
            let pids: Vec<String> = s
                .processes
                .iter()
                .filter(|p| p.alive)
                .map(|p| p.pid.to_string())
                .collect();
            [
                s.id.clone(),
                s.service.clone(),
                state_text(s),
                if pids.is_empty() {
                    "-".into()
                } else {
                    pids.join(",")
                },
                addr(s),
                s.uptime_s
                    .map(|u| human(Duration::from_secs(u)))
                    .unwrap_or_else(|| "-".into()),
                s.restarts.to_string(),
                usage_cell(s),
            ]
        })
        .collect();
    let mut w = header.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String, state: Option<&str>| {
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            let cell = match (i, state) {
                (2, Some(st)) => paint(st, c),
                _ => c.clone(),
            };
            if i + 1 == cells.len() {
                let _ = write!(out, "{cell}");
            } else {
                let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(&header.map(String::from), &mut out, None);
    for (r, s) in rows.iter().zip(list) {
        line(r, &mut out, Some(&s.state));
    }
    if list.iter().any(|s| s.definition_changed) {
        out.push_str("* definition changed by a reload: restart to apply\n");
    }
    out
}

/// The list's compact usage column: memory now and CPU time.
fn usage_cell(s: &InstanceStatus) -> String {
    let Some(u) = &s.usage else {
        return "-".into();
    };
    let mem = u
        .memory_bytes
        .map(human_bytes)
        .unwrap_or_else(|| "?".into());
    let cpu = u
        .cpu_usec
        .map(|c| format!("{:.1}s", c as f64 / 1e6))
        .unwrap_or_else(|| "?".into());
    format!("{mem} {cpu}")
}

/// `usage` and `timing` lines of the detail view.
fn observe_lines(s: &InstanceStatus, o: &mut String) {
    if let Some(u) = &s.usage {
        let b = |v: Option<u64>| v.map(human_bytes).unwrap_or_else(|| "unknown".into());
        let cpu = u
            .cpu_usec
            .map(|c| format!("{:.2}s", c as f64 / 1e6))
            .unwrap_or_else(|| "unknown".into());
        let pids = u
            .pids
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        let _ = writeln!(
            o,
            "  usage      memory {} (peak {}), cpu {cpu}, io read {} write {}, pids {pids}",
            b(u.memory_bytes),
            b(u.memory_peak_bytes),
            b(u.io_read_bytes),
            b(u.io_write_bytes),
        );
    }
    if let Some(t) = &s.timing {
        let _ = writeln!(o, "  last start {}", t.describe());
    }
}

pub fn detail(s: &InstanceStatus) -> String {
    let mut o = String::new();
    let since = UNIX_EPOCH + Duration::from_secs(s.since);
    let when = if s.since > 0 {
        format!(" since {}", humantime::format_rfc3339_seconds(since))
    } else {
        String::new()
    };
    let up = s
        .uptime_s
        .map(|u| format!(" (up {})", human(Duration::from_secs(u))))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "{} ({} service {}): {}{when}{up}",
        s.id,
        s.kind,
        s.service,
        paint(&s.state, &state_text(s))
    );
    let _ = writeln!(o, "  address    {}", addr(s));
    if let Some(h) = &s.hostname {
        let _ = writeln!(o, "  hostname   {h}");
    }
    for p in &s.processes {
        let _ = writeln!(
            o,
            "  process    {} pid {}{}",
            p.name,
            p.pid,
            if p.alive { "" } else { " (gone)" }
        );
    }
    if !s.members.is_empty() {
        let m: Vec<String> = s.members.iter().map(i32::to_string).collect();
        let _ = writeln!(o, "  members    {}", m.join(" "));
    }
    let _ = writeln!(o, "  tracking   {}", s.tracking);
    let _ = writeln!(o, "  restarts   {}", s.restarts);
    for c in &s.checks {
        let res = match c.ok {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "not run yet",
        };
        let age = c
            .age_s
            .map(|a| format!(", {} ago", human(Duration::from_secs_f64(a))))
            .unwrap_or_default();
        let msg = if c.message.is_empty() {
            String::new()
        } else {
            format!(": {}", c.message)
        };
        let _ = writeln!(o, "  {:<10} {} {res}{msg}{age}", c.role, c.check);
    }
    observe_lines(s, &mut o);
    let _ = writeln!(o, "  logs       {}", s.log_dir);
    if let Some(f) = &s.last_failure {
        let _ = writeln!(o, "  last failure: {f}");
    }
    if s.definition_changed {
        let _ = writeln!(o, "  definition changed by a reload: restart to apply");
    }
    if s.removed {
        let _ = writeln!(o, "  removed from the instances file by a reload");
    }
    for w in &s.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    o
}
