//! Owns agent sessions: registration, heartbeats, and marking nodes Down after missed
//! heartbeats. Task assignment arrives with the services issue.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_proto::dispatcher_server::Dispatcher;
use shoal_proto::{
    AssignmentsMessage, AssignmentsRequest, HeartbeatRequest, HeartbeatResponse,
    ListenSubscriptionsRequest, LogSubscription, Node, NodeRole, NodeState, PublishLogsMessage,
    PublishLogsResponse, SessionMessage, SessionRequest, TunnelKey, UpdateTaskStatusRequest,
    UpdateTaskStatusResponse,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::authz::caller;
use crate::ca_rotation::trusted_bundle;
use crate::config::heartbeat_period;
use crate::intake;
use crate::manager::{now_ms, Manager, Shared};
use crate::removal::UntilRemoved;

/// Missed periods after which a node is Down (Swarm's grace multiplier).
pub const GRACE_PERIODS: u32 = 3;

type SessionTx = mpsc::Sender<Result<SessionMessage, Status>>;

#[derive(Debug)]
struct Entry {
    session_id: Option<String>,
    deadline: Instant,
    /// The session stream: held open exactly as long as the session lives, and used to push
    /// the node's own updates (a role change) to it.
    stream: Option<SessionTx>,
    /// The node's tunnel keys as stored: a heartbeat with others is a rotation to store.
    tunnel_keys: Vec<TunnelKey>,
    /// The serial of the certificate the node last said it uses, as stored.
    cert_serial: String,
}

/// Live sessions by node ID.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    inner: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Expects `node_id` to (re)open a session within `grace`, or it will be marked Down.
    pub fn expect(&self, node_id: &str, grace: Duration) {
        let entry = Entry {
            session_id: None,
            deadline: Instant::now() + grace,
            stream: None,
            tunnel_keys: Vec::new(),
            cert_serial: String::new(),
        };
        self.lock().entry(node_id.to_string()).or_insert(entry);
    }

    fn open(
        &self,
        node_id: &str,
        session_id: String,
        grace: Duration,
        tx: SessionTx,
        tunnel_keys: Vec<TunnelKey>,
        cert_serial: String,
    ) {
        let entry = Entry {
            session_id: Some(session_id),
            deadline: Instant::now() + grace,
            stream: Some(tx),
            tunnel_keys,
            cert_serial,
        };
        self.lock().insert(node_id.to_string(), entry);
    }

    /// Extends the session; `Some(true)` when the node reports other tunnel keys than the
    /// stored ones, `None` when the session is not the node's current one.
    fn beat(
        &self,
        node_id: &str,
        session_id: &str,
        grace: Duration,
        keys: &[TunnelKey],
    ) -> Option<bool> {
        match self.lock().get_mut(node_id) {
            Some(e) if e.session_id.as_deref() == Some(session_id) => {
                e.deadline = Instant::now() + grace;
                Some(!keys.is_empty() && e.tunnel_keys != keys)
            }
            _ => None,
        }
    }

    /// Records that the node uses the certificate `serial`; true when that is news to store.
    fn uses_serial(&self, node_id: &str, serial: &str) -> bool {
        match self.lock().get_mut(node_id) {
            Some(e) if !serial.is_empty() && e.cert_serial != serial => {
                e.cert_serial = serial.to_string();
                true
            }
            _ => false,
        }
    }

    /// Records the keys stored for a node's session.
    fn stored_keys(&self, node_id: &str, keys: Vec<TunnelKey>) {
        if let Some(e) = self.lock().get_mut(node_id) {
            e.tunnel_keys = keys;
        }
    }

    /// Whether `session_id` is the node's current session.
    pub fn is_current(&self, node_id: &str, session_id: &str) -> bool {
        self.lock().get(node_id).is_some_and(|e| e.session_id.as_deref() == Some(session_id))
    }

    /// Ends a node's session (its stream closes).
    pub fn drop_node(&self, node_id: &str) {
        self.lock().remove(node_id);
    }

    fn push(&self, node_id: &str, make: impl FnOnce(&str) -> SessionMessage) {
        let target =
            self.lock().get(node_id).and_then(|e| Some((e.session_id.clone()?, e.stream.clone()?)));
        if let Some((session_id, tx)) = target {
            let _ = tx.try_send(Ok(make(&session_id)));
        }
    }

    /// Sends every open session a message made for it.
    fn push_all(&self, make: impl Fn(&str) -> SessionMessage) {
        let targets: Vec<(String, SessionTx)> = self
            .lock()
            .values()
            .filter_map(|e| Some((e.session_id.clone()?, e.stream.clone()?)))
            .collect();
        for (session_id, tx) in targets {
            let _ = tx.try_send(Ok(make(&session_id)));
        }
    }

    /// Ends every session (their streams close), for shutdown.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn take_expired(&self) -> Vec<String> {
        let now = Instant::now();
        let mut map = self.lock();
        let expired: Vec<String> =
            map.iter().filter(|(_, e)| e.deadline <= now).map(|(id, _)| id.clone()).collect();
        for id in &expired {
            map.remove(id);
        }
        expired
    }
}

