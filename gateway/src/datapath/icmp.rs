//! ICMP "destination unreachable" back to the sender of an inner packet that no peer's allowed
//! IPs cover, as the kernel's WireGuard does (`icmp_ndo_send`), so applications fail fast
//! instead of timing out. Never in answer to an ICMP error or a non-unicast source, and rate
//! limited per worker.

use super::io::Inner;
use crate::proto::Time;
use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Replies per second per worker, and the burst allowed.
const RATE: u64 = 100;
const BURST: u64 = 20;
const IPV6_MIN_MTU: usize = 1280;

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
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

/// Is this inner packet itself an ICMP error (never answered with another)?
fn is_icmp_error(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            packet.get(9) == Some(&1)
                && packet
                    .get(ihl)
                    .is_some_and(|&t| matches!(t, 3 | 4 | 5 | 11 | 12))
        }
        Some(6) => packet.get(6) == Some(&58) && packet.get(40).is_some_and(|&t| t < 128),
        _ => true,
    }
}

/// Build the reply for `packet` from `ours` (our tunnel address of the same family).
pub fn build_unreachable(
    packet: &[u8],
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
) -> Option<Vec<u8>> {
    if is_icmp_error(packet) {
        return None;
    }
    match packet.first()? >> 4 {
        4 => {
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let src = Ipv4Addr::from(src);
            if src.is_multicast() || src.is_broadcast() || src.is_unspecified() {
                return None;
            }
            let ours = v4?;
            let quoted = &packet[..packet.len().min(548)];
            let total = 20 + 8 + quoted.len();
            let mut r = vec![0u8; total];
            r[0] = 0x45;
            r[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            r[8] = 64;
            r[9] = 1;
            r[12..16].copy_from_slice(&ours.octets());
            r[16..20].copy_from_slice(&src.octets());
            let c = checksum(&[&r[..20]]);
            r[10..12].copy_from_slice(&c.to_be_bytes());
            r[20] = 3; // destination unreachable
            r[21] = 1; // host unreachable
            r[28..].copy_from_slice(quoted);
            let c = checksum(&[&r[20..]]);
            r[22..24].copy_from_slice(&c.to_be_bytes());
            Some(r)
        }
        6 => {
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let src = Ipv6Addr::from(src);
            if src.is_multicast() || src.is_unspecified() {
                return None;
            }
            let ours = v6?;
            let quoted = &packet[..packet.len().min(IPV6_MIN_MTU - 48)];
            let icmp_len = 8 + quoted.len();
            let mut r = vec![0u8; 40 + icmp_len];
            r[0] = 0x60;
            r[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
            r[6] = 58;
            r[7] = 64;
            r[8..24].copy_from_slice(&ours.octets());
            r[24..40].copy_from_slice(&src.octets());
            r[40] = 1; // destination unreachable
            r[41] = 3; // address unreachable
            r[48..].copy_from_slice(quoted);
            let pseudo_len = (icmp_len as u32).to_be_bytes();
            let c = checksum(&[
                &ours.octets(),
                &src.octets(),
                &pseudo_len,
                &[0, 0, 0, 58],
                &r[40..],
            ]);
            r[42..44].copy_from_slice(&c.to_be_bytes());
            Some(r)
        }
        _ => None,
    }
}

/// A worker's ICMP reply source: our addresses and a token bucket.
#[derive(Debug)]
pub struct IcmpReplies {
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    tokens: Cell<u64>,
    last: Cell<Time>,
}

impl IcmpReplies {
    pub fn new(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> IcmpReplies {
        IcmpReplies {
            v4,
            v6,
            tokens: Cell::new(BURST),
            last: Cell::new(Time::ZERO),
        }
    }

    fn allow(&self, now: Time) -> bool {
        let earned = now.saturating_since(self.last.get()).as_nanos() as u64 * RATE / 1_000_000_000;
        if earned > 0 {
            self.tokens.set((self.tokens.get() + earned).min(BURST));
            self.last.set(now);
        }
        if self.tokens.get() == 0 {
            return false;
        }
        self.tokens.set(self.tokens.get() - 1);
        true
    }

    pub fn unreachable(&self, now: Time, tun: &impl Inner, packet: &[u8]) {
        if let Some(reply) = build_unreachable(packet, self.v4, self.v6) {
            if self.allow(now) {
                tun.write(&reply);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn v4_reply_is_well_formed() {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[10, 9, 9, 9]);
        let r = build_unreachable(&p, Some(Ipv4Addr::new(10, 0, 0, 1)), None).unwrap();
        assert_eq!(checksum(&[&r[..20]]), 0, "IP header checksum");
        assert_eq!(checksum(&[&r[20..]]), 0, "ICMP checksum");
        assert_eq!(&r[16..20], &[10, 0, 0, 2]);
        assert_eq!((r[20], r[21]), (3, 1));
        // No reply to an ICMP error, or without our own address of that family.
        assert!(build_unreachable(&r, Some(Ipv4Addr::new(10, 0, 0, 1)), None).is_none());
        assert!(build_unreachable(&p, None, None).is_none());
    }

    #[test]
    fn v6_reply_checksums() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[6] = 17;
        p[8..24].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        let ours: Ipv6Addr = "fd00::1".parse().unwrap();
        let r = build_unreachable(&p, None, Some(ours)).unwrap();
        let len = (r.len() as u32 - 40).to_be_bytes();
        assert_eq!(
            checksum(&[&r[8..24], &r[24..40], &len, &[0, 0, 0, 58], &r[40..]]),
            0
        );
        assert_eq!((r[40], r[41]), (1, 3));
    }

    #[test]
    fn rate_limited() {
        let i = IcmpReplies::new(None, None);
        let t = Time::ZERO + Duration::from_secs(10);
        let allowed = (0..100).filter(|_| i.allow(t)).count();
        assert_eq!(allowed as u64, BURST);
        assert!(i.allow(t + Duration::from_millis(10)));
    }
}
