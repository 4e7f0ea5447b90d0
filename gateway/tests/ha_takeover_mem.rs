//! HA takeover of many sessions at once, in memory: two gateways (the real worker, handshake
//! and session-sync threads; the sync channel on loopback UDP, the data path on in-memory
//! I/O) share a key and N peers; N clients (sluice's protocol core) handshake with gateway A,
//! which syncs every session to B; A stops; B becomes VRRP master (the notify hook's control
//! request) and takes all N over at once. Proven: B's `/healthz` never fails and its worker
//! heartbeat stays fresh through the takeover and the N fresh handshakes it starts (which go
//! out paced: B never goes under load), every client's next packet authenticates at B on its
//! old session, and every client ends up on a fresh session with B, also when the first
//! initiation of each is lost and all of them are retransmitted. Before the pacing, the
//! takeover built N initiations in one go and their retransmits fired in one worker round:
//! with 10,000 sessions (sluice-bench failover) the worker stopped for 6 s, /healthz answered
//! 503 and keepalived took the VIP away again.
//!
//! Also: an inner packet for a peer with no session of ours but a held one takes that session
//! over (anycast), and the client decrypts it in the taker's counter region.
//!
//! No root needed. `SLUICE_TEST_TAKEOVER_USERS` changes N (default 1,000).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::ipv4;
use sluice::config::ha::{HaConfig, HaMode};
use sluice::datapath::ha::{Ha, SyncThread};
use sluice::datapath::handshake::HandshakeThread;
use sluice::datapath::icmp::IcmpReplies;
use sluice::datapath::io::{MemInner, MemOuter};
use sluice::datapath::observe::GatewayObserver;
use sluice::datapath::shared::{lock, Shared};
use sluice::datapath::worker::{Worker, WorkerStats};
use sluice::metrics::MetricsSource;
use sluice::proto::device::{Context, Device, Received, Sent};
use sluice::proto::hasync::{node_of_index, region_of};
use sluice::proto::peer::PeerConfig;
use sluice::proto::{SeededRng, Time, WallTime};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const GW_KEY: [u8; 32] = [0x58; 32];
const SINK: [u8; 4] = [10, 88, 0, 2];
/// The clients' Endpoint: the VIP both gateways answer on.
const VIP: &str = "192.0.2.10:51820";
const LONG: Duration = Duration::from_secs(120);

fn client_key(i: u32) -> [u8; 32] {
    let mut k = [0x77u8; 32];
    k[1..5].copy_from_slice(&i.to_le_bytes());
    k[0] &= 248;
    k[31] = 64;
    k
}

fn client_ip(i: u32) -> [u8; 4] {
    [10, 78, (i >> 8) as u8, i as u8]
}

fn client_addr(i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::from([203, 0, 113, 7]), 10_000 + i as u16)
}

