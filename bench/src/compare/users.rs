//! The simulated users: one sluice protocol core ([`Device`]) per user as its WireGuard
//! client, each with its own key, outer address and tunnel address, doing real handshakes with
//! the gateway under test and then encrypting its transport data ahead of time.
//!
//! Each user's device runs on its own simulated clock (`Time` is passed in): that lets the
//! generator fire a user's retransmission timer at once after a lost initiation or a cookie
//! reply instead of waiting the protocol's 5 s, without touching the protocol core.

use super::io::{GenSocket, Out, BATCH, RECV_SLOT};
use super::packet::{self, Reject, SizeMix, Stamp};
use super::xsk_tx::{write_headers, FrameAddrs, FRAME_HEADROOM};
use sluice::proto::device::{Context, Device, Received, Sent};
use sluice::proto::messages::{self, Message, KEY_LEN};
use sluice::proto::peer::{PeerConfig, PeerId};
use sluice::proto::{Time, WallTime};
use sluice::{DropReason, OsRng};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A user's addresses: outer (where its UDP comes from) and tunnel (its /32 at the gateway).
pub fn outer_ip(user: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(super::topo::USERS_OUTER_BASE) + 1 + user)
}

pub fn tunnel_ip(user: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(super::topo::GW_TUNNEL_V4) + 1 + user)
}

/// The most users the address plan holds (198.18.0.0/15 outer, 10.96.0.0/12 tunnel).
pub const MAX_USERS: u32 = 100_000;

/// An inner packet a user sends once its session is up, before any run: confirms the session
/// at the gateway (a responder's new keypair is used for sending only after data arrives).
const HELLO_RUN: u32 = 0;

/// What became of a datagram the gateway sent to the users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Decrypted by user `.0`'s session; the inner packet is at `.1`.
    Data(u32, std::ops::Range<usize>),
    /// The session refused it: replayed (a duplicate) or not authentic (corrupt).
    Refused(Reject),
    /// Not transport data for a current session (a handshake message, a keepalive, a stale
    /// index).
    Other,
}

/// One simulated user.
struct User {
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
    dev: Option<Device>,
    peer: PeerId,
    /// The user's simulated clock, ahead of the shared one by the timers it was pushed past.
    skew: Duration,
    /// The sender index of the initiation in flight.
    index: u32,
    sent_at: Option<Instant>,
    response: Option<Vec<u8>>,
    attempts: u32,
}

/// What a handshake round measured.
#[derive(Clone, Debug, Default)]
pub struct HandshakeStats {
    /// Users whose handshake completed.
    pub completed: usize,
    /// From the first initiation sent to the last response received.
    pub elapsed: Duration,
    pub initiations_sent: u64,
    pub cookie_replies: u64,
    pub retries: u64,
}

impl HandshakeStats {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The pre-encrypted datagrams of one timed run, in sending order, each with
/// [`FRAME_HEADROOM`] bytes in front of it for its frame headers.
#[derive(Debug, Default)]
pub struct Pool {
    arena: Vec<u8>,
    /// (offset in the arena, length, user) of each datagram; index = sequence number.
    items: Vec<(usize, u16, u32)>,
}

impl Pool {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn item(&self, i: usize) -> (u32, &[u8]) {
        let (off, len, user) = self.items[i];
        (user, &self.arena[off..off + usize::from(len)])
    }

    /// Datagram `i` as a whole Ethernet frame (its headers written by
    /// [`Pool::build_frames`]).
    pub fn frame(&self, i: usize) -> &[u8] {
        let (off, len, _) = self.items[i];
        &self.arena[off - FRAME_HEADROOM..off + usize::from(len)]
    }

