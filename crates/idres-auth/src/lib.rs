//! Authentication and authorization of idres, in one place.
//!
//! Every face of the node (Handle protocol over UDP, TCP and HTTP, the
//! JSON API, gRPC) asks this crate who a caller is and what it may do:
//!
//! - [`identity`]: identities `index:handle` and callers;
//! - [`policy`]: HS_ADMIN / HS_VLIST evaluation, the permission each
//!   operation needs, and [`policy::PermissionGuard`], the precondition a
//!   write carries so that the store's writer decides permission against
//!   the very state it applies the write to;
//! - [`secret`]: secret keys sealed at rest under the node's secrets key,
//!   and the store policy that seals them and takes away public read on
//!   every write path;
//! - [`pubkey`]: HS_PUBKEY in the encodings clients use, and signature
//!   checks (RSA, DSA, SM2/SM3);
//! - [`challenge`]: the Handle challenge-response (nonces, the answers for
//!   secret and public keys);
//! - [`nodekey`]: the node's own key, advertised in HS_SITE and used to
//!   sign replies.

#![forbid(unsafe_code)]

pub mod audit;
pub mod challenge;
pub mod identity;
pub mod limits;
pub mod nodekey;
pub mod policy;
pub mod pubkey;
pub mod secret;
pub mod throttle;

pub use identity::{Caller, Identity};
pub use nodekey::{KeyAlgorithm, NodeKey};
pub use policy::{require, Grants, Op, PermissionGuard, Refusal, StoreView};
pub use secret::{SecretBox, SecretPolicy, Verdict};
pub use throttle::Throttle;
