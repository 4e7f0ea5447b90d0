//! Operating a running gateway in network namespaces: the stock `wg` tool against the gateway's
//! UAPI socket (`wg show`, `wg set` adding and removing peers while traffic flows), a SIGHUP
//! reload of a broken configuration, and the `/metrics` endpoint. Built on the same test bed
//! as `netns_interop.rs` (see `sluice::testbed::topology` for the picture and the addresses).
//!
//! Needs root and `ip`, `sysctl`, `wg`, `wireguard-go`, `boringtun-cli`, `iperf3`. Under
//! `CI=true` a missing prerequisite fails the test with the command that installs it;
//! elsewhere the test prints a loud SKIPPED line and passes.
//!
//! The gateway under test is sluice unless `SLUICE_TEST_GATEWAY` says `wireguard-go` or
//! `boringtun`; the `wg` tests then run against the stand-in, while the SIGHUP and metrics
//! tests apply to sluice only.
//!
//! Every test builds its own topology with its own names and removes it at the end, also when
//! it fails. Waits are bounded polls; nothing asserts on timing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod netns_common;
mod prom_text;

use netns_common::*;

use sluice::testbed::topology::{Topology, User, UserSpec, SINK_V4, SINK_V6};
use sluice::testbed::traffic::{
    iperf3_client, udp_arrives, udp_round_trip, Iperf3Server, IperfOpts,
};
use sluice::testbed::{wait_for, Daemon, GatewayKind};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Run the stock `wg` tool inside the gateway namespace (the UAPI socket folder is shared by
/// all namespaces, but this is where an operator would run it).
fn wg(t: &Topology, args: &[&str]) -> String {
    let mut argv = vec!["wg"];
    argv.extend_from_slice(args);
    t.gw_ns
        .run(&argv)
        .or_fail(&format!("`wg {}` in {}", args.join(" "), t.gw_ns.name()))
}

/// One peer line of `wg show IF dump`.
#[derive(Debug)]
struct DumpPeer {
    public_key: String,
    endpoint: String,
    allowed_ips: String,
    latest_handshake: u64,
    rx: u64,
    tx: u64,
}

/// The peers in `wg show IF dump` on the gateway (the first line is the interface).
fn dump_peers(t: &Topology) -> Vec<DumpPeer> {
    let ifname = t.gateway.ifname().to_string();
    let out = wg(t, &["show", &ifname, "dump"]);
    let mut lines = out.lines();
    let iface: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    assert_eq!(iface.len(), 4, "interface line of `wg show dump`: {out}");
    assert_eq!(iface[1], t.gateway_key.public, "gateway public key: {out}");
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 8, "peer line of `wg show dump`: {l:?}");
            let num = |s: &str| {
                s.parse::<u64>()
                    .unwrap_or_else(|e| panic!("number {s:?} in {l:?}: {e}"))
            };
            DumpPeer {
                public_key: f[0].to_string(),
                endpoint: f[2].to_string(),
                allowed_ips: f[3].to_string(),
                latest_handshake: num(f[4]),
                rx: num(f[5]),
                tx: num(f[6]),
            }
        })
        .collect()
}

/// UDP round trips, IPv4 and IPv6 inner, user `u` -> sink -> user.
fn user_round_trips(t: &Topology, u: &User, port: u16) {
    let label = u.label();
    udp_round_trip(
        &u.ns,
        IpAddr::V4(u.tunnel_v4),
        &t.sink_ns,
        v4(SINK_V4, port),
        TRAFFIC_TIMEOUT,
    )
    .or_fail(&format!("{label} -> sink, IPv4"));
    udp_round_trip(
        &u.ns,
        IpAddr::V6(u.tunnel_v6),
        &t.sink_ns,
        v6(SINK_V6, port),
        TRAFFIC_TIMEOUT,
    )
    .or_fail(&format!("{label} -> sink, IPv6"));
}

/// True if a datagram from user `u` reaches the sink (3 tries, 1 s each).
fn user_gets_through(t: &Topology, u: &User, port: u16) -> bool {
    udp_arrives(
        &u.ns,
        IpAddr::V4(u.tunnel_v4),
        &t.sink_ns,
        v4(SINK_V4, port),
        3,
        Duration::from_secs(1),
    )
    .or_fail(&format!("probing from {}", u.label()))
}

/// The `allowed-ips` argument for user `u`, as the topology configures it.
fn allowed_ips_of(u: &User) -> String {
    format!("{}/32,{}/128", u.tunnel_v4, u.tunnel_v6)
}

