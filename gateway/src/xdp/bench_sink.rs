//! [`BenchSink`]: `sluice-bench compare`'s sink counter (`ebpf/bench_sink.c`), not part of the
//! gateway. It lives here, next to the gateway's loader, because it is built by the same
//! `build.rs` and shares its `BPF_PROG_TEST_RUN` and error types.
//!
//! One [`BenchSink`] serves one timed run: [`BenchSink::load`] creates a fresh copy of the
//! program with the run's constants (sink address and port, run number, users, the first
//! user's tunnel address, packets in the run, the sampling interval) and an empty bitmap of
//! the run's sequence numbers, [`BenchSink::attach`] puts it on the sink's interface (in the
//! calling thread's network namespace), [`BenchSink::counts`] sums its per-CPU counters, and
//! dropping it detaches it (its link belongs to this process).

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use aya::maps::{MapData, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

use super::shared::{
    SINK_CNT_ACCEPTED, SINK_CNT_ACCEPTED_BYTES, SINK_CNT_CORRUPT, SINK_CNT_DUPLICATE, SINK_CNT_MAX,
    SINK_CNT_OUT_OF_RANGE, SINK_CNT_PASS_FOREIGN, SINK_CNT_PASS_OTHER, SINK_CNT_PASS_SAMPLE,
    SINK_CNT_WRONG_SIZE, SINK_CNT_WRONG_USER,
};
use super::{program::map_err, test_run, AttachMode, XdpError};

/// The object file built by `gateway/build.rs` from `ebpf/bench_sink.c`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_sink.o"));

/// The program's function name in `ebpf/bench_sink.c`.
pub const SINK_PROGRAM_NAME: &str = "sluice_bench_sink";
/// Per-CPU counters: one value of [`SINK_CNT_MAX`] slots.
pub const MAP_SINK_COUNTERS: &str = "sink_counters";
/// The run's bitmap of sequence numbers seen (sized at load).
pub const MAP_SINK_SEEN: &str = "sink_seen";

/// The per-CPU value of `sink_counters` (`struct sink_counters`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Slots([u64; SINK_CNT_MAX as usize]);

// SAFETY (of the aya `Pod` contract): `Slots` is `repr(C)` over an array of u64, with no
// padding and every bit pattern valid.
unsafe impl aya::Pod for Slots {}

/// What one run's packets are (the `cfg_*` constants of `ebpf/bench_sink.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkSpec {
    /// The sink's address: packets to any other go to the kernel.
    pub sink_addr: Ipv4Addr,
    /// The sink's UDP port.
    pub port: u16,
    /// The run number every packet of the run carries.
    pub run: u32,
    /// Users `0..users`; user `u`'s packets come from `first_user_addr + u`.
    pub users: u32,
    /// User 0's tunnel address.
    pub first_user_addr: Ipv4Addr,
    /// Sequence numbers `0..total`.
    pub total: u64,
    /// Every this many sequence numbers (seq % n == 0) one packet passes to the socket for
    /// the full check instead (at least 1: every packet).
    pub sample_every: u64,
}

/// The counters summed over CPUs (slots of `ebpf/bench_sink_shared.h`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// Verified, counted and dropped in XDP.
    pub accepted: u64,
    /// Their inner IP bytes.
    pub accepted_bytes: u64,
    /// This run's packets passed to the socket (every `sample_every`-th).
    pub pass_sample: u64,
    /// To the sink's port but not this run's payload, passed.
    pub pass_foreign: u64,
    /// Anything else, passed.
    pub pass_other: u64,
    /// Refused (and dropped): lengths disagree with the claimed size.
    pub wrong_size: u64,
    /// Refused: not from the claimed user's tunnel address, or no such user.
    pub wrong_user: u64,
    /// Refused: the first filler bytes are wrong.
    pub corrupt: u64,
    /// Refused: seen before.
    pub duplicate: u64,
    /// Refused: beyond the run.
    pub out_of_range: u64,
}

impl SinkCounts {
    fn from_slots(s: &[u64; SINK_CNT_MAX as usize]) -> Self {
        let at = |i: u32| s[i as usize];
        SinkCounts {
            accepted: at(SINK_CNT_ACCEPTED),
            accepted_bytes: at(SINK_CNT_ACCEPTED_BYTES),
            pass_sample: at(SINK_CNT_PASS_SAMPLE),
            pass_foreign: at(SINK_CNT_PASS_FOREIGN),
            pass_other: at(SINK_CNT_PASS_OTHER),
            wrong_size: at(SINK_CNT_WRONG_SIZE),
            wrong_user: at(SINK_CNT_WRONG_USER),
            corrupt: at(SINK_CNT_CORRUPT),
            duplicate: at(SINK_CNT_DUPLICATE),
            out_of_range: at(SINK_CNT_OUT_OF_RANGE),
        }
    }

    /// Packets refused for a reason that points at the gateway.
    pub fn errors(&self) -> u64 {
        self.wrong_size + self.wrong_user + self.corrupt + self.duplicate + self.out_of_range
    }
}

