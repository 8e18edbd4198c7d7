#![allow(clippy::unwrap_used)]
//! The real `idres` binary as a top node and a secondary node: the
//! secondary is killed in the middle of its first sync, restarted, and
//! ends with the top node's digest; Handle clients are referred from the
//! top node to the secondary, which answers.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idres_grpc::pb::{self, OperationKind};
use idres_grpc::tls::ClientTlsPem;
use idres_wire::{Reply, ResponseCode};
use support::*;

/// `$IDRES_BIN`, or the workspace's debug build, built once.
fn idres_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("IDRES_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "idres", "--bin", "idres"])
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(status.success(), "building idres failed");
        std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root.join("target"), PathBuf::from)
            .join("debug/idres")
    })
    .clone()
}

struct Proc {
    child: Child,
    faces: std::collections::HashMap<String, SocketAddr>,
}

impl Proc {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(idres_bin())
            .args(args)
            .env(
                "IDRES_LOG",
                std::env::var("IDRES_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut faces = std::collections::HashMap::new();
        let want = if args.contains(&"--grpc-listen") {
            2
        } else {
            1
        };
        for line in out.lines() {
            let line = line.unwrap();
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let ["listening", face, addr] = parts[..] {
                faces.insert(face.to_owned(), addr.parse().unwrap());
            }
            if faces.len() == want {
                break;
            }
        }
        assert_eq!(faces.len(), want, "idres did not announce its faces");
        Self { child, faces }
    }

    fn grpc_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.faces["grpc"].port())
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A failed test must not leave nodes running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

async fn digest(url: &str, tls: &ClientTlsPem) -> pb::DigestResponse {
    let ch = idres_grpc::tls::connect(url, Some(tls)).await.unwrap();
    pb::sync_service_client::SyncServiceClient::new(ch)
        .digest(pb::DigestRequest {
            prefix: "88.118.8".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_secondary_resumes_and_matches_the_top_node() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = write(d, "ca.pem", &pki.ca.cert_pem());
    let srv_cert = write(d, "server.pem", &pki.server.cert_pem);
    let srv_key = write(d, "server-key.pem", &pki.server.key_pem);
    let node_pair = pki.ca.issue_node("secondary-1").unwrap();
    let node_cert = write(d, "node.pem", &node_pair.cert_pem);
    let node_key = write(d, "node-key.pem", &node_pair.key_pem);
    let operator = pki.ca.issue_operator("alice").unwrap();
    let top_conf = write(
        d,
        "top.toml",
        &format!("[grpc]\ncert = \"{srv_cert}\"\nkey = \"{srv_key}\"\nclient_ca = \"{ca}\"\n"),
    );
    let sec_conf = write(
        d,
        "secondary.toml",
        &format!(
            "[node]\ndescription = \"secondary\"\n[grpc]\ncert = \"{srv_cert}\"\nkey = \"{srv_key}\"\nclient_ca = \"{ca}\"\n\
             upstream_ca = \"{ca}\"\nupstream_cert = \"{node_cert}\"\nupstream_key = \"{node_key}\"\n\
             upstream_server_name = \"localhost\"\nsync_batch = 50\nprefix_refresh_secs = 1\n"
        ),
    );
    let top_dir = d.join("top").display().to_string();
    let sec_dir = d.join("secondary").display().to_string();
    let mut top = Proc::start(&[
        "serve",
        "--config",
        &top_conf,
        "--data-dir",
        &top_dir,
        "--handle-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ]);

    // File, approve, allocate; the node escrows its identifiers.
    let sec_port = free_port();
    let mut op = Clients::new(
        idres_grpc::tls::connect(&top.grpc_url(), Some(&pki.client(&operator)))
            .await
            .unwrap(),
    );
    let mut node = Clients::new(
        idres_grpc::tls::connect(&top.grpc_url(), Some(&pki.client(&node_pair)))
            .await
            .unwrap(),
    );
    active_node(&mut node, &mut op, "88.118.8", sec_port).await;
    let n = 20_000;
    let ops: Vec<pb::Operation> = (0..n).map(op_).collect();
    let t = Instant::now();
    let s = node
        .registry
        .register_stream(tokio_stream::iter(ops))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.applied, n as u64);
    eprintln!("registered {n} in {:?}", t.elapsed());
    let want = digest(&top.grpc_url(), &pki.client(&operator)).await;
    assert_eq!(want.count, n as u64);

    // The secondary starts its first sync and is killed in the middle.
    let sec_handle = format!("127.0.0.1:{sec_port}");
    let upstream = top.grpc_url();
    let sec_args = [
        "serve",
        "--config",
        &sec_conf,
        "--data-dir",
        &sec_dir,
        "--role",
        "secondary",
        "--upstream",
        &upstream,
        "--handle-listen",
        &sec_handle,
        "--grpc-listen",
        "127.0.0.1:0",
    ];
    let mut sec = Proc::start(&sec_args);
    let op_tls = pki.client(&operator);
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        let got = digest(&sec.grpc_url(), &op_tls).await;
        if got.count > 0 {
            break got.count;
        }
        assert!(
            Instant::now() < deadline,
            "the secondary never started syncing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    eprintln!("killing the secondary at {seen} records");
    sec.child.kill().unwrap();
    sec.child.wait().unwrap();
    assert!(seen < n as u64, "killed after {seen} of {n}: not mid-sync");

    // Restarted, it resumes and ends equal to the top node.
    let mut sec = Proc::start(&sec_args);
    loop {
        let got = digest(&sec.grpc_url(), &op_tls).await;
        if got.sha256 == want.sha256 && got.count == want.count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the secondary did not catch up: {got:?} vs {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Handle clients: the top node refers, the secondary answers.
    let top_handle = top.faces["handle"];
    let sec_handle: SocketAddr = sec_handle.parse().unwrap();
    let (r_top, r_sec) = tokio::task::spawn_blocking(move || {
        (
            idres_service::client::resolve(top_handle, "88.118.8/000042", &[], &[], false).unwrap(),
            idres_service::client::resolve(sec_handle, "88.118.8/000042", &[], &[], false).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(r_top.response_code, ResponseCode::SERVICE_REFERRAL);
    assert_eq!(r_sec.response_code, ResponseCode::SUCCESS);
    let Reply::Resolution { values, .. } = r_sec.reply else {
        panic!("{:?}", r_sec.reply)
    };
    assert_eq!(&values[0].data[..], b"https://factory.example.cn/42");
    // A prefix allocated later is followed too, without a restart.
    let mut alloc = op.node.clone();
    let filing = node
        .node
        .get_filing(pb::GetFilingRequest::default())
        .await
        .unwrap()
        .into_inner();
    alloc
        .allocate(pb::AllocateRequest {
            filing_id: filing.id,
            prefix: "88.119".into(),
            reason: "second prefix".into(),
        })
        .await
        .unwrap();
    node.registry
        .register(support::op(
            "late",
            OperationKind::Create,
            "88.119/LATE",
            vec![url_value(1, "https://late.example.cn/")],
        ))
        .await
        .unwrap();
    let sec_resolver = pb::resolve_service_client::ResolveServiceClient::new(
        idres_grpc::tls::connect(&sec.grpc_url(), Some(&op_tls))
            .await
            .unwrap(),
    );
    loop {
        let got = sec_resolver
            .clone()
            .resolve(pb::ResolveRequest {
                handle: "88.119/LATE".into(),
                ..Default::default()
            })
            .await;
        if got.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new prefix was not followed: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Escrow does not echo back what the top node already holds (it would
    // double the top node's log); a handful may cross while a sync batch
    // is in flight.
    let status = pb::sync_service_client::SyncServiceClient::new(
        idres_grpc::tls::connect(&top.grpc_url(), Some(&op_tls))
            .await
            .unwrap(),
    )
    .status(pb::SyncStatusRequest {})
    .await
    .unwrap()
    .into_inner();
    assert!(
        status.last_seq < want.last_seq + 2 + (n as u64) / 10,
        "escrow echoed records back: top log at {} after {}",
        status.last_seq,
        want.last_seq
    );
    sec.stop();
    top.stop();
}

fn op_(i: usize) -> pb::Operation {
    op(
        &format!("r{i}"),
        OperationKind::Create,
        &format!("88.118.8/{i:06}"),
        vec![url_value(1, &format!("https://factory.example.cn/{i}"))],
    )
}
