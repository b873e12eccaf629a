//! Tests for the root CA and node certificate issuance.

use super::*;
use crate::{NodeKey, PeerIdentity, DEFAULT_CERT_EXPIRY};
use std::collections::HashSet;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

const CLUSTER: &str = "cluster0000000000000000001";

fn issue(ca: &RootCa, role: Role, now: SystemTime) -> IssuedCert {
    let key = NodeKey::generate().expect("node key");
    let csr = key.csr_der().expect("csr");
    ca.sign_node_csr(&csr, "node-1", role, CLUSTER, DEFAULT_CERT_EXPIRY, now).expect("sign")
}

fn der_of(pem: &str) -> Vec<u8> {
    first_cert_der(pem).expect("pem").to_vec()
}

fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().expect("san ext").expect("san present");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn root_ca_shape() {
    let ca = RootCa::generate().expect("ca");
    let der = der_of(ca.cert_pem());
    let cert = parse_cert(&der).expect("parse");
    assert!(cert.is_ca());
    let cn: Vec<_> = cert.subject().iter_common_name().collect();
    assert_eq!(cn[0].as_str().ok(), Some(ROOT_CA_COMMON_NAME));
    let ku = cert.key_usage().expect("ku").expect("ku present").value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let nb = asn1_to_system(cert.validity().not_before);
    let na = asn1_to_system(cert.validity().not_after);
    let life = na.duration_since(nb).expect("order");
    assert!(life >= ROOT_CA_VALIDITY && life <= ROOT_CA_VALIDITY + ROOT_CA_BACKDATE * 2);
    assert!(cert.verify_signature(None).is_ok());
}

#[test]
fn reload_keeps_exact_bytes_and_signs() {
    let ca = RootCa::generate().expect("ca");
    let again = RootCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("reload");
    assert_eq!(again.cert_pem(), ca.cert_pem());
    assert_eq!(again.key_pem(), ca.key_pem());
    let issued = issue(&again, Role::Worker, SystemTime::now());
    let leaf_der = der_of(&issued.cert_pem);
    let leaf = parse_cert(&leaf_der).expect("leaf");
    let root_der = der_of(ca.cert_pem());
    let root = parse_cert(&root_der).expect("root");
    assert!(leaf.verify_signature(Some(root.public_key())).is_ok());
    assert_eq!(leaf.issuer(), root.subject());
}

#[test]
fn reload_rejects_wrong_key_and_garbage() {
    let ca = RootCa::generate().expect("ca");
    let other = RootCa::generate().expect("other");
    assert!(matches!(RootCa::from_pem(ca.cert_pem(), &other.key_pem()), Err(PkiError::BadCa(_))));
    assert!(matches!(RootCa::from_pem("junk", &ca.key_pem()), Err(PkiError::BadCa(_))));
    assert!(matches!(RootCa::from_pem(ca.cert_pem(), "junk"), Err(PkiError::BadCa(_))));
}

#[test]
fn debug_redacts_key() {
    let ca = RootCa::generate().expect("ca");
    let dbg = format!("{ca:?}");
    assert!(dbg.contains("<redacted>"));
    assert!(!dbg.contains("PRIVATE KEY"));
}

#[test]
fn identity_comes_from_arguments_not_csr() {
    let ca = RootCa::generate().expect("ca");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "evil");
    params.distinguished_name.push(DnType::OrganizationName, "other");
    params.distinguished_name.push(DnType::OrganizationalUnitName, "shoal-manager");
    let csr = params.serialize_request(&key).expect("csr");
    let issued = ca
        .sign_node_csr(
            csr.der(),
            "node-7",
            Role::Worker,
            CLUSTER,
            DEFAULT_CERT_EXPIRY,
            SystemTime::now(),
        )
        .expect("sign");
    let id = PeerIdentity::from_pem(&issued.cert_pem).expect("identity");
    assert_eq!(id.node_id, "node-7");
    assert_eq!(id.role, Role::Worker);
    assert_eq!(id.cluster_id, CLUSTER);
    assert_eq!(id.serial_hex, issued.serial_hex);
    assert_eq!((id.not_before, id.not_after), (issued.not_before, issued.not_after));
    let der = der_of(&issued.cert_pem);
    let cert = parse_cert(&der).expect("parse");
    assert_eq!(dns_sans(&cert), vec!["shoal-worker", "node-7"]);
    assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
}

#[test]
fn manager_sans_and_usages() {
    let ca = RootCa::generate().expect("ca");
    let issued = issue(&ca, Role::Manager, SystemTime::now());
    let der = der_of(&issued.cert_pem);
    let cert = parse_cert(&der).expect("parse");
    assert_eq!(dns_sans(&cert), vec!["shoal-manager", "node-1", "shoal-ca"]);
    assert!(!cert.is_ca());
    let ku = cert.key_usage().expect("ku").expect("present").value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().expect("eku").expect("present").value;
    assert!(eku.server_auth && eku.client_auth);
}

