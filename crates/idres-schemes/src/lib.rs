//! Identifier schemes of idres and the links between them (标识互解).
//!
//! [`Schemes`] recognises an identifier of any scheme from its syntax,
//! validates it, gives its canonical form, and names the link keys it
//! resolves through. A record links itself to identifiers of other schemes
//! with typed values (`GS1.GTIN`, `GS1.DL`, `ECODE`, `NIOT`, `OID`, or the
//! upper-cased name of a configured scheme such as `CID`); the store keeps
//! an index from each link key to its record.
//!
//! Link keys are `scheme:canonical`: `gs1:01/09521234543213/10/ABC/21/7`,
//! `ecode:10001123456789`, `niot:…`, `oid:1.2.156.3001`, `cid:…`. A GS1 key
//! with qualifiers resolves by walking up: serial, then lot, then the GTIN
//! alone. No I/O happens here.

#![forbid(unsafe_code)]

pub mod config;
pub mod ecode;
pub mod gs1;
pub mod niot;
pub mod resolver;

use std::sync::Arc;

pub use config::{CustomScheme, SchemesConfig};
pub use gs1::{Gs1, Gs1Error, Gs1Id};

/// Longest identifier taken, in bytes.
pub const MAX_ID_LEN: usize = 2048;

/// Value type of a resolver link of the GS1 resolver (JSON data).
pub const GS1_LINK_TYPE: &str = "GS1.LINK";

/// Value types that link a record to a GS1 identifier.
pub const GS1_VALUE_TYPES: &[&str] = &[
    "GS1", "GS1.GTIN", "GS1.DL", "GS1.SSCC", "GS1.GLN", "GS1.EPC",
];

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemeError {
    /// Too long to be read.
    #[error("the identifier has {0} bytes; at most {MAX_ID_LEN} are taken")]
    TooLong(usize),
    /// Empty.
    #[error("the identifier is empty")]
    Empty,
    /// A GS1 identifier that breaks the GS1 rules.
    #[error("GS1: {0}")]
    Gs1(#[from] Gs1Error),
    /// An Ecode that breaks the version table.
    #[error("Ecode: {0}")]
    Ecode(String),
    /// An NIoT code that no rule takes.
    #[error("NIoT: {0}")]
    Niot(String),
    /// An identifier of a configured scheme that does not match it.
    #[error("{scheme}: {reason}")]
    Custom {
        /// The scheme.
        scheme: String,
        /// What is wrong.
        reason: String,
    },
    /// A handle that is not valid.
    #[error("Handle: {0}")]
    Handle(String),
    /// An OID that is not valid.
    #[error("OID: {0}")]
    Oid(String),
    /// No scheme reads it.
    #[error("{0:?} is not an identifier of any known scheme (Handle, OID, GS1, Ecode, NIoT{1})")]
    Unknown(String, String),
    /// A link value's type names a scheme but its data is wrong.
    #[error("value of type {value_type}: {reason}")]
    BadLink {
        /// The value type.
        value_type: String,
        /// What is wrong.
        reason: String,
    },
}

/// One level an identifier resolves at, most specific first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    /// The link key.
    pub key: String,
    /// Its name, e.g. `01+10+21` or `ecode`.
    pub name: String,
}

/// An identifier read by a scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    /// The scheme: `handle`, `oid`, `gs1`, `ecode`, `niot`, or a
    /// configured scheme's name.
    pub scheme: String,
    /// How it was written (e.g. "Digital Link URI", "GTIN-13").
    pub form: String,
    /// Its canonical written form.
    pub canonical: String,
    /// A handle to try before the links (a handle, or an OID's record).
    pub direct: Option<String>,
    /// Link keys to try, most specific first.
    pub levels: Vec<Level>,
    /// The GS1 reading, for GS1 identifiers (and Ecode V0).
    pub gs1: Option<Gs1Id>,
}

/// The schemes in force.
#[derive(Debug, Clone)]
pub struct Schemes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    gs1: Gs1,
    ecode: Vec<ecode::EcodeVersion>,
    niot: niot::Rules,
    custom: Vec<config::Compiled>,
    shared: Vec<String>,
    fingerprint: String,
}

impl Default for Schemes {
    fn default() -> Self {
        #[allow(clippy::expect_used)]
        Self::new(&SchemesConfig::default()).expect("the default scheme configuration is valid")
    }
}

fn is_oid(s: &str) -> bool {
    let mut arcs = s.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut n = 1;
    for a in arcs {
        if a.is_empty()
            || !a.bytes().all(|b| b.is_ascii_digit())
            || (a.len() > 1 && a.starts_with('0'))
        {
            return false;
        }
        n += 1;
    }
    first_ok && n >= 2
}

