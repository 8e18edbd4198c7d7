//! Query strings, read without a framework extractor so that a malformed
//! parameter becomes a JSON error with a sentence rather than a plain-text
//! rejection, and so that repeated parameters (`index=1&index=2`) keep
//! their order.

use crate::ApiError;

/// The parameters of one request, in order.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses `application/x-www-form-urlencoded` pairs; bytes that are
    /// not UTF-8 become U+FFFD.
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            raw.map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        )
    }

    /// Every pair.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// Every value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`.
    pub fn first<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.all(name).next()
    }

    /// Whether `name` is present at all (`?noredirect`).
    pub fn has(&self, name: &str) -> bool {
        self.first(name).is_some()
    }

    /// A boolean flag: `true`/`false` (any case), `1`/`0`, or present
    /// without a value (true).
    pub fn flag(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.first(name) {
            None => Ok(None),
            Some(v) if v.is_empty() || v == "1" || v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v == "0" || v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad_request(format!(
                "parameter {name} must be true or false, not {v:?}"
            ))),
        }
    }

    /// Every value of `name` as a value index (1 to 2147483647).
    pub fn indexes(&self, name: &str) -> Result<Vec<u32>, ApiError> {
        self.all(name)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|i| (1..=i32::MAX as u32).contains(i))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "parameter {name} must be a value index from 1 to 2147483647, not {v:?}"
                        ))
                    })
            })
            .collect()
    }

    /// A non-negative number, `default` when absent.
    pub fn number(&self, name: &str, default: usize) -> Result<usize, ApiError> {
        match self.first(name) {
            None => Ok(default),
            Some(v) => v.trim().parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!(
                    "parameter {name} must be a non-negative integer, not {v:?}"
                ))
            }),
        }
    }
}

/// The items of a weighted header list (`Accept`, `Accept-Language`):
/// each lower-cased with its q-value (1 when absent; 0, "not acceptable",
/// kept), best first, equal weights in the order given. At most 32 items
/// are read.
pub(crate) fn weighted(raw: &str) -> Vec<(String, f32)> {
    let mut items: Vec<(usize, String, f32)> = raw
        .split(',')
        .take(32)
        .enumerate()
        .filter_map(|(i, part)| {
            let mut it = part.split(';');
            let item = it.next()?.trim().to_ascii_lowercase();
            let q = it
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                })
                .unwrap_or(1.0);
            (!item.is_empty()).then_some((i, item, q))
        })
        .collect();
    items.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
    items.into_iter().map(|(_, item, q)| (item, q)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_flags_and_numbers() {
        let q = Query::parse(Some(
            "index=1&index=300&pretty&overwrite=FALSE&page=2&x=%2Fa+b",
        ));
        assert_eq!(q.indexes("index").unwrap(), [1, 300]);
        assert_eq!(q.flag("pretty").unwrap(), Some(true));
        assert_eq!(q.flag("overwrite").unwrap(), Some(false));
        assert_eq!(q.flag("absent").unwrap(), None);
        assert_eq!(q.number("page", 0).unwrap(), 2);
        assert_eq!(q.first("x"), Some("/a b"));
        assert!(Query::parse(Some("index=0")).indexes("index").is_err());
        assert!(Query::parse(Some("index=x")).indexes("index").is_err());
        assert!(Query::parse(Some("pretty=maybe")).flag("pretty").is_err());
        assert!(Query::parse(Some("page=-1")).number("page", 0).is_err());
    }
}
