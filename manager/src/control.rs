//! Owns the Control API: node listing, inspection and removal (revocation), cluster settings,
//! and join tokens. Validates every request before it touches the store.

use std::sync::Arc;
use std::time::Duration;

use raft::prelude::{ConfChange, ConfChangeType};
use shoal_pki::Role;
use shoal_proto::control_server::Control;
use shoal_proto::Member;
use shoal_proto::{
    ApproveNodeRequest, Autolock, ContentTrust, GetRootCaRequest, GetUnlockKeyRequest, RootCaInfo,
    RotateRootCaRequest, RotateUnlockKeyRequest, UnlockKey, UnlockKeyInfo, UpdateNodeRoleRequest,
};
use shoal_proto::{
    Cluster, ClusterInfo, ClusterSpec, GetClusterInfoRequest, GetJoinTokenRequest, GetNodeRequest,
    GetNodeResponse, JoinTokenInfo, JoinTokens, ListNodesRequest, ListNodesResponse, Node,
    NodeRole, NodeState, RemoveNodeRequest, RemoveNodeResponse, Revoked, RotateJoinTokenRequest,
    UpdateClusterRequest,
};
use shoal_proto::{
    CreateServiceRequest, GetServiceRequest, ListServicesRequest, ListServicesResponse,
    ListTasksRequest, ListTasksResponse, LogMessage, RemoveServiceRequest, RemoveServiceResponse,
    ServiceLogsRequest, ServiceResponse, UpdateNodeRequest, UpdateServiceRequest,
};
use shoal_proto::{SecretKind, Service, ServiceSpec};
use tonic::{Request, Response, Status};

use crate::access::{self, Who};
use crate::raft::crypto::{format_unlock_key, Key};

use crate::config::validate_heartbeat;
use crate::manager::{now_ms, Manager, Shared};
use crate::tokens::{self, TokenPolicy};

/// The Control gRPC service.
#[derive(Debug, Clone)]
pub struct ControlApi {
    shared: Arc<Shared>,
}

impl Manager {
    /// The control service of this manager.
    pub fn control(&self) -> ControlApi {
        ControlApi { shared: self.shared.clone() }
    }
}

/// Finds a node by full ID, unique ID prefix, or hostname.
pub fn resolve_node<'a>(nodes: &'a [Node], reference: &str) -> Result<&'a Node, Status> {
    if reference.is_empty() {
        return Err(Status::invalid_argument("name a node by ID, ID prefix or hostname"));
    }
    if let Some(n) = nodes.iter().find(|n| n.id == reference) {
        return Ok(n);
    }
    let by_prefix: Vec<_> = nodes.iter().filter(|n| n.id.starts_with(reference)).collect();
    let by_name: Vec<_> = nodes.iter().filter(|n| n.hostname == reference).collect();
    match (by_prefix.as_slice(), by_name.as_slice()) {
        ([one], []) | ([], [one]) => Ok(one),
        ([], []) => Err(Status::not_found(format!("no such node: {reference}"))),
        _ => Err(Status::invalid_argument(format!(
            "{reference} matches more than one node; use a longer ID prefix"
        ))),
    }
}

fn role_of(raw: i32) -> Result<Role, Status> {
    NodeRole::try_from(raw)
        .map(Role::from)
        .map_err(|_| Status::invalid_argument(format!("unknown role {raw}")))
}

impl ControlApi {
    fn cluster_info(&self, cluster: &Cluster) -> ClusterInfo {
        let root = cluster.root_ca.as_ref().map(|r| r.cert_pem.clone()).unwrap_or_default();
        ClusterInfo {
            id: cluster.id.clone(),
            spec: cluster.spec.clone(),
            root_ca_digest: crate::ca_rotation::root_digest_label(&root),
            root_ca_pem: root,
            revoked_nodes: cluster.revoked.iter().filter(|r| !r.superseded).count() as u32,
            autolock: cluster.unlock_key.is_some(),
            data_key_epoch: cluster.data_key_epoch,
            created_at_ms: cluster.meta.as_ref().map(|m| m.created_at_ms).unwrap_or(0),
        }
    }

    fn token_info(&self, cluster: &Cluster, role: Role) -> Result<JoinTokenInfo, Status> {
        let tokens = cluster.join_tokens.clone().unwrap_or_default();
        let rec = tokens::record(&tokens, role).cloned().unwrap_or_default();
        Ok(JoinTokenInfo {
            role: NodeRole::from(role) as i32,
            token: tokens::encode(
                cluster.root_ca.as_ref().map(|r| r.cert_pem.as_str()).unwrap_or_default(),
                &rec,
            ),
            expires_at_ms: rec.expires_at_ms,
            max_uses: rec.max_uses,
            uses: rec.uses,
            manager_addrs: self.shared.manager_addrs()?,
        })
    }
}

