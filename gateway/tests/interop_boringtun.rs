//! In-process interop with boringtun, a third-party WireGuard implementation (Cloudflare's),
//! driven message by message: sluice as initiator and as responder, transport data both ways
//! (IPv4 and IPv6 inner), rekeying after REKEY_AFTER_TIME on a simulated clock, the cookie path
//! under load in both directions, and preshared keys.
//!
//! boringtun reads its clock through `mock_instant` (the `mock-instant` feature), whose clock is
//! per-thread; each test advances it in step with sluice's simulated clock.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use common::*;
use mock_instant::MockClock;
use sluice::proto::device::Received;
use sluice::proto::messages::{self, REKEY_AFTER_TIME, REKEY_TIMEOUT};
use sluice::proto::peer::{PeerConfig, PeerId};
use sluice::DropReason;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

const SLUICE_IP: [u8; 4] = [10, 0, 0, 1];
const BT_IP: [u8; 4] = [10, 0, 0, 2];

/// A boringtun endpoint on the simulated wire.
struct Bt {
    tunn: Tunn,
    addr: SocketAddr,
    delivered: Vec<Vec<u8>>,
    errors: Vec<String>,
}

impl Bt {
    fn new(
        private: [u8; 32],
        peer_public: [u8; 32],
        psk: Option<[u8; 32]>,
        limiter: Option<Arc<RateLimiter>>,
    ) -> Bt {
        Bt {
            tunn: Tunn::new(
                x25519::StaticSecret::from(private),
                x25519::PublicKey::from(peer_public),
                psk,
                None,
                7,
                limiter,
            ),
            addr: addr("192.0.2.2:51821"),
            delivered: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Feed boringtun a datagram; returns what it wants to send, draining its queue.
    fn receive(&mut self, from: SocketAddr, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut first = true;
        loop {
            let input: &[u8] = if first { data } else { &[] };
            let src = if first { Some(from.ip()) } else { None };
            match self.tunn.decapsulate(src, input, &mut buf) {
                TunnResult::WriteToNetwork(d) => out.push(d.to_vec()),
                TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                    self.delivered.push(p.to_vec());
                    break;
                }
                TunnResult::Done => break,
                TunnResult::Err(e) => {
                    self.errors.push(format!("{e:?}"));
                    break;
                }
            }
            first = false;
        }
        out
    }

    fn send(&mut self, packet: &[u8]) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        match self.tunn.encapsulate(packet, &mut buf) {
            TunnResult::WriteToNetwork(d) => vec![d.to_vec()],
            TunnResult::Done => vec![],
            other => panic!("boringtun encapsulate: {other:?}"),
        }
    }

    fn timers(&mut self) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        match self.tunn.update_timers(&mut buf) {
            TunnResult::WriteToNetwork(d) => vec![d.to_vec()],
            TunnResult::Done => vec![],
            TunnResult::Err(e) => {
                self.errors.push(format!("{e:?}"));
                vec![]
            }
            other => panic!("boringtun timers: {other:?}"),
        }
    }
}

/// sluice and boringtun on one simulated wire and clock.
struct Lab {
    clock: Clock,
    s: Node,
    bt: Bt,
    bt_peer: PeerId,
    /// Every datagram sent, with its message type, for assertions about the exchange.
    wire: Vec<(bool, u8)>,
}

