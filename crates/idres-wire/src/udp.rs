//! Multi-packet UDP messages (RFC 3652 §2.3.1).
//!
//! A datagram carries at most 512 bytes: a 20-byte envelope and up to 492
//! bytes of message. A longer message is cut into packets that each repeat
//! the envelope with the same request id and the total message length, and
//! number themselves 0..n-1 in the envelope's sequence field. The receiver
//! places each packet at offset `sequence * 492` and knows the message is
//! whole once every packet has arrived.
//!
//! [`Datagrams`] splits; [`Reassembler`] joins, with time passed in so that
//! it stays deterministic, and with caps on how many messages and bytes it
//! holds so that a flood of first packets cannot exhaust memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use idres_model::codec::DecodeError;

use crate::frame::{Envelope, ENVELOPE_LEN};

/// Largest datagram sent or accepted.
pub const MAX_DATAGRAM: usize = 512;
/// Message bytes per packet.
pub const UDP_PAYLOAD: usize = MAX_DATAGRAM - ENVELOPE_LEN;

/// Iterates over the datagrams of one complete message (envelope followed
/// by the message, as [`crate::ReplyWriter`] writes it).
#[derive(Debug, Clone)]
pub struct Datagrams<'a> {
    envelope: Envelope,
    message: &'a [u8],
    next: u32,
}

impl<'a> Datagrams<'a> {
    /// Prepares to split `full`, which must start with a readable envelope.
    pub fn new(full: &'a [u8]) -> Result<Self, DecodeError> {
        let envelope = Envelope::decode(full)?;
        let message = &full[ENVELOPE_LEN..];
        if message.len() != envelope.message_length as usize {
            return Err(DecodeError::Invalid {
                field: "message length",
                reason: "does not match the message",
            });
        }
        Ok(Self {
            envelope,
            message,
            next: 0,
        })
    }

    /// How many datagrams the message takes.
    pub fn count(&self) -> usize {
        self.message.len().div_ceil(UDP_PAYLOAD).max(1)
    }

    /// Writes the next datagram into `buf` and returns its length.
    pub fn next_into(&mut self, buf: &mut [u8; MAX_DATAGRAM]) -> Option<usize> {
        let start = self.next as usize * UDP_PAYLOAD;
        if start >= self.message.len() && !(self.next == 0 && self.message.is_empty()) {
            return None;
        }
        let end = (start + UDP_PAYLOAD).min(self.message.len());
        let mut env = self.envelope;
        env.sequence = self.next;
        let mut head = &mut buf[..ENVELOPE_LEN];
        env.encode(&mut head);
        let chunk = &self.message[start..end];
        buf[ENVELOPE_LEN..ENVELOPE_LEN + chunk.len()].copy_from_slice(chunk);
        self.next += 1;
        Some(ENVELOPE_LEN + chunk.len())
    }
}

/// Limits of a [`Reassembler`].
#[derive(Debug, Clone, Copy)]
pub struct ReassemblyLimits {
    /// Most messages in progress at once.
    pub max_pending: usize,
    /// Most bytes held by messages in progress.
    pub max_bytes: usize,
    /// Most messages in progress from one sender.
    pub max_pending_per_sender: usize,
    /// Most bytes held by the messages in progress of one sender.
    pub max_bytes_per_sender: usize,
    /// How long a message may take to arrive whole.
    pub timeout: Duration,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            max_pending: 1024,
            max_bytes: 16 << 20,
            max_pending_per_sender: 16,
            max_bytes_per_sender: 1 << 20,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a datagram was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReassemblyError {
    /// The envelope is unreadable.
    #[error("bad envelope: {0}")]
    Envelope(#[from] DecodeError),
    /// Sequence number or packet size does not fit the message length.
    #[error("packet {sequence} does not fit a message of {length} bytes")]
    BadPacket {
        /// The packet's sequence number.
        sequence: u32,
        /// The message length it claims.
        length: u32,
    },
    /// Too many messages or bytes in progress.
    #[error("too many partial messages in progress")]
    Full,
}

#[derive(Debug)]
struct Partial {
    envelope: Envelope,
    buf: Vec<u8>,
    seen: Vec<bool>,
    missing: usize,
    started: Instant,
}

/// What [`Reassembler::push`] made of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Assembled<'d> {
    /// The datagram is a whole message by itself.
    Single(&'d [u8]),
    /// The datagram completed a message: envelope (sequence 0) and message.
    Complete(Vec<u8>),
    /// More packets are needed.
    Pending,
}

/// Joins multi-packet UDP messages. `K` identifies the sender (usually its
/// socket address), so that packets of different peers never mix.
#[derive(Debug)]
pub struct Reassembler<K> {
    limits: ReassemblyLimits,
    pending: HashMap<(K, u32), Partial>,
    bytes: usize,
    /// Messages and bytes in progress per sender.
    senders: HashMap<K, (usize, usize)>,
}

impl<K: Hash + Eq + Clone> Reassembler<K> {
    /// A reassembler with the given limits.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            limits,
            pending: HashMap::new(),
            bytes: 0,
            senders: HashMap::new(),
        }
    }

