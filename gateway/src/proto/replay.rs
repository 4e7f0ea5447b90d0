//! The anti-replay window for transport data counters (whitepaper §5.4.6, RFC 6479).
//!
//! Every transport message carries a 64-bit counter that doubles as its AEAD nonce. An attacker
//! who captures a packet can resend it and it will still authenticate, so the receiver must accept
//! each counter at most once. UDP reorders and duplicates, so requiring strictly increasing
//! counters would drop legitimate traffic; instead a counter is accepted if it has not been seen
//! and is at most [`REPLAY_WINDOW_SIZE`] below the greatest counter seen so far.
//!
//! The bookkeeping is RFC 6479's: a ring of [`REPLAY_BITMAP_BITS`] bits kept in `u64` words.
//! Sliding the window forward zeroes whole words that the new top has moved past instead of
//! shifting the bitmap, so accepting a counter costs one word write in the common case and at
//! most one pass over the ring after a huge jump. The window is one word smaller than the ring
//! because the top word is only partly in use: that spare word guarantees that the oldest counter
//! still inside the window never shares a ring slot with the newest.
//!
//! The acceptance rule is Linux's `counter_validate` (`drivers/net/wireguard/receive.c`), so sluice
//! accepts and drops exactly the packets a kernel peer would:
//!
//! - a counter at or past [`REJECT_AFTER_MESSAGES`] is rejected (the sender must have rekeyed long
//!   before, and the bound keeps `counter + window` from overflowing);
//! - a counter more than [`REPLAY_WINDOW_SIZE`] below the greatest seen is rejected as too old,
//!   because its bit may already have been reused by a newer counter;
//! - otherwise it is accepted exactly when its bit is clear.
//!
//! Like the kernel, the window stores "greatest accepted + 1" and files counter `c` under bit
//! position `c + 1`. That lets a fresh window (nothing accepted) be the all-zero state with no
//! special case, while still accepting counter 0 as the first packet.

use core::fmt;

use super::messages::{REJECT_AFTER_MESSAGES, REPLAY_BITMAP_BITS, REPLAY_WINDOW_SIZE};

const WORD_BITS: u64 = u64::BITS as u64;
const WORDS: usize = (REPLAY_BITMAP_BITS / WORD_BITS) as usize;

// Ring slots are found by reducing a word number modulo WORDS, which only stays cheap and
// wrap-consistent for a whole number of words that is a power of two.
const _: () = assert!(REPLAY_BITMAP_BITS.is_multiple_of(WORD_BITS));
const _: () = assert!(WORDS.is_power_of_two());
// If the window reached into the top word's ring slot from below, an old counter and a new one
// would share a bit and the old one could be wrongly rejected or accepted.
const _: () = assert!(REPLAY_WINDOW_SIZE <= REPLAY_BITMAP_BITS - WORD_BITS);
// `position + REPLAY_WINDOW_SIZE` below is computed for positions up to REJECT_AFTER_MESSAGES.
const _: () = assert!(REJECT_AFTER_MESSAGES
    .checked_add(REPLAY_WINDOW_SIZE)
    .is_some());

/// Which counters of one receiving keypair have already been accepted.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Greatest accepted bit position, i.e. greatest accepted counter plus one; 0 if none.
    next: u64,
    /// Ring of seen-bits. Invariant: bits for positions above `next` are clear, so a counter
    /// that raises the top never finds a stale bit.
    bitmap: [u64; WORDS],
}

/// The ring slot and bit mask for a bit position.
fn locate(position: u64) -> (usize, u64) {
    // The modulo keeps the slot inside the ring whatever the counter, so indexing can't panic.
    let slot = ((position / WORD_BITS) % WORDS as u64) as usize;
    (slot, 1 << (position % WORD_BITS))
}

impl ReplayWindow {
    pub fn new() -> Self {
        ReplayWindow {
            next: 0,
            bitmap: [0; WORDS],
        }
    }

    /// A window that behaves as if every counter below `next` had been seen: used when a session
    /// is taken over from another gateway (HA) so nothing below the synced mark is accepted.
    pub fn starting_at(next: u64) -> Self {
        // Mark every position up to and including `next` (counters up to `next - 1`) as seen.
        // Counters further back than the window are rejected by the age check, so filling the
        // whole ring is enough. The top word must keep the positions above `next` clear, or the
        // counters just past the mark would look like replays.
        let mut bitmap = [u64::MAX; WORDS];
        let (slot, _) = locate(next);
        bitmap[slot] = u64::MAX >> (WORD_BITS - 1 - next % WORD_BITS);
        ReplayWindow { next, bitmap }
    }

