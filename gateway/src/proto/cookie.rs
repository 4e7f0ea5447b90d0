//! mac1, mac2 and cookie replies: WireGuard's DoS mitigation (whitepaper §5.3, §5.4.4, §5.4.7).
//!
//! Every handshake message carries `mac1 = MAC(HASH(LABEL_MAC1 ‖ Spub_receiver), msg[..mac1])`,
//! which any sender who knows our public key can compute, so a responder rejects random garbage
//! without any DH. Under load the responder also demands `mac2 = MAC(cookie, msg[..mac2])`,
//! where `cookie = MAC(Rm, source IP ‖ source port)` and `Rm` is a secret that changes every
//! two minutes. A sender without a valid cookie gets a cookie reply: the cookie encrypted with
//! XChaCha20-Poly1305 under `HASH(LABEL_COOKIE ‖ Spub_responder)`, bound to the mac1 it answers.
//! Proving you can receive at your source address is thus the price of a handshake under load.
//!
//! [`CookieChecker`] is the responder's side (one per interface); checking is `&self` so data
//! workers can verify mac1 concurrently. [`CookieGenerator`] is the initiator's side (one per
//! peer): it adds the macs and consumes cookie replies.

use super::kdf::{hash, mac};
use super::messages::{
    self, cookie_reply, CookieReply, COOKIE_LEN, COOKIE_NONCE_LEN, COOKIE_SECRET_LATENCY,
    COOKIE_SECRET_MAX_AGE, KEY_LEN, LABEL_COOKIE, LABEL_MAC1, MAC_LEN,
};
use super::{Rng, Time};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use core::fmt;
use std::net::SocketAddr;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type Key = [u8; KEY_LEN];
type Mac = [u8; MAC_LEN];

/// Why a handshake message failed the cookie layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("mac1 does not verify")]
    BadMac1,
    #[error("under load and mac2 is not valid for this source")]
    CookieRequired,
    #[error("cookie reply does not decrypt, or answers nothing we sent")]
    BadReply,
}

impl From<CookieError> for crate::DropReason {
    fn from(e: CookieError) -> Self {
        match e {
            CookieError::BadMac1 => crate::DropReason::BadMac1,
            CookieError::CookieRequired => crate::DropReason::CookieRequired,
            CookieError::BadReply => crate::DropReason::BadCookieReply,
        }
    }
}

fn mac1_key(public: &Key) -> Key {
    hash(&[LABEL_MAC1, public])
}

fn cookie_key(public: &Key) -> Key {
    hash(&[LABEL_COOKIE, public])
}

fn mac1_of(key: &Key, msg: &[u8]) -> Mac {
    mac(key, &[&msg[..messages::mac1_offset(msg.len())]])
}

fn mac2_of(cookie: &[u8; COOKIE_LEN], msg: &[u8]) -> Mac {
    mac(cookie, &[&msg[..messages::mac2_offset(msg.len())]])
}

/// A handshake message long enough to carry the two macs. Callers pass only parsed 148- and
/// 92-byte messages; anything shorter fails every check instead of panicking.
fn has_macs(msg: &[u8]) -> bool {
    msg.len() >= 2 * MAC_LEN
}

/// The responder's side: verifies macs and creates cookie replies.
pub struct CookieChecker {
    mac1_key: Key,
    encryption_key: Key,
    secret: Zeroizing<Key>,
    secret_birth: Option<Time>,
}

impl fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieChecker")
            .field("secret_birth", &self.secret_birth)
            .finish_non_exhaustive()
    }
}

impl CookieChecker {
    pub fn new(our_public: &Key) -> CookieChecker {
        CookieChecker {
            mac1_key: mac1_key(our_public),
            encryption_key: cookie_key(our_public),
            secret: Zeroizing::new([0; KEY_LEN]),
            secret_birth: None,
        }
    }

    /// Is mac1 correct for our public key? Constant-time.
    pub fn check_mac1(&self, msg: &[u8]) -> bool {
        if !has_macs(msg) {
            return false;
        }
        let (m1, _) = messages::macs(msg);
        bool::from(mac1_of(&self.mac1_key, msg)[..].ct_eq(m1))
    }

