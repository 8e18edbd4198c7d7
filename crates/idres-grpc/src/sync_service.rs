//! `idres.v1.SyncService`: the change log for replicas, and digests.
//!
//! A subscription runs on a blocking thread of its own: it walks the store
//! (snapshot) or its change log, reads each changed record as it is now,
//! and sends batches into a bounded channel, so a slow replica slows only
//! its own stream. When it has caught up it polls the log's end.

use std::sync::Arc;
use std::time::Duration;

use idres_store::Store;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::core::{Core, Reader, Role};
use crate::error::{ServiceError, ServiceResult};
use crate::pb::{self, sync_batch::Phase, sync_service_server::SyncService};
use crate::ranges::{self, Filter, Position};
use crate::registry::Caller;

/// Default entries per batch.
const DEFAULT_BATCH: usize = 1024;
/// Most entries per batch.
const MAX_BATCH: usize = 8192;
/// Most bytes of records in one batch, under the 4 MiB a gRPC peer takes
/// by default: a batch ends early rather than grow past it.
pub const MAX_BATCH_BYTES: usize = 3 << 20;
/// How often a caught-up subscription looks for new changes.
const POLL: Duration = Duration::from_millis(20);
/// How often a follower that is caught up is told so (an empty batch), so
/// that it can tell a quiet source from one it lost.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The SyncService implementation.
#[derive(Debug, Clone)]
pub struct SyncServiceImpl {
    core: Arc<Core>,
}

impl SyncServiceImpl {
    /// A service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Checks the caller may follow `filter`.
    fn authorise<T>(&self, req: &Request<T>, filter: &Filter) -> ServiceResult<()> {
        let caller = self.core.caller(req)?;
        if self.core.role != Role::Top {
            // Replicas of replicas: any verified client of this node.
            return self.core.reader(req).map(drop);
        }
        match &caller {
            Caller::Operator(_) => Ok(()),
            other => {
                let f = other.active_node()?;
                if filter.is_all() {
                    return Err(ServiceError::PermissionDenied(format!(
                        "node {} may follow only the prefix table (0.NA) and its own prefixes: \
                         name them in prefixes",
                        f.id
                    )));
                }
                let own = self.core.registry.prefixes_of(Some(&f.id));
                for p in &filter.prefixes {
                    let allowed = p == idres_model::PREFIX_RECORD_PREFIX
                        || own.iter().any(|a| {
                            idres_model::Prefix::parse(&a.prefix)
                                .ok()
                                .zip(idres_model::Prefix::parse(p).ok())
                                .is_some_and(|(a, p)| a.covers(&p))
                        });
                    if !allowed {
                        return Err(ServiceError::PermissionDenied(format!(
                            "prefix {p} is not the prefix table nor a prefix of node {}",
                            f.id
                        )));
                    }
                }
                Ok(())
            }
        }
    }
}

type Tx = mpsc::Sender<Result<pb::SyncBatch, Status>>;

#[tonic::async_trait]
impl SyncService for SyncServiceImpl {
    type SubscribeStream = ReceiverStream<Result<pb::SyncBatch, Status>>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = Filter::parse(&req.get_ref().prefixes)
            .map_err(|(i, e)| ServiceError::invalid(format!("prefixes[{i}]"), e))?;
        self.authorise(&req, &filter)?;
        // A node's subscription lasts while its filing stays active.
        let follower = match (self.core.role, self.core.caller(&req)?) {
            (Role::Top, Caller::Node(_, f)) => Some((f.id.clone(), f.certificate_sha256.clone())),
            _ => None,
        };
        let r = req.into_inner();
        let store = Arc::clone(&self.core.store);
        let last = store.last_seq();
        if r.from_seq > last + 1 {
            return Err(ServiceError::invalid(
                "from_seq",
                format!(
                    "{} is past this node's last sequence number {last}",
                    r.from_seq
                ),
            )
            .into());
        }
        let batch = match r.batch_size {
            0 => DEFAULT_BATCH,
            n => (n as usize).min(MAX_BATCH),
        };
        let (tx, rx) = mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = produce(&*store, &filter, &r, batch, &tx) {
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        let Some((id, sha)) = follower else {
            return Ok(Response::new(ReceiverStream::new(rx)));
        };
        let (out, out_rx) = mpsc::channel(8);
        tokio::spawn(watch_filing(Arc::clone(&self.core), id, sha, rx, out));
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }

