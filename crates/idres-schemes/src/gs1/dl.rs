//! GS1 Digital Link URIs (uncompressed): parsing into an element string
//! and writing one from it, with the syntax dictionary's rules.

use super::dict::Dictionary;
use super::element::{self, Element, ElementString, MAX_AIS, MAX_AI_VALUE_LEN};
use super::Gs1Error;

/// Longest Digital Link URI taken.
pub const MAX_URI_LEN: usize = 4096;

/// Parser settings (the syntax engine's options of the same names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DlOptions {
    /// Take convenience alphas (`/gtin/…`) for AIs in the path.
    pub convenience_alphas: bool,
    /// Take GTIN-8/12/13 in AI (01) and pad them to 14 digits.
    pub zero_suppressed_gtin: bool,
    /// Take AIs the dictionary does not know (as variable-length values).
    pub unknown_ais: bool,
    /// With `unknown_ais`, still refuse unknown AIs as data attributes.
    pub unknown_ai_not_attribute: bool,
}

impl DlOptions {
    /// The syntax engine's defaults.
    pub fn strict() -> Self {
        Self {
            unknown_ai_not_attribute: true,
            ..Self::default()
        }
    }
}

/// A parsed Digital Link URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigitalLink {
    /// Scheme and host, e.g. `https://id.gs1.org`.
    pub origin: String,
    /// Path before the primary key (without trailing slash), may be empty.
    pub stem: String,
    /// The primary key and its qualifiers, in path order.
    pub path: ElementString,
    /// Data attributes from the query string, in query order.
    pub attributes: ElementString,
    /// Query parameters that are not AIs (`linkType`, `context`, …), raw.
    pub other_params: Vec<(String, String)>,
}

impl DigitalLink {
    /// Every AI: the path's, then the query's.
    pub fn element_string(&self) -> ElementString {
        let mut all = self.path.0.clone();
        all.extend(self.attributes.0.iter().cloned());
        ElementString(all)
    }
}

/// Convenience alphas of AIs that may appear in a Digital Link path.
pub const CONVENIENCE_ALPHAS: &[(&str, &str)] = &[
    ("gtin", "01"),
    ("itip", "8006"),
    ("cpv", "22"),
    ("lot", "10"),
    ("ser", "21"),
    ("tpx", "235"),
    ("sscc", "00"),
    ("gdti", "253"),
    ("gcn", "255"),
    ("ginc", "401"),
    ("gsin", "402"),
    ("gln", "414"),
    ("glnx", "254"),
    ("payTo", "415"),
    ("party", "417"),
    ("uic", "7040"),
    ("grai", "8003"),
    ("giai", "8004"),
    ("cpid", "8010"),
    ("cpsn", "8011"),
    ("gmn", "8013"),
    ("gsrnp", "8017"),
    ("gsrn", "8018"),
    ("srin", "8019"),
    ("refno", "8020"),
];

fn unhex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-decodes a path segment (`query`: also `+` for space).
pub fn unescape(s: &str, query: bool) -> Result<String, Gs1Error> {
    let b = s.as_bytes();
    if !b.iter().any(|c| *c == b'%' || (query && *c == b'+')) {
        return Ok(s.to_owned());
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let pair = b
                    .get(i + 1..i + 3)
                    .and_then(|p| Some((unhex(p[0])?, unhex(p[1])?)));
                match pair {
                    Some((h, l)) => {
                        let c = (h << 4) | l;
                        if c == 0 {
                            return Err(Gs1Error::Uri(
                                "%00 (a NUL character) is not allowed".into(),
                            ));
                        }
                        out.push(c);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Bytes that are not UTF-8 are kept as Latin-1 characters; no GS1
    // character set takes them, so the value check refuses them.
    Ok(match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => e.into_bytes().into_iter().map(char::from).collect(),
    })
}

/// Percent-encodes a value for a path segment or query value: every
/// character but the URI's unreserved ones.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn uri_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
        )
}

