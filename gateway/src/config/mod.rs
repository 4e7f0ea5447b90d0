//! Configuration: `gateway.toml` plus the standard wg-quick file it points to.
//!
//! Loading validates everything before anything starts: a bad value, an unknown key, a
//! duplicate peer, AllowedIPs overlapping another peer's, a missing file or an unparseable key
//! is reported as `file:line: reason` and nothing is applied.
//!
//! ```toml
//! [interface]
//! name = "sluice0"            # TUN device and UAPI socket name
//! wg_config = "sluice0.conf"  # a wg-quick file, relative to this file's folder
//!
//! [dataplane]
//! mode = "auto"               # auto | xdp | socket
//! workers = 2                 # data-path threads (default: one per core)
//! cores = [0, 1]              # pin workers to these cores (default: 0..workers)
//! outer = "eth0"              # the NIC the XDP program attaches to (xdp and auto modes)
//! inner = "eth1"              # appliance mode: the inside NIC, also run by XDP/AF_XDP
//! inner_next_hop = ["10.88.0.2", "fd88::2"]  # the inside gateway, at most one per family
//!
//! [metrics]
//! listen = "127.0.0.1:9586"   # Prometheus /metrics and /healthz (optional)
//! per_peer = 10000            # per-peer series for at most this many peers (0: none)
//!
//! [log]
//! level = "info"              # or RUST_LOG-style directives; SLUICE_LOG overrides it
//!
//! [ha]                        # optional: a member of an HA group, see [`ha`]
//! mode = "vrrp"
//! node = 0
//! members = ["10.99.0.1:51821", "10.99.0.2:51821"]
//! secret_file = "ha.key"
//! vips = ["192.0.2.10"]
//! ```

pub mod ha;
pub mod wgquick;

use crate::proto::allowedips::AllowedIps;
use crate::proto::peer::PeerConfig;
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use toml::Spanned;
use wgquick::{Cidr, WgConfig};
use zeroize::Zeroizing;

pub use wgquick::Located;

/// A configuration problem, located as precisely as the input allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub reason: String,
}

impl ConfigError {
    pub fn at(file: &Path, line: usize, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: Some(line),
            reason: reason.into(),
        }
    }
    pub fn file(file: &Path, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// Which data path carries WireGuard traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// XDP where the outer interface takes a program, sockets otherwise.
    Auto,
    Xdp,
    Socket,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataplane {
    pub mode: Mode,
    pub workers: usize,
    pub cores: Vec<usize>,
    /// The outer NIC for the XDP fast path; required by `mode = "xdp"`.
    pub outer: Option<String>,
    /// Appliance mode: the inside NIC, run by XDP and AF_XDP too (needs the xdp data path).
    pub inner: Option<String>,
    /// The inside gateway per family (at most one each); a family without one sends to the
    /// packet's own destination (directly attached inside hosts).
    pub inner_next_hop: Vec<IpAddr>,
}

/// A validated gateway configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub name: String,
    pub wg_path: PathBuf,
    pub private_key: Zeroizing<[u8; 32]>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub addresses: Vec<Cidr>,
    pub mtu: u16,
    pub peers: Vec<PeerConfig>,
    pub dataplane: Dataplane,
    pub metrics: Option<SocketAddr>,
    /// Per-peer metric series: at most this many peers (0: none); `None`: the default cap.
    pub metrics_per_peer: Option<usize>,
    /// The log filter of `[log] level` (validated; the `SLUICE_LOG` environment variable
    /// overrides it); `None`: `info`.
    pub log_level: Option<String>,
    /// Things accepted but not acted on, for the operator to see at start.
    pub notes: Vec<String>,
    /// `[ha]`: this gateway is a member of an HA group; `None`: standalone.
    pub ha: Option<ha::HaConfig>,
}

pub const DEFAULT_LISTEN_PORT: u16 = 51820;
pub const DEFAULT_MTU: u16 = 1420;
const MAX_WORKERS: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    interface: RawInterface,
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    ha: Option<ha::RawHa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    wg_config: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    mode: Option<Spanned<String>>,
    workers: Option<Spanned<i64>>,
    cores: Option<Spanned<Vec<i64>>>,
    outer: Option<Spanned<String>>,
    inner: Option<Spanned<String>>,
    inner_next_hop: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
    per_peer: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<Spanned<String>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |s| s.matches('\n').count() + 1)
}

