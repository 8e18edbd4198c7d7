//! Administration over the Handle protocol: the challenge-response
//! exchange, and the administrative operations carried out for the
//! identity it proves.
//!
//! - An administrative request (CREATE_HANDLE, DELETE_HANDLE, ADD_VALUE,
//!   REMOVE_VALUE, MODIFY_VALUE, LIST_HANDLES, and CAICT's LOGIN_ID_SYSTEM)
//!   from a caller not yet logged in gets AUTHENTICATION_NEEDED (402) with a
//!   fresh session id and a body of the request digest and a nonce
//!   ([`idres_auth::challenge`]).
//! - The answer (CHALLENGE_RESPONSE, opcode 200) names the session; it may
//!   come on another connection or socket. Once it checks, the original
//!   request is carried out for the identity and its reply (the original
//!   opcode, the answer's request id) answers the 200 message.
//! - A LOGIN_ID_SYSTEM (2001) answered correctly logs the TCP connection in
//!   as the identity: its later administrative requests are carried out
//!   without a new challenge.
//! - Every write goes through the store's writer with a
//!   [`PermissionGuard`], so permission is decided against the state the
//!   write is applied to, and lands with its change-log entry, durably,
//!   before the reply.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use idres_auth::challenge::{self, Challenges, TakeError};
use idres_auth::{Caller, Identity, NodeKey, PermissionGuard, SecretBox, StoreView};
use idres_model::{codec, Handle, HandleValue};
use idres_store::{DeniedKind, Mutation, MutationError, Store};
use idres_wire::body::{digest_alg_for, put_request_digest, DigestAlg};
use idres_wire::{Message, OpCode, OpFlags, Request, ResponseCode};

/// CAICT's login operation: body str admin handle, int4 index.
pub const LOGIN_ID_SYSTEM: OpCode = OpCode(2001);
/// CAICT: the login is no longer valid; log in again.
pub const RC_LOGIN_AGAIN: ResponseCode = ResponseCode(407);
/// CAICT: log in first.
pub const RC_LOGIN_FIRST: ResponseCode = ResponseCode(408);
/// Most handles one LIST_HANDLES reply carries.
pub const MAX_LIST: usize = 100_000;

/// How a message reached the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram (or several, reassembled).
    Udp,
    /// A TCP connection.
    Tcp,
    /// `POST /` over HTTP.
    Http,
}

/// What a transport knows of the peer a message came from, and what the
/// exchange has established on this connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The transport.
    pub transport: Transport,
    /// The identity this TCP connection is logged in as (LOGIN_ID_SYSTEM).
    pub login: Option<Identity>,
    /// The session id of the last challenge sent on this connection: an
    /// answer that names its own session id instead (as CAICT's SDK does)
    /// is matched to it.
    pub last_challenge: Option<u32>,
}

impl Peer {
    /// A peer at `addr` over `transport`, not logged in.
    pub fn new(addr: SocketAddr, transport: Transport) -> Self {
        Self {
            addr,
            transport,
            login: None,
            last_challenge: None,
        }
    }
}

/// The node's authentication state: its secrets key, its own key, and the
/// challenges open.
#[derive(Debug)]
pub struct Auth {
    secrets: Arc<SecretBox>,
    node_key: Option<Arc<NodeKey>>,
    challenges: Challenges<Vec<u8>>,
    sessions: Sessions,
    throttle: idres_auth::Throttle,
}

impl Auth {
    /// Authentication with the node's `secrets` and its `node_key`.
    pub fn new(secrets: Arc<SecretBox>, node_key: Option<Arc<NodeKey>>) -> Self {
        Self {
            secrets,
            node_key,
            challenges: Challenges::default(),
            sessions: Sessions::default(),
            throttle: idres_auth::Throttle::default(),
        }
    }

    /// The same, refusing an identity from an address for `window` after
    /// `max_failures` failed answers (0: never).
    pub fn with_throttle(mut self, max_failures: u32, window: std::time::Duration) -> Self {
        self.throttle = idres_auth::Throttle::new(max_failures, window);
        self
    }

    /// The same, with challenges that may be answered for `ttl`.
    pub fn with_challenge_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.challenges = Challenges::new(
            ttl,
            challenge::DEFAULT_MAX_OPEN,
            challenge::DEFAULT_MAX_PER_PEER,
        );
        self
    }

    /// The node's key, if it has one.
    pub fn node_key(&self) -> Option<&Arc<NodeKey>> {
        self.node_key.as_ref()
    }

    /// The node's secrets key.
    pub fn secrets(&self) -> &Arc<SecretBox> {
        &self.secrets
    }
}

