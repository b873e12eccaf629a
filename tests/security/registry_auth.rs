//! Issue #16: credentials sent with `--with-registry-auth` are kept by the managers and given
//! only to the nodes that run a task of the service: every read through the control API (the
//! service, the list, the tasks) returns the login without its password, a node without a
//! task of the service never receives it, an update that sends no new login keeps it, and
//! `Debug` output never shows it. Two fake workers (real certificates, the real dispatcher
//! protocol) play the node with the task and the node without.

use std::time::Duration;

use prost::Message;
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::{
    AssignmentsMessage, AssignmentsRequest, ContainerSpec, CreateServiceRequest, GetServiceRequest,
    ListServicesRequest, ListTasksRequest, Placement, RegistryAuth, ServiceSpec, SessionRequest,
    Task, UpdateServiceRequest,
};
use tonic::Streaming;

use shoal_testkit::cluster::{worker_token, TestNode};
use shoal_testkit::fake_worker::FakeWorker;

const BEAT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "P-REGISTRY-SECRET-71c9";
const REGISTRY: &str = "registry.invalid:5000";

/// A fake worker named `hostname` with its assignments stream open.
async fn worker(m: &TestNode, addr: &str, hostname: &str) -> Streaming<AssignmentsMessage> {
    let w = FakeWorker::join(addr, &worker_token(m).await, hostname, "").await.unwrap();
    let mut dispatcher = DispatcherClient::new(w.channel().await);
    let session = SessionRequest { hostname: hostname.into(), ..Default::default() };
    let mut session = dispatcher.session(session).await.unwrap().into_inner();
    let session_id = session.message().await.unwrap().unwrap().session_id;
    // The session stream must stay open for the node to stay connected.
    tokio::spawn(async move { while let Ok(Some(_)) = session.message().await {} });
    std::mem::forget(w);
    dispatcher.assignments(AssignmentsRequest { session_id }).await.unwrap().into_inner()
}

fn spec(name: &str, node: &str, auth: bool) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        replicas: 1,
        container: Some(ContainerSpec {
            image: format!("{REGISTRY}/{name}:1"),
            registry_auth: auth.then(|| RegistryAuth {
                registry: REGISTRY.into(),
                username: "deployer".into(),
                password: PASSWORD.into(),
            }),
            ..Default::default()
        }),
        placement: Some(Placement {
            constraints: vec![format!("node.hostname=={node}")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn leaks(msg: &impl Message) -> bool {
    let bytes = msg.encode_to_vec();
    bytes.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes())
}

/// Reads assignment messages until one carries a task of `service` that `pred` accepts;
/// returns everything read.
async fn until_task(
    stream: &mut Streaming<AssignmentsMessage>,
    service: &str,
    pred: impl Fn(&Task) -> bool,
) -> Vec<AssignmentsMessage> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no task of {service} was assigned"))
            .unwrap()
            .expect("the assignments stream ended");
        let done = msg.tasks.iter().any(|t| t.service_name == service && pred(t));
        seen.push(msg);
        if done {
            return seen;
        }
    }
}

fn password_in(msgs: &[AssignmentsMessage], service: &str) -> Option<String> {
    msgs.iter()
        .flat_map(|m| &m.tasks)
        .filter(|t| t.service_name == service)
        .filter_map(|t| t.spec.as_ref()?.container.as_ref()?.registry_auth.clone())
        .map(|a| a.password)
        .next_back()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_credentials_reach_only_the_nodes_that_run_the_service() {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let mut holder = worker(&m, &addr, "holder").await;
    let mut bystander = worker(&m, &addr, "bystander").await;
    let mut control = m.control().await;
    for (name, node, auth) in [("private", "holder", true), ("public", "bystander", false)] {
        let req =
            CreateServiceRequest { spec: Some(spec(name, node, auth)), no_resolve_image: true };
        let r = control.create_service(req).await.unwrap().into_inner();
        assert!(!leaks(&r), "the create answer carries the password");
    }

    let got = until_task(&mut holder, "private", |_| true).await;
    assert_eq!(
        password_in(&got, "private").as_deref(),
        Some(PASSWORD),
        "the node that pulls gets it"
    );
    let other = until_task(&mut bystander, "public", |_| true).await;
    assert!(!other.iter().any(leaks), "a node without a task of the service got the password");

    let service = control
        .get_service(GetServiceRequest { reference: "private".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!leaks(&service), "service inspect shows the password");
    let auth = service.service.as_ref().unwrap().spec.as_ref().unwrap();
    let auth = auth.container.as_ref().unwrap().registry_auth.as_ref().unwrap();
    assert_eq!((auth.registry.as_str(), auth.username.as_str()), (REGISTRY, "deployer"));
    let list = control.list_services(ListServicesRequest {}).await.unwrap().into_inner();
    assert!(!leaks(&list), "service ls carries the password");
    let tasks = control.list_tasks(ListTasksRequest::default()).await.unwrap().into_inner();
    assert!(!tasks.tasks.is_empty() && !leaks(&tasks), "service ps carries the password");

    // An update built from what a read gave back (no password) keeps the login.
    let s = service.service.unwrap();
    let mut spec = s.spec.clone().unwrap();
    spec.container.as_mut().unwrap().env.push("ROLL=1".into());
    let req = UpdateServiceRequest {
        reference: s.id.clone(),
        spec: Some(spec),
        no_resolve_image: true,
        ..Default::default()
    };
    let r = control.update_service(req).await.unwrap().into_inner();
    assert!(!leaks(&r));
    let rolled = |t: &Task| {
        t.spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .is_some_and(|c| c.env.contains(&"ROLL=1".into()))
    };
    let later = until_task(&mut holder, "private", rolled).await;
    let new_task = later.iter().flat_map(|m| &m.tasks).rfind(|t| rolled(t)).unwrap();
    let kept = new_task.spec.as_ref().unwrap().container.as_ref().unwrap().registry_auth.as_ref();
    assert_eq!(kept.map(|a| a.password.as_str()), Some(PASSWORD), "the update lost the login");

    let logged = format!("{:?}", RegistryAuth { password: PASSWORD.into(), ..Default::default() });
    assert!(!logged.contains(PASSWORD), "Debug shows the password: {logged}");
}
