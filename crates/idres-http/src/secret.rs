//! Secret keys (HS_SECKEY) stored as salted slow hashes.
//!
//! A node never keeps a secret key in clear: whenever an HS_SECKEY value is
//! written through the API (or by `idres admin init-prefix`), its data is
//! replaced by
//!
//! ```text
//! pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>
//! ```
//!
//! (PBKDF2-HMAC-SHA256, RFC 8018 §5.2, 16 random bytes of salt, 32 bytes of
//! output, base64 without padding). Verification recomputes the hash and
//! compares in constant time. Data that already has this form is taken as
//! a hash and kept, so a record read by an administrator and written back
//! keeps its secret.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// The scheme tag that starts every stored hash.
pub const SCHEME: &str = "pbkdf2-sha256";
/// Iterations used for new hashes unless configured otherwise.
pub const DEFAULT_ITERATIONS: u32 = 100_000;
/// Fewest iterations accepted in a stored hash or in the configuration.
pub const MIN_ITERATIONS: u32 = 1_000;
/// Most iterations accepted in a stored hash, so that a record cannot make
/// every login spin for minutes.
pub const MAX_ITERATIONS: u32 = 10_000_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

/// The result of checking a password against stored data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password is right.
    Match,
    /// The password is wrong.
    Mismatch,
    /// The stored data is not a hash this node understands (for example a
    /// secret imported in clear); it is never compared.
    Unusable,
}

/// Whether `data` already is a stored hash.
pub fn is_hashed(data: &[u8]) -> bool {
    parse(data).is_some()
}

/// Hashes `secret` with a fresh random salt.
pub fn hash_secret(secret: &[u8], iterations: u32) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    hash_with_salt(
        secret,
        &salt,
        iterations.clamp(MIN_ITERATIONS, MAX_ITERATIONS),
    )
}

fn hash_with_salt(secret: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(secret, salt, iterations, &mut out);
    format!(
        "{SCHEME}${iterations}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    )
}

struct Parsed {
    iterations: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

fn parse(data: &[u8]) -> Option<Parsed> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.split('$');
    if parts.next()? != SCHEME {
        return None;
    }
    let iterations: u32 = parts.next()?.parse().ok()?;
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return None;
    }
    let salt = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
    let hash = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
    if parts.next().is_some() || salt.is_empty() || salt.len() > 64 || hash.len() != HASH_LEN {
        return None;
    }
    Some(Parsed {
        iterations,
        salt,
        hash,
    })
}

/// Checks `password` against stored HS_SECKEY data. Slow by design: run it
/// off the async workers.
pub fn verify(stored: &[u8], password: &[u8]) -> Verdict {
    let Some(p) = parse(stored) else {
        return Verdict::Unusable;
    };
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, &p.salt, p.iterations, &mut out);
    if bool::from(out.ct_eq(p.hash.as_slice())) {
        Verdict::Match
    } else {
        Verdict::Mismatch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_secret(b"s3cret", MIN_ITERATIONS);
        assert!(h.starts_with("pbkdf2-sha256$1000$"));
        assert!(is_hashed(h.as_bytes()));
        assert_eq!(verify(h.as_bytes(), b"s3cret"), Verdict::Match);
        assert_eq!(verify(h.as_bytes(), b"s3cres"), Verdict::Mismatch);
        assert_eq!(verify(h.as_bytes(), b""), Verdict::Mismatch);
        // Two hashes of one secret differ by their salt.
        assert_ne!(h, hash_secret(b"s3cret", MIN_ITERATIONS));
    }

    #[test]
    fn known_vector() {
        // PBKDF2-HMAC-SHA256("password", "salt", 1000), 32 bytes, as
        // Python's hashlib.pbkdf2_hmac computes it.
        let h = hash_with_salt(b"password", b"salt", 1000);
        let hash = h.rsplit('$').next().unwrap();
        assert_eq!(
            hex_of(&STANDARD_NO_PAD.decode(hash).unwrap()),
            "632c2812e46d4604102ba7618e9d6d7d2f8128f6266b4a03264d2a0460b7dcb3"
        );
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn clear_or_odd_data_is_unusable() {
        for bad in [
            &b"s3cret"[..],
            b"pbkdf2-sha256$10$AAAA$AAAA",
            b"pbkdf2-sha256$99999999999$AAAA$AAAA",
            b"pbkdf2-sha256$1000$$",
            b"pbkdf2-sha256$1000$c2FsdA$c2hvcnQ",
            b"\xff\xfe",
        ] {
            assert_eq!(verify(bad, b"s3cret"), Verdict::Unusable, "{bad:?}");
            assert!(!is_hashed(bad));
        }
    }
}
