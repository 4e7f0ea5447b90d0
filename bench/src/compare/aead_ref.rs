//! The crypto-only reference of the issue's appliance target ("the 1420 B appliance-mode rate
//! is at least 50 % of the batched AEAD's crypto-only rate on the same core"): sluice's batched
//! ChaCha20-Poly1305 opening batches of 1420 B inner packets (each with its own key, out of
//! place, as the appliance worker opens into UMEM frames), on the gateway's core, while no
//! gateway runs. Measured in the same `compare` run, before the gateways.

use super::io::thread_cpu_time;
use super::topo::{pin_current, GATEWAY_CORE};
use sluice::crypto::batch::{open_batch, seal_batch, OpenJob, SealJob, KEY_LEN, TAG_LEN};
use std::time::{Duration, Instant};

/// Packets per batch: a worker's receive batch.
const BATCH: usize = 64;

/// Packets opened per second on the gateway's core: by wall time and by the thread's CPU
/// time (the core's capacity, whatever else ran on it meanwhile).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct AeadRate {
    pub size: usize,
    pub wall_pps: f64,
    pub cpu_pps: f64,
}

/// Open batches of `size`-byte inner packets for `seconds` on the gateway's core.
pub fn measure(size: usize, seconds: f64) -> Result<AeadRate, String> {
    std::thread::spawn(move || {
        pin_current(GATEWAY_CORE)?;
        let keys: Vec<[u8; KEY_LEN]> = (0..BATCH).map(|i| [i as u8 ^ 0x5a; KEY_LEN]).collect();
        let plain = vec![0x42u8; size];
        let mut wire = vec![vec![0u8; size + TAG_LEN]; BATCH];
        let mut jobs: Vec<SealJob> = keys
            .iter()
            .zip(wire.iter_mut())
            .enumerate()
            .map(|(i, (k, w))| SealJob::new(k, i as u64, &plain, w))
            .collect();
        seal_batch(&mut jobs).map_err(|e| format!("sealing the reference batch: {e}"))?;
        drop(jobs);
        let mut out = vec![vec![0u8; size]; BATCH];
        let (start, cpu0) = (Instant::now(), thread_cpu_time());
        let mut opened = 0u64;
        while start.elapsed() < Duration::from_secs_f64(seconds) {
            let mut jobs: Vec<OpenJob> = keys
                .iter()
                .zip(wire.iter())
                .zip(out.iter_mut())
                .enumerate()
                .map(|(i, ((k, w), o))| OpenJob::new(k, i as u64, w, o))
                .collect();
            let failed = open_batch(&mut jobs).map_err(|e| format!("opening: {e}"))?;
            if failed > 0 {
                return Err(format!(
                    "{failed} packets of the reference batch did not open"
                ));
            }
            opened += BATCH as u64;
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu = thread_cpu_time().saturating_sub(cpu0).as_secs_f64();
        Ok(AeadRate {
            size,
            wall_pps: opened as f64 / wall.max(1e-9),
            cpu_pps: opened as f64 / cpu.max(1e-9),
        })
    })
    .join()
    .map_err(|_| "the AEAD reference thread panicked".to_string())?
}
