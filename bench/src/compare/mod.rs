//! `sluice-bench compare`: many simulated users against the gateway under test — sluice in
//! each of its modes, wireguard-go and boringtun-cli — in the same topology, on the same
//! cores, in one run, and sluice's ratio to each.
//!
//! - [`topo`]: generator namespace -- gateway -- sink namespace, the gateway on core 1, the
//!   generator and the sink on core 0.
//! - [`users`]: N simulated users (1..100,000), each a sluice protocol core ([`Device`]) as
//!   its client: real handshakes with the gateway, then transport data encrypted before the
//!   clock starts.
//! - [`io`]: the generator's socket (`sendmmsg` with each user's own source address).
//! - [`packet`]: the inner packets and the sink's verification (size, user, no duplicates).
//! - [`run`]: one timed run and its numbers.
//! - [`output`]: records, the table with ratios, JSON and SVG.
//!
//! Scenarios: **handshakes** (every user joins, initiations made ahead, at most `--window`
//! unanswered; handshakes per second until the last response), then **throughput** users ->
//! inside per inner size (64, 512, 1420 B, IMIX) at maximum rate (or `--rate`), each repeated
//! `--repeats` times with a fresh handshake before each repeat, median and spread reported.
//!
//! [`Device`]: sluice::proto::device::Device

pub mod io;
pub mod output;
pub mod packet;
pub mod run;
pub mod topo;
pub mod users;

use crate::report::{Machine, Record, Report};
use output::{CompareRecord, Sample};
use packet::SizeMix;
use sluice::testbed::tools::{self, Tool};
use sluice::testbed::{is_root, registry};
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
    /// The gateways under test, comma-separated: sluice-socket, sluice-xdp, wireguard-go,
    /// boringtun
    #[arg(
        long = "impl",
        value_delimiter = ',',
        default_value = "sluice-socket,sluice-xdp,wireguard-go,boringtun"
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
    /// A short smoke run: 0.2 s per run, 8 users, one repeat (no meaningful numbers)
    #[arg(long)]
    quick: bool,
    /// Write the records (and machine, commit, pinning) as JSON to this file
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the chart (throughput and handshakes per implementation) as SVG to this file
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// The sluice binary [default: build it with `cargo build --release -p sluice`]
    #[arg(long, value_name = "PATH")]
    sluice: Option<PathBuf>,
}

fn parse_impl(s: &str) -> Result<Impl, String> {
    let (kind, mode) = match s {
        "sluice-socket" | "sluice" => (ImplKind::Sluice, Mode::Socket),
        "sluice-xdp" => (ImplKind::Sluice, Mode::Xdp),
        "wireguard-go" | "wg-go" => (ImplKind::WireguardGo, Mode::Socket),
        "boringtun" | "boringtun-cli" => (ImplKind::Boringtun, Mode::Socket),
        other => {
            return Err(format!(
                "unknown gateway '{other}' (sluice-socket, sluice-xdp, wireguard-go, boringtun)"
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
}

impl Plan {
    fn from(args: &Args) -> Result<Plan, String> {
        let impls = args
            .impls
            .iter()
            .map(|s| parse_impl(s))
            .collect::<Result<Vec<_>, _>>()?;
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
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: removing the comparison's namespaces and processes");
        for line in registry::cleanup_all() {
            eprintln!("  {line}");
        }
        std::process::exit(130);
    })
    .map_err(|e| format!("installing the Ctrl-C handler: {e}"))?;
    for line in registry::cleanup_stale() {
        println!("earlier run: {line}");
    }
    let sluice_bin = if plan.impls.iter().any(|i| i.kind == ImplKind::Sluice) {
        Some(crate::lab::sluice_binary(args.sluice.as_deref())?)
    } else {
        None
    };
    let mut machine = Machine::collect();
    topo::pin_current(topo::GENERATOR_CORE)?;
    machine.pinned_core = Some(topo::GENERATOR_CORE);
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
        "sink": "recvmmsg counter socket in the sink namespace, on the generator's core",
        "quick": args.quick,
        "loadavg_start": loadavg(),
    });
    let mut report = Report::new("compare", machine, params);
    print!("{}", report.header());

    println!("\nmaking {} users' keys ...", plan.users);
    let mut users = users::Users::new(plan.users);
    let keys = users.public_keys();
    let mut records: Vec<CompareRecord> = Vec::new();
    let mut pinning: Vec<String> = Vec::new();
    let mut run_id = 0u32;
    for &which in &plan.impls {
        println!("\n=== {} ===", which.label());
        let topo = GenTopology::build(which, sluice_bin.clone(), &keys, users::tunnel_ip)?;
        println!(
            "  run id {}, files in {}; gateway resident memory after start: {:.1} MiB",
            topo.id,
            topo.dir.path().display(),
            topo.gateway_rss_bytes().unwrap_or(0) as f64 / 1048576.0
        );
        println!("  {}", topo.pinning);
        println!("  load average before: {}", loadavg());
        pinning.push(format!("{}: {}", which.label(), topo.pinning));
        let r = measure(args, &plan, which, &topo, &mut users, &mut run_id);
        drop(topo);
        println!("  load average after: {}", loadavg());
        records.extend(r?);
    }

    if plan.memory_peers > 0 {
        records.extend(memory(&plan, sluice_bin.as_deref()));
    }
    report.params["pinning"] = serde_json::json!(pinning);
    report.params["loadavg_end"] = serde_json::json!(loadavg());
    for r in &records {
        let name = format!("{} {} {}", r.scenario, r.size, r.who());
        let samples: Vec<f64> = if r.scenario == "throughput" {
            r.samples.iter().map(|s| s.mpps).collect()
        } else {
            vec![r.value()]
        };
        let unit = if r.scenario == "throughput" {
            "Mpps"
        } else {
            "handshakes/s"
        };
        report
            .results
            .push(Record::from_samples(&name, unit, &samples));
    }
    report.notes.extend(notes(&plan));
    println!("\n=== results (sluice-bench compare) ===");
    print!("{}", output::table(&records));
    println!();
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
            "sluice-bench compare, {} users, {} ({}, kernel {}, commit {}); gateway on core {}, generator on core {}",
            plan.users, m.date_utc, m.cpu_model, m.kernel, m.git_commit, topo::GATEWAY_CORE, topo::GENERATOR_CORE
        );
        write_file(path, &output::svg(&records, &title))?;
        println!("wrote {}", path.display());
    }
    check_sanity(&records)
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

