//! The sled store against a real database in a temporary directory.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use idres_model::{Handle, HandleValue, Prefix, SiteInfo};
use idres_store::{
    ChangeKind, Mutation, MutationError, SledConfig, SledStore, Store, StoreError, WriteRequest,
};

fn h(s: &str) -> Handle {
    Handle::parse(s).unwrap()
}

fn url(i: u32, u: &str) -> HandleValue {
    HandleValue::new(i, "URL", u.to_owned())
}

fn open(dir: &std::path::Path) -> SledStore {
    SledStore::open(SledConfig::new(dir)).unwrap()
}

fn put(s: &SledStore, handle: &str, values: Vec<HandleValue>) -> u64 {
    s.write(WriteRequest::one(Mutation::Put {
        handle: h(handle),
        values,
    }))
    .unwrap()
    .unwrap()
    .last_seq
}

#[test]
fn put_get_and_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.last_seq(), 0);
    assert_eq!(put(&s, "88.118.8/A", vec![url(1, "http://a")]), 1);
    assert_eq!(put(&s, "88.118.8/b", vec![url(1, "http://b")]), 2);
    // Prefix case does not matter, suffix case does.
    let rec = s.get(h("88.118.8/A").key()).unwrap().unwrap();
    assert_eq!(rec.values().unwrap(), vec![url(1, "http://a")]);
    assert!(s.get(h("88.118.8/a").key()).unwrap().is_none());
    assert_eq!(s.handle_count(), 2);
    let log = s.changes(1, 10).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].seq, log[0].kind, log[0].handle.as_str()),
        (1, ChangeKind::Put, "88.118.8/A")
    );
    assert_eq!(s.changes(2, 10).unwrap().len(), 1);
    assert_eq!(s.first_seq().unwrap(), 1);
}

#[test]
fn refused_requests_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    put(&s, "88/X", vec![url(1, "http://x")]);
    let before = s.last_seq();
    // The second mutation fails, so the first must not land either.
    let r = s
        .write(WriteRequest {
            mutations: vec![
                Mutation::Put {
                    handle: h("88/NEW"),
                    values: vec![url(1, "http://n")],
                },
                Mutation::Create {
                    handle: h("88/X"),
                    values: vec![url(1, "http://x2")],
                },
            ],
            idempotency_key: None,
        })
        .unwrap();
    assert_eq!(r, Err(MutationError::HandleExists("88/X".into())));
    assert!(s.get("88/NEW").unwrap().is_none());
    assert_eq!(s.last_seq(), before);
    assert_eq!(s.handle_count(), 1);
    // Invalid values are refused with the reason.
    let r = s
        .write(WriteRequest::one(Mutation::Put {
            handle: h("88/Y"),
            values: vec![url(1, "a"), url(1, "b")],
        }))
        .unwrap();
    assert!(matches!(r, Err(MutationError::Invalid { .. })));
}

#[test]
fn value_level_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    put(&s, "88/X", vec![url(1, "http://x")]);
    let w = |m| s.write(WriteRequest::one(m)).unwrap();
    assert!(w(Mutation::AddValues {
        handle: h("88/X"),
        values: vec![url(2, "http://y")]
    })
    .is_ok());
    assert_eq!(
        w(Mutation::AddValues {
            handle: h("88/X"),
            values: vec![url(2, "http://z")]
        }),
        Err(MutationError::ValueExists {
            handle: "88/X".into(),
            index: 2
        })
    );
    assert!(w(Mutation::ModifyValues {
        handle: h("88/X"),
        values: vec![url(2, "http://z")]
    })
    .is_ok());
    assert_eq!(
        w(Mutation::RemoveValues {
            handle: h("88/X"),
            indexes: vec![9]
        }),
        Err(MutationError::ValueNotFound {
            handle: "88/X".into(),
            index: 9
        })
    );
    assert!(w(Mutation::RemoveValues {
        handle: h("88/X"),
        indexes: vec![1]
    })
    .is_ok());
    let vals = s.get("88/X").unwrap().unwrap().values().unwrap();
    assert_eq!(vals, vec![url(2, "http://z")]);
    assert_eq!(
        w(Mutation::Delete {
            handle: h("88/NOPE")
        }),
        Err(MutationError::HandleNotFound("88/NOPE".into()))
    );
    assert!(w(Mutation::Delete { handle: h("88/X") }).is_ok());
    assert!(s.get("88/X").unwrap().is_none());
    assert_eq!(s.handle_count(), 0);
    let last = s.changes(0, 100).unwrap().pop().unwrap();
    assert_eq!(last.kind, ChangeKind::Delete);
}

