//! Item 6: a worker cannot make the managers write without bound. A fake worker sends
//! oversized fields, bursts of renewals and status reports that change nothing but their text;
//! the managers refuse what is too big or too soon, and write only what changes a task.

use std::path::Path;
use std::time::Duration;

use shoal_proto::*;
use tonic::Code;

use shoal_testkit::cluster::{node, worker_token, TestNode};
use shoal_testkit::fake_worker::FakeWorker;
use shoal_testkit::poll::eventually;

const BEAT: Duration = Duration::from_millis(200);
const CONVERGE: Duration = Duration::from_secs(60);

/// Bytes under `dir`, every file counted.
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size_of(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_fields_from_a_node_are_refused_naming_the_field_and_limit() {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let token = worker_token(&m).await;

    let huge = "a".repeat(3 << 20);
    let refused = FakeWorker::join(&addr, &token, &huge, "").await.expect_err("refused");
    let refused = refused.to_string();
    assert!(
        refused.contains("hostname: 3145728 bytes is over the limit of 253 bytes"),
        "{}",
        &refused[..refused.len().min(300)]
    );
    assert_eq!(m.nodes().await.len(), 1, "no node was recorded");

    let w = FakeWorker::join(&addr, &token, "w", "").await.unwrap();
    let claim = SessionRequest { hostname: huge, ..Default::default() };
    let s = w.session(claim).await.expect_err("refused");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("hostname: 3145728 bytes is over the limit"), "{}", s.message());
    let description = NodeDescription { os: "x".repeat(4096), ..Default::default() };
    let claim = SessionRequest { description: Some(description), ..Default::default() };
    let s = w.session(claim).await.expect_err("refused");
    assert!(s.message().contains("description.os: 4096 bytes"), "{}", s.message());
    let stored = node(&m, &w.node_id).await;
    assert_eq!(stored.hostname, "w");
    assert!(stored.description.is_none_or(|d| d.os.len() < 64));

    let session = w.session(SessionRequest::default()).await.unwrap();
    let status = TaskStatus { message: "m".repeat(2048), ..Default::default() };
    let update = TaskStatusUpdate { task_id: "t".into(), status: Some(status) };
    let req = UpdateTaskStatusRequest { session_id: session.id.clone(), updates: vec![update] };
    let s = w.report(req).await.expect_err("refused");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("status.message: 2048 bytes is over the limit of 1024"), "{s:?}");
    let many = vec![TaskStatusUpdate::default(); 1001];
    let req = UpdateTaskStatusRequest { session_id: session.id.clone(), updates: many };
    let s = w.report(req).await.expect_err("refused");
    assert!(s.message().contains("updates: 1001 items is over the limit of 1000"), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_renewals_is_refused_and_the_store_does_not_grow() {
    // Real pace: a node renews at most once a minute.
    let m = TestNode::start_with_time_scale("m", 1.0).await;
    let addr = m.init(BEAT, None).await;
    let token = worker_token(&m).await;
    let w = FakeWorker::join(&addr, &token, "w", "").await.unwrap();
    let csr_der = shoal_pki::NodeKey::generate().unwrap().csr_der().unwrap();
    let before = size_of(&m.root);

    let mut calls = Vec::new();
    for _ in 0..200 {
        let mut ca = w.node_ca().await;
        let req = RenewNodeCertificateRequest { csr_der: csr_der.clone() };
        calls.push(tokio::spawn(async move { ca.renew_node_certificate(req).await }));
    }
    let (mut renewed, mut paced, mut other) = (0, 0, Vec::new());
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => renewed += 1,
            Err(s)
                if s.code() == Code::ResourceExhausted
                    && s.message().contains("renew at most once every 60s") =>
            {
                paced += 1
            }
            Err(s) => other.push(s),
        }
    }
    let grown = size_of(&m.root).saturating_sub(before);
    let serials = node(&m, &w.node_id).await.serials.len();
    eprintln!(
        "200 renewals: {renewed} renewed, {paced} paced, {} otherwise refused; store grew {grown} \
         bytes; {serials} serials kept",
        other.len()
    );
    assert!(other.is_empty(), "refused otherwise: {:?}", other.first());
    assert!(renewed <= 1, "{renewed} renewals were signed");
    assert!(serials <= 2, "{serials} serials kept");
    assert!(grown < 1 << 20, "the manager's data grew by {grown} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_at_the_scaled_pace_keep_only_live_serials() {
    // Scaled: the pace is 60 s / 2000 = 30 ms, and every renewal is signed.
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let token = worker_token(&m).await;
    let w = FakeWorker::join(&addr, &token, "w", "").await.unwrap();
    let csr_der = shoal_pki::NodeKey::generate().unwrap().csr_der().unwrap();
    let mut ca = w.node_ca().await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let req = RenewNodeCertificateRequest { csr_der: csr_der.clone() };
        ca.renew_node_certificate(req).await.unwrap();
    }
    let n = node(&m, &w.node_id).await;
    assert_eq!(n.serials.len(), 6, "none has expired yet");
    assert_eq!(n.serial_not_after_unix.len(), n.serials.len(), "each serial has its expiry");
    let now = shoal_manager::manager::unix(std::time::SystemTime::now());
    assert!(n.serial_not_after_unix.iter().all(|t| *t > now));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_status_report_that_only_changes_its_message_is_not_written() {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let token = worker_token(&m).await;
    let w = FakeWorker::join(&addr, &token, "fake-w", "").await.unwrap();
    let session = w.session(SessionRequest::default()).await.unwrap();
    let mut assignments = w.assignments(&session).await;
    let spec = ServiceSpec {
        name: "chatty".into(),
        replicas: 1,
        container: Some(ContainerSpec { image: "busybox:demo".into(), ..Default::default() }),
        placement: Some(Placement {
            constraints: vec!["node.hostname==fake-w".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = CreateServiceRequest { spec: Some(spec), ..Default::default() };
    m.control().await.create_service(req).await.unwrap();
    let task_id = loop {
        let msg = tokio::time::timeout(CONVERGE, assignments.message()).await.unwrap();
        if let Some(t) = msg.unwrap().unwrap().tasks.first() {
            break t.id.clone();
        }
    };
    let report = |state: TaskState, message: &str| {
        let status = TaskStatus {
            state: state as i32,
            message: message.into(),
            timestamp_ms: 1,
            ..Default::default()
        };
        let update = TaskStatusUpdate { task_id: task_id.clone(), status: Some(status) };
        UpdateTaskStatusRequest { session_id: session.id.clone(), updates: vec![update] }
    };
    let task = || async {
        let req = ListTasksRequest { service: "chatty".into(), ..Default::default() };
        let tasks = m.control().await.list_tasks(req).await.unwrap().into_inner().tasks;
        tasks.into_iter().find(|t| t.id == task_id).unwrap()
    };
    w.report(report(TaskState::Running, "started")).await.unwrap();
    eventually("the task is Running", CONVERGE, || async {
        let s = task().await.status.unwrap_or_default();
        (s.state() == TaskState::Running).then_some(()).ok_or(format!("{:?}", s.state()))
    })
    .await;
    let version = task().await.meta.unwrap_or_default().version;

    for i in 0..50 {
        w.report(report(TaskState::Running, &format!("still running {i}"))).await.unwrap();
    }
    let after = task().await;
    assert_eq!(
        after.meta.unwrap_or_default().version,
        version,
        "a message-only report was written"
    );
    assert_eq!(after.status.unwrap_or_default().message, "started");

    // A report that changes the state is written.
    w.report(report(TaskState::Complete, "finished")).await.unwrap();
    let done = task().await;
    assert!(done.meta.unwrap_or_default().version > version);
    assert_eq!(done.status.unwrap_or_default().state(), TaskState::Complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopening_sessions_in_a_loop_does_not_write_the_node_each_time() {
    let m = TestNode::start("m").await;
    let addr = m.init(Duration::from_secs(5), None).await;
    let w = FakeWorker::join(&addr, &worker_token(&m).await, "looper", "").await.unwrap();
    drop(w.session(SessionRequest::default()).await.unwrap());
    let version = || async { node(&m, &w.node_id).await.meta.unwrap_or_default().version };
    let first = version().await;
    for _ in 0..50 {
        drop(w.session(SessionRequest::default()).await.unwrap());
    }
    let after = version().await;
    assert!(
        after <= first + 1,
        "50 sessions that changed nothing wrote the node {} times",
        after - first
    );
    assert_eq!(node(&m, &w.node_id).await.state(), NodeState::Ready);
}
