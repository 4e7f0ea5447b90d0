//! The control plane behind the stock `wg` tool: the UAPI handler over the running gateway.
//!
//! `get` reads the current peer snapshot (each peer's lock taken briefly, never the data path's
//! tables); `set` translates the request into one all-or-nothing [`Shared::apply`]. Settings
//! that cannot change while running (the private key, the listen port) are accepted when
//! unchanged, as `wg syncconf` sends them, and refused with `EOPNOTSUPP` otherwise.

use super::peers::PeerChange;
use super::shared::{lock, Shared};
use crate::config::Config;
use crate::log;
use crate::proto::peer::{PeerConfig, PeerUpdate};
use crate::uapi::protocol::{DeviceState, PeerState, SecretKey, SetRequest};
use crate::uapi::UapiHandler;
use std::sync::Arc;
use zeroize::Zeroizing;

pub struct Control {
    pub shared: Arc<Shared>,
    pub private_key: Zeroizing<[u8; 32]>,
    pub listen_port: u16,
    pub fwmark: u32,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("listen_port", &self.listen_port)
            .finish_non_exhaustive()
    }
}

impl Control {
    pub fn new(shared: Arc<Shared>, cfg: &Config) -> Control {
        Control {
            shared,
            private_key: cfg.private_key.clone(),
            listen_port: cfg.listen_port,
            fwmark: cfg.fwmark,
        }
    }
}

impl UapiHandler for Control {
    fn get(&self) -> DeviceState {
        let table = self.shared.table();
        let mut allowed = table.allowed_ips_by_peer();
        let peers = table
            .iter()
            .map(|(id, slot)| {
                let p = lock(slot);
                let stats = p.stats();
                let mut s = PeerState::new(*p.public_key());
                s.preshared_key = p.preshared_key().map(SecretKey::new);
                s.endpoint = p.endpoint();
                s.last_handshake = stats.last_handshake.map(|w| (w.secs, w.nanos));
                s.tx_bytes = stats.tx_bytes;
                s.rx_bytes = stats.rx_bytes;
                s.persistent_keepalive = p
                    .timers()
                    .persistent_keepalive()
                    .map_or(0, |d| d.as_secs().min(u64::from(u16::MAX)) as u16);
                s.allowed_ips = allowed.remove(&id).unwrap_or_default();
                s
            })
            .collect();
        DeviceState {
            private_key: Some(SecretKey::new(*self.private_key)),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            peers,
        }
    }

    fn set(&self, req: SetRequest) -> Result<(), i32> {
        match &req.private_key {
            Some(Some(k)) if k.as_bytes() == &*self.private_key => {}
            None => {}
            Some(_) => return Err(refuse("changing the private key")),
        }
        if req.listen_port.is_some_and(|p| p != self.listen_port) {
            return Err(refuse("changing the listen port"));
        }
        let changes: Vec<PeerChange> = req.peers.iter().map(to_change).collect();
        match self.shared.apply(req.replace_peers, &changes) {
            Ok(s) => {
                tracing::info!(
                    added = s.added,
                    updated = s.updated,
                    removed = s.removed,
                    "wg set applied"
                );
                Ok(())
            }
            Err(e) => {
                log::warn(&format!("wg set refused: {e}"));
                Err(libc::EINVAL)
            }
        }
    }
}

fn refuse(what: &str) -> i32 {
    log::warn(&format!("wg set refused: {what} needs a restart of sluice"));
    libc::EOPNOTSUPP
}

/// One UAPI peer change as the data path's change vocabulary.
fn to_change(c: &crate::uapi::protocol::PeerChange) -> PeerChange {
    if c.remove {
        return PeerChange::Remove(c.public_key);
    }
    // An all-zero preshared key means "none", as in the protocol.
    let psk = c.preshared_key.as_ref().map(|k| {
        k.as_ref()
            .filter(|k| !k.is_zero())
            .map(|k| Zeroizing::new(*k.as_bytes()))
    });
    let cfg = PeerConfig {
        public_key: c.public_key,
        preshared_key: psk.clone().flatten(),
        endpoint: c.endpoint,
        persistent_keepalive: c.persistent_keepalive,
        allowed_ips: c.allowed_ips.clone(),
    };
    let update = PeerUpdate {
        endpoint: c.endpoint,
        preshared_key: psk,
        persistent_keepalive: c.persistent_keepalive.map(Some),
    };
    PeerChange::Upsert {
        cfg,
        update,
        replace_allowed_ips: c.replace_allowed_ips,
        update_only: c.update_only,
    }
}
