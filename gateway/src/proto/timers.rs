//! Per-peer timers (whitepaper §6.2–§6.5; the kernel's `timers.c`) as event hooks plus a
//! deadline table.
//!
//! The packet code calls a hook when something happens (`on_data_sent`, `on_handshake_complete`,
//! …); each hook arms or disarms deadlines. The owner asks [`Timers::next_deadline`] when to come
//! back and [`Timers::take_expired`] which timer fired, then acts on it. There is no thread or
//! callback per peer: a million idle peers cost five `Option<Time>` each.
//!
//! | timer | armed by | fires after | action |
//! |---|---|---|---|
//! | RetransmitHandshake | initiation sent | REKEY_TIMEOUT + jitter | resend, up to MAX_TIMER_HANDSHAKES |
//! | SendKeepalive | data received | KEEPALIVE_TIMEOUT | send a keepalive |
//! | NewHandshake | data sent | KEEPALIVE + REKEY_TIMEOUT + jitter | initiate: the peer went quiet |
//! | ZeroKeyMaterial | session derived | 3 × REJECT_AFTER_TIME | wipe all keys |
//! | PersistentKeepalive | any authenticated packet | the configured interval | send a keepalive |

use super::messages::{
    KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX, ZERO_KEYS_AFTER,
};
use super::session::Keypair;
use super::{Rng, Time};
use core::time::Duration;

/// The five per-peer timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    RetransmitHandshake,
    SendKeepalive,
    NewHandshake,
    ZeroKeyMaterial,
    PersistentKeepalive,
}

impl Timer {
    const ALL: [Timer; 5] = [
        Timer::RetransmitHandshake,
        Timer::SendKeepalive,
        Timer::NewHandshake,
        Timer::ZeroKeyMaterial,
        Timer::PersistentKeepalive,
    ];
}

/// What the owner should do about a retransmit timer that fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retransmit {
    /// Send a fresh initiation (this is attempt `n`).
    Resend(u32),
    /// MAX_TIMER_HANDSHAKES reached: give up, drop staged packets.
    GiveUp,
}

#[derive(Clone, Debug, Default)]
pub struct Timers {
    deadlines: [Option<Time>; 5],
    handshake_attempts: u32,
    need_another_keepalive: bool,
    sent_lastminute_handshake: bool,
    last_sent_handshake: Option<Time>,
    persistent_keepalive: Option<Duration>,
}

fn jitter(rng: &mut dyn Rng) -> Duration {
    let max = u32::try_from(REKEY_TIMEOUT_JITTER_MAX.as_nanos()).unwrap_or(u32::MAX);
    Duration::from_nanos(u64::from(rng.below(max)))
}

impl Timers {
    pub fn new(persistent_keepalive: Option<Duration>) -> Timers {
        Timers {
            persistent_keepalive: persistent_keepalive.filter(|d| !d.is_zero()),
            ..Timers::default()
        }
    }

    fn arm(&mut self, t: Timer, at: Time) {
        self.deadlines[t as usize] = Some(at);
    }

    fn disarm(&mut self, t: Timer) {
        self.deadlines[t as usize] = None;
    }

    pub fn is_armed(&self, t: Timer) -> bool {
        self.deadlines[t as usize].is_some()
    }

    pub fn deadline(&self, t: Timer) -> Option<Time> {
        self.deadlines[t as usize]
    }

    /// When the owner must call [`Timers::take_expired`] next.
    pub fn next_deadline(&self) -> Option<Time> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Pop the earliest timer due at `now`, if any. Call until `None`.
    pub fn take_expired(&mut self, now: Time) -> Option<Timer> {
        let t = Timer::ALL
            .into_iter()
            .filter(|&t| self.deadlines[t as usize].is_some_and(|d| d <= now))
            .min_by_key(|&t| self.deadlines[t as usize])?;
        self.disarm(t);
        Some(t)
    }

    pub fn persistent_keepalive(&self) -> Option<Duration> {
        self.persistent_keepalive
    }

    pub fn set_persistent_keepalive(&mut self, now: Time, interval: Option<Duration>) {
        self.persistent_keepalive = interval.filter(|d| !d.is_zero());
        match self.persistent_keepalive {
            Some(d) => self.arm(Timer::PersistentKeepalive, now + d),
            None => self.disarm(Timer::PersistentKeepalive),
        }
    }

    pub fn handshake_attempts(&self) -> u32 {
        self.handshake_attempts
    }

