//! `sluice-bench failover`: what a VRRP failover costs a streaming user, with and without
//! session sync.
//!
//! The VRRP pair of `sluice::testbed::vrrp` (two sluice gateways sharing the key and the peers,
//! the real keepalived on each with `configs/keepalived.conf.j2` rendered as Ansible renders
//! it, adverts every 100 ms, the /healthz check 20 times a second), one wireguard-go user
//! whose Endpoint is the VIP, and an inside sink. The user streams numbered UDP datagrams
//! (one every `--interval-ms`) through the tunnel to the sink; the master's sluice is
//! SIGKILLed; keepalived moves the VIPs; the stream resumes through the backup:
//!
//! - **without sync**: sluice runs without `[ha]`; the backup has no session, so the user's
//!   packets are dropped until wireguard-go's own timers start a new handshake (~15 s).
//! - **with sync**: `[ha]` with `sync = true` and keepalived's notify hook; the backup holds
//!   the session and takes it over at once.
//!
//! Reported per case over `--repeats` runs: the gap (the longest silence at the sink, which
//! spans the kill) and the datagrams lost. Times are those of this machine's namespaces and
//! processes; they are measured, not asserted. `--quick`: one run of each (CI smoke run).
//!
//! `--users N` with N > 1 runs N users simulated by sluice's own protocol core instead (see
//! [`many`]): per user the time from the kill to its first delivered datagram (median, p99,
//! max), the datagrams lost, for how many users that datagram went on their old session
//! (taken over by the backup) and for how many on a fresh one (a handshake first), when every
//! user had a fresh session, and whether the handshake burst put the backup under load.

mod many;

use crate::report::{Machine, Record, Report};
use sluice::testbed::gateway::GatewayPeer;
use sluice::testbed::ha::{ProbeReport, StreamProbe};
use sluice::testbed::vrrp::{self, VrrpPair, VrrpSpec};
use sluice::testbed::{is_root, tools, wait_for};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Failovers per case [default: 3; --quick: 1]
    #[arg(long)]
    repeats: Option<usize>,
    /// Users per case, comma-separated: 1 is a real wireguard-go client, more are simulated
    /// by sluice's protocol core [default: 1,10000; --quick: 1,50]
    #[arg(long, value_delimiter = ',')]
    users: Vec<u32>,
    /// Milliseconds between one simulated user's datagrams (N users send N / this in all)
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=5000))]
    user_interval_ms: u64,
    /// Milliseconds between the wireguard-go user's datagrams
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1000))]
    interval_ms: u64,
    /// sluice's data path in the gateways: socket or xdp
    #[arg(long, default_value = "socket")]
    dataplane: String,
    /// CI-sized run: one failover per case
    #[arg(long)]
    quick: bool,
    /// The sluice binary (default: a release build of this workspace)
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Write the results as JSON
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The tools the pair needs.
const TOOLS: [tools::Tool; 7] = [
    tools::Tool::Iproute2,
    tools::Tool::Sysctl,
    tools::Tool::Wg,
    tools::Tool::WireguardGo,
    tools::Tool::Keepalived,
    tools::Tool::Curl,
    tools::Tool::Jinja2,
];