    async fn digest(
        &self,
        req: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        let reader = self.core.reader(&req)?;
        let prefix = match req.get_ref().prefix.as_str() {
            "" => String::new(),
            p => idres_model::Prefix::parse(p)
                .map_err(|e| ServiceError::invalid("prefix", e))?
                .as_str()
                .to_owned(),
        };
        if let Reader::Node(id) = &reader {
            if !id.is_empty() && prefix.is_empty() {
                return Err(ServiceError::PermissionDenied(
                    "a node asks for digests of prefixes, not of the whole store".into(),
                )
                .into());
            }
        }
        let store = Arc::clone(&self.core.store);
        let d = tokio::task::spawn_blocking(move || digest(&*store, &prefix))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(d))
    }

    async fn status(
        &self,
        req: Request<pb::SyncStatusRequest>,
    ) -> Result<Response<pb::SyncStatus>, Status> {
        self.core.reader(&req)?;
        let s = &self.core.store;
        Ok(Response::new(pb::SyncStatus {
            first_seq: s.first_seq().map_err(ServiceError::from)?,
            last_seq: s.last_seq(),
            handle_count: s.handle_count() as u64,
            role: self.core.role.as_str().into(),
        }))
    }
}

/// Forwards a node's subscription from `from` to `to` while its filing
/// stays active: whenever a filing changes, the node's is read again, and
/// once it is suspended, revoked or bound to another certificate the
/// stream ends with PERMISSION_DENIED (the producer stops when it finds
/// its channel closed).
async fn watch_filing(
    core: Arc<Core>,
    id: String,
    sha256: String,
    mut from: mpsc::Receiver<Result<pb::SyncBatch, Status>>,
    to: Tx,
) {
    let mut changes = core.registry.watch();
    let mut pending: Option<Result<pb::SyncBatch, Status>> = None;
    loop {
        if let Some(item) = pending.take() {
            tokio::select! {
                permit = to.reserve() => match permit {
                    Ok(permit) => permit.send(item),
                    Err(_) => return,
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if let Err(e) = core.registry.still_active(&id, &sha256) {
                        end(&to, e).await;
                        return;
                    }
                    pending = Some(item);
                }
            }
            continue;
        }
        tokio::select! {
            item = from.recv() => match item {
                Some(item) => pending = Some(item),
                None => return,
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                if let Err(e) = core.registry.still_active(&id, &sha256) {
                    end(&to, e).await;
                    return;
                }
            }
        }
    }
}

/// Ends a subscription with `e`, waiting a bounded time for room in the
/// channel; the stream ends when the sender is dropped in any case.
async fn end(to: &Tx, e: ServiceError) {
    let _ = tokio::time::timeout(Duration::from_millis(500), to.send(Err(e.into()))).await;
}

/// A digest of every record under `prefix` ("" = all), as the proto says.
pub fn digest(store: &dyn Store, prefix: &str) -> ServiceResult<pb::DigestResponse> {
    let last_seq = store.last_seq();
    let mut h = Sha256::new();
    let mut count = 0u64;
    let mut after = ranges::scan_start(prefix);
    'outer: loop {
        let page = store.scan(after.as_deref(), 4096)?;
        if page.is_empty() {
            break;
        }
        for (key, rec) in &page {
            match ranges::position(prefix, key) {
                Position::Before => continue,
                Position::After => break 'outer,
                Position::Inside => {}
            }
            let values = rec.encoded_values();
            h.update((key.len() as u32).to_be_bytes());
            h.update(key.as_bytes());
            h.update((values.len() as u32).to_be_bytes());
            h.update(values);
            count += 1;
        }
        after = page.last().map(|(k, _)| k.clone());
    }
    Ok(pb::DigestResponse {
        prefix: prefix.to_owned(),
        count,
        sha256: hex::encode(h.finalize()),
        last_seq,
    })
}

fn send(tx: &Tx, batch: pb::SyncBatch) -> bool {
    tx.blocking_send(Ok(batch)).is_ok()
}

/// Streams a snapshot of every range of `filter`, starting after `resume`
/// if given. Returns false if the replica went away.
fn snapshot(
    store: &dyn Store,
    filter: &Filter,
    snapshot_seq: u64,
    resume: Option<&str>,
    batch: usize,
    tx: &Tx,
) -> ServiceResult<bool> {
    let ranges = filter.ranges();
    let n = ranges.len();
    for (i, prefix) in ranges.into_iter().enumerate() {
        // Continue a resumed snapshot after its key; ranges wholly before
        // it are sent empty, which deletes nothing at the replica.
        let mut after = match (resume, ranges::scan_start(&prefix)) {
            (Some(r), Some(s)) => Some(if r > s.as_str() { r.to_owned() } else { s }),
            (Some(r), None) => Some(r.to_owned()),
            (None, s) => s,
        };
        let mut start_after = match resume {
            Some(r) if ranges::position(&prefix, r) == Position::Inside => r.to_owned(),
            _ => String::new(),
        };
        loop {
            let page = store.scan(after.as_deref(), batch)?;
            let full = page.len() == batch;
            let mut entries = Vec::with_capacity(page.len());
            let mut ended = !full;
            let mut bytes = 0usize;
            let mut cut = None;
            for (key, rec) in page.iter() {
                match ranges::position(&prefix, key) {
                    Position::Before => continue,
                    Position::After => {
                        ended = true;
                        break;
                    }
                    Position::Inside => {}
                }
                let values = rec.encoded_values().to_vec();
                bytes += values.len() + key.len() + 16;
                entries.push(pb::SyncEntry {
                    seq: 0,
                    handle: key.clone(),
                    deleted: false,
                    values,
                    time: 0,
                });
                if bytes >= MAX_BATCH_BYTES {
                    // The rest of the page comes in the next batch.
                    cut = Some(key.clone());
                    ended = false;
                    break;
                }
            }
            after = cut
                .or_else(|| page.last().map(|(k, _)| k.clone()))
                .or(after);
            let after_key = entries.last().map(|e| e.handle.clone()).unwrap_or_default();
            let progress = pb::SnapshotProgress {
                snapshot_seq,
                prefix: prefix.clone(),
                after_key: if after_key.is_empty() {
                    start_after.clone()
                } else {
                    after_key.clone()
                },
                prefix_done: ended,
                done: ended && i + 1 == n,
                start_after: start_after.clone(),
            };
            if !after_key.is_empty() {
                start_after = after_key;
            }
            if !send(
                tx,
                pb::SyncBatch {
                    entries,
                    phase: Some(Phase::Snapshot(progress)),
                },
            ) {
                return Ok(false);
            }
            if ended {
                break;
            }
        }
    }
    Ok(true)
}

