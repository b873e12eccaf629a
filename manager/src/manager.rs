//! Owns a running manager: its Raft member, the replicated store, the cluster's CA signer and
//! revocation list, and the gRPC services built on them. Never touches the agent side of the node.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_pki::{
    IssuedCert, ManagerTrust, NodeKey, ReloadableCert, Revocations, Role, RootCa, TrustRoots,
};
use shoal_proto::{
    Availability, Cluster, ManagerSet, Member, Node, NodeCertificate, NodeRole, NodeState,
    UnlockKey,
};
use tonic::Status;

use crate::authz::NodeRoles;
use crate::config::{new_cluster, raft_config};
pub use crate::config::{
    validate_election_timeout, validate_heartbeat, ConfigError, InitParams,
    DEFAULT_ELECTION_TIMEOUT, DEFAULT_HEARTBEAT, RAFT_TICK,
};
use crate::data_dir::{key_files, load_dek, open_parts, Parts};
use crate::dispatcher::Sessions;
use crate::raft::crypto::Key;
use crate::raft::node::RaftConfig;
use crate::raft::node::{self, RaftHandle};
use crate::raft::rotation::DataKeyState;
use crate::raft::transport::Peers;
use crate::store::{Store, StoreError};
use crate::tokens;

/// How long a new member may take to receive the cluster's state.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Errors of starting or running a manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] shoal_pki::PkiError),
    #[error(transparent)]
    Crypto(#[from] crate::raft::crypto::CryptoError),
    #[error("the manager store at {path} could not be opened: {source}")]
    OpenDb { path: String, source: sled::Error },
    #[error("serving gRPC failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A setting of `swarm init` or the daemon outside its bounds.
    #[error("invalid setting: {0}")]
    Config(#[from] ConfigError),
    /// `swarm init` on a data dir that already holds a cluster.
    #[error("invalid setting: this data dir already holds a cluster")]
    AlreadyInitialized,
    /// `--force-new-cluster` on a node whose data never belonged to a manager.
    #[error("invalid setting: this node's manager data has no raft ID; it never became a manager")]
    NeverAManager,
    /// A manager's data from a join that stopped before it got its Raft ID.
    #[error("invalid setting: this manager's data has no raft ID; it never finished joining")]
    JoinUnfinished,
    #[error("{0}")]
    Join(String),
}

/// State shared by every service of one manager.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub cluster_id: String,
    /// The roots this manager trusts (both during a root rotation), as the cluster says.
    pub roots: Arc<TrustRoots>,
    signer: Mutex<Option<(String, Arc<RootCa>)>>,
    pub revocations: Arc<Revocations>,
    /// Each node's current role, for the authorization layer.
    pub roles: Arc<NodeRoles>,
    /// The managers this manager's own outgoing calls accept (Raft peers, forwarding).
    pub trust: Arc<ManagerTrust>,
    pub sessions: Sessions,
    pub hub: crate::assignments::Hub,
    pub status_batcher: Mutex<Option<tokio::sync::mpsc::Sender<crate::assignments::StatusReport>>>,
    pub logs: crate::logs::LogRouter,
    pub local_node_id: String,
    pub raft: RaftHandle,
    pub peers: Arc<Peers>,
    pub tls: Arc<rustls::ClientConfig>,
    /// Flips to true when the manager stops, ending long-lived inbound streams.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// Bytes of unfinished inbound Raft messages per peer.
    pub raft_inbound: Arc<crate::raft::inbound::Inbound>,
    /// Wakes nodes' open streams to check that their node is still in the cluster.
    pub removals: crate::removal::Removals,
    data_keys: Arc<DataKeyState>,
    /// How often a node may renew its certificate.
    pub renew_pace: crate::intake::Pace,
    /// Pins service images to digests; made on first use with default settings unless the
    /// daemon gave it the node's ([`Manager::use_registry`]).
    registry: Mutex<Option<shoal_registry::Client>>,
    /// Every changing call and every denied one, by whom (see `crate::access`).
    pub audit: Arc<crate::access::Audit>,
}

