//! The worker's session streams against a fake dispatcher served over real gRPC on loopback:
//! assignments in, batched reports out (and retried on the next session), logs published.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::dispatcher_server::{Dispatcher, DispatcherServer};
use shoal_proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

use super::{serve, Link, REPORT_BATCH};
use crate::worker::tests::{complete, new_test_task};
use crate::worker::{FakeExecutor, Worker};

type Tx<T> = mpsc::Sender<Result<T, Status>>;

/// A dispatcher that hands out the streams a test feeds and records what the agent sends.
#[derive(Default)]
struct FakeDispatcher {
    assignments: Mutex<Vec<mpsc::Receiver<Result<AssignmentsMessage, Status>>>>,
    subscriptions: Mutex<Vec<mpsc::Receiver<Result<LogSubscription, Status>>>>,
    /// Streams handed out with nothing to say, kept open.
    idle: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
    updates: Mutex<Vec<UpdateTaskStatusRequest>>,
    fail_updates: AtomicUsize,
    published: Mutex<Vec<(u32, PublishLogsMessage)>>,
    publish_calls: AtomicUsize,
}

impl FakeDispatcher {
    fn feed_assignments(&self) -> Tx<AssignmentsMessage> {
        let (tx, rx) = mpsc::channel(16);
        self.assignments.lock().unwrap().push(rx);
        tx
    }

    fn feed_subscriptions(&self) -> Tx<LogSubscription> {
        let (tx, rx) = mpsc::channel(16);
        self.subscriptions.lock().unwrap().push(rx);
        tx
    }

    fn idle<T: Send + 'static>(&self) -> mpsc::Receiver<Result<T, Status>> {
        let (tx, rx) = mpsc::channel(1);
        self.idle.lock().unwrap().push(Box::new(tx));
        rx
    }

    /// Every state reported for `task`, in order, with the session it came on.
    fn reported(&self, task: &str) -> Vec<(String, TaskState)> {
        let calls = self.updates.lock().unwrap();
        calls
            .iter()
            .flat_map(|c| c.updates.iter().map(move |u| (c.session_id.clone(), u)))
            .filter(|(_, u)| u.task_id == task)
            .map(|(s, u)| (s, u.status.as_ref().unwrap().state()))
            .collect()
    }

    fn lines(&self) -> Vec<String> {
        let published = self.published.lock().unwrap();
        published
            .iter()
            .flat_map(|(_, m)| m.messages.iter())
            .map(|l| String::from_utf8_lossy(&l.data).into_owned())
            .collect()
    }
}

#[tonic::async_trait]
impl Dispatcher for FakeDispatcher {
    type SessionStream = ReceiverStream<Result<SessionMessage, Status>>;
    type AssignmentsStream = ReceiverStream<Result<AssignmentsMessage, Status>>;
    type ListenSubscriptionsStream = ReceiverStream<Result<LogSubscription, Status>>;

    async fn session(
        &self,
        _: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn assignments(
        &self,
        _: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let next = self.assignments.lock().unwrap().pop();
        Ok(Response::new(ReceiverStream::new(next.unwrap_or_else(|| self.idle()))))
    }

    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let failing = self.fail_updates.load(Ordering::SeqCst);
        if failing > 0 {
            self.fail_updates.store(failing - 1, Ordering::SeqCst);
            return Err(Status::unavailable("the leader is gone"));
        }
        self.updates.lock().unwrap().push(req.into_inner());
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }

    async fn listen_subscriptions(
        &self,
        _: Request<ListenSubscriptionsRequest>,
    ) -> Result<Response<Self::ListenSubscriptionsStream>, Status> {
        let next = self.subscriptions.lock().unwrap().pop();
        Ok(Response::new(ReceiverStream::new(next.unwrap_or_else(|| self.idle()))))
    }

    async fn publish_logs(
        &self,
        req: Request<tonic::Streaming<PublishLogsMessage>>,
    ) -> Result<Response<PublishLogsResponse>, Status> {
        let call = self.publish_calls.fetch_add(1, Ordering::SeqCst) as u32;
        let mut stream = req.into_inner();
        while let Some(m) = stream.message().await? {
            self.published.lock().unwrap().push((call, m));
        }
        Ok(Response::new(PublishLogsResponse {}))
    }
}

