//! Where a peer is: its address, and ours that it sent to.
//!
//! The kernel's WireGuard and wireguard-go keep, per peer, the local address the peer's last
//! authenticated packet arrived on (a "sticky" source) and send everything to that peer from
//! it. A gateway with several addresses (its own, a VRRP VIP, an anycast address) must answer
//! from the one the client reached: a reply from another address makes the client roam its
//! endpoint there, and a failover can then never reach it again. Like the endpoint, the source
//! is learned only from authenticated packets (whitepaper §6.5, roaming).

use std::net::{IpAddr, SocketAddr};

/// A peer's endpoint and the source address to send to it from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The peer's address and port.
    pub addr: SocketAddr,
    /// Our address the peer sent to; `None`: unknown (a configured endpoint not heard from
    /// yet, or an I/O layer that cannot tell), and the kernel picks the source.
    pub local: Option<IpAddr>,
}

impl Endpoint {
    /// An endpoint with no known source.
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, local: None }
    }

    /// An endpoint reached at `local`. IPv4-mapped IPv6 (as a dual-stack socket reports an
    /// IPv4 destination) becomes plain IPv4; a source of the other family than `addr`, or an
    /// unspecified one, is no source at all.
    pub fn with_local(addr: SocketAddr, local: Option<IpAddr>) -> Endpoint {
        let local = local.map(canonical).filter(|l| {
            !l.is_unspecified() && !l.is_multicast() && l.is_ipv4() == addr.ip().is_ipv4()
        });
        Endpoint { addr, local }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::new(addr)
    }
}

impl core::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.local {
            Some(l) => write!(f, "{} (from {l})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// IPv4-mapped IPv6 as IPv4; anything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_canonical_and_of_the_peers_family() {
        let v4: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let cases = [
            (v4, ip("::ffff:198.51.100.10"), ip("198.51.100.10")),
            (v4, ip("198.51.100.10"), ip("198.51.100.10")),
            (v4, ip("2001:db8::1"), None),
            (v4, ip("0.0.0.0"), None),
            (v4, ip("224.0.0.1"), None),
            (v6, ip("2001:db8::1"), ip("2001:db8::1")),
            (v6, ip("::ffff:198.51.100.10"), None),
            (v6, ip("::"), None),
            (v6, None, None),
        ];
        for (addr, local, want) in cases {
            assert_eq!(
                Endpoint::with_local(addr, local).local,
                want,
                "{addr} {local:?}"
            );
        }
        assert_eq!(Endpoint::from(v4), Endpoint::new(v4));
        assert_eq!(
            Endpoint::with_local(v4, ip("198.51.100.10")).to_string(),
            "198.51.100.7:4000 (from 198.51.100.10)"
        );
    }
}
