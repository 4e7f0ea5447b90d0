//! The metrics endpoint over real HTTP on loopback: a fake source whose counters the test
//! controls, scraped with `TcpStream` and parsed by a strict text-format parser, so every
//! exported number is checked against what the source reported.

#![allow(clippy::unwrap_used)] // in a test, a panic is the report

mod prom_text;

use prom_text::{parse, Exposition};
use sluice::keys::encode_key;
use sluice::metrics::{
    render, MetricsServer, MetricsSource, PeerSample, PeerSeries, Snapshot, WorkerSample,
    BATCH_SIZE_BUCKETS,
};
use sluice::DropReason;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- the fake source

struct Fake {
    snap: Mutex<Snapshot>,
    health: Mutex<Result<(), String>>,
    asked: Mutex<Vec<PeerSeries>>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            snap: Mutex::default(),
            health: Mutex::new(Ok(())),
            asked: Mutex::default(),
        }
    }
}

impl MetricsSource for Fake {
    /// Returns every peer whatever `per_peer` says, so the tests see the renderer's own cap.
    fn snapshot(&self, per_peer: PeerSeries) -> Snapshot {
        self.asked.lock().unwrap().push(per_peer);
        self.snap.lock().unwrap().clone()
    }
    fn healthy(&self) -> Result<(), String> {
        self.health.lock().unwrap().clone()
    }
}

fn key(i: u64) -> String {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[31] = 0xa5;
    encode_key(&k)
}

