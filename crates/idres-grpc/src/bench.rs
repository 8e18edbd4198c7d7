//! Load generators for the gRPC face (`idres bench grpc-register`,
//! `grpc-resolve`, `grpc-mirror`). They measure; nothing here asserts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use idres_store::{SledConfig, SledStore, Store};
use tokio::sync::watch;

use crate::cli::CliError;
use crate::pb::{
    self, registry_service_client::RegistryServiceClient,
    resolve_service_client::ResolveServiceClient,
};
use crate::replica::{FollowOptions, Upstream};
use crate::tls::ClientTlsPem;

/// Where and as whom to connect.
#[derive(Debug, Args)]
pub struct Conn {
    /// The node's gRPC URL.
    #[arg(long, default_value = "https://127.0.0.1:2643")]
    pub server: String,
    /// CA of the node's server certificate.
    #[arg(long)]
    pub ca: PathBuf,
    /// Client certificate.
    #[arg(long)]
    pub cert: PathBuf,
    /// Its key.
    #[arg(long)]
    pub key: PathBuf,
}

impl Conn {
    fn upstream(&self) -> Result<Upstream, CliError> {
        Ok(Upstream {
            url: self.server.clone(),
            tls: Some(ClientTlsPem::read(&self.ca, &self.cert, &self.key)?),
            dev_peer: None,
        })
    }
}

/// `idres bench grpc-register`: streaming registration.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    conn: Conn,
    /// Prefix to register under (allocated to the client's node).
    #[arg(long, default_value = "88.118.8")]
    prefix: String,
    /// Identifiers to register.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Concurrent streams (each on its own connection).
    #[arg(long, default_value_t = 4)]
    streams: u64,
    /// Suffix prefix, so that runs do not collide.
    #[arg(long, default_value = "B")]
    tag: String,
}

/// Runs the streaming-registration benchmark.
pub async fn register(a: &RegisterArgs) -> Result<(), CliError> {
    let up = a.conn.upstream()?;
    let per = a.count / a.streams.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..a.streams.max(1) {
        let ch = up.channel().await?;
        let prefix = a.prefix.clone();
        let tag = a.tag.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = RegistryServiceClient::new(ch);
            let ops = tokio_stream::iter((0..per).map(move |i| {
                let n = s * per + i;
                pb::Operation {
                    operation_id: format!("{tag}-{n}"),
                    kind: pb::OperationKind::Upsert as i32,
                    handle: format!("{prefix}/{tag}{n:09}"),
                    values: vec![pb::HandleValue {
                        index: 1,
                        r#type: "URL".into(),
                        data: format!("https://factory.example.cn/p/{n}").into_bytes(),
                        ..Default::default()
                    }],
                }
            }));
            c.register_stream(ops)
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    let mut applied = 0;
    let mut replayed = 0;
    let mut failed = 0;
    for t in tasks {
        let s = t.await.map_err(|e| CliError::Usage(e.to_string()))??;
        applied += s.applied;
        replayed += s.replayed;
        failed += s.failures.len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "grpc-register: {} identifiers in {secs:.2} s = {:.0} identifiers/s durable \
         (applied {applied}, replayed {replayed}, failed {failed}, {} streams)",
        applied + replayed,
        (applied + replayed) as f64 / secs,
        a.streams
    );
    Ok(())
}

/// `idres bench grpc-resolve`: unary Resolve latency under load.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    #[command(flatten)]
    conn: Conn,
    /// Handles `<prefix>/<tag><n:09>` for n below `--count` are asked for.
    #[arg(long, default_value = "88.118.8")]
    prefix: String,
    /// How many distinct handles exist.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Suffix prefix used when registering.
    #[arg(long, default_value = "B")]
    tag: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Connections shared by the requests.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Runs the Resolve latency benchmark.
pub async fn resolve(a: &ResolveArgs) -> Result<(), CliError> {
    let up = a.conn.upstream()?;
    let mut chans = Vec::new();
    for _ in 0..a.connections.max(1) {
        chans.push(up.channel().await?);
    }
    let stop_at = Instant::now() + Duration::from_secs(a.seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..a.concurrency.max(1) {
        let mut c = ResolveServiceClient::new(chans[(w % chans.len() as u64) as usize].clone());
        let prefix = a.prefix.clone();
        let tag = a.tag.clone();
        let count = a.count.max(1);
        let errors = Arc::clone(&errors);
        let mut h = histogram()?;
        tasks.push(tokio::spawn(async move {
            let mut x = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while Instant::now() < stop_at {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = x % count;
                let t = Instant::now();
                let r = c
                    .resolve(pb::ResolveRequest {
                        handle: format!("{prefix}/{tag}{n:09}"),
                        ..Default::default()
                    })
                    .await;
                let us = t.elapsed().as_micros() as u64;
                if r.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let _ = h.record(us.max(1));
            }
            h
        }));
    }
    let mut all = histogram()?;
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = all.add(h);
        }
    }
    let n = all.len();
    println!(
        "grpc-resolve: {n} requests in {} s = {:.0}/s, {} errors, {} in flight over {} connections; \
         latency p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
        a.seconds,
        n as f64 / a.seconds as f64,
        errors.load(Ordering::Relaxed),
        a.concurrency,
        a.connections,
        all.value_at_quantile(0.50),
        all.value_at_quantile(0.90),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999),
        all.max()
    );
    Ok(())
}

