//! HA session sync (issue 8), sans-IO: the wire format of the sync channel between the members
//! of a gateway group, its sealing and replay protection, the records it carries, the counter
//! regions that make a taken-over session safe to send on, and the store of sessions held for
//! other members.
//!
//! # Channel
//!
//! One UDP datagram is `header ‖ nonce ‖ XChaCha20-Poly1305(records) ‖ tag`:
//!
//! | field | bytes | |
//! |---|---|---|
//! | type | 1 | [`TYPE_SYNC`] |
//! | version | 1 | [`VERSION`] |
//! | sender node | 1 | index in the member list |
//! | reserved | 1 | zero |
//! | sender epoch | 8 | the sender's start time, wall-clock ns (grows across restarts) |
//! | sequence | 8 | per sender and epoch, from 0 |
//! | nonce | 24 | random |
//!
//! The header is the AAD. The key is `KDF1(group secret, "sluice-ha-v1" ‖ member list)`, so
//! groups with another secret or another member list cannot talk to each other. A receiver
//! keeps per member the highest epoch seen and a [`ReplayWindow`] over sequence numbers: a lower
//! epoch, a replayed or too-old sequence, a bad tag, a sender index that is ours or out of
//! range are rejected with a [`DropReason`] and change nothing.
//!
//! # Records
//!
//! | record | tag | bytes | sent |
//! |---|---|---|---|
//! | SessionNew | 1 | [`SESSION_RECORD_LEN`] | when a session is derived (or taken over); again until acked |
//! | Marks | 2 | [`MARKS_RECORD_LEN`] | every [`SYNC_INTERVAL`] for sessions whose counters moved, and every [`MARKS_REFRESH`] for every session ([`marks_due`]) |
//! | Gone | 3 | [`GONE_RECORD_LEN`] | when a session is dropped or replaced |
//! | Ack | 4 | [`ACK_RECORD_LEN`] | by a receiver, for every SessionNew it accepted (version 2) |
//!
//! A SessionNew is the one record whose loss matters (Marks are superseded by the next ones,
//! a lost Gone only keeps a held session until it expires), so [`Announcements`] re-sends it,
//! to the members that have not acked it, every [`RESEND_AFTER`] up to
//! [`MAX_ANNOUNCE_SENDS`] times. Bandwidth stays bounded: each session is announced at most
//! that many times per member, and only while unacked (a member that is down costs
//! `new sessions/s × MAX_ANNOUNCE_SENDS × SESSION_RECORD_LEN` bytes/s until it returns, when its
//! new epoch gets it a full resync).
//!
//! # Counter regions (no nonce reuse)
//!
//! The 64-bit counter of a session is cut into regions of 2^[`REGION_BITS`]. The member that
//! derives a session sends in region 0. Member `j` taking a session over sends in the smallest
//! region `r >= 1` with `r % N == j` above every region it has seen used for that session
//! ([`takeover_region`]). Each region has exactly one possible sender, a sender's counter only
//! grows and never leaves its region, so no (key, counter) pair is ever sent twice, whatever
//! the channel loses, even in split brain.

use super::endpoint::Endpoint;
use super::kdf;
use super::messages::{KEY_LEN, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, TAG_LEN};
use super::noise::SessionKeys;
use super::replay::ReplayWindow;
use super::session::Keypair;
use super::{Rng, Time};
use crate::DropReason;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use core::fmt;
use core::time::Duration;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use zeroize::Zeroizing;

// ---- specification: wire constants ----

/// The first byte of every sync datagram (WireGuard's message types are 1 to 4).
pub const TYPE_SYNC: u8 = 0x48;
/// 2: adds the Ack record (a version-1 member would reject it as malformed); 3: SessionNew
/// carries our address the peer sent to (the sticky source), so a taker answers from it.
pub const VERSION: u8 = 3;
pub const HEADER_LEN: usize = 20;
pub const NONCE_LEN: usize = 24;
/// Bytes a datagram adds around its records.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// Largest sync datagram.
pub const MAX_DATAGRAM: usize = 1400;
/// The label mixed into the group key.
pub const LABEL: &[u8] = b"sluice-ha-v1";

const RECORD_SESSION: u8 = 1;
const RECORD_MARKS: u8 = 2;
const RECORD_GONE: u8 = 3;
const RECORD_ACK: u8 = 4;
const ENDPOINT_LEN: usize = 19;
/// Family (0: none, 4, 6) and address, IPv4 in the first 4 bytes.
const SOURCE_LEN: usize = 17;
/// tag, peer, local, remote, send key, recv key, flags, age, send counter, mark, endpoint,
/// region, endpoint source
pub const SESSION_RECORD_LEN: usize =
    1 + KEY_LEN + 4 + 4 + KEY_LEN + KEY_LEN + 1 + 4 + 8 + 8 + ENDPOINT_LEN + 4 + SOURCE_LEN;
/// tag, local, send counter, mark, region
pub const MARKS_RECORD_LEN: usize = 1 + 4 + 8 + 8 + 4;
pub const GONE_RECORD_LEN: usize = 1 + 4;
/// tag, local index of the SessionNew acknowledged
pub const ACK_RECORD_LEN: usize = 1 + 4;
const _: () = assert!(SESSION_RECORD_LEN == 166);
const _: () = assert!(OVERHEAD + SESSION_RECORD_LEN <= MAX_DATAGRAM);

/// Counter regions are 2^40 counters long.
pub const REGION_BITS: u32 = 40;
/// The highest region whose end is still below REJECT_AFTER_MESSAGES.
pub const MAX_REGION: u32 = ((REJECT_AFTER_MESSAGES >> REGION_BITS) - 1) as u32;
/// With HA, member `j` allocates receiver indices whose top bits are `j`.
pub const INDEX_NODE_SHIFT: u32 = 28;
/// At most this many members (the index prefix has 4 bits).
pub const MAX_MEMBERS: usize = 1 << (32 - INDEX_NODE_SHIFT);

// ---- implementation: timing ----

/// Marks of sessions whose counters moved are sent this often.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Every session's marks go again at least this often, moved or not: a lost Marks datagram
/// for a session that then went idle leaves a member's mark stale for at most this long
/// (unless every re-send is lost too).
pub const MARKS_REFRESH: Duration = Duration::from_secs(1);
/// An announcement (SessionNew) not acked by a member this long after it was sent goes again.
pub const RESEND_AFTER: Duration = Duration::from_millis(250);
/// Each announcement goes to a member at most this many times (about 2.5 s of resends).
pub const MAX_ANNOUNCE_SENDS: u8 = 10;
/// A member takes over only sessions created at least this long after it started: a previous
/// incarnation of it may have used its regions of older sessions, and it does not remember.
pub const START_MARGIN: Duration = Duration::from_secs(1);

/// What the sync thread tells the group about one of our sessions at a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarksDue {
    /// Never told: a SessionNew.
    Session,
    /// Its counters moved since they were last sent, or they were sent [`MARKS_REFRESH`] ago.
    Marks,
    Nothing,
}

/// Whether a session's counters `now_told` (send counter, receive mark, region) are due to be
/// sent, given what was last sent and when (`None`: never).
pub fn marks_due(
    last: Option<((u64, u64, u32), Time)>,
    now_told: (u64, u64, u32),
    now: Time,
) -> MarksDue {
    match last {
        None => MarksDue::Session,
        Some((told, at)) if told != now_told || now.has_elapsed(at, MARKS_REFRESH) => {
            MarksDue::Marks
        }
        Some(_) => MarksDue::Nothing,
    }
}

/// The member whose index prefix `index` carries.
pub fn node_of_index(index: u32) -> u8 {
    (index >> INDEX_NODE_SHIFT) as u8
}

/// `index` moved into member `node`'s partition.
pub fn partition_index(node: u8, index: u32) -> u32 {
    (index & ((1 << INDEX_NODE_SHIFT) - 1)) | (u32::from(node) << INDEX_NODE_SHIFT)
}

