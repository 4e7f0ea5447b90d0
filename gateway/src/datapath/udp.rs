//! The outer side of the portable data path: one dual-stack UDP socket per worker, all bound to
//! the listen port with `SO_REUSEPORT` so the kernel spreads flows over workers, read and
//! written in batches with `recvmmsg`/`sendmmsg`.
//!
//! UDP GRO (`UDP_GRO`) is enabled where the kernel has it: one receive may then carry several
//! datagrams of one flow back to back, with their size in a control message; [`RecvBatch`]
//! splits them again. IPv4 peers appear as IPv4-mapped IPv6 on the socket and are converted
//! back, so the protocol core only ever sees plain IPv4 and IPv6 addresses.
//!
//! Sticky source: every socket receives each datagram's destination address (`IPV6_PKTINFO`,
//! which a dual-stack socket gets for IPv4 too, as mapped: one control message per receive)
//! and hands it on with the source ([`RecvBatch::get_endpoint_mut`]), so the protocol core can
//! remember which of our addresses a peer reached. Sends carry that address back as
//! `IPV6_PKTINFO` (`ipi6_addr`, IPv4 as mapped) in the same control buffer as `UDP_SEGMENT`:
//! a reply leaves from the address the client sent to (a VIP, an anycast address), not from
//! whatever the routing table would pick. If that address is gone from the host (the kernel
//! says `EINVAL` or `EADDRNOTAVAIL`), the datagram goes again without it, letting the kernel
//! pick, as the kernel's WireGuard does, and [`UdpSocket::source_fallbacks`] counts it; except
//! when it is a VRRP VIP of the socket's [`VipGate`] (this member is no longer master): then it
//! is dropped and counted in the caller's drop counters (`vip_source_not_held`), since a reply
//! from our own address would make the client roam to this member, away from the VIP.
//!
//! HA (vrrp mode): a socket given a [`VipGate`] drops, while the gate is closed (this member is
//! not master), datagrams sent to a VIP and counts them in [`RecvBatch::refused`].

use crate::proto::endpoint::Endpoint;
use crate::{DropCounters, DropReason};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 32;
/// Room per receive slot: a full GRO super-datagram, or one maximal datagram without GRO.
const SLOT: usize = 65_536;
/// Control-message room for one `UDP_GRO` (or `UDP_SEGMENT`) integer and one `IPV6_PKTINFO`.
const CMSG_SPACE: usize = 128;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a c_int, passed by pointer with its exact size.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// An IPv6 socket address for any peer (IPv4 as mapped).
fn to_sockaddr(addr: SocketAddr) -> libc::sockaddr_in6 {
    let (ip, port, flow, scope) = match addr {
        SocketAddr::V4(a) => (a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        SocketAddr::V6(a) => (*a.ip(), a.port(), a.flowinfo(), a.scope_id()),
    };
    // SAFETY: sockaddr_in6 is a plain C struct for which zero bytes are valid.
    let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_flowinfo = flow;
    sa.sin6_addr.s6_addr = ip.octets();
    sa.sin6_scope_id = scope;
    sa
}

fn from_sockaddr(sa: &libc::sockaddr_in6) -> SocketAddr {
    let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
    let port = u16::from_be(sa.sin6_port);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
        None => SocketAddr::V6(SocketAddrV6::new(
            ip,
            port,
            sa.sin6_flowinfo,
            sa.sin6_scope_id,
        )),
    }
}

/// Destination addresses a socket refuses while closed: an HA member's VIPs while it is not
/// VRRP master (keepalived assigns them to the master only, but nothing stops a datagram to a
/// VIP from reaching a backup that has one by accident or by hand, or XDP passing it on).
#[derive(Debug)]
pub struct VipGate {
    closed: AtomicBool,
    /// IPv4 as mapped, as `IPV6_PKTINFO` reports it.
    vips: Vec<Ipv6Addr>,
}

impl VipGate {
    pub fn new(vips: &[IpAddr], closed: bool) -> VipGate {
        VipGate {
            closed: AtomicBool::new(closed),
            vips: vips
                .iter()
                .map(|ip| match ip {
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                    IpAddr::V6(a) => *a,
                })
                .collect(),
        }
    }

