//! `sluice-bench lab`: remote users in network namespaces, real WireGuard clients, real traffic
//! through a gateway, and a readable summary of what happened.
//!
//! ```text
//!  user namespaces                 gateway namespace                     sink namespace
//!  +---------------------+  veth   +---------------------------+  veth  +--------------+
//!  | user 1: wireguard-go|---------| to-u1: 198.18.1.1/25      |        |              |
//!  |   10.77.0.2/32      |         |        fd18:0:0:1::1/80   |        |              |
//!  |   fd77::2/128       |         |                           |        |              |
//!  | to-gw: 198.18.1.2/25|         | gateway: sluice up        |        | to-gw:       |
//!  +---------------------+         |   (TUN slID, UDP 51820)   |--------| 10.88.0.2/24 |
//!  +---------------------+  veth   |   10.77.0.1/16 fd77::1/64 |        | fd88::2/64   |
//!  | user 2: boringtun   |---------| to-u2: 198.18.2.1/25      |        | iperf3 -s    |
//!  |   10.77.0.3/32      |         |        fd18:0:0:2::1/80   |        |   :5201      |
//!  |   fd77::3/128       |         | to-sink: 10.88.0.1/24     |        |   :5202      |
//!  | to-gw: 198.18.2.2/25|         |          fd88::1/64       |        |              |
//!  +---------------------+         +---------------------------+        +--------------+
//! ```
//!
//! Each user has its own namespace, its own veth pair to the gateway namespace and its own
//! outer subnet; its WireGuard client (configured with the stock `wg` tool) routes the tunnel
//! (10.77.0.0/16, fd77::/64) and the sink (10.88.0.0/24, fd88::/64) through the gateway. The
//! gateway forwards between its TUN device and the sink, which routes the tunnel subnets back.
//! The building blocks are `sluice::testbed`, shared with `gateway/tests/netns_interop.rs`.
//!
//! With `--dataplane xdp` (the default) the users' links end in a router namespace instead,
//! and the gateway has a single two-queue outer veth (198.51.100.1/24, fd19::1/64) where
//! sluice runs its XDP program and AF_XDP sockets; every client's endpoint is that address
//! (see `sluice::testbed::topology`, xdp layout). The summary then adds the XDP verdict
//! counters and each AF_XDP socket's frames.
//!
//! The run: start sluice (one worker on core 0) or a stand-in gateway, wait for
//! both handshakes, then iperf3 from each user to the sink: TCP for each user alone, TCP for
//! both at once, UDP at a fixed rate for each user (loss reported). Then print, per peer, the
//! handshake age and endpoint the gateway sees, the throughput of every run, and the packets
//! the gateway dropped by reason. Everything is torn down at the end, on failure and on
//! Ctrl-C (unless `--keep`). Missing tools are installed (apt-get, cargo install) or the exact
//! commands are printed.
//!
//! With `--json FILE` the results are written in the common layout of `report.rs` (one
//! record per run in Mbit/s, plus "... loss" records in % for UDP), with a "lab" section
//! added: `runs` (every iperf3 run: test, user, client, and its full result), `peers` (each
//! user's handshake age, endpoint and byte counts as the gateway saw them), `drops` (drop
//! counters by reason; null for stand-in gateways), `rx_packets` and `tx_packets`.

