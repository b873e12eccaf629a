//! One orchestrator pass as a pure function of the orchestrator's copy of the cluster: what to
//! create, stop, place, delete and record. No IO; tested with fake worlds. Phase 3 of a
//! service's reconciliation, the rolling update, lives in the sibling module `rollout`.

use std::collections::{BTreeMap, HashMap, HashSet};

use shoal_proto::spec::parse_constraints;
use shoal_proto::spec::service::{is_live as live, task_part};
use shoal_proto::{
    Availability, NodeState, RestartCondition, Service, ServiceMode, ServiceSpec, Task, TaskState,
    TaskStatus, UpdateStatus,
};

use super::{rollout, World};
use crate::scheduler::{self, ClusterView, Decision};

/// One change to the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Create(Box<Task>),
    /// Raise a task's desired state.
    Desired(String, TaskState),
    Assign(String, String),
    Reason(String, String),
    Delete(String),
    /// Set a service's update status, if its spec version is still the one planned for.
    UpdateStatus(String, UpdateStatus, u64),
    /// Roll a service back to its previous spec, if its spec version is still the planned one.
    Rollback(String, String, u64),
}

fn ended(state: TaskState) -> bool {
    state as i32 > TaskState::Running as i32
}

/// The slot a task fills: its slot number (replicated) or its node (global).
fn slot_key(t: &Task) -> String {
    if t.slot == 0 {
        t.node_id.clone()
    } else {
        t.slot.to_string()
    }
}

/// One pass under way: the world it reads, and what it has decided so far.
pub(super) struct Ctx<'a> {
    pub world: &'a World,
    pub now: i64,
    pub ops: Vec<Op>,
    /// New tasks of this pass, to be placed before they are written.
    created: Vec<Task>,
    /// Restarts made, by (service, slot key), and services whose update delay starts now.
    restarted: Vec<(String, String)>,
    pub delayed: Vec<(String, i64)>,
}

impl Ctx<'_> {
    /// Whether a node can run tasks (it exists, is not Down and not drained).
    pub fn node_usable(&self, id: &str) -> bool {
        self.world.nodes.get(id).is_some_and(|n| {
            n.state() != NodeState::Down && n.availability() != Availability::Drain
        })
    }

    /// Whether a task is known to have stopped, or never will report again.
    pub fn stopped(&self, t: &Task) -> bool {
        ended(t.state())
            || t.node_id.is_empty()
            || self.world.nodes.get(&t.node_id).is_none_or(|n| n.state() == NodeState::Down)
    }

    pub fn new_task(&mut self, s: &Service, slot: u64, node: &str, desired: TaskState, delay: u64) {
        let spec = s.spec.clone().unwrap_or_default();
        let task = Task {
            id: shoal_pki::id::new_id(),
            service_id: s.id.clone(),
            service_name: spec.name.clone(),
            slot,
            node_id: node.to_string(),
            spec_version: s.spec_version,
            spec: Some(spec),
            desired_state: desired as i32,
            status: Some(TaskStatus {
                state: TaskState::Pending as i32,
                timestamp_ms: self.now,
                message: if delay > 0 {
                    "restart delayed".into()
                } else {
                    "pending task scheduling".into()
                },
                ..Default::default()
            }),
            not_before_ms: if delay > 0 { self.now + delay as i64 } else { 0 },
            ..Default::default()
        };
        self.created.push(task);
    }
}

/// Plans one pass over `services` (IDs; a missing one was removed) and places every task that
/// waits for a node.
pub fn plan(world: &mut World, services: &[String], now: i64) -> Vec<Op> {
    record_deaths(world, now);
    let mut ctx = Ctx {
        world,
        now,
        ops: Vec::new(),
        created: Vec::new(),
        restarted: Vec::new(),
        delayed: Vec::new(),
    };
    for id in services {
        match ctx.world.services.get(id) {
            Some(s) => reconcile(&mut ctx, s),
            None => remove_all(&mut ctx, id),
        }
    }
    let Ctx { mut ops, created, restarted, delayed, .. } = ctx;
    for key in restarted {
        world.restarts.entry(key).or_default().push(now);
    }
    for (service, at) in delayed {
        world.next_update_at.insert(service, at);
    }
    place(world, created, &mut ops, now);
    ops
}

