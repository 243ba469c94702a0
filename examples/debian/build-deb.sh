#!/bin/sh
# Builds the Debian package: target/debian/cohost_<version>-1_<arch>.deb.
#   examples/debian/build-deb.sh [cargo deb options, e.g. -o DIR]
# 1. the binary: the release build, static on glibc (build.rs; README
#    "Install");
# 2. man pages, completions and the commented reference file, generated
#    into target/pkg by examples/pkg-assets.rs from the clap definitions and
#    instances.d/reference.toml (so the binary carries no generator code);
# 3. `cargo deb --no-build`, which packs them as Cargo.toml's
#    [package.metadata.deb] says.
set -eu
cd "$(dirname "$0")/../.."
command -v cargo-deb >/dev/null || {
	echo "cargo-deb is missing: cargo install cargo-deb --version 3.8.0 --locked (tests/setup-host.sh does)" >&2
	exit 2
}
cargo build --release --bin cohost
cargo run --quiet --example pkg-assets -- target/pkg
cargo deb --no-build "$@"