    fn release(senders: &mut HashMap<K, (usize, usize)>, from: &K, bytes: usize) {
        if let Some((n, b)) = senders.get_mut(from) {
            *n = n.saturating_sub(1);
            *b = b.saturating_sub(bytes);
            if *n == 0 {
                senders.remove(from);
            }
        }
    }

    /// Messages in progress.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes one datagram from `from`, received at `now`.
    pub fn push<'d>(
        &mut self,
        from: &K,
        datagram: &'d [u8],
        now: Instant,
    ) -> Result<Assembled<'d>, ReassemblyError> {
        let envelope = Envelope::decode(datagram)?;
        let payload = &datagram[ENVELOPE_LEN..];
        let total = envelope.message_length as usize;
        let packets = total.div_ceil(UDP_PAYLOAD).max(1);
        let seq = envelope.sequence as usize;
        let bad = || ReassemblyError::BadPacket {
            sequence: envelope.sequence,
            length: envelope.message_length,
        };
        if seq >= packets {
            return Err(bad());
        }
        let expected_len = if seq + 1 == packets {
            total - seq * UDP_PAYLOAD
        } else {
            UDP_PAYLOAD
        };
        if payload.len() != expected_len {
            return Err(bad());
        }
        if packets == 1 {
            return Ok(Assembled::Single(datagram));
        }
        self.expire(now);
        let key = (from.clone(), envelope.request_id);
        if !self.pending.contains_key(&key) {
            let (n, b) = self.senders.get(from).copied().unwrap_or((0, 0));
            if self.pending.len() >= self.limits.max_pending
                || self.bytes + total > self.limits.max_bytes
                || n >= self.limits.max_pending_per_sender
                || b + total > self.limits.max_bytes_per_sender
            {
                return Err(ReassemblyError::Full);
            }
            self.bytes += total;
            let share = self.senders.entry(from.clone()).or_insert((0, 0));
            share.0 += 1;
            share.1 += total;
            self.pending.insert(
                key.clone(),
                Partial {
                    envelope,
                    buf: vec![0; total],
                    seen: vec![false; packets],
                    missing: packets,
                    started: now,
                },
            );
        }
        let Some(p) = self.pending.get_mut(&key) else {
            return Ok(Assembled::Pending);
        };
        if p.envelope.message_length != envelope.message_length {
            return Err(bad());
        }
        if !p.seen[seq] {
            p.seen[seq] = true;
            p.missing -= 1;
            let at = seq * UDP_PAYLOAD;
            p.buf[at..at + payload.len()].copy_from_slice(payload);
        }
        if p.missing > 0 {
            return Ok(Assembled::Pending);
        }
        let Some(p) = self.pending.remove(&key) else {
            return Ok(Assembled::Pending);
        };
        self.bytes -= p.buf.len();
        Self::release(&mut self.senders, from, p.buf.len());
        let mut env = p.envelope;
        env.sequence = 0;
        let mut whole = Vec::with_capacity(ENVELOPE_LEN + p.buf.len());
        env.encode(&mut whole);
        whole.extend_from_slice(&p.buf);
        Ok(Assembled::Complete(whole))
    }

    /// Drops messages that have taken longer than the timeout.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.limits.timeout;
        let mut freed = 0;
        let senders = &mut self.senders;
        self.pending.retain(|(from, _), p| {
            let keep = now.saturating_duration_since(p.started) < timeout;
            if !keep {
                freed += p.buf.len();
                Self::release(senders, from, p.buf.len());
            }
            keep
        });
        self.bytes -= freed;
    }
}
