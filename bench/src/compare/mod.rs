//! `sluice-bench compare`: many simulated users against the gateway under test — sluice in
//! each of its modes, wireguard-go and boringtun-cli — in the same topology, on the same
//! cores, in one run, and sluice's ratio to each.
//!
//! - [`topo`]: generator namespace -- gateway -- sink namespace, the gateway on cores 1..=k
//!   (`--gateway-cores`), the generator and the sink on core 0.
//! - [`users`]: N simulated users (1..100,000), each a sluice protocol core ([`Device`]) as
//!   its client: real handshakes with the gateway, then transport data encrypted before the
//!   clock starts.
//! - [`io`]: the generator's socket (`sendmmsg` with each user's own source address).
//! - [`packet`]: the inner packets and the sink's verification (size, user, no duplicates).
//! - [`run`]: one timed run and its numbers; [`sink`]: the sink's counter (an XDP program,
//!   or a socket).
//! - [`output`]: records, the table with ratios, JSON and SVG.
//!
//! Scenarios: **handshakes** (every user joins, initiations made ahead, at most `--window`
//! unanswered; handshakes per second until the last response), then **throughput** users ->
//! inside per inner size (64, 512, 1420 B, IMIX) at maximum rate (or `--rate`), each repeated
//! `--repeats` times with a fresh handshake before each repeat, median and spread reported.
//! **Scaling**: the same maximum-rate throughput users -> inside (`--scaling-sizes`) with the
//! gateway on k = 1..=N cores, per implementation, with equal resources (k sluice workers,
//! k boringtun threads, GOMAXPROCS=k for wireguard-go, every thread confined to the k cores).
//!
//! [`Device`]: sluice::proto::device::Device

pub mod aead_ref;
pub mod flood;
pub mod io;
pub mod latency;
pub mod output;
pub mod packet;
pub mod reverse;
pub mod run;
pub mod sink;
pub mod topo;
pub mod users;
pub mod xsk_tx;

use crate::report::{Machine, Record, Report};
use output::{CompareRecord, FloodResult, LatencyResult, Sample};
use packet::SizeMix;
use sluice::testbed::is_root;
use sluice::testbed::tools::{self, Tool};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;
use topo::{GenTopology, Impl, ImplKind, Mode};

/// The sink's UDP port (inside the tunnel).
pub const SINK_PORT: u16 = 9000;
/// The pool is sized for this rate when no `--rate` is given. The generator's own ceiling on
/// the 2-core machine was below half of it; a faster generator empties the pool early, which
/// shortens the run (its rates stay valid: they are taken over the time actually sent).
const POOL_PPS: f64 = 800_000.0;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds per timed run
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Simulated users (each a real WireGuard peer of the gateway, one /32 each)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(users::MAX_USERS)))]
    users: u32,
    /// Inner packet sizes (bytes, or imix), comma-separated
    #[arg(long, value_delimiter = ',', default_value = "64,512,1420,imix")]
    sizes: Vec<SizeMix>,
    /// Repeats per scenario (the median and spread are reported)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    repeats: u32,
    /// Send at this many packets per second instead of as fast as the generator can
    #[arg(long)]
    rate: Option<f64>,
    /// The gateways under test, comma-separated: sluice-socket, sluice-xdp,
    /// sluice-appliance (XDP + AF_XDP on both NICs, no TUN in the path), wireguard-go,
    /// boringtun
    #[arg(
        long = "impl",
        value_delimiter = ',',
        default_value = "sluice-socket,sluice-xdp,sluice-appliance,wireguard-go,boringtun"
    )]
    impls: Vec<String>,
    /// Unanswered handshake initiations at most, in the handshakes scenario
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Also measure the gateway's resident memory per peer with this many peers configured
    /// (against one peer); 0 skips it
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(users::MAX_USERS)))]
    memory_peers: u32,
    /// Probes of the search for the highest rate with at most 1 % loss, per size (0: no
    /// search)
    #[arg(long, default_value_t = 5)]
    search_steps: u32,
    /// Seconds per search probe
    #[arg(long, default_value_t = 1.0)]
    search_seconds: f64,
    /// Memory for the pre-encrypted datagrams of one run, MiB
    #[arg(long, default_value_t = 1024)]
    pool_mib: usize,
    /// Directions of the throughput scenario, comma-separated: users-inside (the gateway
    /// decrypts), inside-users (the gateway encrypts)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "users-inside,inside-users"
    )]
    directions: Vec<Direction>,
    /// Spoofed handshake initiations per second in the flood scenario (0: no flood scenario)
    #[arg(long, default_value_t = 20_000.0)]
    flood_pps: f64,
    /// Probes per second of the latency scenario (0: no latency scenario)
    #[arg(long, default_value_t = 1000.0)]
    probe_pps: f64,
    /// The users' paced stream in the flood and latency scenarios runs at this fraction of
    /// the lossless rate found (of the maximum delivered rate without a search)
    #[arg(long, default_value_t = 0.8)]
    load_fraction: f64,
    /// Inner size of the flood and latency scenarios' streams (bytes, or imix)
    #[arg(long, default_value = "512")]
    load_size: SizeMix,
    /// How the sink counts delivered packets: xdp (a counter program on the sink's link
    /// checks and drops every packet, a sample of 1 in 64 is checked in full by a socket;
    /// the socket sink is used when it does not load) or socket (a recvmmsg socket checks
    /// every packet in user space)
    #[arg(long, default_value = "xdp")]
    sink: sink::SinkKind,
    /// How the generator transmits the users' timed traffic: xdp (an AF_XDP socket on its
    /// end of the link; the default, which falls back to socket with the reason printed when
    /// AF_XDP cannot be set up, while an explicit `--tx xdp` fails instead) or socket
    /// (sendmmsg)
    #[arg(long)]
    tx: Option<xsk_tx::TxKind>,
    /// A short smoke run: 0.2 s per run, 8 users, one repeat (no meaningful numbers)
    #[arg(long)]
    quick: bool,
    /// Write the records (and machine, commit, pinning) as JSON to this file
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the chart (throughput and handshakes per implementation) as SVG to this file
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Cores for the gateway under test (cores 1..=N; the generator keeps the others, at
    /// least one); the scaling scenario runs every gateway with 1..=N of them [default: the
    /// machine's cores - 1]
    #[arg(long, value_name = "N")]
    gateway_cores: Option<usize>,
    /// Let --gateway-cores take the generator's core too (up to every core of the machine):
    /// exercises the k-core path on a small machine, and labels every result SHARED, not a
    /// measurement
    #[arg(long)]
    allow_shared_cores: bool,
    /// Inner sizes of the scaling scenario (users -> inside, max rate), comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1420,64")]
    scaling_sizes: Vec<SizeMix>,
    /// The sluice binary [default: build it with `cargo build --release -p sluice`]
    #[arg(long, value_name = "PATH")]
    sluice: Option<PathBuf>,
}

