//! Joining and leaving: `swarm init` (and recovery with `--force-new-cluster`), `swarm join`
//! (as a worker or through the managers' Raft group) and `swarm leave`.

use anyhow::{bail, Result};
use shoal_agent::NodeState;
use shoal_manager::{Identity, InitParams, Manager};
use shoal_pki::{NodeKey, ReloadableCert, Role};

use super::addr::{advertise_addr, bind, normalize_listen, with_default_port};
use super::*;

impl Daemon {
    /// `swarm init`: a new cluster with this node as its manager. Returns the state and tokens.
    pub async fn init(&self, opts: InitOptions) -> Result<(NodeState, String, String)> {
        let mut member = self.member.lock().await;
        if opts.force_new_cluster {
            return self.force_new_cluster(&mut member).await;
        }
        if member.is_some() || self.is_reattesting() {
            bail!(ALREADY);
        }
        shoal_proto::spec::network::address_pool(&opts.default_addr_pool, opts.subnet_size)?;
        shoal_proto::spec::network::data_path_port(opts.data_path_port)?;
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
            default_addr_pool: opts.default_addr_pool.clone(),
            subnet_size: opts.subnet_size,
            data_path_port: opts.data_path_port,
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
        let root = manager.root_ca_pem()?;
        if let Err(e) = self.save(&key, &issued.cert_pem, &root, &state) {
            manager.stop();
            let _ = self.files.wipe();
            return Err(e);
        }
        let cert = id.cert;
        let serving = serve(manager, listener, cert.clone(), &self.failure, &self.cfg);
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
        let serving = serve(manager, listener, cert.clone(), &self.failure, &self.cfg);
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
        if member.is_some() || self.is_reattesting() {
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
        // A new identity starts with the cluster's trust roots (and none of another cluster's).
        let pins_path = shoal_agent::worker::trust_pins_path(self.files.root());
        let _ = std::fs::remove_file(&pins_path);
        if !joined.trust_pins.is_empty() {
            match serde_json::from_slice::<shoal_pki::trust::Pins>(&joined.trust_pins) {
                Ok(pins) => {
                    if let Err(e) = pins.save(&pins_path) {
                        tracing::warn!(error = %e, "could not save the content-trust pins");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the content-trust pins sent at join"),
            }
        }
        let agent = self.start_agent(&state, cert.clone(), joined.root_ca_pem)?;
        tracing::info!(node = %state.node_id, role = %state.role, "joined swarm");
        *member =
            Some(Member { state: state.clone(), cert, agent, manager: serving, announcer: None });
        Ok(state)
    }

    /// For a manager join: listen, start an empty Raft member, get it added, catch up.
    pub(super) async fn join_managers(
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
        let serving = serve(manager.clone(), listener, id.cert.clone(), &self.failure, &self.cfg);
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
            // A node still asking for a new certificate may give up and leave.
            if self.stop_reattesting() {
                self.files.wipe()?;
                tracing::info!("left the swarm (it was waiting for a new certificate)");
                return Ok(());
            }
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
}