/// The first counter of region `r`.
pub fn region_start(r: u32) -> u64 {
    u64::from(r) << REGION_BITS
}

/// One past the last counter a sender in region `r` may use.
pub fn region_end(r: u32) -> u64 {
    (u64::from(r + 1) << REGION_BITS).min(REJECT_AFTER_MESSAGES)
}

/// The region a counter lies in.
pub fn region_of(counter: u64) -> u32 {
    (counter >> REGION_BITS) as u32
}

/// The region member `me` of `n` sends in when it takes over a session in which regions up to
/// `highest_seen` have been used: the smallest `r >= 1` with `r % n == me` above it. `None` if
/// the counter space is exhausted (the session is then unusable: rehandshake).
pub fn takeover_region(me: u8, n: u8, highest_seen: u32) -> Option<u32> {
    let (me, n) = (u32::from(me), u32::from(n.max(1)));
    let above = highest_seen.checked_add(1)?.max(1);
    let base = above - above % n + me;
    let r = if base >= above {
        base
    } else {
        base.checked_add(n)?
    };
    let r = if r == 0 { n } else { r };
    (r <= MAX_REGION).then_some(r)
}

/// The channel key of a group: KDF1(secret, LABEL ‖ member list).
pub struct GroupKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GroupKey(<redacted>)")
    }
}

impl GroupKey {
    pub fn derive(secret: &[u8; KEY_LEN], members: &[SocketAddr]) -> GroupKey {
        let mut input = LABEL.to_vec();
        for m in members {
            input.extend_from_slice(m.to_string().as_bytes());
            input.push(b'\n');
        }
        GroupKey(kdf::kdf1(secret, &input))
    }
}

/// A datagram's header (authenticated, not encrypted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub node: u8,
    pub epoch: u64,
    pub seq: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = TYPE_SYNC;
        h[1] = VERSION;
        h[2] = self.node;
        h[4..12].copy_from_slice(&self.epoch.to_le_bytes());
        h[12..20].copy_from_slice(&self.seq.to_le_bytes());
        h
    }

    fn parse(d: &[u8]) -> Result<Header, DropReason> {
        if d.len() < OVERHEAD || d[0] != TYPE_SYNC || d[1] != VERSION || d[3] != 0 {
            return Err(DropReason::SyncMalformed);
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[at..at + 8]);
            u64::from_le_bytes(b)
        };
        Ok(Header {
            node: d[2],
            epoch: u64_at(4),
            seq: u64_at(12),
        })
    }
}

/// Seal `plaintext` records under `header` with a fresh random nonce.
pub fn seal(key: &GroupKey, header: &Header, rng: &mut dyn Rng, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let h = header.encode();
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let cipher = XChaCha20Poly1305::new(&(*key.0).into());
    let body = &mut out[HEADER_LEN + NONCE_LEN..];
    // XChaCha20-Poly1305 fails only for inputs over 256 GiB; ours are < 1400 bytes.
    if let Ok(tag) = cipher.encrypt_inout_detached(&XNonce::from(nonce), &h, body.into()) {
        out.extend_from_slice(&tag);
    }
    out
}

/// Authenticate and decrypt a datagram. Returns its header and the plaintext records.
pub fn open(key: &GroupKey, d: &[u8]) -> Result<(Header, Zeroizing<Vec<u8>>), DropReason> {
    let header = Header::parse(d)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&d[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
    let body_end = d.len() - TAG_LEN;
    let mut body = Zeroizing::new(d[HEADER_LEN + NONCE_LEN..body_end].to_vec());
    let tag: &[u8; TAG_LEN] = d[body_end..]
        .try_into()
        .map_err(|_| DropReason::SyncMalformed)?;
    let cipher = XChaCha20Poly1305::new(&(*key.0).into());
    cipher
        .decrypt_inout_detached(
            &XNonce::from(nonce),
            &d[..HEADER_LEN],
            body.as_mut_slice().into(),
            tag.into(),
        )
        .map_err(|_| DropReason::SyncForged)?;
    Ok((header, body))
}

/// A session as its owner announces it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub peer: [u8; KEY_LEN],
    pub local_index: u32,
    pub remote_index: u32,
    pub send_key: Zeroizing<[u8; KEY_LEN]>,
    pub recv_key: Zeroizing<[u8; KEY_LEN]>,
    pub initiator: bool,
    /// The keypair may be sent on (an initiator's, or a responder's confirmed by data).
    pub may_send: bool,
    pub age_ms: u32,
    pub send_counter: u64,
    /// Greatest counter received plus one.
    pub receive_mark: u64,
    /// The peer's endpoint and our address it sent to (the source to answer from).
    pub endpoint: Option<Endpoint>,
    pub region: u32,
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecord")
            .field("peer", &crate::keys::encode_key(&self.peer))
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.initiator)
            .field("may_send", &self.may_send)
            .field("age_ms", &self.age_ms)
            .field("send_counter", &self.send_counter)
            .field("receive_mark", &self.receive_mark)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl SessionRecord {
    /// A record of `kp` for peer `peer`, `age` old at `now`.
    pub fn of(
        peer: &[u8; KEY_LEN],
        kp: &Keypair,
        may_send: bool,
        now: Time,
        endpoint: Option<Endpoint>,
    ) -> SessionRecord {
        let (send, recv) = kp.export_keys();
        SessionRecord {
            peer: *peer,
            local_index: kp.local_index,
            remote_index: kp.remote_index,
            send_key: Zeroizing::new(*send),
            recv_key: Zeroizing::new(*recv),
            initiator: kp.initiator,
            may_send,
            age_ms: u32::try_from(now.saturating_since(kp.created).as_millis()).unwrap_or(u32::MAX),
            send_counter: kp.send_counter(),
            receive_mark: kp.receive_counter(),
            endpoint,
            region: region_of(kp.send_counter()),
        }
    }
}

/// Counters of a session that moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarksRecord {
    pub local_index: u32,
    pub send_counter: u64,
    pub receive_mark: u64,
    pub region: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Session(SessionRecord),
    Marks(MarksRecord),
    /// The session with this local index was dropped or replaced.
    Gone(u32),
    /// The SessionNew with this local index arrived.
    Ack(u32),
}

