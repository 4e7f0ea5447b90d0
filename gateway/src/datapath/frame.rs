//! Ethernet / IPv4 / IPv6 / UDP framing for the AF_XDP data path: parse the frames the XDP
//! program steered to us down to the UDP payload, and build the headers of the frames we
//! transmit (with correct IPv4 header and UDP checksums). Pure functions over byte slices; no
//! I/O, no `unsafe`.
//!
//! The XDP program (ebpf/) has already checked that a frame it redirects is UDP to one of our
//! ports and addresses; parsing here is still complete and bounds-checked, because a frame that
//! fails is dropped and counted rather than trusted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
// IPv6 extension headers that may precede UDP and that we walk.
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DSTOPTS: u8 = 60;
const IPV6_FRAGMENT: u8 = 44;
/// Extension headers walked at most (the XDP program has the same bound).
const MAX_EXT_HEADERS: usize = 4;
const DEFAULT_TTL: u8 = 64;

pub type Mac = [u8; 6];

/// What a received frame says about the path back to its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// Our address the sender reached (the source of our replies).
    pub local: SocketAddr,
    /// Our MAC (the frame's destination) and the next hop's (the frame's source).
    pub local_mac: Mac,
    pub remote_mac: Mac,
    /// The 802.1Q tag control (VLAN id and priority) the frame came with, if any.
    pub vlan: Option<u16>,
}

/// A parsed UDP frame: where it came from, the way back, and where its payload is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpFrame {
    pub remote: SocketAddr,
    pub route: Route,
    pub payload: std::ops::Range<usize>,
}

/// Why a frame could not be parsed as a UDP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    Truncated,
    NotIp,
    NotUdp,
    Fragment,
    BadLength,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac(b: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

/// The IP packet inside an Ethernet frame from the inner NIC (appliance mode): one optional
/// 802.1Q tag is skipped, and the range ends where the IP header's length says (Ethernet
/// padding of short frames is cut off).
pub fn inner_packet(f: &[u8]) -> Result<std::ops::Range<usize>, FrameError> {
    let mut off = ETH_HLEN;
    let mut ethertype = be16(f, 12).ok_or(FrameError::Truncated)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16(f, off + 2).ok_or(FrameError::Truncated)?;
        off += VLAN_HLEN;
    }
    let len = match ethertype {
        ETH_P_IPV4 => {
            if f.get(off).map(|b| b >> 4) != Some(4) {
                return Err(FrameError::NotIp);
            }
            usize::from(be16(f, off + 2).ok_or(FrameError::Truncated)?)
        }
        ETH_P_IPV6 => {
            if f.get(off).map(|b| b >> 4) != Some(6) {
                return Err(FrameError::NotIp);
            }
            IPV6_HLEN + usize::from(be16(f, off + 4).ok_or(FrameError::Truncated)?)
        }
        _ => return Err(FrameError::NotIp),
    };
    if len < IPV4_HLEN || off + len > f.len() {
        return Err(FrameError::BadLength);
    }
    Ok(off..off + len)
}

/// Write an Ethernet header for the IP `packet` that follows it in `frame[ETH_HLEN..]`
/// (appliance mode: to the inner NIC's next hop). `None` if the packet is not IP.
pub fn build_ethernet(frame: &mut [u8], dst: &Mac, src: &Mac) -> Option<()> {
    let ethertype = match frame.get(ETH_HLEN).map(|b| b >> 4)? {
        4 => ETH_P_IPV4,
        6 => ETH_P_IPV6,
        _ => return None,
    };
    let hdr = frame.get_mut(..ETH_HLEN)?;
    hdr[0..6].copy_from_slice(dst);
    hdr[6..12].copy_from_slice(src);
    hdr[12..14].copy_from_slice(&ethertype.to_be_bytes());
    Some(())
}

