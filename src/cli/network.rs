//! `shoal network …`: overlay networks of the swarm (create, list, inspect, remove).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use shoal_proto::control_client::ControlClient;
use shoal_proto::*;
use tonic::transport::Channel;

use super::client;
use super::output::{rfc3339_ms, table};

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network
    Create(CreateArgs),
    /// List networks
    #[command(alias = "list")]
    Ls {
        /// Print IDs only
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show details of networks (JSON)
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (refused while a service uses one)
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Driver (swarm networks are overlay)
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR form (default: the next block of the swarm's address pool)
    #[arg(long)]
    pub subnet: Option<String>,
    /// Gateway address (default: the subnet's first address)
    #[arg(long)]
    pub gateway: Option<String>,
    /// Containers outside services may attach
    #[arg(long)]
    pub attachable: bool,
    /// No way out of the network
    #[arg(long)]
    pub internal: bool,
    /// Labels (KEY=VALUE)
    #[arg(short, long)]
    pub label: Vec<String>,
    /// Driver options: encrypted
    #[arg(short, long)]
    pub opt: Vec<String>,
    pub name: String,
}

/// Runs one `network` command.
pub async fn run(cmd: NetworkCmd, channel: Channel) -> Result<()> {
    let mut control = ControlClient::new(channel);
    match cmd {
        NetworkCmd::Create(a) => {
            let spec = spec_of(a)?;
            let req = CreateNetworkRequest { spec: Some(spec) };
            let r = control.create_network(req).await.map_err(client::status)?.into_inner();
            println!("{}", r.network.map(|n| n.id).unwrap_or_default());
        }
        NetworkCmd::Ls { quiet } => {
            let r = control
                .list_networks(ListNetworksRequest {})
                .await
                .map_err(client::status)?
                .into_inner();
            print!("{}", ls(&r.networks, quiet));
        }
        NetworkCmd::Inspect { networks } => {
            let mut all = Vec::new();
            for reference in networks {
                let r = control
                    .get_network(GetNetworkRequest { reference })
                    .await
                    .map_err(client::status)?
                    .into_inner();
                all.push(json(&r)?);
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        NetworkCmd::Rm { networks } => {
            for reference in networks {
                let r = control
                    .remove_network(RemoveNetworkRequest { reference })
                    .await
                    .map_err(client::status)?;
                println!("{}", r.into_inner().name);
            }
        }
    }
    Ok(())
}

/// The spec `network create` asks for; the manager checks it again.
pub fn spec_of(a: CreateArgs) -> Result<NetworkSpec> {
    let mut encrypted = false;
    for o in &a.opt {
        match o.as_str() {
            "encrypted" | "encrypted=true" | "encrypted=" => encrypted = true,
            other => {
                anyhow::bail!("unsupported network option {other:?}: the overlay knows encrypted")
            }
        }
    }
    let mut labels = std::collections::HashMap::new();
    for kv in &a.label {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let mut spec = NetworkSpec {
        name: a.name,
        labels,
        driver: a.driver,
        ipam: Some(IpamConfig {
            subnet: a.subnet.unwrap_or_default(),
            gateway: a.gateway.unwrap_or_default(),
        }),
        attachable: a.attachable,
        internal: a.internal,
        encrypted,
        ingress: false,
    };
    shoal_proto::spec::network::normalize(&mut spec)?;
    Ok(spec)
}

/// `network ls`, like Docker's (every network here is swarm-scoped).
pub fn ls(networks: &[Network], quiet: bool) -> String {
    if quiet {
        return networks.iter().map(|n| format!("{}\n", n.id)).collect();
    }
    let rows = networks.iter().map(|n| {
        let spec = n.spec.clone().unwrap_or_default();
        let id = n.id.chars().take(12).collect();
        vec![id, spec.name, spec.driver, "swarm".into(), n.subnet.clone()]
    });
    table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"], rows)
}

/// `network inspect`: Docker's fields that apply, plus the VNI.
fn json(r: &NetworkResponse) -> Result<serde_json::Value> {
    let n = r.network.clone().context("the manager returned no network")?;
    let spec = n.spec.clone().unwrap_or_default();
    let meta = n.meta.unwrap_or_default();
    let mut options = BTreeMap::new();
    options.insert("com.docker.network.driver.overlay.vxlanid_list", n.vni.to_string());
    if spec.encrypted {
        options.insert("encrypted", String::new());
    }
    Ok(serde_json::json!({
        "Name": spec.name,
        "Id": n.id,
        "Created": rfc3339_ms(meta.created_at_ms),
        "Scope": "swarm",
        "Driver": spec.driver,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
        "Internal": spec.internal,
        "Attachable": spec.attachable,
        "Options": options,
        "Labels": spec.labels.iter().collect::<BTreeMap<_, _>>(),
        "Services": r.services,
    }))
}
