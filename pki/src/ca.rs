//! The cluster root CA: generation, reload from PEM, and signing node CSRs into node certificates.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::node::{asn1_to_system, first_cert_der, parse_cert, serial_hex, system_to_asn1};
use crate::{PkiError, Role, CA_SERVER_NAME, MIN_CERT_EXPIRY};

/// Common name of the root CA certificate.
pub const ROOT_CA_COMMON_NAME: &str = "shoal-root-ca";
/// Lifetime of a newly generated root CA (20 years).
pub const ROOT_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 60 * 60);
/// How far node certificates are backdated to tolerate clock skew.
pub const NODE_CERT_BACKDATE: Duration = Duration::from_secs(60 * 60);

const ROOT_CA_BACKDATE: Duration = Duration::from_secs(5 * 60);
pub(crate) const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
pub(crate) const OID_P256: &str = "1.2.840.10045.3.1.7";

/// A public key's algorithm OID and, for EC keys, its curve's, as dotted strings.
pub(crate) fn key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> (String, Option<String>) {
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string());
    (spki.algorithm.algorithm.to_id_string(), curve)
}

/// The root CA: its exact certificate PEM (the bundle) and its signing key; `Debug` never shows the key.
pub struct RootCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// A node certificate issued by [`RootCa::sign_node_csr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate as PEM.
    pub cert_pem: String,
    /// Its serial, formatted exactly like [`crate::PeerIdentity::serial_hex`].
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl RootCa {
    /// Generates a new ECDSA P-256 root CA valid for 20 years.
    pub fn generate() -> Result<RootCa, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::Signing(format!("could not generate the CA key: {e}")))?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, ROOT_CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.not_before = system_to_asn1(now - ROOT_CA_BACKDATE)?.to_datetime();
        params.not_after = system_to_asn1(now + ROOT_CA_VALIDITY)?.to_datetime();
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::Signing(format!("could not self-sign the root CA: {e}")))?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reloads a CA from its stored certificate and PKCS#8 key PEM; the certificate bytes are kept verbatim.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa, PkiError> {
        let cert_der = first_cert_der(cert_pem).map_err(|e| {
            PkiError::BadCa(format!("the stored CA certificate is unreadable: {e}"))
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            PkiError::BadCa(format!(
                "the stored CA key is unreadable ({e}); restore it from backup"
            ))
        })?;
        check_ca_cert(cert_der.as_ref(), &key)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| PkiError::BadCa(format!("cannot sign with the stored CA ({e})")))?;
        Ok(RootCa { cert_pem: cert_pem.to_string(), cert_der: cert_der.to_vec(), issuer })
    }

    /// The CA certificate PEM (the bundle); join token digests cover these exact bytes.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA private key as PKCS#8 PEM, for the manager's encrypted store only.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a node CSR, taking only its public key; the identity comes from the arguments.
    pub fn sign_node_csr(
        &self,
        csr_der: &[u8],
        node_id: &str,
        role: Role,
        cluster_id: &str,
        expiry: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, PkiError> {
        if expiry < MIN_CERT_EXPIRY {
            return Err(PkiError::ExpiryTooShort {
                requested_secs: expiry.as_secs(),
                minimum_secs: MIN_CERT_EXPIRY.as_secs(),
            });
        }
        check_node_id(node_id)?;
        check_cluster_id(cluster_id)?;
        let public_key = csr_public_key(csr_der)?;
        let params = node_params(node_id, role, cluster_id, expiry, now)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| PkiError::Signing(e.to_string()))?;
        let parsed = parse_cert(cert.der())?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial_hex: serial_hex(&parsed),
            not_before: asn1_to_system(parsed.validity().not_before),
            not_after: asn1_to_system(parsed.validity().not_after),
        })
    }
}

