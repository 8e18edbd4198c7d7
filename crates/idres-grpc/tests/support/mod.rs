//! A real gRPC server on 127.0.0.1:0 over a real sled store, with
//! certificates from a freshly generated CA, and clients for it.

#![allow(clippy::unwrap_used, dead_code, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::sync::Arc;

use idres_grpc::certs::{DevCa, PemPair};
use idres_grpc::pb;
use idres_grpc::pb::node_service_client::NodeServiceClient;
use idres_grpc::pb::registry_service_client::RegistryServiceClient;
use idres_grpc::pb::resolve_service_client::ResolveServiceClient;
use idres_grpc::pb::sync_service_client::SyncServiceClient;
use idres_grpc::tls::{ClientTlsPem, ServerTls, ServerTlsPem};
use idres_grpc::{Core, Role, Security};
use idres_store::{SledConfig, SledStore, Store};
use tokio::sync::watch;
use tonic::transport::Channel;

/// A CA with the server's certificate.
pub struct Pki {
    pub ca: DevCa,
    pub server: PemPair,
    /// Revocation lists the server checks client certificates against.
    pub crls: Vec<String>,
}

impl Pki {
    pub fn new() -> Self {
        let ca = DevCa::generate("test CA").unwrap();
        let server = ca.issue_server("top.test", &[]).unwrap();
        Self {
            ca,
            server,
            crls: Vec::new(),
        }
    }

    pub fn client(&self, pair: &PemPair) -> ClientTlsPem {
        ClientTlsPem {
            ca_pem: self.ca.cert_pem(),
            cert_pem: pair.cert_pem.clone(),
            key_pem: pair.key_pem.clone(),
            server_name: Some("localhost".into()),
        }
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub store: Arc<SledStore>,
    pub core: Arc<Core>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

pub fn open_store(dir: &std::path::Path) -> Arc<SledStore> {
    Arc::new(SledStore::open(SledConfig::new(dir.join("db"))).unwrap())
}

impl Server {
    pub async fn start(pki: &Pki, role: Role) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        Self::start_on(pki, role, dir, store).await
    }

    pub async fn start_on(
        pki: &Pki,
        role: Role,
        dir: tempfile::TempDir,
        store: Arc<SledStore>,
    ) -> Self {
        let dyn_store: Arc<dyn Store> = store.clone();
        let core = Core::new(dyn_store, role).unwrap();
        let tls = ServerTls::new(&ServerTlsPem {
            cert_pem: pki.server.cert_pem.clone(),
            key_pem: pki.server.key_pem.clone(),
            client_ca_pem: pki.ca.cert_pem(),
            operator_ca_pem: None,
            crl_pems: pki.crls.clone(),
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut rx) = watch::channel(false);
        let c = Arc::clone(&core);
        let task = tokio::spawn(async move {
            idres_grpc::serve(c, listener, Security::MutualTls(tls), async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            store,
            core,
            stop,
            task: Some(task),
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub async fn channel(&self, pki: &Pki, pair: &PemPair) -> Channel {
        idres_grpc::tls::connect(&self.url(), Some(&pki.client(pair)))
            .await
            .unwrap()
    }

    pub async fn stop(mut self) -> (tempfile::TempDir, Arc<SledStore>) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        (self.dir, self.store)
    }
}

/// Clients of the four services on one channel.
#[derive(Clone)]
pub struct Clients {
    pub node: NodeServiceClient<Channel>,
    pub registry: RegistryServiceClient<Channel>,
    pub resolve: ResolveServiceClient<Channel>,
    pub sync: SyncServiceClient<Channel>,
}

impl Clients {
    pub fn new(ch: Channel) -> Self {
        Self {
            node: NodeServiceClient::new(ch.clone()),
            registry: RegistryServiceClient::new(ch.clone()),
            resolve: ResolveServiceClient::new(ch.clone()),
            sync: SyncServiceClient::new(ch),
        }
    }
}

pub const CREDIT_CODE: &str = "91350100M000100Y43";

pub fn application(port: u16) -> pb::FileRequest {
    pb::FileRequest {
        organisation: "示例装备制造有限公司".into(),
        credit_code: CREDIT_CODE.into(),
        contact: Some(pb::Contact {
            name: "张三".into(),
            phone: "+86 20 0000 0000".into(),
            email: "ops@example.cn".into(),
        }),
        industry: "C34".into(),
        service_addresses: vec![pb::ServiceAddress {
            host: "127.0.0.1".into(),
            port: u32::from(port),
        }],
        certificate_pem: String::new(),
        postal_address: "广州".into(),
    }
}

/// Files a node with its own certificate, has the operator approve it and
/// allocate `prefix`; returns the filing id.
pub async fn active_node(
    node: &mut Clients,
    operator: &mut Clients,
    prefix: &str,
    port: u16,
) -> String {
    let f = node
        .node
        .file(application(port))
        .await
        .unwrap()
        .into_inner();
    operator
        .node
        .approve(pb::TransitionRequest {
            id: f.id.clone(),
            reason: "documents checked".into(),
        })
        .await
        .unwrap();
    operator
        .node
        .allocate(pb::AllocateRequest {
            filing_id: f.id.clone(),
            prefix: prefix.into(),
            reason: "first allocation".into(),
        })
        .await
        .unwrap();
    f.id
}

pub fn url_value(index: u32, url: &str) -> pb::HandleValue {
    pb::HandleValue {
        index,
        r#type: "URL".into(),
        data: url.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn op(
    id: &str,
    kind: pb::OperationKind,
    handle: &str,
    values: Vec<pb::HandleValue>,
) -> pb::Operation {
    pb::Operation {
        operation_id: id.into(),
        kind: kind as i32,
        handle: handle.into(),
        values,
    }
}