#[test]
fn idempotency_keys_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let req = WriteRequest {
        mutations: vec![Mutation::AddValues {
            handle: h("88/X"),
            values: vec![url(2, "b")],
        }],
        idempotency_key: Some(b"op-1".to_vec()),
    };
    put(&s, "88/X", vec![url(1, "a")]);
    let first = s.write(req.clone()).unwrap().unwrap();
    assert!(!first.replayed);
    // Retried: not applied again (it would fail with ValueExists), same seq.
    let again = s.write(req).unwrap().unwrap();
    assert!(again.replayed);
    assert_eq!(again.last_seq, first.last_seq);
    assert_eq!(s.last_seq(), first.last_seq);
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        put(&s, "88/X", vec![url(1, "http://x")]);
        put(
            &s,
            "0.NA/77",
            vec![HandleValue::new(
                1,
                "HS_SITE",
                SiteInfo::single("192.0.2.1:2641".parse().unwrap(), "elsewhere").encode(),
            )],
        );
        s.close().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.last_seq(), 2);
    assert_eq!(s.handle_count(), 2);
    assert!(s.get("88/X").unwrap().is_some());
    assert_eq!(s.prefix_home("77.1.2").unwrap().prefix.as_str(), "77");
    assert_eq!(s.changes(0, 10).unwrap().len(), 2);
    // The log continues where it stopped.
    assert_eq!(put(&s, "88/Y", vec![url(1, "y")]), 3);
}

#[test]
fn prefix_table_follows_prefix_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert!(s.prefix_home("88.118.8").is_none());
    let site = SiteInfo::single("192.0.2.1:2641".parse().unwrap(), "secondary").encode();
    put(
        &s,
        "0.na/88.118",
        vec![HandleValue::new(1, "HS_SITE", site), url(2, "http://info")],
    );
    let home = s.prefix_home("88.118.8").unwrap();
    assert_eq!(home.prefix.as_str(), "88.118");
    assert_eq!(home.service_values.len(), 1);
    assert!(s.prefix_home("88.11").is_none());
    assert_eq!(s.prefixes(), vec![Prefix::parse("88.118").unwrap()]);
    s.write(WriteRequest::one(Mutation::Delete {
        handle: h("0.NA/88.118"),
    }))
    .unwrap()
    .unwrap();
    assert!(s.prefix_home("88.118.8").is_none());
}

#[test]
fn list_and_scan_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for sfx in ["c", "a", "b"] {
        put(&s, &format!("88.1/{sfx}"), vec![url(1, "x")]);
    }
    put(&s, "88.10/z", vec![url(1, "x")]);
    put(&s, "88/z", vec![url(1, "x")]);
    let p = Prefix::parse("88.1").unwrap();
    assert_eq!(
        s.list(&p, None, 10).unwrap(),
        ["88.1/a", "88.1/b", "88.1/c"]
    );
    assert_eq!(s.list(&p, Some("88.1/a"), 1).unwrap(), ["88.1/b"]);
    let all: Vec<String> = s
        .scan(None, 100)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(all.len(), 5);
    let rest: Vec<String> = s
        .scan(Some(&all[1]), 100)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(rest, all[2..]);
}

#[test]
fn concurrent_writers_share_commits_and_get_distinct_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    let mut threads = Vec::new();
    for t in 0..4 {
        let s = Arc::clone(&s);
        threads.push(std::thread::spawn(move || {
            (0..50)
                .map(|i| put(&s, &format!("88/T{t}-{i}"), vec![url(1, "x")]))
                .collect::<Vec<_>>()
        }));
    }
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert_eq!(s.handle_count(), 200);
}

#[test]
fn writes_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.close().unwrap();
    assert!(matches!(
        s.write(WriteRequest::one(Mutation::Put {
            handle: h("88/X"),
            values: vec![]
        })),
        Err(StoreError::Closed)
    ));
}

