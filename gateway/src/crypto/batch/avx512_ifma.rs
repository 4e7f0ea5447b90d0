//! The AVX-512 IFMA path: the sixteen-lane fused pass of `avx512_fused.rs` with Poly1305 in
//! radix 2^44 (three limbs of 44, 44 and 42 bits), multiplied with the 52-bit multiply-adds
//! `vpmadd52luq` / `vpmadd52huq`: nine products per block instead of radix 2^26's
//! twenty-five. ChaCha20 is the AVX-512 path's.
//!
//! The arithmetic is written once, generic over [`Madd52`], with two implementations:
//! - [`Hw`], the instructions themselves, reached only through entries compiled with
//!   `avx512ifma` that `Path::is_available` guards with run-time detection;
//! - [`Emulated`], the instructions' exact per-lane semantics in plain `u128` arithmetic. It
//!   runs the same kernel on CPUs without IFMA (the development machine has none), so every
//!   test of the path exercises this arithmetic everywhere, and the real instructions where
//!   the CPU has them. It is for tests: `Path::Auto` never picks it.
//!
//! Per block, with `s_i = 20·r_i` (2^132 ≡ 4·5 mod 2^130 − 5):
//! `d0 = h0·r0 + h1·s2 + h2·s1`, `d1 = h0·r1 + h1·r0 + h2·s2`, `d2 = h0·r2 + h1·r1 + h2·r0`,
//! each product split by the instructions into its low 52 bits and the 52 above them.

use super::avx512::Avx512;
use super::avx512_fused::{self, FusedPoly};
use super::engine::{Blocks, ChachaLanes, CoreJob, Engine, PolyLanes, MAX_LANES};
use super::poly1305::MASK26;
use std::arch::x86_64::*;

const MASK44: u64 = (1 << 44) - 1;
const MASK42: u64 = (1 << 42) - 1;
const MASK52: u64 = (1 << 52) - 1;
/// 2^128 in limb 2 (2^88 · 2^40): every full 16-byte block carries it (RFC 8439 §2.5.1).
const HIBIT44: u64 = 1 << 40;

/// The two IFMA instructions, per 64-bit lane: `lo` is `acc + (a[51:0] · b[51:0])[51:0]`,
/// `hi` is `acc + (a[51:0] · b[51:0])[103:52]`, both wrapping at 2^64; plus the AVX-512F
/// operations the radix-2^44 kernel needs around them.
///
/// The kernel functions that multiply are `#[inline(always)]` without target features of
/// their own, so they compile inside the entry that calls them: the hardware entry is built
/// with `avx512ifma` and the instructions inline there (a function built without it could
/// only call them out of line), the emulated one without.
///
/// # Safety
/// An implementation promises that its values exist only on CPUs with AVX-512F/BW (and
/// whatever `lo` and `hi` need): holding one is the proof the provided methods rely on.
pub(crate) unsafe trait Madd52: Copy {
    fn lo(self, acc: __m512i, a: __m512i, b: __m512i) -> __m512i;
    fn hi(self, acc: __m512i, a: __m512i, b: __m512i) -> __m512i;

    #[inline(always)]
    fn add(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY (all provided methods): a `Self` exists only where AVX-512F/BW are available
        // (the trait's contract).
        unsafe { _mm512_add_epi64(a, b) }
    }

    #[inline(always)]
    fn and(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: see `add`.
        unsafe { _mm512_and_si512(a, b) }
    }

    #[inline(always)]
    fn or(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: see `add`.
        unsafe { _mm512_or_si512(a, b) }
    }

    #[inline(always)]
    fn shr<const N: u32>(self, a: __m512i) -> __m512i {
        // SAFETY: see `add`.
        unsafe { _mm512_srli_epi64::<N>(a) }
    }

    #[inline(always)]
    fn shl<const N: u32>(self, a: __m512i) -> __m512i {
        // SAFETY: see `add`.
        unsafe { _mm512_slli_epi64::<N>(a) }
    }

    #[inline(always)]
    fn splat(self, v: u64) -> __m512i {
        // SAFETY: see `add`.
        unsafe { _mm512_set1_epi64(v as i64) }
    }

    /// `new` in the lanes of `mask`, `old` elsewhere.
    #[inline(always)]
    fn select(self, old: __m512i, mask: __mmask8, new: __m512i) -> __m512i {
        // SAFETY: see `add`.
        unsafe { _mm512_mask_mov_epi64(old, mask, new) }
    }

    /// The lanes where `a > b`, unsigned.
    #[inline(always)]
    fn gt(self, a: __m512i, b: __m512i) -> __mmask8 {
        // SAFETY: see `add`.
        unsafe { _mm512_cmpgt_epu64_mask(a, b) }
    }
}

