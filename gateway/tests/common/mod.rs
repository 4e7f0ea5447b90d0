//! A simulated network and clock for driving sluice devices (and real WireGuard
//! implementations) in memory. Nothing here touches a socket: "addresses" are labels.
#![allow(dead_code)]

use sluice::proto::device::{Context, Device, Received, Sent, Transmit};
use sluice::proto::peer::{PeerConfig, PeerId};
use sluice::proto::{SeededRng, Time, WallTime};
use sluice::DropReason;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Wall clock at simulation start (a fixed date, so runs repeat exactly).
pub const WALL_START: u64 = 1_800_000_000;

pub struct Clock {
    pub now: Time,
    pub rng: SeededRng,
}

impl Clock {
    pub fn new(seed: u64) -> Clock {
        Clock {
            now: Time::ZERO + Duration::from_secs(1),
            rng: SeededRng::new(seed),
        }
    }
    pub fn wall(&self) -> WallTime {
        let d = self.now.saturating_since(Time::ZERO);
        WallTime::new(WALL_START + d.as_secs(), d.subsec_nanos())
    }
    pub fn cx(&mut self) -> Context<'_> {
        let wall = self.wall();
        Context {
            now: self.now,
            wall,
            rng: &mut self.rng,
        }
    }
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }
}

pub fn key(seed: u8) -> [u8; 32] {
    let mut k = [seed; 32];
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

pub fn public(private: &[u8; 32]) -> [u8; 32] {
    sluice::keys::public_from_private(private)
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> (IpAddr, u8) {
    let (a, l) = s.split_once('/').unwrap();
    (a.parse().unwrap(), l.parse().unwrap())
}

/// An IPv4 packet (UDP protocol number, arbitrary payload) from `src` to `dst`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let len = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let mut sum: u32 = 0;
    for c in p.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// One sluice device with its simulated address.
pub struct Node {
    pub dev: Device,
    pub addr: SocketAddr,
    pub delivered: Vec<(PeerId, Vec<u8>)>,
    pub drops: sluice::DropCounters,
}

impl Node {
    pub fn new(private: &[u8; 32], addr: SocketAddr) -> Node {
        Node {
            dev: Device::new(private),
            addr,
            delivered: Vec::new(),
            drops: Default::default(),
        }
    }

    pub fn add_peer(
        &mut self,
        clock: &Clock,
        public: [u8; 32],
        endpoint: Option<SocketAddr>,
        allowed: &[&str],
    ) -> PeerId {
        self.add_peer_cfg(
            clock,
            PeerConfig {
                public_key: public,
                endpoint,
                allowed_ips: allowed.iter().map(|s| net(s)).collect(),
                ..PeerConfig::default()
            },
        )
    }

    pub fn add_peer_cfg(&mut self, clock: &Clock, cfg: PeerConfig) -> PeerId {
        self.dev.add_peer(clock.now, &cfg).unwrap()
    }

    /// Send an inner packet; returns the datagram if it went out at once.
    pub fn send(
        &mut self,
        clock: &mut Clock,
        packet: &[u8],
    ) -> Result<Option<Transmit>, DropReason> {
        let mut out = vec![0u8; packet.len() + 64];
        match self.dev.send(&mut clock.cx(), packet, &mut out)? {
            Sent::Transmit { dst, src, len, .. } => {
                out.truncate(len);
                Ok(Some(Transmit {
                    dst,
                    src,
                    data: out,
                }))
            }
            Sent::Staged { .. } => Ok(None),
        }
    }

    /// Feed a datagram in, recording delivered packets and drops.
    pub fn receive(
        &mut self,
        clock: &mut Clock,
        src: SocketAddr,
        data: &[u8],
    ) -> Result<Received, DropReason> {
        let mut buf = data.to_vec();
        let r = self.dev.handle_datagram(&mut clock.cx(), src, &mut buf);
        match &r {
            Ok(Received::Data { peer, packet }) => {
                self.delivered.push((*peer, buf[packet.clone()].to_vec()))
            }
            Ok(_) => {}
            Err(reason) => self.drops.count(*reason),
        }
        r
    }

    pub fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.dev.poll_transmit()).collect()
    }
}

