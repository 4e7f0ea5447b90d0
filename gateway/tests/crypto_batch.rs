//! The batched ChaCha20-Poly1305 (`sluice::crypto::batch`) on every path this CPU has:
//! RFC 8439 known answers, all of Wycheproof's ChaCha20-Poly1305 cases with 96-bit nonces,
//! randomized differential tests against ring (through `sluice::crypto`, the per-packet
//! wrapper), tamper isolation within a batch, and a proptest against ring.
//!
//! The AVX-512 IFMA path runs twice: on the real instructions where the CPU has them
//! (`avx512-ifma`, reported as skipped elsewhere), and everywhere with AVX-512 on an exact
//! software emulation of the two instructions (`avx512-ifma-emulated`), so its radix-2^44
//! Poly1305 is tested on CPUs without IFMA too.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use proptest::prelude::*;
use sluice::crypto::batch::{
    chacha20_xor_on, open_aead_on, open_batch_in_place_on, open_batch_on, poly1305_on,
    seal_aead_on, seal_batch_in_place_on, seal_batch_on, AeadJob, BatchError, OpenInPlaceJob,
    OpenJob, Path, SealInPlaceJob, SealJob, TAG_LEN,
};
use sluice::crypto::{open_in_place, seal_in_place};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test vector hex"))
        .collect()
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    hex(s).try_into().expect("test vector length")
}

/// Why a path cannot run here.
fn missing(p: Path) -> &'static str {
    match p {
        Path::Avx2 => "CPU lacks AVX2",
        Path::Avx512 | Path::Avx512IfmaEmulated => "CPU lacks AVX-512F/BW",
        Path::Avx512Ifma => {
            "CPU lacks AVX-512 IFMA; its arithmetic is tested as avx512-ifma-emulated instead"
        }
        _ => "CPU lacks it",
    }
}

/// Every forced path the CPU supports, plus the emulated IFMA path and `Auto`; prints which
/// ran and which were skipped, and why.
fn paths(test: &str) -> Vec<Path> {
    let mut run = Vec::new();
    for p in Path::FORCED
        .into_iter()
        .chain([Path::Avx512IfmaEmulated, Path::Auto])
    {
        if p.is_available() {
            run.push(p);
        } else {
            eprintln!("{test}: SKIPPED path {} ({})", p.name(), missing(p));
        }
    }
    let names: Vec<&str> = run.iter().map(|p| p.name()).collect();
    eprintln!(
        "{test}: ran paths {names:?} (auto = {})",
        Path::detect().name()
    );
    run
}

/// The lane indices a forced path has (`Auto` resolves to the detected path).
fn lanes(p: Path) -> usize {
    let p = if p == Path::Auto { Path::detect() } else { p };
    match p {
        Path::Avx512 | Path::Avx512Ifma | Path::Avx512IfmaEmulated => 16,
        _ => 8,
    }
}

const LADIES: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";

fn key_0_to_31() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

#[test]
fn rfc8439_chacha20_block_function() {
    // §2.3.2
    let nonce = arr::<12>("000000090000004a00000000");
    let want = hex(
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e
         d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e",
    );
    for p in paths("rfc8439_chacha20_block_function") {
        for lane in 0..lanes(p) {
            let mut block = [0u8; 64];
            chacha20_xor_on(p, lane, &key_0_to_31(), &nonce, 1, &mut block).unwrap();
            assert_eq!(block.to_vec(), want, "{p:?} lane {lane}");
        }
    }
}

#[test]
fn rfc8439_chacha20_encryption() {
    // §2.4.2
    let nonce = arr::<12>("000000000000004a00000000");
    let want = hex(
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b
         f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8
         07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736
         5af90bbf74a35be6b40b8eedf2785e42874d",
    );
    for p in paths("rfc8439_chacha20_encryption") {
        for lane in 0..lanes(p) {
            let mut data = LADIES.to_vec();
            chacha20_xor_on(p, lane, &key_0_to_31(), &nonce, 1, &mut data).unwrap();
            assert_eq!(data, want, "{p:?} lane {lane}");
        }
    }
}

