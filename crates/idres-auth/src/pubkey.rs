//! Public keys (HS_PUBKEY) and the signatures made with them.
//!
//! HS_PUBKEY data comes in three shapes, all accepted:
//!
//! - Handle's own binary form: str `RSA_PUB_KEY` or `DSA_PUB_KEY`, u16
//!   flags, then the key's numbers as int4-length big-endian byte strings
//!   (RSA: exponent, modulus, then an int4 reserved field some writers add;
//!   DSA: q, p, g, y);
//! - id-pointer-sdk's: str `SM2_PUB_KEY`, u16 flags, then str PEM (or DER)
//!   SubjectPublicKeyInfo;
//! - CAICT ID-SDK's: the bytes of a PEM file holding an RSA, DSA or SM2
//!   SubjectPublicKeyInfo.
//!
//! Signatures: RSA PKCS#1 v1.5 with SHA-256 or SHA-1; DSA (DER `r, s`)
//! with SHA-256 or SHA-1; SM2 with SM3 and a user id (DER or raw `r ‖ s`).

use rsa::pkcs8::DecodePublicKey as _;
use rsa::BigUint;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use signature::hazmat::PrehashVerifier as _;
use signature::Verifier as _;

/// Tag of Handle's binary RSA public key.
pub const RSA_PUB_KEY: &str = "RSA_PUB_KEY";
/// Tag of Handle's binary DSA public key.
pub const DSA_PUB_KEY: &str = "DSA_PUB_KEY";
/// Tag of id-pointer-sdk's SM2 public key.
pub const SM2_PUB_KEY: &str = "SM2_PUB_KEY";
/// Longest key data accepted.
pub const MAX_KEY_LEN: usize = 16 * 1024;
/// The SM2 user id of the standard (GM/T 0009), used when none is named.
pub const SM2_DEFAULT_ID: &str = "1234567812345678";

/// Why key data or a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key data has none of the accepted shapes.
    #[error("unusable public key: {0}")]
    BadKey(String),
    /// The hash named is not one this node checks with this key.
    #[error("hash {0:?} is not supported with this key")]
    BadHash(String),
    /// The signature does not verify.
    #[error("the signature does not verify")]
    BadSignature,
}

/// A hash a signer names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SM3.
    Sm3,
}

impl HashAlg {
    /// Reads a hash name as clients write it (`SHA256`, `SHA-256`, `SHA1`,
    /// `SHA-1`, `SHA`, `SM3`, any case).
    pub fn parse(name: &str) -> Option<Self> {
        let n: String = name
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_uppercase();
        match n.as_str() {
            "SHA256" => Some(HashAlg::Sha256),
            "SHA1" | "SHA" => Some(HashAlg::Sha1),
            "SM3" => Some(HashAlg::Sm3),
            _ => None,
        }
    }
}

