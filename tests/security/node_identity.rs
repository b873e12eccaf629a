//! Item 5: a node's hostname and address are not its own word. A process holding a worker token
//! tries to pass for another node — its hostname at join, its hostname and address in a session
//! — to receive the tasks (and secrets) pinned to that node by a constraint.

use std::process::Command;
use std::time::{Duration, Instant};

use shoal_proto::*;

use shoal_testkit::cluster::{node, worker_token, TestNode};
use shoal_testkit::fake_worker::FakeWorker;
use shoal_testkit::poll::eventually;

const BEAT: Duration = Duration::from_millis(200);
const CONVERGE: Duration = Duration::from_secs(60);

async fn ready(m: &TestNode, id: &str) {
    eventually("node Ready", CONVERGE, || async {
        let state = m.state_of(id).await;
        (state == Some(NodeState::Ready)).then_some(()).ok_or(format!("{state:?}"))
    })
    .await;
}

/// The task of `service` that runs, and the node it runs on.
async fn running_task(m: &TestNode, service: &str) -> Result<Task, String> {
    let req = ListTasksRequest { service: service.into(), ..Default::default() };
    let tasks = m.control().await.list_tasks(req).await.map_err(|e| e.to_string())?;
    tasks
        .into_inner()
        .tasks
        .into_iter()
        .find(|t| t.status.as_ref().is_some_and(|s| s.state() == TaskState::Running))
        .ok_or_else(|| "no task running yet".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_impostor_worker_cannot_take_another_nodes_hostname_address_tasks_or_secrets() {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let token = worker_token(&m).await;
    let victim = TestNode::start("victim").await;
    let victim_id = victim.join(&token, &addr).await.unwrap();
    ready(&m, &victim_id).await;

    // Joining under the victim's hostname is refused, naming the node that holds it.
    let refused = FakeWorker::join(&addr, &token, "victim", "").await.expect_err("refused");
    let refused = refused.to_string();
    assert!(
        refused.contains("hostname \"victim\" is already used by node")
            && refused.contains(&victim_id),
        "the refusal names the duplicate: {refused}"
    );
    assert_eq!(m.nodes().await.len(), 2, "the refused join left no node behind");

    // Under its own name it joins, recorded at the address its connection comes from.
    let impostor = FakeWorker::join(&addr, &token, "impostor", "").await.unwrap();
    let joined = node(&m, &impostor.node_id).await;
    assert_eq!((joined.hostname.as_str(), joined.addr.as_str()), ("impostor", "127.0.0.1"));
    assert!(!joined.addr_pinned);

    // Its session claims the victim's hostname and another address: neither is taken.
    let claim = SessionRequest {
        hostname: "victim".into(),
        advertise_addr: "10.66.0.9:4242".into(),
        description: None,
        tunnel_keys: Vec::new(),
        cert_serial: String::new(),
    };
    let session = impostor.session(claim).await.unwrap();
    assert_eq!(session.node.hostname, "impostor");
    assert_eq!(session.node.addr, "127.0.0.1");
    ready(&m, &impostor.node_id).await;
    let after = node(&m, &impostor.node_id).await;
    assert_eq!((after.hostname.as_str(), after.addr.as_str()), ("impostor", "127.0.0.1"));
    let hosts: Vec<String> = m.nodes().await.into_iter().map(|n| n.hostname).collect();
    assert_eq!(hosts.iter().filter(|h| *h == "victim").count(), 1, "{hosts:?}");
    // An address at the IP it really comes from is taken (a node that moved says where).
    let truthful = SessionRequest { advertise_addr: "127.0.0.1:7777".into(), ..Default::default() };
    let session = impostor.session(truthful).await.unwrap();
    assert_eq!(session.node.addr, "127.0.0.1:7777");

    // A task pinned to the victim, with a secret, goes to the victim only.
    let mut assignments = impostor.assignments(&session).await;
    let mut control = m.control().await;
    let secret = CreateSecretRequest {
        kind: SecretKind::Secret as i32,
        name: "victim-key".into(),
        data: b"only for the victim".to_vec(),
        ..Default::default()
    };
    let secret = control.create_secret(secret).await.unwrap().into_inner().secret.unwrap();
    let spec = ServiceSpec {
        name: "pinned".into(),
        replicas: 1,
        container: Some(ContainerSpec {
            image: "busybox:demo".into(),
            args: vec!["sleep".into(), "3600".into()],
            secrets: vec![SecretReference {
                secret_id: secret.id.clone(),
                secret_name: "victim-key".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        placement: Some(Placement {
            constraints: vec!["node.hostname==victim".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    control
        .create_service(CreateServiceRequest { spec: Some(spec), ..Default::default() })
        .await
        .unwrap();
    eventually("the pinned task runs", CONVERGE, || async {
        let t = running_task(&m, "pinned").await?;
        (t.node_id == victim_id).then_some(()).ok_or(format!("runs on {}", t.node_id))
    })
    .await;
    let until = Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(Some(msg))) = tokio::time::timeout_at(until.into(), assignments.message()).await
    {
        assert!(msg.tasks.is_empty(), "the impostor was assigned {:?}", msg.tasks);
        assert!(msg.secrets.is_empty(), "the impostor received a secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_an_operator_changes_a_nodes_hostname_with_node_update() {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let token = worker_token(&m).await;
    let w = FakeWorker::join(&addr, &token, "old-name", "").await.unwrap();

    let shoal = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .env_remove("SHOAL_HOST")
            .arg("-H")
            .arg(format!("unix://{}", m.socket.display()))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = shoal(&["node", "update", "--hostname", "new-name", &w.node_id]);
    assert!(ok, "{text}");
    assert_eq!(node(&m, &w.node_id).await.hostname, "new-name");

    // The manager's own hostname is taken; a malformed one is refused, saying why.
    let (ok, text) = shoal(&["node", "update", "--hostname", "m", &w.node_id]);
    assert!(!ok && text.contains("hostname \"m\" is already used by node"), "{text}");
    let (ok, text) = shoal(&["node", "update", "--hostname", "bad name", &w.node_id]);
    assert!(!ok && text.contains("not a valid hostname"), "{text}");
    assert_eq!(node(&m, &w.node_id).await.hostname, "new-name");

    // The node's own session does not undo the operator's choice.
    let claim = SessionRequest { hostname: "old-name".into(), ..Default::default() };
    let session = w.session(claim).await.unwrap();
    assert_eq!(session.node.hostname, "new-name");
}
