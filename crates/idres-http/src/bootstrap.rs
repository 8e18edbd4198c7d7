//! The first administrator of a prefix.
//!
//! A prefix's authority lives in its prefix record `0.NA/<prefix>`; by the
//! convention of Handle services, that record's HS_ADMIN (index 100) grants
//! every permission to the group at its own index 200, an HS_VLIST listing
//! the administrators. [`init_prefix`] writes that, adds the new
//! administrator to the group (keeping members already there), and gives
//! the administrator's handle its key (a secret key, which the store seals
//! and hides, or a public key) and an HS_ADMIN pointing at the same group,
//! all in one atomic write. Other
//! values of both records are kept, so running it again, or on a prefix
//! that is already homed here, is harmless.

use bytes::Bytes;
use idres_model::{
    types, AdminPermissions, AdminRef, HandleValue, Permissions, Prefix, ValueList, ValueReference,
};
use idres_store::{Mutation, Store, StoreError, WriteRequest};

use crate::auth::Identity;

/// The key an administrator proves itself with.
#[derive(Debug, Clone)]
pub enum AdminKey {
    /// A secret key (HS_SECKEY): the store keeps it sealed.
    Secret(Vec<u8>),
    /// A public key (HS_PUBKEY), as its data is stored: a PEM
    /// SubjectPublicKeyInfo or Handle's binary form.
    Public(Vec<u8>),
}

impl AdminKey {
    fn value_type(&self) -> &'static str {
        match self {
            AdminKey::Secret(_) => types::HS_SECKEY,
            AdminKey::Public(_) => types::HS_PUBKEY,
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            AdminKey::Secret(d) | AdminKey::Public(d) => d,
        }
    }
}

/// Index of the prefix record's HS_ADMIN, and of the identity handle's.
pub const ADMIN_INDEX: u32 = 100;
/// Index of the administrators' group in the prefix record.
pub const GROUP_INDEX: u32 = 200;

/// Why the first administrator could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("the record {0} is corrupt")]
    Corrupt(String),
    /// The identity's index is taken by a value of another type.
    #[error("{identity}: index {index} holds a {found} value, not a key of this kind")]
    IndexTaken {
        /// The identity.
        identity: String,
        /// Its index.
        index: u32,
        /// The type found there.
        found: String,
    },
    /// The identity's index collides with the record's own admin values.
    #[error("the identity's index {0} is reserved for HS_ADMIN (100) or the group (200)")]
    ReservedIndex(u32),
    /// An empty key.
    #[error("the key is empty")]
    EmptySecret,
    /// A public key this node cannot use.
    #[error("the public key cannot be used: {0}")]
    BadPublicKey(String),
}

fn current(store: &dyn Store, key: &str) -> Result<Vec<HandleValue>, BootstrapError> {
    match store.get(key)? {
        None => Ok(Vec::new()),
        Some(r) => r
            .values()
            .map_err(|_| BootstrapError::Corrupt(key.to_owned())),
    }
}

fn upsert(values: &mut Vec<HandleValue>, v: HandleValue) {
    match values.iter_mut().find(|o| o.index == v.index) {
        Some(o) => *o = v,
        None => values.push(v),
    }
}

