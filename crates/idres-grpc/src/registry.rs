//! The node registry: filings, their lifecycle and audit trail, and the
//! prefix table, kept in the store's auxiliary key spaces so that every
//! change lands atomically with its audit entry and with the prefix record
//! it writes.
//!
//! Key spaces (values are the proto messages, prost-encoded):
//! - `grpc.filing`: filing id -> [`pb::Filing`]
//! - `grpc.filing_by_cert`: certificate SHA-256 (hex) -> filing id
//! - `grpc.audit`: sequence (8 bytes, big-endian) -> [`pb::AuditEvent`]
//! - `grpc.prefix`: canonical prefix -> [`pb::PrefixAllocation`]
//! - `grpc.meta`: counters (`next_filing`, `next_audit`)
//!
//! Read-modify-write of these spaces is serialised by one async mutex:
//! filings and allocations change rarely, and each change waits for its
//! durable commit before the next starts.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use idres_model::{
    types, AdminPermissions, AdminRef, Handle, HandleValue, Prefix, ServerInfo, SiteInfo,
    PREFIX_RECORD_PREFIX,
};
use idres_store::{Mutation, Store, WriteRequest};
use prost::Message as _;

use crate::certs::OPERATOR_CN_PREFIX;
use crate::credit_code;
use crate::error::{ServiceError, ServiceResult};
use crate::pb::{self, AllocationKind, FilingState};
use crate::tls::{self, PeerCert};

const FILING: &str = "grpc.filing";
const FILING_BY_CERT: &str = "grpc.filing_by_cert";
/// Filing id -> its state (one byte), written with every filing, so that
/// the writer's per-operation check reads a byte instead of a filing.
const FILING_STATE: &str = "grpc.filing_state";
const AUDIT: &str = "grpc.audit";
const PREFIX: &str = "grpc.prefix";
const META: &str = "grpc.meta";

/// Index of the HS_SITE value in prefix records written here.
pub const SITE_INDEX: u32 = 1;
/// Index of the HS_ADMIN value in prefix records written here.
pub const ADMIN_INDEX: u32 = 100;

/// Who is calling, once the certificate is matched to a filing.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An operator.
    Operator(PeerCert),
    /// A node with a filing (in any state).
    Node(PeerCert, Box<pb::Filing>),
    /// A certificate from the client CA with no filing yet.
    Unfiled(PeerCert),
}

impl Caller {
    /// How the caller appears in the audit trail.
    pub fn actor(&self) -> String {
        match self {
            Caller::Operator(p) => format!(
                "operator:{}",
                p.subject.trim_start_matches(OPERATOR_CN_PREFIX)
            ),
            Caller::Node(_, f) => format!("node:{}", f.id),
            Caller::Unfiled(p) => format!("unfiled:{}", p.subject),
        }
    }

    fn sha256(&self) -> &str {
        match self {
            Caller::Operator(p) | Caller::Node(p, _) | Caller::Unfiled(p) => &p.sha256,
        }
    }

    /// The caller must be an operator.
    pub fn operator(&self) -> ServiceResult<()> {
        match self {
            Caller::Operator(_) => Ok(()),
            _ => Err(ServiceError::PermissionDenied(
                "this call needs an operator certificate".into(),
            )),
        }
    }

    /// The caller must be a node whose filing is active; its filing.
    pub fn active_node(&self) -> ServiceResult<&pb::Filing> {
        match self {
            Caller::Node(_, f) => {
                let state = FilingState::try_from(f.state).unwrap_or(FilingState::Unspecified);
                match state {
                    FilingState::Active => Ok(f),
                    FilingState::Pending => Err(ServiceError::PermissionDenied(format!(
                        "node {} is not approved yet: its filing is pending",
                        f.id
                    ))),
                    FilingState::Suspended => Err(ServiceError::PermissionDenied(format!(
                        "node {} is suspended: {}",
                        f.id, f.reason
                    ))),
                    FilingState::Revoked => Err(ServiceError::PermissionDenied(format!(
                        "node {} is revoked: {}",
                        f.id, f.reason
                    ))),
                    FilingState::Rejected => Err(ServiceError::PermissionDenied(format!(
                        "node {}'s filing was rejected: {}",
                        f.id, f.reason
                    ))),
                    FilingState::Unspecified => Err(ServiceError::PermissionDenied(format!(
                        "node {} has no usable filing",
                        f.id
                    ))),
                }
            }
            Caller::Operator(_) => Err(ServiceError::PermissionDenied(
                "this call is made by a node with its own certificate, not by an operator".into(),
            )),
            Caller::Unfiled(p) => Err(ServiceError::PermissionDenied(format!(
                "certificate {} ({}) is not bound to any filing: file first",
                short(&p.sha256),
                p.subject
            ))),
        }
    }

    /// An operator or an active node.
    pub fn operator_or_active(&self) -> ServiceResult<Option<&pb::Filing>> {
        match self {
            Caller::Operator(_) => Ok(None),
            other => other.active_node().map(Some),
        }
    }
}

