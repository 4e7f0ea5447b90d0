//! The lane engine shared by every path: packets are sorted by length and packed into groups of
//! as many packets as the path has lanes; each group runs ChaCha20 block by block with one
//! packet per lane, then Poly1305 with one packet per lane. A path only supplies the two kernels
//! of [`Engine`]; everything about lengths, padding, masking and tags is here, once.
//!
//! Lanes whose packet is shorter than the group's longest keep computing keystream but their
//! output is not written (ChaCha20), or they are masked off (Poly1305). Sorting by length first
//! keeps that waste small.

use super::poly1305;
use super::ring_fallback;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Lanes in the widest path (AVX-512: sixteen 32-bit lanes).
pub(crate) const MAX_LANES: usize = 16;

/// One 64-byte keystream block per lane.
pub(crate) type Blocks = [[u8; 64]; MAX_LANES];

/// ChaCha20 inputs in lane-major ("transposed") form: `key[w][lane]` is key word `w` of the
/// packet in `lane`, so a vector load of `key[w]` gives state word `4 + w` for all lanes.
#[derive(Default)]
pub(crate) struct ChachaLanes {
    pub key: [[u32; MAX_LANES]; 8],
    pub nonce: [[u32; MAX_LANES]; 3],
    pub counter: [u32; MAX_LANES],
}

