//! Owns the agent's dispatcher session: open it on a manager with this node's description,
//! heartbeat at the period the manager asks for, run the worker's streams on it (assignments,
//! task states, log subscriptions), and reconnect with jittered backoff when it breaks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use shoal_pki::{ManagerTrust, ReloadableCert, TrustRoots};
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::{HeartbeatRequest, SessionMessage, SessionRequest};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::connect::{connect, status_line, DialError};
use crate::worker::link::{self, Link};
use crate::worker::Worker;
use crate::AgentStatus;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// Why a dispatcher session ended; each message is one line for `shoal info`.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The manager could not be dialed.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// A call on the session failed; the message is the manager's, or the transport's cause.
    #[error("{}", status_line(.manager, .status))]
    Call { manager: String, status: tonic::Status },
    /// The manager ended one of the session's streams; `what` names it.
    #[error("the manager closed the {what}")]
    Closed { what: &'static str },
    /// The manager was demoted or removed while the session was open.
    #[error("the manager at {0} is no longer a manager")]
    NoLongerManager(String),
    /// This node's certificate ran out; managers refuse it and it cannot renew.
    #[error(
        "this node's certificate expired at {}; it cannot renew it: restart shoald to ask the \
         managers for a new one with this node's identity (an operator approves it with 'shoal \
         node approve'), or run 'shoal swarm leave --force' and join again with a current token",
        humantime::format_rfc3339_seconds(*.0)
    )]
    Expired(SystemTime),
}

impl SessionError {
    /// A failed call to the manager at `manager`.
    pub fn call(manager: &str, status: tonic::Status) -> SessionError {
        SessionError::Call { manager: manager.to_string(), status }
    }
}

/// What the session loop needs.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    pub advertise_addr: String,
    /// Runs the tasks the session's assignments carry.
    pub worker: Worker,
    /// Which servers are taken for managers; updated from the session's messages.
    pub trust: Arc<ManagerTrust>,
    /// The roots this node trusts; replaced when the managers send others (a root rotation)
    /// that this node's own certificate verifies against.
    pub roots: Arc<TrustRoots>,
    /// Where the trusted roots are saved.
    pub files: crate::files::NodeFiles,
    /// Renews the certificate now (a root rotation asks for it).
    pub renew_now: Arc<tokio::sync::Notify>,
    /// Heartbeats now (after a renewal: a root rotation waits to hear of it).
    pub beat_now: Arc<tokio::sync::Notify>,
}

