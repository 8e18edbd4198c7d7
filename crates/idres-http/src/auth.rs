//! Who is calling over HTTP.
//!
//! **Authentication.** A request names an identity `index:handle` (the
//! value at `index` of `handle` holds its key) in one of two ways:
//!
//! - HTTP Basic, user `index%3Ahandle` (percent-encoded, since Basic
//!   splits user and password at the first colon) and the secret key as
//!   password, compared in constant time with the identity's sealed
//!   HS_SECKEY ([`idres_auth::secret`]). A secret stored as a one-way hash
//!   by earlier versions is checked against its hash and then sealed, once
//!   the right password has been shown. Successful checks are remembered
//!   for a few minutes under a keyed digest of identity, stored data and
//!   password; a changed secret changes the stored data and so misses.
//! - A TLS client certificate, verified against the configured client CA,
//!   whose subject CN or UID is `index:handle` (`Authorization: Handle
//!   clientCert="true"` may say so explicitly, as Handle.Net clients do).
//!
//! Wrong or unusable credentials are refused (401) whatever the request;
//! after repeated failures for one identity from one address, further
//! attempts from there are refused unchecked for a while, which bounds
//! online guessing and the work strangers can cause; a request without
//! credentials is anonymous and may only read public values.
//!
//! **Permission** is the node's one policy, [`idres_auth::policy`]:
//! [`require`] asks it for reads, and writes carry it to the store's
//! writer as a precondition.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use idres_model::{types, Handle, HandleValue};
use idres_store::Store;
use idres_wire::ResponseCode;
use rand::RngCore as _;
use sha2::Sha256;
use tokio::sync::Semaphore;

use idres_auth::{SecretBox, StoreView, Throttle, Verdict};

use crate::{ApiError, ConnInfo};

/// How long a successful password check is remembered.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Most remembered checks.
const CACHE_MAX: usize = 4096;

pub use idres_auth::{Caller, Identity, Op};

fn unauthorized(rc: ResponseCode, message: impl Into<String>) -> ApiError {
    ApiError::new(rc, message)
}

