//! Owns the `shoal` command line: Docker's verbs and flags, parsed with clap, each turned into
//! calls on the daemon or a manager.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use shoal_proto::control_client::ControlClient;
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::*;
use tonic::transport::Channel;

pub mod client;
pub mod output;
pub mod secret;
pub mod service;
pub mod stack;

use client::{Host, TlsFiles};

/// Shoal: a secure, fast, Swarm-style container cluster manager.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    /// Daemon to talk to: unix:///PATH.sock or tcp://HOST:PORT
    #[arg(short = 'H', long = "host", env = "SHOAL_HOST", global = true,
          default_value = concat!("unix://", "/var/run/shoal.sock"))]
    pub host: String,
    /// CA bundle that signs the manager's certificate (tcp:// only)
    #[arg(long, global = true)]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate chain (tcp:// only)
    #[arg(long, global = true)]
    pub tlscert: Option<PathBuf>,
    /// Client private key (tcp:// only)
    #[arg(long, global = true)]
    pub tlskey: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the swarm
    #[command(subcommand)]
    Swarm(SwarmCmd),
    /// Manage nodes
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage services
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Manage this node's images
    #[command(subcommand)]
    Image(ImageCmd),
    /// Manage secrets (data only tasks that name them can read)
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Manage configs (like secrets, for data that is not secret)
    #[command(subcommand)]
    Config(secret::SecretCmd),
    /// Manage stacks (services, secrets and configs from a compose file)
    #[command(subcommand)]
    Stack(stack::StackCmd),
    /// Show this node's view of the swarm
    Info,
}

