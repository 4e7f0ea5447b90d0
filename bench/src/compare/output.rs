//! The comparison's results: one record per scenario, direction, implementation, mode and size
//! (median over the repeats, with the spread and every sample), the table with sluice's ratio
//! to each other implementation, the JSON file and the SVG chart.

use super::latency::Percentiles;
use crate::report::{fmt_num, Report};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Loss above this (a fraction) labels a rate as lossy.
pub const LOSSY: f64 = 0.01;

/// One repeat of a throughput run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sample {
    pub mpps: f64,
    pub gbps: f64,
    /// Percent of sent packets not delivered.
    pub loss: f64,
    pub sent: u64,
    pub delivered: u64,
    /// Packets the sink refused (wrong size or user, corrupt, duplicate).
    pub errors: u64,
    pub offered_mpps: f64,
    /// The generator thread's CPU use while sending (1.0 = a full core).
    pub generator_cpu: f64,
}

/// One line of the comparison, as the issue's JSON layout asks, plus spread and samples.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CompareRecord {
    pub scenario: String,
    pub direction: String,
    #[serde(rename = "impl")]
    pub implementation: String,
    pub mode: String,
    /// Inner packet size in bytes, "imix", or "-" (handshakes).
    pub size: String,
    pub users: u32,
    /// The cores the gateway ran on (its workers or threads: one per core).
    pub gateway_cores: usize,
    /// Those cores included the generator's (`--allow-shared-cores`): not a measurement.
    pub cores_shared: bool,
    /// Medians over the repeats (throughput); null for handshakes.
    pub mpps: Option<f64>,
    pub gbps: Option<f64>,
    /// Percent, median over the repeats.
    pub loss: Option<f64>,
    pub mpps_min: Option<f64>,
    pub mpps_max: Option<f64>,
    /// The highest paced rate the search found with at most 1 % loss (delivered Mpps, inner
    /// Gbit/s); null if the search was off or no probe was lossless.
    pub lossless_mpps: Option<f64>,
    pub lossless_gbps: Option<f64>,
    /// Handshakes per second (handshakes scenario), median.
    pub handshakes_per_s: Option<f64>,
    pub handshakes_min: Option<f64>,
    pub handshakes_max: Option<f64>,
    /// Gateway resident memory per configured peer (memory scenario): the difference between
    /// the gateway with `users` peers and with one, divided by `users - 1`.
    pub bytes_per_peer: Option<f64>,
    /// The gateway's resident memory with `users` peers configured (memory scenario).
    pub rss_bytes: Option<u64>,
    pub repeats: usize,
    /// Loss above 1 %: the rate is what the gateway delivered under overload, not a lossless
    /// rate.
    pub lossy: bool,
    /// The generator, not the gateway, may have set the rate (it sent less than asked, or the
    /// gateway delivered everything it sent at full speed).
    pub generator_bound: bool,
    pub samples: Vec<Sample>,
    /// The handshake-flood scenario's numbers (scenario "handshake-flood").
    pub flood: Option<FloodResult>,
    /// The latency scenario's numbers (scenario "latency").
    pub latency: Option<LatencyResult>,
}

/// The users' goodput under a spoofed handshake flood against the same paced stream without.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FloodResult {
    /// The users' paced stream, packets per second offered (both runs).
    pub stream_pps: f64,
    /// Delivered Mpps without and with the flood (medians over the repeats).
    pub baseline_mpps: f64,
    pub flood_mpps: f64,
    /// `flood_mpps / baseline_mpps` (the issue's target: at least 0.9; recorded, not
    /// asserted).
    pub goodput_fraction: f64,
    /// Spoofed initiations per second actually sent (median).
    pub flood_pps: f64,
    /// Cookie replies that reached the spoofed sources (sum over the repeats).
    pub cookie_replies_received: u64,
    /// The gateway's own count of cookie replies sent during the flood runs, if it exposes
    /// one (sluice: `sluice_cookie_replies_sent_total`).
    pub gateway_cookie_replies: Option<u64>,
    /// Handshake responses to spoofed initiations (must be 0).
    pub responses: u64,
}

