//! The answering rules of the ORS zone, free of sockets and clocks.
//!
//! [`Authority::answer`] turns one query message into one response message
//! (or a decision to stay silent), reading the store and nothing else; the
//! transports around it only move bytes. The rules:
//!
//! - A message shorter than a header is dropped; so is any response
//!   (QR set), so that two servers cannot be made to talk to each other.
//! - An opcode other than QUERY gets NOTIMP. A query that cannot be decoded
//!   (not exactly one question, records in the answer or authority section,
//!   a compressed question name, several OPT records, trailing bytes) gets
//!   FORMERR. An EDNS version above 0 gets BADVERS (RFC 6891 §6.1.3).
//! - A name outside the zone, or a class other than IN, gets REFUSED.
//! - In the zone the answer is authoritative (AA): SOA and NS at the apex;
//!   A and AAAA for name servers named inside the zone; for an OID's name
//!   the NAPTR, URI and TXT views of its record (see [`crate::views`]),
//!   following an `HS_ALIAS` value to the linked handle's record; an OID
//!   without a record that a handle names in a public `OID` value is
//!   answered from that handle's record (see [`crate::index`]). A name
//!   that exists without the type asked for gets NODATA; a name that does
//!   not exist gets NXDOMAIN. Both carry the SOA in the authority section
//!   with the negative TTL (RFC 2308 §3). A name with OIDs below it but no
//!   record of its own exists (an empty non-terminal, RFC 8020).
//! - Over UDP a response is limited to 512 bytes, or to the EDNS payload
//!   size the client offers, capped by ours; a larger one is sent with TC
//!   and no records, so the client retries over TCP, where the limit is
//!   65,535 bytes.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::Query;
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use idres_metrics::{FaceMetrics, Metrics};
use idres_model::{oid, Handle, Oid, Prefix};
use idres_store::{RecordBytes, Store};

use crate::config::{ConfigError, DnsConfig};
use crate::index::OidIndex;
use crate::response::{rcode, EdnsRequest, Response, Section};
use crate::views::{self, View};
use crate::wire::{self, rtype, HostName, QuestionName, HEADER_LEN};

/// Most `HS_ALIAS` links followed from one record.
pub const MAX_ALIAS_HOPS: usize = 4;
/// The UDP limit without EDNS (RFC 1035 §4.2.1).
const CLASSIC_UDP: u16 = 512;

/// How the query arrived, which bounds the response size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram: 512 bytes, or the EDNS payload size.
    Udp,
    /// A TCP stream (RFC 1035 §4.2.2, RFC 7766).
    Tcp,
    /// A DNS-over-QUIC stream (RFC 9250).
    Quic,
}

/// What to do with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send the response in the output buffer.
    Reply,
    /// Send nothing: the message was not a query with a readable header.
    Drop,
}

/// SOA timers (RFC 1035 §3.3.13, RFC 2308 §4).
#[derive(Debug, Clone, Copy)]
struct Timers {
    soa_ttl: u32,
    refresh: u32,
    retry: u32,
    expire: u32,
    negative_ttl: u32,
}

/// The authority for one ORS zone, answering from a store.
#[derive(Debug)]
pub struct Authority {
    store: Arc<dyn Store>,
    index: OidIndex,
    /// The zone's labels, lower case, leaf first.
    zone_labels: Vec<Vec<u8>>,
    nameservers: Vec<HostName>,
    /// For name servers inside the zone: their labels above the apex.
    in_zone_hosts: Vec<Vec<Vec<u8>>>,
    addresses: Vec<IpAddr>,
    hostmaster: HostName,
    timers: Timers,
    max_udp_payload: u16,
    faces: Option<DnsFaces>,
    schemes: idres_schemes::Schemes,
}

/// The request counters of the three transports.
#[derive(Debug)]
struct DnsFaces {
    udp: FaceMetrics,
    tcp: FaceMetrics,
    quic: FaceMetrics,
}

