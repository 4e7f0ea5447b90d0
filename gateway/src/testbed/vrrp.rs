//! A VRRP pair of sluice gateways behind keepalived, one client and an inside sink.
//!
//! ```text
//!                          switch namespace sl-ID-lan
//!            +--------------------- bo (bridge, outside) ---------------------+
//!            |                            |                                   |
//!   client sl-ID-cl              gateway 1 sl-ID-g1                  gateway 2 sl-ID-g2
//!   to-lan 198.51.100.100/24     outer 192.0.2.1/24 fd20::1          outer 192.0.2.2/24 fd20::2
//!          fd19::100/64          sluice (TUN slIDa), keepalived      sluice (TUN slIDb), keepalived
//!   wireguard-go wgIDc           prio 150 (master while healthy)     prio 100
//!     10.77.0.2 fd77::2          inside 10.88.0.11/24 fd88::11       inside 10.88.0.12/24 fd88::12
//!     Endpoint = VIP :51820          |                                   |
//!            +--------------------- bi (bridge, inside) ----------------------+
//!                                             |
//!                                 sink sl-ID-sink: to-lan 10.88.0.2/24 fd88::2
//!                                 routes 10.77.0.0/16 via 10.88.0.1, fd77::/64 via fd88::1
//! ```
//!
//! keepalived (the real daemon, `configs/keepalived.conf.j2` rendered as Ansible renders it)
//! holds four virtual addresses on the master: the client's endpoint [`VIP_V4`] / [`VIP_V6`]
//! on `outer`, and the sink's next hop [`INNER_VIP_V4`] / [`INNER_VIP_V6`] on `inside`, so
//! traffic in both directions follows the master. Adverts every 100 ms (VRRPv3), the health
//! check polls `/healthz` every 50 ms. Both gateways share the private key and the peer set.
//! With [`VrrpSpec::ha`], sluice runs with an `[ha]` section (mode vrrp, the two members'
//! inside addresses as sync addresses, one group secret) and keepalived's notify hook tells it
//! its role; without, sluice knows nothing of HA (the baseline: clients re-handshake).

use super::gateway::{Gateway, GatewayKind, GatewayPeer, GatewaySpec, GatewayStatus};
use super::ha::{bridge, bridge_port, configs_dir, has_addr, render_template, Keepalived};
use super::netns::veth;
use super::wg::{WgImpl, WgInterface, WgPeer};
use super::{fatal, unique_id, wait_for, KeyPair, Netns, Result, RunDir};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd19, 0, 0, 0, 0, 0, 0, 0x10);
pub const INNER_VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const INNER_VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 1);
pub const CLIENT_OUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
pub const CLIENT_OUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd19, 0, 0, 0, 0, 0, 0, 0x100);
pub const CLIENT_TUNNEL_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const CLIENT_TUNNEL_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
pub const SINK_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
pub const SINK_V6: Ipv6Addr = Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 2);
pub const LISTEN_PORT: u16 = 51820;
pub const CLIENT_PORT: u16 = 40000;
/// The sync channel's port on each member's inside address.
pub const SYNC_PORT: u16 = 51821;
pub const METRICS: &str = "127.0.0.1:9586";
pub const OUTER_DEV: &str = "outer";
pub const INSIDE_DEV: &str = "inside";
pub const LAN_DEV: &str = "to-lan";
pub const VRRP_ROUTER_ID: u8 = 51;
/// keepalived priorities: gateway 1 is master while healthy.
pub const PRIORITIES: [u8; 2] = [150, 100];

/// Gateway `i`'s (0 or 1) own outer and inside addresses. The outer ones are on another
/// subnet than the VIP (192.0.2.0/24, fd20::/64), so a member without the VIP has no route to
/// the client. sluice answers from the VIP the client reached (its sticky source), but with
/// the members' own addresses on the clients' subnet `failover_with_sync_...` failed in
/// about half the runs under CPU load (gateway 2 reported backup and no takeover while the
/// stream went through it; not explained yet), against none with this layout.
pub fn gateway_addrs(i: usize) -> (Ipv4Addr, Ipv6Addr, Ipv4Addr, Ipv6Addr) {
    let h = i as u8 + 1;
    (
        Ipv4Addr::new(192, 0, 2, h),
        Ipv6Addr::new(0xfd20, 0, 0, 0, 0, 0, 0, u16::from(h)),
        Ipv4Addr::new(10, 88, 0, 10 + h),
        Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 0x10 + u16::from(h)),
    )
}

