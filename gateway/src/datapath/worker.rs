//! A data-path worker: one thread pinned to one core, owning one UDP socket and one TUN queue,
//! running to completion on batches.
//!
//! - **Outer → inner**: `recvmmsg` a batch; transport data is decrypted here under the peer's
//!   lock, checked against the peer's allowed IPs and written to the TUN; handshake messages
//!   get their (cheap) mac1 checked and go to the handshake threads through a bounded queue.
//!   A full queue drops and counts; its depth drives the under-load state.
//! - **Inner → outer**: read a batch from the TUN queue, route by destination through the
//!   allowed-IPs table, encrypt, `sendmmsg`.
//! - **Timers** for the peers this worker owns fire from its own deadline heap.

use super::icmp::IcmpReplies;
use super::io::{send_transmits, Inner, InnerFrame, Outer};
use super::peers::PeerTable;
use super::shared::{lock, Deadline, Shared};
use super::udp::{RecvBatch, Segments, BATCH, MAX_SEGMENTS};
use crate::crypto::batch::{
    open_batch, open_batch_in_place, seal_batch_in_place, OpenInPlaceJob, OpenJob, SealInPlaceJob,
};
use crate::proto::effects::{Context, Event, Outbox, Sent};
use crate::proto::endpoint::Endpoint;
use crate::proto::ip;
use crate::proto::messages::transport::PAYLOAD_START;
use crate::proto::messages::{self, Transport, TYPE_COOKIE_REPLY, TYPE_TRANSPORT};
use crate::proto::peer::PeerId;
use crate::proto::receive::check_source;
use crate::{DropCounters, DropReason, OsRng};
use crossbeam_channel::{Sender, TrySendError};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Longest a worker sleeps in `poll`, so it notices stop requests and deadlines other threads
/// file for its peers without a dedicated wake-up channel.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// A loop round (batches, timers, sends) longer than this is logged with what took the time.
const SLOW_LOOP: Duration = Duration::from_millis(250);
/// Longest a loop round runs due timers; the rest run in the next rounds.
const TIMER_BUDGET: Duration = Duration::from_millis(20);
/// Batches taken from one side before looking at the other, so neither starves.
const ROUNDS_PER_WAKE: usize = 8;
/// Handshake queue depth (per gateway) beyond which handshakes count as under load.
pub const UNDER_LOAD_DEPTH_DIVISOR: usize = 8;
/// How long one sign of load keeps the under-load state on.
pub const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);

/// A handshake message on its way to a handshake thread.
#[derive(Debug)]
pub struct HandshakeJob {
    /// The sender, and our address it sent to (the source of the reply).
    pub src: Endpoint,
    pub data: Vec<u8>,
}

/// Counters a worker publishes for the status file and, later, metrics.
#[derive(Debug)]
pub struct WorkerStats {
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Last time (clock ns) the worker went round its loop: a stuck worker stops moving it.
    pub heartbeat: AtomicU64,
    /// How many receive batches had exactly n datagrams (n up to [`MAX_COUNTED_BATCH`]).
    pub batch_sizes: Vec<AtomicU64>,
    /// Why the thread stopped for good, set if it panicked (see [`super::fault`]).
    pub exited: std::sync::OnceLock<String>,
}

/// Receive batches larger than this (GRO can make them) are counted as this size.
pub const MAX_COUNTED_BATCH: usize = 128;

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            rx_packets: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            heartbeat: AtomicU64::new(0),
            batch_sizes: (0..=MAX_COUNTED_BATCH).map(|_| AtomicU64::new(0)).collect(),
            exited: std::sync::OnceLock::new(),
        }
    }
}

impl WorkerStats {
    /// Publish a thread's local counters (only that thread writes these atomics).
    /// Publish a worker's receive-batch histogram.
    pub fn publish_batches(&self, batches: &[u64]) {
        for (a, &n) in self.batch_sizes.iter().zip(batches) {
            a.store(n, Ordering::Relaxed);
        }
    }

