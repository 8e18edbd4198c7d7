#![allow(clippy::unwrap_used)]
//! The HTTP face over real sockets on 127.0.0.1:0, with a real sled store
//! in a temporary directory: the JSON API, permissions, reverse lookup,
//! native messages, the web page, TLS with client certificates.

use std::sync::Arc;

use base64::Engine as _;
use idres_http::auth::Identity;
use idres_http::{bootstrap, App, HttpOptions};
use idres_model::{
    AdminPermissions, AdminRef, Handle, HandleValue, Permissions, Prefix, SiteInfo, ValueList,
    ValueReference,
};
use idres_service::{Handler, NodeIdentity};
use idres_store::{Mutation, SledConfig, SledStore, Store, WriteRequest};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

const PREFIX: &str = "88.118.8";
const ADMIN: &str = "300:88.118.8/ADMIN";
const ADMIN_PW: &str = "admin secret";
const EDITOR_PW: &str = "editor secret";
const NOBODY_PW: &str = "nobody secret";

struct Node {
    _dir: tempfile::TempDir,
    store: Arc<SledStore>,
    base: String,
    client: Client,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn put(store: &SledStore, handle: &str, values: Vec<HandleValue>) {
    store
        .write(WriteRequest::one(Mutation::Put {
            handle: Handle::parse(handle).unwrap(),
            values,
        }))
        .unwrap()
        .unwrap();
}

fn admin_value(index: u32, perms: u16, handle: &str, admin_index: u32) -> HandleValue {
    HandleValue::new(
        index,
        "HS_ADMIN",
        AdminRef {
            permissions: AdminPermissions(perms),
            handle: handle.into(),
            index: admin_index,
        }
        .encode(),
    )
}

fn vlist(index: u32, members: &[(&str, u32)]) -> HandleValue {
    HandleValue::new(
        index,
        "HS_VLIST",
        ValueList(
            members
                .iter()
                .map(|(h, i)| ValueReference {
                    handle: (*h).into(),
                    index: *i,
                })
                .collect(),
        )
        .encode(),
    )
}

fn seckey(pw: &str) -> HandleValue {
    let mut v = HandleValue::new(300, "HS_SECKEY", pw.to_owned());
    v.permissions = Permissions(0x0C);
    v
}

/// The permission world of the tests:
/// - 300:88.118.8/ADMIN is in the prefix record's admin group (index 200),
///   set up by `bootstrap::init_prefix`, and may do everything;
/// - 300:88.118.8/EDITOR reaches a second HS_ADMIN of the prefix record
///   (add handle, add and modify value, read value) only through two
///   nested HS_VLIST groups of 88.118.8/GROUPS;
/// - 300:88.118.8/NOBODY has a key but is named by no HS_ADMIN.
fn seed(store: &SledStore) {
    let prefix = Prefix::parse(PREFIX).unwrap();
    let admin = Identity::parse(ADMIN).unwrap();
    let req = bootstrap::init_prefix(
        store,
        &prefix,
        &admin,
        &bootstrap::AdminKey::Secret(ADMIN_PW.as_bytes().to_vec()),
        1,
    )
    .unwrap();
    store.write(req).unwrap().unwrap();
    let record = store.get("0.NA/88.118.8").unwrap().unwrap();
    let mut values = record.values().unwrap();
    values.push(admin_value(
        101,
        AdminPermissions::ADD_HANDLE
            | AdminPermissions::ADD_VALUE
            | AdminPermissions::MODIFY_VALUE
            | AdminPermissions::READ_VALUE,
        "88.118.8/GROUPS",
        1,
    ));
    put(store, "0.NA/88.118.8", values);
    put(
        store,
        "88.118.8/GROUPS",
        vec![
            vlist(1, &[("88.118.8/GROUPS", 2)]),
            vlist(2, &[("88.118.8/EDITOR", 300)]),
        ],
    );
    put(store, "88.118.8/EDITOR", vec![seckey(EDITOR_PW)]);
    put(store, "88.118.8/NOBODY", vec![seckey(NOBODY_PW)]);
}

async fn start_with(
    tls: Option<Arc<rustls::ServerConfig>>,
    client: Client,
    scheme: &str,
    options: HttpOptions,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let secrets =
        Arc::new(idres_auth::SecretBox::load_or_create(&dir.path().join("secrets.key")).unwrap());
    let mut config = SledConfig::new(dir.path().join("db"));
    config.value_policy = Some(Arc::new(idres_auth::SecretPolicy::new(Arc::clone(
        &secrets,
    ))));
    let store = Arc::new(SledStore::open(config).unwrap());
    seed(&store);
    let dyn_store: Arc<dyn Store> = store.clone();
    let handler = Arc::new(Handler::with_auth(
        dyn_store,
        NodeIdentity {
            site: SiteInfo::single("127.0.0.1:2641".parse().unwrap(), "test node"),
            service_handles: vec![],
        },
        idres_service::Auth::new(secrets, None),
    ));
    let app = App::new(handler, options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(idres_http::serve(listener, app, tls, rx));
    Node {
        _dir: dir,
        store,
        base: format!("{scheme}://127.0.0.1:{}", addr.port()),
        client,
        stop,
        task,
    }
}

async fn start() -> Node {
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    start_with(None, client, "http", test_options()).await
}

fn test_options() -> HttpOptions {
    HttpOptions::default()
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some((user, pw)) = auth {
            let user = user.replace(':', "%3A");
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            req = req.header("Authorization", format!("Basic {token}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None, None).await
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

const ADMIN_AUTH: Option<(&str, &str)> = Some((ADMIN, ADMIN_PW));
const EDITOR_AUTH: Option<(&str, &str)> = Some(("300:88.118.8/EDITOR", EDITOR_PW));
const NOBODY_AUTH: Option<(&str, &str)> = Some(("300:88.118.8/NOBODY", NOBODY_PW));
const WRONG_AUTH: Option<(&str, &str)> = Some((ADMIN, "not the secret"));

fn record(url: &str) -> Value {
    json!({"values": [
        {"index": 1, "type": "URL", "data": url},
        {"index": 2, "type": "DESC", "data": {"format": "string", "value": "a pump"}},
        {"index": 100, "type": "HS_ADMIN", "data": {"format": "admin", "value":
            {"handle": "0.NA/88.118.8", "index": "200", "permissions": "011111110011"}}}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_echoes_and_maps_statuses() {
    let node = start().await;
    let (s, v) = node.get("/api/handles/88.118.8/NOPE").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["responseCode"], 100);
    assert_eq!(v["handle"], "88.118.8/NOPE");
    let (s, v) = node.get("/api/handles/no-slash").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["responseCode"], 102);
    let (s, v) = node.get("/api/handles/88.118.8/X?index=zero").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("index"));

    let (s, _) = node
        .call(
            reqwest::Method::PUT,
            "/api/handles/88.118.8/P1?overwrite=false",
            ADMIN_AUTH,
            Some(record("https://example.cn/p1")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // The prefix is case-insensitive and the reply echoes the spelling used.
    let (s, v) = node.get("/api/handles/88.118.8/P1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["handle"], "88.118.8/P1");
    assert_eq!(
        v["values"][0]["data"],
        json!({"format": "string", "value": "https://example.cn/p1"})
    );
    assert_eq!(v["values"][2]["data"]["format"], "admin");
    assert_eq!(v["values"][2]["data"]["value"]["index"], 200);
    let (_, v) = node.get("/api/handles/0.na/88.118.8").await;
    assert_eq!(v["handle"], "0.na/88.118.8");
    // Filters, pretty output, and the empty answer of a filter that finds
    // nothing.
    let (_, v) = node.get("/api/handles/88.118.8/P1?type=URL&index=2").await;
    let idx: Vec<u64> = v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, [1, 2]);
    let resp = node
        .client
        .get(node.url("/api/handles/88.118.8/P1?pretty=true"))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("\n  "));
    let (s, v) = node.get("/api/handles/88.118.8/P1?index=77").await;
    assert_eq!((s, v["responseCode"].as_u64()), (StatusCode::OK, Some(200)));
    // Suffixes are case-sensitive.
    let (s, _) = node.get("/api/handles/88.118.8/p1").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_modify_delete_as_prefix_admin() {
    let node = start().await;
    let h = "/api/handles/88.118.8/JXDY2106023";
    let put = reqwest::Method::PUT;
    let del = reqwest::Method::DELETE;
    let (s, v) = node
        .call(
            put.clone(),
            &format!("{h}?overwrite=false"),
            ADMIN_AUTH,
            Some(record("https://a.example/1")),
        )
        .await;
    assert_eq!(
        (s, v["responseCode"].as_u64()),
        (StatusCode::CREATED, Some(1))
    );
    assert_eq!(v["handle"], "88.118.8/JXDY2106023");
    let (s, v) = node
        .call(
            put.clone(),
            &format!("{h}?overwrite=false"),
            ADMIN_AUTH,
            Some(record("https://a.example/2")),
        )
        .await;
    assert_eq!(
        (s, v["responseCode"].as_u64()),
        (StatusCode::CONFLICT, Some(101))
    );
    let (s, _) = node
        .call(
            put.clone(),
            &format!("{h}?overwrite=true"),
            ADMIN_AUTH,
            Some(record("https://a.example/3")),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Modify one value with a bare string and add another, by index.
    let body = json!({"values": [
        {"index": 1, "type": "URL", "data": "https://a.example/4"},
        {"index": 3, "type": "EMAIL", "data": "ops@a.example"},
        {"index": 9, "type": "DESC", "data": "not chosen"}]});
    let (s, _) = node
        .call(
            put.clone(),
            &format!("{h}?index=1&index=3"),
            ADMIN_AUTH,
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = node.get(h).await;
    let vals = v["values"].as_array().unwrap();
    assert_eq!(vals.len(), 4);
    assert_eq!(vals[0]["data"]["value"], "https://a.example/4");
    assert_eq!(vals[2]["index"], 3);
    // Adding at a taken index without overwrite is a conflict.
    let body = json!([{"index": 3, "type": "EMAIL", "data": "x@a.example"}]);
    let (s, v) = node
        .call(
            put.clone(),
            &format!("{h}?index=3&overwrite=false"),
            ADMIN_AUTH,
            Some(body),
        )
        .await;
    assert_eq!(
        (s, v["responseCode"].as_u64()),
        (StatusCode::CONFLICT, Some(201))
    );
    // Bad values are refused with the field named.
    let body = json!([{"index": 0, "type": "URL", "data": "x"}]);
    let (s, v) = node
        .call(
            put.clone(),
            &format!("{h}?index=various"),
            ADMIN_AUTH,
            Some(body),
        )
        .await;
    assert_eq!(
        (s, v["responseCode"].as_u64()),
        (StatusCode::BAD_REQUEST, Some(202))
    );
    let (s, v) = node
        .call(put.clone(), h, ADMIN_AUTH, Some(json!({"values": "nope"})))
        .await;
    assert_eq!(
        (s, v["responseCode"].as_u64()),
        (StatusCode::BAD_REQUEST, Some(202))
    );
    // Delete a value, a missing value, then the handle.
    let (s, _) = node
        .call(del.clone(), &format!("{h}?index=3"), ADMIN_AUTH, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = node
        .call(del.clone(), &format!("{h}?index=3"), ADMIN_AUTH, None)
        .await;
    assert_eq!(
        (s, v["responseCode"].as_u64()),
        (StatusCode::BAD_REQUEST, Some(200))
    );
    let (s, v) = node.call(del.clone(), h, ADMIN_AUTH, None).await;
    assert_eq!((s, v["responseCode"].as_u64()), (StatusCode::OK, Some(1)));
    let (s, v) = node.call(del.clone(), h, ADMIN_AUTH, None).await;
    assert_eq!(
        (s, v["responseCode"].as_u64()),
        (StatusCode::NOT_FOUND, Some(100))
    );
    // Minting: the server picks the suffix.
    let (s, v) = node
        .call(
            put.clone(),
            "/api/handles/88.118.8/LOT-?mintNewSuffix=true",
            ADMIN_AUTH,
            Some(record("https://a.example/m")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let minted = v["handle"].as_str().unwrap().to_owned();
    assert!(
        minted.starts_with("88.118.8/LOT-") && minted.len() == "88.118.8/LOT-".len() + 36,
        "{minted}"
    );
    let (s, _) = node.get(&format!("/api/handles/{minted}")).await;
    assert_eq!(s, StatusCode::OK);
    node.stop().await;
}

/// Every write path, without credentials, with a wrong password, as an
/// identity lacking the bit, and through an HS_VLIST group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_on_every_write_path() {
    let node = start().await;
    let put = reqwest::Method::PUT;
    let del = reqwest::Method::DELETE;
    let base = record("https://perm.example/base");
    let (s, _) = node
        .call(
            put.clone(),
            "/api/handles/88.118.8/PERM",
            ADMIN_AUTH,
            Some(base.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let one = json!([{"index": 5, "type": "DESC", "data": "added"}]);
    let admin_add = json!([{"index": 101, "type": "HS_ADMIN", "data": {"format": "admin",
        "value": {"handle": "88.118.8/NOBODY", "index": 300, "permissions": "111111111111"}}}]);
    struct Case {
        name: &'static str,
        method: reqwest::Method,
        path: &'static str,
        body: Option<Value>,
        editor_allowed: bool,
    }
    let cases = [
        Case {
            name: "create",
            method: put.clone(),
            path: "/api/handles/88.118.8/NEW?overwrite=false",
            body: Some(record("https://perm.example/new")),
            editor_allowed: true,
        },
        Case {
            name: "replace",
            method: put.clone(),
            path: "/api/handles/88.118.8/PERM?overwrite=true",
            body: Some(
                json!({"values": [{"index": 1, "type": "URL", "data": "https://perm.example/replaced"}]}),
            ),
            editor_allowed: false,
        },
        Case {
            name: "add value",
            method: put.clone(),
            path: "/api/handles/88.118.8/PERM?index=5",
            body: Some(one.clone()),
            editor_allowed: true,
        },
        Case {
            name: "add admin",
            method: put.clone(),
            path: "/api/handles/88.118.8/PERM?index=101",
            body: Some(admin_add.clone()),
            editor_allowed: false,
        },
        Case {
            name: "remove value",
            method: del.clone(),
            path: "/api/handles/88.118.8/PERM?index=2",
            body: None,
            editor_allowed: false,
        },
        Case {
            name: "delete handle",
            method: del.clone(),
            path: "/api/handles/88.118.8/PERM",
            body: None,
            editor_allowed: false,
        },
    ];
    let before = node.get("/api/handles/88.118.8/PERM").await.1;
    for c in &cases {
        let (s, v) = node
            .call(c.method.clone(), c.path, None, c.body.clone())
            .await;
        assert_eq!(
            (s, v["responseCode"].as_u64()),
            (StatusCode::UNAUTHORIZED, Some(402)),
            "{} anonymous",
            c.name
        );
        let (s, v) = node
            .call(c.method.clone(), c.path, WRONG_AUTH, c.body.clone())
            .await;
        assert_eq!(
            (s, v["responseCode"].as_u64()),
            (StatusCode::UNAUTHORIZED, Some(403)),
            "{} wrong password",
            c.name
        );
        let (s, v) = node
            .call(
                c.method.clone(),
                c.path,
                Some(("300:88.118.8/GHOST", "x")),
                c.body.clone(),
            )
            .await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{} unknown identity: {v}",
            c.name
        );
        let (s, v) = node
            .call(c.method.clone(), c.path, NOBODY_AUTH, c.body.clone())
            .await;
        assert_eq!(
            (s, v["responseCode"].as_u64()),
            (StatusCode::FORBIDDEN, Some(401)),
            "{} no permission",
            c.name
        );
        if !c.editor_allowed {
            let (s, v) = node
                .call(c.method.clone(), c.path, EDITOR_AUTH, c.body.clone())
                .await;
            assert_eq!(
                (s, v["responseCode"].as_u64()),
                (StatusCode::FORBIDDEN, Some(401)),
                "{} editor lacks the bit",
                c.name
            );
        }
    }
    // Nothing refused above was written.
    assert_eq!(node.get("/api/handles/88.118.8/PERM").await.1, before);
    assert_eq!(
        node.get("/api/handles/88.118.8/NEW").await.0,
        StatusCode::NOT_FOUND
    );
    // The editor's bits arrive through two nested groups.
    for c in cases.iter().filter(|c| c.editor_allowed) {
        let (s, v) = node
            .call(c.method.clone(), c.path, EDITOR_AUTH, c.body.clone())
            .await;
        assert!(s.is_success(), "{} through HS_VLIST: {s} {v}", c.name);
    }
    assert_eq!(
        node.get("/api/handles/88.118.8/NEW").await.0,
        StatusCode::OK
    );
    // And the admin, through the prefix record's group, may do the rest:
    // the replace leaves only index 1, so index 2 is then gone.
    let expected = [
        ("replace", StatusCode::OK),
        ("add admin", StatusCode::OK),
        ("remove value", StatusCode::BAD_REQUEST),
        ("delete handle", StatusCode::OK),
    ];
    for (name, status) in expected {
        let c = cases.iter().find(|c| c.name == name).unwrap();
        let (s, v) = node
            .call(c.method.clone(), c.path, ADMIN_AUTH, c.body.clone())
            .await;
        assert_eq!(s, status, "{name} as admin: {v}");
    }
    assert_eq!(
        node.get("/api/handles/88.118.8/PERM").await.0,
        StatusCode::NOT_FOUND
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_keys_are_sealed_hidden_and_usable() {
    let node = start().await;
    let body = json!({"values": [
        {"index": 300, "type": "HS_SECKEY", "data": "fresh secret", "permissions": "1111"},
        {"index": 1, "type": "DESC", "data": "an operator"}]});
    let (s, _) = node
        .call(
            reqwest::Method::PUT,
            "/api/handles/88.118.8/OPERATOR",
            ADMIN_AUTH,
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Stored sealed, and not public even though the request said so.
    let stored = node
        .store
        .get("88.118.8/OPERATOR")
        .unwrap()
        .unwrap()
        .values()
        .unwrap();
    let key = stored.iter().find(|v| v.index == 300).unwrap();
    assert!(key.data.starts_with(b"idres-sealed-v1$"), "{:?}", key.data);
    assert!(!key.data.windows(6).any(|w| w == b"fresh "));
    assert!(!key.permissions.public_read());
    let (_, v) = node.get("/api/handles/88.118.8/OPERATOR").await;
    assert_eq!(v["values"].as_array().unwrap().len(), 1);
    // An administrator asking for everything sees the sealed form, never
    // the secret.
    let (s, v) = node
        .call(
            reqwest::Method::GET,
            "/api/handles/88.118.8/OPERATOR?publicOnly=false",
            ADMIN_AUTH,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["values"].as_array().unwrap().len(), 2);
    assert!(!v.to_string().contains("fresh secret"));
    // Anonymous callers asking for everything are told to authenticate.
    let (s, _) = node
        .get("/api/handles/88.118.8/OPERATOR?publicOnly=false")
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = node
        .call(
            reqwest::Method::GET,
            "/api/handles/88.118.8/OPERATOR?publicOnly=false",
            NOBODY_AUTH,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The new key authenticates; it has no permission yet, hence 403 not 401.
    let op = Some(("300:88.118.8/OPERATOR", "fresh secret"));
    let (s, _) = node
        .call(
            reqwest::Method::DELETE,
            "/api/handles/88.118.8/EDITOR",
            op,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = node
        .call(
            reqwest::Method::DELETE,
            "/api/handles/88.118.8/EDITOR",
            Some(("300:88.118.8/OPERATOR", "fresh secreT")),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_lookup_pages_past_a_thousand() {
    let node = start().await;
    let values = |i: usize| {
        vec![
            HandleValue::new(1, "URL", format!("https://factory.example.cn/item/{i:05}")),
            HandleValue::new(2, "DESC", if i % 2 == 0 { "even" } else { "odd" }),
        ]
    };
    let mut req = WriteRequest::default();
    for i in 0..2500 {
        req.mutations.push(Mutation::Put {
            handle: Handle::parse(&format!("88.118.8/ITEM{i:05}")).unwrap(),
            values: values(i),
        });
    }
    let mut private = HandleValue::new(1, "URL", "https://factory.example.cn/item/secret");
    private.permissions = Permissions(0x0C);
    req.mutations.push(Mutation::Put {
        handle: Handle::parse("88.118.8/HIDDEN").unwrap(),
        values: vec![private],
    });
    node.store.write(req).unwrap().unwrap();

    let mut all = std::collections::BTreeSet::new();
    for page in 0..3 {
        let (s, v) = node
            .get(&format!(
                "/hrls/handles?URL=*factory.example.cn/item/*&limit=1000&page={page}"
            ))
            .await;
        assert_eq!(s, StatusCode::OK);
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), if page < 2 { 1000 } else { 500 }, "page {page}");
        for h in list {
            assert!(all.insert(h.as_str().unwrap().to_owned()), "{h} twice");
        }
    }
    assert_eq!(all.len(), 2500);
    assert!(!all.contains("88.118.8/HIDDEN"));
    // The cursor reaches the same handles.
    let mut via_cursor = Vec::new();
    let mut path = String::from("/hrls/handles?URL=HTTPS://FACTORY.EXAMPLE.CN/*&limit=700");
    loop {
        let resp = node.client.get(node.url(&path)).send().await.unwrap();
        let next = resp
            .headers()
            .get("x-next-cursor")
            .map(|c| c.to_str().unwrap().to_owned());
        let list: Vec<String> = resp.json().await.unwrap();
        via_cursor.extend(list);
        match next {
            Some(c) => {
                path =
                    format!("/hrls/handles?URL=HTTPS://FACTORY.EXAMPLE.CN/*&limit=700&cursor={c}")
            }
            None => break,
        }
    }
    assert_eq!(via_cursor.len(), 2500);
    assert_eq!(
        via_cursor
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        all
    );
    // Criteria combine; records come with retrieverecords.
    let (_, v) = node
        .get("/hrls/handles?URL=*item/0001*&DESC=even&retrieverecords=true")
        .await;
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 5);
    assert!(list
        .iter()
        .all(|r| r["values"][1]["data"]["value"] == "even"));
    // A value without public read is never indexed, so no search matches
    // it, whoever asks.
    let (_, v) = node
        .call(
            reqwest::Method::GET,
            "/hrls/handles?URL=*item/secret",
            ADMIN_AUTH,
            None,
        )
        .await;
    assert_eq!(v, json!([]));
    let (_, v) = node.get("/hrls/handles?URL=*item/secret").await;
    assert_eq!(v, json!([]));
    let (s, _) = node.get("/hrls/handles?limit=5").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = node
        .get(&format!("/hrls/handles?URL={}", "*a".repeat(17)))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = node
        .call(
            reqwest::Method::GET,
            "/hrls/handles?URL=*",
            WRONG_AUTH,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Listing a prefix, with its total, needs the list-handles bit.
    let (s, v) = node
        .call(
            reqwest::Method::GET,
            "/api/handles?prefix=88.118.8&page=2&pageSize=1000",
            ADMIN_AUTH,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["totalCount"], 2500 + 5);
    assert_eq!(v["handles"].as_array().unwrap().len(), 505);
    let (s, _) = node.get("/api/handles?prefix=88.118.8").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = node
        .call(
            reqwest::Method::GET,
            "/api/handles?prefix=88.118.8",
            EDITOR_AUTH,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, v) = node.get("/api/prefixes").await;
    assert_eq!(v["prefixes"], json!(["88.118.8"]));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_messages_over_post() {
    let node = start().await;
    put(
        &node.store,
        "88.118.8/NATIVE",
        vec![HandleValue::new(1, "URL", "https://n.example/")],
    );
    let request = idres_service::client::encode_request(
        &idres_wire::Request::Resolution {
            handle: "88.118.8/NATIVE",
            indexes: vec![],
            types: vec![],
        },
        77,
        0,
    );
    let resp = node
        .client
        .post(node.url("/"))
        .header("Content-Type", "application/x-hdl-message")
        .body(request)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-hdl-message");
    let bytes = resp.bytes().await.unwrap();
    let reply = idres_service::client::decode_reply(&bytes, 1).unwrap();
    assert_eq!(reply.request_id, 77);
    match reply.reply {
        idres_wire::Reply::Resolution { values, .. } => {
            assert_eq!(&values[0].data[..], b"https://n.example/")
        }
        other => panic!("{other:?}"),
    }
    let resp = node
        .client
        .post(node.url("/"))
        .header("Content-Type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = node
        .client
        .post(node.url("/"))
        .header("Content-Type", "application/x-hdl-message")
        .body(vec![0u8; 7])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_page_redirect_and_negotiation() {
    let node = start().await;
    let mut desc = HandleValue::new(2, "DESC", "<b>pump</b>");
    desc.ttl = 3600;
    put(
        &node.store,
        "88.118.8/WEB",
        vec![
            HandleValue::new(1, "URL", "https://web.example.cn/p?id=1"),
            desc,
            HandleValue::new(3, "EMAIL", "qa@web.example.cn"),
        ],
    );
    let resp = node
        .client
        .get(node.url("/88.118.8/WEB"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()["location"], "https://web.example.cn/p?id=1");
    let resp = node
        .client
        .get(node.url("/88.118.8/WEB?noredirect"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = resp.text().await.unwrap();
    assert!(html.contains("<table id=\"values\">"));
    assert!(html.contains("<a href=\"https://web.example.cn/p?id=1\""));
    assert!(html.contains("mailto:qa@web.example.cn"));
    assert!(
        html.contains("&lt;b&gt;pump&lt;/b&gt;"),
        "markup in data is escaped"
    );
    assert!(html.contains("3600 s (1 hour)"));
    assert!(
        !html.contains("http://") && !html.contains("<script"),
        "no external assets, no script"
    );
    let resp = node
        .client
        .get(node.url("/88.118.8/WEB"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["handle"], "88.118.8/WEB");
    let resp = node
        .client
        .get(node.url("/?handle=88.118.8%2FWEB"))
        .send()
        .await
        .unwrap();
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("<h2 id=\"result\">88.118.8/WEB</h2>"));
    let resp = node
        .client
        .get(node.url("/88.118.8/MISSING"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("is not registered at this node"));
    let resp = node
        .client
        .get(node.url("/?handle=nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("<code>nothing</code>: No &#39;/&#39; between prefix and suffix (at byte 7)"));
    let (s, v) = node.get("/api/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["paths"]["/api/handles/{prefix}/{suffix}"]["put"].is_object());
    let metrics = node
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("idres_requests_total{face=\"http\",op=\"web\",code=\"404\"} 1")
            && metrics.contains("idres_requests_total{face=\"http\",op=\"web\",code=\"400\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("idres_request_duration_seconds_bucket{"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_for_prefixes_homed_elsewhere() {
    let node = start().await;
    let site = SiteInfo::single("192.0.2.10:2641".parse().unwrap(), "secondary node");
    put(
        &node.store,
        "0.NA/99.1",
        vec![HandleValue::new(1, "HS_SITE", site.encode())],
    );
    let (s, v) = node.get("/api/handles/99.1/X").await;
    assert_eq!(s, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(v["responseCode"], 302);
    assert_eq!(v["referral"], "0.NA/99.1");
    assert_eq!(v["values"][0]["type"], "HS_SITE");
    let html = node
        .client
        .get(node.url("/99.1/X"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("delegated to another node") && html.contains("192.0.2.10"));
    node.stop().await;
}

mod tls {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    fn leaf(ca: &Ca, cn: &str, sans: Vec<String>) -> (String, String) {
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_certificates_name_identities() {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = ca("test server CA");
        let client_ca = ca("test client CA");
        let (cert, key) = leaf(
            &server_ca,
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
        );
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        std::fs::write(dir.path().join("clients.pem"), client_ca.cert.pem()).unwrap();
        let config = idres_http::tls::server_config(&idres_http::TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: Some(dir.path().join("clients.pem")),
        })
        .unwrap();
        let root = reqwest::Certificate::from_pem(server_ca.cert.pem().as_bytes()).unwrap();
        let client_with = |identity: Option<(String, String)>| {
            let mut b = Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(root.clone())
                .timeout(std::time::Duration::from_secs(30));
            if let Some((c, k)) = identity {
                b = b.identity(reqwest::Identity::from_pem(format!("{c}{k}").as_bytes()).unwrap());
            }
            b.build().unwrap()
        };
        let admin = client_with(Some(leaf(&client_ca, ADMIN, vec![])));
        let node = start_with(Some(config), admin.clone(), "https", test_options()).await;
        let body = record("https://tls.example/1");
        let url = node.url("/api/handles/88.118.8/TLS");
        let resp = admin.put(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
        let resp = admin
            .put(&url)
            .header("Authorization", "Handle clientCert=\"true\"")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // A certificate naming an identity without permission.
        let nobody = client_with(Some(leaf(&client_ca, "300:88.118.8/NOBODY", vec![])));
        let resp = nobody.delete(&url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        // No certificate: anonymous, but Basic still works over TLS.
        let plain = client_with(None);
        assert_eq!(
            plain.delete(&url).send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        let resp = plain
            .delete(&url)
            .header("Authorization", "Handle clientCert=\"true\"")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            plain.get(&url).send().await.unwrap().status(),
            StatusCode::OK
        );
        // A certificate from another CA does not get through the handshake.
        let rogue_ca = ca("rogue CA");
        let rogue = client_with(Some(leaf(&rogue_ca, ADMIN, vec![])));
        assert!(rogue.delete(&url).send().await.is_err());
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("300%3A88.118.8%2FADMIN:{ADMIN_PW}"));
        let resp = plain
            .delete(&url)
            .header("Authorization", format!("Basic {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let options = HttpOptions {
        idle_timeout: std::time::Duration::from_millis(300),
        ..test_options()
    };
    let node = start_with(None, Client::new(), "http", options).await;
    let addr = node.base.trim_start_matches("http://").to_owned();
    // A connection that never sends anything.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A keep-alive connection that made one request, then went quiet.
    let mut used = tokio::net::TcpStream::connect(&addr).await.unwrap();
    used.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = used.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    for conn in [&mut silent, &mut used] {
        let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the server kept an idle connection open");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_out_that_address() {
    let options = HttpOptions {
        max_auth_failures: 3,
        auth_lockout: std::time::Duration::from_secs(600),
        ..test_options()
    };
    let node = start_with(None, Client::new(), "http", options).await;
    let path = "/api/handles/88.118.8/LOCK";
    let body = Some(record("https://lock.example/"));
    for _ in 0..3 {
        let (s, v) = node
            .call(reqwest::Method::PUT, path, WRONG_AUTH, body.clone())
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(
            v["message"].as_str().unwrap().contains("wrong secret key"),
            "{v}"
        );
    }
    // Now even the right secret is refused from here, unchecked.
    let (s, v) = node
        .call(reqwest::Method::PUT, path, ADMIN_AUTH, body.clone())
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("too many failed attempts"),
        "{v}"
    );
    assert_eq!(node.get(path).await.0, StatusCode::NOT_FOUND);
    // Other identities are not affected.
    let (s, v) = node
        .call(reqwest::Method::PUT, path, EDITOR_AUTH, body)
        .await;
    assert!(s.is_success(), "{s} {v}");
    node.stop().await;
}
