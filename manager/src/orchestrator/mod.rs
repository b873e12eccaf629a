//! Owns turning services into tasks, on the leader only: keeps replicated services at their
//! slot count and global services on every eligible node, restarts tasks by their restart
//! policy, replaces tasks of nodes that went Down or were drained, rolls updates out slot by
//! slot (and back), places new tasks with the scheduler, and trims task history.
//!
//! It keeps an in-memory copy of services, tasks and nodes fed by the store's change feed, plans
//! a batch of operations from it, and commits them in few transactions; what it wrote comes back
//! through the feed, so the copy never runs ahead of the store.

mod plan;
mod rollout;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use shoal_proto::{Member, Node, Service, Task, TaskState, TaskStatus, UpdateState, UpdateStatus};
use tokio::sync::broadcast;
use tracing::Instrument;

use crate::manager::{now_ms, Manager, Shared};
use crate::networks::NetworkError;
use crate::store::{Event, StoreError, Tx};

pub use plan::Op;

/// Changes are gathered for this long before a pass, so a burst becomes one write.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// Timers (restart delays, update delays and monitors) are checked this often.
const TICK: Duration = Duration::from_millis(250);
/// Every this many ticks a pass covers every service (a safety net for a write that failed);
/// other ticks cover only services with a timer running.
const FULL_EVERY: u32 = 20;
/// Operations per transaction.
const CHUNK: usize = 1_000;

/// The orchestrator's copy of the cluster.
#[derive(Debug, Default)]
pub struct World {
    pub services: HashMap<String, Service>,
    pub tasks: HashMap<String, Task>,
    pub nodes: HashMap<String, Node>,
    pub by_service: HashMap<String, HashSet<String>>,
    /// Restart times per (service, slot key), in memory like Swarm's (inexact after a leader
    /// change).
    pub restarts: HashMap<(String, String), Vec<i64>>,
    /// When each service may start its next slot update (its update delay).
    pub next_update_at: HashMap<String, i64>,
    /// Recent task failures (node, service, spec version, time) for the scheduler.
    pub failures: VecDeque<(String, String, u64, i64)>,
    /// Tasks already counted in `failures` or `restarts`.
    pub seen_dead: HashSet<String>,
}

impl World {
    fn put_task(&mut self, t: Task) {
        self.by_service.entry(t.service_id.clone()).or_default().insert(t.id.clone());
        self.tasks.insert(t.id.clone(), t);
    }

    fn drop_task(&mut self, id: &str) -> Option<String> {
        let t = self.tasks.remove(id)?;
        if let Some(set) = self.by_service.get_mut(&t.service_id) {
            set.remove(id);
            if set.is_empty() {
                self.by_service.remove(&t.service_id);
            }
        }
        self.seen_dead.remove(id);
        Some(t.service_id)
    }

    /// Services with a timer running: an update in progress (delay, monitor), or tasks waiting
    /// for their restart delay or for a node.
    fn timed(&self) -> HashSet<String> {
        let mut out: HashSet<String> = self.next_update_at.keys().cloned().collect();
        for s in self.services.values() {
            let state = s.update_status.as_ref().map(|u| u.state()).unwrap_or_default();
            if matches!(state, UpdateState::Updating | UpdateState::RollbackStarted) {
                out.insert(s.id.clone());
            }
        }
        for t in self.tasks.values() {
            if t.state() < TaskState::Assigned && t.desired_state <= TaskState::Running as i32 {
                out.insert(t.service_id.clone());
            }
        }
        out.retain(|id| self.services.contains_key(id));
        out
    }

    /// Loads everything (a new leader, or after missing changes).
    /// Replaces the copy only once everything was read: planning from a partial copy (services
    /// without their tasks) would create whole new replica sets.
    fn load(&mut self, shared: &Shared) -> Result<(), StoreError> {
        let mut fresh = World::default();
        for s in shared.store.list::<Service>()? {
            fresh.services.insert(s.id.clone(), s);
        }
        for n in shared.store.list::<Node>()? {
            fresh.nodes.insert(n.id.clone(), n);
        }
        for t in shared.store.list::<Task>()? {
            fresh.put_task(t);
        }
        fresh.restarts = std::mem::take(&mut self.restarts);
        *self = fresh;
        Ok(())
    }
}

/// What needs a pass.
#[derive(Debug, Default)]
struct Dirty {
    all: bool,
    services: HashSet<String>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty()
    }
}

fn on_event(shared: &Shared, world: &mut World, dirty: &mut Dirty, e: Event) {
    match e.kind.as_str() {
        "service" => {
            if e.deleted {
                world.services.remove(&e.id);
            } else if let Ok(Some(s)) = shared.store.get::<Service>(&e.id) {
                world.services.insert(e.id.clone(), s);
            }
            dirty.services.insert(e.id);
        }
        "task" => {
            if e.deleted {
                if let Some(sid) = world.drop_task(&e.id) {
                    dirty.services.insert(sid);
                }
            } else if let Ok(Some(t)) = shared.store.get::<Task>(&e.id) {
                dirty.services.insert(t.service_id.clone());
                world.put_task(t);
            }
        }
        "node" => {
            if e.deleted {
                world.nodes.remove(&e.id);
            } else if let Ok(Some(n)) = shared.store.get::<Node>(&e.id) {
                world.nodes.insert(e.id, n);
            }
            dirty.all = true;
        }
        _ => {}
    }
}

