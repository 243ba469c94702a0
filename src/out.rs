//! What the command line prints on its standard output: `out!` and
//! `outln!`, like `print!` and `println!` but without their panic when the
//! reader is gone. `cohost list | head` ends as `ls | head` does: quietly,
//! by SIGPIPE, once `head` has closed the pipe (SIGPIPE is otherwise
//! ignored, so that a write to a closed control socket is an error the
//! client reports). Any other failure to write (a full disk) is said on
//! standard error, with exit status 1. Never used by the daemon.

use std::io::Write;

#[doc(hidden)]
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        failed(e);
    }
}

/// Writes `bytes` to standard output, as [`out!`] does its text (flushed
/// at the process's end or by the next [`write_with`]).
pub fn write_bytes(bytes: &[u8]) {
    if let Err(e) = std::io::stdout().lock().write_all(bytes) {
        failed(e);
    }
}

/// Runs `f` on the locked standard output, as [`out!`] does its text.
pub fn write_with(f: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = f(&mut out).and_then(|()| out.flush()) {
        failed(e);
    }
}

fn failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // SAFETY: back to the default disposition, then the signal: the
        // process ends as killed by SIGPIPE, no handler runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
    let _ = writeln!(std::io::stderr(), "cohost: writing the output: {e}");
    std::process::exit(1)
}

/// `print!` that ends quietly when the reader has gone.
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*)) };
}

/// `println!` that ends quietly when the reader has gone.
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}
