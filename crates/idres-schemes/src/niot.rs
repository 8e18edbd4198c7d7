//! NIoT (the national IoT identifier platform's heterogeneous model): a
//! standard identification code is bound to a coding rule (which scheme
//! reads the code) and a resolution rule (resolve the code itself through
//! the link index, or resolve through the identifier it carries). The
//! rules are a table in the configuration.

use regex::Regex;
use serde::Deserialize;

/// How a code of a rule resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// The whole code is a link key (`niot:CODE`) of a record.
    #[default]
    Link,
    /// The code's body is an identifier of the rule's coding scheme and
    /// resolves as that identifier does.
    Through,
}

/// One rule as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule's name.
    pub name: String,
    /// The literal start of the codes of this rule (e.g. `NIOT.GS1.`).
    pub code: String,
    /// A regular expression the rest of the code must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The scheme that reads the rest of the code (`gs1`, `ecode`, `oid`,
    /// `handle`, a configured scheme, or `native` for none).
    #[serde(default = "native")]
    pub coding: String,
    /// How a code resolves.
    #[serde(default)]
    pub resolution: Resolution,
}

fn native() -> String {
    "native".into()
}

/// A rule ready for use.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// The start of its codes.
    pub code: String,
    /// The pattern of the rest.
    pub pattern: Option<Regex>,
    /// The coding scheme.
    pub coding: String,
    /// The resolution rule.
    pub resolution: Resolution,
}

/// The rule table.
#[derive(Debug, Clone, Default)]
pub struct Rules(pub Vec<Rule>);

impl Rules {
    /// Compiles the configured rules.
    pub fn new(rules: &[RuleConfig]) -> Result<Self, String> {
        let mut out = Vec::new();
        for r in rules {
            if r.code.is_empty() {
                return Err(format!("NIoT rule {}: code must not be empty", r.name));
            }
            if r.resolution == Resolution::Through && r.coding == "native" {
                return Err(format!(
                    "NIoT rule {}: resolution \"through\" needs a coding scheme",
                    r.name
                ));
            }
            let pattern = match &r.pattern {
                Some(p) => Some(
                    Regex::new(&format!("^(?:{p})$"))
                        .map_err(|e| format!("NIoT rule {}: pattern: {e}", r.name))?,
                ),
                None => None,
            };
            out.push(Rule {
                name: r.name.clone(),
                code: r.code.clone(),
                pattern,
                coding: r.coding.to_ascii_lowercase(),
                resolution: r.resolution,
            });
        }
        // Longest code first, so that a more specific rule wins.
        out.sort_by_key(|r| std::cmp::Reverse(r.code.len()));
        Ok(Self(out))
    }

    /// Whether a rule takes `s`.
    pub fn matches(&self, s: &str) -> bool {
        self.find(s).is_ok()
    }

    /// The rule that takes `s` and the rest of the code after its start.
    pub fn find<'s>(&self, s: &'s str) -> Result<(&Rule, &'s str), String> {
        if self.0.is_empty() {
            return Err("no NIoT rules are configured".into());
        }
        let mut near = None;
        for r in &self.0 {
            let Some(body) = s.strip_prefix(r.code.as_str()) else {
                continue;
            };
            match &r.pattern {
                Some(p) if !p.is_match(body) => near = Some(r),
                _ => return Ok((r, body)),
            }
        }
        Err(match near {
            Some(r) => format!(
                "{s:?} starts like rule {} but its rest does not match {}",
                r.name,
                r.pattern.as_ref().map(|p| p.as_str()).unwrap_or("")
            ),
            None => format!("no NIoT rule takes {s:?}"),
        })
    }
}