    pub fn publish(&self, drops: &DropCounters, rx: u64, tx: u64) {
        for r in DropReason::ALL {
            self.drops[r as usize].store(drops.get(r), Ordering::Relaxed);
        }
        self.rx_packets.store(rx, Ordering::Relaxed);
        self.tx_packets.store(tx, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Worker<O, I> {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub udp: Arc<O>,
    pub tun: I,
    pub handshakes: Sender<HandshakeJob>,
    pub handshake_capacity: usize,
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<WorkerStats>,
    pub icmp: IcmpReplies,
}

/// The worker's private, reused buffers and counters.
struct Local {
    rx: RecvBatch,
    inner: Vec<u8>,
    /// Encrypted datagrams of one batch, packed back to back so runs to one endpoint can go
    /// out as single GSO sends.
    tx_buf: Vec<u8>,
    tx_used: usize,
    runs: Vec<Run>,
    out: Outbox,
    heap: BinaryHeap<Reverse<Deadline>>,
    drops: DropCounters,
    rx_packets: u64,
    tx_packets: u64,
    batches: Vec<u64>,
    rng: OsRng,
    /// Transport messages of the current receive batch waiting for the batched open.
    opens: Vec<PendingOpen>,
    /// Messages of the current send batch waiting for the batched seal.
    seals: Vec<PendingSeal>,
}

/// A received transport message that passed the checks before opening.
struct PendingOpen {
    /// Its index in the receive batch.
    index: usize,
    peer: PeerId,
    receiver: u32,
    counter: u64,
    key: Zeroizing<[u8; crate::crypto::KEY_LEN]>,
}

/// An encrypted message whose seal was deferred to the batched call: `tx_buf[start..end]` is
/// its plaintext and tag room.
struct PendingSeal {
    start: usize,
    end: usize,
    counter: u64,
    key: Zeroizing<[u8; crate::crypto::KEY_LEN]>,
}

/// What the first pass over a received datagram decided.
enum Classified {
    /// Handled here: a handshake message or cookie reply queued for the handshake threads.
    Done,
    /// Transport data, to open in the batched call.
    Open(PendingOpen),
}

impl<O: Outer, I: Inner> Worker<O, I> {
    pub fn run(self) {
        let slot =
            self.shared.mtu + messages::transport::MIN_LEN + messages::transport::PADDING_MULTIPLE;
        let mut l = Local {
            rx: RecvBatch::default(),
            inner: vec![0u8; 65_536],
            tx_buf: vec![0u8; slot * BATCH],
            tx_used: 0,
            runs: Vec::with_capacity(BATCH),
            out: Outbox::default(),
            heap: BinaryHeap::new(),
            drops: DropCounters::default(),
            rx_packets: 0,
            tx_packets: 0,
            batches: vec![0; MAX_COUNTED_BATCH + 1],
            rng: OsRng,
            opens: Vec::with_capacity(BATCH * 4),
            seals: Vec::with_capacity(BATCH),
        };
        let mut fds: Vec<libc::pollfd> = [
            self.udp.readiness_fd(),
            self.tun.readiness_fd(),
            self.udp.extra_readiness_fd(),
            self.tun.extra_readiness_fd(),
        ]
        .into_iter()
        .flatten()
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
        // Without descriptors to wait on (in-memory I/O), poll only sleeps: keep it short.
        let max_sleep = if fds.len() >= 2 {
            MAX_SLEEP
        } else {
            Duration::from_millis(1)
        };
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.shared.clock.now();
            self.stats
                .heartbeat
                .store(now.as_nanos(), Ordering::Relaxed);
            super::fault::checkpoint(self.id);
            let sleep = l.heap.peek().map_or(max_sleep, |Reverse((t, _))| {
                t.saturating_since(now).min(max_sleep)
            });
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd for the duration of the call.
            unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    sleep.as_millis() as libc::c_int,
                )
            };
            let woke = std::time::Instant::now();
            let takeovers = self.takeovers();
            for _ in 0..ROUNDS_PER_WAKE {
                let a = self.outer_batch(&mut l);
                let b = self.inner_batch(&mut l);
                if a + b == 0 {
                    break;
                }
            }
            let io = woke.elapsed();
            let fired = self.run_timers(&mut l);
            let timers = woke.elapsed() - io;
            let transmits = l.out.transmits.len();
            self.flush_outbox(&mut l);
            let busy = woke.elapsed();
            if busy > SLOW_LOOP {
                // What held the loop up (heartbeat and /healthz only move once per loop).
                tracing::warn!(
                    worker = self.id,
                    busy_ms = busy.as_millis() as u64,
                    io_ms = io.as_millis() as u64,
                    timers_ms = timers.as_millis() as u64,
                    timers_fired = fired,
                    flush_ms = (busy - io - timers).as_millis() as u64,
                    transmits,
                    takeovers = self.takeovers() - takeovers,
                    "worker loop slow"
                );
            }
            // Handshake threads send on this socket too: whoever found a source gone, the
            // peers that had it forget it here.
            let gone = self.udp.take_vanished_sources();
            if !gone.is_empty() {
                self.shared.forget_sources(&gone);
            }
            self.stats.publish(&l.drops, l.rx_packets, l.tx_packets);
            self.stats.publish_batches(&l.batches);
        }
    }

