//! Appliance mode's inner side: the inside network is a second NIC, run by XDP and AF_XDP like
//! the outer one. One socket (and UMEM) per worker on the inner NIC's queue of the same index,
//! sharing the ring, UMEM and frame-ledger code of [`super::xsk`].
//!
//! ```text
//!  inner NIC rx queue q --XDP (sluice_xdp_inner: to a user's tunnel prefix?)--> inner XSKMAP[q]
//!     --> rx ring --> Ethernet (+ one VLAN tag) stripped --> worker q: route, encrypt, outer tx
//!
//!  worker q: decrypt --> Ethernet header (our MAC -> next hop's MAC, kernel neighbour table)
//!     --> inner tx ring --> inner NIC
//! ```
//!
//! What the kernel still routes into the tunnel (packets from the gateway host itself, from
//! queues without a socket, or to prefixes not in the LPM map yet) arrives on the TUN queue,
//! which [`ApplianceInner::read`] serves when the rx ring is empty. A decrypted packet whose
//! next hop the kernel has not resolved (no entry, incomplete, failed) is written to the TUN
//! instead: the kernel resolves the neighbour and forwards it, and the next packets find it.

use super::frame::{self, Mac, ETH_HLEN};
use super::io::{Inner, InnerFrame};
use super::neigh::NeighbourCache;
use super::shared::lock;
use super::tun::TunQueue;
use super::xsk::{FrameReport, XskError, XskMode, XskSocket};
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use xsk_rs::FrameDesc;

/// Written frames are put on the tx ring (and the kernel kicked) at least this often.
const TX_BATCH: usize = 32;

/// Counters one inner AF_XDP socket publishes.
#[derive(Debug, Default)]
pub struct InnerStats {
    /// Frames received from the inner NIC through the socket.
    pub rx_frames: AtomicU64,
    /// Frames sent to the inner NIC through the socket.
    pub tx_frames: AtomicU64,
    /// Packets read from the TUN queue instead (the kernel routed them into the tunnel).
    pub rx_fallback: AtomicU64,
    /// Packets written to the TUN queue instead (next hop unresolved, or no frame free).
    pub tx_fallback: AtomicU64,
    /// Frames from the ring that held no IP packet (dropped).
    pub malformed: AtomicU64,
    /// Packets decrypted straight into a frame of this socket (no copy after decryption).
    pub direct: AtomicU64,
}

impl InnerStats {
    /// Every counter by its status-file name.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        vec![
            ("rx_frames", get(&self.rx_frames)),
            ("tx_frames", get(&self.tx_frames)),
            ("rx_fallback", get(&self.rx_fallback)),
            ("tx_fallback", get(&self.tx_fallback)),
            ("malformed", get(&self.malformed)),
            ("direct", get(&self.direct)),
        ]
    }
}

/// One AF_XDP socket on one inner NIC queue.
#[derive(Debug)]
pub struct XskInner {
    sock: XskSocket,
    pub queue: u32,
    pub mode: XskMode,
    pub stats: Arc<InnerStats>,
}

impl XskInner {
    pub fn open(ifname: &str, queue: u32) -> Result<XskInner, XskError> {
        let sock = XskSocket::open(ifname, queue)?;
        Ok(XskInner {
            queue: sock.queue,
            mode: sock.mode,
            sock,
            stats: Arc::new(InnerStats::default()),
        })
    }

    /// The socket descriptor, for the inner XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.sock.fd()
    }

    pub fn frame_report(&self) -> FrameReport {
        self.sock.frame_report()
    }

    /// See [`super::xsk::XskSocket::kernel_drops`].
    pub fn kernel_drops(&self) -> [u64; 5] {
        self.sock.kernel_drops()
    }
}

/// Where decrypted packets go on the inside: the inside gateway per family, else the packet's
/// own destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NextHops {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl NextHops {
    pub fn from_list(hops: &[IpAddr]) -> Self {
        let mut n = NextHops::default();
        for h in hops {
            match h {
                IpAddr::V4(a) => n.v4 = Some(*a),
                IpAddr::V6(a) => n.v6 = Some(*a),
            }
        }
        n
    }

    /// The next hop of an IP packet, from its destination address.
    pub fn of(&self, packet: &[u8]) -> Option<IpAddr> {
        match packet.first()? >> 4 {
            4 => {
                let d: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
                Some(IpAddr::V4(self.v4.unwrap_or(Ipv4Addr::from(d))))
            }
            6 => {
                let d: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
                Some(IpAddr::V6(self.v6.unwrap_or(Ipv6Addr::from(d))))
            }
            _ => None,
        }
    }
}

/// A worker's inner side in appliance mode: its inner AF_XDP socket plus its TUN queue.
#[derive(Debug)]
pub struct ApplianceInner {
    xsk: Arc<XskInner>,
    tun: TunQueue,
    mac: Mac,
    next_hops: NextHops,
    neighbours: RefCell<NeighbourCache>,
    /// Frames written but not yet on the tx ring (see [`Inner::flush`]).
    pending: RefCell<Vec<FrameDesc>>,
}

impl ApplianceInner {
    pub fn new(
        xsk: Arc<XskInner>,
        tun: TunQueue,
        mac: Mac,
        ifindex: u32,
        next_hops: NextHops,
    ) -> Self {
        ApplianceInner {
            xsk,
            tun,
            mac,
            next_hops,
            neighbours: RefCell::new(NeighbourCache::new(ifindex)),
            pending: RefCell::new(Vec::with_capacity(TX_BATCH)),
        }
    }

    fn return_frame_desc(&self, desc: FrameDesc) {
        lock(&self.xsk.sock.rings).settle(desc, None);
    }

