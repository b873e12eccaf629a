//! `shoal swarm …`: create, join and leave a swarm, its tokens, settings and autolock.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use shoal_proto::control_client::ControlClient;
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::*;
use tonic::transport::Channel;

use super::client::{self, Host};
use super::{local_only, output, parse_duration};

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
    /// Show the root CA, or rotate it: a new root, cross-signed by the old one, that every
    /// node moves to before the old root and the join tokens are retired
    Ca(CaArgs),
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
    /// Address pool networks take their subnets from (CIDR, repeatable; default 10.0.0.0/8)
    #[arg(long)]
    pub default_addr_pool: Vec<String>,
    /// Prefix length of each network's block of the pool (default 24)
    #[arg(long)]
    pub default_addr_pool_mask_length: Option<u32>,
    /// UDP port of the overlay data plane between nodes (VXLAN; default 4789)
    #[arg(long)]
    pub data_path_port: Option<u32>,
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
pub struct CaArgs {
    /// Start a root rotation (a new root, unless --ca-cert and --ca-key give one)
    #[arg(long)]
    pub rotate: bool,
    /// With --rotate: your root certificate (PEM; self-signed, valid for a year or more)
    #[arg(long, requires_all = ["rotate", "ca_key"])]
    pub ca_cert: Option<std::path::PathBuf>,
    /// With --rotate: your root's private key (PEM)
    #[arg(long, requires_all = ["rotate", "ca_cert"])]
    pub ca_key: Option<std::path::PathBuf>,
    /// Do not wait for nodes that are down (they must join again afterwards); also for a
    /// rotation already in progress
    #[arg(long)]
    pub force: bool,
    /// Return at once instead of showing the rotation's progress until it ends
    #[arg(short, long)]
    pub detach: bool,
    /// Print nothing but the root certificate
    #[arg(short, long)]
    pub quiet: bool,
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
    /// How often each node replaces its encrypted-overlay key (default 12h, at least 10s)
    #[arg(long, value_parser = parse_duration)]
    pub network_key_rotation: Option<Duration>,
    /// required: services run only signed images, checked again on every node; off needs
    /// --root-key (nodes stop requiring it only on a root's signed word)
    #[arg(long, value_parser = ["required", "off"])]
    pub content_trust: Option<String>,
    /// A root key (path or name) that signs --content-trust off
    #[arg(long)]
    pub root_key: Option<String>,
    /// How long the managers' content-trust timestamps last (default 14 days)
    #[arg(long, value_parser = parse_duration)]
    pub trust_timestamp_expiry: Option<Duration>,
    /// block=low|medium|high|critical: nodes refuse tasks whose image has known
    /// vulnerabilities at or above it (naming them); block=none lifts it
    #[arg(long, value_parser = parse_scan_policy)]
    pub scan_policy: Option<String>,
    /// Nodes whose certificate expired while they were off get a new one without
    /// 'shoal node approve' if they were heard from less than this long ago (0: always ask)
    #[arg(long, value_parser = parse_duration)]
    pub reattest_window: Option<Duration>,
}

fn parse_scan_policy(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some(("block", level @ ("low" | "medium" | "high" | "critical" | "none"))) => {
            Ok(level.to_string())
        }
        _ => Err(format!(
            "invalid scan policy {s:?}: use block=low|medium|high|critical or block=none"
        )),
    }
}

