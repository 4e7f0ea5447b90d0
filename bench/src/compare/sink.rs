//! The sink of the users -> inside direction, in the sink namespace on the generator's core.
//! It counts in one of two ways ([`SinkKind`]):
//!
//! - **xdp** (the default when it loads): sluice's [`BenchSink`] XDP program
//!   (`ebpf/bench_sink.c`) on the sink's end of the link checks every packet (size, user,
//!   first filler bytes, sequence number inside the run and not seen before, by an atomic
//!   bitmap), counts it per CPU and drops it. It runs as generic XDP, where the kernel
//!   receives the packet after RPS, so on the sink's core as the socket's receive work did
//!   (native XDP on a veth would run in the veth's NAPI on the *sending* CPU, the gateway's).
//!   Every [`SAMPLE_EVERY`]-th sequence number (every probe in latency runs) passes to the
//!   socket, which checks the whole payload, as does anything that is not this run's.
//! - **socket**: a `recvmmsg` socket checks every packet in user space ([`Verifier`]).

use super::io;
use super::packet::Verifier;
use super::run::{receive_until, Receipt, RunSpec};
use super::topo::{pin_current, GenTopology, GENERATOR_CORE, PEER_DEV, SINK_V4};
use super::users::tunnel_ip;
use sluice::datapath::udp::{RecvBatch, UdpSocket};
use sluice::xdp::bench_sink::{BenchSink, SinkSpec};
use sluice::xdp::AttachMode;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// With the XDP sink, every this many sequence numbers one packet goes to the socket for the
/// full check (its whole filler) instead of being counted in XDP.
pub const SAMPLE_EVERY: u64 = 64;
/// How often the XDP sink's counters are read (for the first and last accepting moment and
/// the drain's progress).
const XDP_POLL: Duration = Duration::from_millis(1);

/// How the sink counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    /// The XDP counter program (generic XDP on the sink's link, after RPS: on the sink's
    /// core), with a sample through the socket.
    Xdp,
    /// A `recvmmsg` socket checking every packet in user space.
    Socket,
}