/// Runs sessions forever, publishing the agent's view in `status`.
pub async fn run(
    cfg: SessionConfig,
    cert: Arc<ReloadableCert>,
    tls: Arc<rustls::ClientConfig>,
    status: watch::Sender<AgentStatus>,
) {
    let mut backoff = BACKOFF_START;
    let mut turn = 0usize;
    loop {
        let managers = status.borrow().manager_addrs.clone();
        let Some(addr) = managers.get(turn % managers.len().max(1)).cloned() else {
            tokio::time::sleep(BACKOFF_MAX).await;
            continue;
        };
        turn += 1;
        let result = match expired(&cert) {
            Some(e) => Err(e),
            None => session(&cfg, &addr, &cert, tls.clone(), &status).await,
        };
        let error = match result {
            Ok(()) => {
                backoff = BACKOFF_START;
                "session ended".to_string()
            }
            Err(e) => e.to_string(),
        };
        tracing::debug!(manager = %addr, %error, "session lost");
        status.send_modify(|s| {
            s.connected = false;
            s.error = Some(error);
        });
        let wait = rand::thread_rng().gen_range(Duration::ZERO..=backoff);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A clear error if this node's certificate has expired (managers would refuse it).
fn expired(cert: &ReloadableCert) -> Option<SessionError> {
    let not_after = cert.identity().not_after;
    (not_after <= SystemTime::now()).then_some(SessionError::Expired(not_after))
}

/// Takes in the manager set a session message carries: from now on only those nodes are
/// accepted as managers when this node connects.
fn take_manager_set(
    cfg: &SessionConfig,
    msg: &SessionMessage,
    status: &watch::Sender<AgentStatus>,
) {
    let Some(set) = &msg.managers else { return };
    crate::connect::apply_manager_set(&cfg.trust, set);
    status.send_modify(|s| s.manager_ids = cfg.trust.managers());
}

/// Takes in what a session message says about certificates: the roots to trust (only those
/// this node's certificate verifies against: a node left behind by a forced rotation keeps
/// the roots it has, and says why) and whether to renew now for a root rotation.
fn take_certificate_news(cfg: &SessionConfig, msg: &SessionMessage, cert: &ReloadableCert) {
    if msg.node.as_ref().is_some_and(|n| n.rotate_certificate) {
        cfg.renew_now.notify_one();
    }
    let bundle = &msg.root_ca_pem;
    if bundle.is_empty() || *bundle == cfg.roots.pem() {
        return;
    }
    let chain = cert.chain_pem();
    if let Err(e) = shoal_pki::tls::verify_chain(&chain, bundle, SystemTime::now()) {
        tracing::warn!(error = %e, "the managers' roots do not cover this node's certificate; keeping the old ones");
        return;
    }
    match cfg.roots.replace(bundle) {
        Ok(_) => {
            if let Err(e) = cfg.files.save_root_ca(bundle) {
                tracing::warn!(error = %e, "could not save the new roots");
            }
            tracing::info!("trusting the roots the managers sent");
        }
        Err(e) => tracing::warn!(error = %e, "the managers sent an unusable root bundle"),
    }
}

/// Whether the manager at `addr` was one of the managers' addresses and `update` drops it
/// (it was demoted or removed): the session then ends, and the next one goes to a current
/// manager, checked against the new set.
fn left_the_managers(addr: &str, known: &[String], update: &SessionMessage) -> bool {
    let addr = addr.to_string();
    known.contains(&addr)
        && !update.manager_addrs.is_empty()
        && !update.manager_addrs.contains(&addr)
}

/// One session; returns when it breaks.
async fn session(
    cfg: &SessionConfig,
    addr: &str,
    cert: &ReloadableCert,
    tls: Arc<rustls::ClientConfig>,
    status: &watch::Sender<AgentStatus>,
) -> Result<(), SessionError> {
    let channel: Channel = connect(addr, tls).await?;
    let mut client = DispatcherClient::new(channel);
    let request = SessionRequest {
        hostname: cfg.hostname.clone(),
        advertise_addr: cfg.advertise_addr.clone(),
        description: Some(cfg.worker.executor().describe()),
        tunnel_keys: cfg.worker.executor().tunnel_keys(),
        cert_serial: cert.identity().serial_hex,
    };
    let line = |s: tonic::Status| SessionError::call(addr, s);
    let mut stream = client.session(request).await.map_err(line)?.into_inner();
    let first =
        stream.message().await.map_err(line)?.ok_or(SessionError::Closed { what: "session" })?;
    let session_id = first.session_id.clone();
    let mut period = Duration::from_millis(first.heartbeat_period_ms.max(50));
    if let Some(node) = &first.node {
        cfg.worker.executor().node_known(node);
    }
    // Learnt from the first heartbeat's answer; checked before each beat, so a new key goes
    // to the managers with the beat that follows its making.
    let mut key_rotation = None;
    status.send_modify(|s| {
        s.connected = true;
        s.error = None;
        s.manager = Some(addr.to_string());
        if !first.manager_addrs.is_empty() {
            s.manager_addrs = first.manager_addrs.clone();
        }
        s.role = first.node.as_ref().map(|n| n.role().into());
    });
    take_manager_set(cfg, &first, status);
    take_certificate_news(cfg, &first, cert);
    tracing::info!(manager = %addr, "session established");
    let link =
        Link { client: client.clone(), session_id: session_id.clone(), manager: addr.into() };
    let work = link::serve(&cfg.worker, link);
    tokio::pin!(work);
    // A fixed deadline, not a fresh sleep per turn: updates pushed on the stream must not
    // postpone the heartbeat.
    let mut next_beat = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = cfg.beat_now.notified() => next_beat = tokio::time::Instant::now(),
            _ = tokio::time::sleep_until(next_beat) => {
                let exec = cfg.worker.executor();
                if let Some(every) = key_rotation {
                    exec.rotate_tunnel_key(every);
                }
                let beat = HeartbeatRequest {
                    session_id: session_id.clone(),
                    tunnel_keys: exec.tunnel_keys(),
                    cert_serial: cert.identity().serial_hex,
                };
                let resp = client.heartbeat(beat).await.map_err(line)?.into_inner();
                period = Duration::from_millis(resp.period_ms.max(50));
                if resp.network_key_rotation_secs > 0 {
                    key_rotation = Some(Duration::from_secs(resp.network_key_rotation_secs));
                }
                next_beat = tokio::time::Instant::now() + period;
            }
            msg = stream.message() => match msg.map_err(line)? {
                Some(update) => {
                    take_manager_set(cfg, &update, status);
                    take_certificate_news(cfg, &update, cert);
                    if let Some(node) = &update.node {
                        cfg.worker.executor().node_known(node);
                    }
                    if left_the_managers(addr, &status.borrow().manager_addrs, &update) {
                        return Err(SessionError::NoLongerManager(addr.to_string()));
                    }
                    status.send_modify(|s| {
                        if !update.manager_addrs.is_empty() {
                            s.manager_addrs = update.manager_addrs;
                        }
                        if let Some(node) = &update.node {
                            s.role = Some(node.role().into());
                        }
                    })
                }
                None => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_pki::{NodeKey, Role, RootCa};

    fn cert_issued_at(now: SystemTime) -> Arc<ReloadableCert> {
        let ca = RootCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let expiry = shoal_pki::MIN_CERT_EXPIRY;
        let issued = ca
            .sign_node_csr(
                &key.csr_der().unwrap(),
                "node-1",
                Role::Worker,
                "cluster-1",
                expiry,
                now,
            )
            .unwrap();
        ReloadableCert::new(&issued.cert_pem, &key).unwrap()
    }

    #[test]
    fn an_expired_certificate_is_reported_with_what_to_do() {
        let day_ago = SystemTime::now() - Duration::from_secs(24 * 3600);
        let message = expired(&cert_issued_at(day_ago)).expect("expired").to_string();
        assert!(message.contains("expired at"), "{message}");
        assert!(message.contains("shoal swarm leave --force"), "{message}");
        assert!(expired(&cert_issued_at(SystemTime::now())).is_none());
    }
}