/// Checks credentials; shared by all requests of a node.
pub struct Authenticator {
    secrets: Arc<SecretBox>,
    cache_key: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    hashing: Semaphore,
    throttle: Throttle,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator checking passwords against secrets sealed with
    /// `secrets`, and refusing an identity from one address for `window`
    /// after `max_failures` failed password checks (0: never).
    pub fn new(secrets: Arc<SecretBox>, max_failures: u32, window: Duration) -> Self {
        let mut cache_key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut cache_key);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            secrets,
            cache_key,
            cache: Mutex::new(HashMap::new()),
            hashing: Semaphore::new(cores),
            throttle: Throttle::new(max_failures, window),
        }
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
            let who = identity.to_string();
            if self.throttle.blocked(&who, ip) {
                tracing::warn!(identity = %identity, %ip, "refused: too many failed attempts");
                return Err(unauthorized(
                    ResponseCode::AUTHENTICATION_FAILED,
                    format!(
                        "too many failed attempts to authenticate as {identity} from this \
                         address; try again in {} s",
                        self.throttle.window().as_secs()
                    ),
                ));
            }
            match self.check_password(store, &identity, &password).await {
                Ok(()) => self.throttle.succeeded(&who, ip),
                Err(e) => {
                    if e.status == axum::http::StatusCode::UNAUTHORIZED {
                        self.throttle.failed(&who, ip);
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
        let secrets = Arc::clone(&self.secrets);
        let verdict =
            tokio::task::spawn_blocking(move || secrets.check_password(&stored_for_check, &pw))
                .await
                .map_err(|_| ApiError::new(ResponseCode::ERROR, "credential check failed"))?;
        drop(permit);
        match verdict {
            Verdict::Match => {
                self.remember(key);
                if idres_auth::secret::is_legacy_hash(&stored) {
                    self.reseal(store, identity, password.as_bytes()).await;
                }
                Ok(())
            }
            Verdict::Mismatch => {
                tracing::info!(identity = %identity, "wrong secret key");
                Err(failed())
            }
            Verdict::Unusable => {
                tracing::warn!(
                    identity = %identity,
                    "HS_SECKEY is not sealed under this node's secrets key; set it again \
                     (through the API, or with `idres init-prefix` on a stopped node)"
                );
                Err(failed())
            }
        }
    }

    /// Replaces a secret key stored as a one-way hash by earlier versions
    /// with its sealed form, now that the right password has been shown:
    /// the native protocol can then use it too. Written with a precondition
    /// that the hash is still the one checked, so that a change made
    /// meanwhile is never undone.
    async fn reseal(&self, store: &Arc<dyn Store>, identity: &Identity, password: &[u8]) {
        let guard = std::sync::Arc::new(SameValue {
            key: identity.handle.key().to_owned(),
            index: identity.index,
            data: load(store, identity.handle.key())
                .ok()
                .flatten()
                .and_then(|v| v.into_iter().find(|v| v.index == identity.index))
                .map(|v| v.data)
                .unwrap_or_default(),
        });
        let Ok(Some(values)) = load(store, identity.handle.key()) else {
            return;
        };
        let Some(mut v) = values.into_iter().find(|v| v.index == identity.index) else {
            return;
        };
        v.data = bytes::Bytes::from(password.to_vec());
        let request = idres_store::WriteRequest {
            mutations: vec![
                idres_store::Mutation::Require { guard },
                idres_store::Mutation::ModifyValues {
                    handle: identity.handle.clone(),
                    values: vec![v],
                },
            ],
            idempotency_key: None,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.submit(
            request,
            Box::new(move |o| {
                let _ = tx.send(o);
            }),
        );
        if let Ok(Ok(Ok(_))) = rx.await {
            tracing::info!(identity = %identity, "secret key moved from a one-way hash to sealed storage");
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

/// Refuses `ops` on `handle` unless `caller` may do every one of them,
/// by the node's one policy ([`idres_auth::policy`]): 401 for an anonymous
/// caller, 403 for one without the bit. For reads; writes carry the same
/// check to the store's writer ([`idres_auth::PermissionGuard`]).
pub fn require(
    store: &Arc<dyn Store>,
    caller: &Caller,
    handle: &Handle,
    own: Option<&[HandleValue]>,
    ops: &[Op],
) -> Result<(), ApiError> {
    idres_auth::require(&StoreView(store.as_ref()), caller, handle, own, ops).map_err(|e| {
        // A refused write is an audit event; refused reads and listings are
        // answered, not logged.
        if let Some(op) = ops
            .iter()
            .find(|o| !matches!(o, Op::ReadValues | Op::ListHandles))
        {
            let why = e.to_string();
            idres_auth::audit::write(
                "http",
                &idres_auth::audit::who(caller),
                op.describe(),
                handle.as_str(),
                Err(&why),
            );
        }
        let rc = match &e {
            idres_auth::Refusal::AuthenticationNeeded(_) => ResponseCode::AUTHENTICATION_NEEDED,
            idres_auth::Refusal::InsufficientPermissions(_) => {
                ResponseCode::INSUFFICIENT_PERMISSIONS
            }
            idres_auth::Refusal::Storage(_) => ResponseCode::ERROR,
        };
        ApiError::new(rc, e.to_string()).about(handle.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

/// The precondition of [`Authenticator::reseal`]: the value is still the
/// one that was checked.
#[derive(Debug)]
struct SameValue {
    key: String,
    index: u32,
    data: bytes::Bytes,
}

impl idres_store::WriteGuard for SameValue {
    fn check(
        &self,
        state: &dyn idres_store::StateView,
        _mutations: &[idres_store::Mutation],
    ) -> Result<(), idres_store::Denied> {
        let same = state
            .values(&self.key)
            .ok()
            .flatten()
            .and_then(|v| v.into_iter().find(|v| v.index == self.index))
            .is_some_and(|v| v.data == self.data);
        if same {
            Ok(())
        } else {
            Err(idres_store::Denied {
                kind: idres_store::DeniedKind::InsufficientPermissions,
                message: "the secret key changed meanwhile".into(),
            })
        }
    }
}
