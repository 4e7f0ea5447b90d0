//! The AVX2 path: eight packets side by side. ChaCha20 keeps word `i` of all eight states in
//! one 256-bit register and transposes the finished blocks back per packet; Poly1305 runs one
//! packet per 64-bit lane, two registers of four packets per limb (two dependency chains).
//! AVX2 has no vector rotate: 16- and 8-bit rotations are byte shuffles, 12 and 7 shift pairs.

use super::engine::{Blocks, ChachaLanes, Engine, PolyLanes, MAX_LANES};
use super::poly1305::{vector_radix26, HIBIT, MASK26};
use super::portable::SIGMA;
use std::arch::x86_64::*;

#[derive(Debug)]
pub(crate) struct Avx2;

impl Engine for Avx2 {
    const LANES: usize = 8;

    unsafe fn chacha_blocks(st: &ChachaLanes, out: &mut Blocks) {
        // SAFETY: the caller guarantees AVX2 (see `Path::is_available`).
        unsafe { chacha8(st, out) }
    }

    unsafe fn poly_blocks(st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool) {
        // SAFETY: as above.
        unsafe { poly8(st, msgs, hibit) }
    }
}

#[target_feature(enable = "avx2")]
fn rotl<const L: i32, const R: i32>(x: __m256i) -> __m256i {
    _mm256_or_si256(_mm256_slli_epi32::<L>(x), _mm256_srli_epi32::<R>(x))
}

macro_rules! quarter {
    ($x:ident, $r16:ident, $r8:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
        $x[$a] = _mm256_add_epi32($x[$a], $x[$b]);
        $x[$d] = _mm256_shuffle_epi8(_mm256_xor_si256($x[$d], $x[$a]), $r16);
        $x[$c] = _mm256_add_epi32($x[$c], $x[$d]);
        $x[$b] = rotl::<12, 20>(_mm256_xor_si256($x[$b], $x[$c]));
        $x[$a] = _mm256_add_epi32($x[$a], $x[$b]);
        $x[$d] = _mm256_shuffle_epi8(_mm256_xor_si256($x[$d], $x[$a]), $r8);
        $x[$c] = _mm256_add_epi32($x[$c], $x[$d]);
        $x[$b] = rotl::<7, 25>(_mm256_xor_si256($x[$b], $x[$c]));
    };
}

#[target_feature(enable = "avx2")]
fn load8w(words: &[u32; MAX_LANES]) -> __m256i {
    // SAFETY: `words[..8]` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(words.as_ptr().cast()) }
}

#[target_feature(enable = "avx2")]
fn chacha8(st: &ChachaLanes, out: &mut Blocks) {
    #[rustfmt::skip]
    let r16 = _mm256_setr_epi8(
        2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
        2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
    );
    #[rustfmt::skip]
    let r8 = _mm256_setr_epi8(
        3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14,
        3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14,
    );
    let mut x = [_mm256_setzero_si256(); 16];
    for (w, c) in SIGMA.iter().enumerate() {
        x[w] = _mm256_set1_epi32(*c as i32);
    }
    for w in 0..8 {
        x[4 + w] = load8w(&st.key[w]);
    }
    x[12] = load8w(&st.counter);
    for w in 0..3 {
        x[13 + w] = load8w(&st.nonce[w]);
    }
    let init = x;
    for _ in 0..10 {
        quarter!(x, r16, r8, 0, 4, 8, 12);
        quarter!(x, r16, r8, 1, 5, 9, 13);
        quarter!(x, r16, r8, 2, 6, 10, 14);
        quarter!(x, r16, r8, 3, 7, 11, 15);
        quarter!(x, r16, r8, 0, 5, 10, 15);
        quarter!(x, r16, r8, 1, 6, 11, 12);
        quarter!(x, r16, r8, 2, 7, 8, 13);
        quarter!(x, r16, r8, 3, 4, 9, 14);
    }
    for (v, i) in x.iter_mut().zip(init) {
        *v = _mm256_add_epi32(*v, i);
    }
    transpose_store(&x, out);
}

/// `out[p]` = words 0..16 of packet `p`, from `x[w]` = word `w` of packets 0..8.
// `j` picks both the source registers and the destination packets.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2")]
fn transpose_store(x: &[__m256i; 16], out: &mut Blocks) {
    // u[g][j], 128-bit lane k: words 4g..4g+4 of packet 4k+j.
    let mut u = [[_mm256_setzero_si256(); 4]; 4];
    for (g, ug) in u.iter_mut().enumerate() {
        let a = 4 * g;
        let t0 = _mm256_unpacklo_epi32(x[a], x[a + 1]);
        let t1 = _mm256_unpackhi_epi32(x[a], x[a + 1]);
        let t2 = _mm256_unpacklo_epi32(x[a + 2], x[a + 3]);
        let t3 = _mm256_unpackhi_epi32(x[a + 2], x[a + 3]);
        *ug = [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ];
    }
    for j in 0..4 {
        let rows = [
            (j, _mm256_permute2x128_si256::<0x20>(u[0][j], u[1][j]), 0),
            (j, _mm256_permute2x128_si256::<0x20>(u[2][j], u[3][j]), 32),
            (
                4 + j,
                _mm256_permute2x128_si256::<0x31>(u[0][j], u[1][j]),
                0,
            ),
            (
                4 + j,
                _mm256_permute2x128_si256::<0x31>(u[2][j], u[3][j]),
                32,
            ),
        ];
        for (packet, row, at) in rows {
            // SAFETY: `out[packet][at..at + 32]` is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(out[packet][at..at + 32].as_mut_ptr().cast(), row) };
        }
    }
}

