//! A response under construction, with its size limit and truncation.

use crate::wire::{self, HEADER_LEN, OPT_LEN};

/// The response codes this server sends (RFC 1035 §4.1.1, RFC 6891 §9).
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// The query could not be interpreted.
    pub const FORMERR: u16 = 1;
    /// The server failed.
    pub const SERVFAIL: u16 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// The kind of query is not implemented.
    pub const NOTIMP: u16 = 4;
    /// The server refuses to answer (not its zone).
    pub const REFUSED: u16 = 5;
    /// The EDNS version is not supported (12 bits, the upper 8 in OPT).
    pub const BADVERS: u16 = 16;
}

/// A message section that takes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The answer section.
    Answer,
    /// The authority section.
    Authority,
    /// The additional section.
    Additional,
}

/// EDNS(0) as the query asked for it (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdnsRequest {
    /// The requester's UDP payload size.
    pub payload: u16,
    /// The EDNS version.
    pub version: u8,
    /// DNSSEC OK, echoed back (RFC 3225 §3).
    pub dnssec_ok: bool,
}

/// A response being written into a caller's buffer.
#[derive(Debug)]
pub struct Response<'o> {
    out: &'o mut Vec<u8>,
    /// Most bytes the message may take, the OPT record included.
    limit: usize,
    /// Where the records start (after the echoed question).
    records_start: usize,
    counts: [u16; 3],
    truncated: bool,
    rcode: u16,
    authoritative: bool,
    edns: Option<(EdnsRequest, u16)>,
}

impl<'o> Response<'o> {
    /// Starts a response to the query whose header is `query_header`:
    /// same ID, opcode, RD and CD; QR set; no records yet.
    pub fn start(out: &'o mut Vec<u8>, query_header: &[u8]) -> Self {
        out.clear();
        let b = |i: usize| query_header.get(i).copied().unwrap_or(0);
        out.extend_from_slice(&[b(0), b(1), 0x80 | (b(2) & 0x79), b(3) & 0x10]);
        out.extend_from_slice(&[0; 8]);
        Self {
            out,
            limit: wire::MAX_MESSAGE,
            records_start: HEADER_LEN,
            counts: [0; 3],
            truncated: false,
            rcode: rcode::NOERROR,
            authoritative: false,
            edns: None,
        }
    }

    /// Echoes the question (its wire bytes as received).
    pub fn question(&mut self, question: &[u8]) {
        self.out.truncate(HEADER_LEN);
        self.out.extend_from_slice(question);
        wire::set_u16(self.out, 4, 1);
        self.records_start = self.out.len();
    }

    /// Answers with an OPT record advertising `our_payload`, and limits
    /// the message to `limit` bytes in all.
    pub fn set_edns(&mut self, request: Option<EdnsRequest>, our_payload: u16) {
        self.edns = request.map(|r| (r, our_payload));
    }

    /// Limits the message to `limit` bytes, OPT record included.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(wire::MAX_MESSAGE);
    }

    /// Sets the response code (extended codes go partly into OPT).
    pub fn set_rcode(&mut self, code: u16) {
        self.rcode = code;
    }

    /// Sets the AA bit.
    pub fn set_authoritative(&mut self, aa: bool) {
        self.authoritative = aa;
    }

    /// Whether the response was truncated.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Records written so far in `section`.
    pub fn count(&self, section: Section) -> u16 {
        self.counts[section as usize]
    }

    /// Adds one record written by `write`, which returns false to abandon
    /// it (its data did not fit a record). A record that would take the
    /// message over its limit truncates the response: every record is
    /// removed, TC is set, and later records are ignored (RFC 2181 §9).
    pub fn record(&mut self, section: Section, write: impl FnOnce(&mut Vec<u8>) -> bool) {
        if self.truncated {
            return;
        }
        let mark = self.out.len();
        if !write(self.out) {
            self.out.truncate(mark);
            return;
        }
        let reserve = if self.edns.is_some() { OPT_LEN } else { 0 };
        if self.out.len() + reserve > self.limit {
            self.out.truncate(self.records_start);
            self.counts = [0; 3];
            self.truncated = true;
            return;
        }
        let c = &mut self.counts[section as usize];
        *c = c.saturating_add(1);
    }

    /// Writes the OPT record and the header's flags and counts.
    pub fn finish(self) {
        let mut additional = self.counts[2];
        if let Some((req, payload)) = self.edns {
            // RFC 6891 §6.1.3: root owner, class = our payload size, TTL =
            // extended RCODE, version 0, DO echoed; no options.
            self.out.push(0);
            wire::put_u16(self.out, wire::rtype::OPT);
            wire::put_u16(self.out, payload.max(512));
            let ttl = (u32::from(self.rcode >> 4) << 24) | if req.dnssec_ok { 0x8000 } else { 0 };
            wire::put_u32(self.out, ttl);
            wire::put_u16(self.out, 0);
            additional = additional.saturating_add(1);
        }
        if let Some(flags) = self.out.get_mut(2) {
            if self.authoritative {
                *flags |= 0x04;
            }
            if self.truncated {
                *flags |= 0x02;
            }
        }
        if let Some(flags) = self.out.get_mut(3) {
            *flags |= (self.rcode & 0x0F) as u8;
        }
        wire::set_u16(self.out, 6, self.counts[0]);
        wire::set_u16(self.out, 8, self.counts[1]);
        wire::set_u16(self.out, 10, additional);
    }
}
