//! Page tokens: opaque to clients, a kind tag and a position inside, so
//! that a token from one kind of listing is refused by another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::error::{ServiceError, ServiceResult};

/// A token for position `pos` of a listing of kind `kind`.
pub fn encode(kind: &str, pos: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{pos}"))
}

/// The position in `token` (None for an empty token, the first page).
pub fn decode(token: &str, kind: &str, field: &str) -> ServiceResult<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || ServiceError::invalid(field, "not a page token of this listing");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (k, pos) = text.split_once(':').ok_or_else(bad)?;
    if k != kind {
        return Err(bad());
    }
    Ok(Some(pos.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_keep_their_kind() {
        let t = encode("p", "88.118.8/a:b");
        assert_eq!(
            decode(&t, "p", "page_token").unwrap().as_deref(),
            Some("88.118.8/a:b")
        );
        assert!(decode(&t, "v", "page_token").is_err());
        assert!(decode("!!", "p", "page_token").is_err());
        assert_eq!(decode("", "p", "page_token").unwrap(), None);
    }
}
