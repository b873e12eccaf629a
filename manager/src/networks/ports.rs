//! Published ports and the routing mesh's network.
//!
//! A port published in ingress mode is the cluster's: one service holds it, as a name claim
//! (`port/<protocol>/<number>`), so two services never get the same one; a service that names
//! none gets the next free one from 30000-32767. Host-mode ports are each node's business.
//!
//! The ingress network is made by the managers the first time a service publishes a port in
//! ingress mode; every node has an address on it (a claim owned by `node:<id>`), where its
//! routing mesh forwards published ports from, and every task of a publishing service an
//! address on it like on any network.

use std::collections::{BTreeMap, BTreeSet};

use shoal_proto::spec::network::AUTO_PORTS;
use shoal_proto::{Endpoint, NameClaim, Network, NetworkSpec, Node, PortConfig, Service};

use super::alloc;
use super::NetworkError;
use crate::store::{StoreError, Tx};

/// The routing mesh network's name (reserved for users).
pub const INGRESS: &str = "ingress";
/// Owners of node addresses on the ingress network.
const NODE_OWNER: &str = "node:";

fn claim_kind(protocol: &str) -> String {
    format!("port/{protocol}")
}

/// Whether a service publishes a port in ingress mode.
pub(crate) fn publishes_ingress(ports: &[PortConfig]) -> bool {
    ports.iter().any(|p| p.publish_mode != "host")
}

/// Claims the published ports of `service`'s spec (keeping the ones `old` already held, and
/// choosing the ones left to the managers) and gives back those it no longer publishes.
/// Returns the ports as published.
pub(crate) fn publish(
    tx: &mut Tx<'_>,
    service: &Service,
    old: Option<&Endpoint>,
) -> Result<Vec<PortConfig>, NetworkError> {
    let wanted: Vec<PortConfig> = service
        .spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.ports.clone())
        .unwrap_or_default();
    let held: Vec<PortConfig> = old.map(|e| e.ports.clone()).unwrap_or_default();
    let others: Vec<Service> =
        tx.list::<Service>()?.into_iter().filter(|s| s.id != service.id).collect();
    let mut out = Vec::new();
    for p in wanted {
        let mut p = p;
        if p.publish_mode == "host" {
            // A node cannot give the same port to the routing mesh and to a task.
            let kind = claim_kind(&p.protocol);
            if let Some(c) = tx.get::<NameClaim>(&format!("{kind}/{}", p.published_port))? {
                if c.owner != service.id {
                    return Err(in_use(tx, &p, c.owner)?);
                }
            }
            out.push(p);
            continue;
        }
        if p.published_port != 0 {
            let host = others.iter().find(|s| {
                s.spec.as_ref().and_then(|s| s.endpoint.as_ref()).is_some_and(|e| {
                    e.ports.iter().any(|h| {
                        h.publish_mode == "host"
                            && h.protocol == p.protocol
                            && h.published_port == p.published_port
                    })
                })
            });
            if let Some(h) = host {
                return Err(in_use(tx, &p, h.id.clone())?);
            }
        }
        if p.published_port == 0 {
            // Chosen earlier for the same target: kept.
            let kept = held.iter().find(|h| {
                h.publish_mode != "host"
                    && h.protocol == p.protocol
                    && h.target_port == p.target_port
                    && !out.iter().any(|o: &PortConfig| o.published_port == h.published_port)
            });
            p.published_port = match kept {
                Some(h) => h.published_port,
                None => free_port(tx, &p.protocol)?,
            };
        }
        claim(tx, &p, service)?;
        out.push(p);
    }
    for h in held.iter().filter(|h| h.publish_mode != "host") {
        let still = out.iter().any(|p| {
            p.publish_mode != "host"
                && p.protocol == h.protocol
                && p.published_port == h.published_port
        });
        if !still {
            release(tx, h, &service.id)?;
        }
    }
    Ok(out)
}

/// The error for port `p`, which service `owner` (an ID) already publishes.
fn in_use(tx: &mut Tx<'_>, p: &PortConfig, owner: String) -> Result<NetworkError, StoreError> {
    let holder = tx.get::<Service>(&owner)?.and_then(|s| s.spec.map(|s| s.name)).unwrap_or(owner);
    Ok(NetworkError::PortInUse {
        port: p.published_port,
        protocol: p.protocol.clone(),
        service: holder,
    })
}