#[test]
fn aux_space_is_atomic_with_handles() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.write(WriteRequest {
        mutations: vec![
            Mutation::PutAux {
                space: "nodes".into(),
                key: b"n1".to_vec(),
                value: b"active".to_vec(),
            },
            Mutation::PutAux {
                space: "nodes".into(),
                key: b"n2".to_vec(),
                value: b"pending".to_vec(),
            },
            Mutation::PutAux {
                space: "nodesx".into(),
                key: b"n0".to_vec(),
                value: b"other".to_vec(),
            },
            Mutation::Put {
                handle: h("88/A"),
                values: vec![url(1, "x")],
            },
        ],
        idempotency_key: None,
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        s.aux_get("nodes", b"n1").unwrap().as_deref(),
        Some(&b"active"[..])
    );
    let all = s.aux_scan("nodes", None, 10).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(s.aux_scan("nodes", Some(b"n1"), 10).unwrap()[0].0, b"n2");
    // A refused request leaves the aux space untouched too.
    let r = s
        .write(WriteRequest {
            mutations: vec![
                Mutation::DeleteAux {
                    space: "nodes".into(),
                    key: b"n1".to_vec(),
                },
                Mutation::Delete {
                    handle: h("88/MISSING"),
                },
            ],
            idempotency_key: None,
        })
        .unwrap();
    assert!(r.is_err());
    assert!(s.aux_get("nodes", b"n1").unwrap().is_some());
    // Aux data is not in the change log.
    assert_eq!(s.last_seq(), 1);
}

#[test]
fn value_index_finds_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..25 {
        put(
            &s,
            &format!("88/P{i:02}"),
            vec![url(1, &format!("https://Example.cn/p/{i}"))],
        );
    }
    put(&s, "88/OTHER", vec![url(1, "https://other.org/")]);
    put(
        &s,
        "88/SECRET",
        vec![HandleValue::new(1, "HS_SECKEY", "example")],
    );
    assert_eq!(s.count_by_value("URL", "*example*").unwrap(), 25);
    assert_eq!(s.count_by_value("url", "https://example.cn/*").unwrap(), 25);
    assert_eq!(s.count_by_value("HS_SECKEY", "*").unwrap(), 0);
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .find_by_value("URL", "*example.cn*", cursor.as_deref(), 10)
            .unwrap();
        assert!(page.handles.len() <= 10);
        all.extend(page.handles);
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    all.sort();
    assert_eq!(all.len(), 25);
    assert_eq!(all[0], "88/P00");
    // Changing a value moves its index entry.
    put(&s, "88/P00", vec![url(1, "https://moved.org/")]);
    assert_eq!(s.count_by_value("URL", "*example*").unwrap(), 24);
    assert_eq!(
        s.find_by_value("URL", "*moved*", None, 10).unwrap().handles,
        ["88/P00"]
    );
    s.write(WriteRequest::one(Mutation::Delete {
        handle: h("88/P00"),
    }))
    .unwrap()
    .unwrap();
    assert_eq!(s.count_by_value("URL", "*moved*").unwrap(), 0);
}

#[test]
fn several_mutations_of_one_handle_in_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let c = s
        .write(WriteRequest {
            mutations: vec![
                Mutation::Create {
                    handle: h("88/M"),
                    values: vec![url(1, "https://one.example/")],
                },
                Mutation::AddValues {
                    handle: h("88/M"),
                    values: vec![url(2, "https://two.example/")],
                },
                Mutation::RemoveValues {
                    handle: h("88/M"),
                    indexes: vec![1],
                },
            ],
            idempotency_key: None,
        })
        .unwrap()
        .unwrap();
    assert_eq!(c.last_seq, 3);
    assert_eq!(s.changes(1, 10).unwrap().len(), 3);
    assert_eq!(s.handle_count(), 1);
    assert_eq!(
        s.get("88/M").unwrap().unwrap().values().unwrap(),
        vec![url(2, "https://two.example/")]
    );
    assert_eq!(s.count_by_value("URL", "*one*").unwrap(), 0);
    assert_eq!(s.count_by_value("URL", "*two*").unwrap(), 1);
    // Created and deleted in one request: nothing left, counted right.
    s.write(WriteRequest {
        mutations: vec![
            Mutation::Put {
                handle: h("88/TMP"),
                values: vec![url(1, "https://tmp.example/")],
            },
            Mutation::Delete {
                handle: h("88/TMP"),
            },
        ],
        idempotency_key: None,
    })
    .unwrap()
    .unwrap();
    assert!(s.get("88/TMP").unwrap().is_none());
    assert_eq!(s.handle_count(), 1);
    assert_eq!(s.count_by_value("URL", "*tmp*").unwrap(), 0);
}

