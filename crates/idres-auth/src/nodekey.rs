//! The node's own key: advertised in HS_SITE, used to sign replies.

use std::path::Path;

use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _};
use rsa::traits::PublicKeyParts as _;
use sha2::Sha256;
use signature::Signer as _;

use crate::pubkey::{HashAlg, PublicKey, RSA_PUB_KEY, SM2_DEFAULT_ID, SM2_PUB_KEY};
use crate::secret::write_private;

/// Bits of the RSA keys `idres keygen` makes.
pub const RSA_BITS: usize = 2048;

/// The algorithm of a node key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA 2048, signing with SHA-256.
    Rsa,
    /// SM2, signing with SM3 and the standard default user id.
    Sm2,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "rsa" => Ok(KeyAlgorithm::Rsa),
            "sm2" => Ok(KeyAlgorithm::Sm2),
            _ => Err(format!("unknown key algorithm {s:?}; use rsa or sm2")),
        }
    }
}

/// A node's private key.
#[derive(Clone)]
pub enum NodeKey {
    /// RSA.
    Rsa(Box<rsa::RsaPrivateKey>),
    /// SM2.
    Sm2(sm2::SecretKey),
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.algorithm_name())
    }
}

/// Why a node key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum NodeKeyError {
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file holds no key this node can use.
    #[error("{path}: {why}")]
    Bad {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

impl NodeKey {
    /// Makes a new key.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, String> {
        let mut rng = rand::rngs::OsRng;
        Ok(match alg {
            KeyAlgorithm::Rsa => NodeKey::Rsa(Box::new(
                rsa::RsaPrivateKey::new(&mut rng, RSA_BITS).map_err(|e| e.to_string())?,
            )),
            KeyAlgorithm::Sm2 => NodeKey::Sm2(sm2::SecretKey::random(&mut rng)),
        })
    }

    /// The key's algorithm in words.
    pub fn algorithm_name(&self) -> &'static str {
        match self {
            NodeKey::Rsa(_) => "RSA",
            NodeKey::Sm2(_) => "SM2",
        }
    }

    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`) of
    /// RSA or SM2, or a PKCS#1 RSA key.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(pem) {
            return Ok(NodeKey::Rsa(Box::new(k)));
        }
        if let Ok(k) = <rsa::RsaPrivateKey as rsa::pkcs1::DecodeRsaPrivateKey>::from_pkcs1_pem(pem)
        {
            return Ok(NodeKey::Rsa(Box::new(k)));
        }
        if let Ok(k) = <sm2::SecretKey as sm2::pkcs8::DecodePrivateKey>::from_pkcs8_pem(pem) {
            return Ok(NodeKey::Sm2(k));
        }
        Err("not a PEM RSA or SM2 private key (PKCS#8, or PKCS#1 for RSA)".into())
    }

    /// Loads the key in `path`.
    pub fn load(path: &Path) -> Result<Self, NodeKeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeKeyError::Bad {
            path: path.display().to_string(),
            why: format!("cannot read the node key: {e}"),
        })?;
        Self::from_pem(&text).map_err(|why| NodeKeyError::Bad {
            path: path.display().to_string(),
            why,
        })
    }

    /// The key as PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<String, String> {
        let doc = match self {
            NodeKey::Rsa(k) => k.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF),
            NodeKey::Sm2(k) => {
                sm2::pkcs8::EncodePrivateKey::to_pkcs8_pem(k, sm2::pkcs8::LineEnding::LF)
            }
        }
        .map_err(|e| e.to_string())?;
        Ok(doc.as_str().to_owned())
    }

    /// Writes the key as PKCS#8 PEM to a new file of mode 0600.
    pub fn write(&self, path: &Path) -> Result<(), NodeKeyError> {
        let pem = self.to_pem().map_err(|why| NodeKeyError::Bad {
            path: path.display().to_string(),
            why,
        })?;
        write_private(path, pem.as_bytes())?;
        Ok(())
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        match self {
            NodeKey::Rsa(k) => PublicKey::Rsa(k.to_public_key()),
            NodeKey::Sm2(k) => PublicKey::Sm2(k.public_key()),
        }
    }

    /// The public key as HS_SITE and HS_PUBKEY carry it: Handle's binary
    /// `RSA_PUB_KEY` form for RSA (what the Handle.Net client reads), and
    /// `SM2_PUB_KEY` with a PEM SubjectPublicKeyInfo for SM2.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            NodeKey::Rsa(k) => {
                put_bytes(&mut out, RSA_PUB_KEY.as_bytes());
                out.extend_from_slice(&0u16.to_be_bytes());
                put_bytes(&mut out, &twos_complement(&k.e().to_bytes_be()));
                put_bytes(&mut out, &twos_complement(&k.n().to_bytes_be()));
                out.extend_from_slice(&0u32.to_be_bytes());
            }
            NodeKey::Sm2(k) => {
                let pem = <sm2::PublicKey as sm2::pkcs8::EncodePublicKey>::to_public_key_pem(
                    &k.public_key(),
                    sm2::pkcs8::LineEnding::LF,
                )
                .unwrap_or_default();
                put_bytes(&mut out, SM2_PUB_KEY.as_bytes());
                out.extend_from_slice(&0u16.to_be_bytes());
                put_bytes(&mut out, pem.as_bytes());
            }
        }
        out
    }

    /// The public key as a PEM SubjectPublicKeyInfo.
    pub fn public_key_pem(&self) -> String {
        match self {
            NodeKey::Rsa(k) => k
                .to_public_key()
                .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                .unwrap_or_default(),
            NodeKey::Sm2(k) => <sm2::PublicKey as sm2::pkcs8::EncodePublicKey>::to_public_key_pem(
                &k.public_key(),
                sm2::pkcs8::LineEnding::LF,
            )
            .unwrap_or_default(),
        }
    }

    /// The hash this key signs with.
    pub fn hash(&self) -> HashAlg {
        match self {
            NodeKey::Rsa(_) => HashAlg::Sha256,
            NodeKey::Sm2(_) => HashAlg::Sm3,
        }
    }

    /// The hash's name as signatures carry it.
    pub fn hash_name(&self) -> &'static str {
        match self {
            NodeKey::Rsa(_) => "SHA-256",
            NodeKey::Sm2(_) => "SM3",
        }
    }

    /// Signs `message`: RSA PKCS#1 v1.5 with SHA-256, or SM2 with SM3 and
    /// the standard default user id, DER-encoded.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            NodeKey::Rsa(k) => {
                let sk = rsa::pkcs1v15::SigningKey::<Sha256>::new((**k).clone());
                let sig: Box<[u8]> = sk.sign(message).into();
                sig.into_vec()
            }
            NodeKey::Sm2(k) => match sm2::dsa::SigningKey::new(SM2_DEFAULT_ID, k) {
                Ok(sk) => {
                    let sig: sm2::dsa::Signature = sk.sign(message);
                    let raw: Option<[u8; 64]> = sig.to_bytes().as_slice().try_into().ok();
                    raw.and_then(|r| crate::pubkey::sm2_raw_to_der(&r))
                        .unwrap_or_default()
                }
                Err(_) => Vec::new(),
            },
        }
    }
}

impl NodeKey {
    /// Signs a challenge for an administrator whose handle is
    /// `identity_handle`: the hash name and the signature over
    /// `nonce ‖ digest` (RSA, SHA-256), or over SM3(`nonce ‖ digest`) with
    /// the handle as SM2 user id (as the national SDKs sign).
    pub fn sign_challenge(
        &self,
        identity_handle: &str,
        nonce: &[u8],
        digest: &[u8],
    ) -> (&'static str, Vec<u8>) {
        let message = [nonce, digest].concat();
        match self {
            NodeKey::Rsa(_) => ("SHA-256", self.sign(&message)),
            NodeKey::Sm2(k) => {
                use sm3::Digest as _;
                let pre = sm3::Sm3::digest(&message);
                let sig = sm2::dsa::SigningKey::new(identity_handle, k)
                    .ok()
                    .and_then(|sk| {
                        let sig: sm2::dsa::Signature = sk.sign(&pre);
                        let raw: [u8; 64] = sig.to_bytes().as_slice().try_into().ok()?;
                        crate::pubkey::sm2_raw_to_der(&raw)
                    })
                    .unwrap_or_default();
                ("SM3", sig)
            }
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Big-endian magnitude as Java's `BigInteger.toByteArray` writes a
/// positive number: a leading zero byte when the top bit is set.
fn twos_complement(mag: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(mag.len() + 1);
    if mag.first().is_some_and(|b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(mag);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sm2_round_trip_and_sign() {
        let k = NodeKey::generate(KeyAlgorithm::Sm2).unwrap();
        let pem = k.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = NodeKey::from_pem(&pem).unwrap();
        let sig = back.sign(b"message");
        let pk = PublicKey::from_hs_pubkey(&k.public_key_bytes()).unwrap();
        pk.verify(HashAlg::Sm3, &[b"message"], &sig, None).unwrap();
        assert!(pk.verify(HashAlg::Sm3, &[b"messagf"], &sig, None).is_err());
    }

    #[test]
    fn written_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.pem");
        let k = NodeKey::generate(KeyAlgorithm::Sm2).unwrap();
        k.write(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(k.write(&p).is_err(), "an existing key is never replaced");
        assert!(matches!(NodeKey::load(&p).unwrap(), NodeKey::Sm2(_)));
    }
}
