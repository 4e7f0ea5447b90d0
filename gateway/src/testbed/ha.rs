//! Pieces of the high-availability test beds: the deployable templates in `configs/` rendered
//! with python3-jinja2 exactly as Ansible renders them, Linux bridges, a keepalived process
//! guard, and a streaming UDP probe that measures the gap and the loss a failover causes.
//!
//! The VRRP pair built from these is [`super::vrrp`].

use super::{cmd, fatal, wait_for, Context, Daemon, Netns, Result, RunDir};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The repository's `configs/` folder: the templates users deploy and the tests render.
pub fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// The Python program that renders a template as Ansible's `template` module does (Jinja2
/// with `trim_blocks`, undefined variables an error), from a JSON object of variables.
const RENDER_PY: &str = r#"
import json, sys
import jinja2
template, variables, out = sys.argv[1:4]
import os
env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.dirname(os.path.abspath(template))),
    undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=False)
with open(variables) as f:
    values = json.load(f)
text = env.get_template(os.path.basename(template)).render(**values)
with open(out, "w") as f:
    f.write(text + "\n")
"#;

/// Render `template` (a Jinja2 file, e.g. `configs/keepalived.conf.j2`) with `vars` into
/// `out`, through `python3` and its `jinja2` module (Debian: python3-jinja2). The variables
/// are written next to `out` as `<out>.vars.json` for post-mortems.
pub fn render_template(template: &Path, vars: &serde_json::Value, out: &Path) -> Result<()> {
    let vars_path = PathBuf::from(format!("{}.vars.json", out.display()));
    let text = serde_json::to_string_pretty(vars).ctx(|| "encoding template variables")?;
    std::fs::write(&vars_path, text).ctx(|| format!("writing {}", vars_path.display()))?;
    let mut c = std::process::Command::new("python3");
    c.arg("-c")
        .arg(RENDER_PY)
        .arg(template)
        .arg(&vars_path)
        .arg(out);
    cmd::check(c, cmd::SHORT).map_err(|e| {
        err!(
            "rendering {} with python3-jinja2 (apt-get install python3-jinja2): {e}",
            template.display()
        )
    })?;
    Ok(())
}

/// A Linux bridge `name` inside `ns`, up, with multicast snooping off (VRRP adverts and
/// IPv6 neighbour discovery reach every port).
pub fn bridge(ns: &Netns, name: &str) -> Result<()> {
    ns.ip(&[
        "link",
        "add",
        name,
        "type",
        "bridge",
        "mcast_snooping",
        "0",
        "forward_delay",
        "0",
    ])?;
    ns.link_up(name, None)
}

/// Enslave `dev` (in the bridge's namespace) to bridge `br`.
pub fn bridge_port(ns: &Netns, dev: &str, br: &str) -> Result<()> {
    ns.ip(&["link", "set", dev, "master", br, "up"]).map(|_| ())
}

/// True if `dev` in `ns` has address `ip` (any prefix length).
pub fn has_addr(ns: &Netns, dev: &str, ip: IpAddr) -> Result<bool> {
    let out = ns.ip(&["-o", "addr", "show", "dev", dev])?;
    let want = ip.to_string();
    Ok(out.lines().any(|l| {
        l.split_whitespace()
            .skip_while(|w| *w != "inet" && *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .is_some_and(|a| a == want)
    }))
}

/// The HTTP status of `GET path` on `addr` from inside `ns` (e.g. sluice's `/healthz`).
pub fn http_status(ns: &Netns, addr: SocketAddr, path: &str) -> Result<u16> {
    use std::io::{Read, Write};
    let t = Duration::from_secs(2);
    let text = ns.enter(|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, t)?;
        s.set_read_timeout(Some(t))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?;
    let text = text.ctx(|| format!("GET {path} from {addr} in {}", ns.name()))?;
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| err!("no HTTP status in the answer to GET {path}: {text:?}"))
}

/// keepalived running in a namespace in the foreground (`-n`), logging to the console
/// (`-l -D`, into its log file), VRRP only (`-P`), with its own pid files. Stopped on drop.
#[derive(Debug)]
pub struct Keepalived {
    daemon: Daemon,
    conf: PathBuf,
}