/// Load and validate a gateway configuration.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
    let raw: RawGateway = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start));
        let reason = e.message().trim().to_string();
        ConfigError {
            file: path.to_path_buf(),
            line,
            reason,
        }
    })?;
    let at = |s: std::ops::Range<usize>, reason: String| {
        ConfigError::at(path, line_of(&text, s.start), reason)
    };

    let name = raw.interface.name.get_ref().clone();
    if !valid_ifname(&name) {
        return Err(at(
            raw.interface.name.span(),
            format!(
                "interface name '{name}' must be 1-15 characters of letters, digits, '_', '-', '.'"
            ),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let wg_path = dir.join(raw.interface.wg_config.get_ref());
    let wg_text = std::fs::read_to_string(&wg_path).map_err(|e| {
        at(
            raw.interface.wg_config.span(),
            format!("cannot read wg_config '{}': {e}", wg_path.display()),
        )
    })?;
    let wg = wgquick::parse(&wg_path, &wg_text)?;
    let dataplane = dataplane(&raw.dataplane, &at)?;
    let metrics = match &raw.metrics.listen {
        None => None,
        Some(l) => Some(l.get_ref().parse::<SocketAddr>().map_err(|_| {
            at(
                l.span(),
                format!("metrics.listen '{}' must be address:port", l.get_ref()),
            )
        })?),
    };
    let per_peer = match &raw.metrics.per_peer {
        None => None,
        Some(n) => Some(usize::try_from(*n.get_ref()).map_err(|_| {
            at(
                n.span(),
                "metrics.per_peer must be 0 (off) or a peer count".into(),
            )
        })?),
    };
    let ha = match &raw.ha {
        None => None,
        Some(h) => Some(ha::parse(h, dir, &at)?),
    };
    let mut cfg = build(path, name, wg_path, wg, dataplane, metrics)?;
    cfg.metrics_per_peer = per_peer;
    cfg.ha = ha;
    if let Some(l) = &raw.log.level {
        crate::log::parse_filter(l.get_ref())
            .map_err(|why| at(l.span(), format!("log.level '{}': {why}", l.get_ref())))?;
        cfg.log_level = Some(l.get_ref().clone());
    }
    Ok(cfg)
}

fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

fn dataplane(
    raw: &RawDataplane,
    at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<Dataplane, ConfigError> {
    let mode = match &raw.mode {
        None => Mode::Auto,
        Some(m) => match m.get_ref().as_str() {
            "auto" => Mode::Auto,
            "xdp" => Mode::Xdp,
            "socket" => Mode::Socket,
            other => {
                return Err(at(
                    m.span(),
                    format!("dataplane.mode must be auto, xdp or socket, got '{other}'"),
                ))
            }
        },
    };
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match &raw.workers {
        None => raw
            .cores
            .as_ref()
            .map_or(available, |c| c.get_ref().len().max(1)),
        Some(w) => usize::try_from(*w.get_ref())
            .ok()
            .filter(|&n| (1..=MAX_WORKERS).contains(&n))
            .ok_or_else(|| {
                at(
                    w.span(),
                    format!("dataplane.workers must be 1 to {MAX_WORKERS}"),
                )
            })?,
    };
    let cores = match &raw.cores {
        None => (0..workers).map(|i| i % available).collect(),
        Some(c) => {
            let cores: Vec<usize> = c
                .get_ref()
                .iter()
                .map(|&n| usize::try_from(n).ok().filter(|&n| n < 4096))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    at(
                        c.span(),
                        "dataplane.cores must be core numbers (0 to 4095)".into(),
                    )
                })?;
            if cores.len() != workers {
                return Err(at(
                    c.span(),
                    format!(
                        "dataplane.cores lists {} cores for {workers} workers",
                        cores.len()
                    ),
                ));
            }
            cores
        }
    };
    let outer = match &raw.outer {
        None => None,
        Some(o) if valid_ifname(o.get_ref()) => Some(o.get_ref().clone()),
        Some(o) => {
            return Err(at(
                o.span(),
                format!(
                    "dataplane.outer must be an interface name (1 to 15 of a-z A-Z 0-9 _ - .), got '{}'",
                    o.get_ref()
                ),
            ))
        }
    };
    if mode == Mode::Xdp && outer.is_none() {
        let span = raw.mode.as_ref().map_or(0..0, |m| m.span());
        return Err(at(
            span,
            "dataplane.mode = \"xdp\" needs dataplane.outer, the interface to attach to".into(),
        ));
    }
    let inner = match &raw.inner {
        None => None,
        Some(i) if !valid_ifname(i.get_ref()) => {
            return Err(at(
                i.span(),
                format!(
                    "dataplane.inner must be an interface name (1 to 15 of a-z A-Z 0-9 _ - .), got '{}'",
                    i.get_ref()
                ),
            ))
        }
        Some(i) if mode == Mode::Socket || outer.is_none() => {
            return Err(at(
                i.span(),
                "dataplane.inner (appliance mode) needs the xdp data path: mode = \"xdp\" or \"auto\" with dataplane.outer".into(),
            ))
        }
        Some(i) if Some(i.get_ref()) == outer.as_ref() => {
            return Err(at(
                i.span(),
                "dataplane.inner must be another interface than dataplane.outer".into(),
            ))
        }
        Some(i) => Some(i.get_ref().clone()),
    };
    let mut inner_next_hop: Vec<IpAddr> = Vec::new();
    if let Some(hops) = &raw.inner_next_hop {
        if inner.is_none() {
            return Err(at(
                hops.span(),
                "dataplane.inner_next_hop needs dataplane.inner".into(),
            ));
        }
        for h in hops.get_ref() {
            let ip: IpAddr = h.parse().map_err(|_| {
                at(
                    hops.span(),
                    format!("dataplane.inner_next_hop: '{h}' is not an IP address"),
                )
            })?;
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(at(
                    hops.span(),
                    format!("dataplane.inner_next_hop: '{h}' is not a unicast address"),
                ));
            }
            if inner_next_hop.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
                return Err(at(
                    hops.span(),
                    "dataplane.inner_next_hop lists two addresses of one family (at most one IPv4 and one IPv6)".into(),
                ));
            }
            inner_next_hop.push(ip);
        }
    }
    Ok(Dataplane {
        mode,
        workers,
        cores,
        outer,
        inner,
        inner_next_hop,
    })
}

