//! In-process clusters: several Shoal daemons in one test, each with its own data root, unix
//! socket and loopback port, talking real gRPC over real mTLS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal::cli::client::{self, Host, TlsFiles};
use shoal::node::daemon::{Daemon, DaemonConfig, InitOptions, JoinOptions};
use shoal_proto::control_client::ControlClient;
use shoal_proto::{
    GetJoinTokenRequest, ListNodesRequest, ListTasksRequest, Node, NodeRole, NodeState, Task,
    TaskState,
};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::poll::eventually;

/// One node of an in-process cluster.
#[derive(Debug)]
pub struct TestNode {
    pub name: String,
    pub daemon: Arc<Daemon>,
    pub root: PathBuf,
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    _dir: Option<tempfile::TempDir>,
}

/// Renewal waits are divided by this in harness nodes (a 1 h certificate renews in ~1–2 s).
pub const TIME_SCALE: f64 = 2000.0;

impl TestNode {
    /// Starts a daemon (not yet in a swarm) in a fresh temp dir.
    pub async fn start(name: &str) -> TestNode {
        shoal_pki::install_crypto_provider();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let mut node = TestNode::start_at(name, root, dir.path().join("shoal.sock")).await;
        node._dir = Some(dir);
        node
    }

    /// Starts a daemon on an existing data root (a restart).
    pub async fn start_at(name: &str, root: PathBuf, socket: PathBuf) -> TestNode {
        TestNode::start_scaled(name, root, socket, TIME_SCALE).await
    }

