//! The AVX-512 path: sixteen packets side by side. ChaCha20 keeps word `i` of all sixteen
//! states in one 512-bit register (one packet per 32-bit lane) and transposes the finished
//! blocks back to one register per packet; Poly1305 runs one packet per 64-bit lane, two
//! registers of eight packets per limb, as two independent dependency chains.
//!
//! Whole lane groups run through the fused pass in `avx512_fused.rs`, built on this module's
//! block function, transposes and Poly1305 arithmetic; the two kernels here also serve the
//! known-answer hooks.
//!
//! Poly1305 here is radix 2^26 with `vpmuludq`; CPUs with AVX-512 IFMA get radix 2^44 in the
//! same fused pass (`avx512_ifma.rs`).

use super::engine::{Blocks, ChachaLanes, CoreJob, Engine, PolyLanes, MAX_LANES};
use super::poly1305::{vector_radix26, HIBIT, MASK26};
use super::portable::SIGMA;
use std::arch::x86_64::*;

#[derive(Debug)]
pub(crate) struct Avx512;

impl Engine for Avx512 {
    const LANES: usize = 16;

    unsafe fn chacha_blocks(st: &ChachaLanes, out: &mut Blocks) {
        // SAFETY: the caller guarantees AVX-512F/BW (see `Path::is_available`).
        unsafe { chacha16(st, out) }
    }

    unsafe fn poly_blocks(st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool) {
        // SAFETY: as above.
        unsafe { poly16(st, msgs, hibit) }
    }

    unsafe fn fused_group(group: &mut [Option<&mut CoreJob<'_>>]) -> bool {
        // SAFETY: as above.
        unsafe { super::avx512_fused::group(super::avx512_fused::Radix26, group) };
        true
    }
}

macro_rules! quarter {
    ($x:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
        $x[$a] = _mm512_add_epi32($x[$a], $x[$b]);
        $x[$d] = _mm512_rol_epi32::<16>(_mm512_xor_si512($x[$d], $x[$a]));
        $x[$c] = _mm512_add_epi32($x[$c], $x[$d]);
        $x[$b] = _mm512_rol_epi32::<12>(_mm512_xor_si512($x[$b], $x[$c]));
        $x[$a] = _mm512_add_epi32($x[$a], $x[$b]);
        $x[$d] = _mm512_rol_epi32::<8>(_mm512_xor_si512($x[$d], $x[$a]));
        $x[$c] = _mm512_add_epi32($x[$c], $x[$d]);
        $x[$b] = _mm512_rol_epi32::<7>(_mm512_xor_si512($x[$b], $x[$c]));
    };
}

#[target_feature(enable = "avx512f,avx512bw")]
fn load16(words: &[u32; MAX_LANES]) -> __m512i {
    // SAFETY: `words` is 64 readable bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(words.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn chacha16(st: &ChachaLanes, out: &mut Blocks) {
    let mut x = [_mm512_setzero_si512(); 16];
    for (w, c) in SIGMA.iter().enumerate() {
        x[w] = _mm512_set1_epi32(*c as i32);
    }
    for w in 0..8 {
        x[4 + w] = load16(&st.key[w]);
    }
    x[12] = load16(&st.counter);
    for w in 0..3 {
        x[13 + w] = load16(&st.nonce[w]);
    }
    block16(&mut x);
    for (packet, row) in out.iter_mut().zip(transpose16(&x)) {
        // SAFETY: `out[packet]` is 64 writable bytes; the store is unaligned.
        unsafe { _mm512_storeu_si512(packet.as_mut_ptr().cast(), row) };
    }
}

/// The ChaCha20 block function on sixteen word-major states: the twenty rounds, then the
/// initial state added back. `x[w]` is word `w` of every lane's state.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn block16(x: &mut [__m512i; 16]) {
    let init = *x;
    for _ in 0..10 {
        quarter!(x, 0, 4, 8, 12);
        quarter!(x, 1, 5, 9, 13);
        quarter!(x, 2, 6, 10, 14);
        quarter!(x, 3, 7, 11, 15);
        quarter!(x, 0, 5, 10, 15);
        quarter!(x, 1, 6, 11, 12);
        quarter!(x, 2, 7, 8, 13);
        quarter!(x, 3, 4, 9, 14);
    }
    for (v, i) in x.iter_mut().zip(init) {
        *v = _mm512_add_epi32(*v, i);
    }
}

