//! The gateway under test, inside the gateway namespace: the `sluice up` daemon, or
//! wireguard-go / boringtun-cli standing in for it in the same topology (configured with `wg`
//! the way sluice is configured by its files), so the plumbing can be proven without sluice and
//! the implementations compared side by side.

use super::wg::{WgImpl, WgInterface, WgPeer};
use super::{cmd, fatal, unix_now, wait_for, Context, Daemon, KeyPair, Netns, Result, RunDir};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::str::FromStr;
use std::time::Duration;

/// The environment variable that picks the gateway under test in the interop tests.
pub const GATEWAY_ENV: &str = "SLUICE_TEST_GATEWAY";

/// Which program terminates WireGuard in the gateway namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GatewayKind {
    /// `sluice up --config gateway.toml --status-file status.json`.
    Sluice,
    /// wireguard-go configured with `wg` (stand-in; no status file, no drop counters).
    WireguardGo,
    /// boringtun-cli configured with `wg` (stand-in; no status file, no drop counters).
    Boringtun,
}

impl GatewayKind {
    pub fn label(self) -> &'static str {
        match self {
            GatewayKind::Sluice => "sluice",
            GatewayKind::WireguardGo => "wireguard-go",
            GatewayKind::Boringtun => "boringtun",
        }
    }

    /// The userspace implementation standing in for sluice, if this is not sluice.
    pub fn stand_in(self) -> Option<WgImpl> {
        match self {
            GatewayKind::Sluice => None,
            GatewayKind::WireguardGo => Some(WgImpl::WireguardGo),
            GatewayKind::Boringtun => Some(WgImpl::Boringtun),
        }
    }

    pub fn is_sluice(self) -> bool {
        self == GatewayKind::Sluice
    }

    /// From [`GATEWAY_ENV`] (`sluice`, `wireguard-go`, `boringtun`); sluice if unset.
    pub fn from_env() -> std::result::Result<GatewayKind, String> {
        match std::env::var(GATEWAY_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                v.trim().parse().map_err(|e| format!("{GATEWAY_ENV}: {e}"))
            }
            _ => Ok(GatewayKind::Sluice),
        }
    }
}

impl fmt::Display for GatewayKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for GatewayKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<GatewayKind, String> {
        match s {
            "sluice" => Ok(GatewayKind::Sluice),
            "wireguard-go" | "wg-go" => Ok(GatewayKind::WireguardGo),
            "boringtun" | "boringtun-cli" => Ok(GatewayKind::Boringtun),
            _ => Err(format!(
                "unknown gateway '{s}' (sluice, wireguard-go, boringtun)"
            )),
        }
    }
}

/// A peer of the gateway: a `[Peer]` section for sluice, `wg set ... peer` for a stand-in.
#[derive(Clone, Debug, Default)]
pub struct GatewayPeer {
    pub public_key: String,
    pub allowed_ips: Vec<String>,
    /// Set when the gateway should be able to start the handshake itself.
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
}

/// Everything needed to start a gateway.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    pub kind: GatewayKind,
    /// TUN device and UAPI name: at most 15 characters, unique machine-wide.
    pub ifname: String,
    pub key: KeyPair,
    pub listen_port: u16,
    /// The gateway's tunnel addresses, e.g. `10.77.0.1/16`, `fd77::1/64`.
    pub addresses: Vec<String>,
    pub mtu: u16,
    pub peers: Vec<GatewayPeer>,
    /// The `sluice` binary (required for [`GatewayKind::Sluice`]).
    pub sluice_bin: Option<PathBuf>,
    pub workers: usize,
    pub cores: Vec<usize>,
    /// Appended to sluice's `gateway.toml` (e.g. a `[metrics]` or `[log]` section).
    pub extra_toml: String,
    /// Run sluice's XDP fast path on this interface (`mode = "xdp"`); `None`: socket mode.
    pub xdp_outer: Option<String>,
    /// Environment variables for the gateway process (e.g. `SLUICE_LOG`; `GOMAXPROCS` for
    /// wireguard-go, `WG_THREADS` for boringtun-cli).
    pub env: Vec<(String, String)>,
    /// Run sluice with `--status-file` (the default). Without it (for very many peers, where
    /// rewriting the file every second costs real CPU), [`Gateway::status`] asks the `wg` API.
    pub status_file: bool,
}

/// The `[dataplane]` lines of appliance mode (`inner`, `inner_next_hop`), to lead
/// [`GatewaySpec::extra_toml`] (which follows the `[dataplane]` section's other keys).
pub fn appliance_toml(inner: &str, next_hops: &[std::net::IpAddr]) -> String {
    let hops: Vec<String> = next_hops.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "inner = \"{inner}\"\ninner_next_hop = [{}]\n",
        hops.join(", ")
    )
}