/// The write that makes `admin` (proving itself with `key`) an
/// administrator of `prefix`, from the store's current records.
pub fn init_prefix(
    store: &dyn Store,
    prefix: &Prefix,
    admin: &Identity,
    key: &AdminKey,
    now: u32,
) -> Result<WriteRequest, BootstrapError> {
    if key.data().is_empty() {
        return Err(BootstrapError::EmptySecret);
    }
    if let AdminKey::Public(data) = key {
        idres_auth::pubkey::PublicKey::from_hs_pubkey(data)
            .map_err(|e| BootstrapError::BadPublicKey(e.to_string()))?;
    }
    let record = prefix.record_handle();
    let same_handle = admin.handle.key() == record.key();
    if same_handle && (admin.index == ADMIN_INDEX || admin.index == GROUP_INDEX) {
        return Err(BootstrapError::ReservedIndex(admin.index));
    }
    let group = AdminRef {
        permissions: AdminPermissions::ALL,
        handle: record.as_str().to_owned(),
        index: GROUP_INDEX,
    };
    let stamp = |mut v: HandleValue| {
        v.timestamp = now;
        v
    };

    let mut prefix_values = current(store, record.key())?;
    let mut members = prefix_values
        .iter()
        .find(|v| v.index == GROUP_INDEX && v.value_type.eq_ignore_ascii_case(types::HS_VLIST))
        .and_then(|v| ValueList::decode(&v.data).ok())
        .unwrap_or_default();
    let member = ValueReference {
        handle: admin.handle.as_str().to_owned(),
        index: admin.index,
    };
    if !members.0.iter().any(|m| {
        m.index == member.index
            && idres_model::Handle::parse(&m.handle).is_ok_and(|h| h.key() == admin.handle.key())
    }) {
        members.0.push(member);
    }
    upsert(
        &mut prefix_values,
        stamp(HandleValue::new(
            ADMIN_INDEX,
            types::HS_ADMIN,
            group.encode(),
        )),
    );
    upsert(
        &mut prefix_values,
        stamp(HandleValue::new(
            GROUP_INDEX,
            types::HS_VLIST,
            members.encode(),
        )),
    );

    let mut admin_values = if same_handle {
        std::mem::take(&mut prefix_values)
    } else {
        current(store, admin.handle.key())?
    };
    if let Some(v) = admin_values.iter().find(|v| v.index == admin.index) {
        if !v.value_type.eq_ignore_ascii_case(key.value_type()) {
            return Err(BootstrapError::IndexTaken {
                identity: admin.to_string(),
                index: admin.index,
                found: v.value_type.clone(),
            });
        }
    }
    let mut key_value = HandleValue::new(
        admin.index,
        key.value_type(),
        Bytes::copy_from_slice(key.data()),
    );
    if matches!(key, AdminKey::Secret(_)) {
        key_value.permissions = Permissions(Permissions::ADMIN_READ | Permissions::ADMIN_WRITE);
    }
    upsert(&mut admin_values, stamp(key_value));
    if !same_handle
        && !admin_values
            .iter()
            .any(|v| v.value_type.eq_ignore_ascii_case(types::HS_ADMIN))
    {
        upsert(
            &mut admin_values,
            stamp(HandleValue::new(
                ADMIN_INDEX,
                types::HS_ADMIN,
                group.encode(),
            )),
        );
    }

    let mut mutations = Vec::new();
    if !same_handle {
        mutations.push(Mutation::Put {
            handle: record,
            values: prefix_values,
        });
    }
    mutations.push(Mutation::Put {
        handle: admin.handle.clone(),
        values: admin_values,
    });
    Ok(WriteRequest {
        mutations,
        idempotency_key: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use idres_auth::{SecretBox, SecretPolicy};
    use idres_model::Handle;
    use idres_store::{SledConfig, SledStore};
    use std::sync::Arc;

    fn sealed_store(dir: &std::path::Path) -> (SledStore, Arc<SecretBox>) {
        let secrets = Arc::new(SecretBox::from_key(&[3; 32]));
        let mut c = SledConfig::new(dir);
        c.value_policy = Some(Arc::new(SecretPolicy::new(Arc::clone(&secrets))));
        (SledStore::open(c).unwrap(), secrets)
    }

    fn secret(pw: &str) -> AdminKey {
        AdminKey::Secret(pw.as_bytes().to_vec())
    }

    fn values(store: &SledStore, key: &str) -> Vec<HandleValue> {
        store.get(key).unwrap().unwrap().values().unwrap()
    }

    fn group(store: &SledStore) -> Vec<String> {
        let v = values(store, "0.NA/88.118.8");
        let g = v.iter().find(|v| v.index == GROUP_INDEX).unwrap();
        ValueList::decode(&g.data)
            .unwrap()
            .0
            .iter()
            .map(|r| format!("{}:{}", r.index, r.handle))
            .collect()
    }

    #[test]
    fn runs_again_and_keeps_other_values_and_members() {
        let dir = tempfile::tempdir().unwrap();
        let (store, secrets) = sealed_store(dir.path());
        let prefix = Prefix::parse("88.118.8").unwrap();
        // The prefix is already homed here with a site value.
        let site = HandleValue::new(1, types::HS_SERV, "0.NA/88.118.8");
        store
            .write(WriteRequest::one(Mutation::Put {
                handle: Handle::parse("0.NA/88.118.8").unwrap(),
                values: vec![site.clone()],
            }))
            .unwrap()
            .unwrap();
        let first = Identity::parse("300:88.118.8/ADMIN").unwrap();
        let second = Identity::parse("301:88.118.8/OPS").unwrap();
        for (who, pw) in [(&first, "a"), (&second, "b"), (&first, "c")] {
            let req = init_prefix(&store, &prefix, who, &secret(pw), 9).unwrap();
            store.write(req).unwrap().unwrap();
        }
        assert_eq!(group(&store), ["300:88.118.8/ADMIN", "301:88.118.8/OPS"]);
        let record = values(&store, "0.NA/88.118.8");
        assert!(record.contains(&site));
        let admin = AdminRef::decode(&record.iter().find(|v| v.index == ADMIN_INDEX).unwrap().data)
            .unwrap();
        assert_eq!((admin.handle.as_str(), admin.index), ("0.NA/88.118.8", 200));
        // The latest secret counts, stored sealed and not public.
        let key = values(&store, "88.118.8/ADMIN")
            .into_iter()
            .find(|v| v.index == 300)
            .unwrap();
        assert!(idres_auth::secret::is_sealed(&key.data));
        assert_eq!(secrets.open(&key.data).unwrap(), b"c");
        assert!(!key.permissions.public_read());
    }

    #[test]
    fn identity_in_the_prefix_record_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(SledConfig::new(dir.path())).unwrap();
        let prefix = Prefix::parse("88.118.8").unwrap();
        let admin = Identity::parse("300:0.NA/88.118.8").unwrap();
        let req = init_prefix(&store, &prefix, &admin, &secret("pw"), 9).unwrap();
        store.write(req).unwrap().unwrap();
        let v = values(&store, "0.NA/88.118.8");
        let mut idx: Vec<u32> = v.iter().map(|v| v.index).collect();
        idx.sort_unstable();
        assert_eq!(idx, [100, 200, 300]);
        let reserved = Identity::parse("200:0.NA/88.118.8").unwrap();
        assert!(matches!(
            init_prefix(&store, &prefix, &reserved, &secret("pw"), 9),
            Err(BootstrapError::ReservedIndex(200))
        ));
        assert!(matches!(
            init_prefix(&store, &prefix, &admin, &secret(""), 9),
            Err(BootstrapError::EmptySecret)
        ));
        // An index already used by another type is not overwritten.
        let taken = Identity::parse("100:88.118.8/OTHER").unwrap();
        store
            .write(WriteRequest::one(Mutation::Put {
                handle: Handle::parse("88.118.8/OTHER").unwrap(),
                values: vec![HandleValue::new(100, "URL", "https://x")],
            }))
            .unwrap()
            .unwrap();
        assert!(matches!(
            init_prefix(&store, &prefix, &taken, &secret("pw"), 9),
            Err(BootstrapError::IndexTaken { .. })
        ));
        assert!(matches!(
            init_prefix(
                &store,
                &prefix,
                &admin,
                &AdminKey::Public(
                    b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec()
                ),
                9
            ),
            Err(BootstrapError::BadPublicKey(_))
        ));
    }
}