fn host_ok(host: &str) -> bool {
    if host.is_empty() {
        return false;
    }
    if let Some(rest) = host.strip_prefix('[') {
        let (addr, port) = match rest.split_once(']') {
            Some(p) => p,
            None => return false,
        };
        return !addr.is_empty()
            && addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            && (port.is_empty()
                || port
                    .strip_prefix(':')
                    .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())));
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses a Digital Link URI.
pub fn parse(dict: &Dictionary, uri: &str, opts: DlOptions) -> Result<DigitalLink, Gs1Error> {
    if uri.len() > MAX_URI_LEN {
        return Err(Gs1Error::TooLong(uri.len(), MAX_URI_LEN));
    }
    let rest = ["https://", "HTTPS://", "http://", "HTTP://"]
        .iter()
        .find_map(|s| uri.strip_prefix(s).map(|r| (&uri[..s.len()], r)));
    let Some((scheme, rest)) = rest else {
        return Err(Gs1Error::Uri(
            "a Digital Link URI starts with https:// or http://".into(),
        ));
    };
    let rest = match rest.find('#') {
        Some(i) => &rest[..i],
        None => rest,
    };
    let slash = rest
        .find('/')
        .ok_or_else(|| Gs1Error::Uri("the URI has no path".into()))?;
    let (host, after) = rest.split_at(slash);
    if !host_ok(host) {
        return Err(Gs1Error::Uri(format!("{host:?} is not a valid host")));
    }
    parse_after_host(
        dict,
        after,
        opts,
        format!("{}{host}", scheme.to_ascii_lowercase()),
    )
}

/// Parses the path (and query) of a Digital Link without scheme and host:
/// `/01/09521234543213/10/ABC?17=261231`.
pub fn parse_path_only(
    dict: &Dictionary,
    path: &str,
    opts: DlOptions,
) -> Result<DigitalLink, Gs1Error> {
    if path.len() > MAX_URI_LEN {
        return Err(Gs1Error::TooLong(path.len(), MAX_URI_LEN));
    }
    let path = match path.find('#') {
        Some(i) => &path[..i],
        None => path,
    };
    parse_after_host(dict, path, opts, String::new())
}

fn parse_after_host(
    dict: &Dictionary,
    after: &str,
    opts: DlOptions,
    origin: String,
) -> Result<DigitalLink, Gs1Error> {
    if let Some(bad) = after.bytes().find(|b| !uri_char(*b)) {
        return Err(Gs1Error::Uri(format!(
            "character {:?} is not allowed in a URI",
            bad as char
        )));
    }
    let (path, query) = match after.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (after, None),
    };
    let (stem, elements) = parse_path(dict, path, opts)?;
    let mut link = DigitalLink {
        origin,
        stem: stem.to_owned(),
        path: ElementString(elements),
        attributes: ElementString::default(),
        other_params: Vec::new(),
    };
    if let Some(q) = query {
        parse_query(dict, q, opts, &mut link)?;
    }
    check(dict, &link, opts)?;
    Ok(link)
}

fn lookup_ai<'a>(dict: &Dictionary, seg: &'a str, opts: DlOptions) -> Option<&'a str> {
    if seg.len() >= 2 && seg.len() <= 4 && seg.bytes().all(|b| b.is_ascii_digit()) {
        if dict.get(seg).is_some() {
            return Some(seg);
        }
        return None;
    }
    if opts.convenience_alphas {
        return CONVENIENCE_ALPHAS
            .iter()
            .find(|(a, _)| *a == seg)
            .map(|(_, ai)| *ai);
    }
    None
}

/// Finds the primary key in a path (scanning from the end over AI/value
/// pairs) and returns the stem before it and the path's AIs.
fn parse_path<'p>(
    dict: &Dictionary,
    path: &'p str,
    opts: DlOptions,
) -> Result<(&'p str, Vec<Element>), Gs1Error> {
    let segs: Vec<&str> = path.split('/').collect();
    // segs[0] is empty (the path starts with '/').
    let mut start = None;
    let mut i = segs.len();
    while i >= 3 {
        let ai_seg = segs[i - 2];
        let Some(ai) = lookup_ai(dict, ai_seg, opts) else {
            break;
        };
        if dict.get(ai).is_some_and(|e| e.is_primary_key()) {
            start = Some(i - 2);
            break;
        }
        i -= 2;
    }
    let Some(start) = start else {
        // A numeric segment the dictionary does not know, after a primary
        // key: name it.
        let is_key = |s: &&str| {
            lookup_ai(dict, s, opts)
                .and_then(|a| dict.get(a))
                .is_some_and(|e| e.is_primary_key())
        };
        if i >= 2 {
            let seg = segs[i - 2];
            let numeric = (2..=4).contains(&seg.len()) && seg.bytes().all(|b| b.is_ascii_digit());
            if numeric && segs[..i - 2].iter().any(is_key) {
                return Err(Gs1Error::UnknownAi(seg.to_owned()));
            }
        }
        return Err(Gs1Error::Uri(
            "the path has no GS1 primary key (such as /01/ followed by a GTIN)".into(),
        ));
    };
    let mut out = Vec::new();
    for pair in segs[start..].chunks(2) {
        let ai = lookup_ai(dict, pair[0], opts)
            .ok_or_else(|| Gs1Error::UnknownAi(pair[0].to_owned()))?;
        let raw = pair.get(1).copied().unwrap_or("");
        if raw.is_empty() {
            return Err(Gs1Error::Value {
                ai: ai.to_owned(),
                reason: "the value is empty".into(),
            });
        }
        let mut value = unescape(raw, false)?;
        if ai == "01" && opts.zero_suppressed_gtin && matches!(value.len(), 8 | 12 | 13) {
            value = format!("{value:0>14}");
        }
        out.push(Element {
            ai: ai.to_owned(),
            value,
        });
    }
    let stem_end: usize = segs[..start].iter().map(|s| s.len() + 1).sum::<usize>();
    let stem = &path[..stem_end.saturating_sub(1)];
    Ok((stem, out))
}

