//! Key ranges of prefix filters, shared by the sync source and replicas.
//!
//! A prefix `P` covers the handles whose prefix is `P` or derived from it:
//! canonical keys starting with `P/` or `P.`. Because `.` (0x2E) and `/`
//! (0x2F) are neighbours, those keys form one contiguous range in key
//! order, which a store scan can walk from just after `P`.

use idres_model::Prefix;

/// A filter: the whole store, or some prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Canonical prefixes, none covering another, in range order; empty
    /// for everything.
    pub prefixes: Vec<String>,
}

impl Filter {
    /// Builds a filter from request strings (`field` names them in errors).
    pub fn parse(raw: &[String]) -> Result<Self, (usize, String)> {
        let mut ps = Vec::with_capacity(raw.len());
        for (i, p) in raw.iter().enumerate() {
            let p = Prefix::parse(p).map_err(|e| (i, e.to_string()))?;
            ps.push(p);
        }
        let mut kept: Vec<Prefix> = Vec::new();
        for p in &ps {
            if !ps.iter().any(|q| q != p && q.covers(p)) && !kept.contains(p) {
                kept.push(p.clone());
            }
        }
        let mut prefixes: Vec<String> = kept.into_iter().map(|p| p.as_str().to_owned()).collect();
        prefixes.sort_by_key(|p| range_start(p));
        Ok(Self { prefixes })
    }

    /// Whether the filter selects everything.
    pub fn is_all(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// Whether a canonical key is selected.
    pub fn matches(&self, key: &str) -> bool {
        self.is_all() || self.prefixes.iter().any(|p| in_range(p, key))
    }

    /// The ranges to walk: each prefix, or "" for everything.
    pub fn ranges(&self) -> Vec<String> {
        if self.is_all() {
            vec![String::new()]
        } else {
            self.prefixes.clone()
        }
    }
}

fn range_start(p: &str) -> String {
    format!("{p}.")
}

/// Where a key lies relative to the range of prefix `p` ("" = all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Sorts before the range.
    Before,
    /// Inside.
    Inside,
    /// Sorts after the range.
    After,
}

/// Position of a canonical key relative to the range of `p`.
pub fn position(p: &str, key: &str) -> Position {
    if p.is_empty() || in_range(p, key) {
        return Position::Inside;
    }
    if key < p || (key.starts_with(p) && key.as_bytes().get(p.len()).is_some_and(|c| *c < b'.')) {
        Position::Before
    } else {
        Position::After
    }
}

/// Whether a canonical key is under prefix `p` ("" = all).
pub fn in_range(p: &str, key: &str) -> bool {
    p.is_empty()
        || (key.len() > p.len()
            && key.starts_with(p)
            && matches!(key.as_bytes().get(p.len()), Some(b'/' | b'.')))
}

/// The key a scan of `p`'s range starts after (`None`: the beginning).
pub fn scan_start(p: &str) -> Option<String> {
    (!p.is_empty()).then(|| p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_contiguous_and_ordered() {
        let f = Filter::parse(&[
            "88.1".into(),
            "0.na".into(),
            "88.1.2".into(),
            "88.1-x".into(),
        ])
        .unwrap();
        assert_eq!(f.prefixes, ["0.NA", "88.1-X", "88.1"]);
        assert!(f.matches("88.1/a"));
        assert!(f.matches("88.1.7/a"));
        assert!(!f.matches("88.10/a"));
        assert!(f.matches("0.NA/88.1"));
        assert_eq!(position("88.1", "88.1-x/a"), Position::Before);
        assert_eq!(position("88.1", "88.0/a"), Position::Before);
        assert_eq!(position("88.1", "88.1./a"), Position::Inside);
        assert_eq!(position("88.1", "88.10/a"), Position::After);
        assert_eq!(position("88.1", "88.2/a"), Position::After);
        assert_eq!(position("", "x/y"), Position::Inside);
        assert!(Filter::parse(&["88..1".into()]).is_err());
    }
}
