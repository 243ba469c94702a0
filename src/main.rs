//! The `cohost` binary: parse arguments, run, exit with the status.

use clap::Parser;

fn main() {
    let cli = cohost::cli::Cli::parse();
    std::process::exit(cohost::cli::run(cli));
}
