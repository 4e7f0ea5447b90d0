//! The Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake (whitepaper §5.4.2–§5.4.4), as
//! create/consume pairs:
//!
//! ```text
//! initiator                                         responder
//! create_initiation  -- e, es, s, ss, {t} -->       consume_initiation (+ accept_initiation)
//! consume_response   <-- e, ee, se, psk, {} --      create_response
//! begin_session                                     begin_session
//! ```
//!
//! Consuming an initiation is split in two because the responder learns *which* peer is talking
//! only by decrypting the initiator's static key: [`consume_initiation`] needs just our identity
//! and returns that key; the caller finds the peer and calls [`Handshake::accept_initiation`] on
//! that peer's state, which uses the precomputed static-static DH and checks the timestamp.
//!
//! mac1/mac2 are not handled here; see [`super::cookie`].

use super::kdf::{hash, kdf1, kdf2, kdf3};
use super::messages::{
    self, Initiation, Response, CONSTRUCTION, IDENTIFIER, KEY_LEN, TIMESTAMP_GRANULARITY_NANOS,
    TIMESTAMP_LEN,
};
use super::{Rng, Time, WallTime};
use crate::crypto;
use core::fmt;
use core::time::Duration;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

pub type Key = [u8; KEY_LEN];
pub type Tai64n = [u8; TIMESTAMP_LEN];

/// Why a handshake message was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake message failed to decrypt")]
    Decrypt,
    #[error("a Diffie-Hellman result was all zeros (low-order point)")]
    ZeroDh,
    #[error("initiation timestamp not newer than the last one")]
    ReplayedTimestamp,
    #[error("initiations from this peer arrive too fast")]
    Flood,
    #[error("no handshake in the state this message needs")]
    WrongState,
}

impl From<HandshakeError> for crate::DropReason {
    fn from(e: HandshakeError) -> Self {
        use crate::DropReason as D;
        match e {
            HandshakeError::Decrypt | HandshakeError::ZeroDh => D::HandshakeFailed,
            HandshakeError::ReplayedTimestamp => D::ReplayedInitiation,
            HandshakeError::Flood => D::InitiationTooSoon,
            HandshakeError::WrongState => D::UnexpectedHandshake,
        }
    }
}

/// The Noise chaining key and hash after mixing in the protocol name and identifier.
fn initial_state() -> (Key, Key) {
    let ck = hash(&[CONSTRUCTION]);
    let h = hash(&[&ck, IDENTIFIER]);
    (ck, h)
}

/// DH(private, public), refusing the all-zero result of a low-order public key.
fn dh(private: &StaticSecret, public: &Key) -> Result<Zeroizing<Key>, HandshakeError> {
    let shared = private.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(HandshakeError::ZeroDh);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

fn generate_ephemeral(rng: &mut dyn Rng) -> (StaticSecret, Key) {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut bytes[..]);
    let secret = StaticSecret::from(*bytes);
    let public = PublicKey::from(&secret).to_bytes();
    (secret, public)
}

/// TAI64N label for a wall-clock time, its nanoseconds rounded down so the timestamp does not
/// leak precise timing (the kernel's rounding).
pub fn tai64n(now: WallTime) -> Tai64n {
    const TAI64_EPOCH: u64 = 1 << 62;
    let nanos = now.nanos - now.nanos % TIMESTAMP_GRANULARITY_NANOS;
    let mut t = [0u8; TIMESTAMP_LEN];
    t[..8].copy_from_slice(&(TAI64_EPOCH + now.secs).to_be_bytes());
    t[8..].copy_from_slice(&nanos.to_be_bytes());
    t
}

/// Our static identity: the interface's private key and what derives from it.
pub struct Identity {
    private: StaticSecret,
    public: Key,
    /// The responder's Noise hash after mixing in its own static key: the same for every
    /// initiation we receive, so computed once.
    responder_hash: Key,
}

impl Identity {
    pub fn new(private: &Key) -> Identity {
        let private = StaticSecret::from(*private);
        let public = PublicKey::from(&private).to_bytes();
        let (_, h) = initial_state();
        Identity {
            private,
            public,
            responder_hash: hash(&[&h, &public]),
        }
    }

