//! An anycast group of two sluice gateways behind a BGP router, with several clients.
//!
//! ```text
//!  client K (K = 0..n)         router sl-ID-rt                gateway I (I = 0, 1) sl-ID-gI
//!  sl-ID-cK                    +------------------------+     +----------------------------+
//!  +-----------------------+   | cK 198.18.(K+1).1/24   |     | lo: VIP 192.0.2.10/32      |
//!  | wireguard-go wgIDcK   |---|                        |     |     2001:db8::10/128       |
//!  |  10.77.0.(K+2)/32     |   | gI 10.201.(I+1).1/24   |-----| uplink 10.201.(I+1).2/24   |
//!  |  Endpoint = VIP:51820 |   |    fd20:(I+1)::1/64    |     |        fd20:(I+1)::2/64    |
//!  | uplink 198.18.(K+1).2 |   | BIRD AS 65000: BGP and |     | default via the router     |
//!  +-----------------------+   |  BFD to both gateways, |     |  (sluice answers from the  |
//!                              |  ECMP (merge paths)    |     |  VIP by its sticky source) |
//!                              |  into the kernel table |     | sluice (XDP on the uplink, |
//!                              +------------------------+     |  or sockets; TUN slIDa/b)  |
//!                                                             | BIRD AS 65010 from         |
//!  sink sl-ID-sk                                              |  configs/bird.conf.j2      |
//!  lo 10.88.0.100/32                                          | sluice ha watch, the       |
//!  gI 10.88.(I+1).2/24 ---------------------------------------|  ExecStart of configs/     |
//!  (both gateways route 10.88.0.100 to it)                    |  sluice-anycast-watch...   |
//!                                                             | in 10.88.(I+1).1/24        |
//!                                                             +----------------------------+
//! ```
//!
//! Both gateways share the private key and the peer set (every client). Each gateway's BIRD
//! announces the VIP (/32 and /128) while its watcher, polling sluice's `/healthz`, says it is
//! healthy; the router installs one route with both gateways as next hops and hashes each
//! client's flow onto one of them. The gateway-side BIRD configuration and the watcher's
//! command line are the deployable templates in `configs/`, rendered with python3-jinja2 as
//! Ansible renders them; the router's BIRD configuration is the test's own
//! ([`router_bird_conf`]).

use super::gateway::{Gateway, GatewayKind, GatewayPeer, GatewaySpec, GatewayStatus};
use super::ha::{configs_dir, render_template};
use super::netns::veth;
use super::wg::{WgImpl, WgInterface, WgPeer};
use super::{cmd, fatal, tools, unique_id, wait_for, Daemon, KeyPair, Netns, Result, RunDir};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The anycast addresses every member announces.
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// The sink's address, behind both gateways.
pub const SINK_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 100);
pub const LISTEN_PORT: u16 = 51820;
/// Each member's sync address port (with `[ha]`).
pub const SYNC_PORT: u16 = 51821;
pub const METRICS: &str = "127.0.0.1:9586";
pub const GATEWAY_AS: u32 = 65010;
pub const ROUTER_AS: u32 = 65000;
/// BFD intervals on both sides (ms) and the detection multiplier: 1 s detection. BFD is not
/// what the tests time (the watcher withdraws a stopped or unhealthy sluice; BIRD stays up);
/// at 100 ms x 3 it flapped on a busy 2-core CI machine and tore the BGP sessions down.
pub const BFD_INTERVAL_MS: u32 = 200;
pub const BFD_MULTIPLIER: u32 = 5;
/// How often the watcher probes `/healthz` (the template's default).
pub const WATCH_INTERVAL_MS: u32 = 200;
/// The first port of the sink's stream sockets (one per client).
pub const SINK_PORT: u16 = 9000;