/// One-way latency percentiles of a probe stream, idle or under load.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencyResult {
    /// "idle" or "loaded".
    pub load: String,
    /// The paced stream's rate, packets per second (every packet a probe when idle).
    pub rate_pps: f64,
    pub percentiles: Option<Percentiles>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

impl CompareRecord {
    /// A throughput record from its repeats. `generator_bound` is decided by the caller.
    pub fn throughput(
        implementation: &str,
        mode: &str,
        size: &str,
        users: u32,
        samples: Vec<Sample>,
        generator_bound: bool,
    ) -> CompareRecord {
        let mpps: Vec<f64> = samples.iter().map(|s| s.mpps).collect();
        let gbps: Vec<f64> = samples.iter().map(|s| s.gbps).collect();
        let loss: Vec<f64> = samples.iter().map(|s| s.loss).collect();
        let (lo, hi) = min_max(&mpps);
        let loss_med = median(&loss);
        CompareRecord {
            scenario: "throughput".into(),
            direction: "users->inside".into(),
            implementation: implementation.into(),
            mode: mode.into(),
            size: size.into(),
            users,
            gateway_cores: 1,
            cores_shared: false,
            mpps: Some(median(&mpps)),
            gbps: Some(median(&gbps)),
            loss: Some(loss_med),
            mpps_min: Some(lo),
            mpps_max: Some(hi),
            lossless_mpps: None,
            lossless_gbps: None,
            handshakes_per_s: None,
            handshakes_min: None,
            handshakes_max: None,
            bytes_per_peer: None,
            rss_bytes: None,
            repeats: samples.len(),
            lossy: loss_med > LOSSY * 100.0,
            generator_bound,
            samples,
            flood: None,
            latency: None,
        }
    }

    /// A handshakes-per-second record from its repeats.
    pub fn handshakes(implementation: &str, mode: &str, users: u32, rates: &[f64]) -> Self {
        let (lo, hi) = min_max(rates);
        CompareRecord {
            scenario: "handshakes".into(),
            direction: "users->gateway".into(),
            implementation: implementation.into(),
            mode: mode.into(),
            size: "-".into(),
            users,
            gateway_cores: 1,
            cores_shared: false,
            mpps: None,
            gbps: None,
            loss: None,
            mpps_min: None,
            mpps_max: None,
            lossless_mpps: None,
            lossless_gbps: None,
            handshakes_per_s: Some(median(rates)),
            handshakes_min: Some(lo),
            handshakes_max: Some(hi),
            bytes_per_peer: None,
            rss_bytes: None,
            repeats: rates.len(),
            lossy: false,
            generator_bound: false,
            samples: Vec::new(),
            flood: None,
            latency: None,
        }
    }

    /// A handshake-flood record: the users' paced stream without (`baseline`) and with the
    /// flood (`flooded`), one sample per repeat each.
    pub fn flood(
        who: (&str, &str),
        size: &str,
        users: u32,
        baseline: Vec<Sample>,
        flooded: Vec<Sample>,
        mut result: FloodResult,
    ) -> Self {
        let base: Vec<f64> = baseline.iter().map(|s| s.mpps).collect();
        let with = Self::throughput(who.0, who.1, size, users, flooded, false);
        result.baseline_mpps = median(&base);
        result.flood_mpps = with.mpps.unwrap_or(f64::NAN);
        result.goodput_fraction = result.flood_mpps / result.baseline_mpps;
        let mut r = with;
        r.scenario = "handshake-flood".into();
        r.samples.extend(baseline);
        r.flood = Some(result);
        r
    }

    /// A latency record from one probe run.
    pub fn latency(
        who: (&str, &str),
        direction: &str,
        size: &str,
        users: u32,
        sample: Sample,
        result: LatencyResult,
    ) -> Self {
        let mut r = Self::throughput(who.0, who.1, size, users, vec![sample], false);
        r.scenario = "latency".into();
        r.direction = direction.into();
        r.latency = Some(result);
        r
    }

    /// A memory-per-peer record: resident memory with `peers` peers and with one.
    pub fn memory(
        implementation: &str,
        mode: &str,
        peers: u32,
        rss_one: u64,
        rss_all: u64,
    ) -> Self {
        let mut r = CompareRecord::handshakes(implementation, mode, peers, &[]);
        r.scenario = "memory".into();
        r.direction = "-".into();
        r.handshakes_per_s = None;
        r.handshakes_min = None;
        r.handshakes_max = None;
        r.repeats = 1;
        r.rss_bytes = Some(rss_all);
        r.bytes_per_peer =
            Some((rss_all as f64 - rss_one as f64) / f64::from(peers.saturating_sub(1).max(1)));
        r
    }

