//! Secret keys (HS_SECKEY) at rest.
//!
//! The Handle challenge-response scheme for secret keys needs the secret
//! itself to check an answer (the client sends an HMAC over the challenge
//! under a key derived from the secret with a salt it picks for each
//! answer), so a one-way hash cannot serve it. Secrets are therefore kept
//! sealed under the node's secrets key ([`SecretBox`], XChaCha20-Poly1305,
//! a 32-byte key in a file of mode 0600 beside the database):
//!
//! ```text
//! idres-sealed-v1$<hex of 24-byte nonce || ciphertext || tag>
//! ```
//!
//! Every write of a record passes [`SecretPolicy`] inside the store's
//! writer, whatever face it came from (import, HTTP, gRPC, native): an
//! HS_SECKEY value loses public read and write and its data is sealed, so
//! clear secrets never reach the disk, the change log, an export or a
//! backup, and no face ever serves them to an anonymous client. A record
//! written back by an administrator with the sealed form it read keeps
//! its secret. Secrets hashed by earlier versions (`pbkdf2-sha256$…`) still
//! serve HTTP Basic authentication and are sealed the next time the right
//! password is presented there; the native scheme cannot use them.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use idres_model::{types, HandleValue, Permissions};
use idres_store::ValuePolicy;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// The tag that starts sealed data.
pub const SEALED_TAG: &str = "idres-sealed-v1$";
/// The tag of hashes written by earlier versions.
pub const LEGACY_HASH_TAG: &str = "pbkdf2-sha256$";
/// Fewest and most iterations accepted in a legacy hash.
const LEGACY_ITERATIONS: std::ops::RangeInclusive<u32> = 1_000..=10_000_000;
/// Longest secret accepted.
pub const MAX_SECRET_LEN: usize = 4096;

/// What a password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password is right.
    Match,
    /// The password is wrong.
    Mismatch,
    /// The stored data is neither sealed under this node's key nor a hash
    /// this node understands; it is never compared.
    Unusable,
}

/// The node's secrets key: seals and opens stored secret keys.
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox")
    }
}

impl SecretBox {
    /// A box with the given key.
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Loads the key from `path`, creating it (32 random bytes, mode 0600)
    /// if the file does not exist.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        match fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} holds {} bytes; a secrets key is 32 bytes",
                            path.display(),
                            bytes.len()
                        ),
                    )
                })?;
                Ok(Self::from_key(&key))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = XChaCha20Poly1305::generate_key(&mut OsRng);
                write_private(path, key.as_slice())?;
                tracing::info!(path = %path.display(), "created the node's secrets key");
                let mut k = [0u8; 32];
                k.copy_from_slice(key.as_slice());
                Ok(Self::from_key(&k))
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot read the secrets key {}: {e}", path.display()),
            )),
        }
    }

    /// Seals `secret`.
    pub fn seal(&self, secret: &[u8]) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self.cipher.encrypt(&nonce, secret).unwrap_or_default();
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&ct);
        format!("{SEALED_TAG}{}", hex::encode(raw))
    }

    /// The secret in sealed `data`, if it is sealed under this key.
    pub fn open(&self, data: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(data).ok()?;
        let raw = hex::decode(text.strip_prefix(SEALED_TAG)?).ok()?;
        if raw.len() < 24 + 16 {
            return None;
        }
        let (nonce, ct) = raw.split_at(24);
        self.cipher.decrypt(XNonce::from_slice(nonce), ct).ok()
    }

    /// Checks `password` against stored HS_SECKEY data in constant time.
    /// A legacy hash is slow to check by design: run this off async
    /// workers.
    pub fn check_password(&self, stored: &[u8], password: &[u8]) -> Verdict {
        if let Some(secret) = self.open(stored) {
            return if bool::from(secret.as_slice().ct_eq(password)) {
                Verdict::Match
            } else {
                Verdict::Mismatch
            };
        }
        legacy_verify(stored, password)
    }
}

/// Whether `data` is sealed (under any key).
pub fn is_sealed(data: &[u8]) -> bool {
    data.starts_with(SEALED_TAG.as_bytes())
}

/// Whether `data` is a hash written by an earlier version.
pub fn is_legacy_hash(data: &[u8]) -> bool {
    data.starts_with(LEGACY_HASH_TAG.as_bytes())
}

/// Checks a password against a legacy `pbkdf2-sha256$iter$salt$hash`.
fn legacy_verify(stored: &[u8], password: &[u8]) -> Verdict {
    let parsed = (|| {
        let text = std::str::from_utf8(stored).ok()?;
        let mut parts = text.split('$');
        if parts.next()? != "pbkdf2-sha256" {
            return None;
        }
        let iterations: u32 = parts.next()?.parse().ok()?;
        if !LEGACY_ITERATIONS.contains(&iterations) {
            return None;
        }
        let salt = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
        let hash = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
        if parts.next().is_some() || salt.is_empty() || salt.len() > 64 || hash.len() != 32 {
            return None;
        }
        Some((iterations, salt, hash))
    })();
    let Some((iterations, salt, hash)) = parsed else {
        return Verdict::Unusable;
    };
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, &salt, iterations, &mut out);
    if bool::from(out.ct_eq(hash.as_slice())) {
        Verdict::Match
    } else {
        Verdict::Mismatch
    }
}