impl ChachaLanes {
    pub(crate) fn set_lane(&mut self, lane: usize, key: &[u8; 32], nonce: &[u8; 12]) {
        for (w, bytes) in key.chunks_exact(4).enumerate() {
            self.key[w][lane] = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for (w, bytes) in nonce.chunks_exact(4).enumerate() {
            self.nonce[w][lane] = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
    }
}

impl Drop for ChachaLanes {
    fn drop(&mut self) {
        self.key.zeroize();
        self.nonce.zeroize();
    }
}

/// Poly1305 state in lane-major form, 26-bit limbs: `h[i][lane]` is limb `i` of the packet in
/// `lane`'s accumulator; `s[i] = 5 · r[i]` (`s[0]` unused).
#[derive(Default)]
pub(crate) struct PolyLanes {
    pub h: [[u64; MAX_LANES]; 5],
    pub r: [[u64; MAX_LANES]; 5],
    pub s: [[u64; MAX_LANES]; 5],
}

impl PolyLanes {
    pub(crate) fn lane(limbs: &[[u64; MAX_LANES]; 5], lane: usize) -> [u64; 5] {
        [0, 1, 2, 3, 4].map(|i| limbs[i][lane])
    }

    /// Start `lane` with the one-time key's `r` half (`s` is added at the end, by the caller).
    pub(crate) fn set_key(&mut self, lane: usize, r: &[u8]) {
        for (i, v) in poly1305::r_limbs(r).into_iter().enumerate() {
            self.r[i][lane] = v;
            self.s[i][lane] = v * 5;
            self.h[i][lane] = 0;
        }
    }
}

impl Drop for PolyLanes {
    fn drop(&mut self) {
        self.h.zeroize();
        self.r.zeroize();
        self.s.zeroize();
    }
}

/// The two kernels a path provides.
pub(crate) trait Engine {
    /// Packets processed side by side (at most [`MAX_LANES`]).
    const LANES: usize;

    /// One ChaCha20 block for each of the first `LANES` lanes, from `st`'s key, nonce and
    /// counter words, as bytes in `out[lane]`.
    ///
    /// # Safety
    /// The CPU supports the target features the implementation is compiled for.
    unsafe fn chacha_blocks(st: &ChachaLanes, out: &mut Blocks);

    /// Absorb every 16-byte block of `msgs[lane]` into lane `lane` of `st` (each length a
    /// multiple of 16; lanes with an empty slice are unchanged). `hibit` adds 2^128 to each
    /// block, as RFC 8439 does for full blocks.
    ///
    /// # Safety
    /// As for [`Engine::chacha_blocks`].
    unsafe fn poly_blocks(st: &mut PolyLanes, msgs: &[&[u8]; MAX_LANES], hibit: bool);

    /// Seal or open a whole group (at most `LANES` jobs) in one fused pass, if the path has
    /// one, with the same contract as the generic [`run_group`]; `false` leaves the group to
    /// the generic code built on the two kernels above.
    ///
    /// # Safety
    /// As for [`Engine::chacha_blocks`].
    unsafe fn fused_group(_group: &mut [Option<&mut CoreJob<'_>>]) -> bool {
        false
    }
}

/// Plaintext or ciphertext of one packet, transformed in place or from `input` to `output`
/// (both exactly the text's length).
#[derive(Debug)]
pub(crate) enum Text<'a> {
    InPlace(&'a mut [u8]),
    Split(&'a [u8], &'a mut [u8]),
}

impl Text<'_> {
    pub(crate) fn len(&self) -> usize {
        self.input().len()
    }

    pub(crate) fn input(&self) -> &[u8] {
        match self {
            Text::InPlace(b) => b,
            Text::Split(i, _) => i,
        }
    }

    pub(crate) fn output(&self) -> &[u8] {
        match self {
            Text::InPlace(b) => b,
            Text::Split(_, o) => o,
        }
    }

    /// Copy the input to the output (if separate) and return the output, for code that only
    /// works in place.
    pub(crate) fn prepare_in_place(&mut self) -> &mut [u8] {
        match self {
            Text::InPlace(b) => b,
            Text::Split(i, o) => {
                o.copy_from_slice(i);
                o
            }
        }
    }

    pub(crate) fn zero_output(&mut self) {
        match self {
            Text::InPlace(b) => b.fill(0),
            Text::Split(_, o) => o.fill(0),
        }
    }

    /// output[at..at+64] = input[at..at+64] ^ keystream, cut at the text's end.
    fn xor_block(&mut self, at: usize, ks: &[u8; 64]) {
        let end = self.len().min(at + 64);
        if at >= end {
            return;
        }
        match self {
            Text::InPlace(b) => b[at..end].iter_mut().zip(ks).for_each(|(d, k)| *d ^= k),
            Text::Split(i, o) => o[at..end]
                .iter_mut()
                .zip(&i[at..end])
                .zip(ks)
                .for_each(|((d, s), k)| *d = s ^ k),
        }
    }
}

/// Where the tag goes (sealing) or what it must be (opening).
#[derive(Debug)]
pub(crate) enum TagSlot<'a> {
    Write(&'a mut [u8; 16]),
    Check([u8; 16]),
}

/// One packet, as every path sees it: a general 96-bit nonce and AAD, so the RFC 8439 and
/// Wycheproof vectors run through exactly the code WireGuard packets do.
#[derive(Debug)]
pub(crate) struct CoreJob<'a> {
    pub key: &'a [u8; 32],
    pub nonce: [u8; 12],
    pub aad: &'a [u8],
    pub text: Text<'a>,
    pub tag: TagSlot<'a>,
    /// Set by the engine: the tag verified (opening) or the packet was sealed.
    pub ok: bool,
}

/// Jobs the public API sorts by length at a time, before cutting them into lane groups.
pub(crate) const CHUNK: usize = 64;

/// Seal or open one group of at most `E::LANES` jobs (`None` entries are skipped): on `E` if
/// `simd_pays(jobs, longest text)`, else through ring one packet at a time.
///
/// # Safety
/// The CPU supports `E`'s target features.
pub(crate) unsafe fn run<E: Engine>(
    group: &mut [Option<&mut CoreJob<'_>>],
    simd_pays: fn(usize, usize) -> bool,
) {
    let longest = group.iter().flatten().map(|j| j.text.len()).max();
    if !simd_pays(group.len(), longest.unwrap_or(0)) {
        group
            .iter_mut()
            .flatten()
            .for_each(|j| ring_fallback::process(j));
    } else {
        // SAFETY: the caller guarantees E's target features.
        unsafe {
            if !E::fused_group(group) {
                run_group::<E>(group);
            }
        }
    }
}

/// One group of at most `E::LANES` packets, all sealing or all opening.
unsafe fn run_group<E: Engine>(group: &mut [Option<&mut CoreJob<'_>>]) {
    let mut cs = ChachaLanes::default();
    for (lane, j) in group.iter().flatten().enumerate() {
        cs.set_lane(lane, j.key, &j.nonce);
    }
    // Block 0 of each packet's keystream is its Poly1305 one-time key (RFC 8439 §2.6).
    let mut ks: Blocks = [[0; 64]; MAX_LANES];
    // SAFETY: the caller guarantees E's target features.
    unsafe { E::chacha_blocks(&cs, &mut ks) };
    let mut poly = PolyLanes::default();
    let mut pads = [[0u8; 16]; MAX_LANES];
    for (lane, pad) in pads.iter_mut().enumerate().take(group.len()) {
        poly.set_key(lane, &ks[lane][..16]);
        pad.copy_from_slice(&ks[lane][16..32]);
    }
    let opening = group
        .iter()
        .flatten()
        .any(|j| matches!(j.tag, TagSlot::Check(_)));
    if opening {
        // MAC the ciphertext first; decrypt only the packets whose tag verified.
        // SAFETY: as above.
        let tags = unsafe { mac::<E>(group, &mut poly, &pads, true) };
        for (j, tag) in group.iter_mut().flatten().zip(&tags) {
            j.ok = match &j.tag {
                TagSlot::Check(want) => bool::from(want.ct_eq(tag)),
                TagSlot::Write(_) => false,
            };
            if !j.ok {
                j.text.zero_output();
            }
        }
        // SAFETY: as above.
        unsafe { apply_keystream::<E>(group, &mut cs, &mut ks) };
    } else {
        group.iter_mut().flatten().for_each(|j| j.ok = true);
        // SAFETY: as above.
        let tags = unsafe {
            apply_keystream::<E>(group, &mut cs, &mut ks);
            mac::<E>(group, &mut poly, &pads, false)
        };
        for (j, tag) in group.iter_mut().flatten().zip(&tags) {
            if let TagSlot::Write(out) = &mut j.tag {
                **out = *tag;
            }
        }
    }
    // Only the lanes in use hold key material; volatile zeroing is byte by byte, so skip the rest.
    ks.iter_mut().take(group.len()).for_each(|k| k.zeroize());
    pads.iter_mut().take(group.len()).for_each(|p| p.zeroize());
}

/// XOR keystream blocks 1.. into the text of every lane whose `ok` is set.
unsafe fn apply_keystream<E: Engine>(
    group: &mut [Option<&mut CoreJob<'_>>],
    cs: &mut ChachaLanes,
    ks: &mut Blocks,
) {
    let longest = group.iter().flatten().filter(|j| j.ok);
    let blocks = longest
        .map(|j| j.text.len())
        .max()
        .unwrap_or(0)
        .div_ceil(64);
    for b in 0..blocks {
        // The public API bounds texts far below 2^32 blocks, so this cannot wrap.
        cs.counter = [(b as u32).wrapping_add(1); MAX_LANES];
        // SAFETY: the caller guarantees E's target features.
        unsafe { E::chacha_blocks(cs, ks) };
        for (lane, j) in group.iter_mut().flatten().enumerate() {
            if j.ok {
                j.text.xor_block(b * 64, &ks[lane]);
            }
        }
    }
}

/// The ciphertext a tag covers: the input when opening, the output when sealing.
fn mac_text<'j>(j: &'j CoreJob<'_>, opening: bool) -> &'j [u8] {
    if opening {
        j.text.input()
    } else {
        j.text.output()
    }
}

fn full_blocks(b: &[u8]) -> &[u8] {
    &b[..b.len() / 16 * 16]
}

fn tail(b: &[u8]) -> &[u8] {
    &b[b.len() / 16 * 16..]
}

/// The Poly1305 tags over (AAD, ciphertext) per RFC 8439 §2.8; the ciphertext is each job's
/// input when `opening`, else its output.
unsafe fn mac<E: Engine>(
    group: &[Option<&mut CoreJob<'_>>],
    poly: &mut PolyLanes,
    pads: &[[u8; 16]; MAX_LANES],
    opening: bool,
) -> [[u8; 16]; MAX_LANES] {
    let text = |j| mac_text(j, opening);
    let jobs = || group.iter().flatten().map(|j| &**j);
    let empty: &[u8] = &[];
    if jobs().any(|j| !j.aad.is_empty()) {
        // SAFETY (both calls): the caller guarantees E's target features.
        unsafe { absorb_padded::<E>(poly, jobs().map(|j| j.aad)) };
    }
    let mut msgs = [empty; MAX_LANES];
    for (m, j) in msgs.iter_mut().zip(jobs()) {
        *m = full_blocks(text(j));
    }
    // SAFETY: as above.
    unsafe { E::poly_blocks(poly, &msgs, true) };
    // The ciphertext's padded tail (if any) and the length block, contiguous per lane.
    let mut fin = [[0u8; 32]; MAX_LANES];
    let mut starts = [16usize; MAX_LANES];
    for ((f, start), j) in fin.iter_mut().zip(&mut starts).zip(jobs()) {
        let t = tail(text(j));
        f[..t.len()].copy_from_slice(t);
        f[16..24].copy_from_slice(&(j.aad.len() as u64).to_le_bytes());
        f[24..].copy_from_slice(&(j.text.len() as u64).to_le_bytes());
        *start = if t.is_empty() { 16 } else { 0 };
    }
    let mut msgs = [empty; MAX_LANES];
    for ((m, f), start) in msgs.iter_mut().zip(&fin).zip(starts).take(group.len()) {
        *m = &f[start..];
    }
    // SAFETY: as above.
    unsafe { E::poly_blocks(poly, &msgs, true) };
    let mut tags = [[0u8; 16]; MAX_LANES];
    for (lane, tag) in tags.iter_mut().enumerate().take(group.len()) {
        *tag = poly1305::finish(&PolyLanes::lane(&poly.h, lane), &pads[lane]);
    }
    tags
}

/// Absorb each lane's `data` zero-padded to a multiple of 16 bytes.
unsafe fn absorb_padded<'d, E: Engine>(
    poly: &mut PolyLanes,
    data: impl Iterator<Item = &'d [u8]> + Clone,
) {
    let empty: &[u8] = &[];
    let mut msgs = [empty; MAX_LANES];
    let mut tails = [[0u8; 16]; MAX_LANES];
    for ((m, t), d) in msgs.iter_mut().zip(&mut tails).zip(data.clone()) {
        *m = full_blocks(d);
        t[..tail(d).len()].copy_from_slice(tail(d));
    }
    // SAFETY (both calls): the caller guarantees E's target features.
    unsafe { E::poly_blocks(poly, &msgs, true) };
    let mut msgs = [empty; MAX_LANES];
    for ((m, t), d) in msgs.iter_mut().zip(&tails).zip(data) {
        if !tail(d).is_empty() {
            *m = t;
        }
    }
    // SAFETY: as above.
    unsafe { E::poly_blocks(poly, &msgs, true) };
}

/// ChaCha20 (RFC 8439 §2.4) over `data` in place, starting at block `counter`, computed in lane
/// `lane` of the engine (other lanes idle). For known-answer tests of each path and lane.
///
/// # Safety
/// The CPU supports `E`'s target features.
pub(crate) unsafe fn chacha20_xor<E: Engine>(
    lane: usize,
    key: &[u8; 32],
    nonce: &[u8; 12],
    counter: u32,
    data: &mut [u8],
) {
    let mut cs = ChachaLanes::default();
    cs.set_lane(lane, key, nonce);
    let mut ks: Blocks = [[0; 64]; MAX_LANES];
    for (b, chunk) in data.chunks_mut(64).enumerate() {
        cs.counter[lane] = counter.wrapping_add(b as u32);
        // SAFETY: the caller guarantees E's target features.
        unsafe { E::chacha_blocks(&cs, &mut ks) };
        chunk.iter_mut().zip(&ks[lane]).for_each(|(d, k)| *d ^= k);
    }
    ks.zeroize();
}

/// Poly1305 (RFC 8439 §2.5) of `msg` under a one-time `key`, computed in lane `lane`.
///
/// # Safety
/// As for [`chacha20_xor`].
pub(crate) unsafe fn poly1305_mac<E: Engine>(lane: usize, key: &[u8; 32], msg: &[u8]) -> [u8; 16] {
    let mut poly = PolyLanes::default();
    poly.set_key(lane, &key[..16]);
    let empty: &[u8] = &[];
    let mut msgs = [empty; MAX_LANES];
    msgs[lane] = full_blocks(msg);
    // SAFETY (both calls): the caller guarantees E's target features.
    unsafe { E::poly_blocks(&mut poly, &msgs, true) };
    let t = tail(msg);
    let mut last = [0u8; 16];
    if !t.is_empty() {
        // A partial final block gets its 0x01 byte explicitly and no 2^128 bit.
        last[..t.len()].copy_from_slice(t);
        last[t.len()] = 1;
        let mut msgs = [empty; MAX_LANES];
        msgs[lane] = &last;
        unsafe { E::poly_blocks(&mut poly, &msgs, false) };
    }
    let mut s = [0u8; 16];
    s.copy_from_slice(&key[16..]);
    poly1305::finish(&PolyLanes::lane(&poly.h, lane), &s)
}