/// The sink counter of one run, loaded (and attached once [`BenchSink::attach`] is called).
pub struct BenchSink {
    // Declared first so the link is closed (detached) before the program goes.
    link: Option<FdLink>,
    counters: PerCpuArray<MapData, Slots>,
    ebpf: Ebpf,
}

impl std::fmt::Debug for BenchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchSink")
            .field("attached", &self.link.is_some())
            .finish_non_exhaustive()
    }
}

impl BenchSink {
    /// Load a fresh copy of the program for the run `spec` (root: CAP_BPF and
    /// CAP_NET_ADMIN).
    pub fn load(spec: &SinkSpec) -> Result<Self, XdpError> {
        let sink_addr = u32::from_ne_bytes(spec.sink_addr.octets());
        let port = u32::from(spec.port);
        let first = u32::from(spec.first_user_addr);
        let sample = spec.sample_every.max(1);
        let words =
            u32::try_from(spec.total.div_ceil(64).max(1)).map_err(|_| XdpError::TooMany {
                map: MAP_SINK_SEEN,
                max: u32::MAX,
            })?;
        let mut ebpf = EbpfLoader::new()
            .override_global("cfg_sink_addr", &sink_addr, true)
            .override_global("cfg_port", &port, true)
            .override_global("cfg_run", &spec.run, true)
            .override_global("cfg_users", &spec.users, true)
            .override_global("cfg_first_user_addr", &first, true)
            .override_global("cfg_total", &spec.total, true)
            .override_global("cfg_sample_every", &sample, true)
            .map_max_entries(MAP_SINK_SEEN, words)
            .load(OBJECT)
            .map_err(|e| XdpError::Object(Box::new(e)))?;
        let prog: &mut Xdp = ebpf
            .program_mut(SINK_PROGRAM_NAME)
            .ok_or(XdpError::Missing(SINK_PROGRAM_NAME))?
            .try_into()
            .map_err(XdpError::Program)?;
        prog.load().map_err(XdpError::Program)?;
        let map = ebpf
            .take_map(MAP_SINK_COUNTERS)
            .ok_or(XdpError::Missing(MAP_SINK_COUNTERS))?;
        let counters = PerCpuArray::try_from(map).map_err(map_err(MAP_SINK_COUNTERS))?;
        Ok(BenchSink {
            link: None,
            counters,
            ebpf,
        })
    }

    fn prog(&self) -> Result<&Xdp, XdpError> {
        self.ebpf
            .program(SINK_PROGRAM_NAME)
            .ok_or(XdpError::Missing(SINK_PROGRAM_NAME))?
            .try_into()
            .map_err(XdpError::Program)
    }

    /// Attach to `ifname` (in the calling thread's network namespace) in `mode`, through a
    /// bpf_link owned by this process. Generic (SKB) mode runs the program where the kernel
    /// receives the packet after RPS, on the CPU that RPS picks; native mode on a veth runs it
    /// in the veth's NAPI on the CPU that sent the frame.
    pub fn attach(&mut self, ifname: &str, mode: AttachMode) -> Result<(), XdpError> {
        if self.link.is_some() {
            return Err(XdpError::AlreadyAttached(ifname.to_string()));
        }
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(SINK_PROGRAM_NAME)
            .ok_or(XdpError::Missing(SINK_PROGRAM_NAME))?
            .try_into()
            .map_err(XdpError::Program)?;
        let xdp_mode = match mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        let id = prog.attach(ifname, xdp_mode).map_err(XdpError::Program)?;
        // As in `XdpProgram::attach`: only a bpf_link, never a netlink attachment that would
        // outlive the process (aya's Debug form is the only way to tell them apart).
        if !format!("{id:?}").contains("FdLinkId") {
            let _ = prog.detach(id);
            return Err(XdpError::NoBpfLink(ifname.to_string()));
        }
        let link = prog.take_link(id).map_err(XdpError::Program)?;
        let link = FdLink::try_from(link).map_err(|_| XdpError::NoBpfLink(ifname.to_string()))?;
        self.link = Some(link);
        Ok(())
    }

    /// The counters so far, summed over CPUs.
    pub fn counts(&self) -> Result<SinkCounts, XdpError> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(map_err(MAP_SINK_COUNTERS))?;
        let mut sum = [0u64; SINK_CNT_MAX as usize];
        for cpu in per_cpu.iter() {
            for (s, v) in sum.iter_mut().zip(cpu.0.iter()) {
                *s = s.wrapping_add(*v);
            }
        }
        Ok(SinkCounts::from_slots(&sum))
    }

    /// Run the program once on `frame` (`BPF_PROG_TEST_RUN`, no interface needed); returns
    /// the XDP action. The counters and the bitmap see the frame as if it had arrived.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, XdpError> {
        let fd = self.prog()?.fd().map_err(XdpError::Program)?;
        test_run::test_run(fd.as_fd(), frame).map_err(XdpError::TestRun)
    }
}
