//! Per-source rate limiting of handshake initiations (whitepaper §5.3, Linux `ratelimiter.c`).
//!
//! Answering an initiation costs the responder several Curve25519 operations before it knows
//! who sent it, which makes initiations the cheapest way to burn a gateway's CPU. Under load the
//! cookie exchange (whitepaper §5.3) makes a sender prove it can receive at its source address;
//! once the address is known to be real, this limiter bounds the work any one address can
//! demand, so a flood from a few hosts can't crowd out everyone else's handshakes.
//!
//! The algorithm and numbers are the kernel's: a token bucket per source, measured in
//! nanoseconds. Each initiation costs `1 s / RATELIMIT_PACKETS_PER_SECOND`, the bucket holds
//! [`RATELIMIT_BURST`] initiations' worth, and a source seen for the first time starts full and
//! pays for the packet that created it. That gives a burst of [`RATELIMIT_BURST`] followed by
//! [`RATELIMIT_PACKETS_PER_SECOND`] per second.
//!
//! Sources are keyed like the kernel's: an IPv4 address by itself, an IPv6 address by its /64,
//! because a single host is routinely handed a whole /64 and could otherwise rotate through 2^64
//! source addresses. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket
//! reports for IPv4 senders) is keyed as the IPv4 address it carries: keyed by its /64 every IPv4
//! sender would share one bucket, and one noisy host could lock out all IPv4 handshakes.
//!
//! The table is capped at `max_entries`; when it is full, new sources are refused (as the kernel
//! does) rather than evicting known ones, so a spoofed-source flood can exhaust neither memory
//! nor the buckets of sources already being served. [`RateLimiter::gc`] drops sources idle for a
//! second; that changes no decision, because a second of idleness refills any bucket, and a
//! returning source starts full again.

use core::time::Duration;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use super::messages::{RATELIMIT_BURST, RATELIMIT_PACKETS_PER_SECOND};
use super::time::Time;

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// Tokens (nanoseconds of earned time) one initiation costs.
const PACKET_COST: u64 = NANOS_PER_SECOND / RATELIMIT_PACKETS_PER_SECOND;
/// Bucket capacity: the burst a source may send after being quiet.
const TOKEN_MAX: u64 = PACKET_COST * RATELIMIT_BURST;
/// A source idle this long has a full bucket, so forgetting it loses nothing.
const IDLE_EXPIRY: Duration = Duration::from_secs(1);

// The gc argument above only holds if an idle second refills the bucket completely.
const _: () = assert!(TOKEN_MAX <= NANOS_PER_SECOND);
const _: () = assert!(RATELIMIT_BURST >= 1 && PACKET_COST > 0);

/// What a bucket is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6Prefix((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u64,
    /// The latest time seen for this source. Never moves backwards, so a clock that steps back
    /// and forward again can't have the same interval credited twice.
    last: Time,
}

impl Bucket {
    fn take(&mut self, now: Time) -> bool {
        let earned = now.as_nanos().saturating_sub(self.last.as_nanos());
        self.tokens = self.tokens.saturating_add(earned).min(TOKEN_MAX);
        self.last = self.last.max(now);
        if self.tokens >= PACKET_COST {
            self.tokens -= PACKET_COST;
            true
        } else {
            false
        }
    }
}

/// Token buckets for the sources of handshake initiations.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: HashMap<Source, Bucket>,
    max_entries: usize,
}

impl RateLimiter {
    /// `max_entries` bounds memory under a spoofed-source flood (when full, unknown sources are
    /// refused, as the kernel does).
    pub fn new(max_entries: usize) -> Self {
        // No preallocation: the cap is sized for a flood, the usual population is small.
        RateLimiter {
            buckets: HashMap::new(),
            max_entries,
        }
    }

    /// May a handshake initiation from `src` be processed now? Consumes a token if so.
    pub fn allow(&mut self, now: Time, src: IpAddr) -> bool {
        let source = Source::from(src);
        if let Some(bucket) = self.buckets.get_mut(&source) {
            return bucket.take(now);
        }
        if self.buckets.len() >= self.max_entries {
            return false;
        }
        self.buckets.insert(
            source,
            Bucket {
                tokens: TOKEN_MAX - PACKET_COST,
                last: now,
            },
        );
        true
    }

