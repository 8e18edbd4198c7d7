//! Message envelope and header (RFC 3652 §2.2.1, §2.2.2).
//!
//! Every message starts with a 20-byte envelope (versions, flags, session,
//! request id, packet sequence number and the message length) followed by
//! the message: a 24-byte header, the body, and the credential section
//! (`int4` length and the credential). A server that cannot read the
//! envelope or the header has nobody to answer and drops the message.

use bytes::BufMut;
use idres_model::codec::{DecodeError, Reader};

use crate::codes::{OpCode, OpFlags, ResponseCode};

/// Size of the envelope.
pub const ENVELOPE_LEN: usize = 20;
/// Size of the message header.
pub const HEADER_LEN: usize = 24;
/// Largest message (header, body and credential) accepted.
pub const MAX_MESSAGE_LEN: usize = 262_144;
/// Largest credential accepted.
pub const MAX_CREDENTIAL_LEN: usize = 65_536;
/// Protocol major version spoken.
pub const PROTOCOL_MAJOR: u8 = 2;
/// Protocol minor version spoken (2.11, as the reference release 9).
pub const PROTOCOL_MINOR: u8 = 11;

/// Envelope flag: the message is compressed.
pub const ENV_COMPRESSED: u8 = 0x80;
/// Envelope flag: the message is encrypted.
pub const ENV_ENCRYPTED: u8 = 0x40;
/// Envelope flag: the message was truncated.
pub const ENV_TRUNCATED: u8 = 0x20;

/// The message envelope (RFC 3652 §2.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// Protocol major version.
    pub major: u8,
    /// Protocol minor version.
    pub minor: u8,
    /// [`ENV_COMPRESSED`], [`ENV_ENCRYPTED`], [`ENV_TRUNCATED`]; the low
    /// bits carry the suggested major version in later releases.
    pub flags: u8,
    /// Suggested minor version.
    pub suggested_minor: u8,
    /// Session the message belongs to (0 = none).
    pub session_id: u32,
    /// Matches replies to requests.
    pub request_id: u32,
    /// Number of this packet within a multi-packet UDP message.
    pub sequence: u32,
    /// Length of the whole message after the envelope.
    pub message_length: u32,
}

impl Envelope {
    /// Reads an envelope and checks its length field against
    /// [`MAX_MESSAGE_LEN`].
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let env = Envelope {
            major: r.u8("envelope major version")?,
            minor: r.u8("envelope minor version")?,
            flags: r.u8("envelope flags")?,
            suggested_minor: r.u8("envelope suggested minor")?,
            session_id: r.u32("session id")?,
            request_id: r.u32("request id")?,
            sequence: r.u32("sequence number")?,
            message_length: r.u32("message length")?,
        };
        if env.message_length as usize > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLarge {
                field: "message length",
                value: env.message_length as usize,
                limit: MAX_MESSAGE_LEN,
            });
        }
        if env.major == 0 {
            return Err(DecodeError::Invalid {
                field: "envelope major version",
                reason: "zero",
            });
        }
        Ok(env)
    }

    /// Writes the envelope.
    pub fn encode<B: BufMut + ?Sized>(&self, out: &mut B) {
        out.put_u8(self.major);
        out.put_u8(self.minor);
        out.put_u8(self.flags);
        out.put_u8(self.suggested_minor);
        out.put_u32(self.session_id);
        out.put_u32(self.request_id);
        out.put_u32(self.sequence);
        out.put_u32(self.message_length);
    }

    /// The version the sender suggests for replies: the low two bits of
    /// the flags byte and the suggested minor, or the envelope's own version
    /// when no major is suggested.
    pub fn suggested_version(&self) -> (u8, u8) {
        match self.flags & 0x03 {
            0 => (self.major, self.minor),
            major => (major, self.suggested_minor),
        }
    }

    /// The envelope of a reply to a request with this envelope: the
    /// request's suggested version capped at ours, the same session and
    /// request id, and our version as the suggestion.
    pub fn reply(&self) -> Envelope {
        let (major, minor) = self
            .suggested_version()
            .min((PROTOCOL_MAJOR, PROTOCOL_MINOR));
        Envelope {
            major,
            minor,
            flags: PROTOCOL_MAJOR & 0x03,
            suggested_minor: PROTOCOL_MINOR,
            session_id: self.session_id,
            request_id: self.request_id,
            sequence: 0,
            message_length: 0,
        }
    }
}

