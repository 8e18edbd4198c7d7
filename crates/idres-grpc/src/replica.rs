//! The replica side of sync: a mirror or secondary node following its
//! upstream's change log ([`crate::sync_service`]).
//!
//! Each batch is applied as one atomic store write that also records where
//! to resume (the upstream URL's cursor in the `grpc.sync` auxiliary key
//! space, stored as the [`pb::SubscribeRequest`] to send next). A replica
//! killed at any point restarts from the last batch it made durable; since
//! entries carry whole records, re-applying a batch changes nothing.
//! Records equal to the local copy are not rewritten, so that following
//! one's own escrowed data back does not loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use idres_model::codec::Reader;
use idres_model::{decode_values, Handle};
use idres_store::{Mutation, Store, WriteOutcome, WriteRequest};
use prost::Message as _;
use tokio::sync::{oneshot, watch};
use tokio_stream::StreamExt as _;
use tonic::metadata::MetadataValue;

use crate::auth::DEV_PEER_HEADER;
use crate::error::{ServiceError, ServiceResult};
use crate::pb::{self, sync_batch::Phase, sync_service_client::SyncServiceClient};
use crate::ranges::{self, Position};
use crate::tls::{self, ClientTlsPem};

/// Auxiliary key space of sync cursors, by upstream URL.
pub const CURSORS: &str = "grpc.sync";
/// How often a follower logs its progress.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Most batches applied but not yet durable.
const IN_FLIGHT: usize = 8;
/// Records per write request when applying a sync batch.
const APPLY_CHUNK: usize = 256;

/// How to reach an upstream node.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `https://host:port` (or `http://127.0.0.1:port` in development).
    pub url: String,
    /// Client TLS material; `None` only for a development plaintext
    /// upstream.
    pub tls: Option<ClientTlsPem>,
    /// Name sent as `x-idres-dev-peer` on a plaintext connection.
    pub dev_peer: Option<String>,
}

impl Upstream {
    /// A channel to the upstream.
    pub async fn channel(&self) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        tls::connect(&self.url, self.tls.as_ref()).await
    }

    /// Wraps a request message, adding the development peer name if any.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(p) = &self.dev_peer {
            if let Ok(v) = MetadataValue::try_from(p.as_str()) {
                r.metadata_mut().insert(DEV_PEER_HEADER, v);
            }
        }
        r
    }
}

/// What a follower reports as it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowStatus {
    /// Upstream sequence number applied through (0 during a first
    /// snapshot).
    pub applied_seq: u64,
    /// Upstream's last sequence number as of the last batch.
    pub upstream_last_seq: u64,
    /// Whether a snapshot is in progress.
    pub in_snapshot: bool,
    /// Entries applied since start.
    pub entries: u64,
    /// Batches applied since start.
    pub batches: u64,
    /// When the upstream last showed this follower caught up with it
    /// (every change applied, no snapshot running); a caught-up follower
    /// hears so about every second.
    pub in_sync_at: Option<std::time::SystemTime>,
}

impl FollowStatus {
    /// Changes the upstream had that were not yet applied, as of the last
    /// batch.
    pub fn lag_changes(&self) -> u64 {
        self.upstream_last_seq.saturating_sub(self.applied_seq)
    }

