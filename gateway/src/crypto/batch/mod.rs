//! Batched ChaCha20-Poly1305 (RFC 8439) for WireGuard transport data: many independent packets,
//! each with its own key and counter, sealed or opened side by side in SIMD lanes.
//!
//! A worker describes each packet as a job (key, counter, input, output) and hands the whole
//! batch over in one call:
//!
//! ```
//! use sluice::crypto::batch::{open_batch, seal_batch, OpenJob, SealJob, TAG_LEN};
//! let key = [7u8; 32];
//! let plain = *b"one packet";
//! let mut wire = [0u8; 10 + TAG_LEN];
//! seal_batch(&mut [SealJob::new(&key, 1, &plain, &mut wire)]).unwrap();
//! let mut out = [0u8; 10];
//! let mut jobs = [OpenJob::new(&key, 1, &wire, &mut out)];
//! assert_eq!(open_batch(&mut jobs).unwrap(), 0);
//! assert_eq!(jobs[0].result(), Ok(10));
//! # drop(jobs);
//! assert_eq!(out, plain);
//! ```
//!
//! - The nonce is WireGuard's (four zero bytes, then the counter little-endian), the AAD empty
//!   and the tag 16 bytes, as in [`crate::crypto::seal_in_place`]. The general form (any 96-bit
//!   nonce, any AAD) is [`AeadJob`], used by the known-answer tests.
//! - Out of place (RX frame straight into a TX frame) or in place; lengths may differ freely
//!   within a batch.
//! - Opening verifies every tag, in constant time, before decrypting: a packet whose tag fails
//!   is reported in its job's [`OpenJob::result`] and its output is zeroed, never decrypted.
//!   The other packets of the batch are unaffected.
//! - Paths: AVX-512 with IFMA (16 lanes, radix-2^44 Poly1305), AVX-512 (16 lanes), AVX2 (8
//!   lanes) and portable Rust, chosen at run time ([`Path::Auto`]) or forced. Under `Auto`,
//!   lane groups too small to pay for the vector setup for their packet size go through ring
//!   one packet at a time (so a batch of one is ring), and CPUs without AVX-512 use ring
//!   throughout (see [`Path::detect`]).
//!
//! All `unsafe` and intrinsics of the batched AEAD live in `avx2.rs`, `avx512.rs`,
//! `avx512_fused.rs` and `avx512_ifma.rs`.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_fused;
#[cfg(target_arch = "x86_64")]
mod avx512_ifma;
mod engine;
mod jobs;
mod poly1305;
mod portable;
mod ring_fallback;

pub use super::{OpenError, KEY_LEN, TAG_LEN};
pub use jobs::{AeadJob, OpenInPlaceJob, OpenJob, SealInPlaceJob, SealJob};

use engine::{CoreJob, Engine, CHUNK, MAX_LANES};
use jobs::Job;

/// Which implementation runs a batch.
// The hidden variant is a test hook, not a marker against exhaustive matching.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// The fastest available path; small lane groups go through ring.
    Auto,
    /// Plain Rust, eight packets per group; runs everywhere.
    Portable,
    /// AVX2, eight packets per group.
    Avx2,
    /// AVX-512F/BW, sixteen packets per group. Poly1305 in radix 2^26 with 32×32-bit
    /// multiplies.
    Avx512,
    /// AVX-512F/BW and AVX-512 IFMA, sixteen packets per group: the AVX-512 path with
    /// Poly1305 in radix 2^44 on the 52-bit multiply-adds (`vpmadd52luq`/`vpmadd52huq`).
    Avx512Ifma,
    /// The `Avx512Ifma` arithmetic with the two IFMA instructions emulated exactly in software,
    /// so that it can be tested on AVX-512 CPUs without IFMA. Slow; for tests only, never
    /// chosen by `Auto` and not in [`Path::FORCED`].
    #[doc(hidden)]
    Avx512IfmaEmulated,
}