fn build(
    path: &Path,
    name: String,
    wg_path: PathBuf,
    wg: WgConfig,
    dataplane: Dataplane,
    metrics: Option<SocketAddr>,
) -> Result<Config, ConfigError> {
    let itf = &wg.interface;
    let private_key = itf
        .private_key
        .as_ref()
        .map(|k| k.value.clone())
        .ok_or_else(|| ConfigError::file(&wg_path, "[Interface] has no PrivateKey"))?;
    let own_public = crate::keys::public_from_private(&private_key);
    let peers = peers(&wg_path, &wg, &own_public)?;
    let mut notes: Vec<String> = itf
        .not_applied
        .iter()
        .map(|k| {
            format!(
                "{}:{}: '{}' is a wg-quick setting that sluice does not apply",
                wg_path.display(),
                k.line,
                k.value
            )
        })
        .collect();
    if itf.listen_port.is_none() {
        notes.push(format!(
            "no ListenPort in {}; using {DEFAULT_LISTEN_PORT}",
            wg_path.display()
        ));
    }
    Ok(Config {
        path: path.to_path_buf(),
        name,
        private_key,
        listen_port: itf
            .listen_port
            .as_ref()
            .map_or(DEFAULT_LISTEN_PORT, |p| p.value),
        fwmark: itf.fwmark.as_ref().map_or(0, |f| f.value),
        addresses: itf.addresses.iter().map(|a| a.value).collect(),
        mtu: itf.mtu.as_ref().map_or(DEFAULT_MTU, |m| m.value),
        peers,
        dataplane,
        metrics,
        metrics_per_peer: None,
        log_level: None,
        notes,
        ha: None,
        wg_path,
    })
}

