//! The UAPI text format, sans-IO: typed `set` requests parsed from text, `get` answers
//! formatted from a [`DeviceState`].
//!
//! Errno values follow wireguard-go (the reference userspace implementation):
//!
//! | problem | errno |
//! | --- | --- |
//! | a line without `=`, a request that is not UTF-8, data after the blank line | `EPROTO` |
//! | a connection closed in the middle of a request | `EPROTO` |
//! | an unknown key, a key in the wrong section, a bad value, `protocol_version` other than 1 | `EINVAL` |
//! | an unknown operation, `get=1` followed by anything but the blank line | `EINVAL` |
//! | a line or a request over its [`Limits`](super::Limits) (the reference has no limit) | `EMSGSIZE` |
//! | a client idle past the server's timeout mid-request | `ETIMEDOUT` |
//!
//! Error messages name the line and key but never echo a value: values can be secrets.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Length of every WireGuard key in bytes.
pub const KEY_LEN: usize = 32;

/// A private or preshared key: zeroized on drop, compared in constant time, never printed.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    /// Wrap key bytes. Prefer [`SecretKey::from_zeroizing`] when the bytes are already guarded.
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn from_zeroizing(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// An all-zero key, which UAPI uses to mean "no key".
    pub fn is_zero(&self) -> bool {
        bool::from(self.0.ct_eq(&[0u8; KEY_LEN]))
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&*other.0))
    }
}

impl Eq for SecretKey {}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// One validated `set=1` request. Applying it is the handler's job; the documented semantics
/// (the kernel's and wireguard-go's) are:
///
/// - `private_key`: `Some(None)` removes the key (the request carried all zeros).
/// - `replace_peers`: remove every peer before applying `peers`.
/// - `peers` in request order; the same public key may appear more than once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetRequest {
    pub private_key: Option<Option<SecretKey>>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<PeerChange>,
}

/// The lines following one `public_key=` line.
///
/// - `remove`: remove the peer; every other field is then to be ignored.
/// - `update_only`: change the peer only if it exists, never create it.
/// - `preshared_key`: `Some(None)` removes it (the request carried all zeros).
/// - `replace_allowed_ips`: drop the peer's allowed IPs before adding `allowed_ips`.
/// - `allowed_ips`: prefixes with host bits cleared; adding one that another peer holds moves
///   it to this peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerChange {
    pub public_key: [u8; KEY_LEN],
    pub remove: bool,
    pub update_only: bool,
    pub preshared_key: Option<Option<SecretKey>>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<(IpAddr, u8)>,
}

impl PeerChange {
    /// A change that only names the peer (creating it if absent).
    pub fn new(public_key: [u8; KEY_LEN]) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// What a `get=1` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub private_key: Option<SecretKey>,
    pub listen_port: u16,
    /// 0 means none (and is not printed).
    pub fwmark: u32,
    pub peers: Vec<PeerState>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: [u8; KEY_LEN],
    pub preshared_key: Option<SecretKey>,
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time of the last handshake: seconds and nanoseconds since the Unix epoch.
    pub last_handshake: Option<(u64, u32)>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Seconds; 0 means off.
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<(IpAddr, u8)>,
}

impl PeerState {
    /// A peer with nothing but its public key.
    pub fn new(public_key: [u8; KEY_LEN]) -> Self {
        Self {
            public_key,
            preshared_key: None,
            endpoint: None,
            last_handshake: None,
            tx_bytes: 0,
            rx_bytes: 0,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
        }
    }
}

