//! The `[ha]` section: a gateway group sharing the identity key, the peer set and sessions.
//!
//! ```toml
//! [ha]
//! mode = "vrrp"        # vrrp: starts as backup, keepalived's notify hooks set the role;
//!                      # anycast: always active (routers decide who gets which client)
//! node = 0             # this member's index in `members`
//! members = ["10.99.0.1:51821", "10.99.0.2:51821"]  # sync addresses, same order everywhere
//! secret_file = "ha.key"   # 32-byte group secret (base64, `sluice genkey`), mode 0600
//! vips = ["192.0.2.10", "2001:db8::10"]
//! sync = true          # false: no session sync (clients re-handshake after a failover)
//! ```

use super::ConfigError;
use crate::proto::hasync::MAX_MEMBERS;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;
use zeroize::Zeroizing;

/// How the group shares the virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaMode {
    /// keepalived (VRRP) moves the VIPs; sluice starts as backup and follows notify hooks.
    Vrrp,
    /// Every member announces the VIPs (BGP); all are active.
    Anycast,
}

impl HaMode {
    pub fn label(self) -> &'static str {
        match self {
            HaMode::Vrrp => "vrrp",
            HaMode::Anycast => "anycast",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct HaConfig {
    pub mode: HaMode,
    pub node: u8,
    pub members: Vec<SocketAddr>,
    pub secret_file: PathBuf,
    pub secret: Zeroizing<[u8; 32]>,
    pub vips: Vec<IpAddr>,
    pub sync: bool,
}

impl std::fmt::Debug for HaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaConfig")
            .field("mode", &self.mode)
            .field("node", &self.node)
            .field("members", &self.members)
            .field("secret_file", &self.secret_file)
            .field("secret", &"<redacted>")
            .field("vips", &self.vips)
            .field("sync", &self.sync)
            .finish()
    }
}

impl HaConfig {
    /// This member's sync address.
    pub fn own_address(&self) -> SocketAddr {
        self.members[usize::from(self.node)]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    mode: Spanned<String>,
    node: Spanned<i64>,
    members: Spanned<Vec<String>>,
    secret_file: Spanned<String>,
    #[serde(default)]
    vips: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    sync: Option<bool>,
}

pub(super) fn parse(
    raw: &RawHa,
    dir: &Path,
    at: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<HaConfig, ConfigError> {
    let mode = match raw.mode.get_ref().as_str() {
        "vrrp" => HaMode::Vrrp,
        "anycast" => HaMode::Anycast,
        other => {
            return Err(at(
                raw.mode.span(),
                format!("ha.mode must be vrrp or anycast, got '{other}'"),
            ))
        }
    };
    let mut members: Vec<SocketAddr> = Vec::new();
    for m in raw.members.get_ref() {
        let a: SocketAddr = m.parse().map_err(|_| {
            at(
                raw.members.span(),
                format!("ha.members: '{m}' is not address:port"),
            )
        })?;
        if a.ip().is_unspecified() || a.ip().is_multicast() || a.port() == 0 {
            return Err(at(
                raw.members.span(),
                format!("ha.members: '{m}' must be a unicast address with a port"),
            ));
        }
        if members.contains(&a) {
            return Err(at(
                raw.members.span(),
                format!("ha.members lists '{m}' twice"),
            ));
        }
        members.push(a);
    }
    if members.len() < 2 || members.len() > MAX_MEMBERS {
        return Err(at(
            raw.members.span(),
            format!(
                "ha.members must list 2 to {MAX_MEMBERS} members, got {}",
                members.len()
            ),
        ));
    }
    let node = u8::try_from(*raw.node.get_ref())
        .ok()
        .filter(|&n| usize::from(n) < members.len())
        .ok_or_else(|| {
            at(
                raw.node.span(),
                format!(
                    "ha.node must be this member's index in ha.members (0 to {})",
                    members.len() - 1
                ),
            )
        })?;
    let secret_file = dir.join(raw.secret_file.get_ref());
    let text = Zeroizing::new(std::fs::read_to_string(&secret_file).map_err(|e| {
        at(
            raw.secret_file.span(),
            format!(
                "cannot read ha.secret_file '{}': {e}",
                secret_file.display()
            ),
        )
    })?);
    let secret = crate::keys::decode_key(&text).map_err(|e| {
        at(
            raw.secret_file.span(),
            format!(
                "ha.secret_file '{}' must hold a base64 32-byte key (`sluice genkey`): {e}",
                secret_file.display()
            ),
        )
    })?;
    check_private(&secret_file).map_err(|why| at(raw.secret_file.span(), why))?;
    let mut vips = Vec::new();
    if let Some(v) = &raw.vips {
        for s in v.get_ref() {
            let ip: IpAddr = s.parse().map_err(|_| {
                at(
                    v.span(),
                    format!("ha.vips: '{s}' is not an IP address (no prefix length)"),
                )
            })?;
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(at(
                    v.span(),
                    format!("ha.vips: '{s}' is not a unicast address"),
                ));
            }
            vips.push(ip);
        }
    }
    Ok(HaConfig {
        mode,
        node,
        members,
        secret_file,
        secret,
        vips,
        sync: raw.sync.unwrap_or(true),
    })
}

/// The group secret must not be readable by others.
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("ha.secret_file '{}': {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "ha.secret_file '{}' has mode {:o}: it must not be readable by group or others (chmod 600)",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const K_SELF: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const SECRET: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str, ha: &str, secret: Option<(&str, u32)>) -> (Dir, PathBuf) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("sluice-ha-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("wg.conf"),
            format!("[Interface]\nPrivateKey = {K_SELF}\nListenPort = 51820\n"),
        )
        .unwrap();
        if let Some((text, mode)) = secret {
            let p = d.join("ha.key");
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let toml = format!("[interface]\nname = \"sl0\"\nwg_config = \"wg.conf\"\n\n[ha]\n{ha}");
        let p = d.join("gateway.toml");
        std::fs::write(&p, toml).unwrap();
        (Dir(d), p)
    }