    pub fn set_closed(&self, closed: bool) {
        self.closed.store(closed, Ordering::Relaxed);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn refuses(&self, dst: &Ipv6Addr) -> bool {
        self.vips.contains(dst)
    }

    fn is_vip(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        self.vips.contains(&mapped)
    }
}

/// A bound, non-blocking, dual-stack UDP socket.
#[derive(Debug)]
pub struct UdpSocket {
    fd: OwnedFd,
    gro: bool,
    gso: bool,
    gate: OnceLock<Arc<VipGate>>,
    /// Datagrams sent again without their source address because it was gone.
    source_fallbacks: AtomicU64,
    /// (destination, source) pairs that fell back since the last
    /// [`UdpSocket::take_vanished_sources`], so the peers' sticky sources can be forgotten;
    /// the flag spares the lock while there are none.
    vanished: Mutex<Vec<(SocketAddr, IpAddr)>>,
    vanished_any: AtomicBool,
}

/// Vanished sources remembered between two [`UdpSocket::take_vanished_sources`] at most.
const MAX_VANISHED: usize = 64;

/// A run of datagrams to one destination laid out back to back: with GSO, `segment` bytes
/// each (the last may be shorter), sent as one message the kernel splits.
#[derive(Clone, Copy, Debug)]
pub struct Segments<'a> {
    pub dst: SocketAddr,
    /// The source address to send from (`IPV6_PKTINFO`); `None`: the kernel's choice.
    pub src: Option<IpAddr>,
    pub data: &'a [u8],
    pub segment: usize,
}

/// Most segments one GSO send may carry (the kernel's UDP_MAX_SEGMENTS).
pub const MAX_SEGMENTS: usize = 64;