/// A running manager. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Manager {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) use crate::store::now_ms;

/// The cluster's unlock key, when autolock is on.
pub(crate) fn cluster_unlock_key(cluster: &Cluster) -> Option<Key> {
    let bytes = cluster.unlock_key.as_ref()?.key.as_slice();
    Some(Key::from_bytes(bytes.try_into().ok()?))
}

/// Seconds since the Unix epoch (0 if before it).
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub(crate) fn certificate(issued: &IssuedCert) -> NodeCertificate {
    NodeCertificate {
        cert_pem: issued.cert_pem.clone(),
        serial_hex: issued.serial_hex.clone(),
        not_before_unix: unix(issued.not_before),
        not_after_unix: unix(issued.not_after),
        root_digest: issued.root_digest.clone(),
    }
}

/// The record of a node that has just been issued its first certificate: state Unknown until
/// its session opens, availability Active.
pub(crate) fn new_node(
    id: String,
    role: NodeRole,
    hostname: String,
    addr: String,
    issued: &IssuedCert,
) -> Node {
    Node {
        id,
        role: role as i32,
        hostname,
        addr,
        state: NodeState::Unknown as i32,
        availability: Availability::Active as i32,
        certificate: Some(certificate(issued)),
        serials: vec![issued.serial_hex.clone()],
        serial_not_after_unix: vec![unix(issued.not_after)],
        ..Default::default()
    }
}

/// Who the local manager is.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node_id: String,
    pub cluster_id: String,
    pub root_ca_pem: String,
    pub cert: Arc<ReloadableCert>,
    /// How long this manager waits without hearing a leader before it calls an election
    /// (randomized up to twice that); see [`validate_election_timeout`].
    pub election_timeout: Duration,
}

impl Manager {
    /// Creates a new cluster in `store_dir`: cluster ID, root CA, join tokens, a one-member Raft
    /// group, and this node as its first manager, whose certificate (for `key`) is returned.
    pub async fn init(
        store_dir: &Path,
        params: InitParams,
        key: &NodeKey,
    ) -> Result<(Manager, Identity, IssuedCert), ManagerError> {
        params.validate()?;
        let dek = key_files(store_dir).create()?;
        let mut parts = open_parts(store_dir, dek)?;
        if parts.storage.is_initialized() {
            return Err(ManagerError::AlreadyInitialized);
        }
        let raft_id = new_raft_id();
        parts.storage.set_raft_id(raft_id)?;
        parts.storage.bootstrap(raft_id)?;
        let ca = RootCa::generate()?;
        let (cluster_id, node_id) = (shoal_pki::id::new_id(), shoal_pki::id::new_id());
        let csr = key.csr_der()?;
        let now = SystemTime::now();
        let issued =
            ca.sign_node_csr(&csr, &node_id, Role::Manager, &cluster_id, params.cert_expiry, now)?;
        let id = Identity {
            node_id: node_id.clone(),
            cluster_id: cluster_id.clone(),
            root_ca_pem: ca.cert_pem().to_string(),
            cert: ReloadableCert::new(&issued.cert_pem, key)?,
            election_timeout: params.election_timeout,
        };
        let manager = Manager::start(parts, &id)?;
        manager.shared.raft.campaign();
        if let Err(e) = manager.shared.raft.wait_for_leader(Duration::from_secs(10)).await {
            manager.stop();
            return Err(e.into());
        }
        let mut cluster = new_cluster(&cluster_id, &ca, &params);
        if params.autolock {
            cluster.unlock_key = Some(UnlockKey { key: Key::generate()?.expose().to_vec() });
        }
        let node = new_node(
            node_id.clone(),
            NodeRole::Manager,
            params.hostname,
            params.advertise_addr.clone(),
            &issued,
        );
        let member = Member {
            id: format!("{raft_id:016x}"),
            raft_id,
            node_id,
            addr: params.advertise_addr,
            ..Default::default()
        };
        manager
            .store()
            .update(|tx| {
                tx.create(cluster.clone())?;
                tx.create(node.clone())?;
                tx.create(member.clone())
            })
            .await?;
        Ok((manager, id, issued))
    }

