//! Cosign signatures checked offline against a public key, through a real registry (Debian's
//! `docker-registry` on loopback, TLS from a test CA). The signatures are written here in
//! cosign's layout (a `sha256-H.sig` image of simple-signing payloads with the signature in
//! an annotation, ECDSA P-256 over the payload): a signed image verifies; another key, a
//! payload naming another digest, a changed payload and an unsigned image are each refused
//! with what was wrong. No root needed.

use std::net::TcpListener;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use shoal_agent::cosign::{self, PAYLOAD_TYPE, SIGNATURE_ANNOTATION};
use shoal_pki::trust::PublicKey;
use shoal_registry::{Client, Descriptor, ImageRef, Settings};
use shoal_testkit::registry::{RegistryOpts, TestRegistry};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn have_registry() -> bool {
    let there = Path::new(shoal_testkit::registry::REGISTRY_BIN).exists();
    assert!(
        there || std::env::var_os("CI").is_none(),
        "the cosign tests need docker-registry (apt-get install docker-registry)"
    );
    if !there {
        eprintln!("skipped: no docker-registry");
    }
    there
}

/// Pushes a blob and returns its descriptor.
async fn blob(c: &Client, r: &ImageRef, media: &str, bytes: &[u8], dir: &Path) -> Descriptor {
    let d = Descriptor {
        media_type: media.into(),
        digest: shoal_registry::sha256(bytes),
        size: bytes.len() as u64,
    };
    let f = dir.join(&d.digest[7..]);
    std::fs::write(&f, bytes).unwrap();
    c.push_blob(r, &d, &f, None).await.unwrap();
    d
}

/// Pushes a manifest of `layers` (with their annotations) under `r`'s tag; its digest.
async fn manifest(c: &Client, r: &ImageRef, layers: serde_json::Value, dir: &Path) -> String {
    let config = blob(c, r, CONFIG, b"{}", dir).await;
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers,
    });
    c.push_manifest(r, MANIFEST, &serde_json::to_vec(&m).unwrap(), None).await.unwrap()
}

fn payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap()
}

/// A P-256 key pair as cosign makes them, and its public key as PEM.
fn key() -> (EcdsaKeyPair, String) {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref(), &rng).unwrap();
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    der.extend_from_slice(pair.public_key().as_ref());
    let b64 = B64.encode(&der);
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    (pair, format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n")))
}

/// Signs `payload` into the signature image of `digest`, as cosign lays it out.
async fn sign(c: &Client, repo: &ImageRef, digest: &str, payload: &[u8], sig: &[u8], dir: &Path) {
    let layer = blob(c, repo, PAYLOAD_TYPE, payload, dir).await;
    let layers = serde_json::json!([{
        "mediaType": PAYLOAD_TYPE, "digest": layer.digest, "size": layer.size,
        "annotations": {SIGNATURE_ANNOTATION: B64.encode(sig)},
    }]);
    let sig_ref =
        ImageRef { tag: Some(cosign::signature_tag(digest)), digest: None, ..repo.clone() };
    manifest(c, &sig_ref, layers, dir).await;
}

#[tokio::test]
async fn cosign_signatures_verify_offline_with_a_public_key() {
    if !have_registry() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listen = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let opts = RegistryOpts { tls: true, htpasswd: None, listen, wrap: Vec::new() };
    let reg = TestRegistry::start(&dir.path().join("reg"), opts).unwrap();
    let certs = dir.path().join("certs.d");
    reg.install_ca(&certs);
    let c = Client::new(Settings { certs_dir: certs, insecure: Vec::new() }).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let scratch = dir.path().join("scratch");
    let rng = SystemRandom::new();

    let app = ImageRef::parse(&format!("{}/team/app:1", reg.host)).unwrap();
    let digest = manifest(&c, &app, serde_json::json!([]), &work).await;
    let (pair, pem) = key();
    let public = PublicKey::from_spki_pem(&pem).unwrap();

    // Unsigned: refused, naming the tag cosign would use.
    let e = cosign::verify(&c, &app, &public, None, &scratch).await.unwrap_err();
    assert!(
        e.contains("no cosign signature") && e.contains(&cosign::signature_tag(&digest)),
        "{e}"
    );

    // Signed: verifies, by tag and by digest.
    let body = payload(&app.familiar(), &digest);
    let sig = pair.sign(&rng, &body).unwrap();
    sign(&c, &app, &digest, &body, sig.as_ref(), &work).await;
    let v = cosign::verify(&c, &app, &public, None, &scratch).await.unwrap();
    assert_eq!((v.digest.as_str(), v.signatures), (digest.as_str(), 1));
    assert_eq!(v.docker_reference, app.familiar());
    let by_digest = app.with_digest(&digest);
    cosign::verify(&c, &by_digest, &public, None, &scratch).await.unwrap();

    // Another key: refused.
    let (_, other_pem) = key();
    let other = PublicKey::from_spki_pem(&other_pem).unwrap();
    let e = cosign::verify(&c, &app, &other, None, &scratch).await.unwrap_err();
    assert!(e.contains("does not verify with key"), "{e}");

    // A valid signature whose payload names another image's digest: refused.
    let web = ImageRef::parse(&format!("{}/team/web:1", reg.host)).unwrap();
    let web_digest = manifest(&c, &web, serde_json::json!([{"mediaType": CONFIG, "digest": shoal_registry::sha256(b"{}"), "size": 2}]), &work).await;
    let body = payload(&web.familiar(), &digest);
    let sig = pair.sign(&rng, &body).unwrap();
    sign(&c, &web, &web_digest, &body, sig.as_ref(), &work).await;
    let e = cosign::verify(&c, &web, &public, None, &scratch).await.unwrap_err();
    assert!(e.contains(&format!("a signature of {digest}, not {web_digest}")), "{e}");

    // A payload changed after signing: its signature no longer holds.
    let tail = ImageRef::parse(&format!("{}/team/tail:1", reg.host)).unwrap();
    let tail_digest = manifest(&c, &tail, serde_json::json!([{"mediaType": CONFIG, "digest": shoal_registry::sha256(b"{}"), "size": 2}, {"mediaType": CONFIG, "digest": shoal_registry::sha256(b"{}"), "size": 2}]), &work).await;
    let body = payload(&tail.familiar(), &tail_digest);
    let sig = pair.sign(&rng, &body).unwrap();
    let mut changed = body.clone();
    changed.extend_from_slice(b" ");
    sign(&c, &tail, &tail_digest, &changed, sig.as_ref(), &work).await;
    let e = cosign::verify(&c, &tail, &public, None, &scratch).await.unwrap_err();
    assert!(e.contains("does not verify"), "{e}");
}
