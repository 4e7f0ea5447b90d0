#![allow(clippy::unwrap_used)]
//! The XDP programs (`ebpf/sluice_xdp.c`: the outer NIC's, and appliance mode's for the inner
//! NIC) on fixture frames through `BPF_PROG_TEST_RUN`: for each frame of a table, the action
//! it returns and that exactly one counter slot moved by exactly one. Then: the redirect branch
//! with a real AF_XDP socket in each XSKMAP, the port, address and prefix sets being replaced,
//! attaching to a veth in a fresh namespace (visible in `ip -d link`), and a process that
//! attached and was SIGKILLed leaving no program behind (the bpf_link dies with the process),
//! and all of it again in a process holding only the systemd unit's four capabilities
//! (CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW, CAP_IPC_LOCK: no CAP_PERFMON, no CAP_SYS_ADMIN).
//!
//! Root only. Under `CI=true` a missing root or a failed load fails the test; otherwise the
//! tests skip with a message.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::testbed::{in_ci, is_root, netns::veth, unique_id, Netns};
use sluice::xdp::{
    XdpCounter, XdpError, XdpInnerCounter, XdpProgram, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};

const PORT: u16 = 51820;
const LOCAL4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd18, 0, 0, 0, 0, 0, 0, 1);
const OTHER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0xfd18, 0, 0, 0, 0, 0, 0, 9);
const PEER4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd18, 0, 0, 7, 0, 0, 0, 2);

/// The environment variable that turns `attached_child` into the process the SIGKILL test runs.
const CHILD_ENV: &str = "SLUICE_XDP_FIXTURE_CHILD";

/// The environment variable that turns `unit_capabilities_child` into the process that
/// `loads_and_attaches_with_only_the_unit_capabilities` runs with reduced capabilities.
const UNIT_CAPS_CHILD_ENV: &str = "SLUICE_XDP_UNIT_CAPS_CHILD";

// ---------------------------------------------------------------------------------------------
// Prerequisites

/// Root, or skip (fail under CI).
fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        !in_ci(),
        "{test}: needs root (BPF and namespaces) and CI=true forbids skipping"
    );
    eprintln!("SKIP {test}: needs root (BPF_PROG_TEST_RUN, XDP attach)");
    false
}

/// The program, loaded with the fixture's ports and addresses.
fn fixture_program() -> XdpProgram {
    let mut prog = XdpProgram::load().unwrap_or_else(|e| panic!("loading the XDP program: {e}"));
    prog.set_ports(&[PORT]).unwrap();
    prog.set_local_addrs(&[IpAddr::V4(LOCAL4), IpAddr::V6(LOCAL6)])
        .unwrap();
    prog
}

// ---------------------------------------------------------------------------------------------
// Frame builders (checksums right, though XDP does not check them)

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_ARP: u16 = 0x0806;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const ETH_LLDP: u16 = 0x88cc;
const IP_TCP: u8 = 6;
const IP_UDP: u8 = 17;
const IP_ICMPV6: u8 = 58;
const IP6_HOPOPTS: u8 = 0;
const IP6_ROUTING: u8 = 43;
const IP6_FRAGMENT: u8 = 44;
const IP6_DSTOPTS: u8 = 60;

/// Ethernet with the given VLAN tags (TPID, VLAN id), outermost first.
fn eth(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for c in chunks {
        for &b in c.iter() {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header (with `options`, padded to 4 bytes) and payload; `frag` is the flags and
/// offset field.
fn ipv4(dst: Ipv4Addr, proto: u8, options: &[u8], frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0); // end of options list
    }
    let hdr_len = 20 + opts.len();
    let total = hdr_len + payload.len();
    let mut h = vec![0x40 | (hdr_len / 4) as u8, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&PEER4.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&opts);
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header, extension headers `(type, body)` in order (bodies padded to 8-byte units
/// with their 2-byte prefix), then the upper-layer `proto` and `payload`.
fn ipv6(dst: Ipv6Addr, ext: &[(u8, usize)], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, (_, units)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |(t, _)| *t);
        let len = (units + 1) * 8;
        let mut h = vec![0u8; len];
        h[0] = next;
        h[1] = *units as u8;
        // PadN option filling the rest (types 0 and 60 use TLV options).
        h[2] = 1;
        h[3] = (len - 4) as u8;
        chain.extend_from_slice(&h);
    }
    let first = ext.first().map_or(proto, |(t, _)| *t);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((chain.len() + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[first, 64]);
    h.extend_from_slice(&PEER6.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&chain);
    h.extend_from_slice(payload);
    h
}

/// A UDP datagram from port 40000 to `dport` with its checksum over `src`/`dst`.
fn udp(src: IpAddr, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::with_capacity(len as usize);
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let pseudo: Vec<u8> = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [
            &s.octets()[..],
            &d.octets(),
            &[0, IP_UDP],
            &len.to_be_bytes(),
        ]
        .concat(),
        (s, d) => {
            let (s, d) = (to6(s), to6(d));
            [
                &s.octets()[..],
                &d.octets(),
                &u32::from(len).to_be_bytes(),
                &[0, 0, 0, IP_UDP],
            ]
            .concat()
        }
    };
    let c = match checksum(&[&pseudo, &u]) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

fn to6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A WireGuard-shaped message: `kind`, the three reserved bytes, then filler to `len` bytes.
fn wg(kind: u8, reserved: [u8; 3], len: usize) -> Vec<u8> {
    let mut m: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    if let Some(h) = m.get_mut(0..4.min(len)) {
        let hdr = [kind, reserved[0], reserved[1], reserved[2]];
        h.copy_from_slice(&hdr[..h.len()]);
    }
    m
}

fn wg_ok(kind: u8, len: usize) -> Vec<u8> {
    wg(kind, [0; 3], len)
}

/// UDP/IPv4/Ethernet to `dst:dport`.
fn v4_udp(dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let u = udp(PEER4.into(), dst.into(), dport, payload);
    eth(&[], ETH_IPV4, &ipv4(dst, IP_UDP, &[], 0, &u))
}

/// UDP/IPv6/Ethernet to `dst:dport`.
fn v6_udp(dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let u = udp(PEER6.into(), dst.into(), dport, payload);
    eth(&[], ETH_IPV6, &ipv6(dst, &[], IP_UDP, &u))
}

/// WireGuard payload to the fixture's IPv4 address and port.
fn to_us4(payload: &[u8]) -> Vec<u8> {
    v4_udp(LOCAL4, PORT, payload)
}

/// WireGuard payload to the fixture's IPv6 address and port.
fn to_us6(payload: &[u8]) -> Vec<u8> {
    v6_udp(LOCAL6, PORT, payload)
}

fn tcp(dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t
}

fn arp_request() -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    a.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    a.extend_from_slice(&PEER4.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&LOCAL4.octets());
    eth(&[], ETH_ARP, &a)
}

/// An ICMPv6 Neighbor Solicitation for the fixture's address, to its solicited-node group.
fn neighbor_solicitation() -> Vec<u8> {
    let group: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&LOCAL6.octets());
    let pseudo = [
        &PEER6.octets()[..],
        &group.octets(),
        &(ns.len() as u32).to_be_bytes(),
        &[0, 0, 0, IP_ICMPV6],
    ]
    .concat();
    let c = checksum(&[&pseudo, &ns]);
    ns[2..4].copy_from_slice(&c.to_be_bytes());
    eth(&[], ETH_IPV6, &ipv6(group, &[], IP_ICMPV6, &ns))
}