/// `vpmadd52luq` / `vpmadd52huq`. Only [`Hw::assume`] makes one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hw(());

impl Hw {
    /// # Safety
    /// The CPU supports AVX-512F/BW and AVX-512 IFMA.
    #[inline(always)]
    unsafe fn assume() -> Hw {
        Hw(())
    }
}

// SAFETY: a `Hw` exists only where the CPU has AVX-512F/BW and IFMA (`Hw::assume`).
unsafe impl Madd52 for Hw {
    #[inline(always)]
    fn lo(self, acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: as above.
        unsafe { _mm512_madd52lo_epu64(acc, a, b) }
    }

    #[inline(always)]
    fn hi(self, acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: as above.
        unsafe { _mm512_madd52hi_epu64(acc, a, b) }
    }
}

/// The instructions' semantics in software, lane by lane (for tests, not speed). Only
/// [`Emulated::assume`] makes one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Emulated(());

impl Emulated {
    /// # Safety
    /// The CPU supports AVX-512F/BW.
    #[inline(always)]
    unsafe fn assume() -> Emulated {
        Emulated(())
    }
}

#[inline(always)]
fn to_lanes(v: __m512i) -> [u64; 8] {
    // SAFETY: both types are 64 bytes of plain integers; every bit pattern is valid for both.
    unsafe { std::mem::transmute::<__m512i, [u64; 8]>(v) }
}

#[inline(always)]
fn from_lanes(v: [u64; 8]) -> __m512i {
    // SAFETY: as for `to_lanes`.
    unsafe { std::mem::transmute::<[u64; 8], __m512i>(v) }
}

/// `acc + part(a[51:0] · b[51:0])` in each lane, wrapping.
#[inline(always)]
fn emulate(acc: __m512i, a: __m512i, b: __m512i, part: fn(u128) -> u64) -> __m512i {
    let (acc, a, b) = (to_lanes(acc), to_lanes(a), to_lanes(b));
    from_lanes(std::array::from_fn(|i| {
        let product = u128::from(a[i] & MASK52) * u128::from(b[i] & MASK52);
        acc[i].wrapping_add(part(product))
    }))
}

// SAFETY: an `Emulated` exists only where the CPU has AVX-512F/BW (`Emulated::assume`);
// `lo` and `hi` need nothing.
unsafe impl Madd52 for Emulated {
    #[inline(always)]
    fn lo(self, acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        emulate(acc, a, b, |p| p as u64 & MASK52)
    }

    #[inline(always)]
    fn hi(self, acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        emulate(acc, a, b, |p| (p >> 52) as u64 & MASK52)
    }
}

/// Poly1305 state of eight lanes (one packet per 64-bit lane) in radix 2^44.
#[derive(Clone, Copy)]
pub(crate) struct Half44 {
    h: [__m512i; 3],
    r: [__m512i; 3],
    /// `20 · r1`, `20 · r2`.
    s: [__m512i; 2],
}

/// A 16-byte block (low and high 64 bits per lane) as three limbs, plus `hib` in limb 2.
#[inline(always)]
fn split44<M: Madd52>(m: M, lo: __m512i, hi: __m512i, hib: __m512i) -> [__m512i; 3] {
    let m44 = m.splat(MASK44);
    [
        m.and(lo, m44),
        m.and(m.or(m.shr::<44>(lo), m.shl::<20>(hi)), m44),
        m.or(m.shr::<24>(hi), hib),
    ]
}

/// `h · r mod 2^130 − 5`, partially reduced: limbs below 2^44, 2^44 + 2^8 and 2^42 for inputs
/// below 2^45, 2^45 + 2^8 and 2^43 (an accumulator plus a block), `r` clamped.
#[inline(always)]
fn mul44<M: Madd52>(m: M, h: &[__m512i; 3], r: &[__m512i; 3], s: &[__m512i; 2]) -> [__m512i; 3] {
    let z = m.splat(0);
    let [h0, h1, h2] = *h;
    let [r0, r1, r2] = *r;
    let [s1, s2] = *s;
    let lo0 = m.lo(m.lo(m.lo(z, h0, r0), h1, s2), h2, s1);
    let hi0 = m.hi(m.hi(m.hi(z, h0, r0), h1, s2), h2, s1);
    let lo1 = m.lo(m.lo(m.lo(z, h0, r1), h1, r0), h2, s2);
    let hi1 = m.hi(m.hi(m.hi(z, h0, r1), h1, r0), h2, s2);
    let lo2 = m.lo(m.lo(m.lo(z, h0, r2), h1, r1), h2, r0);
    let hi2 = m.hi(m.hi(m.hi(z, h0, r2), h1, r1), h2, r0);
    let m44 = m.splat(MASK44);
    // d_i = lo_i + 2^52 · hi_i, and 2^52 is 2^8 in the next limb up.
    let t1 = m.add(lo1, m.shl::<8>(hi0));
    let t2 = m.add(lo2, m.shl::<8>(hi1));
    let t1 = m.add(t1, m.shr::<44>(lo0));
    let t0 = m.and(lo0, m44);
    let t2 = m.add(t2, m.shr::<44>(t1));
    let t1 = m.and(t1, m44);
    // Limb 2 holds 42 bits; what is above it, and hi2 (2^(88+52) = 2^130 · 2^10), wraps
    // around as 2^130 ≡ 5.
    let c = m.add(m.shr::<42>(t2), m.shl::<10>(hi2));
    let t2 = m.and(t2, m.splat(MASK42));
    let t0 = m.add(t0, m.add(c, m.shl::<2>(c)));
    let t1 = m.add(t1, m.shr::<44>(t0));
    [m.and(t0, m44), t1, t2]
}

