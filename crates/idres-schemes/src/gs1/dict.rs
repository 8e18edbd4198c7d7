//! The GS1 Barcode Syntax Dictionary: one entry per application
//! identifier (AI), read from the dictionary's text format.
//!
//! Each line is `AIs [flags] specification [attributes] [# title]`; the
//! header of the dictionary file describes the format. The release that
//! idres is built with is compiled in ([`Dictionary::builtin`]); an operator
//! may load another with [`Dictionary::parse`].

/// The dictionary compiled into idres (release 2026-01-27, Apache-2.0; see
/// `data/NOTICE.md`).
pub const BUILTIN: &str = include_str!("../../data/gs1-syntax-dictionary.txt");

/// A character set of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cset {
    /// Digits.
    N,
    /// GS1 AI encodable character set 82.
    X,
    /// GS1 AI encodable character set 39.
    Y,
    /// base64url (character set 64).
    Z,
}

impl Cset {
    /// Whether `b` belongs to the set.
    pub fn allows(self, b: u8) -> bool {
        match self {
            Cset::N => b.is_ascii_digit(),
            Cset::X => is_cset82(b),
            Cset::Y => matches!(b, b'#' | b'-' | b'/' | b'0'..=b'9' | b'A'..=b'Z'),
            Cset::Z => b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cset::N => "digits",
            Cset::X => "GS1 character set 82",
            Cset::Y => "GS1 character set 39",
            Cset::Z => "base64url",
        }
    }
}

/// Whether `b` is in GS1 AI encodable character set 82.
pub fn is_cset82(b: u8) -> bool {
    matches!(b,
        b'!' | b'"' | b'%' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'-' | b'.' | b'/'
        | b'0'..=b'9' | b':' | b';' | b'<' | b'=' | b'>' | b'?' | b'A'..=b'Z' | b'_' | b'a'..=b'z')
}

/// One component of an AI's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Its characters.
    pub cset: Cset,
    /// Fewest characters.
    pub min: usize,
    /// Most characters.
    pub max: usize,
    /// Whether the component may be left out (with all that follow).
    pub optional: bool,
    /// Linters that check its content.
    pub linters: Vec<String>,
}

/// One AI of the dictionary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiEntry {
    /// The AI's digits.
    pub ai: String,
    /// Pre-defined length: no FNC1 separator follows the value.
    pub fixed_length: bool,
    /// May be a Digital Link data attribute (query parameter).
    pub dl_attribute: bool,
    /// The value's components, in order.
    pub components: Vec<Component>,
    /// Each `req=` attribute: alternatives, each a group of patterns that
    /// must all be present.
    pub req: Vec<Vec<Vec<String>>>,
    /// Patterns of AIs this one may not appear with.
    pub ex: Vec<String>,
    /// Digital Link primary key: its alternative qualifier sequences
    /// (one empty sequence when it takes no qualifiers).
    pub dl_pkey: Option<Vec<Vec<String>>>,
    /// The title.
    pub title: String,
}

impl AiEntry {
    /// Fewest characters of a value.
    pub fn min_len(&self) -> usize {
        self.components
            .iter()
            .filter(|c| !c.optional)
            .map(|c| c.min)
            .sum()
    }

    /// Most characters of a value.
    pub fn max_len(&self) -> usize {
        self.components.iter().map(|c| c.max).sum()
    }

    /// Whether the AI is a Digital Link primary key.
    pub fn is_primary_key(&self) -> bool {
        self.dl_pkey.is_some()
    }

    /// Every AI that may qualify this primary key.
    pub fn qualifiers(&self) -> impl Iterator<Item = &str> {
        self.dl_pkey.iter().flatten().flatten().map(String::as_str)
    }
}

