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
/// How far node certificates are backdated to tolerate clock skew (never more than their
/// expiry, which only a test cluster's scaled floor makes shorter).
pub const NODE_CERT_BACKDATE: Duration = Duration::from_secs(60 * 60);

/// When a node certificate valid from `not_before` to `not_after` was issued: its start plus
/// the backdate it got (see [`NODE_CERT_BACKDATE`]).
pub fn issued_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + NODE_CERT_BACKDATE.min(life / 2)
}

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

/// Shortest remaining life a root taken for a rotation may have (Swarm's minimum too).
pub const MIN_ROOT_REMAINING: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The root CA: its exact certificate PEM (the bundle) and its signing key; `Debug` never shows the key.
pub struct RootCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    /// During a root rotation: this (new) root cross-signed by the old one, sent after every
    /// certificate it issues so nodes that trust only the old root still accept them.
    intermediate_pem: Option<String>,
    /// The shortest certificate life it issues ([`MIN_CERT_EXPIRY`] outside tests).
    expiry_floor: Duration,
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
    /// [`RootCa::digest_hex`] of the root that signed it.
    pub root_digest: String,
}

impl RootCa {
    /// Generates a new ECDSA P-256 root CA valid for 20 years.
    pub fn generate() -> Result<RootCa, PkiError> {
        RootCa::generate_named(ROOT_CA_COMMON_NAME)
    }

    /// Generates a root for a rotation: named apart from the roots before it (a random suffix),
    /// so people and path builders can tell the old and the new one by name.
    pub fn generate_for_rotation() -> Result<RootCa, PkiError> {
        let mut suffix = [0u8; 4];
        crate::id::fill_random(&mut suffix);
        let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        RootCa::generate_named(&format!("{ROOT_CA_COMMON_NAME} {hex}"))
    }

