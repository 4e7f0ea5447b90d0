//! The packet-I/O seam. Workers and handshake threads are generic over where datagrams and
//! inner packets come from: [`Outer`] (the WireGuard side: UDP sockets today, AF_XDP rings
//! next) and [`Inner`] (the tunnel side: a TUN queue, or a second NIC). The in-memory
//! implementations here let tests drive the real worker and handshake code with no root, no
//! sockets and no kernel.

use super::tun::TunQueue;
use super::udp::{RecvBatch, Segments, UdpSocket, BATCH};
use crate::proto::effects::Transmit;
use crate::DropCounters;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Mutex;

/// The outer (WireGuard) side of a worker.
pub trait Outer: Send + Sync {
    /// Receive what is waiting, without blocking, into `batch` (cleared first). Frames that
    /// are not well-formed datagrams are counted in `drops`.
    fn recv_batch(&self, batch: &mut RecvBatch, drops: &mut DropCounters) -> usize;
    /// Send runs of datagrams; returns how many datagrams went out. Datagrams dropped for a
    /// reason of ours (a VIP source this member does not hold) are counted in `drops`.
    fn send(&self, runs: &[Segments<'_>], drops: &mut DropCounters) -> usize;
    /// A descriptor that polls readable when datagrams wait, if there is one.
    fn readiness_fd(&self) -> Option<RawFd>;
    /// (destination, source) pairs sent since the last call whose source address was gone
    /// from the host (sent again from the kernel's choice): the peers' sticky sources to
    /// forget.
    fn take_vanished_sources(&self) -> Vec<(SocketAddr, std::net::IpAddr)> {
        Vec::new()
    }
    /// A second such descriptor, for an outer side that receives from two places (AF_XDP
    /// rings, plus the kernel socket for what XDP passes).
    fn extra_readiness_fd(&self) -> Option<RawFd> {
        None
    }
}

/// A frame an inner side lends (appliance mode) so a packet is decrypted straight into it:
/// the decryption's output is then the only copy. `buf` is where the IP packet goes; the
/// inner side keeps room for its link-layer header in front. Give it back through
/// [`Inner::send_frame`] or [`Inner::return_frame`].
#[derive(Debug)]
pub struct InnerFrame<'a> {
    pub buf: &'a mut [u8],
    pub(crate) desc: xsk_rs::FrameDesc,
}

/// The inner (tunnel) side of a worker.
pub trait Inner: Send {
    /// Read one packet without blocking; `None` when nothing waits.
    fn read(&self, buf: &mut [u8]) -> Option<usize>;
    /// Write one packet; false if it was dropped (queue full, device gone).
    fn write(&self, packet: &[u8]) -> bool;
    fn readiness_fd(&self) -> Option<RawFd>;
    /// A second readiness descriptor, for an inner side that reads from two places (appliance
    /// mode: the inner NIC's AF_XDP rings, plus the TUN queue for what the kernel routes).
    fn extra_readiness_fd(&self) -> Option<RawFd> {
        None
    }
    /// Push out packets written so far (an inner side that batches its writes); the worker
    /// calls it after each received batch.
    fn flush(&self) {}
    /// A frame of at least `len` bytes to decrypt a packet into, if this side transmits from
    /// frames of its own; `None` (the default): decrypt in place and [`Inner::write`].
    fn lend_frame(&self, _len: usize) -> Option<InnerFrame<'_>> {
        None
    }
    /// Send the IP packet at `packet` (a range of `frame.buf`); false if it was dropped.
    fn send_frame(&self, _frame: InnerFrame<'_>, _packet: std::ops::Range<usize>) -> bool {
        false
    }
    /// Give back a lent frame unused (its packet failed a check).
    fn return_frame(&self, _frame: InnerFrame<'_>) {}
}

impl Outer for UdpSocket {
    fn recv_batch(&self, batch: &mut RecvBatch, drops: &mut DropCounters) -> usize {
        let n = UdpSocket::recv_batch(self, batch).unwrap_or(0);
        for _ in 0..batch.refused {
            drops.count(crate::DropReason::VipNotMaster);
        }
        n
    }
    fn send(&self, runs: &[Segments<'_>], drops: &mut DropCounters) -> usize {
        self.send_segments(runs, drops)
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.fd())
    }
    fn take_vanished_sources(&self) -> Vec<(SocketAddr, std::net::IpAddr)> {
        UdpSocket::take_vanished_sources(self)
    }
}

impl Inner for TunQueue {
    fn read(&self, buf: &mut [u8]) -> Option<usize> {
        TunQueue::read(self, buf).ok().flatten()
    }
    fn write(&self, packet: &[u8]) -> bool {
        TunQueue::write(self, packet).unwrap_or(false)
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.fd())
    }
}

/// An in-memory outer side: tests push datagrams into `inbox` and read what was sent.
#[derive(Debug, Default)]
pub struct MemOuter {
    pub inbox: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    pub sent: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
}

impl Outer for MemOuter {
    fn recv_batch(&self, batch: &mut RecvBatch, _drops: &mut DropCounters) -> usize {
        batch.clear();
        let mut inbox = super::shared::lock(&self.inbox);
        while batch.len() < BATCH {
            let Some((src, d)) = inbox.pop_front() else {
                break;
            };
            batch.push(src, &d);
        }
        batch.len()
    }
    fn send(&self, runs: &[Segments<'_>], _drops: &mut DropCounters) -> usize {
        let mut sent = super::shared::lock(&self.sent);
        let before = sent.len();
        for r in runs {
            sent.extend(r.data.chunks(r.segment.max(1)).map(|c| (r.dst, c.to_vec())));
        }
        sent.len() - before
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        None
    }
}

/// An in-memory inner side: tests push packets "from the tunnel" and read what was delivered.
#[derive(Debug, Default)]
pub struct MemInner {
    pub inbox: Mutex<VecDeque<Vec<u8>>>,
    pub written: Mutex<Vec<Vec<u8>>>,
}

impl Inner for std::sync::Arc<MemInner> {
    fn read(&self, buf: &mut [u8]) -> Option<usize> {
        let p = super::shared::lock(&self.inbox).pop_front()?;
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        Some(n)
    }
    fn write(&self, packet: &[u8]) -> bool {
        super::shared::lock(&self.written).push(packet.to_vec());
        true
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        None
    }
}

/// Send (and clear) the messages the protocol core queued; returns how many went out.
pub fn send_transmits<O: Outer + ?Sized>(
    outer: &O,
    transmits: &mut VecDeque<Transmit>,
    drops: &mut DropCounters,
) -> usize {
    if transmits.is_empty() {
        return 0;
    }
    let runs: Vec<Segments> = transmits
        .iter()
        .map(|t| Segments {
            dst: t.dst,
            src: t.src,
            data: &t.data,
            segment: t.data.len(),
        })
        .collect();
    let sent = outer.send(&runs, drops);
    transmits.clear();
    sent
}
