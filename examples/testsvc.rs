//! Misbehaving services for cohost's tests (and for trying cohost out):
//!
//!     testsvc serve ADDR:PORT        answer "ok <hostname>" to every connection
//!     testsvc hostile ADDR:PORT      ignore SIGTERM, double-fork, setsid, and
//!                                    leave a grandchild (also deaf to SIGTERM)
//!                                    holding the port
//!     testsvc hang ADDR:PORT         listen but never answer (a hung daemon)
//!     testsvc crash MS CODE          exit with CODE after MS milliseconds
//!     testsvc forking ADDR:PORT      fork a daemon that serves, exit 0 once it
//!                                    listens (like `oserv.rc start`)
//!     testsvc daemons NAME N         fork N detached daemons renamed NAME, exit 0
//!     testsvc wildcard PORT          listen on 0.0.0.0:PORT (the "port 94" bug)
//!     testsvc report FILE            write env, host name, cwd, uid, /etc view
//!                                    to FILE, then sleep
//!     testsvc chatter                a line on stdout every 5 ms, write errors
//!                                    (a full log disk) ignored
//!     testsvc sleep                  sleep forever
//!     testsvc deaf                   sleep forever, ignoring SIGTERM
//!     testsvc alloc MIB DONE         allocate and touch MIB MiB, create DONE, sleep
//!     testsvc burn MS DONE           use MS ms of CPU time, create DONE, sleep
//!     testsvc write MIB FILE DONE    write MIB MiB to FILE with fsync, create DONE, sleep

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| {
        args.get(i)
            .cloned()
            .unwrap_or_else(|| die("missing argument"))
    };
    match args.first().map(String::as_str) {
        Some("serve") => serve(&bind(&a(1)), "ok"),
        Some("hostile") => hostile(&a(1)),
        Some("hang") => {
            let _l = bind(&a(1));
            println!("listening, never answering");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("crash") => {
            std::thread::sleep(Duration::from_millis(a(1).parse().unwrap_or(0)));
            println!("crashing now");
            std::process::exit(a(2).parse().unwrap_or(1));
        }
        Some("forking") => forking(&a(1)),
        Some("daemons") => daemons(&a(1), a(2).parse().unwrap_or(1)),
        Some("wildcard") => serve(&bind(&format!("0.0.0.0:{}", a(1))), "wild"),
        Some("report") => report(&a(1)),
        Some("chatter") => chatter(),
        Some("sleep") => sleep_forever(false),
        Some("deaf") => sleep_forever(true),
        Some("alloc") => alloc(a(1).parse().unwrap_or(1), &a(2)),
        Some("burn") => burn(a(1).parse().unwrap_or(1), &a(2)),
        Some("write") => write_synced(a(1).parse().unwrap_or(1), &a(2), &a(3)),
        _ => die(
            "usage: testsvc serve|hostile|hang|crash|forking|daemons|wildcard|report|sleep|deaf|alloc|burn|write ...",
        ),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("testsvc: {msg}");
    std::process::exit(2)
}

fn bind(addr: &str) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| die(&format!("bind {addr}: {e}")))
}

fn host() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn serve(l: &TcpListener, word: &str) -> ! {
    println!("serving on {:?}", l.local_addr());
    let _ = std::io::stdout().flush();
    for mut c in l.incoming().flatten() {
        let _ = c.write_all(format!("{word} {}\n", host()).as_bytes());
    }
    std::process::exit(0)
}

fn ignore_term() {
    // SAFETY: setting a disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
}