#[test]
fn the_log_reads_and_trims_inside_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.write(WriteRequest {
            mutations: (1..=10)
                .map(|i| Mutation::Put {
                    handle: h(&format!("88/R{i}")),
                    values: vec![url(1, "x")],
                })
                .collect(),
            idempotency_key: None,
        })
        .unwrap()
        .unwrap();
        let mid: Vec<u64> = s.changes(5, 3).unwrap().iter().map(|c| c.seq).collect();
        assert_eq!(mid, [5, 6, 7]);
        assert_eq!(s.changes(5, 3).unwrap()[0].handle, "88/R5");
        assert_eq!(s.trim_changes(4).unwrap(), 4);
        let rest = s.changes(0, 100).unwrap();
        assert_eq!(rest.first().map(|c| c.seq), Some(4));
        assert_eq!(rest.len(), 7);
        assert_eq!(rest[0].handle, "88/R4");
        s.close().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.first_seq().unwrap(), 4);
    assert_eq!(
        s.changes(9, 10)
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect::<Vec<_>>(),
        [9, 10]
    );
    assert_eq!(put(&s, "88/NEXT", vec![url(1, "y")]), 11);
    assert_eq!(s.changes(10, 10).unwrap().len(), 2);
}

#[test]
fn the_value_index_survives_reopen_and_follows_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        for i in 0..50 {
            put(
                &s,
                &format!("88/I{i}"),
                vec![url(1, &format!("https://idx.example/{i}"))],
            );
        }
        assert_eq!(
            s.count_by_value("URL", "https://idx.example/*").unwrap(),
            50
        );
        s.close().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(
        s.count_by_value("URL", "https://idx.example/*").unwrap(),
        50
    );
    put(&s, "88/I7", vec![url(1, "https://elsewhere.example/")]);
    s.write(WriteRequest::one(Mutation::Delete { handle: h("88/I8") }))
        .unwrap()
        .unwrap();
    assert_eq!(
        s.count_by_value("URL", "https://idx.example/*").unwrap(),
        48
    );
    assert_eq!(
        s.find_by_value("URL", "*elsewhere*", None, 5)
            .unwrap()
            .handles,
        ["88/I7"]
    );
}

#[test]
fn a_large_group_commits_in_several_batches_with_one_consistent_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Arc::new(open(dir.path()));
        // Many requests in flight at once form one group commit larger than
        // one sled batch.
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..3000u32 {
            let tx = tx.clone();
            s.submit(
                WriteRequest {
                    mutations: vec![Mutation::Put {
                        handle: h(&format!("88.{}/G{i}", i % 7)),
                        values: vec![url(1, &format!("https://group.example/{i}"))],
                    }],
                    idempotency_key: Some(format!("op-{i}").into_bytes()),
                },
                Box::new(move |o| tx.send(o).unwrap()),
            );
        }
        let mut seqs: Vec<u64> = (0..3000)
            .map(|_| rx.recv().unwrap().unwrap().unwrap().last_seq)
            .collect();
        seqs.sort();
        assert_eq!(seqs, (1..=3000).collect::<Vec<_>>());
        let log = s.changes(1, 5000).unwrap();
        assert_eq!(log.len(), 3000);
        assert!(log.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(s.handle_count(), 3000);
        assert_eq!(
            s.count_by_value("URL", "https://group.example/*").unwrap(),
            3000
        );
        // An idempotency key alone, with nothing else to write, is kept.
        let only_key = WriteRequest {
            mutations: vec![],
            idempotency_key: Some(b"empty-op".to_vec()),
        };
        assert!(!s.write(only_key.clone()).unwrap().unwrap().replayed);
        assert!(s.write(only_key).unwrap().unwrap().replayed);
        s.close().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.last_seq(), 3000);
    assert_eq!(s.handle_count(), 3000);
    assert_eq!(s.changes(2999, 10).unwrap().len(), 2);
}

