#![allow(clippy::unwrap_used)]
//! Change sync between a real top node and in-process replicas: catch-up,
//! resume after an interruption, and snapshots that also remove what the
//! source no longer has.

mod support;

use std::sync::Arc;

use idres_grpc::pb::{self, OperationKind};
use idres_grpc::replica::{follow, FollowOptions, FollowStatus, Upstream};
use idres_grpc::sync_service::digest;
use idres_grpc::Role;
use idres_model::{Handle, HandleValue};
use idres_store::{Mutation, SledStore, Store, WriteRequest};
use support::*;
use tokio::sync::watch;

async fn populated_top(pki: &Pki, n: usize) -> (Server, Clients) {
    let top = Server::start(pki, Role::Top).await;
    let mut opc = Clients::new(
        top.channel(pki, &pki.ca.issue_operator("alice").unwrap())
            .await,
    );
    let n1 = pki.ca.issue_node("node-1").unwrap();
    let mut node = Clients::new(top.channel(pki, &n1).await);
    active_node(&mut node, &mut opc, "88.118.8", 2641).await;
    active_node(
        &mut Clients::new(
            top.channel(pki, &pki.ca.issue_node("node-2").unwrap())
                .await,
        ),
        &mut opc,
        "88.200",
        2642,
    )
    .await;
    let ops: Vec<pb::Operation> = (0..n)
        .map(|i| {
            op(
                &format!("r{i}"),
                OperationKind::Upsert,
                &format!("88.118.8/{i:06}"),
                vec![url_value(1, &format!("https://factory.example.cn/{i}"))],
            )
        })
        .collect();
    node.registry
        .register_stream(tokio_stream::iter(ops))
        .await
        .unwrap();
    // Some updates and deletes, so the log is more than creations.
    let more: Vec<pb::Operation> = (0..n / 10)
        .map(|i| {
            if i % 2 == 0 {
                op(
                    &format!("d{i}"),
                    OperationKind::Delete,
                    &format!("88.118.8/{i:06}"),
                    vec![],
                )
            } else {
                op(
                    &format!("u{i}"),
                    OperationKind::Update,
                    &format!("88.118.8/{i:06}"),
                    vec![url_value(1, "https://moved.example.cn/")],
                )
            }
        })
        .collect();
    let s = node
        .registry
        .register_stream(tokio_stream::iter(more))
        .await
        .unwrap()
        .into_inner();
    assert!(s.failures.is_empty(), "{:?}", s.failures);
    (top, node)
}

fn mirror_upstream(pki: &Pki, top: &Server) -> Upstream {
    Upstream {
        url: top.url(),
        tls: Some(pki.client(&pki.ca.issue_operator("mirror").unwrap())),
        dev_peer: None,
    }
}

