//! The WireGuard wire format: every constant from the whitepaper, and typed views of the four
//! messages (whitepaper §5.4).
//!
//! A datagram is classified by its type byte *and* its exact length before any field is read;
//! only then is it wrapped in a view whose accessors use the named field ranges below. Nothing
//! else in sluice hard-codes an offset or a size.

use core::ops::Range;
use core::time::Duration;

// ---------------------------------------------------------------------------------------------
// Specification constants (whitepaper §6.1 and the Noise protocol name, §5.4).
// ---------------------------------------------------------------------------------------------

/// The Noise protocol name, hashed into the initial chaining key.
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's identifier, mixed into the initial hash.
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Label for the mac1 key: HASH(LABEL_MAC1 || Spub).
pub const LABEL_MAC1: &[u8] = b"mac1----";
/// Label for the cookie encryption key: HASH(LABEL_COOKIE || Spub).
pub const LABEL_COOKIE: &[u8] = b"cookie--";

/// Initiate a new handshake once this many messages were sent with a keypair.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Never send or accept a message with a counter at or past this. The kernel's value
/// (`U64_MAX - COUNTER_WINDOW_SIZE - 1`) keeps the replay window from wrapping.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - REPLAY_WINDOW_SIZE - 1;
/// The initiator of the current session starts a new handshake after this.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A keypair older than this is never used to send or receive.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Give up retrying a handshake after this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Retransmit an unanswered initiation after this (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of the random jitter added to every REKEY_TIMEOUT (the kernel's HZ/3).
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Send a keepalive if we received data but sent nothing for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many initiations one handshake attempt sends before giving up (REKEY_ATTEMPT_TIME /
/// REKEY_TIMEOUT).
pub const MAX_TIMER_HANDSHAKES: u32 =
    (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;
/// All key material for a peer is zeroed after this long without a new handshake.
pub const ZERO_KEYS_AFTER: Duration = Duration::from_secs(REJECT_AFTER_TIME.as_secs() * 3);
/// A responder's cookie secret changes this often; initiators forget a cookie after this.
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// Initiators stop using a received cookie this much before the responder's secret rotates.
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Implementation constants (the kernel's choices, where the whitepaper leaves them open).
// ---------------------------------------------------------------------------------------------

/// Bits in the replay bitmap (RFC 6479 style, a multiple of the word size).
pub const REPLAY_BITMAP_BITS: u64 = 8192;
/// Counters below the highest seen by more than this are rejected (the kernel's 8192 − 64).
pub const REPLAY_WINDOW_SIZE: u64 = REPLAY_BITMAP_BITS - 64;
/// A responder accepts at most this many initiations per second from one peer.
pub const INITIATIONS_PER_SECOND_PER_PEER: u64 = 50;
/// Handshake initiations per second allowed from one source address (or IPv6 /64).
pub const RATELIMIT_PACKETS_PER_SECOND: u64 = 20;
/// Burst of initiations allowed from one source above the steady rate.
pub const RATELIMIT_BURST: u64 = 5;
/// Packets held per peer while waiting for a handshake to complete.
pub const MAX_STAGED_PACKETS: usize = 128;
/// Round TAI64N timestamps down to this so they don't leak precise timing.
pub const TIMESTAMP_GRANULARITY_NANOS: u32 = 1 << 24;

// ---------------------------------------------------------------------------------------------
// Message types and sizes (whitepaper §5.4.2–§5.4.6).
// ---------------------------------------------------------------------------------------------

pub const TYPE_INITIATION: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_COOKIE_REPLY: u8 = 3;
pub const TYPE_TRANSPORT: u8 = 4;

pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub const MAC_LEN: usize = 16;
pub const TIMESTAMP_LEN: usize = 12;
pub const COOKIE_LEN: usize = 16;
pub const COOKIE_NONCE_LEN: usize = 24;

/// Length of an AEAD ciphertext of `n` plaintext bytes.
pub const fn sealed_len(n: usize) -> usize {
    n + TAG_LEN
}

/// The 4-byte header every message starts with: type, then three reserved zero bytes.
pub const HEADER: Range<usize> = 0..4;

/// Field layout of a handshake initiation.
pub mod initiation {
    use super::*;
    pub const SENDER: Range<usize> = 4..8;
    pub const EPHEMERAL: Range<usize> = 8..8 + KEY_LEN;
    pub const STATIC: Range<usize> = EPHEMERAL.end..EPHEMERAL.end + sealed_len(KEY_LEN);
    pub const TIMESTAMP: Range<usize> = STATIC.end..STATIC.end + sealed_len(TIMESTAMP_LEN);
    pub const MAC1: Range<usize> = TIMESTAMP.end..TIMESTAMP.end + MAC_LEN;
    pub const MAC2: Range<usize> = MAC1.end..MAC1.end + MAC_LEN;
    pub const LEN: usize = MAC2.end;
}

/// Field layout of a handshake response.
pub mod response {
    use super::*;
    pub const SENDER: Range<usize> = 4..8;
    pub const RECEIVER: Range<usize> = 8..12;
    pub const EPHEMERAL: Range<usize> = 12..12 + KEY_LEN;
    pub const EMPTY: Range<usize> = EPHEMERAL.end..EPHEMERAL.end + sealed_len(0);
    pub const MAC1: Range<usize> = EMPTY.end..EMPTY.end + MAC_LEN;
    pub const MAC2: Range<usize> = MAC1.end..MAC1.end + MAC_LEN;
    pub const LEN: usize = MAC2.end;
}

/// Field layout of a cookie reply.
pub mod cookie_reply {
    use super::*;
    pub const RECEIVER: Range<usize> = 4..8;
    pub const NONCE: Range<usize> = 8..8 + COOKIE_NONCE_LEN;
    pub const COOKIE: Range<usize> = NONCE.end..NONCE.end + sealed_len(COOKIE_LEN);
    pub const LEN: usize = COOKIE.end;
}

/// Field layout of a transport data message; the sealed payload runs to the end.
pub mod transport {
    use super::*;
    pub const RECEIVER: Range<usize> = 4..8;
    pub const COUNTER: Range<usize> = 8..16;
    pub const PAYLOAD_START: usize = COUNTER.end;
    /// Header plus the tag of an empty (keepalive) payload.
    pub const MIN_LEN: usize = PAYLOAD_START + TAG_LEN;
    /// Plaintext payloads are zero-padded to a multiple of this.
    pub const PADDING_MULTIPLE: usize = 16;
}

// The sizes every WireGuard implementation agrees on, pinned so a layout edit can't drift.
const _: () = assert!(initiation::LEN == 148);
const _: () = assert!(response::LEN == 92);
const _: () = assert!(cookie_reply::LEN == 64);
const _: () = assert!(transport::MIN_LEN == 32);
const _: () = assert!(MAX_TIMER_HANDSHAKES == 18);
const _: () = assert!(REPLAY_WINDOW_SIZE == 8128);

/// Offset where mac1 starts: mac1 covers everything before it.
pub const fn mac1_offset(len: usize) -> usize {
    len - 2 * MAC_LEN
}
/// Offset where mac2 starts: mac2 covers everything before it, mac1 included.
pub const fn mac2_offset(len: usize) -> usize {
    len - MAC_LEN
}

/// Padded payload length for an inner packet of `len` bytes, capped at `mtu` (whitepaper §5.4.6).
pub fn padded_len(len: usize, mtu: usize) -> usize {
    let padded = len.div_ceil(transport::PADDING_MULTIPLE) * transport::PADDING_MULTIPLE;
    if padded > mtu {
        len.max(mtu)
    } else {
        padded
    }
}

// ---------------------------------------------------------------------------------------------
// Classification and typed views.
// ---------------------------------------------------------------------------------------------

/// Why a datagram is not a WireGuard message at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Empty, or a type byte outside 1..=4.
    UnknownType,
    /// The right type at the wrong length.
    BadLength,
    /// Reserved bytes are not zero.
    ReservedNonZero,
}

impl From<ParseError> for crate::DropReason {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::UnknownType => crate::DropReason::UnknownType,
            ParseError::BadLength => crate::DropReason::BadLength,
            ParseError::ReservedNonZero => crate::DropReason::ReservedNonZero,
        }
    }
}

