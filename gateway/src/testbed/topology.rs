//! The test topology: N user namespaces, each with its own WireGuard client and its own veth
//! pair to the gateway namespace, and a sink namespace behind the gateway.
//!
//! ```text
//!  user namespaces (N)             gateway namespace                     sink namespace
//!  +---------------------+  veth   +---------------------------+  veth  +--------------+
//!  | wg client (wg-go or |---------| to-uK: 198.18.K.1/25      |        |              |
//!  |   boringtun-cli)    |  one    |        fd18:0:0:K::1/80   |        |              |
//!  | wgIDuK:             |  per    |                           |        |              |
//!  |   10.77.0.(K+1)/32  |  user   | gateway (sluice, TUN slID)|        | to-gw:       |
//!  |   fd77::(K+1)/128   |         |   10.77.0.1/16 fd77::1/64 |--------| 10.88.0.2/24 |
//!  | to-gw: 198.18.K.2/25|         | to-sink: 10.88.0.1/24     |        | fd88::2/64   |
//!  |   fd18:0:0:K::2/80  |         |          fd88::1/64       |        | iperf3 -s    |
//!  +---------------------+         +---------------------------+        +--------------+
//! ```
//!
//! - Outer (WireGuard UDP): user K's link has 198.18.K.0/25 and fd18:0:0:K::/80 (RFC 2544 and
//!   ULA space), the gateway .1 / ::1, the user .2 / ::2. For K >= 256 the second octet goes
//!   up: 198.(18 + K/256).(K%256).0/25.
//! - Roaming ([`Topology::roam`]) moves user K to a new link, as a laptop moves from one
//!   network to another: roam number R adds veth `to-gwR` / `to-uKrR` with 198.18.K.(128+4R)/30
//!   and fd18:0:0:K:R::/80 and routes the gateway's unchanged endpoint (198.18.K.1,
//!   fd18:0:0:K::1) over the new link from the new address; [`Topology::retire_old_links`]
//!   then removes the old address. Changing the interface matters: wireguard-go keeps a
//!   "sticky" source address per peer and drops it only when the route to the peer moves to
//!   another interface.
//! - Tunnel: 10.77.0.0/16 and fd77::/64; the gateway is 10.77.0.1 / fd77::1 and user K is host
//!   K+1. Each client routes the tunnel and sink subnets into its WireGuard interface (the
//!   gateway peer's AllowedIPs); the gateway's peer for user K allows exactly its /32 and /128.
//! - Sink: 10.88.0.0/24 and fd88::/64 behind the gateway, which forwards between its TUN and
//!   the sink veth (ip_forward and IPv6 forwarding on); the sink routes the tunnel subnets back
//!   via the gateway.
//! - Names: namespaces `sl-ID-gw`, `sl-ID-sink`, `sl-ID-uK`; WireGuard interfaces `wgIDuK`
//!   and the gateway's `slID`, unique machine-wide because UAPI sockets are shared.
//!
//! **xdp layout** ([`TopologySpec::xdp`]): sluice runs its XDP fast path, which serves one
//! outer NIC, as a concentrator does. The users' links then end in a router namespace
//! `sl-ID-wan` instead of the gateway (the same addresses: the router is each user's first
//! hop), and the gateway has one multi-queue veth `outer` to the router with 198.51.100.1/24 and
//! fd19::1/64, the endpoint every client uses. The gateway reaches the users via the router,
//! so its next hop is the router's MAC, the routed case of a real deployment.
//!
//! ```text
//!  user K --veth to-uK-- [sl-ID-wan router] --veth to-gw / outer (2 queues)-- gateway
//!                         198.18.K.1/25                        198.51.100.1/24 fd19::1/64
//! ```
//!
//! **appliance layout** ([`TopologySpec::appliance`], on top of the xdp layout): the sink veth
//! gets 2 queues too and is sluice's `dataplane.inner`, with the sink as the inside gateway
//! (`inner_next_hop = [SINK_V4, SINK_V6]`). The sink's end has transmit checksum offload off,
//! as a real wire carries final checksums (veth would otherwise hand XDP partial ones).

