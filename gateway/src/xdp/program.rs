//! [`XdpProgram`]: the outer-NIC XDP program loaded with aya, its maps, its attachments.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::links::FdLink;
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;

use super::appliance::{
    INNER_PROGRAM_NAME, MAP_INNER_COUNTERS, MAP_INNER_XSKS, MAP_TUNNEL_PREFIXES,
};
use super::shared::{AddrKey, CounterSlot, MAX_ADDRS, MAX_PORTS, MAX_QUEUES, PORT_WORDS};
use super::{test_run, AttachMode, Counters, XdpCounters, XdpError};

/// The object file built by `gateway/build.rs` from `ebpf/sluice_xdp.c`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_xdp.o"));

/// The program's function name in `ebpf/sluice_xdp.c`.
pub const PROGRAM_NAME: &str = "sluice_xdp";
/// XSKMAP: receive queue index to AF_XDP socket.
pub const MAP_XSKS: &str = "xsks";
/// UDP destination ports that sluice serves: a bitmap, port `p` being bit `p % 64` of word
/// `p / 64` ([`PORT_WORDS`] words).
pub const MAP_UDP_PORTS: &str = "udp_ports";
/// Local and VIP addresses ([`AddrKey`]).
pub const MAP_LOCAL_ADDRS: &str = "local_addrs";
/// Per-CPU counters, one slot per [`XdpCounter`].
pub const MAP_COUNTERS: &str = "counters";

/// The outer-NIC XDP program (and appliance mode's inner-NIC one), loaded in the kernel, with
/// their maps and attachments.
///
/// Dropping it detaches it from every interface (each attachment is a bpf_link owned by this
/// process, so that also happens when the process dies, even by SIGKILL) and unloads it.
pub struct XdpProgram {
    // Declared first so the links are closed (detached) before anything else goes.
    attachments: Vec<Attachment>,
    xsks: XskMap<MapData>,
    udp_ports: Array<MapData, u64>,
    /// What `udp_ports` holds.
    ports: HashSet<u16>,
    local_addrs: HashMap<MapData, AddrKey, u8>,
    counters: PerCpuArray<MapData, u64>,
    pub(super) inner_xsks: XskMap<MapData>,
    pub(super) tunnel_prefixes: LpmTrie<MapData, [u8; 16], u8>,
    pub(super) inner_counters: PerCpuArray<MapData, u64>,
    ebpf: Ebpf,
}

