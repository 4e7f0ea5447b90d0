//! What every subcommand prints and writes: a header describing the machine and the run, a table
//! of results, and (with `--json FILE`) the same as JSON.
//!
//! Benchmark numbers are only comparable between runs on the same machine, build and commit, so
//! the header records all of those next to the numbers instead of leaving them to memory.
//!
//! # JSON schema
//!
//! ```text
//! {
//!   "schema": "sluice-bench/1",
//!   "subcommand": "proto",
//!   "machine": {
//!     "date_utc": "2025-01-31T12:34:56Z",    // when the run started
//!     "hostname": "bench-1",
//!     "kernel": "6.1.0-18-amd64",             // /proc/sys/kernel/osrelease
//!     "cpu_model": "AMD EPYC 7763 ...",       // first "model name" in /proc/cpuinfo
//!     "cores": 2,                             // cores this process may run on, before pinning
//!     "pinned_core": 1,                       // null if pinning failed or was not asked for
//!     "pinning": "gateway on 1 core (cpus 1); ...", // compare only: who runs on which cores
//!     "git_commit": "12b0760",                // `git rev-parse --short HEAD`, or "unknown"
//!     "git_dirty": false,                     // tracked files differ from HEAD; null if unknown
//!     "profile": "release",                   // "debug" when built without optimizations
//!     "command": "sluice-bench proto --json out.json"
//!   },
//!   "params": { ... },                        // the subcommand's resolved settings
//!   "results": [
//!     { "bench": "handshake", "unit": "handshakes/s",
//!       "median": 9876.5, "min": 9800.1, "max": 9901.7, "repeats": 3 },
//!     ...
//!   ],
//!   "notes": [ "..." ]                        // free-text context, as printed under the table
//! }
//! ```
//!
//! For rate units (those ending in `/s`) the time per operation is `1e9 / median` ns; it is
//! printed in the table but not stored, since it carries no extra information.

use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Version tag of the JSON layout above; bump it when a field changes meaning.
const SCHEMA: &str = "sluice-bench/1";

/// The machine and build a run happened on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub date_utc: String,
    pub hostname: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub pinned_core: Option<usize>,
    /// Where the subcommand runs what, when it is more than one pinned core (compare: the
    /// gateway's cores and the generator's); the header prints it as the pinning line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinning: Option<String>,
    pub git_commit: String,
    pub git_dirty: Option<bool>,
    pub profile: &'static str,
    pub command: String,
}

impl Machine {
    /// Describe this machine and process. Call before pinning: the core count is what the
    /// process may use, which pinning narrows to one.
    pub fn collect() -> Machine {
        let (git_commit, git_dirty) = git_state();
        Machine {
            date_utc: utc_now(),
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpu_model: cpu_model(),
            cores: core_affinity::get_core_ids().map_or(0, |ids| ids.len()),
            pinned_core: None,
            pinning: None,
            git_commit,
            git_dirty,
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            command: command_line(),
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// The commit of the source tree this binary was built from, if it is still there; otherwise
/// of the current directory's repository. A dirty tree is flagged because its numbers cannot
/// be reproduced from the commit alone.
fn git_state() -> (String, Option<bool>) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = if manifest.is_dir() {
        manifest.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default()
    };
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty =
                git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
            (commit, dirty)
        }
        _ => ("unknown".to_string(), None),
    }
}

/// The command line as a shell would need it typed, so it can be pasted to rerun.
fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            // Print the program by file name: the target directory path is noise.
            let a = if i == 0 {
                Path::new(&a)
                    .file_name()
                    .map_or(a.clone(), |f| f.to_string_lossy().into_owned())
            } else {
                a
            };
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The current time as RFC 3339 UTC, computed from the Unix clock (no time crate needed).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// One benchmark's result over its repeats.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub bench: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub repeats: usize,
}

