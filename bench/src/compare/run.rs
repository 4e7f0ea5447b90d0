//! One timed run: the sink counting and verifying in its namespace (`sink.rs`), the generator
//! sending a pre-encrypted pool at maximum rate (or a given rate), and what came of it. The
//! pieces both directions share (paced sending, the receiver's loop and record, the drain,
//! the result) are here; `reverse.rs` has the inside -> users side.

use super::io::{self, GenSocket, Out, BATCH};
use super::latency::ProbeLog;
use super::packet::{self, Verifier};
use super::sink::{Sink, SinkKind};
use super::topo::GenTopology;
use super::users::{outer_ip, Pool};
use super::xsk_tx::XskTx;
use sluice::xdp::bench_sink::SinkCounts;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What one timed run measured.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Datagrams the generator handed to the kernel.
    pub sent: u64,
    /// Inner packets the receiver accepted (right size, right user, first time).
    pub delivered: u64,
    pub delivered_bytes: u64,
    /// Of those, checked in full by user space (all of them without the XDP sink).
    pub checked_in_full: u64,
    /// Packets the receiver refused for a reason that points at the gateway.
    pub errors: u64,
    /// From the generator's first send to its last.
    pub send_time: Duration,
    /// From the receiver's first accepted packet to its last.
    pub sink_time: Duration,
    /// The sending thread's CPU time over `send_time`.
    pub generator_cpu: f64,
    /// One-way latencies of the probes that arrived (runs with probes only).
    pub latencies: Vec<Duration>,
}

impl RunResult {
    /// The result of a run from its sender's numbers and its receiver's record.
    pub(super) fn new(sent: Sent, receipt: Receipt, probes: &ProbeLog) -> RunResult {
        let Receipt {
            v,
            first,
            last,
            arrivals,
            xdp,
        } = receipt;
        let xdp = xdp.unwrap_or_default();
        RunResult {
            sent: sent.count,
            delivered: v.accepted + xdp.accepted,
            delivered_bytes: v.accepted_bytes + xdp.accepted_bytes,
            checked_in_full: v.accepted,
            errors: v.errors() + xdp.errors(),
            send_time: sent.time,
            sink_time: match (first, last) {
                (Some(f), Some(l)) => l.duration_since(f),
                _ => Duration::ZERO,
            },
            generator_cpu: sent.cpu / sent.time.as_secs_f64().max(1e-9),
            latencies: probes.latencies(&arrivals),
        }
    }

    pub fn offered_pps(&self) -> f64 {
        self.sent as f64 / self.send_time.as_secs_f64().max(1e-9)
    }

    /// The window rates are taken over: the sink's (first to last accepted packet, which
    /// includes the gateway draining its queues after the generator stopped), but never
    /// shorter than the generator's sending time, so a few packets delivered in a burst
    /// cannot make a rate.
    fn window(&self) -> Duration {
        self.sink_time.max(self.send_time)
    }

    /// The delivered rate (the gateway's output rate).
    pub fn pps(&self) -> f64 {
        self.delivered as f64 / self.window().as_secs_f64().max(1e-9)
    }

    /// Inner bits per second delivered.
    pub fn bps(&self) -> f64 {
        self.delivered_bytes as f64 * 8.0 / self.window().as_secs_f64().max(1e-9)
    }

    /// Fraction of sent packets not delivered.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.delivered.min(self.sent) as f64 / self.sent as f64
    }
}

/// What a receiver saw in one run: the user-space check, the XDP sink's counters, the first
/// and last moment something was accepted, and the probes' arrivals.
#[derive(Debug)]
pub(super) struct Receipt {
    pub v: Verifier,
    first: Option<Instant>,
    last: Option<Instant>,
    arrivals: Vec<(u64, Instant)>,
    /// The XDP sink's counters, if it counted.
    pub xdp: Option<SinkCounts>,
}

impl Receipt {
    pub fn new(v: Verifier) -> Receipt {
        Receipt {
            v,
            first: None,
            last: None,
            arrivals: Vec::new(),
            xdp: None,
        }
    }

    fn accepted(&self) -> u64 {
        self.v.accepted + self.xdp.map_or(0, |x| x.accepted)
    }

    /// A payload the check accepted at `now`: note it if it is a probe.
    pub fn probe(&mut self, payload: &[u8], every: u64, now: Instant) {
        if every == 0 {
            return;
        }
        if let Some(seq) = packet::seq_of(payload) {
            if seq % every == 0 {
                self.arrivals.push((seq, now));
            }
        }
    }
}

/// The receiver's loop, the same in both directions: `poll` receives and checks one batch
/// (waiting a little when nothing is there) and returns when it did, if anything. Keeps the
/// first and last accepting moment and publishes the count the drain watches.
pub(super) fn receive_until(
    stop: &AtomicBool,
    progress: &AtomicU64,
    mut r: Receipt,
    mut poll: impl FnMut(&mut Receipt) -> Result<Option<Instant>, String>,
) -> Result<Receipt, String> {
    while !stop.load(Ordering::Relaxed) {
        let before = r.accepted();
        let Some(now) = poll(&mut r)? else {
            continue;
        };
        if r.accepted() > before {
            progress.store(r.accepted(), Ordering::Relaxed);
            r.first.get_or_insert(now);
            r.last = Some(now);
        }
    }
    Ok(r)
}

