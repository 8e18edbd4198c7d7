//! How the values of a record appear as DNS records.
//!
//! Only publicly readable values are shown. Each view is one RRset whose
//! records follow the values' index order and share the smallest TTL of
//! the values shown (RFC 2181 §5.2):
//!
//! - **NAPTR** (RFC 3403, X.672 §6.3.2): one record per `URL` value, order
//!   100, preference the value's index, flags `U`, service `ORS+UINF`
//!   (the X.672 URI service), regexp `!^.*$!<url>!`, replacement `.`.
//!   A URL whose regexp would exceed 255 bytes is left out of this view.
//! - **URI** (RFC 7553): one record per `URL` value, priority the value's
//!   index, weight 1, target the URL.
//! - **TXT** (RFC 1035 §3.3.14, attribute form of RFC 1464): one record per
//!   value whose data is text, `<type>=<data>`, split into strings of at
//!   most 255 bytes.

use idres_model::codec::Reader;
use idres_model::value::{types, MAX_TYPE_LEN, MAX_VALUE_DATA};
use idres_store::RecordBytes;

use crate::response::{Response, Section};
use crate::wire::{self, rtype};

/// The NAPTR service field: ORS (X.672) URI information.
pub const ORS_URI_SERVICE: &[u8] = b"ORS+UINF";
/// The NAPTR order of the URL records.
pub const NAPTR_ORDER: u16 = 100;

/// One publicly readable value, located in the stored record.
#[derive(Debug, Clone, Copy)]
pub struct Value<'a> {
    /// The value's index.
    pub index: u32,
    /// The value's type.
    pub value_type: &'a str,
    /// The value's data.
    pub data: &'a [u8],
    /// Seconds the value may be cached from now.
    pub ttl: u32,
}

impl Value<'_> {
    /// The index as a 16-bit preference or priority.
    fn rank(&self) -> u16 {
        u16::try_from(self.index).unwrap_or(u16::MAX)
    }

    fn is_url(&self) -> bool {
        self.value_type.eq_ignore_ascii_case(types::URL) && !self.data.is_empty()
    }
}

/// Reads the fields of one encoded value (RFC 3652 §3.1).
fn parse_value(bytes: &[u8], now: u32) -> Option<Value<'_>> {
    let mut r = Reader::new(bytes);
    let index = r.u32("value index").ok()?;
    r.u32("value timestamp").ok()?;
    let ttl_type = r.u8("value ttl type").ok()?;
    let ttl = r.u32("value ttl").ok()?;
    let permissions = r.u8("value permissions").ok()?;
    let value_type = r.str("value type", MAX_TYPE_LEN).ok()?;
    let data = r.byte_array("value data", MAX_VALUE_DATA).ok()?;
    if permissions & idres_model::Permissions::PUBLIC_READ == 0 {
        return None;
    }
    // An absolute TTL is the Unix time the value expires.
    let ttl = if ttl_type == idres_model::TtlType::ABSOLUTE.0 {
        ttl.saturating_sub(now)
    } else {
        ttl
    };
    Some(Value {
        index,
        value_type,
        data,
        ttl,
    })
}

/// The publicly readable values of a record, in stored order. A record
/// that does not decode yields the values before the damage.
pub fn public_values(rec: &RecordBytes, now: u32) -> impl Iterator<Item = Value<'_>> {
    rec.raw_values()
        .into_iter()
        .flatten()
        .map_while(Result::ok)
        .filter_map(move |v| parse_value(v.bytes, now))
}

/// The data of the first public `HS_ALIAS` value, if any.
pub fn alias_target(rec: &RecordBytes, now: u32) -> Option<&str> {
    public_values(rec, now)
        .find(|v| v.value_type.eq_ignore_ascii_case(types::HS_ALIAS))
        .and_then(|v| std::str::from_utf8(v.data).ok())
}

/// The views a query type asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// NAPTR records.
    Naptr,
    /// URI records.
    Uri,
    /// TXT records.
    Txt,
}

impl View {
    /// The record type of the view.
    pub fn rtype(self) -> u16 {
        match self {
            View::Naptr => rtype::NAPTR,
            View::Uri => rtype::URI,
            View::Txt => rtype::TXT,
        }
    }

    fn shows(self, v: &Value<'_>) -> bool {
        match self {
            View::Naptr => v.is_url() && naptr_delimiter(v.data).is_some(),
            View::Uri => v.is_url(),
            View::Txt => is_text(v.data) && txt_len(v) <= wire::MAX_MESSAGE,
        }
    }
}

/// Data that reads as text: UTF-8 without control characters.
fn is_text(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|s| !s.chars().any(char::is_control))
}

