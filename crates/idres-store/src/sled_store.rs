//! The sled 0.34 implementation of [`Store`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use idres_model::{types, validate_record, Handle, HandleValue, Prefix, PREFIX_RECORD_PREFIX};
use idres_schemes::Schemes;

mod backup;
mod trim;

pub(crate) use backup::TapMsg;

use crate::cache::{Lookup, ReadCache};
use crate::metrics::StoreMetrics;
use crate::record::RecordBytes;
use crate::{index, keys, links};
use crate::{
    AuxEntry, Change, ChangeKind, Committed, Mutation, MutationError, PrefixHome, StateView, Store,
    StoreError, ValuePage, ValuePolicy, WriteCallback, WriteRequest, SCHEMA_VERSION,
};

/// Settings of a [`SledStore`].
#[derive(Debug, Clone)]
pub struct SledConfig {
    /// Directory of the database.
    pub path: PathBuf,
    /// Bytes of sled's page cache.
    pub cache_bytes: u64,
    /// Most mutations committed together in one group.
    pub max_group_mutations: usize,
    /// Bytes of the in-memory record cache (0 = none).
    pub read_cache_bytes: usize,
    /// Applied to every record written ([`ValuePolicy`]).
    pub value_policy: Option<Arc<dyn ValuePolicy>>,
    /// Where the store's measurements go.
    pub metrics: Arc<StoreMetrics>,
    /// Largest record accepted, in bytes of its values on the wire (capped
    /// at [`idres_model::value::RECORD_BYTES_CEILING`]).
    pub max_record_bytes: usize,
    /// Most write requests waiting for the writer; past it a write is
    /// refused at once with [`StoreError::Busy`].
    pub max_queued_writes: usize,
    /// The identifier schemes that decide the link index.
    pub schemes: Schemes,
}

impl SledConfig {
    /// Defaults for a store in `path`: a 64 MiB page cache, a 256 MiB
    /// record cache, and groups of up to 20,000 mutations.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_bytes: 64 << 20,
            max_group_mutations: 20_000,
            read_cache_bytes: 256 << 20,
            value_policy: None,
            metrics: Arc::default(),
            max_record_bytes: idres_model::value::MAX_RECORD_BYTES,
            max_queued_writes: 16_384,
            schemes: Schemes::default(),
        }
    }
}

type PrefixMap = HashMap<String, Arc<PrefixHome>>;

#[derive(Debug)]
struct Shared {
    db: sled::Db,
    max_record_bytes: usize,
    last_seq: AtomicU64,
    handle_count: AtomicUsize,
    prefixes: RwLock<Arc<PrefixMap>>,
    cache: ReadCache,
    closing: AtomicBool,
    value_policy: Option<Arc<dyn ValuePolicy>>,
    schemes: Schemes,
    links: links::LinkCache,
    cursors: CursorCipher,
    /// A running backup's tap; the writer holds this lock for each whole
    /// group, so the tap comes and goes between groups.
    tap: Mutex<Option<Sender<TapMsg>>>,
    /// Held by trimming and by a backup, so that neither sees the other.
    trim_lock: Mutex<()>,
    /// Set when a group failed to apply or flush: the writer then refuses
    /// every write until the store is reopened.
    failed: RwLock<Option<String>>,
    metrics: Arc<StoreMetrics>,
    /// Whether the read cache's fill from the database has ended.
    warm: AtomicBool,
}

/// Seals search cursors so that they are opaque to clients: a cursor names
/// an index key, which holds a value and a handle, and must reveal neither.
/// The key is made at the first open and kept in the database, so cursors
/// stay good across restarts.
struct CursorCipher(XChaCha20Poly1305);

impl std::fmt::Debug for CursorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorCipher")
    }
}

impl CursorCipher {
    fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let key = match db.get(keys::META_CURSOR_KEY).map_err(io)? {
            Some(k) if k.len() == 32 => Key::clone_from_slice(&k),
            _ => {
                let k = XChaCha20Poly1305::generate_key(&mut OsRng);
                db.insert(keys::META_CURSOR_KEY, k.as_slice()).map_err(io)?;
                db.flush().map_err(io)?;
                k
            }
        };
        Ok(Self(XChaCha20Poly1305::new(&key)))
    }

    fn seal(&self, index_key: &[u8]) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        match self.0.encrypt(&nonce, index_key) {
            Ok(ct) => {
                let mut out = nonce.to_vec();
                out.extend_from_slice(&ct);
                hex_encode(&out)
            }
            Err(_) => String::new(),
        }
    }

    fn unseal(&self, cursor: &str) -> Option<Vec<u8>> {
        let raw = hex_decode(cursor)?;
        if raw.len() < 24 + 16 {
            return None;
        }
        let (nonce, ct) = raw.split_at(24);
        self.0.decrypt(XNonce::from_slice(nonce), ct).ok()
    }
}

/// Brings an older database up to what this build writes: rebuilds the
/// value index of index version 1 (which also held values without public
/// read), and passes every record once through the value policy (for
/// example, sealing secret keys written before it existed). Runs at open,
/// before anything is served; each step is done once and marked done.
fn migrate(db: &sled::Db, policy: Option<&dyn ValuePolicy>) -> Result<(), StoreError> {
    let index_current = db.get(keys::META_INDEX_VERSION).map_err(io)?.is_some();
    let policy = policy.filter(|_| {
        !db.get(keys::META_POLICY_APPLIED)
            .map(|v| v.is_some())
            .unwrap_or(false)
    });
    if index_current && policy.is_none() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let (mut records, mut rewritten) = (0usize, 0usize);
    if !index_current {
        for item in db.scan_prefix([keys::VALUE]) {
            let (k, _) = item.map_err(io)?;
            batch.remove(k);
            pending += 1;
            if pending >= 4096 {
                db.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
                pending = 0;
            }
        }
    }
    for item in db.scan_prefix([keys::HANDLE]) {
        let (k, v) = item.map_err(io)?;
        let Ok(key) = std::str::from_utf8(&k[1..]) else {
            continue;
        };
        let Ok(mut values) = RecordBytes::from_ivec(v).values() else {
            continue;
        };
        records += 1;
        let before = (!index_current)
            .then(Vec::new)
            .unwrap_or_else(|| index::entries(key, &values));
        if let Some(p) = policy {
            if p.prepare(key, &mut values) {
                rewritten += 1;
                batch.insert(k.clone(), RecordBytes::encode(&values));
                pending += 1;
            }
        }
        let after = index::entries(key, &values);
        for e in &before {
            if after.binary_search(e).is_err() {
                batch.remove(e.as_slice());
                pending += 1;
            }
        }
        for e in after {
            if before.binary_search(&e).is_err() {
                batch.insert(e, &[][..]);
                pending += 1;
            }
        }
        if pending >= 4096 {
            db.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
            pending = 0;
        }
    }
    batch.insert(keys::META_INDEX_VERSION, &2u32.to_be_bytes());
    if policy.is_some() {
        batch.insert(keys::META_POLICY_APPLIED, &[1u8][..]);
    }
    db.apply_batch(batch).map_err(io)?;
    db.flush().map_err(io)?;
    tracing::info!(
        records,
        rewritten,
        index_rebuilt = !index_current,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store brought up to date"
    );
    Ok(())
}