/// Counts newly ended tasks: failures for the scheduler's faulty-node avoidance.
fn record_deaths(world: &mut World, now: i64) {
    let window = scheduler::FAILURE_WINDOW_MS;
    while world.failures.front().is_some_and(|f| f.3 < now - window) {
        world.failures.pop_front();
    }
    let mut fresh = Vec::new();
    for t in world.tasks.values() {
        let st = t.state();
        if matches!(st, TaskState::Failed | TaskState::Rejected) && !world.seen_dead.contains(&t.id)
        {
            fresh.push((t.id.clone(), t.node_id.clone(), t.service_id.clone(), t.spec_version));
        }
    }
    for (id, node, service, version) in fresh {
        world.seen_dead.insert(id);
        if !node.is_empty() {
            world.failures.push_back((node, service, version, now));
        }
    }
}

fn remove_all(ctx: &mut Ctx<'_>, service_id: &str) {
    let Some(ids) = ctx.world.by_service.get(service_id) else { return };
    for id in ids {
        let t = &ctx.world.tasks[id];
        if ctx.stopped(t) {
            ctx.ops.push(Op::Delete(t.id.clone()));
        } else if t.desired_state < TaskState::Remove as i32 {
            ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Remove));
        }
    }
}

/// Brings one service's tasks to its spec, in four phases (each reads the slots as they were
/// at the start of the pass): repair, count, rolling update, history.
fn reconcile<'w>(ctx: &mut Ctx<'w>, s: &'w Service) {
    let mut pass = Pass::new(ctx.world, s);
    let handled = repair_slots(ctx, &mut pass);
    let live_keys = pass.live_keys();
    let removed = if pass.global {
        cover_nodes(ctx, &pass, &live_keys);
        Vec::new()
    } else {
        fit_replicas(ctx, &pass, &live_keys)
    };
    let live = live_keys.len();
    let skip = |key: &str| removed.iter().any(|k| k == key) || handled.contains(key);
    let halted = rollout::advance(ctx, &mut pass, skip, live);
    if !halted {
        trim_history(ctx, &pass);
    }
}

/// One service as one pass sees it: its spec, and its tasks by slot, newest first.
pub(super) struct Pass<'w> {
    pub s: &'w Service,
    pub spec: ServiceSpec,
    pub global: bool,
    pub slots: BTreeMap<String, Vec<&'w Task>>,
    pub stale: Staleness,
}

impl<'w> Pass<'w> {
    fn new(world: &'w World, s: &'w Service) -> Pass<'w> {
        let spec = s.spec.clone().unwrap_or_default();
        let mut slots: BTreeMap<String, Vec<&'w Task>> = BTreeMap::new();
        if let Some(ids) = world.by_service.get(&s.id) {
            for id in ids {
                let t = &world.tasks[id];
                slots.entry(slot_key(t)).or_default().push(t);
            }
        }
        for tasks in slots.values_mut() {
            tasks.sort_by_key(|t| {
                std::cmp::Reverse(t.meta.as_ref().map(|m| (m.created_at_ms, m.version)))
            });
        }
        let stale =
            Staleness { version: s.spec_version, current: task_part(&spec), known: HashMap::new() };
        let global = spec.mode() == ServiceMode::Global;
        Pass { s, spec, global, slots, stale }
    }

    /// The slots that hold a live task.
    fn live_keys(&self) -> Vec<&String> {
        self.slots.iter().filter(|(_, ts)| ts.iter().any(|t| live(t))).map(|(k, _)| k).collect()
    }
}

/// Whether a task was made from an older spec than the service's (by content, so a rollback
/// to what a task already runs does not replace it). Remembers the answer per spec version.
pub(super) struct Staleness {
    version: u64,
    current: ServiceSpec,
    known: HashMap<u64, bool>,
}

impl Staleness {
    pub fn is_dirty(&mut self, t: &Task) -> bool {
        let current = &self.current;
        t.spec_version != self.version
            && *self
                .known
                .entry(t.spec_version)
                .or_insert_with(|| task_part(&t.spec.clone().unwrap_or_default()) != *current)
    }
}

/// Phase 1: dead tasks, tasks on lost or drained nodes, and stop-first successors. A slot gets
/// at most one replacement per pass, and keeps at most one unfinished task of the current
/// spec (a duplicate — a proposal re-sent after a leader change — is stopped). Returns the
/// slots given a replacement.
fn repair_slots(ctx: &mut Ctx<'_>, pass: &mut Pass<'_>) -> HashSet<String> {
    let mut handled = HashSet::new();
    for (key, tasks) in &pass.slots {
        let mut fresh_seen = false;
        for t in tasks.iter().filter(|t| live(t)) {
            let state = t.state();
            if !ended(state) && !pass.stale.is_dirty(t) {
                if fresh_seen {
                    ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Shutdown));
                    continue;
                }
                fresh_seen = true;
            }
            if ended(state) {
                if handled.insert(key.clone()) {
                    restart(ctx, pass.s, &pass.spec, key, t);
                }
            } else if !t.node_id.is_empty() && !ended(state) && !ctx.node_usable(&t.node_id) {
                ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Shutdown));
                if !pass.global && handled.insert(key.clone()) {
                    ctx.new_task(pass.s, t.slot, "", TaskState::Running, 0);
                }
            } else if t.desired_state == TaskState::Ready as i32 {
                start_when_alone(ctx, t, tasks);
            }
        }
    }
    handled
}