/// `frame` with its last `n` bytes cut off (the length fields still claim them).
fn cut(mut frame: Vec<u8>, keep: usize) -> Vec<u8> {
    frame.truncate(keep);
    frame
}

/// `frame` with `f` applied to it.
fn with(mut frame: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut frame);
    frame
}

// Offsets in an untagged Ethernet + IPv4 (no options) + UDP frame.
const ETH: usize = 14;
const IP4: usize = 20;
const IP6: usize = 40;
const UDP: usize = 8;

// ---------------------------------------------------------------------------------------------
// The table

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    counter: XdpCounter,
}

fn case(name: &'static str, frame: Vec<u8>, action: u32, counter: XdpCounter) -> Case {
    Case {
        name,
        frame,
        action,
        counter,
    }
}

fn table() -> Vec<Case> {
    use XdpCounter::*;
    let init = wg_ok(1, 148);
    let resp = wg_ok(2, 92);
    let cookie = wg_ok(3, 64);
    let data_min = wg_ok(4, 32);
    let data = wg_ok(4, 32 + 128);
    let v4_init_udp = udp(PEER4.into(), LOCAL4.into(), PORT, &init);
    let v6_init_udp = udp(PEER6.into(), LOCAL6.into(), PORT, &init);
    // Record route (7) with room for two addresses, then a NOP: 12 bytes of options (IHL 8).
    let options = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    vec![
        // WireGuard for us: no XSK registered in the fixture, so it passes to the kernel.
        case("v4 initiation", to_us4(&init), XDP_PASS, PassNoXsk),
        case("v4 response", to_us4(&resp), XDP_PASS, PassNoXsk),
        case("v4 cookie reply", to_us4(&cookie), XDP_PASS, PassNoXsk),
        case(
            "v4 data, minimum 32",
            to_us4(&data_min),
            XDP_PASS,
            PassNoXsk,
        ),
        case("v4 data, 160 bytes", to_us4(&data), XDP_PASS, PassNoXsk),
        case("v6 initiation", to_us6(&init), XDP_PASS, PassNoXsk),
        case("v6 response", to_us6(&resp), XDP_PASS, PassNoXsk),
        case("v6 cookie reply", to_us6(&cookie), XDP_PASS, PassNoXsk),
        case("v6 data", to_us6(&data), XDP_PASS, PassNoXsk),
        case(
            "v4 with options (IHL 8)",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_UDP, &options, 0, &v4_init_udp),
            ),
            XDP_PASS,
            PassNoXsk,
        ),
        case(
            "v6 with hop-by-hop and destination options",
            eth(
                &[],
                ETH_IPV6,
                &ipv6(
                    LOCAL6,
                    &[(IP6_HOPOPTS, 0), (IP6_DSTOPTS, 1)],
                    IP_UDP,
                    &v6_init_udp,
                ),
            ),
            XDP_PASS,
            PassNoXsk,
        ),
        case(
            "v6 with hop-by-hop, routing and two destination options",
            eth(
                &[],
                ETH_IPV6,
                &ipv6(
                    LOCAL6,
                    &[
                        (IP6_HOPOPTS, 0),
                        (IP6_DSTOPTS, 0),
                        (IP6_ROUTING, 2),
                        (IP6_DSTOPTS, 0),
                    ],
                    IP_UDP,
                    &v6_init_udp,
                ),
            ),
            XDP_PASS,
            PassNoXsk,
        ),
        case(
            "v4 behind one VLAN tag",
            eth(
                &[(ETH_VLAN, 100)],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_UDP, &[], 0, &v4_init_udp),
            ),
            XDP_PASS,
            PassNoXsk,
        ),
        case(
            "v6 behind one VLAN tag",
            eth(
                &[(ETH_VLAN, 100)],
                ETH_IPV6,
                &ipv6(LOCAL6, &[], IP_UDP, &v6_init_udp),
            ),
            XDP_PASS,
            PassNoXsk,
        ),
        case(
            "v4 response with Ethernet padding after the datagram",
            with(to_us4(&resp), |f| f.extend_from_slice(&[0; 10])),
            XDP_PASS,
            PassNoXsk,
        ),
        // Obviously invalid WireGuard for us: dropped, one counter per reason.
        case(
            "type 0",
            to_us4(&wg(0, [0; 3], 148)),
            XDP_DROP,
            DropWgUnknownType,
        ),
        case(
            "type 5",
            to_us4(&wg(5, [0; 3], 148)),
            XDP_DROP,
            DropWgUnknownType,
        ),
        case(
            "type 255, v6",
            to_us6(&wg(255, [0; 3], 64)),
            XDP_DROP,
            DropWgUnknownType,
        ),
        case(
            "reserved byte 1",
            to_us4(&wg(1, [1, 0, 0], 148)),
            XDP_DROP,
            DropWgReserved,
        ),
        case(
            "reserved byte 2",
            to_us4(&wg(4, [0, 0x80, 0], 64)),
            XDP_DROP,
            DropWgReserved,
        ),
        case(
            "reserved byte 3, v6",
            to_us6(&wg(2, [0, 0, 1], 92)),
            XDP_DROP,
            DropWgReserved,
        ),
        case(
            "initiation 147",
            to_us4(&wg_ok(1, 147)),
            XDP_DROP,
            DropWgHandshakeLen,
        ),
        case(
            "initiation 149",
            to_us4(&wg_ok(1, 149)),
            XDP_DROP,
            DropWgHandshakeLen,
        ),
        case(
            "response 91",
            to_us4(&wg_ok(2, 91)),
            XDP_DROP,
            DropWgHandshakeLen,
        ),
        case(
            "response 93, v6",
            to_us6(&wg_ok(2, 93)),
            XDP_DROP,
            DropWgHandshakeLen,
        ),
        case(
            "cookie reply 63",
            to_us4(&wg_ok(3, 63)),
            XDP_DROP,
            DropWgHandshakeLen,
        ),
        case(
            "cookie reply 148",
            to_us4(&wg_ok(3, 148)),
            XDP_DROP,
            DropWgHandshakeLen,
        ),
        case("data 31", to_us4(&wg_ok(4, 31)), XDP_DROP, DropWgDataShort),
        case(
            "data 16, v6",
            to_us6(&wg_ok(4, 16)),
            XDP_DROP,
            DropWgDataShort,
        ),
        case(
            "data 4 (header only)",
            to_us4(&wg_ok(4, 4)),
            XDP_DROP,
            DropWgDataShort,
        ),
        case("empty datagram", to_us4(&[]), XDP_DROP, DropWgTruncated),
        case(
            "WireGuard header cut: 3-byte datagram",
            to_us4(&[1, 0, 0]),
            XDP_DROP,
            DropWgTruncated,
        ),
        case(
            "WireGuard header cut: 1-byte datagram, v6",
            to_us6(&[4]),
            XDP_DROP,
            DropWgTruncated,
        ),
        // Not for us: passed to the kernel, counted by reason.
        case("ARP", arp_request(), XDP_PASS, PassArp),
        case(
            "IPv6 neighbor solicitation (ICMPv6)",
            neighbor_solicitation(),
            XDP_PASS,
            PassNotUdp,
        ),
        case(
            "TCP to port 22",
            eth(&[], ETH_IPV4, &ipv4(LOCAL4, IP_TCP, &[], 0, &tcp(22))),
            XDP_PASS,
            PassNotUdp,
        ),
        case(
            "TCP to 51820, v6",
            eth(&[], ETH_IPV6, &ipv6(LOCAL6, &[], IP_TCP, &tcp(PORT))),
            XDP_PASS,
            PassNotUdp,
        ),
        case(
            "UDP to port 53",
            v4_udp(LOCAL4, 53, &init),
            XDP_PASS,
            PassOtherPort,
        ),
        case(
            "UDP to port 51821, v6",
            v6_udp(LOCAL6, PORT + 1, &init),
            XDP_PASS,
            PassOtherPort,
        ),
        case(
            "UDP to 51820, another v4 address",
            v4_udp(OTHER4, PORT, &init),
            XDP_PASS,
            PassOtherAddr,
        ),
        case(
            "UDP to 51820, another v6 address",
            v6_udp(OTHER6, PORT, &init),
            XDP_PASS,
            PassOtherAddr,
        ),
        case(
            "UDP to 51820, our v4 address as v4-mapped IPv6 is not ours",
            v6_udp(
                Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0001),
                PORT,
                &init,
            ),
            XDP_PASS,
            PassOtherAddr,
        ),
        case(
            "unknown EtherType (LLDP)",
            eth(&[], ETH_LLDP, &[0; 46]),
            XDP_PASS,
            PassEthertype,
        ),
        case(
            "two VLAN tags (802.1Q in 802.1Q)",
            eth(
                &[(ETH_VLAN, 100), (ETH_VLAN, 200)],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_UDP, &[], 0, &v4_init_udp),
            ),
            XDP_PASS,
            PassVlanStacked,
        ),
        case(
            "QinQ (802.1ad S-tag)",
            eth(
                &[(ETH_QINQ, 100), (ETH_VLAN, 200)],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_UDP, &[], 0, &v4_init_udp),
            ),
            XDP_PASS,
            PassVlanStacked,
        ),
        case(
            "IPv4 first fragment (MF)",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_UDP, &[], 0x2000, &v4_init_udp),
            ),
            XDP_PASS,
            PassFragment,
        ),
        case(
            "IPv4 later fragment (offset 185)",
            eth(&[], ETH_IPV4, &ipv4(LOCAL4, IP_UDP, &[], 185, &init)),
            XDP_PASS,
            PassFragment,
        ),
        case(
            "IPv6 fragment header",
            eth(
                &[],
                ETH_IPV6,
                &ipv6(LOCAL6, &[(IP6_FRAGMENT, 0)], IP_UDP, &v6_init_udp),
            ),
            XDP_PASS,
            PassFragment,
        ),
        case(
            "IPv6 hop-by-hop then fragment header",
            eth(
                &[],
                ETH_IPV6,
                &ipv6(
                    LOCAL6,
                    &[(IP6_HOPOPTS, 0), (IP6_FRAGMENT, 0)],
                    IP_UDP,
                    &v6_init_udp,
                ),
            ),
            XDP_PASS,
            PassFragment,
        ),
        case(
            "IPv6 with five extension headers",
            eth(
                &[],
                ETH_IPV6,
                &ipv6(LOCAL6, &[(IP6_DSTOPTS, 0); 5], IP_UDP, &v6_init_udp),
            ),
            XDP_PASS,
            PassIpv6ExtDepth,
        ),
        // Truncated or garbled headers at every layer: passed for the kernel to reject.
        case(
            "Ethernet only, IPv4 EtherType",
            eth(&[], ETH_IPV4, &[]),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "VLAN tag cut",
            cut(eth(&[(ETH_VLAN, 100)], ETH_IPV4, &[]), ETH + 2),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "IPv4 header cut at 19 bytes",
            cut(to_us4(&init), ETH + 19),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "IPv4 options cut (IHL 8, 22 bytes present)",
            cut(
                eth(
                    &[],
                    ETH_IPV4,
                    &ipv4(LOCAL4, IP_UDP, &options, 0, &v4_init_udp),
                ),
                ETH + 22,
            ),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "IPv4 IHL 4",
            with(to_us4(&init), |f| f[ETH] = 0x44),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "IPv4 version 6 in an IPv4 EtherType",
            with(to_us4(&init), |f| f[ETH] = 0x65),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "IPv4 total length below the header",
            with(to_us4(&init), |f| {
                f[ETH + 2..ETH + 4].copy_from_slice(&19u16.to_be_bytes())
            }),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "IPv6 header cut at 39 bytes",
            cut(to_us6(&init), ETH + 39),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "IPv6 extension header cut",
            // The payload length says 16 bytes follow, the hop-by-hop header claims 24.
            with(
                cut(
                    eth(
                        &[],
                        ETH_IPV6,
                        &ipv6(LOCAL6, &[(IP6_HOPOPTS, 2)], IP_UDP, &v6_init_udp),
                    ),
                    ETH + IP6 + 16,
                ),
                |f| f[ETH + 4..ETH + 6].copy_from_slice(&16u16.to_be_bytes()),
            ),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "IPv6 payload length past the frame",
            cut(to_us6(&init), ETH + IP6 + UDP + 100),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "UDP header cut (IPv4 length says 4 bytes)",
            cut(
                with(to_us4(&init), |f| {
                    f[ETH + 2..ETH + 4].copy_from_slice(&24u16.to_be_bytes())
                }),
                ETH + IP4 + 4,
            ),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "UDP length 7",
            with(to_us4(&init), |f| {
                f[ETH + IP4 + 4..ETH + IP4 + 6].copy_from_slice(&7u16.to_be_bytes())
            }),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "UDP length past the IP payload",
            with(to_us4(&init), |f| {
                f[ETH + IP4 + 4..ETH + IP4 + 6].copy_from_slice(&200u16.to_be_bytes())
            }),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "frame cut inside the WireGuard header (lengths claim 148)",
            cut(to_us4(&init), ETH + IP4 + UDP + 2),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "frame cut inside a WireGuard initiation, v6",
            cut(to_us6(&init), ETH + IP6 + UDP + 100),
            XDP_PASS,
            PassMalformed,
        ),
        // Where the parser's fast path (headers at constant offsets: IPv4 without options,
        // IPv6 straight to UDP, with or without a VLAN tag) meets its slow path (IPv4 options,
        // IPv6 extension headers): the same verdicts on both sides.
        case(
            "v4 with the longest options (IHL 15)",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_UDP, &[1; 40], 0, &v4_init_udp),
            ),
            XDP_PASS,
            PassNoXsk,
        ),
        case(
            "v4 with options behind one VLAN tag",
            eth(
                &[(ETH_VLAN, 100)],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_UDP, &options, 0, &v4_init_udp),
            ),
            XDP_PASS,
            PassNoXsk,
        ),
        case(
            "v6 with hop-by-hop behind one VLAN tag",
            eth(
                &[(ETH_VLAN, 100)],
                ETH_IPV6,
                &ipv6(LOCAL6, &[(IP6_HOPOPTS, 0)], IP_UDP, &v6_init_udp),
            ),
            XDP_PASS,
            PassNoXsk,
        ),
        case(
            "v4 with options, 3-byte datagram",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(
                    LOCAL4,
                    IP_UDP,
                    &options,
                    0,
                    &udp(PEER4.into(), LOCAL4.into(), PORT, &[4, 0, 0]),
                ),
            ),
            XDP_DROP,
            DropWgTruncated,
        ),
        case(
            "v4 with options, type 5",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(
                    LOCAL4,
                    IP_UDP,
                    &options,
                    0,
                    &udp(PEER4.into(), LOCAL4.into(), PORT, &wg_ok(5, 32)),
                ),
            ),
            XDP_DROP,
            DropWgUnknownType,
        ),
        case(
            "v4 with options, data 31",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(
                    LOCAL4,
                    IP_UDP,
                    &options,
                    0,
                    &udp(PEER4.into(), LOCAL4.into(), PORT, &wg_ok(4, 31)),
                ),
            ),
            XDP_DROP,
            DropWgDataShort,
        ),
        case(
            "v4 with options to port 53",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(
                    LOCAL4,
                    IP_UDP,
                    &options,
                    0,
                    &udp(PEER4.into(), LOCAL4.into(), 53, &init),
                ),
            ),
            XDP_PASS,
            PassOtherPort,
        ),
        case(
            "v4 with options, UDP length past the IP payload",
            with(
                eth(
                    &[],
                    ETH_IPV4,
                    &ipv4(LOCAL4, IP_UDP, &options, 0, &v4_init_udp),
                ),
                |f| f[ETH + 32 + 4..ETH + 32 + 6].copy_from_slice(&200u16.to_be_bytes()),
            ),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "v4 with options, UDP header cut (IPv4 length says 4 bytes)",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_UDP, &options, 0, &v4_init_udp[..4]),
            ),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "v4 with options, TCP",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_TCP, &options, 0, &tcp(PORT)),
            ),
            XDP_PASS,
            PassNotUdp,
        ),
        case(
            "v4 with options, later fragment",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_UDP, &options, 185, &v4_init_udp),
            ),
            XDP_PASS,
            PassFragment,
        ),
        case(
            "v6 with hop-by-hop to ::ffff:198.18.0.1 (our v4 address, v4-mapped)",
            eth(
                &[],
                ETH_IPV6,
                &ipv6(
                    LOCAL4.to_ipv6_mapped(),
                    &[(IP6_HOPOPTS, 0)],
                    IP_UDP,
                    &udp(PEER6.into(), LOCAL4.to_ipv6_mapped().into(), PORT, &init),
                ),
            ),
            XDP_PASS,
            PassOtherAddr,
        ),
        case(
            "v6 with hop-by-hop, reserved byte 1",
            eth(
                &[],
                ETH_IPV6,
                &ipv6(
                    LOCAL6,
                    &[(IP6_HOPOPTS, 0)],
                    IP_UDP,
                    &udp(PEER6.into(), LOCAL6.into(), PORT, &wg(1, [1, 0, 0], 148)),
                ),
            ),
            XDP_DROP,
            DropWgReserved,
        ),
        case(
            "v4 behind one VLAN tag, UDP header cut (IPv4 length says 4 bytes)",
            eth(
                &[(ETH_VLAN, 100)],
                ETH_IPV4,
                &ipv4(LOCAL4, IP_UDP, &[], 0, &v4_init_udp[..4]),
            ),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "v6 behind one VLAN tag, UDP header cut (IPv6 length says 4 bytes)",
            eth(
                &[(ETH_VLAN, 100)],
                ETH_IPV6,
                &ipv6(LOCAL6, &[], IP_UDP, &v6_init_udp[..4]),
            ),
            XDP_PASS,
            PassMalformed,
        ),
        case(
            "v6 behind one VLAN tag, initiation 147",
            eth(
                &[(ETH_VLAN, 100)],
                ETH_IPV6,
                &ipv6(
                    LOCAL6,
                    &[],
                    IP_UDP,
                    &udp(PEER6.into(), LOCAL6.into(), PORT, &wg_ok(1, 147)),
                ),
            ),
            XDP_DROP,
            DropWgHandshakeLen,
        ),
        case(
            "empty datagram with Ethernet padding after it",
            with(to_us4(&[]), |f| f.extend_from_slice(&[4, 0, 0, 0, 0, 0])),
            XDP_DROP,
            DropWgTruncated,
        ),
        case(
            "3-byte datagram with Ethernet padding after it, v6",
            with(to_us6(&[4, 0, 0]), |f| f.extend_from_slice(&[0; 6])),
            XDP_DROP,
            DropWgTruncated,
        ),
    ]
}

