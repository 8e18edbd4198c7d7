//! The DNS face against a real sled store, over real sockets on loopback.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use idres_dns::{Authority, DnsConfig, DnsServer, DnsSockets, Outcome, Transport};
use idres_model::{Handle, HandleValue, Oid, Permissions};
use idres_store::{Mutation, SledConfig, SledStore, Store, WriteRequest};

const WAIT: Duration = Duration::from_secs(10);

struct Node {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    server: Option<DnsServer>,
    cert_der: Vec<u8>,
}

impl Node {
    fn udp(&self) -> SocketAddr {
        self.server.as_ref().unwrap().udp_addr().unwrap()
    }
    fn tcp(&self) -> SocketAddr {
        self.server.as_ref().unwrap().tcp_addr().unwrap()
    }
    fn doq(&self) -> SocketAddr {
        self.server.as_ref().unwrap().doq_addr().unwrap()
    }
    async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await;
    }
}

fn put(store: &dyn Store, handle: Handle, values: Vec<HandleValue>) {
    store
        .write(WriteRequest::one(Mutation::Put { handle, values }))
        .unwrap()
        .unwrap();
}

fn oid(s: &str) -> Handle {
    Oid::parse(s).unwrap().to_handle()
}

fn url(i: u32, u: &str) -> HandleValue {
    HandleValue::new(i, "URL", u.to_owned())
}

/// The records every test sees.
fn fill(store: &dyn Store) {
    put(
        store,
        oid("1.2.156.3001.1"),
        vec![url(1, "https://example.cn/p")],
    );
    // Enough URLs that the answer exceeds every UDP limit.
    let many = (1..=60)
        .map(|i| {
            url(
                i,
                &format!("https://example.cn/products/item-{i:04}/details"),
            )
        })
        .collect();
    put(store, oid("1.2.156.3001.2"), many);
    put(
        store,
        Handle::parse("88.118.8/JXDY2106023").unwrap(),
        vec![
            url(1, "https://factory.example/JXDY2106023"),
            HandleValue::new(2, "OID", "1.2.156.3001.3"),
        ],
    );
    put(
        store,
        oid("1.2.156.3001.3"),
        vec![HandleValue::new(1, "HS_ALIAS", "88.118.8/JXDY2106023")],
    );
    // A handle naming an OID that has no record of its own.
    put(
        store,
        Handle::parse("88.118.8/LINKED").unwrap(),
        vec![
            url(1, "https://linked.example/5"),
            HandleValue::new(2, "OID", "1.2.156.3001.5"),
        ],
    );
    let mut secret = url(2, "https://internal.example/");
    secret.permissions = Permissions(Permissions::ADMIN_READ | Permissions::ADMIN_WRITE);
    put(
        store,
        oid("2.16.156.101818.102.1"),
        vec![url(1, "https://public.example/"), secret],
    );
}

fn config() -> DnsConfig {
    DnsConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        doq_listen: Some("127.0.0.1:0".parse().unwrap()),
        udp_workers: 2,
        nameservers: vec!["ns1.oid-res.org.".into(), "ns.example.net.".into()],
        nameserver_addresses: vec!["127.0.0.1".parse().unwrap()],
        ..DnsConfig::default()
    }
}

fn open_store(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(SledStore::open(SledConfig::new(dir.join("db"))).unwrap())
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    fill(store.as_ref());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let mut config = config();
    config.cert = Some(cert);
    config.key = Some(key);
    let sockets = DnsSockets::bind(&config).unwrap();
    let server = idres_dns::start(&config, Arc::clone(&store), sockets, None).unwrap();
    Node {
        _dir: dir,
        store,
        server: Some(server),
        cert_der: certified.cert.der().to_vec(),
    }
}

fn query(id: u16, name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(payload) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn udp_exchange(server: SocketAddr, q: &[u8]) -> Message {
    let s = udp_client();
    s.send_to(q, server).unwrap();
    let mut buf = [0u8; 65_535];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn tcp_exchange(server: SocketAddr, q: &[u8]) -> Message {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(q);
    s.write_all(&frame).unwrap();
    read_tcp(&mut s)
}

fn read_tcp(s: &mut TcpStream) -> Message {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

fn naptr_regexps(m: &Message) -> Vec<String> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            Some(RData::NAPTR(n)) => Some(String::from_utf8(n.regexp().to_vec()).unwrap()),
            _ => None,
        })
        .collect()
}

