//! The AF_XDP outer side: one XDP socket per NIC receive queue, each with its own UMEM, driven
//! by one worker (an [`Outer`] implementation the worker is generic over).
//!
//! ```text
//!  NIC rx queue q --XDP (ebpf/: WireGuard UDP to us?)--> XSKMAP[q] --> rx ring --+
//!                                                                                |  frames
//!   fill ring <---- frames back as soon as the payload is copied into the batch -+
//!
//!   worker send --> free frame --> Ethernet/IP/UDP headers + datagram --> tx ring --> NIC
//!   completion ring --> frame back on the free list
//! ```
//!
//! - Receive: frames are parsed ([`super::frame`]), the payload is copied into the worker's
//!   batch (where it is decrypted in place), and the frame goes straight back to the fill ring.
//!   The way back to the sender (our address it reached, VLAN, the next-hop MAC: the frame's
//!   source MAC, which is the client's own for a directly attached client and the router's for
//!   a routed one) is learned into a [`Neighbours`] table shared by all workers.
//! - Transmit: a datagram to an endpoint with a learned route is framed straight into a UMEM
//!   frame; one with no route yet (a configured endpoint we have not heard from) goes through
//!   the kernel's UDP socket, which resolves the next hop with the kernel's neighbour table.
//! - The gateway's UDP socket stays bound: what XDP passes (a queue with no socket, or before
//!   the sockets are registered) is still served through it.
//! - Every UMEM frame is always in exactly one place: our free list, the fill ring (kernel),
//!   the tx ring (kernel), or briefly in our hands during a receive. [`FrameLedger`] tracks
//!   each frame's place and checks every transition, and at shutdown reports any frame not
//!   accounted for.
//!
//! Zero-copy is used where the driver supports it, copy mode otherwise (veth).

use super::frame::{self, Route};
use super::io::Outer;
use super::shared::lock;
use super::udp::{RecvBatch, Segments, UdpSocket, BATCH};
use crate::proto::endpoint::Endpoint;
use crate::{DropCounters, DropReason};
use std::collections::HashMap;
use std::ffi::CString;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// UMEM frames per socket: half start in the fill ring, half are kept for transmit.
pub const FRAMES: u32 = 4096;
/// Bytes per UMEM frame (a page: the aligned-mode maximum, and room for a jumbo datagram
/// up to about 3.8 kB after the kernel's 256-byte headroom).
const FRAME_SIZE: u32 = 4096;
/// Ring sizes (descriptors).
const RING: u32 = 2048;
/// In copy mode one `sendto` kick transmits at most this many descriptors.
const COPY_MODE_TX_PER_KICK: usize = 32;
/// Learned routes kept at most; beyond this the table is cleared and relearned.
const MAX_NEIGHBOURS: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("interface name {0:?} contains a NUL byte")]
    BadName(String),
    #[error("creating the UMEM for {ifname} queue {queue}: {detail}")]
    Umem {
        ifname: String,
        queue: u32,
        detail: String,
    },
    #[error("creating the AF_XDP socket on {ifname} queue {queue}: {detail}")]
    Socket {
        ifname: String,
        queue: u32,
        detail: String,
    },
}

/// Whether the socket moves frames without copying (driver support needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XskMode {
    ZeroCopy,
    Copy,
}

impl XskMode {
    pub fn label(self) -> &'static str {
        match self {
            XskMode::ZeroCopy => "zero-copy",
            XskMode::Copy => "copy",
        }
    }
}

/// Routes back to the endpoints we have received frames from, shared by every worker: a
/// client's frames arrive on one queue, but packets to it are encrypted by whichever worker
/// read them from the inner side. Written only when a route is new or changed.
#[derive(Debug, Default)]
pub struct Neighbours {
    map: RwLock<HashMap<IpAddr, Route>>,
}

impl Neighbours {
    pub fn get(&self, ip: &IpAddr) -> Option<Route> {
        self.map.read().ok()?.get(ip).copied()
    }

    fn learn(&self, ip: IpAddr, route: Route) {
        if let Ok(mut m) = self.map.write() {
            if m.len() >= MAX_NEIGHBOURS && !m.contains_key(&ip) {
                m.clear();
            }
            m.insert(ip, route);
        }
    }