/// The router-side and gateway-side addresses of gateway `i`'s link.
pub fn gateway_link(i: usize) -> (Ipv4Addr, Ipv4Addr, Ipv6Addr, Ipv6Addr) {
    let n = (i + 1) as u8;
    let n16 = (i + 1) as u16;
    (
        Ipv4Addr::new(10, 201, n, 1),
        Ipv4Addr::new(10, 201, n, 2),
        Ipv6Addr::new(0xfd20, n16, 0, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0xfd20, n16, 0, 0, 0, 0, 0, 2),
    )
}

/// Client `k`'s outer address, the router's address on its link, and its tunnel address.
pub fn client_addrs(k: usize) -> (Ipv4Addr, Ipv4Addr, Ipv4Addr) {
    let n = (k + 1) as u8;
    (
        Ipv4Addr::new(198, 18, n, 2),
        Ipv4Addr::new(198, 18, n, 1),
        Ipv4Addr::new(10, 77, 0, (k + 2) as u8),
    )
}

/// What to build.
#[derive(Clone, Debug)]
pub struct AnycastSpec {
    pub sluice_bin: PathBuf,
    pub clients: usize,
    /// Environment for each gateway's sluice (e.g. `SLUICE_FAULT_INJECT` for one).
    pub env: [Vec<(String, String)>; 2],
    /// Run sluice with an `[ha]` section (mode anycast, session sync between the two).
    pub sync: bool,
    /// Run sluice's XDP fast path on the uplink (`mode = "xdp"`); false: the socket path.
    pub xdp: bool,
}

impl AnycastSpec {
    pub fn new(sluice_bin: PathBuf, clients: usize) -> AnycastSpec {
        AnycastSpec {
            sluice_bin,
            clients,
            env: [Vec::new(), Vec::new()],
            sync: false,
            xdp: false,
        }
    }
}

/// BIRD in a namespace, in the foreground with its own control socket; stopped on drop.
#[derive(Debug)]
pub struct Bird {
    daemon: Daemon,
    socket: PathBuf,
    conf: PathBuf,
}

impl Bird {
    /// Check `conf` (`bird -p`), start `bird -f -c CONF -s SOCKET` in `ns`, wait until
    /// `birdc` gets an answer. `name` names the log and socket in `dir`.
    pub fn start(ns: &Netns, conf: &Path, dir: &RunDir, name: &str) -> Result<Bird> {
        let conf_s = conf.to_string_lossy().into_owned();
        cmd::run(None, &["bird", "-p", "-c", &conf_s])
            .map_err(|e| err!("bird -p rejected {conf_s}: {e}"))?;
        let socket = dir.join(&format!("{name}.ctl"));
        let sock_s = socket.to_string_lossy().into_owned();
        let log = dir.join(&format!("{name}.log"));
        let argv = ["bird", "-f", "-c", &conf_s, "-s", &sock_s];
        let mut daemon = Daemon::spawn(
            &format!("bird {name} in {}", ns.name()),
            cmd::command(Some(ns.name()), &argv),
            &log,
            vec![socket.clone()],
        )?;
        let bird = wait_for(
            &format!("bird {name} to answer on {sock_s}"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                daemon.ensure_running().map_err(fatal)?;
                if !socket.exists() {
                    return Ok(None);
                }
                Ok(cmd::run(None, &["birdc", "-s", &sock_s, "show", "status"])
                    .ok()
                    .map(|_| ()))
            },
        );
        bird.map_err(|e| err!("{e}\nbird log:\n{}", daemon.log_tail(20)))?;
        Ok(Bird {
            daemon,
            socket,
            conf: conf.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// `birdc -s SOCKET args...`; its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let sock = self.socket.to_string_lossy();
        let mut argv = vec!["birdc", "-s", &sock];
        argv.extend_from_slice(args);
        cmd::run(None, &argv)
    }

    /// The state column of `show protocols` for protocol `name` (`up`, `down`, `start`).
    pub fn protocol_state(&self, name: &str) -> Result<String> {
        let out = self.birdc(&["show", "protocols", name])?;
        out.lines()
            .find_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.first() == Some(&name) && w.len() >= 4).then(|| w[3].to_string())
            })
            .ok_or_else(|| err!("no protocol {name} in:\n{out}"))
    }

    /// The BGP state (`Established`, `Active`, ...) of protocol `name`.
    pub fn bgp_state(&self, name: &str) -> Result<String> {
        let out = self.birdc(&["show", "protocols", name])?;
        out.lines()
            .find_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.first() == Some(&name)).then(|| w.last().map(|s| s.to_string()))
            })
            .flatten()
            .ok_or_else(|| err!("no protocol {name} in:\n{out}"))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        self.daemon.ensure_running()
    }
}

