//! WireGuard interfaces run by wireguard-go or boringtun-cli inside a namespace, configured
//! with the stock `wg` tool exactly as an administrator would.

use super::tools::Tool;
use super::{cmd, fatal, unix_now, wait_for, Daemon, Netns, NotYet, Result, RunDir};
use crate::keys;
use crate::OsRng;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where userspace WireGuard implementations put their UAPI socket: one folder for every
/// namespace, so interface names must be unique machine-wide.
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// The UAPI socket path of interface `ifname`.
pub fn uapi_socket(ifname: &str) -> PathBuf {
    PathBuf::from(UAPI_DIR).join(format!("{ifname}.sock"))
}

/// A Curve25519 key pair in WireGuard's base64 form.
#[derive(Clone)]
pub struct KeyPair {
    pub private: String,
    pub public: String,
}

impl KeyPair {
    /// A fresh key pair from the OS random source (as `wg genkey | wg pubkey`).
    pub fn generate() -> KeyPair {
        let private = keys::generate_private(&mut OsRng);
        KeyPair {
            private: keys::encode_key(&private),
            public: keys::encode_key(&keys::public_from_private(&private)),
        }
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A userspace WireGuard implementation that creates a TUN device and a UAPI socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WgImpl {
    /// `wireguard-go -f IFNAME` (Debian package wireguard-go).
    WireguardGo,
    /// `boringtun-cli -f --disable-drop-privileges IFNAME` (crates.io boringtun-cli).
    Boringtun,
}

impl WgImpl {
    pub fn label(self) -> &'static str {
        match self {
            WgImpl::WireguardGo => "wireguard-go",
            WgImpl::Boringtun => "boringtun-cli",
        }
    }

    pub fn tool(self) -> Tool {
        match self {
            WgImpl::WireguardGo => Tool::WireguardGo,
            WgImpl::Boringtun => Tool::BoringtunCli,
        }
    }

    /// The foreground command that creates interface `ifname` inside `ns`.
    fn command(self, ns: &Netns, ifname: &str) -> std::process::Command {
        let bin = self.tool().path();
        let mut c = ns.command(&bin.to_string_lossy());
        match self {
            // -f: stay in the foreground (no re-exec as a daemon) so we own the process.
            WgImpl::WireguardGo => {
                c.arg("-f").arg(ifname).env("LOG_LEVEL", "error");
            }
            // Without --disable-drop-privileges it switches to `nobody` and then cannot
            // reopen the UAPI socket; -f keeps it in the foreground.
            WgImpl::Boringtun => {
                c.args(["-f", "--disable-drop-privileges", ifname]);
            }
        }
        c
    }

    /// Turn `wg`'s latest-handshake value into an age. wireguard-go reports Unix seconds;
    /// boringtun-cli 0.7 reports seconds *since* the handshake in the same field. 0 means
    /// none (for boringtun also "less than a second ago", which a poll outlives).
    pub fn handshake_age(self, raw: u64) -> Option<Duration> {
        if raw == 0 {
            return None;
        }
        match self {
            WgImpl::WireguardGo => Some(Duration::from_secs(unix_now().saturating_sub(raw))),
            WgImpl::Boringtun => Some(Duration::from_secs(raw)),
        }
    }
}

impl fmt::Display for WgImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for WgImpl {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<WgImpl, String> {
        match s {
            "wireguard-go" | "wg-go" => Ok(WgImpl::WireguardGo),
            "boringtun" | "boringtun-cli" => Ok(WgImpl::Boringtun),
            _ => Err(format!(
                "unknown WireGuard implementation '{s}' (wireguard-go, boringtun)"
            )),
        }
    }
}

/// A peer as given to `wg set ... peer`.
#[derive(Clone, Debug, Default)]
pub struct WgPeer {
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<String>,
    pub persistent_keepalive: Option<u16>,
}

/// One peer as the implementation reports it (the fields of `wg show IF dump`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgPeerState {
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// The raw latest-handshake field (see [`WgImpl::handshake_age`]).
    pub latest_handshake: u64,
    /// Age of the last handshake, `None` if there was none.
    pub handshake_age: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Ask a userspace WireGuard implementation for its state over its UAPI socket (`get=1`),
/// which is what `wg show` does. Read directly because `wg show` drops the nanoseconds of the
/// last handshake, and boringtun-cli reports the handshake's *age* there, so a handshake less
/// than a second old would look like none.
pub fn uapi_get(ifname: &str) -> Result<String> {
    use std::io::{Read, Write};
    let path = uapi_socket(ifname);
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| err!("connecting to {}: {e}", path.display()))?;
    let t = Some(Duration::from_secs(5));
    s.set_read_timeout(t)
        .and_then(|_| s.set_write_timeout(t))
        .and_then(|_| s.write_all(b"get=1\n\n"))
        .map_err(|e| err!("asking {}: {e}", path.display()))?;
    // The answer ends with "errno=N" and a blank line; the daemon may keep the socket open.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| err!("reading {}: {e}", path.display()))?;
        out.extend_from_slice(&buf[..n]);
        if n == 0 || out.ends_with(b"\n\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.lines().find_map(|l| l.strip_prefix("errno=")) {
        Some("0") => Ok(text),
        Some(e) => Err(err!("{}: errno={e}", path.display())),
        None => Err(err!("{}: incomplete answer {text:?}", path.display())),
    }
}