/// Writes `bytes` to a new file of mode 0600 (as every private key idres
/// writes), refusing to replace an existing file.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The store's [`ValuePolicy`] for secret keys; see the module docs.
#[derive(Debug)]
pub struct SecretPolicy {
    secrets: std::sync::Arc<SecretBox>,
}

impl SecretPolicy {
    /// A policy sealing with `secrets`.
    pub fn new(secrets: std::sync::Arc<SecretBox>) -> Self {
        Self { secrets }
    }
}

/// Whether a value is a secret key.
pub fn is_secret(v: &HandleValue) -> bool {
    v.value_type.eq_ignore_ascii_case(types::HS_SECKEY)
}

impl ValuePolicy for SecretPolicy {
    fn prepare(&self, _handle: &str, values: &mut [HandleValue]) -> bool {
        let mut changed = false;
        for v in values.iter_mut().filter(|v| is_secret(v)) {
            let public = Permissions::PUBLIC_READ | Permissions::PUBLIC_WRITE;
            if v.permissions.0 & public != 0 {
                v.permissions = Permissions(v.permissions.0 & !public);
                changed = true;
            }
            if !is_sealed(&v.data) && !is_legacy_hash(&v.data) {
                v.data = self.secrets.seal(&v.data).into();
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_check() {
        let b = SecretBox::from_key(&[7; 32]);
        let s = b.seal(b"s3cret");
        assert!(s.starts_with(SEALED_TAG));
        assert!(!s.contains("s3cret"));
        assert_eq!(b.open(s.as_bytes()).unwrap(), b"s3cret");
        assert_ne!(s, b.seal(b"s3cret"), "a fresh nonce each time");
        assert_eq!(b.check_password(s.as_bytes(), b"s3cret"), Verdict::Match);
        assert_eq!(b.check_password(s.as_bytes(), b"s3cres"), Verdict::Mismatch);
        let other = SecretBox::from_key(&[8; 32]);
        assert_eq!(other.open(s.as_bytes()), None);
        assert_eq!(
            other.check_password(s.as_bytes(), b"s3cret"),
            Verdict::Unusable
        );
        assert_eq!(b.check_password(b"s3cret", b"s3cret"), Verdict::Unusable);
    }

    #[test]
    fn legacy_hashes_still_check() {
        // PBKDF2-HMAC-SHA256("password", "salt", 1000) as Python's hashlib
        // computes it, in the form earlier versions stored.
        let hash = hex::decode("632c2812e46d4604102ba7618e9d6d7d2f8128f6266b4a03264d2a0460b7dcb3")
            .unwrap();
        let stored = format!(
            "pbkdf2-sha256$1000${}${}",
            STANDARD_NO_PAD.encode(b"salt"),
            STANDARD_NO_PAD.encode(hash)
        );
        let b = SecretBox::from_key(&[7; 32]);
        assert_eq!(
            b.check_password(stored.as_bytes(), b"password"),
            Verdict::Match
        );
        assert_eq!(
            b.check_password(stored.as_bytes(), b"passwore"),
            Verdict::Mismatch
        );
        assert_eq!(
            b.check_password(b"pbkdf2-sha256$10$AAAA$AAAA", b"x"),
            Verdict::Unusable
        );
    }

    #[test]
    fn policy_seals_and_hides() {
        let b = std::sync::Arc::new(SecretBox::from_key(&[1; 32]));
        let p = SecretPolicy::new(b.clone());
        let mut vals = vec![
            HandleValue::new(300, "HS_SECKEY", "pw"),
            HandleValue::new(1, "URL", "https://a"),
        ];
        assert!(p.prepare("88/A", &mut vals));
        assert_eq!(vals[0].permissions.0 & Permissions::PUBLIC_READ, 0);
        assert_eq!(b.open(&vals[0].data).unwrap(), b"pw");
        assert_eq!(vals[1].data, "https://a");
        // Sealed data passes unchanged.
        let again = vals.clone();
        assert!(!p.prepare("88/A", &mut vals));
        assert_eq!(vals, again);
    }

    #[test]
    fn key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let a = SecretBox::load_or_create(&path).unwrap();
        let sealed = a.seal(b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(b.open(sealed.as_bytes()).unwrap(), b"x");
        fs::write(&path, b"short").unwrap();
        assert!(SecretBox::load_or_create(&path).is_err());
    }
}