/// Whether `op` is administrative: it needs an identity.
pub fn is_admin_op(op: OpCode) -> bool {
    matches!(
        op,
        OpCode::CREATE_HANDLE
            | OpCode::DELETE_HANDLE
            | OpCode::ADD_VALUE
            | OpCode::REMOVE_VALUE
            | OpCode::MODIFY_VALUE
            | OpCode::LIST_HANDLES
            | OpCode::HOME_NA
            | OpCode::UNHOME_NA
            | OpCode::LIST_HOMED_NAS
            | LOGIN_ID_SYSTEM
    )
}

/// Whether handling `op` may block on the store's writer or on key checks,
/// so that async transports run it off their workers.
pub fn may_block(op: OpCode) -> bool {
    is_admin_op(op)
        || op == OpCode::CHALLENGE_RESPONSE
        || op == OpCode::SESSION_SETUP
        || op == OpCode::VERIFY_RESPONSE
}

/// A reply decided by the admin path: response code, the opcode to answer
/// with, and the body after the request digest.
#[derive(Debug)]
pub struct AdminReply {
    /// Response code.
    pub rc: ResponseCode,
    /// Session id to put in the envelope (the challenge's, for a 402).
    pub session_id: Option<u32>,
    /// Opcode of the reply.
    pub op: OpCode,
    /// Body after the request digest.
    pub body: BytesMut,
    /// For LIST_HANDLES: the handles, which the reply writer spreads over
    /// continued messages on TCP (the body is then empty).
    pub list: Option<Vec<String>>,
}

impl AdminReply {
    fn error(op: OpCode, rc: ResponseCode, message: &str) -> Self {
        let mut body = BytesMut::new();
        codec::put_str(&mut body, message);
        Self {
            rc,
            session_id: None,
            op,
            body,
            list: None,
        }
    }

    /// An error reply with a message.
    pub fn error_of(op: OpCode, rc: ResponseCode, message: &str) -> Self {
        Self::error(op, rc, message)
    }

    fn ok(op: OpCode, body: BytesMut) -> Self {
        Self {
            rc: ResponseCode::SUCCESS,
            session_id: None,
            op,
            body,
            list: None,
        }
    }
}

/// The digest of a challenged request as the challenge carries it: in the
/// reply's version, type byte and digest from 2.1 (SHA-1, SHA-256 from
/// 2.7), the old MD5 form (int4 length, digest) before.
fn challenge_digest(m: &Message<'_>) -> (DigestAlg, Vec<u8>) {
    let reply = m.envelope.reply();
    let alg = digest_alg_for((reply.major, reply.minor));
    let mut out = BytesMut::new();
    put_request_digest(&mut out, alg, m.signed_part);
    (alg, out.to_vec())
}

use idres_auth::challenge::raw_digest;

impl Auth {
    /// Opens a challenge for the administrative request `m` (whole message
    /// bytes in `message`) and returns the 402 reply.
    pub fn challenge(&self, m: &Message<'_>, message: &[u8], peer: &mut Peer) -> AdminReply {
        let (alg, digest) = challenge_digest(m);
        match self
            .challenges
            .issue(peer.addr.ip(), digest.clone(), message.to_vec())
        {
            Ok((session, nonce)) => {
                if peer.transport == Transport::Tcp {
                    peer.last_challenge = Some(session);
                }
                // From 2.1 the reply writer puts the digest first (the
                // challenge always has the digest flag); before, the nonce
                // and then the MD5 digest make the body.
                let mut body = BytesMut::new();
                codec::put_bytes(&mut body, &nonce);
                if alg == DigestAlg::OLD_MD5 {
                    codec::put_bytes(&mut body, raw_digest(&digest));
                }
                AdminReply {
                    rc: ResponseCode::AUTHENTICATION_NEEDED,
                    session_id: Some(session),
                    op: m.header.op_code,
                    body,
                    list: None,
                }
            }
            Err(challenge::Busy) => AdminReply::error(
                m.header.op_code,
                ResponseCode::SERVER_TOO_BUSY,
                "too many authentication challenges open; try again shortly",
            ),
        }
    }