    fn context<'a>(&self, rng: &'a mut OsRng) -> Context<'a> {
        Context {
            now: self.shared.clock.now(),
            wall: self.shared.clock.wall(),
            rng,
        }
    }

    /// Receive and handle one batch from the outer side; returns how many datagrams.
    ///
    /// Three passes, so that the transport data of the whole batch is opened in one batched
    /// AEAD call: classify each datagram (handshake messages are dealt with here; transport
    /// data is checked against its session: index, age, replay window), open all the
    /// transport data at once, then finish each (replay window, timers, roaming, cryptokey
    /// source check) and deliver it.
    fn outer_batch(&self, l: &mut Local) -> usize {
        let n = self.udp.recv_batch(&mut l.rx, &mut l.drops);
        if n > 0 {
            l.batches[n.min(MAX_COUNTED_BATCH)] += 1;
        }
        let table = self.shared.table();
        // One reading of the clocks per batch: a batch spans microseconds, and the protocol's
        // timers are seconds.
        let mut cx = Context {
            now: self.shared.clock.now(),
            wall: self.shared.clock.wall(),
            rng: &mut l.rng,
        };
        l.opens.clear();
        for i in 0..n {
            let Some((src, datagram)) = l.rx.get_endpoint_mut(i) else {
                break;
            };
            match classify_outer(self, &table, &mut cx, &mut l.out, src, datagram) {
                Ok(Classified::Open(mut p)) => {
                    p.index = i;
                    l.opens.push(p);
                }
                Ok(Classified::Done) => l.rx_packets += 1,
                Err(reason) => l.drops.count(reason),
            }
        }
        if l.opens.is_empty() {
            self.tun.flush();
            return n;
        }
        // An inner side that transmits from frames of its own (appliance mode) lends one per
        // message, and the open writes the plaintext straight into it.
        let mut lent: Vec<Option<InnerFrame<'_>>> = l
            .opens
            .iter()
            .map(|p| {
                let len = l.rx.get_mut(p.index).map_or(0, |(_, d)| d.len());
                self.tun
                    .lend_frame(len.saturating_sub(PAYLOAD_START + crate::crypto::TAG_LEN))
            })
            .collect();
        let results = open_all(&mut l.rx, &l.opens, &mut lent);
        for ((p, opened), frame) in l.opens.iter().zip(results).zip(lent) {
            let Some((src, datagram)) = l.rx.get_endpoint_mut(p.index) else {
                if let Some(f) = frame {
                    self.tun.return_frame(f);
                }
                continue;
            };
            let Some(plain_len) = opened else {
                if let Some(f) = frame {
                    self.tun.return_frame(f);
                }
                l.drops.count(DropReason::DecryptFailed);
                continue;
            };
            let finished = self
                .shared
                .with_peer(&table, p.peer, &mut cx, &mut l.out, |peer, env| {
                    peer.finish_transport(
                        env,
                        p.receiver,
                        p.counter,
                        plain_len,
                        datagram.len(),
                        src,
                    )
                })
                .unwrap_or(Err(DropReason::UnknownIndex));
            if let (Ok(_), Some(ha)) = (&finished, self.shared.ha.get()) {
                ha.note_received(p.receiver);
            }
            let payload = match finished {
                Ok(payload) if payload.is_empty() => {
                    if let Some(f) = frame {
                        self.tun.return_frame(f);
                    }
                    l.rx_packets += 1;
                    continue;
                }
                Ok(payload) => payload,
                Err(reason) => {
                    if let Some(f) = frame {
                        self.tun.return_frame(f);
                    }
                    l.drops.count(reason);
                    continue;
                }
            };
            if let Some(f) = frame {
                // Opened out of place: the plaintext is at the start of the lent frame.
                match check_source(&table.allowed_ips, p.peer, f.buf, 0..payload.len()) {
                    Ok(range) => {
                        if self.tun.send_frame(f, range) {
                            l.rx_packets += 1;
                        } else {
                            l.drops.count(DropReason::InnerQueueFull);
                        }
                    }
                    Err(reason) => {
                        self.tun.return_frame(f);
                        l.drops.count(reason);
                    }
                }
                continue;
            }
            match check_source(&table.allowed_ips, p.peer, datagram, payload) {
                Ok(range) => {
                    if self.tun.write(&datagram[range]) {
                        l.rx_packets += 1;
                    } else {
                        l.drops.count(DropReason::InnerQueueFull);
                    }
                }
                Err(reason) => l.drops.count(reason),
            }
        }
        l.opens.clear();
        self.tun.flush();
        n
    }

    /// Read one batch from the TUN queue, encrypt it and send it; returns how many packets.
    fn inner_batch(&self, l: &mut Local) -> usize {
        l.tx_used = 0;
        l.runs.clear();
        let slot = l.tx_buf.len() / BATCH;
        let table = self.shared.table();
        let mut cx = Context {
            now: self.shared.clock.now(),
            wall: self.shared.clock.wall(),
            rng: &mut l.rng,
        };
        let mut read = 0;
        l.seals.clear();
        while read < BATCH {
            let Some(n) = self.tun.read(&mut l.inner) else {
                break;
            };
            read += 1;
            let packet = &l.inner[..n];
            let off = l.tx_used;
            let out = &mut l.tx_buf[off..off + slot];
            // The seal is deferred to one batched call over the whole batch (below).
            let mut deferred = None;
            let mut seal = |key: &[u8; crate::crypto::KEY_LEN], counter: u64, sealed: &mut [u8]| {
                deferred = Some((Zeroizing::new(*key), counter, sealed.len()));
            };
            match route_and_encrypt(
                &self.shared,
                &table,
                &mut cx,
                &mut l.out,
                packet,
                out,
                &mut seal,
            ) {
                Ok(Some((dst, src, len))) => {
                    if let Some((key, counter, sealed_len)) = deferred.take() {
                        l.seals.push(PendingSeal {
                            start: off + len - sealed_len,
                            end: off + len,
                            counter,
                            key,
                        });
                    }
                    Run::extend(&mut l.runs, (dst, src), off, len);
                    l.tx_used += len;
                }
                Ok(None) => {}
                Err(reason) => {
                    if reason == DropReason::NoRoute {
                        self.icmp.unreachable(cx.now, &self.tun, packet);
                    }
                    l.drops.count(reason);
                }
            }
        }
        seal_all(&mut l.tx_buf, &l.seals);
        l.seals.clear();
        if !l.runs.is_empty() {
            let segs: Vec<Segments> = l
                .runs
                .iter()
                .map(|r| Segments {
                    dst: r.dst.0,
                    src: r.dst.1,
                    data: &l.tx_buf[r.start..r.start + r.total],
                    segment: r.segment,
                })
                .collect();
            l.tx_packets += self.udp.send(&segs, &mut l.drops) as u64;
        }
        read
    }

    /// Sessions this gateway took over so far (HA), for the slow-loop report.
    fn takeovers(&self) -> u64 {
        self.shared
            .ha
            .get()
            .map_or(0, |h| h.takeovers.load(Ordering::Relaxed))
    }

    /// Run the due timers; returns how many filed deadlines fired.
    fn run_timers(&self, l: &mut Local) -> usize {
        l.heap.extend(
            lock(&self.shared.timer_inbox[self.id])
                .drain(..)
                .map(Reverse),
        );
        let now = self.shared.clock.now();
        let started = std::time::Instant::now();
        let mut fired = 0;
        while let Some(&Reverse((at, id))) = l.heap.peek() {
            // Thousands of timers due at once (retransmits cost two DH each) are spread over
            // loop rounds, so the data path and the heartbeat keep moving.
            if at > now || (fired % 64 == 63 && started.elapsed() > TIMER_BUDGET) {
                break;
            }
            l.heap.pop();
            fired += 1;
            let mut cx = self.context(&mut l.rng);
            let table = self.shared.table();
            self.shared
                .with_peer(&table, id, &mut cx, &mut l.out, |peer, env| {
                    peer.filed_deadline_fired(at);
                    peer.handle_timers(env);
                });
        }
        fired
    }

    fn flush_outbox(&self, l: &mut Local) {
        l.tx_packets += send_transmits(&*self.udp, &mut l.out.transmits, &mut l.drops) as u64;
        for e in l.out.events.drain(..) {
            log_event(&self.shared, &e);
        }
    }
}

