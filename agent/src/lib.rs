//! Shoal's agent: joins a cluster, keeps a dispatcher session with the managers, runs the tasks
//! they assign (the worker, through an `Executor`), and renews its certificate. Runs no
//! manager code.

pub mod connect;
pub mod cosign;
pub mod files;
pub mod image;
pub mod join;
pub mod net;
pub mod renew;
pub mod runtime;
pub mod scan;
pub mod session;
pub mod volume;
pub mod worker;

use std::sync::Arc;

use shoal_pki::{ManagerTrust, ReloadableCert, TrustRoots};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use files::{NodeFiles, NodeState};
pub use join::{join, JoinError, JoinParams, Joined};
#[cfg(any(test, feature = "test-util"))]
pub use worker::FakeExecutor;
pub use worker::{Executor, ExecutorChoice, Worker};

/// What the agent currently knows about its link to the control plane.
#[derive(Clone, Debug, Default)]
pub struct AgentStatus {
    pub connected: bool,
    pub manager: Option<String>,
    pub manager_addrs: Vec<String>,
    /// Node IDs of the managers, as last told (see [`files::NodeState::manager_ids`]).
    pub manager_ids: Vec<String>,
    pub error: Option<String>,
    pub renewals: u64,
    /// The role the managers say this node has, from the session.
    pub role: Option<shoal_pki::Role>,
}

/// How to run an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub hostname: String,
    pub advertise_addr: String,
    pub time_scale: f64,
    /// Runs the node's tasks (see [`ExecutorChoice`] for building one per daemon).
    pub executor: Arc<dyn Executor>,
}

/// A running agent; its tasks stop when it is dropped.
#[derive(Debug)]
pub struct Agent {
    status: watch::Receiver<AgentStatus>,
    tasks: Vec<JoinHandle<()>>,
    renew_now: Arc<tokio::sync::Notify>,
    worker: Worker,
}

impl Agent {
    /// Starts the session (with the worker) and renewal loops for the node whose identity is
    /// in `files`, reaching the managers at `manager_addrs` and accepting only the nodes
    /// `manager_ids` as managers (any manager of the cluster while it is empty).
    pub fn start(
        cfg: AgentConfig,
        files: NodeFiles,
        cert: Arc<ReloadableCert>,
        root_ca_pem: String,
        manager_addrs: Vec<String>,
        manager_ids: Vec<String>,
    ) -> Result<Agent, shoal_pki::PkiError> {
        let trust = ManagerTrust::with_revocations(Arc::default());
        trust.set_managers(manager_ids.clone());
        let roots = TrustRoots::new(&root_ca_pem)?;
        let tls = Arc::new(shoal_pki::tls::manager_client_config(
            roots.clone(),
            Some(cert.clone()),
            trust.clone(),
        ));
        let initial = AgentStatus { manager_addrs, manager_ids, ..Default::default() };
        let (tx, rx) = watch::channel(initial);
        let node = cert.identity().node_id;
        let worker = Worker::with_span(cfg.executor, tracing::info_span!("worker", node = %node));
        let renew_now = Arc::new(tokio::sync::Notify::new());
        let beat_now = Arc::new(tokio::sync::Notify::new());
        let session_cfg = session::SessionConfig {
            hostname: cfg.hostname,
            advertise_addr: cfg.advertise_addr,
            worker: worker.clone(),
            trust,
            roots: roots.clone(),
            files: files.clone(),
            renew_now: renew_now.clone(),
            beat_now: beat_now.clone(),
        };
        let renew_cfg = renew::RenewConfig {
            files,
            roots,
            time_scale: cfg.time_scale,
            now: renew_now.clone(),
            renewed: beat_now,
        };
        let session = session::run(session_cfg, cert.clone(), tls.clone(), tx.clone());
        let renew = renew::run(renew_cfg, cert, tls, tx);
        let tasks = vec![
            tokio::spawn(session.instrument(tracing::info_span!("session", node = %node))),
            tokio::spawn(renew.instrument(tracing::info_span!("renew", node = %node))),
        ];
        Ok(Agent { status: rx, tasks, renew_now, worker })
    }

    /// The agent's current status.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// Renews the certificate now (after a role change, to get the new role's certificate).
    pub fn renew_now(&self) {
        self.renew_now.notify_one();
    }

    /// The worker running this node's tasks.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Stops and removes every task and container of this node (before leaving the swarm:
    /// dropping the agent leaves them running for the next agent to re-attach).
    pub async fn remove_tasks(&self) {
        self.worker.remove_all().await;
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Containers keep running; the next agent on this node re-attaches them.
        self.worker.shutdown();
    }
}
