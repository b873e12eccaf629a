//! Owns the scheduler's picture of the cluster: per node, what it offers, what its tasks hold,
//! and recent task failures. Kept in memory and fed by the caller; never reads the store.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use shoal_proto::{Availability, Node, NodeRole, NodeState, ServiceSpec, Task, TaskState};

/// How long a task failure counts against a node for faulty-node avoidance.
pub const FAILURE_WINDOW_MS: i64 = 5 * 60 * 1000;
/// Failures of one service version on one node, within the window, that make the node faulty.
pub const MAX_FAILURES: usize = 5;

/// CPU and memory, as nodes offer them and tasks reserve them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuMem {
    pub nano_cpus: i64,
    pub memory_bytes: i64,
}

impl CpuMem {
    /// The reservations of a service spec (zero when it has none).
    pub fn reserved_by(spec: &ServiceSpec) -> CpuMem {
        let r = spec.resources.as_ref().and_then(|r| r.reservations.as_ref());
        r.map(|r| CpuMem { nano_cpus: r.nano_cpus.max(0), memory_bytes: r.memory_bytes.max(0) })
            .unwrap_or_default()
    }

    fn add(&mut self, other: CpuMem, sign: i64) {
        self.nano_cpus += sign * other.nano_cpus;
        self.memory_bytes += sign * other.memory_bytes;
    }
}

/// A port published in host mode: one task per node can have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub udp: bool,
    pub port: u32,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, if self.udp { "udp" } else { "tcp" })
    }
}

impl HostPort {
    /// The host-mode ports of a service spec.
    pub fn of(spec: &ServiceSpec) -> Vec<HostPort> {
        let ports = spec.endpoint.as_ref().map(|e| e.ports.as_slice()).unwrap_or_default();
        ports
            .iter()
            .filter(|p| p.publish_mode == "host" && p.published_port != 0)
            .map(|p| HostPort { udp: p.protocol == "udp", port: p.published_port })
            .collect()
    }
}

/// What the scheduler knows about one node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub hostname: String,
    pub role: NodeRole,
    /// From the node's advertised address, without the port.
    pub ip: Option<IpAddr>,
    /// The node's state is READY.
    pub ready: bool,
    pub availability: Availability,
    pub labels: HashMap<String, String>,
    pub os: String,
    pub arch: String,
    /// The MAC layers the node applies to every task (`node.platform.mac`).
    pub mac: Vec<String>,
    /// What the node offers; 0 means unknown (never refused for that resource).
    pub total: CpuMem,
    /// What the tasks counted on this node reserve.
    pub reserved: CpuMem,
    pub tasks_total: usize,
    pub tasks_by_service: HashMap<String, usize>,
    /// Host-mode ports the tasks counted here publish (and how many have each).
    pub host_ports: HashMap<HostPort, usize>,
    /// Failure times (ms) by (service ID, spec version), pruned to the failure window.
    pub recent_failures: HashMap<(String, u64), Vec<i64>>,
}

impl NodeInfo {
    fn new(node: &Node) -> NodeInfo {
        let mut info = NodeInfo {
            id: node.id.clone(),
            hostname: String::new(),
            role: NodeRole::Worker,
            ip: None,
            ready: false,
            availability: Availability::Active,
            labels: HashMap::new(),
            os: String::new(),
            arch: String::new(),
            mac: Vec::new(),
            total: CpuMem::default(),
            reserved: CpuMem::default(),
            tasks_total: 0,
            tasks_by_service: HashMap::new(),
            host_ports: HashMap::new(),
            recent_failures: HashMap::new(),
        };
        info.describe(node);
        info
    }

    /// Refreshes everything the node object says; task counts and failures are kept.
    fn describe(&mut self, node: &Node) {
        let desc = node.description.clone().unwrap_or_default();
        self.hostname = node.hostname.clone();
        self.role = node.role();
        self.ip = ip_of(&node.addr);
        self.ready = node.state() == NodeState::Ready;
        self.availability = node.availability();
        self.labels = node.labels.clone();
        self.os = desc.os;
        self.arch = desc.arch;
        self.mac = desc.mac;
        self.total = CpuMem { nano_cpus: desc.nano_cpus, memory_bytes: desc.memory_bytes };
    }

    /// Tasks of `service_id` counted on this node.
    pub fn service_tasks(&self, service_id: &str) -> usize {
        self.tasks_by_service.get(service_id).copied().unwrap_or(0)
    }

    /// Whether at least [`MAX_FAILURES`] tasks of this service version failed here within
    /// [`FAILURE_WINDOW_MS`] before `now_ms`.
    pub fn is_faulty(&self, key: &(String, u64), now_ms: i64) -> bool {
        let Some(times) = self.recent_failures.get(key) else { return false };
        times.iter().filter(|&&t| now_ms - t < FAILURE_WINDOW_MS).count() >= MAX_FAILURES
    }

    /// Whether a counted task publishes `port` in host mode here.
    pub fn has_host_port(&self, port: &HostPort) -> bool {
        self.host_ports.get(port).is_some_and(|n| *n > 0)
    }

    fn count(&mut self, service_id: &str, res: CpuMem, ports: &[HostPort], sign: i64) {
        self.reserved.add(res, sign);
        for p in ports {
            let n = self.host_ports.entry(*p).or_default();
            *n = n.saturating_add_signed(sign as isize);
            if *n == 0 {
                self.host_ports.remove(p);
            }
        }
        if sign > 0 {
            self.tasks_total += 1;
            match self.tasks_by_service.get_mut(service_id) {
                Some(n) => *n += 1,
                None => drop(self.tasks_by_service.insert(service_id.to_string(), 1)),
            }
        } else {
            self.tasks_total = self.tasks_total.saturating_sub(1);
            if let Some(n) = self.tasks_by_service.get_mut(service_id) {
                *n -= 1;
                if *n == 0 {
                    self.tasks_by_service.remove(service_id);
                }
            }
        }
    }
}

