//! `sluice-bench proto`: what the sans-IO protocol core costs on one core.
//!
//! Three parts, each in its own module:
//! - [`handshake`]: responder handshakes per second, both through the bare handshake API and
//!   through `Device::handle_datagram`;
//! - [`allowedips`]: longest-prefix-match lookups per second in a large table, plus its build
//!   time and memory;
//! - [`replay`]: anti-replay window checks per second for in-order and reordered streams.
//!
//! Everything runs on the calling thread, pinned to one core, so the numbers are per-core costs
//! that can be compared across commits and machines. Nothing asserts on speed: a run fails only
//! if the work it timed did not do what it should (a handshake rejected, a lookup missing).

mod allowedips;
mod handshake;
mod replay;

use crate::harness::{self, Timing};
use crate::report::{Machine, Report};
use serde::Serialize;
use std::path::PathBuf;

/// Which parts to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Handshake,
    Allowedips,
    Replay,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Core to pin the benchmark thread to [default: the last core]
    #[arg(long)]
    core: Option<usize>,
    /// Timed seconds per repeat [default: 1, or 0.1 with --quick]
    #[arg(long, value_parser = positive_seconds)]
    seconds: Option<f64>,
    /// Repeats per benchmark; median, min and max are reported [default: 3, or 1 with --quick]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: Option<u32>,
    /// Allowed-IPs prefixes (70% IPv4, 30% IPv6) [default: 1000000, or 10000 with --quick]
    #[arg(long, value_parser = clap::value_parser!(u32).range(10..=10_000_000))]
    prefixes: Option<u32>,
    /// Simulated users (configured peers) for the handshake benchmarks [default: 1000, or 16
    /// with --quick]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    users: Option<u32>,
    /// Small sizes and short timings, for CI smoke tests (explicit flags still win)
    #[arg(long)]
    quick: bool,
    /// Run only these parts (comma-separated) [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Also write the results as JSON to this file (schema: see `report.rs`)
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("expected seconds in (0, 3600], got {s:?}")),
    }
}

/// The settings a run actually used, after `--quick` filled in unset flags. Serialized as the
/// report's `params`.
#[derive(Debug, Serialize)]
pub struct Config {
    pub seconds: f64,
    pub warmup: f64,
    pub repeat: usize,
    pub users: usize,
    pub prefixes: usize,
    /// Addresses in the allowed-IPs query set, cycled through during timing.
    pub lookup_queries: usize,
    pub quick: bool,
    pub parts: Vec<Part>,
}

impl Config {
    fn from_args(a: &Args) -> Config {
        let q = a.quick;
        let seconds = a.seconds.unwrap_or(if q { 0.1 } else { 1.0 });
        Config {
            seconds,
            // A quarter of a repeat, capped: enough to reach steady clocks and warm caches
            // without doubling the run time.
            warmup: (seconds / 4.0).min(0.5),
            repeat: a.repeat.unwrap_or(if q { 1 } else { 3 }) as usize,
            users: a.users.unwrap_or(if q { 16 } else { 1000 }) as usize,
            prefixes: a.prefixes.unwrap_or(if q { 10_000 } else { 1_000_000 }) as usize,
            lookup_queries: if q { 1 << 14 } else { 1 << 20 },
            quick: q,
            parts: if a.only.is_empty() {
                vec![Part::Handshake, Part::Allowedips, Part::Replay]
            } else {
                a.only.clone()
            },
        }
    }

    pub fn timing(&self) -> Timing {
        Timing {
            seconds: self.seconds,
            warmup: self.warmup,
            repeat: self.repeat,
        }
    }

    fn runs(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }
}

pub fn run(args: &Args) -> Result<(), String> {
    let cfg = Config::from_args(args);
    let mut machine = Machine::collect();
    machine.pinned_core = match harness::pin(args.core) {
        Ok(core) => Some(core),
        // Asked-for pinning that fails is an error; the default is best effort, since some
        // containers forbid changing affinity and unpinned numbers are still worth having.
        Err(e) if args.core.is_some() => return Err(e),
        Err(e) => {
            eprintln!("warning: {e}; running unpinned");
            None
        }
    };
    let params = serde_json::to_value(&cfg).map_err(|e| e.to_string())?;
    let mut report = Report::new("proto", machine, params);
    // The header goes out first so a long run shows what it is doing.
    println!("{}", report.header());

    if cfg.runs(Part::Handshake) {
        handshake::run(&cfg, &mut report)?;
    }
    if cfg.runs(Part::Allowedips) {
        allowedips::run(&cfg, &mut report)?;
    }
    if cfg.runs(Part::Replay) {
        replay::run(&cfg, &mut report)?;
    }

    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
