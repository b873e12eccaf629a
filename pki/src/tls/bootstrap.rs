//! The joiner's very first TLS call, made before it knows the root CA: capture the server chain, check it later.
//!
//! **Security warning:** the verifier here accepts ANY server certificate
//! chain. Only the digest-pinned CA fetch may use it: the joiner downloads the
//! CA bundle, checks it against the join token digest
//! ([`crate::JoinToken::matches_ca`]), and then calls
//! [`CapturedServerCerts::verify_against`] before trusting anything learned on
//! that connection. Never send the join token secret, or use any other data,
//! from such a connection before both checks pass.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ring_provider, root_store};
use crate::PkiError;

/// The certificate chain a bootstrap server presented (leaf first), recorded during the handshake.
#[derive(Debug, Default)]
pub struct CapturedServerCerts {
    chain: Mutex<Option<Vec<CertificateDer<'static>>>>,
}

impl CapturedServerCerts {
    /// The most recently captured chain, if a handshake got that far.
    pub fn chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.chain.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Checks that the captured chain is valid under `root_ca_pem` for `server_name`.
    pub fn verify_against(&self, root_ca_pem: &str, server_name: &str) -> Result<(), PkiError> {
        let chain = self.chain().ok_or(PkiError::NothingCaptured)?;
        let (leaf, intermediates) = chain.split_first().ok_or(PkiError::NothingCaptured)?;
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| PkiError::BadServerName(server_name.escape_debug().to_string()))?;
        let roots = Arc::new(root_store(root_ca_pem)?);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, ring_provider())
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        verifier.verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now()).map_err(
            |e| PkiError::Untrusted(format!("{e}; the server may be impersonating the cluster")),
        )?;
        Ok(())
    }

    fn record(&self, chain: Vec<CertificateDer<'static>>) {
        *self.chain.lock().unwrap_or_else(|e| e.into_inner()) = Some(chain);
    }
}

/// Accepts any chain (recording it) but still checks handshake signatures.
#[derive(Debug)]
pub(crate) struct CapturingVerifier {
    pub(crate) captured: Arc<CapturedServerCerts>,
    pub(crate) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CapturingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        self.captured.record(chain);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