/// Parse Ethernet (one optional 802.1Q tag), IPv4 (any options) or IPv6 (hop-by-hop, routing
/// and destination-options headers walked), then UDP. The UDP length field bounds the
/// payload (Ethernet padding after it is ignored).
pub fn parse_udp(f: &[u8]) -> Result<UdpFrame, FrameError> {
    if f.len() < ETH_HLEN {
        return Err(FrameError::Truncated);
    }
    let (dst_mac, src_mac) = (mac(f, 0), mac(f, 6));
    let mut ethertype = be16(f, 12).ok_or(FrameError::Truncated)?;
    let mut off = ETH_HLEN;
    let mut vlan = None;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        vlan = Some(be16(f, off).ok_or(FrameError::Truncated)? & 0xefff);
        ethertype = be16(f, off + 2).ok_or(FrameError::Truncated)?;
        off += VLAN_HLEN;
    }
    let (src_ip, dst_ip, l4) = match ethertype {
        ETH_P_IPV4 => {
            let h = f.get(off..off + IPV4_HLEN).ok_or(FrameError::Truncated)?;
            if h[0] >> 4 != 4 {
                return Err(FrameError::NotIp);
            }
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if ihl < IPV4_HLEN {
                return Err(FrameError::BadLength);
            }
            if f.len() < off + ihl {
                return Err(FrameError::Truncated);
            }
            let frag = u16::from_be_bytes([h[6], h[7]]);
            if frag & 0x3fff != 0 {
                return Err(FrameError::Fragment);
            }
            if h[9] != IPPROTO_UDP {
                return Err(FrameError::NotUdp);
            }
            let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
            let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), off + ihl)
        }
        ETH_P_IPV6 => {
            let h = f.get(off..off + IPV6_HLEN).ok_or(FrameError::Truncated)?;
            if h[0] >> 4 != 6 {
                return Err(FrameError::NotIp);
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            dst.copy_from_slice(&h[24..40]);
            let mut next = h[6];
            let mut at = off + IPV6_HLEN;
            let mut walked = 0;
            while matches!(next, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS) {
                walked += 1;
                if walked > MAX_EXT_HEADERS {
                    return Err(FrameError::NotUdp);
                }
                let e = f.get(at..at + 2).ok_or(FrameError::Truncated)?;
                next = e[0];
                at += (usize::from(e[1]) + 1) * 8;
            }
            if next == IPV6_FRAGMENT {
                return Err(FrameError::Fragment);
            }
            if next != IPPROTO_UDP {
                return Err(FrameError::NotUdp);
            }
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                at,
            )
        }
        _ => return Err(FrameError::NotIp),
    };
    let u = f.get(l4..l4 + UDP_HLEN).ok_or(FrameError::Truncated)?;
    let sport = u16::from_be_bytes([u[0], u[1]]);
    let dport = u16::from_be_bytes([u[2], u[3]]);
    let ulen = usize::from(u16::from_be_bytes([u[4], u[5]]));
    if ulen < UDP_HLEN {
        return Err(FrameError::BadLength);
    }
    if f.len() < l4 + ulen {
        return Err(FrameError::Truncated);
    }
    Ok(UdpFrame {
        remote: SocketAddr::new(src_ip, sport),
        route: Route {
            local: SocketAddr::new(dst_ip, dport),
            local_mac: dst_mac,
            remote_mac: src_mac,
            vlan,
        },
        payload: l4 + UDP_HLEN..l4 + ulen,
    })
}

/// Bytes of headers in front of a UDP payload sent along `route` to `remote`.
pub fn header_len(route: &Route, remote: &SocketAddr) -> usize {
    let ip = if remote.is_ipv4() {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    };
    ETH_HLEN + route.vlan.map_or(0, |_| VLAN_HLEN) + ip + UDP_HLEN
}

