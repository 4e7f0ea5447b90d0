//! The generator's AF_XDP transmitter: the users' pre-encrypted datagrams go out as complete
//! Ethernet/IPv4/UDP frames through an AF_XDP socket on the generator's end of the link
//! (`to-gw`), skipping the kernel's UDP and IP output path that `sendmmsg` takes.
//!
//! ```text
//!  pool (frames built before the clock) --memcpy--> free UMEM frame --> tx ring --sendto-->
//!    veth to-gw (copy mode: the kernel copies each frame into an skb) --> gateway's outer
//!  completion ring --> UMEM frame back on the free list, and counted as offered
//! ```
//!
//! - **TX only**: no XDP program is attached to `to-gw` (libxdp's default program load is
//!   inhibited, as in the gateway), so everything the gateway sends back (handshake responses,
//!   cookie replies, keepalives, inside -> users data) still reaches the users' UDP socket.
//! - **Frames**: dst MAC the gateway's `outer`, src MAC `to-gw`'s, source address the user's
//!   198.18.x.y, source port [`USER_PORT`], the IPv4 header checksum and the UDP checksum
//!   computed ([`write_headers`]), all before the clock: the pool keeps [`FRAME_HEADROOM`]
//!   bytes in front of every datagram for them.
//! - **Counting**: a datagram counts as offered when the completion ring gives its frame back
//!   (the kernel took it), as `sendmmsg` counts what the kernel took; descriptors still in the
//!   tx ring when the run ends are kicked until they complete before the count is taken.
//! - **Copy mode** (veth has no zero-copy): one `sendto` kick transmits at most 32
//!   descriptors, so the loop kicks once per 32 it produced.
//!
//! The rest of this comparison's `unsafe` is in `io.rs`; this module's is the UMEM and rings.

use super::io::{self, BATCH};
use super::latency::ProbeLog;
use super::packet::{IPV4_HEADER, UDP_HEADER};
use super::run::{RunSpec, Sent};
use super::topo::USER_PORT;
use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

pub const ETH_HEADER: usize = 14;
/// Bytes in front of each datagram of a pool for its frame headers.
pub const FRAME_HEADROOM: usize = ETH_HEADER + IPV4_HEADER + UDP_HEADER;
const ETH_P_IPV4: u16 = 0x0800;
const PROTO_UDP: u8 = 17;
const TTL: u8 = 64;
/// UMEM frames (and tx/completion ring entries): 2048 frames of 2048 B, 4 MiB.
const FRAMES: u32 = 2048;
const FRAME_SIZE: u32 = 2048;
/// In copy mode one `sendto` kick transmits at most this many descriptors.
const COPY_MODE_TX_PER_KICK: usize = 32;
/// How long the end of a run waits for the descriptors still in the tx ring to complete.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

pub type Mac = [u8; 6];

/// How to choose the generator's transmit path (`--tx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxKind {
    /// AF_XDP on the generator's end of the link.
    Xdp,
    /// `sendmmsg` on the users' UDP socket.
    Socket,
}

impl TxKind {
    pub fn label(self) -> &'static str {
        match self {
            TxKind::Xdp => "xdp",
            TxKind::Socket => "socket",
        }
    }
}

impl std::str::FromStr for TxKind {
    type Err = String;
    fn from_str(s: &str) -> Result<TxKind, String> {
        match s {
            "xdp" | "af_xdp" | "af-xdp" => Ok(TxKind::Xdp),
            "socket" | "sendmmsg" => Ok(TxKind::Socket),
            other => Err(format!("tx '{other}': xdp or socket")),
        }
    }
}

/// The link-layer and IP addresses every frame of a run carries apart from the user's own
/// source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameAddrs {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    /// The gateway's listening address and port.
    pub dst: SocketAddrV4,
    pub src_port: u16,
}

