//! Peer input never panics, and bad input is rejected.
//!
//! Everything that reaches a device from the network (and every inner packet handed to it from
//! the tunnel) is attacker-controlled. These property tests throw random, half-valid and
//! mutated-genuine input at each entry point and compare the exact verdict with a model written
//! here from the whitepaper's numbers rather than from sluice's own constants, so a test fails on
//! a wrong verdict, not only on a panic. Every model also has cases that must be *accepted*
//! (genuine originals, well-formed packets), so a device that rejected everything would fail too.

#![allow(clippy::unwrap_used)] // the shared harness unwraps: in a test, a panic is the report

mod common;

use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};
use sluice::keys::{decode_key, encode_key};
use sluice::proto::cookie::{CookieChecker, CookieGenerator};
use sluice::proto::device::{Received, Sent, Transmit};
use sluice::proto::ip;
use sluice::proto::messages::{
    self, cookie_reply, initiation, response, transport, CookieReply, Message, ParseError,
    REJECT_AFTER_MESSAGES,
};
use sluice::proto::noise::HandshakeState;
use sluice::proto::peer::PeerId;
use sluice::proto::SeededRng;
use sluice::DropReason;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Shared helpers and the wire-format model.
// ---------------------------------------------------------------------------------------------

/// A fixed number of cases, and no regression files written into the source tree on failure:
/// proptest prints the minimal failing input, and `PROPTEST_RNG_SEED` replays a run.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const A_IP: [u8; 4] = [10, 0, 0, 1];
const B_IP: [u8; 4] = [10, 0, 0, 2];
const A_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const B_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// Message sizes from the whitepaper (§5.4.2–§5.4.6), written out so that a layout bug in
/// `messages.rs` can't hide by agreeing with itself.
const INIT_LEN: usize = 148;
const RESP_LEN: usize = 92;
const COOKIE_LEN: usize = 64;
const TRANSPORT_MIN: usize = 32;
/// Field offsets the models read, from the same tables.
const INIT_NOISE: Range<usize> = 8..116; // ephemeral, encrypted static, encrypted timestamp
const RESP_RECEIVER: Range<usize> = 8..12;
const RESP_NOISE: Range<usize> = 12..60; // ephemeral, encrypted empty payload
const RECEIVER: Range<usize> = 4..8; // cookie reply and transport
const COUNTER: Range<usize> = 8..16; // transport
/// Whitepaper §5.4.6: pad to a multiple of 16, never beyond the MTU (wg-quick's 1420).
const MTU: usize = 1420;

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// What `messages::parse` must say about a datagram: its type, or why it is not a message.
fn model_parse(d: &[u8]) -> Result<u8, ParseError> {
    if d.len() < 4 || !(1..=4).contains(&d[0]) {
        return Err(ParseError::UnknownType);
    }
    if d[1..4] != [0, 0, 0] {
        return Err(ParseError::ReservedNonZero);
    }
    let len_ok = match d[0] {
        1 => d.len() == INIT_LEN,
        2 => d.len() == RESP_LEN,
        3 => d.len() == COOKIE_LEN,
        _ => d.len() >= TRANSPORT_MIN,
    };
    if len_ok {
        Ok(d[0])
    } else {
        Err(ParseError::BadLength)
    }
}

fn kind(m: &Message<'_>) -> u8 {
    match m {
        Message::Initiation(_) => 1,
        Message::Response(_) => 2,
        Message::CookieReply(_) => 3,
        Message::Transport(_) => 4,
    }
}

fn model_padded(n: usize) -> usize {
    let padded = n.div_ceil(16) * 16;
    if padded > MTU {
        n.max(MTU)
    } else {
        padded
    }
}

/// RFC 791 / RFC 8200 header rules: (source, destination, length the header claims), or None
/// for anything that is not a complete IPv4 or IPv6 packet.
fn model_ip(p: &[u8]) -> Option<(IpAddr, IpAddr, usize)> {
    let be16 = |b: &[u8]| usize::from(u16::from_be_bytes([b[0], b[1]]));
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = be16(&p[2..4]);
            if ihl < 20 || total < ihl || total > p.len() {
                return None;
            }
            let src: [u8; 4] = p[12..16].try_into().ok()?;
            let dst: [u8; 4] = p[16..20].try_into().ok()?;
            Some((src.into(), dst.into(), total))
        }
        6 if p.len() >= 40 => {
            let total = 40 + be16(&p[4..6]);
            if total > p.len() {
                return None;
            }
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            Some((src.into(), dst.into(), total))
        }
        _ => None,
    }
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
    ]
}

/// What an accepted datagram turned out to be, without the peer ids and ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Handshake,
    CookieReply,
    Keepalive,
    Data,
}

fn outcome(r: &Received) -> Outcome {
    match r {
        Received::Handshake { .. } => Outcome::Handshake,
        Received::CookieReply { .. } => Outcome::CookieReply,
        Received::Keepalive { .. } => Outcome::Keepalive,
        Received::Data { .. } => Outcome::Data,
    }
}

/// What a genuine message is when its recipient accepts it.
fn genuine_outcome(msg: &[u8]) -> Outcome {
    match msg[0] {
        1 | 2 => Outcome::Handshake,
        3 => Outcome::CookieReply,
        _ if msg.len() == TRANSPORT_MIN => Outcome::Keepalive,
        _ => Outcome::Data,
    }
}

/// A cookie reply must go back to the source of the message it answers, addressed to that
/// message's sender index, and nothing else may be sent.
fn check_cookie_reply_sent(
    txs: &[Transmit],
    src: SocketAddr,
    sender: &[u8],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(txs.len(), 1, "exactly one cookie reply: {:?}", txs);
    let t = &txs[0];
    prop_assert_eq!(t.dst, src);
    prop_assert_eq!(t.data.len(), COOKIE_LEN);
    prop_assert_eq!(&t.data[..4], &[3u8, 0, 0, 0][..]);
    prop_assert_eq!(&t.data[RECEIVER], sender);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// messages::parse
// ---------------------------------------------------------------------------------------------

/// Raw bytes, plus datagrams with a type byte near the valid range, mostly-zero reserved bytes
/// and lengths at the edges, so the length and reserved checks are reached and not only the
/// type check.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let raw = prop::collection::vec(any::<u8>(), 0..2000);
    let edge_lengths = vec![
        0, 1, 3, 4, 31, 32, 33, 63, 64, 65, 91, 92, 93, 147, 148, 149,
    ];
    let len = prop_oneof![prop::sample::select(edge_lengths), 0..2000usize];
    let shaped = (
        0u8..=6,
        prop::option::weighted(0.2, any::<[u8; 3]>()),
        len.prop_flat_map(|n| prop::collection::vec(any::<u8>(), n)),
    )
        .prop_map(|(t, reserved, mut d)| {
            let header = [t, 0, 0, 0];
            let reserved = reserved.unwrap_or([0; 3]);
            for (i, b) in d.iter_mut().take(4).enumerate() {
                *b = if i == 0 { header[0] } else { reserved[i - 1] };
            }
            d
        });
    prop_oneof![raw, shaped]
}

