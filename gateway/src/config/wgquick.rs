//! wg-quick / `wg setconf` configuration files, read the way `wg` and `wg-quick` read them, with
//! the line number of every value kept for error messages.
//!
//! - Sections `[Interface]` and `[Peer]`; keys are case-insensitive; `#` starts a comment;
//!   list values (`Address`, `AllowedIPs`) are comma-separated and may repeat.
//! - `wg` keys: PrivateKey, ListenPort, FwMark; per peer PublicKey, PresharedKey, AllowedIPs,
//!   Endpoint, PersistentKeepalive.
//! - `wg-quick` keys: Address, MTU, and DNS, Table, PreUp, PostUp, PreDown, PostDown,
//!   SaveConfig, which sluice accepts (so existing files drop in) and reports as not applied.

use super::ConfigError;
use crate::keys::{self, KEY_LEN};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use zeroize::Zeroizing;

/// A value with the line it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
}

/// An address with its prefix length, as in `Address` and `AllowedIPs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let m = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & m).into())
            }
        }
    }

    /// True if the two prefixes share any address (one contains the other).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let shorter = self.len.min(other.len);
        let a = Cidr {
            addr: self.addr,
            len: shorter,
        }
        .network();
        let b = Cidr {
            addr: other.addr,
            len: shorter,
        }
        .network();
        a == b
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("'{s}': prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, len })
    }
}

#[derive(Clone, Debug, Default)]
pub struct WgInterface {
    pub private_key: Option<Located<Zeroizing<[u8; KEY_LEN]>>>,
    pub listen_port: Option<Located<u16>>,
    pub fwmark: Option<Located<u32>>,
    pub addresses: Vec<Located<Cidr>>,
    pub mtu: Option<Located<u16>>,
    /// wg-quick keys that sluice accepts but does not act on, with their lines.
    pub not_applied: Vec<Located<String>>,
}

#[derive(Clone, Debug, Default)]
pub struct WgPeer {
    /// The line of this peer's `[Peer]` header.
    pub line: usize,
    pub public_key: Option<Located<[u8; KEY_LEN]>>,
    pub preshared_key: Option<Located<Zeroizing<[u8; KEY_LEN]>>>,
    pub allowed_ips: Vec<Located<Cidr>>,
    pub endpoint: Option<Located<SocketAddr>>,
    pub persistent_keepalive: Option<Located<u16>>,
}

#[derive(Clone, Debug, Default)]
pub struct WgConfig {
    pub interface: WgInterface,
    pub peers: Vec<WgPeer>,
}

enum Section {
    None,
    Interface,
    Peer,
}

/// Parse a wg-quick file. `path` is used in error messages only.
pub fn parse(path: &Path, text: &str) -> Result<WgConfig, ConfigError> {
    let mut cfg = WgConfig::default();
    let mut section = Section::None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |reason: String| ConfigError::at(path, line, reason);
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if content.starts_with('[') {
            section = match content.to_ascii_lowercase().as_str() {
                "[interface]" => Section::Interface,
                "[peer]" => {
                    cfg.peers.push(WgPeer {
                        line,
                        ..WgPeer::default()
                    });
                    Section::Peer
                }
                _ => return Err(err(format!("unknown section {content}"))),
            };
            continue;
        }
        let (key, value) = content
            .split_once('=')
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()))
            .ok_or_else(|| err(format!("expected 'Key = Value', got '{content}'")))?;
        if value.is_empty() {
            return Err(err(format!("'{key}' has no value")));
        }
        match (&section, cfg.peers.last_mut()) {
            (Section::Interface, _) => {
                interface_key(&mut cfg.interface, &key, value, line).map_err(err)?
            }
            (Section::Peer, Some(peer)) => peer_key(peer, &key, value, line).map_err(err)?,
            _ => {
                return Err(err(format!(
                    "'{key}' outside of an [Interface] or [Peer] section"
                )))
            }
        }
    }
    Ok(cfg)
}

fn set_once<T>(
    slot: &mut Option<Located<T>>,
    value: T,
    line: usize,
    key: &str,
) -> Result<(), String> {
    if let Some(prev) = slot {
        return Err(format!("'{key}' given twice (first on line {})", prev.line));
    }
    *slot = Some(Located { value, line });
    Ok(())
}

fn list<T: std::str::FromStr<Err = String>>(
    value: &str,
    line: usize,
    out: &mut Vec<Located<T>>,
) -> Result<(), String> {
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        out.push(Located {
            value: item.parse()?,
            line,
        });
    }
    Ok(())
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("'{key}' must be a number in range, got '{value}'"))
}

fn interface_key(itf: &mut WgInterface, key: &str, value: &str, line: usize) -> Result<(), String> {
    match key {
        "privatekey" => {
            let k = keys::decode_key(value).map_err(|e| format!("PrivateKey: {e}"))?;
            set_once(&mut itf.private_key, k, line, "PrivateKey")
        }
        "listenport" => set_once(
            &mut itf.listen_port,
            number("ListenPort", value)?,
            line,
            "ListenPort",
        ),
        "fwmark" => {
            let v = if value == "off" {
                0
            } else if let Some(hex) = value.strip_prefix("0x") {
                u32::from_str_radix(hex, 16).map_err(|_| format!("FwMark: bad number '{value}'"))?
            } else {
                number("FwMark", value)?
            };
            set_once(&mut itf.fwmark, v, line, "FwMark")
        }
        "address" => list(value, line, &mut itf.addresses),
        "mtu" => {
            let mtu: u16 = number("MTU", value)?;
            if !(576..=65_000).contains(&mtu) {
                return Err(format!("MTU must be between 576 and 65000, got {mtu}"));
            }
            set_once(&mut itf.mtu, mtu, line, "MTU")
        }
        "dns" | "table" | "preup" | "postup" | "predown" | "postdown" | "saveconfig" => {
            itf.not_applied.push(Located {
                value: key.to_string(),
                line,
            });
            Ok(())
        }
        _ => Err(format!("unknown key '{key}' in [Interface]")),
    }
}

