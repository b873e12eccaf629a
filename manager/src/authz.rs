//! Owns who may call what: one table from gRPC method to the callers allowed, and the tower layer
//! that checks it (with the peer's certificate and the node's current role) before any handler
//! runs. Never reads the store itself: the manager keeps [`NodeRoles`] up to date.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use shoal_pki::{PeerIdentity, Revocations, Role};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// Who is calling, as established by the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The local operator on the root-only unix socket: an administrator.
    Local,
    /// A node presenting a valid certificate of this cluster.
    Node(PeerIdentity),
    /// A person presenting a user certificate of this cluster; what they may do is decided
    /// per call from their grants (see `crate::access`).
    User(shoal_pki::UserIdentity),
    /// No client certificate (bootstrap calls only).
    Anonymous,
}

impl Caller {
    /// The node identity of the caller, or a `PermissionDenied` status.
    pub fn node(&self) -> Result<&PeerIdentity, Status> {
        match self {
            Caller::Node(id) => Ok(id),
            _ => Err(Status::permission_denied("this call needs a node certificate")),
        }
    }
}

/// Read the caller that [`AuthzLayer`] established for a request.
pub fn caller<T>(req: &tonic::Request<T>) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or(Caller::Anonymous)
}

/// Which callers may use a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, even without a certificate (the join bootstrap).
    Anyone,
    /// The local operator, or nodes holding one of these roles.
    Roles(&'static [Role]),
    /// The local operator only.
    LocalOnly,
}

const NODES: Access = Access::Roles(&[Role::Worker, Role::Manager]);
const MANAGERS: Access = Access::Roles(&[Role::Manager]);

