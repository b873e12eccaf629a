//! Owns how the CLI reaches a daemon: the local unix socket (the operator is root), or a
//! manager's cluster port over mTLS with a client certificate of the cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use shoal_pki::{certificate_chain_pem, NodeKey, ReloadableCert, UserIdentity};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Default local socket, like Docker's.
pub const DEFAULT_SOCKET: &str = "/var/run/shoal.sock";

/// Where a daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Unix(PathBuf),
    Tcp(String),
}

/// Parses `unix:///path.sock` or `tcp://host:port`.
pub fn parse_host(s: &str) -> Result<Host> {
    if let Some(path) = s.strip_prefix("unix://") {
        if !path.starts_with('/') {
            bail!("invalid host {s:?}: a unix socket path must be absolute, like unix:///var/run/shoal.sock");
        }
        return Ok(Host::Unix(PathBuf::from(path)));
    }
    if let Some(addr) = s.strip_prefix("tcp://") {
        if addr.is_empty() {
            bail!("invalid host {s:?}: give an address, like tcp://10.0.0.1:4242");
        }
        return Ok(Host::Tcp(addr.to_string()));
    }
    bail!("invalid host {s:?}: use unix:///PATH.sock or tcp://HOST:PORT")
}

/// Client certificate files for `tcp://` hosts.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Connects to the daemon or manager at `host`.
pub async fn connect(host: &Host, tls: &TlsFiles) -> Result<Channel> {
    match host {
        Host::Unix(path) => connect_unix(path).await,
        Host::Tcp(addr) => {
            let config = client_tls(tls)?;
            shoal_proto::dial::connect(addr, Arc::new(config)).await.map_err(anyhow::Error::msg)
        }
    }
}

async fn connect_unix(path: &Path) -> Result<Channel> {
    let target = path.to_path_buf();
    let connector = tower::service_fn(move |_| {
        let target = target.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(target).await?)) }
    });
    Endpoint::from_static("http://localhost").connect_with_connector(connector).await.with_context(
        || {
            format!(
                "cannot connect to the Shoal daemon at unix://{}; is shoald running?",
                path.display()
            )
        },
    )
}

fn read(path: &Option<PathBuf>, flag: &str) -> Result<String> {
    let Some(path) = path else {
        bail!("tcp:// hosts need {flag} (and --tlscacert, --tlscert, --tlskey)")
    };
    std::fs::read_to_string(path).with_context(|| format!("reading {flag} {}", path.display()))
}

fn client_tls(files: &TlsFiles) -> Result<rustls::ClientConfig> {
    let ca = read(&files.ca, "--tlscacert")?;
    let chain = certificate_chain_pem(&read(&files.cert, "--tlscert")?).context("--tlscert")?;
    let key = NodeKey::from_pem(&read(&files.key, "--tlskey")?).context("--tlskey")?;
    if UserIdentity::from_pem(&chain).is_ok() {
        return shoal_pki::tls::user_client_config(&ca, &chain, &key).context("--tlscert/--tlskey");
    }
    let cert = ReloadableCert::new(&chain, &key).context("--tlscert/--tlskey")?;
    Ok(shoal_pki::tls::client_config(&ca, Some(cert))?)
}

/// Turns a gRPC error into the one line the user sees.
pub fn status(e: tonic::Status) -> anyhow::Error {
    match e.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            if std::error::Error::source(&e).is_some() =>
        {
            anyhow::anyhow!("the daemon is unavailable: {}", shoal_proto::dial::explain(&e))
        }
        _ => anyhow::anyhow!("{}", e.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_like_docker() {
        assert_eq!(parse_host("unix:///run/x.sock").unwrap(), Host::Unix("/run/x.sock".into()));
        assert_eq!(parse_host("tcp://10.0.0.1:4242").unwrap(), Host::Tcp("10.0.0.1:4242".into()));
        for bad in ["unix://rel.sock", "tcp://", "http://x", ""] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
    }
}
