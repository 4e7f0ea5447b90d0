//! What the protocol core needs from its caller and hands back to it.
//!
//! Per-peer protocol logic ([`super::peer::Peer`]) runs against an [`Env`]: the time and
//! randomness ([`Context`]), our identity, an [`Indices`] allocator for receiver indices, and an
//! [`Outbox`] collecting the messages to transmit and the events to report. Whoever owns the
//! tables supplies these: the single-threaded [`super::device::Device`], or the gateway's
//! concurrent data path, which wraps each peer in its own lock.

use super::index::IndexTable;
use super::noise::Identity;
use super::peer::PeerId;
use super::{Rng, Time, WallTime};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// What the caller supplies with every call: the time and a random source.
pub struct Context<'a> {
    pub now: Time,
    pub wall: WallTime,
    pub rng: &'a mut dyn Rng,
}

impl core::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Context")
            .field("now", &self.now)
            .field("wall", &self.wall)
            .finish_non_exhaustive()
    }
}

/// A message the core wants sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    /// The source address to send from (the peer's sticky source, or the address a message
    /// being answered arrived on); `None`: the kernel's choice.
    pub src: Option<IpAddr>,
    pub data: Vec<u8>,
}

/// Things worth telling an operator about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    HandshakeCompleted { peer: PeerId },
    EndpointChanged { peer: PeerId, endpoint: SocketAddr },
    HandshakeGaveUp { peer: PeerId },
    KeysZeroed { peer: PeerId },
}

/// Messages and events produced by protocol logic, for the caller to act on.
#[derive(Debug, Default)]
pub struct Outbox {
    pub transmits: VecDeque<Transmit>,
    pub events: VecDeque<Event>,
}

/// Where receiver indices come from: the owner of the index table.
pub trait Indices {
    /// A fresh index, not live anywhere, now mapped to `peer`.
    fn allocate(&mut self, rng: &mut dyn Rng, peer: PeerId) -> u32;
    /// The index is no longer used by anything.
    fn release(&mut self, index: u32);
}

impl Indices for IndexTable<PeerId> {
    fn allocate(&mut self, rng: &mut dyn Rng, peer: PeerId) -> u32 {
        self.insert(rng, peer)
    }
    fn release(&mut self, index: u32) {
        self.remove(index);
    }
}

/// Everything per-peer logic may touch outside the peer itself.
pub struct Env<'a, 'c> {
    pub cx: &'a mut Context<'c>,
    pub identity: &'a Identity,
    pub indices: &'a mut dyn Indices,
    pub out: &'a mut Outbox,
    /// Inner MTU: transport payloads are padded up to it.
    pub mtu: usize,
}

impl core::fmt::Debug for Env<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Env")
            .field("cx", &self.cx)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

/// What happened to an inner packet handed to a peer to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Encrypted into the output buffer: send `len` bytes to `dst`, from `src` (the peer's
    /// sticky source) if known.
    Transmit {
        peer: PeerId,
        dst: SocketAddr,
        src: Option<IpAddr>,
        len: usize,
    },
    /// Held until a handshake completes; one has been started if allowed.
    Staged { peer: PeerId },
}
