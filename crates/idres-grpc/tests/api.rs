#![allow(clippy::unwrap_used)]
//! The gRPC API against a real tonic server on 127.0.0.1:0 over mutual
//! TLS with generated certificates.

mod support;

use std::sync::Arc;

use idres_grpc::certs::DevCa;
use idres_grpc::pb::{self, FilingState, OperationKind};
use idres_grpc::Role;
use idres_model::SiteInfo;
use idres_service::{Handler, NodeIdentity};
use idres_store::Store;
use idres_wire::{Reply, Request, ResponseCode};
use support::*;
use tonic::Code;

fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, text: &str) {
    let s = r.unwrap_err();
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(text),
        "{:?} does not say {text:?}",
        s.message()
    );
}

/// The TLS handshake refused the client's certificate with `alert`,
/// before any request was read.
fn assert_refused_in_handshake<T: std::fmt::Debug>(r: Result<T, tonic::Status>, alert: &str) {
    let s = r.unwrap_err();
    let mut why = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&s);
    while let Some(e) = source {
        why.push_str(&e.to_string());
        why.push_str("; ");
        source = e.source();
    }
    assert!(
        why.contains(&format!("received fatal alert: {alert}")),
        "{s:?}: {why:?} does not say the handshake was refused with {alert}"
    );
}

