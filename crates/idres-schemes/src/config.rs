//! The `[schemes]` configuration: GS1 options, the Ecode version table,
//! NIoT rules, configured schemes such as CID, and which link keys may be
//! shared by several records.

use regex::Regex;
use serde::Deserialize;

use crate::ecode::{default_versions, EcodeVersion};
use crate::gs1::dict::Dictionary;
use crate::gs1::dl::DlOptions;
use crate::gs1::Gs1;
use crate::niot;

/// GS1 options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gs1Config {
    /// Take convenience alphas (`/gtin/…`) in Digital Link paths.
    #[serde(default)]
    pub convenience_alphas: bool,
    /// Take GTIN-8/12/13 in a Digital Link's AI (01).
    #[serde(default)]
    pub zero_suppressed_gtin: bool,
    /// A syntax dictionary file to use instead of the built-in release.
    #[serde(default)]
    pub dictionary: Option<std::path::PathBuf>,
    /// The text of that dictionary (read by the caller; this crate does
    /// no I/O).
    #[serde(skip)]
    pub dictionary_text: Option<String>,
}

/// How a configured scheme writes its canonical form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Canonical {
    /// As written.
    #[default]
    Asis,
    /// Upper-cased.
    Upper,
    /// Lower-cased.
    Lower,
}

/// A scheme given by configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomScheme {
    /// Its name (lower case; also the prefix `name:` and, upper-cased, the
    /// value type that links a record to it).
    pub name: String,
    /// A regular expression for the whole identifier.
    pub pattern: String,
    /// Its canonical form.
    #[serde(default)]
    pub canonical: Canonical,
    /// A replacement template over the pattern's groups (`$1-$2`),
    /// applied before the case rule.
    #[serde(default)]
    pub template: Option<String>,
}

/// The `[schemes]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemesConfig {
    /// GS1 options.
    #[serde(default)]
    pub gs1: Gs1Config,
    /// Ecode rows replacing the default row of the same version, or
    /// adding one.
    #[serde(default)]
    pub ecode: Vec<EcodeVersion>,
    /// NIoT rules.
    #[serde(default)]
    pub niot: Vec<niot::RuleConfig>,
    /// Schemes given by name and pattern (default: CID, see
    /// [`default_custom`]).
    #[serde(default = "default_custom")]
    pub custom: Vec<CustomScheme>,
    /// Schemes whose link keys several records may claim (otherwise a
    /// second claim is refused). Default `["oid"]`: `OID` values could
    /// always be held by several records (the first in handle order
    /// answers), and stay so.
    #[serde(default = "default_shared")]
    pub shared_links: Vec<String>,
}

impl Default for SchemesConfig {
    fn default() -> Self {
        Self {
            gs1: Gs1Config::default(),
            ecode: Vec::new(),
            niot: Vec::new(),
            custom: default_custom(),
            shared_links: default_shared(),
        }
    }
}

/// The default configured schemes: CID, written `CID` (or `CID:`,
/// `CID.`) and 4 to 64 letters or digits, canonical `CID` + upper case.
pub fn default_custom() -> Vec<CustomScheme> {
    vec![CustomScheme {
        name: "cid".into(),
        pattern: "(?i)CID[:.]?([0-9A-Z]{4,64})".into(),
        canonical: Canonical::Upper,
        template: Some("CID$1".into()),
    }]
}

/// The schemes whose links are shared by default: OID.
pub fn default_shared() -> Vec<String> {
    vec!["oid".into()]
}

/// A configured scheme ready for use.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Its name.
    pub name: String,
    /// Its anchored pattern.
    pub pattern: Regex,
    canonical: Canonical,
    template: Option<String>,
}

impl Compiled {
    /// The canonical form of `s`, or `None` when it does not match.
    pub fn canonical(&self, s: &str) -> Option<String> {
        let caps = self.pattern.captures(s)?;
        let mut out = String::new();
        match &self.template {
            Some(t) => caps.expand(t, &mut out),
            None => out.push_str(s),
        }
        Some(match self.canonical {
            Canonical::Asis => out,
            Canonical::Upper => out.to_uppercase(),
            Canonical::Lower => out.to_lowercase(),
        })
    }
}

const BUILTIN_NAMES: &[&str] = &[
    "gs1", "ecode", "niot", "oid", "hdl", "handle", "urn", "http", "https",
];

impl SchemesConfig {
    pub(crate) fn compile(&self) -> Result<crate::Inner, String> {
        let dict = match &self.gs1.dictionary_text {
            Some(t) => Dictionary::parse(t).map_err(|e| e.to_string())?,
            None => Dictionary::builtin(),
        };
        let mut opts = DlOptions::strict();
        opts.convenience_alphas = self.gs1.convenience_alphas;
        opts.zero_suppressed_gtin = self.gs1.zero_suppressed_gtin;
        let mut ecode = default_versions();
        for row in &self.ecode {
            if row.version > 9 {
                return Err(format!("Ecode version {} is not a digit", row.version));
            }
            if row.md_min > row.md_max || row.md_max == 0 {
                return Err(format!(
                    "Ecode version {}: md_min must be at most md_max, and md_max above 0",
                    row.version
                ));
            }
            ecode.retain(|r| r.version != row.version);
            ecode.push(row.clone());
        }
        ecode.sort_by_key(|r| r.version);
        let mut custom = Vec::new();
        for c in &self.custom {
            let ok = c
                .name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase())
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok || BUILTIN_NAMES.contains(&c.name.as_str()) {
                return Err(format!(
                    "scheme name {:?} must be lower-case letters, digits and -, start with a letter, and not be a built-in scheme",
                    c.name
                ));
            }
            let pattern = Regex::new(&format!("^(?:{})$", c.pattern))
                .map_err(|e| format!("scheme {}: pattern: {e}", c.name))?;
            custom.push(Compiled {
                name: c.name.clone(),
                pattern,
                canonical: c.canonical.clone(),
                template: c.template.clone(),
            });
        }
        Ok(crate::Inner {
            gs1: Gs1::new(dict, opts),
            ecode,
            niot: niot::Rules::new(&self.niot)?,
            custom,
            shared: self
                .shared_links
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            fingerprint: format!("{self:?}"),
        })
    }
}
