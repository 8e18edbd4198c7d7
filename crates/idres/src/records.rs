//! `idres import` and `idres export`: records as JSON Lines.
//!
//! One record per line in the REST shape
//! `{"handle":"88.118.8/X","values":[{"index":1,"type":"URL","data":{"format":"string","value":"…"}}]}`;
//! an OID's record may be given as `{"oid":"1.2.156.3001.1","values":[…]}`.
//!
//! Import reads the file twice. The first pass checks every line and, if
//! any is bad, reports each bad line by number and stops before anything
//! is written. The second pass writes the records in large groups, each
//! applied atomically and flushed before it counts as imported; a record
//! that exists is replaced, so running the same import again is harmless.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use idres_model::{json, Handle, HandleValue};
use idres_store::{Mutation, Store, WriteRequest};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::serve::open_store;

/// Records per write request.
const CHUNK: usize = 256;
/// Write requests in flight at once, so that group commits can join them.
const IN_FLIGHT: usize = 64;
/// Bad lines listed before the rest are only counted.
const MAX_REPORTED: usize = 20;

/// Options of `idres import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Directory of the database (default: the configuration's, or
    /// `idres-data`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The node's configuration: its `[store]` and the `[schemes]` that
    /// decide link values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// MiB of page cache.
    #[arg(long, default_value_t = 64)]
    pub cache_mb: u64,
    /// The JSON Lines file.
    pub file: PathBuf,
}

/// Options of `idres export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Directory of the database.
    #[arg(long, default_value = "idres-data")]
    pub data_dir: PathBuf,
    /// Output file (standard output if absent).
    pub file: Option<PathBuf>,
}

/// Reads one line of the import format ([`json::record_from_line`]).
pub fn parse_record(line: &str, now: u32) -> Result<(Handle, Vec<HandleValue>), String> {
    json::record_from_line(line, now)
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_owned());
    pb
}

/// Checks every line; returns the number of records, or the bad lines.
fn check_file(path: &Path, now: u32) -> anyhow::Result<usize> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let pb = progress(size, "checking");
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    let (mut n, mut records, mut bad) = (0usize, 0usize, Vec::new());
    let mut bad_count = 0usize;
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("reading {} at line {}", path.display(), n + 1))?;
        if read == 0 {
            break;
        }
        n += 1;
        pb.inc(read as u64);
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match parse_record(text, now) {
            Ok(_) => records += 1,
            Err(e) => {
                bad_count += 1;
                if bad.len() < MAX_REPORTED {
                    bad.push(format!("line {n}: {e}"));
                }
            }
        }
    }
    pb.finish_and_clear();
    if bad_count > 0 {
        let more = bad_count.saturating_sub(bad.len());
        let mut msg = bad.join("\n");
        if more > 0 {
            msg.push_str(&format!("\n… and {more} more bad lines"));
        }
        bail!(
            "{bad_count} bad line(s) in {}; nothing was imported:\n{msg}",
            path.display()
        );
    }
    Ok(records)
}

/// Runs `idres import`.
pub fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let now = idres_service::unix_now();
    let started = Instant::now();
    let total = check_file(&args.file, now)?;
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    config.store.data_dir = args
        .data_dir
        .clone()
        .or_else(|| args.config.as_ref().map(|_| config.store.data_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("idres-data"));
    config.store.cache_mb = args.cache_mb;
    let store = open_store(&config, false)?;

    let file =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let pb = progress(size, "importing");
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (done_tx, done_rx) = mpsc::channel();
    let mut in_flight = 0usize;
    let mut imported = 0usize;
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut line = String::new();
    let wait_one = |in_flight: &mut usize, imported: &mut usize| -> anyhow::Result<()> {
        let (n, outcome): (usize, idres_store::WriteOutcome) =
            done_rx.recv().context("the store writer stopped")?;
        *in_flight -= 1;
        match outcome {
            Ok(Ok(_)) => *imported += n,
            Ok(Err(e)) => bail!("a record was refused: {e}"),
            Err(e) => bail!("storage failed: {e}"),
        }
        Ok(())
    };
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read > 0 {
            pb.inc(read as u64);
            let text = line.trim();
            if !text.is_empty() {
                let (handle, values) = parse_record(text, now)
                    .map_err(|e| anyhow::anyhow!("the file changed while importing: {e}"))?;
                chunk.push(Mutation::Put { handle, values });
            }
        }
        if chunk.len() >= CHUNK || (read == 0 && !chunk.is_empty()) {
            while in_flight >= IN_FLIGHT {
                wait_one(&mut in_flight, &mut imported)?;
            }
            let n = chunk.len();
            let tx = done_tx.clone();
            store.submit(
                WriteRequest {
                    mutations: std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)),
                    idempotency_key: None,
                },
                Box::new(move |outcome| {
                    let _ = tx.send((n, outcome));
                }),
            );
            in_flight += 1;
            let rate = imported as f64 / started.elapsed().as_secs_f64().max(1e-3);
            pb.set_message(format!("{imported} records, {rate:.0}/s"));
        }
        if read == 0 {
            break;
        }
    }
    while in_flight > 0 {
        wait_one(&mut in_flight, &mut imported)?;
    }
    pb.finish_and_clear();
    store.close()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {imported} of {total} records in {secs:.1} s ({:.0} records/s); {} handles stored",
        imported as f64 / secs.max(1e-3),
        store.handle_count()
    );
    Ok(())
}

/// Runs `idres export`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.store.data_dir = args.data_dir.clone();
    if !config.store.data_dir.exists() {
        bail!("no store at {}", config.store.data_dir.display());
    }
    let store = open_store(&config, false)?;
    let out: Box<dyn Write> = match &args.file {
        Some(p) => Box::new(File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let pb = ProgressBar::new(store.handle_count() as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "exporting [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut after: Option<String> = None;
    let mut count = 0u64;
    loop {
        let page = store.scan(after.as_deref(), 10_000)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        let last = last.clone();
        for (key, record) in &page {
            let values = record
                .values()
                .with_context(|| format!("decoding the stored record of {key}"))?;
            let line = serde_json::json!({"handle": key, "values": json::values_to_json(&values)});
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
            count += 1;
        }
        pb.inc(page.len() as u64);
        after = Some(last);
    }
    out.flush()?;
    pb.finish_and_clear();
    eprintln!("exported {count} records");
    Ok(())
}