impl UdpSocket {
    /// Bind `[::]:port` (IPv4 too), sharing the port with the other workers' sockets.
    pub fn bind(port: u16) -> io::Result<UdpSocket> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_INET6,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        // Deep buffers absorb bursts between batches; the kernel caps them at rmem_max.
        let _ = setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20);
        let _ = setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, 8 << 20);
        let sa = to_sockaddr(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
        // SAFETY: `sa` is a sockaddr_in6 passed with its exact size.
        check(unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_in6).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        })?;
        // Every datagram's destination, for the sticky source (see the module docs).
        setsockopt(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        let gro = setsockopt(raw, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        // Setting a zero default segment size only probes that the kernel has UDP GSO.
        let gso = setsockopt(raw, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        Ok(UdpSocket {
            fd,
            gro,
            gso,
            gate: OnceLock::new(),
            source_fallbacks: AtomicU64::new(0),
            vanished: Mutex::new(Vec::new()),
            vanished_any: AtomicBool::new(false),
        })
    }

    /// Refuse datagrams to `gate`'s addresses while it is closed (see [`VipGate`]).
    pub fn set_vip_gate(&self, gate: Arc<VipGate>) -> io::Result<()> {
        let _ = self.gate.set(gate);
        Ok(())
    }

    /// Datagrams sent again without their source address because the host no longer had it.
    pub fn source_fallbacks(&self) -> u64 {
        self.source_fallbacks.load(Ordering::Relaxed)
    }

    /// The (destination, source) pairs whose source was gone since the last call: the peers
    /// with these sticky endpoints should forget the source. Cheap when there are none.
    pub fn take_vanished_sources(&self) -> Vec<(SocketAddr, IpAddr)> {
        if !self.vanished_any.swap(false, Ordering::Relaxed) {
            return Vec::new();
        }
        std::mem::take(&mut *super::shared::lock(&self.vanished))
    }

    fn note_vanished(&self, dst: SocketAddr, src: IpAddr) {
        self.source_fallbacks.fetch_add(1, Ordering::Relaxed);
        let mut v = super::shared::lock(&self.vanished);
        if v.len() < MAX_VANISHED && !v.contains(&(dst, src)) {
            v.push((dst, src));
        }
        self.vanished_any.store(true, Ordering::Relaxed);
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The port the socket is bound to (useful after binding port 0).
    pub fn local_port(&self) -> io::Result<u16> {
        // SAFETY: plain C struct for which zero bytes are valid.
        let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: getsockname writes at most `len` bytes into `sa`, which is that large.
        check(unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut sa as *mut libc::sockaddr_in6).cast(),
                &mut len,
            )
        })?;
        Ok(u16::from_be(sa.sin6_port))
    }

    pub fn gro(&self) -> bool {
        self.gro
    }

    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Receive up to [`BATCH`] datagrams (more with GRO) without blocking. Datagrams the
    /// [`VipGate`] refuses are left out and counted in [`RecvBatch::refused`].
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.datagrams.clear();
        batch.refused = 0;
        // One look at the gate per batch; closed is the rare case (a backup).
        let gate = self.gate.get().filter(|g| g.is_closed());
        // SAFETY: mmsghdr/iovec are plain C structs for which zero bytes are valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, slot) in batch.bufs.chunks_mut(SLOT).enumerate() {
            iov[i] = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut batch.addrs[i] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = batch.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE;
        }
        // SAFETY: every header points into buffers owned by `batch` (or the local `iov`) that
        // outlive the call, with their true lengths.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        for (i, msg) in msgs.iter().enumerate().take(n as usize) {
            let len = msg.msg_len as usize;
            let src = from_sockaddr(&batch.addrs[i]);
            let segment = gro_segment(&msg.msg_hdr).unwrap_or(len).max(1);
            let dst = pktinfo_dst(&msg.msg_hdr);
            if let (Some(g), Some(d)) = (gate, dst) {
                if g.refuses(&d) {
                    batch.refused += len.div_ceil(segment).max(1);
                    continue;
                }
            }
            let from = Endpoint::with_local(src, dst.map(IpAddr::V6));
            let base = i * SLOT;
            let mut off = 0;
            while off < len {
                let end = (off + segment).min(len);
                batch.datagrams.push((from, base + off..base + end));
                off = end;
            }
        }
        Ok(batch.datagrams.len())
    }

    /// Send single datagrams (from the kernel's choice of source); returns how many the kernel
    /// took. Datagrams the kernel refuses (e.g. no route) are skipped, not retried.
    pub fn send_batch(&self, items: &[(SocketAddr, &[u8])]) -> usize {
        let runs: Vec<Segments> = items
            .iter()
            .map(|&(dst, data)| Segments {
                dst,
                src: None,
                data,
                segment: data.len(),
            })
            .collect();
        // No source addresses, so nothing can be dropped for one.
        self.send_segments(&runs, &mut DropCounters::default())
    }

    /// Send runs of segments, each run as one GSO message where the kernel supports it (one
    /// datagram per segment otherwise). Returns how many datagrams the kernel took; a message
    /// dropped because its source is a VIP this member does not hold is counted in `drops`
    /// (`vip_source_not_held`).
    pub fn send_segments(&self, runs: &[Segments<'_>], drops: &mut DropCounters) -> usize {
        if !self.gso && runs.iter().any(|r| r.data.len() > r.segment) {
            let split: Vec<Segments> = runs
                .iter()
                .flat_map(|r| {
                    r.data.chunks(r.segment.max(1)).map(move |c| Segments {
                        dst: r.dst,
                        src: r.src,
                        data: c,
                        segment: c.len(),
                    })
                })
                .collect();
            return self.send_segments(&split, drops);
        }
        runs.chunks(BATCH)
            .map(|chunk| self.send_chunk(chunk, drops))
            .sum()
    }

    /// One `sendmmsg` round for at most [`BATCH`] runs; a run longer than its segment size
    /// carries a `UDP_SEGMENT` control message, a run with a source an `IPV6_PKTINFO` one.
    fn send_chunk(&self, chunk: &[Segments<'_>], drops: &mut DropCounters) -> usize {
        let mut addrs = [to_sockaddr(SocketAddr::from(([0u8; 4], 0))); BATCH];
        let mut cmsgs = [[0u64; CMSG_SPACE / 8]; BATCH];
        // SAFETY: plain C structs for which zero bytes are valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, r) in chunk.iter().enumerate() {
            addrs[i] = to_sockaddr(r.dst);
            iov[i] = libc::iovec {
                iov_base: r.data.as_ptr() as *mut libc::c_void,
                iov_len: r.data.len(),
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            let segment = (r.data.len() > r.segment).then_some(r.segment as u16);
            set_control(h, &mut cmsgs[i], segment, r.src);
        }
        let (mut done, mut sent) = (0, 0);
        // Messages whose source was dropped after the kernel refused it.
        let mut unsourced = [false; BATCH];
        while done < chunk.len() {
            // SAFETY: headers point at `addrs`, `cmsgs`, `iov` and the caller's slices, all
            // alive for the call; the kernel only reads them.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs[done..].as_mut_ptr(),
                    (chunk.len() - done) as libc::c_uint,
                    0,
                )
            };
            if n <= 0 {
                let err = io::Error::last_os_error().raw_os_error();
                let r = &chunk[done];
                // Which error a source that is not ours gives depends on the route (EINVAL,
                // EADDRNOTAVAIL, ENETUNREACH): ask the host whether it still has the address,
                // as the kernel's WireGuard does; a full buffer says nothing about the source.
                let gone = r.src.filter(|&src| {
                    !unsourced[done]
                        && !matches!(err, Some(libc::EAGAIN | libc::ENOBUFS))
                        && !is_local_address(src)
                });
                if let Some(src) = gone.filter(|&s| self.gate.get().is_some_and(|g| g.is_vip(s))) {
                    // A VRRP VIP this member no longer holds: the client is the master's now.
                    // Sent from our own address instead, it would make the client roam to us
                    // (wireguard-go follows any authenticated packet), away from the VIP, and
                    // the next failover could not reach it. Dropped, and the peer keeps the VIP
                    // as its source for when we are master again.
                    drops.count(DropReason::VipSourceNotHeld);
                    tracing::debug!(dst = %r.dst, %src, "VIP not held: datagram from it dropped");
                    done += 1;
                    continue;
                }
                if let Some(src) = gone {
                    // Our source address is gone from the host (a VIP moved away): send this
                    // one again from the kernel's choice, as the kernel's WireGuard does.
                    let segment = (r.data.len() > r.segment).then_some(r.segment as u16);
                    set_control(&mut msgs[done].msg_hdr, &mut cmsgs[done], segment, None);
                    unsourced[done] = true;
                    self.note_vanished(r.dst, src);
                    tracing::debug!(dst = %r.dst, %src, "source address gone: sending from the kernel's choice");
                    continue;
                }
                // The first message failed (unreachable destination, buffer full): drop it and
                // go on with the rest rather than stall the worker.
                done += 1;
                continue;
            }
            let took = n as usize;
            sent += chunk[done..done + took]
                .iter()
                .map(|r| r.data.len().div_ceil(r.segment.max(1)))
                .sum::<usize>();
            done += took;
        }
        sent
    }
}

