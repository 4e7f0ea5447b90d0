//! xdp mode: the XDP program on the outer NIC plus one AF_XDP socket per worker and receive
//! queue, set up before any worker starts and torn down (program detached, frames counted)
//! when the gateway stops.
//!
//! ```text
//!  outer NIC rx queue q ──> XDP program (ebpf/) ──WireGuard UDP to us──> XSKMAP[q] ──> AF_XDP
//!        │                        │                                     socket q (UMEM q)
//!        │                        └─ everything else: XDP_PASS ─> kernel      │ rx/tx rings
//!        │                           (ARP, SSH, other UDP; queues with        v
//!        │                            no socket -> sluice's UDP socket)  worker q (core q)
//!        │                                                                    │ decrypt, route
//!        └──────────────<── frames built by the worker (tx ring) <────────────┘ TUN / inner
//! ```
//!
//! Appliance mode (`dataplane.inner`): the inner program (`sluice_xdp_inner`) on the inside
//! NIC steers packets to a user's tunnel prefix (every peer's AllowedIPs, kept in step with
//! the peer table) into one AF_XDP socket per worker on that NIC ([`super::xsk_inner`]).
//!
//! Queues beyond the worker count keep no socket: their WireGuard packets pass to the kernel
//! and the workers' UDP sockets serve them. The set of local addresses the program accepts is
//! re-read from the interface every second, so an address (a VIP) added or removed at run
//! time is followed.

use super::netdev;
use super::peers::PeerTable;
use super::udp::UdpSocket;
use super::xsk::{FrameReport, Neighbours, XskError, XskMode, XskOuter, KERNEL_DROP_REASONS};
use super::xsk_inner::{NextHops, XskInner};
use crate::log;
use crate::xdp::{AttachMode, XdpCounters, XdpError, XdpInnerCounters, XdpProgram};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error(transparent)]
    Xsk(#[from] XskError),
    #[error("reading interface {ifname}: {err}")]
    Interface { ifname: String, err: std::io::Error },
}

/// The running fast path of one outer interface.
pub struct FastPath {
    pub ifname: String,
    pub attach: AttachMode,
    pub sockets: Vec<Arc<XskOuter>>,
    pub neighbours: Arc<Neighbours>,
    /// Queues of the interface (those past `sockets.len()` are served by the kernel socket).
    pub queues: u32,
    /// Appliance mode's inner NIC, if configured.
    pub inner: Option<InnerSide>,
    program: Mutex<XdpProgram>,
    addrs: Mutex<Vec<IpAddr>>,
    /// The peer table the tunnel prefixes were last taken from.
    prefixes_from: Mutex<Option<Arc<PeerTable>>>,
}

/// What appliance mode asks of [`FastPath::start`].
#[derive(Clone, Debug)]
pub struct InnerConfig<'a> {
    pub ifname: &'a str,
    pub next_hops: &'a [IpAddr],
}

/// Appliance mode's inner NIC: its program attachment and one AF_XDP socket per worker.
#[derive(Debug)]
pub struct InnerSide {
    pub ifname: String,
    pub attach: AttachMode,
    pub sockets: Vec<Arc<XskInner>>,
    pub queues: u32,
    pub mac: [u8; 6],
    pub ifindex: u32,
    pub next_hops: NextHops,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("ifname", &self.ifname)
            .field("attach", &self.attach)
            .field("sockets", &self.sockets.len())
            .finish_non_exhaustive()
    }
}

