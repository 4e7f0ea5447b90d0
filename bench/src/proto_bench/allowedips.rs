//! Allowed-IPs (cryptokey routing) lookups per second in a large table, plus how long the
//! table takes to build and how much memory it takes.
//!
//! The table mimics a concentrator with many users: 70% of the prefixes are IPv4 (97% user
//! /32s and 3% site /24s, all inside 10.0.0.0/8) and 30% IPv6 (80% /128s and 20% /64s inside
//! fd00::/8). Every prefix is distinct and they are inserted in random order.
//!
//! Lookups go through `AllowedIps::lookup(IpAddr)`, the call the device makes for every packet
//! it sends (by destination) and receives (by source). Half the queried addresses fall inside
//! an inserted prefix; the other half are random addresses in the same aggregate, which mostly
//! miss only after walking deep into the table — the expensive kind of miss. Queries are
//! independent, as packets from different users are, so the CPU may overlap consecutive
//! lookups: the result is throughput, not single-lookup latency. Each result feeds an
//! accumulator and every address passes through `black_box`, so the compiler can neither drop
//! nor batch the lookups.

use crate::harness::{self, batched};
use crate::proto_bench::Config;
use crate::report::{fmt_num, Record, Report};
use sluice::proto::allowedips::AllowedIps;
use sluice::proto::{Rng, SeededRng};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

const V4_AGGREGATE: u32 = 0x0a00_0000; // 10.0.0.0/8
const V6_AGGREGATE: u128 = 0xfd << 120; // fd00::/8
const V4_HOST_BITS: u32 = (1 << 24) - 1;
const V6_HOST_BITS: u128 = (1 << 120) - 1;
/// Queries whose hit or miss is checked against expectations, untimed. A sample keeps this
/// affordable even for a slow table implementation.
const VERIFY_SAMPLE: usize = 4096;

fn next_u128(rng: &mut SeededRng) -> u128 {
    (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
}

fn draw_v4(rng: &mut SeededRng) -> (u32, u8) {
    let addr = V4_AGGREGATE | (rng.next_u32() & V4_HOST_BITS);
    if rng.below(100) < 3 {
        (addr & !0xff, 24)
    } else {
        (addr, 32)
    }
}

fn draw_v6(rng: &mut SeededRng) -> (u128, u8) {
    let addr = V6_AGGREGATE | (next_u128(rng) & V6_HOST_BITS);
    if rng.below(100) < 20 {
        (addr & !u128::from(u64::MAX), 64)
    } else {
        (addr, 128)
    }
}

/// `n` distinct prefixes from `draw` (which returns them masked), in random order. Dedups in
/// place rather than through a hash set, so no large freed allocation is left for the table
/// to reuse and skew its memory measurement.
fn distinct<A: Ord + Copy>(
    n: usize,
    rng: &mut SeededRng,
    draw: fn(&mut SeededRng) -> (A, u8),
) -> Vec<(A, u8)> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        while v.len() < n {
            v.push(draw(rng));
        }
        v.sort_unstable();
        v.dedup();
    }
    // Fisher–Yates: the sort above must not become the insertion order.
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u32 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// An address inside a random inserted prefix, or (equally often) anywhere in the aggregate.
/// Returns the addresses and whether each was drawn from a prefix.
fn queries<A: Copy>(
    prefixes: &[(A, u8)],
    n: usize,
    rng: &mut SeededRng,
    host: impl Fn(A, u8, &mut SeededRng) -> A,
    random: impl Fn(&mut SeededRng) -> A,
) -> (Vec<A>, Vec<bool>) {
    (0..n)
        .map(|_| {
            if rng.below(2) == 0 {
                let (a, len) = prefixes[rng.below(prefixes.len() as u32) as usize];
                (host(a, len, rng), true)
            } else {
                (random(rng), false)
            }
        })
        .unzip()
}

fn v4_queries(prefixes: &[(u32, u8)], n: usize, rng: &mut SeededRng) -> (Vec<u32>, Vec<bool>) {
    let host = |a: u32, len: u8, rng: &mut SeededRng| {
        a | rng.next_u32().checked_shr(u32::from(len)).unwrap_or(0)
    };
    let random = |rng: &mut SeededRng| V4_AGGREGATE | (rng.next_u32() & V4_HOST_BITS);
    queries(prefixes, n, rng, host, random)
}

fn v6_queries(prefixes: &[(u128, u8)], n: usize, rng: &mut SeededRng) -> (Vec<u128>, Vec<bool>) {
    let host = |a: u128, len: u8, rng: &mut SeededRng| {
        a | next_u128(rng).checked_shr(u32::from(len)).unwrap_or(0)
    };
    let random = |rng: &mut SeededRng| V6_AGGREGATE | (next_u128(rng) & V6_HOST_BITS);
    queries(prefixes, n, rng, host, random)
}

fn v4(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn v6(a: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(a))
}

