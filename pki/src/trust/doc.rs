//! Owns the trust documents and their signatures.
//!
//! A document is `{"signed": {...}, "signatures": [{"keyid": ..., "sig": ...}]}`. What is signed
//! is `shoal-trust-v1 <role>\n` followed by the compact JSON of `signed` as this code writes
//! it: struct fields in declaration order, maps sorted by key, integers only. A verifier
//! re-serializes what it parsed, so a document with fields this version does not know, or
//! written any other way, fails its signature rather than being half-understood.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::key::{PublicKey, SigningKey};
use super::{covers, TrustError};

/// The largest trust document accepted.
pub const MAX_DOCUMENT: usize = 1 << 20;

/// One signature of a document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

/// A document and its signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed<T> {
    pub signed: T,
    pub signatures: Vec<Signature>,
}

/// A kind of trust document.
pub trait Role: Serialize + DeserializeOwned + Clone {
    const ROLE: &'static str;
}

impl<T: Role> Signed<T> {
    /// `doc` signed by `keys`.
    pub fn sign(doc: T, keys: &[&SigningKey]) -> Result<Signed<T>, TrustError> {
        let mut s = Signed { signed: doc, signatures: Vec::new() };
        for k in keys {
            s.add_signature(k)?;
        }
        Ok(s)
    }

    /// Adds `key`'s signature.
    pub fn add_signature(&mut self, key: &SigningKey) -> Result<(), TrustError> {
        let sig = key.sign(&self.message())?;
        let keyid = key.public().id();
        self.signatures.retain(|s| s.keyid != keyid);
        self.signatures.push(Signature { keyid, sig: B64.encode(sig) });
        Ok(())
    }

    /// The bytes signatures cover.
    pub fn message(&self) -> Vec<u8> {
        let mut m = format!("shoal-trust-v1 {}\n", T::ROLE).into_bytes();
        m.extend(serde_json::to_vec(&self.signed).expect("trust documents serialize"));
        m
    }

    /// Whether `key` signed this document.
    pub fn signed_by(&self, key: &PublicKey) -> bool {
        let id = key.id();
        let msg = self.message();
        self.signatures
            .iter()
            .filter(|s| s.keyid == id)
            .any(|s| B64.decode(&s.sig).is_ok_and(|sig| key.verify(&msg, &sig)))
    }

    /// The document as stored and sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("trust documents serialize")
    }

    /// Parses a document, refusing oversized or malformed ones.
    pub fn from_bytes(bytes: &[u8]) -> Result<Signed<T>, TrustError> {
        if bytes.len() > MAX_DOCUMENT {
            return Err(TrustError::Malformed(format!(
                "a {} document of {} bytes (at most {MAX_DOCUMENT})",
                T::ROLE,
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes)
            .map_err(|e| TrustError::Malformed(format!("{} document: {e}", T::ROLE)))
    }

    /// Hex SHA-256 of the signed part, as a timestamp names it.
    pub fn digest(&self) -> String {
        super::key::hex(ring::digest::digest(&ring::digest::SHA256, &self.message()).as_ref())
    }
}

/// The root of a repository prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// The repositories it covers: this one and those below it (`reg:5000/team`).
    pub prefix: String,
    /// 1 for the first root of the prefix, one more for each rotation.
    pub version: u64,
    pub key: PublicKey,
}

impl Role for Root {
    const ROLE: &'static str = "root";
}

/// The signers a root lets sign one repository's targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delegations {
    pub repo: String,
    pub version: u64,
    /// Signer name → key.
    pub signers: BTreeMap<String, PublicKey>,
    /// Unix seconds after which the document is refused.
    pub expires: u64,
}

impl Role for Delegations {
    const ROLE: &'static str = "delegations";
}

/// One signed tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The manifest digest (`sha256:…`).
    pub digest: String,
    /// Who signed it (a delegated signer's name).
    pub signer: String,
}