    /// Checks the answer `m` to an open challenge; on success carries out
    /// the challenged request for the identity proven (or logs the
    /// connection in, for LOGIN_ID_SYSTEM).
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &self,
        store: &Arc<dyn Store>,
        m: &Message<'_>,
        auth_type: &str,
        identity: &str,
        index: u32,
        response: &[u8],
        peer: &mut Peer,
        site: &Bytes,
        now: u32,
    ) -> AdminReply {
        let op = m.header.op_code;
        let mut taken = self.challenges.take(m.envelope.session_id);
        if let (Err(TakeError::Unknown), Some(last)) = (&taken, peer.last_challenge) {
            if last != m.envelope.session_id {
                taken = self.challenges.take(last);
            }
        }
        peer.last_challenge = None;
        let pending =
            match taken {
                Ok(p) => p,
                Err(TakeError::Expired) => {
                    return AdminReply::error(
                        op,
                        ResponseCode::AUTHEN_TIMEOUT,
                        "the challenge has expired; send the request again",
                    )
                }
                Err(TakeError::Unknown) => return AdminReply::error(
                    op,
                    ResponseCode::AUTHEN_ERROR,
                    "no open challenge for this session: it was answered already, or never issued",
                ),
            };
        // From here on, replies answer the challenged request.
        let Ok(original) = Message::parse_with_envelope(&pending.request) else {
            return AdminReply::error(op, ResponseCode::ERROR, "challenged request lost");
        };
        let op = original.header.op_code;
        let Ok(handle) = Handle::parse(identity) else {
            return AdminReply::error(
                op,
                ResponseCode::INVALID_ADMIN,
                &format!("{identity:?} is not a handle"),
            );
        };
        let who = Identity { index, handle };
        let named = who.to_string();
        let ip = peer.addr.ip();
        if self.throttle.blocked(&named, ip) {
            tracing::warn!(identity = %who, %ip, "refused: too many failed attempts");
            return AdminReply::error(
                op,
                ResponseCode::AUTHENTICATION_FAILED,
                &format!(
                    "too many failed attempts to authenticate as {who} from this address; try \
                     again in {} s",
                    self.throttle.window().as_secs()
                ),
            );
        }
        if let Err(e) = idres_auth::challenge::verify_answer(
            &StoreView(store.as_ref()),
            &self.secrets,
            &who,
            auth_type,
            response,
            &pending.nonce,
            &pending.digest,
        ) {
            let rc = match e {
                challenge::AnswerError::InvalidAdmin(_) => ResponseCode::INVALID_ADMIN,
                challenge::AnswerError::Failed(_) => ResponseCode::AUTHENTICATION_FAILED,
                challenge::AnswerError::InvalidCredential(_) => ResponseCode::INVALID_CREDENTIAL,
                challenge::AnswerError::Storage(_) => ResponseCode::ERROR,
            };
            if matches!(e, challenge::AnswerError::Failed(_)) {
                self.throttle.failed(&named, ip);
            }
            tracing::info!(identity = %who, peer = %peer.addr, error = %e, "authentication refused");
            return AdminReply::error(op, rc, &e.to_string());
        }
        self.throttle.succeeded(&named, ip);
        let caller = Caller::Authenticated(who.clone());
        if original.header.op_code == LOGIN_ID_SYSTEM {
            tracing::info!(identity = %who, peer = %peer.addr, "logged in");
            peer.login = Some(who);
            return AdminReply::ok(LOGIN_ID_SYSTEM, BytesMut::new());
        }
        execute(store, &original, &caller, site, now)
    }
}

/// The response code of a refused write, the same on every face.
pub fn response_code(e: &MutationError) -> ResponseCode {
    match e {
        MutationError::HandleNotFound(_) => ResponseCode::HANDLE_NOT_FOUND,
        MutationError::HandleExists(_) => ResponseCode::HANDLE_ALREADY_EXISTS,
        MutationError::ValueExists { .. } => ResponseCode::VALUE_ALREADY_EXISTS,
        MutationError::ValueNotFound { .. } => ResponseCode::VALUES_NOT_FOUND,
        MutationError::Invalid { .. } | MutationError::BadLink { .. } => {
            ResponseCode::INVALID_VALUE
        }
        MutationError::LinkConflict { .. } => ResponseCode::VALUE_ALREADY_EXISTS,
        MutationError::Denied(d) => match d.kind {
            DeniedKind::AuthenticationNeeded => ResponseCode::AUTHENTICATION_NEEDED,
            DeniedKind::InvalidAdmin => ResponseCode::INVALID_ADMIN,
            _ => ResponseCode::INSUFFICIENT_PERMISSIONS,
        },
        _ => ResponseCode::ERROR,
    }
}

/// Whether the identity a connection logged in as still holds a key (an
/// HS_SECKEY or HS_PUBKEY at its index): a login lasts only as long as
/// the credential it was made with.
pub fn still_holds_key(store: &Arc<dyn Store>, identity: &Identity) -> bool {
    idres_store::StateView::values(&StoreView(store.as_ref()), identity.handle.key())
        .ok()
        .flatten()
        .is_some_and(|values| {
            values.iter().any(|v| {
                v.index == identity.index
                    && (v
                        .value_type
                        .eq_ignore_ascii_case(idres_model::types::HS_SECKEY)
                        || v.value_type
                            .eq_ignore_ascii_case(idres_model::types::HS_PUBKEY))
            })
        })
}

