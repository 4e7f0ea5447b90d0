//! Poly1305 (RFC 8439 §2.5) in radix 2^26: five 26-bit limbs per 130-bit value, so every
//! product of a limb and a (5×) key limb fits in 64 bits and the vector paths can use 32×32→64
//! multiplies with one packet per 64-bit lane.
//!
//! The block loop lives in each path (`portable`, `avx2`, `avx512`); this module holds what all
//! paths share and do once per packet: key clamping and splitting, the per-block limb split for
//! the scalar path, and the final reduction that turns the accumulator into a tag.

/// The low 26 bits.
pub(crate) const MASK26: u64 = 0x3ff_ffff;
/// 2^128 in limb 4: every full 16-byte block carries it (RFC 8439 §2.5.1, the appended 0x01).
pub(crate) const HIBIT: u64 = 1 << 24;

fn le32(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u64::from(u32::from_le_bytes(w))
}

/// The clamped `r` half of a one-time key, as five 26-bit limbs.
pub(crate) fn r_limbs(r: &[u8]) -> [u64; 5] {
    [
        le32(r, 0) & 0x3ff_ffff,
        (le32(r, 3) >> 2) & 0x3ff_ff03,
        (le32(r, 6) >> 4) & 0x3ff_c0ff,
        (le32(r, 9) >> 6) & 0x3f0_3fff,
        (le32(r, 12) >> 8) & 0x00f_ffff,
    ]
}

/// One 16-byte block as five 26-bit limbs, plus 2^128 if `hibit` is set.
pub(crate) fn block_limbs(m: &[u8], hibit: u64) -> [u64; 5] {
    [
        le32(m, 0) & MASK26,
        (le32(m, 3) >> 2) & MASK26,
        (le32(m, 6) >> 4) & MASK26,
        (le32(m, 9) >> 6) & MASK26,
        (le32(m, 12) >> 8) | hibit,
    ]
}

/// `h = (h + m) · r mod 2^130 − 5`, partially reduced (limbs may exceed 26 bits slightly).
/// `s[i] = 5·r[i]`; `s[0]` is unused.
pub(crate) fn mul_block(h: &mut [u64; 5], m: &[u64; 5], r: &[u64; 5], s: &[u64; 5]) {
    let h0 = h[0] + m[0];
    let h1 = h[1] + m[1];
    let h2 = h[2] + m[2];
    let h3 = h[3] + m[3];
    let h4 = h[4] + m[4];
    let d0 = h0 * r[0] + h1 * s[4] + h2 * s[3] + h3 * s[2] + h4 * s[1];
    let mut d1 = h0 * r[1] + h1 * r[0] + h2 * s[4] + h3 * s[3] + h4 * s[2];
    let mut d2 = h0 * r[2] + h1 * r[1] + h2 * r[0] + h3 * s[4] + h4 * s[3];
    let mut d3 = h0 * r[3] + h1 * r[2] + h2 * r[1] + h3 * r[0] + h4 * s[4];
    let mut d4 = h0 * r[4] + h1 * r[3] + h2 * r[2] + h3 * r[1] + h4 * r[0];
    d1 += d0 >> 26;
    d2 += d1 >> 26;
    d3 += d2 >> 26;
    d4 += d3 >> 26;
    let mut n0 = (d0 & MASK26) + (d4 >> 26) * 5;
    let n1 = (d1 & MASK26) + (n0 >> 26);
    n0 &= MASK26;
    *h = [n0, n1, d2 & MASK26, d3 & MASK26, d4 & MASK26];
}

/// Fully reduce `h` modulo 2^130 − 5 and add the `s` half of the one-time key: the tag.
pub(crate) fn finish(h: &[u64; 5], s: &[u8; 16]) -> [u8; 16] {
    let [mut h0, mut h1, mut h2, mut h3, mut h4] = *h;
    let mut c;
    c = h1 >> 26;
    h1 &= MASK26;
    h2 += c;
    c = h2 >> 26;
    h2 &= MASK26;
    h3 += c;
    c = h3 >> 26;
    h3 &= MASK26;
    h4 += c;
    c = h4 >> 26;
    h4 &= MASK26;
    h0 += c * 5;
    c = h0 >> 26;
    h0 &= MASK26;
    h1 += c;
    // g = h + 5 − 2^130; if it does not borrow, h ≥ p and g is the reduced value.
    let mut g0 = h0 + 5;
    c = g0 >> 26;
    g0 &= MASK26;
    let mut g1 = h1 + c;
    c = g1 >> 26;
    g1 &= MASK26;
    let mut g2 = h2 + c;
    c = g2 >> 26;
    g2 &= MASK26;
    let mut g3 = h3 + c;
    c = g3 >> 26;
    g3 &= MASK26;
    let g4 = (h4 + c).wrapping_sub(1 << 26);
    // All ones if g4 did not borrow (use g), zero if it did (keep h); no branch on secrets.
    let use_g = (g4 >> 63).wrapping_sub(1);
    let pick = |g: u64, h: u64| (g & use_g) | (h & !use_g);
    let acc = u128::from(pick(g0, h0))
        | u128::from(pick(g1, h1)) << 26
        | u128::from(pick(g2, h2)) << 52
        | u128::from(pick(g3, h3)) << 78
        | u128::from(pick(g4 & MASK26, h4)) << 104;
    acc.wrapping_add(u128::from_le_bytes(*s)).to_le_bytes()
}

