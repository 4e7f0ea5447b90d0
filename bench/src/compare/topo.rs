//! The comparison's topology: a generator namespace, the gateway under test, a sink namespace.
//!
//! ```text
//!  generator ns                    gateway ns                          sink ns
//!  +----------------------+ veth  +----------------------------+ veth +----------------+
//!  | to-gw 198.51.100.2/24|-------| outer 198.51.100.1/24      |      |                |
//!  | (2 queues)           |       | (2 queues; sluice's XDP    |      | to-gw          |
//!  | local 198.18.0.0/15  |       |  and AF_XDP in xdp mode)   |------| 10.88.0.2/24   |
//!  |  = users' outer IPs  |       | gateway: TUN, UDP 51820,   |      | counter socket |
//!  | one UDP socket :40000|       |  10.96.0.1/12              |      |   UDP 9000     |
//!  +----------------------+       | to-sink 10.88.0.1/24       |      +----------------+
//!                                 +----------------------------+
//! ```
//!
//! - User k (0-based) sends from 198.18.0.0 + 1 + k (made local in the generator namespace by
//!   one `local` route, so one socket serves every user) and owns tunnel address
//!   10.96.0.1 + 1 + k/32 at the gateway, whose peers are exactly those (`wg addconf` for the
//!   stand-ins, the wg-quick file for sluice).
//! - Cores ([`Cores`]): the gateway process (every thread, and sluice's workers by its
//!   config) runs on its k cores, [`GATEWAY_CORE`] and up; the generator's threads and the sink
//!   on [`GENERATOR_CORE`], the generator's side keeping every core the gateway does not get.
//!   The kernel's receive work follows: RPS spreads the outer interface's receive processing
//!   over the gateway's cores and the sink interface's over the generator's; with an XDP
//!   program attached, veth runs it in NAPI, which is switched to threaded mode and its threads
//!   pinned to the gateway's cores, so sluice's XDP and AF_XDP copy costs are charged to the
//!   gateway, as on a real NIC. The outer link has `max(2, k)` queues.
//! - Everything is removed when the value drops (processes first, then namespaces and files),
//!   and by the registry's cleanup on Ctrl-C.

use sluice::testbed::gateway::{appliance_toml, Gateway, GatewayKind, GatewaySpec};
use sluice::testbed::netns::veth;
use sluice::testbed::{cmd, unique_id, KeyPair, Netns, RunDir};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

pub const USERS_OUTER_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const USERS_OUTER_NET: &str = "198.18.0.0/15";
pub const GW_TUNNEL_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const TUNNEL_NET: &str = "10.96.0.0/12";
pub const GW_OUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const GEN_OUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const GW_INNER_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const SINK_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
pub const LISTEN_PORT: u16 = 51820;
/// The port every simulated user sends from.
pub const USER_PORT: u16 = 40000;
pub const OUTER_DEV: &str = "outer";
/// The outer link's queues at least (k gateway cores: `max(OUTER_QUEUES, k)`).
pub const OUTER_QUEUES: u16 = 2;
pub const PEER_DEV: &str = "to-gw";
pub const SINK_DEV: &str = "to-sink";
/// sluice's Prometheus endpoint, on loopback in the gateway's namespace.
pub const METRICS_PORT: u16 = 9586;
/// The gateway's first core (with k cores: this one and the next k - 1 of the machine).
pub const GATEWAY_CORE: usize = 1;
pub const GENERATOR_CORE: usize = 0;

/// Who runs where in one topology: the gateway's k cores and the generator's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cores {
    /// The gateway's cores: [`GATEWAY_CORE`] and the machine's next ones, then (shared only)
    /// [`GENERATOR_CORE`].
    pub gateway: Vec<usize>,
    /// Every core the gateway does not get (the generator's threads and the sink run on
    /// [`GENERATOR_CORE`]; the sink link's RPS spreads over all of them); when shared,
    /// [`GENERATOR_CORE`] alone.
    pub generator: Vec<usize>,
    /// The gateway's cores include the generator's: exercises the k-core code path, measures
    /// nothing.
    pub shared: bool,
}