struct Attachment {
    ifname: String,
    mode: AttachMode,
    _link: FdLink,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram")
            .field(
                "attachments",
                &self
                    .attachments
                    .iter()
                    .map(|a| (a.ifname.as_str(), a.mode))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

// SAFETY (of the aya `Pod` contract): `AddrKey` is `repr(C)` over a byte array, with no padding
// and every bit pattern valid, so it may be copied to and from the kernel as bytes.
unsafe impl aya::Pod for AddrKey {}

pub(super) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> XdpError {
    move |source| XdpError::Map { map, source }
}

impl XdpProgram {
    /// Loads the programs and creates their maps (empty: no port, no address, no prefix, no
    /// socket, so every packet passes). Needs root (CAP_BPF and CAP_NET_ADMIN).
    pub fn load() -> Result<Self, XdpError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| XdpError::Object(Box::new(e)))?;
        for name in [PROGRAM_NAME, INNER_PROGRAM_NAME] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(XdpError::Missing(name))?
                .try_into()
                .map_err(XdpError::Program)?;
            prog.load().map_err(XdpError::Program)?;
        }

        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(XdpError::Missing(name));
        let xsks = XskMap::try_from(take(MAP_XSKS)?).map_err(map_err(MAP_XSKS))?;
        let udp_ports = Array::try_from(take(MAP_UDP_PORTS)?).map_err(map_err(MAP_UDP_PORTS))?;
        let local_addrs =
            HashMap::try_from(take(MAP_LOCAL_ADDRS)?).map_err(map_err(MAP_LOCAL_ADDRS))?;
        let counters = PerCpuArray::try_from(take(MAP_COUNTERS)?).map_err(map_err(MAP_COUNTERS))?;
        let inner_xsks =
            XskMap::try_from(take(MAP_INNER_XSKS)?).map_err(map_err(MAP_INNER_XSKS))?;
        let tunnel_prefixes =
            LpmTrie::try_from(take(MAP_TUNNEL_PREFIXES)?).map_err(map_err(MAP_TUNNEL_PREFIXES))?;
        let inner_counters = PerCpuArray::try_from(take(MAP_INNER_COUNTERS)?)
            .map_err(map_err(MAP_INNER_COUNTERS))?;
        Ok(XdpProgram {
            attachments: Vec::new(),
            xsks,
            udp_ports,
            ports: HashSet::new(),
            local_addrs,
            counters,
            inner_xsks,
            tunnel_prefixes,
            inner_counters,
            ebpf,
        })
    }

    fn prog(&self, name: &'static str) -> Result<&Xdp, XdpError> {
        self.ebpf
            .program(name)
            .ok_or(XdpError::Missing(name))?
            .try_into()
            .map_err(XdpError::Program)
    }

    fn prog_mut(&mut self, name: &'static str) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(name)
            .ok_or(XdpError::Missing(name))?
            .try_into()
            .map_err(XdpError::Program)
    }

    /// Attaches the program to `ifname` through a bpf_link: driver (native) mode first, generic
    /// (SKB) mode if the driver has no XDP support, and logs which. The link belongs to this
    /// process, so the program is detached when this value is dropped or the process dies.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode, XdpError> {
        self.attach_program(PROGRAM_NAME, ifname)
    }

    /// Attaches program `name` to `ifname`, as [`XdpProgram::attach`] describes.
    pub(super) fn attach_program(
        &mut self,
        name: &'static str,
        ifname: &str,
    ) -> Result<AttachMode, XdpError> {
        if self.attachments.iter().any(|a| a.ifname == ifname) {
            return Err(XdpError::AlreadyAttached(ifname.to_string()));
        }
        let prog = self.prog_mut(name)?;
        let (mode, link_id) = match prog.attach(ifname, XdpMode::Driver) {
            Ok(id) => (AttachMode::Driver, id),
            Err(driver) => match prog.attach(ifname, XdpMode::Skb) {
                Ok(id) => {
                    crate::log::warn(&format!(
                        "xdp: {name}: {ifname} has no native XDP ({driver}); attached in generic \
                         (SKB) mode, which is slower"
                    ));
                    (AttachMode::Skb, id)
                }
                Err(skb) => {
                    return Err(XdpError::Attach {
                        ifname: ifname.to_string(),
                        driver: Box::new(driver),
                        skb: Box::new(skb),
                    })
                }
            },
        };
        // aya falls back to a netlink attachment (which outlives the process) when the kernel
        // refuses bpf_link_create with EINVAL. Accept only a real bpf_link. aya 0.14 has no
        // public way to ask a link id which kind it is, but its Debug form names the variant
        // (`XdpLinkId(FdLinkId(..))` or `XdpLinkId(NlLinkId(..))`); asking the kernel instead
        // (listing every bpf link) would need CAP_SYS_ADMIN, which the service does not have.
        let is_link = format!("{link_id:?}").contains("FdLinkId");
        if !is_link {
            // Detaching the netlink attachment through aya removes it from the interface.
            let _ = prog.detach(link_id);
            return Err(XdpError::NoBpfLink(ifname.to_string()));
        }
        let link = prog.take_link(link_id).map_err(XdpError::Program)?;
        let link = FdLink::try_from(link).map_err(|_| XdpError::NoBpfLink(ifname.to_string()))?;
        crate::log::info(&format!(
            "xdp: {name} attached to {ifname} in {} mode",
            mode.as_str()
        ));
        self.attachments.push(Attachment {
            ifname: ifname.to_string(),
            mode,
            _link: link,
        });
        Ok(mode)
    }

    /// Detaches whichever program is attached to `ifname` (closes its bpf_link).
    pub fn detach(&mut self, ifname: &str) -> Result<(), XdpError> {
        let i = self
            .attachments
            .iter()
            .position(|a| a.ifname == ifname)
            .ok_or_else(|| XdpError::NotAttached(ifname.to_string()))?;
        self.attachments.remove(i);
        Ok(())
    }

    /// The interfaces a program is attached to, with their modes.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.attachments.iter().map(|a| (a.ifname.as_str(), a.mode))
    }

    /// Replaces the set of UDP destination ports sluice serves. Ports staying in the set are
    /// never absent in between.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), XdpError> {
        let new: HashSet<u16> = ports.iter().copied().collect();
        if new.len() > MAX_PORTS as usize {
            return Err(XdpError::TooMany {
                map: MAP_UDP_PORTS,
                max: MAX_PORTS,
            });
        }
        // Each changed word is written once, whole, with the ports staying in it still set.
        let (old, new_words) = (port_words(&self.ports), port_words(&new));
        for (&word, &bits) in &new_words {
            if old.get(&word) != Some(&bits) {
                self.udp_ports
                    .set(word, bits, 0)
                    .map_err(map_err(MAP_UDP_PORTS))?;
            }
        }
        for &word in old.keys().filter(|w| !new_words.contains_key(w)) {
            self.udp_ports
                .set(word, 0, 0)
                .map_err(map_err(MAP_UDP_PORTS))?;
        }
        self.ports = new;
        Ok(())
    }

    /// Replaces the set of local and VIP addresses packets must be sent to, both families.
    pub fn set_local_addrs(&mut self, addrs: &[IpAddr]) -> Result<(), XdpError> {
        let new: HashSet<AddrKey> = addrs.iter().map(|a| AddrKey::from(*a)).collect();
        if new.len() > MAX_ADDRS as usize {
            return Err(XdpError::TooMany {
                map: MAP_LOCAL_ADDRS,
                max: MAX_ADDRS,
            });
        }
        let old: HashSet<AddrKey> = self.local_addrs.keys().flatten().collect();
        replace(&mut self.local_addrs, &old, &new, MAX_ADDRS).map_err(map_err(MAP_LOCAL_ADDRS))
    }

    /// Registers the AF_XDP socket `fd` (bound to receive queue `queue` of an interface the
    /// program is attached to) so packets for sluice on that queue are redirected to it.
    pub fn register_xsk(&mut self, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        if queue >= MAX_QUEUES {
            return Err(XdpError::QueueOutOfRange {
                queue,
                max: MAX_QUEUES,
            });
        }
        self.xsks.set(queue, fd, 0).map_err(map_err(MAP_XSKS))
    }

    /// Removes the socket of `queue`: its packets for sluice pass to the kernel again.
    pub fn unregister_xsk(&mut self, queue: u32) -> Result<(), XdpError> {
        if queue >= MAX_QUEUES {
            return Err(XdpError::QueueOutOfRange {
                queue,
                max: MAX_QUEUES,
            });
        }
        match self.xsks.unset(queue) {
            // An empty slot is already unregistered.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            r => r.map_err(map_err(MAP_XSKS)),
        }
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<XdpCounters, XdpError> {
        read_counters(&self.counters, MAP_COUNTERS)
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN` (no interface needed; the
    /// maps and counters are the live ones) and returns the XDP action (see
    /// [`super::Verdict::action`]). The kernel runs it as if received on queue 0.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, XdpError> {
        self.test_run_program(PROGRAM_NAME, frame)
    }

    /// Runs the program `repeat` times on `frame` with `BPF_PROG_TEST_RUN` and returns the
    /// action and the kernel's average time per run in nanoseconds, the number `bpftool prog
    /// run ... repeat N` reports (`sluice-bench xdp-parse`). Every run moves a counter.
    pub fn time_test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u32), XdpError> {
        let fd = self.prog(PROGRAM_NAME)?.fd().map_err(XdpError::Program)?;
        test_run::test_run_repeat(fd.as_fd(), frame, repeat).map_err(XdpError::TestRun)
    }

    pub(super) fn test_run_program(
        &self,
        name: &'static str,
        frame: &[u8],
    ) -> Result<u32, XdpError> {
        let fd = self.prog(name)?.fd().map_err(XdpError::Program)?;
        test_run::test_run(fd.as_fd(), frame).map_err(XdpError::TestRun)
    }

    /// The program's file descriptor (for `bpftool`-style inspection and tests).
    pub fn program_fd(&self) -> Result<RawFd, XdpError> {
        Ok(self
            .prog(PROGRAM_NAME)?
            .fd()
            .map_err(XdpError::Program)?
            .as_fd()
            .as_raw_fd())
    }
}

