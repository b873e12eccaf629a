//! Proof that a node coming back with an expired certificate still holds that certificate's
//! key: it signs the request for its next certificate with the old key. The managers check
//! the signature with the old certificate's public key, so a copied certificate alone (they
//! are not secret) gets nobody a new one, and a captured proof is bound to its own request,
//! whose key only the node holds.

use rcgen::SigningKey;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};

use crate::node::{certs_from_pem, parse_cert};
use crate::{NodeKey, PkiError};

const CONTEXT: &[u8] = b"shoal-reattest-v1\n";

/// What the old key signs: a fixed context, the cluster ID and the digest of the new request.
fn message(cluster_id: &str, csr_der: &[u8]) -> Vec<u8> {
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(cluster_id.as_bytes());
    msg.push(b'\n');
    msg.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, csr_der).as_ref());
    msg
}

impl NodeKey {
    /// Signs the proof for re-attesting with `csr_der` to `cluster_id`'s managers.
    pub fn sign_reattest(&self, cluster_id: &str, csr_der: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.key
            .sign(&message(cluster_id, csr_der))
            .map_err(|e| PkiError::Signing(format!("could not sign the re-attestation: {e}")))
    }
}

/// SHA-256 (hex) of the public key a certificate request is for: what an operator approves.
pub fn request_key_fingerprint(csr_der: &[u8]) -> Result<String, PkiError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;
    let (_, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| PkiError::BadCsr(format!("the bytes are not a DER PKCS#10 request ({e})")))?;
    Ok(crate::ca::digest_hex(csr.certification_request_info.subject_pki.raw))
}

/// The first 16 hex digits of a key fingerprint, as people compare them.
pub fn short_fingerprint(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

/// Checks that `proof` over `csr_der` was made with the key of the first certificate in
/// `old_chain_pem`.
pub fn verify_proof(
    old_chain_pem: &str,
    cluster_id: &str,
    csr_der: &[u8],
    proof: &[u8],
) -> Result<(), PkiError> {
    let chain = certs_from_pem(old_chain_pem)?;
    let leaf = parse_cert(&chain[0])?;
    let spki = leaf.public_key();
    let (alg, curve) = crate::ca::key_algorithm(spki);
    if alg != crate::ca::OID_EC_PUBLIC_KEY || curve.as_deref() != Some(crate::ca::OID_P256) {
        return Err(PkiError::UnsupportedKey("the old certificate's key is not P-256".into()));
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, spki.subject_public_key.data.as_ref())
        .verify(&message(cluster_id, csr_der), proof)
        .map_err(|_| {
            PkiError::KeyMismatch(
                "the re-attestation proof was not made with the old certificate's key".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Role, RootCa};
    use std::time::{Duration, SystemTime};

    #[test]
    fn only_the_old_key_proves_and_only_for_its_request_and_cluster() {
        let ca = RootCa::generate().unwrap();
        let old = NodeKey::generate().unwrap();
        let issued = ca
            .sign_node_csr(
                &old.csr_der().unwrap(),
                "n1",
                Role::Worker,
                "c1",
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
        let next = NodeKey::generate().unwrap().csr_der().unwrap();
        let proof = old.sign_reattest("c1", &next).unwrap();
        verify_proof(&issued.cert_pem, "c1", &next, &proof).unwrap();
        let other_csr = NodeKey::generate().unwrap().csr_der().unwrap();
        assert!(verify_proof(&issued.cert_pem, "c1", &other_csr, &proof).is_err());
        assert!(verify_proof(&issued.cert_pem, "c2", &next, &proof).is_err());
        let thief = NodeKey::generate().unwrap();
        let forged = thief.sign_reattest("c1", &next).unwrap();
        let e = verify_proof(&issued.cert_pem, "c1", &next, &forged).unwrap_err();
        assert!(e.to_string().contains("not made with the old certificate's key"), "{e}");
    }
}