/// The router's BIRD configuration: eBGP (AS [`ROUTER_AS`]) with BFD to every gateway, over
/// IPv4 and IPv6, everything learnt exported to the kernel with equal-cost paths merged.
pub fn router_bird_conf(gateways: usize) -> String {
    let mut s = format!(
        "log stderr all;\n\
         router id 10.201.0.1;\n\
         protocol device {{ }}\n\
         protocol kernel kernel4 {{ merge paths on; ipv4 {{ import none; export all; }}; }}\n\
         protocol kernel kernel6 {{ merge paths on; ipv6 {{ import none; export all; }}; }}\n\
         protocol bfd {{ interface \"*\" {{ min rx interval {BFD_INTERVAL_MS} ms; \
         min tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }}; }}\n"
    );
    for i in 0..gateways {
        let (_, g4, _, g6) = gateway_link(i);
        for (name, addr, family) in [
            (format!("gw{i}v4"), IpAddr::V4(g4), "ipv4"),
            (format!("gw{i}v6"), IpAddr::V6(g6), "ipv6"),
        ] {
            s.push_str(&format!(
                "protocol bgp {name} {{\n  local as {ROUTER_AS};\n  neighbor {addr} as {GATEWAY_AS};\n  \
                 bfd on;\n  connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 5;\n  \
                 {family} {{ import all; export none; }};\n}}\n"
            ));
        }
    }
    s
}

/// The variables of `configs/bird.conf.j2` and `configs/sluice-anycast-watch.service.j2` for
/// gateway `i`, as an Ansible inventory would set them.
pub fn gateway_template_vars(
    i: usize,
    sluice_bin: &Path,
    bird_socket: &Path,
) -> Result<serde_json::Value> {
    let (r4, g4, r6, _) = gateway_link(i);
    let birdc = tools::find_binary("birdc").ok_or_else(|| err!("birdc is missing (bird2)"))?;
    Ok(serde_json::json!({
        "sluice_anycast_prefixes": [VIP_V4.to_string(), VIP_V6.to_string()],
        "sluice_bgp_local_as": GATEWAY_AS,
        "sluice_bgp_router_id": g4.to_string(),
        "sluice_bgp_neighbors": [
            {"name": "upstream4", "address": r4.to_string(), "as": ROUTER_AS},
            {"name": "upstream6", "address": r6.to_string(), "as": ROUTER_AS},
        ],
        "sluice_bgp_bfd": true,
        "sluice_bfd_interval_ms": BFD_INTERVAL_MS,
        "sluice_bfd_multiplier": BFD_MULTIPLIER,
        "sluice_bgp_connect_retry": 1,
        "sluice_bird_log": "stderr all",
        "sluice_binary_path": sluice_bin.to_string_lossy(),
        "sluice_healthz_url": format!("http://{METRICS}/healthz"),
        "sluice_anycast_watch_interval_ms": WATCH_INTERVAL_MS,
        "sluice_birdc": birdc.to_string_lossy(),
        "sluice_bird_socket": bird_socket.to_string_lossy(),
        "sluice_service_name": "sluice",
    }))
}

/// The `ExecStart=` command line of a rendered systemd unit.
pub fn exec_start(unit: &str) -> Result<String> {
    unit.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .map(str::to_string)
        .ok_or_else(|| err!("no ExecStart= line in the unit:\n{unit}"))
}

