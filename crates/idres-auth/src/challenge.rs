//! The Handle challenge-response (RFC 3652 §3.5).
//!
//! A server answers an administrative request with AUTHENTICATION_NEEDED
//! (402), a fresh session id and a body of the request digest and a nonce.
//! The client answers (opcode 200) in that session with the identity it
//! speaks for and a proof over the nonce and the digest: a MAC under its
//! secret key (HS_SECKEY) or a signature with its private key
//! (HS_PUBKEY). [`Challenges`] keeps the open challenges: each is good for
//! one answer and for a bounded time, the table is bounded in size and per
//! peer address, and the session id is drawn at random, so that a
//! challenge can be answered on another connection or socket (as the
//! Handle.Net client may) but not guessed. [`verify_answer`] checks an
//! answer against the identity's key in the state given.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use idres_model::{types, HandleValue};
use idres_store::StateView;
use rand::RngCore as _;
use sha1::{Digest as _, Sha1};
use sha2::Sha256;
use sm3::Sm3;
use subtle::ConstantTimeEq as _;

use crate::identity::Identity;
use crate::pubkey::{HashAlg, PublicKey};
use crate::secret::SecretBox;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 16;
/// How long a challenge may be answered.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Most open challenges.
pub const DEFAULT_MAX_OPEN: usize = 16_384;
/// Most open challenges of one peer address.
pub const DEFAULT_MAX_PER_PEER: usize = 256;

/// One open challenge.
#[derive(Debug)]
pub struct Pending<T> {
    /// The nonce sent.
    pub nonce: [u8; NONCE_LEN],
    /// The digest of the challenged request, as sent (type byte and
    /// digest).
    pub digest: Vec<u8>,
    /// What to carry out once the answer checks (the request).
    pub request: T,
    /// Who was challenged.
    pub peer: IpAddr,
    issued: Instant,
}

/// Why an answer found no challenge to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// No open challenge has this session id (never issued, or already
    /// answered).
    Unknown,
    /// The challenge was issued too long ago.
    Expired,
}

/// Why no challenge could be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The open challenges of a node.
#[derive(Debug)]
pub struct Challenges<T> {
    open: Mutex<HashMap<u32, Pending<T>>>,
    ttl: Duration,
    max_open: usize,
    max_per_peer: usize,
}

impl<T> Default for Challenges<T> {
    fn default() -> Self {
        Self::new(DEFAULT_TTL, DEFAULT_MAX_OPEN, DEFAULT_MAX_PER_PEER)
    }
}

