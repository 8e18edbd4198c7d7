//! Object identifiers (ITU-T X.660) and their places in idres.
//!
//! An OID such as `1.2.156.3001.1` is a path of integer arcs in the
//! international OID tree. idres keeps an OID's record in the same store as
//! handles, as the handle `OID/<oid>` (see [`Oid::to_handle`]), so the change
//! log, export and import, replication and the Handle protocol carry OIDs
//! like any other record.
//!
//! The OID Resolution System (ITU-T X.672 | ISO/IEC 29168-1, GB/T 35299)
//! finds an OID's information through DNS: the arcs are reversed and placed
//! as labels under an ORS zone, so that `1.2.156.3001.1` under `oid-res.org.`
//! is the name `1.3001.156.2.1.oid-res.org.` ([`Oid::to_dns_name`],
//! [`Oid::from_dns_name`]).
//!
//! Arcs are kept as decimal strings: X.660 arcs are unbounded integers (the
//! UUID arc `2.25` holds 128-bit numbers), so they are bounded here by digit
//! count, not by a machine integer.

use std::fmt;

use crate::handle::{Handle, IdentifierError};

/// The handle prefix under which OID records are stored.
pub const OID_PREFIX: &str = "OID";
/// The ORS zone of X.672.
pub const DEFAULT_ORS_ZONE: &str = "oid-res.org.";
/// Most arcs in one OID.
pub const MAX_OID_ARCS: usize = 128;
/// Most decimal digits in one arc (enough for a 128-bit UUID arc).
pub const MAX_ARC_DIGITS: usize = 39;
/// The value type that links a handle to an OID: its data is the OID.
pub const OID_VALUE_TYPE: &str = "OID";

/// A validated object identifier in canonical dotted-decimal form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Oid(String);

