//! The `idres` command: run a node, import and export records, resolve
//! handles, and generate load.

#![forbid(unsafe_code)]

mod batch;
mod bench;
mod check;
mod config;
mod control;
mod handle_cli;
mod http;
mod observe;
mod records;
mod serve;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use idres_model::json;
use idres_wire::{Reply, ResponseCode};

// A resolver holds millions of small cached records and frees many small
// buffers per second; mimalloc keeps that compact and returns freed memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A top-level node of the industrial internet identifier resolution system.
#[derive(Debug, Parser)]
#[command(name = "idres", version, about)]
struct Cli {
    /// Log lines as text or as JSON objects (one per line, for log
    /// collectors); logs go to standard error, filtered by `IDRES_LOG`.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDRES_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .flatten_event(true)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node.
    Serve(serve::ServeArgs),
    /// Import records from a JSON Lines file.
    Import(records::ImportArgs),
    /// Export every record as JSON Lines.
    Export(records::ExportArgs),
    /// Write a consistent point-in-time backup of everything the store
    /// holds, from the running node (or from a stopped node's directory).
    Backup(control::BackupArgs),
    /// Build a new store from a backup: same records, sequence numbers,
    /// change log, filings, cursors.
    Restore(control::RestoreArgs),
    /// Resolve an identifier of any scheme (handle, OID, GTIN, Digital
    /// Link, EPC URN, Ecode, NIoT, CID) over the Handle protocol and print
    /// the record as JSON, with the scheme it was read as.
    Resolve(ResolveArgs),
    /// Say how the node reads identifiers (scheme, form, canonical form,
    /// link levels, GS1 element string) or why it refuses them; one JSON
    /// line per identifier.
    ParseId(ParseIdArgs),
    /// Development certificates for the gRPC face (a CA, servers, nodes,
    /// operators).
    #[command(subcommand)]
    Cert(idres_grpc::cli::CertCommand),
    /// Operator calls to a node's gRPC face: file, approve, reject,
    /// suspend, reinstate, revoke, allocate, nodes, audit, prefixes.
    Admin(idres_grpc::cli::AdminArgs),
    /// Make an identity the first administrator of a prefix (on a stopped
    /// node): prefix record, administrators' group, hashed secret key.
    InitPrefix(http::InitPrefixArgs),
    /// Administer identifiers over the native Handle protocol:
    /// create, add, modify, remove, delete, list, batch.
    Handle(handle_cli::HandleArgs),
    /// Make a node key (PEM, mode 0600) for `serve --node-key`: advertised
    /// in HS_SITE, it signs replies to certified requests.
    Keygen(KeygenArgs),
    /// Check a configuration file as `serve` would, without serving:
    /// prints each fault and exits non-zero if there is any.
    CheckConfig(check::CheckArgs),
    /// Generate load and measure.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// rsa (2048 bits, signs with SHA-256) or sm2 (signs with SM3).
    #[arg(long, default_value = "rsa")]
    algorithm: idres_auth::KeyAlgorithm,
    /// Where to write the private key; an existing file is never replaced.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Also write the public key (PEM SubjectPublicKeyInfo) here.
    #[arg(long)]
    public_out: Option<std::path::PathBuf>,
}

fn keygen(a: &KeygenArgs) -> anyhow::Result<()> {
    let key = idres_auth::NodeKey::generate(a.algorithm).map_err(anyhow::Error::msg)?;
    key.write(&a.out)?;
    if let Some(p) = &a.public_out {
        std::fs::write(p, key.public_key_pem())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
    }
    eprintln!(
        "wrote a new {} node key to {} (mode 0600)",
        key.algorithm_name(),
        a.out.display()
    );
    Ok(())
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Resolve handles over UDP as fast as asked and report QPS and latency.
    Resolve(bench::BenchResolveArgs),
    /// Register identifiers over gRPC client streams; report identifiers/s.
    GrpcRegister(idres_grpc::bench::RegisterArgs),
    /// Unary gRPC Resolve under load; report latency percentiles.
    GrpcResolve(idres_grpc::bench::ResolveArgs),
    /// A fresh mirror catching up over gRPC; report changes/s.
    GrpcMirror(idres_grpc::bench::MirrorArgs),
    /// Authenticated creates over the native protocol; report creates/s.
    Admin(bench::BenchAdminArgs),
}

#[derive(Debug, clap::Args)]
struct ResolveArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:2641")]
    server: SocketAddr,
    /// Use TCP instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// Only values of this type (repeatable).
    #[arg(long = "type")]
    types: Vec<String>,
    /// Only the value at this index (repeatable).
    #[arg(long = "index")]
    indexes: Vec<u32>,
    /// The node's configuration, for its `[schemes]`.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The identifier.
    handle: String,
}

#[derive(Debug, clap::Args)]
struct ParseIdArgs {
    /// The node's configuration, for its `[schemes]`.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Also read identifiers from standard input, one per line.
    #[arg(long)]
    stdin: bool,
    /// Identifiers.
    ids: Vec<String>,
}