fn produce(
    store: &dyn Store,
    filter: &Filter,
    r: &pb::SubscribeRequest,
    batch: usize,
    tx: &Tx,
) -> ServiceResult<()> {
    let first = store.first_seq()?;
    let mut next = if r.resume_snapshot_seq > 0 && r.resume_snapshot_seq + 1 >= first {
        let s = r.resume_snapshot_seq;
        if !snapshot(store, filter, s, Some(&r.resume_snapshot_after), batch, tx)? {
            return Ok(());
        }
        s + 1
    } else if r.from_seq == 0 || r.from_seq < first {
        let s = store.last_seq();
        if !snapshot(store, filter, s, None, batch, tx)? {
            return Ok(());
        }
        s + 1
    } else {
        r.from_seq
    };
    let mut last_sent = std::time::Instant::now();
    loop {
        if next < store.first_seq()? {
            // The log was trimmed past what this replica has: start over.
            let s = store.last_seq();
            if !snapshot(store, filter, s, None, batch, tx)? {
                return Ok(());
            }
            next = s + 1;
        }
        let changes = store.changes(next, batch)?;
        if changes.first().is_some_and(|c| c.seq != next) {
            // Trimmed between the check above and this read: the log no
            // longer has `next`, so go round and take a snapshot.
            continue;
        }
        let Some(through) = changes.last().map(|c| c.seq) else {
            if r.stop_when_caught_up {
                return Ok(());
            }
            if tx.is_closed() {
                return Ok(());
            }
            if last_sent.elapsed() >= HEARTBEAT {
                let progress = pb::ChangeProgress {
                    through_seq: next - 1,
                    source_last_seq: store.last_seq(),
                };
                let beat = pb::SyncBatch {
                    entries: Vec::new(),
                    phase: Some(Phase::Changes(progress)),
                };
                if !send(tx, beat) {
                    return Ok(());
                }
                last_sent = std::time::Instant::now();
            }
            std::thread::sleep(POLL);
            continue;
        };
        // A later change of the same handle in this batch sends the same
        // current record: send it once, at its last change.
        let mut last_of: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::with_capacity(changes.len());
        for (i, c) in changes.iter().enumerate() {
            last_of.insert(c.handle.as_str(), i);
        }
        let mut entries = Vec::with_capacity(changes.len());
        let mut through = through;
        let mut bytes = 0usize;
        for (i, c) in changes.iter().enumerate() {
            if bytes >= MAX_BATCH_BYTES {
                // Bounded in bytes: this batch covers the changes before
                // this one; the next starts here.
                through = c.seq - 1;
                break;
            }
            if !filter.matches(&c.handle) || last_of.get(c.handle.as_str()) != Some(&i) {
                continue;
            }
            let current = store.get(&c.handle)?;
            bytes += current.as_ref().map_or(0, |r| r.encoded_values().len()) + c.handle.len() + 24;
            entries.push(match current {
                Some(rec) => pb::SyncEntry {
                    seq: c.seq,
                    handle: c.handle.clone(),
                    deleted: false,
                    values: rec.encoded_values().to_vec(),
                    time: c.time,
                },
                None => pb::SyncEntry {
                    seq: c.seq,
                    handle: c.handle.clone(),
                    deleted: true,
                    values: Vec::new(),
                    time: c.time,
                },
            });
        }
        next = through + 1;
        let progress = pb::ChangeProgress {
            through_seq: through,
            source_last_seq: store.last_seq(),
        };
        if !send(
            tx,
            pb::SyncBatch {
                entries,
                phase: Some(Phase::Changes(progress)),
            },
        ) {
            return Ok(());
        }
        last_sent = std::time::Instant::now();
    }
}
