//! Real rustls handshakes (in-memory, sync) against shoal's server/client configs.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::ServerName;
use shoal_pki::tls::{
    bootstrap_client_config, client_config, manager_client_config, server_config,
};
use shoal_pki::{
    IssuedCert, ManagerTrust, NodeKey, PeerIdentity, PkiError, ReloadableCert, Revocations, Role,
    RootCa, TrustRoots, CA_SERVER_NAME, DEFAULT_CERT_EXPIRY, MANAGER_SERVER_NAME,
};

const CLUSTER: &str = "c1";

struct Node {
    key: NodeKey,
    issued: IssuedCert,
    cert: Arc<ReloadableCert>,
}

fn node(ca: &RootCa, id: &str, role: Role) -> Node {
    let key = NodeKey::generate().expect("key");
    let issued = ca
        .sign_node_csr(
            &key.csr_der().expect("csr"),
            id,
            role,
            CLUSTER,
            DEFAULT_CERT_EXPIRY,
            SystemTime::now(),
        )
        .expect("sign");
    let cert = ReloadableCert::new(&issued.cert_pem, &key).expect("reloadable");
    Node { key, issued, cert }
}

fn roots(pem: &str) -> Arc<TrustRoots> {
    TrustRoots::new(pem).expect("roots")
}

fn server(ca: &RootCa, n: &Node, rev: &Arc<Revocations>) -> ServerConfig {
    server_config(roots(ca.cert_pem()), Arc::clone(&n.cert), Some(Arc::clone(rev)))
        .expect("server config")
}

/// Moves TLS bytes from `from` to `to` and lets `to` process them.
fn transfer(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).map_err(|e| rustls::Error::General(e.to_string()))?;
    }
    let mut slice = buf.as_slice();
    while !slice.is_empty() {
        to.read_tls(&mut slice).map_err(|e| rustls::Error::General(e.to_string()))?;
        to.process_new_packets()?;
    }
    Ok(())
}