/// Serves `d` on a loopback port; returns a link to it for session `session`.
async fn link_to(d: Arc<FakeDispatcher>, session: &str) -> Link {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(DispatcherServer::from_arc(d))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Link {
        client: shoal_proto::dispatcher_client::DispatcherClient::new(channel),
        session_id: session.into(),
        manager: addr.to_string(),
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: still not true after 10s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn reports_travel_in_batches_of_at_most_100() {
    let d = Arc::new(FakeDispatcher::default());
    let assignments = d.feed_assignments();
    let link = link_to(d.clone(), "s1").await;
    let worker = Worker::new(Arc::new(FakeExecutor::new("n1")));
    let w = worker.clone();
    tokio::spawn(async move { serve(&w, link).await });

    let tasks = (0..250).map(|i| new_test_task(&format!("t{i}"), "web:1", TaskState::Running));
    assignments.send(Ok(complete(tasks.collect()))).await.unwrap();
    eventually("every task reported running", || {
        (0..250)
            .all(|i| d.reported(&format!("t{i}")).last().map(|r| r.1) == Some(TaskState::Running))
    })
    .await;
    let calls = d.updates.lock().unwrap();
    assert!(calls.iter().all(|c| c.updates.len() <= REPORT_BATCH && c.session_id == "s1"));
    let total: usize = calls.iter().map(|c| c.updates.len()).sum();
    // 250 tasks × 5 states, collapsed to the latest per task within each batch.
    assert!(calls.len() <= 25, "{} calls for {total} updates", calls.len());
}

#[tokio::test]
async fn an_unsent_report_goes_out_on_the_next_session() {
    let d = Arc::new(FakeDispatcher::default());
    d.fail_updates.store(1, Ordering::SeqCst);
    let assignments = d.feed_assignments();
    let worker = Worker::new(Arc::new(FakeExecutor::new("n1")));
    let first = link_to(d.clone(), "s1").await;
    let feed =
        assignments.send(Ok(complete(vec![new_test_task("a", "web:1", TaskState::Running)])));
    let (ended, _) = tokio::join!(serve(&worker, first), feed);
    assert!(ended.unwrap_err().contains("the leader is gone"));
    assert!(d.reported("a").is_empty());

    let second = link_to(d.clone(), "s2").await;
    let w = worker.clone();
    tokio::spawn(async move { serve(&w, second).await });
    eventually("the state reported on the new session", || {
        d.reported("a").last() == Some(&("s2".to_string(), TaskState::Running))
    })
    .await;
}

#[tokio::test]
async fn logs_are_published_then_followed_until_closed() {
    let dir = tempfile::tempdir().unwrap();
    let d = Arc::new(FakeDispatcher::default());
    let assignments = d.feed_assignments();
    let subs = d.feed_subscriptions();
    let link = link_to(d.clone(), "s1").await;
    let fake = Arc::new(FakeExecutor::new("n1").with_logs(dir.path()));
    let worker = Worker::new(fake);
    let w = worker.clone();
    tokio::spawn(async move { serve(&w, link).await });
    assignments
        .send(Ok(complete(vec![new_test_task("a", "web:1", TaskState::Running)])))
        .await
        .unwrap();
    eventually("running", || d.reported("a").last().map(|r| r.1) == Some(TaskState::Running)).await;

    let once =
        LogSubscription { id: "once".into(), task_ids: vec!["a".into()], ..Default::default() };
    subs.send(Ok(once)).await.unwrap();
    eventually("the existing line, then the end marker", || {
        let p = d.published.lock().unwrap();
        p.iter().any(|(_, m)| m.subscription_id == "once" && m.messages.is_empty())
    })
    .await;
    assert_eq!(d.lines(), vec!["task a running on n1 (fake)"]);

    let follow = LogSubscription {
        id: "follow".into(),
        task_ids: vec!["a".into()],
        follow: true,
        tail: 1,
        close: false,
    };
    subs.send(Ok(follow)).await.unwrap();
    eventually("the tail", || d.lines().len() == 2).await;
    std::fs::write(dir.path().join("a/stderr.log"), "late trouble\n").unwrap();
    eventually("a new line", || d.lines().len() == 3).await;
    let last = d.published.lock().unwrap().last().unwrap().1.messages[0].clone();
    assert_eq!(
        (last.stream, last.data.as_slice(), last.task_id.as_str()),
        (2, &b"late trouble"[..], "a")
    );
    let close = LogSubscription { id: "follow".into(), close: true, ..Default::default() };
    subs.send(Ok(close)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(dir.path().join("a/stderr.log"), "late trouble\nafter close\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.lines().len(), 3, "nothing after close");
}