/// The query type of a query message, as a label (the name's labels are
/// skipped without decoding).
fn qtype_label(msg: &[u8]) -> &'static str {
    let mut at = HEADER_LEN;
    while let Some(&len) = msg.get(at) {
        if len == 0 {
            let Some(t) = msg.get(at + 1..at + 3) else {
                return "OTHER";
            };
            return match u16::from_be_bytes([t[0], t[1]]) {
                1 => "A",
                2 => "NS",
                5 => "CNAME",
                6 => "SOA",
                12 => "PTR",
                15 => "MX",
                16 => "TXT",
                28 => "AAAA",
                33 => "SRV",
                35 => "NAPTR",
                43 => "DS",
                48 => "DNSKEY",
                65 => "HTTPS",
                251 => "IXFR",
                252 => "AXFR",
                255 => "ANY",
                _ => "OTHER",
            };
        }
        if len & 0xC0 != 0 {
            return "OTHER";
        }
        at += 1 + usize::from(len);
    }
    "OTHER"
}

fn rcode_label(resp: &[u8]) -> &'static str {
    match resp.get(3).map(|b| b & 0x0F) {
        Some(0) => "NOERROR",
        Some(1) => "FORMERR",
        Some(2) => "SERVFAIL",
        Some(3) => "NXDOMAIN",
        Some(4) => "NOTIMP",
        Some(5) => "REFUSED",
        _ => "OTHER",
    }
}

/// Where the question name stands relative to the zone.
enum Place {
    Apex,
    Host,
    Oid(Oid),
    /// A GS1 key in the ONS tree, or another scheme's identifier under
    /// `<scheme>.id`: its link key.
    Gs1(String),
    /// `gs1.id`, `<type>.gs1.id`, `<scheme>.id`: names with identifiers
    /// below them.
    Gs1Tree,
    Nowhere,
}

/// ONS key types under `gs1.id`: label, AI, digits.
const ONS_KEYS: &[(&[u8], &str, usize)] = &[
    (b"gtin", "01", 14),
    (b"sscc", "00", 18),
    (b"gln", "414", 13),
];