/// Parse the peers out of a UAPI `get` answer (keys are hex there; base64 here).
pub fn parse_uapi(kind: WgImpl, text: &str) -> Vec<WgPeerState> {
    let mut peers: Vec<WgPeerState> = Vec::new();
    let mut nsec = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k == "public_key" {
            let key = hex_key(v).map_or_else(|| v.to_string(), |b| keys::encode_key(&b));
            peers.push(WgPeerState {
                public_key: key,
                endpoint: None,
                allowed_ips: Vec::new(),
                latest_handshake: 0,
                handshake_age: None,
                rx_bytes: 0,
                tx_bytes: 0,
            });
            nsec.push(0u64);
            continue;
        }
        let (Some(p), Some(ns)) = (peers.last_mut(), nsec.last_mut()) else {
            continue; // interface-level keys
        };
        let num = || v.parse::<u64>().unwrap_or(0);
        match k {
            "endpoint" => p.endpoint = Some(v.to_string()),
            "allowed_ip" => p.allowed_ips.push(v.to_string()),
            "last_handshake_time_sec" => p.latest_handshake = num(),
            "last_handshake_time_nsec" => *ns = num(),
            "rx_bytes" => p.rx_bytes = num(),
            "tx_bytes" => p.tx_bytes = num(),
            _ => {}
        }
    }
    for (p, ns) in peers.iter_mut().zip(nsec) {
        p.handshake_age = match kind {
            WgImpl::WireguardGo => kind.handshake_age(p.latest_handshake),
            // Seconds *and* nanoseconds since the handshake; both zero means none.
            WgImpl::Boringtun => (p.latest_handshake > 0 || ns > 0)
                .then(|| Duration::from_secs(p.latest_handshake) + Duration::from_nanos(ns)),
        };
    }
    peers
}

