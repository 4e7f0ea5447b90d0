//! What the kernel says about a network interface: its addresses and its receive queues.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4 and IPv6 addresses currently on `ifname` (VIPs a VRRP daemon added included).
pub fn addresses(ifname: &str) -> io::Result<Vec<IpAddr>> {
    list_addresses(Some(ifname))
}

/// The IPv4 and IPv6 addresses currently on any interface of the host (e.g. anycast
/// addresses on `lo`).
pub fn host_addresses() -> io::Result<Vec<IpAddr>> {
    list_addresses(None)
}

fn list_addresses(only: Option<&str>) -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if only.is_some_and(|ifname| name.to_bytes() != ifname.as_bytes()) {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose family tells its type.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        match family {
            libc::AF_INET => {
                // SAFETY: the family says this is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

/// How many receive queues `ifname` has (from sysfs).
pub fn rx_queues(ifname: &str) -> io::Result<u32> {
    let dir = format!("/sys/class/net/{ifname}/queues");
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        if e?.file_name().to_string_lossy().starts_with("rx-") {
            n += 1;
        }
    }
    Ok(n)
}

/// The interface's hardware (MAC) address (from sysfs).
pub fn mac_address(ifname: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("MAC address {text:?}"));
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// The interface's index (from sysfs).
pub fn index(ifname: &str) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "ifindex"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_its_addresses_and_a_queue() {
        let a = super::addresses("lo").unwrap();
        assert!(a.contains(&"127.0.0.1".parse().unwrap()), "{a:?}");
        assert!(super::rx_queues("lo").unwrap() >= 1);
        assert!(super::addresses("no-such-if0").unwrap().is_empty());
        assert!(super::rx_queues("no-such-if0").is_err());
        assert_eq!(super::mac_address("lo").unwrap(), [0; 6]);
        assert_eq!(super::index("lo").unwrap(), 1);
        assert!(super::mac_address("no-such-if0").is_err());
    }
}