/// Fill a message's control buffer: a `UDP_SEGMENT` size for a GSO run, an `IPV6_PKTINFO`
/// source address (IPv4 as mapped), either, both or neither.
fn set_control(
    h: &mut libc::msghdr,
    buf: &mut [u64; CMSG_SPACE / 8],
    segment: Option<u16>,
    src: Option<IpAddr>,
) {
    let seg_space = segment.map_or(0, |_| cmsg_space(size_of::<u16>()));
    let src_space = src.map_or(0, |_| cmsg_space(size_of::<libc::in6_pktinfo>()));
    if seg_space + src_space == 0 {
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        return;
    }
    *buf = [0; CMSG_SPACE / 8];
    h.msg_control = buf.as_mut_ptr().cast();
    h.msg_controllen = seg_space + src_space;
    // SAFETY: the control buffer is CMSG_SPACE bytes (8-aligned), more than the two messages'
    // CMSG_SPACE together, and msg_controllen says how much of it is used; CMSG_FIRSTHDR and
    // CMSG_NXTHDR stay within that length and CMSG_DATA points inside each message, whose
    // payloads are written unaligned with their exact types.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        if let Some(seg) = segment {
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
            c = libc::CMSG_NXTHDR(h, c);
        }
        if let (Some(ip), false) = (src, c.is_null()) {
            let addr = match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            let mut info: libc::in6_pktinfo = zeroed();
            info.ipi6_addr.s6_addr = addr.octets();
            (*c).cmsg_level = libc::IPPROTO_IPV6;
            (*c).cmsg_type = libc::IPV6_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(), info);
        }
    }
}