/// Builds the link index again when the scheme configuration that decides
/// link keys is not the one it was built with (or it was never built).
/// A record whose link is invalid or taken under the new configuration
/// keeps its values; that claim is left out and logged.
fn rebuild_links(db: &sled::Db, schemes: &Schemes) -> Result<(), StoreError> {
    let fp = format!("{}:{}", links::LAYOUT, schemes.fingerprint());
    let fp = fp.as_bytes();
    if db.get(keys::META_LINK_CONFIG).map_err(io)?.as_deref() == Some(fp) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    for item in db.scan_prefix([keys::LINK]) {
        let (k, _) = item.map_err(io)?;
        batch.remove(k);
        pending += 1;
        if pending >= 4096 {
            db.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
            pending = 0;
        }
    }
    db.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
    pending = 0;
    // Records come in handle order, so each list of claimants is sorted.
    let mut claimed: HashMap<String, Vec<String>> = HashMap::new();
    let (mut records, mut claims, mut skipped) = (0usize, 0usize, 0usize);
    for item in db.scan_prefix([keys::HANDLE]) {
        let (k, v) = item.map_err(io)?;
        let Ok(key) = std::str::from_utf8(&k[1..]) else {
            continue;
        };
        let Ok(values) = RecordBytes::from_ivec(v).values() else {
            continue;
        };
        records += 1;
        let found = match links::of(schemes, &values) {
            Ok(l) => l,
            Err(reason) => {
                tracing::warn!(handle = key, %reason, "link left out of the index");
                skipped += 1;
                continue;
            }
        };
        for link in found {
            let holders = claimed.entry(link.clone()).or_default();
            if !holders.is_empty() && !schemes.shared(&link) {
                tracing::warn!(handle = key, link = %link, other = %holders[0], "link already claimed; left out of the index");
                skipped += 1;
                continue;
            }
            holders.push(key.to_owned());
            claims += 1;
        }
    }
    for (link, holders) in claimed {
        batch.insert(links::key(&link), links::encode(&holders));
        pending += 1;
        if pending >= 4096 {
            db.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
            pending = 0;
        }
    }
    batch.insert(keys::META_LINK_CONFIG, fp);
    db.apply_batch(batch).map_err(io)?;
    db.flush().map_err(io)?;
    tracing::info!(
        records,
        claims,
        skipped,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "link index built"
    );
    Ok(())
}

struct Job {
    request: WriteRequest,
    done: WriteCallback,
}

/// A [`Store`] in a sled database.
#[derive(Debug)]
pub struct SledStore {
    shared: Arc<Shared>,
    path: PathBuf,
    jobs: Mutex<Option<SyncSender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

fn read_u64(db: &sled::Db, key: &[u8]) -> Result<u64, StoreError> {
    match db.get(key).map_err(io)? {
        None => Ok(0),
        Some(v) => {
            let arr: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: "not 8 bytes".into(),
            })?;
            Ok(u64::from_be_bytes(arr))
        }
    }
}

impl SledStore {
    /// Opens or creates the store and starts its writer.
    pub fn open(config: SledConfig) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(io)?;
        match db.get(keys::META_SCHEMA).map_err(io)? {
            None => {
                db.insert(keys::META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(io)?;
                db.flush().map_err(io)?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        key: "schema".into(),
                        reason: "not 4 bytes".into(),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::UnsupportedSchema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
        }
        migrate(&db, config.value_policy.as_deref())?;
        rebuild_links(&db, &config.schemes)?;
        let cursors = CursorCipher::open(&db)?;
        let last_seq = read_u64(&db, keys::META_LAST_SEQ)?;
        let handle_count = read_u64(&db, keys::META_HANDLE_COUNT)? as usize;
        let mut prefixes = HashMap::new();
        let mut start = keys::handle(PREFIX_RECORD_PREFIX);
        start.push(b'/');
        for item in db.scan_prefix(&start) {
            let (k, v) = item.map_err(io)?;
            let key = std::str::from_utf8(&k[1..]).map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "key is not UTF-8".into(),
            })?;
            if let Some(home) = prefix_home_from(key, &RecordBytes::from_ivec(v))? {
                prefixes.insert(home.prefix.as_str().to_owned(), Arc::new(home));
            }
        }
        let shared = Arc::new(Shared {
            db,
            last_seq: AtomicU64::new(last_seq),
            handle_count: AtomicUsize::new(handle_count),
            prefixes: RwLock::new(Arc::new(prefixes)),
            cache: ReadCache::new(config.read_cache_bytes),
            closing: AtomicBool::new(false),
            value_policy: config.value_policy.clone(),
            schemes: config.schemes.clone(),
            // One link key costs about 256 bytes kept.
            links: links::LinkCache::new(config.read_cache_bytes / 256),
            max_record_bytes: config.max_record_bytes,
            cursors,
            tap: Mutex::new(None),
            trim_lock: Mutex::new(()),
            failed: RwLock::new(None),
            metrics: Arc::clone(&config.metrics),
            warm: AtomicBool::new(config.read_cache_bytes == 0),
        });
        if config.read_cache_bytes > 0 {
            let fill_shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("idres-cache-fill".into())
                .spawn(move || fill_cache(&fill_shared))
                .map_err(|e| StoreError::Io(e.to_string()))?;
        }
        // Bounded: when writers outrun the disk, callers are told to come
        // back later instead of the queue growing without end.
        let (tx, rx) = mpsc::sync_channel(config.max_queued_writes.max(1));
        let writer_shared = Arc::clone(&shared);
        let max = config.max_group_mutations.max(1);
        let writer = std::thread::Builder::new()
            .name("idres-store-writer".into())
            .spawn(move || writer_loop(&writer_shared, &rx, max))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(Self {
            shared,
            path: config.path.clone(),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Stops the writer after it has committed every request already
    /// submitted, and flushes. Later writes fail with [`StoreError::Closed`].
    pub fn close(&self) -> Result<(), StoreError> {
        self.shared.closing.store(true, Ordering::Release);
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.shared.db.flush().map_err(io).map(drop)
    }

    /// Whether every record is in the read cache, so that a miss there
    /// is an answer.
    pub fn cache_complete(&self) -> bool {
        self.shared.cache.is_complete()
    }

    /// Whether the read cache has been filled from the database (or there
    /// is none), so that resolutions run at full speed.
    pub fn cache_warm(&self) -> bool {
        self.shared.warm.load(Ordering::Acquire)
    }

    /// Why the store refuses writes, if a write failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.read().ok().and_then(|f| f.clone())
    }

    /// The store's own metrics.
    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.shared.metrics
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.shared.db.size_on_disk().map_err(io)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the store failed");
        }
    }
}