    /// Write every datagram's Ethernet/IPv4/UDP headers (from its user's outer address) into
    /// the room in front of it, for the AF_XDP transmitter.
    pub fn build_frames(&mut self, addrs: &FrameAddrs) -> Result<(), String> {
        for &(off, len, user) in &self.items {
            let f = &mut self.arena[off - FRAME_HEADROOM..off + usize::from(len)];
            if !write_headers(f, addrs, outer_ip(user)) {
                return Err(format!(
                    "user {user}: a {len} B datagram does not fit a frame"
                ));
            }
        }
        Ok(())
    }
}

/// All simulated users.
pub struct Users {
    users: Vec<User>,
    by_index: HashMap<u32, usize>,
    gateway_public: [u8; KEY_LEN],
    gateway: SocketAddrV4,
    origin: Instant,
    rng: OsRng,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("users", &self.users.len())
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

fn wall_now() -> WallTime {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    WallTime::new(d.as_secs(), d.subsec_nanos())
}

impl Users {
    /// `n` users with fresh keys; [`Users::set_gateway`] says whose clients they are.
    pub fn new(n: u32) -> Users {
        let mut rng = OsRng;
        let users = (0..n)
            .map(|_| {
                let private = *sluice::keys::generate_private(&mut rng);
                User {
                    public: sluice::keys::public_from_private(&private),
                    private,
                    dev: None,
                    peer: 0,
                    skew: Duration::ZERO,
                    index: 0,
                    sent_at: None,
                    response: None,
                    attempts: 0,
                }
            })
            .collect();
        Users {
            users,
            by_index: HashMap::new(),
            gateway_public: [0; KEY_LEN],
            gateway: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            origin: Instant::now(),
            rng,
        }
    }

    /// The gateway under test: its public key (base64) and endpoint. Drops every session.
    pub fn set_gateway(&mut self, public: &str, endpoint: SocketAddrV4) -> Result<(), String> {
        let key = sluice::keys::decode_key(public).map_err(|e| format!("gateway key: {e}"))?;
        self.gateway_public = *key;
        self.gateway = endpoint;
        self.by_index.clear();
        for u in &mut self.users {
            u.dev = None;
        }
        Ok(())
    }

    /// Each user's public key, in WireGuard's base64 form, for the gateway's config.
    pub fn public_keys(&self) -> Vec<String> {
        self.users
            .iter()
            .map(|u| sluice::keys::encode_key(&u.public))
            .collect()
    }

    fn now(&self, u: usize) -> Time {
        Time::from_nanos((self.origin.elapsed() + self.users[u].skew).as_nanos() as u64)
    }

    /// A fresh device for user `u` and its first initiation (plus the staged hello packet).
    fn start_user(&mut self, u: usize) -> Vec<u8> {
        let mut dev = Device::new(&self.users[u].private);
        let now = self.now(u);
        let cfg = PeerConfig {
            public_key: self.gateway_public,
            endpoint: Some(SocketAddr::V4(self.gateway)),
            allowed_ips: vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)],
            ..PeerConfig::default()
        };
        let peer = dev
            .add_peer(now, &cfg)
            .unwrap_or_else(|e| unreachable!("a fresh device takes its one peer: {e}"));
        let mut hello = [0u8; packet::MAX_SIZE];
        let n = packet::build(
            &mut hello,
            packet::MIN_SIZE,
            tunnel_ip(u as u32),
            super::topo::SINK_V4,
            super::SINK_PORT,
            Stamp {
                run: HELLO_RUN,
                seq: 0,
                user: u as u32,
            },
        );
        let mut out = vec![0u8; packet::MAX_SIZE + 64];
        let mut cx = Context {
            now,
            wall: wall_now(),
            rng: &mut self.rng,
        };
        let _ = dev.send_to_peer(&mut cx, peer, &hello[..n], &mut out);
        let init = take_initiation(&mut dev);
        let user = &mut self.users[u];
        user.dev = Some(dev);
        user.peer = peer;
        user.response = None;
        user.attempts = 1;
        user.sent_at = None;
        self.register(u, &init);
        init
    }

    fn register(&mut self, u: usize, init: &[u8]) {
        if let Ok(Message::Initiation(m)) = messages::parse(init) {
            let old = std::mem::replace(&mut self.users[u].index, m.sender());
            self.by_index.remove(&old);
            self.by_index.insert(m.sender(), u);
        }
    }

    /// Fire user `u`'s retransmission timer now (pushing its clock past it) and return the new
    /// initiation, if the device made one.
    fn retry_user(&mut self, u: usize) -> Option<Vec<u8>> {
        self.users[u].skew +=
            messages::REKEY_TIMEOUT + messages::REKEY_TIMEOUT_JITTER_MAX + Duration::from_millis(1);
        let now = self.now(u);
        let mut cx = Context {
            now,
            wall: wall_now(),
            rng: &mut self.rng,
        };
        let dev = self.users[u].dev.as_mut()?;
        dev.handle_timeout(&mut cx);
        let init = take_initiation(dev);
        if init.is_empty() {
            return None;
        }
        self.users[u].attempts += 1;
        self.register(u, &init);
        Some(init)
    }

