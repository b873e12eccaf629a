//! Owns one node process: its membership (none, worker, manager), the manager and agent it runs,
//! the cluster TCP port, and the transitions init / join / leave / restart between them (a
//! restart may move the node to new addresses: see `readdress`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_agent::{Agent, AgentConfig, AgentStatus, NodeFiles, NodeState};
use shoal_manager::server::AbortOnDrop;
use shoal_manager::{Identity, Manager};
use shoal_pki::{PeerIdentity, ReloadableCert};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::node::readdress::{self, AddrOverrides, Announcer};

mod addr;
mod membership;
mod reattest;
mod role;

use addr::bind_resumed;
pub use addr::{advertise_addr, normalize_listen};
use role::follow_role;

/// Default cluster port.
pub const DEFAULT_PORT: u16 = 4242;

/// How to run a node.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub data_root: PathBuf,
    pub hostname: String,
    /// Divides certificate renewal waits (tests only).
    pub time_scale: f64,
    /// How long a manager waits without a leader before calling an election.
    pub election_timeout: Duration,
    /// What runs the node's tasks (built once, shared by every agent this daemon starts).
    pub executor: shoal_agent::ExecutorChoice,
    /// Addresses that replace the saved ones when the node resumes its membership.
    pub addrs: AddrOverrides,
    /// How this node reaches registries (certs.d, insecure registries): for `shoal image
    /// pull|push`, `login`, and a manager's pinning of service images.
    pub registry: shoal_registry::Client,
}

/// What `swarm init` asks for.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub listen_addr: String,
    pub advertise_addr: String,
    pub cert_expiry: Option<Duration>,
    pub heartbeat: Option<Duration>,
    pub force_new_cluster: bool,
    pub autolock: bool,
    /// `--default-addr-pool` CIDRs and `--default-addr-pool-mask-length`.
    pub default_addr_pool: Vec<String>,
    pub subnet_size: u32,
    /// `--data-path-port`: the overlay data plane's UDP port (0: 4789).
    pub data_path_port: u32,
}

/// What `swarm join` asks for.
#[derive(Clone, Default)]
pub struct JoinOptions {
    pub token: String,
    pub remote_addr: String,
    pub listen_addr: String,
    pub advertise_addr: String,
}

/// The join token never reaches logs or `Debug` output.
impl std::fmt::Debug for JoinOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinOptions")
            .field("token", &"<redacted>")
            .field("remote_addr", &self.remote_addr)
            .field("listen_addr", &self.listen_addr)
            .field("advertise_addr", &self.advertise_addr)
            .finish()
    }
}

/// A node that is part of a cluster.
#[derive(Debug)]
struct Member {
    /// What the node runs with (its addresses may be newer than the saved ones).
    state: NodeState,
    cert: Arc<ReloadableCert>,
    agent: Agent,
    manager: Option<Serving>,
    /// Telling the other managers this manager's new address, until they accept it.
    announcer: Option<Announcer>,
}

impl Member {
    async fn shutdown(self) {
        drop(self.agent);
        if let Some(serving) = self.manager {
            serving.shutdown().await;
        }
    }
}

#[derive(Debug)]
struct Serving {
    manager: Manager,
    serving: shoal_manager::server::Serving,
    /// Passes on a failure of the Raft member (see [`Daemon::manager_failed`]).
    failure: AbortOnDrop<()>,
}

impl Serving {
    /// Stops serving: no new connections, sessions closed, in-flight calls given a moment.
    async fn shutdown(self) {
        drop(self.failure);
        self.serving.shutdown().await;
    }
}

/// The node daemon.
#[derive(Debug)]
pub struct Daemon {
    me: Weak<Daemon>,
    cfg: DaemonConfig,
    files: NodeFiles,
    member: Mutex<Option<Member>>,
    /// A manager that restarted with autolock on waits here for its unlock key, serving nothing.
    locked: Mutex<Option<NodeState>>,
    /// Why the Raft member of this node's manager failed, once it has.
    failure: watch::Sender<Option<String>>,
    /// A node back with an expired certificate, asking the managers for a new one: its saved
    /// membership and what the managers last said.
    reattesting: std::sync::Mutex<Option<(NodeState, String)>>,
}

/// A snapshot for `shoal info`.
#[derive(Clone, Debug, Default)]
pub struct Info {
    pub state: Option<NodeState>,
    pub identity: Option<PeerIdentity>,
    pub agent: AgentStatus,
    pub manager: Option<Manager>,
    /// Waiting for `swarm unlock`.
    pub locked: bool,
    /// A manager's new address the other managers have not accepted yet, and why.
    pub addr_pending: Option<String>,
}

const ALREADY: &str =
    "this node is already part of a swarm; use 'shoal swarm leave' to leave it first";

/// What a locked manager answers, and how to open it.
pub const LOCKED: &str =
    "this manager is locked: run 'shoal swarm unlock' and give it the swarm's unlock key";

