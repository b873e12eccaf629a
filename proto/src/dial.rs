//! Owns dialing managers: gRPC channels over TCP + rustls with our own client configs (no
//! system roots, ALPN h2), and turning transport failures into sentences a user can act on.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// The DNS name every manager certificate carries and clients verify.
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";

/// How long dialing a manager may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a manager could not be dialed. Each message is one line that says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// `addr` is not a `host:port` a channel can be built for.
    #[error("{addr} is not a valid address: {reason}")]
    BadAddress { addr: String, reason: String },
    /// Nothing accepted the TCP connection (no daemon listens there, or it is still starting).
    #[error("could not reach a manager at {addr}: {detail}{REFUSED_HINT}")]
    Refused { addr: String, detail: String },
    /// The connection or the TLS handshake failed some other way; `detail` is the innermost
    /// cause and `causes` every cause, outermost first (which hint applies depends on them).
    #[error("could not reach a manager at {addr}: {detail}{}", hint(.causes))]
    Failed { addr: String, detail: String, causes: String },
    /// No connection within [`CONNECT_TIMEOUT`].
    #[error(
        "could not reach a manager at {addr}: {}; check the address and that the port is open",
        timed_out()
    )]
    TimedOut { addr: String },
}

impl DialError {
    /// Whether the connection was refused, the one failure worth retrying at once: the
    /// manager may be starting.
    pub fn is_refused(&self) -> bool {
        matches!(self, DialError::Refused { .. })
    }

    /// What went wrong, without the address or advice (e.g. "Connection refused (os error 111)").
    pub fn detail(&self) -> String {
        match self {
            DialError::BadAddress { reason, .. } => reason.clone(),
            DialError::Refused { detail, .. } | DialError::Failed { detail, .. } => detail.clone(),
            DialError::TimedOut { .. } => timed_out(),
        }
    }

    /// The message without its "could not reach a manager at ADDR: " opening.
    pub fn reason(&self) -> String {
        match self {
            DialError::Refused { detail, .. } => format!("{detail}{REFUSED_HINT}"),
            DialError::Failed { detail, causes, .. } => format!("{detail}{}", hint(causes)),
            DialError::TimedOut { .. } => {
                format!("{}; check the address and that the port is open", timed_out())
            }
            DialError::BadAddress { .. } => self.to_string(),
        }
    }

    fn from_transport(addr: &str, e: &(dyn std::error::Error + 'static)) -> DialError {
        let all = causes(e);
        let detail = all.last().cloned().unwrap_or_default();
        let addr = addr.to_string();
        if connection_refused(e) {
            DialError::Refused { addr, detail }
        } else {
            DialError::Failed { addr, detail, causes: all.join(" ") }
        }
    }
}

/// A manager that dials another on a client's behalf answers Unavailable: the other manager
/// (or the address it is known by) is not usable now.
impl From<DialError> for tonic::Status {
    fn from(e: DialError) -> tonic::Status {
        tonic::Status::unavailable(e.to_string())
    }
}

/// The advice for a refused connection.
const REFUSED_HINT: &str = "; check the address and that shoald listens there";

fn timed_out() -> String {
    format!("timed out after {}s", CONNECT_TIMEOUT.as_secs())
}

/// Whether an I/O error with kind `ConnectionRefused` is among `e`'s causes.
fn connection_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(cause) = next {
        let io = cause.downcast_ref::<std::io::Error>();
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        next = cause.source();
    }
    false
}

/// Opens a gRPC channel to a manager at `addr` (host:port), verifying it with `config`.
pub async fn connect(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel, DialError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| DialError::BadAddress { addr: addr.into(), reason: e.to_string() })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let target = addr.to_string();
    let connector = tower::service_fn(move |_uri| {
        let (config, target) = (config.clone(), target.clone());
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(MANAGER_SERVER_NAME)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let dial = endpoint.connect_with_connector(connector);
    match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), dial).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(DialError::from_transport(addr, &e)),
        Err(_) => Err(DialError::TimedOut { addr: addr.into() }),
    }
}

/// Every message in an error's chain of causes, outermost first.
fn causes(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out
}

/// What to tell the user about a failure whose causes read `all`.
fn hint(all: &str) -> &'static str {
    if all.contains("CertificateRevoked") {
        "; this node's certificate is revoked (it was removed with 'shoal node rm'): leave and join again"
    } else if all.contains("CertificateExpired") {
        "; this node's certificate has expired: leave and join again with a current token"
    } else if all.contains("refused") {
        REFUSED_HINT
    } else if all.contains("alert") {
        "; the manager refused this node's certificate (revoked, or of another cluster)"
    } else if ["broken pipe", "reset by peer", "connection closed"].iter().any(|s| all.contains(s))
    {
        "; the other side closed the connection (stopped or restarted, or it refused this node's \
         certificate)"
    } else {
        ""
    }
}

/// The innermost cause of an error and what to do about it, in one line.
pub fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    let all = causes(e);
    let detail = all.last().cloned().unwrap_or_default();
    format!("{detail}{}", hint(&all.join(" ")))
}

/// A one-line description of a transport error with its causes.
pub fn describe(addr: &str, e: &(dyn std::error::Error + 'static)) -> String {
    format!("could not reach a manager at {addr}: {}", explain(e))
}

/// A one-line description of a gRPC status from a manager.
pub fn status_line(addr: &str, s: &tonic::Status) -> String {
    use tonic::Code::{Cancelled, Unavailable, Unknown};
    if matches!(s.code(), Unavailable | Unknown | Cancelled)
        && std::error::Error::source(s).is_some()
    {
        return format!("the manager at {addr} is unavailable: {}", explain(s));
    }
    s.message().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_config() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Arc::new(config)
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_by_kind_not_by_text() {
        // Bind then drop, so the port is very likely closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = connect(&addr.to_string(), client_config()).await.unwrap_err();
        assert!(e.is_refused(), "{e:?}");
        let text = e.to_string();
        assert!(text.starts_with(&format!("could not reach a manager at {addr}: ")), "{text}");
        assert!(text.ends_with("; check the address and that shoald listens there"), "{text}");
        assert_eq!(text, format!("could not reach a manager at {addr}: {}", e.reason()));
    }

    #[tokio::test]
    async fn a_bad_address_is_not_retried() {
        let e = connect("not an address", client_config()).await.unwrap_err();
        assert!(matches!(e, DialError::BadAddress { .. }), "{e:?}");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
    }
}
