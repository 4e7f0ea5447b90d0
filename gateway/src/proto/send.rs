//! The sending half of a peer (the kernel's `send.c`): transport data, keepalives, staged
//! packets, and handshake initiations, with the timer hooks each of them drives.

use super::effects::{Env, Sent, Transmit};
use super::messages::{self, transport, REJECT_AFTER_MESSAGES};
use super::peer::Peer;
use super::session::{seal_now, Seal};
use super::timers::Timers;
use crate::DropReason;

impl Peer {
    /// Send an inner packet (or, if empty, a keepalive). With a usable session it is encrypted
    /// into `buf` and the caller transmits `Sent::Transmit`; otherwise it is staged and a
    /// handshake is started (if the timers allow one), queued in the outbox.
    pub fn send(
        &mut self,
        env: &mut Env,
        packet: &[u8],
        buf: &mut [u8],
    ) -> Result<Sent, DropReason> {
        self.send_with(env, packet, buf, &mut seal_now)
    }

    /// [`Peer::send`] with the sealing left to `seal` (see [`Seal`]): called once, last, for
    /// a message that will be transmitted. A caller that seals later must do so before it
    /// transmits the `Sent::Transmit` this returns.
    pub fn send_with(
        &mut self,
        env: &mut Env,
        packet: &[u8],
        buf: &mut [u8],
        seal: &mut Seal<'_>,
    ) -> Result<Sent, DropReason> {
        let dst = self.endpoint.ok_or(DropReason::NoEndpoint)?;
        let now = env.cx.now;
        let usable = self
            .keypairs
            .current()
            .is_some_and(|k| !k.is_expired(now) && k.send_counter() < REJECT_AFTER_MESSAGES);
        if !usable {
            let staged = self.stage(packet);
            self.send_initiation(env, false);
            staged?;
            return Ok(Sent::Staged { peer: self.id });
        }
        let kp = self.keypairs.current_mut().ok_or(DropReason::KeyExpired)?;
        let len = kp.encrypt_with(now, packet, env.mtu, buf, seal)?;
        let rekey = Timers::rekey_due_on_send(now, kp);
        self.on_sent(env, len, !packet.is_empty());
        if rekey {
            self.send_initiation(env, false);
        }
        Ok(Sent::Transmit {
            peer: self.id,
            dst: dst.addr,
            src: dst.local,
            len,
        })
    }

    /// Timer hooks and counters for an authenticated message we sent.
    pub(super) fn on_sent(&mut self, env: &mut Env, len: usize, is_data: bool) {
        self.stats.tx_bytes += len as u64;
        self.timers.on_authenticated_packet_traversal(env.cx.now);
        self.timers.on_authenticated_packet_sent();
        if is_data {
            self.timers.on_data_sent(env.cx.now, env.cx.rng);
        }
    }

    /// Encrypt into a fresh buffer and queue it (for timer- and handshake-driven sends, which
    /// are rare enough to allocate).
    fn queue_encrypted(&mut self, env: &mut Env, packet: &[u8]) -> Result<(), DropReason> {
        let mut buf = vec![0u8; transport::MIN_LEN + packet.len() + transport::PADDING_MULTIPLE];
        if let Sent::Transmit { dst, src, len, .. } = self.send(env, packet, &mut buf)? {
            buf.truncate(len);
            env.out.transmits.push_back(Transmit {
                dst,
                src,
                data: buf,
            });
        }
        Ok(())
    }

    pub(super) fn send_keepalive(&mut self, env: &mut Env) {
        // Errors (no endpoint, no session yet) are the normal reasons not to send one.
        let _ = self.queue_encrypted(env, &[]);
    }

    /// Send what waited for a session. The initiator, having just consumed the response,
    /// confirms the session with a keepalive if nothing waited (`confirm`); the responder,
    /// confirmed by the initiator's first message, has nothing to prove (the kernel's
    /// `send_keepalive` versus `send_staged_packets`).
    pub(super) fn flush_staged(&mut self, env: &mut Env, confirm: bool) {
        let staged: Vec<Vec<u8>> = self.staged.drain(..).collect();
        if staged.is_empty() && confirm {
            self.send_keepalive(env);
        }
        for p in staged {
            let _ = self.queue_encrypted(env, &p);
        }
    }

    /// Start (or retry) a handshake, if there is an endpoint and the timers allow one now.
    pub(super) fn send_initiation(&mut self, env: &mut Env, is_retry: bool) {
        let Some(dst) = self.endpoint else { return };
        if !self.timers.may_initiate(env.cx.now, is_retry) {
            return;
        }
        if let Some(old) = self.handshake_index() {
            env.indices.release(old);
        }
        let local = env.indices.allocate(env.cx.rng, self.id);
        let mut msg = [0u8; messages::initiation::LEN];
        let created = self.handshake.create_initiation(
            env.identity,
            env.cx.wall,
            local,
            env.cx.rng,
            &mut msg,
        );
        if created.is_err() {
            env.indices.release(local);
            return;
        }
        self.cookie.add_macs(env.cx.now, &mut msg);
        self.timers.on_handshake_initiated(env.cx.now, env.cx.rng);
        self.on_sent(env, msg.len(), false);
        env.out.transmits.push_back(Transmit {
            dst: dst.addr,
            src: dst.local,
            data: msg.to_vec(),
        });
    }
}
