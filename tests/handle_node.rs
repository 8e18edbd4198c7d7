//! The Handle face of the real `idres` binary: import, serve on
//! 127.0.0.1 port 0 with a sled store in a temporary directory, resolve
//! over UDP and TCP, malformed input, shutdown and restart.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use idres_model::{HandleValue, SiteInfo};
use idres_service::client::{self, encode_request};
use idres_tests::{idres, import, write_records, Node};
use idres_wire::{Envelope, Message, OpCode, OpFlags, Reply, Request, ResponseCode};
use serde_json::json;

fn sample_records() -> Vec<serde_json::Value> {
    let big: String = "0123456789abcdef".repeat(40); // 640 bytes per value
    vec![
        json!({"handle":"88.118.8/JXDY2106023","values":[
            {"index":1,"type":"URL","data":{"format":"string","value":"https://example.cn/p/JXDY2106023"}},
            {"index":2,"type":"EMAIL","data":"quality@example.cn","permissions":"1100"},
            {"index":3,"type":"DESC","data":{"format":"hex","value":"e4baa7e59381"}},
            {"index":100,"type":"HS_ADMIN","data":{"format":"admin","value":{"handle":"0.NA/88.118.8","index":200,"permissions":"011111110011"}}}
        ]}),
        json!({"handle":"88.118.8/BIG","values":
            (1..=6).map(|i| json!({"index":i,"type":"DESC","data":big})).collect::<Vec<_>>()
        }),
        json!({"handle":"0.NA/77.1","values":[
            {"index":1,"type":"HS_SITE","data":{"format":"base64","value":
                b64(&SiteInfo::single("192.0.2.10:2641".parse().unwrap(), "secondary node").encode())}},
            {"index":2,"type":"DESC","data":"prefix homed at a secondary node"}
        ]}),
        json!({"handle":"0.NA/66","values":[
            {"index":1,"type":"HS_SITE.PREFIX","data":{"format":"base64","value":
                b64(&SiteInfo::single("192.0.2.20:2641".parse().unwrap(), "derived prefixes").encode())}}
        ]}),
    ]
}

fn b64(b: &[u8]) -> String {
    // Plain base64 so the test does not depend on the server's encoder.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn started_node() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.jsonl");
    write_records(&file, &sample_records());
    let data = dir.path().join("data");
    import(&data, &file);
    let node = Node::start(&data, &[], &["handle"]);
    (dir, node)
}

fn values_of(reply: &client::ClientReply) -> Vec<HandleValue> {
    match &reply.reply {
        Reply::Resolution { values, .. } => values.clone(),
        other => panic!("expected values, got {other:?}"),
    }
}

#[test]
fn resolves_over_udp_and_tcp_without_private_values() {
    let (_dir, node) = started_node();
    let addr = node.handle_addr();
    for tcp in [false, true] {
        let r = client::resolve(addr, "88.118.8/JXDY2106023", &[], &[], tcp).unwrap();
        assert_eq!(r.response_code, ResponseCode::SUCCESS);
        let now = idres_service::unix_now();
        assert!(r.expiration >= now + 43_000 && r.expiration <= now + 43_300);
        let vals = values_of(&r);
        let indexes: Vec<u32> = vals.iter().map(|v| v.index).collect();
        // EMAIL (index 2) has no public read and must not be sent.
        assert_eq!(indexes, [1, 3, 100], "tcp={tcp}");
        assert_eq!(&vals[0].data[..], b"https://example.cn/p/JXDY2106023");
        assert_eq!(&vals[1].data[..], "产品".as_bytes());
    }
    // The prefix is case-insensitive and the reply echoes the spelling asked.
    let r = client::resolve(addr, "88.118.8/JXDY2106023", &[], &[], false).unwrap();
    let r2 = client::resolve(addr, "88.118.8/jxdy2106023", &[], &[], false).unwrap();
    assert_eq!(r2.response_code, ResponseCode::HANDLE_NOT_FOUND);
    assert_eq!(values_of(&r).len(), 3);
    let out = idres(&[
        "resolve",
        "--server",
        &addr.to_string(),
        "88.118.8/JXDY2106023",
    ]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["handle"], "88.118.8/JXDY2106023");
    assert_eq!(
        j["values"][0]["data"]["value"],
        "https://example.cn/p/JXDY2106023"
    );
}

