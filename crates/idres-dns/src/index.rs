//! Which OIDs have OID records below them.
//!
//! A name in the ORS zone without a record of its own still exists when an
//! OID below it has one (an empty non-terminal, RFC 8020): `1.2.156` exists
//! if `1.2.156.3001.1` does, and gets NODATA, not NXDOMAIN. Asking the
//! storage engine for the next key after `OID/1.2.156.` answers that, but
//! costs a B-tree seek on every query for a name that does not exist. This
//! index holds the set of OIDs that have records below them, so that such a
//! query costs one hash lookup.
//!
//! It is built by scanning the OID keys once (in the background; until it
//! is ready the store is asked instead) and then kept exact by the store's
//! change log: before each lookup it compares the store's latest sequence
//! number with the one it has applied, and applies the changes between. A
//! new record adds its ancestors; a deleted one removes each ancestor that
//! no longer has a record below it, as the store tells.

use std::collections::HashSet;
use std::sync::RwLock;

use idres_model::Prefix;
use idres_store::{ChangeKind, Store, StoreError};

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
        let Ok(mut inner) = self.inner.write() else {
            return Ok(());
        };
        inner.interior = interior;
        inner.seq = from;
        inner.state = State::Ready;
        // Changes made during the scan are applied now, as after any gap.
        self.apply(&mut inner, store, store.last_seq());
        tracing::info!(records, interior = inner.interior.len(), "OID index built");
        Ok(())
    }

    /// Whether `key` (`OID/1.2.156`) has OID records below it; `None` when
    /// the index cannot tell (not built, or off).
    pub fn has_descendants(&self, store: &dyn Store, key: &str) -> Option<bool> {
        let latest = store.last_seq();
        {
            let inner = self.inner.read().ok()?;
            if inner.state != State::Ready {
                return None;
            }
            if inner.seq == latest {
                return Some(inner.interior.contains(key));
            }
        }
        let mut inner = self.inner.write().ok()?;
        self.apply(&mut inner, store, latest);
        (inner.state == State::Ready).then(|| inner.interior.contains(key))
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
                return;
            }
            for c in &changes {
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
