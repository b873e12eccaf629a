//! Owns content-trust keys: Ed25519 or ECDSA P-256 key pairs made and used with `ring`, their
//! public halves as they appear in trust documents, and the passphrase-sealed file a private
//! key lives in on an operator's disk.
//!
//! A sealed key file is JSON: the key's name, algorithm and public key in the clear, and its
//! PKCS#8 document encrypted with AES-256-GCM under a key derived from the passphrase with
//! PBKDF2-HMAC-SHA256 (a random salt, [`PBKDF2_ITERATIONS`] rounds). The name, algorithm and
//! public key are the AEAD's associated data, so none of them can be swapped under the sealed
//! key. Private key bytes never appear in `Debug` output or errors.

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use super::TrustError;

/// PBKDF2 rounds for a sealed key (OWASP's figure for PBKDF2-HMAC-SHA256).
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// The shortest passphrase a key is sealed with.
pub const MIN_PASSPHRASE: usize = 8;
const SEALED_FORMAT: &str = "shoal-trust-key-v1";

/// The signature algorithms trust keys use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    Ed25519,
    EcdsaP256,
}

impl Algorithm {
    pub fn parse(s: &str) -> Result<Algorithm, TrustError> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(Algorithm::Ed25519),
            "ecdsa" | "ecdsa-p256" | "p256" | "p-256" => Ok(Algorithm::EcdsaP256),
            other => Err(TrustError::Key(format!(
                "unknown key algorithm {other:?}: use ed25519 or ecdsa-p256"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256 => "ecdsa-p256",
        }
    }
}

/// A public key as trust documents carry it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey {
    pub algorithm: Algorithm,
    /// The raw public key, base64: 32 bytes for Ed25519, an uncompressed P-256 point (65).
    pub public: String,
}

impl PublicKey {
    fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> PublicKey {
        PublicKey { algorithm, public: B64.encode(bytes) }
    }

    /// The key's ID: hex SHA-256 of its algorithm and bytes, as documents' signatures name it.
    pub fn id(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(self.algorithm.name().as_bytes());
        ctx.update(b":");
        ctx.update(self.public.as_bytes());
        hex(ctx.finish().as_ref())
    }

    /// The first 12 characters of the ID, as listings show it.
    pub fn short_id(&self) -> String {
        self.id()[..12].to_string()
    }

    /// Whether `sig` is this key's signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(bytes) = B64.decode(&self.public) else { return false };
        let alg: &dyn signature::VerificationAlgorithm = match self.algorithm {
            Algorithm::Ed25519 => &signature::ED25519,
            Algorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        };
        signature::UnparsedPublicKey::new(alg, bytes).verify(msg, sig).is_ok()
    }

    /// A key from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) block, ECDSA P-256 or Ed25519, as
    /// `cosign generate-key-pair` and OpenSSL write them.
    pub fn from_spki_pem(text: &str) -> Result<PublicKey, TrustError> {
        use x509_parser::prelude::FromDer;
        let block =
            pem::parse(text).map_err(|e| TrustError::Key(format!("not a PEM public key: {e}")))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(TrustError::Key(format!(
                "a {} PEM block is not a public key (want BEGIN PUBLIC KEY)",
                block.tag()
            )));
        }
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(block.contents())
            .map_err(|e| TrustError::Key(format!("not a SubjectPublicKeyInfo: {e}")))?;
        use crate::ca::{key_algorithm, OID_EC_PUBLIC_KEY, OID_P256};
        let (alg, curve) = key_algorithm(&spki);
        let algorithm = match (alg.as_str(), curve.as_deref()) {
            (OID_EC_PUBLIC_KEY, Some(OID_P256)) => Algorithm::EcdsaP256,
            ("1.3.101.112", _) => Algorithm::Ed25519,
            _ => {
                return Err(TrustError::Key(format!(
                    "a public key of algorithm {alg} (want ECDSA P-256 or Ed25519)"
                )))
            }
        };
        let key = PublicKey::from_bytes(algorithm, &spki.subject_public_key.data);
        key.check()?;
        Ok(key)
    }

    /// Checks that the key parses: the right length and, for P-256, a point on the curve.
    pub fn check(&self) -> Result<(), TrustError> {
        let bytes = B64
            .decode(&self.public)
            .map_err(|_| TrustError::Key("a public key is not base64".into()))?;
        let ok = match self.algorithm {
            Algorithm::Ed25519 => bytes.len() == 32,
            Algorithm::EcdsaP256 => bytes.len() == 65 && bytes[0] == 4,
        };
        if ok {
            Ok(())
        } else {
            Err(TrustError::Key(format!("not an {} public key", self.algorithm.name())))
        }
    }
}