/// Why a request was refused. [`UapiError::errno`] is what goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UapiError {
    #[error("line {line}: expected key=value")]
    Syntax { line: usize },
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("line {line}: data after the blank line that ends the request")]
    TrailingData { line: usize },
    #[error("line {line}: unknown key {key:?}")]
    UnknownKey { line: usize, key: String },
    #[error("line {line}: key {key:?} is not allowed here ({why})")]
    Misplaced {
        line: usize,
        key: &'static str,
        why: &'static str,
    },
    #[error("line {line}: invalid value for {key}: {why}")]
    InvalidValue {
        line: usize,
        key: &'static str,
        why: &'static str,
    },
    #[error("line {line}: unsupported protocol_version (only 1 is)")]
    ProtocolVersion { line: usize },
    #[error("unknown operation (expected get=1 or set=1)")]
    UnknownOperation,
    #[error("get=1 must be followed by a blank line")]
    GetWithArguments,
    #[error("a line is longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("the request is larger than {max} bytes")]
    RequestTooLarge { max: usize },
    #[error("the connection closed in the middle of a request")]
    Truncated,
    #[error("the client went idle in the middle of a request")]
    TimedOut,
}

impl UapiError {
    /// The positive errno sent back as `errno=N`.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Syntax { .. } | Self::NotUtf8 | Self::TrailingData { .. } | Self::Truncated => {
                libc::EPROTO
            }
            Self::UnknownKey { .. }
            | Self::Misplaced { .. }
            | Self::InvalidValue { .. }
            | Self::ProtocolVersion { .. }
            | Self::UnknownOperation
            | Self::GetWithArguments => libc::EINVAL,
            Self::LineTooLong { .. } | Self::RequestTooLarge { .. } => libc::EMSGSIZE,
            Self::TimedOut => libc::ETIMEDOUT,
        }
    }

    /// Whether the byte stream can no longer be framed (the connection must be closed after
    /// the reply).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::LineTooLong { .. }
                | Self::RequestTooLarge { .. }
                | Self::Truncated
                | Self::TimedOut
        )
    }
}

const DEVICE_KEYS: [&str; 4] = ["private_key", "listen_port", "fwmark", "replace_peers"];
const PEER_KEYS: [&str; 8] = [
    "remove",
    "update_only",
    "preshared_key",
    "endpoint",
    "persistent_keepalive_interval",
    "replace_allowed_ips",
    "allowed_ip",
    "protocol_version",
];

/// Parse the body of a `set=1` request: the `key=value` lines after `set=1`, each ending in
/// `\n`. A blank line ends the request; anything after it is an error.
pub fn parse_set(body: &str) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    let mut lines = body.split('\n').enumerate();
    for (idx, line) in lines.by_ref() {
        let line_no = idx + 2; // line 1 is `set=1`
        if line.is_empty() {
            break;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or(UapiError::Syntax { line: line_no })?;
        apply_line(&mut req, line_no, key, value)?;
    }
    if let Some((idx, _)) = lines.find(|(_, l)| !l.is_empty()) {
        return Err(UapiError::TrailingData { line: idx + 2 });
    }
    Ok(req)
}

fn apply_line(req: &mut SetRequest, line: usize, key: &str, value: &str) -> Result<(), UapiError> {
    if key == "public_key" {
        let mut pk = [0u8; KEY_LEN];
        decode_hex_key(value, &mut pk).map_err(|why| invalid(line, "public_key", why))?;
        req.peers.push(PeerChange::new(pk));
        return Ok(());
    }
    if let Some(peer) = req.peers.last_mut() {
        if let Some(&k) = DEVICE_KEYS.iter().find(|&&k| k == key) {
            let why = "interface keys must come before the first public_key";
            return Err(UapiError::Misplaced { line, key: k, why });
        }
        return apply_peer_line(peer, line, key, value);
    }
    if let Some(&k) = PEER_KEYS.iter().find(|&&k| k == key) {
        let why = "peer keys must follow a public_key line";
        return Err(UapiError::Misplaced { line, key: k, why });
    }
    apply_device_line(req, line, key, value)
}

fn apply_device_line(
    req: &mut SetRequest,
    line: usize,
    key: &str,
    value: &str,
) -> Result<(), UapiError> {
    match key {
        "private_key" => req.private_key = Some(parse_secret(line, "private_key", value)?),
        "listen_port" => req.listen_port = Some(parse_dec(line, "listen_port", value)?),
        "fwmark" => req.fwmark = Some(parse_dec(line, "fwmark", value)?),
        "replace_peers" => req.replace_peers = parse_true(line, "replace_peers", value)?,
        _ => return Err(unknown_key(line, key)),
    }
    Ok(())
}

