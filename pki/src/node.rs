//! Node identity: the node's P-256 key pair, its CSR, and the identity read back from a node certificate.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

use crate::{PkiError, Role};

/// A node's ECDSA P-256 key pair; `Debug` never shows the key.
pub struct NodeKey {
    pub(crate) key: KeyPair,
}

impl NodeKey {
    /// Generates a fresh P-256 key pair.
    pub fn generate() -> Result<NodeKey, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::BadKey(format!("could not generate a P-256 key: {e}")))?;
        Ok(NodeKey { key })
    }

    /// Loads a key from PKCS#8 PEM; it must be ECDSA P-256. The text may hold other PEM
    /// sections too (a certificate chain beside the key, as in the node's files): the first
    /// `PRIVATE KEY` section is the key.
    pub fn from_pem(key_pem: &str) -> Result<NodeKey, PkiError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            PkiError::BadKey(format!(
                "no PKCS#8 \"PRIVATE KEY\" section could be read ({e}); the key file may be corrupt"
            ))
        })?;
        let key = KeyPair::try_from(&der).map_err(|e| {
            PkiError::BadKey(format!(
                "could not read the PKCS#8 private key ({e}); the key file may be corrupt"
            ))
        })?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::UnsupportedKey("the node key file holds a non-P-256 key".into()));
        }
        Ok(NodeKey { key })
    }

    /// The key as PKCS#8 PEM, for the node's key file.
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A CSR for this key with an empty subject; the CA fills in the identity.
    pub fn csr_der(&self) -> Result<Vec<u8>, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&self.key)
            .map_err(|e| PkiError::Signing(format!("could not build the CSR: {e}")))?;
        Ok(csr.der().to_vec())
    }

    /// The key as PKCS#8 DER, for loading into rustls.
    pub(crate) fn pkcs8_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

/// The shoal identity carried by a node certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node ID (certificate CN).
    pub node_id: String,
    /// The node's role (certificate OU).
    pub role: Role,
    /// The cluster ID (certificate O).
    pub cluster_id: String,
    /// The serial number as lowercase hex without leading zero bytes.
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl PeerIdentity {
    /// Reads the identity from a DER certificate; fails if CN, OU (a shoal role) or O is missing.
    pub fn from_der(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
        let cert = parse_cert(cert_der)?;
        let subject = cert.subject();
        let node_id = first_attr(subject.iter_common_name(), "common name (CN)")?;
        let ou = first_attr(subject.iter_organizational_unit(), "organizational unit (OU)")?;
        let role = Role::from_ou(&ou).ok_or_else(|| {
            PkiError::BadCert(format!(
                "organizational unit \"{}\" is not a shoal role (expected shoal-worker or shoal-manager)",
                ou.escape_debug()
            ))
        })?;
        let cluster_id = first_attr(subject.iter_organization(), "organization (O)")?;
        Ok(PeerIdentity {
            node_id,
            role,
            cluster_id,
            serial_hex: serial_hex(&cert),
            not_before: asn1_to_system(cert.validity().not_before),
            not_after: asn1_to_system(cert.validity().not_after),
        })
    }

    /// Reads the identity from the first certificate in a PEM string.
    pub fn from_pem(cert_pem: &str) -> Result<PeerIdentity, PkiError> {
        let first = first_cert_der(cert_pem)?;
        PeerIdentity::from_der(&first)
    }
}

/// Parses a complete DER certificate, rejecting trailing bytes.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::BadCert(format!("not a DER X.509 certificate ({e})")))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCert("unexpected bytes after the certificate".into()));
    }
    Ok(cert)
}

/// All certificates in a PEM string, in order; errors if there are none.
pub(crate) fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadCert(format!("could not read the PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(PkiError::BadCert(
            "no \"BEGIN CERTIFICATE\" block found in the PEM text".into(),
        ));
    }
    Ok(certs)
}

/// The certificate sections of a PEM text (which may also hold a private key), re-encoded as
/// a PEM chain in the same order: what a node keeps as its certificate chain.
pub fn certificate_chain_pem(pem_text: &str) -> Result<String, PkiError> {
    let certs = certs_from_pem(pem_text)?;
    let sections: Vec<pem::Pem> =
        certs.iter().map(|c| pem::Pem::new("CERTIFICATE", c.as_ref().to_vec())).collect();
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    Ok(pem::encode_many_config(&sections, lf))
}

/// The first certificate in a PEM string.
pub(crate) fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = certs_from_pem(pem)?;
    Ok(certs.swap_remove(0))
}

/// The certificate serial as lowercase hex of its unsigned big-endian bytes.
pub(crate) fn serial_hex(cert: &X509Certificate<'_>) -> String {
    let raw = cert.raw_serial();
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    let hex: String = raw[start..].iter().map(|b| format!("{b:02x}")).collect();
    if hex.is_empty() {
        "00".to_string()
    } else {
        hex
    }
}

/// Converts a certificate time to `SystemTime`.
pub(crate) fn asn1_to_system(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Converts a `SystemTime` to a certificate time (whole seconds).
pub(crate) fn system_to_asn1(t: SystemTime) -> Result<ASN1Time, PkiError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Time("time is before 1970".into()))?
        .as_secs();
    let secs =
        i64::try_from(secs).map_err(|_| PkiError::Time("time is too far in the future".into()))?;
    ASN1Time::from_timestamp(secs).map_err(|e| PkiError::Time(e.to_string()))
}

fn first_attr<'a>(
    mut iter: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    what: &str,
) -> Result<String, PkiError> {
    let attr = iter.next().ok_or_else(|| {
        PkiError::BadCert(format!("the subject has no {what}; it was not issued by a shoal CA"))
    })?;
    let value = attr
        .as_str()
        .map_err(|_| PkiError::BadCert(format!("the subject's {what} is not a text string")))?;
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pem_round_trip() {
        let key = NodeKey::generate().expect("generate");
        let again = NodeKey::from_pem(&key.to_pem()).expect("reload");
        assert_eq!(key.to_pem(), again.to_pem());
    }

    #[test]
    fn debug_redacts_key() {
        let key = NodeKey::generate().expect("generate");
        assert_eq!(format!("{key:?}"), "NodeKey(<redacted>)");
    }

    #[test]
    fn rejects_garbage_and_non_p256_keys() {
        assert!(matches!(NodeKey::from_pem("nope"), Err(PkiError::BadKey(_))));
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
        assert!(matches!(
            NodeKey::from_pem(&p384.serialize_pem()),
            Err(PkiError::UnsupportedKey(_))
        ));
    }

    #[test]
    fn csr_parses_and_has_empty_subject() {
        let key = NodeKey::generate().expect("generate");
        let der = key.csr_der().expect("csr");
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .expect("parse csr");
        assert!(csr.verify_signature().is_ok());
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
    }

    #[test]
    fn identity_errors_are_clear() {
        assert!(matches!(PeerIdentity::from_der(b"junk"), Err(PkiError::BadCert(_))));
        assert!(matches!(PeerIdentity::from_pem(""), Err(PkiError::BadCert(_))));
    }
}