    /// Forget sources idle for a second or more (call about once per second).
    pub fn gc(&mut self, now: Time) {
        self.buckets
            .retain(|_, bucket| !now.has_elapsed(bucket.last, IDLE_EXPIRY));
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rng::{Rng, SeededRng};
    use std::net::Ipv6Addr;

    const PPS: u64 = RATELIMIT_PACKETS_PER_SECOND;
    const BURST: u64 = RATELIMIT_BURST;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(segments: [u16; 8]) -> IpAddr {
        let [a, b, c, d, e, f, g, h] = segments;
        IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
    }

    fn ms(n: u64) -> Time {
        Time::from_nanos(n * 1_000_000)
    }

    /// How many of `n` back-to-back initiations at `now` are allowed.
    fn burst(rl: &mut RateLimiter, now: Time, src: IpAddr, n: u64) -> u64 {
        (0..n).filter(|_| rl.allow(now, src)).count() as u64
    }

    #[test]
    fn burst_of_five_then_refused() {
        let mut rl = RateLimiter::new(16);
        let src = v4(192, 0, 2, 1);
        for i in 0..BURST {
            assert!(rl.allow(Time::ZERO, src), "packet {i} of the burst");
        }
        assert!(!rl.allow(Time::ZERO, src), "packet past the burst");
        assert!(!rl.allow(Time::ZERO, src));
        assert_eq!(rl.len(), 1);
    }

    #[test]
    fn steady_twenty_per_second_passes() {
        let mut rl = RateLimiter::new(16);
        let src = v4(192, 0, 2, 1);
        assert_eq!(burst(&mut rl, Time::ZERO, src, BURST), BURST);
        // After draining the burst, one packet every 1/20 s keeps passing indefinitely.
        let step = NANOS_PER_SECOND / PPS;
        for i in 1..=10 * PPS {
            assert!(
                rl.allow(Time::from_nanos(i * step), src),
                "packet {i} at the steady rate"
            );
        }
        // And the bucket is empty again: nothing extra at the same instant.
        assert!(!rl.allow(Time::from_nanos(10 * PPS * step), src));
    }

    #[test]
    fn twenty_one_per_second_is_throttled() {
        let mut rl = RateLimiter::new(16);
        let src = v4(192, 0, 2, 1);
        let seconds = 10;
        let step = NANOS_PER_SECOND / (PPS + 1);
        let sent = seconds * (PPS + 1);
        let allowed = (0..sent)
            .filter(|i| rl.allow(Time::from_nanos(i * step), src))
            .count() as u64;
        assert!(allowed < sent, "nothing refused at {} per second", PPS + 1);
        // Earned tokens over the span plus the initial burst bound what can get through.
        let span = (sent - 1) * step;
        assert!(allowed <= span / PACKET_COST + BURST, "allowed {allowed}");
        assert!(allowed >= seconds * PPS, "allowed {allowed}");
    }

    #[test]
    fn recovers_after_idle() {
        let mut rl = RateLimiter::new(16);
        let src = v4(192, 0, 2, 1);
        assert_eq!(burst(&mut rl, Time::ZERO, src, 10), BURST);
        // One packet's worth of time earns exactly one packet.
        assert_eq!(burst(&mut rl, ms(50), src, 10), 1);
        assert_eq!(burst(&mut rl, ms(99), src, 10), 0);
        assert_eq!(burst(&mut rl, ms(100), src, 10), 1);
        // A long pause refills the bucket only up to the burst.
        assert_eq!(burst(&mut rl, ms(60_000), src, 10), BURST);
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_slash_64() {
        let mut rl = RateLimiter::new(16);
        let a = v6([0x2001, 0xdb8, 1, 2, 0, 0, 0, 1]);
        let same_64 = v6([0x2001, 0xdb8, 1, 2, 0xffff, 0xabcd, 0x1234, 0x5678]);
        let other_64 = v6([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1]);
        assert_eq!(burst(&mut rl, Time::ZERO, a, 3), 3);
        assert_eq!(burst(&mut rl, Time::ZERO, same_64, 10), BURST - 3);
        assert_eq!(burst(&mut rl, Time::ZERO, a, 10), 0);
        assert_eq!(burst(&mut rl, Time::ZERO, other_64, 10), BURST);
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn ipv4_sources_are_independent() {
        let mut rl = RateLimiter::new(16);
        let a = v4(192, 0, 2, 1);
        let b = v4(192, 0, 2, 2);
        let c = v4(198, 51, 100, 1);
        assert_eq!(burst(&mut rl, Time::ZERO, a, 10), BURST);
        assert_eq!(burst(&mut rl, Time::ZERO, b, 10), BURST);
        assert_eq!(burst(&mut rl, Time::ZERO, c, 10), BURST);
        assert_eq!(rl.len(), 3);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_keyed_as_ipv4() {
        let mut rl = RateLimiter::new(16);
        let plain = v4(192, 0, 2, 1);
        let mapped = v6([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201]);
        let mapped_other = v6([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0202]);
        assert_eq!(burst(&mut rl, Time::ZERO, mapped, 2), 2);
        assert_eq!(burst(&mut rl, Time::ZERO, plain, 10), BURST - 2);
        // Mapped senders don't all collapse into the one ::/64 bucket.
        assert_eq!(burst(&mut rl, Time::ZERO, mapped_other, 10), BURST);
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn gc_forgets_idle_sources_and_keeps_recent_ones() {
        let mut rl = RateLimiter::new(16);
        let old = v4(192, 0, 2, 1);
        let recent = v4(192, 0, 2, 2);
        assert!(rl.is_empty());
        assert!(rl.allow(Time::ZERO, old));
        assert!(rl.allow(ms(500), recent));
        rl.gc(ms(999));
        assert_eq!(rl.len(), 2);
        rl.gc(ms(1_200));
        assert_eq!(rl.len(), 1);
        // The survivor is the recent one: the forgotten source comes back as a new entry.
        assert!(rl.allow(ms(1_200), recent));
        assert_eq!(rl.len(), 1);
        assert!(rl.allow(ms(1_200), old));
        assert_eq!(rl.len(), 2);
        rl.gc(ms(10_000));
        assert!(rl.is_empty());
    }

    #[test]
    fn full_table_refuses_new_sources_only() {
        let mut rl = RateLimiter::new(2);
        let a = v4(192, 0, 2, 1);
        let b = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);
        let c = v4(192, 0, 2, 3);
        assert!(rl.allow(Time::ZERO, a));
        assert!(rl.allow(Time::ZERO, b));
        assert!(!rl.allow(Time::ZERO, c));
        assert!(!rl.allow(ms(10), c));
        assert_eq!(rl.len(), 2);
        // Known sources keep their remaining burst.
        assert_eq!(burst(&mut rl, ms(10), a, 10), BURST - 1);
        assert_eq!(burst(&mut rl, ms(10), b, 10), BURST - 1);
        // Once idle entries are collected there is room again.
        rl.gc(ms(1_010));
        assert!(rl.is_empty());
        assert!(rl.allow(ms(1_010), c));

        let mut none = RateLimiter::new(0);
        assert!(!none.allow(Time::ZERO, a));
        assert!(none.is_empty());
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let mut rl = RateLimiter::new(16);
        let src = v4(192, 0, 2, 1);
        let t = ms(10_000);
        assert_eq!(burst(&mut rl, t, src, 10), BURST);
        assert!(!rl.allow(ms(5_000), src));
        assert!(!rl.allow(Time::ZERO, src));
        // Coming back to the present must not credit the interval the clock stepped back over.
        assert!(!rl.allow(t, src));
        assert!(!rl.allow(ms(10_049), src));
        assert!(rl.allow(ms(10_050), src));
        assert!(!rl.allow(ms(10_050), src));
        // An entry touched "in the future" is not collected early.
        rl.gc(ms(10_500));
        assert_eq!(rl.len(), 1);
        rl.gc(Time::ZERO);
        assert_eq!(rl.len(), 1);
        // The far end of the clock doesn't overflow anything.
        assert!(rl.allow(Time::from_nanos(u64::MAX), src));
        assert!(rl.allow(Time::ZERO, v4(192, 0, 2, 9)));
    }

    #[test]
    fn gc_changes_no_decision() {
        // The same random traffic through a limiter that is collected every second and one that
        // never is must be admitted identically.
        let mut rng = SeededRng::new(7);
        let mut collected = RateLimiter::new(1_000);
        let mut kept = RateLimiter::new(1_000);
        let mut now = Time::ZERO;
        let mut next_gc = Time::ZERO;
        for i in 0..20_000 {
            now += Duration::from_nanos(u64::from(rng.below(40_000_000)));
            if now >= next_gc {
                collected.gc(now);
                next_gc = now + Duration::from_secs(1);
            }
            let src = v4(192, 0, 2, rng.below(8) as u8);
            assert_eq!(
                collected.allow(now, src),
                kept.allow(now, src),
                "packet {i} from {src}"
            );
        }
    }
}
