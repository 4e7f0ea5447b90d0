//! The AVX-512 path's whole-group pass: sixteen packets sealed or opened without staging
//! anything per block in memory.
//!
//! - ChaCha20's keystream is transposed to one register per packet and XORed into the packet
//!   with masked loads and stores (the tail of each packet is just a shorter mask).
//! - Poly1305 reads 64 bytes per packet at a time (four blocks), straight from the packets, and
//!   transposes them into limb-major form with shuffles instead of gathering block by block.
//! - The one-time Poly1305 keys come out of block 0 in word-major form already, so `r` is
//!   split into limbs for all sixteen packets at once.
//!
//! Lanes are addressed through raw pointers: one pass reads and writes up to sixteen packets
//! through masked vector accesses that never touch a byte outside a packet.
//!
//! The Poly1305 arithmetic is a parameter ([`FusedPoly`]): radix 2^26 with `vpmuludq`
//! ([`Radix26`], here) or radix 2^44 with IFMA (`avx512_ifma.rs`).

use super::avx512::{block16, mul_block, split_limbs, transpose16};
use super::engine::{CoreJob, TagSlot, Text, MAX_LANES};
use super::poly1305::{HIBIT, MASK26};
use super::portable::SIGMA;
use std::arch::x86_64::*;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

const LANES: usize = 16;
const _: () = assert!(LANES == MAX_LANES);

/// One run of bytes per lane (a lane with length 0 is idle; its pointer is never used).
#[derive(Clone, Copy)]
struct Runs<P> {
    ptr: [P; LANES],
    len: [usize; LANES],
}

/// The Poly1305 arithmetic of the fused pass, eight lanes (one packet per 64-bit lane) per
/// half. Every method needs the CPU features of its implementation (AVX-512F/BW, plus IFMA
/// for the hardware radix-2^44 one): that is each method's safety contract.
pub(super) trait FusedPoly: Copy {
    /// Accumulators and keys of eight lanes.
    type Half;

    /// Lanes 0..8 and 8..16 with the clamped `r` (RFC 8439 §2.5) from keystream words 0..4
    /// of block 0 (`x[w]` is word `w` of every lane), accumulators zero.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn keys(self, x: &[__m512i; 16]) -> [Self::Half; 2];

    /// Absorb blocks `0..most` of a 64-byte chunk per lane, each with 2^128 added: block `k`
    /// is `q[2k]` (low 64 bits) and `q[2k + 1]` (high); a lane takes blocks below its `nb`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn absorb_chunk(self, half: &mut Self::Half, q: &[__m512i; 8], nb: __m512i, most: usize);

    /// Each accumulator fully reduced modulo 2^130 − 5: its four low 32-bit words, word `k`
    /// in the low 32 bits of each 64-bit lane of `result[k]`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn reduce(self, half: &Self::Half) -> [__m512i; 4];
}

/// Radix 2^26 with 32×32-bit `vpmuludq`: any AVX-512F/BW CPU.
#[derive(Clone, Copy, Debug)]
pub(super) struct Radix26;

