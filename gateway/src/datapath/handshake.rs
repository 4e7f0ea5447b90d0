//! Handshake threads: the slow path. Workers hand them handshake messages (mac1 already
//! checked) through a bounded queue; they run the cookie layer (mac2 and the per-source rate
//! limit under load), the Noise handshake under the peer's lock, and send the replies. With HA
//! they also send the fresh handshakes of taken-over sessions, paced (see `super::ha`).

use super::io::{send_transmits, Outer};
use super::shared::{lock, Shared};
use super::worker::{log_event, HandshakeJob, WorkerStats, UNDER_LOAD_DEPTH_DIVISOR};
use crate::proto::cookie::CookieError;
use crate::proto::effects::{Context, Outbox, Transmit};
use crate::proto::endpoint::Endpoint;
use crate::proto::messages::{self, Message};
use crate::proto::noise;
use crate::{DropCounters, DropReason, OsRng};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for a job, so the thread notices a stop request.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Takeover initiations one round builds at most (each costs two DH).
const PACED_PER_ROUND: usize = 8;

#[derive(Debug)]
pub struct HandshakeThread<O> {
    pub shared: Arc<Shared>,
    pub udp: Arc<O>,
    pub jobs: Receiver<HandshakeJob>,
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<WorkerStats>,
}

impl<O: Outer> HandshakeThread<O> {
    pub fn run(self) {
        let mut drops = DropCounters::default();
        let mut handled = 0u64;
        let mut sent = 0u64;
        let mut out = Outbox::default();
        let mut rng = OsRng;
        while !self.stop.load(Ordering::Relaxed) {
            self.stats
                .heartbeat
                .store(self.shared.clock.now().as_nanos(), Ordering::Relaxed);
            // HA: takeover initiations waiting for their turn shorten the wait for a job.
            let ha = self.shared.ha.get();
            let wait = ha
                .and_then(|h| h.paced_wait(self.shared.clock.now()))
                .map_or(IDLE_WAIT, |w| {
                    w.clamp(Duration::from_micros(100), IDLE_WAIT)
                });
            let job = match self.jobs.recv_timeout(wait) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut cx = Context {
                now: self.shared.clock.now(),
                wall: self.shared.clock.wall(),
                rng: &mut rng,
            };
            if let Some(ha) = ha {
                // Answers first: paced initiations wait while the queue fills (their own
                // responses would put us under load) and while we are under load.
                let depth = self.jobs.len();
                let calm = self
                    .jobs
                    .capacity()
                    .is_none_or(|c| depth < c / UNDER_LOAD_DEPTH_DIVISOR / 2)
                    && !self.shared.is_under_load(cx.now);
                if calm {
                    // With answers waiting, one initiation per answer handled.
                    let max = if job.is_none() && depth == 0 {
                        PACED_PER_ROUND
                    } else {
                        1
                    };
                    ha.send_paced(&self.shared, &mut cx, &mut out, max);
                }
            }
            let Some(mut job) = job else {
                sent += send_transmits(&*self.udp, &mut out.transmits, &mut drops) as u64;
                self.stats.publish(&drops, handled, sent);
                continue;
            };
            match handle(&self.shared, &mut cx, &mut out, job.src, &mut job.data) {
                Ok(()) => {
                    handled += 1;
                    // HA: a new session to tell the group about now, not at the next tick.
                    if let Some(ha) = self.shared.ha.get() {
                        ha.poke();
                    }
                }
                Err(reason) => {
                    drops.count(reason);
                    // Debug only: anyone can send (or replay) handshake messages, so a failed
                    // one is counted, and logged only when asked for. A peer whose handshakes
                    // keep failing is logged at warn when its initiator gives up.
                    tracing::debug!(endpoint = %job.src, reason = reason.label(), "handshake message dropped");
                }
            }
            sent += send_transmits(&*self.udp, &mut out.transmits, &mut drops) as u64;
            for e in out.events.drain(..) {
                log_event(&self.shared, &e);
            }
            self.stats.publish(&drops, handled, sent);
        }
    }
}

/// One handshake message, start to finish.
fn handle(
    shared: &Shared,
    cx: &mut Context,
    out: &mut Outbox,
    src: Endpoint,
    data: &mut [u8],
) -> Result<(), DropReason> {
    let table = shared.table();
    match messages::parse(data)? {
        Message::Initiation(m) => {
            cookie_gate(shared, cx, out, src, m.as_bytes(), m.sender())?;
            let consumed = noise::consume_initiation(&shared.identity, &m)?;
            let id = table
                .by_key(&consumed.remote_static)
                .ok_or(DropReason::UnknownPeer)?;
            shared
                .with_peer(&table, id, cx, out, |peer, env| {
                    peer.respond_to_initiation(env, consumed, src)
                })
                .unwrap_or(Err(DropReason::UnknownPeer))
        }
        Message::Response(m) => {
            cookie_gate(shared, cx, out, src, m.as_bytes(), m.sender())?;
            let id = shared
                .index
                .get(m.receiver())
                .ok_or(DropReason::UnknownIndex)?;
            shared
                .with_peer(&table, id, cx, out, |peer, env| {
                    peer.receive_response(env, &m, src)
                })
                .unwrap_or(Err(DropReason::UnknownIndex))
        }
        Message::CookieReply(m) => {
            let id = shared
                .index
                .get(m.receiver())
                .ok_or(DropReason::UnknownIndex)?;
            shared
                .with_peer(&table, id, cx, out, |peer, env| {
                    peer.receive_cookie_reply(env, &m)
                })
                .unwrap_or(Err(DropReason::UnknownIndex))
        }
        Message::Transport(_) => Err(DropReason::UnknownType),
    }
}

/// Under load a handshake must carry a valid mac2 (else it earns a cookie reply), and its
/// source must be within its rate; mac1 was checked by the worker, and is again here because
/// the validation is one call.
fn cookie_gate(
    shared: &Shared,
    cx: &mut Context,
    out: &mut Outbox,
    src: Endpoint,
    msg: &[u8],
    sender: u32,
) -> Result<(), DropReason> {
    let (src, local) = (src.addr, src.local);
    let under_load = shared.is_under_load(cx.now);
    let verdict = match shared.checker.read() {
        Ok(c) => c.validate(cx.now, msg, src, under_load),
        Err(poisoned) => poisoned.into_inner().validate(cx.now, msg, src, under_load),
    };
    match verdict {
        Ok(()) => {}
        Err(CookieError::CookieRequired) => {
            let mut reply = [0u8; messages::cookie_reply::LEN];
            let mut checker = shared.checker.write().unwrap_or_else(|p| p.into_inner());
            checker.create_reply(cx.now, cx.rng, msg, sender, src, &mut reply);
            out.transmits.push_back(Transmit {
                dst: src,
                src: local,
                data: reply.to_vec(),
            });
            return Err(DropReason::CookieRequired);
        }
        Err(e) => return Err(e.into()),
    }
    if under_load && !lock(&shared.ratelimiter).allow(cx.now, src.ip()) {
        return Err(DropReason::RateLimited);
    }
    Ok(())
}
