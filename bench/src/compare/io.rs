//! The generator's socket: one IPv4 UDP socket for every simulated user, sending each datagram
//! from its user's own address with `sendmmsg` and an `IP_PKTINFO` control message, and
//! receiving with `recvmmsg`. The user addresses are made local by a `local` route in the
//! generator's namespace (see `topo.rs`), so the kernel accepts them as sources and delivers
//! the gateway's answers to this socket.
//!
//! This is the only module of the comparison with `unsafe` (raw socket calls).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Receive room per datagram (the largest WireGuard datagram at a 1420 B MTU is 1452 B).
pub const RECV_SLOT: usize = 2048;
/// Control-message room for one `in_pktinfo`, 8-byte aligned.
const CMSG_WORDS: usize = 4;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is a plain C struct for which zero bytes are valid.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sa
}

/// One datagram to send: from `src` (a local address) to `dst`.
#[derive(Clone, Copy, Debug)]
pub struct Out<'a> {
    pub src: Ipv4Addr,
    pub dst: SocketAddrV4,
    pub data: &'a [u8],
}

/// A bound, non-blocking IPv4 UDP socket.
#[derive(Debug)]
pub struct GenSocket {
    fd: OwnedFd,
}

impl GenSocket {
    /// Bind `0.0.0.0:port` in the calling thread's namespace.
    pub fn bind(port: u16) -> io::Result<GenSocket> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for (opt, val) in [(libc::SO_RCVBUF, 32 << 20), (libc::SO_SNDBUF, 32 << 20)] {
            // SAFETY: the option value is a c_int passed by pointer with its exact size.
            // Deep buffers are a wish (capped at rmem_max/wmem_max), not a requirement.
            let _ = unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    opt,
                    (&val as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        let sa = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        // SAFETY: `sa` is a sockaddr_in passed with its exact size.
        check(unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
        Ok(GenSocket { fd })
    }

    /// Send up to [`BATCH`] datagrams in one `sendmmsg`. Returns how many the kernel took;
    /// `Ok(0)` when its buffer is full (try again).
    pub fn send(&self, items: &[Out<'_>]) -> io::Result<usize> {
        let n = items.len().min(BATCH);
        let mut addrs = [sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH];
        let mut cmsgs = [[0u64; CMSG_WORDS]; BATCH];
        // SAFETY: plain C structs for which zero bytes are valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, it) in items.iter().take(n).enumerate() {
            addrs[i] = sockaddr(it.dst);
            iov[i] = libc::iovec {
                iov_base: it.data.as_ptr() as *mut libc::c_void,
                iov_len: it.data.len(),
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            // SAFETY: the control buffer has CMSG_WORDS * 8 = 32 bytes, exactly
            // CMSG_SPACE(sizeof(in_pktinfo)) on Linux x86_64; CMSG_* compute offsets inside it.
            unsafe {
                h.msg_control = cmsgs[i].as_mut_ptr().cast();
                h.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(it.src).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
            }
        }
        // SAFETY: every header points at `addrs`, `cmsgs`, `iov` and the caller's slices, all
        // alive for the call; the kernel only reads them.
        let r =
            unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }

    /// Receive up to [`BATCH`] datagrams into `bufs` (`BATCH * RECV_SLOT` bytes) without
    /// blocking; `lens[i]` gets datagram i's length. Returns the count (0: nothing waiting).
    pub fn recv(&self, bufs: &mut [u8], lens: &mut [usize; BATCH]) -> io::Result<usize> {
        self.recv_batch(bufs, lens, None)
    }

    /// Ask the kernel for each received datagram's destination address (`IP_PKTINFO`), which
    /// [`GenSocket::recv_to`] reports: a handshake initiation the gateway starts names no
    /// user in clear, only its destination does.
    pub fn want_destinations(&self) -> io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: the option value is a c_int passed by pointer with its exact size.
        check(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    /// [`GenSocket::recv`], also giving each datagram's destination address in `dsts`
    /// (`0.0.0.0` if the kernel sent none: call [`GenSocket::want_destinations`] first).
    pub fn recv_to(
        &self,
        bufs: &mut [u8],
        lens: &mut [usize; BATCH],
        dsts: &mut [Ipv4Addr; BATCH],
    ) -> io::Result<usize> {
        self.recv_batch(bufs, lens, Some(dsts))
    }

    /// One `recvmmsg` into `bufs`, with control-message room when `dsts` wants destinations.
    fn recv_batch(
        &self,
        bufs: &mut [u8],
        lens: &mut [usize; BATCH],
        mut dsts: Option<&mut [Ipv4Addr; BATCH]>,
    ) -> io::Result<usize> {
        let slots = (bufs.len() / RECV_SLOT).min(BATCH);
        let mut cmsgs = [[0u64; CMSG_WORDS]; BATCH];
        // SAFETY: plain C structs for which zero bytes are valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, slot) in bufs.chunks_mut(RECV_SLOT).take(slots).enumerate() {
            iov[i] = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            if dsts.is_some() {
                h.msg_control = cmsgs[i].as_mut_ptr().cast();
                h.msg_controllen = CMSG_WORDS * 8;
            }
        }
        // SAFETY: every header points into `bufs`, the local `iov` and `cmsgs`, all alive for
        // the call, with their true lengths.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        for (i, m) in msgs.iter().take(r as usize).enumerate() {
            lens[i] = m.msg_len as usize;
            if let Some(d) = dsts.as_deref_mut() {
                d[i] = destination(&m.msg_hdr);
            }
        }
        Ok(r as usize)
    }

    /// Wait up to `ms` milliseconds for something to read.
    pub fn wait_readable(&self, ms: i32) {
        wait_readable(self.fd.as_raw_fd(), ms);
    }
}

/// The destination address in a received message's `IP_PKTINFO` control message, or
/// `0.0.0.0` if there is none.
fn destination(h: &libc::msghdr) -> Ipv4Addr {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    // SAFETY: `h` is a header the kernel filled: `msg_controllen` bytes of control messages
    // at `msg_control` (or none); CMSG_FIRSTHDR/NXTHDR stay inside them and an `IP_PKTINFO`
    // message carries one `in_pktinfo`, read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    dst
}

/// Wait up to `ms` milliseconds until `fd` has something to read.
pub fn wait_readable(fd: std::os::fd::RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, passed with count 1; an invalid fd only makes poll report it.
    let _ = unsafe { libc::poll(&mut p, 1, ms) };
}

/// Time this thread has spent on a CPU so far (user + system), for the generator's
/// "was I the bottleneck" check.
pub fn thread_cpu_time() -> std::time::Duration {
    // SAFETY: timespec is plain data; clock_gettime writes it and its result is checked.
    let mut ts: libc::timespec = unsafe { zeroed() };
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A paced sender that is ahead of its schedule (packet `next` is due at `next / rate`
/// seconds, `elapsed` has passed): sleep when the next packet is far off, else give the CPU
/// away. The receiving thread (the sink, or the generator's decryption) shares this core, so
/// a spinning sender would delay it by whole scheduler slices and falsify latencies.
pub fn wait_until_due(next: usize, rate: f64, elapsed: std::time::Duration) {
    let ahead = next as f64 / rate - elapsed.as_secs_f64();
    if ahead > 300e-6 {
        std::thread::sleep(std::time::Duration::from_secs_f64(ahead - 200e-6));
    } else {
        std::thread::yield_now();
    }
}

/// How long the receiver must see nothing new after the sender stopped before a run ends
/// (the gateway draining its queues): 400 ms, less for the smoke run's short runs.
pub fn quiet_time(seconds: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64((seconds / 2.0).clamp(0.1, 0.4))
}
