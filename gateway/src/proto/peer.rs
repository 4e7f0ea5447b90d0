//! One remote WireGuard peer: its handshake, cookie state, keypairs, timers, endpoint and the
//! packets waiting for a session (the kernel's `struct wg_peer`).
//!
//! A peer owns no table entries itself; [`super::device::Device`] registers its indices and
//! allowed IPs and keeps them consistent with the state here.

use super::cookie::CookieGenerator;
use super::effects::{Env, Event};
use super::endpoint::Endpoint;
use super::messages::{KEY_LEN, MAX_STAGED_PACKETS};
use super::noise::{Handshake, HandshakeState, Identity};
use super::session::Keypairs;
use super::timers::{Retransmit, Timer, Timers};
use super::{Time, WallTime};
use crate::DropReason;
use core::fmt;
use core::time::Duration;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use zeroize::Zeroizing;

/// A peer's handle inside its [`super::device::Device`]. Handles of removed peers are reused.
pub type PeerId = u32;

/// How a peer is configured: the `[Peer]` section of a wg-quick file.
#[derive(Clone, Default)]
pub struct PeerConfig {
    pub public_key: [u8; KEY_LEN],
    pub preshared_key: Option<Zeroizing<[u8; KEY_LEN]>>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds between keepalives sent regardless of traffic; `None` or 0 disables.
    pub persistent_keepalive: Option<u16>,
    pub allowed_ips: Vec<(IpAddr, u8)>,
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConfig")
            .field("public_key", &crate::keys::encode_key(&self.public_key))
            .field(
                "preshared_key",
                &self.preshared_key.as_ref().map(|_| "<redacted>"),
            )
            .field("endpoint", &self.endpoint)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("allowed_ips", &self.allowed_ips)
            .finish()
    }
}

/// A change to a live peer's settings; `None` leaves a setting unchanged.
#[derive(Clone, Default)]
pub struct PeerUpdate {
    pub endpoint: Option<SocketAddr>,
    /// `Some(None)` removes the preshared key.
    pub preshared_key: Option<Option<Zeroizing<[u8; KEY_LEN]>>>,
    /// `Some(None)` or `Some(Some(0))` turns the persistent keepalive off.
    pub persistent_keepalive: Option<Option<u16>>,
}

impl fmt::Debug for PeerUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerUpdate")
            .field("endpoint", &self.endpoint)
            .field(
                "preshared_key",
                &self
                    .preshared_key
                    .as_ref()
                    .map(|k| k.as_ref().map(|_| "<redacted>")),
            )
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}

impl PeerUpdate {
    /// Every setting from a full peer configuration (a config reload).
    pub fn all_from(cfg: &PeerConfig) -> PeerUpdate {
        PeerUpdate {
            endpoint: cfg.endpoint,
            preshared_key: Some(cfg.preshared_key.clone()),
            persistent_keepalive: Some(cfg.persistent_keepalive),
        }
    }
}

/// Counters a `wg show` user expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Bytes of authenticated WireGuard messages received (the kernel's rx_bytes).
    pub rx_bytes: u64,
    /// Bytes of WireGuard messages sent.
    pub tx_bytes: u64,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<WallTime>,
    pub handshakes_completed: u64,
}

pub struct Peer {
    pub(super) id: PeerId,
    pub(super) handshake: Handshake,
    pub(super) cookie: CookieGenerator,
    pub(super) keypairs: Keypairs,
    pub(super) timers: Timers,
    /// The peer's address and our sticky source for it (see [`Endpoint`]).
    pub(super) endpoint: Option<Endpoint>,
    pub(super) staged: VecDeque<Vec<u8>>,
    pub(super) stats: PeerStats,
    /// The deadline this peer is filed under in the device's schedule.
    pub(super) scheduled: Option<Time>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("public_key", &crate::keys::encode_key(self.public_key()))
            .field("endpoint", &self.endpoint)
            .field("handshake", &self.handshake.state())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// Costs one DH (the precomputed static-static); load many peers in parallel. `id` is the
    /// handle its owner will know it by (it appears in events and index mappings).
    pub fn new(identity: &Identity, cfg: &PeerConfig, id: PeerId) -> Peer {
        let keepalive = cfg
            .persistent_keepalive
            .filter(|&s| s > 0)
            .map(|s| Duration::from_secs(u64::from(s)));
        Peer {
            id,
            handshake: Handshake::new(identity, cfg.public_key, cfg.preshared_key.as_deref()),
            cookie: CookieGenerator::new(&cfg.public_key),
            keypairs: Keypairs::default(),
            timers: Timers::new(keepalive),
            endpoint: cfg.endpoint.map(Endpoint::new),
            staged: VecDeque::new(),
            stats: PeerStats::default(),
            scheduled: None,
        }
    }

