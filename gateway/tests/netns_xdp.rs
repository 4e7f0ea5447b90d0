//! The XDP fast path in network namespaces: sluice in `mode = "xdp"` on a two-queue veth
//! (`outer`) behind a router namespace, with real WireGuard clients (see the xdp layout in
//! `sluice::testbed::topology`). The rest of the namespace suite (netns_interop) also runs in
//! this layout by default; these tests prove what is particular to XDP:
//!
//! - WireGuard for the gateway is redirected to the AF_XDP sockets (the program's counters
//!   say so), while a UDP echo service and a TCP service on the gateway's own outer address
//!   keep answering through the kernel;
//! - malformed WireGuard messages are dropped in XDP, each counted under its reason, and none
//!   reaches userspace;
//! - no XDP program stays attached after SIGTERM, nor after SIGKILL;
//! - after more than a million frames through the rings, every UMEM frame is accounted for;
//! - appliance mode: the sink veth is sluice's inner NIC, also run by XDP and AF_XDP, and
//!   UDP (IPv4 and IPv6 inner) and TCP both ways between the users and the sink go through
//!   the inner program's redirect and the inner sockets' rx and tx rings, not the TUN.
//!
//! Root only; under `CI=true` a missing prerequisite fails loudly. These tests are about
//! sluice: with a stand-in gateway (`SLUICE_TEST_GATEWAY`) they return at once, saying so.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod netns_common;
mod prom_text;

use netns_common::*;
use sluice::testbed::gateway::GatewayStatus;
use sluice::testbed::gateway::{write_sluice_config, GatewaySpec};
use sluice::testbed::netns::Netns;
use sluice::testbed::topology::{
    Topology, TopologySpec, UserSpec, GW_INNER_V4, LISTEN_PORT, SINK_V4, SINK_V6, SINK_VETH_GW,
    XDP_GW_OUTER_V4, XDP_OUTER_DEV,
};
use sluice::testbed::traffic::{iperf3_client, udp_round_trip, Iperf3Server, IperfOpts};
use sluice::testbed::{cmd, unique_id, GatewayKind, KeyPair, RunDir};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The sluice gateway for an XDP test, or `None` when the test can't or needn't run here.
fn sluice_under_test(test: &str) -> Option<GatewayKind> {
    let kind = gateway_under_test(test)?;
    if !kind.is_sluice() {
        eprintln!("{test}: about sluice's XDP fast path; nothing to do for a stand-in gateway");
        return None;
    }
    Some(kind)
}

/// Where sluice serves `/metrics` inside the gateway namespace.
const METRICS_ADDR: &str = "127.0.0.1:9586";

fn build_xdp(kind: GatewayKind, users: Vec<UserSpec>) -> Topology {
    let mut spec = TopologySpec::new(kind, Some(PathBuf::from(SLUICE)), users);
    spec.xdp = true;
    spec.sluice_toml_extra = format!("\n[metrics]\nlisten = \"{METRICS_ADDR}\"\n");
    spec.workers = 2;
    spec.cores = vec![0, 1];
    Topology::build(&spec).or_fail("building the xdp topology")
}

fn xdp_of(s: &GatewayStatus) -> &sluice::testbed::gateway::XdpStatus {
    s.xdp
        .as_ref()
        .unwrap_or_else(|| panic!("sluice is not in xdp mode: {s:?}"))
}

/// One scrape of `/metrics` from inside the gateway namespace, parsed strictly.
fn scrape(t: &Topology) -> prom_text::Exposition {
    let mut s = t
        .gw_ns
        .tcp_connect(METRICS_ADDR.parse().unwrap(), TRAFFIC_TIMEOUT)
        .or_fail("connecting to /metrics");
    s.set_read_timeout(Some(TRAFFIC_TIMEOUT)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).or_fail("reading /metrics");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    prom_text::parse(body)
}

fn gw_endpoint() -> SocketAddr {
    v4(XDP_GW_OUTER_V4, LISTEN_PORT)
}

/// Is an XDP program attached to the outer interface? (`ip -d link` shows `prog/xdp`.)
fn xdp_attached(t: &Topology) -> bool {
    let out = t
        .gw_ns
        .ip(&["-d", "link", "show", "dev", XDP_OUTER_DEV])
        .or_fail("ip -d link show");
    out.contains("prog/xdp")
}

