//! Interop in network namespaces: the real `sluice up` daemon as the gateway, real WireGuard
//! clients (wireguard-go and boringtun-cli, configured with the stock `wg` tool) in their own
//! namespaces, real traffic to a sink behind the gateway. See `sluice::testbed::topology` for
//! the picture and the addresses.
//!
//! Needs root and `ip`, `sysctl`, `wg`, `wireguard-go`, `boringtun-cli`, `iperf3`. Under
//! `CI=true` a missing prerequisite fails the test with the command that installs it;
//! elsewhere the test prints a loud SKIPPED line and passes.
//!
//! The gateway under test is sluice unless `SLUICE_TEST_GATEWAY` says `wireguard-go` or
//! `boringtun`: the same tests then prove the plumbing with a stand-in gateway. Assertions on
//! sluice's status file (drop counters, exit codes, config errors) apply to sluice only.
//!
//! Every test builds its own topology with its own names and removes it at the end, also when
//! it fails. Waits are bounded polls; nothing asserts on timing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod netns_common;

use netns_common::*;

use sluice::testbed::gateway::{write_sluice_config, GatewaySpec};
use sluice::testbed::netns::Netns;
use sluice::testbed::topology::{Topology, UserSpec, LISTEN_PORT, SINK_V4, SINK_V6};
use sluice::testbed::traffic::{
    capture_udp4, iperf3_client, is_wg_data, tcp_send_file, udp_arrives, udp_round_trip,
    write_random_file, Iperf3Server, IperfOpts,
};
use sluice::testbed::{cmd, registry, unique_id, GatewayKind, KeyPair, RunDir, WgImpl};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// UDP both ways, IPv4 and IPv6 inner, between every user and the sink: user -> sink -> user
/// echoes, and sink -> user -> sink echoes (the gateway routing towards the user by AllowedIPs).
fn inner_traffic_both_ways(t: &Topology) {
    for u in &t.users {
        let k = u.index as u16;
        let label = u.label();
        udp_round_trip(
            &u.ns,
            IpAddr::V4(u.tunnel_v4),
            &t.sink_ns,
            v4(SINK_V4, 7000 + k),
            TRAFFIC_TIMEOUT,
        )
        .or_fail(&format!("{label} -> sink, IPv4"));
        udp_round_trip(
            &u.ns,
            IpAddr::V6(u.tunnel_v6),
            &t.sink_ns,
            v6(SINK_V6, 7000 + k),
            TRAFFIC_TIMEOUT,
        )
        .or_fail(&format!("{label} -> sink, IPv6"));
        udp_round_trip(
            &t.sink_ns,
            IpAddr::V4(SINK_V4),
            &u.ns,
            v4(u.tunnel_v4, 7100 + k),
            TRAFFIC_TIMEOUT,
        )
        .or_fail(&format!("sink -> {label}, IPv4"));
        udp_round_trip(
            &t.sink_ns,
            IpAddr::V6(SINK_V6),
            &u.ns,
            v6(u.tunnel_v6, 7100 + k),
            TRAFFIC_TIMEOUT,
        )
        .or_fail(&format!("sink -> {label}, IPv6"));
    }
}

/// The gateway sees each user's handshake and endpoint (polled: sluice rewrites its status
/// file about once a second, so a single read may predate the traffic just sent).
fn assert_gateway_sees_users(t: &mut Topology) {
    let want: Vec<(String, String, String)> = t
        .users
        .iter()
        .map(|u| (u.label(), u.key.public.clone(), u.endpoint().to_string()))
        .collect();
    t.gateway
        .wait_status(
            "the gateway to report every user's handshake and endpoint",
            TRAFFIC_TIMEOUT,
            |s| {
                want.iter().all(|(_, key, endpoint)| {
                    s.peer(key).is_some_and(|p| {
                        p.handshake_age().is_some() && p.endpoint.as_deref() == Some(endpoint)
                    })
                })
            },
        )
        .unwrap_or_else(|e| panic!("gateway status for {want:?}: {e}"));
}