/// One's-complement sum of `data` as big-endian 16-bit words (an odd last byte padded with
/// zero), not folded.
fn sum16(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut s: u64 = chunks
        .by_ref()
        .map(|c| u64::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Write the Ethernet, IPv4 and UDP headers into `frame[..FRAME_HEADROOM]` for the datagram
/// already in `frame[FRAME_HEADROOM..]`, from `src`, with both checksums. Returns false (and
/// writes nothing) if the frame is too short or too long for IPv4.
pub fn write_headers(frame: &mut [u8], a: &FrameAddrs, src: Ipv4Addr) -> bool {
    let Some(payload) = frame.len().checked_sub(FRAME_HEADROOM) else {
        return false;
    };
    let udp_len = UDP_HEADER + payload;
    let ip_len = IPV4_HEADER + udp_len;
    let (Ok(udp_len), Ok(ip_len)) = (u16::try_from(udp_len), u16::try_from(ip_len)) else {
        return false;
    };
    let (eth, rest) = frame.split_at_mut(ETH_HEADER);
    eth[0..6].copy_from_slice(&a.dst_mac);
    eth[6..12].copy_from_slice(&a.src_mac);
    eth[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    let (ip, udp) = rest.split_at_mut(IPV4_HEADER);
    ip.fill(0);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = TTL;
    ip[9] = PROTO_UDP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&a.dst.ip().octets());
    let ip_sum = !fold(sum16(ip));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    udp[0..2].copy_from_slice(&a.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&a.dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].fill(0);
    // The pseudo-header: source, destination, protocol, UDP length.
    let pseudo = sum16(&src.octets())
        + sum16(&a.dst.ip().octets())
        + u64::from(PROTO_UDP)
        + u64::from(udp_len);
    let udp_sum = match !fold(pseudo + sum16(udp)) {
        // A computed zero is sent as all ones (zero means "no checksum").
        0 => 0xffff,
        s => s,
    };
    udp[6..8].copy_from_slice(&udp_sum.to_be_bytes());
    true
}

/// A MAC address in `aa:bb:cc:dd:ee:ff` form.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// An AF_XDP socket on one queue of the generator's link, for transmitting only.
pub struct XskTx {
    umem: Umem,
    tx: TxQueue,
    comp: CompQueue,
    // Kept open with the socket: nothing is put in the fill ring and no program redirects
    // to the rx ring.
    _rx: RxQueue,
    _fill: FillQueue,
    free: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    /// Descriptors on the tx ring not yet completed.
    in_flight: usize,
    pub ifname: String,
    pub queue: u32,
    /// Where every frame goes (the run's constants).
    pub addrs: FrameAddrs,
}

impl std::fmt::Debug for XskTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskTx")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl XskTx {
    /// A copy-mode AF_XDP socket on `ifname` queue `queue` in the calling thread's network
    /// namespace, with libxdp's program loading inhibited (so nothing is attached to the
    /// link and its received traffic keeps going to the kernel).
    pub fn open(ifname: &str, queue: u32, addrs: FrameAddrs) -> Result<XskTx, String> {
        let e = |what: &str, d: &dyn std::fmt::Display| {
            format!("AF_XDP transmit on {ifname} queue {queue}: {what}: {d}")
        };
        let iface = Interface::new(CString::new(ifname).map_err(|x| e("name", &x))?);
        let ring = QueueSize::new(FRAMES).map_err(|x| e("ring size", &x))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|x| e("frame size", &x))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|x| e("UMEM config", &x))?;
        let frames = NonZeroU32::new(FRAMES).ok_or_else(|| e("frames", &"none"))?;
        let (umem, descs) = Umem::new(umem_cfg, frames, false).map_err(|x| e("UMEM", &x))?;
        let cfg = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(64).map_err(|x| e("rx ring size", &x))?)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        // SAFETY: the UMEM is new and used by this socket alone, so (ifname, queue) is not
        // bound through it already; program loading is inhibited.
        let (tx, rx, rings) = unsafe { xsk_rs::Socket::new(cfg, &umem, &iface, queue) }
            .map_err(|x| e("socket", &x))?;
        let (fill, comp) = rings.ok_or_else(|| e("rings", &"no fill/completion rings"))?;
        Ok(XskTx {
            umem,
            tx,
            comp,
            _rx: rx,
            _fill: fill,
            free: descs,
            scratch: vec![FrameDesc::default(); FRAMES as usize],
            in_flight: 0,
            ifname: ifname.to_string(),
            queue,
            addrs,
        })
    }

    /// Take completed frames back; returns how many completed.
    fn reclaim(&mut self) -> usize {
        // SAFETY: the completion ring only returns frames of this UMEM that we put on the tx
        // ring; the descriptors are written into our scratch space.
        let n = unsafe { self.comp.consume(&mut self.scratch) };
        self.free.extend_from_slice(&self.scratch[..n]);
        self.in_flight = self.in_flight.saturating_sub(n);
        n
    }

    /// Copy up to `want` frames (`frame(next)`, ...) into free UMEM frames and put them on
    /// the tx ring, then kick. Returns how many went on the ring.
    fn produce<'a>(
        &mut self,
        next: usize,
        want: usize,
        frame: &impl Fn(usize) -> &'a [u8],
    ) -> usize {
        let k = want.min(self.free.len());
        if k == 0 {
            return 0;
        }
        let start = self.free.len() - k;
        let mut written = 0;
        for d in &mut self.free[start..] {
            let bytes = frame(next + written);
            // SAFETY: `d` is on our free list: a frame of this UMEM that neither the kernel
            // (it came back through the completion ring, or was never given) nor other code
            // uses.
            let mut data = unsafe { self.umem.data_mut(d) };
            let mut cur = data.cursor();
            cur.set_pos(0);
            if std::io::Write::write_all(&mut cur, bytes).is_err() {
                break;
            }
            written += 1;
        }
        // SAFETY: the descriptors are frames of this UMEM just written; the kernel owns them
        // until the completion ring returns them and we don't touch them meanwhile.
        let n = unsafe { self.tx.produce(&self.free[start..start + written]) };
        self.free.drain(start..start + n);
        self.in_flight += n;
        for _ in 0..n.div_ceil(COPY_MODE_TX_PER_KICK) {
            self.kick();
        }
        n
    }

    fn kick(&self) {
        // Kicks that find the device busy are retried by the next one; a send that the
        // kernel refuses shows as frames never completed.
        let _ = self.tx.wakeup();
    }

    /// Kick until every descriptor on the tx ring completed (at most [`DRAIN_LIMIT`]);
    /// returns how many completed. Before a run, this takes back a previous run's leftovers.
    fn drain(&mut self) -> usize {
        let start = Instant::now();
        let mut done = self.reclaim();
        while self.in_flight > 0 && start.elapsed() < DRAIN_LIMIT {
            self.kick();
            let n = self.reclaim();
            if n == 0 {
                std::thread::yield_now();
            }
            done += n;
        }
        done
    }

    /// Send `len` frames (`frame(i)` is frame i, headers included) for at most
    /// `spec.seconds`, paced at `spec.rate` or keeping the tx ring full; `probes` learns when
    /// each went. Counts what completed.
    pub(super) fn send_paced<'a>(
        &mut self,
        len: usize,
        spec: &RunSpec,
        probes: &mut ProbeLog,
        frame: impl Fn(usize) -> &'a [u8],
    ) -> Result<Sent, String> {
        self.drain();
        if self.in_flight > 0 {
            return Err(format!(
                "AF_XDP transmit on {}: {} frames of an earlier run never completed",
                self.ifname, self.in_flight
            ));
        }
        let limit = Duration::from_secs_f64(spec.seconds);
        let cpu0 = io::thread_cpu_time();
        let start = Instant::now();
        let mut next = 0usize;
        let mut completed = 0usize;
        while next < len {
            completed += self.reclaim();
            let elapsed = start.elapsed();
            if elapsed >= limit {
                break;
            }
            let mut want = (len - next).min(BATCH);
            if let Some(r) = spec.rate {
                // Paced: never ahead of the schedule.
                let due = (elapsed.as_secs_f64() * r) as usize;
                if next >= due {
                    io::wait_until_due(next, r, elapsed);
                    continue;
                }
                want = want.min(due - next);
            }
            if self.free.is_empty() {
                // Every frame is on the ring: let the kernel work through it.
                self.kick();
                continue;
            }
            probes.sending(next as u64, (next + want) as u64, Instant::now());
            next += self.produce(next, want, &frame);
        }
        completed += self.drain();
        Ok(Sent {
            count: completed as u64,
            time: start.elapsed(),
            cpu: io::thread_cpu_time().saturating_sub(cpu0).as_secs_f64(),
        })
    }
}