/// Copies every record into the read cache, oldest key first, stopping
/// early if the store closes or the cache is full.
fn fill_cache(shared: &Shared) {
    let started = std::time::Instant::now();
    let mut n = 0usize;
    for item in shared.db.scan_prefix([keys::HANDLE]) {
        if shared.closing.load(Ordering::Relaxed) {
            return;
        }
        let Ok((k, v)) = item else {
            tracing::warn!("read cache fill stopped by a read error");
            return;
        };
        let Ok(key) = std::str::from_utf8(&k[1..]) else {
            continue;
        };
        shared.cache.fill(key, Some(&v));
        n += 1;
    }
    shared.cache.fill_finished();
    shared.warm.store(true, Ordering::Release);
    tracing::info!(
        records = n,
        complete = shared.cache.is_complete(),
        bytes = shared.cache.bytes(),
        ms = started.elapsed().as_millis() as u64,
        "read cache filled"
    );
}

fn prefix_home_from(key: &str, rec: &RecordBytes) -> Result<Option<PrefixHome>, StoreError> {
    let Some(suffix) = key
        .strip_prefix(PREFIX_RECORD_PREFIX)
        .and_then(|k| k.strip_prefix('/'))
    else {
        return Ok(None);
    };
    let Ok(prefix) = Prefix::parse(suffix) else {
        return Ok(None);
    };
    let values = rec.values().map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    let withdrawn = values
        .iter()
        .find(|v| v.value_type.eq_ignore_ascii_case(types::IDRES_WITHDRAWN))
        .map(|v| String::from_utf8_lossy(&v.data).into_owned());
    let service_values = values
        .into_iter()
        .filter(|v| {
            v.permissions.public_read()
                && [
                    types::HS_SITE,
                    types::HS_SERV,
                    types::HS_SITE_PREFIX,
                    types::HS_SERV_PREFIX,
                ]
                .iter()
                .any(|t| v.value_type.eq_ignore_ascii_case(t))
        })
        .collect();
    Ok(Some(PrefixHome {
        prefix,
        service_values,
        withdrawn,
    }))
}

fn writer_loop(shared: &Shared, jobs: &Receiver<Job>, max_group: usize) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        let mut mutations = group[0].request.mutations.len();
        while mutations < max_group {
            match jobs.try_recv() {
                Ok(job) => {
                    mutations += job.request.mutations.len();
                    group.push(job);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        shared.metrics.queue_depth.dec_by(group.len() as i64);
        let (requests, callbacks): (Vec<WriteRequest>, Vec<WriteCallback>) =
            group.into_iter().map(|j| (j.request, j.done)).unzip();
        if let Some(reason) = shared.failed.read().ok().and_then(|f| f.clone()) {
            for done in callbacks {
                done(Err(StoreError::WriterFailed(reason.clone())));
            }
            continue;
        }
        shared.metrics.group_mutations.observe(mutations as f64);
        match commit_group(shared, requests) {
            Ok(outcomes) => {
                for (done, outcome) in callbacks.into_iter().zip(outcomes) {
                    done(Ok(outcome));
                }
            }
            Err(e) => {
                // Part of the group may have reached the database: refuse
                // every later write, so that nothing is written on top of a
                // state nobody was told of, until the store is reopened.
                tracing::error!(error = %e, "group commit failed; the store refuses writes until it is reopened");
                let msg = e.to_string();
                if let Ok(mut f) = shared.failed.write() {
                    *f = Some(msg.clone());
                }
                shared.metrics.writer_failed.set(1);
                for done in callbacks {
                    done(Err(match &e {
                        StoreError::OutcomeUnknown(why) => StoreError::OutcomeUnknown(why.clone()),
                        _ => StoreError::WriterFailed(msg.clone()),
                    }));
                }
            }
        }
    }
}

/// Changes staged by one group commit.
struct Group<'s> {
    shared: &'s Shared,
    batch: sled::Batch,
    /// Records changed in this group: key -> new stored bytes or deleted.
    overlay: HashMap<String, Option<sled::IVec>>,
    /// Auxiliary keys changed in this group: full key -> value or deleted.
    aux_overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Link keys changed in this group: link key -> its claimants now.
    link_overlay: HashMap<String, Vec<String>>,
    idempotency: HashMap<Vec<u8>, u64>,
    next_seq: u64,
    count_delta: isize,
    time: u32,
    wrote: bool,
    /// The current batch's change-log entries, in order, from
    /// `batch_first_seq` on.
    log: Vec<(String, ChangeKind)>,
    /// Keys written to the current batch.
    ops: usize,
    /// Sequence number of the first change in the current batch.
    batch_first_seq: u64,
    /// Handle count before the group.
    base_count: usize,
    /// Batches closed so far, applied in order at commit.
    sealed: Vec<sled::Batch>,
    /// Every key change of the group, for a running backup.
    tap: Option<(Vec<u8>, u64)>,
}