/// A dictionary line that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GS1 syntax dictionary line {line}: {reason}")]
pub struct DictionaryError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// The syntax dictionary.
#[derive(Debug, Clone)]
pub struct Dictionary {
    /// Entries by [`slot`]: AIs are 2 to 4 digits, so a table of 30,000
    /// slots answers a lookup with one index.
    entries: Vec<Option<Box<AiEntry>>>,
    /// AI lengths by their first two digits (0: no AI starts so), as the
    /// dictionary defines them.
    lengths: [u8; 100],
}

/// The table slot of an AI of 2 to 4 digits.
fn slot(ai: &str) -> Option<usize> {
    let b = ai.as_bytes();
    if !(2..=4).contains(&b.len()) || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = b
        .iter()
        .fold(0usize, |acc, d| acc * 10 + usize::from(d - b'0'));
    Some((b.len() - 2) * 10_000 + v)
}

impl Dictionary {
    /// The dictionary compiled into idres.
    pub fn builtin() -> Self {
        #[allow(clippy::expect_used)]
        Self::parse(BUILTIN).expect("the compiled-in GS1 syntax dictionary parses")
    }

    /// Reads a dictionary in the GS1 Barcode Syntax Dictionary format.
    pub fn parse(text: &str) -> Result<Self, DictionaryError> {
        let mut entries: Vec<Option<Box<AiEntry>>> = (0..30_000).map(|_| None).collect();
        let mut lengths = [0u8; 100];
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let err = |reason: String| DictionaryError { line, reason };
            let (body, title) = match raw.find('#') {
                Some(i) => (&raw[..i], raw[i + 1..].trim()),
                None => (raw, ""),
            };
            let mut words = body.split_whitespace().peekable();
            let Some(ais) = words.next() else { continue };
            let range = ai_range(ais).ok_or_else(|| err(format!("bad AI or range {ais:?}")))?;
            let mut fixed_length = false;
            let mut dl_attribute = false;
            if let Some(w) = words.peek() {
                if !w.starts_with(['N', 'X', 'Y', 'Z', '[']) {
                    for f in w.chars() {
                        match f {
                            '*' => fixed_length = true,
                            '?' => dl_attribute = true,
                            _ => {}
                        }
                    }
                    words.next();
                }
            }
            let mut components = Vec::new();
            let mut req = Vec::new();
            let mut ex = Vec::new();
            let mut dl_pkey = None;
            for w in words {
                if let Some(v) = w.strip_prefix("req=") {
                    req.push(
                        v.split(',')
                            .map(|alt| alt.split('+').map(str::to_owned).collect())
                            .collect(),
                    );
                } else if let Some(v) = w.strip_prefix("ex=") {
                    ex.extend(v.split(',').map(str::to_owned));
                } else if w == "dlpkey" {
                    dl_pkey = Some(vec![Vec::new()]);
                } else if let Some(v) = w.strip_prefix("dlpkey=") {
                    dl_pkey = Some(
                        v.split('|')
                            .map(|seq| seq.split(',').map(str::to_owned).collect())
                            .collect(),
                    );
                } else if w.contains('=') {
                    // An attribute this build does not use.
                } else {
                    components
                        .push(component(w).ok_or_else(|| err(format!("bad component {w:?}")))?);
                }
            }
            if components.is_empty() {
                return Err(err("no specification".into()));
            }
            for ai in range {
                let entry = AiEntry {
                    ai: ai.clone(),
                    fixed_length,
                    dl_attribute,
                    components: components.clone(),
                    req: req.clone(),
                    ex: ex.clone(),
                    dl_pkey: dl_pkey.clone(),
                    title: title.to_owned(),
                };
                let b = ai.as_bytes();
                lengths[usize::from(b[0] - b'0') * 10 + usize::from(b[1] - b'0')] = ai.len() as u8;
                if let Some(i) = slot(&ai) {
                    entries[i] = Some(Box::new(entry));
                }
            }
        }
        Ok(Self { entries, lengths })
    }

    /// The entry of one AI.
    pub fn get(&self, ai: &str) -> Option<&AiEntry> {
        self.entries.get(slot(ai)?)?.as_deref()
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = &AiEntry> {
        self.entries.iter().filter_map(|e| e.as_deref())
    }

    /// The AI at the start of `data` (AIs are prefix-free: the first two
    /// digits fix the AI's length).
    pub fn ai_at<'d>(&self, data: &'d str) -> Option<&'d str> {
        let b = data.as_bytes();
        if b.len() < 2 || !b[0].is_ascii_digit() || !b[1].is_ascii_digit() {
            return None;
        }
        let len =
            usize::from(self.lengths[usize::from(b[0] - b'0') * 10 + usize::from(b[1] - b'0')]);
        if len == 0 {
            return None;
        }
        let ai = data.get(..len)?;
        self.get(ai).is_some().then_some(ai)
    }

    /// Whether AIs starting with these two digits need no FNC1 after
    /// their value (the General Specifications' table of pre-defined
    /// lengths).
    pub fn predefined_length(&self, ai: &str) -> bool {
        self.get(ai).is_some_and(|e| e.fixed_length)
    }
}

