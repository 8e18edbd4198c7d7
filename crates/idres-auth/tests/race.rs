//! Permission decided against the state written: many writers race one
//! revocation through a real sled store's group-committing writer.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use idres_auth::{Caller, Identity, PermissionGuard};
use idres_model::{
    types, AdminPermissions, AdminRef, Handle, HandleValue, ValueList, ValueReference,
};
use idres_store::{Mutation, MutationError, SledConfig, SledStore, Store, WriteRequest};

fn h(s: &str) -> Handle {
    Handle::parse(s).unwrap()
}

fn group(members: &[&str]) -> HandleValue {
    HandleValue::new(
        200,
        types::HS_VLIST,
        ValueList(
            members
                .iter()
                .map(|m| ValueReference {
                    handle: (*m).into(),
                    index: 300,
                })
                .collect(),
        )
        .encode(),
    )
}

fn prefix_record(members: &[&str]) -> Vec<HandleValue> {
    vec![
        HandleValue::new(
            100,
            types::HS_ADMIN,
            AdminRef {
                permissions: AdminPermissions::ALL,
                handle: "0.NA/88".into(),
                index: 200,
            }
            .encode(),
        ),
        group(members),
    ]
}

fn who(s: &str) -> Caller {
    Caller::Authenticated(Identity::parse(s).unwrap())
}

#[derive(Debug, Clone)]
enum Op {
    Put(String, u32),
    Revoke,
}

#[test]
fn no_write_lands_on_a_permission_revoked_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(SledConfig::new(dir.path())).unwrap());
    store
        .write(WriteRequest::one(Mutation::Put {
            handle: h("0.NA/88"),
            values: prefix_record(&["88/A", "88/B"]),
        }))
        .unwrap()
        .unwrap();

    const WRITERS: usize = 8;
    const EACH: u32 = 150;
    let barrier = Arc::new(Barrier::new(WRITERS + 1));
    let b_landed = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        let b_landed = Arc::clone(&b_landed);
        threads.push(std::thread::spawn(move || {
            // Even writers act as A (never revoked), odd ones as B.
            let me = if w % 2 == 0 { "300:88/A" } else { "300:88/B" };
            let caller = who(me);
            barrier.wait();
            let mut done = Vec::new();
            for i in 0..EACH {
                // Writers share handles, so the final state depends on the
                // order in which permitted writes landed.
                let handle = format!("88/item-{}", i % 40);
                let m = Mutation::Put {
                    handle: h(&handle),
                    values: vec![HandleValue::new(
                        1,
                        "URL",
                        format!("https://{w}.example/{i}"),
                    )],
                };
                let outcome = store
                    .write(PermissionGuard::request(&caller, vec![m]))
                    .unwrap();
                if w % 2 == 1 && outcome.is_ok() {
                    b_landed.fetch_add(1, Ordering::Relaxed);
                }
                done.push((me, Op::Put(handle, w as u32 * 1000 + i), outcome));
            }
            done
        }));
    }
    let revoker = {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        let b_landed = Arc::clone(&b_landed);
        std::thread::spawn(move || {
            barrier.wait();
            // Revoke in the middle of B's writes: once some have landed.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while b_landed.load(Ordering::Relaxed) < 20 && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            // A removes B from the administrators' group.
            let m = Mutation::ModifyValues {
                handle: h("0.NA/88"),
                values: vec![group(&["88/A"])],
            };
            let outcome = store
                .write(PermissionGuard::request(&who("300:88/A"), vec![m]))
                .unwrap();
            ("300:88/A", Op::Revoke, outcome)
        })
    };
    let mut all: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.push(revoker.join().unwrap());

    let revoked_at = all
        .iter()
        .find_map(|(_, op, o)| match (op, o) {
            (Op::Revoke, Ok(c)) => Some(c.last_seq),
            _ => None,
        })
        .expect("the revocation is permitted and lands");
    let (mut b_before, mut b_refused) = (0, 0);
    for (me, op, outcome) in &all {
        match (me, op, outcome) {
            (&"300:88/B", Op::Put(..), Ok(c)) => {
                assert!(
                    c.last_seq < revoked_at,
                    "a write of B landed after the revocation"
                );
                b_before += 1;
            }
            (&"300:88/B", Op::Put(..), Err(MutationError::Denied(_))) => b_refused += 1,
            (&"300:88/A", Op::Put(..), Ok(_)) | (_, Op::Revoke, Ok(_)) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    // The race really raced: B got some writes in, and lost the rest.
    assert!(
        b_before > 0 && b_refused > 0,
        "before {b_before}, refused {b_refused}"
    );

    // The final state is what the permitted writes give applied one by
    // one in the order the writer committed them.
    let mut permitted: Vec<(u64, String, String)> = all
        .iter()
        .filter_map(|(_, op, o)| match (op, o) {
            (Op::Put(handle, _), Ok(c)) => Some((c.last_seq, handle.clone(), String::new())),
            _ => None,
        })
        .collect();
    permitted.sort();
    let mut serial: BTreeMap<String, u64> = BTreeMap::new();
    for (seq, handle, _) in &permitted {
        serial.insert(handle.clone(), *seq);
    }
    for (handle, seq) in &serial {
        let writer = all
            .iter()
            .find_map(|(_, op, o)| match (op, o) {
                (Op::Put(hh, tag), Ok(c)) if hh == handle && c.last_seq == *seq => Some(*tag),
                _ => None,
            })
            .unwrap();
        let rec = store.get(handle).unwrap().unwrap().values().unwrap();
        let expected = format!("https://{}.example/{}", writer / 1000, writer % 1000);
        assert_eq!(rec[0].data, expected.as_bytes(), "{handle}");
    }
}