fn apply_peer_line(
    peer: &mut PeerChange,
    line: usize,
    key: &str,
    value: &str,
) -> Result<(), UapiError> {
    match key {
        "remove" => peer.remove = parse_true(line, "remove", value)?,
        "update_only" => peer.update_only = parse_true(line, "update_only", value)?,
        "preshared_key" => peer.preshared_key = Some(parse_secret(line, "preshared_key", value)?),
        "endpoint" => {
            peer.endpoint = Some(parse_endpoint(value).map_err(|w| invalid(line, "endpoint", w))?)
        }
        "persistent_keepalive_interval" => {
            peer.persistent_keepalive =
                Some(parse_dec(line, "persistent_keepalive_interval", value)?)
        }
        "replace_allowed_ips" => {
            peer.replace_allowed_ips = parse_true(line, "replace_allowed_ips", value)?
        }
        "allowed_ip" => peer
            .allowed_ips
            .push(parse_prefix(value).map_err(|w| invalid(line, "allowed_ip", w))?),
        "protocol_version" if value == "1" => {}
        "protocol_version" => return Err(UapiError::ProtocolVersion { line }),
        _ => return Err(unknown_key(line, key)),
    }
    Ok(())
}

fn invalid(line: usize, key: &'static str, why: &'static str) -> UapiError {
    UapiError::InvalidValue { line, key, why }
}

fn unknown_key(line: usize, key: &str) -> UapiError {
    // Bounded and escaped: the key comes from the client and ends up in logs.
    let key: String = key.chars().take(40).flat_map(char::escape_debug).collect();
    UapiError::UnknownKey { line, key }
}

fn parse_true(line: usize, key: &'static str, value: &str) -> Result<bool, UapiError> {
    if value == "true" {
        Ok(true)
    } else {
        Err(invalid(line, key, "the only accepted value is \"true\""))
    }
}

/// Strict unsigned decimal: digits only (no sign, no spaces), within the type's range.
fn parse_dec<T: std::str::FromStr>(
    line: usize,
    key: &'static str,
    value: &str,
) -> Result<T, UapiError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(line, key, "expected an unsigned decimal number"));
    }
    value
        .parse()
        .map_err(|_| invalid(line, key, "number out of range"))
}

/// A secret key; all zeros means "remove" (`None`).
fn parse_secret(
    line: usize,
    key: &'static str,
    value: &str,
) -> Result<Option<SecretKey>, UapiError> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    decode_hex_key(value, &mut bytes).map_err(|why| invalid(line, key, why))?;
    let secret = SecretKey::from_zeroizing(bytes);
    Ok((!secret.is_zero()).then_some(secret))
}

/// Decode 64 hex digits (either case) into `out`. On error `out` is zeroed.
pub fn decode_hex_key(value: &str, out: &mut [u8; KEY_LEN]) -> Result<(), &'static str> {
    let digits = value.as_bytes();
    if digits.len() != 2 * KEY_LEN {
        return Err("a key is exactly 64 hex digits");
    }
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        match (hex_val(pair[0]), hex_val(pair[1])) {
            (Some(hi), Some(lo)) => *byte = (hi << 4) | lo,
            _ => {
                out.zeroize();
                return Err("a key is exactly 64 hex digits");
            }
        }
    }
    Ok(())
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `a.b.c.d:port`, `[v6]:port` or `[v6%scope]:port` (scope by number or interface name).
pub fn parse_endpoint(value: &str) -> Result<SocketAddr, &'static str> {
    const WHY: &str = "expected ip:port or [ipv6]:port";
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // A named scope (`fe80::1%eth0`), which getnameinfo produces and std does not parse.
    let rest = value.strip_prefix('[').ok_or(WHY)?;
    let (host, port) = rest.split_once("]:").ok_or(WHY)?;
    let (ip, scope) = host.split_once('%').ok_or(WHY)?;
    let ip: Ipv6Addr = ip.parse().map_err(|_| WHY)?;
    let port: u16 = port.parse().map_err(|_| WHY)?;
    let scope_id = if_index(scope).ok_or("unknown interface in the IPv6 scope")?;
    Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope_id)))
}