/// Which way the measured traffic goes through the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Users -> sink: the gateway decrypts.
    ToInside,
    /// Sink -> users: the gateway encrypts.
    ToUsers,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::ToInside => "users->inside",
            Direction::ToUsers => "inside->users",
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Direction, String> {
        match s {
            "users-inside" | "users->inside" | "in" => Ok(Direction::ToInside),
            "inside-users" | "inside->users" | "out" => Ok(Direction::ToUsers),
            other => Err(format!("direction '{other}': users-inside or inside-users")),
        }
    }
}

fn parse_impl(s: &str) -> Result<Impl, String> {
    let (kind, mode) = match s {
        "sluice-socket" | "sluice" => (ImplKind::Sluice, Mode::Socket),
        "sluice-xdp" => (ImplKind::Sluice, Mode::Xdp),
        "sluice-appliance" => (ImplKind::Sluice, Mode::Appliance),
        "wireguard-go" | "wg-go" => (ImplKind::WireguardGo, Mode::Socket),
        "boringtun" | "boringtun-cli" => (ImplKind::Boringtun, Mode::Socket),
        other => {
            return Err(format!(
                "unknown gateway '{other}' (sluice-socket, sluice-xdp, sluice-appliance, \
                 wireguard-go, boringtun)"
            ))
        }
    };
    Ok(Impl { kind, mode })
}

/// The settings after `--quick`.
#[derive(Debug)]
struct Plan {
    seconds: f64,
    users: u32,
    sizes: Vec<SizeMix>,
    repeats: u32,
    impls: Vec<Impl>,
    pool_mib: usize,
    memory_peers: u32,
    quick: bool,
    search_steps: u32,
    search_seconds: f64,
    /// Seconds of each flood, no-flood and latency run.
    scenario_seconds: f64,
    /// The cores this process may use (before any pinning).
    machine_cores: Vec<usize>,
    /// N: the gateway's cores in the main scenarios, the last step of the scaling one.
    gateway_cores: usize,
}

impl Plan {
    fn from(args: &Args) -> Result<Plan, String> {
        let impls = args
            .impls
            .iter()
            .map(|s| parse_impl(s))
            .collect::<Result<Vec<_>, _>>()?;
        let machine_cores: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let gateway_cores = args
            .gateway_cores
            .unwrap_or(machine_cores.len().saturating_sub(1))
            .max(1);
        if args.quick {
            return Ok(Plan {
                seconds: 0.2,
                users: args.users.min(8),
                sizes: args.sizes.clone(),
                repeats: 1,
                impls,
                pool_mib: args.pool_mib.min(8),
                memory_peers: args.memory_peers.min(200),
                quick: true,
                search_steps: args.search_steps.min(2),
                search_seconds: 0.2,
                scenario_seconds: 0.3,
                machine_cores,
                gateway_cores,
            });
        }
        Ok(Plan {
            seconds: args.seconds,
            users: args.users,
            sizes: args.sizes.clone(),
            repeats: args.repeats,
            impls,
            pool_mib: args.pool_mib,
            memory_peers: args.memory_peers,
            quick: false,
            search_steps: args.search_steps,
            search_seconds: args.search_seconds,
            scenario_seconds: args.seconds.max(1.0),
            machine_cores,
            gateway_cores,
        })
    }
}