/// What to build.
#[derive(Clone, Debug)]
pub struct VrrpSpec {
    pub sluice_bin: PathBuf,
    /// sluice's XDP fast path on `outer` (else the socket path).
    pub xdp: bool,
    /// sluice with `[ha]` (mode vrrp) and keepalived's notify hook; `Some(sync)` sets its
    /// `sync` key. `None`: no `[ha]` at all, no notify hook.
    pub ha: Option<bool>,
    /// Extra environment for gateway `i`'s sluice (e.g. `SLUICE_FAULT_INJECT`).
    pub env: [Vec<(String, String)>; 2],
    /// Start the wireguard-go client.
    pub client: bool,
    /// More peers in both gateways' wg-quick file, after the client (e.g. simulated users).
    pub peers: Vec<GatewayPeer>,
}

/// One gateway of the pair.
#[derive(Debug)]
pub struct Member {
    /// Field order is drop order: keepalived before sluice (so it never sees sluice die at
    /// teardown), sluice before its namespace.
    pub keepalived: Keepalived,
    pub gateway: Gateway,
    pub ns: Netns,
    pub dir: RunDir,
    pub index: usize,
}

impl Member {
    /// True while this member holds the outer VIP.
    pub fn holds_vip(&self) -> Result<bool> {
        has_addr(&self.ns, OUTER_DEV, IpAddr::V4(VIP_V4))
    }

    pub fn status(&self) -> Result<GatewayStatus> {
        self.gateway.status()
    }

