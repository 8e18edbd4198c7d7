//! DNS over QUIC (RFC 9250).
//!
//! A client opens one bidirectional stream per query, sends the query with
//! a two-byte length prefix and closes its side; the server answers on the
//! same stream in the same framing and closes it (§4.2). The connection
//! uses ALPN `doq` over TLS 1.3 (§4.1.1). A query must carry message ID 0
//! (§4.2.1); a stream that breaks the framing or the ID rule closes the
//! connection with `DOQ_PROTOCOL_ERROR` (§4.3). Connections, streams per
//! connection and idle time are bounded.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{watch, Semaphore};

use crate::authority::{Authority, Outcome, Transport};
use crate::config::ConfigError;
use crate::unix_now;
use crate::wire::MAX_MESSAGE;

/// The ALPN token of DNS over QUIC (RFC 9250 §4.1.1).
pub const ALPN: &[u8] = b"doq";

/// DoQ error codes (RFC 9250 §4.3).
pub mod error_code {
    /// No error; used when closing a connection.
    pub const NO_ERROR: u32 = 0x0;
    /// The server failed.
    pub const INTERNAL_ERROR: u32 = 0x1;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 0x2;
    /// The server is overloaded.
    pub const EXCESSIVE_LOAD: u32 = 0x4;
}

/// Limits of the DoQ listener.
#[derive(Debug, Clone, Copy)]
pub struct DoqLimits {
    /// Most connections at once.
    pub max_connections: usize,
    /// Most concurrent query streams per connection.
    pub max_streams: u32,
    /// Idle time after which a connection is closed; also the time a
    /// stream has to deliver its query.
    pub idle: Duration,
}

fn tls_error(path: &Path, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Tls {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Builds the QUIC server configuration from a PEM certificate chain and
/// private key.
pub fn server_config(
    cert: &Path,
    key: &Path,
    limits: DoqLimits,
) -> Result<quinn::ServerConfig, ConfigError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(cert, e))?;
    if certs.is_empty() {
        return Err(tls_error(cert, "no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| tls_error(key, e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| tls_error(cert, e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(limits.max_streams.max(1)))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle).ok());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Checks that a certificate chain and key load and belong together.
pub fn check_files(cert: &Path, key: &Path) -> Result<(), ConfigError> {
    let limits = DoqLimits {
        max_connections: 1,
        max_streams: 1,
        idle: std::time::Duration::from_secs(1),
    };
    server_config(cert, key, limits).map(drop)
}

/// Makes a QUIC endpoint on `socket` (a std socket the caller bound).
pub fn endpoint(
    socket: std::net::UdpSocket,
    config: quinn::ServerConfig,
) -> Result<Endpoint, ConfigError> {
    let runtime = quinn::default_runtime().ok_or(ConfigError::NoRuntime)?;
    Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )
    .map_err(|source| ConfigError::Io {
        what: "DNS-over-QUIC",
        source,
    })
}

/// Accepts connections until `shutdown` turns true, then closes the
/// endpoint.
pub async fn serve(
    authority: Arc<Authority>,
    endpoint: Endpoint,
    limits: DoqLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.changed() => break,
            i = endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { break };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let authority = Arc::clone(&authority);
        tokio::spawn(async move {
            let _slot = slot;
            connection(authority, incoming, limits).await;
        });
    }
    endpoint.close(VarInt::from_u32(error_code::NO_ERROR), b"");
}

async fn connection(authority: Arc<Authority>, incoming: Incoming, limits: DoqLimits) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "DoQ handshake failed");
            return;
        }
    };
    while let Ok((send, recv)) = conn.accept_bi().await {
        let authority = Arc::clone(&authority);
        let conn = conn.clone();
        tokio::spawn(async move {
            stream(&authority, &conn, send, recv, limits.idle).await;
        });
    }
}

fn protocol_error(conn: &Connection, why: &'static str) {
    tracing::debug!(why, "closing DoQ connection");
    conn.close(VarInt::from_u32(error_code::PROTOCOL_ERROR), why.as_bytes());
}

async fn stream(
    authority: &Authority,
    conn: &Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    idle: Duration,
) {
    let data = match tokio::time::timeout(idle, recv.read_to_end(2 + MAX_MESSAGE)).await {
        Ok(Ok(d)) => d,
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            return protocol_error(conn, "message too long");
        }
        Ok(Err(_)) => return,
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(error_code::PROTOCOL_ERROR));
            return;
        }
    };
    let Some((len, msg)) = data.split_first_chunk::<2>() else {
        return protocol_error(conn, "no length prefix");
    };
    if usize::from(u16::from_be_bytes(*len)) != msg.len() {
        return protocol_error(conn, "length prefix does not match the stream");
    }
    if msg.get(..2).is_some_and(|id| id != [0, 0]) {
        return protocol_error(conn, "message ID is not 0");
    }
    let mut out = Vec::with_capacity(512);
    if authority.answer(msg, Transport::Quic, unix_now(), &mut out) == Outcome::Drop {
        let _ = send.reset(VarInt::from_u32(error_code::PROTOCOL_ERROR));
        return;
    }
    let Ok(out_len) = u16::try_from(out.len()) else {
        let _ = send.reset(VarInt::from_u32(error_code::INTERNAL_ERROR));
        return;
    };
    let mut frame = Vec::with_capacity(2 + out.len());
    frame.extend_from_slice(&out_len.to_be_bytes());
    frame.extend_from_slice(&out);
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
    }
}