impl Record {
    pub fn encoded_len(&self) -> usize {
        match self {
            Record::Session(_) => SESSION_RECORD_LEN,
            Record::Marks(_) => MARKS_RECORD_LEN,
            Record::Gone(_) => GONE_RECORD_LEN,
            Record::Ack(_) => ACK_RECORD_LEN,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Session(s) => {
                out.push(RECORD_SESSION);
                out.extend_from_slice(&s.peer);
                out.extend_from_slice(&s.local_index.to_le_bytes());
                out.extend_from_slice(&s.remote_index.to_le_bytes());
                out.extend_from_slice(&s.send_key[..]);
                out.extend_from_slice(&s.recv_key[..]);
                out.push(u8::from(s.initiator) | (u8::from(s.may_send) << 1));
                out.extend_from_slice(&s.age_ms.to_le_bytes());
                out.extend_from_slice(&s.send_counter.to_le_bytes());
                out.extend_from_slice(&s.receive_mark.to_le_bytes());
                encode_endpoint(s.endpoint.map(|e| e.addr), out);
                out.extend_from_slice(&s.region.to_le_bytes());
                encode_source(s.endpoint.and_then(|e| e.local), out);
            }
            Record::Marks(m) => {
                out.push(RECORD_MARKS);
                out.extend_from_slice(&m.local_index.to_le_bytes());
                out.extend_from_slice(&m.send_counter.to_le_bytes());
                out.extend_from_slice(&m.receive_mark.to_le_bytes());
                out.extend_from_slice(&m.region.to_le_bytes());
            }
            Record::Gone(i) => {
                out.push(RECORD_GONE);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Record::Ack(i) => {
                out.push(RECORD_ACK);
                out.extend_from_slice(&i.to_le_bytes());
            }
        }
    }

    /// Decode every record of a plaintext; any malformed record rejects the whole datagram.
    pub fn decode_all(mut p: &[u8]) -> Result<Vec<Record>, DropReason> {
        let mut out = Vec::new();
        while let Some(&tag) = p.first() {
            let len = match tag {
                RECORD_SESSION => SESSION_RECORD_LEN,
                RECORD_MARKS => MARKS_RECORD_LEN,
                RECORD_GONE => GONE_RECORD_LEN,
                RECORD_ACK => ACK_RECORD_LEN,
                _ => return Err(DropReason::SyncMalformed),
            };
            let rec = p.get(..len).ok_or(DropReason::SyncMalformed)?;
            let mut c = Cursor(&rec[1..]);
            out.push(match tag {
                RECORD_SESSION => {
                    let peer = c.key()?;
                    let local_index = c.u32()?;
                    let remote_index = c.u32()?;
                    let send_key = Zeroizing::new(c.key()?);
                    let recv_key = Zeroizing::new(c.key()?);
                    let flags = c.u8()?;
                    if flags > 3 {
                        return Err(DropReason::SyncMalformed);
                    }
                    Record::Session(SessionRecord {
                        peer,
                        local_index,
                        remote_index,
                        send_key,
                        recv_key,
                        initiator: flags & 1 != 0,
                        may_send: flags & 2 != 0,
                        age_ms: c.u32()?,
                        send_counter: c.u64()?,
                        receive_mark: c.u64()?,
                        endpoint: c.endpoint()?,
                        region: c.u32()?,
                    })
                    .with_source(c.source()?)
                }
                RECORD_MARKS => Record::Marks(MarksRecord {
                    local_index: c.u32()?,
                    send_counter: c.u64()?,
                    receive_mark: c.u64()?,
                    region: c.u32()?,
                }),
                RECORD_GONE => Record::Gone(c.u32()?),
                _ => Record::Ack(c.u32()?),
            });
            p = &p[len..];
        }
        Ok(out)
    }
}

fn encode_endpoint(e: Option<SocketAddr>, out: &mut Vec<u8>) {
    let mut b = [0u8; ENDPOINT_LEN];
    match e {
        None => {}
        Some(SocketAddr::V4(a)) => {
            b[0] = 4;
            b[1..5].copy_from_slice(&a.ip().octets());
            b[17..19].copy_from_slice(&a.port().to_le_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            b[0] = 6;
            b[1..17].copy_from_slice(&a.ip().octets());
            b[17..19].copy_from_slice(&a.port().to_le_bytes());
        }
    }
    out.extend_from_slice(&b);
}

fn encode_source(local: Option<IpAddr>, out: &mut Vec<u8>) {
    let mut b = [0u8; SOURCE_LEN];
    match local {
        None => {}
        Some(IpAddr::V4(a)) => {
            b[0] = 4;
            b[1..5].copy_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            b[0] = 6;
            b[1..17].copy_from_slice(&a.octets());
        }
    }
    out.extend_from_slice(&b);
}

impl Record {
    /// A decoded SessionNew with its endpoint's source filled in (it comes last on the wire).
    fn with_source(self, local: Option<IpAddr>) -> Record {
        match self {
            Record::Session(mut s) => {
                s.endpoint = s.endpoint.map(|e| Endpoint::with_local(e.addr, local));
                Record::Session(s)
            }
            other => other,
        }
    }
}

/// Reads fixed-size fields; every read is length-checked.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DropReason> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(DropReason::SyncMalformed)?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, DropReason> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, DropReason> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DropReason> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn key(&mut self) -> Result<[u8; KEY_LEN], DropReason> {
        self.take()
    }
    fn source(&mut self) -> Result<Option<IpAddr>, DropReason> {
        let b: [u8; SOURCE_LEN] = self.take()?;
        match b[0] {
            0 => Ok(None),
            4 => Ok(Some(IpAddr::from([b[1], b[2], b[3], b[4]]))),
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[1..17]);
                Ok(Some(IpAddr::V6(Ipv6Addr::from(a))))
            }
            _ => Err(DropReason::SyncMalformed),
        }
    }
    fn endpoint(&mut self) -> Result<Option<Endpoint>, DropReason> {
        let b: [u8; ENDPOINT_LEN] = self.take()?;
        let port = u16::from_le_bytes([b[17], b[18]]);
        match b[0] {
            0 => Ok(None),
            4 => Ok(Some(Endpoint::new(SocketAddr::new(
                IpAddr::from([b[1], b[2], b[3], b[4]]),
                port,
            )))),
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[1..17]);
                Ok(Some(Endpoint::new(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(a)),
                    port,
                ))))
            }
            _ => Err(DropReason::SyncMalformed),
        }
    }
}

/// Our sending side: numbers and seals datagrams.
#[derive(Debug)]
pub struct SyncSender {
    node: u8,
    epoch: u64,
    seq: u64,
}

impl SyncSender {
    pub fn new(node: u8, epoch: u64) -> SyncSender {
        SyncSender {
            node,
            epoch,
            seq: 0,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Pack `records` into as few datagrams as fit [`MAX_DATAGRAM`]; at least one (an empty
    /// datagram is the heartbeat that tells the others we are alive, and our epoch).
    pub fn seal_records(
        &mut self,
        key: &GroupKey,
        rng: &mut dyn Rng,
        records: &[Record],
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut plain = Zeroizing::new(Vec::with_capacity(MAX_DATAGRAM));
        for r in records {
            if OVERHEAD + plain.len() + r.encoded_len() > MAX_DATAGRAM {
                out.push(self.seal_one(key, rng, &plain));
                plain.clear();
            }
            r.encode(&mut plain);
        }
        if !plain.is_empty() || out.is_empty() {
            out.push(self.seal_one(key, rng, &plain));
        }
        out
    }

    fn seal_one(&mut self, key: &GroupKey, rng: &mut dyn Rng, plain: &[u8]) -> Vec<u8> {
        let header = Header {
            node: self.node,
            epoch: self.epoch,
            seq: self.seq,
        };
        self.seq += 1;
        seal(key, &header, rng, plain)
    }
}

#[derive(Debug)]
struct MemberState {
    epoch: u64,
    window: ReplayWindow,
}

/// What an accepted datagram said.
#[derive(Debug)]
pub struct Accepted {
    pub node: u8,
    pub epoch: u64,
    /// The sender restarted (or we heard it for the first time): it needs a full resync.
    pub new_epoch: bool,
    pub records: Vec<Record>,
}

/// Our receiving side: authenticates datagrams and rejects replays, per member.
#[derive(Debug)]
pub struct SyncReceiver {
    me: u8,
    n: u8,
    members: Vec<Option<MemberState>>,
}

impl SyncReceiver {
    pub fn new(me: u8, n: u8) -> SyncReceiver {
        SyncReceiver {
            me,
            n,
            members: (0..n).map(|_| None).collect(),
        }
    }

    /// Check and open one datagram. Nothing changes unless it is accepted.
    pub fn accept(&mut self, key: &GroupKey, d: &[u8]) -> Result<Accepted, DropReason> {
        let h = Header::parse(d)?;
        if h.node >= self.n || h.node == self.me {
            return Err(DropReason::SyncMalformed);
        }
        let slot = self
            .members
            .get_mut(usize::from(h.node))
            .ok_or(DropReason::SyncMalformed)?;
        let new_epoch = match slot {
            Some(m) if h.epoch < m.epoch => return Err(DropReason::SyncReplayed),
            Some(m) if h.epoch == m.epoch => {
                if !m.window.may_accept(h.seq) {
                    return Err(DropReason::SyncReplayed);
                }
                false
            }
            _ => true,
        };
        let (_, plain) = open(key, d)?;
        let records = Record::decode_all(&plain);
        let m = match slot {
            Some(m) if !new_epoch => m,
            _ => slot.insert(MemberState {
                epoch: h.epoch,
                window: ReplayWindow::new(),
            }),
        };
        if !m.window.check_and_update(h.seq) {
            return Err(DropReason::SyncReplayed);
        }
        Ok(Accepted {
            node: h.node,
            epoch: h.epoch,
            new_epoch,
            records: records?,
        })
    }
}

/// The acks a receiver owes the sender of `records`: one per SessionNew.
pub fn acks_for(records: &[Record]) -> Vec<Record> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Session(s) => Some(Record::Ack(s.local_index)),
            _ => None,
        })
        .collect()
}