    /// The `ha` object of sluice's status file (role, members, sessions held, takeovers...);
    /// `Null` when sluice runs without `[ha]`.
    pub fn ha_status(&self) -> Result<serde_json::Value> {
        let path = self
            .gateway
            .status_path()
            .ok_or_else(|| err!("gateway {} has no status file", self.index + 1))?;
        let text =
            std::fs::read_to_string(path).map_err(|e| err!("reading {}: {e}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err!("parsing {}: {e}", path.display()))?;
        Ok(v.get("ha").cloned().unwrap_or(serde_json::Value::Null))
    }

    /// Poll [`Member::ha_status`] until `pred` holds.
    pub fn wait_ha(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        wait_for(what, timeout, Duration::from_millis(100), || {
            let v = self.ha_status()?;
            if pred(&v) {
                Ok(Some(v))
            } else {
                Err(format!("ha status {v}").into())
            }
        })
    }

    /// `ha.<key>` as a number (0 if absent).
    pub fn ha_counter(&self, key: &str) -> Result<u64> {
        Ok(self
            .ha_status()?
            .get(key)
            .and_then(|v| v.as_u64())
            .unwrap_or(0))
    }
}

/// The built pair. Dropping it stops every process and removes every namespace and file.
#[derive(Debug)]
pub struct VrrpPair {
    pub client: Option<WgInterface>,
    pub members: Vec<Member>,
    pub client_ns: Netns,
    pub sink_ns: Netns,
    pub lan_ns: Netns,
    pub id: String,
    pub gateway_key: KeyPair,
    pub client_key: KeyPair,
    pub dir: RunDir,
}

impl VrrpPair {
    /// Build the picture in the module docs, start both sluices and keepalived, and (if asked)
    /// the client. Does not wait for a master (see [`VrrpPair::wait_master`]).
    pub fn build(spec: &VrrpSpec) -> Result<VrrpPair> {
        let id = unique_id();
        let dir = RunDir::new(&id)?;
        let lan_ns = Netns::new(&format!("sl-{id}-lan"))?;
        let client_ns = Netns::new(&format!("sl-{id}-cl"))?;
        let sink_ns = Netns::new(&format!("sl-{id}-sink"))?;
        bridge(&lan_ns, "bo")?;
        bridge(&lan_ns, "bi")?;
        for ns in [&client_ns, &sink_ns] {
            // Addresses usable at once, and VIPs that move are not held back by DAD.
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        }
        veth(&client_ns, LAN_DEV, &lan_ns, "cl", None)?;
        bridge_port(&lan_ns, "cl", "bo")?;
        client_ns.add_addr(LAN_DEV, &format!("{CLIENT_OUTER_V4}/24"))?;
        client_ns.add_addr(LAN_DEV, &format!("{CLIENT_OUTER_V6}/64"))?;
        veth(&sink_ns, LAN_DEV, &lan_ns, "sink", None)?;
        bridge_port(&lan_ns, "sink", "bi")?;
        sink_ns.add_addr(LAN_DEV, &format!("{SINK_V4}/24"))?;
        sink_ns.add_addr(LAN_DEV, &format!("{SINK_V6}/64"))?;
        sink_ns.add_route("10.77.0.0/16", Some(IpAddr::V4(INNER_VIP_V4)), None)?;
        sink_ns.add_route("fd77::/64", Some(IpAddr::V6(INNER_VIP_V6)), None)?;

        let gateway_key = KeyPair::generate();
        let client_key = KeyPair::generate();
        let secret = KeyPair::generate().private; // 32 random bytes, base64 like a wg key
        let mut members = Vec::new();
        for i in 0..2 {
            members.push(Self::start_member(
                spec,
                &id,
                i,
                &lan_ns,
                &gateway_key,
                &client_key,
                &secret,
            )?);
        }

        let client = if spec.client {
            let ifname = format!("wg{id}c");
            let wg = WgInterface::start(&client_ns, WgImpl::WireguardGo, &ifname, &dir)?;
            wg.configure(
                &client_key,
                Some(CLIENT_PORT),
                &[WgPeer {
                    public_key: gateway_key.public.clone(),
                    endpoint: Some(SocketAddr::new(IpAddr::V4(VIP_V4), LISTEN_PORT)),
                    allowed_ips: ["10.77.0.0/16", "fd77::/64", "10.88.0.0/24", "fd88::/64"]
                        .map(String::from)
                        .to_vec(),
                    persistent_keepalive: None,
                }],
            )?;
            client_ns.add_addr(&ifname, &format!("{CLIENT_TUNNEL_V4}/32"))?;
            client_ns.add_addr(&ifname, &format!("{CLIENT_TUNNEL_V6}/128"))?;
            client_ns.link_up(&ifname, Some(1420))?;
            for net in ["10.77.0.0/16", "10.88.0.0/24", "fd77::/64", "fd88::/64"] {
                client_ns.add_route(net, None, Some(&ifname))?;
            }
            Some(wg)
        } else {
            None
        };
        Ok(VrrpPair {
            client,
            members,
            client_ns,
            sink_ns,
            lan_ns,
            id,
            gateway_key,
            client_key,
            dir,
        })
    }

    fn start_member(
        spec: &VrrpSpec,
        id: &str,
        i: usize,
        lan_ns: &Netns,
        gateway_key: &KeyPair,
        client_key: &KeyPair,
        secret: &str,
    ) -> Result<Member> {
        let tag = ["a", "b"][i];
        let ns = Netns::new(&format!("sl-{id}-g{}", i + 1))?;
        let dir = RunDir::new(&format!("{id}{tag}"))?;
        ns.enable_forwarding()?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        let (o4, o6, i4, i6) = gateway_addrs(i);
        veth(&ns, OUTER_DEV, lan_ns, &format!("g{}o", i + 1), None)?;
        bridge_port(lan_ns, &format!("g{}o", i + 1), "bo")?;
        veth(&ns, INSIDE_DEV, lan_ns, &format!("g{}i", i + 1), None)?;
        bridge_port(lan_ns, &format!("g{}i", i + 1), "bi")?;
        ns.add_addr(OUTER_DEV, &format!("{o4}/24"))?;
        ns.add_addr(OUTER_DEV, &format!("{o6}/64"))?;
        ns.add_addr(INSIDE_DEV, &format!("{i4}/24"))?;
        ns.add_addr(INSIDE_DEV, &format!("{i6}/64"))?;

        let ifname = format!("sl{id}{tag}");
        let mut extra = format!("\n[metrics]\nlisten = \"{METRICS}\"\n");
        if let Some(sync) = spec.ha {
            dir.write_private("ha.key", &format!("{secret}\n"))?;
            let members: Vec<String> = (0..2)
                .map(|j| format!("\"{}:{SYNC_PORT}\"", gateway_addrs(j).2))
                .collect();
            extra += &format!(
                "\n[ha]\nmode = \"vrrp\"\nnode = {i}\nmembers = [{}]\nsecret_file = \"ha.key\"\n\
                 vips = [\"{VIP_V4}\", \"{VIP_V6}\"]\nsync = {sync}\n",
                members.join(", ")
            );
        }
        let gspec = GatewaySpec {
            kind: GatewayKind::Sluice,
            ifname: ifname.clone(),
            key: gateway_key.clone(),
            listen_port: LISTEN_PORT,
            addresses: vec!["10.77.0.1/16".into(), "fd77::1/64".into()],
            mtu: 1420,
            peers: std::iter::once(GatewayPeer {
                public_key: client_key.public.clone(),
                allowed_ips: vec![
                    format!("{CLIENT_TUNNEL_V4}/32"),
                    format!("{CLIENT_TUNNEL_V6}/128"),
                ],
                endpoint: None,
                persistent_keepalive: None,
            })
            .chain(spec.peers.iter().cloned())
            .collect(),
            sluice_bin: Some(spec.sluice_bin.clone()),
            workers: 1,
            cores: vec![i % 2],
            extra_toml: extra,
            xdp_outer: spec.xdp.then(|| OUTER_DEV.to_string()),
            env: spec.env[i].clone(),
            status_file: true,
        };
        let gateway = Gateway::start(&ns, &gspec, &dir)?;
        let config = gateway
            .config_path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();

        let conf = dir.join("keepalived.conf");
        let vars = serde_json::json!({
            "sluice_vrrp_node_name": format!("g{}", i + 1),
            "sluice_interface_name": ifname,
            "sluice_outer_interface": OUTER_DEV,
            "sluice_healthz_url": format!("http://{METRICS}/healthz"),
            "sluice_vrrp_router_id": VRRP_ROUTER_ID,
            "sluice_vrrp_priority": PRIORITIES[i],
            "sluice_vrrp_virtual_ips": [
                format!("{VIP_V4}/24"),
                format!("{VIP_V6}/64"),
                format!("{INNER_VIP_V4}/24 dev {INSIDE_DEV}"),
                format!("{INNER_VIP_V6}/64 dev {INSIDE_DEV}"),
            ],
            "sluice_vrrp_auth_pass": "",
            "sluice_vrrp_unicast_peers": [],
            "sluice_vrrp_advert_int": 0.1,
            "sluice_vrrp_check_path": configs_dir().join("sluice-vrrp-check"),
            "sluice_vrrp_notify": spec.ha.is_some(),
            "sluice_binary_path": spec.sluice_bin,
            "sluice_gateway_config": config,
        });
        render_template(&configs_dir().join("keepalived.conf.j2"), &vars, &conf)?;
        let keepalived = Keepalived::start(&ns, &conf, &dir, "keepalived")?;
        Ok(Member {
            keepalived,
            gateway,
            ns,
            dir,
            index: i,
        })
    }

    /// Which members hold the outer VIP now.
    pub fn vip_holders(&self) -> Result<Vec<usize>> {
        let mut v = Vec::new();
        for m in &self.members {
            if m.holds_vip()? {
                v.push(m.index);
            }
        }
        Ok(v)
    }

    /// Wait until exactly member `i` holds the VIP (and the other does not).
    pub fn wait_master(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let r = wait_for(
            &format!("gateway {} to be the only VRRP master", i + 1),
            timeout,
            Duration::from_millis(20),
            || {
                for m in self.members.iter_mut() {
                    m.keepalived.ensure_running().map_err(fatal)?;
                }
                let h = self.vip_holders()?;
                if h == [i] {
                    Ok(Some(()))
                } else {
                    Err(format!("VIP held by members {h:?}").into())
                }
            },
        );
        r.map_err(|e| {
            let logs: Vec<String> = self
                .members
                .iter()
                .map(|m| {
                    format!(
                        "keepalived {} ({}):\n{}",
                        m.index + 1,
                        m.keepalived.log_path().display(),
                        m.keepalived.log_tail(25)
                    )
                })
                .collect();
            err!("{e}\n{}", logs.join("\n"))
        })
    }

    pub fn client(&self) -> Result<&WgInterface> {
        self.client
            .as_ref()
            .ok_or_else(|| err!("the pair was built without a client"))
    }

    /// The client's latest handshake with the gateway key, as Unix seconds (0: none).
    pub fn client_handshake(&self) -> Result<u64> {
        Ok(self
            .client()?
            .peer(&self.gateway_key.public)?
            .latest_handshake)
    }

    /// The client's latest handshake as Unix time in seconds with its fraction (0: none),
    /// read over the UAPI socket (`wg show` drops the nanoseconds).
    pub fn client_handshake_precise(&self) -> Result<f64> {
        let text = super::wg::uapi_get(self.client()?.ifname())?;
        let (mut sec, mut nsec) = (0u64, 0u64);
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("last_handshake_time_sec=") {
                sec = v.parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("last_handshake_time_nsec=") {
                nsec = v.parse().unwrap_or(0);
            }
        }
        Ok(sec as f64 + nsec as f64 * 1e-9)
    }

    /// Split the pair's VRRP: the gateways' ports on the outside bridge are isolated from
    /// each other (each still reaches the client), so neither hears the other's adverts and
    /// both become master. `false` joins them again.
    pub fn partition_vrrp(&self, on: bool) -> Result<()> {
        let v = if on { "on" } else { "off" };
        for i in 1..=2 {
            self.lan_ns.run(&[
                "bridge",
                "link",
                "set",
                "dev",
                &format!("g{i}o"),
                "isolated",
                v,
            ])?;
        }
        Ok(())
    }

    /// Route the sink's replies for the tunnel's IPv4 through gateway `v4` and its IPv6
    /// through gateway `v6` (their own inside addresses) instead of the inside VIP.
    pub fn route_inside_via(&self, v4: usize, v6: usize) -> Result<()> {
        let (_, _, g4, _) = gateway_addrs(v4);
        let (_, _, _, g6) = gateway_addrs(v6);
        self.sink_ns.ip(&[
            "-4",
            "route",
            "replace",
            "10.77.0.0/16",
            "via",
            &g4.to_string(),
        ])?;
        self.sink_ns.ip(&[
            "-6",
            "route",
            "replace",
            "fd77::/64",
            "via",
            &g6.to_string(),
        ])?;
        Ok(())
    }

    /// Logs of every process, for failure messages.
    pub fn logs(&mut self, lines: usize) -> String {
        let mut out = Vec::new();
        if let Some(c) = &self.client {
            out.push(format!(
                "client {}: {}",
                c.ifname(),
                super::wg::uapi_get(c.ifname()).unwrap_or_else(|e| e.0)
            ));
        }
        for m in self.members.iter_mut() {
            match m.gateway.status() {
                Ok(s) => out.push(format!(
                    "gateway {} status: peers {:?}, drops {:?}, rx {:?} tx {:?}",
                    m.index + 1,
                    s.peers,
                    s.nonzero_drops(),
                    s.rx_packets,
                    s.tx_packets
                )),
                Err(e) => out.push(format!("gateway {} status: {e}", m.index + 1)),
            }
            out.push(m.gateway.log_tail(lines));
            out.push(format!(
                "keepalived {} ({}):\n{}",
                m.index + 1,
                m.keepalived.log_path().display(),
                m.keepalived.log_tail(lines)
            ));
        }
        out.join("\n")
    }
}