    /// Is mac2 correct for the cookie `src` would hold now? Constant-time. With no live
    /// secret, no mac2 is valid.
    pub fn check_mac2(&self, now: Time, msg: &[u8], src: SocketAddr) -> bool {
        let Some(cookie) = self.current_cookie(now, src) else {
            return false;
        };
        if !has_macs(msg) {
            return false;
        }
        let (_, m2) = messages::macs(msg);
        bool::from(mac2_of(&cookie, msg)[..].ct_eq(m2))
    }

    /// The cookie checks a handshake message gets: mac1 always; mac2 when `under_load`.
    pub fn validate(
        &self,
        now: Time,
        msg: &[u8],
        src: SocketAddr,
        under_load: bool,
    ) -> Result<(), CookieError> {
        if !self.check_mac1(msg) {
            return Err(CookieError::BadMac1);
        }
        if under_load && !self.check_mac2(now, msg, src) {
            return Err(CookieError::CookieRequired);
        }
        Ok(())
    }

    fn secret_is_live(&self, now: Time) -> bool {
        self.secret_birth
            .is_some_and(|b| !now.has_elapsed(b, COOKIE_SECRET_MAX_AGE))
    }

    fn current_cookie(&self, now: Time, src: SocketAddr) -> Option<Zeroizing<[u8; COOKIE_LEN]>> {
        if !self.secret_is_live(now) {
            return None;
        }
        Some(Zeroizing::new(cookie_for(&self.secret, src)))
    }

    /// Write a cookie reply to `msg` (a handshake message from `src`) into `out`. Refreshes the
    /// secret first if it is older than COOKIE_SECRET_MAX_AGE.
    pub fn create_reply(
        &mut self,
        now: Time,
        rng: &mut dyn Rng,
        msg: &[u8],
        sender_index: u32,
        src: SocketAddr,
        out: &mut [u8; cookie_reply::LEN],
    ) {
        if !self.secret_is_live(now) {
            rng.fill_bytes(&mut self.secret[..]);
            self.secret_birth = Some(now);
        }
        let cookie = Zeroizing::new(cookie_for(&self.secret, src));
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let aad = if has_macs(msg) {
            messages::macs(msg).0
        } else {
            &[][..]
        };

        // A 64-byte buffer of the right length, so init cannot fail.
        let mut reply = match CookieReply::init(&mut out[..]) {
            Ok(r) => r,
            Err(_) => return,
        };
        reply.set_receiver(sender_index);
        reply.nonce_mut().copy_from_slice(&nonce);
        let sealed = reply.encrypted_cookie_mut();
        sealed[..COOKIE_LEN].copy_from_slice(&cookie[..]);
        xseal(&self.encryption_key, &nonce, aad, sealed);
    }
}

/// The cookie for a source: MAC(Rm, IP ‖ port), the address in network byte order.
fn cookie_for(secret: &Key, src: SocketAddr) -> [u8; COOKIE_LEN] {
    let port = src.port().to_be_bytes();
    match src {
        SocketAddr::V4(a) => mac(secret, &[&a.ip().octets(), &port]),
        SocketAddr::V6(a) => mac(secret, &[&a.ip().octets(), &port]),
    }
}

fn xseal(key: &Key, nonce: &[u8; COOKIE_NONCE_LEN], aad: &[u8], buf: &mut [u8]) {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let split = buf.len() - messages::TAG_LEN;
    let (data, tag_out) = buf.split_at_mut(split);
    // XChaCha20-Poly1305 only errs for inputs over 256 GiB; ours are 16 bytes.
    if let Ok(tag) = cipher.encrypt_inout_detached(&XNonce::from(*nonce), aad, data.into()) {
        tag_out.copy_from_slice(&tag);
    }
}

fn xopen(key: &Key, nonce: &[u8; COOKIE_NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> bool {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let split = buf.len() - messages::TAG_LEN;
    let (data, tag) = buf.split_at_mut(split);
    let Ok(tag) = (&*tag).try_into() else {
        return false;
    };
    cipher
        .decrypt_inout_detached(&XNonce::from(*nonce), aad, data.into(), tag)
        .is_ok()
}

/// The initiator's side for one peer: adds macs to outgoing handshake messages and keeps the
/// cookie from the latest cookie reply.
pub struct CookieGenerator {
    mac1_key: Key,
    decryption_key: Key,
    cookie: Option<(Zeroizing<[u8; COOKIE_LEN]>, Time)>,
    /// The mac1 of our last handshake message: a cookie reply must be bound to it.
    last_mac1: Option<Mac>,
}

impl fmt::Debug for CookieGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieGenerator")
            .field("has_cookie", &self.cookie.is_some())
            .finish_non_exhaustive()
    }
}