proptest! {
    #![proptest_config(config(1024))]

    /// Arbitrary datagrams are classified exactly as the whitepaper's (type, length) table says,
    /// and an accepted view covers the whole datagram and reads its fields from the right bytes.
    #[test]
    fn parse_matches_the_wire_format_model(d in datagram()) {
        let got = messages::parse(&d);
        prop_assert_eq!(got.as_ref().map(kind).map_err(|e| *e), model_parse(&d));
        match got {
            Ok(Message::Initiation(m)) => {
                prop_assert_eq!(m.as_bytes().len(), d.len());
                prop_assert_eq!(m.sender(), le32(&d[4..8]));
            }
            Ok(Message::Response(m)) => {
                prop_assert_eq!(m.as_bytes().len(), d.len());
                prop_assert_eq!((m.sender(), m.receiver()), (le32(&d[4..8]), le32(&d[8..12])));
            }
            Ok(Message::CookieReply(m)) => {
                prop_assert_eq!(m.as_bytes().len(), d.len());
                prop_assert_eq!(m.receiver(), le32(&d[RECEIVER]));
            }
            Ok(Message::Transport(m)) => {
                prop_assert_eq!(m.as_bytes().len(), d.len());
                prop_assert_eq!(m.receiver(), le32(&d[RECEIVER]));
                prop_assert_eq!(m.counter(), le64(&d[COUNTER]));
                prop_assert_eq!(m.sealed(), &d[16..]);
            }
            Err(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// For each type, with a correct header and random contents, every length is tried: every
    /// truncation and 1..=64 bytes of oversize for the fixed-size types, everything below the
    /// minimum for transport data. Only the right length parses; a truncation that leaves less
    /// than the 4-byte header has no type at all.
    #[test]
    fn every_wrong_length_of_each_type_is_bad_length(
        body in prop::collection::vec(any::<u8>(), INIT_LEN + 64 + 1),
    ) {
        for (t, proper) in [(1u8, INIT_LEN), (2, RESP_LEN), (3, COOKIE_LEN)] {
            for n in 0..=proper + 64 {
                let mut d = body[..n].to_vec();
                for (i, b) in d.iter_mut().take(4).enumerate() {
                    *b = if i == 0 { t } else { 0 };
                }
                let want = if n < 4 {
                    Err(ParseError::UnknownType)
                } else if n == proper {
                    Ok(t)
                } else {
                    Err(ParseError::BadLength)
                };
                let got = messages::parse(&d).map(|m| kind(&m));
                prop_assert_eq!(got, want, "type {} at length {}", t, n);
            }
        }
        for n in 0..body.len() {
            let mut d = body[..n].to_vec();
            for (i, b) in d.iter_mut().take(4).enumerate() {
                *b = if i == 0 { 4 } else { 0 };
            }
            let want = match n {
                0..4 => Err(ParseError::UnknownType),
                4..TRANSPORT_MIN => Err(ParseError::BadLength),
                _ => Ok(4),
            };
            prop_assert_eq!(messages::parse(&d).map(|m| kind(&m)), want, "transport at {}", n);
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// A message of the right type and length with any reserved byte set is refused.
    #[test]
    fn nonzero_reserved_bytes_are_rejected(
        t in 1u8..=4,
        reserved in any::<[u8; 3]>().prop_filter("some reserved byte set", |r| r != &[0; 3]),
        body in prop::collection::vec(any::<u8>(), 2000),
        transport_len in TRANSPORT_MIN..2000,
    ) {
        let n = match t {
            1 => INIT_LEN,
            2 => RESP_LEN,
            3 => COOKIE_LEN,
            _ => transport_len,
        };
        let mut d = body[..n].to_vec();
        d[0] = t;
        d[1..4].copy_from_slice(&reserved);
        prop_assert_eq!(messages::parse(&d).map(|m| kind(&m)), Err(ParseError::ReservedNonZero));
        // The same message with the reserved bytes cleared parses: the test can fail.
        d[1..4].fill(0);
        prop_assert_eq!(messages::parse(&d).map(|m| kind(&m)), Ok(t));
    }

    /// Type bytes 0 and 5..=255 are not WireGuard messages, whatever follows them.
    #[test]
    fn unknown_types_are_rejected(
        t in prop_oneof![Just(0u8), 5u8..=255],
        rest in prop::collection::vec(any::<u8>(), 0..2000),
    ) {
        let mut d = vec![t];
        d.extend_from_slice(&rest);
        prop_assert_eq!(messages::parse(&d).map(|m| kind(&m)), Err(ParseError::UnknownType));
        // And with zero reserved bytes at each message size, the likeliest way to pass for one.
        for n in [INIT_LEN, RESP_LEN, COOKIE_LEN, TRANSPORT_MIN, 1500] {
            let mut d = vec![0u8; n];
            d[0] = t;
            prop_assert_eq!(
                messages::parse(&d).map(|m| kind(&m)),
                Err(ParseError::UnknownType),
                "type {} at length {}", t, n
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Device::handle_datagram: random and half-valid datagrams
// ---------------------------------------------------------------------------------------------

/// The packet A stages before the handshake in [`pending`].
const STAGED: &[u8] = b"staged until the handshake completes";

/// Both devices mid-handshake: A has sent an initiation (its handshake index is live), B has
/// answered (its new keypair waits in `next`), and B's response is held back. So each side
/// holds exactly one live index, and the held response is a probe: if it still completes the
/// handshake and delivers A's staged packet after junk was thrown at A and B, the junk changed
/// nothing on either side.
struct Pending {
    p: Pair,
    b_at_a: PeerId,
    a_at_b: PeerId,
    initiation: Wire,
    response: Wire,
    /// A's handshake index: the sender field of its initiation.
    a_handshake: u32,
    /// B's keypair index: the sender field of its response.
    b_keypair: u32,
}

fn find(log: &[Wire], kind: u8) -> Wire {
    log.iter()
        .find(|w| w.data[0] == kind)
        .cloned()
        .expect("the exchange sent this type")
}

fn pending(seed: u64) -> Pending {
    let (mut p, b_at_a, a_at_b) = Pair::new(seed);
    p.filter = Box::new(|w| w.data[0] != messages::TYPE_RESPONSE);
    p.a_to_b(&ipv4(A_IP, B_IP, STAGED))
        .expect("A stages the packet and initiates");
    p.filter = Box::new(|_| true);
    let initiation = find(&p.log, messages::TYPE_INITIATION);
    let response = find(&p.log, messages::TYPE_RESPONSE);
    let a_handshake = le32(&initiation.data[4..8]);
    let b_keypair = le32(&response.data[4..8]);
    // The verdict models below rely on these being the only live indices.
    let a_peer = p.a.dev.peer(b_at_a).expect("A's peer");
    let b_peer = p.b.dev.peer(a_at_b).expect("B's peer");
    assert_eq!(a_peer.handshake_state(), HandshakeState::CreatedInitiation);
    assert_eq!(a_peer.keypairs().indices().count(), 0);
    assert_eq!(b_peer.keypairs().indices().collect::<Vec<_>>(), [b_keypair]);
    assert!(b_peer.keypairs().has_next());
    // Setup events (B learning A's endpoint) are not what the tests look for.
    drain_events(&mut p.a);
    drain_events(&mut p.b);
    Pending {
        p,
        b_at_a,
        a_at_b,
        initiation,
        response,
        a_handshake,
        b_keypair,
    }
}

impl Pending {
    fn receive(&mut self, to_a: bool, src: SocketAddr, d: &[u8]) -> Result<Received, DropReason> {
        let Pair { clock, a, b, .. } = &mut self.p;
        let node = if to_a { a } else { b };
        node.receive(clock, src, d)
    }

    fn transmits(&mut self) -> Vec<Transmit> {
        let mut t = self.p.a.transmits();
        t.extend(self.p.b.transmits());
        t
    }

    fn set_under_load(&mut self, a: bool) {
        let now = self.p.clock.now;
        let node = if a { &mut self.p.a } else { &mut self.p.b };
        node.dev.set_under_load(now, true);
    }

    /// The held response completes the handshake and A's staged packet reaches B.
    fn assert_intact(&mut self) -> Result<(), TestCaseError> {
        // A load report holds for a second; let it lapse so the response needs no cookie.
        self.p.clock.advance(Duration::from_secs(2));
        let r = self.p.deliver(self.response.clone());
        prop_assert_eq!(
            r,
            Some(Ok(Received::Handshake { peer: self.b_at_a })),
            "the held response no longer completes the handshake"
        );
        self.p.pump();
        prop_assert_eq!(
            &self.p.b.delivered,
            &vec![(self.a_at_b, ipv4(A_IP, B_IP, STAGED))]
        );
        Ok(())
    }
}

/// What a device in the [`Pending`] state must answer to a datagram that is not genuine.
/// `mac1_fixed` says the datagram's mac1 was computed for the recipient (anyone who knows its
/// public key can), so it reaches the handshake code; random mac1s never verify.
fn junk_verdict(
    s: &Pending,
    to_a: bool,
    d: &[u8],
    mac1_fixed: bool,
    under_load: bool,
) -> DropReason {
    let t = match model_parse(d) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let live = if to_a { s.a_handshake } else { s.b_keypair };
    match t {
        1 | 2 if !mac1_fixed => DropReason::BadMac1,
        // Under load a valid mac1 is not enough: the sender has no cookie, so mac2 is wrong.
        1 | 2 if under_load => DropReason::CookieRequired,
        // Random ephemeral and ciphertexts: the static key does not decrypt.
        1 => DropReason::HandshakeFailed,
        2 => {
            if le32(&d[RESP_RECEIVER]) != live {
                DropReason::UnknownIndex
            } else if to_a {
                // A's in-flight handshake: the forged response does not authenticate.
                DropReason::HandshakeFailed
            } else {
                // B's index belongs to a keypair; B has no initiation in flight.
                DropReason::UnexpectedHandshake
            }
        }
        3 if le32(&d[RECEIVER]) == live => DropReason::BadCookieReply,
        3 => DropReason::UnknownIndex,
        // A's only index names a handshake, which transport data can't be addressed to.
        _ if to_a || le32(&d[RECEIVER]) != live => DropReason::UnknownIndex,
        _ if le64(&d[COUNTER]) >= REJECT_AFTER_MESSAGES => DropReason::Replayed,
        _ => DropReason::DecryptFailed,
    }
}

/// After a rejected datagram: a cookie reply if the verdict asked for one, otherwise silence.
fn check_quiet_or_cookie(
    s: &mut Pending,
    verdict: DropReason,
    src: SocketAddr,
    d: &[u8],
) -> Result<(), TestCaseError> {
    let txs = s.transmits();
    if verdict == DropReason::CookieRequired {
        check_cookie_reply_sent(&txs, src, &d[4..8])?;
    } else {
        prop_assert!(txs.is_empty(), "rejected junk caused transmits: {:?}", txs);
    }
    // Nothing happened: in particular no endpoint moved to the junk's source.
    let events = (s.p.a.dev.poll_event(), s.p.b.dev.poll_event());
    prop_assert_eq!(events, (None, None), "rejected junk caused events");
    Ok(())
}

/// Bytes of authenticated messages a device has counted from all its peers.
fn rx_bytes(node: &Node) -> u64 {
    node.dev
        .peer_ids()
        .filter_map(|id| node.dev.peer(id))
        .map(|peer| peer.stats().rx_bytes)
        .sum()
}

fn drain_events(node: &mut Node) {
    while node.dev.poll_event().is_some() {}
}

/// (a) Completely random datagrams, to either side of a half-finished handshake. One state
/// serves every case (random bytes almost never get past parsing, so a fresh handshake per case
/// would buy nothing); each case must get its exact verdict and cause no transmit, and at the
/// end the held response must still complete the handshake, so no case changed anything.
#[test]
fn random_datagrams_are_rejected_and_change_nothing() {
    let state = RefCell::new(pending(7));
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..2000),
        socket_addr(),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(config(1024));
    let result = runner.run(&strategy, |(d, src, to_a)| {
        let mut s = state.borrow_mut();
        let want = junk_verdict(&s, to_a, &d, false, false);
        prop_assert_eq!(s.receive(to_a, src, &d), Err(want));
        check_quiet_or_cookie(&mut s, want, src, &d)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let intact = state.borrow_mut().assert_intact();
    assert!(intact.is_ok(), "{intact:?}");
}

/// Which receiver index a half-valid datagram names.
#[derive(Clone, Copy, Debug)]
enum IndexPick {
    Random(u32),
    /// The recipient's one live index.
    Live,
}

#[derive(Clone, Debug)]
struct Junk {
    kind: u8,
    len: usize,
    body: Vec<u8>,
    fix_mac1: bool,
    index: IndexPick,
    counter: u64,
    to_a: bool,
    under_load: bool,
    src: SocketAddr,
}

fn junk() -> impl Strategy<Value = Junk> {
    let index = prop_oneof![
        any::<u32>().prop_map(IndexPick::Random),
        Just(IndexPick::Live)
    ];
    // Counters that pass the replay pre-check, and ones at or past REJECT_AFTER_MESSAGES.
    let counter = prop_oneof![
        0u64..16,
        any::<u64>(),
        (REJECT_AFTER_MESSAGES - 2)..=u64::MAX,
    ];
    (1u8..=4)
        .prop_flat_map(|kind| {
            let proper = [INIT_LEN, RESP_LEN, COOKIE_LEN][usize::from(kind.min(3)) - 1];
            let len = if kind == 4 {
                prop_oneof![9 => TRANSPORT_MIN..1600, 1 => 4..TRANSPORT_MIN].boxed()
            } else {
                prop_oneof![6 => Just(proper), 1 => 4..300usize].boxed()
            };
            (Just(kind), len)
        })
        .prop_flat_map(move |(kind, len)| {
            (
                Just(kind),
                Just(len),
                prop::collection::vec(any::<u8>(), len),
                prop::bool::weighted(0.8),
                index.clone(),
                counter.clone(),
                any::<bool>(),
                prop::bool::weighted(0.3),
                socket_addr(),
            )
        })
        .prop_map(
            |(kind, len, body, fix_mac1, index, counter, to_a, under_load, src)| Junk {
                kind,
                len,
                body,
                fix_mac1,
                index,
                counter,
                to_a,
                under_load,
                src,
            },
        )
}

impl Junk {
    /// The datagram, and whether its mac1 is valid for the recipient.
    fn build(&self, s: &Pending) -> (Vec<u8>, bool) {
        let mut d = self.body.clone();
        d[..4].copy_from_slice(&[self.kind, 0, 0, 0]);
        let index = match self.index {
            IndexPick::Random(i) => i,
            IndexPick::Live if self.to_a => s.a_handshake,
            IndexPick::Live => s.b_keypair,
        };
        let receiver = if self.kind == 2 {
            RESP_RECEIVER
        } else {
            RECEIVER
        };
        if self.kind != 1 {
            if let Some(f) = d.get_mut(receiver) {
                f.copy_from_slice(&index.to_le_bytes());
            }
        }
        if self.kind == 4 {
            if let Some(f) = d.get_mut(COUNTER) {
                f.copy_from_slice(&self.counter.to_le_bytes());
            }
        }
        let proper = [INIT_LEN, RESP_LEN][usize::from(self.kind.min(2)) - 1];
        let fix = self.fix_mac1 && self.kind <= 2 && self.len == proper;
        if fix {
            let recipient = public(&key(if self.to_a { 1 } else { 2 }));
            CookieGenerator::new(&recipient).add_macs(s.p.clock.now, &mut d);
        }
        (d, fix)
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// (b) Random contents behind a valid header of each type, at the right length (mostly), with
    /// a mac1 computed for the recipient (mostly), naming the recipient's live index (half the
    /// time), sometimes under load: these get past parsing and the cookie layer into the index
    /// table, the handshake, the cookie decryption and the replay window.
    #[test]
    fn random_bodies_behind_valid_headers_reach_deep_and_are_rejected(j in junk(), seed in 0u64..4) {
        let mut s = pending(seed);
        if j.under_load {
            s.set_under_load(j.to_a);
        }
        let (d, mac1_fixed) = j.build(&s);
        let want = junk_verdict(&s, j.to_a, &d, mac1_fixed, j.under_load);
        prop_assert_eq!(s.receive(j.to_a, j.src, &d), Err(want));
        check_quiet_or_cookie(&mut s, want, j.src, &d)?;
        s.assert_intact()?;
    }
}

fn random_initiation(body: &[u8]) -> Vec<u8> {
    let mut m = body.to_vec();
    m[..4].copy_from_slice(&[messages::TYPE_INITIATION, 0, 0, 0]);
    m
}

proptest! {
    #![proptest_config(config(32))]

    /// Under load, an attacker who knows B's public key and can receive at its source address
    /// earns a cookie (the reply is sealed under a key derived from B's public key), so its
    /// forged initiations pass both macs. They must then meet the per-source rate limit (a burst
    /// of RATELIMIT_BURST, whitepaper §5.3 / the kernel's numbers) and fail the handshake itself.
    #[test]
    fn under_load_a_cookie_holding_attacker_meets_the_rate_limit_and_the_handshake(
        src in socket_addr(),
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), INIT_LEN), 9),
        seed in 0u64..4,
    ) {
        let mut s = pending(seed);
        s.set_under_load(false);
        let now = s.p.clock.now;
        let mut attacker = CookieGenerator::new(&public(&key(2)));

        let mut first = random_initiation(&bodies[0]);
        attacker.add_macs(now, &mut first);
        prop_assert_eq!(s.receive(false, src, &first), Err(DropReason::CookieRequired));
        let txs = s.transmits();
        check_cookie_reply_sent(&txs, src, &first[4..8])?;
        let reply = CookieReply::new(&txs[0].data[..]).expect("a 64-byte cookie reply");
        prop_assert!(attacker.consume_reply(now, &reply).is_ok(), "the reply opens");

        let burst = messages::RATELIMIT_BURST as usize;
        for (i, body) in bodies[1..].iter().enumerate() {
            let mut m = random_initiation(body);
            attacker.add_macs(now, &mut m);
            let want = if i < burst {
                DropReason::HandshakeFailed
            } else {
                DropReason::RateLimited
            };
            prop_assert_eq!(s.receive(false, src, &m), Err(want), "initiation {} with a cookie", i);
            prop_assert!(s.transmits().is_empty());
        }
        s.assert_intact()?;
    }
}

// ---------------------------------------------------------------------------------------------
// Device::handle_datagram: mutated genuine messages
// ---------------------------------------------------------------------------------------------

/// A scripted exchange, run step by step so a replay can stop right after any datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Scenario {
    /// Handshake, data both ways (v4 and v6), and the responder's keepalive: initiation,
    /// response, data (which confirms B's keypair), keepalive (B's timer, 10 s after receiving
    /// data it didn't answer), data B to A, data A to B.
    Plain,
    /// The responder is under load: initiation, cookie reply, initiation with mac2, response,
    /// data.
    UnderLoad,
}

/// Run step `i` of a scenario; false once there are no more steps.
fn step(scenario: Scenario, p: &mut Pair, i: usize) -> bool {
    match (scenario, i) {
        (Scenario::Plain, 0) => p.a_to_b(&ipv4(A_IP, B_IP, b"first")).expect("A sends"),
        // B received data and sent none: its keepalive timer fires after 10 s.
        (Scenario::Plain, 1) => p.run_for(Duration::from_secs(11)),
        (Scenario::Plain, 2) => p.b_to_a(&ipv4(B_IP, A_IP, &[7; 100])).expect("B sends"),
        (Scenario::Plain, 3) => {
            let payload: Vec<u8> = (0..=50).collect();
            p.a_to_b(&ipv6(A_IP6, B_IP6, &payload)).expect("A sends")
        }
        (Scenario::UnderLoad, 0) => {
            let now = p.clock.now;
            p.b.dev.set_under_load(now, true);
            p.a_to_b(&ipv4(A_IP, B_IP, b"busy?")).expect("A sends");
        }
        // As in two_peers.rs: keep B under load until A's retry (after REKEY_TIMEOUT) carries
        // mac2 and completes the handshake.
        (Scenario::UnderLoad, 1..=7) => {
            p.clock.advance(Duration::from_secs(1));
            let now = p.clock.now;
            p.b.dev.set_under_load(now, true);
            p.run_for(Duration::from_millis(1));
        }
        _ => return false,
    }
    true
}

/// Run a scenario from `Pair::new(seed)`. The datagram numbered `hold_from` (in wire order) and
/// every later one are held back, and the script stops after the step that sent it: its
/// recipient is then in exactly the state in which it first received that datagram.
fn run_scenario(scenario: Scenario, seed: u64, hold_from: usize) -> Pair {
    let (mut p, _, _) = Pair::new(seed);
    let sent = Rc::new(Cell::new(0usize));
    let count = Rc::clone(&sent);
    p.filter = Box::new(move |_| {
        let n = count.get();
        count.set(n + 1);
        n < hold_from
    });
    let mut i = 0;
    while sent.get() <= hold_from && step(scenario, &mut p, i) {
        i += 1;
    }
    p
}

/// The message types each scenario puts on the wire, checked so that a change in the harness or
/// the timers can't silently point the mutation tests at the wrong messages.
fn expected_shape(scenario: Scenario) -> &'static [(u8, Option<usize>)] {
    match scenario {
        Scenario::Plain => &[
            (1, None),
            (2, None),
            (4, Some(64)),
            (4, Some(TRANSPORT_MIN)),
            (4, Some(160)),
            (4, Some(128)),
        ],
        Scenario::UnderLoad => &[(1, None), (3, None), (1, None), (2, None), (4, Some(64))],
    }
}

/// Genuine exchanges by (scenario, seed), and a second session per seed to splice from.
struct Captures(HashMap<(Scenario, u64), Vec<Wire>>);

const SEEDS: u64 = 4;
const DONOR_SEED: u64 = 1000;

impl Captures {
    fn new() -> Captures {
        let mut m = HashMap::new();
        for scenario in [Scenario::Plain, Scenario::UnderLoad] {
            for seed in (0..SEEDS).chain(DONOR_SEED..DONOR_SEED + SEEDS) {
                let log = run_scenario(scenario, seed, usize::MAX).log;
                let shape: Vec<(u8, usize)> =
                    log.iter().map(|w| (w.data[0], w.data.len())).collect();
                let want = expected_shape(scenario);
                assert_eq!(log.len(), want.len(), "{scenario:?} seed {seed}: {shape:?}");
                for (&(t, n), &(wt, wn)) in shape.iter().zip(want) {
                    assert!(
                        t == wt && wn.is_none_or(|wn| wn == n),
                        "{scenario:?}: {shape:?}"
                    );
                }
                m.insert((scenario, seed), log);
            }
        }
        Captures(m)
    }

    fn log(&self, scenario: Scenario, seed: u64) -> &[Wire] {
        &self.0[&(scenario, seed)]
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Flip these bits (position, bit).
    Flip(Vec<(Index, u8)>),
    /// Cut to a strictly shorter length.
    Truncate(Index),
    /// Append these bytes.
    Extend(Vec<u8>),
    /// Copy one field from another genuine message of the same type.
    SpliceField { donor: Index, field: Index },
    /// Copy a byte range from another genuine message of the same type.
    SpliceRange {
        donor: Index,
        start: Index,
        len: Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => prop::collection::vec((any::<Index>(), 0u8..8), 1..=3).prop_map(Mutation::Flip),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..=64).prop_map(Mutation::Extend),
        2 => (any::<Index>(), any::<Index>())
            .prop_map(|(donor, field)| Mutation::SpliceField { donor, field }),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(donor, start, len)| Mutation::SpliceRange { donor, start, len }),
    ]
}

/// The fields of a message, for splicing (sluice's layout; the oracle does not use these).
fn fields(msg: &[u8]) -> Vec<Range<usize>> {
    match msg[0] {
        1 => vec![
            initiation::SENDER,
            initiation::EPHEMERAL,
            initiation::STATIC,
            initiation::TIMESTAMP,
            initiation::MAC1,
            initiation::MAC2,
        ],
        2 => vec![
            response::SENDER,
            response::RECEIVER,
            response::EPHEMERAL,
            response::EMPTY,
            response::MAC1,
            response::MAC2,
        ],
        3 => vec![
            cookie_reply::RECEIVER,
            cookie_reply::NONCE,
            cookie_reply::COOKIE,
        ],
        _ => vec![
            transport::RECEIVER,
            transport::COUNTER,
            transport::PAYLOAD_START..msg.len(),
        ],
    }
}

impl Mutation {
    fn apply(&self, orig: &[u8], donors: &[&[u8]]) -> Vec<u8> {
        let mut m = orig.to_vec();
        match self {
            Mutation::Flip(flips) => {
                for (pos, bit) in flips {
                    m[pos.index(orig.len())] ^= 1 << bit;
                }
            }
            Mutation::Truncate(at) => m.truncate(at.index(orig.len())),
            Mutation::Extend(extra) => m.extend_from_slice(extra),
            Mutation::SpliceField { donor, field } => {
                let d = donor.get(donors);
                let f = field.get(&fields(orig)).clone();
                let r = f.start.min(d.len())..f.end.min(d.len());
                m[r.clone()].copy_from_slice(&d[r]);
            }
            Mutation::SpliceRange { donor, start, len } => {
                let d = donor.get(donors);
                let n = orig.len().min(d.len());
                let s = start.index(n);
                let e = s + 1 + len.index(n - s);
                m[s..e].copy_from_slice(&d[s..e]);
            }
        }
        m
    }
}

/// What the recipient must do with a mutated copy of a genuine message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Reject(DropReason),
    /// Changed into a different valid message type: any rejection will do.
    RejectAny,
    /// Nothing the protocol authenticates changed (see [`expect`]).
    Accept,
    /// The mutation rebuilt another genuine message: no claim.
    Either,
}

/// Everything the model needs to know about the message being mutated.
struct Target<'a> {
    orig: &'a [u8],
    donors: &'a [&'a [u8]],
    /// The recipient demands mac2.
    under_load: bool,
    /// The mutated copy's mac1 (and mac2, which without a cookie is zero) were recomputed for
    /// the recipient, as any sender who knows its public key can: the copy then reaches the
    /// Noise layer instead of failing mac1.
    remac: bool,
    /// Counters the recipient has already accepted on this message's keypair.
    seen: Vec<u64>,
}

/// The verdict model. Each side holds only the indices named in genuine traffic, so a changed
/// receiver index is unknown. What each message type authenticates:
/// - initiation/response: mac1 covers everything before it; mac2 covers everything before it but
///   is checked only under load (whitepaper §5.3). Beneath the macs, Noise authenticates the
///   ephemeral key and ciphertexts, but not the sender index (nor does the kernel's): a
///   re-MACed copy with only a new sender index is a valid message.
/// - cookie reply: the nonce and sealed cookie (AEAD, bound to our last mac1); the receiver index
///   must name our handshake.
/// - transport: the counter is the AEAD nonce and everything after it is ciphertext and tag;
///   the receiver index selects the key.
fn expect(t: &Target<'_>, m: &[u8]) -> Expect {
    let o = t.orig;
    if let Err(e) = model_parse(m) {
        return Expect::Reject(e.into());
    }
    if m == o {
        return Expect::Accept;
    }
    if t.donors.contains(&m) {
        return Expect::Either;
    }
    if m[0] != o[0] {
        return Expect::RejectAny;
    }
    let mac2 = m.len() - 16;
    match o[0] {
        1 | 2 if !t.remac => {
            if m[..mac2] != o[..mac2] {
                if t.donors.iter().any(|d| d[..mac2] == m[..mac2]) {
                    Expect::Either
                } else {
                    Expect::Reject(DropReason::BadMac1)
                }
            } else if t.under_load {
                Expect::Reject(DropReason::CookieRequired)
            } else {
                Expect::Accept
            }
        }
        1 | 2 if t.under_load => Expect::Reject(DropReason::CookieRequired),
        1 => {
            if m[INIT_NOISE] == o[INIT_NOISE] {
                Expect::Accept
            } else if t.donors.iter().any(|d| d[INIT_NOISE] == m[INIT_NOISE]) {
                // Another genuine initiation from the same peer, timestamped the same second.
                Expect::Either
            } else {
                Expect::Reject(DropReason::HandshakeFailed)
            }
        }
        2 => {
            if m[RESP_RECEIVER] != o[RESP_RECEIVER] {
                Expect::Reject(DropReason::UnknownIndex)
            } else if m[RESP_NOISE] == o[RESP_NOISE] {
                Expect::Accept
            } else {
                Expect::Reject(DropReason::HandshakeFailed)
            }
        }
        3 if m[RECEIVER] != o[RECEIVER] => Expect::Reject(DropReason::UnknownIndex),
        3 => Expect::Reject(DropReason::BadCookieReply),
        _ if m[RECEIVER] != o[RECEIVER] => Expect::Reject(DropReason::UnknownIndex),
        _ => {
            let c = le64(&m[COUNTER]);
            if c >= REJECT_AFTER_MESSAGES || t.seen.contains(&c) {
                Expect::Reject(DropReason::Replayed)
            } else {
                Expect::Reject(DropReason::DecryptFailed)
            }
        }
    }
}

/// Deliver a mutated copy of genuine datagram `k` to a recipient that has not seen the original,
/// check the verdict against the model, then check the original is still accepted there: the
/// mutation, not replay protection, is what was rejected, and the rejection changed nothing.
fn check_mutation(
    caps: &Captures,
    (scenario, k): (Scenario, usize),
    seed: u64,
    mutation: &Mutation,
    remac: bool,
) -> Result<(), TestCaseError> {
    let log = caps.log(scenario, seed);
    let orig = &log[k];
    let donors: Vec<&[u8]> = log
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != k)
        .map(|(_, w)| w)
        .chain(caps.log(scenario, seed + DONOR_SEED))
        .filter(|w| w.data[0] == orig.data[0])
        .map(|w| &w.data[..])
        .collect();

    let mut p = run_scenario(scenario, seed, k);
    prop_assert_eq!(
        &p.log[k].data,
        &orig.data,
        "the replay must be deterministic"
    );
    let to_a = orig.to == p.a.addr;
    let mut m = mutation.apply(&orig.data, &donors);
    let remac = remac && orig.data[0] <= 2 && m.len() == orig.data.len();
    if remac {
        let recipient = public(&key(if to_a { 1 } else { 2 }));
        CookieGenerator::new(&recipient).add_macs(p.clock.now, &mut m);
    }
    let seen = log[..k]
        .iter()
        .filter(|w| w.to == orig.to && w.data[0] == 4 && w.data[RECEIVER] == orig.data[RECEIVER])
        .map(|w| le64(&w.data[COUNTER]))
        .collect();

    let Pair { clock, a, b, .. } = &mut p;
    let node = if to_a { a } else { b };
    let target = Target {
        orig: &orig.data,
        donors: &donors,
        under_load: node.dev.is_under_load(clock.now),
        remac,
        seen,
    };
    let want = expect(&target, &m);
    drain_events(node);
    let rx_before = rx_bytes(node);
    let got = node.receive(clock, orig.from, &m);
    match want {
        Expect::Reject(reason) => prop_assert_eq!(got.clone(), Err(reason), "model: {:?}", want),
        Expect::RejectAny => prop_assert!(got.is_err(), "accepted: {:?}", got),
        Expect::Accept => prop_assert_eq!(
            got.as_ref().map(outcome),
            Ok(genuine_outcome(&orig.data)),
            "nothing authenticated changed"
        ),
        Expect::Either => {}
    }
    if got.is_err() {
        prop_assert_eq!(
            node.dev.poll_event(),
            None,
            "a rejected datagram caused an event"
        );
        prop_assert_eq!(rx_bytes(node), rx_before, "a rejected datagram was counted");
    }
    let txs = node.transmits();
    match &got {
        Err(DropReason::CookieRequired) => check_cookie_reply_sent(&txs, orig.from, &m[4..8])?,
        Err(_) => prop_assert!(txs.is_empty(), "a rejected datagram caused transmits"),
        Ok(_) => {}
    }
    if got.is_err() {
        let r = node.receive(clock, orig.from, &orig.data);
        prop_assert_eq!(
            r.as_ref().map(outcome),
            Ok(genuine_outcome(&orig.data)),
            "the original, after its rejected mutation"
        );
    }
    Ok(())
}

/// Run [`check_mutation`] on random (target, seed, mutation, re-MAC) cases.
fn mutation_property(targets: &[(Scenario, usize)], cases: u32) {
    let caps = Captures::new();
    let strategy = (
        prop::sample::select(targets.to_vec()),
        0..SEEDS,
        mutation(),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(config(cases));
    let result = runner.run(&strategy, |(target, seed, m, remac)| {
        check_mutation(&caps, target, seed, &m, remac)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// (c) Initiations and responses, including an initiation carrying mac2 to a responder under
/// load (where mac2 is authenticated) and a response after a cookie round trip.
#[test]
fn mutated_handshake_messages_are_rejected() {
    mutation_property(
        &[
            (Scenario::Plain, 0),
            (Scenario::Plain, 1),
            (Scenario::UnderLoad, 2),
            (Scenario::UnderLoad, 3),
        ],
        96,
    );
}

#[test]
fn mutated_cookie_replies_are_rejected() {
    mutation_property(&[(Scenario::UnderLoad, 1)], 96);
}

/// Data that confirms the responder's keypair, a keepalive, data in the other direction, and
/// later messages on a keypair (so the replay window has history).
#[test]
fn mutated_transport_messages_are_rejected() {
    mutation_property(
        &[
            (Scenario::Plain, 2),
            (Scenario::Plain, 3),
            (Scenario::Plain, 4),
            (Scenario::Plain, 5),
            (Scenario::UnderLoad, 4),
        ],
        108,
    );
}

// ---------------------------------------------------------------------------------------------
// A hostile network: genuine traffic lost, duplicated, reordered, corrupted and delayed
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum NetAction {
    /// A (or B) sends a new, unique inner packet to the other.
    Send { from_a: bool },
    /// Deliver the in-flight datagram at this position and take it off the wire.
    Deliver(Index),
    /// Deliver a copy and leave the datagram in flight, to arrive again later.
    Duplicate(Index),
    /// Deliver a copy with one bit flipped (outside a handshake's mac2, which is only checked
    /// under load).
    Corrupt(Index, Index, u8),
    /// Deliver a copy of a handshake message with its sender index rewritten (to another
    /// message's, or a random one) and mac1 recomputed: the index is not covered by Noise, so an
    /// on-path attacker who knows the public keys can do this and the copy may be accepted.
    Reindex(Index, Option<Index>, u32),
    /// Lose the datagram.
    Lose(Index),
    /// Let time pass and run both devices' timers.
    Wait(Duration),
    /// Report load on a device (it holds for a second).
    Load { a: bool },
}

fn net_action() -> impl Strategy<Value = NetAction> {
    let wait = prop_oneof![0u64..2_000, 2_000u64..20_000, 100_000u64..300_000];
    prop_oneof![
        3 => any::<bool>().prop_map(|from_a| NetAction::Send { from_a }),
        5 => any::<Index>().prop_map(NetAction::Deliver),
        2 => any::<Index>().prop_map(NetAction::Duplicate),
        2 => (any::<Index>(), any::<Index>(), 0u8..8)
            .prop_map(|(i, pos, bit)| NetAction::Corrupt(i, pos, bit)),
        1 => (any::<Index>(), prop::option::of(any::<Index>()), any::<u32>())
            .prop_map(|(i, other, v)| NetAction::Reindex(i, other, v)),
        1 => any::<Index>().prop_map(NetAction::Lose),
        2 => wait.prop_map(|ms| NetAction::Wait(Duration::from_millis(ms))),
        1 => any::<bool>().prop_map(|a| NetAction::Load { a }),
    ]
}

fn deliver_to(p: &mut Pair, w: &Wire, data: &[u8]) -> Option<Result<Received, DropReason>> {
    let Pair { clock, a, b, .. } = p;
    let node = if w.to == a.addr {
        a
    } else if w.to == b.addr {
        b
    } else {
        return None;
    };
    Some(node.receive(clock, w.from, data))
}

fn collect_transmits(p: &mut Pair, flight: &mut Vec<Wire>) {
    for t in p.a.transmits() {
        flight.push(Wire::new(p.a.addr, t.dst, t.data));
    }
    for t in p.b.transmits() {
        flight.push(Wire::new(p.b.addr, t.dst, t.data));
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// Random interleavings of sends, timers, load and a network that loses, duplicates,
    /// reorders, corrupts, re-indexes and delays genuine datagrams. Nothing panics; a corrupted datagram is
    /// always rejected; every packet a device delivers is one the other side sent, and none is
    /// delivered twice (replay protection across rekeys, expiry and retries); and once the
    /// network behaves, the devices recover a working session within REKEY_ATTEMPT_TIME.
    #[test]
    fn a_hostile_network_causes_no_panic_duplicate_or_forgery(
        actions in prop::collection::vec(net_action(), 1..80),
        seed in 0u64..4,
    ) {
        let (mut p, _, _) = Pair::new(seed);
        let mut flight: Vec<Wire> = Vec::new();
        let (mut by_a, mut by_b) = (Vec::new(), Vec::new());
        for (n, action) in actions.iter().enumerate() {
            match action {
                NetAction::Send { from_a } => {
                    let label = format!("packet {n}");
                    let (pkt, node, sent) = if *from_a {
                        (ipv4(A_IP, B_IP, label.as_bytes()), &mut p.a, &mut by_a)
                    } else {
                        (ipv4(B_IP, A_IP, label.as_bytes()), &mut p.b, &mut by_b)
                    };
                    match node.send(&mut p.clock, &pkt) {
                        Ok(Some(t)) => flight.push(Wire::new(node.addr, t.dst, t.data)),
                        Ok(None) | Err(DropReason::StagedQueueFull) => {}
                        // B learns A's endpoint only from A's first authenticated message.
                        Err(DropReason::NoEndpoint) if !*from_a => {}
                        Err(e) => prop_assert!(false, "send failed: {:?}", e),
                    }
                    sent.push(pkt);
                }
                NetAction::Deliver(i) | NetAction::Lose(i) if !flight.is_empty() => {
                    let w = flight.remove(i.index(flight.len()));
                    if matches!(action, NetAction::Deliver(_)) {
                        deliver_to(&mut p, &w, &w.data);
                    }
                }
                NetAction::Duplicate(i) if !flight.is_empty() => {
                    let w = flight[i.index(flight.len())].clone();
                    deliver_to(&mut p, &w, &w.data);
                }
                NetAction::Corrupt(i, pos, bit) if !flight.is_empty() => {
                    let w = flight[i.index(flight.len())].clone();
                    let mut d = w.data.clone();
                    let handshake = matches!((d[0], d.len()), (1, INIT_LEN) | (2, RESP_LEN));
                    let end = if handshake { d.len() - 16 } else { d.len() };
                    d[pos.index(end)] ^= 1 << bit;
                    let r = deliver_to(&mut p, &w, &d);
                    prop_assert!(
                        !matches!(r, Some(Ok(_))),
                        "corrupted type {} accepted: {:?}", w.data[0], r
                    );
                }
                NetAction::Reindex(i, other, v) if !flight.is_empty() => {
                    let w = flight[i.index(flight.len())].clone();
                    let is_handshake = |d: &[u8]| matches!((d[0], d.len()), (1, INIT_LEN) | (2, RESP_LEN));
                    if is_handshake(&w.data) {
                        let index = other
                            .map(|j| &flight[j.index(flight.len())].data)
                            .filter(|d| is_handshake(d))
                            .map_or(*v, |d| le32(&d[4..8]));
                        let mut d = w.data.clone();
                        d[4..8].copy_from_slice(&index.to_le_bytes());
                        let recipient = public(&key(if w.to == p.a.addr { 1 } else { 2 }));
                        CookieGenerator::new(&recipient).add_macs(p.clock.now, &mut d);
                        deliver_to(&mut p, &w, &d);
                    }
                }
                NetAction::Wait(d) => {
                    p.clock.advance(*d);
                    p.a.dev.handle_timeout(&mut p.clock.cx());
                    p.b.dev.handle_timeout(&mut p.clock.cx());
                }
                NetAction::Load { a } => {
                    let now = p.clock.now;
                    let node = if *a { &mut p.a } else { &mut p.b };
                    node.dev.set_under_load(now, true);
                }
                _ => {}
            }
            collect_transmits(&mut p, &mut flight);
        }

        for (node, sent_by_other) in [(&p.b, &by_a), (&p.a, &by_b)] {
            let mut seen = std::collections::HashSet::new();
            for (_, pkt) in &node.delivered {
                prop_assert!(sent_by_other.contains(pkt), "delivered a packet nobody sent");
                prop_assert!(seen.insert(pkt.clone()), "delivered twice: {:?}", pkt);
            }
        }

        // The network heals: everything in flight is lost, load lapses, and from now on every
        // datagram arrives. A packet sent right away may still be lost (A may hold a keypair B
        // has already replaced, as the kernel's would), but A's timers must then rehandshake, so
        // after REKEY_ATTEMPT_TIME a new packet gets through.
        p.clock.advance(Duration::from_secs(2));
        p.a_to_b(&ipv4(A_IP, B_IP, b"into the calm")).expect("A can always send to B");
        p.run_for(messages::REKEY_ATTEMPT_TIME);
        let last = ipv4(A_IP, B_IP, b"after the storm");
        let before = p.b.delivered.len();
        p.a_to_b(&last).expect("A can always send to B");
        prop_assert!(
            p.b.delivered[before..].iter().any(|(_, d)| *d == last),
            "no session after the network healed"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Forged cookie replies and transport messages
// ---------------------------------------------------------------------------------------------

/// A session confirmed both ways.
fn established(seed: u64) -> (Pair, PeerId, PeerId) {
    let (mut p, b_at_a, a_at_b) = Pair::new(seed);
    p.a_to_b(&ipv4(A_IP, B_IP, b"hello")).expect("A reaches B");
    p.b_to_a(&ipv4(B_IP, A_IP, b"hello back"))
        .expect("B reaches A");
    assert_eq!((p.a.delivered.len(), p.b.delivered.len()), (1, 1));
    (p, b_at_a, a_at_b)
}

#[derive(Clone, Copy, Debug)]
enum CounterPick {
    /// One B has already accepted.
    Seen(Index),
    /// The counter of the genuine message held back.
    Held,
    Unseen(u64),
    Any(u64),
    AtOrPastReject(u64),
}

proptest! {
    #![proptest_config(config(96))]

    /// Transport messages with forged contents: an unknown receiver index is UnknownIndex; a
    /// known one with a counter already seen or at/past REJECT_AFTER_MESSAGES is Replayed
    /// without decrypting; anything else fails the tag. None of it moves the replay window: a
    /// genuine message held back (with a lower counter than some forgeries claim) still arrives.
    #[test]
    fn forged_transport_is_rejected_by_index_then_window_then_tag(
        known: bool,
        random_index in any::<u32>(),
        pick in prop_oneof![
            any::<Index>().prop_map(CounterPick::Seen),
            Just(CounterPick::Held),
            (5u64..10_000).prop_map(CounterPick::Unseen),
            any::<u64>().prop_map(CounterPick::Any),
            (0u64..=(u64::MAX - REJECT_AFTER_MESSAGES)).prop_map(CounterPick::AtOrPastReject),
        ],
        sealed in prop::collection::vec(any::<u8>(), 16..1500),
        seed in 0u64..4,
    ) {
        let (mut p, _, a_at_b) = established(seed);
        for i in 0..3u8 {
            p.a_to_b(&ipv4(A_IP, B_IP, &[i; 40])).expect("A sends");
        }
        let held = p.a.send(&mut p.clock, &ipv4(A_IP, B_IP, b"held")).expect("A sends");
        let held = held.expect("a session exists, so it goes out at once");
        let b_index = p.b.dev.peer(a_at_b).and_then(|x| x.keypairs().current()).map(|k| k.local_index);
        let b_index = b_index.expect("B has a current keypair");
        // Counters 0..=3 were delivered; 4 is held.
        let seen = [0u64, 1, 2, 3];
        let counter = match pick {
            CounterPick::Seen(i) => *i.get(&seen),
            CounterPick::Held => 4,
            CounterPick::Unseen(c) => c,
            CounterPick::Any(c) => c,
            CounterPick::AtOrPastReject(d) => REJECT_AFTER_MESSAGES + d,
        };
        let index = if known { b_index } else { random_index };
        let mut d = vec![4u8, 0, 0, 0];
        d.extend_from_slice(&index.to_le_bytes());
        d.extend_from_slice(&counter.to_le_bytes());
        d.extend_from_slice(&sealed);

        let want = if index != b_index {
            DropReason::UnknownIndex
        } else if counter >= REJECT_AFTER_MESSAGES || seen.contains(&counter) {
            DropReason::Replayed
        } else {
            DropReason::DecryptFailed
        };
        let from = p.a.addr;
        prop_assert_eq!(p.b.receive(&mut p.clock, from, &d), Err(want));
        prop_assert!(p.b.transmits().is_empty());
        let r = p.b.receive(&mut p.clock, from, &held.data);
        prop_assert!(matches!(r, Ok(Received::Data { .. })), "held message: {:?}", r);
        prop_assert_eq!(&p.b.delivered.last().expect("delivered").1, &ipv4(A_IP, B_IP, b"held"));
    }

}

proptest! {
    #![proptest_config(config(96))]

    /// Cookie replies with random contents: UnknownIndex unless they name the recipient's live
    /// index, BadCookieReply if they do; and the handshake they pretend to answer is unharmed.
    #[test]
    fn forged_cookie_replies_are_rejected(
        to_a: bool,
        live: bool,
        random_index in any::<u32>(),
        body in prop::collection::vec(any::<u8>(), COOKIE_LEN),
        src in socket_addr(),
        seed in 0u64..4,
    ) {
        let mut s = pending(seed);
        let live_index = if to_a { s.a_handshake } else { s.b_keypair };
        let index = if live { live_index } else { random_index };
        let mut d = body;
        d[..4].copy_from_slice(&[3, 0, 0, 0]);
        d[RECEIVER].copy_from_slice(&index.to_le_bytes());
        let want = if index == live_index {
            DropReason::BadCookieReply
        } else {
            DropReason::UnknownIndex
        };
        prop_assert_eq!(s.receive(to_a, src, &d), Err(want));
        prop_assert!(s.transmits().is_empty());
        s.assert_intact()?;
    }

}

proptest! {
    #![proptest_config(config(64))]

    /// A correctly sealed cookie reply (anyone who knows B's public key can seal one) that is
    /// bound to some other message's mac1 is rejected; the same construction bound to A's real
    /// initiation is accepted, which shows the rejection is about the binding.
    #[test]
    fn cookie_replies_bound_to_another_message_are_rejected(
        other in prop::collection::vec(any::<u8>(), INIT_LEN),
        rng_seed: u64,
        seed in 0u64..4,
    ) {
        let mut s = pending(seed);
        let now = s.p.clock.now;
        let b_pub = public(&key(2));
        let mut forger = CookieChecker::new(&b_pub);
        let mut rng = SeededRng::new(rng_seed);
        let mut bound_elsewhere = random_initiation(&other);
        CookieGenerator::new(&b_pub).add_macs(now, &mut bound_elsewhere);
        prop_assume!(bound_elsewhere[initiation::MAC1] != s.initiation.data[initiation::MAC1]);

        let (b_addr, a_handshake) = (s.p.b.addr, s.a_handshake);
        let mut reply = [0u8; COOKIE_LEN];
        forger.create_reply(now, &mut rng, &bound_elsewhere, a_handshake, b_addr, &mut reply);
        prop_assert_eq!(s.receive(true, b_addr, &reply), Err(DropReason::BadCookieReply));

        let genuine = s.initiation.data.clone();
        forger.create_reply(now, &mut rng, &genuine, a_handshake, b_addr, &mut reply);
        let r = s.receive(true, b_addr, &reply);
        prop_assert_eq!(r, Ok(Received::CookieReply { peer: s.b_at_a }));
        prop_assert!(s.transmits().is_empty());
        s.assert_intact()?;
    }
}

// ---------------------------------------------------------------------------------------------
// Device::send and ip::parse: inner packets from the tunnel
// ---------------------------------------------------------------------------------------------

/// How the length field of a generated IP header relates to the bytes that follow it.
#[derive(Clone, Copy, Debug)]
enum LenField {
    Actual,
    Off(i32),
    Any(u16),
}

impl LenField {
    fn resolve(self, actual: usize) -> u16 {
        match self {
            LenField::Actual => u16::try_from(actual).unwrap_or(u16::MAX),
            LenField::Off(d) => (actual as i64 + i64::from(d)).clamp(0, 65535) as u16,
            LenField::Any(v) => v,
        }
    }
}

#[derive(Clone, Debug)]
enum InnerSpec {
    Raw(Vec<u8>),
    Ip {
        v6: bool,
        /// IPv4 header length in words (5 is the usual; others test the IHL checks).
        ihl: u8,
        len: LenField,
        /// Source is A's tunnel address (else random); destination is B's (else random).
        src_a: bool,
        dst_b: bool,
        addrs: [u8; 32],
        payload: Vec<u8>,
        /// Cut the finished packet to this length: truncated headers and short bodies.
        cut: Option<Index>,
    },
}

impl InnerSpec {
    fn build(&self) -> Vec<u8> {
        let (v6, ihl, len, src_a, dst_b, addrs, payload, cut) = match self {
            InnerSpec::Raw(r) => return r.clone(),
            InnerSpec::Ip {
                v6,
                ihl,
                len,
                src_a,
                dst_b,
                addrs,
                payload,
                cut,
            } => (*v6, *ihl, *len, *src_a, *dst_b, addrs, payload, cut),
        };
        let mut p;
        if v6 {
            p = vec![0u8; 40];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&len.resolve(payload.len()).to_be_bytes());
            p[8..24].copy_from_slice(&addrs[..16]);
            p[24..40].copy_from_slice(&addrs[16..]);
            if src_a {
                p[8..24].copy_from_slice(&A_IP6.octets());
            }
            if dst_b {
                p[24..40].copy_from_slice(&B_IP6.octets());
            }
        } else {
            let header = (usize::from(ihl) * 4).max(20);
            p = vec![0u8; header];
            p[0] = 0x40 | (ihl & 0x0f);
            p[2..4].copy_from_slice(&len.resolve(header + payload.len()).to_be_bytes());
            p[12..20].copy_from_slice(&addrs[..8]);
            if src_a {
                p[12..16].copy_from_slice(&A_IP);
            }
            if dst_b {
                p[16..20].copy_from_slice(&B_IP);
            }
        }
        p.extend_from_slice(payload);
        if let Some(cut) = cut {
            p.truncate(cut.index(p.len() + 1));
        }
        p
    }
}

fn inner_packet() -> impl Strategy<Value = InnerSpec> {
    let len = prop_oneof![
        6 => Just(LenField::Actual),
        2 => (-40i32..40).prop_map(LenField::Off),
        1 => any::<u16>().prop_map(LenField::Any),
    ];
    let ihl = prop_oneof![8 => Just(5u8), 2 => 0u8..16];
    let ip = (
        any::<bool>(),
        ihl,
        len,
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.8),
        any::<[u8; 32]>(),
        prop::collection::vec(any::<u8>(), 0..1500),
        prop::option::weighted(0.2, any::<Index>()),
    )
        .prop_map(
            |(v6, ihl, len, src_a, dst_b, addrs, payload, cut)| InnerSpec::Ip {
                v6,
                ihl,
                len,
                src_a,
                dst_b,
                addrs,
                payload,
                cut,
            },
        );
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(InnerSpec::Raw),
        4 => ip,
    ]
}

#[derive(Clone, Copy, Debug)]
enum OutSize {
    Ample,
    Exact,
    /// Strictly smaller than the message needs.
    Short(Index),
}

fn send_counter(p: &Pair, peer: PeerId) -> Option<u64> {
    let kp = p.a.dev.peer(peer)?.keypairs().current()?;
    Some(kp.send_counter())
}

proptest! {
    #![proptest_config(config(128))]

    /// Inner packets from the tunnel, with and without a session and into output buffers of
    /// every size: malformed ones are BadInnerPacket, unrouted ones NoRoute, good ones are staged
    /// or encrypted at the whitepaper's padded size and arrive at B intact (cut to the length
    /// their header claims), or are dropped there if their source isn't A's. A buffer too small
    /// for the message is an error that consumes no counter.
    #[test]
    fn send_routes_or_rejects_every_inner_packet(
        spec in inner_packet(),
        session: bool,
        out in prop_oneof![Just(OutSize::Ample), Just(OutSize::Exact), any::<Index>().prop_map(OutSize::Short)],
        seed in 0u64..4,
    ) {
        let (mut p, b_at_a, a_at_b) = if session { established(seed) } else { Pair::new(seed) };
        let pkt = spec.build();
        let needed = TRANSPORT_MIN + model_padded(pkt.len());
        let out_len = match out {
            OutSize::Ample => needed + 64,
            OutSize::Exact => needed,
            OutSize::Short(i) => i.index(needed),
        };
        let mut buf = vec![0u8; out_len];
        let before = send_counter(&p, b_at_a);
        let r = p.a.dev.send(&mut p.clock.cx(), &pkt, &mut buf);
        let routed = |dst: IpAddr| dst == IpAddr::from(B_IP) || dst == IpAddr::from(B_IP6);
        match model_ip(&pkt) {
            None => prop_assert_eq!(r, Err(DropReason::BadInnerPacket)),
            Some((_, dst, _)) if !routed(dst) => prop_assert_eq!(r, Err(DropReason::NoRoute)),
            Some(_) if !session => prop_assert_eq!(r, Ok(Sent::Staged { peer: b_at_a })),
            Some(_) if out_len < needed => {
                prop_assert!(r.is_err(), "{} bytes into a {} byte buffer: {:?}", needed, out_len, r);
                prop_assert_eq!(send_counter(&p, b_at_a), before);
            }
            Some((src, _, claimed)) => {
                let dst = p.b.addr;
                prop_assert_eq!(r, Ok(Sent::Transmit { peer: b_at_a, dst, src: None, len: needed }));
                prop_assert_eq!(send_counter(&p, b_at_a), before.map(|c| c + 1));
                let from = p.a.addr;
                let got = p.b.receive(&mut p.clock, from, &buf[..needed]);
                if src == IpAddr::from(A_IP) || src == IpAddr::from(A_IP6) {
                    prop_assert!(matches!(got, Ok(Received::Data { peer, .. }) if peer == a_at_b), "{:?}", got);
                    prop_assert_eq!(&p.b.delivered.last().expect("delivered").1[..], &pkt[..claimed]);
                } else {
                    prop_assert_eq!(got, Err(DropReason::SourceNotAllowed));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// ip::parse agrees with the header rules on random and shaped input, and never claims a
    /// length beyond the buffer.
    #[test]
    fn ip_parse_follows_the_header_rules(
        pkt in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(any::<u8>(), 0..2000),
            inner_packet().prop_map(|s| s.build()),
        ],
    ) {
        let got = ip::parse(&pkt);
        if let Ok(i) = &got {
            prop_assert!(i.len <= pkt.len(), "claimed {} of {} bytes", i.len, pkt.len());
        }
        prop_assert_eq!(got.map(|i| (i.src, i.dst, i.len)), model_ip(&pkt).ok_or(DropReason::BadInnerPacket));
        prop_assert_eq!(ip::destination(&pkt).ok(), model_ip(&pkt).map(|m| m.1));
    }
}

// ---------------------------------------------------------------------------------------------
// keys::decode_key
// ---------------------------------------------------------------------------------------------

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A key string is valid exactly when, after trimming, it is 43 base64 characters encoding 256
/// bits (so the last one's two spare bits are zero) and one '='.
fn model_key_ok(s: &str) -> bool {
    let t = s.trim().as_bytes();
    t.len() == 44
        && t[43] == b'='
        && t[..43].iter().all(|c| BASE64.contains(c))
        && BASE64
            .iter()
            .position(|&c| c == t[42])
            .is_some_and(|v| v & 3 == 0)
}

proptest! {
    #![proptest_config(config(1024))]

    /// Arbitrary strings, and strings close to keys, never panic; exactly the canonical ones
    /// decode, and what decodes re-encodes to the trimmed input.
    #[test]
    fn decode_key_accepts_exactly_canonical_keys(
        s in prop_oneof![
            any::<String>(),
            "[ \t\r\n]{0,2}[A-Za-z0-9+/=]{40,48}[ \t\r\n]{0,2}",
            "[ \t\r\n]{0,2}[A-Za-z0-9+/]{43}=[ \t\r\n]{0,2}",
            "[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=",
        ],
    ) {
        let got = decode_key(&s);
        prop_assert_eq!(got.is_ok(), model_key_ok(&s), "{:?}: {:?}", s, got);
        if let Ok(k) = got {
            prop_assert_eq!(encode_key(&k), s.trim());
        }
    }

    #[test]
    fn encoded_keys_decode_back_with_surrounding_whitespace(
        k in any::<[u8; 32]>(),
        pre in "[ \t\r\n]{0,3}",
        post in "[ \t\r\n]{0,3}",
    ) {
        let s = format!("{pre}{}{post}", encode_key(&k));
        prop_assert_eq!(decode_key(&s).map(|d| *d), Ok(k));
    }
}
