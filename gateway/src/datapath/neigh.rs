//! The kernel's neighbour table (ARP and NDP), read over rtnetlink: appliance mode takes the
//! inner next hop's MAC from it. Each worker keeps its own [`NeighbourCache`], refreshed by a
//! full dump of the interface's entries at most every [`TTL`], and sooner (at most every
//! [`MISS_RETRY`]) while an address it is asked for is missing or unusable.
//!
//! Only entries the kernel can send to count: reachable, stale, delay, probe, permanent or
//! noarp. Incomplete and failed entries are "unresolved": the caller hands such packets to
//! the kernel, which resolves the neighbour and forwards them.

use super::frame::Mac;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A cached table is dumped again after this long.
pub const TTL: Duration = Duration::from_secs(1);
/// While an asked-for address is missing, dump again at most this often.
pub const MISS_RETRY: Duration = Duration::from_millis(100);

// rtnetlink wire constants (linux/rtnetlink.h, linux/neighbour.h).
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
const NDMSG_LEN: usize = 12;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;
const NUD_NONE: u16 = 0x00;

/// One neighbour entry: its MAC, or `None` when the kernel has not resolved it (incomplete,
/// failed).
pub type Entry = Option<Mac>;

/// Dump the kernel's neighbour entries of interface `ifindex` (both families).
pub fn dump(sock: &OwnedFd, ifindex: u32, seq: u32) -> io::Result<HashMap<IpAddr, Entry>> {
    let fd = sock.as_raw_fd();
    let mut req = [0u8; NLMSG_HDRLEN + NDMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + NDMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // ndmsg: family AF_UNSPEC (both), ifindex (the kernel may or may not filter on it).
    req[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // SAFETY: `req` is a valid buffer of `req.len()` bytes for the duration of the call.
    let n = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            let mseq = u32::from_ne_bytes([msgs[8], msgs[9], msgs[10], msgs[11]]);
            if len < NLMSG_HDRLEN || len > msgs.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            let body = &msgs[NLMSG_HDRLEN..len];
            msgs = &msgs[align4(len).min(msgs.len())..];
            if mseq != seq {
                continue;
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                RTM_NEWNEIGH => {
                    if let Some((ip, entry)) = parse_entry(body, ifindex) {
                        out.insert(ip, entry);
                    }
                }
                _ => {}
            }
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One RTM_NEWNEIGH body (ndmsg + attributes) of interface `ifindex`.
fn parse_entry(body: &[u8], ifindex: u32) -> Option<(IpAddr, Entry)> {
    let nd = body.get(..NDMSG_LEN)?;
    let family = i32::from(nd[0]);
    let index = i32::from_ne_bytes([nd[4], nd[5], nd[6], nd[7]]);
    let state = u16::from_ne_bytes([nd[8], nd[9]]);
    if index != ifindex as i32 {
        return None;
    }
    let mut ip = None;
    let mut lladdr = None;
    let mut attrs = &body[NDMSG_LEN..];
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            break;
        }
        let data = &attrs[4..len];
        match (kind, family, data.len()) {
            (NDA_DST, libc::AF_INET, 4) => {
                ip = Some(IpAddr::V4(Ipv4Addr::new(
                    data[0], data[1], data[2], data[3],
                )))
            }
            (NDA_DST, libc::AF_INET6, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(data);
                ip = Some(IpAddr::V6(Ipv6Addr::from(a)));
            }
            (NDA_LLADDR, _, 6) => {
                let mut m = [0u8; 6];
                m.copy_from_slice(data);
                lladdr = Some(m);
            }
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    let usable = state & (NUD_INCOMPLETE | NUD_FAILED) == 0 && state != NUD_NONE;
    Some((ip?, lladdr.filter(|_| usable)))
}

/// A netlink route socket for [`dump`].
pub fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the returned OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One worker's view of an interface's neighbour table.
#[derive(Debug)]
pub struct NeighbourCache {
    ifindex: u32,
    sock: Option<OwnedFd>,
    seq: u32,
    table: HashMap<IpAddr, Entry>,
    dumped: Option<Instant>,
}

impl NeighbourCache {
    pub fn new(ifindex: u32) -> Self {
        NeighbourCache {
            ifindex,
            sock: None,
            seq: 0,
            table: HashMap::new(),
            dumped: None,
        }
    }

    /// The MAC of `ip` if the kernel has it resolved, refreshing the table when it is older
    /// than [`TTL`] (or than [`MISS_RETRY`] on a miss).
    pub fn lookup(&mut self, ip: IpAddr, now: Instant) -> Option<Mac> {
        let age = self.dumped.map(|t| now.saturating_duration_since(t));
        let hit = self.table.get(&ip).copied().flatten();
        let stale = match (age, hit) {
            (None, _) => true,
            (Some(a), Some(_)) => a >= TTL,
            (Some(a), None) => a >= MISS_RETRY,
        };
        if stale {
            self.refresh(now);
            return self.table.get(&ip).copied().flatten();
        }
        hit
    }

    fn refresh(&mut self, now: Instant) {
        self.dumped = Some(now);
        if self.sock.is_none() {
            self.sock = socket().ok();
        }
        let Some(sock) = &self.sock else {
            return;
        };
        self.seq = self.seq.wrapping_add(1);
        match dump(sock, self.ifindex, self.seq) {
            Ok(t) => self.table = t,
            // A broken socket is reopened on the next refresh.
            Err(_) => self.sock = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut a = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        a.resize(align4(a.len()), 0);
        a
    }

    fn body(family: u8, ifindex: i32, state: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![family, 0, 0, 0];
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend_from_slice(&state.to_ne_bytes());
        b.extend_from_slice(&[0, 0]);
        for a in attrs {
            b.extend_from_slice(a);
        }
        b
    }

    #[test]
    fn entries_parse_with_their_state() {
        let mac = [2, 0, 0, 0, 0, 9];
        let v4 = body(
            libc::AF_INET as u8,
            3,
            0x02,
            &[attr(NDA_DST, &[10, 88, 0, 2]), attr(NDA_LLADDR, &mac)],
        );
        assert_eq!(
            parse_entry(&v4, 3),
            Some((IpAddr::from([10, 88, 0, 2]), Some(mac)))
        );
        // Another interface's entry is not ours.
        assert_eq!(parse_entry(&v4, 4), None);
        let six: Ipv6Addr = "fd88::2".parse().unwrap();
        let stale = body(
            libc::AF_INET6 as u8,
            3,
            0x04,
            &[attr(NDA_DST, &six.octets()), attr(NDA_LLADDR, &mac)],
        );
        assert_eq!(parse_entry(&stale, 3), Some((IpAddr::V6(six), Some(mac))));
        // Failed and incomplete entries are known but unresolved.
        for state in [NUD_FAILED, NUD_INCOMPLETE] {
            let b = body(
                libc::AF_INET as u8,
                3,
                state,
                &[attr(NDA_DST, &[10, 88, 0, 3]), attr(NDA_LLADDR, &mac)],
            );
            assert_eq!(
                parse_entry(&b, 3),
                Some((IpAddr::from([10, 88, 0, 3]), None))
            );
        }
        let no_dst = body(libc::AF_INET as u8, 3, 0x02, &[attr(NDA_LLADDR, &mac)]);
        assert_eq!(parse_entry(&no_dst, 3), None);
    }

    #[test]
    fn the_loopback_dump_answers() {
        // A real dump of the kernel's table (lo has no neighbours, but the exchange must
        // complete with DONE, not an error).
        let s = socket().unwrap();
        dump(&s, 1, 7).unwrap();
        let mut c = NeighbourCache::new(1);
        assert_eq!(c.lookup(IpAddr::from([127, 0, 0, 9]), Instant::now()), None);
    }
}