impl Oid {
    /// Parses a dotted-decimal OID: integer arcs without leading zeros,
    /// the first arc 0, 1 or 2, the second at most 39 under 0 and 1, at
    /// most [`MAX_OID_ARCS`] arcs of at most [`MAX_ARC_DIGITS`] digits.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        let mut arcs = 0;
        let mut start = 0;
        for arc in s.split('.') {
            check_arc(arc, arcs, s, start)?;
            arcs += 1;
            if arcs > MAX_OID_ARCS {
                return Err(IdentifierError::new("OID", s, start, "more than 128 arcs"));
            }
            start += arc.len() + 1;
        }
        Ok(Self(s.to_owned()))
    }

    /// Builds an OID from the labels of a DNS name below its ORS zone, in
    /// the order the name has them (leaf first): `["1", "3001", "156", "2",
    /// "1"]` is `1.2.156.3001.1`. Each label must be one arc.
    pub fn from_dns_labels<'a, I>(labels: I) -> Result<Self, IdentifierError>
    where
        I: DoubleEndedIterator<Item = &'a [u8]>,
    {
        let mut s = String::with_capacity(64);
        for (i, label) in labels.rev().enumerate() {
            if i > 0 {
                s.push('.');
            }
            if i >= MAX_OID_ARCS {
                return Err(IdentifierError::new(
                    "OID",
                    &s,
                    s.len(),
                    "more than 128 arcs",
                ));
            }
            let start = s.len();
            match std::str::from_utf8(label) {
                Ok(l) => s.push_str(l),
                Err(_) => {
                    return Err(IdentifierError::new(
                        "OID",
                        &s,
                        start,
                        "arc is not a decimal number",
                    ))
                }
            }
            check_arc(&s[start..], i, &s, start)?;
        }
        if s.is_empty() {
            return Err(IdentifierError::new("OID", &s, 0, "empty"));
        }
        Ok(Self(s))
    }

    /// Parses the DNS name of an OID under `zone` (both absolute or not;
    /// the zone compares without regard to ASCII case).
    pub fn from_dns_name(name: &str, zone: &str) -> Result<Self, IdentifierError> {
        let name_t = name.strip_suffix('.').unwrap_or(name);
        let zone_t = zone.strip_suffix('.').unwrap_or(zone);
        let below = if zone_t.is_empty() {
            Some(name_t)
        } else {
            name_t
                .len()
                .checked_sub(zone_t.len() + 1)
                .filter(|&cut| {
                    name_t.as_bytes().get(cut) == Some(&b'.')
                        && name_t[cut + 1..].eq_ignore_ascii_case(zone_t)
                })
                .map(|cut| &name_t[..cut])
        };
        match below {
            Some(b) if !b.is_empty() => Self::from_dns_labels(b.split('.').map(str::as_bytes)),
            _ => Err(IdentifierError::new(
                "OID DNS name",
                name,
                0,
                "not a name below the ORS zone",
            )),
        }
    }

    /// The canonical dotted-decimal form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The arcs, root first.
    pub fn arcs(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.0.split('.')
    }

    /// The handle under which the OID's record is stored: `OID/<oid>`.
    pub fn to_handle(&self) -> Handle {
        Handle::from_canonical_parts(OID_PREFIX, &self.0)
    }

    /// The OID whose record is the handle `h`, if `h` is an OID record.
    pub fn from_handle(h: &Handle) -> Option<Self> {
        if h.prefix_str().eq_ignore_ascii_case(OID_PREFIX) {
            Self::parse(h.suffix()).ok()
        } else {
            None
        }
    }

    /// The DNS name of the OID under the ORS `zone`: the arcs reversed,
    /// then the zone, as an absolute name (`1.3001.156.2.1.oid-res.org.`).
    pub fn to_dns_name(&self, zone: &str) -> String {
        let zone = zone.strip_suffix('.').unwrap_or(zone);
        let mut out = String::with_capacity(self.0.len() + zone.len() + 2);
        for (i, arc) in self.arcs().rev().enumerate() {
            if i > 0 {
                out.push('.');
            }
            out.push_str(arc);
        }
        if !zone.is_empty() {
            out.push('.');
            out.push_str(zone);
        }
        out.push('.');
        out
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Oid {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Checks arc number `n` (0-based) of `whole`, found at byte `at`.
fn check_arc(arc: &str, n: usize, whole: &str, at: usize) -> Result<(), IdentifierError> {
    let err = |pos: usize, reason| Err(IdentifierError::new("OID", whole, pos, reason));
    if arc.is_empty() {
        return err(
            at,
            if whole.is_empty() {
                "empty"
            } else {
                "empty arc"
            },
        );
    }
    if let Some(i) = arc.bytes().position(|b| !b.is_ascii_digit()) {
        return err(at + i, "arc is not a decimal number");
    }
    if arc.len() > 1 && arc.starts_with('0') {
        return err(at, "arc has a leading zero");
    }
    if arc.len() > MAX_ARC_DIGITS {
        return err(at, "arc longer than 39 digits");
    }
    match n {
        0 if !matches!(arc, "0" | "1" | "2") => err(at, "first arc is not 0, 1 or 2"),
        1 if whole.starts_with(['0', '1']) && (arc.len() > 2 || arc > "39" && arc.len() == 2) => {
            err(at, "second arc above 39 under arc 0 or 1")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_oids() {
        for s in [
            "0",
            "1",
            "2",
            "1.2.156.3001.1",
            "2.16.156",
            "0.39",
            "1.39.5",
            "2.999.1",
        ] {
            assert_eq!(Oid::parse(s).unwrap().as_str(), s);
        }
        let uuid = "2.25.329800735698586629295641978511506172918";
        assert!(Oid::parse(uuid).is_ok());
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "empty"),
            ("3.1", 0, "first arc is not 0, 1 or 2"),
            ("1.40", 2, "second arc above 39 under arc 0 or 1"),
            ("0.100", 2, "second arc above 39 under arc 0 or 1"),
            ("1.2..3", 4, "empty arc"),
            ("1.2.", 4, "empty arc"),
            (".1", 0, "empty arc"),
            ("1.2.0156", 4, "arc has a leading zero"),
            ("1.2.15a6", 6, "arc is not a decimal number"),
            ("1.2.-1", 4, "arc is not a decimal number"),
            ("1.2.+1", 4, "arc is not a decimal number"),
            ("01.2", 0, "arc has a leading zero"),
        ];
        for (input, pos, reason) in cases {
            let e = Oid::parse(input).unwrap_err();
            assert_eq!((e.position, e.reason), (*pos, *reason), "{input:?}");
            assert_eq!(e.what, "OID");
        }
        let long = format!("2.{}", "1".repeat(40));
        assert_eq!(
            Oid::parse(&long).unwrap_err().reason,
            "arc longer than 39 digits"
        );
        let many = format!("1{}", ".1".repeat(128));
        assert_eq!(Oid::parse(&many).unwrap_err().reason, "more than 128 arcs");
        assert!(Oid::parse(&format!("1{}", ".1".repeat(127))).is_ok());
        assert!(Oid::parse("2.40").is_ok());
    }

    #[test]
    fn handle_mapping() {
        let oid = Oid::parse("1.2.156.3001.1").unwrap();
        let h = oid.to_handle();
        assert_eq!(h.key(), "OID/1.2.156.3001.1");
        assert_eq!(h, Handle::parse("oid/1.2.156.3001.1").unwrap());
        assert_eq!(Oid::from_handle(&h), Some(oid));
        assert_eq!(Oid::from_handle(&Handle::parse("88.1/1.2").unwrap()), None);
        assert_eq!(Oid::from_handle(&Handle::parse("OID/x").unwrap()), None);
    }

    #[test]
    fn dns_mapping() {
        let oid = Oid::parse("1.2.156.3001.1").unwrap();
        assert_eq!(
            oid.to_dns_name(DEFAULT_ORS_ZONE),
            "1.3001.156.2.1.oid-res.org."
        );
        assert_eq!(
            oid.to_dns_name("oid-res.org"),
            "1.3001.156.2.1.oid-res.org."
        );
        let issue = Oid::parse("2.16.156.101818.102.1").unwrap();
        assert_eq!(
            issue.to_dns_name("oid-res.org."),
            "1.102.101818.156.16.2.oid-res.org."
        );
        for name in ["1.3001.156.2.1.oid-res.org.", "1.3001.156.2.1.OID-RES.org"] {
            assert_eq!(Oid::from_dns_name(name, DEFAULT_ORS_ZONE).unwrap(), oid);
        }
        for name in [
            "oid-res.org.",
            "1.2.example.org.",
            "1.2.xoid-res.org.",
            "x.1.oid-res.org.",
        ] {
            assert!(
                Oid::from_dns_name(name, DEFAULT_ORS_ZONE).is_err(),
                "{name}"
            );
        }
        let e = Oid::from_dns_name("1.40.1.oid-res.org.", DEFAULT_ORS_ZONE).unwrap_err();
        assert_eq!(e.reason, "second arc above 39 under arc 0 or 1");
        let labels: Vec<&[u8]> = vec![b"1", b"3001", b"156", b"2", b"1"];
        assert_eq!(Oid::from_dns_labels(labels.into_iter()).unwrap(), oid);
        assert!(Oid::from_dns_labels(std::iter::empty()).is_err());
        assert!(Oid::from_dns_labels([&[0xffu8][..]].into_iter()).is_err());
    }
}
