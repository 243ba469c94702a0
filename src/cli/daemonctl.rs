//! Commands answered by the daemon, and starting the daemon when needed.

use std::io::Write;

use super::{Ctx, output};
use crate::control::client::{self, ClientError, Done};
use crate::control::proto::{InstanceStatus, Request};
use crate::ops::daemon::{
    Launch, call, connect, envelope, monitor_quiet, ms, reload_quiet, reset_request, start_request,
};

/// Prints a final answer the usual way and returns its code.
pub(super) fn finish(res: Result<Done, (i32, String)>) -> i32 {
    match res {
        Ok(d) => {
            if !d.message.is_empty() {
                if d.code == 0 {
                    outln!("{}", d.message);
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
        return match crate::ops::launch::launch_daemon_with(
            ctx,
            &["--log-format", format, "--log-level", level],
        ) {
            Ok(pid) => {
                outln!(
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
    .code()
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

pub(super) fn print_quiet((code, msg): (i32, String)) -> i32 {
    if !msg.is_empty() {
        if code == 0 {
            outln!("{msg}");
        } else {
            eprintln!("cohost: {msg}");
        }
    }
    code
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
        outln!("{msg}");
    } else {
        eprintln!("cohost: {msg}");
    }
    (code, msg)
}

pub fn status(ctx: &Ctx, id: Option<&str>, json: bool) -> i32 {
    let req = Request::Status {
        id: id.map(String::from),
    };
    status_or_list(ctx, id, json, req)
}

/// `list [--json]`: as `status` without an ID, with usage figures that
/// may be up to a second old (a list of 10,000 reads no cgroup twice).
pub fn list(ctx: &Ctx, json: bool) -> i32 {
    status_or_list(ctx, None, json, Request::List {})
}

fn status_or_list(ctx: &Ctx, id: Option<&str>, json: bool, req: Request) -> i32 {
    let res = match connect(ctx, Launch::IfState, id) {
        Ok(Some(s)) if json => return status_json(ctx, s, req),
        Ok(Some(s)) => call(ctx, s, req),
        Ok(None) => super::local::offline_status(ctx, id),
        Err(e) => Err(e),
    };
    match res {
        // No statuses: an error (an unknown ID, a refusal such as "too
        // many requests in flight"), shown by its message, not as an
        // empty table.
        Ok(d) if d.code == 2 || d.data.is_none() => finish(Ok(d)),
        Ok(d) => {
            let list: Vec<InstanceStatus> = d
                .data
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else if id.is_some() {
                for s in &list {
                    out!("{}", output::detail(s));
                }
            } else {
                out!("{}", output::table(&list));
            }
            d.code
        }
        Err(e) => finish(Err(e)),
    }
}

/// `status [ID] --json` from the daemon: its JSON, indented, printed as
/// it came (the same text the typed round trip printed, at a fraction of
/// the cost for thousands of instances).
fn status_json(ctx: &Ctx, s: std::os::unix::net::UnixStream, req: Request) -> i32 {
    use super::pretty::Indent;
    use client::Streamed;
    let mut ind = Indent::default();
    let mut out = Vec::with_capacity(2 * Indent::CHUNK);
    let mut fed = false;
    // Indented and printed a piece at a time, as the daemon writes them.
    let mut sink = |piece: &[u8]| {
        fed = true;
        ind.feed(piece, &mut out);
        if out.len() >= Indent::CHUNK {
            crate::out::write_bytes(&out);
            out.clear();
        }
    };
    let env = envelope(ctx, req);
    let got = read_on_a_thread(s, &env, &mut sink);
    match got {
        Ok(Streamed::Data { code }) => {
            ind.finish(&mut out);
            crate::out::write_with(|o| {
                o.write_all(&out)?;
                o.write_all(b"\n")
            });
            code
        }
        Ok(Streamed::Whole(r)) if r.done.code == 2 || r.data().is_empty() => finish(Ok(r.done)),
        Ok(Streamed::Whole(r)) => {
            crate::out::write_with(|out| {
                super::pretty::indent_to(r.data(), out)?;
                out.write_all(b"\n")
            });
            r.done.code
        }
        Err(e) if fed => finish(Err((1, format!("{e} (what was printed is incomplete)")))),
        Err(e) => finish(Err((1, e.to_string()))),
    }
}

/// [`client::call_streamed`] with the socket read on a thread of its own,
/// as fast as the daemon writes, and `sink` fed here: a slow reader of our
/// output (a pager) keeps the answer waiting in this process, not in the
/// daemon. No thread to be had (a pids limit): read here.
fn read_on_a_thread(
    s: std::os::unix::net::UnixStream,
    env: &crate::control::proto::Envelope,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<client::Streamed, ClientError> {
    let fallback = s.try_clone();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|sc| {
        let reader = std::thread::Builder::new()
            .name("cohost-read".into())
            .spawn_scoped(sc, move || {
                client::call_streamed(s, env, &mut |piece| {
                    let _ = tx.send(piece.to_vec());
                })
            });
        match reader {
            Ok(h) => {
                for piece in rx {
                    sink(&piece);
                }
                h.join().unwrap_or(Err(ClientError::NoAnswer))
            }
            Err(_) => client::call_streamed(fallback?, env, sink),
        }
    })
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
            outln!("nothing runs");
            0
        }
        Err(e) => finish(Err(e)),
    }
}

pub fn reload(ctx: &Ctx) -> i32 {
    print_quiet(reload_quiet(ctx))
}

pub fn shutdown(ctx: &Ctx) -> i32 {
    match client::connect(&ctx.runtime_dir) {
        Ok(s) => finish(call(ctx, s, Request::Shutdown {})),
        Err(ClientError::NoDaemon(_)) => {
            outln!("no cohost daemon runs for {}", ctx.runtime_dir.display());
            0
        }
        Err(e) => finish(Err((1, e.to_string()))),
    }
}

/// `__ids` (shell completion): the daemon's instances if one answers, else
/// the instances file's. A TAB must never start anything, so this never
/// launches a daemon; on any error it prints nothing.
pub fn ids(ctx: &Ctx) -> i32 {
    let from_daemon = client::connect(&ctx.runtime_dir).ok().and_then(|s| {
        let d = client::call(
            s,
            &envelope(ctx, Request::Status { id: None }),
            |_, _, _| {},
        )
        .ok()?;
        serde_json::from_value::<Vec<InstanceStatus>>(d.data?).ok()
    });
    let ids = match from_daemon {
        Some(list) => list.into_iter().map(|s| s.id).collect(),
        None => super::local::instance_ids(ctx),
    };
    for id in ids {
        outln!("{id}");
    }
    0
}

pub fn stop(ctx: &Ctx, id: &str, timeout: Option<f64>) -> i32 {
    let o = crate::ops::stop(ctx, id, timeout);
    print_quiet((o.exit.code(), o.message))
}

pub fn kill(ctx: &Ctx, id: &str) -> i32 {
    let o = crate::ops::kill(ctx, id);
    print_quiet((o.exit.code(), o.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    /// While our output is not read (the sink blocks, as a write to a
    /// paused pager does), the daemon's whole answer is still taken off
    /// the socket: the daemon's write of 7 MB completes first.
    #[test]
    fn a_blocked_output_does_not_hold_the_daemons_answer() {
        let (client, server) = UnixStream::pair().unwrap();
        let (written, was_written) = mpsc::channel();
        let daemon = std::thread::spawn(move || {
            let mut req = String::new();
            BufReader::new(&server).read_line(&mut req).unwrap();
            let mut line = b"{\"t\":\"done\",\"code\":0,\"data\":[".to_vec();
            for i in 0..200_000 {
                line.extend_from_slice(format!("{i},{:030},", 0).as_bytes());
            }
            line.extend_from_slice(b"0]}\n");
            (&server).write_all(&line).unwrap();
            written.send(()).unwrap();
        });
        let env = crate::control::proto::Envelope {
            config: None,
            req: Request::Status { id: None },
        };
        let mut first = true;
        let mut got = 0usize;
        let mut sink = |piece: &[u8]| {
            if first {
                first = false;
                was_written
                    .recv_timeout(Duration::from_secs(60))
                    .expect("the daemon's write did not complete while our output was blocked");
            }
            got += piece.len();
        };
        let r = read_on_a_thread(client, &env, &mut sink);
        assert!(matches!(r, Ok(client::Streamed::Data { code: 0 })));
        assert!(got > 7_000_000, "{got} bytes");
        daemon.join().unwrap();
    }
}
