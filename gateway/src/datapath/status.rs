//! A JSON snapshot of the running gateway, rewritten atomically about once a second for the
//! lab, the tests and anyone who wants a quick look (the `wg` API and Prometheus come later).

use super::shared::{lock, Shared};
use super::worker::WorkerStats;
use crate::config::Config;
use crate::keys::encode_key;
use crate::DropReason;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct Status<'a> {
    pub cfg: &'a Config,
    pub shared: &'a Shared,
    pub workers: &'a [Arc<WorkerStats>],
    pub handshakes: &'a [Arc<WorkerStats>],
    pub fast: Option<&'a super::fastpath::FastPath>,
}

impl Status<'_> {
    pub fn snapshot(&self) -> Value {
        let table = self.shared.table();
        let mut prefixes = table.allowed_ips_by_peer();
        let peers: Vec<Value> = table
            .iter()
            .map(|(id, p)| {
                let p = lock(p);
                let s = p.stats();
                let allowed: Vec<String> = prefixes
                    .remove(&id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(a, l)| format!("{a}/{l}"))
                    .collect();
                json!({
                    "public_key": encode_key(p.public_key()),
                    "endpoint": p.endpoint().map(|e| e.to_string()),
                    "last_handshake_unix": s.last_handshake.map(|w| w.secs),
                    "rx_bytes": s.rx_bytes,
                    "tx_bytes": s.tx_bytes,
                    "allowed_ips": allowed,
                })
            })
            .collect();
        let ha_sync = self.shared.ha.get().map(|h| &*h.stats);
        let all = || {
            self.workers
                .iter()
                .chain(self.handshakes)
                .map(|w| &**w)
                .chain(ha_sync)
        };
        let mut drops = Map::new();
        for r in DropReason::ALL {
            let n: u64 = all()
                .map(|w| w.drops[r as usize].load(Ordering::Relaxed))
                .sum();
            drops.insert(r.label().to_string(), json!(n));
        }
        let sum = |f: fn(&WorkerStats) -> u64| -> u64 { self.workers.iter().map(|w| f(w)).sum() };
        json!({
            "interface": self.cfg.name,
            "public_key": encode_key(self.shared.identity.public_key()),
            "listen_port": self.cfg.listen_port,
            "mode": if self.fast.is_some() { "xdp" } else { "socket" },
            "xdp": self.fast.map(|f| f.status()),
            "workers": self.workers.len(),
            "peers": peers,
            "drops": drops,
            "rx_packets": sum(|w| w.rx_packets.load(Ordering::Relaxed)),
            "tx_packets": sum(|w| w.tx_packets.load(Ordering::Relaxed)),
            "handshakes_handled": self.handshakes.iter().map(|w| w.rx_packets.load(Ordering::Relaxed)).sum::<u64>(),
            "ha": self.shared.ha.get().map(|h| h.status(self.shared)),
        })
    }

    /// Write the snapshot to `path` via a temporary file and a rename, so readers never see a
    /// partial file.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&self.snapshot()).unwrap_or_default(),
        )?;
        std::fs::rename(&tmp, path)
    }
}
