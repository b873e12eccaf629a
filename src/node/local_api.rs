//! Owns the root-only unix socket: the Daemon service (init, join, leave, info) and the Control
//! service, which it hands to this node's manager or refuses on a worker.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_manager::authz::{AuthzLayer, Transport};
use shoal_proto::control_server::{Control, ControlServer};
use shoal_proto::daemon_server::{Daemon as DaemonRpc, DaemonServer};
use shoal_proto::*;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::node::daemon::{Daemon, InitOptions, JoinOptions};
use shoal_agent::volume::{VolumeError, VolumeInfo, Volumes};

/// Serves the local socket at `path` until `shutdown` resolves.
pub async fn serve(
    daemon: Arc<Daemon>,
    path: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()))
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    let images = Arc::new(crate::node::images::Images::new(
        daemon.files().root().join("images"),
        daemon.registry().clone(),
    ));
    let api = LocalApi { daemon, images };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .layer(AuthzLayer::new(Transport::Local))
        .add_service(DaemonServer::new(api.clone()))
        .add_service(ControlServer::new(api))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stopped.await;
        });
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => return Ok(served?),
        () = shutdown => {}
    }
    // Calls in flight get a moment; one that never ends by itself (`service logs --follow`)
    // must not hold up the shutdown.
    let _ = stop.send(());
    match tokio::time::timeout(DRAIN, &mut server).await {
        Ok(served) => served?,
        Err(_) => tracing::info!("closing calls still open on the local socket"),
    }
    Ok(())
}

/// How long calls in flight on the local socket get to finish once shoald shuts down.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone, Debug)]
struct LocalApi {
    daemon: Arc<Daemon>,
    images: Arc<crate::node::images::Images>,
}

fn failed(e: anyhow::Error) -> Status {
    Status::failed_precondition(format!("{e:#}"))
}

fn volume_status(e: VolumeError) -> Status {
    match e {
        VolumeError::BadName(_) => Status::invalid_argument(e.to_string()),
        VolumeError::NotFound(_) => Status::not_found(e.to_string()),
        VolumeError::InUse { .. } => Status::failed_precondition(e.to_string()),
        VolumeError::Io { .. } => Status::internal(e.to_string()),
    }
}

fn volume_wire(v: VolumeInfo) -> Volume {
    Volume {
        name: v.name,
        driver: "local".into(),
        mountpoint: v.mountpoint.display().to_string(),
        created_at_unix: v.created_at_unix,
        labels: v.labels.into_iter().collect(),
        tasks: v.tasks,
        size: v.size.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX)),
    }
}

/// Runs a volume call off the async threads (it may copy or delete a whole tree).
async fn on_volumes<T: Send + 'static>(
    daemon: &Daemon,
    f: impl FnOnce(&Volumes) -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, Status> {
    let volumes = daemon.volumes().await;
    tokio::task::spawn_blocking(move || f(&volumes))
        .await
        .map_err(|e| Status::internal(format!("volume call failed: {e}")))?
        .map_err(volume_status)
}