    const GOOD: &str = "mode = \"vrrp\"\nnode = 1\nmembers = [\"10.99.0.1:51821\", \"10.99.0.2:51821\"]\nsecret_file = \"ha.key\"\nvips = [\"192.0.2.10\", \"2001:db8::10\"]\n";

    #[test]
    fn a_good_section_loads() {
        let (_d, p) = setup("good", GOOD, Some((SECRET, 0o600)));
        let c = load(&p).unwrap();
        let ha = c.ha.unwrap();
        assert_eq!(ha.mode, HaMode::Vrrp);
        assert_eq!(ha.node, 1);
        assert_eq!(ha.own_address(), "10.99.0.2:51821".parse().unwrap());
        assert_eq!(ha.vips.len(), 2);
        assert!(ha.sync);
        assert_eq!(*ha.secret, *crate::keys::decode_key(SECRET).unwrap());
        assert!(!format!("{ha:?}").contains(SECRET));
        // No [ha]: none.
        let (_d2, p2) = setup("none", "", None);
        let text = std::fs::read_to_string(&p2).unwrap().replace("[ha]\n", "");
        std::fs::write(&p2, text).unwrap();
        assert!(load(&p2).unwrap().ha.is_none());
    }

    type Case<'a> = (String, Option<(&'a str, u32)>, usize, &'a str);

    #[test]
    fn mistakes_are_file_line_reason() {
        let cases: Vec<Case> = vec![
            (GOOD.to_string(), None, 9, "cannot read ha.secret_file"),
            (
                GOOD.to_string(),
                Some(("not a key", 0o600)),
                9,
                "base64 32-byte key",
            ),
            (GOOD.to_string(), Some((SECRET, 0o644)), 9, "chmod 600"),
            (
                GOOD.replace("node = 1", "node = 2"),
                Some((SECRET, 0o600)),
                7,
                "ha.node",
            ),
            (
                GOOD.replace("node = 1", "node = -1"),
                Some((SECRET, 0o600)),
                7,
                "ha.node",
            ),
            (
                GOOD.replace("10.99.0.2:51821", "10.99.0.2"),
                Some((SECRET, 0o600)),
                8,
                "not address:port",
            ),
            (
                GOOD.replace("10.99.0.2:51821", "10.99.0.1:51821"),
                Some((SECRET, 0o600)),
                8,
                "twice",
            ),
            (
                GOOD.replace(", \"10.99.0.2:51821\"", "")
                    .replace("node = 1", "node = 0"),
                Some((SECRET, 0o600)),
                8,
                "2 to 16",
            ),
            (
                GOOD.replace("192.0.2.10\"", "192.0.2.10/32\""),
                Some((SECRET, 0o600)),
                10,
                "not an IP address",
            ),
            (
                GOOD.replace("\"vrrp\"", "\"carp\""),
                Some((SECRET, 0o600)),
                6,
                "vrrp or anycast",
            ),
            (
                format!("{GOOD}color = 1\n"),
                Some((SECRET, 0o600)),
                11,
                "unknown field",
            ),
        ];
        for (ha, secret, line, needle) in cases {
            let (_d, p) = setup("bad", &ha, secret);
            let e = load(&p).unwrap_err();
            assert_eq!(e.line, Some(line), "{e} for\n{ha}");
            assert!(e.file.ends_with("gateway.toml"), "{e}");
            assert!(e.reason.contains(needle), "{e} lacks {needle}");
        }
    }
}
