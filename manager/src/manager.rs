//! Owns a running manager: the store, the cluster's CA signer and revocation list, and the gRPC
//! services built on them. Never touches the agent side of the node.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_pki::{IssuedCert, NodeKey, Revocations, Role, RootCa};
use shoal_proto::{
    Availability, Cluster, ClusterSpec, JoinTokens, Node, NodeCertificate, NodeRole, NodeState,
};
use tonic::Status;

use crate::dispatcher::Sessions;
use crate::raft::crypto::{Key, KeyFiles, Sealer};
use crate::store::{Store, StoreError};
use crate::tokens::{self, TokenPolicy};

/// Default dispatcher heartbeat period (Swarm's).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

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
    #[error("the store holds no cluster object; the data dir is not a manager's (or is damaged)")]
    NoCluster,
    #[error("the store holds more than one cluster object")]
    ManyClusters,
    #[error("serving gRPC failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// What `swarm init` decides.
#[derive(Clone, Debug)]
pub struct InitParams {
    pub hostname: String,
    pub advertise_addr: String,
    pub cert_expiry: Duration,
    pub heartbeat: Duration,
}

/// State shared by every service of one manager.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Store,
    pub cluster_id: String,
    pub ca: RootCa,
    pub revocations: Arc<Revocations>,
    pub sessions: Sessions,
    pub local_node_id: String,
}

/// A running manager. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Manager {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub(crate) fn node_role(role: Role) -> NodeRole {
    match role {
        Role::Worker => NodeRole::Worker,
        Role::Manager => NodeRole::Manager,
    }
}

pub(crate) fn pki_role(role: NodeRole) -> Role {
    match role {
        NodeRole::Worker => Role::Worker,
        NodeRole::Manager => Role::Manager,
    }
}

/// Checks a certificate expiry against the cluster's bounds.
pub fn validate_cert_expiry(expiry: Duration) -> Result<(), String> {
    if expiry < shoal_pki::MIN_CERT_EXPIRY {
        return Err(format!("certificate expiry {} is below the minimum of 1h", humanize(expiry)));
    }
    Ok(())
}