/// A datagram in flight between two nodes.
#[derive(Clone, Debug)]
pub struct Wire {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
    /// Simulated time since the clock's origin when it was put on the wire.
    pub at: Duration,
}

impl Wire {
    pub fn new(from: SocketAddr, to: SocketAddr, data: Vec<u8>) -> Wire {
        Wire {
            from,
            to,
            data,
            at: Duration::ZERO,
        }
    }
}

/// Two nodes on a simulated wire, with a log of every datagram and a loss filter.
pub struct Pair {
    pub clock: Clock,
    pub a: Node,
    pub b: Node,
    pub log: Vec<Wire>,
    /// Return false to drop a datagram in flight.
    pub filter: Box<dyn FnMut(&Wire) -> bool>,
}

impl Pair {
    /// A at 192.0.2.1:1000 with tunnel address 10.0.0.1, B at 192.0.2.2:2000 with 10.0.0.2;
    /// A knows B's endpoint, B learns A's.
    pub fn new(seed: u64) -> (Pair, PeerId, PeerId) {
        let clock = Clock::new(seed);
        let (ka, kb) = (key(1), key(2));
        let mut a = Node::new(&ka, addr("192.0.2.1:1000"));
        let mut b = Node::new(&kb, addr("192.0.2.2:2000"));
        let b_at_a = a.add_peer(
            &clock,
            public(&kb),
            Some(b.addr),
            &["10.0.0.2/32", "fd00::2/128"],
        );
        let a_at_b = b.add_peer(&clock, public(&ka), None, &["10.0.0.1/32", "fd00::1/128"]);
        (
            Pair {
                clock,
                a,
                b,
                log: Vec::new(),
                filter: Box::new(|_| true),
            },
            b_at_a,
            a_at_b,
        )
    }

    /// Deliver a datagram (if the filter lets it through).
    pub fn deliver(&mut self, mut w: Wire) -> Option<Result<Received, DropReason>> {
        w.at = self.clock.now.saturating_since(Time::ZERO);
        self.log.push(w.clone());
        if !(self.filter)(&w) {
            return None;
        }
        let Pair { clock, a, b, .. } = self;
        let node = if w.to == a.addr {
            a
        } else if w.to == b.addr {
            b
        } else {
            return None;
        };
        Some(node.receive(clock, w.from, &w.data))
    }

    /// Move every queued transmit until both sides are quiet.
    pub fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for from_a in [true, false] {
                let (from, txs) = if from_a {
                    (self.a.addr, self.a.transmits())
                } else {
                    (self.b.addr, self.b.transmits())
                };
                for t in txs {
                    moved = true;
                    self.deliver(Wire::new(from, t.dst, t.data));
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the two nodes never went quiet");
    }

    /// Run timers on both sides up to `now + d`, pumping traffic at every deadline.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.clock.now + d;
        loop {
            let next = [self.a.dev.poll_timeout(), self.b.dev.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    if t > self.clock.now {
                        self.clock.now = t;
                    }
                    self.a.dev.handle_timeout(&mut self.clock.cx());
                    self.b.dev.handle_timeout(&mut self.clock.cx());
                    self.pump();
                }
                _ => break,
            }
        }
        self.clock.now = end;
    }

    /// A sends an inner packet to B through the tunnel, pumping until quiet.
    pub fn a_to_b(&mut self, packet: &[u8]) -> Result<(), DropReason> {
        if let Some(t) = self.a.send(&mut self.clock, packet)? {
            let from = self.a.addr;
            self.deliver(Wire::new(from, t.dst, t.data));
        }
        self.pump();
        Ok(())
    }

    pub fn b_to_a(&mut self, packet: &[u8]) -> Result<(), DropReason> {
        if let Some(t) = self.b.send(&mut self.clock, packet)? {
            let from = self.b.addr;
            self.deliver(Wire::new(from, t.dst, t.data));
        }
        self.pump();
        Ok(())
    }
}