/// The host part of `host:port`, `[v6]:port`, or a bare address.
fn ip_of(addr: &str) -> Option<IpAddr> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && !h.contains(':') => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// A task counted on a node, remembered so that counting is idempotent.
#[derive(Debug, Clone)]
struct Counted {
    /// The node's position in `ClusterView::nodes` (kept right when nodes come and go).
    node: usize,
    service_id: Arc<str>,
    res: CpuMem,
    ports: Arc<[HostPort]>,
}

/// What the scheduler knows about the whole cluster. Nodes are kept sorted by ID.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    tasks: HashMap<String, Counted>,
}

/// Whether a task holds resources on its node: it has one, and neither its desired nor its
/// observed state is past RUNNING.
pub fn holds_resources(task: &Task) -> bool {
    !task.node_id.is_empty()
        && task.desired_state <= TaskState::Running as i32
        && task.state() <= TaskState::Running
}

impl ClusterView {
    /// Builds the view from all nodes and tasks; only tasks that hold resources are counted.
    pub fn build<'a>(nodes: &[Node], tasks: impl IntoIterator<Item = &'a Task>) -> ClusterView {
        let mut nodes: Vec<NodeInfo> = nodes.iter().map(NodeInfo::new).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.dedup_by(|a, b| a.id == b.id);
        let mut view = ClusterView { nodes, ..ClusterView::default() };
        view.reindex();
        for task in tasks {
            view.add_task(task);
        }
        view
    }

    /// All nodes, sorted by ID.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, id: &str) -> Option<&NodeInfo> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    /// Counts a task on its node. Idempotent; a task that moved is moved, and a task that no
    /// longer holds resources (or whose node is unknown) is released instead.
    pub fn add_task(&mut self, task: &Task) {
        let node = self.index.get(&task.node_id).copied();
        let Some(i) = node.filter(|_| holds_resources(task)) else {
            return self.remove_task(task);
        };
        if !self.is_counted_at(&task.id, i) {
            let res = task.spec.as_ref().map(CpuMem::reserved_by).unwrap_or_default();
            let ports: Arc<[HostPort]> =
                task.spec.as_ref().map(HostPort::of).unwrap_or_default().into();
            self.count_at(i, &task.id, &Arc::from(task.service_id.as_str()), res, &ports);
        }
    }

    /// Releases what a stopped (or removed) task held. Idempotent.
    pub fn remove_task(&mut self, task: &Task) {
        if let Some(c) = self.tasks.remove(&task.id) {
            self.nodes[c.node].count(&c.service_id, c.res, &c.ports, -1);
        }
    }

    /// Adds a node or refreshes what it says about itself.
    pub fn upsert_node(&mut self, node: &Node) {
        match self.index.get(&node.id) {
            Some(&i) => self.nodes[i].describe(node),
            None => {
                let at = self.nodes.partition_point(|n| n.id < node.id);
                self.nodes.insert(at, NodeInfo::new(node));
                self.reindex();
                self.tasks.values_mut().filter(|c| c.node >= at).for_each(|c| c.node += 1);
            }
        }
    }

    /// Forgets a node and the tasks counted on it.
    pub fn remove_node(&mut self, id: &str) {
        let Some(i) = self.index.get(id).copied() else { return };
        self.nodes.remove(i);
        self.reindex();
        self.tasks.retain(|_, c| {
            let keep = c.node != i;
            if c.node > i {
                c.node -= 1;
            }
            keep
        });
    }

    /// Records that a task of this service version failed on the node at `at_ms`.
    pub fn record_failure(
        &mut self,
        node_id: &str,
        service_id: &str,
        spec_version: u64,
        at_ms: i64,
    ) {
        let Some(&i) = self.index.get(node_id) else { return };
        let failures = &mut self.nodes[i].recent_failures;
        failures.retain(|_, times| {
            times.retain(|&t| at_ms - t < FAILURE_WINDOW_MS);
            !times.is_empty()
        });
        failures.entry((service_id.to_string(), spec_version)).or_default().push(at_ms);
    }

    pub(super) fn node_at(&self, i: usize) -> &NodeInfo {
        &self.nodes[i]
    }

    pub(super) fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Whether the task is already counted on the node at `i`.
    pub(super) fn is_counted_at(&self, task_id: &str, i: usize) -> bool {
        self.tasks.get(task_id).is_some_and(|c| c.node == i)
    }

    /// Makes room to count `n` more tasks without rehashing on the way.
    pub(super) fn reserve_tasks(&mut self, n: usize) {
        self.tasks.reserve(n);
    }

    /// Counts a task on the node at `i`, releasing it first from wherever it was counted.
    pub(super) fn count_at(
        &mut self,
        i: usize,
        task_id: &str,
        service: &Arc<str>,
        res: CpuMem,
        ports: &Arc<[HostPort]>,
    ) {
        self.nodes[i].count(service, res, ports, 1);
        let c = Counted { node: i, service_id: Arc::clone(service), res, ports: Arc::clone(ports) };
        if let Some(old) = self.tasks.insert(task_id.to_string(), c) {
            self.nodes[old.node].count(&old.service_id, old.res, &old.ports, -1);
        }
    }

    /// Rebuilds the ID index (after a node was inserted or removed; nodes stay sorted).
    fn reindex(&mut self) {
        self.index = self.nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
    }
}
