//! The many-user case of `sluice-bench failover`: N users simulated by sluice's own protocol
//! core (the generator of `sluice-bench compare`, [`crate::compare::users`]: one
//! [`Device`](sluice::proto::device::Device) per user with its own key, outer address in
//! 198.18.0.0/15 made local in the client namespace, one socket with `IP_PKTINFO`), all
//! configured as peers on both gateways of the VRRP pair, all with the VIP as endpoint.
//!
//! Every user handshakes with the master, then each sends one numbered datagram to the sink
//! every `interval` (N users: N / interval datagrams/s in all) through whatever session its
//! device holds, answers the gateway's handshakes and runs its own timers on the real clock,
//! as a WireGuard client does. The master's sluice is SIGKILLed; the sink notes per user the
//! first datagram sent after the kill that arrives. Reported: that time per user (median, p99,
//! max), the datagrams lost, whether each user's first delivered datagram after the kill
//! went on its old session (taken over by the backup) or on a new one, when every user had a
//! fresh session, and whether the backup went "under load" (cookies) in the handshake burst.

use crate::compare::io::{GenSocket, Out, BATCH, RECV_SLOT};
use crate::compare::packet::{self, Stamp};
use crate::compare::topo::{TUNNEL_NET, USERS_OUTER_BASE, USERS_OUTER_NET, USER_PORT};
use crate::compare::users::{self, LiveOut, Users};
use crate::compare::SINK_PORT;
use sluice::proto::device::Received;
use sluice::proto::messages::{self, Message};
use sluice::testbed::gateway::GatewayPeer;
use sluice::testbed::vrrp::{self, VrrpPair, VrrpSpec};
use sluice::testbed::{wait_for, Netns};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Stamp `run` of datagrams sent before the kill, and after it.
const RUN_BEFORE: u32 = 1;
const RUN_AFTER: u32 = 2;
/// "Not yet" for the kill time.
const NOT_YET: u64 = u64::MAX;

/// What one failover with many users measured.
#[derive(Clone, Debug, Default)]
pub struct ManyReport {
    pub users: u32,
    /// Per user, kill -> first delivered datagram sent after the kill (recovered users only).
    pub gaps_ms: Vec<f64>,
    /// Users with no datagram delivered after the kill before the run gave up.
    pub not_recovered: u32,
    pub sent: u64,
    pub lost: u64,
    /// Users whose first delivered datagram after the kill went on the session they had at
    /// the kill (taken over), and on a new one (a handshake first).
    pub continued: u32,
    pub rehandshook: u32,
    /// Kill -> the last user sending on a session newer than the one it had at the kill
    /// (`None` if some never did within the run).
    pub all_fresh_ms: Option<f64>,
    pub fresh_users: u32,
    /// The backup's `sluice_under_load` was seen at 1 after the kill (polled every 100 ms).
    pub under_load: bool,
    /// The backup's cookie replies sent after the kill, and those the users received.
    pub cookie_replies_sent: u64,
    pub cookie_replies_received: u64,
    /// The initial handshakes with the master: how long all of them took.
    pub setup_handshakes_s: f64,
    /// How far the generator fell behind its schedule at worst (it answers the backup's
    /// handshakes on the same thread).
    pub max_lag_ms: f64,
    /// Datagrams the generator skipped because it was more than an interval behind.
    pub skipped: u64,
}

impl ManyReport {
    pub fn gap_percentile(&self, p: f64) -> f64 {
        let mut g = self.gaps_ms.clone();
        g.sort_by(f64::total_cmp);
        if g.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (g.len() - 1) as f64).round() as usize;
        g[i.min(g.len() - 1)]
    }
}

/// The users as peers of both gateways: their key and tunnel address.
pub fn peers(users: &Users) -> Vec<GatewayPeer> {
    users
        .public_keys()
        .into_iter()
        .enumerate()
        .map(|(u, key)| GatewayPeer {
            public_key: key,
            allowed_ips: vec![format!("{}/32", users::tunnel_ip(u as u32))],
            endpoint: None,
            persistent_keepalive: None,
        })
        .collect()
}

