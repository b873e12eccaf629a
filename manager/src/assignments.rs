//! Owns what each node is told to run (on the leader): the per-node assignment streams — the
//! full set when a stream opens, then batched changes — and the batching of the task states
//! that agents report into few Raft writes. Only a node's own tasks ever reach it, and only
//! the maps of networks its tasks are on.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use shoal_proto::{
    AssignmentsMessage, Cluster, Network, Node, Secret, SecretData, Service, Task, TaskState,
    TaskStatusUpdate,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;
use tracing::Instrument;

use crate::manager::Shared;
use crate::networks::maps::{self, Maps};
use crate::store::Event;

/// Changes for one node are sent at most this often (Swarm batches for 100 ms).
const FLUSH_EVERY: Duration = Duration::from_millis(30);
/// A node's batch is sent at once when it holds this many changes.
const BATCH_LIMIT: usize = 100;
/// Reported states are committed at most this often, or when this many are waiting.
const STATUS_EVERY: Duration = Duration::from_millis(30);
const STATUS_LIMIT: usize = 2_000;
/// Network maps are rebuilt at most this often while tasks on networks change.
const MAPS_EVERY: Duration = Duration::from_millis(50);

type AssignmentTx = mpsc::Sender<Result<AssignmentsMessage, Status>>;

#[derive(Debug)]
struct NodeStream {
    tx: AssignmentTx,
    tasks: Vec<Task>,
    removed: Vec<String>,
    secrets: Vec<SecretKey>,
    removed_secrets: Vec<SecretKey>,
    /// Networks whose map changed since the last batch, and ones the node left.
    networks: BTreeSet<String>,
    removed_networks: BTreeSet<String>,
    sequence: u64,
}

/// A secret (or config) version: (ID, version).
type SecretKey = (String, u64);

#[derive(Debug, Default)]
struct HubState {
    streams: HashMap<String, NodeStream>,
    /// Which node each assigned task is on, and each node's tasks.
    task_node: HashMap<String, String>,
    node_tasks: HashMap<String, HashSet<String>>,
    /// What the node was last told about each task: its desired state and spec version. A
    /// change in the task's reported state alone is not sent back to the node.
    told: HashMap<String, (i32, u64)>,
    /// Tasks that hold secrets on their node (assigned, not yet stopped), and per node how many
    /// such tasks use each secret version: a node has a secret exactly while one is above 0.
    holding: HashMap<String, (String, Vec<SecretKey>)>,
    node_secrets: HashMap<String, HashMap<SecretKey, usize>>,
    /// The index was loaded from the store: until then no stream may open (its complete set
    /// would be empty, and the agent would stop every task it runs).
    ready: bool,
    /// The network maps as last built, and the tasks with network addresses (whose changes
    /// make them stale).
    maps: Maps,
    net_tasks: HashSet<String>,
    maps_stale: bool,
}

impl HubState {
    /// Updates which secrets the task's node needs; returns what it gains and loses.
    fn track(&mut self, id: &str, task: Option<&Task>) -> (String, Vec<SecretKey>, Vec<SecretKey>) {
        let now = task
            .filter(|t| assigned(t) && t.state() <= TaskState::Running)
            .map(|t| (t.node_id.clone(), crate::secrets::task_refs(t)))
            .filter(|(_, refs)| !refs.is_empty());
        let before = self.holding.remove(id);
        let (mut gained, mut lost) = (Vec::new(), Vec::new());
        let mut node = String::new();
        if let Some((n, refs)) = &before {
            let counts = self.node_secrets.entry(n.clone()).or_default();
            for r in refs {
                if let Some(c) = counts.get_mut(r) {
                    *c -= 1;
                    if *c == 0 {
                        counts.remove(r);
                        lost.push(r.clone());
                    }
                }
            }
            node = n.clone();
        }
        if let Some((n, refs)) = now {
            let counts = self.node_secrets.entry(n.clone()).or_default();
            for r in &refs {
                let c = counts.entry(r.clone()).or_default();
                *c += 1;
                if *c == 1 {
                    match lost.iter().position(|x| x == r) {
                        Some(i) => {
                            lost.remove(i);
                        }
                        None => gained.push(r.clone()),
                    }
                }
            }
            node = n.clone();
            self.holding.insert(id.to_string(), (n, refs));
        }
        (node, gained, lost)
    }
}

