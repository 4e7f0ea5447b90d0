//! Keypairs: the transport keys a handshake derives, their counters and lifetimes, and the
//! current/previous/next rotation (whitepaper §5.4.6, §6.1; the kernel's `noise_keypairs`).
//!
//! - The **initiator** may send with a new keypair at once: it becomes `current`, the old
//!   current becomes `previous`.
//! - The **responder** must not send until the initiator proves it has the keys, so a new
//!   responder keypair waits in `next` until the first transport message arrives with it.
//! - `previous` stays so packets in flight under the old keys still decrypt.
//!
//! A keypair refuses to send or receive after REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES.

use super::messages::{self, transport, Transport, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};
use super::noise::SessionKeys;
use super::replay::ReplayWindow;
use super::Time;
use crate::crypto;
use crate::DropReason;
use core::fmt;
use core::ops::Range;
use zeroize::Zeroizing;

/// What a batched AEAD open needs for one transport message: its counter and a copy of the
/// receive key (zeroized when dropped). See [`Keypair::begin_decrypt`].
pub struct Opening {
    pub counter: u64,
    pub key: Zeroizing<[u8; crypto::KEY_LEN]>,
}

impl fmt::Debug for Opening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opening")
            .field("counter", &self.counter)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Seals one transport message: `(key, counter, plaintext followed by room for the tag)`.
/// [`Keypair::encrypt`] seals at once; a caller sealing many messages in one batched call
/// records them instead and seals later, before transmitting.
pub type Seal<'a> = dyn FnMut(&[u8; crypto::KEY_LEN], u64, &mut [u8]) + 'a;

/// Seal at once with the per-packet AEAD.
pub fn seal_now(key: &[u8; crypto::KEY_LEN], counter: u64, sealed: &mut [u8]) {
    crypto::seal_in_place(key, counter, &[], sealed);
}

