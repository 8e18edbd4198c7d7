//! A development certificate authority: a CA, server certificates for
//! nodes, and client certificates for nodes and operators (rcgen).
//!
//! Role conventions (see docs/grpc.md, "Security"): a client certificate
//! whose subject common name starts with `operator:` and that chains to
//! the operator CA is an operator's; any other client certificate that
//! chains to the client CA identifies a node through its filing.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Subject common-name prefix of operator certificates.
pub const OPERATOR_CN_PREFIX: &str = "operator:";

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("certificate generation: {0}")]
pub struct CertError(String);

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        Self(e.to_string())
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

/// A certificate authority able to issue certificates.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A node's server certificate (also usable as a client certificate).
    Server,
    /// A client certificate.
    Client,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new self-signed CA named `name`.
    pub fn generate(name: &str) -> Result<Self, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "idres development CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// Loads a CA written by [`DevCa::pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The CA's certificate and key.
    pub fn pem(&self) -> PemPair {
        PemPair {
            cert_pem: self.cert.pem(),
            key_pem: self.key.serialize_pem(),
        }
    }

    /// The CA certificate alone.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a certificate for `common_name` with the given DNS names and
    /// IP addresses as subject alternative names.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        usage: Usage,
    ) -> Result<PemPair, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for n in names {
            let san = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Server => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for `localhost`, `127.0.0.1`, `::1` and `names`.
    pub fn issue_server(&self, common_name: &str, names: &[String]) -> Result<PemPair, CertError> {
        let mut all = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        all.extend(names.iter().cloned());
        self.issue(common_name, &all, Usage::Server)
    }

    /// A certificate revocation list (PEM) of this CA revoking the
    /// certificates given (PEM), numbered `number`.
    pub fn revocation_list(&self, revoked: &[&str], number: u64) -> Result<String, CertError> {
        let mut entries = Vec::new();
        for pem in revoked {
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .map_err(|e| CertError(format!("not a PEM certificate: {e}")))?;
            let cert = p
                .parse_x509()
                .map_err(|e| CertError(format!("not a certificate: {e}")))?;
            entries.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: entries,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
    }

    /// A node's client certificate.
    pub fn issue_node(&self, name: &str) -> Result<PemPair, CertError> {
        self.issue(name, &[], Usage::Client)
    }

    /// An operator's client certificate (common name `operator:<name>`).
    pub fn issue_operator(&self, name: &str) -> Result<PemPair, CertError> {
        self.issue(&format!("{OPERATOR_CN_PREFIX}{name}"), &[], Usage::Client)
    }
}
