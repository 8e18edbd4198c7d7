//! A blocking native administration client: one TCP connection to a
//! Handle server, answering its challenges with an identity's secret or
//! private key. Used by `idres handle` and its batch runner.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use idres_auth::challenge::{self, Credential};
use idres_auth::Identity;
use idres_model::HandleValue;
use idres_wire::body::{digest_alg_for, put_request_digest};
use idres_wire::{Message, OpFlags, Reply, Request, ResponseCode};

use crate::client::{decode_reply, encode_request, read_framed, ClientError, ClientReply};

/// Most messages one reply may take (a continued LIST_HANDLES).
const MAX_PARTS: usize = 100_000;

/// A connection to a Handle server on behalf of one identity.
#[derive(Debug)]
pub struct AdminClient {
    server: SocketAddr,
    stream: TcpStream,
    identity: Identity,
    credential: Credential,
    next_id: u32,
}

/// The outcome of one administrative request.
#[derive(Debug, Clone)]
pub struct AdminOutcome {
    /// The final response code.
    pub response_code: ResponseCode,
    /// The final reply (for LIST_HANDLES, all parts' handles together).
    pub reply: Reply,
}

impl AdminOutcome {
    /// The message of an error reply, or the response code's name.
    pub fn describe(&self) -> String {
        match &self.reply {
            Reply::Error(m) => format!(
                "{} ({}): {m}",
                self.response_code.0,
                name(self.response_code)
            ),
            _ => format!("{} ({})", self.response_code.0, name(self.response_code)),
        }
    }
}

fn name(rc: ResponseCode) -> &'static str {
    rc.name().unwrap_or("")
}

