//! HA in the running gateway: the sync thread, the held-session store, takeovers and the role.
//!
//! - **Sync thread**: one UDP socket on this member's sync address. Every [`SYNC_INTERVAL`]
//!   (and at once after a handshake) it scans the peers' keypairs against what it last told
//!   the group and sends new sessions, moved counters (and every session's counters again
//!   every [`crate::proto::hasync::MARKS_REFRESH`]) and dropped sessions, sealed by
//!   [`crate::proto::hasync`]; an empty datagram is the heartbeat. A member heard with a new
//!   epoch gets every session again. Received records fill the held-session store.
//! - **Takeover**: lazily, when transport data authenticates under a held session (a worker
//!   finds its receiver index unknown, then held) or an inner packet is for a peer with no
//!   session of ours but a held one (while serving), and for every held session on becoming
//!   VRRP master. The keypair goes in under its original index with its counter region and the
//!   peer's endpoint follows: no DH, so 10,000 takeovers cost milliseconds. The fresh
//!   handshake is queued at once in the [`InitiationPacer`]; the handshake threads build and
//!   send the queued initiations at [`TAKEOVER_INITIATIONS_PER_MS`] (pausing while their
//!   queue fills), so a mass takeover neither blocks a worker nor puts anyone under load.
//! - **Role**: `vrrp` starts as backup and follows `ha-role` on the control socket (keepalived's
//!   notify hooks); `anycast` is always active.

use super::shared::{lock, Shared};
use super::udp::VipGate;
use super::worker::WorkerStats;
use crate::config::ha::{HaConfig, HaMode};
use crate::crypto;
use crate::proto::effects::{Context, Outbox};
use crate::proto::endpoint::Endpoint;
use crate::proto::hasync::{
    acks_for, marks_due, node_of_index, Announcements, GroupKey, HeldStore, InitiationPacer,
    MarksDue, MarksRecord, Record, SessionRecord, SyncReceiver, SyncSender, MAX_DATAGRAM,
    SYNC_INTERVAL, TAKEOVER_INITIATIONS_PER_MS,
};
use crate::proto::messages::transport::PAYLOAD_START;
use crate::proto::peer::PeerId;
use crate::proto::Time;
use crate::{DropCounters, DropReason, OsRng};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// What this member is in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    Backup = 0,
    Master = 1,
    Fault = 2,
    /// Anycast: every member serves.
    Active = 3,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Backup, Role::Master, Role::Fault, Role::Active];

    pub fn label(self) -> &'static str {
        match self {
            Role::Backup => "backup",
            Role::Master => "master",
            Role::Fault => "fault",
            Role::Active => "active",
        }
    }

    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Master,
            2 => Role::Fault,
            3 => Role::Active,
            _ => Role::Backup,
        }
    }

    /// A notify state (`master`, `BACKUP`, ...).
    pub fn parse(s: &str) -> Option<Role> {
        match s.to_ascii_lowercase().as_str() {
            "master" => Some(Role::Master),
            "backup" => Some(Role::Backup),
            "fault" => Some(Role::Fault),
            _ => None,
        }
    }
}

/// What we know of another member.
#[derive(Clone, Copy, Debug, Default)]
struct MemberView {
    last_heard: Option<Time>,
    epoch: u64,
    /// When its latest session records or marks arrived.
    marks_at: Option<Time>,
}

/// The HA state of a running gateway, shared by the workers, the sync thread and the control
/// socket.
pub struct Ha {
    pub cfg: HaConfig,
    key: GroupKey,
    role: AtomicU8,
    pub held: Arc<Mutex<HeldStore>>,
    poke: AtomicBool,
    pub sync_sent: AtomicU64,
    pub sync_received: AtomicU64,
    pub takeovers: AtomicU64,
    /// Transport messages that authenticated under a session taken over from another member.
    pub rx_taken_over: AtomicU64,
    members: Mutex<Vec<MemberView>>,
    epoch: u64,
    /// The fresh handshakes takeovers queued, which the handshake threads send paced.
    pacer: Mutex<InitiationPacer>,
    /// The outer sockets' [`VipGate`]: closed (VIP datagrams dropped, `vip_not_master`) while a
    /// VRRP member is not master.
    pub gate: Arc<VipGate>,
    /// Called after every role change (the XDP local-address map follows the role).
    on_role: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// The sync thread's drop counters and heartbeat (published through its [`WorkerStats`]):
    /// `sluice_ha_sync_drops_total`, the status file's drops, and `/healthz`.
    pub stats: Arc<WorkerStats>,
}

