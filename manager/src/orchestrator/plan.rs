//! One orchestrator pass as a pure function of the orchestrator's copy of the cluster: what to
//! create, stop, place, delete and record. No IO; tested with fake worlds.

use std::collections::{BTreeMap, HashMap};

use shoal_proto::spec::parse_constraints;
use shoal_proto::spec::service::{default_update, is_live as live, task_part};
use shoal_proto::{
    Availability, FailureAction, NodeState, RestartCondition, Service, ServiceMode, ServiceSpec,
    Task, TaskState, TaskStatus, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};

use super::World;
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

struct Ctx<'a> {
    world: &'a World,
    now: i64,
    ops: Vec<Op>,
    /// New tasks of this pass, to be placed before they are written.
    created: Vec<Task>,
    /// Restarts made, by (service, slot key), and services whose update delay starts now.
    restarted: Vec<(String, String)>,
    delayed: Vec<(String, i64)>,
}

impl Ctx<'_> {
    /// Whether a node can run tasks (it exists, is not Down and not drained).
    fn node_usable(&self, id: &str) -> bool {
        self.world.nodes.get(id).is_some_and(|n| {
            n.state() != NodeState::Down && n.availability() != Availability::Drain
        })
    }

    /// Whether a task is known to have stopped, or never will report again.
    fn stopped(&self, t: &Task) -> bool {
        ended(t.state())
            || t.node_id.is_empty()
            || self.world.nodes.get(&t.node_id).is_none_or(|n| n.state() == NodeState::Down)
    }

    fn new_task(&mut self, s: &Service, slot: u64, node: &str, desired: TaskState, delay: u64) {
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

fn reconcile(ctx: &mut Ctx<'_>, s: &Service) {
    let spec = s.spec.clone().unwrap_or_default();
    let mut slots: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    if let Some(ids) = ctx.world.by_service.get(&s.id) {
        for id in ids {
            let t = &ctx.world.tasks[id];
            slots.entry(slot_key(t)).or_default().push(t);
        }
    }
    for tasks in slots.values_mut() {
        tasks.sort_by_key(|t| {
            std::cmp::Reverse(t.meta.as_ref().map(|m| (m.created_at_ms, m.version)))
        });
    }
    // Whether a task was made from an older spec than the service's (by content, so a rollback
    // to what a task already runs does not replace it).
    let mut dirty_versions: HashMap<u64, bool> = HashMap::new();
    let current = task_part(&spec);
    let mut is_dirty = |t: &Task| {
        t.spec_version != s.spec_version
            && *dirty_versions
                .entry(t.spec_version)
                .or_insert_with(|| task_part(&t.spec.clone().unwrap_or_default()) != current)
    };
    let global = spec.mode() == ServiceMode::Global;

    // 1. Dead tasks, tasks on lost or drained nodes, and stop-first successors.
    // A slot gets at most one replacement per pass, and keeps at most one unfinished task of
    // the current spec (a duplicate — a proposal re-sent after a leader change — is stopped).
    let mut handled: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (key, tasks) in &slots {
        let mut fresh_seen = false;
        for t in tasks.iter().filter(|t| live(t)) {
            let state = t.state();
            if !ended(state) && !is_dirty(t) {
                if fresh_seen {
                    ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Shutdown));
                    continue;
                }
                fresh_seen = true;
            }
            if ended(state) {
                if handled.insert(key.clone()) {
                    restart(ctx, s, &spec, key, t);
                }
            } else if !t.node_id.is_empty() && !ended(state) && !ctx.node_usable(&t.node_id) {
                ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Shutdown));
                if !global && handled.insert(key.clone()) {
                    ctx.new_task(s, t.slot, "", TaskState::Running, 0);
                }
            } else if t.desired_state == TaskState::Ready as i32 {
                // Start once every other task of the slot has stopped.
                let others_stopped = tasks
                    .iter()
                    .filter(|o| o.id != t.id)
                    .all(|o| !live(o) && ctx.stopped(o) || (live(o) && ended(o.state())));
                if others_stopped {
                    ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Running));
                }
            }
        }
    }

    // 2. Slot count (replicated) or node coverage (global).
    let live_keys: Vec<&String> =
        slots.iter().filter(|(_, ts)| ts.iter().any(|t| live(t))).map(|(k, _)| k).collect();
    let mut removed: Vec<String> = Vec::new();
    if global {
        let view = ClusterView::build(
            &ctx.world.nodes.values().cloned().collect::<Vec<_>>(),
            std::iter::empty(),
        );
        let constraints =
            parse_constraints(&spec.placement.clone().unwrap_or_default().constraints)
                .unwrap_or_default();
        for info in view.nodes() {
            let eligible = info.ready
                && info.availability == Availability::Active
                && constraints.iter().all(|c| scheduler::matches(c, info));
            let has = live_keys.iter().any(|k| **k == info.id);
            if eligible && !has {
                ctx.new_task(s, 0, &info.id, TaskState::Running, 0);
            } else if !eligible
                && has
                && ctx.world.nodes.get(&info.id).is_some_and(|n| n.state() != NodeState::Down)
            {
                // No longer matching its constraints: stop it (Down and drained nodes were
                // handled above; a paused node keeps what it runs).
                let usable = ctx.node_usable(&info.id);
                if usable && !constraints.iter().all(|c| scheduler::matches(c, info)) {
                    for t in slots[&info.id].iter().filter(|t| live(t)) {
                        ctx.ops.push(Op::Desired(t.id.clone(), TaskState::Shutdown));
                    }
                }
            }
        }
    } else {
        let want = spec.replicas as usize;
        if live_keys.len() < want {
            let taken: std::collections::HashSet<u64> =
                live_keys.iter().filter_map(|k| k.parse().ok()).collect();
            let mut next = 1u64;
            for _ in live_keys.len()..want {
                while taken.contains(&next) {
                    next += 1;
                }
                ctx.new_task(s, next, "", TaskState::Running, 0);
                next += 1;
            }
        } else if live_keys.len() > want {
            removed = scale_down(ctx, &slots, &live_keys, live_keys.len() - want);
        }
    }

    // 3. Rolling update of the slots made from an older spec.
    let status = s.update_status.clone().unwrap_or_default();
    let rollback = status.state() == UpdateState::RollbackStarted
        || status.state() == UpdateState::RollbackPaused;
    let cfg: UpdateConfig =
        if rollback { spec.rollback } else { spec.update }.unwrap_or_else(default_update);
    let monitor = cfg.monitor_ms as i64;
    let mut dirty_slots = Vec::new();
    // Slots whose new task is not running yet hold back the next ones (like Swarm, which waits
    // for RUNNING, then the delay); the monitor period only delays calling the update complete.
    let mut settling = 0usize;
    let mut watched = 0usize;
    let mut failures: Vec<&Task> = Vec::new();
    for (key, tasks) in &slots {
        if removed.contains(key) || handled.contains(key) {
            continue;
        }
        let live_tasks: Vec<&Task> = tasks.iter().copied().filter(|t| live(t)).collect();
        if live_tasks.is_empty() {
            continue;
        }
        let fresh: Vec<&Task> = live_tasks.iter().copied().filter(|t| !is_dirty(t)).collect();
        if fresh.is_empty() {
            dirty_slots.push(key.clone());
            continue;
        }
        for t in &fresh {
            let st = t.state();
            let since = t.status.as_ref().map(|x| x.timestamp_ms).unwrap_or(0);
            if st < TaskState::Running {
                settling += 1;
            } else if st == TaskState::Running && ctx.now - since < monitor {
                watched += 1;
            }
        }
        // Start-first: the old task stops once its successor runs.
        if fresh.iter().any(|t| t.state() == TaskState::Running) {
            for old in live_tasks.iter().filter(|t| is_dirty(t)) {
                ctx.ops.push(Op::Desired(old.id.clone(), TaskState::Shutdown));
            }
        }
    }
    if matches!(status.state(), UpdateState::Updating | UpdateState::RollbackStarted) {
        if let Some(ids) = ctx.world.by_service.get(&s.id) {
            for id in ids {
                let t = &ctx.world.tasks[id];
                let made_here =
                    t.meta.as_ref().is_some_and(|m| m.created_at_ms >= status.started_at_ms);
                if made_here
                    && !is_dirty(t)
                    && matches!(t.state(), TaskState::Failed | TaskState::Rejected)
                {
                    failures.push(t);
                }
            }
        }
    }
    let total = live_keys.len().max(1) as f32;
    let paused = matches!(status.state(), UpdateState::Paused | UpdateState::RollbackPaused);
    let failing = !failures.is_empty() && failures.len() as f32 / total > cfg.max_failure_ratio;
    if failing && !paused && cfg.failure_action() != FailureAction::Continue {
        let what = &failures[0];
        let why = format!(
            "task {} failed{}",
            &what.id[..what.id.len().min(12)],
            what.status
                .as_ref()
                .map(|x| format!(": {}", if x.err.is_empty() { &x.message } else { &x.err }))
                .unwrap_or_default()
        );
        if cfg.failure_action() == FailureAction::Rollback && !rollback && s.previous_spec.is_some()
        {
            ctx.ops.push(Op::Rollback(
                s.id.clone(),
                format!("update rolled back: {why}"),
                s.spec_version,
            ));
        } else {
            let (state, message) = if rollback {
                (UpdateState::RollbackPaused, format!("rollback paused: {why}"))
            } else {
                (UpdateState::Paused, format!("update paused: {why}"))
            };
            ctx.ops.push(Op::UpdateStatus(
                s.id.clone(),
                UpdateStatus { state: state as i32, message, ..status.clone() },
                s.spec_version,
            ));
        }
        return;
    }
    if !paused && !dirty_slots.is_empty() {
        let parallel = if cfg.parallelism == 0 { usize::MAX } else { cfg.parallelism as usize };
        let due = ctx.world.next_update_at.get(&s.id).is_none_or(|at| *at <= ctx.now);
        if due && settling < parallel {
            let start_first = cfg.order() == UpdateOrder::StartFirst;
            for key in dirty_slots.iter().take(parallel - settling) {
                let olds: Vec<&Task> = slots[key].iter().copied().filter(|t| live(t)).collect();
                let slot = olds[0].slot;
                let node = if global { key.as_str() } else { "" };
                if start_first {
                    ctx.new_task(s, slot, node, TaskState::Running, 0);
                } else {
                    for old in &olds {
                        ctx.ops.push(Op::Desired(old.id.clone(), TaskState::Shutdown));
                    }
                    let all_stopped = olds.iter().all(|o| ctx.stopped(o));
                    let desired = if all_stopped { TaskState::Running } else { TaskState::Ready };
                    ctx.new_task(s, slot, node, desired, 0);
                }
            }
            if cfg.delay_ms > 0 {
                ctx.delayed.push((s.id.clone(), ctx.now + cfg.delay_ms as i64));
            }
        }
    } else if dirty_slots.is_empty() && settling == 0 && watched == 0 {
        let done = match status.state() {
            UpdateState::Updating => Some((UpdateState::Completed, "update completed")),
            UpdateState::RollbackStarted => {
                Some((UpdateState::RollbackCompleted, "rollback completed"))
            }
            _ => None,
        };
        if let Some((state, message)) = done {
            ctx.ops.push(Op::UpdateStatus(
                s.id.clone(),
                UpdateStatus {
                    state: state as i32,
                    started_at_ms: status.started_at_ms,
                    completed_at_ms: ctx.now,
                    message: message.into(),
                },
                s.spec_version,
            ));
        }
    }

    // 4. History: keep `history_limit` tasks per slot; delete removed tasks once stopped.
    let keep = spec.history_limit.max(1) as usize;
    for tasks in slots.values() {
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
