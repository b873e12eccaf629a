//! Services on an in-process cluster: real managers, real gRPC with mTLS, real Raft and sled,
//! agents running the real worker with the fake executor (so a test can run 100+ agents).
//! What is checked is what `service ps` would show a user.

use std::time::Duration;

use shoal_proto::*;
use shoal_testkit::cluster::{worker_token, TestNode};
use shoal_testkit::poll::eventually;

const BEAT: Duration = Duration::from_millis(200);
// A deadline, not a speed target: generous, as CI machines are small and busy.
const CONVERGE: Duration = Duration::from_secs(90);

/// A manager and `workers` agents, all Ready.
async fn cluster(workers: usize) -> (TestNode, Vec<TestNode>) {
    cluster_beating(workers, BEAT).await
}

/// The same with a chosen heartbeat period.
async fn cluster_beating(workers: usize, beat: Duration) -> (TestNode, Vec<TestNode>) {
    let m = TestNode::start("m").await;
    let addr = m.init(beat, None).await;
    let t = worker_token(&m).await;
    let mut nodes = Vec::new();
    for i in 0..workers {
        let w = TestNode::start(&format!("w{i}")).await;
        w.join(&t, &addr).await.unwrap();
        nodes.push(w);
    }
    let want = workers + 1;
    eventually("all nodes Ready", CONVERGE, || async {
        let nodes = m.nodes().await;
        let ready = nodes.iter().filter(|n| n.state() == NodeState::Ready).count();
        (ready == want).then_some(()).ok_or(format!("{ready} of {want} Ready"))
    })
    .await;
    (m, nodes)
}

fn spec(name: &str, image: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        replicas,
        container: Some(ContainerSpec {
            image: image.into(),
            args: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        }),
        restart: Some(RestartPolicy { delay_ms: 100, ..Default::default() }),
        update: Some(UpdateConfig { parallelism: 1, monitor_ms: 500, ..Default::default() }),
        rollback: Some(UpdateConfig { parallelism: 0, monitor_ms: 500, ..Default::default() }),
        ..Default::default()
    }
}

async fn create(m: &TestNode, spec: ServiceSpec) -> Service {
    let req = CreateServiceRequest { spec: Some(spec), ..Default::default() };
    m.control().await.create_service(req).await.unwrap().into_inner().service.unwrap()
}

async fn tasks(m: &TestNode, service: &str) -> ListTasksResponse {
    let req = ListTasksRequest { service: service.into(), ..Default::default() };
    m.control().await.list_tasks(req).await.unwrap().into_inner()
}

async fn update_status(m: &TestNode, service: &str) -> UpdateStatus {
    let req = GetServiceRequest { reference: service.into() };
    let s = m.control().await.get_service(req).await.unwrap().into_inner().service.unwrap();
    s.update_status.unwrap_or_default()
}

