//! The XDP fast path's kernel side: the outer-NIC program in `ebpf/` (C, built by
//! `gateway/build.rs`), loaded and attached with aya.
//!
//! The program steers WireGuard UDP for this gateway into the AF_XDP socket of the receive
//! queue it arrived on, drops obviously invalid WireGuard messages, passes everything else to
//! the kernel, and counts every packet in exactly one [`XdpCounter`] slot. See README, "XDP
//! program", for what it steers, passes and drops.
//!
//! API:
//! - [`XdpProgram::load`] loads the program and creates its maps (`xsks`, `udp_ports`,
//!   `local_addrs`, `counters`); nothing is attached and nothing is for sluice yet.
//! - [`XdpProgram::attach`]`(ifname) -> AttachMode`: driver mode, else generic (SKB) mode,
//!   always through a bpf_link owned by this process (never a netlink attachment that would
//!   outlive it); [`XdpProgram::detach`].
//! - [`XdpProgram::set_ports`]`(&[u16])`, [`XdpProgram::set_local_addrs`]`(&[IpAddr])`: replace
//!   the sets that make a packet "for sluice" (UDP destination port and address).
//! - [`XdpProgram::register_xsk`]`(queue, fd)` / [`XdpProgram::unregister_xsk`]`(queue)`: the
//!   AF_XDP socket of a receive queue; with none, that queue's packets pass to the kernel.
//! - [`XdpProgram::counters`] → [`XdpCounters`], summed over CPUs, with names for metrics.
//! - [`XdpProgram::test_run`]`(frame) -> action`: `BPF_PROG_TEST_RUN`, for fixtures.
//!
//! Appliance mode (a second program, `sluice_xdp_inner`, for the inner NIC, in the same
//! object): [`XdpProgram::attach_inner`]`(ifname)`, [`XdpProgram::set_tunnel_prefixes`]`(&[(IpAddr,
//! u8)])` (the users' AllowedIPs, an LPM trie), [`XdpProgram::register_inner_xsk`] /
//! [`XdpProgram::unregister_inner_xsk`] (its own XSKMAP, `inner_xsks`: a socket receives only
//! from the device it is bound to), [`XdpProgram::inner_counters`] → [`XdpInnerCounters`],
//! [`XdpProgram::test_run_inner`]. Packets to a user's tunnel address (any protocol, fragments
//! too) go to the AF_XDP socket of their queue; everything else passes.
//!
//! [`bench_sink::BenchSink`] is not the gateway's: `sluice-bench compare`'s sink counter
//! (`ebpf/bench_sink.c`), built and loaded the same way.

mod appliance;
pub mod bench_sink;
mod program;
pub mod shared;
mod test_run;

pub use appliance::{INNER_PROGRAM_NAME, MAP_INNER_COUNTERS, MAP_INNER_XSKS, MAP_TUNNEL_PREFIXES};
pub use program::{
    XdpProgram, MAP_COUNTERS, MAP_LOCAL_ADDRS, MAP_UDP_PORTS, MAP_XSKS, PROGRAM_NAME,
};
pub use shared::{
    AddrKey, CounterSlot, Verdict, XdpCounter, XdpInnerCounter, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native XDP, run by the driver before any socket buffer exists.
    Driver,
    /// Generic XDP, run by the kernel's stack: works on any interface, slower.
    Skb,
}

impl AttachMode {
    /// `driver` or `skb`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
        }
    }
}

/// One program's counters, summed over CPUs: [`XdpCounters`] or [`XdpInnerCounters`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters<C: CounterSlot> {
    values: Vec<u64>,
    _slots: std::marker::PhantomData<C>,
}

/// The outer program's counters.
pub type XdpCounters = Counters<XdpCounter>;
/// The inner (appliance mode) program's counters.
pub type XdpInnerCounters = Counters<XdpInnerCounter>;

impl<C: CounterSlot> Counters<C> {
    /// `values[i]` is slot `i`; missing slots read as 0.
    pub(crate) fn new(mut values: Vec<u64>) -> Self {
        values.resize(C::ALL.len(), 0);
        Counters {
            values,
            _slots: std::marker::PhantomData,
        }
    }

    /// The count of one slot.
    pub fn get(&self, counter: C) -> u64 {
        self.values[counter.slot()]
    }

    /// Every slot with its count, in slot order; [`CounterSlot::verdict`] and
    /// [`CounterSlot::reason`] give the metric labels.
    pub fn iter(&self) -> impl Iterator<Item = (C, u64)> + '_ {
        C::ALL.iter().map(|c| (*c, self.values[c.slot()]))
    }

    /// Packets counted under `verdict`, all reasons.
    pub fn total(&self, verdict: Verdict) -> u64 {
        self.iter()
            .filter(|(c, _)| c.verdict() == verdict)
            .map(|(_, n)| n)
            .sum()
    }

    /// Slot by slot `self - earlier` (wrapping), e.g. what one packet moved.
    pub fn delta(&self, earlier: &Self) -> Self {
        let values = self
            .values
            .iter()
            .zip(earlier.values.iter())
            .map(|(v, e)| v.wrapping_sub(*e))
            .collect();
        Counters::new(values)
    }
}

/// What can go wrong loading, attaching or driving the XDP program.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The embedded object could not be loaded (maps created, BTF, relocations).
    #[error("loading the XDP object (are you root?): {0}")]
    Object(#[source] Box<aya::EbpfError>),
    /// A program operation failed (verifier, attach, fd).
    #[error("XDP program: {0}")]
    Program(#[source] aya::programs::ProgramError),
    /// The object lacks a program or map the loader expects.
    #[error("the XDP object has no `{0}`")]
    Missing(&'static str),
    /// A map operation failed.
    #[error("XDP map `{map}`: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: aya::maps::MapError,
    },
    /// Neither native nor generic attachment worked.
    #[error("attaching XDP to {ifname}: driver mode: {driver}; generic mode: {skb}")]
    Attach {
        /// The interface.
        ifname: String,
        /// Why driver mode failed.
        driver: Box<aya::programs::ProgramError>,
        /// Why generic mode failed.
        skb: Box<aya::programs::ProgramError>,
    },
    /// The kernel would attach only through netlink, which would outlive the process.
    #[error("attaching XDP to {0}: the kernel offers no bpf_link for XDP (Linux 5.9+ needed)")]
    NoBpfLink(String),
    /// `attach` on an interface the program is already attached to.
    #[error("XDP is already attached to {0}")]
    AlreadyAttached(String),
    /// `detach` on an interface the program is not attached to.
    #[error("XDP is not attached to {0}")]
    NotAttached(String),
    /// More entries than the map holds.
    #[error("XDP map `{map}` holds at most {max} entries")]
    TooMany {
        /// The map's name.
        map: &'static str,
        /// Its size (ebpf/sluice_xdp_shared.h).
        max: u32,
    },
    /// A tunnel prefix longer than its address.
    #[error("tunnel prefix {addr}/{len}: longer than the address")]
    BadPrefix {
        /// The address.
        addr: std::net::IpAddr,
        /// The prefix length.
        len: u8,
    },
    /// A receive queue beyond the XSKMAP.
    #[error("receive queue {queue} is beyond the XSKMAP's {max} slots")]
    QueueOutOfRange {
        /// The queue.
        queue: u32,
        /// The XSKMAP's size.
        max: u32,
    },
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(#[source] std::io::Error),
}
