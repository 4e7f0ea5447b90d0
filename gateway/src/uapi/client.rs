//! The client side of the UAPI, for `sluice show`: ask a running interface for its state
//! (`get=1`) and print it the way `wg show` does, so operators read one familiar layout.

use super::protocol::{
    decode_hex_key, parse_endpoint, parse_prefix, DeviceState, PeerState, SecretKey,
};
use super::SOCKET_DIR;
use crate::keys::encode_key;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Ask the interface `ifname` for its state over `/var/run/wireguard/<ifname>.sock`.
pub fn query(ifname: &str) -> io::Result<DeviceState> {
    let path = Path::new(SOCKET_DIR).join(format!("{ifname}.sock"));
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: {e} (is sluice running?)", path.display()),
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"get=1\n\n")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    parse_get(&lines).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("bad {key} in reply"))
}

fn key(k: &str, v: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    decode_hex_key(v, &mut out).map_err(|e| format!("bad {k} in reply: {e}"))?;
    Ok(out)
}

/// Parse the `key=value` lines of a `get` reply (up to and including `errno=`).
pub fn parse_get(lines: &[String]) -> Result<DeviceState, String> {
    let mut dev = DeviceState::default();
    let mut nsec = 0u32;
    for line in lines {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("bad reply line {line:?}"))?;
        if k == "public_key" {
            dev.peers.push(PeerState::new(key(k, v)?));
            continue;
        }
        match (k, dev.peers.last_mut()) {
            ("errno", _) if v != "0" => return Err(format!("the interface answered errno {v}")),
            ("errno", _) | ("protocol_version", _) => {}
            ("private_key", None) => dev.private_key = Some(SecretKey::new(key(k, v)?)),
            ("listen_port", None) => dev.listen_port = number(k, v)?,
            ("fwmark", None) => dev.fwmark = number(k, v)?,
            ("preshared_key", Some(p)) => p.preshared_key = Some(SecretKey::new(key(k, v)?)),
            ("endpoint", Some(p)) => {
                p.endpoint = Some(parse_endpoint(v).map_err(|e| e.to_string())?)
            }
            ("last_handshake_time_sec", Some(p)) => {
                let secs: u64 = number(k, v)?;
                p.last_handshake = (secs > 0).then_some((secs, nsec));
            }
            ("last_handshake_time_nsec", Some(p)) => {
                nsec = number(k, v)?;
                if let Some((s, _)) = p.last_handshake {
                    p.last_handshake = Some((s, nsec));
                }
            }
            ("tx_bytes", Some(p)) => p.tx_bytes = number(k, v)?,
            ("rx_bytes", Some(p)) => p.rx_bytes = number(k, v)?,
            ("persistent_keepalive_interval", Some(p)) => p.persistent_keepalive = number(k, v)?,
            ("allowed_ip", Some(p)) => p
                .allowed_ips
                .push(parse_prefix(v).map_err(|e| e.to_string())?),
            _ => {}
        }
    }
    Ok(dev)
}

/// Bytes as `wg show` prints them.
fn bytes(b: u64) -> String {
    const UNITS: [(&str, f64); 4] = [
        ("TiB", 1099511627776.0),
        ("GiB", 1073741824.0),
        ("MiB", 1048576.0),
        ("KiB", 1024.0),
    ];
    for (unit, size) in UNITS {
        if b as f64 >= size {
            return format!("{:.2} {unit}", b as f64 / size);
        }
    }
    format!("{b} B")
}

/// Elapsed time as `wg show` prints it: "1 minute, 5 seconds ago", or "Now".
fn ago(secs: u64) -> String {
    let parts = [
        (secs / (365 * 86_400), "year"),
        (secs % (365 * 86_400) / 86_400, "day"),
        (secs % 86_400 / 3600, "hour"),
        (secs % 3600 / 60, "minute"),
        (secs % 60, "second"),
    ];
    let words: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, w)| format!("{n} {w}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    if words.is_empty() {
        "Now".into()
    } else {
        format!("{} ago", words.join(", "))
    }
}

/// The interface in `wg show`'s layout; peers with the most recent handshake first.
pub fn format_show(ifname: &str, dev: &DeviceState, now_unix: u64) -> String {
    let mut out = format!("interface: {ifname}\n");
    if let Some(k) = &dev.private_key {
        out += &format!(
            "  public key: {}\n",
            encode_key(&crate::keys::public_from_private(k.as_bytes()))
        );
        out += "  private key: (hidden)\n";
    }
    if dev.listen_port != 0 {
        out += &format!("  listening port: {}\n", dev.listen_port);
    }
    if dev.fwmark != 0 {
        out += &format!("  fwmark: 0x{:x}\n", dev.fwmark);
    }
    let mut peers: Vec<&PeerState> = dev.peers.iter().collect();
    peers.sort_by_key(|p| std::cmp::Reverse(p.last_handshake));
    for p in peers {
        out += &format!("\npeer: {}\n", encode_key(&p.public_key));
        if p.preshared_key.is_some() {
            out += "  preshared key: (hidden)\n";
        }
        if let Some(e) = p.endpoint {
            out += &format!("  endpoint: {e}\n");
        }
        let ips: Vec<String> = p
            .allowed_ips
            .iter()
            .map(|(a, l)| format!("{a}/{l}"))
            .collect();
        out += &format!(
            "  allowed ips: {}\n",
            if ips.is_empty() {
                "(none)".into()
            } else {
                ips.join(", ")
            }
        );
        if let Some((secs, _)) = p.last_handshake {
            out += &format!(
                "  latest handshake: {}\n",
                ago(now_unix.saturating_sub(secs))
            );
        }
        if p.rx_bytes > 0 || p.tx_bytes > 0 {
            out += &format!(
                "  transfer: {} received, {} sent\n",
                bytes(p.rx_bytes),
                bytes(p.tx_bytes)
            );
        }
        if p.persistent_keepalive > 0 {
            out += &format!(
                "  persistent keepalive: every {}\n",
                ago(u64::from(p.persistent_keepalive)).trim_end_matches(" ago")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_ages_match_wg() {
        assert_eq!(bytes(789), "789 B");
        assert_eq!(bytes(123_456), "120.56 KiB");
        assert_eq!(bytes(5 << 30), "5.00 GiB");
        assert_eq!(ago(0), "Now");
        assert_eq!(ago(1), "1 second ago");
        assert_eq!(ago(62), "1 minute, 2 seconds ago");
        assert_eq!(ago(86_400 * 2 + 3600), "2 days, 1 hour ago");
    }

    #[test]
    fn a_get_reply_parses() {
        let lines: Vec<String> = [
            "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a",
            "listen_port=51820",
            "public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33",
            "endpoint=[2001:db8::1]:443",
            "last_handshake_time_sec=100",
            "last_handshake_time_nsec=5",
            "tx_bytes=1",
            "rx_bytes=2",
            "persistent_keepalive_interval=25",
            "allowed_ip=10.0.0.2/32",
            "errno=0",
        ]
        .map(String::from)
        .to_vec();
        let d = parse_get(&lines).unwrap();
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 1);
        assert_eq!(d.peers[0].last_handshake, Some((100, 5)));
        assert_eq!(d.peers[0].allowed_ips.len(), 1);
        assert!(parse_get(&["errno=22".to_string()]).is_err());
    }
}
