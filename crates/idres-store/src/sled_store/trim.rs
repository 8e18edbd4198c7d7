//! Trimming the change log.
//!
//! A node keeps its change log so that replicas can follow it; kept
//! forever it grows without bound. [`SledStore::trim_changes`] removes the
//! entries before a sequence number. Records, indexes and the sequence
//! counter are untouched, so trimming never changes what the store holds:
//! a replica that asks for a trimmed part gets a snapshot instead (see
//! `docs/grpc.md`). The writer only ever adds entries after `last_seq`, so
//! removing older ones cannot race with it; [`Store::first_seq`] moves up
//! once the removal is durable.

use super::{decode_run, encode_run, io, run_start, SledStore};
use crate::{keys, ChangeKind, Store, StoreError};

/// Entries removed per sled batch.
const TRIM_BATCH: usize = 16_384;

impl SledStore {
    /// Removes every change-log entry with a sequence number below
    /// `keep_from` (never past the last change), flushes, and returns the
    /// new first sequence number.
    pub fn trim_changes(&self, keep_from: u64) -> Result<u64, StoreError> {
        let _backup = self
            .shared
            .trim_lock
            .lock()
            .map_err(|_| crate::StoreError::Io("trim lock poisoned".into()))?;
        let keep_from = keep_from.min(self.last_seq() + 1);
        let db = &self.shared.db;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for item in db
                .range(keys::change(0)..keys::change(keep_from))
                .take(TRIM_BATCH)
            {
                let (k, v) = item.map_err(io)?;
                let first = run_start(&k)?;
                let run = decode_run(first, &v)?;
                batch.remove(k);
                n += 1;
                // A run reaching past the cut keeps its tail, re-keyed at
                // the cut.
                let tail: Vec<(String, ChangeKind)> = run
                    .iter()
                    .filter(|c| c.seq >= keep_from)
                    .map(|c| (c.handle.clone(), c.kind))
                    .collect();
                if let Some(c) = run.iter().find(|c| c.seq >= keep_from) {
                    batch.insert(&keys::change(keep_from), encode_run(c.time, &tail));
                }
            }
            if n == 0 {
                break;
            }
            db.apply_batch(batch).map_err(io)?;
            if n < TRIM_BATCH {
                break;
            }
        }
        db.flush().map_err(io)?;
        self.first_seq()
    }
}

impl SledStore {
    /// Forgets the idempotency keys of writes with a sequence number below
    /// `keep_from`: a client retrying a write older than that window gets
    /// it applied again. Returns how many keys were removed.
    pub fn trim_idempotency(&self, keep_from: u64) -> Result<usize, StoreError> {
        let db = &self.shared.db;
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for item in db.scan_prefix([keys::IDEMPOTENCY]) {
            let (k, v) = item.map_err(io)?;
            let seq = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
            if seq < keep_from {
                batch.remove(k);
                pending += 1;
                removed += 1;
            }
            if pending == TRIM_BATCH {
                db.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
                pending = 0;
            }
        }
        if pending > 0 {
            db.apply_batch(batch).map_err(io)?;
        }
        if removed > 0 {
            db.flush().map_err(io)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Mutation, SledConfig, WriteRequest};
    use idres_model::{Handle, HandleValue};

    fn put(store: &SledStore, i: u32) {
        store
            .write(WriteRequest::one(Mutation::Put {
                handle: Handle::parse(&format!("88/{i}")).unwrap(),
                values: vec![HandleValue::new(1, "URL", format!("https://x/{i}"))],
            }))
            .unwrap()
            .unwrap();
    }

    #[test]
    fn idempotency_keys_are_kept_for_a_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(SledConfig::new(dir.path())).unwrap();
        let keyed = |i: u32| {
            store
                .write(WriteRequest {
                    mutations: vec![Mutation::Put {
                        handle: Handle::parse(&format!("0.NA/K{i}")).unwrap(),
                        values: vec![HandleValue::new(1, "URL", "https://a.example/")],
                    }],
                    idempotency_key: Some(format!("key-{i}").into_bytes()),
                })
                .unwrap()
                .unwrap()
        };
        for i in 0..10 {
            keyed(i);
        }
        assert_eq!(store.trim_idempotency(6).unwrap(), 5);
        // A retry inside the window is recognised; one outside is applied
        // again.
        let head = store.last_seq();
        keyed(9);
        assert_eq!(store.last_seq(), head);
        keyed(0);
        assert_eq!(store.last_seq(), head + 1);
    }

    #[test]
    fn trimming_keeps_records_and_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(SledConfig::new(dir.path())).unwrap();
        for i in 0..100 {
            put(&store, i);
        }
        assert_eq!(store.first_seq().unwrap(), 1);
        assert_eq!(store.trim_changes(51).unwrap(), 51);
        assert_eq!(
            store.changes(0, 1000).unwrap().first().map(|c| c.seq),
            Some(51)
        );
        assert_eq!(store.changes(0, 1000).unwrap().len(), 50);
        assert_eq!(store.handle_count(), 100);
        assert!(store.get("88/7").unwrap().is_some());
        put(&store, 100);
        assert_eq!(store.last_seq(), 101);
        // Never past the last change; trimming everything empties the log.
        assert_eq!(store.trim_changes(u64::MAX).unwrap(), 102);
        assert!(store.changes(0, 10).unwrap().is_empty());
        store.close().unwrap();
        drop(store);
        let store = SledStore::open(SledConfig::new(dir.path())).unwrap();
        assert_eq!((store.first_seq().unwrap(), store.last_seq()), (102, 101));
        put(&store, 101);
        assert_eq!(store.changes(0, 10).unwrap()[0].seq, 102);
    }
}
