//! `sluice-bench crypto`: batched ChaCha20-Poly1305 (`sluice::crypto::batch`) against ring and
//! RustCrypto's `chacha20poly1305`, on one pinned core, in the same run.
//!
//! Each measurement seals or opens a batch of packets (64 by default, each with its own key and
//! counter, WireGuard nonce, empty AAD), plus a batch of one at 64 and 1420 B. All three
//! implementations work in place: sealing re-seals the same buffers; opening first copies the
//! sealed packet into the work buffer (the same copy for every implementation, since an open
//! in place consumes its input), then opens it. ring and RustCrypto go packet by packet, with
//! the key set up per packet as a worker with many peers would.
//!
//! Time is the benchmark thread's CPU time, not the wall clock, so time spent descheduled on a
//! loaded machine is charged to no one; contenders are interleaved round by round as well.
//!
//! Nothing asserts on speed; a run fails only if an open it timed did not verify.

use crate::harness::{self, Timing};
use crate::report::{fmt_num, Machine, Report};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use serde::Serialize;
use sluice::crypto::batch::{self, OpenInPlaceJob, Path, SealInPlaceJob, TAG_LEN};
use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;

const SIZES: [usize; 7] = [64, 128, 256, 512, 1024, 1420, 8192];
const SINGLE_SIZES: [usize; 2] = [64, 1420];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Core to pin the benchmark thread to [default: the last core]
    #[arg(long)]
    core: Option<usize>,
    /// Timed seconds per contender per round [default: 0.1, or 0.05 with --quick]
    #[arg(long)]
    seconds: Option<f64>,
    /// Rounds per measurement, each timing every contender in turn; medians are reported
    /// [default: 7, or 1 with --quick]
    #[arg(long)]
    repeat: Option<usize>,
    /// Packets per batch (each with its own key)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch: u16,
    /// Short timings, for smoke tests
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Packet sizes in bytes (comma-separated, each 1 to 65535; any size, not only the
    /// defaults); batches of one are measured at those of 64 and 1420 given
    /// [default: 64,128,256,512,1024,1420,8192]
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Only these contenders (comma-separated: auto, avx512-ifma, avx512, avx2, portable, ring,
    /// rustcrypto); a sluice path this CPU lacks is an error [default: all this CPU has but
    /// portable]
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Seal,
    Open,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Impl {
    Sluice,
    Ring,
    Rustcrypto,
}

/// One measurement, as written to JSON.
#[derive(Debug, Serialize)]
struct Record {
    op: Op,
    size: usize,
    batch: usize,
    #[serde(rename = "impl")]
    imp: Impl,
    /// The sluice path ("auto" is what a worker gets); the implementation name otherwise.
    path: String,
    gb_per_s: f64,
    min_gb_per_s: f64,
    max_gb_per_s: f64,
    /// Median over interleaved rounds of this rate over ring's in the same round.
    vs_ring: f64,
}

#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    schema: &'static str,
    subcommand: &'static str,
    machine: &'a Machine,
    params: serde_json::Value,
    results: &'a [Record],
    notes: &'a [String],
}

/// The packets of one measurement: keys, counters, pristine sealed copies and work buffers.
struct Workload {
    keys: Vec<[u8; 32]>,
    counters: Vec<u64>,
    sealed: Vec<Vec<u8>>,
    work: Vec<Vec<u8>>,
}

impl Workload {
    fn new(batch: usize, size: usize) -> Workload {
        let keys: Vec<[u8; 32]> = (0..batch)
            .map(|i| std::array::from_fn(|j| (i * 31 + j * 7 + 1) as u8))
            .collect();
        let counters: Vec<u64> = (0..batch as u64).map(|i| i * 1_000_003 + 5).collect();
        let sealed: Vec<Vec<u8>> = (0..batch)
            .map(|i| {
                let mut b: Vec<u8> = (0..size + TAG_LEN).map(|j| (i + j) as u8).collect();
                sluice::crypto::seal_in_place(&keys[i], counters[i], &[], &mut b);
                b
            })
            .collect();
        let work = sealed.clone();
        Workload {
            keys,
            counters,
            sealed,
            work,
        }
    }

    fn restore(&mut self) {
        for (w, s) in self.work.iter_mut().zip(&self.sealed) {
            w.copy_from_slice(s);
        }
    }

    /// One batch with `imp`; false if an open failed.
    fn run(&mut self, op: Op, imp: Impl, path: Path) -> bool {
        if op == Op::Open {
            self.restore();
        }
        match imp {
            Impl::Sluice => self.sluice(op, path),
            Impl::Ring => self.ring(op),
            Impl::Rustcrypto => self.rustcrypto(op),
        }
    }

    fn sluice(&mut self, op: Op, path: Path) -> bool {
        let (keys, counters) = (&self.keys, &self.counters);
        if let [b] = &mut self.work[..] {
            // A batch of one on the stack, as a caller with one packet would: no allocation.
            return match op {
                Op::Seal => batch::seal_batch_in_place_on(
                    path,
                    &mut [SealInPlaceJob::new(&keys[0], counters[0], b)],
                )
                .is_ok(),
                Op::Open => {
                    batch::open_batch_in_place_on(
                        path,
                        &mut [OpenInPlaceJob::new(&keys[0], counters[0], b)],
                    ) == Ok(0)
                }
            };
        }
        match op {
            Op::Seal => {
                let mut jobs: Vec<SealInPlaceJob> = self
                    .work
                    .iter_mut()
                    .enumerate()
                    .map(|(i, b)| SealInPlaceJob::new(&keys[i], counters[i], b))
                    .collect();
                batch::seal_batch_in_place_on(path, &mut jobs).is_ok()
            }
            Op::Open => {
                let mut jobs: Vec<OpenInPlaceJob> = self
                    .work
                    .iter_mut()
                    .enumerate()
                    .map(|(i, b)| OpenInPlaceJob::new(&keys[i], counters[i], b))
                    .collect();
                batch::open_batch_in_place_on(path, &mut jobs) == Ok(0)
            }
        }
    }

    fn ring(&mut self, op: Op) -> bool {
        let mut ok = true;
        for (i, b) in self.work.iter_mut().enumerate() {
            match op {
                Op::Seal => sluice::crypto::seal_in_place(&self.keys[i], self.counters[i], &[], b),
                Op::Open => {
                    ok &= sluice::crypto::open_in_place(&self.keys[i], self.counters[i], &[], b)
                        .is_ok()
                }
            }
        }
        ok
    }

    fn rustcrypto(&mut self, op: Op) -> bool {
        let mut ok = true;
        for (i, b) in self.work.iter_mut().enumerate() {
            let cipher = ChaCha20Poly1305::new(&self.keys[i].into());
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&self.counters[i].to_le_bytes());
            let nonce = Nonce::from(n);
            let split = b.len() - TAG_LEN;
            let (data, tag) = b.split_at_mut(split);
            match op {
                Op::Seal => match cipher.encrypt_inout_detached(&nonce, &[], data.into()) {
                    Ok(t) => tag.copy_from_slice(&t),
                    Err(_) => ok = false,
                },
                Op::Open => {
                    let t = chacha20poly1305::Tag::try_from(&*tag).unwrap_or_default();
                    ok &= cipher
                        .decrypt_inout_detached(&nonce, &[], data.into(), &t)
                        .is_ok();
                }
            }
        }
        ok
    }
}