/// A bit per member.
pub type MemberMask = u16;

#[derive(Clone, Copy, Debug)]
struct Pending {
    /// Members that have not acked it.
    unacked: MemberMask,
    last_sent: Time,
    sends: u8,
}

/// Our SessionNew announcements not yet acked by every member, for re-sending (see the module
/// docs). Keyed by local index.
#[derive(Debug)]
pub struct Announcements {
    me: u8,
    n: u8,
    pending: HashMap<u32, Pending>,
}

impl Announcements {
    pub fn new(me: u8, n: u8) -> Announcements {
        Announcements {
            me,
            n,
            pending: HashMap::new(),
        }
    }

    /// Every member but us.
    pub fn others(&self) -> MemberMask {
        let all = if usize::from(self.n) >= MAX_MEMBERS {
            MemberMask::MAX
        } else {
            (1 << self.n) - 1
        };
        all & !(1 << self.me)
    }

    /// We sent the SessionNew of `index` to the members in `to` at `now`.
    pub fn sent(&mut self, now: Time, index: u32, to: MemberMask) {
        let to = to & self.others();
        if to == 0 {
            return;
        }
        let p = self.pending.entry(index).or_insert(Pending {
            unacked: 0,
            last_sent: now,
            sends: 0,
        });
        p.unacked |= to;
        p.last_sent = now;
        p.sends = 1;
    }

    /// Apply the Ack records of a datagram from member `from`.
    pub fn on_records(&mut self, from: u8, records: &[Record]) {
        if from >= self.n {
            return;
        }
        for r in records {
            if let Record::Ack(i) = r {
                if let Some(p) = self.pending.get_mut(i) {
                    p.unacked &= !(1 << from);
                    if p.unacked == 0 {
                        self.pending.remove(i);
                    }
                }
            }
        }
    }

    /// The session is gone: nothing more to announce.
    pub fn gone(&mut self, index: u32) {
        self.pending.remove(&index);
    }

    /// The announcements to send again at `now`, with the members to send each to. Those
    /// sent [`MAX_ANNOUNCE_SENDS`] times are given up.
    pub fn due(&mut self, now: Time) -> Vec<(u32, MemberMask)> {
        let mut out = Vec::new();
        self.pending.retain(|&i, p| {
            if !now.has_elapsed(p.last_sent, RESEND_AFTER) {
                return true;
            }
            if p.sends >= MAX_ANNOUNCE_SENDS {
                return false;
            }
            p.sends += 1;
            p.last_sent = now;
            out.push((i, p.unacked));
            true
        });
        out.sort_unstable();
        out
    }

    /// Announcements waiting for an ack.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// A session another member derived or holds, kept in case we must take it over.
pub struct HeldSession {
    pub from_node: u8,
    pub peer: [u8; KEY_LEN],
    pub remote_index: u32,
    send_key: Zeroizing<[u8; KEY_LEN]>,
    recv_key: Zeroizing<[u8; KEY_LEN]>,
    pub initiator: bool,
    pub may_send: bool,
    /// When it was derived, on our clock (our receipt time minus its age).
    pub created: Time,
    pub receive_mark: u64,
    pub endpoint: Option<Endpoint>,
    /// The highest counter region anyone was seen using.
    pub highest_region: u32,
    /// We took it over (in this region).
    pub taken: Option<u32>,
}

impl fmt::Debug for HeldSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldSession")
            .field("from_node", &self.from_node)
            .field("peer", &crate::keys::encode_key(&self.peer))
            .field("created", &self.created)
            .field("receive_mark", &self.receive_mark)
            .field("highest_region", &self.highest_region)
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

/// A keypair built to take a held session over.
#[derive(Debug)]
pub struct Takeover {
    pub keypair: Keypair,
    /// Install as current (else as next, waiting for the peer's first data).
    pub confirmed: bool,
    pub peer: [u8; KEY_LEN],
    pub from_node: u8,
    pub region: u32,
    pub endpoint: Option<Endpoint>,
}

/// Sessions held for the other members, by local index.
#[derive(Debug)]
pub struct HeldStore {
    me: u8,
    n: u8,
    started: Time,
    sessions: HashMap<u32, HeldSession>,
    /// The indices held for each peer (a peer's current, previous and next sessions), so the
    /// data path finds a peer's session to take over without a walk over the store.
    by_peer: HashMap<[u8; KEY_LEN], Vec<u32>>,
}

impl HeldStore {
    /// `started`: when this member started (on its clock), see [`START_MARGIN`].
    pub fn new(me: u8, n: u8, started: Time) -> HeldStore {
        HeldStore {
            me,
            n,
            started,
            sessions: HashMap::new(),
            by_peer: HashMap::new(),
        }
    }

    fn link(&mut self, peer: [u8; KEY_LEN], index: u32) {
        let v = self.by_peer.entry(peer).or_default();
        if !v.contains(&index) {
            v.push(index);
        }
    }

    fn unlink(&mut self, peer: &[u8; KEY_LEN], index: u32) {
        if let Some(v) = self.by_peer.get_mut(peer) {
            v.retain(|&i| i != index);
            if v.is_empty() {
                self.by_peer.remove(peer);
            }
        }
    }

    /// The index of the newest session held for `peer` that may be taken over now (not taken
    /// yet, not expired, derived after we started; see [`HeldStore::take_over`]).
    pub fn newest_for_peer(&self, now: Time, peer: &[u8; KEY_LEN]) -> Option<u32> {
        self.by_peer
            .get(peer)?
            .iter()
            .filter_map(|&i| Some((i, self.sessions.get(&i)?)))
            .filter(|(_, s)| s.taken.is_none() && self.may_take(now, s))
            .max_by_key(|(_, s)| s.created)
            .map(|(i, _)| i)
    }

