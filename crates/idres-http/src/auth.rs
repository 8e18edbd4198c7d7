//! Who is calling, and what they may do.
//!
//! **Authentication.** A request names an identity `index:handle` (the
//! value at `index` of `handle` holds its key) in one of two ways:
//!
//! - HTTP Basic, user `index%3Ahandle` (percent-encoded, since Basic
//!   splits user and password at the first colon) and the secret key as
//!   password. The identity's value must be an HS_SECKEY holding a hash
//!   ([`crate::secret`]); the password is hashed and compared in constant
//!   time. Successful checks are remembered for a few minutes under a keyed
//!   digest of identity, stored hash and password, so that a client making
//!   many requests does not pay the slow hash each time; a changed secret
//!   changes the stored hash and so misses the cache.
//! - A TLS client certificate, verified against the configured client CA,
//!   whose subject CN or UID is `index:handle` (`Authorization: Handle
//!   clientCert="true"` may say so explicitly, as Handle.Net clients do).
//!
//! Wrong or unusable credentials are refused (401) whatever the request;
//! after repeated failures for one identity from one address, further
//! attempts from there are refused unchecked for a while, which bounds
//! online guessing and the hashing work strangers can cause;
//! a request without credentials is anonymous and may only read public
//! values.
//!
//! **Permission.** An identity may change a handle when an HS_ADMIN value
//! of the handle itself, or of its prefix record `0.NA/<prefix>`, names it
//! with the needed bit (RFC 3651 §3.2.1). An HS_ADMIN names an identity
//! directly (same handle; same index, or index 0 for any), or through an
//! HS_VLIST group: the HS_ADMIN points at an HS_VLIST value whose members
//! are identities or further groups, followed up to [`MAX_GROUP_DEPTH`]
//! levels with cycles cut. For a prefix record `0.NA/<P>` the governing
//! record is that of the parent prefix (`0.NA/0.NA` above a top-level
//! prefix): creating or deleting `0.NA/<P>` needs the parent's
//! add/delete-derived-prefix bit.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use idres_model::{types, AdminPermissions, AdminRef, Handle, HandleValue, Prefix, ValueList};
use idres_store::Store;
use idres_wire::ResponseCode;
use rand::RngCore as _;
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::secret::{self, Verdict};
use crate::{ApiError, ConnInfo};

/// Deepest HS_VLIST nesting followed.
pub const MAX_GROUP_DEPTH: usize = 8;
/// Most records read while resolving one permission question.
const MAX_LOOKUPS: usize = 256;
/// How long a successful password check is remembered.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Most remembered checks.
const CACHE_MAX: usize = 4096;

/// An administrator identity: the value `index` of `handle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Index of the key value.
    pub index: u32,
    /// The identity's handle.
    pub handle: Handle,
}

impl Identity {
    /// Parses `300:88.118.8/ADMIN`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (index, handle) = s
            .split_once(':')
            .ok_or_else(|| format!("identity {s:?} is not of the form index:handle"))?;
        let index = index
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| format!("identity {s:?} has no valid index before ':'"))?;
        let handle = Handle::parse(handle).map_err(|e| format!("identity {s:?}: {e}"))?;
        Ok(Self { index, handle })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.index, self.handle)
    }
}

/// The party behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credentials were presented.
    Anonymous,
    /// Credentials were presented and checked.
    Authenticated(Identity),
}

impl Caller {
    /// The identity, if authenticated.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Caller::Anonymous => None,
            Caller::Authenticated(i) => Some(i),
        }
    }
}

fn unauthorized(rc: ResponseCode, message: impl Into<String>) -> ApiError {
    ApiError::new(rc, message)
}

/// Checks credentials; shared by all requests of a node.
pub struct Authenticator {
    iterations: u32,
    cache_key: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    hashing: Semaphore,
    throttle: Throttle,
}

/// Failed password checks per (identity, client address): after
/// `max` failures within `window`, further attempts from that address for
/// that identity are refused without being checked until the window
/// ends. Keyed by address too, so that a stranger cannot lock an
/// administrator out from everywhere.
#[derive(Debug)]
struct Throttle {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<(String, IpAddr), (u32, Instant)>>,
}