impl<'s> Group<'s> {
    fn current(&self, key: &str) -> Result<Option<Vec<HandleValue>>, StoreError> {
        // The group's own changes first, then the read cache (which the
        // writer itself keeps current after every commit, so it is never
        // behind what this thread wrote), then sled.
        let bytes = match self.overlay.get(key) {
            Some(None) => return Ok(None),
            Some(Some(b)) => RecordBytes::from_ivec(b.clone()),
            None => match self.shared.cache.get(key) {
                Lookup::Hit(e) => RecordBytes::from_cache(e),
                Lookup::Absent => return Ok(None),
                Lookup::Miss => match self.shared.db.get(keys::handle(key)).map_err(io)? {
                    None => return Ok(None),
                    Some(v) => RecordBytes::from_ivec(v),
                },
            },
        };
        bytes.values().map(Some).map_err(|e| StoreError::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The claimants of `link` in the state this request applies to:
    /// committed, with this group's changes.
    fn claimants(&self, link: &str) -> Result<Vec<String>, StoreError> {
        if let Some(o) = self.link_overlay.get(link) {
            return Ok(o.clone());
        }
        Ok(self
            .shared
            .db
            .get(links::key(link))
            .map_err(io)?
            .map(|v| links::decode(&v))
            .unwrap_or_default())
    }

    /// A handle other than `me` that claims `link` in the state this
    /// request applies to, less those that this request (`diffs`) gives up.
    fn claimant(
        &self,
        link: &str,
        me: &str,
        diffs: &HashMap<String, (Vec<String>, Vec<String>)>,
    ) -> Result<Option<String>, StoreError> {
        let gives_up = |h: &str| {
            diffs
                .get(h)
                .is_some_and(|(removed, _)| removed.iter().any(|l| l == link))
        };
        Ok(self
            .claimants(link)?
            .into_iter()
            .find(|h| h != me && !gives_up(h)))
    }

    fn applied_key(&self, k: &[u8]) -> Result<Option<u64>, StoreError> {
        if let Some(seq) = self.idempotency.get(k) {
            return Ok(Some(*seq));
        }
        match self.shared.db.get(keys::idempotency(k)).map_err(io)? {
            None => Ok(None),
            Some(v) => Ok(Some(
                <[u8; 8]>::try_from(v.as_ref())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0),
            )),
        }
    }

    /// Applies one request to the group, or refuses it leaving the group as
    /// it was.
    fn apply(&mut self, req: WriteRequest) -> Result<Result<Committed, MutationError>, StoreError> {
        if let Some(k) = &req.idempotency_key {
            if let Some(seq) = self.applied_key(k)? {
                return Ok(Ok(Committed {
                    last_seq: seq,
                    replayed: true,
                }));
            }
        }
        // Preconditions are judged against the state the request is about
        // to be applied to: everything committed, and every earlier
        // request of this group.
        for m in &req.mutations {
            if let Mutation::Require { guard } = m {
                if let Err(denied) = guard.check(&GroupView(self), &req.mutations) {
                    return Ok(Err(MutationError::Denied(denied)));
                }
            }
        }
        // Stage the request's effects locally; merge only if all succeed.
        // Each handle is read once: its state before the request (for the
        // index and the count) and its state after each mutation.
        struct Touched {
            before: Option<Vec<HandleValue>>,
            after: Option<Vec<HandleValue>>,
            changed: bool,
        }
        let mut changes: Vec<(String, ChangeKind)> = Vec::new();
        let mut aux: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut touched: HashMap<String, Touched> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        let had_mutations = !req.mutations.is_empty();
        for m in req.mutations {
            let handle = match m {
                Mutation::PutAux { space, key, value } => {
                    aux.push((keys::aux(&space, &key), Some(value)));
                    continue;
                }
                Mutation::DeleteAux { space, key } => {
                    aux.push((keys::aux(&space, &key), None));
                    continue;
                }
                Mutation::Require { .. } => continue,
                ref other => match other.handle() {
                    Some(h) => h.clone(),
                    None => continue,
                },
            };
            let key = handle.key();
            if !touched.contains_key(key) {
                let before = self.current(key)?;
                let after = before.clone();
                touched.insert(
                    key.to_owned(),
                    Touched {
                        before,
                        after,
                        changed: false,
                    },
                );
                order.push(key.to_owned());
            }
            let Some(t) = touched.get_mut(key) else {
                continue;
            };
            let mut new = match apply_mutation(m, t.after.take())? {
                Ok(new) => new,
                Err(e) => return Ok(Err(e)),
            };
            if let (Some(values), Some(policy)) = (&mut new, &self.shared.value_policy) {
                policy.prepare(key, values);
            }
            if let Some(values) = &new {
                // The one rule set of every write path (import, HTTP, gRPC,
                // native, escrow, sync): what one node stores, every node
                // stores.
                if let Err(source) = validate_record(values, self.shared.max_record_bytes) {
                    return Ok(Err(MutationError::Invalid {
                        handle: handle.as_str().to_owned(),
                        source,
                    }));
                }
            }
            let kind = if new.is_some() {
                ChangeKind::Put
            } else {
                ChangeKind::Delete
            };
            t.after = new;
            t.changed = true;
            changes.push((key.to_owned(), kind));
        }
        // Links: every claim is checked against the state the request is
        // applied to (committed, and earlier requests of this group) before
        // anything of the request is staged.
        let mut link_diffs: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
        for key in &order {
            let Some(t) = touched.get(key) else { continue };
            if !t.changed {
                continue;
            }
            let old = match t.before.as_deref() {
                Some(v) => links::of(&self.shared.schemes, v).unwrap_or_default(),
                None => Vec::new(),
            };
            let new = match t.after.as_deref() {
                Some(v) => match links::of(&self.shared.schemes, v) {
                    Ok(l) => l,
                    Err(reason) => {
                        return Ok(Err(MutationError::BadLink {
                            handle: key.clone(),
                            reason,
                        }))
                    }
                },
                None => Vec::new(),
            };
            let removed: Vec<String> = old
                .iter()
                .filter(|l| new.binary_search(l).is_err())
                .cloned()
                .collect();
            let added: Vec<String> = new
                .into_iter()
                .filter(|l| old.binary_search(l).is_err())
                .collect();
            link_diffs.insert(key.clone(), (removed, added));
        }
        for (key, (_, added)) in &link_diffs {
            for link in added {
                if self.shared.schemes.shared(link) {
                    continue;
                }
                if let Some(other) = self.claimant(link, key, &link_diffs)? {
                    return Ok(Err(MutationError::LinkConflict {
                        link: link.clone(),
                        handle: key.clone(),
                        other,
                    }));
                }
                // Two records of this one request.
                if let Some(other) = link_diffs
                    .iter()
                    .find(|(k, (_, a))| *k != key && a.contains(link))
                    .map(|(k, _)| k.clone())
                {
                    let (handle, other) = if *key < other {
                        (other, key.clone())
                    } else {
                        (key.clone(), other)
                    };
                    return Ok(Err(MutationError::LinkConflict {
                        link: link.clone(),
                        handle,
                        other,
                    }));
                }
            }
        }
        let mut changed: HashMap<String, Vec<String>> = HashMap::new();
        for (key, (removed, added)) in &link_diffs {
            for link in removed.iter().chain(added) {
                if !changed.contains_key(link) {
                    changed.insert(link.clone(), self.claimants(link)?);
                }
            }
            for link in removed {
                if let Some(c) = changed.get_mut(link) {
                    c.retain(|h| h != key);
                }
            }
            for link in added {
                if let Some(c) = changed.get_mut(link) {
                    if let Err(at) = c.binary_search(key) {
                        c.insert(at, key.clone());
                    }
                }
            }
        }
        for (link, claimants) in changed {
            if claimants.is_empty() {
                self.del(links::key(&link));
            } else {
                self.put(links::key(&link), links::encode(&claimants));
            }
            self.link_overlay.insert(link, claimants);
        }
        for (key, value) in aux {
            match value {
                Some(v) => {
                    self.aux_overlay.insert(key.clone(), Some(v.clone()));
                    self.put(key, v);
                }
                None => {
                    self.aux_overlay.insert(key.clone(), None);
                    self.del(key);
                }
            }
        }
        for key in order {
            let Some(t) = touched.remove(&key) else {
                continue;
            };
            if !t.changed {
                continue;
            }
            let old_entries = t
                .before
                .as_deref()
                .map(|v| index::entries(&key, v))
                .unwrap_or_default();
            let new_entries = t
                .after
                .as_deref()
                .map(|v| index::entries(&key, v))
                .unwrap_or_default();
            for e in &old_entries {
                if new_entries.binary_search(e).is_err() {
                    self.del(e.as_slice());
                }
            }
            for e in new_entries {
                if old_entries.binary_search(&e).is_err() {
                    self.put(e, &[][..]);
                }
            }
            match (&t.before, &t.after) {
                (None, Some(_)) => self.count_delta += 1,
                (Some(_), None) => self.count_delta -= 1,
                _ => {}
            }
            match t.after {
                Some(values) => {
                    let bytes = sled::IVec::from(RecordBytes::encode(&values));
                    self.put(keys::handle(&key), bytes.clone());
                    self.overlay.insert(key, Some(bytes));
                }
                None => {
                    self.del(keys::handle(&key));
                    self.overlay.insert(key, None);
                }
            }
        }
        self.next_seq += changes.len() as u64;
        self.log.extend(changes);
        if had_mutations {
            self.wrote = true;
        }
        let last_seq = self.next_seq - 1;
        if let Some(k) = &req.idempotency_key {
            self.put(keys::idempotency(k), &last_seq.to_be_bytes()[..]);
            self.idempotency.insert(k.clone(), last_seq);
        }
        if self.ops >= SUB_BATCH_OPS {
            self.seal();
        }
        Ok(Ok(Committed {
            last_seq,
            replayed: false,
        }))
    }

    fn put(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        self.raw_put(key.into(), value.into());
        self.ops += 1;
        self.wrote = true;
    }

    fn del(&mut self, key: impl Into<sled::IVec>) {
        let key = key.into();
        if let Some((buf, n)) = &mut self.tap {
            crate::backup::encode_op(buf, &key, None);
            *n += 1;
        }
        self.batch.remove(key);
        self.ops += 1;
        self.wrote = true;
    }

    /// Stages a key, telling a running backup.
    fn raw_put(&mut self, key: sled::IVec, value: sled::IVec) {
        if let Some((buf, n)) = &mut self.tap {
            crate::backup::encode_op(buf, &key, Some(&value));
            *n += 1;
        }
        self.batch.insert(key, value);
    }

    /// Closes the current sled batch: its change-log run and the counters
    /// as they stand after it go in with it, so that each batch leaves the
    /// database consistent on its own should the process stop between
    /// them (nothing is acknowledged before the flush that follows the
    /// last one).
    fn seal(&mut self) {
        if !self.wrote {
            return;
        }
        let mut seq = self.batch_first_seq;
        let runs: Vec<(u64, Vec<u8>)> = self
            .log
            .chunks(MAX_RUN)
            .map(|run| {
                let r = (seq, encode_run(self.time, run));
                seq += run.len() as u64;
                r
            })
            .collect();
        for (seq, run) in runs {
            self.raw_put(keys::change(seq).as_slice().into(), run.into());
        }
        let last = self.next_seq - 1;
        let count = (self.base_count as isize + self.count_delta).max(0) as u64;
        self.raw_put(
            keys::META_LAST_SEQ.into(),
            last.to_be_bytes().as_slice().into(),
        );
        self.raw_put(
            keys::META_HANDLE_COUNT.into(),
            count.to_be_bytes().as_slice().into(),
        );
        self.sealed.push(std::mem::take(&mut self.batch));
        self.log.clear();
        self.ops = 0;
        self.batch_first_seq = self.next_seq;
        self.wrote = false;
    }
}

/// The state seen by a [`crate::WriteGuard`]: the group's own changes, then
/// what is committed.
struct GroupView<'g, 's>(&'g Group<'s>);

impl StateView for GroupView<'_, '_> {
    fn values(&self, key: &str) -> Result<Option<Vec<HandleValue>>, StoreError> {
        self.0.current(key)
    }

