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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use idres_model::{types, Handle, HandleValue, SiteInfo, PREFIX_RECORD_PREFIX};
use idres_store::{PrefixHome, Store};
use idres_wire::body::put_referral;
use idres_wire::{
    put_error, put_resolution_reply, FrameError, Message, OpFlags, ReplyWriter, Request,
    ResponseCode,
};

/// What this node says about itself.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The site this node serves as, returned by GET_SITE_INFO.
    pub site: SiteInfo,
    /// Handles of services that are this node (an HS_SERV naming one of
    /// them is not a referral).
    pub service_handles: Vec<String>,
}

/// Counters of the handler, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct HandlerStats {
    /// Requests answered.
    pub answered: AtomicU64,
    /// Messages dropped without reply.
    pub dropped: AtomicU64,
    /// Replies with SUCCESS.
    pub success: AtomicU64,
    /// Replies with HANDLE_NOT_FOUND.
    pub not_found: AtomicU64,
    /// Referral replies.
    pub referrals: AtomicU64,
    /// PROTOCOL_ERROR replies.
    pub protocol_errors: AtomicU64,
    /// Other error replies.
    pub other_errors: AtomicU64,
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
    stats: HandlerStats,
}

impl Handler {
    /// A handler over `store` for the node described by `identity`.
    pub fn new(store: Arc<dyn Store>, identity: NodeIdentity) -> Self {
        let site_bytes = identity.site.encode();
        Self {
            store,
            identity,
            site_bytes,
            stats: HandlerStats::default(),
        }
    }

    /// The store answered from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The handler's counters.
    pub fn stats(&self) -> &HandlerStats {
        &self.stats
    }

    /// Handles one whole message (envelope and message) received at Unix
    /// time `now`, appending any reply to `out`.
    pub fn handle(&self, message: &[u8], now: u32, out: &mut BytesMut) -> Outcome {
        match Message::parse_with_envelope(message) {
            Ok(m) => self.handle_message(&m, now, out),
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
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Outcome::Drop
            }
        }
    }

    /// Handles a message already split into its parts.
    pub fn handle_message(&self, m: &Message<'_>, now: u32, out: &mut BytesMut) -> Outcome {
        if m.header.is_response() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Outcome::Drop;
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
                w.finish();
                self.stats.success.fetch_add(1, Ordering::Relaxed);
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
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
                "administration over the Handle protocol is not enabled on this node; \
                 use the HTTP or gRPC interface",
                now,
                out,
            ),
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
        let counter = match rc {
            ResponseCode::HANDLE_NOT_FOUND => &self.stats.not_found,
            ResponseCode::PROTOCOL_ERROR => &self.stats.protocol_errors,
            _ => &self.stats.other_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
        let mut w = self.begin(m, rc, now, out);
        put_error(w.body(), message);
        w.finish();
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
        let handle = match Handle::parse(raw_handle) {
            Ok(h) => h,
            Err(e) => return self.error(m, ResponseCode::INVALID_HANDLE, &e.to_string(), now, out),
        };
        if !m.header.op_flags.has(OpFlags::DO_NOT_REFER) && !handle.is_prefix_record() {
            if let Some(home) = self.store.prefix_home(handle.prefix().as_str()) {
                if let Some(values) = self.referral_values(&home, &handle) {
                    self.stats.referrals.fetch_add(1, Ordering::Relaxed);
                    self.stats.answered.fetch_add(1, Ordering::Relaxed);
                    let mut w = self.begin(m, ResponseCode::SERVICE_REFERRAL, now, out);
                    put_referral(
                        w.body(),
                        &format!("{PREFIX_RECORD_PREFIX}/{}", home.prefix),
                        &values,
                    );
                    w.finish();
                    return Outcome::Reply;
                }
            }
        }
        let record = match self.store.get(handle.key()) {
            Ok(Some(r)) => r,
            Ok(None) => {
                if let Some(values) = self.prefix_referral(m, &handle) {
                    self.stats.referrals.fetch_add(1, Ordering::Relaxed);
                    self.stats.answered.fetch_add(1, Ordering::Relaxed);
                    let mut w = self.begin(m, ResponseCode::PREFIX_REFERRAL, now, out);
                    put_referral(w.body(), "", &values);
                    w.finish();
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
        if indexes.is_empty() && types.is_empty() && record.all_public() {
            let mut w = self.begin(m, ResponseCode::SUCCESS, now, out);
            put_resolution_reply(w.body(), raw_handle.as_bytes(), record.encoded_values());
            w.finish();
            self.stats.success.fetch_add(1, Ordering::Relaxed);
            self.stats.answered.fetch_add(1, Ordering::Relaxed);
            return Outcome::Reply;
        }
        // Filtered or partly private: copy the chosen values one by one.
        let raw = match record.raw_values() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, handle = handle.key(), "corrupt record");
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
        w.finish();
        self.stats.success.fetch_add(1, Ordering::Relaxed);
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
        Outcome::Reply
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