#[test]
fn request_id_is_echoed_and_digest_comes_first() {
    let (_dir, node) = started_node();
    let req = Request::Resolution {
        handle: "88.118.8/JXDY2106023",
        indexes: vec![],
        types: vec![],
    };
    let msg = encode_request(&req, 0x5eed_1234, OpFlags::RETURN_DIGEST);
    let r = client::request_udp(node.handle_addr(), &msg).unwrap();
    assert_eq!(r.request_id, 0x5eed_1234);
    assert_eq!(r.response_code, ResponseCode::SUCCESS);
}

#[test]
fn a_record_over_3kb_comes_back_in_several_udp_packets() {
    let (_dir, node) = started_node();
    let r = client::resolve(node.handle_addr(), "88.118.8/BIG", &[], &[], false).unwrap();
    let vals = values_of(&r);
    assert_eq!(vals.len(), 6);
    let total: usize = vals.iter().map(|v| v.data.len()).sum();
    assert!(total > 3000);
    assert!(r.packets >= 8, "{} packets", r.packets);
    assert!(vals.iter().all(|v| v.data.len() == 640));
}

#[test]
fn type_and_index_filters() {
    let (_dir, node) = started_node();
    let addr = node.handle_addr();
    let h = "88.118.8/JXDY2106023";
    let by_type = client::resolve(addr, h, &[], &["URL"], false).unwrap();
    assert_eq!(
        values_of(&by_type)
            .iter()
            .map(|v| v.index)
            .collect::<Vec<_>>(),
        [1]
    );
    let by_index = client::resolve(addr, h, &[3], &[], true).unwrap();
    assert_eq!(
        values_of(&by_index)
            .iter()
            .map(|v| v.index)
            .collect::<Vec<_>>(),
        [3]
    );
    let both = client::resolve(addr, h, &[100], &["url"], false).unwrap();
    assert_eq!(
        values_of(&both).iter().map(|v| v.index).collect::<Vec<_>>(),
        [1, 100]
    );
    // Asking for the private value alone finds nothing readable.
    let private = client::resolve(addr, h, &[2], &[], false).unwrap();
    assert_eq!(private.response_code, ResponseCode::VALUES_NOT_FOUND);
    let none = client::resolve(addr, h, &[], &["EMAIL"], false).unwrap();
    assert_eq!(none.response_code, ResponseCode::VALUES_NOT_FOUND);
}

#[test]
fn missing_and_invalid_handles() {
    let (_dir, node) = started_node();
    let addr = node.handle_addr();
    let r = client::resolve(addr, "88.118.8/NOPE", &[], &[], false).unwrap();
    assert_eq!(r.response_code, ResponseCode::HANDLE_NOT_FOUND);
    assert_eq!(r.response_code.0, 100);
    let r = client::resolve(addr, "no-slash", &[], &[], true).unwrap();
    assert_eq!(r.response_code, ResponseCode::INVALID_HANDLE);
    let out = idres(&["resolve", "--server", &addr.to_string(), "88.118.8/NOPE"]);
    assert!(!out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["responseCode"], 100);
}

#[test]
fn prefix_homed_elsewhere_gets_a_referral() {
    let (_dir, node) = started_node();
    let addr = node.handle_addr();
    let r = client::resolve(addr, "77.1/ANY", &[], &[], false).unwrap();
    assert_eq!(r.response_code, ResponseCode::SERVICE_REFERRAL);
    let Reply::Referral {
        service_handle,
        values,
    } = &r.reply
    else {
        panic!("{:?}", r.reply)
    };
    assert_eq!(service_handle, "0.NA/77.1");
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].value_type, "HS_SITE");
    let site = SiteInfo::decode(&values[0].data).unwrap();
    assert!(site.serves_at("192.0.2.10:2641".parse().unwrap()));
    // A derived prefix is referred through its ancestor's HS_SITE.PREFIX,
    // given to the client as HS_SITE.
    let r = client::resolve(addr, "66.5.4/X", &[], &[], true).unwrap();
    assert_eq!(r.response_code, ResponseCode::SERVICE_REFERRAL);
    let Reply::Referral { values, .. } = &r.reply else {
        panic!()
    };
    assert_eq!(values[0].value_type, "HS_SITE");
    // A derived prefix's own record, not held here, is a prefix referral
    // carrying the ancestor's .PREFIX values as they are.
    let r = client::resolve(addr, "0.NA/66.5", &[], &[], false).unwrap();
    assert_eq!(r.response_code, ResponseCode::PREFIX_REFERRAL);
    let Reply::Referral {
        service_handle,
        values,
    } = &r.reply
    else {
        panic!()
    };
    assert!(service_handle.is_empty());
    assert_eq!(values[0].value_type, "HS_SITE.PREFIX");
    let r = client::resolve(addr, "0.NA/88.118", &[], &[], false).unwrap();
    assert_eq!(r.response_code, ResponseCode::HANDLE_NOT_FOUND);
    // The prefix record itself is answered here: that is how clients find
    // the secondary node.
    let r = client::resolve(addr, "0.NA/77.1", &[], &["HS_SITE"], false).unwrap();
    assert_eq!(r.response_code, ResponseCode::SUCCESS);
    // Prefixes without a prefix record are served locally.
    let r = client::resolve(addr, "88.118.8/JXDY2106023", &[], &[], false).unwrap();
    assert_eq!(r.response_code, ResponseCode::SUCCESS);
}

