//! Writing DNS responses (RFC 1035 §4.1).
//!
//! Queries are decoded with hickory-proto. Responses are written here
//! directly into a reused buffer: every answer of this server is one of a
//! few record shapes whose owner is the question name or the zone apex, so
//! owners are two-byte compression pointers into the echoed question
//! (RFC 1035 §4.1.4) and record data is copied straight from the stored
//! values, without building intermediate record objects.

/// Length of the DNS header.
pub const HEADER_LEN: usize = 12;
/// Largest DNS message (the TCP and QUIC length prefix is 16 bits).
pub const MAX_MESSAGE: usize = 65_535;
/// Bytes of an OPT record without options.
pub const OPT_LEN: usize = 11;

/// Record types this server writes or recognises (RFC 1035 §3.2.2 and the
/// RFC named beside each).
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Text strings.
    pub const TXT: u16 = 16;
    /// IPv6 address (RFC 3596).
    pub const AAAA: u16 = 28;
    /// Naming authority pointer (RFC 3403).
    pub const NAPTR: u16 = 35;
    /// EDNS(0) pseudo-record (RFC 6891).
    pub const OPT: u16 = 41;
    /// Incremental zone transfer (RFC 1995).
    pub const IXFR: u16 = 251;
    /// Zone transfer.
    pub const AXFR: u16 = 252;
    /// Mailbox-related records (obsolete meta-type).
    pub const MAILB: u16 = 253;
    /// Mail agent records (obsolete meta-type).
    pub const MAILA: u16 = 254;
    /// Any type.
    pub const ANY: u16 = 255;
    /// Uniform resource identifier (RFC 7553).
    pub const URI: u16 = 256;
}

/// The labels of a question name as it appears in the query.
#[derive(Debug)]
pub struct QuestionName {
    /// Offset of each label's length byte, relative to the name's start.
    starts: [u8; 128],
    /// Number of labels, the root not counted.
    count: usize,
    /// Bytes of the name, the root label included.
    len: usize,
}

impl QuestionName {
    /// Walks an uncompressed name at the start of `bytes`. Returns `None`
    /// for a compression pointer, a label type other than a plain label,
    /// a name longer than 255 bytes, or a name that runs past the input.
    pub fn walk(bytes: &[u8]) -> Option<Self> {
        let mut q = Self {
            starts: [0; 128],
            count: 0,
            len: 0,
        };
        let mut pos = 0usize;
        loop {
            let l = usize::from(*bytes.get(pos)?);
            if l == 0 {
                q.len = pos + 1;
                return (q.len <= 255).then_some(q);
            }
            if l > 63 || pos + 1 + l >= 255 || q.count >= q.starts.len() {
                return None;
            }
            q.starts[q.count] = u8::try_from(pos).ok()?;
            q.count += 1;
            pos += 1 + l;
        }
    }

    /// Number of labels (the root not counted).
    pub fn label_count(&self) -> usize {
        self.count
    }

    /// Bytes of the name on the wire.
    pub fn wire_len(&self) -> usize {
        self.len
    }

    /// Offset, relative to the name's start, of label `i` (leaf first).
    pub fn label_offset(&self, i: usize) -> usize {
        if i < self.count {
            self.starts.get(i).map_or(0, |&s| usize::from(s))
        } else {
            self.len.saturating_sub(1)
        }
    }

    /// The bytes of label `i` (leaf first) within `name`, the name's bytes.
    pub fn label<'a>(&self, name: &'a [u8], i: usize) -> &'a [u8] {
        let at = self.label_offset(i);
        let l = name.get(at).map_or(0, |&l| usize::from(l));
        name.get(at + 1..at + 1 + l).unwrap_or(&[])
    }
}

/// A name in wire form, written either whole or as its leading labels and
/// a pointer to the zone apex when it lies in the zone.
#[derive(Debug, Clone)]
pub struct HostName {
    /// The whole name in wire form, lower case.
    pub wire: Vec<u8>,
    /// For a name in the zone, its labels above the apex in wire form.
    pub in_zone: Option<Vec<u8>>,
}

impl HostName {
    /// Writes the name, compressed against the apex at `apex_offset`.
    pub fn put(&self, out: &mut Vec<u8>, apex_offset: usize) {
        match &self.in_zone {
            Some(labels) => {
                out.extend_from_slice(labels);
                put_pointer(out, apex_offset);
            }
            None => out.extend_from_slice(&self.wire),
        }
    }
}

