//! The benchmark workload: a tiny TCP listener (benches/README.md).
//!
//!     listener ADDR PORT
//!
//! Binds ADDR:PORT (SO_REUSEADDR), answers each connection with one line
//! and closes it; SIGTERM or SIGINT ends it with status 0. The same
//! behaviour as the peers' benchmark listener (listener.c), so that every
//! supervisor in a run starts the same process.

use std::io::Write;
use std::net::TcpListener;

extern "C" fn on_stop(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe; the kernel closes the socket.
    unsafe { libc::_exit(0) }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: listener ADDR PORT");
        std::process::exit(2);
    }
    let addr = format!("{}:{}", args[1], args[2]);
    // SAFETY: installing a handler that only calls _exit.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
    }
    // std sets SO_REUSEADDR on Unix listeners.
    let l = TcpListener::bind(&addr).unwrap_or_else(|e| {
        eprintln!("listener: bind {addr}: {e}");
        std::process::exit(1)
    });
    let line = format!("listener {addr}\n");
    for mut c in l.incoming().flatten() {
        let _ = c.write_all(line.as_bytes());
    }
}