impl Schemes {
    /// Builds the schemes from their configuration.
    pub fn new(config: &SchemesConfig) -> Result<Self, String> {
        let compiled = config.compile()?;
        Ok(Self {
            inner: Arc::new(compiled),
        })
    }

    /// The GS1 scheme.
    pub fn gs1(&self) -> &Gs1 {
        &self.inner.gs1
    }

    /// A text that changes whenever the configuration that decides link
    /// keys changes (the store rebuilds its link index then).
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// Names of the configured schemes (`cid`, …).
    pub fn custom_names(&self) -> impl Iterator<Item = &str> {
        self.inner.custom.iter().map(|c| c.name.as_str())
    }

    /// Whether many records may claim the same link key.
    pub fn shared(&self, link_key: &str) -> bool {
        let scheme = link_key.split(':').next().unwrap_or("");
        self.inner
            .shared
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
    }

    fn gs1_recognised(&self, id: Gs1Id, scheme: &str) -> Recognised {
        let levels = id
            .levels()
            .into_iter()
            .zip((1..=id.key.0.len()).rev())
            .map(|(key, n)| Level {
                key,
                name: id.key.0[..n]
                    .iter()
                    .map(|e| e.ai.as_str())
                    .collect::<Vec<_>>()
                    .join("+"),
            })
            .collect();
        let levels: Vec<Level> = levels;
        Recognised {
            scheme: scheme.to_owned(),
            form: id.form.to_owned(),
            canonical: levels.first().map(|l| l.key.clone()).unwrap_or_default(),
            direct: None,
            levels,
            gs1: Some(id),
        }
    }

    fn single(scheme: &str, form: &str, key: String, name: &str) -> Recognised {
        Recognised {
            scheme: scheme.to_owned(),
            form: form.to_owned(),
            canonical: key.clone(),
            direct: None,
            levels: vec![Level {
                key,
                name: name.to_owned(),
            }],
            gs1: None,
        }
    }

    fn oid(&self, s: &str, form: &str) -> Result<Recognised, SchemeError> {
        if !is_oid(s) {
            return Err(SchemeError::Oid(format!(
                "{s:?} is not a dotted OID (arcs of digits, the first 0, 1 or 2)"
            )));
        }
        let mut r = Self::single("oid", form, format!("oid:{s}"), "oid");
        r.direct = Some(format!("OID/{s}"));
        Ok(r)
    }

    fn ecode(&self, s: &str) -> Result<Recognised, SchemeError> {
        let e = ecode::parse(&self.inner.ecode, s).map_err(|e| SchemeError::Ecode(e.0))?;
        if e.gs1 {
            let id = self
                .inner
                .gs1
                .parse(&e.md)
                .map_err(|g| SchemeError::Ecode(format!("version V0 carries GS1 data: {g}")))?;
            let mut r = self.gs1_recognised(id, "ecode");
            r.form = "Ecode V0 (GS1)".into();
            return Ok(r);
        }
        let code = e.code();
        Ok(Self::single(
            "ecode",
            &format!("Ecode V{}", e.version),
            format!("ecode:{code}"),
            "ecode",
        ))
    }

    fn custom(&self, c: &config::Compiled, s: &str) -> Result<Recognised, SchemeError> {
        // After its prefix (`cid:…`), or written with it.
        let canonical = c
            .canonical(s)
            .or_else(|| c.canonical(&format!("{}:{s}", c.name)));
        let canonical = canonical.ok_or_else(|| SchemeError::Custom {
            scheme: c.name.clone(),
            reason: format!(
                "{s:?} does not match the scheme's pattern {}",
                c.pattern.as_str()
            ),
        })?;
        Ok(Self::single(
            &c.name,
            &c.name,
            format!("{}:{canonical}", c.name),
            &c.name,
        ))
    }

    fn niot(&self, s: &str) -> Result<Recognised, SchemeError> {
        let (rule, body) = self.inner.niot.find(s).map_err(SchemeError::Niot)?;
        match rule.resolution {
            niot::Resolution::Link => {
                let mut r = Self::single(
                    "niot",
                    &format!("NIoT ({})", rule.name),
                    format!("niot:{s}"),
                    "niot",
                );
                r.canonical = format!("niot:{s}");
                Ok(r)
            }
            niot::Resolution::Through => {
                let mut inner = self.recognise_as(&rule.coding, body).map_err(|e| {
                    SchemeError::Niot(format!(
                        "rule {} reads its code as {}: {e}",
                        rule.name, rule.coding
                    ))
                })?;
                inner.form = format!("NIoT ({}) through {}", rule.name, inner.scheme);
                inner.scheme = "niot".into();
                Ok(inner)
            }
        }
    }