/// Four lanes' worth of one Poly1305 limb array.
#[target_feature(enable = "avx2")]
fn load4(limb: &[u64; MAX_LANES], half: usize) -> __m256i {
    // SAFETY: `limb[4*half..4*half+4]` is in bounds (half < 2): 32 readable bytes.
    unsafe { _mm256_loadu_si256(limb[4 * half..4 * half + 4].as_ptr().cast()) }
}

#[target_feature(enable = "avx2")]
fn store4(limb: &mut [u64; MAX_LANES], half: usize, v: __m256i) {
    // SAFETY: as for `load4`, writable.
    unsafe { _mm256_storeu_si256(limb[4 * half..4 * half + 4].as_mut_ptr().cast(), v) }
}

/// Per-half Poly1305 registers: accumulator, key limbs, and 5·key limbs.
struct Half {
    h: [__m256i; 5],
    r: [__m256i; 5],
    s: [__m256i; 5],
    addr: __m256i,
    count: __m256i,
}

#[target_feature(enable = "avx2")]
fn poly8(st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool) {
    let hib = _mm256_set1_epi64x(if hibit { HIBIT as i64 } else { 0 });
    let blocks = (*msgs).map(|m| (m.len() / 16) as i64);
    let addrs = (*msgs).map(|m| m.as_ptr() as i64);
    let max = blocks[..8].iter().copied().max().unwrap_or(0);
    if max == 0 {
        return;
    }
    let mut halves = [0, 1].map(|half| Half {
        h: [0, 1, 2, 3, 4].map(|i| load4(&st.h[i], half)),
        r: [0, 1, 2, 3, 4].map(|i| load4(&st.r[i], half)),
        s: [0, 1, 2, 3, 4].map(|i| load4(&st.s[i], half)),
        // SAFETY: in bounds (half < 2): 32 readable bytes each.
        addr: unsafe { _mm256_loadu_si256(addrs[4 * half..].as_ptr().cast()) },
        count: unsafe { _mm256_loadu_si256(blocks[4 * half..].as_ptr().cast()) },
    });
    // Gathers are slow to complete, so each block's loads are issued one block ahead.
    let gather = |half: &Half, b: i64| {
        let active = _mm256_cmpgt_epi64(half.count, _mm256_set1_epi64x(b));
        let addr = _mm256_add_epi64(half.addr, _mm256_set1_epi64x(16 * b));
        // SAFETY: for each active lane (block b < that lane's block count), `addr` and
        // `addr + 8` point at 8 readable bytes of its message; inactive lanes load nothing.
        unsafe {
            let base = std::ptr::null::<i64>();
            let z = _mm256_setzero_si256();
            let hi_addr = _mm256_add_epi64(addr, _mm256_set1_epi64x(8));
            (
                _mm256_mask_i64gather_epi64::<1>(z, base, addr, active),
                _mm256_mask_i64gather_epi64::<1>(z, base, hi_addr, active),
                active,
            )
        }
    };
    let mut next = [gather(&halves[0], 0), gather(&halves[1], 0)];
    for b in 0..max {
        let cur = next;
        if b + 1 < max {
            next = [gather(&halves[0], b + 1), gather(&halves[1], b + 1)];
        }
        for (half, (lo, hi, active)) in halves.iter_mut().zip(cur) {
            let m = split_limbs(lo, hi, hib);
            let n = mul_block(&half.h, &m, &half.r, &half.s);
            for (h, n) in half.h.iter_mut().zip(n) {
                *h = _mm256_blendv_epi8(*h, n, active);
            }
        }
    }
    for (half, regs) in halves.iter().enumerate() {
        for (i, h) in regs.h.iter().enumerate() {
            store4(&mut st.h[i], half, *h);
        }
    }
}

vector_radix26!(
    "avx2", __m256i,
    add: _mm256_add_epi64, mul: _mm256_mul_epu32, and: _mm256_and_si256, or: _mm256_or_si256,
    srli: _mm256_srli_epi64, slli: _mm256_slli_epi64, set1: _mm256_set1_epi64x
);