/// Carries out the administrative request `m` for `caller` on the node
/// whose HS_SITE is `site`.
pub fn execute(
    store: &Arc<dyn Store>,
    m: &Message<'_>,
    caller: &Caller,
    site: &Bytes,
    now: u32,
) -> AdminReply {
    let op = m.header.op_code;
    match op {
        OpCode::HOME_NA | OpCode::UNHOME_NA | OpCode::LIST_HOMED_NAS => {
            return homing(store, m, caller, site, now)
        }
        _ => {}
    }
    let request = match Request::decode(op, m.body) {
        Ok(r) => r,
        Err(e) => {
            return AdminReply::error(
                op,
                ResponseCode::PROTOCOL_ERROR,
                &format!("malformed {op:?} body: {e}"),
            )
        }
    };
    let flags = m.header.op_flags;
    let parse = |raw: &str| {
        Handle::parse(raw).map_err(|e| {
            AdminReply::error(op, ResponseCode::INVALID_HANDLE, &format!("{raw:?}: {e}"))
        })
    };
    let stamp = |mut values: Vec<HandleValue>| {
        for v in &mut values {
            v.timestamp = now;
        }
        values
    };
    // CREATE_HANDLE answers with the handle created (the minted one with
    // MINT_NEW_SUFFIX), as the reference server does.
    let mut created: Option<String> = None;
    let mutation: Result<Mutation, AdminReply> = (|| {
        Ok(match request {
            Request::CreateHandle { handle, values } => {
                let handle = if flags.has(OpFlags::MINT_NEW_SUFFIX) {
                    parse(&format!(
                        "{}/{}",
                        handle.trim_end_matches('/'),
                        mint_suffix()
                    ))?
                } else {
                    parse(handle)?
                };
                created = Some(handle.as_str().to_owned());
                let values = stamp(values);
                if flags.has(OpFlags::OVERWRITE) {
                    Mutation::Put { handle, values }
                } else {
                    Mutation::Create { handle, values }
                }
            }
            Request::DeleteHandle { handle } => Mutation::Delete {
                handle: parse(handle)?,
            },
            Request::AddValue { handle, values } => Mutation::AddValues {
                handle: parse(handle)?,
                values: stamp(values),
            },
            Request::RemoveValue { handle, indexes } => Mutation::RemoveValues {
                handle: parse(handle)?,
                indexes,
            },
            Request::ModifyValue { handle, values } => Mutation::ModifyValues {
                handle: parse(handle)?,
                values: stamp(values),
            },
            Request::ListHandles { prefix } => return Err(list(store, op, prefix, caller)),
            _ => {
                return Err(AdminReply::error(
                    op,
                    ResponseCode::OPERATION_NOT_SUPPORTED,
                    &format!("operation {} is not supported", op.0),
                ))
            }
        })
    })();
    let mutation = match mutation {
        Ok(m) => m,
        Err(reply) => return reply,
    };
    let mut body = BytesMut::new();
    if let Some(name) = created {
        codec::put_str(&mut body, &name);
    }
    guarded_write(store, op, caller, mutation, body)
}

/// Writes `mutation` for `caller` through the store's writer, which decides
/// the caller's permission against the state it applies it to; on success
/// answers with `body`.
fn guarded_write(
    store: &Arc<dyn Store>,
    op: OpCode,
    caller: &Caller,
    mutation: Mutation,
    body: BytesMut,
) -> AdminReply {
    let target = mutation.handle().map(|h| h.as_str().to_owned());
    let handle = target.as_deref().unwrap_or("");
    let op_name = op.name().unwrap_or("OTHER");
    let who = idres_auth::audit::who(caller);
    if let Err(e) = idres_auth::limits::check_write(&who, 1) {
        let why = e.to_string();
        idres_auth::audit::write("handle", &who, op_name, handle, Err(&why));
        return AdminReply::error(op, ResponseCode::SERVER_TOO_BUSY, &why);
    }
    match store.write(PermissionGuard::request(caller, vec![mutation])) {
        Ok(Ok(_)) => {
            idres_auth::audit::write("handle", &who, op_name, handle, Ok(()));
            AdminReply::ok(op, body)
        }
        Ok(Err(e)) => {
            let why = e.to_string();
            idres_auth::audit::write("handle", &who, op_name, handle, Err(&why));
            AdminReply::error(op, response_code(&e), &why)
        }
        Err(e) => {
            let why = e.to_string();
            idres_auth::audit::write("handle", &who, op_name, handle, Err(&why));
            if matches!(
                e,
                idres_store::StoreError::OutcomeUnknown(_) | idres_store::StoreError::Busy
            ) {
                return AdminReply::error(op, ResponseCode::SERVER_TOO_BUSY, &why);
            }
            if e.is_unavailable() {
                return AdminReply::error(
                    op,
                    ResponseCode::SERVER_TOO_BUSY,
                    "the store takes no writes now; try again later",
                );
            }
            AdminReply::error(op, ResponseCode::ERROR, "storage error")
        }
    }
}