/// One member of the group.
#[derive(Debug)]
pub struct Member {
    pub ns: Netns,
    pub dir: RunDir,
    pub gateway: Option<Gateway>,
    pub bird: Bird,
    pub watcher: Option<Daemon>,
}

impl Member {
    pub fn status(&self) -> Result<GatewayStatus> {
        self.gateway
            .as_ref()
            .ok_or_else(|| err!("{}: sluice is not running", self.ns.name()))?
            .status()
    }

    /// sluice's `/healthz` answer from inside the namespace: Ok for 200, else why not.
    pub fn healthz(&self) -> Result<std::result::Result<(), String>> {
        let t = crate::hawatch::Target::parse(&format!("http://{METRICS}/healthz"))
            .map_err(|e| err!("{e}"))?;
        self.ns.enter(|| {
            crate::hawatch::probe(&t, Duration::from_millis(500)).map_err(|f| f.to_string())
        })
    }
}

/// One client: its namespace, its wireguard-go interface and keys.
#[derive(Debug)]
pub struct Client {
    pub ns: Netns,
    pub wg: WgInterface,
    pub key: KeyPair,
    pub tunnel: Ipv4Addr,
}

/// The whole group. Dropping it stops everything and removes the namespaces (processes
/// first: fields drop in order).
#[derive(Debug)]
pub struct AnycastBed {
    pub id: String,
    pub clients: Vec<Client>,
    pub members: Vec<Member>,
    pub router_bird: Bird,
    pub router: Netns,
    pub sink: Netns,
    pub gateway_key: KeyPair,
    spec: AnycastSpec,
    client_keys: Vec<KeyPair>,
    group_secret: String,
    pub dir: RunDir,
}