fn soa_in_authority(m: &Message) -> bool {
    m.name_servers()
        .iter()
        .any(|r| r.record_type() == RecordType::SOA && r.name().to_ascii() == "oid-res.org.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naptr_for_an_oid_over_udp_and_tcp() {
    let node = node().await;
    let q = query(7, "1.3001.156.2.1.oid-res.org.", RecordType::NAPTR, None);
    for m in [udp_exchange(node.udp(), &q), tcp_exchange(node.tcp(), &q)] {
        assert_eq!(m.id(), 7);
        assert_eq!(m.message_type(), MessageType::Response);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative());
        assert!(m.recursion_desired());
        assert!(!m.recursion_available());
        assert_eq!(m.queries().len(), 1);
        assert_eq!(m.answers().len(), 1);
        let rr = &m.answers()[0];
        assert_eq!(rr.name().to_ascii(), "1.3001.156.2.1.oid-res.org.");
        assert_eq!(rr.ttl(), 86_400);
        let Some(RData::NAPTR(n)) = rr.data() else {
            panic!("not NAPTR: {rr:?}")
        };
        assert_eq!((n.order(), n.preference()), (100, 1));
        assert_eq!(n.flags(), b"U");
        assert_eq!(n.services(), b"ORS+UINF");
        assert_eq!(n.regexp(), b"!^.*$!https://example.cn/p!");
        assert!(n.replacement().is_root());
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt_and_uri_views_and_private_values() {
    let node = node().await;
    let name = "1.102.101818.156.16.2.oid-res.org.";
    let m = udp_exchange(node.udp(), &query(1, name, RecordType::TXT, None));
    let txt: Vec<Vec<u8>> = m
        .answers()
        .iter()
        .map(|r| match r.data() {
            Some(RData::TXT(t)) => t.txt_data().concat(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(txt, [b"URL=https://public.example/".to_vec()]);
    let m = udp_exchange(node.udp(), &query(2, name, RecordType::Unknown(256), None));
    assert_eq!(m.answers().len(), 1);
    let rr = &m.answers()[0];
    assert_eq!(rr.record_type(), RecordType::Unknown(256));
    let Some(RData::Unknown { rdata, .. }) = rr.data() else {
        panic!("{rr:?}")
    };
    let uri = rdata.anything();
    assert_eq!(&uri[..4], &[0, 1, 0, 1], "priority = index 1, weight 1");
    assert_eq!(&uri[4..], b"https://public.example/");
    // The private URL shows in no view.
    let m = udp_exchange(node.udp(), &query(3, name, RecordType::NAPTR, None));
    assert_eq!(naptr_regexps(&m), ["!^.*$!https://public.example/!"]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_carry_the_soa() {
    let node = node().await;
    // An OID with no record and nothing below it.
    let m = udp_exchange(
        node.udp(),
        &query(1, "9.3001.156.2.1.oid-res.org.", RecordType::NAPTR, None),
    );
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.authoritative());
    assert!(m.answers().is_empty());
    assert!(soa_in_authority(&m));
    assert_eq!(m.name_servers()[0].ttl(), 300);
    // A name that cannot be an OID.
    let m = udp_exchange(
        node.udp(),
        &query(2, "www.oid-res.org.", RecordType::NAPTR, None),
    );
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    // A known OID without the type asked for: NODATA.
    let m = udp_exchange(
        node.udp(),
        &query(3, "1.3001.156.2.1.oid-res.org.", RecordType::A, None),
    );
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    assert!(soa_in_authority(&m));
    // An OID with OIDs below it but no record: an empty non-terminal.
    let m = udp_exchange(
        node.udp(),
        &query(4, "3001.156.2.1.oid-res.org.", RecordType::NAPTR, None),
    );
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(soa_in_authority(&m));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apex_records_and_name_servers() {
    let node = node().await;
    let m = udp_exchange(node.udp(), &query(1, "OID-RES.org.", RecordType::SOA, None));
    assert!(m.authoritative());
    let Some(RData::SOA(soa)) = m.answers()[0].data() else {
        panic!("{m:?}")
    };
    // Names in the zone are compressed against the question's spelling.
    assert_eq!(soa.mname().to_lowercase().to_ascii(), "ns1.oid-res.org.");
    assert_eq!(
        soa.rname().to_lowercase().to_ascii(),
        "hostmaster.oid-res.org."
    );
    assert_eq!(soa.serial(), node.store.last_seq() as u32);
    assert_eq!(soa.minimum(), 300);
    // The owner echoes the question's spelling.
    assert_eq!(m.answers()[0].name().to_ascii(), "OID-RES.org.");
    let m = udp_exchange(node.udp(), &query(2, "oid-res.org.", RecordType::NS, None));
    let ns: Vec<String> = m
        .answers()
        .iter()
        .map(|r| match r.data() {
            Some(RData::NS(n)) => n.0.to_ascii(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ns, ["ns1.oid-res.org.", "ns.example.net."]);
    let m = udp_exchange(
        node.udp(),
        &query(3, "ns1.oid-res.org.", RecordType::A, None),
    );
    assert_eq!(
        m.answers()[0].data(),
        Some(&RData::A("127.0.0.1".parse().unwrap()))
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_zone_are_refused() {
    let node = node().await;
    for name in ["example.com.", "org.", "1.2.oid-res.com."] {
        let m = udp_exchange(node.udp(), &query(9, name, RecordType::NAPTR, None));
        assert_eq!(m.response_code(), ResponseCode::Refused, "{name}");
        assert!(!m.authoritative());
        assert!(m.answers().is_empty());
        assert_eq!(m.queries()[0].name().to_ascii(), name);
    }
    // Another class is refused too.
    let mut m = Message::new();
    let mut q = Query::query(Name::from_ascii("1.oid-res.org.").unwrap(), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    m.set_id(5).add_query(q);
    let r = udp_exchange(node.udp(), &m.to_vec().unwrap());
    assert_eq!(r.response_code(), ResponseCode::Refused);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let node = node().await;
    let name = "2.3001.156.2.1.oid-res.org.";
    for edns in [None, Some(1232), Some(4096)] {
        let m = udp_exchange(node.udp(), &query(1, name, RecordType::NAPTR, edns));
        assert!(m.truncated(), "{edns:?}");
        assert!(m.answers().is_empty());
        assert_eq!(m.queries().len(), 1);
        assert_eq!(m.extensions().is_some(), edns.is_some());
    }
    let m = tcp_exchange(node.tcp(), &query(2, name, RecordType::NAPTR, Some(1232)));
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 60);
    let regexps = naptr_regexps(&m);
    assert_eq!(
        regexps[59],
        "!^.*$!https://example.cn/products/item-0060/details!"
    );
    // A small answer fits in UDP with or without EDNS.
    let m = udp_exchange(
        node.udp(),
        &query(
            3,
            "1.3001.156.2.1.oid-res.org.",
            RecordType::NAPTR,
            Some(1232),
        ),
    );
    assert!(!m.truncated());
    assert_eq!(m.extensions().as_ref().unwrap().max_payload(), 1232);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_answers_from_the_linked_handle() {
    let node = node().await;
    let m = udp_exchange(
        node.udp(),
        &query(1, "3.3001.156.2.1.oid-res.org.", RecordType::NAPTR, None),
    );
    assert_eq!(
        naptr_regexps(&m),
        ["!^.*$!https://factory.example/JXDY2106023!"]
    );
    // A broken link answers from the OID's own record (no URL: NODATA).
    put(
        node.store.as_ref(),
        oid("1.2.156.3001.4"),
        vec![HandleValue::new(1, "HS_ALIAS", "88.118.8/missing")],
    );
    let m = udp_exchange(
        node.udp(),
        &query(2, "4.3001.156.2.1.oid-res.org.", RecordType::NAPTR, None),
    );
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oid_named_by_a_handle_answers_from_the_handle() {
    let node = node().await;
    let name = "5.3001.156.2.1.oid-res.org.";
    let m = udp_exchange(node.udp(), &query(1, name, RecordType::NAPTR, None));
    assert_eq!(naptr_regexps(&m), ["!^.*$!https://linked.example/5!"]);
    // Unlinking the handle makes the name disappear.
    put(
        node.store.as_ref(),
        Handle::parse("88.118.8/LINKED").unwrap(),
        vec![url(1, "https://linked.example/5")],
    );
    let m = udp_exchange(node.udp(), &query(2, name, RecordType::NAPTR, None));
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    // A private link is no link.
    let mut private = HandleValue::new(2, "OID", "1.2.156.3001.5");
    private.permissions = Permissions(Permissions::ADMIN_READ | Permissions::ADMIN_WRITE);
    put(
        node.store.as_ref(),
        Handle::parse("88.118.8/LINKED").unwrap(),
        vec![url(1, "https://linked.example/5"), private],
    );
    let m = udp_exchange(node.udp(), &query(3, name, RecordType::NAPTR, None));
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_is_echoed_and_unknown_versions_get_badvers() {
    let node = node().await;
    let q = query(
        1,
        "1.3001.156.2.1.oid-res.org.",
        RecordType::NAPTR,
        Some(4096),
    );
    let m = udp_exchange(node.udp(), &q);
    let e = m.extensions().as_ref().unwrap();
    assert_eq!((e.version(), e.max_payload()), (0, 1232));
    let mut m = Message::from_vec(&q).unwrap();
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    let r = udp_exchange(node.udp(), &m.to_vec().unwrap());
    // 16 is BADVERS in an OPT-carrying response (hickory names it BADSIG).
    assert_eq!(u16::from(r.response_code()), 16);
    assert!(r.answers().is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_formerr_and_responses_are_ignored() {
    let node = node().await;
    let s = udp_client();
    let mut buf = [0u8; 4096];
    // A response sent to the server gets nothing back; the next query's
    // reply is the first datagram to arrive.
    let mut reflected = query(100, "1.3001.156.2.1.oid-res.org.", RecordType::NAPTR, None);
    reflected[2] |= 0x80;
    s.send_to(&reflected, node.udp()).unwrap();
    // A header and nothing else: unreadable question.
    let mut bad = query(101, "1.3001.156.2.1.oid-res.org.", RecordType::NAPTR, None);
    bad.truncate(14);
    s.send_to(&bad, node.udp()).unwrap();
    let (n, _) = s.recv_from(&mut buf).unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.id(), 101);
    assert_eq!(m.response_code(), ResponseCode::FormErr);
    // Too short for a header: dropped; two questions: FORMERR; another
    // opcode: NOTIMP.
    s.send_to(&[0x12, 0x34, 0x01], node.udp()).unwrap();
    let mut two = Message::new();
    two.set_id(102);
    for n in ["1.oid-res.org.", "2.oid-res.org."] {
        two.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::TXT));
    }
    s.send_to(&two.to_vec().unwrap(), node.udp()).unwrap();
    let (n, _) = s.recv_from(&mut buf).unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!((m.id(), m.response_code()), (102, ResponseCode::FormErr));
    let mut status = query(103, "1.oid-res.org.", RecordType::TXT, None);
    status[2] = (status[2] & 0x87) | (2 << 3);
    s.send_to(&status, node.udp()).unwrap();
    let (n, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &103u16.to_be_bytes());
    assert_eq!(buf[3] & 0x0F, 4, "NOTIMP");
    assert!(n >= 12);
    // The listener still answers.
    let m = udp_exchange(
        node.udp(),
        &query(104, "1.3001.156.2.1.oid-res.org.", RecordType::NAPTR, None),
    );
    assert_eq!(naptr_regexps(&m).len(), 1);
    node.stop().await;
}

#[test]
fn every_truncation_of_a_query_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    fill(store.as_ref());
    let auth = Authority::new(&config(), store).unwrap();
    let mut out = Vec::new();
    let full = query(
        42,
        "1.3001.156.2.1.oid-res.org.",
        RecordType::NAPTR,
        Some(1232),
    );
    for n in 0..full.len() {
        let outcome = auth.answer(&full[..n], Transport::Udp, 0, &mut out);
        if n < 12 {
            assert_eq!(outcome, Outcome::Drop, "{n}");
            continue;
        }
        assert_eq!(outcome, Outcome::Reply, "{n}");
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(
            (m.id(), m.response_code()),
            (42, ResponseCode::FormErr),
            "{n}"
        );
    }
    // Trailing bytes are malformed too.
    let mut long = full.clone();
    long.push(0);
    auth.answer(&long, Transport::Udp, 0, &mut out);
    assert_eq!(
        Message::from_vec(&out).unwrap().response_code(),
        ResponseCode::FormErr
    );
    // Random bytes after a query header never panic.
    let mut x: u32 = 0x1234_5678;
    for len in 12..300 {
        let mut msg = full[..12].to_vec();
        for _ in 12..len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            msg.push(x as u8);
        }
        msg[2] &= 0x7F;
        auth.answer(&msg, Transport::Tcp, 0, &mut out);
    }
    assert_eq!(
        auth.answer(&full, Transport::Udp, 0, &mut out),
        Outcome::Reply
    );
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.answers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answers_pipelined_queries_in_order() {
    let node = node().await;
    let mut s = TcpStream::connect(node.tcp()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut frames = Vec::new();
    for (id, name) in [
        (1u16, "1.3001.156.2.1.oid-res.org."),
        (2, "9.9.oid-res.org."),
        (3, "example.com."),
    ] {
        let q = query(id, name, RecordType::NAPTR, None);
        frames.extend_from_slice(&(q.len() as u16).to_be_bytes());
        frames.extend_from_slice(&q);
    }
    s.write_all(&frames).unwrap();
    let codes: Vec<(u16, ResponseCode)> = (0..3)
        .map(|_| {
            let m = read_tcp(&mut s);
            (m.id(), m.response_code())
        })
        .collect();
    assert_eq!(
        codes,
        [
            (1, ResponseCode::NoError),
            (2, ResponseCode::NXDomain),
            (3, ResponseCode::Refused)
        ]
    );
    node.stop().await;
}

fn doq_client(cert_der: &[u8]) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"doq".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep
}

async fn doq_exchange(conn: &quinn::Connection, q: &[u8]) -> Result<Message, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(q);
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let data = recv.read_to_end(65_537).await.map_err(|e| e.to_string())?;
    let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
    assert_eq!(len, data.len() - 2);
    Ok(Message::from_vec(&data[2..]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_over_quic() {
    let node = node().await;
    let ep = doq_client(&node.cert_der);
    let conn = tokio::time::timeout(WAIT, ep.connect(node.doq(), "localhost").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        conn.handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol
            .unwrap(),
        b"doq"
    );
    let m = doq_exchange(
        &conn,
        &query(0, "1.3001.156.2.1.oid-res.org.", RecordType::NAPTR, None),
    )
    .await
    .unwrap();
    assert_eq!(naptr_regexps(&m), ["!^.*$!https://example.cn/p!"]);
    // A large answer comes whole: no UDP limit on a stream.
    let m = doq_exchange(
        &conn,
        &query(0, "2.3001.156.2.1.oid-res.org.", RecordType::NAPTR, None),
    )
    .await
    .unwrap();
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 60);
    let m = doq_exchange(&conn, &query(0, "example.com.", RecordType::NAPTR, None))
        .await
        .unwrap();
    assert_eq!(m.response_code(), ResponseCode::Refused);
    // A non-zero message ID is a protocol error that closes the connection.
    let _ = doq_exchange(
        &conn,
        &query(7, "1.3001.156.2.1.oid-res.org.", RecordType::NAPTR, None),
    )
    .await;
    let closed = tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(2))
        }
        other => panic!("{other:?}"),
    }
    ep.close(quinn::VarInt::from_u32(0), b"");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_while_serving_are_answered() {
    let node = node().await;
    let name = "77.3001.156.2.1.oid-res.org.";
    let m = udp_exchange(node.udp(), &query(1, name, RecordType::NAPTR, None));
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    let before = m.name_servers()[0].clone();
    put(
        node.store.as_ref(),
        oid("1.2.156.3001.77"),
        vec![url(5, "https://new.example/77")],
    );
    let m = udp_exchange(node.udp(), &query(2, name, RecordType::NAPTR, None));
    assert_eq!(naptr_regexps(&m), ["!^.*$!https://new.example/77!"]);
    // The SOA serial followed the change.
    let serial = |r: &Record| match r.data() {
        Some(RData::SOA(s)) => s.serial(),
        _ => 0,
    };
    let m = udp_exchange(node.udp(), &query(3, "oid-res.org.", RecordType::SOA, None));
    assert!(serial(&m.answers()[0]) > serial(&before));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_records_follow_changes() {
    let node = node().await;
    let name = "1.3001.156.2.1.oid-res.org.";
    let ask = |id| udp_exchange(node.udp(), &query(id, name, RecordType::NAPTR, None));
    // Twice, so that the second answer comes from the cache.
    for id in 1..=2 {
        assert_eq!(naptr_regexps(&ask(id)), ["!^.*$!https://example.cn/p!"]);
    }
    put(
        node.store.as_ref(),
        oid("1.2.156.3001.1"),
        vec![url(1, "https://example.cn/v2")],
    );
    assert_eq!(naptr_regexps(&ask(3)), ["!^.*$!https://example.cn/v2!"]);
    node.store
        .write(WriteRequest::one(Mutation::Delete {
            handle: oid("1.2.156.3001.1"),
        }))
        .unwrap()
        .unwrap();
    assert_eq!(ask(4).response_code(), ResponseCode::NXDomain);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_datagrams_are_all_answered() {
    let node = node().await;
    let s = udp_client();
    // Rounds of datagrams, each bigger than one receive batch and sent
    // before reading any reply (and small enough for the client's buffer).
    let n: u16 = 300;
    let mut seen = vec![false; usize::from(n)];
    let mut buf = [0u8; 4096];
    for round in (0..n).collect::<Vec<_>>().chunks(100) {
        for &id in round {
            let name = match id % 3 {
                0 => "1.3001.156.2.1.oid-res.org.",
                1 => "8.3001.156.2.1.oid-res.org.",
                _ => "example.com.",
            };
            s.send_to(&query(id, name, RecordType::NAPTR, None), node.udp())
                .unwrap();
        }
        for _ in round {
            let (len, _) = s.recv_from(&mut buf).unwrap();
            let m = Message::from_vec(&buf[..len]).unwrap();
            let want = match m.id() % 3 {
                0 => ResponseCode::NoError,
                1 => ResponseCode::NXDomain,
                _ => ResponseCode::Refused,
            };
            assert_eq!(m.response_code(), want, "{}", m.id());
            seen[usize::from(m.id())] = true;
        }
    }
    assert!(seen.iter().all(|&s| s));
    node.stop().await;
}

#[test]
fn the_index_of_empty_non_terminals_follows_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    fill(store.as_ref());
    let index = idres_dns::index::OidIndex::new(idres_model::Prefix::parse("OID").unwrap());
    let s = store.as_ref();
    assert_eq!(index.has_descendants(s, "OID/1.2.156"), None, "not built");
    index.build(s, 1000).unwrap();
    assert!(index.is_ready());
    for (key, below) in [
        ("OID/1", true),
        ("OID/1.2.156", true),
        ("OID/1.2.156.3001", true),
        ("OID/1.2.156.3001.1", false),
        ("OID/2.16.156.101818.102", true),
        ("OID/1.2.157", false),
        ("OID/1.2.15", false),
    ] {
        assert_eq!(index.has_descendants(s, key), Some(below), "{key}");
        assert_eq!(index.store_has_below(s, key), Some(below), "{key}");
    }
    // A deep record makes its ancestors exist; deleting it undoes that,
    // but only up to the first ancestor that still has records below.
    put(
        s,
        oid("1.2.156.9.8.7"),
        vec![url(1, "https://deep.example/")],
    );
    assert_eq!(index.has_descendants(s, "OID/1.2.156.9.8"), Some(true));
    assert_eq!(index.has_descendants(s, "OID/1.2.156.9"), Some(true));
    s.write(WriteRequest::one(Mutation::Delete {
        handle: oid("1.2.156.9.8.7"),
    }))
    .unwrap()
    .unwrap();
    assert_eq!(index.has_descendants(s, "OID/1.2.156.9.8"), Some(false));
    assert_eq!(index.has_descendants(s, "OID/1.2.156.9"), Some(false));
    assert_eq!(index.has_descendants(s, "OID/1.2.156"), Some(true));
    // Links from handles: made, moved and removed.
    let linked = |s: &dyn Store| index.lookup(s, "OID/1.2.156.3001.5").unwrap().linked;
    assert_eq!(linked(s).as_deref(), Some("88.118.8/LINKED"));
    put(
        s,
        Handle::parse("88.118.8/AAA").unwrap(),
        vec![HandleValue::new(7, "OID", "1.2.156.3001.5")],
    );
    assert_eq!(
        linked(s).as_deref(),
        Some("88.118.8/AAA"),
        "first in index order"
    );
    s.write(WriteRequest::one(Mutation::Delete {
        handle: Handle::parse("88.118.8/AAA").unwrap(),
    }))
    .unwrap()
    .unwrap();
    assert_eq!(linked(s).as_deref(), Some("88.118.8/LINKED"));
    // The record stays, without its OID value.
    put(
        s,
        Handle::parse("88.118.8/LINKED").unwrap(),
        vec![url(1, "https://example.cn/linked")],
    );
    assert_eq!(linked(s), None);
    // More changes than one read of the log.
    let mut batch = WriteRequest::default();
    for i in 0..5000 {
        batch.mutations.push(Mutation::Put {
            handle: oid(&format!("1.2.158.{i}")),
            values: vec![url(1, "https://bulk.example/")],
        });
    }
    s.write(batch).unwrap().unwrap();
    assert_eq!(index.has_descendants(s, "OID/1.2.158"), Some(true));
    // Past its limit the index gives up and the store is asked.
    let small = idres_dns::index::OidIndex::new(idres_model::Prefix::parse("OID").unwrap());
    small.build(s, 10).unwrap();
    assert!(!small.is_ready());
    assert_eq!(small.has_descendants(s, "OID/1"), None);
}