impl std::fmt::Debug for Ha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ha")
            .field("cfg", &self.cfg)
            .field("role", &self.role())
            .finish_non_exhaustive()
    }
}

impl Ha {
    pub fn new(cfg: &HaConfig, started: Time, epoch: u64) -> Ha {
        let n = cfg.members.len() as u8;
        Ha {
            key: GroupKey::derive(&cfg.secret, &cfg.members),
            role: AtomicU8::new(match cfg.mode {
                HaMode::Vrrp => Role::Backup as u8,
                HaMode::Anycast => Role::Active as u8,
            }),
            held: Arc::new(Mutex::new(HeldStore::new(cfg.node, n, started))),
            poke: AtomicBool::new(false),
            sync_sent: AtomicU64::new(0),
            sync_received: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
            rx_taken_over: AtomicU64::new(0),
            members: Mutex::new(vec![MemberView::default(); cfg.members.len()]),
            epoch,
            pacer: Mutex::new(InitiationPacer::new(TAKEOVER_INITIATIONS_PER_MS)),
            gate: Arc::new(VipGate::new(&cfg.vips, cfg.mode == HaMode::Vrrp)),
            on_role: OnceLock::new(),
            stats: Arc::new(WorkerStats::default()),
            cfg: cfg.clone(),
        }
    }

    pub fn set_on_role(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_role.set(f);
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    /// The VIPs the data path must not accept now: all of them on a VRRP member that is not
    /// master.
    pub fn hidden_vips(&self) -> &[IpAddr] {
        if self.cfg.mode == HaMode::Vrrp && self.role() != Role::Master {
            &self.cfg.vips
        } else {
            &[]
        }
    }

    /// Ask the sync thread to scan now (a handshake just completed).
    pub fn poke(&self) {
        self.poke.store(true, Ordering::Relaxed);
    }

    /// Set the role from a notify hook. Becoming master takes over every held session.
    pub fn set_role(&self, shared: &Shared, role: Role) -> Result<(), String> {
        if self.cfg.mode == HaMode::Anycast {
            return Err("ha.mode is anycast: every member is always active".into());
        }
        let old = Role::from_u8(self.role.swap(role as u8, Ordering::Relaxed));
        self.gate.set_closed(role != Role::Master);
        if old != role {
            tracing::info!(from = old.label(), to = role.label(), "ha role changed");
        }
        if let Some(f) = self.on_role.get() {
            f();
        }
        if role == Role::Master && old != Role::Master && self.cfg.sync {
            let started = std::time::Instant::now();
            let n = self.take_over_all(shared);
            tracing::info!(
                sessions = n,
                ms = started.elapsed().as_millis() as u64,
                "ha master: took over held sessions"
            );
        }
        Ok(())
    }

    /// Take over every held session whose peer has no newer session of our own. Cheap per
    /// session (keys copied, the keypair installed, no DH): the fresh handshakes go to the
    /// pacer, oldest session first, and the handshake threads send them.
    fn take_over_all(&self, shared: &Shared) -> usize {
        let table = shared.table();
        let mut rng = OsRng;
        let mut cx = Context {
            now: shared.clock.now(),
            wall: shared.clock.wall(),
            rng: &mut rng,
        };
        let mut out = Outbox::default();
        let mut candidates: Vec<(u32, [u8; 32], Time)> = {
            let held = lock(&self.held);
            held.indices()
                .into_iter()
                .filter_map(|i| {
                    let s = held.get(i)?;
                    s.taken.is_none().then_some((i, s.peer, s.created))
                })
                .collect()
        };
        candidates.sort_by_key(|&(_, _, created)| created);
        let mut n = 0;
        for (index, peer, created) in candidates {
            if shared.index.get(index).is_some() {
                continue;
            }
            let Some(id) = table.by_key(&peer) else {
                continue;
            };
            let newer = table.get(id).is_some_and(|slot| {
                lock(slot)
                    .keypairs()
                    .current()
                    .is_some_and(|k| k.created > created)
            });
            if newer {
                continue;
            }
            if self
                .take_over(shared, &table, &mut cx, &mut out, index, None)
                .is_some()
            {
                n += 1;
            }
        }
        // A takeover queues nothing in the outbox: its handshake goes through the pacer.
        debug_assert!(out.transmits.is_empty());
        n
    }

    /// Take the held session `index` over; returns its peer.
    pub fn take_over(
        &self,
        shared: &Shared,
        table: &super::peers::PeerTable,
        cx: &mut Context,
        out: &mut Outbox,
        index: u32,
        src: Option<Endpoint>,
    ) -> Option<PeerId> {
        let t = lock(&self.held).take_over(cx.now, index)?;
        let id = table.by_key(&t.peer)?;
        shared.index.insert(index, id);
        // The packet that made us take over names the peer's address and ours it reached (the
        // source to answer from); without one (VRRP master), the synced endpoint and the
        // address the client reached the old owner at, which is the VIP now ours.
        let endpoint = src.or(t.endpoint);
        let (from, region, peer) = (t.from_node, t.region, t.peer);
        shared.with_peer(table, id, cx, out, |p, env| {
            p.take_over(env, t.keypair, t.confirmed, endpoint)
        })?;
        // The fresh handshake, queued now and sent at the pacer's rate by a handshake thread.
        lock(&self.pacer).push(id, index);
        self.takeovers.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            peer = %crate::keys::encode_key(&peer),
            from_node = from,
            region,
            index,
            "session taken over"
        );
        self.poke();
        Some(id)
    }