    fn aux(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = keys::aux(space, key);
        if let Some(v) = self.0.aux_overlay.get(&k) {
            return Ok(v.clone());
        }
        Ok(self.0.shared.db.get(k).map_err(io)?.map(|v| v.to_vec()))
    }
}

/// The values a handle has after `m`, `None` if it no longer exists;
/// `current` is its state before.
fn apply_mutation(
    m: Mutation,
    current: Option<Vec<HandleValue>>,
) -> Result<Result<Option<Vec<HandleValue>>, MutationError>, StoreError> {
    let name = |h: &Handle| h.as_str().to_owned();
    Ok(match m {
        Mutation::Put { values, .. } => Ok(Some(values)),
        Mutation::Create { handle, values } => match current {
            Some(_) => Err(MutationError::HandleExists(name(&handle))),
            None => Ok(Some(values)),
        },
        Mutation::Delete { handle } => match current {
            Some(_) => Ok(None),
            None => Err(MutationError::HandleNotFound(name(&handle))),
        },
        Mutation::DeleteIfExists { .. } => Ok(None),
        Mutation::AddValues { handle, values } => match current {
            None => Err(MutationError::HandleNotFound(name(&handle))),
            Some(mut cur) => {
                for v in values {
                    if cur.iter().any(|c| c.index == v.index) {
                        return Ok(Err(MutationError::ValueExists {
                            handle: name(&handle),
                            index: v.index,
                        }));
                    }
                    cur.push(v);
                }
                Ok(Some(cur))
            }
        },
        Mutation::RemoveValues { handle, indexes } => match current {
            None => Err(MutationError::HandleNotFound(name(&handle))),
            Some(mut cur) => {
                for i in indexes {
                    let Some(pos) = cur.iter().position(|c| c.index == i) else {
                        return Ok(Err(MutationError::ValueNotFound {
                            handle: name(&handle),
                            index: i,
                        }));
                    };
                    cur.remove(pos);
                }
                Ok(Some(cur))
            }
        },
        Mutation::ModifyValues { handle, values } => match current {
            None => Err(MutationError::HandleNotFound(name(&handle))),
            Some(mut cur) => {
                for v in values {
                    let Some(slot) = cur.iter_mut().find(|c| c.index == v.index) else {
                        return Ok(Err(MutationError::ValueNotFound {
                            handle: name(&handle),
                            index: v.index,
                        }));
                    };
                    *slot = v;
                }
                Ok(Some(cur))
            }
        },
        Mutation::UpsertValues { values, .. } => {
            let mut cur = current.unwrap_or_default();
            for v in values {
                match cur.iter_mut().find(|c| c.index == v.index) {
                    Some(slot) => *slot = v,
                    None => cur.push(v),
                }
            }
            Ok(Some(cur))
        }
        // Auxiliary data and preconditions are handled by the caller and
        // never reach here; should they, the handle keeps its values.
        Mutation::PutAux { .. } | Mutation::DeleteAux { .. } | Mutation::Require { .. } => {
            Ok(current)
        }
    })
}

/// Keys after which the writer closes a sled batch and starts another
/// within the same group commit.
const SUB_BATCH_OPS: usize = 512;

/// Most changes kept in one change-log run.
pub(crate) const MAX_RUN: usize = 4096;

/// Encodes a run of consecutive change-log entries: u32 time, u32 count,
/// then per change u8 kind (1 put, 2 delete), u16 length and the handle.
/// One sled key per run instead of one per change keeps bulk writes cheap.
pub(crate) fn encode_run<S: AsRef<str>>(time: u32, changes: &[(S, ChangeKind)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(
        8 + changes
            .iter()
            .map(|(k, _)| 3 + k.as_ref().len())
            .sum::<usize>(),
    );
    v.extend_from_slice(&time.to_be_bytes());
    v.extend_from_slice(&(changes.len() as u32).to_be_bytes());
    for (key, kind) in changes {
        v.push(match kind {
            ChangeKind::Put => 1,
            ChangeKind::Delete => 2,
        });
        let key = key.as_ref().as_bytes();
        let len = key.len().min(usize::from(u16::MAX));
        v.extend_from_slice(&(len as u16).to_be_bytes());
        v.extend_from_slice(&key[..len]);
    }
    v
}

/// Decodes a run whose first change has sequence number `first`.
pub(crate) fn decode_run(first: u64, v: &[u8]) -> Result<Vec<Change>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: format!("change run {first}"),
        reason: reason.to_owned(),
    };
    let mut r = idres_model::codec::Reader::new(v);
    let time = r.u32("time").map_err(|e| corrupt(&e.to_string()))?;
    let n = r
        .count("count", MAX_RUN * 8, 3)
        .map_err(|e| corrupt(&e.to_string()))?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let kind = match r.u8("kind").map_err(|e| corrupt(&e.to_string()))? {
            1 => ChangeKind::Put,
            2 => ChangeKind::Delete,
            _ => return Err(corrupt("unknown kind")),
        };
        let len = r.u16("length").map_err(|e| corrupt(&e.to_string()))?;
        let key = r
            .take(usize::from(len), "handle")
            .map_err(|e| corrupt(&e.to_string()))?;
        let handle = std::str::from_utf8(key)
            .map_err(|_| corrupt("handle not UTF-8"))?
            .to_owned();
        out.push(Change {
            seq: first + i,
            time,
            kind,
            handle,
        });
    }
    Ok(out)
}