fn notes(plan: &Plan) -> Vec<String> {
    vec![
        format!(
            "throughput: inner packets users -> sink through the gateway, pre-encrypted, sent \
             with sendmmsg at maximum rate for {} s per run; Mpps and Gbit/s (inner IP bytes) \
             are what the sink accepted over its receive window (never shorter than the \
             sending time); loss is of the packets sent",
            plan.seconds
        ),
        "at maximum rate the offered load exceeds what a gateway can take, so the rates are \
         delivered rates under overload (labelled LOSSY when loss > 1%), not lossless rates"
            .into(),
        "one machine: veth links, copy-mode AF_XDP, 2 cores (gateway on one, generator and \
         sink on the other); numbers compare implementations here, not line rate"
            .into(),
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

/// Every scenario against one gateway.
fn measure(
    args: &Args,
    plan: &Plan,
    which: Impl,
    topo: &GenTopology,
    users: &mut users::Users,
    run_id: &mut u32,
) -> Result<Vec<CompareRecord>, String> {
    let gw = SocketAddrV4::new(topo::GW_OUTER_V4, topo::LISTEN_PORT);
    users.set_gateway(&topo.gateway_key.public, gw)?;
    let sock = topo
        .gen_ns
        .enter(|| io::GenSocket::bind(topo::USER_PORT))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("binding the generator's socket: {e}"))?;
    let (name, mode) = match which.kind {
        ImplKind::Sluice => ("sluice", which.mode.label()),
        ImplKind::WireguardGo => ("wireguard-go", which.mode.label()),
        ImplKind::Boringtun => ("boringtun", which.mode.label()),
    };
    let mut handshake_rates = Vec::new();
    let mut out = Vec::new();
    for &mix in &plan.sizes {
        let mut samples = Vec::new();
        let mut gen_bound = false;
        for rep in 0..plan.repeats {
            let hs = users.handshake_all(
                &sock,
                args.window,
                Duration::from_secs(1),
                Duration::from_secs(120),
            )?;
            handshake_rates.push(hs.per_second());
            *run_id += 1;
            let dgram = 48.0 + mix.mean();
            let by_memory = (plan.pool_mib as f64 * 1048576.0 / dgram).floor();
            let by_time = args.rate.unwrap_or(POOL_PPS) * plan.seconds;
            let total = by_time.min(by_memory).max(f64::from(plan.users)) as u64;
            let pool = users.encrypt_pool(*run_id, total, mix, 2)?;
            let spec = run::RunSpec {
                run: *run_id,
                users: plan.users,
                sink_port: SINK_PORT,
                seconds: plan.seconds,
                rate: args.rate,
            };
            let r = run::timed_run(topo, &sock, &pool, spec)?;
            drop(pool);
            // The generator set the pace if it could not offer what was asked, or if the
            // gateway took everything it offered at full speed.
            let bound = match args.rate {
                Some(rate) => r.offered_pps() < 0.95 * rate,
                None => r.loss() < output::LOSSY && r.sent as f64 >= 0.0,
            };
            gen_bound |= bound;
            let s = Sample {
                mpps: r.pps() / 1e6,
                gbps: r.bps() / 1e9,
                loss: r.loss() * 100.0,
                sent: r.sent,
                delivered: r.delivered,
                errors: r.errors,
                offered_mpps: r.offered_pps() / 1e6,
                generator_cpu: r.generator_cpu,
            };
            println!(
                "  {:>5} B run {}/{}: handshakes {} in {:.2} s ({:.0}/s, {} cookie replies, {} \
                 retries); sent {} ({:.3} Mpps offered, generator cpu {:.0}%), delivered {} \
                 ({:.3} Mpps, {:.3} Gbit/s), loss {:.2}%, sink errors {}{}",
                mix.label(),
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
                s.loss,
                r.errors,
                if bound { " [generator-bound]" } else { "" }
            );
            samples.push(s);
        }
        let mut rec =
            CompareRecord::throughput(name, mode, &mix.label(), plan.users, samples, gen_bound);
        if plan.search_steps > 0 && args.rate.is_none() {
            let found = search_lossless(plan, &rec, mix, topo, &sock, users, run_id)?;
            rec.lossless_mpps = found.as_ref().map(|r| r.pps() / 1e6);
            rec.lossless_gbps = found.map(|r| r.bps() / 1e9);
        }
        out.push(rec);
    }
    out.push(CompareRecord::handshakes(
        name,
        mode,
        plan.users,
        &handshake_rates,
    ));
    Ok(out)
}

/// The highest paced rate with at most 1 % loss, by bisection between 0 and the highest rate
/// the generator offered in the maximum-rate runs; the first probe is at the median rate
/// delivered there. Returns the best lossless probe.
fn search_lossless(
    plan: &Plan,
    rec: &CompareRecord,
    mix: SizeMix,
    topo: &GenTopology,
    sock: &io::GenSocket,
    users: &mut users::Users,
    run_id: &mut u32,
) -> Result<Option<run::RunResult>, String> {
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
        users.handshake_all(sock, 64, Duration::from_secs(1), Duration::from_secs(120))?;
        *run_id += 1;
        let total = (rate * plan.search_seconds).max(f64::from(plan.users)) as u64;
        let pool = users.encrypt_pool(*run_id, total, mix, 2)?;
        let spec = run::RunSpec {
            run: *run_id,
            users: plan.users,
            sink_port: SINK_PORT,
            seconds: plan.search_seconds * 1.5,
            rate: Some(rate),
        };
        let r = run::timed_run(topo, sock, &pool, spec)?;
        let offered_ok = r.offered_pps() >= 0.95 * rate;
        let ok = offered_ok && r.loss() <= output::LOSSY;
        println!(
            "  {:>5} B search {}/{}: {:.3} Mpps asked, {:.3} offered, {:.3} delivered, loss {:.2}% -> {}",
            mix.label(),
            step + 1,
            plan.search_steps,
            rate / 1e6,
            r.offered_pps() / 1e6,
            r.pps() / 1e6,
            r.loss() * 100.0,
            if ok {
                "lossless"
            } else if !offered_ok {
                "generator could not offer it"
            } else {
                "lossy"
            }
        );
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

/// The memory scenario: each gateway's resident memory with `plan.memory_peers` peers
/// configured, against the same gateway with one peer.
fn memory(plan: &Plan, sluice_bin: Option<&Path>) -> Vec<CompareRecord> {
    let n = plan.memory_peers;
    println!("\n=== memory per peer: making {n} peers' keys ===");
    let keys = users::Users::new(n).public_keys();
    let mut out = Vec::new();
    for &which in &plan.impls {
        let mut rss = Vec::new();
        for k in [&keys[..1], &keys[..]] {
            let measured = GenTopology::build(
                which,
                sluice_bin.map(Path::to_path_buf),
                k,
                users::tunnel_ip,
            )
            .and_then(|topo| {
                // Let the gateway settle (a Go runtime's first collections, sluice's tables).
                std::thread::sleep(Duration::from_millis(if plan.quick { 300 } else { 2000 }));
                topo.gateway_rss_bytes()
                    .ok_or_else(|| "could not read the gateway's resident memory".to_string())
            });
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
        let r = CompareRecord::memory(
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