/// One direction-pair of transport keys with its counters.
pub struct Keypair {
    send_key: Zeroizing<[u8; crypto::KEY_LEN]>,
    recv_key: Zeroizing<[u8; crypto::KEY_LEN]>,
    pub local_index: u32,
    pub remote_index: u32,
    pub initiator: bool,
    pub created: Time,
    send_counter: u64,
    /// Sends stop here (REJECT_AFTER_MESSAGES, or the end of an HA counter region).
    send_limit: u64,
    replay: ReplayWindow,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.initiator)
            .field("created", &self.created)
            .field("send_counter", &self.send_counter)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl Keypair {
    pub fn new(keys: SessionKeys) -> Keypair {
        Keypair {
            send_key: keys.send,
            recv_key: keys.recv,
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            initiator: keys.initiator,
            created: keys.created,
            send_counter: 0,
            send_limit: REJECT_AFTER_MESSAGES,
            replay: ReplayWindow::new(),
        }
    }

    /// A keypair resumed from another gateway's session (HA takeover, see
    /// [`super::hasync`]): it sends from `send_counter` up to (not including) `send_limit`,
    /// and counts every received counter below `receive_mark` as seen.
    pub fn resume(
        keys: SessionKeys,
        send_counter: u64,
        send_limit: u64,
        receive_mark: u64,
    ) -> Keypair {
        Keypair {
            send_counter,
            send_limit: send_limit.min(REJECT_AFTER_MESSAGES),
            replay: ReplayWindow::starting_at(receive_mark.min(REJECT_AFTER_MESSAGES)),
            ..Keypair::new(keys)
        }
    }

    /// The send and receive keys, for HA session sync only (sealed before they leave).
    pub fn export_keys(&self) -> (&[u8; crypto::KEY_LEN], &[u8; crypto::KEY_LEN]) {
        (&self.send_key, &self.recv_key)
    }

    /// Past REJECT_AFTER_TIME: useless for sending and receiving.
    pub fn is_expired(&self, now: Time) -> bool {
        now.has_elapsed(self.created, REJECT_AFTER_TIME)
    }

    /// The counter the next message will carry.
    pub fn send_counter(&self) -> u64 {
        self.send_counter
    }

    /// The high-water mark of counters received.
    pub fn receive_counter(&self) -> u64 {
        self.replay.next_expected()
    }

    /// Encrypt `inner` into `out` as a transport message: header, padded payload, tag. Returns
    /// the message length. `out` needs room for `transport::MIN_LEN` plus the padded payload.
    pub fn encrypt(
        &mut self,
        now: Time,
        inner: &[u8],
        mtu: usize,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        self.encrypt_with(now, inner, mtu, out, &mut seal_now)
    }

    /// [`Keypair::encrypt`] with the sealing left to `seal`, which is called exactly once,
    /// last, when the message is otherwise complete (header, counter, padded plaintext).
    pub fn encrypt_with(
        &mut self,
        now: Time,
        inner: &[u8],
        mtu: usize,
        out: &mut [u8],
        seal: &mut Seal<'_>,
    ) -> Result<usize, DropReason> {
        if self.is_expired(now) || self.send_counter >= self.send_limit {
            return Err(DropReason::KeyExpired);
        }
        let padded = messages::padded_len(inner.len(), mtu);
        let len = transport::MIN_LEN + padded;
        let buf = out.get_mut(..len).ok_or(DropReason::BadInnerPacket)?;
        let counter = self.send_counter;
        self.send_counter += 1;

        let mut msg = Transport::init(buf).map_err(|_| DropReason::BadInnerPacket)?;
        msg.set_receiver(self.remote_index);
        msg.set_counter(counter);
        let sealed = msg.sealed_mut();
        sealed[..inner.len()].copy_from_slice(inner);
        sealed[inner.len()..padded].fill(0);
        seal(&self.send_key, counter, sealed);
        Ok(len)
    }

    /// Authenticate and decrypt a transport message in place. Returns the range of `datagram`
    /// holding the (still padded) plaintext. The replay window moves only for a message that
    /// authenticated, so forged counters cannot push it forward.
    pub fn decrypt(&mut self, now: Time, datagram: &mut [u8]) -> Result<Range<usize>, DropReason> {
        let counter = self.check_receive(now, datagram)?;
        let sealed = &mut datagram[transport::PAYLOAD_START..];
        let n = crypto::open_in_place(&self.recv_key, counter, &[], sealed)
            .map_err(|_| DropReason::DecryptFailed)?;
        self.finish_decrypt(counter)?;
        Ok(transport::PAYLOAD_START..transport::PAYLOAD_START + n)
    }

    /// Before opening: the keypair is not expired and the counter may still be accepted
    /// (the window does not move yet). Returns the counter.
    fn check_receive(&self, now: Time, datagram: &[u8]) -> Result<u64, DropReason> {
        if self.is_expired(now) {
            return Err(DropReason::KeyExpired);
        }
        let counter = Transport::new(datagram)
            .map_err(DropReason::from)?
            .counter();
        if !self.replay.may_accept(counter) {
            return Err(DropReason::Replayed);
        }
        Ok(counter)
    }

    /// The first half of [`Keypair::decrypt`] for callers that open many messages in one
    /// batched AEAD call: the checks before opening, and what the open needs. The caller opens
    /// `datagram[transport::PAYLOAD_START..]` and, if the tag verified, calls
    /// [`Keypair::finish_decrypt`].
    pub fn begin_decrypt(&self, now: Time, datagram: &[u8]) -> Result<Opening, DropReason> {
        let counter = self.check_receive(now, datagram)?;
        Ok(Opening {
            counter,
            key: Zeroizing::new(*self.recv_key),
        })
    }

    /// The second half: the message authenticated, so the replay window moves (and a
    /// duplicate that raced it through the batch is refused here).
    pub fn finish_decrypt(&mut self, counter: u64) -> Result<(), DropReason> {
        if self.replay.check_and_update(counter) {
            Ok(())
        } else {
            Err(DropReason::Replayed)
        }
    }
}

/// Which slot a keypair occupies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Current,
    Previous,
    Next,
}

/// Local indices of keypairs that were dropped: the caller unregisters them from the index
/// table.
pub type Evicted = [Option<u32>; 3];

/// A peer's keypairs (the kernel's `noise_keypairs`).
#[derive(Debug, Default)]
pub struct Keypairs {
    current: Option<Keypair>,
    previous: Option<Keypair>,
    next: Option<Keypair>,
}

fn index_of(k: &Option<Keypair>) -> Option<u32> {
    k.as_ref().map(|k| k.local_index)
}

