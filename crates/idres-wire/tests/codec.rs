//! Golden vectors, truncation at every length, and property round-trips.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use idres_model::{encode_values, HandleValue, ValueReference};
use idres_wire::body::DigestAlg;
use idres_wire::{
    put_error, put_referral, put_resolution_reply, Assembled, Datagrams, Envelope, Header, Message,
    OpCode, OpFlags, Reassembler, ReassemblyLimits, Reply, ReplyWriter, Request, ResponseCode,
    MAX_DATAGRAM, UDP_PAYLOAD,
};
use proptest::prelude::*;
use sha2::Digest as _;

/// A resolution request for `88.118.8/JXDY2106023`, index 1, type URL,
/// request id 0x01020304, RD set, as a 2.11 client writes it.
const RESOLUTION_REQUEST: &[u8] = &[
    // envelope
    2, 11, 0x02, 11, // version 2.11, suggested 2.11
    0, 0, 0, 0, // session
    1, 2, 3, 4, // request id
    0, 0, 0, 0, // sequence
    0, 0, 0, 71, // message length = 24 + 43 + 4
    // header
    0, 0, 0, 1, // RESOLUTION
    0, 0, 0, 0, // response code
    0x00, 0x80, 0, 0, // RD
    0xff, 0xff, // site info serial -1
    0, 0, // recursion count, reserved
    0, 0, 0, 0, // expiration
    0, 0, 0, 43, // body length
    // body
    0, 0, 0, 20, b'8', b'8', b'.', b'1', b'1', b'8', b'.', b'8', b'/', b'J', b'X', b'D', b'Y', b'2',
    b'1', b'0', b'6', b'0', b'2', b'3', // handle
    0, 0, 0, 1, 0, 0, 0, 1, // indexes [1]
    0, 0, 0, 1, 0, 0, 0, 3, b'U', b'R', b'L', // types [URL]
    // credential
    0, 0, 0, 0,
];

fn url_value() -> HandleValue {
    let mut v = HandleValue::new(1, "URL", "https://example.cn/p");
    v.timestamp = 1_767_225_600;
    v
}

#[test]
fn golden_resolution_request() {
    let m = Message::parse_with_envelope(RESOLUTION_REQUEST).unwrap();
    assert_eq!(m.envelope.request_id, 0x0102_0304);
    assert_eq!(m.envelope.suggested_version(), (2, 11));
    assert_eq!(m.header.op_code, OpCode::RESOLUTION);
    assert!(m.header.op_flags.has(OpFlags::RETURN_DIGEST));
    assert!(m.credential.is_empty());
    let req = Request::decode(m.header.op_code, m.body).unwrap();
    assert_eq!(
        req,
        Request::Resolution {
            handle: "88.118.8/JXDY2106023",
            indexes: vec![1],
            types: vec!["URL"],
        }
    );
    let mut body = Vec::new();
    req.encode(&mut body);
    assert_eq!(&body[..], m.body);
}

#[test]
fn golden_resolution_reply() {
    let m = Message::parse_with_envelope(RESOLUTION_REQUEST).unwrap();
    let mut values = Vec::new();
    encode_values(&[url_value()], &mut values);
    let mut out = BytesMut::new();
    let mut w = ReplyWriter::begin(
        &mut out,
        &m.envelope,
        &m.header,
        m.signed_part,
        ResponseCode::SUCCESS,
        7,
        1_000_000,
    );
    put_resolution_reply(w.body(), b"88.118.8/JXDY2106023", &values);
    let len = w.finish();
    assert_eq!(len, out.len());

    let mut expected = Vec::new();
    let digest = sha2::Sha256::digest(&RESOLUTION_REQUEST[20..20 + 24 + 43]);
    let body_len = 1 + 32 + 4 + 20 + values.len();
    expected.extend_from_slice(&[2, 11, 0x02, 11, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0]);
    expected.put_u32((24 + body_len + 4) as u32);
    expected.put_u32(1); // op code
    expected.put_u32(1); // SUCCESS
    expected.put_u32(0x9080_0000); // AUTH | RECU | RD
    expected.put_u16(7);
    expected.extend_from_slice(&[0, 0]);
    expected.put_u32(1_000_000 + 43_200);
    expected.put_u32(body_len as u32);
    expected.push(3); // SHA-256
    expected.extend_from_slice(&digest);
    expected.put_u32(20);
    expected.extend_from_slice(b"88.118.8/JXDY2106023");
    expected.extend_from_slice(&values);
    expected.put_u32(0);
    assert_eq!(&out[..], &expected[..]);

    let reply = Message::parse_with_envelope(&out).unwrap();
    assert_eq!(
        Reply::decode(
            reply.header.op_code,
            reply.header.response_code,
            reply.header.op_flags,
            reply.body
        )
        .unwrap(),
        Reply::Resolution {
            handle: "88.118.8/JXDY2106023".into(),
            values: vec![url_value()],
        }
    );
}

