//! A whole WireGuard interface, sans-IO and single-owner: our identity, the peers, and the
//! tables that find them (receiver indices, allowed IPs, public keys), composed the way the
//! kernel's `device.c` composes them. The per-peer logic lives in [`Peer`] (`send.rs`,
//! `receive.rs`); this type owns the tables and dispatches.
//!
//! The caller owns all I/O and time, quinn-style:
//! - datagrams from the network go into [`Device::handle_datagram`], which decrypts transport
//!   data in place and answers handshakes;
//! - inner packets go into [`Device::send`], which encrypts into the caller's buffer when a
//!   session exists and otherwise stages the packet and starts a handshake;
//! - [`Device::poll_timeout`] says when to call [`Device::handle_timeout`];
//! - [`Device::poll_transmit`] yields the messages the core wants sent (handshakes, cookie
//!   replies, keepalives, staged packets), and [`Device::poll_event`] what happened.
//!
//! The fast path (transport data with a session) allocates nothing; handshake traffic does.

use super::allowedips::AllowedIps;
use super::cookie::{CookieChecker, CookieError};
use super::effects::{Env, Outbox};
use super::endpoint::Endpoint;
use super::index::IndexTable;
use super::ip;
use super::messages::{self, Message, KEY_LEN};
use super::noise::{self, Identity};
use super::peer::{Peer, PeerConfig, PeerId};
use super::ratelimiter::RateLimiter;
use super::receive::check_source;
use super::Time;
use crate::DropReason;
use core::ops::Range;
use core::time::Duration;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

pub use super::effects::{Context, Event, Sent, Transmit};

/// Default inner MTU, as wg-quick's.
pub const DEFAULT_MTU: usize = 1420;
/// Sources the handshake rate limiter tracks at most.
const RATELIMITER_ENTRIES: usize = 1 << 16;
/// How often idle rate-limiter entries are swept.
const RATELIMITER_GC_INTERVAL: Duration = Duration::from_secs(1);
/// Stay under load this long after the last report of load, so the state doesn't flap.
const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);

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