/// The vector form of [`block_limbs`] and [`mul_block`] for one register width: eight (AVX2:
/// four) packets per register, one per 64-bit lane, multiplied with 32×32→64-bit `mul_epu32`.
/// Expanded once per path (`avx2.rs`, `avx512.rs`) with that width's intrinsics, so both run
/// exactly the same arithmetic.
macro_rules! vector_radix26 {
    (
        $feature:literal, $v:ty,
        add: $add:ident, mul: $mul:ident, and: $and:ident, or: $or:ident,
        srli: $srli:ident, slli: $slli:ident, set1: $set1:ident
    ) => {
        /// A 16-byte block (low and high 64 bits per lane) as five 26-bit limbs.
        #[inline]
        #[target_feature(enable = $feature)]
        pub(super) fn split_limbs(lo: $v, hi: $v, hib: $v) -> [$v; 5] {
            let m26 = $set1(MASK26 as i64);
            [
                $and(lo, m26),
                $and($srli::<26>(lo), m26),
                $and($or($srli::<52>(lo), $slli::<12>(hi)), m26),
                $and($srli::<14>(hi), m26),
                $or($srli::<40>(hi), hib),
            ]
        }

        /// `(h + m) · r`, partially reduced; the vector form of `poly1305::mul_block`.
        #[inline]
        #[target_feature(enable = $feature)]
        pub(super) fn mul_block(h: &[$v; 5], m: &[$v; 5], r: &[$v; 5], s: &[$v; 5]) -> [$v; 5] {
            let a = [0, 1, 2, 3, 4].map(|i| $add(h[i], m[i]));
            let sum = |t: [$v; 5]| $add($add($add(t[0], t[1]), $add(t[2], t[3])), t[4]);
            let d0 = sum([
                $mul(a[0], r[0]),
                $mul(a[1], s[4]),
                $mul(a[2], s[3]),
                $mul(a[3], s[2]),
                $mul(a[4], s[1]),
            ]);
            let d1 = sum([
                $mul(a[0], r[1]),
                $mul(a[1], r[0]),
                $mul(a[2], s[4]),
                $mul(a[3], s[3]),
                $mul(a[4], s[2]),
            ]);
            let d2 = sum([
                $mul(a[0], r[2]),
                $mul(a[1], r[1]),
                $mul(a[2], r[0]),
                $mul(a[3], s[4]),
                $mul(a[4], s[3]),
            ]);
            let d3 = sum([
                $mul(a[0], r[3]),
                $mul(a[1], r[2]),
                $mul(a[2], r[1]),
                $mul(a[3], r[0]),
                $mul(a[4], s[4]),
            ]);
            let d4 = sum([
                $mul(a[0], r[4]),
                $mul(a[1], r[3]),
                $mul(a[2], r[2]),
                $mul(a[3], r[1]),
                $mul(a[4], r[0]),
            ]);
            let m26 = $set1(MASK26 as i64);
            let d1 = $add(d1, $srli::<26>(d0));
            let d2 = $add(d2, $srli::<26>(d1));
            let d3 = $add(d3, $srli::<26>(d2));
            let d4 = $add(d4, $srli::<26>(d3));
            let c = $srli::<26>(d4);
            let n0 = $add($and(d0, m26), $add(c, $slli::<2>(c)));
            let n1 = $add($and(d1, m26), $srli::<26>(n0));
            [
                $and(n0, m26),
                n1,
                $and(d2, m26),
                $and(d3, m26),
                $and(d4, m26),
            ]
        }
    };
}
pub(crate) use vector_radix26;