    /// Handshake every user with the gateway: initiations are made before the clock starts,
    /// then sent keeping at most `window` unanswered; lost ones and cookie replies are retried
    /// after `retry_after`. The clock stops at the last response; the responses are consumed
    /// (two DH each on the generator's side) after it, then every user sends its hello.
    pub fn handshake_all(
        &mut self,
        sock: &GenSocket,
        window: usize,
        retry_after: Duration,
        timeout: Duration,
    ) -> Result<HandshakeStats, String> {
        let n = self.users.len();
        let mut pending: Vec<Option<Vec<u8>>> = (0..n).map(|u| Some(self.start_user(u))).collect();
        let mut st = HandshakeStats::default();
        let (mut next, mut in_flight, mut done) = (0usize, 0usize, 0usize);
        let mut retry: Vec<usize> = Vec::new();
        let mut bufs = vec![0u8; BATCH * RECV_SLOT];
        let mut lens = [0usize; BATCH];
        let start = Instant::now();
        let mut last_response = start;
        let mut last_sweep = start;
        while done < n {
            if start.elapsed() > timeout {
                return Err(format!(
                    "handshakes: {done} of {n} users answered within {timeout:?} ({} \
                     initiations sent, {} cookie replies)",
                    st.initiations_sent, st.cookie_replies
                ));
            }
            // Fill the window: retries first, then users not started yet.
            let mut batch: Vec<(usize, Vec<u8>)> = Vec::new();
            while in_flight + batch.len() < window && batch.len() < BATCH {
                if let Some(u) = retry.pop() {
                    if let Some(init) = self.retry_user(u) {
                        st.retries += 1;
                        batch.push((u, init));
                    }
                } else if next < n {
                    if let Some(init) = pending[next].take() {
                        batch.push((next, init));
                    }
                    next += 1;
                } else {
                    break;
                }
            }
            if !batch.is_empty() {
                self.send_all(sock, &batch, "initiations")?;
                let now = Instant::now();
                for (u, _) in &batch {
                    self.users[*u].sent_at = Some(now);
                }
                in_flight += batch.len();
                st.initiations_sent += batch.len() as u64;
            }
            sock.wait_readable(1);
            loop {
                let got = sock
                    .recv(&mut bufs, &mut lens)
                    .map_err(|e| format!("receiving responses: {e}"))?;
                if got == 0 {
                    break;
                }
                for (i, &len) in lens.iter().take(got).enumerate() {
                    let d = &bufs[i * RECV_SLOT..i * RECV_SLOT + len];
                    match messages::parse(d) {
                        Ok(Message::Response(m)) => {
                            let Some(&u) = self.by_index.get(&m.receiver()) else {
                                continue;
                            };
                            if self.users[u].response.is_none() {
                                self.users[u].response = Some(d.to_vec());
                                self.users[u].sent_at = None;
                                in_flight -= 1;
                                done += 1;
                                last_response = Instant::now();
                            }
                        }
                        Ok(Message::CookieReply(m)) => {
                            let Some(&u) = self.by_index.get(&m.receiver()) else {
                                continue;
                            };
                            st.cookie_replies += 1;
                            let mut copy = d.to_vec();
                            let _ = self.handle(u, &mut copy);
                            if self.users[u].sent_at.take().is_some() {
                                in_flight -= 1;
                                retry.push(u);
                            }
                        }
                        _ => {}
                    }
                }
            }
            // Initiations unanswered for too long were lost (or refused): try again.
            if last_sweep.elapsed() >= retry_after / 4 {
                last_sweep = Instant::now();
                for (u, user) in self.users.iter_mut().enumerate() {
                    if user.response.is_none()
                        && user.sent_at.is_some_and(|t| t.elapsed() >= retry_after)
                    {
                        user.sent_at = None;
                        in_flight -= 1;
                        retry.push(u);
                    }
                }
            }
        }
        st.completed = done;
        st.elapsed = last_response.duration_since(start);
        self.finish_handshakes(sock)?;
        Ok(st)
    }

