//! Owns the filter pipeline: whether a node can take tasks of one group, how many more it can
//! take, and the "no suitable node (…)" explanation when none can. Never orders nodes.

use std::collections::BTreeMap;

use shoal_proto::spec::Constraint;
use shoal_proto::Availability;

use super::constraint::matches;
use super::view::{CpuMem, HostPort, NodeInfo};

/// The first filter that refused a node, in pipeline order (the derived order is that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Failure {
    /// Not READY, or paused or drained.
    NotAvailable,
    Cpu,
    Memory,
    /// The index of the first constraint the node does not satisfy.
    Constraint(usize),
    /// The index of the first host-mode port a task there already publishes.
    HostPort(usize),
    MaxReplicas,
}

/// The filters for one group of tasks (one service version).
///
/// Swarm's platform filter has nothing to check here: a ServiceSpec names no platforms, and
/// `node.platform.*` constraints cover the need.
#[derive(Debug)]
pub(super) struct Filter<'a> {
    pub service_id: &'a str,
    pub need: CpuMem,
    pub constraints: &'a [Constraint],
    /// 0: unlimited.
    pub max_per_node: u64,
    /// Ports the group publishes in host mode: one task per node.
    pub host_ports: &'a [HostPort],
}

impl Filter<'_> {
    /// How many more tasks of the group fit on the node (at least 1), or the first filter that
    /// refuses it.
    pub fn room(&self, node: &NodeInfo) -> Result<usize, Failure> {
        if !node.ready || node.availability != Availability::Active {
            return Err(Failure::NotAvailable);
        }
        let (total, used, need) = (node.total, node.reserved, self.need);
        let cpu = fits(total.nano_cpus, used.nano_cpus, need.nano_cpus).ok_or(Failure::Cpu)?;
        let mem = fits(total.memory_bytes, used.memory_bytes, need.memory_bytes)
            .ok_or(Failure::Memory)?;
        if let Some(i) = self.constraints.iter().position(|c| !matches(c, node)) {
            return Err(Failure::Constraint(i));
        }
        if let Some(i) = self.host_ports.iter().position(|p| node.has_host_port(p)) {
            return Err(Failure::HostPort(i));
        }
        let mut room = cpu.min(mem);
        if !self.host_ports.is_empty() {
            room = 1;
        }
        if self.max_per_node > 0 {
            let have = node.service_tasks(self.service_id) as u64;
            if have >= self.max_per_node {
                return Err(Failure::MaxReplicas);
            }
            room = room.min(usize::try_from(self.max_per_node - have).unwrap_or(usize::MAX));
        }
        Ok(room)
    }

    /// Swarm's explanation when no node fits: how many nodes each filter refused first.
    pub fn explain(&self, nodes: &[NodeInfo]) -> String {
        if nodes.is_empty() {
            return "no suitable node (the cluster has no nodes)".to_string();
        }
        let mut tally = BTreeMap::new();
        for node in nodes {
            if let Err(f) = self.room(node) {
                *tally.entry(f).or_insert(0usize) += 1;
            }
        }
        let parts: Vec<String> = tally.into_iter().map(|(f, n)| self.counted(f, n)).collect();
        format!("no suitable node ({})", parts.join("; "))
    }

    /// Why one named node refuses a task (for tasks pinned to a node).
    pub fn refusal(&self, node: &NodeInfo, f: Failure) -> String {
        let name = if node.hostname.is_empty() { &node.id } else { &node.hostname };
        let what = match f {
            Failure::NotAvailable => "is not available for new tasks".to_string(),
            _ => self.predicate(f, false),
        };
        format!("node {name} {what}")
    }

    fn counted(&self, f: Failure, n: usize) -> String {
        let subject = if n == 1 { "1 node".to_string() } else { format!("{n} nodes") };
        format!("{subject} {}", self.predicate(f, n != 1))
    }

    fn predicate(&self, f: Failure, plural: bool) -> String {
        let (has, does) = if plural { ("have", "do") } else { ("has", "does") };
        match f {
            Failure::NotAvailable => "not available for new tasks".to_string(),
            Failure::Cpu => format!("{has} insufficient CPU"),
            Failure::Memory => format!("{has} insufficient memory"),
            Failure::Constraint(i) => {
                format!("{does} not satisfy constraint {}", self.constraints[i])
            }
            Failure::HostPort(i) => {
                format!("{has} host-mode port {} already in use", self.host_ports[i])
            }
            Failure::MaxReplicas => {
                format!("{has} reached max replicas per node ({})", self.max_per_node)
            }
        }
    }
}

/// How many reservations of `need` fit in `total - used`; `None` if not one. A zero total
/// (unknown) or a zero need never refuses.
fn fits(total: i64, used: i64, need: i64) -> Option<usize> {
    if need <= 0 || total <= 0 {
        return Some(usize::MAX);
    }
    let free = total - used;
    (free >= need).then(|| usize::try_from(free / need).unwrap_or(usize::MAX))
}