/// The leader's assignment streams, by node ID.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    state: Mutex<HubState>,
    /// Nodes are being given ingress addresses (one such write at a time).
    addressing: std::sync::atomic::AtomicBool,
}

/// Whether a task is the node's business: placed on it and past scheduling.
fn assigned(t: &Task) -> bool {
    !t.node_id.is_empty() && t.state() as i32 >= TaskState::Assigned as i32
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything and closes every stream (leadership lost).
    pub fn clear(&self) {
        *self.lock() = HubState::default();
    }

    /// Loads the index of assigned tasks from the store (a new leader, or after missed
    /// changes) and lets streams open. Open streams close: their agents reconnect and get a
    /// complete set again. A store that cannot be read leaves the hub closed.
    fn load(&self, store: &crate::store::Store) -> bool {
        let tasks = match store.list::<Task>() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the assignments index; retrying");
                return false;
            }
        };
        let mut fresh = HubState::default();
        match build_maps(store, &tasks) {
            Some(m) => fresh.maps = m,
            None => return false,
        }
        fresh.net_tasks =
            tasks.iter().filter(|t| !t.networks.is_empty()).map(|t| t.id.clone()).collect();
        for t in tasks.into_iter().filter(assigned) {
            fresh.track(&t.id, Some(&t));
            fresh.node_tasks.entry(t.node_id.clone()).or_default().insert(t.id.clone());
            fresh.task_node.insert(t.id, t.node_id);
        }
        fresh.ready = true;
        *self.lock() = fresh;
        true
    }

    fn is_ready(&self) -> bool {
        self.lock().ready
    }

    /// Opens the stream of `node_id` (replacing an older one) with its complete set, all
    /// under the hub's lock so no change can slip between the set and the stream.
    fn open(
        &self,
        node_id: &str,
        tx: AssignmentTx,
        store: &crate::store::Store,
    ) -> Result<(), Status> {
        let mut s = self.lock();
        if !s.ready {
            return Err(Status::unavailable(
                "this leader is still loading assignments; reconnect in a moment",
            ));
        }
        let ids: Vec<String> =
            s.node_tasks.get(node_id).map(|t| t.iter().cloned().collect()).unwrap_or_default();
        let secrets: Vec<SecretKey> =
            s.node_secrets.get(node_id).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(t) = store.get::<Task>(&id)? {
                if t.node_id == node_id {
                    s.told.insert(t.id.clone(), (t.desired_state, t.spec_version));
                    tasks.push(t);
                }
            }
        }
        let networks = s
            .maps
            .by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| s.maps.for_node(node_id, id))
            .collect();
        let cluster = store.list::<Cluster>().ok().and_then(|c| c.into_iter().next());
        crate::trust::seal_tasks(store, cluster.as_ref(), &mut tasks);
        let first = AssignmentsMessage {
            complete: true,
            tasks,
            removed: Vec::new(),
            sequence: 0,
            secrets: secret_data(store, &secrets),
            removed_secrets: Vec::new(),
            networks,
            removed_networks: Vec::new(),
        };
        tx.try_send(Ok(first)).map_err(|_| Status::unavailable("assignment stream closed"))?;
        let stream = NodeStream {
            tx,
            tasks: Vec::new(),
            removed: Vec::new(),
            secrets: Vec::new(),
            removed_secrets: Vec::new(),
            networks: BTreeSet::new(),
            removed_networks: BTreeSet::new(),
            sequence: 1,
        };
        s.streams.insert(node_id.to_string(), stream);
        Ok(())
    }

    /// Notes a change that may make the network maps stale.
    fn on_change(&self, kind: &str) {
        let mut s = self.lock();
        // Nodes matter to the maps when tasks are on networks (their addresses) or when the
        // routing mesh exists (every node has an address on it).
        let nodes_matter = !s.net_tasks.is_empty() || s.maps.has_ingress();
        if kind == "network" || kind == "service" || (kind == "node" && nodes_matter) {
            s.maps_stale = true;
        }
    }

    /// Whether the maps are stale (and then no longer marked so: changes after this call
    /// mark them again, so none is lost between the reading and [`Hub::set_maps`]).
    fn take_stale(&self) -> bool {
        let mut s = self.lock();
        s.ready && std::mem::take(&mut s.maps_stale)
    }

    fn mark_stale(&self) {
        self.lock().maps_stale = true;
    }

    /// Takes freshly built maps: every open stream is sent the maps of its networks that
    /// changed, and the IDs of networks it is no longer on.
    fn set_maps(&self, fresh: Maps) {
        let mut s = self.lock();
        let HubState { streams, maps: old, .. } = &mut *s;
        let none = BTreeSet::new();
        for (node, stream) in streams.iter_mut() {
            let before = old.by_node.get(node).unwrap_or(&none);
            let after = fresh.by_node.get(node).unwrap_or(&none);
            for id in after {
                if !before.contains(id) || old.for_node(node, id) != fresh.for_node(node, id) {
                    stream.removed_networks.remove(id);
                    stream.networks.insert(id.clone());
                }
            }
            for id in before.difference(after) {
                stream.networks.remove(id);
                stream.removed_networks.insert(id.clone());
            }
        }
        s.maps = fresh;
    }

    /// Routes one applied change of a task.
    fn on_task(&self, id: &str, task: Option<Task>) {
        let mut s = self.lock();
        let s = &mut *s;
        let on_networks = task.as_ref().is_some_and(|t| !t.networks.is_empty());
        if on_networks {
            s.net_tasks.insert(id.to_string());
            s.maps_stale = true;
        } else if s.net_tasks.remove(id) {
            s.maps_stale = true;
        }
        let (node, gained, lost) = s.track(id, task.as_ref());
        if let Some(stream) = s.streams.get_mut(&node) {
            // A version lost and regained (or the reverse) within one batch cancels out.
            for g in gained {
                match stream.removed_secrets.iter().position(|x| *x == g) {
                    Some(i) => drop(stream.removed_secrets.remove(i)),
                    None => stream.secrets.push(g),
                }
            }
            for l in lost {
                match stream.secrets.iter().position(|x| *x == l) {
                    Some(i) => drop(stream.secrets.remove(i)),
                    None => stream.removed_secrets.push(l),
                }
            }
        }
        match task {
            Some(t) if assigned(&t) => {
                let seen = (t.desired_state, t.spec_version);
                if s.told.get(&t.id) == Some(&seen) {
                    return;
                }
                s.told.insert(t.id.clone(), seen);
                s.task_node.insert(t.id.clone(), t.node_id.clone());
                s.node_tasks.entry(t.node_id.clone()).or_default().insert(t.id.clone());
                if let Some(stream) = s.streams.get_mut(&t.node_id) {
                    stream.tasks.push(t);
                }
            }
            Some(_) => {}
            None => {
                s.told.remove(id);
                let Some(node) = s.task_node.remove(id) else { return };
                if let Some(set) = s.node_tasks.get_mut(&node) {
                    set.remove(id);
                }
                if let Some(stream) = s.streams.get_mut(&node) {
                    stream.removed.push(id.to_string());
                }
            }
        }
    }

    /// Sends the batches that are due (`all`) or full; drops streams whose node went away.
    fn flush(&self, all: bool, store: &crate::store::Store) {
        let mut s = self.lock();
        let HubState { streams, maps, .. } = &mut *s;
        let mut gone = Vec::new();
        for (node, stream) in streams.iter_mut() {
            let n = stream.tasks.len()
                + stream.removed.len()
                + stream.secrets.len()
                + stream.removed_secrets.len()
                + stream.networks.len()
                + stream.removed_networks.len();
            if n == 0 || (!all && n < BATCH_LIMIT) {
                continue;
            }
            let msg = AssignmentsMessage {
                complete: false,
                tasks: sealed(store, std::mem::take(&mut stream.tasks)),
                removed: std::mem::take(&mut stream.removed),
                sequence: stream.sequence,
                secrets: secret_data(store, &std::mem::take(&mut stream.secrets)),
                removed_secrets: std::mem::take(&mut stream.removed_secrets)
                    .into_iter()
                    .map(|(id, v)| format!("{id}@{v}"))
                    .collect(),
                networks: std::mem::take(&mut stream.networks)
                    .iter()
                    .filter_map(|id| maps.for_node(node, id))
                    .collect(),
                removed_networks: std::mem::take(&mut stream.removed_networks)
                    .into_iter()
                    .collect(),
            };
            stream.sequence += 1;
            match stream.tx.try_send(Ok(msg)) {
                Ok(()) => {}
                // A node that cannot keep up reconnects and gets the full set again.
                Err(_) => gone.push(node.clone()),
            }
        }
        for node in gone {
            streams.remove(&node);
        }
    }
}

