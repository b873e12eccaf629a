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
use shoal_manager::{Identity, InitParams, Manager};
use shoal_pki::{NodeKey, PeerIdentity, ReloadableCert, Role};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::readdress::{self, AddrOverrides, Announcer};

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
            let member = daemon.resume(state, None).await.context("resuming cluster membership")?;
            *daemon.member.lock().await = Some(member);
        }
        Ok(daemon)
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
            manager =
                Some(serve(opened, listener, cert.clone(), &self.failure, self.cfg.time_scale));
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

    /// `swarm init`: a new cluster with this node as its manager. Returns the state and tokens.
    pub async fn init(&self, opts: InitOptions) -> Result<(NodeState, String, String)> {
        let mut member = self.member.lock().await;
        if opts.force_new_cluster {
            return self.force_new_cluster(&mut member).await;
        }
        if member.is_some() {
            bail!(ALREADY);
        }
        let listener = bind(&normalize_listen(&opts.listen_addr)?.to_string()).await?;
        let listen = listener.local_addr()?;
        let advertise = advertise_addr(&opts.advertise_addr, &listen)?;
        let params = InitParams {
            hostname: self.cfg.hostname.clone(),
            advertise_addr: advertise.clone(),
            cert_expiry: opts.cert_expiry.unwrap_or(shoal_pki::DEFAULT_CERT_EXPIRY),
            heartbeat: opts.heartbeat.unwrap_or(shoal_manager::manager::DEFAULT_HEARTBEAT),
            autolock: opts.autolock,
            election_timeout: self.cfg.election_timeout,
        };
        let key = NodeKey::generate()?;
        let store_dir = self.files.store_dir();
        let (manager, id, issued) = match Manager::init(&store_dir, params, &key).await {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&store_dir);
                return Err(e.into());
            }
        };
        let state = NodeState {
            node_id: id.node_id.clone(),
            cluster_id: manager.cluster_id().to_string(),
            role: Role::Manager,
            runs_manager: true,
            listen_addr: listen.to_string(),
            advertise_addr: advertise.clone(),
            manager_addrs: vec![advertise],
            manager_ids: vec![id.node_id.clone()],
        };
        let tokens = (manager.join_token(Role::Worker)?, manager.join_token(Role::Manager)?);
        let root = manager.root_ca_pem().to_string();
        if let Err(e) = self.save(&key, &issued.cert_pem, &root, &state) {
            manager.stop();
            let _ = self.files.wipe();
            return Err(e);
        }
        let cert = id.cert;
        let serving = serve(manager, listener, cert.clone(), &self.failure, self.cfg.time_scale);
        let agent = self.start_agent(&state, cert.clone(), root)?;
        tracing::info!(node = %state.node_id, cluster = %state.cluster_id, "swarm initialized");
        let manager = Some(serving);
        *member = Some(Member { state: state.clone(), cert, agent, manager, announcer: None });
        Ok((state, tokens.0, tokens.1))
    }

    /// Recovery after losing quorum: this manager alone becomes the cluster, keeping its state.
    async fn force_new_cluster(
        &self,
        member: &mut Option<Member>,
    ) -> Result<(NodeState, String, String)> {
        match member.as_ref() {
            Some(m) if m.state.runs_manager => {}
            _ => bail!("--force-new-cluster needs a node that is a manager of a swarm"),
        }
        let Some(current) = member.take() else { bail!("this node is not part of a swarm") };
        let (mut state, cert) = (current.state.clone(), current.cert.clone());
        current.shutdown().await;
        let (_, _, root) = self.files.load_identity()?;
        let id = self.identity(&state, cert.clone(), &root);
        let manager = Manager::force_new_cluster(&self.files.store_dir(), &id, None).await?;
        let listener = bind(&state.listen_addr).await?;
        state.manager_addrs = vec![state.advertise_addr.clone()];
        state.manager_ids = vec![state.node_id.clone()];
        // Alone now, it accepts its own address (if it moved) at once.
        let announcer = manager
            .member_addr()
            .is_some_and(|listed| listed != state.advertise_addr)
            .then(|| Announcer::start(self.me.clone(), manager.clone(), &state));
        if announcer.is_none() {
            self.files.save_state(&state)?;
        }
        let tokens = (manager.join_token(Role::Worker)?, manager.join_token(Role::Manager)?);
        let serving = serve(manager, listener, cert.clone(), &self.failure, self.cfg.time_scale);
        let agent = self.start_agent(&state, cert.clone(), root)?;
        *member =
            Some(Member { state: state.clone(), cert, agent, manager: Some(serving), announcer });
        Ok((state, tokens.0, tokens.1))
    }

    fn save(&self, key: &NodeKey, chain: &str, root: &str, state: &NodeState) -> Result<()> {
        self.files.save_identity(key, chain, root)?;
        self.files.save_state(state)?;
        Ok(())
    }

    /// `swarm join`: joins the cluster of the manager at `opts.remote_addr`.
    pub async fn join(&self, opts: JoinOptions) -> Result<NodeState> {
        let mut member = self.member.lock().await;
        if member.is_some() {
            bail!(ALREADY);
        }
        let listen = normalize_listen(&opts.listen_addr)?;
        let advertise = advertise_addr(&opts.advertise_addr, &listen)?;
        let params = shoal_agent::JoinParams {
            token: opts.token,
            remote_addr: with_default_port(&opts.remote_addr),
            hostname: self.cfg.hostname.clone(),
            // Only an operator's choice is sent: otherwise the managers record the address
            // this node's connection comes from.
            advertise_addr: if opts.advertise_addr.is_empty() {
                String::new()
            } else {
                advertise.clone()
            },
        };
        let joined = shoal_agent::join(&params).await?;
        let mut state = NodeState {
            node_id: joined.node_id.clone(),
            cluster_id: joined.cluster_id.clone(),
            role: joined.role,
            runs_manager: joined.role == Role::Manager,
            listen_addr: listen.to_string(),
            advertise_addr: advertise,
            manager_addrs: if joined.manager_addrs.is_empty() {
                vec![params.remote_addr.clone()]
            } else {
                joined.manager_addrs.clone()
            },
            manager_ids: joined.manager_ids.clone(),
        };
        let cert = ReloadableCert::new(&joined.cert_chain_pem, &joined.key)?;
        let serving = if state.runs_manager {
            let id = self.identity(&state, cert.clone(), &joined.root_ca_pem);
            match self.join_managers(&id, &mut state, &params.remote_addr).await {
                Ok(serving) => Some(serving),
                Err(e) => {
                    let _ = self.files.wipe();
                    return Err(e);
                }
            }
        } else {
            None
        };
        if let Err(e) = self.save(&joined.key, &joined.cert_chain_pem, &joined.root_ca_pem, &state)
        {
            drop(serving);
            let _ = self.files.wipe();
            return Err(e);
        }
        let agent = self.start_agent(&state, cert.clone(), joined.root_ca_pem)?;
        tracing::info!(node = %state.node_id, role = %state.role, "joined swarm");
        *member =
            Some(Member { state: state.clone(), cert, agent, manager: serving, announcer: None });
        Ok(state)
    }

    /// For a manager join: listen, start an empty Raft member, get it added, catch up.
    async fn join_managers(
        &self,
        id: &Identity,
        state: &mut NodeState,
        remote: &str,
    ) -> Result<Serving> {
        let listener = bind(&state.listen_addr).await?;
        let bound = listener.local_addr()?;
        state.listen_addr = bound.to_string();
        if let Ok(mut adv) = state.advertise_addr.parse::<SocketAddr>() {
            if adv.port() == 0 {
                adv.set_port(bound.port());
                state.advertise_addr = adv.to_string();
            }
        }
        let manager = Manager::prepare_join(&self.files.store_dir(), id)?;
        let serving =
            serve(manager.clone(), listener, id.cert.clone(), &self.failure, self.cfg.time_scale);
        manager.join_raft(remote, &state.advertise_addr).await?;
        if let Ok(addrs) = manager.manager_addrs() {
            state.manager_addrs = addrs;
        }
        Ok(serving)
    }

    /// `swarm leave`: stops taking part and forgets the cluster.
    pub async fn leave(&self, force: bool) -> Result<()> {
        let mut member = self.member.lock().await;
        let Some(current) = member.as_ref() else {
            bail!("this node is not part of a swarm");
        };
        if let (Some(serving), false) = (current.manager.as_ref(), force) {
            let managers = serving.manager.manager_addrs().map(|a| a.len()).unwrap_or(1);
            if managers <= 1 {
                bail!(
                    "this node is the swarm's last manager: leaving would lose the whole cluster's \
                     state; use --force to leave anyway"
                );
            }
            bail!(
                "this node is one of {managers} managers: leaving would not take it out of the \
                 managers' raft group and would weaken its fault tolerance; remove it with \
                 'shoal node rm --force' from another manager, or use --force"
            );
        }
        if let Some(m) = member.take() {
            // A node that leaves stops its tasks (an agent restart would re-attach to them).
            m.agent.remove_tasks().await;
            m.shutdown().await;
        }
        self.files.wipe()?;
        tracing::info!("left the swarm");
        Ok(())
    }

    /// IDs of the images this node's tasks run (they must not be removed).
    pub async fn images_in_use(&self) -> Vec<String> {
        let member = self.member.lock().await;
        member.as_ref().map(|m| m.agent.worker().executor().images_in_use()).unwrap_or_default()
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
            None => Info::default(),
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

/// How often the daemon checks whether the managers changed this node's role.
const ROLE_CHECK: Duration = Duration::from_millis(300);
/// How long a role change may wait for the certificate of the new role.
const ROLE_CERT_WAIT: Duration = Duration::from_secs(30);

/// Follows `node promote` / `node demote`: when the managers give this node another role, get
/// that role's certificate, then join or leave the managers' Raft group.
async fn follow_role(daemon: std::sync::Weak<Daemon>) {
    loop {
        tokio::time::sleep(ROLE_CHECK).await;
        let Some(daemon) = daemon.upgrade() else { return };
        let mut member = daemon.member.lock().await;
        let Some(m) = member.as_mut() else { continue };
        daemon.keep_manager_addrs(m);
        let Some(wanted) = m.agent.status().role else { continue };
        if wanted == m.state.role {
            continue;
        }
        tracing::info!(from = %m.state.role, to = %wanted, "the managers changed this node's role");
        if let Err(e) = daemon.change_role(m, wanted).await {
            tracing::warn!(error = %format!("{e:#}"), "role change not finished; will retry");
        }
    }
}

impl Daemon {
    /// Saves the managers' addresses the agent last heard of, so that after a restart the node
    /// still finds the managers when every address it knew before has changed.
    fn keep_manager_addrs(&self, m: &mut Member) {
        let status = m.agent.status();
        let (heard, ids) = (status.manager_addrs, status.manager_ids);
        if heard.is_empty() || (heard == m.state.manager_addrs && ids == m.state.manager_ids) {
            return;
        }
        m.state.manager_addrs = heard.clone();
        m.state.manager_ids = ids.clone();
        let saved = match self.files.load_state() {
            Ok(Some(mut saved)) if saved.node_id == m.state.node_id => {
                saved.manager_addrs = heard;
                saved.manager_ids = ids;
                self.files.save_state(&saved)
            }
            _ => return,
        };
        if let Err(e) = saved {
            tracing::warn!(error = %e, "could not save the managers' addresses");
        }
    }

    async fn change_role(&self, m: &mut Member, wanted: Role) -> Result<()> {
        m.agent.renew_now();
        let deadline = tokio::time::Instant::now() + ROLE_CERT_WAIT;
        while m.cert.identity().role != wanted {
            if tokio::time::Instant::now() >= deadline {
                bail!("no {wanted} certificate yet");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut state = m.state.clone();
        state.role = wanted;
        if wanted == Role::Manager {
            let (_, _, root) = self.files.load_identity()?;
            let id = self.identity(&state, m.cert.clone(), &root);
            let remote =
                m.agent.status().manager.clone().or_else(|| state.manager_addrs.first().cloned());
            let remote = remote.context("no manager known to join through")?;
            let _ = std::fs::remove_dir_all(self.files.store_dir());
            state.runs_manager = true;
            m.manager = Some(self.join_managers(&id, &mut state, &remote).await?);
        } else if let Some(serving) = m.manager.take() {
            serving.shutdown().await;
            state.runs_manager = false;
            let _ = std::fs::remove_dir_all(self.files.store_dir());
        }
        self.files.save_state(&state)?;
        m.state = state;
        tracing::info!(role = %m.state.role, "role change done");
        Ok(())
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
    time_scale: f64,
) -> Serving {
    manager.set_time_scale(time_scale);
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

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("could not listen on {addr}"))
}

/// Binds the listen address of a resumed node, saying what to do if the host lost it.
async fn bind_resumed(addr: &str) -> Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => bail!(
            "could not listen on {addr}: this host no longer has that address; if its address \
             changed, start shoald with --advertise-addr NEW-IP (and --listen-addr if the node \
             should not listen on NEW-IP with the same port)"
        ),
        Err(e) => Err(e).with_context(|| format!("could not listen on {addr}")),
    }
}

/// Appends the default port to a bare IP or host name.
fn with_default_port(addr: &str) -> String {
    let has_port = addr.parse::<SocketAddr>().is_ok()
        || addr.rsplit_once(':').is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok());
    if has_port {
        addr.to_string()
    } else if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{DEFAULT_PORT}")
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    }
}