    /// May we send a new initiation now? Initiations not triggered by the retransmit timer
    /// are limited to one per REKEY_TIMEOUT (whitepaper §6.2). Starting a new attempt resets
    /// the retry count.
    pub fn may_initiate(&mut self, now: Time, is_retry: bool) -> bool {
        if !is_retry {
            self.handshake_attempts = 0;
        }
        self.last_sent_handshake
            .is_none_or(|last| now.has_elapsed(last, REKEY_TIMEOUT))
    }

    /// What to do now that RetransmitHandshake fired.
    pub fn on_retransmit_fired(&mut self, now: Time) -> Retransmit {
        if self.handshake_attempts >= MAX_TIMER_HANDSHAKES {
            self.disarm(Timer::SendKeepalive);
            if !self.is_armed(Timer::ZeroKeyMaterial) {
                self.arm(Timer::ZeroKeyMaterial, now + ZERO_KEYS_AFTER);
            }
            Retransmit::GiveUp
        } else {
            self.handshake_attempts += 1;
            Retransmit::Resend(self.handshake_attempts)
        }
    }

    /// SendKeepalive fired and a keepalive was sent: keep going if data kept arriving.
    pub fn on_keepalive_fired(&mut self, now: Time) {
        if self.need_another_keepalive {
            self.need_another_keepalive = false;
            self.arm(Timer::SendKeepalive, now + KEEPALIVE_TIMEOUT);
        }
    }

    /// An initiation was sent.
    pub fn on_handshake_initiated(&mut self, now: Time, rng: &mut dyn Rng) {
        self.last_sent_handshake = Some(now);
        self.arm(
            Timer::RetransmitHandshake,
            now + REKEY_TIMEOUT + jitter(rng),
        );
    }

    /// A handshake completed (response consumed, or first data on a responder keypair).
    pub fn on_handshake_complete(&mut self) {
        self.disarm(Timer::RetransmitHandshake);
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
    }

    /// New transport keys were derived.
    pub fn on_session_derived(&mut self, now: Time) {
        self.arm(Timer::ZeroKeyMaterial, now + ZERO_KEYS_AFTER);
    }

    /// A transport message with a non-empty payload was sent.
    pub fn on_data_sent(&mut self, now: Time, rng: &mut dyn Rng) {
        if !self.is_armed(Timer::NewHandshake) {
            self.arm(
                Timer::NewHandshake,
                now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter(rng),
            );
        }
    }

    /// A transport message with a non-empty payload was received.
    pub fn on_data_received(&mut self, now: Time) {
        if self.is_armed(Timer::SendKeepalive) {
            self.need_another_keepalive = true;
        } else {
            self.arm(Timer::SendKeepalive, now + KEEPALIVE_TIMEOUT);
        }
    }

    /// Any authenticated message (handshake, data or keepalive) was sent.
    pub fn on_authenticated_packet_sent(&mut self) {
        self.disarm(Timer::SendKeepalive);
    }

    /// Any authenticated message was received.
    pub fn on_authenticated_packet_received(&mut self) {
        self.disarm(Timer::NewHandshake);
    }

    /// Any authenticated message went either way.
    pub fn on_authenticated_packet_traversal(&mut self, now: Time) {
        if let Some(d) = self.persistent_keepalive {
            self.arm(Timer::PersistentKeepalive, now + d);
        }
    }

    /// Key material was wiped: nothing is pending any more except the persistent keepalive.
    pub fn on_keys_zeroed(&mut self) {
        for t in [
            Timer::RetransmitHandshake,
            Timer::SendKeepalive,
            Timer::NewHandshake,
            Timer::ZeroKeyMaterial,
        ] {
            self.disarm(t);
        }
        self.handshake_attempts = 0;
    }

    /// Should sending with `kp` trigger a new handshake (whitepaper §6.2: the initiator rekeys
    /// after REKEY_AFTER_TIME; either side after REKEY_AFTER_MESSAGES)?
    pub fn rekey_due_on_send(now: Time, kp: &Keypair) -> bool {
        kp.send_counter() > REKEY_AFTER_MESSAGES
            || (kp.initiator && now.has_elapsed(kp.created, REKEY_AFTER_TIME))
    }

