//! `idres handle`: administer identifiers over the native Handle protocol,
//! authenticating by challenge-response as an `index:handle` identity with
//! its secret key or private key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use idres_auth::challenge::Credential;
use idres_auth::{Identity, NodeKey};
use idres_model::{json, HandleValue};
use idres_service::admin_client::{AdminClient, AdminOutcome};
use idres_wire::{Reply, ResponseCode};

use crate::batch::{self, BatchOp};

/// Options of `idres handle`.
#[derive(Debug, clap::Args)]
pub struct HandleArgs {
    /// The Handle server (TCP).
    #[arg(long, default_value = "127.0.0.1:2641")]
    server: SocketAddr,
    /// The identity to act as, index:handle (such as 300:88.118.8/ADMIN).
    #[arg(long)]
    auth: Option<String>,
    /// The identity's private key (PEM: RSA or SM2).
    #[arg(long, conflicts_with = "secret_file")]
    key: Option<PathBuf>,
    /// A file holding the identity's secret key (one trailing newline is
    /// ignored).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Seconds to wait for the server.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: HandleCommand,
}

#[derive(Debug, clap::Subcommand)]
enum HandleCommand {
    /// Create a handle.
    Create {
        /// The handle (with --mint, its prefix).
        handle: String,
        #[command(flatten)]
        values: ValueArgs,
        /// Replace the handle if it exists.
        #[arg(long)]
        overwrite: bool,
        /// Let the server choose the suffix.
        #[arg(long)]
        mint: bool,
    },
    /// Add values to a handle.
    Add {
        /// The handle.
        handle: String,
        #[command(flatten)]
        values: ValueArgs,
    },
    /// Replace values of a handle, by index.
    Modify {
        /// The handle.
        handle: String,
        #[command(flatten)]
        values: ValueArgs,
    },
    /// Remove values of a handle, by index.
    Remove {
        /// The handle.
        handle: String,
        /// Index of a value to remove (repeatable).
        #[arg(long = "index", required = true)]
        indexes: Vec<u32>,
    },
    /// Delete a handle.
    Delete {
        /// The handle.
        handle: String,
    },
    /// List the handles of a prefix.
    List {
        /// The prefix (88.118.8) or its record (0.NA/88.118.8).
        prefix: String,
    },
    /// Run a Handle.Net batch file (CREATE, ADD, MODIFY, REMOVE, DELETE,
    /// AUTHENTICATE), printing each operation's result.
    Batch {
        /// The batch file.
        file: PathBuf,
        /// Stop at the first operation that fails (by default the batch
        /// goes on and the exit status tells whether all succeeded).
        #[arg(long)]
        stop_on_error: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ValueArgs {
    /// A value: "INDEX TYPE DATA" (UTF-8 data, default TTL and
    /// permissions), repeatable.
    #[arg(long = "value")]
    values: Vec<String>,
    /// Values as the JSON API writes them (a list of
    /// {"index","type","data",...}), inline or @FILE.
    #[arg(long)]
    json: Option<String>,
}

impl ValueArgs {
    fn values(&self) -> anyhow::Result<Vec<HandleValue>> {
        let now = idres_service::unix_now();
        let mut out = Vec::new();
        for v in &self.values {
            let mut parts = v.splitn(3, ' ');
            let (Some(i), Some(t), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
                bail!("--value {v:?}: write \"INDEX TYPE DATA\"");
            };
            let index: u32 = i
                .parse()
                .with_context(|| format!("--value {v:?}: {i:?} is not an index"))?;
            let mut value = HandleValue::new(index, t, d.to_owned());
            value.timestamp = now;
            out.push(value);
        }
        if let Some(j) = &self.json {
            let text = match j.strip_prefix('@') {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
                }
                None => j.clone(),
            };
            let parsed: serde_json::Value =
                serde_json::from_str(&text).context("--json is not JSON")?;
            out.extend(
                json::values_from_json(&parsed, now).map_err(|e| anyhow::anyhow!("--json: {e}"))?,
            );
        }
        if out.is_empty() {
            bail!("give the values with --value or --json");
        }
        Ok(out)
    }
}

fn read_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let mut s = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if s.last() == Some(&b'\n') {
        s.pop();
        if s.last() == Some(&b'\r') {
            s.pop();
        }
    }
    Ok(s)
}

fn load_key(path: &std::path::Path) -> anyhow::Result<Credential> {
    Ok(Credential::Key(NodeKey::load(path)?))
}

fn credential(args: &HandleArgs) -> anyhow::Result<Option<(Identity, Credential)>> {
    let Some(auth) = &args.auth else {
        return Ok(None);
    };
    let identity = Identity::parse(auth).map_err(|e| anyhow::anyhow!("--auth: {e}"))?;
    let cred = match (&args.key, &args.secret_file) {
        (Some(k), _) => load_key(k)?,
        (None, Some(s)) => Credential::Secret(read_secret(s)?),
        (None, None) => bail!("--auth needs --key FILE.pem or --secret-file FILE"),
    };
    Ok(Some((identity, cred)))
}

