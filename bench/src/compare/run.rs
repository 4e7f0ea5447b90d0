//! One timed run: the sink counting and verifying in its namespace, the generator sending a
//! pre-encrypted pool at maximum rate (or a given rate), and what came of it.

use super::io::{self, GenSocket, Out, BATCH};
use super::latency::ProbeLog;
use super::packet::{self, Verifier};
use super::topo::{pin_current, GenTopology, GENERATOR_CORE};
use super::users::{outer_ip, tunnel_ip, Pool};
use sluice::datapath::udp::{RecvBatch, UdpSocket};
use std::net::{IpAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one timed run measured.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Datagrams the generator handed to the kernel.
    pub sent: u64,
    /// Inner packets the sink accepted (right size, right user, first time).
    pub delivered: u64,
    pub delivered_bytes: u64,
    /// Packets the sink refused for a reason that points at the gateway.
    pub errors: u64,
    /// From the generator's first send to its last.
    pub send_time: Duration,
    /// From the sink's first accepted packet to its last.
    pub sink_time: Duration,
    /// The generator thread's CPU time over `send_time`.
    pub generator_cpu: f64,
    /// One-way latencies of the probes that arrived (runs with probes only).
    pub latencies: Vec<Duration>,
}

impl RunResult {
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

/// Sink counter: a UDP socket in the sink namespace on `port`, verified packet by packet.
struct Sink {
    stop: Arc<AtomicBool>,
    /// Packets accepted so far, published after every batch.
    accepted: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<SinkResult>,
}

/// The sink's verifier, its first and last accepting batch, and the probes' arrivals.
type SinkResult = (
    Verifier,
    Option<Instant>,
    Option<Instant>,
    Vec<(u64, Instant)>,
);

impl Sink {
    fn start(
        topo: &GenTopology,
        port: u16,
        verifier: Verifier,
        probe_every: u64,
    ) -> Result<Sink, String> {
        let sock = topo
            .sink_ns
            .enter(|| UdpSocket::bind(port))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("binding the sink's UDP port {port}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let accepted = Arc::new(AtomicU64::new(0));
        let progress = accepted.clone();
        let handle = std::thread::spawn(move || {
            let _ = pin_current(GENERATOR_CORE);
            let mut v = verifier;
            let mut batch = RecvBatch::default();
            let (mut first, mut last) = (None, None);
            let mut arrivals = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let n = sock.recv_batch(&mut batch).unwrap_or(0);
                if n == 0 {
                    io::wait_readable(sock.fd(), 2);
                    continue;
                }
                let now = Instant::now();
                let before = v.accepted;
                for i in 0..n {
                    if let Some((src, data)) = batch.get_mut(i) {
                        let IpAddr::V4(src) = src.ip() else {
                            continue;
                        };
                        if v.check(data, src, tunnel_ip).is_ok() && probe_every != 0 {
                            if let Some(seq) = packet::seq_of(data) {
                                if seq % probe_every == 0 {
                                    arrivals.push((seq, now));
                                }
                            }
                        }
                    }
                }
                if v.accepted > before {
                    progress.store(v.accepted, Ordering::Relaxed);
                    first.get_or_insert(now);
                    last = Some(now);
                }
            }
            (v, first, last, arrivals)
        });
        Ok(Sink {
            stop,
            accepted,
            handle,
        })
    }

    fn finish(self) -> Result<SinkResult, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| "the sink thread panicked".to_string())
    }
}

/// The settings of one timed run.
#[derive(Clone, Copy, Debug)]
pub struct RunSpec {
    /// The run number stamped in every packet of the pool.
    pub run: u32,
    pub users: u32,
    pub sink_port: u16,
    pub seconds: f64,
    /// Packets per second; `None`: as fast as the generator can.
    pub rate: Option<f64>,
    /// Every this many packets one is a latency probe (0: none).
    pub probe_every: u64,
}

/// Send `pool` through the gateway for at most `spec.seconds`, at `spec.rate` or as fast as
/// the generator can, and count what the sink accepted.
pub fn timed_run(
    topo: &GenTopology,
    sock: &GenSocket,
    pool: &Pool,
    spec: RunSpec,
) -> Result<RunResult, String> {
    let RunSpec {
        run,
        users,
        sink_port,
        seconds,
        rate,
        probe_every,
    } = spec;
    let sink = Sink::start(
        topo,
        sink_port,
        Verifier::new(run, pool.len() as u64, users),
        probe_every,
    )?;
    let mut probes = ProbeLog::new(probe_every, pool.len() as u64);
    std::thread::sleep(Duration::from_millis(50));
    let gw = SocketAddrV4::new(super::topo::GW_OUTER_V4, super::topo::LISTEN_PORT);
    let limit = Duration::from_secs_f64(seconds);
    let cpu0 = io::thread_cpu_time();
    let start = Instant::now();
    let mut next = 0usize;
    let mut outs: Vec<Out> = Vec::with_capacity(BATCH);
    while next < pool.len() {
        let elapsed = start.elapsed();
        if elapsed >= limit {
            break;
        }
        if let Some(r) = rate {
            // Paced: never ahead of the schedule.
            if next >= (elapsed.as_secs_f64() * r) as usize {
                io::wait_until_due(next, r, elapsed);
                continue;
            }
        }
        let end = (next + BATCH).min(pool.len());
        outs.clear();
        for i in next..end {
            let (user, data) = pool.item(i);
            outs.push(Out {
                src: outer_ip(user),
                dst: gw,
                data,
            });
        }
        probes.sending(next as u64, end as u64, Instant::now());
        let took = sock
            .send(&outs)
            .map_err(|e| format!("sending transport data: {e}"))?;
        next += took;
    }
    let send_time = start.elapsed();
    let cpu = (io::thread_cpu_time().saturating_sub(cpu0)).as_secs_f64();
    // Let the gateway drain what it has queued: wait until the sink sees nothing new.
    let mut seen = 0u64;
    let mut quiet_since = Instant::now();
    let drain_start = Instant::now();
    while drain_start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(25));
        let now_seen = sink.accepted.load(Ordering::Relaxed);
        if now_seen != seen {
            seen = now_seen;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= io::quiet_time(seconds) {
            break;
        }
    }
    let (v, first, last, arrivals) = sink.finish()?;
    Ok(RunResult {
        sent: next as u64,
        delivered: v.accepted,
        delivered_bytes: v.accepted_bytes,
        errors: v.errors(),
        send_time,
        sink_time: match (first, last) {
            (Some(f), Some(l)) => l.duration_since(f),
            _ => Duration::ZERO,
        },
        generator_cpu: cpu / send_time.as_secs_f64().max(1e-9),
        latencies: probes.latencies(&arrivals),
    })
}