/// Starts a stop-first successor once every other task of its slot has stopped.
fn start_when_alone(ctx: &mut Ctx<'_>, t: &Task, slot: &[&Task]) {
    let others_stopped = slot
        .iter()
        .filter(|o| o.id != t.id)
        .all(|o| !live(o) && ctx.stopped(o) || (live(o) && ended(o.state())));
    if others_stopped {
        ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Running));
    }
}

/// Phase 2, global services: a task on every eligible node, none on a node that no longer
/// matches the constraints.
fn cover_nodes(ctx: &mut Ctx<'_>, pass: &Pass<'_>, live_keys: &[&String]) {
    let view = ClusterView::build(
        &ctx.world.nodes.values().cloned().collect::<Vec<_>>(),
        std::iter::empty(),
    );
    let constraints =
        parse_constraints(&pass.spec.placement.clone().unwrap_or_default().constraints)
            .unwrap_or_default();
    for info in view.nodes() {
        let matching = constraints.iter().all(|c| scheduler::matches(c, info));
        let eligible = info.ready && info.availability == Availability::Active && matching;
        let has = live_keys.iter().any(|k| **k == info.id);
        if eligible && !has {
            ctx.new_task(pass.s, 0, &info.id, TaskState::Running, 0);
        } else if !eligible
            && has
            && ctx.world.nodes.get(&info.id).is_some_and(|n| n.state() != NodeState::Down)
        {
            // No longer matching its constraints: stop it (Down and drained nodes were
            // handled in phase 1; a paused node keeps what it runs).
            if ctx.node_usable(&info.id) && !matching {
                for t in pass.slots[&info.id].iter().filter(|t| live(t)) {
                    ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Shutdown));
                }
            }
        }
    }
}

/// Phase 2, replicated services: new slots up to the replica count (filling the lowest free
/// numbers), or slots removed down to it. Returns the slots removed.
fn fit_replicas(ctx: &mut Ctx<'_>, pass: &Pass<'_>, live_keys: &[&String]) -> Vec<String> {
    let want = pass.spec.replicas as usize;
    if live_keys.len() > want {
        return scale_down(ctx, &pass.slots, live_keys, live_keys.len() - want);
    }
    let taken: HashSet<u64> = live_keys.iter().filter_map(|k| k.parse().ok()).collect();
    let mut next = 1u64;
    for _ in live_keys.len()..want {
        while taken.contains(&next) {
            next += 1;
        }
        ctx.new_task(pass.s, next, "", TaskState::Running, 0);
        next += 1;
    }
    Vec::new()
}

/// Phase 4, history: keeps `history_limit` tasks per slot; deletes removed tasks once stopped.
fn trim_history(ctx: &mut Ctx<'_>, pass: &Pass<'_>) {
    let keep = pass.spec.history_limit.max(1) as usize;
    for tasks in pass.slots.values() {
        let mut kept = tasks.iter().filter(|t| live(t)).count();
        for t in tasks.iter().filter(|t| !live(t)) {
            let stopped = ctx.stopped(t);
            if stopped && (t.desired_state >= TaskState::Remove as i32 || kept >= keep) {
                ctx.ops.push(Op::Delete(t.id.clone()));
            } else {
                kept += 1;
            }
        }
    }
}

/// Restarts a task that ended, if its policy allows.
fn restart(ctx: &mut Ctx<'_>, s: &Service, spec: &ServiceSpec, key: &str, t: &Task) {
    let policy = spec.restart.unwrap_or_default();
    let state = t.state();
    let wanted = match policy.condition() {
        RestartCondition::Any => true,
        RestartCondition::OnFailure => state != TaskState::Complete,
        RestartCondition::None => false,
    };
    if !wanted {
        return;
    }
    let history = ctx.world.restarts.get(&(s.id.clone(), key.to_string()));
    if policy.max_attempts > 0 {
        let recent = history
            .map(|h| {
                h.iter()
                    .filter(|at| policy.window_ms == 0 || ctx.now - **at < policy.window_ms as i64)
                    .count()
            })
            .unwrap_or(0);
        if recent >= policy.max_attempts as usize {
            return;
        }
    }
    ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Shutdown));
    let node = if t.slot == 0 { t.node_id.as_str() } else { "" };
    ctx.new_task(s, t.slot, node, TaskState::Running, policy.delay_ms);
    ctx.restarted.push((s.id.clone(), key.to_string()));
}

