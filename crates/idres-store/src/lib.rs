//! Storage of idres.
//!
//! [`Store`] is the narrow interface the rest of the node uses: read a
//! record, read the change log, list handles, and submit writes. Its one
//! implementation, [`SledStore`], keeps everything in one sled 0.34 tree
//! (layout in `docs/storage.md`); sled types never leave this crate.
//!
//! Writes go through a single writer thread that takes every request
//! queued since its last commit, applies them as one atomic sled batch
//! together with their change-log entries, flushes to disk, and only then
//! reports each request's outcome (group commit). A caller is therefore
//! told of success only once its data is durable, and bulk writers that
//! keep several requests in flight share the cost of each flush.
//!
//! Records are kept in their Handle wire encoding (`int4` count and values,
//! RFC 3652 §3.1) so that a resolution reply is mostly a copy.

#![forbid(unsafe_code)]

pub mod backup;
mod cache;
mod index;
mod keys;
pub mod links;
pub mod metrics;
pub mod record;
mod sled_store;

use std::sync::Arc;

use idres_model::{Handle, HandleValue, Prefix, ValueError};

pub use index::glob_match;
pub use record::RecordBytes;
pub use sled_store::{SledConfig, SledStore};

/// The on-disk schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A storage failure. Never carries a sled type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The underlying database failed.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// Stored bytes do not decode.
    #[error("corrupt stored data at {key}: {reason}")]
    Corrupt {
        /// Which key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The store was written by a newer schema.
    #[error("store schema version {found} is newer than the supported {supported}")]
    UnsupportedSchema {
        /// Version on disk.
        found: u32,
        /// Version this build knows.
        supported: u32,
    },
    /// The store is closed.
    #[error("the store is shut down")]
    Closed,
    /// An earlier write failed to reach the disk; the store takes no more
    /// writes until it is reopened.
    #[error("the store refuses writes since a write failed ({0}); restart the node once the cause is fixed")]
    WriterFailed(String),
    /// The disk failed while the write was being stored: it may or may not
    /// be there. The store refuses writes until it is reopened; after that
    /// the write is present exactly when the change log lists it.
    #[error("the disk failed while the write was stored ({0}): it may or may not have been kept; once the node is restarted it is present exactly when the change log lists it")]
    OutcomeUnknown(String),
    /// The writer's queue is full: the disk is slower than the writes.
    #[error("the store's write queue is full; try again shortly")]
    Busy,
}

impl StoreError {
    /// Whether the store cannot take writes now (shut down, or refusing
    /// writes after a failure): the answer to a client is "unavailable,
    /// try later or elsewhere", not an internal error.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Closed
                | StoreError::WriterFailed(_)
                | StoreError::Busy
                | StoreError::OutcomeUnknown(_)
        )
    }
}

/// Why one write request was refused. Nothing of a refused request is
/// written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MutationError {
    /// The handle does not exist.
    #[error("handle {0} not found")]
    HandleNotFound(String),
    /// The handle exists already.
    #[error("handle {0} already exists")]
    HandleExists(String),
    /// A value with this index exists already.
    #[error("handle {handle} already has a value at index {index}")]
    ValueExists {
        /// The handle.
        handle: String,
        /// The index.
        index: u32,
    },
    /// No value with this index exists.
    #[error("handle {handle} has no value at index {index}")]
    ValueNotFound {
        /// The handle.
        handle: String,
        /// The index.
        index: u32,
    },
    /// A precondition carried by the request ([`Mutation::Require`])
    /// refused it against the state it would have been applied to.
    #[error("{0}")]
    Denied(Denied),
    /// A link value names an identifier that its scheme refuses.
    #[error("invalid link in {handle}: {reason}")]
    BadLink {
        /// The handle.
        handle: String,
        /// What is wrong.
        reason: String,
    },
    /// Another record already claims a linked identifier.
    #[error("{link} is already linked to {other}; {handle} cannot claim it too")]
    LinkConflict {
        /// The link key.
        link: String,
        /// The handle that tried to claim it.
        handle: String,
        /// The handle that holds it.
        other: String,
    },
    /// The resulting values are not valid.
    #[error("invalid values for {handle}: {source}")]
    Invalid {
        /// The handle.
        handle: String,
        /// What is wrong.
        source: ValueError,
    },
}