/// `(h + block) · r` where `active`, `h` elsewhere.
#[inline(always)]
fn absorb_block<M: Madd52>(
    m: M,
    p: &mut Half44,
    lo: __m512i,
    hi: __m512i,
    hib: __m512i,
    active: __mmask8,
) {
    let b = split44(m, lo, hi, hib);
    let a = [
        m.add(p.h[0], b[0]),
        m.add(p.h[1], b[1]),
        m.add(p.h[2], b[2]),
    ];
    let n = mul44(m, &a, &p.r, &p.s);
    if active == 0xff {
        p.h = n;
    } else {
        for (h, n) in p.h.iter_mut().zip(n) {
            *h = m.select(*h, active, n);
        }
    }
}

/// Key limbs of eight lanes from the clamped `r`'s four 32-bit words (in 64-bit lanes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn key44<M: Madd52>(m: M, w: [__m512i; 4]) -> Half44 {
    let lo = _mm512_or_si512(w[0], _mm512_slli_epi64::<32>(w[1]));
    let hi = _mm512_or_si512(w[2], _mm512_slli_epi64::<32>(w[3]));
    key_limbs(
        m,
        [_mm512_setzero_si512(); 3],
        split44(m, lo, hi, _mm512_setzero_si512()),
    )
}

/// State from accumulator and key limbs: `s = 20 · r` (limbs 1 and 2).
#[inline(always)]
fn key_limbs<M: Madd52>(m: M, h: [__m512i; 3], r: [__m512i; 3]) -> Half44 {
    let twenty = |v: __m512i| m.add(m.shl::<4>(v), m.shl::<2>(v));
    Half44 {
        h,
        r,
        s: [twenty(r[1]), twenty(r[2])],
    }
}

/// Fully reduce each lane modulo 2^130 − 5: the value's four low 32-bit words, word `k` in
/// the low half of each 64-bit lane of `result[k]` (the high half is not used).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn reduce44(h: &[__m512i; 3]) -> [__m512i; 4] {
    let m44 = _mm512_set1_epi64(MASK44 as i64);
    let m42 = _mm512_set1_epi64(MASK42 as i64);
    let [mut h0, mut h1, mut h2] = *h;
    let carry = |from: &mut __m512i, to: &mut __m512i, bits: u32| {
        let (shifted, mask) = if bits == 44 {
            (_mm512_srli_epi64::<44>(*from), m44)
        } else {
            (_mm512_srli_epi64::<42>(*from), m42)
        };
        *to = _mm512_add_epi64(*to, shifted);
        *from = _mm512_and_si512(*from, mask);
    };
    carry(&mut h0, &mut h1, 44);
    carry(&mut h1, &mut h2, 44);
    let c = _mm512_srli_epi64::<42>(h2);
    h2 = _mm512_and_si512(h2, m42);
    h0 = _mm512_add_epi64(h0, _mm512_add_epi64(c, _mm512_slli_epi64::<2>(c)));
    carry(&mut h0, &mut h1, 44);
    carry(&mut h1, &mut h2, 44);
    // g = h + 5 − 2^130; where it does not borrow, h ≥ p and g is the reduced value.
    let mut g0 = _mm512_add_epi64(h0, _mm512_set1_epi64(5));
    let mut g1 = h1;
    let mut g2 = h2;
    carry(&mut g0, &mut g1, 44);
    carry(&mut g1, &mut g2, 44);
    let g2 = _mm512_sub_epi64(g2, _mm512_set1_epi64(1 << 42));
    let borrow = _mm512_cmplt_epi64_mask(g2, _mm512_setzero_si512());
    let pick = |g: __m512i, h: __m512i| _mm512_mask_mov_epi64(g, borrow, h);
    let (a0, a1, a2) = (
        pick(g0, h0),
        pick(g1, h1),
        pick(_mm512_and_si512(g2, m42), h2),
    );
    let lo = _mm512_or_si512(a0, _mm512_slli_epi64::<44>(a1));
    let hi = _mm512_or_si512(_mm512_srli_epi64::<20>(a1), _mm512_slli_epi64::<24>(a2));
    [
        lo,
        _mm512_srli_epi64::<32>(lo),
        hi,
        _mm512_srli_epi64::<32>(hi),
    ]
}

