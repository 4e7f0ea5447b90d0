//! Responder handshakes per second on one core: "initiation consumed plus response created",
//! the work a gateway does for every user that connects or rekeys (every two minutes per user).
//!
//! Simulated users each hold a real initiator handshake with the gateway. The benchmark runs in
//! *rounds*: in each round every user sends one fresh initiation, stamped one simulated second
//! after the previous round, so each is accepted exactly once (its TAI64N timestamp is newer
//! than the last, and a second is well past the 1/50 s per-peer flood limit). The initiations
//! of a round are created before its clock starts; only the responder's work is timed.
//!
//! Two responders are measured:
//! - `handshake`: the bare sequence a gateway runs, from the handshake and cookie APIs: mac1
//!   check, `consume_initiation`, find the peer by static key, `accept_initiation`,
//!   `create_response`, add the response's macs, `begin_session`;
//! - `handshake_device`: the same initiations through `Device::handle_datagram`, which adds
//!   parsing, receiver-index allocation, keypair installation, timers, endpoint tracking and
//!   queuing the response as a transmit.
//!
//! Both use the OS random source for ephemeral keys and indices, as a gateway does. Every
//! initiation must succeed, and one response per round is completed by its user (the user
//! derives the same session), so a "fast" responder that answers garbage fails the run.

use crate::harness::{self, Sample};
use crate::proto_bench::Config;
use crate::report::{Record, Report};
use sluice::proto::cookie::{CookieChecker, CookieGenerator};
use sluice::proto::device::{Context, Device, Received};
use sluice::proto::messages::{initiation, response, Initiation, Response, KEY_LEN};
use sluice::proto::noise::{self, Handshake, Identity, SessionKeys};
use sluice::proto::peer::PeerConfig;
use sluice::proto::{Rng, SeededRng, Time, WallTime};
use sluice::{keys, OsRng};
use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

type Key = [u8; KEY_LEN];
type InitiationMsg = [u8; initiation::LEN];
type ResponseMsg = [u8; response::LEN];

/// Simulated wall clock at round 0 (late 2023): any plausible date works, it only has to grow.
const WALL_EPOCH_SECS: u64 = 1_700_000_000;
const NANOS_PER_SEC: u64 = 1_000_000_000;

struct User {
    identity: Identity,
    handshake: Handshake,
    cookie: CookieGenerator,
}

/// The simulated users and the simulated clock they share.
struct Users {
    users: Vec<User>,
    round: u64,
    rng: SeededRng,
}

/// One initiation from every user, all sent at the same simulated time.
struct Round {
    now: Time,
    wall: WallTime,
    initiations: Vec<InitiationMsg>,
}

impl Users {
    fn new(n: usize, gateway_public: &Key, rng: &mut SeededRng) -> Users {
        let users = (0..n)
            .map(|_| {
                let identity = Identity::new(&keys::generate_private(rng));
                let handshake = Handshake::new(&identity, *gateway_public, None);
                User {
                    identity,
                    handshake,
                    cookie: CookieGenerator::new(gateway_public),
                }
            })
            .collect();
        Users {
            users,
            round: 0,
            rng: SeededRng::new(rng.next_u64()),
        }
    }

    fn next_round(&mut self) -> Round {
        self.round += 1;
        let now = Time::from_nanos(self.round * NANOS_PER_SEC);
        let wall = WallTime::new(WALL_EPOCH_SECS + self.round, 0);
        let rng = &mut self.rng;
        let initiations = self
            .users
            .iter_mut()
            .map(|u| {
                let mut msg = [0u8; initiation::LEN];
                let sender = rng.next_u32();
                u.handshake
                    .create_initiation(&u.identity, wall, sender, rng, &mut msg)
                    .expect("valid keys and a sized buffer cannot fail");
                u.cookie.add_macs(now, &mut msg);
                msg
            })
            .collect();
        Round {
            now,
            wall,
            initiations,
        }
    }

    /// Complete user `i`'s handshake with the gateway's `response`, as the real initiator would:
    /// mac1 must verify under the user's key and the Noise response must decrypt.
    fn completes(&mut self, i: usize, now: Time, response: &[u8]) -> bool {
        let u = &mut self.users[i];
        let mac_ok = CookieChecker::new(u.identity.public_key()).check_mac1(response);
        let Ok(msg) = Response::new(response) else {
            return false;
        };
        mac_ok
            && u.handshake.consume_response(&u.identity, &msg).is_ok()
            && u.handshake.begin_session(now).is_ok()
    }
}