impl FusedPoly for Radix26 {
    type Half = PolyHalf;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn keys(self, x: &[__m512i; 16]) -> [PolyHalf; 2] {
        poly_keys(x)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn absorb_chunk(self, p: &mut PolyHalf, q: &[__m512i; 8], nb: __m512i, most: usize) {
        let hib = _mm512_set1_epi64(HIBIT as i64);
        for k in 0..most {
            let m = split_limbs(q[2 * k], q[2 * k + 1], hib);
            let n = mul_block(&p.h, &m, &p.r, &p.s);
            let active = _mm512_cmpgt_epu64_mask(nb, _mm512_set1_epi64(k as i64));
            if active == 0xff {
                p.h = n;
            } else {
                for (h, n) in p.h.iter_mut().zip(n) {
                    *h = _mm512_mask_mov_epi64(*h, active, n);
                }
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn reduce(self, half: &PolyHalf) -> [__m512i; 4] {
        reduce26(&half.h)
    }
}

/// Poly1305 registers for eight lanes (one packet per 64-bit lane), 26-bit limbs.
pub(super) struct PolyHalf {
    h: [__m512i; 5],
    r: [__m512i; 5],
    /// `5 · r`.
    s: [__m512i; 5],
}

/// A mask of the first `n` bytes (`n` ≤ 64) of a 64-byte vector.
#[inline]
fn first_bytes(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Seal or open every job of `group` (at most sixteen, all sealing or all opening), setting
/// each job's `ok`. As the generic engine: when opening, every tag is checked before any
/// plaintext is written, and a packet whose tag fails has its output zeroed, not decrypted.
///
/// # Safety
/// The CPU supports AVX-512F and AVX-512BW, and what `P` needs (see [`FusedPoly`]).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn group<P: FusedPoly>(p: P, group: &mut [Option<&mut CoreJob<'_>>]) {
    // Row `lane`: that lane's key words, a zero word where the counter goes, its nonce words.
    let mut rows = [_mm512_setzero_si512(); LANES];
    let mut input = Runs {
        ptr: [std::ptr::null::<u8>(); LANES],
        len: [0; LANES],
    };
    let mut output = Runs {
        ptr: [std::ptr::null_mut::<u8>(); LANES],
        len: [0; LANES],
    };
    let mut aad = input;
    let mut opening = false;
    let mut lanes = 0;
    for (lane, j) in group.iter_mut().flatten().take(LANES).enumerate() {
        let mut nonce = [0u8; 16];
        nonce[4..].copy_from_slice(&j.nonce);
        // SAFETY: the key is 32 readable bytes, `nonce` 16; the loads are unaligned.
        rows[lane] = unsafe {
            let key = _mm512_zextsi256_si512(_mm256_loadu_si256(j.key.as_ptr().cast()));
            _mm512_inserti32x4::<2>(key, _mm_loadu_si128(nonce.as_ptr().cast()))
        };
        let len = j.text.len();
        let (i, o) = match &mut j.text {
            Text::InPlace(b) => {
                let p = b.as_mut_ptr();
                (p.cast_const(), p)
            }
            Text::Split(i, o) => (i.as_ptr(), o.as_mut_ptr()),
        };
        (input.ptr[lane], input.len[lane]) = (i, len);
        (output.ptr[lane], output.len[lane]) = (o, len);
        (aad.ptr[lane], aad.len[lane]) = (j.aad.as_ptr(), j.aad.len());
        opening |= matches!(j.tag, TagSlot::Check(_));
        lanes = lane + 1;
    }
    // Word-major: `words[w]` is word `w` of every lane's row.
    let words = transpose16(&rows);
    let state = |counter: u32| {
        let mut x = [_mm512_setzero_si512(); 16];
        for (w, c) in SIGMA.iter().enumerate() {
            x[w] = _mm512_set1_epi32(*c as i32);
        }
        x[4..12].copy_from_slice(&words[..8]);
        x[12] = _mm512_set1_epi32(counter as i32);
        x[13..].copy_from_slice(&words[9..12]);
        x
    };

    // Block 0 of each keystream is the packet's one-time Poly1305 key (RFC 8439 §2.6).
    let mut x = state(0);
    block16(&mut x);
    // SAFETY: the caller guarantees what `P` needs.
    let mut poly = unsafe { p.keys(&x) };
    let pad = [x[4], x[5], x[6], x[7]];

    let mut tags = [0u128; LANES];
    if opening {
        // SAFETY: every input run is a readable slice of its job.
        unsafe { mac(p, &mut poly, &aad, &input, pad, &mut tags[..lanes]) };
        for ((lane, j), tag) in group.iter_mut().flatten().enumerate().zip(&tags) {
            j.ok = match &j.tag {
                TagSlot::Check(want) => bool::from(u128::from_le_bytes(*want).ct_eq(tag)),
                TagSlot::Write(_) => false,
            };
            if !j.ok {
                // Never decrypted: the output is zeroed and the lane sits out the keystream.
                // SAFETY: the output run is `len` writable bytes of this job.
                unsafe { std::ptr::write_bytes(output.ptr[lane], 0, output.len[lane]) };
                input.len[lane] = 0;
            }
        }
        // SAFETY: input and output runs are slices of their jobs, failed lanes emptied.
        unsafe { xor_keystream(&state, &input, &output) };
    } else {
        // SAFETY: as above; the sealed ciphertext is then read back from the outputs.
        unsafe {
            xor_keystream(&state, &input, &output);
            let sealed = Runs {
                ptr: output.ptr.map(<*mut u8>::cast_const),
                len: output.len,
            };
            mac(p, &mut poly, &aad, &sealed, pad, &mut tags[..lanes]);
        }
        for (j, tag) in group.iter_mut().flatten().zip(&tags) {
            j.ok = true;
            if let TagSlot::Write(out) = &mut j.tag {
                **out = tag.to_le_bytes();
            }
        }
    }
    tags.zeroize();
}

/// The clamped `r` limbs (RFC 8439 §2.5) of all sixteen lanes from keystream words 0..4 of
/// block 0, in the two halves Poly1305 runs on; accumulators zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn poly_keys(x: &[__m512i; 16]) -> [PolyHalf; 2] {
    let and = |v: __m512i, m: u32| _mm512_and_si512(v, _mm512_set1_epi32(m as i32));
    let join = |lo: __m512i, hi: __m512i| _mm512_or_si512(lo, hi);
    let r = [
        and(x[0], 0x3ff_ffff),
        and(
            join(_mm512_srli_epi32::<26>(x[0]), _mm512_slli_epi32::<6>(x[1])),
            0x3ff_ff03,
        ),
        and(
            join(_mm512_srli_epi32::<20>(x[1]), _mm512_slli_epi32::<12>(x[2])),
            0x3ff_c0ff,
        ),
        and(
            join(_mm512_srli_epi32::<14>(x[2]), _mm512_slli_epi32::<18>(x[3])),
            0x3f0_3fff,
        ),
        and(_mm512_srli_epi32::<8>(x[3]), 0x00f_ffff),
    ];
    // Explicit loops rather than array `map`s: those copied the 30 registers through memory.
    let zero = _mm512_setzero_si512();
    let mut poly = [
        PolyHalf {
            h: [zero; 5],
            r: [zero; 5],
            s: [zero; 5],
        },
        PolyHalf {
            h: [zero; 5],
            r: [zero; 5],
            s: [zero; 5],
        },
    ];
    for (i, r) in r.into_iter().enumerate() {
        let lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(r));
        let hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64::<1>(r));
        for (p, v) in poly.iter_mut().zip([lo, hi]) {
            p.r[i] = v;
            p.s[i] = _mm512_add_epi64(v, _mm512_slli_epi64::<2>(v));
        }
    }
    poly
}

/// XOR each lane's keystream (blocks 1.., RFC 8439 §2.4) into its run: `output = input ^
/// keystream`, for each lane's `input.len` bytes.
///
/// # Safety
/// For every lane with a non-zero length, `input.ptr` is readable and `output.ptr` writable
/// for that many bytes (they may be equal, for in-place work).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn xor_keystream(
    state: &impl Fn(u32) -> [__m512i; 16],
    input: &Runs<*const u8>,
    output: &Runs<*mut u8>,
) {
    let longest = input.len.iter().copied().max().unwrap_or(0);
    for (block, at) in (0..longest).step_by(64).enumerate() {
        // Texts are bounded far below 2^32 blocks by the public API, so this cannot wrap.
        let mut x = state(block as u32 + 1);
        block16(&mut x);
        let ks = transpose16(&x);
        for (lane, ks) in ks.iter().enumerate() {
            let left = input.len[lane].saturating_sub(at);
            if left == 0 {
                continue;
            }
            let m = first_bytes(left);
            // SAFETY: the mask covers only bytes `at..at + min(left, 64)` of the lane's run,
            // which the caller guarantees are readable (input) and writable (output); masked
            // bytes are neither read nor written.
            unsafe {
                let d = _mm512_maskz_loadu_epi8(m, input.ptr[lane].add(at).cast());
                _mm512_mask_storeu_epi8(
                    output.ptr[lane].add(at).cast(),
                    m,
                    _mm512_xor_si512(d, *ks),
                );
            }
        }
    }
}