#[test]
fn steers_wireguard_and_passes_everything_else() {
    let Some(kind) = sluice_under_test("steers_wireguard_and_passes_everything_else") else {
        return;
    };
    let mut t = build_xdp(kind, vec![wg_go(), boringtun()]);
    let s = t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    let x = xdp_of(&s);
    assert_eq!(x.interface, XDP_OUTER_DEV);
    assert_eq!(x.attach, "driver", "veth takes native XDP");
    assert_eq!(x.sockets.len(), 2, "one AF_XDP socket per queue and worker");
    assert!(xdp_attached(&t));
    for u in &t.users {
        udp_round_trip(
            &u.ns,
            IpAddr::V4(u.tunnel_v4),
            &t.sink_ns,
            v4(SINK_V4, 7100 + u.index as u16),
            TRAFFIC_TIMEOUT,
        )
        .or_fail(&format!("tunnel traffic of {}", u.label()));
    }
    let s = t
        .gateway
        .wait_status("WireGuard redirected to AF_XDP", TRAFFIC_TIMEOUT, |s| {
            s.xdp.as_ref().is_some_and(|x| {
                x.counter("redirect") > 0 && x.sockets.iter().map(|k| k.rx_frames).sum::<u64>() > 0
            })
        })
        .or_fail("redirect counters");
    let before = xdp_of(&s).clone();

    // Services on the gateway's own outer address, answered by the kernel.
    let echo = t
        .gw_ns
        .udp_bind(v4(XDP_GW_OUTER_V4, 7007))
        .or_fail("echo socket");
    let listener = t
        .gw_ns
        .tcp_listen(v4(XDP_GW_OUTER_V4, 2222))
        .or_fail("tcp listener");
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        echo.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (n, from) = echo.recv_from(&mut buf).unwrap();
        echo.send_to(&buf[..n], from).unwrap();
        let (mut c, _) = listener.accept().unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).unwrap();
        c.write_all(&b).unwrap();
    });
    let u = t.user(1);
    let client = u.ns.udp_bind(v4(u.outer_v4(), 0)).or_fail("client socket");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .send_to(b"ping", v4(XDP_GW_OUTER_V4, 7007))
        .or_fail("send to echo");
    let mut buf = [0u8; 64];
    let (n, _) = client.recv_from(&mut buf).or_fail("UDP echo answer");
    assert_eq!(&buf[..n], b"ping");
    let mut c =
        u.ns.tcp_connect(v4(XDP_GW_OUTER_V4, 2222), TRAFFIC_TIMEOUT)
            .or_fail("TCP to the gateway's address");
    c.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).or_fail("TCP answer");
    assert_eq!(&b, b"hello");
    server.join().unwrap();

    let s = t
        .gateway
        .wait_status("pass counters", TRAFFIC_TIMEOUT, |s| {
            s.xdp.as_ref().is_some_and(|x| {
                x.counter("pass_other_port") > before.counter("pass_other_port")
                    && x.counter("pass_not_udp") > before.counter("pass_not_udp")
            })
        })
        .or_fail("the services' packets passed to the kernel, counted");
    let after = xdp_of(&s);
    for (name, n) in &after.counters {
        if name.starts_with("drop_") {
            assert_eq!(*n, 0, "{name}: real clients send nothing malformed");
        }
    }
    // The same counters in Prometheus.
    let m = scrape(&t);
    let redirected = m.value(
        "sluice_xdp_verdicts_total",
        &[("verdict", "redirect"), ("reason", "xsk")],
    );
    assert!(
        redirected >= after.counter("redirect") as f64,
        "{redirected}"
    );
    assert!(
        m.value(
            "sluice_xdp_verdicts_total",
            &[("verdict", "pass"), ("reason", "not_udp")]
        ) >= 1.0
    );
    for q in ["0", "1"] {
        assert_eq!(m.value("sluice_xsk_umem_frames_lost", &[("queue", q)]), 0.0);
        // The kernel's own AF_XDP drop counters are exported (whatever they say here).
        let full = m.value(
            "sluice_xsk_kernel_drops_total",
            &[("queue", q), ("reason", "rx_ring_full")],
        );
        assert!(full >= 0.0);
    }
    for k in &after.sockets {
        assert_eq!(k.kernel_drops.len(), 5, "{k:?}");
    }
    let rx: f64 = ["0", "1"]
        .iter()
        .map(|q| {
            m.value(
                "sluice_xsk_frames_total",
                &[("queue", q), ("direction", "rx")],
            )
        })
        .sum();
    assert!(rx > 0.0);
}