    pub fn len(&self) -> usize {
        self.map.read().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fills in a frame about to be transmitted (e.g. its link-layer header); false: don't send.
pub(super) type FrameWrite<'a> = dyn Fn(&mut [u8]) -> bool + 'a;

/// What the kernel dropped or refused on one AF_XDP socket (`XDP_STATISTICS`): packets the
/// XDP program redirected that never reached the rx ring, and descriptors it refused.
pub const KERNEL_DROP_REASONS: [&str; 5] = [
    "rx_dropped",
    "rx_ring_full",
    "rx_fill_ring_empty",
    "rx_invalid_desc",
    "tx_invalid_desc",
];

/// Where a UMEM frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Free,
    Fill,
    Tx,
    Held,
}

/// Every frame's place, checked on each transition. A transition from the wrong place (the
/// kernel handing back a frame we did not give it, or giving one back twice) is counted as a
/// violation; at shutdown, frames held by nobody are counted as lost.
#[derive(Debug)]
pub struct FrameLedger {
    places: Vec<Place>,
    /// Frames in the fill ring (a running count, to avoid scanning `places` per batch).
    fill: usize,
    violations: u64,
}

impl FrameLedger {
    fn new(frames: usize) -> Self {
        FrameLedger {
            places: vec![Place::Free; frames],
            fill: 0,
            violations: 0,
        }
    }

    fn index(addr: usize) -> usize {
        addr / FRAME_SIZE as usize
    }

    fn moved(&mut self, addr: usize, from: Place, to: Place) {
        match self.places.get_mut(Self::index(addr)) {
            Some(p) if *p == from => *p = to,
            Some(p) => {
                self.violations += 1;
                *p = to;
            }
            None => self.violations += 1,
        }
    }

    fn count(&self, place: Place) -> usize {
        self.places.iter().filter(|&&p| p == place).count()
    }
}

/// The frame accounting a socket reports at shutdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameReport {
    pub total: usize,
    pub free: usize,
    pub in_fill: usize,
    pub in_tx: usize,
    /// Frames in no known place (must be zero).
    pub lost: usize,
    /// Transitions from an unexpected place (must be zero).
    pub violations: u64,
}

/// Counters one AF_XDP socket publishes.
#[derive(Debug, Default)]
pub struct XskStats {
    pub rx_frames: AtomicU64,
    pub tx_frames: AtomicU64,
    /// Datagrams sent through the kernel UDP socket because no route was learned yet or no
    /// frame was free.
    pub tx_fallback: AtomicU64,
    /// Datagrams received on the kernel UDP socket (XDP passed them).
    pub rx_fallback: AtomicU64,
}

impl XskStats {
    /// Every counter by its status-file name.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        vec![
            ("rx_frames", get(&self.rx_frames)),
            ("tx_frames", get(&self.tx_frames)),
            ("rx_fallback", get(&self.rx_fallback)),
            ("tx_fallback", get(&self.tx_fallback)),
        ]
    }
}

/// The rings and UMEM of one AF_XDP socket, with the ledger of where each frame is: shared
/// by the outer side here and the inner side ([`super::xsk_inner`]).
pub(super) struct Rings {
    umem: Umem,
    fill: FillQueue,
    comp: CompQueue,
    rx: RxQueue,
    tx: TxQueue,
    free: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    ledger: FrameLedger,
}

/// One AF_XDP socket and its UMEM on one NIC queue (either side).
pub struct XskSocket {
    pub(super) rings: Mutex<Rings>,
    fd: RawFd,
    pub queue: u32,
    pub mode: XskMode,
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("queue", &self.queue)
            .field("mode", &self.mode)
            .field("fd", &self.fd)
            .finish()
    }
}

/// One AF_XDP socket (and its UMEM) on one NIC queue, as a worker's [`Outer`].
pub struct XskOuter {
    sock: XskSocket,
    pub queue: u32,
    pub mode: XskMode,
    /// Routes this worker already published, so the shared table is only written on change.
    known: Mutex<HashMap<IpAddr, Route>>,
    fallback: Arc<UdpSocket>,
    neighbours: Arc<Neighbours>,
    pub stats: Arc<XskStats>,
}

impl std::fmt::Debug for XskOuter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskOuter")
            .field("queue", &self.queue)
            .field("mode", &self.mode)
            .field("fd", &self.sock.fd)
            .finish()
    }
}

