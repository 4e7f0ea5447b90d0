//! Turning a [`Snapshot`] into metric families and text.

use super::{PeerSample, PeerSeries, Snapshot, WorkerSample};
use crate::DropReason;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::TextEncoder;
use std::fmt::Write as _;

/// Upper bounds of the `sluice_worker_batch_size` buckets (packets per batch).
pub const BATCH_SIZE_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// Encode the snapshot in the text format 0.0.4.
pub fn render(snap: &Snapshot, per_peer: PeerSeries) -> Result<String, prometheus::Error> {
    let peers = &snap.peers[..per_peer.limit(snap.peers.len())];
    // About 120 bytes a peer series plus its label values; reserving avoids re-copying.
    let label_bytes: usize = peers
        .iter()
        .map(|p| p.public_key.len() + p.allowed_ips.iter().map(|a| a.len() + 1).sum::<usize>())
        .sum();
    let mut out = String::with_capacity(16 * 1024 + 3 * (peers.len() * 120 + label_bytes));
    write_peer_families(&mut out, &snap.interface, peers);
    TextEncoder::new().encode_utf8(&families(snap), &mut out)?;
    Ok(out)
}

/// The gateway's own metric families of one scrape (everything but the per-peer series),
/// freshly built from the snapshot. Families without samples (no workers, no XDP verdicts)
/// are left out: the text format has no empty family.
fn families(snap: &Snapshot) -> Vec<MetricFamily> {
    let mut mfs = worker_families(&snap.workers);
    mfs.extend(handshake_thread_families(&snap.handshake_threads));
    if let Some(ha) = &snap.ha {
        mfs.extend(ha_families(ha));
    }
    mfs.push(family(
        "sluice_xdp_verdicts_total",
        "Packets the XDP program gave each verdict",
        MetricType::COUNTER,
        snap.xdp
            .iter()
            .map(|(v, r, n)| counter(labels(&[("verdict", v), ("reason", r)]), *n))
            .collect(),
    ));
    mfs.push(family(
        "sluice_xsk_frames_total",
        "Frames through each AF_XDP socket (rx, tx), and datagrams its worker received or sent through the kernel socket instead (rx_kernel, tx_kernel)",
        MetricType::COUNTER,
        xsk_frames(&snap.xsk),
    ));
    mfs.push(family(
        "sluice_xsk_umem_frames_lost",
        "UMEM frames of each AF_XDP socket in no known place (free, fill ring, tx ring); must be 0",
        MetricType::GAUGE,
        xsk_lost(&snap.xsk),
    ));
    mfs.push(family(
        "sluice_xsk_kernel_drops_total",
        "Packets the kernel dropped on each AF_XDP socket (rx ring full, fill ring empty, ...), from XDP_STATISTICS",
        MetricType::COUNTER,
        snap.xsk
            .iter()
            .flat_map(|x| {
                let q = x.queue.to_string();
                crate::datapath::xsk::KERNEL_DROP_REASONS
                    .iter()
                    .zip(x.kernel_drops)
                    .map(move |(r, n)| counter(labels(&[("queue", &q), ("reason", r)]), n))
            })
            .collect(),
    ));
    mfs.push(family(
        "sluice_xdp_inner_verdicts_total",
        "Packets the inner-NIC XDP program (appliance mode) gave each verdict",
        MetricType::COUNTER,
        snap.xdp_inner
            .iter()
            .map(|(v, r, n)| counter(labels(&[("verdict", v), ("reason", r)]), *n))
            .collect(),
    ));
    mfs.push(family(
        "sluice_xsk_inner_frames_total",
        "Frames through each inner-NIC AF_XDP socket (rx, tx), and packets its worker read from or wrote to the TUN instead (rx_kernel, tx_kernel)",
        MetricType::COUNTER,
        xsk_frames(&snap.xsk_inner),
    ));
    mfs.push(family(
        "sluice_xsk_inner_umem_frames_lost",
        "UMEM frames of each inner-NIC AF_XDP socket in no known place; must be 0",
        MetricType::GAUGE,
        xsk_lost(&snap.xsk_inner),
    ));
    mfs.extend(gateway_families(snap));
    mfs.retain(|mf| !mf.get_metric().is_empty());
    mfs
}