/// Consecutive encrypted datagrams to one endpoint from one source address, all `segment`
/// bytes but a shorter last one: the shape one GSO send carries (one `IPV6_PKTINFO` for all).
#[derive(Debug)]
struct Run {
    dst: (SocketAddr, Option<IpAddr>),
    start: usize,
    total: usize,
    segment: usize,
    count: usize,
    closed: bool,
}

impl Run {
    /// Append a datagram written at `off` (right after the previous one) to the last run if it
    /// fits the run's shape, else start a new run.
    fn extend(runs: &mut Vec<Run>, dst: (SocketAddr, Option<IpAddr>), off: usize, len: usize) {
        if let Some(r) = runs.last_mut() {
            if !r.closed
                && r.dst == dst
                && r.start + r.total == off
                && len <= r.segment
                && r.count < MAX_SEGMENTS
            {
                r.total += len;
                r.count += 1;
                r.closed = len < r.segment;
                return;
            }
        }
        runs.push(Run {
            dst,
            start: off,
            total: len,
            segment: len,
            count: 1,
            closed: false,
        });
    }
}

/// Classify one datagram. Transport data is decrypted and checked, returning the inner
/// packet's range (`None` for a keepalive or a message handed to the handshake threads).
/// Open every pending transport message of the batch in batched AEAD calls: out of place into
/// the frame lent for it where there is one, else in place. Returns each one's plaintext
/// length, `None` where the tag did not verify (or the message could not be opened).
fn open_all(
    rx: &mut RecvBatch,
    opens: &[PendingOpen],
    lent: &mut [Option<InnerFrame<'_>>],
) -> Vec<Option<usize>> {
    let mut slices = rx.slices_mut().into_iter().enumerate();
    let (mut place_ks, mut place_jobs) = (Vec::new(), Vec::<OpenInPlaceJob>::new());
    let (mut frame_ks, mut frame_jobs) = (Vec::new(), Vec::<OpenJob>::new());
    for (k, (p, frame)) in opens.iter().zip(lent.iter_mut()).enumerate() {
        // `opens` is in batch order, so one pass over the slices finds them all.
        let Some(sealed) = slices
            .find(|(j, _)| *j == p.index)
            .and_then(|(_, d)| d.get_mut(PAYLOAD_START..))
        else {
            continue; // not reachable for a classified message; it stays unopened
        };
        match frame {
            Some(f) => {
                frame_ks.push(k);
                frame_jobs.push(OpenJob::new(&p.key, p.counter, sealed, &mut *f.buf));
            }
            None => {
                place_ks.push(k);
                place_jobs.push(OpenInPlaceJob::new(&p.key, p.counter, sealed));
            }
        }
    }
    let mut results = vec![None; opens.len()];
    // A malformed batch opens nothing: all fail (counted as decrypt failures).
    if !frame_jobs.is_empty() && open_batch(&mut frame_jobs).is_ok() {
        for (k, j) in frame_ks.into_iter().zip(&frame_jobs) {
            results[k] = j.result().ok();
        }
    }
    if !place_jobs.is_empty() && open_batch_in_place(&mut place_jobs).is_ok() {
        for (k, j) in place_ks.into_iter().zip(&place_jobs) {
            results[k] = j.result().ok();
        }
    }
    results
}

/// Seal every deferred message of the send batch in one batched AEAD call.
fn seal_all(tx_buf: &mut [u8], seals: &[PendingSeal]) {
    if seals.is_empty() {
        return;
    }
    let mut jobs: Vec<SealInPlaceJob> = Vec::with_capacity(seals.len());
    let mut rest: &mut [u8] = tx_buf;
    let mut base = 0;
    for p in seals {
        // Messages are packed back to back in order, so the regions come in order.
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(p.start - base);
        let (region, tail) = tail.split_at_mut(p.end - p.start);
        jobs.push(SealInPlaceJob::new(&p.key, p.counter, region));
        rest = tail;
        base = p.end;
    }
    if seal_batch_in_place(&mut jobs).is_err() {
        // Only a malformed job list fails, which the regions above cannot be; seal one by
        // one rather than send anything unsealed.
        for j in jobs {
            crate::crypto::seal_in_place(j.key, j.counter, &[], j.buf);
        }
    }
}

/// First pass over a received datagram: transport data is checked against its session and
/// returned for the batched open; handshake messages are handled here.
fn classify_outer<O: Outer, I: Inner>(
    w: &Worker<O, I>,
    table: &PeerTable,
    cx: &mut Context,
    out: &mut Outbox,
    src: Endpoint,
    datagram: &mut [u8],
) -> Result<Classified, DropReason> {
    let kind = messages::message_type(datagram)?;
    if kind == TYPE_TRANSPORT {
        let receiver = Transport::new(&*datagram)?.receiver();
        let id = match w.shared.index.get(receiver) {
            Some(id) => id,
            // HA: maybe a session another member derived, which we hold for it.
            None => w
                .shared
                .ha
                .get()
                .and_then(|ha| ha.lazy_takeover(&w.shared, table, cx, out, receiver, datagram, src))
                .ok_or(DropReason::UnknownIndex)?,
        };
        let now = cx.now;
        let opening = w
            .shared
            .with_peer(table, id, cx, out, |peer, _| {
                peer.begin_transport(now, receiver, datagram)
            })
            .unwrap_or(Err(DropReason::UnknownIndex))?;
        return Ok(Classified::Open(PendingOpen {
            index: 0,
            peer: id,
            receiver,
            counter: opening.counter,
            key: opening.key,
        }));
    }
    // Handshake messages: check the type's exact length, and mac1 (cheap: no DH) before
    // spending a queue slot; cookie replies carry no mac1.
    messages::parse(datagram)?;
    if kind != TYPE_COOKIE_REPLY
        && !w
            .shared
            .checker
            .read()
            .map(|c| c.check_mac1(datagram))
            .unwrap_or(false)
    {
        return Err(DropReason::BadMac1);
    }
    // Like the kernel's handshake_queue_len, the depth counts the message now arriving.
    let depth = w.handshakes.len() + 1;
    if depth >= w.handshake_capacity / UNDER_LOAD_DEPTH_DIVISOR {
        w.shared.mark_under_load(cx.now, UNDER_LOAD_HOLD);
    }
    match w.handshakes.try_send(HandshakeJob {
        src,
        data: datagram.to_vec(),
    }) {
        Ok(()) => Ok(Classified::Done),
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            Err(DropReason::HandshakeQueueFull)
        }
    }
}

