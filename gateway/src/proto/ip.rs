//! The few facts cryptokey routing needs from an inner IP packet: version, source, destination
//! and the packet's own length (which strips WireGuard's zero padding).
//!
//! Length-checked views only; nothing here trusts a length field beyond the buffer it came in.

use crate::DropReason;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const V4_MIN_HEADER: usize = 20;
const V4_TOTAL_LEN: core::ops::Range<usize> = 2..4;
const V4_SRC: core::ops::Range<usize> = 12..16;
const V4_DST: core::ops::Range<usize> = 16..20;
const V6_HEADER: usize = 40;
const V6_PAYLOAD_LEN: core::ops::Range<usize> = 4..6;
const V6_SRC: core::ops::Range<usize> = 8..24;
const V6_DST: core::ops::Range<usize> = 24..40;

/// An inner packet's addresses and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The length the IP header claims; never more than the buffer.
    pub len: usize,
}

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

/// Parse an inner packet, which may be followed by padding.
pub fn parse(packet: &[u8]) -> Result<InnerPacket, DropReason> {
    let first = *packet.first().ok_or(DropReason::BadInnerPacket)?;
    match first >> 4 {
        4 if packet.len() >= V4_MIN_HEADER => {
            let len = be16(&packet[V4_TOTAL_LEN]);
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < V4_MIN_HEADER || len < ihl || len > packet.len() {
                return Err(DropReason::BadInnerPacket);
            }
            let src: [u8; 4] = packet[V4_SRC]
                .try_into()
                .map_err(|_| DropReason::BadInnerPacket)?;
            let dst: [u8; 4] = packet[V4_DST]
                .try_into()
                .map_err(|_| DropReason::BadInnerPacket)?;
            Ok(InnerPacket {
                src: IpAddr::V4(Ipv4Addr::from(src)),
                dst: IpAddr::V4(Ipv4Addr::from(dst)),
                len,
            })
        }
        6 if packet.len() >= V6_HEADER => {
            let len = V6_HEADER + be16(&packet[V6_PAYLOAD_LEN]);
            if len > packet.len() {
                return Err(DropReason::BadInnerPacket);
            }
            let src: [u8; 16] = packet[V6_SRC]
                .try_into()
                .map_err(|_| DropReason::BadInnerPacket)?;
            let dst: [u8; 16] = packet[V6_DST]
                .try_into()
                .map_err(|_| DropReason::BadInnerPacket)?;
            Ok(InnerPacket {
                src: IpAddr::V6(Ipv6Addr::from(src)),
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                len,
            })
        }
        _ => Err(DropReason::BadInnerPacket),
    }
}

/// The destination of an outgoing inner packet (for routing by AllowedIPs).
pub fn destination(packet: &[u8]) -> Result<IpAddr, DropReason> {
    parse(packet).map(|p| p.dst)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal IPv4/UDP-less packet for tests: header plus `payload` bytes.
    pub(crate) fn v4(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
        let len = 20 + payload;
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    pub(crate) fn v6(src: Ipv6Addr, dst: Ipv6Addr, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    #[test]
    fn parses_v4_and_v6_and_strips_padding() {
        let mut p = v4([10, 0, 0, 1], [10, 0, 0, 2], 5);
        p.extend_from_slice(&[0; 7]);
        let i = parse(&p).unwrap();
        assert_eq!(i.len, 25);
        assert_eq!(i.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(i.dst, "10.0.0.2".parse::<IpAddr>().unwrap());

        let p6 = v6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 8);
        let i = parse(&p6).unwrap();
        assert_eq!(i.len, 48);
        assert_eq!(i.dst, "fd00::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x45; 19]).is_err());
        let mut p = v4([1; 4], [2; 4], 0);
        p[2..4].copy_from_slice(&100u16.to_be_bytes()); // longer than the buffer
        assert!(parse(&p).is_err());
        let mut p = v4([1; 4], [2; 4], 0);
        p[0] = 0x44; // IHL 16 bytes
        assert!(parse(&p).is_err());
        let mut p = v4([1; 4], [2; 4], 0);
        p[0] = 0x55;
        assert!(parse(&p).is_err());
        let mut p6 = v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 0);
        p6[4..6].copy_from_slice(&1u16.to_be_bytes());
        assert!(parse(&p6).is_err());
        assert!(parse(&p6[..39]).is_err());
    }
}
