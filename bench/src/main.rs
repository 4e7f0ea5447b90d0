//! `sluice-bench`: benchmarks for sluice, one subcommand per kind of measurement.
//!
//! - `proto`: the sans-IO protocol core on one pinned core (handshakes, allowed-IPs lookups,
//!   replay-window checks); see [`proto_bench`].
//! - `lab`: remote users in network namespaces with real WireGuard clients, traffic through
//!   the gateway, and a summary of handshakes, throughput and drops; see [`lab`].
//! - `crypto`: batched ChaCha20-Poly1305 against ring and RustCrypto; see [`crypto_bench`].
//! - `churn`: peers added per second through the `wg` API with many peers present, and the
//!   data plane's throughput while peers change; see [`churn`].
//! - `compare`: many simulated users against sluice, wireguard-go and boringtun-cli on the
//!   same core, throughput and handshakes, with sluice's ratio to each; see [`compare`].
//! - `failover`: a VRRP failover under a streaming user, gap and loss with and without
//!   session sync; see [`failover`].
//! - `xdp-parse`: the XDP program's cost per frame, loaded by root and with only the systemd
//!   unit's capabilities; see [`xdp_parse`].
//!
//! This file only parses the command line and dispatches; each subcommand lives in its own
//! module and reports through [`report`], so all of them share one header and JSON layout.

mod churn;
mod compare;
mod crypto_bench;
mod failover;
mod harness;
mod lab;
mod proto_bench;
mod report;
mod xdp_parse;

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
    /// The demo: two remote users (wireguard-go, boringtun-cli) in network namespaces, traffic
    /// through sluice to a sink, and a summary of handshakes, throughput and drops. Needs root;
    /// installs missing tools.
    Lab(lab::Args),
    /// Batched ChaCha20-Poly1305 against ring and RustCrypto on one pinned core: GB/s per
    /// packet size, seal and open.
    Crypto(crypto_bench::Args),
    /// Peers added per second through the `wg` API with 100,000 peers present, and TCP
    /// throughput through the tunnel while peers are added and removed continuously, against
    /// the same without changes. Needs root.
    Churn(churn::Args),
    /// Many simulated users (real handshakes, pre-encrypted data) through sluice in each mode,
    /// wireguard-go and boringtun-cli on the same core: throughput per size and handshakes
    /// per second, with sluice's ratio to each. Needs root.
    Compare(compare::Args),
    /// A VRRP failover (real keepalived, two sluice gateways) under a streaming wireguard-go
    /// user: the gap and the datagrams lost, with and without session sync. Needs root.
    Failover(failover::Args),
    /// The outer XDP program's cost per frame (BPF_PROG_TEST_RUN, as `bpftool prog run`),
    /// loaded by root and by a process with only the systemd unit's four capabilities. Needs
    /// root.
    XdpParse(xdp_parse::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proto(args) => proto_bench::run(&args),
        Command::Lab(args) => lab::run(&args),
        Command::Crypto(args) => crypto_bench::run(&args),
        Command::Churn(args) => churn::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Failover(args) => failover::run(&args),
        Command::XdpParse(args) => xdp_parse::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
