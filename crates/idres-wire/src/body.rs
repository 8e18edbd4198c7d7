//! Message bodies (RFC 3652 §3).
//!
//! [`Request::decode`] reads the body of every request a server can be
//! sent, borrowing strings from the input where it can. Replies are written
//! with [`ReplyWriter`], which lays out envelope, header, body and an empty
//! credential section in one buffer and fills in the lengths at the end.

use bytes::{BufMut, BytesMut};
use idres_model::codec::{self, DecodeError, Reader};
use idres_model::{decode_values, encode_values, HandleValue, MAX_HANDLE_LEN};

use crate::codes::{OpCode, OpFlags, ResponseCode};
use crate::frame::{Envelope, Header, ENVELOPE_LEN, HEADER_LEN};

/// Most indexes or types one resolution request may name.
pub const MAX_FILTERS: usize = 1024;
/// Longest type name in a request filter.
pub const MAX_TYPE_FILTER_LEN: usize = 256;
/// Most handles in a list-handles reply a decoder accepts.
pub const MAX_LISTED: usize = 1 << 20;
/// Lifetime given to every reply, in seconds (12 hours, as the reference
/// server does).
pub const REPLY_LIFETIME: u32 = 43_200;

/// Digest algorithms of request digests and signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestAlg(pub u8);

impl DigestAlg {
    /// MD5 preceded by an `int4` length (protocol 2.0).
    pub const OLD_MD5: DigestAlg = DigestAlg(0);
    /// MD5.
    pub const MD5: DigestAlg = DigestAlg(1);
    /// SHA-1.
    pub const SHA1: DigestAlg = DigestAlg(2);
    /// SHA-256.
    pub const SHA256: DigestAlg = DigestAlg(3);
}

/// Writes the request digest that starts a reply body when the request set
/// [`OpFlags::RETURN_DIGEST`]: the algorithm byte and the digest of the
/// request's 24-byte header and body as received. The old MD5 form is an
/// `int4` length (whose first byte, 0, doubles as the type) and the digest.
pub fn put_request_digest(out: &mut BytesMut, alg: DigestAlg, signed_part: &[u8]) {
    use md5::Digest as _;
    match alg {
        DigestAlg::OLD_MD5 => codec::put_bytes(out, &md5::Md5::digest(signed_part)),
        DigestAlg::MD5 => {
            out.put_u8(alg.0);
            out.put_slice(&md5::Md5::digest(signed_part));
        }
        DigestAlg::SHA256 => {
            out.put_u8(alg.0);
            out.put_slice(&sha2::Sha256::digest(signed_part));
        }
        _ => {
            out.put_u8(DigestAlg::SHA1.0);
            out.put_slice(&sha1::Sha1::digest(signed_part));
        }
    }
}

/// The digest algorithm for a reply of version `major.minor`, as the
/// reference implementation chooses: the old MD5 form before 2.1, SHA-1
/// from 2.1, SHA-256 from 2.7.
pub fn digest_alg_for(version: (u8, u8)) -> DigestAlg {
    if version < (2, 1) {
        DigestAlg::OLD_MD5
    } else if version < (2, 7) {
        DigestAlg::SHA1
    } else {
        DigestAlg::SHA256
    }
}

/// A decoded request body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request<'a> {
    /// Resolve a handle, optionally only some indexes or types (§3.1).
    Resolution {
        /// The handle, as sent.
        handle: &'a str,
        /// Indexes wanted (empty = all).
        indexes: Vec<u32>,
        /// Types wanted (empty = all).
        types: Vec<&'a str>,
    },
    /// Ask for the server's site information (§3.2); clients may name a
    /// handle, which is ignored.
    GetSiteInfo,
    /// Create a handle with values (§3.3).
    CreateHandle {
        /// The handle.
        handle: &'a str,
        /// Its values.
        values: Vec<HandleValue>,
    },
    /// Delete a handle.
    DeleteHandle {
        /// The handle.
        handle: &'a str,
    },
    /// Add values to a handle.
    AddValue {
        /// The handle.
        handle: &'a str,
        /// The values to add.
        values: Vec<HandleValue>,
    },
    /// Remove values from a handle.
    RemoveValue {
        /// The handle.
        handle: &'a str,
        /// Indexes of the values to remove.
        indexes: Vec<u32>,
    },
    /// Replace values of a handle.
    ModifyValue {
        /// The handle.
        handle: &'a str,
        /// The new values, matched by index.
        values: Vec<HandleValue>,
    },
    /// List the handles under a prefix; the prefix is given as its prefix
    /// record handle (`0.NA/88.118`).
    ListHandles {
        /// The prefix record handle.
        prefix: &'a str,
    },
    /// Answer to an authentication challenge (§3.5.3).
    ChallengeResponse {
        /// `HS_PUBKEY` or `HS_SECKEY`.
        auth_type: &'a str,
        /// Identity handle.
        identity: &'a str,
        /// Index of the key value.
        index: u32,
        /// Signature or MAC, in the auth type's format.
        response: &'a [u8],
    },
    /// An operation this crate has no body decoder for.
    Other(OpCode),
}

