#![allow(clippy::unwrap_used)]
//! HA session sync between two real sluice gateways, with the role changed by hand (no
//! keepalived): a wireguard-go client streams UDP through the VIP to an inside sink; the VIP
//! moves from gateway A to gateway B (`ip addr del` on A, `ip addr add` on B, `sluice ha
//! notify` on B), then A is SIGKILLed.
//!
//! ```text
//!   client sl-ID-hc ---+                                 +--- sink sl-ID-hk 10.88.0.2
//!   198.51.100.100     |  bo (bridge, sl-ID-hl)  bi      |    routes 10.77/16 via 10.88.0.1
//!   wireguard-go       +----------+-------------+--------+
//!   endpoint VIP:51820            |             |
//!                       A sl-ID-ha (node 0)   B sl-ID-hb (node 1)
//!                       outer 192.0.2.1         outer 192.0.2.2      (+ VIP 198.51.100.10/24)
//!                       inside 10.88.0.11       inside 10.88.0.12    (+ 10.88.0.1/24 inner VIP)
//!                       sync 10.88.0.11:51821   sync 10.88.0.12:51821
//! ```
//!
//! With sync: B holds the client's session before the move, takes it over when the client's
//! data arrives (no handshake needed: packets authenticate on the old session at B), then a
//! fresh handshake replaces it. Forged and replayed sync datagrams sent at B are counted and
//! change nothing. Without sync (`sync = false`): B has nothing to take over; the client must
//! re-handshake, which the test reports.
//!
//! Root only; under `CI=true` a missing prerequisite is a failure, never a skip.

mod netns_common;

use netns_common::{xdp_from_env, OrFail, SLUICE};
use sluice::proto::hasync::{GroupKey, Header, Record, SyncSender};
use sluice::testbed::gateway::{Gateway, GatewayKind, GatewayPeer, GatewaySpec};
use sluice::testbed::ha::{bridge, bridge_port, StreamProbe};
use sluice::testbed::netns::veth;
use sluice::testbed::tools::{require_for_test, Tool};
use sluice::testbed::wg::{WgImpl, WgInterface, WgPeer};
use sluice::testbed::{registry, unique_id, wait_for, KeyPair, Netns, NotYet, RunDir};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

const TOOLS: [Tool; 4] = [Tool::Iproute2, Tool::Sysctl, Tool::Wg, Tool::WireguardGo];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const INNER_VIP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const CLIENT_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const SINK: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const SYNC_PORT: u16 = 51821;
const SINK_PORT: u16 = 9000;
const PROBE_PORT: u16 = 9001;
const WAIT: Duration = Duration::from_secs(30);
/// Without sync, wireguard-go re-handshakes only after KEEPALIVE + REKEY_TIMEOUT of silence.
const REHANDSHAKE_WAIT: Duration = Duration::from_secs(60);

fn outer_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1 + i as u8)
}

fn inside_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 0, 11 + i as u8)
}

/// Field order is drop order: sluice before its namespace.
struct Member {
    gateway: Gateway,
    ns: Netns,
    _dir: RunDir,
    config: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        // The gateway guard also removes the control socket a SIGKILLed sluice leaves behind.
        self.gateway.stop(Duration::from_secs(5));
    }
}

struct Bed {
    probe: Option<StreamProbe>,
    _client: WgInterface,
    members: Vec<Member>,
    client_ns: Netns,
    sink_ns: Netns,
    _lan: Netns,
    secret: String,
    client_key: KeyPair,
    _dir: RunDir,
}