/// One gateway: its threads on in-memory I/O, HA with the real sync thread on loopback.
struct Gateway {
    shared: Arc<Shared>,
    ha: Arc<Ha>,
    outer: Arc<MemOuter>,
    inner: Arc<MemInner>,
    observer: GatewayObserver,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Gateway {
    fn start(node: u8, mode: HaMode, sockets: &[UdpSocket], peers: &[PeerConfig]) -> Gateway {
        let cfg = HaConfig {
            mode,
            node,
            members: sockets.iter().map(|s| s.local_addr().unwrap()).collect(),
            secret_file: "ha.key".into(),
            secret: zeroize::Zeroizing::new([0x42; 32]),
            vips: vec![],
            sync: true,
        };
        let shared = Arc::new(Shared::new(&GW_KEY, peers, 1420, 1));
        // Started well before the sessions it will hold (see hasync::START_MARGIN).
        let ha = Arc::new(Ha::new(&cfg, Time::ZERO, 1 + u64::from(node)));
        shared.index.set_partition(node, ha.held.clone());
        shared.ha.set(ha.clone()).unwrap();
        shared.start_peers();
        let outer = Arc::new(MemOuter::default());
        let inner = Arc::new(MemInner::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded(sluice::datapath::HANDSHAKE_QUEUE);
        let (worker, handshakes) = (
            Arc::new(WorkerStats::default()),
            Arc::new(WorkerStats::default()),
        );
        let w = Worker {
            id: 0,
            shared: shared.clone(),
            udp: outer.clone(),
            tun: inner.clone(),
            handshakes: tx.clone(),
            handshake_capacity: sluice::datapath::HANDSHAKE_QUEUE,
            stop: stop.clone(),
            stats: worker.clone(),
            icmp: IcmpReplies::new(None, None),
        };
        let h = HandshakeThread {
            shared: shared.clone(),
            udp: outer.clone(),
            jobs: rx,
            stop: stop.clone(),
            stats: handshakes.clone(),
        };
        let sync = SyncThread {
            ha: ha.clone(),
            shared: shared.clone(),
            socket: sockets[usize::from(node)].try_clone().unwrap(),
            stop: stop.clone(),
        };
        let threads = vec![
            std::thread::spawn(move || w.run()),
            std::thread::spawn(move || h.run()),
            std::thread::spawn(move || sync.run()),
        ];
        let observer = GatewayObserver {
            interface: format!("mem{node}"),
            shared: shared.clone(),
            workers: vec![worker],
            handshakes: vec![handshakes],
            queue: tx,
            fast: None,
            udp: Vec::new(),
        };
        Gateway {
            shared,
            ha,
            outer,
            inner,
            observer,
            stop,
            threads,
        }
    }

    /// Non-zero drop counters of the worker and the handshake thread.
    fn drops(&self) -> Vec<(&'static str, u64)> {
        let stats = self
            .observer
            .workers
            .iter()
            .chain(&self.observer.handshakes);
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for s in stats {
            for r in sluice::DropReason::ALL {
                let n = s.drops[r as usize].load(Ordering::Relaxed);
                if n > 0 {
                    out.push((r.label(), n));
                }
            }
        }
        out
    }

    fn push_all(&self, from: impl IntoIterator<Item = (SocketAddr, Vec<u8>)>) {
        lock(&self.outer.inbox).extend(from);
    }

    fn take_sent(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut *lock(&self.outer.sent))
    }

    /// Peers whose current session is one this gateway derived itself.
    fn own_sessions(&self, node: u8) -> usize {
        let table = self.shared.table();
        table
            .iter()
            .filter(|(_, slot)| {
                lock(slot)
                    .keypairs()
                    .current()
                    .is_some_and(|k| node_of_index(k.local_index) == node)
            })
            .count()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An inner packet a client received, and the counter it came under.
type Delivered = (Vec<u8>, u64);

/// The clients' clock: real time since `started`, from one second.
fn context(started: Instant, rng: &mut SeededRng) -> Context<'_> {
    let d = started.elapsed() + Duration::from_secs(1);
    Context {
        now: Time::ZERO + d,
        wall: WallTime::new(1_800_000_000 + d.as_secs(), d.subsec_nanos()),
        rng,
    }
}

/// A client: sluice's protocol core with the gateway (at the VIP) as its one peer.
struct Client {
    dev: Device,
    rng: SeededRng,
    started: Instant,
}

impl Client {
    fn new(i: u32) -> Client {
        let mut dev = Device::new(&client_key(i));
        dev.add_peer(
            Time::ZERO,
            &PeerConfig {
                public_key: sluice::keys::public_from_private(&GW_KEY),
                endpoint: Some(VIP.parse().unwrap()),
                allowed_ips: vec![("10.88.0.0".parse().unwrap(), 24)],
                ..Default::default()
            },
        )
        .unwrap();
        Client {
            dev,
            rng: SeededRng::new(u64::from(i)),
            started: Instant::now(),
        }
    }

    /// Send an inner packet: what goes on the wire (data, or an initiation and later data).
    fn send(&mut self, packet: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; packet.len() + 64];
        let mut wire = Vec::new();
        let mut cx = context(self.started, &mut self.rng);
        if let Ok(Sent::Transmit { len, .. }) = self.dev.send(&mut cx, packet, &mut out) {
            out.truncate(len);
            wire.push(out);
        }
        wire.extend(std::iter::from_fn(|| self.dev.poll_transmit()).map(|t| t.data));
        wire
    }

    /// Handle one datagram from the gateway: the inner packet if it was data (and the
    /// counter it came with), and what to send back.
    fn receive(&mut self, mut d: Vec<u8>) -> (Option<Delivered>, Vec<Vec<u8>>) {
        let counter = (d.first() == Some(&4) && d.len() >= 16)
            .then(|| u64::from_le_bytes(d[8..16].try_into().unwrap()));
        let mut cx = context(self.started, &mut self.rng);
        let got = match self
            .dev
            .handle_datagram(&mut cx, VIP.parse().unwrap(), &mut d)
        {
            Ok(Received::Data { packet, .. }) => counter.map(|c| (d[packet].to_vec(), c)),
            _ => None,
        };
        let replies = std::iter::from_fn(|| self.dev.poll_transmit())
            .map(|t| t.data)
            .collect();
        (got, replies)
    }
}

fn peers(n: u32) -> Vec<PeerConfig> {
    (0..n)
        .map(|i| PeerConfig {
            public_key: sluice::keys::public_from_private(&client_key(i)),
            allowed_ips: vec![(IpAddr::from(client_ip(i)), 32)],
            ..Default::default()
        })
        .collect()
}

fn sync_sockets() -> Vec<UdpSocket> {
    (0..2)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
            s
        })
        .collect()
}

