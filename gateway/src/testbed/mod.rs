//! A network-namespace test bed: real WireGuard clients, a real gateway, real traffic.
//!
//! Everything here starts real components and cleans them up again: namespaces and veth pairs
//! made with `ip`, WireGuard clients run by `wireguard-go` and `boringtun-cli` and configured
//! with the stock `wg` tool, the `sluice up` daemon (or a stand-in gateway), `iperf3`, and
//! sockets opened inside namespaces by this process itself. The integration tests in
//! `gateway/tests/netns_interop.rs` and the `sluice-bench lab` demo are both built on it.
//!
//! ```text
//!  user namespaces (N)             gateway namespace                     sink namespace
//!  +---------------------+  veth   +---------------------------+  veth  +--------------+
//!  | wg client (wg-go or |---------| to-uK: 198.18.K.1/25      |        |              |
//!  |   boringtun-cli)    |  one    |        fd18:0:0:K::1/80   |        |              |
//!  | wgIDuK:             |  per    |                           |        |              |
//!  |   10.77.0.(K+1)/32  |  user   | gateway (sluice, TUN slID)|        | to-gw:       |
//!  |   fd77::(K+1)/128   |         |   10.77.0.1/16 fd77::1/64 |--------| 10.88.0.2/24 |
//!  | to-gw: 198.18.K.2/25|         | to-sink: 10.88.0.1/24     |        | fd88::2/64   |
//!  |   fd18:0:0:K::2/80  |         |          fd88::1/64       |        | iperf3 -s    |
//!  +---------------------+         +---------------------------+        +--------------+
//! ```
//!
//! - [`netns`]: namespaces, veth pairs, addresses, routes, sysctls, sockets opened inside a
//!   namespace ([`Netns::enter`]).
//! - [`process`]: long-running children, stopped with SIGTERM (then SIGKILL) on drop.
//! - [`registry`]: every namespace, process and folder created, so a signal handler can
//!   remove them all ([`registry::cleanup_all`]).
//! - [`tools`]: which external programs are missing and the exact command to install them.
//! - [`wg`]: WireGuard interfaces run by wireguard-go or boringtun-cli, configured with `wg`.
//! - [`gateway`]: the gateway under test (sluice, or wireguard-go/boringtun as stand-ins).
//! - [`topology`]: the picture above, built in one call.
//! - [`traffic`]: iperf3, UDP and TCP exchanges verified end to end, raw capture and replay.
//! - [`anycast`]: an anycast group of two gateways behind a BGP router (BIRD, ECMP, BFD).
//! - [`ha`]: templates from `configs/` rendered as Ansible does, bridges, keepalived, a
//!   streaming probe that measures a failover's gap and loss; [`vrrp`]: a VRRP pair on it.
//!
//! Every name carries a short per-run id ([`unique_id`]), so parallel tests don't collide:
//! WireGuard's UAPI sockets live in one folder for all namespaces
//! (`/var/run/wireguard/<ifname>.sock`), so interface names must be unique machine-wide.
//! Waits are bounded polls that fail with a message saying what did not happen.

/// Build an [`Error`] from format arguments (visible in the submodules declared below).
macro_rules! err {
    ($($t:tt)*) => { $crate::testbed::Error(format!($($t)*)) };
}

pub mod anycast;
pub mod cmd;
pub mod gateway;
pub mod ha;
pub mod netns;
pub mod process;
pub mod registry;
pub mod tools;
pub mod topology;
pub mod traffic;
pub mod vrrp;
pub mod wg;

pub use gateway::{Gateway, GatewayKind, GatewayStatus};
pub use netns::Netns;
pub use process::Daemon;
pub use topology::{Topology, TopologySpec, User, UserSpec};
pub use wg::{KeyPair, WgImpl, WgInterface};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What went wrong, in words that say which step failed and why (command, exit status, output).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Error {
        Error(s.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Add context to an error: `result.ctx(|| "starting iperf3")?`.
pub trait Context<T> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what().into())))
    }
}

/// A short id for one run: 5 characters of `[0-9a-z]`.
/// Short because Linux interface names hold at most 15 characters.
///
/// Ids from one process never repeat (up to [`ID_SPACE`] of them): a per-process base, mixed from
/// the pid and the clock, plus a counter, goes through an affine bijection of the id space. Ids
/// from different processes differ with high probability (the base is what differs).
pub fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // splitmix64, so close pids and times give unrelated bases.
        let mut x = nanos ^ (u64::from(std::process::id()) << 32);
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // ID_SPACE = 2^9 * 3^8 * 13, so any multiplier prime to 2, 3 and 13 is a bijection mod it;
    // consecutive counters then land far apart, which keeps names from sharing prefixes.
    let mut x = ((base % ID_SPACE + n % ID_SPACE) % ID_SPACE * ID_MULTIPLIER + 12_345) % ID_SPACE;
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut id = String::with_capacity(5);
    // First character a letter, so names built from it never start with a digit.
    id.push(DIGITS[10 + (x % 26) as usize] as char);
    x /= 26;
    for _ in 0..4 {
        id.push(DIGITS[(x % 36) as usize] as char);
        x /= 36;
    }
    id
}