    /// Whether a held session is young enough to take over, and derived late enough that no
    /// earlier incarnation of ours can have used one of its regions.
    fn may_take(&self, now: Time, s: &HeldSession) -> bool {
        s.created.as_nanos() >= (self.started + START_MARGIN).as_nanos()
            && !now.has_elapsed(s.created, REJECT_AFTER_TIME)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn get(&self, local_index: u32) -> Option<&HeldSession> {
        self.sessions.get(&local_index)
    }

    /// Whether `local_index` is held (taken over or not): index allocation must skip it.
    pub fn contains(&self, local_index: u32) -> bool {
        self.sessions.contains_key(&local_index)
    }

    pub fn indices(&self) -> Vec<u32> {
        self.sessions.keys().copied().collect()
    }

    /// Sessions held and not (yet) taken over.
    pub fn held_for_others(&self) -> usize {
        self.sessions.values().filter(|s| s.taken.is_none()).count()
    }

    /// Apply a record `from` a member at `now`.
    pub fn apply(&mut self, now: Time, from: u8, record: Record) {
        match record {
            Record::Session(s) => {
                let created = Time::from_nanos(
                    now.as_nanos()
                        .saturating_sub(u64::from(s.age_ms) * 1_000_000),
                );
                self.link(s.peer, s.local_index);
                let e = self
                    .sessions
                    .entry(s.local_index)
                    .or_insert_with(|| HeldSession {
                        from_node: from,
                        peer: s.peer,
                        remote_index: s.remote_index,
                        send_key: s.send_key.clone(),
                        recv_key: s.recv_key.clone(),
                        initiator: s.initiator,
                        may_send: s.may_send,
                        created,
                        receive_mark: s.receive_mark,
                        endpoint: s.endpoint,
                        highest_region: s.region,
                        taken: None,
                    });
                if e.peer != s.peer || e.remote_index != s.remote_index {
                    // An index reused for a new session: the old one is gone.
                    let old_peer = e.peer;
                    *e = HeldSession {
                        from_node: from,
                        peer: s.peer,
                        remote_index: s.remote_index,
                        send_key: s.send_key,
                        recv_key: s.recv_key,
                        initiator: s.initiator,
                        may_send: s.may_send,
                        created,
                        receive_mark: s.receive_mark,
                        endpoint: s.endpoint,
                        highest_region: s.region,
                        taken: None,
                    };
                    if old_peer != s.peer {
                        self.unlink(&old_peer, s.local_index);
                    }
                    return;
                }
                e.from_node = from;
                e.may_send |= s.may_send;
                e.receive_mark = e.receive_mark.max(s.receive_mark);
                e.highest_region = e.highest_region.max(s.region);
                if s.endpoint.is_some() {
                    e.endpoint = s.endpoint;
                }
            }
            Record::Marks(m) => {
                if let Some(e) = self.sessions.get_mut(&m.local_index) {
                    e.receive_mark = e.receive_mark.max(m.receive_mark);
                    e.highest_region = e.highest_region.max(m.region);
                    // Counters moved: the peer used the session, so it is confirmed.
                    e.may_send |= m.receive_mark > 0;
                }
            }
            Record::Ack(_) => {}
            Record::Gone(i) => {
                // Keep what we took over: ours now, and its regions must be remembered.
                if self.sessions.get(&i).is_some_and(|s| s.taken.is_none()) {
                    if let Some(s) = self.sessions.remove(&i) {
                        self.unlink(&s.peer, i);
                    }
                }
            }
        }
    }

    /// Drop sessions past REJECT_AFTER_TIME.
    pub fn expire(&mut self, now: Time) {
        self.sessions
            .retain(|_, s| !now.has_elapsed(s.created, REJECT_AFTER_TIME));
        let sessions = &self.sessions;
        self.by_peer.retain(|_, v| {
            v.retain(|i| sessions.contains_key(i));
            !v.is_empty()
        });
    }

    /// Build the keypair to take `local_index` over, and record the region it will use. `None`
    /// if not held, expired, too old to be sure of our regions, or out of regions.
    pub fn take_over(&mut self, now: Time, local_index: u32) -> Option<Takeover> {
        let (me, n) = (self.me, self.n);
        let s = self.sessions.get(&local_index)?;
        if !self.may_take(now, s) {
            return None;
        }
        let s = self.sessions.get_mut(&local_index)?;
        let region = takeover_region(me, n, s.highest_region)?;
        s.highest_region = region;
        s.taken = Some(region);
        let keys = SessionKeys {
            send: s.send_key.clone(),
            recv: s.recv_key.clone(),
            local_index,
            remote_index: s.remote_index,
            initiator: s.initiator,
            created: s.created,
        };
        Some(Takeover {
            keypair: Keypair::resume(
                keys,
                region_start(region),
                region_end(region),
                s.receive_mark,
            ),
            confirmed: s.may_send || s.initiator,
            peer: s.peer,
            from_node: s.from_node,
            region,
            endpoint: s.endpoint,
        })
    }

    /// A keypair to check a packet with before taking over (nothing is recorded).
    pub fn probe(&self, now: Time, local_index: u32) -> Option<Keypair> {
        let s = self.sessions.get(&local_index)?;
        if s.taken.is_some() || now.has_elapsed(s.created, REJECT_AFTER_TIME) {
            return None;
        }
        let keys = SessionKeys {
            send: s.send_key.clone(),
            recv: s.recv_key.clone(),
            local_index,
            remote_index: s.remote_index,
            initiator: s.initiator,
            created: s.created,
        };
        Some(Keypair::resume(keys, 0, 0, s.receive_mark))
    }
}

impl super::peer::Peer {
    /// Take a session over from another gateway (HA): install its keypair and follow the peer
    /// to `endpoint`. The caller has registered the keypair's local index for this peer, and
    /// queues the fresh handshake that replaces the session (an [`InitiationPacer`] turn, then
    /// [`Peer::initiate_after_takeover`]): building an initiation costs two DH, which a
    /// takeover of thousands of sessions must not spend all at once.
    ///
    /// [`Peer::initiate_after_takeover`]: super::peer::Peer::initiate_after_takeover
    pub fn take_over(
        &mut self,
        env: &mut super::effects::Env,
        keypair: Keypair,
        confirmed: bool,
        endpoint: Option<Endpoint>,
    ) {
        for i in self
            .keypairs
            .adopt(keypair, confirmed)
            .into_iter()
            .flatten()
        {
            env.indices.release(i);
        }
        self.timers.on_session_derived(env.cx.now);
        if let Some(e) = endpoint {
            self.set_endpoint(e);
        }
    }

    /// The fresh handshake a takeover of the session `index` queued, now that its turn came:
    /// started if that session is still the current one (no newer session replaced it
    /// meanwhile) and the timers allow an initiation. True if one was queued in the outbox.
    pub fn initiate_after_takeover(&mut self, env: &mut super::effects::Env, index: u32) -> bool {
        if self.keypairs.current().map(|k| k.local_index) != Some(index) {
            return false;
        }
        let before = env.out.transmits.len();
        self.send_initiation(env, false);
        env.out.transmits.len() > before
    }

    /// Whether [`Peer::send`] would encrypt now rather than stage and start a handshake.
    ///
    /// [`Peer::send`]: super::peer::Peer::send
    pub fn has_usable_session(&self, now: Time) -> bool {
        self.keypairs
            .current()
            .is_some_and(|k| !k.is_expired(now) && k.send_counter() < REJECT_AFTER_MESSAGES)
    }
}

/// The handshake initiations takeovers queue, sent at a bounded rate (GCRA): a burst of
/// [`PACER_BURST`], then one every `1 ms / per_ms`. A takeover of 10,000 sessions queues
/// 10,000 initiations at once; sending them paced spreads their cost (two DH each to build,
/// more for the responses) and keeps the responses from filling the handshake queue, which
/// would put this gateway under load and make it answer with cookie replies. One entry per
/// peer: a peer taken over twice keeps its place with the newer session's index.
#[derive(Debug)]
pub struct InitiationPacer {
    order: std::collections::VecDeque<super::peer::PeerId>,
    index: HashMap<super::peer::PeerId, u32>,
    interval_ns: u64,
    /// The theoretical arrival time of the next send (GCRA).
    tat: u64,
}

/// Initiations the pacer lets go at once after a quiet time.
pub const PACER_BURST: u64 = 16;
/// Takeover initiations sent per millisecond, at most.
pub const TAKEOVER_INITIATIONS_PER_MS: u64 = 2;

impl InitiationPacer {
    pub fn new(per_ms: u64) -> InitiationPacer {
        InitiationPacer {
            order: std::collections::VecDeque::new(),
            index: HashMap::new(),
            interval_ns: 1_000_000 / per_ms.max(1),
            tat: 0,
        }
    }