/// LIST_HANDLES: the handles of a prefix, for an identity with the
/// list-handles bit on the prefix record. Reply body: int4 count, then each
/// handle as str.
fn list(store: &Arc<dyn Store>, op: OpCode, prefix_record: &str, caller: &Caller) -> AdminReply {
    let Ok(record) = Handle::parse(prefix_record) else {
        return AdminReply::error(op, ResponseCode::INVALID_HANDLE, "not a prefix handle");
    };
    let Some(prefix) = record.described_prefix() else {
        return AdminReply::error(
            op,
            ResponseCode::INVALID_HANDLE,
            "LIST_HANDLES names a prefix record such as 0.NA/88.118.8",
        );
    };
    let view = StoreView(store.as_ref());
    let own = match idres_store::StateView::values(&view, record.key()) {
        Ok(v) => v,
        Err(_) => return AdminReply::error(op, ResponseCode::ERROR, "storage error"),
    };
    if own.is_none() {
        return AdminReply::error(
            op,
            ResponseCode::HANDLE_NOT_FOUND,
            &format!("prefix {prefix} is not held here"),
        );
    }
    if let Err(e) = idres_auth::require(
        &view,
        caller,
        &record,
        own.as_deref(),
        &[idres_auth::Op::ListHandles],
    ) {
        let rc = match e {
            idres_auth::Refusal::AuthenticationNeeded(_) => ResponseCode::AUTHENTICATION_NEEDED,
            idres_auth::Refusal::Storage(_) => ResponseCode::ERROR,
            _ => ResponseCode::INSUFFICIENT_PERMISSIONS,
        };
        return AdminReply::error(op, rc, &e.to_string());
    }
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = match store.list(&prefix, after.as_deref(), 4096) {
            Ok(p) => p,
            Err(_) => return AdminReply::error(op, ResponseCode::ERROR, "storage error"),
        };
        let done = page.len() < 4096;
        after = page.last().cloned();
        names.extend(page);
        if done || names.len() >= MAX_LIST {
            break;
        }
    }
    names.truncate(MAX_LIST);
    let mut reply = AdminReply::ok(op, BytesMut::new());
    reply.list = Some(names);
    reply
}