    /// Consume every stored response (deriving the sessions) and send each user's staged
    /// hello packet, which confirms the session at the gateway.
    fn finish_handshakes(&mut self, sock: &GenSocket) -> Result<(), String> {
        let mut hellos: Vec<(usize, Vec<u8>)> = Vec::new();
        for u in 0..self.users.len() {
            let Some(mut resp) = self.users[u].response.take() else {
                continue;
            };
            let Some((dev, r)) = self.handle(u, &mut resp) else {
                continue;
            };
            match r {
                Ok(Received::Handshake { .. }) => {}
                other => {
                    return Err(format!(
                        "user {u}: the gateway's response did not complete the handshake: \
                         {other:?}"
                    ))
                }
            }
            while let Some(t) = dev.poll_transmit() {
                hellos.push((u, t.data));
            }
        }
        self.send_all(sock, &hellos, "hellos")
    }

    /// Send every `(user, datagram)` from its user's outer address to the gateway, waiting
    /// for room in the socket's buffer as needed.
    fn send_all(
        &self,
        sock: &GenSocket,
        datagrams: &[(usize, Vec<u8>)],
        what: &str,
    ) -> Result<(), String> {
        for chunk in datagrams.chunks(BATCH) {
            let outs: Vec<Out> = chunk
                .iter()
                .map(|(u, d)| Out {
                    src: outer_ip(*u as u32),
                    dst: self.gateway,
                    data: d,
                })
                .collect();
            let mut sent = 0;
            while sent < outs.len() {
                sent += sock
                    .send(&outs[sent..])
                    .map_err(|e| format!("sending {what}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Decrypt one transport datagram the gateway sent to a user (the inside -> users
    /// direction) with that user's own session, found by the receiver index (the user's
    /// sender index of its last handshake).
    pub fn open(&mut self, datagram: &mut [u8]) -> Opened {
        let Ok(Message::Transport(m)) = messages::parse(datagram) else {
            return Opened::Other;
        };
        // An index of no current session (an older round's, or none at all): not counted
        // as delivered, so it shows as loss.
        let Some(&u) = self.by_index.get(&m.receiver()) else {
            return Opened::Other;
        };
        let Some((dev, r)) = self.handle(u, datagram) else {
            return Opened::Other;
        };
        // A device may queue a keepalive or handshake meanwhile; the generator sends none.
        while dev.poll_transmit().is_some() {}
        match r {
            Ok(Received::Data { packet, .. }) => Opened::Data(u as u32, packet),
            Ok(_) => Opened::Other,
            Err(DropReason::Replayed) => Opened::Refused(Reject::Duplicate),
            Err(_) => Opened::Refused(Reject::Corrupt),
        }
    }

    /// User `u`'s device (if it has one) handles a datagram from the gateway, on the user's
    /// clock; returns the device (for what it queued) and its verdict.
    fn handle(
        &mut self,
        u: usize,
        datagram: &mut [u8],
    ) -> Option<(&mut Device, Result<Received, DropReason>)> {
        let mut cx = Context {
            now: self.now(u),
            wall: wall_now(),
            rng: &mut self.rng,
        };
        let dev = self.users[u].dev.as_mut()?;
        let r = dev.handle_datagram(&mut cx, SocketAddr::V4(self.gateway), datagram);
        Some((dev, r))
    }

    /// How many users there are.
    pub fn count(&self) -> u32 {
        self.users.len() as u32
    }

    /// Encrypt `total` transport datagrams for run `run` ahead of time: packet `seq` comes
    /// from user `seq % users`, has inner size `mix.size_of(seq)` and goes to the sink. Users
    /// are split over `threads` threads (each device has one owner).
    pub fn encrypt_pool(
        &mut self,
        run: u32,
        total: u64,
        mix: SizeMix,
        threads: usize,
    ) -> Result<Pool, String> {
        let n = self.users.len();
        let threads = threads.clamp(1, n.max(1));
        let per = n.div_ceil(threads);
        let origin = self.origin;
        let parts: Vec<Result<Part, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .users
                .chunks_mut(per)
                .enumerate()
                .map(|(t, chunk)| {
                    let first = t * per;
                    s.spawn(move || {
                        // Before the clock: both cores may work (the gateway is idle).
                        let _ = super::topo::pin_current(t % 2);
                        encrypt_part(chunk, first, n, origin, run, total, mix)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("an encryption thread panicked".into()))
                })
                .collect()
        });
        let parts: Vec<Part> = parts.into_iter().collect::<Result<_, _>>()?;
        // Merge in sequence order: packet seq belongs to user seq % n, whose part is known.
        let mut arena = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
        let bases: Vec<usize> = parts
            .iter()
            .scan(0usize, |acc, p| {
                let b = *acc;
                *acc += p.0.len();
                Some(b)
            })
            .collect();
        for p in &parts {
            arena.extend_from_slice(&p.0);
        }
        let mut cursors = vec![0usize; parts.len()];
        let mut items = Vec::with_capacity(total as usize);
        for seq in 0..total {
            let user = (seq % n as u64) as usize;
            let t = user / per;
            let (s, off, len) = parts[t].1[cursors[t]];
            debug_assert_eq!(s, seq);
            cursors[t] += 1;
            items.push((bases[t] + off, len, user as u32));
        }
        Ok(Pool { arena, items })
    }
}

/// One thread's share of a pool: its datagrams back to back, and (sequence number, offset,
/// length) of each.
type Part = (Vec<u8>, Vec<(u64, usize, u16)>);

/// One thread's share of [`Users::encrypt_pool`]: users `first..first + chunk.len()`.
fn encrypt_part(
    chunk: &mut [User],
    first: usize,
    n: usize,
    origin: Instant,
    run: u32,
    total: u64,
    mix: SizeMix,
) -> Result<Part, String> {
    let mut rng = OsRng;
    let mut arena: Vec<u8> = Vec::new();
    let mut items = Vec::new();
    let mut inner = [0u8; packet::MAX_SIZE];
    let mut out = [0u8; packet::MAX_SIZE + 64];
    let wall = wall_now();
    let n64 = n as u64;
    // Packets of these users, in sequence order: seq = user + k * n.
    let mut k = 0u64;
    loop {
        let mut any = false;
        for (i, user) in chunk.iter_mut().enumerate() {
            let u = (first + i) as u64;
            let seq = u + k * n64;
            if seq >= total {
                continue;
            }
            any = true;
            let size = mix.size_of(seq);
            let len = packet::build(
                &mut inner,
                size,
                tunnel_ip(u as u32),
                super::topo::SINK_V4,
                super::SINK_PORT,
                Stamp {
                    run,
                    seq,
                    user: u as u32,
                },
            );
            let now = Time::from_nanos((origin.elapsed() + user.skew).as_nanos() as u64);
            let mut cx = Context {
                now,
                wall,
                rng: &mut rng,
            };
            let dev = user
                .dev
                .as_mut()
                .ok_or_else(|| format!("user {u} has no session"))?;
            match dev.send_to_peer(&mut cx, user.peer, &inner[..len], &mut out) {
                Ok(Sent::Transmit { len, .. }) => {
                    // Room for the frame headers the AF_XDP transmitter writes in front.
                    arena.resize(arena.len() + FRAME_HEADROOM, 0);
                    items.push((seq, arena.len(), len as u16));
                    arena.extend_from_slice(&out[..len]);
                }
                other => return Err(format!("user {u}: encrypting packet {seq}: {other:?}")),
            }
        }
        if !any {
            break;
        }
        k += 1;
    }
    // The device may have queued handshake messages meanwhile; none should go out.
    for user in chunk.iter_mut() {
        if let Some(dev) = user.dev.as_mut() {
            while dev.poll_transmit().is_some() {}
        }
    }
    Ok((arena, items))
}

/// The initiation a device just queued (the other transmits are dropped: nothing else is due
/// before a handshake).
fn take_initiation(dev: &mut Device) -> Vec<u8> {
    let mut init = Vec::new();
    while let Some(t) = dev.poll_transmit() {
        if matches!(messages::parse(&t.data), Ok(Message::Initiation(_))) {
            init = t.data;
        }
    }
    init
}

/// What the users' devices produced during live use: datagrams to send (user, bytes), and
/// users whose handshake just completed.
#[derive(Debug, Default)]
pub struct LiveOut {
    pub datagrams: Vec<(u32, Vec<u8>)>,
    pub handshakes: Vec<u32>,
}

/// Live use (`sluice-bench failover`): the users as running clients on the real clock, each
/// sending through whatever session its device has, answering the gateway's handshakes and
/// starting its own when its timers say so, as a WireGuard client does.
impl Users {
    /// User `u` sends `inner` now: the transport message, or (with no usable session) the
    /// initiation its device starts while it holds the packet.
    pub fn send_live(&mut self, u: u32, inner: &[u8], out: &mut LiveOut) {
        let u = u as usize;
        let now = self.now(u);
        let mut buf = [0u8; packet::MAX_SIZE + 64];
        let mut cx = Context {
            now,
            wall: wall_now(),
            rng: &mut self.rng,
        };
        let peer = self.users[u].peer;
        let Some(dev) = self.users[u].dev.as_mut() else {
            return;
        };
        if let Ok(Sent::Transmit { len, .. }) = dev.send_to_peer(&mut cx, peer, inner, &mut buf) {
            out.datagrams.push((u as u32, buf[..len].to_vec()));
        }
        drain(dev, u as u32, out);
    }

    /// A datagram the gateway sent to user `u` (told by its destination address).
    pub fn receive_live(
        &mut self,
        u: u32,
        datagram: &mut [u8],
        out: &mut LiveOut,
    ) -> Result<Received, DropReason> {
        let (dev, r) = self
            .handle(u as usize, datagram)
            .ok_or(DropReason::UnknownPeer)?;
        drain(dev, u, out);
        r
    }

    /// Run every user's due timers (retransmissions, rekeys, keepalives).
    pub fn tick_live(&mut self, out: &mut LiveOut) {
        let wall = wall_now();
        for u in 0..self.users.len() {
            let now = self.now(u);
            let Some(dev) = self.users[u].dev.as_mut() else {
                continue;
            };
            if dev.poll_timeout().is_some_and(|t| t <= now) {
                let mut cx = Context {
                    now,
                    wall,
                    rng: &mut self.rng,
                };
                dev.handle_timeout(&mut cx);
                drain(dev, u as u32, out);
            }
        }
    }
}

/// Everything a device queued: its datagrams, and whether a handshake completed.
fn drain(dev: &mut Device, u: u32, out: &mut LiveOut) {
    while let Some(t) = dev.poll_transmit() {
        out.datagrams.push((u, t.data));
    }
    while let Some(e) = dev.poll_event() {
        if matches!(e, sluice::proto::device::Event::HandshakeCompleted { .. }) {
            out.handshakes.push(u);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::compare::xsk_tx::ETH_HEADER;

    #[test]
    fn pool_frames_wrap_each_datagram_from_its_user() {
        // Two datagrams laid out as encrypt_part lays them: headroom, then the datagram.
        let mut pool = Pool::default();
        for (user, len) in [(0u32, 32usize), (7, 1452)] {
            pool.arena.resize(pool.arena.len() + FRAME_HEADROOM, 0);
            pool.items.push((pool.arena.len(), len as u16, user));
            pool.arena
                .extend((0..len).map(|i| (i as u8) ^ (user as u8)));
        }
        let addrs = FrameAddrs {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 51820),
            src_port: super::super::topo::USER_PORT,
        };
        pool.build_frames(&addrs).unwrap();
        for i in 0..pool.len() {
            let (user, data) = pool.item(i);
            let frame = pool.frame(i);
            assert_eq!(frame.len(), FRAME_HEADROOM + data.len());
            assert_eq!(&frame[FRAME_HEADROOM..], data, "the datagram is untouched");
            let ip = &frame[ETH_HEADER..];
            assert_eq!(
                &ip[12..16],
                &outer_ip(user).octets(),
                "the user's own source"
            );
            let p = sluice::datapath::frame::parse_udp(frame).unwrap();
            assert_eq!(
                p.remote,
                SocketAddr::from((outer_ip(user), super::super::topo::USER_PORT))
            );
            assert_eq!(&frame[p.payload], data);
        }
    }
}
