//! GS1 element strings: a sequence of AIs with their values, checked
//! against the syntax dictionary.

use std::fmt::Write as _;

use super::dict::{pattern_matches, AiEntry, Dictionary};
use super::lint;
use super::Gs1Error;

/// Longest AI value the parsers take (the syntax engine's
/// `MAX_AI_VALUE_LEN`).
pub const MAX_AI_VALUE_LEN: usize = 90;

/// Most AIs in one element string.
pub const MAX_AIS: usize = 64;

/// One AI and its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    /// The AI.
    pub ai: String,
    /// Its value.
    pub value: String,
}

/// AIs with values, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElementString(pub Vec<Element>);

impl ElementString {
    /// The element string with `^` for FNC1: a leading `^`, and a `^`
    /// after each value of variable length that is not the last.
    pub fn to_caret(&self, dict: &Dictionary) -> String {
        let mut out = String::from("^");
        let n = self.0.len();
        for (i, e) in self.0.iter().enumerate() {
            out.push_str(&e.ai);
            out.push_str(&e.value);
            if i + 1 < n && !dict.predefined_length(&e.ai) {
                out.push('^');
            }
        }
        out
    }

    /// The human-readable form, `(01)09521234543213(10)ABC`.
    pub fn to_bracketed(&self) -> String {
        let mut out = String::new();
        for e in &self.0 {
            let _ = write!(out, "({}){}", e.ai, e.value);
        }
        out
    }

    /// The value of one AI.
    pub fn get(&self, ai: &str) -> Option<&str> {
        self.0.iter().find(|e| e.ai == ai).map(|e| e.value.as_str())
    }
}