#[test]
fn old_clients_get_no_digest_and_their_version() {
    let mut req = RESOLUTION_REQUEST.to_vec();
    req[1] = 0; // 2.0
    req[2] = 0; // no suggested version
    let m = Message::parse_with_envelope(&req).unwrap();
    let mut out = BytesMut::new();
    let mut w = ReplyWriter::begin(
        &mut out,
        &m.envelope,
        &m.header,
        m.signed_part,
        ResponseCode::HANDLE_NOT_FOUND,
        1,
        0,
    );
    put_error(w.body(), "");
    w.finish();
    let reply = Message::parse_with_envelope(&out).unwrap();
    assert_eq!((reply.envelope.major, reply.envelope.minor), (2, 0));
    assert!(!reply.header.op_flags.has(OpFlags::RETURN_DIGEST));
    assert_eq!(reply.body, &[0, 0, 0, 0]);
}

#[test]
fn digest_forms() {
    let mut out = BytesMut::new();
    idres_wire::body::put_request_digest(&mut out, DigestAlg::OLD_MD5, b"abc");
    assert_eq!(&out[..4], &[0, 0, 0, 16]);
    assert_eq!(out.len(), 20);
    put_error(&mut out, "x");
    assert_eq!(
        Reply::decode(
            OpCode::RESOLUTION,
            ResponseCode::ERROR,
            OpFlags(OpFlags::RETURN_DIGEST),
            &out
        )
        .unwrap(),
        Reply::Error("x".into())
    );
}

/// Full requests of every kind the crate decodes.
fn sample_requests() -> Vec<Vec<u8>> {
    let mut v2 = url_value();
    v2.index = 2;
    v2.references.push(ValueReference {
        handle: "88/REF".into(),
        index: 1,
    });
    let bodies = vec![
        Request::Resolution {
            handle: "88.118.8/X",
            indexes: vec![1, 2],
            types: vec!["URL", "EMAIL"],
        },
        Request::GetSiteInfo,
        Request::CreateHandle {
            handle: "88.118.8/X",
            values: vec![url_value(), v2.clone()],
        },
        Request::DeleteHandle {
            handle: "88.118.8/X",
        },
        Request::AddValue {
            handle: "88.118.8/X",
            values: vec![v2.clone()],
        },
        Request::RemoveValue {
            handle: "88.118.8/X",
            indexes: vec![2, 3],
        },
        Request::ModifyValue {
            handle: "88.118.8/X",
            values: vec![v2],
        },
        Request::ListHandles {
            prefix: "0.NA/88.118.8",
        },
        Request::ChallengeResponse {
            auth_type: "HS_SECKEY",
            identity: "300:88/ADMIN",
            index: 300,
            response: b"\x22macmacmac",
        },
    ];
    bodies.iter().map(frame_request).collect()
}