async fn catch_up(
    store: Arc<SledStore>,
    up: Upstream,
    prefixes: Vec<String>,
    batch: u32,
) -> FollowStatus {
    let (_tx, rx) = watch::channel(false);
    follow(
        store,
        up,
        FollowOptions {
            prefixes,
            batch_size: batch,
            stop_when_caught_up: true,
        },
        rx,
        None,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_mirror_catches_up_and_proves_it_with_digests() {
    let pki = Pki::new();
    let (top, node) = populated_top(&pki, 3000).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = open_store(dir.path());
    let st = catch_up(mirror.clone(), mirror_upstream(&pki, &top), vec![], 256).await;
    assert_eq!(st.applied_seq, top.store.last_seq());
    for p in ["", "88.118.8", "0.NA"] {
        let a = digest(&*top.store, p).unwrap();
        let b = digest(&*mirror, p).unwrap();
        assert_eq!((a.count, &a.sha256), (b.count, &b.sha256), "prefix {p:?}");
    }
    assert_eq!(digest(&*mirror, "88.118.8").unwrap().count, 3000 - 150);

    // The digest call over gRPC says the same.
    let mut c = Clients::new(
        top.channel(&pki, &pki.ca.issue_operator("bob").unwrap())
            .await,
    );
    let remote = c
        .sync
        .digest(pb::DigestRequest {
            prefix: "88.118.8".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(remote.sha256, digest(&*mirror, "88.118.8").unwrap().sha256);

    // New changes upstream arrive on the next catch-up; nothing twice.
    let mut reg = node.registry.clone();
    reg.register(op(
        "late",
        OperationKind::Create,
        "88.118.8/late",
        vec![url_value(1, "https://late")],
    ))
    .await
    .unwrap();
    let before = mirror.last_seq();
    catch_up(mirror.clone(), mirror_upstream(&pki, &top), vec![], 256).await;
    assert_eq!(mirror.last_seq(), before + 1);
    assert_eq!(
        digest(&*top.store, "").unwrap().sha256,
        digest(&*mirror, "").unwrap().sha256
    );
    top.stop().await;
}

#[tokio::test]
async fn an_interrupted_follower_resumes_without_gap() {
    let pki = Pki::new();
    let (top, _) = populated_top(&pki, 4000).await;
    let dir = tempfile::tempdir().unwrap();
    let replica = open_store(dir.path());
    let up = mirror_upstream(&pki, &top);
    // Stop the follower as soon as it has applied a few batches.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (status_tx, mut status_rx) = watch::channel(FollowStatus::default());
    let f = tokio::spawn(follow(
        replica.clone() as Arc<dyn Store>,
        up.clone(),
        FollowOptions {
            prefixes: vec![],
            batch_size: 64,
            stop_when_caught_up: false,
        },
        stop_rx,
        Some(status_tx),
    ));
    status_rx.wait_for(|s| s.batches >= 3).await.unwrap();
    stop_tx.send(true).unwrap();
    let partial = f.await.unwrap().unwrap();
    assert!(
        partial.applied_seq < top.store.last_seq(),
        "stopped mid-way"
    );
    assert_ne!(
        digest(&*top.store, "").unwrap().sha256,
        digest(&*replica, "").unwrap().sha256
    );
    catch_up(replica.clone(), up, vec![], 64).await;
    assert_eq!(
        digest(&*top.store, "").unwrap().sha256,
        digest(&*replica, "").unwrap().sha256
    );
    top.stop().await;
}

#[tokio::test]
async fn a_snapshot_brings_new_ranges_and_removes_what_the_source_lacks() {
    let pki = Pki::new();
    let (top, _) = populated_top(&pki, 2000).await;
    let dir = tempfile::tempdir().unwrap();
    let replica = open_store(dir.path());
    let up = mirror_upstream(&pki, &top);
    catch_up(replica.clone(), up.clone(), vec!["88.118.8".into()], 300).await;
    assert!(
        replica.get("0.NA/88.118.8").unwrap().is_none(),
        "filtered out"
    );
    // Local records the source does not have, in and around the range.
    let stale = |h: &str| Mutation::Put {
        handle: Handle::parse(h).unwrap(),
        values: vec![HandleValue::new(1, "URL", "https://stale")],
    };
    replica
        .write(WriteRequest {
            mutations: vec![
                stale("88.118.8/!first"),
                stale("88.118.8/000100x"),
                stale("88.118.8/zzz"),
                stale("88.118.8.5/a"),
                stale("77/keep"),
            ],
            idempotency_key: None,
        })
        .unwrap()
        .unwrap();
    // A new filter: the replica takes a snapshot of each range.
    catch_up(
        replica.clone(),
        up,
        vec!["0.NA".into(), "88.118.8".into()],
        300,
    )
    .await;
    for p in ["88.118.8", "0.NA"] {
        assert_eq!(
            digest(&*top.store, p).unwrap().sha256,
            digest(&*replica, p).unwrap().sha256,
            "{p}"
        );
    }
    assert!(
        replica.get("77/keep").unwrap().is_some(),
        "outside the filter, left alone"
    );
    assert!(replica.get("0.NA/88.200").unwrap().is_some());

    // Forced snapshot from sequence 0 over the stream API.
    let mut c = Clients::new(
        top.channel(&pki, &pki.ca.issue_operator("carol").unwrap())
            .await,
    );
    let mut s = c
        .sync
        .subscribe(pb::SubscribeRequest {
            from_seq: 0,
            prefixes: vec!["88.118.8".into()],
            batch_size: 500,
            stop_when_caught_up: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut snap = 0;
    let mut done = false;
    while let Some(b) = tokio_stream::StreamExt::next(&mut s).await {
        let b = b.unwrap();
        if let Some(pb::sync_batch::Phase::Snapshot(p)) = &b.phase {
            snap += b.entries.len();
            done |= p.done;
        }
    }
    assert!(done);
    assert_eq!(snap as u64, digest(&*top.store, "88.118.8").unwrap().count);
    top.stop().await;
}

#[tokio::test]
async fn a_replica_behind_a_trimmed_log_gets_a_snapshot() {
    let pki = Pki::new();
    let (top, mut node) = populated_top(&pki, 1500).await;
    let dir = tempfile::tempdir().unwrap();
    let replica = open_store(dir.path());
    let up = mirror_upstream(&pki, &top);
    catch_up(replica.clone(), up.clone(), vec![], 200).await;
    // While the replica is away the source deletes and changes records,
    // then trims its log past everything the replica saw.
    let mut ops = Vec::new();
    for i in 1000..1100 {
        ops.push(op(
            &format!("x{i}"),
            OperationKind::Delete,
            &format!("88.118.8/{i:06}"),
            vec![],
        ));
    }
    ops.push(op(
        "new",
        OperationKind::Create,
        "88.118.8/new",
        vec![url_value(1, "https://new")],
    ));
    let s = node
        .registry
        .register_stream(tokio_stream::iter(ops))
        .await
        .unwrap()
        .into_inner();
    assert!(s.failures.is_empty(), "{:?}", s.failures);
    let seen_by_replica = mirror_cursor(&replica, &up.url);
    let first = top.store.trim_changes(top.store.last_seq() - 5).unwrap();
    assert!(first > seen_by_replica);
    let st = catch_up(replica.clone(), up, vec![], 200).await;
    assert_eq!(st.applied_seq, top.store.last_seq());
    assert_eq!(
        digest(&*top.store, "").unwrap().sha256,
        digest(&*replica, "").unwrap().sha256
    );
    assert!(
        replica.get("88.118.8/001050").unwrap().is_none(),
        "deleted in the trimmed part"
    );
    top.stop().await;
}

fn mirror_cursor(store: &SledStore, url: &str) -> u64 {
    idres_grpc::replica::load_cursor(store, url, &[])
        .unwrap()
        .from_seq
}

#[tokio::test]
async fn sync_batches_stay_under_a_peers_default_message_limit() {
    // 60 records of about 100 kB: 6 MB of records, past the 4 MiB a
    // client decodes by default (the clients here keep tonic's default).
    let pki = Pki::new();
    let top = Server::start(&pki, Role::Top).await;
    let mut opc = Clients::new(
        top.channel(&pki, &pki.ca.issue_operator("alice").unwrap())
            .await,
    );
    let n1 = pki.ca.issue_node("node-1").unwrap();
    let mut node = Clients::new(top.channel(&pki, &n1).await);
    active_node(&mut node, &mut opc, "88.118.8", 2641).await;
    let big = "x".repeat(100_000);
    let ops: Vec<pb::Operation> = (0..60)
        .map(|i| {
            op(
                &format!("big{i}"),
                OperationKind::Upsert,
                &format!("88.118.8/BIG{i:03}"),
                vec![url_value(
                    1,
                    &format!("https://factory.example.cn/{i}/{big}"),
                )],
            )
        })
        .collect();
    for chunk in ops.chunks(20) {
        node.registry
            .register_stream(tokio_stream::iter(chunk.to_vec()))
            .await
            .unwrap();
    }
    for from_seq in [0, 1] {
        let mut s = opc
            .sync
            .subscribe(pb::SubscribeRequest {
                from_seq,
                prefixes: vec!["88.118.8".into()],
                batch_size: 4096,
                stop_when_caught_up: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (mut got, mut batches) = (std::collections::BTreeSet::new(), 0);
        while let Some(b) = tokio_stream::StreamExt::next(&mut s).await {
            let b = b.unwrap_or_else(|e| panic!("from_seq {from_seq}: a batch was refused: {e}"));
            batches += 1;
            for e in b.entries {
                if e.handle.contains("/BIG") {
                    got.insert(e.handle);
                }
            }
        }
        assert_eq!(got.len(), 60, "from_seq {from_seq}");
        assert!(batches >= 2, "from_seq {from_seq}: {batches} batches");
    }
    top.stop().await;
}
