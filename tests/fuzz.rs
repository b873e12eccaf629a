//! Fuzz targets for every parser that faces the network or a file an outsider wrote: the gRPC
//! messages managers and agents decode, join tokens, CSRs, compose files, seccomp profiles,
//! image archives, registry manifests, content-trust documents and OSV files.
//!
//! Written with `bolero`: under `cargo test` (stable) each target runs as a property test on
//! random and mutated inputs; where a nightly toolchain and `cargo-bolero` exist the same
//! targets run under libFuzzer (`cargo bolero test --test fuzz TARGET`). Each asserts what must
//! hold for any input — no panic, a clear error for what is refused, and for mutations of a
//! valid input, that nothing altered is accepted as something it is not.

use std::time::{Duration, SystemTime};

use bolero::check;
use prost::Message;

/// Iterations per target under `cargo test`; libFuzzer runs as long as it is asked to.
const RUNS: usize = 2_000;

/// `bytes` with `edits` (position, value) written over it, positions taken modulo its length.
fn mutate(bytes: &[u8], edits: &[(u16, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.is_empty() {
        return out;
    }
    for &(pos, value) in edits {
        let i = pos as usize % out.len();
        out[i] = value;
    }
    out
}

macro_rules! decode_all {
    ($bytes:expr, $($t:ty),+ $(,)?) => {
        $(
            if let Ok(m) = <$t>::decode($bytes) {
                // Whatever decodes encodes again to something that decodes to the same.
                let again = <$t>::decode(m.encode_to_vec().as_slice()).expect(stringify!($t));
                assert_eq!(again, m, stringify!($t));
            }
        )+
    };
}

#[test]
fn rpc_messages_decode_or_refuse() {
    use shoal_proto::*;
    check!().with_iterations(RUNS).for_each(|bytes: &[u8]| {
        decode_all!(
            bytes,
            IssueNodeCertificateRequest,
            RenewNodeCertificateRequest,
            SessionRequest,
            HeartbeatRequest,
            UpdateTaskStatusRequest,
            PublishLogsMessage,
            AssignmentsMessage,
            SessionMessage,
            RaftChunk,
            RaftJoinRequest,
            CreateServiceRequest,
            UpdateServiceRequest,
            CreateSecretRequest,
            PutTrustRequest,
            UpdateClusterRequest,
            IssueUserCertificateRequest,
            CreateGrantRequest,
            ReattestNodeCertificateRequest,
            RotateRootCaRequest,
            ApproveNodeRequest,
        );
    });
}

/// A re-attestation's proof (the old key's signature over the new request) holds only for
/// exactly what was signed: any change to the request or the proof is refused, and a mangled
/// old certificate is refused or, if it still parses, still needs the same key.
#[test]
fn reattestation_proofs_hold_only_for_what_was_signed() {
    let ca = shoal_pki::RootCa::generate().unwrap();
    let old = shoal_pki::NodeKey::generate().unwrap();
    let issued = ca
        .sign_node_csr(
            &old.csr_der().unwrap(),
            "n1",
            shoal_pki::Role::Worker,
            "c1",
            shoal_pki::MIN_CERT_EXPIRY,
            std::time::SystemTime::now(),
        )
        .unwrap();
    let csr = shoal_pki::NodeKey::generate().unwrap().csr_der().unwrap();
    let proof = old.sign_reattest("c1", &csr).unwrap();
    use shoal_pki::reattest::verify_proof;
    verify_proof(&issued.cert_pem, "c1", &csr, &proof).expect("the real proof holds");
    let (chain, root) = (issued.cert_pem.clone(), ca.cert_pem().to_string());
    check!().with_iterations(RUNS).with_type::<(Vec<(u16, u8)>, u8)>().for_each(
        |(edits, which)| match which % 3 {
            0 => {
                let changed = mutate(&csr, edits);
                if changed != csr {
                    assert!(verify_proof(&chain, "c1", &changed, &proof).is_err());
                }
            }
            1 => {
                let changed = mutate(&proof, edits);
                if changed != proof {
                    assert!(verify_proof(&chain, "c1", &csr, &changed).is_err());
                }
            }
            _ => {
                let changed =
                    String::from_utf8_lossy(&mutate(chain.as_bytes(), edits)).into_owned();
                let _ = verify_proof(&changed, "c1", &csr, &proof);
                let _ = shoal_pki::tls::verify_chain_ignoring_expiry(&changed, &root);
            }
        },
    );
}

#[test]
fn join_tokens_parse_or_refuse() {
    let ca = shoal_pki::RootCa::generate().unwrap();
    let valid = shoal_pki::JoinToken::generate(ca.cert_pem().as_bytes()).encode();
    check!().with_iterations(RUNS).with_type::<(Vec<(u16, u8)>, bool)>().for_each(
        |(edits, raw)| {
            let text = if *raw {
                String::from_utf8_lossy(&edits.iter().map(|e| e.1).collect::<Vec<_>>()).into_owned()
            } else {
                String::from_utf8_lossy(&mutate(valid.as_bytes(), edits)).into_owned()
            };
            if let Ok(t) = shoal_pki::JoinToken::parse(&text) {
                // A token that parses prints back as the same token.
                assert_eq!(shoal_pki::JoinToken::parse(&t.encode()).unwrap().encode(), t.encode());
            }
        },
    );
}

#[test]
fn csrs_never_panic_the_ca() {
    // The CA holds ring keys, which are not unwind-safe; a panic ends the test anyway.
    let ca = std::panic::AssertUnwindSafe(shoal_pki::RootCa::generate().unwrap());
    let csr = shoal_pki::NodeKey::generate().unwrap().csr_der().unwrap();
    check!().with_iterations(RUNS / 4).with_type::<Vec<(u16, u8)>>().for_each(|edits| {
        let bytes = mutate(&csr, edits);
        // Damaged requests are refused (their self-signature fails or they do not parse);
        // none may panic the CA.
        let _ = ca.sign_node_csr(
            &bytes,
            "node-1",
            shoal_pki::Role::Worker,
            "cluster-1",
            Duration::from_secs(7200),
            SystemTime::now(),
        );
    });
}

#[test]
fn compose_files_parse_or_name_the_problem() {
    let valid = "version: '3.9'\nservices:\n  web:\n    image: nginx:1\n    ports: ['80:80']\n    deploy: {replicas: 2}\n    secrets: [s]\nsecrets:\n  s: {external: true}\n";
    check!().with_iterations(RUNS).with_type::<(Vec<(u16, u8)>, bool)>().for_each(
        |(edits, raw)| {
            let bytes = if *raw {
                edits.iter().map(|e| e.1).collect()
            } else {
                mutate(valid.as_bytes(), edits)
            };
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = shoal::cli::stack::compose::parse(&text) {
                assert!(!e.to_string().is_empty());
                assert!(!e.to_string().contains("DuplicateKeyPolicy"), "YAML internals: {e}");
            }
        },
    );
}

#[test]
fn seccomp_profiles_load_or_refuse() {
    let valid = br#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],"syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"},{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#;
    let caps = std::collections::BTreeSet::new();
    let target = shoal_agent::runtime::seccomp::Target::native(&caps);
    check!().with_iterations(RUNS).with_type::<Vec<(u16, u8)>>().for_each(|edits| {
        let bytes = mutate(valid, edits);
        if let Ok(p) =
            serde_json::from_slice::<shoal_agent::runtime::seccomp::DockerProfile>(&bytes)
        {
            let _ = shoal_agent::runtime::seccomp::resolve(&p, &target);
        }
    });
}

#[test]
fn registry_manifests_decode_or_refuse() {
    let valid = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:5e7d1c3ba3e7b6de2e0c3a5c2d8a1b0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b","size":1024}]}"#;
    check!().with_iterations(RUNS).with_type::<(Vec<(u16, u8)>, u8)>().for_each(|(edits, kind)| {
        let media = match kind % 4 {
            0 => "application/vnd.oci.image.manifest.v1+json",
            1 => "",
            2 => "application/vnd.docker.distribution.manifest.v1+prettyjws",
            _ => "text/html",
        };
        match shoal_registry::decode_manifest(media, &mutate(valid, edits)) {
            Ok(m) => {
                for d in std::iter::once(&m.config).chain(&m.layers) {
                    assert!(shoal_registry::is_digest(&d.digest), "{}", d.digest);
                }
            }
            Err(e) => assert!(!e.is_empty()),
        }
    });
}

#[test]
fn image_archives_load_or_refuse_and_keep_the_store_whole() {
    let dir = tempfile::tempdir().unwrap();
    let valid = dir.path().join("valid.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "etc/hello", &b"hello"[..]).unwrap();
    std::fs::write(&valid, b.into_inner().unwrap()).unwrap();
    let bytes = std::fs::read(&valid).unwrap();
    let store = shoal_agent::image::ImageStore::open(dir.path().join("store")).unwrap();
    let input = dir.path().join("input.tar");
    check!().with_iterations(RUNS / 10).with_type::<Vec<(u16, u8)>>().for_each(|edits| {
        std::fs::write(&input, mutate(&bytes, edits)).unwrap();
        let _ = store.load_archive(&input);
        let _ = store.import(&input, "fuzz/image:1");
        // Whatever happened, the store still lists cleanly.
        store.list().unwrap();
    });
}

#[test]
fn trust_documents_never_verify_for_another_digest() {
    use shoal_pki::trust::*;
    let now = trust_now();
    let (bundle, root, stamp) = signed_bundle(now);
    let bytes = bundle.to_bytes();
    check!().with_iterations(RUNS).with_type::<Vec<(u16, u8)>>().for_each(|edits| {
        let changed = mutate(&bytes, edits);
        let _ = Envelope::from_bytes(&changed);
        if let Ok(b) = Bundle::from_bytes(&changed) {
            if let Ok(v) = b.verify(&root, &stamp, "reg:5000/a/app", Some("1"), None, now) {
                assert_eq!(v.digest, DIGEST, "a changed bundle verified for another digest");
            }
        }
    });
}

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn trust_now() -> u64 {
    shoal_pki::trust::now()
}

fn signed_bundle(
    at: u64,
) -> (shoal_pki::trust::Bundle, shoal_pki::trust::Root, shoal_pki::trust::PublicKey) {
    use shoal_pki::trust::*;
    let root_key = SigningKey::generate("root", Algorithm::Ed25519).unwrap();
    let signer = SigningKey::generate("alice", Algorithm::Ed25519).unwrap();
    let stamp = SigningKey::generate("ts", Algorithm::Ed25519).unwrap();
    let root = Root { prefix: "reg:5000/a".into(), version: 1, key: root_key.public() };
    let roots = vec![Signed::sign(root.clone(), &[&root_key]).unwrap()];
    let mut signers = std::collections::BTreeMap::new();
    signers.insert("alice".to_string(), signer.public());
    let d = Delegations { repo: "reg:5000/a/app".into(), version: 1, signers, expires: at + 999 };
    let d = Signed::sign(d, &[&root_key]).unwrap();
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("1".to_string(), Target { digest: DIGEST.into(), signer: "alice".into() });
    let t = Targets { repo: "reg:5000/a/app".into(), version: 1, tags, expires: at + 999 };
    let t = Signed::sign(t, &[&signer]).unwrap();
    let ts = Signed::sign(Timestamp::over(&d, &t, 1, at + 999), &[&stamp]).unwrap();
    (Bundle { roots, delegations: d, targets: t, timestamp: ts }, root, stamp.public())
}

#[test]
fn package_databases_and_advisories_read_or_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("osv.json");
    let valid = br#"{"id":"DSA-1","aliases":["CVE-1"],"affected":[{"package":{"ecosystem":"Debian:12","name":"openssl"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"3.0.11-1"}]}]}],"severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}"#;
    let status =
        "Package: libssl3\nStatus: install ok installed\nSource: openssl\nVersion: 3.0.9-1\n\n";
    check!().with_iterations(RUNS / 4).with_type::<Vec<(u16, u8)>>().for_each(|edits| {
        std::fs::write(&file, mutate(valid, edits)).unwrap();
        let mut db = shoal_agent::scan::Database::default();
        if db.import(&file).is_ok() {
            let text = String::from_utf8_lossy(&mutate(status.as_bytes(), edits)).into_owned();
            let packages = shoal_agent::scan::packages::dpkg_status(&text, Some("12".into()));
            let _ = db.matches(&packages);
        }
    });
}