/// Whether `ip` is an address of this host (in this namespace): binding a socket to it works.
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

fn cmsg_space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes an aligned length.
    unsafe { libc::CMSG_SPACE(len as u32) as usize }
}

/// The GRO segment size, if the kernel coalesced datagrams into this receive.
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: `h` was filled by recvmmsg; CMSG_FIRSTHDR/NXTHDR walk only within
    // msg_control..msg_control + msg_controllen as the kernel wrote it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok().filter(|&s| s > 0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// The destination address of a received datagram (`IPV6_PKTINFO`; IPv4 as mapped).
fn pktinfo_dst(h: &libc::msghdr) -> Option<Ipv6Addr> {
    // SAFETY: as in `gro_segment`: the walk stays within the control buffer the kernel
    // filled, and the payload of an IPV6_PKTINFO message is an in6_pktinfo.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>());
                return Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Receive buffers owned by one worker, and the datagrams the last receive produced.
pub struct RecvBatch {
    /// Datagrams the last receive dropped because they were sent to a VIP while the socket's
    /// [`VipGate`] was closed (the caller counts them as `vip_not_master`).
    pub refused: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_in6>,
    cmsgs: Vec<[u64; CMSG_SPACE / 8]>,
    /// (source and our address it reached, byte range in `bufs`) of each datagram, GRO
    /// segments split.
    datagrams: Vec<(Endpoint, std::ops::Range<usize>)>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("datagrams", &self.datagrams.len())
            .finish()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            refused: 0,
            bufs: vec![0u8; SLOT * BATCH],
            addrs: vec![to_sockaddr(SocketAddr::from(([0u8; 4], 0))); BATCH],
            cmsgs: vec![[0u64; CMSG_SPACE / 8]; BATCH],
            datagrams: Vec::with_capacity(BATCH * 4),
        }
    }
}

impl RecvBatch {
    pub fn clear(&mut self) {
        self.datagrams.clear();
        self.refused = 0;
    }

    /// Add a datagram by copy (for in-memory sources); false if the batch is full or the
    /// datagram too large for a slot.
    pub fn push(&mut self, src: SocketAddr, data: &[u8]) -> bool {
        self.push_endpoint(Endpoint::new(src), data)
    }