/// Route an inner packet to its peer and encrypt it into `buf`. `Ok(None)`: staged until a
/// handshake completes.
fn route_and_encrypt(
    shared: &Shared,
    table: &PeerTable,
    cx: &mut Context,
    out: &mut Outbox,
    packet: &[u8],
    buf: &mut [u8],
    seal: &mut crate::proto::session::Seal<'_>,
) -> Result<Option<(SocketAddr, Option<IpAddr>, usize)>, DropReason> {
    let dst = ip::destination(packet)?;
    let id = table.allowed_ips.lookup(dst).ok_or_else(|| {
        if is_group(dst) {
            DropReason::UnroutedMulticast
        } else {
            DropReason::NoRoute
        }
    })?;
    // HA: a peer with no session of ours may have one the group holds for it; take that over
    // (no DH, its fresh handshake is paced) rather than stage the packet behind a handshake.
    let ha = shared.ha.get().filter(|h| h.takes_over_outbound());
    let sent = match shared.with_peer(table, id, cx, out, |peer, env| {
        if ha.is_some() && !peer.has_usable_session(env.cx.now) {
            return Err(*peer.public_key());
        }
        Ok(peer.send_with(env, packet, buf, &mut *seal))
    }) {
        Some(Ok(sent)) => Some(sent),
        Some(Err(key)) => {
            if let Some(ha) = ha {
                ha.outbound_takeover(shared, table, cx, out, &key);
            }
            shared.with_peer(table, id, cx, out, |peer, env| {
                peer.send_with(env, packet, buf, seal)
            })
        }
        None => None,
    };
    match sent {
        Some(Ok(Sent::Transmit { dst, src, len, .. })) => Ok(Some((dst, src, len))),
        Some(Ok(Sent::Staged { .. })) => Ok(None),
        Some(Err(e)) => Err(e),
        None => Err(DropReason::NoRoute),
    }
}