impl Bed {
    fn build(sync: bool) -> Bed {
        let id = unique_id();
        let dir = RunDir::new(&format!("{id}hs")).or_fail("run dir");
        let lan = Netns::new(&format!("sl-{id}-hl")).or_fail("lan ns");
        let client_ns = Netns::new(&format!("sl-{id}-hc")).or_fail("client ns");
        let sink_ns = Netns::new(&format!("sl-{id}-hk")).or_fail("sink ns");
        bridge(&lan, "bo").or_fail("bridge bo");
        bridge(&lan, "bi").or_fail("bridge bi");
        veth(&client_ns, "to-lan", &lan, "cl", None).or_fail("client veth");
        bridge_port(&lan, "cl", "bo").or_fail("client port");
        client_ns
            .add_addr("to-lan", &format!("{CLIENT}/24"))
            .or_fail("client addr");
        veth(&sink_ns, "to-lan", &lan, "sink", None).or_fail("sink veth");
        bridge_port(&lan, "sink", "bi").or_fail("sink port");
        sink_ns
            .add_addr("to-lan", &format!("{SINK}/24"))
            .or_fail("sink addr");
        sink_ns
            .add_route("10.77.0.0/16", Some(IpAddr::V4(INNER_VIP)), None)
            .or_fail("sink route");

        let gateway_key = KeyPair::generate();
        let client_key = KeyPair::generate();
        let secret = KeyPair::generate().private;
        let xdp = xdp_from_env();
        let mut members = Vec::new();
        for i in 0..2 {
            let tag = ["a", "b"][i];
            let ns = Netns::new(&format!("sl-{id}-h{tag}")).or_fail("gateway ns");
            let gdir = RunDir::new(&format!("{id}hs{tag}")).or_fail("gateway dir");
            ns.enable_forwarding().or_fail("forwarding");
            veth(&ns, "outer", &lan, &format!("g{tag}o"), None).or_fail("outer veth");
            bridge_port(&lan, &format!("g{tag}o"), "bo").or_fail("outer port");
            veth(&ns, "inside", &lan, &format!("g{tag}i"), None).or_fail("inside veth");
            bridge_port(&lan, &format!("g{tag}i"), "bi").or_fail("inside port");
            ns.add_addr("outer", &format!("{}/24", outer_addr(i)))
                .or_fail("outer addr");
            ns.add_addr("inside", &format!("{}/24", inside_addr(i)))
                .or_fail("inside addr");
            gdir.write_private("ha.key", &format!("{secret}\n"))
                .or_fail("ha.key");
            let extra = format!(
                "\n[ha]\nmode = \"vrrp\"\nnode = {i}\nmembers = [\"{}:{SYNC_PORT}\", \"{}:{SYNC_PORT}\"]\n\
                 secret_file = \"ha.key\"\nvips = [\"{VIP}\"]\nsync = {sync}\n",
                inside_addr(0),
                inside_addr(1)
            );
            let spec = GatewaySpec {
                kind: GatewayKind::Sluice,
                ifname: format!("sl{id}h{tag}"),
                key: gateway_key.clone(),
                listen_port: 51820,
                addresses: vec!["10.77.0.1/16".into()],
                mtu: 1420,
                peers: vec![GatewayPeer {
                    public_key: client_key.public.clone(),
                    allowed_ips: vec![format!("{CLIENT_TUNNEL}/32")],
                    endpoint: None,
                    persistent_keepalive: None,
                }],
                sluice_bin: Some(SLUICE.into()),
                workers: 1,
                cores: vec![i % 2],
                extra_toml: extra,
                xdp_outer: xdp.then(|| "outer".to_string()),
                env: Vec::new(),
                status_file: true,
            };
            let gateway = Gateway::start(&ns, &spec, &gdir).or_fail("starting sluice");
            let config = gateway
                .config_path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap();
            members.push(Member {
                gateway,
                ns,
                _dir: gdir,
                config,
            });
        }
        // A holds the VIPs and is master.
        members[0]
            .ns
            .add_addr("outer", &format!("{VIP}/24"))
            .or_fail("VIP on A");
        members[0]
            .ns
            .add_addr("inside", &format!("{INNER_VIP}/24"))
            .or_fail("inner VIP on A");
        notify(&members[0].config, &["master"]).or_fail("notify A master");

        let ifname = format!("wg{id}s");
        let client = WgInterface::start(&client_ns, WgImpl::WireguardGo, &ifname, &dir)
            .or_fail("wireguard-go");
        client
            .configure(
                &client_key,
                Some(40000),
                &[WgPeer {
                    public_key: gateway_key.public.clone(),
                    endpoint: Some(SocketAddr::new(IpAddr::V4(VIP), 51820)),
                    allowed_ips: vec!["10.77.0.0/16".into(), "10.88.0.0/24".into()],
                    persistent_keepalive: None,
                }],
            )
            .or_fail("configuring the client");
        client_ns
            .add_addr(&ifname, &format!("{CLIENT_TUNNEL}/32"))
            .or_fail("tunnel addr");
        client_ns.link_up(&ifname, Some(1420)).or_fail("tunnel up");
        for net in ["10.77.0.0/16", "10.88.0.0/24"] {
            client_ns
                .add_route(net, None, Some(&ifname))
                .or_fail("tunnel route");
        }
        Bed {
            probe: None,
            _client: client,
            members,
            client_ns,
            sink_ns,
            _lan: lan,
            secret,
            client_key,
            _dir: dir,
        }
    }

