//! Handles: `prefix/suffix` identifiers with case-insensitive prefixes.
//!
//! A handle such as `88.118.8/JXDY2106023` is a dotted hierarchical prefix
//! (RFC 3650 §3), a slash, and a suffix the prefix owner chooses. Prefixes
//! compare without regard to ASCII case; suffixes are kept as written. A
//! prefix is described by its prefix record `0.NA/<prefix>` (RFC 3651 §3),
//! whose suffix is itself a prefix and so is case-insensitive too.
//!
//! [`Handle::key`] is the canonical form used for storage and comparison;
//! [`Handle::as_str`] keeps the spelling the client used, which replies echo.

use std::fmt;

/// Longest handle accepted, in bytes of UTF-8.
pub const MAX_HANDLE_LEN: usize = 1024;
/// Most dot-separated segments in a prefix.
pub const MAX_PREFIX_SEGMENTS: usize = 32;
/// The prefix under which prefix records live.
pub const PREFIX_RECORD_PREFIX: &str = "0.NA";

/// Why a string is not a valid handle or prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?} at byte {position}: {reason}")]
pub struct IdentifierError {
    /// What was being parsed ("handle", "prefix", "OID").
    pub what: &'static str,
    /// The input, shortened to 80 characters.
    pub input: String,
    /// Byte offset of the problem in the input.
    pub position: usize,
    /// What is wrong.
    pub reason: &'static str,
}

impl IdentifierError {
    pub(crate) fn new(
        what: &'static str,
        input: &str,
        position: usize,
        reason: &'static str,
    ) -> Self {
        let input = if input.chars().count() > 80 {
            let mut s: String = input.chars().take(80).collect();
            s.push('…');
            s
        } else {
            input.to_owned()
        };
        Self {
            what,
            input,
            position,
            reason,
        }
    }
}

/// A validated prefix such as `88.118.8`, stored in canonical (upper) case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix(String);

impl Prefix {
    /// Parses and canonicalises a prefix.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        check_prefix(s, 0, s, "prefix")?;
        Ok(Self(s.to_ascii_uppercase()))
    }

    /// The canonical spelling.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix one level up (`88.118` for `88.118.8`), if any.
    pub fn parent(&self) -> Option<Prefix> {
        self.0.rfind('.').map(|i| Prefix(self.0[..i].to_owned()))
    }

    /// This prefix and each prefix above it, longest first.
    pub fn ancestors(&self) -> impl Iterator<Item = Prefix> {
        std::iter::successors(Some(self.clone()), Prefix::parent)
    }

    /// Whether `other` is this prefix or derived from it.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.0 == self.0
            || (other.0.len() > self.0.len()
                && other.0.starts_with(&self.0)
                && other.0.as_bytes()[self.0.len()] == b'.')
    }

    /// The handle of this prefix's record, `0.NA/<prefix>`.
    pub fn record_handle(&self) -> Handle {
        Handle::from_canonical_parts(PREFIX_RECORD_PREFIX, &self.0)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated handle. Keeps the spelling it was parsed from and its
/// canonical key.
#[derive(Debug, Clone)]
pub struct Handle {
    raw: String,
    key: String,
    slash: usize,
}

impl Handle {
    /// Parses a handle `prefix/suffix`.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        if s.is_empty() {
            return Err(IdentifierError::new("handle", s, 0, "empty"));
        }
        if s.len() > MAX_HANDLE_LEN {
            return Err(IdentifierError::new(
                "handle",
                s,
                MAX_HANDLE_LEN,
                "longer than 1024 bytes",
            ));
        }
        let Some(slash) = s.find('/') else {
            return Err(IdentifierError::new(
                "handle",
                s,
                s.len(),
                "no '/' between prefix and suffix",
            ));
        };
        let (prefix, suffix) = (&s[..slash], &s[slash + 1..]);
        check_prefix(prefix, 0, s, "handle")?;
        if suffix.is_empty() {
            return Err(IdentifierError::new("handle", s, slash + 1, "empty suffix"));
        }
        if let Some((i, _)) = s[slash + 1..].char_indices().find(|(_, c)| c.is_control()) {
            return Err(IdentifierError::new(
                "handle",
                s,
                slash + 1 + i,
                "control character in suffix",
            ));
        }
        let is_prefix_record = prefix.eq_ignore_ascii_case(PREFIX_RECORD_PREFIX);
        if is_prefix_record {
            check_prefix(suffix, slash + 1, s, "handle")?;
        }
        let mut key = String::with_capacity(s.len());
        key.push_str(&prefix.to_ascii_uppercase());
        key.push('/');
        if is_prefix_record {
            key.push_str(&suffix.to_ascii_uppercase());
        } else {
            key.push_str(suffix);
        }
        Ok(Self {
            raw: s.to_owned(),
            key,
            slash,
        })
    }

    pub(crate) fn from_canonical_parts(prefix: &str, suffix: &str) -> Self {
        let raw = format!("{prefix}/{suffix}");
        Self {
            key: raw.clone(),
            slash: prefix.len(),
            raw,
        }
    }

    /// The handle as the client spelled it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The canonical form: prefix upper-cased, suffix as written (upper-cased
    /// too for prefix records). Two handles are the same iff their keys are.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The prefix as spelled.
    pub fn prefix_str(&self) -> &str {
        &self.raw[..self.slash]
    }

    /// The suffix as spelled.
    pub fn suffix(&self) -> &str {
        &self.raw[self.slash + 1..]
    }

    /// The canonical prefix.
    pub fn prefix(&self) -> Prefix {
        Prefix(self.key[..self.slash].to_owned())
    }

    /// Whether this is a prefix record `0.NA/<prefix>`.
    pub fn is_prefix_record(&self) -> bool {
        &self.key[..self.slash] == PREFIX_RECORD_PREFIX
    }

    /// For a prefix record `0.NA/88.118.8`, the prefix it describes.
    pub fn described_prefix(&self) -> Option<Prefix> {
        self.is_prefix_record()
            .then(|| Prefix(self.key[self.slash + 1..].to_owned()))
    }
}