/// The tasks with their content-trust envelopes as the store has them now.
fn sealed(store: &crate::store::Store, mut tasks: Vec<Task>) -> Vec<Task> {
    if !tasks.is_empty() {
        let cluster = store.list::<Cluster>().ok().and_then(|c| c.into_iter().next());
        crate::trust::seal_tasks(store, cluster.as_ref(), &mut tasks);
    }
    tasks
}

/// Every network map, from the store as it is; `None` if it cannot be read.
fn build_maps(store: &crate::store::Store, tasks: &[Task]) -> Option<Maps> {
    let read = || -> Result<Maps, crate::store::StoreError> {
        let networks = store.list::<Network>()?;
        if networks.is_empty() {
            return Ok(Maps::default());
        }
        let services = store.list::<Service>()?;
        let nodes = store.list::<Node>()?;
        let ingress_nodes = match crate::networks::ports::find_ingress(&networks) {
            Some(n) => {
                let claims =
                    store.list_under::<shoal_proto::NameClaim>(&format!("ip/{}/", n.id))?;
                crate::networks::ports::node_claims(&claims, n)
            }
            None => Default::default(),
        };
        Ok(maps::build(&networks, &services, tasks, &nodes, &ingress_nodes))
    };
    match read() {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the network maps; retrying");
            None
        }
    }
}

