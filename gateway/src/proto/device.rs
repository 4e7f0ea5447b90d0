//! A whole WireGuard interface, sans-IO: our identity, the peers, and the tables that find them
//! (receiver indices, allowed IPs, public keys), composed the way the kernel's `device.c`,
//! `receive.c` and `send.c` compose them.
//!
//! The caller owns all I/O and time, quinn-style:
//! - datagrams from the network go into [`Device::handle_datagram`], which decrypts transport
//!   data in place and answers handshakes;
//! - inner packets to send go into [`Device::send`], which encrypts into the caller's buffer
//!   when a session exists and otherwise stages the packet and starts a handshake;
//! - [`Device::poll_timeout`] says when to call [`Device::handle_timeout`];
//! - [`Device::poll_transmit`] yields the messages the core wants sent (handshakes, cookie
//!   replies, keepalives, staged packets), and [`Device::poll_event`] what happened.
//!
//! The fast path (transport data with a session) allocates nothing; handshake traffic does.

use super::allowedips::AllowedIps;
use super::cookie::{CookieChecker, CookieError};
use super::index::IndexTable;
use super::ip;
use super::messages::{self, CookieReply, Initiation, Message, Response, KEY_LEN};
use super::noise::{self, Identity};
use super::peer::{Peer, PeerConfig, PeerId};
use super::ratelimiter::RateLimiter;
use super::session::{Keypair, Slot};
use super::timers::{Retransmit, Timer, Timers};
use super::{Rng, Time, WallTime};
use crate::DropReason;
use core::ops::Range;
use core::time::Duration;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

/// Default inner MTU, as wg-quick's.
pub const DEFAULT_MTU: usize = 1420;
/// Sources the handshake rate limiter tracks at most.
const RATELIMITER_ENTRIES: usize = 1 << 16;
/// How often idle rate-limiter entries are swept.
const RATELIMITER_GC_INTERVAL: Duration = Duration::from_secs(1);
/// Stay under load this long after the last report of load, so the state doesn't flap.
const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);

/// What the caller supplies with every call: the time and a random source.
pub struct Context<'a> {
    pub now: Time,
    pub wall: WallTime,
    pub rng: &'a mut dyn Rng,
}

impl core::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Context")
            .field("now", &self.now)
            .field("wall", &self.wall)
            .finish_non_exhaustive()
    }
}

/// A message the core wants sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}

/// What an incoming datagram turned out to be, once accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// A decrypted inner packet, at `packet` within the datagram buffer, whose source the
    /// peer's allowed IPs cover.
    Data {
        peer: PeerId,
        packet: Range<usize>,
    },
    Keepalive {
        peer: PeerId,
    },
    /// A handshake message was consumed; any reply is queued for `poll_transmit`.
    Handshake {
        peer: PeerId,
    },
    /// A cookie reply was stored; the next initiation will carry mac2.
    CookieReply {
        peer: PeerId,
    },
}

/// What happened to an inner packet handed to [`Device::send`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Encrypted into the output buffer: send `len` bytes to `dst`.
    Transmit {
        peer: PeerId,
        dst: SocketAddr,
        len: usize,
    },
    /// Held until a handshake completes; one has been started if allowed.
    Staged { peer: PeerId },
}

/// Things worth telling an operator about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    HandshakeCompleted { peer: PeerId },
    EndpointChanged { peer: PeerId, endpoint: SocketAddr },
    HandshakeGaveUp { peer: PeerId },
    KeysZeroed { peer: PeerId },
}

/// Why a peer could not be added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("a peer with public key {0} already exists")]
    Duplicate(String),
    #[error("a peer cannot have the interface's own public key")]
    OwnKey,
    #[error("invalid allowed IP {0}/{1}")]
    BadPrefix(IpAddr, u8),
}

