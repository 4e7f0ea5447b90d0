//! State shared by the workers and handshake threads.
//!
//! - The peer set, its public-key map and the allowed-IPs table are fixed for the life of a
//!   [`Shared`] and read without locks.
//! - Each peer sits behind its own mutex: a worker holds it to encrypt or decrypt one packet
//!   for that peer, a handshake thread to run a handshake step. Different peers never contend.
//! - Receiver indices change with every handshake, so they live in a table sharded over
//!   [`INDEX_SHARDS`] mutexes; a lookup holds one shard just long enough to copy a peer id.
//! - Lock order: a peer, then an index shard. No code takes a peer lock while holding a shard.

use crate::proto::allowedips::AllowedIps;
use crate::proto::cookie::CookieChecker;
use crate::proto::effects::{Context, Env, Indices, Outbox};
use crate::proto::noise::Identity;
use crate::proto::peer::{Peer, PeerConfig, PeerId};
use crate::proto::ratelimiter::RateLimiter;
use crate::proto::{Rng, Time, WallTime};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
}

impl IndexShards {
    fn new() -> IndexShards {
        IndexShards {
            shards: (0..INDEX_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
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
            let index = rng.next_u32();
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
    pub peers: Vec<Mutex<Peer>>,
    pub by_key: HashMap<[u8; 32], PeerId>,
    pub allowed_ips: AllowedIps<PeerId>,
    pub index: IndexShards,
    pub ratelimiter: Mutex<RateLimiter>,
    /// Nanoseconds (on [`Clock`]) until which handshakes are treated as under load.
    pub under_load_until: AtomicU64,
    pub mtu: usize,
    pub clock: Clock,
    /// Per worker: deadlines other threads filed for peers that worker owns.
    pub timer_inbox: Vec<Mutex<Vec<Deadline>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("identity", &self.identity)
            .field("peers", &self.peers.len())
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Build the tables. Each peer costs one DH (the static-static precomputation), spread
    /// over threads because 100,000 peers would otherwise take seconds.
    pub fn new(private_key: &[u8; 32], peers: &[PeerConfig], mtu: usize, workers: usize) -> Shared {
        let identity = Identity::new(private_key);
        let clock = Clock::new();
        let built: Vec<Peer> = build_peers(&identity, peers);
        let mut allowed_ips = AllowedIps::new();
        let mut by_key = HashMap::with_capacity(peers.len());
        for (id, cfg) in peers.iter().enumerate() {
            let id = id as PeerId;
            by_key.insert(cfg.public_key, id);
            for &(addr, len) in &cfg.allowed_ips {
                // Config validation already rejected bad prefix lengths.
                let _ = allowed_ips.insert(addr, len, id);
            }
        }
        Shared {
            checker: RwLock::new(CookieChecker::new(identity.public_key())),
            identity,
            peers: built.into_iter().map(Mutex::new).collect(),
            by_key,
            allowed_ips,
            index: IndexShards::new(),
            ratelimiter: Mutex::new(RateLimiter::new(RATELIMITER_ENTRIES)),
            under_load_until: AtomicU64::new(0),
            mtu,
            clock,
            timer_inbox: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        }
    }

    /// Arm the timers peers start with (persistent keepalives) and file their deadlines.
    pub fn start_peers(&self) {
        let now = self.clock.now();
        for (id, slot) in self.peers.iter().enumerate() {
            let mut peer = lock(slot);
            peer.on_interface_up(now);
            if let Some(at) = peer.deadline_to_file() {
                lock(&self.timer_inbox[self.timer_owner(id as PeerId)]).push((at, id as PeerId));
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

    /// Run `f` on one peer under its lock with an environment over the shared tables, then
    /// file its next timer deadline with the owning worker if it moved.
    pub fn with_peer<R>(
        &self,
        id: PeerId,
        cx: &mut Context,
        out: &mut Outbox,
        f: impl FnOnce(&mut Peer, &mut Env) -> R,
    ) -> Option<R> {
        let slot = self.peers.get(id as usize)?;
        let mut peer = lock(slot);
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
}

/// Build every peer (one DH each) on rayon's pool, keeping order so ids match the config.
fn build_peers(identity: &Identity, peers: &[PeerConfig]) -> Vec<Peer> {
    use rayon::prelude::*;
    peers
        .par_iter()
        .enumerate()
        .map(|(i, cfg)| Peer::new(identity, cfg, i as PeerId))
        .collect()
}
