//! rustls configurations for shoal: TLS 1.3 only, ring provider, ALPN h2, cluster-root trust and revocation checks.
//!
//! Session resumption is disabled on both sides so that every connection
//! re-runs certificate verification (revocations take effect immediately)
//! and always sees the current, possibly renewed, certificate.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::node::certs_from_pem;
use crate::PkiError;

mod bootstrap;
mod managers;
mod reload;
mod revoke;
mod roots;

pub use bootstrap::CapturedServerCerts;
pub use managers::ManagerTrust;
pub use reload::ReloadableCert;
pub use revoke::Revocations;
pub use roots::{verify_chain, verify_chain_ignoring_expiry, TrustRoots};

use bootstrap::CapturingVerifier;
use managers::ManagerVerifier;
use revoke::RevokingVerifier;
use roots::{RootsClientVerifier, RootsServerVerifier};

/// The only ALPN protocol shoal speaks (gRPC over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// Server config: presents `cert`; client certs are optional but, when sent, must chain to a
/// root of `roots` (as they are at each handshake) and not be revoked.
///
/// With `revocations`, revoked client certificates are refused during the handshake. A server
/// that already refuses them on every call (with a message the client can show) may pass `None`:
/// since anonymous clients reach the same protocol layers for bootstrap calls, a revoked one gains
/// nothing, and TLS 1.3 would otherwise report the refusal as a bare closed connection.
pub fn server_config(
    roots: Arc<TrustRoots>,
    cert: Arc<ReloadableCert>,
    revocations: Option<Arc<Revocations>>,
) -> Result<ServerConfig, PkiError> {
    let provider = ring_provider();
    let inner = Arc::new(RootsClientVerifier(roots));
    let revocations = revocations.unwrap_or_default();
    let verifier = Arc::new(RevokingVerifier { inner, revocations });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: a resumed session would skip the client-certificate
    // (and revocation) check and keep serving a replaced certificate.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Client config: trusts only the cluster root; presents `cert` as client certificate when given.
pub fn client_config(
    root_ca_pem: &str,
    cert: Option<Arc<ReloadableCert>>,
) -> Result<ClientConfig, PkiError> {
    let verifier = webpki_server_verifier(root_ca_pem)?;
    Ok(client_config_with(verifier, cert))
}

/// Client config for reaching managers from inside the cluster (agents, Raft peers): besides
/// chaining to a root of `roots` (as they are at each handshake), the server's certificate must
/// be a current manager's as `trust` knows it (see [`ManagerTrust::refusal`]).
pub fn manager_client_config(
    roots: Arc<TrustRoots>,
    cert: Option<Arc<ReloadableCert>>,
    trust: Arc<ManagerTrust>,
) -> ClientConfig {
    let inner = Arc::new(RootsServerVerifier(roots));
    client_config_with(Arc::new(ManagerVerifier { inner, trust }), cert)
}

fn webpki_server_verifier(root_ca_pem: &str) -> Result<Arc<WebPkiServerVerifier>, PkiError> {
    let roots = Arc::new(root_store(root_ca_pem)?);
    WebPkiServerVerifier::builder_with_provider(roots, ring_provider())
        .build()
        .map_err(|e| PkiError::Tls(format!("cannot build the server verifier: {e}")))
}

/// Client config for a person holding a client bundle: trusts only the cluster root and
/// presents the user certificate (OU `shoal-user`) and its key. Unlike a node's, a person's
/// certificate is not renewed in place, so it needs no reloadable resolver.
pub fn user_client_config(
    root_ca_pem: &str,
    cert_chain_pem: &str,
    key: &crate::NodeKey,
) -> Result<ClientConfig, PkiError> {
    let verifier = webpki_server_verifier(root_ca_pem)?;
    let chain = certs_from_pem(cert_chain_pem)?;
    crate::UserIdentity::from_der(&chain[0])?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        key.pkcs8_der(),
    ));
    let mut config = tls13_client_builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, der)
        .map_err(|e| PkiError::BadKey(format!("the certificate and key do not match ({e})")))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

fn tls13_client_builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    match ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
    {
        Ok(builder) => builder,
        // The ring provider always supports TLS 1.3; reaching this is a build bug.
        Err(e) => panic!("ring provider rejected TLS 1.3: {e}"),
    }
}

fn client_config_with(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    cert: Option<Arc<ReloadableCert>>,
) -> ClientConfig {
    let builder = tls13_client_builder().dangerous().with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some(cert) => builder.with_client_cert_resolver(cert),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Always do a full handshake so the server's current certificate is verified.
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// Client config for a joiner's first call, before it knows the root CA.
///
/// **DANGER:** it accepts ANY server certificate and only records the chain.
/// Only the digest-pinned CA fetch may use it; afterwards the caller MUST pin
/// the fetched bundle with [`crate::JoinToken::matches_ca`] and call
/// [`CapturedServerCerts::verify_against`] before trusting the connection.
pub fn bootstrap_client_config() -> (ClientConfig, Arc<CapturedServerCerts>) {
    let provider = ring_provider();
    let captured = Arc::new(CapturedServerCerts::default());
    let verifier = Arc::new(CapturingVerifier {
        captured: Arc::clone(&captured),
        provider: Arc::clone(&provider),
    });
    let builder = match ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
    {
        Ok(builder) => builder,
        // The ring provider always supports TLS 1.3; reaching this is a build bug.
        Err(e) => panic!("ring provider rejected TLS 1.3: {e}"),
    };
    let mut config =
        builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    (config, captured)
}

/// The ring crypto provider, used explicitly so configs never depend on the process default.
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding every certificate in the CA bundle PEM.
fn root_store(root_ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(root_ca_pem)? {
        roots.add(cert).map_err(|e| {
            PkiError::BadCa(format!("the CA bundle holds an unusable certificate ({e})"))
        })?;
    }
    Ok(roots)
}