fn schemes_of(path: Option<&std::path::Path>) -> anyhow::Result<idres_schemes::Schemes> {
    match path {
        Some(p) => config::Config::load(p)?.schemes(),
        None => Ok(idres_schemes::Schemes::default()),
    }
}

fn parse_ids(args: &ParseIdArgs) -> anyhow::Result<ExitCode> {
    use std::io::BufRead as _;
    let schemes = schemes_of(args.config.as_deref())?;
    let mut ids = args.ids.clone();
    if args.stdin {
        for line in std::io::stdin().lock().lines() {
            ids.push(line?);
        }
    }
    let mut all_ok = true;
    let mut out = std::io::stdout().lock();
    for id in &ids {
        let v = match schemes.recognise(id) {
            Ok(r) => {
                let es = r.gs1.as_ref().map(|g| {
                    let mut all = g.key.clone();
                    all.0.extend(g.attributes.0.iter().cloned());
                    all.to_caret(schemes.gs1().dictionary())
                });
                serde_json::json!({"id": id, "ok": true, "scheme": r.scheme, "form": r.form,
                    "canonical": r.canonical,
                    "levels": r.levels.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
                    "element_string": es})
            }
            Err(e) => {
                all_ok = false;
                serde_json::json!({"id": id, "ok": false, "error": e.to_string()})
            }
        };
        std::io::Write::write_all(&mut out, format!("{v}\n").as_bytes())?;
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn resolve(args: &ResolveArgs) -> anyhow::Result<ExitCode> {
    let types: Vec<&str> = args.types.iter().map(String::as_str).collect();
    let schemes = schemes_of(args.config.as_deref())?;
    let read = match schemes.recognise(&args.handle) {
        Ok(r) => r,
        Err(e) => {
            let out = serde_json::json!({"id": args.handle, "error": e.to_string()});
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(ExitCode::from(1));
        }
    };
    // A handle is sent as written; any other scheme in its linked form.
    let sent = match read.scheme.as_str() {
        "handle" => args.handle.clone(),
        "oid" => format!("oid:{}", read.canonical.trim_start_matches("oid:")),
        _ => read.canonical.clone(),
    };
    eprintln!("read as {} ({}): {sent}", read.scheme, read.form);
    let reply =
        idres_service::client::resolve(args.server, &sent, &args.indexes, &types, args.tcp)?;
    let rc = reply.response_code;
    let out = match reply.reply {
        Reply::Resolution { handle, values } => serde_json::json!({
            "responseCode": rc.0, "handle": handle, "id": args.handle, "scheme": read.scheme,
            "form": read.form, "values": json::values_to_json(&values)}),
        Reply::Referral {
            service_handle,
            values,
        } => serde_json::json!({
            "responseCode": rc.0, "handle": args.handle, "referral": service_handle,
            "values": json::values_to_json(&values)}),
        Reply::Error(message) => serde_json::json!({
            "responseCode": rc.0, "handle": args.handle, "message": message,
            "error": rc.name().unwrap_or("UNKNOWN")}),
        other => serde_json::json!({"responseCode": rc.0, "reply": format!("{other:?}")}),
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if rc == ResponseCode::SUCCESS {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs a gRPC load generator on a multi-threaded runtime.
fn grpc_bench(
    f: impl std::future::Future<Output = Result<(), idres_grpc::cli::CliError>>,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(f)?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match &cli.command {
        Command::Serve(a) => serve::run(a).map(|()| ExitCode::SUCCESS),
        Command::Import(a) => records::import(a).map(|()| ExitCode::SUCCESS),
        Command::Export(a) => records::export(a).map(|()| ExitCode::SUCCESS),
        Command::Backup(a) => control::backup(a).map(|()| ExitCode::SUCCESS),
        Command::Restore(a) => control::restore(a).map(|()| ExitCode::SUCCESS),
        Command::Resolve(a) => resolve(a),
        Command::ParseId(a) => parse_ids(a),
        Command::Cert(c) => idres_grpc::cli::cert(c)
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::Admin(a) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(idres_grpc::cli::admin(a))
                    .map_err(anyhow::Error::from)
            })
            .map(|()| ExitCode::SUCCESS),
        Command::InitPrefix(a) => http::init_prefix(a).map(|()| ExitCode::SUCCESS),
        Command::Keygen(a) => keygen(a).map(|()| ExitCode::SUCCESS),
        Command::CheckConfig(a) => Ok(check::run(a)),
        Command::Handle(a) => handle_cli::run(a),
        Command::Bench(BenchCommand::Resolve(a)) => bench::run(a).map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::Admin(a)) => bench::admin(a).map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::GrpcRegister(a)) => grpc_bench(idres_grpc::bench::register(a)),
        Command::Bench(BenchCommand::GrpcResolve(a)) => grpc_bench(idres_grpc::bench::resolve(a)),
        Command::Bench(BenchCommand::GrpcMirror(a)) => grpc_bench(idres_grpc::bench::mirror(a)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