impl Cores {
    /// `k` gateway cores on a machine with the cores `machine` (ids, as the process may use
    /// them before any pinning). `allow_shared` lets `k` reach every core of the machine, the
    /// last one being the generator's.
    pub fn plan(machine: &[usize], k: usize, allow_shared: bool) -> Result<Cores, String> {
        let mut ids = machine.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if !ids.contains(&GENERATOR_CORE) {
            return Err(format!(
                "the generator's core {GENERATOR_CORE} is not one this process may use ({ids:?})"
            ));
        }
        let free: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|&c| c >= GATEWAY_CORE && c != GENERATOR_CORE)
            .collect();
        let total = ids.len();
        if k == 0 {
            return Err("the gateway needs at least one core".into());
        }
        if k > free.len() && !allow_shared {
            return Err(format!(
                "{k} gateway cores: this machine has {total} (the generator keeps one, so at                  most {}); --allow-shared-cores lets the gateway share the generator's core,                  which exercises the code path but measures nothing",
                free.len()
            ));
        }
        if k > free.len() + 1 {
            return Err(format!(
                "{k} gateway cores: this machine has {total}, even shared"
            ));
        }
        let mut gateway: Vec<usize> = free.iter().copied().take(k).collect();
        let shared = gateway.len() < k;
        if shared {
            gateway.push(GENERATOR_CORE);
        }
        let mut generator: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|c| !gateway.contains(c))
            .collect();
        if generator.is_empty() {
            generator.push(GENERATOR_CORE);
        }
        Ok(Cores {
            gateway,
            generator,
            shared,
        })
    }

    /// The gateway's core count.
    pub fn k(&self) -> usize {
        self.gateway.len()
    }

    /// The queues of the outer link (and, in appliance mode, k for the sink link).
    pub fn outer_queues(&self) -> u16 {
        OUTER_QUEUES.max(u16::try_from(self.k()).unwrap_or(u16::MAX))
    }

    /// One line for the report: where the gateway and the generator run.
    pub fn describe(&self) -> String {
        let k = self.k();
        format!(
            "gateway on {k} core{} (cpus {}){}; generator and sink on cpu {GENERATOR_CORE} \
             (the generator's side: cpus {})",
            if k == 1 { "" } else { "s" },
            cpu_list(&self.gateway),
            if self.shared {
                ", SHARED with the generator's: not a measurement"
            } else {
                ""
            },
            cpu_list(&self.generator)
        )
    }
}

/// "1,2,3": a `taskset -c` list.
pub fn cpu_list(cores: &[usize]) -> String {
    cores
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A CPU mask as `/sys/class/net/*/queues/rx-*/rps_cpus` takes it: hex words of 32 bits,
/// most significant first, comma-separated ("f", "1,00000000").
pub fn cpu_mask(cores: &[usize]) -> String {
    let words = cores.iter().map(|c| c / 32 + 1).max().unwrap_or(1);
    let mut w = vec![0u32; words];
    for &c in cores {
        w[c / 32] |= 1 << (c % 32);
    }
    let mut out = format!("{:x}", w[words - 1]);
    for x in w[..words - 1].iter().rev() {
        let _ = write!(out, ",{x:08x}");
    }
    out
}

/// sluice's data path, or the kernel path every stand-in uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// UDP sockets + TUN (sluice's portable path; the only path of the stand-ins).
    Socket,
    /// XDP + AF_XDP on the outer interface + TUN (sluice only).
    Xdp,
    /// Appliance mode (sluice only): XDP + AF_XDP on the outer interface and on the sink's
    /// link, which is sluice's inner NIC (`[dataplane] inner`, next hop the sink); the TUN
    /// only carries what the kernel routes (the first packets before the sink's address is
    /// resolved).
    Appliance,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Socket => "socket+tun",
            Mode::Xdp => "xdp+tun",
            Mode::Appliance => "appliance",
        }
    }

    /// Whether sluice runs its XDP fast path on the outer interface.
    pub fn xdp(self) -> bool {
        self != Mode::Socket
    }
}

/// One gateway under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Impl {
    pub kind: ImplKind,
    pub mode: Mode,
}

/// [`GatewayKind`] with an order and hash, for tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImplKind {
    Sluice,
    WireguardGo,
    Boringtun,
}