    pub fn public_key(&self) -> &Key {
        &self.public
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &crate::keys::encode_key(&self.public))
            .field("private", &"<redacted>")
            .finish()
    }
}

/// Where a peer's handshake stands (the kernel's `enum noise_handshake_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeState {
    Zeroed,
    CreatedInitiation,
    ConsumedInitiation,
    CreatedResponse,
    ConsumedResponse,
}

/// The transport keys a completed handshake derives (whitepaper §5.4.5).
pub struct SessionKeys {
    pub send: Zeroizing<Key>,
    pub recv: Zeroizing<Key>,
    /// The index we chose; the peer puts it in the receiver field of messages to us.
    pub local_index: u32,
    /// The index the peer chose; we put it in the receiver field of messages to it.
    pub remote_index: u32,
    pub initiator: bool,
    pub created: Time,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.initiator)
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// Phase one of consuming an initiation: what our identity alone can decrypt.
pub struct ConsumedInitiation {
    pub remote_static: Key,
    remote_ephemeral: Key,
    sender_index: u32,
    hash: Key,
    chaining_key: Zeroizing<Key>,
    encrypted_timestamp: [u8; messages::sealed_len(TIMESTAMP_LEN)],
}

impl fmt::Debug for ConsumedInitiation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumedInitiation")
            .field(
                "remote_static",
                &crate::keys::encode_key(&self.remote_static),
            )
            .field("sender_index", &self.sender_index)
            .finish_non_exhaustive()
    }
}

/// Decrypt the initiator's static key from an initiation (tokens `e, es, s`). The message's
/// mac1 must already have been checked.
pub fn consume_initiation(
    identity: &Identity,
    msg: &Initiation<&[u8]>,
) -> Result<ConsumedInitiation, HandshakeError> {
    let (ck, _) = initial_state();
    let mut h = identity.responder_hash;
    let e = *msg.ephemeral();

    // e
    let ck = kdf1(&ck, &e);
    h = hash(&[&h, &e]);
    // es
    let (ck, key) = kdf2(&ck, &dh(&identity.private, &e)?[..]);
    // s
    let mut s = Zeroizing::new(*msg.encrypted_static());
    let n = crypto::open_in_place(&key, 0, &h, &mut s[..]).map_err(|_| HandshakeError::Decrypt)?;
    let mut remote_static = [0u8; KEY_LEN];
    remote_static.copy_from_slice(&s[..n]);
    h = hash(&[&h, msg.encrypted_static()]);

    Ok(ConsumedInitiation {
        remote_static,
        remote_ephemeral: e,
        sender_index: msg.sender(),
        hash: h,
        chaining_key: ck,
        encrypted_timestamp: *msg.encrypted_timestamp(),
    })
}

/// One peer's handshake state (the kernel's `struct noise_handshake`).
pub struct Handshake {
    state: HandshakeState,
    remote_static: Key,
    /// DH(our static, their static), computed once per peer: it is the costliest part of a
    /// handshake that never changes.
    precomputed_static_static: Option<Zeroizing<Key>>,
    preshared_key: Zeroizing<Key>,
    /// The greatest TAI64N timestamp accepted from this peer.
    latest_timestamp: Tai64n,
    last_initiation_consumption: Option<Time>,
    ephemeral_private: Option<StaticSecret>,
    remote_ephemeral: Key,
    hash: Key,
    chaining_key: Zeroizing<Key>,
    local_index: u32,
    remote_index: u32,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("state", &self.state)
            .field(
                "remote_static",
                &crate::keys::encode_key(&self.remote_static),
            )
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Set up a peer's handshake. Costs one DH (the static-static precomputation); a public
    /// key that yields an all-zero DH is kept but can never complete a handshake.
    pub fn new(identity: &Identity, remote_static: Key, preshared_key: Option<&Key>) -> Handshake {
        Handshake {
            state: HandshakeState::Zeroed,
            remote_static,
            precomputed_static_static: dh(&identity.private, &remote_static).ok(),
            preshared_key: Zeroizing::new(preshared_key.copied().unwrap_or([0; KEY_LEN])),
            latest_timestamp: [0; TIMESTAMP_LEN],
            last_initiation_consumption: None,
            ephemeral_private: None,
            remote_ephemeral: [0; KEY_LEN],
            hash: [0; KEY_LEN],
            chaining_key: Zeroizing::new([0; KEY_LEN]),
            local_index: 0,
            remote_index: 0,
        }
    }