/// The table (value = prefix number) and the time each family took to insert.
fn build(
    p4: &[(u32, u8)],
    p6: &[(u128, u8)],
) -> Result<(AllowedIps<u32>, Duration, Duration), String> {
    let mut table = AllowedIps::new();
    let mut replaced = 0usize;
    let start = Instant::now();
    for (i, &(a, len)) in p4.iter().enumerate() {
        let old = table.insert(v4(a), len, i as u32);
        replaced += usize::from(old.map_err(|e| format!("{e:?}"))?.is_some());
    }
    let t4 = start.elapsed();
    let start = Instant::now();
    for (i, &(a, len)) in p6.iter().enumerate() {
        let old = table.insert(v6(a), len, (p4.len() + i) as u32);
        replaced += usize::from(old.map_err(|e| format!("{e:?}"))?.is_some());
    }
    let t6 = start.elapsed();
    if replaced > 0 {
        return Err(format!(
            "{replaced} distinct prefixes replaced an existing entry"
        ));
    }
    Ok((table, t4, t6))
}

/// Untimed: every sampled address drawn from a prefix must be found. Returns the sample's
/// hit fraction.
fn verify<A: Copy>(
    qs: &[A],
    from_prefix: &[bool],
    lookup: impl Fn(A) -> Option<u32>,
) -> Result<f64, String> {
    let n = qs.len().min(VERIFY_SAMPLE);
    let mut hits = 0usize;
    for (&q, &expect) in qs.iter().zip(from_prefix).take(n) {
        let found = lookup(q).is_some();
        if expect && !found {
            return Err("allowed-IPs lookup missed an address inside an inserted prefix".into());
        }
        hits += usize::from(found);
    }
    Ok(hits as f64 / n.max(1) as f64)
}

/// `n` lookups cycling through `qs` from `*pos`; returns `n`.
fn lookups<A: Copy>(qs: &[A], pos: &mut usize, n: u64, lookup: impl Fn(A) -> Option<u32>) -> u64 {
    let mut acc = 0u64;
    let mut p = *pos;
    for _ in 0..n {
        let found = lookup(black_box(qs[p]));
        acc = acc.wrapping_add(found.map_or(0, |v| u64::from(v) + 1));
        p += 1;
        if p == qs.len() {
            p = 0;
        }
    }
    *pos = p;
    black_box(acc);
    n
}

pub fn run(cfg: &Config, report: &mut Report) -> Result<(), String> {
    let n4 = cfg.prefixes * 7 / 10;
    let n6 = cfg.prefixes - n4;
    eprintln!("allowedips: generating {n4} IPv4 and {n6} IPv6 prefixes");
    let mut rng = SeededRng::new(0x5eed_0002);
    let p4 = distinct(n4, &mut rng, draw_v4);
    let p6 = distinct(n6, &mut rng, draw_v6);

    eprintln!("allowedips: building");
    let rss_before = harness::resident_bytes();
    let (table, t4, t6) = build(&p4, &p6)?;
    let rss_after = harness::resident_bytes();

    let (q4, hit4) = v4_queries(&p4, cfg.lookup_queries, &mut rng);
    let (q6, hit6) = v6_queries(&p6, cfg.lookup_queries, &mut rng);
    let look4 = |a: u32| table.lookup(v4(a));
    let look6 = |a: u128| table.lookup(v6(a));
    let rate4 = verify(&q4, &hit4, look4)?;
    let rate6 = verify(&q6, &hit6, look6)?;
    drop((hit4, hit6));

    let timing = cfg.timing();
    eprintln!("allowedips: IPv4 lookups");
    let mut pos = 0;
    let r4 = harness::measure(&timing, batched(|n| lookups(&q4, &mut pos, n, look4)));
    eprintln!("allowedips: IPv6 lookups");
    let mut pos = 0;
    let r6 = harness::measure(&timing, batched(|n| lookups(&q6, &mut pos, n, look6)));

    let results = &mut report.results;
    results.push(Record::from_samples("allowedips_v4", "lookups/s", &r4));
    results.push(Record::from_samples("allowedips_v6", "lookups/s", &r6));
    let build_s = (t4 + t6).as_secs_f64();
    results.push(Record::from_samples("allowedips_build", "s", &[build_s]));
    let per_insert = |t: Duration, n: usize| fmt_num(t.as_nanos() as f64 / n.max(1) as f64);
    report.notes.push(format!(
        "allowedips: {n4} IPv4 + {n6} IPv6 prefixes; build {} ns/insert (v4), {} ns/insert \
         (v6); {} queries per family; sampled hit rate {:.1}% (v4), {:.1}% (v6)",
        per_insert(t4, n4),
        per_insert(t6, n6),
        cfg.lookup_queries,
        rate4 * 100.0,
        rate6 * 100.0
    ));
    memory(report, rss_before, rss_after, cfg.prefixes);
    Ok(())
}

/// Resident-memory growth over the build, per prefix. Approximate: the allocator may keep
/// freed pages or reuse earlier ones, which matters less the larger the table.
fn memory(report: &mut Report, before: Option<u64>, after: Option<u64>, prefixes: usize) {
    let (Some(before), Some(after)) = (before, after) else {
        report
            .notes
            .push("allowedips: /proc/self/statm unreadable; no memory figure".into());
        return;
    };
    let grown = after.saturating_sub(before) as f64;
    report.results.push(Record::from_samples(
        "allowedips_memory",
        "bytes/prefix",
        &[grown / prefixes as f64],
    ));
    const MIB: f64 = 1024.0 * 1024.0;
    report.notes.push(format!(
        "allowedips: resident memory {:.1} MiB before the build, {:.1} MiB after",
        before as f64 / MIB,
        after as f64 / MIB
    ));
}