/// Applies one planned operation to fresh reads inside a transaction. Each is a no-op when the
/// store already moved past it, so a retried or stale plan does no harm.
fn apply(tx: &mut Tx<'_>, op: &Op) -> Result<(), StoreError> {
    match op {
        Op::Create(t) => {
            let mut t = (**t).clone();
            match crate::networks::attach_task(tx, &mut t) {
                Ok(()) => {}
                Err(NetworkError::Store(e)) => return Err(e),
                // No address to be had: the task is refused, and the restart policy tries again.
                Err(e) => {
                    t.status = Some(TaskStatus {
                        state: TaskState::Rejected as i32,
                        timestamp_ms: now_ms(),
                        message: "network allocation failed".into(),
                        err: e.to_string(),
                        ..Default::default()
                    });
                }
            }
            tx.create(t)
        }
        Op::Desired(id, state) => {
            let Some(mut t) = tx.get::<Task>(id)? else { return Ok(()) };
            if (*state as i32) > t.desired_state {
                t.desired_state = *state as i32;
                // A task that never reached a node will not run: its addresses go back now.
                if t.state() < TaskState::Assigned && *state > TaskState::Running {
                    crate::networks::release_task(tx, &t)?;
                }
                tx.update(t)?;
            }
            Ok(())
        }
        Op::Assign(id, node) => {
            let Some(mut t) = tx.get::<Task>(id)? else { return Ok(()) };
            if t.state() < TaskState::Assigned && t.desired_state <= TaskState::Running as i32 {
                t.node_id = node.clone();
                t.unscheduled_reason.clear();
                t.status = Some(TaskStatus {
                    state: TaskState::Assigned as i32,
                    timestamp_ms: now_ms(),
                    message: "scheduler assigned task to node".into(),
                    ..Default::default()
                });
                tx.update(t)?;
            }
            Ok(())
        }
        Op::Reason(id, reason) => {
            let Some(mut t) = tx.get::<Task>(id)? else { return Ok(()) };
            if t.state() < TaskState::Assigned && &t.unscheduled_reason != reason {
                t.unscheduled_reason = reason.clone();
                tx.update(t)?;
            }
            Ok(())
        }
        Op::Delete(id) => {
            if let Some(t) = tx.get::<Task>(id)? {
                crate::networks::release_task(tx, &t)?;
                tx.delete::<Task>(id)?;
            }
            Ok(())
        }
        Op::UpdateStatus(id, status, planned) => {
            let Some(mut s) = tx.get::<Service>(id)? else { return Ok(()) };
            if s.spec_version != *planned {
                return Ok(());
            }
            let mut status = status.clone();
            if status.started_at_ms == 0 {
                status.started_at_ms =
                    s.update_status.as_ref().map(|u| u.started_at_ms).unwrap_or(0);
            }
            if s.update_status.as_ref() != Some(&status) {
                s.update_status = Some(status);
                tx.update(s)?;
            }
            Ok(())
        }
        Op::Rollback(id, message, planned) => {
            let Some(mut s) = tx.get::<Service>(id)? else { return Ok(()) };
            if s.spec_version != *planned {
                return Ok(());
            }
            let Some(previous) = s.previous_spec.take() else { return Ok(()) };
            s.previous_spec = s.spec.take();
            s.spec = Some(previous);
            s.previous_spec_version = s.spec_version;
            s.spec_version += 1;
            s.update_status = Some(UpdateStatus {
                state: UpdateState::RollbackStarted as i32,
                started_at_ms: now_ms(),
                completed_at_ms: 0,
                message: message.clone(),
            });
            tx.update(s)
        }
    }
}

/// Commits a pass's operations in chunks proposed together, so Raft replicates and syncs them
/// in the same rounds rather than one after another.
async fn commit(shared: &Shared, ops: &[Op]) {
    let writes = ops.chunks(CHUNK).map(|chunk| async move {
        let result = shared
            .store
            .update(|tx| {
                for op in chunk {
                    apply(tx, op)?;
                }
                Ok::<_, StoreError>(())
            })
            .await;
        if let Err(e) = result {
            // The next pass plans again from what the store holds.
            tracing::warn!(error = %e, ops = chunk.len(), "orchestrator write failed");
        }
    });
    futures::future::join_all(writes).await;
}