/// Check 1: Both clients handshake with the gateway; IPv4 and IPv6 inner traffic flows both ways.
#[test]
fn handshake_and_inner_traffic_both_ways() {
    let Some(kind) = gateway_under_test("handshake_and_inner_traffic_both_ways") else {
        return;
    };
    let mut t = build(kind, vec![wg_go(), boringtun()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    inner_traffic_both_ways(&t);
    assert_gateway_sees_users(&mut t);
    if kind.is_sluice() {
        let s = t
            .gateway
            .wait_status("packet counters to move", TRAFFIC_TIMEOUT, |s| {
                s.rx_packets.unwrap_or(0) > 0 && s.tx_packets.unwrap_or(0) > 0
            })
            .or_fail("status counters");
        assert_eq!(s.interface, t.gateway.ifname());
        assert_eq!(s.public_key, t.gateway_key.public);
        assert_eq!(s.listen_port, LISTEN_PORT);
        let drops = s.drops.as_ref().expect("sluice status has drops");
        for r in sluice::DropReason::ALL {
            assert!(
                drops.contains_key(r.label()),
                "status drops lack {}",
                r.label()
            );
        }
        // Clean traffic from well-configured clients never trips these. (no_route once counted
        // the kernel's own MLD reports written into a multicast-capable TUN.)
        for r in [
            "no_route",
            "bad_inner_packet",
            "source_not_allowed",
            "decrypt_failed",
            "replayed",
        ] {
            assert_eq!(
                drops.get(r).copied(),
                Some(0),
                "unexpected {r} drops: {drops:?}"
            );
        }
    }
}

/// Same as 1, with the WireGuard endpoints (the outer addresses) on IPv6.
#[test]
fn ipv6_outer_endpoints() {
    let Some(kind) = gateway_under_test("ipv6_outer_endpoints") else {
        return;
    };
    let users = vec![
        UserSpec {
            outer_v6: true,
            ..wg_go()
        },
        UserSpec {
            outer_v6: true,
            ..boringtun()
        },
    ];
    let mut t = build(kind, users);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    inner_traffic_both_ways(&t);
    assert_gateway_sees_users(&mut t);
}

/// Check 2: An iperf3 TCP run through each client completes, and a 2 MB random file crosses the
/// tunnel (both directions) with its SHA-256 unchanged.
#[test]
fn iperf3_and_file_checksum() {
    let Some(kind) = gateway_under_test("iperf3_and_file_checksum") else {
        return;
    };
    let mut t = build(kind, vec![wg_go(), boringtun()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    let server = Iperf3Server::start(&t.sink_ns, 5201, &t.dir).or_fail("iperf3 server");
    for u in &t.users {
        let r = iperf3_client(
            &u.ns,
            IpAddr::V4(SINK_V4),
            server.port(),
            &IperfOpts::tcp(2),
        )
        .unwrap_or_else(|e| {
            panic!(
                "iperf3 from {}: {e}\nserver: {}",
                u.label(),
                server.log_tail(10)
            )
        });
        assert!(r.bytes > 0, "{}: iperf3 moved no bytes: {r:?}", u.label());
    }
    let src = t.dir.join("random.bin");
    write_random_file(&src, 2 * 1024 * 1024).unwrap();
    for u in &t.users {
        let k = u.index as u16;
        let dst = t.dir.join(&format!("to-sink-{k}.bin"));
        let x = tcp_send_file(
            &u.ns,
            &t.sink_ns,
            v4(SINK_V4, 8000 + k),
            &src,
            &dst,
            None,
            None,
        )
        .or_fail(&format!("file {} -> sink", u.label()));
        assert_eq!(x.bytes, 2 * 1024 * 1024, "{}", u.label());
        assert_eq!(x.sent_sha256, x.received_sha256, "{} -> sink", u.label());
        let dst = t.dir.join(&format!("from-sink-{k}.bin"));
        let x = tcp_send_file(
            &t.sink_ns,
            &u.ns,
            v6(u.tunnel_v6, 8100 + k),
            &src,
            &dst,
            None,
            None,
        )
        .or_fail(&format!("file sink -> {} over IPv6", u.label()));
        assert_eq!(x.sent_sha256, x.received_sha256, "sink -> {}", u.label());
    }
}

/// Check 3: The gateway starts the handshake: its config has the clients' endpoints, the clients
/// have none for the gateway, so only the gateway can begin. Traffic from the sink arrives.
#[test]
fn gateway_initiates_to_configured_endpoint() {
    let Some(kind) = gateway_under_test("gateway_initiates_to_configured_endpoint") else {
        return;
    };
    let passive = |c: WgImpl| UserSpec {
        client_endpoint: false,
        gateway_endpoint: true,
        persistent_keepalive: None,
        ..UserSpec::new(c)
    };
    let mut t = build(
        kind,
        vec![passive(WgImpl::WireguardGo), passive(WgImpl::Boringtun)],
    );
    let gw_pub = t.gateway_key.public.clone();
    for u in &t.users {
        let p = u.wg.peer(&gw_pub).unwrap();
        assert_eq!(
            p.endpoint,
            None,
            "{}: client must not know the gateway",
            u.label()
        );
        assert_eq!(
            p.handshake_age,
            None,
            "{}: handshake before any traffic",
            u.label()
        );
    }
    for u in &t.users {
        let k = u.index as u16;
        udp_round_trip(
            &t.sink_ns,
            IpAddr::V4(SINK_V4),
            &u.ns,
            v4(u.tunnel_v4, 7100 + k),
            TRAFFIC_TIMEOUT,
        )
        .or_fail(&format!(
            "sink -> {} with the gateway initiating",
            u.label()
        ));
    }
    for u in &mut t.users {
        let label = u.label();
        u.wg.wait_handshake(&gw_pub, HANDSHAKE_TIMEOUT)
            .or_fail(&format!("{label}: handshake in `wg show`"));
        // The client learnt the gateway's endpoint from the gateway's initiation.
        let p = u.wg.peer(&gw_pub).unwrap();
        assert_eq!(
            p.endpoint,
            Some(u.gateway_endpoint().to_string()),
            "{label}"
        );
    }
    assert_gateway_sees_users(&mut t);
}

/// Check 4: Roaming: the client's outer address changes in the middle of a TCP transfer; the
/// transfer completes intact with no new configuration, and the gateway reports the new endpoint
/// and sends to it.
#[test]
fn roaming_mid_transfer() {
    let Some(kind) = gateway_under_test("roaming_mid_transfer") else {
        return;
    };
    let mut t = build(kind, vec![wg_go()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    let u = t.user(1);
    let old = u.endpoint();
    let src = t.dir.join("roam.bin");
    write_random_file(&src, 4 * 1024 * 1024).unwrap();
    let dst = t.dir.join("roam-received.bin");
    let moved = std::sync::Mutex::new(None);
    let x = tcp_send_file(
        &u.ns,
        &t.sink_ns,
        v4(SINK_V4, 8001),
        &src,
        &dst,
        // 64 chunks of 64 KiB, 20 ms apart: the move happens mid-stream.
        Some(Duration::from_millis(20)),
        Some(Box::new(|| {
            std::thread::sleep(Duration::from_millis(300));
            *moved.lock().unwrap() = Some(t.roam(1)?);
            Ok(())
        })),
    )
    .or_fail("transfer while roaming");
    let new = moved.lock().unwrap().expect("roamed");
    assert_ne!(old, new);
    assert_eq!(
        x.sent_sha256, x.received_sha256,
        "file changed while roaming"
    );
    let public = u.key.public.clone();
    let new_s = new.to_string();
    t.gateway
        .wait_status(
            &format!("the gateway to show endpoint {new_s}"),
            TRAFFIC_TIMEOUT,
            |s| s.peer(&public).and_then(|p| p.endpoint.as_deref()) == Some(new_s.as_str()),
        )
        .or_fail("new endpoint in gateway status");
    // The old address goes; the gateway now sends to the new one.
    t.retire_old_links(1).or_fail("removing the old address");
    let u = t.user(1);
    udp_round_trip(
        &t.sink_ns,
        IpAddr::V4(SINK_V4),
        &u.ns,
        v4(u.tunnel_v4, 7101),
        TRAFFIC_TIMEOUT,
    )
    .or_fail("sink -> roamed user");
    udp_round_trip(
        &u.ns,
        IpAddr::V6(u.tunnel_v6),
        &t.sink_ns,
        v6(SINK_V6, 7001),
        TRAFFIC_TIMEOUT,
    )
    .or_fail("roamed user -> sink, IPv6 inner");
}

/// Check 5a: A client whose key the gateway doesn't know never gets a handshake or through; the
/// known client next to it works.
#[test]
fn unknown_key_gets_no_answer() {
    let Some(kind) = gateway_under_test("unknown_key_gets_no_answer") else {
        return;
    };
    let stranger = UserSpec {
        known: false,
        persistent_keepalive: Some(1),
        ..wg_go()
    };
    let mut t = build(kind, vec![boringtun(), stranger]);
    t.wait_handshakes_of(&[1], HANDSHAKE_TIMEOUT)
        .or_fail("handshake of the known client");
    let gw_pub = t.gateway_key.public.clone();
    let s = t.user(2);
    assert!(
        !udp_arrives(
            &s.ns,
            IpAddr::V4(s.tunnel_v4),
            &t.sink_ns,
            v4(SINK_V4, 7002),
            3,
            Duration::from_secs(1)
        )
        .unwrap(),
        "traffic from an unknown key reached the sink"
    );
    if kind.is_sluice() {
        t.gateway
            .wait_status(
                "sluice to count the unknown key's initiations",
                TRAFFIC_TIMEOUT,
                |st| st.drops_of("unknown_peer") + st.drops_of("handshake_failed") > 0,
            )
            .or_fail("drop counters");
    }
    let s = t.user(2);
    let p = s.wg.peer(&gw_pub).unwrap();
    assert_eq!(
        p.handshake_age, None,
        "the unknown client got a handshake: {p:?}"
    );
    let st = t.gateway.status().unwrap();
    assert!(
        st.peer(&s.key.public).is_none(),
        "unknown key appeared in status"
    );
    // The known client is unaffected.
    let u = t.user(1);
    udp_round_trip(
        &u.ns,
        IpAddr::V4(u.tunnel_v4),
        &t.sink_ns,
        v4(SINK_V4, 7001),
        TRAFFIC_TIMEOUT,
    )
    .or_fail("known client after the stranger");
}

/// Check 5b: A captured WireGuard data packet sent again is dropped (and counted as replayed).
#[test]
fn replayed_packet_is_dropped() {
    let Some(kind) = gateway_under_test("replayed_packet_is_dropped") else {
        return;
    };
    let mut t = build(kind, vec![wg_go()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    // Sniff the outer traffic where the users' links end (the gateway namespace, or the
    // router in front of it in the xdp layout, since XDP redirects bypass the gateway's
    // kernel stack), then make some traffic.
    let raw = t.edge_ns().packet_ipv4_socket().or_fail("packet socket");
    let u = t.user(1);
    let sink_addr = v4(SINK_V4, 7001);
    udp_round_trip(
        &u.ns,
        IpAddr::V4(u.tunnel_v4),
        &t.sink_ns,
        sink_addr,
        TRAFFIC_TIMEOUT,
    )
    .or_fail("traffic to capture");
    let captured = capture_udp4(&raw, LISTEN_PORT, Duration::from_secs(5), is_wg_data)
        .or_fail("capturing a data packet");
    assert_eq!(captured.src.ip(), IpAddr::V4(u.outer_v4()));
    let before = t.gateway.status().unwrap().drops_of("replayed");
    // The datagram it carried must not arrive again.
    let sink = t.sink_ns.udp_bind(sink_addr).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let attacker = t.user(1).ns.udp_bind(v4(u.outer_v4(), 0)).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        attacker
            .send_to(&captured.payload, captured.dst)
            .or_fail("replaying");
        if let Ok((n, src)) = sink.recv_from(&mut buf) {
            panic!("the replayed packet got through: {n} bytes from {src}");
        }
    }
    for _ in 0..5 {
        if let Ok((n, src)) = sink.recv_from(&mut buf) {
            panic!("the replayed packet got through: {n} bytes from {src}");
        }
    }
    if kind.is_sluice() {
        t.gateway
            .wait_status("sluice to count the replays", TRAFFIC_TIMEOUT, |s| {
                s.drops_of("replayed") >= before + 3
            })
            .or_fail("replayed counter");
    }
}

/// Check 5c: A client sending from an inner source outside its AllowedIPs is dropped (and counted
/// as source_not_allowed), IPv4 and IPv6, while its legitimate address works.
#[test]
fn spoofed_inner_source_is_dropped() {
    let Some(kind) = gateway_under_test("spoofed_inner_source_is_dropped") else {
        return;
    };
    let mut t = build(kind, vec![wg_go(), boringtun()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    for u in &t.users {
        let k = u.index as u16;
        let (bad4, bad6) = (format!("10.99.0.{k}"), format!("fd99::{k}"));
        u.ns.add_addr(u.wg.ifname(), &format!("{bad4}/32")).unwrap();
        u.ns.add_addr(u.wg.ifname(), &format!("{bad6}/128"))
            .unwrap();
        // Control: the real address gets through.
        udp_round_trip(
            &u.ns,
            IpAddr::V4(u.tunnel_v4),
            &t.sink_ns,
            v4(SINK_V4, 7000 + k),
            TRAFFIC_TIMEOUT,
        )
        .or_fail(&format!("{} legitimate source", u.label()));
        for (src, dst) in [
            (bad4.parse().unwrap(), v4(SINK_V4, 7200 + k)),
            (bad6.parse().unwrap(), v6(SINK_V6, 7200 + k)),
        ] {
            let arrived =
                udp_arrives(&u.ns, src, &t.sink_ns, dst, 3, Duration::from_secs(1)).unwrap();
            assert!(
                !arrived,
                "{}: spoofed source {src} reached the sink",
                u.label()
            );
        }
    }
    if kind.is_sluice() {
        t.gateway
            .wait_status(
                "sluice to count the spoofed sources",
                TRAFFIC_TIMEOUT,
                |s| s.drops_of("source_not_allowed") >= 4,
            )
            .or_fail("source_not_allowed counter");
    }
}

/// Check 6a: SIGTERM stops the gateway cleanly: no TUN, no socket on the listen port, no process.
#[test]
fn sigterm_leaves_nothing_behind() {
    let Some(kind) = gateway_under_test("sigterm_leaves_nothing_behind") else {
        return;
    };
    stops_cleanly(kind, libc::SIGTERM, "SIGTERM");
}

/// Check 6a, with SIGINT (Ctrl-C) instead.
#[test]
fn sigint_leaves_nothing_behind() {
    let Some(kind) = gateway_under_test("sigint_leaves_nothing_behind") else {
        return;
    };
    stops_cleanly(kind, libc::SIGINT, "SIGINT");
}

fn stops_cleanly(kind: GatewayKind, sig: libc::c_int, name: &str) {
    let mut t = build(kind, vec![wg_go()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    let ifname = t.gateway.ifname().to_string();
    let pid = t.gateway.pid().expect("gateway pid");
    assert!(
        t.gw_ns.link_exists(&ifname),
        "TUN {ifname} missing while running"
    );
    assert!(
        !t.gateway.sockets_on_listen_port().unwrap().is_empty(),
        "nothing listens on {LISTEN_PORT} while running"
    );
    let (status, killed) = t.gateway.stop_with(sig, Duration::from_secs(10));
    assert!(
        !killed,
        "the gateway ignored {name} for 10 s and was killed"
    );
    if kind.is_sluice() {
        let status = status.expect("exit status");
        assert!(status.success(), "sluice exited with {status} after {name}");
    }
    assert!(
        !t.gw_ns.links().unwrap().contains(&ifname),
        "TUN {ifname} still exists after {name}"
    );
    let sockets = t.gateway.sockets_on_listen_port().unwrap();
    assert!(
        sockets.is_empty(),
        "sockets left on {LISTEN_PORT} after {name}: {sockets:?}"
    );
    assert!(
        !registry::alive(pid),
        "process {pid} still running after {name}"
    );
}

/// Check 6b: A bad config makes `sluice up` exit non-zero naming `file:line:`, and starts nothing.
#[test]
fn bad_config_names_file_and_line_and_starts_nothing() {
    let Some(kind) = gateway_under_test("bad_config_names_file_and_line_and_starts_nothing") else {
        return;
    };
    if !kind.is_sluice() {
        eprintln!("bad_config: only meaningful for sluice (gateway is {kind}); not run");
        return;
    }
    let id = unique_id();
    let dir = RunDir::new(&id).unwrap();
    let ns = Netns::new(&format!("sl-{id}-gw")).unwrap();
    let spec = GatewaySpec {
        kind,
        ifname: format!("sl{id}"),
        key: KeyPair::generate(),
        listen_port: LISTEN_PORT,
        addresses: vec!["10.77.0.1/16".into()],
        mtu: 1420,
        peers: vec![sluice::testbed::gateway::GatewayPeer {
            public_key: KeyPair::generate().public,
            allowed_ips: vec!["10.77.0.2/32".into()],
            endpoint: None,
            persistent_keepalive: None,
        }],
        sluice_bin: Some(PathBuf::from(SLUICE)),
        workers: 1,
        cores: vec![0],
        extra_toml: String::new(),
        env: Vec::new(),
        xdp_outer: None,
        status_file: true,
    };
    let toml = write_sluice_config(&spec, &dir).unwrap();
    let wg = dir.join(&format!("{}.conf", spec.ifname));
    let good_toml = std::fs::read_to_string(&toml).unwrap();
    let good_wg = std::fs::read_to_string(&wg).unwrap();
    // (file to break, line to break, replacement for that line)
    let line_of = |text: &str, prefix: &str| {
        text.lines()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{text}"))
    };
    let cases = [
        (&wg, &good_wg, "PrivateKey", "PrivatKey = AAAA".to_string()),
        (
            &wg,
            &good_wg,
            "PublicKey",
            "PublicKey = not-base64!".to_string(),
        ),
        (&toml, &good_toml, "workers", "wrkers = 1".to_string()),
    ];
    for (file, good, prefix, bad_line) in cases {
        std::fs::write(&toml, &good_toml).unwrap();
        std::fs::write(&wg, &good_wg).unwrap();
        let idx = line_of(good, prefix);
        let broken: Vec<String> = good
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == idx {
                    bad_line.clone()
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(file, broken.join("\n") + "\n").unwrap();
        let status_file = dir.join("status.json");
        let mut c = ns.command(SLUICE);
        c.arg("up")
            .arg("--config")
            .arg(&toml)
            .arg("--status-file")
            .arg(&status_file);
        let o = cmd::output(c, Duration::from_secs(20)).or_fail("running sluice up");
        let stderr = String::from_utf8_lossy(&o.stderr);
        let want = format!("{}:{}:", file.display(), idx + 1);
        assert!(
            !o.status.success(),
            "sluice up accepted `{bad_line}` in {}",
            file.display()
        );
        assert!(
            stderr.contains(&want),
            "sluice up's error for `{bad_line}` does not name {want}: {stderr}"
        );
        assert!(
            !ns.links().unwrap().contains(&spec.ifname),
            "a TUN was created despite the bad config"
        );
        assert!(
            !status_file.exists(),
            "a status file was written despite the bad config"
        );
    }
}

/// The helpers clean up after a failure too: a topology dropped mid-test leaves no namespace.
#[test]
fn topology_is_removed_on_drop_and_panic() {
    let Some(kind) = gateway_under_test("topology_is_removed_on_drop_and_panic") else {
        return;
    };
    // A stand-in gateway is enough here: this is about the test bed itself.
    let kind = if kind.is_sluice() {
        GatewayKind::WireguardGo
    } else {
        kind
    };
    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let t = build(kind, vec![boringtun()]);
        let mut n: Vec<String> = t.users.iter().map(|u| u.ns.name().to_string()).collect();
        n.push(t.gw_ns.name().to_string());
        n.push(t.sink_ns.name().to_string());
        if let Some(w) = &t.wan_ns {
            n.push(w.name().to_string());
        }
        n.push(format!("/var/run/wireguard/{}.sock", t.user(1).wg.ifname()));
        *names.lock().unwrap() = n;
        panic!("deliberate");
    });
    assert!(r.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), if xdp_from_env() { 5 } else { 4 });
    for n in &names {
        let path = if n.starts_with('/') {
            PathBuf::from(n)
        } else {
            PathBuf::from("/var/run/netns").join(n)
        };
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
