//! Permission: what an identity may do to a handle.
//!
//! An identity may change a handle when an HS_ADMIN value of the handle
//! itself, or of its governing prefix record `0.NA/<prefix>`, names it with
//! the needed bit (RFC 3651 §3.2.1). An HS_ADMIN names an identity directly
//! (same handle; same index, or index 0 for any), or through an HS_VLIST
//! group: the HS_ADMIN points at an HS_VLIST value whose members are
//! identities or further groups, followed up to [`MAX_GROUP_DEPTH`] levels
//! and [`MAX_LOOKUPS`] records, with cycles cut. For a prefix record
//! `0.NA/<P>` the governing record is that of the parent prefix
//! (`0.NA/0.NA` above a top-level prefix): creating or deleting `0.NA/<P>`
//! needs the parent's add/delete-derived-prefix bit.
//!
//! Every question is asked of a [`StateView`]: the store as it is for
//! reads, and, for writes, the state the writer is about to apply the write
//! to ([`PermissionGuard`], carried by the write as
//! [`Mutation::Require`]), so that no write is ever authorised on a state
//! that has changed since.

use std::collections::HashSet;
use std::sync::Arc;

use idres_model::{types, AdminPermissions, AdminRef, Handle, HandleValue, Prefix, ValueList};
use idres_store::{Denied, DeniedKind, Mutation, StateView, Store, StoreError, WriteGuard};

use crate::identity::{Caller, Identity};

/// Deepest HS_VLIST nesting followed.
pub const MAX_GROUP_DEPTH: usize = 8;
/// Most records read while resolving one permission question.
pub const MAX_LOOKUPS: usize = 256;

/// An operation on a handle that needs an administrator's permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Create the handle.
    Create,
    /// Delete the handle.
    Delete,
    /// Add a value (`true`: an HS_ADMIN value).
    AddValue(bool),
    /// Change a value.
    ModifyValue(bool),
    /// Remove a value.
    RemoveValue(bool),
    /// Read values that are not public.
    ReadValues,
    /// List the handles of a prefix (asked of the prefix record).
    ListHandles,
}

impl Op {
    /// The operation in words, for refusals: "may not {describe} {handle}".
    pub fn describe(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Delete => "delete",
            Op::AddValue(false) => "add values to",
            Op::AddValue(true) => "add HS_ADMIN values to",
            Op::ModifyValue(false) => "modify values of",
            Op::ModifyValue(true) => "modify HS_ADMIN values of",
            Op::RemoveValue(false) => "remove values from",
            Op::RemoveValue(true) => "remove HS_ADMIN values from",
            Op::ReadValues => "read non-public values of",
            Op::ListHandles => "list the handles of",
        }
    }

    /// The HS_ADMIN bit this operation needs on `handle`.
    pub fn bit(self, handle: &Handle) -> u16 {
        let prefix_record = handle.is_prefix_record();
        match self {
            Op::Create if prefix_record => AdminPermissions::ADD_DERIVED_PREFIX,
            Op::Delete if prefix_record => AdminPermissions::DELETE_DERIVED_PREFIX,
            Op::Create => AdminPermissions::ADD_HANDLE,
            Op::Delete => AdminPermissions::DELETE_HANDLE,
            Op::AddValue(false) => AdminPermissions::ADD_VALUE,
            Op::AddValue(true) => AdminPermissions::ADD_ADMIN,
            Op::ModifyValue(false) => AdminPermissions::MODIFY_VALUE,
            Op::ModifyValue(true) => AdminPermissions::MODIFY_ADMIN,
            Op::RemoveValue(false) => AdminPermissions::REMOVE_VALUE,
            Op::RemoveValue(true) => AdminPermissions::REMOVE_ADMIN,
            Op::ReadValues => AdminPermissions::READ_VALUE,
            Op::ListHandles => AdminPermissions::LIST_HANDLES,
        }
    }
}

/// Whether a value is an HS_ADMIN value.
pub fn is_admin(v: &HandleValue) -> bool {
    v.value_type.eq_ignore_ascii_case(types::HS_ADMIN)
}