/// Every RPC Shoal serves, with the callers allowed. A method missing here is denied.
pub const TABLE: &[(&str, Access)] = &[
    ("/shoal.CA/GetRootCACertificate", Access::Anyone),
    ("/shoal.NodeCA/IssueNodeCertificate", Access::Anyone),
    ("/shoal.NodeCA/RenewNodeCertificate", NODES),
    ("/shoal.NodeCA/ReattestNodeCertificate", Access::Anyone),
    ("/shoal.Dispatcher/Session", NODES),
    ("/shoal.Dispatcher/Heartbeat", NODES),
    ("/shoal.Dispatcher/Assignments", NODES),
    ("/shoal.Dispatcher/UpdateTaskStatus", NODES),
    ("/shoal.Dispatcher/ListenSubscriptions", NODES),
    ("/shoal.Dispatcher/PublishLogs", NODES),
    ("/shoal.Control/ListNodes", MANAGERS),
    ("/shoal.Control/GetNode", MANAGERS),
    ("/shoal.Control/RemoveNode", MANAGERS),
    ("/shoal.Control/UpdateNodeRole", MANAGERS),
    ("/shoal.Control/GetClusterInfo", MANAGERS),
    ("/shoal.Control/UpdateCluster", MANAGERS),
    ("/shoal.Control/GetJoinToken", MANAGERS),
    ("/shoal.Control/RotateJoinToken", MANAGERS),
    ("/shoal.Control/GetUnlockKey", MANAGERS),
    ("/shoal.Control/GetRootCA", MANAGERS),
    ("/shoal.Control/RotateRootCA", MANAGERS),
    ("/shoal.Control/ApproveNode", MANAGERS),
    ("/shoal.Control/RotateUnlockKey", MANAGERS),
    ("/shoal.Control/UpdateNode", MANAGERS),
    ("/shoal.Control/CreateService", MANAGERS),
    ("/shoal.Control/UpdateService", MANAGERS),
    ("/shoal.Control/GetService", MANAGERS),
    ("/shoal.Control/ListServices", MANAGERS),
    ("/shoal.Control/RemoveService", MANAGERS),
    ("/shoal.Control/ListTasks", MANAGERS),
    ("/shoal.Control/ServiceLogs", MANAGERS),
    ("/shoal.Control/CreateSecret", MANAGERS),
    ("/shoal.Control/UpdateSecret", MANAGERS),
    ("/shoal.Control/GetSecret", MANAGERS),
    ("/shoal.Control/ListSecrets", MANAGERS),
    ("/shoal.Control/RemoveSecret", MANAGERS),
    ("/shoal.Control/CreateNetwork", MANAGERS),
    ("/shoal.Control/GetNetwork", MANAGERS),
    ("/shoal.Control/ListNetworks", MANAGERS),
    ("/shoal.Control/RemoveNetwork", MANAGERS),
    ("/shoal.Control/CreateUser", MANAGERS),
    ("/shoal.Control/GetUser", MANAGERS),
    ("/shoal.Control/ListUsers", MANAGERS),
    ("/shoal.Control/RemoveUser", MANAGERS),
    ("/shoal.Control/IssueUserCertificate", MANAGERS),
    ("/shoal.Control/CreateTeam", MANAGERS),
    ("/shoal.Control/UpdateTeam", MANAGERS),
    ("/shoal.Control/ListTeams", MANAGERS),
    ("/shoal.Control/RemoveTeam", MANAGERS),
    ("/shoal.Control/CreateRole", MANAGERS),
    ("/shoal.Control/ListRoles", MANAGERS),
    ("/shoal.Control/RemoveRole", MANAGERS),
    ("/shoal.Control/CreateGrant", MANAGERS),
    ("/shoal.Control/ListGrants", MANAGERS),
    ("/shoal.Control/RemoveGrant", MANAGERS),
    ("/shoal.Control/ReadAudit", MANAGERS),
    ("/shoal.Control/PutTrust", MANAGERS),
    ("/shoal.Control/GetTrust", MANAGERS),
    ("/shoal.Raft/Send", MANAGERS),
    ("/shoal.Raft/Join", MANAGERS),
    ("/shoal.Raft/Ping", MANAGERS),
    ("/shoal.Daemon/Init", Access::LocalOnly),
    ("/shoal.Daemon/Join", Access::LocalOnly),
    ("/shoal.Daemon/Leave", Access::LocalOnly),
    ("/shoal.Daemon/Info", Access::LocalOnly),
    ("/shoal.Daemon/Unlock", Access::LocalOnly),
    ("/shoal.Daemon/ImageLoad", Access::LocalOnly),
    ("/shoal.Daemon/ImageImport", Access::LocalOnly),
    ("/shoal.Daemon/ImageLs", Access::LocalOnly),
    ("/shoal.Daemon/ImageRm", Access::LocalOnly),
    ("/shoal.Daemon/ImagePull", Access::LocalOnly),
    ("/shoal.Daemon/ImagePush", Access::LocalOnly),
    ("/shoal.Daemon/ImageTag", Access::LocalOnly),
    ("/shoal.Daemon/ImagePrune", Access::LocalOnly),
    ("/shoal.Daemon/ImageCheckUser", Access::LocalOnly),
    ("/shoal.Daemon/RegistryLogin", Access::LocalOnly),
    ("/shoal.Daemon/VolumeCreate", Access::LocalOnly),
    ("/shoal.Daemon/VolumeList", Access::LocalOnly),
    ("/shoal.Daemon/VolumeInspect", Access::LocalOnly),
    ("/shoal.Daemon/VolumeRemove", Access::LocalOnly),
    ("/shoal.Daemon/VolumePrune", Access::LocalOnly),
    ("/shoal.Daemon/ImageScan", Access::LocalOnly),
    ("/shoal.Daemon/ScanDbImport", Access::LocalOnly),
    ("/shoal.Daemon/ImageVerifyCosign", Access::LocalOnly),
];