impl Shared {
    /// Opens the assignment stream of `node_id`: its full set of tasks first.
    pub(crate) fn open_assignments(
        &self,
        node_id: &str,
    ) -> Result<mpsc::Receiver<Result<AssignmentsMessage, Status>>, Status> {
        let (tx, rx) = mpsc::channel(256);
        self.hub.open(node_id, tx, &self.store)?;
        Ok(rx)
    }

    /// Queues state reports from `node_id` for the next batched write, and waits for it.
    pub(crate) async fn report_status(
        &self,
        node_id: &str,
        updates: Vec<TaskStatusUpdate>,
    ) -> Result<(), Status> {
        let batcher = self.status_batcher.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(batcher) = batcher else {
            return Err(Status::failed_precondition("this manager is not the leader"));
        };
        let (done, wait) = oneshot::channel();
        batcher
            .send(StatusReport { node_id: node_id.to_string(), updates, done })
            .await
            .map_err(|_| Status::unavailable("leadership changed; report again"))?;
        wait.await.map_err(|_| Status::unavailable("leadership changed; report again"))?
    }
}

/// The data of secret versions, read from the store at the moment they are sent.
fn secret_data(store: &crate::store::Store, keys: &[SecretKey]) -> Vec<SecretData> {
    let mut out = Vec::with_capacity(keys.len());
    for (id, version) in keys {
        match store.get::<Secret>(id) {
            Ok(Some(secret)) => match crate::secrets::data_of(&secret, *version) {
                Some(data) => out.push(SecretData {
                    id: id.clone(),
                    version: *version,
                    data,
                    kind: secret.kind,
                }),
                None => tracing::warn!(secret = %id, version, "secret version no longer kept"),
            },
            _ => tracing::warn!(secret = %id, "secret used by a task is gone"),
        }
    }
    out
}