/// Runs a full handshake; returns both ends or the first error either side hit.
fn handshake(
    client: ClientConfig,
    server: ServerConfig,
    name: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let name = ServerName::try_from(name.to_string()).expect("name");
    let mut c = Connection::Client(ClientConnection::new(Arc::new(client), name)?);
    let mut s = Connection::Server(ServerConnection::new(Arc::new(server))?);
    for _ in 0..10 {
        transfer(&mut c, &mut s)?;
        transfer(&mut s, &mut c)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            transfer(&mut c, &mut s)?;
            return match (c, s) {
                (Connection::Client(c), Connection::Server(s)) => Ok((c, s)),
                _ => Err(rustls::Error::General("connection kinds swapped".into())),
            };
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

fn peer_identity(certs: Option<&[rustls_pki_types::CertificateDer<'static>]>) -> PeerIdentity {
    let certs = certs.expect("peer certificates");
    PeerIdentity::from_der(&certs[0]).expect("identity")
}

#[test]
fn manager_server_and_worker_client_handshake() {
    let ca = RootCa::generate().expect("ca");
    let (mgr, wrk) = (node(&ca, "mgr1", Role::Manager), node(&ca, "wrk1", Role::Worker));
    let rev = Arc::new(Revocations::default());
    let client = client_config(ca.cert_pem(), Some(Arc::clone(&wrk.cert))).expect("client");
    let (c, s) =
        handshake(client, server(&ca, &mgr, &rev), MANAGER_SERVER_NAME).expect("handshake");
    assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    let seen_by_client = peer_identity(c.peer_certificates());
    assert_eq!(seen_by_client.node_id, "mgr1");
    assert_eq!(seen_by_client.role, Role::Manager);
    let seen_by_server = peer_identity(s.peer_certificates());
    assert_eq!(seen_by_server, wrk.cert.identity());
    assert_eq!(seen_by_server.serial_hex, wrk.issued.serial_hex);
}

#[test]
fn client_cert_from_another_ca_is_refused() {
    let (ca, evil_ca) = (RootCa::generate().expect("ca"), RootCa::generate().expect("evil"));
    let mgr = node(&ca, "mgr1", Role::Manager);
    let intruder = node(&evil_ca, "wrk1", Role::Worker);
    let rev = Arc::new(Revocations::default());
    let client = client_config(ca.cert_pem(), Some(intruder.cert)).expect("client");
    let err = handshake(client, server(&ca, &mgr, &rev), MANAGER_SERVER_NAME).err();
    assert!(matches!(err, Some(rustls::Error::InvalidCertificate(_))), "{err:?}");
}

#[test]
fn revoked_node_id_is_refused() {
    let ca = RootCa::generate().expect("ca");
    let (mgr, wrk) = (node(&ca, "mgr1", Role::Manager), node(&ca, "wrk1", Role::Worker));
    let rev = Arc::new(Revocations::default());
    rev.revoke_node("wrk1");
    let client = client_config(ca.cert_pem(), Some(Arc::clone(&wrk.cert))).expect("client");
    let err = handshake(client, server(&ca, &mgr, &rev), MANAGER_SERVER_NAME).err();
    assert_eq!(err, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)));
    let other = node(&ca, "wrk2", Role::Worker);
    let client = client_config(ca.cert_pem(), Some(other.cert)).expect("client");
    assert!(handshake(client, server(&ca, &mgr, &rev), MANAGER_SERVER_NAME).is_ok());
}

#[test]
fn revocation_applies_to_the_next_handshake_of_a_known_client() {
    let ca = RootCa::generate().expect("ca");
    let (mgr, wrk) = (node(&ca, "mgr1", Role::Manager), node(&ca, "wrk1", Role::Worker));
    let rev = Arc::new(Revocations::default());
    let cfg = server(&ca, &mgr, &rev);
    let client = client_config(ca.cert_pem(), Some(Arc::clone(&wrk.cert))).expect("client");
    handshake(client.clone(), cfg.clone(), MANAGER_SERVER_NAME).expect("before revocation");
    rev.revoke_node("wrk1");
    let err = handshake(client, cfg, MANAGER_SERVER_NAME).err();
    assert_eq!(err, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)));
}

#[test]
fn revoked_serial_is_refused_but_renewed_cert_accepted() {
    let ca = RootCa::generate().expect("ca");
    let (mgr, wrk) = (node(&ca, "mgr1", Role::Manager), node(&ca, "wrk1", Role::Worker));
    let rev = Arc::new(Revocations::default());
    rev.revoke_serial(&wrk.issued.serial_hex);
    let client = client_config(ca.cert_pem(), Some(Arc::clone(&wrk.cert))).expect("client");
    let err = handshake(client.clone(), server(&ca, &mgr, &rev), MANAGER_SERVER_NAME).err();
    assert_eq!(err, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)));
    // Same node, new certificate: the resolver picks it up without a new client config.
    let renewed = ca
        .sign_node_csr(
            &wrk.key.csr_der().expect("csr"),
            "wrk1",
            Role::Worker,
            CLUSTER,
            DEFAULT_CERT_EXPIRY,
            SystemTime::now(),
        )
        .expect("renew");
    wrk.cert.replace(&renewed.cert_pem, &wrk.key).expect("replace");
    let (_, s) =
        handshake(client, server(&ca, &mgr, &rev), MANAGER_SERVER_NAME).expect("renewed ok");
    assert_eq!(peer_identity(s.peer_certificates()).serial_hex, renewed.serial_hex);
}

#[test]
fn no_client_cert_is_accepted_for_bootstrap() {
    let ca = RootCa::generate().expect("ca");
    let mgr = node(&ca, "mgr1", Role::Manager);
    let rev = Arc::new(Revocations::default());
    let client = client_config(ca.cert_pem(), None).expect("client");
    let (_, s) =
        handshake(client, server(&ca, &mgr, &rev), MANAGER_SERVER_NAME).expect("handshake");
    assert!(s.peer_certificates().is_none());
}

