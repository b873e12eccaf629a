//! Owns networks in the control API (create, inspect, list, remove) and the addresses services
//! and tasks hold on them. Rules of specs are `shoal_proto::spec::network`'s; address choices
//! are `ipam`'s (pure) made durable by `alloc` (in the caller's store transaction).

pub(crate) mod alloc;
pub mod ipam;
pub(crate) mod maps;
pub(crate) mod ports;

use shoal_proto::spec::network::{normalize, validate_attachments, NONE};
use shoal_proto::spec::SpecError;
use shoal_proto::{
    CreateNetworkRequest, Endpoint, EndpointMode, GetNetworkRequest, ListNetworksResponse, Network,
    NetworkAttachment, NetworkAttachmentConfig, NetworkResponse, RemoveNetworkRequest,
    RemoveNetworkResponse, Service, Task, VirtualIp,
};
use tonic::Status;

use crate::manager::Shared;
use crate::reference::{find, Miss};
use crate::store::{StoreError, Tx};
use alloc::name_of;

/// Why a network call was refused.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The spec broke a rule of `shoal_proto::spec::network`.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Another network has the name.
    #[error("a network named {0} already exists")]
    Exists(String),
    /// No network has this name, ID or ID prefix.
    #[error("no such network: {0}")]
    NotFound(String),
    /// An ID prefix that fits several networks.
    #[error("{0} matches more than one network; use a longer ID prefix")]
    Ambiguous(String),
    /// Services (or their last tasks) still use the network.
    #[error("network {network} is in use by {}; remove them or take them off it first", .users.join(", "))]
    InUse { network: String, users: Vec<String> },
    /// A user's subnet overlaps a network that exists.
    #[error("subnet {subnet} overlaps {other} of network {network}; choose another subnet")]
    SubnetInUse { subnet: String, other: String, network: String },
    /// No free block left in the cluster's address pool (or no free VNI).
    #[error(
        "the cluster's address pool has no free subnet left: remove unused networks or create one with --subnet"
    )]
    PoolExhausted,
    /// Every host address of a network is taken.
    #[error("network {network} has no free address left; give it a larger subnet")]
    Full { network: String },
    /// Another service publishes the port.
    #[error("port {port}/{protocol} is already published by service {service}; choose another")]
    PortInUse { port: u32, protocol: String, service: String },
    /// Every port of the range the managers choose from is taken.
    #[error("no free port left in 30000-32767 to publish; give one (published=PORT)")]
    NoFreePort,
    /// A stored network whose subnet or gateway does not parse.
    #[error("network {network} is stored with a damaged subnet or gateway")]
    Corrupt { network: String },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<NetworkError> for Status {
    fn from(e: NetworkError) -> Status {
        let msg = e.to_string();
        match e {
            NetworkError::Spec(s) => s.into(),
            NetworkError::Exists(_) => Status::already_exists(msg),
            NetworkError::NotFound(_) => Status::not_found(msg),
            NetworkError::Ambiguous(_)
            | NetworkError::SubnetInUse { .. }
            | NetworkError::PortInUse { .. } => Status::invalid_argument(msg),
            NetworkError::NoFreePort => Status::resource_exhausted(msg),
            NetworkError::InUse { .. } => Status::failed_precondition(msg),
            NetworkError::PoolExhausted | NetworkError::Full { .. } => {
                Status::resource_exhausted(msg)
            }
            NetworkError::Corrupt { .. } => Status::internal(msg),
            NetworkError::Store(s) => s.into(),
        }
    }
}

/// Finds a network by ID, name or unique ID prefix.
pub(crate) fn resolve<'a>(
    all: &'a [Network],
    reference: &str,
) -> Result<&'a Network, NetworkError> {
    find(all, reference, |n| &n.id, name_of).map_err(|miss| match miss {
        Miss::NotFound => NetworkError::NotFound(reference.to_string()),
        Miss::Ambiguous => NetworkError::Ambiguous(reference.to_string()),
    })
}

/// Names of the services that publish ports on the routing mesh.
fn publishers(services: &[Service]) -> Vec<String> {
    let mut names: Vec<String> = services
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .filter(|spec| spec.endpoint.as_ref().is_some_and(|e| ports::publishes_ingress(&e.ports)))
        .map(|spec| spec.name.clone())
        .collect();
    names.sort();
    names
}

/// Names of the services whose current spec is on network `id`.
fn users(services: &[Service], id: &str) -> Vec<String> {
    let mut names: Vec<String> = services
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .filter(|spec| spec.networks.iter().any(|a| a.target == id))
        .map(|spec| spec.name.clone())
        .collect();
    names.sort();
    names
}