impl SinkKind {
    pub fn label(self) -> &'static str {
        match self {
            SinkKind::Xdp => "xdp",
            SinkKind::Socket => "socket",
        }
    }

    /// Whether the XDP counter loads here (root, BPF): the check made once before the runs.
    pub fn xdp_loads() -> Result<(), String> {
        BenchSink::load(&sink_spec(0, 1, 1, 1))
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

impl std::str::FromStr for SinkKind {
    type Err = String;
    fn from_str(s: &str) -> Result<SinkKind, String> {
        match s {
            "xdp" => Ok(SinkKind::Xdp),
            "socket" => Ok(SinkKind::Socket),
            other => Err(format!("sink '{other}': xdp or socket")),
        }
    }
}

fn sink_spec(run: u32, users: u32, total: u64, sample_every: u64) -> SinkSpec {
    SinkSpec {
        sink_addr: SINK_V4,
        port: super::SINK_PORT,
        run,
        users,
        first_user_addr: tunnel_ip(0),
        total,
        sample_every,
    }
}

/// The sink: its socket (every packet, or the XDP sink's sample and whatever it passes) and
/// the XDP counter when there is one, checked in a thread on the generator's core.
pub(super) struct Sink {
    stop: Arc<AtomicBool>,
    /// Packets accepted so far, published after every batch.
    pub accepted: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<Result<Receipt, String>>,
}

impl Sink {
    pub fn start(topo: &GenTopology, spec: &RunSpec, total: u64) -> Result<Sink, String> {
        let port = super::SINK_PORT;
        let sock = topo
            .sink_ns
            .enter(|| UdpSocket::bind(port))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("binding the sink's UDP port {port}: {e}"))?;
        let every = spec.probe_every;
        let xdp = match spec.sink {
            SinkKind::Socket => None,
            SinkKind::Xdp => {
                let sample = if every > 0 { every } else { SAMPLE_EVERY };
                let mut x = BenchSink::load(&sink_spec(spec.run, spec.users, total, sample))
                    .map_err(|e| format!("loading the XDP sink: {e}"))?;
                topo.sink_ns
                    .enter(|| x.attach(PEER_DEV, AttachMode::Skb))
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("attaching the XDP sink to {PEER_DEV}: {e}"))?;
                Some(x)
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (flag, progress) = (stop.clone(), accepted.clone());
        let receipt = Receipt::new(Verifier::new(spec.run, total, spec.users));
        let handle = std::thread::spawn(move || {
            let _ = pin_current(GENERATOR_CORE);
            let mut batch = RecvBatch::default();
            let mut polled = Instant::now();
            let mut r = receive_until(&flag, &progress, receipt, |r| {
                let n = sock.recv_batch(&mut batch).unwrap_or(0);
                let now = Instant::now();
                for i in 0..n {
                    let Some((src, data)) = batch.get_mut(i) else {
                        continue;
                    };
                    if let IpAddr::V4(src) = src.ip() {
                        if r.v.check(data, src, tunnel_ip).is_ok() {
                            r.probe(data, every, now);
                        }
                    }
                }
                if let Some(x) = &xdp {
                    if polled.elapsed() >= XDP_POLL {
                        polled = now;
                        r.xdp = Some(x.counts().map_err(|e| e.to_string())?);
                        return Ok(Some(now));
                    }
                }
                if n == 0 {
                    io::wait_readable(sock.fd(), if xdp.is_some() { 1 } else { 2 });
                    return Ok(None);
                }
                Ok(Some(now))
            })?;
            if let Some(x) = &xdp {
                r.xdp = Some(x.counts().map_err(|e| e.to_string())?);
            }
            Ok(r)
        });
        Ok(Sink {
            stop,
            accepted,
            handle,
        })
    }

    pub fn finish(self) -> Result<Receipt, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| "the sink thread panicked".to_string())?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The XDP sink on frames built by the generator's own packet builder, through
    //! `BPF_PROG_TEST_RUN`: each frame's action, the one counter slot it moved, and the
    //! socket sink's verdict on the same payload (they must agree, except where the XDP sink
    //! leaves the check to the socket: its sample, the filler beyond the first bytes).
    //! Root only: under `CI=true` a missing root or a failed load fails the test.
    use super::*;
    use crate::compare::packet::{self, Reject, Stamp, IPV4_HEADER, UDP_HEADER};
    use sluice::testbed::{in_ci, is_root};
    use sluice::xdp::bench_sink::SinkCounts;
    use sluice::xdp::{XDP_DROP, XDP_PASS};
    use std::net::Ipv4Addr;

    /// A fixture: name, frame, XDP action, counter slot, accepted bytes, and the socket
    /// sink's verdict on its payload (`None`: the socket never sees such a frame, or the XDP
    /// sink leaves that check to the sample).
    type Case = (
        &'static str,
        Vec<u8>,
        u32,
        &'static str,
        u64,
        Option<Result<(), Reject>>,
    );

    const RUN: u32 = 7;
    const USERS: u32 = 4;
    const TOTAL: u64 = 200;
    const SAMPLE: u64 = 10;

    fn frame(size: usize, src: Ipv4Addr, port: u16, stamp: Stamp) -> Vec<u8> {
        let mut f = vec![0u8; 14 + packet::MAX_SIZE];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let n = packet::build(&mut f[14..], size, src, SINK_V4, port, stamp);
        f.truncate(14 + n);
        f
    }

    fn good(seq: u64, user: u32, size: usize) -> Vec<u8> {
        let stamp = Stamp {
            run: RUN,
            seq,
            user,
        };
        frame(size, tunnel_ip(user), super::super::SINK_PORT, stamp)
    }

    /// The slot that moved by one between two readings (and the bytes counter's change).
    fn moved(before: &SinkCounts, after: &SinkCounts) -> (&'static str, u64) {
        let pairs = [
            ("accepted", before.accepted, after.accepted),
            ("pass_sample", before.pass_sample, after.pass_sample),
            ("pass_foreign", before.pass_foreign, after.pass_foreign),
            ("pass_other", before.pass_other, after.pass_other),
            ("wrong_size", before.wrong_size, after.wrong_size),
            ("wrong_user", before.wrong_user, after.wrong_user),
            ("corrupt", before.corrupt, after.corrupt),
            ("duplicate", before.duplicate, after.duplicate),
            ("out_of_range", before.out_of_range, after.out_of_range),
        ];
        let changed: Vec<_> = pairs.iter().filter(|(_, b, a)| a != b).collect();
        assert_eq!(changed.len(), 1, "exactly one slot moves: {changed:?}");
        assert_eq!(changed[0].2, changed[0].1 + 1, "by one: {changed:?}");
        (changed[0].0, after.accepted_bytes - before.accepted_bytes)
    }

    #[test]
    fn xdp_sink_agrees_with_the_socket_sink() {
        if !is_root() {
            assert!(
                !in_ci(),
                "the XDP sink test needs root and CI=true forbids skipping"
            );
            eprintln!("SKIP xdp_sink_agrees_with_the_socket_sink: needs root (BPF)");
            return;
        }
        let sink = BenchSink::load(&sink_spec(RUN, USERS, TOTAL, SAMPLE)).unwrap();
        let mut v = Verifier::new(RUN, TOTAL, USERS);
        let flip = |mut f: Vec<u8>, at: usize| {
            f[at] ^= 0x40;
            f
        };
        let payload_at = 14 + IPV4_HEADER + UDP_HEADER;
        let mut claims_other_size = good(3, 3, 512);
        claims_other_size[payload_at + 20..payload_at + 22].copy_from_slice(&500u16.to_be_bytes());
        let other_run = frame(
            64,
            tunnel_ip(1),
            super::super::SINK_PORT,
            Stamp {
                run: RUN + 1,
                seq: 1,
                user: 1,
            },
        );
        let other_port = frame(
            64,
            tunnel_ip(1),
            9001,
            Stamp {
                run: RUN,
                seq: 1,
                user: 1,
            },
        );
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let cases: Vec<Case> = vec![
            (
                "64 B",
                good(1, 1, 64),
                XDP_DROP,
                "accepted",
                64,
                Some(Ok(())),
            ),
            (
                "again",
                good(1, 1, 64),
                XDP_DROP,
                "duplicate",
                0,
                Some(Err(Reject::Duplicate)),
            ),
            (
                "1420 B",
                good(5, 1, 1420),
                XDP_DROP,
                "accepted",
                1420,
                Some(Ok(())),
            ),
            (
                "sampled",
                good(10, 2, 512),
                XDP_PASS,
                "pass_sample",
                0,
                None,
            ),
            (
                "another user's source",
                frame(
                    64,
                    tunnel_ip(2),
                    super::super::SINK_PORT,
                    Stamp {
                        run: RUN,
                        seq: 2,
                        user: 1,
                    },
                ),
                XDP_DROP,
                "wrong_user",
                0,
                Some(Err(Reject::WrongUser)),
            ),
            (
                "no such user",
                good(6, USERS + 5, 64),
                XDP_DROP,
                "wrong_user",
                0,
                Some(Err(Reject::WrongUser)),
            ),
            (
                "claims another size",
                claims_other_size,
                XDP_DROP,
                "wrong_size",
                0,
                Some(Err(Reject::WrongSize)),
            ),
            (
                "truncated frame",
                good(7, 3, 512)[..300].to_vec(),
                XDP_DROP,
                "wrong_size",
                0,
                None,
            ),
            (
                "first filler byte",
                flip(good(8, 0, 512), payload_at + 24),
                XDP_DROP,
                "corrupt",
                0,
                Some(Err(Reject::Corrupt)),
            ),
            (
                "late filler byte",
                flip(good(9, 1, 512), payload_at + 300),
                XDP_DROP,
                "accepted",
                512,
                None,
            ),
            (
                "beyond the run",
                good(TOTAL + 3, 3, 64),
                XDP_DROP,
                "out_of_range",
                0,
                Some(Err(Reject::OutOfRange)),
            ),
            (
                "another run",
                other_run,
                XDP_PASS,
                "pass_foreign",
                0,
                Some(Err(Reject::Foreign)),
            ),
            ("another port", other_port, XDP_PASS, "pass_other", 0, None),
            ("ARP", arp, XDP_PASS, "pass_other", 0, None),
        ];
        for (name, f, action, slot, bytes, socket) in cases {
            let before = sink.counts().unwrap();
            assert_eq!(sink.test_run(&f).unwrap(), action, "{name}: action");
            let after = sink.counts().unwrap();
            assert_eq!(
                moved(&before, &after),
                (slot, bytes),
                "{name}: slot and bytes"
            );
            if let Some(expected) = socket {
                let ip = &f[14..];
                let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
                let got = v.check(&f[payload_at..], src, tunnel_ip);
                assert_eq!(got, expected, "{name}: the socket sink's verdict");
            }
        }
        let c = sink.counts().unwrap();
        assert_eq!((c.accepted, c.errors()), (3, 7));
    }
}