/// Check a peer config against the interface before adding it.
pub fn validate_peer(own: &[u8; KEY_LEN], cfg: &PeerConfig) -> Result<(), PeerError> {
    if &cfg.public_key == own {
        return Err(PeerError::OwnKey);
    }
    let max_len = |a: &IpAddr| if a.is_ipv4() { 32 } else { 128 };
    if let Some(&(a, l)) = cfg.allowed_ips.iter().find(|(a, l)| *l > max_len(a)) {
        return Err(PeerError::BadPrefix(a, l));
    }
    Ok(())
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
    out: Outbox,
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
            out: Outbox::default(),
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

    /// Add a peer. Costs one DH (the static-static precomputation).
    pub fn add_peer(&mut self, now: Time, cfg: &PeerConfig) -> Result<PeerId, PeerError> {
        validate_peer(self.identity.public_key(), cfg)?;
        if self.by_key.contains_key(&cfg.public_key) {
            return Err(PeerError::Duplicate(crate::keys::encode_key(
                &cfg.public_key,
            )));
        }
        let id = self.free_ids.pop().unwrap_or_else(|| {
            self.peers.push(None);
            (self.peers.len() - 1) as PeerId
        });
        let mut peer = Peer::new(&self.identity, cfg, id);
        for &(addr, cidr) in &cfg.allowed_ips {
            // Lengths were validated above; as with `wg set`, a prefix already owned by
            // another peer moves to this one.
            let _ = self.allowed_ips.insert(addr, cidr, id);
        }
        peer.on_interface_up(now);
        self.by_key.insert(cfg.public_key, id);
        self.peers[id as usize] = Some(peer);
        self.reschedule(id);
        Ok(id)
    }

    /// Remove a peer, wiping its keys and freeing its indices and allowed IPs.
    pub fn remove_peer(&mut self, id: PeerId) -> bool {
        let Some(peer) = self.peers.get_mut(id as usize).and_then(Option::take) else {
            return false;
        };
        for i in peer.indices() {
            self.index.remove(i);
        }
        if let Some(at) = peer.scheduled {
            self.schedule.remove(&(at, id));
        }
        self.by_key.remove(peer.public_key());
        self.allowed_ips.remove_value(id);
        self.free_ids.push(id);
        true
    }

    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id as usize)?.as_ref()
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

    /// The I/O layer could not send from a peer's sticky source (the address is gone from the
    /// host): forget it until the peer is heard from again.
    pub fn clear_endpoint_source(&mut self, id: PeerId) {
        if let Some(p) = self.peers.get_mut(id as usize).and_then(Option::as_mut) {
            p.clear_endpoint_source();
        }
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

    /// Run `f` on peer `id` with an environment over this device's tables, then keep the
    /// timer schedule in step with whatever `f` changed.
    fn with_peer<R>(
        &mut self,
        cx: &mut Context,
        id: PeerId,
        f: impl FnOnce(&mut Peer, &mut Env) -> R,
    ) -> Option<R> {
        let peer = self.peers.get_mut(id as usize)?.as_mut()?;
        let mut env = Env {
            cx,
            identity: &self.identity,
            indices: &mut self.index,
            out: &mut self.out,
            mtu: self.mtu,
        };
        let r = f(peer, &mut env);
        let (old, new) = peer.reschedule();
        if old != new {
            if let Some(t) = old {
                self.schedule.remove(&(t, id));
            }
            if let Some(t) = new {
                self.schedule.insert((t, id));
            }
        }
        Some(r)
    }

    fn reschedule(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        let (old, new) = peer.reschedule();
        if let Some(t) = old {
            self.schedule.remove(&(t, id));
        }
        if let Some(t) = new {
            self.schedule.insert((t, id));
        }
    }

    // ---- polling -----------------------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
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

    /// Run every timer due at `cx.now`.
    pub fn handle_timeout(&mut self, cx: &mut Context) {
        while let Some(&(at, id)) = self.schedule.first() {
            if at > cx.now {
                break;
            }
            if self
                .with_peer(cx, id, |peer, env| peer.handle_timers(env))
                .is_none()
            {
                // A stale entry for a removed peer: drop it rather than spin on it.
                self.schedule.remove(&(at, id));
            }
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
        self.with_peer(cx, id, |peer, env| peer.send(env, packet, out))
            .unwrap_or(Err(DropReason::NoRoute))
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
        self.handle_datagram_at(cx, Endpoint::new(src), datagram)
    }

    /// [`Device::handle_datagram`] for a datagram whose destination (our address) is known:
    /// it becomes the source of everything sent back to the peer once the datagram
    /// authenticates (the sticky source, see [`Endpoint`]).
    pub fn handle_datagram_at(
        &mut self,
        cx: &mut Context,
        src: Endpoint,
        datagram: &mut [u8],
    ) -> Result<Received, DropReason> {
        match messages::parse(datagram)? {
            Message::Transport(m) => {
                let receiver = m.receiver();
                self.receive_transport(cx, src, receiver, datagram)
            }
            Message::Initiation(m) => {
                self.cookie_gate(cx, src, m.as_bytes(), m.sender())?;
                let consumed = noise::consume_initiation(&self.identity, &m)?;
                let id = self
                    .peer_by_key(&consumed.remote_static)
                    .ok_or(DropReason::UnknownPeer)?;
                self.with_peer(cx, id, |peer, env| {
                    peer.respond_to_initiation(env, consumed, src)
                })
                .unwrap_or(Err(DropReason::UnknownPeer))?;
                Ok(Received::Handshake { peer: id })
            }
            Message::Response(m) => {
                self.cookie_gate(cx, src, m.as_bytes(), m.sender())?;
                let id = *self
                    .index
                    .get(m.receiver())
                    .ok_or(DropReason::UnknownIndex)?;
                self.with_peer(cx, id, |peer, env| peer.receive_response(env, &m, src))
                    .unwrap_or(Err(DropReason::UnknownIndex))?;
                Ok(Received::Handshake { peer: id })
            }
            Message::CookieReply(m) => {
                let id = *self
                    .index
                    .get(m.receiver())
                    .ok_or(DropReason::UnknownIndex)?;
                self.with_peer(cx, id, |peer, env| peer.receive_cookie_reply(env, &m))
                    .unwrap_or(Err(DropReason::UnknownIndex))?;
                Ok(Received::CookieReply { peer: id })
            }
        }
    }

    /// mac1 always; under load, a valid mac2 (else a cookie reply) and the per-source limit.
    fn cookie_gate(
        &mut self,
        cx: &mut Context,
        src: Endpoint,
        msg: &[u8],
        sender: u32,
    ) -> Result<(), DropReason> {
        let under_load = self.is_under_load(cx.now);
        let (src, local) = (src.addr, src.local);
        match self.checker.validate(cx.now, msg, src, under_load) {
            Ok(()) => {}
            Err(CookieError::CookieRequired) => {
                let mut reply = [0u8; messages::cookie_reply::LEN];
                self.checker
                    .create_reply(cx.now, cx.rng, msg, sender, src, &mut reply);
                self.out.transmits.push_back(Transmit {
                    dst: src,
                    src: local,
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

    fn receive_transport(
        &mut self,
        cx: &mut Context,
        src: Endpoint,
        receiver: u32,
        datagram: &mut [u8],
    ) -> Result<Received, DropReason> {
        let id = *self.index.get(receiver).ok_or(DropReason::UnknownIndex)?;
        let payload = self
            .with_peer(cx, id, |peer, env| {
                peer.receive_transport(env, receiver, datagram, src)
            })
            .unwrap_or(Err(DropReason::UnknownIndex))?;
        if payload.is_empty() {
            return Ok(Received::Keepalive { peer: id });
        }
        let packet = check_source(&self.allowed_ips, id, datagram, payload)?;
        Ok(Received::Data { peer: id, packet })
    }
}