/// The access rule of a method path.
pub fn access(path: &str) -> Option<Access> {
    TABLE.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// Decides whether `caller` may call `path`.
pub fn authorize(path: &str, caller: &Caller) -> Result<(), Status> {
    let Some(rule) = access(path) else {
        return Err(Status::permission_denied(format!("{path} is not an allowed method")));
    };
    match (rule, caller) {
        (Access::Anyone, _) | (_, Caller::Local) => Ok(()),
        // People reach the control API only; each handler decides on their grants.
        (Access::Roles(_), Caller::User(_)) if path.starts_with("/shoal.Control/") => Ok(()),
        (Access::Roles(_), Caller::User(u)) => Err(Status::permission_denied(format!(
            "user {} may call the control API only, not {path}",
            u.name
        ))),
        (Access::Roles(roles), Caller::Node(id)) if roles.contains(&id.role) => Ok(()),
        (Access::Roles(_), Caller::Node(id)) => Err(Status::permission_denied(format!(
            "a {} certificate may not call {path}; this needs a manager",
            id.role.as_str()
        ))),
        (Access::Roles(_), Caller::Anonymous) => {
            Err(Status::unauthenticated(format!("{path} needs a node certificate of this cluster")))
        }
        (Access::LocalOnly, _) => {
            Err(Status::permission_denied(format!("{path} is only served on the local socket")))
        }
    }
}

/// Looks a node's role up in the store, for a node [`NodeRoles`] has not heard of yet.
pub type RoleLookup = Box<dyn Fn(&str) -> Option<Role> + Send + Sync>;

/// Each node's current role as the store has it, kept up to date by the manager from its change
/// feed, so that a certificate's OU is never taken on its own word (a demoted manager's
/// certificate says "manager" until it expires).
#[derive(Default)]
pub struct NodeRoles {
    known: RwLock<HashMap<String, Role>>,
    lookup: Option<RoleLookup>,
    /// This manager holds the cluster's state: a node it does not know is not a node.
    complete: AtomicBool,
}

impl NodeRoles {
    /// Roles that fall back to `lookup` for nodes not recorded yet (a node that joined a moment
    /// ago, before the change feed reached this table).
    pub fn with_lookup(lookup: RoleLookup) -> NodeRoles {
        NodeRoles { lookup: Some(lookup), ..Default::default() }
    }

    /// Marks that this manager holds the cluster's state. Until then (a manager still joining,
    /// whose store is empty) the certificate's role is all there is to go by.
    pub fn set_complete(&self) {
        self.complete.store(true, Ordering::Relaxed);
    }

    /// Records a node's role, or forgets the node (`None`: it was removed). Returns the role
    /// recorded before.
    pub fn set(&self, node_id: &str, role: Option<Role>) -> Option<Role> {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        match role {
            Some(role) => known.insert(node_id.to_string(), role),
            None => known.remove(node_id),
        }
    }

    /// The nodes recorded as managers.
    pub fn managers(&self) -> Vec<String> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        known.iter().filter(|(_, r)| **r == Role::Manager).map(|(id, _)| id.clone()).collect()
    }

    /// Replaces every record.
    pub fn replace_all(&self, roles: impl IntoIterator<Item = (String, Role)>) {
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = roles.into_iter().collect();
    }

    /// The node's current role, if the store has the node.
    pub fn get(&self, node_id: &str) -> Option<Role> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner()).get(node_id).copied();
        known.or_else(|| self.lookup.as_ref().and_then(|f| f(node_id)))
    }
}

impl std::fmt::Debug for NodeRoles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.known.read().map(|k| k.len()).unwrap_or(0);
        f.debug_struct("NodeRoles").field("known", &n).finish()
    }
}

/// How the transport identifies callers for the layer.
#[derive(Clone, Debug)]
pub enum Transport {
    /// The unix socket: every caller is the local operator.
    Local,
    /// mTLS over TCP: callers are identified by their certificate, with the rights of the role
    /// the store gives their node now.
    Tls {
        cluster_id: String,
        revocations: Arc<Revocations>,
        roles: Arc<NodeRoles>,
        /// The roots trusted now: a connection opened with a certificate of a root retired
        /// since (a rotation ended) is refused at its next call.
        roots: Arc<shoal_pki::TrustRoots>,
    },
}

impl Transport {
    fn identify(&self, ext: &http::Extensions) -> Result<Caller, Status> {
        let (cluster_id, revocations, roles, roots) = match self {
            Transport::Local => return Ok(Caller::Local),
            Transport::Tls { cluster_id, revocations, roles, roots } => {
                (cluster_id, revocations, roles, roots)
            }
        };
        let certs = ext.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs());
        let Some(chain) = certs.as_ref().filter(|c| !c.is_empty()) else {
            return Ok(Caller::Anonymous);
        };
        let leaf = &chain[0];
        if !roots.still_trusts(chain) {
            return Err(Status::unauthenticated(
                "the client certificate comes from a root this cluster no longer trusts (a root \
                 rotation ended); a node renews or joins again, a person gets a new bundle",
            ));
        }
        if let Ok(user) = shoal_pki::UserIdentity::from_der(leaf) {
            if &user.cluster_id != cluster_id {
                return Err(Status::permission_denied(
                    "the client certificate is for another cluster",
                ));
            }
            return Ok(Caller::User(user));
        }
        let id = PeerIdentity::from_der(leaf)
            .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
        if &id.cluster_id != cluster_id {
            return Err(Status::permission_denied("the client certificate is for another cluster"));
        }
        if revocations.is_revoked(&id) {
            return Err(Status::permission_denied(format!(
                "node {} was removed from the cluster; its certificate is revoked",
                id.node_id
            )));
        }
        Ok(Caller::Node(current_rights(id, revocations, roles)))
    }
}