impl AdminClient {
    /// Connects to `server` to act as `identity`, proving it with
    /// `credential`.
    pub fn connect(
        server: SocketAddr,
        identity: Identity,
        credential: Credential,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let stream = TcpStream::connect_timeout(&server, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            server,
            stream,
            identity,
            credential,
            next_id: rand::RngCore::next_u32(&mut rand::rngs::OsRng) | 1,
        })
    }

    /// The identity this client acts as.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The credential this client proves its identity with.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// Switches to another identity and credential (a batch file's
    /// AUTHENTICATE).
    pub fn set_identity(&mut self, identity: Identity, credential: Credential) {
        self.identity = identity;
        self.credential = credential;
    }

    fn id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    fn read_message(&mut self) -> Result<Vec<u8>, ClientError> {
        read_framed(&mut self.stream)
    }

    /// Reads a reply to request `id`, all its continued parts included.
    fn read_reply(&mut self, id: u32) -> Result<(Vec<u8>, Vec<String>), ClientError> {
        let mut listed = Vec::new();
        for _ in 0..MAX_PARTS {
            let full = self.read_message()?;
            let m = Message::parse_with_envelope(&full)
                .map_err(|e| ClientError::Malformed(e.to_string()))?;
            if m.envelope.request_id != id {
                continue;
            }
            let continued = m.header.op_flags.has(OpFlags::CONTINUOUS);
            if let Ok(Reply::HandleList(h)) = Reply::decode(
                m.header.op_code,
                m.header.response_code,
                m.header.op_flags,
                m.body,
            ) {
                listed.extend(h);
            }
            if !continued {
                return Ok((full, listed));
            }
        }
        Err(ClientError::Malformed("a reply without end".into()))
    }

    /// Sends `request` with `flags`, answers the server's challenge, and
    /// returns the final outcome.
    pub fn request(
        &mut self,
        request: &Request<'_>,
        flags: u32,
    ) -> Result<AdminOutcome, ClientError> {
        let id = self.id();
        let msg = encode_request(request, id, flags | OpFlags::RETURN_DIGEST);
        self.stream.write_all(&msg)?;
        let (full, mut listed) = self.read_reply(id)?;
        let m = Message::parse_with_envelope(&full)
            .map_err(|e| ClientError::Malformed(e.to_string()))?;
        let final_full = if m.header.response_code == ResponseCode::AUTHENTICATION_NEEDED {
            let (typed_digest, nonce) = parse_challenge(&m)?;
            // Sign only a challenge of our own request, as the reference
            // client checks.
            let sent = Message::parse_with_envelope(&msg)
                .map_err(|e| ClientError::Malformed(e.to_string()))?;
            let mut expect = bytes::BytesMut::new();
            put_request_digest(
                &mut expect,
                digest_alg_for((m.envelope.major, m.envelope.minor)),
                sent.signed_part,
            );
            if expect.as_ref() != typed_digest.as_slice() {
                return Err(ClientError::Malformed(
                    "the challenge does not name our request; not answering".into(),
                ));
            }
            let (auth_type, answer) = challenge::answer(
                &self.credential,
                self.identity.handle.as_str(),
                &nonce,
                &typed_digest,
            );
            let aid = self.id();
            let answer_req = Request::ChallengeResponse {
                auth_type,
                identity: self.identity.handle.as_str(),
                index: self.identity.index,
                response: &answer,
            };
            let mut amsg = encode_request(&answer_req, aid, OpFlags::RETURN_DIGEST);
            // The answer goes in the challenge's session.
            amsg[4..8].copy_from_slice(&m.envelope.session_id.to_be_bytes());
            self.stream.write_all(&amsg)?;
            let (f, l) = self.read_reply(aid)?;
            listed = l;
            f
        } else {
            full
        };
        let r: ClientReply = decode_reply(&final_full, 1)?;
        let reply = match r.reply {
            Reply::HandleList(_) => Reply::HandleList(listed),
            other => other,
        };
        Ok(AdminOutcome {
            response_code: r.response_code,
            reply,
        })
    }

    /// CREATE_HANDLE.
    pub fn create(
        &mut self,
        handle: &str,
        values: Vec<HandleValue>,
        overwrite: bool,
        mint: bool,
    ) -> Result<AdminOutcome, ClientError> {
        let mut flags = 0;
        if overwrite {
            flags |= OpFlags::OVERWRITE;
        }
        if mint {
            flags |= OpFlags::MINT_NEW_SUFFIX;
        }
        self.request(&Request::CreateHandle { handle, values }, flags)
    }

    /// ADD_VALUE.
    pub fn add(
        &mut self,
        handle: &str,
        values: Vec<HandleValue>,
    ) -> Result<AdminOutcome, ClientError> {
        self.request(&Request::AddValue { handle, values }, 0)
    }

    /// MODIFY_VALUE.
    pub fn modify(
        &mut self,
        handle: &str,
        values: Vec<HandleValue>,
    ) -> Result<AdminOutcome, ClientError> {
        self.request(&Request::ModifyValue { handle, values }, 0)
    }

    /// REMOVE_VALUE.
    pub fn remove(&mut self, handle: &str, indexes: Vec<u32>) -> Result<AdminOutcome, ClientError> {
        self.request(&Request::RemoveValue { handle, indexes }, 0)
    }

    /// DELETE_HANDLE.
    pub fn delete(&mut self, handle: &str) -> Result<AdminOutcome, ClientError> {
        self.request(&Request::DeleteHandle { handle }, 0)
    }

    /// LIST_HANDLES of a prefix (`88.118.8` or `0.NA/88.118.8`).
    pub fn list(&mut self, prefix: &str) -> Result<AdminOutcome, ClientError> {
        let record = if prefix.contains('/') {
            prefix.to_owned()
        } else {
            format!("{}/{prefix}", idres_model::PREFIX_RECORD_PREFIX)
        };
        self.request(&Request::ListHandles { prefix: &record }, 0)
    }

    /// The server this client talks to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }
}

/// The digest (as carried) and the nonce of a 402 reply.
fn parse_challenge(m: &Message<'_>) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
    let bad = || ClientError::Malformed("unreadable challenge".into());
    let b = m.body;
    let (digest, rest) = if m.header.op_flags.has(OpFlags::RETURN_DIGEST) {
        let len = match b.first() {
            Some(1) => 1 + 16,
            Some(2) => 1 + 20,
            Some(3) => 1 + 32,
            Some(0) => 4 + 16,
            _ => return Err(bad()),
        };
        (
            b.get(..len).ok_or_else(bad)?.to_vec(),
            b.get(len..).ok_or_else(bad)?,
        )
    } else {
        (Vec::new(), b)
    };
    let n = u32::from_be_bytes(
        rest.get(..4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ) as usize;
    let nonce = rest.get(4..4 + n).ok_or_else(bad)?.to_vec();
    if digest.is_empty() {
        // Protocol 2.0: str nonce, then str MD5 digest.
        let d = rest.get(4 + n..).ok_or_else(bad)?;
        return Ok((d.to_vec(), nonce));
    }
    Ok((digest, nonce))
}