pub(crate) async fn create(
    shared: &Shared,
    req: CreateNetworkRequest,
) -> Result<NetworkResponse, NetworkError> {
    let mut spec = req.spec.unwrap_or_default();
    normalize(&mut spec)?;
    // The routing mesh's network is made by the managers, when a port is first published.
    spec.ingress = false;
    let id = shoal_pki::id::new_id();
    let network = shared
        .store
        .update(|tx| {
            if tx.list::<Network>()?.iter().any(|n| name_of(n) == spec.name) {
                return Err(NetworkError::Exists(spec.name.clone()));
            }
            tx.claim_name("network", &spec.name, &id).map_err(|e| match e {
                StoreError::Exists { .. } => NetworkError::Exists(spec.name.clone()),
                e => e.into(),
            })?;
            let network = alloc::place_network(tx, &id, &spec)?;
            tx.create(network.clone())?;
            Ok(network)
        })
        .await?;
    tracing::info!(network = %id, name = %spec.name, subnet = %network.subnet, vni = network.vni, "network created");
    let network = shared.store.get::<Network>(&id)?.unwrap_or(network);
    Ok(NetworkResponse { network: Some(network), services: Vec::new() })
}

pub(crate) async fn get(
    shared: &Shared,
    req: GetNetworkRequest,
) -> Result<NetworkResponse, NetworkError> {
    let all = shared.store.list::<Network>()?;
    let network = resolve(&all, &req.reference)?.clone();
    let services = users(&shared.store.list::<Service>()?, &network.id);
    Ok(NetworkResponse { network: Some(network), services })
}

pub(crate) async fn list(shared: &Shared) -> Result<ListNetworksResponse, NetworkError> {
    let mut networks = shared.store.list::<Network>()?;
    networks.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    Ok(ListNetworksResponse { networks })
}

/// Removes a network no service uses and no unfinished task holds an address on.
pub(crate) async fn remove(
    shared: &Shared,
    req: RemoveNetworkRequest,
) -> Result<RemoveNetworkResponse, NetworkError> {
    shared.store.barrier().await?;
    let network = resolve(&shared.store.list::<Network>()?, &req.reference)?.clone();
    let name = name_of(&network).to_string();
    shared
        .store
        .update(|tx| {
            if tx.get::<Network>(&network.id)?.is_none() {
                return Err(NetworkError::NotFound(req.reference.clone()));
            }
            let ingress = network.spec.as_ref().is_some_and(|s| s.ingress);
            let services = tx.list::<Service>()?;
            let mut in_use =
                if ingress { publishers(&services) } else { users(&services, &network.id) };
            // Node addresses on the ingress network go with it.
            let tasks_hold =
                alloc::holders(tx, &network.id)?.iter().any(|o| !o.starts_with("node:"));
            if in_use.is_empty() && tasks_hold {
                in_use.push("tasks that are still stopping".into());
            }
            if !in_use.is_empty() {
                return Err(NetworkError::InUse { network: name.clone(), users: in_use });
            }
            alloc::serialize_network_changes(tx)?;
            for (node, addr) in ports::node_addresses(tx, &network)? {
                alloc::release_addr(tx, &network.id, &addr, &format!("node:{node}"))?;
            }
            tx.delete::<Network>(&network.id)?;
            tx.release_name("network", &name)?;
            Ok(())
        })
        .await?;
    tracing::info!(network = %network.id, name = %name, "network removed");
    Ok(RemoveNetworkResponse { id: network.id, name })
}

/// Inside a service create or update: names each network of the spec by its ID (a spec may
/// give names), so specs compare and services are found by network alike.
pub(crate) fn resolve_targets(
    tx: &mut Tx<'_>,
    spec: &mut shoal_proto::ServiceSpec,
) -> Result<(), NetworkError> {
    validate_attachments(&spec.networks)?;
    if spec.networks.is_empty() {
        return Ok(());
    }
    let all = tx.list::<Network>()?;
    for a in spec.networks.iter_mut().filter(|a| a.target != NONE) {
        let found = resolve(&all, &a.target)?;
        if found.spec.as_ref().is_some_and(|s| s.ingress) {
            // The routing mesh is joined by publishing a port, not by name.
            return Err(SpecError::ReservedNetworkName(ports::INGRESS.into()).into());
        }
        let id = found.id.clone();
        // Read by ID so a concurrent removal makes the transaction conflict.
        tx.get::<Network>(&id)?.ok_or_else(|| NetworkError::NotFound(a.target.clone()))?;
        a.target = id;
    }
    // Two names of one network are one network twice.
    validate_attachments(&spec.networks)?;
    Ok(())
}