fn mk_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl XskOuter {
    /// Create the UMEM and socket for `ifname` queue `queue` ([`XskSocket::open`]); datagrams
    /// with no learned route go through `fallback`.
    pub fn open(
        ifname: &str,
        queue: u32,
        fallback: Arc<UdpSocket>,
        neighbours: Arc<Neighbours>,
    ) -> Result<XskOuter, XskError> {
        let sock = XskSocket::open(ifname, queue)?;
        Ok(XskOuter {
            queue: sock.queue,
            mode: sock.mode,
            sock,
            known: Mutex::new(HashMap::new()),
            fallback,
            neighbours,
            stats: Arc::new(XskStats::default()),
        })
    }

    /// The socket descriptor, for the XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.sock.fd
    }

    /// Take back completed transmits and report where every frame is.
    pub fn frame_report(&self) -> FrameReport {
        self.sock.frame_report()
    }

    /// See [`XskSocket::kernel_drops`].
    pub fn kernel_drops(&self) -> [u64; 5] {
        self.sock.kernel_drops()
    }
}

impl XskSocket {
    /// Create the UMEM and socket for `ifname` queue `queue`, zero-copy if the driver allows,
    /// else copy mode. libxdp's own program loading is inhibited: the caller puts [`Self::fd`]
    /// into sluice's XSKMAP. Half the frames start in the fill ring.
    pub fn open(ifname: &str, queue: u32) -> Result<XskSocket, XskError> {
        let iface = Interface::new(
            CString::new(ifname).map_err(|_| XskError::BadName(ifname.to_string()))?,
        );
        let umem_err = |detail: String| XskError::Umem {
            ifname: ifname.to_string(),
            queue,
            detail,
        };
        let sock_err = |detail: String| XskError::Socket {
            ifname: ifname.to_string(),
            queue,
            detail,
        };
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| umem_err(mk_err(e)))?)
            .fill_queue_size(QueueSize::new(RING).map_err(|e| umem_err(mk_err(e)))?)
            .comp_queue_size(QueueSize::new(RING).map_err(|e| umem_err(mk_err(e)))?)
            .build()
            .map_err(|e| umem_err(mk_err(e)))?;
        let frames = NonZeroU32::new(FRAMES).ok_or_else(|| umem_err("no frames".into()))?;
        let (umem, descs) = Umem::new(umem_cfg, frames, false).map_err(|e| umem_err(mk_err(e)))?;
        let attempt = |bind: BindFlags| {
            let cfg = SocketConfig::builder()
                .rx_queue_size(QueueSize::new(RING).map_err(|e| sock_err(mk_err(e)))?)
                .tx_queue_size(QueueSize::new(RING).map_err(|e| sock_err(mk_err(e)))?)
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(bind)
                .build();
            // SAFETY: the UMEM is new and not shared with any other socket, so the (ifname,
            // queue) pair is not already bound through it; program loading is inhibited
            // anyway, which is what the shared case requires.
            unsafe { Socket::new(cfg, &umem, &iface, queue) }.map_err(|e| sock_err(mk_err(e)))
        };
        let (mode, (tx, rx, rings)) =
            match attempt(BindFlags::XDP_ZEROCOPY | BindFlags::XDP_USE_NEED_WAKEUP) {
                Ok(s) => (XskMode::ZeroCopy, s),
                Err(_) => (
                    XskMode::Copy,
                    attempt(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)?,
                ),
            };
        let (fill, comp) =
            rings.ok_or_else(|| sock_err("libxdp returned no fill/completion rings".into()))?;
        let fd = rx.fd().as_raw_fd();
        let mut r = Rings {
            umem,
            fill,
            comp,
            rx,
            tx,
            free: descs,
            scratch: vec![FrameDesc::default(); BATCH.max(COPY_MODE_TX_PER_KICK) * 2],
            ledger: FrameLedger::new(FRAMES as usize),
        };
        r.refill(FRAMES as usize / 2);
        Ok(XskSocket {
            rings: Mutex::new(r),
            fd,
            queue,
            mode,
        })
    }

    /// The socket descriptor, for the XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The kernel's drop counters for this socket, in [`KERNEL_DROP_REASONS`] order (zeros if
    /// the kernel won't say).
    pub fn kernel_drops(&self) -> [u64; 5] {
        let r = lock(&self.rings);
        match r.rx.fd().xdp_statistics() {
            Ok(s) => [
                s.rx_dropped(),
                s.rx_ring_full(),
                s.rx_fill_ring_empty_descs(),
                s.rx_invalid_descs(),
                s.tx_invalid_descs(),
            ],
            Err(_) => [0; 5],
        }
    }

    /// Take back completed transmits and report where every frame is.
    pub fn frame_report(&self) -> FrameReport {
        let mut r = lock(&self.rings);
        r.reclaim();
        let total = r.ledger.places.len();
        let free = r.ledger.count(Place::Free);
        let in_fill = r.ledger.count(Place::Fill);
        let in_tx = r.ledger.count(Place::Tx);
        FrameReport {
            total,
            free,
            in_fill,
            in_tx,
            lost: total - free - in_fill - in_tx,
            violations: r.ledger.violations,
        }
    }
}