fn parse_query(
    dict: &Dictionary,
    q: &str,
    opts: DlOptions,
    link: &mut DigitalLink,
) -> Result<(), Gs1Error> {
    for param in q.split('&') {
        if param.is_empty() {
            continue;
        }
        let Some((k, v)) = param.split_once('=') else {
            continue;
        };
        let numeric = !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit());
        if !numeric {
            link.other_params
                .push((unescape(k, true)?, unescape(v, true)?));
            continue;
        }
        if link.attributes.0.len() + link.path.0.len() >= MAX_AIS {
            return Err(Gs1Error::Syntax(format!(
                "Too many AIs: at most {MAX_AIS} are taken"
            )));
        }
        let known = dict.get(k).is_some();
        if !known {
            if !(opts.unknown_ais && (2..=4).contains(&k.len())) {
                return Err(Gs1Error::UnknownAi(k.to_owned()));
            }
            if opts.unknown_ai_not_attribute {
                return Err(Gs1Error::Syntax(format!(
                    "unknown AI ({k}) is not a Digital Link data attribute"
                )));
            }
        }
        if v.is_empty() {
            return Err(Gs1Error::Value {
                ai: k.to_owned(),
                reason: "the value is empty".into(),
            });
        }
        let mut value = unescape(v, true)?;
        if k == "01" && opts.zero_suppressed_gtin && matches!(value.len(), 8 | 12 | 13) {
            value = format!("{value:0>14}");
        }
        link.attributes.0.push(Element {
            ai: k.to_owned(),
            value,
        });
    }
    Ok(())
}

/// Whether `seq` (a primary key then qualifiers) is in one of the key's
/// qualifier orders.
pub fn valid_sequence(dict: &Dictionary, seq: &[&str]) -> bool {
    let Some((first, quals)) = seq.split_first() else {
        return false;
    };
    let Some(alts) = dict.get(first).and_then(|e| e.dl_pkey.as_ref()) else {
        return false;
    };
    alts.iter().any(|alt| {
        let mut it = alt.iter();
        quals.iter().all(|q| it.any(|a| a == q))
    })
}

