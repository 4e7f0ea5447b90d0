//! The hash-based primitives of WireGuard (whitepaper §5.4): HASH, MAC, HMAC and the HKDF-style
//! KDF<sub>n</sub>, all over BLAKE2s.
//!
//! - `HASH(x)` = BLAKE2s-256(x).
//! - `MAC(key, x)` = keyed BLAKE2s with a 16-byte output (used for mac1 and mac2).
//! - `HMAC(key, x)` = HMAC (RFC 2104) over BLAKE2s-256, block size 64.
//! - `KDFn(key, input)`: τ0 = HMAC(key, input), τ1 = HMAC(τ0, 0x1),
//!   τi = HMAC(τ0, τi-1 ‖ i).
//!
//! Intermediate keys are zeroized when they go out of scope.

use super::messages::{KEY_LEN, MAC_LEN};
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use zeroize::Zeroizing;

/// A derived key, wiped when dropped.
pub type SecretKey = Zeroizing<[u8; KEY_LEN]>;

type Blake2sMac128 = Blake2sMac<blake2::digest::consts::U16>;

const BLOCK_LEN: usize = 64;

/// HASH(parts[0] ‖ parts[1] ‖ …).
pub fn hash(parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// MAC(key, parts…): keyed BLAKE2s-128. `key` is 1 to 32 bytes (a 32-byte mac1 key or a
/// 16-byte cookie).
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    debug_assert!(!key.is_empty() && key.len() <= KEY_LEN);
    // Keys are always 16 or 32 bytes here, both within BLAKE2s's key range.
    let mut m =
        <Blake2sMac128 as KeyInit>::new_from_slice(key).expect("BLAKE2s key of 1..=32 bytes");
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

/// HMAC-BLAKE2s(key, parts…).
pub fn hmac(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> SecretKey {
    let mut pad = Zeroizing::new([0u8; BLOCK_LEN]);
    pad[..KEY_LEN].copy_from_slice(key);
    for b in pad.iter_mut() {
        *b ^= 0x36;
    }
    let mut inner = Blake2s256::new();
    Digest::update(&mut inner, &pad[..]);
    for p in parts {
        Digest::update(&mut inner, p);
    }
    let inner_hash = Zeroizing::new(<[u8; KEY_LEN]>::from(inner.finalize()));

    for b in pad.iter_mut() {
        // Turn ipad into opad: 0x36 ^ 0x5c.
        *b ^= 0x36 ^ 0x5c;
    }
    let mut outer = Blake2s256::new();
    Digest::update(&mut outer, &pad[..]);
    Digest::update(&mut outer, &inner_hash[..]);
    Zeroizing::new(outer.finalize().into())
}

/// KDF1(key, input) = τ1.
pub fn kdf1(key: &[u8; KEY_LEN], input: &[u8]) -> SecretKey {
    let t0 = hmac(key, &[input]);
    hmac(&t0, &[&[1]])
}

/// KDF2(key, input) = (τ1, τ2).
pub fn kdf2(key: &[u8; KEY_LEN], input: &[u8]) -> (SecretKey, SecretKey) {
    let t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1]]);
    let t2 = hmac(&t0, &[&t1[..], &[2]]);
    (t1, t2)
}

/// KDF3(key, input) = (τ1, τ2, τ3).
pub fn kdf3(key: &[u8; KEY_LEN], input: &[u8]) -> (SecretKey, SecretKey, SecretKey) {
    let t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1]]);
    let t2 = hmac(&t0, &[&t1[..], &[2]]);
    let t3 = hmac(&t0, &[&t2[..], &[3]]);
    (t1, t2, t3)
}

#[cfg(test)]
mod tests {
    //! Known answers computed independently (Python's hashlib/hmac); the first two are also the
    //! RFC 7693 Appendix B and BLAKE2 reference-suite vectors.
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key() -> [u8; 32] {
        core::array::from_fn(|i| i as u8)
    }

    #[test]
    fn hash_known_answer() {
        assert_eq!(
            hash(&[b"abc"]).to_vec(),
            hex("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")
        );
        // Splitting the input does not change the hash.
        assert_eq!(hash(&[b"a", b"", b"bc"]), hash(&[b"abc"]));
    }

    #[test]
    fn mac_known_answer() {
        assert_eq!(
            mac(&key(), &[b"hello ", b"wireguard"]).to_vec(),
            hex("d7ced850c9c0917a705fad04539c3a01")
        );
        assert_eq!(
            mac(&key()[..16], &[b"hello wireguard"]).to_vec(),
            hex("f79336d9851d215e27a23c66eae32bed")
        );
    }

    #[test]
    fn hmac_known_answer() {
        assert_eq!(
            hmac(&key(), &[b"hello wireguard"]).to_vec(),
            hex("c030854166ba79dbc4432ec45565144a37b3729a58feda7e75a70add8d0fd74a")
        );
    }

    #[test]
    fn initial_chaining_key_and_hash() {
        use crate::proto::messages::{CONSTRUCTION, IDENTIFIER};
        let ck = hash(&[CONSTRUCTION]);
        assert_eq!(
            ck.to_vec(),
            hex("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
        );
        assert_eq!(
            hash(&[&ck, IDENTIFIER]).to_vec(),
            hex("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3")
        );
    }

    #[test]
    fn kdf_known_answer() {
        let ck = hex("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36");
        let ck: [u8; 32] = ck.try_into().unwrap();
        let (t1, t2, t3) = kdf3(&ck, b"input material");
        assert_eq!(
            t1.to_vec(),
            hex("ebde91d02090b66fee915517300e83b0e78607ba3d2669909a9a39c1d9bff821")
        );
        assert_eq!(
            t2.to_vec(),
            hex("5e4f5662034a23be4a2ccc5821bfe1ef1f99f6d5ece2df5e145b442040db241e")
        );
        assert_eq!(
            t3.to_vec(),
            hex("b58d8ac889afa60104de2c50513944474da3b7d7e440cd73d8f6ff383d6215c3")
        );
        let (u1, u2) = kdf2(&ck, b"input material");
        assert_eq!((*u1, *u2), (*t1, *t2));
        assert_eq!(*kdf1(&ck, b"input material"), *t1);
    }
}