    pub fn id(&self) -> PeerId {
        self.id
    }

    pub fn public_key(&self) -> &[u8; KEY_LEN] {
        self.handshake.remote_static()
    }

    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint.map(|e| e.addr)
    }

    /// The endpoint with the source address everything to this peer is sent from.
    pub fn sticky_endpoint(&self) -> Option<Endpoint> {
        self.endpoint
    }

    /// Forget the source address (it vanished from this host): the kernel picks one until
    /// the next authenticated packet from the peer teaches a new one.
    pub fn clear_endpoint_source(&mut self) {
        if let Some(e) = &mut self.endpoint {
            e.local = None;
        }
    }

    pub fn stats(&self) -> &PeerStats {
        &self.stats
    }

    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    pub fn keypairs(&self) -> &Keypairs {
        &self.keypairs
    }

    pub fn handshake_state(&self) -> HandshakeState {
        self.handshake.state()
    }

    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// The index the in-flight initiation registered, which nobody else owns: it must be
    /// unregistered when the handshake is replaced or wiped. (After `begin_session` the index
    /// belongs to the keypair instead.)
    pub(super) fn handshake_index(&self) -> Option<u32> {
        (self.handshake.state() == HandshakeState::CreatedInitiation)
            .then(|| self.handshake.local_index())
    }

    /// Remember a packet until a session exists, dropping the oldest when full (as the kernel
    /// does: the newest packets are the ones still worth sending).
    pub(super) fn stage(&mut self, packet: &[u8]) -> Result<(), DropReason> {
        let dropped = if self.staged.len() >= MAX_STAGED_PACKETS {
            self.staged.pop_front();
            Err(DropReason::StagedQueueFull)
        } else {
            Ok(())
        };
        self.staged.push_back(packet.to_vec());
        dropped
    }

    /// Update the endpoint and its source from an authenticated packet (they move together);
    /// true if the peer's address changed (roaming).
    pub(super) fn set_endpoint(&mut self, src: Endpoint) -> bool {
        let changed = self.endpoint.map(|e| e.addr) != Some(src.addr);
        self.endpoint = Some(src);
        changed
    }

    /// Apply changed settings to a live peer (as `wg set` does); `None` leaves a setting as it
    /// is. Sessions in progress are kept.
    pub fn reconfigure(&mut self, now: Time, update: &PeerUpdate) {
        if let Some(e) = update.endpoint {
            // A new configured address comes with no source (the kernel picks until the peer
            // is heard from); the same address again (a reload) keeps the learned one.
            if self.endpoint.map(|old| old.addr) != Some(e) {
                self.endpoint = Some(Endpoint::new(e));
            }
        }
        if let Some(psk) = &update.preshared_key {
            self.handshake.set_preshared_key(psk.as_deref());
        }
        if let Some(seconds) = update.persistent_keepalive {
            let keepalive = seconds
                .filter(|&s| s > 0)
                .map(|s| Duration::from_secs(u64::from(s)));
            if keepalive != self.timers.persistent_keepalive() {
                self.timers.set_persistent_keepalive(now, keepalive);
            }
        }
    }

    /// The preshared key, if one is set (all zeros means none, as in the protocol).
    pub fn preshared_key(&self) -> Option<[u8; KEY_LEN]> {
        self.handshake.preshared_key()
    }

    /// The interface came up (or the peer was added to a running one): a configured
    /// persistent keepalive starts the session at once, as the kernel does.
    pub fn on_interface_up(&mut self, now: Time) {
        if let Some(interval) = self.timers.persistent_keepalive() {
            self.timers.set_persistent_keepalive(now, Some(interval));
        }
    }

    /// When this peer's timers next need [`Peer::handle_timers`].
    pub fn next_deadline(&self) -> Option<Time> {
        self.timers.next_deadline()
    }

    /// For owners with an exact schedule (one entry per peer): the deadline this peer was
    /// filed under and the one to file it under now.
    pub fn reschedule(&mut self) -> (Option<Time>, Option<Time>) {
        let old = self.scheduled;
        self.scheduled = self.timers.next_deadline();
        (old, self.scheduled)
    }

    /// For owners with a lazy deadline queue (entries are never removed, only outdated): the
    /// deadline to file now, if it is earlier than what is already filed. A deadline that moves
    /// later is not refiled (that would add an entry per packet); the earlier entry fires,
    /// finds nothing due, and [`Peer::filed_deadline_fired`] lets the real one be filed.
    pub fn deadline_to_file(&mut self) -> Option<Time> {
        let next = self.timers.next_deadline()?;
        if self.scheduled.is_some_and(|filed| filed <= next) {
            return None;
        }
        self.scheduled = Some(next);
        Some(next)
    }

    /// A lazy-queue entry at `at` came due.
    pub fn filed_deadline_fired(&mut self, at: Time) {
        if self.scheduled == Some(at) {
            self.scheduled = None;
        }
    }

    /// Run every timer due now (whitepaper §6): retransmit or give up on a handshake, send
    /// keepalives, rekey when the peer went quiet, wipe keys after 3 × REJECT_AFTER_TIME.
    pub fn handle_timers(&mut self, env: &mut Env) {
        while let Some(timer) = self.timers.take_expired(env.cx.now) {
            match timer {
                Timer::RetransmitHandshake => match self.timers.on_retransmit_fired(env.cx.now) {
                    Retransmit::Resend(_) => self.send_initiation(env, true),
                    Retransmit::GiveUp => {
                        self.staged.clear();
                        env.out
                            .events
                            .push_back(Event::HandshakeGaveUp { peer: self.id });
                    }
                },
                Timer::SendKeepalive => {
                    self.send_keepalive(env);
                    self.timers.on_keepalive_fired(env.cx.now);
                }
                Timer::NewHandshake => self.send_initiation(env, false),
                Timer::ZeroKeyMaterial => self.zero_keys(env),
                Timer::PersistentKeepalive => self.send_keepalive(env),
            }
        }
    }

    /// Wipe every keypair and the handshake in flight, releasing their indices.
    pub fn zero_keys(&mut self, env: &mut Env) {
        let handshake_index = self.handshake_index();
        for i in self
            .keypairs
            .clear()
            .into_iter()
            .flatten()
            .chain(handshake_index)
        {
            env.indices.release(i);
        }
        self.handshake.clear();
        self.timers.on_keys_zeroed();
        env.out
            .events
            .push_back(Event::KeysZeroed { peer: self.id });
    }

    /// Every receiver index this peer holds (keypairs and the initiation in flight), for an
    /// owner removing it.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.keypairs.indices().chain(self.handshake_index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_filing_files_only_earlier_deadlines() {
        let identity = Identity::new(&[1; 32]);
        let cfg = PeerConfig {
            public_key: [9; 32],
            persistent_keepalive: Some(25),
            ..PeerConfig::default()
        };
        let mut p = Peer::new(&identity, &cfg, 0);
        let t0 = Time::ZERO + Duration::from_secs(1);
        p.on_interface_up(t0);
        let first = t0 + Duration::from_secs(25);
        assert_eq!(p.deadline_to_file(), Some(first));
        // Every packet pushes the keepalive later: nothing new is filed, however many.
        let mut last = t0;
        for ms in 1..1000 {
            last = t0 + Duration::from_millis(ms);
            p.timers.on_authenticated_packet_traversal(last);
            assert_eq!(p.deadline_to_file(), None);
        }
        // The filed entry comes due early; the real deadline is filed then.
        p.filed_deadline_fired(first);
        assert_eq!(p.deadline_to_file(), Some(last + Duration::from_secs(25)));
        // An earlier deadline is filed at once.
        p.timers.on_data_received(last);
        assert_eq!(p.deadline_to_file(), Some(last + Duration::from_secs(10)));
        // An unrelated entry firing does not forget what is filed.
        p.filed_deadline_fired(first);
        assert_eq!(p.deadline_to_file(), None);
    }
}
