//! Handle values and their binary encoding (RFC 3651 §3.1, RFC 3652 §3.1).
//!
//! A handle record is a list of values. Each value has an index unique in
//! its record, a type (`URL`, `HS_ADMIN`, …), opaque data, a time to live
//! (relative seconds or an absolute time), permission bits, the time it was
//! last changed, and references to values of other handles.
//!
//! The binary form here is the one the Handle protocol puts on the wire; the
//! store keeps records in it so that a resolution reply is mostly a copy.

use bytes::{BufMut, Bytes};

use crate::codec::{self, DecodeError, Reader};

/// Most bytes of data in one value (the protocol's message cap).
pub const MAX_VALUE_DATA: usize = 256 * 1024;
/// Longest value type name.
pub const MAX_TYPE_LEN: usize = 256;
/// Most references one value may carry.
pub const MAX_REFERENCES: usize = 1024;
/// Most values in one record.
pub const MAX_VALUES: usize = 4096;
/// Fewest bytes one encoded value takes (index, timestamp, ttl type, ttl,
/// permissions, empty type, empty data, zero references).
pub const MIN_VALUE_LEN: usize = 4 + 4 + 1 + 4 + 1 + 4 + 4 + 4;
/// The default TTL of a value, one day, as in the public SDKs.
pub const DEFAULT_TTL: u32 = 86_400;

/// Well-known value types (RFC 3651 §3.2 and later reference releases).
pub mod types {
    /// Administrator of the handle: permissions and an admin identity.
    pub const HS_ADMIN: &str = "HS_ADMIN";
    /// Service site information.
    pub const HS_SITE: &str = "HS_SITE";
    /// Site information for handles under derived prefixes.
    pub const HS_SITE_PREFIX: &str = "HS_SITE.PREFIX";
    /// Handle of a service whose sites answer for this prefix.
    pub const HS_SERV: &str = "HS_SERV";
    /// Service handle for derived prefixes.
    pub const HS_SERV_PREFIX: &str = "HS_SERV.PREFIX";
    /// In a prefix record: the prefix is withdrawn (its node suspended or
    /// revoked) and is answered with an error naming why (the data).
    pub const IDRES_WITHDRAWN: &str = "IDRES.WITHDRAWN";
    /// The handle is an alias of another.
    pub const HS_ALIAS: &str = "HS_ALIAS";
    /// Primary sites.
    pub const HS_PRIMARY: &str = "HS_PRIMARY";
    /// A group of admin identities.
    pub const HS_VLIST: &str = "HS_VLIST";
    /// A public key.
    pub const HS_PUBKEY: &str = "HS_PUBKEY";
    /// A secret key.
    pub const HS_SECKEY: &str = "HS_SECKEY";
    /// A URL.
    pub const URL: &str = "URL";
    /// An e-mail address.
    pub const EMAIL: &str = "EMAIL";
    /// A description.
    pub const DESC: &str = "DESC";
}

/// Permission bits of a value (RFC 3652 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permissions(pub u8);

impl Permissions {
    /// Administrators may read.
    pub const ADMIN_READ: u8 = 0x08;
    /// Administrators may write.
    pub const ADMIN_WRITE: u8 = 0x04;
    /// Anyone may read.
    pub const PUBLIC_READ: u8 = 0x02;
    /// Anyone may write.
    pub const PUBLIC_WRITE: u8 = 0x01;
    /// What a value gets unless it says otherwise: admin read and write,
    /// public read.
    pub const DEFAULT: Permissions = Permissions(0x0E);

    /// Whether an unauthenticated client may read the value.
    pub fn public_read(self) -> bool {
        self.0 & Self::PUBLIC_READ != 0
    }
}

impl Default for Permissions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a value's TTL is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TtlType(pub u8);

impl TtlType {
    /// The TTL is a number of seconds for which a cache may keep the value.
    pub const RELATIVE: TtlType = TtlType(0);
    /// The TTL is a Unix time after which the value expires.
    pub const ABSOLUTE: TtlType = TtlType(1);
}

impl Default for TtlType {
    fn default() -> Self {
        Self::RELATIVE
    }
}