    /// Starts a daemon on `root` whose waits are divided by `time_scale`.
    async fn start_scaled(name: &str, root: PathBuf, socket: PathBuf, time_scale: f64) -> TestNode {
        let cfg = DaemonConfig {
            data_root: root.clone(),
            hostname: name.into(),
            time_scale,
            election_timeout: shoal_manager::manager::DEFAULT_ELECTION_TIMEOUT,
            // The fake executor, unless SHOAL_TEST_EXECUTOR=runc.
            executor: shoal_agent::ExecutorChoice::for_tests(),
            addrs: Default::default(),
            registry: shoal_registry::Client::new(Default::default()).unwrap(),
        };
        let _ = std::fs::remove_file(&socket);
        let daemon = Daemon::start(cfg).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (d, s) = (daemon.clone(), socket.clone());
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            shoal::node::local_api::serve(d, &s, shutdown).await.unwrap();
        });
        eventually("local socket up", Duration::from_secs(5), || {
            let s = socket.clone();
            async move { tokio::net::UnixStream::connect(&s).await.map(drop).map_err(|e| e.to_string()) }
        })
        .await;
        TestNode { name: name.into(), daemon, root, socket, stop: Some(stop), _dir: None }
    }

    /// Stops the daemon like a crash: no leave, state stays on disk. Returns the temp dir
    /// holder so the data survives for a restart.
    pub async fn kill(mut self) -> (PathBuf, PathBuf, Option<tempfile::TempDir>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.daemon.stop().await;
        (self.root.clone(), self.socket.clone(), self._dir.take())
    }

    /// `swarm init` on loopback with a chosen heartbeat and cert expiry; returns the address.
    pub async fn init(&self, heartbeat: Duration, cert_expiry: Option<Duration>) -> String {
        let opts = InitOptions {
            listen_addr: "127.0.0.1:0".into(),
            heartbeat: Some(heartbeat),
            cert_expiry,
            ..Default::default()
        };
        self.daemon.init(opts).await.unwrap();
        self.daemon.info().await.state.unwrap().advertise_addr
    }

    /// `swarm join` with a token; returns the error text on failure.
    pub async fn join(&self, token: &str, addr: &str) -> Result<String, String> {
        let opts = JoinOptions {
            token: token.into(),
            remote_addr: addr.into(),
            listen_addr: "127.0.0.1:0".into(),
            advertise_addr: "127.0.0.1".into(),
        };
        match self.daemon.join(opts).await {
            Ok(state) => Ok(state.node_id),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// The node's ID, once it is in a swarm.
    pub async fn id(&self) -> String {
        self.daemon.info().await.state.expect("node is in a swarm").node_id
    }

    /// A control client over the local unix socket (real gRPC).
    pub async fn control(&self) -> ControlClient<Channel> {
        let channel =
            client::connect(&Host::Unix(self.socket.clone()), &TlsFiles::default()).await.unwrap();
        ControlClient::new(channel)
    }

    /// A control client over TCP mTLS presenting this node's own certificate to `addr`.
    pub async fn control_over_tcp_as_self(
        &self,
        addr: &str,
    ) -> Result<ControlClient<Channel>, String> {
        // node.pem holds the key and its chain in one atomically written file; node.crt is
        // written after it, so a renewal in between would pair a new key with an old chain.
        let certs = self.root.join("certificates");
        let files = TlsFiles {
            ca: Some(certs.join("root-ca.crt")),
            cert: Some(certs.join("node.pem")),
            key: Some(certs.join("node.pem")),
        };
        client::connect(&Host::Tcp(addr.into()), &files)
            .await
            .map(ControlClient::new)
            .map_err(|e| format!("{e:#}"))
    }

    /// Every node the manager knows.
    pub async fn nodes(&self) -> Vec<Node> {
        self.control().await.list_nodes(ListNodesRequest {}).await.unwrap().into_inner().nodes
    }

    /// The state of one node, as this manager sees it.
    pub async fn state_of(&self, id: &str) -> Option<NodeState> {
        self.nodes().await.into_iter().find(|n| n.id == id).map(|n| n.state())
    }

    /// The tasks of `service` that run and are meant to, per node hostname.
    pub async fn running(&self, service: &str) -> HashMap<String, Vec<Task>> {
        let req = ListTasksRequest { service: service.into(), ..Default::default() };
        let list = self.control().await.list_tasks(req).await.unwrap().into_inner();
        let mut out: HashMap<String, Vec<Task>> = HashMap::new();
        for t in list.tasks {
            if t.state() == TaskState::Running && t.desired_state == TaskState::Running as i32 {
                out.entry(list.node_names[&t.node_id].clone()).or_default().push(t);
            }
        }
        out
    }

    /// Waits until exactly `want` tasks of `service` run (see [`TestNode::running`]); returns
    /// them per node hostname.
    pub async fn wait_running(
        &self,
        service: &str,
        want: usize,
        within: Duration,
    ) -> HashMap<String, Vec<Task>> {
        eventually(&format!("{want} tasks of {service} running"), within, || async {
            let r = self.running(service).await;
            let n: usize = r.values().map(Vec::len).sum();
            (n == want).then_some(()).ok_or(format!("{n} running"))
        })
        .await;
        self.running(service).await
    }
}

/// The join token of `manager` for `role`.
pub async fn token(manager: &TestNode, role: NodeRole) -> String {
    let req = GetJoinTokenRequest { role: role as i32 };
    manager.control().await.get_join_token(req).await.unwrap().into_inner().token
}

/// The worker join token of `manager`.
pub async fn worker_token(manager: &TestNode) -> String {
    token(manager, NodeRole::Worker).await
}

/// The node `id` as `manager` has it.
pub async fn node(manager: &TestNode, id: &str) -> Node {
    manager.nodes().await.into_iter().find(|n| n.id == id).expect("node is listed")
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestNode {
    /// Like [`TestNode::start`], with its own time scale (1.0: renewals at the real pace).
    pub async fn start_with_time_scale(name: &str, time_scale: f64) -> TestNode {
        shoal_pki::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (root, socket) = (dir.path().join("data"), dir.path().join("shoal.sock"));
        let mut node = TestNode::start_scaled(name, root, socket, time_scale).await;
        node._dir = Some(dir);
        node
    }
}

/// Three managers on loopback (the first initialised with `heartbeat`, two joined with the
/// manager token), in that order.
pub async fn three_managers(heartbeat: Duration) -> Vec<TestNode> {
    let m1 = TestNode::start("m1").await;
    let addr = m1.init(heartbeat, None).await;
    let manager_token = token(&m1, NodeRole::Manager).await;
    let (m2, m3) = (TestNode::start("m2").await, TestNode::start("m3").await);
    m2.join(&manager_token, &addr).await.unwrap();
    m3.join(&manager_token, &addr).await.unwrap();
    vec![m1, m2, m3]
}