/// Picks `excess` slots to remove, from the nodes running the most tasks of the service first,
/// preferring tasks that are not running.
fn scale_down(
    ctx: &mut Ctx<'_>,
    slots: &BTreeMap<String, Vec<&Task>>,
    live_keys: &[&String],
    excess: usize,
) -> Vec<String> {
    let mut by_node: HashMap<&str, Vec<(&String, bool)>> = HashMap::new();
    for key in live_keys {
        let t = slots[*key].iter().find(|t| live(t)).expect("a live slot has a live task");
        by_node.entry(t.node_id.as_str()).or_default().push((key, t.state() == TaskState::Running));
    }
    for list in by_node.values_mut() {
        // Running ones last, so they are taken last.
        list.sort_by_key(|(k, running)| {
            (*running, std::cmp::Reverse(k.parse::<u64>().unwrap_or(0)))
        });
        list.reverse();
    }
    let mut removed = Vec::new();
    for _ in 0..excess {
        let Some(node) = by_node
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .max_by_key(|(n, l)| (l.len(), n.is_empty(), std::cmp::Reverse(**n)))
            .map(|(n, _)| *n)
        else {
            break;
        };
        let (key, _) = by_node.get_mut(node).and_then(|l| l.pop()).expect("non-empty");
        for t in slots[key].iter().filter(|t| live(t)) {
            ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Remove));
        }
        removed.push(key.clone());
    }
    removed
}

/// Tasks of one service version waiting for nodes, with the spec they were made from.
type Group<'a> = (Option<ServiceSpec>, Vec<&'a Task>);

/// Runs the scheduler over new tasks (placed before they are written, so creation and
/// placement are one write) and over tasks still waiting for a node.
fn place(world: &World, mut created: Vec<Task>, ops: &mut Vec<Op>, now: i64) {
    let waiting: Vec<&Task> = world
        .tasks
        .values()
        .filter(|t| t.state() < TaskState::Assigned && live(t) && t.not_before_ms <= now)
        .collect();
    let ready_new: Vec<usize> =
        (0..created.len()).filter(|i| created[*i].not_before_ms <= now).collect();
    if waiting.is_empty() && ready_new.is_empty() {
        ops.extend(created.into_iter().map(|t| Op::Create(Box::new(t))));
        return;
    }
    let nodes: Vec<_> = world.nodes.values().cloned().collect();
    let mut view =
        ClusterView::build(&nodes, world.tasks.values().filter(|t| scheduler::holds_resources(t)));
    for (node, service, version, at) in &world.failures {
        view.record_failure(node, service, *version, *at);
    }
    // Group by service version, keeping the order stable.
    let mut groups: BTreeMap<(String, u64), Group<'_>> = BTreeMap::new();
    for t in &waiting {
        let g = groups.entry((t.service_id.clone(), t.spec_version)).or_default();
        g.0.get_or_insert_with(|| t.spec.clone().unwrap_or_default());
        g.1.push(t);
    }
    let snapshot: Vec<Task> = ready_new.iter().map(|i| created[*i].clone()).collect();
    for t in &snapshot {
        let g = groups.entry((t.service_id.clone(), t.spec_version)).or_default();
        g.0.get_or_insert_with(|| t.spec.clone().unwrap_or_default());
        g.1.push(t);
    }
    let index: HashMap<String, usize> =
        ready_new.iter().map(|i| (created[*i].id.clone(), *i)).collect();
    for ((service_id, _), (spec, tasks)) in groups {
        let spec = spec.unwrap_or_default();
        for d in scheduler::schedule(&mut view, &spec, &service_id, &tasks, now) {
            match d {
                Decision::Assign { task_id, node_id } => match index.get(&task_id) {
                    Some(i) => {
                        let t = &mut created[*i];
                        t.node_id = node_id;
                        t.status = Some(TaskStatus {
                            state: TaskState::Assigned as i32,
                            timestamp_ms: now,
                            message: "scheduler assigned task to node".into(),
                            ..Default::default()
                        });
                    }
                    None => ops.push(Op::Assign(task_id, node_id)),
                },
                Decision::NoNode { task_id, reason } => match index.get(&task_id) {
                    Some(i) => created[*i].unscheduled_reason = reason,
                    None => {
                        if world.tasks.get(&task_id).is_some_and(|t| t.unscheduled_reason != reason)
                        {
                            ops.push(Op::Reason(task_id, reason));
                        }
                    }
                },
            }
        }
    }
    ops.extend(created.into_iter().map(|t| Op::Create(Box::new(t))));
}
