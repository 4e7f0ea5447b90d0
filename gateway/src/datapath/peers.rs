//! The live peer set: an immutable [`PeerTable`] snapshot that the data path reads without
//! locks, replaced whole by the control plane (`wg set`, `wg syncconf`, SIGHUP reload).
//!
//! Workers take the current snapshot once per batch (an `Arc` clone); a change is made on a
//! second table and swapped in. A removed peer's keys are wiped as soon as the new table is in
//! place, so a worker still holding the old snapshot finds a peer with no sessions. Peer ids
//! are never reused, so an id in flight can never name a different peer.
//!
//! The two tables take turns (a left-right double buffer): a change is recorded as
//! [`TableOp`]s while it is made on the spare table, the spare is published, and the table it
//! replaced becomes the spare once no reader holds it any more, catching up by replaying those
//! ops. A change therefore costs what it changes, not a copy of 100,000 peers; only when a
//! reader holds the old table too long is it copied instead (`Shared::apply`).

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
    /// Each live peer's allowed IPs, so a peer's prefixes are found without a trie scan.
    pub prefixes: HashMap<PeerId, Vec<(IpAddr, u8)>>,
}

/// One step of a change to a [`PeerTable`], recorded so the same change can be replayed on
/// the other table of the double buffer. Applying the same ops to equal tables gives equal
/// tables.
#[derive(Clone)]
pub enum TableOp {
    AddPeer {
        id: PeerId,
        key: [u8; 32],
        slot: PeerSlot,
    },
    /// Remove the peer and every prefix it still holds.
    RemovePeer { id: PeerId, key: [u8; 32] },
    /// Map the prefix to `id` (taking it from another peer if one held it).
    AddPrefix { addr: IpAddr, len: u8, id: PeerId },
    /// Unmap the prefix if `id` still holds it.
    RemovePrefix { addr: IpAddr, len: u8, id: PeerId },
}

impl std::fmt::Debug for TableOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableOp::AddPeer { id, .. } => write!(f, "AddPeer({id})"),
            TableOp::RemovePeer { id, .. } => write!(f, "RemovePeer({id})"),
            TableOp::AddPrefix { addr, len, id } => write!(f, "AddPrefix({addr}/{len} -> {id})"),
            TableOp::RemovePrefix { addr, len, id } => {
                write!(f, "RemovePrefix({addr}/{len} of {id})")
            }
        }
    }
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

    /// A copy of the whole table (the slow way to a spare, when a reader holds the old one).
    pub fn duplicate(&self) -> PeerTable {
        PeerTable {
            peers: self.peers.clone(),
            by_key: self.by_key.clone(),
            allowed_ips: self.allowed_ips.clone(),
            prefixes: self.prefixes.clone(),
        }
    }

    /// The allowed IPs peer `id` holds.
    pub fn prefixes_of(&self, id: PeerId) -> &[(IpAddr, u8)] {
        self.prefixes.get(&id).map_or(&[], |v| v.as_slice())
    }

    /// Apply one step of a change.
    pub fn apply_op(&mut self, op: &TableOp) {
        match op {
            TableOp::AddPeer { id, key, slot } => {
                let i = *id as usize;
                if self.peers.len() <= i {
                    self.peers.resize(i + 1, None);
                }
                self.peers[i] = Some(slot.clone());
                self.by_key.insert(*key, *id);
            }
            TableOp::RemovePeer { id, key } => {
                if self.by_key.get(key) == Some(id) {
                    self.by_key.remove(key);
                }
                for (addr, len) in self.prefixes.remove(id).unwrap_or_default() {
                    if self.allowed_ips.get(addr, len) == Ok(Some(*id)) {
                        let _ = self.allowed_ips.remove(addr, len);
                    }
                }
                if let Some(p) = self.peers.get_mut(*id as usize) {
                    *p = None;
                }
            }
            TableOp::AddPrefix { addr, len, id } => {
                // Prefix lengths were validated before any op was made.
                if let Ok(Some(prev)) = self.allowed_ips.insert(*addr, *len, *id) {
                    if prev != *id {
                        if let Some(v) = self.prefixes.get_mut(&prev) {
                            v.retain(|p| *p != (*addr, *len));
                        }
                    }
                }
                let v = self.prefixes.entry(*id).or_default();
                if !v.contains(&(*addr, *len)) {
                    v.push((*addr, *len));
                }
            }
            TableOp::RemovePrefix { addr, len, id } => {
                if self.allowed_ips.get(*addr, *len) == Ok(Some(*id)) {
                    let _ = self.allowed_ips.remove(*addr, *len);
                }
                if let Some(v) = self.prefixes.get_mut(id) {
                    v.retain(|p| *p != (*addr, *len));
                }
            }
        }
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