/// Relay what `gw` sent to the clients and their answers back, until `done` (bounded).
/// Returns the inner packets the clients received, with their counters, by client.
/// With `ignore_first_initiation`, each client drops the first handshake initiation it gets
/// (as if its response was lost), so the gateway retransmits them REKEY_TIMEOUT later.
fn relay(
    gw: &Gateway,
    clients: &mut [Client],
    what: &str,
    ignore_first_initiation: bool,
    done: impl Fn(&Gateway) -> bool,
) -> HashMap<u32, Vec<Delivered>> {
    let mut ignored = vec![!ignore_first_initiation; clients.len()];
    let by_addr: HashMap<SocketAddr, u32> = (0..clients.len() as u32)
        .map(|i| (client_addr(i), i))
        .collect();
    let mut got: HashMap<u32, Vec<Delivered>> = HashMap::new();
    let end = Instant::now() + LONG;
    while !done(gw) {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; drops: {:?}; delivered inside: {}",
            gw.drops(),
            lock(&gw.inner.written).len()
        );
        let sent = gw.take_sent();
        if sent.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let mut back = Vec::new();
        for (dst, d) in sent {
            let Some(&i) = by_addr.get(&dst) else {
                continue;
            };
            if d.first() == Some(&1) && !ignored[i as usize] {
                ignored[i as usize] = true;
                continue;
            }
            let (data, replies) = clients[i as usize].receive(d);
            if let Some(p) = data {
                got.entry(i).or_default().push(p);
            }
            back.extend(replies.into_iter().map(|r| (client_addr(i), r)));
        }
        gw.push_all(back);
    }
    got
}

/// Samples B's health every few milliseconds while the takeover runs.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Vec<String>, bool, u64)>>,
}