/// A destination that names a group, not a host: multicast, or IPv4 limited broadcast.
fn is_group(dst: std::net::IpAddr) -> bool {
    match dst {
        std::net::IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        std::net::IpAddr::V6(a) => a.is_multicast(),
    }
}

/// One structured event per operator-relevant protocol event (never per packet): the peer's
/// public key (base64, as `wg` prints it) and its endpoint.
pub fn log_event(shared: &Shared, e: &Event) {
    let table = shared.table();
    let peer_of = |id: u32| {
        table.get(id).map_or((String::new(), None), |p| {
            let p = lock(p);
            (crate::keys::encode_key(p.public_key()), p.endpoint())
        })
    };
    let endpoint =
        |e: Option<SocketAddr>| e.map_or_else(|| "(none)".to_string(), |e| e.to_string());
    match e {
        Event::HandshakeCompleted { peer } => {
            let (key, ep) = peer_of(*peer);
            tracing::info!(peer = %key, endpoint = %endpoint(ep), "handshake completed");
        }
        Event::EndpointChanged { peer, endpoint } => {
            let (key, _) = peer_of(*peer);
            tracing::info!(peer = %key, endpoint = %endpoint, "endpoint changed");
        }
        Event::HandshakeGaveUp { peer } => {
            let (key, ep) = peer_of(*peer);
            tracing::warn!(
                peer = %key,
                endpoint = %endpoint(ep),
                reason = "no response to any initiation (gave up)",
                "handshake failed"
            );
        }
        Event::KeysZeroed { peer } => {
            let (key, _) = peer_of(*peer);
            tracing::debug!(peer = %key, "keys zeroed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Run;
    use std::net::{IpAddr, SocketAddr};

    #[test]
    fn runs_group_equal_sizes_to_one_endpoint_from_one_source() {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1".parse().unwrap();
        let vip: IpAddr = "198.51.100.10".parse().unwrap();
        let own: IpAddr = "198.51.100.1".parse().unwrap();
        let (a, a_own, b) = ((a, Some(vip)), (a, Some(own)), (b, None));
        let mut runs = Vec::new();
        let mut off = 0;
        for (dst, len) in [
            (a, 100),
            (a, 100),
            (a, 60),
            (a, 100),
            (b, 100),
            (b, 120),
            (a, 100),
            (a_own, 100),
            (a_own, 100),
        ] {
            Run::extend(&mut runs, dst, off, len);
            off += len;
        }
        let shape: Vec<_> = runs
            .iter()
            .map(|r| (r.dst, r.start, r.total, r.segment))
            .collect();
        assert_eq!(
            shape,
            vec![
                (a, 0, 260, 100),
                (a, 260, 100, 100),
                (b, 360, 100, 100),
                (b, 460, 120, 120),
                (a, 580, 100, 100),
                (a_own, 680, 200, 100)
            ]
        );
    }
}

#[cfg(test)]
mod group_tests {
    #[test]
    fn groups_are_multicast_and_broadcast() {
        for a in ["ff02::16", "224.0.0.22", "255.255.255.255", "239.1.2.3"] {
            assert!(super::is_group(a.parse().unwrap()), "{a}");
        }
        for a in ["10.0.0.1", "fd00::1", "fe80::1", "192.168.1.255"] {
            assert!(!super::is_group(a.parse().unwrap()), "{a}");
        }
    }
}
