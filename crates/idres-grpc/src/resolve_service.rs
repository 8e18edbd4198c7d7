//! `idres.v1.ResolveService`: resolution and search.

use std::sync::Arc;

use idres_model::{Handle, HandleValue, Prefix};
use idres_store::{ChangeKind, Store};
use tonic::{Code, Request, Response, Status};

use crate::convert::value_to_pb;
use crate::core::{Core, Reader};
use crate::error::{ServiceError, ServiceResult};
use crate::page;
use crate::pb::{self, resolve_service_server::ResolveService, search_request::Query};
use crate::registry::page_size;

/// Most handles of one batch resolution.
pub const MAX_BATCH_RESOLVE: usize = 1000;

/// The ResolveService implementation.
#[derive(Debug, Clone)]
pub struct ResolveServiceImpl {
    core: Arc<Core>,
}

impl ResolveServiceImpl {
    /// A service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

/// Whether `reader` may see values other than public ones of `handle`.
fn sees_private(core: &Core, reader: &Reader, handle: &Handle) -> bool {
    match reader {
        Reader::All => true,
        Reader::Node(id) if id.is_empty() => false,
        Reader::Node(id) => core
            .registry
            .owner_of(&handle.prefix())
            .is_some_and(|a| &a.filing_id == id),
    }
}

fn record(
    core: &Core,
    reader: &Reader,
    raw: &str,
    types: &[String],
    indexes: &[u32],
) -> ServiceResult<Option<pb::Record>> {
    // An identifier of any scheme: a handle directly, any other through
    // the link index.
    let read = idres_service::linked::read(&core.schemes, raw)
        .map_err(|e| ServiceError::invalid("handle", e))?;
    let (handle, bytes) = if read.scheme == "handle" {
        let handle = Handle::parse(raw).map_err(|e| ServiceError::invalid("handle", e))?;
        let Some(bytes) = core.store.get(handle.key())? else {
            return Ok(None);
        };
        (handle, bytes)
    } else {
        let Some(found) = idres_service::linked::find(&*core.store, &read)? else {
            return Ok(None);
        };
        let handle = Handle::parse(&found.handle)
            .map_err(|e| ServiceError::Internal(format!("linked handle {}: {e}", found.handle)))?;
        (handle, found.record)
    };
    let values = bytes
        .values()
        .map_err(|e| ServiceError::Internal(format!("stored record of {}: {e}", handle.key())))?;
    let private = sees_private(core, reader, &handle);
    let chosen: Vec<&HandleValue> = values
        .iter()
        .filter(|v| private || v.permissions.public_read())
        .filter(|v| {
            (types.is_empty() && indexes.is_empty())
                || indexes.contains(&v.index)
                || types.iter().any(|t| v.type_matches(t))
        })
        .collect();
    Ok(Some(pb::Record {
        handle: raw.to_owned(),
        values: chosen.into_iter().map(value_to_pb).collect(),
    }))
}

/// The first change-log sequence number whose time is at least `t`.
fn first_seq_at(store: &dyn Store, t: u64) -> ServiceResult<u64> {
    let (mut lo, mut hi) = (store.first_seq()?, store.last_seq() + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match store.changes(mid, 1)?.first() {
            Some(c) if u64::from(c.time) < t => lo = c.seq + 1,
            Some(_) => hi = mid,
            None => hi = mid,
        }
    }
    Ok(lo)
}

#[tonic::async_trait]
impl ResolveService for ResolveServiceImpl {
    async fn resolve(
        &self,
        req: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::Record>, Status> {
        let reader = self.core.reader(&req)?;
        let r = req.get_ref();
        match record(&self.core, &reader, &r.handle, &r.types, &r.indexes)? {
            Some(rec) => Ok(Response::new(rec)),
            None => Err(ServiceError::NotFound(format!("handle {} not found", r.handle)).into()),
        }
    }

    async fn batch_resolve(
        &self,
        req: Request<pb::BatchResolveRequest>,
    ) -> Result<Response<pb::BatchResolveResponse>, Status> {
        let reader = self.core.reader(&req)?;
        let r = req.get_ref();
        if r.handles.len() > MAX_BATCH_RESOLVE {
            return Err(ServiceError::invalid("handles", "more than 1,000").into());
        }
        let results = r
            .handles
            .iter()
            .enumerate()
            .map(
                |(i, h)| match record(&self.core, &reader, h, &r.types, &[]) {
                    Ok(Some(rec)) => pb::ResolveResult {
                        handle: h.clone(),
                        record: Some(rec),
                        code: Code::Ok as i32,
                        message: String::new(),
                    },
                    Ok(None) => pb::ResolveResult {
                        handle: h.clone(),
                        record: None,
                        code: Code::NotFound as i32,
                        message: format!("handle {h} not found"),
                    },
                    Err(ServiceError::InvalidArgument { reason, .. }) => pb::ResolveResult {
                        handle: h.clone(),
                        record: None,
                        code: Code::InvalidArgument as i32,
                        message: format!("invalid handles[{i}]: {reason}"),
                    },
                    Err(e) => pb::ResolveResult {
                        handle: h.clone(),
                        record: None,
                        code: e.code() as i32,
                        message: e.to_string(),
                    },
                },
            )
            .collect();
        Ok(Response::new(pb::BatchResolveResponse { results }))
    }

    async fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let reader = self.core.reader(&req)?;
        let r = req.into_inner();
        let core = Arc::clone(&self.core);
        let resp = tokio::task::spawn_blocking(move || search(&core, &reader, &r))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(resp))
    }
}

