//! Latency probes: in a timed run, every `every`-th packet (by sequence number) is a probe.
//! The sender notes when it handed each probe to the kernel, the receiver (the sink, or the
//! generator after decrypting in the inside -> users direction) when it accepted it. Both are
//! threads of this process on one machine, so `Instant`s compare directly and the latency is
//! one way: sender's system call to receiver's `recvmmsg` batch, through the gateway.
//!
//! Idle: a paced run at a low rate where every packet is a probe. Loaded: a paced run at a
//! high rate where one packet in `every` is, so about the same number of probes per second.

use serde::Serialize;
use std::time::{Duration, Instant};

/// When each probe was sent (index: sequence number / `every`).
#[derive(Debug, Default)]
pub struct ProbeLog {
    every: u64,
    sent: Vec<Option<Instant>>,
}

impl ProbeLog {
    /// A log for a run of `total` packets with a probe every `every` (0: no probes).
    pub fn new(every: u64, total: u64) -> ProbeLog {
        let slots = if every == 0 {
            0
        } else {
            total.div_ceil(every) as usize
        };
        ProbeLog {
            every,
            sent: vec![None; slots],
        }
    }

    /// Packets `from..to` are about to be handed to the kernel at `at` (a retry of packets
    /// the kernel did not take overwrites the time).
    pub fn sending(&mut self, from: u64, to: u64, at: Instant) {
        if self.every == 0 {
            return;
        }
        let first = from.div_ceil(self.every);
        let mut seq = first * self.every;
        while seq < to {
            if let Some(slot) = self.sent.get_mut((seq / self.every) as usize) {
                *slot = Some(at);
            }
            seq += self.every;
        }
    }

    /// One-way latencies of the probes that arrived (`(seq, when)`), in arrival order.
    pub fn latencies(&self, arrivals: &[(u64, Instant)]) -> Vec<Duration> {
        if self.every == 0 {
            return Vec::new();
        }
        arrivals
            .iter()
            .filter_map(|&(seq, at)| {
                let sent = (*self.sent.get((seq / self.every) as usize)?)?;
                Some(at.saturating_duration_since(sent))
            })
            .collect()
    }
}

/// Percentiles of one set of latencies, in microseconds (nearest rank).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub probes: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    /// `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1;
            us[i]
        };
        Some(Percentiles {
            probes: us.len(),
            p50_us: rank(0.50),
            p90_us: rank(0.90),
            p99_us: rank(0.99),
            max_us: us[us.len() - 1],
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!(p.probes, 100);
        assert_eq!((p.p50_us, p.p90_us, p.p99_us), (50.0, 90.0, 99.0));
        assert_eq!(p.max_us, 100.0);
        assert_eq!(Percentiles::of(&[]), None);
        let one = Percentiles::of(&[Duration::from_micros(7)]).unwrap();
        assert_eq!((one.p50_us, one.max_us), (7.0, 7.0));
    }

    #[test]
    fn probe_log_pairs_sends_with_arrivals() {
        let t0 = Instant::now();
        let mut log = ProbeLog::new(10, 100);
        log.sending(0, 25, t0);
        // A retry of 20..25 later: probe 20's time moves.
        log.sending(20, 40, t0 + Duration::from_millis(5));
        let arr = [
            (0, t0 + Duration::from_millis(1)),
            (20, t0 + Duration::from_millis(7)),
            // Never sent (as far as the log knows): no latency.
            (90, t0 + Duration::from_millis(9)),
        ];
        let l = log.latencies(&arr);
        assert_eq!(l, vec![Duration::from_millis(1), Duration::from_millis(2)]);
        assert!(ProbeLog::new(0, 100).latencies(&arr).is_empty());
    }
}
