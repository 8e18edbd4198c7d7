//! Mutual TLS for the gRPC face.
//!
//! The server asks every client for a certificate. During the handshake it
//! only checks that the client holds the key of the certificate it shows
//! (the handshake signature); right after, it verifies the chain against
//! the client CA (and the operator CA) with webpki and keeps the result
//! with the connection. Every call then starts by reading that result
//! ([`crate::auth`]), so that a refused client is told why (unknown CA,
//! expired, no certificate) in a gRPC status instead of a bare TLS alert.
//! Nothing is served to a connection whose certificate did not verify
//! except the reason for the refusal.
//!
//! Plaintext is available only behind an explicit development switch and
//! only on a loopback address; there, callers name themselves with the
//! `x-idres-dev-peer` metadata (see docs/grpc.md).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;

use crate::certs::OPERATOR_CN_PREFIX;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// PEM that holds nothing usable.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// PEM material of a node's gRPC server.
#[derive(Debug, Clone)]
pub struct ServerTlsPem {
    /// The server's certificate chain.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// CA(s) whose client certificates identify nodes.
    pub client_ca_pem: String,
    /// CA(s) whose `operator:` certificates identify operators (the client
    /// CA when `None`).
    pub operator_ca_pem: Option<String>,
    /// Certificate revocation lists of those CAs (PEM): a revoked client
    /// certificate is refused.
    pub crl_pems: Vec<String>,
}

impl ServerTlsPem {
    /// Reads the four files.
    pub fn read(
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: &std::path::Path,
        operator_ca: Option<&std::path::Path>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: read(client_ca)?,
            operator_ca_pem: operator_ca.map(read).transpose()?,
            crl_pems: Vec::new(),
        })
    }

    /// Adds the revocation lists in `paths`.
    pub fn with_crls(mut self, paths: &[std::path::PathBuf]) -> Result<Self, TlsError> {
        for p in paths {
            self.crl_pems.push(read(p)?);
        }
        Ok(self)
    }
}

/// Parses every revocation list of a PEM text.
pub fn crls_from_pem(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, TlsError> {
    let crls: Result<Vec<_>, _> = rustls_pemfile::crls(&mut pem.as_bytes()).collect();
    let crls = crls.map_err(|e| TlsError::Pem(format!("bad CRL PEM: {e}")))?;
    if crls.is_empty() {
        return Err(TlsError::Pem("no CRL in PEM".into()));
    }
    Ok(crls)
}

/// Reads a text file.
pub fn read(path: &std::path::Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Parses every certificate of a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Pem(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate in PEM".into()));
    }
    Ok(certs)
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("bad key PEM: {e}")))?
        .ok_or_else(|| TlsError::Pem("no private key in PEM".into()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs_from_pem(pem)? {
        store
            .add(c)
            .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// Lowercase hex SHA-256 of a certificate's DER: the identity a filing is
/// bound to.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The subject common name of a DER certificate, if it has one.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

/// Verifies the client's chain during the handshake: a chain to the
/// client CA or to the operator CA (with the node's CRLs) is let in, and
/// anything else is refused with a TLS alert before a single request is
/// read. Which of the two it is, and who it names, is decided right after
/// by [`PeerChecker`].
#[derive(Debug)]
struct HandshakeVerifier {
    nodes: Arc<dyn ClientCertVerifier>,
    operators: Arc<dyn ClientCertVerifier>,
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for HandshakeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .nodes
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => Ok(v),
            Err(as_node) => self
                .operators
                .verify_client_cert(end_entity, intermediates, now)
                .map_err(|_| as_node),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.nodes.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.nodes.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.nodes.supported_verify_schemes()
    }
}

/// What the server knows about the client of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The verified client certificate, or why there is none.
    pub identity: Result<PeerCert, String>,
    /// True on a plaintext development connection.
    pub plaintext: bool,
}

/// A client certificate that chains to one of the node's CAs.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// Hex SHA-256 of its DER.
    pub sha256: String,
    /// Subject common name ("" if none).
    pub subject: String,
    /// DER of the certificate.
    pub der: Vec<u8>,
    /// True if it is an operator certificate (chains to the operator CA
    /// and its common name starts with `operator:`).
    pub operator: bool,
    /// True if it chains to the client CA (may identify a node).
    pub node_ca: bool,
}

