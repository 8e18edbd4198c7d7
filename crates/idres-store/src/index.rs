//! The value index: which handles have a value of a given type and data.
//!
//! Each indexed value has a key `v` + TYPE + NUL + value + NUL + handle,
//! with the type upper-cased and the value lower-cased (ASCII) and cut at
//! [`MAX_INDEXED`] bytes, so that a search by type scans one contiguous
//! range and a pattern with a literal start scans only the part of it that
//! starts with that literal. Only text data is indexed: keys, sites and
//! admin records are binary and never searched.

use idres_model::{types, HandleValue, Permissions};

use crate::keys;

/// Bytes of a value kept in its index key.
pub const MAX_INDEXED: usize = 512;

/// Types whose data is binary or secret and is never indexed.
const UNINDEXED: &[&str] = &[
    types::HS_ADMIN,
    types::HS_SITE,
    types::HS_SITE_PREFIX,
    types::HS_VLIST,
    types::HS_PUBKEY,
    types::HS_SECKEY,
    "HS_CERT",
    "HS_SIGNATURE",
];

/// The range prefix of one type: `v` + TYPE + NUL.
pub fn type_prefix(value_type: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + value_type.len());
    k.push(keys::VALUE);
    k.extend(value_type.bytes().map(|b| b.to_ascii_uppercase()));
    k.push(0);
    k
}

/// Index keys of a record's values. Values without public read are never
/// indexed, so that no search can match or reveal them.
pub fn entries(handle_key: &str, values: &[HandleValue]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for v in values {
        if v.value_type.as_bytes().contains(&0)
            || v.permissions.0 & Permissions::PUBLIC_READ == 0
            || UNINDEXED
                .iter()
                .any(|t| v.value_type.eq_ignore_ascii_case(t))
        {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&v.data) else {
            continue;
        };
        if text.is_empty() || text.as_bytes().contains(&0) {
            continue;
        }
        let mut k = type_prefix(&v.value_type);
        let cut = floor_char_boundary(text, MAX_INDEXED);
        k.extend(text[..cut].bytes().map(|b| b.to_ascii_lowercase()));
        k.push(0);
        k.extend_from_slice(handle_key.as_bytes());
        out.push(k);
    }
    out.sort();
    out.dedup();
    out
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0)
}

/// Splits an index key after its type prefix into (value, handle).
pub fn split_entry(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = rest.iter().position(|b| *b == 0)?;
    Some((&rest[..nul], &rest[nul + 1..]))
}

/// Whether `text` matches the glob `pattern` (`*` = any run), ASCII case
/// ignored.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes())
}

pub(crate) fn glob_bytes(p: &[u8], t: &[u8]) -> bool {
    // Iterative matcher with backtracking to the last star: linear in
    // practice, no recursion on untrusted patterns.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// The literal start of a pattern, lower-cased: the part before its first
/// star.
pub fn literal_start(pattern: &str) -> Vec<u8> {
    pattern
        .bytes()
        .take_while(|b| *b != b'*')
        .map(|b| b.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*example*", "https://EXAMPLE.cn/p"));
        assert!(glob_match("https://example.cn/*", "https://example.cn/p/q"));
        assert!(!glob_match("https://example.cn/*", "http://example.cn/p"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("*", ""));
        assert!(glob_match("exact", "EXACT"));
        assert!(!glob_match("exact", "exactly"));
        assert_eq!(literal_start("HTTPS://x*y"), b"https://x");
    }

    #[test]
    fn entries_skip_binary_and_secret_types() {
        let vals = [
            HandleValue::new(1, "URL", "HTTPS://A/B"),
            HandleValue::new(2, "HS_SECKEY", "secret"),
            HandleValue::new(3, "DESC", vec![0xffu8, 0xfe]),
        ];
        let e = entries("88/X", &vals);
        assert_eq!(e, vec![b"vURL\0https://a/b\088/X".to_vec()]);
    }
}
