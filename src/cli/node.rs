//! `shoal node …`: list, inspect, promote, demote, update and remove nodes.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use shoal_proto::control_client::ControlClient;
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::*;
use tonic::transport::Channel;

use super::{client, output};

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
    Update(UpdateArgs),
    /// Let nodes that came back with an expired certificate have a new one (they prove they
    /// hold their old key; see 'swarm update --reattest-window' for doing it without asking)
    Approve {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
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

/// `node update` arguments.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// active, pause or drain
    #[arg(long)]
    pub availability: Option<String>,
    /// Labels to add or change (key=value)
    #[arg(long)]
    pub label_add: Vec<String>,
    /// Labels to remove
    #[arg(long)]
    pub label_rm: Vec<String>,
    /// A new hostname (a node's own hostname is fixed at join; only an operator changes it)
    #[arg(long)]
    pub hostname: Option<String>,
    pub node: String,
}

/// Runs one `node` command.
pub async fn run(cmd: NodeCmd, channel: Channel) -> Result<()> {
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
        NodeCmd::Update(args) => update(&mut control, args).await?,
        NodeCmd::Approve { nodes } => {
            for reference in nodes {
                let r = control
                    .approve_node(ApproveNodeRequest { reference })
                    .await
                    .map_err(client::status)?;
                let node = r.into_inner().node.unwrap_or_default();
                let key = shoal_pki::reattest::short_fingerprint(&node.reattest_key);
                println!(
                    "Node {} ({}) may have a new certificate for the key {key}… it asked for \
                     from {} (approval good for 24 hours).",
                    node.id, node.hostname, node.reattest_from
                );
            }
        }
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

/// `node update`: availability, labels or hostname.
async fn update(control: &mut ControlClient<Channel>, a: UpdateArgs) -> Result<()> {
    let availability = match a.availability.as_deref() {
        None => None,
        Some("active") => Some(Availability::Active as i32),
        Some("pause") => Some(Availability::Pause as i32),
        Some("drain") => Some(Availability::Drain as i32),
        Some(o) => bail!("invalid availability {o:?}: use active, pause or drain"),
    };
    let r = control
        .update_node(UpdateNodeRequest {
            reference: a.node,
            availability,
            label_add: a.label_add,
            label_rm: a.label_rm,
            hostname: a.hostname,
        })
        .await
        .map_err(client::status)?;
    println!("{}", r.into_inner().node.map(|n| n.id).unwrap_or_default());
    Ok(())
}