/// Frames per AF_XDP socket and direction.
fn xsk_frames(xsk: &[crate::metrics::XskSample]) -> Vec<Metric> {
    xsk.iter()
        .flat_map(|x| {
            let q = x.queue.to_string();
            [
                ("rx", x.rx),
                ("tx", x.tx),
                ("rx_kernel", x.rx_kernel),
                ("tx_kernel", x.tx_kernel),
            ]
            .map(|(d, n)| counter(labels(&[("queue", &q), ("direction", d)]), n))
        })
        .collect()
}

/// UMEM frames lost per AF_XDP socket.
fn xsk_lost(xsk: &[crate::metrics::XskSample]) -> Vec<Metric> {
    xsk.iter()
        .map(|x| gauge(labels(&[("queue", &x.queue.to_string())]), x.lost as f64))
        .collect()
}

/// The per-peer families, named, labelled and typed exactly as prometheus_wireguard_exporter
/// does, written straight to text (the same format `TextEncoder` writes).
fn write_peer_families(out: &mut String, interface: &str, peers: &[PeerSample]) {
    if peers.is_empty() {
        return;
    }
    type Value = fn(&PeerSample) -> u64;
    let families: [(&str, &str, &str, Value); 3] = [
        (
            "wireguard_sent_bytes_total",
            "Bytes sent to the peer",
            "counter",
            |p| p.tx_bytes,
        ),
        (
            "wireguard_received_bytes_total",
            "Bytes received from the peer",
            "counter",
            |p| p.rx_bytes,
        ),
        (
            "wireguard_latest_handshake_seconds",
            "Seconds from the last handshake",
            "gauge",
            |p| p.last_handshake_unix.unwrap_or(0),
        ),
    ];
    for (name, help, kind, value) in families {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for p in peers {
            out.push_str(name);
            out.push_str("{interface=\"");
            push_escaped(out, interface);
            out.push_str("\",public_key=\"");
            push_escaped(out, &p.public_key);
            out.push_str("\",allowed_ips=\"");
            for (i, ip) in p.allowed_ips.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_escaped(out, ip);
            }
            let _ = writeln!(out, "\"}} {}", value(p));
        }
    }
}

