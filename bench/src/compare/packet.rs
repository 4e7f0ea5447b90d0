//! The inner packets the generator sends through the tunnel, and the sink's check of each one.
//!
//! Every packet is IPv4/UDP from a simulated user's tunnel address to the sink, with a payload
//! that says who sent it and which packet it is:
//!
//! ```text
//!  IPv4 header (20) | UDP header (8) | magic "SLCB" (4) | run (4) | seq (8) | user (4)
//!                                    | size (2) | 0 (2) | filler: (seq + i) as u8 ...
//! ```
//!
//! The sink accepts a packet only if the magic and run match, the user's tunnel address is the
//! packet's source, the length is the size the packet claims, the filler is intact, and its
//! sequence number was not seen before ([`Verifier`]). Sizes are inner sizes (the IP packet
//! the gateway writes to its TUN device), as in the issue: 64, 512, 1420 B and IMIX.

use std::net::Ipv4Addr;

/// IPv4 header without options.
pub const IPV4_HEADER: usize = 20;
pub const UDP_HEADER: usize = 8;
/// Our payload header: magic, run, seq, user, size, zero.
pub const PAYLOAD_HEADER: usize = 24;
/// The smallest inner packet that holds the headers.
pub const MIN_SIZE: usize = IPV4_HEADER + UDP_HEADER + PAYLOAD_HEADER;
/// The largest: the tunnel MTU every gateway is configured with.
pub const MAX_SIZE: usize = 1420;
const MAGIC: [u8; 4] = *b"SLCB";
const TTL: u8 = 64;
const PROTO_UDP: u8 = 17;
/// The UDP port the generator sends from (inside the tunnel).
pub const SRC_PORT: u16 = 5000;

/// Inner packet sizes: one fixed size, or the IMIX mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SizeMix {
    Fixed(u16),
    /// 7 : 4 : 1 of 64, 576 and 1420 B (the classic simple IMIX, its 1500 B scaled down to the
    /// tunnel MTU).
    Imix,
}

/// The IMIX pattern: 12 packets, 7 small, 4 medium, 1 large, interleaved.
const IMIX_PATTERN: [u16; 12] = [64, 576, 64, 64, 576, 64, 1420, 64, 576, 64, 64, 576];

impl SizeMix {
    /// The inner size of packet number `seq`.
    pub fn size_of(self, seq: u64) -> usize {
        match self {
            SizeMix::Fixed(s) => usize::from(s),
            SizeMix::Imix => usize::from(IMIX_PATTERN[(seq % IMIX_PATTERN.len() as u64) as usize]),
        }
    }

    /// Mean inner size in bytes.
    pub fn mean(self) -> f64 {
        match self {
            SizeMix::Fixed(s) => f64::from(s),
            SizeMix::Imix => {
                IMIX_PATTERN.iter().map(|&s| f64::from(s)).sum::<f64>() / IMIX_PATTERN.len() as f64
            }
        }
    }

    pub fn label(self) -> String {
        match self {
            SizeMix::Fixed(s) => s.to_string(),
            SizeMix::Imix => "imix".into(),
        }
    }
}

impl std::str::FromStr for SizeMix {
    type Err = String;
    fn from_str(s: &str) -> Result<SizeMix, String> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(SizeMix::Imix);
        }
        let n: u16 = s
            .parse()
            .map_err(|_| format!("size '{s}': a number of bytes or 'imix'"))?;
        if usize::from(n) < MIN_SIZE || usize::from(n) > MAX_SIZE {
            return Err(format!(
                "size {n}: inner sizes run from {MIN_SIZE} to {MAX_SIZE} B"
            ));
        }
        Ok(SizeMix::Fixed(n))
    }
}

/// What identifies one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub run: u32,
    pub seq: u64,
    pub user: u32,
}

/// The RFC 1071 checksum of an IPv4 header.
fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn filler(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_add(i as u8)
}

/// Write the inner packet for `stamp` of `size` bytes (`MIN_SIZE..=MAX_SIZE`) into `out`,
/// from `src` (the user's tunnel address) to `dst:dst_port`. Returns the length written.
pub fn build(
    out: &mut [u8],
    size: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_port: u16,
    stamp: Stamp,
) -> usize {
    let size = size.clamp(MIN_SIZE, MAX_SIZE.min(out.len()));
    let p = &mut out[..size];
    p[..IPV4_HEADER].fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = TTL;
    p[9] = PROTO_UDP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let csum = ipv4_checksum(&p[..IPV4_HEADER]);
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp = &mut p[IPV4_HEADER..];
    udp[0..2].copy_from_slice(&SRC_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&((size - IPV4_HEADER) as u16).to_be_bytes());
    udp[6..8].fill(0); // no UDP checksum (allowed for IPv4): the AEAD authenticates it
    let pl = &mut udp[UDP_HEADER..];
    write_payload(pl, size, stamp);
    size
}

