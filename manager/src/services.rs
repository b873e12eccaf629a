//! Owns the service half of the Control API: creating, updating (new spec versions, rollback),
//! scaling and removing services, listing tasks, and node availability/labels. The spec rules
//! (defaults, validation) are `shoal_proto::spec::service`'s; the orchestrator turns what is
//! stored here into tasks.

use std::collections::HashMap;

use shoal_proto::spec::service::{check_update, is_live, normalize, task_part};
use shoal_proto::spec::SpecError;
use shoal_proto::{
    Availability, CreateServiceRequest, GetServiceRequest, ListServicesResponse, ListTasksRequest,
    ListTasksResponse, Node, RemoveServiceRequest, RemoveServiceResponse, Service, ServiceMode,
    ServiceResponse, ServiceSummary, Task, TaskState, UpdateNodeRequest, UpdateServiceRequest,
    UpdateState, UpdateStatus,
};
use tonic::Status;

use crate::control::resolve_node;
use crate::manager::{now_ms, Shared};
use crate::reference::{find, Miss};
use crate::secrets::SecretError;
use crate::store::StoreError;

/// The most services one cluster may hold: every manager keeps and scans them all (listing,
/// name checks, orchestration), so their number is bounded like the replicas of each. Counting
/// them needs the store, so this cap lives here and not with the spec rules in `shoal_proto`.
pub const MAX_SERVICES: usize = 10_000;

/// Why a service or node request was refused. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request named no service.
    #[error("name a service by ID, ID prefix or name")]
    NoReference,
    /// No service has this ID, ID prefix or name.
    #[error("no such service: {0}")]
    NotFound(String),
    /// The ID prefix fits more than one service.
    #[error("{0} matches more than one service; use a longer ID prefix")]
    Ambiguous(String),
    /// A create or update without a spec.
    #[error("missing service spec")]
    NoSpec,
    /// Another service has this name.
    #[error("a service named {0} already exists")]
    NameTaken(String),
    /// The cluster holds [`MAX_SERVICES`] services already; the number is how many.
    #[error(
        "the cluster already has {0} services, the most it may hold ({MAX_SERVICES}); remove one \
         before creating another"
    )]
    TooMany(usize),
    /// The update was based on an older version of the service.
    #[error(
        "service {name} was changed by someone else (version {asked} is not {current}); read it \
         again and retry"
    )]
    Changed { name: String, asked: u64, current: u64 },
    /// A rollback of a service that was never updated.
    #[error("service {0} has no previous spec to roll back to")]
    NoPreviousSpec(String),
    /// An availability this version does not know.
    #[error("unknown availability {0}")]
    Availability(i32),
    /// A label to add that is not `key=value`.
    #[error("bad label {0:?}: expected key=value")]
    Label(String),
    /// A hostname outside the limits.
    #[error("{0}")]
    Hostname(String),
    /// The node was removed while it was being updated.
    #[error("node is gone")]
    NodeGone,
    /// A label to remove that the node does not have.
    #[error("node {node} has no label {key}")]
    NoLabel { node: String, key: String },
    /// The spec breaks a rule of `shoal_proto::spec`.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A secret or config reference of the spec.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A network of the spec, or its addresses.
    #[error(transparent)]
    Network(#[from] crate::networks::NetworkError),
    /// The store could not answer or commit.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image reference is wrong.
    #[error(transparent)]
    Image(#[from] crate::images::BadImage),
    /// The spec widens tasks in a way no node of the cluster allows.
    #[error("{0}")]
    NoNodeAllows(String),
    /// Refused by a check shared with other parts of the control API (node references,
    /// unique hostnames), which answer with their own status.
    #[error("{}", .0.message())]
    Refused(#[from] Status),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        use ServiceError::*;
        match e {
            NotFound(_) | NodeGone | NoLabel { .. } => Status::not_found(e.to_string()),
            NoReference | Ambiguous(_) | NoSpec | Availability(_) | Label(_) | Hostname(_)
            | Image(_) => Status::invalid_argument(e.to_string()),
            NameTaken(_) => Status::already_exists(e.to_string()),
            TooMany(_) => Status::resource_exhausted(e.to_string()),
            Changed { .. } => Status::aborted(e.to_string()),
            NoPreviousSpec(_) | NoNodeAllows(_) => Status::failed_precondition(e.to_string()),
            Spec(e) => e.into(),
            Secret(e) => e.into(),
            Network(e) => e.into(),
            Store(e) => e.into(),
            Refused(status) => status,
        }
    }
}

/// Finds a service by full ID, unique ID prefix, or name.
pub fn resolve_service<'a>(
    services: &'a [Service],
    reference: &str,
) -> Result<&'a Service, ServiceError> {
    if reference.is_empty() {
        return Err(ServiceError::NoReference);
    }
    find(services, reference, |s| &s.id, service_name).map_err(|miss| match miss {
        Miss::NotFound => ServiceError::NotFound(reference.into()),
        Miss::Ambiguous => ServiceError::Ambiguous(reference.into()),
    })
}