impl CookieGenerator {
    pub fn new(remote_public: &Key) -> CookieGenerator {
        CookieGenerator {
            mac1_key: mac1_key(remote_public),
            decryption_key: cookie_key(remote_public),
            cookie: None,
            last_mac1: None,
        }
    }

    /// Fill in mac1, and mac2 if we hold a cookie young enough that the responder's secret has
    /// not rotated (zeros otherwise).
    pub fn add_macs(&mut self, now: Time, msg: &mut [u8]) {
        if !has_macs(msg) {
            return;
        }
        let m1 = mac1_of(&self.mac1_key, msg);
        let at1 = messages::mac1_offset(msg.len());
        msg[at1..at1 + MAC_LEN].copy_from_slice(&m1);
        self.last_mac1 = Some(m1);

        let at2 = messages::mac2_offset(msg.len());
        let fresh = COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY;
        let m2 = match &self.cookie {
            Some((cookie, birth)) if !now.has_elapsed(*birth, fresh) => mac2_of(cookie, msg),
            _ => [0; MAC_LEN],
        };
        msg[at2..].copy_from_slice(&m2);
    }

    /// Take the cookie from a reply to our last handshake message.
    pub fn consume_reply(
        &mut self,
        now: Time,
        reply: &CookieReply<&[u8]>,
    ) -> Result<(), CookieError> {
        let last_mac1 = self.last_mac1.ok_or(CookieError::BadReply)?;
        let mut sealed = Zeroizing::new(*reply.encrypted_cookie());
        if !xopen(
            &self.decryption_key,
            reply.nonce(),
            &last_mac1,
            &mut sealed[..],
        ) {
            return Err(CookieError::BadReply);
        }
        let mut cookie = Zeroizing::new([0u8; COOKIE_LEN]);
        cookie.copy_from_slice(&sealed[..COOKIE_LEN]);
        self.cookie = Some((cookie, now));
        // One reply per message we sent: a second reply to the same mac1 is a replay.
        self.last_mac1 = None;
        Ok(())
    }