    /// Opens the manager whose data is in `store_dir` (a restart). A locked manager needs the
    /// swarm's unlock key (`CryptoError::Locked` otherwise).
    pub fn open(
        store_dir: &Path,
        id: &Identity,
        unlock: Option<&str>,
    ) -> Result<Manager, ManagerError> {
        let parts = open_parts(store_dir, load_dek(store_dir, unlock)?)?;
        Manager::start(parts, id)
    }

    /// Whether the manager data in `store_dir` is locked (autolock) and needs the unlock key.
    pub fn is_locked(store_dir: &Path) -> bool {
        key_files(store_dir).is_locked()
    }

    /// `swarm init --force-new-cluster`: reopens this manager's data as the only member of a
    /// new Raft group, keeping all committed state, and forgets the other managers.
    pub async fn force_new_cluster(
        store_dir: &Path,
        id: &Identity,
        unlock: Option<&str>,
    ) -> Result<Manager, ManagerError> {
        let mut parts = open_parts(store_dir, load_dek(store_dir, unlock)?)?;
        let raft_id = parts.storage.raft_id()?.ok_or(ManagerError::NeverAManager)?;
        parts.storage.force_new_cluster(raft_id)?;
        let manager = Manager::start(parts, id)?;
        manager.shared.raft.campaign();
        manager.shared.raft.wait_for_leader(Duration::from_secs(10)).await?;
        let others: Vec<String> = manager
            .shared
            .members()?
            .into_iter()
            .filter(|m| m.raft_id != raft_id)
            .map(|m| m.id)
            .collect();
        manager
            .store()
            .update(|tx| {
                for id in &others {
                    tx.delete::<Member>(id)?;
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        tracing::warn!(
            dropped = others.len(),
            "forced a new one-manager cluster from this manager's state"
        );
        Ok(manager)
    }

    /// Prepares a new, empty member for a cluster this node joined as a manager; it serves
    /// nothing useful until [`Manager::join_raft`] has added it and it has caught up.
    pub fn prepare_join(store_dir: &Path, id: &Identity) -> Result<Manager, ManagerError> {
        let dek = key_files(store_dir).create()?;
        let mut parts = open_parts(store_dir, dek)?;
        parts.storage.set_raft_id(new_raft_id())?;
        Manager::start(parts, id)
    }

    fn start(parts: Parts, id: &Identity) -> Result<Manager, ManagerError> {
        let raft_id = parts.storage.raft_id()?.ok_or(ManagerError::JoinUnfinished)?;
        let revocations = Arc::new(Revocations::default());
        let trust = ManagerTrust::with_revocations(revocations.clone());
        let roots = TrustRoots::new(&id.root_ca_pem)?;
        let tls = Arc::new(shoal_pki::tls::manager_client_config(
            roots.clone(),
            Some(id.cert.clone()),
            trust.clone(),
        ));
        let lookup_store = parts.store.clone();
        let roles = Arc::new(NodeRoles::with_lookup(Box::new(move |node_id| {
            lookup_store.get::<Node>(node_id).ok().flatten().map(|n| Role::from(n.role()))
        })));
        let peers = Peers::new(tls.clone(), parts.store.clone());
        peers.follow_members();
        let raft = node::spawn(
            RaftConfig { node: id.node_id.clone(), ..raft_config(raft_id, id.election_timeout) },
            parts.storage,
            parts.store.clone(),
            peers.clone(),
        )?;
        peers.attach(raft.clone());
        parts.store.set_proposer(Arc::new(raft.clone()));
        let shared = Shared {
            store: parts.store,
            cluster_id: id.cluster_id.clone(),
            roots,
            signer: Mutex::new(None),
            revocations,
            roles,
            trust,
            sessions: Sessions::default(),
            hub: Default::default(),
            status_batcher: Mutex::new(None),
            logs: Default::default(),
            local_node_id: id.node_id.clone(),
            raft,
            peers,
            tls,
            closing: tokio::sync::watch::Sender::new(false),
            raft_inbound: Default::default(),
            removals: Default::default(),
            data_keys: parts.data_keys,
            renew_pace: Default::default(),
            registry: Mutex::new(None),
            audit: parts.audit,
        };
        shared.refresh_access();
        shared.refresh_roots();
        let manager = Manager { shared: Arc::new(shared) };
        manager.spawn_revocation_watch();
        manager.spawn_removal_watch();
        manager.spawn_trust_renewal();
        manager.spawn_root_rotation();
        // Finishes a rotation a crash interrupted (the key file still holds two keys).
        manager.shared.maybe_rotate_data_key();
        Ok(manager)
    }

    /// On the leader, renews content-trust timestamps before they expire (checking at an
    /// eighth of their lifetime, at most hourly, and at once when the cluster's settings
    /// change).
    fn spawn_trust_renewal(&self) {
        let weak = Arc::downgrade(&self.shared);
        let mut events = self.shared.store.watch();
        tokio::spawn(async move {
            loop {
                let Some(shared) = weak.upgrade() else { return };
                let spec = shared.cluster().ok().and_then(|c| c.spec);
                let life = crate::trust::lifetime(spec.as_ref());
                drop(shared);
                let pause = (life / 8).clamp(Duration::from_millis(200), Duration::from_secs(3600));
                let sleep = tokio::time::sleep(pause);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        e = events.recv() => match e {
                            Ok(e) if e.kind != "cluster" => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                            _ => break,
                        },
                    }
                }
                let Some(shared) = weak.upgrade() else { return };
                if shared.raft.status().is_leader {
                    if let Err(e) = crate::trust::renew(&shared).await {
                        tracing::warn!(error = %e.message(), "could not renew content-trust timestamps");
                    }
                }
            }
        });
    }

    fn spawn_revocation_watch(&self) {
        let weak = Arc::downgrade(&self.shared);
        let mut events = self.shared.store.watch();
        tokio::spawn(async move {
            loop {
                let event = events.recv().await;
                let Some(shared) = weak.upgrade() else { return };
                match event {
                    Ok(e) if e.kind == "node" => shared.refresh_role(&e.id),
                    Ok(e) if e.kind == "cluster" => {
                        shared.refresh_revocations();
                        shared.refresh_roots();
                        shared.sync_key_files();
                    }
                    Ok(e) if e.kind != "snapshot" => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    // A snapshot, or events missed: everything may have changed.
                    _ => {
                        shared.refresh_access();
                        shared.refresh_roots();
                        shared.sync_key_files();
                    }
                }
            }
        });
    }

    /// Divides the shortest time between two renewals of one node, like the agents'
    /// `--test-time-scale` divides their renewal waits.
    pub fn set_time_scale(&self, scale: f64) {
        self.shared.renew_pace.set_time_scale(scale);
    }

    /// The cluster ID.
    pub fn cluster_id(&self) -> &str {
        &self.shared.cluster_id
    }

    /// The root CA (PEM) that join tokens pin: the old one until a rotation ends.
    pub fn root_ca_pem(&self) -> Result<String, ManagerError> {
        Ok(self.shared.pinned_root()?)
    }

    /// The roots this manager trusts now (shared by its server and its clients).
    pub fn roots(&self) -> Arc<TrustRoots> {
        self.shared.roots.clone()
    }

    /// The revocation list consulted at every handshake and call.
    pub fn revocations(&self) -> Arc<Revocations> {
        self.shared.revocations.clone()
    }

    /// Reaches registries with `client` (the node's certs.d and insecure registries) when
    /// pinning service images.
    pub fn use_registry(&self, client: shoal_registry::Client) {
        *self.shared.registry.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
    }

    /// The store (read access for the daemon and tests).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// This manager's Raft member.
    pub fn raft(&self) -> &RaftHandle {
        &self.shared.raft
    }

    /// The current join token string of a role.
    pub fn join_token(&self, role: Role) -> Result<String, ManagerError> {
        let cluster = self.shared.cluster()?;
        let tokens = cluster.join_tokens.unwrap_or_default();
        let rec = tokens::record(&tokens, role).cloned().unwrap_or_default();
        Ok(tokens::encode(&self.root_ca_pem()?, &rec))
    }

    /// The swarm's unlock key in text form, when autolock is on.
    pub fn unlock_key(&self) -> Result<Option<String>, ManagerError> {
        let cluster = self.shared.cluster()?;
        Ok(cluster_unlock_key(&cluster).map(|k| crate::raft::crypto::format_unlock_key(&k)))
    }

    /// This manager's data key rotation epoch and whether a rotation is unfinished.
    pub fn data_key_status(&self) -> (u64, bool) {
        self.shared.data_keys.status()
    }

    /// Addresses of the managers, the leader first.
    pub fn manager_addrs(&self) -> Result<Vec<String>, ManagerError> {
        Ok(self.shared.manager_addrs()?)
    }

    /// Stops this manager's Raft member and closes its agent sessions (for shutdown).
    pub fn stop(&self) {
        self.shared.stop();
    }

    /// Waits until this member holds the cluster's state (after joining).
    pub async fn wait_caught_up(&self) -> Result<(), ManagerError> {
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        while self.shared.cluster().is_err() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ManagerError::Join(
                    "timed out receiving the cluster's state from the leader".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.shared.refresh_access();
        self.shared.sync_key_files();
        Ok(())
    }
}

fn new_raft_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

impl Shared {
    /// The client that pins service images to digests.
    pub(crate) fn registry(&self) -> Result<shoal_registry::Client, shoal_registry::RegistryError> {
        let mut slot = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = shoal_registry::Client::new(shoal_registry::Settings::default())?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The cluster object.
    pub fn cluster(&self) -> Result<Cluster, StoreError> {
        self.store.get::<Cluster>(&self.cluster_id)?.ok_or_else(|| {
            StoreError::Unavailable(
                "this manager has not received the cluster's state yet; retry".into(),
            )
        })
    }

    /// The CA signer, loaded from the store (cached while the stored CA is unchanged): during
    /// a root rotation the new root, whose certificates carry its cross-signed copy.
    pub fn signer(&self, cluster: &Cluster) -> Result<Arc<RootCa>, Status> {
        let root = cluster.root_ca.clone().unwrap_or_default();
        let (cert_pem, key_pem, cross) = match &cluster.root_rotation {
            Some(r) => (&r.cert_pem, &r.key_pem, Some(&r.cross_signed_pem)),
            None => (&root.cert_pem, &root.key_pem, None),
        };
        // Keyed by the root and its cross-signed copy: the same root signs without it once
        // its rotation has ended.
        let cache_key = format!("{cert_pem}{}", cross.map(String::as_str).unwrap_or_default());
        let mut cached = self.signer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, ca)) = cached.as_ref() {
            if *key == cache_key {
                return Ok(ca.clone());
            }
        }
        let mut ca = RootCa::from_pem(cert_pem, key_pem)
            .map_err(|e| Status::internal(format!("the stored CA is unusable: {e}")))?
            .with_expiry_floor(self.renew_pace.expiry_floor());
        if let Some(cross) = cross {
            ca = ca.with_intermediate(cross);
        }
        let ca = Arc::new(ca);
        *cached = Some((cache_key, ca.clone()));
        Ok(ca)
    }

    /// Wraps this manager's data key the way the cluster says: with the unlock key when autolock
    /// is on (no key file left on disk), with a local key file when it is off; and rotates it
    /// when the cluster asks for a newer one.
    pub(crate) fn sync_key_files(self: &Arc<Self>) {
        let Ok(cluster) = self.cluster() else { return };
        if let Err(e) = self.data_keys.wrap(cluster_unlock_key(&cluster).as_ref()) {
            tracing::error!(error = %e, "could not re-wrap this manager's data key");
        }
        self.maybe_rotate_data_key();
    }

    /// Starts a data key rotation in the background if the cluster's epoch is newer than this
    /// manager's, or one was left unfinished.
    fn maybe_rotate_data_key(self: &Arc<Self>) {
        let epoch = self.cluster().map(|c| c.data_key_epoch).unwrap_or(0);
        if !self.data_keys.needs_rotation(epoch) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::task::spawn_blocking(move || {
            let Some(shared) = weak.upgrade() else { return };
            let unlock = || shared.cluster().ok().and_then(|c| cluster_unlock_key(&c));
            if let Err(e) = shared.data_keys.rotate(epoch, unlock) {
                tracing::error!(error = %e, "data key rotation failed; it is retried at the next start or cluster change");
            }
        });
    }

    /// Reloads everything the authorization layer and the manager's own clients consult.
    fn refresh_access(&self) {
        self.refresh_revocations();
        if let Ok(nodes) = self.store.list::<Node>() {
            self.roles.replace_all(nodes.iter().map(|n| (n.id.clone(), Role::from(n.role()))));
            self.trust.set_managers(self.roles.managers());
        }
    }

    fn refresh_revocations(&self) {
        if let Ok(cluster) = self.cluster() {
            self.roles.set_complete();
            let (superseded, removed): (Vec<_>, Vec<_>) =
                cluster.revoked.iter().partition(|r| r.superseded);
            self.revocations.replace_all(
                removed.iter().map(|r| r.node_id.clone()),
                removed.iter().flat_map(|r| r.serials.clone()),
            );
            self.revocations.replace_superseded(superseded.iter().flat_map(|r| r.serials.clone()));
        }
    }

    /// Takes in a node's current role (after a change to the node); the nodes this manager's
    /// own clients accept as managers follow.
    pub(crate) fn refresh_role(&self, node_id: &str) {
        let Ok(node) = self.store.get::<Node>(node_id) else { return };
        let role = node.map(|n| Role::from(n.role()));
        let before = self.roles.set(node_id, role);
        if (before == Some(Role::Manager)) != (role == Some(Role::Manager)) {
            self.trust.set_managers(self.roles.managers());
        }
    }

    /// The managers (every node the store makes a manager, joining ones included) and the
    /// revocations every node is told, so that it refuses a server that is no longer a manager
    /// (demoted or removed) even though its certificate chains to the root.
    pub fn manager_set(&self) -> ManagerSet {
        let mut set = ManagerSet { node_ids: self.trust.managers(), ..Default::default() };
        for r in self.cluster().map(|c| c.revoked).unwrap_or_default() {
            if r.superseded {
                set.superseded_serials.extend(r.serials);
            } else {
                set.revoked_nodes.push(r.node_id);
                set.revoked_serials.extend(r.serials);
            }
        }
        set
    }

    /// The Raft members.
    pub fn members(&self) -> Result<Vec<Member>, StoreError> {
        self.store.list::<Member>()
    }

    /// Address of the current leader, if known.
    pub fn leader_addr(&self) -> Option<String> {
        let leader = self.raft.status().leader;
        self.store.get::<Member>(&format!("{leader:016x}")).ok().flatten().map(|m| m.addr)
    }

    /// Stops this manager's Raft member and closes its agent sessions (for shutdown).
    pub fn stop(&self) {
        self.closing.send_replace(true);
        self.sessions.clear();
        self.raft.stop();
    }

    /// Addresses of the managers, the leader first.
    pub fn manager_addrs(&self) -> Result<Vec<String>, StoreError> {
        let leader = self.raft.status().leader;
        let mut members = self.members()?;
        members.sort_by_key(|m| (m.raft_id != leader, m.addr.clone()));
        Ok(members.into_iter().map(|m| m.addr).collect())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match e {
            StoreError::NotFound { .. } => Status::not_found(e.to_string()),
            StoreError::Exists { .. } => Status::already_exists(e.to_string()),
            StoreError::Conflict { .. } | StoreError::Contended => Status::aborted(e.to_string()),
            StoreError::Unavailable(_) => Status::unavailable(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}
