//! The portable path: plain Rust, one packet at a time inside each lane group. It is the
//! reference the vector paths are tested against, and runs wherever they cannot.

use super::engine::{Blocks, ChachaLanes, Engine, PolyLanes, MAX_LANES};
use super::poly1305;

/// "expand 32-byte k" (RFC 8439 §2.3).
pub(crate) const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

fn quarter_round(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(16);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(12);
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(8);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(7);
}

/// The ChaCha20 block function (RFC 8439 §2.3) on an initial state.
pub(crate) fn block(input: &[u32; 16]) -> [u8; 64] {
    let mut x = *input;
    for _ in 0..10 {
        quarter_round(&mut x, 0, 4, 8, 12);
        quarter_round(&mut x, 1, 5, 9, 13);
        quarter_round(&mut x, 2, 6, 10, 14);
        quarter_round(&mut x, 3, 7, 11, 15);
        quarter_round(&mut x, 0, 5, 10, 15);
        quarter_round(&mut x, 1, 6, 11, 12);
        quarter_round(&mut x, 2, 7, 8, 13);
        quarter_round(&mut x, 3, 4, 9, 14);
    }
    let mut out = [0u8; 64];
    for (i, w) in out.chunks_exact_mut(4).enumerate() {
        w.copy_from_slice(&x[i].wrapping_add(input[i]).to_le_bytes());
    }
    out
}

/// The scalar engine. Eight lanes is arbitrary: enough that its tests exercise the same lane
/// grouping and masking as the vector paths.
#[derive(Debug)]
pub(crate) struct Portable;

impl Engine for Portable {
    const LANES: usize = 8;

    unsafe fn chacha_blocks(st: &ChachaLanes, out: &mut Blocks) {
        for (lane, dst) in out.iter_mut().enumerate().take(Self::LANES) {
            let mut input = [0u32; 16];
            input[..4].copy_from_slice(&SIGMA);
            for w in 0..8 {
                input[4 + w] = st.key[w][lane];
            }
            input[12] = st.counter[lane];
            for w in 0..3 {
                input[13 + w] = st.nonce[w][lane];
            }
            *dst = block(&input);
        }
    }

    unsafe fn poly_blocks(st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool) {
        let hibit = if hibit { poly1305::HIBIT } else { 0 };
        for (lane, msg) in msgs.iter().enumerate().take(Self::LANES) {
            let (mut h, r, s) = (
                PolyLanes::lane(&st.h, lane),
                PolyLanes::lane(&st.r, lane),
                PolyLanes::lane(&st.s, lane),
            );
            for m in msg.chunks_exact(16) {
                poly1305::mul_block(&mut h, &poly1305::block_limbs(m, hibit), &r, &s);
            }
            for (limb, v) in st.h.iter_mut().zip(h) {
                limb[lane] = v;
            }
        }
    }
}