/// A reference from a value to a value of another handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValueReference {
    /// The handle referred to.
    pub handle: String,
    /// The index of the value referred to (0 = the whole handle).
    pub index: u32,
}

/// One value of a handle record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleValue {
    /// Position of the value in its record, unique and positive.
    pub index: u32,
    /// The value's type, such as `URL`.
    pub value_type: String,
    /// The value's data, opaque to the protocol.
    pub data: Bytes,
    /// How `ttl` is read.
    pub ttl_type: TtlType,
    /// Time to live.
    pub ttl: u32,
    /// Who may read and write the value.
    pub permissions: Permissions,
    /// Unix time of the value's last change.
    pub timestamp: u32,
    /// References to other handles' values.
    pub references: Vec<ValueReference>,
}

impl HandleValue {
    /// A value with default TTL and permissions and no timestamp.
    pub fn new(index: u32, value_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            index,
            value_type: value_type.into(),
            data: data.into(),
            ttl_type: TtlType::RELATIVE,
            ttl: DEFAULT_TTL,
            permissions: Permissions::DEFAULT,
            timestamp: 0,
            references: Vec::new(),
        }
    }

    /// Whether the value's type is `ty`, or `ty` names a family the type is
    /// in: a request for type `HS_SITE` also matches `HS_SITE.PREFIX`, and a
    /// type ending in `.` matches every type starting with it. Comparison
    /// ignores ASCII case, as the reference server does.
    pub fn type_matches(&self, ty: &str) -> bool {
        type_matches(&self.value_type, ty)
    }

    /// Size of the binary encoding.
    pub fn encoded_len(&self) -> usize {
        4 + 4
            + 1
            + 4
            + 1
            + codec::bytes_len(self.value_type.len())
            + codec::bytes_len(self.data.len())
            + 4
            + self
                .references
                .iter()
                .map(|r| codec::bytes_len(r.handle.len()) + 4)
                .sum::<usize>()
    }

    /// Appends the binary encoding (RFC 3652 §3.1).
    pub fn encode<B: BufMut + ?Sized>(&self, out: &mut B) {
        out.put_u32(self.index);
        out.put_u32(self.timestamp);
        out.put_u8(self.ttl_type.0);
        out.put_u32(self.ttl);
        out.put_u8(self.permissions.0);
        codec::put_str(out, &self.value_type);
        codec::put_bytes(out, &self.data);
        codec::put_len(out, self.references.len());
        for r in &self.references {
            codec::put_str(out, &r.handle);
            out.put_u32(r.index);
        }
    }

    /// Reads one value.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let index = r.u32("value index")?;
        let timestamp = r.u32("value timestamp")?;
        let ttl_type = TtlType(r.u8("value ttl type")?);
        let ttl = r.u32("value ttl")?;
        let permissions = Permissions(r.u8("value permissions")?);
        let value_type = r.str("value type", MAX_TYPE_LEN)?.to_owned();
        let data = Bytes::copy_from_slice(r.byte_array("value data", MAX_VALUE_DATA)?);
        let n = r.count("reference count", MAX_REFERENCES, 8)?;
        let mut references = Vec::with_capacity(n);
        for _ in 0..n {
            let handle = r.str("reference handle", crate::MAX_HANDLE_LEN)?.to_owned();
            let index = r.u32("reference index")?;
            references.push(ValueReference { handle, index });
        }
        Ok(Self {
            index,
            value_type,
            data,
            ttl_type,
            ttl,
            permissions,
            timestamp,
            references,
        })
    }
}

/// The type-matching rule of [`HandleValue::type_matches`] on plain strings.
pub fn type_matches(value_type: &str, ty: &str) -> bool {
    if value_type.eq_ignore_ascii_case(ty) {
        return true;
    }
    let (vt, t) = (value_type.as_bytes(), ty.as_bytes());
    if t.last() == Some(&b'.') {
        return vt.len() >= t.len() && vt[..t.len()].eq_ignore_ascii_case(t);
    }
    vt.len() > t.len() && vt[t.len()] == b'.' && vt[..t.len()].eq_ignore_ascii_case(t)
}

/// Writes a list of values as `int4` count and the values.
pub fn encode_values<B: BufMut + ?Sized>(values: &[HandleValue], out: &mut B) {
    codec::put_len(out, values.len());
    for v in values {
        v.encode(out);
    }
}

