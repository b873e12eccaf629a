//! Owns the CA services: handing out the root bundle, issuing node certificates for join
//! tokens, and renewing them for nodes that prove their identity with their current certificate.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_pki::{JoinToken, PeerIdentity, PkiError, Role, TokenError};
use shoal_proto::ca_server::Ca;
use shoal_proto::node_ca_server::NodeCa;
use shoal_proto::{
    Cluster, GetRootCaCertificateRequest, GetRootCaCertificateResponse,
    IssueNodeCertificateRequest, IssueNodeCertificateResponse, Node, NodeRole,
    ReattestNodeCertificateRequest, RenewNodeCertificateRequest, RenewNodeCertificateResponse,
};
use tonic::{Request, Response, Status};

use crate::authz::caller;
use crate::config::cert_expiry;
use crate::intake;
use crate::manager::{certificate, new_node, now_ms, unix, Manager, Shared};
use crate::store::StoreError;
use crate::tokens::{self, TokenRefused};

/// Attempts at drawing an unused node ID before giving up.
const ID_ATTEMPTS: usize = 3;

/// The CA and NodeCA gRPC services.
#[derive(Debug, Clone)]
pub struct CaApi {
    shared: Arc<Shared>,
}

impl Manager {
    /// The CA / NodeCA services of this manager.
    pub fn ca(&self) -> CaApi {
        CaApi { shared: self.shared.clone() }
    }
}

/// Why a certificate was not issued. Messages never carry a token's secret or a key.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A join without a certificate request.
    #[error("the certificate request (CSR) is empty")]
    EmptyCsr,
    /// The join token cannot be read; the message says what is wrong with it.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The join token is not (or no longer) good for this cluster.
    #[error(transparent)]
    TokenRefused(#[from] TokenRefused),
    /// The certificate request cannot be signed as sent.
    #[error("bad certificate request: {0}")]
    BadCsr(String),
    /// Signing failed on this manager's side.
    #[error("{0}")]
    Signing(PkiError),
    /// The store holds no cluster object (a manager that has not caught up).
    #[error("cluster object missing")]
    NoCluster,
    /// A renewal from a node that was removed.
    #[error("node {0} is not part of this cluster")]
    UnknownNode(String),
    /// A renewal sooner than the pace allows.
    #[error(
        "node {node} renewed its certificate {since:.1?} ago; renew at most once every {interval:?}"
    )]
    TooSoon { node: String, since: Duration, interval: Duration },
    /// Every drawn node ID was taken (practically impossible).
    #[error("could not draw an unused node ID")]
    NoFreeId,
    /// The store could not answer or commit.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Refused by a check shared with other services (request limits, unique hostnames, the
    /// caller's identity, the signer), which answer with their own status.
    #[error("{}", .0.message())]
    Refused(#[from] Status),
}

impl From<PkiError> for CaError {
    fn from(e: PkiError) -> CaError {
        match e {
            PkiError::BadCsr(msg) => CaError::BadCsr(msg),
            other => CaError::Signing(other),
        }
    }
}

impl From<CaError> for Status {
    fn from(e: CaError) -> Status {
        match e {
            CaError::EmptyCsr | CaError::Token(_) | CaError::BadCsr(_) => {
                Status::invalid_argument(e.to_string())
            }
            CaError::TokenRefused(_) => Status::permission_denied(e.to_string()),
            CaError::Signing(_) | CaError::NoCluster | CaError::NoFreeId => {
                Status::internal(e.to_string())
            }
            CaError::UnknownNode(_) => Status::not_found(e.to_string()),
            CaError::TooSoon { .. } => Status::resource_exhausted(e.to_string()),
            CaError::Store(e) => e.into(),
            CaError::Refused(status) => status,
        }
    }
}

#[tonic::async_trait]
impl Ca for CaApi {
    async fn get_root_ca_certificate(
        &self,
        _req: Request<GetRootCaCertificateRequest>,
    ) -> Result<Response<GetRootCaCertificateResponse>, Status> {
        let certificate = self.shared.pinned_root()?.into_bytes();
        Ok(Response::new(GetRootCaCertificateResponse { certificate }))
    }
}

