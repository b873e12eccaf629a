//! Placement stories on 1,000-node fake clusters: what users see, not how it is computed.

use shoal_proto::{
    Availability, Node, NodeDescription, NodeRole, NodeState, Placement, ResourceRequirements,
    Resources, ServiceSpec, Task, TaskState, TaskStatus,
};

use super::*;

const NODES: usize = 1000;
const GIB: i64 = 1 << 30;

/// A ready, active Linux worker `n0000`… at 10.0.<i/256>.<i%256>, resources unknown.
fn new_test_node(i: usize) -> Node {
    Node {
        id: format!("n{i:04}"),
        hostname: format!("host-{i}"),
        role: NodeRole::Worker as i32,
        addr: format!("10.0.{}.{}:4242", i / 256, i % 256),
        state: NodeState::Ready as i32,
        availability: Availability::Active as i32,
        description: Some(NodeDescription {
            os: "linux".into(),
            arch: "x86_64".into(),
            ..default()
        }),
        ..default()
    }
}

/// `n` test nodes, each adjusted by `tweak`.
fn new_test_view(n: usize, tweak: impl Fn(usize, &mut Node)) -> ClusterView {
    let nodes: Vec<Node> = (0..n)
        .map(|i| {
            let mut node = new_test_node(i);
            tweak(i, &mut node);
            node
        })
        .collect();
    ClusterView::build(&nodes, [])
}

fn new_test_tasks(service: &str, version: u64, n: usize) -> Vec<Task> {
    (0..n)
        .map(|k| Task {
            id: format!("{service}.v{version}.{k}"),
            service_id: service.to_string(),
            slot: k as u64 + 1,
            spec_version: version,
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus { state: TaskState::Pending as i32, ..default() }),
            ..default()
        })
        .collect()
}

fn spec(constraints: &[&str], spread: &[&str], max_per_node: u64) -> ServiceSpec {
    ServiceSpec {
        placement: Some(Placement {
            constraints: constraints.iter().map(|s| s.to_string()).collect(),
            spread: spread.iter().map(|s| s.to_string()).collect(),
            max_replicas_per_node: max_per_node,
        }),
        ..default()
    }
}

fn with_reservation(mut spec: ServiceSpec, nano_cpus: i64, memory_bytes: i64) -> ServiceSpec {
    let reservations = Some(Resources { nano_cpus, memory_bytes });
    spec.resources = Some(ResourceRequirements { reservations, limits: None });
    spec
}

fn run(view: &mut ClusterView, spec: &ServiceSpec, tasks: &[Task]) -> Vec<Decision> {
    let refs: Vec<&Task> = tasks.iter().collect();
    schedule(view, spec, &tasks[0].service_id, &refs, 1_000_000)
}

/// The node of every decision, panicking with the first refusal.
fn must_assign(decisions: &[Decision]) -> Vec<String> {
    let node = |d: &Decision| match d {
        Decision::Assign { node_id, .. } => node_id.clone(),
        Decision::NoNode { task_id, reason } => panic!("{task_id} not placed: {reason}"),
    };
    decisions.iter().map(node).collect()
}

fn refusals(decisions: &[Decision]) -> Vec<&str> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::NoNode { reason, .. } => Some(reason.as_str()),
            Decision::Assign { .. } => None,
        })
        .collect()
}

/// (fewest, most) tasks of the service over the nodes `pick` selects.
fn spread_of(
    view: &ClusterView,
    service: &str,
    pick: impl Fn(&NodeInfo) -> bool,
) -> (usize, usize) {
    let counts = view.nodes().iter().filter(|n| pick(n)).map(|n| n.service_tasks(service));
    counts.fold((usize::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)))
}

fn default<T: Default>() -> T {
    T::default()
}