impl Path {
    /// The paths that can be forced, slowest first (`Avx512Ifma` is not measured to be
    /// faster than `Avx512`: no CPU it was developed on has IFMA).
    pub const FORCED: [Path; 4] = [Path::Portable, Path::Avx2, Path::Avx512, Path::Avx512Ifma];

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Path::Auto | Path::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 | Path::Avx512IfmaEmulated => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Ifma => {
                Path::Avx512.is_available() && std::arch::is_x86_feature_detected!("avx512ifma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx2 | Path::Avx512 | Path::Avx512Ifma | Path::Avx512IfmaEmulated => false,
        }
    }

    /// Whether the path runs sixteen packets per lane group.
    fn is_avx512(self) -> bool {
        matches!(
            self,
            Path::Avx512 | Path::Avx512Ifma | Path::Avx512IfmaEmulated
        )
    }

    /// The path `Auto` runs lane groups on, on this CPU (`Portable` means: everything goes
    /// through ring). Only AVX-512 beats ring: the AVX2 path's eight lanes measured 0.45–0.8×
    /// ring, so on a CPU without AVX-512 `Auto` is ring, packet by packet. With IFMA, the
    /// radix-2^44 Poly1305 is preferred (fewer multiplications per block; its speed is not
    /// measured yet, for lack of an IFMA machine).
    pub fn detect() -> Path {
        if Path::Avx512Ifma.is_available() {
            Path::Avx512Ifma
        } else if Path::Avx512.is_available() {
            Path::Avx512
        } else {
            Path::Portable
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Path::Auto => "auto",
            Path::Portable => "portable",
            Path::Avx2 => "avx2",
            Path::Avx512 => "avx512",
            Path::Avx512Ifma => "avx512-ifma",
            Path::Avx512IfmaEmulated => "avx512-ifma-emulated",
        }
    }
}

/// Under [`Path::Auto`], whether a lane group of `packets` packets whose longest text is
/// `longest` bytes runs on the AVX-512 path rather than through ring packet by packet.
///
/// A group costs about the same whatever number of its sixteen lanes are filled, so it pays
/// once it holds more packets than `16 / speed-up`, where the speed-up of a full group over
/// ring falls with the packet size (measured with `sluice-bench crypto` on the development
/// machine: about 2.4× at 64 B, 1.7× at 128 and 256 B, 1.55× at 512 B, 1.25–1.45× at 1024 and
/// 1420 B, 1.1× at 8192 B). The counts below keep a margin, so that `Auto` is not slower than
/// ring at any batch size.
fn auto_simd_pays(packets: usize, longest: usize) -> bool {
    let needed = match longest {
        0..=95 => 8,
        96..=383 => 11,
        384..=1023 => 12,
        1024..=2047 => 14,
        _ => 16,
    };
    packets >= needed
}

/// Longest text (plaintext or ciphertext without tag) per packet: ChaCha20's 32-bit block
/// counter starts at 1 for data.
pub const MAX_TEXT_LEN: usize = (u32::MAX as usize - 1) * 64;

/// A batch was malformed; nothing in it was processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("job {index}: output is {got} bytes, needs at least {need}")]
    OutputTooShort {
        index: usize,
        need: usize,
        got: usize,
    },
    #[error("job {index}: text longer than {MAX_TEXT_LEN} bytes")]
    TooLong { index: usize },
    #[error("path {} is not available on this CPU", .0.name())]
    Unavailable(Path),
}