fn print_outcome(o: &AdminOutcome) {
    match &o.reply {
        Reply::HandleList(hs) => {
            for h in hs {
                println!("{h}");
            }
        }
        Reply::Created(h) => println!("created {h}"),
        _ => println!("{}", o.describe()),
    }
}

/// `idres handle …`.
pub fn run(args: &HandleArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    let given = credential(args)?;
    if let HandleCommand::Batch {
        file,
        stop_on_error,
    } = &args.command
    {
        return run_batch(args.server, given, file, *stop_on_error, timeout);
    }
    let Some((identity, cred)) = given else {
        bail!("administration needs --auth INDEX:HANDLE with --key or --secret-file");
    };
    let mut c = AdminClient::connect(args.server, identity, cred, timeout)
        .with_context(|| format!("connecting to {}", args.server))?;
    let outcome = match &args.command {
        HandleCommand::Create {
            handle,
            values,
            overwrite,
            mint,
        } => c.create(handle, values.values()?, *overwrite, *mint),
        HandleCommand::Add { handle, values } => c.add(handle, values.values()?),
        HandleCommand::Modify { handle, values } => c.modify(handle, values.values()?),
        HandleCommand::Remove { handle, indexes } => c.remove(handle, indexes.clone()),
        HandleCommand::Delete { handle } => c.delete(handle),
        HandleCommand::List { prefix } => c.list(prefix),
        HandleCommand::Batch { .. } => unreachable_batch(),
    }
    .with_context(|| format!("talking to {}", args.server))?;
    print_outcome(&outcome);
    Ok(if outcome.response_code == ResponseCode::SUCCESS {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn unreachable_batch() -> Result<AdminOutcome, idres_service::client::ClientError> {
    Err(idres_service::client::ClientError::Malformed(
        "batch is run apart".into(),
    ))
}

fn run_batch(
    server: SocketAddr,
    given: Option<(Identity, Credential)>,
    file: &std::path::Path,
    stop_on_error: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let base = file.parent().map(PathBuf::from).unwrap_or_default();
    let ops = batch::parse(&text, &base).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut client: Option<AdminClient> = None;
    let mut pending = given;
    let (mut ok, mut failed) = (0usize, 0usize);
    for (n, located) in ops.into_iter().enumerate() {
        let n = n + 1;
        let line = located.line;
        let result = match located.op {
            BatchOp::AuthSecret {
                index,
                handle,
                secret,
            } => {
                let identity = Identity::parse(&format!("{index}:{handle}"))
                    .map_err(|e| anyhow::anyhow!("line {line}: {e}"))?;
                pending = Some((identity, Credential::Secret(secret)));
                println!("==>INFO[{n}]: authenticate as {index}:{handle} (secret key)");
                continue;
            }
            BatchOp::AuthKey {
                index,
                handle,
                path,
            } => {
                let identity = Identity::parse(&format!("{index}:{handle}"))
                    .map_err(|e| anyhow::anyhow!("line {line}: {e}"))?;
                pending = Some((identity, load_key(&path)?));
                println!(
                    "==>INFO[{n}]: authenticate as {index}:{handle} (key {})",
                    path.display()
                );
                continue;
            }
            BatchOp::Unsupported(what) => {
                println!("==>INVALID[{n}]: line {line}: {what:?} is not run by this client");
                failed += 1;
                if stop_on_error {
                    break;
                }
                continue;
            }
            op => {
                if let Some((identity, cred)) = pending.take() {
                    match &mut client {
                        Some(c) => c.set_identity(identity, cred),
                        None => {
                            client = Some(
                                AdminClient::connect(server, identity, cred, timeout)
                                    .with_context(|| format!("connecting to {server}"))?,
                            )
                        }
                    }
                }
                let Some(c) = client.as_mut() else {
                    bail!("line {line}: AUTHENTICATE first, or give --auth");
                };
                let (what, outcome) = match op {
                    BatchOp::Create(h, v) => (format!("create {h}"), c.create(&h, v, false, false)),
                    BatchOp::Add(h, v) => (format!("add values to {h}"), c.add(&h, v)),
                    BatchOp::Modify(h, v) => (format!("modify values of {h}"), c.modify(&h, v)),
                    BatchOp::Remove(h, i) => (format!("remove values from {h}"), c.remove(&h, i)),
                    BatchOp::Delete(h) => (format!("delete {h}"), c.delete(&h)),
                    _ => continue,
                };
                (what, outcome)
            }
        };
        let (what, outcome) = result;
        match outcome {
            Ok(o) if o.response_code == ResponseCode::SUCCESS => {
                ok += 1;
                println!("==>SUCCESS[{n}]: {what}");
            }
            Ok(o) => {
                failed += 1;
                println!("==>FAILURE[{n}]: {what}: {}", o.describe());
                if stop_on_error {
                    break;
                }
            }
            Err(e) => {
                failed += 1;
                println!("==>FAILURE[{n}]: {what}: {e}");
                // The connection may be gone: open a new one next time.
                if let Some(c) = client.take() {
                    pending = Some((c.identity().clone(), c.credential().clone()));
                }
                if stop_on_error {
                    break;
                }
            }
        }
    }
    println!("{ok} succeeded, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