pub fn run(args: &Args) -> Result<(), String> {
    if !is_root() {
        return Err(
            "compare needs root (network namespaces, TUN devices): run it with sudo".into(),
        );
    }
    let plan = Plan::from(args)?;
    ensure_tools()?;
    crate::lab::cleanup_on_exit("the comparison's namespaces and processes")?;
    let sluice_bin = if plan.impls.iter().any(|i| i.kind == ImplKind::Sluice) {
        Some(crate::lab::sluice_binary(args.sluice.as_deref())?)
    } else {
        None
    };
    let sink = match args.sink {
        sink::SinkKind::Xdp => match sink::SinkKind::xdp_loads() {
            Ok(()) => sink::SinkKind::Xdp,
            Err(e) => {
                println!("sink: the XDP counter does not load ({e}); the socket sink counts");
                sink::SinkKind::Socket
            }
        },
        sink::SinkKind::Socket => sink::SinkKind::Socket,
    };
    let cores = topo::Cores::plan(
        &plan.machine_cores,
        plan.gateway_cores,
        args.allow_shared_cores,
    )?;
    let mut machine = Machine::collect();
    topo::pin_current(topo::GENERATOR_CORE)?;
    machine.pinned_core = Some(topo::GENERATOR_CORE);
    machine.pinning = Some(cores.describe());
    let params = serde_json::json!({
        "seconds": plan.seconds,
        "users": plan.users,
        "sizes": plan.sizes.iter().map(|s| s.label()).collect::<Vec<_>>(),
        "repeats": plan.repeats,
        "rate_pps": args.rate,
        "impls": plan.impls.iter().map(|i| i.label()).collect::<Vec<_>>(),
        "window": args.window,
        "gateway_core": topo::GATEWAY_CORE,
        "generator_core": topo::GENERATOR_CORE,
        "gateway_cores": cores.k(),
        "gateway_cpus": cores.gateway,
        "generator_cpus": cores.generator,
        "cores_shared": cores.shared,
        "scaling": scaling_label(&plan, &cores),
        "scaling_sizes": args.scaling_sizes.iter().map(|s| s.label()).collect::<Vec<_>>(),
        "sink": match sink {
            sink::SinkKind::Xdp => format!(
                "xdp: counter program (generic XDP) on the sink's link, after RPS on the \
                 generator's core; 1 in {} packets (every latency probe) checked in full by a \
                 socket",
                sink::SAMPLE_EVERY
            ),
            sink::SinkKind::Socket => {
                "socket: recvmmsg in the sink namespace, on the generator's core".to_string()
            }
        },
        "quick": args.quick,
        "tx": match args.tx {
            Some(t) => t.label().to_string(),
            None => "xdp (socket where AF_XDP cannot be set up)".to_string(),
        },
        "directions": args.directions.iter().map(|d| d.label()).collect::<Vec<_>>(),
        "flood_pps": args.flood_pps,
        "probe_pps": args.probe_pps,
        "load_fraction": args.load_fraction,
        "load_size": args.load_size.label(),
        "scenario_seconds": plan.scenario_seconds,
        "loadavg_start": loadavg(),
    });
    let mut report = Report::new("compare", machine, params);
    print!("{}", report.header());

    println!("\nmaking {} users' keys ...", plan.users);
    let mut users = users::Users::new(plan.users);
    let aead = aead_ref::measure(AEAD_REF_SIZE, if plan.quick { 0.2 } else { 1.0 })?;
    println!(
        "batched AEAD alone, opening {AEAD_REF_SIZE} B packets on core {} (no gateway \
         running): {:.3} Mpps by wall time, {:.3} Mpps per CPU second",
        topo::GATEWAY_CORE,
        aead.wall_pps / 1e6,
        aead.cpu_pps / 1e6
    );
    report.params["aead_reference"] = serde_json::json!(aead);
    let keys = users.public_keys();
    let mut records: Vec<CompareRecord> = Vec::new();
    let mut pinning: Vec<String> = Vec::new();
    let mut tx_used: Vec<String> = Vec::new();
    let mut run_id = 0u32;
    for &which in &plan.impls {
        println!("\n=== {} ===", which.label());
        let topo = GenTopology::build(which, &cores, sluice_bin.clone(), &keys, users::tunnel_ip)?;
        println!(
            "  run id {}, files in {}; gateway resident memory after start: {:.1} MiB",
            topo.id,
            topo.dir.path().display(),
            topo.gateway_rss_bytes().unwrap_or(0) as f64 / 1048576.0
        );
        println!("  {}", topo.pinning);
        println!("  load average before: {}", loadavg());
        pinning.push(format!("{}: {}", which.label(), topo.pinning));
        let xsk = generator_tx(args.tx, &topo)?;
        tx_used.push(format!(
            "{}: {}",
            which.label(),
            if xsk.is_some() { "xdp" } else { "socket" }
        ));
        let r = measure(
            args,
            &plan,
            which,
            &topo,
            &mut users,
            &mut run_id,
            sink,
            xsk,
        );
        if which.mode == Mode::Appliance {
            // Proof that the appliance path carried the traffic, not the TUN beside it.
            let frames = match topo.inner_frames() {
                Some(f) => f
                    .iter()
                    .map(|(d, n)| format!("{d} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                None => "unreadable".into(),
            };
            println!("  inner NIC frames (rx/tx: AF_XDP, rx_kernel/tx_kernel: the TUN): {frames}");
            pinning.push(format!("{}: inner NIC frames: {frames}", which.label()));
        }
        drop(topo);
        println!("  load average after: {}", loadavg());
        records.extend(r?.into_iter().map(|mut rec| {
            rec.gateway_cores = cores.k();
            rec.cores_shared = cores.shared;
            rec
        }));
    }

    let scaling_note = scaling_label(&plan, &cores);
    println!("\n=== scaling with gateway cores: {scaling_note} ===");
    if plan.gateway_cores > 1 {
        let ctx = Scaling {
            args,
            plan: &plan,
            sluice_bin: sluice_bin.as_deref(),
            keys: &keys,
            sink,
        };
        records.extend(ctx.run(&mut users, &mut run_id, &mut pinning)?);
    }

    if plan.memory_peers > 0 {
        records.extend(memory(&plan, &cores, sluice_bin.as_deref()));
    }
    report.params["pinning"] = serde_json::json!(pinning);
    report.params["tx_used"] = serde_json::json!(tx_used);
    report.params["loadavg_end"] = serde_json::json!(loadavg());
    for r in &records {
        let mut name = format!("{} {} {} {}", r.scenario, r.direction, r.size, r.who());
        if r.scenario == "scaling" {
            name = format!("{name} {} cores", r.gateway_cores);
        }
        let (samples, unit): (Vec<f64>, &str) = match (r.scenario.as_str(), &r.flood, &r.latency) {
            ("throughput" | "scaling", _, _) => {
                (r.samples.iter().map(|s| s.mpps).collect(), "Mpps")
            }
            (_, Some(f), _) => (
                vec![f.goodput_fraction * 100.0],
                "% of the no-flood goodput",
            ),
            (_, _, Some(l)) => {
                name = format!("{name} {}", l.load);
                (
                    l.percentiles.iter().map(|p| p.p99_us).collect(),
                    "p99 one-way latency, us",
                )
            }
            ("memory", _, _) => (vec![r.value()], "bytes per peer"),
            _ => (vec![r.value()], "handshakes/s"),
        };
        report
            .results
            .push(Record::from_samples(&name, unit, &samples));
    }
    report.notes.extend(notes(&plan, args, &cores));
    println!("\n=== results (sluice-bench compare) ===");
    print!("{}", output::table(&records));
    println!();
    for line in aead_target(&records, &aead) {
        println!("{line}");
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    if let Some(path) = &args.json {
        output::write_json(&report, &records, path)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        let m = &report.machine;
        let title = format!(
            "sluice-bench compare, {} users, {} ({}, {} cores, kernel {}, commit {}); {}",
            plan.users,
            m.date_utc,
            m.cpu_model,
            m.cores,
            m.kernel,
            m.git_commit,
            cores.describe()
        );
        write_file(
            path,
            &output::svg(&records, &title, Some(scaling_note.as_str())),
        )?;
        println!("wrote {}", path.display());
    }
    check_sanity(&records)
}

/// The inner size of the crypto-only reference (the appliance target is at 1420 B).
const AEAD_REF_SIZE: usize = 1420;

/// Each sluice mode's 1420 B users -> inside rate against the batched AEAD's open-only rate
/// on the same core (the target for appliance mode: at least 50 %).
fn aead_target(records: &[CompareRecord], aead: &aead_ref::AeadRate) -> Vec<String> {
    records
        .iter()
        .filter(|r| {
            r.scenario == "throughput"
                && r.implementation == "sluice"
                && r.direction == Direction::ToInside.label()
                && r.size == AEAD_REF_SIZE.to_string()
        })
        .map(|r| {
            let pct = |mpps: Option<f64>| match mpps {
                Some(m) => format!("{:.0} %", m * 1e6 / aead.cpu_pps * 100.0),
                None => "-".into(),
            };
            format!(
                "{} at {AEAD_REF_SIZE} B users->inside: {} of the batched AEAD's open-only rate \
                 on the same core ({:.3} Mpps per CPU second) at <=1% loss, {} at max rate \
                 (target for appliance mode: >= 50 %)",
                r.who(),
                pct(r.lossless_mpps),
                aead.cpu_pps / 1e6,
                pct(r.mpps)
            )
        })
        .collect()
}

/// Fail (after printing everything) when a gateway delivered wrong packets, or, in a smoke
/// run, nothing at all: that is a broken gateway or a broken generator, never a slow one.
fn check_sanity(records: &[CompareRecord]) -> Result<(), String> {
    let errors: u64 = records
        .iter()
        .flat_map(|r| &r.samples)
        .map(|s| s.errors)
        .sum();
    if errors > 0 {
        return Err(format!(
            "the sink refused {errors} packets (wrong size, wrong user, corrupt or duplicate)"
        ));
    }
    let mut silent: Vec<String> = records
        .iter()
        .filter(|r| r.scenario == "throughput")
        .map(CompareRecord::who)
        .filter(|who| {
            records
                .iter()
                .filter(|r| r.scenario == "throughput" && &r.who() == who)
                .flat_map(|r| &r.samples)
                .all(|s| s.delivered == 0)
        })
        .collect();
    silent.dedup();
    if !silent.is_empty() {
        return Err(format!(
            "nothing at all reached the sink through: {}",
            silent.join(", ")
        ));
    }
    Ok(())
}

/// What the scaling scenario covers here: "1 gateway core: this machine has 2" when there is
/// nothing to scale, else the cores, marked when shared.
fn scaling_label(plan: &Plan, cores: &topo::Cores) -> String {
    let total = plan.machine_cores.len();
    if cores.k() == 1 {
        let why = if total <= 2 {
            String::new()
        } else {
            " (--gateway-cores 1)".to_string()
        };
        return format!("1 gateway core: this machine has {total}{why}");
    }
    format!(
        "1 to {} gateway cores of this machine's {total}{}",
        cores.k(),
        if cores.shared {
            "; shared: not a measurement (the gateway's cores include the generator's)"
        } else {
            ""
        }
    )
}

fn notes(plan: &Plan, args: &Args, cores: &topo::Cores) -> Vec<String> {
    vec![
        format!(
            "throughput: inner packets users -> sink through the gateway, pre-encrypted, sent \
             {} at maximum rate for {} s per run; Mpps and Gbit/s (inner IP bytes) are what \
             the sink accepted over its receive window (never shorter than the sending time); \
             loss is of the packets sent (the kernel took them)",
            match args.tx {
                Some(xsk_tx::TxKind::Socket) => "with sendmmsg",
                _ => {
                    "as whole frames through an AF_XDP socket on the generator's link (copy \
                     mode; sendmmsg where it could not be set up, see tx_used)"
                }
            },
            plan.seconds
        ),
        "at maximum rate the offered load exceeds what a gateway can take, so the rates are \
         delivered rates under overload (labelled LOSSY when loss > 1%), not lossless rates"
            .into(),
        format!(
            "one machine: veth links, copy-mode AF_XDP, {} cores ({}); numbers compare \
             implementations here, not line rate",
            plan.machine_cores.len(),
            cores.describe()
        ),
        format!(
            "scaling: {}; equal resources at k cores: sluice k workers one per core, \
             boringtun-cli WG_THREADS=k, wireguard-go GOMAXPROCS=k, every gateway thread \
             confined to the k cores (taskset -a), the outer link max(2, k) queues with RPS \
             over the k cores; users -> inside at maximum rate, {} B",
            scaling_label(plan, cores),
            args.scaling_sizes
                .iter()
                .map(|s| s.label())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
        "inside->users: the sink sends plaintext with sendmmsg, the gateway encrypts, the \
         generator decrypts every datagram with its user's own session and verifies it; \
         the generator's receive and decryption share core 0 with the sink's sending"
            .into(),
        format!(
            "handshake flood: the users stream {} B paced at {:.0}% of their lossless rate, \
             once without and once with {:.0} spoofed initiations/s (valid mac1, random \
             sources); goodput during the flood as a fraction of without (target >= 90%, not \
             asserted)",
            args.load_size.label(),
            args.load_fraction * 100.0,
            args.flood_pps
        ),
        format!(
            "latency: one way, from the sender's sendmmsg to the receiver's recvmmsg batch \
             (inside->users: after decryption), {:.0} probes/s alone (idle) and inside the \
             users' paced stream at {:.0}% of the lossless rate (loaded)",
            args.probe_pps,
            args.load_fraction * 100.0
        ),
    ]
}

/// The machine's load average (1, 5, 15 min): other work on a shared machine shows here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// One gateway's bench: its topology, the users' socket, the users, the run counter.
struct Bench<'a> {
    args: &'a Args,
    plan: &'a Plan,
    topo: &'a GenTopology,
    sock: io::GenSocket,
    /// The AF_XDP transmitter of the users' timed traffic (`None`: `sendmmsg` on `sock`).
    xsk: Option<xsk_tx::XskTx>,
    users: &'a mut users::Users,
    run_id: &'a mut u32,
    /// The gateway's name and mode for records.
    who: (&'static str, &'static str),
    sink: sink::SinkKind,
}

/// What one run measured, and the handshakes before it.
struct Outcome {
    hs: users::HandshakeStats,
    r: run::RunResult,
}

fn sample(r: &run::RunResult) -> Sample {
    Sample {
        mpps: r.pps() / 1e6,
        gbps: r.bps() / 1e9,
        loss: r.loss() * 100.0,
        sent: r.sent,
        delivered: r.delivered,
        errors: r.errors,
        offered_mpps: r.offered_pps() / 1e6,
        generator_cpu: r.generator_cpu,
    }
}

impl Bench<'_> {
    /// Fresh handshakes of every user, then one timed run in `dir` of `mix` packets for
    /// `seconds`, at `rate` or as fast as the sender can, with a probe every `probe_every`.
    fn run(
        &mut self,
        dir: Direction,
        mix: SizeMix,
        seconds: f64,
        rate: Option<f64>,
        probe_every: u64,
    ) -> Result<Outcome, String> {
        let hs = self.users.handshake_all(
            &self.sock,
            self.args.window,
            Duration::from_secs(1),
            Duration::from_secs(120),
        )?;
        let (dgram, pace) = match dir {
            Direction::ToInside => ((48 + xsk_tx::FRAME_HEADROOM) as f64 + mix.mean(), POOL_PPS),
            Direction::ToUsers => (mix.mean(), POOL_PPS),
        };
        let by_memory = (self.plan.pool_mib as f64 * 1048576.0 / dgram).floor();
        let by_time = rate.unwrap_or(pace) * seconds * 1.05;
        let total = by_time.min(by_memory) as u64;
        if dir == Direction::ToUsers {
            // The gateway uses a session it responded to only after the user's first
            // packet (the hello) arrived: give it a moment to process them.
            std::thread::sleep(Duration::from_millis(100));
        }
        let r = self.pool_run(dir, mix, total, seconds, rate, probe_every)?;
        Ok(Outcome { hs, r })
    }

    /// Throughput in `dir` for `mix`: `repeats` runs at maximum rate (or `--rate`), then the
    /// lossless search (if `search`); also returns the handshake rates measured before each
    /// run.
    fn throughput(
        &mut self,
        dir: Direction,
        mix: SizeMix,
        handshake_rates: &mut Vec<f64>,
        search: bool,
    ) -> Result<CompareRecord, String> {
        let (plan, args) = (self.plan, self.args);
        let mut samples = Vec::new();
        let mut gen_bound = false;
        for rep in 0..plan.repeats {
            let Outcome { hs, r } = self.run(dir, mix, plan.seconds, args.rate, 0)?;
            handshake_rates.push(hs.per_second());
            // The sender set the pace if it could not offer what was asked, or if the
            // gateway took everything it offered at full speed.
            let bound = match args.rate {
                Some(rate) => r.offered_pps() < 0.95 * rate,
                None => r.loss() < output::LOSSY,
            };
            gen_bound |= bound;
            let s = sample(&r);
            println!(
                "  {:>5} B {} run {}/{}: handshakes {} in {:.2} s ({:.0}/s, {} cookie replies, \
                 {} retries); sent {} ({:.3} Mpps offered, sender cpu {:.0}%), delivered {} \
                 ({:.3} Mpps, {:.3} Gbit/s; {} checked in full{}), loss {:.2}%, verification \
                 errors {}{}",
                mix.label(),
                dir.label(),
                rep + 1,
                plan.repeats,
                hs.completed,
                hs.elapsed.as_secs_f64(),
                hs.per_second(),
                hs.cookie_replies,
                hs.retries,
                r.sent,
                s.offered_mpps,
                r.generator_cpu * 100.0,
                r.delivered,
                s.mpps,
                s.gbps,
                r.checked_in_full,
                match (dir, self.sink) {
                    (Direction::ToInside, k) => format!(", sink {}", k.label()),
                    (Direction::ToUsers, _) => String::new(),
                },
                s.loss,
                r.errors,
                if bound { " [sender-bound]" } else { "" }
            );
            samples.push(s);
        }
        let mut rec = CompareRecord::throughput(
            self.who.0,
            self.who.1,
            &mix.label(),
            plan.users,
            samples,
            gen_bound,
        );
        rec.direction = dir.label().into();
        if search && plan.search_steps > 0 && args.rate.is_none() {
            let found = self.search_lossless(dir, &rec, mix)?;
            rec.lossless_mpps = found.as_ref().map(|r| r.pps() / 1e6);
            rec.lossless_gbps = found.as_ref().map(|r| r.bps() / 1e9);
        }
        Ok(rec)
    }

    /// The highest paced rate with at most 1 % loss, by bisection between 0 and the highest
    /// rate offered in the maximum-rate runs; the first probe is at the median rate delivered
    /// there. Returns the best lossless probe.
    fn search_lossless(
        &mut self,
        dir: Direction,
        rec: &CompareRecord,
        mix: SizeMix,
    ) -> Result<Option<run::RunResult>, String> {
        let plan = self.plan;
        let mut lo = 0.0_f64;
        let mut hi = rec
            .samples
            .iter()
            .map(|s| s.offered_mpps * 1e6)
            .fold(0.0, f64::max);
        let mut rate = rec.mpps.unwrap_or(0.0) * 1e6;
        let mut best: Option<run::RunResult> = None;
        for step in 0..plan.search_steps {
            if rate < 1000.0 {
                break;
            }
            let Outcome { r, .. } = self.run(dir, mix, plan.search_seconds * 1.5, Some(rate), 0)?;
            let offered_ok = r.offered_pps() >= 0.95 * rate;
            let ok = offered_ok && r.loss() <= output::LOSSY;
            println!(
                "  {:>5} B {} search {}/{}: {:.3} Mpps asked, {:.3} offered, {:.3} delivered, \
                 loss {:.2}%, verification errors {} -> {}",
                mix.label(),
                dir.label(),
                step + 1,
                plan.search_steps,
                rate / 1e6,
                r.offered_pps() / 1e6,
                r.pps() / 1e6,
                r.loss() * 100.0,
                r.errors,
                if ok {
                    "lossless"
                } else if !offered_ok {
                    "sender could not offer it"
                } else {
                    "lossy"
                }
            );
            // A probe's verification errors must not vanish with it.
            if r.errors > 0 {
                return Err(format!(
                    "{} {}: the receiver refused {} packets in a search probe (wrong size, \
                     wrong user, corrupt or duplicate)",
                    self.who.0,
                    dir.label(),
                    r.errors
                ));
            }
            if ok {
                lo = rate;
                if best.as_ref().is_none_or(|b| r.pps() > b.pps()) {
                    best = Some(r);
                }
            } else {
                hi = rate;
            }
            rate = (lo + hi) / 2.0;
        }
        Ok(best)
    }

    /// The paced stream rate of the flood and latency scenarios in `dir`: a fraction of the
    /// lossless rate found for `--load-size` (of the delivered rate without a search; one
    /// maximum-rate run if that size was not measured).
    fn load_rate(&mut self, dir: Direction, done: &[CompareRecord]) -> Result<f64, String> {
        let size = self.args.load_size;
        let found = done.iter().find(|r| {
            r.scenario == "throughput" && r.direction == dir.label() && r.size == size.label()
        });
        let base = match found {
            Some(r) => r.lossless_mpps.or(r.mpps).unwrap_or(0.0) * 1e6,
            None => {
                let Outcome { r, .. } = self.run(dir, size, self.plan.seconds, None, 0)?;
                r.pps()
            }
        };
        Ok((base * self.args.load_fraction).max(1000.0))
    }

    /// The users stream at the load rate without, then with, a spoofed-initiation flood.
    fn flood(&mut self, done: &[CompareRecord]) -> Result<CompareRecord, String> {
        let (plan, args) = (self.plan, self.args);
        let mix = args.load_size;
        let rate = self.load_rate(Direction::ToInside, done)?;
        let gw_public = *sluice::keys::decode_key(&self.topo.gateway_key.public)
            .map_err(|e| format!("gateway key: {e}"))?;
        let pool = std::sync::Arc::new(flood::FloodPool::new(&gw_public, 65_536));
        let (mut baseline, mut flooded) = (Vec::new(), Vec::new());
        let mut res = FloodResult {
            stream_pps: rate,
            baseline_mpps: 0.0,
            flood_mpps: 0.0,
            goodput_fraction: 0.0,
            flood_pps: 0.0,
            cookie_replies_received: 0,
            gateway_cookie_replies: None,
            responses: 0,
        };
        let mut flood_rates = Vec::new();
        for rep in 0..plan.repeats {
            let Outcome { r, .. } = self.run(
                Direction::ToInside,
                mix,
                plan.scenario_seconds,
                Some(rate),
                0,
            )?;
            println!(
                "  flood {}/{}: without: {:.3} Mpps asked, {:.3} offered, {:.3} delivered, loss \
                 {:.2}%",
                rep + 1,
                plan.repeats,
                rate / 1e6,
                r.offered_pps() / 1e6,
                r.pps() / 1e6,
                r.loss() * 100.0
            );
            baseline.push(sample(&r));
            // Fresh sessions first (a flood would make the users' own handshakes wait for
            // cookies), then the flood, then the same stream while it runs.
            self.users.handshake_all(
                &self.sock,
                args.window,
                Duration::from_secs(1),
                Duration::from_secs(120),
            )?;
            let cookies0 = self.topo.sluice_cookie_replies();
            let f = flood::Flood::start(self.topo, pool.clone(), args.flood_pps)?;
            std::thread::sleep(Duration::from_millis(300));
            let during = self.run_no_handshake(Direction::ToInside, mix, rate);
            let st = f.finish()?;
            let r = during?;
            let cookies = self.topo.sluice_cookie_replies();
            if let (Some(a), Some(b)) = (cookies0, cookies) {
                *res.gateway_cookie_replies.get_or_insert(0) += b.saturating_sub(a);
            }
            println!(
                "  flood {}/{}: with {:.0} spoofed initiations/s ({} sent, {} cookie replies \
                 back, {} responses): {:.3} Mpps offered, {:.3} delivered, loss {:.2}%, \
                 verification errors {}",
                rep + 1,
                plan.repeats,
                st.pps(),
                st.sent,
                st.cookie_replies,
                st.responses,
                r.offered_pps() / 1e6,
                r.pps() / 1e6,
                r.loss() * 100.0,
                r.errors
            );
            res.cookie_replies_received += st.cookie_replies;
            res.responses += st.responses;
            flood_rates.push(st.pps());
            flooded.push(sample(&r));
        }
        flood_rates.sort_by(f64::total_cmp);
        res.flood_pps = flood_rates[flood_rates.len() / 2];
        let mut rec =
            CompareRecord::flood(self.who, &mix.label(), plan.users, baseline, flooded, res);
        rec.direction = Direction::ToInside.label().into();
        Ok(rec)
    }

    /// A paced users -> inside run on the current sessions (no handshakes before it).
    fn run_no_handshake(
        &mut self,
        dir: Direction,
        mix: SizeMix,
        rate: f64,
    ) -> Result<run::RunResult, String> {
        let seconds = self.plan.scenario_seconds;
        let total = (rate * seconds * 1.05) as u64;
        self.pool_run(dir, mix, total, seconds, Some(rate), 0)
    }

    /// One timed run in `dir` on the current sessions, of a pool of `total` packets (at
    /// least one per user) of run number `run_id + 1`.
    fn pool_run(
        &mut self,
        dir: Direction,
        mix: SizeMix,
        total: u64,
        seconds: f64,
        rate: Option<f64>,
        probe_every: u64,
    ) -> Result<run::RunResult, String> {
        *self.run_id += 1;
        let n = self.plan.users;
        let total = total.max(u64::from(n));
        let spec = run::RunSpec {
            run: *self.run_id,
            users: n,
            seconds,
            rate,
            probe_every,
            sink: self.sink,
        };
        match dir {
            Direction::ToInside => {
                let mut pool = self.users.encrypt_pool(spec.run, total, mix, 2)?;
                run::timed_run_tx(self.topo, &self.sock, self.xsk.as_mut(), &mut pool, spec)
            }
            Direction::ToUsers => {
                let pool = reverse::PlainPool::new(spec.run, total, n, mix);
                reverse::timed_run(self.topo, &self.sock, self.users, &pool, spec)
            }
        }
    }

    /// One-way latency in `dir`: a paced probe stream alone (idle), then probes inside the
    /// users' paced stream at the load rate (loaded).
    fn latency(
        &mut self,
        dir: Direction,
        done: &[CompareRecord],
    ) -> Result<Vec<CompareRecord>, String> {
        let (plan, args) = (self.plan, self.args);
        let mix = args.load_size;
        let load = self.load_rate(dir, done)?;
        let mut out = Vec::new();
        for (what, rate) in [
            ("idle", args.probe_pps),
            ("loaded", load.max(args.probe_pps)),
        ] {
            let every = ((rate / args.probe_pps).round() as u64).max(1);
            let Outcome { r, .. } = self.run(dir, mix, plan.scenario_seconds, Some(rate), every)?;
            let p = latency::Percentiles::of(&r.latencies);
            println!(
                "  latency {} {what} ({:.0} pps, a probe every {every}): {}; delivered {:.3} \
                 Mpps, loss {:.2}%, verification errors {}",
                dir.label(),
                rate,
                match &p {
                    Some(p) => format!(
                        "p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us of {} probes",
                        p.p50_us, p.p90_us, p.p99_us, p.max_us, p.probes
                    ),
                    None => "no probe arrived".into(),
                },
                r.pps() / 1e6,
                r.loss() * 100.0,
                r.errors
            );
            out.push(CompareRecord::latency(
                self.who,
                dir.label(),
                &mix.label(),
                plan.users,
                sample(&r),
                LatencyResult {
                    load: what.into(),
                    rate_pps: rate,
                    percentiles: p,
                },
            ));
        }
        Ok(out)
    }
}

/// The bench of one gateway: the users pointed at it, the generator's socket bound.
#[allow(clippy::too_many_arguments)]
fn bench<'a>(
    args: &'a Args,
    plan: &'a Plan,
    which: Impl,
    topo: &'a GenTopology,
    users: &'a mut users::Users,
    run_id: &'a mut u32,
    sink: sink::SinkKind,
    xsk: Option<xsk_tx::XskTx>,
) -> Result<Bench<'a>, String> {
    let gw = SocketAddrV4::new(topo::GW_OUTER_V4, topo::LISTEN_PORT);
    users.set_gateway(&topo.gateway_key.public, gw)?;
    let sock = topo
        .gen_ns
        .enter(|| io::GenSocket::bind(topo::USER_PORT))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("binding the generator's socket: {e}"))?;
    let who = match which.kind {
        ImplKind::Sluice => ("sluice", which.mode.label()),
        ImplKind::WireguardGo => ("wireguard-go", which.mode.label()),
        ImplKind::Boringtun => ("boringtun", which.mode.label()),
    };
    Ok(Bench {
        args,
        plan,
        topo,
        sock,
        xsk,
        users,
        run_id,
        who,
        sink,
    })
}

