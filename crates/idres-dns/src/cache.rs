//! A read cache of OID records in front of the store.
//!
//! The UDP path answers most queries from here: a hash lookup instead of a
//! B-tree walk through the storage engine. The cache stays exact by
//! following the store's change log: before each lookup it compares the
//! store's latest sequence number with the one it has caught up to, and on
//! a difference it reads the new changes and drops every record they name.
//! The store makes a
//! change readable before it publishes its sequence number, so a record
//! read after the cache caught up to sequence `s` is at least as new as
//! `s`, and any later change evicts it before the next lookup.
//!
//! Only records found are cached: a flood of random names cannot push real
//! records out. When the cache is full it starts again empty.

use std::collections::HashMap;
use std::sync::RwLock;

use idres_store::{RecordBytes, Store};

/// Changes read in one catch-up; a longer gap empties the cache instead.
const MAX_CATCH_UP: usize = 4096;

#[derive(Debug)]
struct Inner {
    /// The change-log sequence number the cache has caught up to.
    seq: u64,
    records: HashMap<Box<str>, RecordBytes>,
}

/// Records by canonical key, kept in step with the store's change log.
#[derive(Debug)]
pub struct RecordCache {
    inner: RwLock<Inner>,
    capacity: usize,
}

impl RecordCache {
    /// An empty cache holding at most `capacity` records (0 disables it),
    /// in step with `store` from now on.
    pub fn new(store: &dyn Store, capacity: usize) -> Self {
        Self {
            inner: RwLock::new(Inner {
                seq: store.last_seq(),
                records: HashMap::new(),
            }),
            capacity,
        }
    }

    /// The record of `key`, from the cache or else from the store (and
    /// then cached).
    pub fn get(
        &self,
        store: &dyn Store,
        key: &str,
    ) -> Result<Option<RecordBytes>, idres_store::StoreError> {
        if self.capacity == 0 {
            return store.get(key);
        }
        let latest = store.last_seq();
        let current = {
            let Ok(inner) = self.inner.read() else {
                return store.get(key);
            };
            if inner.seq == latest {
                if let Some(r) = inner.records.get(key) {
                    return Ok(Some(r.clone()));
                }
            }
            inner.seq
        };
        // The read lock is released: catching up takes the write lock.
        let seen = if current == latest {
            latest
        } else {
            self.catch_up(store, latest)
        };
        let found = store.get(key)?;
        if let Some(rec) = &found {
            if let Ok(mut inner) = self.inner.write() {
                // A catch-up since our read may have evicted this key: only
                // a record read at the cache's current sequence may go in.
                if inner.seq == seen {
                    if inner.records.len() >= self.capacity {
                        inner.records.clear();
                    }
                    inner.records.insert(key.into(), rec.clone());
                }
            }
        }
        Ok(found)
    }

    /// Applies the changes up to `latest`; returns the sequence number the
    /// cache then stands at.
    fn catch_up(&self, store: &dyn Store, latest: u64) -> u64 {
        let Ok(mut inner) = self.inner.write() else {
            return latest;
        };
        if inner.seq >= latest {
            return inner.seq;
        }
        match store.changes(inner.seq + 1, MAX_CATCH_UP) {
            Ok(changes)
                if changes.first().is_some_and(|c| c.seq == inner.seq + 1)
                    && changes.last().is_some_and(|c| c.seq >= latest) =>
            {
                for c in &changes {
                    inner.records.remove(c.handle.as_str());
                }
            }
            // A gap in the log, too many changes, or a read error: start
            // again empty rather than risk a stale answer.
            _ => inner.records.clear(),
        }
        inner.seq = latest;
        latest
    }

    /// Fills the cache with the records whose keys start with `prefix`,
    /// in key order, until it is full. Returns how many it holds.
    pub fn warm(&self, store: &dyn Store, prefix: &str) -> Result<usize, idres_store::StoreError> {
        if self.capacity == 0 {
            return Ok(0);
        }
        let latest = store.last_seq();
        let seen = self.catch_up(store, latest);
        let mut after = prefix.to_owned();
        loop {
            let chunk = store.scan(Some(&after), 10_000)?;
            let done = chunk.len() < 10_000;
            let Ok(mut inner) = self.inner.write() else {
                break;
            };
            // Records read after the cache stood at `seen` are at least
            // that new; a catch-up in between means others are serving,
            // and their misses fill the cache from here on.
            if inner.seq != seen {
                break;
            }
            let have = inner.records.len();
            let want = self.capacity.min(have + chunk.len());
            inner.records.reserve(want.saturating_sub(have));
            let mut left_prefix = false;
            for (key, rec) in chunk {
                if !key.starts_with(prefix) {
                    left_prefix = true;
                    break;
                }
                if inner.records.len() >= self.capacity {
                    return Ok(inner.records.len());
                }
                after.clone_from(&key);
                inner.records.insert(key.into_boxed_str(), rec);
            }
            if done || left_prefix {
                break;
            }
        }
        Ok(self.len())
    }

    /// Number of records cached.
    pub fn len(&self) -> usize {
        self.inner.read().map_or(0, |i| i.records.len())
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