/// `wg show IF dump` lists the connected client with a handshake and transfer both ways.
#[test]
fn wg_show_reports_peers_handshakes_and_transfer() {
    let Some(kind) = gateway_under_test("wg_show_reports_peers_handshakes_and_transfer") else {
        return;
    };
    let mut t = build(kind, vec![wg_go()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    let u = t.user(1);
    user_round_trips(&t, u, 7001);
    let public = u.key.public.clone();
    let endpoint = u.endpoint().to_string();
    let allowed = allowed_ips_of(u);
    let p = wait_for(
        "`wg show dump` to report the client's handshake and transfer both ways",
        TRAFFIC_TIMEOUT,
        Duration::from_millis(200),
        || {
            let peers = dump_peers(&t);
            match peers.into_iter().find(|p| p.public_key == public) {
                Some(p) if p.latest_handshake > 0 && p.rx > 0 && p.tx > 0 => Ok(Some(p)),
                Some(p) => Err(format!("{p:?}").into()),
                None => Err(format!("{public} not listed").into()),
            }
        },
    )
    .or_fail("wg show dump");
    assert_eq!(p.endpoint, endpoint, "endpoint in `wg show dump`: {p:?}");
    let mut got: Vec<&str> = p.allowed_ips.split(',').collect();
    let mut want: Vec<&str> = allowed.split(',').collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "allowed IPs in `wg show dump`: {p:?}");
    let now = sluice::testbed::unix_now();
    assert!(
        p.latest_handshake <= now + 5,
        "latest handshake {} is in the future (now {now})",
        p.latest_handshake
    );
    // sluice logged the handshake as one structured event naming the peer's key (the stand-in
    // gateways log in their own words).
    if kind.is_sluice() {
        let log = t.gateway.log_tail(200);
        assert!(
            log.lines().any(|l| l.contains(" INFO ")
                && l.contains("handshake completed")
                && l.contains(&format!("peer={public}"))
                && l.contains(&format!("endpoint={endpoint}"))),
            "no `handshake completed` event for {public} from {endpoint}:\n{log}"
        );
    }
    // The human-readable form names the peer too.
    let ifname = t.gateway.ifname().to_string();
    let show = wg(&t, &["show", &ifname]);
    assert!(
        show.contains(&public) && show.contains("latest handshake") && show.contains("transfer"),
        "`wg show {ifname}` lacks the peer's handshake or transfer:\n{show}"
    );
}

/// A peer the gateway doesn't know at start is added with `wg set` on the running gateway;
/// its client then handshakes and passes traffic without a restart.
#[test]
fn wg_set_adds_a_peer_and_a_new_client_connects_at_once() {
    let Some(kind) = gateway_under_test("wg_set_adds_a_peer_and_a_new_client_connects_at_once")
    else {
        return;
    };
    let newcomer = UserSpec {
        known: false,
        persistent_keepalive: Some(1),
        ..boringtun()
    };
    let mut t = build(kind, vec![wg_go(), newcomer]);
    t.wait_handshakes_of(&[1], HANDSHAKE_TIMEOUT)
        .or_fail("handshake of user 1");
    let pid_before = t.gateway.pid();
    assert!(
        !user_gets_through(&t, t.user(2), 7002),
        "user 2 got through before the gateway knew its key"
    );
    let ifname = t.gateway.ifname().to_string();
    let (public, allowed) = (t.user(2).key.public.clone(), allowed_ips_of(t.user(2)));
    assert!(
        !dump_peers(&t).iter().any(|p| p.public_key == public),
        "user 2 listed before `wg set`"
    );
    wg(
        &t,
        &["set", &ifname, "peer", &public, "allowed-ips", &allowed],
    );
    assert!(
        dump_peers(&t).iter().any(|p| p.public_key == public),
        "user 2 not listed after `wg set`"
    );
    t.wait_handshakes_of(&[2], HANDSHAKE_TIMEOUT)
        .or_fail("handshake of the added user 2");
    user_round_trips(&t, t.user(2), 7002);
    // Sink -> the new user too: the gateway routes to it by the AllowedIPs just set.
    let u2 = t.user(2);
    udp_round_trip(
        &t.sink_ns,
        IpAddr::V4(SINK_V4),
        &u2.ns,
        v4(u2.tunnel_v4, 7102),
        TRAFFIC_TIMEOUT,
    )
    .or_fail("sink -> added user 2");
    // User 1 is unaffected, and the gateway never restarted.
    user_round_trips(&t, t.user(1), 7001);
    t.gateway.ensure_running().or_fail("gateway after `wg set`");
    assert_eq!(t.gateway.pid(), pid_before, "the gateway process changed");
}

/// `wg set ... remove` cuts one peer while another's TCP transfer runs to completion.
#[test]
fn wg_set_remove_cuts_only_that_peer() {
    let Some(kind) = gateway_under_test("wg_set_remove_cuts_only_that_peer") else {
        return;
    };
    let mut t = build(kind, vec![wg_go(), boringtun()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    for u in &t.users {
        user_round_trips(&t, u, 7000 + u.index as u16);
    }
    let ifname = t.gateway.ifname().to_string();
    let gone = t.user(2).key.public.clone();
    let server = Iperf3Server::start(&t.sink_ns, 5201, &t.dir).or_fail("iperf3 server");
    let (iperf, removed) = std::thread::scope(|s| {
        let u1 = t.user(1);
        let run = s.spawn(|| {
            iperf3_client(
                &u1.ns,
                IpAddr::V4(SINK_V4),
                server.port(),
                &IperfOpts::tcp(4),
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        let removed = t
            .gw_ns
            .run(&["wg", "set", &ifname, "peer", &gone, "remove"]);
        (run.join().expect("iperf3 thread"), removed)
    });
    removed.or_fail("`wg set ... remove` during the transfer");
    let r = iperf.unwrap_or_else(|e| {
        panic!(
            "user 1's iperf3 run while user 2 was removed: {e}\nserver: {}",
            server.log_tail(10)
        )
    });
    assert!(r.bytes > 0, "iperf3 moved no bytes: {r:?}");
    let peers = dump_peers(&t);
    assert!(
        !peers.iter().any(|p| p.public_key == gone),
        "removed peer still listed: {peers:?}"
    );
    assert!(
        peers.iter().any(|p| p.public_key == t.user(1).key.public),
        "user 1 vanished: {peers:?}"
    );
    assert!(
        !user_gets_through(&t, t.user(2), 7202),
        "traffic from the removed user 2 reached the sink"
    );
    user_round_trips(&t, t.user(1), 7301);
    if kind.is_sluice() {
        t.gateway
            .wait_status(
                "the removed peer to leave the status",
                TRAFFIC_TIMEOUT,
                |s| s.peer(&gone).is_none(),
            )
            .or_fail("status after removal");
    }
}

/// SIGHUP with a broken wg-quick file: rejected, logged, and the running configuration keeps
/// serving; after the file is fixed, a second SIGHUP reloads it.
#[test]
fn sighup_with_a_broken_config_keeps_serving() {
    let Some(kind) = gateway_under_test("sighup_with_a_broken_config_keeps_serving") else {
        return;
    };
    if !kind.is_sluice() {
        eprintln!("sighup: only meaningful for sluice (gateway is {kind}); not run");
        return;
    }
    let mut t = build(kind, vec![wg_go(), boringtun()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    for u in &t.users {
        user_round_trips(&t, u, 7000 + u.index as u16);
    }
    let pid = t.gateway.pid().expect("gateway pid");
    let conf = t.dir.join(&format!("{}.conf", t.gateway.ifname()));
    let good = std::fs::read_to_string(&conf).or_fail("reading the wg-quick file");
    let before = t.gateway.status().or_fail("status before the reload");
    std::fs::write(&conf, format!("{good}NotAKey = nonsense\n")).unwrap();
    // SAFETY: kill(2) with a pid we started and a constant signal number.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    wait_for(
        "sluice to log \"reload rejected\"",
        TRAFFIC_TIMEOUT,
        Duration::from_millis(100),
        || {
            t.gateway.ensure_running().map_err(sluice::testbed::fatal)?;
            let log = t.gateway.log_tail(200);
            Ok(log.contains("reload rejected").then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", t.gateway.log_tail(30)));
    let log = t.gateway.log_tail(200);
    let bad_line = good.lines().count() + 1;
    let want = format!("{}:{bad_line}:", conf.display());
    assert!(
        log.lines()
            .any(|l| l.contains("reload rejected") && l.contains(&want)),
        "the rejection does not name {want}:\n{log}"
    );
    assert!(
        !log.contains("reloaded"),
        "a broken file was (also) reloaded:\n{log}"
    );
    // Still serving the old configuration: both users pass traffic, both peers listed.
    for u in &t.users {
        user_round_trips(&t, u, 7100 + u.index as u16);
    }
    let after = t
        .gateway
        .status()
        .or_fail("status after the rejected reload");
    let keys = |s: &sluice::testbed::GatewayStatus| {
        let mut k: Vec<(String, Vec<String>)> = s
            .peers
            .iter()
            .map(|p| (p.public_key.clone(), p.allowed_ips.clone()))
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&before),
        keys(&after),
        "peers changed on a rejected reload"
    );
    assert_eq!(
        dump_peers(&t).len(),
        2,
        "`wg show dump` after the rejection"
    );
    // Restore the file; a second SIGHUP reloads it and removes nobody.
    std::fs::write(&conf, &good).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    let line = wait_for(
        "sluice to log \"reloaded\" after the file was fixed",
        TRAFFIC_TIMEOUT,
        Duration::from_millis(100),
        || {
            t.gateway.ensure_running().map_err(sluice::testbed::fatal)?;
            let log = t.gateway.log_tail(200);
            Ok(log
                .lines()
                .find(|l| l.contains("reloaded"))
                .map(str::to_string))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", t.gateway.log_tail(30)));
    assert!(
        line.contains("added=0") && line.contains("removed=0"),
        "reloading the unchanged file changed peers: {line}"
    );
    for u in &t.users {
        user_round_trips(&t, u, 7200 + u.index as u16);
    }
}

/// One HTTP/1.0 GET inside the gateway namespace; returns (status line, body).
fn http_get(t: &Topology, addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = t
        .gw_ns
        .tcp_connect(addr, TRAFFIC_TIMEOUT)
        .or_fail(&format!("connecting to {addr}"));
    s.set_read_timeout(Some(TRAFFIC_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text)
        .or_fail(&format!("reading {path}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in the reply to {path}: {text:?}"));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// `/metrics` and `/healthz` over HTTP inside the gateway namespace report the client.
#[test]
fn metrics_report_the_client_over_http() {
    let Some(kind) = gateway_under_test("metrics_report_the_client_over_http") else {
        return;
    };
    if !kind.is_sluice() {
        eprintln!("metrics: only meaningful for sluice (gateway is {kind}); not run");
        return;
    }
    let mut t = build(kind, vec![wg_go()]);
    // The test bed writes no [metrics] section: stop its gateway, add one, start sluice again
    // on the same files.
    let (_, killed) = t.gateway.stop(Duration::from_secs(10));
    assert!(!killed, "the first gateway ignored SIGTERM");
    let toml = t.gateway.config_path().expect("gateway.toml").to_path_buf();
    let mut cfg = std::fs::read_to_string(&toml).unwrap();
    cfg.push_str("\n[metrics]\nlisten = \"127.0.0.1:9586\"\n");
    std::fs::write(&toml, cfg).unwrap();
    let status = t.dir.join("status-metrics.json");
    let mut c = t.gw_ns.command(SLUICE);
    c.arg("up")
        .arg("--config")
        .arg(&toml)
        .arg("--status-file")
        .arg(&status);
    let log = t.dir.join("sluice-metrics.log");
    let mut gw = Daemon::spawn("sluice up with metrics", c, &log, vec![]).or_fail("sluice up");
    let ifname = t.gateway.ifname().to_string();
    wait_for(
        "sluice with metrics to create its TUN and status file",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            gw.ensure_running().map_err(sluice::testbed::fatal)?;
            Ok((t.gw_ns.link_exists(&ifname) && status.exists()).then_some(()))
        },
    )
    .or_fail("restarting sluice");
    // The client handshakes with the new gateway as soon as it has traffic to send.
    let u = t.user(1);
    udp_round_trip(
        &u.ns,
        IpAddr::V4(u.tunnel_v4),
        &t.sink_ns,
        v4(SINK_V4, 7001),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| {
        panic!(
            "user 1 -> sink via sluice with metrics: {e}\n{}",
            gw.log_tail(30)
        )
    });
    let addr: SocketAddr = "127.0.0.1:9586".parse().unwrap();
    let (st, body) = http_get(&t, addr, "/healthz");
    assert!(st.contains(" 200"), "/healthz: {st}\n{body}");
    let public = u.key.public.clone();
    let label = format!("public_key=\"{public}\"");
    let value = wait_for(
        "/metrics to show the client's received bytes",
        TRAFFIC_TIMEOUT,
        Duration::from_millis(300),
        || {
            let (st, body) = http_get(&t, addr, "/metrics");
            if !st.contains(" 200") {
                return Err(st.into());
            }
            let line = body
                .lines()
                .find(|l| l.starts_with("wireguard_received_bytes_total{") && l.contains(&label));
            match line {
                Some(l) => {
                    let v: f64 = l
                        .rsplit(' ')
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| panic!("unparsable sample {l:?}"));
                    if v > 0.0 {
                        Ok(Some(v))
                    } else {
                        Err(l.to_string().into())
                    }
                }
                None => Err("no wireguard_received_bytes_total line for the client".into()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_tail(30)));
    assert!(value > 0.0);
    let (_, body) = http_get(&t, addr, "/metrics");
    assert!(
        body.lines()
            .any(|l| l.starts_with("wireguard_sent_bytes_total{") && l.contains(&label)),
        "no wireguard_sent_bytes_total for the client:\n{body}"
    );
    assert!(
        body.lines().any(|l| l.starts_with("sluice_up")),
        "no sluice_up in /metrics:\n{body}"
    );
    let (exit, killed) = gw.stop(Duration::from_secs(10));
    assert!(!killed, "sluice with metrics ignored SIGTERM");
    assert!(
        exit.is_some_and(|s| s.success()),
        "sluice with metrics exited with {exit:?}\n{}",
        gw.log_tail(30)
    );
}

/// `wg show IF peers`: one public key a line.
fn peer_keys(t: &Topology) -> Vec<String> {
    let ifname = t.gateway.ifname().to_string();
    wg(t, &["show", &ifname, "peers"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// A `wg syncconf` file as `wg-quick strip` makes one: the running key and port (a file
/// without them would ask to clear them, which sluice refuses), the topology's users as they
/// are, and `extra` peers with one /32 each in 10.128.0.0/9.
fn syncconf_file(t: &Topology, extra: &[String]) -> String {
    use std::fmt::Write as _;
    let mut f = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {}\n",
        t.gateway_key.private,
        t.gateway.listen_port()
    );
    for u in &t.users {
        let _ = write!(
            f,
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n",
            u.key.public,
            allowed_ips_of(u)
        );
    }
    for (i, key) in extra.iter().enumerate() {
        let host = 0x0a80_0000u32 + i as u32 + 1;
        let ip = std::net::Ipv4Addr::from(host);
        let _ = write!(f, "\n[Peer]\nPublicKey = {key}\nAllowedIPs = {ip}/32\n");
    }
    f
}

/// Run `wg syncconf IF FILE` in the gateway namespace; returns how long it took.
fn syncconf(t: &Topology, name: &str, contents: &str) -> Duration {
    let path = t
        .dir
        .write_private(name, contents)
        .or_fail("writing the syncconf file");
    let ifname = t.gateway.ifname().to_string();
    let mut c = t.gw_ns.command("wg");
    c.arg("syncconf").arg(&ifname).arg(&path);
    let start = std::time::Instant::now();
    // A bound on a hang, not a timing check: a debug build on a loaded machine can take a
    // while to apply 10,000 peers (the usual 20 s command limit is too tight for that).
    sluice::testbed::cmd::check(c, Duration::from_secs(600))
        .or_fail(&format!("`wg syncconf {ifname} {name}`"));
    start.elapsed()
}

/// `wg syncconf` of 10,000 new peers onto a running gateway with live clients: all listed,
/// the clients still pass traffic; a second syncconf to a smaller set removes exactly the
/// peers it leaves out. Prints how long each took (no timing assertion).
#[test]
fn wg_syncconf_applies_ten_thousand_peers_and_removes_them_again() {
    const MANY: usize = 10_000;
    const KEEP: usize = 100;
    let Some(kind) =
        gateway_under_test("wg_syncconf_applies_ten_thousand_peers_and_removes_them_again")
    else {
        return;
    };
    let mut t = build(kind, vec![wg_go()]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    user_round_trips(&t, t.user(1), 7001);
    let existing = peer_keys(&t);
    assert_eq!(existing.len(), t.users.len(), "peers before: {existing:?}");
    // Any 32 bytes are an X25519 public key; random ones are as good as generated pairs here
    // and cost nothing to make.
    let extra: Vec<String> = (0..MANY)
        .map(|_| {
            let mut k = [0u8; 32];
            getrandom::fill(&mut k).unwrap();
            sluice::keys::encode_key(&k)
        })
        .collect();

    let took = syncconf(&t, "many.conf", &syncconf_file(&t, &extra));
    let keys = peer_keys(&t);
    eprintln!(
        "wg syncconf of {MANY} new peers onto {} existing took {:.3} s ({:.0} peers/s); \
         gateway {kind}",
        existing.len(),
        took.as_secs_f64(),
        MANY as f64 / took.as_secs_f64()
    );
    assert_eq!(
        keys.len(),
        MANY + existing.len(),
        "`wg show peers` after syncconf"
    );
    let listed: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
    for k in extra.iter().chain(&existing) {
        assert!(listed.contains(k.as_str()), "{k} missing after syncconf");
    }
    // The allowed IPs arrived too: spot-check the first and the last peer in the dump.
    let dump = dump_peers(&t);
    for (i, k) in [(0, &extra[0]), (MANY - 1, &extra[MANY - 1])] {
        let ip = std::net::Ipv4Addr::from(0x0a80_0000u32 + i as u32 + 1);
        let p = dump.iter().find(|p| &p.public_key == k).unwrap();
        assert_eq!(p.allowed_ips, format!("{ip}/32"), "peer {i}: {p:?}");
    }
    // The live client was not disturbed.
    user_round_trips(&t, t.user(1), 7002);

    let took = syncconf(&t, "few.conf", &syncconf_file(&t, &extra[..KEEP]));
    eprintln!(
        "wg syncconf down to {KEEP} of them (removing {}) took {:.3} s",
        MANY - KEEP,
        took.as_secs_f64()
    );
    let keys = peer_keys(&t);
    assert_eq!(
        keys.len(),
        KEEP + existing.len(),
        "`wg show peers` after the smaller syncconf"
    );
    let listed: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
    for k in extra[..KEEP].iter().chain(&existing) {
        assert!(listed.contains(k.as_str()), "{k} wrongly removed");
    }
    for k in &extra[KEEP..] {
        assert!(!listed.contains(k.as_str()), "{k} still listed");
    }
    user_round_trips(&t, t.user(1), 7003);
    t.gateway
        .ensure_running()
        .or_fail("gateway after the syncconfs");
}

/// Where the gateways built with [`build_with_metrics`] serve `/metrics` (inside their own
/// namespace, so every test can use the same address).
const METRICS_ADDR: &str = "127.0.0.1:9586";

/// [`build`] with sluice serving `/metrics` on [`METRICS_ADDR`] from the start, and
/// `env` set for the sluice process.
fn build_with_metrics(kind: GatewayKind, users: Vec<UserSpec>, env: &[(&str, &str)]) -> Topology {
    let mut spec = netns_common::spec(kind, users);
    spec.sluice_toml_extra = format!("\n[metrics]\nlisten = \"{METRICS_ADDR}\"\n");
    spec.sluice_env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Topology::build(&spec).or_fail("building the topology")
}

/// One scrape of the gateway's `/metrics`, parsed strictly.
fn scrape(t: &Topology) -> prom_text::Exposition {
    let (st, body) = http_get(t, METRICS_ADDR.parse().unwrap(), "/metrics");
    assert!(st.contains(" 200"), "/metrics: {st}\n{body}");
    prom_text::parse(&body)
}

/// The counters of one peer and of worker 0, from one scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counters {
    peer_rx_bytes: u64,
    peer_tx_bytes: u64,
    worker_rx_packets: u64,
    worker_tx_packets: u64,
}

fn counters(t: &Topology, u: &User) -> Counters {
    let e = scrape(t);
    let ifname = t.gateway.ifname().to_string();
    let allowed = allowed_ips_of_as_exported(&e, &u.key.public);
    let peer = [
        ("interface", ifname.as_str()),
        ("public_key", u.key.public.as_str()),
        ("allowed_ips", allowed.as_str()),
    ];
    let int = |v: f64| {
        assert!(v >= 0.0 && v.fract() == 0.0, "a counter of {v}");
        v as u64
    };
    Counters {
        peer_rx_bytes: int(e.value("wireguard_received_bytes_total", &peer)),
        peer_tx_bytes: int(e.value("wireguard_sent_bytes_total", &peer)),
        worker_rx_packets: int(e.value("sluice_worker_rx_packets_total", &[("worker", "0")])),
        worker_tx_packets: int(e.value("sluice_worker_tx_packets_total", &[("worker", "0")])),
    }
}

/// The `allowed_ips` label the gateway exports for `key` (checked against the topology's
/// addresses by the caller's exact-label lookups).
fn allowed_ips_of_as_exported(e: &prom_text::Exposition, key: &str) -> String {
    let found: Vec<&str> = e
        .of("wireguard_received_bytes_total")
        .into_iter()
        .filter(|s| s.1.iter().any(|(k, v)| k == "public_key" && v == key))
        .filter_map(|s| s.1.iter().find(|(k, _)| k == "allowed_ips"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(found.len(), 1, "series for {key}: {found:?}");
    found[0].to_string()
}

/// Scrape until two scrapes a second apart agree (nothing is in flight), at most 30 s.
fn settled(t: &Topology, u: &User) -> Counters {
    let mut last = counters(t, u);
    wait_for(
        "the gateway's counters to settle",
        Duration::from_secs(30),
        Duration::from_secs(1),
        || {
            let now = counters(t, u);
            let same = now == last;
            last = now;
            if same {
                Ok(Some(now))
            } else {
                Err(format!("{now:?}").into())
            }
        },
    )
    .or_fail("settling")
}

/// The size of the WireGuard datagram carrying an inner packet of `inner` bytes through an
/// interface of MTU `mtu`: 16 bytes of header, the packet padded to a multiple of 16 (but
/// never past the MTU), 16 bytes of tag (whitepaper 5.4.6).
fn wire_len(inner: usize, mtu: usize) -> u64 {
    let padded = inner.div_ceil(16) * 16;
    let padded = if padded > mtu { inner.max(mtu) } else { padded };
    (16 + padded + 16) as u64
}

/// An empty transport message: a keepalive.
const KEEPALIVE_LEN: u64 = 32;

/// Send UDP datagrams of the given payload sizes from `from_ns` (bound to `from`) to `to`, a
/// socket the caller bound in the other namespace, and receive them all there; returns the
/// sizes received in order of arrival.
fn send_and_receive(
    from_ns: &sluice::testbed::Netns,
    from: IpAddr,
    sink: &std::net::UdpSocket,
    sizes: &[usize],
) -> Vec<usize> {
    let to = sink.local_addr().unwrap();
    let tx = from_ns.udp_bind(SocketAddr::new(from, 0)).or_fail("sender");
    for (i, &n) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..n).map(|j| (i * 7 + j) as u8).collect();
        tx.send_to(&payload, to).unwrap();
    }
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while got.len() < sizes.len() {
        match sink.recv_from(&mut buf) {
            Ok((n, src)) => {
                assert_eq!(src.ip(), from, "a datagram from {src}");
                got.push(n);
            }
            Err(e) => panic!(
                "{} of {} datagrams arrived at {to} ({e}): {got:?}",
                got.len(),
                sizes.len()
            ),
        }
    }
    got
}

/// Check `after - before` against exactly the datagrams sent: `bytes` grew by their wire
/// sizes plus 32 for each extra packet `packets` counted, and every extra packet can only be a
/// keepalive (32 bytes, no payload). Returns how many keepalives there were.
fn exact_delta(what: &str, bytes: (u64, u64), packets: (u64, u64), wire: &[u64]) -> u64 {
    let db = bytes.1.checked_sub(bytes.0).expect("a counter went down");
    let dp = packets
        .1
        .checked_sub(packets.0)
        .expect("a counter went down");
    let n = wire.len() as u64;
    let want: u64 = wire.iter().sum();
    assert!(
        dp >= n,
        "{what}: {dp} packets counted for the {n} datagrams sent"
    );
    let keepalives = dp - n;
    assert_eq!(
        db,
        want + keepalives * KEEPALIVE_LEN,
        "{what}: bytes moved by {db}, the datagrams sent were {want} bytes \
         ({n} datagrams, {keepalives} keepalives besides)"
    );
    keepalives
}

/// `/metrics` from the running daemon, parsed strictly, moves by exactly the traffic sent:
/// datagrams of known sizes (IPv4 and IPv6 inner, around the padding boundaries and at the
/// MTU) from a wireguard-go client to a sink, then from the sink back to the client; the
/// peer's received/sent bytes and worker 0's rx/tx packets change by exactly those datagrams
/// (plus 32 bytes for each keepalive, counted as such), and the far side got every one.
#[test]
fn metrics_counters_move_by_exactly_the_traffic_sent() {
    let Some(kind) = gateway_under_test("metrics_counters_move_by_exactly_the_traffic_sent") else {
        return;
    };
    if !kind.is_sluice() {
        eprintln!("metrics: only meaningful for sluice (gateway is {kind}); not run");
        return;
    }
    // No persistent keepalive: the only packets are the test's, and keepalives the protocol
    // sends on its own after one-way traffic (counted exactly by their size).
    let quiet = UserSpec {
        persistent_keepalive: None,
        ..wg_go()
    };
    let mut t = build_with_metrics(kind, vec![quiet], &[]);
    t.wait_handshakes(HANDSHAKE_TIMEOUT).or_fail("handshakes");
    let u = t.user(1);
    let mtu = 1420;
    // UDP payload sizes: 28 (IPv4) or 48 (IPv6) bytes of headers make the inner packet.
    let sizes: Vec<usize> = vec![0, 1, 4, 5, 20, 100, 500, 1000, 1372, 1391, 1392];
    let v6_sizes: Vec<usize> = vec![0, 7, 8, 9, 300, 1200, 1372];
    let sink4 = t.sink_ns.udp_bind(v4(SINK_V4, 7400)).or_fail("sink socket");
    let sink6 = t.sink_ns.udp_bind(v6(SINK_V6, 7406)).or_fail("sink socket");

    // Client -> gateway -> sink: the peer's received bytes and the worker's rx packets.
    let before = settled(&t, u);
    let got4 = send_and_receive(&u.ns, IpAddr::V4(u.tunnel_v4), &sink4, &sizes);
    let got6 = send_and_receive(&u.ns, IpAddr::V6(u.tunnel_v6), &sink6, &v6_sizes);
    assert_eq!(
        sorted(got4),
        sorted(sizes.clone()),
        "IPv4 datagrams at the sink"
    );
    assert_eq!(
        sorted(got6),
        sorted(v6_sizes.clone()),
        "IPv6 datagrams at the sink"
    );
    let after = settled(&t, u);
    let wire: Vec<u64> = sizes
        .iter()
        .map(|n| wire_len(28 + n, mtu))
        .chain(v6_sizes.iter().map(|n| wire_len(48 + n, mtu)))
        .collect();
    let k = exact_delta(
        "client -> sink: wireguard_received_bytes_total vs sluice_worker_rx_packets_total",
        (before.peer_rx_bytes, after.peer_rx_bytes),
        (before.worker_rx_packets, after.worker_rx_packets),
        &wire,
    );
    eprintln!(
        "client -> sink: {} datagrams, {} bytes on the wire, {k} keepalives; {before:?} -> {after:?}",
        wire.len(),
        wire.iter().sum::<u64>()
    );

    // Sink -> gateway -> client: the peer's sent bytes and the worker's tx packets.
    let client4 =
        u.ns.udp_bind(v4(u.tunnel_v4, 7500))
            .or_fail("client socket");
    let client6 =
        u.ns.udp_bind(v6(u.tunnel_v6, 7506))
            .or_fail("client socket");
    let before = settled(&t, u);
    let back4: Vec<usize> = vec![3, 50, 1391, 1392];
    let back6: Vec<usize> = vec![1, 1372];
    let got4 = send_and_receive(&t.sink_ns, IpAddr::V4(SINK_V4), &client4, &back4);
    let got6 = send_and_receive(&t.sink_ns, IpAddr::V6(SINK_V6), &client6, &back6);
    assert_eq!(
        sorted(got4),
        sorted(back4.clone()),
        "IPv4 datagrams at the client"
    );
    assert_eq!(
        sorted(got6),
        sorted(back6.clone()),
        "IPv6 datagrams at the client"
    );
    let after = settled(&t, u);
    let wire: Vec<u64> = back4
        .iter()
        .map(|n| wire_len(28 + n, mtu))
        .chain(back6.iter().map(|n| wire_len(48 + n, mtu)))
        .collect();
    let k = exact_delta(
        "sink -> client: wireguard_sent_bytes_total vs sluice_worker_tx_packets_total",
        (before.peer_tx_bytes, after.peer_tx_bytes),
        (before.worker_tx_packets, after.worker_tx_packets),
        &wire,
    );
    eprintln!(
        "sink -> client: {} datagrams, {} bytes on the wire, {k} keepalives; {before:?} -> {after:?}",
        wire.len(),
        wire.iter().sum::<u64>()
    );
    t.gateway
        .ensure_running()
        .or_fail("gateway after the counts");
}

fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v
}

/// `/healthz` says 200 while every worker runs and 503 naming the worker once one dies: the
/// daemon is started with the fault-injection hook (`SLUICE_FAULT_INJECT`) making worker 1 of
/// 2 panic. The panic stays in that thread: the process keeps running, `/metrics` keeps
/// serving, the `wg` API answers, and the log says which worker stopped and why.
#[test]
fn healthz_flips_to_503_when_a_worker_dies() {
    let Some(kind) = gateway_under_test("healthz_flips_to_503_when_a_worker_dies") else {
        return;
    };
    if !kind.is_sluice() {
        eprintln!("healthz: only meaningful for sluice (gateway is {kind}); not run");
        return;
    }
    // Long enough for the topology to come up and /healthz to be read healthy first.
    const PANIC_AFTER_MS: u64 = 12_000;
    let started = std::time::Instant::now();
    let mut spec = netns_common::spec(kind, vec![wg_go()]);
    spec.workers = 2;
    spec.cores = vec![0, 1];
    // The config asks for debug logs and SLUICE_LOG overrides it: warnings and errors only.
    spec.sluice_toml_extra =
        format!("\n[metrics]\nlisten = \"{METRICS_ADDR}\"\n\n[log]\nlevel = \"debug\"\n");
    spec.sluice_env = vec![
        (
            "SLUICE_FAULT_INJECT".into(),
            format!("worker-panic:1:{PANIC_AFTER_MS}"),
        ),
        ("SLUICE_LOG".into(), "warn".into()),
    ];
    let mut t = Topology::build(&spec).or_fail("building the topology");
    let addr: SocketAddr = METRICS_ADDR.parse().unwrap();
    let (st, body) = http_get(&t, addr, "/healthz");
    assert!(
        st.contains(" 200"),
        "/healthz before the fault ({:.1} s after start, the fault is due at {} s): {st}\n{body}\n{}",
        started.elapsed().as_secs_f64(),
        PANIC_AFTER_MS / 1000,
        t.gateway.log_tail(20)
    );
    let pid = t.gateway.pid();
    let (st, body) = wait_for(
        "/healthz to say 503 after worker 1 panicked",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            t.gateway.ensure_running().map_err(sluice::testbed::fatal)?;
            let (st, body) = http_get(&t, addr, "/healthz");
            if st.contains(" 503") {
                Ok(Some((st, body)))
            } else {
                Err(format!("{st}: {body}").into())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", t.gateway.log_tail(30)));
    assert!(
        body.contains("worker 1") && !body.contains("worker 0"),
        "/healthz should name worker 1 only: {st}\n{body}"
    );
    // The process lives on: same pid, metrics served, the wg API answers, and the stop is
    // in the log with its reason.
    t.gateway
        .ensure_running()
        .or_fail("gateway after the worker died");
    assert_eq!(t.gateway.pid(), pid);
    let e = scrape(&t);
    assert_eq!(e.value("sluice_up", &[]), 1.0);
    assert_eq!(
        dump_peers(&t).len(),
        1,
        "`wg show dump` after the worker died"
    );
    let log = t.gateway.log_tail(200);
    assert!(
        log.lines().any(|l| l.contains("worker stopped")
            && l.contains("role=")
            && l.contains("index=1")
            && l.contains("panic")),
        "no `worker stopped` line for worker 1:\n{log}"
    );
    // SLUICE_LOG=warn: the fault's warning and the stop's error, and nothing below warn
    // (no "worker started", no "handshake completed", no debug).
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("fault injection armed")),
        "no warning about the armed fault:\n{log}"
    );
    let quiet: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" INFO ") || l.contains(" DEBUG ") || l.contains(" TRACE "))
        .collect();
    assert!(
        quiet.is_empty(),
        "SLUICE_LOG=warn let these through: {quiet:#?}"
    );
    // (The dead worker's share of flows is not served until a restart: its SO_REUSEPORT
    // socket stays bound. That is what the 503 is for: VRRP or anycast move traffic away.)
    let (st, _) = http_get(&t, addr, "/healthz");
    assert!(st.contains(" 503"), "/healthz went back to {st}");
}
