//! Keys as operators handle them: 32 bytes in standard base64 (44 characters), exactly as the
//! `wg` tool reads and writes them, plus the OS random source the I/O layer hands to the core.

use crate::proto::Rng;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::{Zeroize, Zeroizing};

pub const KEY_LEN: usize = 32;

/// Why a key string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a key is 44 characters of base64 (32 bytes), got {0} characters")]
    Length(usize),
    #[error("a key must be valid base64")]
    Base64,
}

/// Decode a `wg`-style base64 key. Surrounding whitespace is ignored, as `wg` does.
pub fn decode_key(s: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let s = s.trim();
    if s.len() != 44 || !s.ends_with('=') {
        return Err(KeyError::Length(s.len()));
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    let mut buf = Zeroizing::new([0u8; 33]);
    let n = STANDARD
        .decode_slice(s, &mut buf[..])
        .map_err(|_| KeyError::Base64)?;
    if n != KEY_LEN {
        return Err(KeyError::Length(s.len()));
    }
    out.copy_from_slice(&buf[..KEY_LEN]);
    Ok(out)
}

/// Encode a key as `wg` prints it.
pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
    STANDARD.encode(key)
}

/// A new Curve25519 private key, clamped as `wg genkey` clamps it.
pub fn generate_private(rng: &mut dyn Rng) -> Zeroizing<[u8; KEY_LEN]> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut k[..]);
    clamp(&mut k);
    k
}

/// A new preshared key: 32 random bytes.
pub fn generate_psk(rng: &mut dyn Rng) -> Zeroizing<[u8; KEY_LEN]> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut k[..]);
    k
}

/// The public key for a private key.
pub fn public_from_private(private: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let secret = x25519_dalek::StaticSecret::from(*private);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

fn clamp(k: &mut [u8; KEY_LEN]) {
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
}

/// The operating system's random source (`getrandom(2)`), for use outside the protocol core.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRng;

impl Rng for OsRng {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // getrandom only fails if the kernel has no entropy interface at all; running a VPN
        // without randomness is not an option, so this is fatal by design.
        if let Err(e) = getrandom::fill(dest) {
            dest.zeroize();
            panic!("the OS random source failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SeededRng;

    #[test]
    fn round_trip_and_clamping() {
        let mut rng = SeededRng::new(7);
        let k = generate_private(&mut rng);
        assert_eq!(k[0] & 7, 0);
        assert_eq!(k[31] & 0xc0, 0x40);
        let s = encode_key(&k);
        assert_eq!(s.len(), 44);
        assert_eq!(*decode_key(&s).unwrap(), *k);
        assert_eq!(*decode_key(&format!("  {s}\n")).unwrap(), *k);
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(decode_key("abc").unwrap_err(), KeyError::Length(3));
        let bad = "!".repeat(43) + "=";
        assert_eq!(decode_key(&bad).unwrap_err(), KeyError::Base64);
        // 44 chars but decodes to 33 bytes is impossible with one '='; a 45-char key is wrong.
        let long = "A".repeat(45);
        assert!(decode_key(&long).is_err());
    }

    #[test]
    fn known_public_key() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let private: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public: [u8; 32] = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        assert_eq!(public_from_private(&private), public);
    }
}