impl Lab {
    fn new(seed: u64, psk: Option<[u8; 32]>, sluice_knows_endpoint: bool, bt_limiter: bool) -> Lab {
        let clock = Clock::new(seed);
        let (ks, kb) = (key(1), key(2));
        let mut s = Node::new(&ks, addr("192.0.2.1:51820"));
        let limiter = bt_limiter
            .then(|| Arc::new(RateLimiter::new(&x25519::PublicKey::from(public(&kb)), 0)));
        let bt = Bt::new(kb, public(&ks), psk, limiter);
        let bt_peer = s.add_peer_cfg(
            &clock,
            PeerConfig {
                public_key: public(&kb),
                preshared_key: psk.map(Zeroizing::new),
                endpoint: sluice_knows_endpoint.then_some(bt.addr),
                allowed_ips: vec![net("10.0.0.2/32"), net("fd00::2/128")],
                ..Default::default()
            },
        );
        Lab {
            clock,
            s,
            bt,
            bt_peer,
            wire: Vec::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.clock.advance(d);
        MockClock::advance(d);
    }

    /// Deliver boringtun's datagrams to sluice, and sluice's replies back, until quiet.
    fn deliver_to_sluice(&mut self, datagrams: Vec<Vec<u8>>) -> Vec<Result<Received, DropReason>> {
        let mut results = Vec::new();
        let mut pending = datagrams;
        for _ in 0..100 {
            if pending.is_empty() {
                break;
            }
            for d in std::mem::take(&mut pending) {
                self.wire.push((false, d[0]));
                results.push(self.s.receive(&mut self.clock, self.bt.addr, &d));
            }
            for t in self.s.transmits() {
                assert_eq!(t.dst, self.bt.addr);
                self.wire.push((true, t.data[0]));
                pending.extend(self.bt.receive(self.s.addr, &t.data));
            }
        }
        results
    }

    /// sluice sends an inner packet; everything that results is exchanged until quiet.
    fn sluice_sends(&mut self, packet: &[u8]) -> Result<(), DropReason> {
        let mut replies = Vec::new();
        if let Some(t) = self.s.send(&mut self.clock, packet)? {
            self.wire.push((true, t.data[0]));
            replies.extend(self.bt.receive(self.s.addr, &t.data));
        }
        for t in self.s.transmits() {
            self.wire.push((true, t.data[0]));
            replies.extend(self.bt.receive(self.s.addr, &t.data));
        }
        self.deliver_to_sluice(replies);
        Ok(())
    }

    fn bt_sends(&mut self, packet: &[u8]) -> Vec<Result<Received, DropReason>> {
        let out = self.bt.send(packet);
        self.deliver_to_sluice(out)
    }

    fn run_timers(&mut self) {
        self.s.dev.handle_timeout(&mut self.clock.cx());
        let mut out = Vec::new();
        for t in self.s.transmits() {
            self.wire.push((true, t.data[0]));
            out.extend(self.bt.receive(self.s.addr, &t.data));
        }
        out.extend(self.bt.timers());
        self.deliver_to_sluice(out);
    }

    fn sluice_delivered(&self) -> Vec<Vec<u8>> {
        self.s.delivered.iter().map(|(_, p)| p.clone()).collect()
    }

    fn count(&self, from_sluice: bool, t: u8) -> usize {
        self.wire
            .iter()
            .filter(|&&(f, ty)| f == from_sluice && ty == t)
            .count()
    }

    fn sluice_index(&self) -> u32 {
        self.s
            .dev
            .peer(self.bt_peer)
            .unwrap()
            .keypairs()
            .current()
            .unwrap()
            .local_index
    }
}

#[test]
fn sluice_initiates_and_data_flows_both_ways() {
    let mut lab = Lab::new(1, None, true, false);
    let out = ipv4(SLUICE_IP, BT_IP, b"sluice -> boringtun");
    lab.sluice_sends(&out).unwrap();
    assert_eq!(lab.count(true, messages::TYPE_INITIATION), 1);
    assert_eq!(lab.count(false, messages::TYPE_RESPONSE), 1);
    assert_eq!(
        lab.bt.delivered,
        vec![out],
        "boringtun errors: {:?}",
        lab.bt.errors
    );

    let back = ipv4(BT_IP, SLUICE_IP, &[0x5a; 1400]);
    lab.bt_sends(&back);
    assert_eq!(lab.sluice_delivered(), vec![back]);

    let v6 = ipv6(
        "fd00::1".parse().unwrap(),
        "fd00::2".parse().unwrap(),
        b"six",
    );
    lab.sluice_sends(&v6).unwrap();
    assert_eq!(lab.bt.delivered.last(), Some(&v6));
    let v6_back = ipv6(
        "fd00::2".parse().unwrap(),
        "fd00::1".parse().unwrap(),
        &[6; 999],
    );
    lab.bt_sends(&v6_back);
    assert_eq!(lab.sluice_delivered().last(), Some(&v6_back));
    assert!(lab.bt.errors.is_empty(), "{:?}", lab.bt.errors);
    assert_eq!(lab.s.drops.total(), 0);
}

#[test]
fn boringtun_initiates_and_sluice_responds() {
    let mut lab = Lab::new(2, None, false, false);
    let hello = ipv4(BT_IP, SLUICE_IP, b"boringtun -> sluice");
    let results = lab.bt_sends(&hello);
    assert!(
        matches!(results[0], Ok(Received::Handshake { .. })),
        "{results:?}"
    );
    assert_eq!(lab.count(false, messages::TYPE_INITIATION), 1);
    assert_eq!(lab.count(true, messages::TYPE_RESPONSE), 1);
    assert_eq!(lab.sluice_delivered(), vec![hello]);
    // sluice learned boringtun's endpoint from the authenticated initiation.
    assert_eq!(
        lab.s.dev.peer(lab.bt_peer).unwrap().endpoint(),
        Some(lab.bt.addr)
    );

    let reply = ipv4(SLUICE_IP, BT_IP, b"and back");
    lab.sluice_sends(&reply).unwrap();
    assert_eq!(lab.bt.delivered, vec![reply]);
    assert!(lab.bt.errors.is_empty(), "{:?}", lab.bt.errors);
}

#[test]
fn sluice_rekeys_after_rekey_after_time() {
    let mut lab = Lab::new(3, None, true, false);
    lab.sluice_sends(&ipv4(SLUICE_IP, BT_IP, b"first")).unwrap();
    let first = lab.sluice_index();
    let mut n = 0;
    while lab.clock.now.saturating_since(sluice::proto::Time::ZERO)
        < REKEY_AFTER_TIME + Duration::from_secs(3)
    {
        lab.advance(Duration::from_secs(4));
        lab.run_timers();
        lab.sluice_sends(&ipv4(SLUICE_IP, BT_IP, format!("tick {n}").as_bytes()))
            .unwrap();
        lab.bt_sends(&ipv4(BT_IP, SLUICE_IP, format!("tock {n}").as_bytes()));
        n += 1;
    }
    assert_eq!(
        lab.count(true, messages::TYPE_INITIATION),
        2,
        "one rekey by sluice"
    );
    assert_ne!(lab.sluice_index(), first, "new keypair in use");
    // Nothing was lost across the rekey, in either direction.
    assert_eq!(lab.bt.delivered.len(), n + 1);
    assert_eq!(lab.sluice_delivered().len(), n);
    // And the new session works.
    let after = ipv4(SLUICE_IP, BT_IP, b"after rekey");
    lab.sluice_sends(&after).unwrap();
    assert_eq!(lab.bt.delivered.last(), Some(&after));
    assert_eq!(lab.s.drops.total(), 0, "{:?}", lab.s.drops);
}

#[test]
fn boringtun_rekeys_and_sluice_follows() {
    let mut lab = Lab::new(4, None, false, false);
    lab.bt_sends(&ipv4(BT_IP, SLUICE_IP, b"first"));
    lab.sluice_sends(&ipv4(SLUICE_IP, BT_IP, b"ack")).unwrap();
    let first = lab.sluice_index();
    let mut n = 0;
    while lab.clock.now.saturating_since(sluice::proto::Time::ZERO)
        < REKEY_AFTER_TIME + Duration::from_secs(10)
    {
        lab.advance(Duration::from_secs(4));
        lab.run_timers();
        lab.bt_sends(&ipv4(BT_IP, SLUICE_IP, format!("tick {n}").as_bytes()));
        lab.sluice_sends(&ipv4(SLUICE_IP, BT_IP, format!("tock {n}").as_bytes()))
            .unwrap();
        n += 1;
    }
    assert!(
        lab.count(false, messages::TYPE_INITIATION) >= 2,
        "boringtun rekeyed"
    );
    assert_ne!(lab.sluice_index(), first);
    let after = ipv4(BT_IP, SLUICE_IP, b"after rekey");
    lab.bt_sends(&after);
    assert_eq!(lab.sluice_delivered().last(), Some(&after));
    let after2 = ipv4(SLUICE_IP, BT_IP, b"after rekey 2");
    lab.sluice_sends(&after2).unwrap();
    assert_eq!(lab.bt.delivered.last(), Some(&after2));
}

#[test]
fn sluice_under_load_makes_boringtun_earn_a_cookie() {
    let mut lab = Lab::new(5, None, false, false);
    let now = lab.clock.now;
    lab.s.dev.set_under_load(now, true);
    let hello = ipv4(BT_IP, SLUICE_IP, b"knock knock");
    let results = lab.bt_sends(&hello);
    assert_eq!(results, vec![Err(DropReason::CookieRequired)]);
    assert_eq!(lab.count(true, messages::TYPE_COOKIE_REPLY), 1);
    assert!(lab.sluice_delivered().is_empty());
    // boringtun retries on its timer, now with mac2 from the cookie; sluice, still under
    // load, accepts it.
    for _ in 0..8 {
        lab.advance(Duration::from_secs(1));
        let now = lab.clock.now;
        lab.s.dev.set_under_load(now, true);
        lab.run_timers();
    }
    assert!(lab.s.dev.is_under_load(lab.clock.now));
    assert_eq!(
        lab.count(true, messages::TYPE_RESPONSE),
        1,
        "{:?}",
        lab.s.drops
    );
    assert_eq!(lab.sluice_delivered(), vec![hello]);
    assert_eq!(lab.count(true, messages::TYPE_COOKIE_REPLY), 1);
}

#[test]
fn boringtun_under_load_makes_sluice_earn_a_cookie() {
    let mut lab = Lab::new(6, None, true, true);
    let out = ipv4(SLUICE_IP, BT_IP, b"busy?");
    lab.sluice_sends(&out).unwrap();
    assert_eq!(lab.count(false, messages::TYPE_COOKIE_REPLY), 1);
    assert!(lab.bt.delivered.is_empty());
    // sluice retransmits after REKEY_TIMEOUT (+ jitter) with mac2.
    lab.advance(REKEY_TIMEOUT + Duration::from_millis(400));
    lab.run_timers();
    assert_eq!(lab.count(true, messages::TYPE_INITIATION), 2);
    assert_eq!(
        lab.count(false, messages::TYPE_RESPONSE),
        1,
        "bt errors {:?}",
        lab.bt.errors
    );
    assert_eq!(lab.bt.delivered, vec![out]);
}

#[test]
fn preshared_key_both_ways() {
    let psk = Some([0x42; 32]);
    let mut lab = Lab::new(7, psk, true, false);
    let out = ipv4(SLUICE_IP, BT_IP, b"with psk");
    lab.sluice_sends(&out).unwrap();
    assert_eq!(lab.bt.delivered, vec![out]);

    let mut lab = Lab::new(8, psk, false, false);
    let hello = ipv4(BT_IP, SLUICE_IP, b"with psk, other way");
    lab.bt_sends(&hello);
    assert_eq!(lab.sluice_delivered(), vec![hello]);
}

#[test]
fn mismatched_preshared_key_never_completes() {
    // sluice has a PSK, boringtun has another: boringtun answers the initiation (the PSK is
    // mixed in only at the response) but sluice cannot authenticate the response.
    let clock = Clock::new(9);
    let (ks, kb) = (key(1), key(2));
    let mut s = Node::new(&ks, addr("192.0.2.1:51820"));
    let mut bt = Bt::new(kb, public(&ks), Some([1; 32]), None);
    s.add_peer_cfg(
        &clock,
        PeerConfig {
            public_key: public(&kb),
            preshared_key: Some(Zeroizing::new([2; 32])),
            endpoint: Some(bt.addr),
            allowed_ips: vec![net("10.0.0.2/32")],
            ..Default::default()
        },
    );
    let mut clock = clock;
    assert!(s
        .send(&mut clock, &ipv4(SLUICE_IP, BT_IP, b"x"))
        .unwrap()
        .is_none());
    let init = s.transmits().pop().unwrap();
    let resp = bt.receive(s.addr, &init.data);
    assert_eq!(resp.len(), 1);
    assert_eq!(
        s.receive(&mut clock, bt.addr, &resp[0]),
        Err(DropReason::HandshakeFailed)
    );
}

#[test]
fn boringtun_rejects_tampered_sluice_messages() {
    // The other direction of "tampered bytes are rejected": a real implementation refuses
    // sluice's messages when altered, proving sluice's macs and AEAD are what it checks.
    let mut lab = Lab::new(10, None, true, false);
    assert!(lab
        .s
        .send(&mut lab.clock, &ipv4(SLUICE_IP, BT_IP, b"x"))
        .unwrap()
        .is_none());
    let init = lab.s.transmits().pop().unwrap();
    for pos in [0, 4, 8, 40, 90, 120, 116, 131] {
        let mut t = init.data.clone();
        t[pos] ^= 1;
        let mut fresh = Bt::new(key(2), public(&key(1)), None, None);
        let replies = fresh.receive(lab.s.addr, &t);
        assert!(
            replies.is_empty(),
            "boringtun answered an initiation tampered at {pos}"
        );
    }
}
