//! Owns checking cosign (sigstore) signatures of an image against a public key, offline: no
//! transparency log or certificate authority is asked, only the registry the image is in.
//!
//! Cosign keeps the signatures of the manifest (or index) with digest `sha256:H` as an OCI
//! image tagged `sha256-H.sig` in the same repository: each layer of type
//! `application/vnd.dev.cosign.simplesigning.v1+json` is a "simple signing" payload naming
//! the signed digest, and its annotation `dev.cosignproject.cosign/signature` holds the
//! base64 signature of the payload's bytes (ECDSA P-256 with SHA-256, DER, for cosign's own
//! keys). An image verifies when one payload names its digest and its signature holds.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use shoal_pki::trust::PublicKey;
use shoal_registry::{Client, Credentials, Descriptor, ImageRef, Platform};

pub const PAYLOAD_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SIGNATURE_KIND: &str = "cosign container image signature";
/// The largest payload read (cosign's are a few hundred bytes).
const MAX_PAYLOAD: u64 = 1 << 20;

/// A signature that held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub digest: String,
    /// The reference the signer named (`critical.identity.docker-reference`).
    pub docker_reference: String,
    /// How many of the signature image's payloads verified.
    pub signatures: usize,
}

/// The tag cosign stores the signatures of `digest` under.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// Checks `payload` and its base64 `signature` against `key` and the image `digest`.
pub fn check_payload(
    payload: &[u8],
    signature: &str,
    key: &PublicKey,
    digest: &str,
) -> Result<String, String> {
    let sig = B64.decode(signature.trim()).map_err(|_| "a signature that is not base64")?;
    if !key.verify(payload, &sig) {
        return Err(format!("a signature that does not verify with key {}", key.short_id()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("a payload that is not JSON: {e}"))?;
    let critical = &v["critical"];
    if critical["type"].as_str() != Some(SIGNATURE_KIND) {
        return Err(format!("a payload of type {}", critical["type"]));
    }
    let signed = critical["image"]["docker-manifest-digest"].as_str().unwrap_or_default();
    if signed != digest {
        return Err(format!("a signature of {signed}, not {digest}"));
    }
    Ok(critical["identity"]["docker-reference"].as_str().unwrap_or_default().to_string())
}

/// Verifies `image` (its tag's current digest, or the digest it names) against `key`.
/// `scratch` is a directory for the downloaded payloads.
pub async fn verify(
    client: &Client,
    image: &ImageRef,
    key: &PublicKey,
    creds: Option<&Credentials>,
    scratch: &Path,
) -> Result<Verified, String> {
    let digest = match &image.digest {
        Some(d) => d.clone(),
        None => client.resolve(image, creds).await.map_err(|e| e.to_string())?,
    };
    let sig_ref = ImageRef { tag: Some(signature_tag(&digest)), digest: None, ..image.clone() };
    let pulled = client.manifest(&sig_ref, creds, &Platform::host()).await.map_err(|e| {
        format!(
            "no cosign signature for {}@{digest} (tag {}): {e}",
            image.familiar(),
            signature_tag(&digest)
        )
    })?;
    let manifest: serde_json::Value = serde_json::from_slice(&pulled.manifest)
        .map_err(|e| format!("the signature manifest: {e}"))?;
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        if layer["mediaType"].as_str() != Some(PAYLOAD_TYPE) {
            continue;
        }
        let Some(signature) = layer["annotations"][SIGNATURE_ANNOTATION].as_str() else {
            bad.push("a payload without a signature".to_string());
            continue;
        };
        let d = Descriptor {
            media_type: PAYLOAD_TYPE.into(),
            digest: layer["digest"].as_str().unwrap_or_default().to_string(),
            size: layer["size"].as_u64().unwrap_or(u64::MAX),
        };
        if d.size > MAX_PAYLOAD {
            bad.push(format!("a payload of {} bytes", d.size));
            continue;
        }
        let dest = scratch.join(d.digest.replace(':', "-"));
        client
            .fetch_blob(&sig_ref, &d, &dest, creds, &|_| {})
            .await
            .map_err(|e| format!("fetching the signature payload {}: {e}", d.digest))?;
        let payload = std::fs::read(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        let _ = std::fs::remove_file(&dest);
        match check_payload(&payload, signature, key, &digest) {
            Ok(reference) => good.push(reference),
            Err(why) => bad.push(why),
        }
    }
    match good.first() {
        Some(reference) => {
            Ok(Verified { digest, docker_reference: reference.clone(), signatures: good.len() })
        }
        None if bad.is_empty() => Err(format!(
            "the cosign signature image of {}@{digest} holds no signed payload",
            image.familiar()
        )),
        None => Err(format!(
            "no cosign signature of {}@{digest} verifies with key {}: {}",
            image.familiar(),
            key.short_id(),
            bad.join("; ")
        )),
    }
}