    /// Seconds since the follower was last known to be caught up
    /// (`since` when it never was: the follower's start).
    pub fn lag_seconds(&self, since: std::time::SystemTime) -> f64 {
        std::time::SystemTime::now()
            .duration_since(self.in_sync_at.unwrap_or(since))
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// Options of a follower.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Only these prefixes (empty: everything).
    pub prefixes: Vec<String>,
    /// Entries per batch asked for.
    pub batch_size: u32,
    /// Stop once caught up (for one-shot catch-up and benchmarks).
    pub stop_when_caught_up: bool,
}

/// The cursor stored for `url`, or the start for a new replica: from
/// sequence number 1, so that a source that still has its whole log
/// streams it, and one that trimmed it sends a snapshot.
pub fn load_cursor(
    store: &dyn Store,
    url: &str,
    prefixes: &[String],
) -> ServiceResult<pb::SubscribeRequest> {
    let fresh = pb::SubscribeRequest {
        from_seq: 1,
        prefixes: prefixes.to_vec(),
        ..Default::default()
    };
    let Some(bytes) = store.aux_get(CURSORS, url.as_bytes())? else {
        return Ok(fresh);
    };
    let c = pb::SubscribeRequest::decode(bytes.as_slice())
        .map_err(|e| ServiceError::Internal(format!("stored sync cursor: {e}")))?;
    if c.prefixes != prefixes {
        // A different filter: what was applied says nothing about the new
        // ranges. A snapshot brings them and removes what is no longer
        // selected within them.
        return Ok(pb::SubscribeRequest {
            from_seq: 0,
            ..fresh
        });
    }
    Ok(c)
}

/// The follower cursor that makes a store restored from `url`'s backup
/// follow `url` from the backup's sequence number `last_seq`, with no
/// snapshot (what a follower of the whole store would have stored at that
/// point): key space, key and value, to write with the restore.
pub fn seeded_cursor(url: &str, last_seq: u64) -> (String, Vec<u8>, Vec<u8>) {
    let cursor = pb::SubscribeRequest {
        from_seq: last_seq + 1,
        ..Default::default()
    };
    (
        CURSORS.to_owned(),
        url.as_bytes().to_vec(),
        cursor.encode_to_vec(),
    )
}

fn decode_record(
    key: &str,
    bytes: &[u8],
) -> ServiceResult<(Handle, Vec<idres_model::HandleValue>)> {
    let handle = Handle::parse(key)
        .map_err(|e| ServiceError::Internal(format!("upstream sent a bad handle: {e}")))?;
    let mut r = Reader::new(bytes);
    let values = decode_values(&mut r)
        .and_then(|v| r.finish("record").map(|()| v))
        .map_err(|e| ServiceError::Internal(format!("upstream record of {key}: {e}")))?;
    Ok((handle, values))
}

/// The mutations of one batch, and the cursor after it.
///
/// A record is compared with the local copy (and left alone when equal)
/// only if no earlier batch still in flight touches it: until that batch
/// is durable the local copy is not the one this batch follows.
fn plan(
    store: &dyn Store,
    batch: &pb::SyncBatch,
    cursor: &pb::SubscribeRequest,
    in_flight: &HashMap<String, usize>,
) -> ServiceResult<(Vec<Mutation>, pb::SubscribeRequest, FollowStatus)> {
    let mut mutations = Vec::with_capacity(batch.entries.len() + 1);
    let mut status = FollowStatus::default();
    for e in &batch.entries {
        let local = if in_flight.contains_key(&e.handle) {
            None
        } else {
            store.get(&e.handle)?
        };
        if e.deleted {
            if local.is_some() || in_flight.contains_key(&e.handle) {
                let handle = Handle::parse(&e.handle).map_err(|x| {
                    ServiceError::Internal(format!("upstream sent a bad handle: {x}"))
                })?;
                mutations.push(Mutation::DeleteIfExists { handle });
            }
        } else if local.as_ref().map(|l| l.encoded_values()) != Some(e.values.as_slice()) {
            let (handle, values) = decode_record(&e.handle, &e.values)?;
            mutations.push(Mutation::Put { handle, values });
        }
    }
    let mut next = cursor.clone();
    match &batch.phase {
        Some(Phase::Snapshot(s)) => {
            // Local records of this range that the snapshot skipped over
            // are gone at the source.
            let sent: HashSet<&str> = batch.entries.iter().map(|e| e.handle.as_str()).collect();
            let bound = if s.prefix_done {
                None
            } else {
                Some(s.after_key.as_str())
            };
            let mut after = if s.start_after.is_empty() {
                ranges::scan_start(&s.prefix)
            } else {
                Some(s.start_after.clone())
            };
            'scan: loop {
                let page = store.scan(after.as_deref(), 4096)?;
                if page.is_empty() {
                    break;
                }
                for (key, _) in &page {
                    match ranges::position(&s.prefix, key) {
                        Position::Before => continue,
                        Position::After => break 'scan,
                        Position::Inside => {}
                    }
                    if bound.is_some_and(|b| key.as_str() > b) {
                        break 'scan;
                    }
                    if !sent.contains(key.as_str()) {
                        if let Ok(handle) = Handle::parse(key) {
                            mutations.push(Mutation::DeleteIfExists { handle });
                        }
                    }
                }
                after = page.last().map(|(k, _)| k.clone());
            }
            if s.done {
                next.from_seq = s.snapshot_seq + 1;
                next.resume_snapshot_seq = 0;
                next.resume_snapshot_after.clear();
                status.applied_seq = s.snapshot_seq;
            } else {
                next.from_seq = 0;
                next.resume_snapshot_seq = s.snapshot_seq;
                next.resume_snapshot_after = s.after_key.clone();
                status.in_snapshot = true;
            }
            status.upstream_last_seq = s.snapshot_seq;
        }
        Some(Phase::Changes(c)) => {
            next.from_seq = c.through_seq + 1;
            next.resume_snapshot_seq = 0;
            next.resume_snapshot_after.clear();
            status.applied_seq = c.through_seq;
            status.upstream_last_seq = c.source_last_seq;
        }
        None => {
            return Err(ServiceError::Internal(
                "upstream sent a batch without phase".into(),
            ))
        }
    }
    status.entries = batch.entries.len() as u64;
    Ok((mutations, next, status))
}

