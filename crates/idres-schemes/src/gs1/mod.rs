//! The GS1 scheme: keys with their check digits, element strings checked
//! against the syntax dictionary, EPC pure-identity URNs and Digital Link
//! URIs, all read into one [`Gs1Id`].

pub mod dict;
pub mod dl;
pub mod element;
pub mod epc;
pub mod lint;

use dict::Dictionary;
use element::{Element, ElementString};

/// Why a GS1 identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Gs1Error {
    /// An AI's value breaks its format.
    #[error("AI ({ai}): {reason}")]
    Value {
        /// The AI.
        ai: String,
        /// What is wrong.
        reason: String,
    },
    /// The dictionary has no such AI.
    #[error("unknown application identifier ({0})")]
    UnknownAi(String),
    /// The AIs do not form a valid element string or path.
    #[error("{0}")]
    Syntax(String),
    /// The AIs break a mandatory association or an exclusion.
    #[error("{0}")]
    Association(String),
    /// The URI is not a Digital Link URI.
    #[error("not a valid Digital Link URI: {0}")]
    Uri(String),
    /// A compressed Digital Link URI.
    #[error("compressed GS1 Digital Link URIs are not supported; send the uncompressed form (/01/{{gtin}}/…)")]
    Compressed,
    /// A malformed EPC URN.
    #[error("not a valid EPC pure-identity URN: {0}")]
    Epc(String),
    /// Longer than the parser takes.
    #[error("the identifier has {0} characters; at most {1} are taken")]
    TooLong(usize, usize),
}

/// A GS1 identifier: a primary key, its qualifiers, and data attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gs1Id {
    /// The primary key and qualifiers, in the key's order.
    pub key: ElementString,
    /// Other AIs (data attributes), in the order given.
    pub attributes: ElementString,
    /// How it was written ("Digital Link URI", "GTIN", "EPC URN", …).
    pub form: &'static str,
}

impl Gs1Id {
    /// The link key of the most specific level: `gs1:01/09521234543213/10/ABC`.
    pub fn link_key(&self) -> String {
        key_of(&self.key.0)
    }

    /// Link keys from the most specific level up to the primary key alone.
    pub fn levels(&self) -> Vec<String> {
        (1..=self.key.0.len())
            .rev()
            .map(|n| key_of(&self.key.0[..n]))
            .collect()
    }

    /// The Digital Link path of the key (`/01/…/10/…`).
    pub fn dl_path(&self) -> String {
        let mut out = String::new();
        for e in &self.key.0 {
            out.push('/');
            out.push_str(&e.ai);
            out.push('/');
            out.push_str(&dl::escape(&e.value));
        }
        out
    }

    /// The name of the level: the AIs of the key (e.g. "01+10+21").
    pub fn level_name(&self) -> String {
        self.key
            .0
            .iter()
            .map(|e| e.ai.as_str())
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// The link key of a key and its qualifiers.
pub fn key_of(key: &[Element]) -> String {
    let mut out = String::from("gs1:");
    for (i, e) in key.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&e.ai);
        out.push('/');
        out.push_str(&dl::escape(&e.value));
    }
    out
}

/// The GS1 scheme with its dictionary and Digital Link options.
#[derive(Debug, Clone)]
pub struct Gs1 {
    dict: Dictionary,
    options: dl::DlOptions,
}

impl Default for Gs1 {
    fn default() -> Self {
        Self::new(Dictionary::builtin(), dl::DlOptions::strict())
    }
}

/// GTIN and key lengths a bare digit string is read as.
const BARE_KEYS: &[(usize, &str, &str)] = &[
    (8, "01", "GTIN-8"),
    (12, "01", "GTIN-12"),
    (13, "01", "GTIN-13"),
    (14, "01", "GTIN-14"),
    (18, "00", "SSCC"),
];

impl Gs1 {
    /// A GS1 scheme over a dictionary.
    pub fn new(dict: Dictionary, options: dl::DlOptions) -> Self {
        Self { dict, options }
    }

    /// The Digital Link options.
    pub fn options(&self) -> dl::DlOptions {
        self.options
    }

    /// The syntax dictionary.
    pub fn dictionary(&self) -> &Dictionary {
        &self.dict
    }

    /// Whether a bare digit string is a GS1 key with a good check digit.
    pub fn bare_key(&self, s: &str) -> Option<Gs1Id> {
        let (_, ai, form) = BARE_KEYS.iter().find(|(n, _, _)| *n == s.len())?;
        if !s.bytes().all(|b| b.is_ascii_digit()) || !lint::mod10_ok(s) {
            return None;
        }
        let value = if *ai == "01" {
            format!("{s:0>14}")
        } else {
            s.to_owned()
        };
        Some(Gs1Id {
            key: ElementString(vec![Element {
                ai: (*ai).to_owned(),
                value,
            }]),
            attributes: ElementString::default(),
            form,
        })
    }