    /// A worker found no session for `receiver`: if a held session authenticates `datagram`,
    /// take it over and return its peer.
    #[allow(clippy::too_many_arguments)]
    pub fn lazy_takeover(
        &self,
        shared: &Shared,
        table: &super::peers::PeerTable,
        cx: &mut Context,
        out: &mut Outbox,
        receiver: u32,
        datagram: &[u8],
        src: Endpoint,
    ) -> Option<PeerId> {
        if !self.cfg.sync || node_of_index(receiver) == self.cfg.node {
            return None;
        }
        let probe = lock(&self.held).probe(cx.now, receiver)?;
        let opening = probe.begin_decrypt(cx.now, datagram).ok()?;
        let mut copy = datagram.get(PAYLOAD_START..)?.to_vec();
        crypto::open_in_place(&opening.key, opening.counter, &[], &mut copy).ok()?;
        self.take_over(shared, table, cx, out, receiver, Some(src))
    }

    /// Whether an inner packet for a peer without a session of ours should take over a session
    /// held for it: with sync, while this member serves (anycast, or VRRP master).
    #[inline]
    pub fn takes_over_outbound(&self) -> bool {
        self.cfg.sync
            && match self.cfg.mode {
                HaMode::Anycast => true,
                HaMode::Vrrp => self.role() == Role::Master,
            }
    }

    /// A worker has an inner packet for peer `id` (public key `key`), which has no usable
    /// session of ours: take over the newest session held for it, if any. True if one was.
    pub fn outbound_takeover(
        &self,
        shared: &Shared,
        table: &super::peers::PeerTable,
        cx: &mut Context,
        out: &mut Outbox,
        key: &[u8; 32],
    ) -> bool {
        let Some(index) = lock(&self.held).newest_for_peer(cx.now, key) else {
            return false;
        };
        if shared.index.get(index).is_some() {
            return false;
        }
        self.take_over(shared, table, cx, out, index, None)
            .is_some()
    }

    /// Takeover initiations waiting for their turn.
    pub fn initiations_queued(&self) -> usize {
        lock(&self.pacer).len()
    }

    /// How long until the next takeover initiation is due (`None`: none waits).
    pub fn paced_wait(&self, now: Time) -> Option<Duration> {
        lock(&self.pacer).wait(now)
    }

    /// Build the takeover initiations due now, at most `max`, into `out` (a handshake thread
    /// sends them). Returns how many were built.
    pub fn send_paced(
        &self,
        shared: &Shared,
        cx: &mut Context,
        out: &mut Outbox,
        max: usize,
    ) -> usize {
        let due = lock(&self.pacer).take(cx.now, max);
        if due.is_empty() {
            return 0;
        }
        let table = shared.table();
        let mut n = 0;
        for (id, index) in due {
            let queued = out.transmits.len();
            let sent = shared
                .with_peer(&table, id, cx, out, |p, env| {
                    p.initiate_after_takeover(env, index)
                })
                .unwrap_or(false);
            if sent && super::fault::drops_takeover_initiation() {
                // Tests only: the fresh handshake waits for its retransmit (REKEY_TIMEOUT), so
                // this member sends under the taken-over session meanwhile.
                out.transmits.truncate(queued);
            }
            n += usize::from(sent);
        }
        n
    }

