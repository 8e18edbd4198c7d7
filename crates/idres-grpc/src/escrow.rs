//! Data escrow: a secondary node pushes the changes of its own prefixes to
//! the top-level node.
//!
//! The escrow task walks the local change log from a cursor kept in the
//! `grpc.escrow` auxiliary key space, sends each changed record as it is
//! now (UPSERT, or DELETE when gone) with the operation id
//! `escrow-<local sequence number>`, and advances the cursor only after
//! the upstream answered every operation of the batch. A restart re-sends
//! at most one batch, which the upstream recognises by its operation ids
//! and does not apply twice.
//!
//! A batch is bounded in operations and in bytes ([`BATCH_BYTES`], under
//! the 4 MiB a gRPC peer takes by default), so that no record size makes a
//! message the upstream refuses. An operation the upstream refuses for a
//! reason that will not go away (invalid, not permitted, a failed
//! precondition) is a dead letter: counted, logged, and kept in the
//! `grpc.escrow.dead` auxiliary space with the upstream's reason, and
//! escrow goes on past it. Any other failure (unavailable, busy, an
//! internal error) leaves the cursor where it is, and the batch is sent
//! again after a backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idres_store::Store;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tonic::Code;

use crate::convert::value_to_pb;
use crate::error::{ServiceError, ServiceResult};
use crate::pb::{
    self, node_service_client::NodeServiceClient, registry_service_client::RegistryServiceClient,
    resolve_service_client::ResolveServiceClient,
};
use crate::ranges::Filter;
use crate::replica::Upstream;

/// Auxiliary key space of escrow cursors, by upstream URL.
pub const CURSORS: &str = "grpc.escrow";
/// Auxiliary key space of dead letters: operation id -> JSON with the
/// upstream, handle, code and reason.
pub const DEAD_LETTERS: &str = "grpc.escrow.dead";
/// Most operations per upstream batch.
const BATCH: usize = 2000;
/// Most bytes of operations per upstream batch.
pub const BATCH_BYTES: usize = 3 << 20;
/// How often the node's prefix list is refreshed.
const PREFIX_REFRESH: Duration = Duration::from_secs(30);

/// The local sequence number escrowed through to `url`.
pub fn cursor_of(store: &dyn Store, url: &str) -> ServiceResult<u64> {
    cursor(store, url)
}

