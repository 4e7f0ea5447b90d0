//! Traffic through the topology, verified end to end: iperf3 runs (parsed from `iperf3 -J`),
//! UDP round trips whose contents and source addresses are checked, TCP file transfers
//! compared by SHA-256, and raw capture of WireGuard datagrams for replaying them.

use super::tools::Tool;
use super::{cmd, fatal, wait_for, Context, Daemon, Netns, Result, RunDir};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// An `iperf3 -s -p PORT` server inside a namespace, stopped on drop.
#[derive(Debug)]
pub struct Iperf3Server {
    daemon: Daemon,
    port: u16,
}

impl Iperf3Server {
    /// Start the server and wait until it listens.
    pub fn start(ns: &Netns, port: u16, dir: &RunDir) -> Result<Iperf3Server> {
        let bin = Tool::Iperf3.path().to_string_lossy().into_owned();
        let log = dir.join(&format!("iperf3-server-{port}.log"));
        let mut daemon = ns.spawn(
            &format!("iperf3 server :{port}"),
            &[&bin, "-s", "-p", &port.to_string()],
            &log,
        )?;
        let filter = format!("sport = :{port}");
        wait_for(
            &format!("iperf3 to listen on port {port} in {}", ns.name()),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                daemon.ensure_running().map_err(fatal)?;
                let out = ns.run(&["ss", "-H", "-tln", &filter])?;
                Ok((!out.trim().is_empty()).then_some(()))
            },
        )?;
        Ok(Iperf3Server { daemon, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }
}

/// What an iperf3 client run asks for.
#[derive(Clone, Debug)]
pub struct IperfOpts {
    pub seconds: u32,
    /// UDP at this target bitrate (`-u -b RATE`, e.g. "200M"); TCP if `None`.
    pub udp_bitrate: Option<String>,
    /// Server sends, client receives (`-R`).
    pub reverse: bool,
}

impl IperfOpts {
    pub fn tcp(seconds: u32) -> IperfOpts {
        IperfOpts {
            seconds,
            udp_bitrate: None,
            reverse: false,
        }
    }

    pub fn udp(seconds: u32, bitrate: &str) -> IperfOpts {
        IperfOpts {
            seconds,
            udp_bitrate: Some(bitrate.to_string()),
            reverse: false,
        }
    }
}

/// The numbers from one iperf3 run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IperfResult {
    /// "tcp" or "udp".
    pub protocol: String,
    pub seconds: f64,
    /// Bytes the receiver got (TCP), or bytes sent (UDP; see `lost_percent`).
    pub bytes: u64,
    /// Receiver-side throughput for TCP, sender-side for UDP.
    pub bits_per_second: f64,
    pub retransmits: Option<u64>,
    pub packets: Option<u64>,
    pub lost_packets: Option<u64>,
    pub lost_percent: Option<f64>,
    pub jitter_ms: Option<f64>,
}

/// Parse `iperf3 -J` output. An `"error"` in it is an error here.
pub fn parse_iperf3(json: &str) -> Result<IperfResult> {
    let v: serde_json::Value = serde_json::from_str(json).ctx(|| "iperf3 output is not JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(err!("iperf3: {e}"));
    }
    let end = v
        .get("end")
        .ok_or_else(|| err!("iperf3 JSON has no \"end\" section"))?;
    let udp = v
        .pointer("/start/test_start/protocol")
        .and_then(|p| p.as_str())
        == Some("UDP");
    let f = |o: &serde_json::Value, k: &str| o.get(k).and_then(|x| x.as_f64());
    let u = |o: &serde_json::Value, k: &str| o.get(k).and_then(|x| x.as_u64());
    if udp {
        let sum = end
            .get("sum")
            .ok_or_else(|| err!("iperf3 UDP JSON has no end.sum"))?;
        Ok(IperfResult {
            protocol: "udp".into(),
            seconds: f(sum, "seconds").unwrap_or(0.0),
            bytes: u(sum, "bytes").unwrap_or(0),
            bits_per_second: f(sum, "bits_per_second").unwrap_or(0.0),
            retransmits: None,
            packets: u(sum, "packets"),
            lost_packets: u(sum, "lost_packets"),
            lost_percent: f(sum, "lost_percent"),
            jitter_ms: f(sum, "jitter_ms"),
        })
    } else {
        let recv = end
            .get("sum_received")
            .ok_or_else(|| err!("iperf3 TCP JSON has no end.sum_received"))?;
        let sent = end.get("sum_sent");
        Ok(IperfResult {
            protocol: "tcp".into(),
            seconds: f(recv, "seconds").unwrap_or(0.0),
            bytes: u(recv, "bytes").unwrap_or(0),
            bits_per_second: f(recv, "bits_per_second").unwrap_or(0.0),
            retransmits: sent.and_then(|s| u(s, "retransmits")),
            packets: None,
            lost_packets: None,
            lost_percent: None,
            jitter_ms: None,
        })
    }
}

