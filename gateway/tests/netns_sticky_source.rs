//! The sticky source address, in network namespaces: sluice answers a client from the address
//! the client sent to, not from the one the kernel would pick.
//!
//! The gateway gets a second address (a "VIP") next to its own on the interface the client
//! reaches it through: a secondary address of the same subnet, so the kernel's route lookup
//! for a reply would pick the primary one. The client (real wireguard-go, configured with
//! `wg`) uses the VIP as its Endpoint. A packet socket in the client's namespace sees every
//! datagram the gateway sends it: the handshake response and the transport data must all come
//! from the VIP, and `wg show` in the client must still name the VIP as the endpoint after
//! traffic both ways (wireguard-go roams its endpoint to wherever authenticated packets come
//! from, so one reply from the other address would move it).
//!
//! Both data paths (`SLUICE_TEST_DATAPLANE=socket|xdp`): in the socket layout the client is on
//! the gateway's own subnet (198.18.1.1/25, VIP 198.18.1.3); in the xdp layout behind a router
//! (198.51.100.1/24, VIP 198.51.100.10), where the handshake response goes through the kernel
//! socket behind XDP and the data through AF_XDP frames.
//!
//! Root only, with `wireguard-go` and `wg`; under `CI=true` a missing prerequisite fails the
//! test, elsewhere it is skipped with a message. Everything is removed at the end.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod netns_common;

use netns_common::*;

use sluice::proto::messages::{response, TYPE_RESPONSE};
use sluice::testbed::topology::{
    outer_addrs, Topology, LISTEN_PORT, SINK_V4, SINK_V6, XDP_GW_OUTER_V4, XDP_OUTER_DEV,
};
use sluice::testbed::traffic::{is_wg_data, parse_ipv4_udp, udp_round_trip, Captured};
use sluice::testbed::wait_for;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every IPv4 UDP datagram a packet socket sees from `from_port` to `to_port`, until `stop`.
fn capture(
    raw: std::net::UdpSocket,
    from_port: u16,
    to_port: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Captured>> {
    std::thread::spawn(move || {
        raw.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = raw.recv(&mut buf) {
                if let Some(c) = parse_ipv4_udp(&buf[..n]) {
                    if c.src.port() == from_port && c.dst.port() == to_port {
                        seen.push(c);
                    }
                }
            }
        }
        seen
    })
}

/// The VIP and the device it goes on, for the layout in use.
fn vip_of(t: &Topology) -> (Ipv4Addr, &'static str, String) {
    if t.wan_ns.is_some() {
        let o = XDP_GW_OUTER_V4.octets();
        (
            Ipv4Addr::new(o[0], o[1], o[2], 10),
            XDP_OUTER_DEV,
            "24".into(),
        )
    } else {
        let (own, len, ..) = outer_addrs(1, 0, true);
        let o = own.octets();
        (Ipv4Addr::new(o[0], o[1], o[2], 3), "to-u1", len.to_string())
    }
}

#[test]
fn replies_leave_from_the_address_the_client_sent_to() {
    let test = "replies_leave_from_the_address_the_client_sent_to";
    let Some(kind) = gateway_under_test(test) else {
        return;
    };
    if !kind.is_sluice() {
        eprintln!("{test}: SKIPPED for {kind:?}: this test is about sluice's own sockets");
        return;
    }
    // The client has no endpoint at first: the VIP is set up before anything is sent.
    let mut user = wg_go();
    user.client_endpoint = false;
    let mut t = build(kind, vec![user]);
    let (vip, dev, len) = vip_of(&t);
    t.gw_ns
        .add_addr(dev, &format!("{vip}/{len}"))
        .or_fail("adding the VIP");
    if t.wan_ns.is_some() {
        // The XDP program steers datagrams to addresses in its map, which follows the
        // interface's addresses about once a second.
        let needle = vip.to_string();
        let gw = &mut t.gateway;
        wait_for(
            "sluice to put the VIP in the XDP address map",
            TRAFFIC_TIMEOUT,
            Duration::from_millis(100),
            || Ok(gw.log_tail(50).contains(&needle).then_some(())),
        )
        .or_fail("xdp local addresses");
    }
    let vip_endpoint = SocketAddr::new(IpAddr::V4(vip), LISTEN_PORT);
    let u = t.user(1);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = capture(
        u.ns.packet_ipv4_socket().or_fail("packet socket"),
        LISTEN_PORT,
        u.listen_port,
        stop.clone(),
    );
    let gw_key = t.gateway_key.public.clone();
    let endpoint = vip_endpoint.to_string();
    u.wg.wg_set(&[
        "peer",
        &gw_key,
        "endpoint",
        &endpoint,
        "persistent-keepalive",
        "25",
    ])
    .or_fail("pointing the client at the VIP");

    // A handshake (the client's first packet starts it), then data both ways, both inner
    // families.
    let k = u.index as u16;
    for (from_user, family_v4) in [(true, true), (true, false), (false, true), (false, false)] {
        let (src_ns, src, dst_ns, dst) = match (from_user, family_v4) {
            (true, true) => (
                &u.ns,
                IpAddr::V4(u.tunnel_v4),
                &t.sink_ns,
                v4(SINK_V4, 7000 + k),
            ),
            (true, false) => (
                &u.ns,
                IpAddr::V6(u.tunnel_v6),
                &t.sink_ns,
                v6(SINK_V6, 7000 + k),
            ),
            (false, true) => (
                &t.sink_ns,
                IpAddr::V4(SINK_V4),
                &u.ns,
                v4(u.tunnel_v4, 7100 + k),
            ),
            (false, false) => (
                &t.sink_ns,
                IpAddr::V6(SINK_V6),
                &u.ns,
                v6(u.tunnel_v6, 7100 + k),
            ),
        };
        udp_round_trip(src_ns, src, dst_ns, dst, HANDSHAKE_TIMEOUT)
            .or_fail(&format!("traffic from_user={from_user} v4={family_v4}"));
    }
    // The client keeps the VIP as the gateway's endpoint (it roams to wherever authenticated
    // packets come from).
    let show =
        u.ns.run(&["wg", "show", u.wg.ifname(), "endpoints"])
            .or_fail("wg show");
    stop.store(true, Ordering::Relaxed);
    let seen = seen.join().unwrap();

    let responses: Vec<&Captured> = seen
        .iter()
        .filter(|c| c.payload.len() == response::LEN && c.payload[0] == TYPE_RESPONSE)
        .collect();
    let data: Vec<&Captured> = seen.iter().filter(|c| is_wg_data(&c.payload)).collect();
    assert!(
        !responses.is_empty(),
        "no handshake response captured among {} datagrams from the gateway",
        seen.len()
    );
    assert!(
        !data.is_empty(),
        "no transport data captured among {} datagrams from the gateway",
        seen.len()
    );
    let wrong: Vec<String> = seen
        .iter()
        .filter(|c| c.src.ip() != IpAddr::V4(vip))
        .map(|c| {
            format!(
                "type {} ({} bytes) from {}",
                c.payload[0],
                c.payload.len(),
                c.src
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} datagrams from the gateway did not come from the VIP {vip}: {wrong:?}",
        wrong.len(),
        seen.len()
    );
    let shown: Vec<&str> = show
        .lines()
        .filter(|l| l.starts_with(&gw_key))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        shown,
        vec![endpoint.as_str()],
        "the client's endpoint for the gateway (`wg show endpoints`: {show})"
    );
    eprintln!(
        "{test}: {} datagrams from the gateway ({} handshake responses, {} data), all from {vip}",
        seen.len(),
        responses.len(),
        data.len()
    );
}