impl ImplKind {
    pub fn gateway(self) -> GatewayKind {
        match self {
            ImplKind::Sluice => GatewayKind::Sluice,
            ImplKind::WireguardGo => GatewayKind::WireguardGo,
            ImplKind::Boringtun => GatewayKind::Boringtun,
        }
    }
}

impl Impl {
    pub fn label(self) -> String {
        match self.kind {
            ImplKind::Sluice => format!("sluice {}", self.mode.label()),
            _ => self.kind.gateway().label().to_string(),
        }
    }
}

/// A built topology with the gateway running. Fields drop in order: the gateway process
/// first, then the namespaces, then the run folder.
#[derive(Debug)]
pub struct GenTopology {
    pub gateway: Gateway,
    pub gen_ns: Netns,
    pub gw_ns: Netns,
    pub sink_ns: Netns,
    pub dir: RunDir,
    pub id: String,
    pub gateway_key: KeyPair,
    /// What was pinned where, as checked from /proc after start.
    pub pinning: String,
    /// The gateway's cores and the generator's.
    pub cores: Cores,
}

fn sh(ns: &Netns, script: &str) -> Result<String, String> {
    ns.run(&["sh", "-c", script]).map_err(|e| e.to_string())
}

impl GenTopology {
    /// Namespaces, links, routes and RPS, then the gateway `which` on `cores` with one peer
    /// per key in `user_keys` (user k's tunnel address is `tunnel_ip(k)`).
    pub fn build(
        which: Impl,
        cores: &Cores,
        sluice_bin: Option<PathBuf>,
        user_keys: &[String],
        tunnel_ip: impl Fn(u32) -> Ipv4Addr,
    ) -> Result<GenTopology, String> {
        let e = |e: sluice::testbed::Error| e.to_string();
        let id = unique_id();
        let dir = RunDir::new(&id).map_err(e)?;
        let gen_ns = Netns::new(&format!("sl-{id}-cgen")).map_err(e)?;
        let gw_ns = Netns::new(&format!("sl-{id}-cgw")).map_err(e)?;
        let sink_ns = Netns::new(&format!("sl-{id}-csink")).map_err(e)?;
        gw_ns.enable_forwarding().map_err(e)?;
        veth(
            &gw_ns,
            OUTER_DEV,
            &gen_ns,
            PEER_DEV,
            Some(cores.outer_queues()),
        )
        .map_err(e)?;
        gw_ns
            .add_addr(OUTER_DEV, &format!("{GW_OUTER_V4}/24"))
            .map_err(e)?;
        gen_ns
            .add_addr(PEER_DEV, &format!("{GEN_OUTER_V4}/24"))
            .map_err(e)?;
        gen_ns
            .ip(&["route", "add", "local", USERS_OUTER_NET, "dev", "lo"])
            .map_err(e)?;
        gw_ns
            .add_route(USERS_OUTER_NET, Some(IpAddr::V4(GEN_OUTER_V4)), None)
            .map_err(e)?;
        // Appliance mode: one queue per worker (veth's default is one per CPU), as sluice
        // opens inner sockets on queues 0..workers-1 (a veth's receive queue is the queue its
        // peer sent on, so one more would carry part of the sink's traffic through the kernel
        // and the TUN). The sink's end computes its checksums, as a wire carries final ones.
        let appliance = which.mode == Mode::Appliance;
        let sink_queues = u16::try_from(cores.k()).unwrap_or(u16::MAX);
        veth(
            &gw_ns,
            SINK_DEV,
            &sink_ns,
            PEER_DEV,
            appliance.then_some(sink_queues),
        )
        .map_err(e)?;
        if appliance {
            sink_ns
                .run(&["ethtool", "-K", PEER_DEV, "tx", "off"])
                .map_err(e)?;
        }
        gw_ns
            .add_addr(SINK_DEV, &format!("{GW_INNER_V4}/24"))
            .map_err(e)?;
        sink_ns
            .add_addr(PEER_DEV, &format!("{SINK_V4}/24"))
            .map_err(e)?;
        sink_ns
            .add_route(TUNNEL_NET, Some(IpAddr::V4(GW_INNER_V4)), None)
            .map_err(e)?;
        // Receive processing of the outer link on the gateway's cores, of the sink's on the
        // generator's (see the module docs).
        let gw_mask = cpu_mask(&cores.gateway);
        let gen_mask = cpu_mask(&cores.generator);
        sh(
            &gw_ns,
            &format!(
                "for q in /sys/class/net/{OUTER_DEV}/queues/rx-*; do echo {gw_mask} > $q/rps_cpus; done"
            ),
        )?;
        sh(
            &sink_ns,
            &format!(
                "for q in /sys/class/net/{PEER_DEV}/queues/rx-*; do echo {gen_mask} > $q/rps_cpus; done"
            ),
        )?;
        let gateway_key = KeyPair::generate();
        let ifname = format!("sl{id}");
        let many = user_keys.len();
        let spec = GatewaySpec {
            kind: which.kind.gateway(),
            ifname: ifname.clone(),
            key: gateway_key.clone(),
            listen_port: LISTEN_PORT,
            addresses: vec![format!("{GW_TUNNEL_V4}/12")],
            mtu: 1420,
            // sluice reads its peers from its wg-quick file; the stand-ins get them below in
            // one `wg addconf` (one `wg set` per peer would take minutes for 100,000).
            peers: if which.kind == ImplKind::Sluice {
                user_keys
                    .iter()
                    .enumerate()
                    .map(|(k, key)| sluice::testbed::gateway::GatewayPeer {
                        public_key: key.clone(),
                        allowed_ips: vec![format!("{}/32", tunnel_ip(k as u32))],
                        endpoint: None,
                        persistent_keepalive: None,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            sluice_bin,
            // Equal resources: k sluice workers pinned one per core; k threads for the
            // stand-ins (below).
            workers: cores.k(),
            cores: cores.gateway.clone(),
            // sluice's metrics (its cookie replies, for the flood scenario), on loopback in
            // the gateway's namespace; nothing reads them during the timed runs.
            extra_toml: match (which.kind, which.mode) {
                (ImplKind::Sluice, mode) => format!(
                    "{}\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n",
                    if mode == Mode::Appliance {
                        appliance_toml(SINK_DEV, &[IpAddr::V4(SINK_V4)])
                    } else {
                        String::new()
                    }
                ),
                _ => String::new(),
            },
            xdp_outer: which.mode.xdp().then(|| OUTER_DEV.to_string()),
            // wireguard-go: k threads running Go code (GOMAXPROCS); boringtun-cli: k worker
            // threads (WG_THREADS is its `--threads`, default 4).
            env: match which.kind {
                ImplKind::Sluice => vec![("SLUICE_LOG".into(), "warn".into())],
                ImplKind::WireguardGo => vec![("GOMAXPROCS".into(), cores.k().to_string())],
                ImplKind::Boringtun => vec![("WG_THREADS".into(), cores.k().to_string())],
            },
            // A status file rewritten every second costs real CPU with many peers; the wg API
            // answers instead, as it does for the stand-ins.
            status_file: false,
        };
        // Children inherit the spawning thread's CPU mask: start the gateway from a thread
        // pinned to the gateway's first core, so nothing of it runs on the generator's before
        // the whole process is confined to the gateway's cores (`pin_gateway`).
        let gateway = std::thread::scope(|s| {
            s.spawn(|| {
                pin_current(cores.gateway[0])?;
                Gateway::start(&gw_ns, &spec, &dir).map_err(|e| e.to_string())
            })
            .join()
            .unwrap_or_else(|_| Err("the gateway start thread panicked".into()))
        })?;
        // In files of 10,000 peers: one `wg addconf` of 100,000 broke wireguard-go's UAPI
        // connection (wg died of SIGPIPE).
        for (c, chunk) in user_keys.chunks(10_000).enumerate() {
            if which.kind == ImplKind::Sluice {
                break;
            }
            let mut conf = String::new();
            for (i, key) in chunk.iter().enumerate() {
                let k = c * 10_000 + i;
                let _ = write!(
                    conf,
                    "[Peer]\nPublicKey = {key}\nAllowedIPs = {}/32\n\n",
                    tunnel_ip(k as u32)
                );
            }
            let path = dir
                .write_private(&format!("peers{c}.conf"), &conf)
                .map_err(|e| e.to_string())?;
            let out = cmd::check(
                cmd::command(
                    Some(gw_ns.name()),
                    &["wg", "addconf", &ifname, &path.to_string_lossy()],
                ),
                std::time::Duration::from_secs(600),
            );
            out.map_err(|e| format!("adding {many} peers with wg addconf: {e}"))?;
        }
        let mut topo = GenTopology {
            gateway,
            gen_ns,
            gw_ns,
            sink_ns,
            dir,
            id,
            gateway_key,
            pinning: String::new(),
            cores: cores.clone(),
        };
        topo.pinning = topo.pin_gateway(which.mode.xdp())?;
        Ok(topo)
    }

    /// Confine every thread of the gateway process (and, in xdp mode, the outer link's NAPI
    /// threads) to the gateway's cores; return what /proc says about it.
    fn pin_gateway(&self, xdp: bool) -> Result<String, String> {
        let pid = self
            .gateway
            .pid()
            .ok_or("the gateway has no process")?
            .to_string();
        let core = cpu_list(&self.cores.gateway);
        cmd::run(None, &["taskset", "-a", "-p", "-c", &core, &pid]).map_err(|e| e.to_string())?;
        let mut napi = Ok(Vec::new());
        if xdp {
            // veth runs an attached XDP program in NAPI on the sending CPU; threaded NAPI
            // would give it kernel threads we could pin ("napi/outer-<id>").
            // veth has NAPI instances (and so accepts threaded mode) only once sluice has
            // attached its program, which it does after its workers start: retry for up to 5 s.
            let mut tries = 0;
            napi = loop {
                let r = sh(
                    &self.gw_ns,
                    &format!("echo 1 > /sys/class/net/{OUTER_DEV}/threaded"),
                );
                tries += 1;
                if r.is_ok() || tries >= 50 {
                    break r;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                napi_threads(OUTER_DEV)
                    .into_iter()
                    .filter(|t| {
                        cmd::run(None, &["taskset", "-p", "-c", &core, &t.to_string()]).is_ok()
                    })
                    .collect()
            });
        }
        let masks = thread_masks(&pid);
        let mut out = format!("gateway pid {pid}: threads on cpus {masks}");
        match (&napi, xdp) {
            (Ok(t), true) => {
                let _ = write!(
                    out,
                    "; {} NAPI thread(s) of {OUTER_DEV} on cpus {core}",
                    t.len()
                );
            }
            (Err(_), true) => {
                let _ = write!(
                    out,
                    "; threaded NAPI unavailable on veth here, so the XDP program and the \
                     AF_XDP copy run on the sending (generator's) cpu {GENERATOR_CORE}"
                );
            }
            _ => {}
        }
        let _ = write!(
            out,
            "; generator and sink on cpu {GENERATOR_CORE}; RPS: {OUTER_DEV} ({} queues) -> \
             cpus {core}, sink link -> cpus {}{}",
            self.cores.outer_queues(),
            cpu_list(&self.cores.generator),
            if self.cores.shared {
                "; SHARED cores: not a measurement"
            } else {
                ""
            }
        );
        Ok(out)
    }

    /// sluice's `sluice_cookie_replies_sent_total` from its metrics endpoint; `None` for
    /// the stand-ins (they expose no such count) or if it cannot be read.
    pub fn sluice_cookie_replies(&self) -> Option<u64> {
        metric_value(&self.sluice_metrics()?, "sluice_cookie_replies_sent_total")
    }

    /// Appliance mode: the frames of sluice's inner NIC by direction, summed over queues:
    /// `rx`/`tx` through its AF_XDP sockets, `rx_kernel`/`tx_kernel` through the TUN.
    pub fn inner_frames(&self) -> Option<Vec<(String, u64)>> {
        let text = self.sluice_metrics()?;
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for l in text.lines() {
            let Some(rest) = l.strip_prefix("sluice_xsk_inner_frames_total{") else {
                continue;
            };
            let (labels, value) = rest.split_once("} ")?;
            let dir = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("direction="))?;
            *by.entry(dir.trim_matches('"').to_string()).or_default() +=
                value.trim().parse::<f64>().ok()? as u64;
        }
        Some(by.into_iter().collect())
    }

    /// sluice's metrics page; `None` for the stand-ins or if it cannot be read.
    fn sluice_metrics(&self) -> Option<String> {
        if self.gateway.kind() != sluice::testbed::gateway::GatewayKind::Sluice {
            return None;
        }
        self.gw_ns
            .enter(|| {
                use std::io::{Read, Write};
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
                let mut c =
                    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
                        .ok()?;
                c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .ok()?;
                c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    .ok()?;
                let mut body = String::new();
                c.read_to_string(&mut body).ok()?;
                Some(body)
            })
            .ok()?
    }

    /// The gateway process's resident memory, from /proc.
    pub fn gateway_rss_bytes(&self) -> Option<u64> {
        let pid = self.gateway.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }
}

/// Pin the calling thread to `core` (any core of the machine, not only those of the current
/// mask, which an earlier pin narrowed).
pub fn pin_current(core: usize) -> Result<(), String> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        Ok(())
    } else {
        Err(format!("could not pin a thread to core {core}"))
    }
}