use super::gateway::{Gateway, GatewayKind, GatewayPeer, GatewaySpec, GatewayStatus};
use super::netns::{veth, Netns};
use super::wg::{WgImpl, WgInterface, WgPeer};
use super::{fatal, registry, unique_id, wait_for, KeyPair, Result, RunDir};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

pub const SINK_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
pub const SINK_V6: Ipv6Addr = Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 2);
pub const GW_INNER_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const GW_INNER_V6: Ipv6Addr = Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 1);
pub const GW_TUNNEL_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const GW_TUNNEL_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
pub const TUNNEL_NET_V4: &str = "10.77.0.0/16";
pub const TUNNEL_NET_V6: &str = "fd77::/64";
pub const SINK_NET_V4: &str = "10.88.0.0/24";
pub const SINK_NET_V6: &str = "fd88::/64";
/// The gateway's WireGuard port.
pub const LISTEN_PORT: u16 = 51820;
/// Users are numbered 1..=MAX_USERS (the outer addressing runs out after that).
pub const MAX_USERS: usize = 500;
/// Names of the veth ends: the same in every namespace, as the namespaces are ours.
pub const SINK_VETH_GW: &str = "to-sink";
pub const SINK_VETH_SINK: &str = "to-gw";
pub const USER_VETH: &str = "to-gw";
/// xdp layout: the gateway's single outer interface, its queues, and its addresses.
pub const XDP_OUTER_DEV: &str = "outer";
pub const XDP_OUTER_QUEUES: u16 = 2;
pub const XDP_WAN_DEV: &str = "to-gw";
pub const XDP_GW_OUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const XDP_WAN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const XDP_GW_OUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd19, 0, 0, 0, 0, 0, 0, 1);
pub const XDP_WAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd19, 0, 0, 0, 0, 0, 0, 2);

/// The client's listen port for user `k` (fixed, so the gateway can be given its endpoint).
pub fn client_listen_port(k: usize) -> u16 {
    40000 + k as u16
}

/// User `k`'s tunnel addresses.
pub fn tunnel_addrs(k: usize) -> (Ipv4Addr, Ipv6Addr) {
    let h = (k + 1) as u32;
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 0, 0)) + h),
        Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, h as u16),
    )
}

/// How many times one user can roam.
pub const MAX_ROAMS: u8 = 31;

/// User `k`'s outer addresses on link `link` (0 = the first, R = after roam R): the gateway's
/// side when `gw`, else the user's. Returns (IPv4, its prefix length, IPv6, its prefix length).
pub fn outer_addrs(k: usize, link: u8, gw: bool) -> (Ipv4Addr, u8, Ipv6Addr, u8) {
    let (b, c) = (18 + (k / 256) as u8, (k % 256) as u8);
    let host = if gw { 1 } else { 2 };
    let (d, len4) = if link == 0 {
        (host, 25)
    } else {
        (128 + 4 * link + host, 30)
    };
    (
        Ipv4Addr::new(198, b, c, d),
        len4,
        Ipv6Addr::new(
            0xfd18,
            0,
            0,
            k as u16,
            u16::from(link),
            0,
            0,
            u16::from(host),
        ),
        80,
    )
}

/// The gateway-side name of user `k`'s outer link `link`.
fn gw_link_name(k: usize, link: u8) -> String {
    if link == 0 {
        format!("to-u{k}")
    } else {
        format!("to-u{k}r{link}")
    }
}

/// One remote user.
#[derive(Clone, Debug)]
pub struct UserSpec {
    pub client: WgImpl,
    /// The gateway has this user's key as a peer (false: an unknown key, never answered).
    pub known: bool,
    /// The client knows the gateway's endpoint (so the client can start handshakes).
    pub client_endpoint: bool,
    /// The gateway's config has the client's endpoint (so the gateway can start them).
    pub gateway_endpoint: bool,
    /// Use IPv6 outer addresses for the endpoints instead of IPv4.
    pub outer_v6: bool,
    /// The client's persistent keepalive towards the gateway.
    pub persistent_keepalive: Option<u16>,
}

impl UserSpec {
    /// A known user whose client has the gateway's endpoint (the usual road warrior).
    pub fn new(client: WgImpl) -> UserSpec {
        UserSpec {
            client,
            known: true,
            client_endpoint: true,
            gateway_endpoint: false,
            outer_v6: false,
            persistent_keepalive: Some(25),
        }
    }
}