    /// [`RecvBatch::push`] of a datagram whose destination (our address) is known.
    pub fn push_endpoint(&mut self, src: Endpoint, data: &[u8]) -> bool {
        let i = self.datagrams.len();
        if i >= BATCH || data.len() > SLOT {
            return false;
        }
        let start = i * SLOT;
        self.bufs[start..start + data.len()].copy_from_slice(data);
        self.datagrams.push((src, start..start + data.len()));
        true
    }

    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Datagram `i`: its source and its bytes, mutable so it can be decrypted in place.
    pub fn get_mut(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8])> {
        let (src, d) = self.get_endpoint_mut(i)?;
        Some((src.addr, d))
    }

    /// Datagram `i` with its source and our address it was sent to (`local`, if the socket
    /// reported it).
    pub fn get_endpoint_mut(&mut self, i: usize) -> Option<(Endpoint, &mut [u8])> {
        let (src, r) = self.datagrams.get(i)?.clone();
        Some((src, &mut self.bufs[r]))
    }

    /// Every datagram's bytes at once, mutable and disjoint, in batch order (for one batched
    /// AEAD call over the whole batch). Datagrams are laid out in order (slot by slot, GRO
    /// segments in order within a slot); one that were not would come back empty.
    pub fn slices_mut(&mut self) -> Vec<&mut [u8]> {
        let mut out = Vec::with_capacity(self.datagrams.len());
        let mut rest: &mut [u8] = &mut self.bufs;
        let mut base = 0;
        for (_, r) in &self.datagrams {
            let Some(gap) = r
                .start
                .checked_sub(base)
                .filter(|_| r.end <= base + rest.len())
            else {
                debug_assert!(false, "receive batch out of order");
                out.push(Default::default());
                continue;
            };
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(gap);
            let (d, tail) = tail.split_at_mut(r.len());
            out.push(d);
            rest = tail;
            base = r.end;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_mut_are_the_datagrams_in_order() {
        let mut b = RecvBatch::default();
        let src: SocketAddr = "192.0.2.1:1".parse().unwrap();
        for d in [&b"one"[..], b"", b"three", b"four"] {
            assert!(b.push(src, d));
        }
        let mut s = b.slices_mut();
        assert_eq!(s.len(), 4);
        s[2][0] = b'T';
        let got: Vec<Vec<u8>> = s.iter().map(|d| d.to_vec()).collect();
        assert_eq!(got, [&b"one"[..], b"", b"Three", b"four"]);
        assert_eq!(b.get_mut(2).unwrap().1, b"Three");
    }

    #[test]
    fn sockaddr_round_trip_keeps_families_apart() {
        for a in [
            "192.0.2.1:51820",
            "[2001:db8::1]:443",
            "[::ffff:10.0.0.1]:1",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let back = from_sockaddr(&to_sockaddr(a));
            match a.ip() {
                IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => assert!(back.is_ipv4()),
                _ => assert_eq!(back, a),
            }
        }
    }

    #[test]
    fn batch_round_trip_over_loopback() {
        let rx = UdpSocket::bind(0).unwrap();
        let port = rx.local_port().unwrap();
        let tx = UdpSocket::bind(0).unwrap();
        let dst: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let items: Vec<(SocketAddr, &[u8])> =
            payloads.iter().map(|p| (dst, p.as_slice())).collect();
        assert_eq!(tx.send_batch(&items), 40);
        let mut batch = RecvBatch::default();
        let mut got = Vec::new();
        for _ in 0..100 {
            rx.recv_batch(&mut batch).unwrap();
            for i in 0..batch.len() {
                let (src, d) = batch.get_mut(i).unwrap();
                assert!(src.is_ipv4());
                got.push(d.to_vec());
            }
            if got.len() == 40 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, payloads);
    }

    /// Over loopback in both families: datagrams to a gated address are refused while the
    /// gate is closed, others pass, and everything passes once it opens.
    #[test]
    fn a_closed_vip_gate_refuses_datagrams_to_its_addresses() {
        let rx = UdpSocket::bind(0).unwrap();
        let port = rx.local_port().unwrap();
        // 127.0.0.2 is loopback too; only it is a "VIP".
        let vip4 = SocketAddr::from(([127, 0, 0, 2], port));
        let other4 = SocketAddr::from(([127, 0, 0, 1], port));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let gate = Arc::new(VipGate::new(&[vip4.ip(), v6.ip()], true));
        rx.set_vip_gate(gate.clone()).unwrap();
        let tx = UdpSocket::bind(0).unwrap();
        let recv_all = |want: usize| {
            let mut batch = RecvBatch::default();
            let (mut got, mut refused) = (Vec::new(), 0);
            for _ in 0..200 {
                rx.recv_batch(&mut batch).unwrap();
                refused += batch.refused;
                got.extend((0..batch.len()).map(|i| batch.get_mut(i).unwrap().1.to_vec()));
                if got.len() + refused >= want {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (got, refused)
        };
        let send = |dst: SocketAddr, d: &[u8]| assert_eq!(tx.send_batch(&[(dst, d)]), 1);
        send(vip4, b"to the v4 vip");
        send(other4, b"to another address");
        send(v6, b"to the v6 vip");
        let (got, refused) = recv_all(3);
        assert_eq!(got, vec![b"to another address".to_vec()]);
        assert_eq!(refused, 2);
        gate.set_closed(false);
        send(vip4, b"a");
        send(v6, b"b");
        let (mut got, refused) = recv_all(2);
        got.sort();
        assert_eq!((got, refused), (vec![b"a".to_vec(), b"b".to_vec()], 0));
    }

    /// Over loopback in both families: a receive names our address the datagram was sent to;
    /// a send with a source leaves from it (also as a GSO run); a source the host does not
    /// have falls back to the kernel's choice, counted.
    #[test]
    fn sends_leave_from_the_given_source_and_receives_name_the_destination() {
        let rx = UdpSocket::bind(0).unwrap();
        let port = rx.local_port().unwrap();
        let tx = UdpSocket::bind(0).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let recv_all = |want: usize| {
            let mut batch = RecvBatch::default();
            let mut got = Vec::new();
            for _ in 0..200 {
                rx.recv_batch(&mut batch).unwrap();
                for i in 0..batch.len() {
                    let (from, d) = batch.get_endpoint_mut(i).unwrap();
                    got.push((from.addr.ip(), from.local, d.to_vec()));
                }
                if got.len() >= want {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            got
        };
        let to = |a: &str| SocketAddr::new(ip(a), port);
        let run: Vec<u8> = vec![7u8; 250];
        let runs = [
            // 127.0.0.3 and 127.0.0.4 are loopback addresses the kernel would not pick.
            Segments {
                dst: to("127.0.0.2"),
                src: Some(ip("127.0.0.3")),
                data: b"v4",
                segment: 2,
            },
            Segments {
                dst: to("127.0.0.2"),
                src: Some(ip("127.0.0.4")),
                data: &run,
                segment: 100,
            },
            Segments {
                dst: to("::1"),
                src: Some(ip("::1")),
                data: b"v6",
                segment: 2,
            },
            // Not an address of this host: sent from the kernel's choice instead.
            Segments {
                dst: to("127.0.0.1"),
                src: Some(ip("192.0.2.77")),
                data: b"gone",
                segment: 4,
            },
        ];
        let mut drops = DropCounters::default();
        assert_eq!(tx.send_segments(&runs, &mut drops), 6);
        assert_eq!(tx.source_fallbacks(), 1);
        let mut got = recv_all(6);
        got.sort();
        let mut want = vec![
            (ip("127.0.0.3"), Some(ip("127.0.0.2")), b"v4".to_vec()),
            (ip("127.0.0.4"), Some(ip("127.0.0.2")), run[..100].to_vec()),
            (
                ip("127.0.0.4"),
                Some(ip("127.0.0.2")),
                run[100..200].to_vec(),
            ),
            (ip("127.0.0.4"), Some(ip("127.0.0.2")), run[200..].to_vec()),
            (ip("::1"), Some(ip("::1")), b"v6".to_vec()),
            (ip("127.0.0.1"), Some(ip("127.0.0.1")), b"gone".to_vec()),
        ];
        want.sort();
        assert_eq!(got, want);

        // A VRRP VIP this member does not hold is never swapped for our own address.
        let vip = ip("192.0.2.99");
        tx.set_vip_gate(Arc::new(VipGate::new(&[vip], false)))
            .unwrap();
        let from_vip = [Segments {
            dst: to("127.0.0.1"),
            src: Some(vip),
            data: b"not from us",
            segment: 11,
        }];
        assert_eq!(tx.send_segments(&from_vip, &mut drops), 0);
        assert_eq!(
            (
                drops.get(DropReason::VipSourceNotHeld),
                tx.source_fallbacks()
            ),
            (1, 1)
        );
        assert!(tx.take_vanished_sources().iter().all(|&(_, s)| s != vip));
    }

    #[test]
    fn gso_runs_arrive_as_separate_datagrams() {
        let rx = UdpSocket::bind(0).unwrap();
        let dst = SocketAddr::from(([127, 0, 0, 1], rx.local_port().unwrap()));
        let tx = UdpSocket::bind(0).unwrap();
        // Five 100-byte segments and a 40-byte tail, as one run; then a single datagram.
        let run: Vec<u8> = (0..540u32).map(|i| (i / 100) as u8).collect();
        let single = vec![9u8; 77];
        let runs = [
            Segments {
                dst,
                src: None,
                data: &run,
                segment: 100,
            },
            Segments {
                dst,
                src: None,
                data: &single,
                segment: 77,
            },
        ];
        assert_eq!(tx.send_segments(&runs, &mut DropCounters::default()), 7);
        let mut batch = RecvBatch::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        for _ in 0..100 {
            rx.recv_batch(&mut batch).unwrap();
            got.extend((0..batch.len()).map(|i| batch.get_mut(i).unwrap().1.to_vec()));
            if got.len() >= 7 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut want: Vec<Vec<u8>> = run.chunks(100).map(<[u8]>::to_vec).collect();
        want.push(single);
        assert_eq!(got, want);
    }
}