/// Runs `frame` and checks the action and that exactly `counter` moved, by one.
fn check(
    prog: &XdpProgram,
    name: &str,
    frame: &[u8],
    action: u32,
    counter: XdpCounter,
) -> Vec<String> {
    let before = prog.counters().unwrap();
    let got = match prog.test_run(frame) {
        Ok(a) => a,
        Err(e) => return vec![format!("{name}: test run failed: {e}")],
    };
    let delta = prog.counters().unwrap().delta(&before);
    let mut problems = Vec::new();
    if got != action {
        problems.push(format!("{name}: action {got}, expected {action}"));
    }
    for (c, n) in delta.iter() {
        let want = u64::from(c == counter);
        if n != want {
            problems.push(format!(
                "{name}: counter {} moved by {n}, expected {want}",
                c.name()
            ));
        }
    }
    problems
}

/// Every case of `cases` through [`check`]; the problems found.
fn run_table(prog: &XdpProgram, cases: &[Case]) -> Vec<String> {
    cases
        .iter()
        .flat_map(|c| check(prog, c.name, &c.frame, c.action, c.counter))
        .collect()
}

#[test]
fn fixture_table() {
    if !root_or_skip("fixture_table") {
        return;
    }
    let prog = fixture_program();
    let cases = table();
    let problems = run_table(&prog, &cases);
    assert!(
        problems.is_empty(),
        "{} of {} cases wrong:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );

    // Every counter slot but the redirect one (see xsk_redirect) is reached by some case.
    for c in XdpCounter::ALL {
        if c != XdpCounter::Redirect {
            assert!(
                cases.iter().any(|k| k.counter == c),
                "no fixture for {}",
                c.name()
            );
        }
    }
    // The totals add up: every run counted once.
    let totals = prog.counters().unwrap();
    assert_eq!(
        totals.iter().map(|(_, n)| n).sum::<u64>(),
        cases.len() as u64
    );
}

/// The kernel itself refuses to run XDP on less than an Ethernet header: the program's own
/// Ethernet bounds check cannot be reached through BPF_PROG_TEST_RUN, and drivers never hand
/// XDP such frames either. Nothing is counted.
#[test]
fn frames_shorter_than_ethernet_are_refused_by_the_kernel() {
    if !root_or_skip("frames_shorter_than_ethernet_are_refused_by_the_kernel") {
        return;
    }
    let prog = fixture_program();
    for len in [0, 1, 13] {
        let frame = cut(to_us4(&wg_ok(1, 148)), len);
        match prog.test_run(&frame) {
            Err(XdpError::TestRun(e)) => {
                assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{len} bytes")
            }
            other => panic!("{len}-byte frame: expected EINVAL, got {other:?}"),
        }
    }
    assert_eq!(
        prog.counters().unwrap().iter().map(|(_, n)| n).sum::<u64>(),
        0
    );
}

/// The sets are replaced, not merged, and an empty set makes nothing ours.
#[test]
fn ports_and_addresses_are_replaced() {
    if !root_or_skip("ports_and_addresses_are_replaced") {
        return;
    }
    let mut prog = fixture_program();
    let init = wg_ok(1, 148);
    let mut problems = Vec::new();
    problems.extend(check(
        &prog,
        "fixture sets",
        &to_us4(&init),
        XDP_PASS,
        XdpCounter::PassNoXsk,
    ));

    prog.set_ports(&[443, 4500]).unwrap();
    problems.extend(check(
        &prog,
        "51820 no longer served",
        &to_us4(&init),
        XDP_PASS,
        XdpCounter::PassOtherPort,
    ));
    problems.extend(check(
        &prog,
        "443 served",
        &v4_udp(LOCAL4, 443, &init),
        XDP_PASS,
        XdpCounter::PassNoXsk,
    ));
    problems.extend(check(
        &prog,
        "4500 served",
        &v4_udp(LOCAL4, 4500, &init),
        XDP_PASS,
        XdpCounter::PassNoXsk,
    ));

    prog.set_local_addrs(&[IpAddr::V4(OTHER4)]).unwrap();
    problems.extend(check(
        &prog,
        "old v4 address gone",
        &v4_udp(LOCAL4, 443, &init),
        XDP_PASS,
        XdpCounter::PassOtherAddr,
    ));
    problems.extend(check(
        &prog,
        "v6 address gone",
        &v6_udp(LOCAL6, 443, &init),
        XDP_PASS,
        XdpCounter::PassOtherAddr,
    ));
    problems.extend(check(
        &prog,
        "new VIP served",
        &v4_udp(OTHER4, 443, &init),
        XDP_PASS,
        XdpCounter::PassNoXsk,
    ));

    // Neighbours in one 64-port word of the udp_ports bitmap, and a port moving out of it.
    prog.set_ports(&[443, 448, 63, 64]).unwrap();
    for (port, counter) in [
        (443, XdpCounter::PassNoXsk),
        (448, XdpCounter::PassNoXsk),
        (444, XdpCounter::PassOtherPort),
        (447, XdpCounter::PassOtherPort),
        (63, XdpCounter::PassNoXsk),
        (64, XdpCounter::PassNoXsk),
        (65, XdpCounter::PassOtherPort),
        (4500, XdpCounter::PassOtherPort),
    ] {
        problems.extend(check(
            &prog,
            &format!("port {port} of 443, 448, 63, 64"),
            &v4_udp(OTHER4, port, &init),
            XDP_PASS,
            counter,
        ));
    }
    prog.set_ports(&[448, 65535]).unwrap();
    for (port, counter) in [
        (443, XdpCounter::PassOtherPort),
        (448, XdpCounter::PassNoXsk),
        (63, XdpCounter::PassOtherPort),
        (65535, XdpCounter::PassNoXsk),
    ] {
        problems.extend(check(
            &prog,
            &format!("port {port} of 448, 65535"),
            &v4_udp(OTHER4, port, &init),
            XDP_PASS,
            counter,
        ));
    }

    prog.set_ports(&[]).unwrap();
    problems.extend(check(
        &prog,
        "no ports",
        &v4_udp(OTHER4, 443, &init),
        XDP_PASS,
        XdpCounter::PassOtherPort,
    ));
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let too_many: Vec<u16> = (1..=1000).collect();
    assert!(matches!(
        prog.set_ports(&too_many),
        Err(XdpError::TooMany { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Appliance mode: the inner-NIC program

const USER4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const USER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
const LAN4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);

/// The program with the inner fixture's tunnel prefixes: 10.77.0.0/16, fd77::/64 and
/// 10.99.0.5/32.
fn inner_fixture_program() -> XdpProgram {
    let mut prog = fixture_program();
    prog.set_tunnel_prefixes(&[
        (IpAddr::V4(Ipv4Addr::new(10, 77, 0, 0)), 16),
        (IpAddr::V6("fd77::".parse().unwrap()), 64),
        (IpAddr::V4(Ipv4Addr::new(10, 99, 0, 5)), 32),
    ])
    .unwrap();
    prog
}

struct InnerCase {
    name: &'static str,
    frame: Vec<u8>,
    counter: XdpInnerCounter,
}

fn inner_case(name: &'static str, frame: Vec<u8>, counter: XdpInnerCounter) -> InnerCase {
    InnerCase {
        name,
        frame,
        counter,
    }
}

fn inner_table() -> Vec<InnerCase> {
    use XdpInnerCounter::*;
    let payload = [0x5au8; 64];
    let v4 = |dst: Ipv4Addr, proto: u8, frag: u16| {
        eth(&[], ETH_IPV4, &ipv4(dst, proto, &[], frag, &payload))
    };
    let v6 = |dst: Ipv6Addr| eth(&[], ETH_IPV6, &ipv6(dst, &[], IP_TCP, &tcp(443)));
    vec![
        inner_case("v4 UDP to a user", v4(USER4, IP_UDP, 0), PassNoXsk),
        inner_case("v4 TCP to a user", v4(USER4, IP_TCP, 0), PassNoXsk),
        inner_case(
            "v4 fragment to a user (steered too)",
            v4(USER4, IP_UDP, 0x2000),
            PassNoXsk,
        ),
        inner_case(
            "v4 to a /32 user prefix",
            v4(Ipv4Addr::new(10, 99, 0, 5), IP_UDP, 0),
            PassNoXsk,
        ),
        inner_case(
            "v4 next to a /32 user prefix",
            v4(Ipv4Addr::new(10, 99, 0, 6), IP_UDP, 0),
            PassNotTunnel,
        ),
        inner_case("v4 to the LAN", v4(LAN4, IP_UDP, 0), PassNotTunnel),
        inner_case(
            "v4 to the gateway's outer address",
            v4(LOCAL4, IP_UDP, 0),
            PassNotTunnel,
        ),
        inner_case("v6 to a user", v6(USER6), PassNoXsk),
        inner_case(
            "v6 outside the user /64",
            v6("fd77:0:0:1::2".parse().unwrap()),
            PassNotTunnel,
        ),
        inner_case(
            "v6 to ::ffff:10.77.0.2",
            v6(USER4.to_ipv6_mapped()),
            PassNotTunnel,
        ),
        inner_case(
            "v4 to a user behind one VLAN tag",
            eth(
                &[(ETH_VLAN, 7)],
                ETH_IPV4,
                &ipv4(USER4, IP_UDP, &[], 0, &payload),
            ),
            PassNoXsk,
        ),
        inner_case(
            "QinQ",
            eth(
                &[(ETH_QINQ, 7), (ETH_VLAN, 8)],
                ETH_IPV4,
                &ipv4(USER4, IP_UDP, &[], 0, &payload),
            ),
            PassVlanStacked,
        ),
        inner_case("ARP", arp_request(), PassNotIp),
        inner_case("LLDP", eth(&[], ETH_LLDP, &[0; 46]), PassNotIp),
        inner_case(
            "IPv6 neighbor solicitation",
            neighbor_solicitation(),
            PassNotTunnel,
        ),
        inner_case(
            "IPv4 header cut",
            cut(v4(USER4, IP_UDP, 0), ETH + 19),
            PassMalformed,
        ),
        inner_case(
            "IPv4 total length past the frame",
            cut(v4(USER4, IP_UDP, 0), ETH + IP4 + 10),
            PassMalformed,
        ),
        inner_case("IPv6 header cut", cut(v6(USER6), ETH + 30), PassMalformed),
        inner_case(
            "VLAN tag cut",
            cut(eth(&[(ETH_VLAN, 7)], ETH_IPV4, &[]), ETH + 2),
            PassMalformed,
        ),
        inner_case(
            "v4 with options to a user",
            eth(
                &[],
                ETH_IPV4,
                &ipv4(USER4, IP_UDP, &[1, 1, 1, 1, 1, 1, 1, 0], 0, &payload),
            ),
            PassNoXsk,
        ),
        inner_case(
            "v6 to a user behind one VLAN tag",
            eth(
                &[(ETH_VLAN, 7)],
                ETH_IPV6,
                &ipv6(USER6, &[], IP_TCP, &tcp(443)),
            ),
            PassNoXsk,
        ),
        inner_case(
            "v6 with hop-by-hop to a user",
            eth(
                &[],
                ETH_IPV6,
                &ipv6(USER6, &[(IP6_HOPOPTS, 0)], IP_TCP, &tcp(443)),
            ),
            PassNoXsk,
        ),
        inner_case(
            "IPv4 IHL 4",
            with(v4(USER4, IP_UDP, 0), |f| f[ETH] = 0x44),
            PassMalformed,
        ),
        inner_case(
            "IPv4 options past the frame (IHL 15, 24 bytes)",
            with(cut(v4(USER4, IP_UDP, 0), ETH + 24), |f| f[ETH] = 0x4f),
            PassMalformed,
        ),
    ]
}

fn check_inner(
    prog: &XdpProgram,
    name: &str,
    frame: &[u8],
    action: u32,
    counter: XdpInnerCounter,
) -> Vec<String> {
    let before = prog.inner_counters().unwrap();
    let outer_before = prog.counters().unwrap();
    let got = match prog.test_run_inner(frame) {
        Ok(a) => a,
        Err(e) => return vec![format!("inner {name}: test run failed: {e}")],
    };
    let delta = prog.inner_counters().unwrap().delta(&before);
    let mut problems = Vec::new();
    if got != action {
        problems.push(format!("inner {name}: action {got}, expected {action}"));
    }
    for (c, n) in delta.iter() {
        let want = u64::from(c == counter);
        if n != want {
            problems.push(format!(
                "inner {name}: counter {} moved by {n}, expected {want}",
                c.name()
            ));
        }
    }
    if prog.counters().unwrap() != outer_before {
        problems.push(format!("inner {name}: the outer program's counters moved"));
    }
    problems
}

/// Every case of `cases` through [`check_inner`] (all pass: no socket in `inner_xsks`).
fn run_inner_table(prog: &XdpProgram, cases: &[InnerCase]) -> Vec<String> {
    cases
        .iter()
        .flat_map(|c| check_inner(prog, c.name, &c.frame, XDP_PASS, c.counter))
        .collect()
}

#[test]
fn inner_fixture_table() {
    if !root_or_skip("inner_fixture_table") {
        return;
    }
    let mut prog = inner_fixture_program();
    let cases = inner_table();
    let mut problems = run_inner_table(&prog, &cases);
    assert!(
        problems.is_empty(),
        "{} of {} cases wrong:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
    for c in XdpInnerCounter::ALL {
        if c != XdpInnerCounter::Redirect {
            assert!(
                cases.iter().any(|k| k.counter == c),
                "no inner fixture for {}",
                c.name()
            );
        }
    }

    // Replacing the prefixes: the /16 goes, a /24 inside it comes.
    prog.set_tunnel_prefixes(&[(IpAddr::V4(Ipv4Addr::new(10, 77, 1, 0)), 24)])
        .unwrap();
    let to = |dst| eth(&[], ETH_IPV4, &ipv4(dst, IP_UDP, &[], 0, &[0; 32]));
    problems.extend(check_inner(
        &prog,
        "old /16 gone",
        &to(USER4),
        XDP_PASS,
        XdpInnerCounter::PassNotTunnel,
    ));
    problems.extend(check_inner(
        &prog,
        "new /24",
        &to(Ipv4Addr::new(10, 77, 1, 9)),
        XDP_PASS,
        XdpInnerCounter::PassNoXsk,
    ));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(matches!(
        prog.set_tunnel_prefixes(&[(IpAddr::V4(USER4), 33)]),
        Err(XdpError::BadPrefix { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// The redirect branch, with a real AF_XDP socket

/// An AF_XDP socket bound (copy mode) to queue 0 of `ifname` in the calling thread's
/// namespace, with the UMEM it needs; the kernel accepts only bound sockets in an XSKMAP.
struct Xsk {
    fd: OwnedFd,
    umem: *mut libc::c_void,
    umem_len: usize,
}

// SAFETY: the UMEM mapping is owned by this value alone and only unmapped in Drop.
unsafe impl Send for Xsk {}

impl Xsk {
    fn bind(ifname: &str) -> std::io::Result<Xsk> {
        let last = std::io::Error::last_os_error;
        const FRAMES: usize = 64;
        const FRAME: usize = 2048;
        let umem_len = FRAMES * FRAME;
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an anonymous private mapping with no address hint; checked for MAP_FAILED.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            return Err(last());
        }
        let xsk = Xsk { fd, umem, umem_len };
        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: umem_len as u64,
            chunk_size: FRAME as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        xsk.setsockopt(libc::XDP_UMEM_REG, &reg)?;
        let entries: u32 = FRAMES as u32;
        xsk.setsockopt(libc::XDP_UMEM_FILL_RING, &entries)?;
        xsk.setsockopt(libc::XDP_UMEM_COMPLETION_RING, &entries)?;
        xsk.setsockopt(libc::XDP_RX_RING, &entries)?;
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(last());
        }
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: 0,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a valid sockaddr_xdp and its exact size is passed.
        let rc = unsafe {
            libc::bind(
                xsk.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last());
        }
        Ok(xsk)
    }

    fn setsockopt<T>(&self, opt: libc::c_int, value: &T) -> std::io::Result<()> {
        // SAFETY: `value` points to a live T and its exact size is passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                opt,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: `umem` was mapped with `umem_len` bytes in `bind` and is unmapped once, here;
        // the socket (closed after this, as a field) no longer uses it once closed, and the
        // kernel pins the pages it registered independently of this mapping.
        unsafe {
            libc::munmap(self.umem, self.umem_len);
        }
    }
}

/// With a bound AF_XDP socket in the XSKMAP slot of queue 0 (the queue BPF_PROG_TEST_RUN
/// runs as), WireGuard for us is redirected; without it, passed; nothing else changes.
#[test]
fn xsk_redirect() {
    if !root_or_skip("xsk_redirect") {
        return;
    }
    let ns = Netns::new(&format!("sl-xf-{}", unique_id())).unwrap();
    let xsk = ns
        .enter(|| Xsk::bind("lo"))
        .unwrap()
        .unwrap_or_else(|e| panic!("binding an AF_XDP socket to lo in {}: {e}", ns.name()));
    let mut prog = fixture_program();
    let init = to_us4(&wg_ok(1, 148));
    let mut problems = Vec::new();
    problems.extend(check(
        &prog,
        "before registering",
        &init,
        XDP_PASS,
        XdpCounter::PassNoXsk,
    ));

    prog.register_xsk(0, xsk.fd.as_raw_fd()).unwrap();
    problems.extend(check(
        &prog,
        "v4 initiation",
        &init,
        XDP_REDIRECT,
        XdpCounter::Redirect,
    ));
    problems.extend(check(
        &prog,
        "v6 data",
        &to_us6(&wg_ok(4, 64)),
        XDP_REDIRECT,
        XdpCounter::Redirect,
    ));
    problems.extend(check(
        &prog,
        "bad type still dropped",
        &to_us4(&wg(9, [0; 3], 148)),
        XDP_DROP,
        XdpCounter::DropWgUnknownType,
    ));
    problems.extend(check(
        &prog,
        "other port still passed",
        &v4_udp(LOCAL4, 53, &wg_ok(1, 148)),
        XDP_PASS,
        XdpCounter::PassOtherPort,
    ));

    // The inner program has its own XSKMAP: the outer registration does not steer it.
    prog.set_tunnel_prefixes(&[(IpAddr::V4(USER4), 32)])
        .unwrap();
    let to_user = eth(&[], ETH_IPV4, &ipv4(USER4, IP_UDP, &[], 0, &[0; 32]));
    problems.extend(check_inner(
        &prog,
        "outer socket only",
        &to_user,
        XDP_PASS,
        XdpInnerCounter::PassNoXsk,
    ));
    prog.register_inner_xsk(0, xsk.fd.as_raw_fd()).unwrap();
    problems.extend(check_inner(
        &prog,
        "to a user",
        &to_user,
        XDP_REDIRECT,
        XdpInnerCounter::Redirect,
    ));
    prog.unregister_inner_xsk(0).unwrap();
    problems.extend(check_inner(
        &prog,
        "inner unregistered",
        &to_user,
        XDP_PASS,
        XdpInnerCounter::PassNoXsk,
    ));

    prog.unregister_xsk(0).unwrap();
    prog.unregister_xsk(0).unwrap(); // already empty: fine
    problems.extend(check(
        &prog,
        "after unregistering",
        &init,
        XDP_PASS,
        XdpCounter::PassNoXsk,
    ));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(matches!(
        prog.register_xsk(100_000, xsk.fd.as_raw_fd()),
        Err(XdpError::QueueOutOfRange { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Attaching: visible in `ip -d link`, gone on drop and when the process is SIGKILLed

/// `ip -d link show dev` in `ns`.
fn link_details(ns: &Netns, dev: &str) -> String {
    ns.ip(&["-d", "link", "show", "dev", dev]).unwrap()
}

fn has_xdp(details: &str) -> bool {
    details.contains("prog/xdp")
}

/// Waits (bounded) until `dev` in `ns` has no XDP program; returns the last details seen.
fn wait_no_xdp(ns: &Netns, dev: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = link_details(ns, dev);
        if !has_xdp(&d) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(d);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process, SIGKILLed and reaped on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn attach_to_veth_and_detach() {
    if !root_or_skip("attach_to_veth_and_detach") {
        return;
    }
    let id = unique_id();
    let a = Netns::new(&format!("sl-xfa-{id}")).unwrap();
    let b = Netns::new(&format!("sl-xfb-{id}")).unwrap();
    let (dev, peer) = (format!("sl-xfa{id}"), format!("sl-xfb{id}"));
    veth(&a, &dev, &b, &peer, None).unwrap();
    assert!(!has_xdp(&link_details(&a, &dev)));

    let mut prog = fixture_program();
    let mode = a.enter(|| prog.attach(&dev)).unwrap().unwrap();
    assert_eq!(
        mode,
        sluice::xdp::AttachMode::Driver,
        "veth supports native XDP"
    );
    let details = link_details(&a, &dev);
    assert!(
        has_xdp(&details),
        "no XDP program shown on {dev}:\n{details}"
    );
    assert!(details.contains("xdp "), "not in driver mode:\n{details}");
    assert!(matches!(
        a.enter(|| prog.attach(&dev)).unwrap(),
        Err(XdpError::AlreadyAttached(_))
    ));
    assert_eq!(
        prog.attachments().collect::<Vec<_>>(),
        vec![(dev.as_str(), mode)]
    );

    // A frame sent by the peer runs through the program (ARP-less: an IPv6 NS is multicast).
    let before = prog.counters().unwrap();
    b.enter(|| send_raw(&peer, &neighbor_solicitation()))
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while prog
        .counters()
        .unwrap()
        .delta(&before)
        .get(XdpCounter::PassNotUdp)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the attached program never saw the frame"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    prog.detach(&dev).unwrap();
    wait_no_xdp(&a, &dev).unwrap_or_else(|d| panic!("still attached after detach:\n{d}"));
    assert!(matches!(prog.detach(&dev), Err(XdpError::NotAttached(_))));

    // The inner program (appliance mode) attaches the same way, under its own name.
    a.enter(|| prog.attach_inner(&dev)).unwrap().unwrap();
    let details = link_details(&a, &dev);
    assert!(
        details.contains("name sluice_xdp_inne"),
        "inner program not shown:\n{details}"
    );
    prog.detach(&dev).unwrap();
    wait_no_xdp(&a, &dev).unwrap_or_else(|d| panic!("inner still attached after detach:\n{d}"));

    // Dropping the program detaches too.
    a.enter(|| prog.attach(&dev)).unwrap().unwrap();
    let details = link_details(&a, &dev);
    assert!(
        details.contains("name sluice_xdp "),
        "outer program not shown:\n{details}"
    );
    drop(prog);
    wait_no_xdp(&a, &dev).unwrap_or_else(|d| panic!("still attached after drop:\n{d}"));
}

/// Sends one raw Ethernet frame out of `dev` (calling thread's namespace).
fn send_raw(dev: &str, frame: &[u8]) -> std::io::Result<()> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value that we then fill in.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = ifindex as i32;
    // SAFETY: `frame` and `sa` are valid for the call and their exact sizes are passed.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The program attached by a process that is then SIGKILLed disappears with it: the
/// attachment is a bpf_link owned by the process's file table, not a netlink setting.
#[test]
fn sigkilled_process_leaves_no_program_attached() {
    if !root_or_skip("sigkilled_process_leaves_no_program_attached") {
        return;
    }
    let id = unique_id();
    let a = Netns::new(&format!("sl-xfk-{id}")).unwrap();
    let b = Netns::new(&format!("sl-xfl-{id}")).unwrap();
    let (dev, peer) = (format!("sl-xfk{id}"), format!("sl-xfl{id}"));
    veth(&a, &dev, &b, &peer, None).unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut child = ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", a.name()])
            .arg(&exe)
            .args([
                "--exact",
                "attached_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &dev)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut attached = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.contains("ATTACHED ") {
            attached = true;
            break;
        }
    }
    assert!(
        attached,
        "the child never attached (exit: {:?})",
        child.0.try_wait()
    );
    let details = link_details(&a, &dev);
    assert!(
        has_xdp(&details),
        "the child's program is not shown on {dev}:\n{details}"
    );

    // SIGKILL: no destructor, no signal handler runs in the child.
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "the child was not killed: {status}");
    wait_no_xdp(&a, &dev).unwrap_or_else(|d| panic!("XDP still attached after SIGKILL:\n{d}"));
}

/// Not a test of its own: the child process of `sigkilled_process_leaves_no_program_attached`
/// (run in the namespace, with `SLUICE_XDP_FIXTURE_CHILD=<dev>`). Attaches, says so, and waits
/// to be killed. Without the variable it does nothing.
#[test]
fn attached_child() {
    let Ok(dev) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut prog = fixture_program();
    let mode = prog.attach(&dev).unwrap();
    println!("ATTACHED {dev} {}", mode.as_str());
    // Killed by the parent; the bound is only a safety net should the parent die first.
    std::thread::sleep(Duration::from_secs(120));
    drop(prog);
    panic!("attached_child was not killed within 120 s");
}

// ---------------------------------------------------------------------------------------------
// Only the systemd unit's capabilities (ansible/roles/sluice): no CAP_PERFMON, no CAP_SYS_ADMIN

/// The unit's capabilities as a `setpriv --bounding-set` argument.
const UNIT_CAPS: &str = "-all,+net_admin,+bpf,+net_raw,+ipc_lock";

/// Capability numbers (`linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in /proc/self/status).
fn effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff in /proc/self/status")
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// The verifier lets a loader without CAP_PERFMON move packet pointers by constants only; the
/// program must pass it anyway (it reads past variable-length headers with bpf_xdp_load_bytes).
/// A child process in a fresh namespace, started through `setpriv` with exactly the unit's four
/// capabilities, loads both programs, runs both fixture tables and attaches to a veth.
#[test]
fn loads_and_attaches_with_only_the_unit_capabilities() {
    if !root_or_skip("loads_and_attaches_with_only_the_unit_capabilities") {
        return;
    }
    let id = unique_id();
    let a = Netns::new(&format!("sl-xfc-{id}")).unwrap();
    let b = Netns::new(&format!("sl-xfd-{id}")).unwrap();
    let (dev, peer) = (format!("sl-xfc{id}"), format!("sl-xfd{id}"));
    veth(&a, &dev, &b, &peer, None).unwrap();

    let exe = std::env::current_exe().unwrap();
    // `ip netns exec` enters the namespace (CAP_SYS_ADMIN) before setpriv drops everything
    // but the four from the bounding set; the test binary then runs as root with only those.
    let out = Command::new("ip")
        .args(["netns", "exec", a.name(), "setpriv", "--inh-caps=-all"])
        .args(["--bounding-set", UNIT_CAPS, "--"])
        .arg(&exe)
        .args([
            "--exact",
            "unit_capabilities_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(UNIT_CAPS_CHILD_ENV, &dev)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("UNIT-CAPS OK {dev}")),
        "the child with only the unit's capabilities failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // The child is gone, and its bpf_link with it.
    wait_no_xdp(&a, &dev).unwrap_or_else(|d| panic!("XDP still attached after the child:\n{d}"));
}

/// Not a test of its own: the child process of
/// `loads_and_attaches_with_only_the_unit_capabilities` (in the namespace, with
/// `SLUICE_XDP_UNIT_CAPS_CHILD=<dev>`). Without the variable it does nothing.
#[test]
fn unit_capabilities_child() {
    let Ok(dev) = std::env::var(UNIT_CAPS_CHILD_ENV) else {
        return;
    };
    let caps = effective_caps();
    let has = |cap: u32| caps & (1 << cap) != 0;
    for cap in [CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK, CAP_BPF] {
        assert!(has(cap), "capability {cap} missing: CapEff {caps:016x}");
    }
    assert!(
        !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN),
        "more than the unit's capabilities: CapEff {caps:016x}"
    );
    assert_eq!(caps.count_ones(), 4, "CapEff {caps:016x}");

    let mut prog = inner_fixture_program();
    let cases = table();
    let mut problems = run_table(&prog, &cases);
    problems.extend(run_inner_table(&prog, &inner_table()));
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let mode = prog.attach(&dev).unwrap();
    assert_eq!(
        mode,
        sluice::xdp::AttachMode::Driver,
        "veth supports native XDP"
    );
    // Already in the namespace: the plain `ip` here sees the veth.
    let shown = Command::new("ip")
        .args(["-d", "link", "show", "dev", &dev])
        .output()
        .unwrap();
    let details = String::from_utf8_lossy(&shown.stdout);
    assert!(
        has_xdp(&details),
        "no XDP program shown on {dev}:\n{details}"
    );
    prog.detach(&dev).unwrap();
    prog.attach_inner(&dev).unwrap();
    prog.detach(&dev).unwrap();
    println!(
        "UNIT-CAPS OK {dev}: CapEff {caps:016x}, {} outer and inner fixtures, attached",
        cases.len()
    );
}