/// The Dispatcher gRPC service.
#[derive(Debug, Clone)]
pub struct DispatcherApi {
    shared: Arc<Shared>,
}

impl Manager {
    /// The dispatcher service of this manager.
    pub fn dispatcher(&self) -> DispatcherApi {
        DispatcherApi { shared: self.shared.clone() }
    }

    /// Sends each connected node its Node object again whenever it changes, and every connected
    /// node the managers' addresses whenever a manager joins, leaves or moves (on the leader).
    pub fn spawn_node_updates(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        let mut events = self.shared.store.watch();
        let mut managers: HashSet<String> = self.shared.trust.managers().into_iter().collect();
        let span = tracing::info_span!("dispatcher", node = %self.shared.local_node_id);
        let task = async move {
            loop {
                let event = match events.recv().await {
                    Ok(e) if e.kind == "node" => e,
                    Ok(e) if e.kind == "member" || e.kind == "cluster" => {
                        let Some(shared) = weak.upgrade() else { return };
                        push_manager_addrs(&shared);
                        continue;
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                let Some(shared) = weak.upgrade() else { return };
                let node = shared.store.get::<Node>(&event.id).ok().flatten();
                let manager = node.as_ref().is_some_and(|n| n.role() == NodeRole::Manager);
                if manager != managers.contains(&event.id) {
                    // A node became a manager or stopped being one: every node hears of it.
                    match manager {
                        true => managers.insert(event.id.clone()),
                        false => managers.remove(&event.id),
                    };
                    shared.refresh_role(&event.id);
                    push_manager_addrs(&shared);
                }
                let Some(node) = node else { continue };
                let cluster = shared.cluster().ok();
                let period = cluster.as_ref().map(heartbeat_period).unwrap_or_default();
                let roots = cluster.as_ref().map(trusted_bundle).unwrap_or_default();
                let managers = shared.manager_addrs().unwrap_or_default();
                shared.sessions.push(&event.id, |session_id| SessionMessage {
                    session_id: session_id.to_string(),
                    heartbeat_period_ms: period.as_millis() as u64,
                    node: Some(node),
                    manager_addrs: managers,
                    managers: Some(shared.manager_set()),
                    root_ca_pem: roots,
                });
            }
        };
        tokio::spawn(task.instrument(span))
    }

    /// On the leader, marks nodes Down when their heartbeats stop; runs until the manager is
    /// dropped. A new leader first gives every Ready node time to reconnect to it.
    pub fn spawn_monitor(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        let span = tracing::info_span!("dispatcher", node = %self.shared.local_node_id);
        let task = async move {
            let mut was_leader = false;
            loop {
                let Some(shared) = weak.upgrade() else { return };
                let period = shared.cluster().map(|c| heartbeat_period(&c)).unwrap_or_default();
                let tick =
                    (period / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
                let leader = shared.raft.status().is_leader;
                if leader && !was_leader {
                    expect_ready_nodes(&shared, period * GRACE_PERIODS * 2);
                } else if !leader && was_leader {
                    shared.sessions.clear();
                }
                was_leader = leader;
                if leader {
                    for node_id in shared.sessions.take_expired() {
                        if let Err(e) = mark_down(&shared, &node_id).await {
                            tracing::warn!(node = %node_id, error = %e, "could not mark node down");
                        }
                    }
                }
                drop(shared);
                tokio::time::sleep(tick).await;
            }
        };
        tokio::spawn(task.instrument(span))
    }
}

fn expect_ready_nodes(shared: &Shared, grace: Duration) {
    for node in shared.store.list::<Node>().unwrap_or_default() {
        if node.state() == NodeState::Ready {
            shared.sessions.expect(&node.id, grace);
        }
    }
}

async fn mark_down(shared: &Shared, node_id: &str) -> Result<(), Status> {
    tracing::info!(node = %node_id, "heartbeat failure: marking node down");
    shared
        .store
        .update(|tx| {
            let Some(mut node) = tx.get::<Node>(node_id)? else { return Ok(()) };
            if node.state() != NodeState::Down {
                node.set_state(NodeState::Down);
                node.state_message = "heartbeat failure".into();
                tx.update(node)?;
            }
            Ok::<_, Status>(())
        })
        .await
}

/// Tells every connected node the managers' current addresses and who they are (after one
/// joined, left, moved or was demoted, or a certificate was revoked), so a node that knew only
/// old addresses still finds the managers after a restart, and refuses a former manager.
fn push_manager_addrs(shared: &Shared) {
    let Ok(managers) = shared.manager_addrs() else { return };
    let set = shared.manager_set();
    let Ok(cluster) = shared.cluster() else { return };
    let period = heartbeat_period(&cluster);
    let roots = trusted_bundle(&cluster);
    shared.sessions.push_all(|session_id| SessionMessage {
        session_id: session_id.to_string(),
        heartbeat_period_ms: period.as_millis() as u64,
        node: None,
        manager_addrs: managers.clone(),
        managers: Some(set.clone()),
        root_ca_pem: roots.clone(),
    });
}

/// A node's hostname and address are never taken from its word alone: the hostname is fixed
/// at join (operators change it with `node update --hostname`); an address the node reports is
/// taken only when its IP is the one the session comes from (a moved manager restarted with a
/// new `--advertise-addr`), and an address no operator chose follows that IP.
fn follow_connection(node: &mut Node, reported: &str, peer: Option<IpAddr>) {
    let Some(ip) = peer else { return };
    if !reported.is_empty() && intake::ip_of(reported) == Some(ip) {
        node.addr = reported.to_string();
        return;
    }
    if node.addr_pinned || intake::ip_of(&node.addr) == Some(ip) {
        return;
    }
    node.addr = ip.to_string();
}

/// Whether opening a session must write the node: something it reports changed, or its last
/// recorded heartbeat is older than a period. A node reopening sessions in a loop thus costs
/// the managers at most one write per heartbeat period.
fn needs_write(before: &Node, after: &Node, period: Duration) -> bool {
    let same = Node { last_heartbeat_ms: after.last_heartbeat_ms, ..before.clone() } == *after;
    let age = after.last_heartbeat_ms.saturating_sub(before.last_heartbeat_ms);
    !same || age >= period.as_millis() as i64
}

fn jittered(period: Duration) -> Duration {
    let ms = period.as_millis() as u64;
    let spread = (ms / 10).max(1);
    Duration::from_millis(rand::thread_rng().gen_range(ms - spread.min(ms)..=ms + spread))
}

impl DispatcherApi {
    fn check_session(&self, node_id: &str, session_id: &str) -> Result<(), Status> {
        if self.shared.sessions.is_current(node_id, session_id) {
            Ok(())
        } else {
            Err(Status::not_found("unknown session; open a new one"))
        }
    }
}

#[tonic::async_trait]
impl Dispatcher for DispatcherApi {
    type SessionStream = UntilRemoved<SessionMessage>;

    async fn session(
        &self,
        req: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let id = caller(&req).node()?.clone();
        if !self.shared.raft.status().is_leader {
            let leader = self.shared.leader_addr().unwrap_or_else(|| "not known yet".into());
            return Err(Status::failed_precondition(format!(
                "this manager is not the leader; the leader is {leader}"
            )));
        }
        let peer_ip = intake::peer_ip(&req);
        let req = req.into_inner();
        intake::check_session(&req)?;
        let cluster = self.shared.cluster()?;
        let period = heartbeat_period(&cluster);
        let node = self
            .shared
            .store
            .update(|tx| {
                let mut node = tx.get::<Node>(&id.node_id)?.ok_or_else(|| {
                    Status::not_found(format!("node {} is not part of this cluster", id.node_id))
                })?;
                let before = node.clone();
                node.set_state(NodeState::Ready);
                node.state_message.clear();
                node.last_heartbeat_ms = now_ms();
                if req.description.is_some() {
                    node.description = req.description.clone();
                }
                node.tunnel_keys = req.tunnel_keys.clone();
                if !req.cert_serial.is_empty() {
                    node.tls_serial = req.cert_serial.clone();
                }
                follow_connection(&mut node, &req.advertise_addr, peer_ip);
                if needs_write(&before, &node, period) {
                    tx.update(node.clone())?;
                }
                Ok::<_, Status>(node)
            })
            .await?;
        let session_id = shoal_pki::id::new_id();
        let (tx, rx) = mpsc::channel(16);
        let tunnel_keys = node.tunnel_keys.clone();
        let serial = node.tls_serial.clone();
        let first = SessionMessage {
            session_id: session_id.clone(),
            heartbeat_period_ms: jittered(period).as_millis() as u64,
            node: Some(node),
            manager_addrs: self.shared.manager_addrs()?,
            managers: Some(self.shared.manager_set()),
            root_ca_pem: trusted_bundle(&cluster),
        };
        tx.send(Ok(first)).await.map_err(|_| Status::cancelled("session closed"))?;
        self.shared.sessions.open(
            &id.node_id,
            session_id,
            period * GRACE_PERIODS,
            tx,
            tunnel_keys,
            serial,
        );
        tracing::debug!(node = %id.node_id, "session opened");
        Ok(Response::new(self.shared.until_removed(&id, rx)))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let id = caller(&req).node()?.clone();
        let req = req.into_inner();
        intake::check_tunnel_keys(&req.tunnel_keys)?;
        let cluster = self.shared.cluster()?;
        let period = heartbeat_period(&cluster);
        let rotated = self
            .shared
            .sessions
            .beat(&id.node_id, &req.session_id, period * GRACE_PERIODS, &req.tunnel_keys)
            .ok_or_else(|| Status::not_found("unknown session; open a new one"))?;
        if rotated {
            // The node rotated its tunnel key: its peers learn of it through the maps.
            let keys = req.tunnel_keys;
            self.shared
                .store
                .update(|tx| {
                    let Some(mut node) = tx.get::<Node>(&id.node_id)? else { return Ok(()) };
                    node.tunnel_keys = keys.clone();
                    tx.update(node)?;
                    Ok::<_, Status>(())
                })
                .await?;
            tracing::info!(node = %id.node_id, "tunnel key rotated");
            self.shared.sessions.stored_keys(&id.node_id, keys);
        }
        // A beat on the node's current session means it is Ready. The store may say otherwise
        // when a Down mark by an earlier leader was applied here only after the session opened
        // (the opening saw the node Ready and wrote nothing): that is mended here, or the node
        // would stay Down for as long as its session lives (found by the chaos runner).
        let renewed = self.shared.sessions.uses_serial(&id.node_id, &req.cert_serial);
        let stale = self
            .shared
            .store
            .get::<Node>(&id.node_id)?
            .is_some_and(|n| n.state() != NodeState::Ready);
        if renewed || stale {
            // A renewal: a root rotation counts the node done from now on.
            let serial = req.cert_serial.clone();
            self.shared
                .store
                .update(|tx| {
                    let Some(mut node) = tx.get::<Node>(&id.node_id)? else { return Ok(()) };
                    let before = node.clone();
                    if !serial.is_empty() {
                        node.tls_serial = serial.clone();
                    }
                    if node.state() != NodeState::Ready {
                        node.set_state(NodeState::Ready);
                        node.state_message.clear();
                        node.last_heartbeat_ms = now_ms();
                    }
                    if node != before {
                        tx.update(node)?;
                    }
                    Ok::<_, Status>(())
                })
                .await?;
        }
        let rotation = crate::config::network_key_rotation(&cluster);
        Ok(Response::new(HeartbeatResponse {
            period_ms: jittered(period).as_millis() as u64,
            network_key_rotation_secs: rotation.as_secs(),
        }))
    }

    type AssignmentsStream = UntilRemoved<AssignmentsMessage>;

    async fn assignments(
        &self,
        req: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let id = caller(&req).node()?.clone();
        self.check_session(&id.node_id, &req.get_ref().session_id)?;
        let rx = self.shared.open_assignments(&id.node_id)?;
        Ok(Response::new(self.shared.until_removed(&id, rx)))
    }

    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let id = caller(&req).node()?.clone();
        let req = req.into_inner();
        self.check_session(&id.node_id, &req.session_id)?;
        intake::check_statuses(&req.updates)?;
        self.shared.report_status(&id.node_id, req.updates).await?;
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }

    type ListenSubscriptionsStream = UntilRemoved<LogSubscription>;

    async fn listen_subscriptions(
        &self,
        req: Request<ListenSubscriptionsRequest>,
    ) -> Result<Response<Self::ListenSubscriptionsStream>, Status> {
        let id = caller(&req).node()?.clone();
        self.check_session(&id.node_id, &req.get_ref().session_id)?;
        let rx = self.shared.logs.listen(&id.node_id);
        Ok(Response::new(self.shared.until_removed(&id, rx)))
    }

    async fn publish_logs(
        &self,
        req: Request<tonic::Streaming<PublishLogsMessage>>,
    ) -> Result<Response<PublishLogsResponse>, Status> {
        let id = caller(&req).node()?.clone();
        let mut stream = req.into_inner();
        let mut subscription = None;
        let removed = self.shared.removed(&id);
        tokio::pin!(removed);
        loop {
            let msg = tokio::select! {
                msg = stream.message() => msg,
                () = &mut removed => Err(crate::removal::removed_status(&id)),
            };
            let Some(msg) = msg? else { break };
            self.check_session(&id.node_id, &msg.session_id)?;
            intake::check_logs(&msg)?;
            subscription = Some(msg.subscription_id.clone());
            if !self.shared.logs.publish(&id.node_id, msg) {
                break;
            }
        }
        if let Some(sub) = subscription {
            self.shared.logs.node_done(&id.node_id, &sub);
        }
        Ok(Response::new(PublishLogsResponse {}))
    }
}
