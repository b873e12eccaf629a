//! Owns task placement as a pure function: given the cluster as the scheduler sees it and a
//! group of tasks of one service version, decide each task's node or why none fits. No IO, no
//! async, no store access; the orchestrator feeds the view and writes the decisions.
//!
//! Like Swarm: filters in order (ready, resources, constraints, max replicas per node), the
//! first failure counting against a node; then spreading over spread-preference buckets and
//! over nodes (fewest tasks of the service, then fewest tasks, then node ID), with nodes where
//! this service version keeps failing pushed to the end.

mod constraint;
mod filter;
mod spread;
mod view;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use shoal_proto::spec::constraint::{parse_constraints, spread_labels};
use shoal_proto::{ServiceSpec, Task};

pub use constraint::matches;
pub use view::{
    holds_resources, ClusterView, CpuMem, HostPort, NodeInfo, FAILURE_WINDOW_MS, MAX_FAILURES,
};

use filter::Filter;
use spread::{Candidate, Ordering};

/// The scheduler's answer for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Assign { task_id: String, node_id: String },
    NoNode { task_id: String, reason: String },
}

/// Places a group of tasks of ONE service version (the caller groups them) and returns one
/// decision per task, in the order given.
///
/// Tasks whose `node_id` is already set (global services) are only validated against that
/// node. The view is updated as tasks are assigned, so consecutive calls see earlier
/// placements. A spec with an invalid placement gets every task refused with the reason.
pub fn schedule(
    view: &mut ClusterView,
    spec: &ServiceSpec,
    service_id: &str,
    tasks: &[&Task],
    now_ms: i64,
) -> Vec<Decision> {
    let placement = spec.placement.clone().unwrap_or_default();
    let parsed = parse_constraints(&placement.constraints)
        .and_then(|c| Ok((c, spread_labels(&placement.spread)?)));
    let (constraints, labels) = match parsed {
        Ok(p) => p,
        Err(e) => return tasks.iter().map(|t| no_node(t, format!("{e}"))).collect(),
    };
    let version = (service_id.to_string(), tasks.first().map_or(0, |t| t.spec_version));
    let host_ports = HostPort::of(spec);
    let group = Group {
        filter: Filter {
            service_id,
            need: CpuMem::reserved_by(spec),
            constraints: &constraints,
            max_per_node: placement.max_replicas_per_node,
            host_ports: &host_ports,
        },
        ports: host_ports.clone().into(),
        service: Arc::from(service_id),
        labels: &labels,
        order: Ordering { service_id, version: &version, now_ms },
    };
    let mut decisions: Vec<Option<Decision>> = vec![None; tasks.len()];
    for (k, t) in tasks.iter().enumerate().filter(|(_, t)| !t.node_id.is_empty()) {
        decisions[k] = Some(validate(view, &group, t));
    }
    place_free(view, &group, tasks, &mut decisions);
    decisions.into_iter().flatten().collect()
}

/// Everything one call knows about its group of tasks.
#[derive(Debug)]
struct Group<'a> {
    filter: Filter<'a>,
    /// The service ID, shared by every task counted in the view.
    service: Arc<str>,
    /// Its host-mode ports, shared likewise.
    ports: Arc<[view::HostPort]>,
    /// Spread labels, outermost first.
    labels: &'a [String],
    order: Ordering<'a>,
}

/// Checks a task pinned to a node; counts it there when it fits.
fn validate(view: &mut ClusterView, group: &Group<'_>, task: &Task) -> Decision {
    let filter = &group.filter;
    let Some(i) = view.position(&task.node_id) else {
        return no_node(task, format!("node {} is not part of the cluster", task.node_id));
    };
    if !view.is_counted_at(&task.id, i) {
        if let Err(f) = filter.room(view.node_at(i)) {
            return no_node(task, filter.refusal(view.node_at(i), f));
        }
        view.count_at(i, &task.id, &group.service, filter.need, &group.ports);
    }
    Decision::Assign { task_id: task.id.clone(), node_id: task.node_id.clone() }
}

/// Places the tasks without a node, filling in their decisions.
fn place_free(
    view: &mut ClusterView,
    group: &Group<'_>,
    tasks: &[&Task],
    decisions: &mut [Option<Decision>],
) {
    let filter = &group.filter;
    let free: Vec<usize> = (0..tasks.len()).filter(|&k| tasks[k].node_id.is_empty()).collect();
    if free.is_empty() {
        return;
    }
    let cands: Vec<Candidate> = (0..view.nodes().len())
        .filter_map(|idx| filter.room(view.node_at(idx)).ok().map(|room| Candidate { idx, room }))
        .collect();
    let chosen = spread::plan(view, cands, group.labels, &group.order, free.len());
    view.reserve_tasks(chosen.len());
    for (&k, &i) in free.iter().zip(&chosen) {
        let task = tasks[k];
        view.count_at(i, &task.id, &group.service, filter.need, &group.ports);
        let node_id = view.node_at(i).id.clone();
        decisions[k] = Some(Decision::Assign { task_id: task.id.clone(), node_id });
    }
    if chosen.len() < free.len() {
        let reason = filter.explain(view.nodes());
        for &k in &free[chosen.len()..] {
            decisions[k] = Some(no_node(tasks[k], reason.clone()));
        }
    }
}

fn no_node(task: &Task, reason: String) -> Decision {
    Decision::NoNode { task_id: task.id.clone(), reason }
}
