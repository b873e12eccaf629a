//! The worker: runs the tasks the managers assign to this node. Applies the assignments stream
//! (a complete set, then changes) to one controller per task, re-attaches or discards the
//! containers an earlier agent left, and queues the task states to report. Talks to the
//! managers only through `link` (one dispatcher session at a time) and to containers only
//! through an [`Executor`].

mod choice;
mod controller;
pub mod executor;
#[cfg(any(test, feature = "test-util"))]
mod fake;
pub mod health;
pub mod link;
mod logs;
pub mod mounts;
mod oci;
pub mod secrets;
pub mod spec;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use shoal_proto::{AssignmentsMessage, Task};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use choice::ExecutorChoice;
pub use executor::{describe_host, ExecError, ExecOutput, Executor, ExitStatus};
#[cfg(any(test, feature = "test-util"))]
pub use fake::FakeExecutor;
pub use oci::OciExecutor;
pub use status::StatusQueue;

/// Where a node keeps its content-trust pins, under its data root (the runtime's directory).
pub fn trust_pins_path(data_root: &std::path::Path) -> std::path::PathBuf {
    data_root.join("runtime").join("trust").join("pins.json")
}

use controller::{Controller, Desired};

/// Runs this node's tasks. Cheap to clone; all clones drive the same tasks.
#[derive(Clone, Debug)]
pub struct Worker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    exec: Arc<dyn Executor>,
    queue: Arc<StatusQueue>,
    tasks: Mutex<HashMap<String, Entry>>,
    /// Secret and config data for this node's tasks, in memory only.
    secrets: Arc<secrets::SecretStore>,
    /// Whether the containers of an earlier agent have been claimed (first complete set).
    recovered: AtomicBool,
    /// The span the worker's own tasks (controllers, removals) run in.
    span: tracing::Span,
}

/// A task the worker knows: how to tell its controller what is wanted, and the controller
/// (none for a task that arrived already finished).
#[derive(Debug)]
struct Entry {
    desired: watch::Sender<Desired>,
    controller: Option<JoinHandle<()>>,
}

impl Worker {
    /// A worker running tasks through `exec`.
    pub fn new(exec: Arc<dyn Executor>) -> Worker {
        Worker::with_span(exec, tracing::Span::none())
    }

    /// A worker whose controllers and removals run in `span` (the agent's names its node).
    pub fn with_span(exec: Arc<dyn Executor>, span: tracing::Span) -> Worker {
        let shared = Shared {
            exec,
            queue: Arc::new(StatusQueue::default()),
            tasks: Mutex::new(HashMap::new()),
            secrets: Arc::default(),
            recovered: AtomicBool::new(false),
            span,
        };
        Worker { shared: Arc::new(shared) }
    }

    fn span(&self) -> tracing::Span {
        self.shared.span.clone()
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.shared.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one message of the assignments stream. A complete set stops and removes every
    /// task not in it; the first one also claims or discards an earlier agent's containers.
    pub async fn apply(&self, mut msg: AssignmentsMessage) {
        // Secrets and network maps first: the tasks of the same message may need them.
        self.shared.secrets.take(&mut msg);
        if msg.complete || !msg.networks.is_empty() || !msg.removed_networks.is_empty() {
            let maps = std::mem::take(&mut msg.networks);
            self.shared.exec.update_networks(maps, &msg.removed_networks, msg.complete).await;
        }
        let mut leftovers =
            if msg.complete { self.claim_leftovers().await } else { HashSet::new() };
        {
            let mut tasks = self.tasks();
            if msg.complete {
                let keep: HashSet<String> = msg.tasks.iter().map(|t| t.id.clone()).collect();
                let gone: Vec<String> =
                    tasks.keys().filter(|id| !keep.contains(*id)).cloned().collect();
                for id in gone {
                    self.remove(&mut tasks, &id);
                }
                self.shared.exec.retain_logs(&keep);
            }
            for task in msg.tasks {
                let adopt = leftovers.remove(&task.id);
                self.upsert(&mut tasks, task, adopt);
            }
            for id in &msg.removed {
                self.remove(&mut tasks, id);
            }
        }
        self.shared.secrets.forget(&msg.removed_secrets);
        for id in leftovers {
            tracing::info!(task = %id, "removing a container no task on this node needs");
            let exec = self.shared.exec.clone();
            tokio::spawn(async move { exec.forget(&id).await }.instrument(self.span()));
        }
    }

    /// The leftover containers, the first time a complete set arrives; none after. (Marked
    /// done only once listed: an apply cut short by the session's end asks again.)
    async fn claim_leftovers(&self) -> HashSet<String> {
        if self.shared.recovered.load(Ordering::SeqCst) {
            return HashSet::new();
        }
        let listed = self.shared.exec.leftovers().await;
        self.shared.recovered.store(true, Ordering::SeqCst);
        match listed {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not list the containers of an earlier agent");
                HashSet::new()
            }
        }
    }

