//! Any bytes as a DNS query to the authority, over UDP and over TCP, with a
//! real store behind it: a reply or a silent drop, never a panic; a reply
//! is never larger than its transport allows, and a truncated "slip" of it
//! keeps only header and question.
#![no_main]

use std::sync::{Arc, OnceLock};

use idres_dns::{Authority, DnsConfig, Outcome, Transport};
use idres_model::{HandleValue, Oid};
use idres_store::{Mutation, SledConfig, SledStore, Store, WriteRequest};
use libfuzzer_sys::fuzz_target;

fn authority() -> &'static Authority {
    static AUTHORITY: OnceLock<(tempfile::TempDir, Authority)> = OnceLock::new();
    &AUTHORITY
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temporary directory");
            let store = SledStore::open(SledConfig::new(dir.path())).expect("store");
            let mut request = WriteRequest::default();
            for (oid, n) in [("1.2.156.3001.1", 1u32), ("1.2.156.3001.2", 40)] {
                request.mutations.push(Mutation::Put {
                    handle: Oid::parse(oid).expect("oid").to_handle(),
                    values: (1..=n)
                        .map(|i| HandleValue::new(i, "URL", format!("https://example.cn/{oid}/{i}")))
                        .collect(),
                });
            }
            store.write(request).expect("write").expect("applied");
            let store: Arc<dyn Store> = Arc::new(store);
            let authority = Authority::new(&DnsConfig::default(), store).expect("authority");
            (dir, authority)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let a = authority();
    let mut out = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        if a.answer(data, transport, 1_700_000_000, &mut out) == Outcome::Reply {
            let max = match transport {
                Transport::Udp => 4096,
                _ => 65_535,
            };
            assert!(out.len() <= max, "{} bytes over {transport:?}", out.len());
            if idres_dns::wire::truncate_to_question(&mut out) {
                assert!(out.len() <= 12 + 255 + 4, "a slip of {} bytes", out.len());
                assert_ne!(out[2] & 0x02, 0, "TC set");
            }
        }
    }
});