impl HealthWatch {
    fn start(gw: &Gateway) -> HealthWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, shared) = (stop.clone(), gw.shared.clone());
        let observer = GatewayObserver {
            interface: gw.observer.interface.clone(),
            shared: gw.shared.clone(),
            workers: gw.observer.workers.clone(),
            handshakes: gw.observer.handshakes.clone(),
            queue: gw.observer.queue.clone(),
            fast: None,
            udp: Vec::new(),
        };
        let thread = std::thread::spawn(move || {
            let (mut failures, mut under_load, mut samples) = (Vec::new(), false, 0u64);
            while !s.load(Ordering::Relaxed) {
                if let Err(e) = observer.healthy() {
                    failures.push(e);
                }
                under_load |= shared.is_under_load(shared.clock.now());
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (failures, under_load, samples)
        });
        HealthWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<String>, bool, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// N clients handshake with A (a bounded number in flight, so A never goes under load) and
/// send a first packet; A syncs every session to B.
fn connect_all(a: &Gateway, b: &Gateway, clients: &mut [Client]) {
    let n = clients.len() as u32;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut init = Vec::new();
        for &i in chunk {
            let payload = format!("first {i}");
            init.extend(
                clients[i as usize]
                    .send(&ipv4(client_ip(i), SINK, payload.as_bytes()))
                    .into_iter()
                    .map(|d| (client_addr(i), d)),
            );
        }
        a.push_all(init);
        let want = chunk.len() + (chunk[0] as usize);
        relay(a, clients, "A's handshakes", false, |g| {
            lock(&g.inner.written).len() >= want
        });
    }
    let end = Instant::now() + LONG;
    while lock(&b.ha.held).held_for_others() < n as usize {
        assert!(Instant::now() < end, "B never held all {n} sessions");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn users() -> u32 {
    std::env::var("SLUICE_TEST_TAKEOVER_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn taking_over_many_sessions_never_stalls_the_worker_or_health() {
    let n = users();
    let sockets = sync_sockets();
    let peers = peers(n);
    let mut a = Gateway::start(0, HaMode::Vrrp, &sockets, &peers);
    let b = Gateway::start(1, HaMode::Vrrp, &sockets, &peers);
    let mut clients: Vec<Client> = (0..n).map(Client::new).collect();
    connect_all(&a, &b, &mut clients);
    assert_eq!(a.own_sessions(0), n as usize);
    // A is gone (its threads stop as a SIGKILL would stop them); B becomes master.
    a.stop();
    assert_eq!(b.observer.healthy(), Ok(()));
    let watch = HealthWatch::start(&b);
    assert_eq!(b.ha.handle_ctl(&b.shared, "ha-role master"), "ok");
    assert_eq!(b.ha.takeovers.load(Ordering::Relaxed), u64::from(n));
    // Every client's next packet goes on its old session, and authenticates at B.
    let delivered_before = lock(&b.inner.written).len();
    let mut next = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let payload = format!("after {i}");
        let wire = c.send(&ipv4(client_ip(i as u32), SINK, payload.as_bytes()));
        assert_eq!(wire.len(), 1, "client {i} sends data on its old session");
        next.push((client_addr(i as u32), wire.into_iter().next().unwrap()));
    }
    b.push_all(next);
    // B's fresh handshakes reach every client (paced); the clients ignore the first (their
    // answers lost), so B retransmits all of them REKEY_TIMEOUT later, and answer those.
    let got = relay(
        &b,
        &mut clients,
        "every client on a fresh session with B",
        true,
        |g| {
            g.own_sessions(1) == n as usize
                && lock(&g.inner.written).len() >= delivered_before + n as usize
        },
    );
    let (failures, under_load, samples) = watch.finish();
    assert!(samples > 0);
    assert!(
        failures.is_empty(),
        "B's /healthz failed {} times during the takeover, first: {}",
        failures.len(),
        failures[0]
    );
    assert!(
        !under_load,
        "the paced takeover handshakes put B under load"
    );
    let after: Vec<Vec<u8>> = lock(&b.inner.written)[delivered_before..].to_vec();
    for i in 0..n {
        let payload = format!("after {i}");
        assert!(
            after.iter().any(|p| p.ends_with(payload.as_bytes())),
            "client {i}'s packet on its old session reached the inside"
        );
    }
    assert_eq!(b.ha.initiations_queued(), 0);
    assert_eq!(b.ha.rx_taken_over.load(Ordering::Relaxed), u64::from(n));
    // What B sent the clients under the new sessions are keepalives (confirmations).
    assert!(got.values().flatten().all(|(p, _)| p.is_empty()));
    let status = b.ha.status(&b.shared);
    assert_eq!(status["takeovers"], u64::from(n));
    assert_eq!(status["initiations_queued"], 0);
    drop(b);
    drop(a);
}

#[test]
fn an_inner_packet_takes_over_a_held_session() {
    let sockets = sync_sockets();
    let peers = peers(3);
    let mut a = Gateway::start(0, HaMode::Anycast, &sockets, &peers);
    let b = Gateway::start(1, HaMode::Anycast, &sockets, &peers);
    let mut clients: Vec<Client> = (0..3).map(Client::new).collect();
    connect_all(&a, &b, &mut clients);
    a.stop();
    // Something inside sends to client 1: B has no session for it, but holds A's.
    let reply = ipv4(SINK, client_ip(1), b"from the inside");
    lock(&b.inner.inbox).push_back(reply.clone());
    let got = relay(
        &b,
        &mut clients,
        "client 1 on a fresh session with B",
        false,
        |g| g.own_sessions(1) == 1,
    );
    let packets = &got[&1];
    let (first, counter) = &packets[0];
    assert_eq!(first, &reply, "the packet went on the session taken over");
    assert_eq!(region_of(*counter), 1, "in B's counter region");
    assert_eq!(b.ha.takeovers.load(Ordering::Relaxed), 1);
    // The others were not touched: still held.
    assert_eq!(lock(&b.ha.held).held_for_others(), 2);
    drop(b);
    drop(a);
}
