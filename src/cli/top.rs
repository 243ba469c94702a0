//! `cohost top`: a live per-instance table of state and usage, like
//! systemd-cgtop. On a terminal it redraws once a second (in the alternate
//! screen, keys read raw through termios(3)) until `q`; elsewhere it prints
//! `--iterations` snapshots (default one). Each refresh is one `status`
//! request: the daemon reads the cgroups then, and sleeps otherwise.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

use super::Ctx;
use super::observe::fetch_or_offline;
use crate::control::observe::human_bytes;
use crate::control::proto::InstanceStatus;

/// Column to sort by (key in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// [c] CPU %, highest first.
    Cpu,
    /// [m] memory now.
    Memory,
    /// [i] IO bytes per second, read + write.
    Io,
    /// [p] processes.
    Pids,
    /// [r] restarts.
    Restarts,
    /// [n] instance ID.
    Name,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a column: give cpu, memory, io, pids, restarts or name")]
pub struct BadSort(String);

impl std::str::FromStr for Sort {
    type Err = BadSort;
    fn from_str(s: &str) -> Result<Sort, BadSort> {
        Sort::parse(s).ok_or_else(|| BadSort(s.to_string()))
    }
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "cpu" | "c" => Sort::Cpu,
            "memory" | "mem" | "m" => Sort::Memory,
            "io" | "i" => Sort::Io,
            "pids" | "p" => Sort::Pids,
            "restarts" | "r" => Sort::Restarts,
            "name" | "id" | "n" => Sort::Name,
            _ => return None,
        })
    }

    fn key(b: u8) -> Option<Sort> {
        Sort::parse(std::str::from_utf8(&[b.to_ascii_lowercase()]).ok()?)
    }

    fn as_str(self) -> &'static str {
        match self {
            Sort::Cpu => "cpu",
            Sort::Memory => "memory",
            Sort::Io => "io",
            Sort::Pids => "pids",
            Sort::Restarts => "restarts",
            Sort::Name => "name",
        }
    }
}

/// One refresh: the statuses and when they were read.
pub struct Sample {
    pub at: Instant,
    pub list: Vec<InstanceStatus>,
}

/// A row as shown, with the rates against the previous sample.
struct Row<'a> {
    s: &'a InstanceStatus,
    cpu_pct: Option<f64>,
    io_rate: Option<(f64, f64)>,
}

fn rows<'a>(prev: Option<&Sample>, cur: &'a Sample) -> Vec<Row<'a>> {
    cur.list
        .iter()
        .map(|s| {
            let before = prev.and_then(|p| {
                let dt = cur.at.saturating_duration_since(p.at).as_secs_f64();
                let old = p.list.iter().find(|o| o.id == s.id)?;
                (dt > 0.0).then_some((old.usage.as_ref()?, dt))
            });
            let u = s.usage.as_ref();
            let cpu_pct = before.and_then(|(o, dt)| {
                let d = u?.cpu_usec?.checked_sub(o.cpu_usec?)?;
                Some(d as f64 / 1e6 / dt * 100.0)
            });
            let io_rate = before.and_then(|(o, dt)| {
                let r = u?.io_read_bytes?.checked_sub(o.io_read_bytes?)?;
                let w = u?.io_write_bytes?.checked_sub(o.io_write_bytes?)?;
                Some((r as f64 / dt, w as f64 / dt))
            });
            Row {
                s,
                cpu_pct,
                io_rate,
            }
        })
        .collect()
}