#[tonic::async_trait]
impl Control for ControlApi {
    async fn update_node_role(
        &self,
        req: Request<UpdateNodeRoleRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        self.guard_node(&req, &req.get_ref().reference, "node.admin", true)?;
        let r = req.into_inner();
        let role =
            NodeRole::try_from(r.role).map_err(|_| Status::invalid_argument("unknown role"))?;
        let shared = &self.shared;
        shared.store.barrier().await?;
        let nodes = shared.store.list::<Node>()?;
        let node = resolve_node(&nodes, &r.reference)?.clone();
        if node.role() != role {
            let member = shared.members()?.into_iter().find(|m| m.node_id == node.id);
            if let (NodeRole::Worker, Some(member)) = (role, &member) {
                if shared.members()?.len() <= 1 {
                    return Err(Status::failed_precondition(format!(
                        "node {} is the last manager; it cannot be demoted",
                        node.id
                    )));
                }
                check_quorum_after_removal(shared, &nodes, member)?;
            }
            // The role first, while a demoted manager still votes; the node then renews its
            // certificate and joins or leaves the managers on its own. Every certificate it
            // holds was issued for the old role: from this write on they carry a worker's
            // rights only and no node takes them for a manager's.
            let superseded = shared
                .store
                .update(|tx| {
                    let mut n = tx
                        .get::<Node>(&node.id)?
                        .ok_or_else(|| Status::not_found("node is gone"))?;
                    let mut cluster = tx
                        .get::<Cluster>(&shared.cluster_id)?
                        .ok_or_else(|| Status::internal("cluster object missing"))?;
                    revoke(&mut cluster, &n, true);
                    let serials = n.serials.clone();
                    n.set_role(role);
                    tx.update(cluster)?;
                    tx.update(n)?;
                    Ok::<_, Status>(serials)
                })
                .await?;
            // This manager applies it at once; the others follow their change feed.
            shared.refresh_role(&node.id);
            for serial in &superseded {
                shared.revocations.supersede_serial(serial);
            }
            if let (NodeRole::Worker, Some(member)) = (role, member) {
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = member.raft_id;
                shared.raft.change_member(cc).await?;
            }
            tracing::info!(node = %node.id, role = role.word(), "node role changed");
        }
        let node = shared.store.get::<Node>(&node.id)?;
        Ok(Response::new(GetNodeResponse { node, manager_status: None }))
    }

    async fn get_root_ca(
        &self,
        req: Request<GetRootCaRequest>,
    ) -> Result<Response<RootCaInfo>, Status> {
        self.guard(&req, "swarm.view", "swarm", "/", false)?;
        self.shared.store.barrier().await?;
        Ok(Response::new(self.shared.root_ca_info()?))
    }

    async fn rotate_root_ca(
        &self,
        req: Request<RotateRootCaRequest>,
    ) -> Result<Response<RootCaInfo>, Status> {
        self.guard(&req, "swarm.admin", "root-ca", "/", true)?;
        self.shared.rotate_root(req.into_inner()).await?;
        Ok(Response::new(self.shared.root_ca_info()?))
    }

    async fn approve_node(
        &self,
        req: Request<ApproveNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        self.guard_node(&req, &req.get_ref().reference, "node.admin", true)?;
        let reference = req.into_inner().reference;
        let node = self
            .shared
            .store
            .update(|tx| {
                let nodes = tx.list::<Node>()?;
                let mut node = resolve_node(&nodes, &reference)?.clone();
                if node.reattest_requested_ms == 0 {
                    return Err(Status::failed_precondition(format!(
                        "node {} ({}) has not asked for a new certificate; approval is for a \
                         node that came back with an expired one",
                        node.id, node.hostname
                    )));
                }
                node.reattest_approved_ms = crate::manager::now_ms();
                tx.update(node.clone())?;
                Ok::<_, Status>(node)
            })
            .await?;
        tracing::info!(node = %node.id, key = %node.reattest_key, from = %node.reattest_from, "re-attestation approved");
        Ok(Response::new(GetNodeResponse { node: Some(node), manager_status: None }))
    }

    async fn get_unlock_key(
        &self,
        req: Request<GetUnlockKeyRequest>,
    ) -> Result<Response<UnlockKeyInfo>, Status> {
        self.guard(&req, "swarm.admin", "unlock-key", "/", true)?;
        self.shared.store.barrier().await?;
        let info = unlock_key_info(&self.shared.cluster()?);
        if info.key.is_empty() {
            return Err(Status::failed_precondition("no unlock key is set: autolock is off"));
        }
        Ok(Response::new(info))
    }

    async fn rotate_unlock_key(
        &self,
        req: Request<RotateUnlockKeyRequest>,
    ) -> Result<Response<UnlockKeyInfo>, Status> {
        self.guard(&req, "swarm.admin", "unlock-key", "/", true)?;
        let shared = &self.shared;
        let cluster = shared
            .store
            .update(|tx| {
                let mut cluster = tx
                    .get::<Cluster>(&shared.cluster_id)?
                    .ok_or_else(|| Status::internal("cluster object missing"))?;
                if cluster.unlock_key.is_none() {
                    return Err(Status::failed_precondition(
                        "no unlock key is set: autolock is off",
                    ));
                }
                cluster.unlock_key = Some(new_unlock_key()?);
                tx.update(cluster.clone())?;
                Ok(cluster)
            })
            .await?;
        tracing::info!("unlock key rotated");
        Ok(Response::new(unlock_key_info(&cluster)))
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let who = self.who(&req)?;
        self.shared.store.barrier().await?;
        let mut nodes = self.shared.store.list::<Node>()?;
        nodes.retain(|n| who.may("node.view", node_collection(n)));
        nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        let leader = self.shared.raft.status().leader;
        let members = self.shared.members()?;
        let leader_id = members.iter().find(|m| m.raft_id == leader).map(|m| m.node_id.clone());
        let unreachable_ids =
            members.iter().filter(|m| m.unreachable).map(|m| m.node_id.clone()).collect();
        let manager_ids = members.into_iter().map(|m| m.node_id).collect();
        let cluster = self.shared.cluster()?;
        let tls_status = crate::ca_rotation::tls_status(&cluster, &nodes);
        Ok(Response::new(ListNodesResponse {
            nodes,
            leader_id: leader_id.unwrap_or_default(),
            manager_ids,
            unreachable_ids,
            tls_status,
        }))
    }

