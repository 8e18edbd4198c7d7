//! The Handle request handler: bytes in, reply bytes out, no sockets.
//!
//! [`Handler::handle`] takes one whole message (envelope and message, after
//! UDP reassembly or TCP framing) and writes the reply into a buffer. It
//! follows the rules of RFC 3652 and of the reference server:
//!
//! - an unreadable envelope or header, or a message that is itself a
//!   response, gets no reply at all;
//! - a readable header with a bad body gets `PROTOCOL_ERROR`;
//! - replies echo the request id, expire 12 hours from `now`, and start
//!   with the request digest when the request asked for one;
//! - a handle whose prefix is homed at another service gets a referral
//!   (`SERVICE_REFERRAL`) carrying that service's HS_SITE / HS_SERV values;
//! - values without public read permission are never sent to an
//!   unauthenticated client.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use idres_model::{types, Handle, HandleValue, SiteInfo, PREFIX_RECORD_PREFIX};
use idres_store::{PrefixHome, Store};
use idres_wire::body::put_referral;
use idres_wire::{
    put_error, put_resolution_reply, FrameError, Message, OpCode, OpFlags, ReplyWriter, Request,
    ResponseCode,
};

use crate::admin::{self, Auth, Peer, Transport};
use idres_metrics::{FaceMetrics, Metrics};

/// What this node says about itself.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The site this node serves as, returned by GET_SITE_INFO.
    pub site: SiteInfo,
    /// Handles of services that are this node (an HS_SERV naming one of
    /// them is not a referral).
    pub service_handles: Vec<String>,
}

/// The request counters of the three transports.
#[derive(Debug)]
struct HandleFaces {
    udp: FaceMetrics,
    tcp: FaceMetrics,
    http: FaceMetrics,
}

/// What [`Handler::handle`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A reply was written to the buffer.
    Reply,
    /// Nothing to send.
    Drop,
}

/// Answers Handle protocol requests from a [`Store`].
#[derive(Debug)]
pub struct Handler {
    store: Arc<dyn Store>,
    identity: NodeIdentity,
    site_bytes: bytes::Bytes,
    faces: Option<HandleFaces>,
    auth: Auth,
    schemes: idres_schemes::Schemes,
}

impl Handler {
    /// A handler over `store` for the node described by `identity`, with
    /// a secrets key of its own and no node key: for tests and benchmarks.
    /// A node serves with [`Handler::with_auth`].
    pub fn new(store: Arc<dyn Store>, identity: NodeIdentity) -> Self {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        Self::with_auth(
            store,
            identity,
            Auth::new(Arc::new(idres_auth::SecretBox::from_key(&key)), None),
        )
    }

    /// A handler over `store` for the node described by `identity`,
    /// authenticating with `auth`. With a node key, GET_SITE_INFO carries
    /// its public key in the node's HS_SITE.
    pub fn with_auth(store: Arc<dyn Store>, mut identity: NodeIdentity, auth: Auth) -> Self {
        if let Some(key) = auth.node_key() {
            let public = bytes::Bytes::from(key.public_key_bytes());
            for server in &mut identity.site.servers {
                server.public_key = public.clone();
            }
        }
        let site_bytes = identity.site.encode();
        Self {
            store,
            identity,
            site_bytes,
            faces: None,
            auth,
            schemes: idres_schemes::Schemes::default(),
        }
    }