    /// Queue `peer`'s initiation for the session taken over under `index`.
    pub fn push(&mut self, peer: super::peer::PeerId, index: u32) {
        if self.index.insert(peer, index).is_none() {
            self.order.push_back(peer);
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The initiations whose turn has come at `now`, at most `max`, oldest first.
    pub fn take(&mut self, now: Time, max: usize) -> Vec<(super::peer::PeerId, u32)> {
        let now = now.as_nanos();
        let mut t = self
            .tat
            .max(now.saturating_sub(PACER_BURST * self.interval_ns));
        let mut out = Vec::new();
        while out.len() < max && t <= now {
            let Some(peer) = self.order.pop_front() else {
                break;
            };
            if let Some(index) = self.index.remove(&peer) {
                out.push((peer, index));
                t += self.interval_ns;
            }
        }
        self.tat = t;
        out
    }

    /// How long until the next queued initiation's turn (zero: now); `None` if none waits.
    pub fn wait(&self, now: Time) -> Option<Duration> {
        if self.order.is_empty() {
            return None;
        }
        let now = now.as_nanos();
        let next = self
            .tat
            .max(now.saturating_sub(PACER_BURST * self.interval_ns));
        Some(Duration::from_nanos(next.saturating_sub(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rng::SeededRng;
    use proptest::prelude::*;

    fn members() -> Vec<SocketAddr> {
        vec![
            "10.99.0.1:51821".parse().unwrap(),
            "10.99.0.2:51821".parse().unwrap(),
            "10.99.0.3:51821".parse().unwrap(),
        ]
    }

    fn key() -> GroupKey {
        GroupKey::derive(&[7u8; 32], &members())
    }

    fn session(local: u32, region: u32) -> SessionRecord {
        SessionRecord {
            peer: [9u8; 32],
            local_index: local,
            remote_index: 77,
            send_key: Zeroizing::new([1u8; 32]),
            recv_key: Zeroizing::new([2u8; 32]),
            initiator: false,
            may_send: true,
            age_ms: 50,
            send_counter: region_start(region) + 5,
            receive_mark: 1000,
            endpoint: Some(Endpoint::with_local(
                "198.18.1.2:40001".parse().unwrap(),
                Some("198.51.100.10".parse().unwrap()),
            )),
            region,
        }
    }

    #[test]
    fn seal_open_round_trip_and_records_decode() {
        let mut rng = SeededRng::new(1);
        let mut tx = SyncSender::new(1, 1234);
        let recs = vec![
            Record::Session(session(partition_index(1, 5), 0)),
            Record::Marks(MarksRecord {
                local_index: 9,
                send_counter: 10,
                receive_mark: 11,
                region: 2,
            }),
            Record::Gone(42),
            Record::Ack(partition_index(2, 7)),
            Record::Session(SessionRecord {
                endpoint: Some(Endpoint::with_local(
                    "[fd00::1]:9".parse().unwrap(),
                    Some("fd00::10".parse().unwrap()),
                )),
                ..session(3, 4)
            }),
            Record::Session(SessionRecord {
                endpoint: Some(Endpoint::new("[fd00::2]:9".parse().unwrap())),
                ..session(5, 1)
            }),
            Record::Session(SessionRecord {
                endpoint: None,
                ..session(4, 0)
            }),
        ];
        let d = tx.seal_records(&key(), &mut rng, &recs);
        assert_eq!(d.len(), 1);
        assert!(d[0].len() <= MAX_DATAGRAM);
        let mut rx = SyncReceiver::new(0, 3);
        let a = rx.accept(&key(), &d[0]).unwrap();
        assert_eq!((a.node, a.epoch, a.new_epoch), (1, 1234, true));
        assert_eq!(a.records, recs);
        // The next datagram of the same epoch is not new.
        let d2 = tx.seal_records(&key(), &mut rng, &[]);
        let a2 = rx.accept(&key(), &d2[0]).unwrap();
        assert!(!a2.new_epoch && a2.records.is_empty());
    }

    #[test]
    fn many_records_split_into_datagrams_within_the_limit() {
        let mut rng = SeededRng::new(2);
        let mut tx = SyncSender::new(2, 1);
        let recs: Vec<Record> = (0..100).map(|i| Record::Session(session(i, 0))).collect();
        let ds = tx.seal_records(&key(), &mut rng, &recs);
        assert!(ds.len() >= 100 * SESSION_RECORD_LEN / MAX_DATAGRAM);
        let mut rx = SyncReceiver::new(0, 3);
        let mut got = Vec::new();
        for d in &ds {
            assert!(d.len() <= MAX_DATAGRAM);
            got.extend(rx.accept(&key(), d).unwrap().records);
        }
        assert_eq!(got, recs);
    }

    #[test]
    fn forged_replayed_and_malformed_datagrams_are_rejected() {
        let mut rng = SeededRng::new(3);
        let mut tx = SyncSender::new(1, 500);
        let good = tx
            .seal_records(&key(), &mut rng, &[Record::Gone(1)])
            .remove(0);
        let mut rx = SyncReceiver::new(0, 3);

        // Bad tag.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(rx.accept(&key(), &bad).unwrap_err(), DropReason::SyncForged);
        // Flipped ciphertext byte.
        let mut bad = good.clone();
        bad[OVERHEAD - TAG_LEN] ^= 0x80;
        assert_eq!(rx.accept(&key(), &bad).unwrap_err(), DropReason::SyncForged);
        // Flipped header byte (the AAD): the epoch.
        let mut bad = good.clone();
        bad[5] ^= 1;
        assert_eq!(rx.accept(&key(), &bad).unwrap_err(), DropReason::SyncForged);
        // Another group's key.
        let other = GroupKey::derive(&[8u8; 32], &members());
        assert_eq!(
            rx.accept(&other, &good).unwrap_err(),
            DropReason::SyncForged
        );
        // Same secret, other member list.
        let other = GroupKey::derive(&[7u8; 32], &members()[..2]);
        assert_eq!(
            rx.accept(&other, &good).unwrap_err(),
            DropReason::SyncForged
        );
        // Truncated, wrong type, wrong version, reserved byte set.
        for cut in [0, 1, HEADER_LEN, OVERHEAD - 1] {
            assert_eq!(
                rx.accept(&key(), &good[..cut]).unwrap_err(),
                DropReason::SyncMalformed
            );
        }
        // (Version 1 is the version before Ack records.)
        for (at, v) in [(0, 1u8), (1, 1), (1, VERSION + 1), (3, 1)] {
            let mut bad = good.clone();
            bad[at] = v;
            assert_eq!(
                rx.accept(&key(), &bad).unwrap_err(),
                DropReason::SyncMalformed
            );
        }
        // None of that moved anything: the genuine datagram is accepted once.
        assert!(rx.accept(&key(), &good).is_ok());
        assert_eq!(
            rx.accept(&key(), &good).unwrap_err(),
            DropReason::SyncReplayed
        );

        // A sender index that is ours, or out of range.
        for node in [0u8, 3, 15, 255] {
            let mut s = SyncSender::new(node, 900);
            let d = s.seal_records(&key(), &mut rng, &[]).remove(0);
            assert_eq!(
                rx.accept(&key(), &d).unwrap_err(),
                DropReason::SyncMalformed
            );
        }

        // A lower epoch (an old incarnation's datagram) after a newer one.
        let mut old = SyncSender::new(1, 499);
        let d = old.seal_records(&key(), &mut rng, &[]).remove(0);
        assert_eq!(rx.accept(&key(), &d).unwrap_err(), DropReason::SyncReplayed);
        // A higher epoch restarts the window.
        let mut newer = SyncSender::new(1, 501);
        let d = newer.seal_records(&key(), &mut rng, &[]).remove(0);
        let a = rx.accept(&key(), &d).unwrap();
        assert!(a.new_epoch);
        // And now the previous epoch's datagrams are refused.
        let d = tx.seal_records(&key(), &mut rng, &[]).remove(0);
        assert_eq!(rx.accept(&key(), &d).unwrap_err(), DropReason::SyncReplayed);
    }

    #[test]
    fn garbage_records_inside_an_authentic_datagram_are_malformed() {
        let mut rng = SeededRng::new(4);
        let mut rx = SyncReceiver::new(0, 3);
        let garbage = [vec![9u8], vec![RECORD_GONE, 1, 2], vec![RECORD_SESSION; 10]];
        for (seq, plain) in garbage.iter().enumerate() {
            let h = Header {
                node: 2,
                epoch: 1,
                seq: seq as u64,
            };
            let d = seal(&key(), &h, &mut rng, plain);
            assert_eq!(
                rx.accept(&key(), &d).unwrap_err(),
                DropReason::SyncMalformed
            );
        }
    }

    #[test]
    fn regions_follow_the_rule() {
        // Two members: member 1 takes odd regions, member 0 even regions >= 2.
        assert_eq!(takeover_region(1, 2, 0), Some(1));
        assert_eq!(takeover_region(0, 2, 0), Some(2));
        assert_eq!(takeover_region(1, 2, 1), Some(3));
        assert_eq!(takeover_region(0, 2, 3), Some(4));
        assert_eq!(takeover_region(2, 3, 4), Some(5));
        assert_eq!(takeover_region(0, 3, 0), Some(3));
        assert_eq!(takeover_region(1, 2, MAX_REGION), None);
        assert!(region_end(MAX_REGION) <= REJECT_AFTER_MESSAGES);
        assert_eq!(region_of(region_start(7) + 12345), 7);
    }

    proptest! {
        /// Any sequence of takeovers by any members, each seeing only some of the regions used
        /// before (lost sync), never gives two members the same region, and never region 0.
        #[test]
        fn regions_of_different_members_never_collide(
            n in 2u8..=16,
            steps in proptest::collection::vec((0u8..16, any::<bool>()), 1..60),
        ) {
            let mut owner: HashMap<u32, u8> = HashMap::new();
            owner.insert(0, 255); // the deriver
            let mut seen_by: Vec<u32> = vec![0; usize::from(n)];
            let mut highest = 0u32;
            for (who, synced) in steps {
                let who = who % n;
                let seen = if synced { highest } else { seen_by[usize::from(who)] };
                let Some(r) = takeover_region(who, n, seen) else { continue };
                prop_assert!(r >= 1);
                prop_assert_eq!(r % u32::from(n), u32::from(who));
                prop_assert!(r > seen);
                if let Some(&o) = owner.get(&r) {
                    prop_assert_eq!(o, who, "region {} used by two members", r);
                }
                owner.insert(r, who);
                seen_by[usize::from(who)] = r;
                highest = highest.max(r);
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(p in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Record::decode_all(&p);
            let mut rx = SyncReceiver::new(0, 2);
            let _ = rx.accept(&key(), &p);
        }
    }

    #[test]
    fn taken_over_keypair_starts_at_its_region_and_rejects_old_counters() {
        let start = Time::from_nanos(1_000_000_000);
        let mut store = HeldStore::new(1, 2, start);
        let now = start + Duration::from_secs(5);
        let idx = partition_index(0, 1234);
        store.apply(now, 0, Record::Session(session(idx, 0)));
        store.apply(
            now,
            0,
            Record::Marks(MarksRecord {
                local_index: idx,
                send_counter: 99,
                receive_mark: 2000,
                region: 0,
            }),
        );
        assert_eq!(store.held_for_others(), 1);
        let t = store.take_over(now, idx).unwrap();
        assert_eq!(t.region, 1);
        assert!(t.confirmed);
        assert_eq!(t.keypair.send_counter(), region_start(1));
        assert_eq!(t.keypair.receive_counter(), 2000);
        // Encrypt with the taker, decrypt with a client holding the other direction.
        let mut taker = t.keypair;
        let mut client = Keypair::new(SessionKeys {
            send: Zeroizing::new([2u8; 32]),
            recv: Zeroizing::new([1u8; 32]),
            local_index: 77,
            remote_index: idx,
            initiator: true,
            created: now,
        });
        let mut buf = [0u8; 128];
        let n = taker.encrypt(now, b"hi", 1420, &mut buf).unwrap();
        let mut m = buf;
        assert!(client.decrypt(now, &mut m[..n]).is_ok());
        assert_eq!(client.receive_counter(), region_start(1) + 1);
        // The client's counters up to the mark are refused, the next one is taken.
        for c in [0u64, 1000, 1999] {
            let mut msg = [0u8; 64];
            let mut probe = Keypair::resume(
                SessionKeys {
                    send: Zeroizing::new([2u8; 32]),
                    recv: Zeroizing::new([1u8; 32]),
                    local_index: 77,
                    remote_index: idx,
                    initiator: true,
                    created: now,
                },
                c,
                u64::MAX,
                0,
            );
            let n = probe.encrypt(now, b"", 1420, &mut msg).unwrap();
            assert_eq!(
                taker.decrypt(now, &mut msg[..n]),
                Err(DropReason::Replayed),
                "counter {c}"
            );
        }
        let n = client.encrypt(now, b"", 1420, &mut buf).unwrap();
        assert!(client.send_counter() == 1);
        let _ = n;
        // Taking it over again moves to the next region of ours.
        let t2 = store.take_over(now, idx).unwrap();
        assert_eq!(t2.region, 3);
        // Marks from the other member naming region 4 push us past it.
        store.apply(
            now,
            0,
            Record::Marks(MarksRecord {
                local_index: idx,
                send_counter: region_start(4),
                receive_mark: 0,
                region: 4,
            }),
        );
        assert_eq!(store.take_over(now, idx).unwrap().region, 5);
    }

    #[test]
    fn sessions_older_than_our_start_or_expired_are_not_taken_over() {
        let start = Time::from_nanos(10_000_000_000);
        let mut store = HeldStore::new(1, 2, start);
        // Received half a second after we started, 100 ms old: too close to our start.
        let now = start + Duration::from_millis(500);
        store.apply(now, 0, Record::Session(session(5, 0)));
        assert!(store.take_over(now, 5).is_none());
        let later = start + Duration::from_secs(3);
        store.apply(later, 0, Record::Session(session(6, 0)));
        assert!(store.take_over(later, 6).is_some());
        store.apply(later, 0, Record::Session(session(7, 0)));
        store.apply(later, 0, Record::Gone(7));
        assert!(store.get(7).is_none());
        // Taken-over sessions survive Gone.
        store.apply(later, 0, Record::Gone(6));
        assert!(store.get(6).is_some());
        store.expire(later + REJECT_AFTER_TIME);
        assert!(store.is_empty());
    }

    /// One member of a group: its channel ends, the sessions it holds and its announcements.
    struct Member {
        tx: SyncSender,
        rx: SyncReceiver,
        held: HeldStore,
        ann: Announcements,
    }

    impl Member {
        fn new(node: u8) -> Member {
            Member {
                tx: SyncSender::new(node, 100 + u64::from(node)),
                rx: SyncReceiver::new(node, 3),
                held: HeldStore::new(node, 3, Time::from_nanos(1)),
                ann: Announcements::new(node, 3),
            }
        }

        /// Take a datagram in; returns the acks owed to its sender.
        fn receive(&mut self, now: Time, d: &[u8]) -> (u8, Vec<Record>) {
            let a = self.rx.accept(&key(), d).unwrap();
            self.ann.on_records(a.node, &a.records);
            let acks = acks_for(&a.records);
            for r in a.records {
                self.held.apply(now, a.node, r);
            }
            (a.node, acks)
        }
    }

    #[test]
    fn a_lost_announcement_is_resent_until_every_member_acked_it() {
        let mut rng = SeededRng::new(9);
        let mut m: Vec<Member> = (0..3).map(Member::new).collect();
        let t0 = Time::from_nanos(10_000_000_000);
        let idx = partition_index(0, 0x1234);
        // Member 0 announces a new session to 1 and 2; the datagram to 1 is lost.
        let rec = [Record::Session(session(idx, 0))];
        let d = m[0].tx.seal_records(&key(), &mut rng, &rec).remove(0);
        let others = m[0].ann.others();
        m[0].ann.sent(t0, idx, others);
        let (from, acks) = m[2].receive(t0, &d);
        assert_eq!((from, acks.clone()), (0, vec![Record::Ack(idx)]));
        assert!(m[2].held.get(idx).is_some());
        assert!(m[1].held.get(idx).is_none(), "lost on the way to member 1");
        // Member 2's ack reaches member 0.
        let d = m[2].tx.seal_records(&key(), &mut rng, &acks).remove(0);
        m[0].receive(t0, &d);
        assert_eq!(m[0].ann.len(), 1, "member 1 has not acked");
        // Nothing is due before RESEND_AFTER (one sync tick later, say).
        assert!(m[0].ann.due(t0 + SYNC_INTERVAL).is_empty());
        // Then it goes again, to member 1 only.
        let t1 = t0 + RESEND_AFTER;
        assert_eq!(m[0].ann.due(t1), vec![(idx, 0b010)]);
        let d = m[0].tx.seal_records(&key(), &mut rng, &rec).remove(0);
        let (_, acks) = m[1].receive(t1, &d);
        assert!(
            m[1].held.get(idx).is_some(),
            "the session arrived after all"
        );
        let d = m[1].tx.seal_records(&key(), &mut rng, &acks).remove(0);
        m[0].receive(t1, &d);
        assert!(m[0].ann.is_empty());
        assert!(m[0].ann.due(t1 + RESEND_AFTER * 4).is_empty());
    }

    #[test]
    fn announcements_are_bounded_and_forget_gone_sessions() {
        let mut ann = Announcements::new(1, 3);
        assert_eq!(ann.others(), 0b101);
        assert_eq!(Announcements::new(3, 16).others(), 0xfff7);
        let t0 = Time::from_nanos(1_000_000_000);
        // Nobody ever acks: sent MAX_ANNOUNCE_SENDS times in all, then given up.
        ann.sent(t0, 7, ann.others());
        let mut resends = 0;
        for k in 1..100u32 {
            resends += ann.due(t0 + RESEND_AFTER * k).len();
        }
        assert_eq!(resends, usize::from(MAX_ANNOUNCE_SENDS) - 1);
        assert!(ann.is_empty());
        // A session that is gone is not re-announced; acks from out of range or for unknown
        // indices change nothing; an announcement only to ourselves is not tracked.
        ann.sent(t0, 8, ann.others());
        ann.sent(t0, 9, ann.others());
        ann.gone(8);
        ann.on_records(7, &[Record::Ack(9)]);
        ann.on_records(0, &[Record::Ack(12345), Record::Gone(9)]);
        ann.sent(t0, 10, 0b010);
        assert_eq!(ann.due(t0 + RESEND_AFTER), vec![(9, 0b101)]);
        ann.on_records(0, &[Record::Ack(9)]);
        assert_eq!(ann.due(t0 + RESEND_AFTER * 2), vec![(9, 0b100)]);
        // A full resync to member 0 makes it owe an ack again.
        ann.sent(t0 + RESEND_AFTER * 2, 9, 0b001);
        ann.on_records(2, &[Record::Ack(9)]);
        assert_eq!(ann.due(t0 + RESEND_AFTER * 3), vec![(9, 0b001)]);
    }

    #[test]
    fn the_pacer_lets_a_burst_go_then_one_per_interval_one_entry_per_peer() {
        let mut p = InitiationPacer::new(2); // one every 500 µs
        let t0 = Time::from_nanos(10_000_000_000);
        assert_eq!(p.wait(t0), None);
        for peer in 0..100u32 {
            p.push(peer, 1000 + peer);
        }
        // Taken over again (a newer session): same place, the newer index.
        p.push(3, 5003);
        assert_eq!(p.len(), 100);
        assert_eq!(p.wait(t0), Some(Duration::ZERO));
        let first = p.take(t0, 1000);
        assert_eq!(
            first.len() as u64,
            PACER_BURST + 1,
            "the burst, and no more"
        );
        assert_eq!(first[0], (0, 1000));
        assert_eq!(first[3], (3, 5003));
        // Nothing more until an interval has passed; `max` caps a round.
        assert!(p.take(t0, 1000).is_empty());
        assert_eq!(p.wait(t0), Some(Duration::from_micros(500)));
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(p.take(t1, 1000).len(), 10);
        let t2 = t1 + Duration::from_millis(5);
        assert_eq!(p.take(t2, 4).len(), 4);
        // Over a long time the rate holds: 2 per ms, in queue order, each peer once.
        let mut all: Vec<u32> = first.iter().map(|&(peer, _)| peer).collect();
        let mut t = t2;
        let mut rounds = 0;
        while !p.is_empty() {
            t += Duration::from_micros(100);
            rounds += 1;
            all.extend(p.take(t, 8).into_iter().map(|(peer, _)| peer));
        }
        // 69 left; at most a burst's worth go without waiting their interval (500 µs).
        let paced = 69 - (PACER_BURST + 1);
        assert!(rounds * 100 >= paced * 500, "{rounds} rounds of 100 µs");
        assert_eq!(all.len(), 100 - 14);
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
        assert_eq!(p.wait(t), None);
    }

    #[test]
    fn the_newest_takeable_session_of_a_peer_is_found_by_key() {
        let started = Time::from_nanos(1_000_000_000);
        let mut store = HeldStore::new(1, 2, started);
        let now = started + Duration::from_secs(10);
        let mut old = session(partition_index(0, 1), 0);
        old.age_ms = 3000;
        let mut new = session(partition_index(0, 2), 0);
        new.age_ms = 100;
        let mut other = session(partition_index(0, 3), 0);
        other.peer = [4u8; 32];
        for s in [old, new, other] {
            store.apply(now, 0, Record::Session(s));
        }
        assert_eq!(
            store.newest_for_peer(now, &[9u8; 32]),
            Some(partition_index(0, 2))
        );
        assert_eq!(
            store.newest_for_peer(now, &[4u8; 32]),
            Some(partition_index(0, 3))
        );
        assert_eq!(store.newest_for_peer(now, &[5u8; 32]), None);
        // Taken over: the next newest; gone: not found; expired: not found.
        assert!(store.take_over(now, partition_index(0, 2)).is_some());
        assert_eq!(
            store.newest_for_peer(now, &[9u8; 32]),
            Some(partition_index(0, 1))
        );
        store.apply(now, 0, Record::Gone(partition_index(0, 3)));
        assert_eq!(store.newest_for_peer(now, &[4u8; 32]), None);
        // An index reused for another peer moves to that peer.
        let mut reused = session(partition_index(0, 1), 0);
        reused.peer = [6u8; 32];
        reused.remote_index = 99;
        store.apply(now, 0, Record::Session(reused));
        assert_eq!(store.newest_for_peer(now, &[9u8; 32]), None);
        assert_eq!(
            store.newest_for_peer(now, &[6u8; 32]),
            Some(partition_index(0, 1))
        );
        let later = now + REJECT_AFTER_TIME;
        assert_eq!(store.newest_for_peer(later, &[6u8; 32]), None);
        store.expire(later);
        assert!(store.is_empty());
        assert!(store.by_peer.is_empty(), "the by-peer index follows");
    }

    #[test]
    fn marks_go_when_they_move_and_again_every_refresh() {
        let t0 = Time::from_nanos(5_000_000_000);
        let c = (10, 20, 0);
        assert_eq!(marks_due(None, c, t0), MarksDue::Session);
        assert_eq!(marks_due(Some((c, t0)), c, t0), MarksDue::Nothing);
        assert_eq!(marks_due(Some((c, t0)), (11, 20, 0), t0), MarksDue::Marks);
        assert_eq!(marks_due(Some((c, t0)), (10, 21, 0), t0), MarksDue::Marks);
        assert_eq!(marks_due(Some((c, t0)), (10, 20, 1), t0), MarksDue::Marks);
        let almost = t0 + (MARKS_REFRESH - Duration::from_millis(1));
        assert_eq!(marks_due(Some((c, t0)), c, almost), MarksDue::Nothing);
        assert_eq!(
            marks_due(Some((c, t0)), c, t0 + MARKS_REFRESH),
            MarksDue::Marks
        );
    }

    #[test]
    fn index_partitions() {
        assert_eq!(node_of_index(partition_index(5, u32::MAX)), 5);
        assert_eq!(partition_index(0, 0xF000_0001), 1);
        assert_eq!(MAX_MEMBERS, 16);
    }
}