impl Keypairs {
    /// Install a freshly derived keypair (see the module docs for where it goes).
    pub fn insert(&mut self, kp: Keypair) -> Evicted {
        if kp.initiator {
            let dropped_prev = match self.next.take() {
                // An unconfirmed responder keypair is newer than current: keep it as previous
                // so packets the other side already sent with it still decrypt.
                Some(next) => {
                    let old_current = index_of(&self.current);
                    let old_prev = index_of(&self.previous);
                    self.previous = Some(next);
                    self.current = Some(kp);
                    return [old_current, old_prev, None];
                }
                None => self.previous.take(),
            };
            self.previous = self.current.take();
            self.current = Some(kp);
            [dropped_prev.map(|k| k.local_index), None, None]
        } else {
            let old_next = index_of(&self.next);
            let old_prev = index_of(&self.previous);
            self.next = Some(kp);
            self.previous = None;
            [old_next, old_prev, None]
        }
    }

    /// The keypair with this local index, and its slot.
    pub fn find(&self, local_index: u32) -> Option<&Keypair> {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .find(|k| k.local_index == local_index)
    }

    pub fn find_mut(&mut self, local_index: u32) -> Option<(Slot, &mut Keypair)> {
        for (slot, kp) in [
            (Slot::Current, &mut self.current),
            (Slot::Previous, &mut self.previous),
            (Slot::Next, &mut self.next),
        ] {
            if let Some(kp) = kp.as_mut().filter(|k| k.local_index == local_index) {
                return Some((slot, kp));
            }
        }
        None
    }

    /// The initiator just used `next`: it becomes current (the kernel's
    /// `noise_received_with_keypair`). Returns the evicted previous keypair's index.
    pub fn confirm_next(&mut self) -> Option<u32> {
        let next = self.next.take()?;
        let dropped = self.previous.take().map(|k| k.local_index);
        self.previous = self.current.take();
        self.current = Some(next);
        dropped
    }

    /// Install a keypair taken over from another gateway (HA): as current if the peer may
    /// already receive on it, else as next, confirmed by the peer's first data.
    pub fn adopt(&mut self, kp: Keypair, confirmed: bool) -> Evicted {
        if !confirmed {
            return self.insert(kp);
        }
        let dropped = self.previous.take().map(|k| k.local_index);
        self.previous = self.current.take();
        self.current = Some(kp);
        [dropped, None, None]
    }

    pub fn previous(&self) -> Option<&Keypair> {
        self.previous.as_ref()
    }

    pub fn next(&self) -> Option<&Keypair> {
        self.next.as_ref()
    }

    pub fn current(&self) -> Option<&Keypair> {
        self.current.as_ref()
    }

    pub fn current_mut(&mut self) -> Option<&mut Keypair> {
        self.current.as_mut()
    }

    pub fn has_next(&self) -> bool {
        self.next.is_some()
    }

    /// Drop every keypair (keys are zeroized on drop).
    pub fn clear(&mut self) -> Evicted {
        [
            self.current.take().map(|k| k.local_index),
            self.previous.take().map(|k| k.local_index),
            self.next.take().map(|k| k.local_index),
        ]
    }