impl RootCa {
    /// Signs a user's CSR (its public key only): OU `shoal-user`, CN `name`, client
    /// authentication only, valid for `expiry` from `now`.
    pub fn sign_user_csr(
        &self,
        csr_der: &[u8],
        name: &str,
        cluster_id: &str,
        expiry: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, PkiError> {
        if expiry < MIN_CERT_EXPIRY {
            return Err(PkiError::ExpiryTooShort {
                requested_secs: expiry.as_secs(),
                minimum_secs: MIN_CERT_EXPIRY.as_secs(),
            });
        }
        crate::user::check_name("user", name)?;
        check_cluster_id(cluster_id)?;
        let public_key = csr_public_key(csr_der)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, cluster_id);
        dn.push(DnType::OrganizationalUnitName, crate::user::USER_OU);
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        // A few minutes back for clocks that lag; never the hour nodes get (a removed and
        // re-created user's new certificate must not predate its creation by much).
        params.not_before = system_to_asn1(now - Duration::from_secs(300))?.to_datetime();
        params.not_after = system_to_asn1(now + expiry)?.to_datetime();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| PkiError::Signing(e.to_string()))?;
        let parsed = parse_cert(cert.der())?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial_hex: serial_hex(&parsed),
            not_before: asn1_to_system(parsed.validity().not_before),
            not_after: asn1_to_system(parsed.validity().not_after),
        })
    }
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A random positive 127-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    crate::id::fill_random(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Certificate parameters for a node certificate.
fn node_params(
    node_id: &str,
    role: Role,
    cluster_id: &str,
    expiry: Duration,
    now: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, cluster_id);
    dn.push(DnType::OrganizationalUnitName, role.ou());
    dn.push(DnType::CommonName, node_id);
    params.distinguished_name = dn;
    params.subject_alt_names = node_sans(node_id, role)?;
    params.serial_number = Some(random_serial());
    params.not_before = system_to_asn1(now - NODE_CERT_BACKDATE)?.to_datetime();
    params.not_after = system_to_asn1(now + expiry)?.to_datetime();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn node_sans(node_id: &str, role: Role) -> Result<Vec<SanType>, PkiError> {
    let mut names = vec![role.ou(), node_id];
    if role == Role::Manager {
        names.push(CA_SERVER_NAME);
    }
    names
        .into_iter()
        .map(|n| {
            n.try_into()
                .map(SanType::DnsName)
                .map_err(|e| PkiError::BadIdentity(format!("\"{n}\" is not a DNS name: {e}")))
        })
        .collect()
}

/// Parses and verifies a CSR and returns its public key, which must be ECDSA P-256.
fn csr_public_key(csr_der: &[u8]) -> Result<SubjectPublicKeyInfo, PkiError> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| PkiError::BadCsr(format!("the bytes are not a DER PKCS#10 request ({e})")))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCsr("unexpected bytes after the request".into()));
    }
    csr.verify_signature().map_err(|_| {
        PkiError::BadCsr("its signature does not verify with its own public key".into())
    })?;
    let spki = &csr.certification_request_info.subject_pki;
    let (alg, curve) = key_algorithm(spki);
    if alg != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_P256) {
        return Err(PkiError::UnsupportedKey(format!(
            "the CSR's key has algorithm {alg} and parameters {}",
            curve.as_deref().unwrap_or("none")
        )));
    }
    SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| PkiError::BadCsr(format!("its public key is unusable ({e})")))
}

/// Checks that a stored CA certificate is a CA and belongs to `key`.
fn check_ca_cert(cert_der: &[u8], key: &KeyPair) -> Result<(), PkiError> {
    let cert = parse_cert(cert_der)
        .map_err(|e| PkiError::BadCa(format!("the stored CA certificate is unreadable: {e}")))?;
    if !cert.is_ca() {
        return Err(PkiError::BadCa("the stored certificate is not a CA certificate".into()));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::BadCa(
            "the stored CA key does not belong to the stored CA certificate".into(),
        ));
    }
    Ok(())
}

/// A node ID must be usable as a DNS label: 1-63 chars of `[a-z0-9-]`, not starting or ending with `-`.
fn check_node_id(node_id: &str) -> Result<(), PkiError> {
    let ok = !node_id.is_empty()
        && node_id.len() <= 63
        && node_id.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !node_id.starts_with('-')
        && !node_id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadIdentity(format!(
            "node ID \"{}\" must be 1-63 characters of a-z, 0-9 and '-' (use shoal_pki::id::new_id)",
            node_id.escape_debug()
        )))
    }
}

fn check_cluster_id(cluster_id: &str) -> Result<(), PkiError> {
    if cluster_id.is_empty() || cluster_id.len() > 64 || cluster_id.chars().any(char::is_control) {
        return Err(PkiError::BadIdentity(format!(
            "cluster ID \"{}\" must be 1-64 printable characters",
            cluster_id.escape_debug()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