/// Every contender, in report order.
const ALL: [(Impl, Path); 7] = [
    (Impl::Sluice, Path::Auto),
    (Impl::Sluice, Path::Avx512Ifma),
    (Impl::Sluice, Path::Avx512),
    (Impl::Sluice, Path::Avx2),
    (Impl::Sluice, Path::Portable),
    (Impl::Ring, Path::Auto),
    (Impl::Rustcrypto, Path::Auto),
];

/// The implementations to compare: those named in `only` (an unknown name, or a sluice path
/// this CPU cannot run, is an error), or by default every one this CPU has except the
/// portable path.
fn contenders(only: &[String]) -> Result<Vec<(Impl, Path)>, String> {
    if only.is_empty() {
        return Ok(ALL
            .into_iter()
            .filter(|&(i, p)| i != Impl::Sluice || (p.is_available() && p != Path::Portable))
            .collect());
    }
    for name in only {
        let Some(&(imp, path)) = ALL.iter().find(|&&(i, p)| label(i, p) == *name) else {
            let names: Vec<String> = ALL.iter().map(|&(i, p)| label(i, p)).collect();
            return Err(format!(
                "--only: unknown contender '{name}' (one of: {})",
                names.join(", ")
            ));
        };
        if imp == Impl::Sluice && !path.is_available() {
            return Err(format!(
                "--only: sluice path '{name}' is not available on this CPU (it needs {})",
                match path {
                    Path::Avx512Ifma => "AVX-512F/BW and AVX-512 IFMA",
                    Path::Avx512 => "AVX-512F/BW",
                    _ => "AVX2",
                }
            ));
        }
    }
    Ok(ALL
        .into_iter()
        .filter(|&(i, p)| only.contains(&label(i, p)))
        .collect())
}