/// The orchestrator loop of a leader; ends when the manager goes away.
async fn run(weak: Weak<Shared>, mut events: broadcast::Receiver<Event>) {
    let mut world = World::default();
    loop {
        let Some(shared) = weak.upgrade() else { return };
        match world.load(&shared) {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "orchestrator could not load the store; retrying"),
        }
        drop(shared);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut dirty = Dirty { all: true, ..Default::default() };
    let mut tick = tokio::time::interval(TICK);
    let mut ticks = 0u32;
    loop {
        if dirty.is_empty() {
            tokio::select! {
                ev = events.recv() => {
                    let Some(shared) = weak.upgrade() else { return };
                    match ev {
                        Ok(e) => on_event(&shared, &mut world, &mut dirty, e),
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            if let Err(e) = world.load(&shared) {
                                tracing::warn!(error = %e, "orchestrator could not reload the store");
                            }
                            dirty.all = true;
                        }
                        Err(_) => return,
                    }
                    drop(shared);
                    tokio::time::sleep(DEBOUNCE).await;
                }
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(FULL_EVERY) {
                        dirty.all = true;
                    } else {
                        dirty.services = world.timed();
                    }
                }
            }
        }
        let Some(shared) = weak.upgrade() else { return };
        loop {
            match events.try_recv() {
                Ok(e) => on_event(&shared, &mut world, &mut dirty, e),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    if let Err(e) = world.load(&shared) {
                        tracing::warn!(error = %e, "orchestrator could not reload the store");
                    }
                    dirty.all = true;
                }
                Err(_) => break,
            }
        }
        let services: Vec<String> = if dirty.all {
            let mut all: HashSet<String> = world.services.keys().cloned().collect();
            all.extend(world.by_service.keys().cloned());
            all.into_iter().collect()
        } else {
            dirty.services.drain().collect()
        };
        dirty = Dirty::default();
        let ops = plan::plan(&mut world, &services, now_ms());
        if !ops.is_empty() {
            tracing::debug!(ops = ops.len(), "orchestrator pass");
            commit(&shared, &ops).await;
        }
    }
}

impl Manager {
    /// Runs the leader-only parts of services — the orchestrator, assignment streams and
    /// status batching — whenever this manager leads; stops them when it no longer does.
    pub fn spawn_orchestrator(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        let mut status = self.shared.raft.watch();
        let span = tracing::info_span!("orchestrator", node = %self.shared.local_node_id);
        let task = async move {
            let mut running: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            loop {
                let leader = status.borrow_and_update().is_leader;
                if leader && running.is_empty() {
                    let Some(shared) = weak.upgrade() else { break };
                    // Everything committed by earlier leaders must be applied first.
                    if shared.store.barrier().await.is_ok() && shared.raft.status().is_leader {
                        let events = shared.store.watch();
                        running = crate::assignments::spawn(&shared);
                        let orchestrate = run(Arc::downgrade(&shared), events);
                        running.push(tokio::spawn(orchestrate.in_current_span()));
                        let reachability = track_reachability(Arc::downgrade(&shared));
                        running.push(tokio::spawn(reachability.in_current_span()));
                        tracing::info!("leading: orchestrator and dispatcher assignments started");
                    }
                } else if !leader && !running.is_empty() {
                    stop(&weak, &mut running);
                }
                // Re-check now and then too: a barrier can fail during an election.
                tokio::select! {
                    changed = status.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            stop(&weak, &mut running);
        };
        tokio::spawn(task.instrument(span))
    }
}

/// While this manager leads: records in each member whether the leader hears from it, so
/// `node ls` on every manager shows the same reachability. Writes only when that changes.
async fn track_reachability(weak: Weak<Shared>) {
    let Some(mut status) = weak.upgrade().map(|s| s.raft.watch()) else { return };
    let mut recorded: Option<Vec<u64>> = None;
    loop {
        let unreachable = status.borrow_and_update().unreachable.clone();
        if recorded.as_ref() != Some(&unreachable) {
            let Some(shared) = weak.upgrade() else { return };
            match record_reachability(&shared, &unreachable).await {
                Ok(()) => recorded = Some(unreachable),
                Err(e) => tracing::debug!(error = %e, "recording manager reachability"),
            }
        }
        // Also now and then: a member added since has its flag checked too.
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => recorded = None,
        }
    }
}

async fn record_reachability(shared: &Shared, unreachable: &[u64]) -> Result<(), StoreError> {
    shared
        .store
        .update(|tx| {
            for mut m in tx.list::<Member>()? {
                let now = unreachable.contains(&m.raft_id);
                if m.unreachable != now {
                    if now {
                        tracing::warn!(manager = %m.node_id, addr = %m.addr, "manager unreachable");
                    } else {
                        tracing::info!(manager = %m.node_id, "manager reachable again");
                    }
                    m.unreachable = now;
                    tx.update(m)?;
                }
            }
            Ok::<_, StoreError>(())
        })
        .await
}

fn stop(weak: &Weak<Shared>, running: &mut Vec<tokio::task::JoinHandle<()>>) {
    for h in running.drain(..) {
        h.abort();
    }
    if let Some(shared) = weak.upgrade() {
        shared.hub.clear();
        *shared.status_batcher.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!("no longer leading: orchestrator stopped");
    }
}