    fn to_tun(&self, packet: &[u8]) -> bool {
        let ok = self.tun.write(packet).unwrap_or(false);
        if ok {
            self.xsk.stats.tx_fallback.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn transmit_pending(&self) {
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            return;
        }
        let mut r = lock(&self.xsk.sock.rings);
        r.reclaim();
        let done = r.transmit(&mut pending, self.xsk.mode);
        self.xsk
            .stats
            .tx_frames
            .fetch_add(done as u64, Ordering::Relaxed);
    }
}

impl Inner for ApplianceInner {
    fn read(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let mut got = None;
            let n =
                lock(&self.xsk.sock.rings).receive(1, |bytes| match frame::inner_packet(bytes) {
                    Ok(range) if range.len() <= buf.len() => {
                        buf[..range.len()].copy_from_slice(&bytes[range.clone()]);
                        got = Some(range.len());
                    }
                    _ => {
                        self.xsk.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            if n == 0 {
                break;
            }
            self.xsk.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
            if got.is_some() {
                return got;
            }
        }
        let n = self.tun.read(buf).ok().flatten()?;
        self.xsk.stats.rx_fallback.fetch_add(1, Ordering::Relaxed);
        Some(n)
    }

    fn write(&self, packet: &[u8]) -> bool {
        let Some(hop) = self.next_hops.of(packet) else {
            return self.to_tun(packet);
        };
        let Some(dst_mac) = self.neighbours.borrow_mut().lookup(hop, Instant::now()) else {
            return self.to_tun(packet);
        };
        let desc = lock(&self.xsk.sock.rings).write_frame(ETH_HLEN + packet.len(), |buf| {
            buf[ETH_HLEN..].copy_from_slice(packet);
            frame::build_ethernet(buf, &dst_mac, &self.mac).is_some()
        });
        let Some(desc) = desc else {
            return self.to_tun(packet);
        };
        let full = {
            let mut p = self.pending.borrow_mut();
            p.push(desc);
            p.len() >= TX_BATCH
        };
        if full {
            self.transmit_pending();
        }
        true
    }

    fn flush(&self) {
        self.transmit_pending();
    }

    fn lend_frame(&self, len: usize) -> Option<InnerFrame<'_>> {
        let (desc, ptr, cap) = lock(&self.xsk.sock.rings).lend(ETH_HLEN + len)?;
        // SAFETY: `ptr` is the data area (`cap` bytes) of a UMEM frame just taken off the
        // free list and marked held: neither the kernel nor other code touches it until it
        // comes back through `send_frame` or `return_frame`, and the UMEM mapping lives as
        // long as `self.xsk`, which `self` (and so this borrow) keeps alive.
        let area = unsafe { std::slice::from_raw_parts_mut(ptr, cap) };
        Some(InnerFrame {
            buf: &mut area[ETH_HLEN..ETH_HLEN + len],
            desc,
        })
    }

    fn send_frame(&self, frame: InnerFrame<'_>, packet: std::ops::Range<usize>) -> bool {
        let InnerFrame { buf, desc } = frame;
        let Some(ip) = buf.get(packet.clone()) else {
            self.return_frame_desc(desc);
            return false;
        };
        let dst_mac = self
            .next_hops
            .of(ip)
            .and_then(|hop| self.neighbours.borrow_mut().lookup(hop, Instant::now()));
        let Some(dst_mac) = dst_mac else {
            let ok = self.to_tun(ip);
            self.return_frame_desc(desc);
            return ok;
        };
        if packet.start != 0 {
            buf.copy_within(packet.clone(), 0);
        }
        let len = ETH_HLEN + packet.len();
        let write = |f: &mut [u8]| frame::build_ethernet(f, &dst_mac, &self.mac).is_some();
        let desc = lock(&self.xsk.sock.rings).settle(desc, Some((len, &write)));
        let Some(desc) = desc else {
            return false;
        };
        self.xsk.stats.direct.fetch_add(1, Ordering::Relaxed);
        let full = {
            let mut p = self.pending.borrow_mut();
            p.push(desc);
            p.len() >= TX_BATCH
        };
        if full {
            self.transmit_pending();
        }
        true
    }

    fn return_frame(&self, frame: InnerFrame<'_>) {
        self.return_frame_desc(frame.desc);
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.xsk.fd())
    }

    fn extra_readiness_fd(&self) -> Option<RawFd> {
        Some(self.tun.fd())
    }
}

impl Drop for ApplianceInner {
    fn drop(&mut self) {
        // Frames still pending go out (or back to the free list) so the ledger balances.
        self.transmit_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_per_family() {
        let mut v4 = vec![0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[10, 77, 0, 9]);
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        let dst6: Ipv6Addr = "fd77::9".parse().unwrap();
        v6[24..40].copy_from_slice(&dst6.octets());
        // No inside gateway: the destination itself.
        let direct = NextHops::default();
        assert_eq!(direct.of(&v4), Some(IpAddr::from([10, 77, 0, 9])));
        assert_eq!(direct.of(&v6), Some(IpAddr::V6(dst6)));
        // A gateway for IPv4 only.
        let gw = NextHops::from_list(&[IpAddr::from([10, 88, 0, 2])]);
        assert_eq!(gw.of(&v4), Some(IpAddr::from([10, 88, 0, 2])));
        assert_eq!(gw.of(&v6), Some(IpAddr::V6(dst6)));
        let both = NextHops::from_list(&[IpAddr::from([10, 88, 0, 2]), "fd88::2".parse().unwrap()]);
        assert_eq!(both.of(&v6), Some("fd88::2".parse().unwrap()));
        assert_eq!(both.of(&v4[..10]), None);
        assert_eq!(both.of(&[0x15; 40]), None);
    }
}
