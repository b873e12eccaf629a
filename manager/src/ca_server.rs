//! Owns the CA services: handing out the root bundle, issuing node certificates for join
//! tokens, and renewing them for nodes that prove their identity with their current certificate.

use std::sync::Arc;
use std::time::SystemTime;

use shoal_pki::{JoinToken, PkiError};
use shoal_proto::ca_server::Ca;
use shoal_proto::node_ca_server::NodeCa;
use shoal_proto::{
    Availability, Cluster, GetRootCaCertificateRequest, GetRootCaCertificateResponse,
    IssueNodeCertificateRequest, IssueNodeCertificateResponse, Node, NodeState,
    RenewNodeCertificateRequest, RenewNodeCertificateResponse,
};
use tonic::{Request, Response, Status};

use crate::authz::caller;
use crate::manager::{cert_expiry, certificate, node_role, now_ms, pki_role, Manager, Shared};
use crate::tokens;

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

fn csr_status(e: PkiError) -> Status {
    match e {
        PkiError::BadCsr(msg) => {
            Status::invalid_argument(format!("bad certificate request: {msg}"))
        }
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl Ca for CaApi {
    async fn get_root_ca_certificate(
        &self,
        _req: Request<GetRootCaCertificateRequest>,
    ) -> Result<Response<GetRootCaCertificateResponse>, Status> {
        let certificate = self.shared.root_ca_pem.as_bytes().to_vec();
        Ok(Response::new(GetRootCaCertificateResponse { certificate }))
    }
}

#[tonic::async_trait]
impl NodeCa for CaApi {
    async fn issue_node_certificate(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let req = req.into_inner();
        if req.csr_der.is_empty() {
            return Err(Status::invalid_argument("the certificate request (CSR) is empty"));
        }
        let token =
            JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let shared = &self.shared;
        let (node, chain) = shared
            .store
            .update(|tx| {
                let mut cluster = tx
                    .get::<Cluster>(&shared.cluster_id)?
                    .ok_or_else(|| Status::internal("cluster object missing"))?;
                let role = tokens::redeem(&mut cluster, &token, now_ms())
                    .map_err(|e| Status::permission_denied(e.to_string()))?;
                let node_id = fresh_node_id(|id| Ok(tx.get::<Node>(id)?.is_none()))?;
                let issued = shared
                    .signer(&cluster)?
                    .sign_node_csr(
                        &req.csr_der,
                        &node_id,
                        role,
                        &shared.cluster_id,
                        cert_expiry(&cluster),
                        SystemTime::now(),
                    )
                    .map_err(csr_status)?;
                let node = Node {
                    id: node_id,
                    role: node_role(role) as i32,
                    hostname: req.hostname.clone(),
                    addr: req.advertise_addr.clone(),
                    state: NodeState::Unknown as i32,
                    availability: Availability::Active as i32,
                    certificate: Some(certificate(&issued)),
                    serials: vec![issued.serial_hex.clone()],
                    ..Default::default()
                };
                if tokens::counts_uses(&cluster, role) {
                    tx.update(cluster)?;
                }
                tx.create(node.clone())?;
                Ok::<_, Status>((node, issued.cert_pem))
            })
            .await?;
        tracing::info!(node = %node.id, role = node.role().word(), hostname = %node.hostname, "node joined");
        Ok(Response::new(IssueNodeCertificateResponse {
            node_id: node.id,
            role: node.role,
            cluster_id: shared.cluster_id.clone(),
            cert_chain_pem: chain,
            manager_addrs: shared.manager_addrs()?,
            managers: Some(shared.manager_set()),
        }))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
        let id = caller(&req).node()?.clone();
        let csr = req.into_inner().csr_der;
        let chain = renew(&self.shared, &id.node_id, &csr).await?;
        Ok(Response::new(RenewNodeCertificateResponse { cert_chain_pem: chain }))
    }
}

/// Signs a new certificate for an existing node; subject fields come from the store only.
pub(crate) async fn renew(shared: &Shared, node_id: &str, csr: &[u8]) -> Result<String, Status> {
    let chain = shared
        .store
        .update(|tx| {
            let cluster = tx
                .get::<Cluster>(&shared.cluster_id)?
                .ok_or_else(|| Status::internal("cluster object missing"))?;
            let mut node = tx.get::<Node>(node_id)?.ok_or_else(|| {
                Status::not_found(format!("node {node_id} is not part of this cluster"))
            })?;
            let issued = shared
                .signer(&cluster)?
                .sign_node_csr(
                    csr,
                    node_id,
                    pki_role(node.role()),
                    &shared.cluster_id,
                    cert_expiry(&cluster),
                    SystemTime::now(),
                )
                .map_err(csr_status)?;
            node.certificate = Some(certificate(&issued));
            node.serials.push(issued.serial_hex.clone());
            tx.update(node)?;
            Ok::<_, Status>(issued.cert_pem)
        })
        .await?;
    tracing::info!(node = %node_id, "certificate renewed");
    Ok(chain)
}

fn fresh_node_id(mut unused: impl FnMut(&str) -> Result<bool, Status>) -> Result<String, Status> {
    for _ in 0..ID_ATTEMPTS {
        let id = shoal_pki::id::new_id();
        if unused(&id)? {
            return Ok(id);
        }
    }
    Err(Status::internal("could not draw an unused node ID"))
}
