//! `sluice-bench churn`: how fast peers change through the `wg` API on a gateway that already
//! holds many, and what continuous peer changes cost the data plane.
//!
//! The lab's topology (see [`crate::lab`]) with one wireguard-go user: sluice runs in the
//! gateway namespace (socket mode, one worker pinned to core 0, no status file, so nothing
//! rewrites 100,000 peers a second behind the measurement). Then:
//!
//! 1. **Preload**: `--existing` peers (default 100,000) are added through sluice's UAPI socket
//!    (`/var/run/wireguard/<if>.sock`), `--batch` peers per `set=1` request, as `wg syncconf`
//!    sends a whole file in one request. Each peer has a random key and one /32 in
//!    10.128.0.0/9.
//! 2. **Peers added per second**: `--add` more peers (default 10,000) in the same batches, with
//!    the preloaded ones present; then the same peers removed again (`remove=true`).
//! 3. **Data plane under churn**: iperf3 TCP from the user to the sink through the tunnel,
//!    `--rounds` times without changes and as many times while a second thread adds
//!    `--churn-batch` peers and removes them again, request after request, for the whole run.
//!    Reported: both throughputs (median of the rounds) and their ratio; the target is
//!    a drop under 5 % (reported, not asserted: one 2-core machine runs the client, gateway,
//!    sink and API client at once).
//!
//! `--quick` is CI-sized: 2,000 existing, 1,000 added, one 2-second round of each kind.
//! Everything is torn down at the end, also on failure and on Ctrl-C.

use crate::report::{fmt_num, Machine, Record, Report};
use sluice::testbed::gateway::GatewayKind;
use sluice::testbed::topology::{Topology, TopologySpec, UserSpec, SINK_V4};
use sluice::testbed::traffic::{iperf3_client, Iperf3Server, IperfOpts};
use sluice::testbed::{is_root, WgImpl};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Peers on the gateway before the measurements [default: 100000; --quick: 2000]
    #[arg(long)]
    existing: Option<usize>,
    /// Peers added (and removed again) in the measured run [default: 10000; --quick: 1000]
    #[arg(long)]
    add: Option<usize>,
    /// Peers per API request (`wg syncconf` sends a whole file as one request)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch: u64,
    /// Peers added, then removed, per change while iperf3 runs
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    churn_batch: u64,
    /// Seconds per iperf3 run [default: 10; --quick: 2]
    #[arg(long)]
    seconds: Option<u32>,
    /// iperf3 runs per condition (without, with changes), alternating [default: 3; --quick: 1]
    #[arg(long)]
    rounds: Option<u32>,
    /// CI-sized run
    #[arg(long)]
    quick: bool,
    /// The sluice binary [default: built with `cargo build --release -p sluice`]
    #[arg(long, value_name = "PATH")]
    sluice: Option<PathBuf>,
    /// Also write the results as JSON to this file (schema: see `report.rs`)
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The run's sizes, after defaults.
#[derive(Debug, Clone, Copy)]
struct Plan {
    existing: usize,
    add: usize,
    batch: usize,
    churn_batch: usize,
    seconds: u32,
    rounds: u32,
}

impl Plan {
    fn from(args: &Args) -> Plan {
        let q = args.quick;
        Plan {
            existing: args.existing.unwrap_or(if q { 2_000 } else { 100_000 }),
            add: args.add.unwrap_or(if q { 1_000 } else { 10_000 }),
            batch: args.batch as usize,
            churn_batch: args.churn_batch as usize,
            seconds: args.seconds.unwrap_or(if q { 2 } else { 10 }),
            rounds: args.rounds.unwrap_or(if q { 1 } else { 3 }).max(1),
        }
    }
}

/// Peer numbers: preloaded and added peers count up from 0; the churn loop's peers live
/// apart, from this number on, so they never collide.
const CHURN_BASE: u64 = 4_000_000;

/// Peer `n`'s public key: 32 bytes from a splitmix64 stream (distinct keys; any 32 bytes are
/// an X25519 public key), as UAPI hex.
fn peer_key_hex(n: u64) -> String {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED_C4A1_u64;
    let mut hex = String::with_capacity(64);
    for _ in 0..4 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let _ = write!(hex, "{z:016x}");
    }
    hex
}

/// Peer `n`'s one allowed IP: 10.128.0.0/9 + n.
fn peer_ip(n: u64) -> Ipv4Addr {
    Ipv4Addr::from(0x0a80_0000u32 + n as u32)
}