fn claim(tx: &mut Tx<'_>, p: &PortConfig, service: &Service) -> Result<(), NetworkError> {
    let kind = claim_kind(&p.protocol);
    let name = p.published_port.to_string();
    if let Some(c) = tx.get::<NameClaim>(&format!("{kind}/{name}"))? {
        if c.owner == service.id {
            return Ok(());
        }
        return Err(in_use(tx, p, c.owner)?);
    }
    tx.claim_name(&kind, &name, &service.id).map_err(|e| match e {
        StoreError::Exists { .. } => NetworkError::PortInUse {
            port: p.published_port,
            protocol: p.protocol.clone(),
            service: "another service".into(),
        },
        e => e.into(),
    })
}

fn free_port(tx: &mut Tx<'_>, protocol: &str) -> Result<u32, NetworkError> {
    let kind = claim_kind(protocol);
    let taken: BTreeSet<u32> = tx
        .list_under::<NameClaim>(&format!("{kind}/"))?
        .iter()
        .filter_map(|c| c.id.rsplit('/').next()?.parse().ok())
        .collect();
    AUTO_PORTS.clone().find(|p| !taken.contains(p)).ok_or(NetworkError::NoFreePort)
}

fn release(tx: &mut Tx<'_>, p: &PortConfig, owner: &str) -> Result<(), StoreError> {
    let kind = claim_kind(&p.protocol);
    let name = p.published_port.to_string();
    if tx.get::<NameClaim>(&format!("{kind}/{name}"))?.is_some_and(|c| c.owner == owner) {
        tx.release_name(&kind, &name)?;
    }
    Ok(())
}

/// Gives back every ingress port `service` holds (it is being removed).
pub(crate) fn unpublish(tx: &mut Tx<'_>, service: &Service) -> Result<(), StoreError> {
    for p in service.endpoint.iter().flat_map(|e| e.ports.iter()) {
        if p.publish_mode != "host" {
            release(tx, p, &service.id)?;
        }
    }
    Ok(())
}

/// The ingress network, if it exists.
pub(crate) fn find_ingress(networks: &[Network]) -> Option<&Network> {
    networks.iter().find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
}

/// The ingress network, made now if it does not exist yet, with an address for every node.
pub(crate) fn ensure_ingress(tx: &mut Tx<'_>) -> Result<Network, NetworkError> {
    if let Some(n) = find_ingress(&tx.list::<Network>()?) {
        return Ok(n.clone());
    }
    let spec = NetworkSpec {
        name: INGRESS.into(),
        driver: shoal_proto::spec::network::OVERLAY.into(),
        ingress: true,
        ..Default::default()
    };
    let id = shoal_pki::id::new_id();
    tx.claim_name("network", INGRESS, &id).map_err(|e| match e {
        StoreError::Exists { .. } => NetworkError::Exists(INGRESS.into()),
        e => e.into(),
    })?;
    let network = alloc::place_network(tx, &id, &spec)?;
    tx.create(network.clone())?;
    tracing::info!(network = %id, subnet = %network.subnet, "ingress network created");
    give_nodes_addresses(tx, &network)?;
    Ok(network)
}

/// Every node gets an address on the ingress network; nodes that are gone give theirs back.
/// Returns whether anything changed.
pub(crate) fn give_nodes_addresses(
    tx: &mut Tx<'_>,
    ingress: &Network,
) -> Result<bool, NetworkError> {
    let nodes: BTreeSet<String> = tx.list::<Node>()?.into_iter().map(|n| n.id).collect();
    let held = node_addresses(tx, ingress)?;
    let mut changed = false;
    for (node, addr) in &held {
        if !nodes.contains(node) {
            alloc::release_addr(tx, &ingress.id, addr, &format!("{NODE_OWNER}{node}"))?;
            changed = true;
        }
    }
    for node in nodes.iter().filter(|n| !held.contains_key(*n)) {
        alloc::allocate_addr(tx, ingress, &format!("{NODE_OWNER}{node}"))?;
        changed = true;
    }
    Ok(changed)
}

/// Each node's address on the ingress network (CIDR form).
pub(crate) fn node_addresses(
    tx: &mut Tx<'_>,
    ingress: &Network,
) -> Result<BTreeMap<String, String>, StoreError> {
    let claims = tx.list_under::<NameClaim>(&format!("ip/{}/", ingress.id))?;
    Ok(node_claims(&claims, ingress))
}

/// Node addresses (CIDR form) among the address claims of network `network`.
pub(crate) fn node_claims(claims: &[NameClaim], network: &Network) -> BTreeMap<String, String> {
    let prefix = network.subnet.split('/').nth(1).unwrap_or("24");
    claims
        .iter()
        .filter_map(|c| {
            let node = c.owner.strip_prefix(NODE_OWNER)?;
            let ip = c.id.rsplit('/').next()?;
            Some((node.to_string(), format!("{ip}/{prefix}")))
        })
        .collect()
}