#[test]
fn replicas_spread_evenly_per_service_and_overall() {
    let mut view = new_test_view(NODES, |_, _| {});
    for (service, n) in [("web", 2500), ("api", 1000), ("db", 333)] {
        must_assign(&run(&mut view, &spec(&[], &[], 0), &new_test_tasks(service, 1, n)));
        let (lo, hi) = spread_of(&view, service, |_| true);
        assert!(hi - lo <= 1, "{service}: {lo}..{hi} tasks per node");
    }
    let totals = view.nodes().iter().map(|n| n.tasks_total);
    let (lo, hi) = totals.fold((usize::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
    assert!(hi - lo <= 1, "{lo}..{hi} tasks per node in total");
}

#[test]
fn consecutive_calls_keep_the_balance() {
    let mut view = new_test_view(NODES, |_, _| {});
    let all = new_test_tasks("web", 1, 1500);
    for batch in all.chunks(137) {
        must_assign(&run(&mut view, &spec(&[], &[], 0), batch));
        let (lo, hi) = spread_of(&view, "web", |_| true);
        assert!(hi - lo <= 1, "after a batch: {lo}..{hi} tasks per node");
    }
    assert_eq!(view.nodes().iter().map(|n| n.service_tasks("web")).sum::<usize>(), 1500);
}

#[test]
fn constraints_pick_nodes_by_label_ip_role_and_platform() {
    let mut view = new_test_view(NODES, |i, n| {
        if i % 4 == 0 {
            n.labels.insert("zone".into(), "east".into());
        } else if i % 4 == 1 {
            n.labels.insert("zone".into(), "west".into());
        }
        if i < 10 {
            n.role = NodeRole::Manager as i32;
        }
    });
    let zone = |n: &NodeInfo| n.labels.get("zone").cloned();

    let not_east =
        run(&mut view, &spec(&["node.labels.zone!=east"], &[], 0), &new_test_tasks("a", 1, 750));
    for id in must_assign(&not_east) {
        assert_ne!(zone(view.node(&id).unwrap()).as_deref(), Some("east"), "{id}");
    }
    // Unlabelled nodes satisfy `!=`, so all 750 non-east nodes got one task each.
    assert_eq!(spread_of(&view, "a", |n| zone(n).as_deref() != Some("east")), (1, 1));

    let subnet =
        run(&mut view, &spec(&["node.ip==10.0.1.0/24"], &[], 0), &new_test_tasks("b", 1, 512));
    for id in must_assign(&subnet) {
        assert!(view.node(&id).unwrap().ip.unwrap().to_string().starts_with("10.0.1."), "{id}");
    }
    assert_eq!(spread_of(&view, "b", |n| n.hostname.starts_with("host-2")), (0, 2));

    let exact = ["node.ip==10.0.0.7", "node.role==MANAGER", "node.platform.arch==amd64"];
    let one = run(&mut view, &spec(&exact, &[], 0), &new_test_tasks("c", 1, 3));
    assert_eq!(must_assign(&one), ["n0007", "n0007", "n0007"]);

    let upper =
        run(&mut view, &spec(&["node.labels.zone==EAST"], &[], 0), &new_test_tasks("d", 1, 250));
    assert!(must_assign(&upper)
        .iter()
        .all(|id| zone(view.node(id).unwrap()).as_deref() == Some("east")));
}

#[test]
fn mac_constraints_place_only_on_nodes_that_apply_the_layer() {
    let mut view = new_test_view(NODES, |i, n| {
        let desc = n.description.as_mut().unwrap();
        desc.mac = match i % 3 {
            0 => vec!["landlock".into(), "selinux".into()],
            1 => vec!["landlock".into(), "apparmor".into()],
            _ => vec![],
        };
    });
    let mac = |n: &NodeInfo, layer: &str| n.mac.iter().any(|m| m == layer);
    let selinux = run(
        &mut view,
        &spec(&["node.platform.mac==SELinux"], &[], 0),
        &new_test_tasks("a", 1, 334),
    );
    for id in must_assign(&selinux) {
        assert!(mac(view.node(&id).unwrap(), "selinux"), "{id}");
    }
    let no_apparmor = run(
        &mut view,
        &spec(&["node.platform.mac!=apparmor"], &[], 0),
        &new_test_tasks("b", 1, 600),
    );
    for id in must_assign(&no_apparmor) {
        assert!(!mac(view.node(&id).unwrap(), "apparmor"), "{id}");
    }
    let mut none = new_test_view(3, |_, n| n.description.as_mut().unwrap().mac.clear());
    let d =
        run(&mut none, &spec(&["node.platform.mac==landlock"], &[], 0), &new_test_tasks("c", 1, 1));
    assert_eq!(
        refusals(&d),
        ["no suitable node (3 nodes do not satisfy constraint node.platform.mac==landlock)"]
    );
}

#[test]
fn label_keys_are_case_sensitive_and_a_missing_label_never_equals() {
    let mut view = new_test_view(NODES, |_, n| {
        n.labels.insert("zone".into(), "east".into());
    });
    let d = run(&mut view, &spec(&["node.labels.Zone==east"], &[], 0), &new_test_tasks("a", 1, 2));
    let why = "no suitable node (1000 nodes do not satisfy constraint node.labels.Zone==east)";
    assert_eq!(refusals(&d), [why, why]);
}

#[test]
fn exhausted_resources_are_explained_per_first_failing_filter() {
    let mut view = new_test_view(NODES, |i, n| {
        let desc = n.description.as_mut().unwrap();
        desc.memory_bytes = GIB;
        desc.nano_cpus = 8_000_000_000;
        match i {
            0 => n.availability = Availability::Drain as i32,
            1 => n.availability = Availability::Pause as i32,
            2 => n.state = NodeState::Down as i32,
            3 | 4 => desc.memory_bytes = GIB / 8,
            5 => desc.nano_cpus = 100_000_000,
            _ if i % 2 == 0 => n.labels.insert("zone".into(), "east".into()).map_or((), drop),
            _ => {}
        }
    });
    let spec = with_reservation(spec(&["node.labels.zone==east"], &[], 0), 1_000_000_000, GIB / 4);
    // 497 east nodes (6..999, even) take 4 tasks each; 8 more tasks find no room.
    let d = run(&mut view, &spec, &new_test_tasks("big", 1, 497 * 4 + 8));
    assert_eq!(d.iter().filter(|d| matches!(d, Decision::Assign { .. })).count(), 497 * 4);
    let why =
        "no suitable node (3 nodes not available for new tasks; 1 node has insufficient CPU; \
               499 nodes have insufficient memory; 497 nodes do not satisfy constraint \
               node.labels.zone==east)";
    assert_eq!(refusals(&d), vec![why; 8]);
    let east = |n: &NodeInfo| n.labels.contains_key("zone");
    assert!(view.nodes().iter().filter(|n| east(n)).all(|n| n.reserved.memory_bytes == GIB));
}

#[test]
fn unknown_resources_never_refuse() {
    let mut view = new_test_view(NODES, |_, _| {});
    let spec = with_reservation(spec(&[], &[], 0), 64_000_000_000, 1 << 40);
    must_assign(&run(&mut view, &spec, &new_test_tasks("huge", 1, 3000)));
}

#[test]
fn drained_paused_and_down_nodes_are_never_chosen() {
    let mut view = new_test_view(NODES, |i, n| match i % 5 {
        0 => n.availability = Availability::Drain as i32,
        1 => n.availability = Availability::Pause as i32,
        2 => n.state = NodeState::Down as i32,
        3 => n.state = NodeState::Disconnected as i32,
        _ => {}
    });
    let ids = must_assign(&run(&mut view, &spec(&[], &[], 0), &new_test_tasks("web", 1, 5000)));
    assert!(ids.iter().all(|id| id.ends_with('4') || id.ends_with('9')), "{ids:?}");
    assert_eq!(
        spread_of(&view, "web", |n| n.ready && n.availability == Availability::Active),
        (25, 25)
    );
}

#[test]
fn max_replicas_per_node_caps_each_node() {
    let mut view = new_test_view(NODES, |_, _| {});
    let d = run(&mut view, &spec(&[], &[], 2), &new_test_tasks("web", 1, 2100));
    assert_eq!(spread_of(&view, "web", |_| true), (2, 2));
    let why = "no suitable node (1000 nodes have reached max replicas per node (2))";
    assert_eq!(refusals(&d), vec![why; 100]);
}

#[test]
fn spread_balances_zones_of_unequal_size() {
    // Zones a, b, c hold 500, 300 and 150 nodes; 50 nodes have no zone label.
    let zone_of = |i: usize| match i {
        0..500 => Some("a"),
        500..800 => Some("b"),
        800..950 => Some("c"),
        _ => None,
    };
    let mut view = new_test_view(NODES, |i, n| {
        if let Some(z) = zone_of(i) {
            n.labels.insert("zone".into(), z.into());
        }
    });
    let spread = ["node.labels.zone"];
    must_assign(&run(&mut view, &spec(&[], &spread, 0), &new_test_tasks("web", 1, 1000)));
    let in_zone =
        |z: Option<&'static str>| move |n: &NodeInfo| n.labels.get("zone").map(String::as_str) == z;
    let per_zone = |view: &ClusterView, z| {
        view.nodes().iter().filter(|n| in_zone(z)(n)).map(|n| n.service_tasks("web")).sum::<usize>()
    };
    for z in [Some("a"), Some("b"), Some("c"), None] {
        assert_eq!(per_zone(&view, z), 250, "zone {z:?}");
        let (lo, hi) = spread_of(&view, "web", in_zone(z));
        assert!(hi - lo <= 1, "zone {z:?}: {lo}..{hi} per node");
    }
    // A later batch keeps the zones level.
    must_assign(&run(&mut view, &spec(&[], &spread, 0), &new_test_tasks("web", 2, 402)));
    let totals: Vec<usize> =
        [Some("a"), Some("b"), Some("c"), None].map(|z| per_zone(&view, z)).into();
    assert!(totals.iter().max().unwrap() - totals.iter().min().unwrap() <= 1, "{totals:?}");
}

#[test]
fn nested_spread_balances_racks_within_zones() {
    let mut view = new_test_view(NODES, |i, n| {
        n.labels.insert("zone".into(), format!("z{}", i % 2));
        n.labels.insert("rack".into(), format!("r{}", i % 5));
    });
    let spread = ["node.labels.zone", "node.labels.rack"];
    must_assign(&run(&mut view, &spec(&[], &spread, 0), &new_test_tasks("web", 1, 100)));
    for z in 0..2 {
        for r in 0..5 {
            let here = |n: &NodeInfo| {
                n.labels["zone"] == format!("z{z}") && n.labels["rack"] == format!("r{r}")
            };
            let sum: usize =
                view.nodes().iter().filter(|n| here(n)).map(|n| n.service_tasks("web")).sum();
            assert_eq!(sum, 10, "zone z{z} rack r{r}");
        }
    }
}

#[test]
fn global_tasks_are_only_validated_on_their_node() {
    let mut view = new_test_view(NODES, |i, n| {
        if i == 1 {
            n.availability = Availability::Drain as i32;
        }
        if i != 2 {
            n.labels.insert("gpu".into(), "yes".into());
        }
    });
    let mut tasks = new_test_tasks("agent", 1, NODES + 1);
    for (i, t) in tasks.iter_mut().enumerate() {
        t.node_id = format!("n{i:04}");
    }
    let spec = spec(&["node.labels.gpu==yes"], &[], 0);
    let d = run(&mut view, &spec, &tasks);
    assert_eq!(
        refusals(&d),
        [
            "node host-1 is not available for new tasks",
            "node host-2 does not satisfy constraint node.labels.gpu==yes",
            "node n1000 is not part of the cluster",
        ]
    );
    assert_eq!(d[0], Decision::Assign { task_id: tasks[0].id.clone(), node_id: "n0000".into() });
    assert_eq!(spread_of(&view, "agent", |n| n.id != "n0001" && n.id != "n0002"), (1, 1));
    // Validating the same tasks again counts nothing twice.
    run(&mut view, &spec, &tasks);
    assert_eq!(view.node("n0000").unwrap().service_tasks("agent"), 1);
}

#[test]
fn a_node_where_this_version_keeps_failing_goes_last() {
    let mut view = new_test_view(NODES, |_, _| {});
    let now = 1_000_000;
    for k in 0..5 {
        view.record_failure("n0000", "web", 1, now - 60_000 * k); // 5 within 5 minutes
        view.record_failure("n0001", "web", 1, now - 60_000 * (k + 1)); // the 5th is too old
        view.record_failure("n0002", "web", 2, now - 1000 * k); // another version
    }
    let ids = must_assign(&run(&mut view, &spec(&[], &[], 0), &new_test_tasks("web", 1, 1500)));
    assert!(!ids.contains(&"n0000".to_string()), "the faulty node got a task");
    assert_eq!(spread_of(&view, "web", |n| n.id != "n0000"), (1, 2));
    // With nowhere else to go, it still takes tasks.
    let mut lone = new_test_view(1, |_, _| {});
    lone.record_failure("n0000", "web", 1, now);
    must_assign(&run(&mut lone, &spec(&[], &[], 0), &new_test_tasks("web", 1, 1)));
}

#[test]
fn a_spec_with_a_bad_constraint_places_nothing() {
    let mut view = new_test_view(NODES, |_, _| {});
    let d = run(&mut view, &spec(&["zone=east"], &[], 0), &new_test_tasks("web", 1, 2));
    assert_eq!(refusals(&d).len(), 2);
    assert!(refusals(&d)[0].contains("\"zone=east\""), "{:?}", refusals(&d));
    assert!(view.nodes().iter().all(|n| n.tasks_total == 0));
}

#[test]
fn the_view_counts_only_tasks_that_hold_resources() {
    let nodes: Vec<Node> = (0..3).map(new_test_node).collect();
    let mut tasks = new_test_tasks("web", 1, 4);
    for (k, t) in tasks.iter_mut().enumerate() {
        t.node_id = "n0001".into();
        t.spec = Some(with_reservation(default(), 0, GIB));
        t.status.as_mut().unwrap().state = TaskState::Running as i32;
        match k {
            2 => t.desired_state = TaskState::Shutdown as i32,
            3 => t.status.as_mut().unwrap().state = TaskState::Failed as i32,
            _ => {}
        }
    }
    let mut view = ClusterView::build(&nodes, &tasks);
    let node =
        |v: &ClusterView| (v.node("n0001").unwrap().tasks_total, v.node("n0001").unwrap().reserved);
    assert_eq!(node(&view), (2, CpuMem { nano_cpus: 0, memory_bytes: 2 * GIB }));
    view.add_task(&tasks[0]);
    assert_eq!(node(&view).0, 2, "adding twice counts once");
    tasks[0].status.as_mut().unwrap().state = TaskState::Complete as i32;
    view.add_task(&tasks[0]);
    view.remove_task(&tasks[1]);
    view.remove_task(&tasks[1]);
    assert_eq!(node(&view), (0, CpuMem::default()));
    tasks[1].node_id = "n0002".into();
    view.add_task(&tasks[1]);
    view.remove_node("n0002");
    assert!(view.node("n0002").is_none());
    view.upsert_node(&new_test_node(2));
    assert_eq!(view.node("n0002").unwrap().tasks_total, 0);
    assert_eq!(
        view.nodes().iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["n0000", "n0001", "n0002"]
    );
}

#[test]
fn node_addresses_yield_their_ip() {
    let ip = |addr: &str| {
        let node = Node { id: "x".into(), addr: addr.into(), ..default() };
        ClusterView::build(&[node], []).node("x").unwrap().ip.map(|ip| ip.to_string())
    };
    assert_eq!(ip("10.1.2.3:4242").as_deref(), Some("10.1.2.3"));
    assert_eq!(ip("[fd00::1]:4242").as_deref(), Some("fd00::1"));
    assert_eq!(ip("fd00::1").as_deref(), Some("fd00::1"));
    assert_eq!(ip("manager.example:4242"), None);
}

#[test]
fn a_host_mode_port_takes_one_task_per_node_across_services() {
    let host = |port: u32, protocol: &str| {
        let mut s = spec(&[], &[], 0);
        s.endpoint = Some(shoal_proto::EndpointSpec {
            ports: vec![shoal_proto::PortConfig {
                protocol: protocol.into(),
                target_port: 80,
                published_port: port,
                publish_mode: "host".into(),
                ..default()
            }],
            ..default()
        });
        s
    };
    let mut view = new_test_view(3, |_, _| {});
    let d = run(&mut view, &host(8080, "tcp"), &new_test_tasks("web", 1, 4));
    let mut nodes: Vec<String> = d
        .iter()
        .filter_map(|d| match d {
            Decision::Assign { node_id, .. } => Some(node_id.clone()),
            Decision::NoNode { .. } => None,
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "one task per node: {d:?}");
    let why = "no suitable node (3 nodes have host-mode port 8080/tcp already in use)";
    assert_eq!(refusals(&d), vec![why]);
    // Another service cannot have the port either, but the same number over UDP is free.
    let d = run(&mut view, &host(8080, "tcp"), &new_test_tasks("api", 1, 1));
    assert_eq!(refusals(&d), vec![why]);
    must_assign(&run(&mut view, &host(8080, "udp"), &new_test_tasks("dns", 1, 3)));
    // A task that stops gives its node's port back.
    let mut stopped = new_test_tasks("web", 1, 1).remove(0);
    stopped.node_id = "n0000".into();
    stopped.spec = Some(host(8080, "tcp"));
    stopped.desired_state = TaskState::Shutdown as i32;
    view.add_task(&stopped);
    must_assign(&run(&mut view, &host(8080, "tcp"), &new_test_tasks("api", 1, 1)));
}