    /// "sluice xdp+tun" or "wireguard-go".
    pub fn who(&self) -> String {
        if self.implementation == "sluice" {
            format!("sluice {}", self.mode)
        } else {
            self.implementation.clone()
        }
    }

    /// The headline number: Mpps, or handshakes/s.
    pub fn value(&self) -> f64 {
        self.mpps
            .or(self.handshakes_per_s)
            .or(self.bytes_per_peer)
            .unwrap_or(f64::NAN)
    }

    /// A scaling record (max-rate throughput with `gateway_cores` cores).
    pub fn scaling(mut rec: CompareRecord, cores: usize, shared: bool) -> CompareRecord {
        rec.scenario = "scaling".into();
        rec.gateway_cores = cores;
        rec.cores_shared = shared;
        rec
    }

    fn group(&self) -> String {
        match self.scenario.as_str() {
            "throughput" => format!("throughput {} B {}", self.size, self.direction),
            "scaling" => format!(
                "scaling with gateway cores, {} B {}, max rate",
                self.size, self.direction
            ),
            "handshake-flood" => format!(
                "handshake flood from spoofed sources, {} B {} paced stream",
                self.size, self.direction
            ),
            "latency" => format!("latency, one way, {} B {}", self.size, self.direction),
            s => s.to_string(),
        }
        .replace(" imix B", " IMIX")
    }
}