impl Record {
    /// Summarize repeated measurements. For an even count the median is the mean of the two
    /// middle values.
    pub fn from_samples(bench: &str, unit: &str, samples: &[f64]) -> Record {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => s[n / 2],
            _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        Record {
            bench: bench.to_string(),
            unit: unit.to_string(),
            median,
            min: s.first().copied().unwrap_or(f64::NAN),
            max: s.last().copied().unwrap_or(f64::NAN),
            repeats: n,
        }
    }

    /// Rates get a time-per-operation column; one-off quantities (sizes, durations) don't.
    fn is_rate(&self) -> bool {
        self.unit.ends_with("/s")
    }
}

/// Everything one subcommand run produced.
#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub subcommand: String,
    pub machine: Machine,
    pub params: serde_json::Value,
    pub results: Vec<Record>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(subcommand: &str, machine: Machine, params: serde_json::Value) -> Report {
        Report {
            schema: SCHEMA,
            subcommand: subcommand.to_string(),
            machine,
            params,
            results: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The header block: enough to tell later whether two runs are comparable.
    pub fn header(&self) -> String {
        let m = &self.machine;
        let pinned = match (&m.pinning, m.pinned_core) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => format!("core {c}"),
            (None, None) => "not pinned".to_string(),
        };
        let dirty = match m.git_dirty {
            Some(true) => " (uncommitted changes)",
            _ => "",
        };
        let params = match &self.params {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        };
        let mut out = String::new();
        let _ = writeln!(out, "sluice-bench {}", self.subcommand);
        let _ = writeln!(out, "  date      {}", m.date_utc);
        let _ = writeln!(out, "  host      {}", m.hostname);
        let _ = writeln!(out, "  kernel    {}", m.kernel);
        let _ = writeln!(out, "  cpu       {} ({} cores)", m.cpu_model, m.cores);
        let _ = writeln!(out, "  pinned    {pinned}");
        let _ = writeln!(out, "  commit    {}{dirty}", m.git_commit);
        let _ = writeln!(out, "  profile   {}", m.profile);
        let _ = writeln!(out, "  command   {}", m.command);
        let _ = writeln!(out, "  params    {params}");
        out
    }

    /// The results table and the notes under it.
    pub fn table(&self) -> String {
        let name_w = self
            .results
            .iter()
            .map(|r| r.bench.len())
            .chain([9])
            .max()
            .unwrap_or(9);
        let unit_w = self
            .results
            .iter()
            .map(|r| r.unit.len())
            .chain([4])
            .max()
            .unwrap_or(4);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<name_w$}  {:>14}  {:>14}  {:>14}  {:<unit_w$}  {:>12}",
            "benchmark", "median", "min", "max", "unit", "ns/op (med)"
        );
        for r in &self.results {
            let per_op = if r.is_rate() && r.median > 0.0 {
                fmt_num(1e9 / r.median)
            } else {
                "-".to_string()
            };
            let _ = writeln!(
                out,
                "{:<name_w$}  {:>14}  {:>14}  {:>14}  {:<unit_w$}  {:>12}",
                r.bench,
                fmt_num(r.median),
                fmt_num(r.min),
                fmt_num(r.max),
                r.unit,
                per_op
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// Large numbers with thousands separators and no decimals; small ones with three significant
/// digits, so every column stays readable whatever the magnitude.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x.abs() >= 1000.0 {
        let digits = format!("{:.0}", x.abs());
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if x < 0.0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else if x.abs() >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // 2000-03-01 is day 11017; 2024-02-29 is day 19782.
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn median_min_max() {
        let r = Record::from_samples("x", "ops/s", &[3.0, 1.0, 2.0]);
        assert_eq!((r.median, r.min, r.max, r.repeats), (2.0, 1.0, 3.0, 3));
        let r = Record::from_samples("x", "ops/s", &[4.0, 1.0]);
        assert_eq!(r.median, 2.5);
    }

    #[test]
    fn numbers_format() {
        assert_eq!(fmt_num(1_234_567.8), "1,234,568");
        assert_eq!(fmt_num(999.94), "999.9");
        assert_eq!(fmt_num(12.345), "12.35");
        assert_eq!(fmt_num(1.5), "1.500");
    }
}
