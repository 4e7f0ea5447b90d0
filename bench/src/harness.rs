//! The measurement loop shared by the subcommands: pinning, warm-up, timed repeats, and the
//! process's resident memory.
//!
//! A measurement is a sequence of *steps*, each of which reports how many operations it did and
//! how long the timed part of it took. Steps may do untimed work around their timed part (the
//! handshake benchmark generates the next batch of initiations there), so the clock is read by
//! the step, not around it.

use std::time::{Duration, Instant};

/// What one step did.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub ops: u64,
    pub elapsed: Duration,
}

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Timed seconds per repeat (at least; the last step may overshoot).
    pub seconds: f64,
    /// Untimed seconds of the same work before the first repeat, so caches, branch predictors
    /// and CPU frequency have settled.
    pub warmup: f64,
    pub repeat: usize,
}

/// Run `step` until `seconds` of timed work have accumulated (at least one step); ops/s.
fn rate(seconds: f64, step: &mut dyn FnMut() -> Sample) -> f64 {
    let target = Duration::from_secs_f64(seconds);
    let (mut ops, mut elapsed) = (0u64, Duration::ZERO);
    loop {
        let s = step();
        ops += s.ops;
        elapsed += s.elapsed;
        if elapsed >= target {
            break;
        }
    }
    ops as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Warm up, then measure `timing.repeat` times; one ops/s value per repeat.
pub fn measure(timing: &Timing, mut step: impl FnMut() -> Sample) -> Vec<f64> {
    rate(timing.warmup, &mut step);
    (0..timing.repeat)
        .map(|_| rate(timing.seconds, &mut step))
        .collect()
}

/// Batches longer than this make the clock reads (~20 ns each) negligible.
const MIN_BATCH: Duration = Duration::from_millis(2);
const MAX_BATCH_OPS: u64 = 1 << 32;

/// A step that times `work(n)` for a batch size `n` it grows until one batch takes at least
/// [`MIN_BATCH`], so cheap operations (a few ns each) are not dominated by reading the clock
/// while slow ones still finish a step promptly. `work` returns how many operations it did.
pub fn batched(mut work: impl FnMut(u64) -> u64) -> impl FnMut() -> Sample {
    let mut n: u64 = 16;
    move || {
        let start = Instant::now();
        let ops = work(n);
        let elapsed = start.elapsed();
        // Capped so work that takes no time at all cannot grow the batch without bound.
        if elapsed < MIN_BATCH && n < MAX_BATCH_OPS {
            n *= 2;
        }
        Sample { ops, elapsed }
    }
}

/// Pin the calling thread to `core`, or to the last core if `None` (core 0 tends to take the
/// most interrupts). Returns the core pinned to.
pub fn pin(core: Option<usize>) -> Result<usize, String> {
    let ids = core_affinity::get_core_ids().ok_or("cannot list the cores this process may use")?;
    let id = match core {
        Some(c) => ids.iter().copied().find(|id| id.id == c).ok_or_else(|| {
            let avail: Vec<String> = ids.iter().map(|i| i.id.to_string()).collect();
            format!("core {c} is not available (have {})", avail.join(","))
        })?,
        None => *ids.last().ok_or("no cores available")?,
    };
    if core_affinity::set_for_current(id) {
        Ok(id.id)
    } else {
        Err(format!("could not pin to core {}", id.id))
    }
}

/// The process's resident set in bytes: `/proc/self/statm`'s second field (pages) times the
/// page size.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The page size, from the kernel's auxiliary vector (`AT_PAGESZ`), which needs no libc call;
/// 4 KiB if it can't be read.
fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
    auxv.chunks_exact(16)
        .find_map(|pair| {
            let (key, value) = pair.split_at(8);
            let key = u64::from_ne_bytes(key.try_into().ok()?);
            let value = u64::from_ne_bytes(value.try_into().ok()?);
            (key == AT_PAGESZ).then_some(value)
        })
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_is_sane() {
        let p = page_size();
        assert!(p.is_power_of_two() && p >= 4096, "{p}");
    }

    #[test]
    fn resident_memory_is_readable() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn measure_repeats_and_counts() {
        let timing = Timing {
            seconds: 0.005,
            warmup: 0.001,
            repeat: 3,
        };
        let mut calls = 0u64;
        let rates = measure(
            &timing,
            batched(|n| {
                for i in 0..n {
                    std::hint::black_box(i);
                }
                calls += n;
                n
            }),
        );
        assert_eq!(rates.len(), 3);
        assert!(rates.iter().all(|r| *r > 0.0));
        assert!(calls > 0);
    }
}