async fn update(m: &TestNode, service: &str, edit: impl FnOnce(&mut ServiceSpec)) {
    let req = GetServiceRequest { reference: service.into() };
    let s = m.control().await.get_service(req).await.unwrap().into_inner().service.unwrap();
    let mut spec = s.spec.clone().unwrap();
    edit(&mut spec);
    let req = UpdateServiceRequest {
        reference: s.id,
        spec: Some(spec),
        version: s.meta.unwrap().version,
        ..Default::default()
    };
    m.control().await.update_service(req).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicated_service_spreads_scales_and_is_removed() {
    let (m, _workers) = cluster(3).await;
    create(&m, spec("web", "busybox", 8)).await;
    let placed = m.wait_running("web", 8, CONVERGE).await;
    assert_eq!(placed.len(), 4, "every node runs some: {:?}", placed.keys());
    assert!(placed.values().all(|t| t.len() == 2), "8 tasks over 4 nodes, 2 each");
    let mut slots: Vec<u64> = placed.values().flatten().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, (1..=8).collect::<Vec<_>>());

    update(&m, "web", |s| s.replicas = 3).await;
    let placed = m.wait_running("web", 3, CONVERGE).await;
    assert_eq!(placed.len(), 3, "scale-down kept the spread: {:?}", placed.keys());

    let req = RemoveServiceRequest { reference: "web".into() };
    m.control().await.remove_service(req).await.unwrap();
    eventually("every task of web deleted", CONVERGE, || async {
        let req = ListTasksRequest::default();
        let n = m.control().await.list_tasks(req).await.unwrap().into_inner().tasks.len();
        (n == 0).then_some(()).ok_or(format!("{n} tasks left"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_of_a_lost_or_drained_node_come_back_on_the_others() {
    let (m, mut workers) = cluster(3).await;
    create(&m, spec("web", "busybox", 4)).await;
    m.wait_running("web", 4, CONVERGE).await;

    // Kill a worker: once it is Down its task runs elsewhere.
    let lost = workers.remove(0);
    let lost_name = lost.name.clone();
    lost.kill().await;
    eventually("the killed node Down", CONVERGE, || async {
        let nodes = m.nodes().await;
        let n = nodes.iter().find(|n| n.hostname == lost_name).unwrap();
        (n.state() == NodeState::Down).then_some(()).ok_or(format!("{:?}", n.state()))
    })
    .await;
    eventually("its task running elsewhere", CONVERGE, || async {
        let r = m.running("web").await;
        let n: usize = r.values().map(Vec::len).sum();
        (n == 4 && !r.contains_key(&lost_name)).then_some(()).ok_or(format!("{:?}", r.keys()))
    })
    .await;

    // Drain another: its tasks move; the node keeps none.
    let drained = workers[0].name.clone();
    let req = UpdateNodeRequest {
        reference: drained.clone(),
        availability: Some(Availability::Drain as i32),
        ..Default::default()
    };
    m.control().await.update_node(req).await.unwrap();
    eventually("drained node empty", CONVERGE, || async {
        let r = m.running("web").await;
        let n: usize = r.values().map(Vec::len).sum();
        (n == 4 && !r.contains_key(&drained)).then_some(()).ok_or(format!("{:?}", r.keys()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_update_pauses_while_old_tasks_keep_serving_or_rolls_back() {
    let (m, _workers) = cluster(2).await;
    create(&m, spec("web", "busybox:1", 3)).await;
    m.wait_running("web", 3, CONVERGE).await;

    // The fake executor rejects images named missing/…, like a node without the image.
    update(&m, "web", |s| s.container.as_mut().unwrap().image = "missing/busybox:2".into()).await;
    eventually("update paused", CONVERGE, || async {
        let st = update_status(&m, "web").await;
        (st.state() == UpdateState::Paused).then_some(()).ok_or(format!("{st:?}"))
    })
    .await;
    let serving = m.running("web").await;
    let old: usize = serving
        .values()
        .flatten()
        .filter(|t| t.spec.as_ref().unwrap().container.as_ref().unwrap().image == "busybox:1")
        .count();
    assert_eq!(old, 2, "parallelism 1: only one slot was touched; two old tasks keep serving");
    assert!(update_status(&m, "web").await.message.contains("paused"));

    // The same bad update with failure action rollback goes back to busybox:1 on its own.
    create(&m, spec("api", "busybox:1", 2)).await;
    m.wait_running("api", 2, CONVERGE).await;
    update(&m, "api", |s| {
        s.container.as_mut().unwrap().image = "missing/busybox:2".into();
        s.update.as_mut().unwrap().set_failure_action(FailureAction::Rollback);
    })
    .await;
    eventually("rollback completed", CONVERGE, || async {
        let st = update_status(&m, "api").await;
        (st.state() == UpdateState::RollbackCompleted).then_some(()).ok_or(format!("{st:?}"))
    })
    .await;
    let serving = m.wait_running("api", 2, CONVERGE).await;
    assert!(serving
        .values()
        .flatten()
        .all(|t| { t.spec.as_ref().unwrap().container.as_ref().unwrap().image == "busybox:1" }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_global_service_runs_once_per_eligible_node() {
    let (m, workers) = cluster(3).await;
    let req = UpdateNodeRequest {
        reference: workers[0].name.clone(),
        label_add: vec!["zone=edge".into()],
        ..Default::default()
    };
    m.control().await.update_node(req).await.unwrap();
    let mut s = spec("agent", "busybox", 0);
    s.set_mode(ServiceMode::Global);
    s.placement = Some(Placement {
        constraints: vec!["node.labels.zone!=edge".into()],
        ..Default::default()
    });
    create(&m, s).await;
    let placed = m.wait_running("agent", 3, CONVERGE).await;
    assert!(!placed.contains_key(&workers[0].name), "the constraint kept it off the edge node");
    assert!(placed.values().all(|t| t.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_agents_each_get_only_their_own_tasks() {
    // A hundred agents on two busy cores: a 200 ms beat (Down after 600 ms unheard) could
    // mark one Down mid-run and move its tasks, which would test the spread of the rescue.
    let (m, workers) = cluster_beating(100, Duration::from_secs(2)).await;
    create(&m, spec("wide", "busybox", 300)).await;
    let placed = m.wait_running("wide", 300, CONVERGE).await;
    assert_eq!(placed.len(), 101, "all 101 nodes used");
    assert!(placed.values().all(|t| (2..=3).contains(&t.len())), "even spread");
    // The store agrees with what each agent runs: every task's node is the node it reported from.
    let list = tasks(&m, "wide").await;
    for t in list.tasks.iter().filter(|t| t.state() == TaskState::Running) {
        assert!(list.node_names.contains_key(&t.node_id));
    }
    drop(workers);
}

/// Many clients creating the same name at once (two `stack deploy`s, a retried script): one
/// service and one secret get it, every other call is refused with "already exists", and the
/// name is free again once its holder is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creations_of_one_name_make_exactly_one_object() {
    let (m, _workers) = cluster(0).await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut control = m.control().await;
        calls.push(tokio::spawn(async move {
            let service = CreateServiceRequest {
                spec: Some(spec("dup", "busybox:demo", 0)),
                ..Default::default()
            };
            let secret = CreateSecretRequest {
                kind: SecretKind::Secret as i32,
                name: "dup-secret".into(),
                data: b"v".to_vec(),
                ..Default::default()
            };
            let mut other = control.clone();
            let (a, b) = tokio::join!(other.create_service(service), control.create_secret(secret));
            (a.map(|_| ()), b.map(|_| ()))
        }));
    }
    let (mut services_made, mut secrets_made) = (0, 0);
    for call in calls {
        let (service, secret) = call.await.unwrap();
        for (result, made) in [(service, &mut services_made), (secret, &mut secrets_made)] {
            match result {
                Ok(()) => *made += 1,
                Err(s) => assert!(
                    s.code() == tonic::Code::AlreadyExists
                        && s.message().contains("already exists"),
                    "refused with something else: {s:?}"
                ),
            }
        }
    }
    assert_eq!((services_made, secrets_made), (1, 1), "one object per name");
    let mut control = m.control().await;
    let listed = control.list_services(ListServicesRequest::default()).await.unwrap().into_inner();
    let named = listed
        .services
        .iter()
        .filter_map(|s| s.service.as_ref()?.spec.as_ref())
        .filter(|spec| spec.name == "dup")
        .count();
    assert_eq!(named, 1);
    control.remove_service(RemoveServiceRequest { reference: "dup".into() }).await.unwrap();
    control
        .create_service(CreateServiceRequest {
            spec: Some(spec("dup", "busybox:demo", 0)),
            ..Default::default()
        })
        .await
        .expect("the name is free again after the service is removed");
    let rm =
        RemoveSecretRequest { kind: SecretKind::Secret as i32, reference: "dup-secret".into() };
    control.remove_secret(rm).await.unwrap();
    let again = CreateSecretRequest {
        kind: SecretKind::Secret as i32,
        name: "dup-secret".into(),
        data: b"w".to_vec(),
        ..Default::default()
    };
    control.create_secret(again).await.expect("the secret name is free again");
}