/// A repository's signed tags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    pub repo: String,
    pub version: u64,
    pub tags: BTreeMap<String, Target>,
    pub expires: u64,
}

impl Role for Targets {
    const ROLE: &'static str = "targets";
}

/// The managers' statement that these delegations and targets are current.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timestamp {
    pub repo: String,
    pub version: u64,
    pub delegations: String,
    pub targets: String,
    pub targets_version: u64,
    pub expires: u64,
}

impl Role for Timestamp {
    const ROLE: &'static str = "timestamp";
}

impl Timestamp {
    /// A timestamp (version `version`, good until `expires`) over these documents.
    pub fn over(
        d: &Signed<Delegations>,
        t: &Signed<Targets>,
        version: u64,
        expires: u64,
    ) -> Timestamp {
        Timestamp {
            repo: t.signed.repo.clone(),
            version,
            delegations: d.digest(),
            targets: t.digest(),
            targets_version: t.signed.version,
            expires,
        }
    }
}

/// The cluster's content-trust requirement, as a root signs it to turn enforcement off on the
/// nodes (turning it on needs no signature: it only narrows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub required: bool,
    /// Later statements win; an older one is refused.
    pub version: u64,
}

impl Role for Policy {
    const ROLE: &'static str = "policy";
}

/// Everything needed to check one repository: its root chain (oldest first), delegations,
/// targets and timestamp. What managers keep per repository and send with a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub roots: Vec<Signed<Root>>,
    pub delegations: Signed<Delegations>,
    pub targets: Signed<Targets>,
    pub timestamp: Signed<Timestamp>,
}