impl<T> Challenges<T> {
    /// A table whose challenges last `ttl`, with at most `max_open` open
    /// and `max_per_peer` per peer address.
    pub fn new(ttl: Duration, max_open: usize, max_per_peer: usize) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            ttl,
            max_open: max_open.max(1),
            max_per_peer: max_per_peer.max(1),
        }
    }

    /// How long a challenge lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a challenge for `request` from `peer`, whose digest (as sent)
    /// is `digest`: returns the session id and the nonce to send.
    pub fn issue(
        &self,
        peer: IpAddr,
        digest: Vec<u8>,
        request: T,
    ) -> Result<(u32, [u8; NONCE_LEN]), Busy> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let Ok(mut open) = self.open.lock() else {
            return Err(Busy);
        };
        let now = Instant::now();
        if open.len() >= self.max_open {
            let ttl = self.ttl;
            open.retain(|_, p| now.duration_since(p.issued) < ttl);
            if open.len() >= self.max_open {
                return Err(Busy);
            }
        }
        if open.values().filter(|p| p.peer == peer).count() >= self.max_per_peer {
            let ttl = self.ttl;
            open.retain(|_, p| p.peer != peer || now.duration_since(p.issued) < ttl);
            if open.values().filter(|p| p.peer == peer).count() >= self.max_per_peer {
                return Err(Busy);
            }
        }
        let session = loop {
            let id = rand::rngs::OsRng.next_u32();
            if id != 0 && !open.contains_key(&id) {
                break id;
            }
        };
        open.insert(
            session,
            Pending {
                nonce,
                digest,
                request,
                peer,
                issued: now,
            },
        );
        Ok((session, nonce))
    }

    /// Takes the challenge of `session` for answering: it is gone from the
    /// table whatever the answer, so that no challenge is answered twice.
    pub fn take(&self, session: u32) -> Result<Pending<T>, TakeError> {
        let Ok(mut open) = self.open.lock() else {
            return Err(TakeError::Unknown);
        };
        let p = open.remove(&session).ok_or(TakeError::Unknown)?;
        if p.issued.elapsed() >= self.ttl {
            return Err(TakeError::Expired);
        }
        Ok(p)
    }

    /// Number of open challenges.
    pub fn len(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }

    /// Whether no challenge is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn one_answer_each() {
        let c = Challenges::default();
        let (s1, n1) = c.issue(A, vec![3, 1, 2], "create").unwrap();
        let (s2, n2) = c.issue(A, vec![3, 1, 2], "delete").unwrap();
        assert_ne!(s1, s2);
        assert_ne!(n1, n2);
        assert_eq!(c.take(s1).unwrap().request, "create");
        assert_eq!(c.take(s1).unwrap_err(), TakeError::Unknown);
        assert_eq!(c.take(12345).unwrap_err(), TakeError::Unknown);
        assert_eq!(c.take(s2).unwrap().nonce, n2);
    }

    use crate::secret::SecretBox;
    use idres_model::Handle;
    use std::collections::HashMap;

    struct Map(HashMap<String, Vec<HandleValue>>);
    impl StateView for Map {
        fn values(&self, key: &str) -> Result<Option<Vec<HandleValue>>, idres_store::StoreError> {
            Ok(self.0.get(key).cloned())
        }
        fn aux(&self, _: &str, _: &[u8]) -> Result<Option<Vec<u8>>, idres_store::StoreError> {
            Ok(None)
        }
    }

    fn put(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }

    /// Answers computed by Python's hashlib and hmac for the secret
    /// `s3cret`, salt 00..0f, nonce 64..73 and digest SHA-256("request").
    #[test]
    fn secret_key_answers_match_an_independent_computation() {
        let secrets = SecretBox::from_key(&[9; 32]);
        let mut m = HashMap::new();
        m.insert(
            "88/ADMIN".to_string(),
            vec![HandleValue::new(300, "HS_SECKEY", secrets.seal(b"s3cret"))],
        );
        let state = Map(m);
        let who = Identity {
            index: 300,
            handle: Handle::parse("88/ADMIN").unwrap(),
        };
        let nonce: Vec<u8> = (100..116).collect();
        let mut typed = vec![3u8];
        typed.extend_from_slice(&Sha256::digest(b"request"));
        let mut pbkdf2 = vec![SECKEY_PBKDF2_HMAC_SHA1];
        put(&mut pbkdf2, &(0..16).collect::<Vec<u8>>());
        pbkdf2.extend_from_slice(&10_000u32.to_be_bytes());
        pbkdf2.extend_from_slice(&160u32.to_be_bytes());
        put(
            &mut pbkdf2,
            &hex::decode("1e905b680ea78735cebcc0fc24836dd35430f6c6").unwrap(),
        );
        let check = |answer: &[u8]| {
            verify_answer(&state, &secrets, &who, "HS_SECKEY", answer, &nonce, &typed)
        };
        check(&pbkdf2).unwrap();
        let mut sha1 = vec![SECKEY_SHA1];
        sha1.extend(hex::decode("3fed8da10d2daf375ee4d4a99291d43d3380a5d7").unwrap());
        check(&sha1).unwrap();
        let mut wrong = pbkdf2.clone();
        let last = wrong.len() - 1;
        wrong[last] ^= 1;
        assert!(matches!(check(&wrong), Err(AnswerError::Failed(_))));
        sha1[5] ^= 1;
        assert!(matches!(check(&sha1), Err(AnswerError::Failed(_))));
        assert!(matches!(
            check(&[0x77, 1, 2]),
            Err(AnswerError::InvalidCredential(_))
        ));
        let nobody = Identity {
            index: 300,
            handle: Handle::parse("88/NOBODY").unwrap(),
        };
        assert!(matches!(
            verify_answer(
                &state,
                &secrets,
                &nobody,
                "HS_SECKEY",
                &pbkdf2,
                &nonce,
                &typed
            ),
            Err(AnswerError::InvalidAdmin(_))
        ));
        assert!(matches!(
            verify_answer(&state, &secrets, &who, "HS_PUBKEY", &pbkdf2, &nonce, &typed),
            Err(AnswerError::InvalidAdmin(_))
        ));
    }

    #[test]
    fn expiry_and_bounds() {
        let c = Challenges::new(Duration::from_millis(30), 4, 2);
        let (s, _) = c.issue(A, vec![], 1).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.take(s).unwrap_err(), TakeError::Expired);
        let c = Challenges::new(Duration::from_secs(60), 3, 2);
        c.issue(A, vec![], 1).unwrap();
        c.issue(A, vec![], 2).unwrap();
        assert_eq!(c.issue(A, vec![], 3), Err(Busy), "per-peer bound");
        c.issue(B, vec![], 4).unwrap();
        assert_eq!(c.issue(B, vec![], 5), Err(Busy), "table bound");
    }
}