impl Keepalived {
    /// Check `conf` with `keepalived -t`, then start it in `ns`; `name` names its files in
    /// `dir` (`<name>.log`, `<name>.pid`, `<name>-vrrp.pid`).
    pub fn start(ns: &Netns, conf: &Path, dir: &RunDir, name: &str) -> Result<Keepalived> {
        let conf_s = conf.to_string_lossy().into_owned();
        // -t checks the file in this namespace (the interfaces it names exist here).
        ns.run(&["keepalived", "-t", "-f", &conf_s])
            .map_err(|e| err!("keepalived -t rejected {conf_s}: {e}"))?;
        let pid = dir.join(&format!("{name}.pid"));
        let vrrp_pid = dir.join(&format!("{name}-vrrp.pid"));
        let log = dir.join(&format!("{name}.log"));
        let (pid_s, vrrp_s) = (pid.to_string_lossy(), vrrp_pid.to_string_lossy());
        let argv = [
            "keepalived",
            "-n",
            "-l",
            "-D",
            "-P",
            "-f",
            &conf_s,
            "-p",
            &pid_s,
            "-r",
            &vrrp_s,
        ];
        let c = cmd::command(Some(ns.name()), &argv);
        let mut daemon = Daemon::spawn(
            &format!("keepalived {name} in {}", ns.name()),
            c,
            &log,
            vec![pid.clone(), vrrp_pid.clone()],
        )?;
        wait_for(
            &format!("keepalived {name} to start its VRRP process"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                daemon.ensure_running().map_err(fatal)?;
                Ok(vrrp_pid.exists().then_some(()))
            },
        )?;
        Ok(Keepalived {
            daemon,
            conf: conf.to_path_buf(),
        })
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn log_path(&self) -> &Path {
        self.daemon.log_path()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }

    /// The VRRP states keepalived logged, in order (`MASTER`, `BACKUP`, `FAULT`), read from
    /// lines like `(sluice_x) Entering MASTER STATE`.
    pub fn states(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.daemon.log_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let rest = &l[l.find("Entering ")? + "Entering ".len()..];
                rest.strip_suffix(" STATE")
                    .or_else(|| rest.split_whitespace().next())
                    .map(|s| s.trim().to_string())
            })
            .collect()
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        self.daemon.ensure_running()
    }

    /// Stop it (SIGTERM; keepalived then removes its VIPs).
    pub fn stop(&mut self) {
        self.daemon.stop(super::process::STOP_GRACE);
    }
}

/// The first bytes of every probe datagram.
const PROBE_MAGIC: [u8; 8] = *b"slprobe1";
/// magic, sequence number (u64 BE), sender's time since the probe started (ns, u64 BE).
const PROBE_LEN: usize = 24;

/// One probe datagram as the sink saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub seq: u64,
    /// When it arrived, since the probe started.
    pub at: Duration,
}

/// What a [`StreamProbe`] measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProbeReport {
    /// Datagrams the sender handed to its socket.
    pub sent: u64,
    /// Send calls that failed (e.g. no route while an interface was down).
    pub send_errors: u64,
    /// Distinct sequence numbers the sink received.
    pub received: u64,
    /// Sequence numbers received more than once.
    pub duplicates: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Replies that came back to the sender (with [`StreamProbe::start`]'s `echo`).
    pub echoes: u64,
    /// The longest time between two consecutive arrivals at the sink, in ms.
    pub max_gap_ms: f64,
    /// When that gap began (the arrival before it), in ms since the probe started.
    pub gap_start_ms: f64,
    /// The sequence numbers missing inside that gap (sent but never received).
    pub lost_in_gap: u64,
    /// The first few runs of sequence numbers that never arrived, as inclusive ranges (seq
    /// times the interval is when each was due to be sent), so that a loss can be placed.
    pub missing: Vec<(u64, u64)>,
    /// The interval between datagrams, in ms.
    pub interval_ms: f64,
}

