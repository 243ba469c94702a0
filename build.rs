//! Link the unwinder statically (libgcc_eh) instead of libgcc_s.so.
//!
//! `cohost monitor` is exec'd by cluster software every few seconds per
//! instance, so what the dynamic loader does before `main` matters: every
//! shared library is an open, four mmaps, its relocations and symbol
//! lookups. std needs libgcc only for its unwinder (backtraces; the release
//! build aborts on panic), and libgcc_eh.a is that unwinder as an archive:
//! it is what a `+crt-static` build links, and what gcc's `-static-libgcc`
//! does. With it, `--as-needed` drops libgcc_s.so: one library less, about
//! 0.1 ms less per call here (BENCHMARKS.md, "default build").
//!
//! A fully static binary is faster still (no loader at all), but that is a
//! `-C target-feature=+crt-static` of the final crate, which neither
//! Cargo.toml nor a build script can set (see BENCHMARKS.md for why not
//! .cargo/config.toml either); the Debian package and benches/run.sh build it.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let crt_static = features.split(',').any(|f| f == "crt-static");
    // glibc targets only (musl and static builds bring their own), and only
    // where gcc has the archive (a clang/compiler-rt toolchain may not).
    if os == "linux" && env == "gnu" && !crt_static && has_gcc_eh() {
        // `-bundle`: resolved by the final link (the C compiler driver knows
        // where libgcc lives), not copied into the rlib.
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    }
}

fn has_gcc_eh() -> bool {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    std::process::Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|p| std::path::Path::new(p.trim()).is_absolute())
        .unwrap_or(false)
}