/// The identity a caller is served as: a manager certificate carries a manager's rights only
/// while the store still makes its node a manager and the certificate was issued for that role;
/// otherwise the node keeps a worker's rights (the dispatcher, and renewal into its new role).
fn current_rights(
    mut id: PeerIdentity,
    revocations: &Revocations,
    roles: &NodeRoles,
) -> PeerIdentity {
    if id.role != Role::Manager {
        return id;
    }
    let store_says_manager = match roles.get(&id.node_id) {
        Some(role) => role == Role::Manager,
        None => !roles.complete.load(Ordering::Relaxed),
    };
    if revocations.is_superseded(&id) || !store_says_manager {
        tracing::debug!(node = %id.node_id, "a manager certificate of a node that is no longer a manager: worker rights");
        id.role = Role::Worker;
    }
    id
}

/// Tower layer that identifies the caller, applies [`TABLE`], and hands the handlers a [`Caller`].
#[derive(Clone, Debug)]
pub struct AuthzLayer {
    transport: Transport,
}

impl AuthzLayer {
    /// A layer for one transport.
    pub fn new(transport: Transport) -> Self {
        AuthzLayer { transport }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz { inner, transport: self.transport.clone() }
    }
}

/// The service made by [`AuthzLayer`].
#[derive(Clone, Debug)]
pub struct Authz<S> {
    inner: S,
    transport: Transport,
}

type BoxFut<R, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<R, E>> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFut<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let checked = self
            .transport
            .identify(req.extensions())
            .and_then(|caller| authorize(req.uri().path(), &caller).map(|()| caller));
        match checked {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::debug!(path = req.uri().path(), %status, "call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn node(role: Role) -> Caller {
        Caller::Node(PeerIdentity {
            node_id: "n".into(),
            role,
            cluster_id: "c".into(),
            serial_hex: "01".into(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn workers_reach_only_the_dispatcher_and_renewal() {
        let worker = node(Role::Worker);
        for (path, _) in TABLE {
            let allowed = authorize(path, &worker).is_ok();
            let expected = path.starts_with("/shoal.Dispatcher/")
                || path.starts_with("/shoal.CA/")
                || path.starts_with("/shoal.NodeCA/");
            assert_eq!(allowed, expected, "{path}");
        }
    }

    #[test]
    fn control_needs_a_manager_or_the_local_socket() {
        let path = "/shoal.Control/ListNodes";
        assert!(authorize(path, &node(Role::Manager)).is_ok());
        assert!(authorize(path, &Caller::Local).is_ok());
        let err = authorize(path, &Caller::Anonymous).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = authorize(path, &node(Role::Worker)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("worker"), "{}", err.message());
    }

    #[test]
    fn a_manager_certificate_counts_only_while_the_store_says_manager() {
        let Caller::Node(cert) = node(Role::Manager) else { unreachable!() };
        let (revocations, roles) = (Revocations::default(), NodeRoles::default());
        assert_eq!(current_rights(cert.clone(), &revocations, &roles).role, Role::Manager);
        roles.set_complete();
        roles.set("n", Some(Role::Manager));
        assert_eq!(current_rights(cert.clone(), &revocations, &roles).role, Role::Manager);
        roles.set("n", Some(Role::Worker));
        assert_eq!(current_rights(cert.clone(), &revocations, &roles).role, Role::Worker);
        roles.set("n", Some(Role::Manager));
        revocations.supersede_serial("01");
        assert_eq!(current_rights(cert.clone(), &revocations, &roles).role, Role::Worker);
        let (revocations, roles) = (Revocations::default(), NodeRoles::default());
        roles.set_complete();
        assert_eq!(current_rights(cert, &revocations, &roles).role, Role::Worker, "unknown node");
    }

    #[test]
    fn unknown_methods_and_daemon_calls_over_tcp_are_denied() {
        let manager = node(Role::Manager);
        assert!(authorize("/shoal.Control/Unlisted", &manager).is_err());
        assert!(authorize("/shoal.Daemon/Init", &manager).is_err());
        assert!(authorize("/shoal.Daemon/Init", &Caller::Local).is_ok());
    }
}