/// Why an answer to a challenge was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The identity named does not exist, or has no key at that index.
    #[error("{0}")]
    InvalidAdmin(String),
    /// The proof does not check (wrong secret, wrong key).
    #[error("{0}")]
    Failed(String),
    /// The answer or the stored key cannot be used.
    #[error("{0}")]
    InvalidCredential(String),
    /// The identity's record could not be read.
    #[error("storage error: {0}")]
    Storage(String),
}

/// Type of a secret-key answer: MD5(key ‖ nonce ‖ digest ‖ key).
pub const SECKEY_MD5: u8 = 0x01;
/// SHA-1(key ‖ nonce ‖ digest ‖ key).
pub const SECKEY_SHA1: u8 = 0x02;
/// SHA-256(key ‖ nonce ‖ digest ‖ key).
pub const SECKEY_SHA256: u8 = 0x03;
/// HMAC-SHA1(key, nonce ‖ digest).
pub const SECKEY_HMAC_SHA1: u8 = 0x12;
/// HMAC-SHA256(key, nonce ‖ digest).
pub const SECKEY_HMAC_SHA256: u8 = 0x13;
/// HMAC-SHA1 under PBKDF2-HMAC-SHA1(key, salt, iterations): salt,
/// iterations and key length travel in the answer (Handle.Net 8 and later).
pub const SECKEY_PBKDF2_HMAC_SHA1: u8 = 0x22;
/// Most PBKDF2 iterations an answer may ask the node to compute.
pub const MAX_ANSWER_ITERATIONS: u32 = 100_000;

/// Checks the answer of `identity` to a challenge with `nonce`, whose
/// digest was sent as `typed_digest` (type byte and digest, or the old
/// int4-length form). `auth_type` is `HS_SECKEY` or `HS_PUBKEY`; an index
/// of 0 tries every key of that type in the identity's record.
pub fn verify_answer(
    state: &dyn StateView,
    secrets: &SecretBox,
    identity: &Identity,
    auth_type: &str,
    answer: &[u8],
    nonce: &[u8],
    typed_digest: &[u8],
) -> Result<(), AnswerError> {
    let secret = if auth_type.eq_ignore_ascii_case(types::HS_SECKEY) {
        true
    } else if auth_type.eq_ignore_ascii_case(types::HS_PUBKEY) {
        false
    } else {
        return Err(AnswerError::InvalidCredential(format!(
            "authentication type {auth_type:?} is not supported; use HS_SECKEY or HS_PUBKEY"
        )));
    };
    let values = state
        .values(identity.handle.key())
        .map_err(|e| AnswerError::Storage(e.to_string()))?
        .ok_or_else(|| {
            AnswerError::InvalidAdmin(format!(
                "identity handle {} does not exist here",
                identity.handle
            ))
        })?;
    let wanted = if secret {
        types::HS_SECKEY
    } else {
        types::HS_PUBKEY
    };
    let keys: Vec<&HandleValue> = values
        .iter()
        .filter(|v| {
            (identity.index == 0 || v.index == identity.index)
                && v.value_type.eq_ignore_ascii_case(wanted)
        })
        .collect();
    if keys.is_empty() {
        return Err(AnswerError::InvalidAdmin(format!(
            "{identity} holds no {wanted} value"
        )));
    }
    let digest = raw_digest(typed_digest);
    let mut last = AnswerError::Failed(format!("authentication as {identity} failed"));
    for key in keys {
        let outcome = if secret {
            check_secret(secrets, &key.data, answer, nonce, digest)
        } else {
            check_signature(&key.data, answer, nonce, digest, identity.handle.as_str())
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(AnswerError::Failed(_)) => {}
            Err(e) => last = e,
        }
    }
    Err(match last {
        AnswerError::Failed(_) => AnswerError::Failed(format!(
            "authentication as {identity} failed: wrong {}",
            if secret { "secret key" } else { "signature" }
        )),
        other => other,
    })
}

/// The digest bytes inside a digest as a challenge carries it: a type byte
/// (1 MD5, 2 SHA-1, 3 SHA-256) and the digest, or (type 0) an int4 length
/// and the digest.
pub fn raw_digest(typed: &[u8]) -> &[u8] {
    match typed.first() {
        Some(0) => typed.get(4..).unwrap_or(&[]),
        Some(_) => &typed[1..],
        None => &[],
    }
}