pub struct Device {
    identity: Identity,
    checker: CookieChecker,
    peers: Vec<Option<Peer>>,
    free_ids: Vec<PeerId>,
    by_key: HashMap<[u8; KEY_LEN], PeerId>,
    index: IndexTable<PeerId>,
    allowed_ips: AllowedIps<PeerId>,
    ratelimiter: RateLimiter,
    schedule: BTreeSet<(Time, PeerId)>,
    last_under_load: Option<Time>,
    last_ratelimiter_gc: Time,
    mtu: usize,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("identity", &self.identity)
            .field("peers", &self.by_key.len())
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl Device {
    pub fn new(private_key: &[u8; KEY_LEN]) -> Device {
        let identity = Identity::new(private_key);
        Device {
            checker: CookieChecker::new(identity.public_key()),
            identity,
            peers: Vec::new(),
            free_ids: Vec::new(),
            by_key: HashMap::new(),
            index: IndexTable::new(),
            allowed_ips: AllowedIps::new(),
            ratelimiter: RateLimiter::new(RATELIMITER_ENTRIES),
            schedule: BTreeSet::new(),
            last_under_load: None,
            last_ratelimiter_gc: Time::ZERO,
            mtu: DEFAULT_MTU,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn public_key(&self) -> &[u8; KEY_LEN] {
        self.identity.public_key()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    // ---- peers -------------------------------------------------------------------------

    /// Add a peer (one DH; see [`Device::add_prepared_peer`] to do that part in parallel).
    pub fn add_peer(&mut self, now: Time, cfg: &PeerConfig) -> Result<PeerId, PeerError> {
        let peer = Peer::new(&self.identity, cfg);
        self.add_prepared_peer(now, cfg, peer)
    }

    /// Add a peer built with [`Peer::new`] (e.g. on a thread pool) from the same config.
    pub fn add_prepared_peer(
        &mut self,
        now: Time,
        cfg: &PeerConfig,
        mut peer: Peer,
    ) -> Result<PeerId, PeerError> {
        if &cfg.public_key == self.identity.public_key() {
            return Err(PeerError::OwnKey);
        }
        if self.by_key.contains_key(&cfg.public_key) {
            return Err(PeerError::Duplicate(crate::keys::encode_key(
                &cfg.public_key,
            )));
        }
        // Validate every prefix before touching the table, so a bad one changes nothing.
        let max_len = |a: &IpAddr| if a.is_ipv4() { 32 } else { 128 };
        if let Some(&(a, l)) = cfg.allowed_ips.iter().find(|(a, l)| *l > max_len(a)) {
            return Err(PeerError::BadPrefix(a, l));
        }
        let id = self.free_ids.pop().unwrap_or_else(|| {
            self.peers.push(None);
            (self.peers.len() - 1) as PeerId
        });
        for &(addr, cidr) in &cfg.allowed_ips {
            // Prefix lengths were validated above; as in `wg set`, a prefix already owned by
            // another peer moves to this one.
            let _ = self.allowed_ips.insert(addr, cidr, id);
        }
        if let Some(interval) = peer.timers.persistent_keepalive() {
            // A configured persistent keepalive starts the session at once, as the kernel does
            // when such a peer is added to an interface that is up.
            peer.timers.set_persistent_keepalive(now, Some(interval));
        }
        self.by_key.insert(cfg.public_key, id);
        self.peers[id as usize] = Some(peer);
        self.reschedule(id);
        Ok(id)
    }

    /// Remove a peer, wiping its keys and freeing its indices and allowed IPs.
    pub fn remove_peer(&mut self, id: PeerId) -> Option<PeerConfig> {
        let peer = self.peers.get_mut(id as usize)?.take()?;
        for i in peer.keypairs.indices().chain(peer.handshake_index()) {
            self.index.remove(i);
        }
        if let Some(at) = peer.scheduled {
            self.schedule.remove(&(at, id));
        }
        self.by_key.remove(peer.public_key());
        let allowed_ips = self.allowed_ips.prefixes_of(id);
        self.allowed_ips.remove_value(id);
        self.free_ids.push(id);
        Some(PeerConfig {
            public_key: *peer.public_key(),
            preshared_key: None,
            endpoint: peer.endpoint,
            persistent_keepalive: None,
            allowed_ips,
        })
    }

    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id as usize)?.as_ref()
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id as usize)?.as_mut()
    }

    pub fn peer_by_key(&self, key: &[u8; KEY_LEN]) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    pub fn peer_ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_some())
            .map(|(i, _)| i as PeerId)
    }

    pub fn allowed_ips(&self) -> &AllowedIps<PeerId> {
        &self.allowed_ips
    }

    /// Report whether the handshake path is overloaded (e.g. its queue is deep). Under load,
    /// handshakes need a valid mac2 and are rate limited per source.
    pub fn set_under_load(&mut self, now: Time, loaded: bool) {
        if loaded {
            self.last_under_load = Some(now);
        }
    }

    pub fn is_under_load(&self, now: Time) -> bool {
        self.last_under_load
            .is_some_and(|t| !now.has_elapsed(t, UNDER_LOAD_HOLD))
    }

    // ---- polling -----------------------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Device::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        let gc = (!self.ratelimiter.is_empty())
            .then(|| self.last_ratelimiter_gc + RATELIMITER_GC_INTERVAL);
        [self.schedule.first().map(|&(t, _)| t), gc]
            .into_iter()
            .flatten()
            .min()
    }

    /// File the peer under its earliest timer deadline.
    fn reschedule(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        let next = peer.timers.next_deadline();
        if peer.scheduled == next {
            return;
        }
        if let Some(old) = peer.scheduled.take() {
            self.schedule.remove(&(old, id));
        }
        if let Some(at) = next {
            self.schedule.insert((at, id));
        }
        peer.scheduled = next;
    }

    /// Run every timer due at `cx.now`.
    pub fn handle_timeout(&mut self, cx: &mut Context) {
        while let Some(&(at, id)) = self.schedule.first() {
            if at > cx.now {
                break;
            }
            self.schedule.pop_first();
            if let Some(p) = self.peer_mut(id) {
                p.scheduled = None;
            }
            while let Some(timer) = self
                .peer_mut(id)
                .and_then(|p| p.timers.take_expired(cx.now))
            {
                self.fire(cx, id, timer);
            }
            self.reschedule(id);
        }
        // The rate limiter forgets sources idle for a second; sweeping more often than that
        // would only cost time proportional to the number of sources.
        if cx
            .now
            .has_elapsed(self.last_ratelimiter_gc, RATELIMITER_GC_INTERVAL)
        {
            self.ratelimiter.gc(cx.now);
            self.last_ratelimiter_gc = cx.now;
        }
    }

    fn fire(&mut self, cx: &mut Context, id: PeerId, timer: Timer) {
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        match timer {
            Timer::RetransmitHandshake => match peer.timers.on_retransmit_fired(cx.now) {
                Retransmit::Resend(_) => self.send_initiation(cx, id, true),
                Retransmit::GiveUp => {
                    peer.staged.clear();
                    self.events.push_back(Event::HandshakeGaveUp { peer: id });
                }
            },
            Timer::SendKeepalive => {
                self.send_keepalive(cx, id);
                if let Some(p) = self.peer_mut(id) {
                    p.timers.on_keepalive_fired(cx.now);
                }
            }
            Timer::NewHandshake => self.send_initiation(cx, id, false),
            Timer::ZeroKeyMaterial => self.zero_keys(id),
            Timer::PersistentKeepalive => self.send_keepalive(cx, id),
        }
    }

    fn zero_keys(&mut self, id: PeerId) {
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        let stale: Vec<u32> = peer
            .keypairs
            .clear()
            .into_iter()
            .flatten()
            .chain(peer.handshake_index())
            .collect();
        peer.handshake.clear();
        peer.timers.on_keys_zeroed();
        for i in stale {
            self.index.remove(i);
        }
        self.events.push_back(Event::KeysZeroed { peer: id });
    }

    // ---- sending -----------------------------------------------------------------------

    /// Route an inner packet by its destination and send it (see [`Sent`]). `out` needs room
    /// for the packet plus 32 bytes of overhead and up to 15 of padding.
    pub fn send(
        &mut self,
        cx: &mut Context,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<Sent, DropReason> {
        let dst = ip::destination(packet)?;
        let id = self.allowed_ips.lookup(dst).ok_or(DropReason::NoRoute)?;
        self.send_to_peer(cx, id, packet, out)
    }

    /// Send an inner packet (or, if empty, a keepalive) to a given peer.
    pub fn send_to_peer(
        &mut self,
        cx: &mut Context,
        id: PeerId,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<Sent, DropReason> {
        let mtu = self.mtu;
        let peer = self.peer_mut(id).ok_or(DropReason::NoRoute)?;
        let dst = peer.endpoint.ok_or(DropReason::NoEndpoint)?;
        let usable = peer.keypairs.current().is_some_and(|k| {
            !k.is_expired(cx.now) && k.send_counter() < messages::REJECT_AFTER_MESSAGES
        });
        if !usable {
            let staged = peer.stage(packet);
            self.send_initiation(cx, id, false);
            self.reschedule(id);
            staged?;
            return Ok(Sent::Staged { peer: id });
        }
        let kp = peer.keypairs.current_mut().ok_or(DropReason::KeyExpired)?;
        let len = kp.encrypt(cx.now, packet, mtu, out)?;
        let rekey = Timers::rekey_due_on_send(cx.now, kp);
        Self::on_sent(cx, peer, len, !packet.is_empty());
        if rekey {
            self.send_initiation(cx, id, false);
        }
        self.reschedule(id);
        Ok(Sent::Transmit { peer: id, dst, len })
    }

    fn on_sent(cx: &mut Context, peer: &mut Peer, len: usize, is_data: bool) {
        peer.stats.tx_bytes += len as u64;
        peer.timers.on_authenticated_packet_traversal(cx.now);
        peer.timers.on_authenticated_packet_sent();
        if is_data {
            peer.timers.on_data_sent(cx.now, cx.rng);
        }
    }

    /// Encrypt into a fresh buffer and queue it (for timer- and handshake-driven sends).
    fn queue_encrypted(
        &mut self,
        cx: &mut Context,
        id: PeerId,
        packet: &[u8],
    ) -> Result<(), DropReason> {
        let mut buf =
            vec![
                0u8;
                messages::transport::MIN_LEN + packet.len() + messages::transport::PADDING_MULTIPLE
            ];
        match self.send_to_peer(cx, id, packet, &mut buf)? {
            Sent::Transmit { dst, len, .. } => {
                buf.truncate(len);
                self.transmits.push_back(Transmit { dst, data: buf });
            }
            Sent::Staged { .. } => {}
        }
        Ok(())
    }

    fn send_keepalive(&mut self, cx: &mut Context, id: PeerId) {
        // Errors (no endpoint, no session yet) are the normal reasons not to send one.
        let _ = self.queue_encrypted(cx, id, &[]);
    }

    /// Send what waited for a session; if nothing did, a keepalive confirms the session.
    fn flush_staged(&mut self, cx: &mut Context, id: PeerId) {
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        let staged: Vec<Vec<u8>> = peer.staged.drain(..).collect();
        if staged.is_empty() {
            self.send_keepalive(cx, id);
        }
        for p in staged {
            let _ = self.queue_encrypted(cx, id, &p);
        }
    }

    /// Start (or retry) a handshake with a peer, if its timers allow one now.
    fn send_initiation(&mut self, cx: &mut Context, id: PeerId, is_retry: bool) {
        let Some(peer) = self.peers.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(dst) = peer.endpoint else { return };
        if !peer.timers.may_initiate(cx.now, is_retry) {
            return;
        }
        if let Some(old) = peer.handshake_index() {
            self.index.remove(old);
        }
        let local = self.index.insert(cx.rng, id);
        let mut msg = [0u8; messages::initiation::LEN];
        if peer
            .handshake
            .create_initiation(&self.identity, cx.wall, local, cx.rng, &mut msg)
            .is_err()
        {
            self.index.remove(local);
            return;
        }
        peer.cookie.add_macs(cx.now, &mut msg);
        peer.timers.on_handshake_initiated(cx.now, cx.rng);
        Self::on_sent(cx, peer, msg.len(), false);
        self.transmits.push_back(Transmit {
            dst,
            data: msg.to_vec(),
        });
    }

    // ---- receiving ---------------------------------------------------------------------

    /// Handle one datagram from `src`. Transport data is decrypted in place; the returned
    /// range locates the inner packet. Every refusal is a [`DropReason`] to count.
    pub fn handle_datagram(
        &mut self,
        cx: &mut Context,
        src: SocketAddr,
        datagram: &mut [u8],
    ) -> Result<Received, DropReason> {
        match messages::parse(datagram)? {
            Message::Transport(_) => self.receive_transport(cx, src, datagram),
            Message::Initiation(m) => {
                self.cookie_gate(cx, src, m.as_bytes(), m.sender())?;
                self.receive_initiation(cx, src, &m)
            }
            Message::Response(m) => {
                self.cookie_gate(cx, src, m.as_bytes(), m.sender())?;
                self.receive_response(cx, src, &m)
            }
            Message::CookieReply(m) => self.receive_cookie_reply(cx, &m),
        }
    }

    /// mac1 always; under load, a valid mac2 (else a cookie reply) and the per-source limit.
    fn cookie_gate(
        &mut self,
        cx: &mut Context,
        src: SocketAddr,
        msg: &[u8],
        sender: u32,
    ) -> Result<(), DropReason> {
        let under_load = self.is_under_load(cx.now);
        match self.checker.validate(cx.now, msg, src, under_load) {
            Ok(()) => {}
            Err(CookieError::CookieRequired) => {
                let mut reply = [0u8; messages::cookie_reply::LEN];
                self.checker
                    .create_reply(cx.now, cx.rng, msg, sender, src, &mut reply);
                self.transmits.push_back(Transmit {
                    dst: src,
                    data: reply.to_vec(),
                });
                return Err(DropReason::CookieRequired);
            }
            Err(e) => return Err(e.into()),
        }
        if under_load && !self.ratelimiter.allow(cx.now, src.ip()) {
            return Err(DropReason::RateLimited);
        }
        Ok(())
    }

    fn receive_initiation(
        &mut self,
        cx: &mut Context,
        src: SocketAddr,
        msg: &Initiation<&[u8]>,
    ) -> Result<Received, DropReason> {
        let consumed = noise::consume_initiation(&self.identity, msg)?;
        let id = self
            .peer_by_key(&consumed.remote_static)
            .ok_or(DropReason::UnknownPeer)?;
        let peer = self.peers[id as usize]
            .as_mut()
            .ok_or(DropReason::UnknownPeer)?;
        let abandoned = peer.handshake_index();
        peer.handshake.accept_initiation(cx.now, consumed)?;
        if let Some(old) = abandoned {
            self.index.remove(old);
        }

        let local = self.index.insert(cx.rng, id);
        let mut resp = [0u8; messages::response::LEN];
        let keys = peer
            .handshake
            .create_response(local, cx.rng, &mut resp)
            .and_then(|()| peer.handshake.begin_session(cx.now));
        let keys = match keys {
            Ok(k) => k,
            Err(e) => {
                self.index.remove(local);
                return Err(e.into());
            }
        };
        peer.cookie.add_macs(cx.now, &mut resp);
        let evicted = peer.keypairs.insert(Keypair::new(keys));
        peer.timers.on_session_derived(cx.now);
        Self::on_sent(cx, peer, resp.len(), false);
        peer.stats.rx_bytes += messages::initiation::LEN as u64;
        self.after_authenticated_receive(cx, id, src);
        for i in evicted.into_iter().flatten() {
            self.index.remove(i);
        }
        self.transmits.push_back(Transmit {
            dst: src,
            data: resp.to_vec(),
        });
        self.reschedule(id);
        Ok(Received::Handshake { peer: id })
    }

    fn receive_response(
        &mut self,
        cx: &mut Context,
        src: SocketAddr,
        msg: &Response<&[u8]>,
    ) -> Result<Received, DropReason> {
        let id = *self
            .index
            .get(msg.receiver())
            .ok_or(DropReason::UnknownIndex)?;
        let peer = self.peers[id as usize]
            .as_mut()
            .ok_or(DropReason::UnknownIndex)?;
        peer.handshake.consume_response(&self.identity, msg)?;
        let keys = peer.handshake.begin_session(cx.now)?;
        let evicted = peer.keypairs.insert(Keypair::new(keys));
        peer.timers.on_session_derived(cx.now);
        peer.timers.on_handshake_complete();
        peer.stats.last_handshake = Some(cx.wall);
        peer.stats.handshakes_completed += 1;
        peer.stats.rx_bytes += messages::response::LEN as u64;
        for i in evicted.into_iter().flatten() {
            self.index.remove(i);
        }
        self.events
            .push_back(Event::HandshakeCompleted { peer: id });
        self.after_authenticated_receive(cx, id, src);
        self.flush_staged(cx, id);
        self.reschedule(id);
        Ok(Received::Handshake { peer: id })
    }

    fn receive_cookie_reply(
        &mut self,
        cx: &mut Context,
        msg: &CookieReply<&[u8]>,
    ) -> Result<Received, DropReason> {
        let id = *self
            .index
            .get(msg.receiver())
            .ok_or(DropReason::UnknownIndex)?;
        let peer = self.peer_mut(id).ok_or(DropReason::UnknownIndex)?;
        peer.cookie.consume_reply(cx.now, msg)?;
        Ok(Received::CookieReply { peer: id })
    }

    /// Timers and roaming for any message that authenticated (whitepaper §6.5: the endpoint
    /// follows the most recent authenticated packet).
    fn after_authenticated_receive(&mut self, cx: &mut Context, id: PeerId, src: SocketAddr) {
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        peer.timers.on_authenticated_packet_received();
        peer.timers.on_authenticated_packet_traversal(cx.now);
        if peer.set_endpoint(src) {
            self.events.push_back(Event::EndpointChanged {
                peer: id,
                endpoint: src,
            });
        }
    }

    fn receive_transport(
        &mut self,
        cx: &mut Context,
        src: SocketAddr,
        datagram: &mut [u8],
    ) -> Result<Received, DropReason> {
        let receiver = messages::Transport::new(&*datagram)?.receiver();
        let id = *self.index.get(receiver).ok_or(DropReason::UnknownIndex)?;
        let peer = self.peers[id as usize]
            .as_mut()
            .ok_or(DropReason::UnknownIndex)?;
        let (slot, kp) = peer
            .keypairs
            .find_mut(receiver)
            .ok_or(DropReason::UnknownIndex)?;
        let payload = kp.decrypt(cx.now, datagram)?;
        peer.stats.rx_bytes += datagram.len() as u64;

        let confirmed = slot == Slot::Next;
        if confirmed {
            if let Some(i) = peer.keypairs.confirm_next() {
                self.index.remove(i);
            }
            peer.timers.on_handshake_complete();
            peer.stats.last_handshake = Some(cx.wall);
            peer.stats.handshakes_completed += 1;
            self.events
                .push_back(Event::HandshakeCompleted { peer: id });
        }
        self.after_authenticated_receive(cx, id, src);
        if confirmed {
            self.flush_staged(cx, id);
        }
        self.keep_key_fresh_on_receive(cx, id);
        let result = self.deliver(cx, id, datagram, payload);
        self.reschedule(id);
        result
    }

    /// The initiator rekeys shortly before its keys expire even if it sends nothing.
    fn keep_key_fresh_on_receive(&mut self, cx: &mut Context, id: PeerId) {
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        let Some(kp) = peer.keypairs.current() else {
            return;
        };
        let (initiator, created) = (kp.initiator, kp.created);
        if peer.timers.rekey_due_on_receive(cx.now, initiator, created) {
            self.send_initiation(cx, id, false);
        }
    }

    /// Check the decrypted inner packet against the sender's allowed IPs (cryptokey routing).
    fn deliver(
        &mut self,
        cx: &mut Context,
        id: PeerId,
        datagram: &[u8],
        payload: Range<usize>,
    ) -> Result<Received, DropReason> {
        if payload.is_empty() {
            return Ok(Received::Keepalive { peer: id });
        }
        if let Some(p) = self.peer_mut(id) {
            p.timers.on_data_received(cx.now);
        }
        let inner = ip::parse(&datagram[payload.clone()])?;
        if self.allowed_ips.lookup(inner.src) != Some(id) {
            return Err(DropReason::SourceNotAllowed);
        }
        Ok(Received::Data {
            peer: id,
            packet: payload.start..payload.start + inner.len,
        })
    }
}