fn frame_request(req: &Request<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    req.encode(&mut body);
    let mut out = Vec::new();
    Envelope {
        major: 2,
        minor: 11,
        flags: 2,
        suggested_minor: 11,
        session_id: 0,
        request_id: 9,
        sequence: 0,
        message_length: (24 + body.len() + 4) as u32,
    }
    .encode(&mut out);
    Header {
        op_code: req.op_code(),
        response_code: ResponseCode::RESERVED,
        op_flags: OpFlags(0),
        site_info_serial: 0,
        recursion_count: 0,
        expiration: 0,
        body_length: body.len() as u32,
    }
    .encode(&mut out);
    out.extend_from_slice(&body);
    out.put_u32(0);
    out
}

#[test]
fn every_request_round_trips() {
    for full in sample_requests() {
        let m = Message::parse_with_envelope(&full).unwrap();
        let req = Request::decode(m.header.op_code, m.body).unwrap();
        assert_eq!(frame_request(&req), full);
    }
}

/// Every proper prefix of every message is refused without a panic, either
/// as an unreadable frame or as a malformed body.
#[test]
fn truncation_at_every_length() {
    let mut messages = sample_requests();
    messages.push(RESOLUTION_REQUEST.to_vec());
    for full in &messages {
        for n in 0..full.len() {
            let cut = &full[..n];
            if let Ok(m) = Message::parse_with_envelope(cut) {
                panic!("accepted a message cut at {n}: {m:?}");
            }
        }
        // A body cut inside, framed consistently, is a malformed body.
        let m = Message::parse_with_envelope(full).unwrap();
        for n in 0..m.body.len() {
            if m.header.op_code == OpCode::GET_SITE_INFO && n == 0 {
                continue; // an empty GET_SITE_INFO body is valid
            }
            assert!(
                Request::decode(m.header.op_code, &m.body[..n]).is_err(),
                "{:?} body cut at {n}",
                m.header.op_code
            );
        }
    }
}

#[test]
fn truncated_replies_are_errors() {
    let mut replies = Vec::new();
    let mut body = BytesMut::new();
    let mut values = Vec::new();
    encode_values(&[url_value()], &mut values);
    put_resolution_reply(&mut body, b"88/X", &values);
    replies.push((OpCode::RESOLUTION, ResponseCode::SUCCESS, body.clone()));
    body.clear();
    put_referral(&mut body, "0.NA/88", &[url_value()]);
    replies.push((
        OpCode::RESOLUTION,
        ResponseCode::SERVICE_REFERRAL,
        body.clone(),
    ));
    body.clear();
    put_error(&mut body, "no such handle");
    replies.push((
        OpCode::RESOLUTION,
        ResponseCode::HANDLE_NOT_FOUND,
        body.clone(),
    ));
    for (op, rc, body) in replies {
        assert!(Reply::decode(op, rc, OpFlags(0), &body).is_ok());
        for n in 0..body.len() {
            // A referral may stop after its handle; nothing else may be cut.
            let ok = Reply::decode(op, rc, OpFlags(0), &body[..n]).is_ok();
            assert!(
                !ok || (rc == ResponseCode::SERVICE_REFERRAL && n == 4 + 7)
                    || (rc != ResponseCode::SUCCESS
                        && rc != ResponseCode::SERVICE_REFERRAL
                        && n == 0),
                "{rc:?} cut at {n} accepted"
            );
        }
    }
}

#[test]
fn responses_are_recognised() {
    let mut full = RESOLUTION_REQUEST.to_vec();
    full[27] = 1; // response code SUCCESS
    let m = Message::parse_with_envelope(&full).unwrap();
    assert!(m.header.is_response());
}

#[test]
fn unknown_op_codes_survive() {
    let full = frame_request(&Request::Other(OpCode(2001)));
    let m = Message::parse_with_envelope(&full).unwrap();
    assert_eq!(m.header.op_code, OpCode(2001));
    assert_eq!(
        Request::decode(m.header.op_code, m.body).unwrap(),
        Request::Other(OpCode(2001))
    );
}

#[test]
fn oversized_message_length_is_refused() {
    let mut full = RESOLUTION_REQUEST.to_vec();
    full[16..20].copy_from_slice(&(300_000u32).to_be_bytes());
    assert!(Envelope::decode(&full).is_err());
}