/// Checks a heartbeat period.
pub fn validate_heartbeat(period: Duration) -> Result<(), String> {
    if period < Duration::from_millis(100) || period > Duration::from_secs(3600) {
        return Err(format!("heartbeat period {} must be between 100ms and 1h", humanize(period)));
    }
    Ok(())
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub(crate) fn certificate(issued: &IssuedCert) -> NodeCertificate {
    NodeCertificate {
        cert_pem: issued.cert_pem.clone(),
        serial_hex: issued.serial_hex.clone(),
        not_before_unix: unix(issued.not_before),
        not_after_unix: unix(issued.not_after),
    }
}

impl Manager {
    /// Creates a new cluster in `store_dir`: cluster ID, root CA, join tokens, and this node as
    /// its first manager, whose certificate (for `key`) is returned.
    pub async fn init(
        store_dir: &Path,
        params: InitParams,
        key: &NodeKey,
    ) -> Result<(Manager, String, IssuedCert), ManagerError> {
        validate_cert_expiry(params.cert_expiry).map_err(ManagerError::Invalid)?;
        validate_heartbeat(params.heartbeat).map_err(ManagerError::Invalid)?;
        let dek = KeyFiles::new(store_dir.join("keys")).create()?;
        let store = open_store(store_dir, &dek)?;
        if !store.list::<Cluster>()?.is_empty() {
            return Err(ManagerError::Invalid("this data dir already holds a cluster".into()));
        }
        let ca = RootCa::generate()?;
        let cluster_id = shoal_pki::id::new_id();
        let node_id = shoal_pki::id::new_id();
        let issued = ca.sign_node_csr(
            &key.csr_der()?,
            &node_id,
            Role::Manager,
            &cluster_id,
            params.cert_expiry,
            SystemTime::now(),
        )?;
        let cluster = Cluster {
            id: cluster_id.clone(),
            spec: Some(ClusterSpec {
                cert_expiry_secs: params.cert_expiry.as_secs(),
                heartbeat_period_ms: params.heartbeat.as_millis() as u64,
            }),
            root_ca: Some(shoal_proto::RootCa {
                cert_pem: ca.cert_pem().to_string(),
                key_pem: ca.key_pem(),
            }),
            join_tokens: Some(JoinTokens {
                worker: Some(tokens::mint(TokenPolicy::default(), now_ms())),
                manager: Some(tokens::mint(TokenPolicy::default(), now_ms())),
            }),
            ..Default::default()
        };
        let node = Node {
            id: node_id.clone(),
            role: NodeRole::Manager as i32,
            hostname: params.hostname,
            addr: params.advertise_addr,
            state: NodeState::Unknown as i32,
            availability: Availability::Active as i32,
            certificate: Some(certificate(&issued)),
            serials: vec![issued.serial_hex.clone()],
            ..Default::default()
        };
        store
            .update(|tx| {
                tx.create(cluster.clone())?;
                tx.create(node.clone())
            })
            .await?;
        let manager = Manager::from_store(store, &node_id)?;
        Ok((manager, node_id, issued))
    }

    /// Opens the manager whose store is in `store_dir`, for the local node `local_node_id`.
    pub fn open(store_dir: &Path, local_node_id: &str) -> Result<Manager, ManagerError> {
        let dek = KeyFiles::new(store_dir.join("keys")).load()?;
        Manager::from_store(open_store(store_dir, &dek)?, local_node_id)
    }

    fn from_store(store: Store, local_node_id: &str) -> Result<Manager, ManagerError> {
        let mut clusters = store.list::<Cluster>()?;
        let cluster = match clusters.len() {
            0 => return Err(ManagerError::NoCluster),
            1 => clusters.remove(0),
            _ => return Err(ManagerError::ManyClusters),
        };
        let root = cluster.root_ca.clone().unwrap_or_default();
        let ca = RootCa::from_pem(&root.cert_pem, &root.key_pem)?;
        let revocations = Arc::new(Revocations::default());
        revocations.replace_all(
            cluster.revoked.iter().map(|r| r.node_id.clone()),
            cluster.revoked.iter().flat_map(|r| r.serials.clone()),
        );
        let sessions = Sessions::default();
        let period = heartbeat_period(&cluster);
        for node in store.list::<Node>()? {
            if node.state() == NodeState::Ready {
                sessions.expect(&node.id, period * 6);
            }
        }
        let shared = Shared {
            store,
            cluster_id: cluster.id,
            ca,
            revocations,
            sessions,
            local_node_id: local_node_id.to_string(),
        };
        Ok(Manager { shared: Arc::new(shared) })
    }

    /// The cluster ID.
    pub fn cluster_id(&self) -> &str {
        &self.shared.cluster_id
    }

    /// The root CA bundle (PEM) that join tokens pin.
    pub fn root_ca_pem(&self) -> &str {
        self.shared.ca.cert_pem()
    }

    /// The revocation list consulted at every handshake and call.
    pub fn revocations(&self) -> Arc<Revocations> {
        self.shared.revocations.clone()
    }

    /// The store (read access for the daemon and tests).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The current join token string of a role.
    pub fn join_token(&self, role: Role) -> Result<String, ManagerError> {
        let cluster = self.shared.cluster()?;
        let tokens = cluster.join_tokens.unwrap_or_default();
        let rec = tokens::record(&tokens, role).cloned().unwrap_or_default();
        Ok(tokens::encode(self.root_ca_pem(), &rec))
    }
}

fn open_store(store_dir: &Path, dek: &Key) -> Result<Store, ManagerError> {
    let path = store_dir.join("db");
    let db = crate::store::open_db(&path)
        .map_err(|source| ManagerError::OpenDb { path: path.display().to_string(), source })?;
    Ok(Store::open(&db, Arc::new(Sealer::new(dek)))?)
}

pub(crate) fn heartbeat_period(cluster: &Cluster) -> Duration {
    match cluster.spec.as_ref().map(|s| s.heartbeat_period_ms) {
        Some(ms) if ms > 0 => Duration::from_millis(ms),
        _ => DEFAULT_HEARTBEAT,
    }
}

pub(crate) fn cert_expiry(cluster: &Cluster) -> Duration {
    match cluster.spec.as_ref().map(|s| s.cert_expiry_secs) {
        Some(s) if s > 0 => Duration::from_secs(s),
        _ => shoal_pki::DEFAULT_CERT_EXPIRY,
    }
}

impl Shared {
    /// The cluster object.
    pub fn cluster(&self) -> Result<Cluster, StoreError> {
        self.store
            .get::<Cluster>(&self.cluster_id)?
            .ok_or_else(|| StoreError::NotFound { kind: "cluster", id: self.cluster_id.clone() })
    }

    /// Addresses of the managers that serve the control plane. Until managers replicate with
    /// Raft, that is this manager alone: nodes that joined with the manager token hold manager
    /// certificates but run no store.
    pub fn manager_addrs(&self) -> Result<Vec<String>, StoreError> {
        let local = self.store.get::<Node>(&self.local_node_id)?;
        Ok(local.map(|n| n.addr).into_iter().collect())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match e {
            StoreError::NotFound { .. } => Status::not_found(e.to_string()),
            StoreError::Exists { .. } => Status::already_exists(e.to_string()),
            StoreError::Conflict { .. } => Status::aborted(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}