/// A label value escaped for the text format: backslash, double quote and newline.
fn push_escaped(out: &mut String, v: &str) {
    if !v.contains(['\\', '"', '\n']) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn worker_families(workers: &[WorkerSample]) -> Vec<MetricFamily> {
    let mut rx = Vec::with_capacity(workers.len());
    let mut tx = Vec::with_capacity(workers.len());
    let mut drops = Vec::with_capacity(workers.len() * DropReason::COUNT);
    let mut batches = Vec::with_capacity(workers.len());
    for (i, w) in workers.iter().enumerate() {
        let id = i.to_string();
        rx.push(counter(labels(&[("worker", &id)]), w.rx_packets));
        tx.push(counter(labels(&[("worker", &id)]), w.tx_packets));
        for r in DropReason::ALL {
            let l = labels(&[("worker", &id), ("reason", r.label())]);
            drops.push(counter(l, w.drops[r as usize]));
        }
        let mut m = Metric::from_label(labels(&[("worker", &id)]));
        m.set_histogram(batch_histogram(&w.batch_sizes));
        batches.push(m);
    }
    vec![
        family(
            "sluice_worker_rx_packets_total",
            "Packets a data-path worker received (outer and inner side)",
            MetricType::COUNTER,
            rx,
        ),
        family(
            "sluice_worker_tx_packets_total",
            "Packets a data-path worker sent (outer and inner side)",
            MetricType::COUNTER,
            tx,
        ),
        family(
            "sluice_worker_drops_total",
            "Packets a data-path worker dropped, by reason",
            MetricType::COUNTER,
            drops,
        ),
        family(
            "sluice_worker_batch_size",
            "Packets per batch a data-path worker processed",
            MetricType::HISTOGRAM,
            batches,
        ),
    ]
}

/// The handshake threads' own families: apart from the data-path workers', so a handshake
/// thread (which handles few messages) never looks like a stalled worker.
fn handshake_thread_families(threads: &[WorkerSample]) -> Vec<MetricFamily> {
    let mut handled = Vec::with_capacity(threads.len());
    let mut sent = Vec::with_capacity(threads.len());
    let mut drops = Vec::with_capacity(threads.len() * DropReason::COUNT);
    for (i, t) in threads.iter().enumerate() {
        let id = i.to_string();
        handled.push(counter(labels(&[("thread", &id)]), t.rx_packets));
        sent.push(counter(labels(&[("thread", &id)]), t.tx_packets));
        for r in DropReason::ALL {
            let l = labels(&[("thread", &id), ("reason", r.label())]);
            drops.push(counter(l, t.drops[r as usize]));
        }
    }
    vec![
        family(
            "sluice_handshake_thread_handled_total",
            "Handshake messages a handshake thread processed to the end",
            MetricType::COUNTER,
            handled,
        ),
        family(
            "sluice_handshake_thread_sent_total",
            "Handshake messages (responses, initiations, cookie replies) a handshake thread sent",
            MetricType::COUNTER,
            sent,
        ),
        family(
            "sluice_handshake_thread_drops_total",
            "Handshake messages a handshake thread dropped, by reason",
            MetricType::COUNTER,
            drops,
        ),
    ]
}

/// Cumulative buckets from exact-size counts (`counts[n]` batches of `n` packets).
fn batch_histogram(counts: &[u64]) -> Histogram {
    let mut cumulative = vec![0u64; BATCH_SIZE_BUCKETS.len()];
    let (mut total, mut sum) = (0u64, 0u64);
    for (size, &n) in counts.iter().enumerate() {
        total = total.saturating_add(n);
        sum = sum.saturating_add((size as u64).saturating_mul(n));
        for (c, &bound) in cumulative.iter_mut().zip(&BATCH_SIZE_BUCKETS) {
            if size as u64 <= bound {
                *c = c.saturating_add(n);
            }
        }
    }
    let mut h = Histogram::default();
    h.set_sample_count(total);
    h.set_sample_sum(sum as f64);
    h.set_bucket(
        BATCH_SIZE_BUCKETS
            .iter()
            .zip(cumulative)
            .map(|(&bound, count)| {
                let mut b = Bucket::default();
                b.set_upper_bound(bound as f64);
                b.set_cumulative_count(count);
                b
            })
            .collect(),
    );
    h
}

fn gateway_families(snap: &Snapshot) -> Vec<MetricFamily> {
    let one = |name: &str, help: &str, t: MetricType, v: u64| {
        let m = if t == MetricType::COUNTER {
            counter(Vec::new(), v)
        } else {
            gauge(Vec::new(), v as f64)
        };
        family(name, help, t, vec![m])
    };
    vec![
        one(
            "sluice_handshake_queue_depth",
            "Handshake messages waiting for the handshake threads",
            MetricType::GAUGE,
            snap.handshake_queue_depth,
        ),
        one(
            "sluice_under_load",
            "1 while handshakes are under load (cookies required), else 0",
            MetricType::GAUGE,
            u64::from(snap.under_load),
        ),
        one(
            "sluice_cookie_replies_sent_total",
            "Cookie replies sent to initiators while under load",
            MetricType::COUNTER,
            snap.cookie_replies_sent,
        ),
        one(
            "sluice_udp_source_fallbacks_total",
            "Datagrams sent again from the kernel's choice of source address because the address the peer last reached us on was gone from the host",
            MetricType::COUNTER,
            snap.source_fallbacks,
        ),
        one(
            "sluice_up",
            "1 while the gateway serves metrics",
            MetricType::GAUGE,
            1,
        ),
    ]
}

/// The `sluice_ha_*` families.
fn ha_families(ha: &crate::metrics::HaSample) -> Vec<MetricFamily> {
    vec![
        family(
            "sluice_ha_role",
            "1 for this gateway's current HA role",
            MetricType::GAUGE,
            ha.roles
                .iter()
                .map(|r| gauge(labels(&[("role", r)]), f64::from(u8::from(*r == ha.role))))
                .collect(),
        ),
        family(
            "sluice_ha_sync_messages_total",
            "HA sync datagrams sent to and accepted from the other members",
            MetricType::COUNTER,
            vec![
                counter(labels(&[("direction", "sent")]), ha.sync_sent),
                counter(labels(&[("direction", "received")]), ha.sync_received),
            ],
        ),
        family(
            "sluice_ha_sessions_held",
            "Sessions held for other members (not taken over)",
            MetricType::GAUGE,
            vec![gauge(Vec::new(), ha.sessions_held as f64)],
        ),
        family(
            "sluice_ha_takeovers_total",
            "Sessions taken over from other members",
            MetricType::COUNTER,
            vec![counter(Vec::new(), ha.takeovers)],
        ),
        family(
            "sluice_ha_member_last_heard_seconds",
            "Seconds since each other member was last heard on the sync channel (-1: never)",
            MetricType::GAUGE,
            ha.members
                .iter()
                .map(|(m, s)| gauge(labels(&[("member", m)]), s.unwrap_or(-1.0)))
                .collect(),
        ),
        family(
            "sluice_ha_sync_drops_total",
            "HA sync datagrams the sync thread rejected, by reason",
            MetricType::COUNTER,
            DropReason::SYNC
                .iter()
                .map(|&r| counter(labels(&[("reason", r.label())]), ha.sync_drops[r as usize]))
                .collect(),
        ),
    ]
}

fn family(name: &str, help: &str, t: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(name.to_string());
    mf.set_help(help.to_string());
    mf.set_field_type(t);
    mf.set_metric(metrics);
    mf
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn counter(labels: Vec<LabelPair>, value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u64) -> PeerSample {
        PeerSample {
            public_key: format!("key{i}="),
            allowed_ips: vec![format!("10.0.0.{i}/32"), "fd00::/64".into()],
            rx_bytes: i,
            tx_bytes: 2 * i,
            last_handshake_unix: (i > 1).then_some(1_700_000_000 + i),
        }
    }

    #[test]
    fn names_and_label_names_are_valid() {
        let snap = Snapshot {
            interface: "sl0".into(),
            peers: vec![peer(1)],
            workers: vec![WorkerSample::default()],
            xdp: vec![("pass".into(), "arp".into(), 3)],
            xsk: vec![crate::metrics::XskSample::default()],
            xdp_inner: vec![("redirect".into(), "xsk".into(), 4)],
            xsk_inner: vec![crate::metrics::XskSample {
                queue: 1,
                tx: 9,
                ..Default::default()
            }],
            ..Snapshot::default()
        };
        let text = render(&snap, PeerSeries::All).unwrap();
        assert!(
            text.contains(
                "sluice_xdp_inner_verdicts_total{verdict=\"redirect\",reason=\"xsk\"} 4\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("sluice_xsk_inner_frames_total{queue=\"1\",direction=\"tx\"} 9\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_xsk_inner_umem_frames_lost{queue=\"1\"} 0\n"),
            "{text}"
        );
        let peer_labels = ["interface", "public_key", "allowed_ips"].map(String::from);
        for name in [
            "wireguard_sent_bytes_total",
            "wireguard_received_bytes_total",
            "wireguard_latest_handshake_seconds",
        ] {
            let labels = peer_labels.to_vec();
            prometheus::core::Desc::new(name.into(), "h".into(), labels, Default::default())
                .unwrap();
        }
        for mf in families(&snap) {
            let names: Vec<String> = mf.get_metric()[0]
                .get_label()
                .iter()
                .map(|l| l.name().to_string())
                .collect();
            prometheus::core::Desc::new(mf.name().into(), "h".into(), names, Default::default())
                .unwrap();
        }
    }

    #[test]
    fn peer_labels_match_the_wireguard_exporter() {
        let snap = Snapshot {
            interface: "sl0".into(),
            peers: vec![peer(1), peer(2)],
            ..Snapshot::default()
        };
        let text = render(&snap, PeerSeries::All).unwrap();
        assert!(text.contains(
            "wireguard_sent_bytes_total{interface=\"sl0\",public_key=\"key1=\",\
             allowed_ips=\"10.0.0.1/32,fd00::/64\"} 2\n"
        ));
        assert!(text.contains("wireguard_latest_handshake_seconds{interface=\"sl0\",public_key=\"key1=\",allowed_ips=\"10.0.0.1/32,fd00::/64\"} 0\n"));
        assert!(text
            .contains("public_key=\"key2=\",allowed_ips=\"10.0.0.2/32,fd00::/64\"} 1700000002\n"));
    }

    /// The hand-written per-peer text is what `TextEncoder` writes for the same families.
    #[test]
    fn peer_text_matches_the_text_encoder() {
        let (interface, peers) = ("w\\g\"0\n", [peer(1), peer(2), peer(3)]);
        let mut mine = String::new();
        write_peer_families(&mut mine, interface, &peers);
        type Value = fn(&PeerSample) -> f64;
        let specs: [(&str, &str, MetricType, Value); 3] = [
            (
                "wireguard_sent_bytes_total",
                "Bytes sent to the peer",
                MetricType::COUNTER,
                |p| p.tx_bytes as f64,
            ),
            (
                "wireguard_received_bytes_total",
                "Bytes received from the peer",
                MetricType::COUNTER,
                |p| p.rx_bytes as f64,
            ),
            (
                "wireguard_latest_handshake_seconds",
                "Seconds from the last handshake",
                MetricType::GAUGE,
                |p| p.last_handshake_unix.unwrap_or(0) as f64,
            ),
        ];
        let mfs: Vec<MetricFamily> = specs
            .iter()
            .map(|&(name, help, t, value)| {
                let metrics = peers
                    .iter()
                    .map(|p| {
                        let ips = p.allowed_ips.join(",");
                        let l = labels(&[
                            ("interface", interface),
                            ("public_key", &p.public_key),
                            ("allowed_ips", &ips),
                        ]);
                        match t {
                            MetricType::COUNTER => counter(l, value(p) as u64),
                            _ => gauge(l, value(p)),
                        }
                    })
                    .collect();
                family(name, help, t, metrics)
            })
            .collect();
        let theirs = TextEncoder::new().encode_to_string(&mfs).unwrap();
        assert_eq!(mine, theirs);
    }

    #[test]
    fn label_values_are_escaped() {
        let snap = Snapshot {
            interface: "a\\b\"c\nd".into(),
            peers: vec![peer(1)],
            ..Snapshot::default()
        };
        let text = render(&snap, PeerSeries::All).unwrap();
        assert!(text.contains("{interface=\"a\\\\b\\\"c\\nd\",public_key="));
    }

    #[test]
    fn peer_series_are_capped() {
        let snap = Snapshot {
            peers: (1..=5).map(peer).collect(),
            ..Snapshot::default()
        };
        let count = |mode| {
            let text = render(&snap, mode).unwrap();
            text.matches("wireguard_sent_bytes_total{").count()
        };
        assert_eq!(count(PeerSeries::All), 5);
        assert_eq!(count(PeerSeries::Cap(2)), 2);
        assert_eq!(count(PeerSeries::Off), 0);
    }

    #[test]
    fn batch_histogram_is_cumulative() {
        let mut counts = vec![0u64; 33];
        counts[1] = 5;
        counts[3] = 2;
        counts[32] = 1;
        let h = batch_histogram(&counts);
        let got: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(got, vec![5, 5, 7, 7, 7, 8, 8, 8]);
        assert_eq!(h.get_sample_count(), 8);
        assert_eq!(h.get_sample_sum(), (5 + 6 + 32) as f64);
    }

    #[test]
    fn sync_rejections_have_their_own_family() {
        let mut ha = crate::metrics::HaSample {
            role: "backup",
            roles: vec!["backup", "master"],
            ..Default::default()
        };
        ha.sync_drops[DropReason::SyncForged as usize] = 3;
        ha.sync_drops[DropReason::SyncReplayed as usize] = 2;
        let snap = Snapshot {
            handshake_threads: vec![WorkerSample::default()],
            ha: Some(ha),
            ..Snapshot::default()
        };
        let text = render(&snap, PeerSeries::All).unwrap();
        for (reason, n) in [
            ("sync_forged", 3),
            ("sync_replayed", 2),
            ("sync_malformed", 0),
        ] {
            let line = format!("sluice_ha_sync_drops_total{{reason=\"{reason}\"}} {n}\n");
            assert!(text.contains(&line), "{line}{text}");
        }
        // One thread label only: the handshake thread's.
        assert!(text.contains("sluice_handshake_thread_drops_total{thread=\"0\""));
        assert!(!text.contains("thread=\"1\""), "{text}");
    }

    #[test]
    fn empty_snapshot_renders() {
        let text = render(&Snapshot::default(), PeerSeries::All).unwrap();
        assert!(text.contains("sluice_up 1\n"));
        assert!(!text.contains("wireguard_"));
        assert!(!text.contains("sluice_xdp_verdicts_total"));
    }
}