/// The governing prefix record of a handle: `0.NA/<prefix>` for an
/// ordinary handle; the parent prefix's record for a prefix record.
pub fn governing_record(handle: &Handle) -> Option<Handle> {
    match handle.described_prefix() {
        Some(p) => Some(
            p.parent()
                .unwrap_or_else(|| Prefix::parse(idres_model::PREFIX_RECORD_PREFIX).unwrap_or(p))
                .record_handle(),
        ),
        None => Some(handle.prefix().record_handle()),
    }
}

/// What one identity is granted over one handle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grants {
    /// Bits granted by the handle's own HS_ADMIN or its governing record.
    pub any: u16,
    /// Bits granted by the governing record alone.
    pub governing: u16,
}

impl Grants {
    /// Whether these grants allow `op` on `handle`. Creating and deleting a
    /// prefix record is decided by the parent prefix's record alone.
    pub fn allow(&self, handle: &Handle, op: Op) -> bool {
        let from = match op {
            Op::Create | Op::Delete if handle.is_prefix_record() => self.governing,
            _ => self.any,
        };
        AdminPermissions(from).allows(op.bit(handle))
    }
}

/// [`StateView`] over a store: the state as committed, for reads.
#[derive(Debug, Clone, Copy)]
pub struct StoreView<'a>(pub &'a dyn Store);

