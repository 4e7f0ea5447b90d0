//! `sluice-bench`: benchmarks for sluice, one subcommand per kind of measurement.
//!
//! - `proto`: the sans-IO protocol core on one pinned core (handshakes, allowed-IPs lookups,
//!   replay-window checks); see [`proto_bench`].
//!
//! This file only parses the command line and dispatches; each subcommand lives in its own
//! module and reports through [`report`], so all of them share one header and JSON layout.

mod harness;
mod proto_bench;
mod report;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Protocol-core costs on one pinned core: handshakes/s, allowed-IPs lookups/s, replay
    /// checks/s.
    Proto(proto_bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proto(args) => proto_bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