    fn start_probe(&mut self) {
        let sender = self
            .client_ns
            .udp_bind(SocketAddr::new(IpAddr::V4(CLIENT_TUNNEL), PROBE_PORT))
            .or_fail("probe sender");
        let sink_addr = SocketAddr::new(IpAddr::V4(SINK), SINK_PORT);
        let sink = self.sink_ns.udp_bind(sink_addr).or_fail("probe sink");
        self.probe = Some(
            StreamProbe::start(sender, sink_addr, sink, Duration::from_millis(5), false)
                .or_fail("probe"),
        );
    }

    fn probe(&self) -> &StreamProbe {
        self.probe.as_ref().unwrap()
    }

    fn ha_status(&self, i: usize) -> serde_json::Value {
        let out = std::process::Command::new(SLUICE)
            .args(["ha", "status", "--config", &self.members[i].config])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sluice ha status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Move the VIPs from A to B by hand and tell B it is master (keepalived's notify form).
    fn move_vip_to_b(&self) {
        self.move_vip_addresses_to_b();
        notify(
            &self.members[1].config,
            &["INSTANCE", "sluice_vi", "MASTER", "100"],
        )
        .or_fail("notify B master");
    }

    /// Move the VIP addresses from A to B (B is not told).
    fn move_vip_addresses_to_b(&self) {
        let (a, b) = (&self.members[0].ns, &self.members[1].ns);
        a.del_addr("outer", &format!("{VIP}/24")).or_fail("del VIP");
        a.del_addr("inside", &format!("{INNER_VIP}/24"))
            .or_fail("del inner VIP");
        b.add_addr("outer", &format!("{VIP}/24")).or_fail("add VIP");
        b.add_addr("inside", &format!("{INNER_VIP}/24"))
            .or_fail("add inner VIP");
        // What keepalived's gratuitous ARP does: the neighbours learn the new owner.
        for ns in [&self.client_ns, &self.sink_ns] {
            ns.ip(&["neigh", "flush", "dev", "to-lan"])
                .or_fail("neigh flush");
        }
    }

    /// Wait until B holds the client's session and has heard A.
    fn wait_b_holds_the_session(&mut self) {
        let held = wait_for(
            "B holds the client's session",
            WAIT,
            Duration::from_millis(100),
            || {
                let s = self.ha_status(1);
                Ok::<_, NotYet>(
                    (n(&s, "sessions_held") >= 1 && n(&s, "sync_received") > 0).then_some(s),
                )
            },
        );
        if let Err(e) = held {
            panic!("{e}\n{}", self.logs());
        }
    }

    /// B's `vip_not_master` drops (status file, rewritten every second).
    fn b_vip_drops(&self) -> u64 {
        self.members[1]
            .gateway
            .status()
            .map_or(0, |s| s.drops_of("vip_not_master"))
    }

    fn kill_a(&mut self) {
        self.members[0].gateway.stop_with(libc::SIGKILL, WAIT);
    }

    fn logs(&mut self) -> String {
        let mut s = String::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            s += &format!("--- gateway {i}\n{}\n", m.gateway.log_tail(40));
        }
        s
    }
}

fn notify(config: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(SLUICE)
        .args(["ha", "notify", "--config", config])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ready(test: &str) -> bool {
    if !require_for_test(test, &TOOLS) {
        return false;
    }
    for line in registry::cleanup_stale() {
        eprintln!("{test}: {line}");
    }
    true
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn peer_handshake(m: &Member, key: &str) -> Option<u64> {
    m.gateway
        .status()
        .ok()?
        .peer(key)?
        .last_handshake_unix
        .filter(|&t| t > 0)
}

/// Sends forged and replayed sync datagrams at B from A's sync address (A is dead) and checks
/// they are counted as rejected and change nothing.
fn forged_and_replayed_sync_is_rejected(bed: &Bed) {
    let before = bed.ha_status(1);
    let members: Vec<SocketAddr> = (0..2)
        .map(|i| SocketAddr::new(IpAddr::V4(inside_addr(i)), SYNC_PORT))
        .collect();
    let secret = sluice::keys::decode_key(&bed.secret).unwrap();
    let key = GroupKey::derive(&secret, &members);
    let wrong = GroupKey::derive(&[0x55; 32], &members);
    let a_epoch = before["members"][0]["epoch"].as_u64().unwrap();
    assert!(a_epoch > 0, "B heard A: {before}");
    let sock = bed.members[0]
        .ns
        .udp_bind(members[0])
        .or_fail("binding A's sync address");
    let mut rng = sluice::OsRng;
    // A record that would matter if accepted: forget every session B holds.
    let gone: Vec<Record> = (0..16u32).map(|i| Record::Gone(i << 28)).collect();
    // Forged: right format, wrong group key; and a flipped tag.
    let mut forged = SyncSender::new(0, a_epoch + 1);
    let d = forged.seal_records(&wrong, &mut rng, &gone).remove(0);
    sock.send_to(&d, members[1]).unwrap();
    let mut d = SyncSender::new(0, a_epoch + 2)
        .seal_records(&key, &mut rng, &gone)
        .remove(0);
    let last = d.len() - 1;
    d[last] ^= 1;
    sock.send_to(&d, members[1]).unwrap();
    // Replayed: A's epoch, sequence 0 (A used it first), and an older epoch.
    let d = sluice::proto::hasync::seal(
        &key,
        &Header {
            node: 0,
            epoch: a_epoch,
            seq: 0,
        },
        &mut rng,
        &[],
    );
    sock.send_to(&d, members[1]).unwrap();
    let d = SyncSender::new(0, a_epoch - 1)
        .seal_records(&key, &mut rng, &gone)
        .remove(0);
    sock.send_to(&d, members[1]).unwrap();
    // Malformed: a sender index that is B's own.
    let d = SyncSender::new(1, a_epoch + 3)
        .seal_records(&key, &mut rng, &gone)
        .remove(0);
    sock.send_to(&d, members[1]).unwrap();

    let after = wait_for(
        "B counts the rejected sync datagrams",
        WAIT,
        Duration::from_millis(100),
        || {
            let s = bed.ha_status(1);
            let r = &s["rejected"];
            let ok = r["sync_forged"].as_u64() >= Some(n(&before["rejected"], "sync_forged") + 2)
                && r["sync_replayed"].as_u64() >= Some(n(&before["rejected"], "sync_replayed") + 2)
                && r["sync_malformed"].as_u64()
                    >= Some(n(&before["rejected"], "sync_malformed") + 1);
            Ok::<_, NotYet>(ok.then_some(s))
        },
    )
    .or_fail("rejections");
    assert_eq!(
        n(&after, "sync_received"),
        n(&before, "sync_received"),
        "no forged or replayed datagram was accepted"
    );
    assert_eq!(n(&after, "sessions_known"), n(&before, "sessions_known"));
    assert_eq!(n(&after, "takeovers"), n(&before, "takeovers"));
    assert_eq!(
        after["members"][0]["epoch"], before["members"][0]["epoch"],
        "A's epoch did not move"
    );
}

#[test]
fn failover_with_sync_resumes_on_the_old_session() {
    let test = "failover_with_sync_resumes_on_the_old_session";
    if !ready(test) {
        return;
    }
    let mut bed = Bed::build(true);
    bed.start_probe();
    bed.probe()
        .wait_flowing("through A", Duration::ZERO, 50, WAIT)
        .or_fail("stream through A");
    // B holds the client's session (and hears A) before anything moves.
    bed.wait_b_holds_the_session();
    assert_eq!(bed.ha_status(0)["role"], "master");
    assert_eq!(bed.ha_status(1)["role"], "backup");
    let b_handshake_before = peer_handshake(&bed.members[1], &bed.client_key.public);
    assert_eq!(
        b_handshake_before, None,
        "B never shook hands with the client"
    );

    let moved_at = bed.probe().elapsed();
    bed.move_vip_to_b();
    bed.kill_a();
    let a_ctl = sluice::datapath::control_sock::path(bed.members[0].gateway.ifname());
    assert!(
        !a_ctl.exists(),
        "the gateway guard removed {} after the SIGKILL",
        a_ctl.display()
    );
    assert_eq!(bed.ha_status(1)["role"], "master");
    if let Err(e) = bed.probe().wait_flowing("through B", moved_at, 100, WAIT) {
        panic!("{e}\n{}", bed.logs());
    }
    let s = bed.ha_status(1);
    assert!(n(&s, "takeovers") >= 1, "B took the session over: {s}");
    assert!(
        n(&s, "rx_taken_over") > 0,
        "client packets authenticated at B on the session A derived (no re-handshake first): {s}"
    );
    // Then the fresh handshake B started replaces it.
    let hs = wait_for(
        "B's fresh handshake with the client",
        WAIT,
        Duration::from_millis(100),
        || Ok::<_, NotYet>(peer_handshake(&bed.members[1], &bed.client_key.public)),
    );
    if let Err(e) = hs {
        panic!("{e}\n{}", bed.logs());
    }
    forged_and_replayed_sync_is_rejected(&bed);
    let report = bed.probe.take().unwrap().finish(Duration::from_millis(500));
    eprintln!(
        "{test}: with sync: gap {:.0} ms, {} of {} lost, B took over {} session(s), {} packets on the taken-over session",
        report.max_gap_ms,
        report.lost,
        report.sent,
        n(&s, "takeovers"),
        n(&s, "rx_taken_over")
    );
}

#[test]
fn failover_without_sync_needs_a_rehandshake() {
    let test = "failover_without_sync_needs_a_rehandshake";
    if !ready(test) {
        return;
    }
    let mut bed = Bed::build(false);
    bed.start_probe();
    bed.probe()
        .wait_flowing("through A", Duration::ZERO, 50, WAIT)
        .or_fail("stream through A");
    let moved_at = bed.probe().elapsed();
    bed.move_vip_to_b();
    bed.kill_a();
    if let Err(e) = bed
        .probe()
        .wait_flowing("through B", moved_at, 100, REHANDSHAKE_WAIT)
    {
        panic!("{e}\n{}", bed.logs());
    }
    let s = bed.ha_status(1);
    assert_eq!(
        n(&s, "takeovers"),
        0,
        "nothing to take over without sync: {s}"
    );
    assert_eq!(n(&s, "rx_taken_over"), 0);
    // The status file B writes every second shows the handshake the client had to make.
    wait_for(
        "the client's re-handshake with B",
        WAIT,
        Duration::from_millis(100),
        || Ok::<_, NotYet>(peer_handshake(&bed.members[1], &bed.client_key.public)),
    )
    .or_fail("the client re-handshook with B");
    let report = bed.probe.take().unwrap().finish(Duration::from_millis(500));
    eprintln!(
        "{test}: without sync: the client re-handshook; gap {:.0} ms, {} of {} lost",
        report.max_gap_ms, report.lost, report.sent
    );
}

/// A VIP on a VRRP backup (assigned by hand; keepalived would not) is not served: datagrams
/// to it are dropped and counted as `vip_not_master` on both data paths (XDP passes them, the
/// socket refuses them), and nothing is taken over. Once B is told it is master, the stream
/// flows through it.
#[test]
fn a_backup_refuses_vip_traffic_until_it_is_master() {
    let test = "a_backup_refuses_vip_traffic_until_it_is_master";
    if !ready(test) {
        return;
    }
    let mut bed = Bed::build(true);
    bed.start_probe();
    bed.probe()
        .wait_flowing("through A", Duration::ZERO, 50, WAIT)
        .or_fail("stream through A");
    bed.wait_b_holds_the_session();
    let before = bed.b_vip_drops();
    bed.move_vip_addresses_to_b();
    // The client's datagrams now reach B, still backup.
    let refusing = wait_for(
        "B refuses the VIP's datagrams",
        WAIT,
        Duration::from_millis(100),
        || Ok::<_, NotYet>((bed.b_vip_drops() >= before + 20).then_some(())),
    );
    if let Err(e) = refusing {
        panic!("{e}\n{}", bed.logs());
    }
    let mark = bed.probe().elapsed();
    let counted = bed.b_vip_drops();
    wait_for(
        "B refuses more of the VIP's datagrams",
        WAIT,
        Duration::from_millis(100),
        || Ok::<_, NotYet>((bed.b_vip_drops() >= counted + 20).then_some(())),
    )
    .or_fail("more refusals");
    assert_eq!(
        bed.probe().received_since(mark),
        0,
        "nothing got through the backup"
    );
    let s = bed.ha_status(1);
    assert_eq!(s["role"], "backup");
    assert_eq!(n(&s, "takeovers"), 0, "a backup takes nothing over: {s}");
    assert_eq!(n(&s, "rx_taken_over"), 0, "{s}");

    let told = bed.probe().elapsed();
    notify(&bed.members[1].config, &["master"]).or_fail("notify B master");
    if let Err(e) = bed.probe().wait_flowing("through B", told, 50, WAIT) {
        panic!("{e}\n{}", bed.logs());
    }
    let s = bed.ha_status(1);
    assert!(n(&s, "takeovers") >= 1, "B took the session over: {s}");
    let refused = bed.b_vip_drops() - before;
    let report = bed.probe.take().unwrap().finish(Duration::from_millis(500));
    eprintln!(
        "{test}: B refused {refused} datagrams to the VIP while backup; flowing again after notify master; {} of {} lost in all",
        report.lost, report.sent
    );
}
