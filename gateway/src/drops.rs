//! Why a packet was dropped: the one enum behind every per-worker counter and metric label.
//!
//! Protocol verdicts (from `proto/`) and data-path verdicts share it, so an operator sees every
//! drop under one metric family. Counting is an array increment; nothing allocates or formats.

/// Every reason sluice drops a packet. The discriminant indexes [`DropCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Datagram too short for any message, or of an unknown type.
    UnknownType,
    /// A known type whose length is wrong for it.
    BadLength,
    /// Reserved bytes after the message type are not zero.
    ReservedNonZero,
    /// mac1 does not authenticate the message to our static key.
    BadMac1,
    /// Under load and mac2 is missing or stale: a cookie reply was (or would be) sent instead.
    CookieRequired,
    /// The source exceeded its handshake initiation rate.
    RateLimited,
    /// The handshake queue to the handshake threads is full.
    HandshakeQueueFull,
    /// A handshake message failed to decrypt or verify (wrong key, tampered, bad DH result).
    HandshakeFailed,
    /// An initiation from a static key we have no peer for.
    UnknownPeer,
    /// An initiation whose TAI64N timestamp is not newer than the last one from that peer.
    ReplayedInitiation,
    /// Initiations from this peer arrive faster than allowed (flood protection).
    InitiationTooSoon,
    /// A response for an index whose handshake is not waiting for one.
    UnexpectedHandshake,
    /// Transport data for a receiver index we don't have.
    UnknownIndex,
    /// Transport data with a counter replayed or below the replay window.
    Replayed,
    /// Transport data that failed authentication.
    DecryptFailed,
    /// The keypair is past REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES.
    KeyExpired,
    /// The decrypted inner packet is not a well-formed IPv4 or IPv6 packet.
    BadInnerPacket,
    /// The inner source address is outside the sending peer's AllowedIPs.
    SourceNotAllowed,
    /// No peer's AllowedIPs covers the inner destination.
    NoRoute,
    /// A peer has no endpoint to send to yet.
    NoEndpoint,
    /// The per-peer queue of packets waiting for a handshake is full.
    StagedQueueFull,
    /// A cookie reply that did not decrypt.
    BadCookieReply,
    /// The inner interface (TUN queue) would not take the packet.
    InnerQueueFull,
    /// A multicast or broadcast inner packet no peer's allowed IPs cover (the host's own
    /// IPv6 MLD reports, for one): not a routing failure, so kept apart from `NoRoute`.
    UnroutedMulticast,
    /// An outer frame (AF_XDP path) that is not a well-formed Ethernet/IP/UDP datagram, or
    /// too large for the receive batch.
    MalformedFrame,
    /// An HA sync datagram that failed authentication (bad tag, wrong group key).
    SyncForged,
    /// An HA sync datagram replayed, too old, or from an older epoch of its sender.
    SyncReplayed,
    /// An HA sync datagram that is truncated, of an unknown version, from a sender index that
    /// is ours or out of range, or whose records do not parse.
    SyncMalformed,
    /// A datagram to an HA virtual address while this gateway is not its master.
    VipNotMaster,
    /// A datagram this gateway would have sent from an HA virtual address it no longer holds
    /// (sent from our own address instead, it would pull the master's client away from the
    /// virtual address).
    VipSourceNotHeld,
}

impl DropReason {
    /// Every reason, in discriminant order.
    pub const ALL: [DropReason; 30] = [
        DropReason::UnknownType,
        DropReason::BadLength,
        DropReason::ReservedNonZero,
        DropReason::BadMac1,
        DropReason::CookieRequired,
        DropReason::RateLimited,
        DropReason::HandshakeQueueFull,
        DropReason::HandshakeFailed,
        DropReason::UnknownPeer,
        DropReason::ReplayedInitiation,
        DropReason::InitiationTooSoon,
        DropReason::UnexpectedHandshake,
        DropReason::UnknownIndex,
        DropReason::Replayed,
        DropReason::DecryptFailed,
        DropReason::KeyExpired,
        DropReason::BadInnerPacket,
        DropReason::SourceNotAllowed,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::StagedQueueFull,
        DropReason::BadCookieReply,
        DropReason::InnerQueueFull,
        DropReason::UnroutedMulticast,
        DropReason::MalformedFrame,
        DropReason::SyncForged,
        DropReason::SyncReplayed,
        DropReason::SyncMalformed,
        DropReason::VipNotMaster,
        DropReason::VipSourceNotHeld,
    ];
    pub const COUNT: usize = Self::ALL.len();
    /// The reasons the HA sync thread rejects a datagram for (`sluice_ha_sync_drops_total`).
    pub const SYNC: [DropReason; 3] = [
        DropReason::SyncForged,
        DropReason::SyncReplayed,
        DropReason::SyncMalformed,
    ];

    /// The Prometheus label value and the name printed in summaries.
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::UnknownType => "unknown_type",
            DropReason::BadLength => "bad_length",
            DropReason::ReservedNonZero => "reserved_nonzero",
            DropReason::BadMac1 => "bad_mac1",
            DropReason::CookieRequired => "cookie_required",
            DropReason::RateLimited => "rate_limited",
            DropReason::HandshakeQueueFull => "handshake_queue_full",
            DropReason::HandshakeFailed => "handshake_failed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::ReplayedInitiation => "replayed_initiation",
            DropReason::InitiationTooSoon => "initiation_too_soon",
            DropReason::UnexpectedHandshake => "unexpected_handshake",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::Replayed => "replayed",
            DropReason::DecryptFailed => "decrypt_failed",
            DropReason::KeyExpired => "key_expired",
            DropReason::BadInnerPacket => "bad_inner_packet",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::StagedQueueFull => "staged_queue_full",
            DropReason::BadCookieReply => "bad_cookie_reply",
            DropReason::InnerQueueFull => "inner_queue_full",
            DropReason::UnroutedMulticast => "unrouted_multicast",
            DropReason::MalformedFrame => "malformed_frame",
            DropReason::SyncForged => "sync_forged",
            DropReason::SyncReplayed => "sync_replayed",
            DropReason::SyncMalformed => "sync_malformed",
            DropReason::VipNotMaster => "vip_not_master",
            DropReason::VipSourceNotHeld => "vip_source_not_held",
        }
    }
}

/// Drop counters owned by one worker (or one test). Plain integers: the owner increments them;
/// readers take snapshots through whatever the owner publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::COUNT]);

impl DropCounters {
    #[inline]
    pub fn count(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero counters, in enum order.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.get(r)))
            .filter(|&(_, n)| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_discriminant_order_and_labels_are_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} out of order");
        }
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
    }

    #[test]
    fn counters_count_by_reason() {
        let mut c = DropCounters::default();
        c.count(DropReason::Replayed);
        c.count(DropReason::Replayed);
        c.count(DropReason::NoRoute);
        assert_eq!(c.get(DropReason::Replayed), 2);
        assert_eq!(c.total(), 3);
        assert_eq!(
            c.nonzero().collect::<Vec<_>>(),
            vec![(DropReason::Replayed, 2), (DropReason::NoRoute, 1)]
        );
    }
}