/// The whole topology to build.
#[derive(Clone, Debug)]
pub struct TopologySpec {
    pub gateway: GatewayKind,
    pub users: Vec<UserSpec>,
    /// Required for [`GatewayKind::Sluice`].
    pub sluice_bin: Option<PathBuf>,
    pub workers: usize,
    pub cores: Vec<usize>,
    pub mtu: u16,
    /// Appended to sluice's `gateway.toml` (sluice only).
    pub sluice_toml_extra: String,
    /// Environment variables for the sluice process (sluice only).
    pub sluice_env: Vec<(String, String)>,
    /// Run sluice with a status file (default); see [`GatewaySpec::status_file`].
    pub sluice_status_file: bool,
    /// The xdp layout (see the module docs), with sluice in `mode = "xdp"` on `outer`.
    pub xdp: bool,
    /// The appliance layout (needs `xdp`): the sink veth is sluice's inner NIC.
    pub appliance: bool,
}

impl TopologySpec {
    pub fn new(gateway: GatewayKind, sluice_bin: Option<PathBuf>, users: Vec<UserSpec>) -> Self {
        TopologySpec {
            gateway,
            users,
            sluice_bin,
            workers: 1,
            cores: vec![0],
            mtu: 1420,
            sluice_toml_extra: String::new(),
            sluice_env: Vec::new(),
            sluice_status_file: true,
            xdp: false,
            appliance: false,
        }
    }
}

/// A user's namespace and client. Fields drop in order: the client process before the
/// namespace.
#[derive(Debug)]
pub struct User {
    pub wg: WgInterface,
    pub ns: Netns,
    /// 1-based.
    pub index: usize,
    pub spec: UserSpec,
    pub key: KeyPair,
    pub tunnel_v4: Ipv4Addr,
    pub tunnel_v6: Ipv6Addr,
    pub gw_outer_v4: Ipv4Addr,
    pub gw_outer_v6: Ipv6Addr,
    pub listen_port: u16,
    /// The client's current outer link: 0 at first, R after roam R.
    link: AtomicU8,
}

impl User {
    /// The client's current outer IPv4 address (roaming changes it).
    pub fn outer_v4(&self) -> Ipv4Addr {
        outer_addrs(self.index, self.link.load(Ordering::Relaxed), false).0
    }

    /// The client's current outer IPv6 address (roaming changes it).
    pub fn outer_v6(&self) -> Ipv6Addr {
        outer_addrs(self.index, self.link.load(Ordering::Relaxed), false).2
    }

    /// The user-side name of outer link `link`.
    fn link_name(link: u8) -> String {
        if link == 0 {
            USER_VETH.to_string()
        } else {
            format!("{USER_VETH}{link}")
        }
    }

    /// The gateway's endpoint as this client sees it.
    pub fn gateway_endpoint(&self) -> SocketAddr {
        if self.spec.outer_v6 {
            SocketAddr::new(IpAddr::V6(self.gw_outer_v6), LISTEN_PORT)
        } else {
            SocketAddr::new(IpAddr::V4(self.gw_outer_v4), LISTEN_PORT)
        }
    }

    /// The client's current endpoint as the gateway should see it.
    pub fn endpoint(&self) -> SocketAddr {
        if self.spec.outer_v6 {
            SocketAddr::new(IpAddr::V6(self.outer_v6()), self.listen_port)
        } else {
            SocketAddr::new(IpAddr::V4(self.outer_v4()), self.listen_port)
        }
    }

    /// A label for summaries: "user 1 (wireguard-go)".
    pub fn label(&self) -> String {
        format!("user {} ({})", self.index, self.spec.client)
    }

    /// Send one small UDP datagram into the tunnel (to the sink's discard port), which makes
    /// the client start a handshake if it has none.
    pub fn kick(&self) -> Result<()> {
        let sock = self
            .ns
            .udp_bind(SocketAddr::new(IpAddr::V4(self.tunnel_v4), 0))?;
        let _ = sock.send_to(b"kick", SocketAddr::new(IpAddr::V4(SINK_V4), 9));
        Ok(())
    }
}