#[test]
fn validity_and_backdate() {
    let ca = RootCa::generate().expect("ca");
    let now = SystemTime::now();
    let key = NodeKey::generate().expect("key");
    let expiry = Duration::from_secs(7200);
    let issued = ca
        .sign_node_csr(&key.csr_der().expect("csr"), "n1", Role::Worker, CLUSTER, expiry, now)
        .expect("sign");
    let ahead = issued.not_after.duration_since(now).expect("after now");
    assert!(ahead <= expiry && ahead + Duration::from_secs(1) >= expiry, "{ahead:?}");
    let back = now.duration_since(issued.not_before).expect("before now");
    assert!(back >= NODE_CERT_BACKDATE && back <= NODE_CERT_BACKDATE + Duration::from_secs(1));
}

#[test]
fn serials_are_unique_and_positive() {
    let ca = RootCa::generate().expect("ca");
    let now = SystemTime::now();
    let serials: HashSet<String> =
        (0..50).map(|_| issue(&ca, Role::Worker, now).serial_hex).collect();
    assert_eq!(serials.len(), 50);
    for s in &serials {
        assert!(
            s.len() <= 32 && s.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}

#[test]
fn rejects_short_expiry() {
    let ca = RootCa::generate().expect("ca");
    let csr = NodeKey::generate().expect("key").csr_der().expect("csr");
    let err = ca
        .sign_node_csr(
            &csr,
            "n1",
            Role::Worker,
            CLUSTER,
            Duration::from_secs(60),
            SystemTime::now(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("minimum is 3600s"), "{err}");
}

#[test]
fn rejects_garbage_truncated_and_tampered_csrs() {
    let ca = RootCa::generate().expect("ca");
    let now = SystemTime::now();
    let sign =
        |csr: &[u8]| ca.sign_node_csr(csr, "n1", Role::Worker, CLUSTER, DEFAULT_CERT_EXPIRY, now);
    assert!(matches!(sign(b""), Err(PkiError::BadCsr(_))));
    assert!(matches!(sign(b"not a csr at all"), Err(PkiError::BadCsr(_))));
    let csr = NodeKey::generate().expect("key").csr_der().expect("csr");
    for cut in 0..csr.len() {
        assert!(matches!(sign(&csr[..cut]), Err(PkiError::BadCsr(_))), "cut {cut}");
    }
    let mut tampered = csr.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert!(sign(&tampered).is_err());
}

#[test]
fn rejects_non_p256_csr() {
    let ca = RootCa::generate().expect("ca");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
    let csr = CertificateParams::default().serialize_request(&key).expect("csr");
    let res = ca.sign_node_csr(
        csr.der(),
        "n1",
        Role::Worker,
        CLUSTER,
        DEFAULT_CERT_EXPIRY,
        SystemTime::now(),
    );
    assert!(matches!(res, Err(PkiError::UnsupportedKey(_))));
}

#[test]
fn rejects_bad_identities() {
    let ca = RootCa::generate().expect("ca");
    let csr = NodeKey::generate().expect("key").csr_der().expect("csr");
    let now = SystemTime::now();
    for bad in ["", "Node", "a.b", "-x", "has space"] {
        let res = ca.sign_node_csr(&csr, bad, Role::Worker, CLUSTER, DEFAULT_CERT_EXPIRY, now);
        assert!(matches!(res, Err(PkiError::BadIdentity(_))), "{bad}");
    }
    let res = ca.sign_node_csr(&csr, "n1", Role::Worker, "", DEFAULT_CERT_EXPIRY, now);
    assert!(matches!(res, Err(PkiError::BadIdentity(_))));
}

#[test]
fn a_node_file_with_key_and_chain_splits_into_both() {
    let ca = RootCa::generate().expect("ca");
    let key = NodeKey::generate().expect("key");
    let issued = ca
        .sign_node_csr(
            &key.csr_der().unwrap(),
            "n1",
            Role::Worker,
            CLUSTER,
            DEFAULT_CERT_EXPIRY,
            SystemTime::now(),
        )
        .expect("sign");
    let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
    // The key may come before or after the certificates, as in the node's identity file.
    for file in [format!("{}{chain}", key.to_pem()), format!("{chain}{}", key.to_pem())] {
        assert_eq!(NodeKey::from_pem(&file).unwrap().to_pem(), key.to_pem());
        let only_certs = crate::certificate_chain_pem(&file).unwrap();
        assert!(!only_certs.contains("PRIVATE KEY"), "the chain must not carry the key");
        assert_eq!(
            crate::node::certs_from_pem(&only_certs).unwrap(),
            crate::node::certs_from_pem(&chain).unwrap()
        );
    }
    let err = NodeKey::from_pem(&chain).unwrap_err().to_string();
    assert!(err.contains("PRIVATE KEY"), "{err}");
    assert!(crate::certificate_chain_pem(&key.to_pem()).is_err(), "a key alone is no chain");
}