/// The user an outer address belongs to.
fn user_of(ip: Ipv4Addr, n: u32) -> Option<u32> {
    let k = u32::from(ip).checked_sub(u32::from(USERS_OUTER_BASE) + 1)?;
    (k < n).then_some(k)
}

/// Routes the pair needs for the users: their outer addresses local in the client namespace
/// and reached through it from the gateways, their tunnel addresses through the TUN and, from
/// the sink, through the inside VIP.
fn add_routes(pair: &VrrpPair) -> Result<(), String> {
    let e = |e: sluice::testbed::Error| e.to_string();
    pair.client_ns
        .ip(&["route", "add", "local", USERS_OUTER_NET, "dev", "lo"])
        .map_err(e)?;
    let client = vrrp::CLIENT_OUTER_V4.to_string();
    for m in &pair.members {
        // onlink: the backup has no address on the VIP's subnet until it is master; the
        // source the kernel picks follows the addresses (the VIP once it is there).
        m.ns.ip(&[
            "route",
            "add",
            USERS_OUTER_NET,
            "via",
            &client,
            "dev",
            vrrp::OUTER_DEV,
            "onlink",
        ])
        .map_err(e)?;
        m.ns.ip(&["route", "add", TUNNEL_NET, "dev", m.gateway.ifname()])
            .map_err(e)?;
    }
    pair.sink_ns
        .add_route(TUNNEL_NET, Some(IpAddr::V4(vrrp::INNER_VIP_V4)), None)
        .map_err(e)?;
    Ok(())
}

/// Per user, what the sink saw.
#[derive(Clone, Copy, Debug, Default)]
struct SinkUser {
    received: u64,
    /// The first datagram sent after the kill that arrived: (arrival since the origin, seq).
    first_after: Option<(Duration, u64)>,
}

/// Per user, what the generator sent.
#[derive(Clone, Copy, Debug, Default)]
struct GenUser {
    next_seq: u64,
    /// Receiver index of the user's latest transport message, and the one at the kill.
    index: u32,
    index_at_kill: u32,
    /// The highest seq sent on the session the user had at the kill.
    last_old_seq: Option<u64>,
    /// When the user first sent on a newer session after the kill.
    fresh_at: Option<Duration>,
}

/// Shared between the threads of one run.
struct Shared {
    origin: Instant,
    kill_at: AtomicU64,
    stop_gen: AtomicBool,
    stop_sink: AtomicBool,
    recovered: AtomicU32,
    fresh: AtomicU32,
    streaming: AtomicBool,
}

impl Shared {
    /// A run about to start: its clock starts now, nothing killed, stopped or counted yet.
    fn new() -> Shared {
        Shared {
            origin: Instant::now(),
            kill_at: AtomicU64::new(NOT_YET),
            stop_gen: AtomicBool::new(false),
            stop_sink: AtomicBool::new(false),
            recovered: AtomicU32::new(0),
            fresh: AtomicU32::new(0),
            streaming: AtomicBool::new(false),
        }
    }