    pub fn state(&self) -> HandshakeState {
        self.state
    }

    pub fn remote_static(&self) -> &Key {
        &self.remote_static
    }

    /// The local index of the handshake in flight (meaningful unless `Zeroed`).
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The preshared key, unless it is all zeros (none).
    pub fn preshared_key(&self) -> Option<Key> {
        (*self.preshared_key != [0; KEY_LEN]).then(|| *self.preshared_key)
    }

    pub fn set_preshared_key(&mut self, psk: Option<&Key>) {
        *self.preshared_key = psk.copied().unwrap_or([0; KEY_LEN]);
    }

    fn static_static(&self) -> Result<&Key, HandshakeError> {
        self.precomputed_static_static
            .as_deref()
            .ok_or(HandshakeError::ZeroDh)
    }

    /// Forget the in-flight handshake (ephemeral key, hash, chaining key). The peer's identity,
    /// preshared key and replay-protection timestamp survive.
    pub fn clear(&mut self) {
        self.state = HandshakeState::Zeroed;
        self.ephemeral_private = None;
        self.remote_ephemeral.zeroize();
        self.hash.zeroize();
        self.chaining_key.zeroize();
        self.local_index = 0;
        self.remote_index = 0;
    }

    /// Write an initiation into `out` (tokens `e, es, s, ss, {t}`), leaving mac1 and mac2 to the
    /// cookie layer.
    pub fn create_initiation(
        &mut self,
        identity: &Identity,
        wall: WallTime,
        local_index: u32,
        rng: &mut dyn Rng,
        out: &mut [u8; messages::initiation::LEN],
    ) -> Result<(), HandshakeError> {
        self.clear();
        let ss = *self.static_static()?;
        let mut msg = Initiation::init(&mut out[..]).map_err(|_| HandshakeError::WrongState)?;
        msg.set_sender(local_index);

        let (ck, h) = initial_state();
        let mut h = hash(&[&h, &self.remote_static]);

        // e
        let (e_private, e_public) = generate_ephemeral(rng);
        msg.ephemeral_mut().copy_from_slice(&e_public);
        let ck = kdf1(&ck, &e_public);
        h = hash(&[&h, &e_public]);
        // es
        let (ck, key) = kdf2(&ck, &dh(&e_private, &self.remote_static)?[..]);
        // s
        let s = msg.encrypted_static_mut();
        s[..KEY_LEN].copy_from_slice(&identity.public);
        crypto::seal_in_place(&key, 0, &h, s);
        h = hash(&[&h, msg.encrypted_static_mut()]);
        // ss
        let (ck, key) = kdf2(&ck, &ss);
        // {t}
        let t = msg.encrypted_timestamp_mut();
        t[..TIMESTAMP_LEN].copy_from_slice(&tai64n(wall));
        crypto::seal_in_place(&key, 0, &h, t);
        h = hash(&[&h, msg.encrypted_timestamp_mut()]);

        self.hash = h;
        self.chaining_key = ck;
        self.ephemeral_private = Some(e_private);
        self.local_index = local_index;
        self.state = HandshakeState::CreatedInitiation;
        Ok(())
    }

    /// Finish consuming an initiation from this peer (tokens `ss, {t}`), rejecting a replayed
    /// timestamp and initiations faster than INITIATIONS_PER_SECOND_PER_PEER.
    pub fn accept_initiation(
        &mut self,
        now: Time,
        c: ConsumedInitiation,
    ) -> Result<(), HandshakeError> {
        debug_assert_eq!(c.remote_static, self.remote_static);
        // ss
        let (ck, key) = kdf2(&c.chaining_key, self.static_static()?);
        // {t}
        let mut t = c.encrypted_timestamp;
        let n =
            crypto::open_in_place(&key, 0, &c.hash, &mut t).map_err(|_| HandshakeError::Decrypt)?;
        let mut timestamp = [0u8; TIMESTAMP_LEN];
        timestamp.copy_from_slice(&t[..n]);
        let h = hash(&[&c.hash, &c.encrypted_timestamp]);

        // Big-endian TAI64N compares correctly as bytes.
        if timestamp <= self.latest_timestamp {
            return Err(HandshakeError::ReplayedTimestamp);
        }
        let min_gap =
            Duration::from_nanos(1_000_000_000 / messages::INITIATIONS_PER_SECOND_PER_PEER);
        if let Some(last) = self.last_initiation_consumption {
            if !now.has_elapsed(last, min_gap) {
                return Err(HandshakeError::Flood);
            }
        }

        self.clear();
        self.latest_timestamp = timestamp;
        self.last_initiation_consumption = Some(now);
        self.remote_ephemeral = c.remote_ephemeral;
        self.remote_index = c.sender_index;
        self.hash = h;
        self.chaining_key = ck;
        self.state = HandshakeState::ConsumedInitiation;
        Ok(())
    }