/// After the sender stopped, let the gateway drain what it has queued: wait until the
/// receiver has accepted nothing new for [`io::quiet_time`] (at most 5 s).
pub(super) fn drain(progress: &AtomicU64, seconds: f64) {
    let mut seen = 0u64;
    let mut quiet_since = Instant::now();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(25));
        let now_seen = progress.load(Ordering::Relaxed);
        if now_seen != seen {
            seen = now_seen;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= io::quiet_time(seconds) {
            break;
        }
    }
}

/// What a sender did: datagrams the kernel took, over what time, with how much CPU.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sent {
    pub count: u64,
    pub time: Duration,
    /// CPU seconds of the sending thread.
    pub cpu: f64,
}

/// Send `len` datagrams (`item(i)` is datagram i) through `sock` for at most `spec.seconds`,
/// paced at `spec.rate` or as fast as the kernel takes them; `probes` learns when each went.
pub(super) fn send_paced<'a>(
    sock: &GenSocket,
    len: usize,
    spec: &RunSpec,
    probes: &mut ProbeLog,
    item: impl Fn(usize) -> Out<'a>,
) -> Result<Sent, String> {
    let limit = Duration::from_secs_f64(spec.seconds);
    let cpu0 = io::thread_cpu_time();
    let start = Instant::now();
    let mut next = 0usize;
    let mut outs: Vec<Out> = Vec::with_capacity(BATCH);
    while next < len {
        let elapsed = start.elapsed();
        if elapsed >= limit {
            break;
        }
        if let Some(r) = spec.rate {
            // Paced: never ahead of the schedule.
            if next >= (elapsed.as_secs_f64() * r) as usize {
                io::wait_until_due(next, r, elapsed);
                continue;
            }
        }
        let end = (next + BATCH).min(len);
        outs.clear();
        outs.extend((next..end).map(&item));
        probes.sending(next as u64, end as u64, Instant::now());
        next += sock
            .send(&outs)
            .map_err(|e| format!("sending datagrams: {e}"))?;
    }
    Ok(Sent {
        count: next as u64,
        time: start.elapsed(),
        cpu: io::thread_cpu_time().saturating_sub(cpu0).as_secs_f64(),
    })
}

/// The settings of one timed run (either direction).
#[derive(Clone, Copy, Debug)]
pub struct RunSpec {
    /// The run number stamped in every packet of the pool.
    pub run: u32,
    pub users: u32,
    pub seconds: f64,
    /// Packets per second; `None`: as fast as the sender can.
    pub rate: Option<f64>,
    /// Every this many packets one is a latency probe (0: none).
    pub probe_every: u64,
    /// How the sink counts (users -> inside).
    pub sink: SinkKind,
}

/// Send `pool` through the gateway for at most `spec.seconds`, at `spec.rate` or as fast as
/// the generator can, with `sendmmsg` on `sock`, and count what the sink accepted.
pub fn timed_run(
    topo: &GenTopology,
    sock: &GenSocket,
    pool: &Pool,
    spec: RunSpec,
) -> Result<RunResult, String> {
    let gw = SocketAddrV4::new(super::topo::GW_OUTER_V4, super::topo::LISTEN_PORT);
    sink_run(topo, pool.len(), spec, |probes| {
        send_paced(sock, pool.len(), &spec, probes, |i| {
            let (user, data) = pool.item(i);
            Out {
                src: outer_ip(user),
                dst: gw,
                data,
            }
        })
    })
}

/// [`timed_run`] through the generator's AF_XDP socket `xsk` when there is one: the pool
/// goes out as whole frames, their headers written before the clock.
pub fn timed_run_tx(
    topo: &GenTopology,
    sock: &GenSocket,
    xsk: Option<&mut XskTx>,
    pool: &mut Pool,
    spec: RunSpec,
) -> Result<RunResult, String> {
    let Some(x) = xsk else {
        return timed_run(topo, sock, pool, spec);
    };
    pool.build_frames(&x.addrs)?;
    let pool = &*pool;
    sink_run(topo, pool.len(), spec, |probes| {
        x.send_paced(pool.len(), &spec, probes, |i| pool.frame(i))
    })
}

/// The sink counting while `send` sends the run's `total` packets, then the drain.
fn sink_run(
    topo: &GenTopology,
    total: usize,
    spec: RunSpec,
    send: impl FnOnce(&mut ProbeLog) -> Result<Sent, String>,
) -> Result<RunResult, String> {
    let total = total as u64;
    let sink = Sink::start(topo, &spec, total)?;
    let mut probes = ProbeLog::new(spec.probe_every, total);
    std::thread::sleep(Duration::from_millis(50));
    let sent = send(&mut probes);
    drain(&sink.accepted, spec.seconds);
    let receipt = sink.finish()?;
    Ok(RunResult::new(sent?, receipt, &probes))
}