    async fn get_node(
        &self,
        req: Request<GetNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        self.guard_node(&req, &req.get_ref().reference, "node.view", false)?;
        let nodes = self.shared.store.list::<Node>()?;
        let node = resolve_node(&nodes, &req.get_ref().reference)?.clone();
        let leader = self.shared.raft.status().leader;
        let members = self.shared.members()?;
        let manager_status = members.into_iter().find(|m| m.node_id == node.id).map(|m| {
            shoal_proto::ManagerStatus {
                leader: m.raft_id == leader,
                addr: m.addr,
                reachable: !m.unreachable,
            }
        });
        Ok(Response::new(GetNodeResponse { node: Some(node), manager_status }))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        self.guard_node(&req, &req.get_ref().reference, "node.admin", true)?;
        let RemoveNodeRequest { reference, force } = req.into_inner();
        let shared = &self.shared;
        let nodes = shared.store.list::<Node>()?;
        let node = resolve_node(&nodes, &reference)?.clone();
        check_removable(shared, &node, force)?;
        if let Some(member) = shared.members()?.into_iter().find(|m| m.node_id == node.id) {
            check_quorum_after_removal(shared, &nodes, &member)?;
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::RemoveNode);
            cc.node_id = member.raft_id;
            shared.raft.change_member(cc).await?;
            tracing::info!(node = %node.id, raft_id = member.raft_id, "manager removed from the raft group");
        }
        shared
            .store
            .update(|tx| {
                let mut cluster = tx
                    .get::<Cluster>(&shared.cluster_id)?
                    .ok_or_else(|| Status::internal("cluster object missing"))?;
                revoke(&mut cluster, &node, false);
                tx.update(cluster)?;
                tx.delete::<Node>(&node.id)?;
                Ok::<_, Status>(())
            })
            .await?;
        shared.revocations.revoke_node(&node.id);
        for serial in &node.serials {
            shared.revocations.revoke_serial(serial);
        }
        shared.sessions.drop_node(&node.id);
        tracing::info!(node = %node.id, hostname = %node.hostname, "node removed and its certificates revoked");
        Ok(Response::new(RemoveNodeResponse { node_id: node.id }))
    }

    async fn get_cluster_info(
        &self,
        req: Request<GetClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        self.guard(&req, "swarm.view", "swarm", "/", false)?;
        self.shared.store.barrier().await?;
        Ok(Response::new(self.cluster_info(&self.shared.cluster()?)))
    }

    async fn update_cluster(
        &self,
        req: Request<UpdateClusterRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        self.guard(&req, "swarm.admin", "swarm", "/", true)?;
        let req = req.into_inner();
        if req.cert_expiry_secs != 0 {
            shoal_pki::validate_cert_expiry_at_least(
                Duration::from_secs(req.cert_expiry_secs),
                self.shared.renew_pace.expiry_floor(),
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        if req.heartbeat_period_ms != 0 {
            validate_heartbeat(Duration::from_millis(req.heartbeat_period_ms))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        if req.network_key_rotation_secs != 0 {
            shoal_pki::tunnel::validate_rotation(Duration::from_secs(
                req.network_key_rotation_secs,
            ))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        if req.trust_timestamp_secs != 0 {
            crate::trust::validate_lifetime(Duration::from_secs(req.trust_timestamp_secs))
                .map_err(Status::invalid_argument)?;
        }
        let scan_block = match req.scan_block.to_ascii_lowercase().as_str() {
            "" => None,
            "none" => Some(String::new()),
            s @ ("low" | "medium" | "high" | "critical") => Some(s.to_string()),
            other => {
                return Err(Status::invalid_argument(format!(
                    "scan policy block={other}: use low, medium, high, critical or none"
                )))
            }
        };
        let trust = req.content_trust();
        if trust == ContentTrust::Off {
            let previous = self.shared.cluster()?.spec.map(|s| s.content_trust_policy);
            crate::trust::check_policy_off(
                &self.shared.store,
                &req.content_trust_policy,
                &previous.unwrap_or_default(),
            )?;
        }
        let cluster = self
            .shared
            .store
            .update(|tx| {
                let mut cluster = tx
                    .get::<Cluster>(&self.shared.cluster_id)?
                    .ok_or_else(|| Status::internal("cluster object missing"))?;
                let spec = cluster.spec.get_or_insert_with(ClusterSpec::default);
                if req.cert_expiry_secs != 0 {
                    spec.cert_expiry_secs = req.cert_expiry_secs;
                }
                if req.heartbeat_period_ms != 0 {
                    spec.heartbeat_period_ms = req.heartbeat_period_ms;
                }
                if req.network_key_rotation_secs != 0 {
                    spec.network_key_rotation_secs = req.network_key_rotation_secs;
                }
                if req.trust_timestamp_secs != 0 {
                    spec.trust_timestamp_secs = req.trust_timestamp_secs;
                }
                if let Some(level) = &scan_block {
                    spec.scan_block = level.clone();
                }
                match req.reattest_window_secs {
                    0 => {}
                    u64::MAX => spec.reattest_window_secs = 0,
                    secs => spec.reattest_window_secs = secs,
                }
                match trust {
                    ContentTrust::Required => {
                        spec.content_trust_required = true;
                        spec.content_trust_policy.clear();
                    }
                    ContentTrust::Off => {
                        spec.content_trust_required = false;
                        spec.content_trust_policy = req.content_trust_policy.clone();
                    }
                    ContentTrust::Unchanged => {}
                }
                match req.autolock() {
                    Autolock::On if cluster.unlock_key.is_none() => {
                        cluster.unlock_key = Some(new_unlock_key()?);
                        // The data keys sat on disk next to the keys that wrapped them.
                        cluster.data_key_epoch += 1;
                    }
                    Autolock::Off => cluster.unlock_key = None,
                    _ => {}
                }
                if req.rotate_data_key {
                    cluster.data_key_epoch += 1;
                }
                tx.update(cluster.clone())?;
                Ok::<_, Status>(cluster)
            })
            .await?;
        Ok(Response::new(self.cluster_info(&cluster)))
    }

    async fn get_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Result<Response<JoinTokenInfo>, Status> {
        self.guard(&req, "swarm.admin", "join-token", "/", true)?;
        let role = role_of(req.get_ref().role)?;
        self.shared.store.barrier().await?;
        Ok(Response::new(self.token_info(&self.shared.cluster()?, role)?))
    }

    async fn rotate_join_token(
        &self,
        req: Request<RotateJoinTokenRequest>,
    ) -> Result<Response<JoinTokenInfo>, Status> {
        self.guard(&req, "swarm.admin", "join-token", "/", true)?;
        let req = req.into_inner();
        let role = role_of(req.role)?;
        let ttl_ms = i64::try_from(req.ttl_secs.saturating_mul(1000))
            .map_err(|_| Status::invalid_argument("token TTL is too large"))?;
        let policy = TokenPolicy { ttl_ms, max_uses: req.max_uses };
        let cluster = self
            .shared
            .store
            .update(|tx| {
                let mut cluster = tx
                    .get::<Cluster>(&self.shared.cluster_id)?
                    .ok_or_else(|| Status::internal("cluster object missing"))?;
                let tokens = cluster.join_tokens.get_or_insert_with(JoinTokens::default);
                *tokens::record_mut(tokens, role) = Some(tokens::mint(policy, now_ms()));
                tx.update(cluster.clone())?;
                Ok::<_, Status>(cluster)
            })
            .await?;
        tracing::info!(role = role.as_str(), "join token rotated");
        Ok(Response::new(self.token_info(&cluster, role)?))
    }

    async fn update_node(
        &self,
        req: Request<UpdateNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        let r = req.get_ref();
        let only_availability =
            r.label_add.is_empty() && r.label_rm.is_empty() && r.hostname.is_none();
        let op = if only_availability { "node.availability" } else { "node.update" };
        let who = self.guard_node(&req, &r.reference, op, true)?;
        if let Some(c) = r.label_add.iter().find_map(|l| l.strip_prefix("com.shoal.collection=")) {
            access::check_collection(c)?;
            self.check(&who, "node.update", &format!("node:{}", r.reference), c, true)?;
        }
        let node = crate::services::update_node(&self.shared, req.into_inner()).await?;
        Ok(Response::new(GetNodeResponse { node: Some(node), manager_status: None }))
    }

    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Result<Response<ServiceResponse>, Status> {
        let who = self.who(&req)?;
        let spec = req.get_ref().spec.clone().unwrap_or_default();
        let collection = labelled(&spec.labels)?;
        self.check(&who, "service.create", &format!("service:{}", spec.name), &collection, true)?;
        self.check_service_spec(&who, &spec, None)?;
        Ok(Response::new(crate::services::create(&self.shared, req.into_inner()).await?))
    }

    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> Result<Response<ServiceResponse>, Status> {
        let r = req.get_ref();
        let who = self.guard_service(&req, &r.reference, "service.update", true).await?;
        if let Some(spec) = r.spec.as_ref() {
            let current = self.service_of(&r.reference).await?.spec.unwrap_or_default();
            let collection = labelled(&spec.labels)?;
            if collection != labelled(&current.labels)? {
                self.check(
                    &who,
                    "service.create",
                    &format!("service:{}", spec.name),
                    &collection,
                    true,
                )?;
            }
            self.check_service_spec(&who, spec, Some(&current))?;
        }
        Ok(Response::new(crate::services::update(&self.shared, req.into_inner()).await?))
    }

    async fn get_service(
        &self,
        req: Request<GetServiceRequest>,
    ) -> Result<Response<ServiceResponse>, Status> {
        self.guard_service(&req, &req.get_ref().reference, "service.view", false).await?;
        Ok(Response::new(crate::services::get(&self.shared, req.into_inner()).await?))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let who = self.who(&req)?;
        let mut list = crate::services::list(&self.shared).await?;
        list.services.retain(|s| {
            let spec = s.service.as_ref().and_then(|s| s.spec.clone()).unwrap_or_default();
            labelled(&spec.labels).is_ok_and(|c| who.may("service.view", &c))
        });
        Ok(Response::new(list))
    }

    async fn remove_service(
        &self,
        req: Request<RemoveServiceRequest>,
    ) -> Result<Response<RemoveServiceResponse>, Status> {
        self.guard_service(&req, &req.get_ref().reference, "service.remove", true).await?;
        Ok(Response::new(crate::services::remove(&self.shared, req.into_inner()).await?))
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let who = self.who(&req)?;
        if !req.get_ref().service.is_empty() {
            self.guard_service(&req, &req.get_ref().service, "service.view", false).await?;
        }
        let mut listed = crate::services::list_tasks(&self.shared, req.into_inner()).await?;
        if let Who::User(_) = who {
            let visible: std::collections::HashSet<String> = self
                .shared
                .store
                .list::<Service>()?
                .into_iter()
                .filter(|s| {
                    let spec = s.spec.clone().unwrap_or_default();
                    labelled(&spec.labels).is_ok_and(|c| who.may("service.view", &c))
                })
                .map(|s| s.id)
                .collect();
            listed.tasks.retain(|t| visible.contains(&t.service_id));
        }
        Ok(Response::new(listed))
    }

    type ServiceLogsStream = tokio_stream::wrappers::ReceiverStream<Result<LogMessage, Status>>;

    async fn service_logs(
        &self,
        req: Request<ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        self.guard_service(&req, &req.get_ref().reference, "service.logs", false).await?;
        let r = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let shared = self.shared.clone();
        if shared.raft.status().is_leader {
            let listed = crate::services::list_tasks(
                &shared,
                shoal_proto::ListTasksRequest {
                    service: r.reference.clone(),
                    ..Default::default()
                },
            )
            .await?;
            tokio::spawn(async move {
                if let Err(e) =
                    crate::logs::stream(&shared, listed.tasks, r.follow, r.tail, tx.clone()).await
                {
                    let _ = tx.send(Err(e)).await;
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = crate::logs::forward_to_leader(&shared, r, tx.clone()).await {
                    let _ = tx.send(Err(e)).await;
                }
            });
        }
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn create_secret(
        &self,
        req: Request<shoal_proto::CreateSecretRequest>,
    ) -> Result<Response<shoal_proto::SecretResponse>, Status> {
        let r = req.get_ref();
        let op = kind_op(r.kind, "create");
        self.guard(
            &req,
            &op,
            &format!("{}:{}", op.split('.').next().unwrap_or(""), r.name),
            &labelled(&r.labels)?,
            true,
        )?;
        Ok(Response::new(crate::secrets::create(&self.shared, req.into_inner()).await?))
    }

    async fn update_secret(
        &self,
        req: Request<shoal_proto::UpdateSecretRequest>,
    ) -> Result<Response<shoal_proto::SecretResponse>, Status> {
        let r = req.get_ref();
        let who = self.who(&req)?;
        let (kind, reference) = (r.kind, r.reference.clone());
        let got =
            crate::secrets::get(&self.shared, shoal_proto::GetSecretRequest { kind, reference })
                .await?;
        let current = got.secret.unwrap_or_default();
        let op = kind_op(kind, "update");
        let object = format!("{}:{}", op.split('.').next().unwrap_or(""), current.name);
        self.check(&who, &op, &object, &labelled(&current.labels)?, true)?;
        if r.set_labels && labelled(&r.labels)? != labelled(&current.labels)? {
            self.check(&who, &kind_op(kind, "create"), &object, &labelled(&r.labels)?, true)?;
        }
        Ok(Response::new(crate::secrets::update(&self.shared, req.into_inner()).await?))
    }

    async fn get_secret(
        &self,
        req: Request<shoal_proto::GetSecretRequest>,
    ) -> Result<Response<shoal_proto::SecretResponse>, Status> {
        let who = self.who(&req)?;
        let kind = req.get_ref().kind;
        let got = crate::secrets::get(&self.shared, req.into_inner()).await?;
        let secret = got.secret.clone().unwrap_or_default();
        let op = kind_op(kind, "read-metadata");
        let object = format!("{}:{}", op.split('.').next().unwrap_or(""), secret.name);
        self.check(&who, &op, &object, &labelled(&secret.labels)?, false)?;
        Ok(Response::new(got))
    }

    async fn list_secrets(
        &self,
        req: Request<shoal_proto::ListSecretsRequest>,
    ) -> Result<Response<shoal_proto::ListSecretsResponse>, Status> {
        let who = self.who(&req)?;
        let op = kind_op(req.get_ref().kind, "read-metadata");
        let mut list = crate::secrets::list(&self.shared, req.into_inner()).await?;
        list.secrets.retain(|s| labelled(&s.labels).is_ok_and(|c| who.may(&op, &c)));
        Ok(Response::new(list))
    }

    async fn remove_secret(
        &self,
        req: Request<shoal_proto::RemoveSecretRequest>,
    ) -> Result<Response<shoal_proto::RemoveSecretResponse>, Status> {
        let who = self.who(&req)?;
        let (kind, reference) = (req.get_ref().kind, req.get_ref().reference.clone());
        let got =
            crate::secrets::get(&self.shared, shoal_proto::GetSecretRequest { kind, reference })
                .await?;
        let current = got.secret.unwrap_or_default();
        let op = kind_op(kind, "remove");
        let object = format!("{}:{}", op.split('.').next().unwrap_or(""), current.name);
        self.check(&who, &op, &object, &labelled(&current.labels)?, true)?;
        Ok(Response::new(crate::secrets::remove(&self.shared, req.into_inner()).await?))
    }

    async fn create_network(
        &self,
        req: Request<shoal_proto::CreateNetworkRequest>,
    ) -> Result<Response<shoal_proto::NetworkResponse>, Status> {
        let spec = req.get_ref().spec.clone().unwrap_or_default();
        self.guard(
            &req,
            "network.create",
            &format!("network:{}", spec.name),
            &labelled(&spec.labels)?,
            true,
        )?;
        Ok(Response::new(crate::networks::create(&self.shared, req.into_inner()).await?))
    }

    async fn get_network(
        &self,
        req: Request<shoal_proto::GetNetworkRequest>,
    ) -> Result<Response<shoal_proto::NetworkResponse>, Status> {
        let who = self.who(&req)?;
        let got = crate::networks::get(&self.shared, req.into_inner()).await?;
        let spec = got.network.as_ref().and_then(|n| n.spec.clone()).unwrap_or_default();
        self.check(
            &who,
            "network.view",
            &format!("network:{}", spec.name),
            &labelled(&spec.labels)?,
            false,
        )?;
        Ok(Response::new(got))
    }

    async fn list_networks(
        &self,
        req: Request<shoal_proto::ListNetworksRequest>,
    ) -> Result<Response<shoal_proto::ListNetworksResponse>, Status> {
        let who = self.who(&req)?;
        let mut list = crate::networks::list(&self.shared).await?;
        list.networks.retain(|n| {
            let spec = n.spec.clone().unwrap_or_default();
            labelled(&spec.labels).is_ok_and(|c| who.may("network.view", &c))
        });
        Ok(Response::new(list))
    }

    async fn remove_network(
        &self,
        req: Request<shoal_proto::RemoveNetworkRequest>,
    ) -> Result<Response<shoal_proto::RemoveNetworkResponse>, Status> {
        let who = self.who(&req)?;
        let reference = req.get_ref().reference.clone();
        let got = crate::networks::get(&self.shared, shoal_proto::GetNetworkRequest { reference })
            .await?;
        let spec = got.network.and_then(|n| n.spec).unwrap_or_default();
        self.check(
            &who,
            "network.remove",
            &format!("network:{}", spec.name),
            &labelled(&spec.labels)?,
            true,
        )?;
        Ok(Response::new(crate::networks::remove(&self.shared, req.into_inner()).await?))
    }

    async fn create_user(
        &self,
        req: Request<shoal_proto::UserRequest>,
    ) -> Result<Response<shoal_proto::UserResponse>, Status> {
        let who = self.who(&req)?;
        Ok(Response::new(crate::people::create_user(&self.shared, &who, req.into_inner()).await?))
    }

    async fn get_user(
        &self,
        req: Request<shoal_proto::UserRequest>,
    ) -> Result<Response<shoal_proto::UserResponse>, Status> {
        let who = self.who(&req)?;
        Ok(Response::new(crate::people::get_user(&self.shared, &who, req.into_inner()).await?))
    }

    async fn list_users(
        &self,
        req: Request<shoal_proto::ListUsersRequest>,
    ) -> Result<Response<shoal_proto::ListUsersResponse>, Status> {
        let who = self.who(&req)?;
        Ok(Response::new(crate::people::list_users(&self.shared, &who).await?))
    }

    async fn remove_user(
        &self,
        req: Request<shoal_proto::UserRequest>,
    ) -> Result<Response<shoal_proto::RemoveResponse>, Status> {
        let who = self.who(&req)?;
        crate::people::remove_user(&self.shared, &who, req.into_inner()).await?;
        Ok(Response::new(shoal_proto::RemoveResponse {}))
    }

    async fn issue_user_certificate(
        &self,
        req: Request<shoal_proto::IssueUserCertificateRequest>,
    ) -> Result<Response<shoal_proto::IssueUserCertificateResponse>, Status> {
        let who = self.who(&req)?;
        let r = crate::people::issue_certificate(&self.shared, &who, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn create_team(
        &self,
        req: Request<shoal_proto::TeamRequest>,
    ) -> Result<Response<shoal_proto::Team>, Status> {
        let who = self.who(&req)?;
        Ok(Response::new(crate::people::create_team(&self.shared, &who, req.into_inner()).await?))
    }

    async fn update_team(
        &self,
        req: Request<shoal_proto::TeamRequest>,
    ) -> Result<Response<shoal_proto::Team>, Status> {
        let who = self.who(&req)?;
        Ok(Response::new(crate::people::update_team(&self.shared, &who, req.into_inner()).await?))
    }

    async fn list_teams(
        &self,
        req: Request<shoal_proto::ListTeamsRequest>,
    ) -> Result<Response<shoal_proto::ListTeamsResponse>, Status> {
        let who = self.who(&req)?;
        Ok(Response::new(crate::people::list_teams(&self.shared, &who).await?))
    }

    async fn remove_team(
        &self,
        req: Request<shoal_proto::TeamRequest>,
    ) -> Result<Response<shoal_proto::RemoveResponse>, Status> {
        let who = self.who(&req)?;
        crate::people::remove_team(&self.shared, &who, req.into_inner()).await?;
        Ok(Response::new(shoal_proto::RemoveResponse {}))
    }

    async fn create_role(
        &self,
        req: Request<shoal_proto::RoleRequest>,
    ) -> Result<Response<shoal_proto::AccessRole>, Status> {
        let who = self.who(&req)?;
        Ok(Response::new(crate::people::create_role(&self.shared, &who, req.into_inner()).await?))
    }

    async fn list_roles(
        &self,
        req: Request<shoal_proto::ListRolesRequest>,
    ) -> Result<Response<shoal_proto::ListRolesResponse>, Status> {
        self.who(&req)?;
        Ok(Response::new(crate::people::list_roles(&self.shared).await?))
    }

    async fn remove_role(
        &self,
        req: Request<shoal_proto::RoleRequest>,
    ) -> Result<Response<shoal_proto::RemoveResponse>, Status> {
        let who = self.who(&req)?;
        crate::people::remove_role(&self.shared, &who, req.into_inner()).await?;
        Ok(Response::new(shoal_proto::RemoveResponse {}))
    }

    async fn create_grant(
        &self,
        req: Request<shoal_proto::CreateGrantRequest>,
    ) -> Result<Response<shoal_proto::Grant>, Status> {
        let who = self.who(&req)?;
        Ok(Response::new(crate::people::create_grant(&self.shared, &who, req.into_inner()).await?))
    }

    async fn list_grants(
        &self,
        req: Request<shoal_proto::ListGrantsRequest>,
    ) -> Result<Response<shoal_proto::ListGrantsResponse>, Status> {
        let who = self.who(&req)?;
        Ok(Response::new(crate::people::list_grants(&self.shared, &who).await?))
    }

    async fn remove_grant(
        &self,
        req: Request<shoal_proto::RemoveGrantRequest>,
    ) -> Result<Response<shoal_proto::RemoveResponse>, Status> {
        let who = self.who(&req)?;
        crate::people::remove_grant(&self.shared, &who, req.into_inner().reference).await?;
        Ok(Response::new(shoal_proto::RemoveResponse {}))
    }

    async fn read_audit(
        &self,
        req: Request<shoal_proto::ReadAuditRequest>,
    ) -> Result<Response<shoal_proto::ReadAuditResponse>, Status> {
        let who = self.who(&req)?;
        Ok(Response::new(crate::people::read_audit(&self.shared, &who, req.into_inner()).await?))
    }

    async fn put_trust(
        &self,
        req: Request<shoal_proto::PutTrustRequest>,
    ) -> Result<Response<shoal_proto::TrustInfo>, Status> {
        self.guard(&req, "swarm.admin", "trust", "/", true)?;
        Ok(Response::new(crate::trust::put(&self.shared, req.into_inner()).await?))
    }

    async fn get_trust(
        &self,
        req: Request<shoal_proto::GetTrustRequest>,
    ) -> Result<Response<shoal_proto::TrustInfo>, Status> {
        self.guard(&req, "swarm.view", "trust", "/", false)?;
        Ok(Response::new(crate::trust::get(&self.shared, &req.into_inner().repo).await?))
    }
}

/// Refuses to remove a manager if the managers left could not form a quorum (counting those
/// whose node is Ready, and this one).
fn check_quorum_after_removal(
    shared: &Shared,
    nodes: &[Node],
    leaving: &Member,
) -> Result<(), Status> {
    let members = shared.members()?;
    let remaining: Vec<&Member> = members.iter().filter(|m| m.raft_id != leaving.raft_id).collect();
    let quorum = remaining.len() / 2 + 1;
    let active = remaining
        .iter()
        .filter(|m| {
            m.node_id == shared.local_node_id
                || nodes.iter().any(|n| n.id == m.node_id && n.state() == NodeState::Ready)
        })
        .count();
    if active < quorum {
        return Err(Status::failed_precondition(format!(
            "removing this manager would leave {active} reachable of {} managers, short of a quorum of \
             {quorum}; bring managers back first",
            remaining.len()
        )));
    }
    Ok(())
}

fn new_unlock_key() -> Result<UnlockKey, Status> {
    let key = Key::generate().map_err(|e| Status::internal(e.to_string()))?;
    Ok(UnlockKey { key: key.expose().to_vec() })
}

fn unlock_key_info(cluster: &Cluster) -> UnlockKeyInfo {
    let key = crate::manager::cluster_unlock_key(cluster);
    UnlockKeyInfo { key: key.map(|k| format_unlock_key(&k)).unwrap_or_default() }
}

fn check_removable(shared: &Shared, node: &Node, force: bool) -> Result<(), Status> {
    if node.id == shared.local_node_id {
        return Err(Status::failed_precondition(
            "this manager cannot remove itself; run 'shoal swarm leave --force' on it instead",
        ));
    }
    if shared.members()?.iter().any(|m| m.node_id == node.id) && !force {
        return Err(Status::failed_precondition(format!(
            "node {} is a manager: removing it also takes it out of the managers' raft group; \
             use --force to do so",
            node.id
        )));
    }
    if node.state() == NodeState::Ready && !force {
        return Err(Status::failed_precondition(format!(
            "node {} ({}) is Ready: stop it or run 'shoal swarm leave' on it first, or use --force",
            node.id, node.hostname
        )));
    }
    Ok(())
}

/// Records that every certificate `node` holds is revoked (a removal) or superseded (a role
/// change), forgetting revocations that have expired meanwhile.
fn revoke(cluster: &mut Cluster, node: &Node, superseded: bool) {
    forget_expired_revocations(cluster);
    cluster.revoked.push(Revoked {
        node_id: node.id.clone(),
        serials: node.serials.clone(),
        until_unix: node.certificate.as_ref().map(|c| c.not_after_unix).unwrap_or(0),
        superseded,
    });
}

/// Drops revocations whose certificates have all expired (an expired certificate fails every
/// TLS check anyway), so the list every node is sent does not grow for ever. An entry without a
/// known expiry is kept.
fn forget_expired_revocations(cluster: &mut Cluster) {
    let now = crate::manager::unix(std::time::SystemTime::now());
    cluster.revoked.retain(|r| r.until_unix <= 0 || r.until_unix > now);
}

// ---------------------------------------------------------------------------------------------
// People: every control call decides on the caller's grants (see `crate::access`).

fn node_collection(n: &Node) -> &str {
    access::collection_of(&n.labels, access::SYSTEM_COLLECTION)
}

fn labelled(labels: &std::collections::HashMap<String, String>) -> Result<String, Status> {
    let c = access::collection_of(labels, access::DEFAULT_COLLECTION).to_string();
    access::check_collection(&c)?;
    Ok(c)
}

fn kind_op(kind: i32, op: &str) -> String {
    let word = SecretKind::try_from(kind).unwrap_or(SecretKind::Secret).word();
    format!("{word}.{op}")
}

impl ControlApi {
    fn who<T>(&self, req: &Request<T>) -> Result<Who, Status> {
        access::who(&self.shared.store, &crate::authz::caller(req))
    }

    /// Decides `op` on `object` in `collection` for the caller, recording it when it changes
    /// something or is refused.
    fn check(
        &self,
        who: &Who,
        op: &str,
        object: &str,
        collection: &str,
        changes: bool,
    ) -> Result<(), Status> {
        access::decide(&self.shared.audit, who, op, object, collection, changes)
    }

    fn guard<T>(
        &self,
        req: &Request<T>,
        op: &str,
        object: &str,
        collection: &str,
        changes: bool,
    ) -> Result<Who, Status> {
        let who = self.who(req)?;
        self.check(&who, op, object, collection, changes)?;
        Ok(who)
    }

    fn guard_node<T>(
        &self,
        req: &Request<T>,
        reference: &str,
        op: &str,
        changes: bool,
    ) -> Result<Who, Status> {
        let who = self.who(req)?;
        let nodes = self.shared.store.list::<Node>()?;
        let node = match resolve_node(&nodes, reference) {
            Ok(n) => n,
            // A user learns nothing about nodes they cannot see.
            Err(e) if matches!(who, Who::User(_)) && e.code() == tonic::Code::NotFound => {
                self.check(&who, op, reference, access::SYSTEM_COLLECTION, changes)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.check(&who, op, &format!("node:{}", node.hostname), node_collection(node), changes)?;
        Ok(who)
    }

    async fn service_of(&self, reference: &str) -> Result<Service, Status> {
        let got =
            crate::services::get(&self.shared, GetServiceRequest { reference: reference.into() })
                .await?;
        got.service.ok_or_else(|| Status::not_found(format!("no such service: {reference}")))
    }

    async fn guard_service<T>(
        &self,
        req: &Request<T>,
        reference: &str,
        op: &str,
        changes: bool,
    ) -> Result<Who, Status> {
        let who = self.who(req)?;
        if let Who::User(_) = who {
            let s = self.service_of(reference).await?;
            let spec = s.spec.unwrap_or_default();
            self.check(
                &who,
                op,
                &format!("service:{}", spec.name),
                &labelled(&spec.labels)?,
                changes,
            )?;
        } else {
            self.check(&who, op, &format!("service:{reference}"), "/", changes)?;
        }
        Ok(who)
    }

    /// What creating or changing a service to `spec` needs beyond `service.create|update`:
    /// `service.widen` for host-widening options `old` did not have, and `secret.use`,
    /// `config.use` and `network.use` for each secret, config and network it newly names.
    fn check_service_spec(
        &self,
        who: &Who,
        spec: &ServiceSpec,
        old: Option<&ServiceSpec>,
    ) -> Result<(), Status> {
        let collection = labelled(&spec.labels)?;
        let object = format!("service:{}", spec.name);
        let c = spec.container.clone().unwrap_or_default();
        let old_c = old.and_then(|o| o.container.clone()).unwrap_or_default();
        let old_wide = access::widenings(&old_c);
        if let Some(w) = access::widenings(&c).into_iter().find(|w| !old_wide.contains(w)) {
            self.check(who, "service.widen", &format!("{object} ({w})"), &collection, true)?;
        }
        if !matches!(who, Who::User(_)) {
            return Ok(());
        }
        let secrets = self.shared.store.list::<shoal_proto::Secret>()?;
        for (kind, refs, old_refs) in [
            (SecretKind::Secret, &c.secrets, &old_c.secrets),
            (SecretKind::Config, &c.configs, &old_c.configs),
        ] {
            for r in refs {
                let same = |o: &&shoal_proto::SecretReference| {
                    (!r.secret_id.is_empty() && o.secret_id == r.secret_id)
                        || (!r.secret_name.is_empty() && o.secret_name == r.secret_name)
                };
                if old_refs.iter().any(|o| same(&o)) {
                    continue;
                }
                let found = secrets.iter().find(|s| {
                    s.kind() == kind
                        && (s.id == r.secret_id
                            || (!r.secret_name.is_empty() && s.name == r.secret_name))
                });
                let name = found.map(|s| s.name.clone()).unwrap_or_else(|| r.secret_name.clone());
                let coll = match found {
                    Some(s) => labelled(&s.labels)?,
                    None => access::DEFAULT_COLLECTION.to_string(),
                };
                let op = format!("{}.use", kind.word());
                self.check(who, &op, &format!("{}:{name}", kind.word()), &coll, true)?;
            }
        }
        let networks = self.shared.store.list::<shoal_proto::Network>()?;
        let old_nets = old.map(|o| o.networks.clone()).unwrap_or_default();
        for n in &spec.networks {
            if old_nets.iter().any(|o| o.target == n.target) {
                continue;
            }
            let found = networks
                .iter()
                .find(|x| x.id == n.target || x.spec.as_ref().is_some_and(|s| s.name == n.target));
            if let Some(net) = found {
                let s = net.spec.clone().unwrap_or_default();
                self.check(
                    who,
                    "network.use",
                    &format!("network:{}", s.name),
                    &labelled(&s.labels)?,
                    true,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod revocation_tests {
    use super::*;

    #[test]
    fn expired_revocations_are_forgotten_and_live_or_undated_ones_kept() {
        let now = crate::manager::unix(std::time::SystemTime::now());
        let entry =
            |id: &str, until_unix| Revoked { node_id: id.into(), until_unix, ..Default::default() };
        let mut cluster = Cluster {
            revoked: vec![entry("old", now - 10), entry("live", now + 3600), entry("undated", 0)],
            ..Default::default()
        };
        forget_expired_revocations(&mut cluster);
        let kept: Vec<_> = cluster.revoked.iter().map(|r| r.node_id.as_str()).collect();
        assert_eq!(kept, ["live", "undated"]);
    }
}
