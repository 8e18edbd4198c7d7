//! `idres.v1.RegistryService`: identifier registration (data escrow).
//!
//! Each operation becomes one store write request whose idempotency key is
//! the caller's identity and the operation id, so a retried operation is
//! applied once. Requests are submitted without waiting, so that the
//! store's writer commits many of them per flush (group commit); every
//! result is sent only after the store reported the operation durable.

use std::sync::Arc;

use idres_model::Handle;
use idres_store::{Committed, Mutation, MutationError, StoreError, WriteRequest};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::StreamExt as _;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::convert::values_from_pb;
use crate::core::Core;
use crate::error::{ServiceError, ServiceResult};
use crate::pb::{self, registry_service_server::RegistryService, OperationKind};
use crate::registry::{ActiveFiling, Caller};

/// Most operations of one batch.
pub const MAX_BATCH: usize = 10_000;
/// Most operations of one stream in flight (submitted, not yet durable).
const STREAM_WINDOW: usize = 32_768;
/// Longest operation id.
const MAX_OPERATION_ID: usize = 128;

/// Who writes, and so where.
#[derive(Debug, Clone)]
enum Scope {
    /// An active node: under its own prefixes.
    Node(Box<pb::Filing>),
    /// An operator: any handle but prefix records.
    Operator(String),
}

impl Scope {
    /// Who writes, for the audit log.
    fn who(&self) -> String {
        match self {
            Scope::Node(f) => format!("node:{}", f.id),
            Scope::Operator(s) => format!("operator:{s}"),
        }
    }

    fn key_prefix(&self) -> String {
        match self {
            Scope::Node(f) => format!("grpc/{}/", f.id),
            Scope::Operator(s) => format!("grpc/op:{s}/"),
        }
    }
}

/// The RegistryService implementation.
#[derive(Debug, Clone)]
pub struct RegistryServiceImpl {
    core: Arc<Core>,
}

fn failure(op_id: &str, e: &ServiceError) -> pb::OperationResult {
    pb::OperationResult {
        operation_id: op_id.to_owned(),
        code: e.code() as i32,
        message: e.to_string(),
        replayed: false,
        seq: 0,
    }
}

fn outcome_to_result(
    op_id: String,
    outcome: Result<Result<Committed, MutationError>, StoreError>,
    kind: OperationKind,
) -> pb::OperationResult {
    match outcome {
        Ok(Ok(c)) => pb::OperationResult {
            operation_id: op_id,
            code: Code::Ok as i32,
            message: String::new(),
            replayed: c.replayed,
            seq: c.last_seq,
        },
        Ok(Err(e)) => {
            // An UPDATE is a delete and a create: a missing handle fails the
            // delete, which is the NOT_FOUND an update should give.
            let _ = kind;
            failure(&op_id, &ServiceError::from_mutation(e, "values"))
        }
        Err(e) => failure(&op_id, &ServiceError::Storage(e)),
    }
}

impl RegistryServiceImpl {
    /// A service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    fn scope<T>(&self, req: &Request<T>) -> ServiceResult<Scope> {
        self.core.writable()?;
        match self.core.caller(req)? {
            Caller::Operator(p) => Ok(Scope::Operator(p.subject)),
            other => Ok(Scope::Node(Box::new(other.active_node()?.clone()))),
        }
    }

    /// The scope again, from the filing as stored now: streams call this
    /// when a filing changed, and end when the node may no longer write.
    fn recheck(&self, scope: &Scope) -> ServiceResult<Scope> {
        match scope {
            Scope::Operator(_) => Ok(scope.clone()),
            Scope::Node(f) => Ok(Scope::Node(Box::new(
                self.core
                    .registry
                    .still_active(&f.id, &f.certificate_sha256)?,
            ))),
        }
    }

    /// The write request of an operation, or why it is refused.
    fn prepare(&self, scope: &Scope, op: &pb::Operation, now: u32) -> ServiceResult<WriteRequest> {
        if op.operation_id.is_empty() || op.operation_id.len() > MAX_OPERATION_ID {
            return Err(ServiceError::invalid(
                "operation_id",
                "must be 1 to 128 bytes",
            ));
        }
        let handle = Handle::parse(&op.handle).map_err(|e| ServiceError::invalid("handle", e))?;
        match scope {
            Scope::Node(f) => self.core.registry.check_write(f, &handle)?,
            Scope::Operator(_) => {
                if handle.is_prefix_record() {
                    return Err(ServiceError::PermissionDenied(format!(
                        "{} is a prefix record: prefix records are written by allocation and homing",
                        handle.as_str()
                    )));
                }
            }
        }
        let kind = OperationKind::try_from(op.kind).unwrap_or(OperationKind::Unspecified);
        let values = || values_from_pb(&op.values, "values", now);
        let mutations = match kind {
            OperationKind::Create => vec![Mutation::Create {
                handle,
                values: values()?,
            }],
            OperationKind::Update => {
                let values = values()?;
                vec![
                    Mutation::Delete {
                        handle: handle.clone(),
                    },
                    Mutation::Create { handle, values },
                ]
            }
            OperationKind::Upsert => vec![Mutation::Put {
                handle,
                values: values()?,
            }],
            OperationKind::Delete => {
                if !op.values.is_empty() {
                    return Err(ServiceError::invalid(
                        "values",
                        "a DELETE carries no values",
                    ));
                }
                vec![Mutation::Delete { handle }]
            }
            OperationKind::Unspecified => {
                return Err(ServiceError::invalid(
                    "kind",
                    "one of CREATE, UPDATE, UPSERT, DELETE is required",
                ))
            }
        };
        let mut mutations = mutations;
        if let Scope::Node(f) = scope {
            // Decided by the writer against the filing as it stands when
            // the write is applied.
            mutations.insert(
                0,
                Mutation::Require {
                    guard: Arc::new(ActiveFiling { id: f.id.clone() }),
                },
            );
        }
        let mut key = scope.key_prefix().into_bytes();
        key.extend_from_slice(op.operation_id.as_bytes());
        Ok(WriteRequest {
            mutations,
            idempotency_key: Some(key),
        })
    }

    /// Submits an operation; `done` gets its result once durable.
    fn submit(
        &self,
        scope: &Scope,
        op: pb::Operation,
        now: u32,
        done: impl FnOnce(pb::OperationResult) + Send + 'static,
    ) {
        let kind = OperationKind::try_from(op.kind).unwrap_or(OperationKind::Unspecified);
        // Every refusal, and every write of an operator, is an audit event;
        // a node's own registrations are its data and stay in the change
        // log (an event each would be a log line per registration).
        let who = scope.who();
        let operator = matches!(scope, Scope::Operator(_));
        let audit = move |handle: &str, r: &pb::OperationResult| {
            let ok = r.code == Code::Ok as i32;
            if ok && !operator {
                return;
            }
            let outcome = if ok { Ok(()) } else { Err(r.message.as_str()) };
            idres_auth::audit::write("grpc", &who, kind.as_str_name(), handle, outcome);
        };
        let prepared = idres_auth::limits::check_write(&scope.who(), 1)
            .map_err(|e| ServiceError::ResourceExhausted(e.to_string()))
            .and_then(|()| self.prepare(scope, &op, now));
        match prepared {
            Err(e) => {
                let r = failure(&op.operation_id, &e);
                audit(&op.handle, &r);
                done(r)
            }
            Ok(request) => {
                let id = op.operation_id;
                let handle = op.handle;
                self.core.store.submit(
                    request,
                    Box::new(move |outcome| {
                        let r = outcome_to_result(id, outcome, kind);
                        audit(&handle, &r);
                        done(r)
                    }),
                );
            }
        }
    }
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