#[tonic::async_trait]
impl NodeCa for CaApi {
    async fn issue_node_certificate(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let peer = intake::peer_ip(&req);
        Ok(Response::new(issue(&self.shared, req.into_inner(), peer).await?))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
        let id = caller(&req).node()?.clone();
        let csr = req.into_inner().csr_der;
        intake::check_csr(&csr)?;
        let chain = renew(&self.shared, &id, &csr).await?;
        Ok(Response::new(RenewNodeCertificateResponse { cert_chain_pem: chain }))
    }

    async fn reattest_node_certificate(
        &self,
        req: Request<ReattestNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let peer = intake::peer_ip(&req);
        let req = req.into_inner();
        intake::check_csr(&req.csr_der)?;
        if req.old_cert_chain_pem.len() > MAX_CHAIN_BYTES || req.proof.len() > 1024 {
            return Err(Status::invalid_argument("the re-attestation request is too large"));
        }
        Ok(Response::new(reattest(&self.shared, req, peer).await?))
    }
}

/// Largest old certificate chain a re-attesting node may send.
const MAX_CHAIN_BYTES: usize = 16 * 1024;

/// How long an operator's approval of a re-attestation holds.
pub const APPROVAL_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// What to do with a re-attestation for `node` presenting its certificate `old_serial` and
/// asking for the key with fingerprint `key`.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Serve,
    /// Wait for an operator; `new_request` when this request is to be recorded (the first, or
    /// one for another key, which an earlier approval does not cover).
    Wait {
        new_request: bool,
    },
    Refuse(String),
}

fn decide(node: &Node, old_serial: &str, key: &str, window: Duration, now_ms: i64) -> Decision {
    let latest = node.certificate.as_ref().map(|c| c.serial_hex.as_str()).unwrap_or_default();
    // The same request again after it was served, its answer lost: the node still reports the
    // old certificate and never used the new one.
    let served = node.reattest_requested_ms == 0 && !node.reattest_key.is_empty();
    let retry = served
        && node.reattest_key == key
        && node.tls_serial == old_serial
        && node.tls_serial != latest;
    if retry {
        return Decision::Serve;
    }
    if latest != old_serial {
        return Decision::Refuse(format!(
            "that certificate is not node {}'s latest; only its latest may re-attest",
            node.id
        ));
    }
    let away = Duration::from_millis(now_ms.saturating_sub(node.last_heartbeat_ms) as u64);
    if !window.is_zero() && away < window {
        return Decision::Serve;
    }
    let pending_for_key = node.reattest_requested_ms != 0 && node.reattest_key == key;
    let approved_at = node.reattest_approved_ms;
    let age = Duration::from_millis(now_ms.saturating_sub(approved_at) as u64);
    if pending_for_key && approved_at != 0 && age < APPROVAL_LIFETIME {
        return Decision::Serve;
    }
    Decision::Wait {
        new_request: !pending_for_key || (approved_at != 0 && age >= APPROVAL_LIFETIME),
    }
}

/// What a re-attestation decided inside its transaction.
enum Reattested {
    Issued(Node, String),
    /// Waiting for `shoal node approve`.
    Pending(Node),
}

