//! The demo service: a TCP server that answers each connection with one
//! line `DATE TIME PROGRAM HOSTNAME COUNTER` and closes it. The counter
//! lives in `<data>/counter` on the instance's shared disk, read and
//! written back (fsync) on every request, so it continues after a takeover.
//!
//!     counter [--listen ADDR:PORT] [--data DIR]
//!     counter --ask ADDR:PORT          (the one-line client: print the answer)
//!
//! Defaults come from the environment cohost gives an instance:
//! COHOST_ADDRESS, COHOST_PORT, COHOST_PATH_DATA. It binds exactly the
//! instance's address (never 0.0.0.0), so two copies share one port.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

fn main() {
    let mut listen = match (
        std::env::var("COHOST_ADDRESS"),
        std::env::var("COHOST_PORT"),
    ) {
        (Ok(a), Ok(p)) if a.contains(':') => format!("[{a}]:{p}"),
        (Ok(a), Ok(p)) => format!("{a}:{p}"),
        _ => String::new(),
    };
    let mut data = std::env::var("COHOST_PATH_DATA").map(PathBuf::from).ok();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ask" => ask(&args.next().unwrap_or_default()),
            "--listen" => listen = args.next().unwrap_or_default(),
            "--data" => data = args.next().map(PathBuf::from),
            other => fail(&format!(
                "unknown argument {other:?}; usage: counter [--listen ADDR:PORT] [--data DIR]"
            )),
        }
    }
    if listen.is_empty() {
        fail(
            "no address: pass --listen ADDR:PORT or run under cohost (COHOST_ADDRESS, COHOST_PORT)",
        );
    }
    let data = data.unwrap_or_else(|| fail("no data directory: pass --data DIR or set paths.data"));
    let listener = TcpListener::bind(&listen)
        .unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e}")));
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!(
        "counter listening on {listen} (data {}, host {host})",
        data.display()
    );
    let counter_file = data.join("counter");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let n = match bump(&counter_file) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("counter: {}: {e}", counter_file.display());
                continue;
            }
        };
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let (date, time) = now.split_once('T').unwrap_or((&now, ""));
        let line = format!("{date} {} counter {host} {n}\n", time.trim_end_matches('Z'));
        let _ = conn.write_all(line.as_bytes());
    }
}

/// The client: connect, print the one line, exit 0 (1 if nothing answers).
fn ask(addr: &str) -> ! {
    use std::net::{TcpStream, ToSocketAddrs};
    let target = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| fail(&format!("bad address {addr:?}")));
    match TcpStream::connect_timeout(&target, std::time::Duration::from_secs(3)) {
        Ok(mut s) => {
            let mut line = String::new();
            let _ = s.read_to_string(&mut line);
            print!("{line}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("counter: {addr}: {e}");
            std::process::exit(1)
        }
    }
}

/// Reads the counter, adds one, and replaces the file with the new value
/// (written to `counter.new`, fsynced, renamed over, the directory
/// fsynced): a copy killed at any point (a stop's SIGTERM while a request
/// is served, a node that dies) leaves the old value or the new one, never
/// an empty file. It was truncated and rewritten in place: a SIGTERM
/// between the two reset the count to 1 after the next takeover.
fn bump(path: &Path) -> std::io::Result<u64> {
    let n = match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|e| {
            std::io::Error::other(format!(
                "holds {:?}, not a number ({e}); fix or remove it",
                s.trim()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    } + 1;
    let tmp = path.with_extension("new");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(format!("{n}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(n)
}

fn fail(msg: &str) -> ! {
    eprintln!("counter: {msg}");
    std::process::exit(2)
}
