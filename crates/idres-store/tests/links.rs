//! The link index against a real database: claims land with their record,
//! a second claim is refused naming both records, a change or delete moves
//! the claim, and a reopened store with another scheme configuration
//! rebuilds the index.
#![allow(clippy::unwrap_used)]

use idres_model::{Handle, HandleValue};
use idres_schemes::{Schemes, SchemesConfig};
use idres_store::{Mutation, MutationError, SledConfig, SledStore, Store, WriteRequest};

fn h(s: &str) -> Handle {
    Handle::parse(s).unwrap()
}

fn v(i: u32, t: &str, d: &str) -> HandleValue {
    HandleValue::new(i, t, d.to_owned())
}

fn put(handle: &str, values: Vec<HandleValue>) -> Mutation {
    Mutation::Put {
        handle: h(handle),
        values,
    }
}

const SERIAL: &str = "gs1:01/09521234543213/10/LOT1/21/SER1";

#[test]
fn claims_conflicts_and_moves() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(SledConfig::new(dir.path())).unwrap();
    s.write(WriteRequest::one(put(
        "88.118.8/P1",
        vec![
            v(
                1,
                "GS1.DL",
                "https://id.gs1.org/01/09521234543213/10/LOT1/21/SER1?17=261231",
            ),
            v(2, "ECODE", "10001123456789"),
            v(3, "CID", "cid:ab12cd34"),
        ],
    )))
    .unwrap()
    .unwrap();
    assert_eq!(s.find_link(SERIAL).unwrap(), ["88.118.8/P1"]);
    assert_eq!(
        s.find_link("ecode:10001123456789").unwrap(),
        ["88.118.8/P1"]
    );
    assert_eq!(s.find_link("cid:CIDAB12CD34").unwrap(), ["88.118.8/P1"]);

    // Another record, written as an element string: the same key.
    let r = s
        .write(WriteRequest::one(put(
            "88.118.8/DUP",
            vec![v(1, "GS1.DL", "(01)09521234543213(10)LOT1(21)SER1")],
        )))
        .unwrap();
    match r {
        Err(MutationError::LinkConflict {
            link,
            handle,
            other,
        }) => {
            assert_eq!(
                (link.as_str(), handle.as_str(), other.as_str()),
                (SERIAL, "88.118.8/DUP", "88.118.8/P1")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        s.get("88.118.8/DUP").unwrap().is_none(),
        "nothing of a refused request is written"
    );

    // Two records of one request claiming one key.
    let r = s
        .write(WriteRequest {
            mutations: vec![
                put("88.118.8/A", vec![v(1, "GS1.GTIN", "9506000134352")]),
                put("88.118.8/B", vec![v(1, "GS1.GTIN", "09506000134352")]),
            ],
            idempotency_key: None,
        })
        .unwrap();
    assert!(
        matches!(r, Err(MutationError::LinkConflict { .. })),
        "{r:?}"
    );
    assert!(s.get("88.118.8/A").unwrap().is_none());

    // An invalid link value refuses the write, naming the value.
    let r = s
        .write(WriteRequest::one(put(
            "88.118.8/BAD",
            vec![v(7, "GS1.GTIN", "09521234543214")],
        )))
        .unwrap();
    match r {
        Err(e @ MutationError::BadLink { .. }) => {
            let m = e.to_string();
            assert!(m.contains("value 7") && m.contains("check digit"), "{m}");
        }
        other => panic!("{other:?}"),
    }

    // Giving up a claim and taking it in one request, in either order.
    s.write(WriteRequest {
        mutations: vec![
            put(
                "88.118.8/DUP",
                vec![v(1, "GS1.DL", "01/09521234543213/10/LOT1/21/SER1")],
            ),
            put("88.118.8/P1", vec![v(1, "URL", "https://example.com/p1")]),
        ],
        idempotency_key: None,
    })
    .unwrap()
    .unwrap();
    assert_eq!(s.find_link(SERIAL).unwrap(), ["88.118.8/DUP"]);
    assert!(s.find_link("ecode:10001123456789").unwrap().is_empty());

    // A prefix scan lists every serial under a GTIN+lot.
    s.write(WriteRequest::one(put(
        "88.118.8/S2",
        vec![v(1, "GS1.DL", "01/09521234543213/10/LOT1/21/SER2")],
    )))
    .unwrap()
    .unwrap();
    let under = s
        .scan_links("gs1:01/09521234543213/10/LOT1/21/", None, 10)
        .unwrap();
    let handles: Vec<&str> = under.iter().map(|(_, h)| h.as_str()).collect();
    assert_eq!(handles, ["88.118.8/DUP", "88.118.8/S2"]);
    let page2 = s
        .scan_links(
            "gs1:01/09521234543213/10/LOT1/21/",
            Some((&under[0].0, &under[0].1)),
            10,
        )
        .unwrap();
    assert_eq!(page2.len(), 1);

    s.write(WriteRequest::one(Mutation::Delete {
        handle: h("88.118.8/DUP"),
    }))
    .unwrap()
    .unwrap();
    assert!(s.find_link(SERIAL).unwrap().is_empty());
    s.close().unwrap();
    drop(s);

    // Reopened with a scheme configuration whose CID pattern differs, and
    // with GS1 links shared: the index is rebuilt under the new rules.
    let cfg = SchemesConfig {
        shared_links: vec!["gs1".into()],
        ..SchemesConfig::default()
    };
    let mut sc = SledConfig::new(dir.path());
    sc.schemes = Schemes::new(&cfg).unwrap();
    let s = SledStore::open(sc).unwrap();
    assert_eq!(
        s.find_link("gs1:01/09521234543213/10/LOT1/21/SER2")
            .unwrap(),
        ["88.118.8/S2"]
    );
    s.write(WriteRequest::one(put(
        "88.118.8/S3",
        vec![v(1, "GS1.DL", "01/09521234543213/10/LOT1/21/SER2")],
    )))
    .unwrap()
    .unwrap();
    assert_eq!(
        s.find_link("gs1:01/09521234543213/10/LOT1/21/SER2")
            .unwrap(),
        ["88.118.8/S2", "88.118.8/S3"]
    );
}