/// HOME_NA, UNHOME_NA and LIST_HOMED_NAS, for the node's operators: the
/// identities the parent prefix record grants the derived-prefix bits
/// (`0.NA/0.NA` above a top-level prefix).
///
/// - HOME_NA `0.NA/<prefix>`: this node serves the prefix. Its prefix
///   record gets this node's HS_SITE (other HS_SITE and HS_SERV values go);
///   a new record also gets an HS_ADMIN granting the caller everything.
/// - UNHOME_NA `0.NA/<prefix>`: this node no longer holds the prefix: its
///   prefix record is deleted (handles under it stay).
/// - LIST_HOMED_NAS: the prefixes whose records are held here and do not
///   refer elsewhere; needs the list-handles bit of `0.NA/0.NA`.
fn homing(
    store: &Arc<dyn Store>,
    m: &Message<'_>,
    caller: &Caller,
    site: &Bytes,
    now: u32,
) -> AdminReply {
    let op = m.header.op_code;
    let mut at = 0usize;
    let Some(raw) = read_bytes(m.body, &mut at, idres_model::MAX_HANDLE_LEN)
        .and_then(|b| std::str::from_utf8(b).ok())
    else {
        return AdminReply::error(
            op,
            ResponseCode::PROTOCOL_ERROR,
            "malformed body: str handle",
        );
    };
    if op == OpCode::LIST_HOMED_NAS {
        let root = match Handle::parse(&format!(
            "{}/{}",
            idres_model::PREFIX_RECORD_PREFIX,
            idres_model::PREFIX_RECORD_PREFIX
        )) {
            Ok(h) => h,
            Err(_) => return AdminReply::error(op, ResponseCode::ERROR, "no root record"),
        };
        let view = StoreView(store.as_ref());
        let own = idres_store::StateView::values(&view, root.key())
            .ok()
            .flatten();
        if let Err(e) = idres_auth::require(
            &view,
            caller,
            &root,
            own.as_deref(),
            &[idres_auth::Op::ListHandles],
        ) {
            return AdminReply::error(op, ResponseCode::INSUFFICIENT_PERMISSIONS, &e.to_string());
        }
        let mut names: Vec<String> = store
            .prefixes()
            .into_iter()
            .filter(|p| {
                store.prefix_home(p.as_str()).is_some_and(|h| {
                    h.prefix == *p
                        && h.service_values.iter().all(|v| {
                            !v.value_type
                                .eq_ignore_ascii_case(idres_model::types::HS_SITE)
                                || v.data == *site
                        })
                })
            })
            .map(|p| p.record_handle().as_str().to_owned())
            .collect();
        names.sort();
        let mut reply = AdminReply::ok(op, BytesMut::new());
        reply.list = Some(names);
        return reply;
    }
    let record = match Handle::parse(raw) {
        Ok(h) if h.is_prefix_record() => h,
        Ok(h) => match Handle::parse(&format!(
            "{}/{}",
            idres_model::PREFIX_RECORD_PREFIX,
            h.as_str()
        )) {
            Ok(r) if r.is_prefix_record() => r,
            _ => {
                return AdminReply::error(
                    op,
                    ResponseCode::INVALID_HANDLE,
                    "name a prefix record such as 0.NA/88.118.8",
                )
            }
        },
        Err(_) if !raw.contains('/') => {
            match Handle::parse(&format!("{}/{raw}", idres_model::PREFIX_RECORD_PREFIX)) {
                Ok(r) => r,
                Err(e) => {
                    return AdminReply::error(op, ResponseCode::INVALID_HANDLE, &e.to_string())
                }
            }
        }
        Err(e) => return AdminReply::error(op, ResponseCode::INVALID_HANDLE, &e.to_string()),
    };
    if op == OpCode::UNHOME_NA {
        return guarded_write(
            store,
            op,
            caller,
            Mutation::Delete { handle: record },
            BytesMut::new(),
        );
    }
    let current = match idres_store::StateView::values(&StoreView(store.as_ref()), record.key()) {
        Ok(v) => v,
        Err(_) => return AdminReply::error(op, ResponseCode::ERROR, "storage error"),
    };
    let mut site_value = HandleValue::new(1, idres_model::types::HS_SITE, site.clone());
    site_value.timestamp = now;
    let values = match current {
        Some(mut values) => {
            values.retain(|v| {
                !v.value_type
                    .eq_ignore_ascii_case(idres_model::types::HS_SITE)
                    && !v
                        .value_type
                        .eq_ignore_ascii_case(idres_model::types::HS_SERV)
            });
            if values.iter().any(|v| v.index == site_value.index) {
                site_value.index = values.iter().map(|v| v.index).max().unwrap_or(0) + 1;
            }
            values.push(site_value);
            values
        }
        None => {
            let Some(identity) = caller.identity() else {
                return AdminReply::error(op, ResponseCode::AUTHENTICATION_NEEDED, "log in first");
            };
            let mut admin = HandleValue::new(
                100,
                idres_model::types::HS_ADMIN,
                idres_model::AdminRef {
                    permissions: idres_model::AdminPermissions::ALL,
                    handle: identity.handle.as_str().to_owned(),
                    index: identity.index,
                }
                .encode(),
            );
            admin.timestamp = now;
            vec![site_value, admin]
        }
    };
    guarded_write(
        store,
        op,
        caller,
        Mutation::Put {
            handle: record,
            values,
        },
        BytesMut::new(),
    )
}