#[test]
fn replaced_server_cert_is_used_by_next_handshake() {
    let ca = RootCa::generate().expect("ca");
    let mgr = node(&ca, "mgr1", Role::Manager);
    let rev = Arc::new(Revocations::default());
    let cfg = server(&ca, &mgr, &rev);
    let client = client_config(ca.cert_pem(), None).expect("client");
    let (c, _) = handshake(client.clone(), cfg.clone(), MANAGER_SERVER_NAME).expect("first");
    assert_eq!(peer_identity(c.peer_certificates()).serial_hex, mgr.issued.serial_hex);
    let new_key = NodeKey::generate().expect("key");
    let renewed = ca
        .sign_node_csr(
            &new_key.csr_der().expect("csr"),
            "mgr1",
            Role::Manager,
            CLUSTER,
            DEFAULT_CERT_EXPIRY,
            SystemTime::now(),
        )
        .expect("renew");
    mgr.cert.replace(&renewed.cert_pem, &new_key).expect("replace");
    assert_eq!(mgr.cert.identity().serial_hex, renewed.serial_hex);
    let (c, _) = handshake(client, cfg, MANAGER_SERVER_NAME).expect("second");
    assert_eq!(peer_identity(c.peer_certificates()).serial_hex, renewed.serial_hex);
}

#[test]
fn client_refuses_server_from_another_ca() {
    let (ca, evil_ca) = (RootCa::generate().expect("ca"), RootCa::generate().expect("evil"));
    let impostor = node(&evil_ca, "mgr1", Role::Manager);
    let rev = Arc::new(Revocations::default());
    let client = client_config(ca.cert_pem(), None).expect("client");
    let err = handshake(client, server(&evil_ca, &impostor, &rev), MANAGER_SERVER_NAME).err();
    assert!(matches!(err, Some(rustls::Error::InvalidCertificate(_))), "{err:?}");
}

#[test]
fn worker_cert_cannot_serve_as_manager() {
    let ca = RootCa::generate().expect("ca");
    let wrk = node(&ca, "wrk1", Role::Worker);
    let rev = Arc::new(Revocations::default());
    let client = client_config(ca.cert_pem(), None).expect("client");
    let err = handshake(client.clone(), server(&ca, &wrk, &rev), MANAGER_SERVER_NAME).err();
    assert!(
        matches!(
            err,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            )) | Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
        ),
        "{err:?}"
    );
    let err = handshake(client.clone(), server(&ca, &wrk, &rev), CA_SERVER_NAME).err();
    assert!(err.is_some());
    assert!(handshake(client, server(&ca, &wrk, &rev), "wrk1").is_ok());
}

#[test]
fn bootstrap_captures_chain_for_later_pinning() {
    let (ca, other) = (RootCa::generate().expect("ca"), RootCa::generate().expect("other"));
    let mgr = node(&ca, "mgr1", Role::Manager);
    let rev = Arc::new(Revocations::default());
    let (cfg, captured) = bootstrap_client_config();
    assert!(matches!(
        captured.verify_against(ca.cert_pem(), CA_SERVER_NAME),
        Err(PkiError::NothingCaptured)
    ));
    let (_, s) =
        handshake(cfg, server(&ca, &mgr, &rev), CA_SERVER_NAME).expect("bootstrap handshake");
    assert!(s.peer_certificates().is_none());
    captured.verify_against(ca.cert_pem(), CA_SERVER_NAME).expect("pinned root verifies");
    captured.verify_against(ca.cert_pem(), MANAGER_SERVER_NAME).expect("manager name too");
    let err = captured.verify_against(other.cert_pem(), CA_SERVER_NAME);
    assert!(matches!(err, Err(PkiError::Untrusted(_))), "{err:?}");
    assert!(matches!(
        captured.verify_against(ca.cert_pem(), "bad name!"),
        Err(PkiError::BadServerName(_))
    ));
}