    /// Reads `s` with one named scheme.
    pub fn recognise_as(&self, scheme: &str, s: &str) -> Result<Recognised, SchemeError> {
        let lower;
        let scheme = if scheme.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = scheme.to_ascii_lowercase();
            lower.as_str()
        } else {
            scheme
        };
        match scheme {
            "gs1" => {
                let id = self.inner.gs1.parse(s)?;
                Ok(self.gs1_recognised(id, "gs1"))
            }
            "ecode" => self.ecode(s),
            "niot" => self.niot(s),
            "oid" => self.oid(s, "OID"),
            "handle" | "hdl" => handle(s),
            other => match self.inner.custom.iter().find(|c| c.name == other) {
                Some(c) => self.custom(c, s),
                None => Err(SchemeError::Unknown(s.to_owned(), self.custom_list())),
            },
        }
    }

    fn custom_list(&self) -> String {
        self.inner
            .custom
            .iter()
            .map(|c| format!(", {}", c.name))
            .collect()
    }

    /// The scheme prefix (`gs1:`, `ecode:`, …) that `s` starts with.
    pub fn prefixed<'s>(&'s self, s: &'s str) -> Option<(&'s str, &'s str)> {
        let (head, rest) = s.split_once(':')?;
        if head.is_empty() || head.len() > 32 || head.contains('/') {
            return None;
        }
        if let Some(b) = ["gs1", "ecode", "niot", "oid", "hdl"]
            .into_iter()
            .find(|b| head.eq_ignore_ascii_case(b))
        {
            return Some((b, rest));
        }
        self.inner
            .custom
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(head))
            .map(|c| (c.name.as_str(), rest))
    }

    /// A linked identifier in the textual form the Handle face takes
    /// (`gs1:01/…`, `ecode:…`, `niot:…`, `oid:…`, `cid:…`): `None` when
    /// `s` does not start with a scheme prefix.
    pub fn linked_form(&self, s: &str) -> Option<Result<Recognised, SchemeError>> {
        let (scheme, rest) = self.prefixed(s)?;
        if s.len() > MAX_ID_LEN {
            return Some(Err(SchemeError::TooLong(s.len())));
        }
        Some(self.recognise_as(scheme, rest))
    }

    /// Reads an identifier of any scheme from its syntax.
    ///
    /// Order: a scheme prefix (`gs1:`, `ecode:`, `niot:`, `oid:`, `urn:oid:`,
    /// `hdl:`, a configured scheme's name) decides; then a Digital Link URI,
    /// an EPC URN, a GS1 element string; then configured schemes and NIoT
    /// rules by their patterns; then a handle (it has a `/`); a dotted OID;
    /// a digit string with a good GS1 check digit is a GTIN or SSCC, and any
    /// other an Ecode.
    pub fn recognise(&self, s: &str) -> Result<Recognised, SchemeError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SchemeError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(SchemeError::TooLong(s.len()));
        }
        if let Some(rest) = s
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("urn:oid:"))
            .map(|_| &s[8..])
        {
            return self.oid(rest, "urn:oid URN");
        }
        if let Some(r) = self.linked_form(s) {
            return r;
        }
        if gs1::starts_with_ci(s, "http://") || gs1::starts_with_ci(s, "https://") {
            return self.recognise_as("gs1", s);
        }
        if s.get(..11)
            .is_some_and(|p| p.eq_ignore_ascii_case("urn:epc:id:"))
            || s.starts_with(['(', ']', '^', '\u{1d}'])
        {
            return self.recognise_as("gs1", s);
        }
        for c in &self.inner.custom {
            if c.pattern.is_match(s) {
                return self.custom(c, s);
            }
        }
        if self.inner.niot.matches(s) {
            return self.niot(s);
        }
        if s.contains('/') {
            return handle(s);
        }
        if s.contains('.') && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return self.oid(s, "OID");
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            if let Some(id) = self.inner.gs1.bare_key(s) {
                return Ok(self.gs1_recognised(id, "gs1"));
            }
            let gs1_err = self.inner.gs1.parse_bare(s).err();
            return match self.ecode(s) {
                Ok(r) => Ok(r),
                Err(SchemeError::Ecode(e)) => Err(SchemeError::Unknown(
                    s.to_owned(),
                    format!(
                        "{}; as GS1: {}; as Ecode: {e}",
                        self.custom_list(),
                        gs1_err.map(|g| g.to_string()).unwrap_or_default()
                    ),
                )),
                Err(e) => Err(e),
            };
        }
        Err(SchemeError::Unknown(s.to_owned(), self.custom_list()))
    }

    /// Checks a value that is not an identifier but belongs to a scheme:
    /// a resolver link ([`GS1_LINK_TYPE`]). `None` for other types.
    pub fn check_value(&self, value_type: &str, data: &[u8]) -> Option<Result<(), String>> {
        value_type
            .eq_ignore_ascii_case(GS1_LINK_TYPE)
            .then(|| resolver::ResolverLink::from_json(data).map(|_| ()))
    }

    /// The link keys a value of this type and data claims: `None` when the
    /// type is not a link type. Data attributes of a GS1 identifier are not
    /// part of its key.
    pub fn link_key(&self, value_type: &str, data: &[u8]) -> Option<Result<String, SchemeError>> {
        let t = value_type.to_ascii_uppercase();
        let scheme = if GS1_VALUE_TYPES.contains(&t.as_str()) {
            "gs1".to_owned()
        } else if t == "ECODE"
            || t == "NIOT"
            || t == "OID"
            || self
                .inner
                .custom
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(&t))
        {
            t.to_ascii_lowercase()
        } else {
            return None;
        };
        let bad = |reason: String| SchemeError::BadLink {
            value_type: value_type.to_owned(),
            reason,
        };
        let Ok(text) = std::str::from_utf8(data) else {
            return Some(Err(bad("the data is not UTF-8 text".into())));
        };
        let text = text.trim();
        if text.len() > MAX_ID_LEN {
            return Some(Err(bad(format!(
                "{} bytes; at most {MAX_ID_LEN}",
                text.len()
            ))));
        }
        // The value may carry its scheme prefix.
        let body = match self.prefixed(text) {
            Some((s, rest)) if s == scheme => rest,
            _ => text,
        };
        let r = match self.recognise_as(&scheme, body) {
            Ok(r) => r,
            Err(e) => return Some(Err(bad(e.to_string()))),
        };
        if t == "GS1.GTIN"
            && r.gs1
                .as_ref()
                .is_some_and(|g| g.key.0.len() != 1 || g.key.0[0].ai != "01")
        {
            return Some(Err(bad(
                "a GS1.GTIN value is a GTIN alone; use GS1.DL for a key with qualifiers".into(),
            )));
        }
        match r.levels.into_iter().next() {
            Some(l) => Some(Ok(l.key)),
            None => Some(Err(bad("names no linkable identifier".into()))),
        }
    }
}