/// A per-CPU counters map summed over CPUs.
pub(super) fn read_counters<C: CounterSlot>(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
) -> Result<Counters<C>, XdpError> {
    let mut values = Vec::with_capacity(C::ALL.len());
    for c in C::ALL {
        let per_cpu = map.get(&(c.slot() as u32), 0).map_err(map_err(name))?;
        values.push(per_cpu.iter().copied().fold(0u64, u64::wrapping_add));
    }
    Ok(Counters::new(values))
}

/// The nonzero words of the `udp_ports` bitmap for `ports`.
fn port_words(ports: &HashSet<u16>) -> std::collections::BTreeMap<u32, u64> {
    let mut words = std::collections::BTreeMap::new();
    for &p in ports {
        *words.entry(u32::from(p) / 64).or_insert(0u64) |= 1 << (p % 64);
    }
    words
}

const _: () = assert!(PORT_WORDS * 64 == 1 << 16);

/// Makes the keys of `map` equal `new` (its current keys are `old`): adds first, so a key in
/// both is never missing, unless the union would not fit; then removes the stale ones.
fn replace<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut HashMap<MapData, K, u8>,
    old: &HashSet<K>,
    new: &HashSet<K>,
    max: u32,
) -> Result<(), MapError> {
    let add_first = old.union(new).count() <= max as usize;
    if add_first {
        for k in new.difference(old) {
            map.insert(k, 1, 0)?;
        }
    }
    for k in old.difference(new) {
        map.remove(k)?;
    }
    if !add_first {
        for k in new.difference(old) {
            map.insert(k, 1, 0)?;
        }
    }
    Ok(())
}