#[test]
fn malformed_wireguard_is_dropped_in_xdp_and_never_reaches_userspace() {
    let Some(kind) = sluice_under_test("malformed_wireguard_is_dropped_in_xdp") else {
        return;
    };
    let mut t = build_xdp(kind, vec![wg_go()]);
    let before = t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    let mut long_init = vec![1u8, 0, 0, 0];
    long_init.resize(149, 0);
    let mut reserved = vec![1u8, 1, 0, 0];
    reserved.resize(148, 0);
    let mut short_data = vec![4u8, 0, 0, 0];
    short_data.resize(31, 0);
    let mut short_response = vec![2u8, 0, 0, 0];
    short_response.resize(91, 0);
    let cases: [(&str, Vec<u8>, u64); 5] = [
        ("drop_wg_unknown_type", vec![9, 0, 0, 0, 1, 2, 3, 4], 5),
        ("drop_wg_reserved", reserved, 4),
        ("drop_wg_handshake_len", long_init, 3),
        ("drop_wg_data_short", short_data, 6),
        ("drop_wg_truncated", vec![1, 0], 2),
    ];
    let u = t.user(1);
    let attacker = u.ns.udp_bind(v4(u.outer_v4(), 0)).or_fail("socket");
    for (_, payload, n) in &cases {
        for _ in 0..*n {
            attacker.send_to(payload, gw_endpoint()).or_fail("send");
        }
    }
    for _ in 0..7 {
        attacker
            .send_to(&short_response, gw_endpoint())
            .or_fail("send");
    }
    let b = xdp_of(&before).clone();
    let s = t
        .gateway
        .wait_status("XDP drop counters", TRAFFIC_TIMEOUT, |s| {
            s.xdp.as_ref().is_some_and(|x| {
                cases
                    .iter()
                    .all(|(name, _, n)| x.counter(name) >= b.counter(name) + n)
            })
        })
        .or_fail("drops counted in XDP");
    let x = xdp_of(&s);
    for (name, _, n) in &cases {
        let moved = x.counter(name) - b.counter(name);
        let want = if *name == "drop_wg_handshake_len" {
            n + 7
        } else {
            *n
        };
        assert_eq!(moved, want, "{name}");
    }
    // Nothing of it reached the workers or the handshake threads.
    for label in [
        "unknown_type",
        "bad_length",
        "reserved_nonzero",
        "malformed_frame",
        "bad_mac1",
    ] {
        assert_eq!(
            s.drops_of(label),
            before.drops_of(label),
            "userspace saw {label}"
        );
    }
}

#[test]
fn no_program_stays_attached_after_sigterm_or_sigkill() {
    let Some(kind) = sluice_under_test("no_program_stays_attached_after_sigterm_or_sigkill") else {
        return;
    };
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        let mut t = build_xdp(kind, vec![wg_go()]);
        t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
        assert!(xdp_attached(&t), "attached while running");
        let (status, _) = t.gateway.stop_with(sig, Duration::from_secs(10));
        assert!(status.is_some(), "sluice did not exit on {name}");
        let mut attached = true;
        for _ in 0..50 {
            attached = xdp_attached(&t);
            if !attached {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!attached, "an XDP program is still attached after {name}");
    }
}