    /// Write a response into `out` (tokens `e, ee, se, psk, {}`), leaving mac1 and mac2 to the
    /// cookie layer.
    pub fn create_response(
        &mut self,
        local_index: u32,
        rng: &mut dyn Rng,
        out: &mut [u8; messages::response::LEN],
    ) -> Result<(), HandshakeError> {
        if self.state != HandshakeState::ConsumedInitiation {
            return Err(HandshakeError::WrongState);
        }
        let mut msg = Response::init(&mut out[..]).map_err(|_| HandshakeError::WrongState)?;
        msg.set_sender(local_index);
        msg.set_receiver(self.remote_index);

        // e
        let (e_private, e_public) = generate_ephemeral(rng);
        msg.ephemeral_mut().copy_from_slice(&e_public);
        let ck = kdf1(&self.chaining_key, &e_public);
        let mut h = hash(&[&self.hash, &e_public]);
        // ee
        let ck = kdf1(&ck, &dh(&e_private, &self.remote_ephemeral)?[..]);
        // se
        let ck = kdf1(&ck, &dh(&e_private, &self.remote_static)?[..]);
        // psk
        let (ck, tau, key) = kdf3(&ck, &self.preshared_key[..]);
        h = hash(&[&h, &tau[..]]);
        // {}
        crypto::seal_in_place(&key, 0, &h, msg.encrypted_nothing_mut());
        h = hash(&[&h, msg.encrypted_nothing_mut()]);

        self.hash = h;
        self.chaining_key = ck;
        self.local_index = local_index;
        self.state = HandshakeState::CreatedResponse;
        Ok(())
    }

    /// Consume a response to our initiation (tokens `e, ee, se, psk, {}`). The caller found
    /// this peer by the response's receiver index and checked mac1.
    pub fn consume_response(
        &mut self,
        identity: &Identity,
        msg: &Response<&[u8]>,
    ) -> Result<(), HandshakeError> {
        if self.state != HandshakeState::CreatedInitiation
            || !bool::from(msg.receiver().ct_eq(&self.local_index))
        {
            return Err(HandshakeError::WrongState);
        }
        let e_private = self
            .ephemeral_private
            .as_ref()
            .ok_or(HandshakeError::WrongState)?;
        let e = *msg.ephemeral();

        // e
        let ck = kdf1(&self.chaining_key, &e);
        let mut h = hash(&[&self.hash, &e]);
        // ee
        let ck = kdf1(&ck, &dh(e_private, &e)?[..]);
        // se
        let ck = kdf1(&ck, &dh(&identity.private, &e)?[..]);
        // psk
        let (ck, tau, key) = kdf3(&ck, &self.preshared_key[..]);
        h = hash(&[&h, &tau[..]]);
        // {}
        let mut empty = *msg.encrypted_nothing();
        crypto::open_in_place(&key, 0, &h, &mut empty).map_err(|_| HandshakeError::Decrypt)?;
        h = hash(&[&h, msg.encrypted_nothing()]);

        // Only now that the response authenticated does it replace our state.
        self.remote_ephemeral = e;
        self.remote_index = msg.sender();
        self.hash = h;
        self.chaining_key = ck;
        self.state = HandshakeState::ConsumedResponse;
        Ok(())
    }

