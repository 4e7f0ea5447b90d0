//! The inner side: a multi-queue Linux TUN device (`IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE`),
//! one queue (file descriptor) per worker, so the kernel spreads outgoing flows over workers.
//!
//! The device exists while a queue is open: closing every queue removes it, which is how a
//! clean shutdown (and a crash) leaves nothing behind. Addresses, MTU and the up flag are set
//! with the classic interface ioctls.

use crate::config::wgquick::Cidr;
use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Errors setting up the TUN device, with the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(
        "opening /dev/net/tun: {0} (is the tun module loaded, and are we root / CAP_NET_ADMIN?)"
    )]
    Open(io::Error),
    #[error("creating TUN queue for {name}: {err}")]
    Create { name: String, err: io::Error },
    #[error("{step} on {name}: {err}")]
    Configure {
        name: String,
        step: &'static str,
        err: io::Error,
    },
}

/// One queue of the TUN device.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
}

fn ifreq(name: &str) -> Result<libc::ifreq, io::Error> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = cname.as_bytes_with_nul();
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if bytes.len() > req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl TunQueue {
    /// Open a new queue of device `name`, creating the device if it does not exist.
    pub fn open(name: &str) -> Result<TunQueue, TunError> {
        let path = c"/dev/net/tun";
        // SAFETY: `path` is a valid NUL-terminated string; open has no other preconditions.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if raw < 0 {
            return Err(TunError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let create = |err| TunError::Create {
            name: name.to_string(),
            err,
        };
        let mut req = ifreq(name).map_err(create)?;
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) }).map_err(create)?;
        Ok(TunQueue { fd })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Read one packet; `Ok(None)` when the queue is empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            n if n >= 0 => Ok(Some(n as usize)),
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Write one packet. `Ok(false)` if the device's queue is full (the packet is dropped).
    pub fn write(&self, packet: &[u8]) -> io::Result<bool> {
        // SAFETY: `packet` is valid for reads of `packet.len()` bytes for the call.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n >= 0 {
            return Ok(true);
        }
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            e => Err(e),
        }
    }
}

/// A socket used only to issue interface ioctls.
struct CtlSocket(OwnedFd);

impl CtlSocket {
    fn new(family: libc::c_int) -> io::Result<CtlSocket> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        Ok(CtlSocket(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: every request used here takes a `struct ifreq`, which `req` is.
        check(unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, req as *mut libc::ifreq) })
    }
}

fn sockaddr_in(addr: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this reinterprets the
    // bytes as the generic type the ifreq union field is declared with.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Set the MTU and addresses of device `name` and bring it up.
pub fn configure(name: &str, mtu: u16, addresses: &[Cidr]) -> Result<(), TunError> {
    let err = |step| {
        move |e| TunError::Configure {
            name: name.to_string(),
            step,
            err: e,
        }
    };
    let ctl = CtlSocket::new(libc::AF_INET).map_err(err("control socket"))?;
    // Like the kernel's WireGuard devices, a tunnel gets no automatic IPv6 link-local address
    // (it would only send router solicitations no peer routes). Best effort: the knob is
    // absent without IPv6.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/addr_gen_mode"), "1");

    let mut req = ifreq(name).map_err(err("name"))?;
    req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
    ctl.ioctl(libc::SIOCSIFMTU, &mut req)
        .map_err(err("setting MTU"))?;

    for a in addresses {
        match a.addr {
            IpAddr::V4(v4) => {
                let mut req = ifreq(name).map_err(err("name"))?;
                req.ifr_ifru.ifru_addr = sockaddr_in(v4.octets());
                ctl.ioctl(libc::SIOCSIFADDR, &mut req)
                    .map_err(err("setting IPv4 address"))?;
                let mask = u32::MAX.checked_shl(32 - u32::from(a.len)).unwrap_or(0);
                let mut req = ifreq(name).map_err(err("name"))?;
                req.ifr_ifru.ifru_netmask = sockaddr_in(mask.to_be_bytes());
                ctl.ioctl(libc::SIOCSIFNETMASK, &mut req)
                    .map_err(err("setting IPv4 netmask"))?;
            }
            IpAddr::V6(v6) => {
                add_ipv6(name, v6.octets(), a.len).map_err(err("adding IPv6 address"))?
            }
        }
    }

    let mut req = ifreq(name).map_err(err("name"))?;
    ctl.ioctl(libc::SIOCGIFFLAGS, &mut req)
        .map_err(err("reading flags"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    // Up, and, like the kernel's WireGuard devices, not multicast: otherwise the kernel sends
    // MLD reports into the tunnel that no peer's allowed IPs route.
    req.ifr_ifru.ifru_flags = (flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short)
        & !(libc::IFF_MULTICAST as libc::c_short);
    ctl.ioctl(libc::SIOCSIFFLAGS, &mut req)
        .map_err(err("bringing the device up"))?;
    Ok(())
}

fn ifindex(name: &str) -> io::Result<libc::c_int> {
    let ctl = CtlSocket::new(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    ctl.ioctl(libc::SIOCGIFINDEX, &mut req)?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

fn add_ipv6(name: &str, addr: [u8; 16], prefix_len: u8) -> io::Result<()> {
    let ctl = CtlSocket::new(libc::AF_INET6)?;
    let req = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr { s6_addr: addr },
        ifr6_prefixlen: u32::from(prefix_len),
        ifr6_ifindex: ifindex(name)?,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket takes a `struct in6_ifreq`, which `req` is.
    check(unsafe {
        libc::ioctl(
            ctl.0.as_raw_fd(),
            libc::SIOCSIFADDR as _,
            &req as *const libc::in6_ifreq,
        )
    })
}