#[test]
fn every_umem_frame_is_accounted_for_after_a_million_packets() {
    let Some(kind) = sluice_under_test("every_umem_frame_is_accounted_for") else {
        return;
    };
    let mut t = build_xdp(kind, vec![wg_go()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    let server = Iperf3Server::start(&t.sink_ns, 5201, &t.dir).or_fail("iperf3 server");
    let rx_frames =
        |s: &GatewayStatus| -> u64 { xdp_of(s).sockets.iter().map(|k| k.rx_frames).sum() };
    let tx_frames =
        |s: &GatewayStatus| -> u64 { xdp_of(s).sockets.iter().map(|k| k.tx_frames).sum() };
    let start = t.gateway.status().or_fail("status");
    // Transport-data-shaped datagrams for an index nobody has: each one goes through the
    // rings (redirected, received, frame recycled) and is dropped as unknown_index. Sent in
    // rounds until the sockets have received a million frames.
    let u = t.user(1);
    let blaster = u.ns.udp_bind(v4(u.outer_v4(), 0)).or_fail("socket");
    let mut datagram = vec![4u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    datagram.resize(64, 0);
    let target = rx_frames(&start) + 1_000_000;
    let mut sent = 0u64;
    let mut last = start.clone();
    // Meanwhile, real traffic to the user exercises the transmit ring.
    let r = std::thread::scope(|scope| {
        let reverse = scope.spawn(|| {
            let mut o = IperfOpts::tcp(3);
            o.reverse = true;
            iperf3_client(&u.ns, IpAddr::V4(SINK_V4), server.port(), &o)
        });
        while rx_frames(&last) < target {
            assert!(
                sent < 4_000_000,
                "sent {sent} datagrams, but only {} frames reached the sockets",
                rx_frames(&last) - rx_frames(&start)
            );
            for _ in 0..200_000 {
                if blaster.send_to(&datagram, gw_endpoint()).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(1100));
            last = t.gateway.status().or_fail("status");
        }
        reverse.join().unwrap()
    });
    let r = r.or_fail("iperf3 to the user");
    assert!(r.bytes > 0);
    let end = t
        .gateway
        .wait_status("a fresh status", TRAFFIC_TIMEOUT, |s| {
            tx_frames(s) > tx_frames(&start)
        })
        .or_fail("transmit frames used");
    for k in &xdp_of(&end).sockets {
        let f = &k.frames;
        assert_eq!(f.lost, 0, "queue {}: {f:?}", k.queue);
        assert_eq!(f.violations, 0, "queue {}: {f:?}", k.queue);
        assert_eq!(f.free + f.in_fill + f.in_tx, f.total, "queue {}", k.queue);
    }
    assert!(end.drops_of("unknown_index") > 0);
    // At shutdown sluice reports every socket's frames; none may be lost.
    let (status, killed) = t.gateway.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()) && !killed, "{status:?}");
    let log = t.gateway.log_tail(40);
    let reports: Vec<&str> = log.lines().filter(|l| l.contains("xsk queue=")).collect();
    assert_eq!(reports.len(), 2, "a frame report per socket:\n{log}");
    for r in reports {
        assert!(r.contains(" lost=0 violations=0"), "{r}");
    }
}

#[test]
fn appliance_mode_forwards_through_af_xdp_on_both_nics() {
    let Some(kind) = sluice_under_test("appliance_mode_forwards_through_af_xdp_on_both_nics")
    else {
        return;
    };
    let mut spec = TopologySpec::new(
        kind,
        Some(PathBuf::from(SLUICE)),
        vec![wg_go(), boringtun()],
    );
    spec.xdp = true;
    spec.appliance = true;
    spec.sluice_toml_extra = format!("\n[metrics]\nlisten = \"{METRICS_ADDR}\"\n");
    spec.workers = 2;
    spec.cores = vec![0, 1];
    let mut t = Topology::build(&spec).or_fail("building the appliance topology");
    let s = t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    let inner = xdp_of(&s)
        .inner
        .clone()
        .unwrap_or_else(|| panic!("no inner side in appliance mode: {s:?}"));
    assert_eq!(inner.interface, SINK_VETH_GW);
    assert_eq!(inner.attach, "driver", "veth takes native XDP");
    assert_eq!(inner.sockets.len(), 2, "one inner AF_XDP socket per worker");
    let before = inner;

    // UDP both ways (the echo answers back), IPv4 and IPv6 inside the tunnel.
    for u in &t.users {
        let port = 7200 + u.index as u16;
        udp_round_trip(
            &u.ns,
            IpAddr::V4(u.tunnel_v4),
            &t.sink_ns,
            v4(SINK_V4, port),
            TRAFFIC_TIMEOUT,
        )
        .or_fail(&format!("IPv4 inner UDP of {}", u.label()));
        udp_round_trip(
            &u.ns,
            IpAddr::V6(u.tunnel_v6),
            &t.sink_ns,
            v6(SINK_V6, port),
            TRAFFIC_TIMEOUT,
        )
        .or_fail(&format!("IPv6 inner UDP of {}", u.label()));
    }
    // TCP both directions between each user and the sink.
    let server = Iperf3Server::start(&t.sink_ns, 5201, &t.dir).or_fail("iperf3 server");
    for u in &t.users {
        for reverse in [false, true] {
            let mut o = IperfOpts::tcp(2);
            o.reverse = reverse;
            let r = iperf3_client(&u.ns, IpAddr::V4(SINK_V4), server.port(), &o)
                .or_fail(&format!("iperf3 {} reverse={reverse}", u.label()));
            assert!(r.bytes > 0, "{} reverse={reverse}: {r:?}", u.label());
        }
    }

    // The inside traffic really went through XDP and AF_XDP on the inner NIC: redirected by
    // the inner program, received and transmitted through the inner sockets' rings.
    let s = t
        .gateway
        .wait_status("inner AF_XDP counters", TRAFFIC_TIMEOUT, |s| {
            s.xdp
                .as_ref()
                .and_then(|x| x.inner.as_ref())
                .is_some_and(|i| {
                    i.counter("redirect") > before.counter("redirect")
                        && i.sockets.iter().map(|k| k.rx_frames).sum::<u64>() > 0
                        && i.sockets.iter().map(|k| k.tx_frames).sum::<u64>() > 0
                })
        })
        .or_fail("inner redirect, rx and tx frames");
    let x = xdp_of(&s);
    let inner = x.inner.as_ref().unwrap();
    let rx: u64 = inner.sockets.iter().map(|k| k.rx_frames).sum();
    let tx: u64 = inner.sockets.iter().map(|k| k.tx_frames).sum();
    let tun_rx: u64 = inner.sockets.iter().map(|k| k.rx_fallback).sum();
    let tun_tx: u64 = inner.sockets.iter().map(|k| k.tx_fallback).sum();
    eprintln!(
        "inner: redirect={} rx_frames={rx} tx_frames={tx} rx_fallback={tun_rx} tx_fallback={tun_tx}",
        inner.counter("redirect")
    );
    // Most of the bulk traffic took the rings (the TUN only serves what the kernel routes
    // and packets sent before the neighbour was resolved).
    assert!(
        rx > tun_rx,
        "inner rx: {rx} through AF_XDP, {tun_rx} through the TUN"
    );
    assert!(
        tx > tun_tx,
        "inner tx: {tx} through AF_XDP, {tun_tx} through the TUN"
    );
    // And the decryption wrote those packets straight into the inner NIC's frames.
    let direct: u64 = inner.sockets.iter().map(|k| k.direct).sum();
    assert!(
        direct > tx / 2,
        "{direct} of {tx} inner frames decrypted in place of a copy"
    );
    assert!(x.counter("redirect") > 0, "outer redirect");
    for k in x.sockets.iter().chain(&inner.sockets) {
        let f = &k.frames;
        assert_eq!(f.lost, 0, "queue {}: {f:?}", k.queue);
        assert_eq!(f.violations, 0, "queue {}: {f:?}", k.queue);
    }
    drop(server);

    // The steered prefixes follow the peer table: 10.99.0.0/24 passes to the kernel until a
    // peer with it is added with `wg set`, then the inner program steers it to the sockets.
    t.sink_ns
        .add_route("10.99.0.0/24", Some(IpAddr::V4(GW_INNER_V4)), None)
        .or_fail("sink route");
    let probe = t.sink_ns.udp_bind(v4(SINK_V4, 0)).or_fail("probe socket");
    let send = || {
        for _ in 0..5 {
            probe
                .send_to(b"probe", v4(Ipv4Addr::new(10, 99, 0, 5), 9))
                .unwrap();
        }
    };
    let inner_of = |s: &GatewayStatus| xdp_of(s).inner.clone().unwrap();
    let b = inner_of(&t.gateway.status().or_fail("status"));
    send();
    let s = t
        .gateway
        .wait_status("not steered before wg set", TRAFFIC_TIMEOUT, |s| {
            inner_of(s).counter("pass_not_tunnel") >= b.counter("pass_not_tunnel") + 5
        })
        .or_fail("probes passed as not_tunnel");
    let b = inner_of(&s);
    let key = sluice::testbed::KeyPair::generate();
    let ifname = t.gateway.ifname().to_string();
    t.gw_ns
        .run(&[
            "wg",
            "set",
            &ifname,
            "peer",
            &key.public,
            "allowed-ips",
            "10.99.0.0/24",
        ])
        .or_fail("wg set");
    t.gateway
        .wait_status("steered after wg set", TRAFFIC_TIMEOUT, |s| {
            send();
            inner_of(s).counter("redirect") >= b.counter("redirect") + 5
        })
        .or_fail("probes to the new peer's prefix redirected");

    // The same counters in Prometheus.
    let s = t.gateway.status().or_fail("status");
    let now = inner_of(&s);
    let m = scrape(&t);
    let redirected = m.value(
        "sluice_xdp_inner_verdicts_total",
        &[("verdict", "redirect"), ("reason", "xsk")],
    );
    assert!(redirected >= now.counter("redirect") as f64, "{redirected}");
    let frames = |d: &str| -> f64 {
        ["0", "1"]
            .iter()
            .map(|q| {
                m.value(
                    "sluice_xsk_inner_frames_total",
                    &[("queue", q), ("direction", d)],
                )
            })
            .sum()
    };
    assert!(frames("rx") >= rx as f64, "{} < {rx}", frames("rx"));
    assert!(frames("tx") >= tx as f64, "{} < {tx}", frames("tx"));
    for q in ["0", "1"] {
        assert_eq!(
            m.value("sluice_xsk_inner_umem_frames_lost", &[("queue", q)]),
            0.0
        );
    }

    // At shutdown every socket, outer and inner, reports its frames: none lost.
    let (status, killed) = t.gateway.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()) && !killed, "{status:?}");
    let log = t.gateway.log_tail(60);
    let outer: Vec<&str> = log.lines().filter(|l| l.contains("xsk queue=")).collect();
    let inner: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("xsk inner queue="))
        .collect();
    assert_eq!(outer.len(), 2, "a frame report per outer socket:\n{log}");
    assert_eq!(inner.len(), 2, "a frame report per inner socket:\n{log}");
    for r in outer.iter().chain(&inner) {
        assert!(r.contains(" lost=0 violations=0"), "{r}");
    }
}