/// One agent's reports, waiting to be written.
#[derive(Debug)]
pub(crate) struct StatusReport {
    node_id: String,
    updates: Vec<TaskStatusUpdate>,
    done: oneshot::Sender<Result<(), Status>>,
}

/// Applies reported states to the tasks in one transaction: only the reporting node's own
/// tasks, only forward (or the same state with a new error or health).
fn apply_reports(tx: &mut crate::store::Tx<'_>, reports: &[StatusReport]) -> Result<(), Status> {
    for r in reports {
        for u in &r.updates {
            let Some(status) = &u.status else { continue };
            let Some(mut task) = tx.get::<Task>(&u.task_id)? else { continue };
            if task.node_id != r.node_id {
                tracing::warn!(node = %r.node_id, task = %u.task_id, "node reported a task that is not its own");
                continue;
            }
            let current = task.status.clone().unwrap_or_default();
            // Only a new state, error or health is written: a report that changes nothing
            // else (its message, its time) would be a Raft write a node could repeat forever.
            let forward = status.state > current.state
                || (status.state == current.state
                    && (status.health != current.health || status.err != current.err));
            if forward {
                if status.state().is_terminal() {
                    crate::networks::release_task(tx, &task)?;
                }
                task.status = Some(status.clone());
                tx.update(task)?;
            }
        }
    }
    Ok(())
}

/// Runs the leader's assignment routing and status batching until `shared` goes away or the
/// returned handles are aborted.
pub(crate) fn spawn(shared: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    let events = shared.store.watch();
    shared.hub.load(&shared.store);
    let (tx, rx) = mpsc::channel(1024);
    *shared.status_batcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    let span = tracing::info_span!(parent: None, "dispatcher", node = %shared.local_node_id);
    vec![
        tokio::spawn(route(Arc::downgrade(shared), events).instrument(span.clone())),
        tokio::spawn(batch_status(Arc::downgrade(shared), rx).instrument(span)),
    ]
}

async fn route(weak: Weak<Shared>, mut events: broadcast::Receiver<Event>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut maps_built = tokio::time::Instant::now();
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(shared) = weak.upgrade() else { return };
                match ev {
                    Ok(e) => on_event(&shared, e),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Rebuild from the store; every stream resyncs with a full set.
                        tracing::warn!(missed = n, "assignments fell behind the store; reloading");
                        shared.hub.clear();
                        shared.hub.load(&shared.store);
                    }
                    Err(_) => return,
                }
                // Take whatever else is already waiting before sending.
                while let Ok(e) = events.try_recv() {
                    on_event(&shared, e);
                }
                shared.hub.flush(false, &shared.store);
            }
            _ = tick.tick() => {
                let Some(shared) = weak.upgrade() else { return };
                if !shared.hub.is_ready() {
                    shared.hub.load(&shared.store);
                }
                if maps_built.elapsed() >= MAPS_EVERY && shared.hub.take_stale() {
                    maps_built = tokio::time::Instant::now();
                    let tasks = shared.store.list::<Task>().ok();
                    match tasks.and_then(|t| build_maps(&shared.store, &t)) {
                        Some(fresh) => {
                            let ordering = std::sync::atomic::Ordering::AcqRel;
                            // One write at a time; the next rebuild sees what it did.
                            if fresh.ingress_stale && !shared.hub.addressing.swap(true, ordering) {
                                tokio::spawn(address_nodes_on_ingress(weak.clone()));
                            }
                            shared.hub.set_maps(fresh);
                        }
                        None => shared.hub.mark_stale(),
                    }
                }
                shared.hub.flush(true, &shared.store);
            }
        }
    }
}