/// A built topology. Dropping it stops every process and deletes every namespace and file.
#[derive(Debug)]
pub struct Topology {
    pub users: Vec<User>,
    pub gateway: Gateway,
    pub gw_ns: Netns,
    pub sink_ns: Netns,
    pub id: String,
    pub gateway_key: KeyPair,
    pub dir: RunDir,
    /// The router between the users and the gateway (xdp layout only).
    pub wan_ns: Option<Netns>,
}

impl Topology {
    /// The namespace the users' links end in: the router (xdp layout) or the gateway.
    pub fn edge_ns(&self) -> &Netns {
        self.wan_ns.as_ref().unwrap_or(&self.gw_ns)
    }

    /// Build everything in `spec`, start the gateway and the clients. Does not wait for
    /// handshakes (see [`Topology::wait_handshakes`]).
    pub fn build(spec: &TopologySpec) -> Result<Topology> {
        if spec.users.len() > MAX_USERS {
            return Err(err!("at most {MAX_USERS} users"));
        }
        if spec.appliance && !spec.xdp {
            return Err(err!("the appliance layout needs the xdp layout"));
        }
        let id = unique_id();
        let dir = RunDir::new(&id)?;
        let gw_ns = Netns::new(&format!("sl-{id}-gw"))?;
        let sink_ns = Netns::new(&format!("sl-{id}-sink"))?;
        gw_ns.enable_forwarding()?;
        let sink_queues = spec.appliance.then_some(XDP_OUTER_QUEUES);
        veth(&gw_ns, SINK_VETH_GW, &sink_ns, SINK_VETH_SINK, sink_queues)?;
        if spec.appliance {
            sink_ns.run(&["ethtool", "-K", SINK_VETH_SINK, "tx", "off"])?;
        }
        gw_ns.add_addr(SINK_VETH_GW, &format!("{GW_INNER_V4}/24"))?;
        gw_ns.add_addr(SINK_VETH_GW, &format!("{GW_INNER_V6}/64"))?;
        sink_ns.add_addr(SINK_VETH_SINK, &format!("{SINK_V4}/24"))?;
        sink_ns.add_addr(SINK_VETH_SINK, &format!("{SINK_V6}/64"))?;
        sink_ns.add_route(TUNNEL_NET_V4, Some(IpAddr::V4(GW_INNER_V4)), None)?;
        sink_ns.add_route(TUNNEL_NET_V6, Some(IpAddr::V6(GW_INNER_V6)), None)?;
        let wan_ns = if spec.xdp {
            let wan = Netns::new(&format!("sl-{id}-wan"))?;
            wan.enable_forwarding()?;
            veth(
                &gw_ns,
                XDP_OUTER_DEV,
                &wan,
                XDP_WAN_DEV,
                Some(XDP_OUTER_QUEUES),
            )?;
            gw_ns.add_addr(XDP_OUTER_DEV, &format!("{XDP_GW_OUTER_V4}/24"))?;
            gw_ns.add_addr(XDP_OUTER_DEV, &format!("{XDP_GW_OUTER_V6}/64"))?;
            wan.add_addr(XDP_WAN_DEV, &format!("{XDP_WAN_V4}/24"))?;
            wan.add_addr(XDP_WAN_DEV, &format!("{XDP_WAN_V6}/64"))?;
            gw_ns.add_route("198.18.0.0/15", Some(IpAddr::V4(XDP_WAN_V4)), None)?;
            gw_ns.add_route("fd18::/16", Some(IpAddr::V6(XDP_WAN_V6)), None)?;
            Some(wan)
        } else {
            None
        };
        let edge = wan_ns.as_ref().unwrap_or(&gw_ns);

        // Namespaces, veths and keys first: the gateway's config needs every client's key.
        let mut pending = Vec::new();
        for (i, us) in spec.users.iter().enumerate() {
            let k = i + 1;
            let ns = Netns::new(&format!("sl-{id}-u{k}"))?;
            let gw_dev = gw_link_name(k, 0);
            veth(&ns, USER_VETH, edge, &gw_dev, None)?;
            let (g4, g4len, g6, g6len) = outer_addrs(k, 0, true);
            let (u4, u4len, u6, u6len) = outer_addrs(k, 0, false);
            edge.add_addr(&gw_dev, &format!("{g4}/{g4len}"))?;
            edge.add_addr(&gw_dev, &format!("{g6}/{g6len}"))?;
            ns.add_addr(USER_VETH, &format!("{u4}/{u4len}"))?;
            ns.add_addr(USER_VETH, &format!("{u6}/{u6len}"))?;
            if spec.xdp {
                ns.add_route("198.51.100.0/24", Some(IpAddr::V4(g4)), None)?;
                ns.add_route("fd19::/64", Some(IpAddr::V6(g6)), None)?;
            }
            pending.push((k, us.clone(), ns, KeyPair::generate()));
        }

        let gateway_key = KeyPair::generate();
        let gw_spec = GatewaySpec {
            kind: spec.gateway,
            ifname: format!("sl{id}"),
            key: gateway_key.clone(),
            listen_port: LISTEN_PORT,
            addresses: vec![format!("{GW_TUNNEL_V4}/16"), format!("{GW_TUNNEL_V6}/64")],
            mtu: spec.mtu,
            peers: pending
                .iter()
                .filter(|(_, us, ..)| us.known)
                .map(|(k, us, _, key)| {
                    let (t4, t6) = tunnel_addrs(*k);
                    let (u4, _, u6, _) = outer_addrs(*k, 0, false);
                    let ip = if us.outer_v6 {
                        IpAddr::V6(u6)
                    } else {
                        IpAddr::V4(u4)
                    };
                    GatewayPeer {
                        public_key: key.public.clone(),
                        allowed_ips: vec![format!("{t4}/32"), format!("{t6}/128")],
                        endpoint: us
                            .gateway_endpoint
                            .then(|| SocketAddr::new(ip, client_listen_port(*k))),
                        persistent_keepalive: None,
                    }
                })
                .collect(),
            sluice_bin: spec.sluice_bin.clone(),
            workers: spec.workers,
            cores: spec.cores.clone(),
            extra_toml: if spec.appliance {
                super::gateway::appliance_toml(
                    SINK_VETH_GW,
                    &[IpAddr::V4(SINK_V4), IpAddr::V6(SINK_V6)],
                ) + &spec.sluice_toml_extra
            } else {
                spec.sluice_toml_extra.clone()
            },
            xdp_outer: spec.xdp.then(|| XDP_OUTER_DEV.to_string()),
            env: spec.sluice_env.clone(),
            status_file: spec.sluice_status_file,
        };
        let gateway = Gateway::start(&gw_ns, &gw_spec, &dir)?;

        let mut users = Vec::new();
        for (k, us, ns, key) in pending {
            let (t4, t6) = tunnel_addrs(k);
            let (g4, g6) = if spec.xdp {
                (XDP_GW_OUTER_V4, XDP_GW_OUTER_V6)
            } else {
                let (g4, _, g6, _) = outer_addrs(k, 0, true);
                (g4, g6)
            };
            let ifname = format!("wg{id}u{k}");
            let wg = WgInterface::start(&ns, us.client, &ifname, &dir)?;
            let gw_endpoint = if us.outer_v6 {
                SocketAddr::new(IpAddr::V6(g6), LISTEN_PORT)
            } else {
                SocketAddr::new(IpAddr::V4(g4), LISTEN_PORT)
            };
            wg.configure(
                &key,
                Some(client_listen_port(k)),
                &[WgPeer {
                    public_key: gateway_key.public.clone(),
                    endpoint: us.client_endpoint.then_some(gw_endpoint),
                    allowed_ips: [TUNNEL_NET_V4, TUNNEL_NET_V6, SINK_NET_V4, SINK_NET_V6]
                        .map(String::from)
                        .to_vec(),
                    persistent_keepalive: if us.client_endpoint {
                        us.persistent_keepalive
                    } else {
                        None
                    },
                }],
            )?;
            ns.add_addr(&ifname, &format!("{t4}/32"))?;
            ns.add_addr(&ifname, &format!("{t6}/128"))?;
            ns.link_up(&ifname, Some(spec.mtu))?;
            for net in [TUNNEL_NET_V4, SINK_NET_V4, TUNNEL_NET_V6, SINK_NET_V6] {
                ns.add_route(net, None, Some(&ifname))?;
            }
            users.push(User {
                wg,
                ns,
                index: k,
                spec: us,
                key,
                tunnel_v4: t4,
                tunnel_v6: t6,
                gw_outer_v4: g4,
                gw_outer_v6: g6,
                listen_port: client_listen_port(k),
                link: AtomicU8::new(0),
            });
        }
        Ok(Topology {
            users,
            gateway,
            gw_ns,
            sink_ns,
            id,
            gateway_key,
            dir,
            wan_ns,
        })
    }

