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

/// Opens a gRPC channel to a manager at `addr` (host:port), verifying it with `config`.
pub async fn connect(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{addr} is not a valid address: {e}"))?
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
        Ok(Err(e)) => Err(describe(addr, &e)),
        Err(_) => Err(format!(
            "could not reach a manager at {addr}: timed out after {}s; check the address and that the port is open",
            CONNECT_TIMEOUT.as_secs()
        )),
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
        "; check the address and that shoald listens there"
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
