//! The fast path for the commands cluster software runs per instance:
//! `monitor ID [--depth N]` and `status ID [--json]` every few seconds,
//! `start ID` / `stop ID [--timeout S]` and `ocf ACTION` (the agent) once
//! per resource, many at once when a node takes over.
//!
//! clap builds the description of every command before it parses a single
//! argument. That is most of what these calls cost beyond process start
//! (see benches/README.md), so their plain forms are recognized by hand.
//! Anything else, anything unusual, and every error goes to clap, so the
//! behaviour is the same either way (tests/section_cli_fast.rs holds them
//! to it).

use std::ffi::OsString;
use std::path::PathBuf;

use super::{Ctx, daemonctl};

enum Hot {
    Monitor { id: String, depth: u8 },
    Status { id: String, json: bool },
    Start { id: String, timeout: Option<f64> },
    Stop { id: String, timeout: Option<f64> },
    Ocf { action: String },
}

struct Parsed {
    config: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    cmd: Hot,
}

/// Recognizes the hot forms; `None` means "let clap do it".
fn parse(args: &[OsString]) -> Option<Parsed> {
    let mut config = None;
    let mut runtime_dir = None;
    let mut sub: Option<&str> = None;
    let mut id: Option<String> = None;
    let mut depth: Option<u8> = None;
    let mut json = false;
    let mut timeout: Option<f64> = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        match a {
            "--config" => config = Some(PathBuf::from(it.next()?)),
            "--runtime-dir" => runtime_dir = Some(PathBuf::from(it.next()?)),
            "--depth" if sub == Some("monitor") => depth = Some(it.next()?.to_str()?.parse().ok()?),
            "--json" if sub == Some("status") => json = true,
            "--timeout" if matches!(sub, Some("start" | "stop")) && timeout.is_none() => {
                timeout = Some(secs(it.next()?.to_str()?)?)
            }
            _ if a.starts_with("--timeout=")
                && matches!(sub, Some("start" | "stop"))
                && timeout.is_none() =>
            {
                timeout = Some(secs(&a["--timeout=".len()..])?)
            }
            _ if a.starts_with("--config=") => {
                config = Some(PathBuf::from(&a["--config=".len()..]))
            }
            _ if a.starts_with("--runtime-dir=") => {
                runtime_dir = Some(PathBuf::from(&a["--runtime-dir=".len()..]))
            }
            _ if a.starts_with("--depth=") && sub == Some("monitor") => {
                depth = Some(a["--depth=".len()..].parse().ok()?)
            }
            // Any other option (--help, -h, typos): clap's business.
            _ if a.starts_with('-') => return None,
            "monitor" | "status" | "start" | "stop" | "ocf" if sub.is_none() => sub = Some(a),
            _ if sub.is_some() && id.is_none() && !a.is_empty() => id = Some(a.to_string()),
            _ => return None,
        }
    }
    // Empty values are clap's to report.
    if config.as_ref().is_some_and(|c| c.as_os_str().is_empty())
        || runtime_dir
            .as_ref()
            .is_some_and(|r| r.as_os_str().is_empty())
    {
        return None;
    }
    let id = id?;
    let cmd = match sub? {
        "monitor" => Hot::Monitor {
            id,
            depth: depth.unwrap_or(10),
        },
        "start" => Hot::Start { id, timeout },
        "stop" => Hot::Stop { id, timeout },
        // `ocf` reads its parameters from the environment; its one word
        // is the action, whatever it is (the agent answers unknown ones).
        "ocf" => Hot::Ocf { action: id },
        _ => Hot::Status { id, json },
    };
    Some(Parsed {
        config,
        runtime_dir,
        cmd,
    })
}

/// A `--timeout` value clap would accept; anything else is clap's to report.
fn secs(s: &str) -> Option<f64> {
    super::positive_secs(s).ok()
}

/// Runs a hot command if `args` is one; otherwise `None`.
pub fn try_run(args: &[OsString]) -> Option<i32> {
    let p = parse(args)?;
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let ctx = Ctx::new(
        p.config.or_else(|| env("COHOST_CONFIG")),
        p.runtime_dir.or_else(|| env("COHOST_RUNTIME_DIR")),
    );
    Some(match p.cmd {
        Hot::Monitor { id, depth } => daemonctl::monitor(&ctx, &id, depth).0,
        Hot::Status { id, json } => daemonctl::status(&ctx, Some(&id), json),
        Hot::Start { id, timeout } => daemonctl::start(&ctx, &id, timeout, false),
        Hot::Stop { id, timeout } => super::daemonctl::stop(&ctx, &id, timeout),
        // Like clap's path: global options do not apply to `ocf`.
        Hot::Ocf { action } => crate::integration::ocf::run(&action),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Option<String> {
        let v: Vec<OsString> = std::iter::once("cohost")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        parse(&v).map(|p| {
            let c = p
                .config
                .map(|c| c.display().to_string())
                .unwrap_or_default();
            let r = p
                .runtime_dir
                .map(|c| c.display().to_string())
                .unwrap_or_default();
            match p.cmd {
                Hot::Monitor { id, depth } => format!("monitor {id} {depth} {c} {r}"),
                Hot::Status { id, json } => format!("status {id} {json} {c} {r}"),
                Hot::Start { id, timeout } => format!("start {id} {timeout:?} {c} {r}"),
                Hot::Stop { id, timeout } => format!("stop {id} {timeout:?} {c} {r}"),
                Hot::Ocf { action } => format!("ocf {action} {c} {r}"),
            }
        })
    }

    #[test]
    fn hot_forms_and_everything_else() {
        assert_eq!(p(&["monitor", "x"]).as_deref(), Some("monitor x 10  "));
        assert_eq!(
            p(&["--config", "/c", "monitor", "x", "--depth", "0"]).as_deref(),
            Some("monitor x 0 /c ")
        );
        assert_eq!(
            p(&["monitor", "--runtime-dir=/r", "x", "--depth=10"]).as_deref(),
            Some("monitor x 10  /r")
        );
        assert_eq!(
            p(&["status", "x", "--json", "--config=/c"]).as_deref(),
            Some("status x true /c ")
        );
        assert_eq!(p(&["start", "x"]).as_deref(), Some("start x None  "));
        assert_eq!(
            p(&["--runtime-dir", "/r", "stop", "x", "--timeout", "2.5"]).as_deref(),
            Some("stop x Some(2.5)  /r")
        );
        assert_eq!(
            p(&["start", "--timeout=9", "x"]).as_deref(),
            Some("start x Some(9.0)  ")
        );
        assert_eq!(p(&["ocf", "monitor"]).as_deref(), Some("ocf monitor  "));
        // Left to clap: help, unknown options, missing or extra arguments,
        // other commands, bad values, options of the other command.
        for args in [
            &["monitor"][..],
            &["monitor", "x", "y"],
            &["monitor", "x", "--help"],
            &["monitor", "x", "--depth"],
            &["monitor", "x", "--depth", "many"],
            &["monitor", "x", "--json"],
            &["status", "x", "--depth", "0"],
            &["status"],
            &["list"],
            &["start", "x", "--with-deps"],
            &["start", "x", "--timeout", "0"],
            &["start", "x", "--timeout", "-1"],
            &["stop", "x", "--timeout"],
            &["stop", "x", "--json"],
            &["stop", "x", "--timeout", "1", "--timeout=2"],
            &["restart", "x"],
            &["ocf"],
            &["ocf", "start", "x"],
            &["--config"],
            &["--config=", "status", "x"],
            &["-h"],
            &[],
        ] {
            assert_eq!(p(args), None, "{args:?}");
        }
    }
}