    /// Roam user `k` (1-based) to a new network: a new veth pair to the gateway namespace
    /// with new addresses, the old link's gateway end taken down (the old network is gone),
    /// and the route to the gateway's endpoint (the same address as before) moved onto the
    /// new link with the new address as its source. Nothing in WireGuard is
    /// reconfigured: the client's next packet simply comes from the new address. The old
    /// address stays until [`Topology::retire_old_links`]. Returns the new endpoint. Takes
    /// `&self`, so it can run while a transfer uses the namespaces.
    ///
    /// Why the old address is kept for now: wireguard-go sends from a "sticky" source
    /// address and drops it only when a route lookup *from that address* to the peer picks
    /// another interface; if the address vanished first, that lookup fails and wireguard-go
    /// (as packaged in Debian 12) keeps trying the vanished address, with ENETUNREACH. And
    /// the old network goes down before the route moves because a packet still arriving at
    /// the old address would make wireguard-go stick to it again.
    pub fn roam(&self, k: usize) -> Result<SocketAddr> {
        let u = &self.users[k - 1];
        let new = u.link.load(Ordering::Relaxed) + 1;
        if new > MAX_ROAMS {
            return Err(err!("user {k} has roamed {MAX_ROAMS} times already"));
        }
        let user_dev = User::link_name(new);
        let gw_dev = gw_link_name(k, new);
        let edge = self.edge_ns();
        veth(&u.ns, &user_dev, edge, &gw_dev, None)?;
        let (g4, g4len, g6, g6len) = outer_addrs(k, new, true);
        let (u4, u4len, u6, u6len) = outer_addrs(k, new, false);
        edge.add_addr(&gw_dev, &format!("{g4}/{g4len}"))?;
        edge.add_addr(&gw_dev, &format!("{g6}/{g6len}"))?;
        u.ns.add_addr(&user_dev, &format!("{u4}/{u4len}"))?;
        u.ns.add_addr(&user_dev, &format!("{u6}/{u6len}"))?;
        // The old network goes away first (its far end goes down), so nothing more arrives
        // at the old address; then the route to the gateway moves to the new network.
        let old_gw_dev = gw_link_name(k, new - 1);
        edge.ip(&["link", "set", &old_gw_dev, "down"])?;
        for (dest, via, src) in [
            (
                format!("{}/32", u.gw_outer_v4),
                IpAddr::V4(g4),
                IpAddr::V4(u4),
            ),
            (
                format!("{}/128", u.gw_outer_v6),
                IpAddr::V6(g6),
                IpAddr::V6(u6),
            ),
        ] {
            let fam = if via.is_ipv6() { "-6" } else { "-4" };
            let (via, src) = (via.to_string(), src.to_string());
            u.ns.ip(&[
                fam, "route", "replace", &dest, "via", &via, "dev", &user_dev, "src", &src,
            ])?;
        }
        u.link.store(new, Ordering::Relaxed);
        Ok(u.endpoint())
    }