    /// Reads a digit string as a GS1 key, saying what is wrong if it is
    /// not one.
    pub fn parse_bare(&self, s: &str) -> Result<Gs1Id, Gs1Error> {
        if let Some(id) = self.bare_key(s) {
            return Ok(id);
        }
        match BARE_KEYS.iter().find(|(n, _, _)| *n == s.len()) {
            Some((_, ai, form)) => {
                let want = lint::mod10(&s.as_bytes()[..s.len() - 1])
                    .map(|c| format!(" (expected {})", c as char))
                    .unwrap_or_default();
                Err(Gs1Error::Value {
                    ai: (*ai).to_owned(),
                    reason: format!("{form} {s}: the check digit is wrong{want}"),
                })
            }
            None => Err(Gs1Error::Syntax(format!(
                "{} digits is not the length of a GTIN (8, 12, 13, 14) or SSCC (18)",
                s.len()
            ))),
        }
    }

    /// Splits an element string into key and attributes.
    fn split(&self, es: ElementString, form: &'static str) -> Result<Gs1Id, Gs1Error> {
        let pkey =
            es.0.iter()
                .position(|e| self.dict.get(&e.ai).is_some_and(|d| d.is_primary_key()))
                .ok_or_else(|| {
                    Gs1Error::Syntax("no GS1 primary key (such as (01) GTIN) among the AIs".into())
                })?;
        let entry = self
            .dict
            .get(&es.0[pkey].ai)
            .ok_or_else(|| Gs1Error::UnknownAi(es.0[pkey].ai.clone()))?;
        let mut best = vec![es.0[pkey].clone()];
        for alt in entry.dl_pkey.iter().flatten() {
            let mut seq = vec![es.0[pkey].clone()];
            for q in alt {
                if let Some(v) = es.get(q) {
                    seq.push(Element {
                        ai: q.clone(),
                        value: v.to_owned(),
                    });
                }
            }
            if seq.len() > best.len() {
                best = seq;
            }
        }
        let attributes =
            es.0.into_iter()
                .filter(|e| !best.iter().any(|b| b.ai == e.ai))
                .collect();
        Ok(Gs1Id {
            key: ElementString(best),
            attributes: ElementString(attributes),
            form,
        })
    }

    /// Reads a Digital Link URI.
    pub fn parse_dl(&self, uri: &str) -> Result<Gs1Id, Gs1Error> {
        match dl::parse(&self.dict, uri, self.options) {
            Ok(link) => Ok(Gs1Id {
                key: link.path,
                attributes: link.attributes,
                form: "Digital Link URI",
            }),
            Err(e) => {
                if looks_compressed(uri) {
                    Err(Gs1Error::Compressed)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Reads a Digital Link path without scheme and host
    /// (`01/09521234543213/10/ABC`, optionally with a leading `/` and a
    /// query), the textual form after `gs1:`.
    pub fn parse_path(&self, path: &str) -> Result<Gs1Id, Gs1Error> {
        let link = if path.starts_with('/') {
            dl::parse_path_only(&self.dict, path, self.options)
        } else {
            dl::parse_path_only(&self.dict, &format!("/{path}"), self.options)
        }?;
        Ok(Gs1Id {
            key: link.path,
            attributes: link.attributes,
            form: "GS1 key path",
        })
    }

    /// Reads any GS1 syntax: Digital Link URI, EPC URN, element string
    /// (bracketed or raw), key path, or a bare GTIN or SSCC.
    pub fn parse(&self, s: &str) -> Result<Gs1Id, Gs1Error> {
        let s = s.trim();
        if s.len() > dl::MAX_URI_LEN {
            return Err(Gs1Error::TooLong(s.len(), dl::MAX_URI_LEN));
        }
        if starts_with_ci(s, "http://") || starts_with_ci(s, "https://") {
            return self.parse_dl(s);
        }
        if s.get(..11)
            .is_some_and(|p| p.eq_ignore_ascii_case("urn:epc:id:"))
        {
            let es = epc::parse(s)?;
            element::check(&self.dict, &es)?;
            return self.split(es, "EPC URN");
        }
        if s.starts_with('(') {
            let es = element::parse_bracketed(&self.dict, s)?;
            return self.split(es, "element string");
        }
        if s.starts_with([']', '^', '\u{1d}']) {
            let es = element::parse_raw(&self.dict, s)?;
            return self.split(es, "element string");
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return self.parse_bare(s);
        }
        self.parse_path(s)
    }
}

/// Whether `s` starts with `prefix`, ASCII case ignored.
pub fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Whether a URI looks like a compressed Digital Link: a last path
/// segment of base64url characters and no numeric AI segment.
fn looks_compressed(uri: &str) -> bool {
    let path = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let Some(last) = segs.last() else {
        return false;
    };
    last.len() >= 10
        && last
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !last.bytes().all(|b| b.is_ascii_digit())
        && !segs
            .iter()
            .any(|s| (2..=4).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
}