fn service_name(s: &Service) -> &str {
    s.spec.as_ref().map(|p| p.name.as_str()).unwrap_or("")
}

/// Refuses a spec whose widenings (capabilities beyond the default, bind mounts) no node that
/// told the managers what it allows would run: its tasks would only ever be rejected. Nodes
/// that said nothing yet are given the benefit of the doubt.
fn check_widenings(
    nodes: &[Node],
    spec: &shoal_proto::ServiceSpec,
    current: Option<&shoal_proto::ServiceSpec>,
) -> Result<(), ServiceError> {
    use shoal_proto::spec::caps;
    let Some(c) = spec.container.as_ref() else { return Ok(()) };
    let old = current.and_then(|s| s.container.as_ref());
    let described: Vec<_> = nodes.iter().filter_map(|n| n.description.as_ref()).collect();
    if described.is_empty() || described.len() < nodes.len() {
        return Ok(());
    }
    let caps_changed = old.is_none_or(|o| o.cap_add != c.cap_add || o.cap_drop != c.cap_drop);
    if caps_changed {
        let set = caps::effective(&c.cap_add, &c.cap_drop)
            .map_err(|e| ServiceError::Spec(SpecError::Capability(e)))?;
        let wanted = caps::widening(&set);
        let allows = |d: &&shoal_proto::NodeDescription| {
            let all = d.allowed_cap_add.iter().any(|a| a == "ALL");
            all || wanted.iter().all(|w| d.allowed_cap_add.iter().any(|a| a == w))
        };
        if !wanted.is_empty() && !described.iter().any(allows) {
            let missing = wanted.join(", ");
            return Err(ServiceError::NoNodeAllows(format!(
                "no node lets tasks add {missing}; start shoald with --task-allow-cap-add on the nodes that should run this service"
            )));
        }
    }
    use shoal_proto::spec::mac;
    let label = |c: &shoal_proto::ContainerSpec| mac::selinux_overridden(c.selinux.as_ref());
    if label(c)
        && old.is_none_or(|o| o.selinux != c.selinux)
        && !described.iter().any(|d| d.allows_label_override)
    {
        let asked = mac::selinux_option_names(c.selinux.as_ref().unwrap_or(&Default::default()));
        return Err(ServiceError::NoNodeAllows(format!(
            "no node lets tasks override their SELinux label ({}); start shoald with --task-allow-label-override on the nodes that should run this service",
            asked.join(", ")
        )));
    }
    if !c.apparmor.is_empty() && old.is_none_or(|o| o.apparmor != c.apparmor) {
        let wanted = c.apparmor.as_str();
        let allows = |d: &&shoal_proto::NodeDescription| {
            wanted == mac::APPARMOR_DEFAULT || d.allowed_apparmor.iter().any(|a| a == wanted)
        };
        if !described.iter().any(allows) {
            return Err(ServiceError::NoNodeAllows(format!(
                "no node lets tasks run under AppArmor profile {wanted}; start shoald with --task-allow-apparmor {wanted} on the nodes that should run this service"
            )));
        }
    }
    let binds = |c: &shoal_proto::ContainerSpec| c.mounts.iter().any(|m| m.r#type == "bind");
    if binds(c) && !old.is_some_and(binds) && !described.iter().any(|d| d.allows_binds) {
        return Err(ServiceError::NoNodeAllows(
            "no node lets tasks bind host paths; start shoald with --task-allow-bind DIR on the nodes that should run this service".into(),
        ));
    }
    Ok(())
}

pub(crate) async fn create(
    shared: &Shared,
    req: CreateServiceRequest,
) -> Result<ServiceResponse, ServiceError> {
    let mut spec = req.spec.ok_or(ServiceError::NoSpec)?;
    let id = shoal_pki::id::new_id();
    if spec.name.is_empty() {
        spec.name = format!("svc-{}", &id[..8]);
    }
    let mut spec = normalize(spec)?;
    check_widenings(&shared.store.list::<Node>()?, &spec, None)?;
    let warnings = crate::images::pin(shared, &mut spec, req.no_resolve_image).await?;
    crate::trust::check_service(shared, &mut spec)?;
    let service = shared
        .store
        .update(|tx| {
            let exists = || ServiceError::NameTaken(spec.name.clone());
            let services = tx.list::<Service>()?;
            if services.iter().any(|s| service_name(s) == spec.name) {
                return Err(exists());
            }
            if services.len() >= MAX_SERVICES {
                return Err(ServiceError::TooMany(services.len()));
            }
            tx.claim_name("service", &spec.name, &id).map_err(|e| match e {
                StoreError::Exists { .. } => exists(),
                e => e.into(),
            })?;
            let mut spec = spec.clone();
            crate::secrets::resolve_refs(tx, &mut spec, None)?;
            let mut service =
                Service { id: id.clone(), spec: Some(spec), spec_version: 1, ..Default::default() };
            crate::networks::attach_service(tx, &mut service, None)?;
            tx.create(service.clone())?;
            Ok(service)
        })
        .await?;
    tracing::info!(service = %service.id, name = %spec.name, "service created");
    let mut service = shared.store.get::<Service>(&service.id)?;
    service.iter_mut().for_each(Service::redact);
    Ok(ServiceResponse { service, warnings })
}

pub(crate) async fn update(
    shared: &Shared,
    req: UpdateServiceRequest,
) -> Result<ServiceResponse, ServiceError> {
    shared.store.barrier().await?;
    let services = shared.store.list::<Service>()?;
    let found = resolve_service(&services, &req.reference)?;
    let id = found.id.clone();
    let current = found.spec.clone().unwrap_or_default();
    let mut warnings = Vec::new();
    let new_spec = if req.rollback {
        None
    } else {
        let spec = req.spec.clone().ok_or(ServiceError::NoSpec)?;
        let mut spec = normalize(spec)?;
        check_widenings(&shared.store.list::<Node>()?, &spec, Some(&current))?;
        crate::images::keep_auth(&mut spec, &current);
        warnings = crate::images::pin(shared, &mut spec, req.no_resolve_image).await?;
        crate::images::keep_pin(&mut spec, &current);
        crate::trust::check_service(shared, &mut spec)?;
        Some(spec)
    };
    let service = shared
        .store
        .update(|tx| {
            let mut s = tx
                .get::<Service>(&id)?
                .ok_or_else(|| ServiceError::NotFound(req.reference.clone()))?;
            let version = s.meta.as_ref().map(|m| m.version).unwrap_or(0);
            if req.version != 0 && req.version != version {
                return Err(ServiceError::Changed {
                    name: service_name(&s).to_string(),
                    asked: req.version,
                    current: version,
                });
            }
            let current = s.spec.clone().unwrap_or_default();
            // The same spec again (a redeploy whose image digest did not move) changes
            // nothing, not even the spec a rollback would go back to.
            if !req.force && new_spec.as_ref() == Some(&current) {
                return Ok(s);
            }
            let now = now_ms();
            match &new_spec {
                None => {
                    let Some(previous) = s.previous_spec.take() else {
                        return Err(ServiceError::NoPreviousSpec(current.name));
                    };
                    s.previous_spec = Some(current);
                    s.spec = Some(previous);
                    s.previous_spec_version = s.spec_version;
                    s.spec_version += 1;
                    s.update_status = Some(UpdateStatus {
                        state: UpdateState::RollbackStarted as i32,
                        started_at_ms: now,
                        message: "manually requested rollback".into(),
                        ..Default::default()
                    });
                }
                Some(spec) => {
                    let mut spec = spec.clone();
                    crate::secrets::resolve_refs(tx, &mut spec, Some(&current))?;
                    crate::networks::resolve_targets(tx, &mut spec)?;
                    let spec = &spec;
                    check_update(&current, spec)?;
                    let dirty = req.force || task_part(spec) != task_part(&current);
                    s.previous_spec = Some(current);
                    s.previous_spec_version = s.spec_version;
                    s.spec = Some(spec.clone());
                    if dirty {
                        s.spec_version += 1;
                        s.update_status = Some(UpdateStatus {
                            state: UpdateState::Updating as i32,
                            started_at_ms: now,
                            message: "update in progress".into(),
                            ..Default::default()
                        });
                    }
                }
            }
            let old = s.endpoint.clone();
            crate::networks::attach_service(tx, &mut s, old.as_ref())?;
            tx.update(s.clone())?;
            Ok(s)
        })
        .await?;
    tracing::info!(service = %service.id, version = service.spec_version, rollback = req.rollback, "service updated");
    let mut service = shared.store.get::<Service>(&service.id)?;
    service.iter_mut().for_each(Service::redact);
    Ok(ServiceResponse { service, warnings })
}

pub(crate) async fn get(
    shared: &Shared,
    req: GetServiceRequest,
) -> Result<ServiceResponse, ServiceError> {
    shared.store.barrier().await?;
    let services = shared.store.list::<Service>()?;
    let mut service = resolve_service(&services, &req.reference)?.clone();
    service.redact();
    Ok(ServiceResponse { service: Some(service), warnings: Vec::new() })
}

pub(crate) async fn list(shared: &Shared) -> Result<ListServicesResponse, ServiceError> {
    shared.store.barrier().await?;
    let mut services = shared.store.list::<Service>()?;
    services.sort_by(|a, b| service_name(a).cmp(service_name(b)));
    let mut running: HashMap<String, u64> = HashMap::new();
    let mut live: HashMap<String, u64> = HashMap::new();
    for t in shared.store.list::<Task>()? {
        if is_live(&t) {
            *live.entry(t.service_id.clone()).or_default() += 1;
            if t.state() == TaskState::Running {
                *running.entry(t.service_id).or_default() += 1;
            }
        }
    }
    let services = services
        .into_iter()
        .map(|mut s| {
            s.redact();
            let spec = s.spec.clone().unwrap_or_default();
            let desired = match spec.mode() {
                ServiceMode::Replicated => spec.replicas,
                ServiceMode::Global => live.get(&s.id).copied().unwrap_or(0),
            };
            ServiceSummary {
                running: running.get(&s.id).copied().unwrap_or(0),
                desired,
                service: Some(s),
            }
        })
        .collect();
    Ok(ListServicesResponse { services })
}

pub(crate) async fn remove(
    shared: &Shared,
    req: RemoveServiceRequest,
) -> Result<RemoveServiceResponse, ServiceError> {
    shared.store.barrier().await?;
    let services = shared.store.list::<Service>()?;
    let service = resolve_service(&services, &req.reference)?.clone();
    shared
        .store
        .update(|tx| {
            if tx.get::<Service>(&service.id)?.is_none() {
                return Err(ServiceError::NotFound(req.reference.clone()));
            }
            tx.delete::<Service>(&service.id)?;
            tx.release_name("service", service_name(&service))?;
            crate::networks::detach_service(tx, &service)?;
            Ok(())
        })
        .await?;
    tracing::info!(service = %service.id, "service removed");
    Ok(RemoveServiceResponse { id: service.id.clone(), name: service_name(&service).to_string() })
}

pub(crate) async fn list_tasks(
    shared: &Shared,
    req: ListTasksRequest,
) -> Result<ListTasksResponse, ServiceError> {
    shared.store.barrier().await?;
    let nodes = shared.store.list::<Node>()?;
    let service_id = if req.service.is_empty() {
        None
    } else {
        let services = shared.store.list::<Service>()?;
        Some(resolve_service(&services, &req.service)?.id.clone())
    };
    let node_id =
        if req.node.is_empty() { None } else { Some(resolve_node(&nodes, &req.node)?.id.clone()) };
    let mut tasks: Vec<Task> = shared
        .store
        .list::<Task>()?
        .into_iter()
        .filter(|t| service_id.as_ref().is_none_or(|s| &t.service_id == s))
        .filter(|t| node_id.as_ref().is_none_or(|n| &t.node_id == n))
        .filter(|t| !req.desired_running || is_live(t))
        .map(|mut t| {
            t.redact();
            t
        })
        .collect();
    tasks.sort_by(|a, b| {
        (a.service_name.as_str(), a.slot, &a.node_id)
            .cmp(&(b.service_name.as_str(), b.slot, &b.node_id))
            .then(
                b.meta
                    .as_ref()
                    .map(|m| m.created_at_ms)
                    .cmp(&a.meta.as_ref().map(|m| m.created_at_ms)),
            )
    });
    let node_names = nodes.into_iter().map(|n| (n.id, n.hostname)).collect();
    Ok(ListTasksResponse { tasks, node_names })
}

pub(crate) async fn update_node(
    shared: &Shared,
    req: UpdateNodeRequest,
) -> Result<Node, ServiceError> {
    shared.store.barrier().await?;
    let nodes = shared.store.list::<Node>()?;
    let id = resolve_node(&nodes, &req.reference)?.id.clone();
    let availability = match req.availability {
        Some(a) => Some(Availability::try_from(a).map_err(|_| ServiceError::Availability(a))?),
        None => None,
    };
    let mut add = Vec::new();
    for kv in &req.label_add {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        if k.is_empty() {
            return Err(ServiceError::Label(kv.clone()));
        }
        add.push((k.to_string(), v.to_string()));
    }
    if let Some(h) = &req.hostname {
        shoal_proto::limits::hostname("hostname", h)
            .map_err(|e| ServiceError::Hostname(e.to_string()))?;
    }
    let node = shared
        .store
        .update(|tx| {
            let mut n = tx.get::<Node>(&id)?.ok_or(ServiceError::NodeGone)?;
            if let Some(h) = &req.hostname {
                crate::intake::check_unique_hostname(tx.list::<Node>()?, h, Some(&id))?;
                n.hostname = h.clone();
            }
            if let Some(a) = availability {
                n.set_availability(a);
            }
            for (k, v) in &add {
                n.labels.insert(k.clone(), v.clone());
            }
            for k in &req.label_rm {
                if n.labels.remove(k).is_none() {
                    return Err(ServiceError::NoLabel { node: n.hostname, key: k.clone() });
                }
            }
            tx.update(n.clone())?;
            Ok(n)
        })
        .await?;
    tracing::info!(node = %node.id, hostname = %node.hostname, availability = node.availability().word(), "node updated");
    Ok(shared.store.get::<Node>(&node.id)?.unwrap_or(node))
}

#[cfg(test)]
mod tests {
    use shoal_proto::{ContainerSpec, NodeDescription, SelinuxOptions, ServiceSpec};

    use super::*;

    fn node(desc: Option<NodeDescription>) -> Node {
        Node { id: "n1".into(), description: desc, ..Default::default() }
    }

    fn service(c: ContainerSpec) -> ServiceSpec {
        ServiceSpec { container: Some(c), ..Default::default() }
    }

    fn refusal(nodes: &[Node], c: ContainerSpec) -> String {
        match check_widenings(nodes, &service(c), None) {
            Err(e) => e.to_string(),
            Ok(()) => String::new(),
        }
    }

    #[test]
    fn mac_relaxations_no_node_allows_are_refused_at_create() {
        let strict = [node(Some(NodeDescription::default()))];
        let level = SelinuxOptions { level: "s0:c1,c2".into(), ..Default::default() };
        let labelled = ContainerSpec { selinux: Some(level.clone()), ..Default::default() };
        let e = refusal(&strict, labelled.clone());
        assert!(
            e.contains("label=level:s0:c1,c2") && e.contains("--task-allow-label-override"),
            "{e}"
        );
        let unconfined = ContainerSpec { apparmor: "unconfined".into(), ..Default::default() };
        let e = refusal(&strict, unconfined.clone());
        assert!(e.contains("--task-allow-apparmor unconfined"), "{e}");
        assert_eq!(refusal(&strict, ContainerSpec::default()), "", "defaults always pass");

        let relaxed = [
            node(Some(NodeDescription::default())),
            node(Some(NodeDescription {
                allows_label_override: true,
                allowed_apparmor: vec!["unconfined".into()],
                ..Default::default()
            })),
        ];
        assert_eq!(refusal(&relaxed, labelled.clone()), "", "one node allowing it is enough");
        assert_eq!(refusal(&relaxed, unconfined), "");
        let other = ContainerSpec { apparmor: "my-profile".into(), ..Default::default() };
        assert!(refusal(&relaxed, other).contains("AppArmor profile my-profile"));

        let unknown = [node(Some(NodeDescription::default())), node(None)];
        assert_eq!(refusal(&unknown, labelled.clone()), "", "a node yet to describe itself may");

        let same = service(labelled.clone());
        check_widenings(&strict, &same, Some(&same)).expect("an update that keeps it is not new");
    }
}