/// Runs one `swarm` command.
pub async fn run(cmd: SwarmCmd, channel: Channel, host: &Host) -> Result<()> {
    let mut daemon = DaemonClient::new(channel.clone());
    let mut control = ControlClient::new(channel);
    match cmd {
        SwarmCmd::Init(a) => {
            local_only(host)?;
            init(&mut daemon, a).await
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
            Ok(())
        }
        SwarmCmd::JoinToken(a) => join_token(&mut control, a).await,
        SwarmCmd::Ca(a) => ca(&mut control, a).await,
        SwarmCmd::Update(a) => update(&mut control, a).await,
        SwarmCmd::UnlockKey { rotate, quiet } => {
            let info = if rotate {
                control.rotate_unlock_key(RotateUnlockKeyRequest {}).await
            } else {
                control.get_unlock_key(GetUnlockKeyRequest {}).await
            };
            let key = info.map_err(client::status)?.into_inner().key;
            print!("{}", output::unlock_key(&key, rotate, quiet));
            Ok(())
        }
        SwarmCmd::Unlock => {
            local_only(host)?;
            unlock(&mut daemon).await
        }
        SwarmCmd::Inspect => {
            let info =
                control.get_cluster_info(GetClusterInfoRequest {}).await.map_err(client::status)?;
            print!("{}", output::cluster(&info.into_inner())?);
            Ok(())
        }
        SwarmCmd::Leave { force } => {
            local_only(host)?;
            daemon.leave(LeaveRequest { force }).await.map_err(client::status)?;
            println!("Node left the swarm.");
            Ok(())
        }
    }
}

async fn init(daemon: &mut DaemonClient<Channel>, a: InitArgs) -> Result<()> {
    if let Some(e) = a.cert_expiry {
        shoal_pki::validate_cert_expiry(e)?;
    }
    let mask = a.default_addr_pool_mask_length.unwrap_or(0);
    shoal_proto::spec::network::address_pool(&a.default_addr_pool, mask)?;
    shoal_proto::spec::network::data_path_port(a.data_path_port.unwrap_or(0))?;
    let req = InitRequest {
        listen_addr: a.listen_addr,
        advertise_addr: a.advertise_addr,
        cert_expiry_secs: a.cert_expiry.map(|d| d.as_secs()).unwrap_or(0),
        heartbeat_period_ms: a.dispatcher_heartbeat.map(|d| d.as_millis() as u64).unwrap_or(0),
        force_new_cluster: a.force_new_cluster,
        autolock: a.autolock,
        default_addr_pool: a.default_addr_pool,
        default_addr_pool_mask_length: mask,
        data_path_port: a.data_path_port.unwrap_or(0),
    };
    let r = daemon.init(req).await.map_err(client::status)?.into_inner();
    print!("{}", output::init(&r));
    if !r.unlock_key.is_empty() {
        print!("{}", output::unlock_key(&r.unlock_key, false, false));
    }
    Ok(())
}

async fn join_token(control: &mut ControlClient<Channel>, a: JoinTokenArgs) -> Result<()> {
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
    Ok(())
}