#[test]
fn bootstrap_worker_server_fails_ca_name_check() {
    let ca = RootCa::generate().expect("ca");
    let wrk = node(&ca, "wrk1", Role::Worker);
    let rev = Arc::new(Revocations::default());
    let (cfg, captured) = bootstrap_client_config();
    handshake(cfg, server(&ca, &wrk, &rev), CA_SERVER_NAME).expect("accepts anything");
    assert!(matches!(
        captured.verify_against(ca.cert_pem(), CA_SERVER_NAME),
        Err(PkiError::Untrusted(_))
    ));
}

#[test]
fn tls12_only_client_is_refused() {
    let ca = RootCa::generate().expect("ca");
    let mgr = node(&ca, "mgr1", Role::Manager);
    let rev = Arc::new(Revocations::default());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(c.expect("pem")).expect("add");
    }
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("tls12")
            .with_root_certificates(roots)
            .with_no_client_auth();
    assert!(handshake(client, server(&ca, &mgr, &rev), MANAGER_SERVER_NAME).is_err());
}

#[test]
fn reloadable_cert_checks_key_and_redacts() {
    let ca = RootCa::generate().expect("ca");
    let n = node(&ca, "n1", Role::Worker);
    let stranger = NodeKey::generate().expect("key");
    assert!(matches!(
        ReloadableCert::new(&n.issued.cert_pem, &stranger),
        Err(PkiError::KeyMismatch(_))
    ));
    assert!(n.cert.replace(&n.issued.cert_pem, &stranger).is_err());
    assert_eq!(n.cert.identity().serial_hex, n.issued.serial_hex);
    assert!(ReloadableCert::new("garbage", &n.key).is_err());
    let dbg = format!("{:?}", n.cert);
    assert!(dbg.contains("<redacted>") && !dbg.contains("PRIVATE"));
    assert!(TrustRoots::new("garbage").is_err());
    assert!(client_config("", None).is_err());
}

#[test]
fn an_expired_client_certificate_is_refused() {
    let ca = RootCa::generate().expect("ca");
    let mgr = node(&ca, "mgr1", Role::Manager);
    let key = NodeKey::generate().expect("key");
    let long_ago = SystemTime::now() - std::time::Duration::from_secs(3 * 24 * 3600);
    let csr = key.csr_der().expect("csr");
    let issued = ca
        .sign_node_csr(&csr, "wrk1", Role::Worker, CLUSTER, shoal_pki::MIN_CERT_EXPIRY, long_ago)
        .expect("sign");
    let expired = ReloadableCert::new(&issued.cert_pem, &key).expect("reloadable");
    let rev = Arc::new(Revocations::default());
    let client = client_config(ca.cert_pem(), Some(expired)).expect("client");
    let err = handshake(client, server(&ca, &mgr, &rev), MANAGER_SERVER_NAME).err();
    assert!(
        matches!(err, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)))
            || matches!(
                err,
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ExpiredContext { .. }
                ))
            ),
        "{err:?}"
    );
}

#[test]
fn a_manager_client_refuses_a_server_that_is_no_longer_a_manager() {
    let ca = RootCa::generate().expect("ca");
    let (old, current) = (node(&ca, "mgr-old", Role::Manager), node(&ca, "mgr-now", Role::Manager));
    let wrk = node(&ca, "wrk1", Role::Worker);
    let rev = Arc::new(Revocations::default());
    let trust = ManagerTrust::with_revocations(Arc::default());
    let client = || {
        manager_client_config(roots(ca.cert_pem()), Some(Arc::clone(&wrk.cert)), Arc::clone(&trust))
    };
    // Before the node is told the manager set, the CA alone decides (as for a joiner).
    handshake(client(), server(&ca, &old, &rev), MANAGER_SERVER_NAME).expect("set not known");
    trust.set_managers(["mgr-now".to_string()]);
    let err = handshake(client(), server(&ca, &old, &rev), MANAGER_SERVER_NAME).unwrap_err();
    assert!(err.to_string().contains("no longer a manager"), "{err}");
    handshake(client(), server(&ca, &current, &rev), MANAGER_SERVER_NAME).expect("current");
    // A certificate issued before a role change is refused even for a node that is a manager.
    trust.revocations().supersede_serial(&current.issued.serial_hex);
    let err = handshake(client(), server(&ca, &current, &rev), MANAGER_SERVER_NAME).unwrap_err();
    assert!(err.to_string().contains("role changed"), "{err}");
}

