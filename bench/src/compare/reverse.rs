//! The inside -> users direction: the sink sends plaintext UDP to the users' tunnel
//! addresses (payloads built before the clock, `sendmmsg` from the sink's namespace, which
//! routes 10.96.0.0/12 via the gateway), the gateway encrypts each packet for its user, and
//! the generator receives the WireGuard datagrams on the users' socket, decrypts each with
//! that user's own protocol-core session and verifies it (addressed to that user, claims that
//! user, right size, intact payload, not seen before: [`Verifier::check_to_user`]). A datagram
//! that does not decrypt is counted as corrupt.

use super::io::{self, GenSocket, Out, BATCH, RECV_SLOT};
use super::latency::ProbeLog;
use super::packet::{self, SizeMix, Stamp, Verifier, IPV4_HEADER, UDP_HEADER};
use super::run::RunResult;
use super::topo::{pin_current, GenTopology, GENERATOR_CORE, SINK_V4};
use super::users::{tunnel_ip, Users};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The plaintext payloads of one run, in sending order (packet `seq` to user `seq % n`).
#[derive(Debug, Default)]
pub struct PlainPool {
    arena: Vec<u8>,
    items: Vec<(usize, u16, u32)>,
}

impl PlainPool {
    /// `total` payloads of run `run` for `users` users with inner sizes from `mix` (the UDP
    /// payload is the inner size less the IPv4 and UDP headers the kernel adds).
    pub fn new(run: u32, total: u64, users: u32, mix: SizeMix) -> PlainPool {
        let mut arena = Vec::new();
        let mut items = Vec::with_capacity(total as usize);
        let mut buf = [0u8; packet::MAX_SIZE];
        for seq in 0..total {
            let user = (seq % u64::from(users)) as u32;
            let size = mix.size_of(seq);
            let len = size - IPV4_HEADER - UDP_HEADER;
            packet::write_payload(&mut buf[..len], size, Stamp { run, seq, user });
            items.push((arena.len(), len as u16, user));
            arena.extend_from_slice(&buf[..len]);
        }
        PlainPool { arena, items }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    fn item(&self, i: usize) -> (u32, &[u8]) {
        let (off, len, user) = self.items[i];
        (user, &self.arena[off..off + usize::from(len)])
    }
}

/// The settings of one inside -> users run.
#[derive(Clone, Copy, Debug)]
pub struct ReverseSpec {
    pub run: u32,
    pub seconds: f64,
    /// Packets per second; `None`: as fast as the sink can send.
    pub rate: Option<f64>,
    /// Every this many packets one is a latency probe (0: none).
    pub probe_every: u64,
}

/// Send `pool` from the sink through the gateway to the users for at most `spec.seconds`,
/// and count what the generator decrypted and accepted. `sock` is the users' socket in the
/// generator's namespace, where the gateway sends to the users' endpoints.
pub fn timed_run(
    topo: &GenTopology,
    sock: &GenSocket,
    users: &mut Users,
    pool: &PlainPool,
    spec: ReverseSpec,
) -> Result<RunResult, String> {
    let n = users.count();
    let sender = topo
        .sink_ns
        .enter(|| GenSocket::bind(super::SINK_PORT))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("binding the sink's sending socket: {e}"))?;
    // Whatever is still queued on the users' socket belongs to no run.
    let mut bufs = vec![0u8; BATCH * RECV_SLOT];
    let mut lens = [0usize; BATCH];
    while sock.recv(&mut bufs, &mut lens).unwrap_or(0) > 0 {}
    let stop = AtomicBool::new(false);
    let accepted = AtomicU64::new(0);
    let mut probes = ProbeLog::new(spec.probe_every, pool.len() as u64);
    let every = spec.probe_every;
    let (outcome, receiver) = std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let _ = pin_current(GENERATOR_CORE);
            receive(
                sock,
                users,
                pool.len() as u64,
                n,
                spec.run,
                every,
                &stop,
                &accepted,
            )
        });
        let sent = send(&sender, pool, &spec, &mut probes);
        // Let the gateway drain what it has queued: wait until nothing new is accepted.
        let mut seen = 0u64;
        let mut quiet_since = Instant::now();
        let drain_start = Instant::now();
        while drain_start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(25));
            let now_seen = accepted.load(Ordering::Relaxed);
            if now_seen != seen {
                seen = now_seen;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= io::quiet_time(spec.seconds) {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let r = rx
            .join()
            .map_err(|_| "the receiving thread panicked".to_string());
        (sent, r)
    });
    let (sent, send_time, cpu) = outcome?;
    let (v, first, last, arrivals) = receiver?;
    Ok(RunResult {
        sent,
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

/// The sink's side: send the pool, paced or as fast as it can. Returns (sent, sending time,
/// CPU seconds of this thread).
fn send(
    sender: &GenSocket,
    pool: &PlainPool,
    spec: &ReverseSpec,
    probes: &mut ProbeLog,
) -> Result<(u64, Duration, f64), String> {
    let limit = Duration::from_secs_f64(spec.seconds);
    let cpu0 = io::thread_cpu_time();
    let start = Instant::now();
    let mut next = 0usize;
    let mut outs: Vec<Out> = Vec::with_capacity(BATCH);
    while next < pool.len() {
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
        let end = (next + BATCH).min(pool.len());
        outs.clear();
        for i in next..end {
            let (user, data) = pool.item(i);
            outs.push(Out {
                src: SINK_V4,
                dst: SocketAddrV4::new(tunnel_ip(user), packet::SRC_PORT),
                data,
            });
        }
        probes.sending(next as u64, end as u64, Instant::now());
        let took = sender
            .send(&outs)
            .map_err(|e| format!("the sink sending plaintext: {e}"))?;
        next += took;
    }
    let send_time = start.elapsed();
    let cpu = io::thread_cpu_time().saturating_sub(cpu0).as_secs_f64();
    Ok((next as u64, send_time, cpu))
}

type Received = (
    Verifier,
    Option<Instant>,
    Option<Instant>,
    Vec<(u64, Instant)>,
);

/// The generator's side: receive, decrypt with each user's session, verify.
#[allow(clippy::too_many_arguments)]
fn receive(
    sock: &GenSocket,
    users: &mut Users,
    total: u64,
    n: u32,
    run: u32,
    every: u64,
    stop: &AtomicBool,
    accepted: &AtomicU64,
) -> Received {
    let mut v = Verifier::new(run, total, n);
    let mut bufs = vec![0u8; BATCH * RECV_SLOT];
    let mut lens = [0usize; BATCH];
    let (mut first, mut last) = (None, None);
    let mut arrivals = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let got = sock.recv(&mut bufs, &mut lens).unwrap_or(0);
        if got == 0 {
            sock.wait_readable(2);
            continue;
        }
        let now = Instant::now();
        let before = v.accepted;
        for (i, &len) in lens.iter().take(got).enumerate() {
            let d = &mut bufs[i * RECV_SLOT..i * RECV_SLOT + len];
            match users.open(d) {
                super::users::Opened::Data(user, range) => {
                    let p = &d[range];
                    if v.check_to_user(p, user, tunnel_ip).is_ok() && every != 0 {
                        if let Some(seq) = packet::seq_of(&p[IPV4_HEADER + UDP_HEADER..]) {
                            if seq % every == 0 {
                                arrivals.push((seq, now));
                            }
                        }
                    }
                }
                super::users::Opened::Refused(why) => v.count(why),
                super::users::Opened::Other => {}
            }
        }
        if v.accepted > before {
            accepted.store(v.accepted, Ordering::Relaxed);
            first.get_or_insert(now);
            last = Some(now);
        }
    }
    (v, first, last, arrivals)
}