fn sleep_forever(deaf: bool) -> ! {
    if deaf {
        ignore_term();
    }
    println!("sleeping (pid {})", std::process::id());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn chatter() -> ! {
    let mut n: u64 = 0;
    loop {
        n += 1;
        // Not println!: it panics when the disk is full.
        let _ = std::io::stdout().write_all(format!("chatter line {n}\n").as_bytes());
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn hostile(addr: &str) -> ! {
    ignore_term();
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: single-threaded here; the children only call simple syscalls
    // and our own code before serving.
    match unsafe { libc::fork() } {
        0 => {
            drop(r);
            // SAFETY: as above.
            unsafe { libc::setsid() };
            match unsafe { libc::fork() } {
                0 => {
                    // The grandchild: its own session, deaf to SIGTERM, holds the port.
                    unsafe { libc::setsid() };
                    ignore_term();
                    let l = bind(addr);
                    let _ = nix::unistd::write(&w, format!("{}\n", std::process::id()).as_bytes());
                    drop(w);
                    serve(&l, "hostile")
                }
                _ => std::process::exit(0), // the middle process vanishes: double fork
            }
        }
        _ => {
            drop(w);
            let mut s = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut s);
            println!(
                "hostile: grandchild {} holds {addr}; I ignore SIGTERM",
                s.trim()
            );
            let _ = std::io::stdout().flush();
            sleep_forever(true)
        }
    }
}

fn forking(addr: &str) -> ! {
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: single-threaded.
    match unsafe { libc::fork() } {
        0 => {
            drop(r);
            unsafe { libc::setsid() };
            let l = bind(addr);
            let _ = nix::unistd::write(&w, b"up\n");
            drop(w);
            serve(&l, "forked")
        }
        pid => {
            drop(w);
            let mut s = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut s);
            if s.trim() != "up" {
                die("the daemon did not come up");
            }
            println!("started daemon {pid}");
            std::process::exit(0)
        }
    }
}

fn daemons(name: &str, n: u32) -> ! {
    for _ in 0..n {
        // SAFETY: single-threaded.
        if unsafe { libc::fork() } == 0 {
            unsafe { libc::setsid() };
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: PR_SET_NAME with a NUL-terminated name (comm, 15 bytes).
            unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
            sleep_forever(false);
        }
    }
    println!("started {n} x {name}");
    std::process::exit(0)
}

fn report(file: &str) -> ! {
    let mut out = String::new();
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in env {
        out.push_str(&format!("env {k}={v}\n"));
    }
    out.push_str(&format!("hostname {}\n", host()));
    out.push_str(&format!(
        "cwd {}\n",
        std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    ));
    out.push_str(&format!("uid {}\n", nix::unistd::getuid()));
    out.push_str(&format!("gid {}\n", nix::unistd::getgid()));
    // SAFETY: umask read-and-restore.
    let m = unsafe { libc::umask(0) };
    unsafe { libc::umask(m) };
    out.push_str(&format!("umask {m:03o}\n"));
    // Probe with fcntl: listing /proc/self/fd would show its own fd.
    // SAFETY: F_GETFD on numbers that may or may not be open.
    let open: Vec<i32> = (0..1024)
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0)
        .collect();
    let names: Vec<String> = open.iter().map(|fd| fd.to_string()).collect();
    out.push_str(&format!("fds {}\n", names.join(" ")));
    for fd in open {
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        out.push_str(&format!("fd {fd} {target}\n"));
    }
    let tmp = format!("{file}.tmp");
    std::fs::write(&tmp, out).unwrap_or_else(|e| die(&format!("{tmp}: {e}")));
    std::fs::rename(&tmp, file).unwrap_or_else(|e| die(&format!("{file}: {e}")));
    sleep_forever(false)
}

fn done(file: &str) -> ! {
    std::fs::write(file, "done\n").unwrap_or_else(|e| die(&format!("{file}: {e}")));
    sleep_forever(false)
}

fn alloc(mib: usize, file: &str) -> ! {
    // Every page written: resident, charged to the memory cgroup.
    let v = vec![1u8; mib << 20];
    std::hint::black_box(&v);
    println!("allocated {mib} MiB");
    std::mem::forget(v);
    done(file)
}

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills ts.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn burn(ms: u64, file: &str) -> ! {
    let want = Duration::from_millis(ms);
    let mut x: u64 = 1;
    while cpu_time() < want {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    println!("burnt {ms} ms of CPU");
    done(file)
}

fn write_synced(mib: usize, out: &str, file: &str) -> ! {
    let mut f = std::fs::File::create(out).unwrap_or_else(|e| die(&format!("{out}: {e}")));
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk)
            .unwrap_or_else(|e| die(&format!("{out}: {e}")));
    }
    f.sync_all()
        .unwrap_or_else(|e| die(&format!("fsync {out}: {e}")));
    println!("wrote {mib} MiB to {out}");
    done(file)
}