impl<'a> Request<'a> {
    /// Decodes the body of a request with op code `op`. Trailing bytes are
    /// an error.
    pub fn decode(op: OpCode, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let req = match op {
            OpCode::RESOLUTION => {
                let handle = r.str("handle", MAX_HANDLE_LEN)?;
                let n = r.count("index count", MAX_FILTERS, 4)?;
                let mut indexes = Vec::with_capacity(n);
                for _ in 0..n {
                    indexes.push(r.u32("index")?);
                }
                let n = r.count("type count", MAX_FILTERS, 4)?;
                let mut types = Vec::with_capacity(n);
                for _ in 0..n {
                    types.push(r.str("type", MAX_TYPE_FILTER_LEN)?);
                }
                Request::Resolution {
                    handle,
                    indexes,
                    types,
                }
            }
            OpCode::GET_SITE_INFO => {
                if r.remaining() > 0 {
                    r.str("handle", MAX_HANDLE_LEN)?;
                }
                Request::GetSiteInfo
            }
            OpCode::CREATE_HANDLE => Request::CreateHandle {
                handle: r.str("handle", MAX_HANDLE_LEN)?,
                values: decode_values(&mut r)?,
            },
            OpCode::DELETE_HANDLE => Request::DeleteHandle {
                handle: r.str("handle", MAX_HANDLE_LEN)?,
            },
            OpCode::ADD_VALUE => Request::AddValue {
                handle: r.str("handle", MAX_HANDLE_LEN)?,
                values: decode_values(&mut r)?,
            },
            OpCode::REMOVE_VALUE => {
                let handle = r.str("handle", MAX_HANDLE_LEN)?;
                let n = r.count("index count", MAX_FILTERS, 4)?;
                let mut indexes = Vec::with_capacity(n);
                for _ in 0..n {
                    indexes.push(r.u32("index")?);
                }
                Request::RemoveValue { handle, indexes }
            }
            OpCode::MODIFY_VALUE => Request::ModifyValue {
                handle: r.str("handle", MAX_HANDLE_LEN)?,
                values: decode_values(&mut r)?,
            },
            OpCode::LIST_HANDLES => Request::ListHandles {
                prefix: r.str("prefix", MAX_HANDLE_LEN)?,
            },
            OpCode::CHALLENGE_RESPONSE => Request::ChallengeResponse {
                auth_type: r.str("auth type", 64)?,
                identity: r.str("identity handle", MAX_HANDLE_LEN)?,
                index: r.u32("identity index")?,
                response: r.byte_array("challenge response", 65_536)?,
            },
            other => return Ok(Request::Other(other)),
        };
        r.finish("request body")?;
        Ok(req)
    }

    /// The op code of this request.
    pub fn op_code(&self) -> OpCode {
        match self {
            Request::Resolution { .. } => OpCode::RESOLUTION,
            Request::GetSiteInfo => OpCode::GET_SITE_INFO,
            Request::CreateHandle { .. } => OpCode::CREATE_HANDLE,
            Request::DeleteHandle { .. } => OpCode::DELETE_HANDLE,
            Request::AddValue { .. } => OpCode::ADD_VALUE,
            Request::RemoveValue { .. } => OpCode::REMOVE_VALUE,
            Request::ModifyValue { .. } => OpCode::MODIFY_VALUE,
            Request::ListHandles { .. } => OpCode::LIST_HANDLES,
            Request::ChallengeResponse { .. } => OpCode::CHALLENGE_RESPONSE,
            Request::Other(op) => *op,
        }
    }