/// Run an iperf3 client in `ns` against `server:port`; fails on any iperf3 error, and kills
/// it if it runs 30 s past its duration.
pub fn iperf3_client(
    ns: &Netns,
    server: IpAddr,
    port: u16,
    opts: &IperfOpts,
) -> Result<IperfResult> {
    // An iperf3 server takes a moment to be ready for the next test after one ends, and says
    // "the server is busy" meanwhile: try again then (only then).
    let mut attempt = 0;
    loop {
        match iperf3_client_once(ns, server, port, opts) {
            Err(e) if attempt < 20 && e.to_string().contains("server is busy") => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            r => return r,
        }
    }
}

fn iperf3_client_once(
    ns: &Netns,
    server: IpAddr,
    port: u16,
    opts: &IperfOpts,
) -> Result<IperfResult> {
    let mut c = ns.command(&Tool::Iperf3.path().to_string_lossy());
    c.args(["-J", "--connect-timeout", "5000", "-c"])
        .arg(server.to_string())
        .args(["-p", &port.to_string(), "-t", &opts.seconds.to_string()]);
    if let Some(b) = &opts.udp_bitrate {
        c.args(["-u", "-b", b]);
    }
    if opts.reverse {
        c.arg("-R");
    }
    let what = cmd::describe(&c);
    let o = cmd::output(c, Duration::from_secs(u64::from(opts.seconds) + 30))?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    let r = parse_iperf3(&stdout).map_err(|e| {
        err!(
            "`{what}` ({}): {e}; stderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )
    })?;
    if !o.status.success() {
        return Err(err!("`{what}` failed ({})", o.status));
    }
    Ok(r)
}

/// Send a datagram from `from` (a socket bound to `from_ip`) to a socket bound to `to_addr`
/// in `to`, and have it echoed back; retried every 200 ms until `timeout` (the first may be
/// held up by a handshake). Checks the contents both ways and that the receiver saw the
/// datagram come from `from_ip` (no rewriting on the way). Returns the round-trip count.
pub fn udp_round_trip(
    from: &Netns,
    from_ip: IpAddr,
    to: &Netns,
    to_addr: SocketAddr,
    timeout: Duration,
) -> Result<u32> {
    let server = to.udp_bind(to_addr)?;
    let client = from.udp_bind(SocketAddr::new(from_ip, 0))?;
    let tick = Some(Duration::from_millis(200));
    server.set_read_timeout(tick).ctx(|| "set_read_timeout")?;
    client.set_read_timeout(tick).ctx(|| "set_read_timeout")?;
    let stop = AtomicBool::new(false);
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).map_err(|e| err!("random: {e}"))?;
    std::thread::scope(|s| {
        let echo = s.spawn(|| -> std::result::Result<(), String> {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, src)) = server.recv_from(&mut buf) {
                    if src.ip() != from_ip {
                        return Err(format!(
                            "{to_addr} got a datagram from {src}, expected {from_ip}"
                        ));
                    }
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = server.send_to(&reply, src);
                }
            }
            Ok(())
        });
        let start = Instant::now();
        let mut attempts = 0u32;
        let result = loop {
            if start.elapsed() > timeout {
                break Err(err!(
                    "no UDP echo from {to_addr} ({}) to {from_ip} ({}) within {:.0} s \
                     ({attempts} datagrams sent)",
                    to.name(),
                    from.name(),
                    timeout.as_secs_f64()
                ));
            }
            attempts += 1;
            let mut msg = token.to_vec();
            msg.extend_from_slice(&attempts.to_be_bytes());
            if let Err(e) = client.send_to(&msg, to_addr) {
                // e.g. no route yet, or ENOKEY-like errors from a TUN still coming up
                std::thread::sleep(Duration::from_millis(200));
                let _ = e;
                continue;
            }
            let deadline = Instant::now() + Duration::from_millis(200);
            let mut buf = [0u8; 2048];
            let mut got = false;
            while Instant::now() < deadline {
                match client.recv_from(&mut buf) {
                    Ok((n, src)) if src == to_addr && buf[..n].starts_with(b"echo:") => {
                        let body = &buf[5..n];
                        if body.len() == 20 && body[..16] == token {
                            got = true;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if got {
                break Ok(attempts);
            }
        };
        stop.store(true, Ordering::Relaxed);
        match echo.join() {
            Ok(Ok(())) => result,
            Ok(Err(e)) => Err(err!("{e}")),
            Err(_) => Err(err!("UDP echo thread panicked")),
        }
    })
}

/// Send one datagram from a socket bound to `from_ip` in `from` and report whether a socket
/// bound to `to_addr` in `to` receives it within `wait` (used to show traffic is dropped).
pub fn udp_arrives(
    from: &Netns,
    from_ip: IpAddr,
    to: &Netns,
    to_addr: SocketAddr,
    tries: u32,
    wait: Duration,
) -> Result<bool> {
    let server = to.udp_bind(to_addr)?;
    let client = from.udp_bind(SocketAddr::new(from_ip, 0))?;
    server
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ctx(|| "set_read_timeout")?;
    let mut buf = [0u8; 2048];
    for i in 0..tries {
        let _ = client.send_to(format!("probe {i}").as_bytes(), to_addr);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok((n, _)) = server.recv_from(&mut buf) {
                if buf[..n].starts_with(b"probe ") {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Write `size` random bytes to `path`.
pub fn write_random_file(path: &Path, size: usize) -> Result<()> {
    let mut data = vec![0u8; size];
    getrandom::fill(&mut data).map_err(|e| err!("random: {e}"))?;
    std::fs::write(path, &data).ctx(|| format!("writing {}", path.display()))
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .ctx(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The outcome of a TCP file transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub bytes: u64,
    pub sent_sha256: String,
    pub received_sha256: String,
}

/// Send file `src` over TCP from namespace `from` to a listener on `to_addr` in `to`, which
/// writes what it receives to `dst`; returns both files' SHA-256. `pace` sleeps between
/// 64 KiB chunks (to keep a transfer running while something else happens), and `during` is
/// called once from another thread after the first chunk went out. Every socket operation
/// has a 20 s timeout.
pub fn tcp_send_file(
    from: &Netns,
    to: &Netns,
    to_addr: SocketAddr,
    src: &Path,
    dst: &Path,
    pace: Option<Duration>,
    during: Option<Box<dyn FnOnce() -> Result<()> + Send + '_>>,
) -> Result<Transfer> {
    const IO_TIMEOUT: Duration = Duration::from_secs(20);
    let listener = to.tcp_listen(to_addr)?;
    listener.set_nonblocking(true).ctx(|| "set_nonblocking")?;
    let data = std::fs::read(src).ctx(|| format!("reading {}", src.display()))?;
    let started = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<Transfer> {
        let receiver = s.spawn(|| -> Result<u64> {
            let deadline = Instant::now() + IO_TIMEOUT;
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err(err!("no TCP connection to {to_addr} within 20 s"));
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(err!("accept on {to_addr}: {e}")),
                }
            };
            conn.set_nonblocking(false).ctx(|| "set_nonblocking")?;
            conn.set_read_timeout(Some(IO_TIMEOUT))
                .ctx(|| "set_read_timeout")?;
            let mut out =
                std::fs::File::create(dst).ctx(|| format!("creating {}", dst.display()))?;
            let n = std::io::copy(&mut conn, &mut out)
                .ctx(|| format!("receiving on {to_addr} into {}", dst.display()))?;
            Ok(n)
        });
        let side = during.map(|f| {
            let started = &started;
            s.spawn(move || -> Result<()> {
                let t = Instant::now();
                while !started.load(Ordering::Relaxed) {
                    if t.elapsed() > IO_TIMEOUT {
                        return Err(err!("the transfer never started"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                f()
            })
        });
        let send = || -> Result<()> {
            let mut conn = from.tcp_connect(to_addr, IO_TIMEOUT)?;
            conn.set_write_timeout(Some(IO_TIMEOUT))
                .ctx(|| "set_write_timeout")?;
            for chunk in data.chunks(64 * 1024) {
                conn.write_all(chunk)
                    .ctx(|| format!("sending to {to_addr}"))?;
                started.store(true, Ordering::Relaxed);
                if let Some(p) = pace {
                    std::thread::sleep(p);
                }
            }
            conn.shutdown(std::net::Shutdown::Write)
                .ctx(|| "shutting down the sending side")?;
            // Wait for the receiver to close, so every byte has been read.
            let mut rest = [0u8; 16];
            let _ = conn.read(&mut rest);
            Ok(())
        };
        let sent = send();
        started.store(true, Ordering::Relaxed);
        let side_result =
            side.map(|h| h.join().unwrap_or_else(|_| Err(err!("side task panicked"))));
        let received = receiver
            .join()
            .unwrap_or_else(|_| Err(err!("receiver panicked")));
        // Report every side's failure: one side's error is often caused by the other's.
        let mut errors = Vec::new();
        if let Err(e) = &sent {
            errors.push(format!("sender: {e}"));
        }
        if let Err(e) = &received {
            errors.push(format!("receiver: {e}"));
        }
        if let Some(Err(e)) = &side_result {
            errors.push(format!("meanwhile: {e}"));
        }
        if !errors.is_empty() {
            return Err(err!("TCP transfer to {to_addr}: {}", errors.join("; ")));
        }
        let bytes = received?;
        Ok(Transfer {
            bytes,
            sent_sha256: sha256_file(src)?,
            received_sha256: sha256_file(dst)?,
        })
    })
}

/// A UDP datagram seen by a raw socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// Parse an IPv4 packet carrying UDP (as a raw IPv4 socket returns it).
pub fn parse_ipv4_udp(p: &[u8]) -> Option<Captured> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let udp = p.get(ihl..)?;
    if udp.len() < 8 {
        return None;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let end = ulen.clamp(8, udp.len());
    Some(Captured {
        src: SocketAddr::new(IpAddr::V4(src), sport),
        dst: SocketAddr::new(IpAddr::V4(dst), dport),
        payload: udp[8..end].to_vec(),
    })
}

/// True for a WireGuard transport-data message carrying data (type 4, longer than a
/// keepalive's 32 bytes).
pub fn is_wg_data(payload: &[u8]) -> bool {
    payload.len() > 32 && payload[..4] == [4, 0, 0, 0]
}

/// Read from a raw IPv4 UDP socket until a datagram to `dst_port` whose payload satisfies
/// `want` arrives, or fail after `timeout`.
pub fn capture_udp4(
    raw: &std::net::UdpSocket,
    dst_port: u16,
    timeout: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Result<Captured> {
    raw.set_read_timeout(Some(Duration::from_millis(100)))
        .ctx(|| "set_read_timeout")?;
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    while start.elapsed() < timeout {
        if let Ok(n) = raw.recv(&mut buf) {
            if let Some(c) = parse_ipv4_udp(&buf[..n]) {
                if c.dst.port() == dst_port && want(&c.payload) {
                    return Ok(c);
                }
            }
        }
    }
    Err(err!(
        "captured no matching datagram to port {dst_port} within {:.0} s",
        timeout.as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_udp() {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend([198, 18, 1, 2, 198, 18, 1, 1]);
        p.extend([0x9c, 0x41, 0xca, 0x6c, 0, 12, 0, 0]); // 40001 -> 51820, len 12
        p.extend([4, 0, 0, 0]);
        let c = parse_ipv4_udp(&p).unwrap();
        assert_eq!(c.src, "198.18.1.2:40001".parse().unwrap());
        assert_eq!(c.dst, "198.18.1.1:51820".parse().unwrap());
        assert_eq!(c.payload, vec![4, 0, 0, 0]);
        assert!(!is_wg_data(&c.payload));
        assert!(parse_ipv4_udp(&p[..20]).is_none());
        let mut data = vec![4, 0, 0, 0];
        data.resize(48, 0);
        assert!(is_wg_data(&data));
    }

    #[test]
    fn parses_iperf3_json() {
        let tcp = r#"{"start":{"test_start":{"protocol":"TCP"}},
          "end":{"sum_sent":{"seconds":5,"bytes":1000,"bits_per_second":1600,"retransmits":2},
                 "sum_received":{"seconds":5.01,"bytes":990,"bits_per_second":1580}}}"#;
        let r = parse_iperf3(tcp).unwrap();
        assert_eq!(
            (r.protocol.as_str(), r.bytes, r.retransmits),
            ("tcp", 990, Some(2))
        );
        let udp = r#"{"start":{"test_start":{"protocol":"UDP"}},
          "end":{"sum":{"seconds":5,"bytes":5000,"bits_per_second":8000,"jitter_ms":0.1,
                        "lost_packets":3,"packets":100,"lost_percent":3.0}}}"#;
        let r = parse_iperf3(udp).unwrap();
        assert_eq!(
            (r.packets, r.lost_packets, r.lost_percent),
            (Some(100), Some(3), Some(3.0))
        );
        let e = parse_iperf3(r#"{"start":{},"end":{},"error":"unable to connect"}"#).unwrap_err();
        assert!(e.0.contains("unable to connect"));
    }
}
