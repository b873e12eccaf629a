//! Which servers a node takes for its cluster's managers: a chain to the root is not enough, the
//! certificate must also be a manager's that is still current (not revoked, not superseded by a
//! demotion) and, once the node has been told the manager set, belong to one of those managers.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{PeerIdentity, Revocations, Role};

/// What a node knows about its cluster's current managers, updated as the managers tell it.
#[derive(Debug, Default)]
pub struct ManagerTrust {
    /// Node IDs of the current managers; `None` until someone said (then the CA alone decides).
    managers: RwLock<Option<HashSet<String>>>,
    revocations: Arc<Revocations>,
}

impl ManagerTrust {
    /// Trust that consults `revocations` (a manager shares its own list).
    pub fn with_revocations(revocations: Arc<Revocations>) -> Arc<ManagerTrust> {
        Arc::new(ManagerTrust { managers: RwLock::new(None), revocations })
    }

    /// Sets the current managers' node IDs. An empty list means "not known" (the CA decides).
    pub fn set_managers(&self, node_ids: impl IntoIterator<Item = String>) {
        let set: HashSet<String> = node_ids.into_iter().collect();
        *self.managers.write().unwrap_or_else(|e| e.into_inner()) =
            (!set.is_empty()).then_some(set);
    }

    /// The current managers' node IDs, sorted (empty while not known).
    pub fn managers(&self) -> Vec<String> {
        let guard = self.managers.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<String> = guard.iter().flatten().cloned().collect();
        ids.sort();
        ids
    }

    /// The revocation lists this trust consults.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Why `id` is not a current manager, if it is not.
    pub fn refusal(&self, id: &PeerIdentity) -> Option<String> {
        let node = &id.node_id;
        if id.role != Role::Manager {
            return Some(format!("the server's certificate (node {node}) is not a manager's"));
        }
        if self.revocations.is_revoked(id) {
            return Some(format!("the server's certificate (node {node}) is revoked"));
        }
        if self.revocations.is_superseded(id) {
            return Some(format!(
                "the server's certificate (node {node}) was issued before its role changed"
            ));
        }
        let guard = self.managers.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(set) if !set.contains(node) => {
                Some(format!("node {node} is no longer a manager of this cluster"))
            }
            _ => None,
        }
    }
}

/// Chain validation by webpki, then [`ManagerTrust::refusal`].
#[derive(Debug)]
pub(crate) struct ManagerVerifier {
    pub(crate) inner: Arc<super::roots::RootsServerVerifier>,
    pub(crate) trust: Arc<ManagerTrust>,
}

/// The error a refused manager certificate gives: its message names the node and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotAManager(String);

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let id = PeerIdentity::from_der(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        if let Some(why) = self.trust.refusal(&id) {
            tracing::warn!(node_id = %id.node_id, serial = %id.serial_hex, %why, "refused a server posing as a manager");
            let other = OtherError(Arc::new(NotAManager(why)));
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(other)));
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

    fn id(node: &str, role: Role, serial: &str) -> PeerIdentity {
        PeerIdentity {
            node_id: node.into(),
            role,
            cluster_id: "c".into(),
            serial_hex: serial.into(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_manager_must_be_current_once_the_set_is_known() {
        let trust = ManagerTrust::with_revocations(Arc::default());
        assert_eq!(trust.refusal(&id("m1", Role::Manager, "01")), None, "unknown set: CA decides");
        assert!(trust.refusal(&id("w1", Role::Worker, "02")).is_some());
        trust.set_managers(["m2".to_string()]);
        let why = trust.refusal(&id("m1", Role::Manager, "01")).unwrap();
        assert!(why.contains("no longer a manager"), "{why}");
        assert_eq!(trust.refusal(&id("m2", Role::Manager, "03")), None);
        trust.revocations().supersede_serial("03");
        assert!(trust.refusal(&id("m2", Role::Manager, "03")).unwrap().contains("role changed"));
        trust.revocations().revoke_node("m2");
        assert!(trust.refusal(&id("m2", Role::Manager, "04")).unwrap().contains("revoked"));
        assert_eq!(trust.managers(), vec!["m2".to_string()]);
    }
}
