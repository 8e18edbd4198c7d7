//! The `idres cert` and `idres admin` commands: a development CA, and the
//! operator's calls to a node's gRPC face.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::certs::{CertError, DevCa, PemPair};
use crate::pb::{self, node_service_client::NodeServiceClient, FilingState};
use crate::replica::Upstream;
use crate::tls::ClientTlsPem;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// File I/O.
    #[error("{path}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Connecting.
    #[error("connecting")]
    Connect(#[from] tonic::transport::Error),
    /// The node refused the call.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
}

/// `idres cert`: a development certificate authority.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Creates a CA in a directory (`ca.pem`, `ca-key.pem`).
    Ca {
        /// Directory to write to.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "idres development CA")]
        name: String,
    },
    /// Issues a certificate from the CA in `--dir` (`<name>.pem`,
    /// `<name>-key.pem`).
    Issue {
        /// Directory of the CA, and where to write.
        #[arg(long)]
        dir: PathBuf,
        /// server (a node's gRPC server), node (a node's client
        /// certificate) or operator (common name `operator:<name>`).
        #[arg(long)]
        kind: String,
        /// Name: the common name, and the file name.
        #[arg(long)]
        name: String,
        /// Extra DNS names or IP addresses of a server certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        Self::Status(Box::new(s))
    }
}