async fn update(control: &mut ControlClient<Channel>, a: UpdateArgs) -> Result<()> {
    if a.cert_expiry.is_none()
        && a.dispatcher_heartbeat.is_none()
        && a.autolock.is_none()
        && !a.rotate_data_key
        && a.network_key_rotation.is_none()
        && a.content_trust.is_none()
        && a.trust_timestamp_expiry.is_none()
        && a.scan_policy.is_none()
        && a.reattest_window.is_none()
    {
        bail!(
            "nothing to update: give --cert-expiry, --dispatcher-heartbeat, --autolock, \
             --rotate-data-key, --network-key-rotation, --content-trust, \
             --trust-timestamp-expiry, --scan-policy or --reattest-window"
        );
    }
    let (content_trust, content_trust_policy) = match a.content_trust.as_deref() {
        None => (ContentTrust::Unchanged, Vec::new()),
        Some("required") => (ContentTrust::Required, Vec::new()),
        Some(_) => {
            let key = a.root_key.as_deref().ok_or_else(|| {
                anyhow::anyhow!("--content-trust off needs --root-key: nodes keep requiring trust until a root signs it off")
            })?;
            (ContentTrust::Off, super::trust::policy_off(key)?)
        }
    };
    // The managers check --cert-expiry: their floor is lower in a test cluster whose time runs
    // faster.
    if let Some(r) = a.network_key_rotation {
        shoal_pki::tunnel::validate_rotation(r)?;
    }
    let req = UpdateClusterRequest {
        cert_expiry_secs: a.cert_expiry.map(|d| d.as_secs()).unwrap_or(0),
        heartbeat_period_ms: a.dispatcher_heartbeat.map(|d| d.as_millis() as u64).unwrap_or(0),
        autolock: match a.autolock {
            None => Autolock::Unchanged,
            Some(true) => Autolock::On,
            Some(false) => Autolock::Off,
        } as i32,
        rotate_data_key: a.rotate_data_key,
        network_key_rotation_secs: a.network_key_rotation.map(|d| d.as_secs()).unwrap_or(0),
        content_trust: content_trust as i32,
        content_trust_policy,
        trust_timestamp_secs: a.trust_timestamp_expiry.map(|d| d.as_secs().max(1)).unwrap_or(0),
        scan_block: a.scan_policy.unwrap_or_default(),
        reattest_window_secs: match a.reattest_window {
            None => 0,
            Some(d) if d.is_zero() => u64::MAX,
            Some(d) => d.as_secs().max(1),
        },
    };
    control.update_cluster(req).await.map_err(client::status)?;
    println!("Swarm updated.");
    if a.autolock == Some(true) {
        let key = control.get_unlock_key(GetUnlockKeyRequest {}).await.map_err(client::status)?;
        print!("{}", output::unlock_key(&key.into_inner().key, false, false));
    }
    Ok(())
}

/// `swarm ca`: prints the root, or starts (or forces) a rotation and follows it to its end.
async fn ca(control: &mut ControlClient<Channel>, a: CaArgs) -> Result<()> {
    if !a.rotate && !a.force {
        let info = control.get_root_ca(GetRootCaRequest {}).await.map_err(client::status)?;
        let info = info.into_inner();
        print!("{}", info.root_ca_pem);
        if info.rotating && !a.quiet {
            eprintln!("{}", output::rotation_progress(&info));
        }
        return Ok(());
    }
    let read = |p: &Option<std::path::PathBuf>, what: &str| -> Result<String> {
        match p {
            None => Ok(String::new()),
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading the {what} {}", p.display())),
        }
    };
    let req = RotateRootCaRequest {
        rotate: a.rotate,
        cert_pem: read(&a.ca_cert, "root certificate")?,
        key_pem: read(&a.ca_key, "root key")?,
        force: a.force,
    };
    let mut info = control.rotate_root_ca(req).await.map_err(client::status)?.into_inner();
    if a.detach {
        if !a.quiet {
            eprintln!("{}", output::rotation_progress(&info));
        }
        return Ok(());
    }
    let mut last = String::new();
    while info.rotating {
        let line = output::rotation_progress(&info);
        if line != last && !a.quiet {
            eprintln!("{line}");
            last = line;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A manager busy electing a leader answers again a moment later.
        match control.get_root_ca(GetRootCaRequest {}).await {
            Ok(r) => info = r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => continue,
            Err(s) => return Err(client::status(s)),
        }
    }
    if !a.quiet {
        eprintln!(
            "Root rotation complete: every node trusts the new root; the join tokens changed."
        );
    }
    print!("{}", info.root_ca_pem);
    Ok(())
}

/// Reads the unlock key from standard input (prompting on a terminal, without echo).
async fn unlock(daemon: &mut DaemonClient<Channel>) -> Result<()> {
    let key =
        super::prompt::read_hidden_line("Enter unlock key: ").context("reading the unlock key")?;
    daemon.unlock(UnlockRequest { key: key.trim().to_string() }).await.map_err(client::status)?;
    println!("Manager unlocked.");
    Ok(())
}

fn role(word: &str) -> Result<NodeRole> {
    Ok(word.parse::<shoal_pki::Role>()?.into())
}