impl Auth {
    /// VERIFY_RESPONSE (201): another server asks whether a secret-key
    /// answer of one of this node's identities is right. Body: str handle,
    /// int4 index, str nonce, the digest (int4-length or type-prefixed),
    /// str answer; the reply is one byte, 1 valid or 0 not.
    ///
    /// Each answer is a guess at the secret, so wrong ones count against
    /// the identity and the asking address like wrong challenge answers.
    pub fn verify_response(
        &self,
        store: &Arc<dyn Store>,
        m: &Message<'_>,
        peer: &Peer,
    ) -> AdminReply {
        let op = m.header.op_code;
        let b = m.body;
        let mut at = 0usize;
        let parsed = (|| {
            let handle =
                std::str::from_utf8(read_bytes(b, &mut at, idres_model::MAX_HANDLE_LEN)?).ok()?;
            let index = read_u32(b, &mut at)?;
            let nonce = read_bytes(b, &mut at, 64)?;
            let start = at;
            let digest_len = match b.get(at)? {
                0 => 4 + read_u32(b, &mut at.clone())? as usize,
                1 => 17,
                2 => 21,
                3 => 33,
                _ => return None,
            };
            let digest = b.get(start..start + digest_len)?;
            at = start + digest_len;
            let answer = read_bytes(b, &mut at, 4096)?;
            (at == b.len()).then_some((handle, index, nonce, digest, answer))
        })();
        let Some((handle, index, nonce, digest, answer)) = parsed else {
            return AdminReply::error(
                op,
                ResponseCode::PROTOCOL_ERROR,
                "malformed VERIFY_RESPONSE",
            );
        };
        let Ok(handle) = Handle::parse(handle) else {
            return AdminReply::error(op, ResponseCode::INVALID_HANDLE, "not a handle");
        };
        let who = Identity { index, handle };
        let named = who.to_string();
        let ip = peer.addr.ip();
        if self.throttle.blocked(&named, ip) {
            return AdminReply::error(
                op,
                ResponseCode::AUTHENTICATION_FAILED,
                &format!("too many failed checks for {who} from this address"),
            );
        }
        let valid = match idres_auth::challenge::verify_answer(
            &StoreView(store.as_ref()),
            &self.secrets,
            &who,
            idres_model::types::HS_SECKEY,
            answer,
            nonce,
            digest,
        ) {
            Ok(()) => true,
            Err(challenge::AnswerError::Storage(_)) => {
                return AdminReply::error(op, ResponseCode::ERROR, "storage error")
            }
            Err(challenge::AnswerError::InvalidAdmin(m)) => {
                return AdminReply::error(op, ResponseCode::INVALID_ADMIN, &m)
            }
            Err(_) => false,
        };
        if valid {
            self.throttle.succeeded(&named, ip);
        } else {
            self.throttle.failed(&named, ip);
        }
        let mut body = BytesMut::new();
        body.put_u8(u8::from(valid));
        AdminReply::ok(op, body)
    }
}

/// Handles per LIST_HANDLES message on TCP, as the reference server sends.
pub const LIST_PER_MESSAGE: usize = 50;

/// The body of one LIST_HANDLES message: int4 count, then each handle.
pub fn list_body(names: &[String]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u32(names.len() as u32);
    for n in names {
        codec::put_str(&mut body, n);
    }
    body
}

/// A fresh random suffix for MINT_NEW_SUFFIX (a UUID v4).
fn mint_suffix() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Key exchange by Diffie-Hellman (SESSION_SETUP mode 4).
pub const KEY_EXCHANGE_DH: u16 = 4;
/// Session cipher named in a DH session setup reply: AES.
const CIPHER_AES: u32 = 3;
/// Most sessions kept at once.
const MAX_SESSIONS: usize = 65_536;
/// Longest session a client may ask for.
const MAX_SESSION_SECS: u32 = 86_400;
/// Largest DH modulus accepted, in bytes (4096 bits).
const MAX_DH_MODULUS: usize = 512;

/// The sessions set up with SESSION_SETUP, by session id.
#[derive(Debug, Default)]
pub struct Sessions {
    open: std::sync::Mutex<std::collections::HashMap<u32, std::time::Instant>>,
}

impl Sessions {
    fn open(&self, lifetime: std::time::Duration) -> Option<u32> {
        let mut open = self.open.lock().ok()?;
        let now = std::time::Instant::now();
        if open.len() >= MAX_SESSIONS {
            open.retain(|_, until| *until > now);
            if open.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let id = loop {
            let id = rand::RngCore::next_u32(&mut rand::rngs::OsRng);
            if id != 0 && !open.contains_key(&id) {
                break id;
            }
        };
        open.insert(id, now + lifetime);
        Some(id)
    }

    fn close(&self, id: u32) -> bool {
        self.open.lock().is_ok_and(|mut o| o.remove(&id).is_some())
    }
}

fn read_u16(b: &[u8], at: &mut usize) -> Option<u16> {
    let v = b.get(*at..*at + 2)?;
    *at += 2;
    Some(u16::from_be_bytes([v[0], v[1]]))
}

fn read_u32(b: &[u8], at: &mut usize) -> Option<u32> {
    let v = b.get(*at..*at + 4)?;
    *at += 4;
    Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

fn read_bytes<'a>(b: &'a [u8], at: &mut usize, max: usize) -> Option<&'a [u8]> {
    let n = read_u32(b, at)? as usize;
    if n > max {
        return None;
    }
    let v = b.get(*at..*at + n)?;
    *at += n;
    Some(v)
}

