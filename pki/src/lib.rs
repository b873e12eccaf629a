//! Shoal's PKI: root CA, CSR signing, node identity, join tokens, renewal timing, key files and rustls configs.

use std::time::Duration;

pub mod base36;
pub mod ca;
pub mod files;
pub mod id;
pub mod node;
pub mod reattest;
pub mod renew;
pub mod tls;
pub mod token;
pub mod trust;
pub mod tunnel;
pub mod user;

pub use ca::{IssuedCert, RootCa};
pub use node::{certificate_chain_pem, NodeKey, PeerIdentity};
/// The domain role, defined with its names in `shoal-role` so the wire crate can share them.
pub use shoal_role::{Role, UnknownRoleError};
pub use tls::{CapturedServerCerts, ManagerTrust, ReloadableCert, Revocations, TrustRoots};
pub use token::{JoinToken, TokenError};
pub use user::UserIdentity;

/// DNS SAN that clients verify managers against.
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";
/// DNS SAN carried by manager certificates so joiners can reach the CA endpoint.
pub const CA_SERVER_NAME: &str = "shoal-ca";
/// Default lifetime of node certificates (90 days).
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Shortest node certificate lifetime the CA will issue (1 hour).
pub const MIN_CERT_EXPIRY: Duration = Duration::from_secs(60 * 60);

/// Checks a cluster's certificate expiry setting (`swarm init`, `swarm update`) against
/// [`MIN_CERT_EXPIRY`], before it is sent or stored.
pub fn validate_cert_expiry(expiry: Duration) -> Result<(), PkiError> {
    validate_cert_expiry_at_least(expiry, MIN_CERT_EXPIRY)
}

/// [`validate_cert_expiry`] with another floor (test clusters whose time runs faster).
pub fn validate_cert_expiry_at_least(expiry: Duration, floor: Duration) -> Result<(), PkiError> {
    if expiry < floor {
        return Err(PkiError::ExpiryBelowMinimum(expiry, floor));
    }
    Ok(())
}

/// A duration as settings are written: `100ms`, `45s`, `30m`, `1h 30m`.
pub fn short_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Installs rustls's ring provider as the process default; calling it again is harmless.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Errors from the CA, node identity, key file and TLS code.
#[derive(thiserror::Error, Debug)]
pub enum PkiError {
    /// The certificate signing request could not be parsed or verified.
    #[error("invalid certificate signing request: {0}; regenerate it with NodeKey::csr_der")]
    BadCsr(String),
    /// The CSR (or key) is not ECDSA P-256.
    #[error("unsupported key type: {0}; shoal nodes must use ECDSA P-256 keys")]
    UnsupportedKey(String),
    /// The requested certificate lifetime is below [`MIN_CERT_EXPIRY`].
    #[error("certificate expiry of {requested_secs}s is too short: the minimum is {minimum_secs}s (1 hour); ask for a longer expiry")]
    ExpiryTooShort {
        /// Requested lifetime in seconds.
        requested_secs: u64,
        /// Minimum lifetime in seconds.
        minimum_secs: u64,
    },
    /// A cluster's certificate expiry setting is below [`MIN_CERT_EXPIRY`].
    #[error("certificate expiry {} is below the minimum of {}", short_duration(*.0), short_duration(*.1))]
    ExpiryBelowMinimum(Duration, Duration),
    /// A node ID or cluster ID cannot be put in a certificate.
    #[error("invalid identity: {0}")]
    BadIdentity(String),
    /// A certificate could not be parsed or lacks a shoal identity.
    #[error("invalid certificate: {0}")]
    BadCert(String),
    /// A private key could not be parsed.
    #[error("invalid private key: {0}")]
    BadKey(String),
    /// The certificate's public key does not belong to the given private key.
    #[error(
        "the certificate does not match the private key: {0}; use the key the CSR was made from"
    )]
    KeyMismatch(String),
    /// The stored root CA certificate or key is unusable.
    #[error("invalid root CA: {0}")]
    BadCa(String),
    /// Signing a certificate failed.
    #[error("could not sign the certificate: {0}")]
    Signing(String),
    /// Building a rustls configuration failed.
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// A server's certificate chain is not valid under the pinned root.
    #[error("the server's certificate is not trusted: {0}")]
    Untrusted(String),
    /// `verify_against` was called before any server certificate was captured.
    #[error(
        "no server certificate was captured: complete the bootstrap handshake before verifying it"
    )]
    NothingCaptured,
    /// A server name is not a valid DNS name.
    #[error("invalid server name \"{0}\": use a DNS name such as shoal-manager")]
    BadServerName(String),
    /// The system clock is outside the range certificates can express.
    #[error("system time out of range: {0}; check the system clock")]
    Time(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_expiry_below_the_minimum_is_refused_clearly() {
        let err = validate_cert_expiry(Duration::from_secs(1800)).unwrap_err();
        assert_eq!(err.to_string(), "certificate expiry 30m is below the minimum of 1h");
        assert!(validate_cert_expiry(MIN_CERT_EXPIRY).is_ok());
        assert_eq!(short_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(short_duration(Duration::from_secs(90)), "1m 30s");
    }

    #[test]
    fn install_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