/// A latency histogram in microseconds, up to an hour.
fn histogram() -> Result<hdrhistogram::Histogram<u64>, CliError> {
    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// `idres bench grpc-mirror`: a fresh mirror catching up.
#[derive(Debug, Args)]
pub struct MirrorArgs {
    #[command(flatten)]
    conn: Conn,
    /// Directory of the fresh mirror's store (must not exist or be empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// Entries per sync batch.
    #[arg(long, default_value_t = 4096)]
    batch: u32,
    /// Ask for a snapshot instead of the change log.
    #[arg(long)]
    snapshot: bool,
    /// Only receive the stream, apply nothing: measures the source and the
    /// transport without the replica's store.
    #[arg(long)]
    receive_only: bool,
}

/// Runs the mirror catch-up benchmark.
pub async fn mirror(a: &MirrorArgs) -> Result<(), CliError> {
    let up = a.conn.upstream()?;
    if a.receive_only {
        let mut c = pb::sync_service_client::SyncServiceClient::new(up.channel().await?)
            .max_decoding_message_size(256 << 20);
        let start = Instant::now();
        let mut s = c
            .subscribe(up.request(pb::SubscribeRequest {
                from_seq: if a.snapshot { 0 } else { 1 },
                batch_size: a.batch,
                stop_when_caught_up: true,
                ..Default::default()
            }))
            .await?
            .into_inner();
        let (mut entries, mut bytes) = (0u64, 0u64);
        while let Some(b) = tokio_stream::StreamExt::next(&mut s).await {
            let b = b?;
            entries += b.entries.len() as u64;
            bytes += b.entries.iter().map(|e| e.values.len() as u64).sum::<u64>();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "grpc-mirror --receive-only: {entries} entries ({} MB of records) in {secs:.2} s = {:.0} entries/s{}",
            bytes >> 20,
            entries as f64 / secs,
            if a.snapshot { " (snapshot)" } else { "" }
        );
        return Ok(());
    }
    let store = Arc::new(
        SledStore::open(SledConfig::new(&a.data_dir))
            .map_err(|e| CliError::Usage(e.to_string()))?,
    );
    if a.snapshot {
        let c = pb::SubscribeRequest::default();
        store
            .write(idres_store::WriteRequest {
                mutations: vec![idres_store::Mutation::PutAux {
                    space: crate::replica::CURSORS.into(),
                    key: up.url.as_bytes().to_vec(),
                    value: prost::Message::encode_to_vec(&c),
                }],
                idempotency_key: None,
            })
            .map_err(|e| CliError::Usage(e.to_string()))?
            .map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let (_tx, rx) = watch::channel(false);
    let start = Instant::now();
    let st = crate::replica::follow(
        Arc::clone(&store) as Arc<dyn Store>,
        up,
        FollowOptions {
            prefixes: Vec::new(),
            batch_size: a.batch,
            stop_when_caught_up: true,
        },
        rx,
        None,
    )
    .await
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "grpc-mirror: caught up to sequence {} ({} entries, {} batches, {} handles) in {secs:.2} s = {:.0} changes/s{}",
        st.applied_seq,
        st.entries,
        st.batches,
        store.handle_count(),
        st.applied_seq as f64 / secs,
        if a.snapshot { " (snapshot)" } else { "" }
    );
    store.close().map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(())
}