    /// Count a transport message accepted under `receiver` (taken over if not ours).
    #[inline]
    pub fn note_received(&self, receiver: u32) {
        if node_of_index(receiver) != self.cfg.node {
            self.rx_taken_over.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn drops(&self, r: DropReason) -> u64 {
        self.stats.drops[r as usize].load(Ordering::Relaxed)
    }

    /// The `ha-status` reply.
    pub fn status(&self, shared: &Shared) -> serde_json::Value {
        let now = shared.clock.now();
        let ms = |t: Option<Time>| t.map(|t| now.saturating_since(t).as_millis() as u64);
        let views = lock(&self.members).clone();
        let members: Vec<serde_json::Value> = self
            .cfg
            .members
            .iter()
            .zip(views)
            .enumerate()
            .map(|(i, (addr, v))| {
                if i == usize::from(self.cfg.node) {
                    json!({"node": i, "address": addr.to_string(), "self": true, "epoch": self.epoch})
                } else {
                    json!({
                        "node": i,
                        "address": addr.to_string(),
                        "self": false,
                        "last_heard_ms": ms(v.last_heard),
                        "epoch": v.epoch,
                        "sync_lag_ms": ms(v.marks_at),
                    })
                }
            })
            .collect();
        let held = lock(&self.held);
        json!({
            "mode": self.cfg.mode.label(),
            "role": self.role().label(),
            "node": self.cfg.node,
            "sync": self.cfg.sync,
            "vips": self.cfg.vips.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            "members": members,
            "sessions_held": held.held_for_others(),
            "sessions_known": held.len(),
            "takeovers": self.takeovers.load(Ordering::Relaxed),
            "initiations_queued": self.initiations_queued(),
            "rx_taken_over": self.rx_taken_over.load(Ordering::Relaxed),
            "sync_sent": self.sync_sent.load(Ordering::Relaxed),
            "sync_received": self.sync_received.load(Ordering::Relaxed),
            "rejected": {
                "sync_forged": self.drops(DropReason::SyncForged),
                "sync_replayed": self.drops(DropReason::SyncReplayed),
                "sync_malformed": self.drops(DropReason::SyncMalformed),
            },
        })
    }

    /// One control-socket request.
    pub fn handle_ctl(&self, shared: &Shared, line: &str) -> String {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("ha-status"), None, _) => self.status(shared).to_string(),
            (Some("ha-role"), Some(state), None) => match Role::parse(state) {
                Some(role) => match self.set_role(shared, role) {
                    Ok(()) => "ok".into(),
                    Err(e) => format!("error: {e}"),
                },
                None => format!("error: unknown role '{state}' (master, backup or fault)"),
            },
            _ => format!("error: unknown request '{line}' (ha-status, ha-role STATE)"),
        }
    }

    /// Samples for `/metrics`.
    pub fn sample(&self, shared: &Shared) -> crate::metrics::HaSample {
        let now = shared.clock.now();
        let views = lock(&self.members).clone();
        crate::metrics::HaSample {
            role: self.role().label(),
            roles: Role::ALL.iter().map(|r| r.label()).collect(),
            sync_sent: self.sync_sent.load(Ordering::Relaxed),
            sync_received: self.sync_received.load(Ordering::Relaxed),
            sessions_held: lock(&self.held).held_for_others() as u64,
            takeovers: self.takeovers.load(Ordering::Relaxed),
            members: self
                .cfg
                .members
                .iter()
                .zip(views)
                .enumerate()
                .filter(|(i, _)| *i != usize::from(self.cfg.node))
                .map(|(_, (a, v))| {
                    (
                        a.to_string(),
                        v.last_heard.map(|t| now.saturating_since(t).as_secs_f64()),
                    )
                })
                .collect(),
            sync_drops: std::array::from_fn(|i| self.stats.drops[i].load(Ordering::Relaxed)),
        }
    }
}

/// What the sync thread last told the group about one of our sessions (send counter, receive
/// mark, region), and when.
type Told = ((u64, u64, u32), Time);

/// The sync thread.
pub struct SyncThread {
    pub ha: Arc<Ha>,
    pub shared: Arc<Shared>,
    pub socket: UdpSocket,
    pub stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for SyncThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncThread").finish_non_exhaustive()
    }
}