    /// Whether handling `message` (envelope and message) may wait on the
    /// store's writer or on key checks, so that an async transport should
    /// run it off its workers.
    pub fn may_block(message: &[u8]) -> bool {
        message
            .get(idres_wire::ENVELOPE_LEN..idres_wire::ENVELOPE_LEN + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .is_some_and(|b| admin::may_block(OpCode(u32::from_be_bytes(b))))
    }

    /// The node's authentication state.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The node's HS_SITE as GET_SITE_INFO returns it.
    pub fn site_bytes(&self) -> &bytes::Bytes {
        &self.site_bytes
    }

    /// Reads linked identifiers with these schemes (the same the store
    /// indexes links with).
    pub fn with_schemes(mut self, schemes: idres_schemes::Schemes) -> Self {
        self.schemes = schemes;
        self
    }

    /// The identifier schemes in force.
    pub fn schemes(&self) -> &idres_schemes::Schemes {
        &self.schemes
    }

    /// The store answered from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Counts every request in `metrics`, by transport (`handle_udp`,
    /// `handle_tcp`, `handle_http`), operation and response code.
    pub fn with_metrics(mut self, metrics: &Arc<Metrics>) -> Self {
        self.faces = Some(HandleFaces {
            udp: metrics.face("handle_udp"),
            tcp: metrics.face("handle_tcp"),
            http: metrics.face("handle_http"),
        });
        self
    }

    /// The metrics of a transport, if counted.
    pub fn face_metrics(&self, transport: Transport) -> Option<&FaceMetrics> {
        self.faces.as_ref().map(|f| match transport {
            Transport::Udp => &f.udp,
            Transport::Tcp => &f.tcp,
            Transport::Http => &f.http,
        })
    }

    /// Handles one whole message (envelope and message) received at Unix
    /// time `now` from an unknown peer, appending any reply to `out`.
    pub fn handle(&self, message: &[u8], now: u32, out: &mut BytesMut) -> Outcome {
        let mut peer = Peer::new(
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
            Transport::Udp,
        );
        self.handle_from(message, now, &mut peer, out)
    }

    /// Handles one whole message from `peer` (whose connection state an
    /// exchange may change: a login), appending any reply to `out`.
    pub fn handle_from(
        &self,
        message: &[u8],
        now: u32,
        peer: &mut Peer,
        out: &mut BytesMut,
    ) -> Outcome {
        let Some(face) = self.face_metrics(peer.transport) else {
            return self.handle_inner(message, now, peer, out);
        };
        let started = std::time::Instant::now();
        let start = out.len();
        let outcome = self.handle_inner(message, now, peer, out);
        match outcome {
            Outcome::Drop => face.dropped("unreadable"),
            Outcome::Reply => {
                let word = |b: &[u8], at: usize| {
                    b.get(at..at + 4)
                        .and_then(|w| <[u8; 4]>::try_from(w).ok())
                        .map(u32::from_be_bytes)
                };
                let at = idres_wire::ENVELOPE_LEN;
                let op = word(message, at)
                    .and_then(|o| OpCode(o).name())
                    .unwrap_or("OTHER");
                let code = word(&out[start..], at + 4)
                    .and_then(|c| ResponseCode(c).name())
                    .unwrap_or("OTHER");
                face.record(op, code, started.elapsed());
            }
        }
        outcome
    }

    fn handle_inner(
        &self,
        message: &[u8],
        now: u32,
        peer: &mut Peer,
        out: &mut BytesMut,
    ) -> Outcome {
        match Message::parse_with_envelope(message) {
            Ok(m) => self.dispatch(&m, message, now, peer, out),
            Err(FrameError::Malformed {
                envelope, header, ..
            }) if !header.is_response() => {
                let m = Message {
                    envelope,
                    header,
                    body: &[],
                    credential: &[],
                    signed_part: message.get(idres_wire::ENVELOPE_LEN..).unwrap_or(&[]),
                };
                self.error(
                    &m,
                    ResponseCode::PROTOCOL_ERROR,
                    "malformed message",
                    now,
                    out,
                )
            }
            Err(_) => Outcome::Drop,
        }
    }

    /// Handles a message already split into its parts, from an unknown
    /// peer.
    pub fn handle_message(&self, m: &Message<'_>, now: u32, out: &mut BytesMut) -> Outcome {
        let mut peer = Peer::new(
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
            Transport::Udp,
        );
        self.dispatch(m, &[], now, &mut peer, out)
    }

    fn dispatch(
        &self,
        m: &Message<'_>,
        message: &[u8],
        now: u32,
        peer: &mut Peer,
        out: &mut BytesMut,
    ) -> Outcome {
        if m.header.is_response() {
            return Outcome::Drop;
        }
        if m.header.op_flags.has(OpFlags::CERTIFY) && self.auth.node_key().is_none() {
            // Never a reply that claims a signature it lacks.
            let mut header = m.header;
            header.op_flags = OpFlags(header.op_flags.0 & !OpFlags::CERTIFY);
            let uncertified = Message {
                header,
                ..m.clone()
            };
            return self.error(
                &uncertified,
                ResponseCode::ERROR,
                "this node has no key and cannot certify its replies; ask without \
                 the certify flag, or ask a node that has a key",
                now,
                out,
            );
        }
        let op = m.header.op_code;
        if op == admin::LOGIN_ID_SYSTEM && peer.transport != Transport::Tcp {
            return self.error(
                m,
                ResponseCode::OPERATION_NOT_SUPPORTED,
                "LOGIN_ID_SYSTEM logs in a TCP connection; log in over TCP",
                now,
                out,
            );
        }
        if admin::is_admin_op(op) {
            if message.is_empty() {
                return self.error(
                    m,
                    ResponseCode::OPERATION_NOT_SUPPORTED,
                    "administration needs the whole message",
                    now,
                    out,
                );
            }
            let reply = match (&peer.login, op) {
                (Some(identity), o) if o != admin::LOGIN_ID_SYSTEM => {
                    if admin::still_holds_key(&self.store, identity) {
                        let caller = idres_auth::Caller::Authenticated(identity.clone());
                        admin::execute(&self.store, m, &caller, &self.site_bytes, now)
                    } else {
                        // CAICT clients log in again on 407.
                        peer.login = None;
                        admin::AdminReply::error_of(
                            op,
                            admin::RC_LOGIN_AGAIN,
                            "the identity this connection logged in as no longer holds that key; \
                             log in again",
                        )
                    }
                }
                _ => self.auth.challenge(m, message, peer),
            };
            return self.admin_reply(m, reply, peer, now, out);
        }
        if op == OpCode::SESSION_SETUP {
            let reply = self.auth.session_setup(m);
            return self.admin_reply(m, reply, peer, now, out);
        }
        if op == OpCode::VERIFY_RESPONSE {
            let reply = self.auth.verify_response(&self.store, m, peer);
            return self.admin_reply(m, reply, peer, now, out);
        }
        if op == OpCode::SESSION_TERMINATE {
            let reply = self.auth.session_terminate(m);
            return self.admin_reply(m, reply, peer, now, out);
        }
        if op == OpCode::CHALLENGE_RESPONSE {
            let reply = match Request::decode(op, m.body) {
                Ok(Request::ChallengeResponse {
                    auth_type,
                    identity,
                    index,
                    response,
                }) => self.auth.answer(
                    &self.store,
                    m,
                    auth_type,
                    identity,
                    index,
                    response,
                    peer,
                    &self.site_bytes,
                    now,
                ),
                Ok(_) | Err(_) => {
                    return self.error(
                        m,
                        ResponseCode::PROTOCOL_ERROR,
                        "malformed challenge answer",
                        now,
                        out,
                    )
                }
            };
            return self.admin_reply(m, reply, peer, now, out);
        }
        let request = match Request::decode(m.header.op_code, m.body) {
            Ok(r) => r,
            Err(e) => {
                return self.error(
                    m,
                    ResponseCode::PROTOCOL_ERROR,
                    &format!("malformed {:?} body: {e}", m.header.op_code),
                    now,
                    out,
                )
            }
        };
        match request {
            Request::Resolution {
                handle,
                indexes,
                types,
            } => self.resolve(m, handle, &indexes, &types, now, out),
            Request::GetSiteInfo => {
                let mut w = self.begin(m, ResponseCode::SUCCESS, now, out);
                w.body().put_slice(&self.site_bytes);
                self.finish(m, w);
                Outcome::Reply
            }
            Request::Other(op) => self.error(
                m,
                ResponseCode::OPERATION_NOT_SUPPORTED,
                &format!("operation {} is not supported", op.0),
                now,
                out,
            ),
            _ => self.error(
                m,
                ResponseCode::OPERATION_NOT_SUPPORTED,
                "operation not supported",
                now,
                out,
            ),
        }
    }

    /// Writes a reply decided by the admin path.
    fn admin_reply(
        &self,
        m: &Message<'_>,
        reply: admin::AdminReply,
        peer: &Peer,
        now: u32,
        out: &mut BytesMut,
    ) -> Outcome {
        let mut envelope = m.envelope;
        if let Some(session) = reply.session_id {
            envelope.session_id = session;
        }
        let mut header = m.header;
        header.op_code = reply.op;
        let reply_version = envelope.reply();
        if reply.rc == ResponseCode::AUTHENTICATION_NEEDED
            && (reply_version.major, reply_version.minor) >= (2, 1)
        {
            // The challenge always carries the request digest.
            header.op_flags = OpFlags(header.op_flags.0 | OpFlags::RETURN_DIGEST);
        }
        if let Some(names) = &reply.list {
            // Without continuation (UDP, HTTP) a list must fit one message.
            let size: usize = names.iter().map(|n| 4 + n.len()).sum();
            if peer.transport != Transport::Tcp && size + 4096 > idres_wire::MAX_MESSAGE_LEN {
                let reply = admin::AdminReply::error_of(
                    reply.op,
                    ResponseCode::ERROR,
                    &format!(
                        "{} handles do not fit one message; list them over TCP",
                        names.len()
                    ),
                );
                return self.admin_reply(m, reply, peer, now, out);
            }
            // On TCP a long list goes as several messages, all but the last
            // marked continuous; elsewhere in one message.
            let chunks: Vec<&[String]> = if peer.transport == Transport::Tcp && !names.is_empty() {
                names.chunks(admin::LIST_PER_MESSAGE).collect()
            } else {
                vec![names.as_slice()]
            };
            let last = chunks.len() - 1;
            let shaped = Message {
                envelope,
                header,
                ..m.clone()
            };
            for (i, chunk) in chunks.into_iter().enumerate() {
                let mut w = self.begin(&shaped, reply.rc, now, out);
                if i < last {
                    w.mark_continuous();
                }
                w.body().put_slice(&admin::list_body(chunk));
                self.finish(&shaped, w);
            }
            return Outcome::Reply;
        }
        let shaped = Message {
            envelope,
            header,
            ..m.clone()
        };
        let mut w = self.begin(&shaped, reply.rc, now, out);
        w.body().put_slice(&reply.body);
        self.finish(&shaped, w);
        Outcome::Reply
    }

    /// Closes a reply: signed with the node key when the request asked for
    /// a certified answer (the node has a key whenever that is so: a
    /// certified request to a node without one is refused first).
    fn finish(&self, m: &Message<'_>, w: ReplyWriter<'_>) {
        match self.auth.node_key() {
            Some(key) if m.header.op_flags.has(OpFlags::CERTIFY) => {
                w.finish_signed(|signed| Some((key.hash_name(), key.sign(signed))));
            }
            _ => {
                w.finish();
            }
        }
    }

    fn begin<'b>(
        &self,
        m: &Message<'_>,
        rc: ResponseCode,
        now: u32,
        out: &'b mut BytesMut,
    ) -> ReplyWriter<'b> {
        ReplyWriter::begin(
            out,
            &m.envelope,
            &m.header,
            m.signed_part,
            rc,
            self.identity.site.serial,
            now,
        )
    }

    fn error(
        &self,
        m: &Message<'_>,
        rc: ResponseCode,
        message: &str,
        now: u32,
        out: &mut BytesMut,
    ) -> Outcome {
        let mut w = self.begin(m, rc, now, out);
        put_error(w.body(), message);
        self.finish(m, w);
        Outcome::Reply
    }

    fn resolve(
        &self,
        m: &Message<'_>,
        raw_handle: &str,
        indexes: &[u32],
        types: &[&str],
        now: u32,
        out: &mut BytesMut,
    ) -> Outcome {
        // A linked identifier in its textual form (`gs1:01/…`, `ecode:…`):
        // the record linked to it, or to the nearest level above it.
        if let Some(read) = self.schemes.linked_form(raw_handle) {
            let r = match read {
                Ok(r) => r,
                Err(e) => {
                    return self.error(m, ResponseCode::INVALID_HANDLE, &e.to_string(), now, out)
                }
            };
            let found = match crate::linked::find(&**self.store(), &r) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    let msg = format!("no record is linked to {} or a level above it", r.canonical);
                    return self.error(m, ResponseCode::HANDLE_NOT_FOUND, &msg, now, out);
                }
                Err(e) => {
                    tracing::error!(error = %e, id = raw_handle, "store read failed");
                    return self.error(m, ResponseCode::ERROR, "storage error", now, out);
                }
            };
            if let Some(why) = Handle::parse(&found.handle)
                .ok()
                .and_then(|h| self.withdrawn(&h))
            {
                return self.error(m, ResponseCode::ERROR, &why, now, out);
            }
            return self.reply_record(
                m,
                raw_handle,
                &found.handle,
                found.record,
                indexes,
                types,
                now,
                out,
            );
        }
        let handle = match Handle::parse(raw_handle) {
            Ok(h) => h,
            Err(e) => return self.error(m, ResponseCode::INVALID_HANDLE, &e.to_string(), now, out),
        };
        // One look at the prefix's home serves both questions: withdrawn,
        // or homed elsewhere.
        let home = if handle.is_prefix_record() {
            None
        } else {
            self.store.prefix_home(handle.prefix().as_str())
        };
        if let Some(why) = home.as_ref().and_then(|h| h.withdrawn.as_ref()) {
            let prefix = home
                .as_ref()
                .map(|h| h.prefix.to_string())
                .unwrap_or_default();
            return self.error(
                m,
                ResponseCode::ERROR,
                &format!("prefix {prefix} is withdrawn: {why}"),
                now,
                out,
            );
        }
        if !m.header.op_flags.has(OpFlags::DO_NOT_REFER) {
            if let Some(home) = home {
                if let Some(values) = self.referral_values(&home, &handle) {
                    let mut w = self.begin(m, ResponseCode::SERVICE_REFERRAL, now, out);
                    put_referral(
                        w.body(),
                        &format!("{PREFIX_RECORD_PREFIX}/{}", home.prefix),
                        &values,
                    );
                    self.finish(m, w);
                    return Outcome::Reply;
                }
            }
        }
        let record = match self.store.get(handle.key()) {
            Ok(Some(r)) => r,
            Ok(None) => {
                if let Some(values) = self.prefix_referral(m, &handle) {
                    let mut w = self.begin(m, ResponseCode::PREFIX_REFERRAL, now, out);
                    put_referral(w.body(), "", &values);
                    self.finish(m, w);
                    return Outcome::Reply;
                }
                return self.error(
                    m,
                    ResponseCode::HANDLE_NOT_FOUND,
                    "handle not found",
                    now,
                    out,
                );
            }
            Err(e) => {
                tracing::error!(error = %e, handle = handle.key(), "store read failed");
                return self.error(m, ResponseCode::ERROR, "storage error", now, out);
            }
        };
        self.reply_record(
            m,
            raw_handle,
            handle.key(),
            record,
            indexes,
            types,
            now,
            out,
        )
    }

    /// The resolution reply of a record, filtered by index and type, with
    /// only its publicly readable values.
    #[allow(clippy::too_many_arguments)]
    fn reply_record(
        &self,
        m: &Message<'_>,
        raw_handle: &str,
        key: &str,
        record: idres_store::RecordBytes,
        indexes: &[u32],
        types: &[&str],
        now: u32,
        out: &mut BytesMut,
    ) -> Outcome {
        if indexes.is_empty() && types.is_empty() && record.all_public() {
            let mut w = self.begin(m, ResponseCode::SUCCESS, now, out);
            put_resolution_reply(w.body(), raw_handle.as_bytes(), record.encoded_values());
            self.finish(m, w);
            return Outcome::Reply;
        }
        // Filtered or partly private: copy the chosen values one by one.
        let raw = match record.raw_values() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, handle = key, "corrupt record");
                return self.error(m, ResponseCode::ERROR, "storage error", now, out);
            }
        };
        let mut chosen = BytesMut::new();
        chosen.put_u32(0);
        let mut count = 0u32;
        for v in raw {
            let Ok(v) = v else {
                return self.error(m, ResponseCode::ERROR, "storage error", now, out);
            };
            let wanted = (indexes.is_empty() && types.is_empty())
                || indexes.contains(&v.index)
                || types
                    .iter()
                    .any(|t| idres_model::value::type_matches(v.value_type, t));
            if wanted && v.permissions & idres_model::Permissions::PUBLIC_READ != 0 {
                chosen.put_slice(v.bytes);
                count += 1;
            }
        }
        if count == 0 {
            return self.error(
                m,
                ResponseCode::VALUES_NOT_FOUND,
                "no values match",
                now,
                out,
            );
        }
        chosen[..4].copy_from_slice(&count.to_be_bytes());
        let mut w = self.begin(m, ResponseCode::SUCCESS, now, out);
        put_resolution_reply(w.body(), raw_handle.as_bytes(), &chosen);
        self.finish(m, w);
        Outcome::Reply
    }

    /// Why `handle` is refused, if its prefix (or the nearest ancestor with
    /// a prefix record) is withdrawn: its node suspended or revoked, and the
    /// operator chose to refuse rather than answer from the escrowed copy.
    /// Other faces refuse with the same rule.
    pub fn withdrawn(&self, handle: &Handle) -> Option<String> {
        if handle.is_prefix_record() {
            return None;
        }
        let home = self.store.prefix_home(handle.prefix().as_str())?;
        let why = home.withdrawn.as_ref()?;
        Some(format!("prefix {} is withdrawn: {why}", home.prefix))
    }

    /// Where a client asking for `handle` must be referred, if its prefix
    /// is homed at another service: the prefix record's handle and the
    /// HS_SITE / HS_SERV values to follow. Other faces (HTTP) refer with
    /// the same rule as the Handle protocol.
    pub fn referral(&self, handle: &Handle) -> Option<(String, Vec<HandleValue>)> {
        if handle.is_prefix_record() {
            return None;
        }
        let home = self.store.prefix_home(handle.prefix().as_str())?;
        let values = self.referral_values(&home, handle)?;
        Some((format!("{PREFIX_RECORD_PREFIX}/{}", home.prefix), values))
    }

    /// The values to refer a client to, if `home` (the prefix record
    /// governing `handle`) places the prefix at another service. Values of
    /// an ancestor's record count through their `.PREFIX` forms, which are
    /// renamed to HS_SITE / HS_SERV so that clients follow them as they
    /// follow a service referral.
    fn referral_values(&self, home: &PrefixHome, handle: &Handle) -> Option<Vec<HandleValue>> {
        let exact = home.prefix == handle.prefix();
        let pick = |site: &str, serv: &str| -> Vec<HandleValue> {
            home.service_values
                .iter()
                .filter(|v| {
                    v.value_type.eq_ignore_ascii_case(site)
                        || v.value_type.eq_ignore_ascii_case(serv)
                })
                .cloned()
                .collect()
        };
        let mut values = if exact {
            pick(types::HS_SITE, types::HS_SERV)
        } else {
            let derived = pick(types::HS_SITE_PREFIX, types::HS_SERV_PREFIX);
            if derived.is_empty() {
                pick(types::HS_SITE, types::HS_SERV)
            } else {
                derived
            }
        };
        if values.is_empty() || values.iter().any(|v| self.is_ours(v)) {
            return None;
        }
        for v in &mut values {
            if v.value_type.eq_ignore_ascii_case(types::HS_SITE_PREFIX) {
                v.value_type = types::HS_SITE.to_owned();
            } else if v.value_type.eq_ignore_ascii_case(types::HS_SERV_PREFIX) {
                v.value_type = types::HS_SERV.to_owned();
            }
        }
        Some(values)
    }

    /// For a prefix record `0.NA/<prefix>` not held here, the `.PREFIX`
    /// values of the nearest ancestor's record when they place derived
    /// prefixes at another service: the prefix referral (rc 303) clients
    /// follow to find where a derived prefix lives.
    fn prefix_referral(&self, m: &Message<'_>, handle: &Handle) -> Option<Vec<HandleValue>> {
        if m.header.op_flags.has(OpFlags::DO_NOT_REFER) {
            return None;
        }
        let prefix = handle.described_prefix()?;
        let parent = prefix.parent()?;
        let home = self.store.prefix_home(parent.as_str())?;
        let values: Vec<HandleValue> = home
            .service_values
            .iter()
            .filter(|v| {
                v.value_type.eq_ignore_ascii_case(types::HS_SITE_PREFIX)
                    || v.value_type.eq_ignore_ascii_case(types::HS_SERV_PREFIX)
            })
            .cloned()
            .collect();
        if values.is_empty() || values.iter().any(|v| self.is_ours(v)) {
            return None;
        }
        Some(values)
    }

    /// Whether an HS_SITE or HS_SERV value describes this node.
    fn is_ours(&self, v: &HandleValue) -> bool {
        if v.value_type.starts_with("HS_SERV") || v.value_type.starts_with("hs_serv") {
            let target = String::from_utf8_lossy(&v.data);
            return self
                .identity
                .service_handles
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&target));
        }
        if v.data == self.site_bytes {
            return true;
        }
        match SiteInfo::decode(&v.data) {
            Ok(site) => self.identity.site.servers.iter().any(|ours| {
                ours.interfaces.iter().any(|i| {
                    u16::try_from(i.port)
                        .is_ok_and(|port| site.serves_at(SocketAddr::new(ours.address, port)))
                })
            }),
            Err(_) => false,
        }
    }
}
