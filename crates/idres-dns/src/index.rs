//! Which OIDs have OID records below them, and which are linked from a
//! handle.
//!
//! A name in the ORS zone without a record of its own still exists when an
//! OID below it has one (an empty non-terminal, RFC 8020): `1.2.156` exists
//! if `1.2.156.3001.1` does, and gets NODATA, not NXDOMAIN. Asking the
//! storage engine for the next key after `OID/1.2.156.` answers that, but
//! costs a B-tree seek on every query for a name that does not exist. This
//! index holds the set of OIDs that have records below them, so that such a
//! query costs one hash lookup.
//!
//! A handle may name an OID in a public value of type `OID`; a query for
//! that OID, if it has no record of its own, is answered from the handle's
//! record (see `docs/dns.md`). The index also holds these links, found
//! through the store's value index, so a missing OID costs no search.
//!
//! It is built by scanning the OID keys and links once (in the background; until it
//! is ready the store is asked instead) and then kept exact by the store's
//! change log: before each lookup it compares the store's latest sequence
//! number with the one it has applied, and applies the changes between. A
//! new record adds its ancestors; a deleted one removes each ancestor that
//! no longer has a record below it, as the store tells. A changed handle's
//! links are read again, and each OID it names, or named, is given to the
//! first handle in the value index's order that names it publicly.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use idres_model::oid::{OID_PREFIX, OID_VALUE_TYPE};
use idres_model::{Oid, Prefix};
use idres_store::{ChangeKind, RecordBytes, Store, StoreError};

use crate::views;

/// Changes read from the log at a time while catching up.
const CHUNK: usize = 4096;
/// Keys read from the store at a time while building.
const SCAN: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not built yet: ask the store.
    Building,
    /// Exact as of `seq`.
    Ready,
    /// Given up (too many OIDs, or the change log was trimmed past what
    /// the index had applied): ask the store.
    Off,
}

#[derive(Debug)]
struct Inner {
    state: State,
    seq: u64,
    /// Canonical keys (`OID/1.2.156`) of OIDs with records below them.
    interior: HashSet<Box<str>>,
    /// OID key → the handle linked to it.
    linked: HashMap<Box<str>, Box<str>>,
    /// Handle → the OID keys its public `OID` values name.
    links_of: HashMap<Box<str>, Vec<Box<str>>>,
}

/// What the index knows of an OID without a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// OID records exist below it (an empty non-terminal).
    pub has_descendants: bool,
    /// The handle that names it in a public `OID` value.
    pub linked: Option<String>,
}