    /// Cheap pre-check before decryption: false if `counter` is certainly a replay or too old or
    /// >= REJECT_AFTER_MESSAGES. Does not modify state.
    ///
    /// Decrypting costs far more than this lookup, so replays and stale packets are dropped
    /// before paying for it. The answer is exact for the current state; the caller must still
    /// call [`check_and_update`](Self::check_and_update) after authentication, since another
    /// packet may have claimed the counter in between and a forged packet must not move the
    /// window.
    pub fn may_accept(&self, counter: u64) -> bool {
        self.admissible(counter).is_some()
    }

    /// Called only after the packet authenticated: accept (and record) or reject `counter`.
    pub fn check_and_update(&mut self, counter: u64) -> bool {
        let Some(position) = self.admissible(counter) else {
            return false;
        };
        if position > self.next {
            // Words between the old top and the new one hold bits of counters that are now
            // outside the window; clearing them (at most the whole ring) is what makes their
            // slots reusable for the new counters.
            let old_word = self.next / WORD_BITS;
            let new_word = position / WORD_BITS;
            let stale = (new_word - old_word).min(WORDS as u64);
            for i in 1..=stale {
                let (slot, _) = locate((old_word + i) * WORD_BITS);
                self.bitmap[slot] = 0;
            }
            self.next = position;
        }
        let (slot, bit) = locate(position);
        self.bitmap[slot] |= bit;
        true
    }

    /// The greatest counter accepted so far plus one (0 if none): the "high-water mark".
    pub fn next_expected(&self) -> u64 {
        self.next
    }