/// Most (identity, address) pairs tracked at once.
const THROTTLE_MAX_ENTRIES: usize = 65_536;

impl Throttle {
    fn blocked(&self, key: &(String, IpAddr)) -> bool {
        if self.max == 0 {
            return false;
        }
        let Ok(map) = self.failures.lock() else {
            return false;
        };
        map.get(key)
            .is_some_and(|(n, since)| *n >= self.max && since.elapsed() < self.window)
    }

    fn failed(&self, key: (String, IpAddr)) {
        if self.max == 0 {
            return;
        }
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= THROTTLE_MAX_ENTRIES {
            let window = self.window;
            map.retain(|_, (_, since)| since.elapsed() < window);
            if map.len() >= THROTTLE_MAX_ENTRIES {
                map.clear();
            }
        }
        let entry = map.entry(key).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    fn succeeded(&self, key: &(String, IpAddr)) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator hashing new secrets with `iterations` rounds, and
    /// refusing an identity from one address for `window` after
    /// `max_failures` failed password checks (0: never).
    pub fn new(iterations: u32, max_failures: u32, window: Duration) -> Self {
        let mut cache_key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut cache_key);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            iterations: iterations.clamp(secret::MIN_ITERATIONS, secret::MAX_ITERATIONS),
            cache_key,
            cache: Mutex::new(HashMap::new()),
            hashing: Semaphore::new(cores),
            throttle: Throttle {
                max: max_failures,
                window,
                failures: Mutex::new(HashMap::new()),
            },
        }
    }

    /// Rounds used for secrets hashed by this node.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Who sent the request: anonymous when it carries no credentials,
    /// an identity when they check out, and a 401 error otherwise.
    pub async fn authenticate(
        &self,
        store: &Arc<dyn Store>,
        headers: &HeaderMap,
        conn: Option<&ConnInfo>,
    ) -> Result<Caller, ApiError> {
        let cert = conn.and_then(|c| c.client_identity.as_ref());
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(cert.map_or(Caller::Anonymous, |i| Caller::Authenticated(i.clone())));
        };
        let value = value.to_str().map_err(|_| {
            unauthorized(
                ResponseCode::INVALID_CREDENTIAL,
                "the Authorization header is not ASCII",
            )
        })?;
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if scheme.eq_ignore_ascii_case("Basic") {
            let (identity, password) = parse_basic(rest.trim())?;
            let ip = conn.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.peer.ip());
            let key = (identity.to_string(), ip);
            if self.throttle.blocked(&key) {
                tracing::warn!(identity = %identity, %ip, "refused: too many failed attempts");
                return Err(unauthorized(
                    ResponseCode::AUTHENTICATION_FAILED,
                    format!(
                        "too many failed attempts to authenticate as {identity} from this \
                         address; try again in {} s",
                        self.throttle.window.as_secs()
                    ),
                ));
            }
            match self.check_password(store, &identity, &password).await {
                Ok(()) => self.throttle.succeeded(&key),
                Err(e) => {
                    if e.status == axum::http::StatusCode::UNAUTHORIZED {
                        self.throttle.failed(key);
                    }
                    return Err(e);
                }
            }
            return Ok(Caller::Authenticated(identity));
        }
        if scheme.eq_ignore_ascii_case("Handle") && rest.contains("clientCert") {
            return match cert {
                Some(i) => Ok(Caller::Authenticated(i.clone())),
                None => Err(unauthorized(
                    ResponseCode::INVALID_CREDENTIAL,
                    "Authorization asks for client-certificate authentication, \
                     but no certificate accepted by this node was presented",
                )),
            };
        }
        Err(unauthorized(
            ResponseCode::INVALID_CREDENTIAL,
            format!(
                "authentication scheme {scheme:?} is not supported; use Basic with user \
                 index%3Ahandle and the secret key, or a client certificate"
            ),
        ))
    }

    async fn check_password(
        &self,
        store: &Arc<dyn Store>,
        identity: &Identity,
        password: &str,
    ) -> Result<(), ApiError> {
        let failed = || {
            unauthorized(
                ResponseCode::AUTHENTICATION_FAILED,
                format!(
                    "authentication as {identity} failed: unknown identity or wrong secret key"
                ),
            )
        };
        let values = load(store, identity.handle.key())?.ok_or_else(failed)?;
        let Some(stored) = values
            .iter()
            .find(|v| {
                v.index == identity.index && v.value_type.eq_ignore_ascii_case(types::HS_SECKEY)
            })
            .map(|v| v.data.clone())
        else {
            return Err(failed());
        };
        let key = self.cache_key(identity, &stored, password.as_bytes());
        if self.cached(&key) {
            return Ok(());
        }
        let permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| ApiError::new(ResponseCode::SERVER_TOO_BUSY, "shutting down"))?;
        let pw = password.as_bytes().to_vec();
        let stored_for_check = stored.clone();
        let verdict = tokio::task::spawn_blocking(move || secret::verify(&stored_for_check, &pw))
            .await
            .map_err(|_| ApiError::new(ResponseCode::ERROR, "credential check failed"))?;
        drop(permit);
        match verdict {
            Verdict::Match => {
                self.remember(key);
                Ok(())
            }
            Verdict::Mismatch => {
                tracing::info!(identity = %identity, "wrong secret key");
                Err(failed())
            }
            Verdict::Unusable => {
                tracing::warn!(
                    identity = %identity,
                    "HS_SECKEY is not stored as a hash this node accepts; write it again (through \
                     the API, or with `idres admin init-prefix` on a stopped node) to hash it"
                );
                Err(failed())
            }
        }
    }

    fn cache_key(&self, identity: &Identity, stored: &[u8], password: &[u8]) -> [u8; 32] {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.cache_key) else {
            return [0; 32];
        };
        let id = identity.to_string();
        for part in [id.as_bytes(), stored, password] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        let Ok(cache) = self.cache.lock() else {
            return false;
        };
        cache.get(key).is_some_and(|t| t.elapsed() < CACHE_TTL)
    }

    fn remember(&self, key: [u8; 32]) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, t| t.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(key, Instant::now());
        }
    }
}