fn search(
    core: &Core,
    reader: &Reader,
    r: &pb::SearchRequest,
) -> ServiceResult<pb::SearchResponse> {
    let size = page_size(r.page_size, 100, 10_000);
    let store = &*core.store;
    let hit = |key: String| -> ServiceResult<pb::SearchHit> {
        let record = if r.with_records {
            record(core, reader, &key, &[], &[])?
        } else {
            None
        };
        Ok(pb::SearchHit {
            handle: key,
            record,
            ..Default::default()
        })
    };
    match &r.query {
        None => Err(ServiceError::invalid(
            "query",
            "give one of prefix, value or changed",
        )),
        Some(Query::Prefix(p)) => {
            let prefix = Prefix::parse(p).map_err(|e| ServiceError::invalid("prefix", e))?;
            let after = page::decode(&r.page_token, "p", "page_token")?;
            let keys = store.list(&prefix, after.as_deref(), size)?;
            let next = if keys.len() == size {
                keys.last()
                    .map(|k| page::encode("p", k))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let hits = keys.into_iter().map(hit).collect::<ServiceResult<_>>()?;
            Ok(pb::SearchResponse {
                hits,
                next_page_token: next,
            })
        }
        Some(Query::Value(v)) => {
            if v.r#type.is_empty() {
                return Err(ServiceError::invalid("value.type", "required"));
            }
            if v.pattern.is_empty() {
                return Err(ServiceError::invalid(
                    "value.pattern",
                    "required (use * for any)",
                ));
            }
            let cursor = page::decode(&r.page_token, "v", "page_token")?;
            let found = store.find_by_value(&v.r#type, &v.pattern, cursor.as_deref(), size)?;
            let next = found
                .next
                .map(|c| page::encode("v", &c))
                .unwrap_or_default();
            let hits = found
                .handles
                .into_iter()
                .map(hit)
                .collect::<ServiceResult<_>>()?;
            Ok(pb::SearchResponse {
                hits,
                next_page_token: next,
            })
        }
        Some(Query::Changed(c)) => {
            if c.to_time != 0 && c.to_time <= c.from_time {
                return Err(ServiceError::invalid(
                    "changed.to_time",
                    "must be after from_time",
                ));
            }
            let mut seq = match page::decode(&r.page_token, "c", "page_token")? {
                Some(s) => s.parse::<u64>().map_err(|_| {
                    ServiceError::invalid("page_token", "not a token of this listing")
                })?,
                None => first_seq_at(store, c.from_time)?,
            };
            seq = seq.max(store.first_seq()?);
            let mut hits = Vec::new();
            let mut next = String::new();
            'outer: loop {
                let changes = store.changes(seq, 1024)?;
                if changes.is_empty() {
                    break;
                }
                for ch in changes {
                    seq = ch.seq + 1;
                    if c.to_time != 0 && u64::from(ch.time) >= c.to_time {
                        break 'outer;
                    }
                    let mut h = hit(ch.handle)?;
                    h.seq = ch.seq;
                    h.time = u64::from(ch.time);
                    h.deleted = ch.kind == ChangeKind::Delete;
                    hits.push(h);
                    if hits.len() == size {
                        next = page::encode("c", &seq.to_string());
                        break 'outer;
                    }
                }
            }
            Ok(pb::SearchResponse {
                hits,
                next_page_token: next,
            })
        }
    }
}