/// One change to one handle.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Mutation {
    /// Create the handle or replace all its values.
    Put {
        /// The handle.
        handle: Handle,
        /// Its new values.
        values: Vec<HandleValue>,
    },
    /// Create the handle; refused if it exists.
    Create {
        /// The handle.
        handle: Handle,
        /// Its values.
        values: Vec<HandleValue>,
    },
    /// Delete the handle; refused if it does not exist.
    Delete {
        /// The handle.
        handle: Handle,
    },
    /// Delete the handle if it exists.
    DeleteIfExists {
        /// The handle.
        handle: Handle,
    },
    /// Add values; refused if the handle is missing or an index is taken.
    AddValues {
        /// The handle.
        handle: Handle,
        /// The values.
        values: Vec<HandleValue>,
    },
    /// Remove values by index; refused if one is missing.
    RemoveValues {
        /// The handle.
        handle: Handle,
        /// Indexes to remove.
        indexes: Vec<u32>,
    },
    /// Replace values by index; refused if one is missing.
    ModifyValues {
        /// The handle.
        handle: Handle,
        /// The new values.
        values: Vec<HandleValue>,
    },
    /// Add or replace values by index, creating the handle if needed.
    UpsertValues {
        /// The handle.
        handle: Handle,
        /// The values.
        values: Vec<HandleValue>,
    },
    /// Store a value in an auxiliary key space (data that is not a handle
    /// record: filings, audit entries, cursors). Not in the change log.
    PutAux {
        /// Name of the key space (no NUL byte).
        space: String,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove a key of an auxiliary key space, if present.
    DeleteAux {
        /// Name of the key space.
        space: String,
        /// The key.
        key: Vec<u8>,
    },
    /// A precondition of the whole request: the writer asks `guard`
    /// whether the request may be applied, against the state it is about
    /// to apply it to (every earlier write of the same group commit
    /// included), and refuses the request with [`MutationError::Denied`]
    /// otherwise. This is how a permission decision is taken against the
    /// state written rather than against a read made before the write was
    /// queued. Changes nothing itself.
    Require {
        /// The check.
        guard: Arc<dyn WriteGuard>,
    },
}

/// Read access to the state a write request is applied to.
pub trait StateView {
    /// The values of a handle (canonical key), `None` if it does not exist.
    fn values(&self, key: &str) -> Result<Option<Vec<HandleValue>>, StoreError>;

    /// A value of an auxiliary key space.
    fn aux(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// A precondition checked by the writer; see [`Mutation::Require`].
pub trait WriteGuard: Send + Sync + std::fmt::Debug {
    /// Whether `mutations` (the whole request, this guard included) may be
    /// applied to `state`.
    fn check(&self, state: &dyn StateView, mutations: &[Mutation]) -> Result<(), Denied>;
}

/// Why a [`WriteGuard`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denied {
    /// What kind of refusal.
    pub kind: DeniedKind,
    /// A message for the caller.
    pub message: String,
}

/// Kinds of [`Denied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeniedKind {
    /// The caller is anonymous and the request needs an identity.
    AuthenticationNeeded,
    /// The caller's identity lacks a permission the request needs.
    InsufficientPermissions,
    /// The identity named is not an administrator that exists.
    InvalidAdmin,
}

/// Rewrites the values of every record the writer stores, whatever face
/// the write came from (for example to keep secret keys only in protected
/// form and never publicly readable). Applied by the writer to the values
/// a request leaves, before they are validated and written.
pub trait ValuePolicy: Send + Sync + std::fmt::Debug {
    /// Adjusts `values`, the new values of `handle`; true if it changed
    /// any.
    fn prepare(&self, handle: &str, values: &mut [HandleValue]) -> bool;
}

impl Mutation {
    /// The handle the mutation changes (none for auxiliary data).
    pub fn handle(&self) -> Option<&Handle> {
        match self {
            Mutation::Put { handle, .. }
            | Mutation::Create { handle, .. }
            | Mutation::Delete { handle }
            | Mutation::DeleteIfExists { handle }
            | Mutation::AddValues { handle, .. }
            | Mutation::RemoveValues { handle, .. }
            | Mutation::ModifyValues { handle, .. }
            | Mutation::UpsertValues { handle, .. } => Some(handle),
            Mutation::PutAux { .. } | Mutation::DeleteAux { .. } | Mutation::Require { .. } => None,
        }
    }

    /// The mutation's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Mutation::Put { .. } => "put",
            Mutation::Create { .. } => "create",
            Mutation::Delete { .. } => "delete",
            Mutation::DeleteIfExists { .. } => "delete_if_exists",
            Mutation::AddValues { .. } => "add_values",
            Mutation::RemoveValues { .. } => "remove_values",
            Mutation::ModifyValues { .. } => "modify_values",
            Mutation::UpsertValues { .. } => "upsert_values",
            Mutation::PutAux { .. } => "put_aux",
            Mutation::DeleteAux { .. } => "delete_aux",
            Mutation::Require { .. } => "require",
        }
    }
}

/// A group of mutations applied all together or not at all.
#[derive(Debug, Clone, Default)]
pub struct WriteRequest {
    /// The mutations, applied in order.
    pub mutations: Vec<Mutation>,
    /// A client-chosen key: a request whose key was already applied is not
    /// applied again, and reports the first application's outcome.
    pub idempotency_key: Option<Vec<u8>>,
}

impl WriteRequest {
    /// A request of one mutation.
    pub fn one(m: Mutation) -> Self {
        Self {
            mutations: vec![m],
            idempotency_key: None,
        }
    }
}