    fn upsert(&self, tasks: &mut HashMap<String, Entry>, task: Task, adopt: bool) {
        let desired = Desired::of(&task);
        if let Some(entry) = tasks.get(&task.id) {
            entry.desired.send_if_modified(|d| {
                let changed = *d != desired && !d.removed;
                if changed {
                    *d = desired;
                }
                changed
            });
            return;
        }
        let (tx, rx) = watch::channel(desired);
        let controller = (!task.state().is_terminal() || adopt).then(|| {
            self.shared.queue.track(&task.id, task.state());
            let c = Controller {
                id: task.id.clone(),
                exec: self.shared.exec.clone(),
                queue: self.shared.queue.clone(),
                secrets: self.shared.secrets.clone(),
                desired: rx,
            };
            tokio::spawn(c.run(Box::new(task.clone()), adopt).instrument(self.span()))
        });
        tasks.insert(task.id, Entry { desired: tx, controller });
    }

    /// Forgets a task: its controller stops it without reporting, then its container and
    /// logs are removed (by the returned task).
    fn remove(&self, tasks: &mut HashMap<String, Entry>, id: &str) -> Option<JoinHandle<()>> {
        let entry = tasks.remove(id)?;
        entry.desired.send_modify(|d| d.removed = true);
        self.shared.queue.untrack(id);
        let (exec, id) = (self.shared.exec.clone(), id.to_string());
        let removal = async move {
            if let Some(c) = entry.controller {
                let _ = c.await;
            }
            exec.forget(&id).await;
        };
        Some(tokio::spawn(removal.instrument(self.span())))
    }

    /// Stops and removes every task and container on this node, with their logs (the node
    /// leaves the swarm). Returns once they are gone.
    pub async fn remove_all(&self) {
        let removals: Vec<JoinHandle<()>> = {
            let mut tasks = self.tasks();
            let ids: Vec<String> = tasks.keys().cloned().collect();
            ids.iter().filter_map(|id| self.remove(&mut tasks, id)).collect()
        };
        futures::future::join_all(removals).await;
        for id in self.shared.exec.leftovers().await.unwrap_or_default() {
            self.shared.exec.forget(&id).await;
        }
        self.shared.exec.retain_logs(&HashSet::new());
    }

    /// Task states waiting to be reported.
    pub fn statuses(&self) -> &Arc<StatusQueue> {
        &self.shared.queue
    }

    /// The executor the tasks run on.
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.shared.exec
    }

    /// Whether task `id` is among this node's assignments.
    pub fn knows(&self, id: &str) -> bool {
        self.tasks().contains_key(id)
    }

    /// How many tasks this node has (finished ones included until the managers drop them).
    pub fn task_count(&self) -> usize {
        self.tasks().len()
    }

    /// Stops driving tasks (the agent is going away). Containers keep running, to be
    /// re-attached by the next agent on this node.
    pub fn shutdown(&self) {
        for entry in self.tasks().values() {
            if let Some(c) = &entry.controller {
                c.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests;
