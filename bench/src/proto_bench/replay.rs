//! Anti-replay window checks per second: `ReplayWindow::check_and_update`, which every
//! transport packet pays after it authenticates.
//!
//! Two counter streams:
//! - `replay_inorder`: strictly increasing counters, the common case on a clean path;
//! - `replay_reordered`: what a multi-queue NIC and a lossy path deliver: increasing counters in
//!   which 5% of the positions are swapped with another up to 64 places ahead, and 1% of the
//!   packets are followed by a duplicate of one of the last 64 sent (which must be rejected).
//!
//! The reordered stream is generated once, untimed, and replayed with a growing offset so the
//! counters keep rising across passes. Every accept/reject is counted and compared with what the
//! stream's construction says, so a window that accepts replays fails the run.

use crate::harness::{self, batched};
use crate::proto_bench::Config;
use crate::report::{Record, Report};
use sluice::proto::replay::ReplayWindow;
use sluice::proto::{Rng, SeededRng};
use std::hint::black_box;

/// Distinct counters per pass of the reordered stream: long enough that the branch predictor
/// cannot learn it, short enough to stay in cache like a live window's traffic.
const STREAM_LEN: usize = 1 << 16;
/// How far ahead a swapped counter may land.
const MAX_DISPLACEMENT: u32 = 64;
const SWAP_PERCENT: u32 = 5;
const DUPLICATE_PERCENT: u32 = 1;

/// Strictly increasing counters through one window.
struct InOrder {
    window: ReplayWindow,
    next: u64,
    checks: u64,
    accepted: u64,
}

impl InOrder {
    fn batch(&mut self, n: u64) -> u64 {
        let mut accepted = 0u64;
        let mut c = self.next;
        for _ in 0..n {
            accepted += u64::from(self.window.check_and_update(black_box(c)));
            c += 1;
        }
        self.next = c;
        self.checks += n;
        self.accepted += accepted;
        n
    }
}

/// One pass of the reordered stream: counters `0..STREAM_LEN`, each exactly once, plus the
/// duplicates, with `is_duplicate` marking the latter.
fn reordered_pass(rng: &mut SeededRng) -> (Vec<u64>, Vec<bool>) {
    let mut order: Vec<u64> = (0..STREAM_LEN as u64).collect();
    // Swap only positions not yet moved, so no counter drifts further than MAX_DISPLACEMENT.
    let mut moved = vec![false; STREAM_LEN];
    for i in 0..STREAM_LEN {
        if moved[i] || rng.below(100) >= SWAP_PERCENT {
            continue;
        }
        let j = i + 1 + rng.below(MAX_DISPLACEMENT) as usize;
        if j < STREAM_LEN && !moved[j] {
            order.swap(i, j);
            moved[i] = true;
            moved[j] = true;
        }
    }
    let mut stream = Vec::with_capacity(STREAM_LEN * (100 + 2 * DUPLICATE_PERCENT as usize) / 100);
    let mut is_duplicate = Vec::with_capacity(stream.capacity());
    for c in order {
        stream.push(c);
        is_duplicate.push(false);
        if rng.below(100) < DUPLICATE_PERCENT {
            let back = 1 + rng.below(MAX_DISPLACEMENT) as usize;
            stream.push(stream[stream.len().saturating_sub(back)]);
            is_duplicate.push(true);
        }
    }
    (stream, is_duplicate)
}

/// The reordered stream replayed pass after pass through one window.
struct Reordered {
    window: ReplayWindow,
    stream: Vec<u64>,
    /// `fresh_before[i]`: entries of `stream[..i]` that are not duplicates, so the expected
    /// number of accepts over any range costs O(1) and stays out of the timing's way.
    fresh_before: Vec<u64>,
    /// Added to every counter of the current pass.
    base: u64,
    pos: usize,
    checks: u64,
    accepted: u64,
    expected: u64,
}