impl Auth {
    /// SESSION_SETUP (400). The Handle.Net client sets up a certified
    /// session with Diffie-Hellman key exchange before its first
    /// administrative request and goes no further without one. The node
    /// answers with its half of the exchange (the client's group, a fresh
    /// exponent) in a reply signed with its key, and opens the session.
    ///
    /// The node authenticates each administrative request by
    /// challenge-response, within a session as outside one, and signs its
    /// replies with its own key; it never relies on the session key, so
    /// it does not keep it.
    pub fn session_setup(&self, m: &Message<'_>) -> AdminReply {
        let op = m.header.op_code;
        let bad = |why: &str| {
            AdminReply::error(
                op,
                ResponseCode::PROTOCOL_ERROR,
                &format!("malformed SESSION_SETUP: {why}"),
            )
        };
        let b = m.body;
        let mut at = 0usize;
        let Some(mode) = read_u16(b, &mut at) else {
            return bad("no key exchange mode");
        };
        let Some(timeout) = read_u32(b, &mut at) else {
            return bad("no timeout");
        };
        if read_bytes(b, &mut at, idres_model::MAX_HANDLE_LEN).is_none()
            || read_u32(b, &mut at).is_none()
        {
            return bad("no identity");
        }
        if mode != KEY_EXCHANGE_DH {
            return AdminReply::error(
                op,
                ResponseCode::OPERATION_NOT_SUPPORTED,
                &format!("key exchange mode {mode} is not supported; use Diffie-Hellman (mode 4)"),
            );
        }
        let Some(key) = read_bytes(b, &mut at, 4 * MAX_DH_MODULUS + 64) else {
            return bad("no Diffie-Hellman key");
        };
        let Some((p, g)) = dh_group(key) else {
            return bad("the Diffie-Hellman key is not a DH_PUB_KEY this node accepts");
        };
        let Some(session) = self.sessions.open(std::time::Duration::from_secs(u64::from(
            timeout.clamp(60, MAX_SESSION_SECS),
        ))) else {
            return AdminReply::error(op, ResponseCode::SERVER_TOO_BUSY, "too many sessions open");
        };
        let mut x = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut x);
        let y = rsa::BigUint::from_bytes_be(&g).modpow(
            &rsa::BigUint::from_bytes_be(&x),
            &rsa::BigUint::from_bytes_be(&p),
        );
        let mut dh = BytesMut::new();
        codec::put_str(&mut dh, "DH_PUB_KEY");
        dh.put_u16(0);
        for n in [java_bigint(&y.to_bytes_be()), p, g] {
            codec::put_bytes(&mut dh, &n);
        }
        let mut data = BytesMut::new();
        data.put_u32(CIPHER_AES);
        data.put_slice(&dh);
        let mut body = BytesMut::new();
        body.put_u16(KEY_EXCHANGE_DH);
        codec::put_bytes(&mut body, &data);
        body.put_u16(0);
        let mut reply = AdminReply::ok(op, body);
        reply.session_id = Some(session);
        reply
    }

    /// SESSION_TERMINATE (401).
    pub fn session_terminate(&self, m: &Message<'_>) -> AdminReply {
        self.sessions.close(m.envelope.session_id);
        AdminReply::ok(m.header.op_code, BytesMut::new())
    }
}

/// The modulus and generator of a client's DH_PUB_KEY (y, p, g), each as
/// Java writes them, checked for size.
fn dh_group(key: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut at = 0usize;
    let tag = read_bytes(key, &mut at, 64)?;
    if tag != b"DH_PUB_KEY" {
        return None;
    }
    read_u16(key, &mut at)?;
    let y = read_bytes(key, &mut at, MAX_DH_MODULUS + 1)?;
    let p = read_bytes(key, &mut at, MAX_DH_MODULUS + 1)?;
    let g = read_bytes(key, &mut at, MAX_DH_MODULUS + 1)?;
    let pn = rsa::BigUint::from_bytes_be(p);
    let gn = rsa::BigUint::from_bytes_be(g);
    let yn = rsa::BigUint::from_bytes_be(y);
    let one = rsa::BigUint::from(1u8);
    if pn.bits() < 512 || gn <= one || gn >= pn || yn <= one || yn >= pn {
        return None;
    }
    Some((p.to_vec(), g.to_vec()))
}

/// A positive number's magnitude as Java's `BigInteger.toByteArray`.
fn java_bigint(mag: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(mag.len() + 1);
    if mag.first().is_some_and(|b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(mag);
    v
}