/// The outcome of a durable write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Change-log sequence number of the request's last change (or the last
    /// sequence number at the time, if it changed nothing).
    pub last_seq: u64,
    /// True if the idempotency key had been applied before and nothing was
    /// written now.
    pub replayed: bool,
}

/// What the store reports to a writer once its request is durable, or why
/// it was refused.
pub type WriteOutcome = Result<Result<Committed, MutationError>, StoreError>;

/// Called once with the outcome of a write request.
pub type WriteCallback = Box<dyn FnOnce(WriteOutcome) + Send>;

/// Kind of a change-log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The handle was created or its values changed.
    Put,
    /// The handle was deleted.
    Delete,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Sequence number, increasing by one per change.
    pub seq: u64,
    /// Unix time of the change.
    pub time: u32,
    /// What happened.
    pub kind: ChangeKind,
    /// Canonical key of the handle changed.
    pub handle: String,
}

/// How a prefix is homed, from its prefix record `0.NA/<prefix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixHome {
    /// The prefix.
    pub prefix: Prefix,
    /// The record's publicly readable HS_SITE, HS_SERV, HS_SITE.PREFIX and
    /// HS_SERV.PREFIX values.
    pub service_values: Vec<HandleValue>,
    /// Why the prefix is withdrawn, if its record says so
    /// (`IDRES.WITHDRAWN`): its handles are then refused, not served.
    pub withdrawn: Option<String>,
}

/// A key and its value in an auxiliary key space.
pub type AuxEntry = (Vec<u8>, Vec<u8>);

/// One page of a search by value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValuePage {
    /// Canonical keys of the matching handles, each once, in the index's
    /// order (by value, then handle).
    pub handles: Vec<String>,
    /// Opaque cursor to pass back for the next page; `None` at the end.
    pub next: Option<String>,
}

/// The storage interface of the node.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The record of a handle, by canonical key ([`Handle::key`]).
    fn get(&self, key: &str) -> Result<Option<RecordBytes>, StoreError>;

    /// Submits a write; `done` is called once, after the request is durable
    /// or refused.
    fn submit(&self, request: WriteRequest, done: WriteCallback);

    /// Submits a write and waits for its outcome.
    fn write(&self, request: WriteRequest) -> WriteOutcome {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(
            request,
            Box::new(move |outcome| {
                // The receiver waits below; a failed send means it is gone.
                let _ = tx.send(outcome);
            }),
        );
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Sequence number of the latest change (0 when none).
    fn last_seq(&self) -> u64;

    /// Up to `limit` changes with sequence number `>= from`.
    fn changes(&self, from: u64, limit: usize) -> Result<Vec<Change>, StoreError>;

    /// Lowest sequence number still in the log (`last_seq + 1` when empty).
    fn first_seq(&self) -> Result<u64, StoreError>;

    /// Up to `limit` canonical handle keys under `prefix` (that prefix
    /// only, not derived ones), in key order, after `after` if given.
    fn list(
        &self,
        prefix: &Prefix,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Up to `limit` handles with their records, in key order, starting
    /// after `after`: the whole store, for export and snapshots.
    fn scan(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, RecordBytes)>, StoreError>;

    /// Number of handles stored.
    fn handle_count(&self) -> usize;

    /// The prefix record governing `prefix`: that of the prefix itself or,
    /// failing that, of its nearest ancestor that has one.
    fn prefix_home(&self, prefix: &str) -> Option<Arc<PrefixHome>>;

    /// Every prefix that has a prefix record.
    fn prefixes(&self) -> Vec<Prefix>;

    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// A value of an auxiliary key space.
    fn aux_get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries of an auxiliary key space in key order, after
    /// `after` if given.
    fn aux_scan(
        &self,
        space: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<AuxEntry>, StoreError>;

    /// Handles with a value of type `value_type` whose data matches
    /// `pattern`: a glob in which `*` stands for any run of characters,
    /// compared without regard to ASCII case (`*example.cn*`,
    /// `https://example.cn/*`). Served from the value index; a pattern with
    /// a literal start only reads the index entries that start with it.
    /// Pass `cursor` from the previous page to continue.
    fn find_by_value(
        &self,
        value_type: &str,
        pattern: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ValuePage, StoreError>;

    /// The handles that claim a link key (at most [`links::MAX_CLAIMS`]),
    /// in handle order.
    fn find_link(&self, link_key: &str) -> Result<Vec<String>, StoreError>;

    /// Link claims whose link key starts with `prefix`, in key order,
    /// after the claim `after` (a link key and handle from the previous
    /// page), at most `limit`.
    fn scan_links(
        &self,
        prefix: &str,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// How many (value, handle) index entries match, as
    /// [`find_by_value`](Store::find_by_value) would find them.
    fn count_by_value(&self, value_type: &str, pattern: &str) -> Result<usize, StoreError>;
}
