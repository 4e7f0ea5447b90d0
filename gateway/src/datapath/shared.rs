//! State shared by the workers and handshake threads.
//!
//! - The peer set, its public-key map and the allowed-IPs table are fixed for the life of a
//!   [`Shared`] and read without locks.
//! - Each peer sits behind its own mutex: a worker holds it to encrypt or decrypt one packet
//!   for that peer, a handshake thread to run a handshake step. Different peers never contend.
//! - Receiver indices change with every handshake, so they live in a table sharded over
//!   [`INDEX_SHARDS`] mutexes; a lookup holds one shard just long enough to copy a peer id.
//! - Lock order: a peer, then an index shard. No code takes a peer lock while holding a shard.

use super::peers::{ChangeSummary, PeerChange, PeerSlot, PeerTable, TableOp};
use crate::proto::cookie::CookieChecker;
use crate::proto::device::{validate_peer, PeerError};
use crate::proto::effects::{Context, Env, Indices, Outbox};
use crate::proto::noise::Identity;
use crate::proto::peer::{Peer, PeerConfig, PeerId, PeerUpdate};
use crate::proto::ratelimiter::RateLimiter;
use crate::proto::{Rng, Time, WallTime};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const INDEX_SHARDS: usize = 64;
const RATELIMITER_ENTRIES: usize = 1 << 16;

