//! Mutation fuzzing (proptest) of the parsers that face the network: CSRs from joiners, peer
//! certificates from handshakes, and join tokens. None may panic; damaged input must be refused.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use rustls_pki_types::pem::PemObject;
use shoal_pki::{JoinToken, NodeKey, PeerIdentity, Role, RootCa};

fn sample() -> (RootCa, Vec<u8>, Vec<u8>) {
    let ca = RootCa::generate().unwrap();
    let key = NodeKey::generate().unwrap();
    let csr = key.csr_der().unwrap();
    let issued = ca
        .sign_node_csr(
            &csr,
            "node-1",
            Role::Worker,
            "cluster-1",
            Duration::from_secs(7200),
            SystemTime::now(),
        )
        .unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    (ca, csr, der.to_vec())
}

fn spki(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.tbs_certificate.subject_pki.raw.to_vec()
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for (at, value) in edits {
        let i = at % bytes.len();
        bytes[i] ^= value | 1;
    }
    if let Some(c) = cut {
        bytes.truncate(c % (bytes.len() + 1));
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mutated_csrs_never_panic_nor_smuggle_another_key(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in prop::option::of(any::<usize>()),
    ) {
        let (ca, csr, good) = sample();
        let bad = mutate(csr.clone(), &edits, cut);
        prop_assume!(bad != csr);
        let expiry = Duration::from_secs(7200);
        let signed = ca.sign_node_csr(&bad, "node-1", Role::Worker, "cluster-1", expiry, SystemTime::now());
        // Some bytes of a CSR are not covered by its signature or are read leniently; a mutation
        // there may still be signed, but only ever for the key that signed the request, with
        // the subject the CA chose.
        if let Ok(issued) = signed {
            let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
            prop_assert_eq!(spki(&der), spki(&good), "a mutated CSR got a certificate for another key");
            let id = PeerIdentity::from_der(&der).unwrap();
            prop_assert_eq!((id.node_id.as_str(), id.cluster_id.as_str()), ("node-1", "cluster-1"));
        }
    }

    #[test]
    fn mutated_certificates_never_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in prop::option::of(any::<usize>()),
    ) {
        let (_, _, der) = sample();
        let _ = PeerIdentity::from_der(&mutate(der, &edits, cut));
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_parser(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let (ca, _, _) = sample();
        let _ = PeerIdentity::from_der(&bytes);
        prop_assert!(ca.sign_node_csr(&bytes, "n", Role::Manager, "c", Duration::from_secs(7200), SystemTime::now()).is_err());
        let _ = JoinToken::parse(&String::from_utf8_lossy(&bytes));
    }
}