/// How many distinct ids [`unique_id`] has: 26 * 36^4.
pub const ID_SPACE: u64 = 26 * 36 * 36 * 36 * 36;
/// Prime to 2, 3 and 13, the prime factors of [`ID_SPACE`].
const ID_MULTIPLIER: u64 = 7_919 * 101;

/// True when this process runs as root (effective uid 0), which namespaces and TUN need.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True under CI (`CI=true` or `CI=1`): missing prerequisites are failures there, not skips.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI").as_deref(),
        Ok("true") | Ok("1") | Ok("TRUE") | Ok("True")
    )
}

/// Why a poll in [`wait_for`] has no answer yet: a detail worth reporting if time runs out,
/// or (with `fatal`) a reason to stop waiting at once, e.g. the process we wait on exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotYet {
    pub detail: String,
    pub fatal: bool,
}

impl From<String> for NotYet {
    fn from(detail: String) -> NotYet {
        NotYet {
            detail,
            fatal: false,
        }
    }
}

impl From<&str> for NotYet {
    fn from(detail: &str) -> NotYet {
        NotYet::from(detail.to_string())
    }
}

impl From<Error> for NotYet {
    fn from(e: Error) -> NotYet {
        NotYet::from(e.0)
    }
}

/// A [`NotYet`] that ends the wait at once: `daemon.ensure_running().map_err(fatal)?`.
pub fn fatal(e: impl fmt::Display) -> NotYet {
    NotYet {
        detail: e.to_string(),
        fatal: true,
    }
}

/// Poll `check` every `every` until it returns `Some`, or fail after `timeout` with `what`
/// (what we were waiting for) and the last detail `check` reported; fail at once on a
/// [`fatal`] one.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> std::result::Result<Option<T>, NotYet>,
) -> Result<T> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if e.fatal => {
                return Err(err!("gave up waiting for {what}: {}", e.detail));
            }
            Err(e) => last = e.detail,
        }
        if start.elapsed() >= timeout {
            let detail = if last.is_empty() {
                String::new()
            } else {
                format!(" (last: {last})")
            };
            return Err(err!(
                "timed out after {:.1} s waiting for {what}{detail}",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(every);
    }
}

/// A private folder for one run's files (configs, keys, logs), removed on drop unless kept.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    /// Create `/tmp/sluice-testbed-<id>` (mode 0700: it holds private keys).
    pub fn new(id: &str) -> Result<RunDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!("sluice-testbed-{id}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        registry::add_dir(&path);
        registry::record_owner(&path);
        Ok(RunDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Leave the folder in place when dropped (for `--keep` and post-mortems).
    pub fn keep(&mut self) {
        self.keep = true;
        registry::forget_dir(&self.path);
        registry::record_kept(&self.path);
    }

    /// Write a file readable only by its owner (keys, configs with keys).
    pub fn write_private(&self, name: &str, contents: &str) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        f.write_all(contents.as_bytes())
            .ctx(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
            registry::forget_dir(&self.path);
        }
    }
}

/// The last `lines` lines of a text file, for error messages (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_distinct_and_name_safe() {
        let ids: Vec<String> = (0..20_000).map(|_| unique_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 5);
            assert!(id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
            assert!(id.starts_with(|c: char| c.is_ascii_lowercase()));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        // The multiplier must be invertible mod the id space, or ids would repeat.
        let gcd = |mut a: u64, mut b: u64| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        assert_eq!(gcd(ID_MULTIPLIER, ID_SPACE), 1);
    }

    #[test]
    fn wait_for_is_bounded_and_reports() {
        let e = wait_for::<()>(
            "nothing",
            Duration::from_millis(50),
            Duration::from_millis(10),
            || Err("still nothing".into()),
        )
        .unwrap_err();
        assert!(
            e.0.contains("nothing") && e.0.contains("still nothing"),
            "{e}"
        );
        let e = wait_for::<()>(
            "a dead process",
            Duration::from_secs(60),
            Duration::from_millis(10),
            || Err(fatal("it exited")),
        )
        .unwrap_err();
        assert!(e.0.contains("gave up") && e.0.contains("it exited"), "{e}");
        let mut n = 0;
        let v = wait_for(
            "three",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                Ok((n == 3).then_some(n))
            },
        )
        .unwrap();
        assert_eq!(v, 3);
    }
}
