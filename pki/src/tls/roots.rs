//! The root certificates a node trusts, replaceable while servers and clients run: a root CA
//! rotation first adds the new root beside the old one, then drops the old one, and every
//! handshake after each step uses the new set without a restart.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::node::{certs_from_pem, parse_cert};
use crate::PkiError;

/// One bundle and the verifiers built on it.
struct Verifiers {
    pem: String,
    server: Arc<WebPkiServerVerifier>,
    client: Arc<dyn ClientCertVerifier>,
    /// Client chains already checked against this bundle (by the leaf's SHA-256).
    checked: std::sync::Mutex<std::collections::HashMap<[u8; 32], bool>>,
}

/// Most chains [`TrustRoots::still_trusts`] remembers per bundle.
const CHECKED_MAX: usize = 4096;

/// The trusted root bundle (PEM, one or more certificates), shared by every TLS config of a
/// node and swapped in place with [`TrustRoots::replace`].
pub struct TrustRoots {
    current: RwLock<Arc<Verifiers>>,
}

impl TrustRoots {
    /// Trust in the roots of `bundle_pem`.
    pub fn new(bundle_pem: &str) -> Result<Arc<TrustRoots>, PkiError> {
        Ok(Arc::new(TrustRoots { current: RwLock::new(Arc::new(build(bundle_pem)?)) }))
    }

    /// Trusts the roots of `bundle_pem` from the next handshake on; `Ok(false)` when they are
    /// the ones already trusted.
    pub fn replace(&self, bundle_pem: &str) -> Result<bool, PkiError> {
        if self.get().pem == bundle_pem {
            return Ok(false);
        }
        let next = Arc::new(build(bundle_pem)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(true)
    }

    /// The bundle trusted now.
    pub fn pem(&self) -> String {
        self.get().pem.clone()
    }

    fn get(&self) -> Arc<Verifiers> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether a client chain accepted at an earlier handshake still leads to a root trusted
    /// now, whether or not it has expired since (after a rotation ended, connections opened with an old-root certificate must not
    /// go on being served). Remembered per bundle, so each chain is verified once per change.
    pub fn still_trusts(&self, chain: &[rustls_pki_types::CertificateDer<'_>]) -> bool {
        let Some(leaf) = chain.first() else { return false };
        let verifiers = self.get();
        let mut key = [0u8; 32];
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, leaf).as_ref());
        if let Some(ok) = verifiers.checked.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return *ok;
        }
        // Checked within the leaf's life: this is about roots, and a certificate that ran out
        // on an open connection is the handshake's business, as before.
        let at = parse_cert(leaf)
            .map(|c| crate::node::asn1_to_system(c.validity().not_after))
            .map(|end| {
                end.checked_sub(Duration::from_secs(1)).unwrap_or(end).min(SystemTime::now())
            })
            .unwrap_or_else(|_| SystemTime::now());
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let at = UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let ok = verifiers.client.verify_client_cert(leaf, &chain[1..], at).is_ok();
        let mut checked = verifiers.checked.lock().unwrap_or_else(|e| e.into_inner());
        if checked.len() >= CHECKED_MAX {
            checked.clear();
        }
        checked.insert(key, ok);
        ok
    }

    pub(crate) fn server_verifier(&self) -> Arc<WebPkiServerVerifier> {
        Arc::clone(&self.get().server)
    }

    pub(crate) fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.get().client)
    }
}

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustRoots").field("pem_len", &self.get().pem.len()).finish()
    }
}

fn build(bundle_pem: &str) -> Result<Verifiers, PkiError> {
    let roots = Arc::new(super::root_store(bundle_pem)?);
    let provider = super::ring_provider();
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| PkiError::Tls(format!("cannot build the server verifier: {e}")))?;
    let client = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(format!("cannot build the client verifier: {e}")))?;
    Ok(Verifiers { pem: bundle_pem.to_string(), server, client, checked: Default::default() })
}

/// Checks that the chain `chain_pem` (leaf first, then any intermediates) leads to a root of
/// `bundle_pem`, as a TLS peer would check it at `at`.
pub fn verify_chain(chain_pem: &str, bundle_pem: &str, at: SystemTime) -> Result<(), PkiError> {
    let chain = certs_from_pem(chain_pem)?;
    let verifiers = build(bundle_pem)?;
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let now = UnixTime::since_unix_epoch(Duration::from_secs(secs));
    verifiers
        .client
        .verify_client_cert(&chain[0], &chain[1..], now)
        .map(|_| ())
        .map_err(|e| PkiError::BadCert(format!("it does not chain to a trusted root ({e})")))
}

/// Checks that `chain_pem` was issued under a root of `bundle_pem`, whether or not it is still
/// valid today: the chain is checked as of one second before its leaf expired (a node coming
/// back with an expired certificate proves it once belonged).
pub fn verify_chain_ignoring_expiry(chain_pem: &str, bundle_pem: &str) -> Result<(), PkiError> {
    let chain = certs_from_pem(chain_pem)?;
    let leaf = parse_cert(&chain[0])?;
    let not_after = crate::node::asn1_to_system(leaf.validity().not_after);
    let at = not_after.checked_sub(Duration::from_secs(1)).unwrap_or(not_after);
    verify_chain(chain_pem, bundle_pem, at)
}

/// A server verifier that checks against whatever the roots are at handshake time.
#[derive(Debug)]
pub(crate) struct RootsServerVerifier(pub(crate) Arc<TrustRoots>);

impl ServerCertVerifier for RootsServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.server_verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.server_verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.server_verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.server_verifier().supported_verify_schemes()
    }
}

/// A client verifier that checks against whatever the roots are at handshake time. It sends
/// no root hints: they would have to outlive a swap, and shoal clients hold one certificate.
#[derive(Debug)]
pub(crate) struct RootsClientVerifier(pub(crate) Arc<TrustRoots>);

impl ClientCertVerifier for RootsClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.client_verifier().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.client_verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.client_verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.client_verifier().supported_verify_schemes()
    }
}
