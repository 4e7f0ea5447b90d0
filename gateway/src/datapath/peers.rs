//! The live peer set: an immutable [`PeerTable`] snapshot that the data path reads without
//! locks, replaced whole by the control plane (`wg set`, `wg syncconf`, SIGHUP reload).
//!
//! Workers take the current snapshot once per batch (an `Arc` clone); a change builds a new
//! table beside the old one and swaps it in. A removed peer's keys are wiped as soon as the new
//! table is in place, so a worker still holding the old snapshot finds a peer with no
//! sessions. Peer ids are never reused, so an id in flight can never name a different peer.

use crate::proto::allowedips::AllowedIps;
use crate::proto::peer::{Peer, PeerId};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// One peer, behind its own lock.
pub type PeerSlot = Arc<Mutex<Peer>>;

/// A snapshot of the peer set and the tables that find peers.
#[derive(Default)]
pub struct PeerTable {
    /// Indexed by [`PeerId`]; removed peers leave `None`.
    pub peers: Vec<Option<PeerSlot>>,
    pub by_key: HashMap<[u8; 32], PeerId>,
    pub allowed_ips: AllowedIps<PeerId>,
}

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable")
            .field("peers", &self.by_key.len())
            .field("allowed_ips", &self.allowed_ips.len())
            .finish()
    }
}

impl PeerTable {
    pub fn get(&self, id: PeerId) -> Option<&PeerSlot> {
        self.peers.get(id as usize)?.as_ref()
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    /// Live peers with their ids, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (PeerId, &PeerSlot)> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as PeerId, p)))
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Every peer's allowed IPs, grouped (one pass over the trie).
    pub fn allowed_ips_by_peer(&self) -> HashMap<PeerId, Vec<(IpAddr, u8)>> {
        let mut m: HashMap<PeerId, Vec<(IpAddr, u8)>> = HashMap::new();
        for (addr, len, id) in self.allowed_ips.entries() {
            m.entry(id).or_default().push((addr, len));
        }
        m
    }
}

/// One change to one peer, in the vocabulary of `wg set` / the UAPI.
#[derive(Clone, Debug)]
pub enum PeerChange {
    /// Add the peer, or update it if it exists (unless `update_only` and it doesn't). With
    /// `replace_allowed_ips` its allowed IPs become exactly those given; otherwise they are
    /// added to. An allowed IP another peer holds moves to this one, as in the kernel.
    Upsert {
        /// The whole configuration, used as is for a new peer.
        cfg: crate::proto::peer::PeerConfig,
        /// What changes on an existing peer.
        update: crate::proto::peer::PeerUpdate,
        replace_allowed_ips: bool,
        update_only: bool,
    },
    Remove([u8; 32]),
}

/// What a change did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSummary {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
}