/// The generator's end of the link (`to-gw` in the generator namespace) and the gateway's
/// `outer`: the MACs of the frames, from sysfs inside each namespace.
pub fn link_addrs(topo: &super::topo::GenTopology) -> Result<FrameAddrs, String> {
    let mac_of = |ns: &sluice::testbed::Netns, dev: &str| -> Result<Mac, String> {
        let text = ns
            .run(&["cat", &format!("/sys/class/net/{dev}/address")])
            .map_err(|e| format!("reading {dev}'s MAC: {e}"))?;
        parse_mac(&text).ok_or_else(|| format!("{dev}'s MAC '{}' unreadable", text.trim()))
    };
    Ok(FrameAddrs {
        src_mac: mac_of(&topo.gen_ns, super::topo::PEER_DEV)?,
        dst_mac: mac_of(&topo.gw_ns, super::topo::OUTER_DEV)?,
        dst: SocketAddrV4::new(super::topo::GW_OUTER_V4, super::topo::LISTEN_PORT),
        src_port: USER_PORT,
    })
}

/// Open the generator's AF_XDP transmitter on `to-gw` queue 0 in the generator namespace.
pub fn open_for(topo: &super::topo::GenTopology) -> Result<XskTx, String> {
    let addrs = link_addrs(topo)?;
    topo.gen_ns
        .enter(|| XskTx::open(super::topo::PEER_DEV, 0, addrs))
        .map_err(|e| e.to_string())?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addrs() -> FrameAddrs {
        FrameAddrs {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            dst: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 51820),
            src_port: 40000,
        }
    }

    /// The Internet checksum the plain way (RFC 1071): add 16-bit words one at a time with
    /// end-around carry.
    fn rfc1071(bytes: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let hi = u32::from(bytes[i]) << 8;
            let lo = bytes.get(i + 1).map_or(0, |&b| u32::from(b));
            acc += hi | lo;
            acc = (acc & 0xffff) + (acc >> 16);
            i += 2;
        }
        !(acc as u16)
    }

    fn frame_for(payload: &[u8], src: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0xaa; FRAME_HEADROOM];
        f.extend_from_slice(payload);
        assert!(write_headers(&mut f, &addrs(), src));
        f
    }

    #[test]
    fn headers_lengths_and_checksums() {
        let src = Ipv4Addr::new(198, 18, 0, 7);
        for len in [0usize, 1, 31, 32, 95, 148, 1452, 1453] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let f = frame_for(&payload, src);
            assert_eq!(f.len(), FRAME_HEADROOM + len);
            assert_eq!(&f[0..6], &addrs().dst_mac);
            assert_eq!(&f[6..12], &addrs().src_mac);
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            let ip = &f[ETH_HEADER..ETH_HEADER + IPV4_HEADER];
            assert_eq!(ip[0], 0x45);
            assert_eq!(
                usize::from(u16::from_be_bytes([ip[2], ip[3]])),
                IPV4_HEADER + UDP_HEADER + len
            );
            assert_eq!(ip[9], 17);
            assert_eq!(&ip[12..16], &src.octets());
            assert_eq!(&ip[16..20], &[198, 51, 100, 1]);
            // A correct header checksums to zero.
            assert_eq!(rfc1071(ip), 0, "IPv4 header checksum, payload {len}");
            let udp = &f[ETH_HEADER + IPV4_HEADER..];
            assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 40000);
            assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 51820);
            assert_eq!(
                usize::from(u16::from_be_bytes([udp[4], udp[5]])),
                UDP_HEADER + len
            );
            assert_ne!(u16::from_be_bytes([udp[6], udp[7]]), 0, "checksum present");
            // Pseudo-header + UDP header + payload checksum to zero.
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&[198, 51, 100, 1, 0, 17]);
            pseudo.extend_from_slice(&((UDP_HEADER + len) as u16).to_be_bytes());
            pseudo.extend_from_slice(udp);
            assert_eq!(rfc1071(&pseudo), 0, "UDP checksum, payload {len}");
            assert_eq!(&udp[UDP_HEADER..], &payload[..]);
        }
    }

    #[test]
    fn a_corrupted_byte_breaks_the_checksum() {
        let src = Ipv4Addr::new(198, 18, 1, 2);
        let mut f = frame_for(&[1, 2, 3, 4, 5, 6, 7, 8, 9], src);
        f[FRAME_HEADROOM + 4] ^= 0x10;
        let udp = &f[ETH_HEADER + IPV4_HEADER..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&[198, 51, 100, 1, 0, 17, 0, 17]);
        pseudo.extend_from_slice(udp);
        assert_ne!(rfc1071(&pseudo), 0);
    }

    #[test]
    fn sluice_parses_the_frames() {
        // The gateway's own frame parser (its AF_XDP receive path) reads them back.
        let src = Ipv4Addr::new(198, 18, 3, 4);
        let payload = [9u8; 148];
        let f = frame_for(&payload, src);
        let p = sluice::datapath::frame::parse_udp(&f).unwrap();
        assert_eq!(
            p.remote,
            std::net::SocketAddr::from((src, 40000)),
            "source address and port"
        );
        assert_eq!(
            p.route.local,
            std::net::SocketAddr::from(([198, 51, 100, 1], 51820))
        );
        assert_eq!(p.route.remote_mac, addrs().src_mac);
        assert_eq!(p.route.local_mac, addrs().dst_mac);
        assert_eq!(&f[p.payload], &payload[..]);
    }

    #[test]
    fn too_short_or_too_long_frames_are_refused() {
        let mut short = vec![0u8; FRAME_HEADROOM - 1];
        assert!(!write_headers(&mut short, &addrs(), Ipv4Addr::LOCALHOST));
        let mut long = vec![0u8; FRAME_HEADROOM + 65536];
        assert!(!write_headers(&mut long, &addrs(), Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:1a:ff:00:0b:c3\n"),
            Some([0x02, 0x1a, 0xff, 0x00, 0x0b, 0xc3])
        );
        assert_eq!(parse_mac("02:1a:ff:00:0b"), None);
        assert_eq!(parse_mac("02:1a:ff:00:0b:c3:01"), None);
        assert_eq!(parse_mac("zz:1a:ff:00:0b:c3"), None);
    }

    #[test]
    fn tx_kinds_parse() {
        assert_eq!("xdp".parse::<TxKind>(), Ok(TxKind::Xdp));
        assert_eq!("socket".parse::<TxKind>(), Ok(TxKind::Socket));
        assert!("tun".parse::<TxKind>().is_err());
    }
}
