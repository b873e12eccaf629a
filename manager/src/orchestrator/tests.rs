//! Orchestrator passes over fake worlds: what a user would see change in `service ps`.

use shoal_proto::spec::service::normalize;
use shoal_proto::*;

use super::plan::{plan, Op};
use super::World;

const NOW: i64 = 1_000_000;

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        hostname: id.into(),
        state: NodeState::Ready as i32,
        description: Some(NodeDescription {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(id: &str, replicas: u64) -> Service {
    let spec = ServiceSpec {
        name: id.into(),
        replicas,
        container: Some(ContainerSpec { image: "busybox".into(), ..Default::default() }),
        ..Default::default()
    };
    Service {
        id: id.into(),
        spec: Some(normalize(spec).unwrap()),
        spec_version: 1,
        ..Default::default()
    }
}

fn task(s: &Service, slot: u64, node: &str, state: TaskState, created: i64) -> Task {
    Task {
        id: format!("{}-{slot}-{created}", s.id),
        meta: Some(Meta { version: 1, created_at_ms: created, updated_at_ms: created }),
        service_id: s.id.clone(),
        service_name: s.id.clone(),
        slot,
        node_id: node.into(),
        spec_version: s.spec_version,
        spec: s.spec.clone(),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: state as i32,
            timestamp_ms: created,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn world(nodes: &[&str], services: Vec<Service>, tasks: Vec<Task>) -> World {
    let mut w = World::default();
    for n in nodes {
        w.nodes.insert(n.to_string(), node(n));
    }
    for s in services {
        w.services.insert(s.id.clone(), s);
    }
    for t in tasks {
        w.put_task(t);
    }
    w
}

/// Puts `s` in the middle of a rolling update from its image to `busybox:2` (spec version 2).
fn start_update(s: &mut Service) {
    s.previous_spec = s.spec.clone();
    s.spec.as_mut().unwrap().container.as_mut().unwrap().image = "busybox:2".into();
    s.spec_version = 2;
    s.update_status = Some(UpdateStatus {
        state: UpdateState::Updating as i32,
        started_at_ms: 10,
        ..Default::default()
    });
}

fn run(w: &mut World) -> Vec<Op> {
    let ids: std::collections::BTreeSet<String> =
        w.services.keys().cloned().chain(w.by_service.keys().cloned()).collect();
    plan(w, &ids.into_iter().collect::<Vec<_>>(), NOW)
}

fn created(ops: &[Op]) -> Vec<&Task> {
    ops.iter().filter_map(|o| if let Op::Create(t) = o { Some(&**t) } else { None }).collect()
}

fn desired(ops: &[Op], state: TaskState) -> Vec<&str> {
    ops.iter()
        .filter_map(|o| match o {
            Op::Desired(id, s) if *s == state => Some(id.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_service_gets_one_task_per_slot_spread_over_the_nodes() {
    let mut w = world(&["a", "b", "c"], vec![service("web", 3)], vec![]);
    let ops = run(&mut w);
    let new = created(&ops);
    let mut slots: Vec<u64> = new.iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 3]);
    let mut nodes: Vec<&str> = new.iter().map(|t| t.node_id.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, vec!["a", "b", "c"], "placed in the same write, one per node");
    assert!(new.iter().all(|t| t.state() == TaskState::Assigned));
}

#[test]
fn a_converged_service_needs_no_writes() {
    let s = service("web", 2);
    let tasks =
        vec![task(&s, 1, "a", TaskState::Running, 1), task(&s, 2, "b", TaskState::Running, 1)];
    let mut w = world(&["a", "b"], vec![s], tasks);
    assert_eq!(run(&mut w), vec![]);
}

#[test]
fn scale_down_takes_from_the_most_loaded_node_first() {
    let s = service("web", 2);
    let tasks = vec![
        task(&s, 1, "a", TaskState::Running, 1),
        task(&s, 2, "a", TaskState::Running, 1),
        task(&s, 3, "a", TaskState::Running, 1),
        task(&s, 4, "b", TaskState::Running, 1),
    ];
    let mut w = world(&["a", "b"], vec![s], tasks);
    let ops = run(&mut w);
    let removed = desired(&ops, TaskState::Remove);
    assert_eq!(removed.len(), 2);
    assert!(
        removed.iter().all(|id| id.starts_with("web-") && !id.starts_with("web-4")),
        "{removed:?}"
    );
}

#[test]
fn a_failed_task_is_replaced_in_its_slot_after_the_restart_delay() {
    let s = service("web", 1);
    let mut w = world(&["a"], vec![s.clone()], vec![task(&s, 1, "a", TaskState::Failed, 1)]);
    let ops = run(&mut w);
    assert_eq!(desired(&ops, TaskState::Shutdown), vec!["web-1-1"]);
    let new = created(&ops);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].slot, 1);
    assert_eq!(new[0].not_before_ms, NOW + 5_000, "Swarm's 5 s default delay");
    assert_eq!(new[0].state(), TaskState::Pending, "not placed before its delay");
}

#[test]
fn restart_policies_are_honoured() {
    let mut s = service("job", 1);
    s.spec.as_mut().unwrap().restart.as_mut().unwrap().set_condition(RestartCondition::OnFailure);
    let mut w = world(&["a"], vec![s.clone()], vec![task(&s, 1, "a", TaskState::Complete, 1)]);
    assert!(created(&run(&mut w)).is_empty(), "on-failure does not restart a clean exit");

    let mut s = service("web", 1);
    s.spec.as_mut().unwrap().restart.as_mut().unwrap().max_attempts = 2;
    let mut w = world(&["a"], vec![s.clone()], vec![]);
    w.restarts.insert(("web".into(), "1".into()), vec![NOW - 10, NOW - 5]);
    w.put_task(task(&s, 1, "a", TaskState::Failed, 1));
    assert!(created(&run(&mut w)).is_empty(), "max attempts reached");
}

#[test]
fn tasks_of_a_down_or_drained_node_come_back_elsewhere() {
    let s = service("web", 2);
    let tasks =
        vec![task(&s, 1, "a", TaskState::Running, 1), task(&s, 2, "b", TaskState::Running, 1)];
    let mut w = world(&["a", "b", "c"], vec![s], tasks);
    w.nodes.get_mut("a").unwrap().set_state(NodeState::Down);
    w.nodes.get_mut("b").unwrap().set_availability(Availability::Drain);
    let ops = run(&mut w);
    let mut stopped = desired(&ops, TaskState::Shutdown);
    stopped.sort();
    assert_eq!(stopped, vec!["web-1-1", "web-2-1"]);
    let new = created(&ops);
    assert_eq!(new.len(), 2);
    assert!(new.iter().all(|t| t.node_id == "c"), "only c can run tasks");
}

#[test]
fn a_paused_node_keeps_its_tasks_but_gets_no_new_ones() {
    let s = service("web", 2);
    let mut w = world(&["a", "b"], vec![s.clone()], vec![task(&s, 1, "a", TaskState::Running, 1)]);
    w.nodes.get_mut("a").unwrap().set_availability(Availability::Pause);
    let ops = run(&mut w);
    assert!(desired(&ops, TaskState::Shutdown).is_empty());
    assert_eq!(created(&ops)[0].node_id, "b");
}

#[test]
fn a_rolling_update_replaces_one_slot_at_a_time_and_pauses_on_failure() {
    let mut s = service("web", 3);
    let old: Vec<Task> = (1..=3).map(|i| task(&s, i, "a", TaskState::Running, 1)).collect();
    start_update(&mut s);
    let mut w = world(&["a"], vec![s.clone()], old.clone());
    let ops = run(&mut w);
    assert_eq!(desired(&ops, TaskState::Shutdown).len(), 1, "parallelism 1");
    let new = created(&ops);
    assert_eq!(new.len(), 1);
    assert_eq!(
        new[0].desired_state,
        TaskState::Ready as i32,
        "stop-first: starts once the old one stopped"
    );

    // The new task failed: the update pauses, and the other slots keep their old tasks.
    let mut failed = task(&s, 1, "a", TaskState::Rejected, 20);
    failed.desired_state = TaskState::Running as i32;
    let mut stopped = old[0].clone();
    stopped.desired_state = TaskState::Shutdown as i32;
    stopped.status.as_mut().unwrap().state = TaskState::Shutdown as i32;
    let mut w = world(
        &["a"],
        vec![s.clone()],
        vec![stopped, failed.clone(), old[1].clone(), old[2].clone()],
    );
    let ops = run(&mut w);
    let paused = ops
        .iter()
        .any(|o| matches!(o, Op::UpdateStatus(_, st, _) if st.state() == UpdateState::Paused));
    assert!(paused, "{ops:?}");
    assert!(
        desired(&ops, TaskState::Shutdown).iter().all(|id| *id == failed.id),
        "old tasks keep serving"
    );

    // With --update-failure-action rollback it rolls back instead.
    s.spec.as_mut().unwrap().update.as_mut().unwrap().set_failure_action(FailureAction::Rollback);
    failed.spec = s.spec.clone();
    let mut w = world(&["a"], vec![s.clone()], vec![failed, old[1].clone(), old[2].clone()]);
    assert!(run(&mut w).iter().any(|o| matches!(o, Op::Rollback(..))));
}

#[test]
fn a_rollback_that_fails_pauses_instead_of_rolling_back_again() {
    let mut s = service("web", 1);
    s.previous_spec = s.spec.clone();
    s.spec.as_mut().unwrap().update.as_mut().unwrap().set_failure_action(FailureAction::Rollback);
    s.spec.as_mut().unwrap().rollback.as_mut().unwrap().set_failure_action(FailureAction::Pause);
    s.update_status = Some(UpdateStatus {
        state: UpdateState::RollbackStarted as i32,
        started_at_ms: 10,
        ..Default::default()
    });
    let mut w = world(&["a"], vec![s.clone()], vec![task(&s, 1, "a", TaskState::Failed, 20)]);
    let ops = run(&mut w);
    assert!(!ops.iter().any(|o| matches!(o, Op::Rollback(..))));
    assert!(ops.iter().any(
        |o| matches!(o, Op::UpdateStatus(_, st, _) if st.state() == UpdateState::RollbackPaused)
    ));
}

#[test]
fn global_services_cover_every_eligible_node() {
    let mut s = service("agent", 0);
    let spec = s.spec.as_mut().unwrap();
    spec.set_mode(ServiceMode::Global);
    spec.placement =
        Some(Placement { constraints: vec!["node.labels.gpu!=no".into()], ..Default::default() });
    let mut w = world(&["a", "b", "c", "d"], vec![s], vec![]);
    w.nodes.get_mut("b").unwrap().set_availability(Availability::Drain);
    w.nodes.get_mut("c").unwrap().set_state(NodeState::Down);
    w.nodes.get_mut("d").unwrap().labels.insert("gpu".into(), "no".into());
    let ops = run(&mut w);
    let new = created(&ops);
    assert_eq!(new.iter().map(|t| t.node_id.as_str()).collect::<Vec<_>>(), vec!["a"]);
    assert_eq!(new[0].state(), TaskState::Assigned);
}

#[test]
fn history_is_trimmed_to_the_limit_per_slot() {
    let s = service("web", 1);
    let mut tasks: Vec<Task> = (0..8)
        .map(|i| {
            let mut t = task(&s, 1, "a", TaskState::Failed, i);
            t.desired_state = TaskState::Shutdown as i32;
            t
        })
        .collect();
    tasks.push(task(&s, 1, "a", TaskState::Running, 100));
    let mut w = world(&["a"], vec![s], tasks);
    let ops = run(&mut w);
    let deleted: Vec<&Op> = ops.iter().filter(|o| matches!(o, Op::Delete(_))).collect();
    assert_eq!(deleted.len(), 4, "9 tasks, keep 5");
    assert!(!deleted.contains(&&Op::Delete("web-1-7".into())), "the newest history stays");
}

#[test]
fn removing_a_service_stops_then_deletes_its_tasks() {
    let s = service("web", 2);
    let mut done = task(&s, 2, "a", TaskState::Shutdown, 1);
    done.desired_state = TaskState::Shutdown as i32;
    let mut w = world(&["a"], vec![], vec![task(&s, 1, "a", TaskState::Running, 1), done]);
    let ops = run(&mut w);
    assert_eq!(desired(&ops, TaskState::Remove), vec!["web-1-1"]);
    assert!(ops.contains(&Op::Delete("web-2-1".into())));
}

#[test]
fn unplaceable_tasks_say_why() {
    let mut s = service("web", 1);
    s.spec.as_mut().unwrap().placement = Some(Placement {
        constraints: vec!["node.labels.zone==mars".into()],
        ..Default::default()
    });
    let mut w = world(&["a"], vec![s], vec![]);
    let ops = run(&mut w);
    let t = created(&ops)[0];
    assert_eq!(t.state(), TaskState::Pending);
    assert!(t.unscheduled_reason.contains("no suitable node"), "{}", t.unscheduled_reason);
}

#[test]
fn the_next_slot_starts_once_the_last_runs_and_completion_waits_for_the_monitor() {
    let mut s = service("web", 2);
    let old = task(&s, 2, "a", TaskState::Running, 1);
    start_update(&mut s);
    // Slot 1 already runs the new spec, started a moment ago (inside the 5 s monitor).
    let fresh = task(&s, 1, "a", TaskState::Running, NOW - 100);
    let mut w = world(&["a"], vec![s.clone()], vec![fresh.clone(), old]);
    let ops = run(&mut w);
    assert_eq!(created(&ops).len(), 1, "slot 2 is not held back by slot 1's monitor period");

    // Both slots new; the last started 1 s ago: not complete until the monitor period passed.
    let second = task(&s, 2, "a", TaskState::Running, NOW - 1_000);
    let mut w = world(&["a"], vec![s.clone()], vec![fresh.clone(), second.clone()]);
    assert!(!run(&mut w).iter().any(|o| matches!(o, Op::UpdateStatus(..))));
    let settled = vec![
        task(&s, 1, "a", TaskState::Running, NOW - 6_000),
        task(&s, 2, "a", TaskState::Running, NOW - 6_000),
    ];
    let mut w = world(&["a"], vec![s], settled);
    let done = run(&mut w)
        .into_iter()
        .any(|o| matches!(o, Op::UpdateStatus(_, st, _) if st.state() == UpdateState::Completed));
    assert!(done);
}

#[test]
fn a_slot_never_gets_two_live_tasks_of_the_current_spec() {
    // Two running tasks in one slot (a create re-proposed after a leader change): one stops.
    let s = service("web", 1);
    let (a, b) = (task(&s, 1, "a", TaskState::Running, 1), task(&s, 1, "a", TaskState::Running, 2));
    let mut w = world(&["a"], vec![s.clone()], vec![a, b]);
    let ops = run(&mut w);
    assert_eq!(desired(&ops, TaskState::Shutdown), vec!["web-1-1"], "the older duplicate stops");
    assert!(created(&ops).is_empty());

    // An old-spec task on a Down node during an update: one replacement, not two.
    let mut s = service("web", 1);
    let old = task(&s, 1, "a", TaskState::Running, 1);
    start_update(&mut s);
    let mut w = world(&["a", "b"], vec![s], vec![old]);
    w.nodes.get_mut("a").unwrap().set_state(NodeState::Down);
    assert_eq!(created(&run(&mut w)).len(), 1);
}

#[test]
fn a_paused_node_keeps_its_global_task() {
    let mut s = service("agent", 0);
    s.spec.as_mut().unwrap().set_mode(ServiceMode::Global);
    let mut t = task(&s, 0, "a", TaskState::Running, 1);
    t.slot = 0;
    let mut w = world(&["a"], vec![s], vec![t]);
    w.nodes.get_mut("a").unwrap().set_availability(Availability::Pause);
    let ops = run(&mut w);
    assert!(desired(&ops, TaskState::Shutdown).is_empty(), "{ops:?}");
    w.nodes.get_mut("a").unwrap().set_availability(Availability::Drain);
    assert_eq!(desired(&run(&mut w), TaskState::Shutdown).len(), 1);
}