/// Outcomes of the timed work, checked once timing is over.
#[derive(Debug, Default)]
struct Tally {
    attempted: u64,
    succeeded: u64,
    rounds: u64,
    completed_by_user: u64,
    first_failure: Option<String>,
}

impl Tally {
    fn add(&mut self, attempted: u64, succeeded: u64, failure: Option<String>, completed: bool) {
        self.attempted += attempted;
        self.succeeded += succeeded;
        self.rounds += 1;
        self.completed_by_user += u64::from(completed);
        if self.first_failure.is_none() {
            self.first_failure = failure;
        }
    }

    fn check(&self, bench: &str) -> Result<(), String> {
        if self.succeeded != self.attempted || self.completed_by_user != self.rounds {
            return Err(format!(
                "{bench}: {} of {} initiations answered, {} of {} sampled responses completed; \
                 first failure: {}",
                self.succeeded,
                self.attempted,
                self.completed_by_user,
                self.rounds,
                self.first_failure.as_deref().unwrap_or("none recorded")
            ));
        }
        Ok(())
    }
}

/// One configured peer on the bare-API gateway.
struct GatewayPeer {
    handshake: Handshake,
    cookie: CookieGenerator,
}

/// A responder built from the handshake and cookie APIs alone, doing what a gateway must.
struct Gateway {
    identity: Identity,
    checker: CookieChecker,
    peers: HashMap<Key, GatewayPeer>,
    next_index: u32,
    rng: OsRng,
}

impl Gateway {
    fn new(private: &Key, users: &Users) -> Gateway {
        let identity = Identity::new(private);
        let peers = users
            .users
            .iter()
            .map(|u| {
                let key = *u.identity.public_key();
                let peer = GatewayPeer {
                    // Precomputes the static-static DH, as configuring a peer does.
                    handshake: Handshake::new(&identity, key, None),
                    cookie: CookieGenerator::new(&key),
                };
                (key, peer)
            })
            .collect();
        Gateway {
            checker: CookieChecker::new(identity.public_key()),
            identity,
            peers,
            next_index: 0,
            rng: OsRng,
        }
    }

    /// Answer one initiation: the whole responder side of a handshake.
    fn respond(
        &mut self,
        now: Time,
        msg: &InitiationMsg,
        out: &mut ResponseMsg,
    ) -> Result<SessionKeys, String> {
        if !self.checker.check_mac1(msg) {
            return Err("mac1 did not verify".into());
        }
        let parsed = Initiation::new(&msg[..]).map_err(|e| format!("parse: {e:?}"))?;
        let consumed =
            noise::consume_initiation(&self.identity, &parsed).map_err(|e| e.to_string())?;
        let peer = self
            .peers
            .get_mut(&consumed.remote_static)
            .ok_or("initiation from an unknown peer")?;
        let hs = &mut peer.handshake;
        hs.accept_initiation(now, consumed)
            .map_err(|e| e.to_string())?;
        // A counter stands in for index allocation, which the device variant measures.
        self.next_index = self.next_index.wrapping_add(1);
        hs.create_response(self.next_index, &mut self.rng, out)
            .map_err(|e| e.to_string())?;
        peer.cookie.add_macs(now, out);
        hs.begin_session(now).map_err(|e| e.to_string())
    }
}