/// The tags of RFC 8439 §2.8: Poly1305 over each lane's AAD and text, each zero-padded to 16
/// bytes, then the two lengths; `tags[lane]` for the first `tags.len()` lanes.
///
/// # Safety
/// Every run with a non-zero length is readable for that many bytes; the CPU has what `P`
/// needs.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn mac<P: FusedPoly>(
    p: P,
    poly: &mut [P::Half; 2],
    aad: &Runs<*const u8>,
    text: &Runs<*const u8>,
    pad: [__m512i; 4],
    tags: &mut [u128],
) {
    if aad.len.iter().any(|&n| n > 0) {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { absorb(p, poly, aad) };
    }
    // SAFETY: as above.
    unsafe { absorb(p, poly, text) };
    let aad_len = aad.len.map(|n| n as u64);
    let text_len = text.len.map(|n| n as u64);
    let one = _mm512_set1_epi64(1);
    for (h, half) in poly.iter_mut().enumerate() {
        // The length block: AAD length in the low 64 bits, text length in the high.
        let mut q = [_mm512_setzero_si512(); 8];
        q[0] = load8(&aad_len, h);
        q[1] = load8(&text_len, h);
        // SAFETY: the caller guarantees what `P` needs.
        unsafe { p.absorb_chunk(half, &q, one, 1) };
    }
    // SAFETY: as above.
    let words = unsafe { finish(p, poly, pad) };
    // Four 128-bit tags per register: 128-bit lane c of `rows[i]` is the tag of lane 4c + i.
    let t0 = _mm512_unpacklo_epi32(words[0], words[1]);
    let t1 = _mm512_unpackhi_epi32(words[0], words[1]);
    let t2 = _mm512_unpacklo_epi32(words[2], words[3]);
    let t3 = _mm512_unpackhi_epi32(words[2], words[3]);
    let rows = [
        _mm512_unpacklo_epi64(t0, t2),
        _mm512_unpackhi_epi64(t0, t2),
        _mm512_unpacklo_epi64(t1, t3),
        _mm512_unpackhi_epi64(t1, t3),
    ];
    for (i, row) in rows.into_iter().enumerate() {
        let mut four = [0u128; 4];
        // SAFETY: `four` is 64 writable bytes; the store is unaligned.
        unsafe { _mm512_storeu_si512(four.as_mut_ptr().cast(), row) };
        for (c, tag) in four.iter().enumerate() {
            if let Some(t) = tags.get_mut(4 * c + i) {
                *t = *tag;
            }
        }
        four.zeroize();
    }
}