/// Reads an `int4` count and that many values.
pub fn decode_values(r: &mut Reader<'_>) -> Result<Vec<HandleValue>, DecodeError> {
    let n = r.count("value count", MAX_VALUES, MIN_VALUE_LEN)?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(HandleValue::decode(r)?);
    }
    Ok(values)
}

/// Largest record, in bytes of its values on the wire, a node accepts by
/// default: a resolution reply carrying the whole record, with its
/// header, handle and a signature, stays far inside the protocol's
/// 256 KiB message limit.
pub const MAX_RECORD_BYTES: usize = 131_072;

/// The most `max_record_bytes` may be set to: the protocol's message limit
/// less room for the envelope, header, handle, value count and signature.
pub const RECORD_BYTES_CEILING: usize = 262_144 - 8192;

/// Bytes of a record's values on the wire (count and values).
pub fn record_len(values: &[HandleValue]) -> usize {
    4 + values.iter().map(HandleValue::encoded_len).sum::<usize>()
}

/// The one set of rules every write path applies to a record it creates or
/// replaces (import, HTTP, gRPC, native, escrow and sync alike, so that
/// what one node accepts every node accepts): at least one value, the
/// rules of [`validate_values`], and at most `max_bytes` on the wire.
pub fn validate_record(values: &[HandleValue], max_bytes: usize) -> Result<(), ValueError> {
    if values.is_empty() {
        return Err(ValueError::Empty);
    }
    validate_values(values)?;
    check_record_len(values, max_bytes)
}

/// Checks only the size rule of [`validate_record`].
pub fn check_record_len(values: &[HandleValue], max_bytes: usize) -> Result<(), ValueError> {
    let bytes = record_len(values);
    let max = max_bytes.min(RECORD_BYTES_CEILING);
    if bytes > max {
        return Err(ValueError::RecordTooLarge { bytes, max });
    }
    Ok(())
}

/// Why a set of values cannot form a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// An index is zero or above `i32::MAX`.
    #[error("value index {0} is out of range (1 to 2147483647)")]
    BadIndex(u32),
    /// Two values share an index.
    #[error("value index {0} appears more than once")]
    DuplicateIndex(u32),
    /// A type name is empty, too long or holds control characters.
    #[error("value {index} has an invalid type {value_type:?}")]
    BadType {
        /// The value's index.
        index: u32,
        /// The type found.
        value_type: String,
    },
    /// A record created or replaced with no value.
    #[error("at least one value is required")]
    Empty,
    /// The record is larger than the node accepts.
    #[error("the record has {bytes} bytes of values, more than the {max} this node accepts (every reply must fit one protocol message)")]
    RecordTooLarge {
        /// Its size on the wire.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Too many values.
    #[error("{0} values exceed the limit of 4096")]
    TooMany(usize),
    /// Data too large.
    #[error("value {0} has more than 262144 bytes of data")]
    TooLarge(u32),
    /// A typed value's data does not decode as its type requires.
    #[error("value {index} of type {value_type} is malformed: {source}")]
    Malformed {
        /// The value's index.
        index: u32,
        /// Its type.
        value_type: String,
        /// What is wrong.
        source: DecodeError,
    },
}