/// `mode = "auto"` falls back to the socket data path when the outer interface can't take the
/// program, and says why; `mode = "xdp"` refuses to start instead, naming the interface, and
/// leaves nothing behind.
#[test]
fn auto_falls_back_to_socket_and_xdp_fails_loudly() {
    let Some(kind) = sluice_under_test("auto_falls_back_to_socket_and_xdp_fails_loudly") else {
        return;
    };
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
        peers: Vec::new(),
        sluice_bin: Some(PathBuf::from(SLUICE)),
        workers: 1,
        cores: vec![0],
        extra_toml: String::new(),
        env: Vec::new(),
        xdp_outer: Some("nosuchnic0".into()),
        status_file: true,
    };
    let toml = write_sluice_config(&spec, &dir).unwrap();
    let xdp_toml = std::fs::read_to_string(&toml).unwrap();
    assert!(xdp_toml.contains("mode = \"xdp\""), "{xdp_toml}");

    // xdp: exits non-zero, names the interface, creates nothing.
    let mut c = ns.command(SLUICE);
    c.arg("up").arg("--config").arg(&toml);
    let o = cmd::output(c, Duration::from_secs(20)).or_fail("running sluice up");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "mode = xdp started without its NIC");
    assert!(stderr.contains("nosuchnic0"), "{stderr}");
    assert!(
        !ns.links().unwrap().contains(&spec.ifname),
        "a TUN was left"
    );

    // auto: runs on the socket path and says why.
    std::fs::write(&toml, xdp_toml.replace("mode = \"xdp\"", "mode = \"auto\"")).unwrap();
    let log = dir.join("auto.log");
    let toml_s = toml.to_string_lossy().to_string();
    let mut d = ns
        .spawn("sluice-auto", &[SLUICE, "up", "--config", &toml_s], &log)
        .or_fail("starting sluice");
    let mut said = String::new();
    for _ in 0..100 {
        said = std::fs::read_to_string(&log).unwrap_or_default();
        if said.contains("mode=socket because auto: XDP on nosuchnic0 is not available") {
            break;
        }
        assert!(d.is_running(), "sluice exited:\n{said}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        said.contains("mode=socket because auto: XDP on nosuchnic0 is not available"),
        "{said}"
    );
    assert!(d.is_running(), "{said}");
    let (status, killed) = d.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()) && !killed, "{status:?}");
}