impl FastPath {
    /// Load the program, open one AF_XDP socket per worker (at most one per receive queue),
    /// register them, then attach. Any failure undoes everything done so far (the values are
    /// dropped: sockets closed, program detached and unloaded).
    pub fn start(
        ifname: &str,
        port: u16,
        udp: &[Arc<UdpSocket>],
        inner: Option<InnerConfig<'_>>,
    ) -> Result<FastPath, FastPathError> {
        let iface_err = |err| FastPathError::Interface {
            ifname: ifname.to_string(),
            err,
        };
        let queues = netdev::rx_queues(ifname).map_err(iface_err)?;
        let addrs = local_addresses(ifname).map_err(iface_err)?;
        let mut program = XdpProgram::load()?;
        program.set_ports(&[port])?;
        program.set_local_addrs(&addrs)?;
        let neighbours = Arc::new(Neighbours::default());
        let n = (udp.len() as u32).min(queues);
        let mut sockets = Vec::with_capacity(n as usize);
        for q in 0..n {
            let s = XskOuter::open(ifname, q, udp[q as usize].clone(), neighbours.clone())?;
            program.register_xsk(q, s.fd())?;
            sockets.push(Arc::new(s));
        }
        let attach = program.attach(ifname)?;
        let inner = match inner {
            None => None,
            Some(ic) => {
                let ierr = |err| FastPathError::Interface {
                    ifname: ic.ifname.to_string(),
                    err,
                };
                let iq = netdev::rx_queues(ic.ifname).map_err(ierr)?;
                let mac = netdev::mac_address(ic.ifname).map_err(ierr)?;
                let ifindex = netdev::index(ic.ifname).map_err(ierr)?;
                let n = (udp.len() as u32).min(iq);
                let mut isocks = Vec::with_capacity(n as usize);
                for q in 0..n {
                    let s = XskInner::open(ic.ifname, q)?;
                    program.register_inner_xsk(q, s.fd())?;
                    isocks.push(Arc::new(s));
                }
                let iattach = program.attach_inner(ic.ifname)?;
                Some(InnerSide {
                    ifname: ic.ifname.to_string(),
                    attach: iattach,
                    sockets: isocks,
                    queues: iq,
                    mac,
                    ifindex,
                    next_hops: NextHops::from_list(ic.next_hops),
                })
            }
        };
        Ok(FastPath {
            ifname: ifname.to_string(),
            attach,
            sockets,
            neighbours,
            queues,
            inner,
            program: Mutex::new(program),
            addrs: Mutex::new(addrs),
            prefixes_from: Mutex::new(None),
        })
    }

    /// Appliance mode: keep the inner program's tunnel prefixes equal to every peer's
    /// AllowedIPs. Cheap when the peer table has not changed since the last call (a new
    /// table is a new snapshot: wg set, syncconf, SIGHUP reload).
    pub fn sync_prefixes(&self, table: &Arc<PeerTable>) {
        if self.inner.is_none() {
            return;
        }
        let mut from = super::shared::lock(&self.prefixes_from);
        if from.as_ref().is_some_and(|t| Arc::ptr_eq(t, table)) {
            return;
        }
        let mut prefixes: Vec<(IpAddr, u8)> = table
            .allowed_ips_by_peer()
            .into_values()
            .flatten()
            .collect();
        prefixes.sort();
        prefixes.dedup();
        match super::shared::lock(&self.program).set_tunnel_prefixes(&prefixes) {
            Ok(()) => {
                log::info(&format!(
                    "xdp inner: {} tunnel prefixes steered to AF_XDP",
                    prefixes.len()
                ));
                *from = Some(table.clone());
            }
            Err(e) => log::warn(&format!("xdp inner: updating tunnel prefixes: {e}")),
        }
    }

    pub fn inner_counters(&self) -> Option<XdpInnerCounters> {
        self.inner.as_ref()?;
        super::shared::lock(&self.program).inner_counters().ok()
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let modes: Vec<&str> = self.sockets.iter().map(|s| s.mode.label()).collect();
        format!(
            "xdp on {} ({} mode), AF_XDP sockets on queues 0..{} ({}), {} of {} queues served by the kernel socket, local addresses {:?}",
            self.ifname,
            self.attach.as_str(),
            self.sockets.len(),
            modes.first().copied().unwrap_or("none"),
            self.queues.saturating_sub(self.sockets.len() as u32),
            self.queues,
            *super::shared::lock(&self.addrs)
        ) + &self.inner.as_ref().map_or(String::new(), |i| {
            format!(
                "; appliance mode: inner {} ({} mode), AF_XDP sockets on queues 0..{} ({}), next hops {:?}",
                i.ifname,
                i.attach.as_str(),
                i.sockets.len(),
                i.sockets.first().map_or("none", |s| s.mode.label()),
                i.next_hops
            )
        })
    }