fn peer_key(peer: &mut WgPeer, key: &str, value: &str, line: usize) -> Result<(), String> {
    match key {
        "publickey" => {
            let k = keys::decode_key(value).map_err(|e| format!("PublicKey: {e}"))?;
            set_once(&mut peer.public_key, *k, line, "PublicKey")
        }
        "presharedkey" => {
            let k = keys::decode_key(value).map_err(|e| format!("PresharedKey: {e}"))?;
            set_once(&mut peer.preshared_key, k, line, "PresharedKey")
        }
        "allowedips" => list(value, line, &mut peer.allowed_ips),
        "endpoint" => set_once(
            &mut peer.endpoint,
            resolve_endpoint(value)?,
            line,
            "Endpoint",
        ),
        "persistentkeepalive" => {
            let v = if value == "off" {
                0
            } else {
                number("PersistentKeepalive", value)?
            };
            set_once(
                &mut peer.persistent_keepalive,
                v,
                line,
                "PersistentKeepalive",
            )
        }
        _ => Err(format!("unknown key '{key}' in [Peer]")),
    }
}

/// `host:port`, `ip:port` or `[v6]:port`; a host name is resolved once, now, as `wg` does.
fn resolve_endpoint(value: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = value.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("Endpoint '{value}' needs a port (host:port)"))?;
    let port: u16 = number("Endpoint port", port)?;
    (host.trim_matches(|c| c == '[' || c == ']'), port)
        .to_socket_addrs()
        .map_err(|e| format!("Endpoint '{value}': cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("Endpoint '{value}': host has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const K2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn p(text: &str) -> Result<WgConfig, ConfigError> {
        parse(Path::new("wg0.conf"), text)
    }

    #[test]
    fn reads_a_typical_wg_quick_file() {
        let text = format!(
            "# a comment\n[Interface]\nPrivateKey = {K1}\nListenPort = 51820\nAddress = 10.0.0.1/24, fd00::1/64\nDNS = 1.1.1.1\nPostUp = iptables -A FORWARD\nMTU=1380\n\n[Peer]\npublickey = {K2} # trailing comment\nAllowedIPs = 10.0.0.2/32\nAllowedIPs = fd00::2/128\nEndpoint = [2001:db8::1]:51820\nPersistentKeepalive = 25\n"
        );
        let c = p(&text).unwrap();
        assert_eq!(c.interface.listen_port.as_ref().unwrap().value, 51820);
        assert_eq!(c.interface.addresses.len(), 2);
        assert_eq!(c.interface.mtu.as_ref().unwrap().value, 1380);
        assert_eq!(c.interface.not_applied.len(), 2);
        assert_eq!(c.peers.len(), 1);
        let peer = &c.peers[0];
        assert_eq!(peer.line, 10);
        assert_eq!(peer.allowed_ips.len(), 2);
        assert_eq!(peer.allowed_ips[1].line, 13);
        assert_eq!(
            peer.endpoint.as_ref().unwrap().value,
            "[2001:db8::1]:51820".parse().unwrap()
        );
        assert_eq!(peer.persistent_keepalive.as_ref().unwrap().value, 25);
    }

    #[test]
    fn errors_name_the_line_and_reason() {
        let cases = [
            ("[Interface]\nPrivateKey = nope\n", 2, "PrivateKey"),
            ("[Interface]\nListenPort = 99999\n", 2, "ListenPort"),
            ("[Interface]\nBogus = 1\n", 2, "unknown key"),
            ("[Wat]\n", 1, "unknown section"),
            ("PrivateKey = x\n", 1, "outside"),
            ("[Peer]\nAllowedIPs = 10.0.0.0/33\n", 2, "prefix length"),
            ("[Peer]\nAllowedIPs = banana\n", 2, "not an IP"),
            ("[Peer]\nEndpoint = 10.0.0.1\n", 2, "needs a port"),
            ("[Interface]\nListenPort = 1\nListenPort = 2\n", 3, "twice"),
            ("[Interface]\nMTU = 100\n", 2, "MTU"),
            ("[Interface]\njunk\n", 2, "Key = Value"),
            ("[Interface]\nAddress =\n", 2, "no value"),
        ];
        for (text, line, word) in cases {
            let e = p(text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
            assert!(e.reason.contains(word), "{text:?}: {e}");
            assert!(
                e.to_string().starts_with(&format!("wg0.conf:{line}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn cidr_overlap() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        assert!(c("10.0.0.0/24").overlaps(&c("10.0.0.7/32")));
        assert!(c("10.0.0.7/32").overlaps(&c("10.0.0.0/24")));
        assert!(!c("10.0.0.0/24").overlaps(&c("10.0.1.0/24")));
        assert!(c("0.0.0.0/0").overlaps(&c("192.168.1.1/32")));
        assert!(!c("0.0.0.0/0").overlaps(&c("::/0")));
        assert!(c("fd00::/8").overlaps(&c("fd12::1/128")));
        assert_eq!(c("10.1.2.3").len, 32);
        assert_eq!(
            c("10.1.2.3/8").network(),
            "10.0.0.0".parse::<IpAddr>().unwrap()
        );
    }
}
