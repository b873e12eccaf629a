//! Owns `service logs` on the leader: tells the nodes that run a service's tasks what to send
//! (subscriptions on their listen streams) and routes the lines they publish to the subscriber.
//! A node can publish only for subscriptions sent to it, and only for the tasks named there.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use shoal_proto::control_client::ControlClient;
use shoal_proto::{LogMessage, LogSubscription, PublishLogsMessage, ServiceLogsRequest, Task};
use tokio::sync::mpsc;
use tonic::Status;

use crate::manager::Shared;

type Lines = mpsc::Sender<Result<LogMessage, Status>>;
type Listener = mpsc::Sender<Result<LogSubscription, Status>>;

/// A subscription ends after this long without lines unless it follows.
const IDLE_END: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Sub {
    tx: Lines,
    /// Task → the node that runs it: a node may publish only for its own tasks.
    tasks: HashMap<String, String>,
    /// Nodes that have not finished sending (only matters without follow).
    pending: HashSet<String>,
    follow: bool,
}

#[derive(Debug, Default)]
struct State {
    listeners: HashMap<String, Listener>,
    subs: HashMap<String, Sub>,
}

/// Log subscriptions and the nodes' listen streams.
#[derive(Debug, Default)]
pub(crate) struct LogRouter {
    state: Mutex<State>,
}

impl LogRouter {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node's stream of subscriptions (replacing an older one).
    pub fn listen(&self, node_id: &str) -> mpsc::Receiver<Result<LogSubscription, Status>> {
        let (tx, rx) = mpsc::channel(64);
        self.lock().listeners.insert(node_id.to_string(), tx);
        rx
    }

    /// Routes lines a node published; false when the subscription is gone (stop sending).
    pub fn publish(&self, node_id: &str, msg: PublishLogsMessage) -> bool {
        let mut s = self.lock();
        let Some(sub) = s.subs.get_mut(&msg.subscription_id) else { return false };
        if !sub.pending.contains(node_id) {
            return false;
        }
        if msg.messages.is_empty() {
            // An empty message ends this node's part of a subscription without follow.
            if !sub.follow {
                sub.pending.remove(node_id);
                if sub.pending.is_empty() {
                    s.subs.remove(&msg.subscription_id);
                }
            }
            return true;
        }
        for m in msg.messages {
            if sub.tasks.get(&m.task_id).map(String::as_str) != Some(node_id) {
                tracing::warn!(node = %node_id, task = %m.task_id, "log line for a task outside the subscription");
                continue;
            }
            if sub.tx.try_send(Ok(m)).is_err() && sub.tx.is_closed() {
                s.subs.remove(&msg.subscription_id);
                return false;
            }
        }
        true
    }

    /// A node's publish stream ended.
    pub fn node_done(&self, node_id: &str, subscription_id: &str) {
        let mut s = self.lock();
        if let Some(sub) = s.subs.get_mut(subscription_id) {
            sub.pending.remove(node_id);
            if sub.pending.is_empty() {
                s.subs.remove(subscription_id);
            }
        }
    }

    fn end(&self, id: &str) {
        let mut s = self.lock();
        if let Some(sub) = s.subs.remove(id) {
            for node in sub.pending {
                if let Some(l) = s.listeners.get(&node) {
                    let close =
                        LogSubscription { id: id.to_string(), close: true, ..Default::default() };
                    let _ = l.try_send(Ok(close));
                }
            }
        }
    }
}

/// Streams the logs of `tasks` to `out`: asks each connected node for its tasks' lines.
pub(crate) async fn stream(
    shared: &Shared,
    tasks: Vec<Task>,
    follow: bool,
    tail: u64,
    out: Lines,
) -> Result<(), Status> {
    let id = shoal_pki::id::new_id();
    let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
    for t in &tasks {
        if !t.node_id.is_empty() {
            by_node.entry(t.node_id.clone()).or_default().push(t.id.clone());
        }
    }
    let (tx, mut rx) = mpsc::channel(1024);
    {
        let mut s = shared.logs.lock();
        let mut pending = HashSet::new();
        for (node, task_ids) in &by_node {
            let Some(listener) = s.listeners.get(node) else { continue };
            let sub = LogSubscription {
                id: id.clone(),
                task_ids: task_ids.clone(),
                follow,
                tail,
                close: false,
            };
            if listener.try_send(Ok(sub)).is_ok() {
                pending.insert(node.clone());
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let tasks = tasks.iter().map(|t| (t.id.clone(), t.node_id.clone())).collect();
        s.subs.insert(id.clone(), Sub { tx, tasks, pending, follow });
    }
    loop {
        let next = if follow {
            tokio::select! {
                m = rx.recv() => m,
                _ = out.closed() => None,
            }
        } else {
            tokio::time::timeout(IDLE_END, rx.recv()).await.unwrap_or(None)
        };
        let Some(line) = next else { break };
        if out.send(line).await.is_err() {
            break;
        }
    }
    shared.logs.end(&id);
    Ok(())
}

/// Asks the leader for the logs (only the leader has the nodes' sessions).
pub(crate) async fn forward_to_leader(
    shared: &Shared,
    req: ServiceLogsRequest,
    out: Lines,
) -> Result<(), Status> {
    let leader = shared
        .leader_addr()
        .ok_or_else(|| Status::unavailable("no leader is known; retry in a moment"))?;
    let channel = shoal_proto::dial::connect(&leader, shared.tls.clone())
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach the leader at {leader}: {e}")))?;
    let mut stream = ControlClient::new(channel).service_logs(req).await?.into_inner();
    while let Some(m) = stream.message().await? {
        if out.send(Ok(m)).await.is_err() {
            break;
        }
    }
    Ok(())
}