#[test]
fn rfc8439_poly1305() {
    // §2.5.2, plus a full-blocks-only message (the AEAD's case) checked against itself
    // across paths.
    let key = arr::<32>("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b");
    let want = arr::<16>("a8061dc1305136c6c22b8baf0c0127a9");
    let long: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    let reference = poly1305_on(Path::Portable, 0, &key, &long).unwrap();
    for p in paths("rfc8439_poly1305") {
        for lane in 0..lanes(p) {
            let tag = poly1305_on(p, lane, &key, b"Cryptographic Forum Research Group").unwrap();
            assert_eq!(tag, want, "{p:?} lane {lane}");
            assert_eq!(poly1305_on(p, lane, &key, &long).unwrap(), reference);
        }
    }
}

#[test]
fn rfc8439_aead() {
    // §2.8.2, sealed and opened as a batch that puts the vector in every lane.
    let key = arr::<32>("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    let nonce = arr::<12>("070000004041424344454647");
    let aad = hex("50515253c0c1c2c3c4c5c6c7");
    let mut want = hex(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
         3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
         92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
         3ff4def08e4b7a9de576d26586cec64b6116",
    );
    want.extend(hex("1ae10b594f09e26a7e902ecbd0600691"));
    for p in paths("rfc8439_aead") {
        let n = 17;
        let mut outs = vec![vec![0u8; LADIES.len() + TAG_LEN]; n];
        let mut jobs: Vec<AeadJob> = outs
            .iter_mut()
            .map(|o| AeadJob::new(&key, nonce, &aad, LADIES, o))
            .collect();
        seal_aead_on(p, &mut jobs).unwrap();
        drop(jobs);
        assert!(outs.iter().all(|o| *o == want), "{p:?} seal");
        let mut plains = vec![vec![0u8; LADIES.len()]; n];
        let mut jobs: Vec<AeadJob> = plains
            .iter_mut()
            .map(|o| AeadJob::new(&key, nonce, &aad, &want, o))
            .collect();
        assert_eq!(open_aead_on(p, &mut jobs).unwrap(), 0, "{p:?} open");
        assert!(jobs.iter().all(|j| j.result() == Ok(LADIES.len())));
        drop(jobs);
        assert!(plains.iter().all(|o| o == LADIES), "{p:?} open");
    }
}

#[test]
fn wycheproof_chacha20_poly1305() {
    use wycheproof::aead::{TestName, TestSet};
    use wycheproof::TestResult;
    let set = TestSet::load(TestName::ChaCha20Poly1305).expect("wycheproof data");
    let cases: Vec<_> = set
        .test_groups
        .iter()
        .filter(|g| g.nonce_size == 96 && g.tag_size == 128 && g.key_size == 256)
        .flat_map(|g| &g.tests)
        .collect();
    assert!(cases.len() > 250, "only {} cases", cases.len());
    let keys: Vec<[u8; 32]> = cases
        .iter()
        .map(|c| c.key.as_slice().try_into().unwrap())
        .collect();
    let nonces: Vec<[u8; 12]> = cases
        .iter()
        .map(|c| c.nonce.as_slice().try_into().unwrap())
        .collect();
    for p in paths("wycheproof_chacha20_poly1305") {
        // Seal every case in one batch: valid cases must reproduce ct || tag.
        let mut outs: Vec<Vec<u8>> = cases
            .iter()
            .map(|c| vec![0; c.pt.len() + TAG_LEN])
            .collect();
        let mut jobs: Vec<AeadJob> = cases
            .iter()
            .zip(&mut outs)
            .enumerate()
            .map(|(i, (c, o))| AeadJob::new(&keys[i], nonces[i], &c.aad, &c.pt, o))
            .collect();
        seal_aead_on(p, &mut jobs).unwrap();
        drop(jobs);
        for (c, o) in cases.iter().zip(&outs) {
            if c.result != TestResult::Invalid {
                assert_eq!(&o[..c.pt.len()], &c.ct[..], "{p:?} tc {} ct", c.tc_id);
                assert_eq!(&o[c.pt.len()..], &c.tag[..], "{p:?} tc {} tag", c.tc_id);
            }
        }
        // Open every case in one batch: verdicts and plaintexts.
        let sealed: Vec<Vec<u8>> = cases
            .iter()
            .map(|c| [&c.ct[..], &c.tag[..]].concat())
            .collect();
        let mut plains: Vec<Vec<u8>> = cases.iter().map(|c| vec![0xa5; c.ct.len()]).collect();
        let mut jobs: Vec<AeadJob> = cases
            .iter()
            .zip(&mut plains)
            .enumerate()
            .map(|(i, (c, o))| AeadJob::new(&keys[i], nonces[i], &c.aad, &sealed[i], o))
            .collect();
        open_aead_on(p, &mut jobs).unwrap();
        let verdicts: Vec<_> = jobs.iter().map(|j| j.result()).collect();
        drop(jobs);
        let mut invalid = 0;
        for ((c, v), o) in cases.iter().zip(verdicts).zip(&plains) {
            if c.result == TestResult::Invalid {
                invalid += 1;
                assert!(v.is_err(), "{p:?} tc {} accepted", c.tc_id);
                assert!(
                    o.iter().all(|b| *b == 0),
                    "{p:?} tc {} output not zeroed",
                    c.tc_id
                );
            } else {
                assert_eq!(v, Ok(c.pt.len()), "{p:?} tc {} rejected", c.tc_id);
                assert_eq!(o, &c.pt[..], "{p:?} tc {} plaintext", c.tc_id);
            }
        }
        eprintln!(
            "wycheproof: {p:?}: {} cases ({invalid} invalid) passed",
            cases.len()
        );
    }
}

/// splitmix64: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

struct Packet {
    key: [u8; 32],
    counter: u64,
    plain: Vec<u8>,
    /// ring's ciphertext || tag.
    sealed: Vec<u8>,
}

fn packet(rng: &mut Rng, len: usize) -> Packet {
    let key: [u8; 32] = rng.bytes(32).try_into().unwrap();
    let counter = rng.next() >> rng.below(64);
    let plain = rng.bytes(len);
    let mut sealed = plain.clone();
    sealed.extend_from_slice(&[0; TAG_LEN]);
    seal_in_place(&key, counter, &[], &mut sealed);
    Packet {
        key,
        counter,
        plain,
        sealed,
    }
}

/// Seal and open `pkts` as one batch on `path`, out of place and in place; all must match ring.
fn check_against_ring(path: Path, pkts: &[Packet], what: &str) {
    // Seal, out of place.
    let mut outs: Vec<Vec<u8>> = pkts
        .iter()
        .map(|p| vec![0x5a; p.plain.len() + TAG_LEN])
        .collect();
    let mut jobs: Vec<SealJob> = pkts
        .iter()
        .zip(&mut outs)
        .map(|(p, o)| SealJob::new(&p.key, p.counter, &p.plain, o))
        .collect();
    seal_batch_on(path, &mut jobs).unwrap();
    drop(jobs);
    for (i, (p, o)) in pkts.iter().zip(&outs).enumerate() {
        assert!(
            *o == p.sealed,
            "{path:?} {what}: seal packet {i} (len {})",
            p.plain.len()
        );
    }
    // Seal, in place.
    let mut bufs: Vec<Vec<u8>> = pkts
        .iter()
        .map(|p| [&p.plain[..], &[0; TAG_LEN]].concat())
        .collect();
    let mut jobs: Vec<SealInPlaceJob> = pkts
        .iter()
        .zip(&mut bufs)
        .map(|(p, b)| SealInPlaceJob::new(&p.key, p.counter, b))
        .collect();
    seal_batch_in_place_on(path, &mut jobs).unwrap();
    drop(jobs);
    for (i, (p, b)) in pkts.iter().zip(&bufs).enumerate() {
        assert!(*b == p.sealed, "{path:?} {what}: seal in place packet {i}");
    }
    // Open, out of place.
    let mut outs: Vec<Vec<u8>> = pkts.iter().map(|p| vec![0x5a; p.plain.len()]).collect();
    let mut jobs: Vec<OpenJob> = pkts
        .iter()
        .zip(&mut outs)
        .map(|(p, o)| OpenJob::new(&p.key, p.counter, &p.sealed, o))
        .collect();
    assert_eq!(
        open_batch_on(path, &mut jobs).unwrap(),
        0,
        "{path:?} {what}: open"
    );
    assert!(jobs
        .iter()
        .zip(pkts)
        .all(|(j, p)| j.result() == Ok(p.plain.len())));
    drop(jobs);
    for (i, (p, o)) in pkts.iter().zip(&outs).enumerate() {
        assert!(*o == p.plain, "{path:?} {what}: open packet {i}");
    }
    // Open, in place.
    let mut bufs: Vec<Vec<u8>> = pkts.iter().map(|p| p.sealed.clone()).collect();
    let mut jobs: Vec<OpenInPlaceJob> = pkts
        .iter()
        .zip(&mut bufs)
        .map(|(p, b)| OpenInPlaceJob::new(&p.key, p.counter, b))
        .collect();
    assert_eq!(
        open_batch_in_place_on(path, &mut jobs).unwrap(),
        0,
        "{path:?} {what}: open in place"
    );
    drop(jobs);
    for (i, (p, b)) in pkts.iter().zip(&bufs).enumerate() {
        assert!(
            b[..p.plain.len()] == p.plain[..],
            "{path:?} {what}: open in place packet {i}"
        );
    }
}

#[test]
fn differential_against_ring_batch_shapes() {
    let mut rng = Rng(0x5eed_0001);
    for path in paths("differential_against_ring_batch_shapes") {
        let equal = rng.below(9217);
        let shapes: Vec<(&str, Vec<usize>)> = vec![
            ("all equal", vec![equal; 37]),
            ("all different", (0..40).map(|_| rng.below(9217)).collect()),
            (
                "one giant among tiny",
                (0..23)
                    .map(|i| if i == 5 { 65_535 } else { rng.below(80) })
                    .collect(),
            ),
            ("single packet", vec![rng.below(9217)]),
            ("single giant", vec![65_535]),
            ("empty packets", vec![0; 19]),
            (
                "block edges",
                (0..48)
                    .map(|i| [0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1420][i % 12])
                    .collect(),
            ),
            ("over one chunk", (0..150).map(|_| rng.below(300)).collect()),
            (
                // Whole 64-byte chunks in every lane but one empty lane per group.
                "long with empty",
                (0..32)
                    .map(|i| if i % 16 == 15 { 0 } else { 1420 })
                    .collect(),
            ),
        ];
        for (what, lens) in shapes {
            let pkts: Vec<Packet> = lens.iter().map(|&n| packet(&mut rng, n)).collect();
            check_against_ring(path, &pkts, what);
        }
        for n in 1..=64 {
            let pkts: Vec<Packet> = (0..n)
                .map(|_| {
                    let n = rng.below(9217);
                    packet(&mut rng, n)
                })
                .collect();
            check_against_ring(path, &pkts, &format!("batch of {n}"));
        }
    }
}

#[test]
fn tampered_packet_fails_alone() {
    let mut rng = Rng(0x5eed_0002);
    for path in paths("tampered_packet_fails_alone") {
        for round in 0..40 {
            let n = 1 + rng.below(33);
            let pkts: Vec<Packet> = (0..n)
                .map(|_| {
                    let n = 1 + rng.below(2000);
                    packet(&mut rng, n)
                })
                .collect();
            let victim = rng.below(n);
            let mut sealed: Vec<Vec<u8>> = pkts.iter().map(|p| p.sealed.clone()).collect();
            // Alternate between the ciphertext and the tag.
            let v = &mut sealed[victim];
            let at = if round % 2 == 0 {
                rng.below(v.len() - TAG_LEN)
            } else {
                v.len() - 1 - rng.below(TAG_LEN)
            };
            v[at] ^= 1 << rng.below(8);
            assert!(
                open_in_place(&pkts[victim].key, pkts[victim].counter, &[], &mut v.clone())
                    .is_err()
            );

            let mut outs: Vec<Vec<u8>> = pkts.iter().map(|p| vec![0x77; p.plain.len()]).collect();
            let mut jobs: Vec<OpenJob> = pkts
                .iter()
                .zip(&mut outs)
                .zip(&sealed)
                .map(|((p, o), s)| OpenJob::new(&p.key, p.counter, s, o))
                .collect();
            assert_eq!(open_batch_on(path, &mut jobs).unwrap(), 1);
            let verdicts: Vec<_> = jobs.iter().map(|j| j.result().is_ok()).collect();
            drop(jobs);
            let mut bufs = sealed.clone();
            let mut jobs: Vec<OpenInPlaceJob> = pkts
                .iter()
                .zip(&mut bufs)
                .map(|(p, b)| OpenInPlaceJob::new(&p.key, p.counter, b))
                .collect();
            assert_eq!(open_batch_in_place_on(path, &mut jobs).unwrap(), 1);
            let verdicts_ip: Vec<_> = jobs.iter().map(|j| j.result().is_ok()).collect();
            drop(jobs);
            for i in 0..n {
                let plain = &pkts[i].plain[..];
                let in_place = &bufs[i][..plain.len()];
                if i == victim {
                    assert!(
                        !verdicts[i] && !verdicts_ip[i],
                        "{path:?}: tampered packet accepted"
                    );
                    assert!(
                        outs[i].iter().all(|b| *b == 0),
                        "{path:?}: output not zeroed"
                    );
                    assert!(
                        in_place.iter().all(|b| *b == 0),
                        "{path:?}: buffer not zeroed"
                    );
                } else {
                    assert!(
                        verdicts[i] && verdicts_ip[i],
                        "{path:?}: packet {i} rejected"
                    );
                    assert_eq!(&outs[i][..], plain, "{path:?}: packet {i}");
                    assert_eq!(in_place, plain, "{path:?}: packet {i} in place");
                }
            }
        }
    }
}

/// Several failing packets inside full lane groups of small packets (the shape `Auto` runs
/// on SIMD): each fails alone, its output is zeroed, its neighbours in the same group open.
#[test]
fn many_tampered_packets_in_full_groups() {
    let mut rng = Rng(0x5eed_0003);
    for path in paths("many_tampered_packets_in_full_groups") {
        for round in 0..12 {
            let n = 16 + rng.below(49);
            let pkts: Vec<Packet> = (0..n)
                .map(|_| {
                    let n = rng.below(200);
                    packet(&mut rng, n)
                })
                .collect();
            let mut sealed: Vec<Vec<u8>> = pkts.iter().map(|p| p.sealed.clone()).collect();
            let bad: Vec<bool> = (0..n).map(|i| (i + round) % 3 == 0).collect();
            for (s, _) in sealed.iter_mut().zip(&bad).filter(|(_, b)| **b) {
                let at = rng.below(s.len());
                s[at] ^= 1 << rng.below(8);
            }
            let want_failed = bad.iter().filter(|b| **b).count();
            let mut outs: Vec<Vec<u8>> = pkts.iter().map(|p| vec![0x77; p.plain.len()]).collect();
            let mut jobs: Vec<OpenJob> = pkts
                .iter()
                .zip(&mut outs)
                .zip(&sealed)
                .map(|((p, o), s)| OpenJob::new(&p.key, p.counter, s, o))
                .collect();
            assert_eq!(open_batch_on(path, &mut jobs).unwrap(), want_failed);
            let verdicts: Vec<bool> = jobs.iter().map(|j| j.result().is_ok()).collect();
            drop(jobs);
            let mut bufs = sealed.clone();
            let mut jobs: Vec<OpenInPlaceJob> = pkts
                .iter()
                .zip(&mut bufs)
                .map(|(p, b)| OpenInPlaceJob::new(&p.key, p.counter, b))
                .collect();
            assert_eq!(
                open_batch_in_place_on(path, &mut jobs).unwrap(),
                want_failed
            );
            drop(jobs);
            for i in 0..n {
                let plain = &pkts[i].plain[..];
                let in_place = &bufs[i][..plain.len()];
                if bad[i] {
                    assert!(!verdicts[i], "{path:?}: tampered packet {i} accepted");
                    assert!(outs[i].iter().all(|b| *b == 0), "{path:?}: {i} not zeroed");
                    assert!(in_place.iter().all(|b| *b == 0), "{path:?}: {i} not zeroed");
                } else {
                    assert!(verdicts[i], "{path:?}: packet {i} rejected");
                    assert_eq!(&outs[i][..], plain, "{path:?}: packet {i}");
                    assert_eq!(in_place, plain, "{path:?}: packet {i} in place");
                }
            }
        }
    }
}

#[test]
fn malformed_batches_are_refused_whole() {
    let key = [1u8; 32];
    for path in paths("malformed_batches_are_refused_whole") {
        let plain = [9u8; 40];
        let (mut ok_out, mut short_out) = ([0u8; 56], [0u8; 55]);
        let mut jobs = [
            SealJob::new(&key, 1, &plain, &mut ok_out),
            SealJob::new(&key, 2, &plain, &mut short_out),
        ];
        assert_eq!(
            seal_batch_on(path, &mut jobs),
            Err(BatchError::OutputTooShort {
                index: 1,
                need: 56,
                got: 55
            })
        );
        assert_eq!(
            ok_out, [0u8; 56],
            "nothing is processed when the batch is refused"
        );
        // A packet shorter than a tag is a failed packet, not a malformed batch.
        let (tiny, mut out) = ([0u8; 15], [0u8; 0]);
        let mut jobs = [OpenJob::new(&key, 1, &tiny, &mut out)];
        assert_eq!(open_batch_on(path, &mut jobs), Ok(1));
        assert!(jobs[0].result().is_err());
        let mut buf = [0u8; 3];
        let mut jobs = [OpenInPlaceJob::new(&key, 1, &mut buf)];
        assert_eq!(open_batch_in_place_on(path, &mut jobs), Ok(1));
    }
}

/// A forced path the CPU lacks is refused as a whole, never silently run on another path.
#[test]
fn unavailable_forced_paths_are_refused() {
    let key = [3u8; 32];
    let mut refused = Vec::new();
    for p in Path::FORCED.into_iter().chain([Path::Avx512IfmaEmulated]) {
        if p.is_available() {
            continue;
        }
        let plain = [1u8; 40];
        let mut out = [0u8; 56];
        let mut jobs = [SealJob::new(&key, 1, &plain, &mut out)];
        assert_eq!(seal_batch_on(p, &mut jobs), Err(BatchError::Unavailable(p)));
        assert_eq!(out, [0u8; 56], "{p:?}: nothing is processed");
        assert_eq!(
            poly1305_on(p, 0, &key, b"x"),
            Err(BatchError::Unavailable(p))
        );
        eprintln!(
            "unavailable_forced_paths_are_refused: {} refused ({})",
            p.name(),
            missing(p)
        );
        refused.push(p);
    }
    assert!(!refused.contains(&Path::Portable) && !refused.contains(&Path::Auto));
    eprintln!(
        "unavailable_forced_paths_are_refused: {} path(s) unavailable on this CPU",
        refused.len()
    );
}

const PROPTEST_PATHS: [Path; 6] = [
    Path::Portable,
    Path::Avx2,
    Path::Avx512,
    Path::Avx512Ifma,
    Path::Avx512IfmaEmulated,
    Path::Auto,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn proptest_matches_ring(
        lens in proptest::collection::vec(0usize..3000, 1..48),
        seed in any::<u64>(),
        path in 0usize..PROPTEST_PATHS.len(),
    ) {
        let path = PROPTEST_PATHS[path];
        if !path.is_available() {
            static SKIPPED: std::sync::Once = std::sync::Once::new();
            SKIPPED.call_once(|| {
                for p in PROPTEST_PATHS.iter().filter(|p| !p.is_available()) {
                    eprintln!("proptest_matches_ring: SKIPPED path {} ({})", p.name(), missing(*p));
                }
            });
        }
        prop_assume!(path.is_available());
        let mut rng = Rng(seed);
        let pkts: Vec<Packet> = lens.iter().map(|&n| packet(&mut rng, n)).collect();
        check_against_ring(path, &pkts, "proptest");
    }
}