/// The fused pass's Poly1305 in radix 2^44 on `M`'s multiply-adds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Radix44<M>(M);

/// The clamped `r` of all sixteen lanes from keystream words 0..4 of block 0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn keys16<M: Madd52>(m: M, x: &[__m512i; 16]) -> [Half44; 2] {
    let clamp = [0x0fff_ffffu32, 0x0fff_fffc, 0x0fff_fffc, 0x0fff_fffc];
    let w: [__m512i; 4] =
        std::array::from_fn(|k| _mm512_and_si512(x[k], _mm512_set1_epi32(clamp[k] as i32)));
    let half = |h: usize| {
        let words = w.map(|v| {
            _mm512_cvtepu32_epi64(if h == 0 {
                _mm512_castsi512_si256(v)
            } else {
                _mm512_extracti64x4_epi64::<1>(v)
            })
        });
        key44(m, words)
    };
    [half(0), half(1)]
}

#[inline(always)]
fn absorb_chunk16<M: Madd52>(m: M, p: &mut Half44, q: &[__m512i; 8], nb: __m512i, most: usize) {
    let hib = m.splat(HIBIT44);
    for k in 0..most {
        let active = m.gt(nb, m.splat(k as u64));
        absorb_block(m, p, q[2 * k], q[2 * k + 1], hib, active);
    }
}

/// The two `FusedPoly` implementations differ only in the target features their methods are
/// compiled with: the hardware one needs IFMA.
macro_rules! fused_poly_44 {
    ($m:ty, $feature:literal) => {
        impl FusedPoly for Radix44<$m> {
            type Half = Half44;

            #[inline]
            #[target_feature(enable = $feature)]
            unsafe fn keys(self, x: &[__m512i; 16]) -> [Half44; 2] {
                keys16(self.0, x)
            }

            #[inline]
            #[target_feature(enable = $feature)]
            unsafe fn absorb_chunk(
                self,
                half: &mut Half44,
                q: &[__m512i; 8],
                nb: __m512i,
                most: usize,
            ) {
                absorb_chunk16(self.0, half, q, nb, most)
            }

            #[inline]
            #[target_feature(enable = $feature)]
            unsafe fn reduce(self, half: &Half44) -> [__m512i; 4] {
                reduce44(&half.h)
            }
        }
    };
}

fused_poly_44!(Hw, "avx512f,avx512bw,avx512ifma");
fused_poly_44!(Emulated, "avx512f,avx512bw");

/// A radix-2^26 accumulator (limbs may exceed 26 bits a little) as radix-2^44 limbs of a value
/// congruent to it, each limb below 2^44 (limb 2 at most 2^42).
fn to44(l: [u64; 5]) -> [u64; 3] {
    let mut v = l;
    for _ in 0..2 {
        for i in 0..4 {
            v[i + 1] += v[i] >> 26;
            v[i] &= MASK26;
        }
        v[0] += (v[4] >> 26) * 5;
        v[4] &= MASK26;
    }
    for i in 0..4 {
        v[i + 1] += v[i] >> 26;
        v[i] &= MASK26;
    }
    // Now every limb is 26 bits except v[4], at most 2^26.
    let x = u128::from(v[0])
        | u128::from(v[1]) << 26
        | u128::from(v[2]) << 52
        | u128::from(v[3]) << 78
        | u128::from(v[4]) << 104;
    [
        x as u64 & MASK44,
        (x >> 44) as u64 & MASK44,
        (x >> 88) as u64 | (v[4] >> 24) << 40,
    ]
}

/// The inverse of [`to44`]: a radix-2^44 accumulator as radix-2^26 limbs of a congruent value
/// (limb 4 may exceed 26 bits a little, which `poly1305::finish` and `to44` accept).
fn to26(l: [u64; 3]) -> [u64; 5] {
    let mut v = l;
    for _ in 0..2 {
        v[1] += v[0] >> 44;
        v[0] &= MASK44;
        v[2] += v[1] >> 44;
        v[1] &= MASK44;
        v[0] += (v[2] >> 42) * 5;
        v[2] &= MASK42;
    }
    v[1] += v[0] >> 44;
    v[0] &= MASK44;
    v[2] += v[1] >> 44;
    v[1] &= MASK44;
    let x = u128::from(v[0]) | u128::from(v[1]) << 44 | u128::from(v[2]) << 88;
    let top = v[2] >> 40;
    [
        x as u64 & MASK26,
        (x >> 26) as u64 & MASK26,
        (x >> 52) as u64 & MASK26,
        (x >> 78) as u64 & MASK26,
        ((x >> 104) as u64 & 0xff_ffff) | top << 24,
    ]
}

