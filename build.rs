//! The release build of `cohost` is linked static (static-pie) on glibc
//! targets; the other builds link the unwinder statically at least.
//!
//! `cohost monitor` is exec'd by cluster software every few seconds per
//! instance, so what happens before `main` matters: the dynamic loader
//! opens and maps libc, resolves its symbols and relocations, and the
//! kernel maps one more object (about 0.2 ms per call here against 0.1 ms
//! for a static binary: BENCHMARKS.md, "default build").
//!
//! The supported switch for a static binary, `-C target-feature=+crt-static`,
//! cannot be set by Cargo.toml or a build script (BENCHMARKS.md says why
//! not `.cargo/config.toml` either). What a build script can do is add
//! linker arguments and search paths, and that is enough: rustc asks for
//! the system libraries as `-lc -lm -lgcc_s ...`, which the linker looks up
//! in the search paths first. This script puts a directory first in which
//! `libc.so`, `libm.so` and `libgcc_s.so` are linker scripts naming the
//! static archives (glibc's own `libc.so` is such a script), and links the
//! binary `-static-pie`: the same objects as a `+crt-static` build, with
//! ASLR kept. Only for the release profile, only on linux-gnu, only when
//! the C toolchain has the archives (`libc6-dev` ships them); with
//! `COHOST_DYNAMIC=1` in the build's environment, the binary stays dynamic.
//!
//! Static glibc still loads NSS modules other than `files` (sss, ldap,
//! systemd) with dlopen at run time, which works with the glibc version it
//! was linked against (README "Install", on NSS).
//!
//! Otherwise: the unwinder as the archive libgcc_eh.a instead of
//! libgcc_s.so (what gcc's `-static-libgcc` does): one library less for
//! the loader.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=COHOST_DYNAMIC");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let crt_static = features.split(',').any(|f| f == "crt-static");
    // glibc targets only (musl and +crt-static builds are static already).
    if os != "linux" || env != "gnu" || crt_static {
        return;
    }
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let dynamic = std::env::var_os("COHOST_DYNAMIC").is_some_and(|v| v == "1");
    if release
        && !dynamic
        && let Some(dir) = static_libs()
    {
        // For the binary only (a search path would reach the examples and
        // tests too); the linker applies every -L to every -l, wherever
        // it stands.
        println!("cargo:rustc-link-arg-bin=cohost=-L{}", dir.display());
        println!("cargo:rustc-link-arg-bin=cohost=-static-pie");
        return;
    }
    if archive("libgcc_eh.a").is_some() {
        // `-bundle`: resolved by the final link (the C compiler driver knows
        // where libgcc lives), not copied into the rlib.
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    }
}

/// The directory of linker scripts that turn rustc's `-lc -lm -lgcc_s
/// -lpthread -ldl -lrt -lutil` into the static archives; None where the
/// toolchain lacks one of them.
fn static_libs() -> Option<PathBuf> {
    let libc = archive("libc.a")?;
    let libm = archive("libm.a")?;
    archive("libgcc_eh.a")?;
    let dir = PathBuf::from(std::env::var_os("OUT_DIR")?).join("static-libs");
    std::fs::create_dir_all(&dir).ok()?;
    let scripts = [
        ("libc.so", format!("INPUT({})\n", libc.display())),
        ("libm.so", format!("INPUT({})\n", libm.display())),
        ("libgcc_s.so", "INPUT(-lgcc_eh -lgcc)\n".to_string()),
    ];
    for (name, text) in scripts {
        std::fs::write(dir.join(name), text).ok()?;
    }
    // Part of libc.a since glibc 2.34 (their archives are empty stubs);
    // the archives of an older glibc where it has them.
    for lib in ["pthread", "dl", "rt", "util"] {
        let text = match archive(&format!("lib{lib}.a")) {
            Some(a) => format!("INPUT({})\n", a.display()),
            None => "INPUT()\n".to_string(),
        };
        std::fs::write(dir.join(format!("lib{lib}.so")), text).ok()?;
    }
    Some(dir)
}

/// The C toolchain's path of a library archive, if it has it.
fn archive(name: &str) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(cc)
        .arg(format!("-print-file-name={name}"))
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // gcc prints the bare name when it does not find it.
    (path.is_absolute() && Path::new(&path).exists()).then_some(path)
}