impl Reordered {
    fn new(rng: &mut SeededRng) -> Reordered {
        let (stream, is_duplicate) = reordered_pass(rng);
        let mut fresh_before = Vec::with_capacity(stream.len() + 1);
        fresh_before.push(0);
        for (i, d) in is_duplicate.iter().enumerate() {
            fresh_before.push(fresh_before[i] + u64::from(!d));
        }
        Reordered {
            window: ReplayWindow::new(),
            stream,
            fresh_before,
            base: 0,
            pos: 0,
            checks: 0,
            accepted: 0,
            expected: 0,
        }
    }

    /// Accepts expected from the start of the current pass up to `pos` (which may run past
    /// the end of the pass).
    fn fresh_until(&self, pos: usize) -> u64 {
        let len = self.stream.len();
        (pos / len) as u64 * STREAM_LEN as u64 + self.fresh_before[pos % len]
    }

    fn batch(&mut self, n: u64) -> u64 {
        let start = self.pos;
        let mut accepted = 0u64;
        let (mut p, mut base) = (self.pos, self.base);
        for _ in 0..n {
            let c = base + self.stream[p];
            accepted += u64::from(self.window.check_and_update(black_box(c)));
            p += 1;
            if p == self.stream.len() {
                p = 0;
                base += STREAM_LEN as u64;
            }
        }
        self.expected += self.fresh_until(start + n as usize) - self.fresh_until(start);
        (self.pos, self.base) = (p, base);
        self.checks += n;
        self.accepted += accepted;
        n
    }
}

pub fn run(cfg: &Config, report: &mut Report) -> Result<(), String> {
    let timing = cfg.timing();

    eprintln!("replay: in-order counters");
    let mut inorder = InOrder {
        window: ReplayWindow::new(),
        next: 0,
        checks: 0,
        accepted: 0,
    };
    let rates = harness::measure(&timing, batched(|n| inorder.batch(n)));
    if inorder.accepted != inorder.checks {
        return Err(format!(
            "replay_inorder: {} of {} fresh increasing counters accepted",
            inorder.accepted, inorder.checks
        ));
    }
    report
        .results
        .push(Record::from_samples("replay_inorder", "checks/s", &rates));

    eprintln!("replay: reordered counters");
    let mut reordered = Reordered::new(&mut SeededRng::new(0x5eed_0003));
    let rates = harness::measure(&timing, batched(|n| reordered.batch(n)));
    if reordered.accepted != reordered.expected {
        return Err(format!(
            "replay_reordered: {} accepted where {} were fresh (of {} checks)",
            reordered.accepted, reordered.expected, reordered.checks
        ));
    }
    report
        .results
        .push(Record::from_samples("replay_reordered", "checks/s", &rates));
    report.notes.push(format!(
        "replay: reordered stream swaps {SWAP_PERCENT}% of positions up to {MAX_DISPLACEMENT} \
         ahead and duplicates {DUPLICATE_PERCENT}%; {} of {} checks accepted, as expected",
        reordered.accepted, reordered.checks
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reordered_stream_holds_each_counter_once_plus_duplicates() {
        let (stream, dup) = reordered_pass(&mut SeededRng::new(1));
        let mut fresh: Vec<u64> = stream
            .iter()
            .zip(&dup)
            .filter(|(_, d)| !**d)
            .map(|(c, _)| *c)
            .collect();
        fresh.sort_unstable();
        assert!(fresh.iter().copied().eq(0..STREAM_LEN as u64));
        let dups = dup.iter().filter(|d| **d).count();
        assert!(dups > 0 && dups < STREAM_LEN / 50, "{dups}");
        // Displacement stays bounded.
        for (i, &c) in stream.iter().enumerate() {
            assert!(c.abs_diff(i as u64) <= 2 * u64::from(MAX_DISPLACEMENT) + dups as u64);
        }
    }

    #[test]
    fn expected_accepts_match_a_real_window_across_passes() {
        let mut r = Reordered::new(&mut SeededRng::new(2));
        // Odd batch sizes cross pass boundaries at arbitrary points.
        for n in [1, 999, STREAM_LEN as u64, 3 * STREAM_LEN as u64 + 17] {
            r.batch(n);
        }
        assert_eq!(r.accepted, r.expected);
        assert!(r.accepted < r.checks);
    }
}