fn check_secret(
    secrets: &SecretBox,
    stored: &[u8],
    answer: &[u8],
    nonce: &[u8],
    digest: &[u8],
) -> Result<(), AnswerError> {
    let Some(key) = secrets.open(stored) else {
        return Err(AnswerError::InvalidCredential(
            if crate::secret::is_legacy_hash(stored) {
                "the identity's HS_SECKEY is stored as a one-way hash, which the Handle \
                 protocol cannot check; set the secret key again to use it here"
            } else {
                "the identity's HS_SECKEY is not sealed under this node's secrets key"
            }
            .into(),
        ));
    };
    let failed = || AnswerError::Failed(String::new());
    let bad = |m: &str| AnswerError::InvalidCredential(format!("secret-key answer: {m}"));
    let (&kind, rest) = answer.split_first().ok_or_else(|| bad("empty"))?;
    let expected: Vec<u8> = match kind {
        SECKEY_PBKDF2_HMAC_SHA1 => {
            let mut r = Fields(rest);
            let salt = r.bytes(1024).ok_or_else(|| bad("no salt"))?;
            let iterations = r.u32().ok_or_else(|| bad("no iteration count"))?;
            let key_bits = r.u32().ok_or_else(|| bad("no key length"))?;
            let mac = r.bytes(64).ok_or_else(|| bad("no MAC"))?;
            if !r.0.is_empty() {
                return Err(bad("trailing bytes"));
            }
            if iterations == 0 || iterations > MAX_ANSWER_ITERATIONS {
                return Err(bad("iteration count out of range"));
            }
            if key_bits == 0 || key_bits % 8 != 0 || key_bits > 512 {
                return Err(bad("key length out of range"));
            }
            // The reference client hands PBKDF2 the secret's bytes as
            // Latin-1 characters, which the JCE encodes as UTF-8.
            let password: String = key.iter().map(|b| char::from(*b)).collect();
            let mut dk = vec![0u8; (key_bits / 8) as usize];
            pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut dk);
            let mut h = <Hmac<Sha1> as Mac>::new_from_slice(&dk).map_err(|_| failed())?;
            h.update(nonce);
            h.update(digest);
            return if h.verify_slice(mac).is_ok() {
                Ok(())
            } else {
                Err(failed())
            };
        }
        SECKEY_HMAC_SHA1 | SECKEY_HMAC_SHA256 => {
            let given = rest;
            let ok = if kind == SECKEY_HMAC_SHA1 {
                let mut h = <Hmac<Sha1> as Mac>::new_from_slice(&key).map_err(|_| failed())?;
                h.update(nonce);
                h.update(digest);
                h.verify_slice(given).is_ok()
            } else {
                let mut h = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|_| failed())?;
                h.update(nonce);
                h.update(digest);
                h.verify_slice(given).is_ok()
            };
            return if ok { Ok(()) } else { Err(failed()) };
        }
        SECKEY_SHA1 => typed_sandwich::<Sha1>(kind, &key, nonce, digest),
        SECKEY_SHA256 => typed_sandwich::<Sha256>(kind, &key, nonce, digest),
        SECKEY_MD5 => typed_sandwich::<md5::Md5>(kind, &key, nonce, digest),
        // Protocol 2.0: a bare MD5(key ‖ nonce ‖ digest ‖ key).
        _ if answer.len() == 16 => sandwich::<md5::Md5>(&key, nonce, digest),
        other => return Err(bad(&format!("unknown answer type 0x{other:02x}"))),
    };
    if bool::from(expected.as_slice().ct_eq(answer)) {
        Ok(())
    } else {
        Err(failed())
    }
}

/// H(key ‖ nonce ‖ digest ‖ key), the secret-key answer of the forms
/// before PBKDF2.
fn sandwich<D: sha1::Digest>(key: &[u8], nonce: &[u8], digest: &[u8]) -> Vec<u8> {
    let mut h = D::new();
    h.update(key);
    h.update(nonce);
    h.update(digest);
    h.update(key);
    h.finalize().to_vec()
}

/// The same after its type byte.
fn typed_sandwich<D: sha1::Digest>(kind: u8, key: &[u8], nonce: &[u8], digest: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend(sandwich::<D>(key, nonce, digest));
    v
}