    fn kill_at(&self) -> Option<Duration> {
        match self.kill_at.load(Ordering::Acquire) {
            NOT_YET => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

/// Build the pair with `users` as peers, handshake, stream, SIGKILL the master, measure.
pub fn one_failover(
    spec: &VrrpSpec,
    users: &mut Users,
    interval: Duration,
    recover_timeout: Duration,
) -> Result<ManyReport, String> {
    let mut pair = VrrpPair::build(spec).map_err(|e| e.to_string())?;
    let r = run_pair(&mut pair, spec, users, interval, recover_timeout);
    r.map_err(|e| {
        // Not `pair.logs`: its status line lists every one of the N peers.
        let logs: Vec<String> = pair
            .members
            .iter_mut()
            .map(|m| {
                format!(
                    "gateway {}:\n{}\nkeepalived {}:\n{}",
                    m.index + 1,
                    m.gateway.log_tail(15),
                    m.index + 1,
                    m.keepalived.log_tail(15)
                )
            })
            .collect();
        format!("{e}\n{}", logs.join("\n"))
    })
}

fn run_pair(
    pair: &mut VrrpPair,
    spec: &VrrpSpec,
    users: &mut Users,
    interval: Duration,
    recover_timeout: Duration,
) -> Result<ManyReport, String> {
    let n = users.count();
    let long = Duration::from_secs(30);
    add_routes(pair)?;
    pair.wait_master(0, long).map_err(|e| e.to_string())?;
    if spec.ha.is_some() {
        pair.members[1]
            .wait_ha("gateway 2 to be backup", long, |v| {
                v.get("role").and_then(|r| r.as_str()) == Some("backup")
            })
            .map_err(|e| e.to_string())?;
    }
    users.set_gateway(
        &pair.gateway_key.public,
        SocketAddrV4::new(vrrp::VIP_V4, vrrp::LISTEN_PORT),
    )?;
    let sock = pair
        .client_ns
        .enter(|| GenSocket::bind(USER_PORT))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("binding the users' socket: {e}"))?;
    let sink = pair
        .sink_ns
        .udp_bind(SocketAddr::new(IpAddr::V4(vrrp::SINK_V4), SINK_PORT))
        .map_err(|e| e.to_string())?;
    sink.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;

    let t0 = Instant::now();
    // At most 64 handshakes in flight: the master stays responsive to its health check.
    let hs = users.handshake_all(&sock, 64, Duration::from_secs(1), Duration::from_secs(180))?;
    let setup_handshakes_s = t0.elapsed().as_secs_f64();
    println!(
        "    {n} users: handshakes with the master in {setup_handshakes_s:.1} s ({} cookie \
         replies, {} retries)",
        hs.cookie_replies, hs.retries
    );
    sock.want_destinations()
        .map_err(|e| format!("IP_PKTINFO on the users' socket: {e}"))?;

    let shared = Shared::new();
    let [master, backup] = &mut pair.members[..] else {
        return Err("the pair has not two members".into());
    };
    let backup_ns = &backup.ns;
    let scoped = std::thread::scope(|s| -> Result<ManyReport, String> {
        let sink_t = s.spawn(|| run_sink(&sink, n, &shared));
        let gen_t = s.spawn(|| generate(&sock, users, interval, &shared));
        let r = (|| -> Result<(bool, u64), String> {
            // Every user streaming, for a few rounds; with sync, the backup holding them all.
            wait_for(
                "the users to stream",
                long,
                Duration::from_millis(50),
                || Ok(shared.streaming.load(Ordering::Acquire).then_some(())),
            )
            .map_err(|e| e.to_string())?;
            if spec.ha.is_some() {
                backup
                    .wait_ha("gateway 2 to hold every session", long, |v| {
                        v.get("sessions_held").and_then(|n| n.as_u64()) >= Some(u64::from(n))
                    })
                    .map_err(|e| e.to_string())?;
            }
            std::thread::sleep((interval * 3).max(Duration::from_secs(1)));
            // A failover before the kill (the master's health check failed under the
            // handshake load) would make this run measure something else.
            if pair_flapped(master, backup, spec.ha.is_some())? {
                return Err(
                    "VRRP moved the VIP before the kill (the master's health check \
                            failed during set-up): run not measured"
                        .into(),
                );
            }
            let cookies0 = metric(backup_ns, "sluice_cookie_replies_sent_total").unwrap_or(0);
            shared
                .kill_at
                .store(shared.origin.elapsed().as_nanos() as u64, Ordering::Release);
            master
                .gateway
                .stop_with(libc::SIGKILL, Duration::from_secs(5));
            // Poll the backup's load while the users come back.
            let mut under_load = false;
            let deadline = Instant::now() + recover_timeout;
            let all_back = || {
                shared.recovered.load(Ordering::Acquire) >= n
                    && (spec.ha != Some(true) || shared.fresh.load(Ordering::Acquire) >= n)
            };
            while Instant::now() < deadline && !all_back() {
                under_load |= metric(backup_ns, "sluice_under_load") == Some(1);
                std::thread::sleep(Duration::from_millis(100));
            }
            under_load |= metric(backup_ns, "sluice_under_load") == Some(1);
            // A last stretch of steady stream, so late losses show.
            std::thread::sleep((interval * 2).max(Duration::from_millis(500)));
            let cookies = metric(backup_ns, "sluice_cookie_replies_sent_total").unwrap_or(0);
            Ok((under_load, cookies.saturating_sub(cookies0)))
        })();
        shared.stop_gen.store(true, Ordering::Release);
        let gen = gen_t
            .join()
            .unwrap_or_else(|_| Err("the generator panicked".into()));
        std::thread::sleep(Duration::from_millis(300));
        shared.stop_sink.store(true, Ordering::Release);
        let sink = sink_t.join().map_err(|_| "the sink panicked".to_string())?;
        let (under_load, cookie_replies_sent) = r?;
        let gen = gen?;
        Ok(summarize(
            n,
            &sink,
            &gen,
            under_load,
            cookie_replies_sent,
            setup_handshakes_s,
        ))
    });
    scoped
}

/// True if the VIP is not (only) on the master, or the backup took sessions over already.
fn pair_flapped(master: &vrrp::Member, backup: &vrrp::Member, ha: bool) -> Result<bool, String> {
    let e = |e: sluice::testbed::Error| e.to_string();
    let takeovers = if ha {
        backup.ha_counter("takeovers").map_err(e)?
    } else {
        0
    };
    Ok(!master.holds_vip().map_err(e)? || backup.holds_vip().map_err(e)? || takeovers > 0)
}

/// What the generator thread hands back.
struct GenResult {
    users: Vec<GenUser>,
    cookie_replies: u64,
    max_lag: Duration,
    /// Datagrams not sent because their time had passed by more than an interval.
    skipped: u64,
}

fn summarize(
    n: u32,
    sink: &[SinkUser],
    gen: &GenResult,
    under_load: bool,
    cookie_replies_sent: u64,
    setup_handshakes_s: f64,
) -> ManyReport {
    let mut r = ManyReport {
        users: n,
        under_load,
        cookie_replies_sent,
        cookie_replies_received: gen.cookie_replies,
        setup_handshakes_s,
        max_lag_ms: gen.max_lag.as_secs_f64() * 1e3,
        skipped: gen.skipped,
        ..ManyReport::default()
    };
    let mut all_fresh = Some(Duration::ZERO);
    for (s, g) in sink.iter().zip(&gen.users) {
        r.sent += g.next_seq;
        r.lost += g.next_seq.saturating_sub(s.received);
        match s.first_after {
            Some((gap, seq)) => {
                r.gaps_ms.push(gap.as_secs_f64() * 1e3);
                if g.last_old_seq.is_some_and(|old| seq <= old) {
                    r.continued += 1;
                } else {
                    r.rehandshook += 1;
                }
            }
            None => r.not_recovered += 1,
        }
        match g.fresh_at {
            Some(t) => {
                r.fresh_users += 1;
                all_fresh = all_fresh.map(|a| a.max(t));
            }
            None => all_fresh = None,
        }
    }
    r.all_fresh_ms = all_fresh.map(|t| t.as_secs_f64() * 1e3);
    r
}

/// The sink: per user, datagrams received and the first one sent after the kill. Arrival
/// times of the latter are taken relative to the kill.
fn run_sink(sock: &UdpSocket, n: u32, shared: &Shared) -> Vec<SinkUser> {
    let mut per = vec![SinkUser::default(); n as usize];
    let mut buf = [0u8; 2048];
    while !shared.stop_sink.load(Ordering::Acquire) {
        let Ok(len) = sock.recv(&mut buf) else {
            continue;
        };
        // The payload layout of `packet::write_payload`: run, seq, user after the magic.
        let pl = &buf[..len];
        let (Some(run), Some(seq), Some(user)) = (
            pl.get(4..8)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            packet::seq_of(pl),
            pl.get(16..20)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        ) else {
            continue;
        };
        let Some(p) = per.get_mut(user as usize) else {
            continue;
        };
        if run != RUN_BEFORE && run != RUN_AFTER {
            continue; // the hello of the handshake round
        }
        p.received += 1;
        if run == RUN_AFTER && p.first_after.is_none() {
            let kill = shared.kill_at().unwrap_or_default();
            p.first_after = Some((shared.origin.elapsed().saturating_sub(kill), seq));
            shared.recovered.fetch_add(1, Ordering::AcqRel);
        }
    }
    per
}

/// The users: one datagram each per `interval`, round robin; the gateway's datagrams
/// answered; timers run every 50 ms.
fn generate(
    sock: &GenSocket,
    users: &mut Users,
    interval: Duration,
    shared: &Shared,
) -> Result<GenResult, String> {
    let n = users.count();
    let mut per = vec![GenUser::default(); n as usize];
    let mut res = GenResult {
        users: Vec::new(),
        cookie_replies: 0,
        max_lag: Duration::ZERO,
        skipped: 0,
    };
    let gw = SocketAddrV4::new(vrrp::VIP_V4, vrrp::LISTEN_PORT);
    let slot = interval.as_secs_f64() / f64::from(n);
    let start = shared.origin.elapsed();
    let mut next: u64 = 0;
    let mut out = LiveOut::default();
    let mut inner = [0u8; packet::MAX_SIZE];
    let mut bufs = vec![0u8; BATCH * RECV_SLOT];
    let (mut lens, mut dsts) = ([0usize; BATCH], [Ipv4Addr::UNSPECIFIED; BATCH]);
    let mut last_tick = Instant::now();
    while !shared.stop_gen.load(Ordering::Acquire) {
        let now = shared.origin.elapsed();
        let kill = shared.kill_at();
        // Due datagrams, at most a few batches before looking at what came in.
        let mut budget = 4 * BATCH;
        while budget > 0 {
            let due = start + Duration::from_secs_f64(next as f64 * slot);
            if due > now {
                break;
            }
            res.max_lag = res.max_lag.max(now - due);
            if now - due > interval {
                // A whole round behind (the thread was starved or busy with handshakes):
                // skip to the slot due now rather than burst the backlog out.
                let now_slot = ((now - start).as_secs_f64() / slot) as u64;
                res.skipped += now_slot.saturating_sub(next);
                next = now_slot.max(next);
                continue;
            }
            let u = (next % u64::from(n)) as u32;
            let g = &mut per[u as usize];
            let len = packet::build(
                &mut inner,
                packet::MIN_SIZE,
                users::tunnel_ip(u),
                crate::compare::topo::SINK_V4,
                SINK_PORT,
                Stamp {
                    run: if kill.is_some() {
                        RUN_AFTER
                    } else {
                        RUN_BEFORE
                    },
                    seq: g.next_seq,
                    user: u,
                },
            );
            let first = out.datagrams.len();
            users.send_live(u, &inner[..len], &mut out);
            let on = transport_index(&out.datagrams[first..], u);
            note_sent(g, on, Some(g.next_seq), kill, now, shared);
            g.next_seq += 1;
            next += 1;
            budget -= 1;
        }
        if next >= u64::from(n) * 3 {
            shared.streaming.store(true, Ordering::Release);
        }
        // What the gateways sent.
        sock.wait_readable(if out.datagrams.is_empty() { 1 } else { 0 });
        for _ in 0..4 {
            let got = sock
                .recv_to(&mut bufs, &mut lens, &mut dsts)
                .map_err(|e| format!("receiving: {e}"))?;
            for i in 0..got {
                let Some(u) = user_of(dsts[i], n) else {
                    continue;
                };
                let first = out.datagrams.len();
                let d = &mut bufs[i * RECV_SLOT..i * RECV_SLOT + lens[i]];
                if let Ok(Received::CookieReply { .. }) = users.receive_live(u, d, &mut out) {
                    res.cookie_replies += 1;
                }
                let on = transport_index(&out.datagrams[first..], u);
                note_sent(&mut per[u as usize], on, None, kill, now, shared);
            }
            if got < BATCH {
                break;
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(50) {
            last_tick = Instant::now();
            let first = out.datagrams.len();
            users.tick_live(&mut out);
            let ticked: Vec<(u32, u32)> = out.datagrams[first..]
                .iter()
                .filter_map(|(u, d)| Some((*u, index_of_transport(d)?)))
                .collect();
            for (u, idx) in ticked {
                note_sent(&mut per[u as usize], Some(idx), None, kill, now, shared);
            }
        }
        send_all(sock, gw, &mut out)?;
        out.handshakes.clear();
    }
    res.users = per;
    Ok(res)
}

/// The receiver index of user `u`'s transport message among `datagrams`, if there is one.
fn transport_index(datagrams: &[(u32, Vec<u8>)], u: u32) -> Option<u32> {
    datagrams
        .iter()
        .filter(|(v, _)| *v == u)
        .find_map(|(_, d)| index_of_transport(d))
}

fn index_of_transport(d: &[u8]) -> Option<u32> {
    match messages::parse(d) {
        Ok(Message::Transport(m)) => Some(m.receiver()),
        _ => None,
    }
}

/// Book-keeping for a user that sent a transport message on receiver index `on` (carrying
/// datagram `seq`, if it was one of the stream's).
fn note_sent(
    g: &mut GenUser,
    on: Option<u32>,
    seq: Option<u64>,
    kill: Option<Duration>,
    now: Duration,
    shared: &Shared,
) {
    let Some(idx) = on else {
        return;
    };
    if kill.is_none() {
        g.index = idx;
        g.index_at_kill = idx;
        if seq.is_some() {
            g.last_old_seq = seq;
        }
        return;
    }
    if idx == g.index_at_kill {
        if seq.is_some() {
            g.last_old_seq = seq;
        }
    } else if g.fresh_at.is_none() {
        g.fresh_at = Some(now.saturating_sub(kill.unwrap_or_default()));
        shared.fresh.fetch_add(1, Ordering::AcqRel);
    }
    g.index = idx;
}

/// Send everything queued, from each user's own address.
fn send_all(sock: &GenSocket, gw: SocketAddrV4, out: &mut LiveOut) -> Result<(), String> {
    let items: Vec<Out> = out
        .datagrams
        .iter()
        .map(|(u, d)| Out {
            src: users::outer_ip(*u),
            dst: gw,
            data: d,
        })
        .collect();
    let mut sent = 0;
    let mut stalls = 0;
    while sent < items.len() {
        let k = sock
            .send(&items[sent..])
            .map_err(|e| format!("sending: {e}"))?;
        if k == 0 {
            stalls += 1;
            if stalls > 1000 {
                break; // the socket buffer stays full: count them as lost
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        sent += k;
    }
    out.datagrams.clear();
    Ok(())
}

/// An unlabelled metric of the sluice in `ns` (its `/metrics` on [`vrrp::METRICS`]).
fn metric(ns: &Netns, name: &str) -> Option<u64> {
    let text = ns
        .enter(|| -> Option<String> {
            let addr: SocketAddr = vrrp::METRICS.parse().ok()?;
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
            let mut body = String::new();
            c.read_to_string(&mut body).ok()?;
            Some(body)
        })
        .ok()??;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse::<f64>().ok().map(|v| v as u64))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_addresses_map_back_to_users() {
        for u in [0, 1, 9_999] {
            assert_eq!(user_of(users::outer_ip(u), 10_000), Some(u));
        }
        assert_eq!(user_of(users::outer_ip(10_000), 10_000), None);
        assert_eq!(user_of(USERS_OUTER_BASE, 10_000), None);
        assert_eq!(user_of(Ipv4Addr::new(10, 0, 0, 1), 10_000), None);
    }

    #[test]
    fn sessions_are_classified_by_receiver_index() {
        let shared = Shared::new();
        let mut g = GenUser::default();
        let t = Duration::from_secs(1);
        note_sent(&mut g, Some(7), Some(0), None, t, &shared);
        let kill = Some(t);
        note_sent(&mut g, Some(7), Some(1), kill, t * 2, &shared);
        note_sent(&mut g, None, Some(2), kill, t * 2, &shared); // staged: no transport
        note_sent(&mut g, Some(9), None, kill, t * 3, &shared); // a keepalive on a new session
        note_sent(&mut g, Some(9), Some(3), kill, t * 4, &shared);
        assert_eq!(g.last_old_seq, Some(1));
        assert_eq!(g.fresh_at, Some(t * 2));
        assert_eq!(shared.fresh.load(Ordering::Relaxed), 1);
    }
}