#[test]
fn site_info_describes_this_node() {
    let (_dir, node) = started_node();
    let r = client::get_site_info(node.handle_addr(), false).unwrap();
    let Reply::SiteInfo(bytes) = r.reply else {
        panic!()
    };
    let site = SiteInfo::decode(&bytes).unwrap();
    assert!(site.serves_at(node.handle_addr()));
}

fn datagram(req: &[u8], socket: &UdpSocket) -> Option<Vec<u8>> {
    socket.send(req).unwrap();
    let mut buf = [0u8; 2048];
    match socket.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

#[test]
fn malformed_datagrams_never_stop_the_listener() {
    let (_dir, node) = started_node();
    let addr = node.handle_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(addr).unwrap();
    let good = encode_request(
        &Request::Resolution {
            handle: "88.118.8/JXDY2106023",
            indexes: vec![],
            types: vec![],
        },
        7,
        0,
    );
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Hundreds of bad datagrams: random bytes, every truncation, flipped
    // bytes, oversized ones. None may crash or stall the workers.
    socket
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut sent = 0;
    for n in 0..good.len() {
        socket.send(&good[..n]).unwrap();
        sent += 1;
    }
    for _ in 0..300 {
        let len = (next() % 600) as usize;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        socket.send(&junk).unwrap();
        let mut flipped = good.clone();
        let at = (next() as usize) % flipped.len();
        flipped[at] ^= 0xff;
        socket.send(&flipped).unwrap();
        sent += 2;
    }
    assert!(sent > 500);
    let mut buf = [0u8; 2048];
    while socket.recv(&mut buf).is_ok() {}

    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // A readable header with a bad body gets PROTOCOL_ERROR.
    let mut bad_body = good.clone();
    bad_body[20 + 24..20 + 28].copy_from_slice(&1000u32.to_be_bytes()); // handle length
    let reply = datagram(&bad_body, &socket).expect("a protocol error reply");
    let m = Message::parse_with_envelope(&reply).unwrap();
    assert_eq!(m.header.response_code, ResponseCode::PROTOCOL_ERROR);
    assert_eq!(m.envelope.request_id, 7);
    // Bad UTF-8 in the handle is a protocol error too.
    let mut bad_utf8 = good.clone();
    bad_utf8[20 + 28] = 0xff;
    let reply = datagram(&bad_utf8, &socket).expect("a protocol error reply");
    let m = Message::parse_with_envelope(&reply).unwrap();
    assert_eq!(m.header.response_code, ResponseCode::PROTOCOL_ERROR);
    // An unknown op code is refused by name.
    let unknown = encode_request(&Request::Other(OpCode(7777)), 8, 0);
    let reply = datagram(&unknown, &socket).expect("a reply");
    let m = Message::parse_with_envelope(&reply).unwrap();
    assert_eq!(
        m.header.response_code,
        ResponseCode::OPERATION_NOT_SUPPORTED
    );
    // A message that is itself a response is never answered.
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut response = good.clone();
    response[24..28].copy_from_slice(&1u32.to_be_bytes());
    assert!(datagram(&response, &socket).is_none());
    // An unreadable envelope is dropped.
    assert!(datagram(&good[..10], &socket).is_none());

    // And normal answers still come, over UDP and TCP.
    for tcp in [false, true] {
        let r = client::resolve(addr, "88.118.8/JXDY2106023", &[], &[], tcp).unwrap();
        assert_eq!(r.response_code, ResponseCode::SUCCESS);
    }
}

#[test]
fn tcp_garbage_closes_only_that_connection() {
    let (_dir, node) = started_node();
    let addr = node.handle_addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // An envelope announcing more than the protocol allows.
    let mut env = Vec::new();
    Envelope {
        major: 2,
        minor: 11,
        flags: 0,
        suggested_minor: 11,
        session_id: 0,
        request_id: 1,
        sequence: 0,
        message_length: 10_000_000,
    }
    .encode(&mut env);
    s.write_all(&env).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "connection should be closed"
    );
    // Two requests on one connection both get answers.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for id in [1u32, 2] {
        let req = encode_request(
            &Request::Resolution {
                handle: "88.118.8/JXDY2106023",
                indexes: vec![1],
                types: vec![],
            },
            id,
            OpFlags::KEEP_ALIVE,
        );
        s.write_all(&req).unwrap();
        let mut head = [0u8; 20];
        s.read_exact(&mut head).unwrap();
        let env = Envelope::decode(&head).unwrap();
        assert_eq!(env.request_id, id);
        let mut rest = vec![0u8; env.message_length as usize];
        s.read_exact(&mut rest).unwrap();
    }
}