fn no_rp_filter(ns: &Netns) -> Result<()> {
    for k in ["all", "default"] {
        ns.sysctl(&format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
    }
    Ok(())
}

impl AnycastBed {
    /// Build the picture above and wait until every BGP session is established.
    pub fn build(spec: &AnycastSpec) -> Result<AnycastBed> {
        let id = unique_id();
        let dir = RunDir::new(&format!("anycast-{id}"))?;
        let router = Netns::new(&format!("sl-{id}-rt"))?;
        let sink = Netns::new(&format!("sl-{id}-sk"))?;
        no_rp_filter(&router)?;
        no_rp_filter(&sink)?;
        router.enable_forwarding()?;
        // Hash flows by ports too, so each client's flow (its source port) picks a member.
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        router.sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
        sink.enable_forwarding()?;
        sink.add_addr("lo", &format!("{SINK_V4}/32"))?;
        let gateway_key = KeyPair::generate();
        let client_keys: Vec<KeyPair> = (0..spec.clients).map(|_| KeyPair::generate()).collect();
        let group_secret = KeyPair::generate().private;
        let router_conf = dir.join("router-bird.conf");
        std::fs::write(&router_conf, router_bird_conf(2))
            .map_err(|e| err!("writing {}: {e}", router_conf.display()))?;
        let router_bird = Bird::start(&router, &router_conf, &dir, "router-bird")?;
        let mut members = Vec::new();
        for i in 0..2 {
            let (r4, g4, r6, g6) = gateway_link(i);
            let ns = Netns::new(&format!("sl-{id}-g{i}"))?;
            no_rp_filter(&ns)?;
            ns.enable_forwarding()?;
            let mdir = RunDir::new(&format!("anycast-{id}-g{i}"))?;
            veth(&router, &format!("g{i}"), &ns, "uplink", None)?;
            router.add_addr(&format!("g{i}"), &format!("{r4}/24"))?;
            router.add_addr(&format!("g{i}"), &format!("{r6}/64"))?;
            ns.add_addr("uplink", &format!("{g4}/24"))?;
            ns.add_addr("uplink", &format!("{g6}/64"))?;
            ns.add_addr("lo", &format!("{VIP_V4}/32"))?;
            ns.add_addr("lo", &format!("{VIP_V6}/128"))?;
            // No `src` on these routes: the kernel would pick the uplink's address for replies,
            // and sluice answers from the anycast address the client reached (its sticky
            // source) by itself.
            ns.add_route("0.0.0.0/0", Some(IpAddr::V4(r4)), None)?;
            ns.add_route("::/0", Some(IpAddr::V6(r6)), None)?;
            // The inside: a link to the sink.
            let (in_gw, in_sink) = (format!("10.88.{}.1", i + 1), format!("10.88.{}.2", i + 1));
            veth(&ns, "in", &sink, &format!("g{i}"), None)?;
            ns.add_addr("in", &format!("{in_gw}/24"))?;
            sink.add_addr(&format!("g{i}"), &format!("{in_sink}/24"))?;
            ns.add_route(
                &format!("{SINK_V4}/32"),
                Some(in_sink.parse().map_err(|e| err!("{e}"))?),
                None,
            )?;
            if i == 0 {
                sink.add_route(
                    "10.77.0.0/16",
                    Some(in_gw.parse().map_err(|e| err!("{e}"))?),
                    None,
                )?;
            }
            // BIRD from the deployable template.
            let bird_sock = mdir.join("bird.ctl");
            let vars = gateway_template_vars(i, &spec.sluice_bin, &bird_sock)?;
            let bird_conf = mdir.join("bird.conf");
            render_template(&configs_dir().join("bird.conf.j2"), &vars, &bird_conf)?;
            let bird = Bird::start(&ns, &bird_conf, &mdir, "bird")?;
            if bird.socket() != bird_sock {
                return Err(err!("bird socket {} unexpected", bird.socket().display()));
            }
            members.push(Member {
                ns,
                dir: mdir,
                gateway: None,
                bird,
                watcher: None,
            });
        }
        // The clients.
        let mut clients = Vec::new();
        for (k, key) in client_keys.iter().enumerate() {
            let (outer, rtr, tunnel) = client_addrs(k);
            let ns = Netns::new(&format!("sl-{id}-c{k}"))?;
            veth(&router, &format!("c{k}"), &ns, "uplink", None)?;
            router.add_addr(&format!("c{k}"), &format!("{rtr}/24"))?;
            ns.add_addr("uplink", &format!("{outer}/24"))?;
            ns.add_route("default", Some(IpAddr::V4(rtr)), None)?;
            let ifname = format!("wg{id}c{k}");
            let wg = WgInterface::start(&ns, WgImpl::WireguardGo, &ifname, &dir)?;
            wg.configure(
                key,
                Some(40000 + k as u16),
                &[WgPeer {
                    public_key: gateway_key.public.clone(),
                    endpoint: Some(SocketAddr::new(IpAddr::V4(VIP_V4), LISTEN_PORT)),
                    allowed_ips: vec!["10.88.0.0/16".into()],
                    persistent_keepalive: None,
                }],
            )?;
            ns.add_addr(&ifname, &format!("{tunnel}/32"))?;
            ns.link_up(&ifname, Some(1420))?;
            ns.add_route("10.88.0.0/16", None, Some(&ifname))?;
            clients.push(Client {
                ns,
                wg,
                key: key.clone(),
                tunnel,
            });
        }
        let mut bed = AnycastBed {
            id,
            clients,
            members,
            router_bird,
            router,
            sink,
            gateway_key,
            spec: spec.clone(),
            client_keys,
            group_secret,
            dir,
        };
        for i in 0..2 {
            bed.start_gateway(i, None)?;
            bed.start_watcher(i)?;
        }
        bed.wait_sessions(Duration::from_secs(30))?;
        Ok(bed)
    }

    /// Start member `i`'s sluice (again), with `env` instead of the spec's if given.
    pub fn start_gateway(&mut self, i: usize, env: Option<Vec<(String, String)>>) -> Result<()> {
        let (spec, client_keys, group_secret) = (&self.spec, &self.client_keys, &self.group_secret);
        let m = &mut self.members[i];
        if let Some(mut g) = m.gateway.take() {
            g.stop(super::process::STOP_GRACE);
        }
        let mut extra = format!("\n[metrics]\nlisten = \"{METRICS}\"\n");
        if spec.sync {
            m.dir
                .write_private("ha.key", &format!("{group_secret}\n"))?;
            let members: Vec<String> = (0..2)
                .map(|j| format!("\"10.88.{}.1:{SYNC_PORT}\"", j + 1))
                .collect();
            extra.push_str(&format!(
                "\n[ha]\nmode = \"anycast\"\nnode = {i}\nmembers = [{}]\n\
                 secret_file = \"ha.key\"\nvips = [\"{VIP_V4}\", \"{VIP_V6}\"]\nsync = true\n",
                members.join(", ")
            ));
            // The members reach each other's sync address through the sink's two links.
            let other = format!("10.88.{}.0/24", 2 - i);
            let via = IpAddr::V4(Ipv4Addr::new(10, 88, (i + 1) as u8, 2));
            if !m.ns.ip(&["-4", "route", "show", &other])?.contains("via") {
                m.ns.add_route(&other, Some(via), None)?;
            }
        }
        let gspec = GatewaySpec {
            kind: GatewayKind::Sluice,
            ifname: format!("sl{}{}", self.id, ['a', 'b'][i]),
            key: self.gateway_key.clone(),
            listen_port: LISTEN_PORT,
            addresses: vec!["10.77.0.1/16".into()],
            mtu: 1420,
            peers: client_keys
                .iter()
                .enumerate()
                .map(|(k, key)| GatewayPeer {
                    public_key: key.public.clone(),
                    allowed_ips: vec![format!("{}/32", client_addrs(k).2)],
                    endpoint: None,
                    persistent_keepalive: None,
                })
                .collect(),
            sluice_bin: Some(spec.sluice_bin.clone()),
            workers: 1,
            cores: vec![i % 2],
            extra_toml: extra,
            xdp_outer: spec.xdp.then(|| "uplink".to_string()),
            env: env.unwrap_or_else(|| spec.env[i].clone()),
            status_file: true,
        };
        m.gateway = Some(Gateway::start(&m.ns, &gspec, &m.dir)?);
        Ok(())
    }

    /// SIGKILL member `i`'s sluice, and remove the sockets it could not remove itself (its
    /// `wg` API socket and its control socket).
    pub fn kill_gateway(&mut self, i: usize) {
        if let Some(mut g) = self.members[i].gateway.take() {
            g.stop_with(libc::SIGKILL, super::process::STOP_GRACE);
            let name = g.ifname().to_string();
            let _ = std::fs::remove_file(super::wg::uapi_socket(&name));
            let _ = std::fs::remove_file(format!("/var/run/sluice/{name}.ctl"));
        }
    }

    /// Render `configs/sluice-anycast-watch.service.j2` for member `i` and run its
    /// `ExecStart=` line in the member's namespace, as systemd would.
    fn start_watcher(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let vars = gateway_template_vars(i, &self.spec.sluice_bin, m.bird.socket())?;
        let unit_path = m.dir.join("sluice-anycast-watch.service");
        render_template(
            &configs_dir().join("sluice-anycast-watch.service.j2"),
            &vars,
            &unit_path,
        )?;
        let unit = std::fs::read_to_string(&unit_path)
            .map_err(|e| err!("reading {}: {e}", unit_path.display()))?;
        let line = exec_start(&unit)?;
        if line.contains('$') || line.contains('%') {
            return Err(err!(
                "ExecStart has `$` or `%`, which systemd and sh read differently: {line}"
            ));
        }
        let log = m.dir.join("watch.log");
        let c = cmd::command(
            Some(m.ns.name()),
            &["/bin/sh", "-c", &format!("exec {line}")],
        );
        m.watcher = Some(Daemon::spawn(
            &format!("sluice ha watch in {}", m.ns.name()),
            c,
            &log,
            vec![],
        )?);
        Ok(())
    }

    /// Wait until the router has both gateways' BGP sessions (IPv4 and IPv6) established.
    pub fn wait_sessions(&mut self, timeout: Duration) -> Result<()> {
        let r = wait_for(
            "the router's BGP sessions to both gateways",
            timeout,
            Duration::from_millis(100),
            || {
                for m in self.members.iter_mut() {
                    m.bird.ensure_running().map_err(fatal)?;
                }
                self.router_bird.ensure_running().map_err(fatal)?;
                let mut states = Vec::new();
                for i in 0..2 {
                    for f in ["v4", "v6"] {
                        let s = self.router_bird.bgp_state(&format!("gw{i}{f}"))?;
                        states.push(format!("gw{i}{f}={s}"));
                    }
                }
                if states.iter().all(|s| s.ends_with("=Established")) {
                    Ok(Some(()))
                } else {
                    Err(states.join(" ").into())
                }
            },
        );
        r.map_err(|e| err!("{e}\nrouter bird:\n{}", self.router_bird.log_tail(20)))
    }

    /// The member the router's ECMP route sends client `k`'s WireGuard flow to, as the kernel
    /// says (`ip route get` with the flow's addresses and ports, as received on its link).
    pub fn flow_member(&self, k: usize, client_port: u16) -> Result<Option<usize>> {
        let (outer, _, _) = client_addrs(k);
        let out = self.router.ip(&[
            "-4",
            "route",
            "get",
            &VIP_V4.to_string(),
            "from",
            &outer.to_string(),
            "iif",
            &format!("c{k}"),
            "ipproto",
            "udp",
            "sport",
            &client_port.to_string(),
            "dport",
            &LISTEN_PORT.to_string(),
        ])?;
        Ok(parse_next_hops(&out)
            .into_iter()
            .find_map(AnycastBed::member_of_hop))
    }

    /// Give the clients listen ports such that the router's flow hash sends some of them to
    /// each member (with L4 hashing, a client's source port picks its member); returns each
    /// client's member. Needs the ECMP route in place.
    pub fn spread_clients(&mut self) -> Result<Vec<usize>> {
        let n = self.clients.len();
        if n < 2 {
            return Err(err!("spreading needs at least two clients"));
        }
        let mut owners = Vec::with_capacity(n);
        for k in 0..n {
            let mut port = 40000 + (k as u16) * 100;
            // The first client goes to member 0, the second to member 1, the rest anywhere.
            let want = (k < 2).then_some(k);
            let member = loop {
                let m = self
                    .flow_member(k, port)?
                    .ok_or_else(|| err!("no route from client {k} to the VIP"))?;
                if want.is_none_or(|w| w == m) {
                    break m;
                }
                port += 1;
                if port > 40000 + (k as u16) * 100 + 99 {
                    return Err(err!("no port of client {k} hashes to member {want:?}"));
                }
            };
            self.clients[k]
                .wg
                .wg_set(&["listen-port", &port.to_string()])?;
            owners.push(member);
        }
        Ok(owners)
    }

    /// The next hops of the router's kernel route to `prefix` (empty: no route).
    pub fn next_hops(&self, prefix: &str) -> Result<Vec<IpAddr>> {
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        let out = self.router.ip(&[family, "route", "show", prefix])?;
        Ok(parse_next_hops(&out))
    }

    /// The gateway index whose link address is `hop`.
    pub fn member_of_hop(hop: IpAddr) -> Option<usize> {
        (0..2).find(|&i| {
            let (_, g4, _, g6) = gateway_link(i);
            hop == IpAddr::V4(g4) || hop == IpAddr::V6(g6)
        })
    }

    /// The members the router's route to `prefix` currently points at, sorted.
    pub fn route_members(&self, prefix: &str) -> Result<Vec<usize>> {
        let mut v: Vec<usize> = self
            .next_hops(prefix)?
            .into_iter()
            .filter_map(AnycastBed::member_of_hop)
            .collect();
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    /// Wait until both the /32 and the /128 route point at exactly `want` members.
    pub fn wait_route_members(&self, want: &[usize], timeout: Duration) -> Result<()> {
        let (p4, p6) = (format!("{VIP_V4}/32"), format!("{VIP_V6}/128"));
        wait_for(
            &format!("the router's VIP routes to point at members {want:?}"),
            timeout,
            Duration::from_millis(50),
            || {
                let (a, b) = (self.route_members(&p4)?, self.route_members(&p6)?);
                if a == want && b == want {
                    Ok(Some(()))
                } else {
                    Err(format!("/32 -> {a:?}, /128 -> {b:?}").into())
                }
            },
        )
    }

    /// Logs of everything, for failure messages.
    pub fn logs(&mut self, lines: usize) -> String {
        let mut s = format!("router bird:\n{}\n", self.router_bird.log_tail(lines));
        for (i, m) in self.members.iter_mut().enumerate() {
            s.push_str(&format!("member {i} bird:\n{}\n", m.bird.log_tail(lines)));
            if let Some(w) = &m.watcher {
                // The watcher's own lines (tracing, timestamped), not birdc's chatter.
                let all = w.log_tail(lines * 20);
                let own: Vec<&str> = all.lines().filter(|l| l.starts_with("20")).collect();
                let tail = own[own.len().saturating_sub(lines)..].join("\n");
                s.push_str(&format!("member {i} watcher:\n{tail}\n"));
            }
            if let Some(g) = m.gateway.as_mut() {
                s.push_str(&format!("member {i} sluice:\n{}\n", g.log_tail(lines)));
            }
        }
        s
    }
}

/// The addresses after every `via` in `ip route show` output (single path or `nexthop`
/// lines), skipping an address-family word (`via inet6 fe80::1`).
pub fn parse_next_hops(out: &str) -> Vec<IpAddr> {
    let words: Vec<&str> = out.split_whitespace().collect();
    let mut hops = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if *w != "via" {
            continue;
        }
        let mut j = i + 1;
        if matches!(words.get(j), Some(&"inet") | Some(&"inet6")) {
            j += 1;
        }
        if let Some(a) = words.get(j).and_then(|a| a.parse().ok()) {
            hops.push(a);
        }
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_of_single_and_multipath_routes() {
        let multi = "192.0.2.10 proto bird metric 32 \n\tnexthop via 10.201.1.2 dev g0 weight 1 \n\
                     \tnexthop via 10.201.2.2 dev g1 weight 1 \n";
        assert_eq!(
            parse_next_hops(multi),
            vec![
                "10.201.1.2".parse::<IpAddr>().unwrap(),
                "10.201.2.2".parse().unwrap()
            ]
        );
        let single = "2001:db8::10 via inet6 fd20:2::2 dev g1 proto bird metric 32 pref medium\n";
        assert_eq!(
            parse_next_hops(single),
            vec!["fd20:2::2".parse::<IpAddr>().unwrap()]
        );
        assert!(parse_next_hops("").is_empty());
        assert_eq!(
            AnycastBed::member_of_hop("fd20:2::2".parse().unwrap()),
            Some(1)
        );
    }

    #[test]
    fn exec_start_is_found() {
        let unit = "[Service]\nType=simple\nExecStart=/bin/x --a \"b c\"\nExecStopPost=-/bin/y\n";
        assert_eq!(exec_start(unit).unwrap(), "/bin/x --a \"b c\"");
        assert!(exec_start("[Service]\n").is_err());
    }
}