fn big_reply(request_id: u32, values: usize) -> Vec<u8> {
    let req = {
        let mut r = RESOLUTION_REQUEST.to_vec();
        r[8..12].copy_from_slice(&request_id.to_be_bytes());
        r
    };
    let m = Message::parse_with_envelope(&req).unwrap();
    let vals: Vec<HandleValue> = (1..=values as u32)
        .map(|i| HandleValue::new(i, "DESC", "x".repeat(100)))
        .collect();
    let mut enc = Vec::new();
    encode_values(&vals, &mut enc);
    let mut out = BytesMut::new();
    let mut w = ReplyWriter::begin(
        &mut out,
        &m.envelope,
        &m.header,
        m.signed_part,
        ResponseCode::SUCCESS,
        1,
        0,
    );
    put_resolution_reply(w.body(), b"88/BIG", &enc);
    w.finish();
    out.to_vec()
}

#[test]
fn udp_split_and_reassembly_in_any_order() {
    let full = big_reply(77, 30); // about 4 KB
    let mut d = Datagrams::new(&full).unwrap();
    let n = d.count();
    assert!(n > 6, "{n}");
    let mut packets = Vec::new();
    let mut buf = [0u8; MAX_DATAGRAM];
    while let Some(len) = d.next_into(&mut buf) {
        assert!(len <= MAX_DATAGRAM);
        packets.push(buf[..len].to_vec());
    }
    assert_eq!(packets.len(), n);
    for (i, p) in packets.iter().enumerate() {
        let env = Envelope::decode(p).unwrap();
        assert_eq!(env.sequence as usize, i);
        assert_eq!(env.message_length as usize, full.len() - 20);
        assert_eq!(env.request_id, 77);
    }
    // Reverse order with a duplicate in the middle.
    let mut r = Reassembler::new(ReassemblyLimits::default());
    let now = Instant::now();
    let mut order: Vec<usize> = (0..n).rev().collect();
    order.insert(2, n - 1);
    let mut whole = None;
    for i in order {
        match r.push(&"peer", &packets[i], now).unwrap() {
            Assembled::Complete(m) => whole = Some(m),
            Assembled::Pending => {}
            Assembled::Single(_) => panic!("single"),
        }
    }
    assert_eq!(whole.as_deref(), Some(&full[..]));
    assert_eq!(r.pending(), 0);
}

#[test]
fn reassembly_is_bounded_and_expires() {
    let full = big_reply(1, 10);
    let mut d = Datagrams::new(&full).unwrap();
    let mut buf = [0u8; MAX_DATAGRAM];
    let len = d.next_into(&mut buf).unwrap();
    let first = buf[..len].to_vec();
    let limits = ReassemblyLimits {
        max_pending: 2,
        max_bytes: 1 << 20,
        timeout: Duration::from_secs(5),
        ..ReassemblyLimits::default()
    };
    let mut r = Reassembler::new(limits);
    let t0 = Instant::now();
    assert_eq!(r.push(&1, &first, t0).unwrap(), Assembled::Pending);
    assert_eq!(r.push(&2, &first, t0).unwrap(), Assembled::Pending);
    assert!(r.push(&3, &first, t0).is_err());
    assert_eq!(
        r.push(&3, &first, t0 + Duration::from_secs(6)).unwrap(),
        Assembled::Pending
    );
    assert_eq!(r.pending(), 1);
    // A packet whose size does not fit its sequence number is refused.
    let mut bad = first.clone();
    bad.truncate(100);
    assert!(r.push(&4, &bad, t0).is_err());
    // A small message passes straight through.
    assert!(matches!(
        r.push(&5, RESOLUTION_REQUEST, t0).unwrap(),
        Assembled::Single(_)
    ));
    assert_eq!(UDP_PAYLOAD, 492);
}

