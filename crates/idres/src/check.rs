//! `idres check-config FILE`: everything `serve` would check before it
//! serves, without serving: the file parses with no unknown key, every
//! file it names is readable, certificates and keys parse and belong
//! together, CAs and CRLs parse, addresses and the role make sense, and
//! the data directory can be used. Each fault is printed; the exit status
//! is non-zero if there is any.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;

/// Options of `idres check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file.
    pub file: PathBuf,
}

fn readable(errors: &mut Vec<String>, what: &str, path: &Path) -> bool {
    match std::fs::File::open(path) {
        Ok(_) => true,
        Err(e) => {
            errors.push(format!("{what} {}: {e}", path.display()));
            false
        }
    }
}

fn directory_usable(errors: &mut Vec<String>, what: &str, dir: &Path) {
    let mut probe = dir;
    // The nearest existing ancestor must be a writable directory.
    loop {
        match std::fs::metadata(probe) {
            Ok(m) if m.is_dir() => {
                if m.permissions().readonly() {
                    errors.push(format!("{what} {}: not writable", probe.display()));
                }
                return;
            }
            Ok(_) => {
                errors.push(format!("{what} {}: not a directory", probe.display()));
                return;
            }
            Err(_) => match probe.parent() {
                Some(p) if !p.as_os_str().is_empty() => probe = p,
                _ => return,
            },
        }
    }
}