/// Peers as the protocol core takes them, after checking for duplicate keys and AllowedIPs
/// that overlap another peer's (a concentrator's users must not be able to claim each other's
/// addresses; overlap within one peer is harmless).
fn peers(
    wg_path: &Path,
    wg: &WgConfig,
    own_public: &[u8; 32],
) -> Result<Vec<PeerConfig>, ConfigError> {
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(wg.peers.len());
    for p in &wg.peers {
        let key = p
            .public_key
            .as_ref()
            .ok_or_else(|| ConfigError::at(wg_path, p.line, "[Peer] has no PublicKey"))?;
        if &key.value == own_public {
            return Err(ConfigError::at(
                wg_path,
                key.line,
                "a peer has the interface's own public key",
            ));
        }
        if let Some(first) = seen.insert(key.value, key.line) {
            return Err(ConfigError::at(
                wg_path,
                key.line,
                format!("duplicate peer: this PublicKey is also on line {first}"),
            ));
        }
        out.push(PeerConfig {
            public_key: key.value,
            preshared_key: p.preshared_key.as_ref().map(|k| k.value.clone()),
            endpoint: p.endpoint.as_ref().map(|e| e.value),
            persistent_keepalive: p.persistent_keepalive.as_ref().map(|k| k.value),
            allowed_ips: p
                .allowed_ips
                .iter()
                .map(|c| (c.value.network(), c.value.len))
                .collect(),
        });
    }
    check_overlaps(wg_path, wg)?;
    Ok(out)
}