    /// Follow address changes on the interface (VIPs coming and going).
    pub fn refresh_addrs(&self) {
        self.refresh_addrs_hiding(&[]);
    }

    /// [`FastPath::refresh_addrs`], leaving `hidden` out of the map: an HA VIP while this
    /// gateway is not its VRRP master.
    pub fn refresh_addrs_hiding(&self, hidden: &[std::net::IpAddr]) {
        let Ok(mut now) = local_addresses(&self.ifname) else {
            return;
        };
        now.retain(|a| !hidden.contains(a));
        let mut addrs = super::shared::lock(&self.addrs);
        if *addrs == now {
            return;
        }
        match super::shared::lock(&self.program).set_local_addrs(&now) {
            Ok(()) => {
                log::info(&format!(
                    "xdp local addresses on {} now {:?}",
                    self.ifname, now
                ));
                *addrs = now;
            }
            Err(e) => log::warn(&format!("xdp: updating local addresses: {e}")),
        }
    }

    pub fn counters(&self) -> Option<XdpCounters> {
        super::shared::lock(&self.program).counters().ok()
    }

    /// The program's counters as metric samples: (verdict, reason, count).
    pub fn verdicts(&self) -> Vec<(String, String, u64)> {
        self.counters().map_or_else(Vec::new, |c| {
            c.iter()
                .map(|(k, n)| (k.verdict().as_str().to_string(), k.reason().to_string(), n))
                .collect()
        })
    }

    /// Each socket's counters for metrics.
    pub fn xsk_samples(&self) -> Vec<crate::metrics::XskSample> {
        self.sockets
            .iter()
            .map(|s| crate::metrics::XskSample {
                queue: s.queue,
                rx: s.stats.rx_frames.load(Ordering::Relaxed),
                tx: s.stats.tx_frames.load(Ordering::Relaxed),
                rx_kernel: s.stats.rx_fallback.load(Ordering::Relaxed),
                tx_kernel: s.stats.tx_fallback.load(Ordering::Relaxed),
                lost: s.frame_report().lost as u64,
                kernel_drops: s.kernel_drops(),
            })
            .collect()
    }

    /// Appliance mode: the inner program's counters as metric samples.
    pub fn inner_verdicts(&self) -> Vec<(String, String, u64)> {
        self.inner_counters().map_or_else(Vec::new, |c| {
            c.iter()
                .map(|(k, n)| (k.verdict().as_str().to_string(), k.reason().to_string(), n))
                .collect()
        })
    }

    /// Appliance mode: each inner socket's counters for metrics (`*_kernel`: through the TUN).
    pub fn inner_xsk_samples(&self) -> Vec<crate::metrics::XskSample> {
        self.inner
            .iter()
            .flat_map(|i| &i.sockets)
            .map(|s| crate::metrics::XskSample {
                queue: s.queue,
                rx: s.stats.rx_frames.load(Ordering::Relaxed),
                tx: s.stats.tx_frames.load(Ordering::Relaxed),
                rx_kernel: s.stats.rx_fallback.load(Ordering::Relaxed),
                tx_kernel: s.stats.tx_fallback.load(Ordering::Relaxed),
                lost: s.frame_report().lost as u64,
                kernel_drops: s.kernel_drops(),
            })
            .collect()
    }

    pub fn frame_reports(&self) -> Vec<FrameReport> {
        self.sockets.iter().map(|s| s.frame_report()).collect()
    }

