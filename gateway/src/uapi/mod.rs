//! WireGuard's cross-platform userspace API (UAPI), so the stock `wg` tool can configure
//! sluice: `wg show`, `wg set`, `wg setconf`, `wg syncconf` over
//! `/var/run/wireguard/<ifname>.sock`.
//!
//! - [`protocol`]: the text format, sans-IO: [`parse_set`] turns a `set=1` body into a typed
//!   [`SetRequest`]; [`format_get`] answers `get=1` from a [`DeviceState`]. The errno table
//!   is in the module docs.
//! - [`framing`]: splits a byte stream into requests under [`Limits`] (line and request
//!   size), sans-IO.
//! - [`server`]: the Unix socket ([`UapiServer`]): mode 0600, no clobbering of a live
//!   socket, one thread, timeouts, and an `errno=` answer to every refused request.
//!
//! The device plugs in through [`UapiHandler`]. Requests are parsed and validated in full
//! before the handler sees them, so a handler can apply a `set` atomically (wireguard-go
//! applies line by line and can leave a half-applied request behind).
//!
//! Secrets (private and preshared keys) travel as [`SecretKey`], zeroized on drop and
//! redacted in `Debug`; request buffers and `get` answers are zeroized too. Nothing here logs
//! a value.

pub mod client;
pub mod framing;
pub mod protocol;
pub mod server;

pub use framing::{Framer, Limits, Request};
pub use protocol::{
    format_get, hex_key, parse_set, DeviceState, PeerChange, PeerState, SecretKey, SetRequest,
    UapiError, KEY_LEN,
};
pub use server::{UapiHandler, UapiServer, SOCKET_DIR};

#[cfg(test)]
mod tests;