/// Verifies client chains after the handshake.
#[derive(Debug, Clone)]
pub struct PeerChecker {
    nodes: Arc<dyn ClientCertVerifier>,
    operators: Arc<dyn ClientCertVerifier>,
}

impl PeerChecker {
    fn new(
        client_ca_pem: &str,
        operator_ca_pem: Option<&str>,
        crl_pems: &[String],
    ) -> Result<Self, TlsError> {
        let mut crls = Vec::new();
        for pem in crl_pems {
            crls.extend(crls_from_pem(pem)?);
        }
        let build = |pem: &str| -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
            WebPkiClientVerifier::builder_with_provider(roots(pem)?, provider())
                .with_crls(crls.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))
        };
        let nodes = build(client_ca_pem)?;
        let operators = match operator_ca_pem {
            Some(p) => build(p)?,
            None => Arc::clone(&nodes),
        };
        Ok(Self { nodes, operators })
    }

    /// Verifies a presented chain (end entity first).
    pub fn check(&self, chain: &[CertificateDer<'_>]) -> Result<PeerCert, String> {
        let Some((end, intermediates)) = chain.split_first() else {
            return Err(
                "no client certificate was presented; a certificate issued by this \
                        node's CA is required"
                    .into(),
            );
        };
        let now = UnixTime::now();
        let subject = subject_cn(end).unwrap_or_default();
        let as_node = self.nodes.verify_client_cert(end, intermediates, now);
        let as_operator = subject.starts_with(OPERATOR_CN_PREFIX)
            && self
                .operators
                .verify_client_cert(end, intermediates, now)
                .is_ok();
        if as_node.is_err() && !as_operator {
            let why = match as_node {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
                    "unknown CA: the client certificate is not issued by a CA this node trusts"
                        .to_owned()
                }
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)) => {
                    "the client certificate has expired".to_owned()
                }
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                    "the client certificate is revoked (listed in a CRL this node holds)".to_owned()
                }
                Err(e) => format!("the client certificate was refused: {e}"),
                Ok(_) => "the client certificate was refused".to_owned(),
            };
            return Err(why);
        }
        Ok(PeerCert {
            sha256: fingerprint(end),
            subject,
            der: end.to_vec(),
            operator: as_operator,
            node_ca: as_node.is_ok(),
        })
    }
}

/// A server-side TLS setup: the rustls configuration and the checker.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    checker: PeerChecker,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Builds the setup from PEM.
    pub fn new(pem: &ServerTlsPem) -> Result<Self, TlsError> {
        let provider = provider();
        let ca_roots = roots(&pem.client_ca_pem)?;
        let mut hints: Vec<DistinguishedName> = ca_roots.subjects();
        if let Some(op) = &pem.operator_ca_pem {
            hints.extend(roots(op)?.subjects());
        }
        let checker = PeerChecker::new(
            &pem.client_ca_pem,
            pem.operator_ca_pem.as_deref(),
            &pem.crl_pems,
        )?;
        let verifier = Arc::new(HandshakeVerifier {
            nodes: Arc::clone(&checker.nodes),
            operators: Arc::clone(&checker.operators),
            hints,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs_from_pem(&pem.cert_pem)?, key_from_pem(&pem.key_pem)?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            checker,
        })
    }
}

