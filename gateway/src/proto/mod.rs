//! The WireGuard protocol core, sans-IO.
//!
//! Nothing in this module touches a socket, thread, file, clock or global RNG: the caller passes
//! in the time ([`Time`], [`WallTime`]) and randomness ([`Rng`]) and carries out the transmits the
//! core asks for. `tests/sans_io.rs` fails the build's tests if anyone adds such a call here.
//!
//! One module per protocol concern, after the kernel's `drivers/net/wireguard`:
//! [`messages`] (wire format), [`kdf`] (BLAKE2s HASH/MAC/HMAC/HKDF), [`noise`] (the
//! Noise_IKpsk2 handshake), [`cookie`] (mac1/mac2 and cookie replies), [`ratelimiter`],
//! [`replay`], [`session`] (keypairs), [`timers`], [`allowedips`], [`index`], [`peer`] (with its
//! [`endpoint`]: the peer's address and our sticky source address), and [`device`], which
//! composes them into one WireGuard interface.

pub mod allowedips;
pub mod cookie;
pub mod device;
pub mod effects;
pub mod endpoint;
pub mod hasync;
pub mod index;
pub mod ip;
pub mod kdf;
pub mod messages;
pub mod noise;
pub mod peer;
pub mod ratelimiter;
pub mod receive;
pub mod replay;
pub mod rng;
pub mod send;
pub mod session;
pub mod time;
pub mod timers;

pub use rng::{Rng, SeededRng};
pub use time::{Time, WallTime};
