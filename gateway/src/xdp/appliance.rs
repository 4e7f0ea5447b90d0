//! Appliance mode: the inner-NIC program (`sluice_xdp_inner` in `ebpf/sluice_xdp.c`, logic in
//! `ebpf/appliance.h`), loaded with the outer one. It steers packets to a user's tunnel address
//! (an LPM trie of the users' AllowedIPs) into the AF_XDP socket of their receive queue in its
//! own XSKMAP, and passes everything else.

use std::net::IpAddr;
use std::os::fd::RawFd;

use aya::maps::lpm_trie::Key;
use aya::maps::MapError;

use super::program::{map_err, read_counters};
use super::shared::{AddrKey, MAX_QUEUES, MAX_TUNNEL_PREFIXES};
use super::{AttachMode, XdpError, XdpInnerCounters, XdpProgram};

/// The inner program's function name in `ebpf/sluice_xdp.c`.
pub const INNER_PROGRAM_NAME: &str = "sluice_xdp_inner";
/// XSKMAP of the inner NIC: receive queue index to AF_XDP socket.
pub const MAP_INNER_XSKS: &str = "inner_xsks";
/// LPM trie of the users' tunnel prefixes.
pub const MAP_TUNNEL_PREFIXES: &str = "tunnel_prefixes";
/// Per-CPU counters of the inner program, one slot per [`super::XdpInnerCounter`].
pub const MAP_INNER_COUNTERS: &str = "inner_counters";

/// The trie key of `addr/len`: the 16-byte form, IPv4 as `::ffff:a.b.c.d/(96 + len)`.
fn prefix_key(addr: IpAddr, len: u8) -> Result<Key<[u8; 16]>, XdpError> {
    let (max, offset) = match addr {
        IpAddr::V4(_) => (32, 96),
        IpAddr::V6(_) => (128, 0),
    };
    if len > max {
        return Err(XdpError::BadPrefix { addr, len });
    }
    Ok(Key::new(u32::from(len) + offset, AddrKey::from(addr).0))
}

impl XdpProgram {
    /// Attaches the inner-NIC program to `ifname` (driver mode, else generic), through a
    /// bpf_link owned by this process, like [`XdpProgram::attach`].
    pub fn attach_inner(&mut self, ifname: &str) -> Result<AttachMode, XdpError> {
        self.attach_program(INNER_PROGRAM_NAME, ifname)
    }

    /// Replaces the set of user tunnel prefixes (`(address, prefix length)`, e.g. every peer's
    /// AllowedIPs): packets on the inner NIC to an address inside one are steered.
    pub fn set_tunnel_prefixes(&mut self, prefixes: &[(IpAddr, u8)]) -> Result<(), XdpError> {
        if prefixes.len() > MAX_TUNNEL_PREFIXES as usize {
            return Err(XdpError::TooMany {
                map: MAP_TUNNEL_PREFIXES,
                max: MAX_TUNNEL_PREFIXES,
            });
        }
        let mut new = std::collections::HashSet::with_capacity(prefixes.len());
        for (addr, len) in prefixes {
            let key = prefix_key(*addr, *len)?;
            // Host bits don't matter to the trie; keep one entry per prefix as given.
            new.insert((key.prefix_len(), key.data()));
        }
        let old: std::collections::HashSet<(u32, [u8; 16])> = self
            .tunnel_prefixes
            .keys()
            .flatten()
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        let err = map_err(MAP_TUNNEL_PREFIXES);
        for (len, data) in new.difference(&old) {
            if let Err(e) = self.tunnel_prefixes.insert(&Key::new(*len, *data), 1, 0) {
                return Err(err(e));
            }
        }
        for (len, data) in old.difference(&new) {
            if let Err(e) = self.tunnel_prefixes.remove(&Key::new(*len, *data)) {
                return Err(err(e));
            }
        }
        Ok(())
    }

    /// Registers the AF_XDP socket `fd`, bound to receive queue `queue` of the inner NIC.
    pub fn register_inner_xsk(&mut self, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        if queue >= MAX_QUEUES {
            return Err(XdpError::QueueOutOfRange {
                queue,
                max: MAX_QUEUES,
            });
        }
        self.inner_xsks
            .set(queue, fd, 0)
            .map_err(map_err(MAP_INNER_XSKS))
    }

    /// Removes the inner NIC socket of `queue`: its packets pass to the kernel again.
    pub fn unregister_inner_xsk(&mut self, queue: u32) -> Result<(), XdpError> {
        if queue >= MAX_QUEUES {
            return Err(XdpError::QueueOutOfRange {
                queue,
                max: MAX_QUEUES,
            });
        }
        match self.inner_xsks.unset(queue) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            r => r.map_err(map_err(MAP_INNER_XSKS)),
        }
    }

    /// The inner program's counters, summed over CPUs.
    pub fn inner_counters(&self) -> Result<XdpInnerCounters, XdpError> {
        read_counters(&self.inner_counters, MAP_INNER_COUNTERS)
    }

    /// Runs the inner program once on `frame` (`BPF_PROG_TEST_RUN`, as queue 0).
    pub fn test_run_inner(&self, frame: &[u8]) -> Result<u32, XdpError> {
        self.test_run_program(INNER_PROGRAM_NAME, frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_keys() {
        let k = prefix_key(IpAddr::from([10, 77, 0, 0]), 16).unwrap();
        assert_eq!(k.prefix_len(), 112);
        assert_eq!(k.data()[10..], [0xff, 0xff, 10, 77, 0, 0]);
        let k = prefix_key("fd77::".parse().unwrap(), 64).unwrap();
        assert_eq!(k.prefix_len(), 64);
        assert!(prefix_key(IpAddr::from([10, 0, 0, 0]), 33).is_err());
        assert!(prefix_key("fd77::".parse().unwrap(), 129).is_err());
    }
}