fn write(path: &Path, text: &str) -> Result<(), CliError> {
    std::fs::write(path, text).map_err(|source| CliError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes a private key: mode 0600, as every private key idres writes
/// (also when the file existed with wider permissions).
fn write_key(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write as _;
    let io = |source| CliError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Runs `idres cert`.
pub fn cert(cmd: &CertCommand) -> Result<(), CliError> {
    match cmd {
        CertCommand::Ca { dir, name } => {
            std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            let ca = DevCa::generate(name)?;
            let PemPair { cert_pem, key_pem } = ca.pem();
            write(&dir.join("ca.pem"), &cert_pem)?;
            write_key(&dir.join("ca-key.pem"), &key_pem)?;
            println!("{}", dir.join("ca.pem").display());
        }
        CertCommand::Issue {
            dir,
            kind,
            name,
            sans,
        } => {
            let ca = DevCa::from_pem(&read(&dir.join("ca.pem"))?, &read(&dir.join("ca-key.pem"))?)?;
            let pair = match kind.as_str() {
                "server" => ca.issue_server(name, sans)?,
                "node" => ca.issue_node(name)?,
                "operator" => ca.issue_operator(name)?,
                other => {
                    return Err(CliError::Usage(format!(
                        "--kind {other}: use server, node or operator"
                    )))
                }
            };
            let file = name.replace(['/', ':'], "_");
            write(&dir.join(format!("{file}.pem")), &pair.cert_pem)?;
            write_key(&dir.join(format!("{file}-key.pem")), &pair.key_pem)?;
            println!("{}", dir.join(format!("{file}.pem")).display());
        }
    }
    Ok(())
}

/// Where and as whom `idres admin` connects.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The node's gRPC URL.
    #[arg(long, env = "IDRES_GRPC_URL", default_value = "https://127.0.0.1:2643")]
    pub server: String,
    /// CA of the node's server certificate.
    #[arg(long, env = "IDRES_GRPC_CA")]
    pub ca: Option<PathBuf>,
    /// The operator's certificate.
    #[arg(long, env = "IDRES_GRPC_CERT")]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, env = "IDRES_GRPC_KEY")]
    pub key: Option<PathBuf>,
    /// Caller name on a development plaintext node (`operator:<name>`).
    #[arg(long)]
    pub dev_peer: Option<String>,
    /// The call.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// An operator's call.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Files a node on its behalf.
    File(FileArgs),
    /// Approves a pending filing.
    Approve(Decision),
    /// Rejects a pending filing.
    Reject(Decision),
    /// Suspends an active node.
    Suspend(Decision),
    /// Reinstates a suspended node.
    Reinstate(Decision),
    /// Revokes a filing.
    Revoke(Decision),
    /// Allocates a prefix to an active node.
    Allocate {
        /// The filing id.
        filing: String,
        /// The prefix.
        prefix: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lists filings.
    Nodes {
        /// Only this state (pending, active, rejected, suspended, revoked).
        #[arg(long)]
        state: Option<String>,
    },
    /// Shows the audit trail.
    Audit {
        /// Only this filing.
        #[arg(long, default_value = "")]
        filing: String,
    },
    /// Binds a filing to a new client certificate.
    Rotate {
        /// The filing id.
        filing: String,
        /// The new certificate (PEM file).
        #[arg(long)]
        certificate: PathBuf,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lists allocated and homed prefixes.
    Prefixes {
        /// Only this filing's.
        #[arg(long, default_value = "")]
        filing: String,
    },
}

/// A decision on a filing.
#[derive(Debug, Args)]
pub struct Decision {
    /// The filing id.
    pub id: String,
    /// Why (required).
    #[arg(long)]
    pub reason: String,
}

/// A filing made by an operator.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// Organisation name.
    #[arg(long)]
    pub organisation: String,
    /// Unified social credit code.
    #[arg(long)]
    pub credit_code: String,
    /// Contact name.
    #[arg(long)]
    pub contact_name: String,
    /// Contact phone.
    #[arg(long, default_value = "")]
    pub contact_phone: String,
    /// Contact e-mail.
    #[arg(long, default_value = "")]
    pub contact_email: String,
    /// Industry.
    #[arg(long)]
    pub industry: String,
    /// Handle service address host:port (repeatable).
    #[arg(long = "service-address", required = true)]
    pub service_addresses: Vec<std::net::SocketAddr>,
    /// The node's client certificate (PEM file).
    #[arg(long)]
    pub certificate: PathBuf,
}

fn state_name(s: i32) -> &'static str {
    match FilingState::try_from(s).unwrap_or(FilingState::Unspecified) {
        FilingState::Unspecified => "-",
        FilingState::Pending => "pending",
        FilingState::Active => "active",
        FilingState::Rejected => "rejected",
        FilingState::Suspended => "suspended",
        FilingState::Revoked => "revoked",
    }
}

fn print_filing(f: &pb::Filing) {
    let app = f.application.clone().unwrap_or_default();
    println!(
        "{}\t{}\t{}\t{}\tcert={}\tprefixes={}\treason={}",
        f.id,
        state_name(f.state),
        app.organisation,
        app.credit_code,
        f.certificate_sha256.get(..16).unwrap_or(""),
        f.prefixes.join(","),
        f.reason
    );
}

/// Runs `idres admin`.
pub async fn admin(args: &AdminArgs) -> Result<(), CliError> {
    let tls = match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => Some(ClientTlsPem::read(ca, cert, key)?),
        (None, None, None) => None,
        _ => {
            return Err(CliError::Usage(
                "give --ca, --cert and --key together".into(),
            ))
        }
    };
    if tls.is_none() && args.server.starts_with("https://") {
        return Err(CliError::Usage(
            "an https node needs --ca, --cert and --key (an operator certificate)".into(),
        ));
    }
    let up = Upstream {
        url: args.server.clone(),
        tls,
        dev_peer: args.dev_peer.clone(),
    };
    let mut c = NodeServiceClient::new(up.channel().await?);
    let decide = |d: &Decision| {
        up.request(pb::TransitionRequest {
            id: d.id.clone(),
            reason: d.reason.clone(),
        })
    };
    match &args.command {
        AdminCommand::File(f) => {
            let req = pb::FileRequest {
                organisation: f.organisation.clone(),
                credit_code: f.credit_code.clone(),
                contact: Some(pb::Contact {
                    name: f.contact_name.clone(),
                    phone: f.contact_phone.clone(),
                    email: f.contact_email.clone(),
                }),
                industry: f.industry.clone(),
                service_addresses: f
                    .service_addresses
                    .iter()
                    .map(|a| pb::ServiceAddress {
                        host: a.ip().to_string(),
                        port: u32::from(a.port()),
                    })
                    .collect(),
                certificate_pem: read(&f.certificate)?,
                postal_address: String::new(),
            };
            print_filing(&c.file(up.request(req)).await?.into_inner());
        }
        AdminCommand::Approve(d) => print_filing(&c.approve(decide(d)).await?.into_inner()),
        AdminCommand::Reject(d) => print_filing(&c.reject(decide(d)).await?.into_inner()),
        AdminCommand::Suspend(d) => print_filing(&c.suspend(decide(d)).await?.into_inner()),
        AdminCommand::Reinstate(d) => print_filing(&c.reinstate(decide(d)).await?.into_inner()),
        AdminCommand::Revoke(d) => print_filing(&c.revoke(decide(d)).await?.into_inner()),
        AdminCommand::Allocate {
            filing,
            prefix,
            reason,
        } => {
            let a = c
                .allocate(up.request(pb::AllocateRequest {
                    filing_id: filing.clone(),
                    prefix: prefix.clone(),
                    reason: reason.clone(),
                }))
                .await?
                .into_inner();
            println!("{}\t{}\tseq={}", a.prefix, a.filing_id, a.seq);
        }
        AdminCommand::Nodes { state } => {
            let state = match state.as_deref() {
                None => FilingState::Unspecified,
                Some(s) => {
                    FilingState::from_str_name(&format!("FILING_STATE_{}", s.to_uppercase()))
                        .ok_or_else(|| CliError::Usage(format!("unknown state {s}")))?
                }
            };
            let mut token = String::new();
            loop {
                let page = c
                    .list_nodes(up.request(pb::ListNodesRequest {
                        state: state as i32,
                        page_size: 500,
                        page_token: token,
                    }))
                    .await?
                    .into_inner();
                page.filings.iter().for_each(print_filing);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        AdminCommand::Audit { filing } => {
            let mut token = String::new();
            loop {
                let page = c
                    .list_audit(up.request(pb::ListAuditRequest {
                        filing_id: filing.clone(),
                        page_size: 500,
                        page_token: token,
                    }))
                    .await?
                    .into_inner();
                for e in &page.events {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}->{}\t{}\t{}",
                        e.seq,
                        e.time,
                        e.actor,
                        e.action,
                        e.filing_id,
                        state_name(e.from_state),
                        state_name(e.to_state),
                        e.prefix,
                        e.reason
                    );
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        AdminCommand::Rotate {
            filing,
            certificate,
            reason,
        } => {
            let f = c
                .rotate_certificate(up.request(pb::RotateCertificateRequest {
                    id: filing.clone(),
                    certificate_pem: read(certificate)?,
                    reason: reason.clone(),
                }))
                .await?
                .into_inner();
            print_filing(&f);
        }
        AdminCommand::Prefixes { filing } => {
            let r = c
                .list_prefixes(up.request(pb::ListPrefixesRequest {
                    filing_id: filing.clone(),
                }))
                .await?
                .into_inner();
            for a in r.prefixes {
                println!("{}\t{}\tparent={}", a.prefix, a.filing_id, a.parent);
            }
        }
    }
    Ok(())
}
