//! Key spaces of the single sled tree (see `docs/storage.md`).
//!
//! Each key starts with one byte naming its space, so that one atomic
//! batch can change a record, its change-log entry and its indexes, and
//! so that a range scan stays inside one space.

// Metadata lives under `m` + name.
/// Records: `h` + canonical handle.
pub const HANDLE: u8 = b'h';
/// Change log: `c` + sequence number (8 bytes, big-endian).
pub const CHANGE: u8 = b'c';
/// Applied idempotency keys: `i` + client key.
pub const IDEMPOTENCY: u8 = b'i';
/// Auxiliary data: `a` + space + NUL + key.
pub const AUX: u8 = b'a';
/// Value index: `v` + upper-case type + NUL + lower-case value + NUL + handle.
pub const VALUE: u8 = b'v';
/// Link index: `l` + link key + NUL + handle.
pub const LINK: u8 = b'l';

/// Name of the schema-version record.
pub const META_SCHEMA: &[u8] = b"mschema";
/// Name of the handle-count record.
pub const META_HANDLE_COUNT: &[u8] = b"mhandle_count";
/// Name of the last-sequence record.
pub const META_LAST_SEQ: &[u8] = b"mlast_seq";

/// Version of the value index's contents (absent: 1, which also held
/// values without public read).
pub const META_INDEX_VERSION: &[u8] = b"mindex_version";
/// Present once every stored record has passed the value policy.
pub const META_POLICY_APPLIED: &[u8] = b"mpolicy_applied";
/// The scheme configuration the link index was built with.
pub const META_LINK_CONFIG: &[u8] = b"mlink_config";
/// Key of the cipher that makes search cursors opaque.
pub const META_CURSOR_KEY: &[u8] = b"mcursor_key";

pub fn handle(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(HANDLE);
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn change(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = CHANGE;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn idempotency(client_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + client_key.len());
    k.push(IDEMPOTENCY);
    k.extend_from_slice(client_key);
    k
}

/// The first key after every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

pub fn aux(space: &str, key: &[u8]) -> Vec<u8> {
    let mut k = aux_space(space);
    k.extend_from_slice(key);
    k
}

pub fn aux_space(space: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + space.len());
    k.push(AUX);
    k.extend_from_slice(space.as_bytes());
    k.push(0);
    k
}
