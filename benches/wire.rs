//! Encode and decode costs of the Handle protocol messages on the hot path.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use idres_benches::product_values;
use idres_model::encode_values;
use idres_service::client::encode_request;
use idres_wire::{
    put_resolution_reply, Message, OpFlags, Reply, ReplyWriter, Request, ResponseCode,
};

fn wire(c: &mut Criterion) {
    let req = encode_request(
        &Request::Resolution {
            handle: "88.118.8/JXDY2106023",
            indexes: vec![],
            types: vec![],
        },
        42,
        0,
    );
    let req_rd = encode_request(
        &Request::Resolution {
            handle: "88.118.8/JXDY2106023",
            indexes: vec![],
            types: vec!["URL"],
        },
        42,
        OpFlags::RETURN_DIGEST,
    );
    let mut values = Vec::new();
    encode_values(&product_values(7), &mut values);

    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_resolution_request", |b| {
        b.iter(|| {
            let m = Message::parse_with_envelope(black_box(&req)).unwrap();
            black_box(Request::decode(m.header.op_code, m.body).unwrap());
        })
    });
    let mut out = BytesMut::with_capacity(4096);
    for (name, r) in [
        ("encode_reply", &req),
        ("encode_reply_sha256_digest", &req_rd),
    ] {
        let m = Message::parse_with_envelope(r).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let mut w = ReplyWriter::begin(
                    &mut out,
                    &m.envelope,
                    &m.header,
                    m.signed_part,
                    ResponseCode::SUCCESS,
                    1,
                    1_767_225_600,
                );
                put_resolution_reply(w.body(), b"88.118.8/JXDY2106023", black_box(&values));
                black_box(w.finish());
            })
        });
    }
    out.clear();
    let m = Message::parse_with_envelope(&req).unwrap();
    let mut w = ReplyWriter::begin(
        &mut out,
        &m.envelope,
        &m.header,
        m.signed_part,
        ResponseCode::SUCCESS,
        1,
        0,
    );
    put_resolution_reply(w.body(), b"88.118.8/JXDY2106023", &values);
    w.finish();
    let reply = out.to_vec();
    g.bench_function("decode_reply_values", |b| {
        b.iter(|| {
            let m = Message::parse_with_envelope(black_box(&reply)).unwrap();
            black_box(
                Reply::decode(
                    m.header.op_code,
                    m.header.response_code,
                    m.header.op_flags,
                    m.body,
                )
                .unwrap(),
            );
        })
    });
    g.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