enum Pair {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
}

/// A private trust key in memory.
pub struct SigningKey {
    name: String,
    algorithm: Algorithm,
    pkcs8: Vec<u8>,
    pair: Pair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("id", &self.public().short_id())
            .finish_non_exhaustive()
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        self.pkcs8.iter_mut().for_each(|b| *b = 0);
    }
}

impl SigningKey {
    /// A new key pair called `name`.
    pub fn generate(name: &str, algorithm: Algorithm) -> Result<SigningKey, TrustError> {
        check_name(name)?;
        let rng = SystemRandom::new();
        let doc = match algorithm {
            Algorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng),
            Algorithm::EcdsaP256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            }
        }
        .map_err(|_| TrustError::Key("the system's random source failed".into()))?;
        SigningKey::from_pkcs8(name, algorithm, doc.as_ref())
    }

    /// A key from its PKCS#8 document.
    pub fn from_pkcs8(
        name: &str,
        algorithm: Algorithm,
        pkcs8: &[u8],
    ) -> Result<SigningKey, TrustError> {
        check_name(name)?;
        let bad = |_| TrustError::Key(format!("not an {} PKCS#8 private key", algorithm.name()));
        let pair = match algorithm {
            Algorithm::Ed25519 => Pair::Ed(
                Ed25519KeyPair::from_pkcs8(pkcs8)
                    .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8))
                    .map_err(bad)?,
            ),
            Algorithm::EcdsaP256 => Pair::Ec(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    pkcs8,
                    &SystemRandom::new(),
                )
                .map_err(bad)?,
            ),
        };
        Ok(SigningKey { name: name.to_string(), algorithm, pkcs8: pkcs8.to_vec(), pair })
    }

    /// A key from a PEM `PRIVATE KEY` (PKCS#8) block, Ed25519 or P-256 (`trust key load`).
    pub fn from_pem(name: &str, pem_text: &str) -> Result<SigningKey, TrustError> {
        let block = pem::parse(pem_text)
            .map_err(|e| TrustError::Key(format!("not a PEM private key: {e}")))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(TrustError::Key(format!(
                "a {} PEM block is not a PKCS#8 private key (want BEGIN PRIVATE KEY; convert with openssl pkcs8 -topk8 -nocrypt)",
                block.tag()
            )));
        }
        [Algorithm::Ed25519, Algorithm::EcdsaP256]
            .into_iter()
            .find_map(|a| SigningKey::from_pkcs8(name, a, block.contents()).ok())
            .ok_or_else(|| {
                TrustError::Key("the private key is neither Ed25519 nor ECDSA P-256".into())
            })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The private key's PKCS#8 document (for a store that seals it, such as the managers').
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn public(&self) -> PublicKey {
        match &self.pair {
            Pair::Ed(p) => PublicKey::from_bytes(self.algorithm, p.public_key().as_ref()),
            Pair::Ec(p) => PublicKey::from_bytes(self.algorithm, p.public_key().as_ref()),
        }
    }

    /// This key's signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, TrustError> {
        match &self.pair {
            Pair::Ed(p) => Ok(p.sign(msg).as_ref().to_vec()),
            Pair::Ec(p) => p
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| TrustError::Key("signing failed".into())),
        }
    }

    /// The key sealed under `passphrase`, as the bytes of its file.
    pub fn seal(&self, passphrase: &str) -> Result<Vec<u8>, TrustError> {
        if passphrase.chars().count() < MIN_PASSPHRASE {
            return Err(TrustError::Key(format!(
                "the passphrase is shorter than {MIN_PASSPHRASE} characters"
            )));
        }
        let rng = SystemRandom::new();
        let (mut salt, mut nonce) = ([0u8; 16], [0u8; 12]);
        rng.fill(&mut salt)
            .and_then(|()| rng.fill(&mut nonce))
            .map_err(|_| TrustError::Key("the system's random source failed".into()))?;
        let public = self.public();
        let mut sealed = self.pkcs8.clone();
        let key = derive(passphrase, &salt, PBKDF2_ITERATIONS);
        key.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(aad(&self.name, &public)),
            &mut sealed,
        )
        .map_err(|_| TrustError::Key("sealing the key failed".into()))?;
        let file = SealedFile {
            format: SEALED_FORMAT.into(),
            name: self.name.clone(),
            public,
            iterations: PBKDF2_ITERATIONS,
            salt: B64.encode(salt),
            nonce: B64.encode(nonce),
            sealed: B64.encode(&sealed),
        };
        let mut out = serde_json::to_vec_pretty(&file).expect("a sealed key serializes");
        out.push(b'\n');
        Ok(out)
    }

    /// Opens a sealed key file with `passphrase`.
    pub fn open(file: &[u8], passphrase: &str) -> Result<SigningKey, TrustError> {
        let f: SealedFile = serde_json::from_slice(file)
            .map_err(|e| TrustError::Key(format!("not a Shoal trust key file: {e}")))?;
        if f.format != SEALED_FORMAT {
            return Err(TrustError::Key(format!("unknown key file format {:?}", f.format)));
        }
        if !(10_000..=10_000_000).contains(&f.iterations) {
            return Err(TrustError::Key("the key file's PBKDF2 rounds are out of range".into()));
        }
        let decode =
            |s: &str| B64.decode(s).map_err(|_| TrustError::Key("the key file is damaged".into()));
        let (salt, nonce) = (decode(&f.salt)?, decode(&f.nonce)?);
        let nonce: [u8; 12] =
            nonce.try_into().map_err(|_| TrustError::Key("the key file is damaged".into()))?;
        let mut sealed = decode(&f.sealed)?;
        let key = derive(passphrase, &salt, f.iterations);
        let plain = key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad(&f.name, &f.public)),
                &mut sealed,
            )
            .map_err(|_| {
                TrustError::Key(format!(
                    "wrong passphrase for key {:?} (or the file was altered)",
                    f.name
                ))
            })?;
        let key = SigningKey::from_pkcs8(&f.name, f.public.algorithm, plain);
        sealed.iter_mut().for_each(|b| *b = 0);
        let key = key?;
        if key.public() != f.public {
            return Err(TrustError::Key("the key file's public key does not match".into()));
        }
        Ok(key)
    }
}