impl Rings {
    /// Give free frames to the fill ring until it holds `target`.
    fn refill(&mut self, target: usize) {
        let in_fill = self.ledger.fill;
        if in_fill >= target {
            return;
        }
        let want = (target - in_fill).min(self.free.len());
        if want == 0 {
            return;
        }
        let start = self.free.len() - want;
        // SAFETY: the frames come from our free list: they belong to this UMEM, and neither
        // the kernel nor we use them until they come back through the rx ring.
        let n = unsafe { self.fill.produce(&self.free[start..]) };
        for d in self.free.drain(start..start + n) {
            self.ledger.moved(d.addr(), Place::Free, Place::Fill);
        }
        self.ledger.fill += n;
    }

    /// Hand up to `max` received frames' contents to `f`, each frame going back to the free
    /// list right after; then take completions back, refill the fill ring and wake the driver
    /// if it asks. Returns how many frames were received.
    pub(super) fn receive(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let max = max.min(self.scratch.len());
        let Rings {
            umem,
            rx,
            scratch,
            ledger,
            free,
            ..
        } = self;
        // SAFETY: the rx ring returns frames of this UMEM the kernel finished writing; the
        // descriptors go into our scratch space.
        let n = unsafe { rx.consume(&mut scratch[..max]) };
        for d in &scratch[..n] {
            ledger.moved(d.addr(), Place::Fill, Place::Held);
            ledger.fill = ledger.fill.saturating_sub(1);
            // SAFETY: `d` is a frame of this UMEM just handed to us by the rx ring; nothing
            // else reads or writes it until we put it back on the free list below.
            let data = unsafe { umem.data(d) };
            f(data.contents());
            ledger.moved(d.addr(), Place::Held, Place::Free);
            free.push(*d);
        }
        self.reclaim();
        self.refill(FRAMES as usize / 2);
        if self.fill.needs_wakeup() {
            // A zero-timeout poll on the socket wakes the driver to use the new fill entries.
            let fd = self.rx.fd_mut();
            let _ = fd_poll(fd.as_raw_fd());
        }
        n
    }

