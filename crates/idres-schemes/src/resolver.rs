//! Resolver links of the GS1-conformant resolver: values of type
//! [`GS1_LINK_TYPE`](crate::GS1_LINK_TYPE) on a record linked to a GS1 key,
//! each a JSON object:
//!
//! ```json
//! {"linkType": "gs1:pip", "href": "https://example.com/p", "title": "Product page",
//!  "type": "text/html", "hreflang": ["en", "zh"], "context": ["cn"], "default": true,
//!  "fwqs": true}
//! ```
//!
//! `linkType` is a full link-type URI or a CURIE with the `gs1:` prefix;
//! `href` and `title` are required.

use serde::{Deserialize, Serialize};

/// The GS1 Web vocabulary namespace of link types.
pub const GS1_VOC: &str = "https://gs1.org/voc/";

/// The link type of a record's default link.
pub const DEFAULT_LINK: &str = "https://gs1.org/voc/defaultLink";

/// Longest href or link type taken.
pub const MAX_URL: usize = 2048;

/// One resolver link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResolverLink {
    /// The link type (expanded to a full URI when read).
    pub link_type: String,
    /// The target.
    pub href: String,
    /// A title for people.
    pub title: String,
    /// The target's media type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The target's languages (`en`, `zh-CN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hreflang: Vec<String>,
    /// Contexts (geographies, jurisdictions) the link applies in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<String>,
    /// The record's default link.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// Whether the request's query string is passed on to the target.
    #[serde(default = "yes")]
    pub fwqs: bool,
}

fn yes() -> bool {
    true
}

/// Expands a `gs1:` CURIE to its full link-type URI; the vocabulary's
/// other IRI (`https://ref.gs1.org/voc/`) is the same namespace.
pub fn expand_link_type(t: &str) -> String {
    if let Some(rest) = t.strip_prefix("gs1:") {
        return format!("{GS1_VOC}{rest}");
    }
    if let Some(rest) = t.strip_prefix("https://ref.gs1.org/voc/") {
        return format!("{GS1_VOC}{rest}");
    }
    t.to_owned()
}

fn url_ok(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://"))
        && s.len() <= MAX_URL
        && s.len() > 8
        && !s
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'"' || b == b'<' || b == b'>')
}

impl ResolverLink {
    /// Reads and checks a link value's data.
    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        let mut l: ResolverLink =
            serde_json::from_slice(data).map_err(|e| format!("not a resolver link: {e}"))?;
        l.link_type = expand_link_type(&l.link_type);
        if !url_ok(&l.link_type) {
            return Err(format!(
                "linkType {:?} is neither a link-type URI nor a gs1: CURIE",
                l.link_type
            ));
        }
        if !url_ok(&l.href) {
            return Err(format!("href {:?} is not an http(s) URL", l.href));
        }
        if l.title.trim().is_empty() || l.title.len() > 512 {
            return Err("title must have 1 to 512 bytes".into());
        }
        if let Some(t) = &l.media_type {
            let ok = t.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && t.len() <= 128
                    && t.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"/-+.".contains(&c))
            });
            if !ok {
                return Err(format!("type {t:?} is not a media type"));
            }
        }
        for lang in &l.hreflang {
            let b = lang.as_bytes();
            let ok = (b.len() == 2 || (b.len() == 5 && b[2] == b'-'))
                && b.iter()
                    .enumerate()
                    .all(|(i, c)| i == 2 || c.is_ascii_alphabetic());
            if !ok {
                return Err(format!("hreflang {lang:?} is not a language (en, zh-CN)"));
            }
        }
        if l.context.len() > 16 || l.context.iter().any(|c| c.is_empty() || c.len() > 64) {
            return Err("context holds at most 16 values of 1 to 64 bytes".into());
        }
        Ok(l)
    }

    /// Whether this is a default link.
    pub fn is_default(&self) -> bool {
        self.default || self.link_type == DEFAULT_LINK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_checks() {
        let l = ResolverLink::from_json(
            br#"{"linkType":"gs1:pip","href":"https://example.com/p","title":"P","hreflang":["en","zh-CN"]}"#,
        )
        .unwrap();
        assert_eq!(l.link_type, "https://gs1.org/voc/pip");
        assert!(l.fwqs);
        assert!(
            ResolverLink::from_json(br#"{"linkType":"gs1:pip","href":"ftp://x","title":"P"}"#)
                .is_err()
        );
        assert!(ResolverLink::from_json(
            br#"{"linkType":"gs1:pip","href":"https://x.org","title":""}"#
        )
        .is_err());
        assert!(ResolverLink::from_json(
            br#"{"linkType":"gs1:pip","href":"https://x.org","title":"t","hreflang":["english"]}"#
        )
        .is_err());
    }
}