impl StateView for StoreView<'_> {
    fn values(&self, key: &str) -> Result<Option<Vec<HandleValue>>, StoreError> {
        match self.0.get(key)? {
            None => Ok(None),
            Some(rec) => rec.values().map(Some).map_err(|e| StoreError::Corrupt {
                key: key.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    fn aux(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.aux_get(space, key)
    }
}

/// Works out what `identity` is granted over `handle`, whose current values
/// are `own` (`None` if it does not exist yet), reading groups and the
/// governing record from `state`.
pub fn grants(
    state: &dyn StateView,
    identity: &Identity,
    handle: &Handle,
    own: Option<&[HandleValue]>,
) -> Result<Grants, StoreError> {
    let mut walk = Walk {
        state,
        identity,
        lookups: 0,
        visited: HashSet::new(),
    };
    let mut g = Grants::default();
    if let Some(values) = own {
        g.any |= walk.granted_by(values)?;
    }
    if let Some(gov) = governing_record(handle) {
        if gov.key() != handle.key() {
            if let Some(values) = state.values(gov.key())? {
                let bits = walk.granted_by(&values)?;
                g.governing |= bits;
                g.any |= bits;
            }
        }
    }
    Ok(g)
}

/// A refusal of [`require`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The caller must authenticate first.
    #[error("{0}")]
    AuthenticationNeeded(String),
    /// The identity lacks the permission.
    #[error("{0}")]
    InsufficientPermissions(String),
    /// The state could not be read.
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<Refusal> for Denied {
    fn from(r: Refusal) -> Self {
        let (kind, message) = match r {
            Refusal::AuthenticationNeeded(m) => (DeniedKind::AuthenticationNeeded, m),
            Refusal::InsufficientPermissions(m) => (DeniedKind::InsufficientPermissions, m),
            Refusal::Storage(m) => (DeniedKind::InsufficientPermissions, m),
        };
        Denied { kind, message }
    }
}

/// Refuses `ops` on `handle` unless `caller` may do every one of them.
pub fn require(
    state: &dyn StateView,
    caller: &Caller,
    handle: &Handle,
    own: Option<&[HandleValue]>,
    ops: &[Op],
) -> Result<(), Refusal> {
    if ops.is_empty() {
        return Ok(());
    }
    let Some(identity) = caller.identity() else {
        return Err(Refusal::AuthenticationNeeded(format!(
            "authentication is needed to {} {handle}",
            ops.first().map_or("change", |o| o.describe())
        )));
    };
    let g = grants(state, identity, handle, own).map_err(|e| Refusal::Storage(e.to_string()))?;
    if let Some(op) = ops.iter().find(|op| !g.allow(handle, **op)) {
        let gov = governing_record(handle).map_or_else(String::new, |h| format!(" or of {h}"));
        return Err(Refusal::InsufficientPermissions(format!(
            "{identity} may not {} {handle}: no HS_ADMIN value of the handle{gov} grants it",
            op.describe()
        )));
    }
    Ok(())
}

/// The operations a mutation performs on a handle whose values are
/// `before` (`None`: the handle does not exist).
pub fn ops_of(m: &Mutation, before: Option<&[HandleValue]>) -> Vec<Op> {
    let find = |i: u32| before.and_then(|b| b.iter().find(|v| v.index == i));
    match m {
        Mutation::Create { .. } => vec![Op::Create],
        Mutation::Delete { .. } => vec![Op::Delete],
        Mutation::DeleteIfExists { .. } => {
            if before.is_some() {
                vec![Op::Delete]
            } else {
                Vec::new()
            }
        }
        Mutation::Put { values, .. } => match before {
            None => vec![Op::Create],
            Some(old) => {
                let mut ops = Vec::new();
                for v in values {
                    match old.iter().find(|o| o.index == v.index) {
                        None => ops.push(Op::AddValue(is_admin(v))),
                        Some(o) if same_value(o, v) => {}
                        Some(o) => ops.push(Op::ModifyValue(is_admin(o) || is_admin(v))),
                    }
                }
                for o in old {
                    if !values.iter().any(|v| v.index == o.index) {
                        ops.push(Op::RemoveValue(is_admin(o)));
                    }
                }
                ops
            }
        },
        Mutation::AddValues { values, .. } => {
            values.iter().map(|v| Op::AddValue(is_admin(v))).collect()
        }
        Mutation::RemoveValues { indexes, .. } => indexes
            .iter()
            .map(|i| Op::RemoveValue(find(*i).is_some_and(is_admin)))
            .collect(),
        Mutation::ModifyValues { values, .. } => values
            .iter()
            .map(|v| Op::ModifyValue(is_admin(v) || find(v.index).is_some_and(is_admin)))
            .collect(),
        Mutation::UpsertValues { values, .. } => {
            let mut ops = if before.is_none() {
                vec![Op::Create]
            } else {
                Vec::new()
            };
            for v in values {
                match find(v.index) {
                    None => ops.push(Op::AddValue(is_admin(v))),
                    Some(o) => ops.push(Op::ModifyValue(is_admin(o) || is_admin(v))),
                }
            }
            ops
        }
        _ => Vec::new(),
    }
}

/// Two values are the same for permission purposes when nothing a client
/// sees of them differs (timestamps aside): writing one over the other is
/// no change.
pub fn same_value(a: &HandleValue, b: &HandleValue) -> bool {
    a.value_type == b.value_type
        && a.data == b.data
        && a.ttl == b.ttl
        && a.ttl_type == b.ttl_type
        && a.permissions == b.permissions
        && a.references == b.references
}

/// The precondition a face attaches to a write made on behalf of a
/// caller: the writer asks it, against the state it applies the write to,
/// whether the caller may make each of the request's mutations.
/// Auxiliary-data mutations are never allowed through it.
#[derive(Debug)]
pub struct PermissionGuard {
    caller: Caller,
}

impl PermissionGuard {
    /// A guard for writes by `caller`.
    pub fn new(caller: Caller) -> Arc<Self> {
        Arc::new(Self { caller })
    }

    /// `mutations` preceded by a guard for `caller`: the write request a
    /// face submits on a caller's behalf.
    pub fn request(caller: &Caller, mutations: Vec<Mutation>) -> idres_store::WriteRequest {
        let mut all = Vec::with_capacity(mutations.len() + 1);
        all.push(Mutation::Require {
            guard: Self::new(caller.clone()),
        });
        all.extend(mutations);
        idres_store::WriteRequest {
            mutations: all,
            idempotency_key: None,
        }
    }
}

impl WriteGuard for PermissionGuard {
    fn check(&self, state: &dyn StateView, mutations: &[Mutation]) -> Result<(), Denied> {
        for m in mutations {
            match m {
                Mutation::Require { .. } => continue,
                Mutation::PutAux { .. } | Mutation::DeleteAux { .. } => {
                    return Err(Denied {
                        kind: DeniedKind::InsufficientPermissions,
                        message: "node data may not be written on a caller's behalf".into(),
                    })
                }
                _ => {}
            }
            let Some(handle) = m.handle() else { continue };
            let before = state.values(handle.key()).map_err(|e| Denied {
                kind: DeniedKind::InsufficientPermissions,
                message: format!("storage error: {e}"),
            })?;
            let ops = ops_of(m, before.as_deref());
            require(state, &self.caller, handle, before.as_deref(), &ops)?;
        }
        Ok(())
    }
}

struct Walk<'a> {
    state: &'a dyn StateView,
    identity: &'a Identity,
    lookups: usize,
    visited: HashSet<(String, u32)>,
}

impl Walk<'_> {
    /// The union of the permission bits of every HS_ADMIN in `values` that
    /// names the identity.
    fn granted_by(&mut self, values: &[HandleValue]) -> Result<u16, StoreError> {
        let mut bits = 0u16;
        for v in values {
            if !is_admin(v) {
                continue;
            }
            let Ok(admin) = AdminRef::decode(&v.data) else {
                continue;
            };
            if admin.permissions.0 & !bits == 0 {
                continue;
            }
            self.visited.clear();
            if self.names(&admin.handle, admin.index, 0)? {
                bits |= admin.permissions.0;
            }
        }
        Ok(bits)
    }

    /// Whether the reference (`handle`, `index`) is the identity or a group
    /// containing it.
    fn names(&mut self, handle: &str, index: u32, depth: usize) -> Result<bool, StoreError> {
        let Ok(h) = Handle::parse(handle) else {
            return Ok(false);
        };
        if h.key() == self.identity.handle.key() && (index == 0 || index == self.identity.index) {
            return Ok(true);
        }
        if depth >= MAX_GROUP_DEPTH
            || self.lookups >= MAX_LOOKUPS
            || !self.visited.insert((h.key().to_owned(), index))
        {
            return Ok(false);
        }
        self.lookups += 1;
        let Some(values) = self.state.values(h.key())? else {
            return Ok(false);
        };
        for v in &values {
            if (index != 0 && v.index != index)
                || !v.value_type.eq_ignore_ascii_case(types::HS_VLIST)
            {
                continue;
            }
            let Ok(list) = ValueList::decode(&v.data) else {
                continue;
            };
            for member in &list.0 {
                if self.names(&member.handle, member.index, depth + 1)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<String, Vec<HandleValue>>);
    impl StateView for Map {
        fn values(&self, key: &str) -> Result<Option<Vec<HandleValue>>, StoreError> {
            Ok(self.0.get(key).cloned())
        }
        fn aux(&self, _: &str, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
    }

    fn admin(index: u32, bits: u16, handle: &str, at: u32) -> HandleValue {
        HandleValue::new(
            index,
            types::HS_ADMIN,
            AdminRef {
                permissions: AdminPermissions(bits),
                handle: handle.into(),
                index: at,
            }
            .encode(),
        )
    }

    fn vlist(index: u32, members: &[(&str, u32)]) -> HandleValue {
        HandleValue::new(
            index,
            types::HS_VLIST,
            ValueList(
                members
                    .iter()
                    .map(|(h, i)| idres_model::ValueReference {
                        handle: (*h).into(),
                        index: *i,
                    })
                    .collect(),
            )
            .encode(),
        )
    }

    fn who(s: &str) -> Caller {
        Caller::Authenticated(Identity::parse(s).unwrap())
    }

    #[test]
    fn governing_records() {
        let h = Handle::parse("88.118.8/x").unwrap();
        assert_eq!(governing_record(&h).unwrap().key(), "0.NA/88.118.8");
        let p = Handle::parse("0.NA/88.118.8").unwrap();
        assert_eq!(governing_record(&p).unwrap().key(), "0.NA/88.118");
        let top = Handle::parse("0.NA/88").unwrap();
        assert_eq!(governing_record(&top).unwrap().key(), "0.NA/0.NA");
    }

    #[test]
    fn derived_prefix_bits_come_from_the_parent_only() {
        let p = Handle::parse("0.NA/88.118.8").unwrap();
        let own_only = Grants {
            any: AdminPermissions::ALL.0,
            governing: 0,
        };
        assert!(!own_only.allow(&p, Op::Create));
        assert!(!own_only.allow(&p, Op::Delete));
        assert!(own_only.allow(&p, Op::AddValue(false)));
        let parent = Grants {
            any: AdminPermissions::ADD_DERIVED_PREFIX,
            governing: AdminPermissions::ADD_DERIVED_PREFIX,
        };
        assert!(parent.allow(&p, Op::Create));
        let h = Handle::parse("88.118.8/x").unwrap();
        assert!(!parent.allow(&h, Op::Create));
    }

    #[test]
    fn groups_nest_and_cycles_end() {
        let mut m = HashMap::new();
        m.insert(
            "0.NA/88".to_string(),
            vec![admin(100, AdminPermissions::ADD_HANDLE, "88/GROUPS", 200)],
        );
        m.insert(
            "88/GROUPS".to_string(),
            vec![
                vlist(200, &[("88/GROUPS", 201), ("88/OTHER", 300)]),
                vlist(201, &[("88/GROUPS", 200), ("88/ALICE", 300)]),
            ],
        );
        let state = Map(m);
        let h = Handle::parse("88/new").unwrap();
        assert!(require(&state, &who("300:88/ALICE"), &h, None, &[Op::Create]).is_ok());
        assert!(require(&state, &who("300:88/OTHER"), &h, None, &[Op::Create]).is_ok());
        let e = require(&state, &who("300:88/BOB"), &h, None, &[Op::Create]).unwrap_err();
        assert!(matches!(e, Refusal::InsufficientPermissions(_)));
        let e = require(&state, &Caller::Anonymous, &h, None, &[Op::Create]).unwrap_err();
        assert!(matches!(e, Refusal::AuthenticationNeeded(_)));
        // The group does not grant delete.
        assert!(require(&state, &who("300:88/ALICE"), &h, None, &[Op::Delete]).is_err());
    }

    #[test]
    fn deep_chains_are_cut() {
        let mut m = HashMap::new();
        let depth = MAX_GROUP_DEPTH + 2;
        m.insert(
            "0.NA/88".to_string(),
            vec![admin(100, AdminPermissions::ALL.0, "88/G0", 1)],
        );
        for i in 0..depth {
            let next = format!("88/G{}", i + 1);
            m.insert(format!("88/G{i}"), vec![vlist(1, &[(next.as_str(), 1)])]);
        }
        m.insert(format!("88/G{depth}"), vec![vlist(1, &[("88/DEEP", 300)])]);
        let state = Map(m);
        let h = Handle::parse("88/x").unwrap();
        assert!(require(&state, &who("300:88/DEEP"), &h, None, &[Op::Create]).is_err());
        assert!(require(&state, &who("1:88/G3"), &h, None, &[Op::Create]).is_ok());
    }

    #[test]
    fn mutation_ops() {
        let h = Handle::parse("88/x").unwrap();
        let old = vec![
            HandleValue::new(1, "URL", "a"),
            admin(100, 0xfff, "88/A", 300),
        ];
        let put = Mutation::Put {
            handle: h.clone(),
            values: vec![
                HandleValue::new(1, "URL", "b"),
                HandleValue::new(2, "EMAIL", "e"),
            ],
        };
        assert_eq!(
            ops_of(&put, Some(&old)),
            vec![
                Op::ModifyValue(false),
                Op::AddValue(false),
                Op::RemoveValue(true)
            ]
        );
        assert_eq!(ops_of(&put, None), vec![Op::Create]);
        let rm = Mutation::RemoveValues {
            handle: h.clone(),
            indexes: vec![100],
        };
        assert_eq!(ops_of(&rm, Some(&old)), vec![Op::RemoveValue(true)]);
        let del = Mutation::DeleteIfExists { handle: h };
        assert!(ops_of(&del, None).is_empty());
        assert_eq!(ops_of(&del, Some(&old)), vec![Op::Delete]);
    }
}
