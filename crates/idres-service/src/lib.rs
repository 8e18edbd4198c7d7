//! The Handle service of idres: one request handler that knows nothing of
//! sockets ([`handler`]), and the transports that feed it ([`udp`],
//! [`tcp`]). Callers bind the sockets and hand them in, so that tests can
//! bind port 0 and operators can choose addresses.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_client;
pub mod client;
pub mod handler;
pub mod linked;
pub mod tcp;
pub mod udp;

pub use admin::{Auth, Peer, Transport};
pub use handler::{Handler, NodeIdentity, Outcome};

/// The current Unix time in seconds.
pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}
