//! Data escrow: a secondary node pushes the changes of its own prefixes to
//! the top-level node.
//!
//! The escrow task walks the local change log from a cursor kept in the
//! `grpc.escrow` auxiliary key space, sends each changed record as it is
//! now (UPSERT, or DELETE when gone) with the operation id
//! `escrow-<local sequence number>`, and advances the cursor only after
//! the upstream reported every operation of the batch durable. A restart
//! re-sends at most one batch, which the upstream recognises by its
//! operation ids and does not apply twice.

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
/// Most operations per upstream batch.
const BATCH: usize = 2000;
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
    let mut backoff = Duration::from_millis(200);
    loop {
        let r = tokio::select! {
            r = run_once(&store, &upstream, &dead_letters) => r,
            _ = stop.changed() => return,
        };
        if let Err(e) = r {
            tracing::warn!(upstream = %upstream.url, error = %e, "escrow interrupted; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn run_once(
    store: &Arc<dyn Store>,
    upstream: &Upstream,
    dead_letters: &Counter,
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
        let Some(last) = changes.last().map(|c| c.seq) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut ops = Vec::new();
        if !f.is_all() {
            for c in &changes {
                if !f.matches(&c.handle) {
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
                ops.push(op);
            }
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
                .register_batch(upstream.request(pb::RegisterBatchRequest { operations: ops }))
                .await?
                .into_inner()
                .results;
            let mut failed = 0;
            for r in &results {
                let code = Code::from_i32(r.code);
                if code != Code::Ok && code != Code::NotFound {
                    failed += 1;
                    dead_letters.inc();
                    tracing::warn!(operation = %r.operation_id, code = ?code, message = %r.message,
                        "escrow operation refused upstream");
                }
            }
            tracing::debug!(sent = n, failed, through = last, "escrowed");
        }
        store.write(idres_store::WriteRequest {
            mutations: vec![idres_store::Mutation::PutAux {
                space: CURSORS.into(),
                key: upstream.url.as_bytes().to_vec(),
                value: last.to_be_bytes().to_vec(),
            }],
            idempotency_key: None,
        })??;
    }
}