/// Cuts the response in `out` down to its header and question with the
/// TC bit set, which tells a client to ask again over TCP (the "slip" of
/// response-rate limiting). Returns false, leaving `out` alone, when the
/// question cannot be read.
pub fn truncate_to_question(out: &mut Vec<u8>) -> bool {
    if out.len() < HEADER_LEN || out.get(4..6) != Some(&[0, 1][..]) {
        return false;
    }
    let Some(q) = out.get(HEADER_LEN..).and_then(QuestionName::walk) else {
        return false;
    };
    let end = HEADER_LEN + q.wire_len() + 4;
    if end > out.len() {
        return false;
    }
    out.truncate(end);
    out[2] |= 0x02;
    out[6..HEADER_LEN].fill(0);
    true
}

/// Appends a big-endian `u16`.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Overwrites a big-endian `u16` at `at` (a position this module wrote).
pub fn set_u16(out: &mut [u8], at: usize, v: u16) {
    if let Some(slot) = out.get_mut(at..at + 2) {
        slot.copy_from_slice(&v.to_be_bytes());
    }
}

/// Appends a compression pointer to `offset` (RFC 1035 §4.1.4). Offsets
/// used here lie in the question, so they are below 0x3FFF.
pub fn put_pointer(out: &mut Vec<u8>, offset: usize) {
    let o = u16::try_from(offset).unwrap_or(0) & 0x3FFF;
    put_u16(out, 0xC000 | o);
}

/// Appends a `<character-string>` (RFC 1035 §3.3); at most 255 bytes.
pub fn put_char_string(out: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

/// Starts a record whose owner is the name at `owner_offset`: writes the
/// owner pointer, type, class IN and TTL, and a placeholder length.
/// Returns the position of the length, for [`end_record`].
pub fn begin_record(out: &mut Vec<u8>, owner_offset: usize, rtype: u16, ttl: u32) -> usize {
    put_pointer(out, owner_offset);
    put_u16(out, rtype);
    put_u16(out, 1);
    put_u32(out, ttl.min(i32::MAX as u32));
    let at = out.len();
    put_u16(out, 0);
    at
}

/// Finishes a record begun at `len_at`. Returns false, leaving the
/// caller to drop the record, when its data exceed 65,535 bytes.
pub fn end_record(out: &mut [u8], len_at: usize) -> bool {
    let rdlen = out.len().saturating_sub(len_at + 2);
    match u16::try_from(rdlen) {
        Ok(l) => {
            set_u16(out, len_at, l);
            true
        }
        Err(_) => false,
    }
}

/// Converts a presentation-form domain name to lower-case wire form.
/// Returns `None` for an empty label or a label over 63 bytes or a name
/// over 255 bytes.
pub fn name_to_wire(name: &str) -> Option<Vec<u8>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut out = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_question_names() {
        let wire = name_to_wire("1.3001.OID-res.org.").unwrap();
        assert_eq!(wire, b"\x011\x043001\x07oid-res\x03org\x00");
        let q = QuestionName::walk(&wire).unwrap();
        assert_eq!((q.label_count(), q.wire_len()), (4, wire.len()));
        assert_eq!(q.label(&wire, 1), b"3001");
        assert_eq!(q.label_offset(2), 7);
        assert_eq!(q.label_offset(4), wire.len() - 1);
        let root = QuestionName::walk(b"\x00").unwrap();
        assert_eq!((root.label_count(), root.wire_len()), (0, 1));
        // Pointers, truncation and over-long names are refused.
        assert!(QuestionName::walk(b"\x01a\xc0\x0c").is_none());
        for n in 0..wire.len() {
            assert!(QuestionName::walk(&wire[..n]).is_none(), "{n}");
        }
        let mut long = Vec::new();
        for _ in 0..64 {
            long.extend_from_slice(b"\x03abc");
        }
        long.push(0);
        assert!(QuestionName::walk(&long).is_none());
    }

    #[test]
    fn names_to_wire() {
        assert_eq!(name_to_wire(".").unwrap(), b"\x00");
        assert_eq!(name_to_wire("a.b").unwrap(), b"\x01a\x01b\x00");
        assert!(name_to_wire("a..b").is_none());
        assert!(name_to_wire(&"x".repeat(64)).is_none());
    }

    #[test]
    fn records_patch_their_length() {
        let mut out = vec![0u8; HEADER_LEN];
        let at = begin_record(&mut out, 12, rtype::TXT, u32::MAX);
        put_char_string(&mut out, b"hi");
        assert!(end_record(&mut out, at));
        assert_eq!(
            &out[HEADER_LEN..],
            &[0xC0, 12, 0, 16, 0, 1, 0x7F, 0xFF, 0xFF, 0xFF, 0, 3, 2, b'h', b'i']
        );
    }
}