impl Daemon {
    /// Opens the data root and resumes membership if the node was part of a cluster.
    pub async fn start(cfg: DaemonConfig) -> Result<Arc<Daemon>> {
        let files = NodeFiles::new(&cfg.data_root);
        cfg.executor
            .prepare_data_root(&cfg.data_root)
            .with_context(|| format!("creating data root {}", cfg.data_root.display()))?;
        let daemon = Arc::new_cyclic(|me| Daemon {
            me: me.clone(),
            cfg,
            files,
            member: Mutex::new(None),
            locked: Mutex::new(None),
            failure: watch::Sender::new(None),
            reattesting: std::sync::Mutex::new(None),
        });
        tokio::spawn(follow_role(Arc::downgrade(&daemon)));
        let state = daemon.files.load_state()?;
        let addrs = &daemon.cfg.addrs;
        if state.is_none() && (addrs.listen_addr.is_some() || addrs.advertise_addr.is_some()) {
            tracing::warn!(
                "--listen-addr and --advertise-addr are ignored: this node is not part of a \
                 swarm (give them to 'shoal swarm init' or 'shoal swarm join')"
            );
        }
        if let Some(state) = state {
            if state.runs_manager && Manager::is_locked(&daemon.files.store_dir()) {
                tracing::warn!("{LOCKED}");
                *daemon.locked.lock().await = Some(state);
                return Ok(daemon);
            }
            if daemon.certificate_expired() {
                reattest::start(&daemon, state);
                return Ok(daemon);
            }
            let member = daemon.resume(state, None).await.context("resuming cluster membership")?;
            *daemon.member.lock().await = Some(member);
        }
        Ok(daemon)
    }

    /// Whether the saved certificate has expired (the node was off for longer than it lasts).
    fn certificate_expired(&self) -> bool {
        self.files.load_identity().ok().is_some_and(|(key, chain, _)| {
            ReloadableCert::new(&chain, &key)
                .is_ok_and(|c| c.identity().not_after <= std::time::SystemTime::now())
        })
    }

    /// `swarm unlock`: resumes a locked manager with the swarm's unlock key.
    pub async fn unlock(&self, key: &str) -> Result<()> {
        let mut locked = self.locked.lock().await;
        let Some(state) = locked.clone() else {
            bail!("this node is not locked");
        };
        let member = self.resume(state, Some(key)).await?;
        // The manager is in place before `locked` is released: a caller sees one or the other.
        *self.member.lock().await = Some(member);
        *locked = None;
        tracing::info!("manager unlocked");
        Ok(())
    }

    /// The data root.
    /// This node's registry client.
    pub fn registry(&self) -> &shoal_registry::Client {
        &self.cfg.registry
    }

    pub fn files(&self) -> &NodeFiles {
        &self.files
    }

    /// Resumes the membership `saved` on disk, at the addresses given to shoald if any. A
    /// manager whose address changed tells the others in the background and saves the new
    /// address once they accept it; any other change is saved at once.
    async fn resume(&self, saved: NodeState, unlock: Option<&str>) -> Result<Member> {
        let state = readdress::resumed_state(&saved, &self.cfg.addrs)?;
        if let Some(warning) = readdress::foreign_advertise_addr(&state) {
            tracing::warn!("{warning}");
        }
        let (key, chain, root) = self.files.load_identity()?;
        let cert = ReloadableCert::new(&chain, &key)?;
        let (mut manager, mut announcer) = (None, None);
        if state.runs_manager {
            let id = self.identity(&state, cert.clone(), &root);
            let opened = Manager::open(&self.files.store_dir(), &id, unlock)?;
            let listener = bind_resumed(&state.listen_addr).await?;
            if readdress::must_announce(&saved, &state, &opened) {
                announcer = Some(Announcer::start(self.me.clone(), opened.clone(), &state));
            }
            manager = Some(serve(opened, listener, cert.clone(), &self.failure, &self.cfg));
        }
        if announcer.is_none() && state != saved {
            self.files.save_state(&state)?;
        }
        let agent = self.start_agent(&state, cert.clone(), root)?;
        tracing::info!(node = %state.node_id, role = %state.role, "resumed cluster membership");
        Ok(Member { state, cert, agent, manager, announcer })
    }

    /// Saves the addresses of `moved` once the managers accepted them (see [`Announcer`]), if
    /// the node still runs with them.
    pub(crate) async fn addresses_accepted(&self, moved: &NodeState) -> Result<()> {
        let member = self.member.lock().await;
        let Some(m) = member.as_ref().filter(|m| m.state.advertise_addr == moved.advertise_addr)
        else {
            return Ok(());
        };
        let mut saved = self.files.load_state()?.unwrap_or_else(|| m.state.clone());
        saved.listen_addr = moved.listen_addr.clone();
        saved.advertise_addr = moved.advertise_addr.clone();
        if let Some(serving) = &m.manager {
            saved.manager_addrs = serving.manager.manager_addrs().unwrap_or(saved.manager_addrs);
        }
        self.files.save_state(&saved)?;
        Ok(())
    }

