//! Revoked node IDs and serials, and the client-certificate verifier that enforces them at handshake time.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::PeerIdentity;

/// Thread-safe sets of revoked node IDs and revoked certificate serials (lowercase hex), and of
/// serials superseded by a role change.
///
/// A revoked certificate is refused everywhere. A superseded one was issued for a role the node
/// no longer has (`node promote` / `node demote`): it still proves who the node is, so the node
/// may renew into its new role with it, but it carries no more than a worker's rights and no
/// client takes it for a manager's.
#[derive(Default, Debug)]
pub struct Revocations {
    nodes: RwLock<HashSet<String>>,
    serials: RwLock<HashSet<String>>,
    superseded: RwLock<HashSet<String>>,
}

impl Revocations {
    /// Revokes every certificate of this node.
    pub fn revoke_node(&self, node_id: &str) {
        write(&self.nodes).insert(node_id.to_string());
    }

    /// Revokes one certificate by serial (hex as in [`PeerIdentity::serial_hex`]; case-insensitive).
    pub fn revoke_serial(&self, serial_hex: &str) {
        write(&self.serials).insert(normalize_serial(serial_hex));
    }

    /// Marks one certificate as issued for a role its node no longer has.
    pub fn supersede_serial(&self, serial_hex: &str) {
        write(&self.superseded).insert(normalize_serial(serial_hex));
    }

    /// Whether the certificate's node or serial has been revoked.
    pub fn is_revoked(&self, id: &PeerIdentity) -> bool {
        read(&self.nodes).contains(&id.node_id)
            || read(&self.serials).contains(&normalize_serial(&id.serial_hex))
    }

    /// Whether the certificate was issued for a role its node no longer has.
    pub fn is_superseded(&self, id: &PeerIdentity) -> bool {
        read(&self.superseded).contains(&normalize_serial(&id.serial_hex))
    }

    /// Replaces both sets wholesale (e.g. after reloading them from the cluster store); the
    /// superseded serials are left as they are.
    pub fn replace_all(
        &self,
        nodes: impl IntoIterator<Item = String>,
        serials: impl IntoIterator<Item = String>,
    ) {
        let nodes: HashSet<String> = nodes.into_iter().collect();
        let serials: HashSet<String> = serials.into_iter().map(|s| normalize_serial(&s)).collect();
        *write(&self.nodes) = nodes;
        *write(&self.serials) = serials;
    }

    /// Replaces the superseded serials wholesale.
    pub fn replace_superseded(&self, serials: impl IntoIterator<Item = String>) {
        *write(&self.superseded) = serials.into_iter().map(|s| normalize_serial(&s)).collect();
    }

    /// The revoked node IDs, revoked serials and superseded serials, each sorted (to hand on).
    pub fn lists(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let sorted = |set: &RwLock<HashSet<String>>| {
            let mut v: Vec<String> = read(set).iter().cloned().collect();
            v.sort();
            v
        };
        (sorted(&self.nodes), sorted(&self.serials), sorted(&self.superseded))
    }
}

fn normalize_serial(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

fn read(lock: &RwLock<HashSet<String>>) -> std::sync::RwLockReadGuard<'_, HashSet<String>> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write(lock: &RwLock<HashSet<String>>) -> std::sync::RwLockWriteGuard<'_, HashSet<String>> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Wraps a chain-validating verifier and additionally refuses revoked or non-shoal client certificates.
#[derive(Debug)]
pub(crate) struct RevokingVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) revocations: Arc<Revocations>,
}

impl ClientCertVerifier for RevokingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        // A person's certificate: whether its user still exists is decided on every call.
        if crate::user::UserIdentity::from_der(end_entity).is_ok() {
            return Ok(verified);
        }
        let identity = PeerIdentity::from_der(end_entity).map_err(|e| {
            tracing::warn!(error = %e, "client certificate has no shoal identity");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        if self.revocations.is_revoked(&identity) {
            tracing::warn!(node_id = %identity.node_id, serial = %identity.serial_hex, "refused revoked client certificate");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn identity(node: &str, serial: &str) -> PeerIdentity {
        PeerIdentity {
            node_id: node.into(),
            role: crate::Role::Worker,
            cluster_id: "c".into(),
            serial_hex: serial.into(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn revokes_by_node_and_serial() {
        let r = Revocations::default();
        assert!(!r.is_revoked(&identity("a", "01")));
        r.revoke_node("a");
        assert!(r.is_revoked(&identity("a", "01")));
        r.revoke_serial("0ABC");
        assert!(r.is_revoked(&identity("b", "0abc")));
        assert!(!r.is_revoked(&identity("b", "0abd")));
        r.replace_all(vec!["c".to_string()], Vec::new());
        assert!(!r.is_revoked(&identity("a", "01")));
        assert!(!r.is_revoked(&identity("b", "0abc")));
        assert!(r.is_revoked(&identity("c", "ff")));
    }

    #[test]
    fn a_superseded_serial_is_not_revoked() {
        let r = Revocations::default();
        r.supersede_serial("0A");
        assert!(r.is_superseded(&identity("a", "0a")));
        assert!(!r.is_revoked(&identity("a", "0a")));
        r.replace_all(Vec::new(), Vec::new());
        assert!(r.is_superseded(&identity("a", "0a")), "replace_all keeps superseded serials");
        r.replace_superseded(Vec::new());
        assert!(!r.is_superseded(&identity("a", "0a")));
    }
}