    fn generate_named(common_name: &str) -> Result<RootCa, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::Signing(format!("could not generate the CA key: {e}")))?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
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
            intermediate_pem: None,
            expiry_floor: MIN_CERT_EXPIRY,
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
        Ok(RootCa {
            cert_pem: cert_pem.to_string(),
            cert_der: cert_der.to_vec(),
            issuer,
            intermediate_pem: None,
            expiry_floor: MIN_CERT_EXPIRY,
        })
    }

    /// Takes an operator's root for a rotation (`swarm ca --rotate --ca-cert --ca-key`): one
    /// self-signed CA certificate with an ECDSA P-256 or P-384 key, valid now and for at least
    /// [`MIN_ROOT_REMAINING`] more, whose key is not `current`'s, and whose subject Shoal can
    /// write again exactly into the certificates it signs.
    pub fn from_operator_pem(
        cert_pem: &str,
        key_pem: &str,
        current: &RootCa,
        now: SystemTime,
    ) -> Result<RootCa, PkiError> {
        let certs = crate::node::certs_from_pem(cert_pem)
            .map_err(|e| PkiError::BadCa(format!("the new root certificate is unreadable: {e}")))?;
        if certs.len() != 1 {
            return Err(PkiError::BadCa(format!(
                "the new root must be one certificate, not {} (no intermediates)",
                certs.len()
            )));
        }
        let ca = RootCa::from_pem(cert_pem, key_pem)?;
        let alg = ca.issuer.key().algorithm();
        if alg != &PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ECDSA_P384_SHA384 {
            return Err(PkiError::BadCa("the new root's key must be ECDSA P-256 or P-384".into()));
        }
        let cert = parse_cert(&ca.cert_der)?;
        if cert.subject().as_raw() != cert.issuer().as_raw() || cert.verify_signature(None).is_err()
        {
            return Err(PkiError::BadCa(
                "the new root certificate is not self-signed: give a root, not an intermediate"
                    .into(),
            ));
        }
        let not_before = asn1_to_system(cert.validity().not_before);
        let not_after = asn1_to_system(cert.validity().not_after);
        if not_before > now {
            return Err(PkiError::BadCa("the new root certificate is not valid yet".into()));
        }
        if not_after < now + MIN_ROOT_REMAINING {
            return Err(PkiError::BadCa(format!(
                "the new root certificate expires on {}; it must be valid for at least a year",
                humantime::format_rfc3339_seconds(not_after)
            )));
        }
        if ca.issuer.key().public_key_raw() == current.issuer.key().public_key_raw() {
            return Err(PkiError::BadCa(
                "the new root has the current root's key; a rotation needs a new key".into(),
            ));
        }
        ca.check_issues_verifiable_certs()?;
        Ok(ca)
    }

    /// Signs a throwaway certificate and checks it chains to this root: a root whose subject
    /// rcgen re-encodes differently would issue certificates no peer could verify.
    fn check_issues_verifiable_certs(&self) -> Result<(), PkiError> {
        let key = crate::NodeKey::generate()?;
        let probe = self.sign_node_csr(
            &key.csr_der()?,
            "probe",
            Role::Worker,
            "probe",
            MIN_CERT_EXPIRY,
            SystemTime::now(),
        )?;
        crate::tls::verify_chain(&probe.cert_pem, &self.cert_pem, SystemTime::now()).map_err(|e| {
            PkiError::BadCa(format!(
                "certificates signed with the new root would not verify against it ({e}); \
                     its subject may use encodings Shoal cannot reproduce"
            ))
        })
    }

    /// This root's certificate re-signed by `self`'s key: the same subject, key and validity as
    /// `newer`, issued by `self`, so a chain ending in it verifies against `self` alone.
    pub fn cross_sign(&self, newer: &RootCa) -> Result<String, PkiError> {
        let cert = parse_cert(&newer.cert_der)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn_of(cert.subject())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.not_before = cert.validity().not_before.to_datetime();
        params.not_after = cert.validity().not_after.to_datetime();
        let crossed = params
            .signed_by(newer.issuer.key(), &self.issuer)
            .map_err(|e| PkiError::Signing(format!("could not cross-sign the new root: {e}")))?;
        Ok(crossed.pem())
    }

    /// Sends `cross_signed_pem` after every certificate this root issues (see
    /// [`RootCa::cross_sign`]).
    pub fn with_intermediate(mut self, cross_signed_pem: &str) -> RootCa {
        self.intermediate_pem = Some(cross_signed_pem.to_string());
        self
    }

    /// Issues certificates as short as `floor` (test clusters whose time runs faster).
    pub fn with_expiry_floor(mut self, floor: Duration) -> RootCa {
        self.expiry_floor = floor;
        self
    }

    /// SHA-256 of the root certificate's DER, lowercase hex: how the managers name a root.
    pub fn digest_hex(&self) -> String {
        digest_hex(&self.cert_der)
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
        if expiry < self.expiry_floor {
            return Err(PkiError::ExpiryTooShort {
                requested_secs: expiry.as_secs(),
                minimum_secs: self.expiry_floor.as_secs(),
            });
        }
        check_node_id(node_id)?;
        check_cluster_id(cluster_id)?;
        let public_key = csr_public_key(csr_der)?;
        let params = node_params(node_id, role, cluster_id, expiry, now)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| PkiError::Signing(e.to_string()))?;
        self.issued(&cert)
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
        if expiry < self.expiry_floor {
            return Err(PkiError::ExpiryTooShort {
                requested_secs: expiry.as_secs(),
                minimum_secs: self.expiry_floor.as_secs(),
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
        self.issued(&cert)
    }
}

impl RootCa {
    fn issued(&self, cert: &rcgen::Certificate) -> Result<IssuedCert, PkiError> {
        let parsed = parse_cert(cert.der())?;
        let mut cert_pem = cert.pem();
        if let Some(cross) = &self.intermediate_pem {
            cert_pem.push_str(cross);
        }
        Ok(IssuedCert {
            cert_pem,
            serial_hex: serial_hex(&parsed),
            not_before: asn1_to_system(parsed.validity().not_before),
            not_after: asn1_to_system(parsed.validity().not_after),
            root_digest: self.digest_hex(),
        })
    }
}

/// SHA-256 of `der`, lowercase hex.
pub fn digest_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The digest ([`digest_hex`]) of each root certificate in a PEM bundle.
pub fn bundle_digests(bundle_pem: &str) -> Result<Vec<String>, PkiError> {
    Ok(crate::node::certs_from_pem(bundle_pem)?.iter().map(|c| digest_hex(c)).collect())
}

/// An rcgen subject equal to `name`, attribute by attribute and string type by string type,
/// so the certificates signed under it name their issuer in exactly its bytes.
fn dn_of(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    use x509_parser::der_parser::asn1_rs::{Any, Tag};
    let mut dn = DistinguishedName::new();
    for attr in name.iter_attributes() {
        let oid = attr.attr_type();
        let ty = if *oid == x509_parser::oid_registry::OID_X509_COMMON_NAME {
            DnType::CommonName
        } else if *oid == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME {
            DnType::OrganizationName
        } else if *oid == x509_parser::oid_registry::OID_X509_ORGANIZATIONAL_UNIT {
            DnType::OrganizationalUnitName
        } else if *oid == x509_parser::oid_registry::OID_X509_COUNTRY_NAME {
            DnType::CountryName
        } else if *oid == x509_parser::oid_registry::OID_X509_LOCALITY_NAME {
            DnType::LocalityName
        } else if *oid == x509_parser::oid_registry::OID_X509_STATE_OR_PROVINCE_NAME {
            DnType::StateOrProvinceName
        } else {
            let arcs: Option<Vec<u64>> = oid.iter().map(|i| i.collect());
            DnType::CustomDnType(arcs.ok_or_else(|| {
                PkiError::BadCa(format!("the root's subject has an unusable attribute {oid}"))
            })?)
        };
        let value: &Any = attr.attr_value();
        let text = std::str::from_utf8(value.data)
            .map_err(|_| PkiError::BadCa("the root's subject holds a non-UTF-8 value".into()))?
            .to_string();
        let value = match value.tag() {
            Tag::Utf8String => rcgen::DnValue::Utf8String(text),
            Tag::PrintableString => rcgen::DnValue::PrintableString(
                text.try_into().map_err(|e| PkiError::BadCa(format!("subject value: {e}")))?,
            ),
            Tag::Ia5String => rcgen::DnValue::Ia5String(
                text.try_into().map_err(|e| PkiError::BadCa(format!("subject value: {e}")))?,
            ),
            other => {
                return Err(PkiError::BadCa(format!(
                    "the root's subject uses a {other:?} value, which Shoal does not write"
                )))
            }
        };
        dn.push(ty, value);
    }
    Ok(dn)
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
    params.not_before = system_to_asn1(now - NODE_CERT_BACKDATE.min(expiry))?.to_datetime();
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
