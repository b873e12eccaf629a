//! Bare managers in this process, on loopback: `swarm init` on the first, manager-token joins
//! for the others, each serving its cluster port as the daemon does. No daemon and no agent
//! around them: what the benchmarks measure is the managers alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_agent::JoinParams;
use shoal_manager::server::Serving;
use shoal_manager::{Identity, InitParams, Manager};
use shoal_pki::{NodeKey, ReloadableCert, Role};
use shoal_proto::control_client::ControlClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// What a member runs beside its Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// `Manager::serve`: the cluster port with the monitor, node updates and orchestrator.
    Full,
    /// The cluster port alone (Raft, CA, dispatcher, control): no loop reacts to the store.
    PortOnly,
}

/// How a member's port is served, until it is killed.
#[derive(Debug)]
enum Port {
    Full(Serving),
    Only { stop: oneshot::Sender<()>, server: JoinHandle<()> },
}

/// One manager and its cluster port.
#[derive(Debug)]
pub struct Member {
    pub manager: Manager,
    pub addr: String,
    port: Option<Port>,
    _dir: tempfile::TempDir,
}

impl Member {
    fn serve(
        manager: Manager,
        listener: TcpListener,
        cert: Arc<ReloadableCert>,
        how: Serve,
    ) -> Port {
        if how == Serve::Full {
            return Port::Full(manager.serve(listener, cert));
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = manager.serve_tls(listener, cert, shutdown).await {
                tracing::error!(error = %e, "test manager stopped serving");
            }
        });
        Port::Only { stop, server }
    }

    /// Whether it still runs (see [`Member::kill`]).
    pub fn live(&self) -> bool {
        self.port.is_some()
    }

    /// Stops the manager and its port at once, with no draining (a crash, as far as the others
    /// can tell).
    pub fn kill(&mut self) {
        match self.port.take() {
            Some(Port::Full(serving)) => drop(serving),
            Some(Port::Only { stop, server }) => {
                let _ = stop.send(());
                self.manager.stop();
                server.abort();
            }
            None => {}
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The managers of one cluster.
#[derive(Debug)]
pub struct Managers {
    pub members: Vec<Member>,
    /// The first manager's identity, usable as a Control API client's certificate.
    pub admin: Identity,
    pub worker_token: String,
}

impl Managers {
    /// Starts `count` managers named `<name>-manager-<i>` (data in temp dirs `shoal-<name>-*`)
    /// and waits up to `within` until they form one Raft group with a leader.
    pub async fn start(count: usize, name: &str, how: Serve, within: Duration) -> Result<Managers> {
        let prefix = format!("shoal-{name}-");
        let (m, admin) = init_manager(&prefix, &format!("{name}-manager-0")).await?;
        let first = m.addr.clone();
        let manager_token = m.manager.join_token(Role::Manager)?;
        let worker_token = m.manager.join_token(Role::Worker)?;
        let port = Member::serve(m.manager.clone(), m.listener, m.cert, how);
        let member =
            Member { manager: m.manager, addr: first.clone(), port: Some(port), _dir: m.dir };
        let mut managers = Managers { members: vec![member], admin, worker_token };
        for i in 1..count {
            let hostname = format!("{name}-manager-{i}");
            let m = join_manager(&prefix, &hostname, &manager_token, &first).await?;
            let port = Member::serve(m.manager.clone(), m.listener, m.cert, how);
            let addr = m.addr.clone();
            managers.members.push(Member {
                manager: m.manager.clone(),
                addr,
                port: Some(port),
                _dir: m.dir,
            });
            m.manager.join_raft(&first, &m.addr).await.context("joining the raft group")?;
        }
        let deadline = Instant::now() + within;
        loop {
            let leader = managers.leader();
            let voters = leader.map(|l| managers.members[l].manager.raft().status().voters.len());
            if voters == Some(count) {
                return Ok(managers);
            }
            if Instant::now() > deadline {
                bail!("the managers did not form a {count}-voter group within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The live member that is leader, if one is.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| m.live() && m.manager.raft().status().is_leader)
    }

    /// Waits up to `within` for a live leader.
    pub async fn wait_leader(&self, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.leader() {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no manager became leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The cluster address of the leader.
    pub fn leader_addr(&self) -> Result<String> {
        let leader = self.leader().context("no manager is leader")?;
        Ok(self.members[leader].addr.clone())
    }

    /// A Control API client on the leader, with the first manager's certificate.
    pub async fn control(&self) -> Result<ControlClient<Channel>> {
        let config =
            shoal_pki::tls::client_config(&self.admin.root_ca_pem, Some(self.admin.cert.clone()))?;
        let channel = shoal_proto::dial::connect(&self.leader_addr()?, Arc::new(config))
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(ControlClient::new(channel))
    }
}

/// A manager before it serves: its store directory, its listener and address.
struct Unserved {
    dir: tempfile::TempDir,
    listener: TcpListener,
    addr: String,
    manager: Manager,
    cert: Arc<ReloadableCert>,
}

/// `swarm init` of a first manager on loopback; returns its identity too.
async fn init_manager(prefix: &str, hostname: &str) -> Result<(Unserved, Identity)> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let key = NodeKey::generate()?;
    let params = InitParams {
        hostname: hostname.into(),
        advertise_addr: addr.clone(),
        cert_expiry: shoal_pki::DEFAULT_CERT_EXPIRY,
        heartbeat: shoal_manager::manager::DEFAULT_HEARTBEAT,
        autolock: false,
        election_timeout: shoal_manager::manager::DEFAULT_ELECTION_TIMEOUT,
        default_addr_pool: Vec::new(),
        subnet_size: 0,
        data_path_port: 0,
    };
    let (manager, id, _) = Manager::init(&dir.path().join("store"), params, &key).await?;
    let cert = id.cert.clone();
    Ok((Unserved { dir, listener, addr, manager, cert }, id))
}

/// A manager that joined `first` with the manager `token`, ready to serve and then to join the
/// Raft group (`Manager::join_raft`) once it answers.
async fn join_manager(prefix: &str, hostname: &str, token: &str, first: &str) -> Result<Unserved> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let params = JoinParams {
        token: token.to_string(),
        remote_addr: first.to_string(),
        hostname: hostname.to_string(),
        advertise_addr: addr.clone(),
    };
    let joined = shoal_agent::join(&params).await.context("manager join")?;
    anyhow::ensure!(joined.role == Role::Manager, "the manager token made a worker");
    let cert = ReloadableCert::new(&joined.cert_chain_pem, &joined.key)?;
    let id = Identity {
        node_id: joined.node_id,
        cluster_id: joined.cluster_id,
        root_ca_pem: joined.root_ca_pem,
        cert: cert.clone(),
        election_timeout: shoal_manager::manager::DEFAULT_ELECTION_TIMEOUT,
    };
    let manager = Manager::prepare_join(&dir.path().join("store"), &id)?;
    Ok(Unserved { dir, listener, addr, manager, cert })
}
