//! An in-memory copy of the records, for the resolution hot path.
//!
//! sled answers a read in a few microseconds when the page is cached and
//! needs a file read when it is not; a resolver answering a hundred
//! thousand queries a second over millions of handles cannot afford either.
//! The read cache keeps each record's stored bytes in a sharded hash map,
//! filled in the background from the database when the store opens and
//! kept current by the writer, which replaces an entry (or leaves a
//! tombstone for a deleted handle) right after each commit is applied.
//!
//! Readers and the background fill only ever *add* entries that are
//! absent, and the writer always overwrites: whatever the interleaving, an
//! entry can never go back to a value older than the last commit. Once the
//! fill has seen every record without exceeding the memory budget the
//! cache is complete, and a miss means "no such handle" without touching
//! the database. Past the budget the cache stops growing and misses fall
//! through to sled.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

const SHARDS: usize = 64;
/// Bytes counted per entry on top of key and record (table slot,
/// allocation header, reference counts).
const ENTRY_OVERHEAD: usize = 48;

/// One cached record in a single allocation: key length (2 bytes), key,
/// a presence byte, and the record's stored bytes. Hashes and compares as
/// its key, so the set can be searched with a `&str`.
#[derive(Debug, Clone)]
pub struct Entry(Arc<[u8]>);

impl Entry {
    fn new(key: &str, value: Option<&[u8]>) -> Self {
        let klen = u16::try_from(key.len()).unwrap_or(u16::MAX) as usize;
        let mut v = Vec::with_capacity(2 + klen + 1 + value.map_or(0, <[u8]>::len));
        v.extend_from_slice(&(klen as u16).to_be_bytes());
        v.extend_from_slice(&key.as_bytes()[..klen]);
        v.push(u8::from(value.is_some()));
        if let Some(b) = value {
            v.extend_from_slice(b);
        }
        Self(v.into())
    }

    fn key(&self) -> &str {
        let klen = u16::from_be_bytes([self.0[0], self.0[1]]) as usize;
        // Built from a &str cut at a length that is a char boundary.
        std::str::from_utf8(&self.0[2..2 + klen]).unwrap_or("")
    }

    fn record_start(&self) -> usize {
        2 + u16::from_be_bytes([self.0[0], self.0[1]]) as usize + 1
    }

    fn present(&self) -> bool {
        self.0[self.record_start() - 1] == 1
    }

    /// The record's stored bytes.
    pub fn record(&self) -> &[u8] {
        &self.0[self.record_start()..]
    }

    fn cost(&self) -> usize {
        self.0.len() + ENTRY_OVERHEAD
    }
}

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        self.key()
    }
}

/// What the cache knows about a key.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The record (see [`Entry::record`]).
    Hit(Entry),
    /// The handle does not exist.
    Absent,
    /// Unknown: ask the database.
    Miss,
}

type Shard = RwLock<HashSet<Entry>>;

#[derive(Debug)]
pub struct ReadCache {
    shards: Box<[Shard]>,
    hasher: RandomState,
    bytes: AtomicUsize,
    budget: usize,
    complete: AtomicBool,
    over_budget: AtomicBool,
}