/// The table: one block per scenario (and size), one row per implementation, then sluice's
/// ratio to each other implementation.
pub fn table(records: &[CompareRecord]) -> String {
    let mut groups: BTreeMap<(String, String), Vec<&CompareRecord>> = BTreeMap::new();
    for r in records {
        // Throughput first, then the other scenarios; directions apart, "users->inside"
        // first; sizes in order.
        let rank = match r.scenario.as_str() {
            "throughput" => 0,
            "handshakes" => 1,
            "memory" => 2,
            "handshake-flood" => 3,
            "scaling" => 5,
            _ => 4,
        };
        let inside_out = r.direction.starts_with('i');
        let order = match r.size.parse::<u32>() {
            Ok(n) => format!("{rank}{}{inside_out}{n:05}", r.scenario),
            Err(_) => format!("{rank}{}{inside_out}{}", r.scenario, r.size),
        };
        groups.entry((order, r.group())).or_default().push(r);
    }
    let mut out = String::new();
    for ((_, name), rows) in &groups {
        let _ = writeln!(out, "\n{name} ({} users)", rows[0].users);
        for r in rows {
            if r.scenario == "scaling" {
                let one = rows
                    .iter()
                    .find(|o| o.who() == r.who() && o.gateway_cores == 1)
                    .and_then(|o| o.mpps);
                let speedup = match (r.mpps, one) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x of 1 core", a / b),
                    _ => "-".into(),
                };
                let errors: u64 = r.samples.iter().map(|s| s.errors).sum();
                let _ = writeln!(
                    out,
                    "  {:<20} {:>2} core{} {:>8} Mpps [{}-{}]  {:>7} Gbit/s  loss {:>6.2}%  sink errors {errors}  {speedup}{}{}",
                    r.who(),
                    r.gateway_cores,
                    if r.gateway_cores == 1 { " " } else { "s" },
                    fmt_num(r.mpps.unwrap_or(f64::NAN)),
                    fmt_num(r.mpps_min.unwrap_or(f64::NAN)),
                    fmt_num(r.mpps_max.unwrap_or(f64::NAN)),
                    fmt_num(r.gbps.unwrap_or(f64::NAN)),
                    r.loss.unwrap_or(f64::NAN),
                    if r.generator_bound { "  generator-bound" } else { "" },
                    if r.cores_shared {
                        "  SHARED with the generator: not a measurement"
                    } else {
                        ""
                    },
                );
            } else if r.scenario == "throughput" {
                let flags = [
                    (r.lossy, "LOSSY >1%"),
                    (r.generator_bound, "generator-bound"),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, s)| *s)
                .collect::<Vec<_>>()
                .join(", ");
                let errors: u64 = r.samples.iter().map(|s| s.errors).sum();
                let lossless = match (r.lossless_mpps, r.lossless_gbps) {
                    (Some(m), Some(g)) => {
                        format!("{:>8} Mpps {:>7} Gbit/s", fmt_num(m), fmt_num(g))
                    }
                    _ => format!("{:>25}", "-"),
                };
                let _ = writeln!(
                    out,
                    "  {:<20} at <=1% loss {lossless} | max rate {:>8} Mpps [{}-{}]  {:>7} Gbit/s  loss {:>6.2}%  sink errors {}  {}",
                    r.who(),
                    fmt_num(r.mpps.unwrap_or(f64::NAN)),
                    fmt_num(r.mpps_min.unwrap_or(f64::NAN)),
                    fmt_num(r.mpps_max.unwrap_or(f64::NAN)),
                    fmt_num(r.gbps.unwrap_or(f64::NAN)),
                    r.loss.unwrap_or(f64::NAN),
                    errors,
                    flags
                );
            } else if let Some(f) = &r.flood {
                let errors: u64 = r.samples.iter().map(|s| s.errors).sum();
                let _ = writeln!(
                    out,
                    "  {:<20} goodput during the flood {:>8} Mpps = {:.1} % of {} Mpps without \
                     (target >= 90 %); stream {} pps; flood {} initiations/s, {} cookie replies \
                     back{}, {} responses; sink errors {errors}",
                    r.who(),
                    fmt_num(f.flood_mpps),
                    f.goodput_fraction * 100.0,
                    fmt_num(f.baseline_mpps),
                    fmt_num(f.stream_pps),
                    fmt_num(f.flood_pps),
                    f.cookie_replies_received,
                    f.gateway_cookie_replies
                        .map(|c| format!(" (the gateway counted {c} sent)"))
                        .unwrap_or_default(),
                    f.responses,
                );
            } else if let Some(l) = &r.latency {
                let p = match &l.percentiles {
                    Some(p) => format!(
                        "p50 {:>8} us  p90 {:>8} us  p99 {:>8} us  max {:>8} us  ({} probes)",
                        fmt_num(p.p50_us),
                        fmt_num(p.p90_us),
                        fmt_num(p.p99_us),
                        fmt_num(p.max_us),
                        p.probes
                    ),
                    None => "no probe arrived".into(),
                };
                let _ = writeln!(
                    out,
                    "  {:<20} {:<6} {:>9} pps  {p}  loss {:.2}%",
                    r.who(),
                    l.load,
                    fmt_num(l.rate_pps),
                    r.loss.unwrap_or(f64::NAN)
                );
            } else if r.scenario == "memory" {
                let _ = writeln!(
                    out,
                    "  {:<20} {:>8} bytes per peer (resident {:.1} MiB with {} peers)",
                    r.who(),
                    fmt_num(r.bytes_per_peer.unwrap_or(f64::NAN)),
                    r.rss_bytes.unwrap_or(0) as f64 / 1048576.0,
                    r.users
                );
            } else {
                let _ = writeln!(
                    out,
                    "  {:<20} {:>8} handshakes/s [{}-{}]",
                    r.who(),
                    fmt_num(r.handshakes_per_s.unwrap_or(f64::NAN)),
                    fmt_num(r.handshakes_min.unwrap_or(f64::NAN)),
                    fmt_num(r.handshakes_max.unwrap_or(f64::NAN)),
                );
            }
        }
        for line in ratios(rows) {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// "sluice xdp+tun / wireguard-go = 2.10x" for every sluice mode and every other
/// implementation in one group.
pub fn ratios(rows: &[&CompareRecord]) -> Vec<String> {
    let mut v = Vec::new();
    if rows
        .iter()
        .any(|r| r.flood.is_some() || r.latency.is_some() || r.scenario == "scaling")
    {
        return v;
    }
    for s in rows.iter().filter(|r| r.implementation == "sluice") {
        for o in rows.iter().filter(|r| r.implementation != "sluice") {
            let ratio = s.value() / o.value();
            let what = if s.scenario == "memory" {
                " (memory per peer: lower is better)"
            } else {
                ""
            };
            if let (Some(a), Some(b)) = (s.lossless_mpps, o.lossless_mpps) {
                if (a / b).is_finite() {
                    v.push(format!(
                        "{} / {} = {:.2}x at <=1% loss",
                        s.who(),
                        o.who(),
                        a / b
                    ));
                }
            }
            let what = if s.scenario == "throughput" {
                " at max rate"
            } else {
                what
            };
            if ratio.is_finite() {
                v.push(format!("{} / {} = {:.2}x{what}", s.who(), o.who(), ratio));
            }
        }
    }
    v
}

/// The JSON file: the common report (machine, kernel, CPU, commit, params with the core
/// pinning) plus the list of records.
#[derive(Serialize)]
struct CompareJson<'a> {
    #[serde(flatten)]
    report: &'a Report,
    records: &'a [CompareRecord],
}