/// Word-major to lane-major: result `p` holds words 0..16 of lane `p`, from `x[w]` = word `w`
/// of lanes 0..16.
// `j` picks both the source registers and the destination packets.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn transpose16(x: &[__m512i; 16]) -> [__m512i; 16] {
    // u[g][j], 128-bit lane k: words 4g..4g+4 of packet 4k+j.
    let mut u = [[_mm512_setzero_si512(); 4]; 4];
    for (g, ug) in u.iter_mut().enumerate() {
        let a = 4 * g;
        let t0 = _mm512_unpacklo_epi32(x[a], x[a + 1]);
        let t1 = _mm512_unpackhi_epi32(x[a], x[a + 1]);
        let t2 = _mm512_unpacklo_epi32(x[a + 2], x[a + 3]);
        let t3 = _mm512_unpackhi_epi32(x[a + 2], x[a + 3]);
        *ug = [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ];
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        // A 4×4 transpose of 128-bit blocks: packet 4k+j gets lane k of u[0..4][j].
        let v0 = _mm512_shuffle_i32x4::<0x44>(u[0][j], u[1][j]);
        let v1 = _mm512_shuffle_i32x4::<0xee>(u[0][j], u[1][j]);
        let v2 = _mm512_shuffle_i32x4::<0x44>(u[2][j], u[3][j]);
        let v3 = _mm512_shuffle_i32x4::<0xee>(u[2][j], u[3][j]);
        out[j] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
        out[4 + j] = _mm512_shuffle_i32x4::<0xdd>(v0, v2);
        out[8 + j] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
        out[12 + j] = _mm512_shuffle_i32x4::<0xdd>(v1, v3);
    }
    out
}

/// Eight lanes' worth of one Poly1305 limb array.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn load8(limb: &[u64; MAX_LANES], half: usize) -> __m512i {
    // SAFETY: `limb[8*half..8*half+8]` is in bounds (half < 2): 64 readable bytes.
    unsafe { _mm512_loadu_si512(limb[8 * half..8 * half + 8].as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn store8(limb: &mut [u64; MAX_LANES], half: usize, v: __m512i) {
    // SAFETY: as for `load8`, writable.
    unsafe { _mm512_storeu_si512(limb[8 * half..8 * half + 8].as_mut_ptr().cast(), v) }
}

/// Per-half Poly1305 registers: accumulator, key limbs, and 5·key limbs.
struct Half {
    h: [__m512i; 5],
    r: [__m512i; 5],
    s: [__m512i; 5],
    addr: __m512i,
    count: __m512i,
}

#[target_feature(enable = "avx512f,avx512bw")]
fn poly16(st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool) {
    let hib = _mm512_set1_epi64(if hibit { HIBIT as i64 } else { 0 });
    let blocks = (*msgs).map(|m| (m.len() / 16) as i64);
    let addrs = (*msgs).map(|m| m.as_ptr() as i64);
    let max = blocks.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return;
    }
    let mut halves = [0, 1].map(|half| Half {
        h: [0, 1, 2, 3, 4].map(|i| load8(&st.h[i], half)),
        r: [0, 1, 2, 3, 4].map(|i| load8(&st.r[i], half)),
        s: [0, 1, 2, 3, 4].map(|i| load8(&st.s[i], half)),
        // SAFETY: in bounds (half < 2): 64 readable bytes each.
        addr: unsafe { _mm512_loadu_si512(addrs[8 * half..].as_ptr().cast()) },
        count: unsafe { _mm512_loadu_si512(blocks[8 * half..].as_ptr().cast()) },
    });
    // Gathers are slow to complete, so each block's loads are issued one block ahead.
    let gather = |half: &Half, b: i64| {
        let active = _mm512_cmpgt_epi64_mask(half.count, _mm512_set1_epi64(b));
        let addr = _mm512_add_epi64(half.addr, _mm512_set1_epi64(16 * b));
        // SAFETY: for each active lane (block b < that lane's block count), `addr` and
        // `addr + 8` point at 8 readable bytes of its message; inactive lanes load nothing.
        unsafe {
            let base = std::ptr::null::<i64>();
            let z = _mm512_setzero_si512();
            let hi_addr = _mm512_add_epi64(addr, _mm512_set1_epi64(8));
            (
                _mm512_mask_i64gather_epi64::<1>(z, active, addr, base),
                _mm512_mask_i64gather_epi64::<1>(z, active, hi_addr, base),
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
                *h = _mm512_mask_mov_epi64(*h, active, n);
            }
        }
    }
    for (half, regs) in halves.iter().enumerate() {
        for (i, h) in regs.h.iter().enumerate() {
            store8(&mut st.h[i], half, *h);
        }
    }
}

vector_radix26!(
    "avx512f,avx512bw", __m512i,
    add: _mm512_add_epi64, mul: _mm512_mul_epu32, and: _mm512_and_si512, or: _mm512_or_si512,
    srli: _mm512_srli_epi64, slli: _mm512_slli_epi64, set1: _mm512_set1_epi64
);
