//! Set-up shared by the namespace test files: which gateway is under test (and whether this
//! machine can run the tests at all), building a topology, and small helpers.
#![allow(dead_code)] // each test file uses its own subset

use sluice::testbed::tools::{require_for_test, Tool};
use sluice::testbed::topology::{Topology, TopologySpec, UserSpec};
use sluice::testbed::{registry, GatewayKind, WgImpl};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
pub const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(15);

/// Unwrap a testbed result, panicking with its full (multi-line) message.
pub trait OrFail<T> {
    fn or_fail(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// The gateway under test, or `None` (after a loud SKIPPED line) if this machine can't run
/// the test outside CI.
pub fn gateway_under_test(test: &str) -> Option<GatewayKind> {
    let kind = GatewayKind::from_env().or_fail("choosing the gateway");
    if !require_for_test(test, &Tool::ALL) {
        return None;
    }
    // Leftovers of runs that were killed outright (never of live ones).
    for line in registry::cleanup_stale() {
        eprintln!("{test}: {line}");
    }
    Some(kind)
}

/// Whether the namespace tests run sluice on its XDP fast path (the xdp layout of
/// `sluice::testbed::topology`): `SLUICE_TEST_DATAPLANE=xdp` (the default) or `socket`.
pub fn xdp_from_env() -> bool {
    match std::env::var("SLUICE_TEST_DATAPLANE").as_deref() {
        Ok("socket") => false,
        Ok("xdp") | Err(_) => true,
        Ok(other) => panic!("SLUICE_TEST_DATAPLANE must be xdp or socket, got '{other}'"),
    }
}

/// A topology spec for `kind` and `users`, in the data-path layout the environment selects.
pub fn spec(kind: GatewayKind, users: Vec<UserSpec>) -> TopologySpec {
    let mut spec = TopologySpec::new(kind, Some(PathBuf::from(SLUICE)), users);
    spec.xdp = xdp_from_env();
    spec
}

pub fn build(kind: GatewayKind, users: Vec<UserSpec>) -> Topology {
    Topology::build(&spec(kind, users)).or_fail("building the topology")
}

pub fn wg_go() -> UserSpec {
    UserSpec::new(WgImpl::WireguardGo)
}

pub fn boringtun() -> UserSpec {
    UserSpec::new(WgImpl::Boringtun)
}

pub fn v4(a: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(a), port)
}

pub fn v6(a: std::net::Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(a), port)
}