#[derive(Debug, Subcommand)]
pub enum SwarmCmd {
    /// Create a swarm with this node as its manager
    Init(InitArgs),
    /// Join a swarm as a worker or manager
    Join(JoinArgs),
    /// Show or rotate a join token
    JoinToken(JoinTokenArgs),
    /// Change swarm settings
    Update(UpdateArgs),
    /// Show the swarm's settings (JSON)
    Inspect,
    /// Show or rotate the key that unlocks restarted managers (autolock)
    UnlockKey {
        /// Replace the key; managers re-wrap their data keys with the new one
        #[arg(long)]
        rotate: bool,
        /// Print the key only
        #[arg(short, long)]
        quiet: bool,
    },
    /// Unlock a restarted, locked manager (reads the unlock key from standard input)
    Unlock,
    /// Leave the swarm
    Leave {
        /// Leave even if this is the last manager (the cluster's state is lost)
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Address to listen on for cluster traffic (IP[:PORT], default 0.0.0.0:4242)
    #[arg(long, default_value = "")]
    pub listen_addr: String,
    /// Address other nodes use to reach this one (IP[:PORT])
    #[arg(long, default_value = "")]
    pub advertise_addr: String,
    /// Validity of node certificates (e.g. 2160h; at least 1h)
    #[arg(long, value_parser = parse_duration)]
    pub cert_expiry: Option<Duration>,
    /// Period of agent heartbeats (e.g. 5s)
    #[arg(long, value_parser = parse_duration)]
    pub dispatcher_heartbeat: Option<Duration>,
    /// Recovery after losing quorum: make this manager the only one, keeping the cluster's state
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Lock managers' data at rest with a key only you hold; a restarted manager needs it
    #[arg(long)]
    pub autolock: bool,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Join token from 'shoal swarm join-token'
    #[arg(long)]
    pub token: String,
    /// Address to listen on for cluster traffic
    #[arg(long, default_value = "")]
    pub listen_addr: String,
    /// Address other nodes use to reach this one
    #[arg(long, default_value = "")]
    pub advertise_addr: String,
    /// A manager's address (HOST[:PORT])
    pub remote_addr: String,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Replace the token: the old one stops working for new joins at once
    #[arg(long)]
    pub rotate: bool,
    /// Print the token only
    #[arg(short, long)]
    pub quiet: bool,
    /// With --rotate: the new token expires after this long (e.g. 1h)
    #[arg(long, value_parser = parse_duration, requires = "rotate")]
    pub ttl: Option<Duration>,
    /// With --rotate: the new token admits at most this many nodes
    #[arg(long, requires = "rotate")]
    pub max_uses: Option<u32>,
    /// worker or manager
    pub role: String,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Validity of node certificates issued from now on (at least 1h)
    #[arg(long, value_parser = parse_duration)]
    pub cert_expiry: Option<Duration>,
    /// Period of agent heartbeats
    #[arg(long, value_parser = parse_duration)]
    pub dispatcher_heartbeat: Option<Duration>,
    /// Turn autolock on or off (true|false)
    #[arg(long)]
    pub autolock: Option<bool>,
    /// Make every manager rotate its data-at-rest key and seal its store again (no downtime)
    #[arg(long)]
    pub rotate_data_key: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Load images from a docker-archive or OCI-layout tarball
    Load {
        /// The tarball (as written by 'docker save' or an OCI layout)
        #[arg(short, long)]
        input: PathBuf,
    },
    /// Make an image from a root filesystem tarball
    Import {
        /// The root filesystem tarball
        file: PathBuf,
        /// NAME:TAG for the new image
        reference: String,
    },
    /// List images
    #[command(alias = "list")]
    Ls {
        /// Print IDs only
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes
    #[command(alias = "list")]
    Ls {
        /// Print IDs only
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show details of nodes (ID, ID prefix or hostname; "self" for this node)
    Inspect {
        /// Human-readable output instead of JSON
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make nodes managers (they renew their certificates and join the managers' Raft group)
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers again (refused for the last manager or if quorum would be lost)
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability (active, pause, drain) or labels
    Update(service::NodeUpdateArgs),
    /// Remove nodes from the swarm and revoke their certificates
    #[command(alias = "remove")]
    Rm {
        /// Remove even if the node is still Ready
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// Parses durations like Docker's flags: `90s`, `30m`, `720h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 90s, 30m, 720h"))
}

fn role(word: &str) -> Result<NodeRole> {
    match word {
        "worker" => Ok(NodeRole::Worker),
        "manager" => Ok(NodeRole::Manager),
        other => bail!("unknown role {other:?}: use worker or manager"),
    }
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    let host = client::parse_host(&cli.host)?;
    let tls = TlsFiles { ca: cli.tlscacert, cert: cli.tlscert, key: cli.tlskey };
    let channel = client::connect(&host, &tls).await?;
    match cli.command {
        Command::Swarm(cmd) => swarm(cmd, channel, &host).await,
        Command::Node(cmd) => node(cmd, channel).await,
        Command::Service(cmd) => service::run(cmd, channel).await,
        Command::Secret(cmd) => secret::run(SecretKind::Secret, cmd, channel).await,
        Command::Config(cmd) => secret::run(SecretKind::Config, cmd, channel).await,
        Command::Stack(cmd) => stack::run(cmd, channel).await,
        Command::Image(cmd) => {
            local_only(&host)?;
            image(cmd, channel).await
        }
        Command::Info => info(channel).await,
    }
}

fn local_only(host: &Host) -> Result<()> {
    if let Host::Tcp(addr) = host {
        bail!(
            "this command changes the local node; run it on the node itself, not over tcp://{addr}"
        );
    }
    Ok(())
}

async fn swarm(cmd: SwarmCmd, channel: Channel, host: &Host) -> Result<()> {
    let mut daemon = DaemonClient::new(channel.clone());
    let mut control = ControlClient::new(channel);
    match cmd {
        SwarmCmd::Init(a) => {
            local_only(host)?;
            if let Some(e) = a.cert_expiry {
                shoal_pki::validate_cert_expiry(e)?;
            }
            let req = InitRequest {
                listen_addr: a.listen_addr,
                advertise_addr: a.advertise_addr,
                cert_expiry_secs: a.cert_expiry.map(|d| d.as_secs()).unwrap_or(0),
                heartbeat_period_ms: a
                    .dispatcher_heartbeat
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                force_new_cluster: a.force_new_cluster,
                autolock: a.autolock,
            };
            let r = daemon.init(req).await.map_err(client::status)?.into_inner();
            print!("{}", output::init(&r));
            if !r.unlock_key.is_empty() {
                print!("{}", output::unlock_key(&r.unlock_key, false, false));
            }
        }
        SwarmCmd::Join(a) => {
            local_only(host)?;
            let req = JoinRequest {
                token: a.token,
                remote_addr: a.remote_addr,
                listen_addr: a.listen_addr,
                advertise_addr: a.advertise_addr,
            };
            let r = daemon.join(req).await.map_err(client::status)?.into_inner();
            println!("This node joined a swarm as a {}.", r.role().word());
        }
        SwarmCmd::JoinToken(a) => {
            let role = role(&a.role)? as i32;
            let info = if a.rotate {
                let req = RotateJoinTokenRequest {
                    role,
                    ttl_secs: a.ttl.map(|d| d.as_secs().max(1)).unwrap_or(0),
                    max_uses: a.max_uses.unwrap_or(0),
                };
                control.rotate_join_token(req).await
            } else {
                control.get_join_token(GetJoinTokenRequest { role }).await
            };
            let info = info.map_err(client::status)?.into_inner();
            print!("{}", output::join_token(&info, a.rotate, a.quiet));
        }
        SwarmCmd::Update(a) => {
            if a.cert_expiry.is_none()
                && a.dispatcher_heartbeat.is_none()
                && a.autolock.is_none()
                && !a.rotate_data_key
            {
                bail!(
                    "nothing to update: give --cert-expiry, --dispatcher-heartbeat, --autolock \
                     or --rotate-data-key"
                );
            }
            if let Some(e) = a.cert_expiry {
                shoal_pki::validate_cert_expiry(e)?;
            }
            let req = UpdateClusterRequest {
                cert_expiry_secs: a.cert_expiry.map(|d| d.as_secs()).unwrap_or(0),
                heartbeat_period_ms: a
                    .dispatcher_heartbeat
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                autolock: match a.autolock {
                    None => Autolock::Unchanged,
                    Some(true) => Autolock::On,
                    Some(false) => Autolock::Off,
                } as i32,
                rotate_data_key: a.rotate_data_key,
            };
            control.update_cluster(req).await.map_err(client::status)?;
            println!("Swarm updated.");
            if a.autolock == Some(true) {
                let key =
                    control.get_unlock_key(GetUnlockKeyRequest {}).await.map_err(client::status)?;
                print!("{}", output::unlock_key(&key.into_inner().key, false, false));
            }
        }
        SwarmCmd::UnlockKey { rotate, quiet } => {
            let info = if rotate {
                control.rotate_unlock_key(RotateUnlockKeyRequest {}).await
            } else {
                control.get_unlock_key(GetUnlockKeyRequest {}).await
            };
            print!(
                "{}",
                output::unlock_key(&info.map_err(client::status)?.into_inner().key, rotate, quiet)
            );
        }
        SwarmCmd::Unlock => {
            local_only(host)?;
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("Enter unlock key: ");
            }
            let mut key = String::new();
            std::io::stdin().read_line(&mut key).context("reading the unlock key")?;
            daemon
                .unlock(UnlockRequest { key: key.trim().to_string() })
                .await
                .map_err(client::status)?;
            println!("Manager unlocked.");
        }
        SwarmCmd::Inspect => {
            let info =
                control.get_cluster_info(GetClusterInfoRequest {}).await.map_err(client::status)?;
            print!("{}", output::cluster(&info.into_inner())?);
        }
        SwarmCmd::Leave { force } => {
            local_only(host)?;
            daemon.leave(LeaveRequest { force }).await.map_err(client::status)?;
            println!("Node left the swarm.");
        }
    }
    Ok(())
}

async fn node(cmd: NodeCmd, channel: Channel) -> Result<()> {
    let mut control = ControlClient::new(channel.clone());
    match cmd {
        NodeCmd::Ls { quiet } => {
            let r =
                control.list_nodes(ListNodesRequest {}).await.map_err(client::status)?.into_inner();
            print!("{}", output::node_ls(&r, quiet));
        }
        NodeCmd::Inspect { pretty, nodes } => {
            let mut found = Vec::new();
            for reference in nodes {
                let reference = resolve_self(&reference, &channel).await?;
                let r = control
                    .get_node(GetNodeRequest { reference })
                    .await
                    .map_err(client::status)?
                    .into_inner();
                r.node.as_ref().context("the manager returned no node")?;
                found.push(r);
            }
            print!("{}", output::node_inspect(&found, pretty)?);
        }
        NodeCmd::Promote { nodes } => set_roles(&mut control, nodes, NodeRole::Manager).await?,
        NodeCmd::Demote { nodes } => set_roles(&mut control, nodes, NodeRole::Worker).await?,
        NodeCmd::Update(args) => return service::node_update(args, channel).await,
        NodeCmd::Rm { force, nodes } => {
            for reference in nodes {
                let r = control
                    .remove_node(RemoveNodeRequest { reference, force })
                    .await
                    .map_err(client::status)?;
                println!("{}", r.into_inner().node_id);
            }
        }
    }
    Ok(())
}

async fn set_roles(
    control: &mut ControlClient<Channel>,
    nodes: Vec<String>,
    role: NodeRole,
) -> Result<()> {
    for reference in nodes {
        let req = UpdateNodeRoleRequest { reference: reference.clone(), role: role as i32 };
        control.update_node_role(req).await.map_err(client::status)?;
        let verb =
            if role == NodeRole::Manager { "promoted to a manager" } else { "demoted to a worker" };
        println!("Node {reference} {verb} in the swarm.");
    }
    Ok(())
}

async fn resolve_self(reference: &str, channel: &Channel) -> Result<String> {
    if reference != "self" {
        return Ok(reference.to_string());
    }
    let info =
        DaemonClient::new(channel.clone()).info(InfoRequest {}).await.map_err(client::status)?;
    Ok(info.into_inner().node_id)
}

fn absolute(path: &std::path::Path) -> Result<String> {
    let abs = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    Ok(abs.display().to_string())
}

async fn image(cmd: ImageCmd, channel: Channel) -> Result<()> {
    let mut daemon = DaemonClient::new(channel);
    match cmd {
        ImageCmd::Load { input } => {
            let req = ImageLoadRequest { path: absolute(&input)? };
            let list = daemon.image_load(req).await.map_err(client::status)?.into_inner();
            for i in &list.images {
                println!("Loaded image: {} ({})", i.names.join(", "), i.id);
            }
        }
        ImageCmd::Import { file, reference } => {
            let req = ImageImportRequest { path: absolute(&file)?, reference };
            let list = daemon.image_import(req).await.map_err(client::status)?.into_inner();
            for i in &list.images {
                println!("{}", i.id);
            }
        }
        ImageCmd::Ls { quiet } => {
            let list =
                daemon.image_ls(ImageLsRequest {}).await.map_err(client::status)?.into_inner();
            print!("{}", output::images(&list, quiet));
        }
        ImageCmd::Rm { images } => {
            for reference in images {
                let r =
                    daemon.image_rm(ImageRmRequest { reference }).await.map_err(client::status)?;
                println!("Deleted: {}", r.into_inner().id);
            }
        }
    }
    Ok(())
}

async fn info(channel: Channel) -> Result<()> {
    let r = DaemonClient::new(channel).info(InfoRequest {}).await.map_err(client::status)?;
    print!("{}", output::info(&r.into_inner()));
    Ok(())
}