/// A root rotation as the nodes see it: certificates from the new root, sent with the new root
/// cross-signed by the old one, are accepted by peers that trust only the old root, both ways;
/// once the roots are swapped (in place, on a running config) to the new one alone, old-root
/// certificates are refused and new-root ones, with or without the cross-signed one, accepted.
#[test]
fn a_cross_signed_rotation_keeps_old_and_new_certificates_talking() {
    let old = RootCa::generate().expect("old root");
    let new = RootCa::generate_for_rotation().expect("new root");
    let cross = old.cross_sign(&new).expect("cross-sign");
    let signing =
        RootCa::from_pem(new.cert_pem(), &new.key_pem()).expect("reload").with_intermediate(&cross);
    let (mgr_old, wrk_old) = (node(&old, "mgr1", Role::Manager), node(&old, "wrk1", Role::Worker));
    let (mgr_new, wrk_new) =
        (node(&signing, "mgr2", Role::Manager), node(&signing, "wrk2", Role::Worker));
    assert_eq!(wrk_new.issued.root_digest, new.digest_hex());
    assert_ne!(new.digest_hex(), old.digest_hex());
    let rev = Arc::new(Revocations::default());
    let trusted_old = roots(old.cert_pem());
    let server_with = |n: &Node, r: &Arc<TrustRoots>| {
        server_config(Arc::clone(r), Arc::clone(&n.cert), Some(Arc::clone(&rev))).expect("server")
    };
    let client_with = |n: &Node, r: &Arc<TrustRoots>| {
        manager_client_config(
            Arc::clone(r),
            Some(Arc::clone(&n.cert)),
            ManagerTrust::with_revocations(Arc::default()),
        )
    };
    // Everyone trusts the old root only: new-root certificates verify through the cross-signed one.
    handshake(
        client_with(&wrk_new, &trusted_old),
        server_with(&mgr_old, &trusted_old),
        MANAGER_SERVER_NAME,
    )
    .expect("new client, old server, old trust");
    handshake(
        client_with(&wrk_old, &trusted_old),
        server_with(&mgr_new, &trusted_old),
        MANAGER_SERVER_NAME,
    )
    .expect("old client, new server, old trust");
    // Both roots trusted.
    let both = roots(&format!("{}{}", old.cert_pem(), new.cert_pem()));
    for (c, s) in [(&wrk_old, &mgr_new), (&wrk_new, &mgr_old), (&wrk_new, &mgr_new)] {
        handshake(client_with(c, &both), server_with(s, &both), MANAGER_SERVER_NAME)
            .expect("both roots");
    }
    // The end of the rotation: one running server config, its roots swapped to the new one.
    let live = roots(&format!("{}{}", old.cert_pem(), new.cert_pem()));
    let config = server_with(&mgr_new, &live);
    handshake(client_with(&wrk_old, &both), config.clone(), MANAGER_SERVER_NAME)
        .expect("before the swap");
    let chain_of = |n: &Node| -> Vec<rustls_pki_types::CertificateDer<'static>> {
        rustls_pki_types::CertificateDer::pem_slice_iter(n.issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain")
    };
    assert!(live.still_trusts(&chain_of(&wrk_old)), "both roots: old-root chains pass");
    assert!(live.replace(new.cert_pem()).expect("swap"));
    // A connection opened before the swap is refused at its next call.
    assert!(!live.still_trusts(&chain_of(&wrk_old)), "retired root");
    assert!(live.still_trusts(&chain_of(&wrk_new)), "cross-signed new-root chain");
    assert!(!live.replace(new.cert_pem()).expect("same"), "the same bundle again changes nothing");
    let err =
        handshake(client_with(&wrk_old, &both), config.clone(), MANAGER_SERVER_NAME).unwrap_err();
    assert!(
        err.to_string().contains("UnknownIssuer")
            || err.to_string().contains("issuer")
            || err.to_string().contains("alert"),
        "{err}"
    );
    handshake(client_with(&wrk_new, &both), config.clone(), MANAGER_SERVER_NAME)
        .expect("new-root client after the swap");
    // A node renewed after the rotation holds the new root's plain certificate.
    let plain = node(&new, "wrk3", Role::Worker);
    handshake(client_with(&plain, &live), config, MANAGER_SERVER_NAME)
        .expect("plain new-root chain");
    // And a client that trusts only the new root refuses a server still on the old one.
    let err = handshake(
        client_with(&wrk_new, &live),
        server_with(&mgr_old, &trusted_old),
        MANAGER_SERVER_NAME,
    )
    .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[test]
fn chains_are_checked_with_and_without_their_expiry() {
    let ca = RootCa::generate().expect("ca");
    let key = NodeKey::generate().expect("key");
    let long_ago = SystemTime::now() - std::time::Duration::from_secs(10 * 24 * 3600);
    let issued = ca
        .sign_node_csr(
            &key.csr_der().unwrap(),
            "n1",
            Role::Worker,
            CLUSTER,
            shoal_pki::MIN_CERT_EXPIRY,
            long_ago,
        )
        .unwrap();
    let e = shoal_pki::tls::verify_chain(&issued.cert_pem, ca.cert_pem(), SystemTime::now())
        .unwrap_err();
    assert!(e.to_string().contains("certificate expired"), "{e}");
    shoal_pki::tls::verify_chain_ignoring_expiry(&issued.cert_pem, ca.cert_pem())
        .expect("issued by the root");
    let other = RootCa::generate().expect("other");
    assert!(
        shoal_pki::tls::verify_chain_ignoring_expiry(&issued.cert_pem, other.cert_pem()).is_err()
    );
}

#[test]
fn an_operator_root_must_be_a_fresh_long_lived_self_signed_root() {
    let current = RootCa::generate().expect("current");
    let now = SystemTime::now();
    let fresh = RootCa::generate().expect("fresh");
    RootCa::from_operator_pem(fresh.cert_pem(), &fresh.key_pem(), &current, now)
        .expect("fresh root");
    let e = RootCa::from_operator_pem(current.cert_pem(), &current.key_pem(), &current, now)
        .unwrap_err();
    assert!(e.to_string().contains("needs a new key"), "{e}");
    let bundle = format!("{}{}", fresh.cert_pem(), current.cert_pem());
    let e = RootCa::from_operator_pem(&bundle, &fresh.key_pem(), &current, now).unwrap_err();
    assert!(e.to_string().contains("one certificate"), "{e}");
    let e =
        RootCa::from_operator_pem(fresh.cert_pem(), &current.key_pem(), &current, now).unwrap_err();
    assert!(e.to_string().contains("does not belong"), "{e}");
    let e = RootCa::from_operator_pem("not a certificate", &fresh.key_pem(), &current, now)
        .unwrap_err();
    assert!(e.to_string().contains("unreadable"), "{e}");
    // 19 years from now the 20-year root has less than a year left.
    let late = now + std::time::Duration::from_secs(19 * 365 * 24 * 3600 + 200 * 24 * 3600);
    let e =
        RootCa::from_operator_pem(fresh.cert_pem(), &fresh.key_pem(), &current, late).unwrap_err();
    assert!(e.to_string().contains("at least a year"), "{e}");
}