    /// Should receiving with `kp` trigger a last-minute handshake, so the initiator rekeys
    /// before the keys expire even when it has nothing to send? Only once per session.
    pub fn rekey_due_on_receive(&mut self, now: Time, initiator: bool, created: Time) -> bool {
        let deadline = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        if self.sent_lastminute_handshake || !initiator || !now.has_elapsed(created, deadline) {
            return false;
        }
        self.sent_lastminute_handshake = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SeededRng;

    fn s(secs: u64) -> Time {
        Time::ZERO + Duration::from_secs(secs)
    }

    #[test]
    fn retransmits_with_jitter_then_gives_up() {
        let mut rng = SeededRng::new(1);
        let mut t = Timers::new(None);
        let mut now = s(100);
        assert!(t.may_initiate(now, false));
        t.on_handshake_initiated(now, &mut rng);
        let mut resends = 0;
        let mut jitters = Vec::new();
        loop {
            let d = t.next_deadline().unwrap();
            let wait = d.saturating_since(now);
            assert!(wait >= REKEY_TIMEOUT && wait < REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
            jitters.push(wait);
            now = d;
            assert_eq!(t.take_expired(now), Some(Timer::RetransmitHandshake));
            match t.on_retransmit_fired(now) {
                Retransmit::Resend(n) => {
                    resends += 1;
                    assert_eq!(n, resends);
                    assert!(t.may_initiate(now, true));
                    t.on_handshake_initiated(now, &mut rng);
                }
                Retransmit::GiveUp => break,
            }
        }
        assert_eq!(resends, MAX_TIMER_HANDSHAKES);
        // Jitter really varies.
        jitters.sort();
        jitters.dedup();
        assert!(jitters.len() > 10);
        // Giving up arms key zeroing and nothing else.
        assert_eq!(t.next_deadline(), Some(now + ZERO_KEYS_AFTER));
        assert_eq!(
            t.take_expired(now + ZERO_KEYS_AFTER),
            Some(Timer::ZeroKeyMaterial)
        );
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn initiations_are_rate_limited_unless_retries() {
        let mut rng = SeededRng::new(2);
        let mut t = Timers::new(None);
        t.on_handshake_initiated(s(10), &mut rng);
        assert!(!t.may_initiate(s(14), false));
        assert!(t.may_initiate(s(15), false));
    }

    #[test]
    fn keepalive_after_receiving_without_sending() {
        let mut t = Timers::new(None);
        t.on_data_received(s(1));
        t.on_data_received(s(2)); // sets need_another_keepalive
        assert_eq!(t.take_expired(s(10)), None);
        assert_eq!(t.take_expired(s(11)), Some(Timer::SendKeepalive));
        t.on_keepalive_fired(s(11));
        assert_eq!(t.deadline(Timer::SendKeepalive), Some(s(21)));
        // Sending anything authenticated cancels it.
        t.on_authenticated_packet_sent();
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn new_handshake_when_the_peer_goes_quiet() {
        let mut rng = SeededRng::new(3);
        let mut t = Timers::new(None);
        t.on_data_sent(s(0), &mut rng);
        let d = t.deadline(Timer::NewHandshake).unwrap();
        assert!(d >= s(15) && d < s(15) + REKEY_TIMEOUT_JITTER_MAX);
        // Sending more does not push it back.
        t.on_data_sent(s(3), &mut rng);
        assert_eq!(t.deadline(Timer::NewHandshake), Some(d));
        // Hearing back cancels it.
        t.on_authenticated_packet_received();
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn persistent_keepalive_follows_traffic() {
        let mut t = Timers::new(Some(Duration::from_secs(25)));
        t.on_authenticated_packet_traversal(s(0));
        t.on_authenticated_packet_traversal(s(10));
        assert_eq!(t.take_expired(s(34)), None);
        assert_eq!(t.take_expired(s(35)), Some(Timer::PersistentKeepalive));
        t.set_persistent_keepalive(s(40), None);
        t.on_authenticated_packet_traversal(s(41));
        assert_eq!(t.next_deadline(), None);
        assert!(Timers::new(Some(Duration::ZERO))
            .persistent_keepalive()
            .is_none());
    }

    #[test]
    fn expired_timers_come_out_earliest_first() {
        let mut rng = SeededRng::new(4);
        let mut t = Timers::new(None);
        t.on_session_derived(s(0)); // 540 s
        t.on_data_received(s(0)); // 10 s
        t.on_data_sent(s(0), &mut rng); // ~15 s
        let at = s(1000);
        assert_eq!(t.take_expired(at), Some(Timer::SendKeepalive));
        assert_eq!(t.take_expired(at), Some(Timer::NewHandshake));
        assert_eq!(t.take_expired(at), Some(Timer::ZeroKeyMaterial));
        assert_eq!(t.take_expired(at), None);
    }
}