/// Inside a service create or update: resolves the spec's networks (see [`resolve_targets`])
/// and gives the service a virtual IP on each (kept from `old` where it had one); releases the
/// virtual IPs of networks the spec no longer names.
pub(crate) fn attach_service(
    tx: &mut Tx<'_>,
    service: &mut Service,
    old: Option<&Endpoint>,
) -> Result<(), NetworkError> {
    let Some(spec) = service.spec.as_mut() else { return Ok(()) };
    resolve_targets(tx, spec)?;
    let mut vips = Vec::new();
    // DNS round robin: the name resolves to the tasks; there is no virtual IP.
    let dnsrr = spec.endpoint.as_ref().is_some_and(|e| e.mode() == EndpointMode::Dnsrr);
    for a in spec.networks.iter().filter(|a| a.target != NONE && !dnsrr) {
        let network = tx
            .get::<Network>(&a.target)?
            .ok_or_else(|| NetworkError::NotFound(a.target.clone()))?;
        let kept = old.and_then(|e| e.vips.iter().find(|v| v.network_id == network.id));
        let addr = match kept {
            Some(v) => v.addr.clone(),
            None => alloc::allocate_addr(tx, &network, &service.id)?,
        };
        vips.push(VirtualIp { network_id: network.id, addr });
    }
    for gone in old.iter().flat_map(|e| e.vips.iter()) {
        if !vips.iter().any(|v| v.network_id == gone.network_id) {
            alloc::release_addr(tx, &gone.network_id, &gone.addr, &service.id)?;
        }
    }
    let published = ports::publish(tx, service, old)?;
    if ports::publishes_ingress(&published) {
        ports::ensure_ingress(tx)?;
    }
    service.endpoint = if vips.is_empty() && published.is_empty() {
        None
    } else {
        Some(Endpoint { vips, ports: published })
    };
    Ok(())
}

/// Inside a service removal: gives back the service's virtual IPs.
pub(crate) fn detach_service(tx: &mut Tx<'_>, service: &Service) -> Result<(), NetworkError> {
    for v in service.endpoint.iter().flat_map(|e| e.vips.iter()) {
        alloc::release_addr(tx, &v.network_id, &v.addr, &service.id)?;
    }
    ports::unpublish(tx, service)?;
    Ok(())
}

/// Inside the creation of a task: an address on each network of its spec, with the network
/// as it is now (all a node needs to plumb it).
pub(crate) fn attach_task(tx: &mut Tx<'_>, task: &mut Task) -> Result<(), NetworkError> {
    let mut targets: Vec<NetworkAttachmentConfig> =
        task.spec.as_ref().map(|s| s.networks.clone()).unwrap_or_default();
    let spec_ports =
        task.spec.as_ref().and_then(|s| s.endpoint.as_ref()).map(|e| e.ports.as_slice());
    if ports::publishes_ingress(spec_ports.unwrap_or_default()) {
        if let Some(ingress) = ports::find_ingress(&tx.list::<Network>()?) {
            targets.push(NetworkAttachmentConfig { target: ingress.id.clone(), aliases: vec![] });
        }
    }
    let mut attached = Vec::new();
    for a in targets.into_iter().filter(|a| a.target != NONE) {
        let network = tx
            .get::<Network>(&a.target)?
            .ok_or_else(|| NetworkError::NotFound(a.target.clone()))?;
        let addr = match alloc::allocate_addr(tx, &network, &task.id) {
            Ok(addr) => addr,
            Err(e) => {
                // Give back what this task took on its other networks.
                for done in &attached {
                    let done: &NetworkAttachment = done;
                    alloc::release_addr(tx, &done.network_id, &done.addr, &task.id)?;
                }
                return Err(e);
            }
        };
        attached.push(NetworkAttachment {
            network_id: network.id.clone(),
            addr,
            aliases: a.aliases,
            network: Some(network),
        });
    }
    task.networks = attached;
    Ok(())
}

/// Inside a write that ends a task (or deletes it): gives back its addresses. Safe to repeat.
pub(crate) fn release_task(tx: &mut Tx<'_>, task: &Task) -> Result<(), StoreError> {
    for a in &task.networks {
        alloc::release_addr(tx, &a.network_id, &a.addr, &task.id)?;
    }
    Ok(())
}
