//! The inside -> users direction: the sink sends plaintext UDP to the users' tunnel
//! addresses (payloads built before the clock, `sendmmsg` from the sink's namespace, which
//! routes 10.96.0.0/12 via the gateway), the gateway encrypts each packet for its user, and
//! the generator receives the WireGuard datagrams on the users' socket, decrypts each with
//! that user's own protocol-core session and verifies it (addressed to that user, claims that
//! user, right size, intact payload, not seen before: [`Verifier::check_to_user`]). A datagram
//! that does not decrypt is counted as corrupt.

use super::io::{GenSocket, Out, BATCH, RECV_SLOT};
use super::latency::ProbeLog;
use super::packet::{self, SizeMix, Stamp, Verifier, IPV4_HEADER, UDP_HEADER};
use super::run::{drain, receive_until, send_paced, Receipt, RunResult, RunSpec};
use super::topo::{pin_current, GenTopology, GENERATOR_CORE, SINK_V4};
use super::users::{tunnel_ip, Opened, Users};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

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

/// Send `pool` from the sink through the gateway to the users for at most `spec.seconds`,
/// and count what the generator decrypted and accepted. `sock` is the users' socket in the
/// generator's namespace, where the gateway sends to the users' endpoints.
pub fn timed_run(
    topo: &GenTopology,
    sock: &GenSocket,
    users: &mut Users,
    pool: &PlainPool,
    spec: RunSpec,
) -> Result<RunResult, String> {
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
    let total = pool.len() as u64;
    let mut probes = ProbeLog::new(spec.probe_every, total);
    let receipt = Receipt::new(Verifier::new(spec.run, total, spec.users));
    let (sent, receipt) = std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let _ = pin_current(GENERATOR_CORE);
            receive_until(&stop, &accepted, receipt, |r| {
                receive(sock, users, &mut bufs, &mut lens, r, spec.probe_every)
            })
        });
        let sent = send_paced(&sender, pool.len(), &spec, &mut probes, |i| {
            let (user, data) = pool.item(i);
            Out {
                src: SINK_V4,
                dst: SocketAddrV4::new(tunnel_ip(user), packet::SRC_PORT),
                data,
            }
        });
        drain(&accepted, spec.seconds);
        stop.store(true, Ordering::Relaxed);
        let r = rx
            .join()
            .map_err(|_| "the receiving thread panicked".to_string());
        (sent, r)
    });
    Ok(RunResult::new(sent?, receipt??, &probes))
}

/// The generator's side, one batch: receive, decrypt with each user's session, verify.
fn receive(
    sock: &GenSocket,
    users: &mut Users,
    bufs: &mut [u8],
    lens: &mut [usize; BATCH],
    r: &mut Receipt,
    every: u64,
) -> Result<Option<Instant>, String> {
    let got = sock.recv(bufs, lens).unwrap_or(0);
    if got == 0 {
        sock.wait_readable(2);
        return Ok(None);
    }
    let now = Instant::now();
    for (i, &len) in lens.iter().take(got).enumerate() {
        let d = &mut bufs[i * RECV_SLOT..i * RECV_SLOT + len];
        match users.open(d) {
            Opened::Data(user, range) => {
                let p = &d[range];
                if r.v.check_to_user(p, user, tunnel_ip).is_ok() {
                    r.probe(&p[IPV4_HEADER + UDP_HEADER..], every, now);
                }
            }
            Opened::Refused(why) => r.v.count(why),
            Opened::Other => {}
        }
    }
    Ok(Some(now))
}