/// Follows `upstream` into `store` until `stop` turns true (or, with
/// `stop_when_caught_up`, until caught up), reconnecting after any error.
pub async fn follow(
    store: Arc<dyn Store>,
    upstream: Upstream,
    options: FollowOptions,
    mut stop: watch::Receiver<bool>,
    status_tx: Option<watch::Sender<FollowStatus>>,
) -> ServiceResult<FollowStatus> {
    let mut total = FollowStatus::default();
    let mut backoff = idres_net::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if *stop.borrow() {
            return Ok(total);
        }
        let run = follow_once(&store, &upstream, &options, &mut total, status_tx.as_ref());
        let result = tokio::select! {
            r = run => r,
            _ = stop.changed() => return Ok(total),
        };
        match result {
            Ok(()) if options.stop_when_caught_up => return Ok(total),
            Ok(()) => {
                tracing::info!(upstream = %upstream.url, "sync stream ended; reconnecting");
                backoff.reset();
            }
            Err(e) => {
                tracing::warn!(upstream = %upstream.url, error = %e, "sync interrupted; resuming");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.changed() => return Ok(total),
        }
    }
}

async fn follow_once(
    store: &Arc<dyn Store>,
    upstream: &Upstream,
    options: &FollowOptions,
    total: &mut FollowStatus,
    status_tx: Option<&watch::Sender<FollowStatus>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut cursor = load_cursor(&**store, &upstream.url, &options.prefixes)?;
    let channel = upstream.channel().await?;
    let mut client = SyncServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let mut req = cursor.clone();
    req.batch_size = options.batch_size;
    req.stop_when_caught_up = options.stop_when_caught_up;
    let mut stream = client.subscribe(upstream.request(req)).await?.into_inner();
    tracing::info!(upstream = %upstream.url, from_seq = cursor.from_seq,
        resume_snapshot_seq = cursor.resume_snapshot_seq, "following");
    // Batches submitted and not yet durable, each with the cursor from
    // before it.
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut in_flight: Arc<HashMap<String, usize>> = Arc::new(HashMap::new());
    let mut last_report = std::time::Instant::now();
    let mut report_entries = total.entries;
    let mut finish = |total: &mut FollowStatus, st: FollowStatus| {
        if last_report.elapsed() >= REPORT_EVERY {
            let secs = last_report.elapsed().as_secs_f64();
            tracing::info!(
                upstream = %upstream.url,
                applied_seq = st.applied_seq,
                upstream_last_seq = st.upstream_last_seq,
                in_snapshot = st.in_snapshot,
                entries_per_s = ((total.entries - report_entries) as f64 / secs) as u64,
                "sync progress"
            );
            last_report = std::time::Instant::now();
            report_entries = total.entries;
        }
        total.applied_seq = st.applied_seq;
        total.upstream_last_seq = st.upstream_last_seq;
        total.in_snapshot = st.in_snapshot;
        total.entries += st.entries;
        total.batches += 1;
        if !st.in_snapshot && st.applied_seq >= st.upstream_last_seq {
            total.in_sync_at = Some(std::time::SystemTime::now());
        }
        if let Some(tx) = status_tx {
            let _ = tx.send(total.clone());
        }
    };
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let s = Arc::clone(store);
        let prev = cursor.clone();
        let flying = Arc::clone(&in_flight);
        let (mut mutations, next, st, keys) = tokio::task::spawn_blocking(move || {
            plan(&*s, &batch, &prev, &flying).map(|(m, n, st)| {
                let keys: Vec<String> = batch.entries.into_iter().map(|e| e.handle).collect();
                (m, n, st, keys)
            })
        })
        .await??;
        if mutations.is_empty() && next == cursor {
            // Nothing new (a heartbeat): nothing to write. The stream is
            // idle, so let what is in flight land and report the state.
            while let Some(p) = pending.pop_front() {
                let (st, keys) = p.settle(&**store, &upstream.url).await?;
                land(&mut in_flight, &keys);
                finish(total, st);
            }
            finish(total, st);
            continue;
        }
        {
            let map = Arc::make_mut(&mut in_flight);
            for k in &keys {
                *map.entry(k.clone()).or_insert(0) += 1;
            }
        }
        // The batch goes to the store as requests of a few hundred records,
        // which the writer commits in small sled batches (cheaper per key)
        // under one flush; the cursor rides with the last of them. Should
        // the node stop between them, the records already written are
        // written again on resume, which changes nothing. Should one of
        // them be refused, the cursor is put back to where it was before
        // the batch (see [`Pending::settle`]), so nothing is skipped.
        let mut tail = if mutations.len() > APPLY_CHUNK {
            mutations.split_off(mutations.len() - mutations.len() % APPLY_CHUNK)
        } else {
            std::mem::take(&mut mutations)
        };
        tail.push(Mutation::PutAux {
            space: CURSORS.into(),
            key: upstream.url.as_bytes().to_vec(),
            value: next.encode_to_vec(),
        });
        let prev_cursor = std::mem::replace(&mut cursor, next);
        let mut receivers = Vec::new();
        let mut requests: Vec<Vec<Mutation>> = Vec::new();
        while !mutations.is_empty() {
            let rest = mutations.split_off(mutations.len().min(APPLY_CHUNK));
            requests.push(std::mem::replace(&mut mutations, rest));
        }
        requests.push(tail);
        for mutations in requests {
            let (tx, rx) = oneshot::channel();
            store.submit(
                WriteRequest {
                    mutations,
                    idempotency_key: None,
                },
                Box::new(move |o| {
                    let _ = tx.send(o);
                }),
            );
            receivers.push(rx);
        }
        pending.push_back(Pending {
            receivers,
            status: st,
            keys,
            before: prev_cursor,
        });
        while pending.len() >= IN_FLIGHT {
            if let Some(p) = pending.pop_front() {
                let (st, keys) = p.settle(&**store, &upstream.url).await?;
                land(&mut in_flight, &keys);
                finish(total, st);
            }
        }
    }
    while let Some(p) = pending.pop_front() {
        let (st, keys) = p.settle(&**store, &upstream.url).await?;
        land(&mut in_flight, &keys);
        finish(total, st);
    }
    Ok(())
}

