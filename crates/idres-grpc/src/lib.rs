//! The gRPC face of idres: how secondary nodes, mirrors and operators talk
//! to a national top-level node.
//!
//! - [`pb`]: the code generated from `proto/idres/v1` (one module).
//! - [`server::serve`]: the four services ([`node_service`],
//!   [`registry_service`], [`resolve_service`], [`sync_service`]) with the
//!   gRPC health service and server reflection, over mutual TLS ([`tls`]).
//! - [`registry`]: filings (备案) with their lifecycle and audit trail, and
//!   the prefix table, in the store's auxiliary key spaces.
//! - [`replica`]: the client side of sync, for mirrors and secondary
//!   nodes; [`escrow`]: a secondary node pushing its registrations up.
//! - [`certs`]: a development CA (rcgen).
//!
//! Errors become gRPC statuses in one place: `From<ServiceError> for
//! Status` in [`error`]. The design, security model and sync protocol are
//! described in `docs/grpc.md`.

#![forbid(unsafe_code)]

pub mod auth;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod convert;
pub mod core;
pub mod credit_code;
pub mod error;
pub mod escrow;
pub mod metrics;
pub mod node;
pub mod node_service;
pub mod page;
pub mod ranges;
pub mod registry;
pub mod registry_service;
pub mod replica;
pub mod resolve_service;
pub mod server;
pub mod sync_service;
pub mod tls;

pub use crate::core::{Core, Role};
pub use error::{ServiceError, ServiceResult};
pub use server::{serve, Security, ServeError};

/// Code generated from `proto/idres/v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
pub mod pb {
    tonic::include_proto!("idres.v1");
    /// Encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("idres_v1_descriptor");
}
