//! sluice: a WireGuard VPN concentrator.
//!
//! - [`proto`]: the sans-IO WireGuard protocol core (no sockets, threads, files or clocks).
//! - [`keys`]: key generation and the base64 encoding shared with the `wg` tool.
//! - [`drops`]: the one [`DropReason`] enum behind every counter.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod crypto;
pub mod datapath;
pub mod drops;
pub mod hawatch;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod proto;
pub mod testbed;
pub mod uapi;
pub mod xdp;

pub use drops::{DropCounters, DropReason};
pub use keys::OsRng;