/// A steady stream of numbered UDP datagrams from a socket (in one namespace) to a sink
/// socket (in another), recording every arrival: the longest silence at the sink is the
/// failover's gap, the sequence numbers that never came are its loss. With `echo`, the sink
/// sends each datagram back, so traffic flows in both directions.
pub struct StreamProbe {
    start: Instant,
    stop_send: Arc<AtomicBool>,
    stop_recv: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    send_errors: Arc<AtomicU64>,
    echoes: Arc<AtomicU64>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    interval: Duration,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for StreamProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamProbe")
            .field("sent", &self.sent.load(Ordering::Relaxed))
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl StreamProbe {
    /// Send from `sender` to `sink_addr` every `interval`; `sink` is the socket bound to
    /// `sink_addr` (already in its namespace).
    pub fn start(
        sender: UdpSocket,
        sink_addr: SocketAddr,
        sink: UdpSocket,
        interval: Duration,
        echo: bool,
    ) -> Result<StreamProbe> {
        let start = Instant::now();
        let stop_send = Arc::new(AtomicBool::new(false));
        let stop_recv = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let send_errors = Arc::new(AtomicU64::new(0));
        let echoes = Arc::new(AtomicU64::new(0));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let t = Some(Duration::from_millis(50));
        sink.set_read_timeout(t).ctx(|| "sink read timeout")?;
        sender.set_read_timeout(t).ctx(|| "sender read timeout")?;
        let echo_reader = sender.try_clone().ctx(|| "cloning the sender socket")?;
        let mut threads = Vec::new();
        {
            let (stop, sent, errors) = (stop_send.clone(), sent.clone(), send_errors.clone());
            threads.push(std::thread::spawn(move || {
                let mut seq = 0u64;
                let mut buf = [0u8; PROBE_LEN];
                buf[..8].copy_from_slice(&PROBE_MAGIC);
                while !stop.load(Ordering::Relaxed) {
                    let due = start + interval * (seq as u32);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    buf[8..16].copy_from_slice(&seq.to_be_bytes());
                    let ns = start.elapsed().as_nanos() as u64;
                    buf[16..24].copy_from_slice(&ns.to_be_bytes());
                    if sender.send_to(&buf, sink_addr).is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                }
            }));
        }
        {
            let (stop, arrivals) = (stop_recv.clone(), arrivals.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sink.recv_from(&mut buf) else {
                        continue;
                    };
                    let at = start.elapsed();
                    if n != PROBE_LEN || buf[..8] != PROBE_MAGIC {
                        continue;
                    }
                    let mut seq = [0u8; 8];
                    seq.copy_from_slice(&buf[8..16]);
                    let seq = u64::from_be_bytes(seq);
                    if let Ok(mut a) = arrivals.lock() {
                        a.push(Arrival { seq, at });
                    }
                    if echo {
                        let _ = sink.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        if echo {
            let (stop, echoes) = (stop_recv.clone(), echoes.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = echo_reader.recv(&mut buf) {
                        if n == PROBE_LEN && buf[..8] == PROBE_MAGIC {
                            echoes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        Ok(StreamProbe {
            start,
            stop_send,
            stop_recv,
            sent,
            send_errors,
            echoes,
            arrivals,
            interval,
            threads,
        })
    }

    /// Time since the probe started (the clock of [`Arrival::at`]).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Datagrams received so far (with duplicates).
    pub fn received(&self) -> usize {
        self.arrivals.lock().map_or(0, |a| a.len())
    }

    /// Replies received so far (echo mode).
    pub fn echoes(&self) -> u64 {
        self.echoes.load(Ordering::Relaxed)
    }

    /// Datagrams that arrived at or after `t` (probe time).
    pub fn received_since(&self, t: Duration) -> usize {
        self.arrivals
            .lock()
            .map_or(0, |a| a.iter().filter(|x| x.at >= t).count())
    }

    /// The first arrival at or after probe time `t`.
    pub fn first_arrival_since(&self, t: Duration) -> Option<Duration> {
        self.arrivals
            .lock()
            .ok()?
            .iter()
            .map(|a| a.at)
            .find(|&at| at >= t)
    }

    /// Probe time `t` as Unix time in seconds (for comparing with other clocks).
    pub fn unix_time_of(&self, t: Duration) -> f64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        now - self.start.elapsed().as_secs_f64() + t.as_secs_f64()
    }

    /// Wait until `n` datagrams have arrived after probe time `t`, or fail after `timeout`.
    pub fn wait_flowing(&self, what: &str, t: Duration, n: usize, timeout: Duration) -> Result<()> {
        wait_for(what, timeout, Duration::from_millis(20), || {
            let got = self.received_since(t);
            if got >= n {
                Ok(Some(()))
            } else {
                Err(format!("{got} of {n} datagrams arrived").into())
            }
        })
    }

    /// Stop sending, give datagrams in flight `drain` to arrive, stop, and report.
    pub fn finish(mut self, drain: Duration) -> ProbeReport {
        self.stop_send.store(true, Ordering::Relaxed);
        std::thread::sleep(drain);
        self.stop_recv.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let arrivals = self.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
        let mut report = summarize(&arrivals, self.sent.load(Ordering::Relaxed), self.interval);
        report.send_errors = self.send_errors.load(Ordering::Relaxed);
        report.echoes = self.echoes.load(Ordering::Relaxed);
        report
    }
}

impl Drop for StreamProbe {
    fn drop(&mut self) {
        self.stop_send.store(true, Ordering::Relaxed);
        self.stop_recv.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Every WireGuard transport message (type 4, keepalives included) to one UDP port seen by a
/// packet socket (see [`Netns::packet_ipv4_socket`]): its receiver index and counter, in the
/// order seen. A (receiver index, counter) pair seen twice is a nonce used twice.
#[derive(Debug)]
pub struct DataCapture {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(u32, u64)>>>,
    thread: Option<JoinHandle<()>>,
}

impl DataCapture {
    pub fn start(packets: UdpSocket, dst_port: u16) -> Result<DataCapture> {
        packets
            .set_read_timeout(Some(Duration::from_millis(50)))
            .ctx(|| "capture read timeout")?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                let Ok(n) = packets.recv(&mut buf) else {
                    continue;
                };
                let Some(c) = super::traffic::parse_ipv4_udp(&buf[..n]) else {
                    continue;
                };
                let p = &c.payload;
                if c.dst.port() != dst_port || p.len() < 32 || p[..4] != [4, 0, 0, 0] {
                    continue;
                }
                let mut idx = [0u8; 4];
                idx.copy_from_slice(&p[4..8]);
                let mut ctr = [0u8; 8];
                ctr.copy_from_slice(&p[8..16]);
                if let Ok(mut s) = seen2.lock() {
                    s.push((u32::from_le_bytes(idx), u64::from_le_bytes(ctr)));
                }
            }
        });
        Ok(DataCapture {
            stop,
            seen,
            thread: Some(thread),
        })
    }

    /// Stop and return every (receiver index, counter) seen.
    pub fn finish(mut self) -> Vec<(u32, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for DataCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How many runs of missing sequence numbers a [`ProbeReport`] lists.
const MISSING_RUNS: usize = 8;

/// The report for `arrivals` (in arrival order) of a stream that sent `sent` datagrams.
pub fn summarize(arrivals: &[Arrival], sent: u64, interval: Duration) -> ProbeReport {
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for a in arrivals {
        *seen.entry(a.seq).or_default() += 1;
    }
    let received = seen.len() as u64;
    let duplicates = seen.values().filter(|&&n| n > 1).count() as u64;
    let (mut max_gap, mut gap_at, mut gap_seqs) = (Duration::ZERO, Duration::ZERO, (0, 0));
    for w in arrivals.windows(2) {
        let gap = w[1].at.saturating_sub(w[0].at);
        if gap > max_gap {
            (max_gap, gap_at, gap_seqs) = (gap, w[0].at, (w[0].seq, w[1].seq));
        }
    }
    // Sequence numbers sent between the two arrivals around the gap that never arrived.
    let (lo, hi) = (gap_seqs.0.min(gap_seqs.1), gap_seqs.0.max(gap_seqs.1));
    let lost_in_gap = if hi > lo + 1 {
        (lo + 1..hi).filter(|s| !seen.contains_key(s)).count() as u64
    } else {
        0
    };
    let mut missing: Vec<(u64, u64)> = Vec::new();
    for s in (0..sent).filter(|s| !seen.contains_key(s)) {
        let full = missing.len() >= MISSING_RUNS;
        match missing.last_mut() {
            Some((_, hi)) if *hi + 1 == s => *hi = s,
            _ if full => break,
            _ => missing.push((s, s)),
        }
    }
    ProbeReport {
        sent,
        send_errors: 0,
        received,
        duplicates,
        lost: sent.saturating_sub(received),
        echoes: 0,
        max_gap_ms: max_gap.as_secs_f64() * 1e3,
        gap_start_ms: gap_at.as_secs_f64() * 1e3,
        lost_in_gap,
        missing,
        interval_ms: interval.as_secs_f64() * 1e3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64, ms: u64) -> Arrival {
        Arrival {
            seq,
            at: Duration::from_millis(ms),
        }
    }

    #[test]
    fn summary_finds_the_gap_the_loss_and_duplicates() {
        let a = [
            at(0, 0),
            at(1, 10),
            at(2, 20),
            at(7, 700),
            at(7, 701),
            at(8, 710),
        ];
        let r = summarize(&a, 10, Duration::from_millis(10));
        assert_eq!(r.received, 5);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.lost, 5);
        assert!((r.max_gap_ms - 680.0).abs() < 1e-6, "{r:?}");
        assert!((r.gap_start_ms - 20.0).abs() < 1e-6);
        assert_eq!(r.lost_in_gap, 4); // 3, 4, 5, 6
        assert_eq!(r.missing, vec![(3, 6), (9, 9)]);
        let none = summarize(&[], 3, Duration::from_millis(1));
        assert_eq!((none.received, none.lost, none.max_gap_ms), (0, 3, 0.0));
    }

    #[test]
    fn keepalived_template_renders_for_both_families() {
        if std::process::Command::new("python3")
            .args(["-c", "import jinja2"])
            .status()
            .map_or(true, |s| !s.success())
        {
            assert!(
                !super::super::in_ci(),
                "python3-jinja2 is missing (apt-get install python3-jinja2)"
            );
            eprintln!("SKIPPED: python3-jinja2 is missing");
            return;
        }
        let dir = RunDir::new(&format!("tmpl-{}", super::super::unique_id())).unwrap();
        let out = dir.join("keepalived.conf");
        let vars = serde_json::json!({
            "sluice_interface_name": "sl0",
            "sluice_outer_interface": "eth0",
            "sluice_healthz_url": "http://127.0.0.1:9586/healthz",
            "sluice_vrrp_router_id": 51,
            "sluice_vrrp_priority": 150,
            "sluice_vrrp_virtual_ips": ["192.0.2.10/24", "2001:db8::10/64", "10.88.0.1/24 dev eth1"],
            "sluice_vrrp_auth_pass": "",
            "sluice_vrrp_unicast_peers": [],
            "sluice_vrrp_advert_int": 0.1,
        });
        render_template(&configs_dir().join("keepalived.conf.j2"), &vars, &out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("vrrp_version 3"), "{text}");
        assert!(text.contains("192.0.2.10/24 dev eth0\n"), "{text}");
        assert!(text.contains("10.88.0.1/24 dev eth1\n"), "{text}");
        let excluded = &text[text.find("virtual_ipaddress_excluded").unwrap()..];
        assert!(excluded.contains("2001:db8::10/64 dev eth0"), "{text}");
        assert!(text.contains(
            "notify \"/usr/local/bin/sluice ha notify --config /etc/sluice/gateway.toml\""
        ));
        // A variable the template needs and nobody gave is an error, as in Ansible.
        let e = render_template(
            &configs_dir().join("keepalived.conf.j2"),
            &serde_json::json!({"sluice_interface_name": "x"}),
            &out,
        )
        .unwrap_err();
        assert!(e.0.contains("undefined"), "{e}");
    }
}