/// Serves a node that came back with an expired certificate: it must prove it holds that
/// certificate's key, the certificate must be this cluster's (from a root trusted now), its
/// node's latest and not revoked, and the node still listed. Then an operator's approval, or
/// the cluster's window for nodes heard from recently, lets it have a new one for its role.
async fn reattest(
    shared: &Shared,
    req: ReattestNodeCertificateRequest,
    peer: Option<IpAddr>,
) -> Result<IssueNodeCertificateResponse, Status> {
    let denied = |why: String| Status::permission_denied(why);
    let old = PeerIdentity::from_pem(&req.old_cert_chain_pem)
        .map_err(|e| Status::invalid_argument(format!("the old certificate: {e}")))?;
    if old.cluster_id != shared.cluster_id {
        return Err(denied("the old certificate belongs to another cluster".into()));
    }
    let cluster = shared.cluster()?;
    shoal_pki::tls::verify_chain_ignoring_expiry(
        &req.old_cert_chain_pem,
        &crate::ca_rotation::trusted_bundle(&cluster),
    )
    .map_err(|e| {
        denied(format!(
            "the old certificate was not issued by a root this cluster trusts ({e}); if the \
             root was rotated while the node was away, it must join again"
        ))
    })?;
    if old.not_after > SystemTime::now() {
        return Err(Status::failed_precondition(format!(
            "node {}'s certificate is valid until {}; it renews with it and needs no \
             re-attestation",
            old.node_id,
            humantime::format_rfc3339_seconds(old.not_after)
        )));
    }
    shoal_pki::reattest::verify_proof(
        &req.old_cert_chain_pem,
        &shared.cluster_id,
        &req.csr_der,
        &req.proof,
    )
    .map_err(|e| denied(e.to_string()))?;
    if shared.revocations.is_revoked(&old) {
        return Err(denied(format!("node {}'s certificates are revoked", old.node_id)));
    }
    let window = Duration::from_secs(cluster.spec.as_ref().map_or(0, |s| s.reattest_window_secs));
    let key = shoal_pki::reattest::request_key_fingerprint(&req.csr_der)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let from = peer.map(|ip| ip.to_string()).unwrap_or_default();
    let outcome = shared
        .store
        .update(|tx| {
            let cluster = tx.get::<Cluster>(&shared.cluster_id)?.ok_or(CaError::NoCluster)?;
            let mut node = tx.get::<Node>(&old.node_id)?.ok_or_else(|| {
                CaError::Refused(Status::not_found(format!(
                    "node {} was removed from the cluster; join it again with a token",
                    old.node_id
                )))
            })?;
            match decide(&node, &old.serial_hex, &key, window, now_ms()) {
                Decision::Refuse(why) => Err(CaError::Refused(denied(why))),
                Decision::Wait { new_request } => {
                    if new_request {
                        node.reattest_requested_ms = now_ms();
                        node.reattest_approved_ms = 0;
                        node.reattest_key = key.clone();
                        node.reattest_from = from.clone();
                        tx.update(node.clone())?;
                    }
                    Ok(Reattested::Pending(node))
                }
                Decision::Serve => {
                    let issued = shared.signer(&cluster)?.sign_node_csr(
                        &req.csr_der,
                        &node.id,
                        Role::from(node.role()),
                        &shared.cluster_id,
                        cert_expiry(&cluster),
                        SystemTime::now(),
                    )?;
                    record_issued(&mut node, &issued, SystemTime::now());
                    node.reattest_requested_ms = 0;
                    node.reattest_approved_ms = 0;
                    node.reattest_key = key.clone();
                    node.reattest_from = from.clone();
                    tx.update(node.clone())?;
                    Ok::<_, CaError>(Reattested::Issued(node, issued.cert_pem))
                }
            }
        })
        .await?;
    let (node, chain) = match outcome {
        Reattested::Issued(node, chain) => (node, chain),
        Reattested::Pending(node) => {
            tracing::info!(node = %node.id, hostname = %node.hostname, "a node with an expired certificate waits for approval");
            return Err(Status::failed_precondition(format!(
                "node {} ({}) came back with an expired certificate and waits for an operator: \
                 run 'shoal node approve {}' on a manager (the request is for key {}, from {})",
                node.id,
                node.hostname,
                node.id,
                shoal_pki::reattest::short_fingerprint(&node.reattest_key),
                if node.reattest_from.is_empty() {
                    "an unknown address"
                } else {
                    &node.reattest_from
                }
            )));
        }
    };
    tracing::info!(node = %node.id, role = node.role().word(), "node re-attested with its old key");
    Ok(welcome(shared, node, chain)?)
}