/// A batch handed to the store.
struct Pending {
    receivers: Vec<oneshot::Receiver<WriteOutcome>>,
    status: FollowStatus,
    keys: Vec<String>,
    /// The cursor before the batch.
    before: pb::SubscribeRequest,
}

impl Pending {
    /// Waits until every request of the batch is durable. If one was
    /// refused, the cursor, which may have landed with a later request, is
    /// put back to where it was before the batch, so that the follower
    /// asks for the batch again instead of skipping what was refused.
    async fn settle(
        self,
        store: &dyn Store,
        url: &str,
    ) -> Result<(FollowStatus, Vec<String>), ServiceError> {
        let mut failed = None;
        for rx in self.receivers {
            if let Err(e) = settle(rx).await {
                failed.get_or_insert(e);
            }
        }
        let Some(e) = failed else {
            return Ok((self.status, self.keys));
        };
        let reset = store.write(WriteRequest {
            mutations: vec![Mutation::PutAux {
                space: CURSORS.into(),
                key: url.as_bytes().to_vec(),
                value: self.before.encode_to_vec(),
            }],
            idempotency_key: None,
        });
        if !matches!(reset, Ok(Ok(_))) {
            tracing::error!(upstream = %url, "could not put the sync cursor back after a refused batch");
        }
        Err(e)
    }
}

fn land(in_flight: &mut Arc<HashMap<String, usize>>, keys: &[String]) {
    let map = Arc::make_mut(in_flight);
    for k in keys {
        if let Some(n) = map.get_mut(k) {
            *n -= 1;
            if *n == 0 {
                map.remove(k);
            }
        }
    }
}

async fn settle(rx: oneshot::Receiver<WriteOutcome>) -> Result<(), ServiceError> {
    match rx.await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(e))) => Err(ServiceError::Internal(format!(
            "applying a sync batch: {e}"
        ))),
        Ok(Err(e)) => Err(ServiceError::Storage(e)),
        Err(_) => Err(ServiceError::Unavailable("the store shut down".into())),
    }
}
