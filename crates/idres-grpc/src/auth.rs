//! Who is calling: the certificate verified when the connection was
//! accepted ([`crate::tls`]), or on a development plaintext connection the
//! name given in the `x-idres-dev-peer` metadata.

use tonic::Request;

use crate::certs::OPERATOR_CN_PREFIX;
use crate::error::ServiceError;
use crate::tls::{fingerprint, PeerCert, PeerInfo};

/// Metadata key naming the caller on a development plaintext connection.
pub const DEV_PEER_HEADER: &str = "x-idres-dev-peer";

/// The verified certificate of the caller of `req`.
pub fn peer<T>(req: &Request<T>) -> Result<PeerCert, ServiceError> {
    let Some(info) = req.extensions().get::<PeerInfo>() else {
        return Err(ServiceError::Unauthenticated(
            "no connection information; calls must come over the node's listener".into(),
        ));
    };
    if info.plaintext {
        let name = req
            .metadata()
            .get(DEV_PEER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ServiceError::Unauthenticated(format!(
                    "plaintext development connection: name the caller in the \
                     {DEV_PEER_HEADER} metadata (\"operator:<name>\" or a node name)"
                ))
            })?;
        return Ok(PeerCert {
            sha256: fingerprint(format!("dev:{name}").as_bytes()),
            subject: name.to_owned(),
            der: Vec::new(),
            operator: name.starts_with(OPERATOR_CN_PREFIX),
            node_ca: true,
        });
    }
    info.identity.clone().map_err(ServiceError::Unauthenticated)
}