fn short(sha: &str) -> &str {
    sha.get(..16).unwrap_or(sha)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Filings, audit trail and prefix table of a node.
#[derive(Debug)]
pub struct NodeRegistry {
    store: Arc<dyn Store>,
    lock: tokio::sync::Mutex<()>,
    prefixes: RwLock<Arc<BTreeMap<String, pb::PrefixAllocation>>>,
    /// Bumped after every durable change of a filing's state or
    /// certificate, so that open streams re-check their caller at once.
    changes: tokio::sync::watch::Sender<u64>,
    /// Refuse the prefixes of a suspended or revoked node instead of
    /// answering them from escrow.
    refuse_withdrawn: std::sync::atomic::AtomicBool,
}

/// The writes that store a filing: the filing and its state.
fn put_filing(id: &str, stored: &pb::Filing) -> [Mutation; 2] {
    [
        Mutation::PutAux {
            space: FILING.into(),
            key: id.as_bytes().to_vec(),
            value: stored.encode_to_vec(),
        },
        Mutation::PutAux {
            space: FILING_STATE.into(),
            key: id.as_bytes().to_vec(),
            value: vec![u8::try_from(stored.state).unwrap_or(0)],
        },
    ]
}

/// The precondition of every write a node makes: its filing, as the
/// writer sees it when it applies the write, is active. A write queued
/// before a suspension or revocation that lands after it is refused.
#[derive(Debug)]
pub struct ActiveFiling {
    /// The filing.
    pub id: String,
}

impl idres_store::WriteGuard for ActiveFiling {
    fn check(
        &self,
        state: &dyn idres_store::StateView,
        mutations: &[Mutation],
    ) -> Result<(), idres_store::Denied> {
        let denied = |message: String| idres_store::Denied {
            kind: idres_store::DeniedKind::InsufficientPermissions,
            message,
        };
        let storage = |e: idres_store::StoreError| denied(format!("storage error: {e}"));
        let quick = state
            .aux(FILING_STATE, self.id.as_bytes())
            .map_err(storage)?;
        if quick.as_deref() != Some(&[FilingState::Active as u8][..]) {
            let stored = state
                .aux(FILING, self.id.as_bytes())
                .map_err(storage)?
                .ok_or_else(|| denied(format!("no filing {}", self.id)))?;
            let f = pb::Filing::decode(stored.as_slice())
                .map_err(|e| denied(format!("stored filing {}: {e}", self.id)))?;
            // A filing stored before its state had a key of its own is
            // judged by the filing.
            if !(quick.is_none() && f.state == FilingState::Active as i32) {
                return Err(denied(format!(
                    "node {} is {}: {}",
                    f.id,
                    FilingState::try_from(f.state)
                        .unwrap_or(FilingState::Unspecified)
                        .as_str_name()
                        .to_ascii_lowercase(),
                    f.reason
                )));
            }
        }
        // Each handle lies under a prefix allocated to (or homed by) the
        // node, as the allocation table stands when the write is applied.
        for m in mutations {
            let Some(handle) = m.handle() else { continue };
            let mut owner = None;
            for p in handle.prefix().ancestors() {
                if let Some(v) = state.aux(PREFIX, p.as_str().as_bytes()).map_err(storage)? {
                    owner = pb::PrefixAllocation::decode(v.as_slice()).ok();
                    break;
                }
            }
            match owner {
                Some(a) if a.filing_id == self.id => {}
                _ => {
                    return Err(denied(format!(
                        "{} is under no prefix allocated to node {}",
                        handle.as_str(),
                        self.id
                    )))
                }
            }
        }
        Ok(())
    }
}

/// A change to commit: mutations plus the audit event describing them.
struct Change {
    mutations: Vec<Mutation>,
    audit: pb::AuditEvent,
}

impl NodeRegistry {
    /// Loads the prefix table from `store`.
    pub fn open(store: Arc<dyn Store>) -> ServiceResult<Self> {
        let mut map = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.aux_scan(PREFIX, after.as_deref(), 1024)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, v) in page {
                let a = pb::PrefixAllocation::decode(v.as_slice())
                    .map_err(|e| ServiceError::Internal(format!("stored allocation: {e}")))?;
                map.insert(a.prefix.clone(), a);
            }
        }
        Ok(Self {
            store,
            lock: tokio::sync::Mutex::new(()),
            prefixes: RwLock::new(Arc::new(map)),
            changes: tokio::sync::watch::channel(0).0,
            refuse_withdrawn: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether the prefixes of a suspended or revoked node are refused
    /// (`true`) or answered from the escrowed copies (`false`, the default).
    pub fn set_refuse_withdrawn(&self, refuse: bool) {
        self.refuse_withdrawn
            .store(refuse, std::sync::atomic::Ordering::Relaxed);
    }

    /// Changes whenever a filing's state or certificate changed durably.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The filing `id` as stored now, if it is active; why not otherwise.
    /// Open streams call this whenever [`NodeRegistry::watch`] changes.
    pub fn still_active(&self, id: &str, sha256: &str) -> ServiceResult<pb::Filing> {
        let f = self.filing(id)?;
        if f.certificate_sha256 != sha256 {
            return Err(ServiceError::PermissionDenied(format!(
                "node {id} is now bound to another certificate"
            )));
        }
        Caller::Node(
            PeerCert {
                sha256: sha256.to_owned(),
                subject: String::new(),
                der: Vec::new(),
                operator: false,
                node_ca: true,
            },
            Box::new(f.clone()),
        )
        .active_node()?;
        Ok(f)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn table(&self) -> Arc<BTreeMap<String, pb::PrefixAllocation>> {
        self.prefixes
            .read()
            .map(|g| Arc::clone(&g))
            .unwrap_or_default()
    }

    /// Matches a verified certificate to its filing.
    pub fn caller(&self, peer: PeerCert) -> ServiceResult<Caller> {
        if peer.operator {
            return Ok(Caller::Operator(peer));
        }
        if !peer.node_ca {
            return Err(ServiceError::Unauthenticated(
                "the client certificate is not issued by the CA for nodes".into(),
            ));
        }
        match self.filing_by_cert(&peer.sha256)? {
            Some(f) => Ok(Caller::Node(peer, Box::new(f))),
            None => Ok(Caller::Unfiled(peer)),
        }
    }

    fn filing_by_cert(&self, sha: &str) -> ServiceResult<Option<pb::Filing>> {
        match self.store.aux_get(FILING_BY_CERT, sha.as_bytes())? {
            None => Ok(None),
            Some(id) => self.load_filing(&String::from_utf8_lossy(&id)),
        }
    }

    fn load_filing(&self, id: &str) -> ServiceResult<Option<pb::Filing>> {
        match self.store.aux_get(FILING, id.as_bytes())? {
            None => Ok(None),
            Some(v) => {
                let mut f = pb::Filing::decode(v.as_slice())
                    .map_err(|e| ServiceError::Internal(format!("stored filing {id}: {e}")))?;
                f.prefixes = self
                    .table()
                    .values()
                    .filter(|a| a.filing_id == f.id && a.kind == AllocationKind::Allocated as i32)
                    .map(|a| a.prefix.clone())
                    .collect();
                Ok(Some(f))
            }
        }
    }

    fn filing(&self, id: &str) -> ServiceResult<pb::Filing> {
        self.load_filing(id)?
            .ok_or_else(|| ServiceError::NotFound(format!("no filing {id}")))
    }

    fn counter(&self, name: &str) -> ServiceResult<u64> {
        Ok(match self.store.aux_get(META, name.as_bytes())? {
            Some(v) => <[u8; 8]>::try_from(v.as_slice()).map_or(1, u64::from_be_bytes),
            None => 1,
        })
    }

    /// Commits mutations with their audit event, durably.
    async fn commit(&self, change: Change) -> ServiceResult<(pb::AuditEvent, u64)> {
        let mut audit = change.audit;
        audit.seq = self.counter("next_audit")?;
        audit.time = now();
        let mut mutations = change.mutations;
        mutations.push(Mutation::PutAux {
            space: AUDIT.into(),
            key: audit.seq.to_be_bytes().to_vec(),
            value: audit.encode_to_vec(),
        });
        mutations.push(Mutation::PutAux {
            space: META.into(),
            key: b"next_audit".to_vec(),
            value: (audit.seq + 1).to_be_bytes().to_vec(),
        });
        let store = Arc::clone(&self.store);
        let outcome = tokio::task::spawn_blocking(move || {
            store.write(WriteRequest {
                mutations,
                idempotency_key: None,
            })
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))??;
        let committed = outcome.map_err(|e| ServiceError::from_mutation(e, "prefix"))?;
        Ok((audit, committed.last_seq))
    }

    /// Files a node.
    pub async fn file(&self, caller: &Caller, req: pb::FileRequest) -> ServiceResult<pb::Filing> {
        validate_application(&req)?;
        let (sha, subject, cert_pem) = match caller {
            Caller::Operator(_) => {
                if req.certificate_pem.trim().is_empty() {
                    return Err(ServiceError::invalid(
                        "certificate_pem",
                        "required when an operator files on a node's behalf",
                    ));
                }
                let certs = tls::certs_from_pem(&req.certificate_pem)
                    .map_err(|e| ServiceError::invalid("certificate_pem", e))?;
                let der = certs.first().map(|c| c.to_vec()).unwrap_or_default();
                (
                    tls::fingerprint(&der),
                    tls::subject_cn(&der).unwrap_or_default(),
                    req.certificate_pem.clone(),
                )
            }
            Caller::Node(p, _) | Caller::Unfiled(p) => {
                if !req.certificate_pem.trim().is_empty() {
                    let certs = tls::certs_from_pem(&req.certificate_pem)
                        .map_err(|e| ServiceError::invalid("certificate_pem", e))?;
                    let der = certs.first().map(|c| c.to_vec()).unwrap_or_default();
                    if tls::fingerprint(&der) != p.sha256 {
                        return Err(ServiceError::invalid(
                            "certificate_pem",
                            "differs from the certificate this connection was made with",
                        ));
                    }
                }
                let pem = if p.der.is_empty() {
                    String::new()
                } else {
                    pem_of(&p.der)
                };
                (p.sha256.clone(), p.subject.clone(), pem)
            }
        };
        let _guard = self.lock.lock().await;
        if let Some(existing) = self.filing_by_cert(&sha)? {
            let state = FilingState::try_from(existing.state).unwrap_or(FilingState::Unspecified);
            if !matches!(state, FilingState::Rejected | FilingState::Revoked) {
                return Err(ServiceError::AlreadyExists(format!(
                    "certificate {} is already bound to filing {} ({})",
                    short(&sha),
                    existing.id,
                    state.as_str_name()
                )));
            }
        }
        let n = self.counter("next_filing")?;
        let id = format!("F{n:06}");
        let t = now();
        let mut application = req;
        application.certificate_pem = cert_pem;
        let filing = pb::Filing {
            id: id.clone(),
            application: Some(application),
            state: FilingState::Pending as i32,
            certificate_sha256: sha.clone(),
            certificate_subject: subject,
            filed_at: t,
            updated_at: t,
            reason: String::new(),
            prefixes: Vec::new(),
        };
        let [put_f, put_state] = put_filing(&id, &filing);
        let mutations = vec![
            put_f,
            put_state,
            Mutation::PutAux {
                space: FILING_BY_CERT.into(),
                key: sha.as_bytes().to_vec(),
                value: id.as_bytes().to_vec(),
            },
            Mutation::PutAux {
                space: META.into(),
                key: b"next_filing".to_vec(),
                value: (n + 1).to_be_bytes().to_vec(),
            },
        ];
        self.commit(Change {
            mutations,
            audit: pb::AuditEvent {
                actor: caller.actor(),
                action: "file".into(),
                filing_id: id,
                from_state: FilingState::Unspecified as i32,
                to_state: FilingState::Pending as i32,
                actor_certificate_sha256: caller.sha256().to_owned(),
                ..Default::default()
            },
        })
        .await?;
        Ok(filing)
    }

    /// A filing: the caller's own, or any for operators.
    pub fn get_filing(&self, caller: &Caller, id: &str) -> ServiceResult<pb::Filing> {
        match caller {
            Caller::Operator(_) => {
                if id.is_empty() {
                    return Err(ServiceError::invalid(
                        "id",
                        "operators must name the filing",
                    ));
                }
                self.filing(id)
            }
            Caller::Node(_, f) => {
                if !id.is_empty() && id != f.id {
                    return Err(ServiceError::PermissionDenied(format!(
                        "node {} may read only its own filing",
                        f.id
                    )));
                }
                Ok((**f).clone())
            }
            Caller::Unfiled(p) => Err(ServiceError::NotFound(format!(
                "certificate {} ({}) is not bound to any filing",
                short(&p.sha256),
                p.subject
            ))),
        }
    }

    /// Moves a filing from one of `from` to `to`.
    pub async fn transition(
        &self,
        caller: &Caller,
        action: &str,
        req: pb::TransitionRequest,
        from: &[FilingState],
        to: FilingState,
    ) -> ServiceResult<pb::Filing> {
        caller.operator()?;
        if req.reason.trim().is_empty() {
            return Err(ServiceError::invalid("reason", "a reason is required"));
        }
        let _guard = self.lock.lock().await;
        let mut f = self.filing(&req.id)?;
        let state = FilingState::try_from(f.state).unwrap_or(FilingState::Unspecified);
        if !from.contains(&state) {
            return Err(ServiceError::FailedPrecondition(format!(
                "cannot {action} filing {}: it is {}",
                f.id,
                state.as_str_name()
            )));
        }
        f.state = to as i32;
        f.reason = req.reason.clone();
        f.updated_at = now();
        let mut stored = f.clone();
        stored.prefixes.clear();
        let mut mutations = put_filing(&f.id, &stored).to_vec();
        // A node that may no longer serve is no longer referred to: its
        // prefix records lose their HS_SITE, so this node answers for its
        // prefixes from the escrowed copies; reinstated, they get it back.
        let withdrawn = matches!(to, FilingState::Suspended | FilingState::Revoked);
        if withdrawn || to == FilingState::Active {
            for a in self.table().values().filter(|a| a.filing_id == f.id) {
                let prefix = parse_prefix(&a.prefix, "prefix")?;
                let mut values = Self::prefix_record(&f, &prefix)?;
                if withdrawn {
                    values.retain(|v| !v.value_type.eq_ignore_ascii_case(types::HS_SITE));
                    if self
                        .refuse_withdrawn
                        .load(std::sync::atomic::Ordering::Relaxed)
                    {
                        values.push(HandleValue::new(
                            3,
                            types::IDRES_WITHDRAWN,
                            Bytes::from(format!(
                                "node {} is {}: {}",
                                f.id,
                                to.as_str_name().to_ascii_lowercase(),
                                f.reason
                            )),
                        ));
                    }
                }
                mutations.push(Mutation::Put {
                    handle: prefix.record_handle(),
                    values,
                });
            }
        }
        let committed = self
            .commit(Change {
                mutations,
                audit: pb::AuditEvent {
                    actor: caller.actor(),
                    action: action.into(),
                    filing_id: f.id.clone(),
                    from_state: state as i32,
                    to_state: to as i32,
                    reason: req.reason,
                    actor_certificate_sha256: caller.sha256().to_owned(),
                    ..Default::default()
                },
            })
            .await;
        self.changes.send_modify(|g| *g += 1);
        committed?;
        Ok(f)
    }

    /// Binds a filing to a new certificate.
    pub async fn rotate(
        &self,
        caller: &Caller,
        req: pb::RotateCertificateRequest,
    ) -> ServiceResult<pb::Filing> {
        let id = match caller {
            Caller::Operator(_) => {
                if req.id.is_empty() {
                    return Err(ServiceError::invalid(
                        "id",
                        "operators must name the filing",
                    ));
                }
                req.id.clone()
            }
            Caller::Node(_, f) => {
                if !req.id.is_empty() && req.id != f.id {
                    return Err(ServiceError::PermissionDenied(format!(
                        "node {} may rotate only its own certificate",
                        f.id
                    )));
                }
                f.id.clone()
            }
            Caller::Unfiled(p) => {
                return Err(ServiceError::PermissionDenied(format!(
                    "certificate {} ({}) is not bound to any filing",
                    short(&p.sha256),
                    p.subject
                )))
            }
        };
        let certs = tls::certs_from_pem(&req.certificate_pem)
            .map_err(|e| ServiceError::invalid("certificate_pem", e))?;
        let der = certs.first().map(|c| c.to_vec()).unwrap_or_default();
        let sha = tls::fingerprint(&der);
        let _guard = self.lock.lock().await;
        let mut f = self.filing(&id)?;
        let state = FilingState::try_from(f.state).unwrap_or(FilingState::Unspecified);
        if matches!(state, FilingState::Rejected | FilingState::Revoked) {
            return Err(ServiceError::FailedPrecondition(format!(
                "filing {id} is {}: file again instead",
                state.as_str_name()
            )));
        }
        if sha == f.certificate_sha256 {
            return Err(ServiceError::invalid(
                "certificate_pem",
                "is the certificate the filing already has",
            ));
        }
        if let Some(other) = self.filing_by_cert(&sha)? {
            let st = FilingState::try_from(other.state).unwrap_or(FilingState::Unspecified);
            if !matches!(st, FilingState::Rejected | FilingState::Revoked) {
                return Err(ServiceError::AlreadyExists(format!(
                    "certificate {} is already bound to filing {}",
                    short(&sha),
                    other.id
                )));
            }
        }
        let old = std::mem::replace(&mut f.certificate_sha256, sha.clone());
        f.certificate_subject = tls::subject_cn(&der).unwrap_or_default();
        if let Some(app) = f.application.as_mut() {
            app.certificate_pem = req.certificate_pem.clone();
        }
        f.updated_at = now();
        let mut stored = f.clone();
        stored.prefixes.clear();
        let committed = self
            .commit(Change {
                mutations: vec![
                    Mutation::DeleteAux {
                        space: FILING_BY_CERT.into(),
                        key: old.as_bytes().to_vec(),
                    },
                    Mutation::PutAux {
                        space: FILING_BY_CERT.into(),
                        key: sha.as_bytes().to_vec(),
                        value: id.as_bytes().to_vec(),
                    },
                ]
                .into_iter()
                .chain(put_filing(&id, &stored))
                .collect(),
                audit: pb::AuditEvent {
                    actor: caller.actor(),
                    action: "rotate".into(),
                    filing_id: id.clone(),
                    from_state: state as i32,
                    to_state: state as i32,
                    reason: req.reason,
                    actor_certificate_sha256: caller.sha256().to_owned(),
                    ..Default::default()
                },
            })
            .await;
        self.changes.send_modify(|g| *g += 1);
        committed?;
        Ok(f)
    }

    /// A page of filings.
    pub fn list_nodes(
        &self,
        caller: &Caller,
        req: &pb::ListNodesRequest,
    ) -> ServiceResult<pb::ListNodesResponse> {
        caller.operator()?;
        let size = page_size(req.page_size, 100, 1000);
        let mut after =
            crate::page::decode(&req.page_token, "f", "page_token")?.map(String::into_bytes);
        let mut filings = Vec::new();
        let mut next = String::new();
        'outer: loop {
            let page = self.store.aux_scan(FILING, after.as_deref(), 256)?;
            if page.is_empty() {
                break;
            }
            for (k, _) in &page {
                after = Some(k.clone());
                let id = String::from_utf8_lossy(k).into_owned();
                let Some(f) = self.load_filing(&id)? else {
                    continue;
                };
                if req.state != 0 && f.state != req.state {
                    continue;
                }
                filings.push(f);
                if filings.len() == size {
                    next = crate::page::encode("f", &id);
                    break 'outer;
                }
            }
        }
        Ok(pb::ListNodesResponse {
            filings,
            next_page_token: next,
        })
    }

    /// A page of the audit trail.
    pub fn list_audit(
        &self,
        caller: &Caller,
        req: &pb::ListAuditRequest,
    ) -> ServiceResult<pb::ListAuditResponse> {
        match caller {
            Caller::Operator(_) => {}
            Caller::Node(_, f) if req.filing_id == f.id => {}
            _ => {
                return Err(ServiceError::PermissionDenied(
                    "the audit trail is for operators (a node may read its own)".into(),
                ))
            }
        }
        let size = page_size(req.page_size, 100, 1000);
        let mut after = match crate::page::decode(&req.page_token, "a", "page_token")? {
            Some(s) => Some(
                s.parse::<u64>()
                    .map_err(|_| ServiceError::invalid("page_token", "not a token of this call"))?
                    .to_be_bytes()
                    .to_vec(),
            ),
            None => None,
        };
        let mut events = Vec::new();
        let mut next = String::new();
        'outer: loop {
            let page = self.store.aux_scan(AUDIT, after.as_deref(), 256)?;
            if page.is_empty() {
                break;
            }
            for (k, v) in &page {
                after = Some(k.clone());
                let e = pb::AuditEvent::decode(v.as_slice())
                    .map_err(|e| ServiceError::Internal(format!("stored audit event: {e}")))?;
                if !req.filing_id.is_empty() && e.filing_id != req.filing_id {
                    continue;
                }
                let seq = e.seq;
                events.push(e);
                if events.len() == size {
                    next = crate::page::encode("a", &seq.to_string());
                    break 'outer;
                }
            }
        }
        Ok(pb::ListAuditResponse {
            events,
            next_page_token: next,
        })
    }

    /// The allocation governing a canonical prefix (itself or its nearest
    /// ancestor in the table).
    pub fn owner_of(&self, prefix: &Prefix) -> Option<pb::PrefixAllocation> {
        let table = self.table();
        prefix
            .ancestors()
            .find_map(|p| table.get(p.as_str()).cloned())
    }

    /// The prefixes of a filing (or all).
    pub fn prefixes_of(&self, filing_id: Option<&str>) -> Vec<pb::PrefixAllocation> {
        self.table()
            .values()
            .filter(|a| filing_id.is_none_or(|id| a.filing_id == id))
            .cloned()
            .collect()
    }

    /// Checks that `handle` lies under a prefix of `filing`.
    pub fn check_write(&self, filing: &pb::Filing, handle: &Handle) -> ServiceResult<()> {
        if handle.is_prefix_record() {
            return Err(ServiceError::PermissionDenied(format!(
                "{} is a prefix record: prefix records are written by allocation and homing",
                handle.as_str()
            )));
        }
        match self.owner_of(&handle.prefix()) {
            Some(a) if a.filing_id == filing.id => Ok(()),
            Some(a) => Err(ServiceError::PermissionDenied(format!(
                "{} is under prefix {} of node {}, not of node {}",
                handle.as_str(),
                a.prefix,
                a.filing_id,
                filing.id
            ))),
            None => Err(ServiceError::PermissionDenied(format!(
                "{} is under no prefix allocated to node {}",
                handle.as_str(),
                filing.id
            ))),
        }
    }

    fn prefix_record(filing: &pb::Filing, prefix: &Prefix) -> ServiceResult<Vec<HandleValue>> {
        let app = filing.application.clone().unwrap_or_default();
        let mut site: Option<SiteInfo> = None;
        for (i, a) in app.service_addresses.iter().enumerate() {
            let addr = service_addr(a, i)?;
            match &mut site {
                None => site = Some(SiteInfo::single(addr, &app.organisation)),
                Some(s) => {
                    let mut one = SiteInfo::single(addr, "").servers;
                    for srv in &mut one {
                        srv.server_id = s.servers.len() as u32 + 1;
                    }
                    s.servers.extend::<Vec<ServerInfo>>(one);
                }
            }
        }
        let site = site.ok_or_else(|| {
            ServiceError::FailedPrecondition(format!("filing {} has no service address", filing.id))
        })?;
        let record = prefix.record_handle();
        let stamp = u32::try_from(now()).unwrap_or(u32::MAX);
        let values = vec![
            HandleValue::new(SITE_INDEX, types::HS_SITE, site.encode()),
            HandleValue::new(
                ADMIN_INDEX,
                types::HS_ADMIN,
                AdminRef {
                    permissions: AdminPermissions::ALL,
                    handle: record.as_str().to_owned(),
                    index: 300,
                }
                .encode(),
            ),
            HandleValue::new(
                2,
                types::DESC,
                Bytes::from(format!("{} ({})", app.organisation, filing.id)),
            ),
        ];
        Ok(values
            .into_iter()
            .map(|mut v| {
                v.timestamp = stamp;
                v
            })
            .collect())
    }

    fn set_table(&self, f: impl FnOnce(&mut BTreeMap<String, pb::PrefixAllocation>)) {
        if let Ok(mut g) = self.prefixes.write() {
            let mut m = (**g).clone();
            f(&mut m);
            *g = Arc::new(m);
        }
    }

    /// Allocates a prefix to an active node.
    pub async fn allocate(
        &self,
        caller: &Caller,
        req: pb::AllocateRequest,
    ) -> ServiceResult<pb::PrefixAllocation> {
        caller.operator()?;
        let prefix = parse_prefix(&req.prefix, "prefix")?;
        let _guard = self.lock.lock().await;
        let filing = self.filing(&req.filing_id)?;
        if filing.state != FilingState::Active as i32 {
            return Err(ServiceError::FailedPrecondition(format!(
                "filing {} is {}: only an active node gets prefixes",
                filing.id,
                FilingState::try_from(filing.state)
                    .unwrap_or(FilingState::Unspecified)
                    .as_str_name()
            )));
        }
        let table = self.table();
        for a in table.values() {
            let other = parse_prefix(&a.prefix, "prefix")?;
            if other.covers(&prefix) || prefix.covers(&other) {
                return Err(ServiceError::AlreadyExists(format!(
                    "prefix {} overlaps {} of node {}",
                    prefix, a.prefix, a.filing_id
                )));
            }
        }
        let alloc = pb::PrefixAllocation {
            prefix: prefix.as_str().to_owned(),
            filing_id: filing.id.clone(),
            kind: AllocationKind::Allocated as i32,
            allocated_at: now(),
            parent: String::new(),
            seq: 0,
        };
        self.write_allocation(caller, &filing, &prefix, alloc, "allocate", &req.reason)
            .await
    }

    async fn write_allocation(
        &self,
        caller: &Caller,
        filing: &pb::Filing,
        prefix: &Prefix,
        mut alloc: pb::PrefixAllocation,
        action: &str,
        reason: &str,
    ) -> ServiceResult<pb::PrefixAllocation> {
        let values = Self::prefix_record(filing, prefix)?;
        let mutations = vec![
            Mutation::Put {
                handle: prefix.record_handle(),
                values,
            },
            Mutation::PutAux {
                space: PREFIX.into(),
                key: prefix.as_str().as_bytes().to_vec(),
                value: alloc.encode_to_vec(),
            },
        ];
        let (_, seq) = self
            .commit(Change {
                mutations,
                audit: pb::AuditEvent {
                    actor: caller.actor(),
                    action: action.into(),
                    filing_id: filing.id.clone(),
                    reason: reason.to_owned(),
                    prefix: prefix.as_str().to_owned(),
                    actor_certificate_sha256: caller.sha256().to_owned(),
                    ..Default::default()
                },
            })
            .await?;
        alloc.seq = seq;
        let stored = alloc.clone();
        self.set_table(|m| {
            m.insert(stored.prefix.clone(), stored);
        });
        Ok(alloc)
    }

    async fn remove_allocations(
        &self,
        caller: &Caller,
        filing_id: &str,
        prefixes: Vec<String>,
        action: &str,
        reason: &str,
    ) -> ServiceResult<u64> {
        let mut mutations = Vec::new();
        for p in &prefixes {
            let prefix = parse_prefix(p, "prefix")?;
            mutations.push(Mutation::DeleteIfExists {
                handle: prefix.record_handle(),
            });
            mutations.push(Mutation::DeleteAux {
                space: PREFIX.into(),
                key: p.as_bytes().to_vec(),
            });
        }
        let (_, seq) = self
            .commit(Change {
                mutations,
                audit: pb::AuditEvent {
                    actor: caller.actor(),
                    action: action.into(),
                    filing_id: filing_id.to_owned(),
                    reason: reason.to_owned(),
                    prefix: prefixes.join(","),
                    actor_certificate_sha256: caller.sha256().to_owned(),
                    ..Default::default()
                },
            })
            .await?;
        self.set_table(|m| {
            for p in &prefixes {
                m.remove(p);
            }
        });
        Ok(seq)
    }

    /// Withdraws an allocated prefix and what was homed under it.
    pub async fn deallocate(
        &self,
        caller: &Caller,
        req: pb::DeallocateRequest,
    ) -> ServiceResult<pb::PrefixAllocation> {
        caller.operator()?;
        let prefix = parse_prefix(&req.prefix, "prefix")?;
        let _guard = self.lock.lock().await;
        let table = self.table();
        let Some(alloc) = table.get(prefix.as_str()).cloned() else {
            return Err(ServiceError::NotFound(format!(
                "prefix {prefix} is not allocated"
            )));
        };
        if alloc.kind != AllocationKind::Allocated as i32 {
            return Err(ServiceError::FailedPrecondition(format!(
                "prefix {prefix} was homed by its node, not allocated: the node unhomes it"
            )));
        }
        let mut gone = vec![alloc.prefix.clone()];
        for a in table.values() {
            if a.parent == alloc.prefix {
                gone.push(a.prefix.clone());
            }
        }
        let seq = self
            .remove_allocations(caller, &alloc.filing_id, gone, "deallocate", &req.reason)
            .await?;
        Ok(pb::PrefixAllocation { seq, ..alloc })
    }

    /// A node homes a derived prefix.
    pub async fn home(
        &self,
        caller: &Caller,
        req: pb::HomeRequest,
    ) -> ServiceResult<pb::PrefixAllocation> {
        let filing = caller.active_node()?.clone();
        let prefix = parse_prefix(&req.prefix, "prefix")?;
        let _guard = self.lock.lock().await;
        let table = self.table();
        if let Some(a) = table.get(prefix.as_str()) {
            return Err(ServiceError::AlreadyExists(format!(
                "prefix {prefix} is already {} by node {}",
                if a.kind == AllocationKind::Homed as i32 {
                    "homed"
                } else {
                    "allocated"
                },
                a.filing_id
            )));
        }
        let parent = prefix
            .parent()
            .and_then(|p| self.owner_of(&p))
            .filter(|a| a.filing_id == filing.id && a.kind == AllocationKind::Allocated as i32)
            .ok_or_else(|| {
                ServiceError::PermissionDenied(format!(
                    "prefix {prefix} is not derived from a prefix allocated to node {}",
                    filing.id
                ))
            })?;
        let alloc = pb::PrefixAllocation {
            prefix: prefix.as_str().to_owned(),
            filing_id: filing.id.clone(),
            kind: AllocationKind::Homed as i32,
            allocated_at: now(),
            parent: parent.prefix.clone(),
            seq: 0,
        };
        self.write_allocation(caller, &filing, &prefix, alloc, "home", "")
            .await
    }

    /// A node unhomes a derived prefix it homed.
    pub async fn unhome(
        &self,
        caller: &Caller,
        req: pb::HomeRequest,
    ) -> ServiceResult<pb::PrefixAllocation> {
        let filing = caller.active_node()?.clone();
        let prefix = parse_prefix(&req.prefix, "prefix")?;
        let _guard = self.lock.lock().await;
        let table = self.table();
        let alloc = match table.get(prefix.as_str()) {
            Some(a) if a.filing_id == filing.id && a.kind == AllocationKind::Homed as i32 => {
                a.clone()
            }
            Some(a) if a.filing_id == filing.id => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "prefix {prefix} was allocated by an operator; only an operator withdraws it"
                )))
            }
            Some(a) => {
                return Err(ServiceError::PermissionDenied(format!(
                    "prefix {prefix} belongs to node {}",
                    a.filing_id
                )))
            }
            None => {
                return Err(ServiceError::NotFound(format!(
                    "prefix {prefix} is not homed"
                )))
            }
        };
        let seq = self
            .remove_allocations(caller, &filing.id, vec![alloc.prefix.clone()], "unhome", "")
            .await?;
        Ok(pb::PrefixAllocation { seq, ..alloc })
    }
}