fn hex_key(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A running userspace WireGuard interface. Dropping it stops the process (which removes the
/// TUN device and the UAPI socket).
#[derive(Debug)]
pub struct WgInterface {
    kind: WgImpl,
    ns: String,
    ifname: String,
    daemon: Daemon,
    dir: PathBuf,
}

impl WgInterface {
    /// Start `kind` in `ns` creating `ifname` (at most 15 characters, unique machine-wide),
    /// and wait until its UAPI socket accepts `wg` commands.
    pub fn start(ns: &Netns, kind: WgImpl, ifname: &str, dir: &RunDir) -> Result<WgInterface> {
        Self::start_with_env(ns, kind, ifname, dir, &[])
    }

    /// [`WgInterface::start`] with environment variables for the process (e.g. `GOMAXPROCS`
    /// for wireguard-go, `WG_THREADS` for boringtun-cli).
    pub fn start_with_env(
        ns: &Netns,
        kind: WgImpl,
        ifname: &str,
        dir: &RunDir,
        env: &[(String, String)],
    ) -> Result<WgInterface> {
        if ifname.is_empty() || ifname.len() > 15 {
            return Err(err!("interface name '{ifname}' must be 1-15 characters"));
        }
        let sock = uapi_socket(ifname);
        if sock.exists() {
            return Err(err!(
                "{} exists: interface name {ifname} is already used by another WireGuard \
                 process (UAPI sockets are shared by all namespaces)",
                sock.display()
            ));
        }
        let log = dir.join(&format!("{ifname}.log"));
        let mut command = kind.command(ns, ifname);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let mut daemon = Daemon::spawn(
            &format!("{kind} {ifname} in {}", ns.name()),
            command,
            &log,
            vec![sock.clone()],
        )?;
        let ns_name = ns.name().to_string();
        wait_for(
            &format!("{kind} to create {}", sock.display()),
            Duration::from_secs(15),
            Duration::from_millis(20),
            || {
                daemon.ensure_running().map_err(fatal)?;
                if !sock.exists() {
                    return Ok(None);
                }
                // The socket file appears just before it listens: ask until `wg` gets an answer.
                cmd::run(Some(&ns_name), &["wg", "show", ifname, "listen-port"])
                    .map(|_| Some(()))
                    .map_err(NotYet::from)
            },
        )
        .map_err(|e| err!("{e}\nlog {}:\n{}", log.display(), daemon.log_tail(20)))?;
        Ok(WgInterface {
            kind,
            ns: ns_name,
            ifname: ifname.to_string(),
            daemon,
            dir: dir.path().to_path_buf(),
        })
    }

    pub fn kind(&self) -> WgImpl {
        self.kind
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The process id of the WireGuard process.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// `wg set IFNAME args...` inside the namespace.
    pub fn wg_set(&self, args: &[&str]) -> Result<()> {
        let mut argv = vec!["wg", "set", &self.ifname];
        argv.extend_from_slice(args);
        cmd::run(Some(&self.ns), &argv).map(|_| ())
    }

    /// Set the private key (via a 0600 file, as `wg` wants), the listen port if given, and
    /// add `peers`.
    pub fn configure(
        &self,
        key: &KeyPair,
        listen_port: Option<u16>,
        peers: &[WgPeer],
    ) -> Result<()> {
        let key_file = self.dir.join(format!("{}.key", self.ifname));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&key_file)
                .map_err(|e| err!("writing {}: {e}", key_file.display()))?;
            writeln!(f, "{}", key.private).map_err(|e| err!("writing key file: {e}"))?;
        }
        let key_path = key_file.to_string_lossy().into_owned();
        let port = listen_port.map(|p| p.to_string());
        let mut args: Vec<&str> = vec!["private-key", &key_path];
        if let Some(p) = port.as_deref() {
            args.extend(["listen-port", p]);
        }
        self.wg_set(&args)?;
        for p in peers {
            self.add_peer(p)?;
        }
        Ok(())
    }

    /// `wg set IF peer PUB [endpoint E] allowed-ips A [persistent-keepalive K]`.
    pub fn add_peer(&self, p: &WgPeer) -> Result<()> {
        let endpoint = p.endpoint.map(|e| e.to_string());
        let allowed = p.allowed_ips.join(",");
        let keepalive = p.persistent_keepalive.map(|k| k.to_string());
        let mut args: Vec<&str> = vec!["peer", &p.public_key, "allowed-ips", &allowed];
        if let Some(e) = endpoint.as_deref() {
            args.extend(["endpoint", e]);
        }
        if let Some(k) = keepalive.as_deref() {
            args.extend(["persistent-keepalive", k]);
        }
        self.wg_set(&args)
    }

    /// The peers, as `wg show IF dump` would report them (read over the UAPI socket, see
    /// [`uapi_get`]).
    pub fn peers(&self) -> Result<Vec<WgPeerState>> {
        Ok(parse_uapi(self.kind, &uapi_get(&self.ifname)?))
    }

    /// The state of peer `public_key`.
    pub fn peer(&self, public_key: &str) -> Result<WgPeerState> {
        self.peers()?
            .into_iter()
            .find(|p| p.public_key == public_key)
            .ok_or_else(|| err!("{}: no peer {public_key} in `wg show`", self.ifname))
    }

    /// Poll the interface until peer `public_key` shows a handshake; returns its age.
    pub fn wait_handshake(&mut self, public_key: &str, timeout: Duration) -> Result<Duration> {
        let ifname = self.ifname.clone();
        let kind = self.kind;
        let r = wait_for(
            &format!("a handshake on {kind} {ifname} with peer {public_key}"),
            timeout,
            Duration::from_millis(100),
            || {
                self.daemon.ensure_running().map_err(fatal)?;
                let text = uapi_get(&ifname)?;
                let p = parse_uapi(kind, &text)
                    .into_iter()
                    .find(|p| p.public_key == public_key)
                    .ok_or_else(|| format!("no such peer in {text}"))?;
                Ok(p.handshake_age)
            },
        );
        r.map_err(|e| err!("{e}\n{kind} log:\n{}", self.daemon.log_tail(20)))
    }

    /// Stop the process (SIGTERM, then SIGKILL): the TUN device and the socket go with it.
    pub fn stop(&mut self) {
        self.daemon.stop(super::process::STOP_GRACE);
    }

    /// Leave the process running when dropped (for `--keep`).
    pub fn detach(&mut self) {
        self.daemon.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_answers_parse_for_both_implementations() {
        let k1 = "772bf0bc203f31c26b94d45760a8a6d4b7864a80d5118483cc3f22846e900018";
        let text = format!(
            "own_public_key=0671d9aa715d68c2562558b7c0b0da628cdcb05cb27c5a9ba6546f7b7d5ab44c\n\
             listen_port=50503\npublic_key={k1}\npersistent_keepalive_interval=1\n\
             endpoint=198.18.0.1:51820\nallowed_ip=10.9.0.0/24\nallowed_ip=fd77::/64\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=672324399\n\
             rx_bytes=5\ntx_bytes=92\npublic_key={}\nerrno=0\n\n",
            "00".repeat(32)
        );
        let p = parse_uapi(WgImpl::Boringtun, &text);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].public_key,
            "dyvwvCA/McJrlNRXYKim1LeGSoDVEYSDzD8ihG6QABg="
        );
        assert_eq!(p[0].endpoint.as_deref(), Some("198.18.0.1:51820"));
        assert_eq!(p[0].allowed_ips, vec!["10.9.0.0/24", "fd77::/64"]);
        // boringtun: an age, here under a second.
        assert_eq!(p[0].handshake_age, Some(Duration::from_nanos(672_324_399)));
        assert_eq!((p[0].rx_bytes, p[0].tx_bytes), (5, 92));
        assert_eq!(p[1].endpoint, None);
        assert_eq!(p[1].handshake_age, None);
        // wireguard-go: a Unix time.
        let now = unix_now();
        let go = parse_uapi(
            WgImpl::WireguardGo,
            &format!(
                "public_key={k1}\nlast_handshake_time_sec={}\nerrno=0\n",
                now - 3
            ),
        );
        let age = go[0].handshake_age.unwrap();
        assert!(age >= Duration::from_secs(3) && age < Duration::from_secs(60));
        let none = parse_uapi(
            WgImpl::WireguardGo,
            &format!("public_key={k1}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"),
        );
        assert_eq!(none[0].handshake_age, None);
    }

    #[test]
    fn keys_are_wg_shaped() {
        let k = KeyPair::generate();
        assert_eq!(k.private.len(), 44);
        assert_eq!(k.public.len(), 44);
        assert!(!format!("{k:?}").contains(&k.private));
    }
}