impl Bundle {
    /// A bundle from its documents as stored and sent (a root chain, oldest first).
    pub fn from_parts(
        roots: &[Vec<u8>],
        delegations: &[u8],
        targets: &[u8],
        timestamp: &[u8],
    ) -> Result<Bundle, TrustError> {
        Ok(Bundle {
            roots: roots.iter().map(|b| Signed::from_bytes(b)).collect::<Result<_, _>>()?,
            delegations: Signed::from_bytes(delegations)?,
            targets: Signed::from_bytes(targets)?,
            timestamp: Signed::from_bytes(timestamp)?,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a bundle serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Bundle, TrustError> {
        if bytes.len() > 4 * MAX_DOCUMENT {
            return Err(TrustError::Malformed("a trust bundle over 4 MiB".into()));
        }
        serde_json::from_slice(bytes).map_err(|e| TrustError::Malformed(format!("bundle: {e}")))
    }
}

/// What travels with a task to its node: whether the cluster requires trust (and the root's
/// statement if it was turned off), the managers' timestamp key, the image repository's
/// bundle when there is one, and the cluster's scan policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub required: bool,
    pub policy: Option<Signed<Policy>>,
    pub timestamp_key: Option<PublicKey>,
    pub bundle: Option<Bundle>,
    /// The cluster's scan policy: the lowest severity of known vulnerabilities that keeps an
    /// image from running (`critical`, …), if any.
    #[serde(default)]
    pub scan_block: Option<String>,
}

impl Envelope {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, TrustError> {
        if bytes.len() > 4 * MAX_DOCUMENT {
            return Err(TrustError::Malformed("a trust envelope over 4 MiB".into()));
        }
        serde_json::from_slice(bytes).map_err(|e| TrustError::Malformed(format!("envelope: {e}")))
    }
}

/// Checks a root chain for one prefix: the first document signed by its own key, each later
/// one by its own key and the previous root's, versions counting up by one. Returns the
/// current (last) root.
pub fn check_chain(chain: &[Signed<Root>]) -> Result<&Signed<Root>, TrustError> {
    let first = chain.first().ok_or_else(|| TrustError::Malformed("an empty root chain".into()))?;
    first.signed.key.check()?;
    if first.signed.version != 1 || !first.signed_by(&first.signed.key) {
        return Err(TrustError::Untrusted(format!(
            "the first root of {} is not version 1 signed by its own key",
            first.signed.prefix
        )));
    }
    for pair in chain.windows(2) {
        let (old, new) = (&pair[0].signed, &pair[1]);
        new.signed.key.check()?;
        let linked = new.signed.prefix == old.prefix
            && new.signed.version == old.version + 1
            && new.signed_by(&old.key)
            && new.signed_by(&new.signed.key);
        if !linked {
            return Err(TrustError::Untrusted(format!(
                "root version {} of {} is not signed by root version {} and its own key",
                new.signed.version, old.prefix, old.version
            )));
        }
    }
    Ok(chain.last().expect("not empty"))
}

/// What a checked bundle says about one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub repo: String,
    pub digest: String,
    pub signer: String,
    pub targets_version: u64,
}

impl Bundle {
    /// Checks the bundle against `root` (the trusted current root for the repository's prefix)
    /// and the timestamp key, at time `now`, and finds `tag` (or, with none, `digest` among
    /// the signed tags). With both, the tag must name that digest.
    pub fn verify(
        &self,
        root: &Root,
        timestamp_key: &PublicKey,
        repo: &str,
        tag: Option<&str>,
        digest: Option<&str>,
        now: u64,
    ) -> Result<Verified, TrustError> {
        let untrusted = |why: String| Err(TrustError::Untrusted(why));
        if !covers(&root.prefix, repo) {
            return untrusted(format!("root {} does not cover {repo}", root.prefix));
        }
        let d = &self.delegations;
        if d.signed.repo != repo || !d.signed_by(&root.key) {
            return untrusted(format!(
                "the signers of {repo} are not signed by the root of {}",
                root.prefix
            ));
        }
        if d.signed.expires <= now {
            return untrusted(format!("the signers of {repo} expired; the root must re-sign them"));
        }
        let t = &self.targets;
        if t.signed.repo != repo {
            return untrusted(format!("the targets are for {}, not {repo}", t.signed.repo));
        }
        let signer = d.signed.signers.iter().find(|(_, k)| t.signed_by(k)).map(|(n, _)| n);
        let Some(signer) = signer else {
            return untrusted(format!(
                "the targets of {repo} are not signed by any of its current signers"
            ));
        };
        if t.signed.expires <= now {
            return untrusted(format!("the targets of {repo} expired; sign the image again"));
        }
        let ts = &self.timestamp;
        if !ts.signed_by(timestamp_key) {
            return untrusted(format!("the timestamp of {repo} is not signed by the cluster"));
        }
        if ts.signed.expires <= now {
            return untrusted(format!(
                "the timestamp of {repo} expired (stale trust data: the managers renew it)"
            ));
        }
        if ts.signed.repo != repo
            || ts.signed.targets != t.digest()
            || ts.signed.delegations != d.digest()
            || ts.signed.targets_version != t.signed.version
        {
            return untrusted(format!("the timestamp of {repo} is for other trust data"));
        }
        let found = match (tag, digest) {
            (Some(tag), _) => t.signed.tags.get(tag).map(|x| (tag, x)),
            (None, Some(dg)) => {
                t.signed.tags.iter().find(|(_, x)| x.digest == dg).map(|(k, x)| (k.as_str(), x))
            }
            (None, None) => None,
        };
        let Some((name, target)) = found else {
            let what = match (tag, digest) {
                (Some(tag), _) => format!("{repo}:{tag}"),
                (None, Some(dg)) => format!("{repo}@{dg}"),
                (None, None) => repo.to_string(),
            };
            return untrusted(format!("no signature for {what} (not signed, or revoked)"));
        };
        if let Some(dg) = digest {
            if target.digest != dg {
                return untrusted(format!(
                    "{repo}:{name} is signed for {}, not {dg}",
                    target.digest
                ));
            }
        }
        Ok(Verified {
            repo: repo.to_string(),
            digest: target.digest.clone(),
            signer: signer.clone(),
            targets_version: t.signed.version,
        })
    }
}