/// Every fault of a configuration, in words.
pub fn faults(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    // The node.
    let role = idres_grpc::Role::parse(&config.node.role);
    match role {
        None => errors.push(format!(
            "[node] role {:?}: use top, secondary or mirror",
            config.node.role
        )),
        Some(idres_grpc::Role::Top) => {}
        Some(r) => match &config.node.upstream {
            None => errors.push(format!("[node] the {} role needs upstream", r.as_str())),
            Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                errors.push(format!(
                    "[node] upstream {u:?} must start with https:// (or http:// in development)"
                ))
            }
            Some(_) => {}
        },
    }
    // Identifier schemes: the GS1 dictionary, Ecode table, NIoT rules and
    // configured schemes all compile.
    if let Err(e) = config.schemes() {
        errors.push(format!("{e:#}"));
    }
    if let Some(u) = &config.http.public_url {
        let rest = u
            .strip_prefix("https://")
            .or_else(|| u.strip_prefix("http://"));
        let ok = rest.is_some_and(|r| {
            !r.is_empty()
                && !r.contains(['?', '#', ' '])
                && r.split('/').next().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            errors.push(format!(
                "[http] public_url {u:?} must be an absolute http(s) URL without query, such as https://id.example.org"
            ));
        }
    }
    if let Some(k) = &config.node.key {
        if let Err(e) = idres_auth::NodeKey::load(k) {
            errors.push(format!("[node] key {}: {e}", k.display()));
        }
    }
    let secrets = config
        .node
        .secrets_key
        .clone()
        .unwrap_or_else(|| config.store.data_dir.join("secrets.key"));
    match std::fs::read(&secrets) {
        Ok(b) if b.len() != 32 => errors.push(format!(
            "[node] secrets_key {}: {} bytes, not 32",
            secrets.display(),
            b.len()
        )),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Made at the first start.
            if let Some(d) = secrets.parent() {
                directory_usable(&mut errors, "[node] secrets_key directory", d);
            }
        }
        Err(e) => errors.push(format!("[node] secrets_key {}: {e}", secrets.display())),
    }
    let socket = crate::control::socket_path(config);
    if socket.as_os_str().len() > 100 {
        errors.push(format!(
            "[node] control_socket {}: longer than a Unix socket path may be",
            socket.display()
        ));
    }
    // The store.
    directory_usable(&mut errors, "[store] data_dir", &config.store.data_dir);
    // The HTTP face.
    match config.http.tls() {
        Err(e) => errors.push(format!("{e:#}")),
        Ok(None) => {}
        Ok(Some(files)) => {
            let mut ok = readable(&mut errors, "[http] tls_cert", &files.cert);
            ok &= readable(&mut errors, "[http] tls_key", &files.key);
            if let Some(ca) = &files.client_ca {
                ok &= readable(&mut errors, "[http] client_ca", ca);
            }
            if ok {
                if let Err(e) = idres_http::tls::server_config(&files) {
                    errors.push(format!("[http] TLS: {e}"));
                }
            }
        }
    }
    // The DNS face.
    if config.dns.listen.is_some() || config.dns.doq_listen.is_some() {
        if let Err(e) = config.dns.validate() {
            errors.push(format!("[dns] {e}"));
        }
        if config.dns.doq_listen.is_some() {
            match (&config.dns.cert, &config.dns.key) {
                (Some(c), Some(k)) => {
                    if readable(&mut errors, "[dns] cert", c)
                        & readable(&mut errors, "[dns] key", k)
                    {
                        if let Err(e) = idres_dns::doq::check_files(c, k) {
                            errors.push(format!("[dns] DNS-over-QUIC TLS: {e}"));
                        }
                    }
                }
                _ => errors.push("[dns] doq_listen needs cert and key".into()),
            }
        }
    }
    // The gRPC face.
    let g = &config.grpc;
    if g.listen.is_some() && !g.dev_plaintext {
        let named = [
            ("cert", &g.cert),
            ("key", &g.key),
            ("client_ca", &g.client_ca),
            ("operator_ca", &g.operator_ca),
        ];
        let mut ok = true;
        for (what, p) in named {
            if let Some(p) = p {
                ok &= readable(&mut errors, &format!("[grpc] {what}"), p);
            }
        }
        for p in &g.client_crls {
            ok &= readable(&mut errors, "[grpc] client_crls", p);
        }
        if ok {
            if let Err(e) = idres_grpc::node::server_tls(g) {
                errors.push(format!("{e}"));
            }
        }
    }
    if g.dev_plaintext && g.listen.is_some_and(|a| !a.ip().is_loopback()) {
        errors.push("[grpc] dev_plaintext is allowed only on a loopback address".into());
    }
    if matches!(role, Some(r) if r != idres_grpc::Role::Top) {
        if let Some(u) = &config.node.upstream {
            if u.starts_with("https://") {
                match (&g.upstream_ca, &g.upstream_cert, &g.upstream_key) {
                    (Some(ca), Some(c), Some(k)) => {
                        let ok = readable(&mut errors, "[grpc] upstream_ca", ca)
                            & readable(&mut errors, "[grpc] upstream_cert", c)
                            & readable(&mut errors, "[grpc] upstream_key", k);
                        if ok {
                            match idres_grpc::tls::ClientTlsPem::read(ca, c, k)
                                .and_then(|t| t.check())
                            {
                                Ok(()) => {}
                                Err(e) => errors.push(format!("[grpc] upstream TLS: {e}")),
                            }
                        }
                    }
                    _ => errors.push(
                        "[grpc] an https upstream needs upstream_ca, upstream_cert and upstream_key"
                            .into(),
                    ),
                }
            }
        }
    }
    if !matches!(g.withdrawn_prefixes.as_str(), "" | "escrow" | "refuse") {
        errors.push(format!(
            "[grpc] withdrawn_prefixes = {:?}: use \"escrow\" or \"refuse\"",
            g.withdrawn_prefixes
        ));
    }
    // Certificates about to expire are worth a word, not a failure.
    for (face, path) in crate::observe::certificates(config) {
        if let Ok((subject, not_after)) = crate::observe::certificate_expiry(&path) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if not_after < now {
                errors.push(format!(
                    "{face} certificate {} ({subject}) has expired",
                    path.display()
                ));
            }
        }
    }
    errors
}

/// `idres check-config`.
pub fn run(a: &CheckArgs) -> ExitCode {
    let config = match Config::load(&a.file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let errors = faults(&config);
    if errors.is_empty() {
        println!("{}: ok", a.file.display());
        return ExitCode::SUCCESS;
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    eprintln!("{}: {} error(s)", a.file.display(), errors.len());
    ExitCode::from(1)
}