fn check_signature(
    key_data: &[u8],
    answer: &[u8],
    nonce: &[u8],
    digest: &[u8],
    identity_handle: &str,
) -> Result<(), AnswerError> {
    let bad = |m: &str| AnswerError::InvalidCredential(format!("public-key answer: {m}"));
    let mut r = Fields(answer);
    let hash_name = r.bytes(64).ok_or_else(|| bad("no hash name"))?;
    let signature = r.bytes(16 * 1024).ok_or_else(|| bad("no signature"))?;
    if !r.0.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let key = PublicKey::from_hs_pubkey(key_data)
        .map_err(|e| AnswerError::InvalidCredential(format!("the identity's HS_PUBKEY: {e}")))?;
    let hash = match hash_name {
        [2] => Some(HashAlg::Sha1),
        [3] => Some(HashAlg::Sha256),
        name => std::str::from_utf8(name).ok().and_then(HashAlg::parse),
    }
    .ok_or_else(|| {
        bad(&format!(
            "hash {:?} is not supported",
            String::from_utf8_lossy(hash_name)
        ))
    })?;
    let checked = match (&key, hash) {
        // id-pointer-sdk signs SM3(nonce ‖ digest) with the admin handle
        // as SM2 user id; accept the message unhashed and the default id
        // too.
        (PublicKey::Sm2(_), HashAlg::Sm3) => {
            let pre = Sm3::digest([nonce, digest].concat());
            [(&pre[..], Some(identity_handle)), (&pre[..], None)]
                .iter()
                .any(|(m, id)| key.verify(hash, &[m], signature, *id).is_ok())
                || key
                    .verify(hash, &[nonce, digest], signature, Some(identity_handle))
                    .is_ok()
                || key.verify(hash, &[nonce, digest], signature, None).is_ok()
        }
        _ => match key.verify(hash, &[nonce, digest], signature, None) {
            Ok(()) => true,
            // A signature made for another kind of key than the stored
            // one is a wrong key like any other.
            Err(_) => false,
        },
    };
    if checked {
        Ok(())
    } else {
        Err(AnswerError::Failed(String::new()))
    }
}

struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (a, b) = self.0.split_first_chunk::<4>()?;
        self.0 = b;
        Some(u32::from_be_bytes(*a))
    }
    fn bytes(&mut self, max: usize) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max || n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
}

/// What a client proves an identity with, to answer a challenge.
#[derive(Debug, Clone)]
pub enum Credential {
    /// The identity's secret key (HS_SECKEY).
    Secret(Vec<u8>),
    /// The private half of the identity's HS_PUBKEY.
    Key(crate::nodekey::NodeKey),
}

/// PBKDF2 iterations of a secret-key answer, as the reference client uses.
pub const ANSWER_ITERATIONS: u32 = 10_000;

/// The answer of `identity` (its handle) to a challenge with `nonce` and
/// the digest as the challenge carried it: the auth type and the answer
/// bytes of a CHALLENGE_RESPONSE. Secret keys answer in the PBKDF2-HMAC-SHA1
/// form (a fresh salt each time); RSA keys sign with SHA-256, SM2 keys
/// sign SM3(nonce ‖ digest) with the identity's handle as user id, as the
/// national SDKs do.
pub fn answer(
    credential: &Credential,
    identity_handle: &str,
    nonce: &[u8],
    typed_digest: &[u8],
) -> (&'static str, Vec<u8>) {
    let digest = raw_digest(typed_digest);
    match credential {
        Credential::Secret(secret) => {
            let mut salt = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut salt);
            let password: String = secret.iter().map(|b| char::from(*b)).collect();
            let mut dk = [0u8; 20];
            pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), &salt, ANSWER_ITERATIONS, &mut dk);
            let mac = <Hmac<Sha1> as Mac>::new_from_slice(&dk).map(|mut h| {
                h.update(nonce);
                h.update(digest);
                h.finalize().into_bytes().to_vec()
            });
            let mut out = vec![SECKEY_PBKDF2_HMAC_SHA1];
            put_field(&mut out, &salt);
            out.extend_from_slice(&ANSWER_ITERATIONS.to_be_bytes());
            out.extend_from_slice(&160u32.to_be_bytes());
            put_field(&mut out, &mac.unwrap_or_default());
            (types::HS_SECKEY, out)
        }
        Credential::Key(key) => {
            let (hash, signature) = key.sign_challenge(identity_handle, nonce, digest);
            let mut out = Vec::new();
            put_field(&mut out, hash.as_bytes());
            put_field(&mut out, &signature);
            (types::HS_PUBKEY, out)
        }
    }
}

fn put_field(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}