/// One's-complement sum of `data` (as big-endian 16-bit words) added to `sum`, not folded.
fn sum16(data: &[u8], mut sum: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Add the four 16-bit words of `w` (the carries beyond 16 bits fold later).
        sum += (w >> 48) + ((w >> 32) & 0xffff) + ((w >> 16) & 0xffff) + (w & 0xffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

/// Write Ethernet, IP and UDP headers into `frame[..header_len]` for a `payload_len`-byte UDP
/// payload already placed at `frame[header_len..]`, from `route.local` to `remote`. Returns the
/// frame's total length, or `None` if `frame` is too short or the families disagree.
pub fn build_udp(
    frame: &mut [u8],
    route: &Route,
    remote: &SocketAddr,
    payload_len: usize,
) -> Option<usize> {
    let hlen = header_len(route, remote);
    let total = hlen + payload_len;
    if frame.len() < total || route.local.is_ipv4() != remote.is_ipv4() {
        return None;
    }
    let udp_len = u16::try_from(UDP_HLEN + payload_len).ok()?;
    frame[0..6].copy_from_slice(&route.remote_mac);
    frame[6..12].copy_from_slice(&route.local_mac);
    let mut off = 12;
    if let Some(tci) = route.vlan {
        frame[off..off + 2].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        frame[off + 2..off + 4].copy_from_slice(&tci.to_be_bytes());
        off += VLAN_HLEN;
    }
    let l3 = off + 2;
    let (l4, pseudo) = match (route.local.ip(), remote.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            frame[off..off + 2].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
            let ip_len = u16::try_from(IPV4_HLEN).ok()? + udp_len;
            let h = &mut frame[l3..l3 + IPV4_HLEN];
            h[0] = 0x45;
            h[1] = 0;
            h[2..4].copy_from_slice(&ip_len.to_be_bytes());
            h[4..6].copy_from_slice(&[0, 0]);
            // Don't fragment: WireGuard datagrams are sized by the tunnel MTU.
            h[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
            h[8] = DEFAULT_TTL;
            h[9] = IPPROTO_UDP;
            h[10..12].copy_from_slice(&[0, 0]);
            h[12..16].copy_from_slice(&src.octets());
            h[16..20].copy_from_slice(&dst.octets());
            let c = checksum(h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let mut p = sum16(&src.octets(), 0);
            p = sum16(&dst.octets(), p);
            p += u64::from(IPPROTO_UDP) + u64::from(udp_len);
            (l3 + IPV4_HLEN, p)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            frame[off..off + 2].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
            let h = &mut frame[l3..l3 + IPV6_HLEN];
            h[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
            h[4..6].copy_from_slice(&udp_len.to_be_bytes());
            h[6] = IPPROTO_UDP;
            h[7] = DEFAULT_TTL;
            h[8..24].copy_from_slice(&src.octets());
            h[24..40].copy_from_slice(&dst.octets());
            let mut p = sum16(&src.octets(), 0);
            p = sum16(&dst.octets(), p);
            p += u64::from(IPPROTO_UDP) + u64::from(udp_len);
            (l3 + IPV6_HLEN, p)
        }
        _ => return None,
    };
    let u = &mut frame[l4..l4 + UDP_HLEN];
    u[0..2].copy_from_slice(&route.local.port().to_be_bytes());
    u[2..4].copy_from_slice(&remote.port().to_be_bytes());
    u[4..6].copy_from_slice(&udp_len.to_be_bytes());
    u[6..8].copy_from_slice(&[0, 0]);
    let mut c = fold(sum16(&frame[l4..total], pseudo));
    // A computed zero is sent as all ones (zero means "no checksum" in IPv4, and is invalid
    // in IPv6).
    if c == 0 {
        c = 0xffff;
    }
    frame[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(local: &str, vlan: Option<u16>) -> Route {
        Route {
            local: local.parse().unwrap(),
            local_mac: [2, 0, 0, 0, 0, 1],
            remote_mac: [2, 0, 0, 0, 0, 2],
            vlan,
        }
    }

    /// Verify a UDP checksum the way a receiver does: the sum over pseudo-header and datagram
    /// (checksum field included) folds to zero.
    fn udp_checksum_ok(src: IpAddr, dst: IpAddr, udp: &[u8]) -> bool {
        let mut p = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => sum16(&d.octets(), sum16(&s.octets(), 0)),
            (IpAddr::V6(s), IpAddr::V6(d)) => sum16(&d.octets(), sum16(&s.octets(), 0)),
            _ => unreachable!(),
        };
        p += u64::from(IPPROTO_UDP) + udp.len() as u64;
        fold(sum16(udp, p)) == 0
    }

    #[test]
    fn build_then_parse_round_trips_every_shape() {
        let cases = [
            ("198.18.0.1:51820", "198.18.9.2:40000", None),
            ("198.18.0.1:51820", "198.18.9.2:40000", Some(42)),
            ("[fd18::1]:51820", "[fd18::9:2]:1234", None),
            ("[fd18::1]:51820", "[fd18::9:2]:1234", Some(4094)),
        ];
        for (local, remote, vlan) in cases {
            for payload_len in [0usize, 1, 31, 32, 33, 148, 1452] {
                let r = route(local, vlan);
                let remote: SocketAddr = remote.parse().unwrap();
                let h = header_len(&r, &remote);
                let mut f = vec![0u8; h + payload_len];
                for (i, b) in f[h..].iter_mut().enumerate() {
                    *b = (i * 7 + 3) as u8;
                }
                let n = build_udp(&mut f, &r, &remote, payload_len).unwrap();
                assert_eq!(n, f.len());
                // Parse it as the peer would see it: swap the roles.
                let p = parse_udp(&f).unwrap();
                assert_eq!(p.remote, r.local);
                assert_eq!(p.route.local, remote);
                assert_eq!(p.route.local_mac, r.remote_mac);
                assert_eq!(p.route.remote_mac, r.local_mac);
                assert_eq!(p.route.vlan, vlan);
                assert_eq!(p.payload, h..h + payload_len);
                let l4 = h - UDP_HLEN;
                assert!(
                    udp_checksum_ok(r.local.ip(), remote.ip(), &f[l4..]),
                    "{local} {vlan:?} {payload_len}"
                );
                if r.local.is_ipv4() {
                    let l3 = l4 - IPV4_HLEN;
                    assert_eq!(checksum(&f[l3..l4]), 0, "IPv4 header checksum");
                }
            }
        }
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2 (before complement).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(checksum(&[0xab]), !0xab00);
    }

    #[test]
    fn families_must_agree_and_space_must_suffice() {
        let r = route("198.18.0.1:51820", None);
        let v6: SocketAddr = "[fd18::2]:1".parse().unwrap();
        assert_eq!(build_udp(&mut [0u8; 200], &r, &v6, 10), None);
        let v4: SocketAddr = "198.18.0.2:1".parse().unwrap();
        assert_eq!(build_udp(&mut [0u8; 50], &r, &v4, 10), None);
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let r = route("[fd18::1]:51820", Some(7));
        let remote: SocketAddr = "[fd18::2]:9".parse().unwrap();
        let h = header_len(&r, &remote);
        let mut f = vec![0u8; h + 40];
        build_udp(&mut f, &r, &remote, 40).unwrap();
        for cut in 0..f.len() {
            assert!(parse_udp(&f[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_udp(&f).is_ok());
    }

    #[test]
    fn ipv4_options_fragments_and_other_protocols() {
        let r = route("198.18.0.1:51820", None);
        let remote: SocketAddr = "198.18.0.2:5".parse().unwrap();
        let h = header_len(&r, &remote);
        let mut f = vec![0u8; h + 8];
        build_udp(&mut f, &r, &remote, 8).unwrap();
        // Insert 8 bytes of IPv4 options (IHL 7).
        let mut o = f[..ETH_HLEN + IPV4_HLEN].to_vec();
        o[ETH_HLEN] = 0x47;
        o.extend_from_slice(&[1, 1, 1, 1, 1, 1, 1, 0]);
        o.extend_from_slice(&f[ETH_HLEN + IPV4_HLEN..]);
        let p = parse_udp(&o).unwrap();
        assert_eq!(p.payload.len(), 8);
        assert_eq!(p.remote.port(), 51820);
        let mut frag = f.clone();
        frag[ETH_HLEN + 6] |= 0x20; // more fragments
        assert_eq!(parse_udp(&frag), Err(FrameError::Fragment));
        let mut tcp = f.clone();
        tcp[ETH_HLEN + 9] = 6;
        assert_eq!(parse_udp(&tcp), Err(FrameError::NotUdp));
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse_udp(&arp), Err(FrameError::NotIp));
        let mut short = f.clone();
        short[ETH_HLEN + IPV4_HLEN + 4..ETH_HLEN + IPV4_HLEN + 6]
            .copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(parse_udp(&short), Err(FrameError::BadLength));
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        let r = route("[fd18::1]:51820", None);
        let remote: SocketAddr = "[fd18::2]:5".parse().unwrap();
        let h = header_len(&r, &remote);
        let mut f = vec![0u8; h + 12];
        build_udp(&mut f, &r, &remote, 12).unwrap();
        let l3 = ETH_HLEN;
        // Hop-by-hop (8 bytes) then destination options (16 bytes) before UDP.
        let mut g = f[..l3 + IPV6_HLEN].to_vec();
        g[l3 + 6] = IPV6_HOPOPTS;
        g.extend_from_slice(&[IPV6_DSTOPTS, 0, 1, 4, 0, 0, 0, 0]);
        g.extend_from_slice(&[IPPROTO_UDP, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        g.extend_from_slice(&f[l3 + IPV6_HLEN..]);
        let p = parse_udp(&g).unwrap();
        assert_eq!(p.payload.len(), 12);
        g[l3 + IPV6_HLEN] = IPV6_FRAGMENT;
        assert_eq!(parse_udp(&g), Err(FrameError::Fragment));
    }
    #[test]
    fn inner_packets_come_out_of_their_frames_and_go_back_in() {
        let mut v4 = vec![0u8; IPV4_HLEN + 8];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&((IPV4_HLEN + 8) as u16).to_be_bytes());
        let mut v6 = vec![0u8; IPV6_HLEN + 3];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&3u16.to_be_bytes());
        let (a, b) = ([2u8, 0, 0, 0, 0, 1], [2u8, 0, 0, 0, 0, 2]);
        for p in [&v4, &v6] {
            let mut f = vec![0u8; ETH_HLEN];
            f.extend_from_slice(p);
            build_ethernet(&mut f, &a, &b).unwrap();
            assert_eq!(f[..6], a);
            assert_eq!(f[6..12], b);
            // Ethernet padding is cut off.
            let mut padded = f.clone();
            padded.resize(64, 0xee);
            assert_eq!(&padded[inner_packet(&padded).unwrap()], &p[..]);
            // One VLAN tag is skipped.
            let mut tagged = f[..12].to_vec();
            tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
            tagged.extend_from_slice(&f[12..]);
            assert_eq!(&tagged[inner_packet(&tagged).unwrap()], &p[..]);
            // Truncated, or claiming more than the frame holds.
            assert!(inner_packet(&f[..f.len() - 1]).is_err());
            assert!(inner_packet(&f[..13]).is_err());
        }
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(inner_packet(&arp), Err(FrameError::NotIp));
        let mut junk = vec![0u8; ETH_HLEN + 20];
        junk[ETH_HLEN] = 0x15;
        assert!(build_ethernet(&mut junk, &a, &b).is_none());
    }
}