fn peer(i: u64) -> PeerSample {
    PeerSample {
        public_key: key(i),
        allowed_ips: vec![
            format!("10.{}.{}.{}/32", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            format!("fd00::{i:x}/128"),
        ],
        rx_bytes: 1_000 + i,
        tx_bytes: 7_000_000 + 3 * i,
        last_handshake_unix: (!i.is_multiple_of(3)).then_some(1_760_000_000 + i),
    }
}

fn worker(seed: u64) -> WorkerSample {
    let mut w = WorkerSample {
        rx_packets: 100 * seed + 5,
        tx_packets: 90 * seed + 4,
        ..WorkerSample::default()
    };
    for (i, d) in w.drops.iter_mut().enumerate() {
        *d = seed * 1000 + i as u64;
    }
    w.batch_sizes = vec![0; 33];
    w.batch_sizes[1] = 10 * seed;
    w.batch_sizes[7] = 3;
    w.batch_sizes[32] = seed;
    w
}

fn sample_snapshot() -> Snapshot {
    Snapshot {
        interface: "sluice0".into(),
        peers: (1..=3).map(peer).collect(),
        workers: vec![worker(1), worker(2)],
        handshake_threads: vec![worker(3)],
        xdp: vec![
            ("pass".into(), "not_wireguard".into(), 11),
            ("redirect".into(), "wireguard".into(), 22),
        ],
        handshake_queue_depth: 17,
        under_load: true,
        cookie_replies_sent: 9,
        source_fallbacks: 4,
        ..Snapshot::default()
    }
}

// ---------------------------------------------------------------- server harness

struct Running {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(source: Arc<Fake>, per_peer: PeerSeries) -> Running {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .with_peer_series(per_peer);
        let addr = server.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || server.serve(source, &s));
        Running {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stop and wait; returns how long `serve` took to return.
    fn stop(&mut self) -> Duration {
        let t = Instant::now();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.take() {
            h.join().unwrap();
        }
        t.elapsed()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// Send raw bytes as one request, half-close, read the whole reply.
fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    // Generous: a debug build rendering 100,000 peers on a loaded 2-core machine is slow, and
    // this bounds a hang, it does not time anything.
    s.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
    s.write_all(request).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a reply head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = head.to_string();
    let length: usize = header(&headers, "content-length").unwrap().parse().unwrap();
    assert_eq!(length, body.len(), "Content-Length matches the body");
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/plain\r\n\r\n").as_bytes(),
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn scrape(addr: SocketAddr) -> Exposition {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        header(&r.headers, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&r.body)
}

// ---------------------------------------------------------------- the checks

/// Every exported number equals the snapshot's.
fn check_against(e: &Exposition, snap: &Snapshot) {
    for p in &snap.peers {
        let ips = p.allowed_ips.join(",");
        let l = [
            ("interface", snap.interface.as_str()),
            ("public_key", p.public_key.as_str()),
            ("allowed_ips", ips.as_str()),
        ];
        assert_eq!(e.value("wireguard_sent_bytes_total", &l), p.tx_bytes as f64);
        assert_eq!(
            e.value("wireguard_received_bytes_total", &l),
            p.rx_bytes as f64
        );
        let hs = p.last_handshake_unix.unwrap_or(0) as f64;
        assert_eq!(e.value("wireguard_latest_handshake_seconds", &l), hs);
    }
    for (i, w) in snap.workers.iter().enumerate() {
        let id = i.to_string();
        let wl = [("worker", id.as_str())];
        assert_eq!(
            e.value("sluice_worker_rx_packets_total", &wl),
            w.rx_packets as f64
        );
        assert_eq!(
            e.value("sluice_worker_tx_packets_total", &wl),
            w.tx_packets as f64
        );
        for r in DropReason::ALL {
            let l = [("worker", id.as_str()), ("reason", r.label())];
            let got = e.value("sluice_worker_drops_total", &l);
            assert_eq!(got, w.drops[r as usize] as f64, "{r:?}");
        }
        check_histogram(e, &id, &w.batch_sizes);
    }
    // Handshake threads have their own series, never `worker` ones.
    for (i, t) in snap.handshake_threads.iter().enumerate() {
        let id = i.to_string();
        let tl = [("thread", id.as_str())];
        assert_eq!(
            e.value("sluice_handshake_thread_handled_total", &tl),
            t.rx_packets as f64
        );
        assert_eq!(
            e.value("sluice_handshake_thread_sent_total", &tl),
            t.tx_packets as f64
        );
        for r in DropReason::ALL {
            let l = [("thread", id.as_str()), ("reason", r.label())];
            let got = e.value("sluice_handshake_thread_drops_total", &l);
            assert_eq!(got, t.drops[r as usize] as f64, "{r:?}");
        }
    }
    let workers: std::collections::BTreeSet<&str> = e
        .of("sluice_worker_rx_packets_total")
        .into_iter()
        .flat_map(|s| s.1.iter().filter(|(k, _)| k == "worker"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        workers.len(),
        snap.workers.len(),
        "worker series: {workers:?}"
    );
    for (v, r, n) in &snap.xdp {
        let got = e.value(
            "sluice_xdp_verdicts_total",
            &[("verdict", v), ("reason", r)],
        );
        assert_eq!(got, *n as f64);
    }
    let depth = snap.handshake_queue_depth as f64;
    assert_eq!(e.value("sluice_handshake_queue_depth", &[]), depth);
    let load = f64::from(u8::from(snap.under_load));
    assert_eq!(e.value("sluice_under_load", &[]), load);
    let cookies = snap.cookie_replies_sent as f64;
    assert_eq!(e.value("sluice_cookie_replies_sent_total", &[]), cookies);
    let fallbacks = snap.source_fallbacks as f64;
    assert_eq!(e.value("sluice_udp_source_fallbacks_total", &[]), fallbacks);
    assert_eq!(e.value("sluice_up", &[]), 1.0);
}

fn check_histogram(e: &Exposition, id: &str, counts: &[u64]) {
    let name = "sluice_worker_batch_size";
    let count: u64 = counts.iter().sum();
    let sum: u64 = counts.iter().enumerate().map(|(s, n)| s as u64 * n).sum();
    for bound in BATCH_SIZE_BUCKETS {
        let want: u64 = counts.iter().take(bound as usize + 1).sum();
        let le = bound.to_string();
        let got = e.value(&format!("{name}_bucket"), &[("worker", id), ("le", &le)]);
        assert_eq!(got, want as f64, "le={le}");
    }
    let inf = e.value(&format!("{name}_bucket"), &[("worker", id), ("le", "+Inf")]);
    assert_eq!(inf, count as f64);
    assert_eq!(
        e.value(&format!("{name}_count"), &[("worker", id)]),
        count as f64
    );
    assert_eq!(
        e.value(&format!("{name}_sum"), &[("worker", id)]),
        sum as f64
    );
}

/// Every family is there with its type, and nothing else.
fn check_types(e: &Exposition) {
    let expected = [
        ("wireguard_sent_bytes_total", "counter"),
        ("wireguard_received_bytes_total", "counter"),
        ("wireguard_latest_handshake_seconds", "gauge"),
        ("sluice_worker_rx_packets_total", "counter"),
        ("sluice_worker_tx_packets_total", "counter"),
        ("sluice_worker_drops_total", "counter"),
        ("sluice_worker_batch_size", "histogram"),
        ("sluice_handshake_thread_handled_total", "counter"),
        ("sluice_handshake_thread_sent_total", "counter"),
        ("sluice_handshake_thread_drops_total", "counter"),
        ("sluice_xdp_verdicts_total", "counter"),
        ("sluice_handshake_queue_depth", "gauge"),
        ("sluice_under_load", "gauge"),
        ("sluice_cookie_replies_sent_total", "counter"),
        ("sluice_udp_source_fallbacks_total", "counter"),
        ("sluice_up", "gauge"),
    ];
    for (name, t) in expected {
        assert_eq!(e.types.get(name).map(String::as_str), Some(t), "{name}");
        assert!(e.helps.contains_key(name), "{name} has HELP");
    }
    assert_eq!(e.types.len(), expected.len(), "{:?}", e.types);
}

/// Move every kind of counter by a known amount, returning the new snapshot.
fn move_counters(fake: &Fake) -> Snapshot {
    let mut s = fake.snap.lock().unwrap();
    s.peers[0].rx_bytes += 4096;
    s.peers[1].tx_bytes += 123_456_789;
    s.peers[2].last_handshake_unix = Some(1_760_000_999);
    s.workers[0].rx_packets += 31;
    s.workers[1].tx_packets += 7;
    s.workers[1].drops[DropReason::Replayed as usize] += 5;
    s.workers[0].batch_sizes[32] += 2;
    s.xdp[0].2 += 1;
    s.handshake_threads[0].drops[DropReason::HandshakeFailed as usize] += 4;
    s.handshake_threads[0].rx_packets += 2;
    s.handshake_queue_depth = 0;
    s.under_load = false;
    s.cookie_replies_sent += 3;
    s.clone()
}

#[test]
fn metrics_equal_the_source_and_move_exactly_as_it_does() {
    let fake = Arc::new(Fake::default());
    *fake.snap.lock().unwrap() = sample_snapshot();
    let server = Running::start(fake.clone(), PeerSeries::All);

    let before = scrape(server.addr);
    check_types(&before);
    // The exporter's label order, so dashboards' label matching and legends are the same.
    let first = before.of("wireguard_sent_bytes_total")[0];
    let names: Vec<&str> = first.1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["interface", "public_key", "allowed_ips"]);
    let drops = before.of("sluice_worker_drops_total").len();
    assert_eq!(drops, 2 * DropReason::COUNT);
    check_against(&before, &sample_snapshot());

    // The scrape moves by exactly what the source moved.
    let moved = move_counters(&fake);
    let after = scrape(server.addr);
    check_against(&after, &moved);
    let delta = |name: &str, l: &[(&str, &str)]| after.value(name, l) - before.value(name, l);
    let replayed = [("worker", "1"), ("reason", DropReason::Replayed.label())];
    assert_eq!(delta("sluice_worker_drops_total", &replayed), 5.0);
    let other = [("worker", "1"), ("reason", DropReason::NoRoute.label())];
    assert_eq!(delta("sluice_worker_drops_total", &other), 0.0);
    let w0 = [("worker", "0")];
    assert_eq!(delta("sluice_worker_rx_packets_total", &w0), 31.0);
    assert_eq!(delta("sluice_worker_batch_size_count", &w0), 2.0);
    assert_eq!(delta("sluice_cookie_replies_sent_total", &[]), 3.0);
    let p1 = &moved.peers[1];
    let ips = p1.allowed_ips.join(",");
    let l = [
        ("interface", "sluice0"),
        ("public_key", &p1.public_key),
        ("allowed_ips", &ips),
    ];
    assert_eq!(delta("wireguard_sent_bytes_total", &l), 123_456_789.0);
}

fn peer_series(e: &Exposition) -> Vec<String> {
    let keys: Vec<String> = e
        .of("wireguard_sent_bytes_total")
        .iter()
        .map(|s| s.1[1].1.clone())
        .collect();
    for name in [
        "wireguard_received_bytes_total",
        "wireguard_latest_handshake_seconds",
    ] {
        assert_eq!(e.of(name).len(), keys.len(), "{name}");
    }
    keys
}

#[test]
fn per_peer_series_all_cap_and_off() {
    let fake = Arc::new(Fake::default());
    let mut snap = sample_snapshot();
    snap.peers = (1..=10).map(peer).collect();
    *fake.snap.lock().unwrap() = snap.clone();
    let all: Vec<String> = snap.peers.iter().map(|p| p.public_key.clone()).collect();

    for (mode, want) in [
        (PeerSeries::All, all.clone()),
        (PeerSeries::Cap(3), all[..3].to_vec()),
        (PeerSeries::Cap(50), all.clone()),
        (PeerSeries::Off, Vec::new()),
    ] {
        let server = Running::start(fake.clone(), mode);
        let e = scrape(server.addr);
        let mut got = peer_series(&e);
        got.sort();
        let mut want = want;
        want.sort();
        assert_eq!(got, want, "{mode:?}");
        assert_eq!(e.value("sluice_up", &[]), 1.0);
        assert_eq!(
            fake.asked.lock().unwrap().last(),
            Some(&mode),
            "source told"
        );
        if mode == PeerSeries::Off {
            assert!(!e.types.contains_key("wireguard_sent_bytes_total"));
        }
    }
}

#[test]
fn healthz_follows_the_source() {
    let fake = Arc::new(Fake::default());
    let server = Running::start(fake.clone(), PeerSeries::All);
    let r = get(server.addr, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    *fake.health.lock().unwrap() = Err("worker 1 has not run its loop for over 5s".into());
    let r = get(server.addr, "/healthz");
    assert_eq!(r.status, 503);
    assert!(
        r.body.contains("worker 1 has not run its loop"),
        "{}",
        r.body
    );
    // Metrics still answer while unhealthy (sluice_up says the process is there).
    assert_eq!(get(server.addr, "/metrics").status, 200);

    *fake.health.lock().unwrap() = Ok(());
    assert_eq!(get(server.addr, "/healthz?probe=1").status, 200);
}

#[test]
fn bad_requests_are_refused_and_the_server_carries_on() {
    let fake = Arc::new(Fake::default());
    *fake.snap.lock().unwrap() = sample_snapshot();
    let server = Running::start(fake, PeerSeries::All);
    let addr = server.addr;
    // An idle connection holds one handler; the others keep serving.
    let _idle = TcpStream::connect(addr).unwrap();

    let mut oversized = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while oversized.len() < 64 * 1024 {
        oversized.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", b"\x16\x03\x01 hello\r\n\r\n".to_vec(), 400),
        ("no version", b"GET /metrics\r\n\r\n".to_vec(), 400),
        (
            "bad version",
            b"GET /metrics HTTP/9.9\r\n\r\n".to_vec(),
            400,
        ),
        ("bad target", b"GET metrics HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("not utf-8", b"GET /\xff\xfe HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            "bad header",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n".to_vec(),
            400,
        ),
        (
            "truncated",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec(),
            400,
        ),
        ("oversized", oversized, 400),
        ("unknown path", b"GET /nope HTTP/1.1\r\n\r\n".to_vec(), 404),
        ("post", b"POST /metrics HTTP/1.1\r\n\r\n".to_vec(), 405),
        ("bare LF", b"GET /healthz HTTP/1.0\n\n".to_vec(), 200),
    ];
    for (what, request, status) in cases {
        let r = raw(addr, &request);
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert_eq!(header(&r.headers, "connection"), Some("close"), "{what}");
        // ...and the server still answers a good request.
        assert_eq!(scrape(addr).value("sluice_up", &[]), 1.0, "after {what}");
    }
    // A client that connects and leaves without a word gets nothing and harms nothing.
    drop(TcpStream::connect(addr).unwrap());
    assert_eq!(get(addr, "/healthz").status, 200);
}

#[test]
fn stop_is_honoured_promptly_even_with_a_connection_open() {
    let fake = Arc::new(Fake::default());
    let mut server = Running::start(fake, PeerSeries::All);
    let idle = TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100)); // let the handler start reading
    let took = server.stop();
    println!("serve returned {took:?} after stop");
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    drop(idle);
}

#[test]
fn scrape_of_100k_peers() {
    const PEERS: u64 = 100_000;
    let mut snap = sample_snapshot();
    snap.peers = (0..PEERS).map(peer).collect();
    let snap_for_check = snap.clone();

    let t = Instant::now();
    let body = render(&snap, PeerSeries::All).unwrap();
    let rendered = t.elapsed();

    let fake = Arc::new(Fake::default());
    *fake.snap.lock().unwrap() = snap;
    let server = Running::start(fake, PeerSeries::All);
    let t = Instant::now();
    let r = get(server.addr, "/metrics");
    let over_http = t.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    println!(
        "100k peers: render {rendered:?}, HTTP scrape (snapshot copy + render + transfer) \
         {over_http:?}, body {} MB, {} build",
        r.body.len() / 1_000_000,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let e = parse(&r.body);
    assert_eq!(peer_series(&e).len(), PEERS as usize);
    let mut s = snap_for_check;
    s.peers = vec![
        s.peers[0].clone(),
        s.peers[54_321].clone(),
        s.peers[99_999].clone(),
    ];
    check_against(&e, &s);
}

// ---------------------------------------------------------------- configs/

const EXPORTED: [&str; 16] = [
    "wireguard_sent_bytes_total",
    "wireguard_received_bytes_total",
    "wireguard_latest_handshake_seconds",
    "sluice_worker_rx_packets_total",
    "sluice_worker_tx_packets_total",
    "sluice_worker_drops_total",
    "sluice_worker_batch_size",
    "sluice_handshake_thread_handled_total",
    "sluice_handshake_thread_sent_total",
    "sluice_handshake_thread_drops_total",
    "sluice_xdp_verdicts_total",
    "sluice_handshake_queue_depth",
    "sluice_under_load",
    "sluice_cookie_replies_sent_total",
    "sluice_up",
    "sluice_ha_sync_drops_total",
];

fn config(name: &str) -> String {
    let path = format!("{}/../configs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `wireguard_*` / `sluice_*` name in a query is one we export.
fn check_names(query: &str) -> usize {
    let mut found = 0;
    for word in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !(word.starts_with("wireguard_") || word.starts_with("sluice_")) {
            continue;
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| word.strip_suffix(s))
            .filter(|b| *b == "sluice_worker_batch_size")
            .unwrap_or(word);
        assert!(EXPORTED.contains(&base), "{word} is not exported: {query}");
        found += 1;
    }
    found
}

#[test]
fn grafana_dashboard_is_valid_and_uses_exported_metrics() {
    let dash: serde_json::Value = serde_json::from_str(&config("grafana-dashboard.json")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    for e in &exprs {
        assert!(check_names(e) > 0, "{e}");
    }
    let all = exprs.join("\n");
    for m in [
        "wireguard_sent_bytes_total",
        "wireguard_received_bytes_total",
        "wireguard_latest_handshake_seconds",
        "sluice_worker_rx_packets_total",
        "sluice_worker_tx_packets_total",
        "sluice_worker_drops_total",
        "sluice_handshake_queue_depth",
        "sluice_under_load",
    ] {
        assert!(all.contains(m), "no panel shows {m}");
    }
    // The drops panel adds up every thread's drops: workers, handshake threads, HA sync.
    assert!(
        exprs.iter().any(|e| [
            "sluice_worker_drops_total",
            "sluice_handshake_thread_drops_total",
            "sluice_ha_sync_drops_total"
        ]
        .iter()
        .all(|m| e.contains(m))),
        "no panel sums every drop family"
    );
}

fn yaml(name: &str) -> yaml_rust2::Yaml {
    let mut docs = yaml_rust2::YamlLoader::load_from_str(&config(name)).unwrap();
    assert_eq!(docs.len(), 1, "{name}");
    docs.remove(0)
}

#[test]
fn prometheus_alerts_are_valid_yaml_rules() {
    let doc = yaml("prometheus-alerts.yml");
    let groups = doc["groups"].as_vec().unwrap();
    let mut alerts = Vec::new();
    for g in groups {
        assert!(g["name"].as_str().is_some());
        for rule in g["rules"].as_vec().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            let expr = rule["expr"].as_str().unwrap();
            assert!(check_names(expr) > 0, "{name}: {expr}");
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name}");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
            if let Some(f) = rule["for"].as_str() {
                assert!(f.ends_with('m') || f.ends_with('s'), "{name}: for {f}");
            }
            alerts.push((name.to_string(), expr.to_string()));
        }
    }
    let has = |needle: &str| alerts.iter().any(|(_, e)| e.contains(needle));
    assert!(
        has("wireguard_latest_handshake_seconds"),
        "stale handshake alert"
    );
    assert!(has("sluice_worker_drops_total"), "drops alert");
    assert!(
        alerts
            .iter()
            .any(|(_, e)| e.contains("sluice_handshake_thread_drops_total")
                && e.contains("sluice_ha_sync_drops_total")),
        "the drops alert adds up handshake-thread and HA sync drops"
    );
    assert!(has("sluice_under_load"), "under-load alert");
    assert!(
        has("sluice_up") && has("sluice_worker_rx_packets_total"),
        "down/stalled"
    );
}

#[test]
fn prometheus_scrape_config_is_valid_yaml() {
    let doc = yaml("prometheus-scrape.yml");
    let job = &doc["scrape_configs"].as_vec().unwrap()[0];
    assert_eq!(job["job_name"].as_str(), Some("sluice"));
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    let targets = job["static_configs"][0]["targets"].as_vec().unwrap();
    for t in targets {
        t.as_str().unwrap().parse::<SocketAddr>().unwrap();
    }
}
