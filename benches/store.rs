//! Store reads: through the in-memory record cache, and straight from sled
//! (cache disabled), over 100,000 records; and the whole request path of
//! the Handle handler without sockets.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use idres_benches::product_values;
use idres_model::{Handle, SiteInfo};
use idres_service::client::encode_request;
use idres_service::{Handler, NodeIdentity};
use idres_store::{Mutation, SledConfig, SledStore, Store, WriteRequest};
use idres_wire::Request;

const N: u32 = 100_000;

fn key(i: u32) -> String {
    format!("88.118.{}/P{i:07}", i % 100)
}

fn fill(dir: &std::path::Path) {
    let store = SledStore::open(SledConfig {
        read_cache_bytes: 0,
        ..SledConfig::new(dir)
    })
    .unwrap();
    for chunk in (0..N).collect::<Vec<_>>().chunks(5_000) {
        let mutations = chunk
            .iter()
            .map(|i| Mutation::Put {
                handle: Handle::parse(&key(*i)).unwrap(),
                values: product_values(*i),
            })
            .collect();
        store
            .write(WriteRequest {
                mutations,
                idempotency_key: None,
            })
            .unwrap()
            .unwrap();
    }
    store.close().unwrap();
}

fn open(dir: &std::path::Path, cache: usize) -> SledStore {
    let store = SledStore::open(SledConfig {
        read_cache_bytes: cache,
        ..SledConfig::new(dir)
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cache > 0 && !store.cache_complete() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    store
}

fn store_reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let keys: Vec<String> = (0..N).map(key).collect();
    let mut g = c.benchmark_group("store_get");
    g.throughput(Throughput::Elements(1));
    for (name, cache) in [("cached", 256usize << 20), ("sled", 0)] {
        let store = open(dir.path(), cache);
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                black_box(store.get(&keys[i]).unwrap().unwrap());
            })
        });
        store.close().unwrap();
    }
    g.finish();

    let store: Arc<dyn Store> = Arc::new(open(dir.path(), 256 << 20));
    let handler = Handler::new(
        store,
        NodeIdentity {
            site: SiteInfo::single("127.0.0.1:2641".parse().unwrap(), "bench"),
            service_handles: vec![],
        },
    );
    let requests: Vec<Vec<u8>> = keys
        .iter()
        .take(10_000)
        .map(|k| {
            encode_request(
                &Request::Resolution {
                    handle: k,
                    indexes: vec![],
                    types: vec![],
                },
                1,
                0,
            )
        })
        .collect();
    let mut out = BytesMut::with_capacity(4096);
    let mut i = 0usize;
    let mut g = c.benchmark_group("handler");
    g.throughput(Throughput::Elements(1));
    g.bench_function("resolve", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            out.clear();
            black_box(handler.handle(&requests[i], 1_767_225_600, &mut out));
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = store_reads
}
criterion_main!(benches);