/// Lock a mutex, recovering the data if a thread panicked while holding it: the protocol
/// state inside stays consistent at every await-free step, and one bad packet must not take
/// the whole gateway down.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The monotonic clock behind every [`Time`] the gateway hands the protocol core.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    pub fn now(&self) -> Time {
        // Start at one second so "never" (Time::ZERO) is always in the past.
        let d = self.origin.elapsed() + std::time::Duration::from_secs(1);
        Time::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn wall(&self) -> WallTime {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        WallTime::new(d.as_secs(), d.subsec_nanos())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Receiver indices → peers, sharded by the index's low bits.
#[derive(Debug)]
pub struct IndexShards {
    shards: Vec<Mutex<HashMap<u32, PeerId>>>,
    /// HA: this member's node number, the top bits of every index it allocates, and the
    /// sessions held for the other members, whose indices are never allocated.
    partition: std::sync::OnceLock<(u8, HeldIndices)>,
}

/// The held-session store, as index allocation sees it.
pub type HeldIndices = Arc<Mutex<crate::proto::hasync::HeldStore>>;

impl IndexShards {
    fn new() -> IndexShards {
        IndexShards {
            shards: (0..INDEX_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            partition: std::sync::OnceLock::new(),
        }
    }

    /// HA: allocate only indices in member `node`'s partition (see `proto::hasync`), and none
    /// that `held` holds for another member. A previous incarnation of this member allocated
    /// in the same partition; another member may have taken one of its sessions over and
    /// synced it back here, and an index allocated again would shadow it.
    pub fn set_partition(&self, node: u8, held: HeldIndices) {
        let _ = self.partition.set((node, held));
    }

    /// Map an index taken over from another member to `peer`.
    pub fn insert(&self, index: u32, peer: PeerId) {
        lock(self.shard(index)).insert(index, peer);
    }

    fn shard(&self, index: u32) -> &Mutex<HashMap<u32, PeerId>> {
        &self.shards[index as usize % INDEX_SHARDS]
    }

    pub fn get(&self, index: u32) -> Option<PeerId> {
        lock(self.shard(index)).get(&index).copied()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Indices for &IndexShards {
    fn allocate(&mut self, rng: &mut dyn Rng, peer: PeerId) -> u32 {
        loop {
            let mut index = rng.next_u32();
            if let Some((node, held)) = self.partition.get() {
                index = crate::proto::hasync::partition_index(*node, index);
                // Lock order: the held store is taken and released before the shard.
                if lock(held).contains(index) {
                    continue;
                }
            }
            let mut shard = lock(self.shard(index));
            if let std::collections::hash_map::Entry::Vacant(e) = shard.entry(index) {
                e.insert(peer);
                return index;
            }
        }
    }

    fn release(&mut self, index: u32) {
        lock(self.shard(index)).remove(&index);
    }
}

/// A deadline filed with a worker's timer queue.
pub type Deadline = (Time, PeerId);

pub struct Shared {
    pub identity: Identity,
    pub checker: RwLock<CookieChecker>,
    /// The current peer set; see [`super::peers`].
    table: RwLock<Arc<PeerTable>>,
    /// Serialises control-plane changes to the peer set, and holds the spare table of the
    /// double buffer (the one before the last change, with the ops it lacks).
    control: Mutex<Option<(Arc<PeerTable>, Vec<TableOp>)>>,
    pub index: IndexShards,
    pub ratelimiter: Mutex<RateLimiter>,
    /// Nanoseconds (on [`Clock`]) until which handshakes are treated as under load.
    pub under_load_until: AtomicU64,
    pub mtu: usize,
    pub clock: Clock,
    /// Per worker: deadlines other threads filed for peers that worker owns.
    pub timer_inbox: Vec<Mutex<Vec<Deadline>>>,
    /// HA group membership, when the gateway runs with `[ha]`.
    pub ha: std::sync::OnceLock<Arc<super::ha::Ha>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("identity", &self.identity)
            .field("peers", &self.table().len())
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Build the tables. Each peer costs one DH (the static-static precomputation), spread
    /// over threads because 100,000 peers would otherwise take seconds.
    pub fn new(private_key: &[u8; 32], peers: &[PeerConfig], mtu: usize, workers: usize) -> Shared {
        let identity = Identity::new(private_key);
        let built: Vec<Peer> = build_peers(&identity, peers, 0);
        let mut table = PeerTable::default();
        for (peer, cfg) in built.into_iter().zip(peers) {
            let id = peer.id();
            table.by_key.insert(cfg.public_key, id);
            for &(addr, len) in &cfg.allowed_ips {
                // Config validation already rejected bad prefix lengths.
                let _ = table.allowed_ips.insert(addr, len, id);
                table.prefixes.entry(id).or_default().push((addr, len));
            }
            table.peers.push(Some(Arc::new(Mutex::new(peer))));
        }
        Shared {
            checker: RwLock::new(CookieChecker::new(identity.public_key())),
            identity,
            table: RwLock::new(Arc::new(table)),
            control: Mutex::new(None),
            index: IndexShards::new(),
            ratelimiter: Mutex::new(RateLimiter::new(RATELIMITER_ENTRIES)),
            under_load_until: AtomicU64::new(0),
            mtu,
            clock: Clock::new(),
            timer_inbox: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            ha: std::sync::OnceLock::new(),
        }
    }

    /// The current peer set. Take it once per batch: it is an `Arc` clone under a read lock.
    pub fn table(&self) -> Arc<PeerTable> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Arm the timers peers start with (persistent keepalives) and file their deadlines.
    pub fn start_peers(&self) {
        let table = self.table();
        self.start(&table, table.iter().map(|(id, _)| id));
    }

    fn start(&self, table: &PeerTable, ids: impl Iterator<Item = PeerId>) {
        let now = self.clock.now();
        for id in ids {
            let Some(slot) = table.get(id) else { continue };
            let mut peer = lock(slot);
            peer.on_interface_up(now);
            if let Some(at) = peer.deadline_to_file() {
                lock(&self.timer_inbox[self.timer_owner(id)]).push((at, id));
            }
        }
    }

    /// The worker whose timer queue owns a peer.
    pub fn timer_owner(&self, id: PeerId) -> usize {
        id as usize % self.timer_inbox.len()
    }

    pub fn is_under_load(&self, now: Time) -> bool {
        now.as_nanos() < self.under_load_until.load(Ordering::Relaxed)
    }

    /// Keep the under-load state on for `hold` from `now` (it decays by itself).
    pub fn mark_under_load(&self, now: Time, hold: std::time::Duration) {
        self.under_load_until
            .fetch_max((now + hold).as_nanos(), Ordering::Relaxed);
    }

    /// Run `f` on one peer (looked up in `table`, the caller's snapshot) under its lock with an
    /// environment over the shared tables, then file its next timer deadline with the owning
    /// worker if it moved earlier.
    pub fn with_peer<R>(
        &self,
        table: &PeerTable,
        id: PeerId,
        cx: &mut Context,
        out: &mut Outbox,
        f: impl FnOnce(&mut Peer, &mut Env) -> R,
    ) -> Option<R> {
        let mut peer = lock(table.get(id)?);
        let mut indices = &self.index;
        let mut env = Env {
            cx,
            identity: &self.identity,
            indices: &mut indices,
            out,
            mtu: self.mtu,
        };
        let r = f(&mut peer, &mut env);
        let file = peer.deadline_to_file();
        drop(peer);
        if let Some(at) = file {
            lock(&self.timer_inbox[self.timer_owner(id)]).push((at, id));
        }
        Some(r)
    }

    /// Sources that are gone from the host (see `UdpSocket::take_vanished_sources`): every
    /// peer whose sticky endpoint is one of these (destination, source) pairs forgets the
    /// source until it is heard from again. A walk over all peers, for a rare event.
    pub fn forget_sources(&self, gone: &[(std::net::SocketAddr, std::net::IpAddr)]) {
        let table = self.table();
        let mut forgot = 0;
        for (_, slot) in table.iter() {
            let mut p = lock(slot);
            if p.sticky_endpoint()
                .is_some_and(|e| e.local.is_some_and(|l| gone.contains(&(e.addr, l))))
            {
                p.clear_endpoint_source();
                forgot += 1;
            }
        }
        let sources: Vec<String> = gone.iter().map(|(_, s)| s.to_string()).collect();
        tracing::info!(
            sources = %sources.join(","),
            peers = forgot,
            "source address gone from the host: sending from the kernel's choice"
        );
    }

    /// Change the peer set: make the change on the spare table and swap it in, then wipe
    /// removed peers' keys and start new peers' timers. With `replace_all`, peers not named by
    /// an `Upsert` are removed (`wg syncconf`, `replace_peers`). All or nothing: an invalid
    /// change leaves the current set untouched. See [`super::peers`] for the double buffer.
    pub fn apply(
        &self,
        replace_all: bool,
        changes: &[PeerChange],
    ) -> Result<ChangeSummary, PeerError> {
        let mut control = lock(&self.control);
        // Validate everything first: from here on nothing can fail half-way.
        for change in changes {
            if let PeerChange::Upsert { cfg, .. } = change {
                validate_peer(self.identity.public_key(), cfg)?;
            }
        }
        let old = self.table();
        let mut next = self.take_spare(control.take(), &old);
        let mut ops = Vec::new();
        let mut op = |next: &mut PeerTable, o: TableOp| {
            next.apply_op(&o);
            ops.push(o);
        };
        let mut summary = ChangeSummary::default();
        let mut removed = Vec::new();
        let mut remove =
            |next: &mut PeerTable, op: &mut dyn FnMut(&mut PeerTable, TableOp), key: &[u8; 32]| {
                if let Some(&id) = next.by_key.get(key) {
                    removed.extend(next.get(id).cloned());
                    op(next, TableOp::RemovePeer { id, key: *key });
                }
            };
        if replace_all {
            let keep: std::collections::HashSet<[u8; 32]> = changes
                .iter()
                .filter_map(|c| match c {
                    PeerChange::Upsert { cfg, .. } => Some(cfg.public_key),
                    PeerChange::Remove(_) => None,
                })
                .collect();
            let gone: Vec<[u8; 32]> = next
                .by_key
                .keys()
                .filter(|k| !keep.contains(*k))
                .copied()
                .collect();
            for key in &gone {
                remove(&mut next, &mut op, key);
            }
        }
        let mut new_ids = Vec::new();
        for change in changes {
            match change {
                PeerChange::Remove(key) => remove(&mut next, &mut op, key),
                PeerChange::Upsert {
                    cfg,
                    update,
                    replace_allowed_ips,
                    update_only,
                } => {
                    let existed = next.by_key.contains_key(&cfg.public_key);
                    if *update_only && !existed {
                        continue;
                    }
                    let id = self.upsert(&mut next, &mut op, cfg, update, *replace_allowed_ips);
                    if existed {
                        summary.updated += 1;
                    } else {
                        new_ids.push(id);
                        summary.added += 1;
                    }
                }
            }
        }
        summary.removed = removed.len();
        let next = Arc::new(next);
        let replaced = match self.table.write() {
            Ok(mut t) => std::mem::replace(&mut *t, next.clone()),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), next.clone()),
        };
        drop(old);
        // The table just replaced becomes the spare; it lacks exactly `ops`.
        *control = Some((replaced, ops));
        drop(control);
        self.retire(removed);
        self.start(&next, new_ids.into_iter());
        Ok(summary)
    }

    /// The table to make the next change on: the spare brought up to date if no reader holds
    /// it any more (waiting briefly for workers to finish their batch), else a copy of the
    /// current table.
    fn take_spare(
        &self,
        spare: Option<(Arc<PeerTable>, Vec<TableOp>)>,
        current: &Arc<PeerTable>,
    ) -> PeerTable {
        const WAIT: Duration = Duration::from_millis(100);
        let Some((mut spare, ops)) = spare else {
            return current.duplicate();
        };
        let start = std::time::Instant::now();
        loop {
            match Arc::try_unwrap(spare) {
                Ok(mut t) => {
                    for o in &ops {
                        t.apply_op(o);
                    }
                    return t;
                }
                Err(still_shared) if start.elapsed() < WAIT => {
                    spare = still_shared;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(_) => return current.duplicate(),
            }
        }
    }

    /// Add or update one peer in the table being changed, recording each step; returns its id.
    fn upsert(
        &self,
        next: &mut PeerTable,
        op: &mut dyn FnMut(&mut PeerTable, TableOp),
        cfg: &PeerConfig,
        update: &PeerUpdate,
        replace_allowed_ips: bool,
    ) -> PeerId {
        let id = match next.by_key.get(&cfg.public_key) {
            Some(&id) => {
                if let Some(slot) = next.get(id) {
                    lock(slot).reconfigure(self.clock.now(), update);
                }
                if replace_allowed_ips {
                    for (addr, len) in next.prefixes_of(id).to_vec() {
                        op(next, TableOp::RemovePrefix { addr, len, id });
                    }
                }
                id
            }
            None => {
                let id = next.peers.len() as PeerId;
                let slot = Arc::new(Mutex::new(Peer::new(&self.identity, cfg, id)));
                op(
                    next,
                    TableOp::AddPeer {
                        id,
                        key: cfg.public_key,
                        slot,
                    },
                );
                id
            }
        };
        for &(addr, len) in &cfg.allowed_ips {
            op(next, TableOp::AddPrefix { addr, len, id });
        }
        id
    }

    /// Wipe removed peers' keys and free their receiver indices at once.
    fn retire(&self, removed: Vec<PeerSlot>) {
        let mut out = Outbox::default();
        let mut rng = crate::OsRng;
        let mut cx = Context {
            now: self.clock.now(),
            wall: self.clock.wall(),
            rng: &mut rng,
        };
        for slot in removed {
            let mut peer = lock(&slot);
            let mut indices = &self.index;
            let mut env = Env {
                cx: &mut cx,
                identity: &self.identity,
                indices: &mut indices,
                out: &mut out,
                mtu: self.mtu,
            };
            peer.zero_keys(&mut env);
        }
    }
}

/// Build every peer (one DH each) on rayon's pool, keeping order so ids match the config.
fn build_peers(identity: &Identity, peers: &[PeerConfig], first_id: PeerId) -> Vec<Peer> {
    use rayon::prelude::*;
    peers
        .par_iter()
        .enumerate()
        .map(|(i, cfg)| Peer::new(identity, cfg, first_id + i as PeerId))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::peer::PeerUpdate;
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::IpAddr;

    /// A tiny deterministic generator (the test must be reproducible).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    fn key_of(i: u64) -> [u8; 32] {
        crate::keys::public_from_private(&[i as u8 + 1; 32])
    }

    fn prefix(i: u64) -> (IpAddr, u8) {
        (IpAddr::from([10, 0, (i / 200) as u8, (i % 200) as u8]), 32)
    }

    fn upsert(key: [u8; 32], prefixes: &[(IpAddr, u8)], replace: bool) -> PeerChange {
        PeerChange::Upsert {
            cfg: PeerConfig {
                public_key: key,
                allowed_ips: prefixes.to_vec(),
                ..Default::default()
            },
            update: PeerUpdate::default(),
            replace_allowed_ips: replace,
            update_only: false,
        }
    }

    /// What the table must say: key -> its prefixes, with every prefix held by one peer.
    fn table_view(t: &PeerTable) -> BTreeMap<[u8; 32], BTreeSet<(IpAddr, u8)>> {
        let mut m = BTreeMap::new();
        for (key, &id) in &t.by_key {
            let from_trie: BTreeSet<(IpAddr, u8)> =
                t.allowed_ips.prefixes_of(id).into_iter().collect();
            let from_list: BTreeSet<(IpAddr, u8)> = t.prefixes_of(id).iter().copied().collect();
            assert_eq!(from_trie, from_list, "the prefix list follows the trie");
            assert!(t.get(id).is_some());
            m.insert(*key, from_trie);
        }
        assert_eq!(
            t.peers.iter().flatten().count(),
            t.by_key.len(),
            "no peer slot without a key"
        );
        m
    }

    /// Random changes through the double buffer (sometimes with a reader holding the old table,
    /// which forces the copy), checked after each against a plain model of the peer set.
    #[test]
    fn the_double_buffer_matches_a_model_through_random_changes() {
        let shared = Shared::new(&[200u8; 32], &[], 1420, 1);
        let mut model: BTreeMap<[u8; 32], BTreeSet<(IpAddr, u8)>> = BTreeMap::new();
        let mut rng = Lcg(7);
        let mut held = None;
        for round in 0..300 {
            let k = key_of(rng.next(12));
            let ps: Vec<(IpAddr, u8)> = (0..rng.next(3)).map(|_| prefix(rng.next(20))).collect();
            let (replace_all, changes) = match rng.next(5) {
                0 => (false, vec![PeerChange::Remove(k)]),
                1 => (false, vec![upsert(k, &ps, true)]),
                2 => {
                    let keep: Vec<[u8; 32]> = model.keys().copied().take(3).collect();
                    let changes = keep.iter().map(|k| upsert(*k, &[], false)).collect();
                    (true, changes)
                }
                _ => (false, vec![upsert(k, &ps, false)]),
            };
            // Model: a prefix moves to whoever takes it last.
            if replace_all {
                let keep: BTreeSet<[u8; 32]> = changes
                    .iter()
                    .filter_map(|c| match c {
                        PeerChange::Upsert { cfg, .. } => Some(cfg.public_key),
                        PeerChange::Remove(_) => None,
                    })
                    .collect();
                model.retain(|k, _| keep.contains(k));
            }
            for c in &changes {
                match c {
                    PeerChange::Remove(k) => {
                        model.remove(k);
                    }
                    PeerChange::Upsert {
                        cfg,
                        replace_allowed_ips,
                        ..
                    } => {
                        for set in model.values_mut() {
                            for p in &cfg.allowed_ips {
                                set.remove(p);
                            }
                        }
                        let e = model.entry(cfg.public_key).or_default();
                        if *replace_allowed_ips {
                            e.clear();
                        }
                        e.extend(cfg.allowed_ips.iter().copied());
                    }
                }
            }
            // Every few rounds a reader holds the current table through the next change.
            if round % 7 == 0 {
                held = Some(shared.table());
            } else if round % 7 == 1 {
                held = None;
            }
            shared.apply(replace_all, &changes).unwrap();
            assert_eq!(table_view(&shared.table()), model, "round {round}");
        }
        drop(held);
    }

    #[test]
    fn ha_index_allocation_skips_indices_held_for_others() {
        use crate::proto::hasync::{partition_index, HeldStore, Record, SessionRecord};
        use crate::proto::rng::SeededRng;
        let node = 1;
        // The indices a seeded generator yields, moved into this member's partition.
        let mut probe = SeededRng::new(42);
        let drawn: Vec<u32> = (0..3)
            .map(|_| partition_index(node, probe.next_u32()))
            .collect();
        // Another member took two sessions of our previous incarnation over and synced them
        // back to us: we hold them under indices of our own partition.
        let held = Arc::new(Mutex::new(HeldStore::new(node, 2, Time::from_nanos(1))));
        for &local_index in &drawn[..2] {
            let s = SessionRecord {
                peer: [9u8; 32],
                local_index,
                remote_index: 5,
                send_key: zeroize::Zeroizing::new([1u8; 32]),
                recv_key: zeroize::Zeroizing::new([2u8; 32]),
                initiator: false,
                may_send: true,
                age_ms: 10,
                send_counter: 0,
                receive_mark: 0,
                endpoint: None,
                region: 1,
            };
            lock(&held).apply(Time::from_nanos(5_000_000_000), 0, Record::Session(s));
        }
        let shards = IndexShards::new();
        shards.set_partition(node, held.clone());
        let mut ix = &shards;
        let got = ix.allocate(&mut SeededRng::new(42), 7);
        assert_eq!(got, drawn[2], "the two held indices were skipped");
        assert_eq!(shards.get(got), Some(7));
        assert!(drawn[..2].iter().all(|&i| shards.get(i).is_none()));
        // Once the held sessions are gone, their indices may be allocated again.
        lock(&held).expire(Time::from_nanos(u64::MAX / 2));
        assert_eq!(ix.allocate(&mut SeededRng::new(42), 8), drawn[0]);
    }
}
