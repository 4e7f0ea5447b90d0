//! The receiving half of a peer (the kernel's `receive.c`): consuming handshake messages,
//! cookie replies and transport data once the caller has found the peer, with roaming and the
//! timer hooks; plus the cryptokey-routing check on decrypted inner packets.

use super::allowedips::AllowedIps;
use super::effects::{Env, Event, Transmit};
use super::endpoint::Endpoint;
use super::ip;
use super::messages::{self, transport, CookieReply, Response};
use super::noise::ConsumedInitiation;
use super::peer::{Peer, PeerId};
use super::session::{Keypair, Opening, Slot};
use super::Time;
use crate::DropReason;
use core::ops::Range;

impl Peer {
    /// Finish an initiation from this peer (mac checks and [`super::noise::consume_initiation`]
    /// already done by the caller, who found the peer by its static key) and answer it. The
    /// response goes to the outbox; the new keypair waits in `next` until the initiator uses it.
    pub fn respond_to_initiation(
        &mut self,
        env: &mut Env,
        consumed: ConsumedInitiation,
        src: Endpoint,
    ) -> Result<(), DropReason> {
        let abandoned = self.handshake_index();
        self.handshake.accept_initiation(env.cx.now, consumed)?;
        if let Some(old) = abandoned {
            env.indices.release(old);
        }
        let local = env.indices.allocate(env.cx.rng, self.id);
        let mut resp = [0u8; messages::response::LEN];
        let keys = self
            .handshake
            .create_response(local, env.cx.rng, &mut resp)
            .and_then(|()| self.handshake.begin_session(env.cx.now));
        let keys = match keys {
            Ok(k) => k,
            Err(e) => {
                env.indices.release(local);
                return Err(e.into());
            }
        };
        self.cookie.add_macs(env.cx.now, &mut resp);
        self.install(env, Keypair::new(keys));
        self.on_sent(env, resp.len(), false);
        self.stats.rx_bytes += messages::initiation::LEN as u64;
        self.on_authenticated_receive(env, src);
        env.out.transmits.push_back(Transmit {
            dst: src.addr,
            src: src.local,
            data: resp.to_vec(),
        });
        Ok(())
    }

    /// Consume a response to our initiation; the session starts at once and whatever waited
    /// for it is sent.
    pub fn receive_response(
        &mut self,
        env: &mut Env,
        msg: &Response<&[u8]>,
        src: Endpoint,
    ) -> Result<(), DropReason> {
        self.handshake.consume_response(env.identity, msg)?;
        let keys = self.handshake.begin_session(env.cx.now)?;
        self.install(env, Keypair::new(keys));
        self.timers.on_handshake_complete();
        self.handshake_completed(env);
        self.stats.rx_bytes += messages::response::LEN as u64;
        self.on_authenticated_receive(env, src);
        self.flush_staged(env, true);
        Ok(())
    }

    pub fn receive_cookie_reply(
        &mut self,
        env: &mut Env,
        msg: &CookieReply<&[u8]>,
    ) -> Result<(), DropReason> {
        Ok(self.cookie.consume_reply(env.cx.now, msg)?)
    }

    /// Authenticate and decrypt transport data for the keypair with local index `receiver`,
    /// in place. Returns the range of the (padded) plaintext; empty for a keepalive.
    pub fn receive_transport(
        &mut self,
        env: &mut Env,
        receiver: u32,
        datagram: &mut [u8],
        src: Endpoint,
    ) -> Result<Range<usize>, DropReason> {
        let now = env.cx.now;
        let (slot, kp) = self
            .keypairs
            .find_mut(receiver)
            .ok_or(DropReason::UnknownIndex)?;
        let payload = kp.decrypt(now, datagram)?;
        self.received_transport(env, slot, payload, datagram.len(), src)
    }

    /// [`Peer::receive_transport`] split around a batched AEAD open, first half: the checks
    /// (keypair known and fresh, counter not replayed) and what the open needs. Nothing
    /// changes; the caller opens `datagram[transport::PAYLOAD_START..]` with the returned key
    /// and counter.
    pub fn begin_transport(
        &self,
        now: Time,
        receiver: u32,
        datagram: &[u8],
    ) -> Result<Opening, DropReason> {
        self.keypairs
            .find(receiver)
            .ok_or(DropReason::UnknownIndex)?
            .begin_decrypt(now, datagram)
    }