/// Parses a prefix field; prefix records' own prefix `0.NA` is refused.
pub fn parse_prefix(s: &str, field: &str) -> ServiceResult<Prefix> {
    let p = Prefix::parse(s).map_err(|e| ServiceError::invalid(field, e))?;
    if Prefix::parse(PREFIX_RECORD_PREFIX).is_ok_and(|na| na.covers(&p)) {
        return Err(ServiceError::invalid(
            field,
            "0.NA is reserved for prefix records",
        ));
    }
    Ok(p)
}

fn service_addr(a: &pb::ServiceAddress, i: usize) -> ServiceResult<SocketAddr> {
    let ip: IpAddr = a.host.parse().map_err(|_| {
        ServiceError::invalid(format!("service_addresses[{i}].host"), "not an IP address")
    })?;
    let port = u16::try_from(a.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            ServiceError::invalid(format!("service_addresses[{i}].port"), "not 1-65535")
        })?;
    Ok(SocketAddr::new(ip, port))
}

fn validate_application(req: &pb::FileRequest) -> ServiceResult<()> {
    let text = |field: &str, v: &str, max: usize| -> ServiceResult<()> {
        if v.trim().is_empty() {
            return Err(ServiceError::invalid(field, "required"));
        }
        if v.chars().count() > max {
            return Err(ServiceError::invalid(
                field,
                format!("longer than {max} characters"),
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(ServiceError::invalid(field, "contains control characters"));
        }
        Ok(())
    };
    text("organisation", &req.organisation, 256)?;
    credit_code::validate(&req.credit_code).map_err(|e| ServiceError::invalid("credit_code", e))?;
    let contact = req
        .contact
        .as_ref()
        .ok_or_else(|| ServiceError::invalid("contact", "required"))?;
    text("contact.name", &contact.name, 128)?;
    if contact.phone.trim().is_empty() && contact.email.trim().is_empty() {
        return Err(ServiceError::invalid(
            "contact",
            "give a phone number or an e-mail address",
        ));
    }
    if !contact.email.is_empty() && !contact.email.contains('@') {
        return Err(ServiceError::invalid(
            "contact.email",
            "not an e-mail address",
        ));
    }
    text("industry", &req.industry, 128)?;
    if req.service_addresses.is_empty() {
        return Err(ServiceError::invalid(
            "service_addresses",
            "at least one is required",
        ));
    }
    if req.service_addresses.len() > 16 {
        return Err(ServiceError::invalid("service_addresses", "at most 16"));
    }
    for (i, a) in req.service_addresses.iter().enumerate() {
        service_addr(a, i)?;
    }
    Ok(())
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A page size from a request, with its default and cap.
pub fn page_size(asked: u32, default: usize, max: usize) -> usize {
    match asked {
        0 => default,
        n => (n as usize).min(max),
    }
}