/// The first delimiter that does not occur in `url`, if the regexp built
/// with it fits one character-string.
fn naptr_delimiter(url: &[u8]) -> Option<u8> {
    let backslashes = url.iter().filter(|&&b| b == b'\\').count();
    if 6 + url.len() + backslashes > 255 {
        return None;
    }
    [b'!', b'|', b'~', b'^', b'#', b'@']
        .into_iter()
        .find(|d| !url.contains(d))
}

/// The TXT attribute: the type with `` ` ``, `=` and space escaped by a
/// backquote (RFC 1464 §2).
fn txt_attribute(value_type: &str, out: &mut Vec<u8>) {
    for b in value_type.bytes() {
        if matches!(b, b'`' | b'=' | b' ') {
            out.push(b'`');
        }
        out.push(b);
    }
}

fn txt_len(v: &Value<'_>) -> usize {
    let text = v.value_type.len() * 2 + 1 + v.data.len();
    text + text.div_ceil(255)
}

/// Writes the view `view` of the record `rec` into `section`, owned by the
/// name at `owner`. Returns how many records the view had.
pub fn write_view(
    resp: &mut Response<'_>,
    section: Section,
    owner: usize,
    view: View,
    rec: &RecordBytes,
    now: u32,
) -> usize {
    let Some(ttl) = public_values(rec, now)
        .filter(|v| view.shows(v))
        .map(|v| v.ttl)
        .min()
    else {
        return 0;
    };
    let mut n = 0;
    let mut scratch = Vec::new();
    for v in public_values(rec, now).filter(|v| view.shows(v)) {
        n += 1;
        resp.record(section, |out| {
            let at = wire::begin_record(out, owner, view.rtype(), ttl);
            match view {
                View::Naptr => {
                    let Some(d) = naptr_delimiter(v.data) else {
                        return false;
                    };
                    wire::put_u16(out, NAPTR_ORDER);
                    wire::put_u16(out, v.rank());
                    wire::put_char_string(out, b"U");
                    wire::put_char_string(out, ORS_URI_SERVICE);
                    scratch.clear();
                    scratch.extend_from_slice(&[d, b'^', b'.', b'*', b'$', d]);
                    for &b in v.data {
                        if b == b'\\' {
                            scratch.push(b'\\');
                        }
                        scratch.push(b);
                    }
                    scratch.push(d);
                    wire::put_char_string(out, &scratch);
                    out.push(0);
                }
                View::Uri => {
                    wire::put_u16(out, v.rank());
                    wire::put_u16(out, 1);
                    out.extend_from_slice(v.data);
                }
                View::Txt => {
                    scratch.clear();
                    txt_attribute(v.value_type, &mut scratch);
                    scratch.push(b'=');
                    scratch.extend_from_slice(v.data);
                    for chunk in scratch.chunks(255) {
                        wire::put_char_string(out, chunk);
                    }
                }
            }
            wire::end_record(out, at)
        });
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use idres_model::{HandleValue, Permissions, TtlType};

    fn record(values: &[HandleValue]) -> RecordBytes {
        RecordBytes::from_stored(RecordBytes::encode(values).into())
    }

    #[test]
    fn only_public_values_with_live_ttls() {
        let mut private = HandleValue::new(2, "URL", "https://secret");
        private.permissions = Permissions(Permissions::ADMIN_READ);
        let mut absolute = HandleValue::new(3, "DESC", "soon gone");
        absolute.ttl_type = TtlType::ABSOLUTE;
        absolute.ttl = 1_000_100;
        let rec = record(&[HandleValue::new(1, "URL", "https://a"), private, absolute]);
        let seen: Vec<(u32, u32)> = public_values(&rec, 1_000_000)
            .map(|v| (v.index, v.ttl))
            .collect();
        assert_eq!(seen, [(1, 86_400), (3, 100)]);
        assert_eq!(public_values(&rec, 2_000_000).nth(1).unwrap().ttl, 0);
    }

    #[test]
    fn delimiters_and_attributes() {
        assert_eq!(naptr_delimiter(b"https://a/b"), Some(b'!'));
        assert_eq!(naptr_delimiter(b"https://a/!"), Some(b'|'));
        assert_eq!(naptr_delimiter(&[b'x'; 249]), Some(b'!'));
        assert_eq!(naptr_delimiter(&[b'x'; 250]), None);
        let mut out = Vec::new();
        txt_attribute("a=b c`", &mut out);
        assert_eq!(out, b"a`=b` c``");
        assert!(is_text("网址 https://例子.cn".as_bytes()));
        assert!(!is_text(b"a\nb"));
        assert!(!is_text(&[0xff]));
    }

    #[test]
    fn aliases() {
        let rec = record(&[
            HandleValue::new(1, "DESC", "x"),
            HandleValue::new(2, "hs_alias", "88.1/target"),
        ]);
        assert_eq!(alias_target(&rec, 0), Some("88.1/target"));
        assert_eq!(alias_target(&record(&[]), 0), None);
    }
}