    /// Writes the body of this request (the client side of [`decode`]).
    ///
    /// [`decode`]: Request::decode
    pub fn encode<B: BufMut + ?Sized>(&self, out: &mut B) {
        match self {
            Request::Resolution {
                handle,
                indexes,
                types,
            } => {
                codec::put_str(out, handle);
                codec::put_len(out, indexes.len());
                for i in indexes {
                    out.put_u32(*i);
                }
                codec::put_len(out, types.len());
                for t in types {
                    codec::put_str(out, t);
                }
            }
            Request::GetSiteInfo => codec::put_str(out, ""),
            Request::Other(_) => {}
            Request::CreateHandle { handle, values }
            | Request::AddValue { handle, values }
            | Request::ModifyValue { handle, values } => {
                codec::put_str(out, handle);
                encode_values(values, out);
            }
            Request::DeleteHandle { handle } => codec::put_str(out, handle),
            Request::RemoveValue { handle, indexes } => {
                codec::put_str(out, handle);
                codec::put_len(out, indexes.len());
                for i in indexes {
                    out.put_u32(*i);
                }
            }
            Request::ListHandles { prefix } => codec::put_str(out, prefix),
            Request::ChallengeResponse {
                auth_type,
                identity,
                index,
                response,
            } => {
                codec::put_str(out, auth_type);
                codec::put_str(out, identity);
                out.put_u32(*index);
                codec::put_bytes(out, response);
            }
        }
    }
}

/// Writes a whole message (envelope, header, body, empty credential) into
/// one buffer and patches the lengths when finished.
#[derive(Debug)]
pub struct ReplyWriter<'b> {
    out: &'b mut BytesMut,
    start: usize,
}

impl<'b> ReplyWriter<'b> {
    /// Starts a reply to a request with `envelope` and `header`, with
    /// response code `rc`, expiring at `now` + [`REPLY_LIFETIME`], from a
    /// primary site with serial `site_serial`.
    ///
    /// As the reference server does, the reply keeps the request's
    /// certify, cache-certify, authoritative, encrypt, public-only and
    /// do-not-refer flags, sets recursive and authoritative, and, when the
    /// request asked for it, starts the body with the digest of
    /// `signed_part` (the request's header and body). Clients before 2.1
    /// get no digest: they cannot be told one is there.
    pub fn begin(
        out: &'b mut BytesMut,
        envelope: &Envelope,
        header: &Header,
        signed_part: &[u8],
        rc: ResponseCode,
        site_serial: u16,
        now: u32,
    ) -> Self {
        let start = out.len();
        let env = envelope.reply();
        env.encode(out);
        let version = (env.major, env.minor);
        let digest = header.op_flags.has(OpFlags::RETURN_DIGEST) && version >= (2, 1);
        let mut flags = header.op_flags.0
            & (OpFlags::CERTIFY
                | OpFlags::CACHE_CERTIFY
                | OpFlags::ENCRYPT
                | OpFlags::PUBLIC_ONLY
                | OpFlags::DO_NOT_REFER
                | OpFlags::KEEP_ALIVE);
        flags |= OpFlags::AUTHORITATIVE | OpFlags::RECURSIVE;
        if digest {
            flags |= OpFlags::RETURN_DIGEST;
        }
        Header {
            op_code: header.op_code,
            response_code: rc,
            op_flags: OpFlags(flags),
            site_info_serial: site_serial,
            recursion_count: header.recursion_count,
            expiration: now.saturating_add(REPLY_LIFETIME),
            body_length: 0,
        }
        .encode(out);
        if digest {
            put_request_digest(out, digest_alg_for(version), signed_part);
        }
        Self { out, start }
    }