/// A UAPI `set` body adding peers `range` (or removing them).
fn set_body(range: std::ops::Range<u64>, remove: bool) -> String {
    let mut b = String::with_capacity((range.end - range.start) as usize * 120);
    for n in range {
        let _ = writeln!(b, "public_key={}", peer_key_hex(n));
        if remove {
            b.push_str("remove=true\n");
        } else {
            let _ = writeln!(b, "replace_allowed_ips=true\nallowed_ip={}/32", peer_ip(n));
        }
    }
    b
}

/// One `set=1` request on the interface's UAPI socket; fails unless the answer is `errno=0`.
fn uapi_set(ifname: &str, body: &str) -> Result<(), String> {
    let path = sluice::testbed::wg::uapi_socket(ifname);
    let mut s =
        UnixStream::connect(&path).map_err(|e| format!("connecting to {}: {e}", path.display()))?;
    let t = Some(Duration::from_secs(120));
    s.set_read_timeout(t)
        .and_then(|_| s.set_write_timeout(t))
        .map_err(|e| e.to_string())?;
    let mut req = String::with_capacity(body.len() + 8);
    req.push_str("set=1\n");
    req.push_str(body);
    req.push('\n');
    s.write_all(req.as_bytes())
        .map_err(|e| format!("writing to {}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while !out.ends_with(b"\n\n") {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("reading from {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    match text.trim() {
        "errno=0" => Ok(()),
        other => Err(format!("{}: set answered {other:?}", path.display())),
    }
}

/// Add (or remove) peers `range` in requests of `batch`; returns the time taken.
fn change(
    ifname: &str,
    range: std::ops::Range<u64>,
    batch: usize,
    remove: bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut n = range.start;
    while n < range.end {
        let end = (n + batch as u64).min(range.end);
        uapi_set(ifname, &set_body(n..end, remove))?;
        n = end;
    }
    Ok(start.elapsed())
}

/// How many peers the interface lists (a UAPI `get`).
fn peer_count(ifname: &str) -> Result<usize, String> {
    let text = sluice::testbed::wg::uapi_get(ifname).map_err(|e| e.to_string())?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("public_key="))
        .count())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

pub fn run(args: &Args) -> Result<(), String> {
    if !is_root() {
        return Err("churn needs root (network namespaces, TUN devices): run it as root".into());
    }
    crate::lab::ensure_tools()?;
    crate::lab::cleanup_on_exit("the namespaces")?;
    let plan = Plan::from(args);
    let sluice = crate::lab::sluice_binary(args.sluice.as_deref())?;
    let params = serde_json::json!({
        "existing": plan.existing,
        "add": plan.add,
        "batch": plan.batch,
        "churn_batch": plan.churn_batch,
        "seconds": plan.seconds,
        "rounds": plan.rounds,
        "quick": args.quick,
        "mode": "socket",
        "workers": 1,
    });
    let mut report = Report::new("churn", Machine::collect(), params);
    print!("{}", report.header());
    let mut spec = TopologySpec::new(
        GatewayKind::Sluice,
        Some(sluice),
        vec![UserSpec::new(WgImpl::WireguardGo)],
    );
    spec.sluice_status_file = false;
    println!("\nbuilding the topology ...");
    let mut topo = Topology::build(&spec).map_err(|e| format!("building the topology: {e}"))?;
    let outcome = measure(&plan, &mut topo, &mut report);
    println!("\nremoving the namespaces ...");
    drop(topo);
    outcome?;
    print!("\n{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn measure(plan: &Plan, t: &mut Topology, report: &mut Report) -> Result<(), String> {
    t.wait_handshakes(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let ifname = t.gateway.ifname().to_string();
    let base = t.users.len();

    println!(
        "preloading {} peers, {} per request ...",
        plan.existing, plan.batch
    );
    let took = change(&ifname, 0..plan.existing as u64, plan.batch, false)?;
    let preload_rate = plan.existing as f64 / took.as_secs_f64();
    println!(
        "  {:.1} s, {} peers/s",
        took.as_secs_f64(),
        fmt_num(preload_rate)
    );

    let added = plan.existing as u64..(plan.existing + plan.add) as u64;
    println!(
        "adding {} peers to {} existing, {} per request ...",
        plan.add, plan.existing, plan.batch
    );
    let took = change(&ifname, added.clone(), plan.batch, false)?;
    let add_rate = plan.add as f64 / took.as_secs_f64();
    println!(
        "  {:.2} s, {} peers/s",
        took.as_secs_f64(),
        fmt_num(add_rate)
    );
    let listed = peer_count(&ifname)?;
    if listed != base + plan.existing + plan.add {
        return Err(format!(
            "the gateway lists {listed} peers, expected {}",
            base + plan.existing + plan.add
        ));
    }
    println!("removing them again ...");
    let took = change(&ifname, added, plan.batch, true)?;
    let remove_rate = plan.add as f64 / took.as_secs_f64();
    println!(
        "  {:.2} s, {} peers/s",
        took.as_secs_f64(),
        fmt_num(remove_rate)
    );

    let server = Iperf3Server::start(&t.sink_ns, 5201, &t.dir).map_err(|e| e.to_string())?;
    let u = t.user(1);
    let iperf = || {
        iperf3_client(
            &u.ns,
            IpAddr::V4(SINK_V4),
            server.port(),
            &IperfOpts::tcp(plan.seconds),
        )
        .map(|r| r.bits_per_second / 1e6)
        .map_err(|e| format!("iperf3: {e}"))
    };
    let (mut calm, mut busy) = (Vec::new(), Vec::new());
    let mut changes_per_s = Vec::new();
    for round in 1..=plan.rounds {
        println!(
            "round {round}/{}: iperf3 TCP {} s without peer changes ...",
            plan.rounds, plan.seconds
        );
        calm.push(iperf()?);
        println!(
            "round {round}/{}: iperf3 TCP {} s while {} peers are added and removed over and over ...",
            plan.rounds, plan.seconds, plan.churn_batch
        );
        let stop = AtomicBool::new(false);
        let done = AtomicU64::new(0);
        let (mbps, churn) = std::thread::scope(|s| {
            let churner = s.spawn(|| -> Result<Duration, String> {
                let start = Instant::now();
                let range = CHURN_BASE..CHURN_BASE + plan.churn_batch as u64;
                while !stop.load(Ordering::Relaxed) {
                    uapi_set(&ifname, &set_body(range.clone(), false))?;
                    uapi_set(&ifname, &set_body(range.clone(), true))?;
                    done.fetch_add(2, Ordering::Relaxed);
                }
                Ok(start.elapsed())
            });
            let mbps = iperf();
            stop.store(true, Ordering::Relaxed);
            let churn = churner
                .join()
                .unwrap_or_else(|_| Err("the churn thread panicked".into()));
            (mbps, churn)
        });
        let elapsed = churn?;
        busy.push(mbps?);
        let n = done.load(Ordering::Relaxed);
        changes_per_s.push(n as f64 / elapsed.as_secs_f64());
        println!(
            "  without {:.0} Mbit/s, with {:.0} Mbit/s ({n} changes of {} peers)",
            calm[calm.len() - 1],
            busy[busy.len() - 1],
            plan.churn_batch
        );
    }
    drop(server);
    let listed = peer_count(&ifname)?;
    if listed != base + plan.existing {
        return Err(format!(
            "after the churn the gateway lists {listed} peers, expected {}",
            base + plan.existing
        ));
    }
    t.gateway.ensure_running().map_err(|e| e.to_string())?;

    let ratio = median(&busy) / median(&calm);
    let with = format!("{} existing", plan.existing);
    report.results.extend([
        Record::from_samples(
            &format!("preload: peers added per second (0 to {with})"),
            "peers/s",
            &[preload_rate],
        ),
        Record::from_samples(
            &format!("peers added per second ({with})"),
            "peers/s",
            &[add_rate],
        ),
        Record::from_samples(
            &format!("peers removed per second ({with})"),
            "peers/s",
            &[remove_rate],
        ),
        Record::from_samples("TCP through the tunnel, no peer changes", "Mbit/s", &calm),
        Record::from_samples("TCP through the tunnel, peers changing", "Mbit/s", &busy),
        Record::from_samples(
            "peer changes during the runs (requests/s)",
            "req/s",
            &changes_per_s,
        ),
        Record::from_samples("throughput with changes / without", "ratio", &[ratio]),
    ]);
    report.notes.push(format!(
        "API: sluice's UAPI socket, {} peers per set request (as `wg syncconf` sends one file); \
         each peer a random key and one /32",
        plan.batch
    ));
    report.notes.push(format!(
        "throughput drop under churn: {:.1}% (target < 5%; reported, not asserted); \
         the client, gateway, sink and API client share the machine's cores",
        (1.0 - ratio) * 100.0
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_hex_and_bodies_well_formed() {
        let keys: std::collections::HashSet<String> = (0..10_000).map(peer_key_hex).collect();
        assert_eq!(keys.len(), 10_000);
        assert!(keys
            .iter()
            .all(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(peer_ip(0), Ipv4Addr::new(10, 128, 0, 0));
        assert_eq!(peer_ip(65_537), Ipv4Addr::new(10, 129, 0, 1));
        let add = set_body(5..7, false);
        assert_eq!(add.lines().count(), 6);
        assert!(add.contains("allowed_ip=10.128.0.6/32"));
        let rm = set_body(5..7, true);
        assert_eq!(rm.matches("remove=true").count(), 2);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }
}
