//! Resolution of an identifier of any scheme: the one rule every face
//! uses. A handle (or an OID's own record) is looked up directly; a linked
//! identifier through the link index, from its most specific level up
//! (GS1: serial, then lot, then the GTIN alone).

use idres_schemes::{Level, Recognised, SchemeError, Schemes};
use idres_store::{RecordBytes, Store, StoreError};

/// A record reached from an identifier.
#[derive(Debug, Clone)]
pub struct Found {
    /// The record's handle.
    pub handle: String,
    /// The level it was reached at (`None`: the handle itself).
    pub level: Option<Level>,
    /// Whether that is the identifier's own level.
    pub exact: bool,
    /// How many records claim that level (more than one only where the
    /// configuration lets a scheme's links be shared).
    pub claims: usize,
    /// The record.
    pub record: RecordBytes,
}

/// Why an identifier did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum LinkedError {
    /// No scheme reads it, or its scheme refuses it.
    #[error("{0}")]
    Invalid(#[from] SchemeError),
    /// Nothing is linked to it or to a level above it.
    #[error("no record for {0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Finds the record an identifier reads as.
pub fn find(store: &dyn Store, r: &Recognised) -> Result<Option<Found>, StoreError> {
    if let Some(h) = &r.direct {
        if let Some(record) = store.get(h)? {
            return Ok(Some(Found {
                handle: h.clone(),
                level: None,
                exact: true,
                claims: 1,
                record,
            }));
        }
    }
    for (i, level) in r.levels.iter().enumerate() {
        let claims = store.find_link(&level.key)?;
        for h in &claims {
            if let Some(record) = store.get(h)? {
                return Ok(Some(Found {
                    handle: h.clone(),
                    level: Some(level.clone()),
                    exact: i == 0,
                    claims: claims.len(),
                    record,
                }));
            }
        }
    }
    Ok(None)
}

/// Reads an identifier the way lookups by handle do: a scheme prefix
/// (`gs1:`, `ecode:`, …) decides; a string with a `/` that is not a URI or
/// element string is a handle, without trying the other schemes; anything
/// else goes through [`Schemes::recognise`].
pub fn read(schemes: &Schemes, raw: &str) -> Result<Recognised, SchemeError> {
    if let Some(r) = schemes.linked_form(raw) {
        return r;
    }
    let plain_handle = raw.contains('/')
        && !raw.contains("://")
        && !raw.starts_with(['(', ']', '^'])
        && !raw.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"));
    if plain_handle && raw.len() <= idres_schemes::MAX_ID_LEN {
        return Ok(Recognised {
            scheme: "handle".into(),
            form: "Handle".into(),
            canonical: raw.to_owned(),
            direct: Some(raw.to_owned()),
            levels: Vec::new(),
            gs1: None,
        });
    }
    schemes.recognise(raw)
}

/// Reads `id` with the schemes and finds its record.
pub fn resolve(
    store: &dyn Store,
    schemes: &Schemes,
    id: &str,
) -> Result<(Recognised, Found), LinkedError> {
    let r = schemes.recognise(id)?;
    match find(store, &r)? {
        Some(f) => Ok((r, f)),
        None => Err(LinkedError::NotFound(r.canonical)),
    }
}
