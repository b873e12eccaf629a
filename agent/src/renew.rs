//! Owns certificate renewal: at a random point between 50% and 80% of the certificate's life,
//! trade a fresh key's CSR for a new certificate using the current one (no token), save it
//! atomically and swap it into every TLS config that uses it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_pki::{NodeKey, PeerIdentity, ReloadableCert};
use shoal_proto::node_ca_client::NodeCaClient;
use shoal_proto::RenewNodeCertificateRequest;
use tokio::sync::watch;

use crate::connect::{connect, status_line, DialError};
use crate::files::{FilesError, NodeFiles};
use crate::AgentStatus;

const RETRY_STEP: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// Retries never come faster than this, whatever the time scale.
const MIN_RETRY: Duration = Duration::from_millis(500);

/// Why one renewal failed (the loop retries).
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The session has not told this node of any manager yet.
    #[error("no manager known")]
    NoManager,
    /// The manager could not be dialed.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The manager refused the renewal; `line` says why.
    #[error("{line}")]
    Refused { line: String },
    /// The new key or the certificate the manager sent could not be used.
    #[error(transparent)]
    Pki(#[from] shoal_pki::PkiError),
    /// The manager sent a certificate for another node or cluster.
    #[error("the renewed certificate is for node {0}, not this one")]
    OtherNode(String),
    /// The new identity could not be saved.
    #[error(transparent)]
    Files(#[from] FilesError),
}

/// What the renewal loop needs.
#[derive(Clone, Debug)]
pub struct RenewConfig {
    pub files: NodeFiles,
    /// The roots the node trusts now (saved beside a renewed certificate).
    pub roots: Arc<shoal_pki::TrustRoots>,
    /// Divides every wait, so tests can watch a 1 h certificate renew in seconds.
    pub time_scale: f64,
    /// Cuts the wait short (a role change needs a new certificate now).
    pub now: std::sync::Arc<tokio::sync::Notify>,
    /// Told after each renewal (the session reports the new certificate at once).
    pub renewed: std::sync::Arc<tokio::sync::Notify>,
}

/// How long to wait before renewing `id`'s certificate, scaled.
pub fn next_delay(id: &PeerIdentity, time_scale: f64) -> Duration {
    let delay = shoal_pki::renew::renewal_delay(
        id.not_before,
        id.not_after,
        SystemTime::now(),
        &mut rand::thread_rng(),
    );
    delay.div_f64(time_scale.max(1.0))
}

/// Renews forever.
pub async fn run(
    cfg: RenewConfig,
    cert: Arc<ReloadableCert>,
    tls: Arc<rustls::ClientConfig>,
    status: watch::Sender<AgentStatus>,
) {
    let mut failures = 0u32;
    loop {
        let wait = if failures == 0 {
            next_delay(&cert.identity(), cfg.time_scale)
        } else {
            let scaled = (RETRY_STEP * failures).min(RETRY_MAX).div_f64(cfg.time_scale.max(1.0));
            scaled.max(MIN_RETRY)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cfg.now.notified() => {}
        }
        match renew_once(&cfg, &cert, tls.clone(), &status).await {
            Ok(serial) => {
                failures = 0;
                tracing::info!(%serial, "node certificate renewed");
                status.send_modify(|s| s.renewals += 1);
                cfg.renewed.notify_one();
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "certificate renewal failed; will retry");
            }
        }
    }
}

async fn renew_once(
    cfg: &RenewConfig,
    cert: &ReloadableCert,
    tls: Arc<rustls::ClientConfig>,
    status: &watch::Sender<AgentStatus>,
) -> Result<String, RenewError> {
    let managers = status.borrow().manager_addrs.clone();
    let addr = managers.first().ok_or(RenewError::NoManager)?;
    let key = NodeKey::generate()?;
    let csr_der = key.csr_der()?;
    let channel = connect(addr, tls).await?;
    let chain = NodeCaClient::new(channel)
        .renew_node_certificate(RenewNodeCertificateRequest { csr_der })
        .await
        .map_err(|s| RenewError::Refused { line: status_line(addr, &s) })?
        .into_inner()
        .cert_chain_pem;
    let new_id = PeerIdentity::from_pem(&chain)?;
    let old_id = cert.identity();
    if new_id.node_id != old_id.node_id || new_id.cluster_id != old_id.cluster_id {
        return Err(RenewError::OtherNode(new_id.node_id));
    }
    cfg.files.save_identity(&key, &chain, &cfg.roots.pem())?;
    cert.replace(&chain, &key)?;
    Ok(new_id.serial_hex)
}