    /// The status-file section.
    pub fn status(&self) -> Value {
        let counters = self
            .counters()
            .map(|c| name_counts(c.iter().map(|(k, n)| (k.name(), n))))
            .unwrap_or_default();
        let sockets: Vec<Value> = self
            .sockets
            .iter()
            .map(|s| {
                socket_status(
                    s.queue,
                    s.mode,
                    &s.frame_report(),
                    s.kernel_drops(),
                    &s.stats.counts(),
                )
            })
            .collect();
        let inner = self.inner.as_ref().map(|i| {
            let counters = self
                .inner_counters()
                .map(|c| name_counts(c.iter().map(|(k, n)| (k.name(), n))))
                .unwrap_or_default();
            let sockets: Vec<Value> = i
                .sockets
                .iter()
                .map(|s| {
                    socket_status(
                        s.queue,
                        s.mode,
                        &s.frame_report(),
                        s.kernel_drops(),
                        &s.stats.counts(),
                    )
                })
                .collect();
            json!({
                "interface": i.ifname,
                "attach": i.attach.as_str(),
                "queues": i.queues,
                "counters": counters,
                "sockets": sockets,
            })
        });
        json!({
            "interface": self.ifname,
            "attach": self.attach.as_str(),
            "queues": self.queues,
            "neighbours": self.neighbours.len(),
            "counters": counters,
            "sockets": sockets,
            "inner": inner,
        })
    }

    /// Log every socket's frame accounting; false if any frame is unaccounted for.
    pub fn report_frames(&self) -> bool {
        let mut ok = true;
        for (s, r) in self.sockets.iter().zip(self.frame_reports()) {
            let line = format!(
                "xsk queue={} mode={} frames total={} free={} in_fill={} in_tx={} lost={} violations={}",
                s.queue,
                s.mode.label(),
                r.total,
                r.free,
                r.in_fill,
                r.in_tx,
                r.lost,
                r.violations
            );
            if r.lost == 0 && r.violations == 0 {
                log::info(&line);
            } else {
                ok = false;
                log::error(&line);
            }
        }
        for s in self.inner.iter().flat_map(|i| &i.sockets) {
            let r = s.frame_report();
            let line = format!(
                "xsk inner queue={} mode={} frames total={} free={} in_fill={} in_tx={} lost={} violations={}",
                s.queue,
                s.mode.label(),
                r.total,
                r.free,
                r.in_fill,
                r.in_tx,
                r.lost,
                r.violations
            );
            if r.lost == 0 && r.violations == 0 {
                log::info(&line);
            } else {
                ok = false;
                log::error(&line);
            }
        }
        ok
    }

    /// Is any socket in zero-copy mode?
    pub fn zero_copy(&self) -> bool {
        self.sockets.iter().any(|s| s.mode == XskMode::ZeroCopy)
    }
}

/// Named counts as a JSON object.
fn name_counts<'a>(counts: impl Iterator<Item = (&'a str, u64)>) -> serde_json::Map<String, Value> {
    counts.map(|(k, n)| (k.to_string(), json!(n))).collect()
}

/// One AF_XDP socket (outer or inner) in the status file: its queue, mode, frame ledger, the
/// kernel's drops, and its own counters.
/// The addresses the XDP program takes WireGuard for sluice at: every address of the outer
/// interface, and every global address elsewhere on the host (anycast addresses live on `lo`;
/// the sockets, bound to the wildcard, would serve them too). Not 127/8, ::1 or another
/// interface's link-local addresses. At most the map's size, the interface's own first.
fn local_addresses(ifname: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
    use std::net::IpAddr;
    let mut addrs = netdev::addresses(ifname)?;
    let elsewhere = netdev::host_addresses()?.into_iter().filter(|a| match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified(),
    });
    for a in elsewhere {
        if !addrs.contains(&a) && addrs.len() < crate::xdp::shared::MAX_ADDRS as usize {
            addrs.push(a);
        }
    }
    addrs.sort();
    Ok(addrs)
}

fn socket_status(
    queue: u32,
    mode: XskMode,
    r: &FrameReport,
    kernel_drops: [u64; 5],
    counts: &[(&str, u64)],
) -> Value {
    let mut v = name_counts(counts.iter().copied());
    v.insert("queue".into(), json!(queue));
    v.insert("mode".into(), json!(mode.label()));
    v.insert(
        "kernel_drops".into(),
        Value::Object(name_counts(
            KERNEL_DROP_REASONS.iter().copied().zip(kernel_drops),
        )),
    );
    v.insert(
        "frames".into(),
        json!({"total": r.total, "free": r.free, "in_fill": r.in_fill,
               "in_tx": r.in_tx, "lost": r.lost, "violations": r.violations}),
    );
    Value::Object(v)
}
