//! The spoofed handshake flood: initiations from random source addresses that belong to no
//! user, each with a valid mac1 for the gateway's public key (so they pass the cheap check and
//! reach the handshake path) and random contents (so, unless the gateway is under load and
//! answers with a cookie reply instead, each costs it a Diffie-Hellman before the static key
//! fails to decrypt). Sent paced from the generator's namespace, where the whole
//! 198.18.0.0/15 range is local: the gateway's cookie replies come back to the flood's own
//! socket, which counts them.

use super::io::{GenSocket, Out, BATCH, RECV_SLOT};
use super::topo::{pin_current, GenTopology, GENERATOR_CORE, USERS_OUTER_BASE};
use super::users::MAX_USERS;
use sluice::proto::cookie::CookieGenerator;
use sluice::proto::messages::{self, initiation, Message, KEY_LEN, TYPE_INITIATION};
use sluice::proto::{Rng, Time};
use sluice::OsRng;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The UDP port the flood sends from (apart from the users' port, so replies to spoofed
/// addresses that happen to be users' reach only the flood's socket).
pub const FLOOD_PORT: u16 = 40001;
/// Spoofed sources: the top of 198.18.0.0/15, above every user's address.
const SPOOF_FIRST: u32 = MAX_USERS + 1;
const SPOOF_SPAN: u32 = (1 << 17) - MAX_USERS - 3;

/// Pre-built flood datagrams: (spoofed source, initiation).
#[derive(Debug, Default)]
pub struct FloodPool {
    items: Vec<(Ipv4Addr, [u8; initiation::LEN])>,
}

impl FloodPool {
    /// `n` initiations for the gateway with public key `gateway_public`, each from a random
    /// spoofed source, with a random sender index, ephemeral, sealed static and timestamp,
    /// and a correct mac1 (mac2 zero: no cookie).
    pub fn new(gateway_public: &[u8; KEY_LEN], n: usize) -> FloodPool {
        let mut rng = OsRng;
        let mut macs = CookieGenerator::new(gateway_public);
        let items = (0..n)
            .map(|_| {
                let mut m = [0u8; initiation::LEN];
                rng.fill_bytes(&mut m[initiation::SENDER.start..initiation::MAC1.start]);
                m[0] = TYPE_INITIATION;
                macs.add_macs(Time::from_nanos(0), &mut m);
                let src = Ipv4Addr::from(
                    u32::from(USERS_OUTER_BASE) + SPOOF_FIRST + rng.next_u32() % SPOOF_SPAN,
                );
                (src, m)
            })
            .collect();
        FloodPool { items }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// What a flood did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FloodStats {
    pub sent: u64,
    pub seconds: f64,
    /// Cookie replies that came back to the spoofed sources.
    pub cookie_replies: u64,
    /// Handshake responses (none should come: no initiation is from a known key).
    pub responses: u64,
}

impl FloodStats {
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }
}

/// A flood running on its own thread (pinned to the generator's core) until stopped.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<FloodStats>,
}

impl Flood {
    /// Start sending `pool` round and round at `rate` initiations per second to the gateway.
    pub fn start(topo: &GenTopology, pool: Arc<FloodPool>, rate: f64) -> Result<Flood, String> {
        if pool.is_empty() {
            return Err("an empty flood".into());
        }
        let sock = topo
            .gen_ns
            .enter(|| GenSocket::bind(FLOOD_PORT))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("binding the flood's socket: {e}"))?;
        let gw = SocketAddrV4::new(super::topo::GW_OUTER_V4, super::topo::LISTEN_PORT);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let _ = pin_current(GENERATOR_CORE);
            let mut st = FloodStats::default();
            let mut bufs = vec![0u8; BATCH * RECV_SLOT];
            let mut lens = [0usize; BATCH];
            let mut outs: Vec<Out> = Vec::with_capacity(BATCH);
            let start = Instant::now();
            let mut next = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                if next < due {
                    let n = (due - next).min(BATCH as u64);
                    outs.clear();
                    for k in next..next + n {
                        let (src, m) = &pool.items[(k % pool.len() as u64) as usize];
                        outs.push(Out {
                            src: *src,
                            dst: gw,
                            data: m,
                        });
                    }
                    // A full buffer: the flood falls behind; that is recorded as its rate.
                    next += sock.send(&outs).unwrap_or(0) as u64;
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
                while let Ok(got) = sock.recv(&mut bufs, &mut lens) {
                    if got == 0 {
                        break;
                    }
                    for (i, &len) in lens.iter().take(got).enumerate() {
                        match messages::parse(&bufs[i * RECV_SLOT..i * RECV_SLOT + len]) {
                            Ok(Message::CookieReply(_)) => st.cookie_replies += 1,
                            Ok(Message::Response(_)) => st.responses += 1,
                            _ => {}
                        }
                    }
                }
            }
            st.sent = next;
            st.seconds = start.elapsed().as_secs_f64();
            // Replies still on their way.
            sock.wait_readable(100);
            while let Ok(got) = sock.recv(&mut bufs, &mut lens) {
                if got == 0 {
                    break;
                }
                for (i, &len) in lens.iter().take(got).enumerate() {
                    if let Ok(Message::CookieReply(_)) =
                        messages::parse(&bufs[i * RECV_SLOT..i * RECV_SLOT + len])
                    {
                        st.cookie_replies += 1;
                    }
                }
            }
            st
        });
        Ok(Flood { stop, handle })
    }

    pub fn finish(self) -> Result<FloodStats, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| "the flood thread panicked".to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice::proto::cookie::CookieChecker;

    #[test]
    fn flood_initiations_pass_mac1_for_the_gateway_only() {
        let mut rng = OsRng;
        let gw_priv = *sluice::keys::generate_private(&mut rng);
        let gw_pub = sluice::keys::public_from_private(&gw_priv);
        let other = sluice::keys::public_from_private(&sluice::keys::generate_private(&mut rng));
        let pool = FloodPool::new(&gw_pub, 64);
        assert_eq!(pool.len(), 64);
        let ok = CookieChecker::new(&gw_pub);
        let wrong = CookieChecker::new(&other);
        let mut sources = std::collections::HashSet::new();
        for (src, m) in &pool.items {
            assert!(matches!(messages::parse(m), Ok(Message::Initiation(_))));
            assert!(ok.check_mac1(m));
            assert!(!wrong.check_mac1(m));
            let off = u32::from(*src) - u32::from(USERS_OUTER_BASE);
            assert!(off > MAX_USERS && off < (1 << 17) - 1, "{src}");
            sources.insert(*src);
        }
        // Random sources: 64 draws from ~31,000 addresses rarely repeat much.
        assert!(sources.len() > 32);
    }
}