/// What a node let in (joined or re-attested) is told: who it is, its certificate, the
/// managers and the content-trust pins.
fn welcome(
    shared: &Shared,
    node: Node,
    chain: String,
) -> Result<IssueNodeCertificateResponse, StoreError> {
    Ok(IssueNodeCertificateResponse {
        node_id: node.id,
        role: node.role,
        cluster_id: shared.cluster_id.clone(),
        cert_chain_pem: chain,
        manager_addrs: shared.manager_addrs()?,
        managers: Some(shared.manager_set()),
        trust_pins: crate::trust::join_pins(shared),
    })
}

/// Records a certificate just issued to `node` (expired serials dropped, the new one kept
/// for revocation).
fn record_issued(node: &mut Node, issued: &shoal_pki::IssuedCert, now: SystemTime) {
    prune_serials(node, now);
    node.certificate = Some(certificate(issued));
    node.serials.push(issued.serial_hex.clone());
    node.serial_not_after_unix.push(unix(issued.not_after));
    node.rotate_certificate = false;
}

/// Lets a node in: redeems its token, records it and signs its first certificate.
async fn issue(
    shared: &Shared,
    req: IssueNodeCertificateRequest,
    peer: Option<IpAddr>,
) -> Result<IssueNodeCertificateResponse, CaError> {
    intake::check_join(&req)?;
    if req.csr_der.is_empty() {
        return Err(CaError::EmptyCsr);
    }
    let token = JoinToken::parse(&req.token)?;
    let (node, chain) = shared
        .store
        .update(|tx| {
            let mut cluster = tx.get::<Cluster>(&shared.cluster_id)?.ok_or(CaError::NoCluster)?;
            let role = tokens::redeem(&mut cluster, &token, now_ms())?;
            intake::check_unique_hostname(tx.list::<Node>()?, &req.hostname, None)?;
            let node_id = fresh_node_id(|id| Ok(tx.get::<Node>(id)?.is_none()))?;
            let issued = shared.signer(&cluster)?.sign_node_csr(
                &req.csr_der,
                &node_id,
                role,
                &shared.cluster_id,
                cert_expiry(&cluster),
                SystemTime::now(),
            )?;
            let addr = joined_addr(&req.advertise_addr, peer);
            let mut node =
                new_node(node_id, NodeRole::from(role), req.hostname.clone(), addr, &issued);
            node.addr_pinned = !req.advertise_addr.is_empty();
            if tokens::counts_uses(&cluster, role) {
                tx.update(cluster)?;
            }
            tx.create(node.clone())?;
            Ok::<_, CaError>((node, issued.cert_pem))
        })
        .await?;
    tracing::info!(node = %node.id, role = node.role().word(), hostname = %node.hostname, "node joined");
    Ok(welcome(shared, node, chain)?)
}

/// The address recorded for a joining node: the operator's `--advertise-addr` when given, else
/// the IP its connection comes from.
fn joined_addr(advertised: &str, peer: Option<IpAddr>) -> String {
    if !advertised.is_empty() {
        return advertised.to_string();
    }
    peer.map(|ip| ip.to_string()).unwrap_or_default()
}

/// When the node's current certificate was issued (its not-before is backdated).
fn issued_at(node: &Node) -> Option<SystemTime> {
    let c = node.certificate.as_ref()?;
    let not_before = UNIX_EPOCH + Duration::from_secs(u64::try_from(c.not_before_unix).ok()?);
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(c.not_after_unix).ok()?);
    Some(shoal_pki::ca::issued_at(not_before, not_after))
}

/// Refuses a renewal that comes sooner than `interval` after the last one, unless the node's
/// role changed (it needs a certificate for its new role now): the caller's certificate is of
/// another role, or was superseded by the change (a demoted manager's is served as a worker's).
fn check_pace(
    node: &Node,
    caller: &PeerIdentity,
    superseded: bool,
    interval: Duration,
    now: SystemTime,
) -> Result<(), CaError> {
    if superseded || node.rotate_certificate || Role::from(node.role()) != caller.role {
        return Ok(());
    }
    let Some(last) = issued_at(node) else { return Ok(()) };
    match now.duration_since(last) {
        Ok(since) if since >= interval => Ok(()),
        Err(_) => Ok(()),
        Ok(since) => Err(CaError::TooSoon { node: node.id.clone(), since, interval }),
    }
}