fn if_index(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// `addr/cidr` with the host bits cleared, as the kernel stores it.
pub fn parse_prefix(value: &str) -> Result<(IpAddr, u8), &'static str> {
    let (ip, cidr) = value
        .split_once('/')
        .ok_or("expected address/prefix-length")?;
    if cidr.is_empty() || cidr.len() > 3 || !cidr.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected address/prefix-length");
    }
    let cidr: u8 = cidr.parse().map_err(|_| "prefix length out of range")?;
    let ip: IpAddr = ip.parse().map_err(|_| "invalid IP address")?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if cidr > max {
        return Err("prefix length out of range");
    }
    Ok((mask(ip, cidr), cidr))
}

/// Clear the bits of `ip` beyond the first `cidr`.
pub fn mask(ip: IpAddr, cidr: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(cidr.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(cidr.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

/// The complete answer to `get=1`, ending in `errno=0\n\n`. It holds the private key in
/// hex, hence the zeroizing wrapper (sized up front so growing it leaves no copies behind).
pub fn format_get(state: &DeviceState) -> Zeroizing<String> {
    let allowed: usize = state.peers.iter().map(|p| p.allowed_ips.len()).sum();
    let estimate = 256 + state.peers.len() * 512 + allowed * 64;
    let mut out = Zeroizing::new(String::with_capacity(estimate));
    // fmt::Write into a String cannot fail.
    let _ = write_device(&mut out, state);
    for peer in &state.peers {
        let _ = write_peer(&mut out, peer);
    }
    out.push_str("errno=0\n\n");
    out
}

fn write_device(out: &mut String, state: &DeviceState) -> fmt::Result {
    if let Some(key) = &state.private_key {
        write_hex_line(out, "private_key", key.as_bytes())?;
    }
    writeln!(out, "listen_port={}", state.listen_port)?;
    if state.fwmark != 0 {
        writeln!(out, "fwmark={}", state.fwmark)?;
    }
    Ok(())
}

fn write_peer(out: &mut String, peer: &PeerState) -> fmt::Result {
    write_hex_line(out, "public_key", &peer.public_key)?;
    if let Some(psk) = &peer.preshared_key {
        write_hex_line(out, "preshared_key", psk.as_bytes())?;
    }
    out.push_str("protocol_version=1\n");
    if let Some(ep) = peer.endpoint {
        // SocketAddr's Display already brackets IPv6 (`[addr%scope]:port`).
        writeln!(out, "endpoint={ep}")?;
    }
    let (secs, nsecs) = peer.last_handshake.unwrap_or((0, 0));
    writeln!(out, "last_handshake_time_sec={secs}")?;
    writeln!(out, "last_handshake_time_nsec={nsecs}")?;
    writeln!(out, "tx_bytes={}", peer.tx_bytes)?;
    writeln!(out, "rx_bytes={}", peer.rx_bytes)?;
    writeln!(
        out,
        "persistent_keepalive_interval={}",
        peer.persistent_keepalive
    )?;
    for (ip, cidr) in &peer.allowed_ips {
        writeln!(out, "allowed_ip={ip}/{cidr}")?;
    }
    Ok(())
}

/// Writes `key=<64 hex digits>\n` straight into `out`, without an intermediate buffer.
fn write_hex_line(out: &mut String, key: &str, bytes: &[u8; KEY_LEN]) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push_str(key);
    out.push('=');
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out.push('\n');
    Ok(())
}

/// Lowercase hex of a public key, for building requests (tests, clients).
pub fn hex_key(bytes: &[u8; KEY_LEN]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