/// The largest packet size `--sizes` takes (a UDP datagram's payload is smaller still).
const MAX_SIZE: usize = 65_535;

fn label(imp: Impl, path: Path) -> String {
    match imp {
        Impl::Sluice => path.name().to_string(),
        Impl::Ring => "ring".to_string(),
        Impl::Rustcrypto => "rustcrypto".to_string(),
    }
}

/// The calling thread's CPU time: time the thread was descheduled (other processes' builds on
/// a shared machine) does not count, which the wall clock would charge to whichever
/// contender happened to be running.
fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// As `harness::batched`, timed in thread CPU time: `work(n)` runs `n` batches, `n` doubling
/// until one step takes at least 2 ms.
fn cpu_batched(mut work: impl FnMut(u64) -> u64) -> impl FnMut() -> harness::Sample {
    let mut n: u64 = 1;
    move || {
        let start = thread_cpu_time();
        let ops = work(n);
        let elapsed = thread_cpu_time().saturating_sub(start);
        if elapsed < Duration::from_millis(2) && n < 1 << 32 {
            n *= 2;
        }
        harness::Sample { ops, elapsed }
    }
}

/// Measure every contender on one shape, interleaved: each round times every contender in
/// turn for `timing.seconds`, so load from other processes hits them alike. Each record's
/// `vs_ring` is the median over rounds of its rate divided by ring's in the same round.
fn measure_shape(
    timing: &Timing,
    op: Op,
    size: usize,
    batch: usize,
    contenders: &[(Impl, Path)],
) -> Result<Vec<Record>, String> {
    let failed: Vec<Cell<bool>> = contenders.iter().map(|_| Cell::new(false)).collect();
    let mut steps: Vec<Box<dyn FnMut() -> harness::Sample + '_>> = contenders
        .iter()
        .zip(&failed)
        .map(|(&(imp, path), failed)| {
            let mut w = Workload::new(batch, size);
            let step = cpu_batched(move |n| {
                for _ in 0..n {
                    if !w.run(op, imp, path) {
                        failed.set(true);
                    }
                }
                n
            });
            Box::new(step) as Box<dyn FnMut() -> harness::Sample>
        })
        .collect();
    let warm = Timing {
        seconds: timing.warmup,
        warmup: 0.0,
        repeat: 1,
    };
    let once = Timing {
        warmup: 0.0,
        repeat: 1,
        ..*timing
    };
    for step in &mut steps {
        harness::measure(&warm, &mut **step);
    }
    let bytes = (batch * size) as f64 / 1e9;
    let mut gb: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    for _ in 0..timing.repeat {
        for (step, g) in steps.iter_mut().zip(&mut gb) {
            g.extend(
                harness::measure(&once, &mut **step)
                    .iter()
                    .map(|r| r * bytes),
            );
        }
    }
    drop(steps);
    if let Some(((imp, path), _)) = contenders.iter().zip(&failed).find(|(_, f)| f.get()) {
        return Err(format!(
            "{op:?} {size} B with {} did not verify",
            label(*imp, *path)
        ));
    }
    let ring = contenders.iter().position(|c| c.0 == Impl::Ring);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(contenders
        .iter()
        .zip(&gb)
        .map(|(&(imp, path), g)| {
            let vs_ring = ring.map_or(f64::NAN, |r| {
                median(g.iter().zip(&gb[r]).map(|(a, b)| a / b).collect())
            });
            let mut sorted = g.clone();
            sorted.sort_by(f64::total_cmp);
            Record {
                op,
                size,
                batch,
                imp,
                path: label(imp, path),
                gb_per_s: median(g.clone()),
                min_gb_per_s: sorted[0],
                max_gb_per_s: sorted[sorted.len() - 1],
                vs_ring,
            }
        })
        .collect())
}