use crate::report::{fmt_num, Machine, Record, Report};
use serde::Serialize;
use sluice::testbed::gateway::{GatewayKind, GatewayStatus};
use sluice::testbed::tools::{self, Tool};
use sluice::testbed::topology::{Topology, TopologySpec, UserSpec, SINK_V4};
use sluice::testbed::traffic::{iperf3_client, Iperf3Server, IperfOpts, IperfResult};
use sluice::testbed::{is_root, registry, WgImpl};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds per iperf3 run
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    seconds: u32,
    /// The gateway under test: sluice, or wireguard-go / boringtun configured with `wg`
    #[arg(long, default_value = "sluice", value_parser = parse_gateway)]
    gateway: GatewayKind,
    /// UDP target bitrate per user for the UDP runs (iperf3 -b)
    #[arg(long, default_value = "200M")]
    udp_bitrate: String,
    /// sluice's data path: `xdp` (XDP + AF_XDP on the gateway's single outer interface,
    /// users behind a router namespace) or `socket` (UDP sockets, one link per user). The
    /// stand-in gateways run in the same layout.
    #[arg(long, default_value = "xdp", value_parser = ["xdp", "socket"])]
    dataplane: String,
    /// Leave everything running at the end and print how to remove it
    #[arg(long)]
    keep: bool,
    /// The sluice binary [default: build it with `cargo build --release -p sluice`, or the
    /// one next to this executable]
    #[arg(long, value_name = "PATH")]
    sluice: Option<PathBuf>,
    /// Also write the results as JSON to this file (schema: see `report.rs`, plus "lab")
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn parse_gateway(s: &str) -> Result<GatewayKind, String> {
    s.parse()
}

/// One iperf3 run in the summary and the JSON.
#[derive(Debug, Serialize)]
struct TestRun {
    test: String,
    user: usize,
    client: String,
    result: IperfResult,
}

/// One peer as the gateway saw it at the end.
#[derive(Debug, Serialize)]
struct PeerLine {
    user: usize,
    client: String,
    public_key: String,
    handshake_age_s: Option<u64>,
    endpoint: Option<String>,
    rx_bytes: u64,
    tx_bytes: u64,
}