/// The tags' four 32-bit words for all sixteen lanes (`result[k]` = word `k`): each
/// accumulator fully reduced modulo 2^130 − 5 plus the `s` half of its one-time key, as the
/// scalar `poly1305::finish`, without branches on secret values.
///
/// # Safety
/// The CPU has what `P` needs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn finish<P: FusedPoly>(p: P, poly: &[P::Half; 2], pad: [__m512i; 4]) -> [__m512i; 4] {
    let m32 = _mm512_set1_epi64(u32::MAX as i64);
    let mut halves = [[_mm512_setzero_si512(); 4]; 2];
    for (half, out) in halves.iter_mut().enumerate() {
        // SAFETY: the caller's guarantee, passed on.
        let words = unsafe { p.reduce(&poly[half]) };
        // + s, with the carries between 32-bit words; the result is taken mod 2^128.
        let mut carry_in = _mm512_setzero_si512();
        for (k, w) in words.into_iter().enumerate() {
            let s = _mm512_cvtepu32_epi64(if half == 0 {
                _mm512_castsi512_si256(pad[k])
            } else {
                _mm512_extracti64x4_epi64::<1>(pad[k])
            });
            let t = _mm512_add_epi64(_mm512_add_epi64(_mm512_and_si512(w, m32), s), carry_in);
            carry_in = _mm512_srli_epi64::<32>(t);
            out[k] = t;
        }
    }
    // Back to sixteen 32-bit lanes per word: lanes 0..8 from the first half, 8..16 the second.
    let mut words = [_mm512_setzero_si512(); 4];
    for (k, w) in words.iter_mut().enumerate() {
        let lo = _mm512_cvtepi64_epi32(halves[0][k]);
        let hi = _mm512_cvtepi64_epi32(halves[1][k]);
        *w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    }
    words
}

