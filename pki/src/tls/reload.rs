//! A node certificate + key that can be swapped at runtime and is served to every new TLS handshake.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::node::certs_from_pem;
use crate::{NodeKey, PeerIdentity, PkiError};

struct Current {
    key: Arc<CertifiedKey>,
    identity: PeerIdentity,
    chain_pem: String,
}

/// The node's current certificate chain and key, replaceable without restarting servers or clients.
pub struct ReloadableCert {
    current: RwLock<Current>,
}

impl ReloadableCert {
    /// Builds a resolver from a PEM chain (leaf first) and the leaf's key.
    pub fn new(cert_chain_pem: &str, key: &NodeKey) -> Result<Arc<ReloadableCert>, PkiError> {
        let current = load(cert_chain_pem, key)?;
        Ok(Arc::new(ReloadableCert { current: RwLock::new(current) }))
    }

    /// Swaps in a renewed chain and key; new handshakes use it immediately.
    pub fn replace(&self, cert_chain_pem: &str, key: &NodeKey) -> Result<(), PkiError> {
        let next = load(cert_chain_pem, key)?;
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = next;
        tracing::info!(serial = %guard.identity.serial_hex, "node certificate replaced");
        Ok(())
    }

    /// The identity in the current leaf certificate.
    pub fn identity(&self) -> PeerIdentity {
        self.read().identity.clone()
    }

    /// The current certificate chain (PEM, leaf first).
    pub fn chain_pem(&self) -> String {
        self.read().chain_pem.clone()
    }

    /// The current certified key as handed to rustls.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.read().key)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn load(cert_chain_pem: &str, key: &NodeKey) -> Result<Current, PkiError> {
    let chain = certs_from_pem(cert_chain_pem)?;
    let identity = PeerIdentity::from_der(&chain[0])?;
    let provider = rustls::crypto::ring::default_provider();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der()));
    let signing_key = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| PkiError::BadKey(format!("rustls cannot use the node key ({e})")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| PkiError::KeyMismatch(e.to_string()))?;
    Ok(Current { key: Arc::new(certified), identity, chain_pem: cert_chain_pem.to_string() })
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl ResolvesClientCert for ReloadableCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.read();
        f.debug_struct("ReloadableCert")
            .field("node_id", &current.identity.node_id)
            .field("serial_hex", &current.identity.serial_hex)
            .field("key", &"<redacted>")
            .finish()
    }
}