/// The contents of `gateway.toml` and of the wg-quick file it points to (`IFNAME.conf`).
pub fn sluice_config(spec: &GatewaySpec) -> (String, String) {
    let cores = spec
        .cores
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        "# written by sluice::testbed\n\
         [interface]\n\
         name = \"{name}\"\n\
         wg_config = \"{name}.conf\"\n\
         \n\
         [dataplane]\n\
         {mode}\
         workers = {workers}\n\
         cores = [{cores}]\n\
         {extra}",
        name = spec.ifname,
        workers = spec.workers,
        extra = spec.extra_toml,
        mode = match &spec.xdp_outer {
            Some(outer) => format!("mode = \"xdp\"\nouter = \"{outer}\"\n"),
            None => "mode = \"socket\"\n".to_string(),
        },
    );
    let mut wg = String::new();
    let _ = writeln!(wg, "[Interface]");
    let _ = writeln!(wg, "PrivateKey = {}", spec.key.private);
    let _ = writeln!(wg, "ListenPort = {}", spec.listen_port);
    let _ = writeln!(wg, "Address = {}", spec.addresses.join(", "));
    let _ = writeln!(wg, "MTU = {}", spec.mtu);
    for p in &spec.peers {
        let _ = writeln!(wg, "\n[Peer]");
        let _ = writeln!(wg, "PublicKey = {}", p.public_key);
        let _ = writeln!(wg, "AllowedIPs = {}", p.allowed_ips.join(", "));
        if let Some(e) = p.endpoint {
            let _ = writeln!(wg, "Endpoint = {e}");
        }
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(wg, "PersistentKeepalive = {k}");
        }
    }
    (toml, wg)
}

/// Write the two sluice config files into `dir`; returns the path of `gateway.toml`.
pub fn write_sluice_config(spec: &GatewaySpec, dir: &RunDir) -> Result<PathBuf> {
    let (toml, wg) = sluice_config(spec);
    dir.write_private(&format!("{}.conf", spec.ifname), &wg)?;
    dir.write_private("gateway.toml", &toml)
}

/// One peer in the status snapshot.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub public_key: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub last_handshake_unix: Option<u64>,
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
    #[serde(default)]
    pub allowed_ips: Vec<String>,
}

impl PeerStatus {
    /// Age of the last handshake, `None` if there was none.
    pub fn handshake_age(&self) -> Option<Duration> {
        self.last_handshake_unix
            .filter(|&t| t > 0)
            .map(|t| Duration::from_secs(unix_now().saturating_sub(t)))
    }
}

/// The gateway's state: sluice's status file, or the same fields from `wg show` for a
/// stand-in (which has no drop counters).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct GatewayStatus {
    pub interface: String,
    pub public_key: String,
    pub listen_port: u16,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub workers: Option<usize>,
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// Drops by reason label (every `DropReason`); `None` for stand-ins.
    #[serde(default)]
    pub drops: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    pub rx_packets: Option<u64>,
    #[serde(default)]
    pub tx_packets: Option<u64>,
    /// The XDP fast path (sluice in xdp mode only).
    #[serde(default)]
    pub xdp: Option<XdpStatus>,
}

/// sluice's XDP fast path in the status snapshot.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct XdpStatus {
    pub interface: String,
    /// `driver` or `skb`.
    pub attach: String,
    pub queues: u32,
    /// The XDP program's counters by slot name (`redirect`, `pass_arp`, `drop_wg_reserved`...).
    pub counters: BTreeMap<String, u64>,
    pub sockets: Vec<XskStatus>,
    /// Appliance mode's inner NIC, if configured.
    #[serde(default)]
    pub inner: Option<InnerXdpStatus>,
}

impl XdpStatus {
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// Appliance mode's inner NIC in the status snapshot: the inner program's counters
/// (`redirect`, `pass_not_tunnel`...) and one AF_XDP socket per worker.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct InnerXdpStatus {
    pub interface: String,
    pub attach: String,
    pub queues: u32,
    pub counters: BTreeMap<String, u64>,
    pub sockets: Vec<XskStatus>,
}

impl InnerXdpStatus {
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// One AF_XDP socket.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct XskStatus {
    pub queue: u32,
    /// `zero-copy` or `copy`.
    pub mode: String,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub rx_fallback: u64,
    pub tx_fallback: u64,
    /// Inner sockets: packets decrypted straight into one of their frames.
    #[serde(default)]
    pub direct: u64,
    /// What the kernel dropped on the socket, by reason (`rx_ring_full`, ...).
    #[serde(default)]
    pub kernel_drops: BTreeMap<String, u64>,
    pub frames: FrameStatus,
}