/// Keeps the serials of certificates that have not expired yet (an expired certificate is
/// refused by every TLS check, so it needs no revocation entry). Entries from before expiries
/// were recorded are given the expiry of the newest earlier certificate.
fn prune_serials(node: &mut Node, now: SystemTime) {
    let now = unix(now);
    let known = node.serial_not_after_unix.len().min(node.serials.len());
    let legacy = node.serials.len() - known;
    let fallback = node.certificate.as_ref().map(|c| c.not_after_unix).unwrap_or(i64::MAX);
    let expiries = std::iter::repeat_n(fallback, legacy)
        .chain(node.serial_not_after_unix.iter().copied().take(known));
    let kept: Vec<(String, i64)> =
        node.serials.drain(..).zip(expiries).filter(|(_, not_after)| *not_after > now).collect();
    (node.serials, node.serial_not_after_unix) = kept.into_iter().unzip();
}

/// Signs a new certificate for the calling node, at most once per [`Shared::renew_pace`]
/// (checked inside the transaction, so a burst of concurrent renewals yields one); subject
/// fields come from the store only, and serials of expired certificates are dropped.
async fn renew(shared: &Shared, caller: &PeerIdentity, csr: &[u8]) -> Result<String, CaError> {
    let node_id = caller.node_id.as_str();
    let interval = shared.renew_pace.interval();
    let chain = shared
        .store
        .update(|tx| {
            let cluster = tx.get::<Cluster>(&shared.cluster_id)?.ok_or(CaError::NoCluster)?;
            let mut node =
                tx.get::<Node>(node_id)?.ok_or_else(|| CaError::UnknownNode(node_id.into()))?;
            let now = SystemTime::now();
            let superseded = shared.revocations.is_superseded(caller);
            check_pace(&node, caller, superseded, interval, now)?;
            let issued = shared.signer(&cluster)?.sign_node_csr(
                csr,
                node_id,
                Role::from(node.role()),
                &shared.cluster_id,
                cert_expiry(&cluster),
                now,
            )?;
            record_issued(&mut node, &issued, now);
            tx.update(node)?;
            Ok::<_, CaError>(issued.cert_pem)
        })
        .await?;
    tracing::info!(node = %node_id, "certificate renewed");
    Ok(chain)
}