pub fn run(args: &Args) -> Result<(), String> {
    if !is_root() {
        return Err("failover needs root (network namespaces, keepalived): run it as root".into());
    }
    let xdp = match args.dataplane.as_str() {
        "socket" => false,
        "xdp" => true,
        other => return Err(format!("--dataplane {other}: socket or xdp")),
    };
    tools::install(&tools::missing(&TOOLS)).map_err(|e| e.to_string())?;
    crate::lab::cleanup_on_exit("the namespaces")?;
    let sluice = crate::lab::sluice_binary(args.sluice.as_deref())?;
    let repeats = args
        .repeats
        .unwrap_or(if args.quick { 1 } else { 3 })
        .max(1);
    let interval = Duration::from_millis(args.interval_ms);
    let user_counts = match (args.users.is_empty(), args.quick) {
        (false, _) => args.users.clone(),
        (true, false) => vec![1, 10_000],
        (true, true) => vec![1, 50],
    };
    if let Some(bad) = user_counts
        .iter()
        .find(|&&n| n == 0 || n > crate::compare::users::MAX_USERS)
    {
        return Err(format!(
            "--users {bad}: 1 to {}",
            crate::compare::users::MAX_USERS
        ));
    }
    let params = serde_json::json!({
        "users": user_counts,
        "client": "wireguard-go (1 user); sluice's protocol core (more)",
        "repeats": repeats,
        "interval_ms": args.interval_ms,
        "user_interval_ms": args.user_interval_ms,
        "dataplane": args.dataplane,
        "advert_int_s": 0.1,
        "quick": args.quick,
    });
    let mut report = Report::new("failover", Machine::collect(), params);
    print!("{}", report.header());
    let spec = |ha: Option<bool>, client: bool, peers: Vec<GatewayPeer>| VrrpSpec {
        sluice_bin: sluice.clone(),
        xdp,
        ha,
        env: [Vec::new(), Vec::new()],
        client,
        peers,
    };
    for &n in user_counts.iter().filter(|&&n| n > 1) {
        let mut users = crate::compare::users::Users::new(n);
        let peers = many::peers(&users);
        let user_interval = Duration::from_millis(args.user_interval_ms);
        for (label, ha) in CASES {
            let mut runs = Vec::new();
            for r in 0..repeats {
                // A failed run is reported and the others go on: at 10,000 users a gateway
                // may fail its health check, which is a result too.
                match many::one_failover(
                    &spec(ha, false, peers.clone()),
                    &mut users,
                    user_interval,
                    Duration::from_secs(120),
                ) {
                    Ok(p) => {
                        println!("  {n} users, {label}, run {}: {}", r + 1, many_line(&p));
                        runs.push(p);
                    }
                    Err(e) => {
                        let first = e.lines().next().unwrap_or_default().to_string();
                        eprintln!("{n} users, {label}, run {}: {e}", r + 1);
                        println!("  {n} users, {label}, run {}: FAILED: {first}", r + 1);
                        report.notes.push(format!(
                            "{n} users, {label}, run {}: failed: {first}",
                            r + 1
                        ));
                    }
                }
            }
            if runs.is_empty() && args.quick {
                return Err(format!("{n} users, {label}: every run failed"));
            }
            many_records(&mut report, n, label, &runs);
        }
    }
    for (label, ha) in CASES.into_iter().filter(|_| user_counts.contains(&1)) {
        let (mut gaps, mut lost) = (Vec::new(), Vec::new());
        for r in 0..repeats {
            let p = one_failover(&spec(ha, true, Vec::new()), interval)
                .map_err(|e| format!("{label}, run {r}: {e}"))?;
            println!(
                "  1 user, {label}, run {}: gap {:.0} ms, {} of {} datagrams lost",
                r + 1,
                p.max_gap_ms,
                p.lost,
                p.sent
            );
            gaps.push(p.max_gap_ms);
            lost.push(p.lost as f64);
        }
        report.results.push(Record::from_samples(
            &format!("1 user, {label}: gap"),
            "ms",
            &gaps,
        ));
        report.results.push(Record::from_samples(
            &format!("1 user, {label}: datagrams lost"),
            "datagrams",
            &lost,
        ));
    }
    report.notes.push(format!(
        "1 user: one datagram every {} ms; gap = longest silence at the sink, spanning the \
         SIGKILL of the master's sluice",
        args.interval_ms
    ));
    report.notes.push(format!(
        "N users: each one datagram every {} ms; gap = per user, SIGKILL -> its first \
         delivered datagram sent after it (includes up to one interval of waiting for its \
         turn); first delivery on the old session = that datagram went on the session the user \
         had at the kill (taken over), else on a fresh one",
        args.user_interval_ms
    ));
    print!("\n{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(())
}

/// The two cases of every user count: sluice without `[ha]`, and with `[ha]` sync.
const CASES: [(&str, Option<bool>); 2] = [("without sync", None), ("with sync", Some(true))];

/// One many-user failover on one line.
fn many_line(p: &many::ManyReport) -> String {
    format!(
        "gap median {:.0} ms, p99 {:.0} ms, max {:.0} ms{}; {} of {} datagrams lost; first \
         delivery on the old session for {} users, on a fresh one for {}; all fresh sessions {}; \
         backup under load: {} ({} cookie replies sent, {} received); setup handshakes {:.1} \
         s; generator lag <= {:.0} ms ({} datagrams skipped)",
        p.gap_percentile(50.0),
        p.gap_percentile(99.0),
        p.gap_percentile(100.0),
        if p.not_recovered > 0 {
            format!(" ({} users never recovered)", p.not_recovered)
        } else {
            String::new()
        },
        p.lost,
        p.sent,
        p.continued,
        p.rehandshook,
        match p.all_fresh_ms {
            Some(ms) => format!("after {ms:.0} ms"),
            None => format!("not reached ({} of {} users)", p.fresh_users, p.users),
        },
        if p.under_load { "yes" } else { "no" },
        p.cookie_replies_sent,
        p.cookie_replies_received,
        p.setup_handshakes_s,
        p.max_lag_ms,
        p.skipped,
    )
}

/// The records of `runs` (one user count, one case).
fn many_records(report: &mut Report, n: u32, label: &str, runs: &[many::ManyReport]) {
    let col = |f: &dyn Fn(&many::ManyReport) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let rows: [(&str, &str, Vec<f64>); 9] = [
        ("gap median", "ms", col(&|p| p.gap_percentile(50.0))),
        ("gap p99", "ms", col(&|p| p.gap_percentile(99.0))),
        ("gap max", "ms", col(&|p| p.gap_percentile(100.0))),
        (
            "users not recovered",
            "users",
            col(&|p| f64::from(p.not_recovered)),
        ),
        ("datagrams lost", "datagrams", col(&|p| p.lost as f64)),
        (
            "first delivery on the old session",
            "users",
            col(&|p| f64::from(p.continued)),
        ),
        (
            "first delivery on a fresh session",
            "users",
            col(&|p| f64::from(p.rehandshook)),
        ),
        (
            "all users on a fresh session",
            "ms",
            col(&|p| p.all_fresh_ms.unwrap_or(f64::NAN)),
        ),
        (
            "backup under load",
            "runs",
            col(&|p| f64::from(u8::from(p.under_load))),
        ),
    ];
    for (what, unit, samples) in rows {
        report.results.push(Record::from_samples(
            &format!("{n} users, {label}: {what}"),
            unit,
            &samples,
        ));
    }
}

/// Build the pair, stream, kill the master's sluice, wait for the stream to resume, report.
fn one_failover(spec: &VrrpSpec, interval: Duration) -> Result<ProbeReport, String> {
    let mut pair = VrrpPair::build(spec).map_err(|e| e.to_string())?;
    let long = Duration::from_secs(30);
    let r = (|| -> sluice::testbed::Result<ProbeReport> {
        pair.wait_master(0, long)?;
        if spec.ha.is_some() {
            pair.members[1].wait_ha("gateway 2 to be backup", long, |v| {
                v.get("role").and_then(|r| r.as_str()) == Some("backup")
            })?;
        }
        let sender = pair
            .client_ns
            .udp_bind(SocketAddr::new(IpAddr::V4(vrrp::CLIENT_TUNNEL_V4), 9001))?;
        let sink_addr = SocketAddr::new(IpAddr::V4(vrrp::SINK_V4), 9000);
        let sink = pair.sink_ns.udp_bind(sink_addr)?;
        let probe = StreamProbe::start(sender, sink_addr, sink, interval, false)?;
        probe.wait_flowing("the stream", Duration::ZERO, 100, long)?;
        if spec.ha.is_some() {
            pair.members[1].wait_ha("gateway 2 to hold the session", long, |v| {
                v.get("sessions_held").and_then(|n| n.as_u64()) >= Some(1)
            })?;
        }
        // A second of steady stream before the kill.
        std::thread::sleep(Duration::from_secs(1));
        let killed_at = probe.elapsed();
        pair.members[0]
            .gateway
            .stop_with(libc::SIGKILL, Duration::from_secs(5));
        pair.wait_master(1, long)?;
        wait_for(
            "the stream to resume",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || Ok((probe.received_since(killed_at) >= 100).then_some(())),
        )?;
        Ok(probe.finish(Duration::from_millis(300)))
    })();
    r.map_err(|e| format!("{e}\n{}", pair.logs(20)))
}
