//! The node's local control socket, and `idres backup` / `idres restore`.
//!
//! sled locks its directory, so a running node is backed up by the node
//! itself: `serve` listens on a Unix socket (`control.sock` in the data
//! directory, mode 0600, so only the node's own user may use it) and
//! answers `backup` with `ok` and the backup stream. `idres backup` writes
//! it to a file, checks the file whole and only then gives it its name.
//! With no node running, it opens the store itself.

use std::io::{BufRead as _, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use idres_store::backup::{self, Trailer};
use idres_store::SledStore;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use crate::config::Config;

/// Longest command line read from the socket.
const MAX_COMMAND: usize = 256;
/// Time a client has to send its command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket of a configuration.
pub fn socket_path(config: &Config) -> PathBuf {
    config
        .node
        .control_socket
        .clone()
        .unwrap_or_else(|| config.store.data_dir.join("control.sock"))
}

/// Listens on the control socket until `stop`.
pub fn start(
    path: &Path,
    store: Arc<SledStore>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // The store's lock is held by this process, so a socket file left
    // here is a dead node's.
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    let busy = Arc::new(AtomicBool::new(false));
    // Only the node's own user (or root) may ask: checked on each
    // connection from its peer credentials, so that the moment between
    // binding and restricting the file's mode is no opening.
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let path = path.to_path_buf();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((mut conn, _)) => {
                        let uid = conn.peer_cred().map(|c| c.uid());
                        if !matches!(uid, Ok(u) if u == owner || u == 0) {
                            tracing::warn!(peer_uid = ?uid, "control connection from another user refused");
                            let _ = conn.write_all(b"error: only the node's own user may use this socket\n").await;
                            continue;
                        }
                        let store = Arc::clone(&store);
                        let busy = Arc::clone(&busy);
                        tokio::spawn(async move {
                            if let Err(e) = serve_one(conn, store, busy).await {
                                tracing::warn!(error = %e, "control connection failed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

async fn serve_one(
    conn: tokio::net::UnixStream,
    store: Arc<SledStore>,
    busy: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut reader = tokio::io::BufReader::new(conn);
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        COMMAND_TIMEOUT,
        (&mut reader)
            .take(MAX_COMMAND as u64)
            .read_until(b'\n', &mut line),
    )
    .await;
    let mut conn = reader.into_inner();
    if !matches!(read, Ok(Ok(_))) || !line.ends_with(b"\n") {
        conn.write_all(b"error: send one command line\n").await?;
        return Ok(());
    }
    match std::str::from_utf8(&line).map(str::trim) {
        Ok("backup") => {}
        _ => {
            conn.write_all(b"error: unknown command (known: backup)\n")
                .await?;
            return Ok(());
        }
    }
    if busy.swap(true, Ordering::AcqRel) {
        conn.write_all(b"error: a backup is already running\n")
            .await?;
        return Ok(());
    }
    conn.write_all(b"ok\n").await?;
    let std_conn = conn.into_std()?;
    std_conn.set_nonblocking(false)?;
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(1 << 20, std_conn);
        store.backup(out, &mut |_| {}).map(|(_, t)| t)
    })
    .await;
    busy.store(false, Ordering::Release);
    match result {
        Ok(Ok(t)) => tracing::info!(
            records = t.records,
            last_seq = t.last_seq,
            redo = t.redo_ops,
            ms = started.elapsed().as_millis() as u64,
            "backup sent"
        ),
        Ok(Err(e)) => tracing::error!(error = %e, "backup failed"),
        Err(e) => tracing::error!(error = %e, "backup task failed"),
    }
    Ok(())
}

fn bytes_bar(total: Option<u64>, what: &str) -> ProgressBar {
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ({eta})"
    } else {
        "{prefix} [{elapsed_precise}] {spinner} {bytes} {bytes_per_sec}"
    };
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_owned());
    pb
}

/// Options of `idres backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Configuration file of the node (for its data directory and socket).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of the node's database.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The backup file to write (an existing file is never replaced).
    pub out: PathBuf,
}

/// Options of `idres restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// Directory of the new database (absent or empty).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Seed a mirror or secondary node of this upstream (its gRPC URL):
    /// it follows the change log from the backup's sequence number instead
    /// of starting with a snapshot.
    #[arg(long)]
    pub follow: Option<String>,
}

