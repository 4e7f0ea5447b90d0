//! Prometheus metrics and the health endpoint.
//!
//! The module knows nothing of the data path's types: whoever runs the gateway implements
//! [`MetricsSource`], which hands over a plain [`Snapshot`] of counters per scrape. Each scrape
//! turns that owned snapshot into text format 0.0.4 ([`render`]), so nothing is locked while
//! encoding and nothing is kept between scrapes. The gateway's own families are built fresh
//! with the `prometheus` crate and its `TextEncoder`; the per-peer families (three series a
//! peer, up to millions of lines) are written straight to the text format, since building
//! `prometheus` proto structs for them costs over ten times as much.
//!
//! Per-peer series use exactly the names and labels of the common WireGuard exporter
//! (`prometheus_wireguard_exporter`), so existing dashboards work unchanged:
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `wireguard_sent_bytes_total` | counter | `interface`, `public_key`, `allowed_ips` |
//! | `wireguard_received_bytes_total` | counter | `interface`, `public_key`, `allowed_ips` |
//! | `wireguard_latest_handshake_seconds` | gauge (UNIX time, 0 = never) | same |
//! | `sluice_worker_rx_packets_total` | counter | `worker` |
//! | `sluice_worker_tx_packets_total` | counter | `worker` |
//! | `sluice_worker_drops_total` | counter | `worker`, `reason` (every [`DropReason`]) |
//! | `sluice_worker_batch_size` | histogram | `worker` |
//! | `sluice_handshake_thread_handled_total` | counter | `thread` |
//! | `sluice_handshake_thread_sent_total` | counter | `thread` |
//! | `sluice_handshake_thread_drops_total` | counter | `thread`, `reason` |
//! | `sluice_xdp_verdicts_total` | counter | `verdict` (`redirect`, `pass`, `drop`), `reason` |
//! | `sluice_xsk_frames_total` | counter | `queue`, `direction` (`rx`, `tx`, `rx_kernel`, `tx_kernel`) |
//! | `sluice_xsk_umem_frames_lost` | gauge (must be 0) | `queue` |
//! | `sluice_xsk_kernel_drops_total` | counter | `queue`, `reason` (the kernel's `XDP_STATISTICS`) |
//! | `sluice_xdp_inner_verdicts_total` | counter | `verdict`, `reason` (appliance mode's inner-NIC program) |
//! | `sluice_xsk_inner_frames_total` | counter | `queue`, `direction` (`rx`, `tx`, `rx_kernel`, `tx_kernel`: through the TUN) |
//! | `sluice_xsk_inner_umem_frames_lost` | gauge (must be 0) | `queue` |
//! | `sluice_handshake_queue_depth` | gauge | |
//! | `sluice_under_load` | gauge (0/1) | |
//! | `sluice_cookie_replies_sent_total` | counter | |
//! | `sluice_udp_source_fallbacks_total` | counter | |
//! | `sluice_up` | gauge (always 1) | |
//! | `sluice_ha_role` | gauge (1 for the current role) | `role` (`master`, `backup`, `fault`, `active`) |
//! | `sluice_ha_sync_messages_total` | counter | `direction` (`sent`, `received`) |
//! | `sluice_ha_sessions_held` | gauge | |
//! | `sluice_ha_takeovers_total` | counter | |
//! | `sluice_ha_member_last_heard_seconds` | gauge (-1: never) | `member` |
//! | `sluice_ha_sync_drops_total` | counter | `reason` (`sync_forged`, `sync_replayed`, `sync_malformed`) |
//!
//! Rejected sync datagrams are [`DropReason`]s of the sync thread, in their own family (the
//! sync thread is no handshake thread); a dashboard adding up every drop sums
//! `sluice_worker_drops_total`, `sluice_handshake_thread_drops_total` and this one.
//!
//! [`MetricsServer`] serves `GET /metrics` and `GET /healthz` over a minimal HTTP/1.1
//! responder on a std `TcpListener`.

mod families;
mod http;

use crate::DropReason;

pub use families::{render, BATCH_SIZE_BUCKETS};
pub use http::MetricsServer;

/// The content type of the text exposition format served on `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How many peers get their own series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerSeries {
    /// Every peer (what the WireGuard exporter does).
    All,
    /// At most this many peers, the first ones in the source's order (stable across scrapes,
    /// so series don't churn).
    Cap(usize),
    /// No per-peer series at all.
    Off,
}

impl PeerSeries {
    /// The default cap: enough for a large site, bounded for a million-peer concentrator.
    pub const DEFAULT_CAP: usize = 10_000;

    /// How many of `n` peers get series.
    pub fn limit(self, n: usize) -> usize {
        match self {
            PeerSeries::All => n,
            PeerSeries::Cap(cap) => n.min(cap),
            PeerSeries::Off => 0,
        }
    }
}