/// Checks a value against its AI's components and linters.
pub fn check_value(entry: &AiEntry, value: &str) -> Result<(), Gs1Error> {
    let fault = |reason: String| Gs1Error::Value {
        ai: entry.ai.clone(),
        reason,
    };
    if value.is_empty() {
        return Err(fault("the value is empty".into()));
    }
    if let Some(c) = value.chars().find(|c| !c.is_ascii()) {
        return Err(fault(format!(
            "character {c:?} is not allowed (no GS1 character set has it)"
        )));
    }
    if value.len() > MAX_AI_VALUE_LEN {
        return Err(fault(format!(
            "the value has {} characters, more than {MAX_AI_VALUE_LEN}",
            value.len()
        )));
    }
    let max = entry.max_len();
    let min = entry.min_len();
    if value.len() > max {
        return Err(fault(format!(
            "the value has {} characters; at most {max} are allowed",
            value.len()
        )));
    }
    if value.len() < min {
        return Err(fault(format!(
            "the value has {} characters; at least {min} are needed",
            value.len()
        )));
    }
    let mut rest = value;
    for c in &entry.components {
        if rest.is_empty() {
            if c.optional {
                break;
            }
            return Err(fault("the value is too short".into()));
        }
        let take = if c.min == c.max {
            if rest.len() < c.min {
                return Err(fault(format!(
                    "a component needs {} characters; {} are left",
                    c.min,
                    rest.len()
                )));
            }
            c.min
        } else {
            rest.len().min(c.max)
        };
        let (part, tail) = rest.split_at(take);
        if let Some(bad) = part.bytes().find(|b| !c.cset.allows(*b)) {
            return Err(fault(format!(
                "character {:?} is not allowed ({} only)",
                bad as char,
                c.cset.describe()
            )));
        }
        for l in &c.linters {
            lint::lint(l, part).map_err(&fault)?;
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(fault("the value is too long".into()));
    }
    Ok(())
}

/// Checks every value, that no AI repeats with a different value, and
/// the dictionary's mandatory associations (`req`) and exclusions (`ex`).
pub fn check(dict: &Dictionary, es: &ElementString) -> Result<(), Gs1Error> {
    check_with(dict, es, false)
}

/// [`check`], taking AIs the dictionary does not know when `unknown_ok`
/// (their values are then only limited in length).
pub fn check_with(dict: &Dictionary, es: &ElementString, unknown_ok: bool) -> Result<(), Gs1Error> {
    if es.0.len() > MAX_AIS {
        return Err(Gs1Error::Syntax(format!(
            "{} AIs; at most {MAX_AIS} are taken",
            es.0.len()
        )));
    }
    for (i, e) in es.0.iter().enumerate() {
        match dict.get(&e.ai) {
            Some(entry) => check_value(entry, &e.value)?,
            None if unknown_ok => {
                if e.value.is_empty() || e.value.len() > MAX_AI_VALUE_LEN {
                    return Err(Gs1Error::Value {
                        ai: e.ai.clone(),
                        reason: format!("the value must have 1 to {MAX_AI_VALUE_LEN} characters"),
                    });
                }
            }
            None => return Err(Gs1Error::UnknownAi(e.ai.clone())),
        }
        if let Some(prev) = es.0[..i].iter().find(|p| p.ai == e.ai) {
            if prev.value != e.value {
                return Err(Gs1Error::Syntax(format!(
                    "AI ({}) appears twice with different values",
                    e.ai
                )));
            }
        }
    }
    associations(dict, es)
}

/// The `req` and `ex` attributes over the whole element string.
pub fn associations(dict: &Dictionary, es: &ElementString) -> Result<(), Gs1Error> {
    let all: Vec<&Element> = es.0.iter().collect();
    associations_of(dict, &all)
}

/// [`associations`] over elements held elsewhere.
pub fn associations_of(dict: &Dictionary, es: &[&Element]) -> Result<(), Gs1Error> {
    let present = |pattern: &str, not: &str| {
        es.iter()
            .any(|e| e.ai != not && pattern_matches(pattern, &e.ai))
    };
    for e in es {
        let Some(entry) = dict.get(&e.ai) else {
            continue;
        };
        for ex in &entry.ex {
            if present(ex, &e.ai) {
                let other = es
                    .iter()
                    .find(|o| o.ai != e.ai && pattern_matches(ex, &o.ai))
                    .map(|o| o.ai.as_str())
                    .unwrap_or(ex);
                return Err(Gs1Error::Association(format!(
                    "AI ({}) may not appear with AI ({other})",
                    e.ai
                )));
            }
        }
        for req in &entry.req {
            let met = req.iter().any(|group| group.iter().all(|p| present(p, "")));
            if !met {
                let wanted: Vec<String> = req
                    .iter()
                    .map(|g| {
                        g.iter()
                            .map(|p| format!("({p})"))
                            .collect::<Vec<_>>()
                            .join("+")
                    })
                    .collect();
                return Err(Gs1Error::Association(format!(
                    "AI ({}) needs one of {} with it",
                    e.ai,
                    wanted.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Parses `(01)09521234543213(10)ABC` (values may not contain `(`).
pub fn parse_bracketed(dict: &Dictionary, s: &str) -> Result<ElementString, Gs1Error> {
    parse_bracketed_with(dict, s, false)
}

/// [`parse_bracketed`], taking unknown AIs when `unknown_ok`.
pub fn parse_bracketed_with(
    dict: &Dictionary,
    s: &str,
    unknown_ok: bool,
) -> Result<ElementString, Gs1Error> {
    if !s.is_ascii() {
        return Err(Gs1Error::Syntax(
            "an element string has only ASCII characters".into(),
        ));
    }
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let r = rest.strip_prefix('(').ok_or_else(|| {
            Gs1Error::Syntax("an AI must be written in brackets, e.g. (01)".into())
        })?;
        let close = r
            .find(')')
            .ok_or_else(|| Gs1Error::Syntax("an AI's bracket is not closed".into()))?;
        let ai = &r[..close];
        if !(2..=4).contains(&ai.len()) || !ai.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Gs1Error::Syntax(format!("({ai}) is not an AI")));
        }
        if dict.get(ai).is_none() && !unknown_ok {
            return Err(Gs1Error::UnknownAi(ai.to_owned()));
        }
        let after = &r[close + 1..];
        let end = after.find('(').unwrap_or(after.len());
        out.push(Element {
            ai: ai.to_owned(),
            value: after[..end].to_owned(),
        });
        rest = &after[end..];
        if out.len() > MAX_AIS {
            return Err(Gs1Error::Syntax(format!("more than {MAX_AIS} AIs")));
        }
    }
    if out.is_empty() {
        return Err(Gs1Error::Syntax("no AIs".into()));
    }
    let es = ElementString(out);
    check_with(dict, &es, unknown_ok)?;
    Ok(es)
}

/// Parses a raw element string as a scanner sends it: `]C1`, `]d2`,
/// `]Q3` or `^` before the first AI, and `^` or the GS character (0x1D)
/// for FNC1 between values.
pub fn parse_raw(dict: &Dictionary, s: &str) -> Result<ElementString, Gs1Error> {
    if !s.is_ascii() {
        return Err(Gs1Error::Syntax(
            "an element string has only ASCII characters".into(),
        ));
    }
    let body = ["]C1", "]e0", "]d2", "]Q3", "^", "\u{1d}"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .ok_or_else(|| Gs1Error::Syntax("an element string starts with FNC1".into()))?;
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let ai = dict
            .ai_at(rest)
            .ok_or_else(|| Gs1Error::UnknownAi(rest.chars().take(4).collect::<String>()))?;
        let entry = dict
            .get(ai)
            .ok_or_else(|| Gs1Error::UnknownAi(ai.to_owned()))?;
        let data = &rest[ai.len()..];
        let value_len = if entry.fixed_length {
            entry.max_len().min(data.len())
        } else {
            data.find(['^', '\u{1d}']).unwrap_or(data.len())
        };
        out.push(Element {
            ai: ai.to_owned(),
            value: data[..value_len].to_owned(),
        });
        rest = &data[value_len..];
        rest = rest
            .strip_prefix('^')
            .or_else(|| rest.strip_prefix('\u{1d}'))
            .unwrap_or(rest);
        if out.len() > MAX_AIS {
            return Err(Gs1Error::Syntax(format!("more than {MAX_AIS} AIs")));
        }
    }
    if out.is_empty() {
        return Err(Gs1Error::Syntax("no AIs".into()));
    }
    let es = ElementString(out);
    check(dict, &es)?;
    Ok(es)
}