fn duration(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

#[tonic::async_trait]
impl DaemonRpc for LocalApi {
    async fn image_load(
        &self,
        req: Request<ImageLoadRequest>,
    ) -> Result<Response<ImageList>, Status> {
        self.images.load(req.into_inner().path).await.map(Response::new)
    }

    async fn image_import(
        &self,
        req: Request<ImageImportRequest>,
    ) -> Result<Response<ImageList>, Status> {
        let r = req.into_inner();
        self.images.import(r.path, r.reference).await.map(Response::new)
    }

    async fn image_ls(&self, _req: Request<ImageLsRequest>) -> Result<Response<ImageList>, Status> {
        self.images.list().await.map(Response::new)
    }

    async fn image_rm(
        &self,
        req: Request<ImageRmRequest>,
    ) -> Result<Response<ImageRmResponse>, Status> {
        let in_use = self.daemon.images_in_use().await;
        let id = self.images.remove(req.into_inner().reference, in_use).await?;
        Ok(Response::new(ImageRmResponse { id }))
    }

    async fn image_pull(
        &self,
        req: Request<ImagePullRequest>,
    ) -> Result<Response<ImageList>, Status> {
        let r = req.into_inner();
        self.images.pull(r.reference, r.auth).await.map(Response::new)
    }

    async fn image_push(
        &self,
        req: Request<ImagePushRequest>,
    ) -> Result<Response<ImagePushResponse>, Status> {
        let r = req.into_inner();
        self.images.push(r.reference, r.auth).await.map(Response::new)
    }

    async fn image_tag(
        &self,
        req: Request<ImageTagRequest>,
    ) -> Result<Response<ImageList>, Status> {
        let r = req.into_inner();
        self.images.tag(r.source, r.target).await.map(Response::new)
    }

    async fn image_prune(
        &self,
        _req: Request<ImagePruneRequest>,
    ) -> Result<Response<ImagePruneResponse>, Status> {
        let in_use = self.daemon.images_in_use().await;
        self.images.prune(in_use).await.map(Response::new)
    }

    async fn image_check_user(
        &self,
        req: Request<ImageCheckUserRequest>,
    ) -> Result<Response<ImageCheckUserResponse>, Status> {
        let r = req.into_inner();
        let checked = self.images.check_user(r.reference, r.user).await?;
        Ok(Response::new(ImageCheckUserResponse { checked }))
    }

    async fn image_scan(
        &self,
        req: Request<ImageScanRequest>,
    ) -> Result<Response<ImageScanResponse>, Status> {
        let (report, advisories) = self.images.scan(req.into_inner().reference).await?;
        Ok(Response::new(ImageScanResponse { report, advisories }))
    }

    async fn image_verify_cosign(
        &self,
        req: Request<ImageVerifyCosignRequest>,
    ) -> Result<Response<ImageVerifyCosignResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.images.verify_cosign(r.reference, r.public_key_pem, r.auth).await?))
    }

    async fn scan_db_import(
        &self,
        req: Request<ScanDbImportRequest>,
    ) -> Result<Response<ScanDbImportResponse>, Status> {
        let (imported, advisories) = self.images.import_advisories(req.into_inner().path).await?;
        Ok(Response::new(ScanDbImportResponse { imported, advisories }))
    }

    async fn volume_create(
        &self,
        req: Request<VolumeCreateRequest>,
    ) -> Result<Response<Volume>, Status> {
        let r = req.into_inner();
        let labels = r.labels.into_iter().collect();
        let v = on_volumes(&self.daemon, move |v| v.create(&r.name, labels)).await?;
        Ok(Response::new(volume_wire(v)))
    }

    async fn volume_list(
        &self,
        _req: Request<VolumeListRequest>,
    ) -> Result<Response<VolumeListResponse>, Status> {
        let list = on_volumes(&self.daemon, |v| v.list()).await?;
        Ok(Response::new(VolumeListResponse {
            volumes: list.into_iter().map(volume_wire).collect(),
        }))
    }

    async fn volume_inspect(
        &self,
        req: Request<VolumeInspectRequest>,
    ) -> Result<Response<Volume>, Status> {
        let r = req.into_inner();
        let v = on_volumes(&self.daemon, move |v| v.inspect(&r.name, r.size)).await?;
        Ok(Response::new(volume_wire(v)))
    }

    async fn volume_remove(
        &self,
        req: Request<VolumeRemoveRequest>,
    ) -> Result<Response<VolumeRemoveResponse>, Status> {
        let name = req.into_inner().name;
        on_volumes(&self.daemon, move |v| v.remove(&name)).await?;
        Ok(Response::new(VolumeRemoveResponse {}))
    }

    async fn volume_prune(
        &self,
        req: Request<VolumePruneRequest>,
    ) -> Result<Response<VolumePruneResponse>, Status> {
        let r = req.into_inner();
        let (removed, bytes) =
            on_volumes(&self.daemon, move |v| v.prune(r.all, &r.label_filters)).await?;
        Ok(Response::new(VolumePruneResponse { removed, bytes }))
    }

    async fn registry_login(
        &self,
        req: Request<RegistryLoginRequest>,
    ) -> Result<Response<RegistryLoginResponse>, Status> {
        self.images.login(req.into_inner().auth).await?;
        Ok(Response::new(RegistryLoginResponse {}))
    }

    async fn init(&self, req: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        let r = req.into_inner();
        let opts = InitOptions {
            listen_addr: r.listen_addr,
            advertise_addr: r.advertise_addr,
            cert_expiry: duration(r.cert_expiry_secs.saturating_mul(1000)),
            heartbeat: duration(r.heartbeat_period_ms),
            force_new_cluster: r.force_new_cluster,
            autolock: r.autolock,
            default_addr_pool: r.default_addr_pool,
            subnet_size: r.default_addr_pool_mask_length,
            data_path_port: r.data_path_port,
        };
        let (state, worker_token, manager_token) = self.daemon.init(opts).await.map_err(failed)?;
        let unlock_key = match self.daemon.manager().await {
            Some(m) => {
                m.unlock_key().map_err(|e| Status::internal(e.to_string()))?.unwrap_or_default()
            }
            None => String::new(),
        };
        Ok(Response::new(InitResponse {
            node_id: state.node_id,
            cluster_id: state.cluster_id,
            worker_token,
            manager_token,
            advertise_addr: state.advertise_addr,
            unlock_key,
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let r = req.into_inner();
        let opts = JoinOptions {
            token: r.token,
            remote_addr: r.remote_addr,
            listen_addr: r.listen_addr,
            advertise_addr: r.advertise_addr,
        };
        let state = self.daemon.join(opts).await.map_err(failed)?;
        let role = NodeRole::from(state.role) as i32;
        Ok(Response::new(JoinResponse { node_id: state.node_id, role }))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        self.daemon.leave(req.get_ref().force).await.map_err(failed)?;
        Ok(Response::new(LeaveResponse {}))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        self.daemon.unlock(&req.get_ref().key).await.map_err(failed)?;
        Ok(Response::new(UnlockResponse {}))
    }

    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let info = self.daemon.info().await;
        let mut resp = InfoResponse {
            swarm_state: "inactive".into(),
            data_root: self.daemon.files().root().display().to_string(),
            security: self.daemon.security().await,
            ..Default::default()
        };
        if let Some(state) = &info.state {
            node_fields(&mut resp, state);
        }
        if let Some(id) = &info.identity {
            resp.cert_not_after_unix = shoal_manager::manager::unix(id.not_after);
            resp.cert_serial = id.serial_hex.clone();
        }
        if info.locked {
            resp.swarm_state = "locked".into();
            resp.is_manager = true;
            resp.error = crate::node::daemon::LOCKED.into();
            return Ok(Response::new(resp));
        }
        if info.state.is_some() && info.identity.is_some() {
            resp.swarm_state = if info.agent.connected { "active" } else { "pending" }.into();
            resp.manager_addrs = info.agent.manager_addrs;
            resp.is_manager = info.manager.is_some();
            resp.error = info.addr_pending.or(info.agent.error).unwrap_or_default();
            resp.cert_renewals = info.agent.renewals;
        }
        if let Some(manager) = info.manager {
            let nodes = manager.store().list::<Node>().map_err(Status::from)?;
            resp.nodes = nodes.len() as u32;
            resp.managers = nodes.iter().filter(|n| n.role() == NodeRole::Manager).count() as u32;
        }
        Ok(Response::new(resp))
    }
}

/// What `info` shows from the node's saved membership.
fn node_fields(resp: &mut InfoResponse, state: &shoal_agent::NodeState) {
    resp.node_id = state.node_id.clone();
    resp.role = NodeRole::from(state.role) as i32;
    resp.cluster_id = state.cluster_id.clone();
    resp.node_addr = state.advertise_addr.clone();
    resp.manager_addrs = state.manager_addrs.clone();
}

impl LocalApi {
    /// This node's control API, or why it has none: a locked manager says how to unlock it.
    async fn control(&self) -> Result<shoal_manager::control::ControlApi, Status> {
        // Asked first: `unlock` holds this state until the manager is in place.
        if self.daemon.is_locked().await {
            return Err(Status::failed_precondition(crate::node::daemon::LOCKED));
        }
        match self.daemon.manager().await {
            Some(m) => Ok(m.control()),
            None => Err(Status::failed_precondition(
                "this node is not a swarm manager; run the command on a manager node (or join or init a swarm first)",
            )),
        }
    }
}

/// Each Control call goes to this node's manager, with the local operator's authority.
macro_rules! delegate {
    ($($method:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl Control for LocalApi {
            $(async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                self.control().await?.$method(req).await
            })*

            type ServiceLogsStream =
                <shoal_manager::control::ControlApi as Control>::ServiceLogsStream;

            async fn service_logs(
                &self,
                req: Request<ServiceLogsRequest>,
            ) -> Result<Response<Self::ServiceLogsStream>, Status> {
                self.control().await?.service_logs(req).await
            }
        }
    };
}

delegate! {
    list_nodes(ListNodesRequest) -> ListNodesResponse;
    get_node(GetNodeRequest) -> GetNodeResponse;
    remove_node(RemoveNodeRequest) -> RemoveNodeResponse;
    update_node_role(UpdateNodeRoleRequest) -> GetNodeResponse;
    get_cluster_info(GetClusterInfoRequest) -> ClusterInfo;
    update_cluster(UpdateClusterRequest) -> ClusterInfo;
    get_join_token(GetJoinTokenRequest) -> JoinTokenInfo;
    rotate_join_token(RotateJoinTokenRequest) -> JoinTokenInfo;
    get_unlock_key(GetUnlockKeyRequest) -> UnlockKeyInfo;
    get_root_ca(GetRootCaRequest) -> RootCaInfo;
    rotate_root_ca(RotateRootCaRequest) -> RootCaInfo;
    approve_node(ApproveNodeRequest) -> GetNodeResponse;
    rotate_unlock_key(RotateUnlockKeyRequest) -> UnlockKeyInfo;
    update_node(UpdateNodeRequest) -> GetNodeResponse;
    create_service(CreateServiceRequest) -> ServiceResponse;
    update_service(UpdateServiceRequest) -> ServiceResponse;
    get_service(GetServiceRequest) -> ServiceResponse;
    list_services(ListServicesRequest) -> ListServicesResponse;
    remove_service(RemoveServiceRequest) -> RemoveServiceResponse;
    list_tasks(ListTasksRequest) -> ListTasksResponse;
    create_secret(CreateSecretRequest) -> SecretResponse;
    update_secret(UpdateSecretRequest) -> SecretResponse;
    get_secret(GetSecretRequest) -> SecretResponse;
    list_secrets(ListSecretsRequest) -> ListSecretsResponse;
    remove_secret(RemoveSecretRequest) -> RemoveSecretResponse;
    create_network(CreateNetworkRequest) -> NetworkResponse;
    get_network(GetNetworkRequest) -> NetworkResponse;
    list_networks(ListNetworksRequest) -> ListNetworksResponse;
    remove_network(RemoveNetworkRequest) -> RemoveNetworkResponse;
    create_user(UserRequest) -> UserResponse;
    get_user(UserRequest) -> UserResponse;
    list_users(ListUsersRequest) -> ListUsersResponse;
    remove_user(UserRequest) -> RemoveResponse;
    issue_user_certificate(IssueUserCertificateRequest) -> IssueUserCertificateResponse;
    create_team(TeamRequest) -> Team;
    update_team(TeamRequest) -> Team;
    list_teams(ListTeamsRequest) -> ListTeamsResponse;
    remove_team(TeamRequest) -> RemoveResponse;
    create_role(RoleRequest) -> AccessRole;
    list_roles(ListRolesRequest) -> ListRolesResponse;
    remove_role(RoleRequest) -> RemoveResponse;
    create_grant(CreateGrantRequest) -> Grant;
    list_grants(ListGrantsRequest) -> ListGrantsResponse;
    remove_grant(RemoveGrantRequest) -> RemoveResponse;
    read_audit(ReadAuditRequest) -> ReadAuditResponse;
    put_trust(PutTrustRequest) -> TrustInfo;
    get_trust(GetTrustRequest) -> TrustInfo;
}