/// A connection handed to tonic, carrying its [`PeerInfo`] and its place
/// in the face's connection tracker: every read and write marks it used,
/// and when the tracker evicts it the next read fails, which ends it.
#[derive(Debug)]
pub struct Conn {
    io: ConnIo,
    info: PeerInfo,
    slot: idres_net::Slot,
    evicted: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl Conn {
    fn new(io: ConnIo, info: PeerInfo, slot: idres_net::Slot) -> Self {
        let evicted = Box::pin(slot.token().cancelled_owned());
        Self {
            io,
            info,
            slot,
            evicted,
        }
    }
}

#[derive(Debug)]
enum ConnIo {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if std::future::Future::poll(this.evicted.as_mut(), cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "evicted to make room for another connection",
            )));
        }
        this.slot.activity().touch();
        match &mut this.io {
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.slot.activity().touch();
        match &mut this.io {
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Tls(s) => s.is_write_vectored(),
            ConnIo::Plain(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts connections on `listener` and yields them, TLS-wrapped when
/// `tls` is given (handshakes run concurrently, so a slow client does not
/// hold up others), as a stream for tonic's `serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    tls: Option<tokio::sync::watch::Receiver<ServerTls>>,
    tracker: Arc<idres_net::Tracker>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let handshake = tracker.limits().handshake;
    tokio::spawn(async move {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let Ok(slot) = tracker.admit(remote.ip()) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            match &tls {
                None => {
                    let conn = Conn::new(
                        ConnIo::Plain(stream),
                        PeerInfo {
                            remote: Some(remote),
                            identity: Err("plaintext connection".into()),
                            plaintext: true,
                        },
                        slot,
                    );
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    // The setup in force now: a reload changes it for the
                    // connections that come after.
                    let tls = tls.borrow().clone();
                    tokio::spawn(async move {
                        let accepted =
                            tokio::time::timeout(handshake, tls.acceptor.accept(stream)).await;
                        let stream = match accepted {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "TLS handshake timed out");
                                return;
                            }
                        };
                        let chain = stream.get_ref().1.peer_certificates().unwrap_or(&[]);
                        let identity = tls.checker.check(chain);
                        if let Err(why) = &identity {
                            tracing::info!(%remote, reason = %why, "client certificate refused");
                        }
                        let conn = Conn::new(
                            ConnIo::Tls(Box::new(stream)),
                            PeerInfo {
                                remote: Some(remote),
                                identity,
                                plaintext: false,
                            },
                            slot,
                        );
                        let _ = tx.send(Ok(conn)).await;
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Client-side material: the CA that issued the server's certificate, and
/// this client's certificate and key.
#[derive(Debug, Clone)]
pub struct ClientTlsPem {
    /// CA of the server.
    pub ca_pem: String,
    /// This client's certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
    /// Name to check in the server's certificate (the URL's host when
    /// `None`).
    pub server_name: Option<String>,
}

impl ClientTlsPem {
    /// Checks the material without connecting: the CA parses, and the
    /// certificate and key parse and belong together.
    pub fn check(&self) -> Result<(), TlsError> {
        let roots = roots(&self.ca_pem)?;
        let certs = certs_from_pem(&self.cert_pem)?;
        let key = key_from_pem(&self.key_pem)?;
        let provider = provider();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Config(format!("the key does not load: {e}")))?;
        let certified = rustls::sign::CertifiedKey::new(certs, signing);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(TlsError::Config(format!(
                    "the key does not match the certificate: {e}"
                )))
            }
        }
        drop(roots);
        Ok(())
    }

    /// Reads the three files.
    pub fn read(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            server_name: None,
        })
    }
}

/// Opens a channel to `url` (`https://host:port` with `tls`, or
/// `http://127.0.0.1:port` for a development plaintext server).
pub async fn connect(
    url: &str,
    tls: Option<&ClientTlsPem>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    if let Some(t) = tls {
        let mut cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &t.cert_pem,
                &t.key_pem,
            ));
        if let Some(n) = &t.server_name {
            cfg = cfg.domain_name(n.clone());
        }
        endpoint = endpoint.tls_config(cfg)?;
    }
    endpoint.connect().await
}