/// Insert prefixes shortest first; a prefix that lands inside another peer's is an overlap.
/// (Nested prefixes of one peer are fine; by induction, checking the longest match suffices.)
fn check_overlaps(wg_path: &Path, wg: &WgConfig) -> Result<(), ConfigError> {
    let mut all: Vec<(usize, &Located<Cidr>)> = wg
        .peers
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.allowed_ips.iter().map(move |c| (i, c)))
        .collect();
    all.sort_by_key(|(_, c)| c.value.len);
    let mut table: AllowedIps<(usize, usize)> = AllowedIps::new();
    for (peer, c) in all {
        if let Some((other, line)) = table.lookup(c.value.network()) {
            if other != peer {
                return Err(ConfigError::at(
                    wg_path,
                    c.line,
                    format!(
                        "AllowedIPs {} overlaps another peer's AllowedIPs on line {line}",
                        c.value
                    ),
                ));
            }
        }
        // Lengths were validated by the parser, so the insert cannot fail.
        let _ = table.insert(c.value.network(), c.value.len, (peer, c.line));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K_SELF: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const K_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const K_B: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

    /// A scratch folder removed when dropped.
    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let d =
                std::env::temp_dir().join(format!("sluice-cfg-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn own_public() -> String {
        let k = crate::keys::decode_key(K_SELF).unwrap();
        crate::keys::encode_key(&crate::keys::public_from_private(&k))
    }

    fn wg(peers: &str) -> String {
        format!("[Interface]\nPrivateKey = {K_SELF}\nListenPort = 51820\nAddress = 10.0.0.1/24\n{peers}")
    }

    const GOOD_TOML: &str = "[interface]\nname = \"sluice0\"\nwg_config = \"wg.conf\"\n\n[dataplane]\nmode = \"socket\"\nworkers = 2\ncores = [0, 1]\n\n[metrics]\nlisten = \"127.0.0.1:9586\"\n";

    #[test]
    fn loads_a_full_config_with_paths_relative_to_the_toml() {
        let d = Dir::new("good");
        d.write("wg.conf", &wg(&format!("[Peer]\nPublicKey = {K_A}\nAllowedIPs = 10.0.0.2/32\n[Peer]\nPublicKey = {K_B}\nAllowedIPs = 10.0.0.3/32, fd00::3/128\nPersistentKeepalive = 25\n")));
        let p = d.write("gateway.toml", GOOD_TOML);
        let c = load(&p).unwrap();
        assert_eq!(c.name, "sluice0");
        assert_eq!(c.wg_path, d.0.join("wg.conf"));
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[1].allowed_ips.len(), 2);
        assert_eq!(c.peers[1].persistent_keepalive, Some(25));
        assert_eq!(
            c.dataplane,
            Dataplane {
                mode: Mode::Socket,
                workers: 2,
                cores: vec![0, 1],
                outer: None,
                inner: None,
                inner_next_hop: Vec::new(),
            }
        );
        assert_eq!(c.metrics, Some("127.0.0.1:9586".parse().unwrap()));
        assert_eq!(c.mtu, DEFAULT_MTU);
    }

    fn err(toml: &str, wgconf: &str) -> ConfigError {
        let d = Dir::new("bad");
        d.write("wg.conf", wgconf);
        let p = d.write("gateway.toml", toml);
        load(&p).unwrap_err()
    }

    #[test]
    fn every_kind_of_mistake_names_file_line_and_reason() {
        let peer_a = format!("[Peer]\nPublicKey = {K_A}\nAllowedIPs = 10.0.0.0/24\n");
        let cases: Vec<(String, String, &str, usize, &str)> = vec![
            (
                GOOD_TOML.replace("mode = \"socket\"", "mode = \"turbo\""),
                wg(""),
                "gateway.toml",
                6,
                "auto, xdp or socket",
            ),
            (
                GOOD_TOML.replace("workers = 2", "workers = 0"),
                wg(""),
                "gateway.toml",
                7,
                "workers",
            ),
            (
                GOOD_TOML.replace("mode = \"socket\"", "mode = \"xdp\""),
                wg(""),
                "gateway.toml",
                6,
                "needs dataplane.outer",
            ),
            (
                GOOD_TOML.replace("cores = [0, 1]", "cores = [0, 1]\nouter = \"eth 0\""),
                wg(""),
                "gateway.toml",
                9,
                "dataplane.outer must be an interface name",
            ),
            (
                GOOD_TOML.replace("cores = [0, 1]", "cores = [0]"),
                wg(""),
                "gateway.toml",
                8,
                "1 cores for 2 workers",
            ),
            (
                format!("{GOOD_TOML}colour = \"blue\"\n"),
                wg(""),
                "gateway.toml",
                12,
                "unknown field",
            ),
            (
                GOOD_TOML.replace("name = \"sluice0\"", "name = \"this-name-is-far-too-long\""),
                wg(""),
                "gateway.toml",
                2,
                "1-15 characters",
            ),
            (
                GOOD_TOML.replace("wg.conf", "missing.conf"),
                wg(""),
                "gateway.toml",
                3,
                "cannot read wg_config",
            ),
            (
                GOOD_TOML.replace("127.0.0.1:9586", "localhost"),
                wg(""),
                "gateway.toml",
                11,
                "address:port",
            ),
            (
                GOOD_TOML.to_string(),
                wg(&format!(
                    "{peer_a}[Peer]\nPublicKey = {K_A}\nAllowedIPs = 10.9.0.0/24\n"
                )),
                "wg.conf",
                9,
                "duplicate peer",
            ),
            (
                GOOD_TOML.to_string(),
                wg(&format!(
                    "{peer_a}[Peer]\nPublicKey = {K_B}\nAllowedIPs = 10.0.0.7/32\n"
                )),
                "wg.conf",
                10,
                "overlaps another peer's AllowedIPs on line 7",
            ),
            (
                GOOD_TOML.to_string(),
                wg(&format!("[Peer]\nPublicKey = {}\n", own_public())),
                "wg.conf",
                6,
                "own public key",
            ),
            (
                GOOD_TOML.to_string(),
                wg("[Peer]\nPublicKey = AAAA\n"),
                "wg.conf",
                6,
                "PublicKey",
            ),
            (
                GOOD_TOML.to_string(),
                wg("[Peer]\nAllowedIPs = 10.0.0.9/32\n"),
                "wg.conf",
                5,
                "no PublicKey",
            ),
            (
                GOOD_TOML.to_string(),
                "[Interface]\nListenPort = 1\n".to_string(),
                "wg.conf",
                0,
                "no PrivateKey",
            ),
        ];
        for (toml, wgconf, file, line, reason) in cases {
            let e = err(&toml, &wgconf);
            assert!(e.file.ends_with(file), "{e}");
            assert_eq!(e.line, (line > 0).then_some(line), "{e}");
            assert!(e.reason.contains(reason), "expected '{reason}' in: {e}");
        }
    }

    #[test]
    fn a_broader_prefix_after_a_narrower_one_still_overlaps() {
        let e = err(
            GOOD_TOML,
            &wg(&format!("[Peer]\nPublicKey = {K_A}\nAllowedIPs = 10.0.0.7/32\n[Peer]\nPublicKey = {K_B}\nAllowedIPs = 10.0.0.0/8\n")),
        );
        assert!(e.reason.contains("overlaps"), "{e}");
        // The same peer may list nested prefixes.
        let d = Dir::new("nested");
        d.write(
            "wg.conf",
            &wg(&format!(
                "[Peer]\nPublicKey = {K_A}\nAllowedIPs = 10.0.0.0/8, 10.1.0.0/16\n"
            )),
        );
        assert!(load(&d.write("gateway.toml", GOOD_TOML)).is_ok());
    }

    #[test]
    fn appliance_mode_settings_are_checked_with_their_line() {
        let xdp = GOOD_TOML.replace("mode = \"socket\"", "mode = \"xdp\"\nouter = \"eth0\"");
        let d = Dir::new("appliance");
        d.write("wg.conf", &wg(""));
        let p = d.write(
            "gateway.toml",
            &xdp.replace(
                "cores = [0, 1]",
                "cores = [0, 1]\ninner = \"eth1\"\ninner_next_hop = [\"10.88.0.2\", \"fd88::2\"]",
            ),
        );
        let c = load(&p).unwrap();
        assert_eq!(c.dataplane.inner.as_deref(), Some("eth1"));
        assert_eq!(
            c.dataplane.inner_next_hop,
            vec![
                "10.88.0.2".parse::<IpAddr>().unwrap(),
                "fd88::2".parse().unwrap()
            ]
        );
        // auto with an outer interface may run appliance mode too; no next hop is fine.
        let auto = xdp.replace("mode = \"xdp\"", "mode = \"auto\"");
        let p = d.write(
            "gateway.toml",
            &auto.replace("cores = [0, 1]", "cores = [0, 1]\ninner = \"eth1\""),
        );
        let c = load(&p).unwrap();
        assert!(c.dataplane.inner_next_hop.is_empty());
        let with = |base: &str, extra: &str| {
            base.replace("cores = [0, 1]", &format!("cores = [0, 1]\n{extra}"))
        };
        let cases = [
            (
                with(GOOD_TOML, "inner = \"eth1\""),
                9,
                "needs the xdp data path",
            ),
            (
                with(
                    &GOOD_TOML.replace("mode = \"socket\"", "mode = \"auto\""),
                    "inner = \"eth1\"",
                ),
                9,
                "needs the xdp data path",
            ),
            (with(&xdp, "inner = \"eth0\""), 10, "another interface"),
            (with(&xdp, "inner = \"bad name!\""), 10, "interface name"),
            (
                with(&xdp, "inner_next_hop = [\"10.88.0.2\"]"),
                10,
                "needs dataplane.inner",
            ),
            (
                with(
                    &xdp,
                    "inner = \"eth1\"\ninner_next_hop = [\"10.88.0.2\", \"10.88.0.3\"]",
                ),
                11,
                "two addresses of one family",
            ),
            (
                with(&xdp, "inner = \"eth1\"\ninner_next_hop = [\"gateway\"]"),
                11,
                "'gateway' is not an IP address",
            ),
            (
                with(&xdp, "inner = \"eth1\"\ninner_next_hop = [\"ff02::1\"]"),
                11,
                "not a unicast address",
            ),
        ];
        for (toml, line, reason) in cases {
            let e = err(&toml, &wg(""));
            assert!(e.file.ends_with("gateway.toml"), "{e}");
            assert_eq!(e.line, Some(line), "{toml}\n{e}");
            assert!(e.reason.contains(reason), "expected '{reason}' in: {e}");
        }
    }

    #[test]
    fn log_levels_are_checked_with_their_line() {
        let d = Dir::new("log");
        d.write("wg.conf", &wg(""));
        let p = d.write(
            "gateway.toml",
            &format!("{GOOD_TOML}\n[log]\nlevel = \"warn,sluice::uapi=debug\"\n"),
        );
        assert_eq!(
            load(&p).unwrap().log_level.as_deref(),
            Some("warn,sluice::uapi=debug")
        );
        let line = GOOD_TOML.lines().count() + 3;
        let e = err(&format!("{GOOD_TOML}\n[log]\nlevel = \"loud\"\n"), &wg(""));
        assert_eq!(e.line, Some(line), "{e}");
        assert!(e.reason.contains("log.level 'loud'"), "{e}");
        let e = err(&format!("{GOOD_TOML}\n[log]\nlevels = \"info\"\n"), &wg(""));
        assert_eq!(e.line, Some(line), "{e}");
    }

    #[test]
    fn missing_toml_is_reported() {
        let e = load(Path::new("/nonexistent/sluice.toml")).unwrap_err();
        assert_eq!(e.line, None);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/sluice.toml: cannot read"),
            "{e}"
        );
    }
}