/// Bind this member's sync address.
pub fn bind(cfg: &HaConfig) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(cfg.own_address())?;
    s.set_read_timeout(Some(Duration::from_millis(10)))?;
    Ok(s)
}

/// One sealed batch of records per member (index = node; ours stays empty).
type PerMember = Vec<Vec<Record>>;

impl SyncThread {
    pub fn run(self) {
        let ha = &*self.ha;
        let n = ha.cfg.members.len() as u8;
        let mut sender = SyncSender::new(ha.cfg.node, ha.epoch);
        let mut receiver = SyncReceiver::new(ha.cfg.node, n);
        let mut announcements = Announcements::new(ha.cfg.node, n);
        let mut told: HashMap<u32, Told> = HashMap::new();
        let mut resync: Vec<u8> = Vec::new();
        let mut acks: PerMember = vec![Vec::new(); usize::from(n)];
        let mut drops = DropCounters::default();
        let mut rng = OsRng;
        let mut buf = vec![0u8; MAX_DATAGRAM + 100];
        let mut next_tick = self.shared.clock.now();
        let (mut sent, mut received) = (0u64, 0u64);
        let mut send = |sender: &mut SyncSender, to: usize, records: &[Record]| {
            self.send(sender, &mut rng, to, records)
        };
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.shared.clock.now();
            ha.stats.heartbeat.store(now.as_nanos(), Ordering::Relaxed);
            // Receive whatever is there (the read timeout paces the loop).
            while let Ok((len, _src)) = self.socket.recv_from(&mut buf) {
                match receiver.accept(&ha.key, &buf[..len]) {
                    Ok(a) => {
                        received += 1;
                        announcements.on_records(a.node, &a.records);
                        self.apply(a, &mut resync, &mut acks);
                    }
                    Err(r) => {
                        drops.count(r);
                        tracing::debug!(reason = r.label(), "sync datagram rejected");
                    }
                }
                if self.socket.set_nonblocking(true).is_err() {
                    break;
                }
            }
            let _ = self.socket.set_nonblocking(false);
            // Acks go out at once, so the sender stops re-announcing soon.
            for (to, a) in acks.iter_mut().enumerate() {
                if !a.is_empty() {
                    sent += send(&mut sender, to, a);
                    a.clear();
                }
            }
            let now = self.shared.clock.now();
            let tick = now >= next_tick;
            if tick || ha.poke.swap(false, Ordering::Relaxed) {
                let mut due = Vec::new();
                if tick {
                    next_tick = now + SYNC_INTERVAL;
                    lock(&ha.held).expire(now);
                    due = announcements.due(now);
                }
                let full = !resync.is_empty();
                let want: HashSet<u32> = due.iter().map(|&(i, _)| i).collect();
                let scanned = scan(&self.shared, now, &mut told, full, &want);
                let changes = if ha.cfg.sync {
                    scanned.changes
                } else {
                    Vec::new()
                };
                for r in &changes {
                    match r {
                        Record::Session(s) => {
                            announcements.sent(now, s.local_index, announcements.others());
                        }
                        Record::Gone(i) => announcements.gone(*i),
                        _ => {}
                    }
                }
                for (to, _) in ha.cfg.members.iter().enumerate() {
                    if to == usize::from(ha.cfg.node) {
                        continue;
                    }
                    let mut records = changes.clone();
                    records.extend(
                        due.iter()
                            .filter(|(_, mask)| mask & (1 << to) != 0)
                            .filter_map(|(i, _)| scanned.wanted.get(i).cloned()),
                    );
                    if (ha.cfg.sync && !records.is_empty()) || tick {
                        sent += send(&mut sender, to, &records);
                    }
                }
                for node in resync.drain(..) {
                    if !ha.cfg.sync {
                        continue;
                    }
                    sent += send(&mut sender, usize::from(node), &scanned.all);
                    for r in &scanned.all {
                        if let Record::Session(s) = r {
                            announcements.sent(now, s.local_index, 1 << node);
                        }
                    }
                }
            }
            ha.sync_sent.store(sent, Ordering::Relaxed);
            ha.sync_received.store(received, Ordering::Relaxed);
            ha.stats.publish(&drops, 0, 0);
        }
    }

    /// Seal `records` for member `to` and send them; returns the datagrams sent.
    fn send(&self, sender: &mut SyncSender, rng: &mut OsRng, to: usize, records: &[Record]) -> u64 {
        let Some(m) = self.ha.cfg.members.get(to) else {
            return 0;
        };
        sender
            .seal_records(&self.ha.key, rng, records)
            .iter()
            .map(|d| u64::from(self.socket.send_to(d, m).is_ok()))
            .sum()
    }

    fn apply(&self, a: crate::proto::hasync::Accepted, resync: &mut Vec<u8>, acks: &mut PerMember) {
        let ha = &*self.ha;
        let now = self.shared.clock.now();
        {
            let mut views = lock(&ha.members);
            if let Some(v) = views.get_mut(usize::from(a.node)) {
                v.last_heard = Some(now);
                v.epoch = a.epoch;
                if a.records.iter().any(|r| !matches!(r, Record::Ack(_))) {
                    v.marks_at = Some(now);
                }
            }
        }
        if a.new_epoch {
            tracing::info!(
                node = a.node,
                epoch = a.epoch,
                "ha member (re)started: full resync"
            );
            resync.push(a.node);
        }
        if !ha.cfg.sync {
            return;
        }
        if let Some(owed) = acks.get_mut(usize::from(a.node)) {
            owed.extend(acks_for(&a.records));
        }
        let mut held = lock(&ha.held);
        for r in a.records {
            let index = match &r {
                Record::Session(s) => s.local_index,
                Record::Marks(m) => m.local_index,
                Record::Gone(i) => *i,
                Record::Ack(_) => continue,
            };
            // Sessions we run ourselves (derived or taken over) are not held.
            if self.shared.index.get(index).is_some() {
                continue;
            }
            held.apply(now, a.node, r);
        }
    }
}