fn fresh_node_id(mut unused: impl FnMut(&str) -> Result<bool, CaError>) -> Result<String, CaError> {
    for _ in 0..ID_ATTEMPTS {
        let id = shoal_pki::id::new_id();
        if unused(&id)? {
            return Ok(id);
        }
    }
    Err(CaError::NoFreeId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with(serials: &[&str], not_after: &[i64], current_not_after: i64) -> Node {
        Node {
            serials: serials.iter().map(|s| s.to_string()).collect(),
            serial_not_after_unix: not_after.to_vec(),
            certificate: Some(shoal_proto::NodeCertificate {
                not_after_unix: current_not_after,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn expired_serials_are_dropped_and_live_ones_kept() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut node = node_with(&["a", "b", "c"], &[900, 1_000, 1_100], 1_100);
        prune_serials(&mut node, now);
        assert_eq!(node.serials, ["c"]);
        assert_eq!(node.serial_not_after_unix, [1_100]);
    }

    #[test]
    fn serials_recorded_before_expiries_take_the_current_certificates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut live = node_with(&["old1", "old2", "new"], &[1_200], 1_200);
        prune_serials(&mut live, now);
        assert_eq!(live.serials, ["old1", "old2", "new"]);
        assert_eq!(live.serial_not_after_unix, [1_200, 1_200, 1_200]);
        let mut expired = node_with(&["old1", "old2"], &[], 999);
        prune_serials(&mut expired, now);
        assert!(expired.serials.is_empty() && expired.serial_not_after_unix.is_empty());
    }

    #[test]
    fn a_reattestation_is_served_once_approved_for_its_key_or_recent_enough() {
        let hour = Duration::from_secs(3600);
        let now: i64 = 100 * 24 * 3600 * 1000;
        let mut node = Node {
            id: "n1".into(),
            certificate: Some(shoal_proto::NodeCertificate {
                serial_hex: "0a".into(),
                ..Default::default()
            }),
            tls_serial: "0a".into(),
            last_heartbeat_ms: now - 48 * 3600 * 1000,
            ..Default::default()
        };
        assert_eq!(
            decide(&node, "09", "k1", Duration::ZERO, now),
            Decision::Refuse(
                "that certificate is not node n1's latest; only its latest may re-attest".into()
            )
        );
        assert_eq!(
            decide(&node, "0a", "k1", Duration::ZERO, now),
            Decision::Wait { new_request: true }
        );
        // Off for two days: a 3-day window serves it, a 1-day one does not.
        assert_eq!(decide(&node, "0a", "k1", 72 * hour, now), Decision::Serve);
        assert_eq!(decide(&node, "0a", "k1", 24 * hour, now), Decision::Wait { new_request: true });
        node.reattest_requested_ms = now;
        node.reattest_key = "k1".into();
        assert_eq!(
            decide(&node, "0a", "k1", Duration::ZERO, now),
            Decision::Wait { new_request: false }
        );
        node.reattest_approved_ms = now;
        assert_eq!(decide(&node, "0a", "k1", Duration::ZERO, now + 1000), Decision::Serve);
        // The approval covers that key only, and for a day.
        assert_eq!(
            decide(&node, "0a", "k2", Duration::ZERO, now),
            Decision::Wait { new_request: true }
        );
        let late = now + APPROVAL_LIFETIME.as_millis() as i64;
        assert_eq!(
            decide(&node, "0a", "k1", Duration::ZERO, late),
            Decision::Wait { new_request: true }
        );
        // Served: the certificate 0b was issued for k1 but the node never said it uses it. The
        // same request again is served again; another key is not.
        node.certificate.as_mut().unwrap().serial_hex = "0b".into();
        node.reattest_requested_ms = 0;
        node.reattest_approved_ms = 0;
        assert_eq!(decide(&node, "0a", "k1", Duration::ZERO, now), Decision::Serve);
        assert!(matches!(decide(&node, "0a", "k2", Duration::ZERO, now), Decision::Refuse(_)));
        // Once the node uses 0b, its old certificate is done for.
        node.tls_serial = "0b".into();
        assert!(matches!(decide(&node, "0a", "k1", Duration::ZERO, now), Decision::Refuse(_)));
    }

    #[test]
    fn a_renewal_comes_at_most_once_per_interval_unless_the_role_changed() {
        let key = shoal_pki::NodeKey::generate().unwrap();
        let ca = shoal_pki::RootCa::generate().unwrap();
        let now = SystemTime::now();
        let issued = ca
            .sign_node_csr(
                &key.csr_der().unwrap(),
                "n1",
                shoal_pki::Role::Worker,
                "c1",
                Duration::from_secs(3_600),
                now,
            )
            .unwrap();
        let caller = PeerIdentity::from_pem(&issued.cert_pem).unwrap();
        let mut node =
            Node { id: "n1".into(), certificate: Some(certificate(&issued)), ..Default::default() };
        let minute = Duration::from_secs(60);
        let soon = now + Duration::from_secs(5);
        let e = Status::from(check_pace(&node, &caller, false, minute, soon).unwrap_err());
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("renew at most once every 60s"), "{e}");
        assert!(check_pace(&node, &caller, false, minute, now + Duration::from_secs(61)).is_ok());
        assert!(check_pace(&node, &caller, true, minute, soon).is_ok(), "superseded by a change");
        node.set_role(shoal_proto::NodeRole::Manager);
        assert!(check_pace(&node, &caller, false, minute, soon).is_ok());
    }
}
