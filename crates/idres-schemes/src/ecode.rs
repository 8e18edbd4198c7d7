//! Ecode (GB/T 31866): version `V`, numbering-system identifier (NSI)
//! and master-data code (MD). Version 0 is the GS1-compatible form: its
//! master data is a GS1 identifier and goes through the GS1 rules.
//!
//! The lengths and character sets per version come from a table
//! ([`EcodeVersion`]) that the operator can correct in the configuration.

use serde::Deserialize;

/// Characters a version's master data may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EcodeChars {
    /// 0-9.
    Digits,
    /// 0-9 and A-Z (upper-cased when read).
    Alnum,
    /// Printable ASCII except space.
    Printable,
}

/// One row of the version table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcodeVersion {
    /// The version digit (0-9).
    pub version: u8,
    /// Digits of the numbering-system identifier.
    #[serde(default)]
    pub nsi_digits: usize,
    /// Fewest characters of the master data.
    #[serde(default = "one")]
    pub md_min: usize,
    /// Most characters of the master data.
    pub md_max: usize,
    /// Characters of the master data.
    #[serde(default = "digits")]
    pub chars: EcodeChars,
    /// The master data is a GS1 identifier (version 0).
    #[serde(default)]
    pub gs1: bool,
}

fn one() -> usize {
    1
}

fn digits() -> EcodeChars {
    EcodeChars::Digits
}

/// The default version table (GB/T 31866-2015, Table 1): V1 NSI 4 digits
/// and up to 20 digits of master data; V2 NSI 8 and up to 64 digits; V3
/// NSI 4 and up to 39 letters or digits; V0 a GS1 identifier.
pub fn default_versions() -> Vec<EcodeVersion> {
    vec![
        EcodeVersion {
            version: 0,
            nsi_digits: 0,
            md_min: 8,
            md_max: 90,
            chars: EcodeChars::Printable,
            gs1: true,
        },
        EcodeVersion {
            version: 1,
            nsi_digits: 4,
            md_min: 1,
            md_max: 20,
            chars: EcodeChars::Digits,
            gs1: false,
        },
        EcodeVersion {
            version: 2,
            nsi_digits: 8,
            md_min: 1,
            md_max: 64,
            chars: EcodeChars::Digits,
            gs1: false,
        },
        EcodeVersion {
            version: 3,
            nsi_digits: 4,
            md_min: 1,
            md_max: 39,
            chars: EcodeChars::Alnum,
            gs1: false,
        },
    ]
}

/// A parsed Ecode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ecode {
    /// The version.
    pub version: u8,
    /// The numbering-system identifier.
    pub nsi: String,
    /// The master data (canonical: upper-cased for alphanumeric versions).
    pub md: String,
    /// Whether the master data is a GS1 identifier.
    pub gs1: bool,
}

impl Ecode {
    /// The canonical code.
    pub fn code(&self) -> String {
        format!("{}{}{}", self.version, self.nsi, self.md)
    }
}

/// Why an Ecode was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EcodeError(pub String);

/// Reads an Ecode against the version table.
pub fn parse(table: &[EcodeVersion], s: &str) -> Result<Ecode, EcodeError> {
    let first = s
        .bytes()
        .next()
        .ok_or_else(|| EcodeError("an Ecode is empty".into()))?;
    if !first.is_ascii_digit() {
        return Err(EcodeError(format!(
            "an Ecode starts with its version digit, not {:?}",
            first as char
        )));
    }
    let version = first - b'0';
    let row = table.iter().find(|r| r.version == version).ok_or_else(|| {
        let known: Vec<String> = table.iter().map(|r| format!("V{}", r.version)).collect();
        EcodeError(format!(
            "Ecode version V{version} is not in the version table (known: {})",
            known.join(", ")
        ))
    })?;
    let rest = &s[1..];
    if rest.len() < row.nsi_digits {
        return Err(EcodeError(format!(
            "an Ecode of version V{version} has a {}-digit numbering-system identifier; only {} characters follow the version",
            row.nsi_digits,
            rest.len()
        )));
    }
    if !rest.is_char_boundary(row.nsi_digits) {
        return Err(EcodeError(format!(
            "the numbering-system identifier of an Ecode V{version} must be digits"
        )));
    }
    let (nsi, md) = rest.split_at(row.nsi_digits);
    if !nsi.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EcodeError(format!(
            "the numbering-system identifier {nsi:?} of an Ecode V{version} must be digits"
        )));
    }
    let n = md.chars().count();
    if n < row.md_min || n > row.md_max {
        return Err(EcodeError(format!(
            "the master data of an Ecode V{version} has {n} characters; {} to {} are allowed",
            row.md_min, row.md_max
        )));
    }
    let ok = match row.chars {
        EcodeChars::Digits => md.bytes().all(|b| b.is_ascii_digit()),
        EcodeChars::Alnum => md.bytes().all(|b| b.is_ascii_alphanumeric()),
        EcodeChars::Printable => md.bytes().all(|b| b.is_ascii_graphic()),
    };
    if !ok {
        let what = match row.chars {
            EcodeChars::Digits => "digits",
            EcodeChars::Alnum => "letters and digits",
            EcodeChars::Printable => "printable characters",
        };
        return Err(EcodeError(format!(
            "the master data of an Ecode V{version} must be {what}"
        )));
    }
    let md = match row.chars {
        EcodeChars::Alnum => md.to_ascii_uppercase(),
        _ => md.to_owned(),
    };
    Ok(Ecode {
        version,
        nsi: nsi.to_owned(),
        md,
        gs1: row.gs1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let t = default_versions();
        let e = parse(&t, "10001123456789").unwrap();
        assert_eq!(
            (e.version, e.nsi.as_str(), e.md.as_str()),
            (1, "0001", "123456789")
        );
        assert!(parse(&t, "100011234567890123456789012").is_err());
        assert!(parse(&t, "30001abc").unwrap().md == "ABC");
        let err = parse(&t, "7000112").unwrap_err();
        assert!(err.0.contains("V7 is not in the version table"), "{err}");
    }
}