/// Ctrl-C / SIGTERM remove every namespace and process created so far (`what` names them
/// in the message), then exit; and what an earlier, killed run left behind goes now.
pub fn cleanup_on_exit(what: &'static str) -> Result<(), String> {
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: removing {what}");
        for line in registry::cleanup_all() {
            eprintln!("  {line}");
        }
        std::process::exit(130);
    })
    .map_err(|e| format!("installing the Ctrl-C handler: {e}"))?;
    for line in registry::cleanup_stale() {
        println!("earlier run: {line}");
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<(), String> {
    if !is_root() {
        return Err(
            "the lab needs root (network namespaces, TUN devices): run it with sudo".into(),
        );
    }
    ensure_tools()?;
    cleanup_on_exit("the lab")?;

    let sluice = match args.gateway {
        GatewayKind::Sluice => Some(sluice_binary(args.sluice.as_deref())?),
        _ => None,
    };
    let machine = Machine::collect();
    let params = serde_json::json!({
        "gateway": args.gateway.label(),
        "seconds": args.seconds,
        "udp_bitrate": args.udp_bitrate,
        "users": ["wireguard-go", "boringtun-cli"],
        "mode": args.dataplane,
        "workers": 1,
    });
    let mut report = Report::new("lab", machine, params);
    print!("{}", report.header());

    let mut spec = TopologySpec::new(
        args.gateway,
        sluice.clone(),
        vec![
            UserSpec::new(WgImpl::WireguardGo),
            UserSpec::new(WgImpl::Boringtun),
        ],
    );
    spec.xdp = args.dataplane == "xdp";
    println!("\nbuilding the topology (gateway: {}) ...", args.gateway);
    let mut topo = Topology::build(&spec).map_err(|e| format!("building the topology: {e}"))?;
    let outcome = run_tests(args, &mut topo, &mut report, sluice.as_deref());
    if args.keep {
        println!("\n--keep: everything is still running. To remove it:");
        for c in topo.keep() {
            println!("  {c}");
        }
    } else {
        println!("\nremoving the lab ...");
    }
    drop(topo);
    outcome
}

fn run_tests(
    args: &Args,
    t: &mut Topology,
    report: &mut Report,
    sluice: Option<&Path>,
) -> Result<(), String> {
    print_topology(t, sluice);
    println!("\nwaiting for handshakes ...");
    t.wait_handshakes(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let servers: Vec<Iperf3Server> = t
        .users
        .iter()
        .map(|u| Iperf3Server::start(&t.sink_ns, 5200 + u.index as u16, &t.dir))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let secs = args.seconds;
    let mut runs: Vec<TestRun> = Vec::new();
    let sink = IpAddr::V4(SINK_V4);

    for u in &t.users {
        println!("iperf3 TCP {}s: {} -> sink ...", secs, u.label());
        let r = iperf3_client(
            &u.ns,
            sink,
            servers[u.index - 1].port(),
            &IperfOpts::tcp(secs),
        )
        .map_err(|e| format!("TCP from {}: {e}", u.label()))?;
        runs.push(TestRun {
            test: "tcp alone".into(),
            user: u.index,
            client: u.spec.client.label().into(),
            result: r,
        });
    }
    println!("iperf3 TCP {secs}s: all users at once ...");
    let both: Vec<Result<IperfResult, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = t
            .users
            .iter()
            .map(|u| {
                let port = servers[u.index - 1].port();
                s.spawn(move || {
                    iperf3_client(&u.ns, sink, port, &IperfOpts::tcp(secs))
                        .map_err(|e| format!("TCP (all at once) from {}: {e}", u.label()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("iperf3 thread panicked".into()))
            })
            .collect()
    });
    for (u, r) in t.users.iter().zip(both) {
        runs.push(TestRun {
            test: "tcp all at once".into(),
            user: u.index,
            client: u.spec.client.label().into(),
            result: r?,
        });
    }
    for u in &t.users {
        println!(
            "iperf3 UDP {}s at {}: {} -> sink ...",
            secs,
            args.udp_bitrate,
            u.label()
        );
        let r = iperf3_client(
            &u.ns,
            sink,
            servers[u.index - 1].port(),
            &IperfOpts::udp(secs, &args.udp_bitrate),
        )
        .map_err(|e| format!("UDP from {}: {e}", u.label()))?;
        runs.push(TestRun {
            test: format!("udp {}", args.udp_bitrate),
            user: u.index,
            client: u.spec.client.label().into(),
            result: r,
        });
    }
    drop(servers);

    // Let one more status snapshot land so the counters include the last runs.
    std::thread::sleep(Duration::from_millis(1200));
    let status = t.gateway.status().map_err(|e| e.to_string())?;
    let peers = peer_lines(t, &status);
    print_summary(args, t, &runs, &peers, &status);

    for r in &runs {
        let name = format!("{} / user {} ({})", r.test, r.user, r.client);
        report.results.push(Record::from_samples(
            &name,
            "Mbit/s",
            &[r.result.bits_per_second / 1e6],
        ));
        if let Some(loss) = r.result.lost_percent {
            report
                .results
                .push(Record::from_samples(&format!("{name} loss"), "%", &[loss]));
        }
    }
    report.notes.push(format!(
        "iperf3 {}s per run, user -> sink through the {} gateway; TCP throughput is what the \
         receiver got, UDP the rate sent (see loss)",
        args.seconds, args.gateway
    ));
    report.notes.push(
        "one machine does everything: clients, gateway and sink share its cores, so these \
         numbers show the path works, not what a dedicated gateway can do"
            .into(),
    );
    if let Some(path) = &args.json {
        write_json(report, path, &runs, &peers, &status)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn peer_lines(t: &Topology, status: &GatewayStatus) -> Vec<PeerLine> {
    t.users
        .iter()
        .map(|u| {
            let p = status.peer(&u.key.public);
            PeerLine {
                user: u.index,
                client: u.spec.client.label().into(),
                public_key: u.key.public.clone(),
                handshake_age_s: p.and_then(|p| p.handshake_age()).map(|a| a.as_secs()),
                endpoint: p.and_then(|p| p.endpoint.clone()),
                rx_bytes: p.map_or(0, |p| p.rx_bytes),
                tx_bytes: p.map_or(0, |p| p.tx_bytes),
            }
        })
        .collect()
}

fn print_topology(t: &Topology, sluice: Option<&Path>) {
    println!("\ntopology (run id {}):", t.id);
    let what = match sluice {
        Some(p) => format!("sluice ({})", p.display()),
        None => t.gateway.kind().label().to_string(),
    };
    println!(
        "  gateway  {what} in {}: TUN {}, 10.77.0.1/16 fd77::1/64, UDP {}",
        t.gw_ns.name(),
        t.gateway.ifname(),
        t.gateway.listen_port()
    );
    if let Some(wan) = &t.wan_ns {
        println!(
            "  outer    {} (2 queues, XDP + AF_XDP for sluice) 198.51.100.1/24 fd19::1/64, via router {}",
            sluice::testbed::topology::XDP_OUTER_DEV,
            wan.name()
        );
    }
    for u in &t.users {
        println!(
            "  user {}   {} in {}: {} {} -> endpoint {}, from {}",
            u.index,
            u.spec.client,
            u.ns.name(),
            u.tunnel_v4,
            u.tunnel_v6,
            u.gateway_endpoint(),
            u.endpoint()
        );
    }
    println!(
        "  sink     {}: 10.88.0.2/24 fd88::2/64, iperf3 servers",
        t.sink_ns.name()
    );
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

fn print_summary(
    args: &Args,
    t: &Topology,
    runs: &[TestRun],
    peers: &[PeerLine],
    status: &GatewayStatus,
) {
    println!("\n=== summary: gateway {} ===", args.gateway);
    println!("\npeers (as the gateway sees them)");
    for p in peers {
        let hs = match p.handshake_age_s {
            Some(a) => format!("handshake {a} s ago"),
            None => "NO HANDSHAKE".to_string(),
        };
        let who = format!("user {} ({})", p.user, p.client);
        println!(
            "  {who:<24}  {:<20}  endpoint {:<22}  rx {:>9}  tx {:>9}",
            hs,
            p.endpoint.as_deref().unwrap_or("(none)"),
            human_bytes(p.rx_bytes),
            human_bytes(p.tx_bytes)
        );
    }
    println!(
        "\nthroughput (iperf3, {} s per run, user -> sink)",
        args.seconds
    );
    let mut last_test = String::new();
    let mut group_total = 0.0;
    let mut group_n = 0;
    let flush = |test: &str, total: f64, n: usize| {
        if n > 1 && test.starts_with("tcp all") {
            println!(
                "    {:<30}  {:>10} Mbit/s",
                "together",
                fmt_num(total / 1e6)
            );
        }
    };
    for r in runs {
        if r.test != last_test {
            flush(&last_test, group_total, group_n);
            println!("  {}", r.test);
            last_test = r.test.clone();
            group_total = 0.0;
            group_n = 0;
        }
        group_total += r.result.bits_per_second;
        group_n += 1;
        let who = format!("user {} ({})", r.user, r.client);
        let extra = match (r.result.lost_percent, r.result.retransmits) {
            (Some(loss), _) => format!(
                "loss {:.3}% ({} of {} datagrams), jitter {:.3} ms",
                loss,
                r.result.lost_packets.unwrap_or(0),
                r.result.packets.unwrap_or(0),
                r.result.jitter_ms.unwrap_or(0.0)
            ),
            (None, Some(rt)) => format!("{} retransmits", rt),
            _ => String::new(),
        };
        println!(
            "    {who:<30}  {:>10} Mbit/s  {extra}",
            fmt_num(r.result.bits_per_second / 1e6)
        );
    }
    flush(&last_test, group_total, group_n);
    println!("\npackets dropped by the gateway, by reason");
    match &status.drops {
        None => println!(
            "  not available: {} keeps no drop counters (sluice's status file does)",
            t.gateway.kind()
        ),
        Some(_) => {
            let nz = status.nonzero_drops();
            if nz.is_empty() {
                println!("  none");
            }
            for (reason, n) in nz {
                println!("  {reason:<22} {n:>10}");
            }
        }
    }
    if let Some(x) = &status.xdp {
        println!(
            "\nXDP on {} ({} mode): verdicts of every frame the outer interface received",
            x.interface, x.attach
        );
        for (name, n) in x.counters.iter().filter(|(_, &n)| n > 0) {
            println!("  {name:<22} {n:>10}");
        }
        for k in &x.sockets {
            println!(
                "  AF_XDP queue {} ({}): {} frames in, {} out; UMEM {} frames, {} lost; kernel dropped {}",
                k.queue,
                k.mode,
                k.rx_frames,
                k.tx_frames,
                k.frames.total,
                k.frames.lost,
                k.kernel_drops.values().sum::<u64>()
            );
        }
    }
    if let (Some(rx), Some(tx)) = (status.rx_packets, status.tx_packets) {
        println!(
            "\ngateway packets: {} received, {} sent",
            fmt_num(rx as f64),
            fmt_num(tx as f64)
        );
    }
}

/// The JSON file: the common report (see `report.rs`) plus a "lab" section.
#[derive(Serialize)]
struct LabJson<'a> {
    #[serde(flatten)]
    report: &'a Report,
    lab: LabSection<'a>,
}

#[derive(Serialize)]
struct LabSection<'a> {
    /// Every iperf3 run with all its numbers.
    runs: &'a [TestRun],
    /// Each user as the gateway saw it at the end.
    peers: &'a [PeerLine],
    /// The gateway's drop counters by reason (null for stand-in gateways).
    drops: &'a Option<std::collections::BTreeMap<String, u64>>,
    rx_packets: Option<u64>,
    tx_packets: Option<u64>,
}

fn write_json(
    report: &Report,
    path: &Path,
    runs: &[TestRun],
    peers: &[PeerLine],
    status: &GatewayStatus,
) -> Result<(), String> {
    let doc = LabJson {
        report,
        lab: LabSection {
            runs,
            peers,
            drops: &status.drops,
            rx_packets: status.rx_packets,
            tx_packets: status.tx_packets,
        },
    };
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Install missing tools, or fail with the exact commands.
pub(crate) fn ensure_tools() -> Result<(), String> {
    let missing = tools::missing(&Tool::ALL);
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "installing what the lab needs: {}",
        missing
            .iter()
            .map(|t| t.binary())
            .collect::<Vec<_>>()
            .join(", ")
    );
    tools::install(&missing).map_err(|e| format!("could not install the lab's tools: {e}"))
}

/// The sluice binary: `--sluice`, else a release build from this workspace (built now, so it
/// is never stale), else the `sluice` next to this executable.
pub(crate) fn sluice_binary(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--sluice {}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let exe_dir = exe.parent().unwrap_or(Path::new("."));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    let cargo = tools::find_binary("cargo");
    if let (Some(ws), Some(cargo)) = (workspace, cargo) {
        if ws.join("Cargo.toml").is_file() && ws.join("gateway").is_dir() {
            // This executable lives in <target>/<profile>/: build sluice into the same target.
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .or_else(|| exe_dir.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| ws.join("target"));
            println!(
                "building sluice: cargo build --release -p sluice (in {})",
                ws.display()
            );
            let status = Command::new(cargo)
                .args(["build", "--release", "-p", "sluice", "--bin", "sluice"])
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(ws)
                .status()
                .map_err(|e| format!("running cargo: {e}"))?;
            let bin = target.join("release").join("sluice");
            if status.success() && bin.is_file() {
                return Ok(bin);
            }
            return Err(format!(
                "`cargo build --release -p sluice` failed ({status}); fix the build or pass \
                 --sluice PATH"
            ));
        }
    }
    let sibling = exe_dir.join("sluice");
    if sibling.is_file() {
        return Ok(sibling);
    }
    Err(format!(
        "no sluice binary: not next to {} and no workspace to build it in; pass --sluice PATH",
        exe.display()
    ))
}