/// Reads an ONS name below the apex (leaf first): digits reversed, one
/// per label, then the key type, `gs1`, `id` (GS1 Object Name Service
/// 2.0.1 §5, under this zone instead of `onsepc.com`).
fn ons_place<'n>(below: usize, label: impl Fn(usize) -> &'n [u8]) -> Option<Place> {
    // `id.<zone>` holds the trees of every scheme (RFC 8020: it exists).
    if below == 1 && label(0).eq_ignore_ascii_case(b"id") {
        return Some(Place::Gs1Tree);
    }
    if below < 2
        || !label(below - 1).eq_ignore_ascii_case(b"id")
        || !label(below - 2).eq_ignore_ascii_case(b"gs1")
    {
        return None;
    }
    if below == 2 {
        return Some(Place::Gs1Tree);
    }
    let kind = label(below - 3);
    let &(_, ai, len) = ONS_KEYS
        .iter()
        .find(|(k, _, _)| kind.eq_ignore_ascii_case(k))?;
    if below == 3 {
        return Some(Place::Gs1Tree);
    }
    let digits: Vec<u8> = (0..below - 3)
        .rev()
        .map(&label)
        .map(|l| match l {
            [d] if d.is_ascii_digit() => Some(*d),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    let key = String::from_utf8(digits).ok()?;
    (key.len() == len && idres_schemes::gs1::lint::mod10_ok(&key))
        .then(|| Place::Gs1(format!("gs1:{ai}/{key}")))
}

fn labels_of(wire_name: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = wire_name;
    while let Some((&l, tail)) = rest.split_first() {
        if l == 0 {
            break;
        }
        let (label, tail) = tail.split_at(usize::from(l).min(tail.len()));
        out.push(label.to_vec());
        rest = tail;
    }
    out
}

impl Authority {
    /// Builds the authority for `config`'s zone over `store`.
    pub fn new(config: &DnsConfig, store: Arc<dyn Store>) -> Result<Self, ConfigError> {
        let zone_wire = wire::name_to_wire(&config.zone)
            .ok_or_else(|| ConfigError::BadName("zone", config.zone.clone()))?;
        let zone_labels = labels_of(&zone_wire);
        let host = |what: &'static str, name: &str| -> Result<HostName, ConfigError> {
            let wire =
                wire::name_to_wire(name).ok_or_else(|| ConfigError::BadName(what, name.into()))?;
            let labels = labels_of(&wire);
            let in_zone = labels.len() > zone_labels.len()
                && labels[labels.len() - zone_labels.len()..] == zone_labels[..];
            let in_zone = in_zone.then(|| {
                let cut = labels.len() - zone_labels.len();
                let mut prefix = Vec::new();
                for l in &labels[..cut] {
                    prefix.push(l.len() as u8);
                    prefix.extend_from_slice(l);
                }
                prefix
            });
            Ok(HostName { wire, in_zone })
        };
        let zone_dotted = config.zone.strip_suffix('.').unwrap_or(&config.zone);
        let ns_names = if config.nameservers.is_empty() {
            vec![format!("ns1.{zone_dotted}.")]
        } else {
            config.nameservers.clone()
        };
        let nameservers = ns_names
            .iter()
            .map(|n| host("nameserver", n))
            .collect::<Result<Vec<_>, _>>()?;
        let in_zone_hosts = nameservers
            .iter()
            .filter_map(|h| h.in_zone.as_deref().map(labels_of))
            .collect();
        let hostmaster = match &config.hostmaster {
            Some(h) => host("hostmaster", &h.replacen('@', ".", 1))?,
            None => host("hostmaster", &format!("hostmaster.{zone_dotted}."))?,
        };
        let oid_prefix = Prefix::parse(oid::OID_PREFIX)
            .map_err(|_| ConfigError::BadName("prefix", oid::OID_PREFIX.into()))?;
        Ok(Self {
            index: OidIndex::new(oid_prefix),
            store,
            zone_labels,
            nameservers,
            in_zone_hosts,
            addresses: config.nameserver_addresses.clone(),
            hostmaster,
            timers: Timers {
                soa_ttl: config.soa_ttl,
                refresh: config.soa_refresh,
                retry: config.soa_retry,
                expire: config.soa_expire,
                negative_ttl: config.negative_ttl,
            },
            max_udp_payload: config.max_udp_payload.max(CLASSIC_UDP),
            faces: None,
            schemes: config.schemes.clone(),
        })
    }

    /// The index of OIDs with records below them.
    pub fn index(&self) -> &OidIndex {
        &self.index
    }

    /// The store answers come from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Counts every query in `metrics` by transport (`dns_udp`, `dns_tcp`,
    /// `dns_quic`), query type and rcode.
    pub fn set_metrics(&mut self, metrics: &Arc<Metrics>) {
        self.faces = Some(DnsFaces {
            udp: metrics.face("dns_udp"),
            tcp: metrics.face("dns_tcp"),
            quic: metrics.face("dns_quic"),
        });
    }

    /// Counts a UDP response withheld or truncated by rate limiting.
    pub fn count_limited(&self) {
        if let Some(faces) = &self.faces {
            faces.udp.rate_limited();
        }
    }

    /// Answers the query `msg` that arrived over `transport` at Unix time
    /// `now`, writing the response into `out` (cleared first).
    pub fn answer(&self, msg: &[u8], transport: Transport, now: u32, out: &mut Vec<u8>) -> Outcome {
        let Some(faces) = &self.faces else {
            return self.answer_inner(msg, transport, now, out);
        };
        let face = match transport {
            Transport::Udp => &faces.udp,
            Transport::Tcp => &faces.tcp,
            Transport::Quic => &faces.quic,
        };
        let started = std::time::Instant::now();
        let outcome = self.answer_inner(msg, transport, now, out);
        match outcome {
            Outcome::Drop => face.dropped("unreadable"),
            Outcome::Reply => face.record(qtype_label(msg), rcode_label(out), started.elapsed()),
        }
        outcome
    }

    fn answer_inner(
        &self,
        msg: &[u8],
        transport: Transport,
        now: u32,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let Some(header) = msg.get(..HEADER_LEN) else {
            return Outcome::Drop;
        };
        if header[2] & 0x80 != 0 {
            return Outcome::Drop;
        }
        let mut resp = Response::start(out, header);
        let opcode = (header[2] >> 3) & 0x0F;
        if opcode != 0 {
            resp.set_rcode(rcode::NOTIMP);
            resp.finish();
            return Outcome::Reply;
        }
        let parsed = parse_query(msg).ok().and_then(|(query, qname, end, edns)| {
            // The question's bytes, and its name without type and class.
            let question = msg.get(HEADER_LEN..end)?;
            let name = question.get(..question.len().checked_sub(4)?)?;
            Some((query, qname, question, name, edns))
        });
        let Some((query, qname, question, name, edns)) = parsed else {
            resp.set_rcode(rcode::FORMERR);
            resp.finish();
            return Outcome::Reply;
        };
        resp.question(question);
        resp.set_edns(edns, self.max_udp_payload);
        resp.set_limit(match transport {
            Transport::Udp => edns.map_or(CLASSIC_UDP, |e| {
                e.payload.clamp(CLASSIC_UDP, self.max_udp_payload)
            }) as usize,
            Transport::Tcp | Transport::Quic => wire::MAX_MESSAGE,
        });
        if edns.is_some_and(|e| e.version > 0) {
            resp.set_rcode(rcode::BADVERS);
            resp.finish();
            return Outcome::Reply;
        }
        let qtype = u16::from(query.query_type());
        match query.query_class() {
            DNSClass::IN | DNSClass::ANY => {}
            _ => {
                resp.set_rcode(rcode::REFUSED);
                resp.finish();
                return Outcome::Reply;
            }
        }
        let Some(apex) = self.apex_offset(name, &qname) else {
            resp.set_rcode(rcode::REFUSED);
            resp.finish();
            return Outcome::Reply;
        };
        match qtype {
            rtype::OPT => {
                resp.set_rcode(rcode::FORMERR);
                resp.finish();
                return Outcome::Reply;
            }
            rtype::AXFR | rtype::IXFR | rtype::MAILA | rtype::MAILB => {
                resp.set_rcode(rcode::NOTIMP);
                resp.finish();
                return Outcome::Reply;
            }
            _ => {}
        }
        resp.set_authoritative(true);
        // RFC 8482: over UDP, where the source is not proven, ANY gets
        // one RRset (the first the name has), not everything.
        let minimal_any = qtype == rtype::ANY && transport == Transport::Udp;
        let code = match self.place(name, &qname) {
            Place::Apex if minimal_any => {
                self.write_soa(&mut resp, Section::Answer, apex, false);
                rcode::NOERROR
            }
            Place::Apex => {
                self.answer_apex(&mut resp, qtype, apex);
                rcode::NOERROR
            }
            Place::Host => {
                self.answer_host(&mut resp, qtype, minimal_any);
                rcode::NOERROR
            }
            Place::Oid(oid) => self.answer_oid(&mut resp, qtype, &oid, now, minimal_any),
            Place::Gs1(key) => self.answer_gs1(&mut resp, qtype, &key, now, minimal_any),
            Place::Gs1Tree => rcode::NOERROR,
            Place::Nowhere => rcode::NXDOMAIN,
        };
        if code == rcode::SERVFAIL {
            resp.set_authoritative(false);
        } else if resp.count(Section::Answer) == 0 && !resp.truncated() {
            self.write_soa(&mut resp, Section::Authority, apex, true);
        }
        resp.set_rcode(code);
        resp.finish();
        Outcome::Reply
    }

    /// Offset in the response of the zone apex within the question name,
    /// or `None` if the name is not in the zone.
    fn apex_offset(&self, name: &[u8], q: &QuestionName) -> Option<usize> {
        let (n, z) = (q.label_count(), self.zone_labels.len());
        let below = n.checked_sub(z)?;
        let inside = self
            .zone_labels
            .iter()
            .enumerate()
            .all(|(i, zl)| q.label(name, below + i).eq_ignore_ascii_case(zl));
        inside.then(|| HEADER_LEN + q.label_offset(below))
    }

    fn place(&self, name: &[u8], q: &QuestionName) -> Place {
        let below = q.label_count() - self.zone_labels.len();
        if below == 0 {
            return Place::Apex;
        }
        let is_host = self.in_zone_hosts.iter().any(|labels| {
            labels.len() == below
                && labels
                    .iter()
                    .enumerate()
                    .all(|(i, l)| q.label(name, i).eq_ignore_ascii_case(l))
        });
        if is_host {
            return Place::Host;
        }
        if let Some(p) = ons_place(below, |i| q.label(name, i)) {
            return p;
        }
        if let Some(p) = self.scheme_place(below, |i| q.label(name, i)) {
            return p;
        }
        match Oid::from_dns_labels((0..below).map(|i| q.label(name, i))) {
            Ok(oid) => Place::Oid(oid),
            Err(_) => Place::Nowhere,
        }
    }

    /// `<identifier>.<scheme>.id.<zone>` for Ecode and configured schemes
    /// (CID): the identifier is one label, read by its scheme (case does
    /// not matter to DNS; the scheme's canonical form decides).
    fn scheme_place<'n>(&self, below: usize, label: impl Fn(usize) -> &'n [u8]) -> Option<Place> {
        if !(2..=3).contains(&below) || !label(below - 1).eq_ignore_ascii_case(b"id") {
            return None;
        }
        let scheme = std::str::from_utf8(label(below - 2))
            .ok()?
            .to_ascii_lowercase();
        let known = scheme == "ecode" || self.schemes.custom_names().any(|c| c == scheme);
        if !known {
            return None;
        }
        if below == 2 {
            return Some(Place::Gs1Tree);
        }
        let id = std::str::from_utf8(label(0)).ok()?;
        let r = self.schemes.recognise_as(&scheme, id).ok()?;
        r.levels.into_iter().next().map(|l| Place::Gs1(l.key))
    }

    fn answer_apex(&self, resp: &mut Response<'_>, qtype: u16, apex: usize) {
        if matches!(qtype, rtype::SOA | rtype::ANY) {
            self.write_soa(resp, Section::Answer, apex, false);
        }
        if matches!(qtype, rtype::NS | rtype::ANY) {
            for ns in &self.nameservers {
                resp.record(Section::Answer, |out| {
                    let at = wire::begin_record(out, apex, rtype::NS, self.timers.soa_ttl);
                    ns.put(out, apex);
                    wire::end_record(out, at)
                });
            }
        }
    }

    fn answer_host(&self, resp: &mut Response<'_>, qtype: u16, minimal_any: bool) {
        for addr in &self.addresses {
            let (t, bytes): (u16, Vec<u8>) = match addr {
                IpAddr::V4(a) => (rtype::A, a.octets().to_vec()),
                IpAddr::V6(a) => (rtype::AAAA, a.octets().to_vec()),
            };
            if qtype == t || qtype == rtype::ANY {
                resp.record(Section::Answer, |out| {
                    let at = wire::begin_record(out, HEADER_LEN, t, self.timers.soa_ttl);
                    out.extend_from_slice(&bytes);
                    wire::end_record(out, at)
                });
                if minimal_any {
                    return;
                }
            }
        }
    }

    /// Answers for an OID's name; returns the response code.
    fn answer_oid(
        &self,
        resp: &mut Response<'_>,
        qtype: u16,
        oid: &Oid,
        now: u32,
        minimal_any: bool,
    ) -> u16 {
        let mut key = String::with_capacity(oid::OID_PREFIX.len() + 1 + oid.as_str().len());
        key.push_str(oid::OID_PREFIX);
        key.push('/');
        key.push_str(oid.as_str());
        let rec = match self.store.get(&key) {
            Ok(Some(rec)) => Ok(rec),
            Ok(None) => self.missing(&key),
            Err(e) => {
                tracing::warn!(error = %e, key, "store read failed");
                Err(rcode::SERVFAIL)
            }
        };
        self.answer_record(resp, qtype, rec, now, minimal_any)
    }

    /// Answers for a GS1 key's ONS name from the record linked to it;
    /// returns the response code.
    fn answer_gs1(
        &self,
        resp: &mut Response<'_>,
        qtype: u16,
        key: &str,
        now: u32,
        minimal_any: bool,
    ) -> u16 {
        let found = self
            .store
            .find_link(key)
            .and_then(|claims| match claims.first() {
                Some(h) => self.store.get(h),
                None => Ok(None),
            });
        let rec = match found {
            Ok(Some(rec)) => Ok(rec),
            Ok(None) => Err(rcode::NXDOMAIN),
            Err(e) => {
                tracing::warn!(error = %e, key, "store read failed");
                Err(rcode::SERVFAIL)
            }
        };
        self.answer_record(resp, qtype, rec, now, minimal_any)
    }

    /// The views of the record a name reached (its aliases followed), or
    /// the response code when it reached none.
    fn answer_record(
        &self,
        resp: &mut Response<'_>,
        qtype: u16,
        rec: Result<RecordBytes, u16>,
        now: u32,
        minimal_any: bool,
    ) -> u16 {
        let rec = match rec {
            Ok(rec) => self.follow_aliases(rec, now),
            Err(code) => return code,
        };
        self.write_views(resp, qtype, &rec, now, minimal_any);
        rcode::NOERROR
    }

    fn write_views(
        &self,
        resp: &mut Response<'_>,
        qtype: u16,
        rec: &RecordBytes,
        now: u32,
        minimal_any: bool,
    ) {
        let views: &[View] = match qtype {
            rtype::NAPTR => &[View::Naptr],
            rtype::URI => &[View::Uri],
            rtype::TXT => &[View::Txt],
            rtype::ANY => &[View::Naptr, View::Uri, View::Txt],
            _ => &[],
        };
        for &view in views {
            views::write_view(resp, Section::Answer, HEADER_LEN, view, rec, now);
            if minimal_any && resp.count(Section::Answer) > 0 {
                break;
            }
        }
    }

    /// For an OID without a record: the record of the handle that names
    /// it in an `OID` value, if one does; else the response code, NODATA
    /// when OIDs exist below it (an empty non-terminal), NXDOMAIN when not.
    fn missing(&self, key: &str) -> Result<RecordBytes, u16> {
        let store = self.store.as_ref();
        let known = match self.index.lookup(store, key) {
            Some(m) => Some(m),
            // The index is not ready: ask the store.
            None => match (
                crate::index::claimant(store, key),
                self.index.store_has_below(store, key),
            ) {
                (Ok(linked), Some(has_descendants)) => Some(crate::index::Missing {
                    has_descendants,
                    linked,
                }),
                _ => None,
            },
        };
        let Some(m) = known else {
            return Err(rcode::SERVFAIL);
        };
        if let Some(h) = &m.linked {
            if let Ok(Some(rec)) = store.get(h) {
                return Ok(rec);
            }
        }
        Err(if m.has_descendants {
            rcode::NOERROR
        } else {
            rcode::NXDOMAIN
        })
    }

    /// The record an OID's `HS_ALIAS` chain ends at; the record itself if
    /// a link is broken.
    fn follow_aliases(&self, mut rec: RecordBytes, now: u32) -> RecordBytes {
        for _ in 0..MAX_ALIAS_HOPS {
            let Some(target) = views::alias_target(&rec, now).and_then(|t| Handle::parse(t).ok())
            else {
                break;
            };
            match self.store.get(target.key()) {
                Ok(Some(next)) => rec = next,
                _ => break,
            }
        }
        rec
    }

    fn write_soa(&self, resp: &mut Response<'_>, section: Section, apex: usize, negative: bool) {
        let t = self.timers;
        let ttl = if negative {
            t.soa_ttl.min(t.negative_ttl)
        } else {
            t.soa_ttl
        };
        // The serial follows the store's change log, so it moves with every
        // change, as a secondary expects (RFC 1982 arithmetic wraps it).
        let serial = self.store.last_seq() as u32;
        resp.record(section, |out| {
            let at = wire::begin_record(out, apex, rtype::SOA, ttl);
            if let Some(ns) = self.nameservers.first() {
                ns.put(out, apex);
            } else {
                wire::put_pointer(out, apex);
            }
            self.hostmaster.put(out, apex);
            for v in [serial, t.refresh, t.retry, t.expire, t.negative_ttl] {
                wire::put_u32(out, v);
            }
            wire::end_record(out, at)
        });
    }
}