/// The distinct `Cpus_allowed_list` values of a process's threads, e.g. "1".
fn thread_masks(pid: &str) -> String {
    let mut masks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .collect();
    masks.sort();
    masks.dedup();
    masks.join(",")
}

/// Kernel threads named "napi/<dev>-<id>" (the newest ones are ours: names repeat across
/// namespaces, so only those that are not pinned elsewhere yet are returned).
fn napi_threads(dev: &str) -> Vec<u32> {
    let prefix = format!("napi/{dev}-");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(p.path().join("comm")).ok()?;
            comm.trim().starts_with(&prefix).then_some(pid)
        })
        .collect()
}

/// The value of an unlabelled metric in Prometheus text format.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next()? == name).then(|| parts.next())?
        })
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{cpu_list, cpu_mask, Cores};

    #[test]
    fn cores_are_planned_disjoint_unless_shared_is_allowed() {
        let two = [0, 1];
        let c = Cores::plan(&two, 1, false).unwrap();
        assert_eq!((c.gateway.clone(), c.generator.clone()), (vec![1], vec![0]));
        assert!(!c.shared);
        assert_eq!(c.outer_queues(), 2);
        let e = Cores::plan(&two, 2, false).unwrap_err();
        assert!(e.contains("this machine has 2"), "{e}");
        let s = Cores::plan(&two, 2, true).unwrap();
        assert_eq!(
            (s.gateway.clone(), s.generator.clone()),
            (vec![1, 0], vec![0])
        );
        assert!(s.shared);
        assert!(
            s.describe().contains("not a measurement"),
            "{}",
            s.describe()
        );
        assert!(Cores::plan(&two, 3, true).is_err());
        assert!(Cores::plan(&two, 0, true).is_err());
        let eight: Vec<usize> = (0..8).rev().collect();
        let c = Cores::plan(&eight, 3, false).unwrap();
        assert_eq!(c.gateway, vec![1, 2, 3]);
        assert_eq!(c.generator, vec![0, 4, 5, 6, 7]);
        assert_eq!(c.outer_queues(), 3);
        assert!(!c.describe().contains("SHARED"));
        assert!(Cores::plan(&[1, 2], 1, false).is_err());
    }

    #[test]
    fn cpu_lists_and_masks() {
        assert_eq!(cpu_list(&[1, 0]), "1,0");
        assert_eq!(cpu_mask(&[1]), "2");
        assert_eq!(cpu_mask(&[0, 1, 2, 3]), "f");
        assert_eq!(cpu_mask(&[0, 33]), "2,00000001");
    }

    #[test]
    fn metric_values_parse() {
        let text = "# HELP sluice_cookie_replies_sent_total x\n\
                    # TYPE sluice_cookie_replies_sent_total counter\n\
                    sluice_cookie_replies_sent_total_other 9\n\
                    sluice_cookie_replies_sent_total 42\n";
        assert_eq!(
            super::metric_value(text, "sluice_cookie_replies_sent_total"),
            Some(42)
        );
        assert_eq!(super::metric_value(text, "missing"), None);
    }
}