/// A datagram classified by (type, exact length).
#[derive(Debug)]
pub enum Message<'a> {
    Initiation(Initiation<&'a [u8]>),
    Response(Response<&'a [u8]>),
    CookieReply(CookieReply<&'a [u8]>),
    Transport(Transport<&'a [u8]>),
}

/// Classify a datagram. Reads only the first four bytes and the length.
pub fn parse(datagram: &[u8]) -> Result<Message<'_>, ParseError> {
    let kind = message_type(datagram)?;
    Ok(match kind {
        TYPE_INITIATION => Message::Initiation(Initiation::new(datagram)?),
        TYPE_RESPONSE => Message::Response(Response::new(datagram)?),
        TYPE_COOKIE_REPLY => Message::CookieReply(CookieReply::new(datagram)?),
        _ => Message::Transport(Transport::new(datagram)?),
    })
}

/// The message type of a datagram, checking the reserved bytes but not the length.
pub fn message_type(datagram: &[u8]) -> Result<u8, ParseError> {
    let header = datagram.get(HEADER).ok_or(ParseError::UnknownType)?;
    let kind = header[0];
    if !(TYPE_INITIATION..=TYPE_TRANSPORT).contains(&kind) {
        return Err(ParseError::UnknownType);
    }
    if header[1..] != [0, 0, 0] {
        return Err(ParseError::ReservedNonZero);
    }
    Ok(kind)
}

fn check(buf: &[u8], kind: u8, len_ok: bool) -> Result<(), ParseError> {
    if message_type(buf)? != kind {
        return Err(ParseError::UnknownType);
    }
    if !len_ok {
        return Err(ParseError::BadLength);
    }
    Ok(())
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

fn arr<const N: usize>(b: &[u8]) -> &[u8; N] {
    // The ranges are compile-time constants within a length-checked buffer, so the conversion
    // cannot fail; a mismatch is a bug in this file, caught by every test.
    b.try_into().expect("field range matches its declared size")
}

macro_rules! view {
    ($(#[$m:meta])* $name:ident, $kind:expr, |$len:ident| $len_ok:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name<T> {
            buf: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Wrap `buf` after checking its type, reserved bytes and length.
            pub fn new(buf: T) -> Result<Self, ParseError> {
                let $len = buf.as_ref().len();
                check(buf.as_ref(), $kind, $len_ok)?;
                Ok($name { buf })
            }

            pub fn as_bytes(&self) -> &[u8] {
                self.buf.as_ref()
            }

            pub fn into_inner(self) -> T {
                self.buf
            }
        }

        impl<T: AsMut<[u8]> + AsRef<[u8]>> $name<T> {
            /// Write the header into a buffer of the right length and wrap it for filling in.
            pub fn init(mut buf: T) -> Result<Self, ParseError> {
                let $len = buf.as_ref().len();
                if !$len_ok {
                    return Err(ParseError::BadLength);
                }
                buf.as_mut()[HEADER].copy_from_slice(&[$kind, 0, 0, 0]);
                Ok($name { buf })
            }

            pub fn as_bytes_mut(&mut self) -> &mut [u8] {
                self.buf.as_mut()
            }

            fn field_mut(&mut self, r: Range<usize>) -> &mut [u8] {
                &mut self.buf.as_mut()[r]
            }
        }
    };
}

view!(
    /// A 148-byte handshake initiation.
    Initiation, TYPE_INITIATION, |len| len == initiation::LEN
);
view!(
    /// A 92-byte handshake response.
    Response, TYPE_RESPONSE, |len| len == response::LEN
);
view!(
    /// A 64-byte cookie reply.
    CookieReply, TYPE_COOKIE_REPLY, |len| len == cookie_reply::LEN
);
view!(
    /// A transport data message: 16-byte header, then the sealed, padded inner packet.
    Transport, TYPE_TRANSPORT, |len| len >= transport::MIN_LEN
);

impl<T: AsRef<[u8]>> Initiation<T> {
    pub fn sender(&self) -> u32 {
        le32(&self.as_bytes()[initiation::SENDER])
    }
    pub fn ephemeral(&self) -> &[u8; KEY_LEN] {
        arr(&self.as_bytes()[initiation::EPHEMERAL])
    }
    pub fn encrypted_static(&self) -> &[u8; sealed_len(KEY_LEN)] {
        arr(&self.as_bytes()[initiation::STATIC])
    }
    pub fn encrypted_timestamp(&self) -> &[u8; sealed_len(TIMESTAMP_LEN)] {
        arr(&self.as_bytes()[initiation::TIMESTAMP])
    }
}

impl<T: AsMut<[u8]> + AsRef<[u8]>> Initiation<T> {
    pub fn set_sender(&mut self, v: u32) {
        self.field_mut(initiation::SENDER)
            .copy_from_slice(&v.to_le_bytes());
    }
    pub fn ephemeral_mut(&mut self) -> &mut [u8] {
        self.field_mut(initiation::EPHEMERAL)
    }
    pub fn encrypted_static_mut(&mut self) -> &mut [u8] {
        self.field_mut(initiation::STATIC)
    }
    pub fn encrypted_timestamp_mut(&mut self) -> &mut [u8] {
        self.field_mut(initiation::TIMESTAMP)
    }
}

impl<T: AsRef<[u8]>> Response<T> {
    pub fn sender(&self) -> u32 {
        le32(&self.as_bytes()[response::SENDER])
    }
    pub fn receiver(&self) -> u32 {
        le32(&self.as_bytes()[response::RECEIVER])
    }
    pub fn ephemeral(&self) -> &[u8; KEY_LEN] {
        arr(&self.as_bytes()[response::EPHEMERAL])
    }
    pub fn encrypted_nothing(&self) -> &[u8; sealed_len(0)] {
        arr(&self.as_bytes()[response::EMPTY])
    }
}

impl<T: AsMut<[u8]> + AsRef<[u8]>> Response<T> {
    pub fn set_sender(&mut self, v: u32) {
        self.field_mut(response::SENDER)
            .copy_from_slice(&v.to_le_bytes());
    }
    pub fn set_receiver(&mut self, v: u32) {
        self.field_mut(response::RECEIVER)
            .copy_from_slice(&v.to_le_bytes());
    }
    pub fn ephemeral_mut(&mut self) -> &mut [u8] {
        self.field_mut(response::EPHEMERAL)
    }
    pub fn encrypted_nothing_mut(&mut self) -> &mut [u8] {
        self.field_mut(response::EMPTY)
    }
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    pub fn receiver(&self) -> u32 {
        le32(&self.as_bytes()[cookie_reply::RECEIVER])
    }
    pub fn nonce(&self) -> &[u8; COOKIE_NONCE_LEN] {
        arr(&self.as_bytes()[cookie_reply::NONCE])
    }
    pub fn encrypted_cookie(&self) -> &[u8; sealed_len(COOKIE_LEN)] {
        arr(&self.as_bytes()[cookie_reply::COOKIE])
    }
}

impl<T: AsMut<[u8]> + AsRef<[u8]>> CookieReply<T> {
    pub fn set_receiver(&mut self, v: u32) {
        self.field_mut(cookie_reply::RECEIVER)
            .copy_from_slice(&v.to_le_bytes());
    }
    pub fn nonce_mut(&mut self) -> &mut [u8] {
        self.field_mut(cookie_reply::NONCE)
    }
    pub fn encrypted_cookie_mut(&mut self) -> &mut [u8] {
        self.field_mut(cookie_reply::COOKIE)
    }
}

impl<T: AsRef<[u8]>> Transport<T> {
    pub fn receiver(&self) -> u32 {
        le32(&self.as_bytes()[transport::RECEIVER])
    }
    pub fn counter(&self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.as_bytes()[transport::COUNTER]);
        u64::from_le_bytes(a)
    }
    /// The sealed payload: ciphertext followed by the tag.
    pub fn sealed(&self) -> &[u8] {
        &self.as_bytes()[transport::PAYLOAD_START..]
    }
}

impl<T: AsMut<[u8]> + AsRef<[u8]>> Transport<T> {
    pub fn set_receiver(&mut self, v: u32) {
        self.field_mut(transport::RECEIVER)
            .copy_from_slice(&v.to_le_bytes());
    }
    pub fn set_counter(&mut self, v: u64) {
        self.field_mut(transport::COUNTER)
            .copy_from_slice(&v.to_le_bytes());
    }
    pub fn sealed_mut(&mut self) -> &mut [u8] {
        let start = transport::PAYLOAD_START;
        let end = self.as_bytes().len();
        self.field_mut(start..end)
    }
}

/// The mac1 and mac2 fields of either handshake message, located from its length.
pub fn macs(msg: &[u8]) -> (&[u8], &[u8]) {
    let m1 = mac1_offset(msg.len());
    let m2 = mac2_offset(msg.len());
    (&msg[m1..m2], &msg[m2..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_contiguous() {
        assert_eq!(initiation::SENDER.start, HEADER.end);
        assert_eq!(response::SENDER.start, HEADER.end);
        assert_eq!(cookie_reply::RECEIVER.start, HEADER.end);
        assert_eq!(transport::RECEIVER.start, HEADER.end);
        assert_eq!(mac1_offset(initiation::LEN), initiation::MAC1.start);
        assert_eq!(mac2_offset(response::LEN), response::MAC2.start);
    }

    #[test]
    fn classify_by_type_and_exact_length() {
        let mut m = vec![0u8; initiation::LEN];
        m[0] = TYPE_INITIATION;
        assert!(matches!(parse(&m), Ok(Message::Initiation(_))));
        assert_eq!(parse(&m[..147]).unwrap_err(), ParseError::BadLength);
        m.push(0);
        assert_eq!(parse(&m).unwrap_err(), ParseError::BadLength);

        let mut r = vec![0u8; response::LEN];
        r[0] = TYPE_RESPONSE;
        assert!(matches!(parse(&r), Ok(Message::Response(_))));
        r[2] = 1;
        assert_eq!(parse(&r).unwrap_err(), ParseError::ReservedNonZero);

        let mut c = vec![0u8; cookie_reply::LEN];
        c[0] = TYPE_COOKIE_REPLY;
        assert!(matches!(parse(&c), Ok(Message::CookieReply(_))));

        let mut t = vec![0u8; transport::MIN_LEN];
        t[0] = TYPE_TRANSPORT;
        assert!(matches!(parse(&t), Ok(Message::Transport(_))));
        assert_eq!(parse(&t[..31]).unwrap_err(), ParseError::BadLength);

        assert_eq!(parse(&[]).unwrap_err(), ParseError::UnknownType);
        assert_eq!(parse(&[5, 0, 0, 0]).unwrap_err(), ParseError::UnknownType);
        assert_eq!(parse(&[0, 0, 0, 0]).unwrap_err(), ParseError::UnknownType);
        assert_eq!(parse(&[1, 0, 0]).unwrap_err(), ParseError::UnknownType);
    }

    #[test]
    fn transport_fields_round_trip() {
        let mut buf = [0u8; 48];
        let mut t = Transport::init(&mut buf[..]).unwrap();
        t.set_receiver(0xdead_beef);
        t.set_counter(0x0102_0304_0506_0708);
        t.sealed_mut().fill(0xaa);
        let t = Transport::new(&buf[..]).unwrap();
        assert_eq!(t.receiver(), 0xdead_beef);
        assert_eq!(t.counter(), 0x0102_0304_0506_0708);
        assert_eq!(t.sealed().len(), 32);
        assert_eq!(&buf[4..8], &0xdead_beef_u32.to_le_bytes());
    }

    #[test]
    fn padding_follows_the_whitepaper() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(16, 1420), 16);
        assert_eq!(padded_len(17, 1420), 32);
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1415, 1420), 1420);
        assert_eq!(padded_len(1420, 1420), 1420);
        // An oversized packet is not truncated, only left unpadded.
        assert_eq!(padded_len(1500, 1420), 1500);
    }
}