/// The scaling scenario: every gateway on k = 1..=N cores, maximum-rate throughput users ->
/// inside for each of `--scaling-sizes`, a fresh topology (and gateway) per k.
struct Scaling<'a> {
    args: &'a Args,
    plan: &'a Plan,
    sluice_bin: Option<&'a Path>,
    keys: &'a [String],
    sink: sink::SinkKind,
}

impl Scaling<'_> {
    fn run(
        &self,
        users: &mut users::Users,
        run_id: &mut u32,
        pinning: &mut Vec<String>,
    ) -> Result<Vec<CompareRecord>, String> {
        let (args, plan) = (self.args, self.plan);
        let mut out = Vec::new();
        for &which in &plan.impls {
            for k in 1..=plan.gateway_cores {
                let cores = topo::Cores::plan(&plan.machine_cores, k, args.allow_shared_cores)?;
                println!(
                    "\n=== scaling: {} on {k} core{} ===",
                    which.label(),
                    if k == 1 { "" } else { "s" }
                );
                let topo = GenTopology::build(
                    which,
                    &cores,
                    self.sluice_bin.map(Path::to_path_buf),
                    self.keys,
                    users::tunnel_ip,
                )?;
                println!("  {}", topo.pinning);
                println!("  load average before: {}", loadavg());
                pinning.push(format!(
                    "scaling, {} on {k} core(s): {}",
                    which.label(),
                    topo.pinning
                ));
                let xsk = generator_tx(args.tx, &topo)?;
                if k > 1 && which.mode.xdp() && xsk.is_some() {
                    // XDP runs before RPS: the queue the frames arrive on is the worker.
                    let warn = format!(
                        "{} on {k} cores: the generator's AF_XDP transmitter sends on one queue \
                         of its link, so sluice's XDP path receives on one queue (one worker's \
                         socket); --tx socket spreads the users over the queues",
                        which.label()
                    );
                    println!("  WARNING: {warn}");
                    pinning.push(warn);
                }
                let r = bench(args, plan, which, &topo, users, run_id, self.sink, xsk).and_then(
                    |mut b| {
                        let mut hs = Vec::new();
                        args.scaling_sizes
                            .iter()
                            .map(|&mix| b.throughput(Direction::ToInside, mix, &mut hs, false))
                            .collect::<Result<Vec<_>, String>>()
                    },
                );
                drop(topo);
                println!("  load average after: {}", loadavg());
                out.extend(
                    r?.into_iter()
                        .map(|rec| CompareRecord::scaling(rec, k, cores.shared)),
                );
            }
        }
        Ok(out)
    }
}