/// Refuses a request unless handle `88/FLAG` has a value at index 1: a
/// precondition that depends on another record, as permissions do.
#[derive(Debug)]
struct NeedsFlag;

impl idres_store::WriteGuard for NeedsFlag {
    fn check(
        &self,
        state: &dyn idres_store::StateView,
        _mutations: &[Mutation],
    ) -> Result<(), idres_store::Denied> {
        let flag = state.values("88/FLAG").unwrap_or(None);
        if flag.is_some_and(|v| v.iter().any(|v| v.index == 1)) {
            Ok(())
        } else {
            Err(idres_store::Denied {
                kind: idres_store::DeniedKind::InsufficientPermissions,
                message: "no flag".into(),
            })
        }
    }
}

fn guarded(handle: &str) -> WriteRequest {
    WriteRequest {
        mutations: vec![
            Mutation::Require {
                guard: Arc::new(NeedsFlag),
            },
            Mutation::Put {
                handle: h(handle),
                values: vec![url(1, "https://guarded.example/")],
            },
        ],
        idempotency_key: None,
    }
}

#[test]
fn preconditions_are_judged_against_the_state_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    let refused = s.write(guarded("88/G1")).unwrap();
    assert!(matches!(refused, Err(MutationError::Denied(_))));
    assert!(
        s.get("88/G1").unwrap().is_none(),
        "nothing of a refused request is written"
    );
    // Queued in one group behind the write that sets the flag, and then
    // behind the one that clears it: each sees the state before it.
    let (tx, rx) = std::sync::mpsc::channel();
    let submit = |req: WriteRequest, tag: &'static str| {
        let tx = tx.clone();
        s.submit(
            req,
            Box::new(move |o| {
                tx.send((tag, o.unwrap().is_ok())).unwrap();
            }),
        );
    };
    submit(
        WriteRequest::one(Mutation::Put {
            handle: h("88/FLAG"),
            values: vec![url(1, "on")],
        }),
        "set",
    );
    submit(guarded("88/G2"), "g2");
    submit(
        WriteRequest::one(Mutation::Delete {
            handle: h("88/FLAG"),
        }),
        "clear",
    );
    submit(guarded("88/G3"), "g3");
    let mut got: Vec<_> = (0..4).map(|_| rx.recv().unwrap()).collect();
    got.sort();
    assert_eq!(
        got,
        vec![("clear", true), ("g2", true), ("g3", false), ("set", true)]
    );
    assert!(s.get("88/G2").unwrap().is_some());
    assert!(s.get("88/G3").unwrap().is_none());
}

#[test]
fn private_values_are_never_indexed_and_cursors_are_opaque() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut private = HandleValue::new(2, "EMAIL", "secret-person@example.cn");
    private.permissions = idres_model::Permissions(0x0C);
    put(
        &s,
        "88/P",
        vec![HandleValue::new(1, "EMAIL", "public@example.cn"), private],
    );
    for i in 0..5 {
        put(
            &s,
            &format!("88/Q{i}"),
            vec![HandleValue::new(1, "EMAIL", format!("q{i}@example.cn"))],
        );
    }
    let hits = s.find_by_value("EMAIL", "*secret*", None, 10).unwrap();
    assert!(hits.handles.is_empty());
    assert_eq!(s.count_by_value("EMAIL", "*secret*").unwrap(), 0);
    assert_eq!(s.count_by_value("EMAIL", "*public*").unwrap(), 1);
    let page = s.find_by_value("EMAIL", "*example.cn", None, 2).unwrap();
    let cursor = page.next.unwrap();
    assert!(!cursor.contains(&hex_of(b"example")), "{cursor}");
    assert!(!cursor.contains(&hex_of(b"88/")), "{cursor}");
    let mut all = page.handles.clone();
    let mut next = Some(cursor);
    while let Some(c) = next {
        let p = s
            .find_by_value("EMAIL", "*example.cn", Some(&c), 2)
            .unwrap();
        all.extend(p.handles);
        next = p.next;
    }
    assert_eq!(all.len(), 6);
    // A forged cursor starts from the beginning rather than anywhere it
    // names.
    let forged = hex_of(b"vEMAIL\0q3@example.cn\088/Q3");
    let p = s
        .find_by_value("EMAIL", "*example.cn", Some(&forged), 2)
        .unwrap();
    assert_eq!(p.handles, page.handles);
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
