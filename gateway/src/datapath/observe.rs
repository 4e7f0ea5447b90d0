//! What the running gateway shows the outside: the metrics source behind `/metrics` and
//! `/healthz`.
//!
//! A scrape copies counters out of the workers' atomics and each peer's stats under that
//! peer's lock, one peer at a time; no data-path table is locked while the text is encoded.
//! Health is the threads' heartbeats: a worker or handshake thread that has not gone round its
//! loop for [`STALL`] (it sleeps at most 50 ms) is stuck, one that panicked has stopped (see
//! [`super::fault`]), and either way `/healthz` says 503 naming it.

use super::shared::{lock, Shared};
use super::worker::{HandshakeJob, WorkerStats};
use crate::keys::encode_key;
use crate::metrics::{MetricsSource, PeerSample, PeerSeries, Snapshot, WorkerSample};
use crate::DropReason;
use crossbeam_channel::Sender;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A worker whose heartbeat is older than this is reported unhealthy.
pub const STALL: Duration = Duration::from_secs(2);

pub struct GatewayObserver {
    pub interface: String,
    pub shared: Arc<Shared>,
    pub workers: Vec<Arc<WorkerStats>>,
    pub handshakes: Vec<Arc<WorkerStats>>,
    /// A handle on the handshake queue, only to read its depth.
    pub queue: Sender<HandshakeJob>,
    /// The XDP fast path, in xdp mode.
    pub fast: Option<Arc<super::fastpath::FastPath>>,
    /// The outer UDP sockets (every mode has them).
    pub udp: Vec<Arc<super::udp::UdpSocket>>,
}

impl std::fmt::Debug for GatewayObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayObserver")
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

fn sample(w: &WorkerStats) -> WorkerSample {
    WorkerSample {
        rx_packets: w.rx_packets.load(Ordering::Relaxed),
        tx_packets: w.tx_packets.load(Ordering::Relaxed),
        drops: std::array::from_fn(|i| w.drops[i].load(Ordering::Relaxed)),
        batch_sizes: w
            .batch_sizes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect(),
    }
}

impl MetricsSource for GatewayObserver {
    fn snapshot(&self, per_peer: PeerSeries) -> Snapshot {
        let table = self.shared.table();
        let take = per_peer.limit(table.len());
        let mut allowed = table.allowed_ips_by_peer();
        let peers = table
            .iter()
            .take(take)
            .map(|(id, slot)| {
                let p = lock(slot);
                let s = p.stats();
                PeerSample {
                    public_key: encode_key(p.public_key()),
                    allowed_ips: allowed
                        .remove(&id)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(a, l)| format!("{a}/{l}"))
                        .collect(),
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                    last_handshake_unix: s.last_handshake.map(|w| w.secs),
                }
            })
            .collect();
        let workers = self.workers.iter().map(|w| sample(w)).collect();
        // Handshake threads count drops too (handshake_failed, cookie_required, ...), in
        // their own series.
        let handshake_threads = self.handshakes.iter().map(|w| sample(w)).collect();
        let cookie_replies = self
            .handshakes
            .iter()
            .map(|w| w.drops[DropReason::CookieRequired as usize].load(Ordering::Relaxed))
            .sum();
        Snapshot {
            interface: self.interface.clone(),
            peers,
            workers,
            handshake_threads,
            xdp: self.fast.as_ref().map_or_else(Vec::new, |f| f.verdicts()),
            xsk: self
                .fast
                .as_ref()
                .map_or_else(Vec::new, |f| f.xsk_samples()),
            xdp_inner: self
                .fast
                .as_ref()
                .map_or_else(Vec::new, |f| f.inner_verdicts()),
            xsk_inner: self
                .fast
                .as_ref()
                .map_or_else(Vec::new, |f| f.inner_xsk_samples()),
            handshake_queue_depth: self.queue.len() as u64,
            under_load: self.shared.is_under_load(self.shared.clock.now()),
            cookie_replies_sent: cookie_replies,
            source_fallbacks: self.udp.iter().map(|u| u.source_fallbacks()).sum(),
            ha: self.shared.ha.get().map(|h| h.sample(&self.shared)),
        }
    }

    fn healthy(&self) -> Result<(), String> {
        let now = self.shared.clock.now().as_nanos();
        let mut down = Vec::new();
        let mut stalled = Vec::new();
        let threads = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("worker {i}"), w))
            .chain(
                self.handshakes
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (format!("handshake thread {i}"), w)),
            )
            .chain(
                self.shared
                    .ha
                    .get()
                    .map(|h| ("ha sync thread".to_string(), &h.stats)),
            );
        for (name, w) in threads {
            if let Some(why) = w.exited.get() {
                down.push(format!("{name} stopped ({why})"));
            } else if now.saturating_sub(w.heartbeat.load(Ordering::Relaxed))
                > STALL.as_nanos() as u64
            {
                stalled.push(name);
            }
        }
        if !stalled.is_empty() {
            down.push(format!(
                "not running its loop for over {STALL:?}: {}",
                stalled.join(", ")
            ));
        }
        if down.is_empty() {
            Ok(())
        } else {
            Err(down.join("; "))
        }
    }
}