/// The sequence number a change-log key starts at.
pub(crate) fn run_start(k: &[u8]) -> Result<u64, StoreError> {
    k.get(1..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            key: "change".into(),
            reason: "bad key".into(),
        })
}

fn commit_group(
    shared: &Shared,
    requests: Vec<WriteRequest>,
) -> Result<Vec<Result<Committed, MutationError>>, StoreError> {
    // Held for the whole group, so that a backup's tap comes and goes
    // between groups.
    let tap = shared
        .tap
        .lock()
        .map_err(|_| StoreError::Io("tap lock poisoned".into()))?;
    let (result, ops) = match commit_group_tapped(shared, requests, tap.is_some()) {
        Ok((outcomes, ops)) => (Ok(outcomes), ops),
        Err(e) => (Err(e), None),
    };
    if let Some(tx) = tap.as_ref() {
        let msg = match (&result, ops) {
            (Err(e), _) => Some(TapMsg::Failed(e.to_string())),
            (Ok(_), Some((buf, n))) if n > 0 => Some(TapMsg::Ops(buf, n)),
            (Ok(_), _) => None,
        };
        if let Some(m) = msg {
            let _ = tx.send(m);
        }
    }
    result
}

type Tapped = (
    Vec<Result<Committed, MutationError>>,
    Option<(Vec<u8>, u64)>,
);