    pub fn has_cookie(&self) -> bool {
        self.cookie.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::messages::initiation;
    use crate::proto::SeededRng;
    use core::time::Duration;

    const SRC: &str = "192.0.2.7:51820";

    fn setup() -> (CookieChecker, CookieGenerator) {
        let responder_public = [3u8; 32];
        (
            CookieChecker::new(&responder_public),
            CookieGenerator::new(&responder_public),
        )
    }

    fn message() -> [u8; initiation::LEN] {
        let mut m = [0x5au8; initiation::LEN];
        m[..4].copy_from_slice(&[1, 0, 0, 0]);
        m
    }

    #[test]
    fn mac1_verifies_and_detects_tampering() {
        let (checker, mut gen) = setup();
        let mut m = message();
        gen.add_macs(Time::ZERO, &mut m);
        assert!(checker.check_mac1(&m));
        let src = SRC.parse().unwrap();
        assert_eq!(checker.validate(Time::ZERO, &m, src, false), Ok(()));
        for pos in 0..initiation::MAC2.start {
            let mut t = m;
            t[pos] ^= 1;
            assert!(!checker.check_mac1(&t), "byte {pos}");
        }
        // mac1 for another responder's key does not verify here.
        let other = CookieChecker::new(&[4; 32]);
        assert!(!other.check_mac1(&m));
        assert!(!checker.check_mac1(&m[..10]));
    }

    #[test]
    fn under_load_the_cookie_round_trip_earns_a_valid_mac2() {
        let (mut checker, mut gen) = setup();
        let mut rng = SeededRng::new(9);
        let src: SocketAddr = SRC.parse().unwrap();
        let now = Time::ZERO + Duration::from_secs(1000);
        let mut m = message();
        gen.add_macs(now, &mut m);
        assert_eq!(
            checker.validate(now, &m, src, true),
            Err(CookieError::CookieRequired)
        );

        let mut reply = [0u8; cookie_reply::LEN];
        checker.create_reply(now, &mut rng, &m, 0x1234, src, &mut reply);
        let parsed = CookieReply::new(&reply[..]).unwrap();
        assert_eq!(parsed.receiver(), 0x1234);
        gen.consume_reply(now, &parsed).unwrap();
        // A second copy of the same reply is refused.
        assert_eq!(gen.consume_reply(now, &parsed), Err(CookieError::BadReply));

        let mut m2 = message();
        gen.add_macs(now, &mut m2);
        assert_eq!(checker.validate(now, &m2, src, true), Ok(()));
        // The cookie is bound to the source address and port.
        let other: SocketAddr = "192.0.2.7:51821".parse().unwrap();
        assert_eq!(
            checker.validate(now, &m2, other, true),
            Err(CookieError::CookieRequired)
        );
        // A tampered mac2 fails.
        let mut t = m2;
        t[initiation::MAC2.start] ^= 1;
        assert!(!checker.check_mac2(now, &t, src));
    }

    #[test]
    fn cookies_expire_with_the_secret() {
        let (mut checker, mut gen) = setup();
        let mut rng = SeededRng::new(10);
        let src: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let t0 = Time::ZERO + Duration::from_secs(10);
        let mut m = message();
        gen.add_macs(t0, &mut m);
        let mut reply = [0u8; cookie_reply::LEN];
        checker.create_reply(t0, &mut rng, &m, 1, src, &mut reply);
        gen.consume_reply(t0, &CookieReply::new(&reply[..]).unwrap())
            .unwrap();

        // Just before the initiator's cutoff (max age − latency) mac2 is sent and valid.
        let t1 = t0 + (COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY - Duration::from_millis(1));
        let mut m1 = message();
        gen.add_macs(t1, &mut m1);
        assert!(checker.check_mac2(t1, &m1, src));

        // After it, the initiator stops sending mac2.
        let t2 = t0 + (COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY);
        let mut m2 = message();
        gen.add_macs(t2, &mut m2);
        assert_eq!(&m2[initiation::MAC2], &[0u8; 16]);

        // And once the secret is older than max age, even an old mac2 is refused.
        let t3 = t0 + COOKIE_SECRET_MAX_AGE;
        assert!(!checker.check_mac2(t3, &m1, src));
    }

    #[test]
    fn reply_bound_to_a_different_message_is_rejected() {
        let (mut checker, mut gen) = setup();
        let mut rng = SeededRng::new(11);
        let src: SocketAddr = SRC.parse().unwrap();
        let mut sent = message();
        gen.add_macs(Time::ZERO, &mut sent);
        let mut other = message();
        other[10] ^= 0xff;
        let mut o = other;
        CookieGenerator::new(&[3; 32]).add_macs(Time::ZERO, &mut o);
        let mut reply = [0u8; cookie_reply::LEN];
        checker.create_reply(Time::ZERO, &mut rng, &o, 1, src, &mut reply);
        assert_eq!(
            gen.consume_reply(Time::ZERO, &CookieReply::new(&reply[..]).unwrap()),
            Err(CookieError::BadReply)
        );
        // Any flipped byte in a genuine reply is rejected too.
        let mut reply = [0u8; cookie_reply::LEN];
        checker.create_reply(Time::ZERO, &mut rng, &sent, 1, src, &mut reply);
        for pos in cookie_reply::NONCE.start..cookie_reply::LEN {
            let mut t = reply;
            t[pos] ^= 4;
            let mut g = CookieGenerator::new(&[3; 32]);
            let mut s = message();
            g.add_macs(Time::ZERO, &mut s);
            assert!(
                g.consume_reply(Time::ZERO, &CookieReply::new(&t[..]).unwrap())
                    .is_err(),
                "byte {pos}"
            );
        }
    }

    #[test]
    fn no_reply_accepted_before_we_sent_anything() {
        let (mut checker, mut gen) = setup();
        let mut reply = [0u8; cookie_reply::LEN];
        let m = message();
        let src: SocketAddr = SRC.parse().unwrap();
        checker.create_reply(Time::ZERO, &mut SeededRng::new(1), &m, 1, src, &mut reply);
        assert_eq!(
            gen.consume_reply(Time::ZERO, &CookieReply::new(&reply[..]).unwrap()),
            Err(CookieError::BadReply)
        );
    }
}
