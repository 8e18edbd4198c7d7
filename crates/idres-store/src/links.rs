//! The link index: which record claims each linked identifier.
//!
//! A record names identifiers of other schemes in typed values (`GS1.DL`,
//! `ECODE`, `OID`, `CID`, …); [`idres_schemes::Schemes::link_key`] gives
//! each its link key. Each claim is a key `l` + link key + NUL + handle,
//! written in the same batch as the record. Only values with public read
//! are indexed, as for the value index.

use idres_model::{HandleValue, Permissions};
use idres_schemes::Schemes;

use crate::keys;

/// Most records returned for one shared link key.
pub const MAX_CLAIMS: usize = 64;

/// The range prefix of one link key: `l` + key + NUL.
pub fn claim_prefix(link_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + link_key.len());
    k.push(keys::LINK);
    k.extend_from_slice(link_key.as_bytes());
    k.push(0);
    k
}

/// The index key of one claim.
pub fn claim(link_key: &str, handle: &str) -> Vec<u8> {
    let mut k = claim_prefix(link_key);
    k.extend_from_slice(handle.as_bytes());
    k
}

/// Splits an index key after `l` into (link key, handle).
pub fn split(rest: &[u8]) -> Option<(&str, &str)> {
    let nul = rest.iter().position(|b| *b == 0)?;
    Some((
        std::str::from_utf8(&rest[..nul]).ok()?,
        std::str::from_utf8(&rest[nul + 1..]).ok()?,
    ))
}

/// The link keys a record's values claim, sorted and without repeats;
/// `Err` names the first value whose identifier is not valid.
pub fn of(schemes: &Schemes, values: &[HandleValue]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for v in values {
        if let Some(Err(reason)) = schemes.check_value(&v.value_type, &v.data) {
            return Err(format!("value {}: {reason}", v.index));
        }
        let Some(r) = schemes.link_key(&v.value_type, &v.data) else {
            continue;
        };
        let key = r.map_err(|e| format!("value {}: {e}", v.index))?;
        if v.permissions.0 & Permissions::PUBLIC_READ != 0 {
            out.push(key);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