    /// Second half, for a message whose tag verified and whose plaintext is now
    /// `plain_len` bytes at `transport::PAYLOAD_START`: exactly what
    /// [`Peer::receive_transport`] does after decrypting (replay window, counters, session
    /// confirmation, roaming, timers). The keypair may have gone between the halves (a rekey
    /// on another core): then the message is refused as of an unknown index.
    pub fn finish_transport(
        &mut self,
        env: &mut Env,
        receiver: u32,
        counter: u64,
        plain_len: usize,
        datagram_len: usize,
        src: Endpoint,
    ) -> Result<Range<usize>, DropReason> {
        let (slot, kp) = self
            .keypairs
            .find_mut(receiver)
            .ok_or(DropReason::UnknownIndex)?;
        kp.finish_decrypt(counter)?;
        let payload = transport::PAYLOAD_START..transport::PAYLOAD_START + plain_len;
        self.received_transport(env, slot, payload, datagram_len, src)
    }

    /// Everything after a transport message authenticated.
    fn received_transport(
        &mut self,
        env: &mut Env,
        slot: Slot,
        payload: Range<usize>,
        datagram_len: usize,
        src: Endpoint,
    ) -> Result<Range<usize>, DropReason> {
        let now = env.cx.now;
        self.stats.rx_bytes += datagram_len as u64;
        let confirmed = slot == Slot::Next;
        if confirmed {
            if let Some(i) = self.keypairs.confirm_next() {
                env.indices.release(i);
            }
            self.timers.on_handshake_complete();
            self.handshake_completed(env);
        }
        self.on_authenticated_receive(env, src);
        if confirmed {
            self.flush_staged(env, false);
        }
        self.keep_key_fresh_on_receive(env);
        if !payload.is_empty() {
            self.timers.on_data_received(now);
        }
        Ok(payload)
    }

    /// Put a new keypair in place, releasing the indices of the ones it evicts.
    fn install(&mut self, env: &mut Env, kp: Keypair) {
        for i in self.keypairs.insert(kp).into_iter().flatten() {
            env.indices.release(i);
        }
        self.timers.on_session_derived(env.cx.now);
    }

    fn handshake_completed(&mut self, env: &mut Env) {
        self.stats.last_handshake = Some(env.cx.wall);
        self.stats.handshakes_completed += 1;
        env.out
            .events
            .push_back(Event::HandshakeCompleted { peer: self.id });
    }

    /// Timers and roaming for any message that authenticated (whitepaper §6.5: the endpoint
    /// follows the most recent authenticated packet, and so does our source address for it).
    fn on_authenticated_receive(&mut self, env: &mut Env, src: Endpoint) {
        self.timers.on_authenticated_packet_received();
        self.timers.on_authenticated_packet_traversal(env.cx.now);
        if self.set_endpoint(src) {
            env.out.events.push_back(Event::EndpointChanged {
                peer: self.id,
                endpoint: src.addr,
            });
        }
    }

    /// The initiator rekeys shortly before its keys expire even if it sends nothing.
    fn keep_key_fresh_on_receive(&mut self, env: &mut Env) {
        let Some(kp) = self.keypairs.current() else {
            return;
        };
        let (initiator, created) = (kp.initiator, kp.created);
        if self
            .timers
            .rekey_due_on_receive(env.cx.now, initiator, created)
        {
            self.send_initiation(env, false);
        }
    }
}

/// Cryptokey routing on receive: the decrypted inner packet must be well formed and its
/// source inside the sending peer's allowed IPs. Returns the packet without padding.
pub fn check_source(
    allowed_ips: &AllowedIps<PeerId>,
    peer: PeerId,
    datagram: &[u8],
    payload: Range<usize>,
) -> Result<Range<usize>, DropReason> {
    let inner = ip::parse(
        datagram
            .get(payload.clone())
            .ok_or(DropReason::BadInnerPacket)?,
    )?;
    if allowed_ips.lookup(inner.src) != Some(peer) {
        return Err(DropReason::SourceNotAllowed);
    }
    Ok(payload.start..payload.start + inner.len)
}