/// One round through the bare-API gateway; only the responder's loop is timed.
fn gateway_step(users: &mut Users, gw: &mut Gateway, tally: &mut Tally) -> Sample {
    let round = users.next_round();
    let n = round.initiations.len();
    let mut out = vec![[0u8; response::LEN]; n];
    let (mut ok, mut failure) = (0u64, None);

    let start = Instant::now();
    for (msg, resp) in round.initiations.iter().zip(out.iter_mut()) {
        match gw.respond(round.now, msg, resp) {
            Ok(keys) => {
                ok += 1;
                black_box(keys);
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    let elapsed = start.elapsed();

    let completed = users.completes(0, round.now, &out[0]);
    tally.add(n as u64, ok, failure, completed);
    Sample {
        ops: n as u64,
        elapsed,
    }
}

/// A `Device` with every user configured as a peer.
struct DeviceGateway {
    device: Device,
    /// Each user's UDP source, distinct so that no datagram looks like a roaming peer.
    sources: Vec<SocketAddr>,
}

impl DeviceGateway {
    fn new(private: &Key, users: &Users) -> Result<DeviceGateway, String> {
        let mut device = Device::new(private);
        let mut sources = Vec::with_capacity(users.users.len());
        for (i, u) in users.users.iter().enumerate() {
            let i = i as u32;
            // Tunnel addresses from 10/8, sources from the benchmarking range 198.18/15.
            let tunnel = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let cfg = PeerConfig {
                public_key: *u.identity.public_key(),
                allowed_ips: vec![(tunnel, 32)],
                ..PeerConfig::default()
            };
            device
                .add_peer(Time::ZERO, &cfg)
                .map_err(|e| format!("adding peer {i}: {e}"))?;
            let ip = Ipv4Addr::from(0xc612_0000 + (i & 0xffff));
            sources.push(SocketAddr::new(IpAddr::V4(ip), 1024 + (i >> 16) as u16));
        }
        Ok(DeviceGateway { device, sources })
    }
}

/// One round through `Device::handle_datagram`, draining its transmits and events as an I/O
/// loop would; only that loop is timed.
fn device_step(users: &mut Users, dg: &mut DeviceGateway, tally: &mut Tally) -> Sample {
    let mut round = users.next_round();
    let n = round.initiations.len();
    let mut rng = OsRng;
    let mut cx = Context {
        now: round.now,
        wall: round.wall,
        rng: &mut rng,
    };
    let (mut ok, mut failure, mut first_response) = (0u64, None, None);

    let start = Instant::now();
    for (i, (msg, &src)) in round.initiations.iter_mut().zip(&dg.sources).enumerate() {
        let accepted = match dg.device.handle_datagram(&mut cx, src, msg) {
            Ok(Received::Handshake { .. }) => true,
            Ok(other) => {
                failure = failure.or_else(|| Some(format!("unexpected {other:?}")));
                false
            }
            Err(e) => {
                failure = failure.or_else(|| Some(format!("dropped: {e:?}")));
                false
            }
        };
        let mut answered = false;
        while let Some(t) = dg.device.poll_transmit() {
            answered |= t.dst == src && t.data.len() == response::LEN;
            if i == 0 {
                first_response = Some(t.data);
            } else {
                black_box(t);
            }
        }
        while let Some(e) = dg.device.poll_event() {
            black_box(e);
        }
        ok += u64::from(accepted && answered);
    }
    let elapsed = start.elapsed();

    let completed = first_response.is_some_and(|r| users.completes(0, round.now, &r));
    tally.add(n as u64, ok, failure, completed);
    Sample {
        ops: n as u64,
        elapsed,
    }
}

pub fn run(cfg: &Config, report: &mut Report) -> Result<(), String> {
    eprintln!("handshake: setting up {} users", cfg.users);
    let mut rng = SeededRng::new(0x5eed_0001);
    let gw_private = keys::generate_private(&mut rng);
    let gw_public = keys::public_from_private(&gw_private);
    let mut users = Users::new(cfg.users, &gw_public, &mut rng);
    let timing = cfg.timing();

    eprintln!("handshake: bare API");
    let mut gw = Gateway::new(&gw_private, &users);
    let mut tally = Tally::default();
    let rates = harness::measure(&timing, || gateway_step(&mut users, &mut gw, &mut tally));
    tally.check("handshake")?;
    report
        .results
        .push(Record::from_samples("handshake", "handshakes/s", &rates));
    let direct = tally.succeeded;
    drop(gw);

    eprintln!("handshake: Device::handle_datagram");
    let mut dg = DeviceGateway::new(&gw_private, &users)?;
    let mut tally = Tally::default();
    let rates = harness::measure(&timing, || device_step(&mut users, &mut dg, &mut tally));
    tally.check("handshake_device")?;
    report.results.push(Record::from_samples(
        "handshake_device",
        "handshakes/s",
        &rates,
    ));
    report.notes.push(format!(
        "handshake: {} users, one initiation each per simulated second; all {} (bare) and {} \
         (device) timed initiations answered, one response per round completed by its user",
        cfg.users, direct, tally.succeeded
    ));
    Ok(())
}