/// Radix-2^26 accumulators fully reduced modulo 2^130 − 5, as [`FusedPoly::reduce`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn reduce26(h: &[__m512i; 5]) -> [__m512i; 4] {
    let m26 = _mm512_set1_epi64(MASK26 as i64);
    let [mut h0, mut h1, mut h2, mut h3, mut h4] = *h;
    let carry = |from: &mut __m512i, to: &mut __m512i| {
        *to = _mm512_add_epi64(*to, _mm512_srli_epi64::<26>(*from));
        *from = _mm512_and_si512(*from, m26);
    };
    carry(&mut h1, &mut h2);
    carry(&mut h2, &mut h3);
    carry(&mut h3, &mut h4);
    let c = _mm512_srli_epi64::<26>(h4);
    h4 = _mm512_and_si512(h4, m26);
    h0 = _mm512_add_epi64(h0, _mm512_add_epi64(c, _mm512_slli_epi64::<2>(c)));
    carry(&mut h0, &mut h1);
    // g = h + 5 − 2^130; where it does not borrow, h ≥ p and g is the reduced value.
    let mut g0 = _mm512_add_epi64(h0, _mm512_set1_epi64(5));
    let mut g1 = h1;
    let mut g2 = h2;
    let mut g3 = h3;
    let mut g4 = h4;
    carry(&mut g0, &mut g1);
    carry(&mut g1, &mut g2);
    carry(&mut g2, &mut g3);
    carry(&mut g3, &mut g4);
    let g4 = _mm512_sub_epi64(g4, _mm512_set1_epi64(1 << 26));
    let borrow = _mm512_cmplt_epi64_mask(g4, _mm512_setzero_si512());
    let pick = |g: __m512i, h: __m512i| _mm512_mask_mov_epi64(g, borrow, h);
    let (a0, a1, a2, a3) = (pick(g0, h0), pick(g1, h1), pick(g2, h2), pick(g3, h3));
    let a4 = pick(_mm512_and_si512(g4, m26), h4);
    let or = _mm512_or_si512;
    [
        or(a0, _mm512_slli_epi64::<26>(a1)),
        or(_mm512_srli_epi64::<6>(a1), _mm512_slli_epi64::<20>(a2)),
        or(_mm512_srli_epi64::<12>(a2), _mm512_slli_epi64::<14>(a3)),
        or(_mm512_srli_epi64::<18>(a3), _mm512_slli_epi64::<8>(a4)),
    ]
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn load8(v: &[u64; LANES], half: usize) -> __m512i {
    // SAFETY: `v[8 * half..8 * half + 8]` is 64 readable bytes (half < 2).
    unsafe { _mm512_loadu_si512(v[8 * half..8 * half + 8].as_ptr().cast()) }
}

/// Absorb each lane's run, zero-padded to a multiple of 16 bytes, as full Poly1305 blocks.
///
/// # Safety
/// Every run with a non-zero length is readable for that many bytes; the CPU has what `P`
/// needs.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn absorb<P: FusedPoly>(p: P, poly: &mut [P::Half; 2], runs: &Runs<*const u8>) {
    let longest = runs.len.iter().copied().max().unwrap_or(0);
    for at in (0..longest).step_by(64) {
        for (h, half) in poly.iter_mut().enumerate() {
            let mut rows = [_mm512_setzero_si512(); 8];
            let mut blocks = [0u64; 8];
            for (i, (row, nb)) in rows.iter_mut().zip(&mut blocks).enumerate() {
                let lane = 8 * h + i;
                let left = runs.len[lane].saturating_sub(at).min(64);
                if left > 0 {
                    // SAFETY: the mask covers bytes `at..at + left` of the lane's run, which
                    // the caller guarantees readable; masked bytes are not read.
                    *row = unsafe {
                        _mm512_maskz_loadu_epi8(first_bytes(left), runs.ptr[lane].add(at).cast())
                    };
                    *nb = left.div_ceil(16) as u64;
                }
            }
            let most = blocks.iter().copied().max().unwrap_or(0);
            if most == 0 {
                continue;
            }
            let q = transpose8(&rows);
            // SAFETY: `blocks` is 64 readable bytes.
            let nb = unsafe { _mm512_loadu_si512(blocks.as_ptr().cast()) };
            // SAFETY: the caller guarantees what `P` needs.
            unsafe { p.absorb_chunk(half, &q, nb, most as usize) };
        }
    }
}

