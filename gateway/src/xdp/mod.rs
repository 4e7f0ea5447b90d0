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

mod program;
pub mod shared;
mod test_run;

pub use program::{
    XdpProgram, MAP_COUNTERS, MAP_LOCAL_ADDRS, MAP_UDP_PORTS, MAP_XSKS, PROGRAM_NAME,
};
pub use shared::{AddrKey, Verdict, XdpCounter, XDP_DROP, XDP_PASS, XDP_REDIRECT};

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

/// The program's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpCounters {
    values: [u64; shared::CNT_MAX as usize],
}

impl XdpCounters {
    pub(crate) const fn new(values: [u64; shared::CNT_MAX as usize]) -> Self {
        XdpCounters { values }
    }

    /// The count of one slot.
    pub fn get(&self, counter: XdpCounter) -> u64 {
        self.values[counter as usize]
    }

    /// Every slot with its count, in slot order; [`XdpCounter::verdict`] and
    /// [`XdpCounter::reason`] give the metric labels.
    pub fn iter(&self) -> impl Iterator<Item = (XdpCounter, u64)> + '_ {
        XdpCounter::ALL
            .iter()
            .map(|c| (*c, self.values[*c as usize]))
    }

    /// Packets counted under `verdict`, all reasons.
    pub fn total(&self, verdict: Verdict) -> u64 {
        self.iter()
            .filter(|(c, _)| c.verdict() == verdict)
            .map(|(_, n)| n)
            .sum()
    }

    /// Slot by slot `self - earlier` (wrapping), e.g. what one packet moved.
    pub fn delta(&self, earlier: &XdpCounters) -> XdpCounters {
        let mut values = self.values;
        for (v, e) in values.iter_mut().zip(earlier.values.iter()) {
            *v = v.wrapping_sub(*e);
        }
        XdpCounters { values }
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
