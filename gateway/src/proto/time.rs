//! Time as the protocol core sees it: a monotonic instant handed in by the caller.
//!
//! The core never reads a clock (see the sans-IO test in `tests/sans_io.rs`). The I/O layer
//! converts `CLOCK_MONOTONIC` readings into [`Time`]; tests drive a simulated clock that starts at
//! zero. Wall-clock time is needed only for the TAI64N timestamp of an initiation and is passed in
//! separately as [`WallTime`].

use core::ops::{Add, AddAssign};
use core::time::Duration;

/// A monotonic point in time, in nanoseconds since an arbitrary origin chosen by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The origin of the caller's clock. Simulated clocks start here.
    pub const ZERO: Time = Time(0);

    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, or zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the end of time instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Time {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(nanos))
    }

    /// True once at least `d` has passed since `earlier`.
    pub fn has_elapsed(self, earlier: Time, d: Duration) -> bool {
        self.saturating_since(earlier) >= d
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

/// Wall-clock time (seconds and nanoseconds since the Unix epoch), used only to build the
/// TAI64N timestamp that protects responders against replayed initiations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct WallTime {
    pub secs: u64,
    pub nanos: u32,
}

impl WallTime {
    pub const fn new(secs: u64, nanos: u32) -> WallTime {
        WallTime { secs, nanos }
    }
}
