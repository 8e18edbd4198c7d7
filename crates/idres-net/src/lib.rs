//! Network plumbing shared by every face of idres: binding sockets
//! ([`bind`]), admitting and evicting connections ([`conn`]), bounding what
//! one source may draw from a connectionless face and how fast one
//! identity may write ([`limit`], over [`source`] prefixes), and retrying
//! an upstream ([`retry`]). The faces bring their protocols; the limits,
//! and the code that enforces them, live here once.

#![forbid(unsafe_code)]

pub mod bind;
pub mod conn;
pub mod limit;
pub mod retry;
pub mod source;

pub use conn::{accept_loop, Activity, Busy, ConnLimits, Refusal, Slot, Tracker};
pub use limit::{BudgetConfig, ByteBudget, IdentityLimiter, Verdict};
pub use retry::Backoff;
pub use source::{Prefixes, SourceKey};