    /// Marks the reply as one of several answering the same request, with
    /// more to follow ([`OpFlags::CONTINUOUS`]: a long LIST_HANDLES).
    pub fn mark_continuous(&mut self) {
        let at = self.start + ENVELOPE_LEN + 8;
        if let Some(b) = self.out.get_mut(at..at + 4) {
            let flags = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) | OpFlags::CONTINUOUS;
            b.copy_from_slice(&flags.to_be_bytes());
        }
    }

    /// The buffer to write the rest of the body into.
    pub fn body(&mut self) -> &mut BytesMut {
        self.out
    }

    /// Appends a credential signed by `sign` and fills in the lengths.
    /// `sign` gets the bytes to sign and returns the hash name and the
    /// signature, or `None` to leave the credential empty.
    ///
    /// The credential (RFC 3652 §2.2.4, as the reference implementation
    /// writes it for a server key): u8 version 0, u8 reserved, u16 flags,
    /// str signer handle (empty: the server of the HS_SITE), int4 counter
    /// 0, str `HS_SIGNED`, int4 length of the rest, str hash name, str
    /// signature. What is signed depends on the reply's version: header
    /// and body before 2.6; from 2.7 they are preceded by the envelope's
    /// version, (from 2.8) suggested version, session id, request id and
    /// the counter; 2.6 has the reference implementation's own prefix.
    pub fn finish_signed(
        self,
        sign: impl FnOnce(&[u8]) -> Option<(&'static str, Vec<u8>)>,
    ) -> usize {
        let body_start = self.start + ENVELOPE_LEN + HEADER_LEN;
        let body_len = self.out.len() - body_start;
        let body_len_at = body_start - 4;
        self.out[body_len_at..body_start].copy_from_slice(&(body_len as u32).to_be_bytes());
        let env = &self.out[self.start..self.start + ENVELOPE_LEN];
        let (major, minor) = (env[0], env[1]);
        let (sug_major, sug_minor) = (env[2] & 0x03, env[3]);
        let (session, request) = (&env[4..8], &env[8..12]);
        let counter = 0u32.to_be_bytes();
        let mut signed = Vec::with_capacity(16 + HEADER_LEN + body_len);
        if (major, minor) >= (2, 8) {
            signed.extend_from_slice(&[major, minor, sug_major, sug_minor]);
            signed.extend_from_slice(session);
            signed.extend_from_slice(request);
            signed.extend_from_slice(&counter);
        } else if (major, minor) == (2, 7) {
            signed.extend_from_slice(&[major, minor]);
            signed.extend_from_slice(session);
            signed.extend_from_slice(request);
            signed.extend_from_slice(&counter);
        } else if (major, minor) == (2, 6) {
            signed.extend_from_slice(&[major, minor, session[0], session[1]]);
            signed.extend_from_slice(&counter);
            signed.extend_from_slice(&[0; 6]);
        }
        signed.extend_from_slice(&self.out[self.start + ENVELOPE_LEN..]);
        match sign(&signed) {
            Some((hash, signature)) => {
                let mut cred = BytesMut::with_capacity(64 + signature.len());
                cred.put_u8(0);
                cred.put_u8(0);
                cred.put_u16(0);
                codec::put_str(&mut cred, "");
                cred.put_u32(0);
                codec::put_str(&mut cred, "HS_SIGNED");
                cred.put_u32((8 + hash.len() + signature.len()) as u32);
                codec::put_str(&mut cred, hash);
                codec::put_bytes(&mut cred, &signature);
                self.out.put_u32(cred.len() as u32);
                self.out.put_slice(&cred);
            }
            None => self.out.put_u32(0),
        }
        let message_len = self.out.len() - self.start - ENVELOPE_LEN;
        let msg_len_at = self.start + 16;
        self.out[msg_len_at..msg_len_at + 4].copy_from_slice(&(message_len as u32).to_be_bytes());
        self.out.len() - self.start
    }

    /// Appends an empty credential section and fills in the body and
    /// message lengths. Returns the whole message's length.
    pub fn finish(self) -> usize {
        let body_start = self.start + ENVELOPE_LEN + HEADER_LEN;
        let body_len = self.out.len() - body_start;
        self.out.put_u32(0);
        let message_len = self.out.len() - self.start - ENVELOPE_LEN;
        let body_len_at = body_start - 4;
        self.out[body_len_at..body_start].copy_from_slice(&(body_len as u32).to_be_bytes());
        let msg_len_at = self.start + 16;
        self.out[msg_len_at..msg_len_at + 4].copy_from_slice(&(message_len as u32).to_be_bytes());
        self.out.len() - self.start
    }
}

/// Body of a resolution reply after the digest: the handle as requested and
/// already encoded values (`int4` count and values).
pub fn put_resolution_reply(out: &mut BytesMut, handle: &[u8], encoded_values: &[u8]) {
    codec::put_bytes(out, handle);
    out.put_slice(encoded_values);
}

/// Body of a referral (rc 302 or 303) after the digest: the handle whose
/// values describe the service, and those values.
pub fn put_referral(out: &mut BytesMut, handle: &str, values: &[HandleValue]) {
    codec::put_str(out, handle);
    encode_values(values, out);
}