/// An 8×8 transpose of 64-bit words: result `j` holds word `j` of rows 0..8.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn transpose8(r: &[__m512i; 8]) -> [__m512i; 8] {
    // t[2i], 128-bit lane c: word 2c of rows 2i and 2i+1; t[2i+1]: word 2c+1.
    let t: [__m512i; 8] = std::array::from_fn(|k| {
        let (a, b) = (r[k / 2 * 2], r[k / 2 * 2 + 1]);
        if k % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    let mut q = [_mm512_setzero_si512(); 8];
    for odd in 0..2 {
        let (t0, t2, t4, t6) = (t[odd], t[2 + odd], t[4 + odd], t[6 + odd]);
        let u0 = _mm512_shuffle_i64x2::<0x88>(t0, t2);
        let u1 = _mm512_shuffle_i64x2::<0xdd>(t0, t2);
        let v0 = _mm512_shuffle_i64x2::<0x88>(t4, t6);
        let v1 = _mm512_shuffle_i64x2::<0xdd>(t4, t6);
        q[odd] = _mm512_shuffle_i64x2::<0x88>(u0, v0);
        q[4 + odd] = _mm512_shuffle_i64x2::<0xdd>(u0, v0);
        q[2 + odd] = _mm512_shuffle_i64x2::<0x88>(u1, v1);
        q[6 + odd] = _mm512_shuffle_i64x2::<0xdd>(u1, v1);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::batch::poly1305;

    #[test]
    fn transpose8_moves_word_j_of_row_i_to_word_i_of_result_j() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let rows: [[u64; 8]; 8] =
            std::array::from_fn(|i| std::array::from_fn(|j| (i * 8 + j) as u64));
        // SAFETY: AVX-512F was detected; every array is 64 bytes.
        let got = unsafe {
            let r = rows.map(|row| _mm512_loadu_si512(row.as_ptr().cast()));
            transpose8(&r).map(|v| {
                let mut out = [0u64; 8];
                _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
                out
            })
        };
        for (j, col) in got.iter().enumerate() {
            for (i, v) in col.iter().enumerate() {
                assert_eq!(*v, rows[i][j], "word {j} of row {i}");
            }
        }
    }

    #[test]
    fn poly_keys_match_the_scalar_clamp() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let words: [[u32; LANES]; 4] = std::array::from_fn(|w| {
            std::array::from_fn(|l| 0x9e37_79b9u32.wrapping_mul((w * 16 + l + 1) as u32))
        });
        // SAFETY: AVX-512F was detected; every array is 64 bytes.
        let halves = unsafe {
            let mut x = [_mm512_setzero_si512(); 16];
            for (v, w) in x.iter_mut().zip(&words) {
                *v = _mm512_loadu_si512(w.as_ptr().cast());
            }
            poly_keys(&x)
        };
        for lane in 0..LANES {
            let mut key = [0u8; 16];
            for (b, w) in key.chunks_exact_mut(4).zip(&words) {
                b.copy_from_slice(&w[lane].to_le_bytes());
            }
            let want = poly1305::r_limbs(&key);
            let mut got = [0u64; 5];
            for (g, v) in got.iter_mut().zip(halves[lane / 8].r) {
                let mut out = [0u64; 8];
                // SAFETY: `out` is 64 writable bytes.
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) };
                *g = out[lane % 8];
            }
            assert_eq!(got, want, "lane {lane}");
            assert!(got.iter().all(|l| *l <= MASK26));
        }
    }

    #[test]
    fn finish_matches_the_scalar_reduction() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let m = poly1305::MASK26;
        // Edge cases around p = 2^130 − 5 and the largest partially reduced limbs, then
        // pseudo-random ones.
        let mut cases: Vec<[u64; 5]> = vec![
            [m - 4, m, m, m, m],
            [m - 5, m, m, m, m],
            [m, m, m, m, m],
            [0, 0, 0, 0, 0],
            [m - 3, m, m, m, m],
            [m + 7, (1 << 27) - 1, m, m, m],
            [4, 0, 0, 0, 1 << 26],
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        while cases.len() < 2 * LANES {
            let mut limb = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x & ((1 << 27) - 1)
            };
            cases.push([limb(), limb(), limb(), limb(), limb()]);
        }
        for chunk in cases.chunks(LANES) {
            let pads: [[u32; LANES]; 4] = std::array::from_fn(|k| {
                std::array::from_fn(|l| 0xffff_fff0u32.wrapping_add((l * 4 + k) as u32 * 3))
            });
            let limb = |i: usize, half: usize| {
                let v: [u64; 8] =
                    std::array::from_fn(|l| chunk.get(8 * half + l).map_or(0, |c| c[i]));
                // SAFETY: AVX-512F was detected; `v` is 64 bytes.
                unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
            };
            // SAFETY: AVX-512F was detected; every array is 64 bytes.
            let words = unsafe {
                let poly = [0, 1].map(|half| PolyHalf {
                    h: [0, 1, 2, 3, 4].map(|i| limb(i, half)),
                    r: [_mm512_setzero_si512(); 5],
                    s: [_mm512_setzero_si512(); 5],
                });
                let pad = pads.map(|p| _mm512_loadu_si512(p.as_ptr().cast()));
                finish(Radix26, &poly, pad).map(|v| {
                    let mut out = [0u32; LANES];
                    _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
                    out
                })
            };
            for (lane, h) in chunk.iter().enumerate() {
                let mut s = [0u8; 16];
                for (b, p) in s.chunks_exact_mut(4).zip(&pads) {
                    b.copy_from_slice(&p[lane].to_le_bytes());
                }
                let mut got = [0u8; 16];
                for (b, w) in got.chunks_exact_mut(4).zip(&words) {
                    b.copy_from_slice(&w[lane].to_le_bytes());
                }
                assert_eq!(got, poly1305::finish(h, &s), "limbs {h:?}");
            }
        }
    }
}