    /// Local indices of every keypair held.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .filter_map(index_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    fn keys(local: u32, initiator: bool, swap: bool) -> SessionKeys {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (send, recv) = if swap { (b, a) } else { (a, b) };
        SessionKeys {
            send: Zeroizing::new(send),
            recv: Zeroizing::new(recv),
            local_index: local,
            remote_index: local + 1000,
            initiator,
            created: Time::ZERO,
        }
    }

    #[test]
    fn encrypt_decrypt_pads_and_rejects_replays() {
        let mut a = Keypair::new(keys(1, true, false));
        let mut b = Keypair::new(keys(1001, false, true));
        let mut buf = [0u8; 128];
        let n = a.encrypt(Time::ZERO, b"hello", 1420, &mut buf).unwrap();
        assert_eq!(n, transport::MIN_LEN + 16);
        let mut copy = buf;
        let r = b.decrypt(Time::ZERO, &mut copy[..n]).unwrap();
        assert_eq!(&copy[r.clone()][..5], b"hello");
        assert_eq!(&copy[r][5..], &[0u8; 11]);
        let mut again = buf;
        assert_eq!(
            b.decrypt(Time::ZERO, &mut again[..n]),
            Err(DropReason::Replayed)
        );
        // A forged message with a huge counter fails authentication and does not move the
        // window: the genuine next message still decrypts.
        let mut forged = buf;
        forged[transport::COUNTER].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert_eq!(
            b.decrypt(Time::ZERO, &mut forged[..n]),
            Err(DropReason::DecryptFailed)
        );
        let n2 = a.encrypt(Time::ZERO, b"", 1420, &mut buf).unwrap();
        assert_eq!(n2, transport::MIN_LEN);
        let r = b.decrypt(Time::ZERO, &mut buf[..n2]).unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn expiry_by_time_and_by_counter() {
        let mut a = Keypair::new(keys(1, true, false));
        let mut buf = [0u8; 64];
        let late = Time::ZERO + REJECT_AFTER_TIME;
        assert_eq!(
            a.encrypt(late, b"x", 1420, &mut buf),
            Err(DropReason::KeyExpired)
        );
        let ok = Time::ZERO + (REJECT_AFTER_TIME - Duration::from_millis(1));
        assert!(a.encrypt(ok, b"x", 1420, &mut buf).is_ok());
        a.send_counter = REJECT_AFTER_MESSAGES - 1;
        assert!(a.encrypt(Time::ZERO, b"x", 1420, &mut buf).is_ok());
        assert_eq!(
            a.encrypt(Time::ZERO, b"x", 1420, &mut buf),
            Err(DropReason::KeyExpired)
        );
        let mut b = Keypair::new(keys(2, false, true));
        assert_eq!(b.decrypt(late, &mut buf[..32]), Err(DropReason::KeyExpired));
    }

    #[test]
    fn rekey_is_due_by_messages_for_both_roles_and_by_time_for_the_initiator() {
        use crate::proto::messages::{REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME};
        use crate::proto::timers::Timers;
        let mut init = Keypair::new(keys(1, true, false));
        let mut resp = Keypair::new(keys(2, false, true));
        let early = Time::ZERO + Duration::from_secs(1);
        assert!(!Timers::rekey_due_on_send(early, &init));
        let late = Time::ZERO + REKEY_AFTER_TIME;
        assert!(Timers::rekey_due_on_send(late, &init));
        // Time alone never makes the responder rekey: the initiator owns that.
        assert!(!Timers::rekey_due_on_send(late, &resp));
        for kp in [&mut init, &mut resp] {
            kp.send_counter = REKEY_AFTER_MESSAGES;
            assert!(!Timers::rekey_due_on_send(early, kp));
            kp.send_counter = REKEY_AFTER_MESSAGES + 1;
            assert!(Timers::rekey_due_on_send(early, kp));
        }
    }

    #[test]
    fn output_buffer_too_small_is_an_error_not_a_panic() {
        let mut a = Keypair::new(keys(1, true, false));
        let mut small = [0u8; 40];
        assert!(a
            .encrypt(Time::ZERO, &[0u8; 100], 1420, &mut small)
            .is_err());
    }

    #[test]
    fn rotation_follows_the_kernel() {
        let mut kps = Keypairs::default();
        // Responder: new keypair waits in next.
        assert_eq!(kps.insert(Keypair::new(keys(10, false, false))), [None; 3]);
        assert!(kps.current().is_none() && kps.has_next());
        // First data on next confirms it.
        assert_eq!(kps.confirm_next(), None);
        assert_eq!(kps.current().map(|k| k.local_index), Some(10));
        // We initiate: the new keypair is current at once, the old one previous.
        assert_eq!(kps.insert(Keypair::new(keys(20, true, false))), [None; 3]);
        assert_eq!(kps.current().map(|k| k.local_index), Some(20));
        assert!(matches!(kps.find_mut(10), Some((Slot::Previous, _))));
        // Another initiator keypair evicts the oldest.
        assert_eq!(
            kps.insert(Keypair::new(keys(30, true, false))),
            [Some(10), None, None]
        );
        // A responder keypair clears previous and replaces next.
        assert_eq!(
            kps.insert(Keypair::new(keys(40, false, false))),
            [None, Some(20), None]
        );
        // Initiating while a responder keypair is unconfirmed: next becomes previous.
        assert_eq!(
            kps.insert(Keypair::new(keys(50, true, false))),
            [Some(30), None, None]
        );
        assert!(matches!(kps.find_mut(40), Some((Slot::Previous, _))));
        assert!(matches!(kps.find_mut(50), Some((Slot::Current, _))));
        assert!(kps.find_mut(30).is_none());
        let mut left: Vec<_> = kps.indices().collect();
        left.sort_unstable();
        assert_eq!(left, vec![40, 50]);
        let mut cleared: Vec<_> = kps.clear().into_iter().flatten().collect();
        cleared.sort_unstable();
        assert_eq!(cleared, vec![40, 50]);
        assert!(kps.current().is_none());
    }
}
