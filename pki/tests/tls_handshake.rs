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
    RootCa, CA_SERVER_NAME, DEFAULT_CERT_EXPIRY, MANAGER_SERVER_NAME,
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

fn server(ca: &RootCa, n: &Node, rev: &Arc<Revocations>) -> ServerConfig {
    server_config(ca.cert_pem(), Arc::clone(&n.cert), Some(Arc::clone(rev))).expect("server config")
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
    assert!(server_config("garbage", Arc::clone(&n.cert), None).is_err());
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
        manager_client_config(ca.cert_pem(), Some(Arc::clone(&wrk.cert)), Arc::clone(&trust))
            .expect("client")
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
