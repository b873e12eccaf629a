//! A fake dispatcher for the worker's tests, served over real gRPC on loopback: it hands out
//! the assignment and subscription streams a test feeds and records what the agent sends.
//! Shared by the worker's module tests (through `#[path]`) and the integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::dispatcher_server::{Dispatcher, DispatcherServer};
use shoal_proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub type Tx<T> = mpsc::Sender<Result<T, Status>>;

/// A dispatcher that hands out the streams a test feeds and records what the agent sends.
#[derive(Default)]
pub struct FakeDispatcher {
    pub assignments: Mutex<Vec<mpsc::Receiver<Result<AssignmentsMessage, Status>>>>,
    pub subscriptions: Mutex<Vec<mpsc::Receiver<Result<LogSubscription, Status>>>>,
    /// Streams handed out with nothing to say, kept open.
    pub idle: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
    pub updates: Mutex<Vec<UpdateTaskStatusRequest>>,
    pub fail_updates: AtomicUsize,
    pub published: Mutex<Vec<(u32, PublishLogsMessage)>>,
    pub publish_calls: AtomicUsize,
}

impl FakeDispatcher {
    pub fn feed_assignments(&self) -> Tx<AssignmentsMessage> {
        let (tx, rx) = mpsc::channel(16);
        self.assignments.lock().unwrap().push(rx);
        tx
    }

    pub fn feed_subscriptions(&self) -> Tx<LogSubscription> {
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
    pub fn reported(&self, task: &str) -> Vec<(String, TaskState)> {
        let calls = self.updates.lock().unwrap();
        calls
            .iter()
            .flat_map(|c| c.updates.iter().map(move |u| (c.session_id.clone(), u)))
            .filter(|(_, u)| u.task_id == task)
            .map(|(s, u)| (s, u.status.as_ref().unwrap().state()))
            .collect()
    }

    pub fn lines(&self) -> Vec<String> {
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

/// Serves `d` on a loopback port; returns a client of it and its address.
pub async fn serve_fake(d: Arc<FakeDispatcher>) -> (DispatcherClient<Channel>, String) {
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
    (DispatcherClient::new(channel), addr.to_string())
}
