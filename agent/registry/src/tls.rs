//! TLS to registries, Docker's way: the host's CA bundle plus, for one registry, every
//! `CERTS_DIR/HOST:PORT/*.crt` as an extra CA and `client.cert` + `client.key` as the client
//! certificate for registries that want mutual TLS. Verification can only be turned off for a
//! registry the node names insecure.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::RegistryError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A fingerprint of `dir` (names, sizes, times of its files): the client is rebuilt when an
/// operator adds or replaces a certificate, as Docker reads certs.d anew.
pub fn dir_stamp(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else { return String::new() };
    let mut parts: Vec<String> = entries
        .flatten()
        .map(|e| {
            let m = e.metadata().ok();
            format!(
                "{}:{}:{:?}",
                e.file_name().to_string_lossy(),
                m.as_ref().map_or(0, |m| m.len()),
                m.and_then(|m| m.modified().ok())
            )
        })
        .collect();
    parts.sort();
    parts.join("|")
}

fn setup(what: &str, path: &Path, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Setup(format!("{what} {}: {e}", path.display()))
}

/// The verifying TLS config for a registry whose certs.d directory is `dir`.
pub fn verified(dir: &Path) -> Result<ClientConfig, RegistryError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    let mut client_cert: Option<PathBuf> = None;
    let mut client_key: Option<PathBuf> = None;
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            match p.extension().and_then(|e| e.to_str()) {
                Some("crt") => {
                    for cert in CertificateDer::pem_file_iter(&p)
                        .map_err(|e| setup("reading the CA file", &p, e))?
                    {
                        let cert = cert.map_err(|e| setup("reading the CA file", &p, e))?;
                        roots.add(cert).map_err(|e| setup("adding the CA in", &p, e))?;
                    }
                }
                Some("cert") => client_cert = Some(p),
                Some("key") => client_key = Some(p),
                _ => {}
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Setup(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match (client_cert, client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(&cert)
                .map_err(|e| setup("reading the client certificate", &cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| setup("reading the client certificate", &cert, e))?;
            let key_der = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| setup("reading the client key", &key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| setup("using the client certificate", &cert, e))
        }
        (Some(p), None) | (None, Some(p)) => Err(RegistryError::Setup(format!(
            "{} needs both client.cert and client.key (found only {})",
            dir.display(),
            p.display()
        ))),
        (None, None) => Ok(builder.with_no_client_auth()),
    }
}

/// TLS without verification, for a registry the node names with `--insecure-registry`.
pub fn unverified() -> Result<ClientConfig, RegistryError> {
    let p = provider();
    Ok(ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Setup(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
        .with_no_client_auth())
}

/// Accepts any certificate (signatures are still checked): `--insecure-registry` only.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a failed request says about TLS: an unknown issuer, a plain-HTTP server, or another
/// TLS error (its text); `None` if it was no TLS failure.
pub enum TlsFailure {
    UnknownIssuer,
    PlainHttp,
    Other(String),
}

pub fn classify(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(of_rustls(t));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(of_rustls(t));
            }
        }
        cur = err.source();
    }
    // The error may reach us only as text (wrapped by the HTTP stack in a type of its own).
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    if text.contains("UnknownIssuer") {
        Some(TlsFailure::UnknownIssuer)
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        Some(TlsFailure::PlainHttp)
    } else if text.contains("invalid peer certificate") || text.contains("peer sent") {
        Some(TlsFailure::Other(text))
    } else {
        None
    }
}

fn of_rustls(e: &rustls::Error) -> TlsFailure {
    use rustls::{CertificateError, Error};
    match e {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => TlsFailure::UnknownIssuer,
        Error::InvalidMessage(_) => TlsFailure::PlainHttp,
        other => TlsFailure::Other(other.to_string()),
    }
}