/// Gives nodes that joined since the ingress network was made an address on it (and takes
/// back those of removed nodes); the maps are rebuilt after.
async fn address_nodes_on_ingress(weak: Weak<Shared>) {
    let Some(shared) = weak.upgrade() else { return };
    let result = shared
        .store
        .update(|tx| {
            let networks = tx.list::<Network>()?;
            match crate::networks::ports::find_ingress(&networks).cloned() {
                Some(ingress) => crate::networks::ports::give_nodes_addresses(tx, &ingress),
                None => Ok(false),
            }
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not give nodes addresses on the ingress network");
        // Not again at once: the maps are rebuilt every 50 ms.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    shared.hub.addressing.store(false, std::sync::atomic::Ordering::Release);
    shared.hub.mark_stale();
}

fn on_event(shared: &Shared, e: Event) {
    if e.kind != "task" {
        shared.hub.on_change(&e.kind);
        return;
    }
    let task = if e.deleted { None } else { shared.store.get::<Task>(&e.id).ok().flatten() };
    shared.hub.on_task(&e.id, task);
}

async fn batch_status(weak: Weak<Shared>, mut rx: mpsc::Receiver<StatusReport>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].updates.len();
        let deadline = tokio::time::Instant::now() + STATUS_EVERY;
        while count < STATUS_LIMIT {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => {
                    count += r.updates.len();
                    batch.push(r);
                }
                _ => break,
            }
        }
        let Some(shared) = weak.upgrade() else { return };
        let result = shared.store.update(|tx| apply_reports(tx, &batch)).await;
        for r in batch {
            let _ = r.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerSpec, SecretReference, ServiceSpec, TaskStatus};

    fn task(id: &str, node: &str, state: TaskState, secrets: &[(&str, u64)]) -> Task {
        let secrets = secrets
            .iter()
            .map(|(s, v)| SecretReference {
                secret_id: s.to_string(),
                version: *v,
                ..Default::default()
            })
            .collect();
        Task {
            id: id.into(),
            node_id: node.into(),
            spec: Some(ServiceSpec {
                container: Some(ContainerSpec { secrets, ..Default::default() }),
                ..Default::default()
            }),
            status: Some(TaskStatus { state: state as i32, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_holds_a_secret_exactly_while_one_of_its_tasks_uses_it() {
        let mut s = HubState::default();
        let key = ("db".to_string(), 1);
        // Pending (not yet on a node): nothing is sent anywhere.
        let (_, gained, _) = s.track("t1", Some(&task("t1", "", TaskState::Pending, &[("db", 1)])));
        assert!(gained.is_empty());
        let (node, gained, _) =
            s.track("t1", Some(&task("t1", "a", TaskState::Assigned, &[("db", 1)])));
        assert_eq!((node.as_str(), gained), ("a", vec![key.clone()]));
        // A second task on the same node: no second copy; on another node: that node gets it.
        assert!(s
            .track("t2", Some(&task("t2", "a", TaskState::Running, &[("db", 1)])))
            .1
            .is_empty());
        assert_eq!(
            s.track("t3", Some(&task("t3", "b", TaskState::Running, &[("db", 1)]))).1,
            vec![key.clone()]
        );
        // Node a loses it only when its last task using it has stopped.
        assert!(s
            .track("t1", Some(&task("t1", "a", TaskState::Shutdown, &[("db", 1)])))
            .2
            .is_empty());
        let (node, _, lost) =
            s.track("t2", Some(&task("t2", "a", TaskState::Failed, &[("db", 1)])));
        assert_eq!((node.as_str(), lost), ("a", vec![key.clone()]));
        // A deleted task releases it too.
        assert_eq!(s.track("t3", None).2, vec![key]);
        assert!(s.node_secrets.values().all(|m| m.is_empty()));
    }
}
