//! Item 8: the moment a node is removed, the streams it holds open end: nothing more is
//! assigned to it, and it gets no more log subscriptions. A fake worker (a certificate from the
//! real CA, speaking the real dispatcher protocol) plays the node that is removed.

use std::time::Duration;

use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::{
    AssignmentsRequest, CreateServiceRequest, GetJoinTokenRequest, ListenSubscriptionsRequest,
    NodeRole, RemoveNodeRequest, ServiceSpec, SessionRequest,
};
use tonic::Streaming;

use shoal_testkit::cluster::{worker_token, TestNode};
use shoal_testkit::fake_worker::FakeWorker;

/// Long enough that the fake worker, which never heartbeats, keeps its session for the test.
const BEAT: Duration = Duration::from_secs(10);
/// "At once", with room for a loaded machine.
const AT_ONCE: Duration = Duration::from_secs(2);

/// The next item of a node's stream, within `wait`.
async fn next<T>(
    stream: &mut Streaming<T>,
    wait: Duration,
) -> Option<Result<Option<T>, tonic::Status>> {
    tokio::time::timeout(wait, stream.message()).await.ok()
}

/// The streams a node holds open on the leader.
struct Streams {
    session: Streaming<shoal_proto::SessionMessage>,
    assignments: Streaming<shoal_proto::AssignmentsMessage>,
    subscriptions: Streaming<shoal_proto::LogSubscription>,
}

/// A fake worker joins the cluster of `m` and opens its streams on the leader at `addr`.
async fn doomed_worker(m: &TestNode, addr: &str) -> (FakeWorker, Streams) {
    let worker = FakeWorker::join(addr, &worker_token(m).await, "doomed", "").await.unwrap();
    let mut dispatcher = DispatcherClient::new(worker.channel().await);
    let session = SessionRequest { hostname: "doomed".into(), ..Default::default() };
    let mut session = dispatcher.session(session).await.unwrap().into_inner();
    let session_id = session.message().await.unwrap().unwrap().session_id;
    let mut assignments = dispatcher
        .assignments(AssignmentsRequest { session_id: session_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = assignments.message().await.unwrap().unwrap();
    assert!(first.complete && first.tasks.is_empty(), "a new node starts with nothing: {first:?}");
    let subscriptions = dispatcher
        .listen_subscriptions(ListenSubscriptionsRequest { session_id })
        .await
        .unwrap()
        .into_inner();
    (worker, Streams { session, assignments, subscriptions })
}

/// Every stream of the removed node ends within [`AT_ONCE`], with nothing more sent on it.
async fn assert_all_closed_at_once(mut streams: Streams) {
    match next(&mut streams.assignments, AT_ONCE).await {
        None => panic!("the removed node's assignments stream was still open {AT_ONCE:?} later"),
        Some(Ok(Some(msg))) => panic!("the removed node was sent one more assignment: {msg:?}"),
        Some(Ok(None)) => {} // ended; the status below is only for a clear story
        Some(Err(status)) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{}", status.message());
            assert!(status.message().contains("was removed"), "{}", status.message());
        }
    }
    match next(&mut streams.subscriptions, AT_ONCE).await {
        None => {
            panic!("the removed node's log subscription stream was still open {AT_ONCE:?} later")
        }
        Some(Ok(Some(sub))) => panic!("the removed node was sent a log subscription: {sub:?}"),
        Some(Ok(None)) => {}
        Some(Err(status)) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{}", status.message())
        }
    }
    // Session messages carry no task or secret; ones queued before the removal (node updates,
    // the manager set) may still arrive, but the stream must end.
    let deadline = tokio::time::Instant::now() + AT_ONCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next(&mut streams.session, left).await {
            None => panic!("the removed node's session stream stayed open"),
            Some(Ok(Some(_))) => continue,
            Some(Ok(None)) | Some(Err(_)) => break,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_nodes_assignment_and_log_streams_close_at_once() {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let (worker, mut streams) = doomed_worker(&m, &addr).await;

    // Two replicas on two nodes: one task is the fake worker's.
    let spec = ServiceSpec {
        name: "web".into(),
        container: Some(shoal_proto::ContainerSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        replicas: 2,
        ..Default::default()
    };
    let mut control = m.control().await;
    control
        .create_service(CreateServiceRequest { spec: Some(spec), ..Default::default() })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline, streams.assignments.message())
            .await
            .expect("the fake worker was never given its task")
            .unwrap()
            .expect("the assignments stream ended before the removal");
        if !msg.tasks.is_empty() {
            break;
        }
    }

    // The operator removes the node. From here on, nothing may reach it (today the order to
    // shut its task down still did).
    let req = RemoveNodeRequest { reference: worker.node_id.clone(), force: true };
    control.remove_node(req).await.unwrap();
    assert_all_closed_at_once(streams).await;
}

/// The removal is handled by a manager that is not the leader, where the node's streams are
/// not: the leader closes them all the same, from the replicated removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removal_through_another_manager_closes_the_streams_on_the_leader() {
    let leader = TestNode::start("m1").await;
    let addr = leader.init(BEAT, None).await;
    let req = GetJoinTokenRequest { role: NodeRole::Manager as i32 };
    let token = leader.control().await.get_join_token(req).await.unwrap().into_inner().token;
    let follower = TestNode::start("m2").await;
    follower.join(&token, &addr).await.unwrap();
    let (worker, streams) = doomed_worker(&leader, &addr).await;

    let req = RemoveNodeRequest { reference: worker.node_id.clone(), force: true };
    follower.control().await.remove_node(req).await.unwrap();
    assert_all_closed_at_once(streams).await;
}
