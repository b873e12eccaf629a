//! Owns joining a cluster: pin the root CA by the token's digest, then trade a CSR and the token
//! for a node certificate. Nothing is written to disk here; the caller saves the result.

use std::sync::Arc;
use std::time::Duration;

use shoal_pki::{JoinToken, NodeKey, PeerIdentity, Role, TokenError};
use shoal_proto::ca_client::CaClient;
use shoal_proto::node_ca_client::NodeCaClient;
use shoal_proto::{GetRootCaCertificateRequest, IssueNodeCertificateRequest};

use crate::connect::{connect, status_line, DialError};

/// Attempts at reaching the manager before giving up (it may still be starting).
const ATTEMPTS: u32 = 3;

/// Why a join failed; each message is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The manager could not be dialed.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The manager was dialed but did not answer the request for its CA.
    #[error("{0}")]
    Unreachable(String),
    #[error(
        "refusing to join: the CA of the manager at {addr} does not match the join token's digest \
         (wrong address, a token of another cluster, or someone in between); check both"
    )]
    CaMismatch { addr: String },
    #[error("the manager at {addr} refused to join this node: {reason}")]
    Refused { addr: String, reason: String },
    #[error("the manager at {addr} sent an unusable certificate: {reason}")]
    BadCertificate { addr: String, reason: String },
    #[error(transparent)]
    Pki(#[from] shoal_pki::PkiError),
    /// A re-attestation waits for an operator's approval; the message says how to give it.
    #[error("{0}")]
    AwaitingApproval(String),
}

/// What a join asks for.
#[derive(Clone, Debug)]
pub struct JoinParams {
    pub token: String,
    pub remote_addr: String,
    pub hostname: String,
    pub advertise_addr: String,
}

/// A node's new identity.
#[derive(Debug)]
pub struct Joined {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    pub root_ca_pem: String,
    pub cert_chain_pem: String,
    pub key: NodeKey,
    pub manager_addrs: Vec<String>,
    /// Node IDs of the managers, as the manager that let this node in said.
    pub manager_ids: Vec<String>,
    /// The content-trust pins the cluster gave at join (JSON), if it has any.
    pub trust_pins: Vec<u8>,
}

/// Joins the cluster of the manager at `params.remote_addr`.
pub async fn join(params: &JoinParams) -> Result<Joined, JoinError> {
    let token = JoinToken::parse(&params.token)?;
    let addr = params.remote_addr.as_str();
    let root_ca_pem = fetch_pinned_root(addr, &token).await?;
    let key = NodeKey::generate()?;
    let config = Arc::new(shoal_pki::tls::client_config(&root_ca_pem, None)?);
    let channel = retry(|| connect(addr, config.clone())).await?;
    let request = IssueNodeCertificateRequest {
        csr_der: key.csr_der()?,
        token: params.token.trim().to_string(),
        hostname: params.hostname.clone(),
        advertise_addr: params.advertise_addr.clone(),
    };
    let resp = NodeCaClient::new(channel)
        .issue_node_certificate(request)
        .await
        .map_err(|s| JoinError::Refused { addr: addr.into(), reason: status_line(addr, &s) })?
        .into_inner();
    let role = Role::from(resp.role());
    check_certificate(addr, &resp.cert_chain_pem, &resp.node_id, role, &resp.cluster_id)?;
    Ok(Joined {
        node_id: resp.node_id,
        role,
        cluster_id: resp.cluster_id,
        root_ca_pem,
        cert_chain_pem: resp.cert_chain_pem,
        key,
        manager_addrs: resp.manager_addrs,
        manager_ids: resp.managers.map(|m| m.node_ids).unwrap_or_default(),
        trust_pins: resp.trust_pins,
    })
}

/// Where a node whose certificate expired asks for a new one, and what it trusts there.
#[derive(Debug)]
pub struct Reattest<'a> {
    pub manager_addrs: &'a [String],
    /// The managers' node IDs as last heard (a server outside them is not taken for one).
    pub manager_ids: &'a [String],
    /// The roots the node trusted.
    pub root_ca_pem: &'a str,
    pub old_key: &'a NodeKey,
    pub old_chain_pem: &'a str,
    /// The new key, the same for every attempt (an approval covers one key).
    pub new_key: &'a NodeKey,
}