impl ReadCache {
    /// An empty cache that may hold `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashSet::new())).collect(),
            hasher: RandomState::new(),
            bytes: AtomicUsize::new(0),
            budget,
            complete: AtomicBool::new(false),
            over_budget: AtomicBool::new(budget == 0),
        }
    }

    fn shard(&self, key: &str) -> &Shard {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    /// Looks a key up.
    pub fn get(&self, key: &str) -> Lookup {
        let Ok(shard) = self.shard(key).read() else {
            return Lookup::Miss;
        };
        match shard.get(key) {
            Some(e) if e.present() => Lookup::Hit(e.clone()),
            Some(_) => Lookup::Absent,
            None if self.complete.load(Ordering::Acquire) => Lookup::Absent,
            None => Lookup::Miss,
        }
    }

    /// Adds an entry read from the database, unless one is there already.
    pub fn fill(&self, key: &str, value: Option<&[u8]>) {
        if self.over_budget.load(Ordering::Relaxed) {
            return;
        }
        if self.shard(key).read().is_ok_and(|s| s.contains(key)) {
            return;
        }
        let entry = Entry::new(key, value);
        let cost = entry.cost();
        if self.bytes.load(Ordering::Relaxed) + cost > self.budget {
            self.over_budget.store(true, Ordering::Release);
            return;
        }
        let Ok(mut shard) = self.shard(key).write() else {
            return;
        };
        if shard.insert(entry) {
            self.bytes.fetch_add(cost, Ordering::Relaxed);
        }
    }

    /// Records the state a commit left a key in. An entry already held is
    /// always replaced; a new one is added while the cache is within its
    /// budget, and always once it is complete (it must then know every
    /// handle).
    pub fn set(&self, key: &str, value: Option<&[u8]>) {
        if self.budget == 0 {
            return;
        }
        let entry = Entry::new(key, value);
        let cost = entry.cost();
        let Ok(mut shard) = self.shard(key).write() else {
            return;
        };
        if let Some(old) = shard.replace(entry.clone()) {
            self.bytes.fetch_sub(old.cost(), Ordering::Relaxed);
            self.bytes.fetch_add(cost, Ordering::Relaxed);
            return;
        }
        let fits = self.bytes.load(Ordering::Relaxed) + cost <= self.budget;
        if !fits && !self.complete.load(Ordering::Acquire) {
            shard.remove(key);
            self.over_budget.store(true, Ordering::Release);
            return;
        }
        self.bytes.fetch_add(cost, Ordering::Relaxed);
    }

    /// Called when the background fill has added every stored record.
    pub fn fill_finished(&self) {
        if !self.over_budget.load(Ordering::Acquire) {
            self.complete.store(true, Ordering::Release);
        }
    }

    /// Whether a miss means the handle does not exist.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Bytes held, as counted against the budget.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(c: &ReadCache, key: &str) -> Option<Vec<u8>> {
        match c.get(key) {
            Lookup::Hit(e) => Some(e.record().to_vec()),
            _ => None,
        }
    }

    #[test]
    fn fill_never_overrides_a_commit() {
        let c = ReadCache::new(1 << 20);
        c.set("88/A", Some(b"new"));
        c.fill("88/A", Some(b"old"));
        assert_eq!(hit(&c, "88/A").as_deref(), Some(&b"new"[..]));
        c.set("88/A", None);
        c.fill("88/A", Some(b"old"));
        assert!(matches!(c.get("88/A"), Lookup::Absent));
        assert!(matches!(c.get("88/B"), Lookup::Miss));
        c.fill_finished();
        assert!(matches!(c.get("88/B"), Lookup::Absent));
    }

    #[test]
    fn budget_stops_growth_and_completeness() {
        let c = ReadCache::new(200);
        c.fill("88/A", Some(&[0u8; 50]));
        c.fill("88/B", Some(&[0u8; 50]));
        assert!(matches!(c.get("88/B"), Lookup::Miss));
        c.fill_finished();
        assert!(!c.is_complete());
        assert!(matches!(c.get("88/C"), Lookup::Miss));
        // A commit replaces what is held even past the budget.
        c.set("88/A", None);
        assert!(matches!(c.get("88/A"), Lookup::Absent));
    }

    #[test]
    fn a_disabled_cache_holds_nothing() {
        let c = ReadCache::new(0);
        c.set("88/A", Some(b"x"));
        c.fill("88/A", Some(b"x"));
        assert!(matches!(c.get("88/A"), Lookup::Miss));
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn entries_keep_unicode_keys_and_empty_records() {
        let e = Entry::new("88/产品", Some(b""));
        assert_eq!(e.key(), "88/产品");
        assert!(e.present());
        assert!(e.record().is_empty());
        assert!(!Entry::new("88/x", None).present());
    }
}