fn cursor(store: &dyn Store, url: &str) -> ServiceResult<u64> {
    Ok(store
        .aux_get(CURSORS, url.as_bytes())?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Runs escrow until `stop` turns true; operations the upstream refuses
/// are counted in `dead_letters`.
pub async fn run(
    store: Arc<dyn Store>,
    upstream: Upstream,
    mut stop: watch::Receiver<bool>,
    dead_letters: Counter,
) {
    let mut backoff = idres_net::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let r = tokio::select! {
            r = run_once(&store, &upstream, &dead_letters, &mut backoff) => r,
            _ = stop.changed() => return,
        };
        if let Err(e) = r {
            tracing::warn!(upstream = %upstream.url, error = %e, "escrow interrupted; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Whether the upstream refused an operation for good (a dead letter), as
/// opposed to for now (sent again later).
fn refused_for_good(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

async fn run_once(
    store: &Arc<dyn Store>,
    upstream: &Upstream,
    dead_letters: &Counter,
    backoff: &mut idres_net::Backoff,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = upstream.channel().await?;
    let mut nodes = NodeServiceClient::new(channel.clone());
    let mut registry =
        RegistryServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut resolver = ResolveServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let mut filter: Option<(Filter, Instant)> = None;
    loop {
        if filter
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() > PREFIX_REFRESH)
        {
            let own = nodes
                .list_prefixes(upstream.request(pb::ListPrefixesRequest::default()))
                .await?
                .into_inner();
            let raw: Vec<String> = own.prefixes.into_iter().map(|a| a.prefix).collect();
            let f = Filter::parse(&raw).map_err(|(_, e)| ServiceError::Internal(e))?;
            filter = Some((f, Instant::now()));
        }
        let Some((f, _)) = &filter else { continue };
        let from = cursor(&**store, &upstream.url)? + 1;
        let changes = store.changes(from, BATCH)?;
        if changes.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // The batch ends at the change whose operation would take it past
        // its byte bound (one operation always goes, whatever its size).
        let mut last = from - 1;
        let mut bytes = 0usize;
        let mut ops = Vec::new();
        for c in &changes {
            if f.is_all() || !f.matches(&c.handle) {
                last = c.seq;
                continue;
            }
            let op = match store.get(&c.handle)? {
                Some(rec) => {
                    let values = rec
                        .values()
                        .map_err(|e| ServiceError::Internal(e.to_string()))?;
                    pb::Operation {
                        operation_id: format!("escrow-{}", c.seq),
                        kind: pb::OperationKind::Upsert as i32,
                        handle: c.handle.clone(),
                        values: values.iter().map(value_to_pb).collect(),
                    }
                }
                None => pb::Operation {
                    operation_id: format!("escrow-{}", c.seq),
                    kind: pb::OperationKind::Delete as i32,
                    handle: c.handle.clone(),
                    values: Vec::new(),
                },
            };
            let size = prost::Message::encoded_len(&op) + 8;
            if !ops.is_empty() && bytes + size > BATCH_BYTES {
                break;
            }
            bytes += size;
            ops.push(op);
            last = c.seq;
        }
        // Records the upstream already holds as they are here (such as
        // those that came from it through sync) are not sent again.
        let mut kept = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(crate::resolve_service::MAX_BATCH_RESOLVE) {
            let there = resolver
                .batch_resolve(upstream.request(pb::BatchResolveRequest {
                    handles: chunk.iter().map(|o| o.handle.clone()).collect(),
                    types: Vec::new(),
                }))
                .await?
                .into_inner()
                .results;
            for (o, r) in chunk.iter().zip(there) {
                let same = if o.kind == pb::OperationKind::Delete as i32 {
                    r.code == Code::NotFound as i32
                } else {
                    r.record.is_some_and(|rec| rec.values == o.values)
                };
                if !same {
                    tracing::debug!(handle = %o.handle, kind = o.kind, upstream_code = r.code, "escrow: upstream differs");
                    kept.push(o.clone());
                }
            }
        }
        let ops = kept;
        if !ops.is_empty() {
            let n = ops.len();
            let results = registry
                .register_batch(upstream.request(pb::RegisterBatchRequest {
                    operations: ops.clone(),
                }))
                .await?
                .into_inner()
                .results;
            if results.len() != n {
                return Err(format!(
                    "the upstream answered {} of {n} escrowed operations",
                    results.len()
                )
                .into());
            }
            // Anything refused for now: send the whole batch again later
            // (what was applied is recognised by its operation id).
            if let Some(r) = results.iter().find(|r| {
                let code = Code::from_i32(r.code);
                code != Code::Ok && code != Code::NotFound && !refused_for_good(code)
            }) {
                return Err(format!(
                    "the upstream could not take operation {} now ({:?}: {})",
                    r.operation_id,
                    Code::from_i32(r.code),
                    r.message
                )
                .into());
            }
            let mut mutations = Vec::new();
            for (r, op) in results.iter().zip(&ops) {
                let code = Code::from_i32(r.code);
                if refused_for_good(code) {
                    dead_letters.inc();
                    tracing::warn!(upstream = %upstream.url, operation = %r.operation_id,
                        handle = %op.handle, code = ?code, message = %r.message,
                        "escrow operation refused upstream; kept as a dead letter");
                    let letter = serde_json::json!({
                        "upstream": upstream.url,
                        "handle": op.handle,
                        "code": format!("{code:?}"),
                        "message": r.message,
                        "at": std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                    });
                    mutations.push(idres_store::Mutation::PutAux {
                        space: DEAD_LETTERS.into(),
                        key: r.operation_id.as_bytes().to_vec(),
                        value: letter.to_string().into_bytes(),
                    });
                }
            }
            tracing::debug!(sent = n, dead = mutations.len(), through = last, "escrowed");
            mutations.push(cursor_mutation(upstream, last));
            store.write(idres_store::WriteRequest {
                mutations,
                idempotency_key: None,
            })??;
        } else {
            store.write(idres_store::WriteRequest {
                mutations: vec![cursor_mutation(upstream, last)],
                idempotency_key: None,
            })??;
        }
        backoff.reset();
    }
}

fn cursor_mutation(upstream: &Upstream, last: u64) -> idres_store::Mutation {
    idres_store::Mutation::PutAux {
        space: CURSORS.into(),
        key: upstream.url.as_bytes().to_vec(),
        value: last.to_be_bytes().to_vec(),
    }
}