/// What one scan of our keypairs found.
struct Scanned {
    /// New sessions, moved counters, dropped sessions since the last scan.
    changes: Vec<Record>,
    /// Every session as a SessionNew record (a full resync), if asked for.
    all: Vec<Record>,
    /// The SessionNew records of the sessions asked for by index (re-announcements), with the
    /// counters they have now.
    wanted: HashMap<u32, Record>,
}

/// Compare every keypair we run with what the group was told: new sessions, moved counters,
/// dropped sessions. With `full`, also every session as a SessionNew record (a resync); and
/// the sessions in `want` as SessionNew records.
fn scan(
    shared: &Shared,
    now: Time,
    told: &mut HashMap<u32, Told>,
    full: bool,
    want: &HashSet<u32>,
) -> Scanned {
    let table = shared.table();
    let mut out = Scanned {
        changes: Vec::new(),
        all: Vec::new(),
        wanted: HashMap::new(),
    };
    let mut seen = HashSet::new();
    for (_, slot) in table.iter() {
        let p = lock(slot);
        let kps = p.keypairs();
        let slots = [
            (kps.current(), true),
            (kps.previous(), true),
            (kps.next(), false),
        ];
        for (kp, may_send) in slots {
            let Some(kp) = kp else { continue };
            if kp.is_expired(now) {
                continue;
            }
            let index = kp.local_index;
            seen.insert(index);
            let t = (
                kp.send_counter(),
                kp.receive_counter(),
                crate::proto::hasync::region_of(kp.send_counter()),
            );
            let record = || {
                Record::Session(SessionRecord::of(
                    p.public_key(),
                    kp,
                    may_send,
                    now,
                    p.sticky_endpoint(),
                ))
            };
            let due = marks_due(told.get(&index).copied(), t, now);
            match due {
                MarksDue::Session => out.changes.push(record()),
                MarksDue::Marks => out.changes.push(Record::Marks(MarksRecord {
                    local_index: index,
                    send_counter: t.0,
                    receive_mark: t.1,
                    region: t.2,
                })),
                MarksDue::Nothing => {}
            }
            if due != MarksDue::Nothing {
                told.insert(index, (t, now));
            }
            if full {
                out.all.push(record());
            }
            if want.contains(&index) {
                out.wanted.insert(index, record());
            }
        }
    }
    let gone: Vec<u32> = told.keys().filter(|i| !seen.contains(i)).copied().collect();
    for i in gone {
        told.remove(&i);
        out.changes.push(Record::Gone(i));
    }
    out
}

/// The epoch of a member starting now: wall-clock nanoseconds (grows across restarts).
pub fn epoch_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