/// Body of an error reply after the digest: a message in words.
pub fn put_error(out: &mut BytesMut, message: &str) {
    codec::put_str(out, message);
}

/// A reply body as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// Values of a handle.
    Resolution {
        /// The handle, as echoed.
        handle: String,
        /// The values returned.
        values: Vec<HandleValue>,
    },
    /// A referral (rc 302 or 303): ask the service these values describe.
    Referral {
        /// A handle whose HS_SITE / HS_SERV values name the service (the
        /// prefix record), or empty.
        service_handle: String,
        /// HS_SITE / HS_SERV values of that service (may be empty).
        values: Vec<HandleValue>,
    },
    /// A created handle (reply to CREATE_HANDLE).
    Created(String),
    /// Site information (encoded HS_SITE data).
    SiteInfo(Vec<u8>),
    /// Handles listed.
    HandleList(Vec<String>),
    /// An authentication challenge: a nonce to sign.
    Challenge {
        /// The nonce.
        nonce: Vec<u8>,
    },
    /// An error with a message.
    Error(String),
    /// Success without content.
    Empty,
}

impl Reply {
    /// Decodes a reply body for op code `op` with response code `rc`,
    /// after skipping the request digest if the reply carries one.
    pub fn decode(
        op: OpCode,
        rc: ResponseCode,
        flags: OpFlags,
        body: &[u8],
    ) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        if flags.has(OpFlags::RETURN_DIGEST) {
            skip_digest(&mut r)?;
        }
        let reply = match rc {
            ResponseCode::SUCCESS => match op {
                OpCode::RESOLUTION => Reply::Resolution {
                    handle: r.str("handle", MAX_HANDLE_LEN)?.to_owned(),
                    values: decode_values(&mut r)?,
                },
                OpCode::GET_SITE_INFO => Reply::SiteInfo(r.rest().to_vec()),
                OpCode::CREATE_HANDLE if r.remaining() > 0 => {
                    Reply::Created(r.str("handle", MAX_HANDLE_LEN)?.to_owned())
                }
                OpCode::LIST_HANDLES => {
                    let n = r.count("handle count", MAX_LISTED, 4)?;
                    let mut hs = Vec::with_capacity(n);
                    for _ in 0..n {
                        hs.push(r.str("handle", MAX_HANDLE_LEN)?.to_owned());
                    }
                    Reply::HandleList(hs)
                }
                _ => Reply::Empty,
            },
            ResponseCode::SERVICE_REFERRAL | ResponseCode::PREFIX_REFERRAL => Reply::Referral {
                service_handle: r.str("referral handle", MAX_HANDLE_LEN)?.to_owned(),
                values: if r.remaining() > 0 {
                    decode_values(&mut r)?
                } else {
                    Vec::new()
                },
            },
            ResponseCode::AUTHENTICATION_NEEDED => {
                if !flags.has(OpFlags::RETURN_DIGEST) {
                    // Before 2.1 the digest follows the nonce.
                    let nonce = r.byte_array("nonce", 1024)?.to_vec();
                    r.byte_array("digest", 64)?;
                    return r.finish("reply body").map(|()| Reply::Challenge { nonce });
                }
                Reply::Challenge {
                    nonce: r.byte_array("nonce", 1024)?.to_vec(),
                }
            }
            _ => {
                if r.remaining() == 0 {
                    Reply::Error(String::new())
                } else {
                    Reply::Error(r.str("error message", 65_536)?.to_owned())
                }
            }
        };
        if !matches!(reply, Reply::SiteInfo(_)) {
            r.finish("reply body")?;
        }
        Ok(reply)
    }
}

fn skip_digest(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    match DigestAlg(r.u8("digest algorithm")?) {
        DigestAlg::OLD_MD5 => {
            // The type byte was the first byte of an `int4` length of 16.
            if r.take(3, "digest length")? != [0, 0, 16] {
                return Err(DecodeError::Invalid {
                    field: "digest length",
                    reason: "old MD5 digests are 16 bytes",
                });
            }
            r.take(16, "digest")?;
        }
        DigestAlg::MD5 => {
            r.take(16, "digest")?;
        }
        DigestAlg::SHA1 => {
            r.take(20, "digest")?;
        }
        DigestAlg::SHA256 => {
            r.take(32, "digest")?;
        }
        _ => {
            return Err(DecodeError::Invalid {
                field: "digest algorithm",
                reason: "unknown",
            })
        }
    }
    Ok(())
}
