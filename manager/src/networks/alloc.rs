//! Makes address choices stick: a network's subnet and VNI, a service's virtual IPs and a
//! task's addresses, each recorded in the store inside the caller's transaction.
//!
//! Two rules keep concurrent allocations apart. Every address is a name claim
//! (`ip/<network>/<address>`): two transactions that pick the same address both read the claim
//! absent, so only one commits and the other runs again and picks the next. Network creation
//! and removal also update one lock record, so they run one after another and a subnet given
//! by a user is checked against every network that exists.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use shoal_proto::spec::network::{address_pool, data_path_port, parse_gateway, parse_subnet};
use shoal_proto::{Cluster, ClusterSpec, NameClaim, Network, NetworkSpec};

use super::ipam::{default_gateway, next_host, next_subnet, next_vni, overlaps};
use super::NetworkError;
use crate::store::{StoreError, Tx};

/// The record every network creation and removal updates.
const LOCK: &str = "ipam/networks";

/// Makes this transaction conflict with every other that creates or removes a network.
pub(crate) fn serialize_network_changes(tx: &mut Tx<'_>) -> Result<(), NetworkError> {
    match tx.get::<NameClaim>(LOCK)? {
        Some(lock) => tx.update(lock)?,
        None => {
            tx.create(NameClaim { id: LOCK.into(), owner: "ipam".into(), ..Default::default() })?
        }
    }
    Ok(())
}

/// A new network for `spec` (already normalized): its subnet (the user's, if free, else the
/// pool's next block), gateway and VNI.
pub(crate) fn place_network(
    tx: &mut Tx<'_>,
    id: &str,
    spec: &NetworkSpec,
) -> Result<Network, NetworkError> {
    serialize_network_changes(tx)?;
    let networks = tx.list::<Network>()?;
    let mut taken: Vec<(Ipv4Net, &str)> =
        networks.iter().filter_map(|n| Some((n.subnet.parse().ok()?, name_of(n)))).collect();
    // In address order, so a refusal names the lowest network overlapped.
    taken.sort();
    let ipam = spec.ipam.clone().unwrap_or_default();
    let subnet = if ipam.subnet.is_empty() {
        let (pools, size) = pool(tx)?;
        let nets: Vec<Ipv4Net> = taken.iter().map(|(n, _)| *n).collect();
        next_subnet(&pools, size, &nets).ok_or(NetworkError::PoolExhausted)?
    } else {
        let wanted = parse_subnet(&ipam.subnet)?;
        if let Some((other, name)) = taken.iter().find(|(n, _)| overlaps(n, &wanted)) {
            return Err(NetworkError::SubnetInUse {
                subnet: wanted.to_string(),
                other: other.to_string(),
                network: name.to_string(),
            });
        }
        wanted
    };
    let gateway = if ipam.gateway.is_empty() {
        default_gateway(subnet)
    } else {
        parse_gateway(&ipam.gateway, subnet)?
    };
    let vnis: BTreeSet<u32> = networks.iter().map(|n| n.vni).collect();
    let vni = next_vni(&vnis).ok_or(NetworkError::PoolExhausted)?;
    let data_port = data_port(tx)?;
    Ok(Network {
        id: id.to_string(),
        spec: Some(spec.clone()),
        subnet: subnet.to_string(),
        gateway: gateway.to_string(),
        vni,
        data_port: data_port.into(),
        ..Default::default()
    })
}

fn cluster_spec(tx: &mut Tx<'_>) -> Result<ClusterSpec, NetworkError> {
    Ok(tx.list::<Cluster>()?.into_iter().next().and_then(|c| c.spec).unwrap_or_default())
}

/// The cluster's default address pool (set at `swarm init`).
fn pool(tx: &mut Tx<'_>) -> Result<(Vec<Ipv4Net>, u8), NetworkError> {
    let spec = cluster_spec(tx)?;
    Ok(address_pool(&spec.default_addr_pool, spec.subnet_size)?)
}

/// The cluster's data-path port (set at `swarm init`).
fn data_port(tx: &mut Tx<'_>) -> Result<u16, NetworkError> {
    Ok(data_path_port(cluster_spec(tx)?.data_path_port)?)
}

fn claim_kind(network_id: &str) -> String {
    format!("ip/{network_id}")
}

/// Takes the next free address of `network` for `owner` (a service or task ID); returns it in
/// CIDR form (`10.0.1.7/24`).
pub(crate) fn allocate_addr(
    tx: &mut Tx<'_>,
    network: &Network,
    owner: &str,
) -> Result<String, NetworkError> {
    let subnet: Ipv4Net = network.subnet.parse().map_err(|_| corrupt(network))?;
    let gateway: Ipv4Addr = network.gateway.parse().map_err(|_| corrupt(network))?;
    let kind = claim_kind(&network.id);
    let mut taken: BTreeSet<Ipv4Addr> = tx
        .list_under::<NameClaim>(&format!("{kind}/"))?
        .iter()
        .filter_map(|c| c.id.rsplit('/').next()?.parse().ok())
        .collect();
    loop {
        let ip = next_host(subnet, gateway, &taken)
            .ok_or_else(|| NetworkError::Full { network: name_of(network).to_string() })?;
        match tx.claim_name(&kind, &ip.to_string(), owner) {
            Ok(()) => return Ok(format!("{ip}/{}", subnet.prefix_len())),
            // Committed by another transaction since the listing: take the next one.
            Err(StoreError::Exists { .. }) => {
                taken.insert(ip);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Gives back an address `owner` took with [`allocate_addr`]; one given to another owner
/// since (after an earlier release) stays theirs.
pub(crate) fn release_addr(
    tx: &mut Tx<'_>,
    network_id: &str,
    addr: &str,
    owner: &str,
) -> Result<(), StoreError> {
    let ip = addr.split('/').next().unwrap_or(addr);
    let id = format!("{}/{ip}", claim_kind(network_id));
    if tx.get::<NameClaim>(&id)?.is_some_and(|c| c.owner == owner) {
        tx.release_name(&claim_kind(network_id), ip)?;
    }
    Ok(())
}

/// Addresses of `network` still held, with their owners.
pub(crate) fn holders(tx: &mut Tx<'_>, network_id: &str) -> Result<Vec<String>, NetworkError> {
    let claims = tx.list_under::<NameClaim>(&format!("{}/", claim_kind(network_id)))?;
    Ok(claims.into_iter().map(|c| c.owner).collect())
}

pub(crate) fn name_of(n: &Network) -> &str {
    n.spec.as_ref().map(|s| s.name.as_str()).unwrap_or(&n.id)
}

fn corrupt(n: &Network) -> NetworkError {
    NetworkError::Corrupt { network: name_of(n).to_string() }
}