/// The OID keys that the public `OID` values of a record name.
pub fn linked_oids(rec: &RecordBytes) -> Vec<Box<str>> {
    let mut out: Vec<Box<str>> = Vec::new();
    for v in views::public_values(rec, 0) {
        if !v.value_type.eq_ignore_ascii_case(OID_VALUE_TYPE) {
            continue;
        }
        let Some(oid) = std::str::from_utf8(v.data)
            .ok()
            .and_then(|s| Oid::parse(s.trim()).ok())
        else {
            continue;
        };
        let key: Box<str> = format!("{OID_PREFIX}/{oid}").into();
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

/// The handle linked to the OID key `oid_key`: the first, in the value
/// index's order, that names it in a public `OID` value.
pub fn claimant(store: &dyn Store, oid_key: &str) -> Result<Option<String>, StoreError> {
    let Some(oid) = oid_key.strip_prefix("OID/") else {
        return Ok(None);
    };
    let mut cursor = None;
    loop {
        let page = store.find_by_value(OID_VALUE_TYPE, oid, cursor.as_deref(), 64)?;
        for h in page.handles {
            if h.starts_with("OID/") {
                continue;
            }
            if let Some(rec) = store.get(&h)? {
                if linked_oids(&rec).iter().any(|o| &**o == oid_key) {
                    return Ok(Some(h));
                }
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(None),
        }
    }
}

/// The set of OIDs with OID records below them.
#[derive(Debug)]
pub struct OidIndex {
    inner: RwLock<Inner>,
    oid_prefix: Prefix,
}

/// Calls `f` with each proper ancestor of the OID key `key`, deepest first:
/// `OID/1.2.3` gives `OID/1.2`, then `OID/1`.
fn ancestors(key: &str, mut f: impl FnMut(&str) -> bool) {
    let Some(oid) = key.strip_prefix("OID/") else {
        return;
    };
    let mut end = oid.len();
    while let Some(dot) = oid[..end].rfind('.') {
        if !f(&key[..4 + dot]) {
            return;
        }
        end = dot;
    }
}

impl OidIndex {
    /// An index, not yet built, of the OID records under `oid_prefix`.
    pub fn new(oid_prefix: Prefix) -> Self {
        Self {
            inner: RwLock::new(Inner {
                state: State::Building,
                seq: 0,
                interior: HashSet::new(),
                linked: HashMap::new(),
                links_of: HashMap::new(),
            }),
            oid_prefix,
        }
    }

    /// Scans the store's OID keys and makes the index ready. Gives up,
    /// leaving lookups to the store, past `max_records` OIDs.
    pub fn build(&self, store: &dyn Store, max_records: usize) -> Result<(), StoreError> {
        let from = store.last_seq();
        let mut interior: HashSet<Box<str>> = HashSet::new();
        let mut after: Option<String> = None;
        let mut records = 0usize;
        loop {
            let keys = store.list(&self.oid_prefix, after.as_deref(), SCAN)?;
            records += keys.len();
            if records > max_records {
                tracing::warn!(
                    max_records,
                    "too many OIDs to index; asking the store instead"
                );
                if let Ok(mut inner) = self.inner.write() {
                    inner.state = State::Off;
                }
                return Ok(());
            }
            for k in &keys {
                ancestors(k, |a| interior.insert(a.into()));
            }
            match keys.last() {
                Some(last) if keys.len() == SCAN => after = Some(last.clone()),
                _ => break,
            }
        }
        let mut linked: HashMap<Box<str>, Box<str>> = HashMap::new();
        let mut links_of: HashMap<Box<str>, Vec<Box<str>>> = HashMap::new();
        let mut cursor = None;
        loop {
            let page = store.find_by_value(OID_VALUE_TYPE, "*", cursor.as_deref(), 1000)?;
            for h in page.handles {
                if h.starts_with("OID/") || links_of.contains_key(h.as_str()) {
                    continue;
                }
                let Some(rec) = store.get(&h)? else { continue };
                let oids = linked_oids(&rec);
                if oids.is_empty() {
                    continue;
                }
                // The value index lists by value, then handle: the first
                // handle seen for an OID is its claimant.
                for o in &oids {
                    linked.entry(o.clone()).or_insert_with(|| h.as_str().into());
                }
                links_of.insert(h.into_boxed_str(), oids);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let Ok(mut inner) = self.inner.write() else {
            return Ok(());
        };
        inner.interior = interior;
        inner.linked = linked;
        inner.links_of = links_of;
        inner.seq = from;
        inner.state = State::Ready;
        // Changes made during the scan are applied now, as after any gap.
        self.apply(&mut inner, store, store.last_seq());
        tracing::info!(
            records,
            interior = inner.interior.len(),
            links = inner.linked.len(),
            "OID index built"
        );
        Ok(())
    }

    /// Whether `key` (`OID/1.2.156`) has OID records below it; `None` when
    /// the index cannot tell (not built, or off).
    pub fn has_descendants(&self, store: &dyn Store, key: &str) -> Option<bool> {
        self.lookup(store, key).map(|m| m.has_descendants)
    }

    /// What the index knows of the OID key `key`, which has no record;
    /// `None` when it cannot tell (not built, or off).
    pub fn lookup(&self, store: &dyn Store, key: &str) -> Option<Missing> {
        let latest = store.last_seq();
        let of = |inner: &Inner| Missing {
            has_descendants: inner.interior.contains(key),
            linked: inner.linked.get(key).map(|h| h.to_string()),
        };
        {
            let inner = self.inner.read().ok()?;
            if inner.state != State::Ready {
                return None;
            }
            if inner.seq == latest {
                return Some(of(&inner));
            }
        }
        let mut inner = self.inner.write().ok()?;
        self.apply(&mut inner, store, latest);
        (inner.state == State::Ready).then(|| of(&inner))
    }

    /// Whether the index is built and in use.
    pub fn is_ready(&self) -> bool {
        self.inner
            .read()
            .is_ok_and(|inner| inner.state == State::Ready)
    }

    /// Applies the change log from the index's sequence number up to at
    /// least `latest`.
    fn apply(&self, inner: &mut Inner, store: &dyn Store, latest: u64) {
        while inner.state == State::Ready && inner.seq < latest {
            let changes = match store.changes(inner.seq + 1, CHUNK) {
                Ok(c) => c,
                Err(e) => {
                    // Try again on the next lookup; until then, report the
                    // index as it stands.
                    tracing::warn!(error = %e, "reading the change log failed");
                    return;
                }
            };
            if changes.first().map(|c| c.seq) != Some(inner.seq + 1) {
                tracing::warn!(
                    at = inner.seq,
                    "the change log no longer reaches the OID index; asking the store instead"
                );
                inner.state = State::Off;
                inner.interior = HashSet::new();
                inner.linked = HashMap::new();
                inner.links_of = HashMap::new();
                return;
            }
            for c in &changes {
                if !c.handle.starts_with("OID/") {
                    relink(inner, store, &c.handle);
                    inner.seq = c.seq;
                    continue;
                }
                match c.kind {
                    ChangeKind::Put => {
                        ancestors(&c.handle, |a| {
                            if inner.interior.contains(a) {
                                false
                            } else {
                                inner.interior.insert(a.into());
                                true
                            }
                        });
                    }
                    ChangeKind::Delete => {
                        ancestors(&c.handle, |a| {
                            if self.store_has_below(store, a) != Some(false) {
                                return false;
                            }
                            inner.interior.remove(a);
                            true
                        });
                    }
                }
                inner.seq = c.seq;
            }
        }
    }

    /// Asks the store whether any OID record lies below `key`.
    pub fn store_has_below(&self, store: &dyn Store, key: &str) -> Option<bool> {
        let mut below = String::with_capacity(key.len() + 1);
        below.push_str(key);
        below.push('.');
        match store.list(&self.oid_prefix, Some(&below), 1) {
            Ok(next) => Some(next.first().is_some_and(|k| k.starts_with(&below))),
            Err(e) => {
                tracing::warn!(error = %e, key, "store list failed");
                None
            }
        }
    }
}

/// Reads the links of the changed handle `handle` again and gives each OID
/// it names, or named, to its claimant.
fn relink(inner: &mut Inner, store: &dyn Store, handle: &str) {
    let old = inner.links_of.remove(handle).unwrap_or_default();
    let new = match store.get(handle) {
        Ok(Some(rec)) => linked_oids(&rec),
        _ => Vec::new(),
    };
    if old.is_empty() && new.is_empty() {
        return;
    }
    let mut touched: Vec<Box<str>> = old;
    for o in &new {
        if !touched.contains(o) {
            touched.push(o.clone());
        }
    }
    if !new.is_empty() {
        inner.links_of.insert(handle.into(), new);
    }
    for o in touched {
        match claimant(store, &o) {
            Ok(Some(h)) => {
                inner.linked.insert(o, h.into_boxed_str());
            }
            Ok(None) => {
                inner.linked.remove(&o);
            }
            Err(e) => tracing::warn!(error = %e, oid = %o, "finding an OID's handle failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_deepest_first() {
        let mut seen = Vec::new();
        ancestors("OID/1.2.156.3001", |a| {
            seen.push(a.to_owned());
            true
        });
        assert_eq!(seen, ["OID/1.2.156", "OID/1.2", "OID/1"]);
        ancestors("OID/1", |_| panic!("no ancestors"));
        ancestors("88.1/x", |_| panic!("not an OID"));
    }
}