pub fn run(args: &Args) -> Result<(), String> {
    let mut machine = Machine::collect();
    machine.pinned_core = Some(harness::pin(args.core)?);
    let timing = Timing {
        seconds: args.seconds.unwrap_or(if args.quick { 0.05 } else { 0.1 }),
        warmup: if args.quick { 0.02 } else { 0.1 },
        repeat: args.repeat.unwrap_or(if args.quick { 1 } else { 7 }).max(1),
    };
    let batch = usize::from(args.batch);
    let chosen = contenders(&args.only)?;
    if let Some(bad) = args.sizes.iter().find(|&&s| s == 0 || s > MAX_SIZE) {
        return Err(format!(
            "--sizes: {bad} is not a packet size from 1 to {MAX_SIZE} bytes"
        ));
    }
    let sizes: Vec<usize> = if args.sizes.is_empty() {
        SIZES.to_vec()
    } else {
        let mut s = args.sizes.clone();
        s.dedup();
        s
    };
    let singles: Vec<usize> = SINGLE_SIZES
        .into_iter()
        .filter(|s| sizes.contains(s))
        .collect();
    let params = serde_json::json!({
        "batch": batch, "sizes": sizes, "single_sizes": singles,
        "seconds": timing.seconds, "repeat": timing.repeat,
        "auto_path": Path::detect().name(),
    });
    let report = Report::new("crypto", machine.clone(), params.clone());
    print!("{}", report.header());
    let shapes = sizes
        .iter()
        .map(|&s| (s, batch))
        .chain(singles.iter().map(|&s| (s, 1)));
    let mut records = Vec::new();
    println!(
        "{:<5} {:>6} {:>5}  {:<12} {:>8} {:>8}",
        "op", "size", "batch", "impl/path", "GB/s", "vs ring"
    );
    for (size, batch) in shapes {
        for op in [Op::Seal, Op::Open] {
            let rows = measure_shape(&timing, op, size, batch, &chosen)?;
            for r in &rows {
                println!(
                    "{:<5} {:>6} {:>5}  {:<12} {:>8} {:>7.2}x",
                    format!("{:?}", r.op).to_lowercase(),
                    r.size,
                    r.batch,
                    r.path,
                    fmt_num(r.gb_per_s),
                    r.vs_ring
                );
            }
            records.extend(rows);
        }
    }
    let notes = vec![
        "GB/s = 1e9 bytes of plaintext per second of the thread's CPU time; one pinned core; in \
         place; opens include copying the sealed packet into the work buffer (same for all implementations)"
            .to_string(),
        format!(
            "sluice 'auto' resolves to {} on this CPU",
            Path::detect().name()
        ),
    ];
    for n in &notes {
        println!("  note: {n}");
    }
    if let Some(path) = &args.json {
        let out = JsonReport {
            schema: "sluice-bench/1",
            subcommand: "crypto",
            machine: &machine,
            params,
            results: &records,
            notes: &notes,
        };
        let json = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}