/// `Engine::poly_blocks` for the known-answer hooks: the state is converted to radix 2^44,
/// each lane's blocks absorbed with the vector arithmetic, and converted back.
#[inline(always)]
fn poly16<M: Madd52>(m: M, st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool) {
    let hib = m.splat(if hibit { HIBIT44 } else { 0 });
    let most = msgs.iter().map(|m| m.len() / 16).max().unwrap_or(0);
    for half in 0..2 {
        let lanes = 8 * half..8 * half + 8;
        let mut h = [[0u64; 8]; 3];
        let mut r = [[0u64; 8]; 3];
        for (i, lane) in lanes.clone().enumerate() {
            let h44 = to44(PolyLanes::lane(&st.h, lane));
            let r44 = to44(PolyLanes::lane(&st.r, lane));
            for k in 0..3 {
                (h[k][i], r[k][i]) = (h44[k], r44[k]);
            }
        }
        let mut p = key_limbs(m, h.map(from_lanes), r.map(from_lanes));
        for b in 0..most {
            let mut lo = [0u64; 8];
            let mut hi = [0u64; 8];
            let mut active = 0u8;
            for (i, lane) in lanes.clone().enumerate() {
                if let Some(block) = msgs[lane].get(16 * b..16 * b + 16) {
                    let word = |at: usize| {
                        let mut w = [0u8; 8];
                        w.copy_from_slice(&block[at..at + 8]);
                        u64::from_le_bytes(w)
                    };
                    (lo[i], hi[i]) = (word(0), word(8));
                    active |= 1 << i;
                }
            }
            absorb_block(m, &mut p, from_lanes(lo), from_lanes(hi), hib, active);
        }
        let h = p.h.map(to_lanes);
        for (i, lane) in lanes.enumerate() {
            for (k, v) in to26([h[0][i], h[1][i], h[2][i]]).into_iter().enumerate() {
                st.h[k][lane] = v;
            }
        }
    }
}

/// The IFMA path on the real instructions.
#[derive(Debug)]
pub(crate) struct Avx512Ifma;

/// The IFMA path on the emulated instructions (tests only).
#[derive(Debug)]
pub(crate) struct Avx512IfmaEmulated;