/// The UDP payload alone (what the sink's socket receives, and what the sink sends in the
/// inside -> users direction, where the kernel adds the IP and UDP headers).
pub fn write_payload(pl: &mut [u8], size: usize, stamp: Stamp) {
    pl[0..4].copy_from_slice(&MAGIC);
    pl[4..8].copy_from_slice(&stamp.run.to_be_bytes());
    pl[8..16].copy_from_slice(&stamp.seq.to_be_bytes());
    pl[16..20].copy_from_slice(&stamp.user.to_be_bytes());
    pl[20..22].copy_from_slice(&(size as u16).to_be_bytes());
    pl[22..24].fill(0);
    for (i, b) in pl[PAYLOAD_HEADER..].iter_mut().enumerate() {
        *b = filler(stamp.seq, i);
    }
}

/// The sequence number stamped in a payload (for latency probes), if it is long enough.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    payload
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Why the sink refused a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not ours (no magic) or from another run: counted apart, not an error of the gateway.
    Foreign,
    /// The length differs from the size the packet claims.
    WrongSize,
    /// The source address is not the claimed user's tunnel address.
    WrongUser,
    /// The filler was changed.
    Corrupt,
    /// Seen before.
    Duplicate,
    /// A sequence number outside the run.
    OutOfRange,
}

/// The sink's check: every packet of one run, verified and counted once.
#[derive(Debug)]
pub struct Verifier {
    run: u32,
    users: u32,
    total: u64,
    seen: Vec<u64>,
    pub accepted: u64,
    pub accepted_bytes: u64,
    pub foreign: u64,
    pub wrong_size: u64,
    pub wrong_user: u64,
    pub corrupt: u64,
    pub duplicate: u64,
    pub out_of_range: u64,
}

impl Verifier {
    /// Expect packets of `run` with sequence numbers `0..total` from users `0..users`.
    pub fn new(run: u32, total: u64, users: u32) -> Verifier {
        Verifier {
            run,
            users,
            total,
            seen: vec![0; total.div_ceil(64) as usize],
            accepted: 0,
            accepted_bytes: 0,
            foreign: 0,
            wrong_size: 0,
            wrong_user: 0,
            corrupt: 0,
            duplicate: 0,
            out_of_range: 0,
        }
    }

    /// Check one UDP payload received from `src`; `tunnel_ip(user)` is where user `user`'s
    /// packets must come from.
    pub fn check(
        &mut self,
        payload: &[u8],
        src: Ipv4Addr,
        tunnel_ip: impl Fn(u32) -> Ipv4Addr,
    ) -> Result<(), Reject> {
        let r = self.classify(payload, src, tunnel_ip);
        match r {
            Ok(()) => {
                self.accepted += 1;
                self.accepted_bytes += (payload.len() + IPV4_HEADER + UDP_HEADER) as u64;
            }
            Err(e) => self.count(e),
        }
        r
    }