/// Parses a listen address (`IP`, `IP:PORT`), defaulting to 0.0.0.0:4242.
pub fn normalize_listen(addr: &str) -> Result<SocketAddr> {
    if addr.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    }
    with_default_port(addr)
        .parse()
        .with_context(|| format!("invalid listen address {addr:?}: use IP or IP:PORT"))
}

/// Chooses the address other nodes use to reach this one.
pub fn advertise_addr(given: &str, listen: &SocketAddr) -> Result<String> {
    if !given.is_empty() {
        let bad = || format!("invalid advertise address {given:?}: use IP or IP:PORT");
        let chosen = match given.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, listen.port()),
            Err(_) => given.parse::<SocketAddr>().with_context(bad)?,
        };
        return Ok(chosen.to_string());
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    let ips: Vec<_> = if_addrs::get_if_addrs()
        .context("listing network interfaces")?
        .into_iter()
        .filter(|i| !i.is_loopback() && i.ip().is_ipv4())
        .map(|i| i.ip())
        .collect();
    match ips.as_slice() {
        [one] => Ok(SocketAddr::new(*one, listen.port()).to_string()),
        [] => Ok(SocketAddr::from(([127, 0, 0, 1], listen.port())).to_string()),
        many => bail!(
            "could not choose an address to advertise: this host has several ({}); pass --advertise-addr",
            many.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_like_docker() {
        assert_eq!(normalize_listen("").unwrap().to_string(), "0.0.0.0:4242");
        assert_eq!(normalize_listen("10.1.2.3").unwrap().to_string(), "10.1.2.3:4242");
        assert_eq!(normalize_listen("10.1.2.3:5000").unwrap().to_string(), "10.1.2.3:5000");
        assert!(normalize_listen("nonsense:x").is_err());
        let listen: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        assert_eq!(advertise_addr("10.0.0.9", &listen).unwrap(), "10.0.0.9:5000");
        assert_eq!(advertise_addr("10.0.0.9:6000", &listen).unwrap(), "10.0.0.9:6000");
        assert!(advertise_addr("not an ip", &listen).is_err());
        let specific: SocketAddr = "10.0.0.2:4242".parse().unwrap();
        assert_eq!(advertise_addr("", &specific).unwrap(), "10.0.0.2:4242");
        assert_eq!(with_default_port("10.0.0.1"), "10.0.0.1:4242");
        assert_eq!(with_default_port("10.0.0.1:99"), "10.0.0.1:99");
    }
}