/// Splits `Basic` credentials into an identity and a password.
fn parse_basic(b64: &str) -> Result<(Identity, String), ApiError> {
    let bad = |why: &str| {
        unauthorized(
            ResponseCode::INVALID_CREDENTIAL,
            format!("Basic credentials {why}; the user is index%3Ahandle, such as 300%3A88.118.8%2FADMIN"),
        )
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad("are not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| bad("are not UTF-8"))?;
    let (user, password) = text.split_once(':').ok_or_else(|| bad("have no ':'"))?;
    let user = percent_encoding::percent_decode_str(user)
        .decode_utf8()
        .map_err(|_| bad("have a user that is not UTF-8 once decoded"))?;
    let identity = Identity::parse(&user).map_err(|e| bad(&format!("name no identity ({e})")))?;
    Ok((identity, password.to_owned()))
}

/// Reads and decodes a record.
pub fn load(store: &Arc<dyn Store>, key: &str) -> Result<Option<Vec<HandleValue>>, ApiError> {
    match store.get(key) {
        Ok(None) => Ok(None),
        Ok(Some(rec)) => rec.values().map(Some).map_err(|e| {
            tracing::error!(error = %e, key, "corrupt record");
            ApiError::new(ResponseCode::ERROR, "storage error")
        }),
        Err(e) => Err(ApiError::storage(&e)),
    }
}

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
    fn describe(self) -> &'static str {
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
    /// Whether these grants allow `op` on `handle`.
    pub fn allow(&self, handle: &Handle, op: Op) -> bool {
        let prefix_record = handle.is_prefix_record();
        let (bits, from) = match op {
            Op::Create if prefix_record => (AdminPermissions::ADD_DERIVED_PREFIX, self.governing),
            Op::Delete if prefix_record => {
                (AdminPermissions::DELETE_DERIVED_PREFIX, self.governing)
            }
            Op::Create => (AdminPermissions::ADD_HANDLE, self.any),
            Op::Delete => (AdminPermissions::DELETE_HANDLE, self.any),
            Op::AddValue(false) => (AdminPermissions::ADD_VALUE, self.any),
            Op::AddValue(true) => (AdminPermissions::ADD_ADMIN, self.any),
            Op::ModifyValue(false) => (AdminPermissions::MODIFY_VALUE, self.any),
            Op::ModifyValue(true) => (AdminPermissions::MODIFY_ADMIN, self.any),
            Op::RemoveValue(false) => (AdminPermissions::REMOVE_VALUE, self.any),
            Op::RemoveValue(true) => (AdminPermissions::REMOVE_ADMIN, self.any),
            Op::ReadValues => (AdminPermissions::READ_VALUE, self.any),
            Op::ListHandles => (AdminPermissions::LIST_HANDLES, self.any),
        };
        AdminPermissions(from).allows(bits)
    }
}

/// Works out what `identity` is granted over `handle`, whose current values
/// are `own` (`None` if it does not exist yet).
pub fn grants(
    store: &Arc<dyn Store>,
    identity: &Identity,
    handle: &Handle,
    own: Option<&[HandleValue]>,
) -> Result<Grants, ApiError> {
    let mut walk = Walk {
        store,
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
            if let Some(values) = load(store, gov.key())? {
                let bits = walk.granted_by(&values)?;
                g.governing |= bits;
                g.any |= bits;
            }
        }
    }
    Ok(g)
}