/// The public half of a sealed key file, read without its passphrase.
pub fn sealed_public(file: &[u8]) -> Result<(String, PublicKey), TrustError> {
    let f: SealedFile = serde_json::from_slice(file)
        .map_err(|e| TrustError::Key(format!("not a Shoal trust key file: {e}")))?;
    f.public.check()?;
    Ok((f.name, f.public))
}

#[derive(Serialize, Deserialize)]
struct SealedFile {
    format: String,
    name: String,
    public: PublicKey,
    iterations: u32,
    salt: String,
    nonce: String,
    sealed: String,
}

fn derive(passphrase: &str, salt: &[u8], iterations: u32) -> ring::aead::LessSafeKey {
    let mut key = [0u8; 32];
    let rounds = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        passphrase.as_bytes(),
        &mut key,
    );
    let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key)
        .expect("32 bytes is an AES-256 key");
    key.iter_mut().for_each(|b| *b = 0);
    ring::aead::LessSafeKey::new(unbound)
}

fn aad(name: &str, public: &PublicKey) -> Vec<u8> {
    format!("{SEALED_FORMAT}\n{name}\n{}\n{}", public.algorithm.name(), public.public).into_bytes()
}

/// Key and signer names: 1–64 of letters, digits, `-`, `_`, `.`, not starting with `.` or `-`.
pub fn check_name(name: &str) -> Result<(), TrustError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(TrustError::Key(format!(
            "invalid key name {name:?}: 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_verify_and_seal_for_both_algorithms() {
        for alg in [Algorithm::Ed25519, Algorithm::EcdsaP256] {
            let k = SigningKey::generate("alice", alg).unwrap();
            let public = k.public();
            public.check().unwrap();
            let sig = k.sign(b"manifest").unwrap();
            assert!(public.verify(b"manifest", &sig));
            assert!(!public.verify(b"manifest!", &sig), "{alg:?}: another message verified");
            let other = SigningKey::generate("bob", alg).unwrap().public();
            assert!(!other.verify(b"manifest", &sig), "{alg:?}: another key verified");

            let file = k.seal("correct horse").unwrap();
            let text = String::from_utf8(file.clone()).unwrap();
            assert!(!text.contains(&B64.encode(&k.pkcs8)), "the private key is in the clear");
            let back = SigningKey::open(&file, "correct horse").unwrap();
            assert_eq!(back.public(), public);
            let e = SigningKey::open(&file, "wrong horse").unwrap_err().to_string();
            assert!(e.contains("wrong passphrase"), "{e}");
            // Swapping the public key (to make a verifier trust another) breaks the seal.
            let swapped = text.replace(&public.public, &other.public);
            assert!(SigningKey::open(swapped.as_bytes(), "correct horse").is_err());
            assert_eq!(sealed_public(&file).unwrap(), ("alice".to_string(), public));
        }
    }

    #[test]
    fn bad_names_passphrases_and_files_are_refused() {
        for bad in ["", ".x", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(SigningKey::generate(bad, Algorithm::Ed25519).is_err(), "{bad:?}");
        }
        let k = SigningKey::generate("k", Algorithm::Ed25519).unwrap();
        assert!(k.seal("short").unwrap_err().to_string().contains("shorter than 8"));
        for garbage in [&b""[..], b"{}", b"not json", b"{\"format\":\"x\"}"] {
            assert!(SigningKey::open(garbage, "correct horse").is_err());
        }
        assert!(!format!("{k:?}").contains(&B64.encode(&k.pkcs8)));
        assert!(Algorithm::parse("rsa").unwrap_err().to_string().contains("ed25519 or ecdsa"));
    }

    #[test]
    fn spki_public_keys_load() {
        let k = SigningKey::generate("c", Algorithm::EcdsaP256).unwrap();
        let point = B64.decode(&k.public().public).unwrap();
        // SubjectPublicKeyInfo of an uncompressed P-256 point: the fixed DER prefix, the point.
        let mut der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        der.extend(point);
        let text = pem::encode(&pem::Pem::new("PUBLIC KEY", der));
        assert_eq!(PublicKey::from_spki_pem(&text).unwrap(), k.public());
        let bad = pem::encode(&pem::Pem::new("PUBLIC KEY", vec![0x30, 0x03, 0x02, 0x01, 0x00]));
        assert!(PublicKey::from_spki_pem(&bad).is_err());
        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1]));
        assert!(PublicKey::from_spki_pem(&cert)
            .unwrap_err()
            .to_string()
            .contains("not a public key"));
    }

    #[test]
    fn pem_keys_load() {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let text = pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()));
        let k = SigningKey::from_pem("ci", &text).unwrap();
        assert_eq!(k.algorithm(), Algorithm::Ed25519);
        let doc =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let text = pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()));
        assert_eq!(SigningKey::from_pem("ci", &text).unwrap().algorithm(), Algorithm::EcdsaP256);
        let rsa = pem::encode(&pem::Pem::new("RSA PRIVATE KEY", vec![1, 2, 3]));
        assert!(SigningKey::from_pem("ci", &rsa).unwrap_err().to_string().contains("PKCS#8"));
    }
}