/// Decodes the question and additional section of a query whose header
/// was read. Returns the question, the walked name, the end of the
/// question and the EDNS request.
fn parse_query(msg: &[u8]) -> Result<(Query, QuestionName, usize, Option<EdnsRequest>), ()> {
    let mut dec = BinDecoder::new(msg);
    let header = hickory_proto::op::Header::read(&mut dec).map_err(drop)?;
    if header.query_count() != 1 || header.answer_count() != 0 || header.name_server_count() != 0 {
        return Err(());
    }
    let query = Query::read(&mut dec).map_err(drop)?;
    let question_end = dec.index();
    let qname = QuestionName::walk(msg.get(HEADER_LEN..).unwrap_or(&[])).ok_or(())?;
    if HEADER_LEN + qname.wire_len() + 4 != question_end {
        return Err(());
    }
    let mut edns = None;
    for _ in 0..header.additional_count() {
        let rr = Record::read(&mut dec).map_err(drop)?;
        if rr.record_type() == RecordType::OPT {
            if edns.is_some() {
                return Err(());
            }
            let ttl = rr.ttl();
            edns = Some(EdnsRequest {
                payload: u16::from(rr.dns_class()),
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
        }
    }
    if dec.index() != msg.len() {
        return Err(());
    }
    Ok((query, qname, question_end, edns))
}
