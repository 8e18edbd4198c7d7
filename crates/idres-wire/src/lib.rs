//! A sans-IO codec of the Handle protocol (RFC 3652).
//!
//! This crate turns bytes into messages and messages into bytes and does
//! nothing else: no sockets, no runtime, no clock (times are parameters).
//! Transports live in `idres-service`.
//!
//! - [`frame`]: the 20-byte envelope, the 24-byte header, and splitting a
//!   message into header, body and credential.
//! - [`body`]: request bodies ([`Request`]), reply bodies ([`Reply`]) and
//!   [`ReplyWriter`], which lays out a reply in one buffer.
//! - [`udp`]: 492-byte packets and their reassembly.
//! - [`codes`]: open op codes, response codes and flags.
//!
//! Every decoder checks lengths before it reads and caps every count, so no
//! input can make it panic or allocate more than the input justifies; see
//! the tests that truncate each message at every length, and the fuzz
//! target in `fuzz/`.

#![forbid(unsafe_code)]

pub mod body;
pub mod codes;
pub mod frame;
pub mod udp;

pub use body::{
    put_error, put_referral, put_resolution_reply, Reply, ReplyWriter, Request, REPLY_LIFETIME,
};
pub use codes::{OpCode, OpFlags, ResponseCode};
pub use frame::{Envelope, FrameError, Header, Message, ENVELOPE_LEN, HEADER_LEN, MAX_MESSAGE_LEN};
pub use idres_model::codec::DecodeError;
pub use udp::{Assembled, Datagrams, Reassembler, ReassemblyLimits, MAX_DATAGRAM, UDP_PAYLOAD};