/// Every scenario against one gateway.
#[allow(clippy::too_many_arguments)]
fn measure(
    args: &Args,
    plan: &Plan,
    which: Impl,
    topo: &GenTopology,
    users: &mut users::Users,
    run_id: &mut u32,
    sink: sink::SinkKind,
    xsk: Option<xsk_tx::XskTx>,
) -> Result<Vec<CompareRecord>, String> {
    let mut b = bench(args, plan, which, topo, users, run_id, sink, xsk)?;
    let who = b.who;
    let mut handshake_rates = Vec::new();
    let mut out = Vec::new();
    for &dir in &args.directions {
        for &mix in &plan.sizes {
            out.push(b.throughput(dir, mix, &mut handshake_rates, true)?);
        }
    }
    out.push(CompareRecord::handshakes(
        who.0,
        who.1,
        plan.users,
        &handshake_rates,
    ));
    if args.flood_pps > 0.0 {
        println!(
            "  handshake flood: {:.0} spoofed initiations/s",
            args.flood_pps
        );
        let r = b.flood(&out)?;
        out.push(r);
    }
    if args.probe_pps > 0.0 {
        for &dir in &args.directions {
            let r = b.latency(dir, &out)?;
            out.extend(r);
        }
    }
    Ok(out)
}

/// The generator's transmitter of the users' timed traffic for `asked` (`None`: AF_XDP,
/// falling back to `sendmmsg` with the reason printed; an explicit `--tx xdp` fails instead).
fn generator_tx(
    asked: Option<xsk_tx::TxKind>,
    topo: &GenTopology,
) -> Result<Option<xsk_tx::XskTx>, String> {
    if asked == Some(xsk_tx::TxKind::Socket) {
        println!("  generator transmits with sendmmsg (--tx socket)");
        return Ok(None);
    }
    match xsk_tx::open_for(topo) {
        Ok(x) => {
            println!(
                "  generator transmits with AF_XDP ({} queue {}, copy mode, TX only)",
                x.ifname, x.queue
            );
            Ok(Some(x))
        }
        Err(e) if asked.is_none() => {
            println!("  generator: AF_XDP transmit unavailable ({e}); it sends with sendmmsg");
            Ok(None)
        }
        Err(e) => Err(format!("--tx xdp: {e}")),
    }
}