/// A new certificate for a node whose certificate expired while it was off (see
/// `shoal_pki::reattest`): asks each manager in turn, proving possession of the old key with a
/// signature over the request for the new one. The node presents no certificate; the server
/// must chain to the node's roots and be one of the managers it knew. The answer is checked
/// (this node's identity, chaining to those roots, for the new key) before it is returned.
pub async fn reattest(r: &Reattest<'_>) -> Result<String, JoinError> {
    let old = shoal_pki::PeerIdentity::from_pem(r.old_chain_pem)?;
    let csr_der = r.new_key.csr_der()?;
    let proof = r.old_key.sign_reattest(&old.cluster_id, &csr_der)?;
    let trust = shoal_pki::ManagerTrust::with_revocations(Arc::default());
    trust.set_managers(r.manager_ids.iter().cloned());
    let roots = shoal_pki::TrustRoots::new(r.root_ca_pem)?;
    let config = Arc::new(shoal_pki::tls::manager_client_config(roots, None, trust));
    let mut last = JoinError::Unreachable("no manager address is known".into());
    for addr in r.manager_addrs {
        let channel = match connect(addr, config.clone()).await {
            Ok(c) => c,
            Err(e) => {
                last = e.into();
                continue;
            }
        };
        let request = shoal_proto::ReattestNodeCertificateRequest {
            old_cert_chain_pem: r.old_chain_pem.to_string(),
            csr_der: csr_der.clone(),
            proof: proof.clone(),
        };
        match NodeCaClient::new(channel).reattest_node_certificate(request).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let role = Role::from(resp.role());
                let chain = resp.cert_chain_pem;
                check_certificate(addr, &chain, &old.node_id, role, &old.cluster_id)?;
                let bad = |reason: String| JoinError::BadCertificate { addr: addr.clone(), reason };
                shoal_pki::tls::verify_chain(&chain, r.root_ca_pem, std::time::SystemTime::now())
                    .map_err(|e| bad(e.to_string()))?;
                shoal_pki::ReloadableCert::new(&chain, r.new_key)
                    .map_err(|e| bad(e.to_string()))?;
                return Ok(chain);
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                return Err(JoinError::AwaitingApproval(s.message().to_string()))
            }
            Err(s) => {
                last = JoinError::Refused { addr: addr.clone(), reason: status_line(addr, &s) };
            }
        }
    }
    Err(last)
}

/// Fetches the root CA over a TLS connection that is not yet verified, and keeps it only if
/// its digest is the token's and the server we talked to holds a certificate it signed.
async fn fetch_pinned_root(addr: &str, token: &JoinToken) -> Result<String, JoinError> {
    let (config, captured) = shoal_pki::tls::bootstrap_client_config();
    let config = Arc::new(config);
    let channel = retry(|| connect(addr, config.clone())).await?;
    let bundle = CaClient::new(channel)
        .get_root_ca_certificate(GetRootCaCertificateRequest {})
        .await
        .map_err(|s| JoinError::Unreachable(status_line(addr, &s)))?
        .into_inner()
        .certificate;
    if !token.matches_ca(&bundle) {
        return Err(JoinError::CaMismatch { addr: addr.into() });
    }
    let pem = String::from_utf8(bundle).map_err(|_| JoinError::CaMismatch { addr: addr.into() })?;
    captured
        .verify_against(&pem, shoal_pki::MANAGER_SERVER_NAME)
        .map_err(|_| JoinError::CaMismatch { addr: addr.into() })?;
    Ok(pem)
}

fn check_certificate(
    addr: &str,
    chain: &str,
    node_id: &str,
    role: Role,
    cluster_id: &str,
) -> Result<(), JoinError> {
    let bad = |reason: String| JoinError::BadCertificate { addr: addr.into(), reason };
    let id = PeerIdentity::from_pem(chain).map_err(|e| bad(e.to_string()))?;
    if id.node_id != node_id || id.role != role || id.cluster_id != cluster_id {
        return Err(bad(format!(
            "its subject ({} {} {}) does not match the reply",
            id.node_id, id.role, id.cluster_id
        )));
    }
    Ok(())
}

/// Dials with `f`, again after a pause while the connection is refused (the manager may be
/// starting), at most [`ATTEMPTS`] times.
async fn retry<T, F, Fut>(mut f: F) -> Result<T, DialError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DialError>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if e.is_refused() && attempt < ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}