/// Where a socket's UMEM frames are.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct FrameStatus {
    pub total: u64,
    pub free: u64,
    pub in_fill: u64,
    pub in_tx: u64,
    pub lost: u64,
    pub violations: u64,
}

impl GatewayStatus {
    pub fn parse(json: &str) -> Result<GatewayStatus> {
        serde_json::from_str(json).ctx(|| "parsing the gateway status file")
    }

    pub fn peer(&self, public_key: &str) -> Option<&PeerStatus> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }

    /// The count for drop reason `label` (0 if absent or a stand-in).
    pub fn drops_of(&self, label: &str) -> u64 {
        self.drops
            .as_ref()
            .and_then(|d| d.get(label).copied())
            .unwrap_or(0)
    }

    /// Non-zero drop counters, largest first.
    pub fn nonzero_drops(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .drops
            .iter()
            .flatten()
            .filter(|(_, &n)| n > 0)
            .map(|(k, &n)| (k.clone(), n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// A running gateway. Dropping it stops it (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Gateway {
    kind: GatewayKind,
    ns: String,
    ifname: String,
    public_key: String,
    listen_port: u16,
    daemon: Option<Daemon>,
    wg: Option<WgInterface>,
    config: Option<PathBuf>,
    status_file: Option<PathBuf>,
}

impl Gateway {
    /// Start the gateway described by `spec` inside `ns`, and wait until it is ready: for
    /// sluice, its TUN device exists and it has written a status file; for a stand-in, its
    /// interface is configured and up.
    pub fn start(ns: &Netns, spec: &GatewaySpec, dir: &RunDir) -> Result<Gateway> {
        let mut gw = Gateway {
            kind: spec.kind,
            ns: ns.name().to_string(),
            ifname: spec.ifname.clone(),
            public_key: spec.key.public.clone(),
            listen_port: spec.listen_port,
            daemon: None,
            wg: None,
            config: None,
            status_file: None,
        };
        match spec.kind.stand_in() {
            None => gw.start_sluice(ns, spec, dir)?,
            Some(kind) => {
                let wg = WgInterface::start_with_env(ns, kind, &spec.ifname, dir, &spec.env)?;
                let peers: Vec<WgPeer> = spec
                    .peers
                    .iter()
                    .map(|p| WgPeer {
                        public_key: p.public_key.clone(),
                        endpoint: p.endpoint,
                        allowed_ips: p.allowed_ips.clone(),
                        persistent_keepalive: p.persistent_keepalive,
                    })
                    .collect();
                wg.configure(&spec.key, Some(spec.listen_port), &peers)?;
                for a in &spec.addresses {
                    ns.add_addr(&spec.ifname, a)?;
                }
                ns.link_up(&spec.ifname, Some(spec.mtu))?;
                gw.wg = Some(wg);
            }
        }
        Ok(gw)
    }

    fn start_sluice(&mut self, ns: &Netns, spec: &GatewaySpec, dir: &RunDir) -> Result<()> {
        let bin = spec
            .sluice_bin
            .as_ref()
            .ok_or_else(|| err!("no sluice binary given for the sluice gateway"))?;
        let config = write_sluice_config(spec, dir)?;
        let status = dir.join("status.json");
        let log = dir.join("sluice.log");
        let mut c = ns.command(&bin.to_string_lossy());
        c.arg("up").arg("--config").arg(&config);
        if spec.status_file {
            c.arg("--status-file").arg(&status);
        }
        let socket = super::wg::uapi_socket(&spec.ifname);
        for (k, v) in &spec.env {
            c.env(k, v);
        }
        // A SIGKILLed sluice leaves its control socket (bound with `[ha]`) behind: the daemon
        // guard removes it once the process is gone, and the registry after a crashed test.
        let ctl = crate::datapath::control_sock::path(&spec.ifname);
        let mut daemon = Daemon::spawn(&format!("sluice up in {}", ns.name()), c, &log, vec![ctl])?;
        let ready = wait_for(
            &format!(
                "sluice to create TUN {} and write {}",
                spec.ifname,
                status.display()
            ),
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                daemon.ensure_running().map_err(fatal)?;
                let written = if spec.status_file {
                    status.exists()
                } else {
                    socket.exists()
                };
                Ok((ns.link_exists(&spec.ifname) && written).then_some(()))
            },
        );
        if let Err(e) = ready {
            // An early exit's message carries the log already; a timeout's does not.
            if daemon.try_exit().is_some() {
                return Err(e);
            }
            return Err(err!(
                "{e}\nsluice log {}:\n{}",
                log.display(),
                daemon.log_tail(40)
            ));
        }
        self.daemon = Some(daemon);
        self.config = Some(config);
        self.status_file = spec.status_file.then_some(status);
        Ok(())
    }

    pub fn kind(&self) -> GatewayKind {
        self.kind
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// `gateway.toml` (sluice only).
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    pub fn status_path(&self) -> Option<&Path> {
        self.status_file.as_deref()
    }

    /// The process id of the gateway process.
    pub fn pid(&self) -> Option<u32> {
        self.daemon
            .as_ref()
            .map(|d| d.pid())
            .or_else(|| self.wg.as_ref().map(|w| w.daemon_pid()))
    }

    fn daemon_mut(&mut self) -> Option<&mut Daemon> {
        match (&mut self.daemon, &mut self.wg) {
            (Some(d), _) => Some(d),
            (None, Some(w)) => Some(w.daemon()),
            _ => None,
        }
    }

    /// The last lines of the gateway's log.
    pub fn log_tail(&mut self, lines: usize) -> String {
        self.daemon_mut()
            .map(|d| {
                format!(
                    "{} ({}):\n{}",
                    d.name(),
                    d.log_path().display(),
                    d.log_tail(lines)
                )
            })
            .unwrap_or_default()
    }

    /// Fail (with the log) if the gateway process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.daemon_mut() {
            Some(d) => d.ensure_running(),
            None => Err(err!("gateway not started")),
        }
    }

    /// The current state: sluice's status file, or `wg show` for a stand-in.
    pub fn status(&self) -> Result<GatewayStatus> {
        if let Some(path) = &self.status_file {
            let text = std::fs::read_to_string(path)
                .ctx(|| format!("reading status file {}", path.display()))?;
            return GatewayStatus::parse(&text);
        }
        let peers = match (&self.wg, &self.daemon) {
            (Some(wg), _) => wg.peers()?,
            // sluice without a status file: its `wg` API (it reports handshakes as Unix
            // seconds, as wireguard-go does).
            (None, Some(_)) => {
                super::wg::parse_uapi(WgImpl::WireguardGo, &super::wg::uapi_get(&self.ifname)?)
            }
            (None, None) => return Err(err!("gateway not started")),
        };
        let peers = peers
            .into_iter()
            .map(|p| PeerStatus {
                public_key: p.public_key,
                endpoint: p.endpoint,
                last_handshake_unix: p
                    .handshake_age
                    .map(|a| unix_now().saturating_sub(a.as_secs())),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                allowed_ips: p.allowed_ips,
            })
            .collect();
        Ok(GatewayStatus {
            interface: self.ifname.clone(),
            public_key: self.public_key.clone(),
            listen_port: self.listen_port,
            mode: None,
            workers: None,
            peers,
            drops: None,
            rx_packets: None,
            tx_packets: None,
            xdp: None,
        })
    }

    /// Poll [`Gateway::status`] until `pred` holds; fails after `timeout` with the last status.
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&GatewayStatus) -> bool,
    ) -> Result<GatewayStatus> {
        let r = wait_for(what, timeout, Duration::from_millis(200), || {
            self.ensure_running().map_err(fatal)?;
            let s = self.status()?;
            if pred(&s) {
                Ok(Some(s))
            } else {
                Err(format!("{s:?}").into())
            }
        });
        match r {
            Ok(s) => Ok(s),
            Err(e) => Err(err!("{e}\n{}", self.log_tail(30))),
        }
    }

    /// Stop with SIGTERM (SIGKILL after `grace`). Returns the exit status and whether the
    /// SIGKILL was needed.
    pub fn stop(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        self.stop_with(libc::SIGTERM, grace)
    }

    /// [`Gateway::stop`] with another first signal (e.g. `libc::SIGINT`).
    pub fn stop_with(&mut self, sig: libc::c_int, grace: Duration) -> (Option<ExitStatus>, bool) {
        match self.daemon_mut() {
            Some(d) => d.stop_with(sig, grace),
            None => (None, false),
        }
    }

    /// Leave the gateway running when dropped (for `--keep`).
    pub fn detach(&mut self) {
        if let Some(d) = self.daemon_mut() {
            d.detach();
        }
    }

    /// Sockets bound to the listen port in the namespace (`ss -uanp`), one line each.
    pub fn sockets_on_listen_port(&self) -> Result<Vec<String>> {
        let out = cmd::run(Some(&self.ns), &["ss", "-H", "-uanp"])?;
        let port = format!(":{}", self.listen_port);
        Ok(out
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(3)
                    .is_some_and(|local| local.ends_with(&port))
            })
            .map(|l| l.to_string())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GatewaySpec {
        GatewaySpec {
            kind: GatewayKind::Sluice,
            ifname: "slabcde".into(),
            key: KeyPair::generate(),
            listen_port: 51820,
            addresses: vec!["10.77.0.1/16".into(), "fd77::1/64".into()],
            mtu: 1420,
            peers: vec![
                GatewayPeer {
                    public_key: KeyPair::generate().public,
                    allowed_ips: vec!["10.77.0.2/32".into(), "fd77::2/128".into()],
                    endpoint: None,
                    persistent_keepalive: None,
                },
                GatewayPeer {
                    public_key: KeyPair::generate().public,
                    allowed_ips: vec!["10.77.0.3/32".into()],
                    endpoint: Some("198.18.2.2:40002".parse().unwrap()),
                    persistent_keepalive: Some(25),
                },
            ],
            sluice_bin: None,
            workers: 1,
            cores: vec![0],
            extra_toml: String::new(),
            xdp_outer: None,
            env: Vec::new(),
            status_file: true,
        }
    }

    /// The files the testbed writes are ones sluice's own loader accepts.
    #[test]
    fn written_config_loads() {
        let s = spec();
        let dir = RunDir::new(&format!("cfgtest-{}", super::super::unique_id())).unwrap();
        let path = write_sluice_config(&s, &dir).unwrap();
        let cfg = crate::config::load(&path).unwrap();
        assert_eq!(cfg.name, "slabcde");
        assert_eq!(cfg.listen_port, 51820);
        assert_eq!(cfg.peers.len(), 2);
        assert_eq!(cfg.addresses.len(), 2);
        assert_eq!(cfg.dataplane.workers, 1);
    }

    /// Appliance mode's lines land in `[dataplane]` and load as sluice reads them.
    #[test]
    fn written_appliance_config_loads() {
        let mut s = spec();
        s.xdp_outer = Some("outer".into());
        s.extra_toml = appliance_toml(
            "to-sink",
            &["10.88.0.2".parse().unwrap(), "fd88::2".parse().unwrap()],
        ) + "\n[log]\nlevel = \"info\"\n";
        let dir = RunDir::new(&format!("cfgtest-{}", super::super::unique_id())).unwrap();
        let cfg = crate::config::load(&write_sluice_config(&s, &dir).unwrap()).unwrap();
        assert_eq!(cfg.dataplane.inner.as_deref(), Some("to-sink"));
        assert_eq!(cfg.dataplane.inner_next_hop.len(), 2);
        assert_eq!(cfg.log_level.as_deref(), Some("info"));
    }

    #[test]
    fn status_parses_and_reports_drops() {
        let json = r#"{"interface": "sl0abc", "public_key": "k", "listen_port": 51820,
            "mode": "socket", "workers": 1,
            "peers": [{"public_key": "p", "endpoint": "203.0.113.2:40000",
                       "last_handshake_unix": 1800000000, "rx_bytes": 1, "tx_bytes": 2,
                       "allowed_ips": ["10.77.0.2/32"]},
                      {"public_key": "q", "endpoint": null, "last_handshake_unix": null,
                       "rx_bytes": 0, "tx_bytes": 0, "allowed_ips": []}],
            "drops": {"replayed": 3, "source_not_allowed": 0, "unknown_peer": 7},
            "rx_packets": 10, "tx_packets": 11, "extra_field": true}"#;
        let s = GatewayStatus::parse(json).unwrap();
        assert_eq!(s.peers.len(), 2);
        assert_eq!(
            s.peer("p").unwrap().endpoint.as_deref(),
            Some("203.0.113.2:40000")
        );
        assert_eq!(s.peer("q").unwrap().handshake_age(), None);
        assert_eq!(s.drops_of("replayed"), 3);
        assert_eq!(s.drops_of("no_such"), 0);
        assert_eq!(
            s.nonzero_drops(),
            vec![("unknown_peer".to_string(), 7), ("replayed".to_string(), 3)]
        );
    }

    #[test]
    fn kinds_parse() {
        assert_eq!("sluice".parse::<GatewayKind>(), Ok(GatewayKind::Sluice));
        assert_eq!(
            "wireguard-go".parse::<GatewayKind>(),
            Ok(GatewayKind::WireguardGo)
        );
        assert_eq!(
            "boringtun".parse::<GatewayKind>(),
            Ok(GatewayKind::Boringtun)
        );
        assert!("kernel".parse::<GatewayKind>().is_err());
    }
}
