//! `idres handle` against the real `idres serve`: native administration
//! with a secret key and with SM2 and RSA keys from `idres keygen`, a
//! Handle.Net batch file, refusals, and certified resolution.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use idres_model::HandleValue;
use idres_service::client;
use idres_tests::{idres, Node};
use idres_wire::Reply;

fn run(args: &[&str]) -> (bool, String) {
    let out = idres(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn values(node: &Node, handle: &str) -> Option<Vec<HandleValue>> {
    let r = client::resolve(node.handle_addr(), handle, &[], &[], true).unwrap();
    match r.reply {
        Reply::Resolution { values, .. } => Some(values),
        _ => None,
    }
}

/// A data directory where 300:88.118.8/ADMIN (secret key), 300:88.118.8/SM2
/// and 300:88.118.8/RSA (keys made by `idres keygen`) administer 88.118.8.
fn prepared(dir: &Path) {
    let data = dir.join("data");
    std::fs::write(dir.join("secret"), "s3cret\n").unwrap();
    for (alg, name) in [("sm2", "SM2"), ("rsa", "RSA")] {
        let key = dir.join(format!("{alg}.pem"));
        let public = dir.join(format!("{alg}.pub"));
        let (ok, text) = run(&[
            "keygen",
            "--algorithm",
            alg,
            "--out",
            p(&key),
            "--public-out",
            p(&public),
        ]);
        assert!(ok, "{text}");
        let (ok, text) = run(&[
            "init-prefix",
            "--data-dir",
            p(&data),
            "--prefix",
            "88.118.8",
            "--admin",
            &format!("300:88.118.8/{name}"),
            "--pubkey",
            p(&public),
        ]);
        assert!(ok, "{text}");
    }
    let (ok, text) = run(&[
        "init-prefix",
        "--data-dir",
        p(&data),
        "--prefix",
        "88.118.8",
        "--admin",
        "300:88.118.8/ADMIN",
        "--secret-file",
        p(&dir.join("secret")),
    ]);
    assert!(ok, "{text}");
}

#[test]
fn the_command_line_client_administers_with_each_kind_of_key() {
    let dir = tempfile::tempdir().unwrap();
    prepared(dir.path());
    let node = Node::start(&dir.path().join("data"), &[], &["handle"]);
    let server = node.handle_addr().to_string();
    let secret = dir.path().join("secret");
    let sm2 = dir.path().join("sm2.pem");
    let rsa = dir.path().join("rsa.pem");
    let as_admin = [
        "handle",
        "--server",
        &server,
        "--auth",
        "300:88.118.8/ADMIN",
        "--secret-file",
        p(&secret),
    ];
    let as_sm2 = [
        "handle",
        "--server",
        &server,
        "--auth",
        "300:88.118.8/SM2",
        "--key",
        p(&sm2),
    ];
    let as_rsa = [
        "handle",
        "--server",
        &server,
        "--auth",
        "300:88.118.8/RSA",
        "--key",
        p(&rsa),
    ];

    let (ok, text) = run(&[
        &as_admin[..],
        &[
            "create",
            "88.118.8/CLI",
            "--value",
            "1 URL https://example.cn/cli",
        ],
    ]
    .concat());
    assert!(ok && text.contains("created 88.118.8/CLI"), "{text}");
    let (ok, text) = run(&[
        &as_sm2[..],
        &["add", "88.118.8/CLI", "--value", "2 EMAIL ops@example.cn"],
    ]
    .concat());
    assert!(ok, "{text}");
    let (ok, text) = run(&[
        &as_rsa[..],
        &[
            "modify",
            "88.118.8/CLI",
            "--value",
            "1 URL https://example.cn/changed",
        ],
    ]
    .concat());
    assert!(ok, "{text}");
    let v = values(&node, "88.118.8/CLI").unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(&v[0].data[..], b"https://example.cn/changed");
    let (ok, text) = run(&[&as_sm2[..], &["remove", "88.118.8/CLI", "--index", "2"]].concat());
    assert!(ok, "{text}");
    assert_eq!(values(&node, "88.118.8/CLI").unwrap().len(), 1);
    let (ok, text) = run(&[&as_rsa[..], &["list", "88.118.8"]].concat());
    assert!(ok && text.lines().any(|l| l == "88.118.8/CLI"), "{text}");

    // Refusals: a wrong secret, and a key that is not the identity's.
    std::fs::write(dir.path().join("wrong"), "not it").unwrap();
    let (ok, text) = run(&[
        "handle",
        "--server",
        &server,
        "--auth",
        "300:88.118.8/ADMIN",
        "--secret-file",
        p(&dir.path().join("wrong")),
        "delete",
        "88.118.8/CLI",
    ]);
    assert!(!ok && text.contains("403"), "{text}");
    let (ok, text) = run(&[
        "handle",
        "--server",
        &server,
        "--auth",
        "300:88.118.8/RSA",
        "--key",
        p(&sm2),
        "delete",
        "88.118.8/CLI",
    ]);
    assert!(!ok && text.contains("403"), "{text}");
    assert!(
        values(&node, "88.118.8/CLI").is_some(),
        "nothing refused was written"
    );

    // A Handle.Net batch file: going on past a failure, then stopping at one.
    let batch = dir.path().join("ops.txt");
    std::fs::write(
        &batch,
        format!(
            "AUTHENTICATE SECKEY:300:88.118.8/ADMIN\ns3cret\n\n\
             CREATE 88.118.8/B-1\n\
             100 HS_ADMIN 86400 1110 ADMIN 300:111111111111:0.NA/88.118.8\n\
             1 URL 86400 1110 UTF8 https://example.cn/b1\n\n\
             CREATE 88.118.8/B-1\n1 URL 86400 1110 UTF8 https://example.cn/again\n\n\
             AUTHENTICATE PUBKEY:300:88.118.8/SM2\n{}\n\n\
             ADD 88.118.8/B-1\n2 DESC 86400 1110 UTF8 added with SM2\n\n\
             REMOVE 1:88.118.8/B-1\n",
            p(&sm2)
        ),
    )
    .unwrap();
    let (ok, text) = run(&["handle", "--server", &server, "batch", p(&batch)]);
    assert!(!ok, "a failed operation fails the batch: {text}");
    assert!(
        text.contains("==>SUCCESS[2]: create 88.118.8/B-1"),
        "{text}"
    );
    assert!(
        text.contains("==>FAILURE[3]") && text.contains("101"),
        "{text}"
    );
    assert!(
        text.contains("==>SUCCESS[5]") && text.contains("==>SUCCESS[6]"),
        "{text}"
    );
    let v = values(&node, "88.118.8/B-1").unwrap();
    assert_eq!(v.iter().map(|v| v.index).collect::<Vec<_>>(), [100, 2]);
    let (ok, text) = run(&[
        "handle",
        "--server",
        &server,
        "batch",
        "--stop-on-error",
        p(&batch),
    ]);
    assert!(
        !ok && text.contains("==>FAILURE[2]") && !text.contains("[5]"),
        "{text}"
    );
}