fn load_config(config: &Option<PathBuf>, data_dir: &Option<PathBuf>) -> anyhow::Result<Config> {
    let mut c = match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = data_dir {
        c.store.data_dir = d.clone();
    }
    Ok(c)
}

fn summary(what: &str, t: &Trailer, bytes: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "{what}: {} records, {} keys, last sequence number {}, {} bytes in {:.2} s ({:.0} records/s)",
        t.records,
        t.base_entries,
        t.last_seq,
        bytes,
        secs,
        t.records as f64 / secs
    );
}

/// `idres backup`.
pub fn backup(a: &BackupArgs) -> anyhow::Result<()> {
    let config = load_config(&a.config, &a.data_dir)?;
    if a.out.exists() {
        anyhow::bail!("{} exists; a backup never replaces a file", a.out.display());
    }
    let partial = a.out.with_extension("partial");
    let started = Instant::now();
    let written = match std::os::unix::net::UnixStream::connect(socket_path(&config)) {
        Ok(conn) => from_node(conn, &partial),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            offline(&config, &partial)
        }
        Err(e) => Err(anyhow::anyhow!(
            "connecting to the node's control socket {}: {e}",
            socket_path(&config).display()
        )),
    };
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let pb = bytes_bar(Some(bytes), "checking");
    let checked = backup::verify(&partial, &mut |o| pb.set_position(o));
    pb.finish_and_clear();
    let (_, t) = match checked {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(anyhow::anyhow!("the backup received is not good: {e}"));
        }
    };
    std::fs::rename(&partial, &a.out)
        .with_context(|| format!("naming the backup {}", a.out.display()))?;
    summary("backup", &t, bytes, started.elapsed());
    Ok(())
}

fn create_new(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // A backup holds every record, sealed secret keys among them.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn from_node(conn: std::os::unix::net::UnixStream, partial: &Path) -> anyhow::Result<u64> {
    let mut w = conn.try_clone()?;
    w.write_all(b"backup\n")?;
    let mut r = BufReader::with_capacity(1 << 20, conn);
    let mut status = String::new();
    r.read_line(&mut status)?;
    if status.trim() != "ok" {
        anyhow::bail!("the node refused: {}", status.trim());
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, create_new(partial)?);
    let pb = bytes_bar(None, "backup");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receiving the backup"),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
        pb.set_position(total);
    }
    out.into_inner()
        .map_err(|e| anyhow::anyhow!("writing the backup: {e}"))?
        .sync_all()?;
    pb.finish_and_clear();
    Ok(total)
}

fn offline(config: &Config, partial: &Path) -> anyhow::Result<u64> {
    let store = crate::serve::open_store(config, false)?;
    let file = create_new(partial)?;
    let pb = bytes_bar(None, "backup");
    let (out, _) = store
        .backup(std::io::BufWriter::with_capacity(1 << 20, file), &mut |b| {
            pb.set_position(b)
        })
        .context("taking the backup")?;
    let file = out
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing the backup: {e}"))?;
    file.sync_all()?;
    pb.finish_and_clear();
    store.close()?;
    Ok(file.metadata()?.len())
}

/// `idres restore`.
pub fn restore(a: &RestoreArgs) -> anyhow::Result<()> {
    let size = std::fs::metadata(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?
        .len();
    let started = Instant::now();
    let check = bytes_bar(Some(size), "checking");
    let load = bytes_bar(Some(size), "restoring");
    let follow = a.follow.clone();
    let extra = move |t: &Trailer| -> Vec<backup::AuxEntry> {
        follow
            .iter()
            .map(|url| idres_grpc::replica::seeded_cursor(url, t.last_seq))
            .collect()
    };
    let t = backup::restore_with(
        &a.file,
        &a.data_dir,
        &mut |phase, offset| {
            if phase == 0 {
                check.set_position(offset);
            } else {
                if !check.is_finished() {
                    check.finish_and_clear();
                }
                load.set_position(offset);
            }
        },
        &extra,
    );
    check.finish_and_clear();
    load.finish_and_clear();
    let t = t?;
    if let Some(url) = &a.follow {
        eprintln!("following {url} from sequence number {}", t.last_seq + 1);
    }
    summary("restore", &t, size, started.elapsed());
    if !a.data_dir.join("secrets.key").exists() {
        eprintln!(
            "note: copy the source node's secrets.key into {} (or set [node] secrets_key): the secret keys in the backup are sealed with it",
            a.data_dir.display()
        );
    }
    Ok(())
}
