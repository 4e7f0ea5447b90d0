//! Worker failure: containing a panicking worker to its own thread, and a fault-injection hook
//! that makes one worker panic on purpose, so the health check can be proven against the real
//! daemon.
//!
//! A worker that panics stops alone: its thread unwinds into [`run_contained`], which records
//! why in the worker's [`WorkerStats::exited`] and logs a `worker stopped` event; the process,
//! the other workers, the metrics endpoint and the `wg` API keep running, and `/healthz` answers
//! 503 naming the worker at once. The dead worker's UDP socket and TUN queue close with it, so
//! the kernel steers their traffic to the workers that remain.
//!
//! **Fault injection** (for tests; never set it in production): the environment variable
//! [`FAULT_ENV`], read once at start, as `worker-panic:<index>:<after_ms>` makes worker
//! `<index>` panic `<after_ms>` milliseconds after the gateway started; as
//! `drop-takeover-initiation` it makes an HA member drop the handshake initiation it sends
//! when it takes a session over (its retransmit follows REKEY_TIMEOUT later), so a test sees
//! the member send under the taken-over session for seconds (split brain: two senders on one
//! key). A malformed value stops the gateway from starting.

use super::worker::WorkerStats;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The fault-injection environment variable.
pub const FAULT_ENV: &str = "SLUICE_FAULT_INJECT";

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Worker `worker` panics once `after` has passed since start.
    WorkerPanic { worker: usize, after: Duration },
    /// The initiation started at an HA takeover is not sent (its retransmit is).
    DropTakeoverInitiation,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        const WANT: &str = "expected worker-panic:<index>:<after_ms> or drop-takeover-initiation";
        let mut parts = s.trim().split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("drop-takeover-initiation"), None, None, None) => {
                Ok(Fault::DropTakeoverInitiation)
            }
            (Some("worker-panic"), Some(i), Some(ms), None) => {
                let worker = i
                    .parse()
                    .map_err(|e| format!("worker index {i:?}: {e} ({WANT})"))?;
                let ms: u64 = ms
                    .parse()
                    .map_err(|e| format!("milliseconds {ms:?}: {e} ({WANT})"))?;
                Ok(Fault::WorkerPanic {
                    worker,
                    after: Duration::from_millis(ms),
                })
            }
            _ => Err(format!("{s:?}: {WANT}")),
        }
    }
}

/// The worker that is to panic, and when.
#[derive(Debug)]
struct Armed {
    worker: usize,
    at: Instant,
}

static ARMED: OnceLock<Armed> = OnceLock::new();
static DROP_TAKEOVER_INITIATION: AtomicBool = AtomicBool::new(false);

/// Whether the initiation sent at an HA takeover is to be dropped ([`Fault::DropTakeoverInitiation`]).
pub fn drops_takeover_initiation() -> bool {
    DROP_TAKEOVER_INITIATION.load(Ordering::Relaxed)
}

/// Read [`FAULT_ENV`] (once per process; later calls change nothing) and arm the fault it
/// names. `Ok(None)` when it is unset or empty.
pub fn arm_from_env(workers: usize) -> Result<Option<Fault>, String> {
    let Ok(v) = std::env::var(FAULT_ENV) else {
        return Ok(None);
    };
    if v.trim().is_empty() {
        return Ok(None);
    }
    let fault: Fault = v.parse().map_err(|e| format!("{FAULT_ENV}: {e}"))?;
    let (worker, after) = match fault {
        Fault::WorkerPanic { worker, after } => (worker, after),
        Fault::DropTakeoverInitiation => {
            DROP_TAKEOVER_INITIATION.store(true, Ordering::Relaxed);
            tracing::warn!(
                env = FAULT_ENV,
                "fault injection armed: initiations started at HA takeovers are dropped"
            );
            return Ok(Some(fault));
        }
    };
    if worker >= workers {
        return Err(format!(
            "{FAULT_ENV}: worker {worker} does not exist ({workers} workers)"
        ));
    }
    let _ = ARMED.set(Armed {
        worker,
        at: Instant::now() + after,
    });
    tracing::warn!(
        env = FAULT_ENV,
        worker,
        after_ms = after.as_millis() as u64,
        "fault injection armed: this worker will panic"
    );
    Ok(Some(fault))
}

/// Called by worker `id` once per loop: panics if the armed fault is due for this worker.
/// Costs one atomic load when nothing is armed.
#[inline]
pub fn checkpoint(id: usize) {
    if let Some(a) = ARMED.get() {
        if a.worker == id && Instant::now() >= a.at {
            panic!("fault injection ({FAULT_ENV}): worker {id} panics as asked");
        }
    }
}

/// Run a thread's loop (`role` "worker" or "handshake", number `index`); if it panics, record
/// and log why and return normally, so the panic ends this thread only.
pub fn run_contained(role: &'static str, index: usize, stats: &WorkerStats, body: impl FnOnce()) {
    tracing::info!(role, index, "worker started");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(()) => tracing::info!(role, index, "worker stopped"),
        Err(payload) => {
            let why = format!("panicked: {}", panic_message(payload.as_ref()));
            tracing::error!(role, index, reason = %why, "worker stopped");
            let _ = stats.exited.set(why);
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(
            " drop-takeover-initiation ".parse::<Fault>(),
            Ok(Fault::DropTakeoverInitiation)
        );
        assert_eq!(
            "worker-panic:1:2500".parse::<Fault>(),
            Ok(Fault::WorkerPanic {
                worker: 1,
                after: Duration::from_millis(2500)
            })
        );
        for bad in [
            "",
            "worker-panic",
            "worker-panic:1",
            "worker-panic:x:10",
            "worker-panic:1:-5",
            "worker-panic:1:10:extra",
            "worker-hang:1:10",
            "drop-takeover-initiation:1",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_panic_is_contained_and_recorded() {
        let stats = WorkerStats::default();
        run_contained("worker", 7, &stats, || panic!("boom {}", 7));
        assert_eq!(
            stats.exited.get().map(String::as_str),
            Some("panicked: boom 7")
        );
        let calm = WorkerStats::default();
        run_contained("worker", 8, &calm, || {});
        assert!(calm.exited.get().is_none());
    }
}