/// The message header (RFC 3652 §2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The operation.
    pub op_code: OpCode,
    /// 0 in requests; the outcome in replies.
    pub response_code: ResponseCode,
    /// Option flags.
    pub op_flags: OpFlags,
    /// Serial of the site information the client used.
    pub site_info_serial: u16,
    /// How many servers the request passed through.
    pub recursion_count: u8,
    /// Unix time after which the message is stale.
    pub expiration: u32,
    /// Length of the body that follows.
    pub body_length: u32,
}

impl Header {
    /// Reads a header.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let op_code = OpCode(r.u32("op code")?);
        let response_code = ResponseCode(r.u32("response code")?);
        let op_flags = OpFlags(r.u32("op flags")?);
        let site_info_serial = r.u16("site info serial")?;
        let recursion_count = r.u8("recursion count")?;
        let _reserved = r.u8("reserved")?;
        let expiration = r.u32("expiration")?;
        let body_length = r.u32("body length")?;
        Ok(Header {
            op_code,
            response_code,
            op_flags,
            site_info_serial,
            recursion_count,
            expiration,
            body_length,
        })
    }

    /// Writes the header.
    pub fn encode<B: BufMut + ?Sized>(&self, out: &mut B) {
        out.put_u32(self.op_code.0);
        out.put_u32(self.response_code.0);
        out.put_u32(self.op_flags.0);
        out.put_u16(self.site_info_serial);
        out.put_u8(self.recursion_count);
        out.put_u8(0);
        out.put_u32(self.expiration);
        out.put_u32(self.body_length);
    }

    /// Whether this message is a reply (response code not 0). Servers never
    /// answer replies: doing so would let anyone bounce traffic off them.
    pub fn is_response(&self) -> bool {
        self.response_code != ResponseCode::RESERVED
    }
}

/// A decoded message: envelope, header, and borrowed body and credential.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The envelope.
    pub envelope: Envelope,
    /// The header.
    pub header: Header,
    /// The body, to decode according to the op code.
    pub body: &'a [u8],
    /// The credential section's content (empty when unsigned).
    pub credential: &'a [u8],
    /// Header and body as received, over which request digests are taken.
    pub signed_part: &'a [u8],
}

/// How far a message could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The envelope or header is unreadable: drop without reply.
    #[error("unreadable message: {0}")]
    Unreadable(DecodeError),
    /// The header was read but what follows is malformed: answer with
    /// `PROTOCOL_ERROR`.
    #[error("malformed message: {source}")]
    Malformed {
        /// The envelope, for the reply.
        envelope: Envelope,
        /// The header, for the reply.
        header: Header,
        /// What is wrong.
        source: DecodeError,
    },
}

impl<'a> Message<'a> {
    /// Splits a message (everything after the envelope) into header, body
    /// and credential.
    pub fn parse(envelope: Envelope, message: &'a [u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(message);
        let header = Header::decode(&mut r).map_err(FrameError::Unreadable)?;
        let malformed = |source| FrameError::Malformed {
            envelope,
            header,
            source,
        };
        if envelope.flags & (ENV_COMPRESSED | ENV_ENCRYPTED) != 0 {
            return Err(malformed(DecodeError::Invalid {
                field: "envelope flags",
                reason: "compressed or encrypted messages are not supported",
            }));
        }
        let body = r
            .take(header.body_length as usize, "body")
            .map_err(malformed)?;
        let signed_part = &message[..HEADER_LEN + body.len()];
        // A missing credential section is tolerated: some clients end the
        // message after the body.
        let credential = if r.remaining() == 0 {
            &[][..]
        } else {
            let c = r
                .byte_array("credential", MAX_CREDENTIAL_LEN)
                .map_err(malformed)?;
            r.finish("credential").map_err(malformed)?;
            c
        };
        Ok(Message {
            envelope,
            header,
            body,
            credential,
            signed_part,
        })
    }

    /// Reads a complete message: envelope followed by the message, as on
    /// TCP or after UDP reassembly.
    pub fn parse_with_envelope(buf: &'a [u8]) -> Result<Self, FrameError> {
        let envelope = Envelope::decode(buf).map_err(FrameError::Unreadable)?;
        let rest = &buf[ENVELOPE_LEN..];
        let len = envelope.message_length as usize;
        let Some(message) = rest.get(..len) else {
            return Err(FrameError::Unreadable(DecodeError::Truncated {
                field: "message",
                offset: ENVELOPE_LEN,
                needed: len,
                remaining: rest.len(),
            }));
        };
        if rest.len() > len {
            return Err(FrameError::Unreadable(DecodeError::TrailingBytes {
                what: "message",
                count: rest.len() - len,
            }));
        }
        Self::parse(envelope, message)
    }
}