    fn start_agent(
        &self,
        state: &NodeState,
        cert: Arc<ReloadableCert>,
        root: String,
    ) -> Result<Agent> {
        let executor = self.cfg.executor.executor(self.files.root(), &self.cfg.hostname)?;
        let cfg = AgentConfig {
            hostname: self.cfg.hostname.clone(),
            advertise_addr: state.advertise_addr.clone(),
            time_scale: self.cfg.time_scale,
            executor,
        };
        let (addrs, ids) = (state.manager_addrs.clone(), state.manager_ids.clone());
        Ok(Agent::start(cfg, self.files.clone(), cert, root, addrs, ids)?)
    }

    /// IDs of the images this node's tasks run (they must not be removed).
    pub async fn images_in_use(&self) -> Vec<String> {
        let member = self.member.lock().await;
        member.as_ref().map(|m| m.agent.worker().executor().images_in_use()).unwrap_or_default()
    }

    /// The node's named volumes: the ones its tasks lease, or (on a node outside a swarm,
    /// running no tasks) the same directories with no leases.
    pub async fn volumes(&self) -> Arc<shoal_agent::volume::Volumes> {
        let member = self.member.lock().await;
        member.as_ref().and_then(|m| m.agent.worker().executor().volumes()).unwrap_or_else(|| {
            Arc::new(shoal_agent::volume::Volumes::open(
                self.files.root().join("runtime").join("volumes"),
            ))
        })
    }

    /// What mandatory access control this node applies to tasks (Landlock, SELinux,
    /// AppArmor), in one line; outside a swarm, what the host offers.
    pub async fn security(&self) -> String {
        let member = self.member.lock().await;
        match member.as_ref().map(|m| m.agent.worker().executor().describe().mac_detail) {
            Some(line) if !line.is_empty() => line,
            _ => shoal_agent::runtime::mac::MacSupport::detect().describe(),
        }
    }

    /// Whether this node is a manager waiting for `swarm unlock`.
    pub async fn is_locked(&self) -> bool {
        self.locked.lock().await.is_some()
    }

    /// The manager this node runs, if any.
    pub async fn manager(&self) -> Option<Manager> {
        let member = self.member.lock().await;
        member.as_ref().and_then(|m| m.manager.as_ref()).map(|s| s.manager.clone())
    }

    /// A snapshot of the node's state.
    pub async fn info(&self) -> Info {
        if let Some(state) = self.locked.lock().await.clone() {
            // The node's certificate lives outside the sealed store: a locked node still shows it.
            let identity = self.files.load_identity().ok().and_then(|(key, chain, _)| {
                ReloadableCert::new(&chain, &key).ok().map(|c| c.identity())
            });
            return Info { state: Some(state), identity, locked: true, ..Default::default() };
        }
        let member = self.member.lock().await;
        match member.as_ref() {
            None => self.reattest_info(),
            Some(m) => Info {
                state: Some(m.state.clone()),
                identity: Some(m.cert.identity()),
                agent: m.agent.status(),
                manager: m.manager.as_ref().map(|s| s.manager.clone()),
                locked: false,
                addr_pending: m.announcer.as_ref().and_then(Announcer::pending),
            },
        }
    }

    /// Waits until the Raft member of a manager this node runs fails (its disk is full or
    /// broken), and returns why. Such a manager serves nothing more until shoald restarts; what
    /// to do then is the binary's choice.
    pub async fn manager_failed(&self) -> String {
        let mut failure = self.failure.subscribe();
        let why = failure.wait_for(Option::is_some).await.map(|why| why.clone());
        match why {
            Ok(why) => why.unwrap_or_default(),
            // `self` holds the sender: it cannot close while we wait.
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops serving (for shutdown).
    pub async fn stop(&self) {
        if let Some(m) = self.member.lock().await.take() {
            m.shutdown().await;
        }
    }
}

impl Daemon {
    fn identity(&self, state: &NodeState, cert: Arc<ReloadableCert>, root: &str) -> Identity {
        Identity {
            node_id: state.node_id.clone(),
            cluster_id: state.cluster_id.clone(),
            root_ca_pem: root.to_string(),
            cert,
            election_timeout: self.cfg.election_timeout,
        }
    }
}

/// Serves `manager` on the cluster port; a failure of its Raft member goes to `failure` (see
/// [`Daemon::manager_failed`]).
fn serve(
    manager: Manager,
    listener: TcpListener,
    cert: Arc<ReloadableCert>,
    failure: &watch::Sender<Option<String>>,
    cfg: &DaemonConfig,
) -> Serving {
    manager.set_time_scale(cfg.time_scale);
    manager.use_registry(cfg.registry.clone());
    let failure = AbortOnDrop(report_failure(&manager, failure.clone()));
    let serving = manager.serve(listener, cert);
    Serving { manager, serving, failure }
}

/// Waits until the Raft member of `manager` fails and passes on why.
fn report_failure(manager: &Manager, report: watch::Sender<Option<String>>) -> JoinHandle<()> {
    let mut status = manager.raft().watch();
    tokio::spawn(async move {
        let why = match status.wait_for(|s| s.failed.is_some()).await {
            Ok(s) => s.failed.clone(),
            Err(_) => return, // the member stopped without failing
        };
        report.send_replace(why);
    })
}
