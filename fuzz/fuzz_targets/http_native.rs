//! Any bytes as the body of `POST /` with `application/x-hdl-message`: the
//! node's one Handle request handler, over a real store, as the HTTP face
//! calls it. A reply or a drop, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use idres_model::{HandleValue, SiteInfo};
use idres_service::{Handler, NodeIdentity, Peer, Transport};
use idres_store::{Mutation, SledConfig, SledStore, Store, WriteRequest};
use libfuzzer_sys::fuzz_target;

fn handler() -> &'static Handler {
    static HANDLER: OnceLock<(tempfile::TempDir, Handler)> = OnceLock::new();
    &HANDLER
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temporary directory");
            let store = SledStore::open(SledConfig::new(dir.path())).expect("store");
            store
                .write(WriteRequest::one(Mutation::Put {
                    handle: idres_model::Handle::parse("88.118.8/JXDY2106023").expect("handle"),
                    values: vec![HandleValue::new(1, "URL", "https://factory.example/a")],
                }))
                .expect("write")
                .expect("applied");
            let store: Arc<dyn Store> = Arc::new(store);
            let identity = NodeIdentity {
                site: SiteInfo::single("127.0.0.1:2641".parse().expect("addr"), "fuzz"),
                service_handles: Vec::new(),
            };
            (dir, Handler::new(store, identity))
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let h = handler();
    // Writes would wait for the store's writer; the fuzzer reads only.
    if Handler::may_block(data) {
        return;
    }
    let mut out = BytesMut::new();
    let mut peer = Peer::new("127.0.0.1:40000".parse().expect("addr"), Transport::Http);
    let _ = h.handle_from(data, 1_700_000_000, &mut peer, &mut out);
    assert!(out.len() <= idres_wire::ENVELOPE_LEN + idres_wire::MAX_MESSAGE_LEN);
});
