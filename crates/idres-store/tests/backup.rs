//! Online backup and restore of a real sled store: a backup taken while a
//! writer keeps writing restores to the store exactly as it was at the
//! backup's sequence number; damaged or truncated files are refused with
//! the offset of the fault, and nothing is written.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use idres_model::{Handle, HandleValue};
use idres_store::backup::{self, BackupError};
use idres_store::{Mutation, SledConfig, SledStore, Store, WriteRequest};

fn open(dir: &std::path::Path) -> SledStore {
    let mut c = SledConfig::new(dir);
    c.read_cache_bytes = 0;
    SledStore::open(c).unwrap()
}

fn put(store: &SledStore, key: &str, data: &str) -> u64 {
    store
        .write(WriteRequest {
            mutations: vec![
                Mutation::Put {
                    handle: Handle::parse(key).unwrap(),
                    values: vec![HandleValue::new(1, "URL", data.as_bytes().to_vec())],
                },
                Mutation::PutAux {
                    space: "test.aux".into(),
                    key: key.as_bytes().to_vec(),
                    value: data.as_bytes().to_vec(),
                },
            ],
            idempotency_key: Some(format!("k-{key}-{data}").into_bytes()),
        })
        .unwrap()
        .unwrap()
        .last_seq
}

fn url_of(store: &dyn Store, key: &str) -> Option<String> {
    store.get(key).unwrap().map(|r| {
        let v = r.values().unwrap();
        String::from_utf8(v[0].data.to_vec()).unwrap()
    })
}

#[test]
fn backup_under_writes_restores_the_point_in_time() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Arc::new(open(&tmp.path().join("src")));
    for i in 0..3000 {
        put(&src, &format!("88.1/BASE{i}"), &format!("https://base/{i}"));
    }
    // A writer that keeps going during the backup; it notes each
    // acknowledged write with its sequence number.
    let log: Arc<Mutex<Vec<(u64, String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (src, log, stop) = (Arc::clone(&src), Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 200_000 {
                let key = format!("88.1/BASE{}", i % 3500);
                let data = format!("https://live/{i}");
                let seq = put(&src, &key, &data);
                log.lock().unwrap().push((seq, key, data));
                i += 1;
            }
        })
    };
    while log.lock().unwrap().len() < 200 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let file = tmp.path().join("b.idresbak");
    let (_, trailer) = src
        .backup(std::fs::File::create(&file).unwrap(), &mut |_| {})
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(
        log.iter().any(|(s, _, _)| *s > trailer.last_seq),
        "writes went on after the backup"
    );
    assert!(trailer.redo_ops > 0, "writes landed during the copy");

    let dst_dir = tmp.path().join("dst");
    let restored = backup::restore(&file, &dst_dir, &mut |_, _| {}).unwrap();
    assert_eq!(restored, trailer);
    let dst = open(&dst_dir);
    assert_eq!(dst.last_seq(), trailer.last_seq);
    // Expected state: the base records, then every acknowledged write up
    // to the backup's sequence number.
    let mut expect: HashMap<String, String> = (0..3000)
        .map(|i| (format!("88.1/BASE{i}"), format!("https://base/{i}")))
        .collect();
    for (seq, key, data) in &log {
        if *seq <= trailer.last_seq {
            expect.insert(key.clone(), data.clone());
        }
    }
    assert_eq!(dst.handle_count(), expect.len());
    for i in 0..3500 {
        let key = format!("88.1/BASE{i}");
        assert_eq!(url_of(&dst, &key), expect.get(&key).cloned(), "{key}");
        assert_eq!(
            dst.aux_get("test.aux", key.as_bytes())
                .unwrap()
                .map(|v| String::from_utf8(v).unwrap()),
            expect.get(&key).cloned(),
            "aux {key}"
        );
    }
    // The change log is the source's, entry for entry, up to that point.
    let want = src.changes(1, usize::MAX).unwrap();
    let want: Vec<_> = want
        .into_iter()
        .filter(|c| c.seq <= trailer.last_seq)
        .collect();
    assert_eq!(dst.changes(1, usize::MAX).unwrap(), want);
    assert_eq!(dst.first_seq().unwrap(), src.first_seq().unwrap());
    // And the restored store takes writes after it.
    assert_eq!(put(&dst, "88.1/NEW", "https://new"), trailer.last_seq + 1);
}

fn small_backup(dir: &std::path::Path) -> std::path::PathBuf {
    let src = open(&dir.join("src"));
    for i in 0..500 {
        put(&src, &format!("88.1/X{i}"), &format!("https://x/{i}"));
    }
    let file = dir.join("b.idresbak");
    src.backup(std::fs::File::create(&file).unwrap(), &mut |_| {})
        .unwrap();
    file
}

#[test]
fn damaged_and_truncated_backups_are_refused_with_the_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let file = small_backup(tmp.path());
    let good = std::fs::read(&file).unwrap();
    backup::verify(&file, &mut |_| {}).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "flipped",
            {
                let mut b = good.clone();
                let at = b.len() / 2;
                b[at] ^= 0x10;
                b
            },
            "checksum",
        ),
        ("truncated", good[..good.len() - 100].to_vec(), "truncated"),
        (
            "cut after a frame",
            {
                // Drop the trailer frame whole (kind, length, 80 bytes, crc).
                good[..good.len() - (5 + 80 + 4)].to_vec()
            },
            "without its trailer",
        ),
        ("empty", Vec::new(), "empty"),
        ("not a backup", b"{\"handle\":\"88/1\"}\n".to_vec(), "magic"),
        (
            "extra bytes",
            {
                let mut b = good.clone();
                b.push(0);
                b
            },
            "after the trailer",
        ),
    ];
    for (name, bytes, want) in cases {
        let bad = tmp.path().join(format!("{name}.idresbak"));
        std::fs::write(&bad, &bytes).unwrap();
        let target = tmp.path().join(format!("restored-{name}"));
        let err = backup::restore(&bad, &target, &mut |_, _| {}).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(want), "{name}: {text}");
        match err {
            BackupError::Corrupt { offset, .. } => {
                assert!(offset <= bytes.len() as u64, "{name}: offset {offset}")
            }
            other => panic!("{name}: {other}"),
        }
        assert!(!target.exists(), "{name}: nothing is written");
    }
    // A flipped byte is located within the frame that holds it.
    let mut b = good.clone();
    let at = 5000;
    b[at] ^= 1;
    let bad = tmp.path().join("at.idresbak");
    std::fs::write(&bad, &b).unwrap();
    match backup::verify(&bad, &mut |_| {}).unwrap_err() {
        BackupError::Corrupt { offset, .. } => {
            assert!(
                offset <= at as u64 && at as u64 - offset <= 1 << 21,
                "{offset}"
            )
        }
        other => panic!("{other}"),
    }
}

#[test]
fn restore_never_writes_over_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let file = small_backup(tmp.path());
    let err = backup::restore(&file, &tmp.path().join("src"), &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, BackupError::TargetNotEmpty(_)), "{err}");
}