impl Default for PeerSeries {
    fn default() -> Self {
        PeerSeries::Cap(Self::DEFAULT_CAP)
    }
}

/// One peer, as the data path sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSample {
    /// The peer's public key, base64 as `wg` prints it.
    pub public_key: String,
    /// Its allowed IPs as `addr/len`; exported comma-joined.
    pub allowed_ips: Vec<String>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// UNIX time of the last completed handshake, if any.
    pub last_handshake_unix: Option<u64>,
}

/// One data-path worker's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSample {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Drops indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
    /// `batch_sizes[n]` is how many batches held exactly `n` packets (an array increment on
    /// the data path; the histogram buckets are made at scrape time). Empty if not tracked.
    pub batch_sizes: Vec<u64>,
}

impl Default for WorkerSample {
    fn default() -> Self {
        WorkerSample {
            rx_packets: 0,
            tx_packets: 0,
            drops: [0; DropReason::COUNT],
            batch_sizes: Vec::new(),
        }
    }
}

/// One AF_XDP socket's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XskSample {
    pub queue: u32,
    pub rx: u64,
    pub tx: u64,
    pub rx_kernel: u64,
    pub tx_kernel: u64,
    pub lost: u64,
    /// What the kernel dropped, in `datapath::xsk::KERNEL_DROP_REASONS` order.
    pub kernel_drops: [u64; 5],
}

/// Everything one scrape reports. The source builds it without blocking the data path
/// (atomics, short per-peer locks); rendering then works on this owned copy only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The interface name (the `interface` label of the per-peer series).
    pub interface: String,
    /// Peers; the source may already have applied the [`PeerSeries`] it was given, and
    /// rendering applies it again.
    pub peers: Vec<PeerSample>,
    /// Data-path workers in index order; the index is the `worker` label.
    pub workers: Vec<WorkerSample>,
    /// Handshake threads in index order; the index is the `thread` label of their own
    /// families (`rx_packets`: handshake messages handled, `tx_packets`: messages sent; no
    /// batches).
    pub handshake_threads: Vec<WorkerSample>,
    /// XDP verdict counters `(verdict, reason, count)`; empty in socket mode.
    pub xdp: Vec<(String, String, u64)>,
    /// AF_XDP sockets in queue order: frames received, sent, received and sent through the
    /// kernel socket instead, and UMEM frames unaccounted for. Empty in socket mode.
    pub xsk: Vec<XskSample>,
    /// Appliance mode: the inner-NIC program's verdicts, and its AF_XDP sockets (`rx_kernel`
    /// / `tx_kernel`: packets read from or written to the TUN instead). Empty otherwise.
    pub xdp_inner: Vec<(String, String, u64)>,
    pub xsk_inner: Vec<XskSample>,
    pub handshake_queue_depth: u64,
    pub under_load: bool,
    pub cookie_replies_sent: u64,
    /// Datagrams the UDP sockets sent again without their source address because the host no
    /// longer had it.
    pub source_fallbacks: u64,
    /// HA group state, when the gateway runs with `[ha]`.
    pub ha: Option<HaSample>,
}

/// HA state for the `sluice_ha_*` families.
#[derive(Clone, Debug, PartialEq)]
pub struct HaSample {
    /// The current role (`sluice_ha_role{role}` is 1 for it, 0 for the others in `roles`).
    pub role: &'static str,
    pub roles: Vec<&'static str>,
    pub sync_sent: u64,
    pub sync_received: u64,
    pub sessions_held: u64,
    pub takeovers: u64,
    /// Other members: sync address and seconds since last heard (`None`: never).
    pub members: Vec<(String, Option<f64>)>,
    /// Sync datagrams rejected, by reason (the sync thread's drop counters).
    pub sync_drops: [u64; DropReason::COUNT],
}

impl Eq for HaSample {}

impl Default for HaSample {
    fn default() -> Self {
        HaSample {
            role: "",
            roles: Vec::new(),
            sync_sent: 0,
            sync_received: 0,
            sessions_held: 0,
            takeovers: 0,
            members: Vec::new(),
            sync_drops: [0; DropReason::COUNT],
        }
    }
}

/// What the metrics endpoint reads. Implemented by the running gateway (and by tests).
pub trait MetricsSource: Send + Sync {
    /// A snapshot of the counters. `per_peer` says how many peers will be exported, so the
    /// source need not copy peers that would be dropped.
    fn snapshot(&self, per_peer: PeerSeries) -> Snapshot;
    /// `Ok` when the gateway is healthy, otherwise why not (served on `/healthz` with 503).
    fn healthy(&self) -> Result<(), String>;
}