    /// Lend a free frame whose data area holds at least `len` bytes (marked held in the
    /// ledger until [`Rings::settle`]): its descriptor, and the address and size of its data
    /// area, for a packet to be written into it directly.
    pub(super) fn lend(&mut self, len: usize) -> Option<(FrameDesc, *mut u8, usize)> {
        let mut desc = self.free.pop()?;
        // SAFETY: `desc` came off our free list, so it is a frame of this UMEM that neither
        // the kernel nor any other code is using.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let cap = {
            let mut cur = data.cursor();
            let cap = cur.buf_len();
            cur.set_pos(cap);
            cap
        };
        if cap < len {
            self.free.push(desc);
            return None;
        }
        let ptr = data.contents_mut().as_mut_ptr();
        self.ledger.moved(desc.addr(), Place::Free, Place::Held);
        Some((desc, ptr, cap))
    }

    /// A lent frame comes back: to be transmitted (`Some((len, write))`: its first `len`
    /// bytes, after `write` filled in the header), or unused (`None`).
    pub(super) fn settle(
        &mut self,
        mut desc: FrameDesc,
        send: Option<(usize, &FrameWrite<'_>)>,
    ) -> Option<FrameDesc> {
        self.ledger.moved(desc.addr(), Place::Held, Place::Free);
        let Some((len, write)) = send else {
            self.free.push(desc);
            return None;
        };
        // SAFETY: a lent frame of this UMEM; the borrower has given it back, so nothing else
        // uses it until it goes on the tx ring.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        data.cursor().set_pos(len);
        if data.contents().len() != len || !write(data.contents_mut()) {
            self.free.push(desc);
            return None;
        }
        Some(desc)
    }

    /// Take a free frame, size it to `len` bytes and let `write` fill it; `None` (the frame
    /// back on the free list) when no frame is free, `len` does not fit, or `write` fails.
    pub(super) fn write_frame(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> bool,
    ) -> Option<FrameDesc> {
        let mut desc = self.free.pop()?;
        // SAFETY: `desc` came off our free list, so it is a frame of this UMEM that neither
        // the kernel nor any other code is using.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let fits = {
            let mut cur = data.cursor();
            cur.set_pos(len);
            cur.pos() == len
        };
        if !fits || !write(data.contents_mut()) {
            self.free.push(desc);
            return None;
        }
        Some(desc)
    }

    /// Put written frames on the tx ring and kick the kernel (copy mode: one kick per 32
    /// descriptors). Frames the ring would not take go back to the free list. Returns how
    /// many went out; `produced` is left empty.
    pub(super) fn transmit(&mut self, produced: &mut Vec<FrameDesc>, mode: XskMode) -> usize {
        let mut done = 0;
        while done < produced.len() {
            // SAFETY: each descriptor is a frame of this UMEM we just wrote and hand to
            // the kernel; we don't touch it until the completion ring returns it.
            let n = unsafe { self.tx.produce(&produced[done..]) };
            if n == 0 {
                // Tx ring full: kick, take completions back, and try once more.
                let _ = self.tx.wakeup();
                self.reclaim();
                // SAFETY: as above.
                let m = unsafe { self.tx.produce(&produced[done..]) };
                if m == 0 {
                    break;
                }
                for d in &produced[done..done + m] {
                    self.ledger.moved(d.addr(), Place::Free, Place::Tx);
                }
                done += m;
                continue;
            }
            for d in &produced[done..done + n] {
                self.ledger.moved(d.addr(), Place::Free, Place::Tx);
            }
            done += n;
        }
        // Frames the tx ring would not take go back to the free list.
        for d in produced.drain(..).skip(done) {
            self.free.push(d);
        }
        produced.clear();
        let kicks = match mode {
            XskMode::Copy => done.div_ceil(COPY_MODE_TX_PER_KICK),
            XskMode::ZeroCopy => usize::from(done > 0 && self.tx.needs_wakeup()),
        };
        for _ in 0..kicks {
            let _ = self.tx.wakeup();
        }
        done
    }

    /// Take completed transmits back onto the free list.
    pub(super) fn reclaim(&mut self) {
        loop {
            let room = self.scratch.len();
            // SAFETY: the completion ring only returns frames of this UMEM we put on the tx
            // ring; the descriptors are written into our scratch space.
            let n = unsafe { self.comp.consume(&mut self.scratch[..room]) };
            for d in &self.scratch[..n] {
                self.ledger.moved(d.addr(), Place::Tx, Place::Free);
                self.free.push(*d);
            }
            if n < room {
                break;
            }
        }
    }
}

