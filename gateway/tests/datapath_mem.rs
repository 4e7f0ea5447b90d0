//! The gateway's real worker and handshake threads, driven through in-memory I/O by a
//! WireGuard client (sluice's own protocol core): handshake through the handshake queue, data
//! both ways, cryptokey routing, replay, unknown keys, ICMP for unrouted packets, the cookie
//! path under load, and clean stop. No root, sockets or kernel needed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::{ipv4, key, public, Clock};
use sluice::datapath::handshake::HandshakeThread;
use sluice::datapath::icmp::IcmpReplies;
use sluice::datapath::io::{MemInner, MemOuter};
use sluice::datapath::shared::{lock, Shared};
use sluice::datapath::worker::{Worker, WorkerStats};
use sluice::proto::device::{Device, Received, Sent};
use sluice::proto::peer::PeerConfig;
use sluice::DropReason;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const GW_TUN: [u8; 4] = [10, 77, 0, 1];
const CLIENT_TUN: [u8; 4] = [10, 77, 0, 2];
const SINK: [u8; 4] = [10, 88, 0, 2];

struct Gateway {
    shared: Arc<Shared>,
    outer: Arc<MemOuter>,
    inner: Arc<MemInner>,
    worker: Arc<WorkerStats>,
    handshakes: Arc<WorkerStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Gateway {
    fn start(peers: &[PeerConfig], queue: usize) -> Gateway {
        let shared = Arc::new(Shared::new(&key(10), peers, 1420, 1));
        shared.start_peers();
        let outer = Arc::new(MemOuter::default());
        let inner = Arc::new(MemInner::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded(queue);
        let worker = Arc::new(WorkerStats::default());
        let handshakes = Arc::new(WorkerStats::default());
        let w = Worker {
            id: 0,
            shared: shared.clone(),
            udp: outer.clone(),
            tun: inner.clone(),
            handshakes: tx,
            handshake_capacity: queue,
            stop: stop.clone(),
            stats: worker.clone(),
            icmp: IcmpReplies::new(Some(GW_TUN.into()), None),
        };
        let h = HandshakeThread {
            shared: shared.clone(),
            udp: outer.clone(),
            jobs: rx,
            stop: stop.clone(),
            stats: handshakes.clone(),
        };
        let threads = vec![
            std::thread::spawn(move || w.run()),
            std::thread::spawn(move || h.run()),
        ];
        Gateway {
            shared,
            outer,
            inner,
            worker,
            handshakes,
            stop,
            threads,
            addr: "192.0.2.1:51820".parse().unwrap(),
        }
    }

    fn public(&self) -> [u8; 32] {
        *self.shared.identity.public_key()
    }

    fn push(&self, from: SocketAddr, data: Vec<u8>) {
        lock(&self.outer.inbox).push_back((from, data));
    }

    fn drops(&self, r: DropReason) -> u64 {
        self.worker.drops[r as usize].load(Ordering::Relaxed)
            + self.handshakes.drops[r as usize].load(Ordering::Relaxed)
    }

    /// Wait (bounded) until `f` holds.
    fn wait(&self, what: &str, f: impl Fn(&Gateway) -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !f(self) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn take_sent(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut *lock(&self.outer.sent))
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

/// A client: sluice's protocol core with the gateway as its one peer.
struct Client {
    dev: Device,
    clock: Clock,
    addr: SocketAddr,
}

impl Client {
    fn new(seed: u8, gw: &Gateway) -> Client {
        let clock = Clock::new(u64::from(seed));
        let mut dev = Device::new(&key(seed));
        dev.add_peer(
            clock.now,
            &PeerConfig {
                public_key: gw.public(),
                endpoint: Some(gw.addr),
                allowed_ips: vec![
                    ("10.77.0.0".parse().unwrap(), 24),
                    ("10.88.0.0".parse().unwrap(), 24),
                ],
                ..Default::default()
            },
        )
        .unwrap();
        Client {
            dev,
            clock,
            addr: format!("203.0.113.{seed}:40000").parse().unwrap(),
        }
    }

    /// Send an inner packet: the datagrams to put on the wire (data, or a staged packet's
    /// initiation).
    fn send(&mut self, packet: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; packet.len() + 64];
        let mut wire = Vec::new();
        if let Ok(Sent::Transmit { len, .. }) =
            self.dev.send(&mut self.clock.cx(), packet, &mut out)
        {
            out.truncate(len);
            wire.push(out);
        }
        wire.extend(std::iter::from_fn(|| self.dev.poll_transmit()).map(|t| t.data));
        wire
    }

    /// Receive datagrams from the gateway; returns the inner packets and what to send back.
    fn receive(&mut self, datagrams: Vec<(SocketAddr, Vec<u8>)>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut inner = Vec::new();
        for (_, mut d) in datagrams {
            if let Ok(Received::Data { packet, .. }) = self.dev.handle_datagram(
                &mut self.clock.cx(),
                "192.0.2.1:51820".parse().unwrap(),
                &mut d,
            ) {
                inner.push(d[packet].to_vec());
            }
        }
        let replies = std::iter::from_fn(|| self.dev.poll_transmit())
            .map(|t| t.data)
            .collect();
        (inner, replies)
    }
}

fn client_peer(seed: u8) -> PeerConfig {
    PeerConfig {
        public_key: public(&key(seed)),
        allowed_ips: vec![(format!("10.77.0.{seed}").parse().unwrap(), 32)],
        ..Default::default()
    }
}

/// Handshake the client with the gateway and deliver its first packet.
fn connect(gw: &Gateway, c: &mut Client, first: &[u8]) {
    for d in c.send(first) {
        gw.push(c.addr, d);
    }
    gw.wait("the handshake response", |g| {
        !lock(&g.outer.sent).is_empty()
    });
    let (_, replies) = c.receive(gw.take_sent());
    for d in replies {
        gw.push(c.addr, d);
    }
}

#[test]
fn handshake_and_data_both_ways_through_the_real_worker() {
    let gw = Gateway::start(&[client_peer(2)], 64);
    let mut c = Client::new(2, &gw);
    let up = ipv4(CLIENT_TUN, SINK, b"to the inside");
    connect(&gw, &mut c, &up);
    gw.wait("the first packet inside", |g| {
        !lock(&g.inner.written).is_empty()
    });
    assert_eq!(lock(&gw.inner.written)[0], up);

    // Inside to the client: the worker routes by destination and encrypts.
    let down = ipv4(SINK, CLIENT_TUN, &[0xab; 1300]);
    lock(&gw.inner.inbox).push_back(down.clone());
    gw.wait("the reply datagram", |g| !lock(&g.outer.sent).is_empty());
    let sent = gw.take_sent();
    assert!(
        sent.iter().all(|(dst, _)| *dst == c.addr),
        "sent to the learned endpoint"
    );
    let (inner, _) = c.receive(sent);
    assert_eq!(inner, vec![down]);

    // A burst in each direction arrives complete and in order.
    let burst: Vec<Vec<u8>> = (0..100u8)
        .map(|i| ipv4(CLIENT_TUN, SINK, &[i; 200]))
        .collect();
    for p in &burst {
        for d in c.send(p) {
            gw.push(c.addr, d);
        }
    }
    gw.wait("the burst inside", |g| lock(&g.inner.written).len() == 101);
    assert_eq!(lock(&gw.inner.written)[1..], burst[..]);
    assert_eq!(
        gw.drops(DropReason::Replayed) + gw.drops(DropReason::DecryptFailed),
        0
    );
    gw.stop();
}

#[test]
fn spoofed_inner_source_and_replays_are_dropped_and_counted() {
    let gw = Gateway::start(&[client_peer(2)], 64);
    let mut c = Client::new(2, &gw);
    connect(&gw, &mut c, &ipv4(CLIENT_TUN, SINK, b"hello"));
    gw.wait("first packet", |g| lock(&g.inner.written).len() == 1);

    let spoofed = c.send(&ipv4([10, 77, 0, 99], SINK, b"not mine"));
    gw.push(c.addr, spoofed[0].clone());
    gw.wait("the spoofed packet to be counted", |g| {
        g.drops(DropReason::SourceNotAllowed) == 1
    });

    let genuine = c.send(&ipv4(CLIENT_TUN, SINK, b"once only"));
    gw.push(c.addr, genuine[0].clone());
    gw.push(c.addr, genuine[0].clone());
    gw.wait("the replay to be counted", |g| {
        g.drops(DropReason::Replayed) == 1
    });
    assert_eq!(
        lock(&gw.inner.written).len(),
        2,
        "hello and once-only, nothing else"
    );
    gw.stop();
}

/// Transport data is opened a whole receive batch at a time: a tampered message (ciphertext
/// or tag) fails alone, and everything around it is delivered, in order.
#[test]
fn a_tampered_message_in_a_batch_fails_alone() {
    let gw = Gateway::start(&[client_peer(2)], 64);
    let mut c = Client::new(2, &gw);
    connect(&gw, &mut c, &ipv4(CLIENT_TUN, SINK, b"hello"));
    gw.wait("first packet", |g| lock(&g.inner.written).len() == 1);
    let packets: Vec<Vec<u8>> = (0..24u8)
        .map(|i| ipv4(CLIENT_TUN, SINK, &vec![i; 40 + usize::from(i) * 50]))
        .collect();
    let mut wire: Vec<Vec<u8>> = packets.iter().map(|p| c.send(p).remove(0)).collect();
    wire[7][20] ^= 1; // ciphertext
    let last = wire[13].len() - 1;
    wire[13][last] ^= 0x80; // tag
                            // Queued together, so the worker takes them in as few batches as it can.
    {
        let mut inbox = lock(&gw.outer.inbox);
        for d in wire {
            inbox.push_back((c.addr, d));
        }
    }
    gw.wait("the good ones inside", |g| {
        lock(&g.inner.written).len() == 1 + 22
    });
    gw.wait("both failures counted", |g| {
        g.drops(DropReason::DecryptFailed) == 2
    });
    let want: Vec<Vec<u8>> = packets
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 7 && *i != 13)
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(lock(&gw.inner.written)[1..], want[..]);
    assert_eq!(gw.drops(DropReason::Replayed), 0);
    gw.stop();
}

#[test]
fn unknown_key_gets_no_answer() {
    let gw = Gateway::start(&[client_peer(2)], 64);
    let mut stranger = Client::new(3, &gw);
    for d in stranger.send(&ipv4([10, 77, 0, 3], SINK, b"let me in")) {
        gw.push(stranger.addr, d);
    }
    gw.wait("the stranger to be counted", |g| {
        g.drops(DropReason::UnknownPeer) == 1
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        lock(&gw.outer.sent).is_empty(),
        "no response to an unknown key"
    );
    gw.stop();
}

#[test]
fn unrouted_inner_packets_get_icmp_unreachable() {
    let gw = Gateway::start(&[client_peer(2)], 64);
    lock(&gw.inner.inbox).push_back(ipv4(SINK, [10, 99, 9, 9], b"nobody"));
    gw.wait("the ICMP reply", |g| !lock(&g.inner.written).is_empty());
    let icmp = lock(&gw.inner.written)[0].clone();
    assert_eq!(icmp[9], 1, "ICMP");
    assert_eq!(&icmp[16..20], &SINK, "back to the sender");
    assert_eq!((icmp[20], icmp[21]), (3, 1), "host unreachable");
    assert_eq!(gw.drops(DropReason::NoRoute), 1);
    gw.stop();
}

#[test]
fn a_deep_handshake_queue_turns_on_the_cookie_path() {
    // With a queue of 8, one waiting message (counting itself, as the kernel does) is
    // already 1/8 full: under load. The client gets a cookie reply, and its retry with mac2
    // succeeds.
    let gw = Gateway::start(&[client_peer(2)], 8);
    let mut c = Client::new(2, &gw);
    let first = ipv4(CLIENT_TUN, SINK, b"busy?");
    for d in c.send(&first) {
        gw.push(c.addr, d);
    }
    gw.wait("a cookie reply", |g| {
        lock(&g.outer.sent).iter().any(|(_, d)| d[0] == 3)
    });
    let (_, replies) = c.receive(gw.take_sent());
    assert!(replies.is_empty());
    // The client's retry timer fires after REKEY_TIMEOUT; run it on its simulated clock.
    c.clock.advance(Duration::from_secs(6));
    c.dev.handle_timeout(&mut c.clock.cx());
    let retry: Vec<Vec<u8>> = std::iter::from_fn(|| c.dev.poll_transmit())
        .map(|t| t.data)
        .collect();
    assert_eq!(retry.len(), 1);
    assert_ne!(&retry[0][132..148], &[0u8; 16], "retry carries mac2");
    gw.push(c.addr, retry[0].clone());
    gw.wait("the response", |g| {
        lock(&g.outer.sent).iter().any(|(_, d)| d[0] == 2)
    });
    let (_, data) = c.receive(gw.take_sent());
    for d in data {
        gw.push(c.addr, d);
    }
    gw.wait("the staged packet inside", |g| {
        !lock(&g.inner.written).is_empty()
    });
    assert_eq!(lock(&gw.inner.written)[0], first);
    assert!(gw.drops(DropReason::CookieRequired) >= 1);
    gw.stop();
}

#[test]
fn peers_added_and_removed_at_run_time_without_disturbing_others() {
    use sluice::datapath::peers::PeerChange;
    let gw = Gateway::start(&[client_peer(2)], 64);
    let mut a = Client::new(2, &gw);
    connect(&gw, &mut a, &ipv4(CLIENT_TUN, SINK, b"a first"));
    gw.wait("a's first packet", |g| lock(&g.inner.written).len() == 1);

    // Client 3 is not a peer yet: no answer.
    let mut b = Client::new(3, &gw);
    for d in b.send(&ipv4([10, 77, 0, 3], SINK, b"too early")) {
        gw.push(b.addr, d);
    }
    gw.wait("b refused", |g| g.drops(DropReason::UnknownPeer) == 1);

    // Add it: the next initiation (b retries on its timer) is answered.
    let s = gw
        .shared
        .apply(
            false,
            &[PeerChange::Upsert {
                update: Default::default(),
                cfg: client_peer(3),
                replace_allowed_ips: false,
                update_only: false,
            }],
        )
        .unwrap();
    assert_eq!((s.added, s.updated, s.removed), (1, 0, 0));
    gw.take_sent();
    b.clock.advance(Duration::from_secs(6));
    b.dev.handle_timeout(&mut b.clock.cx());
    for t in std::iter::from_fn(|| b.dev.poll_transmit()) {
        gw.push(b.addr, t.data);
    }
    gw.wait("b's handshake response", |g| {
        lock(&g.outer.sent).iter().any(|(d, _)| *d == b.addr)
    });
    let (_, staged) = b.receive(gw.take_sent());
    for d in staged {
        gw.push(b.addr, d);
    }
    gw.wait("b's staged packet inside", |g| {
        lock(&g.inner.written)
            .iter()
            .any(|p| p.ends_with(b"too early"))
    });

    // Remove a: its keys are wiped at once (its receiver index is freed), so its next packet
    // finds no session; b carries on.
    assert_eq!(gw.shared.index.len(), 2, "one live session each");
    let s = gw
        .shared
        .apply(false, &[PeerChange::Remove(public(&key(2)))])
        .unwrap();
    assert_eq!(s.removed, 1);
    assert_eq!(
        gw.shared.index.len(),
        1,
        "a's session index released with its keys"
    );
    let before = gw.drops(DropReason::UnknownIndex);
    for d in a.send(&ipv4(CLIENT_TUN, SINK, b"a after removal")) {
        gw.push(a.addr, d);
    }
    for d in b.send(&ipv4([10, 77, 0, 3], SINK, b"b after removal")) {
        gw.push(b.addr, d);
    }
    gw.wait("b's packet inside", |g| {
        lock(&g.inner.written)
            .iter()
            .any(|p| p.ends_with(b"b after removal"))
    });
    gw.wait("a's packet refused", |g| {
        g.drops(DropReason::UnknownIndex) > before
    });
    assert!(!lock(&gw.inner.written)
        .iter()
        .any(|p| p.ends_with(b"a after removal")));
    assert!(gw.shared.table().by_key(&public(&key(2))).is_none());

    // A change with an invalid peer (our own key) applies nothing.
    let own = PeerConfig {
        public_key: gw.public(),
        ..Default::default()
    };
    let invalid = [
        PeerChange::Upsert {
            update: Default::default(),
            cfg: client_peer(4),
            replace_allowed_ips: false,
            update_only: false,
        },
        PeerChange::Upsert {
            update: Default::default(),
            cfg: own,
            replace_allowed_ips: false,
            update_only: false,
        },
    ];
    assert!(gw.shared.apply(false, &invalid).is_err());
    assert!(
        gw.shared.table().by_key(&public(&key(4))).is_none(),
        "all or nothing"
    );
    gw.stop();
}

#[test]
fn health_turns_bad_when_a_worker_stops_and_metrics_count_traffic() {
    use sluice::datapath::observe::{GatewayObserver, STALL};
    use sluice::metrics::{MetricsSource, PeerSeries};
    let gw = Gateway::start(&[client_peer(2)], 64);
    let (queue, _rx) = crossbeam_channel::bounded(1);
    let observer = GatewayObserver {
        interface: "mem0".into(),
        shared: gw.shared.clone(),
        workers: vec![gw.worker.clone()],
        handshakes: vec![gw.handshakes.clone()],
        queue,
        fast: None,
        udp: Vec::new(),
    };
    let mut c = Client::new(2, &gw);
    connect(&gw, &mut c, &ipv4(CLIENT_TUN, SINK, b"counted"));
    gw.wait("the packet inside", |g| !lock(&g.inner.written).is_empty());
    gw.wait("the worker to publish", |g| {
        g.worker.rx_packets.load(Ordering::Relaxed) >= 1
    });
    assert_eq!(observer.healthy(), Ok(()));
    let snap = observer.snapshot(PeerSeries::All);
    assert_eq!(snap.peers.len(), 1);
    assert!(snap.peers[0].rx_bytes > 0 && snap.peers[0].last_handshake_unix.is_some());
    assert!(snap.workers[0].rx_packets >= 1);
    assert_eq!(observer.snapshot(PeerSeries::Off).peers.len(), 0);

    // Stop the threads (as a crash would): within STALL, health reports the worker.
    gw.stop.store(true, Ordering::Relaxed);
    std::thread::sleep(STALL + Duration::from_millis(300));
    let err = observer.healthy().unwrap_err();
    assert!(err.contains("worker 0"), "{err}");
    gw.stop();
}