/// Seal every job (plaintext `input` → ciphertext and tag in `output`) on the best path.
pub fn seal_batch(jobs: &mut [SealJob<'_>]) -> Result<(), BatchError> {
    drive(Path::Auto, jobs).map(drop)
}

/// [`seal_batch`] on a chosen path.
pub fn seal_batch_on(path: Path, jobs: &mut [SealJob<'_>]) -> Result<(), BatchError> {
    drive(path, jobs).map(drop)
}

/// Seal every job in place (plaintext then `TAG_LEN` bytes of room for the tag).
pub fn seal_batch_in_place(jobs: &mut [SealInPlaceJob<'_>]) -> Result<(), BatchError> {
    drive(Path::Auto, jobs).map(drop)
}

/// [`seal_batch_in_place`] on a chosen path.
pub fn seal_batch_in_place_on(
    path: Path,
    jobs: &mut [SealInPlaceJob<'_>],
) -> Result<(), BatchError> {
    drive(path, jobs).map(drop)
}

/// Open every job (ciphertext and tag in `input` → plaintext in `output`); returns how many
/// failed. Each job's verdict is in [`OpenJob::result`].
pub fn open_batch(jobs: &mut [OpenJob<'_>]) -> Result<usize, BatchError> {
    drive(Path::Auto, jobs)
}

/// [`open_batch`] on a chosen path.
pub fn open_batch_on(path: Path, jobs: &mut [OpenJob<'_>]) -> Result<usize, BatchError> {
    drive(path, jobs)
}

/// Open every job in place; returns how many failed. On success the plaintext is the first
/// [`OpenInPlaceJob::result`] bytes of the buffer.
pub fn open_batch_in_place(jobs: &mut [OpenInPlaceJob<'_>]) -> Result<usize, BatchError> {
    drive(Path::Auto, jobs)
}

/// [`open_batch_in_place`] on a chosen path.
pub fn open_batch_in_place_on(
    path: Path,
    jobs: &mut [OpenInPlaceJob<'_>],
) -> Result<usize, BatchError> {
    drive(path, jobs)
}

/// Seal general RFC 8439 jobs (any nonce and AAD) on a chosen path.
pub fn seal_aead_on(path: Path, jobs: &mut [AeadJob<'_>]) -> Result<(), BatchError> {
    jobs.iter_mut().for_each(|j| j.sealing = true);
    drive(path, jobs).map(drop)
}

/// Open general RFC 8439 jobs on a chosen path; returns how many failed.
pub fn open_aead_on(path: Path, jobs: &mut [AeadJob<'_>]) -> Result<usize, BatchError> {
    jobs.iter_mut().for_each(|j| j.sealing = false);
    drive(path, jobs)
}

/// Raw ChaCha20 (RFC 8439 §2.4) of `data` in place from block `counter`, in lane `lane` of a
/// forced path: a known-answer-test hook for the kernels themselves. Lanes the path does not
/// have are refused as [`BatchError::Unavailable`].
pub fn chacha20_xor_on(
    path: Path,
    lane: usize,
    key: &[u8; 32],
    nonce: &[u8; 12],
    counter: u32,
    data: &mut [u8],
) -> Result<(), BatchError> {
    let kernel = kernel(path, lane)?;
    // SAFETY: `kernel` only returns paths whose CPU features were detected.
    unsafe {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => engine::chacha20_xor::<avx512::Avx512>(lane, key, nonce, counter, data),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Ifma => {
                engine::chacha20_xor::<avx512_ifma::Avx512Ifma>(lane, key, nonce, counter, data)
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx512IfmaEmulated => engine::chacha20_xor::<avx512_ifma::Avx512IfmaEmulated>(
                lane, key, nonce, counter, data,
            ),
            Path::Avx2 => engine::chacha20_xor::<avx2::Avx2>(lane, key, nonce, counter, data),
            _ => engine::chacha20_xor::<portable::Portable>(lane, key, nonce, counter, data),
        }
    }
    Ok(())
}

/// Raw Poly1305 (RFC 8439 §2.5) of `msg` under the one-time `key`, in lane `lane` of a forced
/// path; a known-answer-test hook like [`chacha20_xor_on`].
pub fn poly1305_on(
    path: Path,
    lane: usize,
    key: &[u8; 32],
    msg: &[u8],
) -> Result<[u8; 16], BatchError> {
    let kernel = kernel(path, lane)?;
    // SAFETY: `kernel` only returns paths whose CPU features were detected.
    Ok(unsafe {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => engine::poly1305_mac::<avx512::Avx512>(lane, key, msg),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Ifma => engine::poly1305_mac::<avx512_ifma::Avx512Ifma>(lane, key, msg),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512IfmaEmulated => {
                engine::poly1305_mac::<avx512_ifma::Avx512IfmaEmulated>(lane, key, msg)
            }
            Path::Avx2 => engine::poly1305_mac::<avx2::Avx2>(lane, key, msg),
            _ => engine::poly1305_mac::<portable::Portable>(lane, key, msg),
        }
    })
}

/// The concrete path for a raw kernel call in `lane`.
fn kernel(path: Path, lane: usize) -> Result<Path, BatchError> {
    let p = if path == Path::Auto {
        Path::detect()
    } else {
        path
    };
    let lanes = lanes(p);
    if !p.is_available() || lane >= lanes {
        return Err(BatchError::Unavailable(path));
    }
    Ok(p)
}

/// Validate the whole batch, then run it chunk by chunk; returns how many jobs failed.
fn drive<J: Job>(path: Path, jobs: &mut [J]) -> Result<usize, BatchError> {
    if path != Path::Auto && !path.is_available() {
        return Err(BatchError::Unavailable(path));
    }
    let mut longest = 0;
    for (index, j) in jobs.iter().enumerate() {
        j.check(index)?;
        longest = longest.max(j.text_len());
    }
    // A batch that is one lane group too small to pay for its packet size goes straight to
    // ring: sorting and grouping it cost up to a tenth of ring's time (ten 256-byte packets).
    let one_small_group = jobs.len() <= MAX_LANES && !auto_simd_pays(jobs.len(), longest);
    if path == Path::Auto && (one_small_group || !Path::detect().is_avx512()) {
        return Ok(jobs.iter_mut().map(|j| usize::from(!j.ring())).sum());
    }
    let (path, simd_pays): (Path, fn(usize, usize) -> bool) = match path {
        Path::Auto => (Path::detect(), auto_simd_pays),
        forced => (forced, |_, _| true),
    };
    let lanes = lanes(path);
    let mut failed = 0;
    for chunk in jobs.chunks_mut(CHUNK) {
        // Longest first, so that each lane group holds packets of similar lengths.
        let mut order = [(0usize, 0usize); CHUNK];
        for (o, (i, j)) in order.iter_mut().zip(chunk.iter().enumerate()) {
            *o = (j.text_len(), i);
        }
        let order = &mut order[..chunk.len()];
        // Bursts of equal-sized packets (full-MTU traffic) are common and already in order.
        if order.windows(2).any(|w| w[0].0 < w[1].0) {
            order.sort_unstable_by(|a, b| b.cmp(a));
        }
        let mut rank = [0usize; CHUNK];
        for (r, &(_, i)) in order.iter().enumerate() {
            rank[i] = r;
        }
        let mut sorted: [Option<&mut J>; CHUNK] = [const { None }; CHUNK];
        for (i, j) in chunk.iter_mut().enumerate() {
            sorted[rank[i]] = Some(j);
        }
        for group in sorted[..order.len()].chunks_mut(lanes) {
            let n = group.len();
            let mut jobs = group.iter_mut().flatten();
            let mut core: [Option<CoreJob<'_>>; MAX_LANES] =
                std::array::from_fn(|_| jobs.next().and_then(|j| j.core()));
            let mut refs = core.each_mut().map(Option::as_mut);
            run(path, &mut refs[..n], simd_pays);
            let oks = core.each_ref().map(|c| c.as_ref().is_some_and(|c| c.ok));
            for (j, ok) in group.iter_mut().flatten().zip(oks) {
                j.finish(ok);
                failed += usize::from(!ok);
            }
        }
    }
    Ok(failed)
}

/// Packets per lane group on a concrete path.
fn lanes(path: Path) -> usize {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => avx512::Avx512::LANES,
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Ifma => avx512_ifma::Avx512Ifma::LANES,
        #[cfg(target_arch = "x86_64")]
        Path::Avx512IfmaEmulated => avx512_ifma::Avx512IfmaEmulated::LANES,
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => avx2::Avx2::LANES,
        _ => portable::Portable::LANES,
    }
}

/// Dispatch one lane group to an available path (not `Auto`).
fn run(path: Path, group: &mut [Option<&mut CoreJob<'_>>], simd_pays: fn(usize, usize) -> bool) {
    // SAFETY: `drive` checked `is_available` for forced paths and `detect` only returns
    // available ones, so the engine's target features are present.
    unsafe {
        match path {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => engine::run::<avx512::Avx512>(group, simd_pays),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Ifma => engine::run::<avx512_ifma::Avx512Ifma>(group, simd_pays),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512IfmaEmulated => {
                engine::run::<avx512_ifma::Avx512IfmaEmulated>(group, simd_pays)
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => engine::run::<avx2::Avx2>(group, simd_pays),
            _ => engine::run::<portable::Portable>(group, simd_pays),
        }
    }
}