#[tokio::test]
async fn revoked_certificates_are_refused() {
    let mut pki = Pki::new();
    let revoked = pki.ca.issue_operator("mallory").unwrap();
    let kept = pki.ca.issue_operator("alice").unwrap();
    pki.crls = vec![pki.ca.revocation_list(&[&revoked.cert_pem], 1).unwrap()];
    let srv = Server::start(&pki, Role::Top).await;
    let mut bad = Clients::new(srv.channel(&pki, &revoked).await);
    assert_refused_in_handshake(
        bad.node.list_nodes(pb::ListNodesRequest::default()).await,
        "CertificateRevoked",
    );
    let mut good = Clients::new(srv.channel(&pki, &kept).await);
    good.node
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_status() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let dyn_store: Arc<dyn Store> = store.clone();
    let core = idres_grpc::Core::new(dyn_store, Role::Top).unwrap();
    let tls = idres_grpc::tls::ServerTls::new(&idres_grpc::tls::ServerTlsPem {
        cert_pem: pki.server.cert_pem.clone(),
        key_pem: pki.server.key_pem.clone(),
        client_ca_pem: pki.ca.cert_pem(),
        operator_ca_pem: None,
        crl_pems: Vec::new(),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = idres_metrics::Metrics::new();
    let reporting = idres_grpc::server::Reporting {
        metrics: Some(Arc::clone(&metrics)),
        health: None,
        limits: None,
        schemes: None,
    };
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(idres_grpc::server::serve_reporting(
        core,
        listener,
        idres_grpc::Security::MutualTls(tls),
        async move {
            let _ = rx.wait_for(|v| *v).await;
        },
        reporting,
    ));
    let operator = pki.ca.issue_operator("alice").unwrap();
    let ch = idres_grpc::tls::connect(
        &format!("https://127.0.0.1:{}", addr.port()),
        Some(&pki.client(&operator)),
    )
    .await
    .unwrap();
    let mut c = Clients::new(ch);
    let missing = c
        .resolve
        .resolve(pb::ResolveRequest {
            handle: "88.1/NOPE".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    c.node
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap();
    let text = metrics.encode_text();
    assert!(
        text.contains(
            "idres_requests_total{face=\"grpc\",op=\"/idres.v1.ResolveService/Resolve\",code=\"NOT_FOUND\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "idres_requests_total{face=\"grpc\",op=\"/idres.v1.NodeService/ListNodes\",code=\"OK\"} 1"
        ),
        "{text}"
    );
    let _ = stop.send(true);
    let _ = task.await;
}

#[tokio::test]
async fn refusals_say_why() {
    let pki = Pki::new();
    let srv = Server::start(&pki, Role::Top).await;
    let operator = pki.ca.issue_operator("alice").unwrap();
    let mut op = Clients::new(srv.channel(&pki, &operator).await);

    // A certificate from another CA.
    let stranger_ca = DevCa::generate("stranger").unwrap();
    let stranger = stranger_ca.issue_node("intruder").unwrap();
    let mut c = Clients::new(srv.channel(&pki, &stranger).await);
    assert_refused_in_handshake(c.node.file(application(2641)).await, "UnknownCA");
    let mut c = Clients::new(srv.channel(&pki, &stranger).await);
    assert_refused_in_handshake(
        c.resolve
            .resolve(pb::ResolveRequest {
                handle: "88/x".into(),
                ..Default::default()
            })
            .await,
        "UnknownCA",
    );
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(srv.channel(&pki, &stranger).await);
    assert_refused_in_handshake(
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await,
        "UnknownCA",
    );
    // An operator-looking certificate from another CA is no operator.
    let fake_op = stranger_ca.issue_operator("mallory").unwrap();
    let mut c = Clients::new(srv.channel(&pki, &fake_op).await);
    assert_refused_in_handshake(
        c.node.list_nodes(pb::ListNodesRequest::default()).await,
        "UnknownCA",
    );
    // No client certificate at all.
    let no_cert = idres_grpc::tls::connect(
        &srv.url(),
        Some(&idres_grpc::tls::ClientTlsPem {
            ca_pem: pki.ca.cert_pem(),
            cert_pem: String::new(),
            key_pem: String::new(),
            server_name: Some("localhost".into()),
        }),
    )
    .await;
    if let Ok(ch) = no_cert {
        let mut c = Clients::new(ch);
        assert_refused_in_handshake(
            c.resolve
                .resolve(pb::ResolveRequest {
                    handle: "88/x".into(),
                    ..Default::default()
                })
                .await,
            "CertificateRequired",
        );
    }

    // A node from our CA that has not filed.
    let n1 = pki.ca.issue_node("node-1").unwrap();
    let mut node1 = Clients::new(srv.channel(&pki, &n1).await);
    let reg = |id: &str, h: &str| {
        support::op(
            id,
            OperationKind::Upsert,
            h,
            vec![url_value(1, "https://example.cn/a")],
        )
    };
    assert_status(
        node1.registry.register(reg("a", "88.118.8/a")).await,
        Code::PermissionDenied,
        "not bound to any filing",
    );

    // Filed but pending.
    let f1 = node1
        .node
        .file(application(2641))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f1.state, FilingState::Pending as i32);
    assert_status(
        node1.registry.register(reg("a", "88.118.8/a")).await,
        Code::PermissionDenied,
        "pending",
    );
    // A node cannot approve itself.
    assert_status(
        node1
            .node
            .approve(pb::TransitionRequest {
                id: f1.id.clone(),
                reason: "me".into(),
            })
            .await,
        Code::PermissionDenied,
        "operator certificate",
    );
    // Filing twice with the same certificate.
    assert_status(
        node1.node.file(application(2641)).await,
        Code::AlreadyExists,
        "already bound",
    );

    op.node
        .approve(pb::TransitionRequest {
            id: f1.id.clone(),
            reason: "ok".into(),
        })
        .await
        .unwrap();
    op.node
        .allocate(pb::AllocateRequest {
            filing_id: f1.id.clone(),
            prefix: "88.118.8".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    node1
        .registry
        .register(reg("a", "88.118.8/a"))
        .await
        .unwrap();

    // A second node may not write under the first one's prefix.
    let n2 = pki.ca.issue_node("node-2").unwrap();
    let mut node2 = Clients::new(srv.channel(&pki, &n2).await);
    let f2 = active_node(&mut node2, &mut op, "88.200", 2642).await;
    assert_status(
        node2.registry.register(reg("b", "88.118.8/b")).await,
        Code::PermissionDenied,
        &format!("under prefix 88.118.8 of node {}, not of node {f2}", f1.id),
    );
    assert_status(
        node2.registry.register(reg("b", "99/b")).await,
        Code::PermissionDenied,
        "under no prefix",
    );
    assert_status(
        node2.registry.register(reg("c", "0.NA/88.200")).await,
        Code::PermissionDenied,
        "prefix record",
    );
    // Overlapping allocation.
    assert_status(
        op.node
            .allocate(pb::AllocateRequest {
                filing_id: f2.clone(),
                prefix: "88.118.8.1".into(),
                reason: String::new(),
            })
            .await,
        Code::AlreadyExists,
        "overlaps 88.118.8",
    );

    // Suspended, then revoked.
    op.node
        .suspend(pb::TransitionRequest {
            id: f1.id.clone(),
            reason: "unpaid fees".into(),
        })
        .await
        .unwrap();
    assert_status(
        node1.registry.register(reg("d", "88.118.8/d")).await,
        Code::PermissionDenied,
        "suspended: unpaid fees",
    );
    assert_status(
        node1
            .resolve
            .resolve(pb::ResolveRequest {
                handle: "88.118.8/a".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "suspended",
    );
    op.node
        .reinstate(pb::TransitionRequest {
            id: f1.id.clone(),
            reason: "paid".into(),
        })
        .await
        .unwrap();
    node1
        .registry
        .register(reg("d", "88.118.8/d"))
        .await
        .unwrap();
    op.node
        .revoke(pb::TransitionRequest {
            id: f1.id.clone(),
            reason: "left the industry".into(),
        })
        .await
        .unwrap();
    assert_status(
        node1.registry.register(reg("e", "88.118.8/e")).await,
        Code::PermissionDenied,
        "revoked: left the industry",
    );
    assert_status(
        op.node
            .approve(pb::TransitionRequest {
                id: f1.id.clone(),
                reason: "again".into(),
            })
            .await,
        Code::FailedPrecondition,
        "it is FILING_STATE_REVOKED",
    );
    srv.stop().await;
}

#[tokio::test]
async fn lifecycle_is_audited_and_input_is_checked() {
    let pki = Pki::new();
    let srv = Server::start(&pki, Role::Top).await;
    let mut op = Clients::new(
        srv.channel(&pki, &pki.ca.issue_operator("alice").unwrap())
            .await,
    );
    let n1 = pki.ca.issue_node("node-1").unwrap();
    let mut node = Clients::new(srv.channel(&pki, &n1).await);

    let mut bad = application(2641);
    bad.credit_code = "91350100M000100Y44".into();
    assert_status(
        node.node.file(bad).await,
        Code::InvalidArgument,
        "credit_code: check character",
    );
    let mut bad = application(2641);
    bad.service_addresses[0].host = "node.example".into();
    assert_status(
        node.node.file(bad).await,
        Code::InvalidArgument,
        "service_addresses[0].host",
    );
    let mut bad = application(2641);
    bad.contact = None;
    assert_status(
        node.node.file(bad).await,
        Code::InvalidArgument,
        "invalid contact",
    );
    // An operator filing for a node must give its certificate.
    assert_status(
        op.node.file(application(2641)).await,
        Code::InvalidArgument,
        "certificate_pem",
    );

    let id = active_node(&mut node, &mut op, "88.118.8", 2641).await;
    op.node
        .reject(pb::TransitionRequest {
            id: id.clone(),
            reason: "late".into(),
        })
        .await
        .unwrap_err();
    op.node
        .suspend(pb::TransitionRequest {
            id: id.clone(),
            reason: "audit".into(),
        })
        .await
        .unwrap();
    assert_status(
        op.node
            .suspend(pb::TransitionRequest {
                id: id.clone(),
                reason: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "reason",
    );
    op.node
        .reinstate(pb::TransitionRequest {
            id: id.clone(),
            reason: "audit passed".into(),
        })
        .await
        .unwrap();

    // An operator files a second node on its behalf; it is rejected.
    let n2 = pki.ca.issue_node("node-2").unwrap();
    let mut app = application(2642);
    app.certificate_pem = n2.cert_pem.clone();
    let f2 = op.node.file(app).await.unwrap().into_inner();
    op.node
        .reject(pb::TransitionRequest {
            id: f2.id.clone(),
            reason: "incomplete".into(),
        })
        .await
        .unwrap();
    let mut node2 = Clients::new(srv.channel(&pki, &n2).await);
    assert_status(
        node2.registry.register(op_upsert("x", "88.1/x")).await,
        Code::PermissionDenied,
        "rejected: incomplete",
    );

    let audit = op
        .node
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    let trail: Vec<(String, String, String)> = audit
        .events
        .iter()
        .map(|e| (e.action.clone(), e.filing_id.clone(), e.reason.clone()))
        .collect();
    let expect = [
        ("file", id.as_str(), ""),
        ("approve", &id, "documents checked"),
        ("allocate", &id, "first allocation"),
        ("suspend", &id, "audit"),
        ("reinstate", &id, "audit passed"),
        ("file", &f2.id, ""),
        ("reject", &f2.id, "incomplete"),
    ];
    assert_eq!(trail.len(), expect.len(), "{trail:?}");
    for (got, want) in trail.iter().zip(expect) {
        assert_eq!((got.0.as_str(), got.1.as_str(), got.2.as_str()), want);
    }
    assert!(audit.events.iter().all(|e| e.time > 0));
    assert_eq!(audit.events[1].actor, "operator:alice");
    assert_eq!(audit.events[0].actor, "unfiled:node-1");
    assert_eq!(audit.events[3].from_state, FilingState::Active as i32);
    assert_eq!(audit.events[3].to_state, FilingState::Suspended as i32);
    // Paginated, and per filing.
    let page = op
        .node
        .list_audit(pb::ListAuditRequest {
            filing_id: id.clone(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 2);
    let rest = op
        .node
        .list_audit(pb::ListAuditRequest {
            filing_id: id.clone(),
            page_size: 100,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.events.len(), 3);
    let active = op
        .node
        .list_nodes(pb::ListNodesRequest {
            state: FilingState::Active as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.filings.len(), 1);
    assert_eq!(active.filings[0].prefixes, ["88.118.8"]);

    // Invalid values name the field.
    let mut bad = op_upsert("v1", "88.118.8/v");
    bad.values[0].index = 0;
    assert_status(
        node.registry.register(bad).await,
        Code::InvalidArgument,
        "values[0].index",
    );
    let mut bad = op_upsert("v2", "88.118.8/v");
    bad.values.push(pb::HandleValue {
        index: 7,
        r#type: "HS_ADMIN".into(),
        data: vec![1],
        ..Default::default()
    });
    assert_status(
        node.registry.register(bad).await,
        Code::InvalidArgument,
        "invalid values",
    );
    assert_status(
        node.registry.register(op_upsert("", "88.118.8/v")).await,
        Code::InvalidArgument,
        "operation_id",
    );
    assert_status(
        node.registry.register(op_upsert("v3", "88.118.8")).await,
        Code::InvalidArgument,
        "invalid handle",
    );
    srv.stop().await;
}

fn op_upsert(id: &str, handle: &str) -> pb::Operation {
    op(
        id,
        OperationKind::Upsert,
        handle,
        vec![url_value(1, "https://example.cn/x")],
    )
}

#[tokio::test]
async fn registration_is_idempotent_and_survives_a_dropped_connection() {
    let pki = Pki::new();
    let srv = Server::start(&pki, Role::Top).await;
    let mut opc = Clients::new(
        srv.channel(&pki, &pki.ca.issue_operator("alice").unwrap())
            .await,
    );
    let n1 = pki.ca.issue_node("node-1").unwrap();
    let mut node = Clients::new(srv.channel(&pki, &n1).await);
    active_node(&mut node, &mut opc, "88.118.8", 2641).await;

    // Unary: create, replay, conflicts, update, delete.
    let r = node
        .registry
        .register(op(
            "c1",
            OperationKind::Create,
            "88.118.8/a",
            vec![url_value(1, "https://a")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.replayed);
    let again = node
        .registry
        .register(op(
            "c1",
            OperationKind::Create,
            "88.118.8/a",
            vec![url_value(1, "https://a")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.seq, r.seq);
    assert_status(
        node.registry
            .register(op(
                "c2",
                OperationKind::Create,
                "88.118.8/a",
                vec![url_value(1, "https://a")],
            ))
            .await,
        Code::AlreadyExists,
        "already exists",
    );
    assert_status(
        node.registry
            .register(op(
                "u1",
                OperationKind::Update,
                "88.118.8/missing",
                vec![url_value(1, "https://b")],
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    node.registry
        .register(op(
            "u2",
            OperationKind::Update,
            "88.118.8/a",
            vec![url_value(1, "https://b")],
        ))
        .await
        .unwrap();
    node.registry
        .register(op("d1", OperationKind::Delete, "88.118.8/a", vec![]))
        .await
        .unwrap();
    assert_status(
        node.resolve
            .resolve(pb::ResolveRequest {
                handle: "88.118.8/a".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "not found",
    );

    // Batch: each operation on its own.
    let batch = pb::RegisterBatchRequest {
        operations: vec![
            op(
                "b1",
                OperationKind::Create,
                "88.118.8/b1",
                vec![url_value(1, "https://b1")],
            ),
            op(
                "b2",
                OperationKind::Create,
                "99/b2",
                vec![url_value(1, "https://b2")],
            ),
            op(
                "b3",
                OperationKind::Create,
                "88.118.8/b3",
                vec![url_value(1, "https://b3")],
            ),
        ],
    };
    let res = node
        .registry
        .register_batch(batch)
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<i32> = res.iter().map(|r| r.code).collect();
    assert_eq!(codes, [0, Code::PermissionDenied as i32, 0]);
    assert_eq!(res[1].operation_id, "b2");

    // A stream cut off half-way, then sent again in full: every operation
    // is applied exactly once.
    let n = 3000;
    let ops: Vec<pb::Operation> = (0..n)
        .map(|i| {
            op(
                &format!("s{i}"),
                OperationKind::Upsert,
                &format!("88.118.8/s{i}"),
                vec![url_value(1, &format!("https://s/{i}"))],
            )
        })
        .collect();
    let before = srv.store.last_seq();
    {
        let ch = srv.channel(&pki, &n1).await;
        let mut reg = pb::registry_service_client::RegistryServiceClient::new(ch);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let call = tokio::spawn(async move {
            reg.register_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        for o in ops.iter().take(n / 2) {
            tx.send(o.clone()).await.unwrap();
        }
        // Wait until some of the first half is durable, then cut the
        // connection without ending the stream.
        while srv.store.last_seq() < before + 10 {
            tokio::task::yield_now().await;
        }
        call.abort();
        let _ = call.await;
    }
    let applied_before_retry = srv.store.last_seq() - before;
    assert!(applied_before_retry >= 10);
    let summary = node
        .registry
        .register_stream(tokio_stream::iter(ops.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.received, n as u64);
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(summary.applied + summary.replayed, n as u64);
    // What was durable before the retry (and anything still landing from
    // the cut stream) is replayed, not applied again.
    assert!(
        summary.replayed >= applied_before_retry,
        "{} < {applied_before_retry}",
        summary.replayed
    );
    // Exactly one change per handle.
    let changes = srv.store.changes(before + 1, 10 * n).unwrap();
    assert_eq!(changes.len(), n);
    let distinct: std::collections::HashSet<_> = changes.iter().map(|c| c.handle.clone()).collect();
    assert_eq!(distinct.len(), n);
    srv.stop().await;
}

#[tokio::test]
async fn resolve_batch_and_search_page_through_everything() {
    let pki = Pki::new();
    let srv = Server::start(&pki, Role::Top).await;
    let mut opc = Clients::new(
        srv.channel(&pki, &pki.ca.issue_operator("alice").unwrap())
            .await,
    );
    let n1 = pki.ca.issue_node("node-1").unwrap();
    let mut node = Clients::new(srv.channel(&pki, &n1).await);
    active_node(&mut node, &mut opc, "88.118.8", 2641).await;
    let n = 250;
    let ops: Vec<pb::Operation> = (0..n)
        .map(|i| {
            let site = if i % 5 == 0 {
                "factory.example.cn"
            } else {
                "other.example.org"
            };
            let mut email = pb::HandleValue {
                index: 2,
                r#type: "EMAIL".into(),
                data: b"qa@example.cn".to_vec(),
                ..Default::default()
            };
            email.permissions = 0x0C; // admin only
            op(
                &format!("r{i}"),
                OperationKind::Create,
                &format!("88.118.8/P{i:04}"),
                vec![url_value(1, &format!("https://{site}/p/{i}")), email],
            )
        })
        .collect();
    let s = node
        .registry
        .register_stream(tokio_stream::iter(ops))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.applied, n as u64);

    // The owner sees private values; another node only public ones.
    let rec = node
        .resolve
        .resolve(pb::ResolveRequest {
            handle: "88.118.8/P0001".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.values.len(), 2);
    let n2 = pki.ca.issue_node("node-2").unwrap();
    let mut other = Clients::new(srv.channel(&pki, &n2).await);
    active_node(&mut other, &mut opc, "88.200", 2642).await;
    let rec = other
        .resolve
        .resolve(pb::ResolveRequest {
            handle: "88.118.8/P0001".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.values.len(), 1);
    assert_eq!(rec.values[0].data, b"https://other.example.org/p/1");
    let rec = node
        .resolve
        .resolve(pb::ResolveRequest {
            handle: "88.118.8/P0001".into(),
            types: vec!["EMAIL".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.values.len(), 1);

    let batch = node
        .resolve
        .batch_resolve(pb::BatchResolveRequest {
            handles: vec![
                "88.118.8/P0002".into(),
                "88.118.8/nope".into(),
                "bad".into(),
            ],
            types: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = batch.results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [0, Code::NotFound as i32, Code::InvalidArgument as i32]
    );

    // By prefix, 100 at a time.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = node
            .resolve
            .search(pb::SearchRequest {
                query: Some(pb::search_request::Query::Prefix("88.118.8".into())),
                page_size: 100,
                page_token: token,
                with_records: false,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.hits.into_iter().map(|h| h.handle));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), n);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    // By value: every fifth handle has the factory URL.
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = node
            .resolve
            .search(pb::SearchRequest {
                query: Some(pb::search_request::Query::Value(pb::ValueQuery {
                    r#type: "URL".into(),
                    pattern: "*FACTORY.example.cn*".into(),
                })),
                page_size: 7,
                page_token: token,
                with_records: true,
            })
            .await
            .unwrap()
            .into_inner();
        for h in page.hits {
            assert!(h.record.is_some());
            found.push(h.handle);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    found.sort();
    found.dedup();
    assert_eq!(found.len(), n / 5);
    assert!(found.contains(&"88.118.8/P0005".to_owned()));

    // By change time: everything since the start, in change order.
    let changed = node
        .resolve
        .search(pb::SearchRequest {
            query: Some(pb::search_request::Query::Changed(pb::ChangedQuery {
                from_time: 1,
                to_time: 0,
            })),
            page_size: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(changed.hits.len() >= n);
    assert!(changed.hits.windows(2).all(|w| w[0].seq < w[1].seq));
    let future = node
        .resolve
        .search(pb::SearchRequest {
            query: Some(pb::search_request::Query::Changed(pb::ChangedQuery {
                from_time: u64::from(u32::MAX),
                to_time: 0,
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(future.hits.is_empty());
    // A token of one listing is refused by another.
    assert_status(
        node.resolve
            .search(pb::SearchRequest {
                query: Some(pb::search_request::Query::Prefix("88.118.8".into())),
                page_token: idres_grpc::page::encode("v", "x"),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    srv.stop().await;
}

/// Builds a Handle resolution request and runs it through a handler.
fn handle_resolve(handler: &Handler, handle: &str) -> (ResponseCode, Reply) {
    let req = idres_service::client::encode_request(
        &Request::Resolution {
            handle,
            indexes: vec![],
            types: vec![],
        },
        7,
        0,
    );
    let mut out = bytes::BytesMut::new();
    handler.handle(&req, idres_service::unix_now(), &mut out);
    let reply = idres_service::client::decode_reply(&out, 1).unwrap();
    (reply.response_code, reply.reply)
}

#[tokio::test]
async fn allocation_refers_handle_clients_to_the_secondary_node() {
    let pki = Pki::new();
    let top = Server::start(&pki, Role::Top).await;
    let mut opc = Clients::new(
        top.channel(&pki, &pki.ca.issue_operator("alice").unwrap())
            .await,
    );
    let n1 = pki.ca.issue_node("node-1").unwrap();
    let mut node = Clients::new(top.channel(&pki, &n1).await);
    // The secondary's Handle face answers at 127.0.0.1:26410.
    let secondary_addr: std::net::SocketAddr = "127.0.0.1:26410".parse().unwrap();
    let id = active_node(&mut node, &mut opc, "88.118.8", secondary_addr.port()).await;
    node.registry
        .register(op(
            "r1",
            OperationKind::Create,
            "88.118.8/JXDY2106023",
            vec![url_value(1, "https://factory.example.cn/JXDY2106023")],
        ))
        .await
        .unwrap();
    // A derived prefix the node homes itself.
    let homed = node
        .node
        .home(pb::HomeRequest {
            prefix: "88.118.8.1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(homed.parent, "88.118.8");
    assert_status(
        node.node
            .home(pb::HomeRequest {
                prefix: "88.119".into(),
            })
            .await,
        Code::PermissionDenied,
        "not derived",
    );

    // At the top node: a referral to the secondary's HS_SITE.
    let top_store: Arc<dyn Store> = top.store.clone();
    let top_handler = Handler::new(
        Arc::clone(&top_store),
        NodeIdentity {
            site: SiteInfo::single("127.0.0.1:2641".parse().unwrap(), "top"),
            service_handles: vec![],
        },
    );
    for h in ["88.118.8/JXDY2106023", "88.118.8.1/x"] {
        let (rc, reply) = handle_resolve(&top_handler, h);
        assert_eq!(rc, ResponseCode::SERVICE_REFERRAL, "{h}");
        let Reply::Referral { values, .. } = reply else {
            panic!("{reply:?}")
        };
        let site = values.iter().find(|v| v.value_type == "HS_SITE").unwrap();
        assert!(SiteInfo::decode(&site.data)
            .unwrap()
            .serves_at(secondary_addr));
    }

    // A secondary node follows the prefix table and its prefix, and
    // answers the handle itself.
    let sec_dir = tempfile::tempdir().unwrap();
    let sec_store = open_store(sec_dir.path());
    let up = idres_grpc::replica::Upstream {
        url: top.url(),
        tls: Some(pki.client(&n1)),
        dev_peer: None,
    };
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    idres_grpc::replica::follow(
        sec_store.clone(),
        up,
        idres_grpc::replica::FollowOptions {
            prefixes: vec!["0.NA".into(), "88.118.8".into()],
            batch_size: 100,
            stop_when_caught_up: true,
        },
        stop_rx,
        None,
    )
    .await
    .unwrap();
    let sec_dyn: Arc<dyn Store> = sec_store.clone();
    let sec_handler = Handler::new(
        sec_dyn,
        NodeIdentity {
            site: SiteInfo::single(secondary_addr, "secondary"),
            service_handles: vec![],
        },
    );
    let (rc, reply) = handle_resolve(&sec_handler, "88.118.8/JXDY2106023");
    assert_eq!(rc, ResponseCode::SUCCESS);
    let Reply::Resolution { values, .. } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        &values[0].data[..],
        b"https://factory.example.cn/JXDY2106023"
    );

    // A node may not follow other nodes' prefixes nor everything.
    let mut sync = node.sync.clone();
    assert_status(
        sync.subscribe(pb::SubscribeRequest {
            from_seq: 1,
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
        "may follow only",
    );
    assert_status(
        sync.subscribe(pb::SubscribeRequest {
            from_seq: 1,
            prefixes: vec!["88.200".into()],
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
        "not the prefix table",
    );

    // Unhoming removes the derived prefix's record; deallocation the rest.
    node.node
        .unhome(pb::HomeRequest {
            prefix: "88.118.8.1".into(),
        })
        .await
        .unwrap();
    assert!(top.store.get("0.NA/88.118.8.1").unwrap().is_none());
    opc.node
        .deallocate(pb::DeallocateRequest {
            prefix: "88.118.8".into(),
            reason: "moved".into(),
        })
        .await
        .unwrap();
    assert!(top.store.get("0.NA/88.118.8").unwrap().is_none());
    let audit = opc
        .node
        .list_audit(pb::ListAuditRequest {
            filing_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<&str> = audit.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "file",
            "approve",
            "allocate",
            "home",
            "unhome",
            "deallocate"
        ]
    );
    top.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let pki = Pki::new();
    let srv = Server::start(&pki, Role::Top).await;
    let ch = srv
        .channel(&pki, &pki.ca.issue_node("probe").unwrap())
        .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "idres.v1.RegistryService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = tokio_stream::StreamExt::next(&mut resp)
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!()
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "idres.v1.NodeService",
        "idres.v1.RegistryService",
        "idres.v1.ResolveService",
        "idres.v1.SyncService",
    ] {
        assert!(names.iter().any(|n| n == s), "{names:?}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_node_rotates_its_certificate() {
    let pki = Pki::new();
    let srv = Server::start(&pki, Role::Top).await;
    let mut opc = Clients::new(
        srv.channel(&pki, &pki.ca.issue_operator("alice").unwrap())
            .await,
    );
    let old = pki.ca.issue_node("node-1").unwrap();
    let mut node = Clients::new(srv.channel(&pki, &old).await);
    let id = active_node(&mut node, &mut opc, "88.118.8", 2641).await;
    let new = pki.ca.issue_node("node-1-2027").unwrap();
    let f = node
        .node
        .rotate_certificate(pb::RotateCertificateRequest {
            id: String::new(),
            certificate_pem: new.cert_pem.clone(),
            reason: "yearly rotation".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.id, id);
    assert_eq!(f.certificate_subject, "node-1-2027");
    // The old certificate no longer identifies the node; the new one does.
    assert_status(
        node.registry.register(op_upsert("r1", "88.118.8/a")).await,
        Code::PermissionDenied,
        "not bound to any filing",
    );
    let mut renewed = Clients::new(srv.channel(&pki, &new).await);
    renewed
        .registry
        .register(op_upsert("r1", "88.118.8/a"))
        .await
        .unwrap();
    assert_status(
        renewed
            .node
            .rotate_certificate(pb::RotateCertificateRequest {
                id: String::new(),
                certificate_pem: new.cert_pem.clone(),
                reason: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "already has",
    );
    let audit = opc
        .node
        .list_audit(pb::ListAuditRequest {
            filing_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let last = audit.events.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.reason.as_str()),
        ("rotate", "yearly rotation")
    );
    srv.stop().await;
}

#[tokio::test]
async fn plaintext_is_for_loopback_development_only() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = open_store(dir.path());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut config = idres_grpc::node::GrpcConfig {
        listen: Some("0.0.0.0:0".parse().unwrap()),
        dev_plaintext: true,
        ..Default::default()
    };
    let err = idres_grpc::node::start(&config, Role::Top, None, Arc::clone(&store), stop.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    // Without TLS material and without the development switch: refused.
    config.dev_plaintext = false;
    let err = idres_grpc::node::start(&config, Role::Top, None, Arc::clone(&store), stop.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cert is required"), "{err}");

    // On loopback it serves, and callers must name themselves.
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.dev_plaintext = true;
    let face = idres_grpc::node::start(&config, Role::Top, None, Arc::clone(&store), stop)
        .await
        .unwrap();
    let url = format!("http://{}", face.addr.unwrap());
    let ch = idres_grpc::tls::connect(&url, None).await.unwrap();
    let mut anonymous = pb::node_service_client::NodeServiceClient::new(ch);
    assert_status(
        anonymous.list_nodes(pb::ListNodesRequest::default()).await,
        Code::Unauthenticated,
        "x-idres-dev-peer",
    );
    let up = idres_grpc::replica::Upstream {
        url,
        tls: None,
        dev_peer: Some("operator:dev".into()),
    };
    let mut c = pb::node_service_client::NodeServiceClient::new(up.channel().await.unwrap());
    let nodes = c
        .list_nodes(up.request(pb::ListNodesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(nodes.filings.is_empty());
}

/// Waits at most `limit` for the next item of a stream that must end in
/// an error; returns the error and how long it took.
async fn next_error<S>(
    stream: &mut S,
    limit: std::time::Duration,
) -> (tonic::Status, std::time::Duration)
where
    S: tokio_stream::Stream<Item = Result<pb::SyncBatch, tonic::Status>> + Unpin,
{
    use tokio_stream::StreamExt as _;
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.next()).await {
            Err(_) => panic!("the stream was still open after {limit:?}"),
            Ok(None) => panic!("the stream ended without an error"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return (e, started.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_or_revoked_node_loses_its_streams_and_its_referrals() {
    let pki = Pki::new();
    let top = Server::start(&pki, Role::Top).await;
    let mut opc = Clients::new(
        top.channel(&pki, &pki.ca.issue_operator("alice").unwrap())
            .await,
    );
    let n1 = pki.ca.issue_node("node-1").unwrap();
    let mut node = Clients::new(top.channel(&pki, &n1).await);
    let id = active_node(&mut node, &mut opc, "88.118.8", 26411).await;
    node.registry
        .register(op(
            "r1",
            OperationKind::Create,
            "88.118.8/ESCROWED",
            vec![url_value(1, "https://factory.example.cn/escrowed")],
        ))
        .await
        .unwrap();
    let top_store: Arc<dyn Store> = top.store.clone();
    let top_handler = Handler::new(
        Arc::clone(&top_store),
        NodeIdentity {
            site: SiteInfo::single("127.0.0.1:2641".parse().unwrap(), "top"),
            service_handles: vec![],
        },
    );
    assert_eq!(
        handle_resolve(&top_handler, "88.118.8/ESCROWED").0,
        ResponseCode::SERVICE_REFERRAL
    );

    for (suspend, action) in [(true, "suspend"), (false, "revoke")] {
        // A subscription and a registration stream opened while active.
        let mut sync = node.sync.clone();
        let mut follow = sync
            .subscribe(pb::SubscribeRequest {
                from_seq: 1,
                prefixes: vec!["0.NA".into(), "88.118.8".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (ops_tx, ops_rx) = tokio::sync::mpsc::channel::<pb::Operation>(16);
        let mut registry = node.registry.clone();
        let register = tokio::spawn(async move {
            registry
                .register_stream(tokio_stream::wrappers::ReceiverStream::new(ops_rx))
                .await
        });
        ops_tx
            .send(op(
                &format!("s-{action}"),
                OperationKind::Upsert,
                &format!("88.118.8/BEFORE-{action}"),
                vec![url_value(1, "https://factory.example.cn/before")],
            ))
            .await
            .unwrap();
        // Let both streams get going.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;

        let req = pb::TransitionRequest {
            id: id.clone(),
            reason: format!("{action} in a test"),
        };
        if suspend {
            opc.node.suspend(req).await.unwrap();
        } else {
            opc.node.revoke(req).await.unwrap();
        }
        let (e, took) = next_error(&mut follow, std::time::Duration::from_secs(1)).await;
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains(&id), "{e:?}");
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
        let ended = tokio::time::timeout(std::time::Duration::from_secs(1), register)
            .await
            .expect("the registration stream was still open after 1 s")
            .unwrap();
        assert_eq!(ended.unwrap_err().code(), Code::PermissionDenied);
        // Nothing more is written for the node, whatever the stream.
        let late = node
            .registry
            .register(op(
                &format!("late-{action}"),
                OperationKind::Upsert,
                "88.118.8/LATE",
                vec![url_value(1, "https://factory.example.cn/late")],
            ))
            .await;
        assert_eq!(late.unwrap_err().code(), Code::PermissionDenied);
        assert!(top.store.get("88.118.8/LATE").unwrap().is_none());
        // The top no longer refers clients to the node: it answers from
        // the escrowed copy.
        let (rc, reply) = handle_resolve(&top_handler, "88.118.8/ESCROWED");
        assert_eq!(rc, ResponseCode::SUCCESS, "{reply:?}");
        if suspend {
            opc.node
                .reinstate(pb::TransitionRequest {
                    id: id.clone(),
                    reason: "resolved".into(),
                })
                .await
                .unwrap();
            assert_eq!(
                handle_resolve(&top_handler, "88.118.8/ESCROWED").0,
                ResponseCode::SERVICE_REFERRAL,
                "reinstated, the node is referred to again"
            );
        }
    }
    top.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_may_refuse_a_withdrawn_nodes_prefixes_instead() {
    let pki = Pki::new();
    let top = Server::start(&pki, Role::Top).await;
    top.core.registry.set_refuse_withdrawn(true);
    let mut opc = Clients::new(
        top.channel(&pki, &pki.ca.issue_operator("alice").unwrap())
            .await,
    );
    let n1 = pki.ca.issue_node("node-1").unwrap();
    let mut node = Clients::new(top.channel(&pki, &n1).await);
    let id = active_node(&mut node, &mut opc, "88.118.8", 26412).await;
    node.registry
        .register(op(
            "r1",
            OperationKind::Create,
            "88.118.8/KEPT",
            vec![url_value(1, "https://factory.example.cn/kept")],
        ))
        .await
        .unwrap();
    let top_store: Arc<dyn Store> = top.store.clone();
    let handler = Handler::new(
        Arc::clone(&top_store),
        NodeIdentity {
            site: SiteInfo::single("127.0.0.1:2641".parse().unwrap(), "top"),
            service_handles: vec![],
        },
    );
    opc.node
        .suspend(pb::TransitionRequest {
            id: id.clone(),
            reason: "audit pending".into(),
        })
        .await
        .unwrap();
    let (rc, reply) = handle_resolve(&handler, "88.118.8/KEPT");
    assert_eq!(rc, ResponseCode::ERROR);
    let Reply::Error(message) = reply else {
        panic!("{reply:?}")
    };
    assert!(
        message.contains("withdrawn") && message.contains("audit pending"),
        "{message}"
    );
    opc.node
        .reinstate(pb::TransitionRequest {
            id,
            reason: "audit passed".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        handle_resolve(&handler, "88.118.8/KEPT").0,
        ResponseCode::SERVICE_REFERRAL
    );
    top.stop().await;
}
