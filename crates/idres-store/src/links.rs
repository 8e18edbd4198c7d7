//! The link index: which record claims each linked identifier.
//!
//! A record names identifiers of other schemes in typed values (`GS1.DL`,
//! `ECODE`, `OID`, `CID`, …); [`idres_schemes::Schemes::link_key`] gives
//! each its link key. Each link key has one index key, `l` + link key,
//! whose value is the handles that claim it (NUL-separated, in handle
//! order; one unless the scheme's links may be shared), written in the
//! same batch as the record. A lookup is one point read; a prefix scan
//! lists every identifier below one (every serial under a GTIN+lot). Only
//! values with public read are indexed, as for the value index.

use idres_model::{HandleValue, Permissions};
use idres_schemes::Schemes;

use crate::keys;

/// Most records returned for one shared link key.
pub const MAX_CLAIMS: usize = 64;

/// Version of this layout, part of the configuration fingerprint so that
/// an index of another layout is rebuilt.
pub const LAYOUT: &str = "links-v2";

/// The index key of one link key: `l` + key.
pub fn key(link_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + link_key.len());
    k.push(keys::LINK);
    k.extend_from_slice(link_key.as_bytes());
    k
}

/// The claimants stored under a link key.
pub fn decode(v: &[u8]) -> Vec<String> {
    v.split(|b| *b == 0)
        .filter(|h| !h.is_empty())
        .filter_map(|h| std::str::from_utf8(h).ok().map(str::to_owned))
        .collect()
}

/// The stored form of claimants (sorted, without repeats).
pub fn encode(handles: &[String]) -> Vec<u8> {
    handles.join("\0").into_bytes()
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

/// Claimants of recently asked link keys (those that have none too), kept
/// current by the writer after every commit, so that a lookup through a
/// link costs a hash probe rather than a tree descent. Bounded: past
/// `cap` keys, new ones are no longer kept.
#[derive(Debug)]
pub(crate) struct LinkCache {
    map: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<[String]>>>,
    /// Bumped by every update, so that a fill read from the database
    /// before an update is not kept after it.
    generation: std::sync::atomic::AtomicU64,
    cap: usize,
}

impl LinkCache {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: Default::default(),
            generation: Default::default(),
            cap,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<std::sync::Arc<[String]>> {
        if self.cap == 0 {
            return None;
        }
        self.map.read().ok()?.get(key).cloned()
    }

    /// The generation a reader saw before it read the database.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Keeps what a reader found, unless the writer changed links since.
    pub(crate) fn fill(&self, key: &str, claimants: &[String], seen: u64) {
        if self.cap == 0 {
            return;
        }
        let Ok(mut m) = self.map.write() else { return };
        if self.generation() != seen || (m.len() >= self.cap && !m.contains_key(key)) {
            return;
        }
        m.insert(key.to_owned(), claimants.into());
    }

    /// The writer's changes of one group, after they reached the database.
    pub(crate) fn update(&self, changes: &std::collections::HashMap<String, Vec<String>>) {
        if self.cap == 0 || changes.is_empty() {
            return;
        }
        let Ok(mut m) = self.map.write() else { return };
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        for (k, v) in changes {
            if m.contains_key(k) || m.len() < self.cap {
                m.insert(k.clone(), v.as_slice().into());
            }
        }
    }
}
