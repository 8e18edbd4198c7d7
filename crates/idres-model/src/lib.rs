//! The identifier model of idres: handles and prefixes, handle values and
//! their binary and JSON forms, and typed views of the reserved value types.
//!
//! Nothing here performs I/O or reads a clock; callers pass times in. Every
//! decoder checks lengths before reading (see [`codec`]), and every parse
//! error says what was wrong and where.

#![forbid(unsafe_code)]

pub mod codec;
pub mod handle;
pub mod json;
pub mod oid;
pub mod typed;
pub mod value;

pub use codec::DecodeError;
pub use handle::{Handle, IdentifierError, Prefix, MAX_HANDLE_LEN, PREFIX_RECORD_PREFIX};
pub use oid::Oid;
pub use typed::{
    AdminPermissions, AdminRef, Interface, InterfaceType, ServerInfo, SiteInfo, TransportProtocol,
    ValueList,
};
pub use value::{
    decode_values, encode_values, types, validate_record, validate_values, HandleValue,
    Permissions, TtlType, ValueError, ValueReference,
};