#[test]
fn sigterm_exits_cleanly_and_data_survives_restart() {
    let (dir, node) = started_node();
    let data = dir.path().join("data");
    let (status, took, log) = node.terminate();
    assert!(status.success(), "exit status {status:?}: {log}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(log.contains("stopped"), "{log}");
    let node = Node::start(&data, &[], &["handle"]);
    let r = client::resolve(node.handle_addr(), "88.118.8/JXDY2106023", &[], &[], false).unwrap();
    assert_eq!(values_of(&r).len(), 3);
    let r = client::resolve(node.handle_addr(), "77.1/X", &[], &[], false).unwrap();
    assert_eq!(r.response_code, ResponseCode::SERVICE_REFERRAL);
}

#[test]
fn import_refuses_a_bad_file_whole_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"handle\":\"88/A\",\"values\":[{\"index\":1,\"type\":\"URL\",\"data\":\"http://a\"}]}\n",
            "\n",
            "{\"handle\":\"88/B\",\"values\":[{\"index\":1,\"type\":\"URL\",\"data\":{\"format\":\"base64\",\"value\":\"@@\"}}]}\n",
            "{\"handle\":\"no-slash\",\"values\":[]}\n",
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = idres(&[
        "import",
        "--data-dir",
        data.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3: values[0].data.value"), "{err}");
    assert!(err.contains("line 4: handle"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    // Nothing was written: the store was not even created.
    assert!(!data.exists());
}

#[test]
fn export_then_import_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.jsonl");
    write_records(&file, &sample_records());
    let a = dir.path().join("a");
    import(&a, &file);
    let first = dir.path().join("first.jsonl");
    assert!(idres(&[
        "export",
        "--data-dir",
        a.to_str().unwrap(),
        first.to_str().unwrap()
    ])
    .status
    .success());
    let b = dir.path().join("b");
    import(&b, &first);
    let out = idres(&["export", "--data-dir", b.to_str().unwrap()]);
    assert!(out.status.success());
    let first_text = std::fs::read_to_string(&first).unwrap();
    assert_eq!(first_text, String::from_utf8(out.stdout).unwrap());
    assert_eq!(first_text.lines().count(), 4);
    // Importing the same file again changes nothing visible.
    import(&b, &first);
    let again = idres(&["export", "--data-dir", b.to_str().unwrap()]);
    assert_eq!(first_text, String::from_utf8(again.stdout).unwrap());
}

#[test]
fn configuration_file_is_strict_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("idres.toml");
    std::fs::write(&cfg, "[handle]\nlisten = \"127.0.0.1:0\"\nlisen = 3\n").unwrap();
    let out = idres(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lisen"), "{err}");
    // A valid file; --data-dir overrides the file's store directory.
    let data = dir.path().join("from-flag");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndata_dir = \"{}\"\n[handle]\nmax_tcp_connections = 8\n",
            dir.path().join("from-file").display()
        ),
    )
    .unwrap();
    let node = Node::start(&data, &["--config", cfg.to_str().unwrap()], &["handle"]);
    let r = client::get_site_info(node.handle_addr(), true).unwrap();
    assert_eq!(r.response_code, ResponseCode::SUCCESS);
    drop(node);
    assert!(data.exists());
    assert!(!dir.path().join("from-file").exists());
}
