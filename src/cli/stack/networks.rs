//! Owns the networks of a stack deploy: which real network each compose key means, checking
//! that external ones exist and that no other stack's or user's network has a name the stack
//! would make, creating the stack's own (labelled with the stack, like Docker), and the
//! removal of those at `stack rm`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use shoal_proto::control_client::ControlClient;
use shoal_proto::*;
use tonic::transport::Channel;

use super::compose::{Compose, NetworkDef};
use super::NAMESPACE;
use crate::cli::client;

/// One network the stack uses: its real name, and its spec when the stack must create it.
#[derive(Debug, Clone)]
pub struct PlannedNetwork {
    pub key: String,
    pub name: String,
    pub create: Option<NetworkSpec>,
}

/// The real name of network `key`.
fn real_name(stack: &str, key: &str, def: &NetworkDef) -> String {
    match (&def.name, def.external) {
        (Some(n), _) => n.clone(),
        (None, true) => key.to_string(),
        (None, false) => format!("{stack}_{key}"),
    }
}

fn spec_of(stack: &str, name: &str, def: &NetworkDef) -> NetworkSpec {
    let mut labels = def.labels.clone();
    labels.insert(NAMESPACE.into(), stack.into());
    NetworkSpec {
        name: name.to_string(),
        labels,
        driver: shoal_proto::spec::network::OVERLAY.into(),
        ipam: Some(IpamConfig {
            subnet: def.subnet.clone().unwrap_or_default(),
            gateway: def.gateway.clone().unwrap_or_default(),
        }),
        attachable: def.attachable,
        internal: def.internal,
        encrypted: def.encrypted,
        ingress: false,
    }
}

/// Decides what deploy does with each network the file defines; problems (an external
/// network missing, a name taken outside the stack, a spec the manager would refuse) are
/// collected so the caller can refuse before creating anything.
pub fn plan(
    file: &Compose,
    stack: &str,
    existing: &[Network],
) -> (Vec<PlannedNetwork>, Vec<String>) {
    let (mut out, mut problems) = (Vec::new(), Vec::new());
    for (key, def) in &file.networks {
        let name = real_name(stack, key, def);
        let found = existing.iter().find(|n| n.spec.as_ref().is_some_and(|s| s.name == name));
        let what = if def.line > 0 {
            format!("network {key} (line {})", def.line)
        } else {
            format!("network {key}")
        };
        if def.external {
            match found {
                Some(_) => out.push(PlannedNetwork { key: key.clone(), name, create: None }),
                None => problems.push(format!(
                    "{what}: external network {name} does not exist; create it first with 'shoal network create {name}'"
                )),
            }
            continue;
        }
        match found {
            Some(n) => {
                let ours =
                    n.spec.as_ref().and_then(|s| s.labels.get(NAMESPACE)).map(String::as_str)
                        == Some(stack);
                if ours {
                    out.push(PlannedNetwork { key: key.clone(), name, create: None });
                } else {
                    problems.push(format!(
                        "{what}: a network named {name} already exists and is not part of stack {stack}; remove it, or declare it external"
                    ));
                }
            }
            None => {
                let mut spec = spec_of(stack, &name, def);
                match shoal_proto::spec::network::normalize(&mut spec) {
                    Ok(()) => {
                        out.push(PlannedNetwork { key: key.clone(), name, create: Some(spec) })
                    }
                    Err(e) => problems.push(format!("{what}: {e}")),
                }
            }
        }
    }
    (out, problems)
}

/// Every network, as the manager lists them.
pub async fn existing(control: &mut ControlClient<Channel>) -> Result<Vec<Network>> {
    let r = control.list_networks(ListNetworksRequest {}).await.map_err(client::status)?;
    Ok(r.into_inner().networks)
}

/// Creates the stack's networks that do not exist yet; returns each key's network ID.
pub async fn apply(
    control: &mut ControlClient<Channel>,
    planned: &[PlannedNetwork],
) -> Result<BTreeMap<String, String>> {
    for p in planned {
        if let Some(spec) = &p.create {
            println!("Creating network {}", p.name);
            let req = CreateNetworkRequest { spec: Some(spec.clone()) };
            control.create_network(req).await.map_err(client::status)?;
        }
    }
    let all = existing(control).await?;
    let mut ids = BTreeMap::new();
    for p in planned {
        let found = all.iter().find(|n| n.spec.as_ref().is_some_and(|s| s.name == p.name));
        let n = found
            .ok_or_else(|| anyhow::anyhow!("network {} disappeared during the deploy", p.name))?;
        ids.insert(p.key.clone(), n.id.clone());
    }
    Ok(ids)
}

/// Points a service's attachments (by compose key) at the networks' IDs, as the manager
/// stores them, so an unchanged service compares equal on a re-deploy.
pub fn attach(spec: &mut ServiceSpec, ids: &BTreeMap<String, String>) -> Result<()> {
    for a in &mut spec.networks {
        a.target = ids
            .get(&a.target)
            .ok_or_else(|| anyhow::anyhow!("network {} is not defined", a.target))?
            .clone();
    }
    Ok(())
}

/// Removes the networks the stack created, once its tasks have let go of them (a network
/// whose tasks are still stopping is refused for a while).
pub async fn remove(control: &mut ControlClient<Channel>, stack: &str) -> Result<()> {
    let owned: Vec<Network> = existing(control)
        .await?
        .into_iter()
        .filter(|n| {
            n.spec.as_ref().and_then(|s| s.labels.get(NAMESPACE)).map(String::as_str) == Some(stack)
        })
        .collect();
    for n in owned {
        let name = n.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        println!("Removing network {name}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let req = RemoveNetworkRequest { reference: n.id.clone() };
            match control.remove_network(req).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::NotFound => break,
                Err(s)
                    if s.code() == tonic::Code::FailedPrecondition
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(s) => return Err(client::status(s)),
            }
        }
    }
    Ok(())
}

/// Whether any network carries the stack's label.
pub fn has_stack_networks(all: &[Network], stack: &str) -> bool {
    all.iter().any(|n| {
        n.spec.as_ref().and_then(|s| s.labels.get(NAMESPACE)).map(String::as_str) == Some(stack)
    })
}