fn check(dict: &Dictionary, link: &DigitalLink, opts: DlOptions) -> Result<(), Gs1Error> {
    let path_ais: Vec<&str> = link.path.0.iter().map(|e| e.ai.as_str()).collect();
    if !valid_sequence(dict, &path_ais) {
        return Err(Gs1Error::Syntax(format!(
            "/{} is not a valid key and qualifier path",
            path_ais.join("/…/")
        )));
    }
    let mut seen: Vec<&str> = Vec::new();
    for e in link.path.0.iter().chain(&link.attributes.0) {
        if seen.contains(&e.ai.as_str()) {
            return Err(Gs1Error::Syntax(format!(
                "AI ({}) appears more than once",
                e.ai
            )));
        }
        seen.push(&e.ai);
    }
    for e in &link.attributes.0 {
        match dict.get(&e.ai) {
            Some(entry) => {
                if !entry.dl_attribute {
                    return Err(Gs1Error::Syntax(format!(
                        "AI ({}) is not allowed as a Digital Link data attribute",
                        e.ai
                    )));
                }
                // A qualifier that fits the path's sequence belongs there.
                for pos in 1..=path_ais.len() {
                    let mut s = path_ais.clone();
                    s.insert(pos, e.ai.as_str());
                    if valid_sequence(dict, &s) {
                        return Err(Gs1Error::Syntax(format!(
                            "AI ({}) is a key qualifier and belongs in the path, not the query",
                            e.ai
                        )));
                    }
                }
            }
            None if opts.unknown_ais => {
                if e.value.len() > MAX_AI_VALUE_LEN {
                    return Err(Gs1Error::Value {
                        ai: e.ai.clone(),
                        reason: format!("the value is longer than {MAX_AI_VALUE_LEN}"),
                    });
                }
            }
            None => return Err(Gs1Error::UnknownAi(e.ai.clone())),
        }
    }
    for e in link.path.0.iter().chain(&link.attributes.0) {
        if let Some(entry) = dict.get(&e.ai) {
            element::check_value(entry, &e.value)?;
        }
    }
    let all: Vec<&Element> = link.path.0.iter().chain(&link.attributes.0).collect();
    element::associations_of(dict, &all)
}

/// Writes the Digital Link URI of an element string under `stem`. The
/// primary key and the most qualifiers it takes go in the path in the
/// key's order (on a tie, the sequence first in sorted order); every other
/// AI in the query, those of pre-defined length first, each group in the
/// order given. Repeated AIs (with equal values) are written once.
pub fn generate(dict: &Dictionary, stem: &str, es: &ElementString) -> Result<String, Gs1Error> {
    generate_with(dict, stem, es, DlOptions::strict())
}

/// [`generate`] with options (unknown AIs).
pub fn generate_with(
    dict: &Dictionary,
    stem: &str,
    es: &ElementString,
    opts: DlOptions,
) -> Result<String, Gs1Error> {
    element::check_with(dict, es, opts.unknown_ais)?;
    let key =
        es.0.iter()
            .find(|e| dict.get(&e.ai).is_some_and(|d| d.is_primary_key()))
            .ok_or_else(|| Gs1Error::Syntax("no GS1 primary key among the AIs".into()))?;
    let entry = dict
        .get(&key.ai)
        .ok_or_else(|| Gs1Error::UnknownAi(key.ai.clone()))?;
    let mut candidates: Vec<Vec<&str>> = Vec::new();
    for alt in entry.dl_pkey.iter().flatten() {
        let mut seq = vec![key.ai.as_str()];
        seq.extend(
            alt.iter()
                .map(String::as_str)
                .filter(|q| es.get(q).is_some()),
        );
        candidates.push(seq);
    }
    candidates.sort();
    let mut best: Vec<&str> = vec![key.ai.as_str()];
    for c in candidates {
        if c.len() > best.len() {
            best = c;
        }
    }
    let mut out = stem.trim_end_matches('/').to_owned();
    for ai in &best {
        let v = es.get(ai).unwrap_or_default();
        out.push('/');
        out.push_str(ai);
        out.push('/');
        out.push_str(&escape(v));
    }
    let mut rest: Vec<&Element> = Vec::new();
    for e in &es.0 {
        if best.contains(&e.ai.as_str()) || rest.iter().any(|r| r.ai == e.ai) {
            continue;
        }
        match dict.get(&e.ai) {
            Some(d) if !d.dl_attribute => {
                return Err(Gs1Error::Syntax(format!(
                    "AI ({}) cannot be a Digital Link data attribute",
                    e.ai
                )))
            }
            None if opts.unknown_ai_not_attribute => {
                return Err(Gs1Error::Syntax(format!(
                    "unknown AI ({}) is not a Digital Link data attribute",
                    e.ai
                )))
            }
            _ => {}
        }
        for pos in 1..=best.len() {
            let mut s = best.clone();
            s.insert(pos, e.ai.as_str());
            if valid_sequence(dict, &s) {
                return Err(Gs1Error::Syntax(format!(
                    "AI ({}) is a key qualifier and belongs in the path",
                    e.ai
                )));
            }
        }
        rest.push(e);
    }
    rest.sort_by_key(|e| !dict.predefined_length(&e.ai));
    let mut sep = '?';
    for e in rest {
        out.push(sep);
        sep = '&';
        out.push_str(&e.ai);
        out.push('=');
        out.push_str(&escape(&e.value));
    }
    Ok(out)
}