    fn classify(
        &mut self,
        pl: &[u8],
        src: Ipv4Addr,
        tunnel_ip: impl Fn(u32) -> Ipv4Addr,
    ) -> Result<(), Reject> {
        if pl.len() < PAYLOAD_HEADER || pl[0..4] != MAGIC {
            return Err(Reject::Foreign);
        }
        let be32 =
            |r: std::ops::Range<usize>| u32::from_be_bytes(pl[r].try_into().unwrap_or([0; 4]));
        if be32(4..8) != self.run {
            return Err(Reject::Foreign);
        }
        let seq = u64::from_be_bytes(pl[8..16].try_into().unwrap_or([0; 8]));
        let user = be32(16..20);
        let size = usize::from(u16::from_be_bytes([pl[20], pl[21]]));
        if size != pl.len() + IPV4_HEADER + UDP_HEADER {
            return Err(Reject::WrongSize);
        }
        if user >= self.users || tunnel_ip(user) != src {
            return Err(Reject::WrongUser);
        }
        if pl[PAYLOAD_HEADER..]
            .iter()
            .enumerate()
            .any(|(i, &b)| b != filler(seq, i))
        {
            return Err(Reject::Corrupt);
        }
        if seq >= self.total {
            return Err(Reject::OutOfRange);
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        let slot = self.seen.get_mut(word).ok_or(Reject::OutOfRange)?;
        if *slot & (1 << bit) != 0 {
            return Err(Reject::Duplicate);
        }
        *slot |= 1 << bit;
        Ok(())
    }

    /// Check one whole inner IPv4 packet that the gateway encrypted towards a user and that
    /// decrypted under `session_user`'s session (the inside -> users direction): it must be
    /// addressed to that user's tunnel address, claim that user, and pass [`Verifier::check`].
    pub fn check_to_user(
        &mut self,
        packet: &[u8],
        session_user: u32,
        tunnel_ip: impl Fn(u32) -> Ipv4Addr,
    ) -> Result<(), Reject> {
        let headers = IPV4_HEADER + UDP_HEADER;
        let total = packet
            .get(2..4)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        let r = if packet.len() < headers || packet[0] != 0x45 || packet[9] != PROTO_UDP {
            Err(Reject::Foreign)
        } else if total != packet.len() {
            Err(Reject::WrongSize)
        } else {
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            let pl = &packet[headers..];
            let claimed = pl
                .get(16..20)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            if dst != tunnel_ip(session_user) || claimed.is_some_and(|c| c != session_user) {
                Err(Reject::WrongUser)
            } else {
                return self.check(pl, dst, tunnel_ip);
            }
        };
        if let Err(e) = r {
            self.count(e);
        }
        r
    }

    /// Count a refusal found outside [`Verifier::check`] (e.g. a datagram that did not
    /// decrypt: [`Reject::Corrupt`]).
    pub fn count(&mut self, r: Reject) {
        match r {
            Reject::Foreign => self.foreign += 1,
            Reject::WrongSize => self.wrong_size += 1,
            Reject::WrongUser => self.wrong_user += 1,
            Reject::Corrupt => self.corrupt += 1,
            Reject::Duplicate => self.duplicate += 1,
            Reject::OutOfRange => self.out_of_range += 1,
        }
    }

    /// Packets refused for a reason that points at the gateway (not foreign ones).
    pub fn errors(&self) -> u64 {
        self.wrong_size + self.wrong_user + self.corrupt + self.duplicate + self.out_of_range
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SINK: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);

    fn user_ip(u: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 2)) + u)
    }

    fn packet(size: usize, stamp: Stamp) -> Vec<u8> {
        let mut b = vec![0u8; MAX_SIZE];
        let n = build(&mut b, size, user_ip(stamp.user), SINK, 9000, stamp);
        b.truncate(n);
        b
    }

    fn payload(p: &[u8]) -> &[u8] {
        &p[IPV4_HEADER + UDP_HEADER..]
    }

    #[test]
    fn built_packets_parse_as_the_gateway_sees_them() {
        for size in [64, 512, 576, 1420] {
            let st = Stamp {
                run: 7,
                seq: 123_456,
                user: 42,
            };
            let p = packet(size, st);
            assert_eq!(p.len(), size);
            let inner = sluice::proto::ip::parse(&p).unwrap();
            assert_eq!(inner.len, size);
            assert_eq!(inner.src, std::net::IpAddr::V4(user_ip(42)));
            assert_eq!(inner.dst, std::net::IpAddr::V4(SINK));
            // A header with its checksum in place sums to zero.
            assert_eq!(ipv4_checksum(&p[..IPV4_HEADER]), 0);
            assert_eq!(u16::from_be_bytes([p[22], p[23]]), 9000);
            assert_eq!(
                usize::from(u16::from_be_bytes([p[24], p[25]])),
                size - IPV4_HEADER
            );
        }
    }

    #[test]
    fn checksum_matches_a_known_header() {
        // The worked example of RFC 1071's usual illustration (Wikipedia's IPv4 header).
        let h: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
    }

    #[test]
    fn verifier_accepts_each_packet_once() {
        let mut v = Verifier::new(3, 100, 10);
        for seq in 0..100u64 {
            let st = Stamp {
                run: 3,
                seq,
                user: (seq % 10) as u32,
            };
            let p = packet(64 + (seq as usize % 3) * 100, st);
            assert_eq!(v.check(payload(&p), user_ip(st.user), user_ip), Ok(()));
        }
        assert_eq!(v.accepted, 100);
        let again = packet(
            64,
            Stamp {
                run: 3,
                seq: 5,
                user: 5,
            },
        );
        assert_eq!(
            v.check(payload(&again), user_ip(5), user_ip),
            Err(Reject::Duplicate)
        );
        assert_eq!((v.accepted, v.duplicate, v.errors()), (100, 1, 1));
    }

    #[test]
    fn verifier_refuses_what_is_wrong() {
        let st = Stamp {
            run: 1,
            seq: 9,
            user: 2,
        };
        let p = packet(512, st);
        let mut v = Verifier::new(1, 10, 4);
        // From another user's address.
        assert_eq!(
            v.check(payload(&p), user_ip(3), user_ip),
            Err(Reject::WrongUser)
        );
        // Truncated.
        assert_eq!(
            v.check(&payload(&p)[..400], user_ip(2), user_ip),
            Err(Reject::WrongSize)
        );
        // A flipped filler byte.
        let mut bad = payload(&p).to_vec();
        bad[300] ^= 1;
        assert_eq!(v.check(&bad, user_ip(2), user_ip), Err(Reject::Corrupt));
        // Another run, or not ours at all.
        let other = packet(64, Stamp { run: 2, ..st });
        assert_eq!(
            v.check(payload(&other), user_ip(2), user_ip),
            Err(Reject::Foreign)
        );
        assert_eq!(v.check(b"kick", user_ip(2), user_ip), Err(Reject::Foreign));
        // Beyond the run's packets.
        let far = packet(64, Stamp { seq: 64 * 5, ..st });
        assert_eq!(
            v.check(payload(&far), user_ip(2), user_ip),
            Err(Reject::OutOfRange)
        );
        // A user number beyond the users.
        let nobody = packet(64, Stamp { user: 9, ..st });
        assert_eq!(
            v.check(payload(&nobody), user_ip(9), user_ip),
            Err(Reject::WrongUser)
        );
        assert_eq!(v.accepted, 0);
        assert_eq!(v.errors(), 5);
        assert_eq!(v.foreign, 2);
        // And the right one still passes.
        assert_eq!(v.check(payload(&p), user_ip(2), user_ip), Ok(()));
    }

    /// The inside -> users check: a packet built by the sink for user 4, as the generator
    /// finds it after decrypting.
    #[test]
    fn check_to_user_binds_the_packet_to_the_session() {
        let st = Stamp {
            run: 5,
            seq: 17,
            user: 4,
        };
        let mut b = vec![0u8; MAX_SIZE];
        let n = build(&mut b, 512, SINK, user_ip(4), SRC_PORT, st);
        b.truncate(n);
        let mut v = Verifier::new(5, 100, 8);
        // Decrypted under another user's session.
        assert_eq!(v.check_to_user(&b, 3, user_ip), Err(Reject::WrongUser));
        // Truncated by the gateway (the IP length says 512).
        assert_eq!(
            v.check_to_user(&b[..300], 4, user_ip),
            Err(Reject::WrongSize)
        );
        // Claims user 4 but is addressed to user 3's tunnel address.
        let mut other = vec![0u8; MAX_SIZE];
        let m = build(&mut other, 512, SINK, user_ip(3), SRC_PORT, st);
        assert_eq!(
            v.check_to_user(&other[..m], 4, user_ip),
            Err(Reject::WrongUser)
        );
        assert_eq!(v.check_to_user(&b, 4, user_ip), Ok(()));
        assert_eq!(v.check_to_user(&b, 4, user_ip), Err(Reject::Duplicate));
        assert_eq!((v.accepted, v.errors()), (1, 4));
        assert_eq!(seq_of(&b[IPV4_HEADER + UDP_HEADER..]), Some(17));
    }

    #[test]
    fn sizes_parse_and_imix_mixes() {
        assert_eq!("64".parse::<SizeMix>(), Ok(SizeMix::Fixed(64)));
        assert_eq!("IMIX".parse::<SizeMix>(), Ok(SizeMix::Imix));
        assert!("40".parse::<SizeMix>().is_err());
        assert!("1500".parse::<SizeMix>().is_err());
        let sizes: Vec<usize> = (0..12).map(|s| SizeMix::Imix.size_of(s)).collect();
        assert_eq!(sizes.iter().filter(|&&s| s == 64).count(), 7);
        assert_eq!(sizes.iter().filter(|&&s| s == 576).count(), 4);
        assert_eq!(sizes.iter().filter(|&&s| s == 1420).count(), 1);
        assert!((SizeMix::Imix.mean() - (7.0 * 64.0 + 4.0 * 576.0 + 1420.0) / 12.0).abs() < 1e-9);
    }
}