#[test]
fn one_sender_has_a_share_of_reassembly() {
    let full = big_reply(1, 10);
    let mut d = Datagrams::new(&full).unwrap();
    let mut buf = [0u8; MAX_DATAGRAM];
    let len = d.next_into(&mut buf).unwrap();
    let first = buf[..len].to_vec();
    let with_id = |id: u32| {
        let mut p = first.clone();
        // The request id is bytes 8..12 of the envelope.
        p[8..12].copy_from_slice(&id.to_be_bytes());
        p
    };
    let limits = ReassemblyLimits {
        max_pending_per_sender: 3,
        ..ReassemblyLimits::default()
    };
    let mut r = Reassembler::new(limits);
    let t0 = Instant::now();
    for id in 0..3 {
        assert_eq!(r.push(&1, &with_id(id), t0).unwrap(), Assembled::Pending);
    }
    // The sender's share is taken; another sender still has room.
    assert!(r.push(&1, &with_id(3), t0).is_err());
    assert_eq!(r.push(&2, &with_id(3), t0).unwrap(), Assembled::Pending);
    // Expired messages give the share back.
    assert_eq!(
        r.push(&1, &with_id(4), t0 + Duration::from_secs(6))
            .unwrap(),
        Assembled::Pending
    );
    assert_eq!(r.pending(), 1);
}

fn arb_value() -> impl Strategy<Value = HandleValue> {
    (
        1u32..1000,
        "[A-Z_.]{1,12}",
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<u8>(),
        any::<u32>(),
        any::<u8>(),
        any::<u32>(),
        proptest::collection::vec(("[a-z0-9./]{1,16}", any::<u32>()), 0..3),
    )
        .prop_map(|(index, ty, data, tt, ttl, perm, ts, refs)| HandleValue {
            index,
            value_type: ty,
            data: data.into(),
            ttl_type: idres_model::TtlType(tt),
            ttl,
            permissions: idres_model::Permissions(perm),
            timestamp: ts,
            references: refs
                .into_iter()
                .map(|(handle, index)| ValueReference { handle, index })
                .collect(),
        })
}

proptest! {
    #[test]
    fn values_round_trip(values in proptest::collection::vec(arb_value(), 0..8), h in "[0-9.]{1,8}/[ -~]{1,20}") {
        let req = Request::CreateHandle { handle: &h, values: values.clone() };
        let full = frame_request(&req);
        let m = Message::parse_with_envelope(&full).unwrap();
        prop_assert_eq!(Request::decode(m.header.op_code, m.body).unwrap(), req);
    }

    #[test]
    fn resolution_round_trip(h in "\\PC{1,40}", idx in proptest::collection::vec(any::<u32>(), 0..5), types in proptest::collection::vec("\\PC{0,10}", 0..5)) {
        let types: Vec<&str> = types.iter().map(String::as_str).collect();
        let req = Request::Resolution { handle: &h, indexes: idx, types };
        let full = frame_request(&req);
        let m = Message::parse_with_envelope(&full).unwrap();
        prop_assert_eq!(Request::decode(m.header.op_code, m.body).unwrap(), req);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), op in 0u32..300) {
        if let Ok(m) = Message::parse_with_envelope(&bytes) {
            let _ = Request::decode(m.header.op_code, m.body);
        }
        let _ = Request::decode(OpCode(op), &bytes);
        let _ = Reply::decode(OpCode(op % 3), ResponseCode(op), OpFlags(0x0080_0000), &bytes);
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let _ = r.push(&0u8, &bytes, Instant::now());
    }

    #[test]
    fn udp_round_trip(values in 1usize..40, seed in any::<u64>()) {
        let full = big_reply(5, values);
        let mut d = Datagrams::new(&full).unwrap();
        let mut packets = Vec::new();
        let mut buf = [0u8; MAX_DATAGRAM];
        while let Some(len) = d.next_into(&mut buf) {
            packets.push(buf[..len].to_vec());
        }
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..packets.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            packets.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut got = None;
        for p in &packets {
            match r.push(&(), p, Instant::now()).unwrap() {
                Assembled::Single(m) => got = Some(m.to_vec()),
                Assembled::Complete(m) => got = Some(m),
                Assembled::Pending => {}
            }
        }
        prop_assert_eq!(got, Some(full));
    }
}
