#![allow(clippy::unwrap_used)]
//! VRRP with the real keepalived in front of two sluice gateways (`sluice::testbed::vrrp`):
//! keepalived's configuration is `configs/keepalived.conf.j2` rendered as Ansible renders it,
//! a real wireguard-go client (configured with `wg`) streams through the virtual IP to a sink
//! on the inside, and the master is killed or made unhealthy.
//!
//! Root only; under `CI=true` a missing prerequisite is a failure, never a skip. Every
//! namespace and process is removed at the end, also on failure (the pair's guards).

mod netns_common;

use netns_common::{xdp_from_env, OrFail, SLUICE};
use sluice::testbed::ha::{http_status, DataCapture, ProbeReport, StreamProbe};
use sluice::testbed::tools::{require_for_test, Tool};
use sluice::testbed::vrrp::{self, VrrpPair, VrrpSpec};
use sluice::testbed::{registry, GatewayStatus};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

const TOOLS: [Tool; 7] = [
    Tool::Iproute2,
    Tool::Sysctl,
    Tool::Wg,
    Tool::WireguardGo,
    Tool::Keepalived,
    Tool::Curl,
    Tool::Jinja2,
];
/// How long keepalived may take to elect a master or move the VIP (bounds of waits, not
/// assertions on time).
const ELECTION: Duration = Duration::from_secs(30);
/// The probe's interval: 500 datagrams a second.
const PROBE_INTERVAL: Duration = Duration::from_millis(2);
const SINK_PORT: u16 = 9000;
const PROBE_PORT: u16 = 9001;

fn ready(test: &str) -> bool {
    if !require_for_test(test, &TOOLS) {
        return false;
    }
    for line in registry::cleanup_stale() {
        eprintln!("{test}: {line}");
    }
    true
}

fn spec(ha: Option<bool>, client: bool) -> VrrpSpec {
    VrrpSpec {
        sluice_bin: PathBuf::from(SLUICE),
        xdp: xdp_from_env(),
        ha,
        env: [Vec::new(), Vec::new()],
        client,
        peers: Vec::new(),
    }
}

/// A probe from the client's tunnel address to the sink, through the VIP.
fn start_probe(pair: &VrrpPair, echo: bool) -> StreamProbe {
    start_probe_on(pair, echo, false)
}

/// [`start_probe`] over IPv4 or (`v6`) IPv6 inside the tunnel.
fn start_probe_on(pair: &VrrpPair, echo: bool, v6: bool) -> StreamProbe {
    let (from, to) = if v6 {
        (
            IpAddr::V6(vrrp::CLIENT_TUNNEL_V6),
            IpAddr::V6(vrrp::SINK_V6),
        )
    } else {
        (
            IpAddr::V4(vrrp::CLIENT_TUNNEL_V4),
            IpAddr::V4(vrrp::SINK_V4),
        )
    };
    let sender = pair
        .client_ns
        .udp_bind(SocketAddr::new(from, PROBE_PORT))
        .or_fail("binding the probe's sender");
    let sink_addr = SocketAddr::new(to, SINK_PORT);
    let sink = pair
        .sink_ns
        .udp_bind(sink_addr)
        .or_fail("binding the probe's sink");
    StreamProbe::start(sender, sink_addr, sink, PROBE_INTERVAL, echo).or_fail("starting the probe")
}

fn print_report(test: &str, r: &ProbeReport) {
    eprintln!(
        "{test}: failover gap {:.0} ms (starting {:.0} ms into the stream), {} of {} datagrams \
         lost ({} in the gap), {} duplicates, one datagram every {:.0} ms",
        r.max_gap_ms, r.gap_start_ms, r.lost, r.sent, r.lost_in_gap, r.duplicates, r.interval_ms
    );
}

fn peer_handshake(s: &GatewayStatus, key: &str) -> Option<u64> {
    s.peer(key)
        .and_then(|p| p.last_handshake_unix)
        .filter(|&t| t > 0)
}