fn commit_group_tapped(
    shared: &Shared,
    requests: Vec<WriteRequest>,
    tapped: bool,
) -> Result<Tapped, StoreError> {
    let started = std::time::Instant::now();
    let first_seq = shared.last_seq.load(Ordering::Acquire) + 1;
    let base_count = shared.handle_count.load(Ordering::Acquire);
    let mut group = Group {
        shared,
        batch: sled::Batch::default(),
        overlay: HashMap::new(),
        aux_overlay: HashMap::new(),
        link_overlay: HashMap::new(),
        idempotency: HashMap::new(),
        next_seq: first_seq,
        count_delta: 0,
        time: now_secs(),
        wrote: false,
        log: Vec::new(),
        ops: 0,
        batch_first_seq: first_seq,
        base_count,
        sealed: Vec::new(),
        tap: tapped.then(|| (Vec::new(), 0)),
    };
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests {
        outcomes.push(group.apply(request)?);
    }
    group.seal();
    if !group.sealed.is_empty() {
        let last = group.next_seq - 1;
        let count = (base_count as isize + group.count_delta).max(0) as usize;
        // sled applies a batch under one lock and copies leaves per key;
        // several batches of a few hundred keys cost less than one of
        // thousands, and one flush still covers them all.
        // Until the first batch is applied nothing of the group is in the
        // database, and a failure means the group failed. After that, part
        // or all of it may be there (and may be durable whatever the
        // flush said), so the callers are told the outcome is unknown,
        // never that their write failed; each batch carries its own
        // change-log run, so after a restart a write is present exactly
        // when the change log lists it.
        let unknown = |e: sled::Error| StoreError::OutcomeUnknown(e.to_string());
        for (i, batch) in std::mem::take(&mut group.sealed).into_iter().enumerate() {
            shared
                .db
                .apply_batch(batch)
                .map_err(|e| if i == 0 { io(e) } else { unknown(e) })?;
        }
        for (key, bytes) in &group.overlay {
            shared.cache.set(key, bytes.as_deref());
        }
        shared.links.update(&group.link_overlay);
        let flush_started = std::time::Instant::now();
        shared.db.flush().map_err(unknown)?;
        let m = &shared.metrics;
        m.flush_seconds
            .observe(flush_started.elapsed().as_secs_f64());
        m.commit_seconds.observe(started.elapsed().as_secs_f64());
        shared.last_seq.store(last, Ordering::Release);
        shared.handle_count.store(count, Ordering::Release);
        update_prefixes(shared, &group.overlay)?;
    }
    Ok((outcomes, group.tap.take()))
}

fn update_prefixes(
    shared: &Shared,
    overlay: &HashMap<String, Option<sled::IVec>>,
) -> Result<(), StoreError> {
    let mut changed = overlay
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(PREFIX_RECORD_PREFIX)
                .is_some_and(|r| r.starts_with('/'))
        })
        .peekable();
    if changed.peek().is_none() {
        return Ok(());
    }
    let mut guard = shared
        .prefixes
        .write()
        .map_err(|_| StoreError::Io("prefix table lock poisoned".into()))?;
    let mut map: PrefixMap = (**guard).clone();
    for (key, bytes) in changed {
        let suffix = &key[PREFIX_RECORD_PREFIX.len() + 1..];
        match bytes {
            None => {
                map.remove(suffix);
            }
            Some(b) => {
                if let Some(home) = prefix_home_from(key, &RecordBytes::from_ivec(b.clone()))? {
                    map.insert(home.prefix.as_str().to_owned(), Arc::new(home));
                }
            }
        }
    }
    *guard = Arc::new(map);
    Ok(())
}

impl Store for SledStore {
    fn get(&self, key: &str) -> Result<Option<RecordBytes>, StoreError> {
        match self.shared.cache.get(key) {
            Lookup::Hit(e) => {
                self.shared.metrics.cache_hits.inc();
                return Ok(Some(RecordBytes::from_cache(e)));
            }
            Lookup::Absent => {
                self.shared.metrics.cache_hits.inc();
                return Ok(None);
            }
            Lookup::Miss => self.shared.metrics.cache_misses.inc(),
        };
        let mut k = [0u8; 1 + idres_model::MAX_HANDLE_LEN];
        let Some(slot) = k.get_mut(1..1 + key.len()) else {
            return Ok(None);
        };
        slot.copy_from_slice(key.as_bytes());
        k[0] = keys::HANDLE;
        let found = self.shared.db.get(&k[..1 + key.len()]).map_err(io)?;
        self.shared.cache.fill(key, found.as_deref());
        Ok(found.map(RecordBytes::from_ivec))
    }

    fn submit(&self, request: WriteRequest, done: WriteCallback) {
        let sender = self.jobs.lock().ok().and_then(|j| j.clone());
        match sender {
            Some(tx) => {
                self.shared.metrics.queue_depth.inc();
                match tx.try_send(Job { request, done }) {
                    Ok(()) => {}
                    Err(TrySendError::Full(job)) => {
                        self.shared.metrics.queue_depth.dec();
                        self.shared.metrics.queue_full.inc();
                        (job.done)(Err(StoreError::Busy));
                    }
                    Err(TrySendError::Disconnected(job)) => {
                        self.shared.metrics.queue_depth.dec();
                        (job.done)(Err(StoreError::Closed));
                    }
                }
            }
            None => done(Err(StoreError::Closed)),
        }
    }

    fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    fn changes(&self, from: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let mut out = Vec::new();
        // Only up to `last_seq`, which the writer publishes after the group
        // is flushed and the read cache updated: entries past it are in
        // sled already but not yet durable, and a reader following them
        // could find the record missing from a complete read cache.
        let through = self.last_seq();
        if from > through || limit == 0 {
            return Ok(out);
        }
        // Start at the run holding `from`: the last run starting at or
        // before it.
        let start = match self
            .shared
            .db
            .range(keys::change(0)..=keys::change(from))
            .next_back()
        {
            Some(item) => run_start(&item.map_err(io)?.0)?,
            None => 0,
        };
        for item in self
            .shared
            .db
            .range(keys::change(start)..=keys::change(through))
        {
            let (k, v) = item.map_err(io)?;
            for c in decode_run(run_start(&k)?, &v)? {
                if c.seq < from {
                    continue;
                }
                if c.seq > through || out.len() == limit {
                    return Ok(out);
                }
                out.push(c);
            }
        }
        Ok(out)
    }