/// wireguard-go's `MaxPeers` (1 << 16): it refuses to create more.
const WIREGUARD_GO_MAX_PEERS: u32 = 1 << 16;

/// The gateway's resident memory once it has settled (a Go runtime's first collections,
/// sluice's tables built and its loading buffers freed): sampled every 500 ms (100 ms in a
/// quick run) until two steps in a row move it by at most 1 %, for at most 60 steps.
fn settled_rss(topo: &GenTopology, quick: bool) -> Result<u64, String> {
    let read = || {
        topo.gateway_rss_bytes()
            .ok_or_else(|| "could not read the gateway's resident memory".to_string())
    };
    let step = Duration::from_millis(if quick { 100 } else { 500 });
    let (mut last, mut calm) = (read()?, 0);
    for _ in 0..60 {
        std::thread::sleep(step);
        let now = read()?;
        calm = if now.abs_diff(last) * 100 <= last {
            calm + 1
        } else {
            0
        };
        last = now;
        if calm >= 2 {
            break;
        }
    }
    Ok(last)
}

/// The memory scenario: each gateway's resident memory with `plan.memory_peers` peers
/// configured, against the same gateway with one peer.
fn memory(plan: &Plan, cores: &topo::Cores, sluice_bin: Option<&Path>) -> Vec<CompareRecord> {
    let n = plan.memory_peers;
    println!("\n=== memory per peer: making {n} peers' keys ===");
    let keys = users::Users::new(n).public_keys();
    let mut out = Vec::new();
    for &which in &plan.impls {
        // wireguard-go refuses peers beyond its maximum ("failed to create new peer: too many
        // peers"): it is measured at that many, and says so.
        let n = if which.kind == ImplKind::WireguardGo && n > WIREGUARD_GO_MAX_PEERS {
            println!(
                "  {}: holds at most {WIREGUARD_GO_MAX_PEERS} peers (its MaxPeers); measured \
                 with that many instead of {n}",
                which.label()
            );
            WIREGUARD_GO_MAX_PEERS
        } else {
            n
        };
        let mut rss = Vec::new();
        for k in [&keys[..1], &keys[..n as usize]] {
            let measured = GenTopology::build(
                which,
                cores,
                sluice_bin.map(Path::to_path_buf),
                k,
                users::tunnel_ip,
            )
            .and_then(|topo| settled_rss(&topo, plan.quick));
            match measured {
                Ok(b) => rss.push(b),
                // One gateway failing here must not lose the other scenarios' results.
                Err(e) => {
                    println!(
                        "  {}: memory with {} peers: FAILED: {e}",
                        which.label(),
                        k.len()
                    );
                    break;
                }
            }
        }
        if rss.len() < 2 {
            continue;
        }
        let mut r = CompareRecord::memory(
            match which.kind {
                ImplKind::Sluice => "sluice",
                ImplKind::WireguardGo => "wireguard-go",
                ImplKind::Boringtun => "boringtun",
            },
            which.mode.label(),
            n,
            rss[0],
            rss[1],
        );
        r.gateway_cores = cores.k();
        r.cores_shared = cores.shared;
        println!(
            "  {}: {:.1} MiB with 1 peer, {:.1} MiB with {n}: {:.0} bytes per peer",
            which.label(),
            rss[0] as f64 / 1048576.0,
            rss[1] as f64 / 1048576.0,
            r.bytes_per_peer.unwrap_or(f64::NAN)
        );
        out.push(r);
    }
    out
}

/// Install missing tools, or fail with the exact commands.
fn ensure_tools() -> Result<(), String> {
    let missing = tools::missing(&[
        Tool::Iproute2,
        Tool::Wg,
        Tool::WireguardGo,
        Tool::BoringtunCli,
    ]);
    if missing.is_empty() {
        return Ok(());
    }
    tools::install(&missing).map_err(|e| format!("could not install the tools compare needs: {e}"))
}