/// The master's sluice answers 503 on /healthz (a worker panicked, by fault injection):
/// keepalived's health check fails, the master goes to FAULT and the backup takes the VIPs.
#[test]
fn unhealthy_master_gives_the_vip_to_the_backup() {
    let test = "unhealthy_master_gives_the_vip_to_the_backup";
    if !ready(test) {
        return;
    }
    let mut s = spec(None, false);
    // Long enough for gateway 1 to win the election first (the test checks that it did).
    s.env[0] = vec![(
        "SLUICE_FAULT_INJECT".to_string(),
        "worker-panic:0:12000".to_string(),
    )];
    let mut pair = VrrpPair::build(&s).or_fail("building the VRRP pair");
    let healthz: SocketAddr = vrrp::METRICS.parse().unwrap();
    if let Err(e) = pair.wait_master(0, ELECTION) {
        panic!("{e}\n{}", pair.logs(30));
    }
    assert_eq!(
        http_status(&pair.members[0].ns, healthz, "/healthz").or_fail("healthz"),
        200,
        "gateway 1 was master before its worker panicked"
    );
    if let Err(e) = pair.wait_master(1, ELECTION) {
        panic!("{e}\n{}", pair.logs(30));
    }
    let code = http_status(&pair.members[0].ns, healthz, "/healthz").or_fail("healthz");
    assert_eq!(
        code,
        503,
        "gateway 1 lost the VIP because it is unhealthy\n{}",
        pair.logs(40)
    );
    assert_eq!(
        http_status(&pair.members[1].ns, healthz, "/healthz").or_fail("healthz"),
        200
    );
    let states = pair.members[0].keepalived.states();
    assert!(
        states.iter().any(|s| s == "FAULT"),
        "keepalived 1 went to FAULT: {states:?}\n{}",
        pair.logs(30)
    );
    // The master's sluice is still running: only its health took the VIP away.
    pair.members[0]
        .gateway
        .ensure_running()
        .or_fail("gateway 1 after its worker panicked");
}

/// Without session sync (sluice knows nothing of HA): the master's sluice is SIGKILLed while
/// the client streams through the VIP; keepalived moves the VIP; the client's packets reach
/// a gateway that has no session for them until the client's own timers start a new
/// handshake. The gap is printed (it is WireGuard's timers, ~15 s); the test checks that the
/// stream resumed and that it did through a new handshake with the backup.
#[test]
fn failover_without_sync_recovers_by_rehandshake() {
    let test = "failover_without_sync_recovers_by_rehandshake";
    if !ready(test) {
        return;
    }
    let mut pair = VrrpPair::build(&spec(None, true)).or_fail("building the VRRP pair");
    if let Err(e) = pair.wait_master(0, ELECTION) {
        panic!("{e}\n{}", pair.logs(30));
    }
    let probe = start_probe(&pair, false);
    if let Err(e) = probe.wait_flowing(
        "the stream through gateway 1",
        Duration::ZERO,
        200,
        Duration::from_secs(30),
    ) {
        panic!("{e}\n{}", pair.logs(30));
    }
    let key = pair.client_key.public.clone();
    let s1 = pair.members[0]
        .gateway
        .wait_status("gateway 1's handshake", Duration::from_secs(10), |s| {
            peer_handshake(s, &key).is_some()
        })
        .or_fail("gateway 1 has a handshake with the client");
    let first = peer_handshake(&s1, &key).unwrap();
    assert_eq!(
        peer_handshake(&pair.members[1].status().or_fail("status 2"), &key),
        None,
        "gateway 2 has never seen the client yet"
    );
    let client_before = pair.client_handshake().or_fail("client handshake");
    assert!(client_before > 0);
    // Let the stream run a little on the first gateway, then kill it.
    probe
        .wait_flowing(
            "more of the stream",
            probe.elapsed(),
            250,
            Duration::from_secs(10),
        )
        .or_fail("streaming");
    let killed_at = probe.elapsed();
    pair.members[0]
        .gateway
        .stop_with(libc::SIGKILL, Duration::from_secs(5));
    if let Err(e) = pair.wait_master(1, ELECTION) {
        panic!("{e}\n{}", pair.logs(30));
    }
    // WireGuard's own timers: no reply for 15 s after sending data starts a new handshake.
    if let Err(e) = probe.wait_flowing(
        "the stream to resume through gateway 2",
        killed_at + Duration::from_millis(1),
        100,
        Duration::from_secs(60),
    ) {
        panic!("{e}\n{}", pair.logs(30));
    }
    let report = probe.finish(Duration::from_millis(300));
    print_report(test, &report);
    let s2 = pair.members[1]
        .gateway
        .wait_status("gateway 2's handshake", Duration::from_secs(10), |s| {
            peer_handshake(s, &key).is_some()
        })
        .or_fail("gateway 2 completed a handshake");
    let second = peer_handshake(&s2, &key).unwrap();
    assert!(second >= first, "handshakes {first} then {second}");
    let client_after = pair.client_handshake().or_fail("client handshake");
    assert!(
        client_after > client_before,
        "the client made a new handshake ({client_before} then {client_after})"
    );
    assert!(
        report.gap_start_ms >= killed_at.as_secs_f64() * 1e3 - 1000.0,
        "the longest gap is the failover's: {report:?}"
    );
    assert!(report.lost > 0, "a failover without sync loses datagrams");
    assert_eq!(report.duplicates, 0);
    // The backup's sluice saw the client's packets for the dead gateway's session and had to
    // drop them: no session for that receiver index.
    assert!(
        !s2.nonzero_drops().is_empty(),
        "gateway 2 counted the old session's packets as drops: {s2:?}"
    );
    eprintln!(
        "{test}: gateway 2 drops by reason: {:?}",
        s2.nonzero_drops()
    );
}