pub fn write_json(report: &Report, records: &[CompareRecord], path: &Path) -> Result<(), String> {
    let doc = CompareJson { report, records };
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grouped bar chart per scenario: throughput (Mpps per size) and handshakes/s, one bar per
/// implementation with its min-max whisker, lossy bars hatched by a label; then the scaling
/// panels (Mpps against gateway cores, a line per implementation), or `scaling_note` in their
/// place when there are no scaling records. `title` goes on top (the machine and date).
pub fn svg(records: &[CompareRecord], title: &str, scaling_note: Option<&str>) -> String {
    let mut who: Vec<String> = records.iter().map(CompareRecord::who).collect();
    who.sort();
    who.dedup();
    let lossless: Vec<CompareRecord> = records
        .iter()
        .filter(|r| r.scenario == "throughput")
        .filter_map(|r| {
            let mut c = r.clone();
            c.mpps = Some(r.lossless_mpps?);
            c.mpps_min = None;
            c.mpps_max = None;
            c.lossy = false;
            Some(c)
        })
        .collect();
    let mut directions: Vec<&str> = records
        .iter()
        .filter(|r| r.scenario == "throughput")
        .map(|r| r.direction.as_str())
        .collect();
    directions.sort_by_key(|d| d.starts_with('i'));
    directions.dedup();
    let mut panels: Vec<(String, &str, Vec<&CompareRecord>)> = Vec::new();
    for d in &directions {
        panels.push((
            format!("throughput at <=1% loss, {d} (Mpps, highest lossless paced rate found)"),
            "Mpps",
            lossless.iter().filter(|r| r.direction == *d).collect(),
        ));
        panels.push((
            format!(
                "throughput at maximum offered rate, {d} (Mpps delivered, median; whiskers: min-max)"
            ),
            "Mpps",
            records
                .iter()
                .filter(|r| r.scenario == "throughput" && r.direction == *d)
                .collect(),
        ));
    }
    panels.push((
        "handshakes per second (median; whiskers: min-max)".into(),
        "handshakes/s",
        records
            .iter()
            .filter(|r| r.scenario == "handshakes")
            .collect(),
    ));
    let (w, panel_h, top) = (900.0_f64, 300.0_f64, 60.0_f64);
    let panels: Vec<_> = panels.into_iter().filter(|p| !p.2.is_empty()).collect();
    // One panel per size and direction; marked shared if any of its points is.
    let mut scaling: Vec<(String, Vec<&CompareRecord>)> = Vec::new();
    for r in records.iter().filter(|r| r.scenario == "scaling") {
        let key = format!("{} B {}", r.size, r.direction);
        match scaling.iter_mut().find(|(k, _)| *k == key) {
            Some((_, rows)) => rows.push(r),
            None => scaling.push((key, vec![r])),
        }
    }
    for (key, rows) in &mut scaling {
        *key = format!(
            "scaling: {key} at maximum offered rate (Mpps delivered, median; whiskers: min-max) \
             against gateway cores{}",
            if rows.iter().any(|r| r.cores_shared) {
                " (SHARED with the generator: not a measurement)"
            } else {
                ""
            }
        )
        .replace(" imix B", " IMIX");
    }
    let note_h = if scaling.is_empty() && scaling_note.is_some() {
        30.0
    } else {
        0.0
    };
    let h = top
        + (panels.len() + scaling.len()) as f64 * (panel_h + 70.0)
        + note_h
        + 20.0 * who.len() as f64
        + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">{}</text>"#,
        esc(title)
    );
    let mut y0 = top;
    for (name, unit, rows) in &panels {
        let mut groups: Vec<String> = Vec::new();
        for r in rows {
            if !groups.contains(&r.size) {
                groups.push(r.size.clone());
            }
        }
        groups.sort_by_key(|g| g.parse::<u32>().unwrap_or(u32::MAX));
        let max = rows
            .iter()
            .map(|r| {
                r.mpps_max
                    .or(r.handshakes_max)
                    .unwrap_or(0.0)
                    .max(r.value())
            })
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.1;
        let (x0, plot_w) = (70.0, w - 90.0);
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}" font-size="13">{}</text>"#,
            y0,
            esc(name)
        );
        let base = y0 + panel_h;
        let _ = writeln!(
            s,
            r#"<line x1="{x0}" y1="{base}" x2="{}" y2="{base}" stroke="black"/><line x1="{x0}" y1="{}" x2="{x0}" y2="{base}" stroke="black"/>"#,
            x0 + plot_w,
            y0 + 10.0
        );
        for t in 0..=4 {
            let v = max * f64::from(t) / 4.0;
            let y = base - (panel_h - 10.0) * f64::from(t) / 4.0;
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
                x0 - 4.0,
                y + 4.0,
                fmt_num(v),
                x0 + plot_w
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="12" y="{}" transform="rotate(-90 12 {})">{}</text>"#,
            base - panel_h / 2.0,
            base - panel_h / 2.0,
            unit
        );
        let gw = plot_w / groups.len().max(1) as f64;
        let bw = (gw * 0.8) / who.len().max(1) as f64;
        for (gi, g) in groups.iter().enumerate() {
            let gx = x0 + gi as f64 * gw + gw * 0.1;
            let label = match g.as_str() {
                "-" => "all users".to_string(),
                "imix" => "IMIX".to_string(),
                n => format!("{n} B"),
            };
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                gx + gw * 0.4,
                base + 16.0,
                label
            );
            for (wi, name) in who.iter().enumerate() {
                let Some(r) = rows.iter().find(|r| &r.size == g && &r.who() == name) else {
                    continue;
                };
                let v = r.value();
                if !v.is_finite() {
                    continue;
                }
                let bh = (panel_h - 10.0) * v / max;
                let x = gx + wi as f64 * bw;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    base - bh,
                    bw * 0.9,
                    COLORS[wi % COLORS.len()],
                    esc(name),
                    fmt_num(v)
                );
                if let (Some(lo), Some(hi)) = (
                    r.mpps_min.or(r.handshakes_min),
                    r.mpps_max.or(r.handshakes_max),
                ) {
                    let cx = x + bw * 0.45;
                    let _ = writeln!(
                        s,
                        r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/>"#,
                        base - (panel_h - 10.0) * lo / max,
                        base - (panel_h - 10.0) * hi / max
                    );
                }
                if r.lossy {
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">&gt;1% loss</text>"#,
                        x + bw * 0.45,
                        base - bh - 4.0
                    );
                }
            }
        }
        y0 += panel_h + 70.0;
    }
    for (name, rows) in &scaling {
        scaling_panel(&mut s, name, rows, &who, y0, w, panel_h);
        y0 += panel_h + 70.0;
    }
    if let (true, Some(note)) = (scaling.is_empty(), scaling_note) {
        let _ = writeln!(
            s,
            r#"<text x="10" y="{y0}" font-size="13">scaling with gateway cores: {}</text>"#,
            esc(note)
        );
        y0 += note_h;
    }
    for (wi, name) in who.iter().enumerate() {
        let y = y0 - 30.0 + 20.0 * wi as f64;
        let _ = writeln!(
            s,
            r#"<rect x="70" y="{}" width="12" height="12" fill="{}"/><text x="88" y="{}">{}</text>"#,
            y - 10.0,
            COLORS[wi % COLORS.len()],
            y,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One scaling panel at `y0`: Mpps against gateway cores, a line per implementation (colours
/// as in the bar panels, by `who`), min-max whiskers.
fn scaling_panel(
    s: &mut String,
    name: &str,
    rows: &[&CompareRecord],
    who: &[String],
    y0: f64,
    w: f64,
    panel_h: f64,
) {
    let kmax = rows
        .iter()
        .map(|r| r.gateway_cores)
        .max()
        .unwrap_or(1)
        .max(1);
    let max = rows
        .iter()
        .map(|r| r.mpps_max.unwrap_or(0.0).max(r.value()))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let (x0, plot_w) = (70.0, w - 90.0);
    let base = y0 + panel_h;
    let x_of = |k: usize| {
        if kmax == 1 {
            x0 + plot_w / 2.0
        } else {
            x0 + 30.0 + (plot_w - 60.0) * (k - 1) as f64 / (kmax - 1) as f64
        }
    };
    let y_of = |v: f64| base - (panel_h - 10.0) * v / max;
    let _ = writeln!(
        s,
        r#"<text x="10" y="{y0}" font-size="13">{}</text>"#,
        esc(name)
    );
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{base}" x2="{}" y2="{base}" stroke="black"/><line x1="{x0}" y1="{}" x2="{x0}" y2="{base}" stroke="black"/>"#,
        x0 + plot_w,
        y0 + 10.0
    );
    for t in 0..=4 {
        let v = max * f64::from(t) / 4.0;
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            x0 - 4.0,
            y + 4.0,
            fmt_num(v),
            x0 + plot_w
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="12" y="{}" transform="rotate(-90 12 {})">Mpps</text>"#,
        base - panel_h / 2.0,
        base - panel_h / 2.0
    );
    for k in 1..=kmax {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{k} core{}</text>"#,
            x_of(k),
            base + 16.0,
            if k == 1 { "" } else { "s" }
        );
    }
    for (wi, name) in who.iter().enumerate() {
        let mut pts: Vec<&&CompareRecord> = rows
            .iter()
            .filter(|r| &r.who() == name && r.value().is_finite())
            .collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_by_key(|r| r.gateway_cores);
        let color = COLORS[wi % COLORS.len()];
        let line: Vec<String> = pts
            .iter()
            .map(|r| format!("{:.1},{:.1}", x_of(r.gateway_cores), y_of(r.value())))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            line.join(" ")
        );
        for r in pts {
            let (x, y) = (x_of(r.gateway_cores), y_of(r.value()));
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{color}"><title>{}, {} core(s): {}</title></circle>"#,
                esc(name),
                r.gateway_cores,
                fmt_num(r.value())
            );
            if let (Some(lo), Some(hi)) = (r.mpps_min, r.mpps_max) {
                let _ = writeln!(
                    s,
                    r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{color}"/>"#,
                    y_of(lo),
                    y_of(hi)
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(mpps: f64, loss: f64) -> Sample {
        Sample {
            mpps,
            gbps: mpps * 8.0 * 1420.0 / 1000.0,
            loss,
            sent: 1000,
            delivered: (1000.0 * (1.0 - loss / 100.0)) as u64,
            errors: 0,
            offered_mpps: mpps,
            generator_cpu: 0.5,
        }
    }

    fn records() -> Vec<CompareRecord> {
        let mut v = vec![
            CompareRecord::throughput(
                "sluice",
                "xdp+tun",
                "1420",
                100,
                vec![sample(0.3, 0.0), sample(0.2, 0.5), sample(0.25, 0.2)],
                false,
            ),
            CompareRecord::throughput(
                "wireguard-go",
                "socket+tun",
                "1420",
                100,
                vec![sample(0.1, 5.0), sample(0.12, 4.0), sample(0.11, 6.0)],
                false,
            ),
            CompareRecord::handshakes("sluice", "xdp+tun", 100, &[5000.0, 4000.0, 4500.0]),
            CompareRecord::handshakes("wireguard-go", "socket+tun", 100, &[2000.0, 2500.0]),
        ];
        v[0].lossless_mpps = Some(0.2);
        v[0].lossless_gbps = Some(2.0);
        v[1].lossless_mpps = Some(0.08);
        v[1].lossless_gbps = Some(0.8);
        v
    }

    #[test]
    fn records_take_medians_spread_and_label_loss() {
        let r = &records()[0];
        assert_eq!(r.mpps, Some(0.25));
        assert_eq!((r.mpps_min, r.mpps_max), (Some(0.2), Some(0.3)));
        assert_eq!(r.loss, Some(0.2));
        assert!(!r.lossy);
        let w = &records()[1];
        assert_eq!(w.loss, Some(5.0));
        assert!(w.lossy);
        let h = &records()[3];
        assert_eq!(h.handshakes_per_s, Some(2250.0));
        assert_eq!(h.mpps, None);
    }

    #[test]
    fn json_has_the_issue_fields() {
        let v = serde_json::to_value(&records()[0]).unwrap();
        for k in [
            "scenario",
            "direction",
            "impl",
            "mode",
            "size",
            "users",
            "mpps",
            "gbps",
            "loss",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["impl"], "sluice");
        assert_eq!(v["samples"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn table_prints_ratios_and_labels() {
        let t = table(&records());
        assert!(t.contains("sluice xdp+tun / wireguard-go = 2.27x"), "{t}");
        assert!(t.contains("sluice xdp+tun / wireguard-go = 2.00x"), "{t}");
        assert!(t.contains("LOSSY >1%"), "{t}");
        assert!(
            t.contains("sluice xdp+tun / wireguard-go = 2.50x at <=1% loss"),
            "{t}"
        );
        assert!(
            t.contains("throughput 1420 B users->inside (100 users)"),
            "{t}"
        );
    }

    #[test]
    fn svg_has_a_bar_per_record() {
        let s = svg(
            &records(),
            "test",
            Some("1 gateway core: this machine has 2"),
        );
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        // 2 lossless bars, 2 max-rate bars, 2 handshake bars.
        assert_eq!(s.matches("<title>").count(), 6);
        assert!(s.contains("&gt;1% loss"));
        assert!(s.contains("1 gateway core: this machine has 2"));
        assert!(!s.contains("<polyline"));
    }

    fn scaling_records(shared: bool) -> Vec<CompareRecord> {
        let mut v = Vec::new();
        for (who, mode, per_core) in [("sluice", "xdp+tun", 0.3), ("boringtun", "socket+tun", 0.1)]
        {
            for k in 1..=3usize {
                let m = per_core * k as f64;
                let rec = CompareRecord::throughput(
                    who,
                    mode,
                    "1420",
                    8,
                    vec![sample(m, 0.0), sample(m * 0.9, 0.0), sample(m * 1.1, 0.0)],
                    false,
                );
                v.push(CompareRecord::scaling(rec, k, shared));
            }
        }
        v
    }

    #[test]
    fn scaling_rows_carry_cores_speedup_and_the_shared_label() {
        let recs = scaling_records(false);
        let v = serde_json::to_value(&recs[2]).unwrap();
        assert_eq!(v["gateway_cores"], 3);
        assert_eq!(v["scenario"], "scaling");
        assert_eq!(v["cores_shared"], false);
        let t = table(&recs);
        assert!(
            t.contains("scaling with gateway cores, 1420 B users->inside, max rate"),
            "{t}"
        );
        assert!(t.contains("3.00x of 1 core"), "{t}");
        assert!(t.contains("2.00x of 1 core"), "{t}");
        // No cross-core ratios between implementations in a scaling block.
        assert!(!t.contains("sluice xdp+tun / boringtun"), "{t}");
        assert!(!t.contains("not a measurement"), "{t}");
        let shared = table(&scaling_records(true));
        assert!(
            shared.contains("SHARED with the generator: not a measurement"),
            "{shared}"
        );
    }

    #[test]
    fn svg_has_a_scaling_line_per_implementation() {
        // k = 1 measured, k > 1 shared (as --allow-shared-cores on a 2-core machine): one
        // panel, marked.
        let mut recs = scaling_records(true);
        for r in recs.iter_mut().filter(|r| r.gateway_cores == 1) {
            r.cores_shared = false;
        }
        let s = svg(&recs, "test", Some("unused"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert_eq!(s.matches("<circle").count(), 6);
        assert!(s.contains("3 cores"));
        assert_eq!(s.matches("not a measurement").count(), 1);
        assert!(!s.contains("unused"));
    }
}