#[tonic::async_trait]
impl RegistryService for RegistryServiceImpl {
    async fn register(
        &self,
        req: Request<pb::Operation>,
    ) -> Result<Response<pb::OperationResult>, Status> {
        let scope = self.scope(&req)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(&scope, req.into_inner(), unix_now(), move |r| {
            let _ = tx.send(r);
        });
        let result = rx
            .await
            .map_err(|_| Status::unavailable("the store shut down"))?;
        if result.code != Code::Ok as i32 {
            return Err(Status::new(Code::from_i32(result.code), result.message));
        }
        Ok(Response::new(result))
    }

    async fn register_batch(
        &self,
        req: Request<pb::RegisterBatchRequest>,
    ) -> Result<Response<pb::RegisterBatchResponse>, Status> {
        let scope = self.scope(&req)?;
        let ops = req.into_inner().operations;
        if ops.len() > MAX_BATCH {
            return Err(
                ServiceError::invalid("operations", "more than 10,000 in one batch").into(),
            );
        }
        let n = ops.len();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let now = unix_now();
        for (i, op) in ops.into_iter().enumerate() {
            let tx = tx.clone();
            self.submit(&scope, op, now, move |r| {
                let _ = tx.send((i, r));
            });
        }
        drop(tx);
        let mut results = vec![pb::OperationResult::default(); n];
        let mut got = 0;
        while let Some((i, r)) = rx.recv().await {
            if let Some(slot) = results.get_mut(i) {
                *slot = r;
                got += 1;
            }
        }
        if got != n {
            return Err(Status::unavailable(
                "the store shut down before every operation was durable",
            ));
        }
        Ok(Response::new(pb::RegisterBatchResponse { results }))
    }

    async fn register_stream(
        &self,
        req: Request<Streaming<pb::Operation>>,
    ) -> Result<Response<pb::RegisterStreamSummary>, Status> {
        let mut scope = self.scope(&req)?;
        let mut changes = self.core.registry.watch();
        let mut stream = req.into_inner();
        let window = Arc::new(Semaphore::new(STREAM_WINDOW));
        let (tx, mut rx) = mpsc::unbounded_channel::<pb::OperationResult>();
        let mut summary = pb::RegisterStreamSummary::default();
        let collect = |summary: &mut pb::RegisterStreamSummary, r: pb::OperationResult| {
            if r.code == Code::Ok as i32 {
                if r.replayed {
                    summary.replayed += 1;
                } else {
                    summary.applied += 1;
                }
                summary.last_seq = summary.last_seq.max(r.seq);
            } else {
                summary.failures.push(r);
            }
        };
        loop {
            let op = tokio::select! {
                op = stream.next() => op,
                changed = changes.changed() => {
                    if changed.is_ok() {
                        scope = self.recheck(&scope)?;
                    }
                    continue;
                }
            };
            let Some(op) = op else { break };
            let op = op?;
            summary.received += 1;
            let permit = Arc::clone(&window)
                .acquire_owned()
                .await
                .map_err(|_| Status::internal("stream window closed"))?;
            let tx = tx.clone();
            self.submit(&scope, op, unix_now(), move |r| {
                drop(permit);
                let _ = tx.send(r);
            });
            while let Ok(r) = rx.try_recv() {
                collect(&mut summary, r);
            }
        }
        drop(tx);
        while let Some(r) = rx.recv().await {
            collect(&mut summary, r);
        }
        let done = summary.applied + summary.replayed + summary.failures.len() as u64;
        if done != summary.received {
            return Err(Status::unavailable(
                "the store shut down before every operation was durable",
            ));
        }
        Ok(Response::new(summary))
    }
}