    /// After [`Topology::roam`]: remove user `k`'s addresses on every link but the current
    /// one, so nothing can still be using them.
    pub fn retire_old_links(&self, k: usize) -> Result<()> {
        let u = &self.users[k - 1];
        let current = u.link.load(Ordering::Relaxed);
        for link in 0..current {
            let (o4, o4len, o6, o6len) = outer_addrs(k, link, false);
            let dev = User::link_name(link);
            // Already gone after an earlier call: fine.
            let _ = u.ns.del_addr(&dev, &format!("{o4}/{o4len}"));
            let _ = u.ns.del_addr(&dev, &format!("{o6}/{o6len}"));
        }
        Ok(())
    }

    /// User `k` (1-based).
    pub fn user(&self, k: usize) -> &User {
        &self.users[k - 1]
    }

    pub fn user_mut(&mut self, k: usize) -> &mut User {
        &mut self.users[k - 1]
    }

    /// Wait until every known user whose client has the gateway's endpoint has a handshake,
    /// seen from both sides (the client's `wg show` and the gateway's status). Kicks each
    /// client with a datagram every second meanwhile.
    pub fn wait_handshakes(&mut self, timeout: Duration) -> Result<GatewayStatus> {
        let want: Vec<usize> = self
            .users
            .iter()
            .filter(|u| u.spec.known && u.spec.client_endpoint)
            .map(|u| u.index)
            .collect();
        self.wait_handshakes_of(&want, timeout)
    }