fn role_is(v: &serde_json::Value, role: &str) -> bool {
    v.get("role").and_then(|r| r.as_str()) == Some(role)
}

/// The pair with session sync, keepalived's notify hooks telling sluice its role: gateway 1
/// is master and syncs the client's session to gateway 2.
fn synced_pair(test: &str) -> VrrpPair {
    synced_pair_from(test, &spec(Some(true), true))
}

/// [`synced_pair`] built from `spec`.
fn synced_pair_from(test: &str, spec: &VrrpSpec) -> VrrpPair {
    let mut pair = VrrpPair::build(spec).or_fail("building the VRRP pair");
    if let Err(e) = pair.wait_master(0, ELECTION) {
        panic!("{test}: {e}\n{}", pair.logs(30));
    }
    for (i, role) in [(0, "master"), (1, "backup")] {
        if let Err(e) = pair.members[i].wait_ha(
            &format!("keepalived's notify hook to make gateway {} {role}", i + 1),
            ELECTION,
            |v| role_is(v, role),
        ) {
            panic!("{test}: {e}\n{}", pair.logs(30));
        }
    }
    pair
}

/// With session sync: the master's sluice is SIGKILLed while the client streams; the backup
/// already holds the client's session, so the stream goes on through it at once on the old
/// session (a gap of at most 1 s, the requirement), and the backup starts a fresh
/// handshake with the client.
#[test]
fn failover_with_sync_continues_the_stream_within_a_second() {
    let test = "failover_with_sync_continues_the_stream_within_a_second";
    if !ready(test) {
        return;
    }
    let mut pair = synced_pair(test);
    let probe = start_probe(&pair, false);
    if let Err(e) = probe.wait_flowing(
        "the stream through gateway 1",
        Duration::ZERO,
        200,
        Duration::from_secs(30),
    ) {
        panic!("{e}\n{}", pair.logs(30));
    }
    if let Err(e) = pair.members[1].wait_ha(
        "gateway 2 to hold the client's session",
        Duration::from_secs(10),
        |v| v.get("sessions_held").and_then(|n| n.as_u64()) >= Some(1),
    ) {
        panic!("{e}\n{}", pair.logs(30));
    }
    let handshake_before = pair.client_handshake_precise().or_fail("client handshake");
    assert!(handshake_before > 0.0);
    probe
        .wait_flowing(
            "more of the stream",
            probe.elapsed(),
            250,
            Duration::from_secs(10),
        )
        .or_fail("streaming");
    let killed_at = probe.elapsed();
    pair.members[0]
        .gateway
        .stop_with(libc::SIGKILL, Duration::from_secs(5));
    if let Err(e) = pair.wait_master(1, ELECTION) {
        panic!("{e}\n{}", pair.logs(30));
    }
    if let Err(e) = probe.wait_flowing(
        "the stream to go on through gateway 2",
        killed_at,
        250,
        Duration::from_secs(30),
    ) {
        panic!("{e}\n{}", pair.logs(30));
    }
    let resumed = probe
        .first_arrival_since(killed_at + Duration::from_millis(1))
        .unwrap();
    // The fresh handshake gateway 2 started with the client on taking it over.
    let handshake_after = match sluice::testbed::wait_for(
        "the client's fresh handshake with gateway 2",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let t = pair.client_handshake_precise()?;
            Ok((t > handshake_before).then_some(t))
        },
    ) {
        Ok(t) => t,
        Err(e) => panic!("{e}\n{}", pair.logs(30)),
    };
    let resumed_unix = probe.unix_time_of(resumed);
    let report = probe.finish(Duration::from_millis(300));
    print_report(test, &report);
    // The status file is rewritten once a second: wait for the one written after the takeover
    // and the first messages on the taken-over session, rather than read a stale one.
    let took_over = pair.members[1].wait_ha(
        "gateway 2's status to show the takeover and messages on the taken-over session",
        Duration::from_secs(10),
        |v| {
            v.get("takeovers").and_then(|n| n.as_u64()) >= Some(1)
                && v.get("rx_taken_over").and_then(|n| n.as_u64()) > Some(0)
        },
    );
    let ha2 = pair.members[1].ha_status().or_fail("gateway 2's ha status");
    eprintln!("{test}: gateway 2's ha status after the failover: {ha2}");
    if let Err(e) = took_over {
        eprintln!("{test}: {e}\n{}", pair.logs(30));
    }
    eprintln!(
        "{test}: first datagram after the kill {:.3} s after it; the client's new handshake \
         {:.3} s after the first datagram through gateway 2",
        (resumed - killed_at).as_secs_f64(),
        handshake_after - resumed_unix
    );
    assert!(
        report.max_gap_ms <= 1000.0,
        "the failover's gap is at most 1 s with sync: {report:?}\n{}",
        pair.logs(30)
    );
    assert!(
        ha2.get("takeovers").and_then(|n| n.as_u64()) >= Some(1),
        "gateway 2 took the session over: {ha2}"
    );
    // Messages that authenticated under the session gateway 2 took over: the client sent them
    // on the old session, so the stream went on through gateway 2 before the new handshake
    // replaced it (the client switches to a new session only after that handshake).
    assert!(
        ha2.get("rx_taken_over").and_then(|n| n.as_u64()) > Some(0),
        "gateway 2 received the stream on the session it took over: {ha2}"
    );
    assert_eq!(report.duplicates, 0, "no datagram delivered twice");
}

