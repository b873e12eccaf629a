//! What went wrong with a registry, in words that say what to do.

use std::path::PathBuf;

/// Why a registry operation failed. Messages name the registry and, where the registry
/// answered, carry its own words.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("bad image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    /// The registry's certificate is signed by a CA this node does not trust.
    #[error(
        "registry {registry}: x509: certificate signed by unknown authority; put its CA \
         certificate in {} on this node",
        .ca_path.display()
    )]
    UnknownAuthority { registry: String, ca_path: PathBuf },
    /// The registry answered a TLS client in plain HTTP.
    #[error(
        "registry {registry} answers in plain HTTP; Shoal reaches registries over TLS unless \
         the node names it with shoald --insecure-registry {registry}"
    )]
    PlainHttp { registry: String },
    /// Another TLS failure (expired or mismatched certificate, a client certificate refused).
    #[error("registry {registry}: TLS: {message}")]
    Tls { registry: String, message: String },
    #[error("registry {registry}: unauthorized: {message}")]
    Unauthorized { registry: String, message: String },
    #[error("{reference}: not found in the registry: {message}")]
    NotFound { reference: String, message: String },
    /// Bytes that are not what their digest says; nothing of them was kept.
    #[error("blob {expected} does not match its digest: the registry sent bytes whose digest is {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {digest} should be {expected} bytes but the registry sent {actual}")]
    SizeMismatch { digest: String, expected: u64, actual: u64 },
    /// The registry refused the request; its words.
    #[error("registry {registry} answered {status}: {message}")]
    Registry { registry: String, status: u16, message: String },
    /// No answer after the retries.
    #[error("registry {registry} is unreachable: {message}")]
    Unreachable { registry: String, message: String },
    #[error("{reference}: {reason}")]
    BadManifest { reference: String, reason: String },
    #[error("{reference} has no image for {platform} (it has: {available})")]
    NoPlatform { reference: String, platform: String, available: String },
    #[error("{what} {}: {source}", .path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// The client could not be set up (unreadable CA or client certificate files).
    #[error("{0}")]
    Setup(String),
}

impl RegistryError {
    /// Worth another try: the registry or the way to it may come back.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Registry { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}