fn ai_range(s: &str) -> Option<Vec<String>> {
    let ok = |a: &str| (2..=4).contains(&a.len()) && a.bytes().all(|b| b.is_ascii_digit());
    match s.split_once('-') {
        None => ok(s).then(|| vec![s.to_owned()]),
        Some((a, b)) => {
            if !ok(a) || !ok(b) || a.len() != b.len() {
                return None;
            }
            let (lo, hi): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
            if lo > hi || hi - lo > 1000 {
                return None;
            }
            Some((lo..=hi).map(|v| format!("{v:0w$}", w = a.len())).collect())
        }
    }
}

fn component(w: &str) -> Option<Component> {
    let joined;
    let (optional, w) = match w.strip_prefix('[') {
        Some(rest) => {
            let close = rest.find(']')?;
            joined = format!("{}{}", &rest[..close], &rest[close + 1..]);
            (true, joined.as_str())
        }
        None => (false, w),
    };
    let mut parts = w.split(',');
    let spec = parts.next()?;
    let cset = match spec.as_bytes().first()? {
        b'N' => Cset::N,
        b'X' => Cset::X,
        b'Y' => Cset::Y,
        b'Z' => Cset::Z,
        _ => return None,
    };
    let len = &spec[1..];
    let (min, max) = match len.strip_prefix("..") {
        Some(max) => (1, max.parse().ok()?),
        None => {
            let n = len.parse().ok()?;
            (n, n)
        }
    };
    if max == 0 {
        return None;
    }
    Some(Component {
        cset,
        min,
        max,
        optional,
        linters: parts.map(str::to_owned).collect(),
    })
}

/// Whether `ai` matches a dictionary pattern (`n` stands for any digit).
pub fn pattern_matches(pattern: &str, ai: &str) -> bool {
    pattern.len() == ai.len()
        && pattern
            .bytes()
            .zip(ai.bytes())
            .all(|(p, a)| p == a || (p == b'n' && a.is_ascii_digit()))
}

impl Cset {
    /// Name used in error messages.
    pub fn describe(self) -> &'static str {
        self.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_reads() {
        let d = Dictionary::builtin();
        let gtin = d.get("01").unwrap();
        assert!(gtin.fixed_length && gtin.dl_attribute);
        assert_eq!(gtin.max_len(), 14);
        assert_eq!(
            gtin.dl_pkey,
            Some(vec![
                vec!["22".to_owned(), "10".into(), "21".into()],
                vec!["235".into()]
            ])
        );
        assert_eq!(d.ai_at("3103000195"), Some("3103"));
        assert_eq!(d.ai_at("10ABC"), Some("10"));
        assert!(d.get("8003").unwrap().components.len() == 3);
        assert!(pattern_matches("310n", "3105"));
        assert!(!pattern_matches("310n", "311"));
    }
}
