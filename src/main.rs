//! The `cohost` binary: parse arguments, run, exit with the status.
//!
//! `no_main`: cluster software runs `cohost monitor` every few seconds per
//! instance, so start-up cost matters. Rust's own entry point sets up a
//! stack-overflow handler (an alternate signal stack, and on the main
//! thread the guard-page lookup reads /proc/self/maps) before `main`; this
//! entry skips that (std::env::args still works: glibc hands argv to std
//! through .init_array). What it did that we need, we do: ignore SIGPIPE
//! (a client whose peer closed must not die mid-answer; the daemon writes to
//! sockets of clients that may be gone).
#![no_main]

use clap::Parser;

#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: setting a disposition; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Run as `$OCF_ROOT/resource.d/PROVIDER/TYPE ACTION` (a symlink to
    // this binary): the same call as `cohost ocf ACTION`.
    if let Some(agent) = cohost::cli::agent::args(&args) {
        args = agent;
    }
    if let Some(code) = cohost::cli::fast::try_run(&args) {
        return code;
    }
    let cli = cohost::cli::Cli::parse_from(args);
    cohost::cli::run(cli)
}
