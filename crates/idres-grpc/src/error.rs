//! Errors of the gRPC face and their one mapping to gRPC statuses.

use idres_store::{MutationError, StoreError};
use tonic::{Code, Status};

/// Why a call failed. [`From<ServiceError> for Status`] is the only place
/// these become gRPC codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A request field is invalid; the message names the field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the proto (`handle`, `values[2].type`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller has no right to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller is not identified (no or unacceptable certificate).
    #[error("{0}")]
    Unauthenticated(String),
    /// The object asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Storage failed; nothing was acknowledged.
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    /// Something this node cannot do now.
    #[error("{0}")]
    Unavailable(String),
    /// The caller is over a limit (its write rate, say).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A bug or corrupt data.
    #[error("internal: {0}")]
    Internal(String),
}

impl ServiceError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Storage(StoreError::Busy) | Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Storage(
                StoreError::Closed | StoreError::WriterFailed(_) | StoreError::OutcomeUnknown(_),
            )
            | Self::Unavailable(_) => Code::Unavailable,
            Self::Storage(_) | Self::Internal(_) => Code::Internal,
        }
    }

    /// Maps a refused store mutation; `field` names the request field the
    /// values came from.
    pub fn from_mutation(e: MutationError, field: &str) -> Self {
        match e {
            MutationError::HandleNotFound(h) => Self::NotFound(format!("handle {h} not found")),
            MutationError::HandleExists(h) => {
                Self::AlreadyExists(format!("handle {h} already exists"))
            }
            MutationError::ValueExists { handle, index } => Self::AlreadyExists(format!(
                "handle {handle} already has a value at index {index}"
            )),
            MutationError::ValueNotFound { handle, index } => {
                Self::NotFound(format!("handle {handle} has no value at index {index}"))
            }
            MutationError::Invalid { handle, source } => {
                Self::invalid(field, format!("for {handle}: {source}"))
            }
            MutationError::Denied(d) => Self::PermissionDenied(d.message),
            other => Self::InvalidArgument {
                field: field.to_owned(),
                reason: other.to_string(),
            },
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        if matches!(e, ServiceError::Storage(_) | ServiceError::Internal(_)) {
            tracing::error!(error = %e, "gRPC call failed");
        }
        Status::new(e.code(), e.to_string())
    }
}

/// Result of a service operation.
pub type ServiceResult<T> = Result<T, ServiceError>;
