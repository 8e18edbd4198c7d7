//! How fast one identity may write, on every face: the node's one
//! per-identity write limit (token buckets of `idres_net::IdentityLimiter`,
//! keyed by the identity the face authenticated: `index:handle`, a filing,
//! an operator certificate). HTTP, native Handle administration and gRPC
//! registration all call [`check_write`] before they queue a write; a
//! write over the limit is refused at once (HTTP 503 with
//! `SERVER_TOO_BUSY`, Handle `SERVER_TOO_BUSY`, gRPC `RESOURCE_EXHAUSTED`)
//! and counted. Until [`configure`] is called there is no limit.

use std::sync::OnceLock;
use std::time::Duration;

use idres_net::IdentityLimiter;

static WRITES: OnceLock<IdentityLimiter> = OnceLock::new();

/// Sets the limit: `per_sec` write operations a second per identity, in
/// bursts of up to `burst` (`per_sec` 0: none). Only the first call counts.
pub fn configure(per_sec: u32, burst: u32) {
    let _ = WRITES.set(IdentityLimiter::new(per_sec, burst));
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{identity} writes faster than this node allows; retry in {} ms", retry_after.as_millis().max(1))]
pub struct WriteLimited {
    /// The identity.
    pub identity: String,
    /// When it may write again.
    pub retry_after: Duration,
}

/// Takes `ops` write operations from `identity`'s allowance.
pub fn check_write(identity: &str, ops: u32) -> Result<(), WriteLimited> {
    let Some(l) = WRITES.get() else {
        return Ok(());
    };
    l.check(identity, ops).map_err(|retry_after| WriteLimited {
        identity: identity.to_owned(),
        retry_after,
    })
}

/// Writes refused by the limit so far.
pub fn refused() -> u64 {
    WRITES.get().map_or(0, IdentityLimiter::limited)
}