/// Checks values before they are stored: indexes positive and unique, type
/// names sane, sizes bounded, and the data of typed values (HS_ADMIN,
/// HS_VLIST, HS_SITE) well formed.
pub fn validate_values(values: &[HandleValue]) -> Result<(), ValueError> {
    if values.len() > MAX_VALUES {
        return Err(ValueError::TooMany(values.len()));
    }
    let mut seen = std::collections::HashSet::with_capacity(values.len());
    for v in values {
        if v.index == 0 || v.index > i32::MAX as u32 {
            return Err(ValueError::BadIndex(v.index));
        }
        if !seen.insert(v.index) {
            return Err(ValueError::DuplicateIndex(v.index));
        }
        if v.value_type.is_empty()
            || v.value_type.len() > MAX_TYPE_LEN
            || v.value_type.chars().any(char::is_control)
        {
            return Err(ValueError::BadType {
                index: v.index,
                value_type: v.value_type.clone(),
            });
        }
        if v.data.len() > MAX_VALUE_DATA {
            return Err(ValueError::TooLarge(v.index));
        }
        crate::typed::check_typed(v).map_err(|source| ValueError::Malformed {
            index: v.index,
            value_type: v.value_type.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_records() {
        assert_eq!(
            validate_record(&[], MAX_RECORD_BYTES),
            Err(ValueError::Empty)
        );
        let ok = [HandleValue::new(1, "URL", "https://a.example/")];
        assert!(validate_record(&ok, MAX_RECORD_BYTES).is_ok());
        let big = [HandleValue::new(1, "DESC", vec![b'x'; 200_000])];
        assert!(matches!(
            validate_record(&big, MAX_RECORD_BYTES),
            Err(ValueError::RecordTooLarge {
                max: MAX_RECORD_BYTES,
                ..
            })
        ));
        // The limit cannot be raised past what one message carries.
        let huge: Vec<HandleValue> = (1..=2)
            .map(|i| HandleValue::new(i, "DESC", vec![b'x'; 130_000]))
            .collect();
        assert!(matches!(
            validate_record(&huge, usize::MAX),
            Err(ValueError::RecordTooLarge {
                max: RECORD_BYTES_CEILING,
                ..
            })
        ));
        assert_eq!(record_len(&ok), 4 + ok[0].encoded_len());
    }

    #[test]
    fn golden_value_encoding() {
        let mut v = HandleValue::new(1, "URL", &b"http://a"[..]);
        v.timestamp = 0x01020304;
        v.references.push(ValueReference {
            handle: "0.NA/1".into(),
            index: 7,
        });
        let mut out = Vec::new();
        v.encode(&mut out);
        let expected: &[u8] = &[
            0, 0, 0, 1, // index
            1, 2, 3, 4, // timestamp
            0, // ttl type relative
            0, 1, 0x51, 0x80, // ttl 86400
            0x0E, // permissions
            0, 0, 0, 3, b'U', b'R', b'L', // type
            0, 0, 0, 8, b'h', b't', b't', b'p', b':', b'/', b'/', b'a', // data
            0, 0, 0, 1, // one reference
            0, 0, 0, 6, b'0', b'.', b'N', b'A', b'/', b'1', 0, 0, 0, 7,
        ];
        assert_eq!(out, expected);
        assert_eq!(v.encoded_len(), expected.len());
        let mut r = Reader::new(&out);
        assert_eq!(HandleValue::decode(&mut r).unwrap(), v);
        r.finish("value").unwrap();
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        let mut v = HandleValue::new(3, "DESC", &b"hello"[..]);
        v.references.push(ValueReference {
            handle: "x/y".into(),
            index: 1,
        });
        let mut out = Vec::new();
        encode_values(&[v], &mut out);
        for n in 0..out.len() {
            assert!(decode_values(&mut Reader::new(&out[..n])).is_err(), "{n}");
        }
    }

    #[test]
    fn type_matching() {
        let v = HandleValue::new(1, "HS_SITE.PREFIX", Bytes::new());
        assert!(v.type_matches("HS_SITE"));
        assert!(v.type_matches("hs_site.prefix"));
        assert!(v.type_matches("HS_SITE."));
        assert!(!v.type_matches("HS_SIT"));
        assert!(!HandleValue::new(1, "URLX", Bytes::new()).type_matches("URL"));
    }

    #[test]
    fn validation() {
        let ok = [
            HandleValue::new(1, "URL", "x"),
            HandleValue::new(2, "DESC", "y"),
        ];
        assert!(validate_values(&ok).is_ok());
        let dup = [
            HandleValue::new(1, "URL", "x"),
            HandleValue::new(1, "DESC", "y"),
        ];
        assert_eq!(validate_values(&dup), Err(ValueError::DuplicateIndex(1)));
        assert_eq!(
            validate_values(&[HandleValue::new(0, "URL", "x")]),
            Err(ValueError::BadIndex(0))
        );
        assert!(validate_values(&[HandleValue::new(1, "", "x")]).is_err());
        assert!(matches!(
            validate_values(&[HandleValue::new(100, "HS_ADMIN", "x")]),
            Err(ValueError::Malformed { index: 100, .. })
        ));
    }
}