#[target_feature(enable = "avx512f,avx512bw,avx512ifma")]
unsafe fn fused_hw(group: &mut [Option<&mut CoreJob<'_>>]) {
    // SAFETY: this function is compiled for, and only called on, CPUs with AVX-512F/BW and IFMA.
    unsafe { avx512_fused::group(Radix44(Hw::assume()), group) }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn fused_emulated(group: &mut [Option<&mut CoreJob<'_>>]) {
    // SAFETY: the caller guarantees AVX-512F/BW, all `Radix44<Emulated>` needs.
    unsafe { avx512_fused::group(Radix44(Emulated::assume()), group) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512ifma")]
fn poly16_hw(st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool) {
    // SAFETY: this function is compiled for, and only called on, CPUs with AVX-512F/BW and
    // IFMA.
    poly16(unsafe { Hw::assume() }, st, msgs, hibit)
}

#[target_feature(enable = "avx512f,avx512bw")]
fn poly16_emulated(st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool) {
    // SAFETY: this function is compiled for, and only called on, CPUs with AVX-512F/BW.
    poly16(unsafe { Emulated::assume() }, st, msgs, hibit)
}

impl Engine for Avx512Ifma {
    const LANES: usize = 16;

    unsafe fn chacha_blocks(st: &ChachaLanes, out: &mut Blocks) {
        // SAFETY: the caller guarantees AVX-512F/BW/IFMA (see `Path::is_available`).
        unsafe { Avx512::chacha_blocks(st, out) }
    }

    unsafe fn poly_blocks(st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool) {
        // SAFETY: as above.
        unsafe { poly16_hw(st, msgs, hibit) }
    }

    unsafe fn fused_group(group: &mut [Option<&mut CoreJob<'_>>]) -> bool {
        // SAFETY: as above.
        unsafe { fused_hw(group) };
        true
    }
}

impl Engine for Avx512IfmaEmulated {
    const LANES: usize = 16;

    unsafe fn chacha_blocks(st: &ChachaLanes, out: &mut Blocks) {
        // SAFETY: the caller guarantees AVX-512F/BW (see `Path::is_available`).
        unsafe { Avx512::chacha_blocks(st, out) }
    }

    unsafe fn poly_blocks(st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool) {
        // SAFETY: as above.
        unsafe { poly16_emulated(st, msgs, hibit) }
    }

    unsafe fn fused_group(group: &mut [Option<&mut CoreJob<'_>>]) -> bool {
        // SAFETY: as above.
        unsafe { fused_emulated(group) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::batch::poly1305;

    fn has_avx512(test: &str) -> bool {
        let ok = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw");
        if !ok {
            eprintln!("{test}: SKIPPED (CPU lacks AVX-512F/BW)");
        }
        ok
    }

    /// splitmix64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// The instructions' pseudo-code, one lane: `tmp = a[51:0] · b[51:0]`, then
    /// `acc + tmp[51:0]` (lo) or `acc + tmp[103:52]` (hi).
    fn reference(acc: u64, a: u64, b: u64, high: bool) -> u64 {
        let tmp = u128::from(a % (1 << 52)) * u128::from(b % (1 << 52));
        let part = if high { tmp >> 52 } else { tmp % (1 << 52) };
        acc.wrapping_add(part as u64)
    }

    fn madd_lanes<M: Madd52>(m: M, acc: [u64; 8], a: [u64; 8], b: [u64; 8]) -> [[u64; 8]; 2] {
        let v = |x: [u64; 8]| from_lanes(x);
        [
            to_lanes(m.lo(v(acc), v(a), v(b))),
            to_lanes(m.hi(v(acc), v(a), v(b))),
        ]
    }

    /// The emulation, where AVX-512F/BW (which its vector type needs) exist.
    fn emulated(test: &str) -> Option<Emulated> {
        // SAFETY: AVX-512F/BW were detected.
        has_avx512(test).then(|| unsafe { Emulated::assume() })
    }

    #[test]
    fn emulated_madd52_edge_values() {
        let Some(em) = emulated("emulated_madd52_edge_values") else {
            return;
        };
        let ones = MASK52;
        // (acc, a, b, lo, hi), worked out by hand: (2^52 − 1)² = 2^104 − 2^53 + 1.
        let cases: [(u64, u64, u64, u64, u64); 8] = [
            (0, ones, ones, 1, ones - 1),
            // Bits 52..63 of a and b are not part of the product.
            (0, u64::MAX, u64::MAX, 1, ones - 1),
            (0, 1 << 52, 5, 0, 0),
            (0, 0xfff0_0000_0000_0003, 0xabc0_0000_0000_0005, 15, 0),
            // The accumulator wraps at 2^64.
            (u64::MAX, ones, ones, 0, ones - 2),
            (7, 3, 5, 22, 7),
            (0, 1 << 51, 1 << 51, 0, 1 << 50),
            (1 << 63, 1 << 51, 2, 1 << 63, (1 << 63) + 1),
        ];
        for (acc, a, b, lo, hi) in cases {
            let [got_lo, got_hi] = madd_lanes(em, [acc; 8], [a; 8], [b; 8]);
            assert_eq!(got_lo, [lo; 8], "lo({acc:#x}, {a:#x}, {b:#x})");
            assert_eq!(got_hi, [hi; 8], "hi({acc:#x}, {a:#x}, {b:#x})");
            assert_eq!(reference(acc, a, b, false), lo);
            assert_eq!(reference(acc, a, b, true), hi);
        }
        // Every lane on its own: different values side by side, against the pseudo-code.
        let mut rng = Rng(0x1f3a);
        for _ in 0..1000 {
            let acc: [u64; 8] = std::array::from_fn(|_| rng.next());
            let a: [u64; 8] = std::array::from_fn(|_| rng.next());
            let b: [u64; 8] = std::array::from_fn(|_| rng.next() >> (rng.next() % 64));
            let [lo, hi] = madd_lanes(em, acc, a, b);
            for i in 0..8 {
                assert_eq!(lo[i], reference(acc[i], a[i], b[i], false));
                assert_eq!(hi[i], reference(acc[i], a[i], b[i], true));
            }
        }
    }

    #[test]
    fn hardware_madd52_matches_emulation() {
        if !std::arch::is_x86_feature_detected!("avx512ifma") {
            eprintln!(
                "hardware_madd52_matches_emulation: SKIPPED (CPU lacks AVX-512 IFMA; the \
                 emulation is tested against the instruction's definition instead)"
            );
            return;
        }
        let Some(em) = emulated("hardware_madd52_matches_emulation") else {
            return;
        };
        // SAFETY: AVX-512 IFMA was detected, and AVX-512F/BW (`emulated`).
        let hw = unsafe { Hw::assume() };
        let mut rng = Rng(0x2f3b);
        let edges = [0, 1, MASK52, MASK52 + 1, u64::MAX, 1 << 51, MASK44];
        for i in 0..2000 {
            let mut pick = || {
                if i % 3 == 0 {
                    edges[(rng.next() % edges.len() as u64) as usize]
                } else {
                    rng.next()
                }
            };
            let acc: [u64; 8] = std::array::from_fn(|_| pick());
            let a: [u64; 8] = std::array::from_fn(|_| pick());
            let b: [u64; 8] = std::array::from_fn(|_| pick());
            assert_eq!(madd_lanes(hw, acc, a, b), madd_lanes(em, acc, a, b));
        }
    }

    /// The exact radix-2^26 limbs of a radix-2^44 value below 2^131 (limb 4 then has up to 27
    /// bits, which `poly1305::finish` accepts).
    fn exact26(mut l: [u64; 3]) -> [u64; 5] {
        l[1] += l[0] >> 44;
        l[0] &= MASK44;
        l[2] += l[1] >> 44;
        l[1] &= MASK44;
        assert!(l[2] < 1 << 43);
        let x = u128::from(l[0]) | u128::from(l[1]) << 44 | u128::from(l[2]) << 88;
        let top = l[2] >> 40;
        [0, 1, 2, 3, 4].map(|i| {
            if i < 4 {
                (x >> (26 * i)) as u64 & MASK26
            } else {
                ((x >> 104) as u64 & 0xff_ffff) | top << 24
            }
        })
    }

    #[test]
    fn reduce44_matches_the_scalar_reduction() {
        if !has_avx512("reduce44_matches_the_scalar_reduction") {
            return;
        }
        let (m44, m42) = (MASK44, MASK42);
        // Around p = 2^130 − 5 and the largest partially reduced limbs.
        let mut cases: Vec<[u64; 3]> = vec![
            [m44 - 4, m44, m42],
            [m44 - 5, m44, m42],
            [m44 - 6, m44, m42],
            [m44, m44, m42],
            [0, 0, 0],
            [m44, m44 + 255, m42],
            [4, 0, 1 << 42],
            [m44, m44, (1 << 43) - 1],
        ];
        let mut rng = Rng(0x3f3c);
        while cases.len() < 64 {
            cases.push([rng.next() & m44, rng.next() & m44, rng.next() & m42]);
        }
        for chunk in cases.chunks(8) {
            let limb = |k: usize| from_lanes(std::array::from_fn(|i| chunk[i][k]));
            // SAFETY: AVX-512F/BW were detected.
            let words = unsafe { reduce44(&[limb(0), limb(1), limb(2)]) }.map(to_lanes);
            for (i, h) in chunk.iter().enumerate() {
                let mut got = [0u8; 16];
                for (b, w) in got.chunks_exact_mut(4).zip(&words) {
                    b.copy_from_slice(&(w[i] as u32).to_le_bytes());
                }
                assert_eq!(got, poly1305::finish(&exact26(*h), &[0; 16]), "{h:x?}");
            }
        }
    }

    #[test]
    fn radix44_blocks_match_scalar_poly1305() {
        let Some(em) = emulated("radix44_blocks_match_scalar_poly1305") else {
            return;
        };
        let mut rng = Rng(0x4f3d);
        for round in 0..200 {
            // Eight lanes: keys and blocks random, or all ones (the largest clamped r and the
            // largest blocks, which bound every intermediate value).
            let extreme = |rng: &mut Rng, lane: usize| {
                (round % 4 == 0 && lane.is_multiple_of(2)) || rng.next().is_multiple_of(16)
            };
            let keys: [[u8; 16]; 8] = std::array::from_fn(|lane| {
                if extreme(&mut rng, lane) {
                    [0xff; 16]
                } else {
                    (u128::from(rng.next()) << 64 | u128::from(rng.next())).to_le_bytes()
                }
            });
            let hibit = round % 5 != 4;
            let nblocks: [usize; 8] = std::array::from_fn(|_| (rng.next() % 9) as usize);
            let blocks: Vec<[[u8; 16]; 8]> = (0..9)
                .map(|_| {
                    std::array::from_fn(|lane| {
                        if extreme(&mut rng, lane) {
                            [0xff; 16]
                        } else {
                            (u128::from(rng.next()) << 64 | u128::from(rng.next())).to_le_bytes()
                        }
                    })
                })
                .collect();
            // The scalar radix-2^26 reference.
            let want: [[u8; 16]; 8] = std::array::from_fn(|lane| {
                let r = poly1305::r_limbs(&keys[lane]);
                let s = r.map(|v| v * 5);
                let mut h = [0u64; 5];
                let hib = if hibit { poly1305::HIBIT } else { 0 };
                for b in &blocks[..nblocks[lane]] {
                    poly1305::mul_block(&mut h, &poly1305::block_limbs(&b[lane], hib), &r, &s);
                }
                poly1305::finish(&h, &[0; 16])
            });
            // The vector radix-2^44 kernel with emulated IFMA.
            let word = |b: &[u8; 16], at: usize| {
                u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
            };
            let clamp = 0x0fff_fffc_0fff_fffc_0fff_fffc_0fff_ffffu128;
            // SAFETY: AVX-512F/BW were detected.
            let got = unsafe {
                let clamped = keys.map(|k| (u128::from_le_bytes(k) & clamp).to_le_bytes());
                let w: [__m512i; 4] = std::array::from_fn(|k| {
                    from_lanes(std::array::from_fn(|i| {
                        u64::from(u32::from_le_bytes(
                            clamped[i][4 * k..4 * k + 4].try_into().expect("4 bytes"),
                        ))
                    }))
                });
                let mut p = key44(em, w);
                let hib = _mm512_set1_epi64(if hibit { HIBIT44 as i64 } else { 0 });
                for (k, b) in blocks.iter().enumerate() {
                    let lo = from_lanes(std::array::from_fn(|i| word(&b[i], 0)));
                    let hi = from_lanes(std::array::from_fn(|i| word(&b[i], 8)));
                    let mut active = 0u8;
                    for (i, n) in nblocks.iter().enumerate() {
                        if k < *n {
                            active |= 1 << i;
                        }
                    }
                    absorb_block(em, &mut p, lo, hi, hib, active);
                }
                reduce44(&p.h).map(to_lanes)
            };
            for (lane, want) in want.iter().enumerate() {
                let mut tag = [0u8; 16];
                for (b, w) in tag.chunks_exact_mut(4).zip(&got) {
                    b.copy_from_slice(&(w[lane] as u32).to_le_bytes());
                }
                assert_eq!(&tag, want, "round {round} lane {lane}");
            }
        }
    }

    #[test]
    fn keys16_match_the_scalar_clamp() {
        let Some(em) = emulated("keys16_match_the_scalar_clamp") else {
            return;
        };
        let mut rng = Rng(0x5f3e);
        let words: [[u32; 16]; 4] =
            std::array::from_fn(|_| std::array::from_fn(|_| rng.next() as u32 | 0xf000_0003));
        // SAFETY: AVX-512F/BW were detected; every array is 64 bytes.
        let halves = unsafe {
            let mut x = [_mm512_setzero_si512(); 16];
            for (v, w) in x.iter_mut().zip(&words) {
                *v = std::mem::transmute::<[u32; 16], __m512i>(*w);
            }
            keys16(em, &x)
        };
        for lane in 0..16 {
            let mut key = [0u8; 16];
            for (b, w) in key.chunks_exact_mut(4).zip(&words) {
                b.copy_from_slice(&w[lane].to_le_bytes());
            }
            let want = u128::from_le_bytes(key) & 0x0fff_fffc_0fff_fffc_0fff_fffc_0fff_ffff;
            let half = &halves[lane / 8];
            let [r0, r1, r2] = half.r.map(|v| to_lanes(v)[lane % 8]);
            assert!(r0 <= MASK44 && r1 <= MASK44 && r2 < 1 << 36, "lane {lane}");
            let got = u128::from(r0) | u128::from(r1) << 44 | u128::from(r2) << 88;
            assert_eq!(got, want, "lane {lane}");
            let [s1, s2] = half.s.map(|v| to_lanes(v)[lane % 8]);
            assert_eq!((s1, s2), (20 * r1, 20 * r2), "lane {lane}");
        }
    }

    #[test]
    fn radix_conversions_keep_the_value() {
        let mut rng = Rng(0x6f3f);
        let mut cases: Vec<[u64; 5]> = vec![
            [MASK26; 5],
            [MASK26 - 4, MASK26, MASK26, MASK26, MASK26],
            [0; 5],
            [MASK26 + 9, (1 << 27) - 1, MASK26, MASK26, (1 << 27) - 1],
        ];
        while cases.len() < 500 {
            cases.push(std::array::from_fn(|_| rng.next() & ((1 << 27) - 1)));
        }
        for h in cases {
            let h44 = to44(h);
            assert!(
                h44[0] <= MASK44 && h44[1] <= MASK44 && h44[2] <= 1 << 42,
                "{h:x?}"
            );
            let want = poly1305::finish(&h, &[0; 16]);
            assert_eq!(poly1305::finish(&exact26(h44), &[0; 16]), want, "{h:x?}");
            assert_eq!(poly1305::finish(&to26(h44), &[0; 16]), want, "{h:x?}");
        }
    }
}
