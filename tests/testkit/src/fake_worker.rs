//! A fake node that speaks the real protocol: it joins with a join token through the real join
//! code (pinned CA fetch, CSR, `IssueNodeCertificate`), or takes a real node's saved certificate,
//! then calls the managers over real mTLS — saying whatever it likes about itself, and running
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use shoal_agent::{JoinError, JoinParams};
use shoal_pki::ReloadableCert;
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::node_ca_client::NodeCaClient;
use shoal_proto::{
    AssignmentsMessage, AssignmentsRequest, HeartbeatRequest, Node, SessionRequest,
    UpdateTaskStatusRequest,
};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::cluster::TestNode;

/// A node identity obtained with a join token (or a real node's), used by hand.
#[derive(Debug)]
pub struct FakeWorker {
    pub node_id: String,
    manager: String,
    tls: Arc<rustls::ClientConfig>,
}

/// An open session: its ID and the Node object the manager sent first.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub node: Node,
    _stream: Streaming<shoal_proto::SessionMessage>,
    beats: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.beats.abort();
    }
}

impl FakeWorker {
    /// Joins the cluster of the manager at `manager` claiming `hostname` and `advertise_addr`.
    pub async fn join(
        manager: &str,
        token: &str,
        hostname: &str,
        advertise_addr: &str,
    ) -> Result<FakeWorker, JoinError> {
        let params = JoinParams {
            token: token.into(),
            remote_addr: manager.into(),
            hostname: hostname.into(),
            advertise_addr: advertise_addr.into(),
        };
        let joined = shoal_agent::join(&params).await?;
        let cert = ReloadableCert::new(&joined.cert_chain_pem, &joined.key)?;
        let tls = shoal_pki::tls::client_config(&joined.root_ca_pem, Some(cert))?;
        Ok(FakeWorker { node_id: joined.node_id, manager: manager.into(), tls: Arc::new(tls) })
    }

    /// Takes the certificate a real node saved in its data root.
    pub fn of(node: &TestNode, node_id: &str, manager: &str) -> FakeWorker {
        let files = shoal_agent::NodeFiles::new(&node.root);
        let (key, chain, root) = files.load_identity().unwrap();
        let cert = ReloadableCert::new(&chain, &key).unwrap();
        let tls = shoal_pki::tls::client_config(&root, Some(cert)).unwrap();
        FakeWorker { node_id: node_id.into(), manager: manager.into(), tls: Arc::new(tls) }
    }

    /// An mTLS channel to its manager presenting this node's certificate.
    pub async fn channel(&self) -> Channel {
        self.connect().await.unwrap()
    }

    /// Like [`FakeWorker::channel`], with the failure as an error.
    pub async fn connect(&self) -> Result<Channel, String> {
        shoal_proto::dial::connect(&self.manager, self.tls.clone()).await.map_err(|e| e.to_string())
    }

    pub async fn dispatcher(&self) -> DispatcherClient<Channel> {
        DispatcherClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    pub async fn node_ca(&self) -> NodeCaClient<Channel> {
        NodeCaClient::new(self.channel().await)
    }

    /// Opens a session saying `req`, and keeps it alive with heartbeats.
    pub async fn session(&self, req: SessionRequest) -> Result<Session, Status> {
        let mut client = self.dispatcher().await;
        let mut stream = client.session(req).await?.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::aborted("session closed"))?;
        let id = first.session_id.clone();
        let beat_id = id.clone();
        let beats = tokio::spawn(async move {
            loop {
                let req = HeartbeatRequest { session_id: beat_id.clone(), ..Default::default() };
                let period = match client.heartbeat(req).await {
                    Ok(r) => Duration::from_millis(r.into_inner().period_ms),
                    Err(_) => Duration::from_millis(50),
                };
                tokio::time::sleep(period / 2).await;
            }
        });
        Ok(Session { id, node: first.node.unwrap_or_default(), _stream: stream, beats })
    }

    /// The node's assignments stream.
    pub async fn assignments(&self, session: &Session) -> Streaming<AssignmentsMessage> {
        let req = AssignmentsRequest { session_id: session.id.clone() };
        self.dispatcher().await.assignments(req).await.unwrap().into_inner()
    }

    /// Reports task states.
    pub async fn report(&self, req: UpdateTaskStatusRequest) -> Result<(), Status> {
        self.dispatcher().await.update_task_status(req).await.map(drop)
    }
}