    /// [`Topology::wait_handshakes`] for the users in `which` (1-based).
    pub fn wait_handshakes_of(
        &mut self,
        which: &[usize],
        timeout: Duration,
    ) -> Result<GatewayStatus> {
        let gw_pub = self.gateway_key.public.clone();
        let mut tick = 0u32;
        let r = wait_for(
            &format!("handshakes of users {which:?} with the gateway"),
            timeout,
            Duration::from_millis(100),
            || {
                self.gateway.ensure_running().map_err(fatal)?;
                let status = self.gateway.status()?;
                let mut waiting = Vec::new();
                for &k in which {
                    let u = &self.users[k - 1];
                    let client = u.wg.peer(&gw_pub)?;
                    let gw_side = status.peer(&u.key.public).and_then(|p| p.handshake_age());
                    if client.handshake_age.is_none() || gw_side.is_none() {
                        waiting.push(format!(
                            "user {k}: client {:?}, gateway {:?}",
                            client.handshake_age, gw_side
                        ));
                        if tick.is_multiple_of(10) {
                            let _ = u.kick();
                        }
                    }
                }
                tick += 1;
                if waiting.is_empty() {
                    Ok(Some(status))
                } else {
                    Err(waiting.join("; ").into())
                }
            },
        );
        match r {
            Ok(s) => Ok(s),
            Err(e) => {
                let mut msg = format!("{e}\n{}", self.gateway.log_tail(30));
                for &k in which {
                    let u = &mut self.users[k - 1];
                    let kind = u.spec.client;
                    msg += &format!("\n{kind} (user {k}) log:\n{}", u.wg.daemon().log_tail(10));
                }
                Err(err!("{msg}"))
            }
        }
    }

    /// Leave everything running (for `--keep`) and return the commands that remove it.
    pub fn keep(&mut self) -> Vec<String> {
        let mut pids = Vec::new();
        for u in &mut self.users {
            pids.push(u.wg.daemon_pid());
            u.wg.detach();
            u.ns.keep();
        }
        if let Some(p) = self.gateway.pid() {
            pids.push(p);
        }
        self.gateway.detach();
        self.gw_ns.keep();
        self.sink_ns.keep();
        if let Some(w) = &mut self.wan_ns {
            w.keep();
        }
        self.dir.keep();
        let mut cmds = Vec::new();
        if !pids.is_empty() {
            let p: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            cmds.push(format!("kill {}", p.join(" ")));
        }
        let mut names: Vec<&str> = self.users.iter().map(|u| u.ns.name()).collect();
        names.push(self.gw_ns.name());
        names.push(self.sink_ns.name());
        if let Some(w) = &self.wan_ns {
            names.push(w.name());
        }
        for n in names {
            cmds.push(format!("ip netns del {n}"));
        }
        cmds.push(format!("rm -rf {}", self.dir.path().display()));
        cmds
    }
}

/// A UDP socket bound inside user `u`'s namespace to its tunnel address (v4 or v6).
pub fn user_udp(u: &User, v6: bool) -> Result<UdpSocket> {
    let ip = if v6 {
        IpAddr::V6(u.tunnel_v6)
    } else {
        IpAddr::V4(u.tunnel_v4)
    };
    u.ns.udp_bind(SocketAddr::new(ip, 0))
}

/// Everything the registry still holds, for messages after a failed cleanup.
pub fn leftovers() -> String {
    let (ns, pids, dirs) = registry::snapshot();
    format!("namespaces {ns:?}, processes {pids:?}, folders {dirs:?}")
}