fn handle(s: &str) -> Result<Recognised, SchemeError> {
    let (prefix, suffix) = s
        .split_once('/')
        .ok_or_else(|| SchemeError::Handle(format!("{s:?} has no / between prefix and suffix")))?;
    if prefix.is_empty() {
        return Err(SchemeError::Handle("the prefix is empty".into()));
    }
    if s.bytes().any(|b| b.is_ascii_control()) {
        return Err(SchemeError::Handle(
            "a handle may not contain control characters".into(),
        ));
    }
    let _ = suffix;
    Ok(Recognised {
        scheme: "handle".into(),
        form: "Handle".into(),
        canonical: s.to_owned(),
        direct: Some(s.to_owned()),
        levels: Vec::new(),
        gs1: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_each_scheme() {
        let s = Schemes::default();
        let r = s
            .recognise("https://id.example.org/01/09521234543213/10/ABC/21/7?17=261231")
            .unwrap();
        assert_eq!(r.scheme, "gs1");
        assert_eq!(r.canonical, "gs1:01/09521234543213/10/ABC/21/7");
        let names: Vec<&str> = r.levels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["01+10+21", "01+10", "01"]);
        assert_eq!(
            s.recognise("9521234543213").unwrap().canonical,
            "gs1:01/09521234543213"
        );
        assert_eq!(
            s.recognise("(01)09521234543213(10)ABC").unwrap().canonical,
            "gs1:01/09521234543213/10/ABC"
        );
        assert_eq!(
            s.recognise("gs1:01/09521234543213/10/ABC")
                .unwrap()
                .levels
                .len(),
            2
        );
        assert_eq!(
            s.recognise("88.118.8/JXDY2106023").unwrap().scheme,
            "handle"
        );
        assert_eq!(
            s.recognise("1.2.156.3001").unwrap().direct.as_deref(),
            Some("OID/1.2.156.3001")
        );
        assert_eq!(
            s.recognise("ecode:10001123456789").unwrap().canonical,
            "ecode:10001123456789"
        );
        assert_eq!(
            s.recognise("ecode:009521234543213").unwrap().canonical,
            "gs1:01/09521234543213"
        );
        let e = s
            .recognise("gs1:01/09521234543214")
            .unwrap_err()
            .to_string();
        assert!(e.contains("check digit"), "{e}");
        let e = s.recognise("ecode:7000112").unwrap_err().to_string();
        assert!(e.contains("V7"), "{e}");
        assert!(s.recognise(&"1".repeat(MAX_ID_LEN + 1)).is_err());
    }
}