fn sort_rows(rows: &mut [Row], by: Sort) {
    let mem = |r: &Row| r.s.usage.as_ref().and_then(|u| u.memory_bytes).unwrap_or(0);
    let pids = |r: &Row| r.s.usage.as_ref().and_then(|u| u.pids).unwrap_or(0);
    let io = |r: &Row| r.io_rate.map(|(a, b)| a + b).unwrap_or(-1.0);
    match by {
        Sort::Name => rows.sort_by(|a, b| a.s.id.cmp(&b.s.id)),
        Sort::Cpu => rows.sort_by(|a, b| {
            let f = |r: &Row| r.cpu_pct.unwrap_or(-1.0);
            f(b).total_cmp(&f(a)).then(a.s.id.cmp(&b.s.id))
        }),
        Sort::Memory => rows.sort_by(|a, b| mem(b).cmp(&mem(a)).then(a.s.id.cmp(&b.s.id))),
        Sort::Io => rows.sort_by(|a, b| io(b).total_cmp(&io(a)).then(a.s.id.cmp(&b.s.id))),
        Sort::Pids => rows.sort_by(|a, b| pids(b).cmp(&pids(a)).then(a.s.id.cmp(&b.s.id))),
        Sort::Restarts => {
            rows.sort_by(|a, b| b.s.restarts.cmp(&a.s.restarts).then(a.s.id.cmp(&b.s.id)))
        }
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// The table for one refresh (pure: tests render it without a terminal).
pub fn render(prev: Option<&Sample>, cur: &Sample, by: Sort, max_rows: usize) -> String {
    let mut rows = rows(prev, cur);
    sort_rows(&mut rows, by);
    let header = [
        "ID", "SERVICE", "STATE", "CPU%", "CPU-TIME", "MEMORY", "PEAK", "IO-R/s", "IO-W/s", "PIDS",
        "RESTARTS",
    ];
    let cells: Vec<[String; 11]> = rows
        .iter()
        .map(|r| {
            let u = r.s.usage.as_ref();
            [
                r.s.id.clone(),
                r.s.service.clone(),
                r.s.state.clone(),
                opt(r.cpu_pct, |c| format!("{c:.1}")),
                opt(u.and_then(|u| u.cpu_usec), |c| {
                    format!("{:.2}s", c as f64 / 1e6)
                }),
                opt(u.and_then(|u| u.memory_bytes), human_bytes),
                opt(u.and_then(|u| u.memory_peak_bytes), human_bytes),
                opt(r.io_rate, |(r, _)| human_bytes(r as u64)),
                opt(r.io_rate, |(_, w)| human_bytes(w as u64)),
                opt(u.and_then(|u| u.pids), |p| p.to_string()),
                r.s.restarts.to_string(),
            ]
        })
        .collect();
    let mut w = header.map(str::len);
    for c in &cells {
        for (i, x) in c.iter().enumerate() {
            w[i] = w[i].max(x.chars().count());
        }
    }
    let mut out = String::new();
    let running = cur.list.iter().filter(|s| s.state == "running").count();
    let _ = writeln!(
        out,
        "cohost top: {} instances, {running} running; sorted by {} (c m i p r n); q quits",
        cur.list.len(),
        by.as_str()
    );
    let line = |c: &[String], out: &mut String| {
        let mut l = String::new();
        for (i, x) in c.iter().enumerate() {
            // Text columns left-aligned, figures right-aligned.
            if i < 3 {
                let _ = write!(l, "{x:<width$}  ", width = w[i]);
            } else {
                let _ = write!(l, "{x:>width$}  ", width = w[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from), &mut out);
    for c in cells.iter().take(max_rows) {
        line(c, &mut out);
    }
    if cells.len() > max_rows {
        let _ = writeln!(out, "… {} more", cells.len() - max_rows);
    }
    out
}

/// Options of `cohost top`.
pub struct Opts {
    pub sort: Sort,
    /// Refreshes before exiting (default: until `q` on a terminal, else 1).
    pub iterations: Option<u64>,
    pub delay: Duration,
}

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty on a plain fd number.
    unsafe { libc::isatty(fd) == 1 }
}

pub fn run(ctx: &Ctx, opts: Opts) -> i32 {
    let interactive = opts.iterations.is_none() && is_tty(0) && is_tty(1);
    let res = if interactive {
        interactive_loop(ctx, &opts)
    } else {
        snapshots(ctx, &opts)
    };
    match res {
        Ok(()) => 0,
        Err((code, msg)) => {
            eprintln!("cohost: {msg}");
            code
        }
    }
}

fn sample(ctx: &Ctx) -> Result<Sample, (i32, String)> {
    Ok(Sample {
        list: fetch_or_offline(ctx)?,
        at: Instant::now(),
    })
}

fn snapshots(ctx: &Ctx, opts: &Opts) -> Result<(), (i32, String)> {
    let n = opts.iterations.unwrap_or(1).max(1);
    let mut prev: Option<Sample> = None;
    for i in 0..n {
        if i > 0 {
            std::thread::sleep(opts.delay);
        }
        let cur = sample(ctx)?;
        out!("{}", render(prev.as_ref(), &cur, opts.sort, usize::MAX));
        if i + 1 < n {
            outln!();
        }
        prev = Some(cur);
    }
    Ok(())
}

/// Restores the terminal however the loop ends.
struct Raw {
    saved: Termios,
}

impl Raw {
    fn enter() -> Result<Raw, (i32, String)> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())
            .map_err(|e| (1, format!("reading the terminal's settings: {e}")))?;
        let mut raw = saved.clone();
        // Keys one at a time, unechoed; ^C arrives as a byte (quits too),
        // so the terminal is always restored (termios(3)).
        raw.local_flags &= !(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|e| (1, format!("setting the terminal to raw mode: {e}")))?;
        // Alternate screen, cursor hidden.
        out!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Ok(Raw { saved })
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        out!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

fn term_rows() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 3 {
        usize::from(ws.ws_row) - 3
    } else {
        usize::MAX
    }
}

/// Waits for a key until `deadline`; `None` when the time is up.
fn key_until(stdin: BorrowedFd, deadline: Instant) -> Result<Option<u8>, (i32, String)> {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(stdin, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) | Err(nix::errno::Errno::EINTR) => Ok(None),
        Ok(_) => {
            let mut b = [0u8; 1];
            match nix::unistd::read(stdin, &mut b) {
                Ok(1) => Ok(Some(b[0])),
                // End of input: nobody can press q any more.
                _ => Ok(Some(b'q')),
            }
        }
        Err(e) => Err((1, format!("reading the terminal: {e}"))),
    }
}

fn interactive_loop(ctx: &Ctx, opts: &Opts) -> Result<(), (i32, String)> {
    let _raw = Raw::enter()?;
    let stdin = std::io::stdin();
    let mut sort = opts.sort;
    let mut prev: Option<Sample> = None;
    let mut cur = sample(ctx)?;
    loop {
        let frame = render(prev.as_ref(), &cur, sort, term_rows());
        // Home, the frame with each line cleared to its end, the rest cleared.
        out!("\x1b[H{}\x1b[J", frame.replace('\n', "\x1b[K\r\n"));
        let _ = std::io::stdout().flush();
        let deadline = cur.at + opts.delay;
        loop {
            match key_until(stdin.as_fd(), deadline)? {
                None => break,
                Some(b'q' | b'Q' | 3) => return Ok(()),
                Some(k) => {
                    if let Some(s) = Sort::key(k) {
                        sort = s;
                        let frame = render(prev.as_ref(), &cur, sort, term_rows());
                        out!("\x1b[H{}\x1b[J", frame.replace('\n', "\x1b[K\r\n"));
                        let _ = std::io::stdout().flush();
                    }
                }
            }
        }
        prev = Some(std::mem::replace(&mut cur, sample(ctx)?));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::observe::Usage;

    fn st(id: &str, cpu: u64, mem: u64) -> InstanceStatus {
        let mut s: InstanceStatus = serde_json::from_value(serde_json::json!({
            "id": id, "service": "svc", "kind": "simple", "state": "running",
            "healthy": null, "processes": [], "members": [], "address": null, "port": null,
            "hostname": null, "since": 0, "uptime_s": null, "restarts": 0, "last_failure": null,
            "tracking": "", "checks": [], "definition_changed": false, "removed": false,
            "warnings": [], "log_dir": ""
        }))
        .unwrap();
        s.usage = Some(Usage {
            cpu_usec: Some(cpu),
            memory_bytes: Some(mem),
            io_read_bytes: Some(0),
            io_write_bytes: Some(cpu),
            pids: Some(1),
            ..Default::default()
        });
        s
    }

    #[test]
    fn rates_and_sorting() {
        let t0 = Instant::now();
        let a = Sample {
            at: t0,
            list: vec![st("a", 0, 10), st("b", 0, 20)],
        };
        let b = Sample {
            at: t0 + Duration::from_secs(1),
            list: vec![st("a", 500_000, 10), st("b", 100_000, 20)],
        };
        let by_cpu = render(Some(&a), &b, Sort::Cpu, 10);
        let lines: Vec<&str> = by_cpu.lines().collect();
        assert!(
            lines[2].starts_with("a ") && lines[2].contains("50.0"),
            "{by_cpu}"
        );
        assert!(
            lines[3].starts_with("b ") && lines[3].contains("10.0"),
            "{by_cpu}"
        );
        let by_mem = render(Some(&a), &b, Sort::Memory, 10);
        assert!(by_mem.lines().nth(2).unwrap().starts_with("b "), "{by_mem}");
        // A first sample has no rates yet.
        let first = render(None, &b, Sort::Name, 10);
        assert!(first.lines().nth(2).unwrap().contains(" - "), "{first}");
        assert!(render(None, &b, Sort::Name, 1).contains("… 1 more"));
        assert_eq!(Sort::key(b'M'), Some(Sort::Memory));
    }
}