    /// The bit position of `counter` if it may be accepted now.
    fn admissible(&self, counter: u64) -> Option<u64> {
        if counter >= REJECT_AFTER_MESSAGES {
            return None;
        }
        // Neither sum overflows: counter < REJECT_AFTER_MESSAGES, asserted to leave room for
        // the window above it.
        let position = counter + 1;
        if position + REPLAY_WINDOW_SIZE < self.next {
            return None;
        }
        if position > self.next {
            // Above the top: the invariant says its bit is clear.
            return Some(position);
        }
        let (slot, bit) = locate(position);
        (self.bitmap[slot] & bit == 0).then_some(position)
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

// A hand-written Debug: the derived one would dump 128 bitmap words into every log line that
// prints a session.
impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("next_expected", &self.next)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rng::{Rng, SeededRng};
    use std::collections::BTreeSet;

    const W: u64 = REPLAY_WINDOW_SIZE;
    const R: u64 = REJECT_AFTER_MESSAGES;

    /// Feed `steps` to one window in order, checking both the pre-check and the verdict.
    fn run(window: &mut ReplayWindow, steps: &[(u64, bool)]) {
        for (i, &(counter, expected)) in steps.iter().enumerate() {
            assert_eq!(
                window.may_accept(counter),
                expected,
                "may_accept, step {i}, counter {counter}"
            );
            assert_eq!(
                window.check_and_update(counter),
                expected,
                "check_and_update, step {i}, counter {counter}"
            );
        }
    }

    #[test]
    fn table_like_the_kernel_selftest() {
        let big = 3 * W;
        let far = 1u64 << 40;
        let mut w = ReplayWindow::new();
        run(
            &mut w,
            &[
                (0, true),
                (0, false),
                (1, true),
                (1, false),
                (9, true),
                (8, true),
                (7, true),
                (7, false),
                // A jump forward by exactly the window: 9 is now exactly W below the top.
                (9 + W, true),
                (9, false),
                (10, true),
                (2, false),
                (9 + W, false),
                // Just inside and just below the window of a new top.
                (big, true),
                (big - W, true),
                (big - W, false),
                (big - W - 1, false),
                (big - W + 1, true),
                (big - 1, true),
                // A jump by window + 1: the old top falls just out of the window.
                (big + W + 1, true),
                (big + 1, true),
                (big, false),
                (big + 2, true),
                // A jump far ahead clears the whole ring.
                (far, true),
                (far - 1, true),
                (far - W, true),
                (far - W - 1, false),
                (big + W + 1, false),
                (far + 1, true),
                (far, false),
                (0, false),
            ],
        );
        assert_eq!(w.next_expected(), far + 2);
    }

    #[test]
    fn first_packet_is_counter_zero() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.next_expected(), 0);
        assert!(w.may_accept(0));
        assert!(w.check_and_update(0));
        assert_eq!(w.next_expected(), 1);
        assert!(!w.check_and_update(0));
        assert_eq!(w.next_expected(), 1);
    }

    #[test]
    fn counters_near_reject_after_messages() {
        let mut w = ReplayWindow::new();
        run(
            &mut w,
            &[
                (R, false),
                (R + 1, false),
                (u64::MAX, false),
                (R - 1, true),
                (R, false),
                (R - 1, false),
                (R - 2, true),
                (R + 2, false),
                (R - 2, false),
                (R - 3, true),
                (R - 1 - W, true),
                (R - 2 - W, false),
                (0, false),
                (u64::MAX, false),
            ],
        );
        assert_eq!(w.next_expected(), R);
    }

    #[test]
    fn far_jump_clears_bits_that_alias_old_counters() {
        // 2^40 is a multiple of the ring size, so 2^40 + c lands on the same bit as c: it is
        // only accepted if the jump really zeroed the old words.
        let far = 1u64 << 40;
        assert_eq!(far % REPLAY_BITMAP_BITS, 0);
        let mut w = ReplayWindow::new();
        for c in 0..100 {
            assert!(w.check_and_update(c));
        }
        assert!(w.check_and_update(far + 200));
        for c in 0..100 {
            assert!(w.check_and_update(far + c), "counter {}", far + c);
        }
        for c in 0..100 {
            assert!(!w.check_and_update(far + c));
        }
    }

    #[test]
    fn jump_smaller_than_ring_clears_only_passed_words() {
        let mut w = ReplayWindow::new();
        for c in 0..REPLAY_BITMAP_BITS {
            assert!(w.check_and_update(c));
        }
        // Jump a bit over two words: counters 8192.. reuse the slots of 0.. and must be clear,
        // while the top part of the old window must still be remembered.
        let top = REPLAY_BITMAP_BITS + 150;
        assert!(w.check_and_update(top));
        for c in REPLAY_BITMAP_BITS..top {
            assert!(w.check_and_update(c), "counter {c}");
        }
        for c in (top - W)..REPLAY_BITMAP_BITS {
            assert!(!w.check_and_update(c), "counter {c} replayed");
        }
    }

    #[test]
    fn in_order_sequence_wraps_the_ring_many_times() {
        let mut w = ReplayWindow::new();
        for c in 0..50_000 {
            assert!(w.check_and_update(c), "counter {c}");
            assert!(!w.check_and_update(c), "counter {c} twice");
        }
        for c in 0..50_000 {
            assert!(!w.may_accept(c), "counter {c} replayed");
            assert!(!w.check_and_update(c), "counter {c} replayed");
        }
        assert_eq!(w.next_expected(), 50_000);
    }

    #[test]
    fn out_of_order_within_the_window() {
        let mut w = ReplayWindow::new();
        assert!(w.check_and_update(W));
        // Everything from 0 to W - 1 is inside the window, in any order, once each.
        for c in (0..W).rev().step_by(2) {
            assert!(w.check_and_update(c), "counter {c}");
        }
        for c in (0..W).step_by(2) {
            assert!(w.check_and_update(c), "counter {c}");
        }
        for c in 0..=W {
            assert!(!w.check_and_update(c), "counter {c} replayed");
        }
        assert_eq!(w.next_expected(), W + 1);
    }

    #[test]
    fn starting_at_rejects_below_the_mark() {
        for n in [
            0,
            1,
            2,
            62,
            63,
            64,
            65,
            W,
            REPLAY_BITMAP_BITS - 1,
            REPLAY_BITMAP_BITS,
            1 << 40,
            R - 2,
            R - 1,
            R,
            u64::MAX,
        ] {
            let mut w = ReplayWindow::starting_at(n);
            assert_eq!(w.next_expected(), n);
            for back in [1, 2, 63, 64, 65, W, W + 1, n] {
                if back == 0 {
                    continue;
                }
                if let Some(c) = n.checked_sub(back) {
                    assert!(!w.may_accept(c), "n={n}: counter {c}");
                    assert!(!w.check_and_update(c), "n={n}: counter {c}");
                }
            }
            // Every counter from the mark on (through the rest of its word and beyond) is new,
            // also when one a little ahead arrives first.
            let ahead = n.saturating_add(3);
            assert_eq!(
                w.check_and_update(ahead),
                ahead < R,
                "n={n}: counter {ahead}"
            );
            for c in (n..n.saturating_add(130)).filter(|&c| c != ahead) {
                let expected = c < R;
                assert_eq!(w.check_and_update(c), expected, "n={n}: counter {c}");
            }
            if let Some(c) = n.checked_sub(1) {
                assert!(!w.check_and_update(c), "n={n}: counter {c} after the mark");
            }
        }
    }

    #[test]
    fn starting_at_zero_is_a_fresh_window() {
        let mut a = ReplayWindow::starting_at(0);
        let mut b = ReplayWindow::new();
        for c in [0, 0, 5, 3, 64, 63, 10_000, 1_872, 1_871, 1_873, 10_000] {
            assert_eq!(a.check_and_update(c), b.check_and_update(c), "counter {c}");
        }
    }

    #[test]
    fn default_is_new() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.next_expected(), 0);
        assert!(w.check_and_update(0));
    }

    /// The rule stated plainly over an unbounded set of seen counters.
    struct Reference {
        seen: BTreeSet<u64>,
        /// Every counter below this counts as seen (`starting_at`).
        floor: u64,
        top: Option<u64>,
    }

    impl Reference {
        fn starting_at(floor: u64) -> Self {
            Reference {
                seen: BTreeSet::new(),
                floor,
                top: floor.checked_sub(1),
            }
        }

        fn accept(&mut self, c: u64) -> bool {
            if c >= R {
                return false;
            }
            if let Some(top) = self.top {
                if top.saturating_sub(c) > W {
                    return false;
                }
            }
            if c < self.floor || !self.seen.insert(c) {
                return false;
            }
            self.top = Some(self.top.map_or(c, |t| t.max(c)));
            true
        }
    }

    /// Mostly increasing counters with reordering around the window edge, duplicates and jumps.
    fn counters(rng: &mut SeededRng, start: u64, len: usize) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::with_capacity(len);
        let mut cur = start;
        for _ in 0..len {
            let c = match rng.below(100) {
                0..=59 => {
                    cur = cur.saturating_add(u64::from(rng.below(3)));
                    cur
                }
                60..=74 => cur.saturating_sub(u64::from(rng.below(200))),
                75..=84 => {
                    // Straddle the window edge, where off-by-one mistakes live.
                    let back = W - 20 + u64::from(rng.below(40));
                    cur.saturating_sub(back)
                }
                85..=92 => match out.len() {
                    0 => cur,
                    n => out[n - 1 - rng.below(n.min(50) as u32) as usize],
                },
                93..=96 => {
                    let jump = match rng.below(4) {
                        0 => W - 2 + u64::from(rng.below(5)),
                        1 => REPLAY_BITMAP_BITS - 2 + u64::from(rng.below(5)),
                        2 => u64::from(rng.below(3 * REPLAY_BITMAP_BITS as u32)),
                        _ => rng.next_u64() >> 24,
                    };
                    cur = cur.saturating_add(jump);
                    cur
                }
                97 => {
                    cur = R - 1 - u64::from(rng.below(100));
                    cur
                }
                _ => rng.next_u64(),
            };
            out.push(c);
        }
        out
    }

    #[test]
    fn matches_naive_reference_on_random_sequences() {
        let mut rng = SeededRng::new(0x5eed_0001);
        for seed in 0..48 {
            let start = match seed % 4 {
                0 => 0,
                1 => u64::from(rng.below(100_000)),
                2 => rng.next_u64() >> 8,
                _ => R - u64::from(rng.below(20_000)),
            };
            let fresh = seed % 2 == 0;
            let (mut w, mut reference) = if fresh {
                (ReplayWindow::new(), Reference::starting_at(0))
            } else {
                (
                    ReplayWindow::starting_at(start),
                    Reference::starting_at(start),
                )
            };
            for (i, c) in counters(&mut rng, start, 4_000).into_iter().enumerate() {
                let expected = reference.accept(c);
                assert_eq!(
                    w.check_and_update(c),
                    expected,
                    "seed {seed} step {i} counter {c} (start {start}, fresh {fresh})"
                );
            }
        }
    }

    #[test]
    fn may_accept_agrees_with_check_and_update() {
        let mut rng = SeededRng::new(0x5eed_0002);
        for seed in 0..48 {
            let start = match seed % 3 {
                0 => 0,
                1 => rng.next_u64() >> 8,
                _ => R - u64::from(rng.below(20_000)),
            };
            let mut w = if seed % 2 == 0 {
                ReplayWindow::new()
            } else {
                ReplayWindow::starting_at(start)
            };
            for (i, c) in counters(&mut rng, start, 4_000).into_iter().enumerate() {
                let before = w.next_expected();
                let pre = w.may_accept(c);
                // Asking twice must give the same answer: the pre-check changes nothing.
                assert_eq!(w.may_accept(c), pre);
                assert_eq!(w.next_expected(), before);
                let verdict = w.check_and_update(c);
                assert!(
                    pre || !verdict,
                    "seed {seed} step {i}: {c} refused, then accepted"
                );
                // Nothing else touches the window in between, so the pre-check is also exact.
                assert_eq!(pre, verdict, "seed {seed} step {i}: counter {c}");
            }
        }
    }
}