impl PartialEq for Handle {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Handle {}

impl std::hash::Hash for Handle {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for Handle {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Validates a prefix that starts at `offset` within `whole`.
fn check_prefix(
    prefix: &str,
    offset: usize,
    whole: &str,
    what: &'static str,
) -> Result<(), IdentifierError> {
    if prefix.is_empty() {
        return Err(IdentifierError::new(what, whole, offset, "empty prefix"));
    }
    if prefix.len() > MAX_HANDLE_LEN {
        return Err(IdentifierError::new(
            what,
            whole,
            offset,
            "prefix longer than 1024 bytes",
        ));
    }
    let mut segments = 0;
    let mut seg_start = 0;
    for (i, c) in prefix.char_indices() {
        match c {
            '.' => {
                if i == seg_start {
                    return Err(IdentifierError::new(
                        what,
                        whole,
                        offset + i,
                        "empty prefix segment",
                    ));
                }
                segments += 1;
                seg_start = i + 1;
            }
            c if c.is_control() || c.is_whitespace() => {
                return Err(IdentifierError::new(
                    what,
                    whole,
                    offset + i,
                    "whitespace or control character in prefix",
                ));
            }
            '/' => {
                return Err(IdentifierError::new(
                    what,
                    whole,
                    offset + i,
                    "'/' in prefix",
                ));
            }
            _ => {}
        }
    }
    if seg_start == prefix.len() {
        return Err(IdentifierError::new(
            what,
            whole,
            offset + prefix.len(),
            "prefix ends with '.'",
        ));
    }
    if segments + 1 > MAX_PREFIX_SEGMENTS {
        return Err(IdentifierError::new(
            what,
            whole,
            offset,
            "more than 32 prefix segments",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_case_insensitive_suffixes_not() {
        let a = Handle::parse("21.t11148/Abc").unwrap();
        let b = Handle::parse("21.T11148/Abc").unwrap();
        let c = Handle::parse("21.T11148/abc").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_str(), "21.t11148/Abc");
        assert_eq!(a.key(), "21.T11148/Abc");
        assert_eq!(a.prefix().as_str(), "21.T11148");
    }

    #[test]
    fn prefix_records_canonicalise_the_suffix() {
        let h = Handle::parse("0.na/21.t11148").unwrap();
        assert!(h.is_prefix_record());
        assert_eq!(h.key(), "0.NA/21.T11148");
        assert_eq!(h.described_prefix().unwrap().as_str(), "21.T11148");
        assert_eq!(
            Prefix::parse("21.t11148").unwrap().record_handle(),
            Handle::parse("0.NA/21.T11148").unwrap()
        );
    }

    #[test]
    fn derived_prefixes() {
        let p = Prefix::parse("88.118.8").unwrap();
        let chain: Vec<String> = p.ancestors().map(|p| p.to_string()).collect();
        assert_eq!(chain, ["88.118.8", "88.118", "88"]);
        assert!(Prefix::parse("88.118").unwrap().covers(&p));
        assert!(!Prefix::parse("88.11").unwrap().covers(&p));
        assert!(p.covers(&p));
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = Handle::parse("88.118.8").unwrap_err();
        assert_eq!(e.reason, "no '/' between prefix and suffix");
        let e = Handle::parse("88..8/x").unwrap_err();
        assert_eq!((e.position, e.reason), (3, "empty prefix segment"));
        let e = Handle::parse("88.1 8/x").unwrap_err();
        assert_eq!(e.position, 4);
        let e = Handle::parse("88/").unwrap_err();
        assert_eq!(e.reason, "empty suffix");
        let e = Handle::parse("/x").unwrap_err();
        assert_eq!(e.reason, "empty prefix");
        let e = Handle::parse("88/a\u{7}b").unwrap_err();
        assert_eq!(e.position, 4);
        assert!(Handle::parse(&format!("88/{}", "x".repeat(1100))).is_err());
        let e = Handle::parse("0.NA/88.").unwrap_err();
        assert_eq!(e.reason, "prefix ends with '.'");
        assert!(e.to_string().contains("at byte 8"));
    }

    #[test]
    fn suffix_may_contain_slashes() {
        let h = Handle::parse("88.118.8/a/b/c").unwrap();
        assert_eq!(h.suffix(), "a/b/c");
    }
}