    /// Derive the transport keys (whitepaper §5.4.5) once our side of the handshake is done:
    /// as initiator after consuming the response, as responder after creating it. The
    /// handshake state is wiped either way.
    pub fn begin_session(&mut self, now: Time) -> Result<SessionKeys, HandshakeError> {
        let initiator = match self.state {
            HandshakeState::ConsumedResponse => true,
            HandshakeState::CreatedResponse => false,
            _ => return Err(HandshakeError::WrongState),
        };
        let (first, second) = kdf2(&self.chaining_key, &[]);
        let (send, recv) = if initiator {
            (first, second)
        } else {
            (second, first)
        };
        let keys = SessionKeys {
            send,
            recv,
            local_index: self.local_index,
            remote_index: self.remote_index,
            initiator,
            created: now,
        };
        self.clear();
        Ok(keys)
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.hash.zeroize();
        self.remote_ephemeral.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::messages::initiation;
    use crate::proto::SeededRng;

    struct Side {
        id: Identity,
        hs: Handshake,
    }

    fn pair(psk: Option<&Key>) -> (Side, Side) {
        let a = Identity::new(&[1; 32]);
        let b = Identity::new(&[2; 32]);
        let ha = Handshake::new(&a, b.public, psk);
        let hb = Handshake::new(&b, a.public, psk);
        (Side { id: a, hs: ha }, Side { id: b, hs: hb })
    }

    fn run(
        i: &mut Side,
        r: &mut Side,
        rng: &mut SeededRng,
        secs: u64,
    ) -> Result<(SessionKeys, SessionKeys), HandshakeError> {
        let mut init = [0u8; initiation::LEN];
        i.hs.create_initiation(&i.id, WallTime::new(secs, 0), 11, rng, &mut init)?;
        let msg = Initiation::new(&init[..]).unwrap();
        let c = consume_initiation(&r.id, &msg)?;
        assert_eq!(c.remote_static, i.id.public);
        r.hs.accept_initiation(Time::from_nanos(secs * 1_000_000_000), c)?;
        let mut resp = [0u8; messages::response::LEN];
        r.hs.create_response(22, rng, &mut resp)?;
        let rk = r.hs.begin_session(Time::ZERO)?;
        i.hs.consume_response(&i.id, &Response::new(&resp[..]).unwrap())?;
        let ik = i.hs.begin_session(Time::ZERO)?;
        Ok((ik, rk))
    }

    #[test]
    fn handshake_derives_matching_keys() {
        for psk in [None, Some(&[9u8; 32])] {
            let (mut a, mut b) = pair(psk);
            let mut rng = SeededRng::new(1);
            let (ik, rk) = run(&mut a, &mut b, &mut rng, 100).unwrap();
            assert_eq!(*ik.send, *rk.recv);
            assert_eq!(*ik.recv, *rk.send);
            assert_ne!(*ik.send, *ik.recv);
            assert_eq!((ik.local_index, ik.remote_index), (11, 22));
            assert_eq!((rk.local_index, rk.remote_index), (22, 11));
            assert!(ik.initiator && !rk.initiator);
            assert_eq!(a.hs.state(), HandshakeState::Zeroed);
            assert_eq!(b.hs.state(), HandshakeState::Zeroed);
        }
    }

    #[test]
    fn mismatched_psk_fails_at_the_response() {
        let a = Identity::new(&[1; 32]);
        let b = Identity::new(&[2; 32]);
        let mut i = Side {
            hs: Handshake::new(&a, b.public, Some(&[1; 32])),
            id: a,
        };
        let mut r = Side {
            hs: Handshake::new(&b, i.id.public, Some(&[2; 32])),
            id: b,
        };
        let err = run(&mut i, &mut r, &mut SeededRng::new(3), 5).unwrap_err();
        assert_eq!(err, HandshakeError::Decrypt);
    }

    #[test]
    fn replayed_and_flooding_initiations_are_rejected() {
        let (mut i, mut r) = pair(None);
        let mut rng = SeededRng::new(4);
        let mut init = [0u8; initiation::LEN];
        i.hs.create_initiation(&i.id, WallTime::new(1000, 0), 1, &mut rng, &mut init)
            .unwrap();
        let consume = |r: &mut Side, now_s: u64| {
            let c = consume_initiation(&r.id, &Initiation::new(&init[..]).unwrap()).unwrap();
            r.hs.accept_initiation(Time::from_nanos(now_s * 1_000_000_000), c)
        };
        consume(&mut r, 10).unwrap();
        // The same message again: its timestamp is not newer.
        assert_eq!(consume(&mut r, 20), Err(HandshakeError::ReplayedTimestamp));

        // A fresh initiation within 1/50 s of the last one is a flood.
        let mut init2 = [0u8; initiation::LEN];
        i.hs.create_initiation(&i.id, WallTime::new(1001, 0), 2, &mut rng, &mut init2)
            .unwrap();
        let c = consume_initiation(&r.id, &Initiation::new(&init2[..]).unwrap()).unwrap();
        let t = Time::from_nanos(10 * 1_000_000_000 + 1_000_000);
        assert_eq!(r.hs.accept_initiation(t, c), Err(HandshakeError::Flood));
    }

    #[test]
    fn response_to_a_different_index_or_state_is_rejected() {
        let (mut i, mut r) = pair(None);
        let mut rng = SeededRng::new(5);
        let mut init = [0u8; initiation::LEN];
        i.hs.create_initiation(&i.id, WallTime::new(50, 0), 7, &mut rng, &mut init)
            .unwrap();
        let c = consume_initiation(&r.id, &Initiation::new(&init[..]).unwrap()).unwrap();
        r.hs.accept_initiation(Time::ZERO, c).unwrap();
        let mut resp = [0u8; messages::response::LEN];
        r.hs.create_response(8, &mut rng, &mut resp).unwrap();
        // Create_response twice is a state error.
        assert_eq!(
            r.hs.create_response(8, &mut rng, &mut resp),
            Err(HandshakeError::WrongState)
        );
        let mut wrong = resp;
        wrong[messages::response::RECEIVER][0] ^= 1;
        assert_eq!(
            i.hs.consume_response(&i.id, &Response::new(&wrong[..]).unwrap()),
            Err(HandshakeError::WrongState)
        );
        // The rejected message did not disturb the handshake: the real one still completes.
        i.hs.consume_response(&i.id, &Response::new(&resp[..]).unwrap())
            .unwrap();
    }

    #[test]
    fn any_tampered_byte_is_rejected() {
        let (mut i, r) = pair(Some(&[7; 32]));
        let mut rng = SeededRng::new(6);
        let mut init = [0u8; initiation::LEN];
        i.hs.create_initiation(&i.id, WallTime::new(77, 0), 3, &mut rng, &mut init)
            .unwrap();
        // Every byte the handshake authenticates (mac1/mac2 are the cookie layer's job).
        for pos in initiation::SENDER.end..initiation::MAC1.start {
            let mut m = init;
            m[pos] ^= 0x20;
            let mut hs = Handshake::new(&r.id, i.id.public, Some(&[7; 32]));
            let res = consume_initiation(&r.id, &Initiation::new(&m[..]).unwrap())
                .and_then(|c| hs.accept_initiation(Time::ZERO, c));
            assert!(res.is_err(), "tampered byte {pos} accepted");
        }
    }

    #[test]
    fn low_order_keys_never_complete() {
        let a = Identity::new(&[1; 32]);
        // The all-zero point gives an all-zero DH.
        let mut hs = Handshake::new(&a, [0; 32], None);
        let mut init = [0u8; initiation::LEN];
        assert_eq!(
            hs.create_initiation(
                &a,
                WallTime::new(1, 0),
                1,
                &mut SeededRng::new(1),
                &mut init
            ),
            Err(HandshakeError::ZeroDh)
        );
    }

    #[test]
    fn timestamps_are_big_endian_tai64n_and_rounded() {
        let t = tai64n(WallTime::new(1, 123_456_789));
        assert_eq!(&t[..8], &((1u64 << 62) + 1).to_be_bytes());
        let nanos = u32::from_be_bytes(t[8..].try_into().unwrap());
        assert_eq!(nanos % TIMESTAMP_GRANULARITY_NANOS, 0);
        assert!(nanos <= 123_456_789 && 123_456_789 - nanos < TIMESTAMP_GRANULARITY_NANOS);
        assert!(tai64n(WallTime::new(2, 0)) > tai64n(WallTime::new(1, 999_999_999)));
    }
}