/// Refuses `ops` on `handle` unless `caller` may do every one of them:
/// 401 for an anonymous caller, 403 for one without the bit.
pub fn require(
    store: &Arc<dyn Store>,
    caller: &Caller,
    handle: &Handle,
    own: Option<&[HandleValue]>,
    ops: &[Op],
) -> Result<(), ApiError> {
    if ops.is_empty() {
        return Ok(());
    }
    let Some(identity) = caller.identity() else {
        return Err(ApiError::new(
            ResponseCode::AUTHENTICATION_NEEDED,
            format!(
                "authentication is needed to {} {handle}",
                ops.first().map_or("change", |o| o.describe())
            ),
        )
        .about(handle.as_str()));
    };
    let g = grants(store, identity, handle, own)?;
    if let Some(op) = ops.iter().find(|op| !g.allow(handle, **op)) {
        let gov = governing_record(handle).map_or_else(String::new, |h| format!(" or of {h}"));
        return Err(ApiError::new(
            ResponseCode::INSUFFICIENT_PERMISSIONS,
            format!(
                "{identity} may not {} {handle}: no HS_ADMIN value of the handle{gov} grants it",
                op.describe()
            ),
        )
        .about(handle.as_str()));
    }
    Ok(())
}

struct Walk<'a> {
    store: &'a Arc<dyn Store>,
    identity: &'a Identity,
    lookups: usize,
    visited: HashSet<(String, u32)>,
}

impl Walk<'_> {
    /// The union of the permission bits of every HS_ADMIN in `values` that
    /// names the identity.
    fn granted_by(&mut self, values: &[HandleValue]) -> Result<u16, ApiError> {
        let mut bits = 0u16;
        for v in values {
            if !v.value_type.eq_ignore_ascii_case(types::HS_ADMIN) {
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
    fn names(&mut self, handle: &str, index: u32, depth: usize) -> Result<bool, ApiError> {
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
        let Some(values) = load(self.store, h.key())? else {
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

    #[test]
    fn identities() {
        let i = Identity::parse("300:88.118.8/ADMIN").unwrap();
        assert_eq!(i.index, 300);
        assert_eq!(i.handle.key(), "88.118.8/ADMIN");
        assert_eq!(i.to_string(), "300:88.118.8/ADMIN");
        assert!(Identity::parse("88.118.8/ADMIN").is_err());
        assert!(Identity::parse("0:88.118.8/ADMIN").is_err());
        assert!(Identity::parse("x:88.118.8/ADMIN").is_err());
        assert!(Identity::parse("300:nohandle").is_err());
    }

    #[test]
    fn basic_credentials() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (i, pw) = parse_basic(&b64("300%3A88.118.8%2FADMIN:pa:ss")).unwrap();
        assert_eq!(i.to_string(), "300:88.118.8/ADMIN");
        assert_eq!(pw, "pa:ss");
        // Unencoded, the colon splits the user too early.
        assert!(parse_basic(&b64("300:88.118.8/ADMIN:pw")).is_err());
        assert!(parse_basic("!!!").is_err());
        let e = parse_basic(&b64("nobody:pw")).unwrap_err();
        assert_eq!(e.status.as_u16(), 401);
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
}