/// Split brain: VRRP between the two gateways is cut (their bridge ports are isolated from
/// each other, both still reach the client), so both become master, both hold the VIP, and
/// gateway 2 takes over the client's session while gateway 1 keeps using it. The sink echoes
/// the client's streams back, IPv4 through gateway 1 and IPv6 through gateway 2, so both
/// encrypt for the same client at once. Every WireGuard transport message on the client's
/// side is captured: no (receiver index, counter) pair may appear twice, i.e. no nonce is
/// ever used twice under one key. Gateway 2's fresh handshake at the takeover is held back
/// (`SLUICE_FAULT_INJECT=drop-takeover-initiation`: its first initiation is dropped, the
/// retransmit follows REKEY_TIMEOUT later), so both gateways really send under the one
/// session, in different counter regions, which the test asserts.
#[test]
fn split_brain_never_reuses_a_nonce() {
    let test = "split_brain_never_reuses_a_nonce";
    if !ready(test) {
        return;
    }
    let mut s = spec(Some(true), true);
    s.env[1].push((
        "SLUICE_FAULT_INJECT".to_string(),
        "drop-takeover-initiation".to_string(),
    ));
    let mut pair = synced_pair_from(test, &s);
    let packets = pair
        .client_ns
        .packet_ipv4_socket()
        .or_fail("packet socket in the client's namespace");
    let capture = DataCapture::start(packets, vrrp::CLIENT_PORT).or_fail("capture");
    pair.route_inside_via(0, 1)
        .or_fail("routing the sink's replies");
    let p4 = start_probe_on(&pair, true, false);
    let p6 = start_probe_on(&pair, true, true);
    for (p, what) in [(&p4, "IPv4"), (&p6, "IPv6")] {
        if let Err(e) = p.wait_flowing(
            &format!("the {what} stream"),
            Duration::ZERO,
            200,
            Duration::from_secs(30),
        ) {
            panic!("{e}\n{}", pair.logs(30));
        }
    }
    if let Err(e) = pair.members[1].wait_ha(
        "gateway 2 to hold the client's session",
        Duration::from_secs(10),
        |v| v.get("sessions_held").and_then(|n| n.as_u64()) >= Some(1),
    ) {
        panic!("{e}\n{}", pair.logs(30));
    }
    pair.partition_vrrp(true).or_fail("cutting VRRP");
    let both = sluice::testbed::wait_for(
        "both gateways to hold the VIP",
        ELECTION,
        Duration::from_millis(20),
        || {
            let h = pair.vip_holders()?;
            Ok((h == [0, 1]).then_some(()))
        },
    );
    if let Err(e) = both {
        panic!("{e}\n{}", pair.logs(30));
    }
    for i in 0..2 {
        if let Err(e) =
            pair.members[i].wait_ha("both to be master", ELECTION, |v| role_is(v, "master"))
        {
            panic!("{e}\n{}", pair.logs(30));
        }
    }
    // Both gateways encrypt for the client while the split lasts. Gateway 2's IPv6 echoes
    // reach it (under the taken-over session, region 1, until its held-back handshake
    // completes, then under its own). Gateway 1 goes on sealing the IPv4 echoes under the
    // session it derived (region 0); the client drops those once gateway 2's region-1
    // counters have moved its replay window past them (no counter is ever accepted twice,
    // whoever sends), so gateway 1's sending is read from its own counters.
    let tx1 = |pair: &VrrpPair| {
        pair.members[0]
            .status()
            .ok()
            .and_then(|s| s.tx_packets)
            .unwrap_or(0)
    };
    let (before1, e6) = (tx1(&pair), p6.echoes());
    let r = sluice::testbed::wait_for(
        "echoes through IPv6 (gateway 2) during the split",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || Ok((p6.echoes() >= e6 + 500).then_some(())),
    )
    .and_then(|()| {
        sluice::testbed::wait_for(
            "gateway 1 to send the IPv4 echoes during the split",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || Ok((tx1(&pair) >= before1 + 500).then_some(())),
        )
    });
    if let Err(e) = r {
        panic!("{e}\n{}", pair.logs(30));
    }
    let r4 = p4.finish(Duration::from_millis(300));
    let r6 = p6.finish(Duration::from_millis(0));
    let seen = capture.finish();
    let ha: Vec<serde_json::Value> = pair
        .members
        .iter()
        .map(|m| m.ha_status().or_fail("ha status"))
        .collect();
    eprintln!(
        "{test}: IPv4 {} sent {} echoed, IPv6 {} sent {} echoed",
        r4.sent, r4.echoes, r6.sent, r6.echoes
    );
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    let dups: Vec<(u32, u64)> = sorted
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    // Per receiver index, the counter regions (counter >> 40) the messages came from.
    let mut regions: std::collections::BTreeMap<u32, std::collections::BTreeSet<u64>> =
        Default::default();
    for &(idx, ctr) in &seen {
        regions.entry(idx).or_default().insert(ctr >> 40);
    }
    eprintln!(
        "{test}: {} transport messages to the client, receiver index -> counter regions: \
         {regions:x?}; takeovers: gateway 1 {}, gateway 2 {}",
        seen.len(),
        ha[0]["takeovers"],
        ha[1]["takeovers"]
    );
    assert!(seen.len() > 1000, "captured the echoes: {}", seen.len());
    assert!(
        dups.is_empty(),
        "{} (receiver index, counter) pairs were sent twice, e.g. {:x?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    // Both senders used one key at the same time: some receiver index carried counters from
    // two regions, the deriver's (0) and the taker's (gateway 2 is member 1 of 2: region 1),
    // and a region-0 message of it was captured after its first region-1 message.
    let mut first1: std::collections::HashMap<u32, usize> = Default::default();
    let mut last0: std::collections::HashMap<u32, usize> = Default::default();
    for (at, &(idx, ctr)) in seen.iter().enumerate() {
        match ctr >> 40 {
            0 => {
                last0.insert(idx, at);
            }
            1 => {
                first1.entry(idx).or_insert(at);
            }
            _ => {}
        }
    }
    assert!(
        first1
            .iter()
            .any(|(idx, &f)| last0.get(idx).is_some_and(|&l| l > f)),
        "both gateways sent under one session at once (regions 0 and 1 interleaved on one \
         receiver index): {regions:x?}"
    );
    assert!(
        ha[1]["takeovers"].as_u64() >= Some(1),
        "gateway 2 took the session over: {}",
        ha[1]
    );
}