/// A public key of an administrator or a node.
#[derive(Debug, Clone)]
pub enum PublicKey {
    /// RSA.
    Rsa(rsa::RsaPublicKey),
    /// DSA.
    Dsa(dsa::VerifyingKey),
    /// SM2.
    Sm2(sm2::PublicKey),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeyError> {
        if self.0.len() < n {
            return Err(KeyError::BadKey("key data ends early".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, KeyError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, KeyError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(&mut self) -> Result<&'a [u8], KeyError> {
        let n = self.u32()? as usize;
        if n > MAX_KEY_LEN {
            return Err(KeyError::BadKey("key field too long".into()));
        }
        self.take(n)
    }
}

fn big(b: &[u8]) -> BigUint {
    BigUint::from_bytes_be(b)
}

fn dsa_big(b: &[u8]) -> dsa::BigUint {
    dsa::BigUint::from_bytes_be(b)
}

impl PublicKey {
    /// Parses HS_PUBKEY data in any of the accepted shapes.
    pub fn from_hs_pubkey(data: &[u8]) -> Result<Self, KeyError> {
        if data.len() > MAX_KEY_LEN {
            return Err(KeyError::BadKey("key data too long".into()));
        }
        if data.starts_with(b"-----BEGIN") || data.starts_with(b"\n-----BEGIN") {
            let pem = std::str::from_utf8(data)
                .map_err(|_| KeyError::BadKey("PEM key is not text".into()))?;
            return Self::from_spki_pem(pem);
        }
        let mut r = Reader(data);
        let tag = r.bytes()?;
        let _flags = r.u16()?;
        match tag {
            t if t == RSA_PUB_KEY.as_bytes() => {
                let e = r.bytes()?;
                let n = r.bytes()?;
                let key = rsa::RsaPublicKey::new(big(n), big(e))
                    .map_err(|e| KeyError::BadKey(format!("RSA key: {e}")))?;
                Ok(PublicKey::Rsa(key))
            }
            t if t == DSA_PUB_KEY.as_bytes() => {
                let q = r.bytes()?;
                let p = r.bytes()?;
                let g = r.bytes()?;
                let y = r.bytes()?;
                let components =
                    dsa::Components::from_components(dsa_big(p), dsa_big(q), dsa_big(g))
                        .map_err(|e| KeyError::BadKey(format!("DSA parameters: {e}")))?;
                let key = dsa::VerifyingKey::from_components(components, dsa_big(y))
                    .map_err(|e| KeyError::BadKey(format!("DSA key: {e}")))?;
                Ok(PublicKey::Dsa(key))
            }
            t if t == SM2_PUB_KEY.as_bytes() => {
                let body = r.bytes()?;
                if body.starts_with(b"-----BEGIN") {
                    let pem = std::str::from_utf8(body)
                        .map_err(|_| KeyError::BadKey("PEM key is not text".into()))?;
                    Self::from_spki_pem(pem)
                } else {
                    Self::from_spki_der(body)
                }
            }
            other => Err(KeyError::BadKey(format!(
                "unknown key type {:?}",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// Parses a PEM SubjectPublicKeyInfo of an RSA, DSA or SM2 key.
    pub fn from_spki_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = pem_rfc7468_decode(pem)?;
        if label != "PUBLIC KEY" {
            return Err(KeyError::BadKey(format!(
                "PEM holds {label:?}, not a PUBLIC KEY"
            )));
        }
        Self::from_spki_der(&der)
    }

    /// Parses a DER SubjectPublicKeyInfo of an RSA, DSA or SM2 key.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(der) {
            return Ok(PublicKey::Rsa(k));
        }
        if let Ok(k) = <dsa::VerifyingKey as dsa::pkcs8::DecodePublicKey>::from_public_key_der(der)
        {
            return Ok(PublicKey::Dsa(k));
        }
        if let Ok(k) = <sm2::PublicKey as sm2::pkcs8::DecodePublicKey>::from_public_key_der(der) {
            return Ok(PublicKey::Sm2(k));
        }
        // SM2 keys are often written with the id-ecPublicKey algorithm and
        // the SM2 curve as parameter, which sm2's decoder accepts; some
        // writers name the curve by the SM2 algorithm OID instead. Take the
        // point from the key's bit string then.
        sm2_point_from_spki(der).map(PublicKey::Sm2)
    }

    /// Which algorithm this key is for, in words.
    pub fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Rsa(_) => "RSA",
            PublicKey::Dsa(_) => "DSA",
            PublicKey::Sm2(_) => "SM2",
        }
    }

    /// Checks `signature` over the concatenation of `parts`, made with
    /// hash `hash`. For SM2, `user_id` is the signer's id (the standard
    /// default when `None`), and the signature is DER or raw `r ‖ s`.
    pub fn verify(
        &self,
        hash: HashAlg,
        parts: &[&[u8]],
        signature: &[u8],
        user_id: Option<&str>,
    ) -> Result<(), KeyError> {
        let msg: Vec<u8> = parts.concat();
        match (self, hash) {
            (PublicKey::Rsa(k), HashAlg::Sha256) => {
                let vk = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k.clone());
                let sig = rsa::pkcs1v15::Signature::try_from(signature)
                    .map_err(|_| KeyError::BadSignature)?;
                vk.verify(&msg, &sig).map_err(|_| KeyError::BadSignature)
            }
            (PublicKey::Rsa(k), HashAlg::Sha1) => {
                let vk = rsa::pkcs1v15::VerifyingKey::<Sha1>::new(k.clone());
                let sig = rsa::pkcs1v15::Signature::try_from(signature)
                    .map_err(|_| KeyError::BadSignature)?;
                vk.verify(&msg, &sig).map_err(|_| KeyError::BadSignature)
            }
            (PublicKey::Dsa(k), HashAlg::Sha1 | HashAlg::Sha256) => {
                let sig =
                    dsa::Signature::try_from(signature).map_err(|_| KeyError::BadSignature)?;
                let digest = match hash {
                    HashAlg::Sha1 => Sha1::digest(&msg).to_vec(),
                    _ => Sha256::digest(&msg).to_vec(),
                };
                k.verify_prehash(&digest, &sig)
                    .map_err(|_| KeyError::BadSignature)
            }
            (PublicKey::Sm2(k), HashAlg::Sm3) => {
                let id = user_id.unwrap_or(SM2_DEFAULT_ID);
                let vk = sm2::dsa::VerifyingKey::new(id, *k)
                    .map_err(|_| KeyError::BadKey("SM2 user id too long".into()))?;
                let raw = if signature.len() == 64 {
                    signature.to_vec()
                } else {
                    sm2_der_to_raw(signature).ok_or(KeyError::BadSignature)?
                };
                let sig =
                    sm2::dsa::Signature::from_slice(&raw).map_err(|_| KeyError::BadSignature)?;
                vk.verify(&msg, &sig).map_err(|_| KeyError::BadSignature)
            }
            (_, h) => Err(KeyError::BadHash(format!("{h:?}"))),
        }
    }
}

/// An ECDSA-style signature: SEQUENCE { r INTEGER, s INTEGER }.
#[derive(der::Sequence)]
struct DerSignature<'a> {
    r: der::asn1::UintRef<'a>,
    s: der::asn1::UintRef<'a>,
}

/// An SM2 signature in DER as raw `r ‖ s` (32 bytes each).
pub fn sm2_der_to_raw(der_sig: &[u8]) -> Option<Vec<u8>> {
    use der::Decode as _;
    let sig = DerSignature::from_der(der_sig).ok()?;
    let mut out = vec![0u8; 64];
    for (half, int) in [(0usize, sig.r), (1, sig.s)] {
        let b = int.as_bytes();
        if b.len() > 32 {
            return None;
        }
        out[half * 32 + 32 - b.len()..half * 32 + 32].copy_from_slice(b);
    }
    Some(out)
}

/// An SM2 signature as raw `r ‖ s` in DER.
pub fn sm2_raw_to_der(raw: &[u8; 64]) -> Option<Vec<u8>> {
    use der::Encode as _;
    let sig = DerSignature {
        r: der::asn1::UintRef::new(&raw[..32]).ok()?,
        s: der::asn1::UintRef::new(&raw[32..]).ok()?,
    };
    sig.to_der().ok()
}

/// Decodes one PEM block: its label and contents.
fn pem_rfc7468_decode(pem: &str) -> Result<(String, Vec<u8>), KeyError> {
    use base64::Engine as _;
    let bad = |m: &str| KeyError::BadKey(format!("PEM: {m}"));
    let start = pem
        .find("-----BEGIN ")
        .ok_or_else(|| bad("no BEGIN line"))?;
    let rest = &pem[start + 11..];
    let label_end = rest
        .find("-----")
        .ok_or_else(|| bad("BEGIN line unfinished"))?;
    let label = rest[..label_end].to_owned();
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let body_end = rest.find(&end_marker).ok_or_else(|| bad("no END line"))?;
    let b64: String = rest[body_start..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad("body is not base64"))?;
    Ok((label, der))
}

/// The SM2 point of a SubjectPublicKeyInfo whose algorithm parameters name
/// SM2 in a form the sm2 crate's decoder does not take: the last BIT
/// STRING of the structure holds the uncompressed point.
fn sm2_point_from_spki(der: &[u8]) -> Result<sm2::PublicKey, KeyError> {
    // SM2 curve OID 1.2.156.10197.1.301 in DER.
    const SM2_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d];
    if !der.windows(SM2_OID.len()).any(|w| w == SM2_OID) {
        return Err(KeyError::BadKey(
            "not an RSA, DSA or SM2 SubjectPublicKeyInfo".into(),
        ));
    }
    // An uncompressed P-256-sized point: 0x03 0x42 0x00 0x04 || X || Y.
    let tail = der
        .len()
        .checked_sub(65)
        .and_then(|at| der.get(at..))
        .filter(|p| p.first() == Some(&0x04))
        .ok_or_else(|| KeyError::BadKey("SM2 key has no uncompressed point".into()))?;
    sm2::PublicKey::from_sec1_bytes(tail).map_err(|_| KeyError::BadKey("bad SM2 point".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::EncodePublicKey as _;
    use rsa::traits::PublicKeyParts as _;
    use signature::Signer as _;

    fn handle_rsa_bytes(k: &rsa::RsaPublicKey) -> Vec<u8> {
        let mut out = Vec::new();
        let put = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        put(&mut out, RSA_PUB_KEY.as_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        // Java's BigInteger.toByteArray: a leading zero when the top bit
        // is set.
        let mut e = vec![0];
        e.extend(k.e().to_bytes_be());
        let mut n = vec![0];
        n.extend(k.n().to_bytes_be());
        put(&mut out, &e);
        put(&mut out, &n);
        out.extend_from_slice(&0u32.to_be_bytes());
        out
    }

    #[test]
    fn rsa_in_both_encodings() {
        let mut rng = rand::rngs::OsRng;
        let sk = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let pk = sk.to_public_key();
        let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(sk.clone());
        let sig: Box<[u8]> = signer.sign(b"noncedigest").into();
        for data in [
            handle_rsa_bytes(&pk),
            pk.to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                .unwrap()
                .into_bytes(),
        ] {
            let key = PublicKey::from_hs_pubkey(&data).unwrap();
            assert_eq!(key.algorithm(), "RSA");
            key.verify(HashAlg::Sha256, &[b"nonce", b"digest"], &sig, None)
                .unwrap();
            assert_eq!(
                key.verify(HashAlg::Sha256, &[b"nonce", b"digesT"], &sig, None),
                Err(KeyError::BadSignature)
            );
            assert!(key
                .verify(HashAlg::Sha1, &[b"noncedigest"], &sig, None)
                .is_err());
        }
    }

    #[test]
    fn sm2_with_user_id() {
        let sk = sm2::SecretKey::random(&mut rand::rngs::OsRng);
        let signer = sm2::dsa::SigningKey::new("88.118.8/ADMIN", &sk).unwrap();
        let sig: sm2::dsa::Signature = signer.sign(b"msg");
        let pem = <sm2::PublicKey as sm2::pkcs8::EncodePublicKey>::to_public_key_pem(
            &sk.public_key(),
            sm2::pkcs8::LineEnding::LF,
        )
        .unwrap();
        let key = PublicKey::from_hs_pubkey(pem.as_bytes()).unwrap();
        assert_eq!(key.algorithm(), "SM2");
        key.verify(
            HashAlg::Sm3,
            &[b"msg"],
            &sig.to_bytes(),
            Some("88.118.8/ADMIN"),
        )
        .unwrap();
        let raw: [u8; 64] = sig.to_bytes().as_slice().try_into().unwrap();
        let der_sig = sm2_raw_to_der(&raw).unwrap();
        assert_eq!(der_sig[0], 0x30);
        assert_eq!(sm2_der_to_raw(&der_sig).unwrap(), raw.to_vec());
        key.verify(
            HashAlg::Sm3,
            &[b"m", b"sg"],
            &der_sig,
            Some("88.118.8/ADMIN"),
        )
        .unwrap();
        assert!(key
            .verify(HashAlg::Sm3, &[b"msg"], &sig.to_bytes(), None)
            .is_err());
        // id-pointer-sdk's wrapping.
        let mut wrapped = Vec::new();
        wrapped.extend_from_slice(&(SM2_PUB_KEY.len() as u32).to_be_bytes());
        wrapped.extend_from_slice(SM2_PUB_KEY.as_bytes());
        wrapped.extend_from_slice(&0u16.to_be_bytes());
        wrapped.extend_from_slice(&(pem.len() as u32).to_be_bytes());
        wrapped.extend_from_slice(pem.as_bytes());
        assert!(matches!(
            PublicKey::from_hs_pubkey(&wrapped).unwrap(),
            PublicKey::Sm2(_)
        ));
    }

    /// A signature made by gmssl 3.2.2 (Python), an implementation
    /// independent of this one: private key 3945208F…C5B8, k 59276E27…BC21,
    /// the standard default user id.
    #[test]
    fn sm2_vector_from_gmssl() {
        let point = hex::decode(
            "04\
             09f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020\
             ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13",
        )
        .unwrap();
        let key = PublicKey::Sm2(sm2::PublicKey::from_sec1_bytes(&point).unwrap());
        let sig = hex::decode(
            "ae457c440bdb248d0642d7194ff1980b3b37b5fbd0a2c0de5d382265e1449a8e\
             1cf6780381504172c2823fcab672f5d427953e3aa88e0a4a2518cbb70279b235",
        )
        .unwrap();
        let msg = b"idres SM2 test vector: nonce||digest";
        key.verify(HashAlg::Sm3, &[msg], &sig, None).unwrap();
        let der = sm2_raw_to_der(&sig.clone().try_into().unwrap()).unwrap();
        key.verify(HashAlg::Sm3, &[msg], &der, None).unwrap();
        assert!(key
            .verify(
                HashAlg::Sm3,
                &[b"idres SM2 test vector: nonce||digesT"],
                &sig,
                None
            )
            .is_err());
        assert!(key
            .verify(HashAlg::Sm3, &[msg], &sig, Some("88.118.8/ADMIN"))
            .is_err());
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b""[..],
            b"\x00\x00\x00\x0bRSA_PUB_KEY\x00",
            b"\x00\x00\x00\x0bXYZ_PUB_KEY\x00\x00",
            b"\xff\xff\xff\xff",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        ] {
            assert!(PublicKey::from_hs_pubkey(bad).is_err(), "{bad:?}");
        }
    }
}