    fn first_seq(&self) -> Result<u64, StoreError> {
        match self
            .shared
            .db
            .range(keys::change(0)..=keys::change(u64::MAX))
            .next()
        {
            Some(item) => run_start(&item.map_err(io)?.0),
            None => Ok(self.last_seq() + 1),
        }
    }

    fn list(
        &self,
        prefix: &Prefix,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut start = keys::handle(prefix.as_str());
        start.push(b'/');
        let end = keys::prefix_end(&start);
        let from = match after {
            Some(a) => {
                let mut k = keys::handle(a);
                k.push(0);
                k.max(start)
            }
            None => start,
        };
        let mut out = Vec::new();
        for item in self.shared.db.range(from..end).take(limit) {
            let (k, _) = item.map_err(io)?;
            out.push(String::from_utf8_lossy(&k[1..]).into_owned());
        }
        Ok(out)
    }

    fn scan(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, RecordBytes)>, StoreError> {
        let start = [keys::HANDLE];
        let end = keys::prefix_end(&start);
        let from = match after {
            Some(a) => {
                let mut k = keys::handle(a);
                k.push(0);
                k
            }
            None => start.to_vec(),
        };
        let mut out = Vec::with_capacity(limit.min(65_536));
        for item in self.shared.db.range(from..end).take(limit) {
            let (k, v) = item.map_err(io)?;
            out.push((
                String::from_utf8_lossy(&k[1..]).into_owned(),
                RecordBytes::from_ivec(v),
            ));
        }
        Ok(out)
    }

    fn handle_count(&self) -> usize {
        self.shared.handle_count.load(Ordering::Acquire)
    }

    fn prefix_home(&self, prefix: &str) -> Option<Arc<PrefixHome>> {
        let map = self.shared.prefixes.read().ok()?;
        if map.is_empty() {
            return None;
        }
        let upper = prefix.to_ascii_uppercase();
        let mut p = upper.as_str();
        loop {
            if let Some(home) = map.get(p) {
                return Some(Arc::clone(home));
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return None,
            }
        }
    }

    fn prefixes(&self) -> Vec<Prefix> {
        let Ok(map) = self.shared.prefixes.read() else {
            return Vec::new();
        };
        let mut v: Vec<Prefix> = map.values().map(|h| h.prefix.clone()).collect();
        v.sort();
        v
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.shared.db.flush().map_err(io).map(drop)
    }

    fn aux_get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .shared
            .db
            .get(keys::aux(space, key))
            .map_err(io)?
            .map(|v| v.to_vec()))
    }

    fn aux_scan(
        &self,
        space: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<AuxEntry>, StoreError> {
        let start = keys::aux_space(space);
        let end = keys::prefix_end(&start);
        let from = match after {
            Some(a) => {
                let mut k = keys::aux(space, a);
                k.push(0);
                k
            }
            None => start.clone(),
        };
        let mut out = Vec::new();
        for item in self.shared.db.range(from..end).take(limit) {
            let (k, v) = item.map_err(io)?;
            out.push((k[start.len()..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn find_by_value(
        &self,
        value_type: &str,
        pattern: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ValuePage, StoreError> {
        let tp = index::type_prefix(value_type);
        let mut lit = tp.clone();
        lit.extend_from_slice(&index::literal_start(pattern));
        let end = keys::prefix_end(&lit);
        let from = match cursor.and_then(|c| self.shared.cursors.unseal(c)) {
            Some(mut k) if k.starts_with(&lit) => {
                k.push(0);
                k
            }
            _ => lit,
        };
        let mut page = ValuePage::default();
        let mut seen = std::collections::HashSet::new();
        let mut last_taken: Option<sled::IVec> = None;
        for item in self.shared.db.range(from..end) {
            let (k, _) = item.map_err(io)?;
            let Some((value, handle)) = index::split_entry(&k[tp.len()..]) else {
                continue;
            };
            if !index::glob_bytes(pattern.as_bytes(), value) {
                continue;
            }
            if !seen.contains(handle) {
                if page.handles.len() == limit {
                    // Something lies beyond this page: say where it ended.
                    page.next = last_taken.as_deref().map(|k| self.shared.cursors.seal(k));
                    break;
                }
                seen.insert(handle.to_vec());
                page.handles
                    .push(String::from_utf8_lossy(handle).into_owned());
            }
            last_taken = Some(k);
        }
        Ok(page)
    }

    fn find_link(&self, link_key: &str) -> Result<Vec<String>, StoreError> {
        if let Some(c) = self.shared.links.get(link_key) {
            return Ok(c.iter().take(links::MAX_CLAIMS).cloned().collect());
        }
        let seen = self.shared.links.generation();
        let mut out = match self.shared.db.get(links::key(link_key)).map_err(io)? {
            Some(v) => links::decode(&v),
            None => Vec::new(),
        };
        self.shared.links.fill(link_key, &out, seen);
        out.truncate(links::MAX_CLAIMS);
        Ok(out)
    }

    fn scan_links(
        &self,
        prefix: &str,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let start = links::key(prefix);
        let end = keys::prefix_end(&start);
        let from = match after {
            Some((l, _)) => links::key(l).max(start),
            None => start,
        };
        let mut out = Vec::new();
        for item in self.shared.db.range(from..end) {
            let (k, v) = item.map_err(io)?;
            let Ok(link) = std::str::from_utf8(&k[1..]) else {
                continue;
            };
            for h in links::decode(&v) {
                if let Some((al, ah)) = after {
                    if link == al && h.as_str() <= ah {
                        continue;
                    }
                }
                if out.len() >= limit {
                    return Ok(out);
                }
                out.push((link.to_owned(), h));
            }
        }
        Ok(out)
    }

    fn count_by_value(&self, value_type: &str, pattern: &str) -> Result<usize, StoreError> {
        let tp = index::type_prefix(value_type);
        let mut lit = tp.clone();
        lit.extend_from_slice(&index::literal_start(pattern));
        let end = keys::prefix_end(&lit);
        let mut n = 0;
        for item in self.shared.db.range(lit..end) {
            let (k, _) = item.map_err(io)?;
            if index::split_entry(&k[tp.len()..])
                .is_some_and(|(v, _)| index::glob_bytes(pattern.as_bytes(), v))
            {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