impl XskOuter {
    fn recv_frames(&self, batch: &mut RecvBatch, drops: &mut DropCounters) -> usize {
        let mut r = lock(&self.sock.rings);
        let mut known = lock(&self.known);
        let n = r.receive(BATCH, |bytes| match frame::parse_udp(bytes) {
            Ok(f) => {
                if known.get(&f.remote.ip()) != Some(&f.route) {
                    known.insert(f.remote.ip(), f.route);
                    self.neighbours.learn(f.remote.ip(), f.route);
                }
                let from = Endpoint::with_local(f.remote, Some(f.route.local.ip()));
                if !batch.push_endpoint(from, &bytes[f.payload]) {
                    drops.count(DropReason::MalformedFrame);
                }
            }
            Err(_) => drops.count(DropReason::MalformedFrame),
        });
        if known.len() > MAX_NEIGHBOURS {
            known.clear();
        }
        self.stats.rx_frames.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    fn send_frames(&self, runs: &[Segments<'_>], drops: &mut DropCounters) -> usize {
        let mut sent = 0;
        let mut fallback: Vec<Segments<'_>> = Vec::new();
        {
            let mut r = lock(&self.sock.rings);
            let known = lock(&self.known);
            r.reclaim();
            let mut produced = Vec::with_capacity(COPY_MODE_TX_PER_KICK * 2);
            for run in runs {
                let route = known
                    .get(&run.dst.ip())
                    .copied()
                    .or_else(|| self.neighbours.get(&run.dst.ip()));
                let Some(mut route) = route else {
                    fallback.push(*run);
                    continue;
                };
                // The peer's sticky source wins over the address its last frame reached (they
                // differ only when two of our addresses share a client).
                if let Some(src) = run.src.filter(|s| s.is_ipv4() == route.local.is_ipv4()) {
                    route.local = std::net::SocketAddr::new(src, route.local.port());
                }
                let seg = run.segment.max(1);
                let hlen = frame::header_len(&route, &run.dst);
                let mut leftover = None;
                for (i, chunk) in run.data.chunks(seg).enumerate() {
                    let desc = r.write_frame(hlen + chunk.len(), |buf| {
                        buf[hlen..].copy_from_slice(chunk);
                        frame::build_udp(buf, &route, &run.dst, chunk.len()).is_some()
                    });
                    match desc {
                        Some(d) => produced.push(d),
                        None => {
                            // No frame free, or too big for one: the kernel socket sends
                            // the rest of the run.
                            leftover = Some(i * seg);
                            break;
                        }
                    }
                }
                if let Some(from) = leftover {
                    fallback.push(Segments {
                        data: &run.data[from..],
                        ..*run
                    });
                }
            }
            let done = r.transmit(&mut produced, self.mode);
            sent += done;
            self.stats
                .tx_frames
                .fetch_add(done as u64, Ordering::Relaxed);
        }
        if !fallback.is_empty() {
            let n = self.fallback.send_segments(&fallback, drops);
            self.stats
                .tx_fallback
                .fetch_add(n as u64, Ordering::Relaxed);
            sent += n;
        }
        sent
    }
}

fn fd_poll(fd: RawFd) -> std::io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Outer for XskOuter {
    fn recv_batch(&self, batch: &mut RecvBatch, drops: &mut DropCounters) -> usize {
        batch.clear();
        let n = self.recv_frames(batch, drops);
        if n == 0 {
            // Nothing on the ring: serve what XDP passed to the kernel socket.
            let m = self.fallback.recv_batch(batch).unwrap_or(0);
            // XDP passes datagrams to a VIP it may not serve; the socket refuses them.
            for _ in 0..batch.refused {
                drops.count(DropReason::VipNotMaster);
            }
            self.stats
                .rx_fallback
                .fetch_add(m as u64, Ordering::Relaxed);
            return m;
        }
        batch.len()
    }

    fn send(&self, runs: &[Segments<'_>], drops: &mut DropCounters) -> usize {
        self.send_frames(runs, drops)
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.sock.fd)
    }

    fn extra_readiness_fd(&self) -> Option<RawFd> {
        Some(self.fallback.fd())
    }

    fn take_vanished_sources(&self) -> Vec<(std::net::SocketAddr, IpAddr)> {
        self.fallback.take_vanished_sources()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_counts_every_transition() {
        let mut l = FrameLedger::new(4);
        let a = |i: usize| i * FRAME_SIZE as usize + 256;
        l.moved(a(0), Place::Free, Place::Fill);
        l.moved(a(1), Place::Free, Place::Tx);
        assert_eq!(l.count(Place::Free), 2);
        assert_eq!(l.violations, 0);
        // The kernel returning a frame twice, or one we never gave it, is a violation.
        l.moved(a(1), Place::Tx, Place::Free);
        l.moved(a(1), Place::Tx, Place::Free);
        l.moved(a(9), Place::Fill, Place::Held);
        assert_eq!(l.violations, 2);
        // A frame left "held" is neither free nor in a ring: lost.
        l.moved(a(0), Place::Fill, Place::Held);
        let lost = 4 - l.count(Place::Free) - l.count(Place::Fill) - l.count(Place::Tx);
        assert_eq!(lost, 1);
    }
}
