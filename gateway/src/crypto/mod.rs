//! Authenticated encryption for WireGuard: ChaCha20-Poly1305 with WireGuard's nonce layout
//! (four zero bytes, then the 64-bit counter little-endian) and a 16-byte tag.
//!
//! This is the one place sluice calls an AEAD for handshakes and transport data: ring's
//! per-packet implementation here, and the batched SIMD implementation in [`batch`], which
//! falls back to these functions where ring is faster.
//!
//! Keys are passed as raw bytes owned (and zeroized) by the caller. ring's ChaCha20 key setup is
//! a copy of the 32 bytes, so building the ring key per call costs nothing measurable and keeps
//! no long-lived key copy outside memory we zeroize.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

pub mod batch;

pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;

/// The authentication tag did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct OpenError;

fn key(k: &[u8; KEY_LEN]) -> LessSafeKey {
    // CHACHA20_POLY1305 takes exactly KEY_LEN bytes, so this cannot fail.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k).expect("32-byte ChaCha20 key"))
}

/// WireGuard's 96-bit nonce: 32 zero bits, then the counter little-endian.
pub fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Encrypt `buf[..buf.len() - TAG_LEN]` in place and write the tag into the last TAG_LEN bytes.
pub fn seal_in_place(k: &[u8; KEY_LEN], counter: u64, aad: &[u8], buf: &mut [u8]) {
    debug_assert!(buf.len() >= TAG_LEN);
    let split = buf.len() - TAG_LEN;
    let (data, tag_out) = buf.split_at_mut(split);
    let tag: Tag = key(k)
        .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), data)
        // ring only fails for inputs beyond ChaCha20's 256 GiB block-counter limit.
        .expect("AEAD input within ChaCha20 limits");
    tag_out.copy_from_slice(tag.as_ref());
}

/// Verify and decrypt `buf` (ciphertext then tag) in place. On success the plaintext is
/// `buf[..buf.len() - TAG_LEN]`; on failure the buffer's contents are unspecified and must not
/// be used as plaintext.
pub fn open_in_place(
    k: &[u8; KEY_LEN],
    counter: u64,
    aad: &[u8],
    buf: &mut [u8],
) -> Result<usize, OpenError> {
    if buf.len() < TAG_LEN {
        return Err(OpenError);
    }
    let plain = key(k)
        .open_in_place(nonce(counter), Aad::from(aad), buf)
        .map_err(|_| OpenError)?;
    Ok(plain.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8439_aead_vector() {
        // RFC 8439 §2.8.2, with the nonce rebuilt into WireGuard's layout is not possible (its
        // nonce has a non-zero prefix), so this checks the round trip and tamper detection;
        // the RFC vectors run against the batched implementation's own tests.
        let k = [0x42u8; 32];
        let mut buf = b"attack at dawn, and bring sandwiches".to_vec();
        let plain = buf.clone();
        buf.extend_from_slice(&[0u8; TAG_LEN]);
        seal_in_place(&k, 7, b"aad", &mut buf);
        assert_ne!(&buf[..plain.len()], &plain[..]);
        let mut copy = buf.clone();
        let n = open_in_place(&k, 7, b"aad", &mut copy).unwrap();
        assert_eq!(&copy[..n], &plain[..]);
        for i in 0..buf.len() {
            let mut t = buf.clone();
            t[i] ^= 1;
            assert_eq!(
                open_in_place(&k, 7, b"aad", &mut t),
                Err(OpenError),
                "byte {i}"
            );
        }
        assert!(open_in_place(&k, 8, b"aad", &mut buf.clone()).is_err());
        assert!(open_in_place(&k, 7, b"aaX", &mut buf.clone()).is_err());
        assert!(open_in_place(&k, 7, b"", &mut [0u8; 3]).is_err());
    }
}
